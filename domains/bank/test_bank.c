/*
 * test_bank.c -- unit tests of the bank deciders: pure, no database. Each
 * test runs commands the way the engine does (schema, validate, decide on
 * the folded state, evolve with what was emitted) and checks the events
 * or the refusal. Built by cqrsd's CMake (ctest: test_bank) and by this
 * folder's Makefile (`make test`, against an installed cqrsd).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "bank.h"

typedef struct fx {
    void *state;
    cq_decision *d;
    const cq_aggregate *agg;
} fx;

static int setup(void **st)
{
    fx *f = calloc(1, sizeof *f);

    if (f == NULL)
        return -1;
    f->agg = cq_domain_command(bank_domain(), "OpenAccount")->aggregate;
    f->state = f->agg->initial();
    f->d = cq_decision_new();
    *st = f;
    return f->state != NULL && f->d != NULL ? 0 : -1;
}

static int teardown(void **st)
{
    fx *f = *st;

    f->agg->free(f->state);
    cq_decision_free(f->d);
    free(f);
    return 0;
}

/* Run command `type` with body `text` on f's account: schema and
 * validate() must pass; the events emitted are applied to the state.
 * Returns decide()'s code. */
static int run(fx *f, const char *type, const char *text)
{
    const cq_command_def *c = cq_domain_command(bank_domain(), type);
    json_t *body = json_loads(text, 0, NULL);
    cq_errors *errs = cq_errors_new();
    int rc;

    assert_non_null(c);
    assert_non_null(body);
    assert_int_equal(cq_schema_check(c->schema, body, "", errs), 0);
    if (c->validate != NULL)
        assert_int_equal(c->validate(body, errs), 0);
    cq_decision_reset(f->d);
    rc = c->decide(f->state, body, f->d);
    for (size_t i = 0; rc == CQ_OK && i < cq_decision_count(f->d); i++) {
        const cq_decided_event *e = cq_decision_event(f->d, i);
        cq_event ev = {e->type, e->schema_version, 0, 0, e->data};
        assert_int_equal(f->agg->evolve(f->state, &ev), CQ_OK);
    }
    cq_errors_free(errs);
    json_decref(body);
    return rc;
}

/* Field errors the schema and validate() find in text for type. */
static int field_errors(const char *type, const char *text)
{
    const cq_command_def *c = cq_domain_command(bank_domain(), type);
    json_t *body = json_loads(text, 0, NULL);
    cq_errors *errs = cq_errors_new();
    int n = cq_schema_check(c->schema, body, "", errs);

    if (n == 0 && c->validate != NULL)
        n = c->validate(body, errs);
    cq_errors_free(errs);
    json_decref(body);
    return n;
}

static json_int_t balance_after(const fx *f)
{
    const cq_decided_event *e = cq_decision_event(f->d, 0);
    assert_non_null(e);
    return json_integer_value(json_object_get(e->data, "balance_cents"));
}

#define OPEN_A                                                                 \
    "{\"account_id\": \"a\", \"owner\": \"Ann\", \"currency\": \"EUR\","       \
    " \"overdraft_limit_cents\": 500}"

static void test_open_deposit_withdraw(void **st)
{
    fx *f = *st;

    assert_int_equal(run(f, "OpenAccount", OPEN_A), CQ_OK);
    assert_string_equal(cq_decision_event(f->d, 0)->type, "AccountOpened");
    assert_int_equal(
        run(f, "Deposit", "{\"account_id\": \"a\", \"amount_cents\": 1000}"),
        CQ_OK);
    assert_string_equal(cq_decision_event(f->d, 0)->type, "MoneyDeposited");
    assert_int_equal(balance_after(f), 1000);
    /* down to the overdraft limit is allowed ... */
    assert_int_equal(
        run(f, "Withdraw", "{\"account_id\": \"a\", \"amount_cents\": 1500}"),
        CQ_OK);
    assert_int_equal(balance_after(f), -500);
    /* ... one cent further is an overdraft */
    assert_int_equal(
        run(f, "Withdraw", "{\"account_id\": \"a\", \"amount_cents\": 1}"),
        CQ_EREFUSED);
    assert_non_null(strstr(cq_decision_refusal(f->d), "overdraw"));
    assert_int_equal(cq_decision_count(f->d), 0);
}

