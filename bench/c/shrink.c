/* shrink.c - micro-benchmark of what giving memory back costs a single call (issue 20).
 *
 * Builds a map of N keys (registry-shaped: 20-byte keys, 24-byte values), then deletes
 * every key in random order, timing each dv_map_remove on its own (this thread's CPU time, ns:
 * a machine shared with other work preempts the wall clock far more than the work). The table
 * shrinks and the slab evacuation run in steps at the end of deletes, so the slowest deletes
 * are the ones that carried a step (or started or finished one). The reference, in the same
 * run, is the same N deletes with the steps cut to one slot (the shrinks and evacuation then
 * barely progress: the cost of a delete without them). Prints, for each, the median, the
 * 99.99th percentile, the longest delete and the number over 1 ms (medians of REPS runs), and
 * memory before and after.
 *
 * Usage: shrink [N (1000000)] [REPS (3)] [SLOTS UNITS (step sizes; 0: as built)]
 * Run: make bench-shrink N=...
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "awmap.h"

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static int key_of(char *buf, size_t n, uint32_t i) {
    return snprintf(buf, n, "{name, %012u}", i);
}

typedef struct {
    uint64_t p50, p9999, max, over; /* over: deletes longer than 1 ms */
    size_t peak, after;
} result;

static result run(uint32_t n, const uint32_t *order, uint64_t *t) {
    dv_map *m = dv_map_new(1);
    char k[32];
    const uint8_t v[24] = "<0.123.0>,nil,value....";
    for (uint32_t i = 0; i < n; i++) {
        int kl = key_of(k, sizeof(k), i);
        if (dv_map_put(m, (const uint8_t *)k, (uint32_t)kl, v, sizeof(v), 1000, NULL, NULL)) {
            fprintf(stderr, "put failed\n");
            exit(1);
        }
    }
    result r = {.peak = dv_map_memory(m)};
    for (uint32_t i = 0; i < n; i++) {
        int kl = key_of(k, sizeof(k), order[i]);
        uint64_t t0 = now_ns();
        dv_map_remove(m, (const uint8_t *)k, (uint32_t)kl, NULL, NULL);
        t[i] = now_ns() - t0;
    }
    r.after = dv_map_memory(m);
    dv_map_free(m);
    qsort(t, n, sizeof(uint64_t), cmp_u64);
    r.p50 = t[n / 2];
    r.p9999 = t[(size_t)((double)(n - 1) * 0.9999)];
    r.max = t[n - 1];
    r.over = 0;
    for (uint32_t i = 0; i < n; i++)
        r.over += t[i] > 1000000;
    return r;
}

static uint64_t med3(uint64_t *v, int reps) {
    qsort(v, (size_t)reps, sizeof(uint64_t), cmp_u64);
    return v[reps / 2];
}

int main(int argc, char **argv) {
    uint32_t n = argc > 1 ? (uint32_t)strtoul(argv[1], NULL, 10) : 1000000;
    int reps = argc > 2 ? atoi(argv[2]) : 3;
    size_t slots = argc > 3 ? strtoul(argv[3], NULL, 10) : 0; /* 0: as built */
    size_t units = argc > 4 ? strtoul(argv[4], NULL, 10) : 0;
    if (n < 16 || reps < 1 || reps > 15)
        return 2;
    uint32_t *order = malloc(sizeof(uint32_t) * n);
    uint64_t *t = malloc(sizeof(uint64_t) * n);
    if (!order || !t)
        return 1;
    uint64_t s = 42;
    for (uint32_t i = 0; i < n; i++)
        order[i] = i;
    for (uint32_t i = n - 1; i > 0; i--) { /* Fisher-Yates, xorshift */
        s ^= s << 13, s ^= s >> 7, s ^= s << 17;
        uint32_t j = (uint32_t)(s % (i + 1));
        uint32_t x = order[i];
        order[i] = order[j];
        order[j] = x;
    }
    uint64_t p50[2][15], p9999[2][15], mx[2][15], over[2][15];
    result last[2];
    for (int r = 0; r < reps; r++) {
        for (int mode = 0; mode < 2; mode++) { /* 0: steps as built; 1: one-slot steps */
            dv_map_set_compact_steps(mode ? 1 : slots, mode ? 1 : units, 0);
            last[mode] = run(n, order, t);
            p50[mode][r] = last[mode].p50;
            p9999[mode][r] = last[mode].p9999;
            mx[mode][r] = last[mode].max;
            over[mode][r] = last[mode].over;
        }
    }
    dv_map_set_compact_steps(0, 0, 0);
    const char *name[2] = {"with shrink steps", "reference (1-slot steps)"};
    printf("emptying %u keys in random order, ns per delete (median of %d runs)\n", n, reps);
    for (int mode = 0; mode < 2; mode++)
        printf("  %-26s p50 %6lu  p99.99 %8lu  max %8lu  over 1 ms %3lu   memory %.2f MB -> "
               "%.3f MB\n",
               name[mode], (unsigned long)med3(p50[mode], reps),
               (unsigned long)med3(p9999[mode], reps), (unsigned long)med3(mx[mode], reps),
               (unsigned long)med3(over[mode], reps), (double)last[mode].peak / 1e6,
               (double)last[mode].after / 1e6);
    free(order);
    free(t);
    return 0;
}
