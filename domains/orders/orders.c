/*
 * orders.c -- the orders domain: an order is placed with its items, paid in
 * one or more payments, then shipped; until it ships it can be cancelled.
 * The rules are tabled in README.md next to this file.
 *
 * Design decisions:
 *
 *  - Only the public API (include/cqrs/) is used, so this file is also the
 *    proof that a domain needs nothing from the engine's insides.
 *  - The state is a plain C struct folded from the stream's events. Each
 *    payment id seen is kept in a small open-addressing hash set, so that
 *    a repeated RecordPayment is recognised (and answered with no events)
 *    in constant time however many payments the order has had.
 *  - evolve() reads stored bytes, which are not trusted: every field it
 *    needs is checked for presence, type and range, and a stream that
 *    breaks the domain's invariants (an event before OrderPlaced, a second
 *    OrderPlaced, a running total that does not add up) is CQ_ECORRUPT.
 *    Unknown event types are ignored; a known type with a schema version
 *    other than 1 is CQ_ECORRUPT (upcasters bring old events to 1 before
 *    they reach evolve()).
 *  - decide() trusts the engine's shape check (the schemas below) but
 *    still never crashes on a body that skipped it: it answers CQ_EINVAL.
 *    Money sums use overflow-checked arithmetic for the same reason.
 *  - Everything here is pure and keeps no global mutable state; the state
 *    objects belong to the caller (one thread at a time).
 */
#include <assert.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cqrs/decider.h"
#include "cqrs/module.h"
#include "orders/orders.h"

#define EVENT_SCHEMA_VERSION 1 /* of every event but OrderPlaced */
#define ORDER_PLACED_VERSION 2 /* v2 added item_count; see upcast_placed */
#define STREAM_PREFIX "order-"

/* The schema version this code writes and reads for an event type. */
static int schema_of(const char *type)
{
    return strcmp(type, "OrderPlaced") == 0 ? ORDER_PLACED_VERSION
                                            : EVENT_SCHEMA_VERSION;
}

/* OrderPlaced v1 -> v2: v1 did not carry item_count; it is the sum of the
 * items' quantities, which v1 has. */
static int upcast_placed(json_t *data)
{
    const json_t *items = json_object_get(data, "items");
    const json_t *item;
    json_int_t count = 0;
    size_t i;

    if (!json_is_array(items))
        return CQ_ECORRUPT;
    json_array_foreach (items, i, item) {
        const json_t *q = json_object_get(item, "quantity");
        if (!json_is_integer(q) || json_integer_value(q) < 0 ||
            __builtin_add_overflow(count, json_integer_value(q), &count))
            return CQ_ECORRUPT;
    }
    return json_object_set_new(data, "item_count", json_integer(count)) == 0
               ? CQ_OK
               : CQ_ENOMEM;
}

static const cq_upcaster order_upcasters[] = {
    {"OrderPlaced", 1, upcast_placed},
    {NULL, 0, NULL},
};

/* ---- the set of payment ids ---------------------------------------------- */

/* Open addressing with linear probing; cap is 0 or a power of two, and the
 * table is grown before it is more than half full. Strings are owned. */
typedef struct id_set {
    char **slots;
    size_t cap, count;
} id_set;

static uint64_t hash_str(const char *s)
{
    uint64_t h = 0xcbf29ce484222325u; /* FNV-1a */
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 0x100000001b3u;
    return h;
}

/* The slot holding `s`, or the empty slot where it would go. cap > 0. */
static size_t set_slot(char *const *slots, size_t cap, const char *s)
{
    size_t i = (size_t)hash_str(s) & (cap - 1);
    while (slots[i] != NULL && strcmp(slots[i], s) != 0)
        i = (i + 1) & (cap - 1);
    return i;
}

static int set_has(const id_set *set, const char *s)
{
    return set->cap > 0 && set->slots[set_slot(set->slots, set->cap, s)];
}

