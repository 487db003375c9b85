/* test_errors.c - the names of the error codes (errors.h): every code has its own non-empty
 * name, the names the Elixir side matches on are the documented ones, and a code that is not
 * listed still has a name. */
#include <criterion/criterion.h>
#include <stddef.h>

#include "errors.h"

static const int codes[] = {DV_OK,       DV_ENOMEM, DV_EINVAL,  DV_ETRUNC,   DV_EMAGIC,
                            DV_EVERSION, DV_ETYPE,  DV_ETOOBIG, DV_ECORRUPT, DV_EBADTERM};

Test(errors, every_code_has_its_own_name) {
    size_t n = sizeof(codes) / sizeof(codes[0]);
    for (size_t i = 0; i < n; i++) {
        const char *a = dv_strerror(codes[i]);
        cr_assert(a && *a);
        cr_assert_str_neq(a, "unknown_error", "code %d has no name", codes[i]);
        for (size_t j = 0; j < i; j++)
            cr_assert_str_neq(a, dv_strerror(codes[j]));
    }
}

Test(errors, names_are_the_documented_ones) {
    cr_assert_str_eq(dv_strerror(DV_OK), "ok");
    cr_assert_str_eq(dv_strerror(DV_ENOMEM), "out_of_memory");
    cr_assert_str_eq(dv_strerror(DV_EINVAL), "invalid_argument");
    cr_assert_str_eq(dv_strerror(DV_ETRUNC), "truncated");
    cr_assert_str_eq(dv_strerror(DV_EMAGIC), "bad_magic");
    cr_assert_str_eq(dv_strerror(DV_EVERSION), "unsupported_version");
    cr_assert_str_eq(dv_strerror(DV_ETYPE), "wrong_type");
    cr_assert_str_eq(dv_strerror(DV_ETOOBIG), "too_big");
    cr_assert_str_eq(dv_strerror(DV_ECORRUPT), "corrupt");
    cr_assert_str_eq(dv_strerror(DV_EBADTERM), "bad_term");
}

Test(errors, unlisted_codes_have_a_name) {
    cr_assert_str_eq(dv_strerror(-12345), "unknown_error");
    cr_assert_str_eq(dv_strerror(12345), "unknown_error");
    cr_assert_str_eq(dv_strerror(-3), "unknown_error");
}
