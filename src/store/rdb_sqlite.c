/*
 * rdb_sqlite.c -- the read-store interface (rdb.h) on SQLite. A
 * connection's impl is its sqlite3 handle, a statement's its sqlite3_stmt;
 * connections are opened with SQLITE_OPEN_NOMUTEX, since each belongs to
 * one thread at a time.
 *
 * Threads: none of its own.
 */
#include <sqlite3.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "cqrs/cqrs.h"
#include "store/rdb.h"

static int code_of(int rc)
{
    switch (rc & 0xff) {
    case SQLITE_OK:
    case SQLITE_ROW:
    case SQLITE_DONE: return CQ_OK;
    case SQLITE_BUSY:
    case SQLITE_LOCKED: return CQ_EBUSY;
    case SQLITE_NOMEM: return CQ_ENOMEM;
    case SQLITE_IOERR:
    case SQLITE_FULL:
    case SQLITE_CORRUPT:
    case SQLITE_NOTADB:
    case SQLITE_CANTOPEN:
    case SQLITE_READONLY:
    case SQLITE_INTERRUPT:
    case SQLITE_PROTOCOL: return CQ_EIO;
    default: return CQ_EINVAL;
    }
}

int cq_rdb_sqlite_open(const char *path, unsigned flags, int busy_ms,
                       void **impl, char *err, size_t errcap)
{
    sqlite3 *db = NULL;
    int f = SQLITE_OPEN_NOMUTEX;

    f |= flags & CQ_RDB_READONLY ? SQLITE_OPEN_READONLY : SQLITE_OPEN_READWRITE;
    if (flags & CQ_RDB_CREATE)
        f |= SQLITE_OPEN_CREATE;
    if (sqlite3_open_v2(path, &db, f, NULL) != SQLITE_OK) {
        int rc = db ? code_of(sqlite3_errcode(db)) : CQ_ENOMEM;
        snprintf(err, errcap, "%s: %s", path,
                 db ? sqlite3_errmsg(db) : "cannot open");
        sqlite3_close(db);
        return rc == CQ_OK || rc == CQ_EINVAL ? CQ_EIO : rc;
    }
    sqlite3_busy_timeout(db, busy_ms);
    *impl = db;
    return CQ_OK;
}

static void sq_close(void *impl)
{
    sqlite3_close(impl);
}

static const char *sq_errmsg(void *impl)
{
    return sqlite3_errmsg(impl);
}

static int sq_errcode(void *impl)
{
    return code_of(sqlite3_errcode(impl));
}

static int sq_exec(void *impl, const char *sql, char *err, size_t errcap)
{
    int rc = sqlite3_exec(impl, sql, NULL, NULL, NULL);

    if (rc == SQLITE_OK)
        return CQ_OK;
    if (err != NULL)
        snprintf(err, errcap, "%s", sqlite3_errmsg(impl));
    return code_of(rc);
}

static int sq_in_transaction(void *impl)
{
    return !sqlite3_get_autocommit(impl);
}

static int sq_object_exists(void *impl, const char *name, int *exists)
{
    sqlite3_stmt *st = NULL;
    int rc;

    *exists = 0;
    if (sqlite3_prepare_v2(impl,
                           "SELECT 1 FROM sqlite_schema WHERE name = ?1"
                           " COLLATE NOCASE",
                           -1, &st, NULL) != SQLITE_OK)
        return code_of(sqlite3_errcode(impl));
    sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
    rc = sqlite3_step(st);
    *exists = rc == SQLITE_ROW;
    sqlite3_finalize(st);
    return rc == SQLITE_ROW || rc == SQLITE_DONE ? CQ_OK : code_of(rc);
}

