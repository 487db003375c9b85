/* replication_nif.h - the replication protocol's calls on a replica (rows for the table in
 * drove_nif.c). Drove.Replicator drives them; the messages are codec.h's.
 *
 *   take_outbox(replica, max_bytes, ship) :: {[delta_bin], local_diffs} | {:dropped, local_diffs}
 *                                          | {:error, reason}
 *   join(replica, delta_bin, want_diffs) :: {:ok, diffs, n_elements} | {:error, reason}
 *   ctx(replica) :: ctx_bin | {:error, reason}
 *   digest(replica) :: digest_bin | {:error, reason}
 *   summary(replica) :: summary_bin | {:error, reason}
 *   summary_match(replica, peer_summary_bin) :: boolean | {:error, reason}
 *   sync_reply(replica, peer_ctx_bin, peer_digest_bin, max_bytes, max_dots)
 *       :: {:ok, [delta_bin], my_ctx_bin, manifest_bin} | {:error, reason}
 *   sync_finish(replica, peer_ctx_bin, peer_manifest_bin, max_bytes, want_diffs)
 *       :: {:ok, [delta_bin_for_peer], local_diffs, removed_here} | {:error, reason}
 *
 * A message from a peer is validated whole before anything changes: a bad one is
 * {:error, reason} (errors.h) and leaves the replica as it was. Scheduling: take_outbox, join
 * and the small anti-entropy calls run normal, with the lock taken as lock_nif.h says, and
 * dispatch by size (see their comments); sync_reply and sync_finish are dirty (O(map)).
 */
#ifndef DROVE_REPLICATION_NIF_H
#define DROVE_REPLICATION_NIF_H

#include <erl_nif.h>

/* Messages at or above this size are joined on a dirty scheduler. */
#define DIRTY_JOIN_BYTES (64 * 1024)
/* Write logs with more operations than this are encoded on a dirty scheduler. */
#define DIRTY_OUTBOX_OPS 2048

ERL_NIF_TERM dv_take_outbox_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]);
ERL_NIF_TERM dv_join_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]);
ERL_NIF_TERM dv_ctx_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]);
ERL_NIF_TERM dv_digest_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]);
ERL_NIF_TERM dv_summary_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]);
ERL_NIF_TERM dv_summary_match_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]);
ERL_NIF_TERM dv_sync_reply_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]);
ERL_NIF_TERM dv_sync_finish_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]);

#endif
