/* test_slab.c - the per-map block allocator (slab.h).
 *
 * A model keeps every live block with its size and a fill byte; random allocations and
 * releases (sizes across the small classes and above DV_SLAB_MAX_BLOCK) must give blocks that
 * never overlap a live block and keep their contents, released blocks must be reused, and
 * free_all must give back every chunk (the counting allocator ends with nothing live).
 * Allocation failure returns NULL and leaves the slab usable.
 */
#include <criterion/criterion.h>
#include <stdint.h>
#include <string.h>

#include "alloc.h"
#include "slab.h"
#include "test_support.h"

TestSuite(slab, .init = install, .fini = uninstall);

/* Built with ASan the slab hands every block to the allocator (slab.h): nothing to reuse. */
#if defined(__SANITIZE_ADDRESS__)
#define PASSTHROUGH 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define PASSTHROUGH 1
#endif
#endif
#ifndef PASSTHROUGH
#define PASSTHROUGH 0
#endif

#define SKIP_IF_PASSTHROUGH()                                                                      \
    do {                                                                                           \
        if (PASSTHROUGH)                                                                           \
            cr_skip_test("ASan build: every block is allocated on its own");                       \
    } while (0)

typedef struct {
    uint8_t *p;
    size_t n;
    uint8_t fill;
} live_t;

static size_t random_size(void) {
    switch (rnd_below(8)) {
    case 0:
        return DV_SLAB_MAX_BLOCK + 1 + rnd_below(3000); /* a block of its own */
    case 1:
        return 1 + rnd_below(8);
    default:
        return 1 + rnd_below(DV_SLAB_MAX_BLOCK);
    }
}

static void check_block(const live_t *b) {
    for (size_t i = 0; i < b->n; i++)
        cr_assert_eq(b->p[i], b->fill, "block %p byte %zu changed", (void *)b->p, i);
}

Test(slab, random_alloc_release_keeps_blocks_apart_and_intact) {
    enum { OPS = 20000, MAXLIVE = 2000 };
    static live_t live[MAXLIVE];
    size_t nlive = 0;
    dv_slab s;
    dv_slab_init(&s);
    for (int op = 0; op < OPS; op++) {
        if (nlive < MAXLIVE && (nlive == 0 || rnd_below(3) != 0)) {
            size_t n = random_size();
            uint8_t *p = dv_slab_alloc(&s, n);
            cr_assert_not_null(p);
            cr_assert_eq((uintptr_t)p % 8, 0, "blocks are 8-byte aligned");
            live[nlive] = (live_t){p, n, (uint8_t)rnd()};
            memset(p, live[nlive].fill, n);
            nlive++;
        } else {
            size_t i = rnd_below(nlive);
            check_block(&live[i]);
            dv_slab_release(&s, live[i].p, live[i].n);
            live[i] = live[--nlive];
        }
    }
    for (size_t i = 0; i < nlive; i++) /* writes never spilled into another block */
        check_block(&live[i]);
    cr_assert_gt(dv_slab_held(&s), 0);
    dv_slab_free_all(&s);
    cr_assert_eq(dv_slab_held(&s), 0);
    cr_assert_eq(live_blocks, 0, "free_all gave back every chunk and big block");
}

Test(slab, released_larger_blocks_are_split_before_the_slab_grows) {
    SKIP_IF_PASSTHROUGH();
    enum { N = 3000 };
    static uint8_t *p[N];
    dv_slab s;
    dv_slab_init(&s);
    for (size_t i = 0; i < N; i++)
        cr_assert_not_null(p[i] = dv_slab_alloc(&s, 160));
    size_t held = dv_slab_held(&s);
    for (size_t i = 0; i < N; i++)
        dv_slab_release(&s, p[i], 160);
    /* a smaller shape takes their place: 144 bytes from each, 16 left on the 16-byte list */
    for (size_t i = 0; i < N; i++) {
        cr_assert_not_null(p[i] = dv_slab_alloc(&s, 144));
        memset(p[i], (int)(i & 0xff), 144);
    }
    for (size_t i = 0; i < N; i++)
        cr_assert_not_null(dv_slab_alloc(&s, 16));
    cr_assert_eq(dv_slab_held(&s), held, "no new chunk: the released blocks were split");
    for (size_t i = 0; i < N; i++) /* and the split blocks do not overlap */
        for (size_t b = 0; b < 144; b++)
            cr_assert_eq(p[i][b], (uint8_t)(i & 0xff));
    dv_slab_free_all(&s);
    cr_assert_eq(live_blocks, 0);
}

