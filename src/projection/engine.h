/*
 * engine.h -- the projection engine: keeps read models in step with the
 * event store and answers the questions queries ask of them.
 *
 * Projections are declared in .sql files (docs/declared-sql.md). An
 * ASYNCHRONOUS projection keeps its tables and its checkpoint in
 * DIR/read.db; the projector thread, woken by the writer's commits (no
 * polling), applies events after its checkpoint in micro-batches, each
 * batch and the new checkpoint in ONE read.db transaction. An INLINE
 * projection keeps its tables and checkpoint in events.db and is applied by
 * the writer inside each command's savepoint, so its rows commit with the
 * events.
 *
 * A handler error stops only its projection: status "failed" with the
 * position, event type and message; the events before it in the batch are
 * kept, the others go on.
 *
 * Threads: the projector thread owns read.db's write connection; the
 * writer thread calls the hooks; any thread may run queries (connections
 * come from small pools) and wait for positions (wait.h).
 */
#ifndef CQ_PROJECTION_ENGINE_H
#define CQ_PROJECTION_ENGINE_H

#include <jansson.h>
#include <stdint.h>

#include "command/writer.h"
#include "cqrs/projection.h"
#include "projection/declared.h"
#include "query/wait.h"
#include "store/store.h"

typedef struct cq_engine cq_engine;

typedef struct cq_engine_config {
    const char *dir;         /* directory of read.db (the store's directory) */
    int batch;               /* events per micro-batch; 0 -> 100 */
    int readers;             /* query connections per database; 0 -> 4 */
    const cq_domain *domain; /* its upcasters decode old events; may be
                                NULL */
} cq_engine_config;

typedef enum cq_proj_status { CQ_PROJ_RUNNING, CQ_PROJ_FAILED } cq_proj_status;

/* What a query answer needs to say about freshness. */
typedef struct cq_freshness {
    int64_t position;   /* what the answer reflects */
    int64_t head;       /* committed head of the event store */
    int64_t lag_events; /* head - position */
    double lag_ms;      /* age of the oldest event not yet applied */
    int failed;         /* the projection is stopped by an error */
} cq_freshness;

/* A new engine for `store` (borrowed; must outlive the engine). Nothing
 * runs until cq_engine_start. */
int cq_engine_new(const cq_engine_config *cfg, cq_store *store, cq_engine **out,
                  char *err, size_t errcap);

/* Add the declared projection of every *.sql file in dir, in name order;
 * errors name the file and line. Before cq_engine_start only. */
int cq_engine_load_dir(cq_engine *e, const char *dir, char *err, size_t errcap);

/* The same for a file's text already in memory; `name` prefixes errors. */
int cq_engine_load_text(cq_engine *e, const char *name, const char *text,
                        size_t len, char *err, size_t errcap);

/* Add a projection whose handler is C code (include/cqrs/projection.h):
 * text declares its @projection (named code->name), @version, @mode, DDL
 * and queries, and has no @on blocks. code is copied; code->arg is
 * borrowed for the engine's life. */
int cq_engine_add_code(cq_engine *e, const char *text, size_t len,
                       const cq_projection_code *code, char *err,
                       size_t errcap);

/* Add a parsed declared projection (taken over, even on failure). */
int cq_engine_add(cq_engine *e, cq_declared *d, char *err, size_t errcap);

/* Create tables and checkpoints (an asynchronous projection whose version
 * or source changed starts a blue/green rebuild, its old tables serving
 * meanwhile; an inline one is dropped and replayed from position 0),
 * bring inline projections up to the store's head, start the projector
 * and the wait timer. Call before the writer starts: it uses the store's
 * write connection. */
int cq_engine_start(cq_engine *e, char *err, size_t errcap);

/* Hooks for cq_writer_config.hooks. */
cq_writer_hooks cq_engine_writer_hooks(cq_engine *e);

/* Stop the projector and fire every waiter as timed out. Queries keep
 * working. Idempotent. */
void cq_engine_stop(cq_engine *e);

/* Stop and free. No other thread may use the engine. Accepts NULL. */
void cq_engine_free(cq_engine *e);

/* ---- for the query side ---- */

/* Index of the projection called `name`, or -1. */
int cq_engine_projection(cq_engine *e, const char *name);

/* The query called `name` and the index of its projection, or NULL. */
const cq_decl_query *cq_engine_query(cq_engine *e, const char *name,
                                     int *projection);

const char *cq_engine_projection_name(cq_engine *e, int projection);

/* The projection's applied position (committed), and its status. */
int64_t cq_engine_position(cq_engine *e, int projection, int *failed);

/* Committed head of the event store, as last told by the writer. */
int64_t cq_engine_head(cq_engine *e);

/* Bytes of read.db's write-ahead log on disk (read.db-wal). Any thread. */
int64_t cq_engine_wal_bytes(cq_engine *e);

/* 1 if the projection is inline (its tables commit with the events in
 * events.db), 0 if asynchronous. Any thread. */
int cq_engine_is_inline(cq_engine *e, int projection);

/* Wait for `projection` (or, with CQ_ENGINE_HEAD, the event store's
 * committed head) to reach `target` (see cq_waiters_add). */
#define CQ_ENGINE_HEAD (-1)
int cq_engine_wait(cq_engine *e, int projection, int64_t target,
                   int64_t timeout_ms, cq_wait_cb cb, void *arg, cq_wait **out);

/* Wait for `projection` (or CQ_ENGINE_HEAD) to apply stream_id's event at
 * `version`, which the event store did not have when the caller looked;
 * `seen` is cq_engine_position (cq_engine_head) read before it looked
 * (see cq_waiters_add_stream: 1 means look again). Only commits that
 * write stream_id wake it. */
