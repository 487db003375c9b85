/* replication_nif.c - what the replication protocol calls on a replica: take_outbox (the
 * eager push of local writes), join (a peer's delta), and the anti-entropy round (ctx,
 * digest, summary, summary_match, sync_reply, sync_finish). See replication_nif.h. */
#include "replication_nif.h"

#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include <erl_nif.h>

#include "awmap.h"
#include "codec.h"
#include "lock_nif.h"
#include "replica_nif.h"
#include "term_fast.h"

/* The changed-keys buffers keep their array between flushes up to this size (a burst's goes). */
#define CHANGED_KEEP_BYTES ((size_t)256 << 10)

/* ------------------------------------------------------------------ outbox */

typedef struct {
    ErlNifEnv *env;
    ERL_NIF_TERM list;
} emit_ctx;

static int emit_to_list(void *ud, const uint8_t *p, size_t n) {
    emit_ctx *c = ud;
    c->list = enif_make_list_cell(c->env, bin_term(c->env, p, n), c->list);
    return DV_OK;
}

/* The read value now of each locally changed key: [{:add, k, v} | {:remove, k}] */
static ERL_NIF_TERM local_diffs(ErlNifEnv *env, replica *r, const dv_buf *changed) {
    ERL_NIF_TERM list = enif_make_list(env, 0);
    const uint8_t *p = changed->p, *k;
    size_t len;
    while (next_bytes(&p, changed->p + changed->n, &k, &len)) {
        dv_read rd;
        ERL_NIF_TERM kt = decode_term(env, &r->atoms, k, len);
        if (dv_map_get(r->map, k, (uint32_t)len, &rd))
            list = enif_make_list_cell(
                env, enif_make_tuple3(env, A_ADD, kt, decode_term(env, &r->atoms, rd.val, rd.vlen)),
                list);
        else
            list = enif_make_list_cell(env, enif_make_tuple2(env, A_REMOVE, kt), list);
    }
    return reverse_list(env, list);
}

/* take_outbox(replica, max_bytes, ship) -> {[delta_bin], local_diffs} (both may be empty)
 *                                         | {:dropped, local_diffs}
 * Flips the write log under the lock and encodes the full one outside it. When the log was
 * empty it re-arms the flush notification; otherwise the caller must call again later (it
 * sends itself :drove_flush). With ship = false (no neighbour to push to) a non-empty log is
 * emptied without being encoded and the answer is :dropped: the caller polls again just the
 * same; anti-entropy gives a neighbour that comes later everything. Normal scheduler for
 * small logs, dirty above DIRTY_OUTBOX_OPS when shipping. */
ERL_NIF_TERM dv_take_outbox_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    nif_call call = call_of(env, "take_outbox", dv_take_outbox_nif, 3, argc, argv);
    replica *r;
    ErlNifUInt64 max;
    bool ship;
    if (!get_replica(env, argv[0], &r) || !enif_get_uint64(env, argv[1], &max) || max == 0 ||
        !get_bool(env, argv[2], &ship))
        return enif_make_badarg(env);
    ERL_NIF_TERM busy;
    if (!lock_call(&call, r, &busy))
        return busy;
    if (!call.dirty && ship && dv_outbox_ops(&r->log[r->cur]) > DIRTY_OUTBOX_OPS) {
        enif_mutex_unlock(r->lock);
        return run_dirty(&call);
    }
    ERL_NIF_TERM empty = enif_make_list(env, 0);
    if (r->taking) { /* another caller is encoding: nothing for this one */
        enif_mutex_unlock(r->lock);
        return enif_make_tuple2(env, empty, empty);
    }
    if (dv_outbox_empty(&r->log[r->cur]) && r->changed[r->cur].n == 0) {
        /* nothing new: writers notify the owner again from now on */
        r->flush_pending = false;
        enif_mutex_unlock(r->lock);
        return enif_make_tuple2(env, empty, empty);
    }
    if (!ship) { /* nobody to push to: the log goes, notifications stay off as below */
        ERL_NIF_TERM diffs =
            r->changed[r->cur].n ? local_diffs(env, r, &r->changed[r->cur]) : empty;
        dv_outbox_reset(&r->log[r->cur]);
        dv_buf_reset_trim(&r->changed[r->cur], CHANGED_KEEP_BYTES);
        enif_mutex_unlock(r->lock);
        return enif_make_tuple2(env, A_DROPPED, diffs);
    }
    /* Something to ship: notifications stay off. The owner polls again (a message to
     * itself) until a take finds the log empty, so a burst of writes costs the writers no
     * message each, and the owner ships them in batches. */
    int old = r->cur;
    r->cur ^= 1;
    r->taking = true;
    enif_mutex_unlock(r->lock);

    emit_ctx c = {env, empty};
    int rc = dv_outbox_encode(&r->log[old], dv_map_rid(r->map), max, emit_to_list, &c);
    ERL_NIF_TERM diffs = empty;

    enif_mutex_lock(r->lock);
    if (r->changed[old].n)
        diffs = local_diffs(env, r, &r->changed[old]);
    dv_outbox_reset(&r->log[old]);
    dv_buf_reset_trim(&r->changed[old], CHANGED_KEEP_BYTES);
    r->taking = false;
    enif_mutex_unlock(r->lock);
    if (rc != DV_OK)
        return error_tuple(env, rc);
    return enif_make_tuple2(env, reverse_list(env, c.list), diffs);
}

