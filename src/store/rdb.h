/*
 * rdb.h -- the read-store interface: one connection to the database that
 * holds read models (projection tables, their checkpoints, rebuild state),
 * and the statements run on it.
 *
 * Projections are declared in SQL (docs/declared-sql.md), so the engine
 * needs a SQL database, not a key-value map: this interface is SQL
 * connections and prepared statements, as thin as the engine's hot path
 * (bind, step, reset per event) allows, plus the few operations whose SQL
 * differs between backends (schema introspection). Statements the engine
 * writes itself (checkpoints, renames for the blue/green swap) use SQL
 * that SQLite and PostgreSQL both accept; parameters are written `?N`
 * (declared statements come in both `?N` and `$N` forms, see declared.h),
 * and a transaction that will write starts with `BEGIN IMMEDIATE` (the
 * PostgreSQL backend reads it as `BEGIN`).
 *
 * Each backend is a cq_rdb_ops table in a file of its own (rdb_sqlite.c,
 * rdb_pg.c);
 * callers never know which one they hold. The event store hands out a view
 * of its write connection through the same interface (cq_store_write_rdb),
 * so inline projections commit with the events.
 *
 * Threads: a cq_rdb and its statements belong to one thread at a time
 * (whoever borrowed the connection); no call locks. Errors: functions
 * return CQ_OK or a negative CQ_* code; the backend's message for the
 * last failure on a connection is cq_rdb_errmsg().
 *
 * Ownership: cq_rdb_open's connection is the caller's (cq_rdb_close);
 * a statement is its preparer's (cq_rstmt_finalize) and must be finalized
 * before its connection is closed. Text and blobs returned by column
 * accessors are borrowed until the next step, reset or finalize of that
 * statement.
 */
#ifndef CQ_RDB_H
#define CQ_RDB_H

#include <stddef.h>
#include <stdint.h>

typedef struct cq_rdb cq_rdb;
typedef struct cq_rstmt cq_rstmt;

/* cq_rdb_open flags */
enum {
    CQ_RDB_CREATE = 1,   /* create the database if missing */
    CQ_RDB_READONLY = 2, /* never write through this connection */
};

/* cq_rdb_prepare flags */
enum {
    CQ_RDB_PERSISTENT = 1, /* kept for the connection's life: plan once */
};

/* cq_rstmt_step results (>= 0; a failure is a negative CQ_* code) */
enum { CQ_RSTEP_DONE = 0, CQ_RSTEP_ROW = 1 };

/* column types */
typedef enum cq_rtype {
    CQ_RTYPE_NULL,
    CQ_RTYPE_INT,
    CQ_RTYPE_REAL,
    CQ_RTYPE_TEXT,
    CQ_RTYPE_BLOB
} cq_rtype;

/* ---- connections ---- */

/* Open `where` (SQLite: a file path, or ":memory:" for a private
 * in-memory database; PostgreSQL: a URI or connection string, as
 * cq_pg_is_uri tells, with the password hidden in messages) with `flags`
 * (PostgreSQL ignores CQ_RDB_CREATE: the database must exist; READONLY
 * makes every transaction read-only, and one snapshot); a busy database
 * is waited for up to busy_ms (PostgreSQL: lock_timeout, at least
 * 100 ms). CQ_OK with *out, or CQ_EIO / CQ_ENOMEM with a message in err
 * (naming `where`). */
int cq_rdb_open(const char *where, unsigned flags, int busy_ms, cq_rdb **out,
                char *err, size_t errcap);

/* Close db (its statements must be finalized). Accepts NULL. A view of a
 * connection someone else owns (cq_rdb_wrap with owned 0, as the event
 * store hands out its write connection) is left as it is: it goes away
 * with that connection. */
void cq_rdb_close(cq_rdb *db);

/* The backend's message for the last failure on db (borrowed until the
 * next call on db). */
const char *cq_rdb_errmsg(cq_rdb *db);

/* The CQ_* code of the last failure on db: CQ_EBUSY (locked by another
 * connection), CQ_EIO (I/O, full disk, damaged or unopenable file, read
 * only), CQ_ENOMEM, or CQ_EINVAL (the statement's own fault: SQL error,
 * constraint). CQ_OK when the last call succeeded. */
