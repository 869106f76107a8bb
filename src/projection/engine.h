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
 * Several nodes (a read store on PostgreSQL, shared by N servers on one
 * event store): each asynchronous projection runs on exactly one node at
 * a time, the one whose projector holds the lock cqrsd:projection:NAME
 * on its read-store connection; the others try for it every second and,
 * once they get it, read the projection's checkpoint again before
 * applying anything. A batch's checkpoint is written only if it still is
 * the position this node read (so nothing is applied twice, even by a
 * node that lost its lock without noticing), and its commit notifies
 * cq_progress "NAME:POSITION". A listener thread per node (its own
 * connection) hears cq_progress and the event store's cq_events (the
 * head after another node's commit): it moves this node's positions and
 * head, wakes its waiters and its projector; after its connection fails
 * it listens again and reads positions and head anew. On SQLite nothing
 * of this runs: one process owns the files and runs every projection.
 *
 * Threads: the projector thread owns read.db's write connection; the
 * writer thread calls the hooks; any thread may borrow a read connection
 * (small pools) and read positions; the listener thread (several nodes
 * only) moves positions. Queries and waits are src/query/ (query.h): the
 * engine tells it that positions moved through the progress listener
 * (progress.h), and knows nothing of it.
 */
#ifndef CQ_PROJECTION_ENGINE_H
#define CQ_PROJECTION_ENGINE_H

#include <jansson.h>
#include <stdint.h>

#include "cqrs/decider.h"
#include "cqrs/projection.h"
#include "projection/declared.h"
#include "projection/exec.h"
#include "projection/progress.h"
#include "store/store.h"

typedef struct cq_engine cq_engine;

/* Where the asynchronous projections this node runs take their events
 * from instead of the event store (cqrsd project: a JetStream consumer per
 * projection, src/bus/worker.c). Both run on the projector thread. */
typedef struct cq_engine_source {
    /* Hand the events of projection `projection` (called `name`) at
     * positions from, from+1, ... in order, none below `from` and without
     * a gap, at most `limit`, to cb(cbarg, ev) (ev borrowed for the call;
     * a non-zero return stops). Waits briefly (a fraction of a second)
     * when none is there. CQ_OK, also when it handed out none; a failure
     * with a message in err (retried later). */
    int (*read)(void *arg, int projection, const char *name, int64_t from,
                int limit, cq_event_cb cb, void *cbarg, char *err,
                size_t errcap);
    /* The projection's events up to `position` are applied and its
     * checkpoint committed: acknowledge them. */
    void (*applied)(void *arg, int projection, const char *name,
                    int64_t position);
    void *arg;
} cq_engine_source;

typedef struct cq_engine_config {
    const char *dir;         /* directory of read.db (the store's directory);
                                unused with a read_store */
    int batch;               /* events per micro-batch; 0 -> 100 */
    int readers;             /* query connections per database; 0 -> 4 */
    const cq_domain *domain; /* its upcasters decode old events; may be
                                NULL */
    /* Where the asynchronous projections live: NULL or "" for DIR/read.db,
     * else a PostgreSQL URI (cq_rdb_open). Such a read store may be shared
     * by several servers (nodes): see "Several nodes" below. Borrowed for
     * the call. */
    const char *read_store;
    /* The event store's database, when other nodes may append to it (a
     * PostgreSQL URI): the engine listens there for their commits
     * (channel cq_events). NULL for an embedded store. Borrowed for the
     * call. */
    const char *store_uri;
    /* NULL: asynchronous projections read the event store. Else their
     * source (copied; its arg borrowed for the engine's life). */
    const cq_engine_source *source;
    /* Which asynchronous projections this node may run: NULL for all;
     * else the names listed, up to a NULL entry (so { NULL }: none, for a
     * server that leaves them to workers). Borrowed for the engine's
     * life. With a shared read store the others stay with whichever node
     * holds their lock; this one never claims them. */
    const char *const *run;
    /* 1: cq_engine_start leaves the inline projections' catch-up to
     * cq_engine_catch_up, which the writer's start hook runs (src/wiring.c)
     * while the server already answers; 0: cq_engine_start brings them to
     * the head itself (tools, tests, workers without a server). */
    int defer_inline;
} cq_engine_config;

typedef enum cq_proj_status { CQ_PROJ_RUNNING, CQ_PROJ_FAILED } cq_proj_status;

