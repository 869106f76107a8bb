/*
 * test_wait.c -- position and stream waiters (src/projection/wait.c):
 * fired exactly once, by the position, the stream or the deadline, in any
 * order, from several threads at once; an advance looks only at the
 * waiters it can satisfy; also run under ThreadSanitizer.
 *
 * `test_wait pg`: several nodes (servers) on one PostgreSQL database. A
 * waiter on node B is woken by what node A commits, heard as a
 * notification (nothing else would wake it before its deadline); node B
 * takes over A's projections once A is gone; and waits still end after
 * every connection of the database was cut (listener and projector
 * connect again).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include <string.h>

#include "base/base.h"
#include "command/writer.h"
#include "orders/orders.h"
#include "pgtest.h"
#include "projection/engine.h"
#include "query/query.h"
#include "query/wait.h"
#include "store/rdb.h"
#include "wiring.h"

typedef struct counter {
    atomic_int fired;
} counter;

static void on_fire(void *arg)
{
    atomic_fetch_add(&((counter *)arg)->fired, 1);
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000};
    nanosleep(&ts, NULL);
}

/* Wait (bounded) until c has fired n times. */
static void await_n(counter *c, int n)
{
    for (int i = 0; i < 5000 && atomic_load(&c->fired) < n; i++)
        sleep_ms(1);
    assert_int_equal(atomic_load(&c->fired), n);
}

static void test_already_reached(void **state)
{
    cq_waiters *ws = cq_waiters_new(2);
    counter c = {0};
    cq_wait *w = NULL;

    (void)state;
    cq_waiters_advance(ws, 1, 10);
    assert_int_equal(cq_waiters_add(ws, 1, 10, 1000, on_fire, &c, &w),
                     CQ_WAIT_READY);
    assert_null(w);
    assert_int_equal(cq_waiters_add(ws, 1, 5, 1000, on_fire, &c, &w),
                     CQ_WAIT_READY);
    /* queue 0 is separate */
    assert_int_equal(cq_waiters_add(ws, 0, 5, 1000, on_fire, &c, &w),
                     CQ_WAIT_PENDING);
    assert_non_null(w);
    cq_waiters_advance(ws, 0, 4);
    assert_int_equal(atomic_load(&c.fired), 0);
    cq_waiters_advance(ws, 0, 5);
    await_n(&c, 1);
    assert_true(cq_wait_reached(w));
    cq_wait_release(w);
    assert_int_equal(cq_waiters_pending(ws), 0);
    cq_waiters_free(ws);
}

static void test_timeout(void **state)
{
    cq_waiters *ws = cq_waiters_new(1);
    counter c = {0};
    cq_wait *w = NULL;

    (void)state;
    assert_int_equal(cq_waiters_add(ws, 0, 100, 20, on_fire, &c, &w),
                     CQ_WAIT_PENDING);
    await_n(&c, 1);
    assert_false(cq_wait_reached(w));
    /* advancing past it later fires nothing more */
    cq_waiters_advance(ws, 0, 200);
    sleep_ms(5);
    assert_int_equal(atomic_load(&c.fired), 1);
    cq_wait_release(w);
    cq_waiters_free(ws);
}

/* Targets out of order, deadlines out of order: each fires once, the
 * right way. */
static void test_many_in_any_order(void **state)
{
    enum { N = 2000 };
    cq_waiters *ws = cq_waiters_new(1);
    cq_wait **w = calloc(N, sizeof *w);
    counter c = {0};
    int reached = 0;

    (void)state;
    srand(7);
    for (int i = 0; i < N; i++) {
        /* odd ones can never be reached and time out quickly */
        int64_t target = i % 2 ? 1000000 : 1 + rand() % 500;
        int64_t timeout = i % 2 ? 10 + rand() % 40 : 60000;
        assert_int_equal(
            cq_waiters_add(ws, 0, target, timeout, on_fire, &c, &w[i]),
            CQ_WAIT_PENDING);
    }
    /* (the first odd ones may already have timed out: no count here) */
    for (int p = 1; p <= 500; p += 7)
        cq_waiters_advance(ws, 0, p);
    cq_waiters_advance(ws, 0, 500);
    await_n(&c, N);
    for (int i = 0; i < N; i++) {
        reached += cq_wait_reached(w[i]);
        assert_int_equal(cq_wait_reached(w[i]), i % 2 == 0);
        cq_wait_release(w[i]);
    }
    assert_int_equal(reached, N / 2);
    assert_int_equal(cq_waiters_pending(ws), 0);
    cq_waiters_free(ws);
    free(w);
}

