/*
 * bench_raw_upsert — the reference for the projection catch-up benchmark:
 * how fast plain SQLite applies a projection's handler statements to a
 * read model on this machine, with none of cqrsd around it (no event
 * store reads, no JSON decoding, no per-event savepoints, no checkpoints).
 *
 * It reads the handlers of one or more declared projections (--sql FILE,
 * e.g. domains/orders/projections/order_summaries.sql; repeatable): the
 * DDL before the first "-- @on", and the statements under each
 * "-- @on Type" (queries are ignored). Parameters keep their meaning
 * (:data.order_id, :time, :day, :position, :version, :stream_id, :type),
 * but are bound by name with values already decoded. The events are the
 * history of bench/orders_gen.h that bench_fill_events writes (same
 * orders, same order of events), so both sides of the benchmark apply the
 * same rows. A data field the event does not have is bound as NULL, as the
 * server does.
 *
 * Into a fresh database in WAL mode with synchronous=NORMAL (read.db's
 * settings), through prepared statements, in batches of --batch events
 * (default 100, the projection engine's micro-batch), one transaction per
 * batch and projection (as the engine's projector takes turns). Only
 * BEGIN..COMMIT is timed; the values of the next batch are made outside
 * the clock. Stops after all events or --seconds (default 60).
 *
 * Usage: bench_raw_upsert --sql FILE [--sql FILE ...] [--orders N]
 *                         [--lag L] [--batch B] [--seconds S] [--dir DIR]
 * Prints events/s and one "BENCH kind=raw_upsert ..." line for run.sh
 * (cpu_s: the CPU time of the timed part, for a fair comparison on a
 * shared machine)
 * (--tag T names it kind=raw_upsert_T instead).
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

#include "orders_gen.h"

enum {
    P_NULL,
    P_ORDER_ID,
    P_CUSTOMER_ID,
    P_CURRENCY,
    P_TOTAL,
    P_ITEM_COUNT,
    P_PAID,
    P_AMOUNT,
    P_PAYMENT_ID,
    P_CARRIER,
    P_TRACKING,
    P_TIME,
    P_DAY,
    P_POSITION,
    P_VERSION,
    P_STREAM_ID,
    P_TYPE,
    P_COUNT
};

static const char *const PARAM_NAMES[P_COUNT] = {
    [P_NULL] = "",
    [P_ORDER_ID] = ":data_order_id",
    [P_CUSTOMER_ID] = ":data_customer_id",
    [P_CURRENCY] = ":data_currency",
    [P_TOTAL] = ":data_total_cents",
    [P_ITEM_COUNT] = ":data_item_count",
    [P_PAID] = ":data_paid_cents",
    [P_AMOUNT] = ":data_amount_cents",
    [P_PAYMENT_ID] = ":data_payment_id",
    [P_CARRIER] = ":data_carrier",
    [P_TRACKING] = ":data_tracking_number",
    [P_TIME] = ":time",
    [P_DAY] = ":day",
    [P_POSITION] = ":position",
    [P_VERSION] = ":version",
    [P_STREAM_ID] = ":stream_id",
    [P_TYPE] = ":type",
};

/* One event's values, decoded. */
typedef struct dec_event {
    int kind;
    int64_t position, version;
    char time[32], day[11];
    char stream_id[64], payment_id[80], tracking[32];
    const char *carrier;
    gen_order o;
} dec_event;

#define MAX_STMTS 16
typedef struct stmt {
    sqlite3_stmt *st;
    int nparams;
    int *codes;             /* P_* of each parameter, 1-based - 1 */
} stmt;

typedef struct proj {
    char name[128];
    stmt handlers[4][MAX_STMTS]; /* by GEN_* */
    int nstmts[4];
} proj;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* CPU seconds this thread has used: with the wall clock, how much of the
 * timed part was spent on the CPU (on a shared machine, the rest waited
 * for it, or for the disk) */
static double cpu_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int exec_sql(sqlite3 *db, const char *sql)
{
    char *err = NULL;
    if (sqlite3_exec(db, sql, NULL, NULL, &err) != SQLITE_OK) {
        fprintf(stderr, "bench_raw_upsert: %.80s: %s\n", sql,
                err ? err : sqlite3_errmsg(db));
        sqlite3_free(err);
        return -1;
    }
    return 0;
}

