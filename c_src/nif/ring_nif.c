/* ring_nif.c - NIF glue for placement (ring.c): argument checks, the ring resource, and
 * size-dispatched scheduling. See ring_nif.h for the functions and the scheduling choice. */
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include <erl_nif.h>

#include "alloc.h"
#include "errors.h"
#include "ring.h"
#include "ring_nif.h"

typedef struct {
    dv_ring ring;
} ring_res;

static ErlNifResourceType *RING_RT;

static void ring_dtor(ErlNifEnv *env, void *obj) {
    (void)env;
    dv_ring_free(&((ring_res *)obj)->ring);
}

int dv_ring_nif_load(ErlNifEnv *env, ErlNifResourceFlags flags) {
    ErlNifResourceType *rt =
        enif_open_resource_type(env, NULL, "drove_ring", ring_dtor, flags, NULL);
    if (!rt)
        return -1;
    if (RING_RT != rt) /* written once per image: see "load, upgrade, unload" in drove_nif.c */
        RING_RT = rt;
    return 0;
}

static bool on_normal_scheduler(void) {
    return enif_thread_type() == ERL_NIF_THR_NORMAL_SCHEDULER;
}

static ERL_NIF_TERM raise_enomem(ErlNifEnv *env) {
    return enif_raise_exception(env, enif_make_atom(env, dv_strerror(DV_ENOMEM)));
}

/* A proper list of at most max elements, walking at most max + 1 cells. */
static bool bounded_len(ErlNifEnv *env, ERL_NIF_TERM list, size_t max, size_t *len) {
    ERL_NIF_TERM head;
    size_t n = 0;
    while (enif_get_list_cell(env, list, &head, &list)) {
        if (++n > max)
            return false;
    }
    *len = n;
    return enif_is_empty_list(env, list);
}

static bool get_ring(ErlNifEnv *env, ERL_NIF_TERM t, const dv_ring **r) {
    ring_res *res;
    if (!enif_get_resource(env, t, RING_RT, (void **)&res) || res->ring.n == 0)
        return false;
    *r = &res->ring;
    return true;
}

static bool get_u32(ErlNifEnv *env, ERL_NIF_TERM t, uint32_t *v) {
    unsigned int u; /* 32 bits on every platform the BEAM runs on */
    if (!enif_get_uint(env, t, &u))
        return false;
    *v = (uint32_t)u;
    return true;
}

/* ------------------------------------------------------------------ ring */

/* ring_new(points :: [[u32]]) -> ring */
ERL_NIF_TERM dv_ring_new_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    size_t nm, total = 0, len;
    if (argc != 1 || !bounded_len(env, argv[0], DV_RING_NIF_MAX_MEMBERS, &nm) || nm == 0)
        return enif_make_badarg(env);
    ERL_NIF_TERM head, tail = argv[0];
    while (enif_get_list_cell(env, tail, &head, &tail)) {
        if (!bounded_len(env, head, DV_RING_NIF_MAX_PER_MEMBER, &len))
            return enif_make_badarg(env);
        total += len;
        if (total > DV_RING_NIF_DIRTY_POINTS && on_normal_scheduler())
            return enif_schedule_nif(env, "ring_new", ERL_NIF_DIRTY_JOB_CPU_BOUND, dv_ring_new_nif,
                                     argc, argv);
    }
    if (total == 0)
        return enif_make_badarg(env);
    uint32_t *counts = dv_alloc((nm + total) * sizeof(uint32_t));
    if (!counts)
        return raise_enomem(env);
    uint32_t *points = counts + nm;
    size_t m = 0, k = 0;
    tail = argv[0];
    while (enif_get_list_cell(env, tail, &head, &tail)) {
        ERL_NIF_TERM p, rest = head;
        counts[m] = 0;
        while (enif_get_list_cell(env, rest, &p, &rest)) {
            if (!get_u32(env, p, &points[k])) {
                dv_free(counts);
                return enif_make_badarg(env);
            }
            k++;
            counts[m]++;
        }
        m++;
    }
    ring_res *res = enif_alloc_resource(RING_RT, sizeof(ring_res));
    if (!res) {
        dv_free(counts);
        return raise_enomem(env);
    }
    dv_ring_init(&res->ring);
    int rc = dv_ring_build(&res->ring, points, counts, (uint32_t)nm);
    dv_free(counts);
    if (rc != DV_OK) {
        enif_release_resource(res); /* the destructor frees an empty ring */
        return rc == DV_ENOMEM ? raise_enomem(env) : enif_make_badarg(env);
    }
    ERL_NIF_TERM t = enif_make_resource(env, res);
    enif_release_resource(res);
    return t;
}

/* ring_owner(ring, hash) -> member index */
ERL_NIF_TERM dv_ring_owner_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    const dv_ring *r;
    uint32_t h;
    if (argc != 2 || !get_ring(env, argv[0], &r) || !get_u32(env, argv[1], &h))
        return enif_make_badarg(env);
    return enif_make_uint(env, dv_ring_owner(r, h));
}

