/*
 * bench_window — the consistency window of the asynchronous read model
 * order_summaries: how long after a PlaceOrder is acknowledged a client
 * can read the new order back, fresh.
 *
 * --workers K threads, each with one keep-alive connection to the server,
 * run a closed loop: POST /commands/PlaceOrder (a new order, 1-3 items) ->
 * t0 = the 202 fully received; at once GET
 * /queries/order_summary?order_id=<it>&min_position=<the 202's position>
 * on the same connection -> t1 = that answer fully received; window =
 * t1 - t0 (the server holds the query until the projection has applied
 * the position, up to its default wait_ms of 500). Every query answer
 * must be 200 with "stale":false and the order's id; the others are
 * counted and the first few printed. Commands that are not 202 are
 * counted too (no query follows them).
 *
 * Phases, all workers together (a barrier between phases):
 *   1. warm-up: --warmup commands + queries in all, not measured; the first
 *      query waits up to 30 s, so a projection still catching up from
 *      earlier load does not count against the window;
 *   2. reference floor: --rtt GET /healthz round trips in all, same
 *      workers, same kind of connection (a query cannot answer faster);
 *   3. window: --commands commands in all, or --seconds, whichever first.
 *
 * With --query-port Q the queries go to another node (127.0.0.1:Q, a
 * connection of its own per worker): the window is then a 202 on one node
 * until another node returns the order fresh (bench/bus.sh). With --rate R
 * the workers together send at most R commands/s in phase 3 (each paces
 * itself to R/workers), for a window at a stated command rate. With
 * --samples FILE every measured window is written to FILE, one a line in
 * microseconds, sorted (for a CDF or histogram: bench/report.sh).
 *
 * Usage: bench_window --port P [--host 127.0.0.1] [--workers 8]
 *          [--commands 5000] [--seconds 20] [--warmup 200] [--rtt 5000]
 *          [--prefix P] [--query-port Q] [--rate R] [--samples FILE]
 * Prints the percentiles and two lines for bench/run.sh:
 *   BENCH kind=window ...   BENCH kind=rtt ...
 * Exit status 0 when it ran (whatever the figures), 1 when it could not.
 */
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "minihttp.h"

#define TIMEOUT_MS 10000
#define SHOW_FAILURES 5

static const char *const SKUS[] = {
    "SKU-MUG-RED-350ML", "SKU-TSHIRT-BLUE-L", "SKU-NOTEBOOK-A5-DOTTED",
    "SKU-CABLE-USB-C-2M", "SKU-COFFEE-BEANS-1KG"};
static const char *const CURRENCIES[] = {"EUR", "USD", "GBP"};

typedef struct opts {
    const char *host;
    int port, workers, query_port;
    long commands, warmup, rtt;
    double seconds, rate;
    char prefix[64];
} opts;

typedef struct worker {
    const opts *o;
    int id;
    pthread_t th;
    mh_conn *c;
    mh_conn *qc; /* queries: c, or a connection to --query-port */
    uint64_t rng;
    long counter;
    /* results */
    int64_t *window_ns, *cmd_ns, *rtt_ns;
    long nwindow, ncmd, nrtt;
    long cmd_fail, query_fail, io_fail;
    double window_secs;
} worker;

static pthread_barrier_t barrier;
static pthread_mutex_t print_mu = PTHREAD_MUTEX_INITIALIZER;
static atomic_long shown;
static atomic_long window_left; /* commands still to run in phase 3 */
static int64_t window_deadline_ns; /* set between phases 2 and 3 */

static uint64_t rng_next(uint64_t *s)
{
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 0x2545f4914f6cdd1du;
}

static void show(const char *what, const char *id, int status,
                 const char *body)
{
    if (atomic_fetch_add(&shown, 1) >= SHOW_FAILURES)
        return;
    pthread_mutex_lock(&print_mu);
    printf("!!! %s for %s: status %d: %.300s\n", what, id, status,
           body ? body : "(no answer)");
    fflush(stdout);
    pthread_mutex_unlock(&print_mu);
}

/* One PlaceOrder + query. measure: record into the worker's arrays.
 * query_wait_ms: -1 for the server's default. Returns 0, or -1 when the
 * connection failed. */
