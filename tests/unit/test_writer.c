/*
 * test_writer.c -- the writer thread against a real events.db.
 *
 * Drives cq_writer with the orders domain from several submitting threads
 * and checks what the protocol in writer.h promises: answers only after
 * commit, one savepoint per request (a refusal leaves its batch-mates
 * alone), gap-free positions, idempotent replays (also within one batch),
 * that the state cache never serves a rolled-back state, that expired
 * idempotency keys are absent before they are pruned, and that pruning
 * deletes one bounded step per batch, inside the batch's transaction (no
 * COMMIT of its own while commands are queued; a failing step undone
 * alone).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <inttypes.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/base.h"
#include "command/writer.h"
#include "orders/orders.h"
#include "store/rdb.h"
#include "pgtest.h"

typedef struct waiter {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int done;
} waiter;

static void on_done(cq_write_req *r)
{
    waiter *wt = r->user;
    pthread_mutex_lock(&wt->mu);
    wt->done++;
    pthread_cond_broadcast(&wt->cv);
    pthread_mutex_unlock(&wt->mu);
}

static void wait_for(waiter *wt, int n)
{
    pthread_mutex_lock(&wt->mu);
    while (wt->done < n)
        pthread_cond_wait(&wt->cv, &wt->mu);
    pthread_mutex_unlock(&wt->mu);
}

/* `test_writer pg`: the cases that hold on both backends, on PostgreSQL,
 * and those of several nodes on one database (PostgreSQL only). */
static int pg;

typedef struct fixture {
    char dir[256];
    char *uri; /* PostgreSQL: the test's database */
    cq_store *store;
    cq_writer *writer;
    waiter wt;
    /* several nodes: a second node's store and writer on the database */
    cq_store *store2;
    cq_writer *writer2;
} fixture;

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof *f);
    const char *tmp = getenv("TMPDIR");
    cq_store_config cfg = {.dir = NULL, .read_connections = 2};
    char err[256];

    snprintf(f->dir, sizeof f->dir, "%s/writer-XXXXXX", tmp ? tmp : "/tmp");
    assert_non_null(mkdtemp(f->dir));
    cfg.dir = f->dir;
    if (pg) {
        assert_non_null(f->uri = pgtest_database("writer"));
        cfg.uri = f->uri;
        cfg.connections = 2;
    }
    if (cq_store_open(&cfg, &f->store, err, sizeof err) != CQ_OK)
        fail_msg("%s", err);
    assert_int_equal(cq_writer_start(f->store, NULL, &f->writer), CQ_OK);
    pthread_mutex_init(&f->wt.mu, NULL);
    pthread_cond_init(&f->wt.cv, NULL);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    char cmd[300];

    cq_writer_free(f->writer);
    cq_writer_free(f->writer2);
    cq_store_close(f->store);
    cq_store_close(f->store2);
    free(f->uri);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", f->dir);
    if (system(cmd) != 0)
        return -1;
    pthread_mutex_destroy(&f->wt.mu);
    pthread_cond_destroy(&f->wt.cv);
    free(f);
    return 0;
}

/* Fill r as a command from a JSON text; the body must be valid. */
static void make_command(fixture *f, cq_write_req *r, const char *type,
                         const char *json, const char *key)
{
    const cq_command_def *def = cq_domain_command(orders_domain(), type);
    json_t *body = json_loads(json, 0, NULL);
    char *canon;

    assert_non_null(def);
    assert_non_null(body);
    memset(r, 0, sizeof *r);
    r->kind = CQ_WRITE_COMMAND;
    r->def = def;
    r->body = body;
    r->expected = CQ_VERSION_ANY;
    assert_int_equal(def->stream_id(body, r->stream_id, sizeof r->stream_id),
                     CQ_OK);
    if (key != NULL) {
        snprintf(r->idem_key, sizeof r->idem_key, "%s", key);
        canon = json_dumps(body, JSON_COMPACT | JSON_SORT_KEYS);
        cq_sha256_hex(canon, strlen(canon), r->command_hash);
        free(canon);
    }
    assert_int_equal(cq_uuid7(r->command_id), CQ_OK);
    r->done = on_done;
    r->user = &f->wt;
}

static void release(cq_write_req *r, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        json_decref(r[i].body);
        free(r[i].response);
    }
}

static const char *place(int i, char *buf, size_t cap)
{
    snprintf(buf, cap,
             "{\"order_id\":\"o-%d\",\"customer_id\":\"c-1\","
             "\"currency\":\"EUR\",\"items\":[{\"sku\":\"A\",\"quantity\":1,"
             "\"unit_price_cents\":1000}]}",
             i);
    return buf;
}

/* Many commands submitted at once: each answered 202 with its own
 * contiguous position; positions 1..n used exactly once. */
static void test_batch_positions(void **state)
{
    fixture *f = *state;
    enum { N = 300 };
    cq_write_req *r = calloc(N, sizeof *r);
    char *seen = calloc(N + 1, 1);
    char json[256];

    for (int i = 0; i < N; i++) {
        make_command(f, &r[i], "PlaceOrder", place(i, json, sizeof json), NULL);
        assert_int_equal(cq_writer_submit(f->writer, &r[i]), CQ_OK);
    }
    wait_for(&f->wt, N);
    for (int i = 0; i < N; i++) {
        assert_int_equal(r[i].status, 202);
        assert_true(r[i].position >= 1 && r[i].position <= N);
        assert_false(seen[r[i].position]);
        seen[r[i].position] = 1;
        assert_int_equal(r[i].version, 1);
    }
    assert_int_equal(cq_writer_head(f->writer), N);
    release(r, N);
    free(r);
    free(seen);
}

/* A refusal in the middle of a batch undoes only itself, and the next
 * command on the same stream sees the state without it. */
static void test_refusal_isolated(void **state)
{
    fixture *f = *state;
    cq_write_req r[5];
    char json[256];

    make_command(f, &r[0], "PlaceOrder", place(1, json, sizeof json), NULL);
    make_command(f, &r[1], "RecordPayment",
                 "{\"order_id\":\"o-1\","
                 "\"payment_id\":\"p1\",\"amount_cents\":5000}",
                 NULL);
    make_command(f, &r[2], "RecordPayment",
                 "{\"order_id\":\"o-1\","
                 "\"payment_id\":\"p2\",\"amount_cents\":400}",
                 NULL);
    make_command(f, &r[3], "PlaceOrder", place(1, json, sizeof json), NULL);
    make_command(f, &r[4], "RecordPayment",
                 "{\"order_id\":\"o-1\","
                 "\"payment_id\":\"p3\",\"amount_cents\":600}",
                 NULL);
    for (int i = 0; i < 5; i++)
        assert_int_equal(cq_writer_submit(f->writer, &r[i]), CQ_OK);
    wait_for(&f->wt, 5);
    assert_int_equal(r[0].status, 202);
    assert_int_equal(r[1].status, 422); /* 5000 > 1000 due */
    assert_int_equal(r[2].status, 202);
    assert_int_equal(r[2].version, 2);
    assert_int_equal(r[3].status, 409); /* exists */
    assert_int_equal(r[4].status, 202); /* pays the rest: + OrderPaid */
    assert_int_equal(r[4].version, 4);
    assert_int_equal(r[4].position, 4);
    assert_non_null(strstr(r[4].response, "OrderPaid"));
    assert_int_equal(cq_writer_head(f->writer), 4);
    release(r, 5);
}

