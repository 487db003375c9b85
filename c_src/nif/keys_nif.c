/* keys_nif.c - the single-key calls on a replica: put, get, delete, their term forms
 * (put_t, get_t, delete_t), put_new, holds, remove_value(s), and the fast term codec alone
 * (encode, decode). See keys_nif.h. */
#include "keys_nif.h"

#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include <erl_nif.h>

#include "lock_nif.h"
#include "replica_nif.h"
#include "term_fast.h"

/* put(replica, key_bin, value_bin) -> :ok. Key and value are external term format. */
ERL_NIF_TERM dv_put_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    nif_call call = call_of(env, "put", dv_put_nif, 3, argc, argv);
    ERL_NIF_TERM busy;
    replica *r;
    ErlNifBinary k, v;
    if (!replica_key_value(env, argv, &r, &k, &v))
        return enif_make_badarg(env);
    if (!call.dirty && v.size > DIRTY_VALUE_BYTES)
        return run_dirty(&call);
    if (!lock_call(&call, r, &busy))
        return busy;
    bool changed = false;
    int rc = dv_map_put_log(r->map, k.data, (uint32_t)k.size, v.data, (uint32_t)v.size, wall_ms(),
                            cur_log(r), &changed);
    return end_write(env, r, rc, &k, changed);
}

/* delete(replica, key_bin) -> :ok */
ERL_NIF_TERM dv_delete_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    nif_call call = call_of(env, "delete", dv_delete_nif, 2, argc, argv);
    ERL_NIF_TERM busy;
    replica *r;
    ErlNifBinary k;
    if (!get_replica(env, argv[0], &r) || !get_bin(env, argv[1], &k))
        return enif_make_badarg(env);
    if (!lock_call(&call, r, &busy))
        return busy;
    bool changed = false;
    int rc = dv_map_remove_log(r->map, k.data, (uint32_t)k.size, cur_log(r), &changed);
    return end_write(env, r, rc, &k, changed);
}

/* get(replica, key_bin) -> {:ok, value} | :error */
ERL_NIF_TERM dv_get_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    nif_call call = call_of(env, "get", dv_get_nif, 2, argc, argv);
    ERL_NIF_TERM busy;
    replica *r;
    ErlNifBinary k;
    if (!get_replica(env, argv[0], &r) || !get_bin(env, argv[1], &k))
        return enif_make_badarg(env);
    if (!lock_call(&call, r, &busy))
        return busy;
    dv_read rd;
    ERL_NIF_TERM res = A_ERROR;
    bool found = dv_map_get(r->map, k.data, (uint32_t)k.size, &rd);
    if (found && !call.dirty && rd.vlen > DIRTY_VALUE_BYTES) {
        enif_mutex_unlock(r->lock);
        return run_dirty(&call);
    }
    if (found)
        res = enif_make_tuple2(env, A_OK, decode_term(env, &r->atoms, rd.val, rd.vlen));
    enif_mutex_unlock(r->lock);
    return res;
}

/* ------------------------------------------------------------------ calls with terms
 *
 * put_t, get_t and delete_t take the key and value terms and encode them here (term_fast.h),
 * before taking the lock: the common write and read then cost the caller one NIF call and no
 * garbage. A term the encoder does not handle (or one encoding to more than TERM_MAX bytes,
 * which term_to_binary encodes with reduction counting) gives :fallback, and the caller
 * encodes with term_to_binary and calls put/get/delete. */
#define TERM_STACK 256

enum term_op { OP_PUT, OP_GET, OP_DELETE };

/* The body of put_t, get_t and delete_t. When the lock is busy they go dirty at once (they
 * do not yield first). */
static ERL_NIF_TERM term_op(const nif_call *call, enum term_op op) {
    ErlNifEnv *env = call->env;
    const ERL_NIF_TERM *argv = call->argv;
    bool dirty = call->dirty;
    replica *r;
    if (!get_replica(env, argv[0], &r))
        return enif_make_badarg(env);
    uint8_t kstack[TERM_STACK], vstack[TERM_STACK];
    tf_buf k, v;
    tf_buf_init(&k, kstack, sizeof(kstack), TERM_MAX);
    tf_buf_init(&v, vstack, sizeof(vstack), TERM_MAX);
    ERL_NIF_TERM res = A_FALLBACK;
    if (!tf_encode(env, argv[1], &k) || (op == OP_PUT && !tf_encode(env, argv[2], &v)))
        goto out;
    if (dirty) {
        enif_mutex_lock(r->lock);
    } else if (!spin_trylock(r->lock)) {
        res = reschedule_busy(call, r, false);
        goto out;
    }
    if (op == OP_GET) {
        dv_read rd;
        bool found = dv_map_get(r->map, k.p, (uint32_t)k.n, &rd);
        if (found && !dirty && rd.vlen > DIRTY_VALUE_BYTES) { /* decode it on a dirty one */
            enif_mutex_unlock(r->lock);
            res = run_dirty(call);
            goto out;
        }
        res = found ? enif_make_tuple2(env, A_OK, decode_term(env, &r->atoms, rd.val, rd.vlen))
                    : A_ERROR;
        enif_mutex_unlock(r->lock);
        goto out;
    }
    bool changed = false;
    int rc = op == OP_PUT ? dv_map_put_log(r->map, k.p, (uint32_t)k.n, v.p, (uint32_t)v.n,
                                           wall_ms(), cur_log(r), &changed)
                          : dv_map_remove_log(r->map, k.p, (uint32_t)k.n, cur_log(r), &changed);
    if (rc == DV_OK && changed)
        note_change(r, k.p, k.n);
    if (rc == DV_OK)
        maybe_notify(env, r);
    enif_mutex_unlock(r->lock);
    res = rc == DV_OK ? A_OK : error_tuple(env, rc);
out:
    tf_buf_free(&k);
    tf_buf_free(&v);
    return res;
}

