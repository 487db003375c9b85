/* awmap.c - add-wins map with LWW read. See awmap.h for semantics, awmap_impl.h for the
 * memory layout; what anti-entropy reads from a map is in awmap_sync.c.
 *
 * This file: the key and dot tables, entries and elements, giving memory back, join and local
 * writes. Memory follows the contents (see "giving memory back" below): a table that falls
 * below an eighth full is rebuilt at about three eighths (it grows again above three
 * quarters, so a map hovering around a size does not resize back and forth), and a slab that
 * holds more than twice what is live (plus EVAC_SLACK) has its live blocks moved to fresh
 * chunks and its old chunks freed. Both happen in bounded steps, a few at the end of each
 * mutation, so no single call pays for a whole table or slab. */
#include "awmap.h"

#include <stdlib.h>
#include <string.h>

#include "alloc.h"
#include "awmap_impl.h"
#include "hash.h"
#include "outbox.h"
#include "slab.h"

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

int awmap_join_core(dv_map *m, const dv_delta *d, dv_diff_fn fn, void *ud) {
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
    return awmap_join_core(m, d, fn, ud);
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
    rc = awmap_join_core(m, &d, fn, ud);
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
            rc = awmap_join_core(outbox, &d, NULL, NULL);
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
