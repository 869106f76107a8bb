/*
 * test_jsonscan.c -- unit tests of src/projection/jsonscan.c, the quick
 * look at event data the projector's batches take instead of jansson.
 *
 * Its one promise: whenever it accepts a text, jansson (json_loads with
 * JSON_REJECT_DUPLICATES, as domain/decode.c decodes data) accepts it as
 * an object too, the document cq_json_build makes is the one jansson makes
 * (equal, and dumped byte for byte the same, so members in the same
 * order), and every member the scan lists has jansson's value. Checked on
 * hand-picked texts on both sides of the line, and on many random
 * mutations of real event data. Texts it declines are simply decoded by
 * jansson, so declining is always allowed; a few common shapes must be
 * accepted (else the fast path would never run).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include "projection/jsonscan.h"

/* The promise, for one text: 1 if the scan accepted it. */
static int check_text(const char *text)
{
    cq_scan sc;
    int ok = cq_json_scan(text, &sc);
    json_t *ref, *built;

    if (!ok)
        return 0;
    ref = json_loads(text, JSON_REJECT_DUPLICATES, NULL);
    if (!json_is_object(ref))
        fail_msg("scan accepted what jansson refuses: %s", text);
    built = cq_json_build(text);
    assert_non_null(built);
    assert_true(json_equal(ref, built));
    {
        char *a = json_dumps(ref, JSON_COMPACT | JSON_ENCODE_ANY);
        char *b = json_dumps(built, JSON_COMPACT | JSON_ENCODE_ANY);
        assert_string_equal(a, b);
        free(a);
        free(b);
    }
    assert_int_equal((size_t)sc.n, json_object_size(ref));
    for (int k = 0; k < sc.n; k++) {
        const cq_scan_member *m = &sc.m[k];
        json_t *v = json_object_getn(ref, m->key, m->keylen);
        assert_non_null(v);
        assert_ptr_equal(cq_scan_find(&sc, m->key, m->keylen), m);
        switch (m->kind) {
        case CQ_SCAN_NULL: assert_true(json_is_null(v)); break;
        case CQ_SCAN_INT:
            if (json_is_boolean(v))
                assert_int_equal(m->i, json_is_true(v));
            else
                assert_int_equal(m->i, json_integer_value(v));
            assert_true(json_is_integer(v) || json_is_boolean(v));
            break;
        case CQ_SCAN_STRING:
            assert_true(json_is_string(v));
            assert_int_equal(m->len, json_string_length(v));
            assert_memory_equal(m->str, json_string_value(v), m->len);
            break;
        case CQ_SCAN_NESTED:
            assert_true(json_is_object(v) || json_is_array(v));
            break;
        }
    }
    assert_null(cq_scan_find(&sc, "no such member", 14));
    json_decref(ref);
    json_decref(built);
    return 1;
}

static const char *const accepted[] = {
    "{}",
    " \t\r\n{ } \n",
    "{\"order_id\":\"fill-1\",\"payment_id\":\"pay-1\",\"amount_cents\":166232,"
    "\"paid_cents\":166232}",
    "{\"order_id\":\"o-1\",\"customer_id\":\"c-1\",\"currency\":\"GBP\","
    "\"items\":[{\"sku\":\"A\",\"quantity\":4,\"unit_price_cents\":41558},"
    "{\"sku\":\"B\",\"quantity\":1,\"unit_price_cents\":0}],"
    "\"total_cents\":166232,\"item_count\":4}",
    "{ \"a\" : -12 , \"b\" : true, \"c\": false, \"d\": null, \"e\": [],"
    " \"f\": {}, \"g\": [1, [2, [3]], {\"h\": \"i\"}], \"j\": 0 }",
    "{\"big\":999999999999999999,\"neg\":-999999999999999999}",
    "{\"a\":{\"x\":1},\"b\":{\"x\":1}}", /* the same key in two objects */
    "{\"\":\"\"}",
};

/* Texts jansson refuses: the scan must refuse them too. */
static const char *const refused[] = {
    "",
    "[]",
    "\"s\"",
    "{",
    "{\"a\":1,}",
    "{\"a\":1 \"b\":2}",
    "{\"a\":01}",
    "{\"a\":1}x",
    "{\"a\":1}{}",
    "{\"a\":tru}",
    "{\"a\":truex}",
    "{\"a\":nul}",
    "{\"a\":[1,]}",
    "{\"a\":1,\"a\":2}",
    "{\"o\":{\"k\":1,\"k\":2}}",
    "{\"a\":\"\x01\"}",
    "{\"a\":-}",
    "{a:1}",
    "{\"a\":99999999999999999999999}",
};

