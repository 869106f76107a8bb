/*
 * test_tail.c -- the events committed last, in memory
 * (src/projection/tail.c): what is published is exactly what committed,
 * a gap drops the run, the bounds hold, and readers on other threads see
 * whole events.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "projection/tail.h"

/* Stage n events of stream `stream` from version v at position p. */
static void stage(cq_tail *t, const char *stream, int64_t v, int64_t p,
                  size_t n)
{
    cq_stored_event ev[8];
    char data[8][32];

    assert_true(n <= 8);
    for (size_t i = 0; i < n; i++) {
        snprintf(data[i], sizeof data[i], "{\"p\":%lld}", (long long)p + (long long)i);
        ev[i] = (cq_stored_event){.position = p + (int64_t)i,
                                  .stream_id = stream,
                                  .version = v + (int64_t)i,
                                  .type = "T",
                                  .schema_version = 1,
                                  .data = data[i],
                                  .metadata = "{}",
                                  .recorded_at = 1000 + p + (int64_t)i};
    }
    cq_tail_stage(t, ev, n);
}

typedef struct seen {
    int n;
    int64_t pos[64];
    char stream[64][16];
    int stop_after;
} seen;

static int on_event(void *arg, const cq_stored_event *ev)
{
    seen *s = arg;
    char want[32];

    snprintf(want, sizeof want, "{\"p\":%lld}", (long long)ev->position);
    assert_string_equal(ev->data, want);
    assert_string_equal(ev->metadata, "{}");
    assert_string_equal(ev->type, "T");
    assert_int_equal(ev->recorded_at, 1000 + ev->position);
    if (s->n < 64) {
        s->pos[s->n] = ev->position;
        snprintf(s->stream[s->n], sizeof s->stream[0], "%s", ev->stream_id);
    }
    s->n++;
    return s->stop_after > 0 && s->n == s->stop_after;
}

static int read_from(cq_tail *t, int64_t from, int max, seen *s)
{
    memset(s, 0, sizeof *s);
    return cq_tail_read(t, from, max, on_event, s);
}

static void test_publish_and_read(void **state)
{
    cq_tail *t = cq_tail_new();
    cq_stream_applied acc[] = {{"a", 2}, {"b", 1}};
    seen s;
    int64_t at = 0, v = -1;

    (void)state;
    assert_int_equal(read_from(t, 1, 10, &s), 0); /* nothing yet */
    stage(t, "a", 1, 1, 2);
    stage(t, "b", 1, 3, 1);
    assert_int_equal(read_from(t, 1, 10, &s), 0); /* not committed yet */
    cq_tail_publish(t, 3, acc, 2, 0);
    assert_int_equal(read_from(t, 1, 10, &s), 3);
    assert_int_equal(s.pos[0], 1);
    assert_int_equal(s.pos[2], 3);
    assert_string_equal(s.stream[2], "b");
    assert_int_equal(read_from(t, 2, 1, &s), 1);
    assert_int_equal(s.pos[0], 2);
    assert_int_equal(read_from(t, 4, 10, &s), 0);
    s.stop_after = 1; /* the callback stops the read */
    s.n = 0;
    assert_int_equal(cq_tail_read(t, 1, 10, on_event, &s), 1);

    assert_true(cq_tail_recorded_at(t, 2, &at));
    assert_int_equal(at, 1002);
    assert_false(cq_tail_recorded_at(t, 4, &at));
    assert_true(cq_tail_version_at(t, "a", 3, &v));
    assert_int_equal(v, 2);
    assert_true(cq_tail_version_at(t, "a", 1, &v));
    assert_int_equal(v, 1);
    /* the run starts at the first position: no event of c up to 3 */
    assert_true(cq_tail_version_at(t, "c", 3, &v));
    assert_int_equal(v, 0);

    /* the next batch continues the run */
    cq_stream_applied acc2[] = {{"c", 1}};
    stage(t, "c", 1, 4, 1);
    cq_tail_publish(t, 4, acc2, 1, 0);
    assert_int_equal(read_from(t, 3, 10, &s), 2);
    cq_tail_free(t);
}

/* A savepoint rolled back gives its positions to the next append; a last
 * request rolled back leaves events past the head. Neither is kept. */
