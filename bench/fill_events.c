/*
 * bench_fill_events — write a large, realistic event store for the
 * projection catch-up benchmark without going through HTTP.
 *
 * Creates DIR/events.db through the event store itself (cq_store_open,
 * then cq_store_close: the schema is the store's own, whatever its
 * version) and fills it, straight into SQLite, with the order history of
 * bench/orders_gen.h: ORDERS orders x 4 events (OrderPlaced,
 * PaymentReceived + OrderPaid, OrderShipped), interleaved as a busy shop
 * records them. Every row is shaped as the server writes it: data as the
 * orders domain emits it (domains/orders/orders.c, jansson's compact
 * output in insertion order) at the schema version it emits them (the
 * newest: the first version the domain has no upcaster for, so OrderPlaced
 * is 2 and never upcast on reading), metadata as the command writer adds it
 * (event_id, command_id, time, correlation_id, causation_id; the events of
 * one command share its command id and time), recorded_at in ms, and one
 * streams row per order at its last version and position.
 *
 * Speed over safety: journal_mode=OFF and synchronous=OFF while filling,
 * in transactions of 50,000 events; at the end the file is switched to
 * WAL (what the server expects) and closed. The file must not exist.
 *
 * Usage: bench_fill_events --dir DIR [--orders N] [--lag L] [--prefix P]
 * Prints the duration and one "BENCH kind=fill ..." line for bench/run.sh
 * (last_order is the order whose OrderShipped is the last event).
 */
#include <inttypes.h>
#include <sqlite3.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "domain/domain.h"
#include "orders/orders.h"
#include "orders_gen.h"
#include "store/store.h"

/* The rows the store's append writes (src/store/store_sqlite_open.c,
 * W_INSERT_EVENT and W_UPSERT_STREAM), written here without its checks
 * and at a bench's pace. */
static const char INSERT_EVENT[] =
    "INSERT INTO events (position, stream_id, version, type, schema_version,"
    " data, metadata, recorded_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)";
static const char UPSERT_STREAM[] =
    "INSERT INTO streams (stream_id, version, position)"
    " VALUES (?1, ?2, ?3) ON CONFLICT (stream_id) DO UPDATE"
    " SET version = excluded.version, position = excluded.position";

#define TX_EVENTS 50000

static uint64_t rng_state = 0x9e3779b97f4a7c15u;

static uint64_t rng_next(void)
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545f4914f6cdd1du;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* A UUIDv7 string from unix_ms and the PRNG (as src/base/uuid.c lays
 * them out: 48-bit ms, version 7, variant 10). */
static void uuid7(char out[37], int64_t unix_ms)
{
    uint8_t b[16];
    uint64_t r1 = rng_next(), r2 = rng_next();
    for (int i = 0; i < 6; i++)
        b[i] = (uint8_t)((uint64_t)unix_ms >> (40 - 8 * i));
    for (int i = 6; i < 16; i++)
        b[i] = (uint8_t)((i < 11 ? r1 : r2) >> (8 * (i % 8)));
    b[6] = (uint8_t)(0x70 | (b[6] & 0x0f));
    b[8] = (uint8_t)(0x80 | (b[8] & 0x3f));
    snprintf(out, 37,
             "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-"
             "%02x%02x%02x%02x%02x%02x",
             b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10],
             b[11], b[12], b[13], b[14], b[15]);
}