/* ------------------------------------------------------------------ join */

typedef struct {
    ErlNifEnv *env;
    tf_atom_cache *atoms;
    ERL_NIF_TERM list;
    /* optional: the joined delta's elements, already decoded (kt/vt[i] of d->elems[i]) */
    const dv_delta *d;
    const ERL_NIF_TERM *kt, *vt;
} diff_ctx;

static void diff_to_list(void *ud, const uint8_t *key, uint32_t klen, const dv_read *now) {
    diff_ctx *c = ud;
    size_t i = 0, n = now && c->d ? c->d->nelems : 0;
    while (i < n &&
           !(c->d->elems[i].dot.rid == now->dot.rid && c->d->elems[i].dot.ctr == now->dot.ctr))
        i++;
    ERL_NIF_TERM e;
    if (i < n) /* the winner came in the delta: its terms are decoded already */
        e = enif_make_tuple3(c->env, A_ADD, c->kt[i], c->vt[i]);
    else if (now)
        e = enif_make_tuple3(c->env, A_ADD, decode_term(c->env, c->atoms, key, klen),
                             decode_term(c->env, c->atoms, now->val, now->vlen));
    else
        e = enif_make_tuple2(c->env, A_REMOVE, decode_term(c->env, c->atoms, key, klen));
    c->list = enif_make_list_cell(c->env, e, c->list);
}

/* Decodes a complete external term of a peer's delta into *t: false if it is not one. */
static bool decode_valid(ErlNifEnv *env, tf_atom_cache *atoms, const uint8_t *p, size_t n,
                         ERL_NIF_TERM *t) {
    return n > 0 && (tf_decode(env, atoms, p, n, t) || enif_binary_to_term(env, p, n, t, 0) == n);
}

/* Every key and value of a peer's delta must be a complete external term. */
static bool delta_terms_valid(const dv_delta *d) {
    if (d->nelems == 0)
        return true;
    ErlNifEnv *scratch = enif_alloc_env();
    tf_atom_cache *atoms = enif_alloc(sizeof(*atoms));
    bool ok = scratch && atoms;
    if (atoms)
        memset(atoms, 0, sizeof(*atoms));
    for (size_t i = 0; i < d->nelems && ok; i++) {
        ok = valid_term(scratch, atoms, d->elems[i].key, d->elems[i].klen) &&
             valid_term(scratch, atoms, d->elems[i].val, d->elems[i].vlen);
        if ((i & 255) == 255)
            enif_clear_env(scratch);
    }
    if (scratch)
        enif_free_env(scratch);
    if (atoms)
        enif_free(atoms);
    return ok;
}

/* Does the delta name a dot of this replica that it never issued? Only this replica makes
 * dots with its rid, and its counter only grows, so no honest peer can have seen one: the
 * message is corrupt (a flipped bit in a counter) or forged, and joining it would advance
 * this replica's context past dots it never made. With the lock held. */
static bool claims_unissued_dots(const dv_map *m, const dv_delta *d) {
    uint64_t rid = dv_map_rid(m);
    uint64_t max = dv_ctx_max(dv_map_ctx(m), rid);
    for (size_t i = 0; i < d->nranges; i++)
        if (d->ranges[i].rid == rid && d->ranges[i].hi > max)
            return true;
    for (size_t i = 0; i < d->nelems; i++)
        if (d->elems[i].dot.rid == rid && d->elems[i].dot.ctr > max)
            return true;
    return false;
}

