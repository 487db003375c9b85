/* test_awmap.c - add-wins map (awmap.h): local writes, joins, delta_since, anti-entropy.
 *
 * Besides unit tests of each operation this checks the lattice laws on random states and runs
 * a convergence simulation: several replicas write concurrently, ship their outboxes over a
 * network that reorders, duplicates and loses messages, then repair everything with the
 * anti-entropy protocol (context -> delta_since, digest -> manifest -> removal rules); all
 * replicas must end equal to the join of every state, and to a plain model after a final
 * phase of sequential writes. Seeds are fixed. */
#include <criterion/criterion.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "alloc.h"
#include "awmap.h"
#include "codec.h"
#include "dots.h"
#include "test_support.h"

/* every test ends with nothing allocated (counting allocator of test_support.h) */

TestSuite(awmap, .init = install, .fini = uninstall);

#define ASSERT_NO_LEAK() cr_assert_eq(live_blocks, 0, "%ld blocks still allocated", live_blocks)

/* ---- helpers ---- */

#define K(s) (const uint8_t *)(s), (uint32_t)strlen(s)

static void put(dv_map *m, const char *k, const char *v, uint64_t now, dv_map *outbox) {
    cr_assert_eq(dv_map_put(m, K(k), K(v), now, outbox, NULL), DV_OK);
}

static void del(dv_map *m, const char *k, dv_map *outbox) {
    cr_assert_eq(dv_map_remove(m, K(k), outbox, NULL), DV_OK);
}

/* Does m read key k as value v (v NULL: k absent)? */
static bool reads(const dv_map *m, const char *k, const char *v) {
    dv_read r;
    bool has = dv_map_get(m, K(k), &r);
    if (!v)
        return !has;
    return has && r.vlen == strlen(v) && memcmp(r.val, v, r.vlen) == 0;
}

static void assert_reads(const dv_map *m, const char *name, const char *k, const char *v,
                         int line) {
    cr_assert(reads(m, k, v), "line %d: %s: key %s should read %s", line, name, k,
              v ? v : "nothing");
}

#define ASSERT_READS(m, k, v) assert_reads(m, #m, k, v, __LINE__)

/* A list of encoded messages. */
typedef struct {
    uint8_t *p;
    size_t n;
} msg;

typedef struct {
    msg *v;
    size_t n, cap;
} msgs;

static void msgs_push(msgs *l, const uint8_t *p, size_t n) {
    if (l->n == l->cap) {
        l->cap = l->cap ? 2 * l->cap : 16;
        l->v = realloc(l->v, sizeof(msg) * l->cap);
        cr_assert(l->v);
    }
    l->v[l->n].p = malloc(n);
    cr_assert(l->v[l->n].p);
    memcpy(l->v[l->n].p, p, n);
    l->v[l->n].n = n;
    l->n++;
}

static void msgs_free(msgs *l) {
    for (size_t i = 0; i < l->n; i++)
        free(l->v[i].p);
    free(l->v);
    memset(l, 0, sizeof(*l));
}

static int collect(void *ud, const uint8_t *p, size_t n) {
    msgs_push(ud, p, n);
    return 0;
}

static void join_bytes(dv_map *m, const uint8_t *p, size_t n) {
    dv_delta d;
    int rc = dv_decode_delta(p, n, &d);
    cr_assert_eq(rc, DV_OK, "decode: %s", dv_strerror(rc));
    rc = dv_map_join(m, &d, NULL, NULL);
    cr_assert_eq(rc, DV_OK, "join: %s", dv_strerror(rc));
    dv_delta_free(&d);
}

static int join_emit(void *ud, const uint8_t *p, size_t n) {
    join_bytes(ud, p, n);
    return 0;
}

/* All of m that `seen` lacks, in chunks of about max_bytes, joined into dst. */
static void sync_into(dv_map *dst, const dv_map *src, const dv_ctx *seen, size_t max_bytes) {
    cr_assert_eq(dv_map_delta_since(src, seen, max_bytes, join_emit, dst), DV_OK);
}

/* Ship an outbox map to some replicas (every chunk to each), then clear it. */
static void flush_outbox(dv_map *outbox, dv_map **to, size_t nto, size_t max_bytes) {
    msgs l = {0};
    cr_assert_eq(dv_map_delta_since(outbox, NULL, max_bytes, collect, &l), DV_OK);
    for (size_t i = 0; i < l.n; i++)
        for (size_t j = 0; j < nto; j++)
            join_bytes(to[j], l.v[i].p, l.v[i].n);
    msgs_free(&l);
    dv_map_clear(outbox);
}

static dv_map *map_clone(const dv_map *m) {
    dv_map *c = dv_map_new(dv_map_rid(m));
    cr_assert(c);
    cr_assert_eq(dv_map_join_map(c, m, NULL, NULL), DV_OK);
    cr_assert(dv_map_equal(c, m), "clone differs from its original");
    return c;
}

static dv_map *joined(const dv_map *a, const dv_map *b) {
    dv_map *c = map_clone(a);
    cr_assert_eq(dv_map_join_map(c, b, NULL, NULL), DV_OK);
    return c;
}

/* ---- snapshots of a map's reads, sorted by key ---- */

typedef struct {
    uint8_t *k, *v;
    uint32_t klen, vlen;
    uint64_t ts;
    dv_dot dot;
} kv;

typedef struct {
    kv *v;
    size_t n, cap;
} kvs;

static int snap_cb(void *ud, const uint8_t *key, uint32_t klen, const dv_read *r) {
    kvs *s = ud;
    if (s->n == s->cap) {
        s->cap = s->cap ? 2 * s->cap : 16;
        s->v = realloc(s->v, sizeof(kv) * s->cap);
        cr_assert(s->v);
    }
    kv *e = &s->v[s->n++];
    e->k = malloc(klen + 1);
    e->v = malloc(r->vlen + 1);
    cr_assert(e->k && e->v);
    if (klen)
        memcpy(e->k, key, klen);
    if (r->vlen)
        memcpy(e->v, r->val, r->vlen);
    e->klen = klen;
    e->vlen = r->vlen;
    e->ts = r->ts;
    e->dot = r->dot;
    return 0;
}

static int cmp_bytes(const uint8_t *a, uint32_t an, const uint8_t *b, uint32_t bn) {
    int c = memcmp(a, b, an < bn ? an : bn);
    if (c)
        return c;
    return an < bn ? -1 : an > bn;
}

static int cmp_kv(const void *a, const void *b) {
    const kv *x = a, *y = b;
    return cmp_bytes(x->k, x->klen, y->k, y->klen);
}

static void snapshot(const dv_map *m, kvs *s) {
    memset(s, 0, sizeof(*s));
    cr_assert_eq(dv_map_foreach(m, snap_cb, s), 0);
    cr_assert_eq(s->n, dv_map_size(m), "foreach visited %zu keys, size is %zu", s->n,
                 dv_map_size(m));
    if (s->n)
        qsort(s->v, s->n, sizeof(kv), cmp_kv);
    for (size_t i = 1; i < s->n; i++)
        cr_assert(cmp_kv(&s->v[i - 1], &s->v[i]) < 0, "foreach visited a key twice");
}

static void kvs_free(kvs *s) {
    for (size_t i = 0; i < s->n; i++) {
        free(s->v[i].k);
        free(s->v[i].v);
    }
    free(s->v);
    memset(s, 0, sizeof(*s));
}

/* Same reads (keys, values, and unless values_only the winning ts and dot). */
static bool kvs_equal(const kvs *a, const kvs *b, bool values_only) {
    if (a->n != b->n)
        return false;
    for (size_t i = 0; i < a->n; i++) {
        const kv *x = &a->v[i], *y = &b->v[i];
        if (cmp_bytes(x->k, x->klen, y->k, y->klen) || cmp_bytes(x->v, x->vlen, y->v, y->vlen))
            return false;
        if (!values_only &&
            (x->ts != y->ts || x->dot.rid != y->dot.rid || x->dot.ctr != y->dot.ctr))
            return false;
    }
    return true;
}

/* Every read is consistent: get agrees with foreach, winning dots are in the context. */
static void check_map(const dv_map *m) {
    cr_assert_leq(dv_map_size(m), dv_map_elements(m));
    cr_assert_geq(dv_map_memory(m), dv_map_payload(m));
    kvs s;
    snapshot(m, &s);
    size_t key_bytes = 0;
    for (size_t i = 0; i < s.n; i++) {
        dv_read r;
        cr_assert(dv_map_get(m, s.v[i].k, s.v[i].klen, &r));
        cr_assert(cmp_bytes(r.val, r.vlen, s.v[i].v, s.v[i].vlen) == 0);
        cr_assert(r.ts == s.v[i].ts && r.dot.rid == s.v[i].dot.rid && r.dot.ctr == s.v[i].dot.ctr);
        cr_assert(dv_ctx_contains(dv_map_ctx(m), r.dot), "live dot outside the context");
        key_bytes += s.v[i].klen;
    }
    cr_assert_geq(dv_map_payload(m), key_bytes);
    kvs_free(&s);
}

/* ---- basics ---- */

Test(awmap, put_get_remove) {
    dv_map *m = dv_map_new(7);
    cr_assert(m);
    cr_assert_eq(dv_map_rid(m), 7);
    cr_assert_eq(dv_map_size(m), 0);
    cr_assert_eq(dv_map_elements(m), 0);
    cr_assert_eq(dv_map_payload(m), 0);
    cr_assert(!dv_map_get(m, K("a"), NULL));

    bool changed = false;
    cr_assert_eq(dv_map_put(m, K("a"), K("1"), 1000, NULL, &changed), DV_OK);
    cr_assert(changed, "a new key changes the read");
    dv_read r;
    cr_assert(dv_map_get(m, K("a"), &r));
    cr_assert_eq(r.vlen, 1);
    cr_assert_eq(r.val[0], '1');
    cr_assert_eq(r.dot.rid, 7);
    cr_assert_eq(r.dot.ctr, 1);
    cr_assert_eq(r.ts, dv_hlc_next(0, 1000));
    cr_assert(dv_map_get(m, K("a"), NULL), "out may be NULL");
    cr_assert(dv_ctx_contains(dv_map_ctx(m), (dv_dot){7, 1}));
    cr_assert_eq(dv_map_hlc(m), r.ts);

    cr_assert_eq(dv_map_put(m, K("a"), K("22"), 1000, NULL, &changed), DV_OK);
    cr_assert(changed);
    ASSERT_READS(m, "a", "22");
    cr_assert(dv_map_get(m, K("a"), &r));
    cr_assert_eq(r.dot.ctr, 2, "every put takes the next counter");
    cr_assert_eq(dv_map_size(m), 1);
    cr_assert_eq(dv_map_elements(m), 1, "the put removed the element it observed");

    /* prefixes and binary keys are distinct keys */
    put(m, "ab", "x", 1000, NULL);
    static const uint8_t bin[] = {'a', 0, 'b'};
    cr_assert_eq(dv_map_put(m, bin, 3, (const uint8_t *)"y", 1, 1000, NULL, NULL), DV_OK);
    cr_assert_eq(dv_map_put(m, bin, 2, (const uint8_t *)"z", 1, 1000, NULL, NULL), DV_OK);
    cr_assert_eq(dv_map_size(m), 4);
    ASSERT_READS(m, "a", "22");
    ASSERT_READS(m, "ab", "x");
    cr_assert(dv_map_get(m, bin, 3, &r) && r.vlen == 1 && r.val[0] == 'y');
    cr_assert(dv_map_get(m, bin, 2, &r) && r.vlen == 1 && r.val[0] == 'z');

    cr_assert_eq(dv_map_remove(m, K("a"), NULL, &changed), DV_OK);
    cr_assert(changed);
    ASSERT_READS(m, "a", NULL);
    ASSERT_READS(m, "ab", "x");
    cr_assert_eq(dv_map_size(m), 3);
    cr_assert_eq(dv_map_elements(m), 3);
    /* the removed dots stay in the context: there are no tombstones, only the context */
    cr_assert(dv_ctx_contains(dv_map_ctx(m), (dv_dot){7, 2}));

    changed = true;
    cr_assert_eq(dv_map_remove(m, K("a"), NULL, &changed), DV_OK);
    cr_assert(!changed, "removing an absent key changes nothing");
    changed = true;
    cr_assert_eq(dv_map_remove(m, K("never"), NULL, &changed), DV_OK);
    cr_assert(!changed);
    cr_assert_eq(dv_map_remove(m, K("never"), NULL, NULL), DV_OK);

    /* re-put after remove */
    put(m, "a", "back", 1000, NULL);
    ASSERT_READS(m, "a", "back");
    check_map(m);

    dv_map_clear(m);
    cr_assert_eq(dv_map_size(m), 0);
    cr_assert_eq(dv_map_elements(m), 0);
    cr_assert_eq(dv_map_payload(m), 0);
    cr_assert_eq(dv_map_ctx(m)->n, 0);
    ASSERT_READS(m, "ab", NULL);
    put(m, "c", "3", 1000, NULL);
    ASSERT_READS(m, "c", "3");
    dv_map_free(m);
    dv_map_free(NULL);
    ASSERT_NO_LEAK();
}

