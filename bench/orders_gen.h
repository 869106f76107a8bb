/*
 * orders_gen.h — the synthetic order history shared by bench/fill_events.c
 * (which writes it into an event store) and bench/raw_upsert.c (which
 * applies the same events' decoded values to a read model with plain
 * SQLite), so both sides of the catch-up benchmark see the same events.
 *
 * The history has `orders` orders of 4 events each, in the order a busy
 * shop would record them: at step s the shop places order s+1, takes the
 * payment of order s+1-lag (RecordPayment: PaymentReceived + OrderPaid)
 * and ships order s+1-2*lag (ShipOrder: OrderShipped). Every order is paid
 * in full with one payment. Positions are 1..4*orders with no gaps; the
 * last event (position 4*orders) is the OrderShipped of the last order.
 *
 * Each order's values (customer, currency, 1-3 items, total) come from a
 * hash of its number, so any event of any order can be rebuilt without
 * remembering the order; the value ranges are those of
 * bench/placeorder.lua. Commands are `step_ms` apart on the clock, starting
 * at `base_ms`; the events of one command share its time.
 *
 * Header-only, static functions, no global state.
 */
#ifndef BENCH_ORDERS_GEN_H
#define BENCH_ORDERS_GEN_H

#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

enum {
    GEN_PLACED,
    GEN_PAYMENT,
    GEN_PAID,
    GEN_SHIPPED
};

static const char *const GEN_TYPES[] = {"OrderPlaced", "PaymentReceived",
                                        "OrderPaid", "OrderShipped"};
static const char *const GEN_SKUS[] = {
    "SKU-MUG-RED-350ML", "SKU-TSHIRT-BLUE-L", "SKU-NOTEBOOK-A5-DOTTED",
    "SKU-CABLE-USB-C-2M", "SKU-COFFEE-BEANS-1KG"};
static const char *const GEN_CURRENCIES[] = {"EUR", "USD", "GBP"};
static const char *const GEN_CARRIERS[] = {"DHL", "UPS", "FedEx", "PostNL"};

typedef struct gen_order {
    long n;                 /* 1-based order number */
    char order_id[48];
    char customer_id[16];
    const char *currency;
    int nitems;
    const char *sku[3];
    int64_t qty[3], price[3];
    int64_t total_cents, item_count;
} gen_order;

/* splitmix64 */
static inline uint64_t gen_mix(uint64_t x)
{
    x += 0x9e3779b97f4a7c15u;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9u;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebu;
    return x ^ (x >> 31);
}

static inline void gen_order_make(gen_order *o, const char *prefix, long n)
{
    uint64_t h = gen_mix((uint64_t)n);
    o->n = n;
    snprintf(o->order_id, sizeof o->order_id, "%s-%ld", prefix, n);
    snprintf(o->customer_id, sizeof o->customer_id, "c-%05d",
             (int)(1 + h % 5000));
    h = gen_mix(h);
    o->currency = GEN_CURRENCIES[h % 3];
    h = gen_mix(h);
    o->nitems = (int)(1 + h % 3);
    o->total_cents = 0;
    o->item_count = 0;
    for (int i = 0; i < o->nitems; i++) {
        h = gen_mix(h);
        o->sku[i] = GEN_SKUS[h % 5];
        o->qty[i] = (int64_t)(1 + (h >> 8) % 5);
        o->price[i] = (int64_t)(199 + (h >> 16) % (99999 - 199 + 1));
        o->total_cents += o->qty[i] * o->price[i];
        o->item_count += o->qty[i];
    }
}

/* One event of the history. */
typedef struct gen_event {
    int kind;               /* GEN_* */
    long order;             /* 1-based order number */
    int64_t version;        /* 1..4 in the order's stream */
    int64_t position;       /* 1..4*orders */
    int64_t time_ms;        /* the command's time, ms since the epoch */
    int first_of_command;   /* the first event of its command */
} gen_event;

typedef struct gen_iter {
    long orders, lag;
    int64_t base_ms, step_ms;
    long step;              /* current step */
    int slot;               /* next event within the step: 0..3 */
    int64_t position;       /* last position handed out */
} gen_iter;

static inline void gen_iter_init(gen_iter *it, long orders, long lag,
                                 int64_t base_ms, int64_t step_ms)
{
    memset(it, 0, sizeof *it);
    it->orders = orders;
    it->lag = lag < 0 ? 0 : lag;
    it->base_ms = base_ms;
    it->step_ms = step_ms;
}

static inline int64_t gen_total_events(long orders)
{
    return 4 * (int64_t)orders;
}

/* A base time such that the history ends about now. */
static inline int64_t gen_default_base_ms(long orders, long lag,
                                          int64_t step_ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    int64_t now = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
    return now - (int64_t)(orders + 2 * lag) * step_ms;
}

/* The next event, or 0 when the history is over. Slots of a step: 0 place
 * order s+1; 1, 2 pay order s+1-lag (two events of one command); 3 ship
 * order s+1-2*lag. */
static inline int gen_next(gen_iter *it, gen_event *ev)
{
    for (;;) {
        long s = it->step;
        if (s >= it->orders + 2 * it->lag)
            return 0;
        int slot = it->slot;
        long n;
        if (slot == 0)
            n = s + 1;
        else if (slot <= 2)
            n = s + 1 - it->lag;
        else
            n = s + 1 - 2 * it->lag;
        if (++it->slot == 4) {
            it->slot = 0;
            it->step++;
        }
        if (n < 1 || n > it->orders)
            continue;
        ev->kind = slot == 0 ? GEN_PLACED
                   : slot == 1 ? GEN_PAYMENT
                   : slot == 2 ? GEN_PAID
                               : GEN_SHIPPED;
        ev->order = n;
        ev->version = slot == 0 ? 1 : slot == 1 ? 2 : slot == 2 ? 3 : 4;
        ev->position = ++it->position;
        /* place, pay, ship of one step are three commands, 1 ms apart */
        ev->time_ms = it->base_ms + (int64_t)s * it->step_ms +
                      (slot == 0 ? 0 : slot <= 2 ? 1 : 2);
        ev->first_of_command = slot != 2;
        return 1;
    }
}

/* RFC 3339 UTC with milliseconds, as the server formats times. */
static inline void gen_format_time(int64_t ms, char out[32])
{
    time_t secs = (time_t)(ms / 1000);
    struct tm tm;
    char tmp[96];
    gmtime_r(&secs, &tm);
    snprintf(tmp, sizeof tmp, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ",
             tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
             tm.tm_min, tm.tm_sec, (int)(ms % 1000));
    snprintf(out, 32, "%.31s", tmp);
}

static inline void gen_payment_id(const gen_order *o, char *out, size_t cap)
{
    snprintf(out, cap, "pay-%s", o->order_id);
}

static inline const char *gen_carrier(const gen_order *o)
{
    return GEN_CARRIERS[gen_mix((uint64_t)o->n ^ 0x5a5a) % 4];
}

static inline void gen_tracking(const gen_order *o, char *out, size_t cap)
{
    snprintf(out, cap, "JD%012" PRIu64,
             gen_mix((uint64_t)o->n ^ 0xa5a5) % 1000000000000u);
}

#endif
