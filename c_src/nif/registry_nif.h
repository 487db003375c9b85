/* registry_nif.h - the registry's calls on a replica (rows for the table in drove_nif.c).
 *
 *   register(replica, key_bin, value_bin, pid) :: :ok | {:exists, current_value} | :noproc
 *                                                | :not_local | {:error, reason}
 *   own(replica, key_bin, pid) :: :ok | :noproc | {:error, reason}
 *   disown(replica, key_bin, pid) :: :ok
 *   owned_keys(replica, pid) :: [key]
 *   owns(replica, pid) :: boolean
 *   drop_owned(replica, [pid]) :: [{key, pid}] | {:error, reason}
 *   watch(replica, registry_pid) :: :ok
 *   unwatch(replica) :: :ok
 *   take_gone(replica) :: [{key, pid}] | {:error, reason}
 *
 * A registry value is {pid, value} in external term format; the replica files each key under
 * its pid (owners.h) so that the keys of a pid are found without a table. In registry mode
 * (watch/2) the replica monitors every local pid it files, and replica_down, the resource's
 * down callback, drops an exited process's registrations; take_gone hands them to the
 * registry process. Scheduling: normal, with the lock taken as lock_nif.h says, and
 * rescheduled dirty by size (above DIRTY_VALUE_BYTES of value, DIRTY_OWNED_KEYS keys of one
 * pid, or DIRTY_GONE_PIDS / DIRTY_GONE_BYTES of exits to hand over); drop_owned is dirty.
 */
#ifndef DROVE_REGISTRY_NIF_H
#define DROVE_REGISTRY_NIF_H

#include <erl_nif.h>

/* Above this many keys under one pid, owned_keys and owns run dirty. */
#define DIRTY_OWNED_KEYS 512
/* Above this many queued exits or recorded keys, take_gone runs dirty. */
#define DIRTY_GONE_PIDS  64
#define DIRTY_GONE_BYTES (64 * 1024)

/* The replica resource's down callback (ErlNifResourceTypeInit.down): a watched process
 * exited. Run by the exiting process on its scheduler. */
void replica_down(ErlNifEnv *env, void *obj, ErlNifPid *pid, ErlNifMonitor *mon);

ERL_NIF_TERM dv_register_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]);
ERL_NIF_TERM dv_own_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]);
ERL_NIF_TERM dv_disown_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]);
ERL_NIF_TERM dv_owned_keys_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]);
ERL_NIF_TERM dv_owns_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]);
ERL_NIF_TERM dv_drop_owned_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]);
ERL_NIF_TERM dv_watch_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]);
ERL_NIF_TERM dv_unwatch_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]);
ERL_NIF_TERM dv_take_gone_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]);

#endif
