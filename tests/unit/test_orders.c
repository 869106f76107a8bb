/*
 * test_orders.c -- unit tests of the orders domain (domains/orders/), with
 * no database: each test folds initial() -> evolve() -> decide() by hand,
 * the way the engine does, and checks the events or refusal for every row
 * of docs/api.md's command table, the command schemas, clone
 * independence, and that evolve() answers CQ_ECORRUPT to damaged stored
 * events.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "command/command.h"
#include "orders/orders.h"

/* ---- a tiny in-memory "engine" ------------------------------------------- */

typedef struct order_fx {
    const cq_aggregate *agg;
    void *state;
    int64_t version;
    cq_decision *d;
    int last_rc;
} order_fx;

static const cq_command_def *cmd(const char *type)
{
    const cq_command_def *c = cq_domain_command(orders_domain(), type);
    assert_non_null(c);
    return c;
}

static int fx_setup(void **st)
{
    order_fx *fx = calloc(1, sizeof *fx);

    if (fx == NULL)
        return -1;
    fx->agg = cmd("PlaceOrder")->aggregate;
    fx->state = fx->agg->initial();
    fx->d = cq_decision_new();
    if (fx->state == NULL || fx->d == NULL)
        return -1;
    *st = fx;
    return 0;
}

static int fx_teardown(void **st)
{
    order_fx *fx = *st;

    fx->agg->free(fx->state);
    cq_decision_free(fx->d);
    free(fx);
    return 0;
}

static json_t *parse(const char *text)
{
    json_error_t err;
    json_t *j = json_loads(text, JSON_DECODE_ANY, &err);

    if (j == NULL)
        fail_msg("bad test JSON: %s: %s", err.text, text);
    return j;
}

/* Check `text` against the command's schema and decide on `state`.
 * Leaves the outcome in fx->d and returns decide()'s code. */
static int decide_on(order_fx *fx, const void *state, const char *type,
                     const char *text)
{
    const cq_command_def *c = cmd(type);
    json_t *body = parse(text);
    cq_errors *errs = cq_errors_new();
    char sid[128];

    assert_non_null(errs);
    if (cq_schema_check(c->schema, body, "", errs) != 0) {
        json_t *arr = cq_errors_to_json(errs);
        char *s = json_dumps(arr, 0);
        fail_msg("%s body rejected: %s", type, s);
    }
    if (c->validate != NULL)
        assert_int_equal(c->validate(body, errs), 0);
    cq_errors_free(errs);
    assert_int_equal(c->stream_id(body, sid, sizeof sid), CQ_OK);
    assert_true(strncmp(sid, "order-", 6) == 0);

    cq_decision_reset(fx->d);
    fx->last_rc = c->decide(state, body, fx->d);
    json_decref(body);
    return fx->last_rc;
}

static int decide(order_fx *fx, const char *type, const char *text)
{
    return decide_on(fx, fx->state, type, text);
}

/* Fold the decided events into fx->state, as the engine does after the
 * append. */
static void commit(order_fx *fx)
{
    for (size_t i = 0; i < cq_decision_count(fx->d); i++) {
        const cq_decided_event *de = cq_decision_event(fx->d, i);
        cq_event ev = {de->type, de->schema_version, ++fx->version, fx->version,
                       de->data};
        assert_int_equal(de->schema_version,
                         strcmp(de->type, "OrderPlaced") == 0 ? 2 : 1);
        assert_int_equal(fx->agg->evolve(fx->state, &ev), CQ_OK);
    }
}

/* Decide, expect success, commit; returns the number of events. */
static size_t accept(order_fx *fx, const char *type, const char *text)
{
    int rc = decide(fx, type, text);

    if (rc != CQ_OK)
        fail_msg("%s refused (%d): %s", type, rc,
                 cq_decision_refusal(fx->d) ? cq_decision_refusal(fx->d)
                                            : "(no message)");
    assert_null(cq_decision_refusal(fx->d));
    commit(fx);
    return cq_decision_count(fx->d);
}

/* Decide and expect a refusal with exactly `message`. */
static void refuse(order_fx *fx, const char *type, const char *text,
                   const char *message)
{
    assert_int_equal(decide(fx, type, text), CQ_EREFUSED);
    assert_int_equal(cq_decision_count(fx->d), 0);
    assert_non_null(cq_decision_refusal(fx->d));
    assert_string_equal(cq_decision_refusal(fx->d), message);
}

static const cq_decided_event *event(order_fx *fx, size_t i)
{
    const cq_decided_event *e = cq_decision_event(fx->d, i);
    assert_non_null(e);
    return e;
}

static json_int_t ev_int(order_fx *fx, size_t i, const char *name)
{
    const json_t *v = json_object_get(event(fx, i)->data, name);
    assert_true(json_is_integer(v));
    return json_integer_value(v);
}

static const char *ev_str(order_fx *fx, size_t i, const char *name)
{
    const char *s =
        json_string_value(json_object_get(event(fx, i)->data, name));
    assert_non_null(s);
    return s;
}

