/* fuzz_manifest.c - libFuzzer harness: dv_decode_manifest on raw input.
 *
 * On success the buckets must be strictly rising and below DV_BUCKETS, the dots valid, and
 * re-encoding must give back the input byte for byte. */
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
    dv_manifest m;
    int rc = dv_decode_manifest(data, size, &m);
    if (rc != DV_OK) {
        CHECK(rc < 0);
        CHECK(m.buckets == NULL && m.dots == NULL && m.nbuckets == 0 && m.ndots == 0);
        return 0;
    }
    CHECK(m.nbuckets <= DV_BUCKETS);
    for (size_t i = 0; i < m.nbuckets; i++) {
        CHECK(m.buckets[i] < DV_BUCKETS);
        CHECK(i == 0 || m.buckets[i] > m.buckets[i - 1]);
    }
    for (size_t i = 0; i < m.ndots; i++)
        CHECK(m.dots[i].ctr >= 1 && m.dots[i].ctr <= DV_MAX_CTR);
    dv_buf b;
    dv_buf_init(&b);
    dv_encode_manifest(&b, m.buckets, m.nbuckets, m.dots, m.ndots);
    CHECK(!b.oom && b.n == size && memcmp(b.p, data, size) == 0);
    CHECK(dv_peek_type(data, size) == DV_MSG_MANIFEST);
    dv_buf_free(&b);
    dv_manifest_free(&m);
    return 0;
}