/* Add a copy of `s` (nothing if present). CQ_OK or CQ_ENOMEM, in which
 * case the set is unchanged. */
static int set_add(id_set *set, const char *s)
{
    size_t i;
    char *copy;

    if (set_has(set, s))
        return CQ_OK;
    if (2 * (set->count + 1) > set->cap) {
        size_t cap = set->cap ? set->cap * 2 : 8;
        char **slots = calloc(cap, sizeof *slots);
        if (slots == NULL)
            return CQ_ENOMEM;
        for (size_t k = 0; k < set->cap; k++)
            if (set->slots[k] != NULL)
                slots[set_slot(slots, cap, set->slots[k])] = set->slots[k];
        free(set->slots);
        set->slots = slots;
        set->cap = cap;
    }
    copy = strdup(s);
    if (copy == NULL)
        return CQ_ENOMEM;
    i = set_slot(set->slots, set->cap, s);
    set->slots[i] = copy;
    set->count++;
    return CQ_OK;
}

static void set_free(id_set *set)
{
    for (size_t k = 0; k < set->cap; k++)
        free(set->slots[k]);
    free(set->slots);
    set->slots = NULL;
    set->cap = set->count = 0;
}

/* Deep copy of `from` into the empty `to`. CQ_OK or CQ_ENOMEM (`to` is
 * left empty). */
static int set_copy(id_set *to, const id_set *from)
{
    *to = (id_set){NULL, 0, 0};
    if (from->cap == 0)
        return CQ_OK;
    to->slots = calloc(from->cap, sizeof *to->slots);
    if (to->slots == NULL)
        return CQ_ENOMEM;
    to->cap = from->cap;
    for (size_t k = 0; k < from->cap; k++) {
        if (from->slots[k] == NULL)
            continue;
        to->slots[k] = strdup(from->slots[k]);
        if (to->slots[k] == NULL) {
            set_free(to);
            return CQ_ENOMEM;
        }
        to->count++;
    }
    return CQ_OK;
}

/* ---- state --------------------------------------------------------------- */

typedef enum order_status {
    ORDER_NONE = 0, /* no OrderPlaced yet: the order does not exist */
    ORDER_PLACED,
    ORDER_PAID,
    ORDER_SHIPPED,
    ORDER_CANCELLED
} order_status;

typedef struct order_state {
    order_status status;
    int64_t total_cents; /* from OrderPlaced */
    int64_t paid_cents;  /* running total of PaymentReceived */
    char *currency;      /* owned; NULL until placed */
    char *customer_id;   /* owned; NULL until placed */
    id_set payments;     /* payment ids already recorded */
} order_state;

static void *order_initial(void)
{
    return calloc(1, sizeof(order_state));
}

static void order_free(void *p)
{
    order_state *s = p;

    if (s == NULL)
        return;
    free(s->currency);
    free(s->customer_id);
    set_free(&s->payments);
    free(s);
}

static void *order_clone(const void *p)
{
    const order_state *from = p;
    order_state *s = calloc(1, sizeof *s);

    if (s == NULL)
        goto fail;
    s->status = from->status;
    s->total_cents = from->total_cents;
    s->paid_cents = from->paid_cents;
    if (from->currency != NULL &&
        (s->currency = strdup(from->currency)) == NULL)
        goto fail;
    if (from->customer_id != NULL &&
        (s->customer_id = strdup(from->customer_id)) == NULL)
        goto fail;
    if (set_copy(&s->payments, &from->payments) != CQ_OK)
        goto fail;
    return s;
fail:
    order_free(s);
    return NULL;
}

/* ---- evolve: fold stored events (untrusted) into the state --------------- */

/* Field `name` of `data` as a string; CQ_ECORRUPT if absent or not one. */
static int data_str(const json_t *data, const char *name, const char **out)
{
    *out = json_string_value(json_object_get(data, name));
    return *out != NULL ? CQ_OK : CQ_ECORRUPT;
}

