/*
 * store_sqlite.c -- the embedded event store: one SQLite file, DIR/events.db.
 *
 * What it owns: the events, streams and command_log tables of events.db
 * (schema below and in src/store/README.md), one write connection and a
 * pool of read connections.
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
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sqlite3.h>

#include "store/rdb.h"
#include "store/store.h"
#include "store/wal.h"

#define SQ_FILE "events.db"
#define SQ_BUSY_TIMEOUT_MS 5000
#define SQ_DEFAULT_READERS 4
#define SQ_MSG_CAP 512

/* The schema of version 1, created in one transaction on an empty file. */
static const char SQ_SCHEMA_V1[] =
    "CREATE TABLE events ("
    " position INTEGER PRIMARY KEY,"
    " stream_id TEXT NOT NULL,"
    " version INTEGER NOT NULL,"
    " type TEXT NOT NULL,"
    " schema_version INTEGER NOT NULL,"
    " data TEXT NOT NULL,"
    " metadata TEXT NOT NULL,"
    " recorded_at INTEGER NOT NULL,"
    " UNIQUE (stream_id, version));"
    "CREATE TABLE streams ("
    " stream_id TEXT PRIMARY KEY,"
    " version INTEGER NOT NULL,"
    " position INTEGER NOT NULL) WITHOUT ROWID;"
    "CREATE TABLE command_log ("
    " idem_key TEXT PRIMARY KEY,"
    " command_hash TEXT NOT NULL,"
    " status INTEGER NOT NULL,"
    " response TEXT NOT NULL,"
    " created_at INTEGER NOT NULL,"
    " expires_at INTEGER NOT NULL);"
    "CREATE INDEX command_log_expires_at ON command_log (expires_at);"
    "PRAGMA user_version = 1;";

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

static const char *const W_SQL[W_COUNT] = {
    [W_BEGIN] = "BEGIN IMMEDIATE",
    [W_COMMIT] = "COMMIT",
    [W_ROLLBACK] = "ROLLBACK",
    [W_SAVEPOINT] = "SAVEPOINT cmd",
    [W_RELEASE] = "RELEASE cmd",
    [W_ROLLBACK_TO] = "ROLLBACK TO cmd",
    [W_HEAD] = SQL_HEAD,
    [W_STREAM_VERSION] = SQL_STREAM_VERSION,
    [W_INSERT_EVENT] = "INSERT INTO events (" EVENT_COLS
                       ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    [W_UPSERT_STREAM] =
        "INSERT INTO streams (stream_id, version, position)"
        " VALUES (?1, ?2, ?3) ON CONFLICT (stream_id) DO UPDATE"
        " SET version = excluded.version, position = excluded.position",
    [W_FOLD] = "SELECT " EVENT_COLS " FROM events"
               " WHERE stream_id = ?1 AND version > ?2 ORDER BY version",
    [W_CMD_GET] = "SELECT command_hash, status, response, created_at,"
                  " expires_at FROM command_log WHERE idem_key = ?1",
    [W_CMD_PUT] =
        "INSERT INTO command_log (idem_key, command_hash, status, response,"
        " created_at, expires_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)"
        " ON CONFLICT (idem_key) DO UPDATE SET"
        " command_hash = excluded.command_hash, status = excluded.status,"
        " response = excluded.response, created_at = excluded.created_at,"
        " expires_at = excluded.expires_at",
    [W_CMD_PRUNE] = "DELETE FROM command_log WHERE rowid IN"
                    " (SELECT rowid FROM command_log WHERE expires_at <= ?1"
                    " ORDER BY expires_at LIMIT ?2)",
};

/* Read-connection statements, prepared once per connection. */
enum {
    R_BEGIN,
    R_COMMIT,
    R_HEAD,
    R_STREAM_VERSION,
    R_READ_STREAM,
    R_READ_ALL,
    R_COUNT
};

static const char *const R_SQL[R_COUNT] = {
    [R_BEGIN] = "BEGIN",
    [R_COMMIT] = "COMMIT",
    [R_HEAD] = SQL_HEAD,
    [R_STREAM_VERSION] = SQL_STREAM_VERSION,
    [R_READ_STREAM] = "SELECT " EVENT_COLS " FROM events"
                      " WHERE stream_id = ?1 AND version >= ?2"
                      " ORDER BY version LIMIT ?3",
    [R_READ_ALL] = "SELECT " EVENT_COLS " FROM events WHERE position >= ?1"
                   " ORDER BY position LIMIT ?2",
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
    int head_valid; /* head is max(position) in the open transaction */
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

/* ---- small helpers ---- */

static void put_err(char *err, size_t cap, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void put_err(char *err, size_t cap, const char *fmt, ...)
{
    va_list ap;
    if (err == NULL || cap == 0)
        return;
    va_start(ap, fmt);
    vsnprintf(err, cap, fmt, ap);
    va_end(ap);
}

static int map_rc(int rc)
{
    switch (rc & 0xff) {
    case SQLITE_NOMEM: return CQ_ENOMEM;
    case SQLITE_CORRUPT:
    case SQLITE_NOTADB: return CQ_ECORRUPT;
    default: return CQ_EIO;
    }
}

/* Describe an SQLite failure (call before the statement is reset, so the
 * connection still holds the message) and map its code. */
static int sql_err(sqlite3 *db, int rc, char *err, size_t cap, const char *ctx)
{
    put_err(err, cap, "%s: %s (sqlite error %d)", ctx, sqlite3_errmsg(db),
            sqlite3_extended_errcode(db));
    return map_rc(rc);
}

static void done_stmt(sqlite3_stmt *st)
{
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
}

/* Step a statement that returns no rows we need; reset it. */
static int run_stmt(sqlite3 *db, sqlite3_stmt *st, char *err, size_t cap,
                    const char *ctx)
{
    int rc = sqlite3_step(st);
    int out = CQ_OK;
    if (rc != SQLITE_DONE && rc != SQLITE_ROW)
        out = sql_err(db, rc, err, cap, ctx);
    done_stmt(st);
    return out;
}

/* max(position), 0 for an empty store. */
static int q_head(sqlite3 *db, sqlite3_stmt *st, int64_t *head, char *err,
                  size_t cap)
{
    int out = CQ_OK;
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        int t = sqlite3_column_type(st, 0);
        if (t == SQLITE_NULL) {
            *head = 0;
        } else if (t == SQLITE_INTEGER && sqlite3_column_int64(st, 0) > 0) {
            *head = sqlite3_column_int64(st, 0);
        } else {
            put_err(err, cap,
                    "events: highest position is not a positive integer");
            out = CQ_ECORRUPT;
        }
    } else {
        out = sql_err(db, rc, err, cap, "reading the head position");
    }
    done_stmt(st);
    return out;
}

/* The stream's version from the streams table, 0 if it does not exist. */
static int q_stream_version(sqlite3 *db, sqlite3_stmt *st,
                            const char *stream_id, int64_t *version, char *err,
                            size_t cap)
{
    int out = CQ_OK;
    int rc = sqlite3_bind_text(st, 1, stream_id, -1, SQLITE_STATIC);
    if (rc == SQLITE_OK)
        rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        if (sqlite3_column_type(st, 0) == SQLITE_INTEGER &&
            sqlite3_column_int64(st, 0) > 0) {
            *version = sqlite3_column_int64(st, 0);
        } else {
            put_err(err, cap,
                    "streams: version of stream '%s' is not a positive integer",
                    stream_id);
            out = CQ_ECORRUPT;
        }
    } else if (rc == SQLITE_DONE) {
        *version = 0;
    } else {
        out = sql_err(db, rc, err, cap, "reading a stream version");
    }
    done_stmt(st);
    return out;
}

