/* lock_nif.h - the replica lock and how a NIF that finds it busy is rescheduled.
 *
 * Scheduling rule (docs/architecture.md, "NIF scheduling rule"): single-key calls run on
 * normal schedulers and take the replica lock with a short spin of trylock. If it stays held
 * (another scheduler's call, a holder preempted by the OS or growing an index, a dirty job
 * joining a big delta), the call yields its scheduler and tries again, up to LOCK_YIELDS
 * times, and then runs again as a dirty job that blocks on the lock, instead of blocking a
 * normal scheduler. Calls whose cost grows with the map or with a peer's message run dirty,
 * or are dispatched by size.
 *
 * Every such NIF is one function, the one in the function table, which reschedules itself
 * with enif_schedule_nif: call_of() tells it which run it is (the first, one after a yield, or
 * a dirty one), lock_call() takes the lock or reschedules it, run_dirty() sends a big job to a
 * dirty scheduler.
 *
 * The test hooks (test_hold/2, test_release/0, test_counters/1) let the ExUnit suite hold a
 * replica's lock, so that the races above are forced rather than hoped for.
 */
#ifndef DROVE_LOCK_NIF_H
#define DROVE_LOCK_NIF_H

#include <stdbool.h>

#include <erl_nif.h>

#include "replica_nif.h"

/* A call that finds the lock busy yields this many times before it goes dirty. */
#define LOCK_YIELDS 4

typedef ERL_NIF_TERM (*nif_fn)(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]);

/* A NIF call that takes the replica lock, with what it takes to run it again. */
typedef struct {
    ErlNifEnv *env;
    const char *name; /* the NIF's name */
    nif_fn self;      /* the NIF itself */
    int arity;        /* its arity: argv holds one more argument after a yield */
    const ERL_NIF_TERM *argv;
    int yields; /* the yields for the lock so far */
    bool dirty; /* running on a dirty scheduler */
} nif_call;

/* The call a NIF of the given arity (at most 7) is running: the first one (argc == arity),
 * one after a yield (argc == arity + 1, the last argument the yields so far), or a dirty
 * one. */
nif_call call_of(ErlNifEnv *env, const char *name, nif_fn self, int arity, int argc,
                 const ERL_NIF_TERM argv[]);
/* Runs the call again as a dirty CPU job (a big job, or the lock stayed busy); returns what
 * the NIF must return. */
ERL_NIF_TERM run_dirty(const nif_call *c);
/* Takes r->lock for the call: blocking on a dirty scheduler; on a normal one with
 * spin_trylock, and when that fails the call is rescheduled (reschedule_busy): false then,
 * and *busy is what the NIF must return. */
bool lock_call(const nif_call *c, replica *r, ERL_NIF_TERM *busy);
/* For a call that found the lock busy: runs it again after a yield (if may_yield, up to
 * LOCK_YIELDS times), else as a dirty job, counted in r->busy (info's lock_busy). */
ERL_NIF_TERM reschedule_busy(const nif_call *c, replica *r, bool may_yield);
/* trylock, spinning a little: critical sections of single-key calls are one map operation. */
bool spin_trylock(ErlNifMutex *m);

/* Test hooks: dirty I/O (test_hold waits until released); the others normal, O(1). */
ERL_NIF_TERM dv_test_hold_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]);
ERL_NIF_TERM dv_test_release_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]);
ERL_NIF_TERM dv_test_counters_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]);

#endif
