/*
 * test_rdb.c -- unit tests of the read-store interface (src/store/rdb.h)
 * on both backends: connections, statements and their columns, the
 * mapping of the backend's failures to CQ_* codes, transactions, schema
 * introspection, REAL formatting, views of connections someone else
 * owns; on PostgreSQL also the `?N` rewrite, parameter types, the
 * statement cache, advisory locks and notifications; on SQLite the
 * write-ahead log's size and the event store's view of its write
 * connection.
 *
 * `test_rdb` runs the cases on SQLite (in-memory databases, files under
 * $TMPDIR); `test_rdb pg` (ctest: test_rdb_pg) on PostgreSQL, a fresh
 * database per case on the cluster of ctest's `pg` fixture (pgtest.h).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "cqrs/cqrs.h"
#include "pgtest.h"
#include "store/pg.h"
#include "store/rdb.h"
#include "store/store.h"

static char err[512];
static int pg; /* the cases run on PostgreSQL */

/* A new database: in memory (SQLite) or a fresh one on the cluster
 * (PostgreSQL; its URI into *uri if not NULL, the caller frees it). */
static cq_rdb *open_db_uri(char **uri)
{
    cq_rdb *db = NULL;
    char *where = NULL;

    if (pg) {
        where = pgtest_database("rdb");
        assert_non_null(where);
    }
    assert_int_equal(cq_rdb_open(where ? where : ":memory:", CQ_RDB_CREATE,
                                 1000, &db, err, sizeof err),
                     CQ_OK);
    assert_non_null(db);
    if (uri != NULL)
        *uri = where;
    else
        free(where);
    return db;
}

static cq_rdb *open_db(void)
{
    return open_db_uri(NULL);
}

/* A fresh directory under $TMPDIR into dir[cap]. */
static void temp_dir(char *dir, size_t cap)
{
    const char *tmp = getenv("TMPDIR");

    snprintf(dir, cap, "%s/test_rdb.XXXXXX", tmp && *tmp ? tmp : "/tmp");
    assert_non_null(mkdtemp(dir));
}

static void remove_dir(const char *dir)
{
    char cmd[4300];

    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
}

static void exec_ok(cq_rdb *db, const char *sql)
{
    if (cq_rdb_exec(db, sql, err, sizeof err) != CQ_OK)
        fail_msg("%s: %s", sql, err);
}

/* The one integer `sql` selects. */
static int64_t select_int(cq_rdb *db, const char *sql)
{
    cq_rstmt *st = NULL;
    int64_t v;

    if (cq_rdb_prepare(db, sql, 0, &st, err, sizeof err) != CQ_OK)
        fail_msg("%s", err);
    assert_int_equal(cq_rstmt_step(st), CQ_RSTEP_ROW);
    v = cq_rstmt_column_int(st, 0);
    cq_rstmt_finalize(st);
    return v;
}

/* open, exec, prepare, bind of every type, step, columns, reset, clear */
static void test_statements(void **state)
{
    cq_rdb *db = open_db();
    cq_rstmt *st = NULL;
    char text[] = "borrowed";
    const unsigned char blob[3] = {0, 1, 0xff};

    (void)state;
    assert_string_equal(cq_rdb_backend(db), pg ? "postgresql" : "sqlite");
    exec_ok(db, pg ? "CREATE TABLE t (k SERIAL, i BIGINT, r DOUBLE PRECISION,"
                     " s TEXT, b BYTEA, n TEXT);"
                     "CREATE INDEX t_i ON t (i)"
                   : "CREATE TABLE t (k INTEGER PRIMARY KEY, i INTEGER,"
                     " r REAL, s TEXT, b BLOB, n TEXT);"
                     "CREATE INDEX t_i ON t (i)");
    assert_int_equal(cq_rdb_prepare(db,
                                    "INSERT INTO t (i, r, s, b, n)"
                                    " VALUES (?1, ?2, ?3, ?4, ?5)",
                                    CQ_RDB_PERSISTENT, &st, err, sizeof err),
                     CQ_OK);
    assert_ptr_equal(cq_rstmt_db(st), db);
    assert_int_equal(cq_rstmt_bind_int(st, 1, INT64_C(1) << 40), CQ_OK);
    assert_int_equal(cq_rstmt_bind_double(st, 2, 2.5), CQ_OK);
    assert_int_equal(cq_rstmt_bind_text(st, 3, text, -1), CQ_OK);
    assert_int_equal(cq_rstmt_bind_blob(st, 4, blob, 3), CQ_OK);
    assert_int_equal(cq_rstmt_bind_null(st, 5), CQ_OK);
    assert_int_equal(cq_rstmt_bind_int(st, 6, 1), CQ_EINVAL); /* no ?6 */
    assert_int_equal(cq_rstmt_bind_int(st, 0, 1), CQ_EINVAL);
    assert_int_equal(cq_rstmt_step(st), CQ_RSTEP_DONE);
    cq_rstmt_reset(st);
    /* bindings stay after a reset: the same row again, with a copied text
     * that outlives its buffer */
    strcpy(text, "copied!!");
    assert_int_equal(cq_rstmt_bind_text_copy(st, 3, text, 6), CQ_OK);
    memset(text, 'x', sizeof text - 1);
    assert_int_equal(cq_rstmt_run(st), CQ_OK);
    /* cleared: every parameter NULL */
    cq_rstmt_clear(st);
    assert_int_equal(cq_rstmt_run(st), CQ_OK);
    cq_rstmt_finalize(st);

    assert_int_equal(cq_rdb_prepare(db,
                                    "SELECT i, r, s, b, n AS none FROM t"
                                    " ORDER BY k",
                                    0, &st, err, sizeof err),
                     CQ_OK);
    assert_int_equal(cq_rstmt_step(st), CQ_RSTEP_ROW);
    assert_int_equal(cq_rstmt_column_count(st), 5);
    assert_string_equal(cq_rstmt_column_name(st, 4), "none");
    assert_int_equal(cq_rstmt_column_type(st, 0), CQ_RTYPE_INT);
    assert_int_equal(cq_rstmt_column_int(st, 0), INT64_C(1) << 40);
    assert_int_equal(cq_rstmt_column_type(st, 1), CQ_RTYPE_REAL);
    assert_true(cq_rstmt_column_double(st, 1) == 2.5);
    assert_int_equal(cq_rstmt_column_type(st, 2), CQ_RTYPE_TEXT);
    assert_string_equal(cq_rstmt_column_text(st, 2), "borrowed");
    assert_int_equal(cq_rstmt_column_bytes(st, 2), 8);
    assert_int_equal(cq_rstmt_column_type(st, 3), CQ_RTYPE_BLOB);
    assert_int_equal(cq_rstmt_column_bytes(st, 3), 3);
    assert_memory_equal(cq_rstmt_column_blob(st, 3), blob, 3);
    assert_int_equal(cq_rstmt_column_type(st, 4), CQ_RTYPE_NULL);
    assert_null(cq_rstmt_column_text(st, 4));
    assert_int_equal(cq_rstmt_step(st), CQ_RSTEP_ROW);
    assert_string_equal(cq_rstmt_column_text(st, 2), "copied");
    assert_int_equal(cq_rstmt_step(st), CQ_RSTEP_ROW);
    assert_int_equal(cq_rstmt_column_type(st, 0), CQ_RTYPE_NULL);
    assert_int_equal(cq_rstmt_column_type(st, 2), CQ_RTYPE_NULL);
    assert_int_equal(cq_rstmt_step(st), CQ_RSTEP_DONE);
    /* as SQLite: a step after DONE runs the statement again */
    assert_int_equal(cq_rstmt_step(st), CQ_RSTEP_ROW);
    assert_int_equal(cq_rstmt_column_int(st, 0), INT64_C(1) << 40);
    cq_rstmt_finalize(st);
    cq_rstmt_finalize(NULL);

    /* a statement that does not compile: the SQL and why, in err */
    st = (cq_rstmt *)&st;
    assert_int_equal(
        cq_rdb_prepare(db, "SELECT nope FROM t", 0, &st, err, sizeof err),
        CQ_EINVAL);
    assert_null(st);
    assert_non_null(strstr(err, "SELECT nope FROM t: "));
    assert_non_null(strstr(err, pg ? "does not exist" : "no such column"));
    assert_non_null(
        strstr(cq_rdb_errmsg(db), pg ? "does not exist" : "no such column"));
    assert_int_equal(cq_rdb_prepare(db, "  ", 0, &st, err, sizeof err),
                     CQ_EINVAL);
    assert_int_equal(cq_rdb_prepare(db, " -- nothing\n ; /* at all */", 0, &st,
                                    err, sizeof err),
                     CQ_EINVAL);
    assert_int_equal(cq_rdb_exec(db, "SELEC 1", err, sizeof err), CQ_EINVAL);
    assert_non_null(strstr(err, "syntax error"));
    assert_int_equal(cq_rdb_exec(db, "SELEC 1", NULL, 0), CQ_EINVAL);
    /* the failure is forgotten by the next success */
    exec_ok(db, "SELECT 1");
    assert_int_equal(cq_rdb_errcode(db), CQ_OK);
    cq_rdb_close(db);
    cq_rdb_close(NULL);
}

