/*
 * test_engine.c -- the projection engine against a real store and writer:
 * declared and C projections, asynchronous and inline, failure isolation,
 * queries with freshness, strong reads, waits, blue/green rebuilds,
 * events applied twice, and a catch-up far behind (batches of 10 x the
 * micro-batch) from emptied tables.
 *
 * `test_engine` runs on SQLite (events.db and read.db in a temporary
 * directory); `test_engine pg` (ctest: test_engine_pg) with the event
 * store and the read store in one fresh PostgreSQL database, as
 * `cqrsd serve --store URI` has them.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "pgtest.h"
#include "base/base.h"
#include "command/writer.h"
#include "orders/orders.h"
#include "projection/engine.h"
#include "query/query.h"
#include "wiring.h"

/* A C projection: events per stream, guarded by version so that an event
 * applied twice is not counted twice; it refuses OrderCancelled so the
 * test can watch a failure stay inside one projection. */
static const char counts_sql[] =
    "-- @projection event_counts\n"
    "-- @version 1\n"
    "CREATE TABLE IF NOT EXISTS event_counts (stream_id TEXT PRIMARY KEY,\n"
    "    events BIGINT NOT NULL, version BIGINT NOT NULL);\n"
    "-- @query event_count\n"
    "-- @param order_id id required\n"
    "-- @stream order-{order_id}\n"
    "-- @result one\n"
    "SELECT events, version FROM event_counts\n"
    " WHERE stream_id = 'order-' || :order_id;\n";

static int count_apply(void *arg, cq_sql *sql, const cq_projection_event *ev)
{
    static const char upsert[] =
        "INSERT INTO event_counts (stream_id, events, version)"
        " VALUES (?1, 1, ?2) ON CONFLICT (stream_id) DO UPDATE"
        " SET events = event_counts.events + 1, version = excluded.version"
        " WHERE event_counts.version < excluded.version";
    cq_sql_value v[2] = {CQ_SQL_TEXT_VALUE(ev->stream_id),
                         CQ_SQL_INT_VALUE(ev->version)};

    (void)arg;
    if (strcmp(ev->type, "OrderCancelled") == 0)
        return CQ_EREFUSED;
    return cq_sql_exec(sql, upsert, v, 2);
}

/* An inline projection that cannot apply an order of customer "bad". */
static const char guard_sql[] =
    "-- @projection guard\n"
    "-- @version 1\n"
    "-- @mode inline\n"
    "CREATE TABLE IF NOT EXISTS guard_orders (order_id TEXT PRIMARY KEY,\n"
    "    customer_id TEXT NOT NULL CHECK (customer_id <> 'bad'));\n"
    "-- @on OrderPlaced\n"
    "INSERT INTO guard_orders (order_id, customer_id)\n"
    "VALUES (:data.order_id, :data.customer_id)\n"
    "ON CONFLICT (order_id) DO NOTHING;\n";

/* An asynchronous projection that cannot apply an order of customer
 * "fussy": two statements per event, and the second fails for that order
 * alone, so that a batch with orders before and after it shows which
 * event its failure is pinned to (on PostgreSQL the batch's writes are
 * queued, and the failure comes back after later events were sent). */
static const char fussy_sql[] =
    "-- @projection fussy\n"
    "-- @version 1\n"
    "-- @mode async\n"
    "CREATE TABLE IF NOT EXISTS fussy_seen (order_id TEXT PRIMARY KEY);\n"
    "CREATE TABLE IF NOT EXISTS fussy_orders (order_id TEXT PRIMARY KEY,\n"
    "    customer_id TEXT NOT NULL\n"
    "    CONSTRAINT not_fussy CHECK (customer_id <> 'fussy'));\n"
    "-- @on OrderPlaced\n"
    "INSERT INTO fussy_seen (order_id) VALUES (:data.order_id)\n"
    "ON CONFLICT (order_id) DO NOTHING;\n"
    "INSERT INTO fussy_orders (order_id, customer_id)\n"
    "VALUES (:data.order_id, :data.customer_id)\n"
    "ON CONFLICT (order_id) DO NOTHING;\n";

static int pg; /* the stores are on PostgreSQL */

typedef struct fixture {
    char dir[256];
    char *uri; /* PostgreSQL: the database of both stores */
    cq_store *store;
    cq_engine *engine;
    cq_writer *writer;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int done;
    int64_t inline_seen; /* payment_confirmation position seen in done() */
    int batch;           /* the engine's micro-batch (0: its default) */
} fixture;

