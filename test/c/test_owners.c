/* test_owners.c - the pid -> keys index (owners.h).
 *
 * A model (a bit matrix of pids x keys) follows random adds, removes and drops over a small
 * universe, so that probe runs wrap around the table, slots shift back on deletion and
 * processes move between one inline key and an array; after every operation the index must
 * give exactly the model's keys for every pid, and the counters must agree. Allocation
 * failures leave the index as it was, and everything is given back at the end.
 */
#include <criterion/criterion.h>
#include <stdint.h>
#include <string.h>

#include "alloc.h"
#include "errors.h"
#include "owners.h"
#include "test_support.h"

TestSuite(owners, .init = install, .fini = uninstall);

/* more keys than DV_OWNERS_ARRAY_MAX, so processes move between inline key, array and set */
enum { NPIDS = 70, NKEYS = 3 * DV_OWNERS_ARRAY_MAX };

typedef struct {
    bool has[NPIDS][NKEYS];
} model_t;

/* pid ids: 0 stands for 1 (owners.h), so the model never uses 0 */
static uint64_t pid_id(size_t p) {
    return p == 0 ? 1 : (uint64_t)p * 0x100000001B3ULL;
}

static uint64_t key_id(size_t k) {
    return k * 0x9E3779B97F4A7C15ULL + 7;
}

static void check_all(const dv_owners *o, const model_t *m) {
    size_t pids = 0, pairs = 0;
    for (size_t p = 0; p < NPIDS; p++) {
        const uint64_t *places;
        size_t nplaces, n = dv_owners_get(o, pid_id(p), &places, &nplaces), seen = 0;
        for (size_t i = 0; i < nplaces; i++)
            seen += places[i] != 0;
        cr_assert_eq(seen, n, "pid %zu: %zu keys in its places, %zu counted", p, seen, n);
        size_t want = 0;
        for (size_t k = 0; k < NKEYS; k++) {
            if (!m->has[p][k])
                continue;
            want++;
            bool found = false;
            for (size_t i = 0; i < nplaces; i++)
                found = found || places[i] == key_id(k);
            cr_assert(found, "pid %zu lost key %zu", p, k);
        }
        cr_assert_eq(n, want, "pid %zu: %zu keys, model %zu", p, n, want);
        pids += want > 0;
        pairs += want;
    }
    cr_assert_eq(o->count, pids);
    cr_assert_eq(o->keys, pairs);
    cr_assert(o->count == 0 || o->count * 4 <= o->cap * 3, "load factor kept");
}

Test(owners, random_operations_match_a_model) {
    static model_t m;
    memset(&m, 0, sizeof(m));
    dv_owners o;
    dv_owners_init(&o);
    rng_state = 42;
    for (int op = 0; op < 40000; op++) {
        size_t p = rnd_below(NPIDS), k = rnd_below(NKEYS);
        switch (rnd_below(10)) {
        case 0: /* drop a process */
            cr_assert_eq(dv_owners_drop(&o, pid_id(p)), memchr(m.has[p], 1, NKEYS) != NULL);
            memset(m.has[p], 0, NKEYS);
            break;
        case 1:
        case 2:
        case 3:
        case 4:
            cr_assert_eq(dv_owners_remove(&o, pid_id(p), key_id(k)), m.has[p][k]);
            m.has[p][k] = false;
            break;
        default:
            cr_assert_eq(dv_owners_add(&o, pid_id(p), key_id(k)), DV_OK);
            m.has[p][k] = true;
        }
        check_all(&o, &m);
    }
    dv_owners_free(&o);
    cr_assert_eq(live_blocks, 0);
}

Test(owners, adding_a_pair_twice_keeps_one) {
    dv_owners o;
    dv_owners_init(&o);
    cr_assert_eq(dv_owners_add(&o, 5, 9), DV_OK);
    cr_assert_eq(dv_owners_add(&o, 5, 9), DV_OK);
    const uint64_t *keys;
    size_t np;
    cr_assert_eq(dv_owners_get(&o, 5, &keys, &np), 1);
    cr_assert(dv_owners_remove(&o, 5, 9));
    cr_assert_eq(dv_owners_get(&o, 5, &keys, &np), 0);
    cr_assert_null(keys);
    cr_assert_not(dv_owners_remove(&o, 5, 9));
    cr_assert_eq(o.cap, 0, "the table goes with the last process");
    cr_assert_eq(live_blocks, 0);
}