Test(awmap, reput_of_equal_bytes_is_not_a_change) {
    dv_map *m = dv_map_new(1);
    bool changed = true;
    put(m, "k", "same", 1000, NULL);
    cr_assert_eq(dv_map_put(m, K("k"), K("same"), 1001, NULL, &changed), DV_OK);
    cr_assert(!changed, "re-put of equal bytes reported a change");
    ASSERT_READS(m, "k", "same");
    cr_assert_eq(dv_map_elements(m), 1);
    cr_assert_eq(dv_map_put(m, K("k"), K("samf"), 1002, NULL, &changed), DV_OK);
    cr_assert(changed);
    cr_assert_eq(dv_map_put(m, K("k"), K("sam"), 1002, NULL, &changed), DV_OK);
    cr_assert(changed, "a prefix of the old value is a different value");
    cr_assert_eq(dv_map_put(m, K("k"), K(""), 1002, NULL, &changed), DV_OK);
    cr_assert(changed);
    cr_assert_eq(dv_map_put(m, K("k"), K(""), 1002, NULL, &changed), DV_OK);
    cr_assert(!changed, "empty value re-put");
    /* the empty key works like any other */
    cr_assert_eq(dv_map_put(m, K(""), K("e"), 1002, NULL, &changed), DV_OK);
    cr_assert(changed);
    ASSERT_READS(m, "", "e");
    cr_assert_eq(dv_map_put(m, K(""), K("e"), 1002, NULL, &changed), DV_OK);
    cr_assert(!changed);
    cr_assert_eq(dv_map_size(m), 2);
    dv_map_free(m);
    ASSERT_NO_LEAK();
}

Test(awmap, size_elements_memory_payload) {
    dv_map *m = dv_map_new(1);
    size_t mem0 = dv_map_memory(m);
    cr_assert_gt(mem0, 0);
    char k[32], v[64];
    size_t payload = 0;
    for (int i = 0; i < 500; i++) {
        snprintf(k, sizeof(k), "key-%d", i);
        snprintf(v, sizeof(v), "value-%d-%0*d", i, i % 40, 0);
        put(m, k, v, 1000, NULL);
        payload += strlen(k) + strlen(v);
    }
    cr_assert_eq(dv_map_size(m), 500);
    cr_assert_eq(dv_map_elements(m), 500);
    cr_assert_eq(dv_map_payload(m), payload);
    size_t mem1 = dv_map_memory(m);
    cr_assert_geq(mem1, mem0 + payload, "memory %zu does not cover the payload %zu", mem1, payload);
    cr_assert_lt(mem1, mem0 + 20 * payload + (1 << 20), "memory %zu implausibly large", mem1);

    /* concurrent elements count twice in elements and payload values, once in size */
    dv_map *o = dv_map_new(2);
    put(o, "key-0", "other", 1000, NULL);
    cr_assert_eq(dv_map_join_map(m, o, NULL, NULL), DV_OK);
    cr_assert_eq(dv_map_size(m), 500);
    cr_assert_eq(dv_map_elements(m), 501);
    cr_assert_eq(dv_map_payload(m), payload + strlen("other"));

    for (int i = 0; i < 500; i++) {
        snprintf(k, sizeof(k), "key-%d", i);
        del(m, k, NULL);
    }
    cr_assert_eq(dv_map_size(m), 0);
    cr_assert_eq(dv_map_elements(m), 0);
    cr_assert_eq(dv_map_payload(m), 0);
    cr_assert_lt(dv_map_memory(m), mem1, "memory did not go down after removing everything");

    /* a large value */
    size_t big = 1u << 20;
    uint8_t *bv = malloc(big);
    memset(bv, 0xab, big);
    cr_assert_eq(dv_map_put(m, K("big"), bv, (uint32_t)big, 1000, NULL, NULL), DV_OK);
    dv_read r;
    cr_assert(dv_map_get(m, K("big"), &r));
    cr_assert_eq(r.vlen, big);
    cr_assert_eq(memcmp(r.val, bv, big), 0);
    cr_assert_geq(dv_map_memory(m), big);
    cr_assert_eq(dv_map_payload(m), big + 3);
    free(bv);
    check_map(m);
    dv_map_free(m);
    dv_map_free(o);
    ASSERT_NO_LEAK();
}

static int count_keys(void *ud, const uint8_t *key, uint32_t klen, const dv_read *r) {
    (void)key;
    (void)klen;
    (void)r;
    return ++*(int *)ud == 3 ? 42 : 0;
}

Test(awmap, foreach_visits_each_key_once_and_stops_early) {
    dv_map *m = dv_map_new(1);
    char k[16];
    for (int i = 0; i < 100; i++) {
        snprintf(k, sizeof(k), "k%d", i);
        put(m, k, k, 1000, NULL);
    }
    kvs s;
    snapshot(m, &s);
    cr_assert_eq(s.n, 100);
    for (size_t i = 0; i < s.n; i++)
        cr_assert(cmp_bytes(s.v[i].k, s.v[i].klen, s.v[i].v, s.v[i].vlen) == 0);
    kvs_free(&s);
    int n = 0;
    cr_assert_eq(dv_map_foreach(m, count_keys, &n), 42);
    cr_assert_eq(n, 3);
    dv_map_free(m);
    ASSERT_NO_LEAK();
}

/* ---- hybrid logical clock ---- */

Test(awmap, hlc_next) {
    cr_assert_eq(dv_hlc_next(0, 1), (uint64_t)1 << 16);
    cr_assert_eq(dv_hlc_next(0, 1000), (uint64_t)1000 << 16);
    uint64_t t = dv_hlc_next(0, 1000);
    cr_assert_eq(dv_hlc_next(t, 1000), t + 1, "same millisecond: logical counter");
    cr_assert_eq(dv_hlc_next(t, 999), t + 1, "clock went back: still increasing");
    cr_assert_eq(dv_hlc_next(t + 5, 1001), (uint64_t)1001 << 16);
    cr_assert_eq(dv_hlc_next(DV_MAX_TS, 1), DV_MAX_TS, "saturates");
    cr_assert_leq(dv_hlc_next(0, UINT64_MAX), DV_MAX_TS);
    cr_assert_leq(dv_hlc_next(DV_MAX_TS - 1, UINT64_MAX), DV_MAX_TS);
    rng_state = 5;
    uint64_t last = 0;
    for (int i = 0; i < 10000; i++) {
        uint64_t now = 1000000 + rnd_below(100) - 50; /* a jittery clock */
        uint64_t n = dv_hlc_next(last, now);
        cr_assert_gt(n, last);
        cr_assert_geq(n, now << 16);
        last = n;
    }
}

Test(awmap, hlc_later_write_wins_after_future_timestamp) {
    dv_map *a = dv_map_new(1), *b = dv_map_new(2);
    /* b's clock is far ahead */
    put(b, "k", "from-the-future", 1000000000, NULL);
    dv_read rb;
    cr_assert(dv_map_get(b, K("k"), &rb));
    sync_into(a, b, dv_map_ctx(a), 1 << 16);
    ASSERT_READS(a, "k", "from-the-future");
    cr_assert_geq(dv_map_hlc(a), rb.ts, "joining did not advance the clock");

    /* a's own later write, with its slow clock, must still win */
    put(a, "k", "later", 1000, NULL);
    dv_read ra;
    cr_assert(dv_map_get(a, K("k"), &ra));
    cr_assert_gt(ra.ts, rb.ts);
    ASSERT_READS(a, "k", "later");
    /* and also for another key written afterwards */
    put(a, "k2", "x", 1000, NULL);
    dv_read r2;
    cr_assert(dv_map_get(a, K("k2"), &r2));
    cr_assert_gt(r2.ts, ra.ts);

    /* a's clock also went back in time locally: still increasing */
    put(a, "k", "later2", 10, NULL);
    dv_read r3;
    cr_assert(dv_map_get(a, K("k"), &r3));
    cr_assert_gt(r3.ts, r2.ts);
    dv_map_free(a);
    dv_map_free(b);
    ASSERT_NO_LEAK();
}

/* ---- concurrency semantics ---- */

Test(awmap, concurrent_put_and_remove_keeps_the_put) {
    dv_map *a = dv_map_new(1), *b = dv_map_new(2);
    dv_map *oa = dv_map_new(1), *ob = dv_map_new(2);
    put(a, "k", "v1", 1000, oa);
    flush_outbox(oa, &b, 1, 1 << 16);
    ASSERT_READS(b, "k", "v1");

    /* concurrently: a overwrites, b removes the version it observed */
    put(a, "k", "v2", 1001, oa);
    del(b, "k", ob);
    ASSERT_READS(b, "k", NULL);

    flush_outbox(oa, &b, 1, 1 << 16);
    flush_outbox(ob, &a, 1, 1 << 16);
    ASSERT_READS(a, "k", "v2");
    ASSERT_READS(b, "k", "v2");
    cr_assert(dv_map_equal(a, b));
    cr_assert_eq(dv_map_elements(a), 1);

    /* the same with the remove arriving first at a third replica */
    dv_map *c = dv_map_new(3);
    put(a, "j", "1", 1002, oa);
    flush_outbox(oa, &b, 1, 1 << 16);
    put(a, "j", "2", 1003, oa);
    del(b, "j", ob);
    flush_outbox(ob, &c, 1, 1 << 16);
    ASSERT_READS(c, "j", NULL);
    flush_outbox(oa, &c, 1, 1 << 16);
    ASSERT_READS(c, "j", "2");
    dv_map_free(a);
    dv_map_free(b);
    dv_map_free(c);
    dv_map_free(oa);
    dv_map_free(ob);
    ASSERT_NO_LEAK();
}

