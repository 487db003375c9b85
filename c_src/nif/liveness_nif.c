/* liveness_nif.c - the state of a distribution connection's socket, from the kernel (see
 * liveness_nif.h). */
#include <limits.h>
#include <stdbool.h>

#include <erl_nif.h>

#include "liveness_nif.h"

#if defined(__linux__)
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

static bool peer_closed(int fd) {
    struct tcp_info info;
    socklen_t len = sizeof(info);
    if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &info, &len) != 0 || len < 1)
        return false; /* not a TCP socket, or gone: nothing to tell */
    return info.tcpi_state != TCP_ESTABLISHED;
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