/* Field `name` as an integer in [min, max]; CQ_ECORRUPT otherwise. */
static int data_int(const json_t *data, const char *name, int64_t min,
                    int64_t max, int64_t *out)
{
    const json_t *v = json_object_get(data, name);

    if (!json_is_integer(v))
        return CQ_ECORRUPT;
    *out = json_integer_value(v);
    return *out >= min && *out <= max ? CQ_OK : CQ_ECORRUPT;
}

static int evolve_placed(order_state *s, const json_t *data)
{
    const char *order_id, *customer_id, *currency;
    char *cust = NULL, *cur = NULL;
    int64_t total;

    if (s->status != ORDER_NONE)
        return CQ_ECORRUPT; /* placed twice */
    if (data_str(data, "order_id", &order_id) ||
        data_str(data, "customer_id", &customer_id) ||
        data_str(data, "currency", &currency) ||
        !json_is_array(json_object_get(data, "items")) ||
        data_int(data, "total_cents", 0, INT64_MAX, &total))
        return CQ_ECORRUPT;
    cust = strdup(customer_id);
    cur = strdup(currency);
    if (cust == NULL || cur == NULL) {
        free(cust);
        free(cur);
        return CQ_ENOMEM;
    }
    s->status = ORDER_PLACED;
    s->customer_id = cust;
    s->currency = cur;
    s->total_cents = total;
    s->paid_cents = 0;
    return CQ_OK;
}

static int evolve_payment(order_state *s, const json_t *data)
{
    const char *order_id, *payment_id;
    int64_t amount, paid;
    int rc;

    if (data_str(data, "order_id", &order_id) ||
        data_str(data, "payment_id", &payment_id) ||
        data_int(data, "amount_cents", 1, INT64_MAX, &amount) ||
        data_int(data, "paid_cents", 0, INT64_MAX, &paid))
        return CQ_ECORRUPT;
    /* The event carries the new running total; it must agree with ours. */
    if (amount > INT64_MAX - s->paid_cents || s->paid_cents + amount != paid)
        return CQ_ECORRUPT;
    rc = set_add(&s->payments, payment_id);
    if (rc != CQ_OK)
        return rc;
    s->paid_cents = paid;
    return CQ_OK;
}

static int evolve_paid(order_state *s, const json_t *data)
{
    const char *order_id;
    int64_t paid, total;

    if (data_str(data, "order_id", &order_id) ||
        data_int(data, "paid_cents", 0, INT64_MAX, &paid) ||
        data_int(data, "total_cents", 0, INT64_MAX, &total))
        return CQ_ECORRUPT;
    if (s->status == ORDER_PLACED)
        s->status = ORDER_PAID;
    return CQ_OK;
}

static int evolve_shipped(order_state *s, const json_t *data)
{
    const char *order_id, *carrier, *tracking;

    if (data_str(data, "order_id", &order_id) ||
        data_str(data, "carrier", &carrier) ||
        data_str(data, "tracking_number", &tracking))
        return CQ_ECORRUPT;
    s->status = ORDER_SHIPPED;
    return CQ_OK;
}

static int evolve_cancelled(order_state *s, const json_t *data)
{
    const char *order_id, *reason;
    int64_t refund;

    if (data_str(data, "order_id", &order_id) ||
        data_str(data, "reason", &reason) ||
        data_int(data, "refund_cents", 0, INT64_MAX, &refund))
        return CQ_ECORRUPT;
    s->status = ORDER_CANCELLED;
    return CQ_OK;
}