/* The same key twice in one batch: the second is a replay; another body
 * with the same key is refused; nothing is appended twice. */
static void test_idempotency_in_batch(void **state)
{
    fixture *f = *state;
    cq_write_req r[3];
    char json[256];

    make_command(f, &r[0], "PlaceOrder", place(7, json, sizeof json), "k");
    make_command(f, &r[1], "PlaceOrder", place(7, json, sizeof json), "k");
    make_command(f, &r[2], "PlaceOrder", place(8, json, sizeof json), "k");
    for (int i = 0; i < 3; i++)
        assert_int_equal(cq_writer_submit(f->writer, &r[i]), CQ_OK);
    wait_for(&f->wt, 3);
    assert_int_equal(r[0].status, 202);
    assert_int_equal(r[1].status, 202);
    assert_true(r[1].replayed);
    assert_string_equal(r[0].response, r[1].response);
    assert_int_equal(r[1].version, 1);
    assert_int_equal(r[2].status, 422);
    assert_false(r[2].replayed);
    assert_int_equal(cq_writer_head(f->writer), 1);
    release(r, 3);
}

/* A command with no events (repeated payment id) answers the stream's
 * current version and position. */
static void test_no_event_command(void **state)
{
    fixture *f = *state;
    cq_write_req r[3];
    char json[256];

    make_command(f, &r[0], "PlaceOrder", place(1, json, sizeof json), NULL);
    make_command(f, &r[1], "RecordPayment",
                 "{\"order_id\":\"o-1\","
                 "\"payment_id\":\"p1\",\"amount_cents\":10}",
                 NULL);
    make_command(f, &r[2], "RecordPayment",
                 "{\"order_id\":\"o-1\","
                 "\"payment_id\":\"p1\",\"amount_cents\":10}",
                 NULL);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(cq_writer_submit(f->writer, &r[i]), CQ_OK);
        wait_for(&f->wt, i + 1); /* separate batches: exercises the cache */
    }
    assert_int_equal(r[2].status, 202);
    assert_int_equal(r[2].version, 2);
    assert_int_equal(r[2].position, 2);
    assert_non_null(strstr(r[2].response, "\"events\":[]"));
    release(r, 3);
}

/* A stream whose stored event cannot be decoded fails only the command on
 * it (500, nothing written); the rest of the batch goes through. */
static void test_corrupt_stream(void **state)
{
    fixture *f = *state;
    cq_write_req r[4];
    char json[256], path[300];
    sqlite3 *db;

    make_command(f, &r[0], "PlaceOrder", place(1, json, sizeof json), NULL);
    assert_int_equal(cq_writer_submit(f->writer, &r[0]), CQ_OK);
    wait_for(&f->wt, 1);
    assert_int_equal(r[0].status, 202);
    release(r, 1);
    make_command(f, &r[0], "PlaceOrder", place(3, json, sizeof json), NULL);
    assert_int_equal(cq_writer_submit(f->writer, &r[0]), CQ_OK);
    wait_for(&f->wt, 2);
    assert_int_equal(r[0].status, 202);
    release(r, 1);

    snprintf(path, sizeof path, "%s/events.db", f->dir);
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    sqlite3_busy_timeout(db, 5000);
    assert_int_equal(sqlite3_exec(db,
                                  "UPDATE events SET data = '{\"order_'"
                                  " WHERE position = 1",
                                  NULL, NULL, NULL),
                     SQLITE_OK);
    assert_int_equal(sqlite3_exec(db,
                                  "UPDATE streams SET version = 'x'"
                                  " WHERE stream_id = 'order-o-3'",
                                  NULL, NULL, NULL),
                     SQLITE_OK);
    sqlite3_close(db);

    /* a fresh writer, so the state is not in its cache */
    cq_writer_free(f->writer);
    assert_int_equal(cq_writer_start(f->store, NULL, &f->writer), CQ_OK);
    make_command(f, &r[1], "RecordPayment",
                 "{\"order_id\":\"o-1\","
                 "\"payment_id\":\"p1\",\"amount_cents\":10}",
                 NULL);
    make_command(f, &r[2], "PlaceOrder", place(2, json, sizeof json), NULL);
    make_command(f, &r[3], "CancelOrder",
                 "{\"order_id\":\"o-3\","
                 "\"reason\":\"r\"}",
                 NULL);
    for (int i = 1; i < 4; i++)
        assert_int_equal(cq_writer_submit(f->writer, &r[i]), CQ_OK);
    wait_for(&f->wt, 5);
    assert_int_equal(r[1].status, 500); /* undecodable event data */
    assert_true(r[1].problem);
    assert_non_null(strstr(r[1].response, "corrupt-stream"));
    assert_int_equal(r[2].status, 202);
    assert_int_equal(r[2].position, 3);
    assert_int_equal(r[3].status, 500); /* undecodable stream version */
    assert_non_null(r[3].response);
    assert_non_null(strstr(r[3].response, "corrupt-stream"));
    release(r + 1, 3);
}

typedef struct submitter {
    fixture *f;
    int base;
    cq_write_req r[50];
} submitter;

static void *submit_many(void *arg)
{
    submitter *s = arg;
    char json[256];

    for (int i = 0; i < 50; i++) {
        make_command(s->f, &s->r[i], "PlaceOrder",
                     place(s->base + i, json, sizeof json), NULL);
        if (cq_writer_submit(s->f->writer, &s->r[i]) != CQ_OK)
            abort();
    }
    return NULL;
}

/* Submissions from several threads at once (also run under TSan). */
static void test_concurrent_submitters(void **state)
{
    fixture *f = *state;
    enum { T = 4 };
    submitter *s = calloc(T, sizeof *s);
    pthread_t th[T];

    for (int t = 0; t < T; t++) {
        s[t].f = f;
        s[t].base = t * 1000;
        assert_int_equal(pthread_create(&th[t], NULL, submit_many, &s[t]), 0);
    }
    for (int t = 0; t < T; t++)
        pthread_join(th[t], NULL);
    wait_for(&f->wt, T * 50);
    for (int t = 0; t < T; t++) {
        for (int i = 0; i < 50; i++)
            assert_int_equal(s[t].r[i].status, 202);
        release(s[t].r, 50);
    }
    assert_int_equal(cq_writer_head(f->writer), T * 50);
    free(s);
}

