/* registry_nif.c - what a registry keeps in its replica: the owners index (pid -> keys), the
 * calls that file and read it, and the exits of watched registrants. See registry_nif.h. */
#include "registry_nif.h"

#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include <erl_nif.h>

#include "lock_nif.h"
#include "owners.h"
#include "replica_nif.h"

/* ------------------------------------------------------------------ owners index
 *
 * A registry's entries are {:key, key} => {pid, value}. The replica keeps which keys each
 * pid holds (owners.h), so that the registry finds the keys of an exited process, of keys/2
 * and of an unlink decision without a table of its own. The index files a pid under a 64-bit
 * id from the VM's internal hash of the pid term (pid_key: stable within this VM, no
 * encoding). The index may hold more pairs than are true (a key since won by another
 * process, say): whatever it yields is checked against the map, whose winner for the key must
 * start with the pid's canonical external format: NEW_PID_EXT with the node name as a UTF-8
 * atom, exactly the bytes that term_to_binary({pid, value}, [:deterministic, minor_version:
 * 2]) writes after its 3-byte tuple header (131, 104, 2). */

#define PID_CANON_MAX    (1 + 3 + 4 * 255 + 12) /* tag, atom header, 255 UTF-8 chars, 3 u32 */
#define VALUE_PREFIX_MAX (3 + PID_CANON_MAX)

typedef struct {
    uint8_t b[VALUE_PREFIX_MAX]; /* 131, 104, 2, then the canonical pid */
    size_t n;
    uint64_t hash; /* pid_key of the pid */
} pid_id;

/* The index id of a pid term (t must be a pid). */
static uint64_t pid_key(ErlNifEnv *env, ERL_NIF_TERM t) {
    (void)env;
    return (uint64_t)enif_hash(ERL_NIF_INTERNAL_HASH, t, 0x5bd1e995) << 32 |
           (uint64_t)(uint32_t)enif_hash(ERL_NIF_INTERNAL_HASH, t, 0x27d4eb2f);
}

/* Length of the canonical pid at p (a NEW_PID_EXT with a UTF-8 atom), or 0. */
static size_t canon_pid_len(const uint8_t *p, size_t n) {
    if (n < 3 || p[0] != 88)
        return 0;
    size_t len;
    if (p[1] == 119) /* SMALL_ATOM_UTF8_EXT */
        len = 1 + 2 + (size_t)p[2] + 12;
    else if (p[1] == 118 && n >= 4) /* ATOM_UTF8_EXT */
        len = 1 + 3 + ((size_t)p[2] << 8 | p[3]) + 12;
    else
        return 0;
    return len <= n && len <= PID_CANON_MAX ? len : 0;
}

/* The id of a pid term: from enif_term_to_binary (whose atoms may be Latin-1 encoded),
 * re-encoded the canonical way. False for anything but a pid. */
static bool pid_id_of(ErlNifEnv *env, ERL_NIF_TERM t, pid_id *id) {
    ErlNifBinary b;
    if (!enif_is_pid(env, t) || !enif_term_to_binary(env, t, &b))
        return false;
    const uint8_t *p = b.data;
    size_t alen = 0, hdr = 0;
    bool latin1 = false, ok = b.size >= 4 && p[0] == 131 && p[1] == 88;
    if (ok) {
        switch (p[2]) {
        case 100: /* ATOM_EXT */
        case 118: /* ATOM_UTF8_EXT */
            ok = b.size >= 5;
            alen = ok ? ((size_t)p[3] << 8 | p[4]) : 0;
            hdr = 3;
            latin1 = p[2] == 100;
            break;
        case 115: /* SMALL_ATOM_EXT */
        case 119: /* SMALL_ATOM_UTF8_EXT */
            alen = p[3];
            hdr = 2;
            latin1 = p[2] == 115;
            break;
        default:
            ok = false;
        }
    }
    const uint8_t *name = p + 2 + hdr;
    ok = ok && 2 + hdr + alen + 12 == b.size && alen <= 4 * 255;
    uint8_t u[4 * 255];
    size_t ulen = 0;
    if (ok) {
        for (size_t i = 0; i < alen; i++) {
            uint8_t c = name[i];
            if (ulen + 2 > sizeof(u)) { /* more than an atom can hold */
                ok = false;
                break;
            }
            if (latin1 && c >= 0x80) {
                u[ulen++] = (uint8_t)(0xC0 | (c >> 6));
                u[ulen++] = (uint8_t)(0x80 | (c & 0x3F));
            } else {
                u[ulen++] = c;
            }
        }
    }
    if (ok) {
        size_t o = 3;
        id->b[o++] = 88;
        if (ulen < 256) {
            id->b[o++] = 119;
            id->b[o++] = (uint8_t)ulen;
        } else {
            id->b[o++] = 118;
            id->b[o++] = (uint8_t)(ulen >> 8);
            id->b[o++] = (uint8_t)ulen;
        }
        memcpy(id->b + o, u, ulen);
        o += ulen;
        memcpy(id->b + o, name + alen, 12);
        id->n = o + 12;
        id->b[0] = 131;
        id->b[1] = 104;
        id->b[2] = 2;
        id->hash = pid_key(env, t);
    }
    enif_release_binary(&b);
    return ok;
}

