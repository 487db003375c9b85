/* liveness_nif.h - whether the peer of a distribution socket has closed it.
 *
 *   tcp_peer_closed(fd :: non_neg_integer) :: boolean
 *
 * true when the peer of the stream socket fd has ended the stream (FIN received) or the
 * connection is gone or fd is not open; false when it is open, or when this cannot be told
 * (not Linux). It only polls the socket with a zero timeout (poll POLLRDHUP): nothing is
 * read from or written to the stream. Normal scheduler, O(1): one system call. See
 * Drove.Liveness for why.
 */
#ifndef DROVE_LIVENESS_NIF_H
#define DROVE_LIVENESS_NIF_H

#include <erl_nif.h>

ERL_NIF_TERM dv_tcp_peer_closed_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]);

#endif