/* An order o-1 for a total of 1000 cents: 2 x 300 + 1 x 400. */
#define PLACE_1000                                                             \
    "{\"order_id\":\"o-1\",\"customer_id\":\"c-7\",\"currency\":\"EUR\","      \
    "\"items\":[{\"sku\":\"tea "                                               \
    "pot\",\"quantity\":2,\"unit_price_cents\":300},"                          \
    "{\"sku\":\"cup\",\"quantity\":1,\"unit_price_cents\":400}]}"

#define PAY(id, amount)                                                        \
    "{\"order_id\":\"o-1\",\"payment_id\":\"" id                               \
    "\",\"amount_cents\":" #amount "}"

#define SHIP                                                                   \
    "{\"order_id\":\"o-1\",\"carrier\":\"DHL\",\"tracking_number\":\"JD01\"}"

#define CANCEL "{\"order_id\":\"o-1\",\"reason\":\"changed my mind\"}"

static void place(order_fx *fx)
{
    assert_int_equal(accept(fx, "PlaceOrder", PLACE_1000), 1);
}

/* ---- the domain's shape -------------------------------------------------- */

static void test_domain(void **unused)
{
    const cq_domain *dom = orders_domain();

    assert_non_null(dom);
    assert_string_equal(dom->name, "orders");
    assert_int_equal(cmd("PlaceOrder")->expect, CQ_EXPECT_NEW);
    assert_int_equal(cmd("RecordPayment")->expect, CQ_EXPECT_EXISTS);
    assert_int_equal(cmd("ShipOrder")->expect, CQ_EXPECT_EXISTS);
    assert_int_equal(cmd("CancelOrder")->expect, CQ_EXPECT_EXISTS);
    assert_string_equal(cmd("ShipOrder")->aggregate->name, "order");
    assert_null(cq_domain_command(dom, "placeorder"));
    assert_null(cq_domain_command(dom, "DeleteOrder"));
    assert_null(cq_domain_command(dom, NULL));
    assert_null(cq_domain_command(NULL, "PlaceOrder"));

    /* what it owns: category "order" and its five event types */
    assert_string_equal(cq_domain_stream_owner(dom, "order-o-1"), "orders");
    assert_string_equal(cq_domain_stream_owner(dom, "order"), "orders");
    assert_string_equal(cq_domain_stream_owner(dom, "order-"), "orders");
    assert_null(cq_domain_stream_owner(dom, "orders-1"));
    assert_null(cq_domain_stream_owner(dom, "orde-1"));
    assert_null(cq_domain_stream_owner(dom, "evil3"));
    assert_null(cq_domain_stream_owner(dom, ""));
    assert_null(cq_domain_stream_owner(dom, NULL));
    assert_null(cq_domain_stream_owner(NULL, "order-o-1"));
    for (const char *const *t = dom->event_types; *t != NULL; t++)
        assert_string_equal(cq_domain_type_owner(dom, *t), "orders");
    assert_string_equal(cq_domain_type_owner(dom, "OrderShipped"), "orders");
    assert_null(cq_domain_type_owner(dom, "orderShipped"));
    assert_null(cq_domain_type_owner(dom, "Note"));
    assert_null(cq_domain_type_owner(dom, NULL));
    assert_null(cq_domain_type_owner(NULL, "OrderPlaced"));
}

static void test_stream_id(void **unused)
{
    const cq_command_def *c = cmd("CancelOrder");
    json_t *body = parse(CANCEL), *none = parse("{}");
    char buf[16];

    assert_int_equal(c->stream_id(body, buf, sizeof buf), CQ_OK);
    assert_string_equal(buf, "order-o-1");
    assert_int_equal(c->stream_id(body, buf, 9), CQ_EINVAL); /* no room */
    assert_int_equal(c->stream_id(none, buf, sizeof buf), CQ_EINVAL);
    json_decref(body);
    json_decref(none);
}

/* 1 if checking `text` against `type`'s schema finds an error on `field`
 * whose message is `message`, and no other. */
static int schema_rejects(const char *type, const char *text, const char *field,
                          const char *message)
{
    json_t *body = parse(text), *arr;
    cq_errors *errs = cq_errors_new();
    int n = cq_schema_check(cmd(type)->schema, body, "", errs), ok;

    arr = cq_errors_to_json(errs);
    ok = n == 1 &&
         strcmp(json_string_value(
                    json_object_get(json_array_get(arr, 0), "field")),
                field) == 0 &&
         strcmp(json_string_value(
                    json_object_get(json_array_get(arr, 0), "message")),
                message) == 0;
    if (!ok) {
        char *s = json_dumps(arr, 0);
        print_message("%s %s -> %s\n", type, text, s);
        free(s);
    }
    json_decref(arr);
    json_decref(body);
    cq_errors_free(errs);
    return ok;
}

