/* term_fast.h - a fast encoder and decoder for the external term format of the keys and values a
 * replica stores (term_to_binary(t, [:deterministic, minor_version: 2])).
 *
 * enif_binary_to_term looks every atom up in the VM's atom table under its lock; for the
 * small tuples of atoms and integers that keys and values usually are, that lookup is most
 * of the cost of a read. This decoder handles the common tags itself and remembers the atoms
 * it has made in a small cache (atoms are immediate terms that live as long as the VM, so a
 * cached atom is valid in any environment). It handles integers, floats, ASCII atoms, tuples,
 * lists, strings, binaries and maps. Pids, ports and references (which the NIF API cannot
 * build from their parts) it hands one by one to enif_binary_to_term, which then looks up one
 * atom, their node's, instead of every atom of the whole term: the supervisor's entries and
 * the registry's values each hold a pid. For anything else (funs, bit strings, big integers
 * beyond 64 bits, non-ASCII atoms, nesting deeper than TF_MAX_DEPTH) it answers "not
 * handled" and the caller uses enif_binary_to_term on the whole term, so every input decodes
 * exactly as binary_to_term/1 would decode it, or is refused the same way.
 *
 * The encoder lets a write or a read pass the key and value terms themselves to the NIF,
 * which encodes them on the stack: no term_to_binary option parsing and no garbage binaries
 * on the caller's heap. It covers the same shapes minus maps (whose deterministic order is
 * the VM's business) and answers "not handled" for the rest, and the caller encodes with
 * term_to_binary. Its output is byte for byte term_to_binary's (test/drove/term_codec_test.exs
 * checks this on generated terms): a key must be the same bytes whichever path made it.
 */
#ifndef DROVE_TERM_FAST_H
#define DROVE_TERM_FAST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <erl_nif.h>

#define TF_ATOM_SLOTS 128 /* power of two */
#define TF_ATOM_NAME  47  /* longer atoms are made, not cached */
#define TF_MAX_DEPTH  64

typedef struct {
    ERL_NIF_TERM atom;
    uint8_t len;
    uint8_t used;
    char name[TF_ATOM_NAME];
} tf_atom_slot;

/* Not thread-safe: each cache belongs to one replica and is used under its lock, or to one
 * call. Zero-initialised memory is an empty cache. */
typedef struct {
    tf_atom_slot slot[TF_ATOM_SLOTS];
} tf_atom_cache;

/* Decodes the complete external term [p, p+n) into *out, using the cache (may be NULL).
 * false: not handled here (or malformed); *out is unspecified and the caller falls back to
 * enif_binary_to_term, which gives the exact answer. */
bool tf_decode(ErlNifEnv *env, tf_atom_cache *cache, const uint8_t *p, size_t n, ERL_NIF_TERM *out);

/* A growable output buffer that starts in caller-provided (stack) memory. */
typedef struct {
    uint8_t *p;
    size_t n, cap, max;
    bool heap; /* p was allocated here (tf_buf_free releases it) */
} tf_buf;

void tf_buf_init(tf_buf *b, uint8_t *stack, size_t cap, size_t max);
void tf_buf_free(tf_buf *b);

/* Encodes t exactly as term_to_binary(t, [:deterministic, minor_version: 2]) does, into b
 * (which it empties first). false: t holds something not handled here (maps, pids, refs,
 * ports, funs, bit strings, atoms beyond Latin-1, integers beyond 64 bits) or the encoding
 * would exceed b->max bytes; the caller encodes with term_to_binary instead. */
bool tf_encode(ErlNifEnv *env, ERL_NIF_TERM t, tf_buf *b);

#endif
