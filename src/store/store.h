/*
 * store.h -- the event store, as the rest of the engine sees it.
 *
 * One cq_store is one open event store: embedded, the SQLite file
 * DIR/events.db; or a PostgreSQL database (cq_store_config.uri), which
 * several cqrsd processes ("nodes") may share, each with its own handle.
 * It has two sides:
 *
 *  - the WRITE side (cq_store_begin ... cq_store_commit, append, command
 *    log) uses one connection and must only ever be called from one thread,
 *    the writer (src/command/writer.c). Nothing is durable until
 *    cq_store_commit() returns CQ_OK; with synchronous=FULL that return
 *    means the WAL has been fsynced (PostgreSQL: the server answered
 *    COMMIT; a connection lost before its answer is a failure).
 *  - the READ side (cq_store_read_stream, cq_store_read_all,
 *    cq_store_head_position and the lookups cq_store_position_of,
 *    cq_store_recorded_at, cq_store_version_at) is thread-safe: each
 *    call borrows a read connection from a small pool, so readers see
 *    committed data only and never block the writer (WAL; PostgreSQL:
 *    MVCC).
 *
 * Backends sit behind cq_store_ops (store_sqlite*.c, store_pg*.c);
 * callers never know which one they talk to.
 *
 * Positions are global, start at 1, are assigned in commit order and are
 * gap-free: one appender at a time (SQLite: the single writer; PostgreSQL:
 * every write batch of every node holds one advisory lock until its
 * COMMIT is visible, see src/store/README.md) and a rolled-back savepoint
 * releases its positions to the next append. Stream versions start at 1.
 */
#ifndef CQ_STORE_H
#define CQ_STORE_H

#include <stddef.h>
#include <stdint.h>

#include "cqrs/cqrs.h"

/* Current schema of events.db (PRAGMA user_version). A file with a larger
 * value is refused with CQ_EVERSION. */
#define CQ_STORE_SCHEMA_VERSION 1

/* Expected-version values for cq_store_append besides an exact N >= 1. */
#define CQ_VERSION_ANY (-1)    /* no check */
#define CQ_VERSION_NO_STREAM 0 /* the stream must not exist */
#define CQ_VERSION_EXISTS (-2) /* the stream must exist (any version) */

typedef struct cq_store cq_store;

typedef struct cq_store_config {
    /* NULL or "": SQLite in dir. Else a PostgreSQL database
     * ("postgresql://user:pw@host:port/db", "postgres://...", or a libpq
     * "key=value" string, see cq_pg_is_uri); anything else is CQ_EINVAL.
     * Borrowed for cq_store_open only. Messages show it with its password
     * hidden. */
    const char *uri;
    const char *dir;      /* SQLite: directory holding events.db; created if
                           * absent. Unused with a uri */
    int sync_full;        /* SQLite: 1: synchronous=FULL (default); 0: NORMAL
                           * (tests) */
    int read_connections; /* SQLite: size of the read pool; 0 means 4 */
    /* PostgreSQL: size of the read pool; 0 means 4. The store opens this
     * many read connections plus one write connection (none when
     * read_only); cq_store_open_rdb opens one more per call */
    int connections;
    /* 1: the read side only (verify, tools): nothing is created, migrated
     * or written, the store must exist (else CQ_ENOTFOUND), and the write
     * side's functions answer CQ_EINVAL (cq_store_write_rdb: NULL) */
    int read_only;
} cq_store_config;

/* An event to append. Strings borrowed for the duration of the call;
 * data and metadata are JSON object texts the caller has produced. */
typedef struct cq_new_event {
    const char *type;
    int schema_version;
    const char *data;
    const char *metadata;
} cq_new_event;

/* A stored event handed to a callback. Strings borrowed: valid only during
 * the callback. recorded_at is milliseconds since the Unix epoch. */
typedef struct cq_stored_event {
    int64_t position;
    const char *stream_id;
    int64_t version;
    const char *type;
    int schema_version;
    const char *data;
    const char *metadata;
    int64_t recorded_at;
} cq_stored_event;

/* Return 0 to go on, non-zero to stop the read early (not an error). */
typedef int (*cq_event_cb)(void *arg, const cq_stored_event *ev);

/* A command-log entry (idempotency). Strings borrowed: valid until the next
 * write-side call on the same store. */
