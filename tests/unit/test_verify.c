/*
 * test_verify.c -- cq_verify against a data directory written by the real
 * store, writer and engine: all OK (also while the engine runs), then rows
 * changed, deleted and added behind the engine's back, a failed
 * projection, one built from another file, one never built, a C projection
 * skipped, the per-table cap on report lines, and missing directories.
 *
 * `test_verify` runs on SQLite; `test_verify pg` (ctest: test_verify_pg)
 * with both stores in one fresh PostgreSQL database, made with an ICU
 * collation whose text order is not bytewise (where the cluster has ICU),
 * while the replay is in SQLite: values and orders across the two.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "base/base.h"
#include "command/writer.h"
#include "pgtest.h"
#include "orders/orders.h"
#include "projection/engine.h"
#include "projection/verify.h"
#include "wiring.h"

/* A declared projection that fails on OrderCancelled (NOT NULL). */
static const char fragile_sql[] =
    "-- @projection fragile\n"
    "-- @version 1\n"
    "CREATE TABLE IF NOT EXISTS fragile_orders (order_id TEXT PRIMARY KEY,\n"
    "    n BIGINT NOT NULL);\n"
    "-- @on OrderPlaced\n"
    "INSERT INTO fragile_orders (order_id, n) VALUES (:data.order_id, 1)\n"
    "    ON CONFLICT (order_id) DO NOTHING;\n"
    "-- @on OrderCancelled\n"
    "UPDATE fragile_orders SET n = NULL WHERE order_id = :data.order_id;\n";

/* A C projection: verify reports it as skipped. */
static const char counts_sql[] =
    "-- @projection event_counts\n"
    "-- @version 1\n"
    "CREATE TABLE IF NOT EXISTS event_counts (stream_id TEXT PRIMARY KEY,\n"
    "    events BIGINT NOT NULL);\n";

static int count_apply(void *arg, cq_sql *sql, const cq_projection_event *ev)
{
    static const char upsert[] =
        "INSERT INTO event_counts (stream_id, events) VALUES (?1, 1)"
        " ON CONFLICT (stream_id) DO UPDATE SET events = events + 1";
    cq_sql_value v[1] = {CQ_SQL_TEXT_VALUE(ev->stream_id)};

    (void)arg;
    return cq_sql_exec(sql, upsert, v, 1);
}

static const cq_projection_code counts_code = {"event_counts", count_apply,
                                               NULL};

static int pg; /* the stores are on PostgreSQL */

typedef struct fixture {
    char dir[256];
    char *uri; /* PostgreSQL: the database of both stores */
    cq_store *store;
    cq_engine *engine;
    cq_writer *writer;
    int running;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int done;
} fixture;

static void on_done(cq_write_req *r)
{
    fixture *f = r->user;
    pthread_mutex_lock(&f->mu);
    f->done++;
    pthread_cond_broadcast(&f->cv);
    pthread_mutex_unlock(&f->mu);
}

static void start(fixture *f)
{
    cq_store_config scfg = {
        .uri = f->uri, .dir = f->dir, .read_connections = 2, .connections = 2};
    cq_engine_config ecfg = {.dir = f->dir,
                             .readers = 2,
                             .domain = orders_domain(),
                             .read_store = f->uri,
                             .store_uri = f->uri};
    cq_writer_config wcfg;
    char err[512];

    assert_int_equal(cq_store_open(&scfg, &f->store, err, sizeof err), CQ_OK);
    assert_int_equal(
        cq_engine_new(&ecfg, f->store, &f->engine, err, sizeof err), CQ_OK);
    for (const orders_sql_file *o = orders_projection_files; o->name; o++)
        assert_int_equal(cq_engine_load_text(f->engine, o->name, o->text,
                                             o->len, err, sizeof err),
                         CQ_OK);
    assert_int_equal(cq_engine_load_text(f->engine, "fragile.sql", fragile_sql,
                                         sizeof fragile_sql - 1, err,
                                         sizeof err),
                     CQ_OK);
    assert_int_equal(cq_engine_add_code(f->engine, counts_sql,
                                        sizeof counts_sql - 1, &counts_code,
                                        err, sizeof err),
                     CQ_OK);
    if (cq_engine_start(f->engine, err, sizeof err) != CQ_OK)
        fail_msg("start: %s", err);
    memset(&wcfg, 0, sizeof wcfg);
    wcfg.hooks = cq_wiring_writer_hooks(f->engine);
    wcfg.domain = orders_domain();
    assert_int_equal(cq_writer_start(f->store, &wcfg, &f->writer), CQ_OK);
    f->running = 1;
}

