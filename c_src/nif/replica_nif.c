/* replica_nif.c - the replica resource: its atoms, argument and term helpers, the tail of a
 * local write, and the NIFs on the replica as a whole (replica_new, set_owner, set_logging,
 * info, to_list). See replica_nif.h for the struct and for where the other NIFs are. */
#include "replica_nif.h"

#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#include <erl_nif.h>

#include "lock_nif.h"

ErlNifResourceType *REPLICA;

ERL_NIF_TERM A_OK, A_ERROR, A_TRUE, A_FALSE, A_ADD, A_REMOVE, A_FLUSH, A_GONE, A_NOPROC,
    A_NOT_LOCAL, A_BAD_TERM, A_EXISTS, A_DROPPED, A_FALLBACK;
static ERL_NIF_TERM A_SIZE, A_ELEMENTS, A_MEMORY, A_PAYLOAD, A_RID, A_REPLICAS, A_CLOUD, A_OUTBOX,
    A_DEFERRED, A_BUSY;

void replica_init_atoms(ErlNifEnv *env) {
    A_OK = mk_atom(env, "ok");
    A_ERROR = mk_atom(env, "error");
    A_TRUE = mk_atom(env, "true");
    A_FALSE = mk_atom(env, "false");
    A_ADD = mk_atom(env, "add");
    A_REMOVE = mk_atom(env, "remove");
    A_FLUSH = mk_atom(env, "drove_flush");
    A_GONE = mk_atom(env, "drove_gone");
    A_NOPROC = mk_atom(env, "noproc");
    A_NOT_LOCAL = mk_atom(env, "not_local");
    A_SIZE = mk_atom(env, "size");
    A_ELEMENTS = mk_atom(env, "elements");
    A_MEMORY = mk_atom(env, "memory");
    A_PAYLOAD = mk_atom(env, "payload");
    A_RID = mk_atom(env, "replica_id");
    A_REPLICAS = mk_atom(env, "replicas_seen");
    A_CLOUD = mk_atom(env, "cloud_dots");
    A_OUTBOX = mk_atom(env, "outbox");
    A_BAD_TERM = mk_atom(env, dv_strerror(DV_EBADTERM));
    A_EXISTS = mk_atom(env, "exists");
    A_DROPPED = mk_atom(env, "dropped");
    A_FALLBACK = mk_atom(env, "fallback");
    A_DEFERRED = mk_atom(env, "exits_deferred");
    A_BUSY = mk_atom(env, "lock_busy");
}

void replica_dtor(ErlNifEnv *env, void *obj) {
    (void)env;
    replica *r = obj;
    dv_map_free(r->map);
    dv_owners_free(&r->owners);
    for (int i = 0; i < 2; i++) {
        dv_outbox_free(&r->log[i]);
        dv_buf_free(&r->changed[i]);
    }
    dv_buf_free(&r->gone);
    dv_buf_free(&r->pend);
    if (r->lock)
        enif_mutex_destroy(r->lock);
    if (r->pend_lock)
        enif_mutex_destroy(r->pend_lock);
}

ERL_NIF_TERM mk_atom(ErlNifEnv *env, const char *name) {
    ERL_NIF_TERM a;
    if (enif_make_existing_atom(env, name, &a, ERL_NIF_LATIN1))
        return a;
    return enif_make_atom(env, name);
}

ERL_NIF_TERM error_tuple(ErlNifEnv *env, int rc) {
    return enif_make_tuple2(env, A_ERROR, mk_atom(env, dv_strerror(rc)));
}

/* The physical part of the hybrid logical clock. The coarse clock (the kernel's last tick, a
 * few ms old) is read without the hardware clock, far cheaper than a precise read, and the
 * HLC only keeps milliseconds: two writes on two nodes within a tick of each other are
 * ordered like writes within a millisecond (by counter, then replica id), as they would be
 * under that much clock skew. */
