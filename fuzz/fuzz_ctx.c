/* fuzz_ctx.c - libFuzzer harness: dv_decode_ctx on raw input.
 *
 * On success the context must be in normal form (dots.h), survive an encode/decode round
 * trip, and equal the context rebuilt from its own diff against nothing. On failure the
 * output context must be unchanged. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "codec.h"
#include "dots.h"

#define CHECK(c)                                                                                   \
    do {                                                                                           \
        if (!(c))                                                                                  \
            __builtin_trap();                                                                      \
    } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_normal_form(const dv_ctx *c) {
    for (uint32_t i = 0; i < c->n; i++) {
        const dv_vv *e = &c->v[i];
        CHECK(i == 0 || c->v[i - 1].rid < e->rid);
        CHECK(e->base || e->ncloud);
        CHECK(e->base <= DV_MAX_CTR);
        for (uint32_t k = 0; k < e->ncloud; k++) {
            CHECK(e->cloud[k].lo <= e->cloud[k].hi && e->cloud[k].hi <= DV_MAX_CTR);
            CHECK(e->cloud[k].lo > e->base + 1);
            CHECK(k == 0 || e->cloud[k].lo > e->cloud[k - 1].hi + 1);
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    dv_ctx c, before;
    dv_ctx_init(&c);
    dv_ctx_init(&before);
    CHECK(dv_ctx_add_range(&c, 3, 5, 9) == DV_OK); /* replaced on success, kept on failure */
    CHECK(dv_ctx_copy(&before, &c) == DV_OK);
    int rc = dv_decode_ctx(data, size, &c);
    if (rc != DV_OK) {
        CHECK(rc < 0);
        CHECK(dv_ctx_equal(&c, &before));
    } else {
        check_normal_form(&c);
        dv_buf b;
        dv_buf_init(&b);
        dv_encode_ctx(&b, &c);
        CHECK(!b.oom);
        dv_ctx c2;
        dv_ctx_init(&c2);
        CHECK(dv_decode_ctx(b.p, b.n, &c2) == DV_OK);
        CHECK(dv_ctx_equal(&c, &c2));
        dv_ranges r;
        dv_ranges_init(&r);
        CHECK(dv_ctx_diff(&c, NULL, &r) == DV_OK);
        dv_ctx c3;
        dv_ctx_init(&c3);
        CHECK(dv_ctx_from_ranges(&c3, r.r, r.n) == DV_OK);
        CHECK(dv_ctx_equal(&c, &c3));
        /* c ∪ c == c and c \ c == ∅ */
        CHECK(dv_ctx_merge(&c3, &c) == DV_OK);
        CHECK(dv_ctx_equal(&c, &c3));
        r.n = 0;
        CHECK(dv_ctx_diff(&c, &c3, &r) == DV_OK);
        CHECK(r.n == 0);
        dv_ranges_free(&r);
        dv_ctx_free(&c3);
        dv_ctx_free(&c2);
        dv_buf_free(&b);
    }
    dv_ctx_free(&c);
    dv_ctx_free(&before);
    return 0;
}
