/*
 * test_rdb_pg_pipe.c -- unit tests of savepoint statements that travel with
 * the next one on PostgreSQL (src/store/rdb_pg_pipe.c): inside a
 * transaction a persistent SAVEPOINT or RELEASE is sent and answered with
 * the next statement, with the same outcome as when run at once; one that
 * fails fails the statement behind it, which does not run; the event
 * store takes over what an inline projection's view left in flight on its
 * write connection, and a failure of it fails the store's batch. Queued
 * writes (cq_rdb_queue_writes): sent without waiting, seen by what follows
 * (a SELECT reads them first), the first failure reported with the
 * server's message by the call that waits (turning the queue off, a
 * COMMIT, the next statement that returns rows), and a connection lost
 * mid-pipeline fails cleanly.
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
#include "store/rdb_pg_int.h"
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

/* A connection of our own to uri, wrapped. */
static cq_rdb *open_db(const char *uri)
{
    cq_rdb *db = NULL;

    if (cq_rdb_open(uri, 0, 5000, &db, err, sizeof err) != CQ_OK)
        fail_msg("%s", err);
    return db;
}

/* Insert 1..n into t through ins (which queues if the queue is on). */
static void insert_range(cq_rstmt *ins, int from, int to)
{
    for (int i = from; i <= to; i++) {
        assert_int_equal(cq_rstmt_bind_int(ins, 1, i), CQ_OK);
        run_done(ins);
    }
}

/* Writes are sent without waiting while queued (more of them than one
 * pipeline holds), in order, and what follows sees them: a SELECT first
 * reads their answers. Outside a transaction, or with the queue off, a
 * write waits for its answer as before; statements that return rows
 * always do. */
static void test_queued_writes(void **state)
{
    char *uri = pgtest_database("rdbqueue");
    cq_rdb *db;
    PGconn *c;
    cq_rstmt *ins, *upd, *ret, *sel;

    (void)state;
    assert_non_null(uri);
    db = open_db(uri);
    c = ((pg_conn *)cq_rdb_impl(db))->c;
    exec_ok(db, "CREATE TABLE t (a BIGINT PRIMARY KEY, b BIGINT)");
    ins = prepare(db, "INSERT INTO t (a) VALUES (?1)");
    upd = prepare(db, "/* a comment */ UPDATE t SET b = a * 2 WHERE a <= ?1");
    ret = prepare(db, "INSERT INTO t (a) VALUES (?1) RETURNING a");
    sel = prepare(db, "SELECT count(*), sum(b) FROM t");

    /* outside a transaction: nothing to queue in */
    assert_int_equal(cq_rdb_queue_writes(db, 1), CQ_OK);
    insert_range(ins, 1, 1);
    assert_int_equal(PQpipelineStatus(c), PQ_PIPELINE_OFF);

    exec_ok(db, "BEGIN");
    insert_range(ins, 2, 2);
    assert_int_equal(PQpipelineStatus(c), PQ_PIPELINE_ON); /* in flight */
    insert_range(ins, 3, 700); /* past RPG_MAX_QUEUED: waits now and then */
    assert_int_equal(cq_rstmt_bind_int(upd, 1, 10), CQ_OK);
    run_done(upd); /* sees the inserts before it */
    assert_int_equal(PQpipelineStatus(c), PQ_PIPELINE_ON);
    /* RETURNING: answered at once, behind the queued ones */
    assert_int_equal(cq_rstmt_bind_int(ret, 1, 701), CQ_OK);
    assert_int_equal(cq_rstmt_step(ret), CQ_RSTEP_ROW);
    assert_int_equal(cq_rstmt_column_int(ret, 0), 701);
    cq_rstmt_reset(ret);
    assert_int_equal(PQpipelineStatus(c), PQ_PIPELINE_OFF);
    insert_range(ins, 702, 710);
    assert_int_equal(cq_rstmt_step(sel), CQ_RSTEP_ROW); /* reads them first */
    assert_int_equal(cq_rstmt_column_int(sel, 0), 710);
    assert_int_equal(cq_rstmt_column_int(sel, 1), 110); /* 2 * (1 + .. + 10) */
    cq_rstmt_reset(sel);
    insert_range(ins, 711, 720);
    assert_int_equal(cq_rdb_queue_writes(db, 0), CQ_OK); /* reads them */
    assert_int_equal(PQpipelineStatus(c), PQ_PIPELINE_OFF);
    insert_range(ins, 721, 721); /* queue off: at once */
    assert_int_equal(PQpipelineStatus(c), PQ_PIPELINE_OFF);
    assert_int_equal(cq_rdb_queue_writes(db, 1), CQ_OK);
    insert_range(ins, 722, 730);
    exec_ok(db, "COMMIT"); /* reads them, then commits */
    assert_int_equal(cq_rdb_queue_writes(db, 0), CQ_OK);
    assert_int_equal(select_int(db, "SELECT count(*) FROM t"), 730);

    cq_rstmt_finalize(sel);
    cq_rstmt_finalize(ret);
    cq_rstmt_finalize(upd);
    cq_rstmt_finalize(ins);
    cq_rdb_close(db);
    free(uri);
}