/* Shutdown fires whatever is left, as timed out; later adds are refused. */
static void test_shutdown(void **state)
{
    cq_waiters *ws = cq_waiters_new(1);
    counter c = {0};
    cq_wait *w[3];

    (void)state;
    for (int i = 0; i < 3; i++)
        assert_int_equal(cq_waiters_add(ws, 0, 50, 60000, on_fire, &c, &w[i]),
                         0);
    cq_waiters_shutdown(ws);
    assert_int_equal(atomic_load(&c.fired), 3);
    for (int i = 0; i < 3; i++) {
        assert_false(cq_wait_reached(w[i]));
        cq_wait_release(w[i]);
    }
    assert_int_equal(cq_waiters_add(ws, 0, 60, 100, on_fire, &c, &w[0]),
                     CQ_ECLOSED);
    cq_waiters_free(ws);
}

typedef struct adder {
    cq_waiters *ws;
    counter *c;
    cq_wait *w[200];
} adder;

static void *add_many(void *arg)
{
    adder *a = arg;
    for (int i = 0; i < 200; i++)
        if (cq_waiters_add(a->ws, 0, 1 + i, 30000, on_fire, a->c, &a->w[i]) < 0)
            abort();
    return NULL;
}

/* Adders on several threads race the advancing thread. */
static void test_concurrent(void **state)
{
    enum { T = 4 };
    cq_waiters *ws = cq_waiters_new(1);
    adder *a = calloc(T, sizeof *a);
    pthread_t th[T];
    counter c = {0};
    int expected = 0;

    (void)state;
    for (int t = 0; t < T; t++) {
        a[t].ws = ws;
        a[t].c = &c;
        assert_int_equal(pthread_create(&th[t], NULL, add_many, &a[t]), 0);
    }
    for (int p = 1; p <= 200; p++)
        cq_waiters_advance(ws, 0, p);
    for (int t = 0; t < T; t++)
        pthread_join(th[t], NULL);
    for (int t = 0; t < T; t++)
        for (int i = 0; i < 200; i++)
            expected += a[t].w[i] != NULL; /* NULL: was already reached */
    await_n(&c, expected);
    for (int t = 0; t < T; t++)
        for (int i = 0; i < 200; i++) {
            if (a[t].w[i] != NULL)
                assert_true(cq_wait_reached(a[t].w[i]));
            cq_wait_release(a[t].w[i]);
        }
    cq_waiters_free(ws);
    free(a);
}

/* 10,000 waiters on streams that get no event and 10,000 on a position far
 * ahead: a commit of other streams looks at none of them; a commit of one
 * waited-for stream looks at that stream's waiters only. */
