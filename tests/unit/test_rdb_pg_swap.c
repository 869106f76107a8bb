/*
 * test_rdb_pg_swap.c -- unit tests of the read-store interface on PostgreSQL
 * alone (src/store/rdb_pg_stmt.c): a query stays prepared from one run to
 * the next, and a rebuild's swap of its table for one with other columns
 * makes it prepare again, whether the swap ran on a connection of this
 * process (seen up front, through the schema generation, even inside the
 * reader's transaction) or elsewhere (seen as PostgreSQL's 0A000: run
 * again at once outside a transaction, the transaction's failure inside
 * one).
 *
 * Runs on a fresh database of the cluster of ctest's `pg` fixture
 * (pgtest.h); fails without one.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "cqrs/cqrs.h"
#include "pgtest.h"
#include "store/rdb.h"

#define QUERY "SELECT * FROM v WHERE a > ?1 ORDER BY a"
/* QUERY as the server keeps it */
#define QUERY_PG "'SELECT * FROM v WHERE a > $1 ORDER BY a'"
/* the read transaction of src/query/read.c */
#define READ_BEGIN "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"

static char err[512];

static void exec_ok(cq_rdb *db, const char *sql)
{
    int rc = cq_rdb_exec(db, sql, err, sizeof err);
    if (rc != CQ_OK)
        fail_msg("%s: %s", sql, err);
}

static int64_t select_int(cq_rdb *db, const char *sql)
{
    cq_rstmt *st = NULL;
    int64_t v;

    assert_int_equal(cq_rdb_prepare(db, sql, 0, &st, err, sizeof err), CQ_OK);
    assert_int_equal(cq_rstmt_step(st), CQ_RSTEP_ROW);
    v = cq_rstmt_column_int(st, 0);
    cq_rstmt_finalize(st);
    return v;
}

/* How many times the server ran QUERY from a prepared statement on db's
 * session (pg_prepared_statements counts the plans it used). */
static int64_t prepared_runs(cq_rdb *db)
{
    return select_int(
        db, "SELECT COALESCE(sum(generic_plans + custom_plans), 0)::int8"
            " FROM pg_prepared_statements"
            " WHERE statement = " QUERY_PG);
}

/* Run the persistent query q once (bound to 0); its first row's column
 * count, or the failure's code (negative). */
static int run_query(cq_rstmt *q)
{
    int rc, n;

    cq_rstmt_reset(q);
    cq_rstmt_bind_int(q, 1, 0);
    rc = cq_rstmt_step(q);
    if (rc != CQ_RSTEP_ROW)
        return rc < 0 ? rc : 0;
    n = cq_rstmt_column_count(q);
    cq_rstmt_reset(q);
    return n;
}

/* v made anew with one column more (as a rebuild's swap to a new
 * definition: build aside, rename the live table away, rename the new one
 * in), through sql_exec on some connection. */
#define SWAP(n)                                                              \
    "BEGIN; CREATE TABLE v_new AS SELECT *, " n " AS c" n " FROM v;"           \
    " ALTER TABLE v RENAME TO v_old" n "; ALTER TABLE v_new RENAME TO v;"    \
    " COMMIT"