/* ---- a request run on the submitter's thread (cq_writer_try_run) ---- */

/* try_run until the writer is idle (the start-up prune step may hold the
 * turn for a moment): 1 once it ran r, 0 if it never did within 5 s. */
static int try_run_idle(cq_writer *w, cq_write_req *r)
{
    for (int i = 0; i < 5000; i++) {
        if (cq_writer_try_run(w, r))
            return 1;
        usleep(1000);
    }
    return 0;
}

/* An idle writer runs the request on the caller's thread: the answer is
 * final and committed when try_run returns, done() is never called, and
 * the state it leaves in the cache serves the next command. */
static void test_try_run_idle(void **state)
{
    fixture *f = *state;
    cq_write_req r[2];
    char json[256];
    int64_t head = 0;

    make_command(f, &r[0], "PlaceOrder", place(1, json, sizeof json), NULL);
    assert_true(try_run_idle(f->writer, &r[0]));
    assert_int_equal(r[0].status, 202);
    assert_int_equal(r[0].version, 1);
    assert_int_equal(r[0].position, 1);
    assert_non_null(strstr(r[0].response, "\"position\":1"));
    assert_int_equal(cq_writer_head(f->writer), 1);
    assert_int_equal(cq_store_head_position(f->store, &head), CQ_OK);
    assert_int_equal(head, 1); /* committed: another connection sees it */
    make_command(f, &r[1], "RecordPayment",
                 "{\"order_id\":\"o-1\",\"payment_id\":\"p1\","
                 "\"amount_cents\":1000}",
                 NULL);
    assert_true(try_run_idle(f->writer, &r[1]));
    assert_int_equal(r[1].status, 202);
    assert_true(r[1].version >= 2); /* decided on the state at version 1 */
    assert_int_equal(r[1].position, r[1].version); /* the only stream */
    pthread_mutex_lock(&f->wt.mu);
    assert_int_equal(f->wt.done, 0); /* done() is the queue's, not try_run's */
    pthread_mutex_unlock(&f->wt.mu);
    release(r, 2);
    cq_writer_stop(f->writer);
    make_command(f, &r[0], "PlaceOrder", place(2, json, sizeof json), NULL);
    assert_false(cq_writer_try_run(f->writer, &r[0])); /* stopped */
    release(r, 1);
}

/* A hook that holds the writer inside its batch until the test opens it. */
typedef struct hold {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int inside, open;
} hold;

static int hold_inline(void *arg, const cq_stored_event *events,
                       const json_t *const *data, size_t n, char *err,
                       size_t errcap)
{
    hold *h = arg;

    (void)events;
    (void)data;
    (void)n;
    (void)err;
    (void)errcap;
    pthread_mutex_lock(&h->mu);
    h->inside++;
    pthread_cond_broadcast(&h->cv);
    while (!h->open)
        pthread_cond_wait(&h->cv, &h->mu);
    pthread_mutex_unlock(&h->mu);
    return CQ_OK;
}

/* While a batch runs, try_run runs nothing (and leaves r alone); a request
 * queued behind it goes first, in FIFO order; once the queue has drained,
 * try_run runs again. */
static void test_try_run_busy(void **state)
{
    fixture *f = *state;
    hold h = {.inside = 0, .open = 0};
    cq_writer_config cfg = {0};
    cq_write_req r[3];
    char json[256];

    pthread_mutex_init(&h.mu, NULL);
    pthread_cond_init(&h.cv, NULL);
    cq_writer_free(f->writer);
    cfg.hooks.apply_inline = hold_inline;
    cfg.hooks.arg = &h;
    assert_int_equal(cq_writer_start(f->store, &cfg, &f->writer), CQ_OK);
    make_command(f, &r[0], "PlaceOrder", place(1, json, sizeof json), NULL);
    make_command(f, &r[1], "PlaceOrder", place(2, json, sizeof json), NULL);
    make_command(f, &r[2], "PlaceOrder", place(3, json, sizeof json), NULL);
    assert_int_equal(cq_writer_submit(f->writer, &r[0]), CQ_OK);
    pthread_mutex_lock(&h.mu);
    while (h.inside == 0)
        pthread_cond_wait(&h.cv, &h.mu);
    pthread_mutex_unlock(&h.mu);
    assert_false(cq_writer_try_run(f->writer, &r[1])); /* a batch runs */
    assert_int_equal(r[1].status, 0);
    assert_int_equal(cq_writer_submit(f->writer, &r[1]), CQ_OK);
    pthread_mutex_lock(&h.mu);
    h.open = 1;
    pthread_cond_broadcast(&h.cv);
    pthread_mutex_unlock(&h.mu);
    wait_for(&f->wt, 2);
    assert_int_equal(r[0].position, 1);
    assert_int_equal(r[1].position, 2);
    assert_true(try_run_idle(f->writer, &r[2]));
    assert_int_equal(r[2].status, 202);
    assert_int_equal(r[2].position, 3);
    release(r, 3);
    cq_writer_free(f->writer);
    f->writer = NULL;
    pthread_mutex_destroy(&h.mu);
    pthread_cond_destroy(&h.cv);
}

/* Threads that each try_run, and submit and wait when the writer is busy
 * (what an HTTP thread does), all at once: every command answered 202
 * exactly once, positions gap-free (also run under TSan: the turn passes
 * between the writer thread and the submitters). */
typedef struct runner {
    fixture *f;
    int base, ran;
    waiter wt;
    cq_write_req r[60];
} runner;

static void *run_many(void *arg)
{
    runner *s = arg;
    char json[256];

    for (int i = 0; i < 60; i++) {
        make_command(s->f, &s->r[i], "PlaceOrder",
                     place(s->base + i, json, sizeof json), NULL);
        s->r[i].user = &s->wt;
        if (cq_writer_try_run(s->f->writer, &s->r[i])) {
            s->ran++;
            continue;
        }
        if (cq_writer_submit(s->f->writer, &s->r[i]) != CQ_OK)
            abort();
        wait_for(&s->wt, i + 1 - s->ran);
    }
    return NULL;
}

