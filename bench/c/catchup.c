/* catchup.c - micro-benchmark of the C core on the catch-up path of a new replica.
 *
 * Builds a source map of N entries (keys "key<i>", 5-byte values), then times, each REPS
 * times (the median is printed; process CPU time, which a loaded machine disturbs less than
 * the wall time printed beside it):
 *   delta_since  dv_map_delta_since(src, NULL, 1 MiB) into a list of messages
 *   decode       dv_decode_delta of every message
 *   join         dv_map_join of every decoded message into an empty map
 *   (the same join into an empty map given dv_map_reserve(N) first, and dv_map_free)
 * and: delta_since for a peer that misses only the last 1000 writes of each replica,
 * and also: puts/s into an empty map up to 100k keys, overwrites/s in a map of 100k keys
 * (dv_map_put_log, the NIF's path), and dv_map_memory - dv_map_payload per entry of the
 * source map and of the caught-up map.
 *
 * Usage: catchup [N (1000000)] [REPS (3)] [WRITERS (1)]
 *   WRITERS > 1 builds the source from that many replicas (interleaved writes, joined), so
 *   that the deltas carry the dots of several replica ids.
 *
 * Build (from the repository root; the NIF's flags):
 *   mkdir -p _build/bench && cc -O2 -g -std=c11 -D_GNU_SOURCE -Wall -Wextra -Ic_src \
 *     -o _build/bench/catchup bench/c/catchup.c c_src/alloc.c c_src/awmap.c c_src/codec.c \
 *     c_src/dots.c c_src/outbox.c
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif

#include "awmap.h"
#include "codec.h"
#include "outbox.h"

#define CHUNK      ((size_t)1 << 20)
#define NPUTS      100000
#define MAXREP     15
#define INCR       1000
#define INCR_CALLS 20

static double clock_s(clockid_t id) {
    struct timespec ts;
    clock_gettime(id, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static double minor_faults(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_minflt;
}

/* Process CPU time, wall time and minor page faults. */
typedef struct {
    double cpu, wall, faults;
} stamp;

static stamp now(void) {
    return (stamp){clock_s(CLOCK_PROCESS_CPUTIME_ID), clock_s(CLOCK_MONOTONIC), minor_faults()};
}

static stamp since(stamp a) {
    stamp b = now();
    return (stamp){b.cpu - a.cpu, b.wall - a.wall, b.faults - a.faults};
}

/* Give freed memory back between runs, so that a run does not pay for the previous one. */
static void settle(void) {
#ifdef __GLIBC__
    malloc_trim(0);
#endif
}

static void die(const char *what, int rc) {
    fprintf(stderr, "catchup: %s failed: %s\n", what, dv_strerror(rc));
    exit(1);
}

typedef struct {
    uint8_t *p;
    size_t n;
} msg;

typedef struct {
    msg *v;
    size_t n, cap, bytes;
} msgs;

static int collect(void *ud, const uint8_t *p, size_t n) {
    msgs *l = ud;
    if (l->n == l->cap) {
        l->cap = l->cap ? 2 * l->cap : 64;
        l->v = realloc(l->v, sizeof(msg) * l->cap);
        if (!l->v)
            return DV_ENOMEM;
    }
    l->v[l->n].p = malloc(n);
    if (!l->v[l->n].p)
        return DV_ENOMEM;
    memcpy(l->v[l->n].p, p, n);
    l->v[l->n].n = n;
    l->n++;
    l->bytes += n;
    return 0;
}

static void msgs_free(msgs *l) {
    for (size_t i = 0; i < l->n; i++)
        free(l->v[i].p);
    free(l->v);
    memset(l, 0, sizeof(*l));
}

static int key_of(char *buf, size_t i) {
    return snprintf(buf, 32, "key%zu", i);
}

static void value_of(char *buf, size_t i) { /* 5 bytes */
    snprintf(buf, 8, "v%04zu", i % 10000);
}