/* the backend's failures as CQ_* codes: a constraint is the statement's
 * fault (CQ_EINVAL), a lock held by another connection is CQ_EBUSY; a
 * database that cannot be opened is CQ_EIO, naming it */
static void test_errcodes(void **state)
{
    char dir[4096], path[4200], *uri = NULL;
    cq_rdb *a = NULL, *b = NULL;
    cq_rstmt *st = NULL;

    (void)state;
    temp_dir(dir, sizeof dir);
    if (pg) {
        a = open_db_uri(&uri);
        snprintf(path, sizeof path, "%s", uri);
    } else {
        snprintf(path, sizeof path, "%s/x.db", dir);
        assert_int_equal(
            cq_rdb_open(path, CQ_RDB_CREATE, 0, &a, err, sizeof err), CQ_OK);
    }
    assert_int_equal(cq_rdb_errcode(a), CQ_OK);
    exec_ok(a, "CREATE TABLE k (id TEXT PRIMARY KEY)");
    exec_ok(a, "INSERT INTO k VALUES ('x')");
    assert_int_equal(cq_rdb_prepare(a, "INSERT INTO k VALUES ('x')", 0, &st,
                                    err, sizeof err),
                     CQ_OK);
    assert_int_equal(cq_rstmt_step(st), CQ_EINVAL);
    assert_int_equal(cq_rdb_errcode(a), CQ_EINVAL);
    assert_non_null(strcasestr(cq_rdb_errmsg(a), "UNIQUE"));
    cq_rstmt_reset(st);
    assert_int_equal(cq_rstmt_run(st), CQ_EINVAL);
    cq_rstmt_finalize(st);

    /* b (no busy wait) meets a's write lock */
    assert_int_equal(cq_rdb_open(path, 0, 0, &b, err, sizeof err), CQ_OK);
    if (pg) {
        exec_ok(a, "BEGIN IMMEDIATE; UPDATE k SET id = 'x' WHERE id = 'x'");
        assert_int_equal(cq_rdb_exec(b, "UPDATE k SET id = 'x' WHERE id = 'x'",
                                     err, sizeof err),
                         CQ_EBUSY);
    } else {
        exec_ok(a, "BEGIN IMMEDIATE");
        assert_int_equal(cq_rdb_exec(b, "BEGIN IMMEDIATE", err, sizeof err),
                         CQ_EBUSY);
    }
    assert_int_equal(cq_rdb_errcode(b), CQ_EBUSY);
    assert_int_equal(cq_rdb_prepare(b, "DELETE FROM k WHERE id = 'x'", 0, &st,
                                    err, sizeof err),
                     CQ_OK);
    assert_int_equal(cq_rstmt_step(st), CQ_EBUSY);
    cq_rstmt_finalize(st);
    exec_ok(a, "COMMIT");
    cq_rdb_close(b);
    cq_rdb_close(a);

    /* read-only: writing is refused as the database's trouble, not the
     * SQL's */
    assert_int_equal(cq_rdb_open(path, CQ_RDB_READONLY, 0, &a, err, sizeof err),
                     CQ_OK);
    assert_int_equal(
        cq_rdb_exec(a, "INSERT INTO k VALUES ('z')", err, sizeof err), CQ_EIO);
    assert_int_equal(select_int(a, "SELECT count(*) FROM k WHERE id = 'x'"), 1);
    cq_rdb_close(a);

    if (pg)
        snprintf(path, sizeof path,
                 "postgresql://cqrs:secret@127.0.0.1:1/nowhere");
    else
        snprintf(path, sizeof path, "%s/missing/x.db", dir);
    a = (cq_rdb *)&a;
    assert_int_equal(cq_rdb_open(path, CQ_RDB_CREATE, 0, &a, err, sizeof err),
                     CQ_EIO);
    assert_null(a);
    if (pg) {
        assert_non_null(strstr(err, "postgresql://cqrs:***@127.0.0.1:1/"));
        assert_null(strstr(err, "secret"));
    } else {
        assert_non_null(strstr(err, path));
    }
    remove_dir(dir);
    free(uri);
}

/* cq_rdb_in_transaction follows BEGIN/COMMIT/ROLLBACK, and tells when the
 * backend ended the transaction on its own, or keeps a failed one open */
static void test_in_transaction(void **state)
{
    cq_rdb *db = open_db();

    (void)state;
    assert_int_equal(cq_rdb_in_transaction(db), 0);
    exec_ok(db, "BEGIN");
    assert_int_equal(cq_rdb_in_transaction(db), 1);
    exec_ok(db, "CREATE TABLE t (a INTEGER)");
    exec_ok(db, "COMMIT");
    assert_int_equal(cq_rdb_in_transaction(db), 0);
    exec_ok(db, "BEGIN; SAVEPOINT s");
    assert_int_equal(cq_rdb_in_transaction(db), 1);
    exec_ok(db, "ROLLBACK");
    assert_int_equal(cq_rdb_in_transaction(db), 0);
    if (pg) {
        /* a failed statement leaves the transaction open, and failed: the
         * caller rolls it back */
        exec_ok(db, "CREATE TABLE u (a INTEGER NOT NULL)");
        exec_ok(db, "BEGIN");
        assert_int_equal(
            cq_rdb_exec(db, "INSERT INTO u VALUES (NULL)", err, sizeof err),
            CQ_EINVAL);
        assert_int_equal(cq_rdb_in_transaction(db), 1);
        assert_int_equal(cq_rdb_exec(db, "SELECT 1", err, sizeof err),
                         CQ_EINVAL); /* aborted */
        exec_ok(db, "ROLLBACK");
        assert_int_equal(cq_rdb_in_transaction(db), 0);
    } else {
        /* a conflict clause that aborts the whole transaction */
        exec_ok(db, "CREATE TABLE u (a NOT NULL ON CONFLICT ROLLBACK)");
        exec_ok(db, "BEGIN");
        assert_int_equal(
            cq_rdb_exec(db, "INSERT INTO u VALUES (NULL)", err, sizeof err),
            CQ_EINVAL);
        assert_int_equal(cq_rdb_in_transaction(db), 0);
    }
    cq_rdb_close(db);
}

