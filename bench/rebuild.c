/*
 * bench_rebuild — how fast a blue/green rebuild replays the store, and
 * whether queries keep being answered while it runs. Started by
 * bench/run.sh on the server its catch-up step left caught up (both
 * asynchronous projections at the head, so the projector thread has
 * nothing else to do):
 *
 *   1. GET /projections/<name>: 200, not rebuilding -> the head;
 *   2. a query thread starts, on its own keep-alive connection:
 *      GET /queries/order_summary?order_id=<--order-id> in a loop, one
 *      every --gap-us (a light, steady reader, not a load test); the first
 *      --baseline answers, before the rebuild, are the reference;
 *   3. POST /projections/<name>/rebuild -> 202; its body's
 *      rebuild.started_at names this rebuild (or last_rebuild.started_at,
 *      should it have finished before the answer was built);
 *   4. GET /projections/<name> every 50 ms, progress printed every second,
 *      until "rebuild":null and last_rebuild.started_at is ours -> the
 *      server's own figures: events_replayed, finished_at - started_at;
 *   5. the query thread stops. Every answer, before, during and after the
 *      swap, must be 200 with the order, shipped and paid (the last order's
 *      final state: the live tables have it, and so must the ones swapped
 *      in), and meta.position must never go back.
 *
 * Usage: bench_rebuild --port P --order-id ID [--projection NAME]
 *          [--timeout S] [--gap-us U] [--baseline N] [--host H] [--pid PID]
 *          [--samples FILE]
 * --pid: the server's process (or its timeout(1) wrapper); when it is gone
 * the wait ends at once instead of at the timeout.
 *
 * --timeout bounds the wait from the POST on; the baseline has 30 s more.
 * --samples FILE: every poll of step 4 while the rebuild runs writes a line
 * "SECONDS EVENTS_DONE EVENTS_TOTAL" to FILE (seconds since the POST), and
 * the end one more with the events replayed (bench/report.sh draws them).
 *
 * Prints the figures and, for run.sh, "BENCH kind=rebuild ..." when the
 * rebuild ended "done" (events/s = events_replayed / (finished_at -
 * started_at), the server's clock at millisecond resolution) and
 * "BENCH kind=rebuild_queries ..." once it was started. Exit 1 when the
 * rebuild could not be started, did not finish in time, or did not end
 * "done".
 *
 * Threads: main (steps 1, 3, 4) and the query thread (2), each with its
 * own connection; they share only the atomics below and, after the join,
 * the query thread's results.
 */
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "minihttp.h"

#define SHOW_FAILURES 5
#define QUERY_TIMEOUT_MS 5000

enum { PH_BASE, PH_DURING, PH_STOP };

typedef struct samples {
    int64_t *ns;
    size_t n, cap;
} samples;

typedef struct querier {
    const char *host, *order;
    int port;
    long gap_us;
    pthread_t th;
    /* results, read after the join */
    samples base, during;
    long non200, io_fail, wrong, went_back, shown;
    long long last_position;
} querier;

static atomic_int phase = PH_BASE;
static atomic_long base_done; /* baseline answers so far */
static pid_t server_pid;      /* 0: not watched */

static void sleep_us(long us)
{
    struct timespec ts = {us / 1000000, (us % 1000000) * 1000};
    nanosleep(&ts, NULL);
}

/* Append v to s; 0, or -1 when out of memory (the sample is dropped). */
static int samples_add(samples *s, int64_t v)
{
    if (s->n == s->cap) {
        size_t cap = s->cap ? 2 * s->cap : 4096;
        int64_t *ns = realloc(s->ns, cap * sizeof *ns);
        if (ns == NULL)
            return -1;
        s->ns = ns;
        s->cap = cap;
    }
    s->ns[s->n++] = v;
    return 0;
}

static void show(querier *q, const char *what, int status, const char *body)
{
    if (q->shown++ >= SHOW_FAILURES)
        return;
    printf("!!! query %s: status %d: %.300s\n", what, status,
           body ? body : "(no answer)");
    fflush(stdout);
}