typedef struct cq_cmdlog_entry {
    const char *key;
    const char *command_hash; /* hex digest of type + body + preconditions */
    int status;               /* HTTP status that was answered */
    const char *response;     /* full JSON body that was answered */
    int64_t created_at;       /* ms since epoch */
    int64_t expires_at;       /* ms since epoch */
} cq_cmdlog_entry;

/* Open (creating if needed) the store described by cfg. On failure returns
 * a code and writes a message into err (errcap bytes). CQ_EVERSION if the
 * file (database) comes from a newer schema; CQ_ECORRUPT if it holds a
 * half-made or foreign one; PostgreSQL unreachable is CQ_EIO with
 * "cannot connect to URI: reason", the URI's password hidden. Several
 * nodes may open one PostgreSQL database at the same moment: the schema
 * is made once. The caller frees with cq_store_close. */
int cq_store_open(const cq_store_config *cfg, cq_store **out, char *err,
                  size_t errcap);

/* Close; accepts NULL. No other call may be running. */
void cq_store_close(cq_store *s);

/* Message for the last failed write-side call (borrowed: valid until the
 * next write-side call). Writer thread only. Never NULL. */
const char *cq_store_errmsg(cq_store *s);

/* ---- write side: the writer thread only ----
 *
 * "The writer thread" here and below is whichever thread holds the
 * writer's turn (src/command/writer.h): the writer's own thread, or a
 * submitter running its request while the writer is idle; the turn is
 * taken and left under a lock, so the write side is used by one thread
 * at a time, in order. */

/*
 * The batch and the command inside it. All six are for the writer thread
 * only and own nothing the caller must free; called from inside a
 * cq_store_fold_stream callback they are refused with CQ_EINVAL. On
 * failure they leave a message for cq_store_errmsg. "A failure" below is
 * CQ_EIO, CQ_ENOMEM or CQ_ECORRUPT (the backend's error mapped; a write
 * lock still held by another process after the busy timeout is CQ_EIO).
 * A write call that fails inside the store marks the batch failed: it then
 * accepts only cq_store_rollback_savepoint (when the failure was inside
 * the savepoint and the transaction survived) or cq_store_rollback, and
 * refuses anything else with CQ_EIO. A misuse (CQ_EINVAL: begin inside a
 * batch, commit with the savepoint open, ...) changes nothing. There is
 * one savepoint level: a command's.
 */

/* Open a batch: BEGIN IMMEDIATE, which takes the write lock (waiting up to
 * the busy timeout for another process); PostgreSQL: BEGIN and the append
 * lock, waiting up to lock_timeout (10 s) for a batch of another node, on
 * a connection made anew if the old one broke. CQ_OK; CQ_EINVAL if a
 * batch is open; a failure (no batch is open then). */
int cq_store_begin(cq_store *s);

/* Commit the batch. On CQ_OK everything it wrote is durable (with
 * synchronous=FULL the WAL has been fsynced): the only point after which
 * a command may be acknowledged. CQ_EINVAL if no batch is open or the
 * savepoint is still open (nothing changes); a failure: the batch is not
 * known to be durable (PostgreSQL: also when the connection broke before
 * COMMIT was answered, so it may have committed: idempotency keys make a
 * retry safe) and it accepts only cq_store_rollback. PostgreSQL: a batch
 * that appended sends pg_notify('cq_events', head) in its transaction. */
int cq_store_commit(cq_store *s);

/* Roll back the whole batch (and the savepoint, if open), failed or not;
 * its positions go to the next append. CQ_OK, also when the backend had
 * already rolled back on its own (after an I/O error) and when no batch
 * is open (nothing to do); a failure if the rollback failed while the
 * transaction is still open (it stays open and failed). */
int cq_store_rollback(cq_store *s);

/* Open the savepoint of one command inside the batch. CQ_OK; CQ_EINVAL if
 * no batch is open or the savepoint already is; a failure (the batch then
 * accepts only cq_store_rollback). PostgreSQL sends SAVEPOINT at once but
 * takes its answer with the next write call, so a failure of it (a lost
 * connection) may be reported by that call. */
int cq_store_savepoint(cq_store *s);

/* Keep the command's writes (RELEASE): they commit with the batch. CQ_OK;
 * CQ_EINVAL if no savepoint is open; a failure (the batch then accepts
 * only cq_store_rollback). PostgreSQL sends the RELEASE with the next
 * statement, so a failure of it is reported by the next write call. */