/* A read-only connection's transaction reads one snapshot: what another
 * connection commits meanwhile shows only in its next transaction (on
 * PostgreSQL a READ COMMITTED transaction would see it at once). */
static void test_snapshot(void **state)
{
    char dir[4096], path[4200], *uri = NULL;
    cq_rdb *w = NULL, *r = NULL;

    (void)state;
    temp_dir(dir, sizeof dir);
    if (pg) {
        w = open_db_uri(&uri);
    } else {
        snprintf(path, sizeof path, "%s/s.db", dir);
        assert_int_equal(
            cq_rdb_open(path, CQ_RDB_CREATE, 1000, &w, err, sizeof err), CQ_OK);
        exec_ok(w, "PRAGMA journal_mode = WAL");
    }
    exec_ok(w, "CREATE TABLE s (a INTEGER); INSERT INTO s VALUES (1)");
    assert_int_equal(cq_rdb_open(pg ? uri : path, CQ_RDB_READONLY, 1000, &r,
                                 err, sizeof err),
                     CQ_OK);
    exec_ok(r, "BEGIN");
    assert_int_equal(select_int(r, "SELECT count(*) FROM s"), 1);
    exec_ok(w, "INSERT INTO s VALUES (2)");
    assert_int_equal(select_int(r, "SELECT count(*) FROM s"), 1);
    exec_ok(r, "COMMIT");
    assert_int_equal(select_int(r, "SELECT count(*) FROM s"), 2);
    cq_rdb_close(r);
    cq_rdb_close(w);
    remove_dir(dir);
    free(uri);
}

static int count_cb(void *arg, const char *name)
{
    char *out = arg;

    strcat(out, name);
    strcat(out, ",");
    return 0;
}

static int stop_cb(void *arg, const char *name)
{
    (void)name;
    ++*(int *)arg;
    return 1;
}

static int column_cb(void *arg, const char *column, int pk, cq_rtype type)
{
    char *out = arg;
    static const char *const types[] = {"null", "int", "real", "text", "blob"};

    sprintf(out + strlen(out), "%s:%d:%s,", column, pk, types[type]);
    return 0;
}

/* object_exists (tables and indexes, any case), tables (in creation
 * order, the backend's own left out, by suffix), columns (with their
 * place in the primary key and, on PostgreSQL, their type) */
static void test_schema(void **state)
{
    cq_rdb *db = open_db();
    char got[256] = "";
    int exists = -1, n = 0;

    (void)state;
    exec_ok(db, pg ? "CREATE TABLE orders (b TEXT, a TEXT, c BIGINT,"
                     " d DOUBLE PRECISION, e BYTEA, f BOOLEAN,"
                     " PRIMARY KEY (a, b));"
                     "CREATE TABLE orders__cq_old (x INTEGER);"
                     "CREATE TABLE lines__cq_old (x INTEGER);"
                     /* makes a sequence */
                     "CREATE TABLE \"Mixed\" (x SERIAL PRIMARY KEY);"
                     "CREATE VIEW a_view AS SELECT 1 AS one;"
                     "CREATE INDEX orders_c ON orders (c)"
                   : "CREATE TABLE orders (b TEXT, a TEXT, c INT, d REAL,"
                     " e BLOB, f BOOLEAN, PRIMARY KEY (a, b));"
                     "CREATE TABLE orders__cq_old (x);"
                     "CREATE TABLE lines__cq_old (x);"
                     /* makes sqlite_sequence */
                     "CREATE TABLE \"Mixed\" (x INTEGER PRIMARY KEY"
                     " AUTOINCREMENT);"
                     "CREATE VIEW a_view AS SELECT 1 AS one;"
                     "CREATE INDEX orders_c ON orders (c)");
    assert_int_equal(cq_rdb_object_exists(db, "orders", &exists), CQ_OK);
    assert_int_equal(exists, 1);
    assert_int_equal(cq_rdb_object_exists(db, "ORDERS", &exists), CQ_OK);
    assert_int_equal(exists, 1);
    assert_int_equal(cq_rdb_object_exists(db, "mixed", &exists), CQ_OK);
    assert_int_equal(exists, 1);
    assert_int_equal(cq_rdb_object_exists(db, "Orders_C", &exists), CQ_OK);
    assert_int_equal(exists, 1);
    assert_int_equal(cq_rdb_object_exists(db, "order", &exists), CQ_OK);
    assert_int_equal(exists, 0);

    assert_int_equal(cq_rdb_tables(db, NULL, count_cb, got, err, sizeof err),
                     CQ_OK);
    assert_string_equal(got, "orders,orders__cq_old,lines__cq_old,Mixed,");
    got[0] = '\0';
    assert_int_equal(
        cq_rdb_tables(db, "__cq_old", count_cb, got, err, sizeof err), CQ_OK);
    assert_string_equal(got, "orders__cq_old,lines__cq_old,");
    got[0] = '\0';
    assert_int_equal(
        cq_rdb_tables(db, "__cq_shadow", count_cb, got, err, sizeof err),
        CQ_OK);
    assert_string_equal(got, "");
    assert_int_equal(cq_rdb_tables(db, NULL, stop_cb, &n, err, sizeof err),
                     CQ_OK);
    assert_int_equal(n, 1);
    /* a renamed table keeps its place, as it keeps its identity */
    exec_ok(db, "ALTER TABLE orders__cq_old RENAME TO z_first");
    got[0] = '\0';
    assert_int_equal(cq_rdb_tables(db, NULL, count_cb, got, err, sizeof err),
                     CQ_OK);
    assert_string_equal(got, "orders,z_first,lines__cq_old,Mixed,");

    got[0] = '\0';
    assert_int_equal(
        cq_rdb_columns(db, "orders", column_cb, got, err, sizeof err), CQ_OK);
    assert_string_equal(got, pg ? "b:2:text,a:1:text,c:0:int,d:0:real,"
                                  "e:0:blob,f:0:int,"
                                : "b:2:null,a:1:null,c:0:null,d:0:null,"
                                  "e:0:null,f:0:null,");
    got[0] = '\0';
    assert_int_equal(
        cq_rdb_columns(db, "ORDERS", column_cb, got, err, sizeof err), CQ_OK);
    assert_non_null(strstr(got, "b:2:"));
    assert_int_equal(
        cq_rdb_columns(db, "nothing", column_cb, got, err, sizeof err),
        CQ_ENOTFOUND);
    cq_rdb_close(db);
}

/* the -wal file's size: -1 without one (in memory, rollback journal,
 * PostgreSQL), its bytes once a WAL database has been written */