static void stop(fixture *f)
{
    if (!f->running)
        return;
    cq_writer_stop(f->writer);
    cq_engine_stop(f->engine);
    cq_writer_free(f->writer);
    cq_engine_free(f->engine);
    cq_store_close(f->store);
    f->running = 0;
}

/* A fresh database (pgtest_database) made again with an ICU collation
 * that orders 'a' before 'B' (bytewise 'B' comes first), if the cluster
 * has ICU; else as it is. */
static char *icu_database(void)
{
    char *uri = pgtest_database("verify"), *slash, admin[600], sql[300];
    PGconn *c;
    PGresult *r;

    if (uri == NULL)
        return NULL;
    snprintf(admin, sizeof admin, "%s", uri);
    slash = strrchr(admin, '/');
    strcpy(slash + 1, "postgres");
    c = PQconnectdb(admin);
    snprintf(sql, sizeof sql, "DROP DATABASE %s", strrchr(uri, '/') + 1);
    PQclear(PQexec(c, sql));
    snprintf(sql, sizeof sql,
             "CREATE DATABASE %s TEMPLATE template0"
             " LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C.UTF-8'",
             strrchr(uri, '/') + 1);
    r = PQexec(c, sql);
    if (PQresultStatus(r) != PGRES_COMMAND_OK) {
        /* no ICU: the plain database again */
        PQclear(r);
        snprintf(sql, sizeof sql, "CREATE DATABASE %s", strrchr(uri, '/') + 1);
        r = PQexec(c, sql);
    }
    PQclear(r);
    PQfinish(c);
    return uri;
}

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof *f);
    const char *tmp = getenv("TMPDIR");

    snprintf(f->dir, sizeof f->dir, "%s/verify-XXXXXX", tmp ? tmp : "/tmp");
    assert_non_null(mkdtemp(f->dir));
    if (pg)
        assert_non_null(f->uri = icu_database());
    pthread_mutex_init(&f->mu, NULL);
    pthread_cond_init(&f->cv, NULL);
    start(f);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    char cmd[300];

    stop(f);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", f->dir);
    if (system(cmd) != 0)
        return -1;
    pthread_mutex_destroy(&f->mu);
    pthread_cond_destroy(&f->cv);
    free(f->uri);
    free(f);
    return 0;
}

/* Run one command to completion; returns its answer's status. */
static int command(fixture *f, const char *type, const char *json)
{
    const cq_command_def *def = cq_domain_command(orders_domain(), type);
    cq_write_req r;
    int want;

    memset(&r, 0, sizeof r);
    r.kind = CQ_WRITE_COMMAND;
    r.def = def;
    r.body = json_loads(json, 0, NULL);
    r.expected = CQ_VERSION_ANY;
    assert_non_null(r.body);
    assert_int_equal(def->stream_id(r.body, r.stream_id, sizeof r.stream_id),
                     CQ_OK);
    assert_int_equal(cq_uuid7(r.command_id), CQ_OK);
    r.done = on_done;
    r.user = f;
    pthread_mutex_lock(&f->mu);
    want = f->done + 1;
    pthread_mutex_unlock(&f->mu);
    assert_int_equal(cq_writer_submit(f->writer, &r), CQ_OK);
    pthread_mutex_lock(&f->mu);
    while (f->done < want)
        pthread_cond_wait(&f->cv, &f->mu);
    pthread_mutex_unlock(&f->mu);
    json_decref(r.body);
    free(r.response);
    return r.status;
}