static void test_schemas(void **unused)
{
    char buf[16384];

    assert_true(schema_rejects(
        "PlaceOrder",
        "{\"order_id\":\"o 1\",\"customer_id\":\"c\",\"currency\":\"EUR\","
        "\"items\":[{\"sku\":\"s\",\"quantity\":1,\"unit_price_cents\":0}]}",
        "order_id",
        "must contain only letters A-Z and a-z, digits, '_' and '-'"));
    assert_true(schema_rejects(
        "PlaceOrder",
        "{\"order_id\":\"o\",\"customer_id\":\"c\",\"currency\":\"usd\","
        "\"items\":[{\"sku\":\"s\",\"quantity\":1,\"unit_price_cents\":0}]}",
        "currency", "must contain only upper-case letters A-Z"));
    assert_true(schema_rejects(
        "PlaceOrder",
        "{\"order_id\":\"o\",\"customer_id\":\"c\",\"currency\":\"EUR\","
        "\"items\":[]}",
        "items", "must have between 1 and 100 items"));
    assert_true(schema_rejects(
        "PlaceOrder",
        "{\"order_id\":\"o\",\"customer_id\":\"c\",\"currency\":\"EUR\","
        "\"items\":[{\"sku\":\"s\",\"quantity\":10001,"
        "\"unit_price_cents\":0}]}",
        "items[0].quantity", "must be between 1 and 10000"));
    assert_true(schema_rejects(
        "PlaceOrder",
        "{\"order_id\":\"o\",\"customer_id\":\"c\",\"currency\":\"EUR\","
        "\"items\":[{\"sku\":\"s\",\"quantity\":1,"
        "\"unit_price_cents\":1000000001}]}",
        "items[0].unit_price_cents", "must be between 0 and 1000000000"));
    assert_true(schema_rejects(
        "PlaceOrder",
        "{\"order_id\":\"o\",\"customer_id\":\"c\",\"currency\":\"EUR\","
        "\"items\":[{\"sku\":\"\",\"quantity\":1,\"unit_price_cents\":1}]}",
        "items[0].sku", "must be between 1 and 64 characters long"));

    /* 101 items */
    int n = snprintf(buf, sizeof buf,
                     "{\"order_id\":\"o\",\"customer_id\":\"c\","
                     "\"currency\":\"EUR\",\"items\":[");
    for (int i = 0; i < 101; i++)
        n += snprintf(buf + n, sizeof buf - (size_t)n,
                      "%s{\"sku\":\"s\",\"quantity\":1,"
                      "\"unit_price_cents\":1}",
                      i ? "," : "");
    snprintf(buf + n, sizeof buf - (size_t)n, "]}");
    assert_true(schema_rejects("PlaceOrder", buf, "items",
                               "must have between 1 and 100 items"));

    assert_true(schema_rejects("RecordPayment", PAY("p-1", 0), "amount_cents",
                               "must be between 1 and 1000000000000000"));
    assert_true(schema_rejects("RecordPayment", PAY("p-1", 1000000000000001),
                               "amount_cents",
                               "must be between 1 and 1000000000000000"));
    assert_true(schema_rejects("RecordPayment", PAY("p-1", 12.5),
                               "amount_cents", "must be an integer"));
    assert_true(schema_rejects("RecordPayment", PAY("p/1", 5), "payment_id",
                               "must contain only letters A-Z and a-z, "
                               "digits, '_' and '-'"));
    assert_true(schema_rejects(
        "ShipOrder",
        "{\"order_id\":\"o-1\",\"carrier\":\"DHL\",\"tracking_number\":\"\"}",
        "tracking_number", "must be between 1 and 100 characters long"));
    assert_true(schema_rejects("ShipOrder",
                               "{\"order_id\":\"o-1\",\"carrier\":\"D\\nHL\","
                               "\"tracking_number\":\"1\"}",
                               "carrier",
                               "must not contain control characters"));
    assert_true(schema_rejects("CancelOrder", "{\"order_id\":\"o-1\"}",
                               "reason", "is required"));
    assert_true(schema_rejects(
        "CancelOrder",
        "{\"order_id\":\"o-1\",\"reason\":\"x\",\"refund\":true}", "refund",
        "unknown field"));

    /* Boundaries that pass: 64-character ids, 500-character reason. */
    char id64[65], reason[501], text[1024];
    memset(id64, 'a', 64);
    id64[64] = '\0';
    memset(reason, 'r', 500);
    reason[500] = '\0';
    snprintf(text, sizeof text, "{\"order_id\":\"%s\",\"reason\":\"%s\"}", id64,
             reason);
    json_t *body = parse(text);
    cq_errors *errs = cq_errors_new();
    assert_int_equal(
        cq_schema_check(cmd("CancelOrder")->schema, body, "", errs), 0);
    cq_errors_free(errs);
    json_decref(body);
}

/* ---- PlaceOrder ---------------------------------------------------------- */