static char *read_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    char *text = NULL;
    long n;
    if (!f) {
        fprintf(stderr, "bench_raw_upsert: %s: %s\n", path, strerror(errno));
        return NULL;
    }
    if (fseek(f, 0, SEEK_END) == 0 && (n = ftell(f)) >= 0 &&
        fseek(f, 0, SEEK_SET) == 0 && (text = malloc((size_t)n + 1)) &&
        fread(text, 1, (size_t)n, f) == (size_t)n)
        text[n] = '\0';
    else {
        free(text);
        text = NULL;
        fprintf(stderr, "bench_raw_upsert: cannot read %s\n", path);
    }
    fclose(f);
    return text;
}

static int kind_of(const char *type)
{
    for (int k = 0; k < 4; k++)
        if (!strcmp(type, GEN_TYPES[k]))
            return k;
    return -1;
}

/* Prepare one statement of handler `kind` (-1: DDL, run at once). */
static int add_statement(sqlite3 *db, proj *p, int kind, char *sql)
{
    /* ":data.x" is not a SQLite parameter name: make it ":data_x". */
    for (char *s = sql; (s = strstr(s, ":data.")) != NULL; s += 6)
        s[5] = '_';
    if (kind == -1)
        return exec_sql(db, sql);
    if (kind == -2)
        return 0; /* a handler for an event this history does not have */
    if (p->nstmts[kind] == MAX_STMTS) {
        fprintf(stderr, "bench_raw_upsert: too many statements\n");
        return -1;
    }
    stmt *s = &p->handlers[kind][p->nstmts[kind]];
    if (sqlite3_prepare_v3(db, sql, -1, SQLITE_PREPARE_PERSISTENT, &s->st,
                           NULL) != SQLITE_OK) {
        fprintf(stderr, "bench_raw_upsert: %s: %s\n", sql, sqlite3_errmsg(db));
        return -1;
    }
    s->nparams = sqlite3_bind_parameter_count(s->st);
    s->codes = calloc((size_t)s->nparams + 1, sizeof *s->codes);
    if (!s->codes)
        return -1;
    for (int i = 0; i < s->nparams; i++) {
        const char *name = sqlite3_bind_parameter_name(s->st, i + 1);
        int c = P_NULL;
        for (int k = 1; name && k < P_COUNT; k++)
            if (!strcmp(name, PARAM_NAMES[k]))
                c = k;
        if (c == P_NULL)
            fprintf(stderr, "bench_raw_upsert: warning: %s bound as NULL\n",
                    name ? name : "?");
        s->codes[i] = c;
    }
    p->nstmts[kind]++;
    return 0;
}

/* Load a declared projection: DDL up to the first "-- @on", then handler
 * statements; stops at the first "-- @query". A statement ends at a ';'
 * outside '...' strings. */
static int load_projection(sqlite3 *db, proj *p, const char *path)
{
    char *text = read_file(path);
    if (!text)
        return -1;
    const char *base = strrchr(path, '/');
    snprintf(p->name, sizeof p->name, "%s", base ? base + 1 : path);
    char *dot = strrchr(p->name, '.');
    if (dot)
        *dot = '\0';
    size_t cap = strlen(text) + 1, len = 0;
    char *buf = malloc(cap);
    int kind = -1, rc = 0, quoted = 0;
    char *line = text;
    while (rc == 0 && line && *line) {
        char *next = strchr(line, '\n');
        if (next)
            *next++ = '\0';
        const char *t = line;
        while (*t == ' ' || *t == '\t')
            t++;
        if (!quoted && t[0] == '-' && t[1] == '-') {
            const char *d = t + 2;
            while (*d == ' ')
                d++;
            if (!strncmp(d, "@query", 6))
                break;
            if (!strncmp(d, "@on", 3)) {
                char type[130] = "";
                sscanf(d + 3, " %129s", type);
                kind = kind_of(type);
                if (kind < 0)
                    kind = -2;
            }
            line = next;
            continue;
        }
        for (const char *c = line; rc == 0 && *c; c++) {
            if (*c == '\'')
                quoted = !quoted;
            if (!quoted && c[0] == '-' && c[1] == '-')
                break; /* trailing comment */
            buf[len++] = *c;
            if (!quoted && *c == ';') {
                buf[len] = '\0';
                rc = add_statement(db, p, kind, buf);
                len = 0;
            }
        }
        if (len > 0)
            buf[len++] = '\n';
        line = next;
    }
    free(buf);
    free(text);
    return rc;
}

