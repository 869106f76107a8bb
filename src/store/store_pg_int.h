/*
 * store_pg_int.h -- what the files of the PostgreSQL event store share and
 * nobody else needs: the backend's handle (pgs_store), the numbering of its
 * prepared statements, and the helpers each file gives the others. The
 * interface is store.h; the operations table is store_pg.c. Names starting
 * with pgs_ belong to this backend.
 *
 * What it owns: the events, streams, command_log and cq_store_schema
 * tables of one PostgreSQL database (schema in store_pg_open.c and
 * src/store/README.md), one write connection and a pool of read
 * connections (cq_store_config.connections, default 4). Several cqrsd
 * processes ("nodes") may share the database, each with its own handle.
 *
 * Threads and locks:
 *  - The write connection (pgs_store.conn, the transaction state, the
 *    cached head, .buf, .msg) belongs to the writer thread. Nothing guards
 *    it: store.h says only one thread calls the write side.
 *  - Each read connection (pgs_reader) is used by one thread at a time: a
 *    read call borrows it from the pool and gives it back. pgs_store.mu
 *    guards the list of idle readers (.idle, .nidle) and nothing else;
 *    pgs_store.cv is signalled when one is given back.
 *
 * Design decisions:
 *  - Appends are serialised across nodes: a write batch starts with
 *    BEGIN ISOLATION LEVEL READ COMMITTED and
 *    pg_advisory_xact_lock(hashtextextended('cqrsd:append', 0)), then reads
 *    max(position) in a statement of its own (so with a snapshot taken
 *    after the lock was granted). The lock is released only after the
 *    COMMIT is visible to every new snapshot, so a later position never
 *    becomes visible before an earlier one: positions are gap-free for
 *    every reader on every node (README.md, "Gap-free reading across
 *    nodes"). Idempotency keys and expected versions are checked inside
 *    the same lock, so they hold across nodes too.
 *  - The head is read once per batch (with BEGIN and the lock, in one
 *    round trip) and kept in .head while the batch runs; a rolled-back
 *    savepoint reads it again. The PRIMARY KEY refuses a duplicate
 *    position; every read checks that positions are contiguous.
 *  - Round trips: statements whose result is of no interest at once share
 *    a round trip with the next one, in a libpq pipeline. RELEASE of a
 *    command's savepoint is held back until the next statement (the view
 *    may still write inside the savepoint meanwhile: same outcome).
 *    SAVEPOINT is sent at once and its answer taken with the next
 *    statement (pgs_queue): the connection stays in pipeline mode until
 *    then, so a statement run on the write view in between fails loudly
 *    instead of running outside the savepoint. BEGIN, the lock and the
 *    head travel together; so do pg_notify, COMMIT and the head after it.
 *    An append (version check, events, stream row) is one statement; its
 *    events go as binary arrays.
 *  - Every statement is prepared (PQprepare) once per connection, after
 *    each (re)connect, under names starting "cq_store_".
 *  - Failures: any failed statement marks the batch failed, as on SQLite
 *    (only ROLLBACK, or ROLLBACK TO when it failed inside the savepoint).
 *    A COMMIT that fails, or whose answer never arrives (the connection
 *    broke), is reported as a failure: the caller must not acknowledge
 *    it. A COMMIT that PostgreSQL answers with ROLLBACK (the transaction
 *    had failed behind our back, e.g. through the write view) is a
 *    failure too.
 *  - Reconnecting: a broken connection is reset (PQreset: the same PGconn,
 *    so the write view stays valid) before its next use: the next batch,
 *    or the next call outside one, and the next read that borrows it. A
 *    read that failed because its connection broke before it handed out
 *    anything is retried once on the reset connection; the write side
 *    never retries anything but a BEGIN that found the connection dead.
 *  - Rows read back are untrusted: a column of an unexpected type, a NULL,
 *    a number that does not parse, or a gap in the positions or versions
 *    of a read is CQ_ECORRUPT, never a crash.
 *  - Session settings of every connection: statement_timeout 30 s; the
 *    write connection also lock_timeout 10 s (the append lock) and
 *    idle_in_transaction_session_timeout 60 s (a hung node cannot hold the
 *    append lock for ever); read connections are read-only.
 *
 * Files, one concept each:
 *
 *   | file               | concept                                         |
 *   |--------------------|-------------------------------------------------|
 *   | store_pg.c         | the operations table                            |
 *   | store_pg_open.c    | the schema and the statements' SQL; connecting, |
 *   |                    | (re)preparing, open and close, the rdb views    |
 *   | store_pg_exec.c    | running statements (one or a pipeline),         |
 *   |                    | failures as CQ_* codes, checked decoding        |
 *   | store_pg_write.c   | the write transaction and its savepoint, the    |
 *   |                    | write head, append, fold                        |
 *   | store_pg_cmdlog.c  | the command log: get, put, prune                |
 *   | store_pg_read.c    | the read pool, the reads and the lookups        |
 */