Test(awmap, concurrent_puts_keep_both_and_read_the_largest) {
    for (int variant = 0; variant < 3; variant++) {
        dv_map *a = dv_map_new(1), *b = dv_map_new(2);
        dv_map *oa = dv_map_new(1), *ob = dv_map_new(2);
        /* variant 0: b's timestamp is larger; 1: a's is; 2: equal, the rid decides */
        uint64_t ta = variant == 1 ? 2000 : 1000, tb = variant == 0 ? 2000 : 1000;
        put(a, "k", "from-a", ta, oa);
        put(b, "k", "from-b", tb, ob);
        flush_outbox(oa, &b, 1, 1 << 16);
        flush_outbox(ob, &a, 1, 1 << 16);
        cr_assert_eq(dv_map_size(a), 1);
        cr_assert_eq(dv_map_elements(a), 2, "both concurrent elements are kept");
        cr_assert_eq(dv_map_elements(b), 2);
        const char *want = variant == 1 ? "from-a" : "from-b";
        ASSERT_READS(a, "k", want);
        ASSERT_READS(b, "k", want);
        dv_read ra, rb;
        cr_assert(dv_map_get(a, K("k"), &ra) && dv_map_get(b, K("k"), &rb));
        cr_assert(ra.ts == rb.ts && ra.dot.rid == rb.dot.rid && ra.dot.ctr == rb.dot.ctr);
        cr_assert(dv_map_equal(a, b));

        /* a later put that observed both removes both */
        put(a, "k", "final", 3000, oa);
        cr_assert_eq(dv_map_elements(a), 1);
        flush_outbox(oa, &b, 1, 1 << 16);
        cr_assert_eq(dv_map_elements(b), 1);
        ASSERT_READS(b, "k", "final");
        cr_assert(dv_map_equal(a, b));
        dv_map_free(a);
        dv_map_free(b);
        dv_map_free(oa);
        dv_map_free(ob);
    }
    ASSERT_NO_LEAK();
}

Test(awmap, concurrent_puts_tie_break_by_rid_then_counter) {
    /* same timestamp: the larger rid wins whatever the values */
    dv_map *a = dv_map_new(100), *b = dv_map_new(5);
    put(a, "k", "a", 1000, NULL);
    put(b, "k", "zzz", 1000, NULL);
    dv_map *ab = joined(a, b), *ba = joined(b, a);
    ASSERT_READS(ab, "k", "a");
    ASSERT_READS(ba, "k", "a");
    cr_assert(dv_map_equal(ab, ba));
    dv_map_free(ab);
    dv_map_free(ba);

    /* same timestamp and rid (two incarnations, crafted): the larger counter wins */
    dv_buf e, b1;
    dv_buf_init(&e);
    dv_buf_init(&b1);
    uint64_t ts = (uint64_t)5000 << 16;
    dv_encode_elem(&e, (const uint8_t *)"t", 1, (dv_dot){9, 3}, ts, (const uint8_t *)"c3", 2);
    dv_encode_elem(&e, (const uint8_t *)"t", 1, (dv_dot){9, 7}, ts, (const uint8_t *)"c7", 2);
    dv_encode_elem(&e, (const uint8_t *)"t", 1, (dv_dot){9, 5}, ts, (const uint8_t *)"c5", 2);
    dv_encode_delta(&b1, 9, NULL, 0, e.p, e.n, 3);
    join_bytes(a, b1.p, b1.n);
    ASSERT_READS(a, "t", "c7");
    cr_assert_eq(dv_map_elements(a), 4);
    dv_buf_free(&e);
    dv_buf_free(&b1);
    dv_map_free(a);
    dv_map_free(b);
    ASSERT_NO_LEAK();
}

static int log_flush(dv_outbox *log, uint64_t rid, dv_map **to, size_t nto) {
    msgs l = {0};
    cr_assert_eq(dv_outbox_encode(log, rid, 1 << 16, collect, &l), DV_OK);
    for (size_t i = 0; i < l.n; i++)
        for (size_t j = 0; j < nto; j++)
            join_bytes(to[j], l.v[i].p, l.v[i].n);
    int n = (int)l.n;
    msgs_free(&l);
    dv_outbox_reset(log);
    return n;
}

/* Two replicas (rids 1 and 2) that each wrote "k", a the value va at 1000 and b the value vb
 * at 2000, and joined each other's log: both hold both elements, vb reads. */
static void concurrent_pair(const char *va, const char *vb, dv_map **a, dv_map **b, dv_outbox *la,
                            dv_outbox *lb) {
    *a = dv_map_new(1);
    *b = dv_map_new(2);
    dv_outbox_init(la);
    dv_outbox_init(lb);
    cr_assert_eq(dv_map_put_log(*a, K("k"), K(va), 1000, la, NULL), DV_OK);
    cr_assert_eq(dv_map_put_log(*b, K("k"), K(vb), 2000, lb, NULL), DV_OK);
    log_flush(la, 1, b, 1);
    log_flush(lb, 2, a, 1);
}

Test(awmap, remove_value_removes_only_matching_elements) {
    dv_map *a, *b;
    dv_outbox la, lb;
    concurrent_pair("from-a", "from-b", &a, &b, &la, &lb);
    cr_assert_eq(dv_map_elements(a), 2);
    ASSERT_READS(a, "k", "from-b");

    /* a value nobody holds: nothing happens, nothing is logged */
    bool changed = true;
    cr_assert_eq(dv_map_remove_value_log(a, K("k"), K("nope"), &la, &changed), DV_OK);
    cr_assert(!changed);
    cr_assert(dv_outbox_empty(&la));
    cr_assert_eq(dv_map_elements(a), 2);

    /* removing the loser's value: the read does not change */
    cr_assert_eq(dv_map_remove_value_log(a, K("k"), K("from-a"), &la, &changed), DV_OK);
    cr_assert(!changed, "the winner stayed, the read did not change");
    cr_assert_eq(dv_map_elements(a), 1);
    ASSERT_READS(a, "k", "from-b");
    cr_assert_eq(log_flush(&la, 1, &b, 1), 1);
    ASSERT_READS(b, "k", "from-b");
    cr_assert_eq(dv_map_elements(b), 1);
    cr_assert(dv_map_equal(a, b));

    /* removing the winner's value: the key is gone */
    cr_assert_eq(dv_map_remove_value_log(a, K("k"), K("from-b"), &la, &changed), DV_OK);
    cr_assert(changed);
    ASSERT_READS(a, "k", NULL);
    log_flush(&la, 1, &b, 1);
    ASSERT_READS(b, "k", NULL);
    cr_assert(dv_map_equal(a, b));

    /* a concurrent put of the same value elsewhere survives (add-wins) */
    cr_assert_eq(dv_map_put_log(a, K("j"), K("same"), 3000, &la, NULL), DV_OK);
    log_flush(&la, 1, &b, 1);
    cr_assert_eq(dv_map_put_log(b, K("j"), K("same"), 3001, &lb, NULL), DV_OK);
    cr_assert_eq(dv_map_remove_value_log(a, K("j"), K("same"), &la, &changed), DV_OK);
    log_flush(&la, 1, &b, 1);
    log_flush(&lb, 2, &a, 1);
    ASSERT_READS(a, "j", "same");
    ASSERT_READS(b, "j", "same");
    cr_assert(dv_map_equal(a, b));
    dv_outbox_free(&la);
    dv_outbox_free(&lb);
    dv_map_free(a);
    dv_map_free(b);
    ASSERT_NO_LEAK();
}

typedef struct {
    int calls;
    int gone;
    char last_key[32];
    char last_val[32];
} diffs;

static void on_diff(void *ud, const uint8_t *key, uint32_t klen, const dv_read *now) {
    diffs *d = ud;
    d->calls++;
    snprintf(d->last_key, sizeof(d->last_key), "%.*s", (int)klen, (const char *)key);
    if (now)
        snprintf(d->last_val, sizeof(d->last_val), "%.*s", (int)now->vlen, (const char *)now->val);
    else
        d->gone++;
}

/* dv_map_keys_with_hash's visitor: records each key found as on_diff does */
static int record_hit(void *ud, const uint8_t *key, uint32_t klen, const dv_read *r) {
    on_diff(ud, key, klen, r);
    return 0;
}

Test(awmap, remove_prefix_removes_elements_starting_with_it) {
    dv_map *a, *b;
    dv_outbox la, lb;
    concurrent_pair("pidA:1", "pidB:2", &a, &b, &la, &lb);
    ASSERT_READS(a, "k", "pidB:2");

    bool changed = true;
    /* a prefix longer than the values, and one nobody's value starts with: nothing */
    cr_assert_eq(dv_map_remove_prefix_log(a, K("k"), K("pidA:1+more"), &la, &changed), DV_OK);
    cr_assert(!changed);
    cr_assert_eq(dv_map_remove_prefix_log(a, K("k"), K("pidC"), &la, &changed), DV_OK);
    cr_assert(!changed);
    cr_assert(dv_outbox_empty(&la));
    cr_assert_eq(dv_map_elements(a), 2);

    /* the loser's prefix: its element goes, the read stays */
    cr_assert_eq(dv_map_remove_prefix_log(a, K("k"), K("pidA"), &la, &changed), DV_OK);
    cr_assert(!changed);
    cr_assert_eq(dv_map_elements(a), 1);
    log_flush(&la, 1, &b, 1);
    cr_assert(dv_map_equal(a, b));

    /* the winner's prefix: the key goes, on both after the push */
    cr_assert_eq(dv_map_remove_prefix_log(b, K("k"), K("pidB:"), &lb, &changed), DV_OK);
    cr_assert(changed);
    ASSERT_READS(b, "k", NULL);
    log_flush(&lb, 2, &a, 1);
    ASSERT_READS(a, "k", NULL);
    cr_assert(dv_map_equal(a, b));
    dv_outbox_free(&la);
    dv_outbox_free(&lb);
    dv_map_free(a);
    dv_map_free(b);
    ASSERT_NO_LEAK();
}

Test(awmap, keys_with_hash_finds_the_key_of_a_hash) {
    dv_map *m = dv_map_new(1);
    char k[16], v[16];
    for (int i = 0; i < 2000; i++) {
        snprintf(k, sizeof(k), "key%d", i);
        snprintf(v, sizeof(v), "val%d", i);
        cr_assert_eq(dv_map_put(m, K(k), K(v), 1000, NULL, NULL), DV_OK);
    }
    for (int i = 0; i < 2000; i += 7) {
        snprintf(k, sizeof(k), "key%d", i);
        snprintf(v, sizeof(v), "val%d", i);
        diffs h = {0};
        cr_assert_eq(dv_map_keys_with_hash(m, dv_map_key_hash(K(k)), record_hit, &h), 0);
        cr_assert_eq(h.calls, 1);
        cr_assert_str_eq(h.last_key, k);
        cr_assert_str_eq(h.last_val, v);
    }
    diffs none = {0};
    cr_assert_eq(dv_map_keys_with_hash(m, dv_map_key_hash(K("absent")), record_hit, &none), 0);
    cr_assert_eq(none.calls, 0);
    cr_assert_eq(dv_map_remove(m, K("key14"), NULL, NULL), DV_OK);
    cr_assert_eq(dv_map_keys_with_hash(m, dv_map_key_hash(K("key14")), record_hit, &none), 0);
    cr_assert_eq(none.calls, 0, "a removed key is not found");
    dv_map_free(m);
    ASSERT_NO_LEAK();
}

/* ---- joins of crafted deltas ---- */