int cq_store_release(cq_store *s);

/* Undo the command's writes and close its savepoint (ROLLBACK TO, then
 * RELEASE): its positions go to the next append, and a batch that a
 * failure inside the savepoint had marked failed is usable again. CQ_OK;
 * CQ_EINVAL if no savepoint is open; CQ_EIO if the transaction itself was
 * lost, or a failure of the rollback (either way the batch then accepts
 * only cq_store_rollback). */
int cq_store_rollback_savepoint(cq_store *s);

/*
 * The calls below, to cq_store_cmdlog_prune, are the rest of the write
 * side: writer thread only, messages in cq_store_errmsg, failures as said
 * above (a failure inside a batch marks it failed). Pointers passed in are
 * borrowed for the call only.
 */

/* Current version of stream_id as the open transaction sees it (the
 * committed one outside a batch) into *version, 0 if the stream does not
 * exist. CQ_OK; CQ_EINVAL (NULL argument); a failure (CQ_ECORRUPT: the
 * stored version is not a positive integer). */
int cq_store_stream_version(cq_store *s, const char *stream_id,
                            int64_t *version);

/* Append n >= 1 events to stream_id if its version matches `expected`
 * (CQ_VERSION_ANY, CQ_VERSION_NO_STREAM, CQ_VERSION_EXISTS or exact N).
 * Fills the new stream version and the position of the FIRST appended
 * event (the others follow contiguously); either pointer may be NULL.
 * recorded_at is now_ms. Inside a batch the events commit with it;
 * outside one the append is a transaction of its own. CQ_OK;
 * CQ_ECONFLICT on a version mismatch and CQ_EINVAL on a missing stream id,
 * event field or n == 0 (nothing written; the batch is not failed); a
 * failure. */
int cq_store_append(cq_store *s, const char *stream_id, int64_t expected,
                    const cq_new_event *events, size_t n, int64_t now_ms,
                    int64_t *version, int64_t *first_position);

/* Read stream_id's events with version > after_version (below 0 means 0),
 * in order, through the write connection (sees the open transaction), and
 * hand each to cb; a cb that returns non-zero stops the read (CQ_OK). For
 * folding state. cb must not call the write side (refused with
 * CQ_EINVAL). CQ_OK; CQ_EINVAL (NULL argument); a failure (CQ_ECORRUPT: a
 * malformed row or a hole in the versions). */
int cq_store_fold_stream(cq_store *s, const char *stream_id,
                         int64_t after_version, cq_event_cb cb, void *arg);

/* Highest position inside the open transaction (outside one: the highest
 * committed) into *position, 0 if the store is empty. CQ_OK; CQ_EINVAL
 * (NULL); a failure. Inside a batch it also takes the answers of what was
 * sent ahead (see cq_store_cmdlog_put), so that the write view
 * (cq_store_write_rdb) can run statements after it. */
int cq_store_write_head(cq_store *s, int64_t *position);

/* Look up an idempotency key. CQ_OK and *out filled (its strings are the
 * store's: valid until the next write-side call); CQ_ENOTFOUND (also for
 * an entry past its expires_at, compared with now_ms); CQ_EINVAL (NULL
 * argument); CQ_ECORRUPT (the stored entry is malformed; the batch is not
 * failed); CQ_ENOMEM; a failure. */
int cq_store_cmdlog_get(cq_store *s, const char *key, int64_t now_ms,
                        cq_cmdlog_entry *out);

/* Insert or replace the entry for e->key; inside a batch it commits with
 * it. CQ_OK; CQ_EINVAL (NULL key, hash or response); a failure. Inside a
 * batch a backend may send it with the next statement (PostgreSQL does):
 * its failure then fails that later call, or the COMMIT, and the whole
 * batch accepts only rollback. */
int cq_store_cmdlog_put(cq_store *s, const cq_cmdlog_entry *e);