static int order_evolve(void *p, const cq_event *ev)
{
    static const struct {
        const char *type;
        int (*apply)(order_state *, const json_t *);
    } handlers[] = {
        {"OrderPlaced", evolve_placed},
        {"PaymentReceived", evolve_payment},
        {"OrderPaid", evolve_paid},
        {"OrderShipped", evolve_shipped},
        {"OrderCancelled", evolve_cancelled},
    };
    order_state *s = p;

    assert(s != NULL && ev != NULL);
    if (ev->type == NULL)
        return CQ_ECORRUPT;
    for (size_t i = 0; i < sizeof handlers / sizeof handlers[0]; i++) {
        if (strcmp(ev->type, handlers[i].type) != 0)
            continue;
        if (ev->schema_version != schema_of(ev->type) ||
            !json_is_object(ev->data))
            return CQ_ECORRUPT;
        /* Only OrderPlaced may start a stream. */
        if (s->status == ORDER_NONE && handlers[i].apply != evolve_placed)
            return CQ_ECORRUPT;
        return handlers[i].apply(s, ev->data);
    }
    return CQ_OK; /* an event type this version does not know */
}

static const cq_aggregate order_aggregate = {
    .name = "order",
    .initial = order_initial,
    .evolve = order_evolve,
    .clone = order_clone,
    .free = order_free,
};

/* ---- command schemas ----------------------------------------------------- */

/* Kept by hand: clang-format would break each initialiser brace by brace. */
/* clang-format off */
#define ID_FIELD(n) \
    {.name = (n), .kind = CQ_FIELD_STRING, .min = 1, .max = 64, \
     .chars = CQ_CHARS_ID}
#define TEXT_FIELD(n, lo, hi) \
    {.name = (n), .kind = CQ_FIELD_STRING, .min = (lo), .max = (hi), \
     .chars = CQ_CHARS_TEXT}
#define INT_FIELD(n, lo, hi) \
    {.name = (n), .kind = CQ_FIELD_INTEGER, .min = (lo), .max = (hi)}
/* clang-format on */

static const cq_field item_fields[] = {
    TEXT_FIELD("sku", 1, 64),
    INT_FIELD("quantity", 1, 10000),
    INT_FIELD("unit_price_cents", 0, 1000000000),
    {.kind = CQ_FIELD_END},
};

static const cq_field place_fields[] = {
    ID_FIELD("order_id"),
    ID_FIELD("customer_id"),
    {.name = "currency",
     .kind = CQ_FIELD_STRING,
     .min = 3,
     .max = 3,
     .chars = CQ_CHARS_UPPER},
    {.name = "items",
     .kind = CQ_FIELD_ARRAY,
     .min = 1,
     .max = 100,
     .items = item_fields},
    {.kind = CQ_FIELD_END},
};

static const cq_field payment_fields[] = {
    ID_FIELD("order_id"),
    ID_FIELD("payment_id"),
    INT_FIELD("amount_cents", 1, 1000000000000000),
    {.kind = CQ_FIELD_END},
};

static const cq_field ship_fields[] = {
    ID_FIELD("order_id"),
    TEXT_FIELD("carrier", 1, 100),
    TEXT_FIELD("tracking_number", 1, 100),
    {.kind = CQ_FIELD_END},
};

static const cq_field cancel_fields[] = {
    ID_FIELD("order_id"),
    TEXT_FIELD("reason", 1, 500),
    {.kind = CQ_FIELD_END},
};

/* ---- decide -------------------------------------------------------------- */

static const char *body_str(const json_t *body, const char *name)
{
    return json_string_value(json_object_get(body, name));
}

/* 1 and *out set if `name` is an integer member of body, else 0. */
static int body_int(const json_t *body, const char *name, int64_t *out)
{
    const json_t *v = json_object_get(body, name);

    if (!json_is_integer(v))
        return 0;
    *out = json_integer_value(v);
    return 1;
}

/* Emit `data` (a new reference, NULL if building it failed). */
static int emit(cq_decision *d, const char *type, json_t *data)
{
    if (data == NULL)
        return CQ_ENOMEM;
    return cq_decision_emit(d, type, schema_of(type), data);
}

static int order_stream_id(const json_t *body, char *buf, size_t cap)
{
    const char *id = body_str(body, "order_id");
    int n;

    if (id == NULL || id[0] == '\0')
        return CQ_EINVAL;
    n = snprintf(buf, cap, STREAM_PREFIX "%s", id);
    return n >= 0 && (size_t)n < cap ? CQ_OK : CQ_EINVAL;
}

