/* members_nif.c - NIF glue for member sets (members.c): argument checks and scheduling.
 *
 * Names cross as binaries (node names, or `{name, node}` terms in external term format) and
 * are compared bytewise. The C side only borrows the binaries' bytes for the duration of the
 * call; results are fresh binaries. See members_nif.h for the scheduling choice.
 */
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include <erl_nif.h>

#include "alloc.h"
#include "errors.h"
#include "members.h"
#include "members_nif.h"

static bool on_normal_scheduler(void) {
    return enif_thread_type() == ERL_NIF_THR_NORMAL_SCHEDULER;
}

static ERL_NIF_TERM raise_enomem(ErlNifEnv *env) {
    return enif_raise_exception(env, enif_make_atom(env, dv_strerror(DV_ENOMEM)));
}

/* A proper list of at most DV_MEMBERS_NIF_MAX_LEN elements; its length in *len. */
static bool get_list_len(ErlNifEnv *env, ERL_NIF_TERM list, unsigned *len) {
    return enif_get_list_length(env, list, len) && *len <= DV_MEMBERS_NIF_MAX_LEN;
}

/* A binary of at most DV_MEMBERS_NIF_MAX_NAME bytes, as a view with status ALIVE. */
static bool get_name(ErlNifEnv *env, ERL_NIF_TERM t, dv_member *m) {
    ErlNifBinary b;
    if (!enif_inspect_binary(env, t, &b) || b.size > DV_MEMBERS_NIF_MAX_NAME)
        return false;
    *m = (dv_member){b.size ? b.data : NULL, (uint32_t)b.size, DV_MEMBER_ALIVE};
    return true;
}

/* The len elements of list (length already checked) into v; their total size is added to
 * *bytes. false when an element is not an acceptable name. */
static bool get_names(ErlNifEnv *env, ERL_NIF_TERM list, unsigned len, dv_member *v,
                      size_t *bytes) {
    ERL_NIF_TERM head;
    for (unsigned i = 0; i < len; i++) {
        if (!enif_get_list_cell(env, list, &head, &list) || !get_name(env, head, &v[i]))
            return false;
        *bytes += v[i].len;
    }
    return true;
}

static ERL_NIF_TERM name_term(ErlNifEnv *env, const dv_member *m) {
    ERL_NIF_TERM t;
    unsigned char *d = enif_make_new_binary(env, m->len, &t);
    if (m->len)
        memcpy(d, m->name, m->len);
    return t;
}

/* members_set(candidates :: [binary], self :: binary) -> [binary]: the candidates plus self,
 * sorted bytewise and de-duplicated. */
ERL_NIF_TERM dv_members_set_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    unsigned len;
    dv_member self;
    if (argc != 2 || !get_list_len(env, argv[0], &len) || !get_name(env, argv[1], &self))
        return enif_make_badarg(env);
    if (len > DV_MEMBERS_NIF_DIRTY_LEN && on_normal_scheduler())
        return enif_schedule_nif(env, "members_set", ERL_NIF_DIRTY_JOB_CPU_BOUND,
                                 dv_members_set_nif, argc, argv);
    dv_member *v = dv_alloc(((size_t)len + 1) * sizeof(dv_member));
    if (!v)
        return raise_enomem(env);
    size_t bytes = self.len;
    if (!get_names(env, argv[0], len, v, &bytes)) {
        dv_free(v);
        return enif_make_badarg(env);
    }
    if (bytes > DV_MEMBERS_NIF_DIRTY_BYTES && on_normal_scheduler()) {
        dv_free(v);
        return enif_schedule_nif(env, "members_set", ERL_NIF_DIRTY_JOB_CPU_BOUND,
                                 dv_members_set_nif, argc, argv);
    }
    v[len] = self;
    size_t k = dv_member_normalize(v, (size_t)len + 1);
    ERL_NIF_TERM list = enif_make_list(env, 0);
    for (size_t i = k; i-- > 0;)
        list = enif_make_list_cell(env, name_term(env, &v[i]), list);
    dv_free(v);
    return list;
}

typedef struct {
    ErlNifEnv *env;
    ERL_NIF_TERM added, removed; /* built in reverse name order */
} diff_ctx;

static int collect(void *ud, dv_member_event ev, const dv_member *before, const dv_member *after) {
    diff_ctx *c = ud;
    if (ev == DV_MEMBER_ADDED)
        c->added = enif_make_list_cell(c->env, name_term(c->env, after), c->added);
    else if (ev == DV_MEMBER_REMOVED)
        c->removed = enif_make_list_cell(c->env, name_term(c->env, before), c->removed);
    return DV_OK; /* DV_MEMBER_CHANGED cannot happen: every name is ALIVE */
}

/* members_diff(old :: [binary], new :: [binary]) -> {added, removed}: both lists are taken as
 * sets; added = new -- old, removed = old -- new, each sorted bytewise and de-duplicated. */
ERL_NIF_TERM dv_members_diff_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    unsigned lold, lnew;
    if (argc != 2 || !get_list_len(env, argv[0], &lold) || !get_list_len(env, argv[1], &lnew))
        return enif_make_badarg(env);
    if ((size_t)lold + lnew > DV_MEMBERS_NIF_DIRTY_LEN && on_normal_scheduler())
        return enif_schedule_nif(env, "members_diff", ERL_NIF_DIRTY_JOB_CPU_BOUND,
                                 dv_members_diff_nif, argc, argv);
    dv_member *v = dv_alloc(((size_t)lold + lnew) * sizeof(dv_member));
    if (!v)
        return raise_enomem(env);
    size_t bytes = 0;
    if (!get_names(env, argv[0], lold, v, &bytes) ||
        !get_names(env, argv[1], lnew, v + lold, &bytes)) {
        dv_free(v);
        return enif_make_badarg(env);
    }
    if (bytes > DV_MEMBERS_NIF_DIRTY_BYTES && on_normal_scheduler()) {
        dv_free(v);
        return enif_schedule_nif(env, "members_diff", ERL_NIF_DIRTY_JOB_CPU_BOUND,
                                 dv_members_diff_nif, argc, argv);
    }
    size_t nold = dv_member_normalize(v, lold);
    size_t nnew = dv_member_normalize(v + lold, lnew);
    diff_ctx c = {env, enif_make_list(env, 0), enif_make_list(env, 0)};
    dv_member_diff_walk(v, nold, v + lold, nnew, collect, &c);
    dv_free(v);
    ERL_NIF_TERM added, removed;
    enif_make_reverse_list(env, c.added, &added);
    enif_make_reverse_list(env, c.removed, &removed);
    return enif_make_tuple2(env, added, removed);
}