static void test_wal_bytes(void **state)
{
    char dir[4096], path[4200];
    cq_rdb *db = open_db();

    (void)state;
    assert_int_equal(cq_rdb_wal_bytes(db), -1);
    cq_rdb_close(db);
    if (pg)
        return;
    temp_dir(dir, sizeof dir);
    snprintf(path, sizeof path, "%s/w.db", dir);
    assert_int_equal(cq_rdb_open(path, CQ_RDB_CREATE, 0, &db, err, sizeof err),
                     CQ_OK);
    exec_ok(db, "CREATE TABLE t (a)");
    assert_int_equal(cq_rdb_wal_bytes(db), -1); /* rollback journal */
    exec_ok(db, "PRAGMA journal_mode = WAL; INSERT INTO t VALUES (1)");
    assert_true(cq_rdb_wal_bytes(db) > 0);
    cq_rdb_close(db);
    remove_dir(dir);
}

/* REALs as the database shows them (verify's reports depend on it): the
 * backend's own text of each value, read back from it, is what
 * cq_rdb_format_real writes */
static void test_format_real(void **state)
{
    static const double values[] = {2.0,
                                    1.5,
                                    0.1,
                                    1.0 / 3,
                                    1e20,
                                    1e15,
                                    123456789012345.0,
                                    1e16,
                                    1e-5,
                                    0.0001,
                                    -0.0,
                                    1e300,
                                    5e-324,
                                    2.5e-10,
                                    -1234.5,
                                    100.0,
                                    1e-4,
                                    99999999999999.9};
    cq_rdb *db = open_db();
    cq_rstmt *st = NULL;
    char buf[64];

    (void)state;
    cq_rdb_format_real(db, 2.0, buf, sizeof buf);
    assert_string_equal(buf, pg ? "2" : "2.0");
    cq_rdb_format_real(db, 1.5, buf, sizeof buf);
    assert_string_equal(buf, "1.5");
    cq_rdb_format_real(db, 0.1, buf, sizeof buf);
    assert_string_equal(buf, pg ? "0.1" : "0.10000000000000001");
    cq_rdb_format_real(db, 1e20, buf, sizeof buf);
    assert_string_equal(buf, pg ? "1e+20" : "1.0e+20");
    cq_rdb_format_real(db, 1.5, buf, 3);
    assert_string_equal(buf, "1.");
    assert_int_equal(cq_rdb_prepare(db,
                                    pg ? "SELECT CAST(CAST(?1 AS DOUBLE"
                                         " PRECISION) AS TEXT)"
                                       : "SELECT CAST(?1 AS TEXT)",
                                    0, &st, err, sizeof err),
                     CQ_OK);
    for (size_t i = 0; i < sizeof values / sizeof values[0]; i++) {
        assert_int_equal(cq_rstmt_bind_double(st, 1, values[i]), CQ_OK);
        assert_int_equal(cq_rstmt_step(st), CQ_RSTEP_ROW);
        cq_rdb_format_real(db, values[i], buf, sizeof buf);
        if (pg) /* SQLite's CAST AS TEXT has 15 digits, not its %!.17g */
            assert_string_equal(buf, cq_rstmt_column_text(st, 0));
        cq_rstmt_reset(st);
    }
    cq_rstmt_finalize(st);
    cq_rdb_close(db);
}

/* A view of a connection someone else owns: cq_rdb_close neither closes
 * the connection nor makes the view unusable; it goes with the
 * connection. */
static void test_borrowed_view(void **state)
{
    cq_rdb *db = open_db(), *view;
    cq_rstmt *st = NULL;

    (void)state;
    view = cq_rdb_wrap(pg ? &cq_rdb_pg_ops : &cq_rdb_sqlite_ops,
                       cq_rdb_impl(db), 0);
    assert_non_null(view);
    exec_ok(view, "CREATE TABLE t (a INTEGER)");
    cq_rdb_close(view);
    cq_rdb_close(view);
    exec_ok(view, "INSERT INTO t VALUES (1)");
    assert_int_equal(
        cq_rdb_prepare(db, "SELECT count(*) FROM t", 0, &st, err, sizeof err),
        CQ_OK);
    assert_int_equal(cq_rstmt_step(st), CQ_RSTEP_ROW);
    assert_int_equal(cq_rstmt_column_int(st, 0), 1);
    cq_rstmt_finalize(st);
    cq_rdb_close(db); /* the view goes with its connection */
}

/* cq_rdb_pg_wrap: views of a PGconn the caller owns, alive until
 * PQfinish (ASan: nothing leaks, nothing is freed twice); two views of
 * one PGconn share its persistent statements; an owning wrap finishes
 * the PGconn at cq_rdb_close. */
static void test_pg_wrap(void **state)
{
    char *uri = pgtest_database("wrap");
    PGconn *c = NULL;
    cq_rdb *v1, *v2, *own;
    cq_rstmt *s1 = NULL, *s2 = NULL;

    (void)state;
    assert_non_null(uri);
    assert_int_equal(cq_pg_connect(uri, 5, &c, err, sizeof err), CQ_OK);
    v1 = cq_rdb_pg_wrap(c, 0);
    v2 = cq_rdb_pg_wrap(c, 0);
    assert_non_null(v1);
    assert_non_null(v2);
    assert_ptr_equal(cq_rdb_impl(v1), cq_rdb_impl(v2));
    exec_ok(v1, "CREATE TABLE t (a BIGINT)");
    cq_rdb_close(v1); /* nothing: a view */
    assert_int_equal(cq_rdb_prepare(v1, "INSERT INTO t VALUES (?1)",
                                    CQ_RDB_PERSISTENT, &s1, err, sizeof err),
                     CQ_OK);
    assert_int_equal(cq_rdb_prepare(v2, "INSERT INTO t VALUES (?1)",
                                    CQ_RDB_PERSISTENT, &s2, err, sizeof err),
                     CQ_OK);
    /* prepared once on the server */
    assert_int_equal(select_int(v2,
                                "SELECT count(*) FROM pg_prepared_statements"
                                " WHERE statement = 'INSERT INTO t VALUES"
                                " ($1)'"),
                     1);
    cq_rstmt_bind_int(s1, 1, 1);
    cq_rstmt_bind_int(s2, 1, 2);
    assert_int_equal(cq_rstmt_run(s1), CQ_OK);
    cq_rstmt_finalize(s1);
    assert_int_equal(cq_rstmt_run(s2), CQ_OK);
    cq_rstmt_finalize(s2);
    assert_int_equal(select_int(v1, "SELECT sum(a) FROM t"), 3);
    PQfinish(c); /* frees both views */

    assert_int_equal(cq_pg_connect(uri, 5, &c, err, sizeof err), CQ_OK);
    own = cq_rdb_pg_wrap(c, 1);
    assert_non_null(own);
    v1 = cq_rdb_pg_wrap(c, 0);
    assert_non_null(v1);
    assert_int_equal(select_int(v1, "SELECT count(*) FROM t"), 2);
    cq_rdb_close(own); /* PQfinish, and the view with it */
    free(uri);
}

/* `?N` becomes `$N` outside literals, quoted identifiers and comments
 * (PostgreSQL); the same statements give the same answers on SQLite */
