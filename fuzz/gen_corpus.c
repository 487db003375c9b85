/* gen_corpus.c - writes the seed corpora of the fuzz targets: valid messages of each type.
 *
 *   gcc -std=c11 -O1 -Ic_src -o gen_corpus fuzz/gen_corpus.c c_src/<every .c> && ./gen_corpus [dir]
 *
 * writes <dir>/<name>/seed_<n> (dir defaults to fuzz/corpus) for name in delta, ctx, digest,
 * manifest, summary and join. Messages come from real maps (delta_since chunks, outbox flushes,
 * contexts, digests, manifests, removal deltas) and from hand-made edge cases. The join seeds
 * are deltas against the pre-populated map of fuzz_join.c, so that they cover and remove its
 * elements. Deterministic: the same tree every run. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "awmap.h"
#include "codec.h"
#include "dots.h"

static const char *out_dir = "fuzz/corpus";

typedef struct {
    const char *name;
    int n;
} sink;

static sink S_DELTA = {"delta", 0}, S_CTX = {"ctx", 0}, S_DIGEST = {"digest", 0},
            S_MANIFEST = {"manifest", 0}, S_SUMMARY = {"summary", 0}, S_JOIN = {"join", 0};

static void die(const char *what) {
    fprintf(stderr, "gen_corpus: %s: %s\n", what, strerror(errno));
    exit(1);
}

static void ensure_dir(const char *path) {
    if (mkdir(path, 0755) != 0 && errno != EEXIST)
        die(path);
}

static void write_seed(sink *s, const uint8_t *p, size_t n) {
    char path[512];
    snprintf(path, sizeof(path), "%s/%s", out_dir, s->name);
    ensure_dir(path);
    snprintf(path, sizeof(path), "%s/%s/seed_%d", out_dir, s->name, s->n++);
    FILE *f = fopen(path, "wb");
    if (!f)
        die(path);
    if (n && fwrite(p, 1, n, f) != n)
        die(path);
    if (fclose(f) != 0)
        die(path);
}

static void check(int rc, const char *what) {
    if (rc != DV_OK) {
        fprintf(stderr, "gen_corpus: %s failed: %s\n", what, dv_strerror(rc));
        exit(1);
    }
}

/* ---- emit callbacks ---- */

static int emit_both(void *ud, const uint8_t *p, size_t n) {
    (void)ud;
    write_seed(&S_DELTA, p, n);
    write_seed(&S_JOIN, p, n);
    return 0;
}

/* ---- maps ---- */

static void put(dv_map *m, const char *k, const char *v, uint64_t now, dv_map *outbox) {
    check(dv_map_put(m, (const uint8_t *)k, (uint32_t)strlen(k), (const uint8_t *)v,
                     (uint32_t)strlen(v), now, outbox, NULL),
          "put");
}

static void del(dv_map *m, const char *k, dv_map *outbox) {
    check(dv_map_remove(m, (const uint8_t *)k, (uint32_t)strlen(k), outbox, NULL), "remove");
}

static int join_first_only(void *ud, const uint8_t *p, size_t n) {
    dv_map *m = ud;
    dv_delta d;
    check(dv_decode_delta(p, n, &d), "decode");
    check(dv_map_join(m, &d, NULL, NULL), "join");
    dv_delta_free(&d);
    return 1; /* stop after the first chunk */
}

/* The pre-populated map of fuzz_join.c (keep the two in sync). */
static dv_map *join_base(void) {
    dv_map *m = dv_map_new(1), *o = dv_map_new(2), *p = dv_map_new(3);
    char k[16], v[16];
    for (int i = 0; i < 12; i++) {
        snprintf(k, sizeof(k), "k%d", i);
        snprintf(v, sizeof(v), "v%d", i);
        put(m, k, v, 1000 + (uint64_t)i, NULL);
    }
    for (int i = 0; i < 6; i++) {
        snprintf(k, sizeof(k), "k%d", 2 * i);
        snprintf(v, sizeof(v), "w%d", i);
        put(o, k, v, 1000 + (uint64_t)i, NULL);
    }
    del(m, "k3", NULL);
    del(m, "k7", NULL);
    check(dv_map_join_map(m, o, NULL, NULL), "join_map");
    put(m, "k1", "v1b", 2000, NULL);
    del(m, "k0", NULL);
    put(p, "x", "1", 1500, NULL);
    put(p, "y", "2", 1500, NULL);
    put(p, "z", "3", 1500, NULL);
    dv_map_delta_since(p, NULL, 1, join_first_only, m); /* only the first chunk: a cloud */
    dv_map_free(o);
    dv_map_free(p);
    return m;
}

/* ---- seeds ---- */

