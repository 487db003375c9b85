/* test_codec.c - wire format (codec.h): encoders, decoders and their contract.
 *
 * Every decoder either fills its output and returns DV_OK or returns a negative error with
 * nothing allocated. A counting allocator checks "nothing allocated" directly (and the size of
 * the largest allocation), so these tests fail without valgrind or ASan too. Inputs handed to
 * decoders are copied into exactly-sized heap blocks so that ASan/valgrind catch overreads. */
#define _DEFAULT_SOURCE /* mmap flags */
#include <criterion/criterion.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "alloc.h"
#include "codec.h"
#include "dots.h"
#include "test_support.h"

/* counting allocator and generator: test_support.h */

TestSuite(codec, .init = install, .fini = uninstall);

/* ---- helpers ---- */

/* An interesting 64-bit value: small, near a varint boundary, or fully random. */
static uint64_t rnd_u64(void) {
    switch (rnd_below(5)) {
    case 0:
        return rnd_below(300);
    case 1: {
        unsigned s = 7 * (1 + (unsigned)rnd_below(9));
        uint64_t b = (uint64_t)1 << s;
        return b - 1 + rnd_below(3); /* 2^7k - 1, 2^7k, 2^7k + 1 */
    }
    case 2:
        return rnd() >> rnd_below(64);
    default:
        return rnd();
    }
}

static uint64_t rnd_ctr(void) {
    uint64_t c = rnd_u64() % DV_MAX_CTR + 1;
    return rnd_below(20) ? c : DV_MAX_CTR;
}

/* A copy of p[0..n) in a block of exactly n bytes (ASan/valgrind catch any overread). */
static uint8_t *dup_exact(const uint8_t *p, size_t n) {
    uint8_t *q = malloc(n ? n : 1);
    cr_assert(q);
    if (n)
        memcpy(q, p, n);
    return q;
}

/* Reference LEB128 decoder (no canonicity rules), for checking the encoder. */
static size_t ref_varint_decode(const uint8_t *p, size_t n, uint64_t *v) {
    uint64_t x = 0;
    for (size_t i = 0; i < n && i < 10; i++) {
        x |= (uint64_t)(p[i] & 0x7f) << (7 * i);
        if (!(p[i] & 0x80)) {
            *v = x;
            return i + 1;
        }
    }
    return 0;
}

/* ---- valid messages ---- */

typedef struct {
    uint8_t *key, *val;
    uint32_t klen, vlen;
    dv_dot dot;
    uint64_t ts;
} src_elem;

typedef struct {
    uint64_t sender;
    dv_range *ranges;
    size_t nranges;
    src_elem *elems;
    size_t nelems;
} src_delta;

static void src_delta_free(src_delta *s) {
    for (size_t i = 0; i < s->nelems; i++) {
        free(s->elems[i].key);
        free(s->elems[i].val);
    }
    free(s->elems);
    free(s->ranges);
    memset(s, 0, sizeof(*s));
}

static uint8_t *rnd_bytes(uint32_t n) {
    uint8_t *p = malloc(n ? n : 1);
    cr_assert(p);
    for (uint32_t i = 0; i < n; i += 8) {
        uint64_t r = rnd();
        memcpy(p + i, &r, n - i < 8 ? n - i : 8);
    }
    return p;
}

/* A random delta; big adds a few large keys/values. */
static void make_src_delta(src_delta *s, bool big) {
    s->sender = rnd_u64();
    s->nranges = rnd_below(12);
    s->ranges = malloc(sizeof(dv_range) * (s->nranges ? s->nranges : 1));
    for (size_t i = 0; i < s->nranges; i++) {
        uint64_t lo = rnd_ctr(), hi = lo + rnd_below(1000);
        if (hi > DV_MAX_CTR)
            hi = DV_MAX_CTR;
        s->ranges[i] = (dv_range){rnd_u64(), lo, hi};
    }
    s->nelems = rnd_below(10) + (big ? 3 : 0);
    s->elems = calloc(s->nelems ? s->nelems : 1, sizeof(src_elem));
    for (size_t i = 0; i < s->nelems; i++) {
        src_elem *e = &s->elems[i];
        e->klen = (uint32_t)(rnd_below(4) == 0 ? 0 : rnd_below(40));
        e->vlen = (uint32_t)(rnd_below(4) == 0 ? 0 : rnd_below(200));
        if (big && i == 0)
            e->vlen = 1u << 19; /* 512 KiB value */
        if (big && i == 1)
            e->klen = 70000; /* key length needs a 3-byte varint */
        if (big && i == 2)
            e->vlen = 16384 + 5; /* 3-byte varint length */
        e->key = rnd_bytes(e->klen);
        e->val = rnd_bytes(e->vlen);
        e->dot = (dv_dot){rnd_u64(), rnd_ctr()};
        e->ts = rnd_u64() & DV_MAX_TS;
    }
}

static void encode_src_delta(dv_buf *out, const src_delta *s) {
    dv_buf elems;
    dv_buf_init(&elems);
    for (size_t i = 0; i < s->nelems; i++) {
        const src_elem *e = &s->elems[i];
        size_t before = elems.n;
        dv_encode_elem(&elems, e->key, e->klen, e->dot, e->ts, e->val, e->vlen);
        cr_assert_eq(elems.n - before, dv_elem_wire_size(e->klen, e->dot, e->ts, e->vlen));
    }
    cr_assert(!elems.oom);
    dv_encode_delta(out, s->sender, s->ranges, s->nranges, elems.p, elems.n, s->nelems);
    cr_assert(!out->oom);
    dv_buf_free(&elems);
}

static void assert_delta_matches(const dv_delta *d, const src_delta *s, const uint8_t *p,
                                 size_t n) {
    cr_assert_eq(d->sender, s->sender);
    cr_assert_eq(d->nranges, s->nranges);
    for (size_t i = 0; i < s->nranges; i++) {
        cr_assert_eq(d->ranges[i].rid, s->ranges[i].rid);
        cr_assert_eq(d->ranges[i].lo, s->ranges[i].lo);
        cr_assert_eq(d->ranges[i].hi, s->ranges[i].hi);
    }
    cr_assert_eq(d->nelems, s->nelems);
    for (size_t i = 0; i < s->nelems; i++) {
        const dv_elem_view *v = &d->elems[i];
        const src_elem *e = &s->elems[i];
        cr_assert_eq(v->klen, e->klen);
        cr_assert_eq(v->vlen, e->vlen);
        cr_assert(v->key >= p && v->key + v->klen <= p + n, "key view outside the input");
        cr_assert(v->val >= p && v->val + v->vlen <= p + n, "value view outside the input");
        cr_assert(e->klen == 0 || memcmp(v->key, e->key, e->klen) == 0);
        cr_assert(e->vlen == 0 || memcmp(v->val, e->val, e->vlen) == 0);
        cr_assert_eq(v->dot.rid, e->dot.rid);
        cr_assert_eq(v->dot.ctr, e->dot.ctr);
        cr_assert_eq(v->ts, e->ts);
    }
}

static void make_ctx(dv_ctx *c, int ops) {
    static const uint64_t rids[] = {0, 1, 2, 1000, (uint64_t)1 << 50, UINT64_MAX};
    for (int i = 0; i < ops; i++) {
        uint64_t rid = rids[rnd_below(6)];
        uint64_t lo, hi;
        if (rnd_below(10) == 0) {
            lo = DV_MAX_CTR - rnd_below(5);
            hi = DV_MAX_CTR;
        } else {
            lo = 1 + rnd_below(rnd_below(2) ? 50 : 100000);
            hi = lo + rnd_below(rnd_below(2) ? 3 : 300);
        }
        cr_assert_eq(dv_ctx_add_range(c, rid, lo, hi), DV_OK);
    }
}

static void make_manifest(dv_buf *out, uint32_t *buckets, size_t *nb, dv_dot *dots, size_t *nd,
                          size_t maxd) {
    *nb = 0;
    uint32_t density = 1 + (uint32_t)rnd_below(64);
    for (uint32_t b = 0; b < DV_BUCKETS; b++)
        if (rnd_below(density) == 0)
            buckets[(*nb)++] = b;
    *nd = rnd_below(maxd + 1);
    for (size_t i = 0; i < *nd; i++)
        dots[i] = (dv_dot){rnd_u64(), rnd_ctr()};
    dv_encode_manifest(out, buckets, *nb, dots, *nd);
    cr_assert(!out->oom);
}