/* Whether v encodes a registry value {pid, value} (the pid canonically). */
static bool is_pid_pair(const ErlNifBinary *v) {
    return v->size >= 4 && v->data[0] == 131 && v->data[1] == 104 && v->data[2] == 2 &&
           canon_pid_len(v->data + 3, v->size - 3) > 0;
}

static inline bool held_by(const dv_read *rd, const pid_id *id) {
    return rd->vlen >= id->n && memcmp(rd->val, id->b, id->n) == 0;
}

/* In registry mode, makes sure the local process lp is watched before it is filed under pid
 * (the caller then files it): monitors it if it has no owners entry yet. With the lock held.
 * Returns A_OK (watched before, or *fresh set with *mon the new monitor), A_NOPROC (it is not
 * alive: nothing may be filed under it) or A_NOT_LOCAL. Outside registry mode: A_OK. */
static ERL_NIF_TERM watch_for_filing(ErlNifEnv *env, replica *r, ERL_NIF_TERM pid_term,
                                     uint64_t pid, bool *fresh, ErlNifMonitor *mon) {
    *fresh = false;
    if (!r->watching)
        return A_OK;
    ErlNifPid lp;
    if (!enif_get_local_pid(env, pid_term, &lp))
        return A_NOT_LOCAL;
    const uint64_t *places;
    size_t nplaces;
    if (dv_owners_get(&r->owners, pid, &places, &nplaces) > 0)
        return A_OK;
    if (enif_monitor_process(env, r, &lp, mon) != 0)
        return A_NOPROC;
    *fresh = true;
    return A_OK;
}

/* Files key under pid after watch_for_filing; a failure takes back a monitor just made. */
static int file_key(ErlNifEnv *env, replica *r, uint64_t pid, uint64_t key, bool fresh,
                    const ErlNifMonitor *mon) {
    int rc = dv_owners_add(&r->owners, pid, key);
    if (rc != DV_OK && fresh)
        enif_demonitor_process(env, r, mon);
    return rc;
}

/* register(replica, key_bin, value_bin, pid) -> :ok | {:exists, current_value} | :noproc |
 * :not_local
 * put_new for a registry entry: value_bin must encode {pid, value}; on success the key is
 * filed under pid (owners.h). The index entry is made first: if the put then fails, the
 * index holds one pair too many, which its readers ignore. In registry mode (watch/2) pid
 * must be a live local process (:not_local, :noproc otherwise, and nothing is written); it is
 * monitored from its first registration on. */
ERL_NIF_TERM dv_register_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    nif_call call = call_of(env, "register", dv_register_nif, 4, argc, argv);
    ERL_NIF_TERM busy;
    replica *r;
    ErlNifBinary k, v;
    if (!replica_key_value(env, argv, &r, &k, &v) || !is_pid_pair(&v) || !enif_is_pid(env, argv[3]))
        return enif_make_badarg(env);
    uint64_t pid = pid_key(env, argv[3]);
    if (!call.dirty && v.size > DIRTY_VALUE_BYTES)
        return run_dirty(&call);
    if (!lock_call(&call, r, &busy))
        return busy;
    dv_read rd;
    if (dv_map_get(r->map, k.data, (uint32_t)k.size, &rd)) {
        if (!call.dirty && rd.vlen > DIRTY_VALUE_BYTES) {
            enif_mutex_unlock(r->lock);
            return run_dirty(&call);
        }
        ERL_NIF_TERM cur = decode_term(env, &r->atoms, rd.val, rd.vlen);
        enif_mutex_unlock(r->lock);
        return enif_make_tuple2(env, A_EXISTS, cur);
    }
    bool fresh;
    ErlNifMonitor mon = {{0}};
    ERL_NIF_TERM w = watch_for_filing(env, r, argv[3], pid, &fresh, &mon);
    if (w != A_OK) {
        enif_mutex_unlock(r->lock);
        return w;
    }
    int rc = file_key(env, r, pid, dv_map_key_hash(k.data, (uint32_t)k.size), fresh, &mon);
    bool changed = false;
    if (rc == DV_OK)
        rc = dv_map_put_log(r->map, k.data, (uint32_t)k.size, v.data, (uint32_t)v.size, wall_ms(),
                            cur_log(r), &changed);
    return end_write(env, r, rc, &k, changed);
}

