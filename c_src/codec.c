/* codec.c - wire format. See codec.h for the layout and the decoder contract. */
#include "codec.h"

#include <string.h>

#include "alloc.h"
#include "hash.h"

/* ---- buffer ---- */

void dv_buf_init(dv_buf *b) {
    b->p = NULL;
    b->n = 0;
    b->cap = 0;
    b->oom = false;
}

void dv_buf_free(dv_buf *b) {
    dv_free(b->p);
    dv_buf_init(b);
}

void dv_buf_reset(dv_buf *b) {
    b->n = 0;
    b->oom = false;
}

void dv_buf_reset_trim(dv_buf *b, size_t keep) {
    if (b->cap > keep)
        dv_buf_free(b);
    dv_buf_reset(b);
}

static bool buf_reserve(dv_buf *b, size_t extra) {
    if (b->oom)
        return false;
    if (b->n + extra <= b->cap)
        return true;
    size_t ncap = b->cap ? b->cap : 64;
    while (ncap < b->n + extra)
        ncap *= 2;
    uint8_t *np = dv_realloc(b->p, ncap);
    if (!np) {
        b->oom = true;
        return false;
    }
    b->p = np;
    b->cap = ncap;
    return true;
}

void dv_buf_put(dv_buf *b, const void *p, size_t n) {
    if (!n || !buf_reserve(b, n))
        return;
    memcpy(b->p + b->n, p, n);
    b->n += n;
}

void dv_buf_u8(dv_buf *b, uint8_t v) {
    dv_buf_put(b, &v, 1);
}

void dv_buf_u64le(dv_buf *b, uint64_t v) {
    uint8_t t[8];
    for (int i = 0; i < 8; i++)
        t[i] = (uint8_t)(v >> (8 * i));
    dv_buf_put(b, t, 8);
}

size_t dv_varint_len(uint64_t v) {
    size_t n = 1;
    while (v >= 0x80) {
        v >>= 7;
        n++;
    }
    return n;
}

