/*
 * test_metrics.c -- unit tests of src/base/metrics: the exact Prometheus
 * text of counters, histograms and gauges, grouping of series into
 * families, deduplication and misuse, label and help escaping, float
 * formatting, collectors, and concurrency (threads adding and observing
 * while others render and register; totals must be exact and every
 * rendered histogram self-consistent). Runs under ThreadSanitizer too.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>

#include "base/metrics.h"
#include "cqrs/cqrs.h"

/* Render m, compare with want, free. */
static void assert_render(cq_metrics *m, const char *want)
{
    char *text = cq_metrics_render(m);

    assert_non_null(text);
    assert_string_equal(text, want);
    free(text);
}

/* ---- counters ------------------------------------------------------------ */

static void test_empty(void **unused)
{
    cq_metrics *m = cq_metrics_new();

    assert_non_null(m);
    assert_render(m, "");
    cq_metrics_free(m);
    cq_metrics_free(NULL);
}

static void test_counter_render(void **unused)
{
    cq_metrics *m = cq_metrics_new();
    cq_counter *plain = cq_metrics_counter(m, "cqrsd_query_wait_timeouts_total",
                                           "Query waits that timed out.", "");
    cq_counter *a = cq_metrics_counter(
        m, "cqrsd_commands_total", "Commands by type and outcome.",
        "type=\"PlaceOrder\",outcome=\"accepted\"");

    assert_non_null(plain);
    assert_non_null(a);
    assert_render(m, "# HELP cqrsd_query_wait_timeouts_total Query waits that "
                     "timed out.\n"
                     "# TYPE cqrsd_query_wait_timeouts_total counter\n"
                     "cqrsd_query_wait_timeouts_total 0\n"
                     "# HELP cqrsd_commands_total Commands by type and "
                     "outcome.\n"
                     "# TYPE cqrsd_commands_total counter\n"
                     "cqrsd_commands_total{type=\"PlaceOrder\",outcome="
                     "\"accepted\"} 0\n");
    cq_counter_add(plain, 3);
    cq_counter_add(a, 1);
    cq_counter_add(a, UINT64_C(18446744073709551614)); /* 2^64 - 1 total */
    assert_int_equal(cq_counter_value(plain), 3);
    assert_true(cq_counter_value(a) == UINT64_MAX);
    assert_render(m, "# HELP cqrsd_query_wait_timeouts_total Query waits that "
                     "timed out.\n"
                     "# TYPE cqrsd_query_wait_timeouts_total counter\n"
                     "cqrsd_query_wait_timeouts_total 3\n"
                     "# HELP cqrsd_commands_total Commands by type and "
                     "outcome.\n"
                     "# TYPE cqrsd_commands_total counter\n"
                     "cqrsd_commands_total{type=\"PlaceOrder\",outcome="
                     "\"accepted\"} 18446744073709551615\n");
    cq_metrics_free(m);
}

/* Series of one name print together under one header, in order of first
 * registration, whatever order they were registered in; the first help
 * wins; NULL labels mean none. */
static void test_grouping(void **unused)
{
    cq_metrics *m = cq_metrics_new();
    cq_counter *a1 = cq_metrics_counter(m, "a_total", "A.", "k=\"1\"");
    cq_counter *b = cq_metrics_counter(m, "b_total", "B.", NULL);
    cq_counter *a2 = cq_metrics_counter(m, "a_total", "other help", "k=\"2\"");

    assert_non_null(a1);
    assert_non_null(b);
    assert_non_null(a2);
    assert_ptr_not_equal(a1, a2);
    cq_counter_add(a2, 2);
    cq_counter_add(b, 5);
    assert_render(m, "# HELP a_total A.\n# TYPE a_total counter\n"
                     "a_total{k=\"1\"} 0\na_total{k=\"2\"} 2\n"
                     "# HELP b_total B.\n# TYPE b_total counter\n"
                     "b_total 5\n");
    cq_metrics_free(m);
}