static int one_order(worker *w, int measure, int query_wait_ms)
{
    char id[96], body[1024], req[2048], stream_q[512];
    mh_resp r;
    uint64_t *s = &w->rng;
    int n = (int)(1 + rng_next(s) % 3), len;

    snprintf(id, sizeof id, "%s-w%d-%ld", w->o->prefix, w->id, ++w->counter);
    len = snprintf(body, sizeof body,
                   "{\"order_id\":\"%s\",\"customer_id\":\"c-%05d\","
                   "\"currency\":\"%s\",\"items\":[",
                   id, (int)(1 + rng_next(s) % 5000),
                   CURRENCIES[rng_next(s) % 3]);
    for (int i = 0; i < n; i++)
        len += snprintf(body + len, sizeof body - (size_t)len,
                        "%s{\"sku\":\"%s\",\"quantity\":%d,"
                        "\"unit_price_cents\":%d}",
                        i ? "," : "", SKUS[rng_next(s) % 5],
                        (int)(1 + rng_next(s) % 5),
                        (int)(199 + rng_next(s) % 99801));
    len += snprintf(body + len, sizeof body - (size_t)len, "]}");
    int rl = snprintf(req, sizeof req,
                      "POST /commands/PlaceOrder HTTP/1.1\r\n"
                      "Host: %s:%d\r\n"
                      "Content-Type: application/json\r\n"
                      "Content-Length: %d\r\n\r\n%s",
                      w->o->host, w->o->port, len, body);

    int64_t c0 = mh_now_ns();
    if (mh_request(w->c, req, (size_t)rl, &r, TIMEOUT_MS) != 0) {
        w->io_fail++;
        show("PlaceOrder: connection failed", id, 0, NULL);
        return -1;
    }
    int64_t t0 = mh_now_ns();
    long long pos = mh_json_int(r.body, "position");
    if (r.status != 202 || pos < 1) {
        if (measure)
            w->cmd_fail++;
        show("PlaceOrder not 202", id, r.status, r.body);
        return 0;
    }
    if (query_wait_ms >= 0)
        snprintf(stream_q, sizeof stream_q, "&wait_ms=%d", query_wait_ms);
    else
        stream_q[0] = '\0';
    rl = snprintf(req, sizeof req,
                  "GET /queries/order_summary?order_id=%s&min_position=%lld%s"
                  " HTTP/1.1\r\nHost: %s:%d\r\n\r\n",
                  id, pos, stream_q, w->o->host,
                  w->o->query_port ? w->o->query_port : w->o->port);
    if (mh_request(w->qc, req, (size_t)rl, &r, TIMEOUT_MS + 31000) != 0) {
        w->io_fail++;
        show("query: connection failed", id, 0, NULL);
        return -1;
    }
    int64_t t1 = mh_now_ns();
    char want[128];
    snprintf(want, sizeof want, "\"order_id\":\"%s\"", id);
    int ok = r.status == 200 && strstr(r.body, "\"stale\":false") != NULL &&
             strstr(r.body, want) != NULL;
    if (!measure) {
        if (!ok)
            show("warm-up query not fresh", id, r.status, r.body);
        return 0;
    }
    w->cmd_ns[w->ncmd++] = t0 - c0;
    if (!ok) {
        w->query_fail++;
        show("query not 200/fresh/with the order", id, r.status, r.body);
        return 0;
    }
    w->window_ns[w->nwindow++] = t1 - t0;
    return 0;
}

static void *worker_main(void *arg)
{
    worker *w = arg;
    const opts *o = w->o;
    mh_resp r;
    char req[256];
    int rl;

    /* 1. warm-up; the first query may wait for a projection catching up */
    long warm = o->warmup / o->workers + (w->id < o->warmup % o->workers);
    for (long i = 0; i < warm; i++)
        one_order(w, 0, i == 0 ? 30000 : -1);
    pthread_barrier_wait(&barrier);

    /* 2. GET /healthz round trips */
    rl = snprintf(req, sizeof req,
                  "GET /healthz HTTP/1.1\r\nHost: %s:%d\r\n\r\n", o->host,
                  o->port);
    long nr = o->rtt / o->workers + (w->id < o->rtt % o->workers);
    for (long i = 0; i < nr; i++) {
        int64_t a = mh_now_ns();
        if (mh_request(w->c, req, (size_t)rl, &r, TIMEOUT_MS) != 0 ||
            r.status != 200) {
            w->io_fail++;
            show("GET /healthz failed", "-", r.status, r.body);
            continue;
        }
        w->rtt_ns[w->nrtt++] = mh_now_ns() - a;
    }
    if (pthread_barrier_wait(&barrier) == PTHREAD_BARRIER_SERIAL_THREAD)
        window_deadline_ns = mh_now_ns() + (int64_t)(o->seconds * 1e9);
    pthread_barrier_wait(&barrier);

    /* 3. the window */
    int64_t start = mh_now_ns();
    int64_t gap = o->rate > 0 ? (int64_t)(1e9 * o->workers / o->rate) : 0;
    int64_t next = start + (gap ? (gap * w->id) / o->workers : 0);
    while (mh_now_ns() < window_deadline_ns &&
           atomic_fetch_sub(&window_left, 1) > 0) {
        if (gap) {
            int64_t wait = next - mh_now_ns();
            if (wait > 0) {
                struct timespec ts = {wait / 1000000000, wait % 1000000000};
                nanosleep(&ts, NULL);
            }
            next += gap;
        }
        one_order(w, 1, -1);
    }
    w->window_secs = (double)(mh_now_ns() - start) / 1e9;
    return NULL;
}

