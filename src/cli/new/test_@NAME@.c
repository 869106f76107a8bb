/*
 * test_@NAME@.c -- unit tests of the @NAME@ decider: pure, no database, no
 * server. Each test folds initial() and evolve() over events and calls
 * decide() the way the engine does (cqrs/decider.h, "Protocol of one
 * command"), then looks at what was emitted. Run with `make test`.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "@NAME@.h"

static const cq_command_def *record(void)
{
    const cq_command_def *c =
        cq_domain_command(@NAME@_domain(), "Record@PASCAL@Entry");
    assert_non_null(c);
    return c;
}

/* Check body (JSON text) against the schema, then decide on state; the
 * decision is left in d. Returns decide()'s code. */
static int decide_on(const void *state, const char *text, cq_decision *d)
{
    json_t *body = json_loads(text, 0, NULL);
    cq_errors *errs = cq_errors_new();
    int rc;

    assert_non_null(body);
    assert_int_equal(cq_schema_check(record()->schema, body, "", errs), 0);
    cq_decision_reset(d);
    rc = record()->decide(state, body, d);
    cq_errors_free(errs);
    json_decref(body);
    return rc;
}

/* Apply every event of d to state, as the engine does after the append. */
static void apply(void *state, const cq_decision *d)
{
    for (size_t i = 0; i < cq_decision_count(d); i++) {
        const cq_decided_event *e = cq_decision_event(d, i);
        cq_event ev = {e->type, e->schema_version, 0, 0, e->data};
        assert_int_equal(record()->aggregate->evolve(state, &ev), CQ_OK);
    }
}

static json_int_t field(const cq_decision *d, size_t i, const char *name)
{
    return json_integer_value(
        json_object_get(cq_decision_event(d, i)->data, name));
}

static void test_first_entry_opens(void **unused)
{
    void *s = record()->aggregate->initial();
    cq_decision *d = cq_decision_new();
    char stream[80];
    json_t *body = json_loads("{\"id\": \"a-1\", \"amount\": 5}", 0, NULL);

    assert_int_equal(decide_on(s, "{\"id\": \"a-1\", \"amount\": 5}", d), CQ_OK);
    assert_int_equal(cq_decision_count(d), 2);
    assert_string_equal(cq_decision_event(d, 0)->type, "@PASCAL@Opened");
    assert_string_equal(cq_decision_event(d, 1)->type, "@PASCAL@EntryRecorded");
    assert_int_equal(field(d, 1, "total"), 5);
    assert_int_equal(record()->stream_id(body, stream, sizeof stream), CQ_OK);
    assert_string_equal(stream, "@NAME@-a-1");
    json_decref(body);
    cq_decision_free(d);
    record()->aggregate->free(s);
}

static void test_next_entry_adds_up(void **unused)
{
    void *s = record()->aggregate->initial();
    cq_decision *d = cq_decision_new();

    assert_int_equal(decide_on(s, "{\"id\": \"a-1\", \"amount\": 5}", d), CQ_OK);
    apply(s, d);
    assert_int_equal(
        decide_on(s, "{\"id\": \"a-1\", \"amount\": 7, \"note\": \"x\"}", d),
        CQ_OK);
    assert_int_equal(cq_decision_count(d), 1);
    assert_string_equal(cq_decision_event(d, 0)->type, "@PASCAL@EntryRecorded");
    assert_int_equal(field(d, 0, "total"), 12);
    cq_decision_free(d);
    record()->aggregate->free(s);
}

static void test_limit_is_refused(void **unused)
{
    void *s = record()->aggregate->initial();
    cq_decision *d = cq_decision_new();
    char body[96];

    /* reach the limit exactly, then one more is refused */
    for (int i = 0; i < @UPPER@_MAX_TOTAL / 1000000; i++) {
        assert_int_equal(
            decide_on(s, "{\"id\": \"a-1\", \"amount\": 1000000}", d), CQ_OK);
        apply(s, d);
    }
    snprintf(body, sizeof body, "{\"id\": \"a-1\", \"amount\": 1}");
    assert_int_equal(decide_on(s, body, d), CQ_EREFUSED);
    assert_int_equal(cq_decision_count(d), 0);
    assert_non_null(strstr(cq_decision_refusal(d), "above the limit"));
    cq_decision_free(d);
    record()->aggregate->free(s);
}

static void test_schema_rejects_bad_bodies(void **unused)
{
    static const char *const bad[] = {
        "{\"id\": \"a-1\"}",                             /* no amount */
        "{\"id\": \"a 1\", \"amount\": 1}",              /* not an id */
        "{\"id\": \"a-1\", \"amount\": 0}",              /* below 1 */
        "{\"id\": \"a-1\", \"amount\": 1, \"x\": 1}",    /* unknown */
    };

    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        json_t *body = json_loads(bad[i], 0, NULL);
        cq_errors *errs = cq_errors_new();
        assert_non_null(body);
        assert_true(cq_schema_check(record()->schema, body, "", errs) > 0);
        cq_errors_free(errs);
        json_decref(body);
    }
}

static void test_evolve_rejects_damaged_events(void **unused)
{
    void *s = record()->aggregate->initial();
    json_t *data = json_pack("{s:s, s:i, s:i}", "id", "a-1", "amount", 1,
                             "total", 1);
    cq_event ev = {"@PASCAL@EntryRecorded", 1, 1, 1, data};

    /* an entry before the stream was opened */
    assert_int_equal(record()->aggregate->evolve(s, &ev), CQ_ECORRUPT);
    json_decref(data);
    record()->aggregate->free(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_first_entry_opens),
        cmocka_unit_test(test_next_entry_adds_up),
        cmocka_unit_test(test_limit_is_refused),
        cmocka_unit_test(test_schema_rejects_bad_bodies),
        cmocka_unit_test(test_evolve_rejects_damaged_events),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
