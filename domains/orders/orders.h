/*
 * orders.h -- the example domain: orders that are placed, paid, shipped or
 * cancelled. It is written against the public API only (include/cqrs/), to
 * prove that API is enough; see domains/orders/README.md for its commands,
 * events and rules.
 */
#ifndef ORDERS_ORDERS_H
#define ORDERS_ORDERS_H

#include <stddef.h>

#include "cqrs/decider.h"

/* The orders domain: commands PlaceOrder, RecordPayment, ShipOrder and
 * CancelOrder on the aggregate "order", stream "order-{order_id}".
 * Returns a pointer to static, immutable data; never NULL. Thread-safe. */
const cq_domain *orders_domain(void);

/* The orders read models, declared in the .sql files of
 * domains/orders/projections/ (order_summaries with customer_orders,
 * sales_dashboard, and the inline payment_confirmation). The module
 * (orders.so) reads them from projections/ beside it; for the engine's own
 * unit tests and benchmarks, which link orders.c directly, CMake also
 * compiles them into this array (the cqrs_orders library). Ended by name
 * NULL. */
typedef struct orders_sql_file {
    const char *name;
    const char *text;
    size_t len;
} orders_sql_file;

extern const orders_sql_file orders_projection_files[];

#endif
