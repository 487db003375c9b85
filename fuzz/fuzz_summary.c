/* fuzz_summary.c - libFuzzer harness: dv_decode_summary on raw input.
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
    const uint64_t sentinel[2] = {0xa5a5a5a5a5a5a5a5ULL, 0x5a5a5a5a5a5a5a5aULL};
    uint64_t s[2] = {sentinel[0], sentinel[1]};
    int rc = dv_decode_summary(data, size, s);
    if (rc != DV_OK) {
        CHECK(rc < 0);
        CHECK(s[0] == sentinel[0] && s[1] == sentinel[1]);
        return 0;
    }
    dv_buf b;
    dv_buf_init(&b);
    dv_encode_summary(&b, s);
    CHECK(!b.oom && b.n == size && memcmp(b.p, data, size) == 0);
    CHECK(dv_peek_type(data, size) == DV_MSG_SUMMARY);
    dv_buf_free(&b);
    return 0;
}