/* Delete at most max_rows (>= 1) entries whose expires_at <= now_ms,
 * those that expired first: one bounded step. *deleted (may be NULL; 0 on
 * error) gets how many went, and fewer than max_rows means no expired
 * entry is left. Inside a batch the step is one more write of the batch's
 * transaction and is durable only with its COMMIT (it adds no commit and
 * no fsync); on failure the batch (or the savepoint the caller opened
 * around the step, to undo it alone) accepts only rollback, as after any
 * failed write. Outside a batch it is one short transaction of its own.
 * Whoever calls it decides when the next step runs (the writer runs one
 * in each batch). An expired entry still present is absent to
 * cq_store_cmdlog_get anyway. */
int cq_store_cmdlog_prune(cq_store *s, int64_t now_ms, int max_rows,
                          int64_t *deleted);

/* The store's write connection seen through the read-store interface
 * (store/rdb.h), for inline projections, whose rows must commit in the
 * writer's transaction. Borrowed: valid until cq_store_close, which closes
 * it (cq_rdb_close on it does nothing); on PostgreSQL it stays valid
 * through a reconnect. Writer thread only (and the thread that starts the
 * engine, before the writer runs). Statements run on it must leave the
 * transaction and the "cmd" savepoint as they found them. PostgreSQL:
 * between cq_store_savepoint and the next write-side call the SAVEPOINT
 * is still in flight and a statement run on the view fails (it never runs
 * outside the savepoint); the writer always makes a write-side call
 * (cmdlog_get, stream_version, append) first. The same holds after
 * cq_store_cmdlog_put inside a batch: the writer calls
 * cq_store_write_head before the inline checkpoints use the view. */
struct cq_rdb *cq_store_write_rdb(cq_store *s);

/* Open a new read-only connection to the store's database through the
 * read-store interface, for reading the tables of inline projections.
 * CQ_OK with *out (the caller's: cq_rdb_close), or CQ_EIO / CQ_ENOMEM with
 * a message in err. Any thread. */
int cq_store_open_rdb(cq_store *s, struct cq_rdb **out, char *err,
                      size_t errcap);

/* The backend's name ("sqlite" or "postgresql"), to pick matching
 * executors. Static text; any thread. */
const char *cq_store_backend(cq_store *s);

/* Bytes of write-ahead log on disk (events.db-wal), or -1 for a backend
 * without one of its own (PostgreSQL). Any thread. */
int64_t cq_store_wal_bytes(cq_store *s);

/* ---- read side: any thread ---- */

/*
 * Each read borrows a connection of the pool for its duration (waiting
 * when all are lent out) and sees committed data only. A callback runs
 * while that connection is borrowed: it must not call the read side (a
 * pool of one would deadlock) and should be quick (the snapshot it holds
 * keeps the WAL from being reset). Events handed to it are borrowed for
 * the callback only; one that returns non-zero stops the read early, and
 * the call returns CQ_OK. err (may be NULL) gets a message on failure;
 * events handed out before a failure stay handed out.
 */

/* Events of stream_id with version >= from_version (below 1 means 1), at
 * most limit of them (0: none, but the version is still reported), in
 * order, all from one snapshot. *stream_version (may be NULL) gets the
 * stream's version in that snapshot (0 = no such stream; then
 * CQ_ENOTFOUND is returned and cb never runs). CQ_OK; CQ_EINVAL (NULL
 * stream or cb, negative limit); CQ_EIO, CQ_ENOMEM or CQ_ECORRUPT (a
 * malformed row, a hole in the versions). */
int cq_store_read_stream(cq_store *s, const char *stream_id,
                         int64_t from_version, int limit, cq_event_cb cb,
                         void *arg, int64_t *stream_version, char *err,
                         size_t errcap);

/* Events with position >= from_position (below 1 means 1), at most limit
 * of them (0: none, but the head is still reported), in position order,
 * all from one snapshot. *head (may be NULL) gets the highest committed
 * position of that snapshot. Positions are gap-free, so a caller that
 * reads a long range calls again from the last position it got + 1 and
 * misses nothing (each call is a snapshot of its own; a prefix never
 * changes); to stop at a position P, pass limit = P - from + 1 when that
 * is smaller, or return non-zero from cb. CQ_OK; CQ_EINVAL (NULL cb,
 * negative limit); CQ_EIO, CQ_ENOMEM or CQ_ECORRUPT (a malformed row, a
 * hole in the positions). */
int cq_store_read_all(cq_store *s, int64_t from_position, int limit,
                      cq_event_cb cb, void *arg, int64_t *head, char *err,
                      size_t errcap);

