/*
 * bus.h -- the bus: committed events published to NATS JetStream (the
 * relay) and the message format other services read (src/bus/README.md).
 *
 * The relay follows the event store in global position order
 * (cq_store_read_all: positions are gap-free) and publishes each event to
 * the JetStream stream `stream` (default CQRS_EVENTS, subjects
 * "cqrs.events.>") on subject cqrs.events.<category>.<stream-id>, with
 * Nats-Msg-Id = the event's id, so that JetStream's duplicate window
 * drops what a restarted relay publishes again. It saves its checkpoint
 * (the last position JetStream acknowledged) only after the
 * acknowledgements: a crash republishes, never skips.
 *
 * Exactly one relay runs per event store and stream: the one holding the
 * lock "cqrsd:relay" (PostgreSQL advisory lock on the store's
 * database; SQLite: flock on DIR/relay.lock). The others retry once a
 * second.
 *
 * Threads: a cq_relay runs on one thread of its own (cq_relay_start) or
 * on the caller's (cq_relay_run); cq_relay_wake, cq_relay_stop and
 * cq_relay_stats may be called from any thread.
 */
#ifndef CQ_BUS_H
#define CQ_BUS_H

#include <stddef.h>
#include <stdint.h>

#include "projection/engine.h"
#include "store/store.h"

#define CQ_BUS_STREAM "CQRS_EVENTS"
#define CQ_BUS_PREFIX "cqrs.events"
#define CQ_BUS_LOCK "cqrsd:relay"

/* ---- the message format (bus_msg.c) ---- */

/* The subject of an event of stream_id: PREFIX.<category>.<stream-id>,
 * where category is stream_id up to its first '-' (all of it if none)
 * and each token keeps ASCII letters, digits, '-' and '_' and writes any
 * other byte as %XX (upper-case hex): so '.', '*', '>', blanks and
 * non-ASCII bytes never reach NATS. CQ_OK, or CQ_EINVAL when it does not
 * fit in cap (or stream_id is empty). */
int cq_bus_subject(const char *prefix, const char *stream_id, char *buf,
                   size_t cap);

/* A header value: text with every byte below 0x20, 0x7f and '%' written
 * as %XX, so that no CR/LF can end the header. CQ_OK or CQ_EINVAL (does
 * not fit). */
int cq_bus_header_value(const char *text, char *buf, size_t cap);

/* Undo cq_bus_header_value (and the subject tokens' encoding) in place.
 * CQ_OK or CQ_EINVAL (a malformed %XX). */
int cq_bus_unescape(char *text);

/* The Nats-Msg-Id of ev: its metadata's "event_id" when that is a string
 * of 1..64 printable ASCII bytes, else "cqrs-pos-<position>". */
void cq_bus_msg_id(const cq_stored_event *ev, char *buf, size_t cap);

/* Header names (values: decimal integers, or text escaped as above). */
#define CQ_BUS_H_POSITION "Cqrs-Position"
#define CQ_BUS_H_TYPE "Cqrs-Type"
#define CQ_BUS_H_SCHEMA "Cqrs-Schema-Version"
#define CQ_BUS_H_STREAM "Cqrs-Stream-Id"
#define CQ_BUS_H_VERSION "Cqrs-Version"
#define CQ_BUS_H_EVENT_ID "Cqrs-Event-Id"
#define CQ_BUS_H_CORRELATION "Cqrs-Correlation-Id"
#define CQ_BUS_H_CAUSATION "Cqrs-Causation-Id"
#define CQ_BUS_H_RECORDED "Cqrs-Recorded-At"
#define CQ_BUS_H_METADATA "Cqrs-Metadata"

/* ---- the relay (relay.c) ---- */

typedef struct cq_relay cq_relay;

