/*
 * store_sqlite_int.h -- what the files of the SQLite event store share and
 * nobody else needs: the backend's handle (sq_store), the numbering of its
 * prepared statements, and the helpers each file gives the others. The
 * interface is store.h; the backend's operations table is store_sqlite.c.
 * Names starting with sq_ belong to this backend.
 *
 * The embedded event store: one SQLite file, DIR/events.db.
 *
 * What it owns: the events, streams and command_log tables of events.db
 * (schema in store_sqlite_open.c and src/store/README.md), one write
 * connection and a pool of read connections.
 *
 * Threads and locks:
 *  - The write connection (sq_store.db, .st[], the transaction state, the
 *    cached head, .buf and .msg) belongs to the writer thread. Nothing
 *    guards it: the contract in store.h says only one thread calls the
 *    write side. It is opened SQLITE_OPEN_NOMUTEX for that reason.
 *  - Each read connection (sq_reader) is used by one thread at a time: a
 *    read call borrows it from the pool and gives it back. sq_store.mu
 *    guards the pool's list of idle readers (.idle, .nidle) and nothing else;
 *    sq_store.cv is signalled when a connection is given back. Readers are
 *    opened SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX.
 *
 * Design decisions:
 *  - WAL journal: readers see the last committed snapshot and never block
 *    the writer. With synchronous=FULL, COMMIT returns only after the WAL
 *    has been fsynced: that is the durability point, and nothing here
 *    acknowledges earlier.
 *  - Positions are explicit: the writer inserts position = head + 1, where
 *    head is max(position) read inside its own BEGIN IMMEDIATE transaction
 *    and cached until anything could have undone it (BEGIN, ROLLBACK,
 *    ROLLBACK TO, any error), after which it is read again. A rolled-back
 *    savepoint therefore hands its positions to the next append: no gaps.
 *    Were the cache ever too low the PRIMARY KEY would refuse the
 *    duplicate; were it too high, every read checks that positions are
 *    contiguous and reports the hole as CQ_ECORRUPT instead of skipping it.
 *  - Every write statement is prepared once at open (persistent) and reused:
 *    reset + clear bindings after each use. Text is bound SQLITE_STATIC;
 *    clearing the bindings drops the borrowed pointers at once.
 *  - A failed write (any SQLite error inside a transaction) marks the batch
 *    failed: it then accepts only ROLLBACK, or ROLLBACK TO the savepoint if
 *    the failure happened inside one and SQLite kept the transaction.
 *  - Callbacks: a fold_stream callback may not call the write side (it is
 *    refused with CQ_EINVAL: the statement being stepped is in use); a
 *    read_stream/read_all callback runs while its reader is borrowed, so it
 *    must not call the read side either (a pool of one would deadlock).
 *  - Rows read back are untrusted: a column of the wrong type (NULL, BLOB,
 *    text in an integer column), text with a NUL byte, or a gap in the
 *    positions or versions of a read is CQ_ECORRUPT, never a crash.
 *
 * Files, one concept each:
 *
 *   | file                  | concept                                      |
 *   |-----------------------|----------------------------------------------|
 *   | store_sqlite.c        | the operations table: which function serves  |
 *   |                       | each cq_store_* call                         |
 *   | store_sqlite_open.c   | the schema and the statements' SQL; open     |
 *   |                       | (directory, file, schema version, WAL, read  |
 *   |                       | pool, checkpointer) and close                |
 *   | store_sqlite_rows.c   | stepping statements, SQLite errors as CQ_*   |
 *   |                       | codes, checked decoding of rows read back    |
 *   | store_sqlite_write.c  | the write transaction and its savepoint, the |
 *   |                       | write head, append, fold                     |
 *   | store_sqlite_cmdlog.c | the command log: get, put, prune             |
 *   | store_sqlite_read.c   | the read pool and the reads                  |
 */
#ifndef CQ_STORE_SQLITE_INT_H
#define CQ_STORE_SQLITE_INT_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include <sqlite3.h>

#include "store/rdb.h"
#include "store/store.h"
#include "store/wal.h"

#define SQ_FILE "events.db"
#define SQ_BUSY_TIMEOUT_MS 5000
#define SQ_DEFAULT_READERS 4
#define SQ_MSG_CAP 512

#define EVENT_COLS                                                             \
    "position, stream_id, version, type, schema_version, data, metadata, "     \
    "recorded_at"
enum {
    EC_POSITION,
    EC_STREAM,
    EC_VERSION,
    EC_TYPE,
    EC_SCHEMA,
    EC_DATA,
    EC_META,
    EC_RECORDED,
    EC_COUNT
};

#define SQL_HEAD "SELECT max(position) FROM events"
#define SQL_STREAM_VERSION "SELECT version FROM streams WHERE stream_id = ?1"

/* Write-connection statements, prepared once at open. */
enum {
    W_BEGIN,
    W_COMMIT,
    W_ROLLBACK,
    W_SAVEPOINT,
    W_RELEASE,
    W_ROLLBACK_TO,
    W_HEAD,
    W_STREAM_VERSION,
    W_INSERT_EVENT,
    W_UPSERT_STREAM,
    W_FOLD,
    W_CMD_GET,
    W_CMD_PUT,
    W_CMD_PRUNE,
    W_COUNT
};

