/*
 * test_schema.c -- unit tests of src/command/schema.c: the cq_errors list
 * and every rule of cq_schema_check (types, required and unknown members,
 * bounds, lengths in characters, charsets, arrays of objects with their
 * paths, prefixes, collecting all errors, and the error cap).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "command/command.h"

static const cq_field line_fields[] = {
    {.name = "sku",
     .kind = CQ_FIELD_STRING,
     .min = 1,
     .max = 8,
     .chars = CQ_CHARS_TEXT},
    {.name = "quantity", .kind = CQ_FIELD_INTEGER, .min = 1, .max = 10000},
    {.kind = CQ_FIELD_END},
};

static const cq_field fields[] = {
    {.name = "id",
     .kind = CQ_FIELD_STRING,
     .min = 1,
     .max = 64,
     .chars = CQ_CHARS_ID},
    {.name = "currency",
     .kind = CQ_FIELD_STRING,
     .min = 3,
     .max = 3,
     .chars = CQ_CHARS_UPPER},
    {.name = "note",
     .kind = CQ_FIELD_STRING,
     .optional = 1,
     .min = 1,
     .max = 5,
     .chars = CQ_CHARS_TEXT},
    {.name = "count", .kind = CQ_FIELD_INTEGER, .min = 1, .max = 10000},
    {.name = "big",
     .kind = CQ_FIELD_INTEGER,
     .optional = 1,
     .min = 1,
     .max = INT64_MAX},
    {.name = "items",
     .kind = CQ_FIELD_ARRAY,
     .min = 1,
     .max = 3,
     .items = line_fields},
    {.kind = CQ_FIELD_END},
};

/* A body that passes `fields`; tests break one thing at a time. */
static json_t *good_body(void)
{
    json_t *b = json_pack("{s:s, s:s, s:i, s:[{s:s, s:i}]}", "id", "o-1_A",
                          "currency", "EUR", "count", 1, "items", "sku",
                          "SKU-1", "quantity", 10000);
    assert_non_null(b);
    return b;
}

/* Run the check of `body` (reference taken) against `fields`. */
static cq_errors *check(json_t *body, const char *prefix, int *added)
{
    cq_errors *e = cq_errors_new();

    assert_non_null(e);
    *added = cq_schema_check(fields, body, prefix, e);
    json_decref(body);
    return e;
}

/* 1 if `e` holds exactly {field, message}. */
static int has_error(const cq_errors *e, const char *field, const char *message)
{
    json_t *arr = cq_errors_to_json(e), *item;
    size_t i;
    int found = 0;

    assert_non_null(arr);
    json_array_foreach (arr, i, item) {
        const char *f = json_string_value(json_object_get(item, "field"));
        const char *m = json_string_value(json_object_get(item, "message"));
        assert_non_null(f);
        assert_non_null(m);
        if (strcmp(f, field) == 0 && strcmp(m, message) == 0)
            found = 1;
    }
    json_decref(arr);
    return found;
}

static void print_errors(const cq_errors *e)
{
    json_t *arr = cq_errors_to_json(e);
    char *s = json_dumps(arr, 0);
    print_message("errors: %s\n", s);
    free(s);
    json_decref(arr);
}

/* Expect exactly one error, {field, message}, from checking `body`. */
static void expect_one(json_t *body, const char *field, const char *message)
{
    int n;
    cq_errors *e = check(body, "", &n);

    if (n != 1 || !has_error(e, field, message)) {
        print_errors(e);
        fail_msg("expected one error %s: %s", field, message);
    }
    assert_int_equal(cq_errors_count(e), 1);
    cq_errors_free(e);
}

static void test_good_body(void **unused)
{
    int n;
    cq_errors *e = check(good_body(), "", &n);

    assert_int_equal(n, 0);
    assert_int_equal(cq_errors_count(e), 0);
    json_t *arr = cq_errors_to_json(e);
    assert_true(json_is_array(arr));
    assert_int_equal(json_array_size(arr), 0);
    json_decref(arr);
    cq_errors_free(e);
}

static void test_not_an_object(void **unused)
{
    int n;
    cq_errors *e;

    expect_one(json_array(), "", "must be an object");
    expect_one(json_string("x"), "", "must be an object");
    e = check(json_integer(1), "order", &n);
    assert_int_equal(n, 1);
    assert_true(has_error(e, "order", "must be an object"));
    cq_errors_free(e);
}