/* Fetch a TEXT column after its type has been checked: no NUL inside. */
static int col_text(sqlite3_stmt *st, int i, const char **out)
{
    const char *p = (const char *)sqlite3_column_text(st, i);
    int n = sqlite3_column_bytes(st, i);
    if (p == NULL)
        return CQ_ENOMEM;
    if (memchr(p, '\0', (size_t)n) != NULL)
        return CQ_ECORRUPT;
    *out = p;
    return CQ_OK;
}

/* Decode one row of EVENT_COLS. The strings stay valid until the statement
 * is stepped or reset. */
static int decode_event(sqlite3_stmt *st, cq_stored_event *ev, char *err,
                        size_t cap)
{
    static const int want[EC_COUNT] = {
        SQLITE_INTEGER, SQLITE_TEXT, SQLITE_INTEGER, SQLITE_TEXT,
        SQLITE_INTEGER, SQLITE_TEXT, SQLITE_TEXT,    SQLITE_INTEGER};
    static const char *const name[EC_COUNT] = {
        "position",       "stream_id", "version",  "type",
        "schema_version", "data",      "metadata", "recorded_at"};
    /* position is the rowid alias: always an integer. */
    long long pos = sqlite3_column_int64(st, EC_POSITION);
    int64_t sv;
    int rc;

    for (int i = 0; i < EC_COUNT; i++) {
        if (sqlite3_column_type(st, i) != want[i]) {
            put_err(err, cap,
                    "event at position %lld: column %s is NULL or of the wrong "
                    "type",
                    pos, name[i]);
            return CQ_ECORRUPT;
        }
    }
    ev->position = sqlite3_column_int64(st, EC_POSITION);
    ev->version = sqlite3_column_int64(st, EC_VERSION);
    ev->recorded_at = sqlite3_column_int64(st, EC_RECORDED);
    sv = sqlite3_column_int64(st, EC_SCHEMA);
    if (sv < INT_MIN || sv > INT_MAX) {
        put_err(err, cap,
                "event at position %lld: schema_version %lld out of range", pos,
                (long long)sv);
        return CQ_ECORRUPT;
    }
    ev->schema_version = (int)sv;
    static const int text_cols[] = {EC_STREAM, EC_TYPE, EC_DATA, EC_META};
    const char **text_out[] = {&ev->stream_id, &ev->type, &ev->data,
                               &ev->metadata};
    for (size_t i = 0; i < sizeof text_cols / sizeof text_cols[0]; i++) {
        rc = col_text(st, text_cols[i], text_out[i]);
        if (rc == CQ_ENOMEM) {
            put_err(err, cap, "event at position %lld: out of memory", pos);
            return rc;
        }
        if (rc != CQ_OK) {
            put_err(err, cap,
                    "event at position %lld: column %s contains a NUL byte",
                    pos, name[text_cols[i]]);
            return rc;
        }
    }
    return CQ_OK;
}

/* Step st over EVENT_COLS rows and hand each to cb. The column seq_col
 * (position or version) must run contiguously from `expect` and stay
 * <= `max`: anything else means a hole in what should be gap-free.
 * *in_cb (may be NULL) is set while cb runs. Resets st. */
static int emit_events(sqlite3 *db, sqlite3_stmt *st, int seq_col,
                       int64_t expect, int64_t max, cq_event_cb cb, void *arg,
                       int *in_cb, char *err, size_t cap, const char *ctx)
{
    const char *what = seq_col == EC_POSITION ? "position" : "version";
    cq_stored_event ev;
    int out = CQ_OK;
    int rc;

    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        out = decode_event(st, &ev, err, cap);
        if (out != CQ_OK)
            break;
        int64_t seq = seq_col == EC_POSITION ? ev.position : ev.version;
        if (seq != expect || seq > max) {
            put_err(err, cap,
                    "%s: expected %s %lld, found %lld (a gap or an event "
                    "beyond the head)",
                    ctx, what, (long long)expect, (long long)seq);
            out = CQ_ECORRUPT;
            break;
        }
        expect++;
        if (in_cb != NULL)
            *in_cb = 1;
        int stop = cb(arg, &ev);
        if (in_cb != NULL)
            *in_cb = 0;
        if (stop != 0)
            break;
    }
    if (out == CQ_OK && rc != SQLITE_ROW && rc != SQLITE_DONE)
        out = sql_err(db, rc, err, cap, ctx);
    done_stmt(st);
    return out;
}

static int prepare_all(sqlite3 *db, const char *const *sql, int n,
                       sqlite3_stmt **st, char *err, size_t cap,
                       const char *path)
{
    for (int i = 0; i < n; i++) {
        int rc = sqlite3_prepare_v3(db, sql[i], -1, SQLITE_PREPARE_PERSISTENT,
                                    &st[i], NULL);
        if (rc != SQLITE_OK) {
            /* "no such table" and the like: the file says version 1 but
             * does not hold the version-1 schema. */
            put_err(
                err, cap,
                "%s: does not match schema version %d: %s (sqlite error %d)",
                path, CQ_STORE_SCHEMA_VERSION, sqlite3_errmsg(db),
                sqlite3_extended_errcode(db));
            return (rc & 0xff) == SQLITE_ERROR ? CQ_ECORRUPT : map_rc(rc);
        }
    }
    return CQ_OK;
}