/* A new engine for `store` (borrowed; must outlive the engine) with the
 * settings of cfg (read during the call; cfg->domain is borrowed for the
 * engine's life). Nothing runs until cq_engine_start. On CQ_OK *out is
 * the engine, owned by the caller (cq_engine_free); CQ_ENOMEM with a
 * message in err. Any thread. */
int cq_engine_new(const cq_engine_config *cfg, cq_store *store, cq_engine **out,
                  char *err, size_t errcap);

/* The four loaders below add projections, numbered in the order added.
 * They run before cq_engine_start only, on the thread that made the
 * engine. Each returns CQ_OK, or with a message in err[errcap] naming the
 * file (and line, for a parse error): CQ_EINVAL (malformed, or a
 * projection or query name already taken), CQ_EIO (a file cannot be
 * read, cq_engine_load_dir only) or CQ_ENOMEM. After a failure the engine
 * is still whole (what was added stays added); the caller usually frees
 * it. */

/* Add the declared projection of every *.sql file in dir (borrowed), in
 * name order; the first failure stops the loading. */
int cq_engine_load_dir(cq_engine *e, const char *dir, char *err, size_t errcap);

/* The same for a file's text already in memory (text[0..len), copied);
 * `name` (borrowed) prefixes errors and names the projection's source. */
int cq_engine_load_text(cq_engine *e, const char *name, const char *text,
                        size_t len, char *err, size_t errcap);

/* Add a projection whose handler is C code (include/cqrs/projection.h):
 * text (copied) declares its @projection (named code->name), @version,
 * @mode, DDL and queries, and has no @on blocks (else CQ_EINVAL). code is
 * copied; code->name and code->arg are borrowed for the engine's life. */
int cq_engine_add_code(cq_engine *e, const char *text, size_t len,
                       const cq_projection_code *code, char *err,
                       size_t errcap);

/* Add a parsed declared projection (taken over, even on failure). CQ_OK,
 * CQ_EINVAL (its name or one of its query names is taken) or
 * CQ_ENOMEM. */
int cq_engine_add(cq_engine *e, cq_declared *d, char *err, size_t errcap);

/* Create tables and checkpoints (an asynchronous projection whose version
 * or source changed starts a blue/green rebuild, its old tables serving
 * meanwhile; an inline one is dropped and replayed from position 0),
 * bring inline projections up to the store's head (with defer_inline:
 * mark those behind it catching_up for cq_engine_catch_up), open the
 * read pools,
 * tell the progress listener every starting position and start the
 * projector. Call before the writer starts: it uses the store's write
 * connection. CQ_OK, or CQ_EIO / CQ_EINVAL (a projection's SQL) /
 * CQ_ENOMEM with a message naming the file and line; after a failure only
 * cq_engine_free. */
int cq_engine_start(cq_engine *e, char *err, size_t errcap);

/* With cfg->defer_inline: bring every inline projection that is behind
 * the store's head up to it, in transactions of 1000 events on the
 * store's write connection, publishing its position after each (queries
 * answer with that position and its lag meanwhile; cq_engine_status
 * says catching_up). Run on the writer thread before its first batch
 * (the writer's `start` hook): commands queued meanwhile wait for it.
 * Returns once every inline projection is current, or early after
 * cq_engine_stop_catch_up or a failure (logged; that projection stays
 * catching_up with the error in its status, and the writer's commands
 * are answered 500 until a restart). The projector thread waits for it
 * (the commands wait for these, so they go first; control operations
 * queue): it is started here once the catch-up ended, unless it was
 * stopped. CQ_OK, CQ_ECLOSED (stopped early) or the failure's code. A
 * no-op without defer_inline. With defer_inline, call cq_engine_stop
 * only once the writer has stopped. */
int cq_engine_catch_up(cq_engine *e);

/* Make a cq_engine_catch_up under way return after its current
 * transaction (at shutdown, before cq_writer_stop). Any thread. */
void cq_engine_stop_catch_up(cq_engine *e);

/* The writer's inline hooks (the application wires them into
 * cq_writer_config.hooks: see src/wiring.c). All three run on the writer
 * thread, inside its write transaction on the store's write connection.
 *
 * cq_engine_apply_inline: apply the n events about to be appended by one
 * command (`events` and `data`, its parsed data, borrowed for the call) to
 * every running inline projection, under a savepoint of its own. CQ_OK;
 * CQ_EREFUSED when a projection cannot apply one of them (why in err: the
 * command is to be refused, its savepoint undone); CQ_EIO when the
 * transaction failed (the batch is to be rolled back).
 *
 * cq_engine_before_commit: write the inline checkpoints at `head`, in the
 * batch's transaction. CQ_OK or CQ_EIO.
 *
 * cq_engine_committed: the batch up to `head` is durable. Publishes the
 * inline positions and wakes the projector; the stream waiters of the n
 * streams listed (borrowed for the call) look again, or every stream
 * waiter when `all` (the list could not be built). */