void dv_buf_varint(dv_buf *b, uint64_t v) {
    uint8_t t[10];
    size_t n = 0;
    while (v >= 0x80) {
        t[n++] = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    t[n++] = (uint8_t)v;
    dv_buf_put(b, t, n);
}

void dv_buf_bytes(dv_buf *b, const uint8_t *p, size_t n) {
    dv_buf_varint(b, n);
    dv_buf_put(b, p, n);
}

/* ---- encoders ---- */

void dv_encode_header(dv_buf *b, uint8_t type) {
    uint8_t h[4] = {'D', 'V', DV_WIRE_VERSION, type};
    dv_buf_put(b, h, 4);
}

size_t dv_elem_wire_size(uint32_t klen, dv_dot dot, uint64_t ts, uint32_t vlen) {
    return dv_varint_len(klen) + klen + 8 + dv_varint_len(dot.ctr) + dv_varint_len(ts) +
           dv_varint_len(vlen) + vlen;
}

void dv_encode_elem(dv_buf *elems, const uint8_t *key, uint32_t klen, dv_dot dot, uint64_t ts,
                    const uint8_t *val, uint32_t vlen) {
    dv_buf_bytes(elems, key, klen);
    dv_buf_u64le(elems, dot.rid);
    dv_buf_varint(elems, dot.ctr);
    dv_buf_varint(elems, ts);
    dv_buf_bytes(elems, val, vlen);
}

static void encode_ranges(dv_buf *out, const dv_range *r, size_t nr) {
    dv_buf_varint(out, nr);
    for (size_t i = 0; i < nr; i++) {
        dv_buf_u64le(out, r[i].rid);
        dv_buf_varint(out, r[i].lo);
        dv_buf_varint(out, r[i].hi - r[i].lo);
    }
}

void dv_encode_delta(dv_buf *out, uint64_t sender, const dv_range *r, size_t nr,
                     const uint8_t *elems, size_t elems_len, size_t nelems) {
    dv_encode_header(out, DV_MSG_DELTA);
    dv_buf_u64le(out, sender);
    encode_ranges(out, r, nr);
    dv_buf_varint(out, nelems);
    dv_buf_put(out, elems, elems_len);
}

void dv_encode_ctx(dv_buf *out, const dv_ctx *c) {
    dv_encode_header(out, DV_MSG_CTX);
    size_t nr = 0;
    for (uint32_t i = 0; i < c->n; i++)
        nr += (c->v[i].base ? 1 : 0) + c->v[i].ncloud;
    dv_buf_varint(out, nr);
    for (uint32_t i = 0; i < c->n; i++) {
        const dv_vv *e = &c->v[i];
        if (e->base) {
            dv_buf_u64le(out, e->rid);
            dv_buf_varint(out, 1);
            dv_buf_varint(out, e->base - 1);
        }
        for (uint32_t k = 0; k < e->ncloud; k++) {
            dv_buf_u64le(out, e->rid);
            dv_buf_varint(out, e->cloud[k].lo);
            dv_buf_varint(out, e->cloud[k].hi - e->cloud[k].lo);
        }
    }
}

void dv_encode_digest(dv_buf *out, const uint64_t *d, size_t n) {
    dv_encode_header(out, DV_MSG_DIGEST);
    dv_buf_varint(out, n);
    for (size_t i = 0; i < n; i++)
        dv_buf_u64le(out, d[i]);
}

void dv_encode_manifest(dv_buf *out, const uint32_t *buckets, size_t nb, const dv_dot *dots,
                        size_t nd) {
    dv_encode_header(out, DV_MSG_MANIFEST);
    dv_buf_varint(out, nb);
    for (size_t i = 0; i < nb; i++)
        dv_buf_varint(out, buckets[i]);
    dv_buf_varint(out, nd);
    for (size_t i = 0; i < nd; i++) {
        dv_buf_u64le(out, dots[i].rid);
        dv_buf_varint(out, dots[i].ctr);
    }
}

int dv_summary_of(const dv_ctx *c, const uint64_t digest[DV_BUCKETS], uint64_t out[2]) {
    dv_buf b;
    dv_buf_init(&b);
    dv_encode_ctx(&b, c);
    if (b.oom) {
        dv_buf_free(&b);
        return DV_ENOMEM;
    }
    uint64_t ch = dv_hash64(b.p, b.n);
    dv_buf_reset(&b);
    /* the digest words in their wire order, so that the hash does not depend on the host */
    for (size_t i = 0; i < DV_BUCKETS; i++)
        dv_buf_u64le(&b, digest[i]);
    if (b.oom) {
        dv_buf_free(&b);
        return DV_ENOMEM;
    }
    out[0] = ch;
    out[1] = dv_hash64(b.p, b.n);
    dv_buf_free(&b);
    return DV_OK;
}

void dv_encode_summary(dv_buf *out, const uint64_t s[2]) {
    dv_encode_header(out, DV_MSG_SUMMARY);
    dv_buf_u64le(out, s[0]);
    dv_buf_u64le(out, s[1]);
}

/* ---- reader ---- */

typedef struct {
    const uint8_t *p;
    const uint8_t *end;
} rd;

static int rd_varint(rd *r, uint64_t *v) {
    uint64_t x = 0;
    for (int shift = 0; shift < 70; shift += 7) {
        if (r->p >= r->end)
            return DV_ETRUNC;
        uint8_t b = *r->p++;
        if (shift == 63 && b > 1)
            return DV_ECORRUPT; /* would overflow 64 bits */
        x |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            if (b == 0 && shift)
                return DV_ECORRUPT; /* non-canonical */
            *v = x;
            return DV_OK;
        }
    }
    return DV_ECORRUPT;
}

static int rd_u64le(rd *r, uint64_t *v) {
    if ((size_t)(r->end - r->p) < 8)
        return DV_ETRUNC;
    uint64_t x = 0;
    for (int i = 0; i < 8; i++)
        x |= (uint64_t)r->p[i] << (8 * i);
    r->p += 8;
    *v = x;
    return DV_OK;
}

static int rd_bytes(rd *r, const uint8_t **p, uint32_t *len) {
    uint64_t n;
    int rc = rd_varint(r, &n);
    if (rc)
        return rc;
    if (n > DV_MAX_MESSAGE)
        return DV_ETOOBIG;
    if ((uint64_t)(r->end - r->p) < n)
        return DV_ETRUNC;
    *p = r->p;
    *len = (uint32_t)n;
    r->p += n;
    return DV_OK;
}