static void test_place_order(void **st)
{
    order_fx *fx = *st;
    const json_t *items, *item;

    assert_int_equal(accept(fx, "PlaceOrder", PLACE_1000), 1);
    assert_string_equal(event(fx, 0)->type, "OrderPlaced");
    assert_int_equal(event(fx, 0)->schema_version, 2);
    assert_string_equal(ev_str(fx, 0, "order_id"), "o-1");
    assert_string_equal(ev_str(fx, 0, "customer_id"), "c-7");
    assert_string_equal(ev_str(fx, 0, "currency"), "EUR");
    assert_int_equal(ev_int(fx, 0, "total_cents"), 1000);
    items = json_object_get(event(fx, 0)->data, "items");
    assert_int_equal(json_array_size(items), 2);
    item = json_array_get(items, 0);
    assert_int_equal(json_object_size(item), 3);
    assert_string_equal(json_string_value(json_object_get(item, "sku")),
                        "tea pot");
    assert_int_equal(json_integer_value(json_object_get(item, "quantity")), 2);
    assert_int_equal(
        json_integer_value(json_object_get(item, "unit_price_cents")), 300);
    assert_int_equal(ev_int(fx, 0, "item_count"), 3); /* sum of quantities */
    assert_int_equal(json_object_size(event(fx, 0)->data), 6);

    /* The engine answers 409 first; decide() refuses as a backstop. */
    refuse(fx, "PlaceOrder", PLACE_1000, "order o-1 already exists");
}

/* The largest order the schema allows: 100 x 10000 x 10^9 = 10^15. */
static void test_place_largest_order(void **st)
{
    order_fx *fx = *st;
    static char buf[16384];
    int n = snprintf(buf, sizeof buf,
                     "{\"order_id\":\"o-1\",\"customer_id\":\"c\","
                     "\"currency\":\"JPY\",\"items\":[");

    for (int i = 0; i < 100; i++)
        n += snprintf(buf + n, sizeof buf - (size_t)n,
                      "%s{\"sku\":\"s%d\",\"quantity\":10000,"
                      "\"unit_price_cents\":1000000000}",
                      i ? "," : "", i);
    snprintf(buf + n, sizeof buf - (size_t)n, "]}");
    assert_int_equal(accept(fx, "PlaceOrder", buf), 1);
    assert_int_equal(ev_int(fx, 0, "total_cents"), 1000000000000000LL);
    /* ... and it can be paid in one go. */
    assert_int_equal(accept(fx, "RecordPayment", PAY("p-1", 1000000000000000)),
                     2);
    assert_string_equal(event(fx, 1)->type, "OrderPaid");
}

/* ---- RecordPayment ------------------------------------------------------- */

static void test_payment_partial_then_final(void **st)
{
    order_fx *fx = *st;

    place(fx);
    assert_int_equal(accept(fx, "RecordPayment", PAY("p-1", 300)), 1);
    assert_string_equal(event(fx, 0)->type, "PaymentReceived");
    assert_string_equal(ev_str(fx, 0, "order_id"), "o-1");
    assert_string_equal(ev_str(fx, 0, "payment_id"), "p-1");
    assert_int_equal(ev_int(fx, 0, "amount_cents"), 300);
    assert_int_equal(ev_int(fx, 0, "paid_cents"), 300);

    assert_int_equal(accept(fx, "RecordPayment", PAY("p-2", 699)), 1);
    assert_int_equal(ev_int(fx, 0, "paid_cents"), 999);

    /* The exact final cent: PaymentReceived, then OrderPaid. */
    assert_int_equal(accept(fx, "RecordPayment", PAY("p-3", 1)), 2);
    assert_string_equal(event(fx, 0)->type, "PaymentReceived");
    assert_int_equal(ev_int(fx, 0, "paid_cents"), 1000);
    assert_string_equal(event(fx, 1)->type, "OrderPaid");
    assert_int_equal(event(fx, 1)->schema_version, 1);
    assert_string_equal(ev_str(fx, 1, "order_id"), "o-1");
    assert_int_equal(ev_int(fx, 1, "paid_cents"), 1000);
    assert_int_equal(ev_int(fx, 1, "total_cents"), 1000);
    assert_int_equal(fx->version, 5);
}

static void test_payment_in_full_at_once(void **st)
{
    order_fx *fx = *st;

    place(fx);
    assert_int_equal(accept(fx, "RecordPayment", PAY("p-1", 1000)), 2);
    assert_string_equal(event(fx, 1)->type, "OrderPaid");
}

static void test_payment_repeated_is_noop(void **st)
{
    order_fx *fx = *st;

    place(fx);
    assert_int_equal(accept(fx, "RecordPayment", PAY("p-1", 300)), 1);
    /* Same payment id again: accepted, nothing emitted, no refusal. */
    assert_int_equal(accept(fx, "RecordPayment", PAY("p-1", 300)), 0);
    /* The id decides, not the amount. */
    assert_int_equal(accept(fx, "RecordPayment", PAY("p-1", 5)), 0);
    /* The running total did not move: 700 are still due. */
    refuse(fx, "RecordPayment", PAY("p-2", 701),
           "amount 701 is above the 700 still due");
    /* A retry after the order was cancelled is still a no-op... */
    assert_int_equal(accept(fx, "CancelOrder", CANCEL), 1);
    assert_int_equal(accept(fx, "RecordPayment", PAY("p-1", 300)), 0);
    /* ...while a new payment is refused. */
    refuse(fx, "RecordPayment", PAY("p-9", 1), "order o-1 is cancelled");
}