static void delta_msg(dv_buf *out, uint64_t sender, const dv_range *r, size_t nr,
                      const char *const *keys, const dv_dot *dots, const char *const *vals,
                      size_t ne) {
    dv_buf e;
    dv_buf_init(&e);
    for (size_t i = 0; i < ne; i++)
        dv_encode_elem(&e, K(keys[i]), dots[i], 1000 + i, K(vals[i]));
    dv_buf_reset(out);
    dv_encode_delta(out, sender, r, nr, e.p, e.n, ne);
    dv_buf_free(&e);
}

Test(awmap, partial_delta_never_removes_what_it_does_not_cover) {
    /* b holds k1..k3 from a (dots (1,1)..(1,3)) */
    dv_map *a = dv_map_new(1), *b = dv_map_new(2);
    put(a, "k1", "v1", 1000, NULL);
    put(a, "k2", "v2", 1000, NULL);
    put(a, "k3", "v3", 1000, NULL);
    sync_into(b, a, NULL, 1 << 16);

    /* a delta that carries only a new k2 (dot (1,5)) and covers only that dot and the old k2
     * dot it replaced: k1 and k3 must stay */
    dv_buf m;
    dv_buf_init(&m);
    const char *keys[] = {"k2"}, *vals[] = {"v2b"};
    dv_dot dots[] = {{1, 5}};
    dv_range r[] = {{1, 2, 2}, {1, 5, 5}};
    delta_msg(&m, 1, r, 2, keys, dots, vals, 1);
    join_bytes(b, m.p, m.n);
    ASSERT_READS(b, "k1", "v1");
    ASSERT_READS(b, "k2", "v2b");
    ASSERT_READS(b, "k3", "v3");
    /* seeing dot 5 does not imply having seen 4 (delta_crdt_ex#65): 4 is still missing */
    cr_assert(!dv_ctx_contains(dv_map_ctx(b), (dv_dot){1, 4}));
    cr_assert(dv_ctx_contains(dv_map_ctx(b), (dv_dot){1, 5}));

    /* a delta carrying elements whose ranges do not reach k3's dot leaves k3 alone, even with
     * counters above it */
    const char *keys2[] = {"k9"}, *vals2[] = {"v9"};
    dv_dot dots2[] = {{1, 9}};
    dv_range r2[] = {{1, 6, 9}};
    delta_msg(&m, 1, r2, 1, keys2, dots2, vals2, 1);
    join_bytes(b, m.p, m.n);
    ASSERT_READS(b, "k1", "v1");
    ASSERT_READS(b, "k3", "v3");
    ASSERT_READS(b, "k9", "v9");

    /* an element-only delta (no ranges at all) removes nothing */
    const char *keys3[] = {"k1"}, *vals3[] = {"concurrent"};
    dv_dot dots3[] = {{3, 1}};
    delta_msg(&m, 3, NULL, 0, keys3, dots3, vals3, 1);
    join_bytes(b, m.p, m.n);
    cr_assert_eq(dv_map_elements(b), 5); /* k1 twice, k2, k3, k9 */
    ASSERT_READS(b, "k3", "v3");

    /* but a delta covering k3's dot without carrying it removes k3 (authoritative ranges) */
    dv_range r4[] = {{1, 3, 3}};
    delta_msg(&m, 1, r4, 1, NULL, NULL, NULL, 0);
    join_bytes(b, m.p, m.n);
    ASSERT_READS(b, "k3", NULL);
    ASSERT_READS(b, "k1", "v1"); /* ts 1000 << 16 beats the crafted ts 1000 */
    check_map(b);
    dv_buf_free(&m);
    dv_map_free(a);
    dv_map_free(b);
    ASSERT_NO_LEAK();
}

Test(awmap, duplicate_dot_in_a_delta_is_harmless) {
    dv_map *b = dv_map_new(2);
    put(b, "other", "o", 1000, NULL);
    dv_buf m;
    dv_buf_init(&m);
    const char *keys[] = {"k", "k", "k"}, *vals[] = {"v", "v", "v"};
    dv_dot dots[] = {{1, 1}, {1, 1}, {1, 2}};
    dv_range r[] = {{1, 1, 2}};
    delta_msg(&m, 1, r, 1, keys, dots, vals, 3);
    size_t n = 0;
    join_bytes(b, m.p, m.n);
    cr_assert_eq(dv_map_size(b), 2);
    cr_assert_eq(dv_map_elements(b), 3, "expected one element per distinct dot");
    ASSERT_READS(b, "k", "v");
    check_map(b);
    /* joining it again is a no-op */
    dv_map *before = map_clone(b);
    join_bytes(b, m.p, m.n);
    cr_assert(dv_map_equal(b, before));
    /* a duplicated dot under two different keys (a broken sender) is survivable */
    const char *keys2[] = {"x", "y"}, *vals2[] = {"1", "2"};
    dv_dot dots2[] = {{4, 1}, {4, 1}};
    delta_msg(&m, 4, NULL, 0, keys2, dots2, vals2, 2);
    join_bytes(b, m.p, m.n);
    n = dv_map_elements(b);
    cr_assert_eq(n, 4, "one element per dot");
    check_map(b);
    dv_buf_free(&m);
    dv_map_free(before);
    dv_map_free(b);
    ASSERT_NO_LEAK();
}

Test(awmap, join_reports_read_changes) {
    dv_map *a = dv_map_new(1), *b = dv_map_new(2), *oa = dv_map_new(1);
    diffs d = {0};
    put(a, "k", "v1", 1000, oa);
    msgs l = {0};
    cr_assert_eq(dv_map_delta_since(oa, NULL, 1 << 16, collect, &l), DV_OK);
    dv_map_clear(oa);
    dv_delta dl;
    cr_assert_eq(dv_decode_delta(l.v[0].p, l.v[0].n, &dl), DV_OK);
    cr_assert_eq(dv_map_join(b, &dl, on_diff, &d), DV_OK);
    cr_assert_eq(d.calls, 1);
    cr_assert_str_eq(d.last_key, "k");
    cr_assert_str_eq(d.last_val, "v1");
    d.calls = 0;
    cr_assert_eq(dv_map_join(b, &dl, on_diff, &d), DV_OK);
    cr_assert_eq(d.calls, 0, "a duplicate delivery reported a change");
    dv_delta_free(&dl);
    msgs_free(&l);

    /* a re-put of the same bytes changes the dot, not the read */
    put(a, "k", "v1", 1001, oa);
    cr_assert_eq(dv_map_delta_since(oa, NULL, 1 << 16, collect, &l), DV_OK);
    dv_map_clear(oa);
    cr_assert_eq(dv_decode_delta(l.v[0].p, l.v[0].n, &dl), DV_OK);
    cr_assert_eq(dv_map_join(b, &dl, on_diff, &d), DV_OK);
    cr_assert_eq(d.calls, 0, "same value under a new dot is not a read change");
    dv_delta_free(&dl);
    msgs_free(&l);

    del(a, "k", oa);
    cr_assert_eq(dv_map_delta_since(oa, NULL, 1 << 16, collect, &l), DV_OK);
    dv_map_clear(oa);
    cr_assert_eq(dv_decode_delta(l.v[0].p, l.v[0].n, &dl), DV_OK);
    cr_assert_eq(dv_map_join(b, &dl, on_diff, &d), DV_OK);
    cr_assert_eq(d.calls, 1);
    cr_assert_eq(d.gone, 1);
    ASSERT_READS(b, "k", NULL);
    dv_delta_free(&dl);
    msgs_free(&l);

    /* join_map reports too */
    d = (diffs){0};
    put(a, "j", "x", 1002, NULL);
    put(a, "i", "y", 1002, NULL);
    cr_assert_eq(dv_map_join_map(b, a, on_diff, &d), DV_OK);
    cr_assert_eq(d.calls, 2);
    cr_assert_eq(d.gone, 0);
    dv_map_free(a);
    dv_map_free(b);
    dv_map_free(oa);
    ASSERT_NO_LEAK();
}

Test(awmap, counter_exhaustion_is_an_error_not_a_crash) {
    /* a peer claims to have seen this replica's dot DV_MAX_CTR: no counter is left */
    dv_map *m = dv_map_new(1);
    put(m, "k", "v", 1000, NULL);
    dv_buf b;
    dv_buf_init(&b);
    dv_range r[] = {{1, DV_MAX_CTR, DV_MAX_CTR}};
    dv_encode_delta(&b, 2, r, 1, NULL, 0, 0);
    join_bytes(m, b.p, b.n);
    int rc = dv_map_put(m, K("k"), K("w"), 1001, NULL, NULL);
    cr_assert_neq(rc, DV_OK, "a put past DV_MAX_CTR succeeded");
    ASSERT_READS(m, "k", "v");
    rc = dv_map_put(m, K("new"), K("w"), 1001, NULL, NULL);
    cr_assert_neq(rc, DV_OK);
    ASSERT_READS(m, "new", NULL);
    cr_assert_eq(dv_map_size(m), 1);
    check_map(m);
    dv_buf_free(&b);
    dv_map_free(m);
    ASSERT_NO_LEAK();
}

Test(awmap, equal_detects_differences) {
    dv_map *a = dv_map_new(1), *b = dv_map_new(2);
    cr_assert(dv_map_equal(a, b), "empty maps of different replicas are equal");
    put(a, "k", "v", 1000, NULL);
    cr_assert(!dv_map_equal(a, b));
    dv_map *c = map_clone(a);
    cr_assert(dv_map_equal(a, c));
    /* same elements, larger context */
    dv_buf m;
    dv_buf_init(&m);
    dv_range r[] = {{5, 1, 1}};
    dv_encode_delta(&m, 5, r, 1, NULL, 0, 0);
    join_bytes(c, m.p, m.n);
    cr_assert(!dv_map_equal(a, c));
    cr_assert(!dv_map_equal(c, a));
    /* same context, different value under another dot */
    dv_map *d = map_clone(a);
    put(a, "k", "v2", 1000, NULL);
    put(d, "k", "v3", 1000, NULL);
    cr_assert(!dv_map_equal(a, d));
    dv_buf_free(&m);
    dv_map_free(a);
    dv_map_free(b);
    dv_map_free(c);
    dv_map_free(d);
    ASSERT_NO_LEAK();
}

/* ---- delta_since ---- */

/* Every live element of m (delta_since(m, NULL) in one message). */
static void all_elements(const dv_map *m, msgs *one) {
    cr_assert_eq(dv_map_delta_since(m, NULL, SIZE_MAX, collect, one), DV_OK);
    cr_assert_leq(one->n, 1);
}

static bool ranges_have(const dv_delta *d, dv_dot x) {
    for (size_t i = 0; i < d->nranges; i++)
        if (d->ranges[i].rid == x.rid && d->ranges[i].lo <= x.ctr && x.ctr <= d->ranges[i].hi)
            return true;
    return false;
}

/* Chunks of delta_since(m, seen, max_bytes): sizes, authority, and that together they are
 * exactly what seen lacks. */
