/* term_fast.c - see term_fast.h. Every read is bounds-checked; any doubt answers false. */
#include "term_fast.h"

#include <math.h>
#include <string.h>

#include "hash.h"

enum {
    TAG_VERSION = 131,
    TAG_NEW_FLOAT = 70,
    TAG_SMALL_INTEGER = 97,
    TAG_INTEGER = 98,
    TAG_ATOM = 100,
    TAG_SMALL_TUPLE = 104,
    TAG_LARGE_TUPLE = 105,
    TAG_NIL = 106,
    TAG_STRING = 107,
    TAG_LIST = 108,
    TAG_BINARY = 109,
    TAG_SMALL_BIG = 110,
    TAG_SMALL_ATOM = 115,
    TAG_MAP = 116,
    TAG_ATOM_UTF8 = 118,
    TAG_SMALL_ATOM_UTF8 = 119,
    /* identifiers qualified by a node name: decoded one by one by enif_binary_to_term */
    TAG_NEW_PID = 88,
    TAG_NEW_PORT = 89,
    TAG_NEWER_REFERENCE = 90,
    TAG_PORT = 102,
    TAG_PID = 103,
    TAG_NEW_REFERENCE = 114,
    TAG_V4_PORT = 120,
};

/* The longest identifier decoded here: tag, reference length, node atom (at most 255 bytes)
 * with its header, creation and id words; longer ones are left to the whole-term fallback. */
#define ID_MAX_BYTES 320

#define STACK_TERMS 16

typedef struct {
    ErlNifEnv *env;
    tf_atom_cache *cache;
    const uint8_t *p, *end;
} dec;

static bool take(dec *d, size_t n, const uint8_t **at) {
    if ((size_t)(d->end - d->p) < n)
        return false;
    *at = d->p;
    d->p += n;
    return true;
}

/* An unsigned big-endian integer of n (1, 2 or 4) bytes. */
static bool be(dec *d, size_t n, uint32_t *v) {
    const uint8_t *a;
    if (!take(d, n, &a))
        return false;
    uint32_t x = 0;
    for (size_t i = 0; i < n; i++)
        x = x << 8 | a[i];
    *v = x;
    return true;
}

static inline bool u8(dec *d, uint32_t *v) {
    return be(d, 1, v);
}

static inline bool u16(dec *d, uint32_t *v) {
    return be(d, 2, v);
}

static inline bool u32(dec *d, uint32_t *v) {
    return be(d, 4, v);
}

/* A count of sub-terms (each at least one byte) that the rest of the input can hold. */
static bool count_fits(const dec *d, uint64_t count, unsigned per) {
    return count <= (uint64_t)(d->end - d->p) / per;
}

static bool make_atom(dec *d, const uint8_t *name, uint32_t len, ERL_NIF_TERM *out) {
    for (uint32_t i = 0; i < len; i++)
        if (name[i] >= 0x80) /* latin-1 and UTF-8 agree on ASCII only */
            return false;
    tf_atom_slot *s = NULL;
    if (d->cache && len <= TF_ATOM_NAME) {
        uint64_t h = dv_hash64_seed(name, len, len);
        s = &d->cache->slot[h & (TF_ATOM_SLOTS - 1)];
        if (s->used && s->len == len && memcmp(s->name, name, len) == 0) {
            *out = s->atom;
            return true;
        }
    }
    *out = enif_make_atom_len(d->env, (const char *)name, len);
    if (s) {
        s->atom = *out;
        s->len = (uint8_t)len;
        memcpy(s->name, name, len);
        s->used = 1;
    }
    return true;
}

static bool term(dec *d, unsigned depth, ERL_NIF_TERM *out);

/* A pid, port or reference: the NIF API cannot make one from its parts, so this one term (not
 * the whole input) goes through enif_binary_to_term, which looks up only its node's atom.
 * `start` is its tag byte. false if it is malformed: the whole-term fallback then refuses or
 * decodes it exactly as binary_to_term/1 does. */