static void test_rolled_back_not_kept(void **state)
{
    cq_tail *t = cq_tail_new();
    cq_stream_applied acc[] = {{"a", 1}, {"c", 1}};
    seen s;
    int64_t v;

    (void)state;
    stage(t, "a", 1, 1, 1);
    stage(t, "b", 1, 2, 2); /* rolled back: c takes position 2 */
    stage(t, "c", 1, 2, 1);
    stage(t, "d", 1, 3, 1); /* rolled back, the last: head stays 2 */
    cq_tail_publish(t, 2, acc, 2, 0);
    assert_int_equal(read_from(t, 1, 10, &s), 2);
    assert_string_equal(s.stream[0], "a");
    assert_string_equal(s.stream[1], "c");
    assert_true(cq_tail_version_at(t, "b", 2, &v));
    assert_int_equal(v, 0);

    /* a batch rolled back as a whole publishes nothing; the next one
     * appends at the same positions */
    stage(t, "x", 1, 3, 2);
    cq_stream_applied acc2[] = {{"y", 1}};
    stage(t, "y", 1, 3, 1);
    cq_tail_publish(t, 3, acc2, 1, 0);
    assert_int_equal(read_from(t, 3, 10, &s), 1);
    assert_string_equal(s.stream[0], "y");
    cq_tail_free(t);
}

/* Whatever the tail cannot vouch for drops the run: an event of a stream
 * no accepted request wrote, events the tail did not see, a list that
 * could not be made. The run starts again with a batch it can. */
static void test_doubt_drops_the_run(void **state)
{
    cq_tail *t = cq_tail_new();
    cq_stream_applied a1[] = {{"a", 1}}, a2[] = {{"b", 1}};
    seen s;

    (void)state;
    stage(t, "a", 1, 1, 1);
    cq_tail_publish(t, 1, a1, 1, 0);
    assert_int_equal(read_from(t, 1, 10, &s), 1);

    stage(t, "z", 1, 2, 1); /* no accepted request wrote z */
    cq_tail_publish(t, 2, a2, 1, 0);
    assert_int_equal(read_from(t, 1, 10, &s), 0);
    assert_int_equal(read_from(t, 2, 10, &s), 0);

    stage(t, "b", 1, 3, 1); /* the run starts again here */
    cq_tail_publish(t, 3, a2, 1, 0);
    assert_int_equal(read_from(t, 3, 10, &s), 1);

    cq_tail_publish(t, 5, NULL, 0, 0); /* 4 and 5 went past it */
    assert_int_equal(read_from(t, 3, 10, &s), 0);
    stage(t, "b", 2, 6, 1); /* not after the head it saw: a fresh run */
    cq_stream_applied a3[] = {{"b", 2}};
    cq_tail_publish(t, 6, a3, 1, 0);
    assert_int_equal(read_from(t, 6, 10, &s), 1);
    int64_t v = -1;
    /* the run starts at 6: whether b had events before is not known */
    assert_false(cq_tail_version_at(t, "q", 6, &v));
    assert_true(cq_tail_version_at(t, "b", 6, &v));
    assert_int_equal(v, 2);

    stage(t, "b", 3, 7, 1);
    cq_tail_publish(t, 7, NULL, 0, 1); /* no list */
    assert_int_equal(read_from(t, 6, 10, &s), 0);
    assert_int_equal(read_from(t, 7, 10, &s), 0);

    /* a batch with no events, head unchanged: the run stays */
    stage(t, "b", 4, 8, 1);
    cq_stream_applied a4[] = {{"b", 4}};
    cq_tail_publish(t, 8, a4, 1, 0);
    cq_tail_publish(t, 8, NULL, 0, 0);
    assert_int_equal(read_from(t, 8, 10, &s), 1);
    cq_tail_free(t);
}

/* A batch that committed without the hook being called (the head could
 * not be read after COMMIT) stays staged; the next batch's list does not
 * name its streams, so the run is dropped rather than vouched for, and
 * starts again after. A replayed request's stream in the list admits
 * nothing the positions do not. */
static void test_committed_without_publish(void **state)
{
    cq_tail *t = cq_tail_new();
    cq_stream_applied a1[] = {{"a", 1}}, a3[] = {{"b", 1}};
    cq_stream_applied a4[] = {{"a", 1}, {"d", 1}}; /* a: a replay */
    seen s;

    (void)state;
    stage(t, "a", 1, 1, 1);
    cq_tail_publish(t, 1, a1, 1, 0);
    stage(t, "c", 1, 2, 1); /* committed; no publish for it */
    stage(t, "b", 1, 3, 1);
    cq_tail_publish(t, 3, a3, 1, 0);
    assert_int_equal(read_from(t, 1, 10, &s), 0);
    assert_int_equal(read_from(t, 2, 10, &s), 0);
    assert_int_equal(read_from(t, 3, 10, &s), 0);

    stage(t, "d", 1, 4, 1);
    stage(t, "a", 2, 5, 1); /* rolled back, the last */
    cq_tail_publish(t, 4, a4, 2, 0);
    assert_int_equal(read_from(t, 4, 10, &s), 1);
    assert_string_equal(s.stream[0], "d");
    assert_int_equal(read_from(t, 5, 10, &s), 0);
    cq_tail_free(t);
}

