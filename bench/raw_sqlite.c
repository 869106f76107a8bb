/*
 * bench_raw_sqlite — the reference for the PlaceOrder benchmark: how many
 * event rows per second plain SQLite can make durable on this machine, with
 * none of cqrsd around it (no HTTP, no JSON parsing, no decider, no command
 * log).
 *
 * Each "row" is what the server writes for one PlaceOrder: one events row
 * (a realistic OrderPlaced payload of ~230 bytes and metadata of ~250 bytes,
 * shaped as the orders domain and the command writer make them)
 * and one upsert into streams. Rows go into a fresh database file in WAL
 * mode with synchronous=FULL — the durability cqrsd promises — in
 * transactions of 64 rows (BEGIN IMMEDIATE ... COMMIT, so one fsync of the
 * WAL per 64 rows, as a group commit would do), through prepared statements.
 * It stops after --seconds (default 5) or --rows (default 200000), whichever
 * comes first, and prints rows/s, the cost of one commit, and one
 * "BENCH kind=raw_sqlite ..." line that bench/run.sh parses.
 *
 * Usage: bench_raw_sqlite [--seconds S] [--rows N] [--batch B] [--dir DIR]
 * The database lives in a new directory under DIR (default $TMPDIR or /tmp),
 * removed at the end. Single-threaded; no global mutable state beyond the
 * PRNG.
 */
#include <errno.h>
#include <inttypes.h>
#include <sqlite3.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static const char SCHEMA[] =
    "CREATE TABLE events ("
    " position INTEGER PRIMARY KEY,"
    " stream_id TEXT NOT NULL,"
    " version INTEGER NOT NULL,"
    " type TEXT NOT NULL,"
    " schema_version INTEGER NOT NULL,"
    " data TEXT NOT NULL,"
    " metadata TEXT NOT NULL,"
    " recorded_at INTEGER NOT NULL,"
    " UNIQUE(stream_id, version));"
    "CREATE TABLE streams ("
    " stream_id TEXT PRIMARY KEY,"
    " version INTEGER NOT NULL,"
    " position INTEGER NOT NULL) WITHOUT ROWID;";

static const char INSERT_EVENT[] =
    "INSERT INTO events(stream_id, version, type, schema_version, data,"
    " metadata, recorded_at) VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7)";

static const char UPSERT_STREAM[] =
    "INSERT INTO streams(stream_id, version, position) VALUES(?1, ?2, ?3)"
    " ON CONFLICT(stream_id) DO UPDATE SET version = excluded.version,"
    " position = excluded.position";

/* Same SKUs and value ranges as bench/placeorder.lua. */
static const char *const SKUS[] = {
    "SKU-MUG-RED-350ML", "SKU-TSHIRT-BLUE-L", "SKU-NOTEBOOK-A5-DOTTED",
    "SKU-CABLE-USB-C-2M", "SKU-COFFEE-BEANS-1KG"};
static const char *const CURRENCIES[] = {"EUR", "USD", "GBP"};

static uint64_t rng_state = 0x9e3779b97f4a7c15u;

/* xorshift64*: fast, deterministic, good enough for payload variety. */
static uint64_t rng_next(void)
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545f4914f6cdd1du;
}

static uint64_t rng_range(uint64_t lo, uint64_t hi)
{
    return lo + rng_next() % (hi - lo + 1);
}