/* The (replica, key_bin, pid) arguments of own/disown. */
static bool replica_key_pid(ErlNifEnv *env, const ERL_NIF_TERM argv[], replica **r, ErlNifBinary *k,
                            uint64_t *pid) {
    if (!get_replica(env, argv[0], r) || !get_bin(env, argv[1], k) || !enif_is_pid(env, argv[2]))
        return false;
    *pid = pid_key(env, argv[2]);
    return true;
}

/* own(replica, key_bin, pid) -> :ok | :noproc | {:error, reason}: files key
 * under pid (a registry showing an entry it learned from a peer). In registry mode a local
 * pid is watched as by register (:noproc when it is gone: nothing is filed); remote pids are
 * filed unwatched (their node's registry watches them). Normal: O(1). */
ERL_NIF_TERM dv_own_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    nif_call call = call_of(env, "own", dv_own_nif, 3, argc, argv);
    ERL_NIF_TERM busy;
    replica *r;
    ErlNifBinary k;
    uint64_t pid;
    if (!replica_key_pid(env, argv, &r, &k, &pid))
        return enif_make_badarg(env);
    if (!lock_call(&call, r, &busy))
        return busy;
    bool fresh;
    ErlNifMonitor mon = {{0}};
    ERL_NIF_TERM w = watch_for_filing(env, r, argv[2], pid, &fresh, &mon);
    int rc = DV_OK;
    if (w == A_OK || w == A_NOT_LOCAL)
        rc = file_key(env, r, pid, dv_map_key_hash(k.data, (uint32_t)k.size), fresh, &mon);
    enif_mutex_unlock(r->lock);
    if (rc != DV_OK)
        return error_tuple(env, rc);
    return w == A_NOPROC ? A_NOPROC : A_OK;
}

/* disown(replica, key_bin, pid) -> :ok: pid no longer holds key (a pair that is not there is
 * not an error). In registry mode the last key of a local pid stays filed: its entry is what
 * says it is monitored, and its exit removes it. Normal: O(1). */
ERL_NIF_TERM dv_disown_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    nif_call call = call_of(env, "disown", dv_disown_nif, 3, argc, argv);
    ERL_NIF_TERM busy;
    replica *r;
    ErlNifBinary k;
    uint64_t pid;
    ErlNifPid lp;
    if (!replica_key_pid(env, argv, &r, &k, &pid))
        return enif_make_badarg(env);
    if (!lock_call(&call, r, &busy))
        return busy;
    const uint64_t *places;
    size_t nplaces;
    if (!r->watching || !enif_get_local_pid(env, argv[2], &lp) ||
        dv_owners_get(&r->owners, pid, &places, &nplaces) > 1)
        dv_owners_remove(&r->owners, pid, dv_map_key_hash(k.data, (uint32_t)k.size));
    enif_mutex_unlock(r->lock);
    return A_OK;
}

typedef struct {
    ErlNifEnv *env;
    replica *r;
    const pid_id *id;
    ERL_NIF_TERM list;
    size_t found;
    bool first_only;
} held_ctx;

static int collect_held(void *ud, const uint8_t *key, uint32_t klen, const dv_read *rd) {
    held_ctx *c = ud;
    if (!held_by(rd, c->id))
        return 0;
    c->found++;
    if (c->first_only)
        return 1;
    c->list = enif_make_list_cell(c->env, decode_term(c->env, &c->r->atoms, key, klen), c->list);
    return 0;
}