#ifndef CQ_STORE_PG_INT_H
#define CQ_STORE_PG_INT_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include <libpq-fe.h>

#include "store/pg.h"
#include "store/rdb.h"
#include "store/store.h"

#define PGS_DEFAULT_READERS 4
#define PGS_MSG_CAP 512
#define PGS_CONNECT_TIMEOUT_S 10
#define PGS_MAX_QUEUED 8 /* statements pgs_queue keeps in flight */
/* the append lock and the schema lock (advisory, transaction level) */
#define PGS_APPEND_LOCK "cqrsd:append"
#define PGS_SCHEMA_LOCK "cqrsd:schema"
#define PGS_NOTIFY_CHANNEL "cq_events"

/* PostgreSQL type OIDs (pg_type.dat; stable across versions) */
#define PGS_INT2OID 21
#define PGS_INT4OID 23
#define PGS_INT8OID 20
#define PGS_TEXTOID 25
#define PGS_VARCHAROID 1043

#define PGS_EVENT_COLS                                                         \
    "position, stream_id, version, type, schema_version, data, metadata, "     \
    "recorded_at"
enum {
    PGS_EC_POSITION,
    PGS_EC_STREAM,
    PGS_EC_VERSION,
    PGS_EC_TYPE,
    PGS_EC_SCHEMA,
    PGS_EC_DATA,
    PGS_EC_META,
    PGS_EC_RECORDED,
    PGS_EC_COUNT
};

/* Write-connection statements, prepared after each (re)connect. */
enum {
    PW_LOCK,
    PW_HEAD,
    PW_STREAM_VERSION,
    PW_APPEND,
    PW_FOLD,
    PW_NOTIFY,
    PW_CMD_GET,
    PW_CMD_PUT,
    PW_CMD_PRUNE,
    PW_COUNT
};

/* Read-connection statements, prepared after each (re)connect. */
enum {
    PR_HEAD,
    PR_READ_STREAM,
    PR_READ_ALL,
    PR_POSITION_OF,
    PR_RECORDED_AT,
    PR_VERSION_AT,
    PR_COUNT
};

/* How far a failure reaches: what the writer must roll back. */
enum { PGS_FAIL_NONE, PGS_FAIL_SAVEPOINT, PGS_FAIL_TX };

/* One statement of a round trip: prepared statement `stmt` (PW_* or
 * PR_*) with n parameters, or, when stmt < 0, the text sql without
 * parameters. res is filled by pgs_run: its result, NULL when it did not
 * run (the caller PQclears it). */
typedef struct pgs_q {
    int stmt;
    const char *sql;
    int n;
    const char *const *val;
    const int *len;
    const int *fmt;
    PGresult *res;
} pgs_q;

/* A connection and what pgs_run needs to know of it. */
typedef struct pgs_conn {
    PGconn *c;
    const char *const *names; /* statement names by number */
    const char *const *sql;   /* their SQL (for re-preparing) */
    int nstmt;
    int writer;  /* 1: the write connection's session settings */
    int ready;   /* session set and statements prepared since connect */
    int broken;  /* reset before the next use (a pipeline went wrong) */
    int queued;  /* statements sent by pgs_queue, results not yet taken */
    int queued_failed; /* the last pgs_run/pgs_drain failed in one of them */
    const char *queued_what[PGS_MAX_QUEUED];
} pgs_conn;

typedef struct pgs_reader {
    pgs_conn conn;
} pgs_reader;

typedef struct pgs_store {
    char *uri;          /* as given (password included: never shown) */
    char shown[256];    /* the URI with its password hidden, for messages */
    int read_only;
    /* ---- write side: the writer thread only ---- */
    pgs_conn w;
    int in_tx;          /* our BEGIN is open */
    int in_sp;          /* savepoint "cmd" is open (or its RELEASE pending) */
    int release_pending; /* RELEASE cmd not yet sent */
    int failed;         /* PGS_FAIL_*: what must be rolled back first */
    int in_cb;          /* inside a fold_stream callback */
    int64_t begin_head; /* the head when the batch began: NOTIFY at COMMIT
                         * if it moved */
    int head_valid;     /* head: max(position) in the open transaction, or
                         * (outside one) just after our COMMIT */
    int64_t head;
    char *buf;          /* strings of the last cmdlog_get; append arrays */
    size_t bufcap;
    char msg[PGS_MSG_CAP];
    cq_rdb *view;       /* the write connection as a cq_rdb */
    /* ---- read side ---- */
    pgs_reader *readers;
    int nreaders;
    pthread_mutex_t mu; /* guards idle and nidle */
    pthread_cond_t cv;  /* signalled when a reader is given back */
    int sync_init;
    pgs_reader **idle;
    int nidle;
} pgs_store;

