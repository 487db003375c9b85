/* errors.h - the error codes of the C core and of the NIF glue, and their names.
 *
 * Every fallible function returns DV_OK (0) or one of the negative codes below, and a failed
 * call leaves its structure unchanged unless its header says otherwise. The NIF turns a code
 * into {:error, name} with name = dv_strerror(code) as an atom (errors.c holds the names), so
 * the names are part of the Elixir API: keep them stable.
 */
#ifndef DROVE_ERRORS_H
#define DROVE_ERRORS_H

enum {
    DV_OK = 0,
    DV_ENOMEM = -1, /* out_of_memory: an allocation failed */
    DV_EINVAL = -2, /* invalid_argument: a caller broke a precondition (bad status, full set) */

    /* Decoders of peer messages (codec.h) */
    DV_ETRUNC = -10,   /* truncated: ends in the middle of a field */
    DV_EMAGIC = -11,   /* bad_magic: not a Drove message */
    DV_EVERSION = -12, /* unsupported_version: unknown wire version */
    DV_ETYPE = -13,    /* wrong_type: a different message type than expected */
    DV_ETOOBIG = -14,  /* too_big: longer than DV_MAX_MESSAGE, or a count that cannot fit */
    DV_ECORRUPT = -15, /* corrupt: a field breaks a rule (bad range, bad dot, trailing bytes) */

    /* NIF glue */
    DV_EBADTERM = -20, /* bad_term: a key or value of a peer's delta is not an external term */
};

/* Short, stable name of an error code ("truncated", "bad_magic", ...); "unknown_error" for a
 * code not listed above. */
const char *dv_strerror(int rc);

#endif
