/* keys_nif.h - the single-key calls on a replica (rows for the table in drove_nif.c).
 *
 *   put(replica, key_bin, value_bin) :: :ok | {:error, reason}
 *   delete(replica, key_bin) :: :ok | {:error, reason}
 *   get(replica, key_bin) :: {:ok, value} | :error
 *   put_t(replica, key, value) :: :ok | :fallback | {:error, reason}
 *   get_t(replica, key) :: {:ok, value} | :error | :fallback
 *   delete_t(replica, key) :: :ok | :fallback | {:error, reason}
 *   put_new(replica, key_bin, value_bin) :: :ok | {:exists, current_value} | {:error, reason}
 *   holds(replica, key_bin, value_bin) :: boolean
 *   remove_value(replica, key_bin, value_bin) :: :ok | {:error, reason}
 *   remove_values(replica, [{key_bin, value_bin}]) :: :ok | {:error, reason}
 *   encode(term) :: binary | :fallback          (the fast encoder alone, for tests)
 *   decode(binary) :: {:ok, term} | :fallback   (the fast decoder alone, for tests)
 *
 * Keys and values are external term format (`_bin`), or terms that the call encodes itself
 * (`_t`, term_fast.h). Scheduling: normal, with the lock taken as lock_nif.h says; a value
 * over DIRTY_VALUE_BYTES, written or read back, is handled on a dirty scheduler;
 * remove_values is dirty (O(list)).
 */
#ifndef DROVE_KEYS_NIF_H
#define DROVE_KEYS_NIF_H

#include <erl_nif.h>

/* Largest encoding the fast encoder makes for put_t/get_t/delete_t (and encode/decode take):
 * bigger terms are :fallback, and term_to_binary encodes them with reduction counting. */
#define TERM_MAX (64 * 1024)

ERL_NIF_TERM dv_put_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]);
ERL_NIF_TERM dv_delete_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]);
ERL_NIF_TERM dv_get_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]);
ERL_NIF_TERM dv_put_t_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]);
ERL_NIF_TERM dv_get_t_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]);
ERL_NIF_TERM dv_delete_t_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]);
ERL_NIF_TERM dv_put_new_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]);
ERL_NIF_TERM dv_put_new_delta_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]);
ERL_NIF_TERM dv_holds_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]);
ERL_NIF_TERM dv_remove_value_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]);
ERL_NIF_TERM dv_remove_values_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]);
ERL_NIF_TERM dv_encode_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]);
ERL_NIF_TERM dv_decode_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]);

#endif
