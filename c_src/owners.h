/* owners.h - which keys each process holds: the registry's pid -> keys index.
 *
 * A registry must find the keys of a process when it exits (to remove them), for keys/2, and
 * to know whether it still holds any. Both ids are 64-bit hashes: a process is the VM's
 * internal hash of its pid term (pid_key in drove_nif.c), a key the map's hash of its key
 * bytes (dv_map_key_hash). Whoever reads the index checks what it finds against the map (the
 * winner of each key must carry the pid). Two keys of one process with one hash share an
 * entry (they are found and removed together at the process's exit); two live processes with
 * one id share a record, and the first to exit takes the other's keys out of the index with
 * its own (the other's registrations would then outlive it). With 64-bit ids neither is
 * expected in the life of a cluster.
 *
 * Layout: an open-addressing table (linear probing, backward-shift deletion, no tombstones)
 * of 16-byte slots, one per process: the pid id and, for a process holding one key, the key
 * (the low bit of the stored pid id tells which; pid ids keep 63 bits). A process holding
 * more keys points to a record of its own: up to DV_OWNERS_ARRAY_MAX keys in an array, more
 * in a hash set (the same scheme), so adding, finding and removing a key is O(1) however many
 * keys a process holds. Key ids of 0 are stored as 1 (0 marks an empty place in a key set).
 *
 * Memory follows the contents: the table grows above three quarters full and, below an
 * eighth, shrinks to about three eighths in steps of bounded work, one at the end of each
 * change (as the map's tables do, awmap.c); a key set below an eighth full is rebuilt at a
 * quarter. An allocation that fails leaves the index as it was (a shrink just does not happen).
 *
 * Not thread-safe: the NIF calls it under the replica's lock.
 */
#ifndef DROVE_OWNERS_H
#define DROVE_OWNERS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define DV_OWNERS_ARRAY_MAX 16

typedef struct {
    uint64_t pid; /* 0: empty; else the pid id with bit 0 set when v points to a record */
    uint64_t v;   /* the one key, or a dv_owner_rec * */
} dv_owner_slot;

typedef struct {
    uint32_t n;   /* keys held (>= 2) */
    uint32_t cap; /* places in k: an array (<= DV_OWNERS_ARRAY_MAX) or a hash set */
    uint64_t k[];
} dv_owner_rec;

typedef struct {
    dv_owner_slot *slots;
    size_t cap;   /* slots (0 or a power of two) */
    size_t count; /* processes */
    size_t keys;  /* (process, key) pairs */
    size_t heap;  /* bytes of the records */
    /* A shrink in progress (owners.c): the smaller table, holding exactly the slots of the
     * table's places below cur, filled a step per call. */
    dv_owner_slot *nslots;
    size_t ncap, cur;
} dv_owners;

void dv_owners_init(dv_owners *o);
/* Frees everything; o is then empty (as after dv_owners_init). */
void dv_owners_free(dv_owners *o);

/* Records that pid holds key; a pair already there stays one pair. DV_OK or DV_ENOMEM (o is
 * unchanged then). */
int dv_owners_add(dv_owners *o, uint64_t pid, uint64_t key);
/* Forgets the pair; false if it was not there. */
bool dv_owners_remove(dv_owners *o, uint64_t pid, uint64_t key);
/* The keys of pid: returns how many, and points *places at *nplaces places holding them,
 * where 0 marks an empty place to skip (valid until the next change). */
size_t dv_owners_get(const dv_owners *o, uint64_t pid, const uint64_t **places, size_t *nplaces);
/* Forgets pid and all its keys; false if it held none. */
bool dv_owners_drop(dv_owners *o, uint64_t pid);
/* Bytes held (the table and the key arrays). */
size_t dv_owners_memory(const dv_owners *o);
/* Test hook: places copied per shrink step (0 restores the default). */
void dv_owners_set_step(size_t places);

#endif
