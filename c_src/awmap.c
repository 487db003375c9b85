/* awmap.c - add-wins map with LWW read. See awmap.h for semantics.
 *
 * Memory layout. A key is an entry: one block holding the entry header, an inline element slot
 * (an element header and room for `cap` value bytes) and the key bytes, so that a key with
 * one element - nearly every key - costs one allocation. Further (concurrent) elements, and
 * an element whose value does not fit the slot, are separate blocks. The slot is reused by
 * later writes of a value that fits; a lone separate element beside a free slot is moved into
 * it (or the entry into a block of the right size) when a join or a remove leaves it so.
 *
 * Memory follows the contents (see "giving memory back" below): a table that falls below an
 * eighth full is rebuilt at about three eighths (it grows again above three quarters, so a
 * map hovering around a size does not resize back and forth), and a slab that holds more
 * than twice what is live (plus EVAC_SLACK) has its live blocks moved to fresh chunks and
 * its old chunks freed. Both happen in bounded steps, a few at the end of each mutation, so
 * no single call pays for a whole table or slab. */
#include "awmap.h"

#include <stdlib.h>
#include <string.h>

#include "alloc.h"
#include "hash.h"
#include "outbox.h"
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

static const dv_elem *winner(const dv_entry *e) {
    const dv_elem *w = e->elems;
    for (const dv_elem *x = w ? w->next : NULL; x; x = x->next)
        if (newer(x, w))
            w = x;
    return w;
}

static void to_read(const dv_elem *w, dv_read *r) {
    r->val = elem_cval(w);
    r->vlen = w->vlen;
    r->ts = w->ts;
    r->dot = w->dot;
}

/* Calls fn with e's key and read value (nothing for an entry without elements). */
static int visit(const dv_entry *e, dv_iter_fn fn, void *ud) {
    if (!e->elems)
        return 0;
    dv_read r;
    to_read(winner(e), &r);
    return fn(ud, entry_key(e), e->klen, &r);
}

uint64_t dv_hlc_next(uint64_t last, uint64_t now_ms) {
    uint64_t phys = now_ms > (DV_MAX_TS >> 16) ? DV_MAX_TS : now_ms << 16;
    if (phys > last)
        return phys;
    return last < DV_MAX_TS ? last + 1 : DV_MAX_TS;
}

/* Smallest power-of-two capacity (>= 16, >= cur) that holds n at a load of at most 3/4
 * (n <= SIZE_MAX / 64: callers check). */
static size_t table_cap_for(size_t cur, size_t n) {
    size_t cap = cur ? cur : 16;
    while (n * 4 > cap * 3)
        cap *= 2;
    return cap;
}

/* ---------------------------------------------------------------- tables */

/* The keys table is ordered by hash: a key's home slot is the top bits of its hash, so the
 * keys of one digest bucket (the top 10 bits) sit together (bucket_span), and a resize
 * writes the new table front to back. */
static inline size_t khome(const dv_map *m, uint64_t h) {
    return (size_t)(h >> m->kshift);
}

/* Rehash into a table of ncap slots, reading the old one in order (its order is the new
 * one's, so the writes move forward too). */
static unsigned shift_for(size_t cap) {
    unsigned shift = 64;
    for (size_t c = cap; c > 1; c >>= 1)
        shift--;
    return shift;
}

static void keys_shrink_abort(dv_map *m);
static void dots_shrink_abort(dv_map *m);

static int keys_resize(dv_map *m, size_t ncap) {
    if (ncap > SIZE_MAX / sizeof(kslot))
        return DV_ENOMEM;
    kslot *nk = dv_pages_alloc(ncap * sizeof(kslot));
    if (!nk)
        return DV_ENOMEM;
    keys_shrink_abort(m);
    unsigned nshift = shift_for(ncap);
    for (size_t i = 0; i < m->kcap; i++) {
        if (!m->keys[i].e)
            continue;
        size_t j = (size_t)(m->keys[i].hash >> nshift);
        while (nk[j].e)
            j = (j + 1) & (ncap - 1);
        nk[j] = m->keys[i];
    }
    dv_pages_free(m->keys, m->kcap * sizeof(kslot));
    m->keys = nk;
    m->kcap = ncap;
    m->kshift = nshift;
    return DV_OK;
}

/* Room for `extra` more keys, growing (once) if needed. A shrink that would leave too little
 * room is given up. */
static int keys_reserve(dv_map *m, size_t extra) {
    if (extra > SIZE_MAX / 64 - m->kcount)
        return DV_ENOMEM;
    if (m->knew && (m->kcount + extra) * 4 > m->kncap * 3)
        keys_shrink_abort(m);
    size_t ncap = table_cap_for(m->kcap, m->kcount + extra);
    return ncap == m->kcap ? DV_OK : keys_resize(m, ncap);
}

static size_t keys_find_slot(const dv_map *m, const uint8_t *k, uint32_t klen, uint64_t h,
                             bool *found) {
    size_t mask = m->kcap - 1, i = khome(m, h);
    for (;;) {
        const kslot *s = &m->keys[i];
        if (!s->e) {
            *found = false;
            return i;
        }
        if (s->hash == h && s->e->klen == klen && memcmp(entry_key(s->e), k, klen) == 0) {
            *found = true;
            return i;
        }
        i = (i + 1) & mask;
    }
}

static dv_entry *keys_get(const dv_map *m, const uint8_t *k, uint32_t klen, uint64_t h) {
    if (!m->kcount)
        return NULL;
    bool found;
    size_t i = keys_find_slot(m, k, klen, h, &found);
    return found ? m->keys[i].e : NULL;
}

/* Tables of a shrink in progress (struct dv_map): insert, delete, repoint. */
static void ktab_put(kslot *t, size_t cap, unsigned shift, kslot s) {
    size_t i = (size_t)(s.hash >> shift);
    while (t[i].e)
        i = (i + 1) & (cap - 1);
    t[i] = s;
}

static size_t ktab_find(const kslot *t, size_t cap, unsigned shift, const dv_entry *e, uint64_t h) {
    size_t i = (size_t)(h >> shift);
    while (t[i].e != e)
        i = (i + 1) & (cap - 1);
    return i;
}

static void ktab_del(kslot *t, size_t cap, unsigned shift, const dv_entry *e, uint64_t h) {
    size_t mask = cap - 1, i = ktab_find(t, cap, shift, e, h), j = i;
    for (;;) {
        j = (j + 1) & mask;
        if (!t[j].e)
            break;
        size_t home = (size_t)(t[j].hash >> shift);
        if ((j > i && (home <= i || home > j)) || (j < i && (home <= i && home > j))) {
            t[i] = t[j];
            i = j;
        }
    }
    t[i].e = NULL;
    t[i].hash = 0;
}

/* Put e into the empty slot i (from keys_find_slot, with room reserved). */
static void keys_put(dv_map *m, size_t i, dv_entry *e, uint64_t h) {
    m->keys[i].hash = h;
    m->keys[i].e = e;
    m->kcount++;
    m->payload += e->klen;
    if (m->knew && i < m->kcur)
        ktab_put(m->knew, m->kncap, m->knshift, m->keys[i]);
}

/* Slot i (holding a key) now holds ne, a new block of the same key. */
static void keys_set_at(dv_map *m, size_t i, dv_entry *ne) {
    if (m->knew && i < m->kcur)
        m->knew[ktab_find(m->knew, m->kncap, m->knshift, m->keys[i].e, m->keys[i].hash)].e = ne;
    m->keys[i].e = ne;
}

/* The slot that holds e now holds ne (same key). */
static void keys_repoint(dv_map *m, const dv_entry *e, dv_entry *ne, uint64_t h) {
    size_t mask = m->kcap - 1, i = khome(m, h);
    while (m->keys[i].e != e)
        i = (i + 1) & mask;
    keys_set_at(m, i, ne);
}

/* ---------------------------------------------------------------- entries */

/* A new entry block for key k with an inline slot for vlen value bytes. It is not in
 * the table yet, and its slot is free. */
static dv_entry *entry_new(dv_map *m, const uint8_t *k, uint32_t klen, uint32_t vlen) {
    size_t size = entry_size(klen, vlen);
    dv_entry *e = dv_slab_alloc(&m->slab, size);
    if (e && !addr_fits(entry_inl(e))) { /* see dslot */
        dv_slab_release(&m->slab, e, size);
        e = NULL;
    }
    if (!e)
        return NULL;
    m->blocks++;
    e->elems = NULL;
    e->klen = klen;
    e->touched = 0;
    e->slot = SLOT_FREE;
    dv_elem *x = entry_inl(e);
    x->entry = e;
    x->cap = vlen;
    if (klen)
        memcpy(elem_val(x) + vlen, k, klen);
    m->heap += size;
    return e;
}