static void test_dedupe_and_misuse(void **unused)
{
    cq_metrics *m = cq_metrics_new();
    double bounds[] = {1, 2};
    cq_counter *c = cq_metrics_counter(m, "x_total", "X.", "l=\"v\"");
    cq_histogram *h = cq_metrics_histogram(m, "h_seconds", "H.", "", bounds, 2);

    assert_non_null(c);
    assert_non_null(h);
    /* same name and labels: same series */
    assert_ptr_equal(cq_metrics_counter(m, "x_total", "X.", "l=\"v\""), c);
    assert_ptr_equal(
        cq_metrics_histogram(m, "h_seconds", "H.", NULL, bounds, 2), h);
    /* a name is one kind only */
    assert_null(cq_metrics_histogram(m, "x_total", "X.", "", bounds, 2));
    assert_null(cq_metrics_counter(m, "h_seconds", "H.", ""));
    /* other bounds for an existing histogram series */
    assert_null(cq_metrics_histogram(m, "h_seconds", "H.", "", bounds, 1));
    /* invalid names */
    assert_null(cq_metrics_counter(m, "", "E.", ""));
    assert_null(cq_metrics_counter(m, NULL, "E.", ""));
    assert_null(cq_metrics_counter(m, "1abc", "E.", ""));
    assert_null(cq_metrics_counter(m, "a-b", "E.", ""));
    assert_null(cq_metrics_counter(m, "a b", "E.", ""));
    assert_non_null(cq_metrics_counter(m, "_a:b9_total", "Ok.", ""));
    /* NULL registry and handles do nothing */
    assert_null(cq_metrics_counter(NULL, "y_total", "Y.", ""));
    assert_null(cq_metrics_histogram(NULL, "y", "Y.", "", bounds, 2));
    assert_null(cq_metrics_render(NULL));
    assert_int_equal(cq_metrics_collect(NULL, NULL, NULL), CQ_EINVAL);
    assert_int_equal(cq_metrics_collect(m, NULL, NULL), CQ_EINVAL);
    cq_counter_add(NULL, 1);
    cq_histogram_observe(NULL, 1.0);
    assert_int_equal(cq_counter_value(NULL), 0);
    cq_metrics_free(m);
}

/* ---- histograms ---------------------------------------------------------- */

static void test_histogram_render(void **unused)
{
    cq_metrics *m = cq_metrics_new();
    const double bounds[] = {0.125, 0.5, 1};
    cq_histogram *h = cq_metrics_histogram(m, "cqrsd_command_duration_seconds",
                                           "Command latency.", "", bounds, 3);
    cq_histogram *hl = cq_metrics_histogram(m, "cqrsd_command_duration_seconds",
                                            "Command latency.",
                                            "type=\"PlaceOrder\"", bounds, 3);

    assert_non_null(h);
    assert_non_null(hl);
    cq_histogram_observe(h, 0.125); /* le is inclusive */
    cq_histogram_observe(h, 0.25);
    cq_histogram_observe(h, 0.5);
    cq_histogram_observe(h, 2);
    cq_histogram_observe(h, NAN); /* ignored */
    cq_histogram_observe(hl, 0.0);
    assert_render(m,
                  "# HELP cqrsd_command_duration_seconds Command latency.\n"
                  "# TYPE cqrsd_command_duration_seconds histogram\n"
                  "cqrsd_command_duration_seconds_bucket{le=\"0.125\"} 1\n"
                  "cqrsd_command_duration_seconds_bucket{le=\"0.5\"} 3\n"
                  "cqrsd_command_duration_seconds_bucket{le=\"1\"} 3\n"
                  "cqrsd_command_duration_seconds_bucket{le=\"+Inf\"} 4\n"
                  "cqrsd_command_duration_seconds_sum 2.875\n"
                  "cqrsd_command_duration_seconds_count 4\n"
                  "cqrsd_command_duration_seconds_bucket{type=\"PlaceOrder\","
                  "le=\"0.125\"} 1\n"
                  "cqrsd_command_duration_seconds_bucket{type=\"PlaceOrder\","
                  "le=\"0.5\"} 1\n"
                  "cqrsd_command_duration_seconds_bucket{type=\"PlaceOrder\","
                  "le=\"1\"} 1\n"
                  "cqrsd_command_duration_seconds_bucket{type=\"PlaceOrder\","
                  "le=\"+Inf\"} 1\n"
                  "cqrsd_command_duration_seconds_sum{type=\"PlaceOrder\"} 0\n"
                  "cqrsd_command_duration_seconds_count{type=\"PlaceOrder\"} "
                  "1\n");
    cq_metrics_free(m);
}

