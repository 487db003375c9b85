/* fuzz_digest.c - libFuzzer harness: dv_decode_digest on raw input.
 *
 * On success re-encoding must give back the input; on failure the output must be untouched. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "codec.h"

#define CHECK(c)                                                                                   \
    do {                                                                                           \
        if (!(c))                                                                                  \
            __builtin_trap();                                                                      \
    } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static uint64_t sentinel[DV_BUCKETS];
    if (!sentinel[0])
        for (size_t i = 0; i < DV_BUCKETS; i++)
            sentinel[i] = 0xa5a5a5a5a5a5a5a5ULL ^ i;
    uint64_t d[DV_BUCKETS];
    memcpy(d, sentinel, sizeof(d));
    int rc = dv_decode_digest(data, size, d);
    if (rc != DV_OK) {
        CHECK(rc < 0);
        CHECK(memcmp(d, sentinel, sizeof(d)) == 0);
        return 0;
    }
    dv_buf b;
    dv_buf_init(&b);
    dv_encode_digest(&b, d, DV_BUCKETS);
    CHECK(!b.oom && b.n == size && memcmp(b.p, data, size) == 0);
    CHECK(dv_peek_type(data, size) == DV_MSG_DIGEST);
    dv_buf_free(&b);
    return 0;
}
