/*
 * conns.h -- the table of open HTTP connections and the deadline for a
 * complete request head (conns.c).
 *
 * libmicrohttpd's connection timeout is an idle timeout: every byte
 * received starts it again, so a client that trickles a request head one
 * byte at a time holds its connection for ever. This table bounds the
 * time from "waiting for a request head" (a new connection, or the
 * previous answer on a keep-alive one) to "head complete" (the first
 * call of the request handler): a sweeper thread shuts down every
 * connection past the deadline, and libmicrohttpd then closes it.
 *
 * Threads: libmicrohttpd's threads call cq_conns_notify, head_done and
 * head_wait, each for a connection it is serving; the sweeper thread runs
 * alone. One mutex inside the table guards its list; a connection's
 * deadline is an atomic (see conns.c).
 */
#ifndef CQ_HTTP_CONNS_H
#define CQ_HTTP_CONNS_H

#include <microhttpd.h>

typedef struct cq_conns cq_conns;

/* Create the table and start its sweeper: a request head must be
 * complete within head_timeout_ms. On CQ_OK *out is the table, owned by
 * the caller (cq_conns_free); CQ_ENOMEM or CQ_EIO (no thread), with *out
 * NULL and nothing left running. Before the daemon starts. */
int cq_conns_start(unsigned head_timeout_ms, cq_conns **out);

/* Stop the sweeper and free the table. Call after MHD_stop_daemon() (which
 * reports every connection closed). Accepts NULL. */
void cq_conns_free(cq_conns *t);

/* MHD_OPTION_NOTIFY_CONNECTION callback, cls = the table: STARTED adds
 * the connection (waiting for its first head), CLOSED removes it before
 * libmicrohttpd closes its socket. */
void cq_conns_notify(void *cls, struct MHD_Connection *c, void **socket_context,
                     enum MHD_ConnectionNotificationCode code);

/* How many connections are open (STARTED and not yet CLOSED): a snapshot,
 * any thread. */
unsigned cq_conns_open(cq_conns *t);

/* The request head on c is complete: no deadline until the next one.
 * Cannot fail; a connection the table does not know is ignored. */
void cq_conns_head_done(struct MHD_Connection *c);

/* The request on c is over: the deadline runs for the next head. Cannot
 * fail; a connection the table does not know is ignored. */
void cq_conns_head_wait(struct MHD_Connection *c);

#endif