/* Walks the keys filed under id whose read value pid holds. */
static void walk_held(replica *r, held_ctx *c) {
    const uint64_t *places;
    size_t nplaces;
    dv_owners_get(&r->owners, c->id->hash, &places, &nplaces);
    for (size_t i = 0; i < nplaces; i++)
        if (places[i] && dv_map_keys_with_hash(r->map, places[i], collect_held, c))
            break;
}

/* The body of owned_keys and owns: walks into c (its first_only set by the caller) the keys
 * filed under the pid argv[1] whose read value that pid holds. False when the NIF must
 * answer *other instead (badarg, or the call rescheduled). */
static bool held_keys(const nif_call *call, held_ctx *c, ERL_NIF_TERM *other) {
    ErlNifEnv *env = call->env;
    replica *r;
    pid_id id;
    if (!get_replica(env, call->argv[0], &r) || !pid_id_of(env, call->argv[1], &id)) {
        *other = enif_make_badarg(env);
        return false;
    }
    if (!lock_call(call, r, other))
        return false;
    const uint64_t *places;
    size_t nplaces;
    if (!call->dirty && dv_owners_get(&r->owners, id.hash, &places, &nplaces) > DIRTY_OWNED_KEYS) {
        enif_mutex_unlock(r->lock);
        *other = run_dirty(call);
        return false;
    }
    c->env = env;
    c->r = r;
    c->id = &id;
    c->list = enif_make_list(env, 0);
    c->found = 0;
    walk_held(r, c);
    c->id = NULL; /* gone with this frame */
    enif_mutex_unlock(r->lock);
    return true;
}

/* owned_keys(replica, pid) -> [key]: the keys whose read value pid holds (the replica's keys,
 * i.e. {:key, key} for a registry). Normal: O(keys of pid); dirty above DIRTY_OWNED_KEYS. */
ERL_NIF_TERM dv_owned_keys_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    nif_call call = call_of(env, "owned_keys", dv_owned_keys_nif, 2, argc, argv);
    held_ctx c = {.first_only = false};
    ERL_NIF_TERM other;
    return held_keys(&call, &c, &other) ? c.list : other;
}

/* owns(replica, pid) -> boolean: whether pid holds the read value of a key. Normal: O(keys of
 * pid); dirty above DIRTY_OWNED_KEYS. */
ERL_NIF_TERM dv_owns_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    nif_call call = call_of(env, "owns", dv_owns_nif, 2, argc, argv);
    held_ctx c = {.first_only = true};
    ERL_NIF_TERM other;
    if (!held_keys(&call, &c, &other))
        return other;
    return c.found ? A_TRUE : A_FALSE;
}

static int collect_key(void *ud, const uint8_t *key, uint32_t klen, const dv_read *rd) {
    (void)rd;
    dv_buf *b = ud;
    dv_buf_bytes(b, key, klen);
    return 0;
}

/* Receives each key whose read value a drop_pid removed. */
typedef void (*dropped_fn)(void *ud, const uint8_t *key, size_t klen);

/* For an exited process: removes every element whose value it holds (its registrations,
 * winners or not; logged for the push like any local remove), forgets its index entry, and
 * calls out() with each key whose read value went. scratch is a buffer to reuse. With the
 * lock held; the caller wakes the owner (maybe_notify). */
static int drop_pid(replica *r, const pid_id *id, dv_buf *scratch, dropped_fn out, void *ud) {
    const uint64_t *places;
    size_t nplaces;
    dv_owners_get(&r->owners, id->hash, &places, &nplaces);
    dv_buf_reset(scratch);
    for (size_t i = 0; i < nplaces; i++)
        if (places[i])
            dv_map_keys_with_hash(r->map, places[i], collect_key, scratch);
    if (scratch->oom)
        return DV_ENOMEM;
    dv_owners_drop(&r->owners, id->hash);
    const uint8_t *p = scratch->p, *k;
    size_t klen;
    while (next_bytes(&p, scratch->p + scratch->n, &k, &klen)) {
        bool changed = false;
        int rc = dv_map_remove_prefix_log(r->map, k, (uint32_t)klen, id->b, (uint32_t)id->n,
                                          cur_log(r), &changed);
        if (rc != DV_OK)
            return rc;
        if (changed) {
            note_change(r, k, klen);
            out(ud, k, klen);
        }
    }
    return DV_OK;
}

typedef struct {
    ErlNifEnv *env;
    replica *r;
    ERL_NIF_TERM pid;
    ERL_NIF_TERM list;
} drop_list_ctx;

