/* test_memory.c - memory that follows the contents (issue 20): tables that shrink with
 * hysteresis, slab evacuation, the owners index and causal contexts giving capacity back,
 * over grow-shrink-grow cycles, and under allocation failures during a shrink (a failed
 * shrink leaves the map as it was). Contents are checked against a model after every phase,
 * and every test ends with nothing allocated. Built with ASan the slab passes every block
 * through (slab.h), so there the slab has nothing to evacuate; the tables still shrink. */
#include <criterion/criterion.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "alloc.h"
#include "awmap.h"
#include "codec.h"
#include "dots.h"
#include "owners.h"
#include "slab.h"
#include "test_support.h"

static void setup(void) {
    install();
    /* small steps, so that shrinks and evacuations stay in progress across many writes */
    dv_map_set_compact_steps(64, 256, 1);
}

static void teardown(void) {
    dv_map_set_compact_steps(0, 0, 0);
    uninstall();
}

TestSuite(memory, .init = setup, .fini = teardown);

#define ASSERT_NO_LEAK() cr_assert_eq(live_blocks, 0, "%ld blocks still allocated", live_blocks)

/* ---- helpers ---- */

#define NKEYS 12000

/* The model: the value of each key index (its length; 0 = absent) and which writer. */
typedef struct {
    uint32_t vlen[NKEYS];
    uint8_t fill[NKEYS];
} model;

static int key_of(char *buf, size_t n, int i) {
    return snprintf(buf, n, "key:%d", i);
}

/* A value of vlen bytes, all `fill`. */
static void value_of(uint8_t *buf, uint32_t vlen, uint8_t fill) {
    memset(buf, fill, vlen);
}

static void mput(dv_map *m, model *md, int i, uint32_t vlen, uint8_t fill, uint64_t now) {
    char k[32];
    uint8_t v[600];
    int kl = key_of(k, sizeof(k), i);
    value_of(v, vlen, fill);
    cr_assert_eq(dv_map_put(m, (const uint8_t *)k, (uint32_t)kl, v, vlen, now, NULL, NULL), DV_OK);
    if (md) {
        md->vlen[i] = vlen;
        md->fill[i] = fill;
    }
}

static void mdel(dv_map *m, model *md, int i) {
    char k[32];
    int kl = key_of(k, sizeof(k), i);
    cr_assert_eq(dv_map_remove(m, (const uint8_t *)k, (uint32_t)kl, NULL, NULL), DV_OK);
    if (md)
        md->vlen[i] = 0;
}

static void check_model(const dv_map *m, const model *md, int n, const char *what) {
    size_t live = 0;
    for (int i = 0; i < n; i++) {
        char k[32];
        int kl = key_of(k, sizeof(k), i);
        dv_read r;
        bool has = dv_map_get(m, (const uint8_t *)k, (uint32_t)kl, &r);
        if (!md->vlen[i]) {
            cr_assert(!has, "%s: key %d should be absent", what, i);
            continue;
        }
        live++;
        cr_assert(has, "%s: key %d missing", what, i);
        cr_assert_eq(r.vlen, md->vlen[i], "%s: key %d: length %u, want %u", what, i, r.vlen,
                     md->vlen[i]);
        for (uint32_t b = 0; b < r.vlen; b++)
            cr_assert_eq(r.val[b], md->fill[i], "%s: key %d: wrong byte", what, i);
    }
    cr_assert_eq(dv_map_size(m), live, "%s: size %zu, want %zu", what, dv_map_size(m), live);
}

static int join_emit(void *ud, const uint8_t *p, size_t n) {
    dv_delta d;
    cr_assert_eq(dv_decode_delta(p, n, &d), DV_OK);
    cr_assert_eq(dv_map_join(ud, &d, NULL, NULL), DV_OK);
    dv_delta_free(&d);
    return 0;
}

/* m's state, shipped whole to a fresh map (delta_since walks the dot index and the keys,
 * and checks every live element is in the context), must equal m. */