/* Highest committed position (0 if empty). CQ_OK, CQ_EINVAL (head NULL),
 * CQ_EIO or CQ_ECORRUPT. */
int cq_store_head_position(cq_store *s, int64_t *head);

/*
 * Lookups by position and version, for the query side (waits for a
 * stream version, lag, strong reads). Each runs one statement on a read
 * connection borrowed from the pool for the call's duration: any thread,
 * committed data only, never blocking the writer. Return codes: CQ_OK;
 * CQ_EINVAL (a NULL pointer); CQ_EIO, CQ_ENOMEM or CQ_ECORRUPT (a stored
 * value of the wrong type) with a message in err (err may be NULL); and
 * CQ_ENOTFOUND as said. On anything but CQ_OK the output is untouched.
 */

/* The position of stream_id's event at `version`. CQ_ENOTFOUND if the
 * stream has no such version (yet). */
int cq_store_position_of(cq_store *s, const char *stream_id, int64_t version,
                         int64_t *position, char *err, size_t errcap);

/* When the event at `position` was recorded (*ms: milliseconds since the
 * Unix epoch, as given to cq_store_append). CQ_ENOTFOUND if there is no
 * event at `position`. */
int cq_store_recorded_at(cq_store *s, int64_t position, int64_t *ms, char *err,
                         size_t errcap);

/* stream_id's version as of `position`: the version of its last event at a
 * position <= `position`; *version is 0 (and CQ_OK) when it had none
 * there, or does not exist. */
int cq_store_version_at(cq_store *s, const char *stream_id, int64_t position,
                        int64_t *version, char *err, size_t errcap);

/* ---- backend interface ---- */

/* What a backend provides; cq_store_* dispatch through it. `impl` is the
 * backend's own handle. Semantics as for the functions above. */
typedef struct cq_store_ops {
    const char *name;
    int (*open)(const cq_store_config *cfg, void **impl, char *err,
                size_t errcap);
    void (*close)(void *impl);
    const char *(*errmsg)(void *impl);
    int (*exec_tx)(void *impl, int op); /* CQ_TX_BEGIN ... */
    int (*stream_version)(void *impl, const char *stream_id, int64_t *version);
    int (*append)(void *impl, const char *stream_id, int64_t expected,
                  const cq_new_event *events, size_t n, int64_t now_ms,
                  int64_t *version, int64_t *first_position);
    int (*fold_stream)(void *impl, const char *stream_id, int64_t after_version,
                       cq_event_cb cb, void *arg);
    int (*write_head)(void *impl, int64_t *position);
    int (*cmdlog_get)(void *impl, const char *key, int64_t now_ms,
                      cq_cmdlog_entry *out);
    int (*cmdlog_put)(void *impl, const cq_cmdlog_entry *e);
    int (*cmdlog_prune)(void *impl, int64_t now_ms, int max_rows,
                        int64_t *deleted);
    int (*read_stream)(void *impl, const char *stream_id, int64_t from_version,
                       int limit, cq_event_cb cb, void *arg,
                       int64_t *stream_version, char *err, size_t errcap);
    int (*read_all)(void *impl, int64_t from_position, int limit,
                    cq_event_cb cb, void *arg, int64_t *head, char *err,
                    size_t errcap);
    int (*head_position)(void *impl, int64_t *head);
    int (*position_of)(void *impl, const char *stream_id, int64_t version,
                       int64_t *position, char *err, size_t errcap);
    int (*recorded_at)(void *impl, int64_t position, int64_t *ms, char *err,
                       size_t errcap);
    int (*version_at)(void *impl, const char *stream_id, int64_t position,
                      int64_t *version, char *err, size_t errcap);
    struct cq_rdb *(*write_rdb)(void *impl);
    int (*open_rdb)(void *impl, struct cq_rdb **out, char *err, size_t errcap);
    int64_t (*wal_bytes)(void *impl); /* optional */
} cq_store_ops;

enum {
    CQ_TX_BEGIN,
    CQ_TX_COMMIT,
    CQ_TX_ROLLBACK,
    CQ_TX_SAVEPOINT,
    CQ_TX_RELEASE,
    CQ_TX_ROLLBACK_SAVEPOINT
};

extern const cq_store_ops cq_store_sqlite_ops;
extern const cq_store_ops cq_store_pg_ops;

#endif
