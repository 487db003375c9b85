/* dots.h - causal context: a version vector plus a dot cloud.
 *
 * A dot (rid, ctr) names one write: the ctr-th event of replica rid (ctr >= 1). A context is
 * the exact set of dots a replica has seen. Per replica it is stored as a contiguous prefix
 * 1..base (the version vector entry) plus a sorted list of disjoint, non-adjacent intervals
 * beyond base (the dot cloud). Unlike DeltaCrdt's compressed vector, seeing dot n never implies
 * having seen 1..n-1: a partial delta adds exactly the dots it carries (delta_crdt_ex#65).
 *
 * Invariant (normal form), kept by every mutating call: for each entry, every cloud interval
 * has lo > base + 1, intervals are sorted by lo and separated by at least one missing counter,
 * and entries are sorted by rid with no entry that is empty (base == 0 and no cloud).
 */
#ifndef DROVE_DOTS_H
#define DROVE_DOTS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "errors.h"

/* Counters are bounded so that hi + 1 never overflows; decoders reject larger values. */
#define DV_MAX_CTR ((uint64_t)1 << 62)

typedef struct {
    uint64_t rid;
    uint64_t ctr;
} dv_dot;

/* Inclusive range of counters lo..hi of one replica, 1 <= lo <= hi <= DV_MAX_CTR. */
typedef struct {
    uint64_t rid;
    uint64_t lo;
    uint64_t hi;
} dv_range;

typedef struct {
    uint64_t lo;
    uint64_t hi;
} dv_ival;

typedef struct {
    uint64_t rid;
    uint64_t base;
    dv_ival *cloud;
    uint32_t ncloud;
    uint32_t capcloud;
} dv_vv;

typedef struct {
    dv_vv *v;
    uint32_t n;
    uint32_t cap;
} dv_ctx;

/* A growable array of ranges (used for context differences and wire encoding). */
typedef struct {
    dv_range *r;
    size_t n;
    size_t cap;
} dv_ranges;

void dv_ctx_init(dv_ctx *c);
void dv_ctx_free(dv_ctx *c);
void dv_ctx_clear(dv_ctx *c);
int dv_ctx_copy(dv_ctx *dst, const dv_ctx *src); /* dst must be initialised; replaced */

bool dv_ctx_contains(const dv_ctx *c, dv_dot d);
int dv_ctx_add(dv_ctx *c, dv_dot d);
int dv_ctx_add_range(dv_ctx *c, uint64_t rid, uint64_t lo, uint64_t hi);
/* dst := dst ∪ src. On DV_ENOMEM dst holds a subset of the union that still contains dst. */
int dv_ctx_merge(dv_ctx *dst, const dv_ctx *src);
/* Re-establish normal form (merge a cloud that touches the prefix into base, join adjacent
 * intervals, drop empty entries). Mutators already keep normal form; this is for callers that
 * edit entries directly and for checks. Returns the number of cloud intervals left. */
size_t dv_ctx_compact(dv_ctx *c);

/* Position of rid's entry in c->v (entries are sorted by rid), or c->n if absent. */
uint32_t dv_ctx_index(const dv_ctx *c, uint64_t rid);
/* Smallest counter >= ctr of rid that c has seen, or 0 if there is none. */
uint64_t dv_ctx_next_seen(const dv_ctx *c, uint64_t rid, uint64_t ctr);
/* Highest counter of rid that was seen (0 if none). */
uint64_t dv_ctx_max(const dv_ctx *c, uint64_t rid);
bool dv_ctx_equal(const dv_ctx *a, const dv_ctx *b);
/* Number of dots in the cloud (beyond every base), for diagnostics. */
uint64_t dv_ctx_cloud_dots(const dv_ctx *c);
size_t dv_ctx_memory(const dv_ctx *c);

/* Append to out every range of dots in a (all of a when b is NULL) that b has not seen,
 * sorted by (rid, lo). */
int dv_ctx_diff(const dv_ctx *a, const dv_ctx *b, dv_ranges *out);

void dv_ranges_init(dv_ranges *r);
void dv_ranges_free(dv_ranges *r);
int dv_ranges_push(dv_ranges *r, uint64_t rid, uint64_t lo, uint64_t hi);

/* Build a context from ranges (any order, overlaps allowed). Ranges must be valid. */
int dv_ctx_from_ranges(dv_ctx *c, const dv_range *r, size_t n);

#endif