/* put_t(replica, key, value) -> :ok | :fallback | {:error, reason} */
ERL_NIF_TERM dv_put_t_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    nif_call call = call_of(env, "put_t", dv_put_t_nif, 3, argc, argv);
    return term_op(&call, OP_PUT);
}

/* get_t(replica, key) -> {:ok, value} | :error | :fallback */
ERL_NIF_TERM dv_get_t_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    nif_call call = call_of(env, "get_t", dv_get_t_nif, 2, argc, argv);
    return term_op(&call, OP_GET);
}

/* delete_t(replica, key) -> :ok | :fallback | {:error, reason} */
ERL_NIF_TERM dv_delete_t_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    nif_call call = call_of(env, "delete_t", dv_delete_t_nif, 2, argc, argv);
    return term_op(&call, OP_DELETE);
}

/* encode(term) -> binary | :fallback: the fast encoder alone, for tests. Normal: bounded by
 * TERM_MAX. */
ERL_NIF_TERM dv_encode_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    uint8_t stack[TERM_STACK];
    tf_buf b;
    tf_buf_init(&b, stack, sizeof(stack), TERM_MAX);
    ERL_NIF_TERM res = tf_encode(env, argv[0], &b) ? bin_term(env, b.p, b.n) : A_FALLBACK;
    tf_buf_free(&b);
    return res;
}

/* decode(binary) -> {:ok, term} | :fallback: the fast decoder alone, for tests. Normal:
 * bounded by TERM_MAX. */
ERL_NIF_TERM dv_decode_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    ErlNifBinary bin;
    ERL_NIF_TERM t;
    if (!enif_inspect_binary(env, argv[0], &bin) || bin.size > TERM_MAX)
        return enif_make_badarg(env);
    return tf_decode(env, NULL, bin.data, bin.size, &t) ? enif_make_tuple2(env, A_OK, t)
                                                        : A_FALLBACK;
}

/* holds(replica, key_bin, value_bin) -> boolean: whether the read value of key is exactly
 * value_bin (a registrant checking it still wins its key, without decoding anything). */
ERL_NIF_TERM dv_holds_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    nif_call call = call_of(env, "holds", dv_holds_nif, 3, argc, argv);
    ERL_NIF_TERM busy;
    replica *r;
    ErlNifBinary k, v;
    if (!replica_key_value(env, argv, &r, &k, &v))
        return enif_make_badarg(env);
    if (!lock_call(&call, r, &busy))
        return busy;
    dv_read rd;
    bool same = dv_map_get(r->map, k.data, (uint32_t)k.size, &rd) && rd.vlen == v.size &&
                memcmp(rd.val, v.data, v.size) == 0;
    enif_mutex_unlock(r->lock);
    return same ? A_TRUE : A_FALSE;
}

static int emit_one(void *ud, const uint8_t *p, size_t n) {
    dv_buf *out = ud;
    if (out->n) /* one operation is one message: a second would be a bug */
        return DV_EINVAL;
    dv_buf_put(out, p, n);
    return out->oom ? DV_ENOMEM : DV_OK;
}

/* The body of put_new and put_new_delta: check-and-put under one lock hold, the put only if
 * the key has no element. With `delta`, the write goes to a log of its own first, encoded
 * alone (outside the lock) for the answer, then to the write log as any other. */