static void test_try_run_concurrent(void **state)
{
    fixture *f = *state;
    enum { T = 4, N = 60 };
    runner *s = calloc(T, sizeof *s);
    char *seen = calloc(T * N + 1, 1);
    pthread_t th[T];
    int ran = 0;

    for (int t = 0; t < T; t++) {
        s[t].f = f;
        s[t].base = t * 1000;
        pthread_mutex_init(&s[t].wt.mu, NULL);
        pthread_cond_init(&s[t].wt.cv, NULL);
        assert_int_equal(pthread_create(&th[t], NULL, run_many, &s[t]), 0);
    }
    for (int t = 0; t < T; t++)
        pthread_join(th[t], NULL);
    for (int t = 0; t < T; t++) {
        for (int i = 0; i < N; i++) {
            int64_t p = s[t].r[i].position;
            assert_int_equal(s[t].r[i].status, 202);
            assert_true(p >= 1 && p <= T * N);
            assert_false(seen[p]);
            seen[p] = 1;
        }
        ran += s[t].ran;
        release(s[t].r, N);
        pthread_mutex_destroy(&s[t].wt.mu);
        pthread_cond_destroy(&s[t].wt.cv);
    }
    /* how many ran on their own thread depends on the timing */
    print_message("try_run ran %d of %d\n", ran, T * N);
    assert_int_equal(cq_writer_head(f->writer), T * N);
    free(seen);
    free(s);
}

/* ---- the command log's expired keys ---- */

/* Hooks that hold the writer inside its first batch (before_commit) until
 * the test has queued what it wants behind it, plant command-log entries
 * from inside a batch (the writer's own transaction, on its thread), and
 * count the expired keys after every commit through a connection of
 * their own. Fields under mu, except the counts: written by the writer
 * thread, read by the test after the writer has answered everything. */
typedef struct gate {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int calls;      /* before_commit calls */
    int held, open; /* the writer waits in the first before_commit */
    int fill;       /* expired keys to put in the first batch */
    int plant;      /* put "k-old"/"k-other", expired, on next inline */
    const char *plant_hash;
    cq_store *store;
    sqlite3 *probe;
    int batches;
    long long expired[64]; /* expired keys after each commit */
    int64_t head[64];      /* and the head it committed */
    int commits;           /* COMMITs on the store's write connection */
    int commits_at[64];    /* and how many there had been at each batch's */
} gate;

static long long count_expired(sqlite3 *db)
{
    sqlite3_stmt *st = NULL;
    long long n = -1;

    if (sqlite3_prepare_v2(db,
                           "SELECT count(*) FROM command_log"
                           " WHERE expires_at <= ?1",
                           -1, &st, NULL) == SQLITE_OK &&
        sqlite3_bind_int64(st, 1, cq_now_ms()) == SQLITE_OK &&
        sqlite3_step(st) == SQLITE_ROW)
        n = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return n;
}

static int gate_before_commit(void *arg, int64_t head)
{
    gate *g = arg;
    int first;
    char key[32];

    pthread_mutex_lock(&g->mu);
    first = g->calls++ == 0;
    pthread_mutex_unlock(&g->mu);
    if (!first)
        return CQ_OK;
    for (int i = 0; i < g->fill; i++) {
        snprintf(key, sizeof key, "old-%d", i);
        cq_cmdlog_entry e = {key, "h", 202, "{}", 0, 1 + i};
        if (cq_store_cmdlog_put(g->store, &e) != CQ_OK)
            return CQ_EIO;
    }
    pthread_mutex_lock(&g->mu);
    g->held = 1;
    pthread_cond_broadcast(&g->cv);
    while (!g->open)
        pthread_cond_wait(&g->cv, &g->mu);
    pthread_mutex_unlock(&g->mu);
    return CQ_OK;
}

static int gate_inline(void *arg, const cq_stored_event *events,
                       const json_t *const *data, size_t n, char *err,
                       size_t errcap)
{
    gate *g = arg;
    int plant;

    (void)err;
    (void)errcap;

    pthread_mutex_lock(&g->mu);
    plant = g->plant;
    g->plant = 0;
    pthread_mutex_unlock(&g->mu);
    if (!plant)
        return CQ_OK;
    const char *resp = "{\"from\":\"the expired entry\"}";
    cq_cmdlog_entry same = {.key = "k-old",
                            .command_hash = g->plant_hash,
                            .status = 202,
                            .response = resp,
                            .expires_at = 1};
    cq_cmdlog_entry other = same;

    other.key = "k-other";
    other.command_hash = "not-its-hash";
    if (cq_store_cmdlog_put(g->store, &same) != CQ_OK ||
        cq_store_cmdlog_put(g->store, &other) != CQ_OK)
        return CQ_EIO;
    return CQ_OK;
}

static void gate_committed(void *arg, int64_t head, const cq_write_req *batch)
{
    (void)batch;
    gate *g = arg;

    if (g->probe != NULL && g->batches < 64) {
        g->head[g->batches] = head;
        g->commits_at[g->batches] = g->commits;
        g->expired[g->batches++] = count_expired(g->probe);
    }
}

/* sqlite3_commit_hook on the writer's connection: runs on the writer
 * thread, at every COMMIT, the batches' and the idle prune steps'. */
static int gate_count_commit(void *arg)
{
    gate *g = arg;

    g->commits++;
    return 0;
}

static void gate_init(fixture *f, gate *g)
{
    char path[300];

    memset(g, 0, sizeof *g);
    pthread_mutex_init(&g->mu, NULL);
    pthread_cond_init(&g->cv, NULL);
    g->store = f->store;
    snprintf(path, sizeof path, "%s/events.db", f->dir);
    assert_int_equal(
        sqlite3_open_v2(path, &g->probe, SQLITE_OPEN_READONLY, NULL),
        SQLITE_OK);
}

static void gate_wait_held_then_open(gate *g)
{
    pthread_mutex_lock(&g->mu);
    while (!g->held)
        pthread_cond_wait(&g->cv, &g->mu);
    g->open = 1;
    pthread_cond_broadcast(&g->cv);
    pthread_mutex_unlock(&g->mu);
}

static void gate_destroy(gate *g)
{
    sqlite3_close(g->probe);
    pthread_mutex_destroy(&g->mu);
    pthread_cond_destroy(&g->cv);
}

/* `expired` expired keys and n keyed commands queued behind one another
 * in batches of at most max_batch: the writer prunes while it works, each
 * batch exactly one step (while keys remain), of CQ_WRITER_PRUNE_PER_REQUEST
 * keys per request of the batch, at most CQ_WRITER_PRUNE_CHUNK or the
 * batch's size if larger (each command here appends one event, so a
 * batch's size is the head's advance), and in its own transaction: while
 * commands are queued there is no COMMIT (no fsync) but the batches'.
 * Once idle it removes the rest. Returns the most keys a batch deleted. */