static void *querier_main(void *arg)
{
    querier *q = arg;
    static mh_conn c; /* one querier per process; 256 KiB off the stack */
    char path[256], want[160];
    mh_resp r;
    int ph;

    c.host = q->host;
    c.port = q->port;
    c.fd = -1;
    snprintf(path, sizeof path, "/queries/order_summary?order_id=%s", q->order);
    snprintf(want, sizeof want, "\"order_id\":\"%s\"", q->order);
    q->last_position = -1;
    while ((ph = atomic_load(&phase)) != PH_STOP) {
        int64_t a = mh_now_ns();
        if (mh_get(&c, path, &r, QUERY_TIMEOUT_MS) != 0) {
            if (ph == PH_DURING) {
                q->io_fail++;
                show(q, "connection failed or timed out", 0, NULL);
            }
            sleep_us(10000);
            continue;
        }
        int64_t took = mh_now_ns() - a;
        if (ph == PH_DURING && r.status != 200) {
            q->non200++;
            show(q, "not 200", r.status, r.body);
        } else if (ph == PH_DURING &&
                   (strstr(r.body, want) == NULL ||
                    strstr(r.body, "\"status\":\"shipped\"") == NULL ||
                    strstr(r.body, "\"payment_status\":\"paid\"") == NULL)) {
            q->wrong++;
            show(q, "200 without the order shipped and paid", r.status, r.body);
        }
        if (r.status == 200) {
            long long pos = mh_json_int(r.body, "position");
            if (ph == PH_DURING && pos < q->last_position) {
                q->went_back++;
                show(q, "meta.position went back", r.status, r.body);
            }
            if (pos > q->last_position)
                q->last_position = pos;
        }
        if (ph == PH_BASE) {
            if (r.status == 200)
                samples_add(&q->base, took);
            atomic_fetch_add(&base_done, 1);
        } else {
            samples_add(&q->during, took);
        }
        if (q->gap_us > 0)
            sleep_us(q->gap_us);
    }
    mh_close(&c);
    return NULL;
}

/* Copy the object after "key": in body into out (without the braces).
 * 1 when it is an object, 0 when null or absent. Strings are skipped
 * whole, so a brace inside one (an error message) does not end it. */
static int section(const char *body, const char *key, char *out, size_t cap)
{
    char pat[64];
    const char *p, *start;
    int depth = 1;

    snprintf(pat, sizeof pat, "\"%s\":", key);
    p = strstr(body, pat);
    if (p == NULL)
        return 0;
    p += strlen(pat);
    while (*p == ' ')
        p++;
    if (*p != '{')
        return 0;
    start = ++p;
    for (; *p != '\0' && depth > 0; p++) {
        if (*p == '"') {
            for (p++; *p != '\0' && *p != '"'; p++)
                if (*p == '\\' && p[1] != '\0')
                    p++;
            if (*p == '\0')
                break;
        } else if (*p == '{') {
            depth++;
        } else if (*p == '}') {
            depth--;
        }
    }
    if (depth != 0)
        return 0;
    size_t n = (size_t)(p - 1 - start);
    if (n >= cap)
        n = cap - 1;
    memcpy(out, start, n);
    out[n] = '\0';
    return 1;
}

/* The string after "key": in s, copied to out; "" when absent or not a
 * string. */
static void json_str(const char *s, const char *key, char *out, size_t cap)
{
    char pat[64];
    const char *p;
    size_t n = 0;

    out[0] = '\0';
    snprintf(pat, sizeof pat, "\"%s\":\"", key);
    p = strstr(s, pat);
    if (p == NULL)
        return;
    for (p += strlen(pat); *p != '\0' && *p != '"' && n + 1 < cap; p++)
        out[n++] = *p;
    out[n] = '\0';
}

/* The number after "key": in s (a real), or -1. */
static double json_real(const char *s, const char *key)
{
    char pat[64];
    snprintf(pat, sizeof pat, "\"%s\":", key);
    const char *p = strstr(s, pat);
    if (p == NULL)
        return -1;
    char *end;
    double v = strtod(p + strlen(pat), &end);
    return end == p + strlen(pat) ? -1 : v;
}

/* "2026-11-23T16:31:35.876Z" -> milliseconds since the epoch, or -1. */
static int64_t parse_time_ms(const char *s)
{
    struct tm tm;
    int ms = 0, n = 0;

    memset(&tm, 0, sizeof tm);
    if (sscanf(s, "%d-%d-%dT%d:%d:%d%n", &tm.tm_year, &tm.tm_mon, &tm.tm_mday,
               &tm.tm_hour, &tm.tm_min, &tm.tm_sec, &n) != 6)
        return -1;
    if (s[n] == '.') {
        int digits = 0;
        for (const char *p = s + n + 1; *p >= '0' && *p <= '9'; p++)
            if (digits++ < 3)
                ms = ms * 10 + (*p - '0');
        while (digits++ < 3)
            ms *= 10;
    }
    tm.tm_year -= 1900;
    tm.tm_mon -= 1;
    time_t t = timegm(&tm);
    return t == (time_t)-1 ? -1 : (int64_t)t * 1000 + ms;
}

static void pcts(samples *s, int64_t out[3])
{
    out[0] = out[1] = out[2] = 0;
    if (s->n == 0)
        return;
    qsort(s->ns, s->n, sizeof *s->ns, mh_cmp_i64);
    out[0] = mh_pct(s->ns, s->n, 50) / 1000;
    out[1] = mh_pct(s->ns, s->n, 99) / 1000;
    out[2] = s->ns[s->n - 1] / 1000;
}