/* A queued write that fails: the statements behind it do not run, and the
 * first call that waits reports its failure with the server's message
 * (which names the constraint), in its place: turning the queue off, a
 * COMMIT (refused: the transaction is rolled back), a statement that
 * returns rows. A ROLLBACK discards it. Nothing of the transaction
 * stays, and the connection works on. */
static void test_queued_write_fails(void **state)
{
    char *uri = pgtest_database("rdbqueue");
    cq_rdb *db;
    cq_rstmt *ins, *sel;

    (void)state;
    assert_non_null(uri);
    db = open_db(uri);
    exec_ok(db, "CREATE TABLE t (a BIGINT PRIMARY KEY"
                " CONSTRAINT a_is_small CHECK (a < 100))");
    ins = prepare(db, "INSERT INTO t (a) VALUES (?1)");
    sel = prepare(db, "SELECT count(*) FROM t");

    /* the projector's pattern: the queue off reports it */
    exec_ok(db, "BEGIN");
    assert_int_equal(cq_rdb_queue_writes(db, 1), CQ_OK);
    insert_range(ins, 1, 5);
    insert_range(ins, 100, 100); /* fails: answered DONE for now */
    insert_range(ins, 6, 10);    /* not run */
    assert_int_equal(cq_rdb_queue_writes(db, 0), CQ_EINVAL);
    assert_int_equal(cq_rdb_errcode(db), CQ_EINVAL);
    assert_non_null(strstr(cq_rdb_errmsg(db), "a_is_small"));
    assert_int_equal(cq_rdb_in_transaction(db), 1);
    exec_ok(db, "ROLLBACK");

    /* a COMMIT behind it is refused with its message, and rolls back */
    exec_ok(db, "BEGIN");
    assert_int_equal(cq_rdb_queue_writes(db, 1), CQ_OK);
    insert_range(ins, 1, 5);
    insert_range(ins, 1, 1); /* a duplicate key */
    assert_int_equal(cq_rdb_exec(db, "COMMIT", err, sizeof err), CQ_EINVAL);
    assert_non_null(strstr(err, "duplicate key"));
    assert_non_null(strstr(cq_rdb_errmsg(db), "duplicate key"));
    assert_int_equal(cq_rdb_in_transaction(db), 0);
    assert_int_equal(cq_rdb_queue_writes(db, 0), CQ_OK); /* nothing owed */

    /* a statement that returns rows behind it fails with its message */
    exec_ok(db, "BEGIN");
    assert_int_equal(cq_rdb_queue_writes(db, 1), CQ_OK);
    insert_range(ins, 200, 200);
    assert_int_equal(cq_rstmt_step(sel), CQ_EINVAL);
    assert_non_null(strstr(cq_rdb_errmsg(db), "a_is_small"));
    cq_rstmt_reset(sel);
    exec_ok(db, "ROLLBACK");
    /* a ROLLBACK discards the failure still owed */
    exec_ok(db, "BEGIN");
    insert_range(ins, 300, 300);
    exec_ok(db, "ROLLBACK");
    assert_int_equal(cq_rdb_queue_writes(db, 0), CQ_OK);

    /* nothing stayed, and the connection works on */
    assert_int_equal(select_int(db, "SELECT count(*) FROM t"), 0);
    exec_ok(db, "BEGIN");
    assert_int_equal(cq_rdb_queue_writes(db, 1), CQ_OK);
    insert_range(ins, 1, 3);
    exec_ok(db, "COMMIT");
    assert_int_equal(cq_rdb_queue_writes(db, 0), CQ_OK);
    assert_int_equal(select_int(db, "SELECT count(*) FROM t"), 3);

    cq_rstmt_finalize(sel);
    cq_rstmt_finalize(ins);
    cq_rdb_close(db);
    free(uri);
}