static bool node_id(dec *d, uint32_t tag, const uint8_t *start, ERL_NIF_TERM *out) {
    uint32_t words = 0, atag, alen;
    const uint8_t *a;
    if ((tag == TAG_NEW_REFERENCE || tag == TAG_NEWER_REFERENCE) && (!u16(d, &words) || words > 5))
        return false;
    if (!u8(d, &atag))
        return false;
    if (atag == TAG_SMALL_ATOM_UTF8 || atag == TAG_SMALL_ATOM) {
        if (!u8(d, &alen))
            return false;
    } else if (atag == TAG_ATOM_UTF8 || atag == TAG_ATOM) {
        if (!u16(d, &alen) || alen > 255)
            return false;
    } else {
        return false;
    }
    size_t rest;
    switch (tag) {
    case TAG_PID:
        rest = 4 + 4 + 1;
        break;
    case TAG_NEW_PID:
        rest = 4 + 4 + 4;
        break;
    case TAG_PORT:
        rest = 4 + 1;
        break;
    case TAG_NEW_PORT:
        rest = 4 + 4;
        break;
    case TAG_V4_PORT:
        rest = 8 + 4;
        break;
    case TAG_NEW_REFERENCE:
        rest = 1 + 4 * (size_t)words;
        break;
    default:
        rest = 4 + 4 * (size_t)words;
        break; /* TAG_NEWER_REFERENCE */
    }
    if (!take(d, alen, &a) || !take(d, rest, &a))
        return false;
    size_t n = (size_t)(d->p - start);
    uint8_t buf[ID_MAX_BYTES];
    if (n + 1 > sizeof(buf))
        return false;
    buf[0] = TAG_VERSION;
    memcpy(buf + 1, start, n);
    return enif_binary_to_term(d->env, buf, n + 1, out, 0) == n + 1;
}

/* n sub-terms into v (stack or heap); the caller frees with release_terms. */
static ERL_NIF_TERM *terms_buf(ERL_NIF_TERM *stack, size_t n) {
    return n <= STACK_TERMS ? stack : enif_alloc(sizeof(ERL_NIF_TERM) * n);
}

static void release_terms(ERL_NIF_TERM *v, ERL_NIF_TERM *stack) {
    if (v && v != stack)
        enif_free(v);
}

static bool terms(dec *d, unsigned depth, ERL_NIF_TERM *v, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!term(d, depth, &v[i]))
            return false;
    return true;
}

static bool tuple(dec *d, unsigned depth, uint32_t arity, ERL_NIF_TERM *out) {
    if (!count_fits(d, arity, 1))
        return false;
    ERL_NIF_TERM stack[STACK_TERMS], *v = terms_buf(stack, arity);
    bool ok = v && terms(d, depth, v, arity);
    if (ok)
        *out = enif_make_tuple_from_array(d->env, v, arity);
    release_terms(v, stack);
    return ok;
}

static bool list(dec *d, unsigned depth, ERL_NIF_TERM *out) {
    uint32_t len;
    if (!u32(d, &len) || !count_fits(d, (uint64_t)len + 1, 1))
        return false;
    ERL_NIF_TERM stack[STACK_TERMS], *v = terms_buf(stack, len), tail;
    bool ok = v && terms(d, depth, v, len) && term(d, depth, &tail);
    if (ok) {
        if (enif_is_empty_list(d->env, tail)) {
            *out = enif_make_list_from_array(d->env, v, len);
        } else {
            for (uint32_t i = len; i > 0; i--)
                tail = enif_make_list_cell(d->env, v[i - 1], tail);
            *out = tail;
        }
    }
    release_terms(v, stack);
    return ok;
}

static bool map(dec *d, unsigned depth, ERL_NIF_TERM *out) {
    uint32_t arity;
    if (!u32(d, &arity) || !count_fits(d, arity, 2))
        return false;
    ERL_NIF_TERM ks[STACK_TERMS], vs[STACK_TERMS];
    ERL_NIF_TERM *k = terms_buf(ks, arity), *v = terms_buf(vs, arity);
    bool ok = k && v;
    for (uint32_t i = 0; ok && i < arity; i++)
        ok = term(d, depth, &k[i]) && term(d, depth, &v[i]);
    /* refuses duplicate keys: binary_to_term decides what those mean */
    ok = ok && enif_make_map_from_arrays(d->env, k, v, arity, out);
    release_terms(k, ks);
    release_terms(v, vs);
    return ok;
}