/* One valid message of the given type (random content). */
static void make_message(dv_buf *out, int type) {
    switch (type) {
    case DV_MSG_DELTA: {
        src_delta s;
        make_src_delta(&s, false);
        encode_src_delta(out, &s);
        src_delta_free(&s);
        break;
    }
    case DV_MSG_CTX: {
        dv_ctx c;
        dv_ctx_init(&c);
        make_ctx(&c, (int)rnd_below(30));
        dv_encode_ctx(out, &c);
        dv_ctx_free(&c);
        break;
    }
    case DV_MSG_DIGEST: {
        uint64_t d[DV_BUCKETS];
        for (size_t i = 0; i < DV_BUCKETS; i++)
            d[i] = rnd_u64();
        dv_encode_digest(out, d, DV_BUCKETS);
        break;
    }
    case DV_MSG_SUMMARY: {
        uint64_t s[2] = {rnd_u64(), rnd_u64()};
        dv_encode_summary(out, s);
        break;
    }
    default: {
        uint32_t b[DV_BUCKETS];
        dv_dot dots[40];
        size_t nb, nd;
        make_manifest(out, b, &nb, dots, &nd, 40);
        break;
    }
    }
    cr_assert(!out->oom);
}

/* Decode p[0..n) as `type`. On failure checks the contract (output left empty or untouched,
 * nothing allocated). On success checks basic validity, re-encodes where the format is
 * canonical and compares. Frees everything. Returns the decoder's result. */
static int decode_check(int type, const uint8_t *p, size_t n) {
    long live0 = live_blocks;
    int rc;
    switch (type) {
    case DV_MSG_DELTA: {
        dv_delta d;
        memset(&d, 0xa5, sizeof(d));
        rc = dv_decode_delta(p, n, &d);
        if (rc != DV_OK) {
            cr_assert(d.ranges == NULL && d.elems == NULL && d.nranges == 0 && d.nelems == 0,
                      "failed delta decode left output behind");
            break;
        }
        for (size_t i = 0; i < d.nranges; i++)
            cr_assert(d.ranges[i].lo >= 1 && d.ranges[i].lo <= d.ranges[i].hi &&
                      d.ranges[i].hi <= DV_MAX_CTR);
        dv_buf elems, re;
        dv_buf_init(&elems);
        dv_buf_init(&re);
        for (size_t i = 0; i < d.nelems; i++) {
            const dv_elem_view *e = &d.elems[i];
            cr_assert(e->dot.ctr >= 1 && e->dot.ctr <= DV_MAX_CTR);
            cr_assert(e->ts <= DV_MAX_TS);
            cr_assert(e->key >= p && e->key + e->klen <= p + n);
            cr_assert(e->val >= p && e->val + e->vlen <= p + n);
            dv_encode_elem(&elems, e->key, e->klen, e->dot, e->ts, e->val, e->vlen);
        }
        dv_encode_delta(&re, d.sender, d.ranges, d.nranges, elems.p, elems.n, d.nelems);
        cr_assert(re.n == n && memcmp(re.p, p, n) == 0, "delta decode/encode not identity");
        dv_buf_free(&elems);
        dv_buf_free(&re);
        dv_delta_free(&d);
        cr_assert(d.ranges == NULL && d.elems == NULL);
        break;
    }
    case DV_MSG_CTX: {
        dv_ctx c, before;
        dv_ctx_init(&c);
        dv_ctx_init(&before);
        cr_assert_eq(dv_ctx_add_range(&c, 77, 3, 9), DV_OK); /* must be replaced or kept */
        cr_assert_eq(dv_ctx_copy(&before, &c), DV_OK);
        long live1 = live_blocks;
        rc = dv_decode_ctx(p, n, &c);
        if (rc != DV_OK) {
            cr_assert(dv_ctx_equal(&c, &before), "failed ctx decode changed its output");
            cr_assert_eq(live_blocks, live1, "failed ctx decode leaked");
        } else {
            /* normal form and a canonical re-encoding that decodes to the same context */
            dv_ctx nf;
            dv_ctx_init(&nf);
            cr_assert_eq(dv_ctx_copy(&nf, &c), DV_OK);
            dv_ctx_compact(&nf);
            cr_assert(dv_ctx_equal(&nf, &c), "decoded ctx not in normal form");
            dv_ctx_free(&nf);
            dv_buf re;
            dv_buf_init(&re);
            dv_encode_ctx(&re, &c);
            dv_ctx c2;
            dv_ctx_init(&c2);
            cr_assert_eq(dv_decode_ctx(re.p, re.n, &c2), DV_OK);
            cr_assert(dv_ctx_equal(&c, &c2));
            dv_ctx_free(&c2);
            dv_buf_free(&re);
        }
        dv_ctx_free(&c);
        dv_ctx_free(&before);
        break;
    }
    case DV_MSG_DIGEST: {
        static uint64_t sentinel[DV_BUCKETS];
        if (!sentinel[1])
            for (size_t i = 0; i < DV_BUCKETS; i++)
                sentinel[i] = 0x5a5a5a5a5a5a5a5aULL + i;
        uint64_t d[DV_BUCKETS];
        memcpy(d, sentinel, sizeof(d));
        rc = dv_decode_digest(p, n, d);
        if (rc != DV_OK) {
            cr_assert(memcmp(d, sentinel, sizeof(d)) == 0, "failed digest decode wrote");
            break;
        }
        dv_buf re;
        dv_buf_init(&re);
        dv_encode_digest(&re, d, DV_BUCKETS);
        cr_assert(re.n == n && memcmp(re.p, p, n) == 0, "digest decode/encode not identity");
        dv_buf_free(&re);
        break;
    }
    case DV_MSG_SUMMARY: {
        uint64_t s[2] = {0x5a5a5a5a5a5a5a5aULL, 0xa5a5a5a5a5a5a5a5ULL};
        rc = dv_decode_summary(p, n, s);
        if (rc != DV_OK) {
            cr_assert(s[0] == 0x5a5a5a5a5a5a5a5aULL && s[1] == 0xa5a5a5a5a5a5a5a5ULL,
                      "failed summary decode wrote");
            break;
        }
        dv_buf re;
        dv_buf_init(&re);
        dv_encode_summary(&re, s);
        cr_assert(re.n == n && memcmp(re.p, p, n) == 0, "summary decode/encode not identity");
        dv_buf_free(&re);
        break;
    }
    default: {
        dv_manifest m;
        memset(&m, 0xa5, sizeof(m));
        rc = dv_decode_manifest(p, n, &m);
        if (rc != DV_OK) {
            cr_assert(m.buckets == NULL && m.dots == NULL && m.nbuckets == 0 && m.ndots == 0,
                      "failed manifest decode left output behind");
            break;
        }
        cr_assert(m.nbuckets <= DV_BUCKETS);
        for (size_t i = 0; i < m.nbuckets; i++) {
            cr_assert(m.buckets[i] < DV_BUCKETS);
            if (i)
                cr_assert(m.buckets[i] > m.buckets[i - 1]);
        }
        for (size_t i = 0; i < m.ndots; i++)
            cr_assert(m.dots[i].ctr >= 1 && m.dots[i].ctr <= DV_MAX_CTR);
        dv_buf re;
        dv_buf_init(&re);
        dv_encode_manifest(&re, m.buckets, m.nbuckets, m.dots, m.ndots);
        cr_assert(re.n == n && memcmp(re.p, p, n) == 0, "manifest decode/encode not identity");
        dv_buf_free(&re);
        dv_manifest_free(&m);
        cr_assert(m.buckets == NULL && m.dots == NULL);
        break;
    }
    }
    cr_assert(rc <= 0, "decoder returned a positive value %d", rc);
    cr_assert_eq(live_blocks, live0, "decode of type %d (rc %d) leaked %ld blocks", type, rc,
                 live_blocks - live0);
    return rc;
}

/* Same on an exactly-sized copy. */
static int decode_exact(int type, const uint8_t *p, size_t n) {
    uint8_t *q = dup_exact(p, n);
    int rc = decode_check(type, q, n);
    free(q);
    return rc;
}

#define NTYPES 5
static const int TYPES[NTYPES] = {DV_MSG_DELTA, DV_MSG_CTX, DV_MSG_DIGEST, DV_MSG_MANIFEST,
                                  DV_MSG_SUMMARY};

/* ---- dv_buf and varints ---- */

