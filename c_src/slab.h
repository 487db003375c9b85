/* slab.h - a per-map allocator for the map's entry and element blocks.
 *
 * A replica holds one block per key (awmap.c), so a catch-up of a million keys is a million
 * small allocations, and freeing a map a million frees. Through the VM's allocator (the NIF
 * installs enif_alloc) that is most of the cost of a big join: per-block headers, locks on
 * the dirty schedulers' shared instance, frees routed back to the allocating thread. The
 * slab carves blocks out of chunks from dv_pages_alloc (small chunks from the VM's allocator,
 * 2 MiB ones mapped with huge pages): a size rounds up to one of 24 classes (slab.c), each
 * class keeps a free list of released blocks for reuse, a new block is a pointer bump, and
 * freeing the map frees a few chunks.
 *
 * Blocks above DV_SLAB_MAX_BLOCK bytes are allocated one by one (with a small header that
 * links them, so dv_slab_free_all frees them too), and a released one is freed at once.
 * Released small blocks are reused by blocks of their size class and, before the slab takes a
 * new chunk, split for smaller ones (so the blocks of a key shape that went away serve the
 * next, smaller one). A chunk is not given back on its own: blocks carry no header, so the
 * slab cannot tell which of its chunks a released block came from, and after a burst the
 * survivors sit scattered over every chunk anyway. Memory goes back by evacuation instead
 * (awmap.c): dv_slab_retire hands every chunk to a second, frozen slab; the map moves its
 * live blocks out of it (asking dv_slab_owns which ones are there) into fresh chunks, a step
 * at a time, and frees the frozen slab whole when none is left in it.
 *
 * Built with AddressSanitizer, every block is allocated one by one, so ASan sees each
 * block's lifetime; the slab's own logic is tested without it (test/c/test_slab.c, also
 * under valgrind).
 */
#ifndef DROVE_SLAB_H
#define DROVE_SLAB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define DV_SLAB_MAX_BLOCK 1024
#define DV_SLAB_CLASSES   24 /* slab.c: class_size */
#define DV_SLAB_MIN_CHUNK ((size_t)4 << 10)
#define DV_SLAB_MAX_CHUNK ((size_t)2 << 20) /* DV_PAGES_MIN: mapped, huge pages */

typedef struct dv_slab_chunk dv_slab_chunk;
typedef struct dv_slab_big dv_slab_big;

typedef struct {
    void *free[DV_SLAB_CLASSES]; /* released blocks of each size class (linked through them) */
    uint32_t nonempty;           /* bit k: free[k] is not empty */
    uint8_t *bump, *bump_end;    /* the unused rest of the newest chunk */
    dv_slab_chunk *chunks;
    dv_slab_big *big;
    size_t held;  /* bytes held: chunks and big blocks with their headers */
    size_t nbig;  /* big blocks */
    void **index; /* a retired slab: its chunks' addresses, sorted (dv_slab_owns) */
    size_t nindex;
    size_t max_chunk; /* largest new chunk; 0: DV_SLAB_MAX_CHUNK */
} dv_slab;

void dv_slab_init(dv_slab *s);
/* Frees every chunk and big block; s is then empty (as after dv_slab_init). */
void dv_slab_free_all(dv_slab *s);
/* n > 0. NULL on allocation failure. */
void *dv_slab_alloc(dv_slab *s, size_t n);
/* p came from dv_slab_alloc(s, n) with the same n. NULL p is ignored. */
void dv_slab_release(dv_slab *s, void *p, size_t n);
size_t dv_slab_held(const dv_slab *s);
/* Big blocks (allocated one by one) in s: every block when built with ASan. */
size_t dv_slab_big_blocks(const dv_slab *s);

/* Moves every chunk of s, with the free blocks in them, into *old (which must be empty, as
 * after dv_slab_init), indexed for dv_slab_owns; s keeps its big blocks and takes new chunks
 * for the small blocks it allocates from now on. Small blocks allocated before belong to
 * *old: release none of them to s (nor to *old: once none is in use, free *old whole with
 * dv_slab_free_all). DV_ENOMEM (the index) leaves both unchanged. */
int dv_slab_retire(dv_slab *s, dv_slab *old);
/* Caps the size of s's new chunks at max (0: DV_SLAB_MAX_CHUNK again). An evacuation fills
 * chunks quickly, and the first touch of a 2 MiB huge page can cost milliseconds. */
void dv_slab_set_max_chunk(dv_slab *s, size_t max);
/* Whether p lies in one of retired slab s's chunks. O(log chunks). */
bool dv_slab_owns(const dv_slab *s, const void *p);
/* Frees up to max_chunks chunks of retired slab s (none of whose blocks is in use), so that
 * a big one goes back a few chunks at a time; true when s is then empty (as after
 * dv_slab_init). */
bool dv_slab_free_some(dv_slab *s, size_t max_chunks);

#endif