static void test_overpayment_refused(void **st)
{
    order_fx *fx = *st;

    place(fx);
    refuse(fx, "RecordPayment", PAY("p-1", 1001),
           "amount 1001 is above the 1000 still due");
    assert_int_equal(accept(fx, "RecordPayment", PAY("p-1", 700)), 1);
    refuse(fx, "RecordPayment", PAY("p-2", 500),
           "amount 500 is above the 300 still due");
    assert_int_equal(accept(fx, "RecordPayment", PAY("p-2", 300)), 2);
    /* Fully paid: any further new payment is above what is due. */
    refuse(fx, "RecordPayment", PAY("p-3", 1),
           "amount 1 is above the 0 still due");
}

static void test_payment_on_cancelled_refused(void **st)
{
    order_fx *fx = *st;

    place(fx);
    assert_int_equal(accept(fx, "CancelOrder", CANCEL), 1);
    refuse(fx, "RecordPayment", PAY("p-1", 100), "order o-1 is cancelled");
}

/* ---- ShipOrder ----------------------------------------------------------- */

static void test_ship(void **st)
{
    order_fx *fx = *st;

    place(fx);
    refuse(fx, "ShipOrder", SHIP,
           "order o-1 is not fully paid: 0 of 1000 paid");
    assert_int_equal(accept(fx, "RecordPayment", PAY("p-1", 999)), 1);
    refuse(fx, "ShipOrder", SHIP,
           "order o-1 is not fully paid: 999 of 1000 paid");
    assert_int_equal(accept(fx, "RecordPayment", PAY("p-2", 1)), 2);

    assert_int_equal(accept(fx, "ShipOrder", SHIP), 1);
    assert_string_equal(event(fx, 0)->type, "OrderShipped");
    assert_int_equal(event(fx, 0)->schema_version, 1);
    assert_string_equal(ev_str(fx, 0, "order_id"), "o-1");
    assert_string_equal(ev_str(fx, 0, "carrier"), "DHL");
    assert_string_equal(ev_str(fx, 0, "tracking_number"), "JD01");

    refuse(fx, "ShipOrder", SHIP, "order o-1 has already been shipped");
}

static void test_ship_cancelled_refused(void **st)
{
    order_fx *fx = *st;

    place(fx);
    assert_int_equal(accept(fx, "RecordPayment", PAY("p-1", 1000)), 2);
    assert_int_equal(accept(fx, "CancelOrder", CANCEL), 1);
    refuse(fx, "ShipOrder", SHIP, "order o-1 is cancelled");
}

/* An order of free items (total 0) is fully paid from the start. */
static void test_free_order(void **st)
{
    order_fx *fx = *st;

    assert_int_equal(
        accept(fx, "PlaceOrder",
               "{\"order_id\":\"o-1\",\"customer_id\":\"c\",\"currency\":"
               "\"EUR\",\"items\":[{\"sku\":\"sample\",\"quantity\":3,"
               "\"unit_price_cents\":0}]}"),
        1);
    assert_int_equal(ev_int(fx, 0, "total_cents"), 0);
    refuse(fx, "RecordPayment", PAY("p-1", 1),
           "amount 1 is above the 0 still due");
    assert_int_equal(accept(fx, "ShipOrder", SHIP), 1);
}

/* ---- CancelOrder --------------------------------------------------------- */

static void test_cancel_unpaid(void **st)
{
    order_fx *fx = *st;

    place(fx);
    assert_int_equal(accept(fx, "CancelOrder", CANCEL), 1);
    assert_string_equal(event(fx, 0)->type, "OrderCancelled");
    assert_int_equal(event(fx, 0)->schema_version, 1);
    assert_string_equal(ev_str(fx, 0, "order_id"), "o-1");
    assert_string_equal(ev_str(fx, 0, "reason"), "changed my mind");
    assert_int_equal(ev_int(fx, 0, "refund_cents"), 0);
    refuse(fx, "CancelOrder", CANCEL, "order o-1 is already cancelled");
}

static void test_cancel_refunds_what_was_paid(void **st)
{
    order_fx *fx = *st;

    place(fx);
    assert_int_equal(accept(fx, "RecordPayment", PAY("p-1", 250)), 1);
    assert_int_equal(accept(fx, "RecordPayment", PAY("p-2", 150)), 1);
    assert_int_equal(accept(fx, "CancelOrder", CANCEL), 1);
    assert_int_equal(ev_int(fx, 0, "refund_cents"), 400);
}

static void test_cancel_paid_order(void **st)
{
    order_fx *fx = *st;

    place(fx);
    assert_int_equal(accept(fx, "RecordPayment", PAY("p-1", 1000)), 2);
    assert_int_equal(accept(fx, "CancelOrder", CANCEL), 1);
    assert_int_equal(ev_int(fx, 0, "refund_cents"), 1000);
}

static void test_cancel_shipped_refused(void **st)
{
    order_fx *fx = *st;

    place(fx);
    assert_int_equal(accept(fx, "RecordPayment", PAY("p-1", 1000)), 2);
    assert_int_equal(accept(fx, "ShipOrder", SHIP), 1);
    refuse(fx, "CancelOrder", CANCEL,
           "order o-1 has already been shipped and can no longer be "
           "cancelled");
}

/* The engine answers 404 first (CQ_EXPECT_EXISTS); decide() refuses as a
 * backstop when called on the state of a stream with no events. */