static int sq_tables(void *impl, const char *suffix,
                     int (*cb)(void *arg, const char *name), void *arg,
                     char *err, size_t errcap)
{
    sqlite3_stmt *st = NULL;
    size_t n = suffix ? strlen(suffix) : 0;
    int rc;

    if (sqlite3_prepare_v2(impl,
                           "SELECT name FROM sqlite_schema WHERE type = 'table'"
                           " AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'"
                           " ORDER BY rowid",
                           -1, &st, NULL) != SQLITE_OK) {
        snprintf(err, errcap, "listing tables: %s", sqlite3_errmsg(impl));
        return code_of(sqlite3_errcode(impl));
    }
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        const char *name = (const char *)sqlite3_column_text(st, 0);
        size_t len = name ? strlen(name) : 0;
        if (name == NULL ||
            (n > 0 && (len < n || strcmp(name + len - n, suffix) != 0)))
            continue;
        if (cb(arg, name) != 0) {
            rc = SQLITE_DONE;
            break;
        }
    }
    if (rc != SQLITE_DONE)
        snprintf(err, errcap, "listing tables: %s", sqlite3_errmsg(impl));
    sqlite3_finalize(st);
    return rc == SQLITE_DONE ? CQ_OK : code_of(rc);
}

static int sq_columns(void *impl, const char *table,
                      int (*cb)(void *arg, const char *column, int pk,
                                cq_rtype type),
                      void *arg, char *err, size_t errcap)
{
    sqlite3_stmt *st = NULL;
    int rc, seen = 0;

    if (sqlite3_prepare_v2(impl, "SELECT name, pk FROM pragma_table_info(?1)",
                           -1, &st, NULL) != SQLITE_OK) {
        snprintf(err, errcap, "columns of %s: %s", table, sqlite3_errmsg(impl));
        return code_of(sqlite3_errcode(impl));
    }
    sqlite3_bind_text(st, 1, table, -1, SQLITE_STATIC);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        const char *name = (const char *)sqlite3_column_text(st, 0);
        seen = 1;
        /* any column may hold values of any type */
        if (name != NULL &&
            cb(arg, name, sqlite3_column_int(st, 1), CQ_RTYPE_NULL) != 0) {
            rc = SQLITE_DONE;
            break;
        }
    }
    if (rc != SQLITE_DONE)
        snprintf(err, errcap, "columns of %s: %s", table, sqlite3_errmsg(impl));
    sqlite3_finalize(st);
    if (rc == SQLITE_DONE && !seen) {
        snprintf(err, errcap, "no table %s", table);
        return CQ_ENOTFOUND;
    }
    return rc == SQLITE_DONE ? CQ_OK : code_of(rc);
}

static int64_t sq_wal_bytes(void *impl)
{
    const char *f = sqlite3_db_filename(impl, "main");
    char path[4200];
    struct stat sb;

    if (f == NULL || f[0] == '\0')
        return -1;
    snprintf(path, sizeof path, "%s-wal", f);
    return stat(path, &sb) == 0 ? (int64_t)sb.st_size : -1;
}

static void sq_format_real(double v, char *buf, size_t cap)
{
    if (cap > 0)
        sqlite3_snprintf(cap > INT_MAX ? INT_MAX : (int)cap, buf, "%!.17g", v);
}

/* A function no SQL calls, whose destructor SQLite runs when the
 * connection closes: how a view learns that its connection went away. */
static void sq_no_function(sqlite3_context *ctx, int argc, sqlite3_value **argv)
{
    (void)argc;
    (void)argv;
    sqlite3_result_null(ctx);
}

static int sq_on_close(void *impl, void (*fn)(void *), void *arg)
{
    char name[64];
    int rc;

    /* a name of its own per arg: registering a name again would run the
     * earlier destructor */
    snprintf(name, sizeof name, "cq_on_close_%p", arg);
    /* on failure SQLite runs fn(arg) itself */
    rc = sqlite3_create_function_v2(impl, name, 0, SQLITE_UTF8, arg,
                                    sq_no_function, NULL, NULL, fn);
    return rc == SQLITE_OK ? CQ_OK : code_of(rc);
}

static int sq_prepare(void *impl, const char *sql, unsigned flags, void **out,
                      char *err, size_t errcap)
{
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v3(
        impl, sql, -1,
        flags & CQ_RDB_PERSISTENT ? SQLITE_PREPARE_PERSISTENT : 0, &st, NULL);

    if (rc != SQLITE_OK || st == NULL) {
        snprintf(err, errcap, "%s: %s", sql,
                 rc == SQLITE_OK ? "no statement" : sqlite3_errmsg(impl));
        sqlite3_finalize(st);
        return rc == SQLITE_OK ? CQ_EINVAL : code_of(rc);
    }
    *out = st;
    return CQ_OK;
}