typedef struct cq_relay_config {
    cq_store *store;       /* read side only; borrowed, outlives the relay */
    const char *store_uri; /* the store's PostgreSQL URI, or NULL (SQLite) */
    const char *dir;       /* SQLite: the store's directory (relay.db,
                              relay.lock); unused with store_uri */
    const char *bus;       /* nats://HOST:PORT[,nats://...] */
    const char *stream;    /* NULL: CQ_BUS_STREAM */
    const char *prefix;    /* NULL: CQ_BUS_PREFIX */
    int window;            /* most unacknowledged publishes; 0: 256 */
    int64_t dup_window_ms; /* JetStream duplicate window; 0: 120000 */
    int poll_ms;           /* slow poll when no wake-up comes; 0: 1000
                              (PostgreSQL, in-process), 100 (a separate
                              process on SQLite, which nothing wakes) */
} cq_relay_config;

typedef struct cq_relay_stats {
    int active;         /* holds the lock and is connected to NATS */
    int64_t checkpoint; /* last position JetStream acknowledged */
    int64_t head;       /* the store's head when last read */
    int64_t published;  /* events acknowledged since start */
    int64_t duplicates; /* of them, dropped by JetStream as duplicates */
    int64_t failures;   /* publish rounds that failed (retried) */
    double lag_seconds; /* age of the oldest event not yet acknowledged */
} cq_relay_stats;

/* A new relay (strings of cfg copied). CQ_OK with *out (cq_relay_free),
 * CQ_EINVAL (no bus, or neither store_uri nor dir) or CQ_ENOMEM, with a
 * message in err. Nothing is connected yet. */
int cq_relay_new(const cq_relay_config *cfg, cq_relay **out, char *err,
                 size_t errcap);

/* Run until cq_relay_stop: take the lock (retry once a second), connect
 * to NATS (make the stream if missing), publish, save the checkpoint;
 * failures are logged on stderr and retried. Returns CQ_OK after stop. */
int cq_relay_run(cq_relay *r);

/* cq_relay_run on a thread of its own. CQ_OK or CQ_ENOMEM. */
int cq_relay_start(cq_relay *r);

/* New events were committed: look at once (writer thread, any thread). */
void cq_relay_wake(cq_relay *r);

/* Ask it to stop (any thread; returns at once); cq_relay_free joins. */
void cq_relay_stop(cq_relay *r);

/* Stop, join the thread if started, release the lock, free. Accepts
 * NULL. */
void cq_relay_free(cq_relay *r);

/* A snapshot of its counters. Any thread. */
void cq_relay_get_stats(cq_relay *r, cq_relay_stats *out);

/* Prometheus text of the relay's metrics appended to buf (cqrsd_relay_*).
 * Returns the bytes written (cut to cap). */
size_t cq_relay_metrics(cq_relay *r, char *buf, size_t cap);

/* Render the same in m's scrapes (GET /metrics of serve --bus): r must
 * outlive every scrape of m. CQ_OK or CQ_ENOMEM. */
struct cq_metrics;
int cq_relay_add_metrics(cq_relay *r, struct cq_metrics *m);

/* ---- the projection workers' event source (worker.c) ---- */

/*
 * `cqrsd project`: a projection engine (projection/engine.h) whose
 * asynchronous projections read the bus instead of the event store: each
 * through a durable pull consumer cqrs-proj-NAME on the stream (all its
 * subjects; explicit acks; ack wait ack_wait_ms; max ack pending
 * max(1000, 10 x batch)). The worker hands the engine only events after
 * the projection's checkpoint, in position order without a gap
 * (cq_engine_source), and acknowledges them once the engine committed
 * them with the checkpoint. See src/bus/README.md.
 *
 * Threads: the source's functions run on the engine's projector thread;
 * cq_worker_get_stats on any thread; cq_worker_free after the engine is
 * stopped.
 */
typedef struct cq_worker cq_worker;

typedef struct cq_worker_config {
    const char *bus;     /* nats://HOST:PORT[,...] */
    const char *stream;  /* NULL: CQ_BUS_STREAM */
    const char *prefix;  /* NULL: CQ_BUS_PREFIX */
    int batch;           /* the engine's micro-batch; 0: 100 */
    int64_t ack_wait_ms; /* 0: 5000 */
} cq_worker_config;