/* Bounds print in the shortest form that reads back exactly (as
 * Prometheus' own clients print them), so le="0.005" matches. */
static void test_histogram_bounds(void **unused)
{
    cq_metrics *m = cq_metrics_new();
    const double bounds[] = {0.0005, 0.005, 0.1, 2.5, 1e6};
    const double unsorted[] = {1, 1};
    const double inf[] = {1, INFINITY};
    cq_histogram *h = cq_metrics_histogram(m, "w_seconds", "W.", "", bounds, 5);
    cq_histogram *none =
        cq_metrics_histogram(m, "n_seconds", "N.", "", NULL, 0);

    assert_non_null(h);
    assert_non_null(none);
    assert_null(cq_metrics_histogram(m, "u_seconds", "U.", "", unsorted, 2));
    assert_null(cq_metrics_histogram(m, "i_seconds", "I.", "", inf, 2));
    assert_null(cq_metrics_histogram(m, "z_seconds", "Z.", "", NULL, 1));
    assert_null(cq_metrics_histogram(m, "z_seconds", "Z.", "", bounds, -1));
    cq_histogram_observe(h, 1e9);
    cq_histogram_observe(none, -1.5);
    cq_histogram_observe(none, 0.1);
    assert_render(m, "# HELP w_seconds W.\n# TYPE w_seconds histogram\n"
                     "w_seconds_bucket{le=\"0.0005\"} 0\n"
                     "w_seconds_bucket{le=\"0.005\"} 0\n"
                     "w_seconds_bucket{le=\"0.1\"} 0\n"
                     "w_seconds_bucket{le=\"2.5\"} 0\n"
                     "w_seconds_bucket{le=\"1000000\"} 0\n"
                     "w_seconds_bucket{le=\"+Inf\"} 1\n"
                     "w_seconds_sum 1000000000\n"
                     "w_seconds_count 1\n"
                     "# HELP n_seconds N.\n# TYPE n_seconds histogram\n"
                     "n_seconds_bucket{le=\"+Inf\"} 2\n"
                     "n_seconds_sum -1.4\n"
                     "n_seconds_count 2\n");
    cq_metrics_free(m);
}

/* ---- gauges, collectors, escaping ---------------------------------------- */

static void collect_gauges(void *arg, cq_strbuf *out)
{
    int *calls = arg;

    (*calls)++;
    cq_metrics_gauge_family(out, "projection_lag_seconds",
                            "Age of the newest event not yet applied.");
    cq_metrics_gauge(out, "projection_lag_seconds",
                     "projection=\"order_summaries\"", 0.1);
    cq_metrics_gauge(out, "projection_lag_seconds", "projection=\"b\"", 0);
    cq_metrics_gauge_family(out, "event_store_head_position", NULL);
    cq_metrics_gauge(out, "event_store_head_position", "", 42);
}

static void collect_more(void *arg, cq_strbuf *out)
{
    cq_metrics_gauge_family(out, "g", "back\\slash\nnew \"line\"");
    cq_metrics_gauge(out, "g", NULL, 1.0 / 3);
    cq_metrics_gauge(out, "g", "k=\"big\"", 1e21);
    cq_metrics_gauge(out, "g", "k=\"small\"", -2.5e-10);
    cq_metrics_gauge(out, "g", "k=\"nan\"", NAN);
    cq_metrics_gauge(out, "g", "k=\"inf\"", INFINITY);
    cq_metrics_gauge(out, "g", "k=\"-inf\"", -INFINITY);
    cq_metrics_gauge(out, "g", "k=\"int\"", 9007199254740993.0);
}