static void finalize_all(sqlite3_stmt **st, int n)
{
    for (int i = 0; i < n; i++) {
        sqlite3_finalize(st[i]);
        st[i] = NULL;
    }
}

/* fsync a directory so a new entry in it survives power loss. */
static int fsync_dir(const char *dir, char *err, size_t cap)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0 || fsync(fd) != 0) {
        put_err(err, cap, "cannot sync directory %s: %s", dir, strerror(errno));
        if (fd >= 0)
            close(fd);
        return CQ_EIO;
    }
    close(fd);
    return CQ_OK;
}

/* mkdir dir (one level) unless it exists; sync its parent if created. */
static int make_dir(const char *dir, char *err, size_t cap)
{
    struct stat sb;
    char *parent = NULL;
    int rc = CQ_OK;

    if (mkdir(dir, 0755) != 0) {
        if (errno != EEXIST) {
            put_err(err, cap, "cannot create directory %s: %s", dir,
                    strerror(errno));
            return CQ_EIO;
        }
        if (stat(dir, &sb) != 0 || !S_ISDIR(sb.st_mode)) {
            put_err(err, cap, "%s exists and is not a directory", dir);
            return CQ_EIO;
        }
        return CQ_OK;
    }
    parent = strdup(dir);
    if (parent == NULL) {
        put_err(err, cap, "out of memory");
        return CQ_ENOMEM;
    }
    size_t len = strlen(parent);
    while (len > 1 && parent[len - 1] == '/')
        parent[--len] = '\0';
    char *slash = strrchr(parent, '/');
    if (slash == NULL)
        strcpy(parent, ".");
    else if (slash == parent)
        parent[1] = '\0';
    else
        *slash = '\0';
    rc = fsync_dir(parent, err, cap);
    free(parent);
    return rc;
}

/* ---- write side ---- */

