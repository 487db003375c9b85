/* errors.c - the names of the error codes (errors.h). */
#include "errors.h"

const char *dv_strerror(int rc) {
    switch (rc) {
    case DV_OK:
        return "ok";
    case DV_ENOMEM:
        return "out_of_memory";
    case DV_EINVAL:
        return "invalid_argument";
    case DV_ETRUNC:
        return "truncated";
    case DV_EMAGIC:
        return "bad_magic";
    case DV_EVERSION:
        return "unsupported_version";
    case DV_ETYPE:
        return "wrong_type";
    case DV_ETOOBIG:
        return "too_big";
    case DV_ECORRUPT:
        return "corrupt";
    case DV_EBADTERM:
        return "bad_term";
    default:
        return "unknown_error";
    }
}
