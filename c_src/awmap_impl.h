/* awmap_impl.h - the add-wins map's layout and small helpers, private to awmap.c and
 * awmap_sync.c. Nothing outside those two files includes it: awmap.h is the interface.
 *
 * awmap.c holds the tables, entries and elements, giving memory back, join and local writes;
 * awmap_sync.c what anti-entropy reads from a map (delta since a context, digests,
 * manifests) and the removals a peer's manifest proves.
 *
 * Memory layout. A key is an entry: one block holding the entry header, an inline element slot
 * (an element header and room for `cap` value bytes) and the key bytes, so that a key with
 * one element - nearly every key - costs one allocation. Further (concurrent) elements, and
 * an element whose value does not fit the slot, are separate blocks. The slot is reused by
 * later writes of a value that fits; a lone separate element beside a free slot is moved into
 * it (or the entry into a block of the right size) when a join or a remove leaves it so.
 */
#ifndef DROVE_AWMAP_IMPL_H
#define DROVE_AWMAP_IMPL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "awmap.h"
#include "hash.h"
#include "slab.h"

#define KEY_SEED     0x44726f7665ULL /* "Drove" */
#define BUCKET_SHIFT 54              /* top 10 bits of the key hash select the digest bucket */

#if defined(__GNUC__) || defined(__clang__)
#define PREFETCH(p) __builtin_prefetch(p)
#else
#define PREFETCH(p) ((void)(p))
#endif
#define PF_DIST 8 /* elements ahead that table probes are prefetched */

typedef struct dv_entry dv_entry;

/* An element: this header, then vlen value bytes (elem_val). */
typedef struct dv_elem {
    struct dv_elem *next;
    dv_entry *entry;
    dv_dot dot;
    uint64_t ts;
    uint32_t vlen;
    uint32_t cap; /* value bytes the block has room for (an inline slot may hold fewer) */
} dv_elem;

/* State of an entry's inline element slot. */
enum { SLOT_FREE = 0, SLOT_LIVE = 1, SLOT_DEAD = 2 /* detached, on a join's graveyard */ };

/* An entry: this header, the inline element (entry_inl: header and cap value bytes), then the
 * key bytes (entry_key). */
struct dv_entry {
    dv_elem *elems; /* (the key's hash is in its keys-table slot; entry_hash recomputes it) */
    uint32_t klen;
    uint8_t touched; /* on the touched list of the join in progress */
    uint8_t slot;    /* SLOT_* */
};

_Static_assert(sizeof(dv_elem) % 8 == 0, "element header keeps 8-byte alignment");
_Static_assert(sizeof(dv_entry) % 8 == 0, "entry header keeps 8-byte alignment");

typedef struct {
    uint64_t hash;
    dv_entry *e;
} kslot;

/* A dot-table slot (8 bytes): the element's address (8-byte aligned, below 2^48) with the
 * low DSLOT_HBITS bits of its dot hash in the spare bits: 3 below the address, 16 above it.
 * Those bits are the home slot of tables up to 2^DSLOT_HBITS slots (so moving slots on a
 * delete or a resize reads no element) and a fingerprint (a probe reads an element only when
 * they match). 0 is an empty slot. User-space addresses stay below 2^48 on x86-64 and AArch64
 * unless a process asks the kernel for more; entry_new and elem_new treat one that does not
 * fit as a failed allocation. */
typedef uint64_t dslot;

#define DSLOT_HBITS 19
#define DSLOT_HMASK ((((uint64_t)1) << DSLOT_HBITS) - 1)
#define DSLOT_ADDR  (((((uint64_t)1) << 48) - 1) & ~(uint64_t)7)

static inline dv_elem *dslot_x(dslot s) {
    return (dv_elem *)(uintptr_t)(s & DSLOT_ADDR);
}

