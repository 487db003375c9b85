/* members.h - member sets with statuses: who is a member of a Drove instance.
 *
 * A member is an opaque byte string (the NIF passes node names or `{name, node}` terms as
 * bytes) plus a status. Names are compared bytewise, lexicographically, a proper prefix
 * sorting first (memcmp order); for UTF-8 text that is code point order, which is the order
 * Erlang gives atoms.
 *
 * Two layers:
 *   - views: plain arrays of dv_member whose names point into caller memory (no ownership).
 *     dv_member_normalize sorts such an array and drops duplicates in place, without
 *     allocating; dv_member_diff_walk compares two normalized arrays in one merge pass.
 *   - dv_members: an owning set, kept sorted by name and unique at all times (each name is a
 *     private copy). Every mutating call either succeeds or leaves the set exactly as it was
 *     (on DV_ENOMEM too), so a caller can keep using the old membership after a failure.
 *
 * Duplicates with different statuses: the lowest status value wins (ALIVE before
 * UNINITIALIZED before SHUTTING_DOWN before DEAD), whatever the input order, so a set built
 * from a candidate list does not depend on the order of that list.
 */
#ifndef DROVE_MEMBERS_H
#define DROVE_MEMBERS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "errors.h"

typedef enum {
    DV_MEMBER_ALIVE = 0,
    DV_MEMBER_UNINITIALIZED = 1,
    DV_MEMBER_SHUTTING_DOWN = 2,
    DV_MEMBER_DEAD = 3,
} dv_member_status;

#define DV_MEMBER_NSTATUS  4
#define DV_MEMBER_MASK(st) (1u << (unsigned)(st))
#define DV_MEMBER_MASK_ALL ((1u << DV_MEMBER_NSTATUS) - 1u)

/* Largest number of members in a dv_members set. */
#define DV_MEMBERS_MAX ((size_t)UINT32_MAX - 1)

typedef struct {
    const uint8_t *name; /* may be NULL only when len == 0 */
    uint32_t len;
    dv_member_status status;
} dv_member;

/* What a diff or a put reports. Positive, so that a put can return it next to DV_OK (0,
 * nothing changed) and the negative error codes. */
typedef enum {
    DV_MEMBER_ADDED = 1,   /* in after, not in before */
    DV_MEMBER_REMOVED = 2, /* in before, not in after */
    DV_MEMBER_CHANGED = 3, /* in both, with a different status */
} dv_member_event;

/* ---- views ---- */

/* memcmp order of the names (statuses ignored): <0, 0, >0. */
int dv_member_cmp(const dv_member *a, const dv_member *b);
bool dv_member_status_valid(dv_member_status st);

/* Sort v[0..n) by name and keep one entry per name (the lowest status). Returns the new
 * count; v[0..count) is then strictly increasing by name. No allocation. */
size_t dv_member_normalize(dv_member *v, size_t n);

/* Called for every difference between two normalized arrays, in name order. `before` is NULL
 * for ADDED, `after` NULL for REMOVED. A non-zero return stops the walk and is returned. */
typedef int (*dv_member_diff_fn)(void *ud, dv_member_event ev, const dv_member *before,
                                 const dv_member *after);

/* One merge pass over before[0..nb) and after[0..na), both normalized. O(nb + na), no
 * allocation. Returns DV_OK or the first non-zero return of fn. */
int dv_member_diff_walk(const dv_member *before, size_t nb, const dv_member *after, size_t na,
                        dv_member_diff_fn fn, void *ud);

/* ---- owning sets ---- */

typedef struct {
    dv_member *m; /* m[0..n) strictly increasing by name; names owned (dv_alloc) */
    uint32_t n;
    uint32_t cap;
} dv_members;

void dv_members_init(dv_members *s);
void dv_members_free(dv_members *s); /* frees everything; s is then empty and reusable */
void dv_members_clear(dv_members *s);
size_t dv_members_size(const dv_members *s);

/* Insert name with status st, or set the status of an existing member. Returns
 * DV_MEMBER_ADDED, DV_MEMBER_CHANGED, DV_OK (already there with that status), DV_EINVAL (bad
 * status, NULL name with len > 0, set full) or DV_ENOMEM (set unchanged). O(n) for an insert
 * (sorted array), O(log n) otherwise. */
int dv_members_put(dv_members *s, const uint8_t *name, uint32_t len, dv_member_status st);
/* Remove name; true when it was a member. Never allocates. */
bool dv_members_remove(dv_members *s, const uint8_t *name, uint32_t len);
/* The member named name, or NULL. O(log n). Valid until the next mutation of s. */
const dv_member *dv_members_find(const dv_members *s, const uint8_t *name, uint32_t len);

/* Call fn for every member in name order; a non-zero return stops and is returned. */
typedef int (*dv_member_fn)(void *ud, const dv_member *m);
int dv_members_foreach(const dv_members *s, dv_member_fn fn, void *ud);

/* The member set of a membership mode. s := the members of cands[0..n) plus self (which may
 * be NULL for none): sorted, de-duplicated, statuses as given (lowest wins on duplicates).
 * cands may be unsorted and hold duplicates, e.g. the nodes of a :pg group's pids. Returns
 * DV_OK, DV_EINVAL (a bad status or name; s unchanged) or DV_ENOMEM (s unchanged). */
int dv_members_assign(dv_members *s, const dv_member *cands, size_t n, const dv_member *self);

/* dst := the members of src whose status is in mask (DV_MEMBER_MASK(st) | ...). dst and src
 * must be different sets. On DV_ENOMEM dst is unchanged. */
int dv_members_filter(dv_members *dst, const dv_members *src, unsigned mask);
/* dst := src (dst != src). On DV_ENOMEM dst is unchanged. */
int dv_members_copy(dv_members *dst, const dv_members *src);

/* ---- diff of two sets ---- */

typedef struct {
    const uint8_t *name;
    uint32_t len;
    dv_member_status from, to;
} dv_member_change;

/* The differences between two sets, each list in name order. The names point into the sets
 * the diff was computed from (added and changed into after, removed into before) and are
 * valid while those sets are not modified. */
typedef struct {
    dv_member *added;
    size_t nadded;
    dv_member *removed;
    size_t nremoved;
    dv_member_change *changed;
    size_t nchanged;
} dv_members_delta;

void dv_members_delta_init(dv_members_delta *d);
void dv_members_delta_free(dv_members_delta *d);

/* out := diff(before, after). out must be initialised; its previous lists are freed. On
 * DV_ENOMEM out is left empty. */
int dv_members_diff(const dv_members *before, const dv_members *after, dv_members_delta *out);

#endif