static long long prune_stream(fixture *f, int max_batch, int n, int expired)
{
    cq_write_req *r = calloc((size_t)n, sizeof *r);
    cq_writer_config cfg = {0};
    gate g;
    char json[256], key[32];
    long long left = -1, most = 0;

    gate_init(f, &g);
    g.fill = expired;
    cfg.max_batch = max_batch;
    cfg.prune_interval_ms = 1; /* a pass is due whenever one is not running */
    cfg.hooks.before_commit = gate_before_commit;
    cfg.hooks.committed = gate_committed;
    cfg.hooks.arg = &g;
    cq_writer_free(f->writer);
    /* No writer runs: its connection may be touched from here. */
    sqlite3_commit_hook((sqlite3 *)cq_rdb_impl(cq_store_write_rdb(f->store)), gate_count_commit, &g);
    assert_int_equal(cq_writer_start(f->store, &cfg, &f->writer), CQ_OK);

    /* The first batch puts the expired keys in (before its own step); the
     * gate holds it while the rest is queued behind it. */
    for (int i = 0; i < n; i++) {
        snprintf(key, sizeof key, "new-%d", i);
        make_command(f, &r[i], "PlaceOrder", place(i, json, sizeof json), key);
        assert_int_equal(cq_writer_submit(f->writer, &r[i]), CQ_OK);
    }
    gate_wait_held_then_open(&g);
    wait_for(&f->wt, n);
    for (int i = 0; i < n; i++)
        assert_int_equal(r[i].status, 202);

    assert_true(g.batches >= (n + max_batch - 1) / max_batch);
    assert_true(g.batches < 64);
    assert_int_equal(g.head[g.batches - 1], n);
    for (int k = 0; k < g.batches; k++) {
        long long before = k > 0 ? g.expired[k - 1] : expired;
        long long gone = before - g.expired[k];
        long long size = g.head[k] - (k > 0 ? g.head[k - 1] : 0);
        long long cap =
            size > CQ_WRITER_PRUNE_CHUNK ? size : CQ_WRITER_PRUNE_CHUNK;
        long long step = size * CQ_WRITER_PRUNE_PER_REQUEST;
        long long want;

        step = step < cap ? step : cap;
        want = step < before ? step : before;
        if (gone != want)
            fail_msg("batch %d (%lld requests) deleted %lld expired keys "
                     "(%lld expected: a step of %lld, %lld were left)",
                     k + 1, size, gone, want, step, before);
        /* Queued commands: the step rode on the batch's COMMIT. */
        if (k > 0 && g.commits_at[k] - g.commits_at[k - 1] != 1)
            fail_msg("%d COMMITs from batch %d to batch %d (1 expected: "
                     "a prune step while commands are queued commits with "
                     "the batch)",
                     g.commits_at[k] - g.commits_at[k - 1], k, k + 1);
        most = gone > most ? gone : most;
    }
    /* It did prune while the commands ran. */
    assert_true(g.expired[g.batches - 1] < expired);

    /* Idle: the rest goes, step after step (bounded wait). */
    for (int i = 0; i < 4000; i++) {
        left = count_expired(g.probe);
        if (left == 0)
            break;
        usleep(5000);
    }
    assert_int_equal(left, 0);
    /* The commands' own keys are live and still replay. */
    release(r, 1);
    make_command(f, &r[0], "PlaceOrder", place(0, json, sizeof json), "new-0");
    assert_int_equal(cq_writer_submit(f->writer, &r[0]), CQ_OK);
    wait_for(&f->wt, n + 1);
    assert_int_equal(r[0].status, 202);
    assert_true(r[0].replayed);

    cq_writer_free(f->writer); /* before the gate goes */
    f->writer = NULL;
    sqlite3_commit_hook((sqlite3 *)cq_rdb_impl(cq_store_write_rdb(f->store)), NULL, NULL);
    release(r, (size_t)n);
    free(r);
    gate_destroy(&g);
    return most;
}

/* One command per batch, 10,000 expired keys: a step of
 * CQ_WRITER_PRUNE_PER_REQUEST keys per batch. */
static void test_prune_interleaves_with_batches(void **state)
{
    long long most = prune_stream(*state, 1, 30, 10000);
    assert_int_equal(most, CQ_WRITER_PRUNE_PER_REQUEST);
}

/* Batches larger than a chunk: the step after each may delete as many
 * keys as the batch held (so pruning keeps up with a writer that is never
 * idle), and no more. */
static void test_prune_keeps_up_with_large_batches(void **state)
{
    long long most = prune_stream(*state, 300, 900, 2000);
    assert_true(most > CQ_WRITER_PRUNE_CHUNK);
    assert_true(most <= 300);
}

/* A prune step that fails inside a batch. The expired key "poison" is the
 * first any step deletes; a trigger on the writer's connection calls
 * refuse_probe() for it, which counts the steps that ran inside a batch
 * (after before_commit, before the commit) and says what the trigger does:
 * 0 let the key go, 1 RAISE(ABORT) (the statement fails, the transaction
 * stays, as SQLITE_FULL mostly does), 2 RAISE(ROLLBACK) (the transaction
 * is lost). before_commit sleeps longer than the prune interval, so a
 * pass is due at every batch's step. */
typedef struct refuse {
    atomic_int mode;
    atomic_int steps_in_batch;
    int in_batch; /* writer thread only */
    sqlite3 *probe;
} refuse;

static void refuse_probe(sqlite3_context *ctx, int argc, sqlite3_value **argv)
{
    refuse *rf = sqlite3_user_data(ctx);

    if (rf->in_batch)
        atomic_fetch_add(&rf->steps_in_batch, 1);
    rf->in_batch = 0;
    sqlite3_result_int(ctx, atomic_load(&rf->mode));
}

static int refuse_before_commit(void *arg, int64_t head)
{
    refuse *rf = arg;

    usleep(6000);
    rf->in_batch = 1;
    return CQ_OK;
}

static void refuse_committed(void *arg, int64_t head,
                             const cq_write_req *batch)
{
    (void)batch;
    refuse *rf = arg;

    rf->in_batch = 0;
}

static long long count_rows(sqlite3 *db, const char *sql)
{
    sqlite3_stmt *st = NULL;
    long long n = -1;

    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK &&
        sqlite3_step(st) == SQLITE_ROW)
        n = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return n;
}