uint64_t wall_ms(void) {
    struct timespec ts;
#ifdef CLOCK_REALTIME_COARSE
    clock_gettime(CLOCK_REALTIME_COARSE, &ts);
#else
    clock_gettime(CLOCK_REALTIME, &ts);
#endif
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

bool get_replica(ErlNifEnv *env, ERL_NIF_TERM t, replica **r) {
    return enif_get_resource(env, t, REPLICA, (void **)r) && (*r)->map;
}

bool get_bin(ErlNifEnv *env, ERL_NIF_TERM t, ErlNifBinary *b) {
    return enif_inspect_binary(env, t, b) && b->size <= DV_MAX_MESSAGE;
}

/* The (replica, key_bin, value_bin) arguments of the single-key calls. */
bool replica_key_value(ErlNifEnv *env, const ERL_NIF_TERM argv[], replica **r, ErlNifBinary *k,
                       ErlNifBinary *v) {
    return get_replica(env, argv[0], r) && get_bin(env, argv[1], k) && get_bin(env, argv[2], v);
}

ERL_NIF_TERM bin_term(ErlNifEnv *env, const uint8_t *p, size_t n) {
    ERL_NIF_TERM t;
    unsigned char *d = enif_make_new_binary(env, n, &t);
    if (n)
        memcpy(d, p, n);
    return t;
}

/* The next byte string of a buffer written with dv_buf_bytes (varint length + bytes) into
 * *s, *n; false at its end. */
bool next_bytes(const uint8_t **p, const uint8_t *end, const uint8_t **s, size_t *n) {
    uint64_t len = 0;
    if (*p >= end)
        return false;
    for (int shift = 0; *p < end && shift < 64; shift += 7) {
        uint8_t byte = *(*p)++;
        len |= (uint64_t)(byte & 0x7f) << shift;
        if (!(byte & 0x80))
            break;
    }
    if (len > (uint64_t)(end - *p))
        return false;
    *s = *p;
    *n = (size_t)len;
    *p += len;
    return true;
}

/* Decode stored external-format bytes (validated on the way in): the fast decoder for the
 * common shapes, enif_binary_to_term for the rest (term_fast.h). */
ERL_NIF_TERM decode_term(ErlNifEnv *env, tf_atom_cache *atoms, const uint8_t *p, size_t n) {
    ERL_NIF_TERM t;
    if (tf_decode(env, atoms, p, n, &t))
        return t;
    if (enif_binary_to_term(env, p, n, &t, 0) == 0)
        return A_BAD_TERM;
    return t;
}

/* A well-formed external term occupying all of [p, p+n): one that the fast decoder or else
 * binary_to_term decodes completely. Not ERL_NIF_BIN2TERM_SAFE: keys and values may hold
 * atoms this node has not seen yet, exactly as distribution messages do (a peer that can
 * reach this replica can already create atoms here). */
bool valid_term(ErlNifEnv *scratch, tf_atom_cache *atoms, const uint8_t *p, size_t n) {
    ERL_NIF_TERM t;
    return n > 0 &&
           (tf_decode(scratch, atoms, p, n, &t) || enif_binary_to_term(scratch, p, n, &t, 0) == n);
}

/* true or false. */
bool get_bool(ErlNifEnv *env, ERL_NIF_TERM t, bool *b) {
    (void)env;
    if (enif_compare(t, A_TRUE) == 0)
        *b = true;
    else if (enif_compare(t, A_FALSE) == 0)
        *b = false;
    else
        return false;
    return true;
}

ERL_NIF_TERM reverse_list(ErlNifEnv *env, ERL_NIF_TERM list) {
    ERL_NIF_TERM out;
    enif_make_reverse_list(env, list, &out);
    return out;
}

/* ------------------------------------------------------------------ local writes */

/* The write log local writes go to, or NULL while logging is off. */
dv_outbox *cur_log(replica *r) {
    return r->logging ? &r->log[r->cur] : NULL;
}

void note_change(replica *r, const uint8_t *k, size_t klen) {
    if (r->track)
        dv_buf_bytes(&r->changed[r->cur], k, klen);
}

void maybe_notify(ErlNifEnv *env, replica *r) {
    if (r->flush_pending || !r->has_owner)
        return;
    if (dv_outbox_empty(&r->log[r->cur]) && r->changed[r->cur].n == 0)
        return;
    r->flush_pending = true;
    enif_send(env, &r->owner, NULL, A_FLUSH);
}

/* The tail of every single-key write, with the lock held: remember a changed key for
 * on_diffs, wake the owner if the log just became non-empty, unlock, answer. */
ERL_NIF_TERM end_write(ErlNifEnv *env, replica *r, int rc, const ErlNifBinary *k, bool changed) {
    if (rc == DV_OK && changed)
        note_change(r, k->data, k->size);
    if (rc == DV_OK)
        maybe_notify(env, r);
    enif_mutex_unlock(r->lock);
    return rc == DV_OK ? A_OK : error_tuple(env, rc);
}

/* ------------------------------------------------------------------ NIFs */

/* replica_new(rid :: u64, owner :: pid, track_changes :: boolean) */
ERL_NIF_TERM dv_replica_new_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    ErlNifUInt64 rid;
    ErlNifPid owner;
    bool track;
    if (!enif_get_uint64(env, argv[0], &rid) || !enif_get_local_pid(env, argv[1], &owner) ||
        !get_bool(env, argv[2], &track))
        return enif_make_badarg(env);
    replica *r = enif_alloc_resource(REPLICA, sizeof(replica));
    if (!r)
        return error_tuple(env, DV_ENOMEM);
    memset(r, 0, sizeof(*r));
    for (int i = 0; i < 2; i++) {
        dv_outbox_init(&r->log[i]);
        dv_buf_init(&r->changed[i]);
    }
    dv_owners_init(&r->owners);
    dv_buf_init(&r->gone);
    dv_buf_init(&r->pend);
    r->lock = enif_mutex_create("drove_replica");
    r->pend_lock = enif_mutex_create("drove_replica_exits");
    r->map = dv_map_new(rid);
    r->owner = owner;
    r->has_owner = true;
    r->track = track;
    r->logging = true;
    if (!r->lock || !r->pend_lock || !r->map) {
        enif_release_resource(r); /* the destructor frees what was made */
        return error_tuple(env, DV_ENOMEM);
    }
    ERL_NIF_TERM t = enif_make_resource(env, r);
    enif_release_resource(r);
    return t;
}