/* At most CQ_TAIL_EVENTS events; the oldest go first. */
static void test_bounded_by_count(void **state)
{
    cq_tail *t = cq_tail_new();
    seen s;
    int64_t n = CQ_TAIL_EVENTS + 100, v;

    (void)state;
    for (int64_t p = 1; p <= n; p++) {
        cq_stream_applied acc[] = {{"s", p}};
        stage(t, "s", p, p, 1);
        cq_tail_publish(t, p, acc, 1, 0);
    }
    assert_int_equal(read_from(t, 100, 10, &s), 0);
    assert_int_equal(read_from(t, n - CQ_TAIL_EVENTS + 1, 3, &s), 3);
    assert_int_equal(read_from(t, n, 10, &s), 1);
    /* reads longer than one internal step */
    assert_int_equal(read_from(t, n - 299, 1000, &s), 300);
    assert_int_equal(s.pos[63], n - 299 + 63);
    /* the scan looks back CQ_TAIL_SCAN events at most */
    assert_true(cq_tail_version_at(t, "s", n, &v));
    assert_int_equal(v, n);
    assert_false(cq_tail_version_at(t, "other", n, &v));
    cq_tail_free(t);
}

/* An event larger than a quarter of the bytes is not kept; the run goes
 * on after it. */
static void test_large_event_not_kept(void **state)
{
    cq_tail *t = cq_tail_new();
    size_t big = CQ_TAIL_BYTES / 4 + 1;
    char *data = malloc(big + 1);
    cq_stored_event ev = {.position = 2,
                          .stream_id = "s",
                          .version = 2,
                          .type = "T",
                          .schema_version = 1,
                          .metadata = "{}",
                          .recorded_at = 1002};
    cq_stream_applied acc[] = {{"s", 3}};
    seen s;

    (void)state;
    memset(data, 'x', big);
    data[big] = '\0';
    ev.data = data;
    stage(t, "s", 1, 1, 1);
    cq_tail_stage(t, &ev, 1);
    stage(t, "s", 3, 3, 1);
    cq_tail_publish(t, 3, acc, 1, 0);
    free(data);
    assert_int_equal(read_from(t, 1, 10, &s), 0);
    assert_int_equal(read_from(t, 2, 10, &s), 0);
    assert_int_equal(read_from(t, 3, 10, &s), 1);
    stage(t, "s", 4, 4, 1);
    cq_stream_applied acc2[] = {{"s", 4}};
    cq_tail_publish(t, 4, acc2, 1, 0);
    assert_int_equal(read_from(t, 3, 10, &s), 2);
    cq_tail_free(t);
}

/* Readers on other threads while the turn publishes (ThreadSanitizer
 * build): every event read is whole and in order. */
typedef struct race {
    cq_tail *t;
    int stop;
    pthread_mutex_t mu;
} race;

static int check_order(void *arg, const cq_stored_event *ev)
{
    int64_t *last = arg;
    char want[32];

    snprintf(want, sizeof want, "{\"p\":%lld}", (long long)ev->position);
    if (strcmp(ev->data, want) != 0 || (*last && ev->position != *last + 1))
        abort();
    *last = ev->position;
    return 0;
}

static void *reader(void *arg)
{
    race *r = arg;

    for (;;) {
        pthread_mutex_lock(&r->mu);
        int stop = r->stop;
        pthread_mutex_unlock(&r->mu);
        if (stop)
            return NULL;
        for (int64_t from = 1; from < 3000; from += 97) {
            int64_t last = 0, at;
            cq_tail_read(r->t, from, 200, check_order, &last);
            cq_tail_recorded_at(r->t, from, &at);
        }
    }
}

static void test_readers_while_publishing(void **state)
{
    race r = {.t = cq_tail_new()};
    pthread_t th[2];

    (void)state;
    pthread_mutex_init(&r.mu, NULL);
    for (int i = 0; i < 2; i++)
        assert_int_equal(pthread_create(&th[i], NULL, reader, &r), 0);
    for (int64_t p = 1; p <= 3000; p += 2) {
        cq_stream_applied acc[] = {{"s", p + 1}};
        stage(r.t, "s", p, p, 2);
        cq_tail_publish(r.t, p + 1, acc, 1, 0);
    }
    pthread_mutex_lock(&r.mu);
    r.stop = 1;
    pthread_mutex_unlock(&r.mu);
    for (int i = 0; i < 2; i++)
        pthread_join(th[i], NULL);
    pthread_mutex_destroy(&r.mu);
    cq_tail_free(r.t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_publish_and_read),
        cmocka_unit_test(test_rolled_back_not_kept),
        cmocka_unit_test(test_doubt_drops_the_run),
        cmocka_unit_test(test_committed_without_publish),
        cmocka_unit_test(test_bounded_by_count),
        cmocka_unit_test(test_large_event_not_kept),
        cmocka_unit_test(test_readers_while_publishing),
    };
    return cmocka_run_group_tests_name("tail", tests, NULL, NULL);
}
