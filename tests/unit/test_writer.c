/*
 * test_writer.c -- the writer thread against a real events.db.
 *
 * Drives cq_writer with the orders domain from several submitting threads
 * and checks what the protocol in writer.h promises: answers only after
 * commit, one savepoint per request (a refusal leaves its batch-mates
 * alone), gap-free positions, idempotent replays (also within one batch),
 * and that the state cache never serves a rolled-back state.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/base.h"
#include "command/writer.h"
#include "orders/orders.h"

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

typedef struct fixture {
    char dir[256];
    cq_store *store;
    cq_writer *writer;
    waiter wt;
} fixture;

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof *f);
    const char *tmp = getenv("TMPDIR");
    cq_store_config cfg = {NULL, 0, 2};
    char err[256];

    snprintf(f->dir, sizeof f->dir, "%s/writer-XXXXXX", tmp ? tmp : "/tmp");
    assert_non_null(mkdtemp(f->dir));
    cfg.dir = f->dir;
    assert_int_equal(cq_store_open(&cfg, &f->store, err, sizeof err), CQ_OK);
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
    cq_store_close(f->store);
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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_batch_positions, setup, teardown),
        cmocka_unit_test_setup_teardown(test_refusal_isolated, setup, teardown),
        cmocka_unit_test_setup_teardown(test_idempotency_in_batch, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_no_event_command, setup, teardown),
        cmocka_unit_test_setup_teardown(test_concurrent_submitters, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_corrupt_stream, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
