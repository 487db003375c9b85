/* replica_nif.h - the replica resource, shared by the NIF files that work on it.
 *
 * A replica is a resource holding the map, its outbox (the coalesced delta of local writes
 * not yet pushed to neighbours) and a mutex. Any process may read or write through the
 * handle; the owner process (Drove.CRDT) is sent `:drove_flush` when the outbox goes from
 * empty to non-empty, and ships it.
 *
 * The replica's NIFs, by concern (the function table is in drove_nif.c):
 *   replica_nif.c      the resource, its atoms and argument helpers; replica_new, set_owner,
 *                      set_logging, info, to_list
 *   lock_nif.c         the lock: trylock, yield, then reschedule dirty; the test hooks
 *   keys_nif.c         single-key calls: put, get, delete, their term forms, put_new, holds,
 *                      remove_value(s), encode/decode
 *   registry_nif.c     the registry's owners index and the exits of registrants
 *   replication_nif.c  the outbox, join, and anti-entropy (ctx, digest, summary, sync)
 *
 * The globals below (REPLICA and the atoms) are written while the library loads (drove_nif.c)
 * and only read after.
 */
#ifndef DROVE_REPLICA_NIF_H
#define DROVE_REPLICA_NIF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <erl_nif.h>

#include "awmap.h"
#include "codec.h"
#include "errors.h"
#include "outbox.h"
#include "owners.h"
#include "term_fast.h"

/* Single-key calls whose value (written, or read back and decoded) is larger than this
 * run on a dirty scheduler: copying or decoding it could hold a normal one for milliseconds. */
#define DIRTY_VALUE_BYTES (64 * 1024)

/* The layout is checked on a hot upgrade: bump REPLICA_ABI in drove_nif.c when this struct or
 * anything it points to changes meaning. */
typedef struct {
    ErlNifMutex *lock;
    dv_map *map;
    /* Two write logs: writers append to log[cur]; take_outbox flips cur under the lock and
     * encodes the other one outside it. changed[] holds the keys whose read value local
     * writes changed (for on_diffs), double-buffered the same way. */
    dv_outbox log[2];
    dv_buf changed[2];
    int cur;
    bool taking; /* a take_outbox is encoding the other log */
    ErlNifPid owner;
    bool has_owner;
    bool flush_pending;
    bool track;          /* remember locally changed keys for on_diffs */
    bool logging;        /* log local writes for the eager push; off while the owner has nobody to
                          * push to (anti-entropy gives a neighbour that comes later everything) */
    tf_atom_cache atoms; /* for decoding keys and values, used under the lock */
    dv_owners owners;    /* pid -> keys of the registry's {pid, value} entries (owners.h) */
    /* Registry mode (watch/2): every local process filed in owners is watched by a resource
     * monitor, and its exit drops its registrations in replica_down, run by the exiting
     * process itself. A local pid has an owners entry exactly while it is monitored: its last
     * key stays filed when it unregisters (the index may hold pairs that are no longer true),
     * and only its exit removes the entry. */
    bool watching;
    ErlNifPid watcher; /* the registry process: sent :drove_gone when `gone` fills */
    dv_buf gone;       /* (ErlNifPid, key) of the registrations that exits dropped, for its table */
    /* Exits whose down callback found the replica lock busy: their pids wait here (a down
     * callback cannot reschedule itself, and must not block a scheduler behind a dirty join)
     * until take_gone drops them. pend_lock guards pend and rung, and is held only for O(1). */
    ErlNifMutex *pend_lock;
    dv_buf pend;
    bool rung;         /* :drove_gone sent and not yet answered by a take_gone */
    uint64_t deferred; /* exits queued in pend so far (info's exits_deferred) */
    uint64_t busy;     /* calls rescheduled dirty because the lock was busy (info's lock_busy),
                        * counted with atomic adds: they do not hold the lock */
} replica;

extern ErlNifResourceType *REPLICA;

extern ERL_NIF_TERM A_OK, A_ERROR, A_TRUE, A_FALSE, A_ADD, A_REMOVE, A_FLUSH, A_GONE, A_NOPROC,
    A_NOT_LOCAL, A_BAD_TERM, A_EXISTS, A_DROPPED, A_FALLBACK;

/* Makes the atoms above (once per library image: see drove_nif.c). */
void replica_init_atoms(ErlNifEnv *env);
/* The resource's destructor. */
void replica_dtor(ErlNifEnv *env, void *obj);

/* ---- arguments and answers */

ERL_NIF_TERM mk_atom(ErlNifEnv *env, const char *name);
/* {:error, name} with name the atom of dv_strerror(rc) (errors.h). */
ERL_NIF_TERM error_tuple(ErlNifEnv *env, int rc);
bool get_replica(ErlNifEnv *env, ERL_NIF_TERM t, replica **r);
/* A binary of at most DV_MAX_MESSAGE bytes. */
bool get_bin(ErlNifEnv *env, ERL_NIF_TERM t, ErlNifBinary *b);
/* true or false. */
bool get_bool(ErlNifEnv *env, ERL_NIF_TERM t, bool *b);
/* The (replica, key_bin, value_bin) arguments of the single-key calls. */
bool replica_key_value(ErlNifEnv *env, const ERL_NIF_TERM argv[], replica **r, ErlNifBinary *k,
                       ErlNifBinary *v);
/* A new binary holding the n bytes at p. */
ERL_NIF_TERM bin_term(ErlNifEnv *env, const uint8_t *p, size_t n);
ERL_NIF_TERM reverse_list(ErlNifEnv *env, ERL_NIF_TERM list);

/* The next byte string of a buffer written with dv_buf_bytes (varint length + bytes) into
 * *s, *n; false at its end. */
bool next_bytes(const uint8_t **p, const uint8_t *end, const uint8_t **s, size_t *n);
/* Decode stored external-format bytes (validated on the way in): the fast decoder for the
 * common shapes, enif_binary_to_term for the rest (term_fast.h). */
ERL_NIF_TERM decode_term(ErlNifEnv *env, tf_atom_cache *atoms, const uint8_t *p, size_t n);
/* A well-formed external term occupying all of [p, p+n), decoded into scratch. */
bool valid_term(ErlNifEnv *scratch, tf_atom_cache *atoms, const uint8_t *p, size_t n);

/* ---- local writes (with the lock held) */

/* The physical part of the hybrid logical clock, in milliseconds. */
uint64_t wall_ms(void);
/* The write log local writes go to, or NULL while logging is off. */
dv_outbox *cur_log(replica *r);
/* Remembers a key whose read value a local write changed, for on_diffs. */
void note_change(replica *r, const uint8_t *k, size_t klen);
/* Sends the owner :drove_flush if the log just became non-empty (once until take_outbox). */
void maybe_notify(ErlNifEnv *env, replica *r);
/* The tail of every single-key write: remember a changed key for on_diffs, wake the owner
 * if the log just became non-empty, unlock, answer :ok or {:error, reason}. */
ERL_NIF_TERM end_write(ErlNifEnv *env, replica *r, int rc, const ErlNifBinary *k, bool changed);

/* ---- NIFs (scheduling beside their rows in drove_nif.c) */

ERL_NIF_TERM dv_replica_new_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]);
ERL_NIF_TERM dv_set_logging_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]);
ERL_NIF_TERM dv_set_owner_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]);
ERL_NIF_TERM dv_info_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]);
ERL_NIF_TERM dv_to_list_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]);

#endif