/* Wait (bounded) until every projection has applied the head, or failed. */
static void catch_up(fixture *f)
{
    const char *names[] = {"order_summaries", "sales_dashboard", "fragile",
                           "event_counts"};
    int64_t head = cq_engine_head(f->engine);

    for (size_t k = 0; k < sizeof names / sizeof names[0]; k++) {
        int p = cq_engine_projection(f->engine, names[k]), failed = 0;
        for (int i = 0; i < 5000; i++) {
            struct timespec ts = {0, 1000000};
            if (cq_engine_position(f->engine, p, &failed) >= head || failed)
                break;
            nanosleep(&ts, NULL);
        }
        assert_true(failed || cq_engine_position(f->engine, p, NULL) == head);
    }
}

#define PLACE(id)                                                              \
    "{\"order_id\":\"" id "\",\"customer_id\":\"c\",\"currency\":\"EUR\","     \
    "\"items\":[{\"sku\":\"A\",\"quantity\":1,\"unit_price_cents\":500}]}"

/* Three orders, one paid (PaymentReceived, OrderPaid): positions 1..5. */
static void workload(fixture *f)
{
    assert_int_equal(command(f, "PlaceOrder", PLACE("o-1")), 202);
    assert_int_equal(command(f, "PlaceOrder", PLACE("o-2")), 202);
    assert_int_equal(command(f, "PlaceOrder", PLACE("o-3")), 202);
    assert_int_equal(command(f, "RecordPayment",
                             "{\"order_id\":\"o-1\","
                             "\"payment_id\":\"p\",\"amount_cents\":500}"),
                     202);
    catch_up(f);
}

/* A verifier with what the fixture's server runs, plus extra_sql (or
 * NULL) loaded into the verifier only. */
static cq_verify *verifier(const char *extra_sql)
{
    cq_verify *v = NULL;
    char err[512];

    assert_int_equal(cq_verify_new(&v), CQ_OK);
    for (const orders_sql_file *o = orders_projection_files; o->name; o++)
        assert_int_equal(
            cq_verify_load_text(v, o->name, o->text, o->len, err, sizeof err),
            CQ_OK);
    assert_int_equal(cq_verify_load_text(v, "fragile.sql", fragile_sql,
                                         sizeof fragile_sql - 1, err,
                                         sizeof err),
                     CQ_OK);
    assert_int_equal(cq_verify_add_code(v, counts_sql, sizeof counts_sql - 1,
                                        &counts_code, err, sizeof err),
                     CQ_OK);
    if (extra_sql != NULL)
        assert_int_equal(cq_verify_load_text(v, "extra.sql", extra_sql,
                                             strlen(extra_sql), err,
                                             sizeof err),
                         CQ_OK);
    return v;
}

/* Verify dir (or the database at uri, if not NULL); *report gets the
 * report (free it). Returns the code. */
static int run_verify_at(const char *dir, const char *uri,
                         const char *extra_sql, char **report, int64_t *diffs,
                         char *err, size_t errcap)
{
    cq_verify *v = verifier(extra_sql);
    cq_verify_where w = {.dir = dir, .store = uri};
    size_t len = 0;
    FILE *out = open_memstream(report, &len);
    int rc;

    assert_non_null(out);
    rc = uri ? cq_verify_run_at(v, &w, out, diffs, err, errcap)
             : cq_verify_run(v, dir, out, diffs, err, errcap);
    fclose(out);
    cq_verify_free(v);
    return rc;
}