static void seeds_from_maps(void) {
    dv_map *base = join_base();
    dv_buf b;
    dv_buf_init(&b);

    /* the base's own state, whole and chunked */
    check(dv_map_delta_since(base, NULL, 1 << 20, emit_both, NULL), "delta_since");
    check(dv_map_delta_since(base, NULL, 64, emit_both, NULL), "delta_since");
    dv_encode_ctx(&b, dv_map_ctx(base));
    write_seed(&S_CTX, b.p, b.n);

    /* a replica that synced with the base, then wrote concurrently with it */
    dv_map *r = dv_map_new(2), *outbox = dv_map_new(2);
    check(dv_map_join_map(r, base, NULL, NULL), "join_map");
    put(r, "k2", "r2", 3000, outbox);
    put(r, "k5", "r5", 3001, outbox);
    del(r, "k1", outbox);
    del(r, "k4", outbox);
    put(r, "new", "n", 3002, outbox);
    put(r, "", "", 3003, outbox);
    char big[600];
    memset(big, 'B', sizeof(big) - 1);
    big[sizeof(big) - 1] = 0;
    put(r, "big", big, 3004, outbox);
    check(dv_map_delta_since(outbox, NULL, 1 << 20, emit_both, NULL), "outbox flush");
    check(dv_map_delta_since(outbox, NULL, 48, emit_both, NULL), "outbox flush");
    check(dv_map_delta_since(r, dv_map_ctx(base), 1 << 20, emit_both, NULL), "delta_since");
    check(dv_map_delta_since(r, dv_map_ctx(base), 40, emit_both, NULL), "delta_since");
    dv_buf_reset(&b);
    dv_encode_ctx(&b, dv_map_ctx(r));
    write_seed(&S_CTX, b.p, b.n);

    /* digests and manifests between the two */
    uint64_t db[DV_BUCKETS], dr[DV_BUCKETS];
    dv_map_digest(base, db);
    dv_map_digest(r, dr);
    dv_buf_reset(&b);
    dv_encode_digest(&b, db, DV_BUCKETS);
    write_seed(&S_DIGEST, b.p, b.n);
    dv_buf_reset(&b);
    dv_encode_digest(&b, dr, DV_BUCKETS);
    write_seed(&S_DIGEST, b.p, b.n);
    uint64_t sum[2];
    check(dv_summary_of(dv_map_ctx(base), db, sum), "summary");
    dv_buf_reset(&b);
    dv_encode_summary(&b, sum);
    write_seed(&S_SUMMARY, b.p, b.n);
    check(dv_summary_of(dv_map_ctx(r), dr, sum), "summary");
    dv_buf_reset(&b);
    dv_encode_summary(&b, sum);
    write_seed(&S_SUMMARY, b.p, b.n);

    dv_buf_reset(&b);
    check(dv_map_manifest(r, db, 1000, &b, NULL), "manifest");
    write_seed(&S_MANIFEST, b.p, b.n);
    dv_manifest man;
    check(dv_decode_manifest(b.p, b.n, &man), "decode manifest");
    dv_buf_reset(&b);
    size_t count = 0;
    check(dv_map_removals_for(base, &man, &b, &count), "removals_for");
    if (b.n) {
        write_seed(&S_DELTA, b.p, b.n);
        write_seed(&S_JOIN, b.p, b.n);
    }
    dv_manifest_free(&man);
    dv_buf_reset(&b);
    check(dv_map_manifest(base, NULL, 3, &b, NULL), "manifest");
    write_seed(&S_MANIFEST, b.p, b.n);
    /* base's manifest against r's digest; r removed k1 and k4: a removal delta for base */
    dv_buf_reset(&b);
    check(dv_map_manifest(base, dr, 1000, &b, NULL), "manifest");
    write_seed(&S_MANIFEST, b.p, b.n);
    check(dv_decode_manifest(b.p, b.n, &man), "decode manifest");
    dv_buf_reset(&b);
    check(dv_map_removals_for(r, &man, &b, &count), "removals_for");
    if (b.n) {
        write_seed(&S_DELTA, b.p, b.n);
        write_seed(&S_JOIN, b.p, b.n);
    }
    dv_manifest_free(&man);

    dv_map_free(outbox);
    dv_map_free(r);
    dv_map_free(base);
    dv_buf_free(&b);
}