/* Gives back a block: to the slab, or, while its chunk is in the retired slab of an
 * evacuation, to nobody (the retired slab is freed whole). */
static void block_release(dv_map *m, void *p, size_t size) {
    m->blocks--;
    m->heap -= size;
    /* (once none is in use, m->old's chunks are being freed: their addresses may come back
     * to the current slab, so it is not asked) */
    if (m->old_live && dv_slab_owns(&m->old, p))
        m->old_live--;
    else
        dv_slab_release(&m->slab, p, size);
}

static void entry_free(dv_map *m, dv_entry *e) {
    block_release(m, e, entry_size(e->klen, entry_inl(e)->cap));
}

/* Backward-shift deletion keeps probe chains intact without tombstones. Frees e. */
static void keys_delete(dv_map *m, dv_entry *e, uint64_t h) {
    size_t mask = m->kcap - 1, i = khome(m, h);
    while (m->keys[i].e != e)
        i = (i + 1) & mask;
    if (m->knew && i < m->kcur)
        ktab_del(m->knew, m->kncap, m->knshift, e, h);
    size_t j = i;
    for (;;) {
        j = (j + 1) & mask;
        if (!m->keys[j].e)
            break;
        size_t home = khome(m, m->keys[j].hash);
        /* move j back to i if home is not cyclically in (i, j] */
        if ((j > i && (home <= i || home > j)) || (j < i && (home <= i && home > j))) {
            if (m->knew && (i < m->kcur) != (j < m->kcur)) { /* crosses the shrink's cursor */
                if (i < m->kcur)
                    ktab_put(m->knew, m->kncap, m->knshift, m->keys[j]);
                else
                    ktab_del(m->knew, m->kncap, m->knshift, m->keys[j].e, m->keys[j].hash);
            }
            m->keys[i] = m->keys[j];
            i = j;
        }
    }
    m->keys[i].e = NULL;
    m->keys[i].hash = 0;
    m->kcount--;
    m->payload -= e->klen;
    m->removed = true;
    entry_free(m, e);
}

static int dots_resize(dv_map *m, size_t ncap) {
    if (ncap > SIZE_MAX / sizeof(dslot))
        return DV_ENOMEM;
    dslot *nd = dv_pages_alloc(ncap * sizeof(dslot));
    if (!nd)
        return DV_ENOMEM;
    dots_shrink_abort(m);
    for (size_t i = 0; i < m->dcap; i++) {
        if (!m->dots[i])
            continue;
        size_t j = dslot_home(m->dots[i], ncap - 1);
        while (nd[j])
            j = (j + 1) & (ncap - 1);
        nd[j] = m->dots[i];
    }
    dv_pages_free(m->dots, m->dcap * sizeof(dslot));
    m->dots = nd;
    m->dcap = ncap;
    return DV_OK;
}

static int dots_reserve(dv_map *m, size_t extra) {
    if (extra > SIZE_MAX / 64 - m->dcount)
        return DV_ENOMEM;
    if (m->dnew && (m->dcount + extra) * 4 > m->dncap * 3)
        dots_shrink_abort(m);
    size_t ncap = table_cap_for(m->dcap, m->dcount + extra);
    return ncap == m->dcap ? DV_OK : dots_resize(m, ncap);
}

