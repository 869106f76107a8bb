/*
 * test_domain.c -- the domain registry (lookups, upcaster chains) and the
 * one decoder of stored events (cq_event_decode): borrow when no upcaster
 * applies, copy when one does, each failure named, metadata optional.
 *
 * A small domain of its own, so the tests do not depend on the orders
 * example (whose own upcaster is tested in test_orders.c).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "domain/domain.h"

/* Thing v1 -> v2 adds "v2", v2 -> v3 adds "v3". Broken v1 -> v2 scribbles
 * on the data, then fails. Chain v1 -> v2 works, v2 -> v3 fails. */
static int add_key(json_t *data, const char *key)
{
    return json_object_set_new(data, key, json_true()) == 0 ? CQ_OK : CQ_ENOMEM;
}
static int thing_1(json_t *data)
{
    return add_key(data, "v2");
}
static int thing_2(json_t *data)
{
    return add_key(data, "v3");
}
static int never(json_t *data)
{
    return add_key(data, "never");
}
static int scribble_then_fail(json_t *data)
{
    add_key(data, "scribbled");
    return CQ_ECORRUPT;
}
static int out_of_memory(json_t *data)
{
    (void)data;
    return CQ_ENOMEM;
}

static const cq_upcaster upcasters[] = {
    {"Thing", 1, thing_1},
    {"Thing", 2, thing_2},
    {"Thing", 1, never}, /* shadowed: the first listed wins */
    {"Broken", 1, scribble_then_fail},
    {"Chain", 1, thing_1},
    {"Chain", 2, out_of_memory},
    {NULL, 0, NULL},
};

static const char *const categories[] = {"thing", NULL};
static const char *const types[] = {"Thing", "Chain", NULL};

static const cq_domain dom = {"things", NULL, upcasters, categories, types};

static cq_stored_event stored(const char *type, int sv, const char *data,
                              const char *meta)
{
    cq_stored_event se = {7, "thing-1", 3, type, sv, data, meta, 0};
    return se;
}

static json_t *parse(const char *text)
{
    json_t *j = json_loads(text, 0, NULL);
    assert_non_null(j);
    return j;
}

static int has(const json_t *o, const char *key)
{
    return json_object_get(o, key) != NULL;
}

/* ---- registry ---------------------------------------------------------- */

static void test_registry(void **unused)
{
    int v;
    json_t *d;

    (void)unused;
    assert_ptr_equal(cq_domain_upcaster(&dom, "Thing", 1), &upcasters[0]);
    assert_ptr_equal(cq_domain_upcaster(&dom, "Thing", 2), &upcasters[1]);
    assert_null(cq_domain_upcaster(&dom, "Thing", 3));
    assert_null(cq_domain_upcaster(&dom, "thing", 1));
    assert_null(cq_domain_upcaster(&dom, NULL, 1));
    assert_null(cq_domain_upcaster(NULL, "Thing", 1));

    /* one version at a time, to the newest */
    d = parse("{}");
    v = 1;
    assert_int_equal(cq_domain_upcast(&dom, "Thing", &v, d), CQ_OK);
    assert_int_equal(v, 3);
    assert_true(has(d, "v2") && has(d, "v3") && !has(d, "never"));
    /* a failure names the version it stopped at */
    v = 1;
    assert_int_equal(cq_domain_upcast(&dom, "Chain", &v, d), CQ_ENOMEM);
    assert_int_equal(v, 2);
    /* no domain, no change */
    v = 1;
    assert_int_equal(cq_domain_upcast(NULL, "Thing", &v, d), CQ_OK);
    assert_int_equal(v, 1);
    json_decref(d);

    assert_string_equal(cq_domain_stream_owner(&dom, "thing-9"), "things");
    assert_null(cq_domain_stream_owner(&dom, "things-9"));
    assert_string_equal(cq_domain_type_owner(&dom, "Chain"), "things");
    assert_null(cq_domain_type_owner(&dom, "Broken"));
    assert_null(cq_domain_command(&dom, "Anything"));
}

/* ---- decoding ---------------------------------------------------------- */

/* Current shape, parsed by the caller: used as it is, not copied. */
static void test_borrow_without_upcaster(void **unused)
{
    cq_stored_event se = stored("Thing", 3, "{\"a\":1}", "{}");
    json_t *parsed = parse("{\"a\":1}");
    cq_decoded d;
    char err[192];

    (void)unused;
    assert_int_equal(cq_event_decode(&dom, &se, parsed, 0, &d, err, sizeof err),
                     CQ_OK);
    assert_ptr_equal(d.data, parsed);
    assert_int_equal(d.borrowed, 1);
    assert_int_equal(d.schema_version, 3);
    assert_int_equal(d.cause, CQ_DECODE_OK);
    assert_null(d.metadata);
    assert_string_equal(err, "");
    cq_decoded_clear(&d);
    assert_int_equal(parsed->refcount, 1); /* not released by clear */
    json_decref(parsed);

    /* parsed here: owned */
    assert_int_equal(cq_event_decode(&dom, &se, NULL, 0, &d, err, sizeof err),
                     CQ_OK);
    assert_int_equal(d.borrowed, 0);
    assert_int_equal(json_integer_value(json_object_get(d.data, "a")), 1);
    cq_decoded_clear(&d);
}