int cq_rdb_errcode(cq_rdb *db);

/* Run sql, which may hold several statements and returns no rows. CQ_OK,
 * or the failure's code with "<message>" in err (if err is not NULL). */
int cq_rdb_exec(cq_rdb *db, const char *sql, char *err, size_t errcap);

/* Queued writes (optional: PostgreSQL; elsewhere a no-op answering
 * CQ_OK). With on 1, until called with 0: inside a transaction, a step of
 * a statement that writes and returns no rows (INSERT, UPDATE or DELETE
 * without RETURNING) may be sent without waiting for its answer, and
 * answers CQ_RSTEP_DONE at once; the statements that follow see its
 * changes as usual. Its failure (and with it the transaction's) is
 * reported instead by the next call on db that waits for an answer: a
 * step of a statement that is not queued (one that returns rows, say),
 * cq_rdb_exec (a COMMIT fails, and the transaction is rolled back; a
 * ROLLBACK discards the failure), cq_rdb_prepare, or this call with on 0,
 * which reads every answer still owed and returns the first failure (its
 * message in cq_rdb_errmsg). So a caller that turns it on must not tell
 * one write's failure from another's: the projector's batch, which runs
 * again with a savepoint per event when any of it fails (projector.c).
 * CQ_OK, or with on 0 the first queued statement's failure. */
int cq_rdb_queue_writes(cq_rdb *db, int on);

/* 1 while db has a transaction open (one that a failure may have ended:
 * after a failed statement, ask this before ROLLBACK), else 0. */
int cq_rdb_in_transaction(cq_rdb *db);

/* Does a table or index called `name` exist (names compare without
 * regard to ASCII case)? CQ_OK with *exists 0 or 1, or CQ_EIO. */
int cq_rdb_object_exists(cq_rdb *db, const char *name, int *exists);

/* Call cb(arg, name) for each table the application made (not the
 * backend's own), in the order they were created; only those whose name
 * ends with `suffix` when suffix is not NULL. A cb that returns non-zero
 * stops the walk. CQ_OK, or CQ_EIO with a message in err. */
int cq_rdb_tables(cq_rdb *db, const char *suffix,
                  int (*cb)(void *arg, const char *name), void *arg, char *err,
                  size_t errcap);

/* Call cb(arg, column, pk, type) for each column of `table` in
 * declaration order; pk is its 1-based place in the primary key, 0 if not
 * in it; type is what its values come back as when not NULL, where the
 * backend fixes it (PostgreSQL: from the column's type, as
 * cq_rstmt_column_type maps it), or CQ_RTYPE_NULL where values of any type
 * may be stored (SQLite). A cb that returns non-zero stops the walk.
 * CQ_OK, CQ_ENOTFOUND (no such table), or CQ_EIO with a message in err. */
int cq_rdb_columns(cq_rdb *db, const char *table,
                   int (*cb)(void *arg, const char *column, int pk,
                             cq_rtype type),
                   void *arg, char *err, size_t errcap);

/* Bytes of db's write-ahead log, or -1 when it has none or it cannot be
 * told (SQLite: the -wal file). */
int64_t cq_rdb_wal_bytes(cq_rdb *db);

/* The name of db's backend ("sqlite" or "postgresql"), for code that
 * works only with one (store/wal.c) or picks a statement's dialect
 * (declared statements). Static storage. */
const char *cq_rdb_backend(cq_rdb *db);

/* Write v into buf[cap] (NUL-terminated, cut to fit) as db's backend
 * shows a REAL value to people (SQLite: printf's "%!.17g", so 2.0 is
 * "2.0", infinity "Inf"): reports that show values read from db (verify)
 * show them as the database does. */
void cq_rdb_format_real(cq_rdb *db, double v, char *buf, size_t cap);

/* ---- across connections (optional: PostgreSQL) ----
 *
 * Coordination between processes that share one database. A backend
 * without them (SQLite: one process owns its files) answers CQ_EINVAL,
 * and cq_rdb_errmsg says "not supported by <backend>". */