Test(codec, buf_basics) {
    dv_buf b;
    dv_buf_init(&b);
    cr_assert_eq(b.n, 0);
    dv_buf_u8(&b, 0xab);
    dv_buf_u64le(&b, 0x0102030405060708ULL);
    dv_buf_put(&b, "xyz", 3);
    dv_buf_put(&b, NULL, 0);
    dv_buf_bytes(&b, (const uint8_t *)"hi", 2);
    dv_buf_bytes(&b, NULL, 0);
    static const uint8_t want[] = {0xab, 8, 7, 6, 5, 4, 3, 2, 1, 'x', 'y', 'z', 2, 'h', 'i', 0};
    cr_assert_eq(b.n, sizeof(want));
    cr_assert_arr_eq(b.p, want, sizeof(want));
    cr_assert(!b.oom);

    /* growth across many appends */
    for (int i = 0; i < 100000; i++)
        dv_buf_u8(&b, (uint8_t)i);
    cr_assert_eq(b.n, sizeof(want) + 100000);
    cr_assert(b.cap >= b.n);
    for (int i = 0; i < 100000; i++)
        cr_assert_eq(b.p[sizeof(want) + (size_t)i], (uint8_t)i);

    dv_buf_reset(&b);
    cr_assert_eq(b.n, 0);
    dv_buf_u8(&b, 1);
    cr_assert_eq(b.n, 1);
    cr_assert_eq(b.p[0], 1);
    dv_buf_free(&b);
    cr_assert(b.p == NULL && b.n == 0 && b.cap == 0);
    cr_assert_eq(live_blocks, 0);
}

Test(codec, buf_oom_is_sticky) {
    dv_buf b;
    dv_buf_init(&b);
    fail_after = 0;
    dv_buf_put(&b, "abc", 3);
    fail_after = -1;
    cr_assert(b.oom);
    dv_buf_put(&b, "def", 3); /* allocator works again, but the buffer stays failed */
    dv_buf_varint(&b, 1);
    cr_assert(b.oom);
    cr_assert_eq(b.n, 0);
    dv_buf_reset(&b);
    cr_assert(!b.oom);
    dv_buf_put(&b, "def", 3);
    cr_assert(!b.oom);
    cr_assert_eq(b.n, 3);
    cr_assert_eq(memcmp(b.p, "def", 3), 0);

    /* failure while growing keeps the bytes already there */
    fail_after = 0;
    for (int i = 0; i < 1000; i++)
        dv_buf_u8(&b, 1);
    fail_after = -1;
    cr_assert(b.oom);
    cr_assert(b.n >= 3 && b.n <= b.cap);
    cr_assert_eq(memcmp(b.p, "def", 3), 0);
    dv_buf_free(&b);
    cr_assert_eq(live_blocks, 0);

    /* an encoder on a failing allocator reports through oom, not by crashing */
    dv_ctx c;
    dv_ctx_init(&c);
    cr_assert_eq(dv_ctx_add_range(&c, 1, 1, 5), DV_OK);
    dv_buf_init(&b);
    fail_after = 0;
    dv_encode_ctx(&b, &c);
    fail_after = -1;
    cr_assert(b.oom);
    dv_buf_free(&b);
    dv_ctx_free(&c);
    cr_assert_eq(live_blocks, 0);
}

Test(codec, varint_encoding_known_values) {
    static const struct {
        uint64_t v;
        uint8_t bytes[10];
        size_t n;
    } known[] = {
        {0, {0x00}, 1},
        {1, {0x01}, 1},
        {127, {0x7f}, 1},
        {128, {0x80, 0x01}, 2},
        {300, {0xac, 0x02}, 2},
        {16383, {0xff, 0x7f}, 2},
        {16384, {0x80, 0x80, 0x01}, 3},
        {(uint64_t)1 << 62, {0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x40}, 9},
        {((uint64_t)1 << 63) - 1, {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f}, 9},
        {(uint64_t)1 << 63, {0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01}, 10},
        {UINT64_MAX, {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01}, 10},
    };
    for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); i++) {
        dv_buf b;
        dv_buf_init(&b);
        dv_buf_varint(&b, known[i].v);
        cr_assert_eq(b.n, known[i].n, "varint(%llu) has %zu bytes", (unsigned long long)known[i].v,
                     b.n);
        cr_assert_arr_eq(b.p, known[i].bytes, known[i].n);
        cr_assert_eq(dv_varint_len(known[i].v), known[i].n);
        dv_buf_free(&b);
    }
}

Test(codec, varint_encoder_round_trip) {
    rng_state = 1;
    dv_buf b;
    dv_buf_init(&b);
    for (int i = 0; i < 100000; i++) {
        uint64_t v = i < 64    ? ((uint64_t)1 << i)
                     : i < 128 ? ((uint64_t)1 << (i - 64)) - 1
                               : rnd_u64();
        if (i == 200)
            v = UINT64_MAX;
        dv_buf_reset(&b);
        dv_buf_varint(&b, v);
        cr_assert_eq(b.n, dv_varint_len(v));
        cr_assert(b.n >= 1 && b.n <= 10);
        cr_assert(b.n == 1 || b.p[b.n - 1] != 0, "non-canonical encoding");
        uint64_t w = 0;
        cr_assert_eq(ref_varint_decode(b.p, b.n, &w), b.n);
        cr_assert_eq(w, v);
    }
    dv_buf_free(&b);
}

/* A delta with one element whose ts field is the given raw bytes. */
static void delta_with_raw_ts(dv_buf *b, const uint8_t *ts, size_t tsn) {
    dv_encode_header(b, DV_MSG_DELTA);
    dv_buf_u64le(b, 1);
    dv_buf_varint(b, 0);
    dv_buf_varint(b, 1);
    dv_buf_bytes(b, (const uint8_t *)"k", 1);
    dv_buf_u64le(b, 1);
    dv_buf_varint(b, 1);
    dv_buf_put(b, ts, tsn);
    dv_buf_bytes(b, (const uint8_t *)"v", 1);
}

Test(codec, varint_decoder_round_trip) {
    /* through the ts field (any value up to DV_MAX_TS) and the ctr field (up to DV_MAX_CTR) */
    uint64_t vals[] = {0,
                       1,
                       127,
                       128,
                       255,
                       16383,
                       16384,
                       ((uint64_t)1 << 35) - 1,
                       (uint64_t)1 << 35,
                       ((uint64_t)1 << 56) - 1,
                       (uint64_t)1 << 56,
                       DV_MAX_CTR,
                       DV_MAX_TS};
    for (size_t i = 0; i < sizeof(vals) / sizeof(vals[0]); i++) {
        dv_buf b, ts;
        dv_buf_init(&b);
        dv_buf_init(&ts);
        dv_buf_varint(&ts, vals[i]);
        delta_with_raw_ts(&b, ts.p, ts.n);
        uint8_t *q = dup_exact(b.p, b.n);
        dv_delta d;
        cr_assert_eq(dv_decode_delta(q, b.n, &d), DV_OK, "ts %llu", (unsigned long long)vals[i]);
        cr_assert_eq(d.nelems, 1);
        cr_assert_eq(d.elems[0].ts, vals[i]);
        dv_delta_free(&d);
        free(q);

        if (vals[i] >= 1 && vals[i] <= DV_MAX_CTR) {
            src_elem e = {(uint8_t *)"", (uint8_t *)"", 0, 0, {vals[i], vals[i]}, vals[i]};
            src_delta s = {vals[i], NULL, 0, &e, 1};
            dv_range r = {vals[i], vals[i], vals[i]};
            s.ranges = &r;
            s.nranges = 1;
            dv_buf_reset(&b);
            encode_src_delta(&b, &s);
            q = dup_exact(b.p, b.n);
            cr_assert_eq(dv_decode_delta(q, b.n, &d), DV_OK);
            assert_delta_matches(&d, &s, q, b.n);
            dv_delta_free(&d);
            free(q);
        }
        dv_buf_free(&b);
        dv_buf_free(&ts);
    }
    /* larger timestamps are refused: 2^63 and UINT64_MAX (10-byte varints) */
    uint64_t over[] = {(uint64_t)1 << 63, UINT64_MAX};
    for (size_t i = 0; i < 2; i++) {
        dv_buf b, ts;
        dv_buf_init(&b);
        dv_buf_init(&ts);
        dv_buf_varint(&ts, over[i]);
        delta_with_raw_ts(&b, ts.p, ts.n);
        cr_assert_eq(decode_exact(DV_MSG_DELTA, b.p, b.n), DV_ECORRUPT);
        dv_buf_free(&b);
        dv_buf_free(&ts);
    }
    cr_assert_eq(live_blocks, 0);
}