static void check_transfer(const dv_map *m, const char *what) {
    dv_map *copy = dv_map_new(dv_map_rid(m) + 1000);
    cr_assert(copy);
    cr_assert_eq(dv_map_delta_since(m, NULL, 1 << 16, join_emit, copy), DV_OK, "%s", what);
    cr_assert(dv_map_equal(copy, m), "%s: the transferred state differs", what);
    dv_map_free(copy);
}

/* Whether the slab passes every block through (an ASan build): nothing to evacuate then. */
static bool slab_passthrough(void) {
    dv_slab s;
    dv_slab_init(&s);
    void *p = dv_slab_alloc(&s, 16);
    cr_assert(p);
    bool big = dv_slab_big_blocks(&s) == 1;
    dv_slab_free_all(&s);
    return big;
}

/* Runs compaction steps until none is in progress; asserts it ends. */
static void settle(dv_map *m) {
    int steps = 0;
    while (dv_map_compact_step(m))
        cr_assert_lt(++steps, 100000, "compaction does not end");
}

/* ---- tables and slab: grow, shrink, grow again ---- */

Test(memory, grow_shrink_grow_keeps_contents_and_gives_memory_back) {
    static model md;
    memset(&md, 0, sizeof(md));
    dv_map *m = dv_map_new(1), *b = dv_map_new(2);
    cr_assert(m && b);
    size_t empty = dv_map_memory(m), peak = 0;
    for (int cycle = 0; cycle < 3; cycle++) {
        char what[64];
        uint64_t now = 1000 + 100 * (uint64_t)cycle;
        /* grow: every key, a fifth overwritten with a longer value (a new block of the key) */
        for (int i = 0; i < NKEYS; i++)
            mput(m, &md, i, 8 + (uint32_t)(i % 23), (uint8_t)(cycle + 1), now);
        for (int i = 0; i < NKEYS; i += 5)
            mput(m, &md, i, 300 + (uint32_t)(i % 200), (uint8_t)(cycle + 11), now + 1);
        /* concurrent writes of another replica to a tenth of the keys: two elements per key
         * (b's are later, so they win the read) */
        for (int i = 0; i < NKEYS; i += 10)
            mput(b, &md, i, 20, (uint8_t)(cycle + 21), now + 50);
        cr_assert_eq(dv_map_delta_since(b, dv_map_ctx(m), 1 << 16, join_emit, m), DV_OK);
        snprintf(what, sizeof(what), "cycle %d, grown", cycle);
        check_model(m, &md, NKEYS, what);
        size_t grown = dv_map_memory(m);
        if (grown > peak)
            peak = grown;
        /* shrink: all but every 100th key */
        for (int i = 0; i < NKEYS; i++)
            if (i % 100)
                mdel(m, &md, i);
        snprintf(what, sizeof(what), "cycle %d, shrunk", cycle);
        check_model(m, &md, NKEYS, what);
        settle(m);
        check_model(m, &md, NKEYS, what);
        check_transfer(m, what);
        dv_map_stats st;
        dv_map_get_stats(m, &st);
        size_t mem = dv_map_memory(m);
        /* 120 keys left: small tables, the slab near its live bytes */
        cr_assert_leq(st.key_slots, 512, "%s: %zu key slots", what, st.key_slots);
        cr_assert_leq(st.dot_slots, 1024, "%s: %zu dot slots", what, st.dot_slots);
        cr_assert(!st.shrinking && !st.evacuating && st.old_slab_bytes == 0, "%s", what);
        cr_assert_leq(mem, 400 * 1024, "%s: %zu bytes held (peak %zu)", what, mem, grown);
        cr_assert_lt(mem * 8, grown, "%s: %zu bytes held, %zu at the peak", what, mem, grown);
        /* b's elements of the deleted keys went with them; b starts over next cycle */
        dv_map_free(b);
        b = dv_map_new(10 + (uint64_t)cycle); /* a new replica: its own dots */
        cr_assert(b);
    }
    /* empty: back to about a new map */
    for (int i = 0; i < NKEYS; i += 100)
        mdel(m, &md, i);
    check_model(m, &md, NKEYS, "emptied");
    settle(m);
    cr_assert_leq(dv_map_memory(m), empty + 4096, "emptied: %zu bytes, new map %zu",
                  dv_map_memory(m), empty);
    cr_assert_gt(peak, 1000000, "the peak should have been large: %zu", peak);
    dv_map_free(m);
    dv_map_free(b);
    ASSERT_NO_LEAK();
}