/* Deltas of at most this many elements (the eager pushes) are joined on a normal scheduler
 * by join_small: their keys and values are decoded once, under the lock, into the caller's
 * env, both to validate them and to report the diffs. */
#define JOIN_DECODE_ONCE 64

static ERL_NIF_TERM join_small(const nif_call *call, replica *r, dv_delta *d, bool want) {
    ErlNifEnv *env = call->env;
    if (!spin_trylock(r->lock)) {
        dv_delta_free(d);
        return run_dirty(call);
    }
    ERL_NIF_TERM kt[JOIN_DECODE_ONCE], vt[JOIN_DECODE_ONCE];
    int rc = claims_unissued_dots(r->map, d) ? DV_ECORRUPT : DV_OK;
    bool valid = true;
    for (size_t i = 0; rc == DV_OK && valid && i < d->nelems; i++) {
        const dv_elem_view *x = &d->elems[i];
        valid = decode_valid(env, &r->atoms, x->key, x->klen, &kt[i]) &&
                decode_valid(env, &r->atoms, x->val, x->vlen, &vt[i]);
    }
    diff_ctx c = {env, &r->atoms, enif_make_list(env, 0), d, kt, vt};
    if (rc == DV_OK && valid)
        rc = dv_map_join(r->map, d, want ? diff_to_list : NULL, &c);
    enif_mutex_unlock(r->lock);
    size_t n = d->nelems;
    dv_delta_free(d);
    if (!valid)
        return error_tuple(env, DV_EBADTERM);
    if (rc != DV_OK)
        return error_tuple(env, rc);
    return enif_make_tuple3(env, A_OK, reverse_list(env, c.list), enif_make_uint64(env, n));
}

/* join(replica, delta_bin, want_diffs) -> {:ok, diffs, n_elements} | {:error, reason}.
 * A bad message changes nothing. Size-dispatched: big messages are joined dirty; small ones
 * (JOIN_DECODE_ONCE) by join_small. */
ERL_NIF_TERM dv_join_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    nif_call call = call_of(env, "join", dv_join_nif, 3, argc, argv);
    replica *r;
    ErlNifBinary b;
    bool want;
    if (!get_replica(env, argv[0], &r) || !get_bin(env, argv[1], &b) ||
        !get_bool(env, argv[2], &want))
        return enif_make_badarg(env);
    if (!call.dirty && b.size >= DIRTY_JOIN_BYTES)
        return run_dirty(&call);
    dv_delta d;
    int rc = dv_decode_delta(b.data, b.size, &d); /* outside the lock: pure */
    if (rc != DV_OK)
        return error_tuple(env, rc);
    if (!call.dirty && d.nelems <= JOIN_DECODE_ONCE)
        return join_small(&call, r, &d, want);
    if (!delta_terms_valid(&d)) {
        dv_delta_free(&d);
        return error_tuple(env, DV_EBADTERM);
    }
    if (call.dirty) {
        enif_mutex_lock(r->lock);
    } else if (!spin_trylock(r->lock)) {
        dv_delta_free(&d);
        return run_dirty(&call);
    }
    if (claims_unissued_dots(r->map, &d)) {
        enif_mutex_unlock(r->lock);
        dv_delta_free(&d);
        return error_tuple(env, DV_ECORRUPT);
    }
    diff_ctx c = {env, &r->atoms, enif_make_list(env, 0), NULL, NULL, NULL};
    rc = dv_map_join(r->map, &d, want ? diff_to_list : NULL, &c);
    enif_mutex_unlock(r->lock);
    size_t n = d.nelems;
    dv_delta_free(&d);
    if (rc != DV_OK)
        return error_tuple(env, rc);
    return enif_make_tuple3(env, A_OK, reverse_list(env, c.list), enif_make_uint64(env, n));
}

/* ------------------------------------------------------------------ anti-entropy */