static void test_placeholders(void **state)
{
    cq_rdb *db = open_db();
    cq_rstmt *st = NULL;

    (void)state;
    assert_int_equal(
        cq_rdb_prepare(
            db,
            "SELECT '?1' AS \"?2\", ?2 || ?1 AS b, -- ?3 ?9\n"
            " /* ?4 */ 'it''s ?5' AS c, CAST(?1 AS TEXT) AS \"x\"\"?1\"",
            0, &st, err, sizeof err),
        CQ_OK);
    assert_int_equal(cq_rstmt_bind_text(st, 1, "one", -1), CQ_OK);
    assert_int_equal(cq_rstmt_bind_text(st, 2, "two", -1), CQ_OK);
    assert_int_equal(cq_rstmt_bind_text(st, 3, "x", -1), CQ_EINVAL);
    assert_int_equal(cq_rstmt_step(st), CQ_RSTEP_ROW);
    assert_string_equal(cq_rstmt_column_name(st, 0), "?2");
    assert_string_equal(cq_rstmt_column_text(st, 0), "?1");
    assert_string_equal(cq_rstmt_column_text(st, 1), "twoone");
    assert_string_equal(cq_rstmt_column_text(st, 2), "it's ?5");
    assert_string_equal(cq_rstmt_column_name(st, 3), "x\"?1");
    assert_string_equal(cq_rstmt_column_text(st, 3), "one");
    cq_rstmt_finalize(st);
    if (pg) {
        /* PostgreSQL's own quoting: E'' with backslashes, dollar quotes
         * (tagged or not), nested comments; $N written directly */
        assert_int_equal(
            cq_rdb_prepare(db,
                           "SELECT E'\\' ?1' AS a, $$ ?1 $$ AS b,"
                           " $q$ ?1 $x$ $q$ AS c, /* /* ?1 */ ?1 */ ?1 AS d,"
                           " $2 AS e FROM (SELECT 1 AS x) s",
                           0, &st, err, sizeof err),
            CQ_OK);
        assert_int_equal(cq_rstmt_bind_text(st, 1, "p1", -1), CQ_OK);
        assert_int_equal(cq_rstmt_bind_text(st, 2, "p2", -1), CQ_OK);
        assert_int_equal(cq_rstmt_step(st), CQ_RSTEP_ROW);
        assert_string_equal(cq_rstmt_column_text(st, 0), "' ?1");
        assert_string_equal(cq_rstmt_column_text(st, 1), " ?1 ");
        assert_string_equal(cq_rstmt_column_text(st, 2), " ?1 $x$ ");
        assert_string_equal(cq_rstmt_column_text(st, 3), "p1");
        assert_string_equal(cq_rstmt_column_text(st, 4), "p2");
        assert_int_equal(cq_rstmt_column_count(st), 5);
        cq_rstmt_finalize(st);
    }
    /* a number that does not occur (?2): SQLite allows it, PostgreSQL
     * could not type it */
    assert_int_equal(cq_rdb_prepare(db,
                                    "SELECT CAST(?3 AS TEXT) AS c"
                                    " WHERE CAST(?1 AS TEXT) = 'a'",
                                    CQ_RDB_PERSISTENT, &st, err, sizeof err),
                     CQ_OK);
    assert_int_equal(cq_rstmt_bind_text(st, 1, "a", -1), CQ_OK);
    assert_int_equal(cq_rstmt_bind_int(st, 2, 7), CQ_OK);
    assert_int_equal(cq_rstmt_bind_text(st, 3, "three", -1), CQ_OK);
    assert_int_equal(cq_rstmt_step(st), CQ_RSTEP_ROW);
    assert_string_equal(cq_rstmt_column_text(st, 0), "three");
    cq_rstmt_finalize(st);
    /* a parameter right after a word (SQLite ends the word there) */
    assert_int_equal(cq_rdb_prepare(db,
                                    "SELECT x FROM (SELECT 1 AS x UNION ALL"
                                    " SELECT 2) s ORDER BY x LIMIT?1",
                                    0, &st, err, sizeof err),
                     CQ_OK);
    cq_rstmt_bind_int(st, 1, 1);
    assert_int_equal(cq_rstmt_step(st), CQ_RSTEP_ROW);
    assert_int_equal(cq_rstmt_step(st), CQ_RSTEP_DONE);
    cq_rstmt_finalize(st);
    /* BEGIN IMMEDIATE, which the engine writes for SQLite, runs on both */
    exec_ok(db, "BEGIN IMMEDIATE");
    assert_int_equal(cq_rdb_in_transaction(db), 1);
    exec_ok(db, "COMMIT");
    assert_int_equal(
        cq_rdb_prepare(db, " begin  immediate", 0, &st, err, sizeof err),
        CQ_OK);
    assert_int_equal(cq_rstmt_run(st), CQ_OK);
    assert_int_equal(cq_rdb_in_transaction(db), 1);
    cq_rstmt_finalize(st);
    exec_ok(db, "ROLLBACK");
    cq_rdb_close(db);
}

/* values of every type come back as they went in, through a table's
 * columns and through parameters whose type the database infers */
