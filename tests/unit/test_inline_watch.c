/*
 * test_inline_watch.c -- the backoff of an HTTP thread that runs commands
 * itself (src/http/inline_watch.h): a sample of CQ_INLINE_SAMPLE
 * commands whose run-queue delay averages above CQ_INLINE_MAX_WAIT_NS
 * sends the next CQ_INLINE_BACKOFF commands through the queue, then a
 * new sample starts; below it nothing changes; an unknown delay (0)
 * changes nothing. And the calling thread's delay as the kernel reports
 * it only grows.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <stdint.h>
#include <stdio.h>
#include <unistd.h>

#include "http/inline_watch.h"

/* n commands run inline, each `step` ns of run-queue delay after the
 * last, from *t on. */
static void run(cq_inline_watch *w, uint64_t *t, int n, uint64_t step)
{
    for (int i = 0; i < n; i++) {
        assert_true(cq_inline_ok(w));
        *t += step;
        cq_inline_ran(w, *t);
    }
}

static void test_quiet_never_backs_off(void **state)
{
    cq_inline_watch w = {0};
    uint64_t t = 1000;

    (void)state;
    run(&w, &t, 10 * CQ_INLINE_SAMPLE, CQ_INLINE_MAX_WAIT_NS / 2);
    assert_true(cq_inline_ok(&w));
}

static void test_crowded_backs_off_then_tries_again(void **state)
{
    cq_inline_watch w = {0};
    uint64_t t = 1000;
    int queued = 0;

    (void)state;
    /* the first command only sets the mark; 16 deltas make the sample */
    run(&w, &t, CQ_INLINE_SAMPLE, 2 * CQ_INLINE_MAX_WAIT_NS);
    assert_true(cq_inline_ok(&w)); /* the sample is not complete yet */
    t += 2 * CQ_INLINE_MAX_WAIT_NS;
    cq_inline_ran(&w, t);
    while (!cq_inline_ok(&w))
        queued++;
    assert_int_equal(queued, CQ_INLINE_BACKOFF);
    /* a new sample: a delay that built up while the commands went
     * through the queue is not counted against it */
    t += 1000000000;
    run(&w, &t, 2 * CQ_INLINE_SAMPLE, 1000);
    assert_true(cq_inline_ok(&w));
}

static void test_unknown_delay_changes_nothing(void **state)
{
    cq_inline_watch w = {0};

    (void)state;
    for (int i = 0; i < 4 * CQ_INLINE_SAMPLE; i++) {
        assert_true(cq_inline_ok(&w));
        cq_inline_ran(&w, 0);
    }
    assert_int_equal(w.n, 0);
}

/* The second figure of /proc/thread-self/schedstat, read here: 0 when
 * the kernel does not say. */
static uint64_t schedstat_wait(void)
{
    unsigned long long cpu, wait;
    FILE *f = fopen("/proc/thread-self/schedstat", "r");
    int n = f != NULL ? fscanf(f, "%llu %llu", &cpu, &wait) : 0;

    if (f != NULL)
        fclose(f);
    return n == 2 ? wait : 0;
}

/* cq_inline_run_delay is the kernel's figure (0 is a real one too: a
 * thread that has never waited for a CPU), and it only grows. */
static void test_run_delay_is_the_kernels(void **state)
{
    uint64_t before, a, b, after;
    volatile unsigned x = 0;

    (void)state;
    before = schedstat_wait();
    a = cq_inline_run_delay();
    for (unsigned i = 0; i < 10000000u; i++)
        x += i;
    b = cq_inline_run_delay();
    after = schedstat_wait();
    assert_true(before <= a);
    assert_true(a <= b);
    assert_true(b <= after);
    if (access("/proc/thread-self/schedstat", R_OK) != 0)
        assert_int_equal(b, 0); /* a kernel without schedstat: unknown */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_quiet_never_backs_off),
        cmocka_unit_test(test_crowded_backs_off_then_tries_again),
        cmocka_unit_test(test_unknown_delay_changes_nothing),
        cmocka_unit_test(test_run_delay_is_the_kernels),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
