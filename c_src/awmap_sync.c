/* awmap_sync.c - what anti-entropy reads from an add-wins map: the delta a peer has not
 * seen (in self-contained chunks), the bucket digests and manifests, the removals a manifest
 * proves the peer has not made, and applying the ones it proves this map has not made. See
 * awmap.h for the protocol and awmap_impl.h for the layout. */
#include <stdlib.h>
#include <string.h>

#include "alloc.h"
#include "awmap.h"
#include "awmap_impl.h"
#include "codec.h"

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
        rc = awmap_join_core(m, &d, fn, ud);
    }
    if (count)
        *count = rc == DV_OK ? rs.n : 0;
    dv_ranges_free(&rs);
    dv_free(sorted);
    return rc;
}