static dv_map *build_source(size_t n, size_t writers) {
    dv_map *src = dv_map_new(1);
    dv_map *w[16] = {0};
    if (writers < 1)
        writers = 1;
    if (writers > 16)
        writers = 16;
    for (size_t r = 1; r < writers; r++)
        w[r] = dv_map_new(1 + r);
    w[0] = src;
    char k[32], v[8];
    for (size_t i = 0; i < n; i++) {
        int kl = key_of(k, i);
        value_of(v, i);
        int rc = dv_map_put(w[i % writers], (const uint8_t *)k, (uint32_t)kl, (const uint8_t *)v, 5,
                            1700000000000ULL + i / 1000, NULL, NULL);
        if (rc)
            die("put", rc);
    }
    for (size_t r = 1; r < writers; r++) {
        int rc = dv_map_join_map(src, w[r], NULL, NULL);
        if (rc)
            die("join_map", rc);
        dv_map_free(w[r]);
    }
    return src;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median1(double *v, int n) {
    qsort(v, (size_t)n, sizeof(double), cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/* Median CPU time, wall time and faults of n runs (each on its own). */
static stamp median(const stamp *v, int n) {
    double c[MAXREP], w[MAXREP], f[MAXREP];
    for (int i = 0; i < n; i++) {
        c[i] = v[i].cpu;
        w[i] = v[i].wall;
        f[i] = v[i].faults;
    }
    return (stamp){median1(c, n), median1(w, n), median1(f, n)};
}

static void print_phase(const char *name, const stamp *v, int n) {
    stamp m = median(v, n);
    printf("  %-17s %8.3f s cpu  %8.3f s wall  %8.0f page faults\n", name, m.cpu, m.wall, m.faults);
}

static double per_entry_overhead(const dv_map *m) {
    size_t n = dv_map_size(m);
    return n ? (double)(dv_map_memory(m) - dv_map_payload(m)) / (double)n : 0;
}

int main(int argc, char **argv) {
    size_t n = argc > 1 ? strtoull(argv[1], NULL, 10) : 1000000;
    int reps = argc > 2 ? atoi(argv[2]) : 3;
    size_t writers = argc > 3 ? strtoull(argv[3], NULL, 10) : 1;
    if (reps < 1)
        reps = 1;
    if (reps > MAXREP)
        reps = MAXREP;

    stamp t0 = now();
    dv_map *src = build_source(n, writers);
    stamp tb = since(t0);
    printf("source: %zu entries, %zu writer(s), built in %.3f s cpu (%.3f s wall); memory beyond "
           "payload %.1f B/entry\n",
           dv_map_size(src), writers, tb.cpu, tb.wall, per_entry_overhead(src));

    stamp ds[MAXREP], dec[MAXREP], jn[MAXREP], tot[MAXREP], fr[MAXREP], jr[MAXREP];
    double dst_over = 0;
    size_t nmsgs = 0, nbytes = 0;
    for (int rep = 0; rep < reps; rep++) {
        msgs l = {0};
        settle();
        stamp a = now();
        int rc = dv_map_delta_since(src, NULL, CHUNK, collect, &l);
        if (rc)
            die("delta_since", rc);
        ds[rep] = since(a);
        stamp b = now();
        dv_delta *d = calloc(l.n ? l.n : 1, sizeof(dv_delta));
        for (size_t i = 0; i < l.n; i++)
            if ((rc = dv_decode_delta(l.v[i].p, l.v[i].n, &d[i])) != DV_OK)
                die("decode", rc);
        dec[rep] = since(b);
        stamp c = now();
        dv_map *dst = dv_map_new(99);
        for (size_t i = 0; i < l.n; i++)
            if ((rc = dv_map_join(dst, &d[i], NULL, NULL)) != DV_OK)
                die("join", rc);
        jn[rep] = since(c);
        tot[rep] = since(a);
        /* the same join into a map told the size first (dv_map_reserve) */
        dv_map *pre = dv_map_new(98);
        stamp g = now();
        if ((rc = dv_map_reserve(pre, n)) != DV_OK)
            die("reserve", rc);
        for (size_t i = 0; i < l.n; i++)
            if ((rc = dv_map_join(pre, &d[i], NULL, NULL)) != DV_OK)
                die("join", rc);
        jr[rep] = since(g);
        dv_map_free(pre);
        if (rep == 0) {
            if (!dv_map_equal(dst, src)) {
                fprintf(stderr, "catchup: the caught-up map differs from the source\n");
                return 1;
            }
            dst_over = per_entry_overhead(dst);
            nmsgs = l.n;
            nbytes = l.bytes;
        }
        stamp f = now();
        dv_map_free(dst);
        fr[rep] = since(f);
        for (size_t i = 0; i < l.n; i++)
            dv_delta_free(&d[i]);
        free(d);
        msgs_free(&l);
    }
    printf("catch-up of %zu entries: %zu messages, %.1f MiB (median of %d)\n", n, nmsgs,
           (double)nbytes / (1 << 20), reps);
    print_phase("delta_since", ds, reps);
    print_phase("decode", dec, reps);
    print_phase("join", jn, reps);
    print_phase("total", tot, reps);
    print_phase("(free map)", fr, reps);
    print_phase("(join, reserved)", jr, reps);
    stamp mt = median(tot, reps);
    printf("  %.2f M entries/s (cpu); caught-up map: memory beyond payload %.1f B/entry\n",
           (double)n / mt.cpu / 1e6, dst_over);
    /* anti-entropy with a peer that misses only the last INCR writes of each replica */
    dv_ctx seen;
    dv_ctx_init(&seen);
    const dv_ctx *sc = dv_map_ctx(src);
    for (uint32_t i = 0; i < sc->n; i++) {
        uint64_t max = dv_ctx_max(sc, sc->v[i].rid);
        if (max > INCR && dv_ctx_add_range(&seen, sc->v[i].rid, 1, max - INCR) != DV_OK)
            die("ctx", DV_ENOMEM);
    }
    stamp inc[MAXREP];
    size_t inc_bytes = 0;
    for (int rep = 0; rep < reps; rep++) {
        msgs l = {0};
        stamp a = now();
        for (int k = 0; k < INCR_CALLS; k++) {
            int rc = dv_map_delta_since(src, &seen, CHUNK, collect, &l);
            if (rc)
                die("delta_since", rc);
        }
        inc[rep] = since(a);
        inc_bytes = l.bytes / INCR_CALLS;
        msgs_free(&l);
    }
    dv_ctx_free(&seen);
    stamp mi = median(inc, reps);
    printf("delta_since for a peer missing the last %d writes of each replica: %.3f ms cpu "
           "(%.3f wall) per call, %zu bytes\n",
           INCR, mi.cpu * 1e3 / INCR_CALLS, mi.wall * 1e3 / INCR_CALLS, inc_bytes);
    dv_map_free(src);

    /* puts: fresh keys up to NPUTS, then overwrites of random ones of those keys, through the
     * write log (reset every 4096 operations, as a flush would). Keys and values are
     * formatted beforehand. */
    char(*keys)[16] = malloc(sizeof(*keys) * NPUTS);
    uint32_t *klens = malloc(sizeof(uint32_t) * NPUTS);
    char(*vals)[8] = malloc(sizeof(*vals) * NPUTS);
    size_t *order = malloc(sizeof(size_t) * NPUTS);
    if (!keys || !klens || !vals || !order)
        die("malloc", DV_ENOMEM);
    uint64_t x = 12345;
    for (size_t i = 0; i < NPUTS; i++) {
        klens[i] = (uint32_t)key_of(keys[i], i);
        value_of(vals[i], i + 7);
        x = x * 6364136223846793005ULL + 1442695040888963407ULL;
        order[i] = (size_t)(x >> 33) % NPUTS;
    }
    stamp pf[MAXREP], po[MAXREP];
    double put_over = 0;
    for (int rep = 0; rep < reps; rep++) {
        dv_map *m = dv_map_new(7);
        dv_outbox log;
        dv_outbox_init(&log);
        settle();
        stamp a = now();
        for (size_t i = 0; i < NPUTS; i++) {
            int rc = dv_map_put_log(m, (const uint8_t *)keys[i], klens[i],
                                    (const uint8_t *)vals[(i + 1) % NPUTS], 5, 1700000000000ULL,
                                    &log, NULL);
            if (rc)
                die("put_log", rc);
            if ((i & 4095) == 4095)
                dv_outbox_reset(&log);
        }
        pf[rep] = since(a);
        stamp b = now();
        for (size_t i = 0; i < NPUTS; i++) {
            size_t j = order[i];
            int rc = dv_map_put_log(m, (const uint8_t *)keys[j], klens[j], (const uint8_t *)vals[i],
                                    5, 1700000000001ULL, &log, NULL);
            if (rc)
                die("put_log", rc);
            if ((i & 4095) == 4095)
                dv_outbox_reset(&log);
        }
        po[rep] = since(b);
        put_over = per_entry_overhead(m);
        dv_outbox_free(&log);
        dv_map_free(m);
    }
    free(keys);
    free(klens);
    free(vals);
    free(order);
    stamp mf = median(pf, reps), mo = median(po, reps);
    printf("puts (dv_map_put_log):\n");
    printf("  new keys into an empty map, up to %d: %6.2f M puts/s cpu (%.2f wall)\n", NPUTS,
           NPUTS / mf.cpu / 1e6, NPUTS / mf.wall / 1e6);
    printf("  overwrites in a map of %d keys:       %6.2f M puts/s cpu (%.2f wall)\n", NPUTS,
           NPUTS / mo.cpu / 1e6, NPUTS / mo.wall / 1e6);
    printf("  memory beyond payload %.1f B/entry\n", put_over);
    return 0;
}