static int w_misuse(sq_store *w, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int w_misuse(sq_store *w, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(w->msg, sizeof w->msg, fmt, ap);
    va_end(ap);
    return code;
}

/* Record that a write-side SQLite call failed: the batch (or the command's
 * savepoint, if SQLite kept the transaction) accepts only rollback now. */
static void w_mark_failed(sq_store *w)
{
    w->head_valid = 0;
    if (!w->in_tx)
        return;
    if (sqlite3_get_autocommit(w->db) || !w->in_sp)
        w->failed = FAIL_TX;
    else if (w->failed == FAIL_NONE)
        w->failed = FAIL_SAVEPOINT;
}

/* Common entry check of every write-side call except the rollbacks. */
static int w_check(sq_store *w, const char *what)
{
    if (w->in_cb)
        return w_misuse(w, CQ_EINVAL,
                        "%s: called from inside a fold_stream callback", what);
    if (w->failed != FAIL_NONE)
        return w_misuse(
            w, CQ_EIO,
            "%s: refused: the %s has failed and accepts only rollback", what,
            w->failed == FAIL_TX ? "transaction" : "savepoint");
    return CQ_OK;
}

static int w_run(sq_store *w, int which, const char *ctx)
{
    int rc = run_stmt(w->db, w->st[which], w->msg, sizeof w->msg, ctx);
    if (rc != CQ_OK)
        w_mark_failed(w);
    return rc;
}

static int tx_begin(sq_store *w)
{
    int rc = w_check(w, "begin");
    if (rc != CQ_OK)
        return rc;
    if (w->in_tx)
        return w_misuse(w, CQ_EINVAL, "begin: a transaction is already open");
    rc = w_run(w, W_BEGIN, "BEGIN IMMEDIATE");
    if (rc != CQ_OK)
        return rc;
    w->in_tx = 1;
    w->in_sp = 0;
    w->failed = FAIL_NONE;
    w->head_valid = 0;
    return CQ_OK;
}

static int tx_commit(sq_store *w)
{
    int rc = w_check(w, "commit");
    if (rc != CQ_OK)
        return rc;
    if (!w->in_tx)
        return w_misuse(w, CQ_EINVAL, "commit: no transaction is open");
    if (w->in_sp)
        return w_misuse(w, CQ_EINVAL,
                        "commit: the command's savepoint is still open "
                        "(release or roll it back first)");
    /* With synchronous=FULL this returns after the WAL fsync. */
    rc = w_run(w, W_COMMIT, "COMMIT");
    if (rc != CQ_OK) {
        w->failed = FAIL_TX; /* nothing is durable; roll back */
        return rc;
    }
    w->in_tx = 0;
    return CQ_OK;
}

static int tx_rollback(sq_store *w)
{
    int rc = CQ_OK;
    if (w->in_cb)
        return w_misuse(w, CQ_EINVAL,
                        "rollback: called from inside a fold_stream callback");
    /* SQLite may have rolled back already on an I/O error: then there is
     * nothing left to do. */
    if (!sqlite3_get_autocommit(w->db))
        rc = run_stmt(w->db, w->st[W_ROLLBACK], w->msg, sizeof w->msg,
                      "ROLLBACK");
    if (rc == CQ_OK || sqlite3_get_autocommit(w->db)) {
        w->in_tx = 0;
        w->in_sp = 0;
        w->failed = FAIL_NONE;
    }
    w->head_valid = 0;
    return rc;
}

static int tx_savepoint(sq_store *w)
{
    int rc = w_check(w, "savepoint");
    if (rc != CQ_OK)
        return rc;
    if (!w->in_tx)
        return w_misuse(w, CQ_EINVAL, "savepoint: no transaction is open");
    if (w->in_sp)
        return w_misuse(w, CQ_EINVAL, "savepoint: one is already open");
    rc = w_run(w, W_SAVEPOINT, "SAVEPOINT");
    if (rc == CQ_OK)
        w->in_sp = 1;
    return rc;
}

static int tx_release(sq_store *w)
{
    int rc = w_check(w, "release");
    if (rc != CQ_OK)
        return rc;
    if (!w->in_sp)
        return w_misuse(w, CQ_EINVAL, "release: no savepoint is open");
    rc = w_run(w, W_RELEASE, "RELEASE");
    if (rc == CQ_OK)
        w->in_sp = 0;
    else
        w->failed = FAIL_TX;
    return rc;
}

static int tx_rollback_savepoint(sq_store *w)
{
    int rc;
    if (w->in_cb)
        return w_misuse(
            w, CQ_EINVAL,
            "rollback_savepoint: called from inside a fold_stream callback");
    if (!w->in_sp)
        return w_misuse(w, CQ_EINVAL,
                        "rollback_savepoint: no savepoint is open");
    if (w->failed == FAIL_TX)
        return w_misuse(w, CQ_EIO,
                        "rollback_savepoint: the transaction has failed; roll "
                        "back the batch");
    rc = run_stmt(w->db, w->st[W_ROLLBACK_TO], w->msg, sizeof w->msg,
                  "ROLLBACK TO");
    if (rc == CQ_OK)
        rc = run_stmt(w->db, w->st[W_RELEASE], w->msg, sizeof w->msg,
                      "RELEASE after ROLLBACK TO");
    /* The positions the savepoint used are free again: re-read the head. */
    w->head_valid = 0;
    if (rc != CQ_OK) {
        w->failed = FAIL_TX;
        return rc;
    }
    w->in_sp = 0;
    w->failed = FAIL_NONE;
    return CQ_OK;
}

static int sq_exec_tx(void *impl, int op)
{
    sq_store *w = impl;
    switch (op) {
    case CQ_TX_BEGIN: return tx_begin(w);
    case CQ_TX_COMMIT: return tx_commit(w);
    case CQ_TX_ROLLBACK: return tx_rollback(w);
    case CQ_TX_SAVEPOINT: return tx_savepoint(w);
    case CQ_TX_RELEASE: return tx_release(w);
    case CQ_TX_ROLLBACK_SAVEPOINT: return tx_rollback_savepoint(w);
    default: return w_misuse(w, CQ_EINVAL, "exec_tx: unknown operation %d", op);
    }
}

static int w_head(sq_store *w, int64_t *head)
{
    int rc;
    if (w->head_valid && w->in_tx) {
        *head = w->head;
        return CQ_OK;
    }
    rc = q_head(w->db, w->st[W_HEAD], head, w->msg, sizeof w->msg);
    if (rc != CQ_OK) {
        w_mark_failed(w);
        return rc;
    }
    /* Only a value read under our own write lock may be cached. */
    w->head = *head;
    w->head_valid = w->in_tx;
    return CQ_OK;
}

static int sq_write_head(void *impl, int64_t *position)
{
    sq_store *w = impl;
    int rc = w_check(w, "write_head");
    if (rc != CQ_OK)
        return rc;
    if (position == NULL)
        return w_misuse(w, CQ_EINVAL, "write_head: position is NULL");
    return w_head(w, position);
}

static int sq_stream_version(void *impl, const char *stream_id,
                             int64_t *version)
{
    sq_store *w = impl;
    int rc = w_check(w, "stream_version");
    if (rc != CQ_OK)
        return rc;
    if (stream_id == NULL || version == NULL)
        return w_misuse(w, CQ_EINVAL, "stream_version: NULL argument");
    rc = q_stream_version(w->db, w->st[W_STREAM_VERSION], stream_id, version,
                          w->msg, sizeof w->msg);
    if (rc != CQ_OK)
        w_mark_failed(w);
    return rc;
}

static int check_expected(sq_store *w, const char *stream_id, int64_t expected,
                          int64_t current)
{
    int ok;
    char want[32];
    switch (expected) {
    case CQ_VERSION_ANY: return CQ_OK;
    case CQ_VERSION_NO_STREAM:
        ok = current == 0;
        snprintf(want, sizeof want, "no stream");
        break;
    case CQ_VERSION_EXISTS:
        ok = current > 0;
        snprintf(want, sizeof want, "an existing stream");
        break;
    default:
        ok = current == expected;
        snprintf(want, sizeof want, "version %lld", (long long)expected);
        break;
    }
    if (ok)
        return CQ_OK;
    return w_misuse(
        w, CQ_ECONFLICT,
        "append to '%s': expected %s, but the stream is at version %lld",
        stream_id, want, (long long)current);
}

/* Insert events[0..n) at versions cur+1.. and positions head+1.. and move
 * the stream's row. The caller has an open transaction. */
static int append_rows(sq_store *w, const char *stream_id,
                       const cq_new_event *events, size_t n, int64_t now_ms,
                       int64_t cur, int64_t head)
{
    sqlite3_stmt *ins = w->st[W_INSERT_EVENT];
    sqlite3_stmt *up = w->st[W_UPSERT_STREAM];
    int rc = SQLITE_OK;

    for (size_t i = 0; i < n && rc == SQLITE_OK; i++) {
        const cq_new_event *e = &events[i];
        rc = sqlite3_bind_int64(ins, 1, head + 1 + (int64_t)i);
        if (rc == SQLITE_OK)
            rc = sqlite3_bind_text(ins, 2, stream_id, -1, SQLITE_STATIC);
        if (rc == SQLITE_OK)
            rc = sqlite3_bind_int64(ins, 3, cur + 1 + (int64_t)i);
        if (rc == SQLITE_OK)
            rc = sqlite3_bind_text(ins, 4, e->type, -1, SQLITE_STATIC);
        if (rc == SQLITE_OK)
            rc = sqlite3_bind_int(ins, 5, e->schema_version);
        if (rc == SQLITE_OK)
            rc = sqlite3_bind_text(ins, 6, e->data, -1, SQLITE_STATIC);
        if (rc == SQLITE_OK)
            rc = sqlite3_bind_text(ins, 7, e->metadata, -1, SQLITE_STATIC);
        if (rc == SQLITE_OK)
            rc = sqlite3_bind_int64(ins, 8, now_ms);
        if (rc == SQLITE_OK) {
            rc = sqlite3_step(ins);
            rc = rc == SQLITE_DONE ? SQLITE_OK : rc;
        }
        if (rc != SQLITE_OK)
            sql_err(w->db, rc, w->msg, sizeof w->msg, "inserting an event");
        done_stmt(ins);
    }
    if (rc != SQLITE_OK)
        return map_rc(rc);

    rc = sqlite3_bind_text(up, 1, stream_id, -1, SQLITE_STATIC);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_int64(up, 2, cur + (int64_t)n);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_int64(up, 3, head + (int64_t)n);
    if (rc == SQLITE_OK) {
        rc = sqlite3_step(up);
        rc = rc == SQLITE_DONE ? SQLITE_OK : rc;
    }
    if (rc != SQLITE_OK)
        sql_err(w->db, rc, w->msg, sizeof w->msg, "updating the stream");
    done_stmt(up);
    return rc == SQLITE_OK ? CQ_OK : map_rc(rc);
}

static int sq_append(void *impl, const char *stream_id, int64_t expected,
                     const cq_new_event *events, size_t n, int64_t now_ms,
                     int64_t *version, int64_t *first_position)
{
    sq_store *w = impl;
    int64_t cur = 0, head = 0;
    int own_tx = 0;
    int rc = w_check(w, "append");
    if (rc != CQ_OK)
        return rc;

    if (stream_id == NULL || stream_id[0] == '\0' || events == NULL || n == 0 ||
        expected < CQ_VERSION_EXISTS)
        return w_misuse(w, CQ_EINVAL,
                        "append: need a stream id, n >= 1 events and a valid "
                        "expected version");
    for (size_t i = 0; i < n; i++) {
        if (events[i].type == NULL || events[i].data == NULL ||
            events[i].metadata == NULL)
            return w_misuse(
                w, CQ_EINVAL,
                "append to '%s': event %zu lacks type, data or metadata",
                stream_id, i);
    }

    /* Outside a batch an append is its own transaction, so that it is
     * atomic and takes the write lock before reading the head. */
    if (!w->in_tx) {
        rc = tx_begin(w);
        if (rc != CQ_OK)
            return rc;
        own_tx = 1;
    }
    rc = q_stream_version(w->db, w->st[W_STREAM_VERSION], stream_id, &cur,
                          w->msg, sizeof w->msg);
    if (rc != CQ_OK) {
        w_mark_failed(w);
        goto fail;
    }
    rc = check_expected(w, stream_id, expected, cur);
    if (rc != CQ_OK)
        goto fail;
    rc = w_head(w, &head);
    if (rc != CQ_OK)
        goto fail;
    rc = append_rows(w, stream_id, events, n, now_ms, cur, head);
    if (rc != CQ_OK) {
        w_mark_failed(w);
        goto fail;
    }
    w->head = head + (int64_t)n;
    if (own_tx) {
        rc = tx_commit(w);
        if (rc != CQ_OK)
            goto fail;
    }
    if (version != NULL)
        *version = cur + (int64_t)n;
    if (first_position != NULL)
        *first_position = head + 1;
    return CQ_OK;

fail:
    if (own_tx) {
        char keep[SQ_MSG_CAP];
        memcpy(keep, w->msg, sizeof keep);
        tx_rollback(w);
        memcpy(w->msg, keep, sizeof keep);
    }
    return rc;
}

static int sq_fold_stream(void *impl, const char *stream_id,
                          int64_t after_version, cq_event_cb cb, void *arg)
{
    sq_store *w = impl;
    sqlite3_stmt *st = w->st[W_FOLD];
    int rc = w_check(w, "fold_stream");
    if (rc != CQ_OK)
        return rc;
    if (stream_id == NULL || cb == NULL)
        return w_misuse(w, CQ_EINVAL, "fold_stream: NULL argument");
    if (after_version < 0)
        after_version = 0;
    rc = sqlite3_bind_text(st, 1, stream_id, -1, SQLITE_STATIC);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_int64(st, 2, after_version);
    if (rc != SQLITE_OK) {
        rc = sql_err(w->db, rc, w->msg, sizeof w->msg, "fold_stream");
        done_stmt(st);
        w_mark_failed(w);
        return rc;
    }
    rc = emit_events(w->db, st, EC_VERSION, after_version + 1, INT64_MAX, cb,
                     arg, &w->in_cb, w->msg, sizeof w->msg, "fold_stream");
    if (rc != CQ_OK)
        w_mark_failed(w);
    return rc;
}

/* Make w->buf hold at least cap bytes. */
static int w_reserve(sq_store *w, size_t cap)
{
    if (cap <= w->bufcap)
        return CQ_OK;
    char *p = realloc(w->buf, cap);
    if (p == NULL)
        return w_misuse(w, CQ_ENOMEM, "cmdlog_get: out of memory");
    w->buf = p;
    w->bufcap = cap;
    return CQ_OK;
}

static int sq_cmdlog_get(void *impl, const char *key, int64_t now_ms,
                         cq_cmdlog_entry *out)
{
    sq_store *w = impl;
    sqlite3_stmt *st = w->st[W_CMD_GET];
    const char *hash = NULL, *resp = NULL;
    int rc = w_check(w, "cmdlog_get");
    if (rc != CQ_OK)
        return rc;
    if (key == NULL || out == NULL)
        return w_misuse(w, CQ_EINVAL, "cmdlog_get: NULL argument");

    rc = sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
    if (rc == SQLITE_OK)
        rc = sqlite3_step(st);
    if (rc == SQLITE_DONE) {
        rc = w_misuse(w, CQ_ENOTFOUND, "cmdlog_get: no entry for the key");
        goto done;
    }
    if (rc != SQLITE_ROW) {
        rc = sql_err(w->db, rc, w->msg, sizeof w->msg, "cmdlog_get");
        w_mark_failed(w);
        goto done;
    }
    if (sqlite3_column_type(st, 0) != SQLITE_TEXT ||
        sqlite3_column_type(st, 1) != SQLITE_INTEGER ||
        sqlite3_column_type(st, 2) != SQLITE_TEXT ||
        sqlite3_column_type(st, 3) != SQLITE_INTEGER ||
        sqlite3_column_type(st, 4) != SQLITE_INTEGER ||
        sqlite3_column_int64(st, 1) < INT_MIN ||
        sqlite3_column_int64(st, 1) > INT_MAX) {
        rc = w_misuse(w, CQ_ECORRUPT,
                      "command_log: the entry for key '%s' has a column of the "
                      "wrong type",
                      key);
        goto done;
    }
    if (sqlite3_column_int64(st, 4) <= now_ms) {
        rc = w_misuse(w, CQ_ENOTFOUND, "cmdlog_get: the entry has expired");
        goto done;
    }
    rc = col_text(st, 0, &hash);
    if (rc == CQ_OK)
        rc = col_text(st, 2, &resp);
    if (rc != CQ_OK) {
        rc = w_misuse(w, rc,
                      "command_log: the entry for key '%s' is unreadable", key);
        goto done;
    }
    /* Copy out: the row dies at reset; the entry lives until the next
     * write-side call. */
    size_t nk = strlen(key) + 1, nh = strlen(hash) + 1, nr = strlen(resp) + 1;
    rc = w_reserve(w, nk + nh + nr);
    if (rc != CQ_OK)
        goto done;
    memcpy(w->buf, key, nk);
    memcpy(w->buf + nk, hash, nh);
    memcpy(w->buf + nk + nh, resp, nr);
    out->status = sqlite3_column_int(st, 1);
    out->created_at = sqlite3_column_int64(st, 3);
    out->expires_at = sqlite3_column_int64(st, 4);
    out->key = w->buf;
    out->command_hash = w->buf + nk;
    out->response = w->buf + nk + nh;
    rc = CQ_OK;
done:
    done_stmt(st);
    return rc;
}

static int sq_cmdlog_put(void *impl, const cq_cmdlog_entry *e)
{
    sq_store *w = impl;
    sqlite3_stmt *st = w->st[W_CMD_PUT];
    int rc = w_check(w, "cmdlog_put");
    if (rc != CQ_OK)
        return rc;
    if (e == NULL || e->key == NULL || e->command_hash == NULL ||
        e->response == NULL)
        return w_misuse(w, CQ_EINVAL, "cmdlog_put: NULL key, hash or response");
    rc = sqlite3_bind_text(st, 1, e->key, -1, SQLITE_STATIC);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_text(st, 2, e->command_hash, -1, SQLITE_STATIC);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_int(st, 3, e->status);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_text(st, 4, e->response, -1, SQLITE_STATIC);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_int64(st, 5, e->created_at);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_int64(st, 6, e->expires_at);
    if (rc == SQLITE_OK) {
        rc = sqlite3_step(st);
        rc = rc == SQLITE_DONE ? SQLITE_OK : rc;
    }
    if (rc != SQLITE_OK) {
        rc = sql_err(w->db, rc, w->msg, sizeof w->msg, "cmdlog_put");
        w_mark_failed(w);
    }
    done_stmt(st);
    return rc;
}

static int sq_cmdlog_prune(void *impl, int64_t now_ms, int max_rows,
                           int64_t *deleted)
{
    sq_store *w = impl;
    sqlite3_stmt *st = w->st[W_CMD_PRUNE];
    int64_t changed = 0;
    int own_tx = 0;
    int rc = w_check(w, "cmdlog_prune");
    if (deleted != NULL)
        *deleted = 0;
    if (rc != CQ_OK)
        return rc;
    if (max_rows < 1)
        return w_misuse(w, CQ_EINVAL, "cmdlog_prune: max_rows must be >= 1");
    /* One bounded step; the caller (the writer) decides when the next one
     * runs, so commands never wait behind more than one. Inside a batch it
     * is one more write of the batch and commits with it: no COMMIT and so
     * no WAL fsync of its own. Outside a batch it is one short transaction
     * of its own. The rows come from the expires_at index, oldest first; a
     * crash loses at most this step's deletion, which the next prune
     * redoes. */
    if (!w->in_tx) {
        rc = tx_begin(w);
        if (rc != CQ_OK)
            goto fail;
        own_tx = 1;
    }
    rc = sqlite3_bind_int64(st, 1, now_ms);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_int(st, 2, max_rows);
    if (rc == SQLITE_OK) {
        rc = sqlite3_step(st);
        rc = rc == SQLITE_DONE ? SQLITE_OK : rc;
    }
    if (rc != SQLITE_OK) {
        rc = sql_err(w->db, rc, w->msg, sizeof w->msg, "cmdlog_prune");
        done_stmt(st);
        w_mark_failed(w);
        goto fail;
    }
    changed = sqlite3_changes(w->db);
    done_stmt(st);
    if (own_tx) {
        rc = tx_commit(w);
        if (rc != CQ_OK)
            goto fail;
    }
    if (deleted != NULL)
        *deleted = changed;
    return CQ_OK;

fail:
    /* Inside a batch the failure is the caller's to roll back (the step's
     * savepoint, or the batch), as after any failed write. */
    if (own_tx && w->in_tx) {
        char keep[SQ_MSG_CAP];
        memcpy(keep, w->msg, sizeof keep);
        tx_rollback(w);
        memcpy(w->msg, keep, sizeof keep);
    }
    return rc;
}

static const char *sq_errmsg(void *impl)
{
    sq_store *w = impl;
    return w->msg;
}

/* ---- read side ---- */

static sq_reader *pool_borrow(sq_store *w)
{
    sq_reader *r;
    pthread_mutex_lock(&w->mu);
    while (w->nidle == 0)
        pthread_cond_wait(&w->cv, &w->mu);
    r = w->idle[--w->nidle];
    pthread_mutex_unlock(&w->mu);
    return r;
}

static void pool_return(sq_store *w, sq_reader *r)
{
    pthread_mutex_lock(&w->mu);
    w->idle[w->nidle++] = r;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

static int r_begin(sq_reader *r, char *err, size_t cap, const char *ctx)
{
    return run_stmt(r->db, r->st[R_BEGIN], err, cap, ctx);
}

/* End the read transaction whatever happened, so the connection goes
 * back to the pool clean and does not pin an old WAL snapshot. */
static int r_end(sq_reader *r, int rc, char *err, size_t cap, const char *ctx)
{
    if (sqlite3_get_autocommit(r->db))
        return rc;
    if (rc == CQ_OK)
        rc = run_stmt(r->db, r->st[R_COMMIT], err, cap, ctx);
    if (!sqlite3_get_autocommit(r->db))
        sqlite3_exec(r->db, "ROLLBACK", NULL, NULL, NULL);
    return rc;
}

static int sq_read_stream(void *impl, const char *stream_id,
                          int64_t from_version, int limit, cq_event_cb cb,
                          void *arg, int64_t *stream_version, char *err,
                          size_t errcap)
{
    sq_store *w = impl;
    sq_reader *r;
    sqlite3_stmt *st;
    int64_t sv = 0;
    int rc;

    if (stream_id == NULL || cb == NULL || limit < 0) {
        put_err(err, errcap, "read_stream: NULL argument or negative limit");
        return CQ_EINVAL;
    }
    if (from_version < 1)
        from_version = 1;
    r = pool_borrow(w);
    st = r->st[R_READ_STREAM];
    /* One read transaction: the version and the events are one snapshot. */
    rc = r_begin(r, err, errcap, "read_stream");
    if (rc != CQ_OK)
        goto done;
    rc = q_stream_version(r->db, r->st[R_STREAM_VERSION], stream_id, &sv, err,
                          errcap);
    if (rc != CQ_OK)
        goto done;
    if (sv == 0) {
        put_err(err, errcap, "stream '%s' does not exist", stream_id);
        rc = CQ_ENOTFOUND;
        goto done;
    }
    rc = sqlite3_bind_text(st, 1, stream_id, -1, SQLITE_STATIC);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_int64(st, 2, from_version);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_int(st, 3, limit);
    if (rc != SQLITE_OK) {
        rc = sql_err(r->db, rc, err, errcap, "read_stream");
        done_stmt(st);
        goto done;
    }
    rc = emit_events(r->db, st, EC_VERSION, from_version, sv, cb, arg, NULL,
                     err, errcap, "read_stream");
done:
    rc = r_end(r, rc, err, errcap, "read_stream");
    pool_return(w, r);
    if (stream_version != NULL)
        *stream_version = sv;
    return rc;
}

static int sq_read_all(void *impl, int64_t from_position, int limit,
                       cq_event_cb cb, void *arg, int64_t *head, char *err,
                       size_t errcap)
{
    sq_store *w = impl;
    sq_reader *r;
    sqlite3_stmt *st;
    int64_t h = 0;
    int rc;

    if (cb == NULL || limit < 0) {
        put_err(err, errcap, "read_all: NULL callback or negative limit");
        return CQ_EINVAL;
    }
    if (from_position < 1)
        from_position = 1;
    r = pool_borrow(w);
    st = r->st[R_READ_ALL];
    rc = r_begin(r, err, errcap, "read_all");
    if (rc != CQ_OK)
        goto done;
    rc = q_head(r->db, r->st[R_HEAD], &h, err, errcap);
    if (rc != CQ_OK)
        goto done;
    rc = sqlite3_bind_int64(st, 1, from_position);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_int(st, 2, limit);
    if (rc != SQLITE_OK) {
        rc = sql_err(r->db, rc, err, errcap, "read_all");
        done_stmt(st);
        goto done;
    }
    rc = emit_events(r->db, st, EC_POSITION, from_position, h, cb, arg, NULL,
                     err, errcap, "read_all");
done:
    rc = r_end(r, rc, err, errcap, "read_all");
    pool_return(w, r);
    if (head != NULL)
        *head = h;
    return rc;
}

static int sq_head_position(void *impl, int64_t *head)
{
    sq_store *w = impl;
    sq_reader *r;
    int rc;
    if (head == NULL)
        return CQ_EINVAL;
    r = pool_borrow(w);
    /* One statement is its own snapshot: no BEGIN needed. */
    rc = q_head(r->db, r->st[R_HEAD], head, NULL, 0);
    pool_return(w, r);
    return rc;
}

/* ---- open / close ---- */

static void sq_close(void *impl)
{
    sq_store *w = impl;
    if (w == NULL)
        return;
    /* Readers and the checkpoint thread first: the writer, closing last,
     * checkpoints the WAL and removes it. */
    cq_wal_free(w->wal);
    for (int i = 0; i < w->nreaders; i++) {
        finalize_all(w->readers[i].st, R_COUNT);
        sqlite3_close(w->readers[i].db);
    }
    finalize_all(w->st, W_COUNT);
    cq_rdb_close(w->view);
    sqlite3_close(w->db);
    if (w->sync_init) {
        pthread_cond_destroy(&w->cv);
        pthread_mutex_destroy(&w->mu);
    }
    free(w->readers);
    free(w->idle);
    free(w->buf);
    free(w);
}

/* Read PRAGMA user_version; the first read of the file, so a file that is
 * not a database fails here. */
static int read_user_version(sqlite3 *db, const char *path, int *out, char *err,
                             size_t cap)
{
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &st, NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        *out = sqlite3_column_int(st, 0);
        rc = CQ_OK;
    } else {
        put_err(err, cap,
                "%s: cannot read the schema version: %s (sqlite error %d)",
                path, sqlite3_errmsg(db), sqlite3_extended_errcode(db));
        rc = map_rc(rc);
    }
    sqlite3_finalize(st);
    return rc;
}

static int check_version(int v, const char *path, char *err, size_t cap)
{
    if (v > CQ_STORE_SCHEMA_VERSION) {
        put_err(err, cap,
                "%s has schema version %d but this cqrsd knows only up to %d; "
                "upgrade cqrsd",
                path, v, CQ_STORE_SCHEMA_VERSION);
        return CQ_EVERSION;
    }
    if (v < 0) {
        put_err(err, cap, "%s has an invalid schema version %d", path, v);
        return CQ_ECORRUPT;
    }
    return CQ_OK;
}

static int exec_sql(sqlite3 *db, const char *sql, const char *path, char *err,
                    size_t cap)
{
    int rc = sqlite3_exec(db, sql, NULL, NULL, NULL);
    if (rc != SQLITE_OK)
        return sql_err(db, rc, err, cap, path);
    return CQ_OK;
}

/* Create the version-1 schema in one transaction if the file has none. */
static int create_schema(sqlite3 *db, const char *path, const char *dir,
                         char *err, size_t cap)
{
    sqlite3_stmt *st = NULL;
    int v = 0;
    int rc = exec_sql(db, "BEGIN IMMEDIATE", path, err, cap);
    if (rc != CQ_OK)
        return rc;
    /* Another process may have created it since we looked. */
    rc = read_user_version(db, path, &v, err, cap);
    if (rc == CQ_OK)
        rc = check_version(v, path, err, cap);
    if (rc != CQ_OK)
        goto fail;
    if (v == 0) {
        /* user_version 0 but tables present: some other database. */
        if (sqlite3_prepare_v2(db, "SELECT count(*) FROM sqlite_master", -1,
                               &st, NULL) != SQLITE_OK ||
            sqlite3_step(st) != SQLITE_ROW) {
            rc = sql_err(db, sqlite3_errcode(db), err, cap, path);
            goto fail;
        }
        if (sqlite3_column_int64(st, 0) != 0) {
            put_err(err, cap,
                    "%s holds tables but no cqrsd schema version (user_version "
                    "0); refusing to use it",
                    path);
            rc = CQ_ECORRUPT;
            goto fail;
        }
        sqlite3_finalize(st);
        st = NULL;
        rc = exec_sql(db, SQ_SCHEMA_V1, path, err, cap);
        if (rc != CQ_OK)
            goto fail;
    }
    rc = exec_sql(db, "COMMIT", path, err, cap);
    if (rc != CQ_OK)
        goto fail;
    /* The file may be new: make its directory entry durable too. */
    return fsync_dir(dir, err, cap);

fail:
    sqlite3_finalize(st);
    if (!sqlite3_get_autocommit(db))
        sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
    return rc;
}

static int open_writer(sq_store *w, const cq_store_config *cfg,
                       const char *path, char *err, size_t cap)
{
    int v = 0;
    int rc = sqlite3_open_v2(
        path, &w->db,
        SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL);
    if (rc != SQLITE_OK) {
        if (w->db == NULL) {
            put_err(err, cap, "%s: cannot open: out of memory", path);
            return CQ_ENOMEM;
        }
        return sql_err(w->db, rc, err, cap, path);
    }
    sqlite3_busy_timeout(w->db, SQ_BUSY_TIMEOUT_MS);
    /* Look before changing anything: a newer or foreign file is left as
     * it is. */
    rc = read_user_version(w->db, path, &v, err, cap);
    if (rc == CQ_OK)
        rc = check_version(v, path, err, cap);
    if (rc != CQ_OK)
        return rc;

    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(w->db, "PRAGMA journal_mode = WAL", -1, &st, NULL) !=
            SQLITE_OK ||
        sqlite3_step(st) != SQLITE_ROW) {
        rc = sql_err(w->db, sqlite3_errcode(w->db), err, cap, path);
        sqlite3_finalize(st);
        return rc;
    }
    const char *mode = (const char *)sqlite3_column_text(st, 0);
    if (mode == NULL || strcmp(mode, "wal") != 0) {
        put_err(err, cap, "%s: cannot switch to WAL mode (journal mode is %s)",
                path, mode ? mode : "unknown");
        sqlite3_finalize(st);
        return CQ_EIO;
    }
    sqlite3_finalize(st);
    rc = exec_sql(w->db,
                  cfg->sync_full ? "PRAGMA synchronous = FULL"
                                 : "PRAGMA synchronous = NORMAL",
                  path, err, cap);
    if (rc != CQ_OK)
        return rc;
    if (v == 0) {
        rc = create_schema(w->db, path, cfg->dir, err, cap);
        if (rc != CQ_OK)
            return rc;
    }
    return prepare_all(w->db, W_SQL, W_COUNT, w->st, err, cap, path);
}