/* ctx(replica) -> ctx_bin. Small (a few ranges per replica id ever seen); normal. */
ERL_NIF_TERM dv_ctx_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    nif_call call = call_of(env, "ctx", dv_ctx_nif, 1, argc, argv);
    ERL_NIF_TERM busy;
    replica *r;
    if (!get_replica(env, argv[0], &r))
        return enif_make_badarg(env);
    dv_buf b;
    dv_buf_init(&b);
    if (!lock_call(&call, r, &busy))
        return busy;
    dv_encode_ctx(&b, dv_map_ctx(r->map));
    enif_mutex_unlock(r->lock);
    ERL_NIF_TERM t = b.oom ? error_tuple(env, DV_ENOMEM) : bin_term(env, b.p, b.n);
    dv_buf_free(&b);
    return t;
}

/* digest(replica) -> digest_bin (8 KiB copy of incrementally kept digests); normal. */
ERL_NIF_TERM dv_digest_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    nif_call call = call_of(env, "digest", dv_digest_nif, 1, argc, argv);
    ERL_NIF_TERM busy;
    replica *r;
    if (!get_replica(env, argv[0], &r))
        return enif_make_badarg(env);
    uint64_t d[DV_BUCKETS];
    if (!lock_call(&call, r, &busy))
        return busy;
    dv_map_digest(r->map, d);
    enif_mutex_unlock(r->lock);
    dv_buf b;
    dv_buf_init(&b);
    dv_encode_digest(&b, d, DV_BUCKETS);
    ERL_NIF_TERM t = b.oom ? error_tuple(env, DV_ENOMEM) : bin_term(env, b.p, b.n);
    dv_buf_free(&b);
    return t;
}

/* summary(replica) -> summary_bin: hashes of the context and of the digests (codec.h), what
 * an anti-entropy round sends first; the full digests follow only when the peer's differs.
 * Normal: a copy of the small context and one hash over 8 KiB. */
ERL_NIF_TERM dv_summary_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    nif_call call = call_of(env, "summary", dv_summary_nif, 1, argc, argv);
    ERL_NIF_TERM busy;
    replica *r;
    if (!get_replica(env, argv[0], &r))
        return enif_make_badarg(env);
    uint64_t s[2], d[DV_BUCKETS];
    if (!lock_call(&call, r, &busy))
        return busy;
    dv_map_digest(r->map, d);
    int rc = dv_summary_of(dv_map_ctx(r->map), d, s);
    enif_mutex_unlock(r->lock);
    if (rc != DV_OK)
        return error_tuple(env, rc);
    dv_buf b;
    dv_buf_init(&b);
    dv_encode_summary(&b, s);
    ERL_NIF_TERM t = b.oom ? error_tuple(env, DV_ENOMEM) : bin_term(env, b.p, b.n);
    dv_buf_free(&b);
    return t;
}

/* summary_match(replica, peer_summary_bin) -> true | false | {:error, reason}
 * Whether the peer's summary equals this replica's: then the two have seen the same dots and
 * hold the same live ones (but for a 64-bit hash collision) and the round is skipped. */
ERL_NIF_TERM dv_summary_match_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    nif_call call = call_of(env, "summary_match", dv_summary_match_nif, 2, argc, argv);
    ERL_NIF_TERM busy;
    replica *r;
    ErlNifBinary b;
    if (!get_replica(env, argv[0], &r) || !get_bin(env, argv[1], &b))
        return enif_make_badarg(env);
    uint64_t peer[2], mine[2], d[DV_BUCKETS];
    int rc = dv_decode_summary(b.data, b.size, peer); /* outside the lock: pure */
    if (rc != DV_OK)
        return error_tuple(env, rc);
    if (!lock_call(&call, r, &busy))
        return busy;
    dv_map_digest(r->map, d);
    rc = dv_summary_of(dv_map_ctx(r->map), d, mine);
    enif_mutex_unlock(r->lock);
    if (rc != DV_OK)
        return error_tuple(env, rc);
    return (peer[0] == mine[0] && peer[1] == mine[1]) ? A_TRUE : A_FALSE;
}

/* sync_reply(replica, peer_ctx_bin, peer_digest_bin, max_bytes, max_dots)
 *   -> {:ok, [delta_bin], my_ctx_bin, manifest_bin} | {:error, reason}
 * What the peer has not seen, then this replica's context and, taken after it under the same
 * lock, the manifest of the buckets whose digests differ. Dirty: O(map). */