static void dropped_to_list(void *ud, const uint8_t *key, size_t klen) {
    drop_list_ctx *c = ud;
    ERL_NIF_TERM t = decode_term(c->env, &c->r->atoms, key, klen);
    c->list = enif_make_list_cell(c->env, enif_make_tuple2(c->env, t, c->pid), c->list);
}

/* drop_owned(replica, [pid]) -> [{key, pid}]
 * For exited processes: drop_pid for each, answering the keys whose read value went. The list
 * is checked whole before anything changes. Dirty: O(pids + their keys). */
ERL_NIF_TERM dv_drop_owned_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    replica *r;
    unsigned len;
    if (!get_replica(env, argv[0], &r) || !enif_get_list_length(env, argv[1], &len))
        return enif_make_badarg(env);
    ERL_NIF_TERM head, tail = argv[1];
    while (enif_get_list_cell(env, tail, &head, &tail))
        if (!enif_is_pid(env, head))
            return enif_make_badarg(env);
    drop_list_ctx c = {env, r, 0, enif_make_list(env, 0)};
    dv_buf scratch;
    dv_buf_init(&scratch);
    int rc = DV_OK;
    enif_mutex_lock(r->lock);
    tail = argv[1];
    while (rc == DV_OK && enif_get_list_cell(env, tail, &head, &tail)) {
        pid_id id;
        if (!pid_id_of(env, head, &id))
            continue; /* not encodable canonically (owners.h): it holds nothing here */
        c.pid = head;
        rc = drop_pid(r, &id, &scratch, dropped_to_list, &c);
    }
    maybe_notify(env, r);
    enif_mutex_unlock(r->lock);
    dv_buf_free(&scratch);
    return rc == DV_OK ? c.list : error_tuple(env, rc);
}

/* ------------------------------------------------------------------ exits (registry mode) */

typedef struct {
    replica *r;
    ErlNifPid pid;
} gone_ctx;

/* Records a key an exit dropped in r->gone: the pid, then the key bytes. */
static void dropped_to_gone(void *ud, const uint8_t *key, size_t klen) {
    gone_ctx *c = ud;
    dv_buf_put(&c->r->gone, &c->pid, sizeof(c->pid));
    dv_buf_bytes(&c->r->gone, key, klen);
}

/* Drops the registrations of the exited local process p into r->gone. With the lock held. */
static void drop_exited(ErlNifEnv *env, replica *r, const ErlNifPid *p, dv_buf *scratch) {
    pid_id id;
    if (!pid_id_of(env, enif_make_pid(env, p), &id))
        return;
    gone_ctx c = {r, *p};
    if (drop_pid(r, &id, scratch, dropped_to_gone, &c) != DV_OK)
        r->gone.oom = true; /* reported by the next take_gone */
}

/* Whether the watcher must be told (:drove_gone) now; marks it told. */
static bool ring_once(replica *r) {
    enif_mutex_lock(r->pend_lock);
    bool ring = !r->rung;
    r->rung = true;
    enif_mutex_unlock(r->pend_lock);
    return ring;
}

/* The resource's down callback: a watched process exited. Run by the exiting process on its
 * scheduler, so a burst of exits is dropped by the exiting processes themselves, in parallel
 * and as they happen; the registry process only deletes table rows, a batch per wake-up. If
 * the lock is busy, the pid is queued for the next take_gone instead of blocking. */
void replica_down(ErlNifEnv *env, void *obj, ErlNifPid *pid, ErlNifMonitor *mon) {
    (void)mon;
    replica *r = obj;
    bool ring;
    if (spin_trylock(r->lock)) {
        if (!r->watching) {
            enif_mutex_unlock(r->lock);
            return;
        }
        dv_buf scratch;
        dv_buf_init(&scratch);
        size_t before = r->gone.n;
        drop_exited(env, r, pid, &scratch);
        maybe_notify(env, r);
        ring = r->gone.n != before || r->gone.oom;
        ErlNifPid watcher = r->watcher;
        enif_mutex_unlock(r->lock);
        dv_buf_free(&scratch);
        if (ring && ring_once(r))
            enif_send(env, &watcher, NULL, A_GONE);
        return;
    }
    enif_mutex_lock(r->pend_lock);
    dv_buf_put(&r->pend, pid, sizeof(*pid));
    r->deferred++;
    ring = !r->rung;
    r->rung = true;
    ErlNifPid watcher = r->watcher; /* set once by watch/2, before any monitor exists */
    enif_mutex_unlock(r->pend_lock);
    if (ring)
        enif_send(env, &watcher, NULL, A_GONE);
}