static int open_reader(sq_reader *r, const char *path, char *err, size_t cap)
{
    int rc = sqlite3_open_v2(path, &r->db,
                             SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, NULL);
    if (rc != SQLITE_OK) {
        if (r->db == NULL) {
            put_err(err, cap, "%s: cannot open a reader: out of memory", path);
            return CQ_ENOMEM;
        }
        return sql_err(r->db, rc, err, cap, path);
    }
    sqlite3_busy_timeout(r->db, SQ_BUSY_TIMEOUT_MS);
    return prepare_all(r->db, R_SQL, R_COUNT, r->st, err, cap, path);
}

static int sq_open(const cq_store_config *cfg, void **impl, char *err,
                   size_t errcap)
{
    sq_store *w = NULL;
    char *path = NULL;
    int rc;

    *impl = NULL;
    if (cfg == NULL || cfg->dir == NULL || cfg->dir[0] == '\0' ||
        cfg->read_connections < 0) {
        put_err(err, errcap,
                "store: need a directory and a read pool size >= 0");
        return CQ_EINVAL;
    }
    if (sqlite3_threadsafe() == 0) {
        put_err(err, errcap,
                "store: this SQLite library was built without thread support");
        return CQ_EIO;
    }
    rc = make_dir(cfg->dir, err, errcap);
    if (rc != CQ_OK)
        goto fail;
    size_t plen = strlen(cfg->dir) + sizeof "/" SQ_FILE;
    path = malloc(plen);
    w = calloc(1, sizeof *w);
    if (path == NULL || w == NULL) {
        put_err(err, errcap, "store: out of memory");
        rc = CQ_ENOMEM;
        goto fail;
    }
    snprintf(path, plen, "%s/%s", cfg->dir, SQ_FILE);
    int n =
        cfg->read_connections == 0 ? SQ_DEFAULT_READERS : cfg->read_connections;
    w->readers = calloc((size_t)n, sizeof *w->readers);
    w->idle = calloc((size_t)n, sizeof *w->idle);
    if (w->readers == NULL || w->idle == NULL) {
        put_err(err, errcap, "store: out of memory");
        rc = CQ_ENOMEM;
        goto fail;
    }
    if (pthread_mutex_init(&w->mu, NULL) != 0) {
        put_err(err, errcap, "store: cannot create a mutex");
        rc = CQ_ENOMEM;
        goto fail;
    }
    if (pthread_cond_init(&w->cv, NULL) != 0) {
        pthread_mutex_destroy(&w->mu);
        put_err(err, errcap, "store: cannot create a condition variable");
        rc = CQ_ENOMEM;
        goto fail;
    }
    w->sync_init = 1;

    rc = open_writer(w, cfg, path, err, errcap);
    if (rc != CQ_OK)
        goto fail;
    /* Readers open after the writer has made the file a WAL database. */
    for (int i = 0; i < n; i++) {
        w->nreaders = i + 1;
        rc = open_reader(&w->readers[i], path, err, errcap);
        if (rc != CQ_OK)
            goto fail;
        w->idle[w->nidle++] = &w->readers[i];
    }
    rc = cq_wal_start(w->db, SQ_BUSY_TIMEOUT_MS, path, "cq-ckpt-events",
                      &w->wal, err, errcap);
    if (rc != CQ_OK)
        goto fail;
    w->view = cq_rdb_wrap(&cq_rdb_sqlite_ops, w->db, 0);
    if (w->view == NULL) {
        snprintf(err, errcap, "out of memory");
        rc = CQ_ENOMEM;
        goto fail;
    }
    free(path);
    *impl = w;
    return CQ_OK;

fail:
    sq_close(w);
    free(path);
    return rc;
}