static dv_elem *dots_get(const dv_map *m, dv_dot d) {
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

/* The table of a dot-index shrink in progress (struct dv_map): insert, find, delete. */
static void dtab_put(dslot *t, size_t cap, dslot s) {
    size_t i = dslot_home(s, cap - 1);
    while (t[i])
        i = (i + 1) & (cap - 1);
    t[i] = s;
}

static size_t dtab_find(const dslot *t, size_t cap, const dv_elem *x) {
    size_t i = dot_hash(x->dot) & (cap - 1);
    while (dslot_x(t[i]) != x)
        i = (i + 1) & (cap - 1);
    return i;
}

static void dtab_del(dslot *t, size_t cap, const dv_elem *x) {
    size_t mask = cap - 1, i = dtab_find(t, cap, x), j = i;
    for (;;) {
        j = (j + 1) & mask;
        if (!t[j])
            break;
        size_t home = dslot_home(t[j], mask);
        if ((j > i && (home <= i || home > j)) || (j < i && (home <= i && home > j))) {
            t[i] = t[j];
            i = j;
        }
    }
    t[i] = 0;
}

/* Caller guarantees capacity (dots_reserve) and absence. */
static void dots_insert(dv_map *m, dv_elem *x) {
    uint64_t h = dot_hash(x->dot);
    size_t mask = m->dcap - 1, i = h & mask;
    while (m->dots[i])
        i = (i + 1) & mask;
    m->dots[i] = dslot_of(x, h);
    m->dcount++;
    if (m->dnew && i < m->dcur)
        dtab_put(m->dnew, m->dncap, m->dots[i]);
}

/* The slot that holds x now holds y (same dot). */
static void dots_repoint(dv_map *m, const dv_elem *x, dv_elem *y) {
    uint64_t h = dot_hash(x->dot);
    size_t mask = m->dcap - 1, i = h & mask;
    while (dslot_x(m->dots[i]) != x)
        i = (i + 1) & mask;
    if (m->dnew && i < m->dcur)
        m->dnew[dtab_find(m->dnew, m->dncap, x)] = dslot_of(y, h);
    m->dots[i] = dslot_of(y, h);
}

static void dots_delete(dv_map *m, dv_elem *x) {
    size_t mask = m->dcap - 1, i = dot_hash(x->dot) & mask;
    while (dslot_x(m->dots[i]) != x)
        i = (i + 1) & mask;
    if (m->dnew && i < m->dcur)
        dtab_del(m->dnew, m->dncap, x);
    size_t j = i;
    for (;;) {
        j = (j + 1) & mask;
        if (!m->dots[j])
            break;
        size_t home = dslot_home(m->dots[j], mask);
        if ((j > i && (home <= i || home > j)) || (j < i && (home <= i && home > j))) {
            if (m->dnew && (i < m->dcur) != (j < m->dcur)) { /* crosses the shrink's cursor */
                if (i < m->dcur)
                    dtab_put(m->dnew, m->dncap, m->dots[j]);
                else
                    dtab_del(m->dnew, m->dncap, dslot_x(m->dots[j]));
            }
            m->dots[i] = m->dots[j];
            i = j;
        }
    }
    m->dots[i] = 0;
    m->dcount--;
    m->removed = true;
}

/* ---------------------------------------------------------------- elements */

static void elem_fill(dv_elem *x, dv_dot dot, uint64_t ts, const uint8_t *v, uint32_t vlen) {
    x->next = NULL;
    x->dot = dot;
    x->ts = ts;
    x->vlen = vlen;
    if (vlen)
        memcpy(elem_val(x), v, vlen);
}

/* A separate element block (not attached). */
static dv_elem *elem_new(dv_map *m, dv_dot dot, uint64_t ts, const uint8_t *v, uint32_t vlen) {
    dv_elem *x = dv_slab_alloc(&m->slab, sizeof(dv_elem) + vlen);
    if (x && !addr_fits(x)) { /* see dslot */
        dv_slab_release(&m->slab, x, sizeof(dv_elem) + vlen);
        x = NULL;
    }
    if (!x)
        return NULL;
    m->blocks++;
    x->entry = NULL;
    x->cap = vlen;
    elem_fill(x, dot, ts, v, vlen);
    m->heap += sizeof(dv_elem) + vlen;
    return x;
}

/* The element in e's (free) inline slot, filled (not attached). */
static dv_elem *elem_inline(dv_entry *e, dv_dot dot, uint64_t ts, const uint8_t *v, uint32_t vlen) {
    dv_elem *x = entry_inl(e);
    elem_fill(x, dot, ts, v, vlen);
    e->slot = SLOT_LIVE;
    return x;
}

/* h: the key's hash (entry_hash(e)). */
static void elem_attach(dv_map *m, dv_entry *e, dv_elem *x, uint64_t h) {
    x->entry = e;
    x->next = e->elems;
    e->elems = x;
    m->payload += x->vlen;
    m->digest[bucket_of(h)] ^= fingerprint(h, x->dot);
    dots_insert(m, x);
}

/* Unlink x from its entry and the dot index; the caller releases it (or graveyards it). */
static void elem_detach(dv_map *m, dv_elem *x, uint64_t h) {
    dv_entry *e = x->entry;
    dv_elem **pp = &e->elems;
    while (*pp != x)
        pp = &(*pp)->next;
    *pp = x->next;
    x->next = NULL;
    m->payload -= x->vlen;
    m->digest[bucket_of(h)] ^= fingerprint(h, x->dot);
    dots_delete(m, x);
}

/* Free a separate element block. */
static void elem_free(dv_map *m, dv_elem *x) {
    block_release(m, x, sizeof(dv_elem) + x->cap);
}

/* Give back a detached element: free its block, or free its entry's inline slot. */
static void elem_release(dv_map *m, dv_elem *x) {
    if (elem_is_inline(x))
        x->entry->slot = SLOT_FREE;
    else
        elem_free(m, x);
}

/* A lone separate element beside a free inline slot moves into the slot, or, if it does not
 * fit, the entry moves into a new block of the right size. Best effort: on allocation
 * failure e stays as it is (valid, just larger). */
static void entry_compact(dv_map *m, dv_entry *e) {
    dv_elem *x = e->elems;
    if (e->slot != SLOT_FREE || !x || x->next)
        return;
    if (!slot_fits(entry_inl(e)->cap, x->vlen)) {
        dv_entry *ne = entry_new(m, entry_key(e), e->klen, x->vlen);
        if (!ne)
            return;
        keys_repoint(m, e, ne, entry_hash(e));
        entry_free(m, e);
        e = ne;
    }
    dv_elem *y = elem_inline(e, x->dot, x->ts, elem_cval(x), x->vlen);
    y->entry = e;
    e->elems = y;
    dots_repoint(m, x, y);
    elem_free(m, x);
}

/* ---------------------------------------------------------------- giving memory back
 *
 * Tables. A table below an eighth full (after a removal) starts a shrink: a new table sized
 * for three eighths, filled from the old one SHRINK_STEP slots per mutation. Meanwhile the
 * old table stays the map's index (lookups and scans read it alone), and the new one holds
 * exactly the entries of the old one's slots below the cursor: an insert, delete, repoint or
 * backward shift at a slot below it is mirrored, one that moves an entry across it inserts or
 * deletes it there. When the cursor reaches the end, the new table replaces the old. A growth
 * that the new table could not hold gives the shrink up (the old table never changed). An
 * empty table is replaced at once.
 *
 * Slab. When the slab holds more than twice the live bytes plus EVAC_SLACK (after a removal),
 * dv_slab_retire moves its chunks into m->old; the keys table is walked from a cursor, at most
 * EVAC_STEP units of work per mutation (a slot is one, moving a block eight), and each entry
 * whose block or separate elements are in m->old is moved to a fresh block (keys and dot
 * index repointed). Blocks released meanwhile from m->old just lower m->old_live; when it
 * reaches zero (the cursor wraps around if entries moved behind it), m->old's chunks are
 * freed, FREE_CHUNKS per step (unmapping megabytes can take milliseconds).
 * A failed allocation stops a step; the next one tries again. */

#define SHRINK_STEP ((size_t)8192)
#define EVAC_STEP   ((size_t)2048)
#define EVAC_SLACK  ((size_t)256 << 10)
#define MOVE_COST   8
#define FREE_CHUNKS 1                   /* retired chunks freed per step (up to 2 MiB) */
#define EVAC_CHUNK  ((size_t)256 << 10) /* largest new chunk while evacuating (slab.h) */

static size_t shrink_step = SHRINK_STEP, evac_step_units = EVAC_STEP, free_chunks = FREE_CHUNKS;

void dv_map_set_compact_steps(size_t slots, size_t units, size_t chunks) {
    shrink_step = slots ? slots : SHRINK_STEP;
    evac_step_units = units ? units : EVAC_STEP;
    free_chunks = chunks ? chunks : FREE_CHUNKS;
}

static void keys_shrink_abort(dv_map *m) {
    if (!m->knew)
        return;
    dv_pages_free(m->knew, m->kncap * sizeof(kslot));
    m->knew = NULL;
    m->kncap = m->kcur = 0;
}

static void dots_shrink_abort(dv_map *m) {
    if (!m->dnew)
        return;
    dv_pages_free(m->dnew, m->dncap * sizeof(dslot));
    m->dnew = NULL;
    m->dncap = m->dcur = 0;
}

/* The capacity a table of n entries shrinks to, or 0 if it does not. */
static size_t shrink_cap(size_t cap, size_t n) {
    if (cap <= 16 || n * 8 >= cap)
        return 0;
    return n ? table_cap_for(16, n * 2) : 16;
}

static void keys_shrink_step(dv_map *m, bool start) {
    if (!m->knew) {
        size_t ncap = start ? shrink_cap(m->kcap, m->kcount) : 0;
        if (!ncap || !(m->knew = dv_pages_alloc(ncap * sizeof(kslot))))
            return;
        m->kncap = ncap;
        m->knshift = shift_for(ncap);
        m->kcur = 0;
    }
    size_t end = m->kcount ? m->kcur + shrink_step : m->kcap; /* an empty table: at once */
    for (; m->kcur < m->kcap && m->kcur < end; m->kcur++)
        if (m->keys[m->kcur].e)
            ktab_put(m->knew, m->kncap, m->knshift, m->keys[m->kcur]);
    if (m->kcur < m->kcap)
        return;
    dv_pages_free(m->keys, m->kcap * sizeof(kslot));
    m->keys = m->knew;
    m->kcap = m->kncap;
    m->kshift = m->knshift;
    m->knew = NULL;
    m->kncap = m->kcur = 0;
    if (m->ecur >= m->kcap)
        m->ecur = 0;
}

static void dots_shrink_step(dv_map *m, bool start) {
    if (!m->dnew) {
        size_t ncap = start ? shrink_cap(m->dcap, m->dcount) : 0;
        if (!ncap || !(m->dnew = dv_pages_alloc(ncap * sizeof(dslot))))
            return;
        m->dncap = ncap;
        m->dcur = 0;
    }
    size_t end = m->dcount ? m->dcur + shrink_step : m->dcap;
    for (; m->dcur < m->dcap && m->dcur < end; m->dcur++)
        if (m->dots[m->dcur])
            dtab_put(m->dnew, m->dncap, m->dots[m->dcur]);
    if (m->dcur < m->dcap)
        return;
    dv_pages_free(m->dots, m->dcap * sizeof(dslot));
    m->dots = m->dnew;
    m->dcap = m->dncap;
    m->dnew = NULL;
    m->dncap = m->dcur = 0;
}

/* A copy of block p (size bytes) in the current slab, or NULL. */
static void *block_copy(dv_map *m, const void *p, size_t size) {
    uint8_t *q = dv_slab_alloc(&m->slab, size);
    if (q && !addr_fits(q + sizeof(dv_entry) + sizeof(dv_elem))) { /* see dslot */
        dv_slab_release(&m->slab, q, size);
        q = NULL;
    }
    if (q)
        memcpy(q, p, size);
    return q;
}

/* Moves the blocks of the entry in keys slot i that are in the retired slab to the current
 * one. Returns the work done (MOVE_COST a block), or SIZE_MAX when an allocation failed (the
 * entry is then valid, some of its blocks perhaps moved). */
static size_t entry_move(dv_map *m, size_t i) {
    dv_entry *e = m->keys[i].e;
    size_t work = 0;
    for (dv_elem **pp = &e->elems; *pp; pp = &(*pp)->next) {
        dv_elem *x = *pp;
        if (elem_is_inline(x) || !dv_slab_owns(&m->old, x))
            continue;
        dv_elem *y = block_copy(m, x, sizeof(dv_elem) + x->cap);
        if (!y)
            return SIZE_MAX;
        dots_repoint(m, x, y);
        *pp = y;
        m->old_live--;
        work += MOVE_COST;
    }
    if (!dv_slab_owns(&m->old, e))
        return work;
    dv_entry *ne = block_copy(m, e, entry_size(e->klen, entry_inl(e)->cap));
    if (!ne)
        return SIZE_MAX;
    dv_elem *inl = entry_inl(e), *ninl = entry_inl(ne);
    ninl->entry = ne;
    for (dv_elem **pp = &ne->elems; *pp; pp = &(*pp)->next) {
        if (*pp == inl) {
            dots_repoint(m, inl, ninl);
            *pp = ninl;
        } else {
            (*pp)->entry = ne;
        }
    }
    keys_set_at(m, i, ne);
    m->old_live--;
    return work + MOVE_COST;
}

static void evac_step(dv_map *m, bool start) {
    if (!m->evacuating) {
        if (!start || dv_slab_held(&m->slab) <= 2 * m->heap + EVAC_SLACK)
            return;
        if (dv_slab_retire(&m->slab, &m->old) != DV_OK)
            return;
        m->old_live = m->blocks - dv_slab_big_blocks(&m->slab);
        dv_slab_set_max_chunk(&m->slab, EVAC_CHUNK);
        m->evacuating = true;
        m->ecur = 0;
    }
    for (size_t work = 0; m->old_live && work < evac_step_units; work++) {
        if (m->ecur >= m->kcap)
            m->ecur = 0;
        if (m->keys[m->ecur].e) {
            size_t w = entry_move(m, m->ecur);
            if (w == SIZE_MAX)
                return;
            work += w;
        }
        m->ecur++;
    }
    if (!m->old_live && dv_slab_free_some(&m->old, free_chunks)) {
        dv_slab_set_max_chunk(&m->slab, 0);
        m->evacuating = false;
        m->ecur = 0;
    }
}

/* Runs at the end of every mutation, when no block is in use outside the map: continues
 * the shrinks and the evacuation in progress, and starts new ones after a removal. */
static void maintain(dv_map *m) {
    bool start = m->removed;
    m->removed = false;
    keys_shrink_step(m, start);
    dots_shrink_step(m, start);
    evac_step(m, start);
}

bool dv_map_compact_step(dv_map *m) {
    m->removed = true;
    maintain(m);
    return m->knew || m->dnew || m->evacuating;
}

void dv_map_get_stats(const dv_map *m, dv_map_stats *out) {
    out->key_slots = m->kcap;
    out->dot_slots = m->dcap;
    out->shrinking = m->knew || m->dnew;
    out->evacuating = m->evacuating;
    out->slab_bytes = dv_slab_held(&m->slab);
    out->old_slab_bytes = dv_slab_held(&m->old);
    out->old_blocks = m->old_live;
}

/* ---------------------------------------------------------------- lifecycle */

dv_map *dv_map_new(uint64_t rid) {
    dv_map *m = dv_calloc(1, sizeof(dv_map));
    if (!m)
        return NULL;
    m->rid = rid;
    dv_ctx_init(&m->ctx);
    dv_slab_init(&m->slab);
    if (keys_resize(m, 16) || dots_resize(m, 16)) {
        dv_map_free(m);
        return NULL;
    }
    return m;
}

/* Every entry and element lives in the slab: one pass over the chunks frees them. */
static void free_all_entries(dv_map *m) {
    dv_slab_free_all(&m->slab);
    dv_slab_free_all(&m->old);
    m->evacuating = false;
    m->old_live = m->ecur = m->blocks = 0;
    keys_shrink_abort(m);
    dots_shrink_abort(m);
    if (m->keys)
        memset(m->keys, 0, sizeof(kslot) * m->kcap);
    if (m->dots)
        memset(m->dots, 0, sizeof(dslot) * m->dcap);
    m->kcount = m->dcount = 0;
    m->payload = m->heap = 0;
    memset(m->digest, 0, sizeof(m->digest));
}

void dv_map_free(dv_map *m) {
    if (!m)
        return;
    free_all_entries(m);
    dv_pages_free(m->keys, m->kcap * sizeof(kslot));
    dv_pages_free(m->dots, m->dcap * sizeof(dslot));
    dv_free(m->touched);
    dv_ctx_free(&m->ctx);
    dv_free(m);
}

void dv_map_clear(dv_map *m) {
    free_all_entries(m);
    dv_ctx_clear(&m->ctx);
    m->removed = true;
    maintain(m); /* empty tables: replaced by small ones at once */
}

uint64_t dv_map_rid(const dv_map *m) {
    return m->rid;
}
size_t dv_map_size(const dv_map *m) {
    return m->kcount;
}
size_t dv_map_elements(const dv_map *m) {
    return m->dcount;
}
size_t dv_map_payload(const dv_map *m) {
    return m->payload;
}
const dv_ctx *dv_map_ctx(const dv_map *m) {
    return &m->ctx;
}
uint64_t dv_map_hlc(const dv_map *m) {
    return m->hlc;
}

size_t dv_map_memory(const dv_map *m) {
    return sizeof(*m) + dv_slab_held(&m->slab) + dv_slab_held(&m->old) +
           (m->kcap + m->kncap) * sizeof(kslot) + (m->dcap + m->dncap) * sizeof(dslot) +
           m->captouched * sizeof(touched_t) + dv_ctx_memory(&m->ctx);
}

bool dv_map_get(const dv_map *m, const uint8_t *k, uint32_t klen, dv_read *out) {
    dv_entry *e = keys_get(m, k, klen, key_hash(k, klen));
    if (!e || !e->elems)
        return false;
    if (out)
        to_read(winner(e), out);
    return true;
}

/* ---------------------------------------------------------------- join */

/* Room for `extra` more touched keys. */
static int touched_reserve(dv_map *m, size_t extra) {
    if (m->captouched - m->ntouched >= extra)
        return DV_OK;
    size_t ncap = m->captouched ? m->captouched : 16;
    while (ncap - m->ntouched < extra)
        ncap *= 2;
    touched_t *nt = dv_realloc(m->touched, sizeof(touched_t) * ncap);
    if (!nt)
        return DV_ENOMEM;
    m->touched = nt;
    m->captouched = ncap;
    return DV_OK;
}

/* Put e on the touched list, remembering its winner when `report` (changes are reported). */
static int touch(dv_map *m, dv_entry *e, bool report) {
    if (e->touched)
        return DV_OK;
    int rc = touched_reserve(m, 1);
    if (rc)
        return rc;
    m->touched[m->ntouched].e = e;
    m->touched[m->ntouched].old = report ? (dv_elem *)winner(e) : NULL;
    m->ntouched++;
    e->touched = 1;
    return DV_OK;
}

/* Remove element x as part of a join. When changes are reported it is kept on the graveyard
 * (its inline slot, if it is one, stays taken) until they are; otherwise released at once. */
static int join_remove(dv_map *m, dv_elem *x, bool report) {
    int rc = touch(m, x->entry, report);
    if (rc)
        return rc;
    elem_detach(m, x, entry_hash(x->entry));
    if (!report) {
        elem_release(m, x);
        return DV_OK;
    }
    if (elem_is_inline(x))
        x->entry->slot = SLOT_DEAD;
    x->next = m->graveyard;
    m->graveyard = x;
    return DV_OK;
}

/* A map whose last key went gives its slab chunks back (a map that only shrinks keeps them
 * for the blocks of later keys). Called where no block is in use outside the keys table. */
static void trim_if_empty(dv_map *m) {
    if (m->kcount == 0 && !m->graveyard && (dv_slab_held(&m->slab) || m->evacuating)) {
        dv_slab_free_all(&m->slab);
        dv_slab_free_all(&m->old);
        m->evacuating = false;
        m->old_live = m->ecur = m->blocks = 0;
    }
}

/* Report read changes of touched keys, release the graveyard, free emptied entries and
 * compact the others. */
static void join_finish(dv_map *m, dv_diff_fn fn, void *ud) {
    for (size_t i = 0; i < m->ntouched; i++) {
        if (i + PF_DIST < m->ntouched)
            PREFETCH(m->touched[i + PF_DIST].e);
        dv_entry *e = m->touched[i].e;
        const dv_elem *old = m->touched[i].old;
        e->touched = 0;
        if (fn) {
            const dv_elem *now = winner(e);
            if (now && !(old && old->vlen == now->vlen &&
                         memcmp(elem_cval(old), elem_cval(now), now->vlen) == 0)) {
                dv_read r;
                to_read(now, &r);
                fn(ud, entry_key(e), e->klen, &r);
            } else if (!now && old) {
                fn(ud, entry_key(e), e->klen, NULL);
            }
        }
    }
    for (dv_elem *x = m->graveyard, *n; x; x = n) {
        n = x->next;
        elem_release(m, x);
    }
    m->graveyard = NULL;
    for (size_t i = 0; i < m->ntouched; i++) {
        dv_entry *e = m->touched[i].e;
        if (!e->elems)
            keys_delete(m, e, entry_hash(e));
        else
            entry_compact(m, e);
    }
    m->ntouched = 0;
    trim_if_empty(m);
    maintain(m);
    if (m->captouched > 1024) { /* a big join's scratch is not kept */
        dv_free(m->touched);
        m->touched = NULL;
        m->captouched = 0;
    }
}

static int cmp_dot(const void *a, const void *b) {
    const dv_dot *x = a, *y = b;
    if (x->rid != y->rid)
        return x->rid < y->rid ? -1 : 1;
    if (x->ctr != y->ctr)
        return x->ctr < y->ctr ? -1 : 1;
    return 0;
}

static bool dots_sorted_has(const dv_dot *v, size_t n, dv_dot d) {
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

/* The dots of a delta's elements, sorted on first use. */
typedef struct {
    const dv_delta *d;
    dv_dot *v;
    dv_dot small[8];
} carried_t;

static int carried_has(carried_t *c, dv_dot dot, bool *has) {
    const dv_delta *d = c->d;
    if (!c->v && d->nelems) {
        dv_dot *v = d->nelems <= 8 ? c->small : dv_alloc(sizeof(dv_dot) * d->nelems);
        if (!v)
            return DV_ENOMEM;
        bool sorted = true;
        for (size_t i = 0; i < d->nelems; i++) {
            v[i] = d->elems[i].dot;
            if (i && sorted && cmp_dot(&v[i - 1], &v[i]) > 0)
                sorted = false;
        }
        if (!sorted)
            qsort(v, d->nelems, sizeof(dv_dot), cmp_dot);
        c->v = v;
    }
    *has = d->nelems && dots_sorted_has(c->v, d->nelems, dot);
    return DV_OK;
}

/* Add carried element v (not seen yet, h its key hash) to m. The element is allocated, then
 * its dot added to the context, then it is attached: a failure leaves no element outside the
 * context and no dot without its element. Tables have room (reserved by the caller). */
static int join_add(dv_map *m, const dv_elem_view *v, uint64_t h, bool report) {
    if (report && touched_reserve(m, 1))
        return DV_ENOMEM;
    bool found;
    size_t i = keys_find_slot(m, v->key, v->klen, h, &found);
    dv_entry *e;
    dv_elem *x;
    int rc;
    if (!found) {
        if (!(e = entry_new(m, v->key, v->klen, v->vlen)))
            return DV_ENOMEM;
        if ((rc = dv_ctx_add(&m->ctx, v->dot)) != DV_OK) {
            entry_free(m, e);
            return rc;
        }
        keys_put(m, i, e, h);
        if (report)
            touch(m, e, true); /* cannot fail: reserved */
        x = elem_inline(e, v->dot, v->ts, v->val, v->vlen);
    } else {
        e = m->keys[i].e;
        if (report)
            touch(m, e, true);
        if (e->slot == SLOT_FREE && slot_fits(entry_inl(e)->cap, v->vlen)) {
            if ((rc = dv_ctx_add(&m->ctx, v->dot)) != DV_OK)
                return rc;
            x = elem_inline(e, v->dot, v->ts, v->val, v->vlen);
        } else {
            if (!(x = elem_new(m, v->dot, v->ts, v->val, v->vlen)))
                return DV_ENOMEM;
            if ((rc = dv_ctx_add(&m->ctx, v->dot)) != DV_OK) {
                elem_free(m, x);
                return rc;
            }
        }
    }
    elem_attach(m, e, x, h);
    return DV_OK;
}

static int join_core(dv_map *m, const dv_delta *d, dv_diff_fn fn, void *ud) {
    int rc = DV_OK;
    bool report = fn != NULL;
    carried_t carried = {.d = d};
    dv_ctx rctx;
    dv_ctx_init(&rctx);

    /* 1. removals: live elements whose dot the delta covers but does not carry */
    if (d->nranges && m->dcount) {
        uint64_t span = 0;
        for (size_t i = 0; i < d->nranges && span <= 4 * m->dcount + 64; i++)
            span += d->ranges[i].hi - d->ranges[i].lo + 1;
        if (span <= 4 * m->dcount + 64) { /* probe each covered dot that m has seen */
            for (size_t i = 0; i < d->nranges && rc == DV_OK; i++) {
                const dv_range *R = &d->ranges[i];
                for (uint64_t c = R->lo; c <= R->hi; c++) {
                    dv_dot dot = {R->rid, c};
                    if (!dv_ctx_contains(&m->ctx, dot)) {
                        /* skip to the next counter m has seen */
                        uint64_t nxt = dv_ctx_next_seen(&m->ctx, R->rid, c);
                        if (nxt == 0 || nxt > R->hi)
                            break;
                        c = nxt - 1;
                        continue;
                    }
                    dv_elem *x = dots_get(m, dot);
                    bool has;
                    if (x && ((rc = carried_has(&carried, dot, &has)) != DV_OK ||
                              (!has && (rc = join_remove(m, x, report)) != DV_OK)))
                        break;
                }
            }
        } else { /* scan every live element against the ranges, then remove */
            dv_elem **hit = NULL;
            size_t nhit = 0;
            if ((rc = dv_ctx_from_ranges(&rctx, d->ranges, d->nranges)) != DV_OK)
                goto out;
            for (size_t i = 0; i < m->dcap; i++) {
                dv_elem *x = dslot_x(m->dots[i]);
                bool has;
                if (!x || !dv_ctx_contains(&rctx, x->dot))
                    continue;
                if ((rc = carried_has(&carried, x->dot, &has)) != DV_OK) {
                    dv_free(hit);
                    goto out;
                }
                if (has)
                    continue;
                if (!hit && !(hit = dv_alloc(sizeof(dv_elem *) * m->dcount))) {
                    rc = DV_ENOMEM;
                    goto out;
                }
                hit[nhit++] = x;
            }
            for (size_t i = 0; i < nhit && rc == DV_OK; i++)
                rc = join_remove(m, hit[i], report);
            dv_free(hit);
        }
        if (rc)
            goto out;
    }

    /* 2. additions: carried elements not seen before. Key hashes are computed PF_DIST
     * elements ahead and their key and dot slots prefetched. */
    if (d->nelems) {
        if ((rc = dots_reserve(m, d->nelems)) != DV_OK ||
            (rc = keys_reserve(m, d->nelems)) != DV_OK)
            goto out;
        if (report)
            (void)touched_reserve(m, d->nelems); /* one resize; join_add checks again */
    }
    uint64_t ring[PF_DIST];
    for (size_t i = 0; i < d->nelems && i < PF_DIST; i++) {
        const dv_elem_view *p = &d->elems[i];
        ring[i] = key_hash(p->key, p->klen);
        PREFETCH(&m->keys[khome(m, ring[i])]);
        PREFETCH(&m->dots[dot_hash(p->dot) & (m->dcap - 1)]);
    }
    for (size_t i = 0; i < d->nelems; i++) {
        const dv_elem_view *v = &d->elems[i];
        uint64_t h = ring[i % PF_DIST];
        if (i + PF_DIST < d->nelems) {
            const dv_elem_view *p = &d->elems[i + PF_DIST];
            uint64_t ph = key_hash(p->key, p->klen);
            ring[i % PF_DIST] = ph;
            PREFETCH(&m->keys[khome(m, ph)]);
            PREFETCH(&m->dots[dot_hash(p->dot) & (m->dcap - 1)]);
        }
        if (v->ts > m->hlc)
            m->hlc = v->ts;
        /* seen (also: an earlier duplicate of this dot in the delta) */
        if (dv_ctx_contains(&m->ctx, v->dot))
            continue;
        if ((rc = join_add(m, v, h, report)) != DV_OK)
            goto out;
    }

    /* 3. context */
    for (size_t i = 0; i < d->nranges && rc == DV_OK; i++)
        rc = dv_ctx_add_range(&m->ctx, d->ranges[i].rid, d->ranges[i].lo, d->ranges[i].hi);

out:
    join_finish(m, fn, ud);
    dv_ctx_free(&rctx);
    if (carried.v != carried.small)
        dv_free(carried.v);
    return rc;
}

int dv_map_reserve(dv_map *m, size_t n) {
    int rc = keys_reserve(m, n);
    return rc ? rc : dots_reserve(m, n);
}

int dv_map_join(dv_map *m, const dv_delta *d, dv_diff_fn fn, void *ud) {
    return join_core(m, d, fn, ud);
}

/* A view of a whole map as a delta (pointers into the map). */
static int map_as_delta(const dv_map *o, dv_delta *d, dv_ranges *rs) {
    memset(d, 0, sizeof(*d));
    dv_ranges_init(rs);
    int rc = dv_ctx_diff(&o->ctx, NULL, rs);
    if (rc) {
        dv_ranges_free(rs);
        return rc;
    }
    d->sender = o->rid;
    d->ranges = rs->r;
    d->nranges = rs->n;
    if (o->dcount) {
        d->elems = dv_alloc(sizeof(dv_elem_view) * o->dcount);
        if (!d->elems) {
            dv_ranges_free(rs);
            return DV_ENOMEM;
        }
    }
    size_t k = 0;
    for (size_t i = 0; i < o->dcap; i++) {
        const dv_elem *x = dslot_x(o->dots[i]);
        if (!x)
            continue;
        dv_elem_view *v = &d->elems[k++];
        v->key = entry_key(x->entry);
        v->klen = x->entry->klen;
        v->val = elem_cval(x);
        v->vlen = x->vlen;
        v->dot = x->dot;
        v->ts = x->ts;
    }
    d->nelems = k;
    return DV_OK;
}

int dv_map_join_map(dv_map *m, const dv_map *other, dv_diff_fn fn, void *ud) {
    dv_delta d;
    dv_ranges rs;
    int rc = map_as_delta(other, &d, &rs);
    if (rc)
        return rc;
    rc = join_core(m, &d, fn, ud);
    dv_free(d.elems);
    dv_ranges_free(&rs);
    return rc;
}

/* ---------------------------------------------------------------- local writes */

/* Which elements a remove observes: all of the key's, those whose value bytes equal v, or
 * those whose value bytes start with v. */
enum { OBSERVE_ALL = 0, OBSERVE_EQUAL = 1, OBSERVE_PREFIX = 2 };

static inline bool observed(const dv_elem *x, int only, const uint8_t *v, uint32_t vlen) {
    switch (only) {
    case OBSERVE_EQUAL:
        return x->vlen == vlen && memcmp(elem_cval(x), v, vlen) == 0;
    case OBSERVE_PREFIX:
        return x->vlen >= vlen && memcmp(elem_cval(x), v, vlen) == 0;
    default:
        return true;
    }
}

/* A local put or remove: applied to m directly (one key lookup), and its delta - the new
 * element if any, plus every dot observed under the key - joined into the outbox or
 * recorded in the write log. With `only` (OBSERVE_*) set, a remove observes (and so removes)
 * only the elements whose value bytes equal v, or start with v. A put observes every element
 * of the key, so the new element takes the inline slot (or the entry moves to a block of the
 * right size). */
static int local_op(dv_map *m, const uint8_t *k, uint32_t klen, const uint8_t *v, uint32_t vlen,
                    bool is_put, int only, uint64_t now_ms, dv_map *outbox, dv_outbox *log,
                    bool *changed) {
    uint64_t h = key_hash(k, klen);
    if (is_put && keys_reserve(m, 1)) {
        if (changed)
            *changed = false;
        return DV_ENOMEM;
    }
    bool found;
    size_t ks = keys_find_slot(m, k, klen, h, &found);
    dv_entry *e = found ? m->keys[ks].e : NULL;
    if (!is_put && !e) {
        if (changed)
            *changed = false;
        return DV_OK;
    }
    size_t nobs = 0;
    for (dv_elem *x = e ? e->elems : NULL; x; x = x->next)
        if (observed(x, only, v, vlen))
            nobs++;
    if (!is_put && nobs == 0) {
        if (changed)
            *changed = false;
        return DV_OK;
    }
    const dv_elem *old = e ? winner(e) : NULL;
    bool ch = is_put ? !(old && old->vlen == vlen && memcmp(elem_cval(old), v, vlen) == 0) : true;

    dv_entry *ne = NULL; /* the new block of the key, if the new element needs one */
    dv_dot dot = {0, 0};
    uint64_t ts = 0;
    if (is_put) {
        dot = (dv_dot){m->rid, dv_ctx_max(&m->ctx, m->rid) + 1};
        if (dot.ctr > DV_MAX_CTR || dots_reserve(m, 1))
            return DV_ENOMEM;
        if (!e || !slot_fits(entry_inl(e)->cap, vlen)) {
            if (!(ne = entry_new(m, k, klen, vlen)))
                return DV_ENOMEM;
        }
        if (dv_ctx_add(&m->ctx, dot)) {
            if (ne)
                entry_free(m, ne);
            return DV_ENOMEM;
        }
        ts = dv_hlc_next(m->hlc, now_ms);
        m->hlc = ts;
    }

    bool winner_went = false;
    dv_dot stack_o[4];
    dv_dot *obs = nobs <= 4 ? stack_o : dv_alloc(sizeof(dv_dot) * nobs);
    size_t no = 0;
    for (dv_elem *x = e ? e->elems : NULL, *n; x; x = n) { /* the observed elements go */
        n = x->next;
        if (!observed(x, only, v, vlen))
            continue;
        if (x == old)
            winner_went = true;
        if (obs)
            obs[no++] = x->dot;
        elem_detach(m, x, h);
        elem_release(m, x);
    }
    dv_elem *nx = NULL;
    if (is_put) { /* e has no element left */
        if (ne) {
            if (e) { /* the key moves to its new block */
                keys_set_at(m, ks, ne);
                entry_free(m, e);
            } else {
                keys_put(m, ks, ne, h);
            }
            e = ne;
        }
        nx = elem_inline(e, dot, ts, v, vlen);
        elem_attach(m, e, nx, h);
    }
    if (only) /* the read changed only if the winner went */
        ch = winner_went;
    /* m is right from here on; a failure below only loses the eager push of this write,
     * which anti-entropy repairs */
    int rc = obs ? DV_OK : DV_ENOMEM;
    if (rc == DV_OK && log) {
        rc = nx ? dv_outbox_put(log, k, klen, nx->dot, nx->ts, v, vlen, obs, no)
                : dv_outbox_remove(log, obs, no);
    }
    if (rc == DV_OK && outbox) {
        dv_range stack_r[4];
        dv_range *r = no <= 4 ? stack_r : dv_alloc(sizeof(dv_range) * no);
        if (!r) {
            rc = DV_ENOMEM;
        } else {
            for (size_t i = 0; i < no; i++)
                r[i] = (dv_range){obs[i].rid, obs[i].ctr, obs[i].ctr};
            dv_elem_view ev;
            dv_delta d = {.sender = m->rid, .ranges = r, .nranges = no};
            if (nx) {
                ev = (dv_elem_view){k, elem_cval(nx), klen, vlen, nx->dot, nx->ts};
                d.elems = &ev;
                d.nelems = 1;
            }
            rc = join_core(outbox, &d, NULL, NULL);
            if (r != stack_r)
                dv_free(r);
        }
    }
    if (obs != stack_o)
        dv_free(obs);
    if (!e->elems) {
        keys_delete(m, e, h);
        trim_if_empty(m);
    } else if (!is_put) {
        entry_compact(m, e);
    }
    maintain(m);
    if (changed)
        *changed = ch;
    return rc;
}

int dv_map_put(dv_map *m, const uint8_t *k, uint32_t klen, const uint8_t *v, uint32_t vlen,
               uint64_t now_ms, dv_map *outbox, bool *changed) {
    return local_op(m, k, klen, v, vlen, true, OBSERVE_ALL, now_ms, outbox, NULL, changed);
}

int dv_map_put_log(dv_map *m, const uint8_t *k, uint32_t klen, const uint8_t *v, uint32_t vlen,
                   uint64_t now_ms, dv_outbox *log, bool *changed) {
    return local_op(m, k, klen, v, vlen, true, OBSERVE_ALL, now_ms, NULL, log, changed);
}

int dv_map_remove_log(dv_map *m, const uint8_t *k, uint32_t klen, dv_outbox *log, bool *changed) {
    return local_op(m, k, klen, NULL, 0, false, OBSERVE_ALL, 0, NULL, log, changed);
}

int dv_map_remove_value_log(dv_map *m, const uint8_t *k, uint32_t klen, const uint8_t *v,
                            uint32_t vlen, dv_outbox *log, bool *changed) {
    return local_op(m, k, klen, v, vlen, false, OBSERVE_EQUAL, 0, NULL, log, changed);
}

int dv_map_remove_prefix_log(dv_map *m, const uint8_t *k, uint32_t klen, const uint8_t *prefix,
                             uint32_t plen, dv_outbox *log, bool *changed) {
    return local_op(m, k, klen, prefix, plen, false, OBSERVE_PREFIX, 0, NULL, log, changed);
}

uint64_t dv_map_key_hash(const uint8_t *k, uint32_t klen) {
    return key_hash(k, klen);
}

int dv_map_keys_with_hash(const dv_map *m, uint64_t h, dv_iter_fn fn, void *ud) {
    if (!m->kcount)
        return 0;
    size_t mask = m->kcap - 1;
    for (size_t i = khome(m, h); m->keys[i].e; i = (i + 1) & mask) {
        int rc = m->keys[i].hash == h ? visit(m->keys[i].e, fn, ud) : 0;
        if (rc)
            return rc;
    }
    return 0;
}

int dv_map_remove(dv_map *m, const uint8_t *k, uint32_t klen, dv_map *outbox, bool *changed) {
    return local_op(m, k, klen, NULL, 0, false, OBSERVE_ALL, 0, outbox, NULL, changed);
}

/* ---------------------------------------------------------------- delta since */

/* An element to send and its sort key: (index of its replica id in the context, counter),
 * packed so that integer order is dot order. */
typedef struct {
    uint64_t key;
    const dv_elem *x;
} sitem;

static int cmp_sitem_key(const void *a, const void *b) {
    uint64_t x = ((const sitem *)a)->key, y = ((const sitem *)b)->key;
    return x < y ? -1 : x > y;
}

static int cmp_sitem_dot(const void *a, const void *b) {
    return cmp_dot(&((const sitem *)a)->x->dot, &((const sitem *)b)->x->dot);
}

#define RADIX_BITS 11
#define RADIX      (1u << RADIX_BITS)
#define RADIX_PASS ((64 + RADIX_BITS - 1) / RADIX_BITS)

/* Sort by key: LSD radix sort, skipping the digits all keys share. */
static int sort_items(sitem *a, size_t n) {
    if (n < 256) {
        qsort(a, n, sizeof(sitem), cmp_sitem_key);
        return DV_OK;
    }
    sitem *tmp = dv_alloc(sizeof(sitem) * n);
    size_t *cnt = dv_calloc((size_t)RADIX_PASS * RADIX, sizeof(size_t));
    if (!tmp || !cnt) {
        dv_free(tmp);
        dv_free(cnt);
        return DV_ENOMEM;
    }
    for (size_t i = 0; i < n; i++) {
        uint64_t k = a[i].key;
        for (unsigned p = 0; p < RADIX_PASS; p++)
            cnt[p * RADIX + ((k >> (p * RADIX_BITS)) & (RADIX - 1))]++;
    }
    sitem *src = a, *dst = tmp;
    for (unsigned p = 0; p < RADIX_PASS; p++) {
        size_t *c = cnt + (size_t)p * RADIX;
        unsigned shift = p * RADIX_BITS;
        if (c[(src[0].key >> shift) & (RADIX - 1)] == n)
            continue; /* every key has this digit */
        size_t sum = 0;
        for (unsigned b = 0; b < RADIX; b++) {
            size_t t = c[b];
            c[b] = sum;
            sum += t;
        }
        for (size_t i = 0; i < n; i++) {
            sitem it = src[i];
            dst[c[(it.key >> shift) & (RADIX - 1)]++] = it;
        }
        sitem *t = src;
        src = dst;
        dst = t;
    }
    if (src != a)
        memcpy(a, src, sizeof(sitem) * n);
    dv_free(tmp);
    dv_free(cnt);
    return DV_OK;
}

static unsigned bit_len(uint64_t v) {
    unsigned n = 0;
    while (v) {
        n++;
        v >>= 1;
    }
    return n;
}

/* Index of rid in c (c->n if absent: such an element breaks the invariant, sorts last). */
static uint32_t rid_index(const dv_ctx *c, uint64_t rid) {
    return dv_ctx_index(c, rid);
}

/* The live elements of m that `seen` has not seen, sorted by dot, into *out (*nout). */
static int unseen_sorted(const dv_map *m, const dv_ctx *seen, sitem **out, size_t *nout) {
    *out = NULL;
    *nout = 0;
    if (!m->dcount)
        return DV_OK;
    sitem *un = dv_alloc(sizeof(sitem) * m->dcount);
    if (!un)
        return DV_ENOMEM;
    const dv_ctx *c = &m->ctx;
    unsigned rbits = c->n ? bit_len(c->n) : 1;
    unsigned cbits = 64 - rbits; /* rid index (0..c->n) above, counter below */
    bool packed = true;
    uint64_t last_rid = 0;
    uint32_t last_ix = UINT32_MAX;
    size_t n = 0;
    for (size_t i = 0; i < m->kcap; i++) {
        if (i + PF_DIST < m->kcap && m->keys[i + PF_DIST].e)
            PREFETCH(m->keys[i + PF_DIST].e);
        const dv_entry *e = m->keys[i].e;
        if (!e)
            continue;
        for (const dv_elem *x = e->elems; x; x = x->next) {
            if (seen && dv_ctx_contains(seen, x->dot))
                continue;
            if (last_ix == UINT32_MAX || x->dot.rid != last_rid) {
                last_rid = x->dot.rid;
                last_ix = rid_index(c, last_rid);
            }
            if (x->dot.ctr >> cbits)
                packed = false;
            un[n].key = ((uint64_t)last_ix << cbits) | x->dot.ctr;
            un[n].x = x;
            n++;
        }
    }
    int rc = DV_OK;
    if (packed)
        rc = sort_items(un, n);
    else /* counters too large to pack beside the rid index: compare the dots */
        qsort(un, n, sizeof(sitem), cmp_sitem_dot);
    if (rc) {
        dv_free(un);
        return rc;
    }
    *out = un;
    *nout = n;
    return DV_OK;
}

typedef struct {
    const dv_map *m;
    dv_emit_fn emit;
    void *ud;
    dv_ranges ranges;
    dv_buf elems;
    dv_buf out;
    size_t nelems;
} chunker;

static size_t chunk_size(const chunker *c) {
    return c->elems.n + c->ranges.n * 20 + 32;
}

static int chunk_emit(chunker *c) {
    if (!c->nelems && !c->ranges.n)
        return DV_OK;
    dv_buf_reset(&c->out);
    dv_encode_delta(&c->out, c->m->rid, c->ranges.r, c->ranges.n, c->elems.p, c->elems.n,
                    c->nelems);
    if (c->out.oom || c->elems.oom)
        return DV_ENOMEM;
    int rc = c->emit(c->ud, c->out.p, c->out.n);
    c->ranges.n = 0;
    dv_buf_reset(&c->elems);
    c->nelems = 0;
    return rc;
}

/* Encode element x (its dot in R) into the chunk; emit the chunk, cut after x, when full. */
static int chunk_elem(chunker *c, const dv_range *R, uint64_t *lo, const dv_elem *x,
                      size_t max_bytes) {
    const dv_entry *e = x->entry;
    dv_encode_elem(&c->elems, entry_key(e), e->klen, x->dot, x->ts, elem_cval(x), x->vlen);
    c->nelems++;
    if (chunk_size(c) < max_bytes)
        return DV_OK;
    int rc = dv_ranges_push(&c->ranges, R->rid, *lo, x->dot.ctr);
    if (rc == DV_OK)
        rc = chunk_emit(c);
    *lo = x->dot.ctr + 1;
    return rc;
}

/* The part lo..hi of range R after its last element. */
static int chunk_range_end(chunker *c, const dv_range *R, uint64_t lo, size_t max_bytes) {
    if (lo > R->hi)
        return DV_OK;
    int rc = dv_ranges_push(&c->ranges, R->rid, lo, R->hi);
    if (rc == DV_OK && chunk_size(c) >= max_bytes)
        rc = chunk_emit(c);
    return rc;
}

/* Prefetch the element of dot d (its slot must be cached or on its way): the first slot on
 * d's probe chain whose hash matches. */
static void dots_prefetch_elem(const dv_map *m, dv_dot d) {
    uint64_t h = dot_hash(d);
    size_t mask = m->dcap - 1, i = h & mask;
    for (dslot s = m->dots[i]; s; s = m->dots[i = (i + 1) & mask]) {
        if (dslot_fp_matches(s, h)) {
            PREFETCH(dslot_x(s));
            PREFETCH((const uint8_t *)dslot_x(s) + sizeof(dv_elem));
            return;
        }
    }
}

/* Dense diff: walk the counters of every range in order and look each one up in the dot
 * index (slots prefetched 2 * PF_DIST counters ahead, elements PF_DIST ahead). */
static int delta_by_probing(chunker *c, const dv_ranges *diff, size_t max_bytes, size_t *found) {
    const dv_map *m = c->m;
    size_t mask = m->dcap - 1;
    for (size_t i = 0; i < diff->n; i++) {
        const dv_range *R = &diff->r[i];
        uint64_t lo = R->lo;
        for (uint64_t ctr = R->lo; ctr <= R->hi; ctr++) {
            if (ctr + 2 * PF_DIST <= R->hi)
                PREFETCH(&m->dots[dot_hash((dv_dot){R->rid, ctr + 2 * PF_DIST}) & mask]);
            if (ctr + PF_DIST <= R->hi)
                dots_prefetch_elem(m, (dv_dot){R->rid, ctr + PF_DIST});
            const dv_elem *x = dots_get(m, (dv_dot){R->rid, ctr});
            if (!x)
                continue;
            ++*found;
            int rc = chunk_elem(c, R, &lo, x, max_bytes);
            if (rc)
                return rc;
        }
        int rc = chunk_range_end(c, R, lo, max_bytes);
        if (rc)
            return rc;
    }
    return DV_OK;
}

/* Sparse diff: collect the unseen live elements, sort them by dot, merge with the ranges. */
static int delta_by_sorting(chunker *c, const dv_ctx *seen, const dv_ranges *diff,
                            size_t max_bytes) {
    sitem *un;
    size_t nun, j = 0;
    int rc = unseen_sorted(c->m, seen, &un, &nun);
    if (rc)
        return rc;
    for (size_t i = 0; i < diff->n && rc == DV_OK; i++) {
        const dv_range *R = &diff->r[i];
        uint64_t lo = R->lo;
        while (rc == DV_OK && j < nun && un[j].x->dot.rid == R->rid && un[j].x->dot.ctr <= R->hi) {
            if (j + PF_DIST < nun) { /* the entry block around an inline element */
                PREFETCH((const void *)((uintptr_t)un[j + PF_DIST].x - sizeof(dv_entry)));
                PREFETCH((const uint8_t *)un[j + PF_DIST].x + sizeof(dv_elem));
            }
            rc = chunk_elem(c, R, &lo, un[j++].x, max_bytes);
        }
        if (rc == DV_OK)
            rc = chunk_range_end(c, R, lo, max_bytes);
    }
    if (rc == DV_OK && j != nun) /* an unseen live element outside m's own context */
        rc = DV_EINVAL;
    dv_free(un);
    return rc;
}

int dv_map_delta_since(const dv_map *m, const dv_ctx *seen, size_t max_bytes, dv_emit_fn emit,
                       void *ud) {
    int rc;
    dv_ranges diff;
    dv_ranges_init(&diff);
    chunker c = {.m = m, .emit = emit, .ud = ud};
    dv_ranges_init(&c.ranges);
    dv_buf_init(&c.elems);
    dv_buf_init(&c.out);

    if ((rc = dv_ctx_diff(&m->ctx, seen, &diff)) != DV_OK)
        goto out;
    if (!diff.n)
        goto out;
    /* Probing costs one lookup per counter of the diff, sorting a pass over every element:
     * probe when the diff has at most about two counters per live element. */
    uint64_t span = 0, limit = 2 * (uint64_t)m->dcount + 64;
    for (size_t i = 0; i < diff.n && span <= limit; i++)
        span += diff.r[i].hi - diff.r[i].lo + 1;
    if (m->dcount && span <= limit) {
        size_t found = 0;
        rc = delta_by_probing(&c, &diff, max_bytes, &found);
        if (rc == DV_OK && !seen && found != m->dcount) /* a live element outside the context */
            rc = DV_EINVAL;
    } else {
        rc = delta_by_sorting(&c, seen, &diff, max_bytes);
    }
    if (rc == DV_OK)
        rc = chunk_emit(&c);
out:
    dv_ranges_free(&diff);
    dv_ranges_free(&c.ranges);
    dv_buf_free(&c.elems);
    dv_buf_free(&c.out);
    return rc;
}

/* ---------------------------------------------------------------- digests, manifests */

void dv_map_digest(const dv_map *m, uint64_t out[DV_BUCKETS]) {
    memcpy(out, m->digest, sizeof(m->digest));
}

/* The slots that can hold keys of digest bucket b: from the home of its smallest hash to the
 * home of its largest, then on to the end of that cluster. Sets *first, returns the count. */
static size_t bucket_span(const dv_map *m, uint32_t b, size_t *first) {
    uint64_t lo = (uint64_t)b << BUCKET_SHIFT, hi = lo | (((uint64_t)1 << BUCKET_SHIFT) - 1);
    size_t mask = m->kcap - 1, f = khome(m, lo), l = khome(m, hi), n = l - f + 1;
    for (size_t j = (l + 1) & mask; m->keys[j].e && n < m->kcap; j = (j + 1) & mask)
        n++;
    *first = f;
    return n;
}

/* Next entry of bucket b at or after slot *i of a span of *left slots (NULL at the end). */
static dv_entry *bucket_next(const dv_map *m, uint32_t b, size_t *i, size_t *left) {
    while (*left) {
        const kslot *s = &m->keys[*i];
        *i = (*i + 1) & (m->kcap - 1);
        --*left;
        if (s->e && bucket_of(s->hash) == b)
            return s->e;
    }
    return NULL;
}

int dv_map_manifest(const dv_map *m, const uint64_t *peer, size_t max_dots, dv_buf *out,
                    size_t *nbuckets) {
    uint32_t *sel = dv_alloc(sizeof(uint32_t) * DV_BUCKETS);
    dv_dot *dots = NULL;
    int rc = DV_OK;
    if (!sel)
        return DV_ENOMEM;
    /* the differing buckets, whole, while their live dots fit in max_dots (at least one) */
    size_t nsel = 0, ndiff = 0, total = 0;
    for (uint32_t b = 0; b < DV_BUCKETS; b++) {
        if (peer && peer[b] == m->digest[b])
            continue;
        ndiff++;
        size_t count = 0, i, left = bucket_span(m, b, &i);
        for (const dv_entry *e; (e = bucket_next(m, b, &i, &left));)
            for (const dv_elem *x = e->elems; x; x = x->next)
                count++;
        if (nsel && total + count > max_dots)
            continue;
        sel[nsel++] = b;
        total += count;
    }
    if (nbuckets)
        *nbuckets = ndiff;
    if (total && !(dots = dv_alloc(sizeof(dv_dot) * total))) {
        rc = DV_ENOMEM;
        goto out;
    }
    size_t k = 0;
    for (size_t s = 0; s < nsel && total; s++) {
        size_t i, left = bucket_span(m, sel[s], &i);
        for (const dv_entry *e; (e = bucket_next(m, sel[s], &i, &left));)
            for (const dv_elem *x = e->elems; x; x = x->next)
                dots[k++] = x->dot;
    }
    dv_encode_manifest(out, sel, nsel, dots, k);
    if (out->oom)
        rc = DV_ENOMEM;
out:
    dv_free(sel);
    dv_free(dots);
    return rc;
}

int dv_map_removals_for(const dv_map *m, const dv_manifest *pm, dv_buf *out, size_t *count) {
    dv_ranges rs;
    dv_ranges_init(&rs);
    int rc = DV_OK;
    for (size_t i = 0; i < pm->ndots; i++) {
        dv_dot d = pm->dots[i];
        if (dv_ctx_contains(&m->ctx, d) && !dots_get(m, d) &&
            (rc = dv_ranges_push(&rs, d.rid, d.ctr, d.ctr)) != DV_OK)
            break;
    }
    if (rc == DV_OK && rs.n) {
        dv_encode_delta(out, m->rid, rs.r, rs.n, NULL, 0, 0);
        if (out->oom)
            rc = DV_ENOMEM;
    }
    if (count)
        *count = rc == DV_OK ? rs.n : 0;
    dv_ranges_free(&rs);
    return rc;
}

int dv_map_apply_peer_removals(dv_map *m, const dv_ctx *peer_ctx, const dv_manifest *pm,
                               dv_diff_fn fn, void *ud, size_t *count) {
    uint8_t take[DV_BUCKETS] = {0};
    for (size_t i = 0; i < pm->nbuckets; i++)
        if (pm->buckets[i] < DV_BUCKETS)
            take[pm->buckets[i]] = 1;
    dv_dot *sorted = NULL;
    if (pm->ndots) {
        sorted = dv_alloc(sizeof(dv_dot) * pm->ndots);
        if (!sorted)
            return DV_ENOMEM;
        memcpy(sorted, pm->dots, sizeof(dv_dot) * pm->ndots);
        qsort(sorted, pm->ndots, sizeof(dv_dot), cmp_dot);
    }
    dv_ranges rs;
    dv_ranges_init(&rs);
    int rc = DV_OK;
    for (uint32_t b = 0; b < DV_BUCKETS && rc == DV_OK; b++) {
        if (!take[b])
            continue;
        size_t i, left = bucket_span(m, b, &i);
        for (const dv_entry *e; rc == DV_OK && (e = bucket_next(m, b, &i, &left));)
            for (const dv_elem *x = e->elems; x && rc == DV_OK; x = x->next)
                if (dv_ctx_contains(peer_ctx, x->dot) &&
                    !dots_sorted_has(sorted, pm->ndots, x->dot))
                    rc = dv_ranges_push(&rs, x->dot.rid, x->dot.ctr, x->dot.ctr);
    }
    if (rc == DV_OK && rs.n) {
        dv_delta d = {.sender = 0, .ranges = rs.r, .nranges = rs.n};
        rc = join_core(m, &d, fn, ud);
    }
    if (count)
        *count = rc == DV_OK ? rs.n : 0;
    dv_ranges_free(&rs);
    dv_free(sorted);
    return rc;
}

/* ---------------------------------------------------------------- iteration, equality */

int dv_map_foreach(const dv_map *m, dv_iter_fn fn, void *ud) {
    for (size_t i = 0; i < m->kcap; i++) {
        int rc = m->keys[i].e ? visit(m->keys[i].e, fn, ud) : 0;
        if (rc)
            return rc;
    }
    return DV_OK;
}

bool dv_map_equal(const dv_map *a, const dv_map *b) {
    if (a->dcount != b->dcount || a->kcount != b->kcount)
        return false;
    if (!dv_ctx_equal(&a->ctx, &b->ctx))
        return false;
    if (memcmp(a->digest, b->digest, sizeof(a->digest)) != 0)
        return false;
    for (size_t i = 0; i < a->dcap; i++) {
        const dv_elem *x = dslot_x(a->dots[i]);
        if (!x)
            continue;
        const dv_elem *y = dots_get(b, x->dot);
        if (!y || y->ts != x->ts || y->vlen != x->vlen ||
            memcmp(elem_cval(y), elem_cval(x), x->vlen) != 0 || y->entry->klen != x->entry->klen ||
            memcmp(entry_key(y->entry), entry_key(x->entry), x->entry->klen) != 0)
            return false;
    }
    return true;
}