typedef struct cq_worker_stats {
    int known;           /* a consumer exists for it in this process */
    int64_t pending;     /* messages the consumer has not delivered yet */
    int64_t ack_pending; /* delivered, not acknowledged */
    int64_t redelivered; /* delivered more than once */
    int64_t held;        /* held here, waiting to be applied */
    int64_t skipped;     /* at or below a checkpoint: acknowledged, not
                            applied (all projections of the worker) */
} cq_worker_stats;

/* CQ_OK with *out (cq_worker_free), CQ_EINVAL (no bus) or CQ_ENOMEM. */
int cq_worker_new(const cq_worker_config *cfg, cq_worker **out, char *err,
                  size_t errcap);
void cq_worker_free(cq_worker *w);

/* The source to put in cq_engine_config.source (w borrowed). */
cq_engine_source cq_worker_source(cq_worker *w);

/* The durable consumer name of projection `name` into buf. */
void cq_worker_durable(const char *name, char *buf, size_t cap);

/* Up to `want` messages (want >= 1) of the JetStream pull subscription
 * `sub` (a natsSubscription), each passed to take (which owns it), waiting
 * up to timeout_ms when none is there; returns how many, with the last
 * fetch's natsStatus in *status (0 = NATS_OK, or NATS_TIMEOUT, ...).
 * natsSubscription_Fetch with a guard for libnats before 3.9 (Debian's
 * 3.4), whose fetch writes past its array of `want` messages when a
 * fetch starts with fewer than `want` but more than want/2 messages
 * already queued on the subscription (late answers to earlier fetches,
 * e.g. the pull requests buffered while disconnected, sent at once on
 * reconnect) and more come: heap corruption. Queued messages are taken
 * one per fetch, which cannot overflow; a batch is asked for only with
 * an empty queue. The caller's thread only (one per subscription). */
struct __natsSubscription;
struct __natsMsg;
int cq_worker_fetch(struct __natsSubscription *sub, int want,
                    int64_t timeout_ms,
                    void (*take)(void *arg, struct __natsMsg *m), void *arg,
                    int *status);

/* The counters of projection's consumer (refreshed once a second while
 * it runs). Any thread. */
void cq_worker_get_stats(cq_worker *w, int projection, cq_worker_stats *out);

/* `cqrsd project --bus URL --read-store URI [--store URI]
 * [--projection NAME]... [--batch N] [--projections DIR]
 * [--domain PATH]... [--stream NAME]` (cli.c): workers until SIGTERM. */
int cq_bus_cli_project(int argc, char **argv);

/* ---- the HTTP endpoint of relay and worker processes (health.c) ---- */

struct cq_strbuf;
/* Append a JSON body to out; 1 when ready (200), 0 when not (503). */
typedef int (*cq_bus_ready_fn)(void *arg, struct cq_strbuf *out);
/* Append Prometheus text to out. */
typedef void (*cq_bus_metrics_fn)(void *arg, struct cq_strbuf *out);

typedef struct cq_bus_http cq_bus_http;

/* Listen on HOST:PORT (or [IPV6]:PORT; port 0 picks one) and answer GET
 * /healthz (200 while the process runs), /readyz (ready(arg)) and
 * /metrics (metrics(arg)), on a thread of libmicrohttpd's; both callbacks
 * run there. CQ_OK with *out, or CQ_EINVAL / CQ_EIO / CQ_ENOMEM with a
 * message. */
int cq_bus_http_start(const char *listen, cq_bus_ready_fn ready,
                      cq_bus_metrics_fn metrics, void *arg, cq_bus_http **out,
                      char *err, size_t errcap);
unsigned cq_bus_http_port(cq_bus_http *h);
/* Stop and free; accepts NULL. */
void cq_bus_http_stop(cq_bus_http *h);

/* `cqrsd relay [--data DIR | --store URI] --bus URL [--stream NAME]
 * [--window N]` (cli.c): the relay as a process of its own, until SIGTERM
 * or SIGINT. Exit status: 0 after a signal, 2 for bad options or a store
 * that cannot be opened. */
int cq_bus_cli_relay(int argc, char **argv);

/* Release libnats' global state at process end (nats_Close), after every
 * relay and worker is freed. */
void cq_bus_shutdown(void);

#endif