static inline dslot dslot_of(const dv_elem *x, uint64_t h) {
    return (uint64_t)(uintptr_t)x | (h & 7) | ((h & DSLOT_HMASK) >> 3) << 48;
}

/* The low DSLOT_HBITS bits of the slot's dot hash. */
static inline uint64_t dslot_h(dslot s) {
    return (s & 7) | (s >> 48) << 3;
}

static inline bool dslot_fp_matches(dslot s, uint64_t h) {
    return dslot_h(s) == (h & DSLOT_HMASK);
}

static inline bool addr_fits(const void *p) {
    return ((uint64_t)(uintptr_t)p & ~DSLOT_ADDR) == 0;
}

/* What a join remembers of a key before changing it, to report read changes. */
typedef struct {
    dv_entry *e;
    dv_elem *old; /* winner before the change (kept alive on the graveyard), or NULL */
} touched_t;

struct dv_map {
    uint64_t rid;
    uint64_t hlc;
    dv_ctx ctx;
    kslot *keys; /* open addressing, linear probing; home slot: the top bits of the key hash */
    size_t kcap, kcount;
    unsigned kshift; /* 64 - log2(kcap) */
    dslot *dots;     /* open addressing, linear probing, by dot hash */
    size_t dcap, dcount;
    size_t payload; /* key + value bytes */
    size_t heap;    /* bytes in entries and elements */
    dv_slab slab;   /* where entries and elements live */
    size_t blocks;  /* live blocks in the slabs: entries and separate elements */
    /* a shrink in progress: the smaller table being filled, holding exactly the entries of
     * the old table's slots below the cursor (so lookups and scans use the old one alone) */
    kslot *knew;
    size_t kncap, kcur;
    unsigned knshift;
    dslot *dnew;
    size_t dncap, dcur;
    /* an evacuation in progress: the retired slab, its blocks still in use, the keys cursor */
    dv_slab old;
    size_t old_live, ecur;
    bool evacuating;
    bool removed; /* something was removed since the last maintain() */
    uint64_t digest[DV_BUCKETS];
    /* join scratch */
    touched_t *touched;
    size_t ntouched, captouched;
    dv_elem *graveyard;
};

/* ---------------------------------------------------------------- helpers */

static inline uint64_t key_hash(const uint8_t *k, uint32_t klen) {
    return dv_hash64_seed(k, klen, KEY_SEED);
}

/* Dots of one replica are issued, shipped and joined in counter order, so the dot index keeps
 * runs of DOT_RUN consecutive counters in adjacent slots (one cache line) and places
 * the runs at random: sequential writes and joins touch a new line every few dots instead of
 * one per dot, while runs of different replicas still spread over the whole table. */
#define DOT_RUN_BITS 2
#define DOT_RUN_MASK ((1u << DOT_RUN_BITS) - 1)

static inline uint64_t dot_hash(dv_dot d) {
    uint64_t run = dv_mix64(d.rid ^ dv_mix64(d.ctr >> DOT_RUN_BITS));
    return (run & ~(uint64_t)DOT_RUN_MASK) | (d.ctr & DOT_RUN_MASK);
}

/* The home of a dot-table slot in a table of mask + 1 slots: from the bits the slot keeps,
 * or, for tables larger than they cover, from its element's dot. */
static inline size_t dslot_home(dslot s, size_t mask) {
    if (mask <= DSLOT_HMASK)
        return (size_t)dslot_h(s) & mask;
    return (size_t)dot_hash(dslot_x(s)->dot) & mask;
}

static inline bool dot_eq(dv_dot a, dv_dot b) {
    return a.rid == b.rid && a.ctr == b.ctr;
}

static inline uint32_t bucket_of(uint64_t hash) {
    return (uint32_t)(hash >> BUCKET_SHIFT);
}

static inline uint64_t fingerprint(uint64_t khash, dv_dot d) {
    return dv_mix64(khash ^ dv_mix64(d.rid + dv_mix64(d.ctr)));
}

