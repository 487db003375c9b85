/* awmap.h - add-wins observed-remove map with a last-writer-wins read.
 *
 * Keys and values are opaque byte strings (the NIF stores canonical external term format).
 * Every put creates a new dot; an element is (dot, hlc timestamp, value) and lives under its
 * key until a causally later operation that observed it removes it. Concurrent puts keep
 * both elements; a read returns the element with the largest (ts, rid, ctr). Concurrent put
 * and remove keep the put (add-wins). There are no tombstones: removals travel as dots in a
 * delta's context.
 *
 * A delta (dv_delta, see codec.h) is a fragment of a state: elements plus a set of dots
 * (ranges) for which the sender is authoritative: every dot in a delta's ranges is either
 * carried as an element or was removed by the sender. Joining one applies the lattice join
 * exactly: a local element whose dot is in the delta's ranges and is not carried is removed;
 * a carried element is added unless its dot was already seen; the ranges and carried dots are
 * added to the context. So a delta that carries some keys never removes keys it did not
 * cover (delta_crdt_ex#65 cannot happen), and join is commutative, associative, idempotent.
 *
 * Anti-entropy primitives: the context (what was seen), delta_since (what a peer has not
 * seen, in bounded self-contained chunks), per-bucket digests of live dots, manifests of live
 * dots in differing buckets, and the two removal rules that settle those buckets.
 *
 * Not thread-safe: the NIF serialises access with a mutex.
 */
#ifndef DROVE_AWMAP_H
#define DROVE_AWMAP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "codec.h"
#include "dots.h"
#include "outbox.h"

typedef struct dv_map dv_map;

/* A read: the winning element of a key. Pointers stay valid until the next mutation. */
typedef struct {
    const uint8_t *val;
    uint32_t vlen;
    uint64_t ts;
    dv_dot dot;
} dv_read;

/* Called once per key whose read value changed: now == NULL means the key is gone. */
typedef void (*dv_diff_fn)(void *ud, const uint8_t *key, uint32_t klen, const dv_read *now);
/* Receives each encoded message; non-zero return aborts with that code. */
typedef int (*dv_emit_fn)(void *ud, const uint8_t *p, size_t n);
/* Iteration callback; non-zero return stops with that code. */
typedef int (*dv_iter_fn)(void *ud, const uint8_t *key, uint32_t klen, const dv_read *r);

dv_map *dv_map_new(uint64_t rid);
void dv_map_free(dv_map *m);
/* Drop every element and the context (used for the outbox after a flush). */
void dv_map_clear(dv_map *m);

uint64_t dv_map_rid(const dv_map *m);
size_t dv_map_size(const dv_map *m);     /* keys with at least one element */
size_t dv_map_elements(const dv_map *m); /* live elements (>= size) */
size_t dv_map_memory(const dv_map *m);   /* bytes held, tables and context included */
size_t dv_map_payload(const dv_map *m);  /* key + value bytes held */
const dv_ctx *dv_map_ctx(const dv_map *m);
uint64_t dv_map_hlc(const dv_map *m);

/* Hybrid logical clock: (wall ms << 16) | logical counter. */
uint64_t dv_hlc_next(uint64_t last, uint64_t now_ms);

/* Local writes. now_ms is the caller's wall clock. When outbox is not NULL the delta of the
 * operation is joined into it (coalescing). *changed (optional) tells whether the read
 * value of the key changed (a re-put of equal bytes does not change it). */
int dv_map_put(dv_map *m, const uint8_t *k, uint32_t klen, const uint8_t *v, uint32_t vlen,
               uint64_t now_ms, dv_map *outbox, bool *changed);
int dv_map_remove(dv_map *m, const uint8_t *k, uint32_t klen, dv_map *outbox, bool *changed);
/* The same, recording the operation in a write log instead (outbox.h): what the NIF uses. */
int dv_map_put_log(dv_map *m, const uint8_t *k, uint32_t klen, const uint8_t *v, uint32_t vlen,
                   uint64_t now_ms, dv_outbox *log, bool *changed);
int dv_map_remove_log(dv_map *m, const uint8_t *k, uint32_t klen, dv_outbox *log, bool *changed);
/* Remove only the elements of key k whose value bytes equal v (a registry removing its own
 * registration leaves a concurrent one of another node in place). */
int dv_map_remove_value_log(dv_map *m, const uint8_t *k, uint32_t klen, const uint8_t *v,
                            uint32_t vlen, dv_outbox *log, bool *changed);
