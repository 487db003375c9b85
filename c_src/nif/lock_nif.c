/* lock_nif.c - the replica lock: trylock, yield, then reschedule dirty (lock_nif.h), and the
 * test hooks that hold it. */
#include "lock_nif.h"

#include <stdbool.h>
#include <string.h>
#include <time.h>

#include <erl_nif.h>

#include "replica_nif.h"

/* Spins of trylock, with a pause between tries, before a call gives up its turn. */
#define SPIN_TRIES 200

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

bool spin_trylock(ErlNifMutex *m) {
    for (int i = 0; i < SPIN_TRIES; i++) {
        if (enif_mutex_trylock(m) == 0)
            return true;
        cpu_relax();
    }
    return false;
}

/* Arity limit of a call that may yield: the retry carries one argument more. */
#define MAX_NIF_ARGS 8

nif_call call_of(ErlNifEnv *env, const char *name, nif_fn self, int arity, int argc,
                 const ERL_NIF_TERM argv[]) {
    nif_call c = {
        env, name, self, arity, argv, 0, enif_thread_type() != ERL_NIF_THR_NORMAL_SCHEDULER};
    if (argc > arity && !enif_get_int(env, argv[arity], &c.yields))
        c.yields = LOCK_YIELDS;
    return c;
}

ERL_NIF_TERM run_dirty(const nif_call *c) {
    return enif_schedule_nif(c->env, c->name, ERL_NIF_DIRTY_JOB_CPU_BOUND, c->self, c->arity,
                             c->argv);
}

/* Why yield before going dirty: the yield puts the process back in the run queue, and the
 * holder (on another scheduler, or preempted by the OS) goes on meanwhile, so the next try
 * mostly finds the lock free. Going dirty costs more under load: a dirty thread must be woken
 * and given a core, and spins after its job. In a burst of registrations from many processes
 * on 2 cores, a few yields sent far fewer calls dirty than spinning alone, even spinning five
 * times longer, and left the dirty schedulers mostly idle (measured when the yield was added,
 * commit 0c5b949; info's lock_busy counts the calls that still go dirty). */
ERL_NIF_TERM reschedule_busy(const nif_call *c, replica *r, bool may_yield) {
    if (may_yield && c->yields < LOCK_YIELDS && c->arity < MAX_NIF_ARGS) {
        ERL_NIF_TERM args[MAX_NIF_ARGS];
        memcpy(args, c->argv, (size_t)c->arity * sizeof(*args));
        args[c->arity] = enif_make_int(c->env, c->yields + 1);
        enif_consume_timeslice(c->env, 100);
        return enif_schedule_nif(c->env, c->name, 0, c->self, c->arity + 1, args);
    }
    __atomic_fetch_add(&r->busy, 1, __ATOMIC_RELAXED);
    return run_dirty(c);
}

bool lock_call(const nif_call *c, replica *r, ERL_NIF_TERM *busy) {
    if (c->dirty) {
        enif_mutex_lock(r->lock);
        return true;
    }
    if (spin_trylock(r->lock))
        return true;
    *busy = reschedule_busy(c, r, true);
    return false;
}

/* ------------------------------------------------------------------ test hooks */

/* For tests that need a call to find the replica lock busy: they force the race instead of
 * hoping for it. One hold at a time in the whole VM; nothing outside the tests calls them. */
static int test_release_flag;

/* test_hold(replica, notify_pid) -> :ok
 * Takes the replica lock, sends notify_pid :drove_test_held, and keeps the lock until
 * test_release/0. Dirty I/O: it waits (sleeping a millisecond at a time), not computes. */
ERL_NIF_TERM dv_test_hold_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    replica *r;
    ErlNifPid to;
    if (!get_replica(env, argv[0], &r) || !enif_get_local_pid(env, argv[1], &to))
        return enif_make_badarg(env);
    __atomic_store_n(&test_release_flag, 0, __ATOMIC_SEQ_CST);
    enif_mutex_lock(r->lock);
    enif_send(env, &to, NULL, mk_atom(env, "drove_test_held"));
    struct timespec ms = {0, 1000000};
    while (!__atomic_load_n(&test_release_flag, __ATOMIC_SEQ_CST))
        nanosleep(&ms, NULL);
    enif_mutex_unlock(r->lock);
    return A_OK;
}

/* test_release() -> :ok: ends the hold of test_hold/2. */
ERL_NIF_TERM dv_test_release_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)env;
    (void)argc;
    (void)argv;
    __atomic_store_n(&test_release_flag, 1, __ATOMIC_SEQ_CST);
    return A_OK;
}

/* test_counters(replica) -> {exits_deferred, lock_busy}, read without the replica lock (so
 * while test_hold/2 holds it). */
ERL_NIF_TERM dv_test_counters_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    replica *r;
    if (!get_replica(env, argv[0], &r))
        return enif_make_badarg(env);
    enif_mutex_lock(r->pend_lock);
    uint64_t deferred = r->deferred;
    enif_mutex_unlock(r->pend_lock);
    uint64_t busy = __atomic_load_n(&r->busy, __ATOMIC_RELAXED);
    return enif_make_tuple2(env, enif_make_uint64(env, deferred), enif_make_uint64(env, busy));
}
