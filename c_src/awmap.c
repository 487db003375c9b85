/* awmap.c - add-wins map with LWW read. See awmap.h for semantics. */
#include "awmap.h"

#include <stdlib.h>
#include <string.h>

#include "alloc.h"
#include "hash.h"
#include "outbox.h"

#define KEY_SEED     0x44726f7665ULL /* "Drove" */
#define BUCKET_SHIFT 54              /* top 10 bits of the key hash select the digest bucket */

typedef struct dv_entry dv_entry;

typedef struct dv_elem {
    struct dv_elem *next;
    dv_entry *entry;
    dv_dot dot;
    uint64_t ts;
    uint32_t vlen;
    uint8_t val[];
} dv_elem;

struct dv_entry {
    uint64_t hash;
    dv_elem *elems;
    uint32_t klen;
    uint8_t touched; /* on the touched list of the join in progress */
    uint8_t key[];
};

typedef struct {
    uint64_t hash;
    dv_entry *e;
} kslot;

typedef struct {
    uint64_t hash;
    dv_elem *x;
} dslot;

/* What a join remembers of a key before changing it, to report read changes. */
typedef struct {
    dv_entry *e;
    dv_elem *old; /* winner before the change (kept alive on the graveyard), or NULL */
} touched_t;

struct dv_map {
    uint64_t rid;
    uint64_t hlc;
    dv_ctx ctx;
    kslot *keys; /* open addressing, linear probing, by key hash */
    size_t kcap, kcount;
    dslot *dots; /* open addressing, linear probing, by dot hash */
    size_t dcap, dcount;
    size_t payload; /* key + value bytes */
    size_t heap;    /* bytes in entries and elements */
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

static inline uint64_t dot_hash(dv_dot d) {
    return dv_mix64(d.rid ^ dv_mix64(d.ctr));
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
    r->val = w->val;
    r->vlen = w->vlen;
    r->ts = w->ts;
    r->dot = w->dot;
}

uint64_t dv_hlc_next(uint64_t last, uint64_t now_ms) {
    uint64_t phys = now_ms > (DV_MAX_TS >> 16) ? DV_MAX_TS : now_ms << 16;
    if (phys > last)
        return phys;
    return last < DV_MAX_TS ? last + 1 : DV_MAX_TS;
}

/* ---------------------------------------------------------------- tables */

static int keys_grow(dv_map *m) {
    size_t ncap = m->kcap ? m->kcap * 2 : 16;
    kslot *nk = dv_calloc(ncap, sizeof(kslot));
    if (!nk)
        return DV_ENOMEM;
    for (size_t i = 0; i < m->kcap; i++) {
        if (!m->keys[i].e)
            continue;
        size_t j = m->keys[i].hash & (ncap - 1);
        while (nk[j].e)
            j = (j + 1) & (ncap - 1);
        nk[j] = m->keys[i];
    }
    dv_free(m->keys);
    m->keys = nk;
    m->kcap = ncap;
    return DV_OK;
}

static size_t keys_find_slot(const dv_map *m, const uint8_t *k, uint32_t klen, uint64_t h,
                             bool *found) {
    size_t mask = m->kcap - 1, i = h & mask;
    for (;;) {
        const kslot *s = &m->keys[i];
        if (!s->e) {
            *found = false;
            return i;
        }
        if (s->hash == h && s->e->klen == klen && memcmp(s->e->key, k, klen) == 0) {
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

static int keys_reserve(dv_map *m, size_t extra) {
    while ((m->kcount + extra) * 4 > m->kcap * 3)
        if (keys_grow(m))
            return DV_ENOMEM;
    return DV_OK;
}

static dv_entry *keys_get_or_add(dv_map *m, const uint8_t *k, uint32_t klen, uint64_t h) {
    if ((m->kcount + 1) * 4 > m->kcap * 3 && keys_grow(m))
        return NULL;
    bool found;
    size_t i = keys_find_slot(m, k, klen, h, &found);
    if (found)
        return m->keys[i].e;
    dv_entry *e = dv_alloc(sizeof(dv_entry) + klen);
    if (!e)
        return NULL;
    e->hash = h;
    e->elems = NULL;
    e->klen = klen;
    e->touched = 0;
    if (klen)
        memcpy(e->key, k, klen);
    m->keys[i].hash = h;
    m->keys[i].e = e;
    m->kcount++;
    m->payload += klen;
    m->heap += sizeof(dv_entry) + klen;
    return e;
}

/* Backward-shift deletion keeps probe chains intact without tombstones. */
static void keys_delete(dv_map *m, dv_entry *e) {
    size_t mask = m->kcap - 1, i = e->hash & mask;
    while (m->keys[i].e != e)
        i = (i + 1) & mask;
    size_t j = i;
    for (;;) {
        j = (j + 1) & mask;
        if (!m->keys[j].e)
            break;
        size_t home = m->keys[j].hash & mask;
        /* move j back to i if home is not cyclically in (i, j] */
        if ((j > i && (home <= i || home > j)) || (j < i && (home <= i && home > j))) {
            m->keys[i] = m->keys[j];
            i = j;
        }
    }
    m->keys[i].e = NULL;
    m->keys[i].hash = 0;
    m->kcount--;
    m->payload -= e->klen;
    m->heap -= sizeof(dv_entry) + e->klen;
    dv_free(e);
}

static int dots_grow(dv_map *m) {
    size_t ncap = m->dcap ? m->dcap * 2 : 16;
    dslot *nd = dv_calloc(ncap, sizeof(dslot));
    if (!nd)
        return DV_ENOMEM;
    for (size_t i = 0; i < m->dcap; i++) {
        if (!m->dots[i].x)
            continue;
        size_t j = m->dots[i].hash & (ncap - 1);
        while (nd[j].x)
            j = (j + 1) & (ncap - 1);
        nd[j] = m->dots[i];
    }
    dv_free(m->dots);
    m->dots = nd;
    m->dcap = ncap;
    return DV_OK;
}

static dv_elem *dots_get(const dv_map *m, dv_dot d) {
    if (!m->dcount)
        return NULL;
    uint64_t h = dot_hash(d);
    size_t mask = m->dcap - 1, i = h & mask;
    for (;;) {
        const dslot *s = &m->dots[i];
        if (!s->x)
            return NULL;
        if (s->hash == h && dot_eq(s->x->dot, d))
            return s->x;
        i = (i + 1) & mask;
    }
}

/* Caller guarantees capacity (dots_reserve) and absence. */
static void dots_insert(dv_map *m, dv_elem *x) {
    uint64_t h = dot_hash(x->dot);
    size_t mask = m->dcap - 1, i = h & mask;
    while (m->dots[i].x)
        i = (i + 1) & mask;
    m->dots[i].hash = h;
    m->dots[i].x = x;
    m->dcount++;
}

static int dots_reserve(dv_map *m, size_t extra) {
    while ((m->dcount + extra) * 4 > m->dcap * 3)
        if (dots_grow(m))
            return DV_ENOMEM;
    return DV_OK;
}

static void dots_delete(dv_map *m, dv_elem *x) {
    size_t mask = m->dcap - 1, i = dot_hash(x->dot) & mask;
    while (m->dots[i].x != x)
        i = (i + 1) & mask;
    size_t j = i;
    for (;;) {
        j = (j + 1) & mask;
        if (!m->dots[j].x)
            break;
        size_t home = m->dots[j].hash & mask;
        if ((j > i && (home <= i || home > j)) || (j < i && (home <= i && home > j))) {
            m->dots[i] = m->dots[j];
            i = j;
        }
    }
    m->dots[i].x = NULL;
    m->dots[i].hash = 0;
    m->dcount--;
}

/* ---------------------------------------------------------------- elements */

static dv_elem *elem_new(dv_map *m, dv_dot dot, uint64_t ts, const uint8_t *v, uint32_t vlen) {
    dv_elem *x = dv_alloc(sizeof(dv_elem) + vlen);
    if (!x)
        return NULL;
    x->next = NULL;
    x->entry = NULL;
    x->dot = dot;
    x->ts = ts;
    x->vlen = vlen;
    if (vlen)
        memcpy(x->val, v, vlen);
    m->heap += sizeof(dv_elem) + vlen;
    return x;
}

static void elem_attach(dv_map *m, dv_entry *e, dv_elem *x) {
    x->entry = e;
    x->next = e->elems;
    e->elems = x;
    m->payload += x->vlen;
    m->digest[bucket_of(e->hash)] ^= fingerprint(e->hash, x->dot);
    dots_insert(m, x);
}

/* Unlink x from its entry and the dot index; the caller frees it (or graveyards it). */
static void elem_detach(dv_map *m, dv_elem *x) {
    dv_entry *e = x->entry;
    dv_elem **pp = &e->elems;
    while (*pp != x)
        pp = &(*pp)->next;
    *pp = x->next;
    x->next = NULL;
    m->payload -= x->vlen;
    m->digest[bucket_of(e->hash)] ^= fingerprint(e->hash, x->dot);
    dots_delete(m, x);
}

static void elem_free(dv_map *m, dv_elem *x) {
    m->heap -= sizeof(dv_elem) + x->vlen;
    dv_free(x);
}

/* ---------------------------------------------------------------- lifecycle */

dv_map *dv_map_new(uint64_t rid) {
    dv_map *m = dv_calloc(1, sizeof(dv_map));
    if (!m)
        return NULL;
    m->rid = rid;
    dv_ctx_init(&m->ctx);
    if (keys_grow(m) || dots_grow(m)) {
        dv_map_free(m);
        return NULL;
    }
    return m;
}

static void free_all_entries(dv_map *m) {
    for (size_t i = 0; i < m->kcap; i++) {
        dv_entry *e = m->keys[i].e;
        if (!e)
            continue;
        for (dv_elem *x = e->elems, *n; x; x = n) {
            n = x->next;
            dv_free(x);
        }
        dv_free(e);
        m->keys[i].e = NULL;
        m->keys[i].hash = 0;
    }
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
    dv_free(m->keys);
    dv_free(m->dots);
    dv_free(m->touched);
    dv_ctx_free(&m->ctx);
    dv_free(m);
}

void dv_map_clear(dv_map *m) {
    free_all_entries(m);
    dv_ctx_clear(&m->ctx);
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
    return sizeof(*m) + m->heap + m->kcap * sizeof(kslot) + m->dcap * sizeof(dslot) +
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

static int touch(dv_map *m, dv_entry *e) {
    if (e->touched)
        return DV_OK;
    if (m->ntouched == m->captouched) {
        size_t ncap = m->captouched ? m->captouched * 2 : 16;
        touched_t *nt = dv_realloc(m->touched, sizeof(touched_t) * ncap);
        if (!nt)
            return DV_ENOMEM;
        m->touched = nt;
        m->captouched = ncap;
    }
    m->touched[m->ntouched].e = e;
    m->touched[m->ntouched].old = (dv_elem *)winner(e);
    m->ntouched++;
    e->touched = 1;
    return DV_OK;
}

/* Remove element x as part of a join: kept on the graveyard until changes are reported. */
static int join_remove(dv_map *m, dv_elem *x) {
    int rc = touch(m, x->entry);
    if (rc)
        return rc;
    elem_detach(m, x);
    x->next = m->graveyard;
    m->graveyard = x;
    return DV_OK;
}

/* Report read changes of touched keys, free the graveyard and emptied entries. */
static void join_finish(dv_map *m, dv_diff_fn fn, void *ud) {
    for (size_t i = 0; i < m->ntouched; i++) {
        dv_entry *e = m->touched[i].e;
        const dv_elem *old = m->touched[i].old;
        const dv_elem *now = winner(e);
        e->touched = 0;
        if (fn) {
            if (now &&
                !(old && old->vlen == now->vlen && memcmp(old->val, now->val, now->vlen) == 0)) {
                dv_read r;
                to_read(now, &r);
                fn(ud, e->key, e->klen, &r);
            } else if (!now && old) {
                fn(ud, e->key, e->klen, NULL);
            }
        }
    }
    for (dv_elem *x = m->graveyard, *n; x; x = n) {
        n = x->next;
        elem_free(m, x);
    }
    m->graveyard = NULL;
    for (size_t i = 0; i < m->ntouched; i++) {
        dv_entry *e = m->touched[i].e;
        if (!e->elems)
            keys_delete(m, e);
    }
    m->ntouched = 0;
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

/* Core join. `carried` are the dots of d's elements, sorted. */
static int join_core(dv_map *m, const dv_delta *d, dv_diff_fn fn, void *ud) {
    int rc = DV_OK;
    dv_dot small[8];
    dv_dot *carried = small;
    dv_ctx rctx;
    dv_ctx_init(&rctx);

    if (d->nelems) {
        if (d->nelems > 8 && !(carried = dv_alloc(sizeof(dv_dot) * d->nelems)))
            return DV_ENOMEM;
        for (size_t i = 0; i < d->nelems; i++)
            carried[i] = d->elems[i].dot;
        if (d->nelems > 1)
            qsort(carried, d->nelems, sizeof(dv_dot), cmp_dot);
    }

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
                    if (x && !dots_sorted_has(carried, d->nelems, dot) &&
                        (rc = join_remove(m, x)) != DV_OK)
                        break;
                }
            }
        } else { /* scan every live element against the ranges, then remove */
            dv_elem **hit = NULL;
            size_t nhit = 0;
            if ((rc = dv_ctx_from_ranges(&rctx, d->ranges, d->nranges)) != DV_OK)
                goto out;
            for (size_t i = 0; i < m->dcap; i++) {
                dv_elem *x = m->dots[i].x;
                if (!x || !dv_ctx_contains(&rctx, x->dot) ||
                    dots_sorted_has(carried, d->nelems, x->dot))
                    continue;
                if (!hit && !(hit = dv_alloc(sizeof(dv_elem *) * m->dcount))) {
                    rc = DV_ENOMEM;
                    goto out;
                }
                hit[nhit++] = x;
            }
            for (size_t i = 0; i < nhit && rc == DV_OK; i++)
                rc = join_remove(m, hit[i]);
            dv_free(hit);
        }
        if (rc)
            goto out;
    }

    /* 2. additions: carried elements not seen before */
    if (d->nelems &&
        ((rc = dots_reserve(m, d->nelems)) != DV_OK || (rc = keys_reserve(m, d->nelems)) != DV_OK))
        goto out;
    for (size_t i = 0; i < d->nelems; i++) {
        const dv_elem_view *v = &d->elems[i];
        if (v->ts > m->hlc)
            m->hlc = v->ts;
        if (dv_ctx_contains(&m->ctx, v->dot))
            continue;
        dv_entry *e = keys_get_or_add(m, v->key, v->klen, key_hash(v->key, v->klen));
        if (!e) {
            rc = DV_ENOMEM;
            goto out;
        }
        if ((rc = touch(m, e)) != DV_OK)
            goto out;
        dv_elem *x = elem_new(m, v->dot, v->ts, v->val, v->vlen);
        if (!x) {
            rc = DV_ENOMEM;
            goto out;
        }
        /* seen from now on (a duplicate of this dot later in the delta is skipped); added to
         * the context before the element goes live, so a failure leaves no live element
         * outside the context */
        if ((rc = dv_ctx_add(&m->ctx, v->dot)) != DV_OK) {
            elem_free(m, x);
            goto out;
        }
        elem_attach(m, e, x);
    }

    /* 3. context */
    for (size_t i = 0; i < d->nranges && rc == DV_OK; i++)
        rc = dv_ctx_add_range(&m->ctx, d->ranges[i].rid, d->ranges[i].lo, d->ranges[i].hi);

out:
    join_finish(m, fn, ud);
    dv_ctx_free(&rctx);
    if (carried != small)
        dv_free(carried);
    return rc;
}

int dv_map_join(dv_map *m, const dv_delta *d, dv_diff_fn fn, void *ud) {
    return join_core(m, d, fn, ud);
}

/* A view of a whole map as a delta (pointers into the map). */
static int map_as_delta(const dv_map *o, dv_delta *d, dv_ranges *rs) {
    memset(d, 0, sizeof(*d));
    dv_ranges_init(rs);
    int rc = dv_ctx_diff(&o->ctx, NULL, rs);
    if (rc)
        return rc;
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
        const dv_elem *x = o->dots[i].x;
        if (!x)
            continue;
        dv_elem_view *v = &d->elems[k++];
        v->key = x->entry->key;
        v->klen = x->entry->klen;
        v->val = x->val;
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

/* A local put or remove: applied to m directly (one key lookup), and its delta - the new
 * element if any, plus every dot observed under the key - joined into the outbox. */
/* A local put or remove; with `only` set, a remove observes (and so removes) only the
 * elements whose value bytes equal v. */
static int local_op(dv_map *m, const uint8_t *k, uint32_t klen, const uint8_t *v, uint32_t vlen,
                    bool is_put, bool only, uint64_t now_ms, dv_map *outbox, dv_outbox *log,
                    bool *changed) {
    uint64_t h = key_hash(k, klen);
    dv_entry *e = is_put ? keys_get_or_add(m, k, klen, h) : keys_get(m, k, klen, h);
    if (!e) {
        if (changed)
            *changed = false;
        return is_put ? DV_ENOMEM : DV_OK;
    }
    size_t nobs = 0;
    for (dv_elem *x = e->elems; x; x = x->next)
        if (!only || (x->vlen == vlen && memcmp(x->val, v, vlen) == 0))
            nobs++;
    if (!is_put && nobs == 0) {
        if (changed)
            *changed = false;
        return DV_OK;
    }
    const dv_elem *old = winner(e);
    bool ch = is_put ? !(old && old->vlen == vlen && memcmp(old->val, v, vlen) == 0) : true;

    dv_elem *nx = NULL;
    if (is_put) {
        uint64_t next = dv_ctx_max(&m->ctx, m->rid) + 1;
        if (next > DV_MAX_CTR || dots_reserve(m, 1))
            goto fail;
        nx = elem_new(m, (dv_dot){m->rid, next}, dv_hlc_next(m->hlc, now_ms), v, vlen);
        if (!nx || dv_ctx_add(&m->ctx, nx->dot))
            goto fail;
        m->hlc = nx->ts;
    }

    bool winner_went = false;
    dv_dot stack_o[4];
    dv_dot *obs = nobs <= 4 ? stack_o : dv_alloc(sizeof(dv_dot) * nobs);
    size_t no = 0;
    for (dv_elem *x = e->elems, *n; x; x = n) { /* the observed elements go */
        n = x->next;
        if (only && !(x->vlen == vlen && memcmp(x->val, v, vlen) == 0))
            continue;
        if (x == old)
            winner_went = true;
        if (obs)
            obs[no++] = x->dot;
        elem_detach(m, x);
        elem_free(m, x);
    }
    if (nx)
        elem_attach(m, e, nx);
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
                ev = (dv_elem_view){k, nx->val, klen, vlen, nx->dot, nx->ts};
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
    if (!e->elems)
        keys_delete(m, e);
    if (changed)
        *changed = ch;
    return rc;
fail:
    if (nx)
        elem_free(m, nx);
    if (!e->elems)
        keys_delete(m, e);
    return DV_ENOMEM;
}

int dv_map_put(dv_map *m, const uint8_t *k, uint32_t klen, const uint8_t *v, uint32_t vlen,
               uint64_t now_ms, dv_map *outbox, bool *changed) {
    return local_op(m, k, klen, v, vlen, true, false, now_ms, outbox, NULL, changed);
}

int dv_map_put_log(dv_map *m, const uint8_t *k, uint32_t klen, const uint8_t *v, uint32_t vlen,
                   uint64_t now_ms, dv_outbox *log, bool *changed) {
    return local_op(m, k, klen, v, vlen, true, false, now_ms, NULL, log, changed);
}

int dv_map_remove_log(dv_map *m, const uint8_t *k, uint32_t klen, dv_outbox *log, bool *changed) {
    return local_op(m, k, klen, NULL, 0, false, false, 0, NULL, log, changed);
}

int dv_map_remove_value_log(dv_map *m, const uint8_t *k, uint32_t klen, const uint8_t *v,
                            uint32_t vlen, dv_outbox *log, bool *changed) {
    return local_op(m, k, klen, v, vlen, false, true, 0, NULL, log, changed);
}

int dv_map_remove(dv_map *m, const uint8_t *k, uint32_t klen, dv_map *outbox, bool *changed) {
    return local_op(m, k, klen, NULL, 0, false, false, 0, outbox, NULL, changed);
}

/* ---------------------------------------------------------------- delta since */

static int cmp_elem_dot(const void *a, const void *b) {
    const dv_elem *x = *(const dv_elem *const *)a, *y = *(const dv_elem *const *)b;
    return cmp_dot(&x->dot, &y->dot);
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

int dv_map_delta_since(const dv_map *m, const dv_ctx *seen, size_t max_bytes, dv_emit_fn emit,
                       void *ud) {
    int rc;
    dv_ranges diff;
    dv_ranges_init(&diff);
    dv_elem **un = NULL;
    size_t nun = 0;
    chunker c = {.m = m, .emit = emit, .ud = ud};
    dv_ranges_init(&c.ranges);
    dv_buf_init(&c.elems);
    dv_buf_init(&c.out);

    if ((rc = dv_ctx_diff(&m->ctx, seen, &diff)) != DV_OK)
        goto out;
    if (!diff.n)
        goto out;
    if (m->dcount) {
        un = dv_alloc(sizeof(dv_elem *) * m->dcount);
        if (!un) {
            rc = DV_ENOMEM;
            goto out;
        }
        for (size_t i = 0; i < m->dcap; i++) {
            dv_elem *x = m->dots[i].x;
            if (x && !(seen && dv_ctx_contains(seen, x->dot)))
                un[nun++] = x;
        }
        qsort(un, nun, sizeof(dv_elem *), cmp_elem_dot);
    }
    size_t j = 0;
    for (size_t i = 0; i < diff.n; i++) {
        const dv_range *R = &diff.r[i];
        uint64_t lo = R->lo;
        while (j < nun && un[j]->dot.rid == R->rid && un[j]->dot.ctr <= R->hi) {
            const dv_elem *x = un[j++];
            dv_encode_elem(&c.elems, x->entry->key, x->entry->klen, x->dot, x->ts, x->val, x->vlen);
            c.nelems++;
            if (chunk_size(&c) >= max_bytes) {
                if ((rc = dv_ranges_push(&c.ranges, R->rid, lo, x->dot.ctr)) != DV_OK ||
                    (rc = chunk_emit(&c)) != DV_OK)
                    goto out;
                lo = x->dot.ctr + 1;
            }
        }
        if (lo <= R->hi) {
            if ((rc = dv_ranges_push(&c.ranges, R->rid, lo, R->hi)) != DV_OK)
                goto out;
            if (chunk_size(&c) >= max_bytes && (rc = chunk_emit(&c)) != DV_OK)
                goto out;
        }
    }
    if (j != nun) { /* an unseen live element outside m's own context: broken invariant */
        rc = DV_EINVAL;
        goto out;
    }
    rc = chunk_emit(&c);
out:
    dv_ranges_free(&diff);
    dv_ranges_free(&c.ranges);
    dv_buf_free(&c.elems);
    dv_buf_free(&c.out);
    dv_free(un);
    return rc;
}

/* ---------------------------------------------------------------- digests, manifests */

void dv_map_digest(const dv_map *m, uint64_t out[DV_BUCKETS]) {
    memcpy(out, m->digest, sizeof(m->digest));
}

int dv_map_manifest(const dv_map *m, const uint64_t *peer, size_t max_dots, dv_buf *out,
                    size_t *nbuckets) {
    uint32_t *counts = dv_calloc(DV_BUCKETS, sizeof(uint32_t));
    uint32_t *sel = dv_alloc(sizeof(uint32_t) * DV_BUCKETS);
    uint8_t *take = dv_calloc(DV_BUCKETS, 1);
    dv_dot *dots = NULL;
    int rc = DV_OK;
    if (!counts || !sel || !take) {
        rc = DV_ENOMEM;
        goto out;
    }
    size_t nsel = 0, ndiff = 0, total = 0;
    for (uint32_t b = 0; b < DV_BUCKETS; b++)
        ndiff += !(peer && peer[b] == m->digest[b]);
    if (ndiff) /* count live dots per bucket only when some bucket differs */
        for (size_t i = 0; i < m->dcap; i++)
            if (m->dots[i].x)
                counts[bucket_of(m->dots[i].x->entry->hash)]++;
    ndiff = 0;
    for (uint32_t b = 0; b < DV_BUCKETS; b++) {
        if (peer && peer[b] == m->digest[b])
            continue;
        ndiff++;
        if (nsel && total + counts[b] > max_dots)
            continue;
        sel[nsel++] = b;
        take[b] = 1;
        total += counts[b];
    }
    if (nbuckets)
        *nbuckets = ndiff;
    if (total && !(dots = dv_alloc(sizeof(dv_dot) * total))) {
        rc = DV_ENOMEM;
        goto out;
    }
    size_t k = 0;
    for (size_t i = 0; total && i < m->dcap; i++) {
        const dv_elem *x = m->dots[i].x;
        if (x && take[bucket_of(x->entry->hash)])
            dots[k++] = x->dot;
    }
    dv_encode_manifest(out, sel, nsel, dots, k);
    if (out->oom)
        rc = DV_ENOMEM;
out:
    dv_free(counts);
    dv_free(sel);
    dv_free(take);
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
    for (size_t i = 0; i < m->dcap && rc == DV_OK; i++) {
        const dv_elem *x = m->dots[i].x;
        if (x && take[bucket_of(x->entry->hash)] && dv_ctx_contains(peer_ctx, x->dot) &&
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
        const dv_entry *e = m->keys[i].e;
        if (!e || !e->elems)
            continue;
        dv_read r;
        to_read(winner(e), &r);
        int rc = fn(ud, e->key, e->klen, &r);
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
        const dv_elem *x = a->dots[i].x;
        if (!x)
            continue;
        const dv_elem *y = dots_get(b, x->dot);
        if (!y || y->ts != x->ts || y->vlen != x->vlen || memcmp(y->val, x->val, x->vlen) != 0 ||
            y->entry->klen != x->entry->klen ||
            memcmp(y->entry->key, x->entry->key, x->entry->klen) != 0)
            return false;
    }
    return true;
}
