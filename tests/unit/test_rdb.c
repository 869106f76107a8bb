/*
 * test_rdb.c -- unit tests of the read-store interface (src/store/rdb.h)
 * on its SQLite backend: connections, statements and their columns, the
 * mapping of the backend's failures to CQ_* codes, transactions, schema
 * introspection, the write-ahead log's size, and the event store's view of
 * its write connection.
 *
 * Databases are in-memory or files under $TMPDIR (removed at the end).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "cqrs/cqrs.h"
#include "store/rdb.h"
#include "store/store.h"

static char err[512];

static cq_rdb *open_memory(void)
{
    cq_rdb *db = NULL;

    assert_int_equal(
        cq_rdb_open(":memory:", CQ_RDB_CREATE, 0, &db, err, sizeof err), CQ_OK);
    assert_non_null(db);
    return db;
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

/* open, exec, prepare, bind of every type, step, columns, reset, clear */
static void test_statements(void **state)
{
    cq_rdb *db = open_memory();
    cq_rstmt *st = NULL;
    char text[] = "borrowed";
    const unsigned char blob[3] = {0, 1, 0xff};

    (void)state;
    assert_string_equal(cq_rdb_backend(db), "sqlite");
    assert_int_equal(cq_rdb_exec(db,
                                 "CREATE TABLE t (i INTEGER, r REAL, s TEXT,"
                                 " b BLOB, n TEXT);"
                                 "CREATE INDEX t_i ON t (i)",
                                 err, sizeof err),
                     CQ_OK);
    assert_int_equal(cq_rdb_prepare(db,
                                    "INSERT INTO t VALUES (?1, ?2, ?3, ?4, ?5)",
                                    CQ_RDB_PERSISTENT, &st, err, sizeof err),
                     CQ_OK);
    assert_ptr_equal(cq_rstmt_db(st), db);
    assert_int_equal(cq_rstmt_bind_int(st, 1, INT64_C(1) << 40), CQ_OK);
    assert_int_equal(cq_rstmt_bind_double(st, 2, 2.5), CQ_OK);
    assert_int_equal(cq_rstmt_bind_text(st, 3, text, -1), CQ_OK);
    assert_int_equal(cq_rstmt_bind_blob(st, 4, blob, 3), CQ_OK);
    assert_int_equal(cq_rstmt_bind_null(st, 5), CQ_OK);
    assert_int_equal(cq_rstmt_bind_int(st, 6, 1), CQ_EINVAL); /* no ?6 */
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
                                    " ORDER BY rowid",
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
    cq_rstmt_finalize(st);
    cq_rstmt_finalize(NULL);

    /* a statement that does not compile: the SQL and why, in err */
    st = (cq_rstmt *)&st;
    assert_int_equal(
        cq_rdb_prepare(db, "SELECT nope FROM t", 0, &st, err, sizeof err),
        CQ_EINVAL);
    assert_null(st);
    assert_non_null(strstr(err, "SELECT nope FROM t: "));
    assert_non_null(strstr(err, "no such column"));
    assert_non_null(strstr(cq_rdb_errmsg(db), "no such column"));
    assert_int_equal(cq_rdb_prepare(db, "  ", 0, &st, err, sizeof err),
                     CQ_EINVAL);
    assert_int_equal(cq_rdb_exec(db, "SELEC 1", err, sizeof err), CQ_EINVAL);
    assert_non_null(strstr(err, "syntax error"));
    assert_int_equal(cq_rdb_exec(db, "SELEC 1", NULL, 0), CQ_EINVAL);
    cq_rdb_close(db);
    cq_rdb_close(NULL);
}

/* the backend's failures as CQ_* codes: a constraint is the statement's
 * fault (CQ_EINVAL), a lock held by another connection is CQ_EBUSY; a file
 * that cannot be opened is CQ_EIO, naming it */