static void usage(void)
{
    fprintf(stderr, "usage: bench_rebuild --port P --order-id ID "
                    "[--projection NAME] [--timeout S] [--gap-us U] "
                    "[--baseline N] [--host H] [--pid PID] "
                    "[--samples FILE]\n");
}

int main(int argc, char **argv)
{
    const char *host = "127.0.0.1", *name = "order_summaries";
    int port = 0, status = 1, started_thread = 0;
    double timeout_s = 300;
    long baseline = 1000;
    char path[256], req[512], rb[4096], last[4096];
    char ours[40] = "", seen[40], outcome[32];
    static mh_conn c;
    static querier q;
    mh_resp r;
    FILE *progress = NULL; /* --samples */

    q.gap_us = 1000;
    for (int i = 1; i < argc; i += 2) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) {
            usage();
            return 2;
        }
        if (!strcmp(a, "--host"))
            host = v;
        else if (!strcmp(a, "--port"))
            port = atoi(v);
        else if (!strcmp(a, "--order-id"))
            q.order = v;
        else if (!strcmp(a, "--projection"))
            name = v;
        else if (!strcmp(a, "--timeout"))
            timeout_s = atof(v);
        else if (!strcmp(a, "--gap-us"))
            q.gap_us = atol(v);
        else if (!strcmp(a, "--baseline"))
            baseline = atol(v);
        else if (!strcmp(a, "--pid"))
            server_pid = (pid_t)atol(v);
        else if (!strcmp(a, "--samples")) {
            if (!progress)
                progress = fopen(v, "w");
            if (!progress) {
                fprintf(stderr, "bench_rebuild: cannot write %s: %s\n", v,
                        strerror(errno));
                return 1;
            }
        } else {
            usage();
            return 2;
        }
    }
    if (port <= 0 || !q.order || timeout_s <= 0 || q.gap_us < 0 ||
        baseline < 0) {
        usage();
        return 2;
    }
    q.host = host;
    q.port = port;
    c.host = host;
    c.port = port;
    c.fd = -1;
    const int64_t t0 = mh_now_ns();
    int64_t deadline = t0 + 30 * (int64_t)1000000000; /* steps 1 and 2 */

    /* 1. the projection, idle */
    snprintf(path, sizeof path, "/projections/%s", name);
    if (mh_get(&c, path, &r, 5000) != 0 || r.status != 200) {
        fprintf(stderr, "bench_rebuild: GET %s: %s%.300s\n", path,
                r.status ? "" : "no answer", r.status ? r.body : "");
        goto done;
    }
    if (section(r.body, "rebuild", rb, sizeof rb)) {
        fprintf(stderr, "bench_rebuild: %s is already being rebuilt\n", name);
        goto done;
    }
    long long head = mh_json_int(r.body, "head");
    long long position = mh_json_int(r.body, "position");
    printf("  %s at position %lld of %lld before the rebuild\n", name, position,
           head);

    /* 2. the query thread, and its baseline */
    if (pthread_create(&q.th, NULL, querier_main, &q) != 0) {
        fprintf(stderr, "bench_rebuild: pthread_create failed\n");
        goto done;
    }
    started_thread = 1;
    while (atomic_load(&base_done) < baseline && mh_now_ns() < deadline &&
           !mh_pid_gone(server_pid))
        sleep_us(10000);

    /* 3. start it */
    int rl = snprintf(req, sizeof req,
                      "POST %s/rebuild HTTP/1.1\r\nHost: %s:%d\r\n"
                      "Content-Length: 0\r\n\r\n",
                      path, host, port);
    atomic_store(&phase, PH_DURING);
    const int64_t t_post = mh_now_ns();
    deadline = t_post + (int64_t)(timeout_s * 1e9);
    if (mh_request(&c, req, (size_t)rl, &r, 30000) != 0 || r.status != 202) {
        fprintf(stderr, "bench_rebuild: POST %s/rebuild: %d %.400s\n", path,
                r.status, r.status ? r.body : "(no answer)");
        goto done;
    }
    if (section(r.body, "rebuild", rb, sizeof rb))
        json_str(rb, "started_at", ours, sizeof ours);
    else if (section(r.body, "last_rebuild", last, sizeof last))
        json_str(last, "started_at", ours, sizeof ours);
    if (ours[0] == '\0') {
        fprintf(stderr, "bench_rebuild: no started_at in the 202: %.400s\n",
                r.body);
        goto done;
    }
    printf("  %6.2f s  POST %s/rebuild: 202, started_at %s\n",
           (double)(mh_now_ns() - t0) / 1e9, path, ours);
    fflush(stdout);

    /* 4. until it is over */
    int over = 0;
    int64_t last_print = mh_now_ns();
    while (!over && mh_now_ns() < deadline && !mh_pid_gone(server_pid)) {
        sleep_us(50000);
        if (mh_get(&c, path, &r, 5000) != 0 || r.status != 200)
            continue;
        if (section(r.body, "rebuild", rb, sizeof rb)) {
            if (progress)
                fprintf(progress, "%.3f %lld %lld\n",
                        (double)(mh_now_ns() - t_post) / 1e9,
                        mh_json_int(rb, "events_done"),
                        mh_json_int(rb, "events_total"));
            if (mh_now_ns() - last_print >= 1000000000) {
                last_print = mh_now_ns();
                printf("  %6.2f s  %lld of %lld events, %.0f events/s, "
                       "eta %.1f s\n",
                       (double)(last_print - t0) / 1e9,
                       mh_json_int(rb, "events_done"),
                       mh_json_int(rb, "events_total"),
                       json_real(rb, "events_per_second"),
                       json_real(rb, "eta_seconds"));
                fflush(stdout);
            }
            continue;
        }
        if (section(r.body, "last_rebuild", last, sizeof last)) {
            json_str(last, "started_at", seen, sizeof seen);
            over = strcmp(seen, ours) == 0;
        }
    }
    const int64_t t_seen = mh_now_ns();
    atomic_store(&phase, PH_STOP);
    pthread_join(q.th, NULL);
    started_thread = 0;
    if (!over) {
        fprintf(stderr,
                "bench_rebuild: the rebuild did not end within "
                "%.0f s%s\n",
                timeout_s,
                mh_pid_gone(server_pid) ? " (the server has exited)" : "");
        goto report_queries;
    }

    /* the server's figures */
    char started_at[40], finished_at[40];
    json_str(last, "outcome", outcome, sizeof outcome);
    json_str(last, "started_at", started_at, sizeof started_at);
    json_str(last, "finished_at", finished_at, sizeof finished_at);
    long long events = mh_json_int(last, "events_replayed");
    int64_t a = parse_time_ms(started_at), b = parse_time_ms(finished_at);
    double secs = a >= 0 && b >= a ? (double)(b - a) / 1000.0 : -1;
    double rate = secs > 0 ? (double)events / secs : -1;
    double wall = (double)(t_seen - t_post) / 1e9;
    if (progress)
        fprintf(progress, "%.3f %lld %lld\n", wall, events, events);
    printf("  %6.2f s  over: outcome %s, %lld events replayed, "
           "%s .. %s\n",
           (double)(t_seen - t0) / 1e9, outcome, events, started_at,
           finished_at);
    if (strcmp(outcome, "done") != 0)
        printf("!!! the rebuild ended '%s': %.400s\n", outcome, last);
    printf("%s rebuild: %lld events in %.3f s (server clock): %.0f events/s"
           "; %.2f s from the POST until seen over\n",
           name, events, secs, rate, wall);
    status = strcmp(outcome, "done") == 0 && rate > 0 ? 0 : 1;

