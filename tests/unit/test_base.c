/*
 * test_base.c -- unit tests of src/base: error strings, clock and time
 * format, UUIDv7 (format, version, variant, order, uniqueness across
 * threads), SHA-256 (FIPS 180-4 vectors and padding boundaries) and UTF-8
 * validation.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <pthread.h>

#include "base/base.h"
#include "cqrs/cqrs.h"

/* ---- errors -------------------------------------------------------------- */

static void test_strerror(void **unused)
{
    const char *unknown = cq_strerror(-9999);

    assert_non_null(unknown);
    for (int code = CQ_EMISMATCH; code <= CQ_OK; code++) {
        const char *s = cq_strerror(code);
        assert_non_null(s);
        assert_true(strlen(s) > 0);
        assert_string_not_equal(s, unknown);
    }
    assert_string_equal(cq_strerror(1), unknown);
}

/* ---- clock --------------------------------------------------------------- */

static void test_format_time(void **unused)
{
    char out[32];

    cq_format_time(0, out);
    assert_string_equal(out, "1970-01-01T00:00:00.000Z");
    cq_format_time(1795443506123LL, out);
    assert_string_equal(out, "2026-11-23T14:18:26.123Z");
    cq_format_time(1709164800001LL, out); /* a leap day */
    assert_string_equal(out, "2024-02-29T00:00:00.001Z");
    cq_format_time(951782400000LL, out);
    assert_string_equal(out, "2000-02-29T00:00:00.000Z");
    cq_format_time(-1, out); /* floor, not truncation */
    assert_string_equal(out, "1969-12-31T23:59:59.999Z");
    cq_format_time(INT64_MAX, out); /* clamped to four-digit years */
    assert_string_equal(out, "9999-12-31T23:59:59.999Z");
    cq_format_time(INT64_MIN, out);
    assert_string_equal(out, "0000-01-01T00:00:00.000Z");
}

static void test_clocks(void **unused)
{
    int64_t now = cq_now_ms();
    uint64_t a = cq_mono_ns(), b = cq_mono_ns();

    assert_true(now > 1700000000000LL); /* after 2023 */
    assert_true(b >= a);
}

/* ---- uuid ---------------------------------------------------------------- */

static int is_hex_lower(char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
}

static void assert_uuid7_format(const char *u)
{
    assert_int_equal(strlen(u), 36);
    for (int i = 0; i < 36; i++) {
        if (i == 8 || i == 13 || i == 18 || i == 23)
            assert_int_equal(u[i], '-');
        else
            assert_true(is_hex_lower(u[i]));
    }
    assert_int_equal(u[14], '7');           /* version */
    assert_non_null(strchr("89ab", u[19])); /* variant 10 */
}

static void test_uuid_format(void **unused)
{
    char u[37];
    int64_t before = cq_now_ms(), ts;

    assert_int_equal(cq_uuid7(u), CQ_OK);
    assert_uuid7_format(u);
    /* The first 48 bits are the time in ms (it may run a little ahead of
     * the clock when many ids were made in one millisecond). */
    char hex[13];
    memcpy(hex, u, 8);
    memcpy(hex + 8, u + 9, 4);
    hex[12] = '\0';
    ts = strtoll(hex, NULL, 16);
    assert_true(ts >= before - 1);
    assert_true(ts <= cq_now_ms() + 1000);
}

static void test_uuid_monotonic(void **unused)
{
    char prev[37], cur[37];

    assert_int_equal(cq_uuid7(prev), CQ_OK);
    for (int i = 0; i < 10000; i++) {
        assert_int_equal(cq_uuid7(cur), CQ_OK);
        assert_uuid7_format(cur);
        if (strcmp(prev, cur) >= 0)
            fail_msg("not increasing at %d: %s then %s", i, prev, cur);
        memcpy(prev, cur, sizeof cur);
    }
}

#define THREADS 4
#define PER_THREAD 5000

static void *make_ids(void *arg)
{
    char(*ids)[37] = arg;
    for (int i = 0; i < PER_THREAD; i++)
        if (cq_uuid7(ids[i]) != CQ_OK)
            return (void *)1;
    return NULL;
}

static int cmp_id(const void *a, const void *b)
{
    return strcmp(a, b);
}

static void test_uuid_threads(void **unused)
{
    char(*ids)[37] = calloc(THREADS * PER_THREAD, 37);
    pthread_t t[THREADS];

    assert_non_null(ids);
    for (int i = 0; i < THREADS; i++)
        assert_int_equal(
            pthread_create(&t[i], NULL, make_ids, ids + i * PER_THREAD), 0);
    for (int i = 0; i < THREADS; i++) {
        void *rc;
        pthread_join(t[i], &rc);
        assert_null(rc);
    }
    /* Each thread saw its own ids increase... */
    for (int i = 0; i < THREADS; i++)
        for (int k = 1; k < PER_THREAD; k++)
            assert_true(strcmp(ids[i * PER_THREAD + k - 1],
                               ids[i * PER_THREAD + k]) < 0);
    /* ...and no id was handed out twice. */
    qsort(ids, THREADS * PER_THREAD, 37, cmp_id);
    for (int k = 1; k < THREADS * PER_THREAD; k++)
        assert_true(strcmp(ids[k - 1], ids[k]) < 0);
    free(ids);
}

/* ---- sha256 -------------------------------------------------------------- */

static void assert_sha(const void *data, size_t len, const char *want)
{
    char out[65];
    cq_sha256_hex(data, len, out);
    assert_string_equal(out, want);
}