static void sq_finalize(void *st)
{
    sqlite3_finalize(st);
}

static int bind_rc(int rc)
{
    return rc == SQLITE_OK ? CQ_OK : rc == SQLITE_NOMEM ? CQ_ENOMEM : CQ_EINVAL;
}

static int sq_bind_int(void *st, int i, int64_t v)
{
    return bind_rc(sqlite3_bind_int64(st, i, v));
}

static int sq_bind_double(void *st, int i, double v)
{
    return bind_rc(sqlite3_bind_double(st, i, v));
}

static int sq_bind_text(void *st, int i, const char *s, int len, int copy)
{
    return bind_rc(sqlite3_bind_text(st, i, s, len,
                                     copy ? SQLITE_TRANSIENT : SQLITE_STATIC));
}

static int sq_bind_blob(void *st, int i, const void *p, int n)
{
    return bind_rc(sqlite3_bind_blob(st, i, p, n, SQLITE_STATIC));
}

static int sq_bind_null(void *st, int i)
{
    return bind_rc(sqlite3_bind_null(st, i));
}

static int sq_step(void *st)
{
    int rc = sqlite3_step(st);

    if (rc == SQLITE_ROW)
        return CQ_RSTEP_ROW;
    if (rc == SQLITE_DONE)
        return CQ_RSTEP_DONE;
    rc = code_of(rc);
    return rc == CQ_OK ? CQ_EIO : rc;
}

static void sq_reset(void *st)
{
    sqlite3_reset(st);
}

static void sq_clear(void *st)
{
    sqlite3_clear_bindings(st);
}

static int sq_column_count(void *st)
{
    return sqlite3_column_count(st);
}

static const char *sq_column_name(void *st, int i)
{
    return sqlite3_column_name(st, i);
}

static cq_rtype sq_column_type(void *st, int i)
{
    switch (sqlite3_column_type(st, i)) {
    case SQLITE_INTEGER: return CQ_RTYPE_INT;
    case SQLITE_FLOAT: return CQ_RTYPE_REAL;
    case SQLITE_TEXT: return CQ_RTYPE_TEXT;
    case SQLITE_BLOB: return CQ_RTYPE_BLOB;
    default: return CQ_RTYPE_NULL;
    }
}

static int64_t sq_column_int(void *st, int i)
{
    return sqlite3_column_int64(st, i);
}

static double sq_column_double(void *st, int i)
{
    return sqlite3_column_double(st, i);
}

static const char *sq_column_text(void *st, int i)
{
    return (const char *)sqlite3_column_text(st, i);
}

static const void *sq_column_blob(void *st, int i)
{
    return sqlite3_column_blob(st, i);
}

static int sq_column_bytes(void *st, int i)
{
    return sqlite3_column_bytes(st, i);
}

const cq_rdb_ops cq_rdb_sqlite_ops = {
    .name = "sqlite",
    .close = sq_close,
    .errmsg = sq_errmsg,
    .errcode = sq_errcode,
    .exec = sq_exec,
    .in_transaction = sq_in_transaction,
    .object_exists = sq_object_exists,
    .tables = sq_tables,
    .columns = sq_columns,
    .wal_bytes = sq_wal_bytes,
    .on_close = sq_on_close,
    .format_real = sq_format_real,
    .prepare = sq_prepare,
    .finalize = sq_finalize,
    .bind_int = sq_bind_int,
    .bind_double = sq_bind_double,
    .bind_text = sq_bind_text,
    .bind_blob = sq_bind_blob,
    .bind_null = sq_bind_null,
    .step = sq_step,
    .reset = sq_reset,
    .clear = sq_clear,
    .column_count = sq_column_count,
    .column_name = sq_column_name,
    .column_type = sq_column_type,
    .column_int = sq_column_int,
    .column_double = sq_column_double,
    .column_text = sq_column_text,
    .column_blob = sq_column_blob,
    .column_bytes = sq_column_bytes,
};
