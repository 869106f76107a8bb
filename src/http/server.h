/*
 * server.h -- the HTTP front end (libmicrohttpd, epoll, internal threads).
 *
 * Routes (docs/api.md is the contract and documents the details):
 *   GET  /healthz           (ops.c)
 *   POST /commands/{type}   (commands.c)
 *   GET  /streams/$all      (streams.c)
 *   GET  /streams/{id}      POST /streams/{id}   (streams.c)
 *   GET  /queries/{name}    (query.c)
 *   GET  /projections[/{name}]   POST /projections/{name}/{op}   (ops.c)
 *   GET  /readyz (ops.c)    GET  /metrics (metrics.c)
 *   HEAD wherever GET (the same answer without its body)
 *
 * Requests are parsed and validated on MHD's threads; anything that writes
 * is handed to the writer and the connection is suspended until the writer
 * has committed (or refused) it, so no thread ever blocks on a write.
 * Reads of the event store run on MHD's threads through the store's read
 * pool.
 */
#ifndef CQ_SERVER_H
#define CQ_SERVER_H

#include <stddef.h>
#include <sys/socket.h>

#include "command/writer.h"
#include "projection/engine.h"
#include "cqrs/decider.h"
#include "store/store.h"

typedef struct cq_server cq_server;

typedef struct cq_server_config {
    struct sockaddr_storage addr; /* where to listen */
    socklen_t addrlen;
    int threads;             /* MHD thread pool; 0 → 2 */
    size_t body_limit;       /* bytes; 0 → 1 MiB */
    unsigned idle_timeout_s; /* close idle connections; 0 → 30 */
    double ready_max_lag_s;  /* /readyz lag bound in seconds; 0 → 30 */

    /* Connections: at most max_connections (0 → 8192), of them at most
     * max_connections_per_ip (0 → 1024) from one client address; a request
     * head must be complete within header_timeout_s (0 → 10) of the
     * connection, or the previous answer on it. */
    unsigned max_connections;
    unsigned max_connections_per_ip;
    unsigned header_timeout_s;
} cq_server_config;

/* Start serving: listen on cfg->addr and answer on cfg->threads MHD
 * threads until cq_server_stop().
 *
 * cfg is read during the call only. store, writer, engine (NULL: no
 * projections, queries or ?wait_for=) and domain are borrowed and must
 * outlive the server; the writer and engine must be running (they answer
 * the requests handed to them).
 *
 * Returns CQ_OK with *out the server (the caller frees it with
 * cq_server_stop()), or with *out NULL and a message in err (errcap bytes,
 * NUL-terminated): CQ_ENOMEM, or CQ_EIO when the connection sweeper's
 * thread cannot start or the address cannot be listened on (in use, not
 * allowed). On failure nothing it made is left (no thread, no socket, no
 * memory). Call from one thread, before the server is used. */
int cq_server_start(const cq_server_config *cfg, cq_store *store,
                    cq_writer *writer, cq_engine *engine,
                    const cq_domain *domain, cq_server **out, char *err,
                    size_t errcap);

/* The port actually bound (useful with port 0); 0 if MHD cannot say. Any
 * thread while the server runs. */
unsigned cq_server_port(cq_server *s);

/* The registry GET /metrics renders (base/metrics.h), so that parts the
 * server does not know (the in-process relay) can add a collector.
 * Borrowed: valid until cq_server_stop. Any thread. */
struct cq_metrics *cq_server_metrics(cq_server *s);

/* Wait up to timeout_ms until no request is waiting for the writer or a
 * projection, then stop every thread, close every connection and free s.
 * Call after cq_writer_stop() and cq_engine_stop(), which answer every
 * queued request and waiting query (new writes answer 503 meanwhile), and
 * from one thread, once: s is invalid afterwards. Accepts NULL.
 *
 * There is deliberately no "stop accepting" step: libmicrohttpd's
 * MHD_quiesce_daemon() races with its own worker threads in epoll mode
 * and can abort the process. */
void cq_server_stop(cq_server *s, int timeout_ms);

#endif
