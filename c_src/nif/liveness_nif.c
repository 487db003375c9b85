/* liveness_nif.c - the state of a distribution connection's socket, from the kernel (see
 * liveness_nif.h). */
#if defined(__linux__) && !defined(_GNU_SOURCE)
#define _GNU_SOURCE /* POLLRDHUP */
#endif

#include <limits.h>
#include <stdbool.h>

#include <erl_nif.h>

#include "liveness_nif.h"

#if defined(__linux__)
#include <poll.h>

/* POLLRDHUP: the peer has shut down its side (FIN received), even with data still unread;
 * POLLHUP/POLLERR: the connection is gone; POLLNVAL: the descriptor is closed. */
static bool peer_closed(int fd) {
    struct pollfd p = {.fd = fd, .events = POLLRDHUP, .revents = 0};
    if (poll(&p, 1, 0) != 1)
        return false;
    return (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)) != 0;
}
#else
static bool peer_closed(int fd) {
    (void)fd;
    return false;
}
#endif

ERL_NIF_TERM dv_tcp_peer_closed_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    int fd;
    if (!enif_get_int(env, argv[0], &fd) || fd < 0)
        return enif_make_badarg(env);
    return enif_make_atom(env, peer_closed(fd) ? "true" : "false");
}
