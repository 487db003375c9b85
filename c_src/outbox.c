/* outbox.c - log of local writes. See outbox.h. */
#include "outbox.h"

#include <stdlib.h>
#include <string.h>

#include "alloc.h"

void dv_outbox_init(dv_outbox *o) {
    memset(o, 0, sizeof(*o));
    dv_buf_init(&o->elems);
}

void dv_outbox_free(dv_outbox *o) {
    dv_buf_free(&o->elems);
    dv_free(o->ops);
    dv_free(o->obs);
    dv_outbox_init(o);
}

/* A log keeps its arrays between flushes (no allocation in the steady state), up to this
 * many bytes each: a burst's are given back when it has been shipped. */
#define KEEP_BYTES ((size_t)256 << 10)

void dv_outbox_reset(dv_outbox *o) {
    dv_buf_reset_trim(&o->elems, KEEP_BYTES);
    if (o->capops * sizeof(dv_op) > KEEP_BYTES) {
        dv_free(o->ops);
        o->ops = NULL;
        o->capops = 0;
    }
    if (o->capobs * sizeof(dv_dot) > KEEP_BYTES) {
        dv_free(o->obs);
        o->obs = NULL;
        o->capobs = 0;
    }
    o->nops = 0;
    o->nobs = 0;
}

bool dv_outbox_empty(const dv_outbox *o) {
    return o->nops == 0;
}
size_t dv_outbox_ops(const dv_outbox *o) {
    return o->nops;
}

static int push_op(dv_outbox *o, const dv_dot *observed, size_t nobs, dv_op **out) {
    if (o->nops == o->capops) {
        size_t ncap = o->capops ? o->capops * 2 : 64;
        dv_op *n = dv_realloc(o->ops, sizeof(dv_op) * ncap);
        if (!n)
            return DV_ENOMEM;
        o->ops = n;
        o->capops = ncap;
    }
    if (o->nobs + nobs > o->capobs) {
        size_t ncap = o->capobs ? o->capobs : 64;
        while (ncap < o->nobs + nobs)
            ncap *= 2;
        dv_dot *n = dv_realloc(o->obs, sizeof(dv_dot) * ncap);
        if (!n)
            return DV_ENOMEM;
        o->obs = n;
        o->capobs = ncap;
    }
    dv_op *op = &o->ops[o->nops];
    op->elem_off = SIZE_MAX;
    op->elem_len = 0;
    op->dot = (dv_dot){0, 0};
    op->obs_off = o->nobs;
    op->nobs = nobs;
    if (nobs)
        memcpy(o->obs + o->nobs, observed, sizeof(dv_dot) * nobs);
    *out = op;
    return DV_OK;
}

int dv_outbox_put(dv_outbox *o, const uint8_t *k, uint32_t klen, dv_dot dot, uint64_t ts,
                  const uint8_t *v, uint32_t vlen, const dv_dot *observed, size_t nobs) {
    dv_op *op;
    int rc = push_op(o, observed, nobs, &op);
    if (rc)
        return rc;
    size_t off = o->elems.n;
    dv_encode_elem(&o->elems, k, klen, dot, ts, v, vlen);
    if (o->elems.oom) {
        o->elems.oom = false;
        o->elems.n = off;
        return DV_ENOMEM;
    }
    op->elem_off = off;
    op->elem_len = o->elems.n - off;
    op->dot = dot;
    o->nops++;
    o->nobs += nobs;
    return DV_OK;
}

int dv_outbox_append(dv_outbox *dst, const dv_outbox *src) {
    size_t nops = dst->nops, nobs = dst->nobs, nelems = dst->elems.n;
    for (size_t i = 0; i < src->nops; i++) {
        const dv_op *s = &src->ops[i];
        dv_op *op;
        if (push_op(dst, src->obs + s->obs_off, s->nobs, &op))
            goto oom;
        op->dot = s->dot;
        if (s->elem_off != SIZE_MAX) {
            op->elem_off = dst->elems.n;
            op->elem_len = s->elem_len;
            dv_buf_put(&dst->elems, src->elems.p + s->elem_off, s->elem_len);
            if (dst->elems.oom)
                goto oom;
        }
        dst->nops++;
        dst->nobs += s->nobs;
    }
    return DV_OK;
oom: /* dst as it was */
    dst->elems.oom = false;
    dst->elems.n = nelems;
    dst->nops = nops;
    dst->nobs = nobs;
    return DV_ENOMEM;
}