int cq_engine_apply_inline(cq_engine *e, const cq_stored_event *events,
                           const json_t *const *data, size_t n, char *err,
                           size_t errcap);
int cq_engine_before_commit(cq_engine *e, int64_t head);
void cq_engine_committed(cq_engine *e, int64_t head,
                         const cq_stream_applied *streams, size_t n, int all);

/* Stop the projector and tell the progress listener (the query side then
 * fires every waiter as timed out). Queries keep working. Idempotent;
 * accepts NULL. Call from the thread that started the engine (main.c
 * stops the writer first, so every queued command is answered). */
void cq_engine_stop(cq_engine *e);

/* Stop and free (the progress listener's arg too). No other thread may
 * use the engine. Accepts NULL. */
void cq_engine_free(cq_engine *e);

/* ---- for the query side ---- */

/* Index of the projection called `name` (borrowed for the call), or -1
 * when there is none (an index, not a CQ_* code). Any thread once loading
 * is over (the list no longer changes). */
int cq_engine_projection(cq_engine *e, const char *name);

/* The query called `name` (borrowed for the call), borrowed from the
 * engine for its life, with the index of its projection in *projection;
 * NULL (*projection untouched) when no projection declares it. Any thread
 * once loading is over. */
const cq_decl_query *cq_engine_query(cq_engine *e, const char *name,
                                     int *projection);

/* projection's name: borrowed, valid for the engine's life. Any
 * thread. */
const char *cq_engine_projection_name(cq_engine *e, int projection);

/* The projection's applied position (committed), and in *failed (if not
 * NULL) 1 when it is stopped by an error, else 0. Cannot fail. Any
 * thread (takes the engine's lock). */
int64_t cq_engine_position(cq_engine *e, int projection, int *failed);

/* Committed head of the event store, as last told by the writer (or read
 * at start). Cannot fail. Any thread. */
int64_t cq_engine_head(cq_engine *e);

/* Bytes of read.db's write-ahead log on disk (read.db-wal); -1 when the
 * read store is not SQLite (a server keeps its own log). Any thread. */
int64_t cq_engine_wal_bytes(cq_engine *e);

/* Events the projector has taken from memory (what the writer committed
 * last, src/projection/tail.h) and read from the event store, since the
 * start; both 0 on a store it does not keep in memory. Any thread. */
void cq_engine_read_stats(cq_engine *e, int64_t *from_memory,
                          int64_t *from_store);

/* A predicate: 1 if the projection is inline (its tables commit with the
 * events in events.db), 0 if asynchronous. Any thread. */
int cq_engine_is_inline(cq_engine *e, int projection);

/* Position of stream_id's event at `version` into *position: CQ_OK,
 * CQ_ENOTFOUND (the stream is shorter) or CQ_EIO with a message. Reads
 * the event store through its read pool. Any thread. */
int cq_engine_version_position(cq_engine *e, const char *stream_id,
                               int64_t version, int64_t *position, char *err,
                               size_t errcap);

/* How long ago the first event after `position` was recorded (0 when
 * position >= head, or the store has no such event): *lag_ms. CQ_OK or
 * CQ_EIO with a message (the store could not be read). Any thread. */
int cq_engine_lag_ms(cq_engine *e, int64_t position, int64_t head,
                     double *lag_ms, char *err, size_t errcap);

/* stream_id's version as of `position` (0 if the stream has no event up
 * to there) into *version: CQ_OK or CQ_EIO. Any thread. */
int cq_engine_stream_version_at(cq_engine *e, const char *stream_id,
                                int64_t position, int64_t *version, char *err,
                                size_t errcap);

/* ---- for the query side (src/query) ---- */

/* Set the listener told when positions move (progress.h; copied; arg is
 * the listener's to free in its `free`). Before cq_engine_start, which
 * tells it every starting position; never while the engine runs. */
void cq_engine_set_progress(cq_engine *e, const cq_engine_progress *progress);

/* The listener's arg set above, or NULL. Any thread. */
void *cq_engine_progress_arg(cq_engine *e);

/* projection's definition as declared (borrowed for the engine's life).
 * Any thread. */
const cq_declared *cq_engine_declared(cq_engine *e, int projection);

