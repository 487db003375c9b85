/* slab.c - see slab.h. */
#include "slab.h"

#include <stdlib.h>
#include <string.h>

#include "alloc.h"
#include "errors.h"

#if defined(__SANITIZE_ADDRESS__)
#define SLAB_PASSTHROUGH 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SLAB_PASSTHROUGH 1
#endif
#endif
#ifndef SLAB_PASSTHROUGH
#define SLAB_PASSTHROUGH 0
#endif

struct dv_slab_chunk {
    dv_slab_chunk *next;
    size_t size; /* bytes of the chunk, this header included */
};

/* A block allocated on its own: this header, then the block. Doubly linked for release. */
struct dv_slab_big {
    dv_slab_big *prev, *next;
};

#define ALIGN     16 /* every class size is a multiple of it */
#define CHUNK_HDR ((sizeof(dv_slab_chunk) + ALIGN - 1) & ~(size_t)(ALIGN - 1))
#define BIG_HDR   ((sizeof(dv_slab_big) + ALIGN - 1) & ~(size_t)(ALIGN - 1))

/* Size classes: every 16 bytes up to 256 (where a registry entry with its key and value
 * usually falls), then four per doubling up to 1024 (a block wastes at most a fifth of
 * itself). Blocks of nearby sizes share a class, so a key shape that goes away
 * leaves free blocks the next shape can use. */
static const uint16_t class_size[DV_SLAB_CLASSES] = {16,  32,  48,  64,  80,  96,  112, 128,
                                                     144, 160, 176, 192, 208, 224, 240, 256,
                                                     320, 384, 448, 512, 640, 768, 896, 1024};

#define STEP_CLASSES 16 /* the classes every 16 bytes */
_Static_assert(DV_SLAB_CLASSES <= 32, "dv_slab.nonempty has a bit per class");

/* The class of n (1 <= n <= DV_SLAB_MAX_BLOCK). */
static inline size_t class_of(size_t n) {
    if (n <= 16 * STEP_CLASSES)
        return (n - 1) / 16;
    size_t k = STEP_CLASSES;
    while (class_size[k] < n)
        k++;
    return k;
}

void dv_slab_init(dv_slab *s) {
    memset(s, 0, sizeof(*s));
}

void dv_slab_free_all(dv_slab *s) {
    for (dv_slab_chunk *c = s->chunks, *n; c; c = n) {
        n = c->next;
        if (c->size >= DV_PAGES_MIN)
            dv_pages_free(c, c->size);
        else
            dv_free(c);
    }
    for (dv_slab_big *b = s->big, *n; b; b = n) {
        n = b->next;
        dv_free(b);
    }
    dv_free(s->index);
    dv_slab_init(s);
}

static void *big_alloc(dv_slab *s, size_t n) {
    if (n > SIZE_MAX - BIG_HDR)
        return NULL;
    dv_slab_big *b = dv_alloc(BIG_HDR + n);
    if (!b)
        return NULL;
    b->prev = NULL;
    b->next = s->big;
    if (s->big)
        s->big->prev = b;
    s->big = b;
    s->held += BIG_HDR + n;
    s->nbig++;
    return (uint8_t *)b + BIG_HDR;
}

static void big_release(dv_slab *s, void *p, size_t n) {
    dv_slab_big *b = (dv_slab_big *)((uint8_t *)p - BIG_HDR);
    if (b->prev)
        b->prev->next = b->next;
    else
        s->big = b->next;
    if (b->next)
        b->next->prev = b->prev;
    s->held -= BIG_HDR + n;
    s->nbig--;
    dv_free(b);
}

static inline void push(dv_slab *s, size_t k, void *p) {
    *(void **)p = s->free[k];
    s->free[k] = p;
    s->nonempty |= (uint32_t)1 << k;
}

static inline void *pop(dv_slab *s, size_t k) {
    void *p = s->free[k];
    s->free[k] = *(void **)p;
    if (!s->free[k])
        s->nonempty &= ~((uint32_t)1 << k);
    return p;
}

/* Gives the n bytes at p (a multiple of 16, below DV_SLAB_MAX_BLOCK + 16) to the free lists,
 * largest classes first: no byte is lost. */
static void carve(dv_slab *s, uint8_t *p, size_t n) {
    while (n >= class_size[0]) {
        size_t k = class_of(n < DV_SLAB_MAX_BLOCK ? n : DV_SLAB_MAX_BLOCK);
        if (class_size[k] > n)
            k--;
        push(s, k, p);
        p += class_size[k];
        n -= class_size[k];
    }
}

/* A new chunk with room for at least `need` bytes; the rest of the old one is given to the
 * free lists, so no byte is lost. A chunk is about an eighth of what the slab holds (a power
 * of two from MIN to MAX), so the unused end of the newest chunk stays below about an eighth
 * of the memory, while a big map still gets 2 MiB chunks (huge pages). */