/* A count of records, each at least min_size bytes, must fit in what is left. */
static int rd_count(rd *r, size_t min_size, size_t *count) {
    uint64_t n;
    int rc = rd_varint(r, &n);
    if (rc)
        return rc;
    if (n > (uint64_t)(r->end - r->p) / min_size)
        return DV_ETOOBIG;
    *count = (size_t)n;
    return DV_OK;
}

static int rd_header(rd *r, const uint8_t *p, size_t n, int want) {
    if (n > DV_MAX_MESSAGE)
        return DV_ETOOBIG;
    if (n < 4) /* also keeps p + n away from a NULL p */
        return n >= 2 && (p[0] != 'D' || p[1] != 'V') ? DV_EMAGIC : DV_ETRUNC;
    r->p = p;
    r->end = p + n;
    if (p[0] != 'D' || p[1] != 'V')
        return DV_EMAGIC;
    if (p[2] != DV_WIRE_VERSION)
        return DV_EVERSION;
    if (want && p[3] != want)
        return DV_ETYPE;
    r->p += 4;
    return DV_OK;
}

int dv_peek_type(const uint8_t *p, size_t n) {
    rd r;
    int rc = rd_header(&r, p, n, 0);
    if (rc)
        return rc;
    if (p[3] < DV_MSG_DELTA || p[3] > DV_MSG_SUMMARY)
        return DV_ETYPE;
    return p[3];
}

static int rd_dot(rd *r, dv_dot *d) {
    int rc = rd_u64le(r, &d->rid);
    if (!rc)
        rc = rd_varint(r, &d->ctr);
    if (rc)
        return rc;
    if (d->ctr == 0 || d->ctr > DV_MAX_CTR)
        return DV_ECORRUPT;
    return DV_OK;
}

/* ranges: rid:u64 lo:v span:v, at least 10 bytes each */
static int rd_ranges(rd *r, dv_range **out, size_t *nout) {
    size_t n;
    int rc = rd_count(r, 10, &n);
    if (rc)
        return rc;
    dv_range *v = n ? dv_alloc(sizeof(dv_range) * n) : NULL;
    if (n && !v)
        return DV_ENOMEM;
    for (size_t i = 0; i < n; i++) {
        uint64_t span;
        if ((rc = rd_u64le(r, &v[i].rid)) || (rc = rd_varint(r, &v[i].lo)) ||
            (rc = rd_varint(r, &span)))
            goto fail;
        if (v[i].lo == 0 || v[i].lo > DV_MAX_CTR || span > DV_MAX_CTR - v[i].lo) {
            rc = DV_ECORRUPT;
            goto fail;
        }
        v[i].hi = v[i].lo + span;
    }
    *out = v;
    *nout = n;
    return DV_OK;
fail:
    dv_free(v);
    return rc;
}

int dv_decode_delta(const uint8_t *p, size_t n, dv_delta *out) {
    memset(out, 0, sizeof(*out));
    rd r;
    int rc = rd_header(&r, p, n, DV_MSG_DELTA);
    if (rc)
        return rc;
    dv_delta d = {0};
    if ((rc = rd_u64le(&r, &d.sender)))
        return rc;
    if ((rc = rd_ranges(&r, &d.ranges, &d.nranges)))
        return rc;
    /* key:1+ rid:8 ctr:1 ts:1 value:1 */
    if ((rc = rd_count(&r, 12, &d.nelems)))
        goto fail;
    if (d.nelems) {
        d.elems = dv_alloc(sizeof(dv_elem_view) * d.nelems);
        if (!d.elems) {
            rc = DV_ENOMEM;
            goto fail;
        }
    }
    for (size_t i = 0; i < d.nelems; i++) {
        dv_elem_view *e = &d.elems[i];
        if ((rc = rd_bytes(&r, &e->key, &e->klen)) || (rc = rd_dot(&r, &e->dot)) ||
            (rc = rd_varint(&r, &e->ts)) || (rc = rd_bytes(&r, &e->val, &e->vlen)))
            goto fail;
        if (e->ts > DV_MAX_TS) {
            rc = DV_ECORRUPT;
            goto fail;
        }
    }
    if (r.p != r.end) {
        rc = DV_ECORRUPT;
        goto fail;
    }
    *out = d;
    return DV_OK;
fail:
    dv_delta_free(&d);
    return rc;
}