static void test_unrelated_commit_checks_nothing(void **state)
{
    enum { N = 10000 };
    cq_waiters *ws = cq_waiters_new(2);
    cq_wait **sw = calloc(N, sizeof *sw), **pw = calloc(N, sizeof *pw);
    counter c = {0};
    char id[32];
    int64_t before;

    (void)state;
    for (int i = 0; i < N; i++) {
        snprintf(id, sizeof id, "missing-%d", i);
        assert_int_equal(cq_waiters_add_stream(ws, 0, id, 1 + i % 3, 0, 60000,
                                               on_fire, &c, &sw[i]),
                         0);
        assert_int_equal(
            cq_waiters_add(ws, 0, 1000000000, 60000, on_fire, &c, &pw[i]),
            CQ_WAIT_PENDING);
    }
    assert_int_equal(cq_waiters_pending(ws), 2 * N);

    /* commits of other streams, and of the same names on the other queue */
    before = cq_waiters_checked(ws);
    for (int64_t pos = 1; pos <= 100; pos++) {
        char other[32];
        cq_stream_applied a[2] = {{other, 1}, {"missing-7", 5}};
        snprintf(other, sizeof other, "order-%lld", (long long)pos);
        cq_waiters_advance_streams(ws, 0, pos, a, 1);
        cq_waiters_advance_streams(ws, 1, pos, a, 2);
    }
    assert_int_equal(cq_waiters_checked(ws) - before, 0);
    assert_int_equal(atomic_load(&c.fired), 0);
    assert_int_equal(cq_waiters_pending(ws), 2 * N);

    /* missing-4 waits for version 2: version 1 does not do, 2 does */
    {
        cq_stream_applied a = {"missing-4", 1};
        before = cq_waiters_checked(ws);
        cq_waiters_advance_streams(ws, 0, 101, &a, 1);
        assert_int_equal(cq_waiters_checked(ws) - before, 1);
        assert_int_equal(atomic_load(&c.fired), 0);
        a.version = 2;
        cq_waiters_advance_streams(ws, 0, 102, &a, 1);
        assert_int_equal(cq_waiters_checked(ws) - before, 2);
        await_n(&c, 1);
        assert_true(cq_wait_reached(sw[4]));
    }

    /* a move that does not say what it applied wakes every stream waiter
     * of the queue (to look again), and no position waiter */
    cq_waiters_advance(ws, 0, 103);
    await_n(&c, N);
    for (int i = 0; i < N; i++)
        assert_true(cq_wait_reached(sw[i]));
    assert_int_equal(cq_waiters_pending(ws), N);
    cq_waiters_shutdown(ws);
    await_n(&c, 2 * N);
    for (int i = 0; i < N; i++) {
        assert_false(cq_wait_reached(pw[i]));
        cq_wait_release(sw[i]);
        cq_wait_release(pw[i]);
    }
    cq_waiters_free(ws);
    free(sw);
    free(pw);
}

/* A stream waiter is not registered when the queue moved after the caller
 * looked (the event may be in that move); it times out like any other. */
static void test_stream_seen_and_deadline(void **state)
{
    cq_waiters *ws = cq_waiters_new(1);
    counter c = {0};
    cq_wait *w = NULL;

    (void)state;
    cq_waiters_advance(ws, 0, 5);
    assert_int_equal(
        cq_waiters_add_stream(ws, 0, "s", 1, 4, 1000, on_fire, &c, &w),
        CQ_WAIT_READY);
    assert_null(w);
    assert_int_equal(
        cq_waiters_add_stream(ws, 0, "s", 1, 5, 20, on_fire, &c, &w),
        CQ_WAIT_PENDING);
    assert_non_null(w);
    await_n(&c, 1);
    assert_false(cq_wait_reached(w));
    assert_int_equal(cq_waiters_pending(ws), 0);
    /* applying the stream later fires nothing more */
    {
        cq_stream_applied a = {"s", 1};
        cq_waiters_advance_streams(ws, 0, 6, &a, 1);
    }
    sleep_ms(5);
    assert_int_equal(atomic_load(&c.fired), 1);
    cq_wait_release(w);
    cq_waiters_free(ws);
}

typedef struct stream_adder {
    cq_waiters *ws;
    counter *c;
    int t;
    cq_wait *w[300];
} stream_adder;

static void *add_streams(void *arg)
{
    stream_adder *a = arg;
    char id[32];

    for (int i = 0; i < 300; i++) {
        snprintf(id, sizeof id, "s%d-%d", a->t, i % 30);
        /* short deadlines for some: they race the advances */
        if (cq_waiters_add_stream(a->ws, 0, id, 1, 0, i % 5 ? 30000 : 1,
                                  on_fire, a->c, &a->w[i]) < 0)
            abort();
    }
    return NULL;
}

/* Stream waiters added on several threads (the table grows meanwhile)
 * race advances naming their streams and the timer; each fires once. */
