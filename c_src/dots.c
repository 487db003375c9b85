/* dots.c - causal context (version vector + dot cloud). See dots.h. */
#include "dots.h"

#include <string.h>

#include "alloc.h"

void dv_ctx_init(dv_ctx *c) {
    c->v = NULL;
    c->n = 0;
    c->cap = 0;
}

void dv_ctx_clear(dv_ctx *c) {
    for (uint32_t i = 0; i < c->n; i++)
        dv_free(c->v[i].cloud);
    c->n = 0;
}

void dv_ctx_free(dv_ctx *c) {
    dv_ctx_clear(c);
    dv_free(c->v);
    dv_ctx_init(c);
}

int dv_ctx_copy(dv_ctx *dst, const dv_ctx *src) {
    dv_ctx tmp;
    dv_ctx_init(&tmp);
    if (src->n) {
        tmp.v = dv_alloc(sizeof(dv_vv) * src->n);
        if (!tmp.v)
            return DV_ENOMEM;
        tmp.cap = src->n;
        for (uint32_t i = 0; i < src->n; i++) {
            dv_vv *d = &tmp.v[i];
            *d = src->v[i];
            d->cloud = NULL;
            d->capcloud = 0;
            if (src->v[i].ncloud) {
                d->cloud = dv_alloc(sizeof(dv_ival) * src->v[i].ncloud);
                if (!d->cloud) {
                    d->ncloud = 0;
                    tmp.n = i + 1;
                    dv_ctx_free(&tmp);
                    return DV_ENOMEM;
                }
                memcpy(d->cloud, src->v[i].cloud, sizeof(dv_ival) * src->v[i].ncloud);
                d->capcloud = src->v[i].ncloud;
            }
            tmp.n = i + 1;
        }
    }
    dv_ctx_free(dst);
    *dst = tmp;
    return DV_OK;
}

/* Index of the entry for rid, or the insertion point with *found = false. */
static uint32_t find_vv(const dv_ctx *c, uint64_t rid, bool *found) {
    uint32_t lo = 0, hi = c->n;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (c->v[mid].rid < rid)
            lo = mid + 1;
        else
            hi = mid;
    }
    *found = lo < c->n && c->v[lo].rid == rid;
    return lo;
}

uint32_t dv_ctx_index(const dv_ctx *c, uint64_t rid) {
    bool found;
    uint32_t i = find_vv(c, rid, &found);
    return found ? i : c->n;
}

static const dv_vv *get_vv(const dv_ctx *c, uint64_t rid) {
    bool found;
    uint32_t i = find_vv(c, rid, &found);
    return found ? &c->v[i] : NULL;
}

static dv_vv *get_or_add_vv(dv_ctx *c, uint64_t rid) {
    bool found;
    uint32_t i = find_vv(c, rid, &found);
    if (found)
        return &c->v[i];
    if (c->n == c->cap) {
        uint32_t ncap = c->cap ? c->cap * 2 : 4;
        dv_vv *nv = dv_realloc(c->v, sizeof(dv_vv) * ncap);
        if (!nv)
            return NULL;
        c->v = nv;
        c->cap = ncap;
    }
    memmove(&c->v[i + 1], &c->v[i], sizeof(dv_vv) * (c->n - i));
    c->n++;
    dv_vv *e = &c->v[i];
    e->rid = rid;
    e->base = 0;
    e->cloud = NULL;
    e->ncloud = 0;
    e->capcloud = 0;
    return e;
}