/* Verify the fixture's stores (f NULL: dir's). */
static int run_verify(fixture *f, const char *dir, const char *extra_sql,
                      char **report, int64_t *diffs)
{
    cq_verify *v = verifier(extra_sql);
    cq_verify_where w = {.dir = dir, .store = f ? f->uri : NULL};
    char err[512] = "";
    size_t len = 0;
    FILE *out = open_memstream(report, &len);
    int rc;

    assert_non_null(out);
    /* what `cqrsd verify --store URI` runs, or `--data DIR` */
    rc = f != NULL && f->uri != NULL
             ? cq_verify_run_uri(v, f->uri, NULL, out, diffs, err, sizeof err)
             : cq_verify_run_at(v, &w, out, diffs, err, sizeof err);
    fclose(out);
    cq_verify_free(v);
    if (rc != CQ_OK)
        fprintf(stderr, "verify: %s\n", err);
    return rc;
}

/* Run sql on DIR/file (PostgreSQL: the one database), as an operator's
 * mistake would. */
static void tamper(fixture *f, const char *file, const char *sql)
{
    char path[512], err[512];
    cq_rdb *db = NULL;

    snprintf(path, sizeof path, "%s/%s", f->dir, file);
    if (cq_rdb_open(pg ? f->uri : path, 0, 5000, &db, err, sizeof err) !=
            CQ_OK ||
        cq_rdb_exec(db, sql, err, sizeof err) != CQ_OK)
        fail_msg("%s: %s", sql, err);
    cq_rdb_close(db);
}

static void expect_in(const char *report, const char *what)
{
    if (strstr(report, what) == NULL)
        fail_msg("report lacks \"%s\":\n%s", what, report);
}

/* ---- tests ----------------------------------------------------------------
 */

static void test_ok_while_running(void **state)
{
    fixture *f = *state;
    char *report = NULL;
    int64_t diffs = -1;

    workload(f);
    /* the engine still runs: verify reads beside it */
    assert_int_equal(run_verify(f, f->dir, NULL, &report, &diffs), CQ_OK);
    assert_int_equal(diffs, 0);
    expect_in(report, "order_summaries: OK (position 5, 1 table, 3 rows)\n");
    expect_in(report, "payment_confirmation: OK (position 5, 1 table, 3 rows)");
    expect_in(report, "sales_dashboard: OK (position 5, 4 tables, ");
    expect_in(report, "fragile: OK (position 5, 1 table, 3 rows)");
    expect_in(report, "event_counts: skipped");
    free(report);

    /* and after a clean stop, on files no process has open */
    stop(f);
    assert_int_equal(run_verify(f, f->dir, NULL, &report, &diffs), CQ_OK);
    assert_int_equal(diffs, 0);
    free(report);
}

static void test_changed_row(void **state)
{
    fixture *f = *state;
    char *report = NULL;
    int64_t diffs = 0;

    workload(f);
    stop(f);
    tamper(f, "read.db",
           "UPDATE order_summaries SET paid_cents = paid_cents + 1"
           " WHERE order_id = 'o-1'");
    assert_int_equal(run_verify(f, f->dir, NULL, &report, &diffs), CQ_OK);
    assert_int_equal(diffs, 1);
    expect_in(report, "order_summaries/order_summaries: order_id='o-1': "
                      "differs: paid_cents live 501, replay 500\n");
    expect_in(report, "order_summaries: 1 difference\n");
    expect_in(report, "sales_dashboard: OK");
    free(report);
}

static void test_type_counts(void **state)
{
    fixture *f = *state;
    char *report = NULL;
    int64_t diffs = 0;

    /* the same bytes as a BLOB are not the same value (an inline table);
     * a PostgreSQL column holds values of its type only */
    if (pg)
        return;
    workload(f);
    stop(f);
    tamper(f, "events.db",
           "UPDATE payment_confirmations SET last_payment_id ="
           " CAST(last_payment_id AS BLOB) WHERE order_id = 'o-1'");
    assert_int_equal(run_verify(f, f->dir, NULL, &report, &diffs), CQ_OK);
    assert_int_equal(diffs, 1);
    expect_in(report, "payment_confirmation/payment_confirmations: "
                      "order_id='o-1': differs: last_payment_id live X'70', "
                      "replay 'p'\n");
    free(report);
}

