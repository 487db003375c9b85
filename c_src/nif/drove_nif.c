/* drove_nif.c - the Drove.Native library: load, upgrade, unload, and the function table.
 *
 * The NIFs live by concern: the replica resource and the calls on it as a whole in
 * replica_nif.c (see replica_nif.h for the map of the other replica files), the lock and its
 * rescheduling in lock_nif.c, single-key calls in keys_nif.c, the registry's owners and exits
 * in registry_nif.c, the outbox, join and anti-entropy in replication_nif.c; placement in
 * ring_nif.c, member sets in members_nif.c, socket liveness in liveness_nif.c.
 *
 * Scheduling rule (docs/architecture.md, "NIF scheduling rule"): single-key calls run on
 * normal schedulers and never block one on the replica lock (lock_nif.h); calls whose cost
 * grows with the map or with a peer's message run dirty, or are dispatched by size. The
 * choice for each function is written beside its row in the table below.
 */
#include <stdbool.h>
#include <stdint.h>

#include <erl_nif.h>

#include "alloc.h"
#include "keys_nif.h"
#include "liveness_nif.h"
#include "lock_nif.h"
#include "members_nif.h"
#include "registry_nif.h"
#include "replica_nif.h"
#include "replication_nif.h"
#include "ring_nif.h"

static void *nif_alloc(size_t n) {
    return enif_alloc(n);
}
static void *nif_realloc(void *p, size_t n) {
    return enif_realloc(p, n);
}
static void nif_free(void *p) {
    enif_free(p);
}

/* ------------------------------------------------------------------ load, upgrade, unload
 *
 * A hot code upgrade of Drove.Native (`:code.load_file/1`, a release upgrade) loads the library
 * again while the old module's replicas stay alive in the processes that hold them: `upgrade`
 * takes the resource types over (their destructors and down callbacks become the new
 * library's) so those replicas keep working with the new code, and `unload` runs when the old
 * module is purged.
 *
 * Loading the same file again gives back the same image (dlopen counts references), so the
 * library's globals (the allocator, the atoms and REPLICA of replica_nif.c, RING_RT of
 * ring_nif.c) are shared by the old and the new library, and NIF calls may be reading them
 * while `upgrade` runs: they are written only by the first load of an image (`image_ready`),
 * never rewritten. Only load, upgrade and unload touch `image_ready`, and the runtime runs
 * them one at a time. A new version of the library (another file) has its own globals, and gets
 * the old replicas: `priv` records the layout of a replica, and an upgrade between layouts
 * that differ is refused (the old code keeps running) rather than misreading them. */

/* Bump when the replica struct (replica_nif.h) or anything it points to changes meaning. */
#define REPLICA_ABI 1u

typedef struct {
    uint32_t abi;
    uint32_t replica_size;
} lib_priv;

static bool image_ready;

/* Opens (or takes over) the resource types and fills *priv. CREATE | TAKEOVER in load as well:
 * after the module was deleted and purged, replicas still held by processes keep their type
 * alive, and a later load takes it over like an upgrade does. */
static int open_library(ErlNifEnv *env, void **priv) {
    static const dv_allocator a = {nif_alloc, nif_realloc, nif_free};
    const ErlNifResourceFlags flags = ERL_NIF_RT_CREATE | ERL_NIF_RT_TAKEOVER;
    ErlNifResourceTypeInit init = {.dtor = replica_dtor, .down = replica_down};
    ErlNifResourceType *rt = enif_open_resource_type_x(env, "drove_replica", &init, flags, NULL);
    if (!rt || dv_ring_nif_load(env, flags) != 0)
        return -1;
    lib_priv *p = enif_alloc(sizeof *p);
    if (!p)
        return -1;
    p->abi = REPLICA_ABI;
    p->replica_size = (uint32_t)sizeof(replica);
    if (!image_ready) {
        dv_set_allocator(&a);
        replica_init_atoms(env);
        image_ready = true;
    }
    if (REPLICA != rt) /* the same type object when the image is shared */
        REPLICA = rt;
    *priv = p;
    return 0;
}

static int load(ErlNifEnv *env, void **priv, ERL_NIF_TERM info) {
    (void)info;
    return open_library(env, priv);
}

static int upgrade(ErlNifEnv *env, void **priv, void **old_priv, ERL_NIF_TERM info) {
    (void)info;
    const lib_priv *old = *old_priv;
    if (!old || old->abi != REPLICA_ABI || old->replica_size != sizeof(replica))
        return -1;
    return open_library(env, priv);
}

static void unload(ErlNifEnv *env, void *priv) {
    (void)env;
    enif_free(priv);
}

/* Scheduling choice beside each entry (see docs/architecture.md, "NIF scheduling rule"). "Lock
 * as lock_nif.h": normal scheduler, trylock, else yield and retry, then rescheduled dirty. */