/* watch(replica, registry_pid) -> :ok: registry mode from now on (see replica). Normal,
 * trylock else rescheduled dirty: O(1). */
ERL_NIF_TERM dv_watch_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    nif_call call = call_of(env, "watch", dv_watch_nif, 2, argc, argv);
    ERL_NIF_TERM busy;
    replica *r;
    ErlNifPid pid;
    if (!get_replica(env, argv[0], &r) || !enif_get_local_pid(env, argv[1], &pid))
        return enif_make_badarg(env);
    if (!lock_call(&call, r, &busy))
        return busy;
    enif_mutex_lock(r->pend_lock); /* held only for O(1) by anyone */
    r->watcher = pid;
    r->watching = true;
    enif_mutex_unlock(r->pend_lock);
    enif_mutex_unlock(r->lock);
    return A_OK;
}

/* unwatch(replica) -> :ok: exits of watched processes no longer drop anything (the registry
 * that used the replica is gone). Normal, trylock else rescheduled dirty: O(1). */
ERL_NIF_TERM dv_unwatch_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    nif_call call = call_of(env, "unwatch", dv_unwatch_nif, 1, argc, argv);
    ERL_NIF_TERM busy;
    replica *r;
    if (!get_replica(env, argv[0], &r))
        return enif_make_badarg(env);
    if (!lock_call(&call, r, &busy))
        return busy;
    r->watching = false;
    enif_mutex_unlock(r->lock);
    return A_OK;
}

/* take_gone(replica) -> [{key, pid}] | {:error, reason}
 * The registrations that exits dropped since the last call (first dropping those of the exits
 * queued while the lock was busy); the next exit sends :drove_gone again. Normal below
 * DIRTY_GONE_PIDS queued exits and DIRTY_GONE_BYTES of keys, else rescheduled dirty. */
ERL_NIF_TERM dv_take_gone_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    nif_call call = call_of(env, "take_gone", dv_take_gone_nif, 1, argc, argv);
    ERL_NIF_TERM busy;
    replica *r;
    if (!get_replica(env, argv[0], &r))
        return enif_make_badarg(env);
    if (!lock_call(&call, r, &busy))
        return busy;
    enif_mutex_lock(r->pend_lock);
    if (!call.dirty &&
        (r->pend.n > DIRTY_GONE_PIDS * sizeof(ErlNifPid) || r->gone.n > DIRTY_GONE_BYTES)) {
        enif_mutex_unlock(r->pend_lock);
        enif_mutex_unlock(r->lock);
        return run_dirty(&call);
    }
    dv_buf pend = r->pend;
    dv_buf_init(&r->pend);
    r->rung = false;
    enif_mutex_unlock(r->pend_lock);
    dv_buf scratch;
    dv_buf_init(&scratch);
    for (size_t o = 0; r->watching && o + sizeof(ErlNifPid) <= pend.n; o += sizeof(ErlNifPid)) {
        ErlNifPid p;
        memcpy(&p, pend.p + o, sizeof(p));
        drop_exited(env, r, &p, &scratch);
    }
    dv_buf_free(&scratch);
    bool oom = r->gone.oom || pend.oom; /* an exit not recorded: the registry restarts */
    dv_buf_free(&pend);
    maybe_notify(env, r);
    ERL_NIF_TERM list = enif_make_list(env, 0);
    const uint8_t *p = r->gone.p, *end = r->gone.p + r->gone.n, *k;
    size_t klen;
    while (!oom && p + sizeof(ErlNifPid) <= end) {
        ErlNifPid pid;
        memcpy(&pid, p, sizeof(pid));
        p += sizeof(pid);
        if (!next_bytes(&p, end, &k, &klen))
            break;
        ERL_NIF_TERM key = decode_term(env, &r->atoms, k, klen);
        list = enif_make_list_cell(env, enif_make_tuple2(env, key, enif_make_pid(env, &pid)), list);
    }
    dv_buf_free(&r->gone);
    dv_buf_init(&r->gone);
    enif_mutex_unlock(r->lock);
    return oom ? error_tuple(env, DV_ENOMEM) : list;
}