static void on_done(cq_write_req *r)
{
    fixture *f = r->user;
    int64_t pos = cq_engine_position(
        f->engine, cq_engine_projection(f->engine, "payment_confirmation"),
        NULL);
    pthread_mutex_lock(&f->mu);
    f->inline_seen = pos;
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
                             .batch = f->batch,
                             .domain = orders_domain(),
                             .read_store = f->uri,
                             .store_uri = f->uri};
    cq_projection_code code = {"event_counts", count_apply, NULL};
    cq_writer_config wcfg;
    char err[512];

    assert_int_equal(cq_store_open(&scfg, &f->store, err, sizeof err), CQ_OK);
    assert_int_equal(
        cq_engine_new(&ecfg, f->store, &f->engine, err, sizeof err), CQ_OK);
    for (const orders_sql_file *o = orders_projection_files; o->name; o++)
        assert_int_equal(cq_engine_load_text(f->engine, o->name, o->text,
                                             o->len, err, sizeof err),
                         CQ_OK);
    assert_int_equal(cq_engine_load_text(f->engine, "guard.sql", guard_sql,
                                         sizeof guard_sql - 1, err, sizeof err),
                     CQ_OK);
    assert_int_equal(cq_engine_load_text(f->engine, "fussy.sql", fussy_sql,
                                         sizeof fussy_sql - 1, err, sizeof err),
                     CQ_OK);
    assert_int_equal(cq_engine_add_code(f->engine, counts_sql,
                                        sizeof counts_sql - 1, &code, err,
                                        sizeof err),
                     CQ_OK);
    assert_int_equal(cq_query_attach(f->engine, err, sizeof err), CQ_OK);
    if (cq_engine_start(f->engine, err, sizeof err) != CQ_OK)
        fail_msg("start: %s", err);
    memset(&wcfg, 0, sizeof wcfg);
    wcfg.hooks = cq_wiring_writer_hooks(f->engine);
    wcfg.domain = orders_domain();
    assert_int_equal(cq_writer_start(f->store, &wcfg, &f->writer), CQ_OK);
}

static void stop(fixture *f)
{
    if (f->writer == NULL)
        return; /* stopped by the test already */
    cq_writer_stop(f->writer);
    cq_engine_stop(f->engine);
    cq_writer_free(f->writer);
    cq_engine_free(f->engine);
    cq_store_close(f->store);
    f->writer = NULL;
    f->engine = NULL;
    f->store = NULL;
}

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof *f);
    const char *tmp = getenv("TMPDIR");

    snprintf(f->dir, sizeof f->dir, "%s/engine-XXXXXX", tmp ? tmp : "/tmp");
    assert_non_null(mkdtemp(f->dir));
    if (pg)
        assert_non_null(f->uri = pgtest_database("engine"));
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

/* A connection of the test's own to the database holding `file`'s
 * tables (events.db: the event store and inline projections; read.db:
 * asynchronous ones): the one PostgreSQL database, or the file. */
static cq_rdb *open_admin(fixture *f, const char *file)
{
    char path[300], err[512];
    cq_rdb *db = NULL;

    snprintf(path, sizeof path, "%s/%s", f->dir, file);
    if (cq_rdb_open(pg ? f->uri : path, 0, 5000, &db, err, sizeof err) != CQ_OK)
        fail_msg("%s", err);
    return db;
}