report_queries:;
    int64_t bp[3], dp[3];
    pcts(&q.base, bp);
    pcts(&q.during, dp);
    long nq = (long)q.during.n + q.io_fail;
    printf("queries before the rebuild: %zu answers 200, p50 %" PRId64
           " us, p99 %" PRId64 " us, max %" PRId64 " us\n",
           q.base.n, bp[0], bp[1], bp[2]);
    printf("queries during the rebuild: %ld sent, %ld not 200, %ld without "
           "the order shipped and paid, %ld connection errors, %ld with "
           "meta.position going back; p50 %" PRId64 " us, p99 %" PRId64
           " us, max %" PRId64 " us\n",
           nq, q.non200, q.wrong, q.io_fail, q.went_back, dp[0], dp[1], dp[2]);
    if (status == 0)
        printf("BENCH kind=rebuild outcome=%s events=%lld seconds=%.3f "
               "events_per_sec=%.1f wall_s=%.3f\n",
               outcome, events, secs, rate, wall);
    printf("BENCH kind=rebuild_queries queries=%ld non200=%ld wrong=%ld "
           "io_fail=%ld back=%ld p50_us=%" PRId64 " p99_us=%" PRId64
           " max_us=%" PRId64 " base_n=%zu base_p50_us=%" PRId64
           " base_p99_us=%" PRId64 "\n",
           nq, q.non200, q.wrong, q.io_fail, q.went_back, dp[0], dp[1], dp[2],
           q.base.n, bp[0], bp[1]);
done:
    if (started_thread) {
        atomic_store(&phase, PH_STOP);
        pthread_join(q.th, NULL);
    }
    mh_close(&c);
    free(q.base.ns);
    free(q.during.ns);
    if (progress && fclose(progress) != 0) {
        fprintf(stderr, "bench_rebuild: cannot write the samples: %s\n",
                strerror(errno));
        status = 1;
    }
    return status;
}