static void test_close_needs_zero_balance(void **st)
{
    fx *f = *st;

    assert_int_equal(run(f, "OpenAccount", OPEN_A), CQ_OK);
    assert_int_equal(
        run(f, "Deposit", "{\"account_id\": \"a\", \"amount_cents\": 10}"),
        CQ_OK);
    assert_int_equal(run(f, "CloseAccount", "{\"account_id\": \"a\"}"),
                     CQ_EREFUSED);
    assert_int_equal(
        run(f, "Withdraw", "{\"account_id\": \"a\", \"amount_cents\": 10}"),
        CQ_OK);
    assert_int_equal(run(f, "CloseAccount", "{\"account_id\": \"a\"}"), CQ_OK);
    assert_string_equal(cq_decision_event(f->d, 0)->type, "AccountClosed");
    assert_int_equal(
        run(f, "Deposit", "{\"account_id\": \"a\", \"amount_cents\": 1}"),
        CQ_EREFUSED);
    assert_non_null(strstr(cq_decision_refusal(f->d), "closed"));
    assert_int_equal(run(f, "CloseAccount", "{\"account_id\": \"a\"}"),
                     CQ_EREFUSED);
}

static void test_transfer_leg_is_idempotent(void **st)
{
    fx *f = *st;
    static const char leg[] =
        "{\"account_id\": \"a\", \"amount_cents\": 300,"
        " \"transfer_id\": \"t-1\", \"to_account\": \"b\"}";
    const json_t *data;

    assert_int_equal(run(f, "OpenAccount", OPEN_A), CQ_OK);
    assert_int_equal(run(f, "Withdraw", leg), CQ_OK);
    data = cq_decision_event(f->d, 0)->data;
    assert_string_equal(json_string_value(json_object_get(data, "transfer_id")),
                        "t-1");
    assert_string_equal(
        json_string_value(json_object_get(data, "counterparty")), "b");
    assert_int_equal(run(f, "Withdraw", leg), CQ_OK); /* a retry */
    assert_int_equal(cq_decision_count(f->d), 0);
    /* the money coming back under the same transfer id is the other leg */
    assert_int_equal(run(f, "Deposit",
                         "{\"account_id\": \"a\", \"amount_cents\": 300,"
                         " \"transfer_id\": \"t-1\", \"from_account\": \"b\"}"),
                     CQ_OK);
    assert_int_equal(balance_after(f), 0);
}

static void test_bodies_checked(void **st)
{
    (void)st;
    /* the schema */
    assert_true(field_errors("OpenAccount", "{\"account_id\": \"a\","
                                            " \"owner\": \"A\", \"currency\":"
                                            " \"eur\"}") > 0);
    assert_true(field_errors("Deposit", "{\"account_id\": \"a\","
                                        " \"amount_cents\": 0}") > 0);
    /* validate(): a leg names the transfer, and another account */
    assert_int_equal(field_errors("Withdraw",
                                  "{\"account_id\": \"a\", \"amount_cents\": 1,"
                                  " \"to_account\": \"b\"}"),
                     1);
    assert_int_equal(
        field_errors("Withdraw",
                     "{\"account_id\": \"a\", \"amount_cents\": 1,"
                     " \"transfer_id\": \"t\", \"to_account\": \"a\"}"),
        1);
    assert_int_equal(
        field_errors("Deposit",
                     "{\"account_id\": \"a\", \"amount_cents\": 1,"
                     " \"transfer_id\": \"t\", \"from_account\": \"b\"}"),
        0);
}

static void test_evolve_rejects_damaged_events(void **st)
{
    fx *f = *st;
    json_t *bad = json_pack("{s:s, s:i, s:i}", "account_id", "a",
                            "amount_cents", 5, "balance_cents", 7);
    cq_event ev = {"MoneyDeposited", 1, 2, 2, bad};

    assert_int_equal(run(f, "OpenAccount", OPEN_A), CQ_OK);
    /* 0 + 5 is not 7 */
    assert_int_equal(f->agg->evolve(f->state, &ev), CQ_ECORRUPT);
    ev.schema_version = 2;
    assert_int_equal(f->agg->evolve(f->state, &ev), CQ_ECORRUPT);
    json_decref(bad);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_open_deposit_withdraw, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_close_needs_zero_balance, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_transfer_leg_is_idempotent, setup,
                                        teardown),
        cmocka_unit_test(test_bodies_checked),
        cmocka_unit_test_setup_teardown(test_evolve_rejects_damaged_events,
                                        setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