static bool small_big(dec *d, ERL_NIF_TERM *out) {
    uint32_t n, sign;
    const uint8_t *digits;
    /* only the normalised form term_to_binary writes (no leading zero byte) */
    if (!u8(d, &n) || !u8(d, &sign) || n == 0 || n > 8 || sign > 1 || !take(d, n, &digits) ||
        digits[n - 1] == 0)
        return false;
    uint64_t mag = 0;
    for (uint32_t i = n; i > 0; i--)
        mag = mag << 8 | digits[i - 1];
    if (sign == 0) {
        *out = enif_make_uint64(d->env, mag);
        return true;
    }
    if (mag == 0 || mag > (uint64_t)1 << 63)
        return false;
    *out = enif_make_int64(d->env, -(int64_t)(mag - 1) - 1);
    return true;
}

static bool term(dec *d, unsigned depth, ERL_NIF_TERM *out) {
    uint32_t tag, n;
    const uint8_t *a;
    if (depth >= TF_MAX_DEPTH || !u8(d, &tag))
        return false;
    depth++;
    switch (tag) {
    case TAG_SMALL_INTEGER:
        if (!u8(d, &n))
            return false;
        *out = enif_make_int(d->env, (int)n);
        return true;
    case TAG_INTEGER:
        if (!u32(d, &n))
            return false;
        *out = enif_make_int(d->env, (int)(int32_t)n);
        return true;
    case TAG_SMALL_BIG:
        return small_big(d, out);
    case TAG_NEW_FLOAT: {
        if (!take(d, 8, &a))
            return false;
        uint64_t bits = 0;
        for (int i = 0; i < 8; i++)
            bits = bits << 8 | a[i];
        double f;
        memcpy(&f, &bits, sizeof(f));
        if (!isfinite(f))
            return false;
        *out = enif_make_double(d->env, f);
        return true;
    }
    case TAG_SMALL_ATOM_UTF8:
    case TAG_SMALL_ATOM:
        return u8(d, &n) && take(d, n, &a) && make_atom(d, a, n, out);
    case TAG_ATOM_UTF8:
    case TAG_ATOM:
        return u16(d, &n) && n <= 255 && take(d, n, &a) && make_atom(d, a, n, out);
    case TAG_SMALL_TUPLE:
        return u8(d, &n) && tuple(d, depth, n, out);
    case TAG_LARGE_TUPLE:
        return u32(d, &n) && tuple(d, depth, n, out);
    case TAG_NIL:
        *out = enif_make_list(d->env, 0);
        return true;
    case TAG_STRING:
        if (!u16(d, &n) || !take(d, n, &a))
            return false;
        *out = enif_make_string_len(d->env, (const char *)a, n, ERL_NIF_LATIN1);
        return true;
    case TAG_LIST:
        return list(d, depth, out);
    case TAG_BINARY: {
        if (!u32(d, &n) || !take(d, n, &a))
            return false;
        unsigned char *b = enif_make_new_binary(d->env, n, out);
        if (!b)
            return false;
        if (n)
            memcpy(b, a, n);
        return true;
    }
    case TAG_MAP:
        return map(d, depth, out);
    case TAG_PID:
    case TAG_NEW_PID:
    case TAG_PORT:
    case TAG_NEW_PORT:
    case TAG_V4_PORT:
    case TAG_NEW_REFERENCE:
    case TAG_NEWER_REFERENCE:
        return node_id(d, tag, d->p - 1, out);
    default:
        return false;
    }
}

bool tf_decode(ErlNifEnv *env, tf_atom_cache *cache, const uint8_t *p, size_t n,
               ERL_NIF_TERM *out) {
    if (n < 2 || p[0] != TAG_VERSION)
        return false;
    dec d = {env, cache, p + 1, p + n};
    return term(&d, 0, out) && d.p == d.end;
}

/* ------------------------------------------------------------------ encoder */

