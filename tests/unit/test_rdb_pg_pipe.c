/*
 * test_rdb_pg_pipe.c -- unit tests of savepoint statements that travel with
 * the next one on PostgreSQL (src/store/rdb_pg_pipe.c): inside a
 * transaction a persistent SAVEPOINT or RELEASE is sent and answered with
 * the next statement, with the same outcome as when run at once; one that
 * fails fails the statement behind it, which does not run; the event
 * store takes over what an inline projection's view left in flight on its
 * write connection, and a failure of it fails the store's batch.
 *
 * Runs on fresh databases of the cluster of ctest's `pg` fixture
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
#include "store/pg.h"
#include "store/rdb.h"
#include "store/store.h"

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

static cq_rstmt *prepare(cq_rdb *db, const char *sql)
{
    cq_rstmt *st = NULL;

    assert_int_equal(
        cq_rdb_prepare(db, sql, CQ_RDB_PERSISTENT, &st, err, sizeof err),
        CQ_OK);
    return st;
}

/* Step st once, expecting DONE; made ready again. */
static void run_done(cq_rstmt *st)
{
    assert_int_equal(cq_rstmt_step(st), CQ_RSTEP_DONE);
    cq_rstmt_reset(st);
}

/* The engine's inline pattern on a view of a PGconn: the savepoints are in
 * flight until the next statement, and they behave as if run at once. */
static void test_savepoints_in_flight(void **state)
{
    char *uri = pgtest_database("rdbpipe");
    PGconn *c;
    cq_rdb *db;
    cq_rstmt *sp, *rel, *rb, *ins, *bad;

    (void)state;
    assert_non_null(uri);
    c = PQconnectdb(uri);
    assert_int_equal(PQstatus(c), CONNECTION_OK);
    db = cq_rdb_pg_wrap(c, 0);
    assert_non_null(db);
    exec_ok(db, "CREATE TABLE t (a BIGINT)");
    sp = prepare(db, "SAVEPOINT inl");
    rel = prepare(db, "RELEASE inl");
    rb = prepare(db, "ROLLBACK TO inl");
    ins = prepare(db, "INSERT INTO t VALUES (?1)");

    /* outside a transaction: run at once (nothing to hold it for) */
    assert_int_equal(cq_rstmt_step(sp), CQ_EINVAL); /* no transaction */
    cq_rstmt_reset(sp);
    assert_int_equal(PQpipelineStatus(c), PQ_PIPELINE_OFF);

    exec_ok(db, "BEGIN");
    run_done(sp);
    assert_int_equal(PQpipelineStatus(c), PQ_PIPELINE_ON); /* in flight */
    assert_int_equal(cq_rdb_in_transaction(db), 1);
    cq_rstmt_bind_int(ins, 1, 1);
    run_done(ins); /* takes the SAVEPOINT's answer with its own */
    assert_int_equal(PQpipelineStatus(c), PQ_PIPELINE_OFF);
    run_done(rel);
    run_done(sp); /* RELEASE and SAVEPOINT both in flight */
    assert_int_equal(PQpipelineStatus(c), PQ_PIPELINE_ON);
    cq_rstmt_bind_int(ins, 1, 2);
    run_done(ins);
    run_done(rb); /* undoes 2 only: the savepoint was made before it */
    run_done(rel);
    exec_ok(db, "COMMIT"); /* takes the RELEASE's answer first */
    assert_int_equal(PQpipelineStatus(c), PQ_PIPELINE_OFF);
    assert_int_equal(select_int(db, "SELECT count(*) FROM t"), 1);
    assert_int_equal(select_int(db, "SELECT sum(a) FROM t"), 1);

    /* one that fails (no such savepoint) fails the statement behind it,
     * which does not run; the transaction accepts only ROLLBACK */
    bad = prepare(db, "RELEASE nosuch");
    exec_ok(db, "BEGIN");
    run_done(bad);
    cq_rstmt_bind_int(ins, 1, 3);
    assert_int_equal(cq_rstmt_step(ins), CQ_EINVAL);
    assert_non_null(strstr(cq_rdb_errmsg(db), "nosuch"));
    cq_rstmt_reset(ins);
    exec_ok(db, "ROLLBACK");
    /* the same before an exec: the exec reports it */
    exec_ok(db, "BEGIN");
    run_done(bad);
    assert_int_equal(cq_rdb_exec(db, "SELECT 1", err, sizeof err), CQ_EINVAL);
    exec_ok(db, "ROLLBACK");
    assert_int_equal(select_int(db, "SELECT count(*) FROM t"), 1);

    cq_rstmt_finalize(bad);
    cq_rstmt_finalize(ins);
    cq_rstmt_finalize(rb);
    cq_rstmt_finalize(rel);
    cq_rstmt_finalize(sp);
    PQfinish(c); /* frees the view */
    free(uri);
}

