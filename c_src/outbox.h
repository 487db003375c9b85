/* outbox.h - the log of local writes not yet pushed to neighbours.
 *
 * A put appends its element, already in wire encoding, and the dots it observed (which the
 * put removes); a remove appends the dots it observed. Appending costs a memcpy, no
 * allocation in the steady state, so the write path stays cheap; the owner swaps the log out
 * under the replica lock and encodes it outside the lock.
 *
 * Encoding coalesces: an element removed by a later operation of the same log is not
 * shipped, only its dot (as removed). The log is cut into messages of about max_bytes at
 * operation boundaries; each message carries the ranges of exactly the dots of its
 * operations, and every one of those dots is either carried or was removed by this
 * replica, so each message is an authoritative delta on its own (awmap.h).
 */
#ifndef DROVE_OUTBOX_H
#define DROVE_OUTBOX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "codec.h"
#include "dots.h"

typedef struct {
    size_t elem_off; /* offset of the encoded element in elems, or SIZE_MAX for a remove */
    size_t elem_len;
    dv_dot dot; /* the new dot of a put */
    size_t obs_off;
    size_t nobs;
} dv_op;

typedef struct {
    dv_buf elems;
    dv_op *ops;
    size_t nops, capops;
    dv_dot *obs;
    size_t nobs, capobs;
} dv_outbox;

void dv_outbox_init(dv_outbox *o);
void dv_outbox_free(dv_outbox *o);
void dv_outbox_reset(dv_outbox *o); /* empty, keeping the memory of a small log */
bool dv_outbox_empty(const dv_outbox *o);
size_t dv_outbox_ops(const dv_outbox *o);

int dv_outbox_put(dv_outbox *o, const uint8_t *k, uint32_t klen, dv_dot dot, uint64_t ts,
                  const uint8_t *v, uint32_t vlen, const dv_dot *observed, size_t nobs);
int dv_outbox_remove(dv_outbox *o, const dv_dot *observed, size_t nobs);
/* Appends every operation of src to dst, in order (dst is unchanged on DV_ENOMEM). */
int dv_outbox_append(dv_outbox *dst, const dv_outbox *src);

/* DELTA messages of about max_bytes each, in log order, to emit (see awmap.h, dv_emit_fn). */
int dv_outbox_encode(const dv_outbox *o, uint64_t sender, size_t max_bytes,
                     int (*emit)(void *ud, const uint8_t *p, size_t n), void *ud);

#endif
