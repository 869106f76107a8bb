/*
 * bench_catchup — how fast the asynchronous projections catch up with a
 * large event store. Started by bench/run.sh right after it starts cqrsd on
 * a data dir that bench_fill_events filled (events.db only, no read.db):
 *
 *   1. polls GET /healthz every 2 ms until it answers 200 -> t_up. The
 *      server listens as soon as it has opened the store; its writer then
 *      replays the inline projection (payment_confirmation, in events.db,
 *      status "catching_up") and the projector thread starts only once
 *      that is current (src/projection/inline.c), so t_up is not where the
 *      asynchronous catch-up begins;
 *   1b. polls GET /projections every 2 ms until no projection is
 *      "catching_up" -> t_start, where the projector starts: the
 *      asynchronous catch-up is timed from there (the inline replay
 *      before it, inline_s, is printed apart: it is not the projector's
 *      work and raw SQLite's reference does not do it either);
 *   2. GET /queries/order_summary?order_id=<--order-id>
 *      &min_position=<--position>&wait_ms=1000, again and again, until an
 *      answer is 200, "stale":false with meta.position >= --position ->
 *      t_os (the server answers the moment the projection commits that
 *      position). While it is not there, every second it prints how far
 *      order_summaries is (meta.position of --probe-order, which exists
 *      after the first batch);
 *   3. the same for GET /queries/sales_dashboard (the other asynchronous
 *      projection, applied by the same projector thread in turns) -> t_sd;
 *   4. checks the last order's summary (shipped and paid).
 *
 * --only order_summaries | --only sales_dashboard: one projection alone.
 * Right after t_up it pauses the other (POST /projections/OTHER/pause: it
 * is queued until the projector starts, which carries it out at the top of
 * its first round, before it applies anything), then times only the one
 * named: its own catch-up rate, not shared with the other. The pause is
 * persisted in the data dir.
 *
 * Usage: bench_catchup --port P --order-id ID --probe-order ID
 *                      --position N [--timeout S] [--host H] [--pid PID]
 *                      [--samples FILE]
 *                      [--only order_summaries|sales_dashboard]
 * --pid: the server's process (or its timeout(1) wrapper); when it is gone
 * the wait ends at once instead of at the timeout.
 * --samples FILE: order_summaries' position (meta.position of
 * --probe-order) every 200 ms while it catches up, as lines "SECONDS
 * POSITION" in FILE (seconds since bench_catchup started, just after the
 * server; bench/report.sh draws them); the last line is the target reached.
 * The answer's body lives in the connection's buffer: read it before the
 * next request.
 *
 * Prints the figures and one "BENCH kind=catchup ..." line for run.sh;
 * order_summaries events/s = position / (t_os - t_start); up_s is t_up
 * and start_s t_start, both from bench_catchup's start (just after the
 * server's), inline_s = t_start - t_up. Exit 1 when the
 * server did not come up or the projection did not get there in time.
 */
#include <inttypes.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "minihttp.h"

static pid_t server_pid; /* 0: not watched */
static FILE *samples;    /* --samples, or NULL */

static double secs_since(int64_t t0)
{
    return (double)(mh_now_ns() - t0) / 1e9;
}

/* Wait until GET path answers 200, not stale, meta.position >= target.
 * Prints progress from probe (if not NULL) every second. Returns 0, or -1
 * at the deadline. */
static int wait_fresh(mh_conn *c, const char *name, const char *path,
                      const char *probe, long long target, int64_t t0,
                      int64_t deadline, mh_resp *out)
{
    mh_resp r;
    double last_print = secs_since(t0), last_sample = last_print;
    while (mh_now_ns() < deadline && !mh_pid_gone(server_pid)) {
        int64_t a = mh_now_ns();
        int rc = mh_get(c, path, &r, 5000);
        if (rc == 0 && r.status == 200 && strstr(r.body, "\"stale\":false") &&
            mh_json_int(r.body, "position") >= target) {
            *out = r;
            return 0;
        }
        if (mh_now_ns() >= deadline)
            break;
        if (mh_now_ns() - a < 50 * 1000000) {
            /* answered at once (an error, or 404 before the order is
             * projected): do not spin on the server's CPU */
            struct timespec ts = {0, 20 * 1000000};
            nanosleep(&ts, NULL);
        }
        double every = samples ? 0.2 : 1.0;
        if (secs_since(t0) - last_sample >= every && probe) {
            last_sample = secs_since(t0);
            long long pos = -1;
            if (mh_get(c, probe, &r, 5000) == 0 && r.status == 200)
                pos = mh_json_int(r.body, "position");
            if (samples && pos >= 0)
                fprintf(samples, "%.3f %lld\n", last_sample, pos);
            if (last_sample - last_print >= 1.0) {
                last_print = last_sample;
                printf("  %6.1f s  %s at position %lld\n", last_print, name,
                       pos);
                fflush(stdout);
            }
        }
    }
    return -1;
}