Test(memory, shrinks_in_steps_while_writes_go_on) {
    /* deletes and puts interleaved while shrinks and evacuations are in progress: every
     * phase reads right, and the state transfers */
    static model md;
    memset(&md, 0, sizeof(md));
    rng_state = 20;
    dv_map *m = dv_map_new(3);
    for (int i = 0; i < NKEYS; i++)
        mput(m, &md, i, 10 + (uint32_t)rnd_below(40), 1, 1000);
    bool saw_shrink = false, saw_progress = false, saw_evac = false;
    dv_map_stats st0;
    dv_map_get_stats(m, &st0);
    for (int round = 0; round < 40000; round++) {
        int i = (int)rnd_below(NKEYS);
        if (rnd_below(20) < 19) /* mostly deletes: the map goes down to about 5% */
            mdel(m, &md, i);
        else
            mput(m, &md, i, 10 + (uint32_t)rnd_below(500), (uint8_t)(2 + round % 200), 2000);
        dv_map_stats st;
        dv_map_get_stats(m, &st);
        saw_shrink |= st.key_slots < st0.key_slots;
        saw_progress |= st.shrinking;
        saw_evac |= st.evacuating;
        /* blocks still to move out of the old slab: never more than the map's blocks (an
         * underflow here once came from asking a freed chunk's address) */
        cr_assert_leq(st.old_blocks, dv_map_size(m) + dv_map_elements(m), "round %d: %zu", round,
                      st.old_blocks);
        if (round % 4000 == 0) {
            check_model(m, &md, NKEYS, "interleaved");
            check_transfer(m, "interleaved");
        }
    }
    cr_assert(saw_shrink, "no shrink happened");
    cr_assert(saw_progress, "no shrink was seen in progress");
    cr_assert(saw_evac || slab_passthrough(), "no evacuation was seen in progress");
    check_model(m, &md, NKEYS, "end");
    check_transfer(m, "end");
    settle(m);
    check_model(m, &md, NKEYS, "settled");
    check_transfer(m, "settled");
    dv_map_free(m);
    ASSERT_NO_LEAK();
}

Test(memory, hovering_around_a_size_does_not_resize) {
    dv_map *m = dv_map_new(4);
    for (int i = 0; i < 3000; i++) /* 3000 keys: 4096 slots (grown at 3/4) */
        mput(m, NULL, i, 8, 1, 1000);
    dv_map_stats st;
    dv_map_get_stats(m, &st);
    size_t kslots = st.key_slots, dslots = st.dot_slots;
    cr_assert_eq(kslots, 4096);
    /* hover between 2000 and 3000 keys */
    for (int round = 0; round < 20; round++) {
        for (int i = 0; i < 1000; i++)
            mdel(m, NULL, i);
        for (int i = 0; i < 1000; i++)
            mput(m, NULL, i, 8, (uint8_t)round, 1000);
        dv_map_get_stats(m, &st);
        cr_assert_eq(st.key_slots, kslots, "round %d: key slots %zu -> %zu", round, kslots,
                     st.key_slots);
        cr_assert_eq(st.dot_slots, dslots, "round %d", round);
        cr_assert(!st.shrinking, "round %d: a shrink started", round);
    }
    /* below an eighth (511 keys of 4096 slots): it shrinks, to at most 3/8 full */
    for (int i = 0; i < 2489; i++)
        mdel(m, NULL, i);
    settle(m);
    dv_map_get_stats(m, &st);
    cr_assert_eq(dv_map_size(m), 511);
    cr_assert_eq(st.key_slots, 2048, "%zu key slots", st.key_slots);
    /* and hovering just above that size does not grow it back */
    for (int round = 0; round < 20; round++) {
        for (int i = 0; i < 400; i++)
            mput(m, NULL, i, 8, 3, 1000);
        for (int i = 0; i < 400; i++)
            mdel(m, NULL, i);
        dv_map_get_stats(m, &st);
        cr_assert_eq(st.key_slots, 2048, "round %d: %zu key slots", round, st.key_slots);
    }
    dv_map_free(m);
    ASSERT_NO_LEAK();
}