/* Read-connection statements, prepared once per connection. */
enum {
    R_BEGIN,
    R_COMMIT,
    R_HEAD,
    R_STREAM_VERSION,
    R_READ_STREAM,
    R_READ_ALL,
    R_POSITION_OF,
    R_RECORDED_AT,
    R_VERSION_AT,
    R_COUNT
};

/* How far a failure reaches: what the writer must roll back. */
enum { FAIL_NONE, FAIL_SAVEPOINT, FAIL_TX };

typedef struct sq_reader {
    sqlite3 *db;
    sqlite3_stmt *st[R_COUNT];
} sq_reader;

typedef struct sq_store {
    /* ---- write side: the writer thread only ---- */
    sqlite3 *db;
    sqlite3_stmt *st[W_COUNT];
    int in_tx;      /* our BEGIN IMMEDIATE is open */
    int in_sp;      /* savepoint "cmd" is open */
    int failed;     /* FAIL_*: what must be rolled back first */
    int in_cb;      /* inside a fold_stream callback */
    int head_valid; /* head is max(position) in the open transaction, or
                       after the last commit until the next BEGIN */
    int64_t head;
    char *buf; /* strings of the last cmdlog_get */
    size_t bufcap;
    char msg[SQ_MSG_CAP];
    /* ---- read side ---- */
    sq_reader *readers;
    int nreaders;
    pthread_mutex_t mu; /* guards idle and nidle */
    pthread_cond_t cv;  /* signalled when a reader is given back */
    int sync_init;
    sq_reader **idle; /* readers not lent out */
    int nidle;
    /* ---- checkpoints (wal.c): its own thread and the writer's hook ---- */
    cq_wal *wal;
    /* ---- the write connection as a cq_rdb, for inline projections ---- */
    cq_rdb *view;
} sq_store;

/* ---- store_sqlite_rows.c ---- */

void sq_put_err(char *err, size_t cap, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
int sq_map_rc(int rc);
int sq_sql_err(sqlite3 *db, int rc, char *err, size_t cap, const char *ctx);
void sq_done_stmt(sqlite3_stmt *st);
int sq_run_stmt(sqlite3 *db, sqlite3_stmt *st, char *err, size_t cap,
                const char *ctx);
int sq_q_head(sqlite3 *db, sqlite3_stmt *st, int64_t *head, char *err,
              size_t cap);
int sq_q_stream_version(sqlite3 *db, sqlite3_stmt *st, const char *stream_id,
                        int64_t *version, char *err, size_t cap);
int sq_col_text(sqlite3_stmt *st, int i, const char **out);
int sq_emit_events(sqlite3 *db, sqlite3_stmt *st, int seq_col, int64_t expect,
                   int64_t max, cq_event_cb cb, void *arg, int *in_cb,
                   char *err, size_t cap, const char *ctx);

/* ---- store_sqlite_open.c ---- */

int sq_open(const cq_store_config *cfg, void **impl, char *err, size_t errcap);
void sq_close(void *impl);
cq_rdb *sq_write_rdb(void *impl);
int sq_open_rdb(void *impl, cq_rdb **out, char *err, size_t errcap);
int64_t sq_wal_bytes(void *impl);

/* ---- store_sqlite_write.c ---- */

int sq_w_misuse(sq_store *w, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void sq_w_mark_failed(sq_store *w);
int sq_w_check(sq_store *w, const char *what);
int sq_tx_begin(sq_store *w);
int sq_tx_commit(sq_store *w);
int sq_tx_rollback(sq_store *w);
const char *sq_errmsg(void *impl);
int sq_exec_tx(void *impl, int op);
int sq_write_head(void *impl, int64_t *position);
int sq_stream_version(void *impl, const char *stream_id, int64_t *version);
int sq_append(void *impl, const char *stream_id, int64_t expected,
              const cq_new_event *events, size_t n, int64_t now_ms,
              int64_t *version, int64_t *first_position);
int sq_fold_stream(void *impl, const char *stream_id, int64_t after_version,
                   cq_event_cb cb, void *arg);

/* ---- store_sqlite_cmdlog.c ---- */

int sq_cmdlog_get(void *impl, const char *key, int64_t now_ms,
                  cq_cmdlog_entry *out);
int sq_cmdlog_put(void *impl, const cq_cmdlog_entry *e);
int sq_cmdlog_prune(void *impl, int64_t now_ms, int max_rows, int64_t *deleted);

/* ---- store_sqlite_read.c ---- */

int sq_read_stream(void *impl, const char *stream_id, int64_t from_version,
                   int limit, cq_event_cb cb, void *arg,
                   int64_t *stream_version, char *err, size_t errcap);
int sq_read_all(void *impl, int64_t from_position, int limit, cq_event_cb cb,
                void *arg, int64_t *head, char *err, size_t errcap);
int sq_head_position(void *impl, int64_t *head);
int sq_position_of(void *impl, const char *stream_id, int64_t version,
                   int64_t *position, char *err, size_t errcap);
int sq_recorded_at(void *impl, int64_t position, int64_t *ms, char *err,
                   size_t errcap);
int sq_version_at(void *impl, const char *stream_id, int64_t position,
                  int64_t *version, char *err, size_t errcap);

#endif
