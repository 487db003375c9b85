/* liveness_nif.h - whether the peer of a distribution socket has closed it.
 *
 *   tcp_peer_closed(fd :: non_neg_integer) :: boolean
 *
 * true when fd is a TCP socket whose peer has ended the stream (FIN received: the
 * connection is past ESTABLISHED) or that is closed; false when it is established, or when
 * this cannot be told (not a TCP socket, not Linux). It only reads the socket's state
 * (getsockopt TCP_INFO): nothing is read from or written to the stream. Normal scheduler,
 * O(1): one system call. See Drove.Liveness for why.
 */
#ifndef DROVE_LIVENESS_NIF_H
#define DROVE_LIVENESS_NIF_H

#include <erl_nif.h>

ERL_NIF_TERM dv_tcp_peer_closed_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]);

#endif