static void test_required_and_optional(void **unused)
{
    json_t *b = good_body();
    json_object_del(b, "id");
    expect_one(b, "id", "is required");

    b = good_body();
    json_object_set_new(b, "count", json_null()); /* null is missing */
    expect_one(b, "count", "is required");

    b = good_body(); /* optional present, absent or null: all fine */
    json_object_set_new(b, "note", json_null());
    json_object_set_new(b, "big", json_integer(INT64_MAX));
    int n;
    cq_errors *e = check(b, "", &n);
    assert_int_equal(n, 0);
    cq_errors_free(e);
}

static void test_unknown_fields(void **unused)
{
    json_t *b = good_body();
    json_object_set_new(b, "colour", json_string("red"));
    expect_one(b, "colour", "unknown field");

    b = good_body();
    json_object_set_new(json_array_get(json_object_get(b, "items"), 0),
                        "colour", json_string("red"));
    expect_one(b, "items[0].colour", "unknown field");

    /* A key with a NUL byte is not the field whose name is its prefix. */
    b = good_body();
    json_object_setn_new_nocheck(b, "note\0x", 6, json_string("hi"));
    expect_one(b, "note", "unknown field");
}

static void test_wrong_types(void **unused)
{
    json_t *b = good_body();
    json_object_set_new(b, "id", json_integer(5));
    expect_one(b, "id", "must be a string");

    b = good_body();
    json_object_set_new(b, "count", json_string("5"));
    expect_one(b, "count", "must be an integer");

    b = good_body(); /* a real is not an integer, even a whole one */
    json_object_set_new(b, "count", json_real(5.0));
    expect_one(b, "count", "must be an integer");

    b = good_body(); /* nor is a boolean */
    json_object_set_new(b, "count", json_true());
    expect_one(b, "count", "must be an integer");

    b = good_body();
    json_object_set_new(b, "items", json_object());
    expect_one(b, "items", "must be an array");

    b = good_body();
    json_array_append_new(json_object_get(b, "items"), json_integer(1));
    expect_one(b, "items[1]", "must be an object");
}

/* Reals arrive from JSON text as reals: check the decoder agrees. */
static void test_reals_from_text(void **unused)
{
    json_error_t err;
    json_t *b = json_loads("{\"id\":\"a\",\"currency\":\"EUR\",\"count\":1e2,"
                           "\"items\":[{\"sku\":\"s\",\"quantity\":2.0}]}",
                           0, &err);
    int n;
    cq_errors *e;

    assert_non_null(b);
    e = check(b, "", &n);
    assert_int_equal(n, 2);
    assert_true(has_error(e, "count", "must be an integer"));
    assert_true(has_error(e, "items[0].quantity", "must be an integer"));
    cq_errors_free(e);
}

static void test_integer_bounds(void **unused)
{
    json_t *b = good_body();
    json_object_set_new(b, "count", json_integer(0));
    expect_one(b, "count", "must be between 1 and 10000");

    b = good_body();
    json_object_set_new(b, "count", json_integer(10001));
    expect_one(b, "count", "must be between 1 and 10000");

    b = good_body();
    json_object_set_new(b, "count", json_integer(-5));
    expect_one(b, "count", "must be between 1 and 10000");

    b = good_body(); /* bounds are inclusive */
    json_object_set_new(b, "count", json_integer(10000));
    int n;
    cq_errors *e = check(b, "", &n);
    assert_int_equal(n, 0);
    cq_errors_free(e);

    b = good_body(); /* an open upper bound is worded as such */
    json_object_set_new(b, "big", json_integer(0));
    expect_one(b, "big", "must be at least 1");
}