static ERL_NIF_TERM put_new_body(const nif_call *call, bool delta) {
    ErlNifEnv *env = call->env;
    ERL_NIF_TERM busy;
    replica *r;
    ErlNifBinary k, v;
    if (!replica_key_value(env, call->argv, &r, &k, &v))
        return enif_make_badarg(env);
    if (!call->dirty && v.size > DIRTY_VALUE_BYTES)
        return run_dirty(call);
    if (!lock_call(call, r, &busy))
        return busy;
    dv_read rd;
    if (dv_map_get(r->map, k.data, (uint32_t)k.size, &rd)) {
        if (!call->dirty && rd.vlen > DIRTY_VALUE_BYTES) {
            enif_mutex_unlock(r->lock);
            return run_dirty(call);
        }
        ERL_NIF_TERM res =
            enif_make_tuple2(env, A_EXISTS, decode_term(env, &r->atoms, rd.val, rd.vlen));
        enif_mutex_unlock(r->lock);
        return res;
    }
    dv_outbox one;
    dv_outbox_init(&one);
    bool changed = false;
    int rc = dv_map_put_log(r->map, k.data, (uint32_t)k.size, v.data, (uint32_t)v.size, wall_ms(),
                            delta ? &one : cur_log(r), &changed);
    /* the map holds the write from here: a failure below loses only its eager push and
     * its answer (anti-entropy repairs the push; the caller is told) */
    if (rc == DV_OK && delta && cur_log(r))
        rc = dv_outbox_append(cur_log(r), &one);
    if (rc == DV_OK && changed)
        note_change(r, k.data, k.size);
    if (rc == DV_OK)
        maybe_notify(env, r);
    uint64_t rid = dv_map_rid(r->map);
    enif_mutex_unlock(r->lock);
    ERL_NIF_TERM res = rc == DV_OK ? A_OK : error_tuple(env, rc);
    if (rc == DV_OK && delta) {
        dv_buf out;
        dv_buf_init(&out);
        rc = dv_outbox_encode(&one, rid, SIZE_MAX, emit_one, &out);
        res = rc == DV_OK ? enif_make_tuple2(env, A_OK, bin_term(env, out.p, out.n))
                          : error_tuple(env, rc);
        dv_buf_free(&out);
    }
    dv_outbox_free(&one);
    return res;
}

/* put_new(replica, key_bin, value_bin) -> :ok | {:exists, current_value} */
ERL_NIF_TERM dv_put_new_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    nif_call call = call_of(env, "put_new", dv_put_new_nif, 3, argc, argv);
    return put_new_body(&call, false);
}

/* put_new_delta(replica, key_bin, value_bin) -> {:ok, delta} | {:exists, current_value}
 * put_new, answering also the write as a DELTA message of its own (what take_outbox would
 * ship for it alone), which any peer may join: the supervisor hands a new child's entry to
 * its caller's node in the start's answer. */
ERL_NIF_TERM dv_put_new_delta_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    nif_call call = call_of(env, "put_new_delta", dv_put_new_delta_nif, 3, argc, argv);
    return put_new_body(&call, true);
}

/* remove_value(replica, key_bin, value_bin) -> :ok
 * Removes only the elements of the key whose value bytes equal value_bin. */
ERL_NIF_TERM dv_remove_value_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    nif_call call = call_of(env, "remove_value", dv_remove_value_nif, 3, argc, argv);
    ERL_NIF_TERM busy;
    replica *r;
    ErlNifBinary k, v;
    if (!replica_key_value(env, argv, &r, &k, &v))
        return enif_make_badarg(env);
    if (!lock_call(&call, r, &busy))
        return busy;
    bool changed = false;
    int rc = dv_map_remove_value_log(r->map, k.data, (uint32_t)k.size, v.data, (uint32_t)v.size,
                                     cur_log(r), &changed);
    return end_write(env, r, rc, &k, changed);
}

/* remove_values(replica, [{key_bin, value_bin}]) -> :ok
 * remove_value for many pairs under one lock hold (a registry dropping the keys of many
 * exited processes at once). The list is checked whole before anything changes. Dirty:
 * O(list). */
ERL_NIF_TERM dv_remove_values_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    replica *r;
    unsigned len;
    if (!get_replica(env, argv[0], &r) || !enif_get_list_length(env, argv[1], &len))
        return enif_make_badarg(env);
    ERL_NIF_TERM head, tail = argv[1];
    while (enif_get_list_cell(env, tail, &head, &tail)) {
        const ERL_NIF_TERM *t;
        int arity;
        ErlNifBinary k, v;
        if (!enif_get_tuple(env, head, &arity, &t) || arity != 2 || !get_bin(env, t[0], &k) ||
            !get_bin(env, t[1], &v))
            return enif_make_badarg(env);
    }
    int rc = DV_OK;
    enif_mutex_lock(r->lock);
    tail = argv[1];
    while (rc == DV_OK && enif_get_list_cell(env, tail, &head, &tail)) {
        const ERL_NIF_TERM *t;
        int arity;
        ErlNifBinary k, v;
        enif_get_tuple(env, head, &arity, &t);
        get_bin(env, t[0], &k);
        get_bin(env, t[1], &v);
        bool changed = false;
        rc = dv_map_remove_value_log(r->map, k.data, (uint32_t)k.size, v.data, (uint32_t)v.size,
                                     cur_log(r), &changed);
        if (rc == DV_OK && changed)
            note_change(r, k.data, k.size);
    }
    if (rc == DV_OK)
        maybe_notify(env, r);
    enif_mutex_unlock(r->lock);
    return rc == DV_OK ? A_OK : error_tuple(env, rc);
}