static int64_t now_ns(int clock)
{
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* A UUIDv7 string (36 chars + NUL) from the wall clock and the PRNG. */
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

/* The OrderPlaced data for order n, shaped as the orders domain writes it. */
static int order_placed_json(char *out, size_t cap, const char *order_id)
{
    int items = (int)rng_range(1, 3);
    int64_t total = 0;
    size_t len = 0;
    int n = snprintf(out, cap,
                     "{\"order_id\":\"%s\",\"customer_id\":\"c-%05" PRIu64
                     "\",\"currency\":\"%s\",\"items\":[",
                     order_id, rng_range(1, 5000),
                     CURRENCIES[rng_range(0, 2)]);
    if (n < 0 || (size_t)n >= cap)
        return -1;
    len = (size_t)n;
    for (int i = 0; i < items; i++) {
        int64_t qty = (int64_t)rng_range(1, 5);
        int64_t price = (int64_t)rng_range(199, 99999);
        total += qty * price;
        n = snprintf(out + len, cap - len,
                     "%s{\"sku\":\"%s\",\"quantity\":%" PRId64
                     ",\"unit_price_cents\":%" PRId64 "}",
                     i ? "," : "", SKUS[rng_range(0, 4)], qty, price);
        if (n < 0 || (size_t)n >= cap - len)
            return -1;
        len += (size_t)n;
    }
    n = snprintf(out + len, cap - len, "],\"total_cents\":%" PRId64 "}",
                 total);
    if (n < 0 || (size_t)n >= cap - len)
        return -1;
    return (int)(len + (size_t)n);
}

/* Metadata as the command writer builds it (src/command/writer_append.c): event
 * id, command id, time (RFC 3339, UTC, ms), correlation and causation ids
 * (a first command is its own cause). */
static int metadata_json(char *out, size_t cap, int64_t unix_us)
{
    char event_id[37], command_id[37], time_text[80];
    int64_t ms = unix_us / 1000;
    time_t secs = (time_t)(ms / 1000);
    struct tm tm;
    uuid7(event_id, ms);
    uuid7(command_id, ms);
    gmtime_r(&secs, &tm);
    snprintf(time_text, sizeof time_text, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ",
             tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
             tm.tm_min, tm.tm_sec, (int)(ms % 1000));
    int n = snprintf(out, cap,
                     "{\"event_id\":\"%s\",\"command_id\":\"%s\","
                     "\"time\":\"%s\",\"correlation_id\":\"%s\","
                     "\"causation_id\":\"%s\"}",
                     event_id, command_id, time_text, command_id, command_id);
    return (n < 0 || (size_t)n >= cap) ? -1 : n;
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static int exec_sql(sqlite3 *db, const char *sql)
{
    char *err = NULL;
    if (sqlite3_exec(db, sql, NULL, NULL, &err) != SQLITE_OK) {
        fprintf(stderr, "bench_raw_sqlite: %s: %s\n", sql,
                err ? err : sqlite3_errmsg(db));
        sqlite3_free(err);
        return -1;
    }
    return 0;
}

/* The first column of the first row of a one-row query, as text. */
static int query_text(sqlite3 *db, const char *sql, char *out, size_t cap)
{
    sqlite3_stmt *st = NULL;
    int rc = -1;
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK &&
        sqlite3_step(st) == SQLITE_ROW) {
        const unsigned char *t = sqlite3_column_text(st, 0);
        snprintf(out, cap, "%s", t ? (const char *)t : "");
        rc = 0;
    }
    sqlite3_finalize(st);
    return rc;
}

static void usage(void)
{
    fprintf(stderr, "usage: bench_raw_sqlite [--seconds S] [--rows N] "
                    "[--batch B] [--dir DIR]\n");
}

int main(int argc, char **argv)
{
    double seconds = 5.0;
    long max_rows = 200000, batch = 64;
    const char *parent = getenv("TMPDIR");
    char dir[4096] = "", path[4200] = "", side[4300];
    sqlite3 *db = NULL;
    sqlite3_stmt *ins = NULL, *up = NULL;
    int64_t *commit_ns = NULL;
    long rows = 0, batches = 0, cap_batches = 0;
    int64_t data_bytes = 0, meta_bytes = 0;
    int status = 1;

    for (int i = 1; i < argc; i += 2) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) {
            usage();
            return 2;
        }
        if (!strcmp(a, "--seconds"))
            seconds = atof(v);
        else if (!strcmp(a, "--rows"))
            max_rows = atol(v);
        else if (!strcmp(a, "--batch"))
            batch = atol(v);
        else if (!strcmp(a, "--dir"))
            parent = v;
        else {
            usage();
            return 2;
        }
    }
    if (seconds <= 0 || max_rows <= 0 || batch <= 0) {
        usage();
        return 2;
    }
    if (!parent || !*parent)
        parent = "/tmp";

    snprintf(dir, sizeof dir, "%s/bench-raw-sqlite-XXXXXX", parent);
    if (!mkdtemp(dir)) {
        fprintf(stderr, "bench_raw_sqlite: mkdtemp %s: %s\n", dir,
                strerror(errno));
        dir[0] = '\0';
        goto fail;
    }
    snprintf(path, sizeof path, "%s/events.db", dir);

    if (sqlite3_open(path, &db) != SQLITE_OK) {
        fprintf(stderr, "bench_raw_sqlite: open %s: %s\n", path,
                sqlite3_errmsg(db));
        goto fail;
    }
    char journal[32] = "", sync[32] = "";
    if (exec_sql(db, "PRAGMA journal_mode=WAL") ||
        exec_sql(db, "PRAGMA synchronous=FULL") || exec_sql(db, SCHEMA) ||
        query_text(db, "PRAGMA journal_mode", journal, sizeof journal) ||
        query_text(db, "PRAGMA synchronous", sync, sizeof sync))
        goto fail;
    if (strcmp(journal, "wal") != 0 || strcmp(sync, "2") != 0) {
        fprintf(stderr,
                "bench_raw_sqlite: wanted WAL + synchronous=FULL, got "
                "journal_mode=%s synchronous=%s\n",
                journal, sync);
        goto fail;
    }
    if (sqlite3_prepare_v2(db, INSERT_EVENT, -1, &ins, NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(db, UPSERT_STREAM, -1, &up, NULL) != SQLITE_OK) {
        fprintf(stderr, "bench_raw_sqlite: prepare: %s\n", sqlite3_errmsg(db));
        goto fail;
    }

    rng_state ^= (uint64_t)now_ns(CLOCK_REALTIME);
    const int64_t start = now_ns(CLOCK_MONOTONIC);
    const int64_t limit = (int64_t)(seconds * 1e9);
    int64_t elapsed = 0;
    while (rows < max_rows && elapsed < limit) {
        if (batches == cap_batches) {
            long ncap = cap_batches ? cap_batches * 2 : 4096;
            int64_t *p = realloc(commit_ns, (size_t)ncap * sizeof *p);
            if (!p) {
                fprintf(stderr, "bench_raw_sqlite: out of memory\n");
                goto fail;
            }
            commit_ns = p;
            cap_batches = ncap;
        }
        if (exec_sql(db, "BEGIN IMMEDIATE"))
            goto fail;
        for (long j = 0; j < batch && rows < max_rows; j++, rows++) {
            char order_id[48], stream_id[64], data[1024], meta[512];
            int64_t unix_us = now_ns(CLOCK_REALTIME) / 1000;
            snprintf(order_id, sizeof order_id, "o-raw-%ld", rows + 1);
            snprintf(stream_id, sizeof stream_id, "order-%s", order_id);
            int dn = order_placed_json(data, sizeof data, order_id);
            int mn = metadata_json(meta, sizeof meta, unix_us);
            if (dn < 0 || mn < 0) {
                fprintf(stderr, "bench_raw_sqlite: payload too long\n");
                goto fail;
            }
            data_bytes += dn;
            meta_bytes += mn;

            sqlite3_bind_text(ins, 1, stream_id, -1, SQLITE_STATIC);
            sqlite3_bind_int64(ins, 2, 1);
            sqlite3_bind_text(ins, 3, "OrderPlaced", -1, SQLITE_STATIC);
            sqlite3_bind_int64(ins, 4, 1);
            sqlite3_bind_text(ins, 5, data, dn, SQLITE_STATIC);
            sqlite3_bind_text(ins, 6, meta, mn, SQLITE_STATIC);
            sqlite3_bind_int64(ins, 7, unix_us / 1000); /* unix ms */
            if (sqlite3_step(ins) != SQLITE_DONE) {
                fprintf(stderr, "bench_raw_sqlite: insert: %s\n",
                        sqlite3_errmsg(db));
                goto fail;
            }
            sqlite3_reset(ins);

            sqlite3_bind_text(up, 1, stream_id, -1, SQLITE_STATIC);
            sqlite3_bind_int64(up, 2, 1);
            sqlite3_bind_int64(up, 3, sqlite3_last_insert_rowid(db));
            if (sqlite3_step(up) != SQLITE_DONE) {
                fprintf(stderr, "bench_raw_sqlite: upsert: %s\n",
                        sqlite3_errmsg(db));
                goto fail;
            }
            sqlite3_reset(up);
        }
        int64_t c0 = now_ns(CLOCK_MONOTONIC);
        if (exec_sql(db, "COMMIT"))
            goto fail;
        int64_t c1 = now_ns(CLOCK_MONOTONIC);
        commit_ns[batches++] = c1 - c0;
        elapsed = c1 - start;
    }

    double secs = (double)elapsed / 1e9;
    qsort(commit_ns, (size_t)batches, sizeof *commit_ns, cmp_i64);
    int64_t p50 = commit_ns[batches / 2];
    int64_t p99 = commit_ns[(batches * 99) / 100];
    printf("raw SQLite %s, WAL + synchronous=FULL, %ld rows per transaction\n",
           sqlite3_libversion(), batch);
    printf("  %ld rows (events insert + streams upsert each) in %.2f s: "
           "%.0f rows/s\n",
           rows, secs, (double)rows / secs);
    printf("  %ld commits, commit (fsync) time p50 %.2f ms, p99 %.2f ms\n",
           batches, (double)p50 / 1e6, (double)p99 / 1e6);
    printf("  average data %.0f bytes, metadata %.0f bytes\n",
           (double)data_bytes / (double)rows, (double)meta_bytes / (double)rows);
    printf("BENCH kind=raw_sqlite rows=%ld seconds=%.3f rows_per_sec=%.1f "
           "batch=%ld commits=%ld commit_p50_us=%" PRId64
           " commit_p99_us=%" PRId64 " data_bytes=%.0f metadata_bytes=%.0f\n",
           rows, secs, (double)rows / secs, batch, batches, p50 / 1000,
           p99 / 1000, (double)data_bytes / (double)rows,
           (double)meta_bytes / (double)rows);
    status = 0;

fail:
    sqlite3_finalize(ins);
    sqlite3_finalize(up);
    sqlite3_close(db);
    free(commit_ns);
    if (dir[0]) {
        static const char *const suffixes[] = {"", "-wal", "-shm", "-journal"};
        for (size_t i = 0; i < sizeof suffixes / sizeof *suffixes; i++) {
            snprintf(side, sizeof side, "%s%s", path, suffixes[i]);
            unlink(side);
        }
        rmdir(dir);
    }
    return status;
}