/* ---- allocation failures during a shrink ---- */

Test(memory, failed_shrink_leaves_the_map_as_it_was) {
    dv_map *m = dv_map_new(5);
    for (int i = 0; i < 3000; i++)
        mput(m, NULL, i, 8, 1, 1000);
    for (int i = 0; i < 2488; i++) /* 512 keys left in 4096 slots: one more delete shrinks */
        mdel(m, NULL, i);
    settle(m);
    dv_map_stats before, after;
    dv_map_get_stats(m, &before);
    cr_assert_eq(before.key_slots, 4096);
    dv_map *ref = dv_map_new(5);
    cr_assert_eq(dv_map_join_map(ref, m, NULL, NULL), DV_OK);
    mdel(ref, NULL, 2488);
    fail_after = 0; /* every allocation fails */
    mdel(m, NULL, 2488);
    fail_after = -1;
    dv_map_get_stats(m, &after);
    cr_assert_eq(after.key_slots, before.key_slots, "a failed shrink changed the table");
    cr_assert_eq(after.dot_slots, before.dot_slots);
    cr_assert(!after.shrinking);
    cr_assert(dv_map_equal(m, ref), "a failed shrink changed the contents");
    check_transfer(m, "after the failed shrink");
    /* the next step, with memory, does it */
    settle(m);
    dv_map_get_stats(m, &after);
    cr_assert_lt(after.key_slots, before.key_slots);
    cr_assert(dv_map_equal(m, ref));
    dv_map_free(m);
    dv_map_free(ref);
    ASSERT_NO_LEAK();
}

Test(memory, shrink_and_evacuation_under_allocation_failure_stay_valid) {
    /* Fail the k-th allocation after the burst, for every k that a shrink-down reaches:
     * table shrinks and evacuation steps stop where the allocation failed, the map stays
     * equal to a reference that had no failure, and nothing leaks. */
    static model md;
    for (long kk = 0; kk < 60; kk++) {
        memset(&md, 0, sizeof(md));
        dv_map *m = dv_map_new(6), *ref = dv_map_new(6);
        for (int i = 0; i < 4000; i++) {
            mput(m, &md, i, 8 + (uint32_t)(i % 300), 1, 1000);
            mput(ref, NULL, i, 8 + (uint32_t)(i % 300), 1, 1000);
        }
        for (int i = 0; i < 4000; i++)
            if (i % 50)
                mdel(ref, NULL, i);
        fail_after = kk;
        for (int i = 0; i < 4000; i++)
            if (i % 50)
                mdel(m, &md, i);
        fail_after = -1;
        char what[48];
        snprintf(what, sizeof(what), "failing at allocation %ld", kk);
        cr_assert(dv_map_equal(m, ref), "%s: differs from the reference", what);
        check_model(m, &md, 4000, what);
        check_transfer(m, what);
        settle(m);
        cr_assert(dv_map_equal(m, ref), "%s: differs after settling", what);
        check_model(m, &md, 4000, what);
        /* and it grows again */
        for (int i = 0; i < 4000; i++)
            mput(m, &md, i, 16, 2, 2000);
        check_model(m, &md, 4000, what);
        dv_map_free(m);
        dv_map_free(ref);
        ASSERT_NO_LEAK();
    }
}