/* Texts jansson accepts but the scan leaves to it (its subset). */
static const char *const declined[] = {
    "{\"a\":\"\\n\"}",         /* escapes */
    "{\"a\":\"\xc3\xa9\"}",    /* UTF-8 */
    "{\"a\":1.5}",             /* reals */
    "{\"a\":1e3}",
    "{\"a\":-0}",
    "{\"a\":1234567890123456789}", /* 19 digits */
};

static void hand_picked(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof accepted / sizeof *accepted; i++)
        if (!check_text(accepted[i]))
            fail_msg("the scan declined %s", accepted[i]);
    for (size_t i = 0; i < sizeof refused / sizeof *refused; i++) {
        cq_scan sc;
        json_t *j = json_loads(refused[i], JSON_REJECT_DUPLICATES, NULL);
        assert_false(json_is_object(j)); /* the premise */
        json_decref(j);
        assert_int_equal(cq_json_scan(refused[i], &sc), 0);
    }
    for (size_t i = 0; i < sizeof declined / sizeof *declined; i++) {
        cq_scan sc;
        json_t *j = json_loads(declined[i], JSON_REJECT_DUPLICATES, NULL);
        assert_true(json_is_object(j)); /* the premise */
        json_decref(j);
        assert_int_equal(cq_json_scan(declined[i], &sc), 0);
    }
}

/* Too deep, too many members: declined, not misread. */
static void limits(void **state)
{
    char buf[4096];
    size_t n = 0;
    cq_scan sc;

    (void)state;
    n += (size_t)snprintf(buf + n, sizeof buf - n, "{");
    for (int k = 0; k < CQ_SCAN_MEMBERS + 1; k++)
        n += (size_t)snprintf(buf + n, sizeof buf - n, "%s\"k%d\":%d",
                              k ? "," : "", k, k);
    snprintf(buf + n, sizeof buf - n, "}");
    assert_int_equal(cq_json_scan(buf, &sc), 0);
    n = 0;
    n += (size_t)snprintf(buf + n, sizeof buf - n, "{\"a\":");
    for (int k = 0; k < 40; k++)
        n += (size_t)snprintf(buf + n, sizeof buf - n, "[");
    for (int k = 0; k < 40; k++)
        n += (size_t)snprintf(buf + n, sizeof buf - n, "]");
    snprintf(buf + n, sizeof buf - n, "}");
    assert_int_equal(cq_json_scan(buf, &sc), 0);
    assert_int_equal(cq_json_scan(NULL, &sc), 0);
}

/* Random mutations of real data: whatever the scan accepts, jansson
 * reads the same way. */
static void mutations(void **state)
{
    static const char alphabet[] = "{}[]\",:0123456789-+.eE tfnrul\\\x01\x7f"
                                   "ab\xc3";
    uint64_t r = 0x9e3779b97f4a7c15u;
    int accepted_n = 0;

    (void)state;
    for (int round = 0; round < 200000; round++) {
        char text[512];
        const char *base = accepted[(size_t)round % (sizeof accepted /
                                                     sizeof *accepted)];
        size_t len = strlen(base);
        int edits;

        memcpy(text, base, len + 1);
        r ^= r >> 12, r ^= r << 25, r ^= r >> 27;
        edits = 1 + (int)(r % 3);
        for (int e = 0; e < edits && len > 0; e++) {
            r ^= r >> 12, r ^= r << 25, r ^= r >> 27;
            size_t at = (size_t)(r >> 8) % len;
            char c = alphabet[(r >> 40) % (sizeof alphabet - 1)];
            switch ((r >> 56) % 3) {
            case 0: text[at] = c; break; /* replace */
            case 1:                      /* delete */
                memmove(text + at, text + at + 1, len - at);
                len--;
                break;
            default: /* insert */
                if (len + 2 < sizeof text) {
                    memmove(text + at + 1, text + at, len - at + 1);
                    text[at] = c;
                    len++;
                }
            }
        }
        accepted_n += check_text(text);
    }
    /* the mutations reach both sides of the line */
    assert_true(accepted_n > 1000);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(hand_picked),
        cmocka_unit_test(limits),
        cmocka_unit_test(mutations),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