static void test_deleted_row(void **state)
{
    fixture *f = *state;
    char *report = NULL;
    int64_t diffs = 0;

    workload(f);
    stop(f);
    tamper(f, "read.db", "DELETE FROM order_summaries WHERE order_id = 'o-2'");
    assert_int_equal(run_verify(f, f->dir, NULL, &report, &diffs), CQ_OK);
    assert_int_equal(diffs, 1);
    expect_in(report, "order_summaries/order_summaries: order_id='o-2': "
                      "missing in live\n");
    free(report);
}

static void test_bogus_row(void **state)
{
    fixture *f = *state;
    char *report = NULL;
    int64_t diffs = 0;

    workload(f);
    stop(f);
    tamper(f, "read.db",
           "INSERT INTO order_summaries VALUES ('o-bogus', 'c', 'placed',"
           " 'unpaid', 'EUR', 1, 0, 1, 't', 't', 9, 1)");
    tamper(f, "read.db", "UPDATE dashboard_status SET orders = orders + 1");
    assert_int_equal(run_verify(f, f->dir, NULL, &report, &diffs), CQ_OK);
    expect_in(report, "order_summaries/order_summaries: order_id='o-bogus': "
                      "unexpected in live\n");
    expect_in(report, "sales_dashboard/dashboard_status: status='placed': "
                      "differs: orders live 3, replay 2\n");
    expect_in(report, "order_summaries: 1 difference\n");
    assert_true(diffs >= 3);
    free(report);
}

/* More than CQ_VERIFY_MAX_LINES differences in one table: the rest are
 * counted, not listed. */
static void test_cap(void **state)
{
    fixture *f = *state;
    char *report = NULL, *p;
    int64_t diffs = 0;
    int lines = 0;

    workload(f);
    stop(f);
    tamper(f, "read.db",
           "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n"
           " WHERE i < 30) INSERT INTO fragile_orders SELECT 'x-' || i, i"
           " FROM n");
    assert_int_equal(run_verify(f, f->dir, NULL, &report, &diffs), CQ_OK);
    assert_int_equal(diffs, 30);
    for (p = report; (p = strstr(p, "unexpected in live")) != NULL; p++)
        lines++;
    assert_int_equal(lines, CQ_VERIFY_MAX_LINES);
    expect_in(report, "fragile/fragile_orders: ... and 10 more differences\n");
    expect_in(report, "fragile: 30 differences\n");
    free(report);
}

static void test_failed_projection(void **state)
{
    fixture *f = *state;
    char *report = NULL;
    int64_t diffs = 0;

    workload(f);
    assert_int_equal(
        command(f, "CancelOrder", "{\"order_id\":\"o-2\",\"reason\":\"r\"}"),
        202);
    catch_up(f);
    assert_int_equal(run_verify(f, f->dir, NULL, &report, &diffs), CQ_OK);
    /* its tables are right up to its checkpoint; the failure counts */
    assert_int_equal(diffs, 1);
    expect_in(report, "fragile: failed at position 6 (OrderCancelled)");
    expect_in(report, "fragile: 1 difference\n");
    expect_in(report, "order_summaries: OK (position 6,");
    free(report);
}

static void test_stale_and_not_built(void **state)
{
    fixture *f = *state;
    char *report = NULL;
    int64_t diffs = 0;
    static const char extra[] =
        "-- @projection extra\n"
        "-- @version 1\n"
        "CREATE TABLE IF NOT EXISTS extra (k TEXT PRIMARY KEY);\n"
        "-- @on OrderPlaced\n"
        "INSERT INTO extra (k) VALUES (:data.order_id)"
        " ON CONFLICT (k) DO NOTHING;\n";

    workload(f);
    stop(f);
    tamper(f, "read.db",
           "UPDATE cq_projections SET source_hash = 'abc'"
           " WHERE name = 'sales_dashboard'");
    assert_int_equal(run_verify(f, f->dir, extra, &report, &diffs), CQ_OK);
    assert_int_equal(diffs, 2);
    expect_in(report, "sales_dashboard: built from another file");
    expect_in(report, pg ? "extra: not built: no checkpoint in the read store"
                         : "extra: not built: no checkpoint in read.db");
    expect_in(report, "order_summaries: OK");
    free(report);
}