Test(memory, clear_returns_the_tables) {
    dv_map *m = dv_map_new(7);
    size_t empty = dv_map_memory(m);
    for (int i = 0; i < 5000; i++)
        mput(m, NULL, i, 30, 1, 1000);
    cr_assert_gt(dv_map_memory(m), empty * 4);
    dv_map_clear(m);
    /* (the context keeps its array of replicas) */
    cr_assert_leq(dv_map_memory(m), empty + 256, "cleared: %zu bytes, new %zu", dv_map_memory(m),
                  empty);
    for (int i = 0; i < 100; i++)
        mput(m, NULL, i, 30, 2, 1000);
    cr_assert_eq(dv_map_size(m), 100);
    dv_map_free(m);
    ASSERT_NO_LEAK();
}

/* ---- the slab's retire/owns ---- */

Test(memory, slab_retire_and_owns) {
    dv_slab s, old;
    dv_slab_init(&s);
    void *small[200], *big;
    for (int i = 0; i < 200; i++)
        cr_assert(small[i] = dv_slab_alloc(&s, 24 + (size_t)(i % 9) * 40));
    cr_assert(big = dv_slab_alloc(&s, 4000));
    cr_assert_eq(dv_slab_retire(&s, &old), DV_OK);
    void *fresh = dv_slab_alloc(&s, 64);
    cr_assert(fresh);
    if (dv_slab_big_blocks(&s) == 1) { /* not under ASan: small blocks are in chunks */
        for (int i = 0; i < 200; i++)
            cr_assert(dv_slab_owns(&old, small[i]), "block %d not in the retired slab", i);
        cr_assert(dv_slab_held(&old) > 0);
    } else {
        for (int i = 0; i < 200; i++)
            dv_slab_release(&s, small[i], 24 + (size_t)(i % 9) * 40);
    }
    cr_assert(!dv_slab_owns(&old, fresh));
    cr_assert(!dv_slab_owns(&old, big));
    dv_slab_release(&s, big, 4000); /* big blocks stay with s */
    dv_slab_free_all(&old);
    cr_assert_eq(dv_slab_held(&old), 0);
    dv_slab_release(&s, fresh, 64);
    dv_slab_free_all(&s);
    ASSERT_NO_LEAK();
}

Test(memory, slab_retire_fails_cleanly) {
    dv_slab s, old;
    dv_slab_init(&s);
    void *p = dv_slab_alloc(&s, 100);
    cr_assert(p);
    size_t held = dv_slab_held(&s);
    fail_after = 0;
    int rc = dv_slab_retire(&s, &old);
    fail_after = -1;
    if (dv_slab_big_blocks(&s) == 0) { /* a chunk to index: the index allocation failed */
        cr_assert_eq(rc, DV_ENOMEM);
        cr_assert_eq(dv_slab_held(&s), held);
        dv_slab_release(&s, p, 100);
    } else {
        cr_assert_eq(rc, DV_OK);
        dv_slab_release(&s, p, 100);
        dv_slab_free_all(&old);
    }
    dv_slab_free_all(&s);
    ASSERT_NO_LEAK();
}

/* ---- the owners index ---- */

/* pid p holds keys p * 1000 + 1 .. p * 1000 + nkeys[p] */
static void check_owners(const dv_owners *o, const uint32_t *nkeys, uint64_t npids,
                         const char *what) {
    size_t procs = 0, pairs = 0;
    for (uint64_t p = 1; p <= npids; p++) {
        const uint64_t *places;
        size_t nplaces, n = dv_owners_get(o, p * 2, &places, &nplaces);
        cr_assert_eq(n, nkeys[p], "%s: pid %lu holds %zu keys, want %u", what, (unsigned long)p, n,
                     nkeys[p]);
        size_t seen = 0;
        for (size_t i = 0; i < nplaces; i++) {
            if (!places[i])
                continue;
            cr_assert(places[i] > p * 1000 && places[i] <= p * 1000 + nkeys[p],
                      "%s: pid %lu holds a stranger's key", what, (unsigned long)p);
            seen++;
        }
        cr_assert_eq(seen, n, "%s", what);
        procs += n > 0;
        pairs += n;
    }
    cr_assert_eq(o->count, procs, "%s: %zu processes, want %zu", what, o->count, procs);
    cr_assert_eq(o->keys, pairs, "%s", what);
}