static void seeds_by_hand(void) {
    dv_buf b, e;
    dv_buf_init(&b);
    dv_buf_init(&e);

    /* empty messages */
    dv_encode_delta(&b, 0, NULL, 0, NULL, 0, 0);
    write_seed(&S_DELTA, b.p, b.n);
    write_seed(&S_JOIN, b.p, b.n);
    dv_ctx c;
    dv_ctx_init(&c);
    dv_buf_reset(&b);
    dv_encode_ctx(&b, &c);
    write_seed(&S_CTX, b.p, b.n);
    dv_buf_reset(&b);
    dv_encode_manifest(&b, NULL, 0, NULL, 0);
    write_seed(&S_MANIFEST, b.p, b.n);
    uint64_t zero[DV_BUCKETS] = {0};
    dv_buf_reset(&b);
    dv_encode_digest(&b, zero, DV_BUCKETS);
    write_seed(&S_DIGEST, b.p, b.n);
    uint64_t zsum[2] = {0, UINT64_MAX};
    dv_buf_reset(&b);
    dv_encode_summary(&b, zsum);
    write_seed(&S_SUMMARY, b.p, b.n);

    /* a removal-only delta over the base's own dots, and one over a gap */
    dv_range rm[] = {{1, 1, 5}, {2, 2, 3}, {3, 2, 2}};
    dv_buf_reset(&b);
    dv_encode_delta(&b, 9, rm, 3, NULL, 0, 0);
    write_seed(&S_DELTA, b.p, b.n);
    write_seed(&S_JOIN, b.p, b.n);

    /* elements with extreme fields: empty key/value, max counter, max timestamp, a
     * duplicate dot, an element whose dot is outside the ranges */
    dv_encode_elem(&e, NULL, 0, (dv_dot){4, 1}, 0, NULL, 0);
    dv_encode_elem(&e, (const uint8_t *)"k2", 2, (dv_dot){4, DV_MAX_CTR}, DV_MAX_TS,
                   (const uint8_t *)"max", 3);
    dv_encode_elem(&e, (const uint8_t *)"k2", 2, (dv_dot){4, 2}, 1, (const uint8_t *)"a", 1);
    dv_encode_elem(&e, (const uint8_t *)"k6", 2, (dv_dot){4, 2}, 1, (const uint8_t *)"dup", 3);
    dv_encode_elem(&e, (const uint8_t *)"k8", 2, (dv_dot){1, 20}, 5, (const uint8_t *)"o", 1);
    dv_range r[] = {{4, 1, 2}, {4, DV_MAX_CTR, DV_MAX_CTR}, {1, 1, 3}};
    dv_buf_reset(&b);
    dv_encode_delta(&b, UINT64_MAX, r, 3, e.p, e.n, 5);
    write_seed(&S_DELTA, b.p, b.n);
    write_seed(&S_JOIN, b.p, b.n);

    /* contexts: extremes, many intervals */
    check(dv_ctx_add_range(&c, 0, 1, DV_MAX_CTR), "ctx");
    check(dv_ctx_add_range(&c, UINT64_MAX, DV_MAX_CTR, DV_MAX_CTR), "ctx");
    for (uint64_t k = 2; k < 60; k += 3)
        check(dv_ctx_add_range(&c, 7, k, k + 1), "ctx");
    check(dv_ctx_add_range(&c, 300, 128, 16384), "ctx");
    dv_buf_reset(&b);
    dv_encode_ctx(&b, &c);
    write_seed(&S_CTX, b.p, b.n);
    dv_ctx_free(&c);

    /* manifests: every bucket, the last bucket, big dots */
    static uint32_t all[DV_BUCKETS];
    for (uint32_t i = 0; i < DV_BUCKETS; i++)
        all[i] = i;
    dv_dot dots[] = {{1, 1}, {UINT64_MAX, DV_MAX_CTR}, {0, 128}};
    dv_buf_reset(&b);
    dv_encode_manifest(&b, all, DV_BUCKETS, dots, 3);
    write_seed(&S_MANIFEST, b.p, b.n);
    uint32_t last = DV_BUCKETS - 1;
    dv_buf_reset(&b);
    dv_encode_manifest(&b, &last, 1, dots, 1);
    write_seed(&S_MANIFEST, b.p, b.n);

    /* a digest with every byte value represented */
    uint64_t d[DV_BUCKETS];
    for (size_t i = 0; i < DV_BUCKETS; i++)
        d[i] = 0x0101010101010101ULL * (uint64_t)(i & 0xff) ^ ((uint64_t)i << 40);
    dv_buf_reset(&b);
    dv_encode_digest(&b, d, DV_BUCKETS);
    write_seed(&S_DIGEST, b.p, b.n);

    dv_buf_free(&b);
    dv_buf_free(&e);
}

int main(int argc, char **argv) {
    if (argc > 1)
        out_dir = argv[1];
    ensure_dir(out_dir);
    seeds_by_hand();
    seeds_from_maps();
    sink *all[] = {&S_DELTA, &S_CTX, &S_DIGEST, &S_MANIFEST, &S_SUMMARY, &S_JOIN};
    for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++)
        printf("%s/%s: %d seeds\n", out_dir, all[i]->name, all[i]->n);
    return 0;
}