static ErlNifFunc funcs[] = {
    /* replica_nif.c. normal: O(1) */
    {"replica_new", 3, dv_replica_new_nif, 0},
    /* lock as lock_nif.h: O(1), info O(replica ids) */
    {"set_owner", 2, dv_set_owner_nif, 0},
    {"set_logging", 2, dv_set_logging_nif, 0},
    {"info", 1, dv_info_nif, 0},
    /* dirty: O(map) */
    {"to_list", 1, dv_to_list_nif, ERL_NIF_DIRTY_JOB_CPU_BOUND},

    /* lock_nif.c, test hooks: dirty I/O (waits until released); normal, O(1) */
    {"test_hold", 2, dv_test_hold_nif, ERL_NIF_DIRTY_JOB_IO_BOUND},
    {"test_release", 0, dv_test_release_nif, 0},
    {"test_counters", 1, dv_test_counters_nif, 0},

    /* keys_nif.c. lock as lock_nif.h: O(1); rescheduled dirty when the value written or read
     * back exceeds DIRTY_VALUE_BYTES */
    {"put", 3, dv_put_nif, 0},
    {"delete", 2, dv_delete_nif, 0},
    {"get", 2, dv_get_nif, 0},
    {"put_new", 3, dv_put_new_nif, 0},
    {"put_new_delta", 3, dv_put_new_delta_nif, 0},
    {"holds", 3, dv_holds_nif, 0},
    {"remove_value", 3, dv_remove_value_nif, 0},
    /* normal, trylock else rescheduled dirty (no yield): encode (at most TERM_MAX bytes) +
     * O(1) */
    {"put_t", 3, dv_put_t_nif, 0},
    {"get_t", 2, dv_get_t_nif, 0},
    {"delete_t", 2, dv_delete_t_nif, 0},
    /* normal: at most TERM_MAX bytes of term (tests) */
    {"encode", 1, dv_encode_nif, 0},
    {"decode", 1, dv_decode_nif, 0},
    /* dirty: O(list) */
    {"remove_values", 2, dv_remove_values_nif, ERL_NIF_DIRTY_JOB_CPU_BOUND},

    /* registry_nif.c. lock as lock_nif.h: register O(1), rescheduled dirty like put for a
     * big value; own, disown, watch, unwatch O(1); owned_keys and owns O(keys of the pid),
     * rescheduled dirty above DIRTY_OWNED_KEYS keys; take_gone rescheduled dirty above
     * DIRTY_GONE_PIDS exits or DIRTY_GONE_BYTES of keys */
    {"register", 4, dv_register_nif, 0},
    {"own", 3, dv_own_nif, 0},
    {"disown", 3, dv_disown_nif, 0},
    {"owned_keys", 2, dv_owned_keys_nif, 0},
    {"owns", 2, dv_owns_nif, 0},
    {"watch", 2, dv_watch_nif, 0},
    {"unwatch", 1, dv_unwatch_nif, 0},
    {"take_gone", 1, dv_take_gone_nif, 0},
    /* dirty: O(pids + their keys) */
    {"drop_owned", 2, dv_drop_owned_nif, ERL_NIF_DIRTY_JOB_CPU_BOUND},

    /* replication_nif.c. lock as lock_nif.h: O(replica ids) and a copy of the digests */
    {"ctx", 1, dv_ctx_nif, 0},
    {"digest", 1, dv_digest_nif, 0},
    {"summary", 1, dv_summary_nif, 0},
    {"summary_match", 2, dv_summary_match_nif, 0},
    /* lock as lock_nif.h; when shipping, rescheduled dirty above DIRTY_OUTBOX_OPS logged
     * operations (encoding is outside the lock); dropping is O(1) */
    {"take_outbox", 3, dv_take_outbox_nif, 0},
    /* normal below DIRTY_JOIN_BYTES (trylock, else dirty), dirty above: O(message) */
    {"join", 3, dv_join_nif, 0},
    /* dirty: O(map) */
    {"sync_reply", 5, dv_sync_reply_nif, ERL_NIF_DIRTY_JOB_CPU_BOUND},
    {"sync_finish", 5, dv_sync_finish_nif, ERL_NIF_DIRTY_JOB_CPU_BOUND},

    /* members_nif.c: normal, O(n log n) in members; rescheduled dirty above
     * DV_MEMBERS_NIF_DIRTY_LEN members */
    {"members_set", 2, dv_members_set_nif, 0},
    {"members_diff", 2, dv_members_diff_nif, 0},

    /* liveness_nif.c: normal, one system call */
    {"tcp_peer_closed", 1, dv_tcp_peer_closed_nif, 0},

    /* ring_nif.c (sizes in ring_nif.h). normal: O(log points) */
    {"ring_owner", 2, dv_ring_owner_nif, 0},
    /* normal: O(1) */
    {"ring_info", 1, dv_ring_info_nif, 0},
    /* normal, rescheduled dirty above DV_RING_NIF_DIRTY_POINTS points: O(points) */
    {"ring_new", 1, dv_ring_new_nif, 0},
    /* normal, rescheduled dirty above DV_RING_NIF_DIRTY_BATCH hashes: O(hashes log points) */
    {"ring_owners", 2, dv_ring_owners_nif, 0},
    /* normal, rescheduled dirty above DV_RING_NIF_DIRTY_WORK members (x keys) or
     * DV_RING_NIF_DIRTY_BYTES bytes: O(members x keys + bytes) */
    {"rendezvous_owner", 2, dv_rendezvous_owner_nif, 0},
    {"rendezvous_owners", 2, dv_rendezvous_owners_nif, 0},
};

ERL_NIF_INIT(Elixir.Drove.Native, funcs, load, NULL, upgrade, unload)
