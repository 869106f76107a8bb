/*
 * test_wait.c -- position waiters (src/projection/wait.c): fired exactly
 * once, by the position or by the deadline, in any order, from several
 * threads at once; also run under ThreadSanitizer.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <time.h>

#include "projection/wait.h"

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
    assert_int_equal(cq_waiters_add(ws, 1, 10, 1000, on_fire, &c, &w), 1);
    assert_null(w);
    assert_int_equal(cq_waiters_add(ws, 1, 5, 1000, on_fire, &c, &w), 1);
    /* queue 0 is separate */
    assert_int_equal(cq_waiters_add(ws, 0, 5, 1000, on_fire, &c, &w), 0);
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
    assert_int_equal(cq_waiters_add(ws, 0, 100, 20, on_fire, &c, &w), 0);
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
            cq_waiters_add(ws, 0, target, timeout, on_fire, &c, &w[i]), 0);
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
    assert_int_equal(cq_waiters_add(ws, 0, 60, 100, on_fire, &c, &w[0]), -2);
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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_already_reached),
        cmocka_unit_test(test_timeout),
        cmocka_unit_test(test_many_in_any_order),
        cmocka_unit_test(test_shutdown),
        cmocka_unit_test(test_concurrent),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