/* ring_owners(ring, [hash]) -> [member index] */
ERL_NIF_TERM dv_ring_owners_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    const dv_ring *r;
    size_t n;
    if (argc != 2 || !get_ring(env, argv[0], &r) ||
        !bounded_len(env, argv[1], DV_RING_NIF_MAX_BATCH, &n))
        return enif_make_badarg(env);
    if (n > DV_RING_NIF_DIRTY_BATCH && on_normal_scheduler())
        return enif_schedule_nif(env, "ring_owners", ERL_NIF_DIRTY_JOB_CPU_BOUND,
                                 dv_ring_owners_nif, argc, argv);
    if (n == 0)
        return enif_make_list(env, 0);
    ERL_NIF_TERM *out = dv_alloc(n * sizeof(ERL_NIF_TERM));
    if (!out)
        return raise_enomem(env);
    ERL_NIF_TERM head, tail = argv[1];
    for (size_t i = 0; enif_get_list_cell(env, tail, &head, &tail); i++) {
        uint32_t h;
        if (!get_u32(env, head, &h)) {
            dv_free(out);
            return enif_make_badarg(env);
        }
        out[i] = enif_make_uint(env, dv_ring_owner(r, h));
    }
    ERL_NIF_TERM list = enif_make_list_from_array(env, out, (unsigned)n);
    dv_free(out);
    return list;
}

/* ring_info(ring) -> {members, distinct points} */
ERL_NIF_TERM dv_ring_info_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    const dv_ring *r;
    if (argc != 1 || !get_ring(env, argv[0], &r))
        return enif_make_badarg(env);
    return enif_make_tuple2(env, enif_make_uint(env, r->nmembers), enif_make_uint64(env, r->n));
}

/* ------------------------------------------------------------------ rendezvous */

/* Checks members (1..MAX binaries) and adds their sizes to *bytes. */
static bool check_members(ErlNifEnv *env, ERL_NIF_TERM list, size_t *nm, size_t *bytes) {
    if (!bounded_len(env, list, DV_RING_NIF_MAX_MEMBERS, nm) || *nm == 0)
        return false;
    ERL_NIF_TERM head;
    ErlNifBinary b;
    while (enif_get_list_cell(env, list, &head, &list)) {
        if (!enif_inspect_binary(env, head, &b))
            return false;
        *bytes += b.size;
    }
    return true;
}

/* The seeds of members already checked by check_members; NULL when out of memory. */
static uint64_t *member_seeds(ErlNifEnv *env, ERL_NIF_TERM list, size_t nm) {
    uint64_t *seeds = dv_alloc(nm * sizeof(uint64_t));
    if (!seeds)
        return NULL;
    ERL_NIF_TERM head;
    ErlNifBinary b;
    for (size_t i = 0; enif_get_list_cell(env, list, &head, &list); i++) {
        enif_inspect_binary(env, head, &b);
        seeds[i] = dv_rendezvous_seed(b.data, b.size);
    }
    return seeds;
}

/* rendezvous_owner(members :: [binary], key :: binary) -> member index */
ERL_NIF_TERM dv_rendezvous_owner_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    size_t nm, bytes = 0;
    ErlNifBinary key;
    if (argc != 2 || !enif_inspect_binary(env, argv[1], &key) ||
        !check_members(env, argv[0], &nm, &bytes))
        return enif_make_badarg(env);
    bytes += key.size;
    if ((nm > DV_RING_NIF_DIRTY_WORK || bytes > DV_RING_NIF_DIRTY_BYTES) && on_normal_scheduler())
        return enif_schedule_nif(env, "rendezvous_owner", ERL_NIF_DIRTY_JOB_CPU_BOUND,
                                 dv_rendezvous_owner_nif, argc, argv);
    uint64_t *seeds = member_seeds(env, argv[0], nm);
    if (!seeds)
        return raise_enomem(env);
    uint32_t i = dv_rendezvous_owner(seeds, (uint32_t)nm, dv_rendezvous_key(key.data, key.size));
    dv_free(seeds);
    return enif_make_uint(env, i);
}

/* rendezvous_owners(members :: [binary], [key :: binary]) -> [member index] */
ERL_NIF_TERM dv_rendezvous_owners_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    size_t nm, nk, bytes = 0;
    if (argc != 2 || !check_members(env, argv[0], &nm, &bytes) ||
        !bounded_len(env, argv[1], DV_RING_NIF_MAX_BATCH, &nk))
        return enif_make_badarg(env);
    ERL_NIF_TERM head, tail = argv[1];
    ErlNifBinary key;
    while (enif_get_list_cell(env, tail, &head, &tail)) {
        if (!enif_inspect_binary(env, head, &key))
            return enif_make_badarg(env);
        bytes += key.size;
    }
    if ((nm * nk > DV_RING_NIF_DIRTY_WORK || bytes > DV_RING_NIF_DIRTY_BYTES) &&
        on_normal_scheduler())
        return enif_schedule_nif(env, "rendezvous_owners", ERL_NIF_DIRTY_JOB_CPU_BOUND,
                                 dv_rendezvous_owners_nif, argc, argv);
    if (nk == 0)
        return enif_make_list(env, 0);
    uint64_t *seeds = member_seeds(env, argv[0], nm);
    ERL_NIF_TERM *out = seeds ? dv_alloc(nk * sizeof(ERL_NIF_TERM)) : NULL;
    if (!out) {
        dv_free(seeds);
        return raise_enomem(env);
    }
    tail = argv[1];
    for (size_t i = 0; enif_get_list_cell(env, tail, &head, &tail); i++) {
        enif_inspect_binary(env, head, &key);
        uint64_t h = dv_rendezvous_key(key.data, key.size);
        out[i] = enif_make_uint(env, dv_rendezvous_owner(seeds, (uint32_t)nm, h));
    }
    ERL_NIF_TERM list = enif_make_list_from_array(env, out, (unsigned)nk);
    dv_free(out);
    dv_free(seeds);
    return list;
}
