/* ring_nif.h - NIF entry points over ring.c (rows for the table in drove_nif.c).
 *
 *   ring_new(points :: [[0..2^32-1]]) :: ring
 *       One list of points per member, in member order (Horde: 128 phash2 values each).
 *       1..DV_RING_NIF_MAX_MEMBERS members, at most DV_RING_NIF_MAX_PER_MEMBER points each and
 *       at least one point in all. The ring is immutable; share it freely between processes.
 *   ring_owner(ring, hash :: 0..2^32-1) :: member_index (0-based)
 *   ring_owners(ring, [hash]) :: [member_index]           (at most DV_RING_NIF_MAX_BATCH)
 *   ring_info(ring) :: {members, distinct_points}
 *   rendezvous_owner(members :: [binary], key :: binary) :: member_index
 *   rendezvous_owners(members :: [binary], [key :: binary]) :: [member_index]
 *       Member seeds are XXH3 of the member binaries, keys are reduced to XXH3 of their bytes;
 *       see ring.h. 1..DV_RING_NIF_MAX_MEMBERS members.
 *
 * Anything else (wrong types, integers out of range, improper lists, bounds exceeded) is
 * badarg (ArgumentError); running out of memory raises :out_of_memory.
 *
 * Scheduling: all are registered with flags 0 (normal scheduler). ring_owner is O(log V), a
 * binary search. The others dispatch by size with enif_schedule_nif so that a normal
 * scheduler is held well under 1 ms; ring builds happen once per membership change, so the
 * dirty hop costs nothing that matters and the thresholds are low (what ring_new and
 * ring_owner take: bench/RESULTS.md, bench/placement.exs):
 *   ring_new          dirty above DV_RING_NIF_DIRTY_POINTS points in all;
 *   ring_owners       dirty above DV_RING_NIF_DIRTY_BATCH hashes;
 *   rendezvous_owner  dirty above DV_RING_NIF_DIRTY_WORK members, or DV_RING_NIF_DIRTY_BYTES
 *                     bytes of names and key;
 *   rendezvous_owners dirty above DV_RING_NIF_DIRTY_WORK members x keys, or
 *                     DV_RING_NIF_DIRTY_BYTES bytes of names and keys.
 */
#ifndef DROVE_RING_NIF_H
#define DROVE_RING_NIF_H

#include <erl_nif.h>

#define DV_RING_NIF_MAX_MEMBERS    65536
#define DV_RING_NIF_MAX_PER_MEMBER 4096
#define DV_RING_NIF_MAX_BATCH      (1 << 24)
#define DV_RING_NIF_DIRTY_POINTS   2048
#define DV_RING_NIF_DIRTY_BATCH    4096
#define DV_RING_NIF_DIRTY_WORK     65536
#define DV_RING_NIF_DIRTY_BYTES    (256 * 1024)

/* Opens the ring resource type (flags: ERL_NIF_RT_CREATE, and ERL_NIF_RT_TAKEOVER to take it
 * over from the library being upgraded); call from the library's load and upgrade. 0 on
 * success. */
int dv_ring_nif_load(ErlNifEnv *env, ErlNifResourceFlags flags);

ERL_NIF_TERM dv_ring_new_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]);
ERL_NIF_TERM dv_ring_owner_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]);
ERL_NIF_TERM dv_ring_owners_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]);
ERL_NIF_TERM dv_ring_info_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]);
ERL_NIF_TERM dv_rendezvous_owner_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]);
ERL_NIF_TERM dv_rendezvous_owners_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]);

#endif