static void decode(dec_event *d, const gen_event *ev, const char *prefix)
{
    d->kind = ev->kind;
    d->position = ev->position;
    d->version = ev->version;
    gen_format_time(ev->time_ms, d->time);
    memcpy(d->day, d->time, 10);
    d->day[10] = '\0';
    gen_order_make(&d->o, prefix, ev->order);
    snprintf(d->stream_id, sizeof d->stream_id, "order-%s", d->o.order_id);
    gen_payment_id(&d->o, d->payment_id, sizeof d->payment_id);
    d->carrier = gen_carrier(&d->o);
    gen_tracking(&d->o, d->tracking, sizeof d->tracking);
}

static void bind_text(sqlite3_stmt *st, int i, const char *s)
{
    sqlite3_bind_text(st, i, s, -1, SQLITE_STATIC);
}

/* Bind parameter i (1-based) of st to its value for event d: the fields
 * each event type has, as domains/orders/orders.c emits them. */
static void bind_param(sqlite3_stmt *st, int i, int code, const dec_event *d)
{
    const gen_order *o = &d->o;
    int k = d->kind;
    switch (code) {
    case P_ORDER_ID:
        bind_text(st, i, o->order_id);
        return;
    case P_CUSTOMER_ID:
        if (k == GEN_PLACED)
            bind_text(st, i, o->customer_id);
        else
            sqlite3_bind_null(st, i);
        return;
    case P_CURRENCY:
        if (k == GEN_PLACED)
            bind_text(st, i, o->currency);
        else
            sqlite3_bind_null(st, i);
        return;
    case P_TOTAL:
        if (k == GEN_PLACED || k == GEN_PAID)
            sqlite3_bind_int64(st, i, o->total_cents);
        else
            sqlite3_bind_null(st, i);
        return;
    case P_ITEM_COUNT:
        if (k == GEN_PLACED)
            sqlite3_bind_int64(st, i, o->item_count);
        else
            sqlite3_bind_null(st, i);
        return;
    case P_PAID:
        if (k == GEN_PAYMENT || k == GEN_PAID)
            sqlite3_bind_int64(st, i, o->total_cents); /* paid in full */
        else
            sqlite3_bind_null(st, i);
        return;
    case P_AMOUNT:
        if (k == GEN_PAYMENT)
            sqlite3_bind_int64(st, i, o->total_cents);
        else
            sqlite3_bind_null(st, i);
        return;
    case P_PAYMENT_ID:
        if (k == GEN_PAYMENT)
            bind_text(st, i, d->payment_id);
        else
            sqlite3_bind_null(st, i);
        return;
    case P_CARRIER:
        if (k == GEN_SHIPPED)
            bind_text(st, i, d->carrier);
        else
            sqlite3_bind_null(st, i);
        return;
    case P_TRACKING:
        if (k == GEN_SHIPPED)
            bind_text(st, i, d->tracking);
        else
            sqlite3_bind_null(st, i);
        return;
    case P_TIME:
        bind_text(st, i, d->time);
        return;
    case P_DAY:
        bind_text(st, i, d->day);
        return;
    case P_POSITION:
        sqlite3_bind_int64(st, i, d->position);
        return;
    case P_VERSION:
        sqlite3_bind_int64(st, i, d->version);
        return;
    case P_STREAM_ID:
        bind_text(st, i, d->stream_id);
        return;
    case P_TYPE:
        bind_text(st, i, GEN_TYPES[k]);
        return;
    default:
        sqlite3_bind_null(st, i);
    }
}

static int apply(sqlite3 *db, proj *p, const dec_event *d)
{
    for (int s = 0; s < p->nstmts[d->kind]; s++) {
        stmt *h = &p->handlers[d->kind][s];
        for (int i = 0; i < h->nparams; i++)
            bind_param(h->st, i + 1, h->codes[i], d);
        int rc;
        while ((rc = sqlite3_step(h->st)) == SQLITE_ROW)
            ;
        sqlite3_reset(h->st);
        if (rc != SQLITE_DONE) {
            fprintf(stderr, "bench_raw_upsert: %s, %s at %" PRId64 ": %s\n",
                    p->name, GEN_TYPES[d->kind], d->position,
                    sqlite3_errmsg(db));
            return -1;
        }
    }
    return 0;
}

static void usage(void)
{
    fprintf(stderr,
            "usage: bench_raw_upsert --sql FILE [--sql FILE ...] [--orders N]"
            " [--lag L]\n"
            "                        [--batch B] [--seconds S] [--dir DIR]"
            " [--prefix P] [--tag T]\n");
}