int cq_engine_wait_stream(cq_engine *e, int projection, const char *stream_id,
                          int64_t version, int64_t seen, int64_t timeout_ms,
                          cq_wait_cb cb, void *arg, cq_wait **out);

/* Waiters registered and not fired, and the waiters commits have looked
 * at one by one since the start (cq_waiters_checked). Any thread. */
void cq_engine_wait_stats(cq_engine *e, int *pending, int64_t *checked);

/* Position of stream_id's event at `version`: CQ_OK, CQ_ENOTFOUND (the
 * stream is shorter) or CQ_EIO. */
int cq_engine_version_position(cq_engine *e, const char *stream_id,
                               int64_t version, int64_t *position, char *err,
                               size_t errcap);

/* Run query q of `projection` with values (in q->params order; NULL = not
 * given) against the read model. *data gets the answer's data (new
 * reference; NULL for a CQ_RESULT_ONE query that found no row); fresh
 * says what it reflects, read in the same snapshot. For keyed queries
 * *stream_version gets the stream's version as the answer reflects it
 * (0 if none). CQ_OK or CQ_EIO. */
int cq_engine_run_query(cq_engine *e, int projection, const cq_decl_query *q,
                        const char *const *values, const char *stream_id,
                        json_t **data, cq_freshness *fresh,
                        int64_t *stream_version, char *err, size_t errcap);

/* (cq_engine_run_query answers CQ_EBUSY when a rebuild replaces the
 * tables with a new definition and the old one cannot answer q.) */

/* The same query answered from the event store: the one stream is
 * replayed through the projection's handlers into a private in-memory
 * database and the query runs there. fresh->position is the stream's last
 * event. CQ_OK, CQ_ENOTFOUND (no such stream), CQ_EIO. */
int cq_engine_run_strong(cq_engine *e, int projection, const cq_decl_query *q,
                         const char *const *values, const char *stream_id,
                         json_t **data, cq_freshness *fresh,
                         int64_t *stream_version, char *err, size_t errcap);

/* ---- control ---- */

typedef struct cq_projection_status {
    const char *name; /* borrowed from the engine */
    int64_t version;
    int is_inline;
    const char *status; /* running, paused, failed, rebuilding */
    int paused, failed;
    int64_t position, head, lag_events;
    double lag_seconds;
    int64_t error_position; /* failed only */
    char error[512];
    char error_event[130];
    int64_t skipped;         /* events skipped (rows of cq_skipped_events) */
    int64_t serving_version; /* @version of the live tables: differs from
                                version while a rebuild replaces them; 0
                                when unknown */
    int frozen;              /* the live tables are not being applied */
    /* a blue/green rebuild in progress (rebuilding = 1) */
    int rebuilding;
    struct {
        char reason[96];
        int64_t started_ms;
        int64_t done, total; /* events replayed; the head to reach */
        double events_per_second;
        double eta_seconds; /* -1 when not known yet */
    } rebuild;
    /* the last rebuild that ended (last_rebuild.outcome[0] != 0) */
    struct {
        char outcome[8]; /* done, failed */
        int64_t started_ms, finished_ms, events, version;
        char error[512];
    } last_rebuild;
} cq_projection_status;

/* Number of projections; they are numbered 0..count-1. */
int cq_engine_count(cq_engine *e);

/* A snapshot of projection's state. Any thread. */
int cq_engine_status(cq_engine *e, int projection, cq_projection_status *out);

/* One control operation of one caller. */
typedef struct cq_control cq_control;
typedef void (*cq_control_cb)(void *arg);

/* Ask the projector thread to "pause", "resume", "reset" (drop the tables,
 * replay from 0 in place), "retry" (a failed projection, from its failing
 * event), "skip" (a failed projection: record the failing event in
 * cq_skipped_events and go on after it) or "rebuild" (start a blue/green
 * rebuild: it goes on in the background, see cq_projection_status) an
 * asynchronous projection, without waiting for it.
 *
 * Each call is an operation of its own: operations are carried out one at
 * a time, in the order asked, and each gets its own result, whatever
 * other callers ask meanwhile. On CQ_OK, *out is the operation: cb(arg)
 * is called exactly once, on the projector thread, when it has been
 * carried out (or refused by the engine stopping before it ran); then
 * cq_control_result() tells how it went. The caller owns *out and gives
 * it back with cq_control_release(). Refused at once, with a message in
 * err and *out NULL: CQ_EINVAL (unknown operation), CQ_ECONFLICT (an
 * inline projection), CQ_ECLOSED (the engine is stopping or not started),
 * CQ_ENOMEM. Any thread; cb must be short (resume a connection). */
int cq_engine_control_start(cq_engine *e, int projection, const char *op,
                            cq_control_cb cb, void *arg, cq_control **out,
                            char *err, size_t errcap);

/* After the callback: the operation's result and its message (into err):
 * CQ_OK; CQ_ECONFLICT (retry/skip of a projection that has not failed,
 * rebuild of one being rebuilt); CQ_EIO; CQ_ECLOSED (the engine stopped
 * before it ran: it was not carried out). Any thread. */
int cq_control_result(cq_control *c, char *err, size_t errcap);

/* Give back the caller's operation. One that has not started running yet
 * is cancelled: it will never run and cb is not called; one already
 * running still calls cb once (arg must stay valid until then). Accepts
 * NULL. */
void cq_control_release(cq_control *c);

/* cq_engine_control_start, then wait for that operation to be carried out
 * and return its result (cq_control_result). Blocks the calling thread
 * for as long as the operations queued before it and itself take: not
 * for HTTP threads. */
int cq_engine_control(cq_engine *e, int projection, const char *op, char *err,
                      size_t errcap);

#endif