static void test_streams_concurrent(void **state)
{
    enum { T = 4 };
    cq_waiters *ws = cq_waiters_new(1);
    stream_adder *a = calloc(T, sizeof *a);
    pthread_t th[T];
    counter c = {0};
    int expected = 0;

    (void)state;
    for (int t = 0; t < T; t++) {
        a[t].ws = ws;
        a[t].c = &c;
        a[t].t = t;
        assert_int_equal(pthread_create(&th[t], NULL, add_streams, &a[t]), 0);
    }
    for (int k = 0; k < 200; k++) {
        char id[32];
        cq_stream_applied ap = {id, 1};
        snprintf(id, sizeof id, "s%d-%d", k % T, k % 30);
        cq_waiters_advance_streams(ws, 0, 0, &ap, 1);
    }
    for (int t = 0; t < T; t++)
        pthread_join(th[t], NULL);
    for (int t = 0; t < T; t++)
        for (int i = 0; i < 300; i++)
            expected += a[t].w[i] != NULL;
    assert_int_equal(expected, T * 300); /* the queue never moved */
    cq_waiters_advance(ws, 0, 1);        /* the rest look again */
    await_n(&c, expected);
    assert_int_equal(cq_waiters_pending(ws), 0);
    for (int t = 0; t < T; t++)
        for (int i = 0; i < 300; i++)
            cq_wait_release(a[t].w[i]);
    cq_waiters_free(ws);
    free(a);
}

/* ---- several nodes on one PostgreSQL database ---- */

/* One node: a store, an engine with the orders projections and its
 * waiters, a writer with the inline hooks. */
typedef struct node {
    cq_store *store;
    cq_engine *engine;
    cq_writer *writer;
} node;

static void node_start(node *n, const char *uri)
{
    cq_store_config scfg = {.uri = uri, .connections = 2};
    cq_engine_config ecfg = {.readers = 2,
                             .domain = orders_domain(),
                             .read_store = uri,
                             .store_uri = uri};
    cq_writer_config wcfg;
    char err[512];

    memset(n, 0, sizeof *n);
    if (cq_store_open(&scfg, &n->store, err, sizeof err) != CQ_OK)
        fail_msg("store: %s", err);
    assert_int_equal(
        cq_engine_new(&ecfg, n->store, &n->engine, err, sizeof err), CQ_OK);
    for (const orders_sql_file *o = orders_projection_files; o->name; o++)
        assert_int_equal(cq_engine_load_text(n->engine, o->name, o->text,
                                             o->len, err, sizeof err),
                         CQ_OK);
    assert_int_equal(cq_query_attach(n->engine, err, sizeof err), CQ_OK);
    if (cq_engine_start(n->engine, err, sizeof err) != CQ_OK)
        fail_msg("start: %s", err);
    memset(&wcfg, 0, sizeof wcfg);
    wcfg.hooks = cq_wiring_writer_hooks(n->engine);
    wcfg.domain = orders_domain();
    assert_int_equal(cq_writer_start(n->store, &wcfg, &n->writer), CQ_OK);
}

/* Stop n as a server does (its connections close: its locks go). */
static void node_stop(node *n)
{
    cq_writer_stop(n->writer);
    cq_engine_stop(n->engine);
    cq_writer_free(n->writer);
    cq_engine_free(n->engine);
    cq_store_close(n->store);
    memset(n, 0, sizeof *n);
}

typedef struct answer {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int done;
} answer;

static void answered(cq_write_req *r)
{
    answer *a = r->user;
    pthread_mutex_lock(&a->mu);
    a->done = 1;
    pthread_cond_broadcast(&a->cv);
    pthread_mutex_unlock(&a->mu);
}

/* Place order `id` through n's writer; its answer's status, with the
 * position in *position. */