/* Merge the workers' arrays at offset off (int64_t * within worker). */
static int64_t *merge(worker *ws, int k, size_t off_arr, size_t off_n,
                      long *total)
{
    long n = 0;
    for (int i = 0; i < k; i++)
        n += *(long *)((char *)&ws[i] + off_n);
    int64_t *all = malloc(((size_t)n + 1) * sizeof *all);
    if (!all)
        return NULL;
    n = 0;
    for (int i = 0; i < k; i++) {
        long m = *(long *)((char *)&ws[i] + off_n);
        int64_t *a = *(int64_t **)((char *)&ws[i] + off_arr);
        memcpy(all + n, a, (size_t)m * sizeof *a);
        n += m;
    }
    qsort(all, (size_t)n, sizeof *all, mh_cmp_i64);
    *total = n;
    return all;
}

/* The sorted windows win[0..n) to file path, one a line in microseconds.
 * 0 when written, 1 (said why) when not. */
static int write_samples(const char *path, const int64_t *win, long n)
{
    FILE *f = fopen(path, "w");
    if (!f) {
        fprintf(stderr, "bench_window: cannot write %s: %s\n", path,
                strerror(errno));
        return 1;
    }
    for (long i = 0; i < n; i++)
        fprintf(f, "%.1f\n", (double)win[i] / 1000.0);
    if (fclose(f) != 0) {
        fprintf(stderr, "bench_window: cannot write %s: %s\n", path,
                strerror(errno));
        return 1;
    }
    return 0;
}

static void usage(void)
{
    fprintf(stderr,
            "usage: bench_window --port P [--host 127.0.0.1] [--workers 8]\n"
            "         [--commands 5000] [--seconds 20] [--warmup 200]"
            " [--rtt 5000] [--prefix P]\n"
            "         [--query-port Q] [--rate COMMANDS_PER_S]"
            " [--samples FILE]\n");
}

int main(int argc, char **argv)
{
    opts o = {"127.0.0.1", 0, 8, 0, 5000, 200, 5000, 20.0, 0.0, ""};
    const char *samples = NULL;
    snprintf(o.prefix, sizeof o.prefix, "win%ld", (long)time(NULL));
    for (int i = 1; i < argc; i += 2) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) {
            usage();
            return 2;
        }
        if (!strcmp(a, "--host"))
            o.host = v;
        else if (!strcmp(a, "--port"))
            o.port = atoi(v);
        else if (!strcmp(a, "--workers"))
            o.workers = atoi(v);
        else if (!strcmp(a, "--commands"))
            o.commands = atol(v);
        else if (!strcmp(a, "--seconds"))
            o.seconds = atof(v);
        else if (!strcmp(a, "--warmup"))
            o.warmup = atol(v);
        else if (!strcmp(a, "--rtt"))
            o.rtt = atol(v);
        else if (!strcmp(a, "--prefix"))
            snprintf(o.prefix, sizeof o.prefix, "%s", v);
        else if (!strcmp(a, "--query-port"))
            o.query_port = atoi(v);
        else if (!strcmp(a, "--rate"))
            o.rate = atof(v);
        else if (!strcmp(a, "--samples"))
            samples = v;
        else {
            usage();
            return 2;
        }
    }
    if (o.port <= 0 || o.workers < 1 || o.workers > 256 || o.commands < 1 ||
        o.seconds <= 0 || o.warmup < 0 || o.rtt < 0 || o.query_port < 0 ||
        o.rate < 0) {
        usage();
        return 2;
    }

    worker *ws = calloc((size_t)o.workers, sizeof *ws);
    if (!ws)
        return 1;
    pthread_barrier_init(&barrier, NULL, (unsigned)o.workers);
    for (int i = 0; i < o.workers; i++) {
        worker *w = &ws[i];
        w->o = &o;
        w->id = i + 1;
        w->rng = 0x9e3779b97f4a7c15u ^ ((uint64_t)time(NULL) * 1000003u +
                                         (uint64_t)i * 7919u);
        w->c = malloc(sizeof *w->c);
        w->window_ns = malloc(((size_t)o.commands + 1) * sizeof(int64_t));
        w->cmd_ns = malloc(((size_t)o.commands + 1) * sizeof(int64_t));
        w->rtt_ns = malloc(((size_t)o.rtt / (size_t)o.workers + 2) *
                           sizeof(int64_t));
        if (!w->c || !w->window_ns || !w->cmd_ns || !w->rtt_ns)
            return 1;
        if (mh_connect(w->c, o.host, o.port) != 0) {
            fprintf(stderr, "bench_window: cannot connect to %s:%d: %s\n",
                    o.host, o.port, strerror(errno));
            return 1;
        }
        w->qc = w->c;
        if (o.query_port) {
            w->qc = malloc(sizeof *w->qc);
            if (!w->qc)
                return 1;
            if (mh_connect(w->qc, o.host, o.query_port) != 0) {
                fprintf(stderr, "bench_window: cannot connect to %s:%d: %s\n",
                        o.host, o.query_port, strerror(errno));
                return 1;
            }
        }
    }
    atomic_store(&window_left, o.commands);
    for (int i = 0; i < o.workers; i++)
        if (pthread_create(&ws[i].th, NULL, worker_main, &ws[i]) != 0) {
            fprintf(stderr, "bench_window: cannot start a thread\n");
            return 1;
        }
    for (int i = 0; i < o.workers; i++)
        pthread_join(ws[i].th, NULL);

    long nw, nc, nr, cmd_fail = 0, query_fail = 0, io_fail = 0;
    double secs = 0;
    int64_t *win = merge(ws, o.workers, offsetof(worker, window_ns),
                         offsetof(worker, nwindow), &nw);
    int64_t *cmd = merge(ws, o.workers, offsetof(worker, cmd_ns),
                         offsetof(worker, ncmd), &nc);
    int64_t *rtt = merge(ws, o.workers, offsetof(worker, rtt_ns),
                         offsetof(worker, nrtt), &nr);
    if (!win || !cmd || !rtt)
        return 1;
    for (int i = 0; i < o.workers; i++) {
        cmd_fail += ws[i].cmd_fail;
        query_fail += ws[i].query_fail;
        io_fail += ws[i].io_fail;
        if (ws[i].window_secs > secs)
            secs = ws[i].window_secs;
    }