/* ---- store_pg_exec.c ---- */

void pgs_put_err(char *err, size_t cap, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
int pgs_fail(PGconn *c, const PGresult *r, char *err, size_t cap,
             const char *ctx);
int pgs_session(pgs_conn *pc, char *err, size_t cap);
int pgs_ensure(pgs_conn *pc, char *err, size_t cap);
int pgs_queue(pgs_conn *pc, const char *sql, const char *what, char *err,
              size_t cap);
int pgs_queue_q(pgs_conn *pc, const pgs_q *q, const char *what, char *err,
                size_t cap);
int pgs_drain(pgs_conn *pc, char *err, size_t cap);
int pgs_run(pgs_conn *pc, pgs_q *q, int n, char *err, size_t cap,
            const char *ctx);
void pgs_clear(pgs_q *q, int n);
int pgs_conn_bad(const pgs_conn *pc);
int pgs_int_col(const PGresult *r, int row, int col, int64_t *out);
int pgs_check_types(const PGresult *r, int first, const int *want, int n);
int pgs_head_of(const PGresult *r, int64_t *head, char *err, size_t cap);
int pgs_emit_events(const PGresult *r, int first_row, int col0, int seq_col,
                    int64_t expect, int64_t max, cq_event_cb cb, void *arg,
                    int *in_cb, char *err, size_t cap, const char *ctx);

/* ---- store_pg_open.c ---- */

extern const char *const PGS_W_NAME[PW_COUNT];
extern const char *const PGS_W_SQL[PW_COUNT];
extern const char *const PGS_R_NAME[PR_COUNT];
extern const char *const PGS_R_SQL[PR_COUNT];
int pgs_open(const cq_store_config *cfg, void **impl, char *err,
             size_t errcap);
void pgs_close(void *impl);
cq_rdb *pgs_write_rdb(void *impl);
int pgs_open_rdb(void *impl, cq_rdb **out, char *err, size_t errcap);

/* ---- store_pg_write.c ---- */

int pgs_w_misuse(pgs_store *w, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void pgs_w_mark_failed(pgs_store *w);
int pgs_w_check(pgs_store *w, const char *what);
int pgs_w_run(pgs_store *w, pgs_q *q, int n, const char *ctx);
int pgs_w_queue(pgs_store *w, const pgs_q *q, const char *what);
int pgs_tx_begin(pgs_store *w);
int pgs_tx_commit(pgs_store *w);
int pgs_tx_rollback(pgs_store *w);
const char *pgs_errmsg(void *impl);
int pgs_exec_tx(void *impl, int op);
int pgs_write_head(void *impl, int64_t *position);
int pgs_stream_version(void *impl, const char *stream_id, int64_t *version);
int pgs_append(void *impl, const char *stream_id, int64_t expected,
               const cq_new_event *events, size_t n, int64_t now_ms,
               int64_t *version, int64_t *first_position);
int pgs_fold_stream(void *impl, const char *stream_id, int64_t after_version,
                    cq_event_cb cb, void *arg);

/* ---- store_pg_cmdlog.c ---- */

int pgs_cmdlog_get(void *impl, const char *key, int64_t now_ms,
                   cq_cmdlog_entry *out);
int pgs_cmdlog_put(void *impl, const cq_cmdlog_entry *e);
int pgs_cmdlog_prune(void *impl, int64_t now_ms, int max_rows,
                     int64_t *deleted);

/* ---- store_pg_read.c ---- */

int pgs_read_stream(void *impl, const char *stream_id, int64_t from_version,
                    int limit, cq_event_cb cb, void *arg,
                    int64_t *stream_version, char *err, size_t errcap);
int pgs_read_all(void *impl, int64_t from_position, int limit, cq_event_cb cb,
                 void *arg, int64_t *head, char *err, size_t errcap);
int pgs_head_position(void *impl, int64_t *head);
int pgs_position_of(void *impl, const char *stream_id, int64_t version,
                    int64_t *position, char *err, size_t errcap);
int pgs_recorded_at(void *impl, int64_t position, int64_t *ms, char *err,
                    size_t errcap);
int pgs_version_at(void *impl, const char *stream_id, int64_t position,
                   int64_t *version, char *err, size_t errcap);

#endif