static void test_types(void **state)
{
    static const double reals[] = {0.1,    -2.5,          1e300,
                                   5e-324, 123456789.125, 1.0 / 3};
    static const int64_t ints[] = {0, -1, INT64_MAX, INT64_MIN, 5000000000};
    const char utf8[] = "gr\xc3\xbc\xc3\x9f \xe2\x82\xac 'q' \"d\" \\ ?1";
    const unsigned char blob[] = {0, '\\', 'x', 0xff, 0, 0x27};
    cq_rdb *db = open_db();
    cq_rstmt *ins = NULL, *sel = NULL;

    (void)state;
    exec_ok(db, pg ? "CREATE TABLE v (k BIGINT PRIMARY KEY, i BIGINT,"
                     " r DOUBLE PRECISION, s TEXT, b BYTEA)"
                   : "CREATE TABLE v (k INTEGER PRIMARY KEY, i INTEGER,"
                     " r REAL, s TEXT, b BLOB)");
    assert_int_equal(cq_rdb_prepare(db,
                                    "INSERT INTO v (k, i, r, s, b)"
                                    " VALUES (?1, ?2, ?3, ?4, ?5)",
                                    CQ_RDB_PERSISTENT, &ins, err, sizeof err),
                     CQ_OK);
    assert_int_equal(cq_rdb_prepare(db, "SELECT i, r, s, b FROM v WHERE k = ?1",
                                    CQ_RDB_PERSISTENT, &sel, err, sizeof err),
                     CQ_OK);
    for (int k = 0; k < 6; k++) {
        cq_rstmt_bind_int(ins, 1, k);
        cq_rstmt_bind_int(ins, 2, ints[k % 5]);
        cq_rstmt_bind_double(ins, 3, reals[k]);
        if (k == 5) {
            cq_rstmt_bind_text(ins, 4, "", 0);
            cq_rstmt_bind_blob(ins, 5, blob, 0);
        } else {
            /* a length that stops before the NUL: only those bytes */
            cq_rstmt_bind_text(ins, 4, utf8, (int)strlen(utf8) - k);
            cq_rstmt_bind_blob(ins, 5, blob, (int)sizeof blob - k);
        }
        assert_int_equal(cq_rstmt_run(ins), CQ_OK);
        cq_rstmt_clear(ins);
    }
    for (int k = 0; k < 6; k++) {
        const char *s;
        cq_rstmt_bind_int(sel, 1, k);
        assert_int_equal(cq_rstmt_step(sel), CQ_RSTEP_ROW);
        assert_int_equal(cq_rstmt_column_type(sel, 0), CQ_RTYPE_INT);
        assert_true(cq_rstmt_column_int(sel, 0) == ints[k % 5]);
        assert_int_equal(cq_rstmt_column_type(sel, 1), CQ_RTYPE_REAL);
        assert_true(cq_rstmt_column_double(sel, 1) == reals[k]);
        assert_int_equal(cq_rstmt_column_type(sel, 2), CQ_RTYPE_TEXT);
        s = cq_rstmt_column_text(sel, 2);
        if (k == 5) {
            assert_string_equal(s, "");
            assert_int_equal(cq_rstmt_column_bytes(sel, 2), 0);
            assert_int_equal(cq_rstmt_column_bytes(sel, 3), 0);
        } else {
            assert_int_equal(cq_rstmt_column_bytes(sel, 2),
                             (int)strlen(utf8) - k);
            assert_memory_equal(s, utf8, strlen(utf8) - (size_t)k);
            assert_int_equal(cq_rstmt_column_type(sel, 3), CQ_RTYPE_BLOB);
            assert_int_equal(cq_rstmt_column_bytes(sel, 3),
                             (int)sizeof blob - k);
            assert_memory_equal(cq_rstmt_column_blob(sel, 3), blob,
                                sizeof blob - (size_t)k);
            /* text read first stays valid while other columns are read */
            assert_memory_equal(s, utf8, strlen(utf8) - (size_t)k);
        }
        assert_int_equal(cq_rstmt_step(sel), CQ_RSTEP_DONE);
        cq_rstmt_reset(sel);
    }
    cq_rstmt_finalize(sel);
    cq_rstmt_finalize(ins);

    /* parameters typed by their context: 64-bit integers and doubles
     * where PostgreSQL would read an integer (COALESCE(?, 0), ? > 0) */
    assert_int_equal(cq_rdb_prepare(db,
                                    "SELECT COALESCE(?1, 0), CASE WHEN ?2 > 0"
                                    " THEN 'pos' ELSE 'neg' END, ?3 + 1",
                                    CQ_RDB_PERSISTENT, &sel, err, sizeof err),
                     CQ_OK);
    cq_rstmt_bind_int(sel, 1, INT64_C(5000000000));
    cq_rstmt_bind_int(sel, 2, INT64_C(-5000000000));
    cq_rstmt_bind_int(sel, 3, INT64_C(4000000000));
    assert_int_equal(cq_rstmt_step(sel), CQ_RSTEP_ROW);
    assert_int_equal(cq_rstmt_column_int(sel, 0), INT64_C(5000000000));
    assert_string_equal(cq_rstmt_column_text(sel, 1), "neg");
    assert_int_equal(cq_rstmt_column_int(sel, 2), INT64_C(4000000001));
    cq_rstmt_reset(sel);
    cq_rstmt_bind_null(sel, 1);
    assert_int_equal(cq_rstmt_step(sel), CQ_RSTEP_ROW);
    assert_int_equal(cq_rstmt_column_int(sel, 0), 0);
    cq_rstmt_finalize(sel);

    if (pg) {
        /* booleans read as 1/0, numerics and float4 as reals, other types
         * as their text */
        assert_int_equal(cq_rdb_prepare(db,
                                        "SELECT true, false, CAST(2.5 AS"
                                        " NUMERIC), CAST(0.5 AS REAL),"
                                        " CAST(7 AS SMALLINT), DATE"
                                        " '2024-01-02', CAST(NULL AS BIGINT)",
                                        0, &sel, err, sizeof err),
                         CQ_OK);
        assert_int_equal(cq_rstmt_step(sel), CQ_RSTEP_ROW);
        assert_int_equal(cq_rstmt_column_type(sel, 0), CQ_RTYPE_INT);
        assert_int_equal(cq_rstmt_column_int(sel, 0), 1);
        assert_string_equal(cq_rstmt_column_text(sel, 0), "1");
        assert_int_equal(cq_rstmt_column_int(sel, 1), 0);
        assert_int_equal(cq_rstmt_column_type(sel, 2), CQ_RTYPE_REAL);
        assert_true(cq_rstmt_column_double(sel, 2) == 2.5);
        assert_int_equal(cq_rstmt_column_int(sel, 2), 2);
        assert_int_equal(cq_rstmt_column_type(sel, 3), CQ_RTYPE_REAL);
        assert_int_equal(cq_rstmt_column_type(sel, 4), CQ_RTYPE_INT);
        assert_int_equal(cq_rstmt_column_int(sel, 4), 7);
        assert_int_equal(cq_rstmt_column_type(sel, 5), CQ_RTYPE_TEXT);
        assert_string_equal(cq_rstmt_column_text(sel, 5), "2024-01-02");
        assert_int_equal(cq_rstmt_column_type(sel, 6), CQ_RTYPE_NULL);
        cq_rstmt_finalize(sel);
    }
    cq_rdb_close(db);
}

/* PostgreSQL keeps persistent statements for the connection and
 * deallocates the others at finalize, also one finalized in a failed
 * transaction (once it has ended) */
static void test_pg_statement_life(void **state)
{
    static const char count[] = "SELECT count(*) FROM pg_prepared_statements";
    cq_rdb *db = open_db();
    cq_rstmt *st = NULL;
    int64_t base;

    (void)state;
    base = select_int(db, count);
    assert_int_equal(cq_rdb_prepare(db, "SELECT 1", 0, &st, err, sizeof err),
                     CQ_OK);
    assert_int_equal(select_int(db, count), base + 1);
    cq_rstmt_finalize(st);
    assert_int_equal(select_int(db, count), base);
    assert_int_equal(
        cq_rdb_prepare(db, "SELECT 2", CQ_RDB_PERSISTENT, &st, err, sizeof err),
        CQ_OK);
    cq_rstmt_finalize(st);
    assert_int_equal(select_int(db, count), base + 1);
    /* found again by its text: not prepared twice */
    assert_int_equal(
        cq_rdb_prepare(db, "SELECT 2", CQ_RDB_PERSISTENT, &st, err, sizeof err),
        CQ_OK);
    assert_int_equal(cq_rstmt_step(st), CQ_RSTEP_ROW);
    assert_int_equal(cq_rstmt_column_int(st, 0), 2);
    cq_rstmt_finalize(st);
    assert_int_equal(select_int(db, count), base + 1);

    assert_int_equal(cq_rdb_prepare(db, "SELECT 3", 0, &st, err, sizeof err),
                     CQ_OK);
    exec_ok(db, "BEGIN");
    assert_int_equal(cq_rdb_exec(db, "SELECT 1/0", err, sizeof err), CQ_EINVAL);
    cq_rstmt_finalize(st); /* in a failed transaction: later */
    exec_ok(db, "ROLLBACK");
    exec_ok(db, "SELECT 1");
    assert_int_equal(select_int(db, count), base + 1);

    /* a table made anew under a persistent query's feet, with other
     * columns (a rebuild's swap of a changed definition): the query reads
     * the new ones at once, as on SQLite */
    exec_ok(db, "CREATE TABLE w (a BIGINT)");
    assert_int_equal(cq_rdb_prepare(db, "SELECT * FROM w", CQ_RDB_PERSISTENT,
                                    &st, err, sizeof err),
                     CQ_OK);
    assert_int_equal(cq_rstmt_step(st), CQ_RSTEP_DONE);
    cq_rstmt_reset(st);
    exec_ok(db, "BEGIN; ALTER TABLE w RENAME TO w_old;"
                "CREATE TABLE w (a BIGINT, b TEXT);"
                "INSERT INTO w VALUES (1, 'x'); COMMIT");
    assert_int_equal(cq_rstmt_step(st), CQ_RSTEP_ROW);
    assert_int_equal(cq_rstmt_column_count(st), 2);
    assert_string_equal(cq_rstmt_column_text(st, 1), "x");
    cq_rstmt_finalize(st);

    /* a statement the server forgot (DEALLOCATE ALL) is prepared anew:
     * outside a transaction it runs at once (nothing failed with it);
     * inside one it fails once, with the transaction */
    assert_int_equal(cq_rdb_prepare(db, "INSERT INTO w (a) VALUES (?1)",
                                    CQ_RDB_PERSISTENT, &st, err, sizeof err),
                     CQ_OK);
    cq_rstmt_bind_int(st, 1, 2);
    exec_ok(db, "DEALLOCATE ALL");
    assert_int_equal(cq_rstmt_run(st), CQ_OK);
    exec_ok(db, "BEGIN; DEALLOCATE ALL");
    assert_int_equal(cq_rstmt_run(st), CQ_EINVAL);
    exec_ok(db, "ROLLBACK");
    assert_int_equal(cq_rstmt_run(st), CQ_OK);
    cq_rstmt_finalize(st);
    assert_int_equal(select_int(db, "SELECT count(*) FROM w"), 3);
    cq_rdb_close(db);
}