static void test_string_length(void **unused)
{
    json_t *b = good_body();
    json_object_set_new(b, "id", json_string(""));
    expect_one(b, "id", "must be between 1 and 64 characters long");

    char long_id[66];
    memset(long_id, 'x', 65);
    long_id[65] = '\0';
    b = good_body();
    json_object_set_new(b, "id", json_string(long_id));
    expect_one(b, "id", "must be between 1 and 64 characters long");

    long_id[64] = '\0'; /* 64 is allowed */
    b = good_body();
    json_object_set_new(b, "id", json_string(long_id));
    int n;
    cq_errors *e = check(b, "", &n);
    assert_int_equal(n, 0);
    cq_errors_free(e);

    b = good_body();
    json_object_set_new(b, "currency", json_string("EURO"));
    expect_one(b, "currency", "must be exactly 3 characters long");

    /* Characters, not bytes: five two-byte and three-byte characters fit a
     * limit of 5; six do not. */
    b = good_body();
    json_object_set_new(b, "note",
                        json_string("\xc3\xa9\xc3\xa9\xe2\x82\xac"
                                    "\xe2\x82\xac\xc3\xa9"));
    e = check(b, "", &n);
    assert_int_equal(n, 0);
    cq_errors_free(e);

    b = good_body();
    json_object_set_new(b, "note",
                        json_string("\xc3\xa9\xc3\xa9\xc3\xa9"
                                    "\xc3\xa9\xc3\xa9\xc3\xa9"));
    expect_one(b, "note", "must be between 1 and 5 characters long");
}

static void test_charsets(void **unused)
{
    json_t *b = good_body();
    json_object_set_new(b, "id", json_string("a b"));
    expect_one(b, "id",
               "must contain only letters A-Z and a-z, digits, '_' and '-'");

    b = good_body();
    json_object_set_new(b, "id", json_string("\xc3\xa9"));
    expect_one(b, "id",
               "must contain only letters A-Z and a-z, digits, '_' and '-'");

    b = good_body();
    json_object_set_new(b, "currency", json_string("eur"));
    expect_one(b, "currency", "must contain only upper-case letters A-Z");

    b = good_body();
    json_object_set_new(b, "currency", json_string("E1R"));
    expect_one(b, "currency", "must contain only upper-case letters A-Z");

    const char *bad_text[] = {"a\tb", "\x01", "a\x7f", "\n"};
    for (size_t i = 0; i < sizeof bad_text / sizeof bad_text[0]; i++) {
        b = good_body();
        json_object_set_new(b, "note", json_string(bad_text[i]));
        expect_one(b, "note", "must not contain control characters");
    }

    b = good_body(); /* a NUL inside a string is a control character */
    json_object_set_new(b, "note", json_stringn("a\0b", 3));
    expect_one(b, "note", "must not contain control characters");

    b = good_body(); /* text may be any other Unicode */
    json_object_set_new(b, "note",
                        json_string("\xe2\x82\xac \xf0\x9d\x84\x9e"));
    int n;
    cq_errors *e = check(b, "", &n);
    assert_int_equal(n, 0);
    cq_errors_free(e);

    b = good_body(); /* bytes that are not UTF-8 are caught, not counted */
    json_object_set_new(b, "note", json_stringn_nocheck("\xc3", 1));
    expect_one(b, "note", "must be valid UTF-8");
}

static void test_arrays(void **unused)
{
    json_t *b = good_body();
    json_array_clear(json_object_get(b, "items"));
    expect_one(b, "items", "must have between 1 and 3 items");

    b = good_body();
    for (int i = 0; i < 3; i++)
        json_array_append_new(
            json_object_get(b, "items"),
            json_pack("{s:s, s:i}", "sku", "s", "quantity", 1));
    expect_one(b, "items", "must have between 1 and 3 items");

    b = good_body();
    json_array_append_new(json_object_get(b, "items"),
                          json_pack("{s:s, s:i}", "sku", "s", "quantity", 0));
    expect_one(b, "items[1].quantity", "must be between 1 and 10000");

    b = good_body();
    json_array_append_new(json_object_get(b, "items"),
                          json_pack("{s:i}", "quantity", 3));
    expect_one(b, "items[1].sku", "is required");
}

static void test_prefix_paths(void **unused)
{
    json_t *b = good_body();
    int n;
    cq_errors *e;

    json_object_set_new(b, "count", json_integer(0));
    json_object_set_new(json_array_get(json_object_get(b, "items"), 0),
                        "quantity", json_integer(-1));
    e = check(b, "order", &n);
    assert_int_equal(n, 2);
    assert_true(has_error(e, "order.count", "must be between 1 and 10000"));
    assert_true(
        has_error(e, "order.items[0].quantity", "must be between 1 and 10000"));
    cq_errors_free(e);

    e = check(good_body(), NULL, &n); /* NULL prefix is "" */
    assert_int_equal(n, 0);
    cq_errors_free(e);
}