static int decide_place(const void *state, const json_t *body, cq_decision *d)
{
    const order_state *s = state;
    const char *order_id = body_str(body, "order_id");
    const char *customer_id = body_str(body, "customer_id");
    const char *currency = body_str(body, "currency");
    const json_t *items = json_object_get(body, "items");
    const json_t *item;
    json_t *out_items = NULL;
    int64_t total = 0, count = 0;
    size_t i;

    if (!order_id || !customer_id || !currency || !json_is_array(items))
        return CQ_EINVAL;
    /* The engine answers 409 first (CQ_EXPECT_NEW); this is a backstop. */
    if (s->status != ORDER_NONE)
        return cq_decision_refuse(d, "order %s already exists", order_id);

    out_items = json_array();
    if (out_items == NULL)
        return CQ_ENOMEM;
    json_array_foreach (items, i, item) {
        const char *sku = body_str(item, "sku");
        int64_t qty, price, line;
        json_t *o;

        if (sku == NULL || !body_int(item, "quantity", &qty) ||
            !body_int(item, "unit_price_cents", &price) ||
            __builtin_mul_overflow(qty, price, &line) ||
            __builtin_add_overflow(total, line, &total) ||
            __builtin_add_overflow(count, qty, &count)) {
            json_decref(out_items);
            return CQ_EINVAL;
        }
        o = json_pack("{s:s, s:I, s:I}", "sku", sku, "quantity",
                      (json_int_t)qty, "unit_price_cents", (json_int_t)price);
        if (o == NULL || json_array_append_new(out_items, o) != 0) {
            json_decref(out_items);
            return CQ_ENOMEM;
        }
    }
    /* "o" steals out_items, also when json_pack fails. */
    return emit(d, "OrderPlaced",
                json_pack("{s:s, s:s, s:s, s:o, s:I, s:I}", "order_id",
                          order_id, "customer_id", customer_id, "currency",
                          currency, "items", out_items, "total_cents",
                          (json_int_t)total, "item_count", (json_int_t)count));
}

static int decide_payment(const void *state, const json_t *body, cq_decision *d)
{
    const order_state *s = state;
    const char *order_id = body_str(body, "order_id");
    const char *payment_id = body_str(body, "payment_id");
    int64_t amount, due, paid;
    int rc;

    if (!order_id || !payment_id || !body_int(body, "amount_cents", &amount) ||
        amount < 1)
        return CQ_EINVAL;
    if (s->status == ORDER_NONE)
        return cq_decision_refuse(d, "order %s does not exist", order_id);
    /* A payment recorded before is a retry: accept it, change nothing. */
    if (set_has(&s->payments, payment_id))
        return CQ_OK;
    if (s->status == ORDER_CANCELLED)
        return cq_decision_refuse(d, "order %s is cancelled", order_id);
    due = s->total_cents - s->paid_cents;
    if (amount > due)
        return cq_decision_refuse(
            d, "amount %" PRId64 " is above the %" PRId64 " still due", amount,
            due);
    paid = s->paid_cents + amount;
    rc = emit(d, "PaymentReceived",
              json_pack("{s:s, s:s, s:I, s:I}", "order_id", order_id,
                        "payment_id", payment_id, "amount_cents",
                        (json_int_t)amount, "paid_cents", (json_int_t)paid));
    if (rc != CQ_OK || paid != s->total_cents)
        return rc;
    return emit(d, "OrderPaid",
                json_pack("{s:s, s:I, s:I}", "order_id", order_id, "paid_cents",
                          (json_int_t)paid, "total_cents",
                          (json_int_t)s->total_cents));
}

