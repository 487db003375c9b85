/* hash.h - the only place that includes xxhash.h (header-only, inlined). */
#ifndef DROVE_HASH_H
#define DROVE_HASH_H

#include <stddef.h>
#include <stdint.h>

#define XXH_INLINE_ALL
#include <xxhash.h>

static inline uint64_t dv_hash64(const void *p, size_t n) {
    return XXH3_64bits(p, n);
}

static inline uint64_t dv_hash64_seed(const void *p, size_t n, uint64_t seed) {
    return XXH3_64bits_withSeed(p, n, seed);
}

/* A cheap, well-mixed 64-bit finaliser (splitmix64) for integers. */
static inline uint64_t dv_mix64(uint64_t x) {
    x += 0x9E3779B97F4A7C15ULL;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
    return x ^ (x >> 31);
}

#endif
