#include "alloc.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

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

#define HUGE_PAGE ((size_t)2 << 20)

/* Huge pages need a 2 MiB-aligned range: map one huge page more than asked, then unmap the
 * unaligned head and the tail. */
void *dv_pages_alloc(size_t n) {
    if (n < DV_PAGES_MIN)
        return dv_calloc(1, n);
    if (n > SIZE_MAX - 2 * HUGE_PAGE)
        return NULL;
    size_t len = (n + HUGE_PAGE - 1) & ~(HUGE_PAGE - 1);
    uint8_t *raw =
        mmap(NULL, len + HUGE_PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (raw == MAP_FAILED)
        return NULL;
    uintptr_t start = ((uintptr_t)raw + HUGE_PAGE - 1) & ~(uintptr_t)(HUGE_PAGE - 1);
    size_t head = start - (uintptr_t)raw, tail = HUGE_PAGE - head;
    if (head)
        munmap(raw, head);
    if (tail)
        munmap((uint8_t *)start + len, tail);
#ifdef MADV_HUGEPAGE
    madvise((void *)start, len, MADV_HUGEPAGE);
#endif
    return (void *)start;
}

void dv_pages_free(void *p, size_t n) {
    if (!p)
        return;
    if (n < DV_PAGES_MIN) {
        dv_free(p);
        return;
    }
    munmap(p, (n + HUGE_PAGE - 1) & ~(HUGE_PAGE - 1));
}