static cq_rdb *sq_write_rdb(void *impl)
{
    return ((sq_store *)impl)->view;
}

static int sq_open_rdb(void *impl, cq_rdb **out, char *err, size_t errcap)
{
    const char *path = sqlite3_db_filename(((sq_store *)impl)->db, "main");

    return cq_rdb_open(path, CQ_RDB_READONLY, SQ_BUSY_TIMEOUT_MS, out, err,
                       errcap);
}

static int64_t sq_wal_bytes(void *impl)
{
    return cq_wal_bytes(((sq_store *)impl)->wal);
}

const cq_store_ops cq_store_sqlite_ops = {
    .name = "sqlite",
    .open = sq_open,
    .close = sq_close,
    .errmsg = sq_errmsg,
    .exec_tx = sq_exec_tx,
    .stream_version = sq_stream_version,
    .append = sq_append,
    .fold_stream = sq_fold_stream,
    .write_head = sq_write_head,
    .cmdlog_get = sq_cmdlog_get,
    .cmdlog_put = sq_cmdlog_put,
    .cmdlog_prune = sq_cmdlog_prune,
    .read_stream = sq_read_stream,
    .read_all = sq_read_all,
    .head_position = sq_head_position,
    .write_rdb = sq_write_rdb,
    .open_rdb = sq_open_rdb,
    .wal_bytes = sq_wal_bytes,
};