static void test_missing_dirs(void **state)
{
    fixture *f = *state;
    char *report = NULL, path[512], err[512] = "", *empty;
    int64_t diffs = 0;

    if (pg) {
        /* a database without an event store; one that cannot be reached */
        empty = pgtest_database("empty");
        assert_non_null(empty);
        assert_int_equal(
            run_verify_at(NULL, empty, NULL, &report, &diffs, err, sizeof err),
            CQ_ENOTFOUND);
        assert_non_null(strstr(err, "no event store there"));
        free(report);
        report = NULL;
        free(empty);
        assert_int_equal(run_verify_at(NULL,
                                       "postgresql://u:secret@127.0.0.1:1/x",
                                       NULL, &report, &diffs, err, sizeof err),
                         CQ_EIO);
        assert_non_null(strstr(err, "u:***@127.0.0.1:1"));
        assert_null(strstr(err, "secret"));
        free(report);
        return;
    }
    snprintf(path, sizeof path, "%s/nope", f->dir);
    assert_int_equal(run_verify(NULL, path, NULL, &report, &diffs),
                     CQ_ENOTFOUND);
    free(report);
    report = NULL;
    assert_int_equal(mkdir(path, 0700), 0); /* a directory with no store */
    assert_int_equal(run_verify(NULL, path, NULL, &report, &diffs),
                     CQ_ENOTFOUND);
    free(report);
}

/* Keys whose order depends on the collation ('o-B' before 'o-a'
 * bytewise, after it in en-US): both sides are merged in one order. */
static void test_key_order(void **state)
{
    fixture *f = *state;
    char *report = NULL;
    int64_t diffs = -1;

    assert_int_equal(command(f, "PlaceOrder", PLACE("o-a")), 202);
    assert_int_equal(command(f, "PlaceOrder", PLACE("o-B")), 202);
    assert_int_equal(command(f, "PlaceOrder", PLACE("o-c")), 202);
    assert_int_equal(command(f, "PlaceOrder", PLACE("o-d")), 202);
    assert_int_equal(command(f, "PlaceOrder", PLACE("o-E")), 202);
    catch_up(f);
    stop(f);
    assert_int_equal(run_verify(f, f->dir, NULL, &report, &diffs), CQ_OK);
    if (diffs != 0)
        fail_msg("%s", report);
    expect_in(report, "order_summaries: OK (position 5, 1 table, 5 rows)\n");
    free(report);
    tamper(f, "read.db", "DELETE FROM order_summaries WHERE order_id = 'o-B'");
    assert_int_equal(run_verify(f, f->dir, NULL, &report, &diffs), CQ_OK);
    assert_int_equal(diffs, 1);
    expect_in(report, "order_summaries/order_summaries: order_id='o-B': "
                      "missing in live\n");
    free(report);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_ok_while_running, setup, teardown),
        cmocka_unit_test_setup_teardown(test_changed_row, setup, teardown),
        cmocka_unit_test_setup_teardown(test_type_counts, setup, teardown),
        cmocka_unit_test_setup_teardown(test_deleted_row, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bogus_row, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cap, setup, teardown),
        cmocka_unit_test_setup_teardown(test_failed_projection, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_stale_and_not_built, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_missing_dirs, setup, teardown),
        cmocka_unit_test_setup_teardown(test_key_order, setup, teardown),
    };

    pg = argc > 1 && strcmp(argv[1], "pg") == 0;
    return cmocka_run_group_tests_name(pg ? "verify_pg" : "verify", tests, NULL,
                                       NULL);
}