static void check_chunks(const dv_map *m, const dv_ctx *seen, size_t max_bytes, msgs *chunks) {
    cr_assert_eq(dv_map_delta_since(m, seen, max_bytes, collect, chunks), DV_OK);
    msgs all = {0};
    all_elements(m, &all);
    dv_delta full = {0};
    if (all.n)
        cr_assert_eq(dv_decode_delta(all.v[0].p, all.v[0].n, &full), DV_OK);
    dv_ctx covered;
    dv_ctx_init(&covered);
    size_t carried = 0;
    for (size_t c = 0; c < chunks->n; c++) {
        dv_delta d;
        cr_assert_eq(dv_decode_delta(chunks->v[c].p, chunks->v[c].n, &d), DV_OK);
        cr_assert_eq(d.sender, dv_map_rid(m));
        cr_assert(d.nranges || d.nelems, "empty chunk");
        size_t biggest = 0;
        for (size_t i = 0; i < d.nelems; i++) {
            size_t w =
                dv_elem_wire_size(d.elems[i].klen, d.elems[i].dot, d.elems[i].ts, d.elems[i].vlen);
            if (w > biggest)
                biggest = w;
            cr_assert(!(seen && dv_ctx_contains(seen, d.elems[i].dot)), "sent a seen element");
        }
        cr_assert_leq(chunks->v[c].n, max_bytes + biggest + 64 + 12 * d.nranges,
                      "chunk of %zu bytes for max_bytes %zu (largest element %zu)", chunks->v[c].n,
                      max_bytes, biggest);
        /* authoritative: every live element of m inside its ranges is carried */
        for (size_t i = 0; i < full.nelems; i++) {
            if (!ranges_have(&d, full.elems[i].dot))
                continue;
            bool found = false;
            for (size_t j = 0; j < d.nelems && !found; j++)
                found = d.elems[j].dot.rid == full.elems[i].dot.rid &&
                        d.elems[j].dot.ctr == full.elems[i].dot.ctr;
            cr_assert(found, "chunk covers a live dot it does not carry");
        }
        for (size_t i = 0; i < d.nranges; i++)
            cr_assert_eq(
                dv_ctx_add_range(&covered, d.ranges[i].rid, d.ranges[i].lo, d.ranges[i].hi), DV_OK);
        carried += d.nelems;
        dv_delta_free(&d);
    }
    /* together: exactly m's context minus seen, and every unseen live element */
    dv_ranges want;
    dv_ranges_init(&want);
    cr_assert_eq(dv_ctx_diff(dv_map_ctx(m), seen, &want), DV_OK);
    dv_ctx wantc;
    dv_ctx_init(&wantc);
    cr_assert_eq(dv_ctx_from_ranges(&wantc, want.r, want.n), DV_OK);
    cr_assert(dv_ctx_equal(&covered, &wantc), "chunks do not cover exactly what seen lacks");
    size_t unseen = 0;
    for (size_t i = 0; i < full.nelems; i++)
        unseen += !(seen && dv_ctx_contains(seen, full.elems[i].dot));
    cr_assert_eq(carried, unseen);
    dv_ranges_free(&want);
    dv_ctx_free(&wantc);
    dv_ctx_free(&covered);
    dv_delta_free(&full);
    msgs_free(&all);
}

static void random_value(char *v, size_t cap) {
    size_t n = rnd_below(cap - 1);
    for (size_t i = 0; i < n; i++)
        v[i] = (char)('a' + rnd_below(26));
    v[n] = 0;
}

Test(awmap, delta_since_chunks_respect_max_bytes_and_are_authoritative) {
    static const size_t sizes[] = {1, 40, 100, 300, 1000, 1 << 20};
    for (int seed = 1; seed <= 6; seed++) {
        rng_state = (uint64_t)seed * 1009;
        dv_map *a = dv_map_new(1), *b = dv_map_new(2);
        char k[16], v[200];
        for (int i = 0; i < 150; i++) {
            snprintf(k, sizeof(k), "k%d", (int)rnd_below(60));
            random_value(v, sizeof(v));
            dv_map *target = rnd_below(3) ? a : b;
            if (rnd_below(5) == 0)
                del(target, k, NULL);
            else
                put(target, k, v, 1000 + (uint64_t)i, NULL);
            if (rnd_below(20) == 0)
                sync_into(a, b, dv_map_ctx(a), 200);
        }
        /* one oversized element */
        static char huge[3000];
        memset(huge, 'H', sizeof(huge) - 1);
        put(a, "huge", huge, 5000, NULL);
        for (size_t s = 0; s < sizeof(sizes) / sizeof(sizes[0]); s++) {
            msgs chunks = {0};
            check_chunks(a, NULL, sizes[s], &chunks);
            if (sizes[s] >= (1 << 20))
                cr_assert_eq(chunks.n, 1);
            if (sizes[s] == 100)
                cr_assert_gt(chunks.n, 10);
            msgs_free(&chunks);
            check_chunks(a, dv_map_ctx(b), sizes[s], &chunks);
            msgs_free(&chunks);
        }
        /* nothing to send: no message */
        msgs none = {0};
        cr_assert_eq(dv_map_delta_since(a, dv_map_ctx(a), 100, collect, &none), DV_OK);
        cr_assert_eq(none.n, 0);
        dv_map *empty = dv_map_new(3);
        cr_assert_eq(dv_map_delta_since(empty, NULL, 100, collect, &none), DV_OK);
        cr_assert_eq(none.n, 0);
        dv_map_free(empty);
        dv_map_free(a);
        dv_map_free(b);
    }
    ASSERT_NO_LEAK();
}

static int stop_at_second(void *ud, const uint8_t *p, size_t n) {
    (void)p;
    (void)n;
    return ++*(int *)ud == 2 ? 77 : 0;
}

Test(awmap, delta_since_emit_abort) {
    dv_map *a = dv_map_new(1);
    char k[16];
    for (int i = 0; i < 50; i++) {
        snprintf(k, sizeof(k), "k%d", i);
        put(a, k, "v", 1000, NULL);
    }
    int n = 0;
    cr_assert_eq(dv_map_delta_since(a, NULL, 30, stop_at_second, &n), 77);
    cr_assert_eq(n, 2);
    dv_map_free(a);
    ASSERT_NO_LEAK();
}

/* Does the delta carry an element with this key and value? */
static bool carries(const dv_delta *d, const kv *x) {
    for (size_t i = 0; i < d->nelems; i++)
        if (cmp_bytes(d->elems[i].key, d->elems[i].klen, x->k, x->klen) == 0 &&
            cmp_bytes(d->elems[i].val, d->elems[i].vlen, x->v, x->vlen) == 0)
            return true;
    return false;
}

Test(awmap, any_subset_of_chunks_is_safe) {
    for (int seed = 1; seed <= 20; seed++) {
        rng_state = (uint64_t)seed * 7777;
        dv_map *a = dv_map_new(1), *b = dv_map_new(2);
        char k[16], v[40];
        /* shared history, then both sides move on */
        for (int i = 0; i < 40; i++) {
            snprintf(k, sizeof(k), "k%d", (int)rnd_below(30));
            random_value(v, sizeof(v));
            put(a, k, v, 1000, NULL);
        }
        sync_into(b, a, dv_map_ctx(b), 1 << 16);
        for (int i = 0; i < 60; i++) {
            snprintf(k, sizeof(k), "k%d", (int)rnd_below(40));
            random_value(v, sizeof(v));
            dv_map *t = rnd_below(2) ? a : b;
            if (rnd_below(4) == 0)
                del(t, k, NULL);
            else
                put(t, k, v, 2000 + (uint64_t)i, NULL);
        }
        /* every element either side holds, and the keys of the join */
        msgs all_a = {0}, all_b = {0};
        all_elements(a, &all_a);
        all_elements(b, &all_b);
        dv_delta ea, eb;
        cr_assert_eq(dv_decode_delta(all_a.v[0].p, all_a.v[0].n, &ea), DV_OK);
        cr_assert_eq(dv_decode_delta(all_b.v[0].p, all_b.v[0].n, &eb), DV_OK);
        dv_map *ab = joined(a, b);
        kvs before_b, join_keys;
        snapshot(b, &before_b);
        snapshot(ab, &join_keys);

        msgs chunks = {0};
        cr_assert_eq(dv_map_delta_since(a, dv_map_ctx(b), 60, collect, &chunks), DV_OK);
        cr_assert_gt(chunks.n, 2);
        /* deliver a random subset, in a random order, some twice */
        for (size_t i = 0; i < chunks.n * 2; i++) {
            if (rnd_below(2))
                continue;
            size_t c = rnd_below(chunks.n);
            join_bytes(b, chunks.v[c].p, chunks.v[c].n);
            check_map(b);
            /* every key b had is still there; every value was written by a or b */
            kvs now;
            snapshot(b, &now);
            for (size_t x = 0; x < before_b.n; x++)
                cr_assert(dv_map_get(b, before_b.v[x].k, before_b.v[x].klen, NULL),
                          "seed %d: b lost key %.*s after a partial delivery", seed,
                          (int)before_b.v[x].klen, (const char *)before_b.v[x].k);
            for (size_t y = 0; y < now.n; y++)
                cr_assert(carries(&ea, &now.v[y]) || carries(&eb, &now.v[y]),
                          "seed %d: b reads a value nobody holds", seed);
            kvs_free(&now);
        }
        /* then everything: b has every key of the join (and maybe elements that a removed
         * after b had seen them: those go with the removal rules, not delta_since) */
        for (size_t c = 0; c < chunks.n; c++)
            join_bytes(b, chunks.v[c].p, chunks.v[c].n);
        for (size_t x = 0; x < join_keys.n; x++)
            cr_assert(dv_map_get(b, join_keys.v[x].k, join_keys.v[x].klen, NULL),
                      "seed %d: key %.*s of the join missing", seed, (int)join_keys.v[x].klen,
                      (const char *)join_keys.v[x].k);
        cr_assert(dv_ctx_equal(dv_map_ctx(b), dv_map_ctx(ab)));
        msgs_free(&chunks);
        kvs_free(&before_b);
        kvs_free(&join_keys);
        dv_delta_free(&ea);
        dv_delta_free(&eb);
        msgs_free(&all_a);
        msgs_free(&all_b);
        dv_map_free(ab);
        dv_map_free(a);
        dv_map_free(b);
    }
    ASSERT_NO_LEAK();
}

/* delta_crdt_ex#65: concurrent writers, a lossy first sync, then a full sync both ways. */
Test(awmap, regression_65_no_key_lost_after_partial_sync) {
    enum { N = 1000 };
    dv_map *a = dv_map_new(1), *b = dv_map_new(2);
    char k[16];
    for (int i = 0; i < N; i++) {
        snprintf(k, sizeof(k), "a%d", i);
        put(a, k, k, 1000 + (uint64_t)i, NULL);
        snprintf(k, sizeof(k), "b%d", i);
        put(b, k, k, 1000 + (uint64_t)i, NULL);
    }
    /* A -> B in tiny chunks; every other one is lost */
    msgs chunks = {0};
    cr_assert_eq(dv_map_delta_since(a, dv_map_ctx(b), 64, collect, &chunks), DV_OK);
    cr_assert_gt(chunks.n, 20);
    for (size_t c = 0; c < chunks.n; c += 2)
        join_bytes(b, chunks.v[c].p, chunks.v[c].n);
    msgs_free(&chunks);
    for (int i = 0; i < N; i++) {
        snprintf(k, sizeof(k), "b%d", i);
        cr_assert(dv_map_get(b, K(k), NULL), "b lost its own key %s", k);
    }
    /* full sync both ways */
    dv_ctx cb;
    dv_ctx_init(&cb);
    cr_assert_eq(dv_ctx_copy(&cb, dv_map_ctx(b)), DV_OK);
    sync_into(b, a, &cb, 64);
    sync_into(a, b, dv_map_ctx(a), 64);
    dv_ctx_free(&cb);
    cr_assert_eq(dv_map_size(a), 2 * N);
    cr_assert_eq(dv_map_size(b), 2 * N);
    for (int i = 0; i < N; i++) {
        snprintf(k, sizeof(k), "a%d", i);
        ASSERT_READS(a, k, k);
        ASSERT_READS(b, k, k);
        snprintf(k, sizeof(k), "b%d", i);
        ASSERT_READS(a, k, k);
        ASSERT_READS(b, k, k);
    }
    cr_assert(dv_map_equal(a, b));
    dv_map_free(a);
    dv_map_free(b);
    ASSERT_NO_LEAK();
}