static void test_query_stays_prepared(void **state)
{
    char *uri = pgtest_database("rdbpg");
    cq_rdb *w = NULL, *r = NULL;
    cq_rstmt *q = NULL;

    (void)state;
    assert_non_null(uri);
    assert_int_equal(cq_rdb_open(uri, CQ_RDB_CREATE, 1000, &w, err, sizeof err),
                     CQ_OK);
    exec_ok(w, "CREATE TABLE v (a BIGINT PRIMARY KEY, b TEXT);"
               " INSERT INTO v VALUES (1, 'x'), (2, 'y')");
    assert_int_equal(
        cq_rdb_open(uri, CQ_RDB_READONLY, 1000, &r, err, sizeof err), CQ_OK);
    assert_int_equal(
        cq_rdb_prepare(r, QUERY, CQ_RDB_PERSISTENT, &q, err, sizeof err),
        CQ_OK);

    /* run three times, in read transactions: from the prepared statement
     * each time (a run from the text would leave its counters alone) */
    for (int i = 0; i < 3; i++) {
        exec_ok(r, READ_BEGIN);
        assert_int_equal(run_query(q), 2);
        exec_ok(r, "COMMIT");
    }
    assert_int_equal(prepared_runs(r), 3);

    /* a swap on another connection of this process, committed: the next
     * run, inside the reader's transaction, reads the new columns (a
     * prepared statement run as it was fails there, and so the whole
     * transaction) */
    exec_ok(w, SWAP("3"));
    exec_ok(r, READ_BEGIN);
    assert_int_equal(run_query(q), 3);
    assert_int_equal(cq_rdb_in_transaction(r), 1);
    exec_ok(r, "COMMIT");
    assert_int_equal(run_query(q), 3);
    /* prepared again once, and kept: the new statement ran both times; the
     * old one is gone from the session */
    assert_int_equal(prepared_runs(r), 2);
    assert_int_equal(select_int(r, "SELECT count(*) FROM pg_prepared_statements"
                                   " WHERE statement = " QUERY_PG),
                     1);

    /* another statement of the same text, prepared after the swap: the
     * cache's statement, not a new one */
    {
        cq_rstmt *q2 = NULL;
        assert_int_equal(
            cq_rdb_prepare(r, QUERY, CQ_RDB_PERSISTENT, &q2, err, sizeof err),
            CQ_OK);
        assert_int_equal(run_query(q2), 3);
        cq_rstmt_finalize(q2);
        assert_int_equal(prepared_runs(r), 3);
    }

    cq_rstmt_finalize(q);
    cq_rdb_close(r);
    cq_rdb_close(w);
    free(uri);
}

static void test_swap_elsewhere(void **state)
{
    char *uri = pgtest_database("rdbpg");
    cq_rdb *w = NULL, *r = NULL;
    cq_rstmt *q = NULL;
    PGconn *other;
    PGresult *res;

    (void)state;
    assert_non_null(uri);
    assert_int_equal(cq_rdb_open(uri, CQ_RDB_CREATE, 1000, &w, err, sizeof err),
                     CQ_OK);
    exec_ok(w, "CREATE TABLE v (a BIGINT PRIMARY KEY, b TEXT);"
               " INSERT INTO v VALUES (1, 'x')");
    assert_int_equal(
        cq_rdb_open(uri, CQ_RDB_READONLY, 1000, &r, err, sizeof err), CQ_OK);
    assert_int_equal(
        cq_rdb_prepare(r, QUERY, CQ_RDB_PERSISTENT, &q, err, sizeof err),
        CQ_OK);
    assert_int_equal(run_query(q), 2);

    /* a swap this process does not see (another node's): outside a
     * transaction the query is prepared again and runs at once */
    other = PQconnectdb(uri);
    assert_int_equal(PQstatus(other), CONNECTION_OK);
    res = PQexec(other, SWAP("3"));
    assert_int_equal(PQresultStatus(res), PGRES_COMMAND_OK);
    PQclear(res);
    assert_int_equal(run_query(q), 3);

    /* inside a transaction the failure is the transaction's: reported as
     * a refused statement (CQ_EINVAL), and the transaction run again
     * reads the new columns */
    res = PQexec(other, SWAP("4"));
    assert_int_equal(PQresultStatus(res), PGRES_COMMAND_OK);
    PQclear(res);
    exec_ok(r, READ_BEGIN);
    assert_int_equal(run_query(q), CQ_EINVAL);
    exec_ok(r, "ROLLBACK");
    exec_ok(r, READ_BEGIN);
    assert_int_equal(run_query(q), 4);
    exec_ok(r, "COMMIT");
    assert_int_equal(select_int(r, "SELECT count(*) FROM pg_prepared_statements"
                                   " WHERE statement = " QUERY_PG),
                     1);

    PQfinish(other);
    cq_rstmt_finalize(q);
    cq_rdb_close(r);
    cq_rdb_close(w);
    free(uri);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_query_stays_prepared),
        cmocka_unit_test(test_swap_elsewhere),
    };

    return cmocka_run_group_tests_name("rdb_pg", tests, NULL, NULL);
}