/* An old shape parsed by the caller: upcast on a copy, the caller's data
 * untouched. */
static void test_copy_on_upcast(void **unused)
{
    cq_stored_event se = stored("Thing", 1, "{\"a\":1}", "{}");
    json_t *parsed = parse("{\"a\":1}");
    cq_decoded d;
    char err[192];

    (void)unused;
    assert_int_equal(cq_event_decode(&dom, &se, parsed, 0, &d, err, sizeof err),
                     CQ_OK);
    assert_ptr_not_equal(d.data, parsed);
    assert_int_equal(d.borrowed, 0);
    assert_int_equal(d.schema_version, 3);
    assert_true(has(d.data, "a") && has(d.data, "v2") && has(d.data, "v3"));
    assert_int_equal(json_object_size(parsed), 1);
    cq_decoded_clear(&d);
    json_decref(parsed);

    /* parsed here: upcast in place, same result */
    assert_int_equal(cq_event_decode(&dom, &se, NULL, 0, &d, err, sizeof err),
                     CQ_OK);
    assert_int_equal(d.schema_version, 3);
    assert_true(has(d.data, "v2") && has(d.data, "v3"));
    cq_decoded_clear(&d);

    /* no domain: as stored */
    assert_int_equal(cq_event_decode(NULL, &se, NULL, 0, &d, err, sizeof err),
                     CQ_OK);
    assert_int_equal(d.schema_version, 1);
    assert_false(has(d.data, "v2"));
    cq_decoded_clear(&d);
}

static void test_bad_data(void **unused)
{
    static const char *const bad[] = {"[1]", "{\"a\":", "7",
                                      "{\"a\":1,\"a\":2}", ""};
    cq_decoded d;
    char err[192];

    (void)unused;
    for (size_t i = 0; i <= sizeof bad / sizeof bad[0]; i++) {
        /* the last round: no text at all (a NULL column) */
        cq_stored_event se = stored(
            "Thing", 1, i < sizeof bad / sizeof bad[0] ? bad[i] : NULL, "{}");
        assert_int_equal(cq_event_decode(&dom, &se, NULL, CQ_DECODE_METADATA,
                                         &d, err, sizeof err),
                         CQ_ECORRUPT);
        assert_int_equal(d.cause, CQ_DECODE_BAD_DATA);
        assert_null(d.data);
        assert_non_null(d.metadata); /* decoded on its own */
        assert_int_equal(d.schema_version, 1);
        assert_string_equal(err, "stored data is not a JSON object");
        cq_decoded_clear(&d);
    }
    /* what the caller parsed is checked too */
    {
        cq_stored_event se = stored("Thing", 3, "[]", "{}");
        json_t *arr = parse("[]");
        assert_int_equal(
            cq_event_decode(&dom, &se, arr, 0, &d, err, sizeof err),
            CQ_ECORRUPT);
        assert_int_equal(d.cause, CQ_DECODE_BAD_DATA);
        assert_null(d.data);
        cq_decoded_clear(&d);
        json_decref(arr);
    }
}

/* Metadata is decoded only when asked for, and then must be an object;
 * the data stays usable for a reader that does not need it. */
static void test_metadata(void **unused)
{
    cq_stored_event ok = stored("Thing", 1, "{}", "{\"event_id\":\"e\"}");
    cq_stored_event bad = stored("Thing", 1, "{}", "not json");
    cq_stored_event none = stored("Thing", 1, "{}", NULL);
    cq_decoded d;
    char err[192];

    (void)unused;
    assert_int_equal(cq_event_decode(&dom, &ok, NULL, CQ_DECODE_METADATA, &d,
                                     err, sizeof err),
                     CQ_OK);
    assert_string_equal(
        json_string_value(json_object_get(d.metadata, "event_id")), "e");
    cq_decoded_clear(&d);

    /* not asked for: not looked at */
    assert_int_equal(cq_event_decode(&dom, &bad, NULL, 0, &d, err, sizeof err),
                     CQ_OK);
    assert_null(d.metadata);
    cq_decoded_clear(&d);
    assert_int_equal(cq_event_decode(&dom, &none, NULL, 0, &d, NULL, 0), CQ_OK);
    cq_decoded_clear(&d);

    /* asked for and bad: named, the data still upcast */
    assert_int_equal(cq_event_decode(&dom, &bad, NULL, CQ_DECODE_METADATA, &d,
                                     err, sizeof err),
                     CQ_ECORRUPT);
    assert_int_equal(d.cause, CQ_DECODE_BAD_METADATA);
    assert_string_equal(err, "stored metadata is not a JSON object");
    assert_null(d.metadata);
    assert_non_null(d.data);
    assert_int_equal(d.schema_version, 3);
    cq_decoded_clear(&d);
    assert_int_equal(cq_event_decode(&dom, &none, NULL, CQ_DECODE_METADATA, &d,
                                     err, sizeof err),
                     CQ_ECORRUPT);
    assert_int_equal(d.cause, CQ_DECODE_BAD_METADATA);
    cq_decoded_clear(&d);
}