static void refuse_start(fixture *f, refuse *rf, int mode)
{
    sqlite3 *wdb;
    cq_writer_config cfg = {0};
    char path[300];

    memset(rf, 0, sizeof *rf);
    atomic_init(&rf->mode, mode);
    atomic_init(&rf->steps_in_batch, 0);
    snprintf(path, sizeof path, "%s/events.db", f->dir);
    assert_int_equal(
        sqlite3_open_v2(path, &rf->probe, SQLITE_OPEN_READONLY, NULL),
        SQLITE_OK);
    cq_writer_free(f->writer);
    /* No writer runs: its connection may be touched from here. */
    wdb = (sqlite3 *)cq_rdb_impl(cq_store_write_rdb(f->store));
    assert_int_equal(sqlite3_create_function(wdb, "refuse_probe", 0,
                                             SQLITE_UTF8, rf, refuse_probe,
                                             NULL, NULL),
                     SQLITE_OK);
    assert_int_equal(
        sqlite3_exec(wdb,
                     "CREATE TEMP TRIGGER refuse BEFORE DELETE ON"
                     " main.command_log WHEN old.idem_key = 'poison' BEGIN"
                     " SELECT CASE refuse_probe()"
                     " WHEN 1 THEN RAISE(ABORT, 'prune step refused')"
                     " WHEN 2 THEN RAISE(ROLLBACK, 'prune step lost the"
                     " transaction') END; END;"
                     "INSERT INTO command_log VALUES"
                     " ('poison', 'h', 202, '{}', 0, 1)",
                     NULL, NULL, NULL),
        SQLITE_OK);
    cfg.max_batch = 1;
    cfg.prune_interval_ms = 5;
    cfg.hooks.before_commit = refuse_before_commit;
    cfg.hooks.committed = refuse_committed;
    cfg.hooks.arg = rf;
    assert_int_equal(cq_writer_start(f->store, &cfg, &f->writer), CQ_OK);
}

static void refuse_stop(fixture *f, refuse *rf)
{
    cq_writer_free(f->writer); /* before rf goes */
    f->writer = NULL;
    sqlite3_close(rf->probe);
}

/* A step that fails inside the batch's transaction is undone alone: every
 * command of the batch commits (202, its key remembered), and the key the
 * step could not delete is still there. Once it can, a later pass deletes
 * it. */
static void test_prune_failure_spares_batch(void **state)
{
    fixture *f = *state;
    cq_write_req r[3];
    refuse rf;
    char json[256], key[32];
    long long left = -1;

    refuse_start(f, &rf, 1);
    for (int i = 0; i < 3; i++) {
        snprintf(key, sizeof key, "spared-%d", i);
        make_command(f, &r[i], "PlaceOrder", place(i, json, sizeof json), key);
        assert_int_equal(cq_writer_submit(f->writer, &r[i]), CQ_OK);
    }
    wait_for(&f->wt, 3);
    for (int i = 0; i < 3; i++)
        assert_int_equal(r[i].status, 202);
    assert_int_equal(cq_writer_head(f->writer), 3);
    /* Each of the three batches ran its step, inside it. */
    assert_int_equal(atomic_load(&rf.steps_in_batch), 3);
    assert_int_equal(count_rows(rf.probe, "SELECT count(*) FROM command_log"
                                          " WHERE idem_key LIKE 'spared-%'"),
                     3);
    assert_int_equal(count_rows(rf.probe, "SELECT count(*) FROM command_log"
                                          " WHERE idem_key = 'poison'"),
                     1);

    atomic_store(&rf.mode, 0);
    for (int i = 0; i < 2000; i++) {
        left = count_rows(rf.probe, "SELECT count(*) FROM command_log"
                                    " WHERE idem_key = 'poison'");
        if (left == 0)
            break;
        usleep(5000);
    }
    assert_int_equal(left, 0);
    refuse_stop(f, &rf);
    release(r, 3);
}

/* A step that loses the batch's transaction fails the batch as any store
 * failure does: 503 naming the cause, nothing written. The writer goes
 * on: the same command in the next batch, whose step fails alone, 202. */
static void test_prune_losing_transaction_fails_batch(void **state)
{
    fixture *f = *state;
    cq_write_req r[2];
    refuse rf;
    char json[256];

    refuse_start(f, &rf, 2);
    make_command(f, &r[0], "PlaceOrder", place(1, json, sizeof json), "lost");
    assert_int_equal(cq_writer_submit(f->writer, &r[0]), CQ_OK);
    wait_for(&f->wt, 1);
    assert_int_equal(r[0].status, 503);
    assert_non_null(strstr(r[0].response, "store-unavailable"));
    assert_non_null(strstr(r[0].response, "prune step lost the transaction"));
    assert_int_equal(cq_writer_head(f->writer), 0);
    assert_true(atomic_load(&rf.steps_in_batch) >= 1);
    assert_int_equal(count_rows(rf.probe, "SELECT count(*) FROM events"), 0);
    assert_int_equal(count_rows(rf.probe, "SELECT count(*) FROM command_log"
                                          " WHERE idem_key = 'lost'"),
                     0);

    atomic_store(&rf.mode, 1);
    make_command(f, &r[1], "PlaceOrder", place(1, json, sizeof json), "lost");
    assert_int_equal(cq_writer_submit(f->writer, &r[1]), CQ_OK);
    wait_for(&f->wt, 2);
    assert_int_equal(r[1].status, 202);
    assert_false(r[1].replayed);
    assert_int_equal(cq_writer_head(f->writer), 1);
    assert_int_equal(count_rows(rf.probe, "SELECT count(*) FROM command_log"
                                          " WHERE idem_key = 'poison'"),
                     1);
    refuse_stop(f, &rf);
    release(r, 2);
}

/* An expired key still in the command log (not pruned yet) is absent: the
 * same request runs again instead of being replayed, and another request
 * under the key is not refused as a reuse. The entries are put in the same
 * batch just before, so no prune can have removed them. */
static void test_expired_key_not_replayed(void **state)
{
    fixture *f = *state;
    cq_write_req r[5];
    cq_writer_config cfg = {0};
    gate g;
    char json[256];

    gate_init(f, &g);
    cfg.hooks.before_commit = gate_before_commit;
    cfg.hooks.apply_inline = gate_inline;
    cfg.hooks.arg = &g;
    cq_writer_free(f->writer);
    assert_int_equal(cq_writer_start(f->store, &cfg, &f->writer), CQ_OK);

    make_command(f, &r[0], "PlaceOrder", place(900, json, sizeof json), NULL);
    make_command(f, &r[1], "PlaceOrder", place(901, json, sizeof json), NULL);
    make_command(f, &r[2], "PlaceOrder", place(902, json, sizeof json),
                 "k-old");
    make_command(f, &r[3], "PlaceOrder", place(903, json, sizeof json),
                 "k-other");
    g.plant_hash = r[2].command_hash;
    /* r[0] alone in the first batch, held; then r[1..3] in one batch:
     * r[1]'s inline hook plants the expired entries, r[2] and r[3] look
     * them up. */
    assert_int_equal(cq_writer_submit(f->writer, &r[0]), CQ_OK);
    pthread_mutex_lock(&g.mu);
    while (!g.held)
        pthread_cond_wait(&g.cv, &g.mu);
    g.plant = 1;
    pthread_mutex_unlock(&g.mu);
    for (int i = 1; i < 4; i++)
        assert_int_equal(cq_writer_submit(f->writer, &r[i]), CQ_OK);
    gate_wait_held_then_open(&g);
    wait_for(&f->wt, 4);

    assert_int_equal(g.plant, 0); /* planted */
    assert_int_equal(r[2].status, 202);
    assert_false(r[2].replayed);
    assert_int_equal(r[2].version, 1);
    assert_null(strstr(r[2].response, "the expired entry"));
    assert_non_null(strstr(r[2].response, "OrderPlaced"));
    assert_int_equal(r[3].status, 202); /* not 422 */
    assert_false(r[3].replayed);
    assert_null(strstr(r[3].response, "the expired entry"));
    assert_int_equal(cq_writer_head(f->writer), 4);

    /* The key now holds the new answer: the same request replays it. */
    make_command(f, &r[4], "PlaceOrder", place(902, json, sizeof json),
                 "k-old");
    assert_int_equal(cq_writer_submit(f->writer, &r[4]), CQ_OK);
    wait_for(&f->wt, 5);
    assert_int_equal(r[4].status, 202);
    assert_true(r[4].replayed);
    assert_string_equal(r[4].response, r[2].response);

    cq_writer_free(f->writer);
    f->writer = NULL;
    release(r, 5);
    gate_destroy(&g);
}

