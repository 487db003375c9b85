/* fuzz_join.c - libFuzzer harness: decode a DELTA and join it into a pre-populated map.
 *
 * The map is rebuilt for every input (concurrent elements, removals, a dot cloud), so every
 * run starts from the same state. After a successful decode and join it checks:
 *   - size <= elements; foreach visits exactly size keys, each readable with dv_map_get and
 *     with the same winner; every winning dot is in the context;
 *   - the context contains every range and every carried dot of the delta;
 *   - joining the same delta again changes nothing and reports no change (idempotence);
 *   - a state transfer (delta_since(m, NULL) in small chunks, joined into an empty map)
 *     reproduces the map exactly, digests included;
 *   - the anti-entropy primitives (manifest, removals_for, apply_peer_removals) run on it and
 *     leave valid maps.
 * Everything is freed (libFuzzer's leak detection is on). */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "awmap.h"
#include "codec.h"
#include "dots.h"

#define CHECK(c)                                                                                   \
    do {                                                                                           \
        if (!(c)) {                                                                                \
            fprintf(stderr, "fuzz_join: check failed at line %d: %s\n", __LINE__, #c);             \
            __builtin_trap();                                                                      \
        }                                                                                          \
    } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void put(dv_map *m, const char *k, const char *v, uint64_t now) {
    CHECK(dv_map_put(m, (const uint8_t *)k, (uint32_t)strlen(k), (const uint8_t *)v,
                     (uint32_t)strlen(v), now, NULL, NULL) == DV_OK);
}

static void del(dv_map *m, const char *k) {
    CHECK(dv_map_remove(m, (const uint8_t *)k, (uint32_t)strlen(k), NULL, NULL) == DV_OK);
}

static int join_first_only(void *ud, const uint8_t *p, size_t n) {
    dv_delta d;
    CHECK(dv_decode_delta(p, n, &d) == DV_OK);
    CHECK(dv_map_join(ud, &d, NULL, NULL) == DV_OK);
    dv_delta_free(&d);
    return 1; /* stop after the first chunk */
}

/* The pre-populated map (fuzz/gen_corpus.c builds the same one for the seeds). */
static dv_map *join_base(void) {
    dv_map *m = dv_map_new(1), *o = dv_map_new(2), *p = dv_map_new(3);
    CHECK(m && o && p);
    char k[16], v[16];
    for (int i = 0; i < 12; i++) {
        snprintf(k, sizeof(k), "k%d", i);
        snprintf(v, sizeof(v), "v%d", i);
        put(m, k, v, 1000 + (uint64_t)i);
    }
    for (int i = 0; i < 6; i++) {
        snprintf(k, sizeof(k), "k%d", 2 * i);
        snprintf(v, sizeof(v), "w%d", i);
        put(o, k, v, 1000 + (uint64_t)i);
    }
    del(m, "k3");
    del(m, "k7");
    CHECK(dv_map_join_map(m, o, NULL, NULL) == DV_OK);
    put(m, "k1", "v1b", 2000);
    del(m, "k0");
    put(p, "x", "1", 1500);
    put(p, "y", "2", 1500);
    put(p, "z", "3", 1500);
    CHECK(dv_map_delta_since(p, NULL, 1, join_first_only, m) == 1);
    dv_map_free(o);
    dv_map_free(p);
    return m;
}

typedef struct {
    const dv_map *m;
    size_t n;
} walk;

static int check_key(void *ud, const uint8_t *key, uint32_t klen, const dv_read *r) {
    walk *w = ud;
    dv_read g;
    CHECK(dv_map_get(w->m, key, klen, &g));
    CHECK(g.vlen == r->vlen && g.ts == r->ts && g.dot.rid == r->dot.rid && g.dot.ctr == r->dot.ctr);
    CHECK(r->vlen == 0 || memcmp(g.val, r->val, r->vlen) == 0);
    CHECK(dv_ctx_contains(dv_map_ctx(w->m), r->dot));
    w->n++;
    return 0;
}

static void check_map(const dv_map *m) {
    CHECK(dv_map_size(m) <= dv_map_elements(m));
    CHECK(dv_map_memory(m) >= dv_map_payload(m));
    walk w = {m, 0};
    CHECK(dv_map_foreach(m, check_key, &w) == 0);
    CHECK(w.n == dv_map_size(m));
}

static void count_change(void *ud, const uint8_t *key, uint32_t klen, const dv_read *now) {
    (void)key;
    (void)klen;
    (void)now;
    (*(size_t *)ud)++;
}

static int join_into(void *ud, const uint8_t *p, size_t n) {
    dv_delta d;
    CHECK(dv_decode_delta(p, n, &d) == DV_OK);
    CHECK(dv_map_join(ud, &d, NULL, NULL) == DV_OK);
    dv_delta_free(&d);
    return 0;
}

static dv_map *map_clone(const dv_map *m) {
    dv_map *c = dv_map_new(dv_map_rid(m));
    CHECK(c && dv_map_join_map(c, m, NULL, NULL) == DV_OK);
    CHECK(dv_map_equal(c, m));
    return c;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    dv_delta d;
    if (dv_decode_delta(data, size, &d) != DV_OK)
        return 0;
    dv_map *m = join_base();
    check_map(m);

    size_t changes = 0, keys_before = dv_map_size(m);
    CHECK(dv_map_join(m, &d, count_change, &changes) == DV_OK);
    check_map(m);
    CHECK(changes <= keys_before + d.nelems); /* at most once per key */
    const dv_ctx *ctx = dv_map_ctx(m);
    for (size_t i = 0; i < d.nelems; i++)
        CHECK(dv_ctx_contains(ctx, d.elems[i].dot));
    for (size_t i = 0; i < d.nranges; i++) {
        CHECK(dv_ctx_contains(ctx, (dv_dot){d.ranges[i].rid, d.ranges[i].lo}));
        CHECK(dv_ctx_contains(ctx, (dv_dot){d.ranges[i].rid, d.ranges[i].hi}));
        CHECK(dv_ctx_next_seen(ctx, d.ranges[i].rid, d.ranges[i].lo) == d.ranges[i].lo);
    }

    /* idempotence */
    dv_map *before = map_clone(m);
    changes = 0;
    CHECK(dv_map_join(m, &d, count_change, &changes) == DV_OK);
    CHECK(changes == 0);
    CHECK(dv_map_equal(m, before));

    /* state transfer in small chunks */
    dv_map *copy = dv_map_new(99);
    CHECK(copy);
    CHECK(dv_map_delta_since(m, NULL, 64, join_into, copy) == DV_OK);
    CHECK(dv_map_equal(copy, m));
    uint64_t dm[DV_BUCKETS], dc[DV_BUCKETS];
    dv_map_digest(m, dm);
    dv_map_digest(copy, dc);
    CHECK(memcmp(dm, dc, sizeof(dm)) == 0);

    /* anti-entropy against the untouched base: manifest of m, then both removal rules */
    dv_map *base = join_base();
    dv_buf b, out;
    dv_buf_init(&b);
    dv_buf_init(&out);
    uint64_t db[DV_BUCKETS];
    dv_map_digest(base, db);
    CHECK(dv_map_manifest(m, db, 16, &b, NULL) == DV_OK);
    dv_manifest man;
    CHECK(dv_decode_manifest(b.p, b.n, &man) == DV_OK);
    size_t count = 0;
    CHECK(dv_map_removals_for(base, &man, &out, &count) == DV_OK);
    if (count) {
        dv_delta rd;
        CHECK(dv_decode_delta(out.p, out.n, &rd) == DV_OK);
        CHECK(dv_map_join(copy, &rd, NULL, NULL) == DV_OK);
        dv_delta_free(&rd);
        check_map(copy);
    }
    CHECK(dv_map_apply_peer_removals(base, dv_map_ctx(m), &man, NULL, NULL, &count) == DV_OK);
    check_map(base);
    dv_manifest_free(&man);

    dv_buf_free(&b);
    dv_buf_free(&out);
    dv_map_free(base);
    dv_map_free(copy);
    dv_map_free(before);
    dv_map_free(m);
    dv_delta_free(&d);
    return 0;
}