static int place_on(node *n, const char *id, int64_t *position)
{
    answer a = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0};
    const cq_command_def *def = cq_domain_command(orders_domain(), "PlaceOrder");
    cq_write_req r;
    int status;

    memset(&r, 0, sizeof r);
    r.kind = CQ_WRITE_COMMAND;
    r.def = def;
    r.body = json_pack("{s:s,s:s,s:s,s:[{s:s,s:i,s:i}]}", "order_id", id,
                       "customer_id", "c-1", "currency", "EUR", "items", "sku",
                       "A", "quantity", 1, "unit_price_cents", 100);
    r.expected = CQ_VERSION_ANY;
    assert_int_equal(def->stream_id(r.body, r.stream_id, sizeof r.stream_id),
                     CQ_OK);
    assert_int_equal(cq_uuid7(r.command_id), CQ_OK);
    r.done = answered;
    r.user = &a;
    assert_int_equal(cq_writer_submit(n->writer, &r), CQ_OK);
    pthread_mutex_lock(&a.mu);
    while (!a.done)
        pthread_cond_wait(&a.cv, &a.mu);
    pthread_mutex_unlock(&a.mu);
    status = r.status;
    *position = r.position;
    json_decref(r.body);
    free(r.response);
    return status;
}

static int runs_here(node *n, const char *projection)
{
    cq_projection_status st;

    cq_engine_status(n->engine, cq_engine_projection(n->engine, projection),
                     &st);
    return st.runs_here;
}

/* A waiter on node B for each kind of queue (an asynchronous projection
 * node A runs, an inline projection, the store's head, a stream not
 * written yet) fires when node A commits: only the notifications A's
 * commit and A's projector send can wake them before their deadline. */
static void test_pg_waiters_woken_by_another_node(void **state)
{
    char *uri = pgtest_database("waitnodes");
    node a, b;
    counter c[4] = {{0}, {0}, {0}, {0}};
    cq_wait *w[4];
    int64_t pos = 0;
    int summaries, inline_p;
    uint64_t t0;

    (void)state;
    assert_non_null(uri);
    node_start(&a, uri);
    node_start(&b, uri);
    assert_true(runs_here(&a, "order_summaries"));
    assert_false(runs_here(&b, "order_summaries"));
    assert_true(runs_here(&b, "payment_confirmation")); /* inline: everyone */
    summaries = cq_engine_projection(b.engine, "order_summaries");
    inline_p = cq_engine_projection(b.engine, "payment_confirmation");
    assert_int_equal(cq_query_wait(b.engine, summaries, 1, 20000, on_fire,
                                   &c[0], &w[0]),
                     CQ_WAIT_PENDING);
    assert_int_equal(cq_query_wait(b.engine, inline_p, 1, 20000, on_fire,
                                   &c[1], &w[1]),
                     CQ_WAIT_PENDING);
    assert_int_equal(cq_query_wait(b.engine, CQ_QUERY_HEAD, 1, 20000,
                                   on_fire, &c[2], &w[2]),
                     CQ_WAIT_PENDING);
    assert_int_equal(cq_query_wait_stream(b.engine, summaries, "order-n-1", 1,
                                          0, 20000, on_fire, &c[3], &w[3]),
                     CQ_WAIT_PENDING);
    t0 = cq_mono_ns();
    assert_int_equal(place_on(&a, "n-1", &pos), 202);
    for (int i = 0; i < 4; i++) {
        await_n(&c[i], 1);
        assert_true(cq_wait_reached(w[i]));
        cq_wait_release(w[i]);
    }
    print_message("node B's four waiters woke %.1f ms after node A's "
                  "command was submitted\n",
                  (double)(cq_mono_ns() - t0) / 1e6);
    assert_int_equal(cq_engine_position(b.engine, summaries, NULL), pos);
    assert_int_equal(cq_engine_head(b.engine), pos);
    node_stop(&b);
    node_stop(&a);
    free(uri);
}

/* Until projection p on node n has applied position pos (a waiter of at
 * most 10 s; c counts its firing). */
static void await_position(node *n, int p, int64_t pos, counter *c)
{
    cq_wait *w;
    int fired = atomic_load(&c->fired);

    if (cq_query_wait(n->engine, p, pos, 10000, on_fire, c, &w) ==
        CQ_WAIT_PENDING) {
        await_n(c, fired + 1);
        assert_true(cq_wait_reached(w));
        cq_wait_release(w);
    }
}

/* Node A, which runs the asynchronous projections, goes away: node B
 * takes them over within 5 s, from their checkpoints, and applies what
 * B's own writer commits next. */