/* set_logging(replica, boolean) -> :ok: whether local writes are logged for the eager push
 * (the owner turns it off while it has no push target). Normal: O(1). */
ERL_NIF_TERM dv_set_logging_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    nif_call call = call_of(env, "set_logging", dv_set_logging_nif, 2, argc, argv);
    ERL_NIF_TERM busy;
    replica *r;
    bool logging;
    if (!get_replica(env, argv[0], &r) || !get_bool(env, argv[1], &logging))
        return enif_make_badarg(env);
    if (!lock_call(&call, r, &busy))
        return busy;
    r->logging = logging;
    enif_mutex_unlock(r->lock);
    return A_OK;
}

/* set_owner(replica, pid) -> :ok: the process sent :drove_flush from now on. Normal: O(1). */
ERL_NIF_TERM dv_set_owner_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    nif_call call = call_of(env, "set_owner", dv_set_owner_nif, 2, argc, argv);
    ERL_NIF_TERM busy;
    replica *r;
    ErlNifPid pid;
    if (!get_replica(env, argv[0], &r) || !enif_get_local_pid(env, argv[1], &pid))
        return enif_make_badarg(env);
    if (!lock_call(&call, r, &busy))
        return busy;
    r->owner = pid;
    r->has_owner = true;
    r->flush_pending = false;
    maybe_notify(env, r);
    enif_mutex_unlock(r->lock);
    return A_OK;
}

typedef struct {
    ErlNifEnv *env;
    tf_atom_cache *atoms;
    ERL_NIF_TERM list;
} list_ctx;

static int pair_to_list(void *ud, const uint8_t *k, uint32_t klen, const dv_read *rd) {
    list_ctx *c = ud;
    ERL_NIF_TERM kv = enif_make_tuple2(c->env, decode_term(c->env, c->atoms, k, klen),
                                       decode_term(c->env, c->atoms, rd->val, rd->vlen));
    c->list = enif_make_list_cell(c->env, kv, c->list);
    return DV_OK;
}

/* to_list(replica) -> [{key, value}]. Dirty: O(map). */
ERL_NIF_TERM dv_to_list_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    replica *r;
    if (!get_replica(env, argv[0], &r))
        return enif_make_badarg(env);
    list_ctx c = {env, &r->atoms, enif_make_list(env, 0)};
    enif_mutex_lock(r->lock);
    dv_map_foreach(r->map, pair_to_list, &c);
    enif_mutex_unlock(r->lock);
    return c.list;
}

/* info(replica) -> map of counters. Normal: O(replica ids). */
ERL_NIF_TERM dv_info_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    nif_call call = call_of(env, "info", dv_info_nif, 1, argc, argv);
    ERL_NIF_TERM busy;
    replica *r;
    if (!get_replica(env, argv[0], &r))
        return enif_make_badarg(env);
    if (!lock_call(&call, r, &busy))
        return busy;
    enif_mutex_lock(r->pend_lock);
    uint64_t deferred = r->deferred;
    enif_mutex_unlock(r->pend_lock);
    ERL_NIF_TERM keys[10] = {A_SIZE,     A_ELEMENTS, A_MEMORY, A_PAYLOAD,  A_RID,
                             A_REPLICAS, A_CLOUD,    A_OUTBOX, A_DEFERRED, A_BUSY};
    ERL_NIF_TERM vals[10] = {
        enif_make_uint64(env, dv_map_size(r->map)),
        enif_make_uint64(env, dv_map_elements(r->map)),
        enif_make_uint64(env, dv_map_memory(r->map) + dv_owners_memory(&r->owners)),
        enif_make_uint64(env, dv_map_payload(r->map)),
        enif_make_uint64(env, dv_map_rid(r->map)),
        enif_make_uint64(env, dv_map_ctx(r->map)->n),
        enif_make_uint64(env, dv_ctx_cloud_dots(dv_map_ctx(r->map))),
        enif_make_uint64(env, dv_outbox_ops(&r->log[r->cur])),
        enif_make_uint64(env, deferred),
        enif_make_uint64(env, __atomic_load_n(&r->busy, __ATOMIC_RELAXED)),
    };
    enif_mutex_unlock(r->lock);
    ERL_NIF_TERM m;
    enif_make_map_from_arrays(env, keys, vals, 10, &m);
    return m;
}