static void test_commands_on_missing_order(void **st)
{
    order_fx *fx = *st;

    refuse(fx, "RecordPayment", PAY("p-1", 1), "order o-1 does not exist");
    refuse(fx, "ShipOrder", SHIP, "order o-1 does not exist");
    refuse(fx, "CancelOrder", CANCEL, "order o-1 does not exist");
}

/* decide() on a body that skipped the schema check does not crash. */
static void test_decide_bad_body(void **st)
{
    order_fx *fx = *st;
    json_t *empty = json_object();
    json_t *huge =
        parse("{\"order_id\":\"o\",\"customer_id\":\"c\",\"currency\":\"EUR\","
              "\"items\":[{\"sku\":\"s\",\"quantity\":9223372036854775807,"
              "\"unit_price_cents\":9223372036854775807}]}");

    assert_int_equal(cmd("PlaceOrder")->decide(fx->state, empty, fx->d),
                     CQ_EINVAL);
    assert_int_equal(cmd("PlaceOrder")->decide(fx->state, huge, fx->d),
                     CQ_EINVAL);
    place(fx);
    assert_int_equal(cmd("RecordPayment")->decide(fx->state, empty, fx->d),
                     CQ_EINVAL);
    assert_int_equal(cmd("ShipOrder")->decide(fx->state, empty, fx->d),
                     CQ_EINVAL);
    assert_int_equal(cmd("CancelOrder")->decide(fx->state, empty, fx->d),
                     CQ_EINVAL);
    json_decref(empty);
    json_decref(huge);
}

/* ---- state: clone and purity --------------------------------------------- */

static void test_clone_independent(void **st)
{
    order_fx *fx = *st;
    void *before, *copy;

    before = fx->agg->clone(fx->state); /* clone of the initial state */
    assert_non_null(before);
    place(fx);
    assert_int_equal(accept(fx, "RecordPayment", PAY("p-1", 100)), 1);
    copy = fx->agg->clone(fx->state);
    assert_non_null(copy);

    /* Move the original on: another payment, then cancel. */
    assert_int_equal(accept(fx, "RecordPayment", PAY("p-2", 200)), 1);
    assert_int_equal(accept(fx, "CancelOrder", CANCEL), 1);

    /* The copy still has p-1 (a retry is a no-op) but not p-2, 900 due,
     * and is not cancelled. */
    assert_int_equal(decide_on(fx, copy, "RecordPayment", PAY("p-1", 100)),
                     CQ_OK);
    assert_int_equal(cq_decision_count(fx->d), 0);
    assert_int_equal(decide_on(fx, copy, "RecordPayment", PAY("p-2", 900)),
                     CQ_OK);
    assert_int_equal(cq_decision_count(fx->d), 2);
    assert_int_equal(ev_int(fx, 0, "paid_cents"), 1000);
    assert_int_equal(decide_on(fx, copy, "CancelOrder", CANCEL), CQ_OK);
    assert_int_equal(ev_int(fx, 0, "refund_cents"), 100);

    /* The clone of the initial state does not exist as an order. */
    assert_int_equal(decide_on(fx, before, "ShipOrder", SHIP), CQ_EREFUSED);

    /* Freeing the copies leaves the original intact. */
    fx->agg->free(copy);
    fx->agg->free(before);
    fx->agg->free(NULL);
    refuse(fx, "CancelOrder", CANCEL, "order o-1 is already cancelled");
}

/* Many payments: the id set grows, and every id is still remembered. */
static void test_many_payments(void **st)
{
    order_fx *fx = *st;
    char body[128];
    void *copy;

    place(fx);
    for (int i = 0; i < 999; i++) {
        snprintf(body, sizeof body,
                 "{\"order_id\":\"o-1\",\"payment_id\":\"p-%d\","
                 "\"amount_cents\":1}",
                 i);
        assert_int_equal(accept(fx, "RecordPayment", body), 1);
    }
    copy = fx->agg->clone(fx->state);
    for (int i = 0; i < 999; i++) {
        snprintf(body, sizeof body,
                 "{\"order_id\":\"o-1\",\"payment_id\":\"p-%d\","
                 "\"amount_cents\":1}",
                 i);
        assert_int_equal(decide_on(fx, copy, "RecordPayment", body), CQ_OK);
        assert_int_equal(cq_decision_count(fx->d), 0);
    }
    fx->agg->free(copy);
    assert_int_equal(accept(fx, "RecordPayment", PAY("p-last", 1)), 2);
}

/* Deciding twice on the same state gives the same answer: decide() does
 * not change the state. */
static void test_decide_is_pure(void **st)
{
    order_fx *fx = *st;

    place(fx);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(decide(fx, "RecordPayment", PAY("p-1", 1000)), CQ_OK);
        assert_int_equal(cq_decision_count(fx->d), 2);
        assert_int_equal(ev_int(fx, 0, "paid_cents"), 1000);
    }
}

/* ---- evolve on damaged stored events ------------------------------------- */

/* evolve() one event (data as JSON text, or NULL) on a fresh state, after
 * a valid OrderPlaced if `placed`; returns evolve()'s code. */