/* ---- a stream that moves between the version read and the append ---- */

/* Another node appending to the stream after this writer read its version
 * (and so decided on a state that misses that event) is played by the
 * decider itself: while `sneak` is positive, it first appends one event
 * to its own stream through the store, on the writer's thread, inside the
 * request's savepoint, as another writer's committed append would look.
 * Its state counts the stream's events, and the event it emits says how
 * many it saw: a decision made on a stale state is told by that number.
 * Touched by the writer thread only while a test waits for its answers. */
typedef struct tally {
    int64_t events;
} tally;

static cq_store *sneak_store;
static int sneak, decided;

static void *tally_initial(void)
{
    return calloc(1, sizeof(tally));
}

static int tally_evolve(void *state, const cq_event *ev)
{
    (void)ev;
    ((tally *)state)->events++;
    return CQ_OK;
}

static void *tally_clone(const void *state)
{
    tally *t = malloc(sizeof *t);

    if (t != NULL)
        *t = *(const tally *)state;
    return t;
}

static void tally_free(void *state)
{
    free(state);
}

static const cq_aggregate tally_agg = {"tally", tally_initial, tally_evolve,
                                       tally_clone, tally_free};

static int tally_stream(const json_t *body, char *buf, size_t cap)
{
    (void)body;
    snprintf(buf, cap, "tally-1");
    return CQ_OK;
}

static int tally_decide(const void *state, const json_t *body, cq_decision *d)
{
    (void)body;
    decided++;
    if (sneak > 0) {
        cq_new_event ev = {"Counted", 1, "{\"seen\":-1}", "{}"};
        sneak--;
        if (cq_store_append(sneak_store, "tally-1", CQ_VERSION_ANY, &ev, 1,
                            cq_now_ms(), NULL, NULL) != CQ_OK)
            abort();
    }
    return cq_decision_emit(
        d, "Counted", 1,
        json_pack("{s:I}", "seen", (json_int_t)((const tally *)state)->events));
}

static const cq_field tally_fields[] = {{.kind = CQ_FIELD_END}};
static const cq_command_def tally_count = {
    "Count", &tally_agg, tally_fields, CQ_EXPECT_ANY, tally_stream, NULL,
    tally_decide};

static void make_count(fixture *f, cq_write_req *r, int64_t if_match)
{
    memset(r, 0, sizeof *r);
    r->kind = CQ_WRITE_COMMAND;
    r->def = &tally_count;
    r->body = json_object();
    r->expected = if_match;
    snprintf(r->stream_id, sizeof r->stream_id, "tally-1");
    assert_int_equal(cq_uuid7(r->command_id), CQ_OK);
    r->done = on_done;
    r->user = &f->wt;
}

/* Copy an event's data into arg (char[64]). */
static int copy_data(void *arg, const cq_stored_event *se)
{
    snprintf(arg, 64, "%s", se->data);
    return 0;
}

/* The "seen" of tally-1's event at version v. */
static int64_t seen_at(fixture *f, int64_t v)
{
    char json[64] = "";
    int64_t seen = -2;

    assert_int_equal(cq_store_read_stream(f->store, "tally-1", v, 1,
                                          copy_data, json, NULL, NULL, 0),
                     CQ_OK);
    sscanf(json, "{\"seen\":%" SCNd64 "}", &seen);
    return seen;
}

/* A command without If-Match whose stream moved after its version was
 * read (the append finds another version) drops its cached state and is
 * decided once more, from the store: 202, on a state that counts the
 * other event. With If-Match, or when the stream moves again, 409. */
static void test_moved_stream_decided_again(void **state)
{
    fixture *f = *state;
    cq_write_req r[4];

    sneak_store = f->store;
    sneak = 0;
    decided = 0;
    make_count(f, &r[0], CQ_VERSION_ANY); /* caches tally-1 at version 1 */
    assert_int_equal(cq_writer_submit(f->writer, &r[0]), CQ_OK);
    wait_for(&f->wt, 1);
    assert_int_equal(r[0].status, 202);
    assert_int_equal(seen_at(f, 1), 0);

    sneak = 1; /* version 2 appears after the writer read version 1 */
    make_count(f, &r[1], CQ_VERSION_ANY);
    assert_int_equal(cq_writer_submit(f->writer, &r[1]), CQ_OK);
    wait_for(&f->wt, 2);
    assert_int_equal(r[1].status, 202);
    assert_int_equal(r[1].version, 3);
    assert_int_equal(decided, 3); /* once for r[0], twice for r[1] */
    assert_int_equal(seen_at(f, 2), -1);
    assert_int_equal(seen_at(f, 3), 2); /* decided on both earlier events */

    /* If-Match 3 agrees with the cache, so the version is not read but
     * guessed; the append finds 4 and the version read then answers 412 */
    sneak = 1;
    make_count(f, &r[2], 3);
    assert_int_equal(cq_writer_submit(f->writer, &r[2]), CQ_OK);
    wait_for(&f->wt, 3);
    assert_int_equal(r[2].status, 412);
    assert_non_null(strstr(r[2].response, "precondition-failed"));
    assert_int_equal(decided, 4);

    sneak = 2; /* moves before both attempts: the second is answered 409 */
    make_count(f, &r[3], CQ_VERSION_ANY);
    assert_int_equal(cq_writer_submit(f->writer, &r[3]), CQ_OK);
    wait_for(&f->wt, 4);
    assert_int_equal(r[3].status, 409);
    assert_int_equal(decided, 6);
    /* the sneaked events were in the refused requests' savepoints: gone */
    assert_int_equal(cq_writer_head(f->writer), 3);
    release(r, 4);
}

/* ---- several nodes on one PostgreSQL database ---- */