/* Every problem is reported, not just the first. */
static void test_collects_all(void **unused)
{
    json_t *b = json_pack("{s:i, s:s, s:f, s:[{s:s, s:i}, i], s:b}", "id", 5,
                          "currency", "eu", "count", 1.5, "items", "sku", "",
                          "quantity", 0, 7, "extra", 1);
    int n;
    cq_errors *e;

    assert_non_null(b);
    e = check(b, "", &n);
    if (n != 8)
        print_errors(e);
    assert_int_equal(n, 8);
    assert_true(has_error(e, "id", "must be a string"));
    assert_true(has_error(e, "currency", "must be exactly 3 characters long"));
    assert_true(
        has_error(e, "currency", "must contain only upper-case letters A-Z"));
    assert_true(has_error(e, "count", "must be an integer"));
    assert_true(has_error(e, "items[0].sku",
                          "must be between 1 and 8 characters long"));
    assert_true(
        has_error(e, "items[0].quantity", "must be between 1 and 10000"));
    assert_true(has_error(e, "items[1]", "must be an object"));
    assert_true(has_error(e, "extra", "unknown field"));
    cq_errors_free(e);
}

/* A hostile body with many errors stores only the first 50. */
static void test_error_cap(void **unused)
{
    static const cq_field many[] = {
        {.name = "items",
         .kind = CQ_FIELD_ARRAY,
         .min = 0,
         .max = 1000000,
         .items = line_fields},
        {.kind = CQ_FIELD_END},
    };
    json_t *b = json_object(), *items = json_array(), *arr;
    cq_errors *e = cq_errors_new();
    int n;

    for (int i = 0; i < 100000; i++)
        json_array_append_new(items, json_integer(i));
    json_object_set_new(b, "items", items);
    n = cq_schema_check(many, b, "", e);
    assert_int_equal(n, 100000);
    assert_int_equal(cq_errors_count(e), 100000);
    arr = cq_errors_to_json(e);
    assert_int_equal(json_array_size(arr), 51);
    assert_string_equal(
        json_string_value(json_object_get(json_array_get(arr, 49), "field")),
        "items[49]");
    assert_string_equal(
        json_string_value(json_object_get(json_array_get(arr, 50), "message")),
        "99950 more errors not shown");
    json_decref(arr);
    json_decref(b);
    cq_errors_free(e);
}

static void test_errors_list(void **unused)
{
    cq_errors *e = cq_errors_new();
    json_t *arr;

    assert_int_equal(cq_errors_count(NULL), 0);
    cq_errors_free(NULL);
    cq_errors_add(NULL, "x", "ignored");

    cq_errors_add(e, NULL, "body is %s", "odd");
    cq_errors_add(e, "a.b", "must be %d", 3);
    cq_errors_add(e, "bad\xff", "quoted \xc3 byte"); /* scrubbed to '?' */
    assert_int_equal(cq_errors_count(e), 3);
    arr = cq_errors_to_json(e);
    assert_non_null(arr);
    assert_int_equal(json_array_size(arr), 3);
    assert_true(has_error(e, "", "body is odd"));
    assert_true(has_error(e, "a.b", "must be 3"));
    assert_true(has_error(e, "bad?", "quoted ? byte"));
    json_decref(arr);
    cq_errors_free(e);
}

static void test_returns_added(void **unused)
{
    cq_errors *e = cq_errors_new();
    json_t *empty = json_object();

    cq_errors_add(e, "x", "earlier");
    /* cq_schema_check returns what it added, not the running total. An
     * empty object misses its four required fields. */
    assert_int_equal(cq_schema_check(fields, empty, "", e), 4);
    assert_int_equal(cq_errors_count(e), 5);
    json_decref(empty);
    cq_errors_free(e);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_good_body),
        cmocka_unit_test(test_not_an_object),
        cmocka_unit_test(test_required_and_optional),
        cmocka_unit_test(test_unknown_fields),
        cmocka_unit_test(test_wrong_types),
        cmocka_unit_test(test_reals_from_text),
        cmocka_unit_test(test_integer_bounds),
        cmocka_unit_test(test_string_length),
        cmocka_unit_test(test_charsets),
        cmocka_unit_test(test_arrays),
        cmocka_unit_test(test_prefix_paths),
        cmocka_unit_test(test_collects_all),
        cmocka_unit_test(test_error_cap),
        cmocka_unit_test(test_errors_list),
        cmocka_unit_test(test_returns_added),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
