#include "ring.h"

#include <string.h>

#include "alloc.h"
#include "hash.h"

void dv_ring_init(dv_ring *r) {
    memset(r, 0, sizeof(*r));
}

void dv_ring_free(dv_ring *r) {
    dv_free(r->points); /* owners lives in the same block */
    dv_ring_init(r);
}

/* Stable LSD radix sort of v[0..n) by the upper 32 bits (the point), 8 bits per pass; tmp has
 * room for n entries. Four passes, so the result ends up back in v. Stability keeps entries
 * with equal points in insertion order, which is what the collision rule needs. */
static void sort_by_point(uint64_t *v, uint64_t *tmp, size_t n) {
    uint64_t *src = v, *dst = tmp;
    for (unsigned shift = 32; shift < 64; shift += 8) {
        size_t count[257] = {0};
        for (size_t i = 0; i < n; i++)
            count[((src[i] >> shift) & 0xff) + 1]++;
        for (int b = 0; b < 256; b++)
            count[b + 1] += count[b];
        for (size_t i = 0; i < n; i++)
            dst[count[(src[i] >> shift) & 0xff]++] = src[i];
        uint64_t *t = src;
        src = dst;
        dst = t;
    }
}

int dv_ring_build(dv_ring *r, const uint32_t *points, const uint32_t *counts, uint32_t nmembers) {
    if (nmembers > DV_RING_MAX_MEMBERS || (nmembers && !counts))
        return DV_EINVAL;
    size_t total = 0;
    for (uint32_t m = 0; m < nmembers; m++) {
        total += counts[m];
        if (total > DV_RING_MAX_POINTS)
            return DV_EINVAL;
    }
    if (total && !points)
        return DV_EINVAL;
    if (total == 0) {
        dv_ring_free(r);
        r->nmembers = nmembers;
        return DV_OK;
    }
    /* (point << 32 | member) in insertion order, sorted stably by point. */
    uint64_t *v = dv_alloc(total * 2 * sizeof(uint64_t));
    if (!v)
        return DV_ENOMEM;
    size_t k = 0;
    for (uint32_t m = 0; m < nmembers; m++)
        for (uint32_t i = 0; i < counts[m]; i++, k++)
            v[k] = (uint64_t)points[k] << 32 | m;
    sort_by_point(v, v + total, total);
    /* Keep the first entry of each run of equal points: the one inserted first. */
    size_t uniq = 0;
    for (size_t i = 0; i < total; i++)
        if (i == 0 || (v[i] >> 32) != (v[uniq - 1] >> 32))
            v[uniq++] = v[i];
    uint32_t *block = dv_alloc(uniq * 2 * sizeof(uint32_t));
    if (!block) {
        dv_free(v);
        return DV_ENOMEM;
    }
    for (size_t i = 0; i < uniq; i++) {
        block[i] = (uint32_t)(v[i] >> 32);
        block[uniq + i] = (uint32_t)v[i];
    }
    dv_free(v);
    dv_ring_free(r);
    r->points = block;
    r->owners = block + uniq;
    r->n = uniq;
    r->nmembers = nmembers;
    return DV_OK;
}

uint32_t dv_ring_owner(const dv_ring *r, uint32_t hash) {
    if (r->n == 0)
        return DV_RING_NONE;
    /* lower bound: the first index whose point is >= hash */
    const uint32_t *p = r->points;
    size_t lo = 0, len = r->n;
    while (len > 0) {
        size_t half = len / 2;
        if (p[lo + half] < hash) {
            lo += half + 1;
            len -= half + 1;
        } else {
            len = half;
        }
    }
    return r->owners[lo == r->n ? 0 : lo];
}

void dv_ring_owners(const dv_ring *r, const uint32_t *hashes, size_t n, uint32_t *out) {
    for (size_t i = 0; i < n; i++)
        out[i] = dv_ring_owner(r, hashes[i]);
}

uint64_t dv_rendezvous_seed(const void *name, size_t len) {
    return dv_hash64(name, len);
}

uint64_t dv_rendezvous_key(const void *key, size_t len) {
    return dv_hash64(key, len);
}

uint64_t dv_rendezvous_score(uint64_t key_hash, uint64_t seed) {
    uint8_t b[8];
    for (int i = 0; i < 8; i++)
        b[i] = (uint8_t)(key_hash >> (8 * i)); /* little-endian on every platform */
    return dv_hash64_seed(b, sizeof(b), seed);
}

uint32_t dv_rendezvous_owner(const uint64_t *seeds, uint32_t n, uint64_t key_hash) {
    if (n == 0 || !seeds)
        return DV_RING_NONE;
    uint32_t best = 0;
    uint64_t best_score = dv_rendezvous_score(key_hash, seeds[0]);
    for (uint32_t i = 1; i < n; i++) {
        uint64_t s = dv_rendezvous_score(key_hash, seeds[i]);
        if (s > best_score || (s == best_score && seeds[i] < seeds[best])) {
            best = i;
            best_score = s;
        }
    }
    return best;
}