#define NPIDS 6000

Test(memory, owners_grow_shrink_grow) {
    static uint32_t nkeys[NPIDS + 1];
    dv_owners_set_step(32);
    dv_owners o;
    dv_owners_init(&o);
    bool saw_progress = false;
    for (int cycle = 0; cycle < 3; cycle++) {
        memset(nkeys, 0, sizeof(nkeys));
        /* every pid one key; every 500th pid 200 keys (a key set) */
        for (uint64_t p = 1; p <= NPIDS; p++) {
            uint32_t n = p % 500 == 0 ? 200 : 1;
            for (uint32_t k = 1; k <= n; k++)
                cr_assert_eq(dv_owners_add(&o, p * 2, p * 1000 + k), DV_OK);
            nkeys[p] = n;
        }
        check_owners(&o, nkeys, NPIDS, "grown");
        size_t peak = dv_owners_memory(&o);
        /* all but every 100th pid go; the big holders drop all but 3 keys one by one */
        for (uint64_t p = 1; p <= NPIDS; p++) {
            if (p % 500 == 0) {
                for (uint32_t k = 200; k > 3; k--)
                    cr_assert(dv_owners_remove(&o, p * 2, p * 1000 + k));
                nkeys[p] = 3;
            } else if (p % 100) {
                if (p % 2)
                    cr_assert(dv_owners_drop(&o, p * 2));
                else
                    cr_assert(dv_owners_remove(&o, p * 2, p * 1000 + 1));
                nkeys[p] = 0;
            }
            saw_progress |= o.nslots != NULL;
            if (p % 1000 == 0)
                check_owners(&o, nkeys, NPIDS, "shrinking");
        }
        check_owners(&o, nkeys, NPIDS, "shrunk");
        /* 60 processes left: the table at most 3/8 full after its last shrink */
        cr_assert_leq(o.cap + o.ncap, 512, "%zu places for %zu processes", o.cap, o.count);
        cr_assert_lt(dv_owners_memory(&o) * 20, peak, "%zu bytes, %zu at the peak",
                     dv_owners_memory(&o), peak);
    }
    cr_assert(saw_progress, "no shrink was seen in progress");
    dv_owners_free(&o);
    dv_owners_set_step(0);
    ASSERT_NO_LEAK();
}

Test(memory, owners_failed_shrink_leaves_the_index_as_it_was) {
    static uint32_t nkeys[NPIDS + 1];
    memset(nkeys, 0, sizeof(nkeys));
    dv_owners o;
    dv_owners_init(&o);
    for (uint64_t p = 1; p <= 3000; p++) { /* 4096 places */
        cr_assert_eq(dv_owners_add(&o, p * 2, p * 1000 + 1), DV_OK);
        nkeys[p] = 1;
    }
    size_t cap = o.cap;
    cr_assert_eq(cap, 4096);
    for (uint64_t p = 1; p <= 2488; p++) { /* 512 left: the next removal shrinks */
        cr_assert(dv_owners_drop(&o, p * 2));
        nkeys[p] = 0;
    }
    cr_assert_eq(o.cap, cap);
    fail_after = 0;
    cr_assert(dv_owners_drop(&o, 2489 * 2));
    nkeys[2489] = 0;
    fail_after = -1;
    cr_assert_eq(o.cap, cap, "a failed shrink changed the table");
    cr_assert(!o.nslots);
    check_owners(&o, nkeys, 3000, "after the failed shrink");
    cr_assert(dv_owners_drop(&o, 2490 * 2)); /* with memory it shrinks */
    nkeys[2490] = 0;
    cr_assert_lt(o.cap, cap);
    check_owners(&o, nkeys, 3000, "shrunk");
    dv_owners_free(&o);
    ASSERT_NO_LEAK();
}

