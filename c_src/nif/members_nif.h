/* members_nif.h - NIF entry points over members.c (rows for the table in drove_nif.c).
 *
 *   members_set(candidates :: [binary], self :: binary) :: [binary]
 *   members_diff(old :: [binary], new :: [binary]) :: {added :: [binary], removed :: [binary]}
 *
 * Scheduling: register both with flags 0 (normal scheduler). They are O(n log n) in the list
 * length: a cluster's node names sort in a small fraction of a millisecond. A list longer
 * than DV_MEMBERS_NIF_DIRTY_LEN (for members_diff: both lists together), or names totalling
 * more than DV_MEMBERS_NIF_DIRTY_BYTES, is handed to a dirty CPU scheduler by the function
 * itself (enif_schedule_nif), so a normal scheduler is held well under 1 ms. Lists longer than
 * DV_MEMBERS_NIF_MAX_LEN and names longer than DV_MEMBERS_NIF_MAX_NAME bytes are badarg; running
 * out of memory raises :out_of_memory.
 */
#ifndef DROVE_MEMBERS_NIF_H
#define DROVE_MEMBERS_NIF_H

#include <erl_nif.h>

#define DV_MEMBERS_NIF_MAX_LEN     65536
#define DV_MEMBERS_NIF_MAX_NAME    65536
#define DV_MEMBERS_NIF_DIRTY_LEN   256
#define DV_MEMBERS_NIF_DIRTY_BYTES (64 * 1024)

ERL_NIF_TERM dv_members_set_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]);
ERL_NIF_TERM dv_members_diff_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]);

#endif