/* Terminate db's server process from another connection. */
static void kill_backend(cq_rdb *db, cq_rdb *other)
{
    char sql[128];

    snprintf(sql, sizeof sql, "SELECT pg_terminate_backend(%lld)",
             (long long)select_int(db, "SELECT pg_backend_pid()"));
    exec_ok(other, sql);
    usleep(100000);
}

/* A read-only connection whose server process went away (PostgreSQL
 * restarted) connects again by itself when no transaction was open,
 * prepared statements included; not inside a transaction, not one that
 * writes, not one that listens: those fail, and the caller decides. */
static void test_pg_revive(void **state)
{
    char *uri = NULL;
    cq_rdb *w = open_db_uri(&uri), *r = NULL;
    cq_rstmt *q = NULL, *ins = NULL;

    (void)state;
    exec_ok(w, "CREATE TABLE t (a BIGINT); INSERT INTO t VALUES (1)");
    assert_int_equal(
        cq_rdb_open(uri, CQ_RDB_READONLY, 1000, &r, err, sizeof err), CQ_OK);
    assert_int_equal(cq_rdb_prepare(r, "SELECT a FROM t WHERE a = ?1",
                                    CQ_RDB_PERSISTENT, &q, err, sizeof err),
                     CQ_OK);
    kill_backend(r, w);
    cq_rstmt_bind_int(q, 1, 1);
    assert_int_equal(cq_rstmt_step(q), CQ_RSTEP_ROW);
    cq_rstmt_reset(q);
    kill_backend(r, w);
    exec_ok(r, "BEGIN"); /* the read transaction of a query */
    assert_int_equal(cq_rstmt_step(q), CQ_RSTEP_ROW);
    cq_rstmt_reset(q);
    exec_ok(r, "COMMIT");
    /* still read-only after it came back */
    assert_int_equal(
        cq_rdb_exec(r, "INSERT INTO t VALUES (2)", err, sizeof err), CQ_EIO);
    /* inside a transaction: the failure is the caller's to see */
    exec_ok(r, "BEGIN");
    assert_int_equal(cq_rstmt_step(q), CQ_RSTEP_ROW);
    cq_rstmt_reset(q);
    kill_backend(r, w);
    assert_int_equal(cq_rstmt_step(q), CQ_EIO);
    assert_int_equal(cq_rdb_in_transaction(r), 0);
    cq_rstmt_reset(q);
    exec_ok(r, "ROLLBACK"); /* as the caller does: and it is back */
    assert_int_equal(cq_rstmt_step(q), CQ_RSTEP_ROW);
    cq_rstmt_finalize(q);
    cq_rdb_close(r);

    /* a connection that writes is not connected again behind its back */
    assert_int_equal(cq_rdb_open(uri, 0, 1000, &r, err, sizeof err), CQ_OK);
    assert_int_equal(cq_rdb_prepare(r, "INSERT INTO t VALUES (?1)",
                                    CQ_RDB_PERSISTENT, &ins, err, sizeof err),
                     CQ_OK);
    kill_backend(r, w);
    cq_rstmt_bind_int(ins, 1, 3);
    assert_int_equal(cq_rstmt_run(ins), CQ_EIO);
    cq_rstmt_finalize(ins);
    cq_rdb_close(r);
    assert_int_equal(select_int(w, "SELECT count(*) FROM t"), 1);
    cq_rdb_close(w);
    free(uri);
}

/* advisory locks by name: a second connection cannot take a held lock,
 * and can once the holder released it or its connection ended; SQLite
 * says it has none */
static void test_locks(void **state)
{
    char *uri = NULL;
    cq_rdb *a = open_db_uri(&uri), *b = NULL, *c = NULL;
    int got = -1;

    (void)state;
    if (!pg) {
        assert_int_equal(cq_rdb_try_lock(a, "cqrsd:x", &got), CQ_EINVAL);
        assert_int_equal(got, 0);
        assert_int_equal(cq_rdb_errcode(a), CQ_EINVAL);
        assert_string_equal(cq_rdb_errmsg(a), "not supported by sqlite");
        assert_int_equal(cq_rdb_unlock(a, "cqrsd:x"), CQ_EINVAL);
        assert_int_equal(cq_rdb_notify(a, "ch", "p"), CQ_EINVAL);
        assert_int_equal(cq_rdb_listen(a, "ch"), CQ_EINVAL);
        assert_int_equal(cq_rdb_wait_notify(a, 0, NULL, 0, NULL, 0), CQ_EINVAL);
        exec_ok(a, "SELECT 1");
        assert_int_equal(cq_rdb_errcode(a), CQ_OK);
        cq_rdb_close(a);
        return;
    }
    assert_int_equal(cq_rdb_open(uri, 0, 0, &b, err, sizeof err), CQ_OK);
    assert_int_equal(cq_rdb_open(uri, 0, 0, &c, err, sizeof err), CQ_OK);
    assert_int_equal(cq_rdb_try_lock(a, "cqrsd:projection:x", &got), CQ_OK);
    assert_int_equal(got, 1);
    assert_int_equal(cq_rdb_try_lock(b, "cqrsd:projection:x", &got), CQ_OK);
    assert_int_equal(got, 0);
    assert_int_equal(cq_rdb_try_lock(b, "cqrsd:projection:y", &got), CQ_OK);
    assert_int_equal(got, 1);
    /* taken twice by a: released by two unlocks */
    assert_int_equal(cq_rdb_try_lock(a, "cqrsd:projection:x", &got), CQ_OK);
    assert_int_equal(got, 1);
    assert_int_equal(cq_rdb_unlock(a, "cqrsd:projection:x"), CQ_OK);
    assert_int_equal(cq_rdb_try_lock(b, "cqrsd:projection:x", &got), CQ_OK);
    assert_int_equal(got, 0);
    assert_int_equal(cq_rdb_unlock(a, "cqrsd:projection:x"), CQ_OK);
    /* unlocking what one does not hold changes nothing */
    assert_int_equal(cq_rdb_unlock(a, "cqrsd:projection:x"), CQ_OK);
    assert_int_equal(cq_rdb_unlock(a, "cqrsd:projection:y"), CQ_OK);
    assert_int_equal(cq_rdb_try_lock(b, "cqrsd:projection:x", &got), CQ_OK);
    assert_int_equal(got, 1);
    /* a lock outlives a transaction rolled back */
    exec_ok(c, "BEGIN");
    assert_int_equal(cq_rdb_try_lock(c, "cqrsd:relay", &got), CQ_OK);
    assert_int_equal(got, 1);
    exec_ok(c, "ROLLBACK");
    assert_int_equal(cq_rdb_try_lock(a, "cqrsd:relay", &got), CQ_OK);
    assert_int_equal(got, 0);
    /* the holder's connection ends: the lock is free */
    cq_rdb_close(c);
    for (int i = 0; i < 100 && got == 0; i++) {
        assert_int_equal(cq_rdb_try_lock(a, "cqrsd:relay", &got), CQ_OK);
        if (!got)
            usleep(20000); /* the server ends the session after we left */
    }
    assert_int_equal(got, 1);
    cq_rdb_close(b);
    cq_rdb_close(a);
    free(uri);
}