void tf_buf_init(tf_buf *b, uint8_t *stack, size_t cap, size_t max) {
    b->p = stack;
    b->n = 0;
    b->cap = cap < max ? cap : max; /* room() relies on cap <= max */
    b->max = max;
    b->heap = false;
}

void tf_buf_free(tf_buf *b) {
    if (b->heap)
        enif_free(b->p);
    b->heap = false;
    b->p = NULL;
    b->n = b->cap = 0;
}

static bool grow(tf_buf *b, size_t n) {
    if (n > b->max || b->n > b->max - n)
        return false;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < b->n + n)
        cap *= 2;
    if (cap > b->max)
        cap = b->max;
    uint8_t *p = b->heap ? enif_realloc(b->p, cap) : enif_alloc(cap);
    if (!p)
        return false;
    if (!b->heap && b->n)
        memcpy(p, b->p, b->n);
    b->p = p;
    b->cap = cap;
    b->heap = true;
    return true;
}

/* Room for n more bytes (cap <= max always holds, so the fast check is enough). */
static inline bool room(tf_buf *b, size_t n) {
    return n <= b->cap - b->n || grow(b, n);
}

static bool put_u8(tf_buf *b, unsigned v) {
    if (!room(b, 1))
        return false;
    b->p[b->n++] = (uint8_t)v;
    return true;
}

static bool put_be(tf_buf *b, uint64_t v, int bytes) {
    if (!room(b, (size_t)bytes))
        return false;
    for (int i = bytes - 1; i >= 0; i--)
        b->p[b->n++] = (uint8_t)(v >> (8 * i));
    return true;
}

static bool put_bytes(tf_buf *b, const void *p, size_t n) {
    if (!room(b, n))
        return false;
    if (n)
        memcpy(b->p + b->n, p, n);
    b->n += n;
    return true;
}

/* Atoms as UTF-8 (minor_version 2): SMALL_ATOM_UTF8_EXT below 256 bytes, else ATOM_UTF8_EXT.
 * The NIF API of OTP 25 reads atom text as Latin-1 only; other atoms are not handled. */
static bool enc_atom(ErlNifEnv *env, ERL_NIF_TERM t, tf_buf *b) {
    char latin1[256];
    int n = enif_get_atom(env, t, latin1, sizeof(latin1), ERL_NIF_LATIN1);
    if (n <= 0)
        return false;
    size_t len = (size_t)n - 1, utf8 = len;
    for (size_t i = 0; i < len; i++)
        utf8 += (uint8_t)latin1[i] >= 0x80;
    if (utf8 < 256) {
        if (!put_u8(b, TAG_SMALL_ATOM_UTF8) || !put_u8(b, (unsigned)utf8))
            return false;
    } else if (!put_u8(b, TAG_ATOM_UTF8) || !put_be(b, utf8, 2)) {
        return false;
    }
    if (utf8 == len)
        return put_bytes(b, latin1, len);
    if (!room(b, utf8))
        return false;
    for (size_t i = 0; i < len; i++) {
        uint8_t c = (uint8_t)latin1[i];
        if (c < 0x80) {
            b->p[b->n++] = c;
        } else {
            b->p[b->n++] = (uint8_t)(0xC0 | c >> 6);
            b->p[b->n++] = (uint8_t)(0x80 | (c & 0x3F));
        }
    }
    return true;
}

static bool enc_integer(ErlNifEnv *env, ERL_NIF_TERM t, tf_buf *b) {
    ErlNifSInt64 i;
    ErlNifUInt64 u;
    uint64_t mag;
    unsigned sign;
    if (enif_get_int64(env, t, &i)) {
        if (i >= 0 && i <= 255)
            return put_u8(b, TAG_SMALL_INTEGER) && put_u8(b, (unsigned)i);
        if (i >= INT32_MIN && i <= INT32_MAX)
            return put_u8(b, TAG_INTEGER) && put_be(b, (uint32_t)(int32_t)i, 4);
        sign = i < 0;
        mag = i < 0 ? (uint64_t)(-(i + 1)) + 1 : (uint64_t)i;
    } else if (enif_get_uint64(env, t, &u)) {
        sign = 0;
        mag = u;
    } else {
        return false; /* beyond 64 bits */
    }
    unsigned n = 0;
    for (uint64_t m = mag; m; m >>= 8)
        n++;
    if (!put_u8(b, TAG_SMALL_BIG) || !put_u8(b, n) || !put_u8(b, sign) || !room(b, n))
        return false;
    for (unsigned k = 0; k < n; k++)
        b->p[b->n++] = (uint8_t)(mag >> (8 * k));
    return true;
}