/* Remove only the elements of key k whose value bytes start with prefix (a registry dropping
 * every registration of an exited process, whatever its value). */
int dv_map_remove_prefix_log(dv_map *m, const uint8_t *k, uint32_t klen, const uint8_t *prefix,
                             uint32_t plen, dv_outbox *log, bool *changed);
bool dv_map_get(const dv_map *m, const uint8_t *k, uint32_t klen, dv_read *out);

/* The hash the map files key k under (owners.h keeps keys by it). */
uint64_t dv_map_key_hash(const uint8_t *k, uint32_t klen);
/* Calls fn with the key and its read value for every key whose hash is h (almost always
 * one or none); a non-zero return stops with that code. fn must not change m. */
int dv_map_keys_with_hash(const dv_map *m, uint64_t h, dv_iter_fn fn, void *ud);

/* Make room for n more keys and elements, so that joining them does not grow the tables
 * (each growth rehashes, and touches a new table twice the size). A hint for a bulk load,
 * e.g. a new replica that is told how many elements a catch-up will bring; over-reserving
 * costs memory (up to 32 bytes per reserved, unused element). */
int dv_map_reserve(dv_map *m, size_t n);

/* Join a decoded delta. fn (optional) is told of every key whose read value changed. On
 * DV_ENOMEM the map may hold part of the join (still a valid state below the full join). */
int dv_map_join(dv_map *m, const dv_delta *d, dv_diff_fn fn, void *ud);
/* Join the whole state of other (state-based join). */
int dv_map_join_map(dv_map *m, const dv_map *other, dv_diff_fn fn, void *ud);

/* Everything m has that `seen` has not (NULL: everything), as DELTA messages of about
 * max_bytes each (a single element larger than that gets a message of its own). Each
 * message is authoritative on its own: it carries every live element within its ranges. */
int dv_map_delta_since(const dv_map *m, const dv_ctx *seen, size_t max_bytes, dv_emit_fn emit,
                       void *ud);

void dv_map_digest(const dv_map *m, uint64_t out[DV_BUCKETS]);
/* Manifest of m's live dots in the buckets whose digest differs from peer's (all buckets
 * when peer is NULL), at most about max_dots dots (whole buckets, at least one). Sets
 * *nbuckets (optional) to the number of differing buckets found, sent or not. */
int dv_map_manifest(const dv_map *m, const uint64_t *peer, size_t max_dots, dv_buf *out,
                    size_t *nbuckets);
/* The dots of a peer's manifest that m has seen and no longer holds: m removed them. Writes a
 * DELTA with those ranges (for the peer to join) when there is at least one. */
int dv_map_removals_for(const dv_map *m, const dv_manifest *pm, dv_buf *out, size_t *count);
/* m's live dots in the manifest's buckets that the peer has seen (peer_ctx) but that are not
 * in its manifest: the peer removed them. Removes them here. The manifest and peer_ctx must
 * come from one snapshot of the peer taken with the context first. */
int dv_map_apply_peer_removals(dv_map *m, const dv_ctx *peer_ctx, const dv_manifest *pm,
                               dv_diff_fn fn, void *ud, size_t *count);

/* Giving memory back (awmap.c): tables shrink and the slab is evacuated in steps, at the end
 * of each mutation. dv_map_compact_step runs one such step (starting a shrink or an
 * evacuation that is due) without a write, for a caller that wants the memory back while the
 * map is idle; it returns whether one is still in progress. Bounded work, as a mutation's. */
bool dv_map_compact_step(dv_map *m);

/* Internals, for tests and diagnostics. */
typedef struct {
    size_t key_slots, dot_slots; /* table capacities */
    bool shrinking;              /* a table shrink in progress */
    bool evacuating;             /* a slab evacuation in progress */
    size_t slab_bytes;           /* held by the slab (old_slab_bytes: by the one evacuated) */
    size_t old_slab_bytes;
    size_t old_blocks; /* blocks still in use in the slab being evacuated */
} dv_map_stats;
void dv_map_get_stats(const dv_map *m, dv_map_stats *out);
/* Test hook: the size of those steps for every map (table slots copied, units of evacuation
 * work, retired chunks freed; 0 restores a default), so that tests can see shrinks and
 * evacuations in progress. */
void dv_map_set_compact_steps(size_t slots, size_t units, size_t chunks);

int dv_map_foreach(const dv_map *m, dv_iter_fn fn, void *ud);
/* Same context and same live elements. */
bool dv_map_equal(const dv_map *a, const dv_map *b);

#endif