/* The event's data, as domains/orders/orders.c emits it. */
static int event_data(char *out, size_t cap, const gen_event *ev,
                      const gen_order *o)
{
    char pid[80], trk[32];
    size_t len;
    int n;

    switch (ev->kind) {
    case GEN_PLACED:
        n = snprintf(out, cap,
                     "{\"order_id\":\"%s\",\"customer_id\":\"%s\","
                     "\"currency\":\"%s\",\"items\":[",
                     o->order_id, o->customer_id, o->currency);
        if (n < 0 || (size_t)n >= cap)
            return -1;
        len = (size_t)n;
        for (int i = 0; i < o->nitems; i++) {
            n = snprintf(out + len, cap - len,
                         "%s{\"sku\":\"%s\",\"quantity\":%" PRId64
                         ",\"unit_price_cents\":%" PRId64 "}",
                         i ? "," : "", o->sku[i], o->qty[i], o->price[i]);
            if (n < 0 || (size_t)n >= cap - len)
                return -1;
            len += (size_t)n;
        }
        n = snprintf(out + len, cap - len,
                     "],\"total_cents\":%" PRId64 ",\"item_count\":%" PRId64
                     "}",
                     o->total_cents, o->item_count);
        if (n < 0 || (size_t)n >= cap - len)
            return -1;
        return (int)(len + (size_t)n);
    case GEN_PAYMENT:
        gen_payment_id(o, pid, sizeof pid);
        n = snprintf(out, cap,
                     "{\"order_id\":\"%s\",\"payment_id\":\"%s\","
                     "\"amount_cents\":%" PRId64 ",\"paid_cents\":%" PRId64
                     "}",
                     o->order_id, pid, o->total_cents, o->total_cents);
        break;
    case GEN_PAID:
        n = snprintf(out, cap,
                     "{\"order_id\":\"%s\",\"paid_cents\":%" PRId64
                     ",\"total_cents\":%" PRId64 "}",
                     o->order_id, o->total_cents, o->total_cents);
        break;
    default:
        gen_tracking(o, trk, sizeof trk);
        n = snprintf(out, cap,
                     "{\"order_id\":\"%s\",\"carrier\":\"%s\","
                     "\"tracking_number\":\"%s\"}",
                     o->order_id, gen_carrier(o), trk);
        break;
    }
    return (n < 0 || (size_t)n >= cap) ? -1 : n;
}

static int exec_sql(sqlite3 *db, const char *sql)
{
    char *err = NULL;
    if (sqlite3_exec(db, sql, NULL, NULL, &err) != SQLITE_OK) {
        fprintf(stderr, "bench_fill_events: %.60s...: %s\n", sql,
                err ? err : sqlite3_errmsg(db));
        sqlite3_free(err);
        return -1;
    }
    return 0;
}

static void usage(void)
{
    fprintf(stderr, "usage: bench_fill_events --dir DIR [--orders N] "
                    "[--lag L] [--prefix P]\n");
}