Test(codec, non_canonical_varints_rejected) {
    static const struct {
        uint8_t b[12];
        size_t n;
    } bad[] = {
        {{0x80, 0x00}, 2},       /* 0 in two bytes */
        {{0x81, 0x00}, 2},       /* 1 in two bytes */
        {{0xff, 0x00}, 2},       /* 127 in two bytes */
        {{0x80, 0x80, 0x00}, 3}, /* 0 in three bytes */
        {{0x80, 0x81, 0x00}, 3}, /* 128 in three bytes */
        {{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x00}, 10},
        {{0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x02}, 10}, /* 2^64: overflow */
        {{0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x7f}, 10}, /* overflow */
        {{0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x81, 0x00}, 11},
        {{0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01}, 11}, /* 11 bytes */
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        dv_buf b;
        dv_buf_init(&b);
        delta_with_raw_ts(&b, bad[i].b, bad[i].n);
        cr_assert_eq(decode_exact(DV_MSG_DELTA, b.p, b.n), DV_ECORRUPT, "ts encoding #%zu", i);

        /* the same encodings as a count (CTX nranges) */
        dv_buf_reset(&b);
        dv_encode_header(&b, DV_MSG_CTX);
        dv_buf_put(&b, bad[i].b, bad[i].n);
        int rc = decode_exact(DV_MSG_CTX, b.p, b.n);
        cr_assert_eq(rc, DV_ECORRUPT, "count encoding #%zu: %d", i, rc);

        /* as a key length */
        dv_buf_reset(&b);
        dv_encode_header(&b, DV_MSG_DELTA);
        dv_buf_u64le(&b, 1);
        dv_buf_varint(&b, 0);
        dv_buf_varint(&b, 1);
        dv_buf_put(&b, bad[i].b, bad[i].n);
        for (int k = 0; k < 16; k++)
            dv_buf_u8(&b, 1);
        rc = decode_exact(DV_MSG_DELTA, b.p, b.n);
        cr_assert(rc == DV_ECORRUPT, "key length encoding #%zu: %d", i, rc);
        dv_buf_free(&b);
    }
    cr_assert_eq(live_blocks, 0);
}

/* ---- round trips ---- */

Test(codec, delta_round_trip) {
    for (int seed = 1; seed <= 300; seed++) {
        rng_state = (uint64_t)seed;
        src_delta s;
        make_src_delta(&s, seed <= 3);
        dv_buf b;
        dv_buf_init(&b);
        encode_src_delta(&b, &s);
        uint8_t *q = dup_exact(b.p, b.n);
        cr_assert_eq(dv_peek_type(q, b.n), DV_MSG_DELTA);
        dv_delta d;
        cr_assert_eq(dv_decode_delta(q, b.n, &d), DV_OK, "seed %d", seed);
        assert_delta_matches(&d, &s, q, b.n);
        dv_delta_free(&d);
        cr_assert_eq(decode_check(DV_MSG_DELTA, q, b.n), DV_OK);
        free(q);
        dv_buf_free(&b);
        src_delta_free(&s);
    }

    /* empty delta, and one whose only element has an empty key and an empty value */
    src_elem e = {(uint8_t *)"", (uint8_t *)"", 0, 0, {0, 1}, 0};
    src_delta empty = {0, NULL, 0, NULL, 0}, one = {UINT64_MAX, NULL, 0, &e, 1};
    src_delta *cases[] = {&empty, &one};
    for (int i = 0; i < 2; i++) {
        dv_buf b;
        dv_buf_init(&b);
        encode_src_delta(&b, cases[i]);
        uint8_t *q = dup_exact(b.p, b.n);
        dv_delta d;
        cr_assert_eq(dv_decode_delta(q, b.n, &d), DV_OK);
        assert_delta_matches(&d, cases[i], q, b.n);
        dv_delta_free(&d);
        free(q);
        dv_buf_free(&b);
    }
    cr_assert_eq(live_blocks, 0);
}

Test(codec, ctx_round_trip) {
    for (int seed = 1; seed <= 300; seed++) {
        rng_state = (uint64_t)seed * 3;
        dv_ctx c, out;
        dv_ctx_init(&c);
        dv_ctx_init(&out);
        make_ctx(&c, (int)rnd_below(60));
        make_ctx(&out, (int)rnd_below(5)); /* previous content is replaced */
        dv_buf b;
        dv_buf_init(&b);
        dv_encode_ctx(&b, &c);
        cr_assert(!b.oom);
        uint8_t *q = dup_exact(b.p, b.n);
        cr_assert_eq(dv_peek_type(q, b.n), DV_MSG_CTX);
        cr_assert_eq(dv_decode_ctx(q, b.n, &out), DV_OK);
        cr_assert(dv_ctx_equal(&out, &c), "seed %d: decoded ctx differs", seed);
        /* the encoding of a context is canonical */
        dv_buf b2;
        dv_buf_init(&b2);
        dv_encode_ctx(&b2, &out);
        cr_assert(b.n == b2.n && memcmp(b.p, b2.p, b.n) == 0);
        dv_buf_free(&b2);
        free(q);
        dv_buf_free(&b);
        dv_ctx_free(&c);
        dv_ctx_free(&out);
    }
    /* empty context and extremes */
    dv_ctx c, out;
    dv_ctx_init(&c);
    dv_ctx_init(&out);
    cr_assert_eq(dv_ctx_add(&out, (dv_dot){5, 5}), DV_OK);
    dv_buf b;
    dv_buf_init(&b);
    dv_encode_ctx(&b, &c);
    cr_assert_eq(b.n, 5);
    cr_assert_eq(dv_decode_ctx(b.p, b.n, &out), DV_OK);
    cr_assert_eq(out.n, 0);
    cr_assert_eq(dv_ctx_add_range(&c, 0, 1, DV_MAX_CTR), DV_OK);
    cr_assert_eq(dv_ctx_add_range(&c, UINT64_MAX, DV_MAX_CTR, DV_MAX_CTR), DV_OK);
    cr_assert_eq(dv_ctx_add_range(&c, UINT64_MAX, 2, 2), DV_OK);
    dv_buf_reset(&b);
    dv_encode_ctx(&b, &c);
    cr_assert_eq(dv_decode_ctx(b.p, b.n, &out), DV_OK);
    cr_assert(dv_ctx_equal(&out, &c));
    cr_assert(dv_ctx_contains(&out, (dv_dot){UINT64_MAX, DV_MAX_CTR}));
    cr_assert(!dv_ctx_contains(&out, (dv_dot){UINT64_MAX, 1}));
    dv_buf_free(&b);
    dv_ctx_free(&c);
    dv_ctx_free(&out);
    cr_assert_eq(live_blocks, 0);
}

Test(codec, ctx_decode_accepts_unsorted_overlapping_ranges) {
    /* the format does not require normal form: the decoder normalises */
    dv_buf b;
    dv_buf_init(&b);
    dv_encode_header(&b, DV_MSG_CTX);
    dv_buf_varint(&b, 4);
    uint64_t r[4][3] = {{9, 5, 3}, {9, 1, 2}, {2, 10, 0}, {9, 4, 10}}; /* rid lo span */
    for (int i = 0; i < 4; i++) {
        dv_buf_u64le(&b, r[i][0]);
        dv_buf_varint(&b, r[i][1]);
        dv_buf_varint(&b, r[i][2]);
    }
    dv_ctx c;
    dv_ctx_init(&c);
    cr_assert_eq(dv_decode_ctx(b.p, b.n, &c), DV_OK);
    cr_assert_eq(c.n, 2);
    cr_assert_eq(c.v[0].rid, 2);
    cr_assert_eq(c.v[0].base, 0);
    cr_assert_eq(c.v[0].ncloud, 1);
    cr_assert_eq(c.v[1].rid, 9);
    cr_assert_eq(c.v[1].base, 14);
    cr_assert_eq(c.v[1].ncloud, 0);
    dv_ctx_free(&c);
    dv_buf_free(&b);
}

Test(codec, digest_round_trip) {
    rng_state = 11;
    uint64_t d[DV_BUCKETS], out[DV_BUCKETS];
    for (size_t i = 0; i < DV_BUCKETS; i++)
        d[i] = rnd_u64();
    d[0] = 0;
    d[1] = UINT64_MAX;
    dv_buf b;
    dv_buf_init(&b);
    dv_encode_digest(&b, d, DV_BUCKETS);
    cr_assert_eq(b.n, 4 + 2 + 8 * DV_BUCKETS);
    uint8_t *q = dup_exact(b.p, b.n);
    cr_assert_eq(dv_peek_type(q, b.n), DV_MSG_DIGEST);
    cr_assert_eq(dv_decode_digest(q, b.n, out), DV_OK);
    cr_assert_arr_eq(out, d, sizeof(d));
    free(q);
    dv_buf_free(&b);
    cr_assert_eq(live_blocks, 0);
}

