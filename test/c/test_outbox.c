/* test_outbox.c - the write log (outbox.h): dv_outbox_append, with which put_new_delta
 * (keys_nif.c) logs a write first alone, to encode it as a delta of its own, then in the
 * replica's write log. A log appended to another must encode to what the other would have
 * encoded had the writes gone to it directly, and an allocation failure must leave the
 * destination as it was. */
#include <criterion/criterion.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "alloc.h"
#include "awmap.h"
#include "codec.h"
#include "outbox.h"
#include "test_support.h"

TestSuite(outbox, .init = install, .fini = uninstall);

#define ASSERT_NO_LEAK() cr_assert_eq(live_blocks, 0, "%ld blocks still allocated", live_blocks)
#define K(s)             (const uint8_t *)(s), (uint32_t)strlen(s)

typedef struct {
    dv_map *into;
    int messages;
} join_ctx;

static int join_emitted(void *ud, const uint8_t *p, size_t n) {
    join_ctx *c = ud;
    dv_delta d;
    cr_assert_eq(dv_decode_delta(p, n, &d), DV_OK);
    cr_assert_eq(dv_map_join(c->into, &d, NULL, NULL), DV_OK);
    dv_delta_free(&d);
    c->messages++;
    return DV_OK;
}

/* what a replica that joins everything `log` encodes reads for key k ("" when absent) */
static void assert_reads(dv_map *m, const char *k, const char *want) {
    dv_read rd;
    bool found = dv_map_get(m, K(k), &rd);
    if (!*want) {
        cr_assert(!found, "%s should be absent", k);
        return;
    }
    cr_assert(found, "%s should be present", k);
    cr_assert_eq(rd.vlen, strlen(want));
    cr_assert(memcmp(rd.val, want, rd.vlen) == 0);
}

/* writes on m: a, b, then c alone in `one` appended to `log` (as put_new_delta does) */
static void write_three(dv_map *m, dv_outbox *log, dv_outbox *one) {
    cr_assert_eq(dv_map_put_log(m, K("a"), K("1"), 1000, log, NULL), DV_OK);
    cr_assert_eq(dv_map_put_log(m, K("b"), K("2"), 1000, log, NULL), DV_OK);
    cr_assert_eq(dv_map_remove_log(m, K("a"), log, NULL), DV_OK);
    cr_assert_eq(dv_map_put_log(m, K("c"), K("3"), 1000, one, NULL), DV_OK);
}

Test(outbox, an_appended_log_encodes_as_if_written_there) {
    dv_map *m = dv_map_new(1), *peer = dv_map_new(2), *alone = dv_map_new(3);
    dv_outbox log, one;
    dv_outbox_init(&log);
    dv_outbox_init(&one);
    write_three(m, &log, &one);
    cr_assert_eq(dv_outbox_append(&log, &one), DV_OK);
    cr_assert_eq(dv_outbox_ops(&log), 4);
    cr_assert_eq(dv_outbox_ops(&one), 1);

    /* the single write, encoded alone, is one message that a replica can join */
    join_ctx c1 = {alone, 0};
    cr_assert_eq(dv_outbox_encode(&one, dv_map_rid(m), SIZE_MAX, join_emitted, &c1), DV_OK);
    cr_assert_eq(c1.messages, 1);
    assert_reads(alone, "c", "3");
    assert_reads(alone, "b", "");

    /* the whole log brings the peer to m's state, c included */
    join_ctx c2 = {peer, 0};
    cr_assert_eq(dv_outbox_encode(&log, dv_map_rid(m), SIZE_MAX, join_emitted, &c2), DV_OK);
    assert_reads(peer, "a", "");
    assert_reads(peer, "b", "2");
    assert_reads(peer, "c", "3");
    cr_assert_eq(dv_map_size(peer), dv_map_size(m));

    /* joining the single write again changes nothing */
    size_t before = dv_map_elements(peer);
    c2.messages = 0;
    cr_assert_eq(dv_outbox_encode(&one, dv_map_rid(m), SIZE_MAX, join_emitted, &c2), DV_OK);
    cr_assert_eq(dv_map_elements(peer), before);

    dv_outbox_free(&log);
    dv_outbox_free(&one);
    dv_map_free(m);
    dv_map_free(peer);
    dv_map_free(alone);
    ASSERT_NO_LEAK();
}

Test(outbox, a_failed_append_leaves_the_destination_as_it_was) {
    dv_map *m = dv_map_new(1);
    dv_outbox log, one;
    dv_outbox_init(&log);
    dv_outbox_init(&one);
    write_three(m, &log, &one);
    /* more operations than the log's arrays hold, so that appending must grow them */
    for (int i = 0; i < 200; i++) {
        char k[16];
        int n = snprintf(k, sizeof(k), "k%d", i);
        cr_assert_eq(dv_map_put_log(m, (const uint8_t *)k, (uint32_t)n, K("v"), 1000, &one, NULL),
                     DV_OK);
    }
    size_t ops = dv_outbox_ops(&log), nobs = log.nobs, bytes = log.elems.n;
    /* fail the first allocation, then the second, ... until the append needs no more */
    long fail = 0;
    for (;; fail++) {
        fail_after = fail;
        int rc = dv_outbox_append(&log, &one);
        fail_after = -1;
        if (rc == DV_OK)
            break;
        cr_assert_eq(rc, DV_ENOMEM, "append with %ld allocations allowed", fail);
        cr_assert_eq(dv_outbox_ops(&log), ops);
        cr_assert_eq(log.nobs, nobs);
        cr_assert_eq(log.elems.n, bytes);
    }
    cr_assert_gt(fail, 0, "the append had to allocate");
    cr_assert_eq(dv_outbox_ops(&log), ops + dv_outbox_ops(&one));
    dv_outbox_free(&log);
    dv_outbox_free(&one);
    dv_map_free(m);
    ASSERT_NO_LEAK();
}