static int evolve_text(order_fx *fx, int placed, const char *type,
                       int schema_version, const char *data_text)
{
    void *s = fx->agg->initial();
    json_t *data = data_text ? parse(data_text) : NULL;
    int rc;

    assert_non_null(s);
    if (placed) {
        json_t *pd = parse("{\"order_id\":\"o-1\",\"customer_id\":\"c\","
                           "\"currency\":\"EUR\",\"items\":[],"
                           "\"total_cents\":1000}");
        cq_event pe = {"OrderPlaced", 2, 1, 1, pd};
        assert_int_equal(fx->agg->evolve(s, &pe), CQ_OK);
        json_decref(pd);
    }
    cq_event ev = {type, schema_version, 2, 2, data};
    rc = fx->agg->evolve(s, &ev);
    json_decref(data);
    fx->agg->free(s);
    return rc;
}

/* OrderPlaced v1 (before item_count) is upcast to v2 wherever it is read;
 * v2 and other types are left alone; v1 that cannot be read is an error. */
static void test_upcast_order_placed(void **st)
{
    const cq_domain *dom = orders_domain();
    json_t *d = parse("{\"order_id\":\"o\",\"customer_id\":\"c\","
                      "\"currency\":\"EUR\",\"items\":[{\"sku\":\"a\","
                      "\"quantity\":2,\"unit_price_cents\":1},{\"sku\":\"b\","
                      "\"quantity\":5,\"unit_price_cents\":1}],"
                      "\"total_cents\":7}");
    int v = 1;

    (void)st;
    assert_int_equal(cq_domain_upcast(dom, "OrderPlaced", &v, d), CQ_OK);
    assert_int_equal(v, 2);
    assert_int_equal(json_integer_value(json_object_get(d, "item_count")), 7);
    /* already current: unchanged */
    json_object_set_new(d, "item_count", json_integer(99));
    assert_int_equal(cq_domain_upcast(dom, "OrderPlaced", &v, d), CQ_OK);
    assert_int_equal(v, 2);
    assert_int_equal(json_integer_value(json_object_get(d, "item_count")), 99);
    /* other types have no upcaster */
    v = 1;
    assert_int_equal(cq_domain_upcast(dom, "PaymentReceived", &v, d), CQ_OK);
    assert_int_equal(v, 1);
    json_decref(d);
    /* v1 whose items cannot be counted */
    d = parse("{\"order_id\":\"o\",\"items\":[{\"quantity\":\"2\"}]}");
    v = 1;
    assert_int_equal(cq_domain_upcast(dom, "OrderPlaced", &v, d),
                     CQ_ECORRUPT);
    assert_int_equal(v, 1);
    json_decref(d);
    d = parse("{\"order_id\":\"o\"}");
    assert_int_equal(cq_domain_upcast(dom, "OrderPlaced", &v, d),
                     CQ_ECORRUPT);
    json_decref(d);
}