/* Take the session-level exclusive lock called `name` if no other
 * connection holds it: CQ_OK with *got 1 (taken, or already held by db),
 * or 0 (another connection holds it); or the failure's code. Held until
 * cq_rdb_unlock, or until the connection ends (its process killed: the
 * server releases it). PostgreSQL: pg_try_advisory_lock on
 * hashtextextended(name, 0). */
int cq_rdb_try_lock(cq_rdb *db, const char *name, int *got);

/* Release the lock `name` that db holds (one level, if taken more than
 * once). CQ_OK (also when db did not hold it), or the failure's code. */
int cq_rdb_unlock(cq_rdb *db, const char *name);

/* Send payload on channel, in db's current transaction: delivered to the
 * listeners when it commits (at once outside a transaction), never when
 * it rolls back. CQ_OK or the failure's code. */
int cq_rdb_notify(cq_rdb *db, const char *channel, const char *payload);

/* Receive what is sent on channel from now on (cq_rdb_wait_notify). CQ_OK
 * or the failure's code. */
int cq_rdb_listen(cq_rdb *db, const char *channel);

/* Wait up to timeout_ms (0: do not wait) for one notification on a
 * channel db listens to: 1 with its channel and payload copied into
 * channel[chcap] and payload[plcap] (NUL-terminated, cut to fit), 0 when
 * none came in time, or a negative CQ_* code when the connection failed:
 * the caller opens a new one and listens again, and must then read again
 * whatever the notifications stood for, since those sent meanwhile are
 * lost. Notifications that arrived while db ran other statements are
 * handed out first, in the order sent. */
int cq_rdb_wait_notify(cq_rdb *db, int timeout_ms, char *channel, size_t chcap,
                       char *payload, size_t plcap);

/* ---- statements ---- */

/* Prepare one statement of sql. CQ_OK with *out, or the failure's code
 * with "<sql>: <message>" in err. */
int cq_rdb_prepare(cq_rdb *db, const char *sql, unsigned flags, cq_rstmt **out,
                   char *err, size_t errcap);

/* Free st. Accepts NULL. */
void cq_rstmt_finalize(cq_rstmt *st);

/* The connection st runs on (borrowed). */
cq_rdb *cq_rstmt_db(cq_rstmt *st);

/* Bind parameter i (1-based). Text is borrowed until st is reset or
 * finalized (cq_rstmt_bind_text_copy copies it); len -1 means up to the
 * NUL. CQ_OK, CQ_EINVAL (no such parameter) or CQ_ENOMEM. */
int cq_rstmt_bind_int(cq_rstmt *st, int i, int64_t v);
int cq_rstmt_bind_double(cq_rstmt *st, int i, double v);
int cq_rstmt_bind_text(cq_rstmt *st, int i, const char *s, int len);
int cq_rstmt_bind_text_copy(cq_rstmt *st, int i, const char *s, int len);
int cq_rstmt_bind_blob(cq_rstmt *st, int i, const void *p, int n);
int cq_rstmt_bind_null(cq_rstmt *st, int i);

/* Run st to its next row: CQ_RSTEP_ROW (columns readable), CQ_RSTEP_DONE,
 * or a negative CQ_* code (cq_rdb_errmsg tells why). */
int cq_rstmt_step(cq_rstmt *st);

/* Step st once, then reset it: for statements that return no rows (or
 * whose first row is of no interest). CQ_OK or the failure's code. */
int cq_rstmt_run(cq_rstmt *st);

/* Make st ready to run again; its bindings stay. */
void cq_rstmt_reset(cq_rstmt *st);

/* Set every parameter of st to NULL. */
void cq_rstmt_clear(cq_rstmt *st);

/* The current row's columns (0-based), after CQ_RSTEP_ROW. */
int cq_rstmt_column_count(cq_rstmt *st);
const char *cq_rstmt_column_name(cq_rstmt *st, int i);
cq_rtype cq_rstmt_column_type(cq_rstmt *st, int i);
int64_t cq_rstmt_column_int(cq_rstmt *st, int i);
double cq_rstmt_column_double(cq_rstmt *st, int i);
const char *cq_rstmt_column_text(cq_rstmt *st, int i); /* NULL for NULL */
const void *cq_rstmt_column_blob(cq_rstmt *st, int i);
int cq_rstmt_column_bytes(cq_rstmt *st, int i);

