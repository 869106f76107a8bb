/*
 * store.h -- the event store, as the rest of the engine sees it.
 *
 * One cq_store is one open event store (embedded: the SQLite file
 * DIR/events.db). It has two sides:
 *
 *  - the WRITE side (cq_store_begin ... cq_store_commit, append, command
 *    log) uses one connection and must only ever be called from one thread,
 *    the writer (src/command/writer.c). Nothing is durable until
 *    cq_store_commit() returns CQ_OK; with synchronous=FULL that return
 *    means the WAL has been fsynced.
 *  - the READ side (cq_store_read_stream, cq_store_read_all,
 *    cq_store_head_position) is thread-safe: each call borrows a read
 *    connection from a small pool, so readers see committed data only and
 *    never block the writer (WAL).
 *
 * Backends sit behind cq_store_ops (store_sqlite.c today; PostgreSQL
 * later); callers never know which one they talk to.
 *
 * Positions are global, start at 1, are assigned in commit order and are
 * gap-free: the writer is the only appender and a rolled-back savepoint
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
    const char *dir;      /* directory holding events.db; created if absent */
    int sync_full;        /* 1: synchronous=FULL (default); 0: NORMAL (tests) */
    int read_connections; /* size of the read pool; 0 means 4 */
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
 * file comes from a newer schema. The caller frees with cq_store_close. */
int cq_store_open(const cq_store_config *cfg, cq_store **out, char *err,
                  size_t errcap);

/* Close; accepts NULL. No other call may be running. */
void cq_store_close(cq_store *s);

/* Message for the last failed write-side call. Writer thread only. */
const char *cq_store_errmsg(cq_store *s);

/* ---- write side: the writer thread only ---- */

int cq_store_begin(cq_store *s);              /* BEGIN IMMEDIATE */
int cq_store_commit(cq_store *s);             /* COMMIT; durable on CQ_OK */
int cq_store_rollback(cq_store *s);           /* ROLLBACK the whole batch */
int cq_store_savepoint(cq_store *s);          /* SAVEPOINT for one command */
int cq_store_release(cq_store *s);            /* keep the command's writes */
int cq_store_rollback_savepoint(cq_store *s); /* undo them (and release) */

/* Current version of stream_id inside the open transaction, 0 if the
 * stream does not exist. */
int cq_store_stream_version(cq_store *s, const char *stream_id,
                            int64_t *version);

/* Append n >= 1 events to stream_id if its version matches `expected`
 * (CQ_VERSION_ANY, CQ_VERSION_NO_STREAM, CQ_VERSION_EXISTS or exact N).
 * Fills the new stream version and the position of the FIRST appended
 * event (the others follow contiguously). recorded_at is now_ms.
 * CQ_ECONFLICT on a version mismatch (nothing written), CQ_EIO. */
int cq_store_append(cq_store *s, const char *stream_id, int64_t expected,
                    const cq_new_event *events, size_t n, int64_t now_ms,
                    int64_t *version, int64_t *first_position);

/* Read stream_id's events with version > after_version, in order, through
 * the write connection (sees the open transaction). For folding state. */
int cq_store_fold_stream(cq_store *s, const char *stream_id,
                         int64_t after_version, cq_event_cb cb, void *arg);

/* Highest position inside the open transaction (0 if the store is empty). */
int cq_store_write_head(cq_store *s, int64_t *position);

/* Look up an idempotency key. CQ_OK and *out filled, or CQ_ENOTFOUND
 * (also for an entry past its expires_at, compared with now_ms). */
int cq_store_cmdlog_get(cq_store *s, const char *key, int64_t now_ms,
                        cq_cmdlog_entry *out);

/* Insert or replace the entry for e->key. */
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
 * it (cq_rdb_close on it does nothing). Writer thread only (and the thread
 * that starts the engine, before the writer runs). Statements run on it
 * must leave the transaction and the "cmd" savepoint as they found them. */
struct cq_rdb *cq_store_write_rdb(cq_store *s);

/* Open a new read-only connection to the store's database through the
 * read-store interface, for reading the tables of inline projections.
 * CQ_OK with *out (the caller's: cq_rdb_close), or CQ_EIO / CQ_ENOMEM with
 * a message in err. Any thread. */
int cq_store_open_rdb(cq_store *s, struct cq_rdb **out, char *err,
                      size_t errcap);

/* The backend's name ("sqlite"), to pick matching executors. */
const char *cq_store_backend(cq_store *s);

/* Bytes of write-ahead log on disk (events.db-wal), or -1 for a backend
 * without one. Any thread. */
int64_t cq_store_wal_bytes(cq_store *s);

/* ---- read side: any thread ---- */

/* Events of stream_id with version >= from_version (>= 1), at most limit
 * of them, in order. *stream_version gets the stream's current version
 * (0 = no such stream; then CQ_ENOTFOUND is returned and cb never runs).
 * err/errcap receive a message on CQ_EIO/CQ_ECORRUPT. */
int cq_store_read_stream(cq_store *s, const char *stream_id,
                         int64_t from_version, int limit, cq_event_cb cb,
                         void *arg, int64_t *stream_version, char *err,
                         size_t errcap);

/* Events with position >= from_position, at most limit, in position order.
 * *head gets the highest committed position seen by the same snapshot. */
int cq_store_read_all(cq_store *s, int64_t from_position, int limit,
                      cq_event_cb cb, void *arg, int64_t *head, char *err,
                      size_t errcap);

/* Highest committed position (0 if empty). */
int cq_store_head_position(cq_store *s, int64_t *head);

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
    struct cq_rdb *(*write_rdb)(void *impl);
    int (*open_rdb)(void *impl, struct cq_rdb **out, char *err,
                    size_t errcap);
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

#endif