/* ids keep 63 bits (owners.h): 0, 1, 2 and 3 are one process */
Test(owners, pid_zero_is_pid_one) {
    dv_owners o;
    dv_owners_init(&o);
    cr_assert_eq(dv_owners_add(&o, 0, 3), DV_OK);
    const uint64_t *keys;
    size_t np;
    cr_assert_eq(dv_owners_get(&o, 1, &keys, &np), 1);
    cr_assert_eq(keys[0], 3);
    cr_assert_eq(dv_owners_add(&o, 1, 0), DV_OK);
    cr_assert_eq(dv_owners_add(&o, 1, 1), DV_OK, "key 0 is key 1");
    cr_assert_eq(dv_owners_get(&o, 1, &keys, &np), 2);
    cr_assert_eq(dv_owners_get(&o, 3, &keys, &np), 2);
    cr_assert(dv_owners_drop(&o, 0));
    dv_owners_free(&o);
    cr_assert_eq(live_blocks, 0);
}

Test(owners, many_keys_of_one_process) {
    dv_owners o;
    dv_owners_init(&o);
    for (uint64_t k = 1; k <= 50000; k++) /* a set: linear scans would make this quadratic */
        cr_assert_eq(dv_owners_add(&o, 77, k), DV_OK);
    for (uint64_t k = 1; k <= 50000; k += 3)
        cr_assert_eq(dv_owners_add(&o, 77, k), DV_OK, "already there");
    const uint64_t *keys;
    size_t np;
    cr_assert_eq(dv_owners_get(&o, 77, &keys, &np), 50000);
    cr_assert_eq(o.keys, 50000);
    cr_assert_gt(dv_owners_memory(&o), 50000 * sizeof(uint64_t));
    for (uint64_t k = 50000; k >= 2; k--)
        cr_assert(dv_owners_remove(&o, 77, k));
    cr_assert_not(dv_owners_remove(&o, 77, 2));
    cr_assert_eq(dv_owners_get(&o, 77, &keys, &np), 1);
    cr_assert_eq(keys[0], 1);
    cr_assert_eq(o.heap, 0, "one key left: back inline, the array freed");
    dv_owners_free(&o);
    cr_assert_eq(live_blocks, 0);
}

Test(owners, allocation_failure_changes_nothing) {
    dv_owners o;
    dv_owners_init(&o);
    fail_after = 0; /* the first table */
    cr_assert_eq(dv_owners_add(&o, 1, 1), DV_ENOMEM);
    cr_assert_eq(o.count, 0);
    fail_after = -1;
    cr_assert_eq(dv_owners_add(&o, 1, 1), DV_OK);
    fail_after = 0; /* the first key array */
    cr_assert_eq(dv_owners_add(&o, 1, 2), DV_ENOMEM);
    const uint64_t *keys;
    size_t np;
    cr_assert_eq(dv_owners_get(&o, 1, &keys, &np), 1);
    cr_assert_eq(keys[0], 1);
    fail_after = -1;
    for (uint64_t p = 2; p <= 12; p++) /* fills 12 of 16 slots (ids keep 63 bits: even ids) */
        cr_assert_eq(dv_owners_add(&o, p * 1000, p), DV_OK);
    size_t cap = o.cap;
    fail_after = 0; /* the table's growth */
    cr_assert_eq(dv_owners_add(&o, 13000, 13), DV_ENOMEM);
    cr_assert_eq(o.cap, cap);
    cr_assert_eq(o.count, 12);
    fail_after = -1;
    for (uint64_t p = 2; p <= 12; p++)
        cr_assert_eq(dv_owners_get(&o, p * 1000, &keys, &np), 1);
    /* a full array turning into a set */
    for (uint64_t k = 2; k <= DV_OWNERS_ARRAY_MAX; k++)
        cr_assert_eq(dv_owners_add(&o, 1, k), DV_OK);
    fail_after = 0;
    cr_assert_eq(dv_owners_add(&o, 1, 1000), DV_ENOMEM);
    fail_after = -1;
    cr_assert_eq(dv_owners_get(&o, 1, &keys, &np), DV_OWNERS_ARRAY_MAX);
    cr_assert_eq(dv_owners_add(&o, 1, 1000), DV_OK);
    cr_assert_eq(dv_owners_get(&o, 1, &keys, &np), DV_OWNERS_ARRAY_MAX + 1);
    dv_owners_free(&o);
    cr_assert_eq(live_blocks, 0);
}