/* A delta whose ranges span far more counters than the receiver holds elements takes the
 * join's scan path instead of probing each counter: same result. */
Test(awmap, join_with_wide_ranges) {
    dv_map *a = dv_map_new(1), *b = dv_map_new(2);
    put(a, "k0", "0", 1000, NULL);
    put(a, "k1", "1", 1000, NULL);
    put(a, "k2", "2", 1000, NULL);
    sync_into(b, a, NULL, 1 << 16);
    put(b, "mine", "m", 1000, NULL);
    del(a, "k1", NULL);
    char k[16];
    for (int i = 0; i < 300; i++) {
        snprintf(k, sizeof(k), "x%d", i);
        put(a, k, "x", 1000, NULL);
    }
    for (int i = 0; i < 300; i += 2) {
        snprintf(k, sizeof(k), "x%d", i);
        del(a, k, NULL);
    }
    dv_map *want = joined(b, a);
    sync_into(b, a, NULL, SIZE_MAX); /* one message: ranges 1..303 of replica 1 */
    ASSERT_READS(b, "k0", "0");
    ASSERT_READS(b, "k1", NULL);
    ASSERT_READS(b, "k2", "2");
    ASSERT_READS(b, "mine", "m");
    ASSERT_READS(b, "x0", NULL);
    ASSERT_READS(b, "x1", "x");
    cr_assert_eq(dv_map_size(b), 2 + 1 + 150);
    cr_assert(dv_map_equal(b, want));

    /* and a removal-only delta spanning a huge range */
    dv_buf m;
    dv_buf_init(&m);
    dv_range r[] = {{1, 1, (uint64_t)1 << 40}};
    dv_encode_delta(&m, 1, r, 1, NULL, 0, 0);
    join_bytes(b, m.p, m.n);
    cr_assert_eq(dv_map_size(b), 1);
    ASSERT_READS(b, "mine", "m");
    dv_buf_free(&m);
    dv_map_free(want);
    dv_map_free(a);
    dv_map_free(b);
    ASSERT_NO_LEAK();
}

/* ---- lattice laws on random states ---- */

#define NKEYS 8

static void random_op(dv_map *m, dv_map *outbox, uint64_t now) {
    char k[16], v[24];
    snprintf(k, sizeof(k), "k%d", (int)rnd_below(NKEYS));
    if (rnd_below(4) == 0) {
        del(m, k, outbox);
    } else {
        random_value(v, sizeof(v));
        put(m, k, v, now, outbox);
    }
}

/* Join a random subset of m's chunks (delta_since against NULL or dst's context). */
static void random_partial_join(dv_map *dst, const dv_map *src) {
    msgs l = {0};
    const dv_ctx *seen = rnd_below(2) ? NULL : dv_map_ctx(dst);
    dv_ctx snap;
    dv_ctx_init(&snap);
    if (seen)
        cr_assert_eq(dv_ctx_copy(&snap, seen), DV_OK);
    cr_assert_eq(dv_map_delta_since(src, seen ? &snap : NULL, 20 + rnd_below(200), collect, &l),
                 DV_OK);
    for (size_t i = 0; i < l.n; i++)
        if (rnd_below(3))
            join_bytes(dst, l.v[i].p, l.v[i].n);
    dv_ctx_free(&snap);
    msgs_free(&l);
}

Test(awmap, join_commutative_associative_idempotent) {
    for (int seed = 1; seed <= 20; seed++) {
        rng_state = (uint64_t)seed * 104729;
        dv_map *m[3] = {dv_map_new(1), dv_map_new(2), dv_map_new(3)};
        for (int step = 0; step < 120; step++) {
            int i = (int)rnd_below(3);
            if (rnd_below(5) == 0)
                random_partial_join(m[i], m[rnd_below(3)]);
            else if (rnd_below(12) == 0)
                cr_assert_eq(dv_map_join_map(m[i], m[rnd_below(3)], NULL, NULL), DV_OK);
            else
                random_op(m[i], NULL, 1000 + (uint64_t)step);
        }
        dv_map *A = m[0], *B = m[1], *C = m[2];
        for (int i = 0; i < 3; i++)
            check_map(m[i]);

        dv_map *ab = joined(A, B), *ba = joined(B, A);
        cr_assert(dv_map_equal(ab, ba), "seed %d: join not commutative", seed);
        kvs s1, s2;
        snapshot(ab, &s1);
        snapshot(ba, &s2);
        cr_assert(kvs_equal(&s1, &s2, false), "seed %d: reads differ", seed);
        kvs_free(&s1);
        kvs_free(&s2);

        dv_map *ab_c = joined(ab, C), *bc = joined(B, C), *a_bc = joined(A, bc);
        cr_assert(dv_map_equal(ab_c, a_bc), "seed %d: join not associative", seed);
        dv_map *aa = joined(A, A);
        cr_assert(dv_map_equal(aa, A), "seed %d: join not idempotent", seed);
        cr_assert_eq(dv_map_join_map(aa, aa, NULL, NULL), DV_OK); /* self join */
        cr_assert(dv_map_equal(aa, A));
        /* absorption: (A ⊔ B) ⊔ A == A ⊔ B */
        dv_map *ab_a = joined(ab, A);
        cr_assert(dv_map_equal(ab_a, ab));

        /* the join of all of B's chunks equals the state join */
        dv_map *viachunks = map_clone(A);
        sync_into(viachunks, B, NULL, 50);
        cr_assert(dv_map_equal(viachunks, ab), "seed %d: chunked join != state join", seed);
        uint64_t d1[DV_BUCKETS], d2[DV_BUCKETS];
        dv_map_digest(viachunks, d1);
        dv_map_digest(ab, d2);
        cr_assert_eq(memcmp(d1, d2, sizeof(d1)), 0);

        dv_map *all[] = {ab, ba, ab_c, bc, a_bc, aa, ab_a, viachunks, A, B, C};
        for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++) {
            check_map(all[i]);
            dv_map_free(all[i]);
        }
    }
    ASSERT_NO_LEAK();
}

/* ---- digests, manifests, removal rules ---- */

static void decode_manifest_buf(const dv_buf *b, dv_manifest *m) {
    int rc = dv_decode_manifest(b->p, b->n, m);
    cr_assert_eq(rc, DV_OK, "manifest: %s", dv_strerror(rc));
}

Test(awmap, digest_and_manifest_basics) {
    dv_map *a = dv_map_new(1), *b = dv_map_new(2);
    uint64_t da[DV_BUCKETS], db[DV_BUCKETS];
    dv_map_digest(a, da);
    dv_map_digest(b, db);
    cr_assert_eq(memcmp(da, db, sizeof(da)), 0, "empty maps differ");

    char k[16];
    for (int i = 0; i < 40; i++) {
        snprintf(k, sizeof(k), "k%d", i);
        put(a, k, "v", 1000, NULL);
    }
    dv_map_digest(a, da);
    cr_assert_neq(memcmp(da, db, sizeof(da)), 0);
    sync_into(b, a, NULL, 1 << 16);
    dv_map_digest(b, db);
    cr_assert_eq(memcmp(da, db, sizeof(da)), 0, "equal live sets, different digests");

    /* the digest depends on the live dots only, not on the context */
    dv_buf m;
    dv_buf_init(&m);
    dv_range r[] = {{9, 1, 3}};
    dv_encode_delta(&m, 9, r, 1, NULL, 0, 0);
    join_bytes(b, m.p, m.n);
    dv_map_digest(b, db);
    cr_assert_eq(memcmp(da, db, sizeof(da)), 0);

    /* full manifest: every live dot */
    dv_buf_reset(&m);
    size_t nb = 0;
    cr_assert_eq(dv_map_manifest(a, NULL, SIZE_MAX, &m, &nb), DV_OK);
    cr_assert_eq(nb, DV_BUCKETS, "every bucket differs from no digest");
    dv_manifest man;
    decode_manifest_buf(&m, &man);
    cr_assert_eq(man.ndots, 40);
    for (size_t i = 0; i < man.ndots; i++)
        cr_assert(man.dots[i].rid == 1 && man.dots[i].ctr >= 1 && man.dots[i].ctr <= 40);
    dv_manifest_free(&man);

    /* equal digests: nothing differs */
    dv_buf_reset(&m);
    cr_assert_eq(dv_map_manifest(a, db, 100, &m, &nb), DV_OK);
    cr_assert_eq(nb, 0);
    decode_manifest_buf(&m, &man);
    cr_assert_eq(man.nbuckets, 0);
    cr_assert_eq(man.ndots, 0);
    dv_manifest_free(&man);

    /* one change: only its bucket */
    put(a, "k7", "changed", 2000, NULL);
    dv_map_digest(a, da);
    dv_buf_reset(&m);
    cr_assert_eq(dv_map_manifest(a, db, 100, &m, &nb), DV_OK);
    cr_assert_eq(nb, 1);
    decode_manifest_buf(&m, &man);
    cr_assert_eq(man.nbuckets, 1);
    cr_assert_geq(man.ndots, 1);
    dv_manifest_free(&man);

    /* max_dots: whole buckets, at least one */
    dv_buf_reset(&m);
    cr_assert_eq(dv_map_manifest(a, NULL, 5, &m, &nb), DV_OK);
    decode_manifest_buf(&m, &man);
    cr_assert_geq(man.nbuckets, 1);
    cr_assert_leq(man.ndots, 5 + 40);
    cr_assert(man.ndots <= 5 || man.nbuckets == 1, "went past max_dots with %zu buckets",
              man.nbuckets);
    dv_manifest_free(&man);
    dv_buf_reset(&m);
    cr_assert_eq(dv_map_manifest(a, NULL, 0, &m, &nb), DV_OK);
    decode_manifest_buf(&m, &man);
    cr_assert_geq(man.nbuckets, 1, "max_dots 0 must still send one bucket");
    dv_manifest_free(&man);
    dv_buf_free(&m);
    dv_map_free(a);
    dv_map_free(b);
    ASSERT_NO_LEAK();
}