static int decide_ship(const void *state, const json_t *body, cq_decision *d)
{
    const order_state *s = state;
    const char *order_id = body_str(body, "order_id");
    const char *carrier = body_str(body, "carrier");
    const char *tracking = body_str(body, "tracking_number");

    if (!order_id || !carrier || !tracking)
        return CQ_EINVAL;
    if (s->status == ORDER_NONE)
        return cq_decision_refuse(d, "order %s does not exist", order_id);
    if (s->status == ORDER_CANCELLED)
        return cq_decision_refuse(d, "order %s is cancelled", order_id);
    if (s->status == ORDER_SHIPPED)
        return cq_decision_refuse(d, "order %s has already been shipped",
                                  order_id);
    if (s->paid_cents < s->total_cents)
        return cq_decision_refuse(
            d, "order %s is not fully paid: %" PRId64 " of %" PRId64 " paid",
            order_id, s->paid_cents, s->total_cents);
    return emit(d, "OrderShipped",
                json_pack("{s:s, s:s, s:s}", "order_id", order_id, "carrier",
                          carrier, "tracking_number", tracking));
}

static int decide_cancel(const void *state, const json_t *body, cq_decision *d)
{
    const order_state *s = state;
    const char *order_id = body_str(body, "order_id");
    const char *reason = body_str(body, "reason");

    if (!order_id || !reason)
        return CQ_EINVAL;
    if (s->status == ORDER_NONE)
        return cq_decision_refuse(d, "order %s does not exist", order_id);
    if (s->status == ORDER_SHIPPED)
        return cq_decision_refuse(d,
                                  "order %s has already been shipped and "
                                  "can no longer be cancelled",
                                  order_id);
    if (s->status == ORDER_CANCELLED)
        return cq_decision_refuse(d, "order %s is already cancelled", order_id);
    return emit(d, "OrderCancelled",
                json_pack("{s:s, s:s, s:I}", "order_id", order_id, "reason",
                          reason, "refund_cents", (json_int_t)s->paid_cents));
}

/* ---- the domain ---------------------------------------------------------- */

static const cq_command_def place_order = {
    .type = "PlaceOrder",
    .aggregate = &order_aggregate,
    .schema = place_fields,
    .expect = CQ_EXPECT_NEW,
    .stream_id = order_stream_id,
    .decide = decide_place,
};

static const cq_command_def record_payment = {
    .type = "RecordPayment",
    .aggregate = &order_aggregate,
    .schema = payment_fields,
    .expect = CQ_EXPECT_EXISTS,
    .stream_id = order_stream_id,
    .decide = decide_payment,
};

static const cq_command_def ship_order = {
    .type = "ShipOrder",
    .aggregate = &order_aggregate,
    .schema = ship_fields,
    .expect = CQ_EXPECT_EXISTS,
    .stream_id = order_stream_id,
    .decide = decide_ship,
};

static const cq_command_def cancel_order = {
    .type = "CancelOrder",
    .aggregate = &order_aggregate,
    .schema = cancel_fields,
    .expect = CQ_EXPECT_EXISTS,
    .stream_id = order_stream_id,
    .decide = decide_cancel,
};

static const cq_command_def *const order_commands[] = {
    &place_order, &record_payment, &ship_order, &cancel_order, NULL,
};

/* "order-{order_id}": see STREAM_PREFIX */
static const char *const order_categories[] = {"order", NULL};

static const char *const order_event_types[] = {
    "OrderPlaced",  "PaymentReceived", "OrderPaid",
    "OrderShipped", "OrderCancelled",  NULL,
};

static const cq_domain orders = {
    .name = "orders",
    .commands = order_commands,
    .upcasters = order_upcasters,
    .categories = order_categories,
    .event_types = order_event_types,
};

/* See orders.h. */
const cq_domain *orders_domain(void)
{
    return &orders;
}

/* ---- the module (include/cqrs/module.h) ---------------------------------- */

/* orders.so is this file alone; its read models are the .sql files in
 * projections/ beside it (CMake copies them next to the built module and
 * installs them with it). */
static const cq_module orders_module = {
    .abi = CQ_ABI_INIT,
    .domain = &orders,
    .projections = "projections",
};

const cq_module *cq_module_init(void)
{
    return &orders_module;
}
