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

#endif