static bool enc(ErlNifEnv *env, ERL_NIF_TERM t, tf_buf *b, unsigned depth);

/* A proper list of at most 65535 integers 0..255 is a STRING_EXT. */
static bool enc_list(ErlNifEnv *env, ERL_NIF_TERM t, tf_buf *b, unsigned depth) {
    unsigned len;
    if (enif_get_list_length(env, t, &len) && len <= 0xFFFF) {
        size_t at = b->n;
        bool bytes = put_u8(b, TAG_STRING) && put_be(b, len, 2);
        ERL_NIF_TERM h, tail = t;
        while (bytes && enif_get_list_cell(env, tail, &h, &tail)) {
            int v;
            bytes = enif_get_int(env, h, &v) && v >= 0 && v <= 255 && put_u8(b, (unsigned)v);
        }
        if (bytes)
            return true;
        b->n = at; /* not a string: a LIST_EXT after all */
    }
    size_t at = b->n;
    if (!put_u8(b, TAG_LIST) || !put_be(b, 0, 4))
        return false;
    uint32_t count = 0;
    ERL_NIF_TERM h, tail = t;
    while (enif_get_list_cell(env, tail, &h, &tail)) {
        if (!enc(env, h, b, depth))
            return false;
        count++;
    }
    for (int i = 0; i < 4; i++)
        b->p[at + 1 + i] = (uint8_t)(count >> (8 * (3 - i)));
    return enc(env, tail, b, depth);
}

static bool enc(ErlNifEnv *env, ERL_NIF_TERM t, tf_buf *b, unsigned depth) {
    if (++depth > TF_MAX_DEPTH)
        return false;
    switch (enif_term_type(env, t)) {
    case ERL_NIF_TERM_TYPE_ATOM:
        return enc_atom(env, t, b);
    case ERL_NIF_TERM_TYPE_INTEGER:
        return enc_integer(env, t, b);
    case ERL_NIF_TERM_TYPE_FLOAT: {
        double f;
        uint64_t bits;
        if (!enif_get_double(env, t, &f))
            return false;
        memcpy(&bits, &f, sizeof(bits));
        return put_u8(b, TAG_NEW_FLOAT) && put_be(b, bits, 8);
    }
    case ERL_NIF_TERM_TYPE_BITSTRING: {
        ErlNifBinary bin;
        if (!enif_inspect_binary(env, t, &bin)) /* a bit string that is not a binary */
            return false;
        return put_u8(b, TAG_BINARY) && put_be(b, bin.size, 4) && put_bytes(b, bin.data, bin.size);
    }
    case ERL_NIF_TERM_TYPE_TUPLE: {
        int arity;
        const ERL_NIF_TERM *el;
        if (!enif_get_tuple(env, t, &arity, &el))
            return false;
        if (arity < 256 ? !(put_u8(b, TAG_SMALL_TUPLE) && put_u8(b, (unsigned)arity))
                        : !(put_u8(b, TAG_LARGE_TUPLE) && put_be(b, (uint32_t)arity, 4)))
            return false;
        for (int i = 0; i < arity; i++)
            if (!enc(env, el[i], b, depth))
                return false;
        return true;
    }
    case ERL_NIF_TERM_TYPE_LIST:
        if (enif_is_empty_list(env, t))
            return put_u8(b, TAG_NIL);
        return enc_list(env, t, b, depth);
    default: /* maps, pids, references, ports, funs */
        return false;
    }
}

bool tf_encode(ErlNifEnv *env, ERL_NIF_TERM t, tf_buf *b) {
    b->n = 0;
    return put_u8(b, TAG_VERSION) && enc(env, t, b, 0);
}