void dv_delta_free(dv_delta *d) {
    dv_free(d->ranges);
    dv_free(d->elems);
    memset(d, 0, sizeof(*d));
}

int dv_decode_ctx(const uint8_t *p, size_t n, dv_ctx *out) {
    rd r;
    int rc = rd_header(&r, p, n, DV_MSG_CTX);
    if (rc)
        return rc;
    dv_range *v = NULL;
    size_t nr = 0;
    if ((rc = rd_ranges(&r, &v, &nr)))
        return rc;
    if (r.p != r.end) {
        dv_free(v);
        return DV_ECORRUPT;
    }
    dv_ctx tmp;
    dv_ctx_init(&tmp);
    rc = dv_ctx_from_ranges(&tmp, v, nr);
    dv_free(v);
    if (rc) {
        dv_ctx_free(&tmp);
        return rc;
    }
    dv_ctx_free(out);
    *out = tmp;
    return DV_OK;
}

int dv_decode_digest(const uint8_t *p, size_t n, uint64_t out[DV_BUCKETS]) {
    rd r;
    int rc = rd_header(&r, p, n, DV_MSG_DIGEST);
    if (rc)
        return rc;
    uint64_t nb;
    if ((rc = rd_varint(&r, &nb)))
        return rc;
    if (nb != DV_BUCKETS)
        return DV_ECORRUPT;
    if ((size_t)(r.end - r.p) != 8 * (size_t)DV_BUCKETS)
        return (size_t)(r.end - r.p) < 8 * (size_t)DV_BUCKETS ? DV_ETRUNC : DV_ECORRUPT;
    uint64_t tmp[DV_BUCKETS];
    for (size_t i = 0; i < DV_BUCKETS; i++)
        rd_u64le(&r, &tmp[i]);
    memcpy(out, tmp, sizeof(tmp));
    return DV_OK;
}

int dv_decode_summary(const uint8_t *p, size_t n, uint64_t out[2]) {
    rd r;
    int rc = rd_header(&r, p, n, DV_MSG_SUMMARY);
    if (rc)
        return rc;
    if ((size_t)(r.end - r.p) != 16)
        return (size_t)(r.end - r.p) < 16 ? DV_ETRUNC : DV_ECORRUPT;
    uint64_t a, b;
    rd_u64le(&r, &a);
    rd_u64le(&r, &b);
    out[0] = a;
    out[1] = b;
    return DV_OK;
}

int dv_decode_manifest(const uint8_t *p, size_t n, dv_manifest *out) {
    memset(out, 0, sizeof(*out));
    rd r;
    int rc = rd_header(&r, p, n, DV_MSG_MANIFEST);
    if (rc)
        return rc;
    dv_manifest m = {0};
    if ((rc = rd_count(&r, 1, &m.nbuckets)))
        return rc;
    if (m.nbuckets > DV_BUCKETS)
        return DV_ECORRUPT;
    if (m.nbuckets && !(m.buckets = dv_alloc(sizeof(uint32_t) * m.nbuckets)))
        return DV_ENOMEM;
    for (size_t i = 0; i < m.nbuckets; i++) {
        uint64_t b;
        if ((rc = rd_varint(&r, &b)))
            goto fail;
        if (b >= DV_BUCKETS || (i && b <= m.buckets[i - 1])) {
            rc = DV_ECORRUPT;
            goto fail;
        }
        m.buckets[i] = (uint32_t)b;
    }
    if ((rc = rd_count(&r, 9, &m.ndots)))
        goto fail;
    if (m.ndots && !(m.dots = dv_alloc(sizeof(dv_dot) * m.ndots))) {
        rc = DV_ENOMEM;
        goto fail;
    }
    for (size_t i = 0; i < m.ndots; i++)
        if ((rc = rd_dot(&r, &m.dots[i])))
            goto fail;
    if (r.p != r.end) {
        rc = DV_ECORRUPT;
        goto fail;
    }
    *out = m;
    return DV_OK;
fail:
    dv_manifest_free(&m);
    return rc;
}

void dv_manifest_free(dv_manifest *m) {
    dv_free(m->buckets);
    dv_free(m->dots);
    memset(m, 0, sizeof(*m));
}