static void test_collectors(void **unused)
{
    cq_metrics *m = cq_metrics_new();
    int calls = 0;

    assert_int_equal(cq_metrics_collect(m, collect_gauges, &calls), CQ_OK);
    assert_int_equal(cq_metrics_collect(m, collect_more, NULL), CQ_OK);
    /* counters registered later still print before collectors */
    cq_counter_add(cq_metrics_counter(m, "c_total", "C.", ""), 7);
    assert_render(m, "# HELP c_total C.\n# TYPE c_total counter\n"
                     "c_total 7\n"
                     "# HELP projection_lag_seconds Age of the newest event "
                     "not yet applied.\n"
                     "# TYPE projection_lag_seconds gauge\n"
                     "projection_lag_seconds{projection=\"order_summaries\"} "
                     "0.1\n"
                     "projection_lag_seconds{projection=\"b\"} 0\n"
                     "# HELP event_store_head_position \n"
                     "# TYPE event_store_head_position gauge\n"
                     "event_store_head_position 42\n"
                     "# HELP g back\\\\slash\\nnew \"line\"\n"
                     "# TYPE g gauge\n"
                     "g 0.3333333333333333\n"
                     "g{k=\"big\"} 1e+21\n"
                     "g{k=\"small\"} -2.5e-10\n"
                     "g{k=\"nan\"} NaN\n"
                     "g{k=\"inf\"} +Inf\n"
                     "g{k=\"-inf\"} -Inf\n"
                     "g{k=\"int\"} 9007199254740992\n");
    assert_int_equal(calls, 1);
    cq_metrics_free(m);
}

static void test_label_escape(void **unused)
{
    char buf[64];
    char small[6];

    cq_metrics_label_escape("order_summaries", buf, sizeof buf);
    assert_string_equal(buf, "order_summaries");
    cq_metrics_label_escape("", buf, sizeof buf);
    assert_string_equal(buf, "");
    cq_metrics_label_escape("a\\b\"c\nd\te", buf, sizeof buf);
    assert_string_equal(buf, "a\\\\b\\\"c\\nd\te");
    cq_metrics_label_escape("h\xc3\xa9llo", buf, sizeof buf);
    assert_string_equal(buf, "h\xc3\xa9llo");

    /* truncation never splits an escape sequence ... */
    cq_metrics_label_escape("abcd\"", small, sizeof small);
    assert_string_equal(small, "abcd");
    cq_metrics_label_escape("abc\"", small, sizeof small);
    assert_string_equal(small, "abc\\\"");
    cq_metrics_label_escape("abcdefgh", small, sizeof small);
    assert_string_equal(small, "abcde");
    /* ... nor a UTF-8 character */
    cq_metrics_label_escape("abcd\xc3\xa9", small, sizeof small);
    assert_string_equal(small, "abcd");
    cq_metrics_label_escape("a\xe2\x82\xac!", small, sizeof small);
    assert_string_equal(small, "a\xe2\x82\xac!");
    cq_metrics_label_escape("ab\xe2\x82\xac", small, sizeof small);
    assert_string_equal(small, "ab\xe2\x82\xac");
    cq_metrics_label_escape("abc\xe2\x82\xac", small, sizeof small);
    assert_string_equal(small, "abc");
    cq_metrics_label_escape("anything", small, 1);
    assert_string_equal(small, "");
}

/* ---- concurrency --------------------------------------------------------- */

enum { WORKERS = 6, ROUNDS = 20000 };

typedef struct {
    cq_metrics *m;
    cq_counter *accepted, *refused;
    cq_histogram *h;
    atomic_int done;
    atomic_int bad; /* failures seen off the main thread (cmocka's asserts
                       longjmp and belong to the test's own thread) */
} shared;

static void *worker(void *arg)
{
    shared *sh = arg;

    for (int i = 0; i < ROUNDS; i++) {
        cq_counter_add(sh->accepted, 1);
        if (i % 2 == 0)
            cq_counter_add(sh->refused, 3);
        /* 0.5 and 0.25 add exactly, so the sum must be exact too */
        cq_histogram_observe(sh->h, i % 2 ? 0.5 : 0.25);
    }
    return NULL;
}

/* Registers more series while others update and render. */
static void *registrar(void *arg)
{
    shared *sh = arg;
    char labels[64];

    for (int i = 0; i < 200; i++) {
        snprintf(labels, sizeof labels, "n=\"%d\"", i);
        cq_counter *c =
            cq_metrics_counter(sh->m, "late_total", "Late.", labels);
        if (c == NULL)
            atomic_fetch_add(&sh->bad, 1);
        cq_counter_add(c, (uint64_t)i);
    }
    return NULL;
}