Test(codec, summary_round_trip_and_hashes) {
    uint64_t s[2] = {0, UINT64_MAX}, out[2] = {1, 1};
    dv_buf b;
    dv_buf_init(&b);
    dv_encode_summary(&b, s);
    cr_assert_eq(b.n, 4 + 16);
    uint8_t *q = dup_exact(b.p, b.n);
    cr_assert_eq(dv_peek_type(q, b.n), DV_MSG_SUMMARY);
    cr_assert_eq(dv_decode_summary(q, b.n, out), DV_OK);
    cr_assert(out[0] == 0 && out[1] == UINT64_MAX);
    free(q);
    dv_buf_free(&b);

    /* the summary follows the context and the digest, each on its own */
    static uint64_t d[DV_BUCKETS];
    dv_ctx c;
    dv_ctx_init(&c);
    cr_assert_eq(dv_ctx_add_range(&c, 7, 1, 10), DV_OK);
    uint64_t s1[2], s2[2], s3[2], s4[2];
    cr_assert_eq(dv_summary_of(&c, d, s1), DV_OK);
    cr_assert_eq(dv_summary_of(&c, d, s2), DV_OK);
    cr_assert(s1[0] == s2[0] && s1[1] == s2[1], "not deterministic");
    d[DV_BUCKETS - 1] ^= 1;
    cr_assert_eq(dv_summary_of(&c, d, s3), DV_OK);
    cr_assert(s3[0] == s1[0] && s3[1] != s1[1], "a digest change must change the digest hash only");
    cr_assert_eq(dv_ctx_add(&c, (dv_dot){7, 11}), DV_OK);
    cr_assert_eq(dv_summary_of(&c, d, s4), DV_OK);
    cr_assert(s4[0] != s3[0] && s4[1] == s3[1],
              "a context change must change the context hash only");
    dv_ctx_free(&c);
    cr_assert_eq(live_blocks, 0);
}

Test(codec, summary_size_rules) {
    dv_buf b;
    dv_buf_init(&b);
    dv_encode_header(&b, DV_MSG_SUMMARY);
    for (int k = 0; k < 15; k++)
        dv_buf_u8(&b, (uint8_t)k);
    cr_assert_eq(decode_exact(DV_MSG_SUMMARY, b.p, b.n), DV_ETRUNC);
    dv_buf_u8(&b, 15);
    cr_assert_eq(decode_exact(DV_MSG_SUMMARY, b.p, b.n), DV_OK);
    dv_buf_u8(&b, 16);
    cr_assert_eq(decode_exact(DV_MSG_SUMMARY, b.p, b.n), DV_ECORRUPT);
    dv_buf_free(&b);
}

Test(codec, manifest_round_trip) {
    static uint32_t buckets[DV_BUCKETS];
    static dv_dot dots[300];
    for (int seed = 1; seed <= 200; seed++) {
        rng_state = (uint64_t)seed * 5;
        dv_buf b;
        dv_buf_init(&b);
        size_t nb, nd;
        make_manifest(&b, buckets, &nb, dots, &nd, 300);
        if (seed == 1) { /* every bucket */
            dv_buf_reset(&b);
            for (uint32_t i = 0; i < DV_BUCKETS; i++)
                buckets[i] = i;
            nb = DV_BUCKETS;
            dv_encode_manifest(&b, buckets, nb, dots, nd);
        }
        if (seed == 2) { /* nothing */
            dv_buf_reset(&b);
            nb = nd = 0;
            dv_encode_manifest(&b, buckets, 0, dots, 0);
        }
        uint8_t *q = dup_exact(b.p, b.n);
        cr_assert_eq(dv_peek_type(q, b.n), DV_MSG_MANIFEST);
        dv_manifest m;
        cr_assert_eq(dv_decode_manifest(q, b.n, &m), DV_OK, "seed %d", seed);
        cr_assert_eq(m.nbuckets, nb);
        cr_assert_eq(m.ndots, nd);
        for (size_t i = 0; i < nb; i++)
            cr_assert_eq(m.buckets[i], buckets[i]);
        for (size_t i = 0; i < nd; i++) {
            cr_assert_eq(m.dots[i].rid, dots[i].rid);
            cr_assert_eq(m.dots[i].ctr, dots[i].ctr);
        }
        dv_manifest_free(&m);
        free(q);
        dv_buf_free(&b);
    }
    cr_assert_eq(live_blocks, 0);
}

Test(codec, elem_wire_size_matches_encoding) {
    rng_state = 3;
    dv_buf b;
    dv_buf_init(&b);
    static uint8_t big[70000];
    for (int i = 0; i < 20000; i++) {
        uint32_t kl = (uint32_t)(i % 100 == 0 ? 70000 : rnd_below(300));
        uint32_t vl = (uint32_t)(i % 77 == 0 ? 20000 : rnd_below(300));
        dv_dot dot = {rnd_u64(), rnd_ctr()};
        uint64_t ts = rnd_u64() & DV_MAX_TS;
        dv_buf_reset(&b);
        dv_encode_elem(&b, big, kl, dot, ts, big, vl);
        cr_assert_eq(b.n, dv_elem_wire_size(kl, dot, ts, vl));
    }
    dv_buf_free(&b);
}

/* ---- truncation ---- */

/* Every prefix of a valid message fails (truncated, or a count that no longer fits). */
static void check_all_prefixes(int type, const uint8_t *p, size_t n, bool exact_copies) {
    long live0 = live_blocks;
    cr_assert_eq(decode_exact(type, p, n), DV_OK);
    for (size_t len = 0; len < n; len++) {
        int rc = exact_copies ? decode_exact(type, p, len) : decode_check(type, p, len);
        cr_assert(rc == DV_ETRUNC || rc == DV_ETOOBIG,
                  "type %d: prefix %zu of %zu gave %d (%s), expected truncated/too_big", type, len,
                  n, rc, dv_strerror(rc));
    }
    cr_assert_eq(live_blocks, live0);
}

Test(codec, every_truncation_fails) {
    for (int seed = 1; seed <= 12; seed++) {
        rng_state = (uint64_t)seed * 101;
        for (int t = 0; t < NTYPES; t++) {
            if (TYPES[t] == DV_MSG_DIGEST && seed > 1)
                continue; /* all digests look alike */
            dv_buf b;
            dv_buf_init(&b);
            make_message(&b, TYPES[t]);
            check_all_prefixes(TYPES[t], b.p, b.n, true);
            dv_buf_free(&b);
        }
    }
    /* multi-byte varints everywhere: large counters, long keys */
    src_elem e[2] = {{(uint8_t *)"", (uint8_t *)"v", 0, 1, {UINT64_MAX, DV_MAX_CTR}, DV_MAX_TS},
                     {NULL, NULL, 200, 300, {3, 1u << 20}, (uint64_t)1 << 40}};
    e[1].key = calloc(200, 1);
    e[1].val = calloc(300, 1);
    dv_range r[2] = {{7, DV_MAX_CTR - 5, DV_MAX_CTR}, {7, 1, 1u << 30}};
    src_delta s = {1, r, 2, e, 2};
    dv_buf b;
    dv_buf_init(&b);
    encode_src_delta(&b, &s);
    check_all_prefixes(DV_MSG_DELTA, b.p, b.n, true);
    free(e[1].key);
    free(e[1].val);
    dv_buf_free(&b);
}

static int cmp_size(const void *a, const void *b) {
    size_t x = *(const size_t *)a, y = *(const size_t *)b;
    return x < y ? -1 : x > y;
}

/* Prefixes of a ~600 KB delta: all of them near a field boundary (every prefix that ends
 * inside a varint, a replica id or a length), a stride through the large keys and values. */
Test(codec, every_truncation_of_a_large_delta_fails) {
    rng_state = 42;
    src_delta s;
    make_src_delta(&s, true);
    dv_buf b;
    dv_buf_init(&b);
    encode_src_delta(&b, &s);
    long live0 = live_blocks;
    cr_assert_eq(decode_exact(DV_MSG_DELTA, b.p, b.n), DV_OK);
    size_t elems_len = 0;
    for (size_t i = 0; i < s.nelems; i++)
        elems_len +=
            dv_elem_wire_size(s.elems[i].klen, s.elems[i].dot, s.elems[i].ts, s.elems[i].vlen);
    /* boundaries: the end of the header and ranges, then per element: start, end of key,
     * start of value, end */
    size_t marks[4 * 16 + 1], nm = 0, at = b.n - elems_len;
    marks[nm++] = at;
    for (size_t i = 0; i < s.nelems; i++) {
        const src_elem *e = &s.elems[i];
        size_t end = at + dv_elem_wire_size(e->klen, e->dot, e->ts, e->vlen);
        marks[nm++] = at + dv_varint_len(e->klen) + e->klen;
        marks[nm++] = end - e->vlen;
        marks[nm++] = end;
        at = end;
    }
    cr_assert_eq(at, b.n);
    /* candidate prefix lengths: sorted, duplicates skipped */
    size_t cap = 64 + nm * 65 + b.n / 4093 + 1, nc = 0;
    size_t *cand = malloc(sizeof(size_t) * cap);
    for (size_t len = 0; len < 64; len++)
        cand[nc++] = len;
    for (size_t k = 0; k < nm; k++)
        for (size_t d = 0; d <= 64; d++)
            if (marks[k] + d >= 32)
                cand[nc++] = marks[k] + d - 32;
    for (size_t len = 4093; len < b.n; len += 4093)
        cand[nc++] = len;
    qsort(cand, nc, sizeof(size_t), cmp_size);
    size_t checked = 0;
    for (size_t i = 0; i < nc; i++) {
        size_t len = cand[i];
        if (len >= b.n || (i && len == cand[i - 1]))
            continue;
        /* exact copies while cheap; past that in place (the bytes after len are valid) */
        int rc = len < 65536 ? decode_exact(DV_MSG_DELTA, b.p, len)
                             : decode_check(DV_MSG_DELTA, b.p, len);
        cr_assert(rc == DV_ETRUNC || rc == DV_ETOOBIG, "prefix %zu of %zu gave %d", len, b.n, rc);
        checked++;
    }
    free(cand);
    cr_assert_gt(checked, 1000);
    cr_assert_eq(live_blocks, live0);
    dv_buf_free(&b);
    src_delta_free(&s);
    cr_assert_eq(live_blocks, 0);
}