ERL_NIF_TERM dv_sync_reply_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    replica *r;
    ErlNifBinary cb, db;
    ErlNifUInt64 max_bytes, max_dots;
    if (!get_replica(env, argv[0], &r) || !get_bin(env, argv[1], &cb) ||
        !get_bin(env, argv[2], &db) || !enif_get_uint64(env, argv[3], &max_bytes) ||
        !enif_get_uint64(env, argv[4], &max_dots) || max_bytes == 0)
        return enif_make_badarg(env);
    dv_ctx peer;
    dv_ctx_init(&peer);
    uint64_t *digest = enif_alloc(sizeof(uint64_t) * DV_BUCKETS);
    if (!digest)
        return error_tuple(env, DV_ENOMEM);
    int rc = dv_decode_ctx(cb.data, cb.size, &peer);
    if (rc == DV_OK)
        rc = dv_decode_digest(db.data, db.size, digest);
    if (rc != DV_OK) {
        dv_ctx_free(&peer);
        enif_free(digest);
        return error_tuple(env, rc);
    }
    emit_ctx c = {env, enif_make_list(env, 0)};
    dv_buf ctxb, man;
    dv_buf_init(&ctxb);
    dv_buf_init(&man);
    enif_mutex_lock(r->lock);
    rc = dv_map_delta_since(r->map, &peer, max_bytes, emit_to_list, &c);
    if (rc == DV_OK) {
        dv_encode_ctx(&ctxb, dv_map_ctx(r->map));
        rc = ctxb.oom ? DV_ENOMEM : dv_map_manifest(r->map, digest, max_dots, &man, NULL);
    }
    enif_mutex_unlock(r->lock);
    ERL_NIF_TERM res =
        rc != DV_OK ? error_tuple(env, rc)
                    : enif_make_tuple4(env, A_OK, reverse_list(env, c.list),
                                       bin_term(env, ctxb.p, ctxb.n), bin_term(env, man.p, man.n));
    dv_buf_free(&ctxb);
    dv_buf_free(&man);
    dv_ctx_free(&peer);
    enif_free(digest);
    return res;
}

/* sync_finish(replica, peer_ctx_bin, peer_manifest_bin, max_bytes, want_diffs)
 *   -> {:ok, [delta_bin_for_peer], local_diffs, removed_here} | {:error, reason}
 * Applies the removals the peer's manifest proves, and returns what the peer has not seen
 * plus the removals it has not made. Dirty: O(map). */
ERL_NIF_TERM dv_sync_finish_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    replica *r;
    ErlNifBinary cb, mb;
    ErlNifUInt64 max_bytes;
    bool want;
    if (!get_replica(env, argv[0], &r) || !get_bin(env, argv[1], &cb) ||
        !get_bin(env, argv[2], &mb) || !enif_get_uint64(env, argv[3], &max_bytes) ||
        max_bytes == 0 || !get_bool(env, argv[4], &want))
        return enif_make_badarg(env);
    dv_ctx peer;
    dv_ctx_init(&peer);
    dv_manifest pm;
    int rc = dv_decode_ctx(cb.data, cb.size, &peer);
    if (rc != DV_OK)
        return error_tuple(env, rc);
    if ((rc = dv_decode_manifest(mb.data, mb.size, &pm)) != DV_OK) {
        dv_ctx_free(&peer);
        return error_tuple(env, rc);
    }
    diff_ctx dc = {env, &r->atoms, enif_make_list(env, 0), NULL, NULL, NULL};
    emit_ctx c = {env, enif_make_list(env, 0)};
    dv_buf rem;
    dv_buf_init(&rem);
    size_t removed = 0, nrem = 0;
    enif_mutex_lock(r->lock);
    rc = dv_map_apply_peer_removals(r->map, &peer, &pm, want ? diff_to_list : NULL, &dc, &removed);
    if (rc == DV_OK)
        rc = dv_map_delta_since(r->map, &peer, max_bytes, emit_to_list, &c);
    if (rc == DV_OK)
        rc = dv_map_removals_for(r->map, &pm, &rem, &nrem);
    enif_mutex_unlock(r->lock);
    if (rc == DV_OK && nrem)
        emit_to_list(&c, rem.p, rem.n);
    ERL_NIF_TERM res =
        rc != DV_OK ? error_tuple(env, rc)
                    : enif_make_tuple4(env, A_OK, reverse_list(env, c.list),
                                       reverse_list(env, dc.list), enif_make_uint64(env, removed));
    dv_buf_free(&rem);
    dv_manifest_free(&pm);
    dv_ctx_free(&peer);
    return res;
}