static inline uint8_t *elem_val(dv_elem *x) {
    return (uint8_t *)(x + 1);
}

static inline const uint8_t *elem_cval(const dv_elem *x) {
    return (const uint8_t *)(x + 1);
}

static inline dv_elem *entry_inl(dv_entry *e) {
    return (dv_elem *)(e + 1);
}

static inline const uint8_t *entry_key(const dv_entry *e) {
    const dv_elem *x = (const dv_elem *)(e + 1);
    return (const uint8_t *)(x + 1) + x->cap;
}

static inline uint64_t entry_hash(const dv_entry *e) {
    return key_hash(entry_key(e), e->klen);
}

static inline size_t entry_size(uint32_t klen, uint32_t icap) {
    return sizeof(dv_entry) + sizeof(dv_elem) + (size_t)icap + klen;
}

static inline bool elem_is_inline(dv_elem *x) {
    return x == entry_inl(x->entry);
}

/* Does a value of vlen bytes go into a slot of cap bytes (wasting at most 16 bytes + 1/4)? */
static inline bool slot_fits(uint32_t cap, uint32_t vlen) {
    return vlen <= cap && cap <= (uint64_t)vlen + vlen / 4 + 16;
}

/* a > b in LWW order: (ts, rid, ctr) */
static inline bool newer(const dv_elem *a, const dv_elem *b) {
    if (a->ts != b->ts)
        return a->ts > b->ts;
    if (a->dot.rid != b->dot.rid)
        return a->dot.rid > b->dot.rid;
    return a->dot.ctr > b->dot.ctr;
}

static inline const dv_elem *winner(const dv_entry *e) {
    const dv_elem *w = e->elems;
    for (const dv_elem *x = w ? w->next : NULL; x; x = x->next)
        if (newer(x, w))
            w = x;
    return w;
}

static inline void to_read(const dv_elem *w, dv_read *r) {
    r->val = elem_cval(w);
    r->vlen = w->vlen;
    r->ts = w->ts;
    r->dot = w->dot;
}

/* Calls fn with e's key and read value (nothing for an entry without elements). */
static inline int visit(const dv_entry *e, dv_iter_fn fn, void *ud) {
    if (!e->elems)
        return 0;
    dv_read r;
    to_read(winner(e), &r);
    return fn(ud, entry_key(e), e->klen, &r);
}

/* ---------------------------------------------------------------- lookups */

/* The keys table is ordered by hash: a key's home slot is the top bits of its hash, so the
 * keys of one digest bucket (the top 10 bits) sit together (bucket_span), and a resize
 * writes the new table front to back. */
static inline size_t khome(const dv_map *m, uint64_t h) {
    return (size_t)(h >> m->kshift);
}

static inline dv_elem *dots_get(const dv_map *m, dv_dot d) {
    if (!m->dcount)
        return NULL;
    uint64_t h = dot_hash(d);
    size_t mask = m->dcap - 1, i = h & mask;
    for (;;) {
        dslot s = m->dots[i];
        if (!s)
            return NULL;
        if (dslot_fp_matches(s, h) && dot_eq(dslot_x(s)->dot, d))
            return dslot_x(s);
        i = (i + 1) & mask;
    }
}

static inline int cmp_dot(const void *a, const void *b) {
    const dv_dot *x = a, *y = b;
    if (x->rid != y->rid)
        return x->rid < y->rid ? -1 : 1;
    if (x->ctr != y->ctr)
        return x->ctr < y->ctr ? -1 : 1;
    return 0;
}

static inline bool dots_sorted_has(const dv_dot *v, size_t n, dv_dot d) {
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = cmp_dot(&v[mid], &d);
        if (c == 0)
            return true;
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return false;
}

/* The join of a decoded delta (dv_map_join without the reservation): awmap.c. */
int awmap_join_core(dv_map *m, const dv_delta *d, dv_diff_fn fn, void *ud);

#endif