/* A second node on f's database: a store handle and a writer of its own
 * (answers go to the same waiter). */
static void second_node(fixture *f)
{
    cq_store_config cfg = {.uri = f->uri, .connections = 2};
    char err[256];

    if (cq_store_open(&cfg, &f->store2, err, sizeof err) != CQ_OK)
        fail_msg("%s", err);
    assert_int_equal(cq_writer_start(f->store2, NULL, &f->writer2), CQ_OK);
}

/* A state node A cached is not used after node B appended to its stream:
 * A's next command decides on every event, B's too. */
static void test_nodes_cached_state_not_stale(void **state)
{
    fixture *f = *state;
    cq_write_req r[4];

    second_node(f);
    sneak = 0;
    make_count(f, &r[0], CQ_VERSION_ANY); /* A caches tally-1 at 1 */
    assert_int_equal(cq_writer_submit(f->writer, &r[0]), CQ_OK);
    wait_for(&f->wt, 1);
    make_count(f, &r[1], CQ_VERSION_ANY); /* B appends version 2 */
    assert_int_equal(cq_writer_submit(f->writer2, &r[1]), CQ_OK);
    wait_for(&f->wt, 2);
    make_count(f, &r[2], CQ_VERSION_ANY); /* A again */
    assert_int_equal(cq_writer_submit(f->writer, &r[2]), CQ_OK);
    wait_for(&f->wt, 3);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(r[i].status, 202);
        assert_int_equal(r[i].version, i + 1);
        assert_int_equal(seen_at(f, i + 1), i);
    }
    /* and with If-Match of the version B moved it past: 412 */
    make_count(f, &r[3], 2);
    assert_int_equal(cq_writer_submit(f->writer2, &r[3]), CQ_OK);
    wait_for(&f->wt, 4);
    assert_int_equal(r[3].status, 412);
    release(r, 4);
}

/* One Idempotency-Key sent to two nodes at once runs once: the other
 * answer replays it, and one event is stored per key. */
static void test_nodes_idempotency_key_runs_once(void **state)
{
    fixture *f = *state;
    enum { ROUNDS = 20 };
    cq_write_req r[2 * ROUNDS];
    char json[256], key[32];
    int64_t head = 0;
    int replayed = 0;

    second_node(f);
    for (int i = 0; i < ROUNDS; i++) {
        snprintf(key, sizeof key, "k-%d", i);
        make_command(f, &r[2 * i], "PlaceOrder", place(i, json, sizeof json),
                     key);
        make_command(f, &r[2 * i + 1], "PlaceOrder",
                     place(i, json, sizeof json), key);
        /* either node may be first */
        assert_int_equal(cq_writer_submit(i % 2 ? f->writer2 : f->writer,
                                          &r[2 * i + i % 2]),
                         CQ_OK);
        assert_int_equal(cq_writer_submit(i % 2 ? f->writer : f->writer2,
                                          &r[2 * i + 1 - i % 2]),
                         CQ_OK);
    }
    wait_for(&f->wt, 2 * ROUNDS);
    for (int i = 0; i < ROUNDS; i++) {
        cq_write_req *a = &r[2 * i], *b = &r[2 * i + 1];
        assert_int_equal(a->status, 202);
        assert_int_equal(b->status, 202);
        assert_int_equal(a->replayed + b->replayed, 1);
        assert_string_equal(a->response, b->response);
        replayed += b->replayed;
    }
    assert_int_equal(cq_store_head_position(f->store, &head), CQ_OK);
    assert_int_equal(head, ROUNDS);
    print_message("same key on two nodes: %d rounds, node B's answer the "
                  "replay in %d\n",
                  ROUNDS, replayed);
    release(r, 2 * ROUNDS);
}

/* The same order placed on two nodes at once: one 202, one 409; the
 * stream has one event. */
static void test_nodes_expectation_holds(void **state)
{
    fixture *f = *state;
    enum { ROUNDS = 20 };
    cq_write_req r[2 * ROUNDS];
    char json[256];
    int64_t head = 0;

    second_node(f);
    for (int i = 0; i < ROUNDS; i++) {
        make_command(f, &r[2 * i], "PlaceOrder", place(i, json, sizeof json),
                     NULL);
        make_command(f, &r[2 * i + 1], "PlaceOrder",
                     place(i, json, sizeof json), NULL);
        assert_int_equal(cq_writer_submit(f->writer2, &r[2 * i + 1]), CQ_OK);
        assert_int_equal(cq_writer_submit(f->writer, &r[2 * i]), CQ_OK);
    }
    wait_for(&f->wt, 2 * ROUNDS);
    for (int i = 0; i < ROUNDS; i++) {
        int a = r[2 * i].status, b = r[2 * i + 1].status;
        assert_true((a == 202 && b == 409) || (a == 409 && b == 202));
        assert_non_null(
            strstr(r[2 * i + (a == 409 ? 0 : 1)].response, "stream-exists"));
    }
    assert_int_equal(cq_store_head_position(f->store, &head), CQ_OK);
    assert_int_equal(head, ROUNDS);
    release(r, 2 * ROUNDS);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_batch_positions, setup, teardown),
        cmocka_unit_test_setup_teardown(test_refusal_isolated, setup, teardown),
        cmocka_unit_test_setup_teardown(test_idempotency_in_batch, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_no_event_command, setup, teardown),
        cmocka_unit_test_setup_teardown(test_try_run_idle, setup, teardown),
        cmocka_unit_test_setup_teardown(test_try_run_busy, setup, teardown),
        cmocka_unit_test_setup_teardown(test_try_run_concurrent, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_concurrent_submitters, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_corrupt_stream, setup, teardown),
        cmocka_unit_test_setup_teardown(test_prune_interleaves_with_batches,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_prune_keeps_up_with_large_batches,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_prune_failure_spares_batch, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(
            test_prune_losing_transaction_fails_batch, setup, teardown),
        cmocka_unit_test_setup_teardown(test_expired_key_not_replayed, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_moved_stream_decided_again, setup,
                                        teardown),
    };
    const struct CMUnitTest pg_tests[] = {
        cmocka_unit_test_setup_teardown(test_batch_positions, setup, teardown),
        cmocka_unit_test_setup_teardown(test_refusal_isolated, setup, teardown),
        cmocka_unit_test_setup_teardown(test_idempotency_in_batch, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_moved_stream_decided_again, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_nodes_cached_state_not_stale,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_nodes_idempotency_key_runs_once,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_nodes_expectation_holds, setup,
                                        teardown),
    };
    pg = argc > 1 && strcmp(argv[1], "pg") == 0;
    if (pg)
        return cmocka_run_group_tests_name("writer_pg", pg_tests, NULL, NULL);
    return cmocka_run_group_tests_name("writer", tests, NULL, NULL);
}
