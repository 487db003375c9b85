/* alloc.h - injectable allocator for the pure C core.
 *
 * The core never calls malloc directly: the NIF installs enif_alloc & co. at load time,
 * tests keep the libc defaults (so ASan/valgrind see every block). */
#ifndef DROVE_ALLOC_H
#define DROVE_ALLOC_H

#include <stddef.h>

typedef struct {
    void *(*alloc)(size_t);
    void *(*realloc)(void *, size_t);
    void (*free)(void *);
} dv_allocator;

/* Install an allocator; NULL restores libc. Call once, before any other core call. */
void dv_set_allocator(const dv_allocator *a);

void *dv_alloc(size_t n);
void *dv_calloc(size_t count, size_t size);
void *dv_realloc(void *p, size_t n);
void dv_free(void *p);

/* Zeroed memory for big tables and slab chunks. From DV_PAGES_MIN bytes up it is mapped
 * straight from the kernel (zero pages, no memset, and advised for transparent huge pages:
 * a big table or a catch-up's worth of entries then costs a few hundred page faults, not tens
 * of thousands); below that it is dv_calloc. Give it back with dv_pages_free and the same n.
 * Mapped memory is not seen by the VM's allocator statistics; Drove.CRDT.info/1 counts it. */
#define DV_PAGES_MIN ((size_t)2 << 20)
void *dv_pages_alloc(size_t n);
void dv_pages_free(void *p, size_t n);

#endif
