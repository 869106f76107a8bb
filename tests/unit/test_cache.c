/*
 * test_cache.c -- the writer's aggregate cache (src/command/cache.c): its
 * bound, least-recently-used eviction, dirty entries kept until their
 * batch ends, and every state freed exactly once.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include <cmocka.h>

#include "command/cache.h"

static int live; /* states allocated and not yet freed */

static void *st_new(int v)
{
    int *s = malloc(sizeof *s);
    assert_non_null(s);
    *s = v;
    live++;
    return s;
}

static void st_free(void *s)
{
    if (s != NULL)
        live--;
    free(s);
}

static const cq_aggregate AGG = {.name = "t", .free = st_free};
static const cq_aggregate OTHER = {.name = "u", .free = st_free};

static const char *id(int i)
{
    static char buf[8][32];
    static int k;
    k = (k + 1) % 8;
    snprintf(buf[k], sizeof buf[k], "stream-%d", i);
    return buf[k];
}

static int cached(cq_cache *c, int i)
{
    int64_t v, p;
    const int *s = cq_cache_get(c, &AGG, id(i), &v, &p);
    if (s == NULL)
        return -1;
    assert_int_equal(v, *s);
    assert_int_equal(p, *s * 10);
    return *s;
}

static void put(cq_cache *c, int i)
{
    assert_int_equal(cq_cache_put(c, &AGG, id(i), st_new(i), i, i * 10),
                     CQ_OK);
}

static void test_bound_and_lru(void **state)
{
    cq_cache *c = cq_cache_new(100);
    (void)state;
    live = 0;
    for (int i = 0; i < 100; i++) {
        put(c, i);
        cq_cache_commit(c);
    }
    assert_int_equal(cq_cache_count(c), 100);
    assert_int_equal(cached(c, 0), 0); /* 0 is now the most recent */
    for (int i = 100; i < 150; i++) {
        put(c, i);
        cq_cache_commit(c);
    }
    assert_int_equal(cq_cache_count(c), 100);
    assert_int_equal(live, 100);
    assert_int_equal(cached(c, 0), 0); /* used: kept */
    assert_int_equal(cached(c, 1), -1); /* the least recent went first */
    assert_int_equal(cached(c, 50), -1);
    assert_int_equal(cached(c, 51), 51);
    assert_int_equal(cached(c, 149), 149);
    /* the same stream again replaces its state, no new entry */
    assert_int_equal(cq_cache_put(c, &AGG, id(149), st_new(7), 7, 70), CQ_OK);
    cq_cache_commit(c);
    assert_int_equal(cached(c, 149), 7);
    assert_int_equal(cq_cache_count(c), 100);
    /* another aggregate's state of the same stream id is another entry */
    assert_int_equal(cq_cache_put(c, &OTHER, id(149), st_new(1), 1, 10),
                     CQ_OK);
    cq_cache_commit(c);
    assert_int_equal(cached(c, 149), 7);
    assert_int_equal(cq_cache_count(c), 100);
    cq_cache_free(c);
    assert_int_equal(live, 0);
}

static void test_dirty_kept_until_batch_ends(void **state)
{
    cq_cache *c = cq_cache_new(10);
    (void)state;
    live = 0;
    for (int i = 0; i < 10; i++)
        put(c, i);
    cq_cache_commit(c);
    /* one batch writes 30 streams: none of them is evicted before it
     * ends, whatever the bound */
    for (int i = 10; i < 40; i++)
        put(c, i);
    assert_int_equal(cq_cache_count(c), 30);
    for (int i = 10; i < 40; i++)
        assert_int_equal(cached(c, i), i);
    cq_cache_commit(c);
    assert_int_equal(cq_cache_count(c), 10);
    assert_int_equal(live, 10);
    for (int i = 30; i < 40; i++)
        assert_int_equal(cached(c, i), i);
    /* a rolled-back batch leaves nothing it wrote */
    put(c, 100);
    assert_int_equal(cq_cache_put(c, &AGG, id(35), st_new(99), 99, 990),
                     CQ_OK);
    cq_cache_drop_dirty(c);
    assert_int_equal(cached(c, 100), -1);
    assert_int_equal(cached(c, 35), -1);
    assert_int_equal(cached(c, 30), -1); /* made room for stream 100 */
    assert_int_equal(cached(c, 36), 36);
    assert_int_equal(cq_cache_count(c), 8);
    assert_int_equal(live, 8);
    /* dropped while dirty, then the batch commits */
    put(c, 200);
    cq_cache_drop(c, &AGG, id(200));
    cq_cache_drop(c, &AGG, id(201)); /* not there: nothing */
    cq_cache_commit(c);
    assert_int_equal(cached(c, 200), -1);
    assert_int_equal(cq_cache_count(c), 8);
    cq_cache_free(c);
    assert_int_equal(live, 0);
}

static void test_many_streams_small_bound(void **state)
{
    cq_cache *c = cq_cache_new(3);
    (void)state;
    live = 0;
    for (int i = 0; i < 10000; i++) {
        put(c, i);
        if (i % 7 == 0)
            cq_cache_drop_dirty(c);
        else
            cq_cache_commit(c);
        assert_true(cq_cache_count(c) <= 3);
    }
    assert_int_equal(live, (int)cq_cache_count(c));
    assert_int_equal(cached(c, 9999), 9999);
    cq_cache_free(c);
    assert_int_equal(live, 0);
}

static void test_grows_with_entries(void **state)
{
    cq_cache *c = cq_cache_new(1000000);
    (void)state;
    live = 0;
    /* many more entries than the first buckets: each is found again after
     * the buckets doubled under it, in one batch and across batches */
    for (int i = 0; i < 20000; i++) {
        put(c, i);
        if (i % 1000 == 999)
            cq_cache_commit(c);
    }
    cq_cache_commit(c);
    assert_int_equal(cq_cache_count(c), 20000);
    for (int i = 0; i < 20000; i++)
        assert_int_equal(cached(c, i), i);
    for (int i = 0; i < 20000; i += 2)
        cq_cache_drop(c, &AGG, id(i));
    assert_int_equal(cq_cache_count(c), 10000);
    assert_int_equal(cached(c, 4), -1);
    assert_int_equal(cached(c, 5), 5);
    cq_cache_free(c);
    assert_int_equal(live, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bound_and_lru),
        cmocka_unit_test(test_dirty_kept_until_batch_ends),
        cmocka_unit_test(test_many_streams_small_bound),
        cmocka_unit_test(test_grows_with_entries),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