/* The event store's batch with an inline projection's statements on its
 * write view: the RELEASE left in flight is taken with the store's next
 * statement, and one that fails fails the batch. */
static void test_store_takes_over(void **state)
{
    char *uri = pgtest_database("rdbpipe");
    cq_store_config cfg;
    cq_store *s = NULL;
    cq_rdb *view;
    cq_rstmt *sp, *rel, *ins, *bad;
    cq_new_event ev = {.type = "Happened", .data = "{}", .metadata = "{}"};
    int64_t version = 0, first = 0, head = -1;

    (void)state;
    assert_non_null(uri);
    memset(&cfg, 0, sizeof cfg);
    cfg.uri = uri;
    assert_int_equal(cq_store_open(&cfg, &s, err, sizeof err), CQ_OK);
    view = cq_store_write_rdb(s);
    assert_non_null(view);
    exec_ok(view, "CREATE TABLE inline_t (a BIGINT)");
    sp = prepare(view, "SAVEPOINT inl");
    rel = prepare(view, "RELEASE inl");
    ins = prepare(view, "INSERT INTO inline_t VALUES (?1)");
    bad = prepare(view, "RELEASE nosuch");

    assert_int_equal(cq_store_begin(s), CQ_OK);
    for (int i = 1; i <= 3; i++) {
        char id[16];
        snprintf(id, sizeof id, "s-%d", i);
        assert_int_equal(cq_store_savepoint(s), CQ_OK);
        assert_int_equal(
            cq_store_append(s, id, 0, &ev, 1, 1000, &version, &first), CQ_OK);
        run_done(sp);
        cq_rstmt_bind_int(ins, 1, i);
        run_done(ins);
        run_done(rel); /* in flight until the store's next statement */
        assert_int_equal(cq_store_release(s), CQ_OK);
    }
    assert_int_equal(cq_store_commit(s), CQ_OK);
    assert_int_equal(cq_store_head_position(s, &head), CQ_OK);
    assert_int_equal(head, 3);
    assert_int_equal(select_int(view, "SELECT count(*) FROM inline_t"), 3);

    /* a savepoint statement of the view that fails fails the batch: its
     * commit is refused and nothing of it stays */
    assert_int_equal(cq_store_begin(s), CQ_OK);
    assert_int_equal(cq_store_savepoint(s), CQ_OK);
    assert_int_equal(cq_store_append(s, "s-4", 0, &ev, 1, 1000, &version,
                                     &first),
                     CQ_OK);
    cq_rstmt_bind_int(ins, 1, 4);
    run_done(ins);
    run_done(bad);
    assert_int_equal(cq_store_release(s), CQ_OK);
    assert_int_not_equal(cq_store_commit(s), CQ_OK);
    assert_int_equal(cq_store_rollback(s), CQ_OK);
    assert_int_equal(cq_store_head_position(s, &head), CQ_OK);
    assert_int_equal(head, 3);
    assert_int_equal(select_int(view, "SELECT count(*) FROM inline_t"), 3);

    cq_rstmt_finalize(bad);
    cq_rstmt_finalize(ins);
    cq_rstmt_finalize(rel);
    cq_rstmt_finalize(sp);
    cq_store_close(s);
    free(uri);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_savepoints_in_flight),
        cmocka_unit_test(test_store_takes_over),
    };

    return cmocka_run_group_tests_name("rdb_pg_pipe", tests, NULL, NULL);
}
