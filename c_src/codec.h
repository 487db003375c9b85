/* codec.h - versioned, length-prefixed wire format for deltas, contexts, digests, manifests.
 *
 * Every message starts with the 4-byte header  'D' 'V' <version> <type>.  Integers are
 * unsigned LEB128 varints (at most 10 bytes, canonical: no redundant trailing zero groups)
 * except replica ids, which are 8 bytes little-endian. Byte strings are a varint length
 * followed by the bytes. Decoders check every read against the end of the buffer, every
 * count against what the remaining bytes could possibly hold, every range and dot against
 * the rules of dots.h, and reject trailing bytes. A decoder either fills its output
 * completely and returns DV_OK, or returns a negative error and leaves nothing allocated.
 *
 *  DELTA    sender:u64  nranges:v  { rid:u64 lo:v span:v }*  nelems:v  ELEM*
 *           ELEM = key:bytes rid:u64 ctr:v ts:v value:bytes      (hi = lo + span)
 *  CTX      nranges:v  { rid:u64 lo:v span:v }*
 *  DIGEST   nbuckets:v  { u64 }*                                   (nbuckets == DV_BUCKETS)
 *  MANIFEST nbuckets:v  { bucket:v }*  ndots:v  { rid:u64 ctr:v }*  (buckets strictly rising)
 *  SUMMARY  ctx_hash:u64  digest_hash:u64
 *           hashes of a replica's encoded CTX and of its DV_BUCKETS digest words (little-endian):
 *           two replicas with equal summaries have, but for a hash collision, seen the same
 *           dots and hold the same live ones, so an anti-entropy round between them is skipped.
 */
#ifndef DROVE_CODEC_H
#define DROVE_CODEC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "dots.h"
#include "errors.h"

#define DV_WIRE_VERSION 1
#define DV_BUCKETS      1024
/* Largest message any decoder accepts, and largest key or value. */
#define DV_MAX_MESSAGE ((size_t)1 << 28)
/* Largest timestamp accepted (hybrid logical clock, see awmap.h). */
#define DV_MAX_TS (((uint64_t)1 << 63) - 1)

enum {
    DV_MSG_DELTA = 1,
    DV_MSG_CTX = 2,
    DV_MSG_DIGEST = 3,
    DV_MSG_MANIFEST = 4,
    DV_MSG_SUMMARY = 5,
};

/* ---- growable output buffer ---- */
typedef struct {
    uint8_t *p;
    size_t n;
    size_t cap;
    bool oom; /* sticky: set when any append failed */
} dv_buf;

void dv_buf_init(dv_buf *b);
void dv_buf_free(dv_buf *b);
void dv_buf_reset(dv_buf *b);
/* Empties b, and gives its array back when it holds more than keep bytes (after a burst). */
void dv_buf_reset_trim(dv_buf *b, size_t keep);
void dv_buf_put(dv_buf *b, const void *p, size_t n);
void dv_buf_u8(dv_buf *b, uint8_t v);
void dv_buf_u64le(dv_buf *b, uint64_t v);
void dv_buf_varint(dv_buf *b, uint64_t v);
void dv_buf_bytes(dv_buf *b, const uint8_t *p, size_t n); /* varint length + bytes */
size_t dv_varint_len(uint64_t v);

/* ---- decoded views (pointers into the input buffer) ---- */
typedef struct {
    const uint8_t *key;
    const uint8_t *val;
    uint32_t klen;
    uint32_t vlen;
    dv_dot dot;
    uint64_t ts;
} dv_elem_view;

typedef struct {
    uint64_t sender;
    dv_range *ranges;
    size_t nranges;
    dv_elem_view *elems;
    size_t nelems;
} dv_delta;

typedef struct {
    uint32_t *buckets;
    size_t nbuckets;
    dv_dot *dots;
    size_t ndots;
} dv_manifest;

/* ---- encoders ---- */
void dv_encode_header(dv_buf *b, uint8_t type);
/* Bytes one element takes on the wire (for chunking decisions). */
size_t dv_elem_wire_size(uint32_t klen, dv_dot dot, uint64_t ts, uint32_t vlen);
void dv_encode_elem(dv_buf *elems, const uint8_t *key, uint32_t klen, dv_dot dot, uint64_t ts,
                    const uint8_t *val, uint32_t vlen);
/* A DELTA from ranges and nelems already-encoded elements. */
void dv_encode_delta(dv_buf *out, uint64_t sender, const dv_range *r, size_t nr,
                     const uint8_t *elems, size_t elems_len, size_t nelems);
void dv_encode_ctx(dv_buf *out, const dv_ctx *c);
void dv_encode_digest(dv_buf *out, const uint64_t *d, size_t n);
void dv_encode_manifest(dv_buf *out, const uint32_t *buckets, size_t nb, const dv_dot *dots,
                        size_t nd);
/* The summary of a context and a digest (see SUMMARY above); DV_OK or DV_ENOMEM. */
int dv_summary_of(const dv_ctx *c, const uint64_t digest[DV_BUCKETS], uint64_t out[2]);
void dv_encode_summary(dv_buf *out, const uint64_t s[2]);

/* ---- decoders ---- */
/* Message type after checking magic and version, or a negative error. */
int dv_peek_type(const uint8_t *p, size_t n);
int dv_decode_delta(const uint8_t *p, size_t n, dv_delta *out);
void dv_delta_free(dv_delta *d);
int dv_decode_ctx(const uint8_t *p, size_t n, dv_ctx *out); /* out: initialised, replaced */
int dv_decode_digest(const uint8_t *p, size_t n, uint64_t out[DV_BUCKETS]);
int dv_decode_manifest(const uint8_t *p, size_t n, dv_manifest *out);
int dv_decode_summary(const uint8_t *p, size_t n, uint64_t out[2]);
void dv_manifest_free(dv_manifest *m);

#endif