/* ---- causal contexts ---- */

Test(memory, context_gives_back_its_cloud) {
    dv_ctx c;
    dv_ctx_init(&c);
    /* every other counter of 2..4000: a cloud of 2000 intervals */
    for (uint64_t n = 2; n <= 4000; n += 2)
        cr_assert_eq(dv_ctx_add(&c, (dv_dot){9, n}), DV_OK);
    cr_assert_eq(dv_ctx_cloud_dots(&c), 2000);
    size_t full = dv_ctx_memory(&c);
    cr_assert_geq(full, 2000 * sizeof(dv_ival));
    /* the gaps of the upper 9/10 fill: 200 intervals left, most of the array given back */
    for (uint64_t n = 401; n <= 4000; n += 2)
        cr_assert_eq(dv_ctx_add(&c, (dv_dot){9, n}), DV_OK);
    cr_assert_eq(c.v[0].ncloud, 200);
    cr_assert_leq(dv_ctx_memory(&c) * 3, full, "%zu bytes, %zu full", dv_ctx_memory(&c), full);
    for (uint64_t n = 1; n <= 4000; n++)
        cr_assert(dv_ctx_contains(&c, (dv_dot){9, n}) == (n > 400 || n % 2 == 0));
    /* every gap filled: the prefix alone */
    for (uint64_t n = 1; n <= 400; n += 2)
        cr_assert_eq(dv_ctx_add(&c, (dv_dot){9, n}), DV_OK);
    cr_assert_eq(c.v[0].base, 4000);
    cr_assert_eq(c.v[0].ncloud, 0);
    cr_assert_eq(c.v[0].capcloud, 0);
    cr_assert_eq(dv_ctx_memory(&c), c.cap * sizeof(dv_vv));
    dv_ctx_free(&c);
    ASSERT_NO_LEAK();
}

Test(memory, context_trim_under_allocation_failure) {
    dv_ctx c;
    dv_ctx_init(&c);
    for (uint64_t n = 2; n <= 400; n += 2)
        cr_assert_eq(dv_ctx_add(&c, (dv_dot){9, n}), DV_OK);
    fail_after = 0; /* the trimming realloc fails: the larger array stays, contents right */
    for (uint64_t n = 41; n <= 400; n += 2)
        cr_assert_eq(dv_ctx_add(&c, (dv_dot){9, n}), DV_OK);
    fail_after = -1;
    cr_assert_eq(c.v[0].ncloud, 20);
    for (uint64_t n = 1; n <= 400; n++)
        cr_assert(dv_ctx_contains(&c, (dv_dot){9, n}) == (n > 40 || n % 2 == 0));
    dv_ctx_free(&c);
    ASSERT_NO_LEAK();
}

/* ---- the write log ---- */

Test(memory, write_log_gives_back_a_burst) {
    dv_outbox log;
    dv_outbox_init(&log);
    dv_map *m = dv_map_new(11);
    for (int i = 0; i < 20000; i++) {
        char k[32];
        int kl = key_of(k, sizeof(k), i);
        cr_assert_eq(dv_map_put_log(m, (const uint8_t *)k, (uint32_t)kl, (const uint8_t *)"v", 1,
                                    1000, &log, NULL),
                     DV_OK);
    }
    cr_assert_gt(log.elems.cap, (size_t)256 << 10);
    dv_outbox_reset(&log);
    cr_assert(dv_outbox_empty(&log));
    cr_assert_eq(log.elems.cap, 0);
    cr_assert_eq(log.capops, 0);
    /* a small log keeps its arrays */
    cr_assert_eq(
        dv_map_put_log(m, (const uint8_t *)"a", 1, (const uint8_t *)"v", 1, 1000, &log, NULL),
        DV_OK);
    size_t cap = log.elems.cap;
    dv_outbox_reset(&log);
    cr_assert_eq(log.elems.cap, cap);
    dv_outbox_free(&log);
    dv_map_free(m);
    ASSERT_NO_LEAK();
}