static void test_errcodes(void **state)
{
    char dir[4096], path[4200];
    cq_rdb *a = NULL, *b = NULL;
    cq_rstmt *st = NULL;

    (void)state;
    temp_dir(dir, sizeof dir);
    snprintf(path, sizeof path, "%s/x.db", dir);
    assert_int_equal(cq_rdb_open(path, CQ_RDB_CREATE, 0, &a, err, sizeof err),
                     CQ_OK);
    assert_int_equal(cq_rdb_errcode(a), CQ_OK);
    assert_int_equal(
        cq_rdb_exec(a, "CREATE TABLE k (id TEXT PRIMARY KEY)", err, sizeof err),
        CQ_OK);
    assert_int_equal(
        cq_rdb_exec(a, "INSERT INTO k VALUES ('x')", err, sizeof err), CQ_OK);
    assert_int_equal(cq_rdb_prepare(a, "INSERT INTO k VALUES ('x')", 0, &st,
                                    err, sizeof err),
                     CQ_OK);
    assert_int_equal(cq_rstmt_step(st), CQ_EINVAL);
    assert_int_equal(cq_rdb_errcode(a), CQ_EINVAL);
    assert_non_null(strstr(cq_rdb_errmsg(a), "UNIQUE"));
    cq_rstmt_reset(st);
    assert_int_equal(cq_rstmt_run(st), CQ_EINVAL);
    cq_rstmt_finalize(st);

    /* b (no busy wait) meets a's write lock */
    assert_int_equal(cq_rdb_open(path, 0, 0, &b, err, sizeof err), CQ_OK);
    assert_int_equal(cq_rdb_exec(a, "BEGIN IMMEDIATE", err, sizeof err), CQ_OK);
    assert_int_equal(cq_rdb_exec(b, "BEGIN IMMEDIATE", err, sizeof err),
                     CQ_EBUSY);
    assert_int_equal(cq_rdb_errcode(b), CQ_EBUSY);
    assert_int_equal(cq_rdb_prepare(b, "INSERT INTO k VALUES ('y')", 0, &st,
                                    err, sizeof err),
                     CQ_OK);
    assert_int_equal(cq_rstmt_step(st), CQ_EBUSY);
    cq_rstmt_finalize(st);
    assert_int_equal(cq_rdb_exec(a, "COMMIT", err, sizeof err), CQ_OK);
    cq_rdb_close(b);
    cq_rdb_close(a);

    /* read-only: writing is refused as the file's trouble, not the SQL's */
    assert_int_equal(cq_rdb_open(path, CQ_RDB_READONLY, 0, &a, err, sizeof err),
                     CQ_OK);
    assert_int_equal(
        cq_rdb_exec(a, "INSERT INTO k VALUES ('z')", err, sizeof err), CQ_EIO);
    cq_rdb_close(a);

    snprintf(path, sizeof path, "%s/missing/x.db", dir);
    a = (cq_rdb *)&a;
    assert_int_equal(cq_rdb_open(path, CQ_RDB_CREATE, 0, &a, err, sizeof err),
                     CQ_EIO);
    assert_null(a);
    assert_non_null(strstr(err, path));
    remove_dir(dir);
}

/* cq_rdb_in_transaction follows BEGIN/COMMIT/ROLLBACK, and tells when the
 * backend ended the transaction on its own */