static void test_pg_takeover(void **state)
{
    char *uri = pgtest_database("takeover");
    node a, b;
    counter c = {0};
    int64_t pos = 0;
    uint64_t t0;
    int summaries;

    (void)state;
    assert_non_null(uri);
    node_start(&a, uri);
    node_start(&b, uri);
    assert_int_equal(place_on(&a, "t-1", &pos), 202);
    assert_false(runs_here(&b, "order_summaries"));
    node_stop(&a); /* its connections close, and its locks with them */
    t0 = cq_mono_ns();
    while (!(runs_here(&b, "order_summaries") &&
             runs_here(&b, "sales_dashboard")) &&
           cq_mono_ns() - t0 < 5000000000ull)
        sleep_ms(10);
    assert_true(runs_here(&b, "order_summaries"));
    assert_true(runs_here(&b, "sales_dashboard"));
    print_message("node B runs the projections %.0f ms after node A went\n",
                  (double)(cq_mono_ns() - t0) / 1e6);
    summaries = cq_engine_projection(b.engine, "order_summaries");
    /* A may have stopped before its projector applied t-1: then B starts
     * from checkpoint 0 and applies it itself */
    await_position(&b, summaries, pos, &c);
    assert_int_equal(cq_engine_position(b.engine, summaries, NULL), pos);
    assert_int_equal(place_on(&b, "t-2", &pos), 202);
    await_position(&b, summaries, pos, &c);
    assert_int_equal(cq_engine_position(b.engine, summaries, NULL), pos);
    node_stop(&b);
    free(uri);
}

/* Every connection to the database is cut (as a restart does): node B's
 * listener and node A's projector connect again, and a waiter on B for
 * what A commits next still fires. */
static void test_pg_connections_cut(void **state)
{
    char *uri = pgtest_database("cut");
    node a, b;
    counter c = {0};
    cq_wait *w;
    cq_rdb *admin = NULL;
    int64_t pos = 0;
    char err[512];
    int summaries, status = 0;

    (void)state;
    assert_non_null(uri);
    node_start(&a, uri);
    node_start(&b, uri);
    assert_int_equal(place_on(&a, "c-1", &pos), 202);
    summaries = cq_engine_projection(b.engine, "order_summaries");
    if (cq_rdb_open(uri, 0, 5000, &admin, err, sizeof err) != CQ_OK)
        fail_msg("%s", err);
    if (cq_rdb_exec(admin,
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = current_database()"
                    " AND pid <> pg_backend_pid()",
                    err, sizeof err) != CQ_OK)
        fail_msg("%s", err);
    cq_rdb_close(admin);
    assert_int_equal(cq_query_wait(b.engine, summaries, pos + 1, 20000,
                                   on_fire, &c, &w),
                     CQ_WAIT_PENDING);
    /* a batch that met the cut connection is answered 503; the next one
     * runs on a new connection */
    for (int i = 0; i < 5 && status != 202; i++) {
        char id[16];
        snprintf(id, sizeof id, "c-%d", i + 2);
        status = place_on(&a, id, &pos);
        assert_true(status == 202 || status == 503);
    }
    assert_int_equal(status, 202);
    await_n(&c, 1);
    assert_true(cq_wait_reached(w));
    cq_wait_release(w);
    node_stop(&b);
    node_stop(&a);
    free(uri);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_already_reached),
        cmocka_unit_test(test_timeout),
        cmocka_unit_test(test_many_in_any_order),
        cmocka_unit_test(test_shutdown),
        cmocka_unit_test(test_concurrent),
        cmocka_unit_test(test_unrelated_commit_checks_nothing),
        cmocka_unit_test(test_stream_seen_and_deadline),
        cmocka_unit_test(test_streams_concurrent),
    };
    const struct CMUnitTest pg_tests[] = {
        cmocka_unit_test(test_pg_waiters_woken_by_another_node),
        cmocka_unit_test(test_pg_takeover),
        cmocka_unit_test(test_pg_connections_cut),
    };
    if (argc > 1 && strcmp(argv[1], "pg") == 0)
        return cmocka_run_group_tests_name("wait_pg", pg_tests, NULL, NULL);
    return cmocka_run_group_tests_name("wait", tests, NULL, NULL);
}
