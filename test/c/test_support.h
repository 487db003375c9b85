/* test_support.h - shared by the Criterion suites: a counting allocator that can be told to
 * fail (so every test can end with nothing allocated, and allocation failures can be
 * injected), and a seeded splitmix64 generator. Header-only; each suite includes it once. */
#ifndef DROVE_TEST_SUPPORT_H
#define DROVE_TEST_SUPPORT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "alloc.h"

static long live_blocks;     /* blocks allocated and not freed */
static size_t max_alloc;     /* largest single request seen */
static long fail_after = -1; /* allocations left before they fail; -1: never */
static uint64_t rng_state;

static inline bool should_fail(void) {
    if (fail_after == 0)
        return true;
    if (fail_after > 0)
        fail_after--;
    return false;
}

static inline void *t_alloc(size_t n) {
    if (should_fail())
        return NULL;
    if (n > max_alloc)
        max_alloc = n;
    void *p = malloc(n);
    if (p)
        live_blocks++;
    return p;
}

static inline void *t_realloc(void *p, size_t n) {
    if (should_fail())
        return NULL;
    if (n > max_alloc)
        max_alloc = n;
    void *q = realloc(p, n);
    if (q && !p)
        live_blocks++;
    return q;
}

static inline void t_free(void *p) {
    if (p)
        live_blocks--;
    free(p);
}

static const dv_allocator test_allocator = {t_alloc, t_realloc, t_free};

/* Suite .init / .fini: install the counting allocator, then restore libc's. */
static inline void install(void) {
    live_blocks = 0;
    max_alloc = 0;
    fail_after = -1;
    dv_set_allocator(&test_allocator);
}

static inline void uninstall(void) {
    dv_set_allocator(NULL);
}

static inline uint64_t rnd(void) { /* splitmix64 */
    uint64_t z = (rng_state += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

static inline uint64_t rnd_below(uint64_t n) {
    return rnd() % n;
}

#endif