int main(int argc, char **argv)
{
    const char *sql_files[8];
    int nsql = 0;
    const char *parent = getenv("TMPDIR"), *prefix = "fill", *tag = NULL;
    long orders = 250000, lag = 1000, batch = 100;
    double seconds = 60;
    char dir[4096] = "", path[4200] = "", side[4300];
    sqlite3 *db = NULL;
    proj *projs = NULL;
    dec_event *evs = NULL;
    int status = 1;

    for (int i = 1; i < argc; i += 2) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) {
            usage();
            return 2;
        }
        if (!strcmp(a, "--sql") && nsql < 8)
            sql_files[nsql++] = v;
        else if (!strcmp(a, "--orders"))
            orders = atol(v);
        else if (!strcmp(a, "--lag"))
            lag = atol(v);
        else if (!strcmp(a, "--batch"))
            batch = atol(v);
        else if (!strcmp(a, "--seconds"))
            seconds = atof(v);
        else if (!strcmp(a, "--dir"))
            parent = v;
        else if (!strcmp(a, "--prefix"))
            prefix = v;
        else if (!strcmp(a, "--tag"))
            tag = v;
        else {
            usage();
            return 2;
        }
    }
    if (nsql == 0 || orders <= 0 || lag < 0 || batch <= 0 || seconds <= 0) {
        usage();
        return 2;
    }
    if (!parent || !*parent)
        parent = "/tmp";
    snprintf(dir, sizeof dir, "%s/bench-raw-upsert-XXXXXX", parent);
    if (!mkdtemp(dir)) {
        fprintf(stderr, "bench_raw_upsert: mkdtemp %s: %s\n", dir,
                strerror(errno));
        dir[0] = '\0';
        goto done;
    }
    snprintf(path, sizeof path, "%s/read.db", dir);
    if (sqlite3_open(path, &db) != SQLITE_OK) {
        fprintf(stderr, "bench_raw_upsert: open %s: %s\n", path,
                sqlite3_errmsg(db));
        goto done;
    }
    if (exec_sql(db, "PRAGMA journal_mode=WAL") ||
        exec_sql(db, "PRAGMA synchronous=NORMAL"))
        goto done;
    projs = calloc((size_t)nsql, sizeof *projs);
    evs = calloc((size_t)batch, sizeof *evs);
    if (!projs || !evs)
        goto done;
    for (int i = 0; i < nsql; i++)
        if (load_projection(db, &projs[i], sql_files[i]))
            goto done;

    gen_iter it;
    gen_event ev;
    gen_iter_init(&it, orders, lag, gen_default_base_ms(orders, lag, 1000),
                  1000);
    int64_t applied = 0, commits = 0;
    double busy = 0, cpu = 0, wall0 = now_s();
    for (;;) {
        long n = 0;
        while (n < batch && gen_next(&it, &ev))
            decode(&evs[n++], &ev, prefix);
        if (n == 0)
            break;
        double t0 = now_s(), c0 = cpu_s();
        for (int p = 0; p < nsql; p++) {
            if (exec_sql(db, "BEGIN"))
                goto done;
            for (long k = 0; k < n; k++)
                if (apply(db, &projs[p], &evs[k]))
                    goto done;
            if (exec_sql(db, "COMMIT"))
                goto done;
            commits++;
        }
        busy += now_s() - t0;
        cpu += cpu_s() - c0;
        applied += n;
        if (busy >= seconds)
            break;
    }
    double wall = now_s() - wall0;
    char names[512] = "";
    for (int p = 0; p < nsql; p++)
        snprintf(names + strlen(names), sizeof names - strlen(names), "%s%s",
                 p ? "+" : "", projs[p].name);
    printf("raw SQLite %s upserts/updates (%s), WAL + synchronous=NORMAL, "
           "%ld events per transaction\n",
           sqlite3_libversion(), names, batch);
    printf("  %" PRId64 " events in %.2f s of SQL (%.2f s wall with making "
           "the values): %.0f events/s\n",
           applied, busy, wall, (double)applied / busy);
    printf("BENCH kind=raw_upsert%s%s events=%" PRId64 " seconds=%.3f "
           "events_per_sec=%.1f batch=%ld commits=%" PRId64
           " projections=%s cpu_s=%.3f\n",
           tag ? "_" : "", tag ? tag : "", applied, busy,
           (double)applied / busy, batch, commits, names, cpu);
    status = 0;
done:
    if (projs)
        for (int p = 0; p < nsql; p++)
            for (int k = 0; k < 4; k++)
                for (int s = 0; s < projs[p].nstmts[k]; s++) {
                    sqlite3_finalize(projs[p].handlers[k][s].st);
                    free(projs[p].handlers[k][s].codes);
                }
    free(projs);
    free(evs);
    sqlite3_close(db);
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