Test(awmap, removal_rules_settle_removed_dots) {
    dv_map *a = dv_map_new(1), *b = dv_map_new(2);
    char k[16];
    for (int i = 0; i < 20; i++) {
        snprintf(k, sizeof(k), "k%d", i);
        put(a, k, "v", 1000, NULL);
    }
    sync_into(b, a, NULL, 1 << 16);
    /* b removes k3 and k4; a removes k10 (concurrently, no outbox: nobody is told) */
    del(b, "k3", NULL);
    del(b, "k4", NULL);
    del(a, "k10", NULL);
    /* delta_since cannot carry these removals: both have seen every dot */
    sync_into(b, a, dv_map_ctx(b), 1 << 16);
    sync_into(a, b, dv_map_ctx(a), 1 << 16);
    ASSERT_READS(a, "k3", "v");
    ASSERT_READS(b, "k10", "v");

    /* digest -> manifest (b's context first) -> both removal rules at a */
    uint64_t da[DV_BUCKETS];
    dv_map_digest(a, da);
    dv_ctx bctx;
    dv_ctx_init(&bctx);
    cr_assert_eq(dv_ctx_copy(&bctx, dv_map_ctx(b)), DV_OK);
    dv_buf m, out;
    dv_buf_init(&m);
    dv_buf_init(&out);
    size_t nb = 0, count = 0;
    cr_assert_eq(dv_map_manifest(b, da, 1000, &m, &nb), DV_OK);
    cr_assert_geq(nb, 1);
    dv_manifest man;
    decode_manifest_buf(&m, &man);
    diffs d = {0};
    cr_assert_eq(dv_map_apply_peer_removals(a, &bctx, &man, on_diff, &d, &count), DV_OK);
    cr_assert_eq(count, 2);
    cr_assert_eq(d.gone, 2);
    ASSERT_READS(a, "k3", NULL);
    ASSERT_READS(a, "k4", NULL);
    ASSERT_READS(a, "k5", "v");
    cr_assert_eq(dv_map_removals_for(a, &man, &out, &count), DV_OK);
    cr_assert_eq(count, 1);
    cr_assert_gt(out.n, 0);
    join_bytes(b, out.p, out.n);
    ASSERT_READS(b, "k10", NULL);
    cr_assert(dv_map_equal(a, b));

    /* nothing left to do: no removals, no message */
    dv_manifest_free(&man);
    dv_map_digest(a, da);
    dv_buf_reset(&m);
    dv_buf_reset(&out);
    cr_assert_eq(dv_map_manifest(b, da, 1000, &m, &nb), DV_OK);
    cr_assert_eq(nb, 0);
    decode_manifest_buf(&m, &man);
    cr_assert_eq(dv_map_apply_peer_removals(a, dv_map_ctx(b), &man, NULL, NULL, &count), DV_OK);
    cr_assert_eq(count, 0);
    cr_assert_eq(dv_map_removals_for(a, &man, &out, &count), DV_OK);
    cr_assert_eq(count, 0);
    cr_assert_eq(out.n, 0);
    dv_manifest_free(&man);

    /* a dot the peer has not seen is never removed by its absence from the manifest */
    put(a, "fresh", "f", 3000, NULL);
    dv_map_digest(a, da);
    dv_buf_reset(&m);
    cr_assert_eq(dv_map_manifest(b, da, 1000, &m, &nb), DV_OK);
    decode_manifest_buf(&m, &man);
    cr_assert_eq(dv_map_apply_peer_removals(a, dv_map_ctx(b), &man, NULL, NULL, &count), DV_OK);
    cr_assert_eq(count, 0);
    ASSERT_READS(a, "fresh", "f");
    dv_manifest_free(&man);

    dv_ctx_free(&bctx);
    dv_buf_free(&m);
    dv_buf_free(&out);
    dv_map_free(a);
    dv_map_free(b);
    ASSERT_NO_LEAK();
}

/* ---- allocation failure ---- */

/* Every element a map holds has its dot in the context: delta_since(m, NULL) checks that (it
 * fails with DV_EINVAL otherwise), and a state transfer must reproduce the map. */
static void check_invariant(const dv_map *m, const char *what, long k) {
    check_map(m);
    dv_map *copy = dv_map_new(dv_map_rid(m));
    int rc = dv_map_delta_since(m, NULL, 1 << 16, join_emit, copy);
    cr_assert_eq(rc, DV_OK, "%s failing at allocation %ld: delta_since gives %s", what, k,
                 dv_strerror(rc));
    cr_assert(dv_map_equal(copy, m), "%s failing at allocation %ld: broken state", what, k);
    dv_map_free(copy);
}

Test(awmap, join_under_allocation_failure_stays_valid) {
    rng_state = 31337;
    /* a receiver with some state, and a big delta (new keys, overwrites, removals) */
    dv_map *a = dv_map_new(1), *b = dv_map_new(2);
    char k[16], v[24];
    for (int i = 0; i < 30; i++) {
        snprintf(k, sizeof(k), "k%d", i);
        put(a, k, "a", 1000, NULL);
    }
    sync_into(b, a, NULL, 1 << 16);
    for (int i = 0; i < 60; i++) {
        snprintf(k, sizeof(k), "k%d", (int)rnd_below(50));
        random_value(v, sizeof(v));
        if (rnd_below(4) == 0)
            del(a, k, NULL);
        else
            put(a, k, v, 2000, NULL);
        snprintf(k, sizeof(k), "b%d", i);
        put(b, k, "b", 2000, NULL);
    }
    msgs one = {0};
    cr_assert_eq(dv_map_delta_since(a, NULL, SIZE_MAX, collect, &one), DV_OK);
    cr_assert_eq(one.n, 1);
    dv_delta d;
    cr_assert_eq(dv_decode_delta(one.v[0].p, one.v[0].n, &d), DV_OK);
    dv_map *want = map_clone(b);
    cr_assert_eq(dv_map_join(want, &d, NULL, NULL), DV_OK);

    bool saw_enomem = false;
    for (long kk = 0; kk < 400; kk++) {
        dv_map *t = map_clone(b);
        fail_after = kk;
        int rc = dv_map_join(t, &d, NULL, NULL);
        fail_after = -1;
        cr_assert(rc == DV_OK || rc == DV_ENOMEM, "join failing at %ld: %d", kk, rc);
        saw_enomem |= rc == DV_ENOMEM;
        check_invariant(t, "join", kk);
        /* below the full join: joining again completes it */
        cr_assert_eq(dv_map_join(t, &d, NULL, NULL), DV_OK);
        cr_assert(dv_map_equal(t, want), "join failing at allocation %ld: retry differs", kk);
        dv_map_free(t);
        if (rc == DV_OK)
            break;
    }
    cr_assert(saw_enomem);

    /* elements of many replicas, beyond their first counter: each one needs context memory
     * (a new entry, a new cloud) after its element is in place */
    dv_buf e, m;
    dv_buf_init(&e);
    dv_buf_init(&m);
    for (uint64_t r = 0; r < 12; r++) {
        snprintf(k, sizeof(k), "r%d", (int)r);
        dv_encode_elem(&e, K(k), (dv_dot){100 + r, 3 + r}, 5000 << 16, K("v"));
    }
    dv_encode_delta(&m, 100, NULL, 0, e.p, e.n, 12);
    dv_delta d2;
    cr_assert_eq(dv_decode_delta(m.p, m.n, &d2), DV_OK);
    dv_map *want2 = map_clone(b);
    cr_assert_eq(dv_map_join(want2, &d2, NULL, NULL), DV_OK);
    for (long kk = 0; kk < 400; kk++) {
        dv_map *t = map_clone(b);
        fail_after = kk;
        int rc = dv_map_join(t, &d2, NULL, NULL);
        fail_after = -1;
        cr_assert(rc == DV_OK || rc == DV_ENOMEM, "join failing at %ld: %d", kk, rc);
        check_invariant(t, "join of many replicas", kk);
        cr_assert_eq(dv_map_join(t, &d2, NULL, NULL), DV_OK);
        cr_assert(dv_map_equal(t, want2), "join failing at allocation %ld: retry differs", kk);
        dv_map_free(t);
        if (rc == DV_OK)
            break;
    }
    dv_delta_free(&d2);
    dv_map_free(want2);
    dv_buf_free(&e);
    dv_buf_free(&m);

    /* local writes with an outbox under allocation failure: the map and the outbox stay
     * valid whatever the result */
    for (long kk = 0; kk < 60; kk++) {
        dv_map *t = map_clone(b), *ob = dv_map_new(2);
        put(t, "k1", "warm", 3000, ob);
        fail_after = kk;
        int rc1 = dv_map_put(t, K("k1"), K("x"), 3001, ob, NULL);
        int rc2 = dv_map_put(t, K("fresh-key"), K("y"), 3002, ob, NULL);
        int rc3 = dv_map_remove(t, K("k2"), ob, NULL);
        fail_after = -1;
        cr_assert((rc1 == DV_OK || rc1 == DV_ENOMEM) && (rc2 == DV_OK || rc2 == DV_ENOMEM) &&
                  (rc3 == DV_OK || rc3 == DV_ENOMEM));
        check_invariant(t, "put", kk);
        check_invariant(ob, "outbox", kk);
        dv_map_free(t);
        dv_map_free(ob);
    }
    dv_delta_free(&d);
    msgs_free(&one);
    dv_map_free(want);
    dv_map_free(a);
    dv_map_free(b);
    ASSERT_NO_LEAK();
}

Test(awmap, anti_entropy_primitives_under_allocation_failure) {
    rng_state = 4242;
    dv_map *a = dv_map_new(1), *b = dv_map_new(2);
    char k[16], v[24];
    for (int i = 0; i < 80; i++) {
        snprintf(k, sizeof(k), "k%d", (int)rnd_below(40));
        random_value(v, sizeof(v));
        dv_map *t = rnd_below(2) ? a : b;
        if (rnd_below(5) == 0)
            del(t, k, NULL);
        else
            put(t, k, v, 1000 + (uint64_t)i, NULL);
        if (i == 40)
            sync_into(b, a, NULL, 1 << 16);
    }
    uint64_t da[DV_BUCKETS];
    dv_map_digest(a, da);
    long base = live_blocks;
    for (long kk = 0; kk < 200; kk++) {
        /* delta_since */
        msgs l = {0};
        fail_after = kk;
        int rc = dv_map_delta_since(a, dv_map_ctx(b), 100, collect, &l);
        fail_after = -1;
        cr_assert(rc == DV_OK || rc == DV_ENOMEM);
        msgs_free(&l);
        cr_assert_eq(live_blocks, base, "delta_since failing at %ld leaked", kk);

        /* join_map */
        dv_map *t = map_clone(b);
        fail_after = kk;
        rc = dv_map_join_map(t, a, NULL, NULL);
        fail_after = -1;
        cr_assert(rc == DV_OK || rc == DV_ENOMEM);
        check_invariant(t, "join_map", kk);
        cr_assert_eq(dv_map_join_map(t, a, NULL, NULL), DV_OK);
        dv_map *want = joined(b, a);
        cr_assert(dv_map_equal(t, want), "join_map failing at %ld: retry differs", kk);
        dv_map_free(want);

        /* manifest, removals_for, apply_peer_removals */
        dv_buf mb, out;
        dv_buf_init(&mb);
        dv_buf_init(&out);
        fail_after = kk;
        rc = dv_map_manifest(b, da, 8, &mb, NULL);
        fail_after = -1;
        cr_assert(rc == DV_OK || rc == DV_ENOMEM);
        if (rc == DV_OK) {
            dv_manifest man;
            decode_manifest_buf(&mb, &man);
            size_t count;
            fail_after = kk;
            rc = dv_map_removals_for(a, &man, &out, &count);
            fail_after = -1;
            cr_assert(rc == DV_OK || rc == DV_ENOMEM);
            dv_map *u = map_clone(a);
            fail_after = kk;
            rc = dv_map_apply_peer_removals(u, dv_map_ctx(b), &man, NULL, NULL, &count);
            fail_after = -1;
            cr_assert(rc == DV_OK || rc == DV_ENOMEM);
            check_invariant(u, "apply_peer_removals", kk);
            dv_map_free(u);
            dv_manifest_free(&man);
        }
        dv_buf_free(&mb);
        dv_buf_free(&out);
        dv_map_free(t);
        cr_assert_eq(live_blocks, base, "failing at %ld leaked %ld blocks", kk, live_blocks - base);
    }
    dv_map_free(a);
    dv_map_free(b);
    ASSERT_NO_LEAK();
}

/* ---- convergence simulation ---- */

#define MAXR 5

typedef struct {
    dv_map *m[MAXR];
    dv_map *outbox[MAXR];
    dv_outbox log[MAXR];
    bool use_log;
    uint64_t clock[MAXR];
    int n;
    /* in flight: message and destination */
    msgs net;
    int *dest;
    size_t capdest;
} sim;