/* The server ends the connection while writes are queued: the call that
 * notices fails with CQ_EIO, the connection is left failed with no
 * transaction (as the projector tells a lost connection: it connects
 * again) and out of pipeline mode, and nothing of the transaction stays. */
static void test_queued_connection_lost(void **state)
{
    char *uri = pgtest_database("rdbqueue");
    cq_rdb *db, *admin;
    cq_rstmt *ins, *pid;
    PGconn *c;
    char sql[128];
    int64_t backend;
    int rc = CQ_OK;

    (void)state;
    assert_non_null(uri);
    db = open_db(uri);
    admin = open_db(uri);
    c = ((pg_conn *)cq_rdb_impl(db))->c;
    exec_ok(db, "CREATE TABLE t (a BIGINT PRIMARY KEY)");
    ins = prepare(db, "INSERT INTO t (a) VALUES (?1)");
    pid = prepare(db, "SELECT pg_backend_pid()");
    assert_int_equal(cq_rstmt_step(pid), CQ_RSTEP_ROW);
    backend = cq_rstmt_column_int(pid, 0);
    cq_rstmt_finalize(pid);

    exec_ok(db, "BEGIN");
    assert_int_equal(cq_rdb_queue_writes(db, 1), CQ_OK);
    insert_range(ins, 1, 10);
    assert_int_equal(PQpipelineStatus(c), PQ_PIPELINE_ON);
    snprintf(sql, sizeof sql, "SELECT pg_terminate_backend(%lld)",
             (long long)backend);
    exec_ok(admin, sql);
    /* the writes after it may still go into the socket's buffer; one of
     * them, or the queue's end, notices */
    for (int i = 11; i <= 2000 && rc == CQ_OK; i++) {
        assert_int_equal(cq_rstmt_bind_int(ins, 1, i), CQ_OK);
        rc = cq_rstmt_step(ins);
        cq_rstmt_reset(ins);
        if (rc == CQ_RSTEP_DONE)
            rc = CQ_OK;
    }
    if (rc == CQ_OK)
        rc = cq_rdb_queue_writes(db, 0);
    assert_int_equal(rc, CQ_EIO);
    assert_int_equal(cq_rdb_queue_writes(db, 0), CQ_OK); /* nothing owed */
    assert_int_equal(cq_rdb_errcode(db), CQ_EIO); /* still the loss */
    assert_int_equal(cq_rdb_in_transaction(db), 0);
    assert_int_equal(PQpipelineStatus(c), PQ_PIPELINE_OFF);
    assert_int_equal(PQstatus(c), CONNECTION_BAD);
    /* further calls fail, as on any lost connection */
    assert_int_not_equal(cq_rdb_exec(db, "ROLLBACK", err, sizeof err), CQ_OK);
    assert_int_equal(cq_rdb_errcode(db), CQ_EIO);
    assert_int_equal(select_int(admin, "SELECT count(*) FROM t"), 0);

    cq_rstmt_finalize(ins);
    cq_rdb_close(admin);
    cq_rdb_close(db);
    free(uri);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_savepoints_in_flight),
        cmocka_unit_test(test_store_takes_over),
        cmocka_unit_test(test_queued_writes),
        cmocka_unit_test(test_queued_write_fails),
        cmocka_unit_test(test_queued_connection_lost),
    };

    return cmocka_run_group_tests_name("rdb_pg_pipe", tests, NULL, NULL);
}