Test(codec, trailing_bytes_rejected) {
    rng_state = 7;
    for (int t = 0; t < NTYPES; t++) {
        for (int k = 0; k < 5; k++) {
            dv_buf b;
            dv_buf_init(&b);
            make_message(&b, TYPES[t]);
            static const uint8_t tails[][3] = {{0}, {0xff}, {0x80}, {1, 2, 3}, {0, 0, 0}};
            dv_buf_put(&b, tails[k], k < 3 ? 1 : 3);
            int rc = decode_exact(TYPES[t], b.p, b.n);
            cr_assert_eq(rc, DV_ECORRUPT, "type %d tail %d gave %d", TYPES[t], k, rc);
            dv_buf_free(&b);
        }
    }
    cr_assert_eq(live_blocks, 0);
}

/* ---- header ---- */

Test(codec, bad_magic_version_type) {
    rng_state = 9;
    for (int t = 0; t < NTYPES; t++) {
        dv_buf b;
        dv_buf_init(&b);
        make_message(&b, TYPES[t]);
        uint8_t *q = dup_exact(b.p, b.n);

        q[0] = 'd';
        cr_assert_eq(decode_check(TYPES[t], q, b.n), DV_EMAGIC);
        cr_assert_eq(dv_peek_type(q, b.n), DV_EMAGIC);
        q[2] = 99; /* magic is checked first */
        cr_assert_eq(decode_check(TYPES[t], q, b.n), DV_EMAGIC);
        q[0] = 'D';
        q[1] = 'W';
        cr_assert_eq(decode_check(TYPES[t], q, b.n), DV_EMAGIC);
        q[1] = 'V';

        static const uint8_t versions[] = {0, DV_WIRE_VERSION + 1, 99, 255};
        for (size_t i = 0; i < sizeof(versions); i++) {
            q[2] = versions[i];
            cr_assert_eq(decode_check(TYPES[t], q, b.n), DV_EVERSION);
            cr_assert_eq(dv_peek_type(q, b.n), DV_EVERSION);
        }
        q[2] = DV_WIRE_VERSION;

        /* every other decoder refuses it as the wrong type */
        for (int u = 0; u < NTYPES; u++)
            if (u != t)
                cr_assert_eq(decode_check(TYPES[u], q, b.n), DV_ETYPE);
        static const uint8_t unknown[] = {0, 6, 7, 0x80, 255};
        for (size_t i = 0; i < sizeof(unknown); i++) {
            q[3] = unknown[i];
            cr_assert_eq(dv_peek_type(q, b.n), DV_ETYPE);
            for (int u = 0; u < NTYPES; u++)
                cr_assert_eq(decode_check(TYPES[u], q, b.n), DV_ETYPE);
        }
        q[3] = (uint8_t)TYPES[t];
        cr_assert_eq(dv_peek_type(q, b.n), TYPES[t]);
        cr_assert_eq(decode_check(TYPES[t], q, b.n), DV_OK);
        free(q);
        dv_buf_free(&b);
    }

    /* inputs shorter than a header */
    static const struct {
        const char *s;
        size_t n;
        int rc;
    } shorts[] = {
        {"", 0, DV_ETRUNC},       {"D", 1, DV_ETRUNC},  {"DV", 2, DV_ETRUNC},
        {"DV\x01", 3, DV_ETRUNC}, {"XV", 2, DV_EMAGIC}, {"DX\x01", 3, DV_EMAGIC},
    };
    for (size_t i = 0; i < sizeof(shorts) / sizeof(shorts[0]); i++) {
        for (int u = 0; u < NTYPES; u++) {
            int rc = decode_exact(TYPES[u], (const uint8_t *)shorts[i].s, shorts[i].n);
            cr_assert_eq(rc, shorts[i].rc, "short input #%zu type %d: %d", i, TYPES[u], rc);
        }
        uint8_t *q = dup_exact((const uint8_t *)shorts[i].s, shorts[i].n);
        cr_assert_eq(dv_peek_type(q, shorts[i].n), shorts[i].rc);
        free(q);
    }
    cr_assert_eq(live_blocks, 0);
}

Test(codec, null_empty_input) {
    /* an empty binary may come with a NULL pointer */
    dv_delta d;
    dv_ctx c;
    dv_manifest m;
    uint64_t dg[DV_BUCKETS];
    dv_ctx_init(&c);
    cr_assert_eq(dv_decode_delta(NULL, 0, &d), DV_ETRUNC);
    cr_assert_eq(dv_decode_ctx(NULL, 0, &c), DV_ETRUNC);
    cr_assert_eq(dv_decode_digest(NULL, 0, dg), DV_ETRUNC);
    cr_assert_eq(dv_decode_manifest(NULL, 0, &m), DV_ETRUNC);
    cr_assert_eq(dv_peek_type(NULL, 0), DV_ETRUNC);
    cr_assert_eq(live_blocks, 0);
}

/* ---- rule violations inside messages ---- */

static int ctx_with_range(uint64_t lo, uint64_t span, bool as_delta) {
    dv_buf b;
    dv_buf_init(&b);
    if (as_delta) {
        dv_encode_header(&b, DV_MSG_DELTA);
        dv_buf_u64le(&b, 1);
    } else {
        dv_encode_header(&b, DV_MSG_CTX);
    }
    dv_buf_varint(&b, 3);
    dv_buf_u64le(&b, 1);
    dv_buf_varint(&b, 1);
    dv_buf_varint(&b, 0);
    dv_buf_u64le(&b, 2); /* the bad one is in the middle */
    dv_buf_varint(&b, lo);
    dv_buf_varint(&b, span);
    dv_buf_u64le(&b, 3);
    dv_buf_varint(&b, 5);
    dv_buf_varint(&b, 5);
    if (as_delta)
        dv_buf_varint(&b, 0);
    int rc = decode_exact(as_delta ? DV_MSG_DELTA : DV_MSG_CTX, b.p, b.n);
    dv_buf_free(&b);
    return rc;
}