static void usage(void)
{
    fprintf(stderr, "usage: bench_catchup --port P --order-id ID "
                    "--probe-order ID --position N [--timeout S] "
                    "[--host H] [--pid PID] [--samples FILE] "
                    "[--only order_summaries|sales_dashboard]\n");
}

/* POST /projections/name/pause; 0 when it answered 2xx. */
static int pause_projection(mh_conn *c, const char *name, int timeout_ms)
{
    char req[512];
    mh_resp r;
    int n = snprintf(req, sizeof req,
                     "POST /projections/%s/pause HTTP/1.1\r\nHost: %s:%d\r\n"
                     "Content-Length: 0\r\n\r\n",
                     name, c->host, c->port);
    /* answered once the projector has carried it out: after the inline
     * catch-up, which can take a while */
    if (mh_request(c, req, (size_t)n, &r, timeout_ms) != 0 ||
        r.status / 100 != 2) {
        fprintf(stderr, "bench_catchup: POST /projections/%s/pause: %d %.300s\n",
                name, r.status, r.status ? r.body : "(no answer)");
        return -1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    const char *host = "127.0.0.1", *order = NULL, *probe_order = NULL;
    const char *only = NULL; /* NULL: both */
    int port = 0;
    long long target = 0;
    double timeout_s = 300;
    char path[512], probe[512];
    mh_resp r;
    static mh_conn c;

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
            order = v;
        else if (!strcmp(a, "--probe-order"))
            probe_order = v;
        else if (!strcmp(a, "--position"))
            target = atoll(v);
        else if (!strcmp(a, "--timeout"))
            timeout_s = atof(v);
        else if (!strcmp(a, "--pid"))
            server_pid = (pid_t)atol(v);
        else if (!strcmp(a, "--samples")) {
            if (!samples)
                samples = fopen(v, "w");
            if (!samples) {
                fprintf(stderr, "bench_catchup: cannot write %s: %s\n", v,
                        strerror(errno));
                return 1;
            }
        } else if (!strcmp(a, "--only") &&
                   (!strcmp(v, "order_summaries") ||
                    !strcmp(v, "sales_dashboard")))
            only = v;
        else {
            usage();
            return 2;
        }
    }
    if (port <= 0 || !order || !probe_order || target < 1 || timeout_s <= 0) {
        usage();
        return 2;
    }
    const int64_t t0 = mh_now_ns();
    const int64_t deadline = t0 + (int64_t)(timeout_s * 1e9);

    /* 1. up */
    c.host = host;
    c.port = port;
    c.fd = -1;
    int up = 0;
    while (mh_now_ns() < deadline && !mh_pid_gone(server_pid)) {
        if (mh_get(&c, "/healthz", &r, 1000) == 0 && r.status == 200) {
            up = 1;
            break;
        }
        mh_close(&c);
        struct timespec ts = {0, 2 * 1000000};
        nanosleep(&ts, NULL);
    }
    if (!up) {
        fprintf(stderr, "bench_catchup: no 200 from /healthz within %.0f s%s\n",
                timeout_s,
                mh_pid_gone(server_pid) ? " (the server has exited)" : "");
        return 1;
    }
    const int64_t t_up = mh_now_ns();
    long long head = mh_json_int(r.body, "head_position");
    printf("  %6.1f s  up (GET /healthz 200, head_position %lld): store "
           "opened\n",
           secs_since(t0), head);
    fflush(stdout);
    const int do_os = !only || !strcmp(only, "order_summaries");
    const int do_sd = !only || !strcmp(only, "sales_dashboard");
    if (only &&
        pause_projection(&c, do_os ? "sales_dashboard" : "order_summaries",
                         (int)((deadline - mh_now_ns()) / 1000000)))
        return 1;
    if (only) {
        printf("  %6.1f s  %s paused: %s alone\n", secs_since(t0),
               do_os ? "sales_dashboard" : "order_summaries", only);
        fflush(stdout);
    }

    /* 1b. the inline projections current: the projector starts */
    int started = 0;
    while (mh_now_ns() < deadline && !mh_pid_gone(server_pid)) {
        if (mh_get(&c, "/projections", &r, 5000) == 0 && r.status == 200 &&
            strstr(r.body, "\"projections\"") &&
            !strstr(r.body, "\"catching_up\"")) {
            started = 1;
            break;
        }
        struct timespec ts = {0, 2 * 1000000};
        nanosleep(&ts, NULL);
    }
    if (!started) {
        fprintf(stderr,
                "bench_catchup: the inline projections were not current "
                "within %.0f s%s\n",
                timeout_s,
                mh_pid_gone(server_pid) ? " (the server has exited)" : "");
        return 1;
    }
    const int64_t t_start = mh_now_ns();
    printf("  %6.1f s  inline projections current (%.2f s after up): the "
           "projector starts, the catch-up is timed from here\n",
           secs_since(t0), (double)(t_start - t_up) / 1e9);
    fflush(stdout);

    /* 2. order_summaries */
    int64_t t_os = 0;
    int shipped = 0;
    if (do_os) {
        /* sampling: the query returns at least every 200 ms to let the
         * probe in */
        snprintf(path, sizeof path,
                 "/queries/order_summary?order_id=%s&min_position=%lld"
                 "&wait_ms=%d",
                 order, target, samples ? 200 : 1000);
        snprintf(probe, sizeof probe,
                 "/queries/order_summary?order_id=%s&wait_ms=0", probe_order);
        if (wait_fresh(&c, "order_summaries", path, probe, target, t0,
                       deadline, &r) != 0) {
            fprintf(stderr,
                    "bench_catchup: order_summaries did not reach "
                    "position %lld within %.0f s%s\n",
                    target, timeout_s,
                    mh_pid_gone(server_pid) ? " (the server has exited)" : "");
            return 1;
        }
        t_os = mh_now_ns();
        if (samples)
            fprintf(samples, "%.3f %lld\n", secs_since(t0), target);
        shipped = strstr(r.body, "\"status\":\"shipped\"") &&
                  strstr(r.body, "\"payment_status\":\"paid\"");
        printf("  %6.1f s  order_summaries at position %lld; last order %s: "
               "%s\n",
               secs_since(t0), target, order,
               shipped ? "shipped and paid, as it should be" : "WRONG");
        if (!shipped)
            printf("!!! last order's summary: %.400s\n", r.body);
        fflush(stdout);
    }

    /* 3. sales_dashboard */
    int sd = 0;
    int64_t t_sd = 0;
    if (do_sd) {
        snprintf(path, sizeof path,
                 "/queries/sales_dashboard?min_position=%lld&wait_ms=1000",
                 target);
        sd = wait_fresh(&c, "sales_dashboard", path, NULL, target, t0,
                        deadline, &r) == 0;
        t_sd = mh_now_ns();
        if (sd)
            printf("  %6.1f s  sales_dashboard at position %lld\n",
                   secs_since(t0), target);
        else
            printf("!!! sales_dashboard did not reach position %lld in time\n",
                   target);
    }

    double up_s = (double)(t_up - t0) / 1e9;
    double start_s = (double)(t_start - t0) / 1e9;
    double inline_s = (double)(t_start - t_up) / 1e9;
    double os_s = (double)(t_os - t_start) / 1e9;
    double sd_s = (double)(t_sd - t_start) / 1e9;
    if (only) {
        /* one projection alone: its events/s, to set against
         * bench_raw_upsert --sql ITS_FILE */
        double s = do_os ? os_s : sd_s;
        int ok = do_os ? 1 : sd;
        if (ok)
            printf("%s alone: %lld events in %.2f s after the projector "
                   "started: "
                   "%.0f events/s\n",
                   only, target, s, (double)target / s);
        printf("BENCH kind=catchup_alone projection=%s events=%lld up_s=%.3f "
               "start_s=%.3f inline_s=%.3f seconds=%.3f events_per_sec=%.1f "
               "last_ok=%d\n",
               only, target, up_s, start_s, inline_s, ok ? s : -1.0,
               ok ? (double)target / s : -1.0, do_os ? shipped : sd);
        if (samples && fclose(samples) != 0)
            ok = 0;
        return ok ? 0 : 1;
    }
    printf("order_summaries: %lld events in %.2f s after the projector "
           "started: "
           "%.0f events/s\n",
           target, os_s, (double)target / os_s);
    if (sd)
        printf("both async projections: %lld events each in %.2f s: "
               "%.0f events/s each, %.0f projected events/s in all\n",
               target, sd_s, (double)target / sd_s,
               2.0 * (double)target / sd_s);
    /* both_events_per_sec: events/s that both projections have applied,
     * to set against bench_raw_upsert with both --sql files */
    printf("BENCH kind=catchup events=%lld up_s=%.3f start_s=%.3f "
           "inline_s=%.3f os_s=%.3f "
           "os_events_per_sec=%.1f sd_s=%.3f all_events_per_sec=%.1f "
           "both_events_per_sec=%.1f last_ok=%d\n",
           target, up_s, start_s, inline_s, os_s, (double)target / os_s, sd ? sd_s : -1.0,
           sd ? 2.0 * (double)target / sd_s : -1.0,
           sd ? (double)target / sd_s : -1.0, shipped);
    if (samples && fclose(samples) != 0) {
        fprintf(stderr, "bench_catchup: cannot write the samples: %s\n",
                strerror(errno));
        return 1;
    }
    return 0;
}