static void test_in_transaction(void **state)
{
    cq_rdb *db = open_memory();

    (void)state;
    assert_int_equal(cq_rdb_in_transaction(db), 0);
    assert_int_equal(cq_rdb_exec(db, "BEGIN", err, sizeof err), CQ_OK);
    assert_int_equal(cq_rdb_in_transaction(db), 1);
    assert_int_equal(cq_rdb_exec(db, "CREATE TABLE t (a)", err, sizeof err),
                     CQ_OK);
    assert_int_equal(cq_rdb_exec(db, "COMMIT", err, sizeof err), CQ_OK);
    assert_int_equal(cq_rdb_in_transaction(db), 0);
    assert_int_equal(cq_rdb_exec(db, "BEGIN; SAVEPOINT s", err, sizeof err),
                     CQ_OK);
    assert_int_equal(cq_rdb_in_transaction(db), 1);
    assert_int_equal(cq_rdb_exec(db, "ROLLBACK", err, sizeof err), CQ_OK);
    assert_int_equal(cq_rdb_in_transaction(db), 0);
    /* a conflict clause that aborts the whole transaction */
    assert_int_equal(cq_rdb_exec(db,
                                 "CREATE TABLE u (a NOT NULL ON CONFLICT"
                                 " ROLLBACK)",
                                 err, sizeof err),
                     CQ_OK);
    assert_int_equal(cq_rdb_exec(db, "BEGIN", err, sizeof err), CQ_OK);
    assert_int_equal(
        cq_rdb_exec(db, "INSERT INTO u VALUES (NULL)", err, sizeof err),
        CQ_EINVAL);
    assert_int_equal(cq_rdb_in_transaction(db), 0);
    cq_rdb_close(db);
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

static int column_cb(void *arg, const char *column, int pk)
{
    char *out = arg;

    sprintf(out + strlen(out), "%s:%d,", column, pk);
    return 0;
}

/* object_exists (tables and indexes, any case), tables (in creation
 * order, the backend's own left out, by suffix), columns (with their
 * place in the primary key) */
static void test_schema(void **state)
{
    cq_rdb *db = open_memory();
    char got[256] = "";
    int exists = -1, n = 0;

    (void)state;
    assert_int_equal(cq_rdb_exec(db,
                                 "CREATE TABLE orders (b TEXT, a TEXT, c INT,"
                                 " PRIMARY KEY (a, b));"
                                 "CREATE TABLE orders__cq_old (x);"
                                 "CREATE TABLE lines__cq_old (x);"
                                 "CREATE TABLE \"Mixed\" (x INTEGER PRIMARY KEY"
                                 " AUTOINCREMENT);" /* makes sqlite_sequence */
                                 "CREATE INDEX orders_c ON orders (c)",
                                 err, sizeof err),
                     CQ_OK);
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

    got[0] = '\0';
    assert_int_equal(
        cq_rdb_columns(db, "orders", column_cb, got, err, sizeof err), CQ_OK);
    assert_string_equal(got, "b:2,a:1,c:0,");
    assert_int_equal(
        cq_rdb_columns(db, "nothing", column_cb, got, err, sizeof err),
        CQ_ENOTFOUND);
    cq_rdb_close(db);
}

/* the -wal file's size: -1 without one (in memory, rollback journal),
 * its bytes once a WAL database has been written */
static void test_wal_bytes(void **state)
{
    char dir[4096], path[4200];
    cq_rdb *db = open_memory();

    (void)state;
    assert_int_equal(cq_rdb_wal_bytes(db), -1);
    cq_rdb_close(db);
    temp_dir(dir, sizeof dir);
    snprintf(path, sizeof path, "%s/w.db", dir);
    assert_int_equal(cq_rdb_open(path, CQ_RDB_CREATE, 0, &db, err, sizeof err),
                     CQ_OK);
    assert_int_equal(cq_rdb_exec(db, "CREATE TABLE t (a)", err, sizeof err),
                     CQ_OK);
    assert_int_equal(cq_rdb_wal_bytes(db), -1); /* rollback journal */
    assert_int_equal(cq_rdb_exec(db,
                                 "PRAGMA journal_mode = WAL;"
                                 " INSERT INTO t VALUES (1)",
                                 err, sizeof err),
                     CQ_OK);
    assert_true(cq_rdb_wal_bytes(db) > 0);
    cq_rdb_close(db);
    remove_dir(dir);
}

/* REALs as SQLite shows them (verify's reports depend on it) */
static void test_format_real(void **state)
{
    cq_rdb *db = open_memory();
    char buf[64];

    (void)state;
    cq_rdb_format_real(db, 2.0, buf, sizeof buf);
    assert_string_equal(buf, "2.0");
    cq_rdb_format_real(db, 1.5, buf, sizeof buf);
    assert_string_equal(buf, "1.5");
    cq_rdb_format_real(db, 0.1, buf, sizeof buf);
    assert_string_equal(buf, "0.10000000000000001");
    cq_rdb_format_real(db, 1e20, buf, sizeof buf);
    assert_string_equal(buf, "1.0e+20");
    cq_rdb_format_real(db, 1.5, buf, 3);
    assert_string_equal(buf, "1.");
    cq_rdb_close(db);
}

/* A view of a connection someone else owns: cq_rdb_close neither closes
 * the connection nor makes the view unusable. */
static void test_borrowed_view(void **state)
{
    cq_rdb *db = open_memory(), *view;
    cq_rstmt *st = NULL;

    (void)state;
    view = cq_rdb_wrap(&cq_rdb_sqlite_ops, cq_rdb_impl(db), 0);
    assert_non_null(view);
    assert_int_equal(cq_rdb_exec(view, "CREATE TABLE t (a)", err, sizeof err),
                     CQ_OK);
    cq_rdb_close(view);
    cq_rdb_close(view);
    assert_int_equal(
        cq_rdb_exec(view, "INSERT INTO t VALUES (1)", err, sizeof err), CQ_OK);
    assert_int_equal(
        cq_rdb_prepare(db, "SELECT count(*) FROM t", 0, &st, err, sizeof err),
        CQ_OK);
    assert_int_equal(cq_rstmt_step(st), CQ_RSTEP_ROW);
    assert_int_equal(cq_rstmt_column_int(st, 0), 1);
    cq_rstmt_finalize(st);
    cq_rdb_close(db); /* the view goes with its connection */
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
    temp_dir(dir, sizeof dir);
    memset(&cfg, 0, sizeof cfg);
    cfg.dir = dir;
    assert_int_equal(cq_store_open(&cfg, &s, err, sizeof err), CQ_OK);
    view = cq_store_write_rdb(s);
    assert_non_null(view);
    assert_int_equal(
        cq_rdb_exec(view, "CREATE TABLE inline_t (a)", err, sizeof err), CQ_OK);
    cq_rdb_close(view);
    assert_ptr_equal(cq_store_write_rdb(s), view);
    assert_int_equal(
        cq_rdb_exec(view, "INSERT INTO inline_t VALUES (7)", err, sizeof err),
        CQ_OK);
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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_statements),
        cmocka_unit_test(test_errcodes),
        cmocka_unit_test(test_in_transaction),
        cmocka_unit_test(test_schema),
        cmocka_unit_test(test_wal_bytes),
        cmocka_unit_test(test_format_real),
        cmocka_unit_test(test_borrowed_view),
        cmocka_unit_test(test_store_write_view),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