static bool new_chunk(dv_slab *s, size_t need) {
    size_t size = DV_SLAB_MIN_CHUNK, max = s->max_chunk ? s->max_chunk : DV_SLAB_MAX_CHUNK;
    while (size < max && size * 2 <= s->held / 8)
        size *= 2;
    while (size - CHUNK_HDR < need)
        size *= 2;
    dv_slab_chunk *c = size >= DV_PAGES_MIN ? dv_pages_alloc(size) : dv_alloc(size);
    if (!c)
        return false;
    carve(s, s->bump, (size_t)(s->bump_end - s->bump));
    c->next = s->chunks;
    c->size = size;
    s->chunks = c;
    s->held += size;
    s->bump = (uint8_t *)c + CHUNK_HDR;
    s->bump_end = (uint8_t *)c + size;
    return true;
}

void *dv_slab_alloc(dv_slab *s, size_t n) {
    if (SLAB_PASSTHROUGH || n == 0 || n > DV_SLAB_MAX_BLOCK)
        return big_alloc(s, n ? n : 1);
    size_t k = class_of(n), size = class_size[k];
    if (s->free[k])
        return pop(s, k);
    if ((size_t)(s->bump_end - s->bump) < size) {
        /* before growing: a released block of a larger class, split (blocks of a key shape
         * that went away serve the next shape, even a smaller one) */
        uint32_t larger = s->nonempty & ~(((uint32_t)2 << k) - 1);
        if (larger) {
            size_t j = (size_t)__builtin_ctz(larger);
            uint8_t *p = pop(s, j);
            carve(s, p + size, class_size[j] - size);
            return p;
        }
        if (!new_chunk(s, size))
            return NULL;
    }
    void *p = s->bump;
    s->bump += size;
    return p;
}

void dv_slab_release(dv_slab *s, void *p, size_t n) {
    if (!p)
        return;
    if (SLAB_PASSTHROUGH || n == 0 || n > DV_SLAB_MAX_BLOCK) {
        big_release(s, p, n ? n : 1);
        return;
    }
    push(s, class_of(n), p);
}

size_t dv_slab_held(const dv_slab *s) {
    return s->held;
}

size_t dv_slab_big_blocks(const dv_slab *s) {
    return s->nbig;
}

static int cmp_ptr(const void *a, const void *b) {
    uintptr_t x = (uintptr_t) * (void *const *)a, y = (uintptr_t) * (void *const *)b;
    return x < y ? -1 : x > y;
}

int dv_slab_retire(dv_slab *s, dv_slab *old) {
    size_t n = 0, chunk_bytes = 0;
    for (dv_slab_chunk *c = s->chunks; c; c = c->next) {
        n++;
        chunk_bytes += c->size;
    }
    void **index = NULL;
    if (n && !(index = dv_alloc(sizeof(void *) * n)))
        return DV_ENOMEM;
    size_t i = 0;
    for (dv_slab_chunk *c = s->chunks; c; c = c->next)
        index[i++] = c;
    if (n)
        qsort(index, n, sizeof(void *), cmp_ptr);
    dv_slab_init(old);
    memcpy(old->free, s->free, sizeof(s->free));
    old->nonempty = s->nonempty;
    old->chunks = s->chunks;
    old->held = chunk_bytes;
    old->index = index;
    old->nindex = n;
    /* s keeps its big blocks only */
    memset(s->free, 0, sizeof(s->free));
    s->nonempty = 0;
    s->bump = s->bump_end = NULL;
    s->chunks = NULL;
    s->held -= chunk_bytes;
    return DV_OK;
}

bool dv_slab_owns(const dv_slab *s, const void *p) {
    uintptr_t a = (uintptr_t)p;
    size_t lo = 0, hi = s->nindex; /* the last chunk starting at or below p */
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if ((uintptr_t)s->index[mid] <= a)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (!lo)
        return false;
    const dv_slab_chunk *c = s->index[lo - 1];
    return a < (uintptr_t)c + c->size;
}

bool dv_slab_free_some(dv_slab *s, size_t max_chunks) {
    for (; s->chunks && max_chunks; max_chunks--) {
        dv_slab_chunk *c = s->chunks;
        s->chunks = c->next;
        s->held -= c->size;
        if (c->size >= DV_PAGES_MIN)
            dv_pages_free(c, c->size);
        else
            dv_free(c);
    }
    if (s->chunks)
        return false;
    dv_slab_free_all(s);
    return true;
}

void dv_slab_set_max_chunk(dv_slab *s, size_t max) {
    s->max_chunk = max;
}