int dv_outbox_remove(dv_outbox *o, const dv_dot *observed, size_t nobs) {
    if (!nobs)
        return DV_OK;
    dv_op *op;
    int rc = push_op(o, observed, nobs, &op);
    if (rc)
        return rc;
    o->nops++;
    o->nobs += nobs;
    return DV_OK;
}

static int cmp_dot(const void *a, const void *b) {
    const dv_dot *x = a, *y = b;
    if (x->rid != y->rid)
        return x->rid < y->rid ? -1 : 1;
    if (x->ctr != y->ctr)
        return x->ctr < y->ctr ? -1 : 1;
    return 0;
}

static bool sorted_has(const dv_dot *v, size_t n, dv_dot d) {
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

/* Emit ops [from, to) as one DELTA. */
static int emit_group(const dv_outbox *o, const dv_dot *removed, size_t nremoved, size_t from,
                      size_t to, uint64_t sender, dv_buf *elems, dv_buf *out,
                      int (*emit)(void *, const uint8_t *, size_t), void *ud) {
    dv_ctx ctx;
    dv_ctx_init(&ctx);
    dv_ranges rs;
    dv_ranges_init(&rs);
    size_t nelems = 0;
    int rc = DV_OK;
    dv_buf_reset(elems);
    for (size_t i = from; i < to && rc == DV_OK; i++) {
        const dv_op *op = &o->ops[i];
        if (op->elem_off != SIZE_MAX) {
            rc = dv_ctx_add(&ctx, op->dot);
            if (!sorted_has(removed, nremoved, op->dot)) {
                dv_buf_put(elems, o->elems.p + op->elem_off, op->elem_len);
                nelems++;
            }
        }
        for (size_t j = 0; j < op->nobs && rc == DV_OK; j++)
            rc = dv_ctx_add(&ctx, o->obs[op->obs_off + j]);
    }
    if (rc == DV_OK)
        rc = dv_ctx_diff(&ctx, NULL, &rs);
    if (rc == DV_OK) {
        dv_buf_reset(out);
        dv_encode_delta(out, sender, rs.r, rs.n, elems->p, elems->n, nelems);
        rc = (out->oom || elems->oom) ? DV_ENOMEM : emit(ud, out->p, out->n);
    }
    dv_ranges_free(&rs);
    dv_ctx_free(&ctx);
    return rc;
}

int dv_outbox_encode(const dv_outbox *o, uint64_t sender, size_t max_bytes,
                     int (*emit)(void *ud, const uint8_t *p, size_t n), void *ud) {
    if (!o->nops)
        return DV_OK;
    dv_dot *removed = NULL;
    if (o->nobs) {
        removed = dv_alloc(sizeof(dv_dot) * o->nobs);
        if (!removed)
            return DV_ENOMEM;
        memcpy(removed, o->obs, sizeof(dv_dot) * o->nobs);
        qsort(removed, o->nobs, sizeof(dv_dot), cmp_dot);
    }
    dv_buf elems, out;
    dv_buf_init(&elems);
    dv_buf_init(&out);
    int rc = DV_OK;
    size_t from = 0, size = 0;
    for (size_t i = 0; i < o->nops && rc == DV_OK; i++) {
        size += o->ops[i].elem_len + 20 * (o->ops[i].nobs + 1);
        if (size >= max_bytes) {
            rc = emit_group(o, removed, o->nobs, from, i + 1, sender, &elems, &out, emit, ud);
            from = i + 1;
            size = 0;
        }
    }
    if (rc == DV_OK && from < o->nops)
        rc = emit_group(o, removed, o->nobs, from, o->nops, sender, &elems, &out, emit, ud);
    dv_buf_free(&elems);
    dv_buf_free(&out);
    dv_free(removed);
    return rc;
}