/* The value on the line that starts with prefix, or -1. */
static double sample(const char *text, const char *prefix)
{
    size_t n = strlen(prefix);

    for (const char *line = text; *line;) {
        const char *end = strchr(line, '\n');
        if (strncmp(line, prefix, n) == 0 && line[n] == ' ')
            return strtod(line + n + 1, NULL);
        if (end == NULL)
            break;
        line = end + 1;
    }
    return -1;
}

/* Renders until the workers finish; every histogram must be consistent:
 * cumulative buckets never decrease and _count equals the +Inf bucket. */
static void *scraper(void *arg)
{
    shared *sh = arg;
    int scrapes = 0;

    while (!atomic_load(&sh->done) || scrapes < 3) {
        char *text = cq_metrics_render(sh->m);
        double b1, b2, inf, count;

        if (text == NULL) {
            atomic_fetch_add(&sh->bad, 1);
            break;
        }
        b1 = sample(text, "lat_seconds_bucket{le=\"0.25\"}");
        b2 = sample(text, "lat_seconds_bucket{le=\"0.5\"}");
        inf = sample(text, "lat_seconds_bucket{le=\"+Inf\"}");
        count = sample(text, "lat_seconds_count");
        if (!(b1 >= 0 && b1 <= b2 && b2 <= inf) || inf != count)
            atomic_fetch_add(&sh->bad, 1);
        free(text);
        scrapes++;
    }
    return NULL;
}

static void test_concurrent_updates(void **unused)
{
    const double bounds[] = {0.25, 0.5};
    shared sh;
    pthread_t workers[WORKERS], reg, scr;
    char *text;
    const uint64_t n = (uint64_t)WORKERS * ROUNDS;

    sh.m = cq_metrics_new();
    assert_non_null(sh.m);
    sh.accepted = cq_metrics_counter(sh.m, "cmd_total", "C.", "o=\"accepted\"");
    sh.refused = cq_metrics_counter(sh.m, "cmd_total", "C.", "o=\"refused\"");
    sh.h = cq_metrics_histogram(sh.m, "lat_seconds", "L.", "", bounds, 2);
    atomic_init(&sh.done, 0);
    atomic_init(&sh.bad, 0);
    assert_int_equal(pthread_create(&scr, NULL, scraper, &sh), 0);
    assert_int_equal(pthread_create(&reg, NULL, registrar, &sh), 0);
    for (int i = 0; i < WORKERS; i++)
        assert_int_equal(pthread_create(&workers[i], NULL, worker, &sh), 0);
    for (int i = 0; i < WORKERS; i++)
        pthread_join(workers[i], NULL);
    pthread_join(reg, NULL);
    atomic_store(&sh.done, 1);
    pthread_join(scr, NULL);
    assert_int_equal(atomic_load(&sh.bad), 0);

    assert_true(cq_counter_value(sh.accepted) == n);
    assert_true(cq_counter_value(sh.refused) == n / 2 * 3);
    text = cq_metrics_render(sh.m);
    assert_non_null(text);
    assert_true(sample(text, "cmd_total{o=\"accepted\"}") == (double)n);
    assert_true(sample(text, "cmd_total{o=\"refused\"}") ==
                (double)(n / 2 * 3));
    assert_true(sample(text, "lat_seconds_bucket{le=\"0.25\"}") == n / 2);
    assert_true(sample(text, "lat_seconds_bucket{le=\"0.5\"}") == n);
    assert_true(sample(text, "lat_seconds_count") == n);
    assert_true(sample(text, "lat_seconds_sum") == n / 2 * 0.75);
    assert_true(sample(text, "late_total{n=\"199\"}") == 199);
    /* one family header for the late series, registered concurrently */
    assert_non_null(strstr(text, "# TYPE late_total counter\n"));
    assert_null(
        strstr(strstr(text, "# TYPE late_total") + 1, "# TYPE late_total"));
    free(text);
    cq_metrics_free(sh.m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_empty),
        cmocka_unit_test(test_counter_render),
        cmocka_unit_test(test_grouping),
        cmocka_unit_test(test_dedupe_and_misuse),
        cmocka_unit_test(test_histogram_render),
        cmocka_unit_test(test_histogram_bounds),
        cmocka_unit_test(test_collectors),
        cmocka_unit_test(test_label_escape),
        cmocka_unit_test(test_concurrent_updates),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