Test(slab, released_blocks_are_reused_by_their_size_class) {
    SKIP_IF_PASSTHROUGH();
    dv_slab s;
    dv_slab_init(&s);
    void *a = dv_slab_alloc(&s, 40);
    void *b = dv_slab_alloc(&s, 100);
    dv_slab_release(&s, a, 40);
    cr_assert_eq(dv_slab_alloc(&s, 33), a, "33 and 40 share the 48-byte class: the released block");
    cr_assert_neq(dv_slab_alloc(&s, 40), a);
    size_t held = dv_slab_held(&s);
    for (int i = 0; i < 1000; i++) { /* a steady state of churn needs no new chunk */
        void *p = dv_slab_alloc(&s, 100);
        dv_slab_release(&s, p, 100);
    }
    cr_assert_eq(dv_slab_held(&s), held);
    dv_slab_release(&s, b, 100);
    dv_slab_release(&s, NULL, 100);
    dv_slab_free_all(&s);
    cr_assert_eq(live_blocks, 0);
}

Test(slab, big_blocks_are_freed_one_by_one_and_by_free_all) {
    dv_slab s;
    dv_slab_init(&s);
    void *a = dv_slab_alloc(&s, 5000);
    void *b = dv_slab_alloc(&s, DV_SLAB_MAX_BLOCK + 1);
    void *c = dv_slab_alloc(&s, 70000);
    cr_assert(a && b && c);
    cr_assert_eq(live_blocks, 3);
    dv_slab_release(&s, b, DV_SLAB_MAX_BLOCK + 1); /* the middle of the list */
    cr_assert_eq(live_blocks, 2);
    dv_slab_release(&s, c, 70000); /* the head */
    dv_slab_free_all(&s);
    cr_assert_eq(live_blocks, 0);
    cr_assert_eq(dv_slab_held(&s), 0);
}

Test(slab, allocation_failure_returns_null_and_the_slab_stays_usable) {
    dv_slab s;
    dv_slab_init(&s);
    void *a = dv_slab_alloc(&s, 64);
    cr_assert_not_null(a);
    fail_after = 0;
    cr_assert_null(dv_slab_alloc(&s, 5000), "a big block fails");
    /* small blocks fail once the first chunk is used up */
    void *p;
    size_t got = 0;
    while ((p = dv_slab_alloc(&s, 512)) != NULL)
        got++;
    cr_assert_lt(got, DV_SLAB_MIN_CHUNK / 512);
    fail_after = -1;
    cr_assert_not_null(dv_slab_alloc(&s, 512));
    cr_assert_not_null(dv_slab_alloc(&s, 5000));
    dv_slab_free_all(&s);
    cr_assert_eq(live_blocks, 0);
}

Test(slab, the_rest_of_a_chunk_is_not_lost) {
    SKIP_IF_PASSTHROUGH();
    dv_slab s;
    dv_slab_init(&s);
    /* fill the first chunk with 1000-byte blocks: the rest (< 1000 bytes) goes to its class */
    size_t held = 0;
    void *p = dv_slab_alloc(&s, 1000);
    held = dv_slab_held(&s);
    while (dv_slab_held(&s) == held)
        p = dv_slab_alloc(&s, 1000);
    (void)p;
    /* 1000 bytes take the 1024-byte class; the chunk header is 16 bytes; the rest (1008
     * bytes) was split into blocks of the largest classes that fit: 896 + 112 */
    size_t before = dv_slab_held(&s);
    void *q = dv_slab_alloc(&s, 890);
    cr_assert_not_null(q);
    q = dv_slab_alloc(&s, 100);
    cr_assert_not_null(q);
    cr_assert_eq(dv_slab_held(&s), before, "served from the old chunk's rest");
    dv_slab_free_all(&s);
    cr_assert_eq(live_blocks, 0);
}
