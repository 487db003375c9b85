/* ring.h - child placement: a Horde/libring-compatible consistent-hash ring, and rendezvous
 * (highest random weight) hashing with XXH3.
 *
 * Ring. Each member contributes a list of u32 points (Horde: 128 per member, the Elixir side
 * computes them as :erlang.phash2({member, i}, 4294967295) for i in 1..128). The points are
 * "inserted" member by member, in the order given, each member's points in their own order:
 * when two points are equal, the one inserted first keeps the position and later ones are
 * dropped (libring's gb_trees insert raising key_exists, caught and ignored). The built ring is
 * a strictly increasing array of points with the member index owning each. The owner of a
 * hash h is the owner of the first point >= h, or of the smallest point when h is above them
 * all (wrap-around); a lower-bound binary search, O(log V) for V points.
 *
 * Rendezvous. Each member has a 64-bit seed (XXH3 of its name bytes); a key is reduced to a
 * 64-bit hash once (XXH3 of its bytes) and the member with the highest
 * score = mix64(key hash ^ seed) wins, mix64 being the splitmix64 finaliser (hash.h). That is
 * the shape of XXH3's own seeded path for 8-byte inputs (xor with a seed-derived value, then a
 * bijective mixer), at a small fraction of the cost of a seeded XXH3 call per member, so a key
 * costs one XXH3 pass over its bytes plus O(members) mixes. Ties (probability about n^2 / 2^64) go
 * to the smaller seed, then to the smaller index, so the winner does not depend on the order
 * members are given in unless two names are equal.
 *
 * Memory comes from the injected allocator (alloc.h). A failed build leaves the ring it was
 * asked to replace untouched.
 */
#ifndef DROVE_RING_H
#define DROVE_RING_H

#include <stddef.h>
#include <stdint.h>

#include "errors.h"

/* What the lookups return for an empty ring or an empty member list. */
#define DV_RING_NONE UINT32_MAX

/* Bounds of a ring: members and points in all (before collisions are removed). */
#define DV_RING_MAX_MEMBERS 65536u
#define DV_RING_MAX_POINTS  (1u << 24)

typedef struct {
    uint32_t *points; /* n points, strictly increasing */
    uint32_t *owners; /* owners[i]: index of the member owning points[i] (same block) */
    size_t n;
    uint32_t nmembers; /* members given to the build, with or without surviving points */
} dv_ring;

/* An empty ring (owner lookups return DV_RING_NONE). */
void dv_ring_init(dv_ring *r);

/* Builds r from nmembers members; member m has counts[m] points, stored one member after the
 * other in points (sum of counts entries). On DV_OK r's old contents are freed and replaced;
 * on DV_ENOMEM or DV_EINVAL (too many members or points, NULL arrays with entries) r is left
 * as it was. Zero members, or members without points, give an empty ring. */
int dv_ring_build(dv_ring *r, const uint32_t *points, const uint32_t *counts, uint32_t nmembers);

void dv_ring_free(dv_ring *r);

/* Index of the member owning hash, or DV_RING_NONE when the ring has no points. */
uint32_t dv_ring_owner(const dv_ring *r, uint32_t hash);

/* out[i] = dv_ring_owner(r, hashes[i]) for i < n. */
void dv_ring_owners(const dv_ring *r, const uint32_t *hashes, size_t n, uint32_t *out);

/* Rendezvous: the seed of a member name and the hash of a key (both XXH3-64 of the bytes). */
uint64_t dv_rendezvous_seed(const void *name, size_t len);
uint64_t dv_rendezvous_key(const void *key, size_t len);

/* The score of member seed for key hash; the highest wins. */
uint64_t dv_rendezvous_score(uint64_t key_hash, uint64_t seed);

/* Index of the winning member among n seeds, or DV_RING_NONE when n == 0. */
uint32_t dv_rendezvous_owner(const uint64_t *seeds, uint32_t n, uint64_t key_hash);

#endif