/* An upcaster that fails is named with the version it failed at; the
 * caller's data is never changed by it. */
static void test_upcast_failure(void **unused)
{
    cq_stored_event broken = stored("Broken", 1, "{\"a\":1}", "{}");
    cq_stored_event chain = stored("Chain", 1, "{\"a\":1}", "[]");
    json_t *parsed = parse("{\"a\":1}");
    cq_decoded d;
    char err[192];

    (void)unused;
    assert_int_equal(
        cq_event_decode(&dom, &broken, parsed, 0, &d, err, sizeof err),
        CQ_ECORRUPT);
    assert_int_equal(d.cause, CQ_DECODE_UPCAST_FAILED);
    assert_null(d.data);
    assert_string_equal(err, "upcasting Broken from schema version 1 failed: "
                             "stored data is corrupt");
    assert_int_equal(json_object_size(parsed), 1); /* no scribbles */
    cq_decoded_clear(&d);
    json_decref(parsed);

    assert_int_equal(
        cq_event_decode(&dom, &broken, NULL, 0, &d, err, sizeof err),
        CQ_ECORRUPT);
    assert_null(d.data);
    cq_decoded_clear(&d);

    /* the second step fails: its version is named, its code returned; the
     * upcast failure ranks before the bad metadata */
    assert_int_equal(cq_event_decode(&dom, &chain, NULL, CQ_DECODE_METADATA, &d,
                                     err, sizeof err),
                     CQ_ENOMEM);
    assert_int_equal(d.cause, CQ_DECODE_UPCAST_FAILED);
    assert_non_null(
        strstr(err, "upcasting Chain from schema version 2 failed"));
    cq_decoded_clear(&d);
}

/* For readers that show an undecodable event as it was stored. */
static void test_as_stored(void **unused)
{
    cq_stored_event broken = stored("Broken", 1, "{\"a\":1}", "{}");
    cq_stored_event bad_meta = stored("Thing", 1, "{\"a\":1}", "[]");
    cq_stored_event good = stored("Thing", 1, "{\"a\":1}", "{}");
    const unsigned fl = CQ_DECODE_METADATA | CQ_DECODE_AS_STORED;
    cq_decoded d;
    char err[192];

    (void)unused;
    assert_int_equal(
        cq_event_decode(&dom, &broken, NULL, fl, &d, err, sizeof err),
        CQ_ECORRUPT);
    assert_int_equal(d.cause, CQ_DECODE_UPCAST_FAILED);
    assert_int_equal(d.schema_version, 1);
    assert_int_equal(json_object_size(d.data), 1); /* as stored */
    assert_non_null(d.metadata);
    cq_decoded_clear(&d);

    /* bad metadata: named, and the data not upcast */
    assert_int_equal(
        cq_event_decode(&dom, &bad_meta, NULL, fl, &d, err, sizeof err),
        CQ_ECORRUPT);
    assert_int_equal(d.cause, CQ_DECODE_BAD_METADATA);
    assert_int_equal(d.schema_version, 1);
    assert_false(has(d.data, "v2"));
    cq_decoded_clear(&d);

    /* nothing wrong: the newest shape as usual */
    assert_int_equal(
        cq_event_decode(&dom, &good, NULL, fl, &d, err, sizeof err), CQ_OK);
    assert_int_equal(d.schema_version, 3);
    cq_decoded_clear(&d);
    cq_decoded_clear(&d); /* twice, and NULL: harmless */
    cq_decoded_clear(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_registry),
        cmocka_unit_test(test_borrow_without_upcaster),
        cmocka_unit_test(test_copy_on_upcast),
        cmocka_unit_test(test_bad_data),
        cmocka_unit_test(test_metadata),
        cmocka_unit_test(test_upcast_failure),
        cmocka_unit_test(test_as_stored),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