#define US(x) ((double)(x) / 1000.0)
    printf("GET /healthz round trip, %d connections, %ld requests:\n"
           "  p50 %.0f us  p90 %.0f us  p99 %.0f us  max %.0f us\n",
           o.workers, nr, US(mh_pct(rtt, (size_t)nr, 50)),
           US(mh_pct(rtt, (size_t)nr, 90)), US(mh_pct(rtt, (size_t)nr, 99)),
           US(rtt[nr ? nr - 1 : 0]));
    printf("PlaceOrder -> order_summary fresh, %d connections, %ld commands"
           " in %.2f s (%.0f cmd/s):\n",
           o.workers, nc + cmd_fail, secs, (double)(nc + cmd_fail) / secs);
    printf("  window (202 received -> query answered)"
           "  p50 %.0f us  p90 %.0f us  p99 %.0f us  max %.0f us\n",
           US(mh_pct(win, (size_t)nw, 50)), US(mh_pct(win, (size_t)nw, 90)),
           US(mh_pct(win, (size_t)nw, 99)), US(win[nw ? nw - 1 : 0]));
    long over = 0;
    for (long i = 0; i < nw; i++)
        over += win[i] > 1000000;
    printf("  windows above 1 ms: %ld (%.2f %%)\n", over,
           nw ? 100.0 * (double)over / (double)nw : 0.0);
    printf("  command latency (request sent -> 202)  p50 %.0f us  "
           "p99 %.0f us\n",
           US(mh_pct(cmd, (size_t)nc, 50)), US(mh_pct(cmd, (size_t)nc, 99)));
    printf("  failures: %ld commands not 202, %ld queries not 200/fresh, "
           "%ld connection errors\n",
           cmd_fail, query_fail, io_fail);
    printf("BENCH kind=rtt requests=%ld p50_us=%.0f p90_us=%.0f p99_us=%.0f "
           "max_us=%.0f\n",
           nr, US(mh_pct(rtt, (size_t)nr, 50)), US(mh_pct(rtt, (size_t)nr, 90)),
           US(mh_pct(rtt, (size_t)nr, 99)), US(rtt[nr ? nr - 1 : 0]));
    printf("BENCH kind=window commands=%ld fresh=%ld cmd_fail=%ld "
           "query_fail=%ld io_fail=%ld seconds=%.3f cmd_per_sec=%.1f "
           "p50_us=%.0f p90_us=%.0f p99_us=%.0f max_us=%.0f "
           "cmd_p50_us=%.0f cmd_p99_us=%.0f over_1ms=%ld\n",
           nc + cmd_fail, nw, cmd_fail, query_fail, io_fail, secs,
           (double)(nc + cmd_fail) / secs, US(mh_pct(win, (size_t)nw, 50)),
           US(mh_pct(win, (size_t)nw, 90)), US(mh_pct(win, (size_t)nw, 99)),
           US(win[nw ? nw - 1 : 0]), US(mh_pct(cmd, (size_t)nc, 50)),
           US(mh_pct(cmd, (size_t)nc, 99)), over);
    return samples ? write_samples(samples, win, nw) : 0;
}