/* Run sql there, behind the engine's back. */
static void admin_exec(fixture *f, const char *file, const char *sql)
{
    cq_rdb *db = open_admin(f, file);
    char err[512];

    if (cq_rdb_exec(db, sql, err, sizeof err) != CQ_OK)
        fail_msg("%s: %s", sql, err);
    cq_rdb_close(db);
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

static void on_reached(void *arg)
{
    (void)arg;
}

/* Wait (bounded) until projection `name` has applied the head. */
static void catch_up(fixture *f, const char *name)
{
    int p = cq_engine_projection(f->engine, name);
    int64_t head = cq_engine_head(f->engine);

    for (int i = 0; i < 5000 && cq_engine_position(f->engine, p, NULL) < head;
         i++) {
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
    assert_int_equal(cq_engine_position(f->engine, p, NULL), head);
}

static json_t *query(fixture *f, const char *name, const char *order_id,
                     int strong, cq_freshness *fr)
{
    int p;
    const cq_decl_query *q = cq_engine_query(f->engine, name, &p);
    const char *values[1] = {order_id};
    char stream[128], err[512];
    json_t *data = NULL;
    int64_t sv;

    assert_non_null(q);
    snprintf(stream, sizeof stream, "order-%s", order_id);
    if ((strong ? cq_query_run_strong : cq_query_run)(f->engine, p, q, values,
                                                      stream, &data, fr, &sv,
                                                      err, sizeof err) != CQ_OK)
        fail_msg("query %s: %s", name, err);
    return data;
}

#define PLACE(id)                                                              \
    "{\"order_id\":\"" id "\",\"customer_id\":\"c\",\"currency\":\"EUR\","     \
    "\"items\":[{\"sku\":\"A\",\"quantity\":1,\"unit_price_cents\":500}]}"

static void test_async_inline_and_strong(void **state)
{
    fixture *f = *state;
    cq_freshness fr;
    json_t *a, *b;

    assert_int_equal(command(f, "PlaceOrder", PLACE("o-1")), 202);
    /* the inline projection had the events before the answer was given */
    assert_int_equal(f->inline_seen, 1);
    assert_int_equal(command(f, "RecordPayment",
                             "{\"order_id\":\"o-1\","
                             "\"payment_id\":\"p\",\"amount_cents\":500}"),
                     202);
    assert_int_equal(f->inline_seen, 3);
    a = query(f, "payment_confirmation", "o-1", 0, &fr);
    assert_string_equal(json_string_value(json_object_get(a, "status")),
                        "paid");
    assert_int_equal(fr.position, 3);
    json_decref(a);

    catch_up(f, "order_summaries");
    a = query(f, "order_summary", "o-1", 0, &fr);
    b = query(f, "order_summary", "o-1", 1, &fr);
    assert_true(json_equal(a, b)); /* strong == eventual once caught up */
    assert_string_equal(json_string_value(json_object_get(a, "status")),
                        "paid");
    assert_int_equal(fr.position, 3);
    json_decref(a);
    json_decref(b);

    catch_up(f, "event_counts");
    a = query(f, "event_count", "o-1", 0, &fr);
    assert_int_equal(json_integer_value(json_object_get(a, "events")), 3);
    json_decref(a);
}

/* When the event store cannot be read, a query's stream version (and
 * lag) is an error, not 0: the client gets a 503, not a stale answer
 * that says the stream has no events. */
static void test_lookup_errors_surface(void **state)
{
    fixture *f = *state;
    const cq_decl_query *q;
    const char *values[1] = {"o-1"};
    cq_freshness fr;
    json_t *data = NULL;
    char err[512] = "";
    int64_t sv = -1;
    int p;

    assert_int_equal(command(f, "PlaceOrder", PLACE("o-1")), 202);
    catch_up(f, "order_summaries");
    q = cq_engine_query(f->engine, "order_summary", &p);
    assert_non_null(q);
    assert_int_equal(cq_query_run(f->engine, p, q, values, "order-o-1", &data,
                                  &fr, &sv, err, sizeof err),
                     CQ_OK);
    assert_int_equal(sv, 1);
    json_decref(data);
    data = NULL;

    /* the event store's table goes away under the read pool, after a
     * restart: the event is no longer in memory (src/projection/tail.h),
     * so the version must be read */
    stop(f);
    start(f);
    q = cq_engine_query(f->engine, "order_summary", &p);
    admin_exec(f, "events.db", "ALTER TABLE events RENAME TO gone");
    assert_int_equal(cq_query_run(f->engine, p, q, values, "order-o-1", &data,
                                  &fr, &sv, err, sizeof err),
                     CQ_EIO);
    assert_null(data);
    assert_true(strstr(err, "events") != NULL);
}

/* Wait (bounded) until no rebuild of projection p runs; its status. */
static cq_projection_status rebuilt(fixture *f, int p)
{
    cq_projection_status st;

    for (int i = 0; i < 5000; i++) {
        struct timespec ts = {0, 1000000};
        cq_engine_status(f->engine, p, &st);
        if (!st.rebuilding)
            return st;
        nanosleep(&ts, NULL);
    }
    fail_msg("the rebuild did not end");
    return st;
}

/* cq_rdb_tables' callback: names of the engine's shadow and old tables
 * make the test fail; the others are listed in arg. */
static int engine_table(void *arg, const char *name)
{
    if (strstr(name, "__cq_") != NULL)
        fail_msg("%s is left behind", name);
    strcat(arg, name);
    strcat(arg, ",");
    return 0;
}

/* A C projection is rebuilt blue/green too: its cq_sql_exec statements
 * write the shadow tables through the renaming executor, and the swap
 * leaves the same rows, at the head, with the rebuild recorded. */
static void test_rebuild_code_projection(void **state)
{
    fixture *f = *state;
    int counts = cq_engine_projection(f->engine, "event_counts");
    cq_projection_status st;
    cq_freshness fr;
    char err[256];
    json_t *before, *after;

    assert_int_equal(command(f, "PlaceOrder", PLACE("o-1")), 202);
    assert_int_equal(command(f, "RecordPayment",
                             "{\"order_id\":\"o-1\","
                             "\"payment_id\":\"p\",\"amount_cents\":100}"),
                     202);
    catch_up(f, "event_counts");
    before = query(f, "event_count", "o-1", 0, &fr);
    assert_int_equal(json_integer_value(json_object_get(before, "events")), 2);

    assert_int_equal(
        cq_engine_control(f->engine, counts, "rebuild", err, sizeof err),
        CQ_OK);
    /* a command during the rebuild reaches the new tables too */
    assert_int_equal(command(f, "PlaceOrder", PLACE("o-2")), 202);
    st = rebuilt(f, counts);
    assert_string_equal(st.last_rebuild.outcome, "done");
    assert_true(st.last_rebuild.events >= 2);
    catch_up(f, "event_counts");
    after = query(f, "event_count", "o-1", 0, &fr);
    assert_true(json_equal(before, after));
    assert_int_equal(fr.position, 3);
    json_decref(after);
    after = query(f, "event_count", "o-2", 0, &fr);
    assert_int_equal(json_integer_value(json_object_get(after, "events")), 1);
    json_decref(after);
    json_decref(before);

    /* the shadow and old tables are gone; a second rebuild works too */
    stop(f);
    {
        cq_rdb *db = open_admin(f, "read.db");
        char names[512] = "";
        assert_int_equal(
            cq_rdb_tables(db, NULL, engine_table, names, err, sizeof err),
            CQ_OK);
        assert_non_null(strstr(names, "event_counts,"));
        cq_rdb_close(db);
    }
    start(f);
    counts = cq_engine_projection(f->engine, "event_counts");
    cq_engine_status(f->engine, counts, &st);
    assert_string_equal(st.last_rebuild.outcome, "done"); /* kept */
    assert_int_equal(
        cq_engine_control(f->engine, counts, "rebuild", err, sizeof err),
        CQ_OK);
    st = rebuilt(f, counts);
    assert_string_equal(st.last_rebuild.outcome, "done");
    assert_int_equal(st.position, 3);
    /* an inline projection is not rebuilt blue/green */
    assert_int_equal(
        cq_engine_control(
            f->engine, cq_engine_projection(f->engine, "payment_confirmation"),
            "rebuild", err, sizeof err),
        CQ_ECONFLICT);
}

/* cq_rdb_object_exists, asserted. */
static int exists(fixture *f, const char *name)
{
    cq_rdb *db = open_admin(f, "read.db");
    int found = -1;

    assert_int_equal(cq_rdb_object_exists(db, name, &found), CQ_OK);
    cq_rdb_close(db);
    return found;
}

/* A declared projection with an index, rebuilt twice: each swap (table
 * renames and the checkpoint in one transaction) leaves the rows and an
 * index under a name of the next free generation, and queries answer from
 * the new tables. */
static void test_rebuild_declared(void **state)
{
    fixture *f = *state;
    int p = cq_engine_projection(f->engine, "order_summaries");
    cq_projection_status st;
    cq_freshness fr;
    char err[256], names[512] = "";
    json_t *before, *after;
    cq_rdb *db;

    assert_int_equal(command(f, "PlaceOrder", PLACE("o-1")), 202);
    assert_int_equal(command(f, "PlaceOrder", PLACE("o-2")), 202);
    catch_up(f, "order_summaries");
    before = query(f, "order_summary", "o-2", 0, &fr);
    assert_true(exists(f, "order_summaries_by_customer"));
    for (int round = 1; round <= 2; round++) {
        assert_int_equal(
            cq_engine_control(f->engine, p, "rebuild", err, sizeof err), CQ_OK);
        st = rebuilt(f, p);
        assert_string_equal(st.last_rebuild.outcome, "done");
        assert_int_equal(st.position, 2);
        after = query(f, "order_summary", "o-2", 0, &fr);
        assert_true(json_equal(before, after));
        json_decref(after);
    }
    assert_int_equal(command(f, "PlaceOrder", PLACE("o-3")), 202);
    catch_up(f, "order_summaries");
    after = query(f, "order_summary", "o-3", 0, &fr);
    assert_string_equal(json_string_value(json_object_get(after, "status")),
                        "placed");
    json_decref(after);
    json_decref(before);
    /* stopped: the old tables, dropped after each swap, are gone; the
     * index is in generation 1 after the first swap, 0 (free again) after
     * the second */
    stop(f);
    assert_true(exists(f, "order_summaries_by_customer"));
    assert_false(exists(f, "order_summaries_by_customer__cq1"));
    db = open_admin(f, "read.db");
    assert_int_equal(
        cq_rdb_tables(db, NULL, engine_table, names, err, sizeof err), CQ_OK);
    cq_rdb_close(db);
    assert_non_null(strstr(names, "order_summaries,"));
}

/* A failing handler stops its own projection only. */
static void test_failure_is_isolated(void **state)
{
    fixture *f = *state;
    int counts = cq_engine_projection(f->engine, "event_counts");
    int failed = 0;
    cq_freshness fr;
    json_t *a;

    assert_int_equal(command(f, "PlaceOrder", PLACE("o-1")), 202);
    assert_int_equal(command(f, "CancelOrder",
                             "{\"order_id\":\"o-1\","
                             "\"reason\":\"r\"}"),
                     202);
    assert_int_equal(command(f, "PlaceOrder", PLACE("o-2")), 202);
    catch_up(f, "order_summaries");
    for (int i = 0; i < 5000 && !failed; i++) {
        struct timespec ts = {0, 1000000};
        cq_engine_position(f->engine, counts, &failed);
        nanosleep(&ts, NULL);
    }
    assert_true(failed);
    assert_int_equal(cq_engine_position(f->engine, counts, NULL), 1);
    a = query(f, "event_count", "o-1", 0, &fr);
    assert_true(fr.failed);
    assert_int_equal(fr.position, 1);
    json_decref(a);
    a = query(f, "order_summary", "o-2", 0, &fr);
    assert_non_null(a);
    assert_false(fr.failed);
    json_decref(a);
}

/* Count the rows of `table` in read.db. */
/* The integer in the first column of the first row of sql, run on
 * read.db through a connection of its own (asserted: a row comes). */
static int64_t read_int(fixture *f, const char *sql)
{
    cq_rdb *db = open_admin(f, "read.db");
    cq_rstmt *st = NULL;
    char err[512];
    int64_t n;

    if (cq_rdb_prepare(db, sql, 0, &st, err, sizeof err) != CQ_OK)
        fail_msg("%s", err);
    assert_int_equal(cq_rstmt_step(st), CQ_RSTEP_ROW);
    n = cq_rstmt_column_int(st, 0);
    cq_rstmt_finalize(st);
    cq_rdb_close(db);
    return n;
}

static int64_t read_count(fixture *f, const char *table)
{
    char sql[128];

    snprintf(sql, sizeof sql, "SELECT count(*) FROM %s", table);
    return read_int(f, sql);
}

#define PLACE_FOR(id, customer)                                                \
    "{\"order_id\":\"" id "\",\"customer_id\":\"" customer "\","              \
    "\"currency\":\"EUR\",\"items\":[{\"sku\":\"A\",\"quantity\":1,"          \
    "\"unit_price_cents\":500}]}"

/* A statement that fails in the middle of a batch (one transaction for
 * all its events: the projection was paused while they were written) is
 * pinned to its own event: the events before it stay applied, its own
 * first statement is undone with it, nothing after it is applied, and
 * the failure carries the database's message. */
static void test_failure_pinned_to_its_event(void **state)
{
    fixture *f = *state;
    int fussy = cq_engine_projection(f->engine, "fussy");
    cq_projection_status st;
    char err[512];
    int64_t before_bad, bad;
    int failed = 0;

    assert_true(fussy >= 0);
    assert_int_equal(cq_engine_control(f->engine, fussy, "pause", err,
                                       sizeof err),
                     CQ_OK);
    assert_int_equal(command(f, "PlaceOrder", PLACE_FOR("o-1", "c")), 202);
    assert_int_equal(command(f, "PlaceOrder", PLACE_FOR("o-2", "c")), 202);
    before_bad = cq_engine_head(f->engine);
    assert_int_equal(command(f, "PlaceOrder", PLACE_FOR("o-3", "fussy")),
                     202);
    bad = cq_engine_head(f->engine);
    assert_int_equal(command(f, "PlaceOrder", PLACE_FOR("o-4", "c")), 202);
    assert_true(cq_engine_position(f->engine, fussy, NULL) < before_bad);
    assert_int_equal(cq_engine_control(f->engine, fussy, "resume", err,
                                       sizeof err),
                     CQ_OK);
    for (int i = 0; i < 5000 && !failed; i++) {
        struct timespec ts = {0, 1000000};
        cq_engine_position(f->engine, fussy, &failed);
        nanosleep(&ts, NULL);
    }
    assert_true(failed);
    assert_int_equal(cq_engine_status(f->engine, fussy, &st), CQ_OK);
    assert_int_equal(st.position, before_bad);
    assert_int_equal(st.error_position, bad);
    assert_string_equal(st.error_event, "OrderPlaced");
    if (strstr(st.error, "not_fussy") == NULL)
        fail_msg("error: %s", st.error);
    assert_int_equal(read_count(f, "fussy_seen"), 2);
    assert_int_equal(read_count(f, "fussy_orders"), 2);
}

/* PostgreSQL: the projector's connection is cut while it applies a batch
 * whose writes are queued (sales_dashboard, paused while 400 orders were
 * written, then resumed: ~1,600 statements in one transaction; should the
 * cut land between two batches, the reconnection alone is tested). The
 * batch is not applied, the projector connects again, takes its
 * projection back and applies it again: every order counted once, and the
 * projection has not failed. */
static void test_projector_connection_lost(void **state)
{
    fixture *f = *state;
    int sd = cq_engine_projection(f->engine, "sales_dashboard");
    char err[512], body[256];
    int64_t head;
    int failed = 1;

    if (!pg)
        skip();
    assert_int_equal(cq_engine_control(f->engine, sd, "pause", err,
                                       sizeof err),
                     CQ_OK);
    for (int i = 0; i < 400; i++) {
        snprintf(body, sizeof body,
                 "{\"order_id\":\"cut-%d\",\"customer_id\":\"c\","
                 "\"currency\":\"EUR\",\"items\":[{\"sku\":\"A\","
                 "\"quantity\":1,\"unit_price_cents\":500}]}",
                 i);
        assert_int_equal(command(f, "PlaceOrder", body), 202);
    }
    head = cq_engine_head(f->engine);
    assert_int_equal(cq_engine_control(f->engine, sd, "resume", err,
                                       sizeof err),
                     CQ_OK);
    admin_exec(f, "read.db",
               "SELECT pg_terminate_backend(l.pid) FROM pg_locks l"
               " WHERE l.locktype = 'advisory' AND l.granted"
               " AND l.objsubid = 1 AND l.database = (SELECT oid FROM"
               " pg_database WHERE datname = current_database())"
               " AND ((l.classid::bigint << 32) | l.objid::bigint)"
               " = hashtextextended('cqrsd:projection:sales_dashboard', 0)");
    for (int i = 0;
         i < 2000 && cq_engine_position(f->engine, sd, &failed) < head; i++) {
        struct timespec ts = {0, 10000000};
        nanosleep(&ts, NULL);
    }
    assert_int_equal(cq_engine_position(f->engine, sd, &failed), head);
    assert_false(failed);
    assert_int_equal(read_count(f, "dashboard_orders"), 400);
    assert_int_equal(read_int(f, "SELECT orders FROM dashboard_status"
                                 " WHERE status = 'placed'"),
                     400);
}

/* An inline projection that cannot apply an event refuses the command
 * (422, nothing written) and stays running; one stopped by an older
 * version (which let the command commit) recovers at the next start,
 * skipping the event and recording it in events.db. */
static void test_inline_refusal(void **state)
{
    fixture *f = *state;
    int guard = cq_engine_projection(f->engine, "guard");
    int failed = 1;
    cq_projection_status st;

    assert_int_equal(command(f, "PlaceOrder", PLACE("o-1")), 202);
    assert_int_equal(command(f, "PlaceOrder",
                             "{\"order_id\":\"o-2\",\"customer_id\":"
                             "\"bad\",\"currency\":\"EUR\",\"items\":"
                             "[{\"sku\":\"A\",\"quantity\":1,"
                             "\"unit_price_cents\":5}]}"),
                     422);
    assert_int_equal(cq_engine_head(f->engine), 1);
    assert_int_equal(cq_engine_position(f->engine, guard, &failed), 1);
    assert_false(failed);
    assert_int_equal(command(f, "PlaceOrder", PLACE("o-3")), 202);
    assert_int_equal(cq_engine_position(f->engine, guard, &failed), 2);

    /* as an older version left it: the event committed, the guard failed */
    stop(f);
    admin_exec(f, "events.db",
               "INSERT INTO events VALUES (3, 'order-o-4', 1, 'OrderPlaced', 2,"
               " '{\"order_id\":\"o-4\",\"customer_id\":\"bad\"}', '{}', 0);"
               "INSERT INTO streams VALUES ('order-o-4', 1, 3);"
               "UPDATE cq_projections SET status = 'failed', position = 2,"
               " error = 'x', error_position = 3, error_event = 'OrderPlaced'"
               " WHERE name = 'guard'");
    start(f);
    cq_engine_status(f->engine, guard, &st);
    assert_false(st.failed);
    assert_int_equal(st.position, 3);
    assert_int_equal(st.skipped, 1);
    assert_int_equal(command(f, "PlaceOrder", PLACE("o-5")), 202);
    assert_int_equal(cq_engine_position(f->engine, guard, &failed), 4);
    assert_false(failed);
}

/* Submit the n commands at once (so that the writer may run several in
 * one batch) and wait for all; their statuses in status[]. */
static void submit_all(fixture *f, const char *const *json, int n,
                       int *status)
{
    const cq_command_def *def = cq_domain_command(orders_domain(), "PlaceOrder");
    cq_write_req *r = calloc((size_t)n, sizeof *r);
    int want;

    assert_non_null(r);
    pthread_mutex_lock(&f->mu);
    want = f->done + n;
    pthread_mutex_unlock(&f->mu);
    for (int i = 0; i < n; i++) {
        r[i].kind = CQ_WRITE_COMMAND;
        r[i].def = def;
        assert_non_null(r[i].body = json_loads(json[i], 0, NULL));
        r[i].expected = CQ_VERSION_ANY;
        assert_int_equal(
            def->stream_id(r[i].body, r[i].stream_id, sizeof r[i].stream_id),
            CQ_OK);
        assert_int_equal(cq_uuid7(r[i].command_id), CQ_OK);
        r[i].done = on_done;
        r[i].user = f;
    }
    for (int i = 0; i < n; i++)
        assert_int_equal(cq_writer_submit(f->writer, &r[i]), CQ_OK);
    pthread_mutex_lock(&f->mu);
    while (f->done < want)
        pthread_cond_wait(&f->cv, &f->mu);
    pthread_mutex_unlock(&f->mu);
    for (int i = 0; i < n; i++) {
        status[i] = r[i].status;
        json_decref(r[i].body);
        free(r[i].response);
    }
    free(r);
}

/* The asynchronous projections take what the writer committed from
 * memory (src/projection/tail.h) on SQLite: batches with requests the
 * inline projection refused (their events appended, then undone, their
 * positions taken by the next request) leave in the read models exactly
 * the accepted orders, as a replay from the store does. */
static void test_tail_serves_what_committed(void **state)
{
    fixture *f = *state;
    enum { ROUNDS = 20, N = 7 };
    char text[N][256];
    const char *orders[N];
    int status[N];
    int64_t memory, store, head;
    const char *const names[] = {"order_summaries", "sales_dashboard",
                                 "event_counts", "fussy"};
    cq_freshness fr;
    json_t *a;

    /* every round: 7 new orders, the 2nd, 4th and 6th refused inline */
    for (int round = 0; round < ROUNDS; round++) {
        for (int i = 0; i < N; i++) {
            snprintf(text[i], sizeof text[i],
                     "{\"order_id\":\"t-%d-%d\",\"customer_id\":\"%s\","
                     "\"currency\":\"EUR\",\"items\":[{\"sku\":\"A\","
                     "\"quantity\":1,\"unit_price_cents\":500}]}",
                     round, i, i % 2 ? "bad" : "c");
            orders[i] = text[i];
        }
        submit_all(f, orders, N, status);
        for (int i = 0; i < N; i++)
            assert_int_equal(status[i], i % 2 ? 422 : 202);
    }
    head = cq_engine_head(f->engine);
    assert_int_equal(head, ROUNDS * 4);
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        catch_up(f, names[i]);
    assert_int_equal(read_count(f, "order_summaries"), head);
    assert_int_equal(read_count(f, "fussy_seen"), head);
    assert_int_equal(read_int(f, "SELECT count(*) FROM event_counts"
                                 " WHERE events = 1 AND version = 1"),
                     head);
    assert_int_equal(read_int(f, "SELECT count(*) FROM order_summaries"
                                 " WHERE customer_id = 'bad'"),
                     0);
    a = query(f, "order_summary", "t-19-6", 0, &fr);
    assert_non_null(a);
    assert_int_equal(fr.position, head);
    json_decref(a);

    cq_engine_read_stats(f->engine, &memory, &store);
    if (pg) { /* several nodes may write a server's store: not kept */
        assert_int_equal(memory + store, 0);
        return;
    }
    assert_int_equal(store, 0);
    assert_true(memory >= head);

    /* after a restart the run starts again with the next batch */
    stop(f);
    start(f);
    snprintf(text[0], sizeof text[0], "%s", PLACE_FOR("t-x", "c"));
    submit_all(f, orders, 1, status);
    assert_int_equal(status[0], 202);
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        catch_up(f, names[i]);
    assert_int_equal(read_count(f, "order_summaries"), head + 1);
    cq_engine_read_stats(f->engine, &memory, &store);
    assert_int_equal(store, 0);
    assert_int_equal(memory, 1);
}

/* Waiters fire when the projection gets there. */
static void test_wait(void **state)
{
    fixture *f = *state;
    int p = cq_engine_projection(f->engine, "order_summaries");
    cq_wait *w = NULL;
    int rc;

    rc = cq_query_wait(f->engine, p, 1, 10000, on_reached, NULL, &w);
    assert_int_equal(rc, 0);
    assert_int_equal(command(f, "PlaceOrder", PLACE("o-9")), 202);
    for (int i = 0; i < 5000 && !cq_wait_reached(w); i++) {
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
    assert_true(cq_wait_reached(w));
    cq_wait_release(w);
}

/* Every event applied a second time over the same tables changes nothing:
 * restart with the checkpoints set back to 0. */
static void test_applied_twice(void **state)
{
    fixture *f = *state;
    const char *orders[] = {"o-1", "o-2", "o-3"};
    json_t *before[3];
    cq_freshness fr;

    for (int i = 0; i < 3; i++) {
        char json[256];
        snprintf(json, sizeof json,
                 "{\"order_id\":\"%s\",\"customer_id\":"
                 "\"c\",\"currency\":\"EUR\",\"items\":[{\"sku\":\"A\","
                 "\"quantity\":1,\"unit_price_cents\":500}]}",
                 orders[i]);
        assert_int_equal(command(f, "PlaceOrder", json), 202);
    }
    assert_int_equal(command(f, "RecordPayment",
                             "{\"order_id\":\"o-2\","
                             "\"payment_id\":\"p\",\"amount_cents\":200}"),
                     202);
    catch_up(f, "sales_dashboard");
    catch_up(f, "event_counts");
    before[0] = query(f, "event_count", "o-2", 0, &fr);
    before[1] = NULL;
    {
        int p;
        const cq_decl_query *q =
            cq_engine_query(f->engine, "sales_dashboard", &p);
        char err[256];
        int64_t sv;
        assert_int_equal(cq_query_run(f->engine, p, q, NULL, NULL, &before[1],
                                      &fr, &sv, err, sizeof err),
                         CQ_OK);
    }
    before[2] = query(f, "order_summary", "o-2", 0, &fr);
    stop(f);

    /* the asynchronous ones (on PostgreSQL, the inline ones' rows are in
     * the same table) */
    admin_exec(f, "read.db",
               "UPDATE cq_projections SET position = 0 WHERE name NOT IN"
               " ('payment_confirmation', 'guard')");
    start(f);
    catch_up(f, "sales_dashboard");
    catch_up(f, "event_counts");
    catch_up(f, "order_summaries");
    {
        json_t *after = query(f, "event_count", "o-2", 0, &fr);
        assert_true(json_equal(before[0], after));
        json_decref(after);
    }
    {
        int p;
        const cq_decl_query *q =
            cq_engine_query(f->engine, "sales_dashboard", &p);
        char err[256];
        int64_t sv;
        json_t *after = NULL;
        assert_int_equal(cq_query_run(f->engine, p, q, NULL, NULL, &after, &fr,
                                      &sv, err, sizeof err),
                         CQ_OK);
        assert_true(json_equal(before[1], after));
        json_decref(after);
    }
    {
        json_t *after = query(f, "order_summary", "o-2", 0, &fr);
        assert_true(json_equal(before[2], after));
        json_decref(after);
    }
    for (int i = 0; i < 3; i++)
        json_decref(before[i]);
}

/* The sales dashboard's answer (no parameters). */
static json_t *dashboard(fixture *f)
{
    int p;
    const cq_decl_query *q = cq_engine_query(f->engine, "sales_dashboard", &p);
    char err[256];
    int64_t sv;
    cq_freshness fr;
    json_t *data = NULL;

    assert_non_null(q);
    if (cq_query_run(f->engine, p, q, NULL, NULL, &data, &fr, &sv, err,
                     sizeof err) != CQ_OK)
        fail_msg("sales_dashboard: %s", err);
    return data;
}

#define CU_ORDERS 30

/* A catch-up far behind, in batches of 10 x batch (then micro-batches
 * near the head): the asynchronous projections, emptied and set back to
 * 0, come back exactly as they were (every event applied once, in order:
 * event_counts counts them). */
static void test_catch_up_far_behind(void **state)
{
    fixture *f = *state;
    json_t *before[CU_ORDERS + 2], *after;
    cq_freshness fr;
    char id[32], json[256];

    stop(f);
    f->batch = 2; /* far behind from 20 events on: batches of 20 */
    start(f);
    for (int i = 0; i < CU_ORDERS; i++) {
        snprintf(id, sizeof id, "o-%d", i);
        snprintf(json, sizeof json,
                 "{\"order_id\":\"%s\",\"customer_id\":\"c%d\","
                 "\"currency\":\"EUR\",\"items\":[{\"sku\":\"A\","
                 "\"quantity\":%d,\"unit_price_cents\":500}]}",
                 id, i % 3, 1 + i % 4);
        assert_int_equal(command(f, "PlaceOrder", json), 202);
        if (i % 2 == 0) {
            snprintf(json, sizeof json,
                     "{\"order_id\":\"%s\",\"payment_id\":\"p-%d\","
                     "\"amount_cents\":%d}",
                     id, i, 100 * (1 + i % 5));
            assert_int_equal(command(f, "RecordPayment", json), 202);
        }
    }
    /* more than two batches of 20 behind once set back */
    assert_true(cq_engine_head(f->engine) >= CU_ORDERS + CU_ORDERS / 2);
    catch_up(f, "order_summaries");
    catch_up(f, "sales_dashboard");
    catch_up(f, "event_counts");
    for (int i = 0; i < CU_ORDERS; i++) {
        snprintf(id, sizeof id, "o-%d", i);
        before[i] = query(f, "order_summary", id, 0, &fr);
        assert_non_null(before[i]);
    }
    before[CU_ORDERS] = dashboard(f);
    before[CU_ORDERS + 1] = query(f, "event_count", "o-7", 0, &fr);
    stop(f);

    admin_exec(f, "read.db",
               "UPDATE cq_projections SET position = 0 WHERE name NOT IN"
               " ('payment_confirmation', 'guard');"
               "DELETE FROM event_counts; DELETE FROM order_summaries");
    start(f);
    catch_up(f, "order_summaries");
    catch_up(f, "sales_dashboard");
    catch_up(f, "event_counts");
    for (int i = 0; i < CU_ORDERS; i++) {
        snprintf(id, sizeof id, "o-%d", i);
        after = query(f, "order_summary", id, 0, &fr);
        assert_true(json_equal(before[i], after));
        json_decref(after);
    }
    after = dashboard(f);
    assert_true(json_equal(before[CU_ORDERS], after));
    json_decref(after);
    after = query(f, "event_count", "o-7", 0, &fr);
    assert_true(json_equal(before[CU_ORDERS + 1], after));
    json_decref(after);
    for (int i = 0; i < CU_ORDERS + 2; i++)
        json_decref(before[i]);
    /* every stream counted all its events: none skipped */
    assert_int_equal(read_int(f, "SELECT count(*) FROM event_counts"
                                 " WHERE events <> version"),
                     0);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_async_inline_and_strong, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_failure_is_isolated, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_inline_refusal, setup, teardown),
        cmocka_unit_test_setup_teardown(test_failure_pinned_to_its_event,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_projector_connection_lost,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_wait, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tail_serves_what_committed, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_lookup_errors_surface, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_rebuild_code_projection, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_applied_twice, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rebuild_declared, setup, teardown),
        cmocka_unit_test_setup_teardown(test_catch_up_far_behind, setup,
                                        teardown),
    };
    pg = argc > 1 && strcmp(argv[1], "pg") == 0;
    return cmocka_run_group_tests_name(pg ? "engine_pg" : "engine", tests, NULL,
                                       NULL);
}