int main(int argc, char **argv)
{
    const char *dir = NULL, *prefix = "fill";
    long orders = 250000, lag = 1000;
    char path[4200];
    sqlite3 *db = NULL;
    sqlite3_stmt *ins = NULL, *up = NULL;
    struct stat sb;
    int status = 1;

    for (int i = 1; i < argc; i += 2) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) {
            usage();
            return 2;
        }
        if (!strcmp(a, "--dir"))
            dir = v;
        else if (!strcmp(a, "--orders"))
            orders = atol(v);
        else if (!strcmp(a, "--lag"))
            lag = atol(v);
        else if (!strcmp(a, "--prefix"))
            prefix = v;
        else {
            usage();
            return 2;
        }
    }
    if (!dir || orders <= 0 || lag < 0 || strlen(prefix) > 20) {
        usage();
        return 2;
    }
    snprintf(path, sizeof path, "%s/events.db", dir);
    if (stat(path, &sb) == 0) {
        fprintf(stderr, "bench_fill_events: %s exists; give an empty dir\n",
                path);
        return 1;
    }

    double t0 = now_s();
    /* The store creates the directory, the file and its schema. */
    cq_store_config cfg = {.dir = dir, .sync_full = 0, .read_connections = 1};
    cq_store *store = NULL;
    char err[512];
    if (cq_store_open(&cfg, &store, err, sizeof err) != CQ_OK) {
        fprintf(stderr, "bench_fill_events: %s\n", err);
        return 1;
    }
    cq_store_close(store);
    if (sqlite3_open(path, &db) != SQLITE_OK) {
        fprintf(stderr, "bench_fill_events: open %s: %s\n", path,
                sqlite3_errmsg(db));
        goto done;
    }
    if (exec_sql(db, "PRAGMA journal_mode=OFF") ||
        exec_sql(db, "PRAGMA synchronous=OFF") ||
        exec_sql(db, "PRAGMA cache_size=-131072"))
        goto done;
    if (sqlite3_prepare_v2(db, INSERT_EVENT, -1, &ins, NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(db, UPSERT_STREAM, -1, &up, NULL) != SQLITE_OK) {
        fprintf(stderr, "bench_fill_events: prepare: %s\n",
                sqlite3_errmsg(db));
        goto done;
    }

    /* each type at the version the orders domain writes: the newest */
    int schema[sizeof GEN_TYPES / sizeof GEN_TYPES[0]];
    for (size_t k = 0; k < sizeof schema / sizeof schema[0]; k++) {
        schema[k] = 1;
        while (cq_domain_upcaster(orders_domain(), GEN_TYPES[k], schema[k]))
            schema[k]++;
    }

    rng_state ^= (uint64_t)time(NULL);
    const int64_t step_ms = 1000;
    gen_iter it;
    gen_iter_init(&it, orders, lag, gen_default_base_ms(orders, lag, step_ms),
                  step_ms);
    gen_event ev;
    gen_order o;
    char stream_id[80], data[1024], meta[512], when[32];
    char command_id[37] = "", event_id[37];
    int64_t n = 0, data_bytes = 0, meta_bytes = 0;
    o.n = 0;
    if (exec_sql(db, "BEGIN"))
        goto done;
    while (gen_next(&it, &ev)) {
        if (o.n != ev.order)
            gen_order_make(&o, prefix, ev.order);
        if (ev.first_of_command)
            uuid7(command_id, ev.time_ms);
        uuid7(event_id, ev.time_ms);
        gen_format_time(ev.time_ms, when);
        snprintf(stream_id, sizeof stream_id, "order-%s", o.order_id);
        int dn = event_data(data, sizeof data, &ev, &o);
        int mn = snprintf(meta, sizeof meta,
                          "{\"event_id\":\"%s\",\"command_id\":\"%s\","
                          "\"time\":\"%s\",\"correlation_id\":\"%s\","
                          "\"causation_id\":\"%s\"}",
                          event_id, command_id, when, command_id, command_id);
        if (dn < 0 || mn < 0 || (size_t)mn >= sizeof meta) {
            fprintf(stderr, "bench_fill_events: payload too long\n");
            goto done;
        }
        data_bytes += dn;
        meta_bytes += mn;
        sqlite3_bind_int64(ins, 1, ev.position);
        sqlite3_bind_text(ins, 2, stream_id, -1, SQLITE_STATIC);
        sqlite3_bind_int64(ins, 3, ev.version);
        sqlite3_bind_text(ins, 4, GEN_TYPES[ev.kind], -1, SQLITE_STATIC);
        sqlite3_bind_int64(ins, 5, schema[ev.kind]);
        sqlite3_bind_text(ins, 6, data, dn, SQLITE_STATIC);
        sqlite3_bind_text(ins, 7, meta, mn, SQLITE_STATIC);
        sqlite3_bind_int64(ins, 8, ev.time_ms);
        if (sqlite3_step(ins) != SQLITE_DONE) {
            fprintf(stderr, "bench_fill_events: insert: %s\n",
                    sqlite3_errmsg(db));
            goto done;
        }
        sqlite3_reset(ins);
        sqlite3_bind_text(up, 1, stream_id, -1, SQLITE_STATIC);
        sqlite3_bind_int64(up, 2, ev.version);
        sqlite3_bind_int64(up, 3, ev.position);
        if (sqlite3_step(up) != SQLITE_DONE) {
            fprintf(stderr, "bench_fill_events: streams: %s\n",
                    sqlite3_errmsg(db));
            goto done;
        }
        sqlite3_reset(up);
        if (++n % TX_EVENTS == 0 &&
            (exec_sql(db, "COMMIT") || exec_sql(db, "BEGIN")))
            goto done;
    }
    if (exec_sql(db, "COMMIT"))
        goto done;
    sqlite3_finalize(ins);
    sqlite3_finalize(up);
    ins = up = NULL;
    /* The state the server leaves a file in: WAL mode. */
    if (exec_sql(db, "PRAGMA journal_mode=WAL"))
        goto done;
    if (sqlite3_close(db) != SQLITE_OK) {
        fprintf(stderr, "bench_fill_events: close: %s\n", sqlite3_errmsg(db));
        db = NULL;
        goto done;
    }
    db = NULL;
    double secs = now_s() - t0;
    long long bytes = stat(path, &sb) == 0 ? (long long)sb.st_size : -1;
    printf("filled %s: %" PRId64 " events of %ld orders (lag %ld) in %.2f s"
           " (%.0f events/s), %.0f MB\n",
           path, n, orders, lag, secs, (double)n / secs,
           (double)bytes / 1e6);
    printf("  average data %.0f bytes, metadata %.0f bytes\n",
           (double)data_bytes / (double)n, (double)meta_bytes / (double)n);
    printf("BENCH kind=fill events=%" PRId64 " orders=%ld seconds=%.3f "
           "last_position=%" PRId64 " last_order=%s-%ld first_order=%s-1 "
           "bytes=%lld\n",
           n, orders, secs, it.position, prefix, orders, prefix, bytes);
    status = 0;
done:
    sqlite3_finalize(ins);
    sqlite3_finalize(up);
    if (db)
        sqlite3_close(db);
    return status;
}