static void test_evolve_corrupt(void **st)
{
    order_fx *fx = *st;
    static const struct {
        int placed;
        const char *type;
        int schema_version;
        const char *data;
    } bad[] = {
        /* OrderPlaced with missing or wrong-typed fields */
        {0, "OrderPlaced", 2, NULL},
        {0, "OrderPlaced", 2, "[]"},
        {0, "OrderPlaced", 2, "{}"},
        {0, "OrderPlaced", 2,
         "{\"order_id\":\"o\",\"customer_id\":\"c\",\"currency\":\"EUR\","
         "\"items\":[]}"},
        {0, "OrderPlaced", 2,
         "{\"order_id\":\"o\",\"customer_id\":\"c\",\"currency\":\"EUR\","
         "\"items\":[],\"total_cents\":\"1000\"}"},
        {0, "OrderPlaced", 2,
         "{\"order_id\":\"o\",\"customer_id\":\"c\",\"currency\":\"EUR\","
         "\"items\":[],\"total_cents\":10.5}"},
        {0, "OrderPlaced", 2,
         "{\"order_id\":\"o\",\"customer_id\":\"c\",\"currency\":\"EUR\","
         "\"items\":[],\"total_cents\":-1}"},
        {0, "OrderPlaced", 2,
         "{\"order_id\":\"o\",\"customer_id\":7,\"currency\":\"EUR\","
         "\"items\":[],\"total_cents\":1}"},
        {0, "OrderPlaced", 2,
         "{\"order_id\":\"o\",\"customer_id\":\"c\",\"currency\":null,"
         "\"items\":[],\"total_cents\":1}"},
        {0, "OrderPlaced", 2,
         "{\"order_id\":\"o\",\"customer_id\":\"c\",\"currency\":\"EUR\","
         "\"items\":{},\"total_cents\":1}"},
        /* a newer schema version this code does not know */
        {0, "OrderPlaced", 3,
         "{\"order_id\":\"o\",\"customer_id\":\"c\",\"currency\":\"EUR\","
         "\"items\":[],\"total_cents\":1}"},
        /* placed twice */
        {1, "OrderPlaced", 2,
         "{\"order_id\":\"o\",\"customer_id\":\"c\",\"currency\":\"EUR\","
         "\"items\":[],\"total_cents\":1}"},
        /* events before OrderPlaced */
        {0, "PaymentReceived", 1,
         "{\"order_id\":\"o-1\",\"payment_id\":\"p\",\"amount_cents\":1,"
         "\"paid_cents\":1}"},
        {0, "OrderShipped", 1,
         "{\"order_id\":\"o-1\",\"carrier\":\"c\",\"tracking_number\":\"t\"}"},
        /* PaymentReceived */
        {1, "PaymentReceived", 1, "{\"order_id\":\"o-1\"}"},
        {1, "PaymentReceived", 1,
         "{\"order_id\":\"o-1\",\"payment_id\":5,\"amount_cents\":1,"
         "\"paid_cents\":1}"},
        {1, "PaymentReceived", 1,
         "{\"order_id\":\"o-1\",\"payment_id\":\"p\",\"amount_cents\":0,"
         "\"paid_cents\":0}"},
        {1, "PaymentReceived", 1,
         "{\"order_id\":\"o-1\",\"payment_id\":\"p\",\"amount_cents\":true,"
         "\"paid_cents\":1}"},
        {1, "PaymentReceived", 1, /* running total does not add up */
         "{\"order_id\":\"o-1\",\"payment_id\":\"p\",\"amount_cents\":10,"
         "\"paid_cents\":11}"},
        {1, "PaymentReceived", 1,
         "{\"order_id\":\"o-1\",\"payment_id\":\"p\",\"amount_cents\":1,"
         "\"paid_cents\":-1}"},
        /* OrderPaid, OrderShipped, OrderCancelled */
        {1, "OrderPaid", 1, "{\"order_id\":\"o-1\",\"paid_cents\":1000}"},
        {1, "OrderShipped", 1, "{\"order_id\":\"o-1\",\"carrier\":\"c\"}"},
        {1, "OrderShipped", 1, "\"shipped\""},
        {1, "OrderCancelled", 1,
         "{\"order_id\":\"o-1\",\"reason\":\"r\",\"refund_cents\":\"0\"}"},
        {1, "OrderCancelled", 1, "{\"reason\":\"r\",\"refund_cents\":0}"},
        /* no type at all */
        {1, NULL, 1, "{}"},
    };

    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int rc = evolve_text(fx, bad[i].placed, bad[i].type,
                             bad[i].schema_version, bad[i].data);
        if (rc != CQ_ECORRUPT)
            fail_msg("case %zu (%s %s): got %d, want CQ_ECORRUPT", i,
                     bad[i].type ? bad[i].type : "(null)",
                     bad[i].data ? bad[i].data : "(null)", rc);
    }

    /* Unknown event types are ignored, whatever their data. */
    assert_int_equal(evolve_text(fx, 0, "OrderGiftWrapped", 7, NULL), CQ_OK);
    assert_int_equal(evolve_text(fx, 1, "OrderGiftWrapped", 1, "[1]"), CQ_OK);
    /* Extra fields in a known event are fine (fields may be added). */
    assert_int_equal(
        evolve_text(fx, 1, "OrderShipped", 1,
                    "{\"order_id\":\"o-1\",\"carrier\":\"c\","
                    "\"tracking_number\":\"t\",\"eta\":\"tomorrow\"}"),
        CQ_OK);
}

/* A failed evolve leaves the state usable (it is discarded by the engine,
 * but must still free cleanly). */
static void test_evolve_corrupt_then_free(void **st)
{
    order_fx *fx = *st;
    json_t *bad = parse("{\"order_id\":\"o-1\",\"payment_id\":\"p\","
                        "\"amount_cents\":5,\"paid_cents\":4}");
    cq_event ev = {"PaymentReceived", 1, 2, 2, bad};

    place(fx);
    assert_int_equal(fx->agg->evolve(fx->state, &ev), CQ_ECORRUPT);
    json_decref(bad);
    /* Nothing was half-applied: p is unknown, 1000 still due. */
    refuse(fx, "RecordPayment", PAY("p", 1001),
           "amount 1001 is above the 1000 still due");
}

#define T(f) cmocka_unit_test_setup_teardown(f, fx_setup, fx_teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_domain),
        cmocka_unit_test(test_stream_id),
        cmocka_unit_test(test_schemas),
        T(test_place_order),
        T(test_place_largest_order),
        T(test_payment_partial_then_final),
        T(test_payment_in_full_at_once),
        T(test_payment_repeated_is_noop),
        T(test_overpayment_refused),
        T(test_payment_on_cancelled_refused),
        T(test_ship),
        T(test_ship_cancelled_refused),
        T(test_free_order),
        T(test_cancel_unpaid),
        T(test_cancel_refunds_what_was_paid),
        T(test_cancel_paid_order),
        T(test_cancel_shipped_refused),
        T(test_commands_on_missing_order),
        T(test_decide_bad_body),
        T(test_clone_independent),
        T(test_many_payments),
        T(test_decide_is_pure),
        T(test_upcast_order_placed),
        T(test_evolve_corrupt),
        T(test_evolve_corrupt_then_free),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