static void test_sha256_vectors(void **unused)
{
    assert_sha(
        NULL, 0,
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    assert_sha(
        "abc", 3,
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    const char *m448 =
        "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    assert_sha(
        m448, strlen(m448),
        "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
    const char *m896 =
        "abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmn"
        "hijklmnoijklmnopjklmnopqklmnopqrlmnopqrsmnopqrstnopqrstu";
    assert_sha(
        m896, strlen(m896),
        "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1");
}

static void test_sha256_million_a(void **unused)
{
    size_t n = 1000000;
    char *a = malloc(n);

    assert_non_null(a);
    memset(a, 'a', n);
    assert_sha(
        a, n,
        "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
    free(a);
}

/* Lengths around the 56- and 64-byte padding boundaries. */
static void test_sha256_boundaries(void **unused)
{
    static const struct {
        size_t n;
        const char *hex;
    } v[] = {
        {55,
         "9f4390f8d30c2dd92ec9f095b65e2b9ae9b0a925a5258e241c9f1e910f734318"},
        {56,
         "b35439a4ac6f0948b6d6f9e3c6af0f5f590ce20f1bde7090ef7970686ec6738a"},
        {57,
         "f13b2d724659eb3bf47f2dd6af1accc87b81f09f59f2b75e5c0bed6589dfe8c6"},
        {63,
         "7d3e74a05d7db15bce4ad9ec0658ea98e3f06eeecf16b4c6fff2da457ddc2f34"},
        {64,
         "ffe054fe7ae0cb6dc65c3af9b61d5209f439851db43d0ba5997337df154668eb"},
        {65,
         "635361c48bb9eab14198e76ea8ab7f1a41685d6ad62aa9146d301d4f17eb0ae0"},
        {119,
         "31eba51c313a5c08226adf18d4a359cfdfd8d2e816b13f4af952f7ea6584dcfb"},
        {120,
         "2f3d335432c70b580af0e8e1b3674a7c020d683aa5f73aaaedfdc55af904c21c"},
        {128,
         "6836cf13bac400e9105071cd6af47084dfacad4e5e302c94bfed24e013afb73e"},
    };
    char a[128];

    memset(a, 'a', sizeof a);
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++)
        assert_sha(a, v[i].n, v[i].hex);
}

/* ---- utf8 ---------------------------------------------------------------- */

#define VALID(lit) assert_int_equal(cq_utf8_valid(lit, sizeof(lit) - 1), 1)
#define INVALID(lit) assert_int_equal(cq_utf8_valid(lit, sizeof(lit) - 1), 0)

static void test_utf8(void **unused)
{
    assert_int_equal(cq_utf8_valid(NULL, 0), 1);
    VALID("");
    VALID("plain ascii");
    VALID("a\0b");              /* NUL is well-formed */
    VALID("\xc2\x80");          /* U+0080 */
    VALID("\xc3\xa9t\xc3\xa9"); /* été */
    VALID("\xdf\xbf");          /* U+07FF */
    VALID("\xe0\xa0\x80");      /* U+0800 */
    VALID("\xe2\x82\xac");      /* € */
    VALID("\xed\x9f\xbf");      /* U+D7FF, just below the surrogates */
    VALID("\xee\x80\x80");      /* U+E000, just above */
    VALID("\xef\xbf\xbf");      /* U+FFFF */
    VALID("\xf0\x90\x80\x80");  /* U+10000 */
    VALID("\xf0\x9d\x84\x9e");  /* 𝄞 */
    VALID("\xf4\x8f\xbf\xbf");  /* U+10FFFF */

    INVALID("\x80"); /* stray continuation */
    INVALID("\xbf");
    INVALID("\xc0\x80");         /* overlong NUL */
    INVALID("\xc1\xbf");         /* overlong */
    INVALID("\xe0\x80\x80");     /* overlong */
    INVALID("\xe0\x9f\xbf");     /* overlong U+07FF */
    INVALID("\xf0\x80\x80\x80"); /* overlong */
    INVALID("\xf0\x8f\xbf\xbf"); /* overlong U+FFFF */
    INVALID("\xed\xa0\x80");     /* U+D800, a surrogate */
    INVALID("\xed\xbf\xbf");     /* U+DFFF */
    INVALID("\xf4\x90\x80\x80"); /* U+110000 */
    INVALID("\xf5\x80\x80\x80");
    INVALID("\xff");
    INVALID("\xfe");
    INVALID("\xc3"); /* truncated */
    INVALID("\xe2\x82");
    INVALID("\xf0\x9d\x84");
    INVALID("ok\xe2\x82"); /* truncated at the end */
    INVALID("\xc3\x28");   /* bad continuation */
    INVALID("\xe2\x28\xa1");
    INVALID("\xe2\x82\x28");
    INVALID("\xf0\x9d\x28\x9e");
    /* The length is respected: a valid prefix of a longer buffer. */
    assert_int_equal(cq_utf8_valid("\xe2\x82\xac", 2), 0);
    assert_int_equal(cq_utf8_valid("ab\xff", 2), 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_strerror),
        cmocka_unit_test(test_format_time),
        cmocka_unit_test(test_clocks),
        cmocka_unit_test(test_uuid_format),
        cmocka_unit_test(test_uuid_monotonic),
        cmocka_unit_test(test_uuid_threads),
        cmocka_unit_test(test_sha256_vectors),
        cmocka_unit_test(test_sha256_million_a),
        cmocka_unit_test(test_sha256_boundaries),
        cmocka_unit_test(test_utf8),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