static int64_t ms_now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* notifications: delivered when the sender's transaction commits, never
 * when it rolls back; a wait ends at its timeout; those that arrived
 * while the listener ran statements are handed out first; a listener
 * whose connection ended is told so */
static void test_notify(void **state)
{
    char *uri = NULL, ch[64], pl[64], sql[128];
    cq_rdb *a, *b = NULL;
    int64_t t0, pid;

    (void)state;
    if (!pg)
        return; /* test_locks checks that SQLite has none */
    a = open_db_uri(&uri);
    assert_int_equal(cq_rdb_open(uri, 0, 0, &b, err, sizeof err), CQ_OK);
    assert_int_equal(cq_rdb_listen(a, "cq_events"), CQ_OK);
    assert_int_equal(cq_rdb_listen(a, "Mixed Case"), CQ_OK);

    exec_ok(b, "BEGIN");
    assert_int_equal(cq_rdb_notify(b, "cq_events", "17"), CQ_OK);
    assert_int_equal(cq_rdb_wait_notify(a, 100, ch, sizeof ch, pl, sizeof pl),
                     0);
    exec_ok(b, "COMMIT");
    assert_int_equal(cq_rdb_wait_notify(a, 5000, ch, sizeof ch, pl, sizeof pl),
                     1);
    assert_string_equal(ch, "cq_events");
    assert_string_equal(pl, "17");

    exec_ok(b, "BEGIN");
    assert_int_equal(cq_rdb_notify(b, "cq_events", "18"), CQ_OK);
    exec_ok(b, "ROLLBACK");
    t0 = ms_now();
    assert_int_equal(cq_rdb_wait_notify(a, 300, ch, sizeof ch, pl, sizeof pl),
                     0);
    assert_true(ms_now() - t0 >= 290);
    assert_true(ms_now() - t0 < 3000);

    /* outside a transaction: at once; the channel as it was spelled; a
     * channel nobody listens to is not seen */
    assert_int_equal(cq_rdb_notify(b, "other", "x"), CQ_OK);
    assert_int_equal(cq_rdb_notify(b, "Mixed Case", "NAME:42"), CQ_OK);
    assert_int_equal(cq_rdb_notify(b, "cq_events", NULL), CQ_OK);
    assert_int_equal(cq_rdb_wait_notify(a, 5000, ch, sizeof ch, pl, sizeof pl),
                     1);
    assert_string_equal(ch, "Mixed Case");
    assert_string_equal(pl, "NAME:42");
    /* cut to fit */
    assert_int_equal(cq_rdb_wait_notify(a, 5000, ch, 4, pl, sizeof pl), 1);
    assert_string_equal(ch, "cq_");
    assert_string_equal(pl, "");

    /* arrived while a ran a statement: queued, handed out without a wait */
    assert_int_equal(cq_rdb_notify(b, "cq_events", "19"), CQ_OK);
    usleep(100000);
    exec_ok(a, "SELECT 1");
    assert_int_equal(cq_rdb_wait_notify(a, 0, ch, sizeof ch, pl, sizeof pl), 1);
    assert_string_equal(pl, "19");
    assert_int_equal(cq_rdb_wait_notify(a, 0, ch, sizeof ch, pl, sizeof pl), 0);

    /* the listener's connection ends under it */
    pid = select_int(a, "SELECT pg_backend_pid()");
    snprintf(sql, sizeof sql, "SELECT pg_terminate_backend(%lld)",
             (long long)pid);
    exec_ok(b, sql);
    assert_true(cq_rdb_wait_notify(a, 5000, ch, sizeof ch, pl, sizeof pl) < 0);
    assert_int_equal(cq_rdb_errcode(a), CQ_EIO);
    cq_rdb_close(b);
    cq_rdb_close(a);
    free(uri);
}

/* The event store's write connection as a view (cq_store_write_rdb):
 * cq_rdb_close on it leaves it, and the store, working; the store closes
 * it. Under ASan this also checks that nothing is freed twice. */
static void test_store_write_view(void **state)
{
    char dir[4096];
    cq_store_config cfg;
    cq_store *s = NULL;
    cq_rdb *view, *ro = NULL;
    cq_rstmt *st = NULL;
    int64_t head = -1;

    (void)state;
    if (pg)
        return; /* the SQLite event store's */
    temp_dir(dir, sizeof dir);
    memset(&cfg, 0, sizeof cfg);
    cfg.dir = dir;
    assert_int_equal(cq_store_open(&cfg, &s, err, sizeof err), CQ_OK);
    view = cq_store_write_rdb(s);
    assert_non_null(view);
    exec_ok(view, "CREATE TABLE inline_t (a)");
    cq_rdb_close(view);
    assert_ptr_equal(cq_store_write_rdb(s), view);
    exec_ok(view, "INSERT INTO inline_t VALUES (7)");
    assert_int_equal(cq_store_head_position(s, &head), CQ_OK);
    assert_int_equal(head, 0);

    /* a new read-only connection sees what the view committed */
    assert_int_equal(cq_store_open_rdb(s, &ro, err, sizeof err), CQ_OK);
    assert_int_equal(
        cq_rdb_prepare(ro, "SELECT a FROM inline_t", 0, &st, err, sizeof err),
        CQ_OK);
    assert_int_equal(cq_rstmt_step(st), CQ_RSTEP_ROW);
    assert_int_equal(cq_rstmt_column_int(st, 0), 7);
    cq_rstmt_finalize(st);
    assert_int_equal(
        cq_rdb_exec(ro, "INSERT INTO inline_t VALUES (8)", err, sizeof err),
        CQ_EIO);
    cq_rdb_close(ro);
    cq_store_close(s);
    remove_dir(dir);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_statements),
        cmocka_unit_test(test_errcodes),
        cmocka_unit_test(test_in_transaction),
        cmocka_unit_test(test_snapshot),
        cmocka_unit_test(test_schema),
        cmocka_unit_test(test_wal_bytes),
        cmocka_unit_test(test_format_real),
        cmocka_unit_test(test_borrowed_view),
        cmocka_unit_test(test_placeholders),
        cmocka_unit_test(test_types),
        cmocka_unit_test(test_locks),
        cmocka_unit_test(test_notify),
        cmocka_unit_test(test_store_write_view),
    };
    const struct CMUnitTest pg_tests[] = {
        cmocka_unit_test(test_pg_wrap),
        cmocka_unit_test(test_pg_statement_life),
        cmocka_unit_test(test_pg_revive),
    };
    int failed;

    pg = argc > 1 && strcmp(argv[1], "pg") == 0;
    failed =
        cmocka_run_group_tests_name(pg ? "rdb_pg" : "rdb", tests, NULL, NULL);
    if (pg)
        failed +=
            cmocka_run_group_tests_name("rdb_pg_only", pg_tests, NULL, NULL);
    return failed;
}
