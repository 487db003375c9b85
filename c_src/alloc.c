#include "alloc.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static dv_allocator g_alloc = {malloc, realloc, free};

void dv_set_allocator(const dv_allocator *a) {
    if (a) {
        g_alloc = *a;
    } else {
        g_alloc.alloc = malloc;
        g_alloc.realloc = realloc;
        g_alloc.free = free;
    }
}

void *dv_alloc(size_t n) {
    return g_alloc.alloc(n ? n : 1);
}

void *dv_calloc(size_t count, size_t size) {
    if (size && count > SIZE_MAX / size)
        return NULL;
    size_t n = count * size;
    void *p = g_alloc.alloc(n ? n : 1);
    if (p)
        memset(p, 0, n);
    return p;
}

void *dv_realloc(void *p, size_t n) {
    return g_alloc.realloc(p, n ? n : 1);
}

void dv_free(void *p) {
    if (p)
        g_alloc.free(p);
}