static bool vv_contains(const dv_vv *e, uint64_t ctr) {
    if (ctr == 0)
        return false;
    if (ctr <= e->base)
        return true;
    uint32_t lo = 0, hi = e->ncloud;
    while (lo < hi) { /* first interval with hi >= ctr */
        uint32_t mid = lo + (hi - lo) / 2;
        if (e->cloud[mid].hi < ctr)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < e->ncloud && e->cloud[lo].lo <= ctr;
}

bool dv_ctx_contains(const dv_ctx *c, dv_dot d) {
    const dv_vv *e = get_vv(c, d.rid);
    return e && vv_contains(e, d.ctr);
}

/* Give back cloud capacity the entry no longer needs: all of it when the cloud is empty,
 * half when it is below a quarter full (so a cloud that hovers around a size is not
 * reallocated back and forth). Best effort: a failed realloc keeps the larger array. */
static void vv_trim(dv_vv *e) {
    if (!e->ncloud) {
        if (e->capcloud) {
            dv_free(e->cloud);
            e->cloud = NULL;
            e->capcloud = 0;
        }
        return;
    }
    if (e->capcloud <= 8 || e->ncloud * 4 >= e->capcloud)
        return;
    dv_ival *nc = dv_realloc(e->cloud, sizeof(dv_ival) * (e->capcloud / 2));
    if (nc) {
        e->cloud = nc;
        e->capcloud /= 2;
    }
}

/* Absorb cloud intervals that now touch the prefix. */
static void vv_absorb(dv_vv *e) {
    uint32_t k = 0;
    while (k < e->ncloud && e->cloud[k].lo <= e->base + 1) {
        if (e->cloud[k].hi > e->base)
            e->base = e->cloud[k].hi;
        k++;
    }
    if (k) {
        memmove(e->cloud, e->cloud + k, sizeof(dv_ival) * (e->ncloud - k));
        e->ncloud -= k;
        vv_trim(e);
    }
}

static int vv_add(dv_vv *e, uint64_t lo, uint64_t hi) {
    if (hi <= e->base)
        return DV_OK;
    if (lo <= e->base + 1) {
        e->base = hi;
        vv_absorb(e);
        return DV_OK;
    }
    /* first interval that overlaps or touches [lo, hi] from the left */
    uint32_t i = 0, j;
    {
        uint32_t a = 0, b = e->ncloud;
        while (a < b) {
            uint32_t mid = a + (b - a) / 2;
            if (e->cloud[mid].hi + 1 < lo)
                a = mid + 1;
            else
                b = mid;
        }
        i = a;
    }
    j = i;
    while (j < e->ncloud && e->cloud[j].lo <= hi + 1) {
        if (e->cloud[j].lo < lo)
            lo = e->cloud[j].lo;
        if (e->cloud[j].hi > hi)
            hi = e->cloud[j].hi;
        j++;
    }
    if (j > i) { /* replace [i, j) by one interval */
        e->cloud[i].lo = lo;
        e->cloud[i].hi = hi;
        memmove(&e->cloud[i + 1], &e->cloud[j], sizeof(dv_ival) * (e->ncloud - j));
        e->ncloud -= (j - i - 1);
        vv_trim(e);
        return DV_OK;
    }
    if (e->ncloud == e->capcloud) {
        uint32_t ncap = e->capcloud ? e->capcloud * 2 : 4;
        dv_ival *nc = dv_realloc(e->cloud, sizeof(dv_ival) * ncap);
        if (!nc)
            return DV_ENOMEM;
        e->cloud = nc;
        e->capcloud = ncap;
    }
    memmove(&e->cloud[i + 1], &e->cloud[i], sizeof(dv_ival) * (e->ncloud - i));
    e->cloud[i].lo = lo;
    e->cloud[i].hi = hi;
    e->ncloud++;
    return DV_OK;
}

int dv_ctx_add_range(dv_ctx *c, uint64_t rid, uint64_t lo, uint64_t hi) {
    if (lo == 0 || lo > hi || hi > DV_MAX_CTR)
        return DV_EINVAL;
    dv_vv *e = get_or_add_vv(c, rid);
    if (!e)
        return DV_ENOMEM;
    int rc = vv_add(e, lo, hi);
    if (rc != DV_OK && e->base == 0 && e->ncloud == 0) { /* keep normal form: no empty entry */
        size_t i = (size_t)(e - c->v);
        dv_free(e->cloud);
        memmove(&c->v[i], &c->v[i + 1], sizeof(dv_vv) * (c->n - i - 1));
        c->n--;
    }
    return rc;
}

int dv_ctx_add(dv_ctx *c, dv_dot d) {
    return dv_ctx_add_range(c, d.rid, d.ctr, d.ctr);
}

int dv_ctx_merge(dv_ctx *dst, const dv_ctx *src) {
    for (uint32_t i = 0; i < src->n; i++) {
        const dv_vv *s = &src->v[i];
        int rc;
        if (s->base && (rc = dv_ctx_add_range(dst, s->rid, 1, s->base)) != DV_OK)
            return rc;
        for (uint32_t k = 0; k < s->ncloud; k++) {
            rc = dv_ctx_add_range(dst, s->rid, s->cloud[k].lo, s->cloud[k].hi);
            if (rc != DV_OK)
                return rc;
        }
    }
    return DV_OK;
}

size_t dv_ctx_compact(dv_ctx *c) {
    size_t left = 0;
    uint32_t w = 0;
    for (uint32_t i = 0; i < c->n; i++) {
        dv_vv *e = &c->v[i];
        /* coalesce touching or overlapping cloud intervals, then absorb into base */
        uint32_t k = 0;
        for (uint32_t r = 0; r < e->ncloud; r++) {
            if (k && e->cloud[r].lo <= e->cloud[k - 1].hi + 1) {
                if (e->cloud[r].hi > e->cloud[k - 1].hi)
                    e->cloud[k - 1].hi = e->cloud[r].hi;
            } else {
                e->cloud[k++] = e->cloud[r];
            }
        }
        e->ncloud = k;
        vv_absorb(e);
        if (e->base == 0 && e->ncloud == 0) {
            dv_free(e->cloud);
            continue;
        }
        vv_trim(e); /* give back an emptied or mostly empty cloud */
        left += e->ncloud;
        c->v[w++] = *e;
    }
    c->n = w;
    return left;
}

uint64_t dv_ctx_next_seen(const dv_ctx *c, uint64_t rid, uint64_t ctr) {
    const dv_vv *e = get_vv(c, rid);
    if (!e)
        return 0;
    if (ctr == 0)
        ctr = 1;
    if (ctr <= e->base)
        return ctr;
    for (uint32_t k = 0; k < e->ncloud; k++) { /* few intervals in practice */
        if (e->cloud[k].hi < ctr)
            continue;
        return e->cloud[k].lo > ctr ? e->cloud[k].lo : ctr;
    }
    return 0;
}

uint64_t dv_ctx_max(const dv_ctx *c, uint64_t rid) {
    const dv_vv *e = get_vv(c, rid);
    if (!e)
        return 0;
    return e->ncloud ? e->cloud[e->ncloud - 1].hi : e->base;
}

bool dv_ctx_equal(const dv_ctx *a, const dv_ctx *b) {
    if (a->n != b->n)
        return false;
    for (uint32_t i = 0; i < a->n; i++) {
        const dv_vv *x = &a->v[i], *y = &b->v[i];
        if (x->rid != y->rid || x->base != y->base || x->ncloud != y->ncloud)
            return false;
        for (uint32_t k = 0; k < x->ncloud; k++)
            if (x->cloud[k].lo != y->cloud[k].lo || x->cloud[k].hi != y->cloud[k].hi)
                return false;
    }
    return true;
}

uint64_t dv_ctx_cloud_dots(const dv_ctx *c) {
    uint64_t n = 0;
    for (uint32_t i = 0; i < c->n; i++)
        for (uint32_t k = 0; k < c->v[i].ncloud; k++)
            n += c->v[i].cloud[k].hi - c->v[i].cloud[k].lo + 1;
    return n;
}

size_t dv_ctx_memory(const dv_ctx *c) {
    size_t m = sizeof(dv_vv) * c->cap;
    for (uint32_t i = 0; i < c->n; i++)
        m += sizeof(dv_ival) * c->v[i].capcloud;
    return m;
}

void dv_ranges_init(dv_ranges *r) {
    r->r = NULL;
    r->n = 0;
    r->cap = 0;
}

void dv_ranges_free(dv_ranges *r) {
    dv_free(r->r);
    dv_ranges_init(r);
}

int dv_ranges_push(dv_ranges *r, uint64_t rid, uint64_t lo, uint64_t hi) {
    if (r->n == r->cap) {
        size_t ncap = r->cap ? r->cap * 2 : 8;
        dv_range *nr = dv_realloc(r->r, sizeof(dv_range) * ncap);
        if (!nr)
            return DV_ENOMEM;
        r->r = nr;
        r->cap = ncap;
    }
    r->r[r->n].rid = rid;
    r->r[r->n].lo = lo;
    r->r[r->n].hi = hi;
    r->n++;
    return DV_OK;
}

/* The i-th interval of an entry viewed as a list: [1, base] first (if base > 0), then cloud. */
static size_t vv_nivals(const dv_vv *e) {
    return (e->base ? 1 : 0) + e->ncloud;
}

static dv_ival vv_ival(const dv_vv *e, size_t i) {
    if (e->base) {
        if (i == 0)
            return (dv_ival){1, e->base};
        i--;
    }
    return e->cloud[i];
}

int dv_ctx_diff(const dv_ctx *a, const dv_ctx *b, dv_ranges *out) {
    for (uint32_t i = 0; i < a->n; i++) {
        const dv_vv *x = &a->v[i];
        const dv_vv *y = b ? get_vv(b, x->rid) : NULL;
        size_t nx = vv_nivals(x), ny = y ? vv_nivals(y) : 0, jy = 0;
        for (size_t ix = 0; ix < nx; ix++) {
            dv_ival cur = vv_ival(x, ix);
            uint64_t lo = cur.lo;
            /* subtract b's intervals from [lo, cur.hi] */
            while (lo <= cur.hi) {
                while (jy < ny && vv_ival(y, jy).hi < lo)
                    jy++;
                if (jy == ny || vv_ival(y, jy).lo > cur.hi) {
                    if (dv_ranges_push(out, x->rid, lo, cur.hi))
                        return DV_ENOMEM;
                    break;
                }
                dv_ival yb = vv_ival(y, jy);
                if (yb.lo > lo && dv_ranges_push(out, x->rid, lo, yb.lo - 1))
                    return DV_ENOMEM;
                lo = yb.hi + 1; /* yb.hi <= DV_MAX_CTR, no overflow */
            }
        }
    }
    return DV_OK;
}

int dv_ctx_from_ranges(dv_ctx *c, const dv_range *r, size_t n) {
    for (size_t i = 0; i < n; i++) {
        int rc = dv_ctx_add_range(c, r[i].rid, r[i].lo, r[i].hi);
        if (rc)
            return rc;
    }
    return DV_OK;
}