Test(codec, bad_ranges_rejected) {
    static const struct {
        uint64_t lo, span;
        bool ok;
    } cases[] = {
        {0, 0, false},
        {0, 5, false},
        {DV_MAX_CTR + 1, 0, false},
        {UINT64_MAX, 0, false},
        {DV_MAX_CTR, 1, false},
        {2, DV_MAX_CTR - 1, false},
        {1, UINT64_MAX, false},
        {DV_MAX_CTR, UINT64_MAX, false},
        {1, DV_MAX_CTR, false},
        {1, DV_MAX_CTR - 1, true}, /* 1..DV_MAX_CTR */
        {DV_MAX_CTR, 0, true},
        {1, 0, true},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        for (int as_delta = 0; as_delta < 2; as_delta++) {
            int rc = ctx_with_range(cases[i].lo, cases[i].span, as_delta);
            if (cases[i].ok)
                cr_assert_eq(rc, DV_OK, "case %zu delta %d: %d", i, as_delta, rc);
            else
                cr_assert_eq(rc, DV_ECORRUPT, "case %zu delta %d: %d", i, as_delta, rc);
        }
    cr_assert_eq(live_blocks, 0);
}

static int delta_with_elem_ctr(uint64_t ctr, int nelems_before) {
    dv_buf b;
    dv_buf_init(&b);
    dv_encode_header(&b, DV_MSG_DELTA);
    dv_buf_u64le(&b, 1);
    dv_buf_varint(&b, 0);
    dv_buf_varint(&b, (uint64_t)nelems_before + 1);
    for (int i = 0; i < nelems_before; i++)
        dv_encode_elem(&b, (const uint8_t *)"a", 1, (dv_dot){1, (uint64_t)i + 1}, 0,
                       (const uint8_t *)"b", 1);
    dv_buf_bytes(&b, (const uint8_t *)"k", 1);
    dv_buf_u64le(&b, 9);
    dv_buf_varint(&b, ctr);
    dv_buf_varint(&b, 0);
    dv_buf_bytes(&b, (const uint8_t *)"v", 1);
    int rc = decode_exact(DV_MSG_DELTA, b.p, b.n);
    dv_buf_free(&b);
    return rc;
}

static int manifest_with(const uint64_t *buckets, size_t nb, const uint64_t *ctrs, size_t nd) {
    dv_buf b;
    dv_buf_init(&b);
    dv_encode_header(&b, DV_MSG_MANIFEST);
    dv_buf_varint(&b, nb);
    for (size_t i = 0; i < nb; i++)
        dv_buf_varint(&b, buckets[i]);
    dv_buf_varint(&b, nd);
    for (size_t i = 0; i < nd; i++) {
        dv_buf_u64le(&b, i);
        dv_buf_varint(&b, ctrs[i]);
    }
    int rc = decode_exact(DV_MSG_MANIFEST, b.p, b.n);
    dv_buf_free(&b);
    return rc;
}

Test(codec, bad_dots_rejected) {
    cr_assert_eq(delta_with_elem_ctr(0, 0), DV_ECORRUPT);
    cr_assert_eq(delta_with_elem_ctr(0, 3), DV_ECORRUPT);
    cr_assert_eq(delta_with_elem_ctr(DV_MAX_CTR + 1, 2), DV_ECORRUPT);
    cr_assert_eq(delta_with_elem_ctr(UINT64_MAX, 0), DV_ECORRUPT);
    cr_assert_eq(delta_with_elem_ctr(DV_MAX_CTR, 2), DV_OK);
    cr_assert_eq(delta_with_elem_ctr(1, 0), DV_OK);

    uint64_t bk[] = {1, 2};
    uint64_t ok[] = {1, DV_MAX_CTR, 7};
    uint64_t zero[] = {1, 0, 7};
    uint64_t over[] = {1, DV_MAX_CTR + 1, 7};
    cr_assert_eq(manifest_with(bk, 2, ok, 3), DV_OK);
    cr_assert_eq(manifest_with(bk, 2, zero, 3), DV_ECORRUPT);
    cr_assert_eq(manifest_with(bk, 2, over, 3), DV_ECORRUPT);
    cr_assert_eq(live_blocks, 0);
}

Test(codec, manifest_buckets_rules) {
    uint64_t ctr[] = {1};
    static const struct {
        uint64_t b[4];
        size_t n;
        bool ok;
    } cases[] = {
        {{0}, 1, true},
        {{DV_BUCKETS - 1}, 1, true},
        {{0, 1, 2, DV_BUCKETS - 1}, 4, true},
        {{DV_BUCKETS}, 1, false},
        {{0, DV_BUCKETS}, 2, false},
        {{(uint64_t)1 << 32}, 1, false}, /* would wrap to 0 as a uint32 */
        {{((uint64_t)1 << 32) + 5}, 1, false},
        {{UINT64_MAX}, 1, false},
        {{3, 3}, 2, false},
        {{5, 2}, 2, false},
        {{1, 2, 2}, 3, false},
        {{1, 4, 3, 9}, 4, false},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        int rc = manifest_with(cases[i].b, cases[i].n, ctr, 1);
        if (cases[i].ok)
            cr_assert_eq(rc, DV_OK, "case %zu: %d", i, rc);
        else
            cr_assert_eq(rc, DV_ECORRUPT, "case %zu: %d", i, rc);
    }
    /* more buckets than exist, with enough bytes to hold them */
    static uint64_t many[DV_BUCKETS + 1];
    for (size_t i = 0; i <= DV_BUCKETS; i++)
        many[i] = i;
    cr_assert_lt(manifest_with(many, DV_BUCKETS + 1, ctr, 1), 0);
    cr_assert_eq(manifest_with(many, DV_BUCKETS, ctr, 1), DV_OK);
    cr_assert_eq(live_blocks, 0);
}

static int digest_with(uint64_t count, size_t nwords) {
    dv_buf b;
    dv_buf_init(&b);
    dv_encode_header(&b, DV_MSG_DIGEST);
    dv_buf_varint(&b, count);
    for (size_t i = 0; i < nwords; i++)
        dv_buf_u64le(&b, i * 0x1234567);
    int rc = decode_exact(DV_MSG_DIGEST, b.p, b.n);
    dv_buf_free(&b);
    return rc;
}

Test(codec, digest_count_rules) {
    cr_assert_eq(digest_with(DV_BUCKETS, DV_BUCKETS), DV_OK);
    cr_assert_eq(digest_with(DV_BUCKETS - 1, DV_BUCKETS - 1), DV_ECORRUPT);
    cr_assert_eq(digest_with(DV_BUCKETS + 1, DV_BUCKETS + 1), DV_ECORRUPT);
    cr_assert_eq(digest_with(0, 0), DV_ECORRUPT);
    cr_assert_eq(digest_with(1, 1), DV_ECORRUPT);
    cr_assert_eq(digest_with(UINT64_MAX, 2), DV_ECORRUPT);
    cr_assert_lt(digest_with(DV_BUCKETS - 1, DV_BUCKETS), 0);
    cr_assert_lt(digest_with(DV_BUCKETS, DV_BUCKETS - 1), 0);
    cr_assert_lt(digest_with(DV_BUCKETS, DV_BUCKETS + 1), 0);
    cr_assert_lt(digest_with(DV_BUCKETS, 0), 0);
    /* the encoder writes what it is given; only the decoder enforces the count */
    uint64_t d[3] = {1, 2, 3};
    dv_buf b;
    dv_buf_init(&b);
    dv_encode_digest(&b, d, 3);
    cr_assert_eq(decode_exact(DV_MSG_DIGEST, b.p, b.n), DV_ECORRUPT);
    dv_buf_free(&b);
}

/* ---- counts that lie ---- */

Test(codec, huge_counts_fail_without_huge_allocation) {
    static const uint64_t counts[] = {
        (uint64_t)1 << 62,
        (uint64_t)1 << 40,
        UINT32_MAX,
        (uint64_t)UINT32_MAX + 1,
        1u << 20,
        1000,
        3,
    };
    for (size_t i = 0; i < sizeof(counts) / sizeof(counts[0]); i++) {
        uint64_t n = counts[i];
        dv_buf b;
        dv_buf_init(&b);
        int rc;

        /* CTX: nranges with two ranges' worth of bytes */
        dv_encode_header(&b, DV_MSG_CTX);
        dv_buf_varint(&b, n);
        for (int k = 0; k < 2; k++) {
            dv_buf_u64le(&b, 1);
            dv_buf_varint(&b, 1);
            dv_buf_varint(&b, 0);
        }
        max_alloc = 0;
        rc = decode_exact(DV_MSG_CTX, b.p, b.n);
        cr_assert_lt(rc, 0);
        cr_assert_lt(max_alloc, 4096, "ctx count %llu allocated %zu bytes", (unsigned long long)n,
                     max_alloc);

        /* DELTA: nranges, then nelems */
        dv_buf_reset(&b);
        dv_encode_header(&b, DV_MSG_DELTA);
        dv_buf_u64le(&b, 1);
        dv_buf_varint(&b, n);
        for (int k = 0; k < 30; k++)
            dv_buf_u8(&b, 1);
        max_alloc = 0;
        cr_assert_lt(decode_exact(DV_MSG_DELTA, b.p, b.n), 0);
        cr_assert_lt(max_alloc, 4096);

        dv_buf_reset(&b);
        dv_encode_header(&b, DV_MSG_DELTA);
        dv_buf_u64le(&b, 1);
        dv_buf_varint(&b, 0);
        dv_buf_varint(&b, n);
        dv_encode_elem(&b, (const uint8_t *)"k", 1, (dv_dot){1, 1}, 1, (const uint8_t *)"v", 1);
        dv_encode_elem(&b, (const uint8_t *)"k", 1, (dv_dot){1, 2}, 1, (const uint8_t *)"v", 1);
        max_alloc = 0;
        cr_assert_lt(decode_exact(DV_MSG_DELTA, b.p, b.n), 0);
        cr_assert_lt(max_alloc, 4096);

        /* MANIFEST: nbuckets, then ndots */
        dv_buf_reset(&b);
        dv_encode_header(&b, DV_MSG_MANIFEST);
        dv_buf_varint(&b, n);
        dv_buf_varint(&b, 0);
        dv_buf_varint(&b, 1);
        dv_buf_varint(&b, 0);
        max_alloc = 0;
        cr_assert_lt(decode_exact(DV_MSG_MANIFEST, b.p, b.n), 0);
        cr_assert_lt(max_alloc, 4096);

        dv_buf_reset(&b);
        dv_encode_header(&b, DV_MSG_MANIFEST);
        dv_buf_varint(&b, 1);
        dv_buf_varint(&b, 4);
        dv_buf_varint(&b, n);
        dv_buf_u64le(&b, 1);
        dv_buf_varint(&b, 1);
        dv_buf_u64le(&b, 1);
        dv_buf_varint(&b, 2);
        max_alloc = 0;
        cr_assert_lt(decode_exact(DV_MSG_MANIFEST, b.p, b.n), 0);
        cr_assert_lt(max_alloc, 4096);

        /* key and value lengths beyond the input */
        dv_buf_reset(&b);
        dv_encode_header(&b, DV_MSG_DELTA);
        dv_buf_u64le(&b, 1);
        dv_buf_varint(&b, 0);
        dv_buf_varint(&b, 1);
        dv_buf_varint(&b, n);
        for (int k = 0; k < 12; k++)
            dv_buf_u8(&b, 1);
        max_alloc = 0;
        rc = decode_exact(DV_MSG_DELTA, b.p, b.n);
        cr_assert(rc == DV_ETRUNC || rc == DV_ETOOBIG, "key length %llu: %d", (unsigned long long)n,
                  rc);
        cr_assert_lt(max_alloc, 4096);
        dv_buf_free(&b);
    }
    cr_assert_eq(live_blocks, 0);
}

Test(codec, count_exactly_at_the_limit) {
    /* k minimal ranges (10 bytes each): count k decodes, count k+1 cannot fit */
    for (uint64_t k = 0; k < 20; k++) {
        for (uint64_t claim = k; claim <= k + 1; claim++) {
            dv_buf b;
            dv_buf_init(&b);
            dv_encode_header(&b, DV_MSG_CTX);
            dv_buf_varint(&b, claim);
            for (uint64_t i = 0; i < k; i++) {
                dv_buf_u64le(&b, i);
                dv_buf_varint(&b, 1);
                dv_buf_varint(&b, 0);
            }
            int rc = decode_exact(DV_MSG_CTX, b.p, b.n);
            if (claim == k)
                cr_assert_eq(rc, DV_OK);
            else
                cr_assert(rc == DV_ETOOBIG || rc == DV_ETRUNC, "claim %llu: %d",
                          (unsigned long long)claim, rc);
            dv_buf_free(&b);
        }
    }
}

Test(codec, message_longer_than_max_rejected) {
    size_t n = DV_MAX_MESSAGE + 1;
    uint8_t *p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    cr_assert(p != MAP_FAILED);
    for (int t = 0; t < NTYPES; t++) {
        p[0] = 'D';
        p[1] = 'V';
        p[2] = DV_WIRE_VERSION;
        p[3] = (uint8_t)TYPES[t];
        max_alloc = 0;
        cr_assert_eq(decode_check(TYPES[t], p, n), DV_ETOOBIG);
        cr_assert_eq(dv_peek_type(p, n), DV_ETOOBIG);
        cr_assert_lt(max_alloc, 4096);
    }
    /* a key length above DV_MAX_MESSAGE is too big even before looking for the bytes */
    dv_buf b;
    dv_buf_init(&b);
    dv_encode_header(&b, DV_MSG_DELTA);
    dv_buf_u64le(&b, 1);
    dv_buf_varint(&b, 0);
    dv_buf_varint(&b, 1);
    dv_buf_varint(&b, DV_MAX_MESSAGE + 1);
    for (int k = 0; k < 12; k++)
        dv_buf_u8(&b, 1);
    cr_assert_eq(decode_exact(DV_MSG_DELTA, b.p, b.n), DV_ETOOBIG);
    dv_buf_free(&b);
    munmap(p, n);
    cr_assert_eq(live_blocks, 0);
}

/* ---- allocation failure ---- */

Test(codec, decoders_under_allocation_failure) {
    rng_state = 77;
    for (int round = 0; round < 20; round++) {
        for (int t = 0; t < NTYPES; t++) {
            dv_buf b;
            dv_buf_init(&b);
            make_message(&b, TYPES[t]);
            for (long k = 0; k < 4; k++) {
                fail_after = k;
                long live0 = live_blocks;
                int rc;
                if (TYPES[t] == DV_MSG_DELTA) {
                    dv_delta d;
                    rc = dv_decode_delta(b.p, b.n, &d);
                    if (rc == DV_OK)
                        dv_delta_free(&d);
                } else if (TYPES[t] == DV_MSG_CTX) {
                    dv_ctx c;
                    dv_ctx_init(&c);
                    rc = dv_decode_ctx(b.p, b.n, &c);
                    dv_ctx_free(&c);
                } else if (TYPES[t] == DV_MSG_DIGEST) {
                    uint64_t d[DV_BUCKETS];
                    rc = dv_decode_digest(b.p, b.n, d);
                } else if (TYPES[t] == DV_MSG_SUMMARY) {
                    uint64_t sum[2];
                    rc = dv_decode_summary(b.p, b.n, sum);
                } else {
                    dv_manifest m;
                    rc = dv_decode_manifest(b.p, b.n, &m);
                    if (rc == DV_OK)
                        dv_manifest_free(&m);
                }
                fail_after = -1;
                cr_assert(rc == DV_OK || rc == DV_ENOMEM, "type %d fail at %ld: %d", TYPES[t], k,
                          rc);
                cr_assert_eq(live_blocks, live0, "leak under allocation failure");
            }
            dv_buf_free(&b);
        }
    }
}

/* ---- random corruption ---- */

static size_t mutate(uint8_t *p, size_t n, size_t cap) {
    int k = 1 + (int)rnd_below(4);
    for (int i = 0; i < k; i++) {
        switch (rnd_below(9)) {
        case 0: /* flip a bit */
            if (n)
                p[rnd_below(n)] ^= (uint8_t)(1u << rnd_below(8));
            break;
        case 1: /* random byte */
            if (n)
                p[rnd_below(n)] = (uint8_t)rnd();
            break;
        case 2: { /* interesting byte */
            static const uint8_t v[] = {0x00, 0x01, 0x7f, 0x80, 0xff, 0x81};
            if (n)
                p[rnd_below(n)] = v[rnd_below(sizeof(v))];
            break;
        }
        case 3: /* truncate */
            if (n)
                n = rnd_below(n);
            break;
        case 4: /* insert a byte */
            if (n < cap) {
                size_t at = rnd_below(n + 1);
                memmove(p + at + 1, p + at, n - at);
                p[at] = (uint8_t)rnd();
                n++;
            }
            break;
        case 5: /* delete a byte */
            if (n) {
                size_t at = rnd_below(n);
                memmove(p + at, p + at + 1, n - at - 1);
                n--;
            }
            break;
        case 6: /* append junk */
            if (n < cap)
                p[n++] = (uint8_t)rnd();
            break;
        case 7: /* mutate the message type: another decoder's rules apply */
            if (n > 3)
                p[3] = (uint8_t)(1 + rnd_below(4));
            break;
        default: /* flip a bit in the first 24 bytes, where the counts are */
            if (n)
                p[rnd_below(n < 24 ? n : 24)] ^= (uint8_t)(1u << rnd_below(8));
            break;
        }
    }
    return n;
}

Test(codec, random_mutations_never_crash) {
    rng_state = 2024;
    enum { POOL = 48 };
    dv_buf pool[POOL];
    for (int i = 0; i < POOL; i++) {
        dv_buf_init(&pool[i]);
        make_message(&pool[i], TYPES[i % 4]);
    }
    int ok = 0;
    static uint8_t work[16384];
    for (int i = 0; i < 10000; i++) {
        const dv_buf *b = &pool[rnd_below(POOL)];
        size_t n = b->n < sizeof(work) - 64 ? b->n : sizeof(work) - 64;
        memcpy(work, b->p, n);
        n = mutate(work, n, sizeof(work));
        uint8_t *q = dup_exact(work, n);
        int pt = dv_peek_type(q, n);
        cr_assert(pt < 0 || (pt >= DV_MSG_DELTA && pt <= DV_MSG_SUMMARY));
        for (int t = 0; t < NTYPES; t++) {
            int rc = decode_check(TYPES[t], q, n);
            if (rc == DV_OK)
                ok++;
            if (rc == DV_OK)
                cr_assert_eq(pt, TYPES[t], "decoded as %d, peek says %d", t, pt);
        }
        free(q);
    }
    for (int i = 0; i < POOL; i++)
        dv_buf_free(&pool[i]);
    cr_assert_eq(live_blocks, 0);
    cr_assert_gt(ok, 100, "only %d mutations survived: the mutator is too destructive", ok);
}
