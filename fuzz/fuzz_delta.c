/* fuzz_delta.c - libFuzzer harness: dv_decode_delta on raw input.
 *
 * On success the decoded delta must obey the rules of codec.h (valid ranges and dots, views
 * inside the input, timestamps in range) and, the format being canonical, re-encoding it
 * must give back the input byte for byte. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "codec.h"

#define CHECK(c)                                                                                   \
    do {                                                                                           \
        if (!(c))                                                                                  \
            __builtin_trap();                                                                      \
    } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    dv_delta d;
    int rc = dv_decode_delta(data, size, &d);
    if (rc != DV_OK) {
        CHECK(rc < 0);
        CHECK(d.ranges == NULL && d.elems == NULL && d.nranges == 0 && d.nelems == 0);
        return 0;
    }
    for (size_t i = 0; i < d.nranges; i++)
        CHECK(d.ranges[i].lo >= 1 && d.ranges[i].lo <= d.ranges[i].hi &&
              d.ranges[i].hi <= DV_MAX_CTR);
    dv_buf elems, re;
    dv_buf_init(&elems);
    dv_buf_init(&re);
    for (size_t i = 0; i < d.nelems; i++) {
        const dv_elem_view *e = &d.elems[i];
        CHECK(e->dot.ctr >= 1 && e->dot.ctr <= DV_MAX_CTR);
        CHECK(e->ts <= DV_MAX_TS);
        CHECK(e->key >= data && e->key + e->klen <= data + size);
        CHECK(e->val >= data && e->val + e->vlen <= data + size);
        size_t before = elems.n;
        dv_encode_elem(&elems, e->key, e->klen, e->dot, e->ts, e->val, e->vlen);
        CHECK(elems.n - before == dv_elem_wire_size(e->klen, e->dot, e->ts, e->vlen));
    }
    dv_encode_delta(&re, d.sender, d.ranges, d.nranges, elems.p, elems.n, d.nelems);
    CHECK(!re.oom && re.n == size && memcmp(re.p, data, size) == 0);
    CHECK(dv_peek_type(data, size) == DV_MSG_DELTA);
    dv_buf_free(&elems);
    dv_buf_free(&re);
    dv_delta_free(&d);
    return 0;
}