/* The definition projection's live tables were built with: the declared
 * one, an older one while a rebuild replaces them, or NULL when it is
 * unknown. Borrowed: valid for the engine's life. Any thread. */
const cq_declared *cq_engine_serving(cq_engine *e, int projection);

/* Borrow a read-only connection to the database holding projection's
 * tables (read.db; events.db for an inline projection), waiting for an
 * idle one; give it back with cq_engine_reader_put on any thread. The
 * borrower alone uses it meanwhile. After cq_engine_start. NULL, with why
 * in err, when the idle one had lost its server and cannot connect again
 * (PostgreSQL down): nothing is borrowed then. */
cq_exec *cq_engine_reader_get(cq_engine *e, int projection, char *err,
                              size_t errcap);
/* Give back a reader borrowed with cq_engine_reader_get for the same
 * projection, outside any transaction. A connection whose last statement
 * failed with CQ_EIO (its server went away) is closed: the next borrower
 * connects again. A predicate, not a CQ_* code: 1 when it was closed so
 * (a read that failed on it may be tried again on a new one), else 0.
 * Any thread. */
int cq_engine_reader_put(cq_engine *e, int projection, cq_exec *x);

/* projection's checkpoint read through x (a reader, in the caller's open
 * transaction, so that it matches the rows read with it): *position and
 * *failed, left as they are when there is no row. CQ_OK or CQ_EIO. */
int cq_engine_checkpoint_read(cq_engine *e, int projection, cq_exec *x,
                              int64_t *position, int *failed, char *err,
                              size_t errcap);

/* Replay stream_id's events through projection's handlers into a private
 * in-memory database holding its tables. On CQ_OK *x is an executor on
 * it (the caller's: cq_engine_replay_free), *last the position of the
 * last event applied (0: none) and *stream_version the stream's version
 * (0: no such stream). CQ_EIO (a handler failed, or the store could not
 * be read; err says which), CQ_ENOMEM. Any thread. */
int cq_engine_replay_stream(cq_engine *e, int projection, const char *stream_id,
                            cq_exec **x, int64_t *last, int64_t *stream_version,
                            char *err, size_t errcap);

/* Free a replay's database, on the thread that made it. Accepts NULL. */
void cq_engine_replay_free(cq_exec *x);

/* ---- control ---- */

typedef struct cq_projection_status {
    const char *name; /* borrowed from the engine */
    int64_t version;
    int is_inline;
    const char *status; /* running, paused, failed, rebuilding,
                           catching_up */
    int paused, failed;
    int64_t position, head, lag_events;
    double lag_seconds;
    int64_t error_position; /* failed only */
    char error[512];
    char error_event[130];
    int64_t skipped;         /* events skipped (rows of cq_skipped_events) */
    int runs_here;           /* this node applies it: always, except for an
                                asynchronous projection another node runs
                                (several nodes: see above) */
    int64_t serving_version; /* @version of the live tables: differs from
                                version while a rebuild replaces them; 0
                                when unknown */
    int frozen;              /* the live tables are not being applied */
    int catching_up;         /* inline, deferred: not yet at the head the
                                writer starts from (cq_engine_catch_up);
                                error[] says why it stopped, if it did */
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

/* Number of projections; they are numbered 0..count-1 (a count, not a
 * CQ_* code). Any thread once loading is over. */
int cq_engine_count(cq_engine *e);

/* A snapshot of projection's state. For an asynchronous projection that
 * another node runs, its checkpoint (position, pause, failure) is read
 * from the read store, where that node writes it. CQ_OK, or CQ_EIO when
 * its lag (or that checkpoint) could not be read (out is filled,
 * lag_seconds 0). Any thread. */
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
 * rebuild of one being rebuilt, any operation on a projection another
 * node runs: ask that node); CQ_EIO; CQ_ECLOSED (the engine stopped
 * before it ran: it was not carried out). Any thread. */
int cq_control_result(cq_control *c, char *err, size_t errcap);

/* Give back the caller's operation. One that has not started running yet
 * is cancelled: it will never run and cb is not called; one already
 * running still calls cb once (arg must stay valid until then). Accepts
 * NULL. */
void cq_control_release(cq_control *c);

/* cq_engine_control_start, then wait for that operation to be carried out
 * and return its result (cq_control_result; a refusal at once as
 * cq_engine_control_start), with its message in err. Blocks the calling
 * thread for as long as the operations queued before it and itself take:
 * not for HTTP threads, nor the projector thread. */
int cq_engine_control(cq_engine *e, int projection, const char *op, char *err,
                      size_t errcap);

#endif