static void net_send(sim *s, const uint8_t *p, size_t n, int to) {
    msgs_push(&s->net, p, n);
    if (s->net.n > s->capdest) {
        s->capdest = s->net.cap;
        s->dest = realloc(s->dest, sizeof(int) * s->capdest);
        cr_assert(s->dest);
    }
    s->dest[s->net.n - 1] = to;
}

static void net_drop(sim *s, size_t i) {
    free(s->net.v[i].p);
    s->net.v[i] = s->net.v[s->net.n - 1];
    s->dest[i] = s->dest[s->net.n - 1];
    s->net.n--;
}

/* Flush replica r's outbox: each message goes to a random subset of the others. */
static void sim_flush(sim *s, int r) {
    msgs l = {0};
    size_t max_bytes = 16 + rnd_below(200);
    if (s->use_log) {
        cr_assert_eq(dv_outbox_encode(&s->log[r], dv_map_rid(s->m[r]), max_bytes, collect, &l),
                     DV_OK);
        dv_outbox_reset(&s->log[r]);
    } else {
        cr_assert_eq(dv_map_delta_since(s->outbox[r], NULL, max_bytes, collect, &l), DV_OK);
        dv_map_clear(s->outbox[r]);
    }
    for (size_t i = 0; i < l.n; i++)
        for (int to = 0; to < s->n; to++) {
            if (to == r || rnd_below(10) < 3)
                continue;
            net_send(s, l.v[i].p, l.v[i].n, to);
            if (rnd_below(10) == 0)
                net_send(s, l.v[i].p, l.v[i].n, to); /* duplicate */
        }
    msgs_free(&l);
}

static void sim_deliver_one(sim *s) {
    if (!s->net.n)
        return;
    size_t i = rnd_below(s->net.n);
    uint64_t fate = rnd_below(10);
    if (fate >= 1) /* 10% lost */
        join_bytes(s->m[s->dest[i]], s->net.v[i].p, s->net.v[i].n);
    if (fate != 9) /* 10% stay in flight and arrive again later */
        net_drop(s, i);
}

static void sim_op(sim *s, int r) {
    char k[16], v[24];
    snprintf(k, sizeof(k), "k%d", (int)rnd_below(NKEYS));
    s->clock[r] += rnd_below(3);
    if (s->use_log) {
        if (rnd_below(4) == 0) {
            cr_assert_eq(dv_map_remove_log(s->m[r], K(k), &s->log[r], NULL), DV_OK);
        } else {
            random_value(v, sizeof(v));
            cr_assert_eq(dv_map_put_log(s->m[r], K(k), K(v), s->clock[r], &s->log[r], NULL), DV_OK);
        }
    } else {
        random_op(s->m[r], s->outbox[r], s->clock[r]);
    }
}

/* One direction of anti-entropy: a repairs b (and learns b's removals). */
static void anti_entropy(dv_map *a, dv_map *b, size_t max_bytes, size_t max_dots) {
    dv_buf buf, mbuf, out;
    dv_buf_init(&buf);
    dv_buf_init(&mbuf);
    dv_buf_init(&out);

    /* 1. b's context -> a; a sends what b has not seen */
    dv_encode_ctx(&buf, dv_map_ctx(b));
    cr_assert(!buf.oom);
    dv_ctx bctx;
    dv_ctx_init(&bctx);
    cr_assert_eq(dv_decode_ctx(buf.p, buf.n, &bctx), DV_OK);
    msgs l = {0};
    cr_assert_eq(dv_map_delta_since(a, &bctx, max_bytes, collect, &l), DV_OK);
    for (size_t i = 0; i < l.n; i++)
        join_bytes(b, l.v[i].p, l.v[i].n);
    msgs_free(&l);

    /* 2. a's digest -> b; b's context (first), then b's manifest -> a */
    uint64_t da[DV_BUCKETS], got[DV_BUCKETS];
    dv_map_digest(a, da);
    dv_buf_reset(&buf);
    dv_encode_digest(&buf, da, DV_BUCKETS);
    cr_assert_eq(dv_decode_digest(buf.p, buf.n, got), DV_OK);
    dv_buf_reset(&buf);
    dv_encode_ctx(&buf, dv_map_ctx(b));
    size_t nb = 0;
    cr_assert_eq(dv_map_manifest(b, got, max_dots, &mbuf, &nb), DV_OK);
    if (nb) {
        cr_assert_eq(dv_decode_ctx(buf.p, buf.n, &bctx), DV_OK);
        dv_manifest man;
        decode_manifest_buf(&mbuf, &man);
        size_t count = 0;
        cr_assert_eq(dv_map_apply_peer_removals(a, &bctx, &man, NULL, NULL, &count), DV_OK);
        cr_assert_eq(dv_map_removals_for(a, &man, &out, &count), DV_OK);
        if (count)
            join_bytes(b, out.p, out.n);
        dv_manifest_free(&man);
    }
    dv_ctx_free(&bctx);
    dv_buf_free(&buf);
    dv_buf_free(&mbuf);
    dv_buf_free(&out);
}

static bool all_equal(const sim *s) {
    for (int i = 1; i < s->n; i++)
        if (!dv_map_equal(s->m[0], s->m[i]))
            return false;
    return true;
}

static void sim_run(int seed) {
    rng_state = (uint64_t)seed * 2654435761u;
    sim s;
    memset(&s, 0, sizeof(s));
    s.n = 3 + (int)rnd_below(MAXR - 2);
    s.use_log = seed % 2 == 0;
    for (int i = 0; i < s.n; i++) {
        uint64_t rid = i == 0 ? UINT64_MAX - (uint64_t)seed : 100 + (uint64_t)i * 1000003;
        s.m[i] = dv_map_new(rid);
        s.outbox[i] = dv_map_new(rid);
        dv_outbox_init(&s.log[i]);
        s.clock[i] = 1000000 + rnd_below(2000); /* skewed clocks */
    }

    /* concurrent phase: writes, flushes to random peers, a lossy reordering network */
    for (int step = 0; step < 400; step++) {
        uint64_t what = rnd_below(20);
        int r = (int)rnd_below((uint64_t)s.n);
        if (what < 9)
            sim_op(&s, r);
        else if (what < 12)
            sim_flush(&s, r);
        else
            sim_deliver_one(&s);
    }
    for (int r = 0; r < s.n; r++)
        sim_flush(&s, r);
    while (s.net.n)
        sim_deliver_one(&s);
    for (int r = 0; r < s.n; r++)
        check_map(s.m[r]);

    /* the converged state must be the join of everything */
    dv_map *ref = dv_map_new(0);
    for (int r = 0; r < s.n; r++)
        cr_assert_eq(dv_map_join_map(ref, s.m[r], NULL, NULL), DV_OK);

    /* anti-entropy rounds until every replica is equal */
    int rounds = 0;
    size_t max_bytes = 32 + rnd_below(300), max_dots = 1 + rnd_below(6);
    while (!all_equal(&s)) {
        cr_assert_lt(rounds, 30, "seed %d: no convergence after %d rounds", seed, rounds);
        for (int a = 0; a < s.n; a++)
            for (int b = 0; b < s.n; b++)
                if (a != b)
                    anti_entropy(s.m[a], s.m[b], max_bytes, max_dots);
        rounds++;
    }
    /* stable: another round changes nothing */
    dv_map *before = map_clone(s.m[0]);
    for (int a = 0; a < s.n; a++)
        for (int b = 0; b < s.n; b++)
            if (a != b)
                anti_entropy(s.m[a], s.m[b], max_bytes, max_dots);
    cr_assert(all_equal(&s) && dv_map_equal(s.m[0], before), "seed %d: not stable", seed);
    dv_map_free(before);

    cr_assert(dv_map_equal(s.m[0], ref), "seed %d: converged state is not the join", seed);
    uint64_t d0[DV_BUCKETS], di[DV_BUCKETS];
    dv_map_digest(s.m[0], d0);
    kvs k0;
    snapshot(s.m[0], &k0);
    for (int r = 1; r < s.n; r++) {
        dv_map_digest(s.m[r], di);
        cr_assert_eq(memcmp(d0, di, sizeof(d0)), 0, "seed %d: digests differ", seed);
        kvs kr;
        snapshot(s.m[r], &kr);
        cr_assert(kvs_equal(&k0, &kr, false), "seed %d: replica %d reads differently", seed, r);
        kvs_free(&kr);
    }

    /* quiescent phase: sequential writes, each shipped reliably before the next: a model */
    typedef struct {
        bool has;
        char v[24];
    } slot;
    slot model[NKEYS];
    for (int i = 0; i < NKEYS; i++) {
        char k[16];
        snprintf(k, sizeof(k), "k%d", i);
        dv_read r;
        model[i].has = dv_map_get(s.m[0], K(k), &r);
        if (model[i].has)
            snprintf(model[i].v, sizeof(model[i].v), "%.*s", (int)r.vlen, (const char *)r.val);
    }
    for (int step = 0; step < 30; step++) {
        int r = (int)rnd_below((uint64_t)s.n), ki = (int)rnd_below(NKEYS);
        char k[16], v[24];
        snprintf(k, sizeof(k), "k%d", ki);
        s.clock[r] += 1;
        if (rnd_below(4) == 0) {
            if (s.use_log)
                cr_assert_eq(dv_map_remove_log(s.m[r], K(k), &s.log[r], NULL), DV_OK);
            else
                del(s.m[r], k, s.outbox[r]);
            model[ki].has = false;
        } else {
            random_value(v, sizeof(v));
            if (s.use_log)
                cr_assert_eq(dv_map_put_log(s.m[r], K(k), K(v), s.clock[r], &s.log[r], NULL),
                             DV_OK);
            else
                put(s.m[r], k, v, s.clock[r], s.outbox[r]);
            model[ki].has = true;
            snprintf(model[ki].v, sizeof(model[ki].v), "%s", v);
        }
        msgs l = {0};
        if (s.use_log) {
            cr_assert_eq(dv_outbox_encode(&s.log[r], dv_map_rid(s.m[r]), 64, collect, &l), DV_OK);
            dv_outbox_reset(&s.log[r]);
        } else {
            cr_assert_eq(dv_map_delta_since(s.outbox[r], NULL, 64, collect, &l), DV_OK);
            dv_map_clear(s.outbox[r]);
        }
        for (size_t i = 0; i < l.n; i++)
            for (int to = 0; to < s.n; to++)
                if (to != r)
                    join_bytes(s.m[to], l.v[i].p, l.v[i].n);
        msgs_free(&l);
    }
    for (int r = 0; r < s.n; r++) {
        for (int i = 0; i < NKEYS; i++) {
            char k[16];
            snprintf(k, sizeof(k), "k%d", i);
            cr_assert(reads(s.m[r], k, model[i].has ? model[i].v : NULL),
                      "seed %d: replica %d key %s disagrees with the model", seed, r, k);
        }
        cr_assert(dv_map_equal(s.m[0], s.m[r]), "seed %d: replicas differ after quiescence", seed);
    }

    kvs_free(&k0);
    dv_map_free(ref);
    for (int i = 0; i < s.n; i++) {
        dv_map_free(s.m[i]);
        dv_map_free(s.outbox[i]);
        dv_outbox_free(&s.log[i]);
    }
    msgs_free(&s.net);
    free(s.dest);
}

Test(awmap, convergence_simulation) {
    for (int seed = 1; seed <= 20; seed++)
        sim_run(seed);
    ASSERT_NO_LEAK();
}