/* ---- backend interface ---- */

/* What a backend provides; the functions above dispatch through it. `impl`
 * is the backend's connection, `st` its statement. Semantics as above. */
typedef struct cq_rdb_ops {
    const char *name;
    void (*close)(void *impl);
    const char *(*errmsg)(void *impl);
    int (*errcode)(void *impl);
    int (*exec)(void *impl, const char *sql, char *err, size_t errcap);
    int (*in_transaction)(void *impl);
    int (*queue_writes)(void *impl, int on); /* optional: NULL, never */
    int (*object_exists)(void *impl, const char *name, int *exists);
    int (*tables)(void *impl, const char *suffix,
                  int (*cb)(void *arg, const char *name), void *arg, char *err,
                  size_t errcap);
    int (*columns)(void *impl, const char *table,
                   int (*cb)(void *arg, const char *column, int pk,
                             cq_rtype type),
                   void *arg, char *err, size_t errcap);
    int64_t (*wal_bytes)(void *impl); /* optional: NULL gives -1 */
    /* run fn(arg) once impl is closed, by whoever closes it; CQ_OK, or a
     * failure after which fn(arg) has already run. For views (cq_rdb_wrap
     * with owned 0); optional: without it a backend has no views */
    int (*on_close)(void *impl, void (*fn)(void *), void *arg);
    void (*format_real)(double v, char *buf, size_t cap);
    int (*prepare)(void *impl, const char *sql, unsigned flags, void **st,
                   char *err, size_t errcap);
    void (*finalize)(void *st);
    int (*bind_int)(void *st, int i, int64_t v);
    int (*bind_double)(void *st, int i, double v);
    int (*bind_text)(void *st, int i, const char *s, int len, int copy);
    int (*bind_blob)(void *st, int i, const void *p, int n);
    int (*bind_null)(void *st, int i);
    int (*step)(void *st);
    void (*reset)(void *st);
    void (*clear)(void *st);
    int (*column_count)(void *st);
    const char *(*column_name)(void *st, int i);
    cq_rtype (*column_type)(void *st, int i);
    int64_t (*column_int)(void *st, int i);
    double (*column_double)(void *st, int i);
    const char *(*column_text)(void *st, int i);
    const void *(*column_blob)(void *st, int i);
    int (*column_bytes)(void *st, int i);
    /* optional, all or none (see "across connections") */
    int (*try_lock)(void *impl, const char *name, int *got);
    int (*unlock)(void *impl, const char *name);
    int (*notify)(void *impl, const char *channel, const char *payload);
    int (*listen)(void *impl, const char *channel);
    int (*wait_notify)(void *impl, int timeout_ms, char *channel, size_t chcap,
                       char *payload, size_t plcap);
} cq_rdb_ops;

/* Wrap a backend connection: the cq_rdb owns impl when `owned` (closed by
 * cq_rdb_close through ops->close). Else it is a view that only borrows
 * impl: cq_rdb_close on it does nothing, and it is freed when impl is
 * closed (ops->on_close), so it is valid exactly as long as impl. NULL
 * when out of memory (or ops cannot make views). For backends and the
 * event store. */
cq_rdb *cq_rdb_wrap(const cq_rdb_ops *ops, void *impl, int owned);

/* The backend connection behind db (borrowed). For backends only (and
 * store/wal.c, which checkpoints SQLite's log). */
void *cq_rdb_impl(cq_rdb *db);

/* The backend statement behind st (borrowed), NULL when st is NULL. For
 * backends only. */
void *cq_rstmt_impl(cq_rstmt *st);

/* The SQLite backend (rdb_sqlite.c). */
extern const cq_rdb_ops cq_rdb_sqlite_ops;

/* The PostgreSQL backend (rdb_pg.c; cq_rdb_pg_wrap in store/pg.h). */
extern const cq_rdb_ops cq_rdb_pg_ops;

#endif
