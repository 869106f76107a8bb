/*
 * metrics.c -- the server's metrics (GET /metrics, Prometheus text):
 * counters and histograms the HTTP threads update as they answer
 * (commands by type and outcome, command duration, query waits), and
 * gauges collected at scrape time from the store, the writer and the
 * projection engine.
 *
 * Every series is registered when the server starts, so each shows from
 * the start at zero; a command type nobody knows is never a label value
 * (clients could multiply them at will).
 *
 * Threads: counters and histograms are updated from any MHD thread
 * (base/metrics.c makes that safe); collect() runs on the thread that
 * renders GET /metrics and only reads through thread-safe calls of the
 * store, writer and engine.
 */
#include <microhttpd.h>
#include <stdio.h>
#include <stdlib.h>

#include "base/base.h"
#include "base/metrics.h"
#include "command/command.h"
#include "http/http.h"

enum {
    OUT_ACCEPTED,
    OUT_REFUSED,
    OUT_CONFLICT,
    OUT_NOT_FOUND,
    OUT_INVALID,
    OUT_FAILED,
    OUT_COUNT
};
static const char *const outcome_names[OUT_COUNT] = {
    "accepted", "refused", "conflict", "not_found", "invalid", "failed"};

static int outcome_of(int status)
{
    if (status >= 200 && status < 300)
        return OUT_ACCEPTED;
    switch (status) {
    case 400:
    case 405:
    case 413:
    case 415: return OUT_INVALID;
    case 404: return OUT_NOT_FOUND;
    case 409:
    case 412: return OUT_CONFLICT;
    case 422: return OUT_REFUSED;
    default: return OUT_FAILED;
    }
}

/* Count how command request q ended (status), under its command type;
 * requests for unknown types are not counted (their name would become a
 * label value that clients could multiply at will). */
void cq_http_count_command(request *q, int status)
{
    const cq_command_def *def = q->w.def;
    cq_server *s = q->srv;
    int t;

    if (def == NULL)
        def = cq_domain_command(s->domain, q->target);
    for (t = 0; def != NULL && t < s->ntypes; t++)
        if (s->domain->commands[t] == def)
            break;
    if (def == NULL || t == s->ntypes || status == 0)
        return;
    cq_counter_add(s->commands[t * OUT_COUNT + outcome_of(status)], 1);
    if (q->t0 != 0)
        cq_histogram_observe(s->command_duration,
                             (double)(cq_mono_ns() - q->t0) / 1e9);
}

/* Gauges computed at scrape time: the store's head, the sizes of the
 * write-ahead logs, whether the store takes writes, and each projection. */
static void collect(void *arg, cq_strbuf *out)
{
    cq_server *s = arg;
    static const struct {
        const char *name, *help;
    } fam[] = {
        {"projection_position",
         "Last event position applied by the projection."},
        {"projection_lag_events",
         "Committed events the projection has not applied."},
        {"projection_lag_seconds",
         "Age of the oldest event the projection has not applied."},
        {"projection_failed", "1 if the projection stopped on an error."},
        {"projection_rebuilding",
         "1 while a blue/green rebuild replaces the projection's tables."},
        {"projection_rebuild_position",
         "Last event position the rebuild in progress has replayed (0 when "
         "none)."},
        {"projection_rebuild_target_position",
         "Head position the rebuild in progress must reach (0 when none)."},
        {"projection_rebuild_events_per_second",
         "Replay rate of the rebuild in progress (0 when none)."},
    };
    int64_t head = 0, wal_events, wal_reads;
    int n = s->engine ? cq_engine_count(s->engine) : 0;
    cq_projection_status *st = n ? calloc((size_t)n, sizeof *st) : NULL;
    /* 1 where the lag could be read from the event store: an unknown lag
     * is left out, never reported as 0 */
    char *lag_known = n ? calloc((size_t)n, 1) : NULL;

    /* left out when the store cannot be read: the EventStoreUnreachable
     * alert (ops/prometheus/alerts.yml) looks for its absence */
    if (cq_store_head_position(s->store, &head) == CQ_OK) {
        cq_metrics_gauge_family(out, "event_store_head_position",
                                "Highest committed event position.");
        cq_metrics_gauge(out, "event_store_head_position", NULL, (double)head);
    }
    /* SQLite's -wal files only: a PostgreSQL server keeps its own log */
    wal_events = cq_store_wal_bytes(s->store);
    wal_reads = s->engine != NULL ? cq_engine_wal_bytes(s->engine) : -1;
    if (wal_events >= 0 || wal_reads >= 0) {
        cq_metrics_gauge_family(out, "cqrsd_wal_bytes",
                                "Size of the database's write-ahead log file.");
        if (wal_events >= 0)
            cq_metrics_gauge(out, "cqrsd_wal_bytes", "database=\"events.db\"",
                             (double)wal_events);
        if (wal_reads >= 0)
            cq_metrics_gauge(out, "cqrsd_wal_bytes", "database=\"read.db\"",
                             (double)wal_reads);
    }
    if (s->writer != NULL) {
        cq_metrics_gauge_family(
            out, "cqrsd_store_writable",
            "1 if the event store's last write transaction committed; 0 "
            "after one failed (e.g. a full disk), until one commits.");
        cq_metrics_gauge(out, "cqrsd_store_writable", NULL,
                         (double)cq_writer_writable(s->writer, NULL, 0));
    }
    if (s->engine != NULL) {
        int pending;
        int64_t checked;
        cq_engine_wait_stats(s->engine, &pending, &checked);
        cq_metrics_gauge_family(out, "cqrsd_waiters_pending",
                                "Queries and ?wait_for= commands waiting for "
                                "a projection or the event store.");
        cq_metrics_gauge(out, "cqrsd_waiters_pending", NULL, (double)pending);
        cq_metrics_gauge_family(out, "cqrsd_waiters_checked",
                                "Waiters that commits have looked at one by "
                                "one since the start (only grows): those "
                                "they woke, and those of the streams they "
                                "wrote.");
        cq_metrics_gauge(out, "cqrsd_waiters_checked", NULL, (double)checked);
        int64_t memory, store;
        cq_engine_read_stats(s->engine, &memory, &store);
        if (memory + store > 0) {
            cq_metrics_gauge_family(
                out, "cqrsd_projector_events_read",
                "Events the projector took in batches (asynchronous "
                "projections and their rebuilds) since the start (only "
                "grows): from memory, as the writer committed them, or "
                "read back from the event store.");
            cq_metrics_gauge(out, "cqrsd_projector_events_read",
                             "source=\"memory\"", (double)memory);
            cq_metrics_gauge(out, "cqrsd_projector_events_read",
                             "source=\"store\"", (double)store);
        }
    }
    if (st == NULL || lag_known == NULL) {
        free(st);
        free(lag_known);
        return;
    }
    for (int i = 0; i < n; i++)
        lag_known[i] = cq_engine_status(s->engine, i, &st[i]) == CQ_OK;
    for (size_t f = 0; f < sizeof fam / sizeof fam[0]; f++) {
        cq_metrics_gauge_family(out, fam[f].name, fam[f].help);
        for (int i = 0; i < n; i++) {
            char label[160], esc[128];
            const cq_projection_status *p = &st[i];
            double v = f == 0   ? (double)p->position
                       : f == 1 ? (double)p->lag_events
                       : f == 2 ? p->lag_seconds
                       : f == 3 ? (double)p->failed
                       : f == 4 ? (double)p->rebuilding
                       : f == 5 ? (double)p->rebuild.done
                       : f == 6 ? (double)p->rebuild.total
                                : p->rebuild.events_per_second;
            if (f == 2 && !lag_known[i])
                continue;
            cq_metrics_label_escape(st[i].name, esc, sizeof esc);
            snprintf(label, sizeof label, "projection=\"%s\"", esc);
            cq_metrics_gauge(out, fam[f].name, label, v);
        }
    }
    /* events skipped per projection: the rows of cq_skipped_events, so the
     * count survives restarts */
    cq_strbuf_puts(out, "# HELP projection_skipped_events_total Events the "
                        "projection skipped (recorded in "
                        "cq_skipped_events).\n"
                        "# TYPE projection_skipped_events_total counter\n");
    for (int i = 0; i < n; i++) {
        char label[160], esc[128];
        cq_metrics_label_escape(st[i].name, esc, sizeof esc);
        snprintf(label, sizeof label, "projection=\"%s\"", esc);
        cq_metrics_gauge(out, "projection_skipped_events_total", label,
                         (double)st[i].skipped);
    }
    free(st);
    free(lag_known);
}

/* Register every series the server updates, so each shows from the start
 * (at zero). */
int cq_http_metrics_init(cq_server *s)
{
    static const double seconds[] = {0.0005, 0.001, 0.0025, 0.005, 0.01,
                                     0.025,  0.05,  0.1,    0.25,  0.5,
                                     1,      2.5,   5,      10,    30};
    const int nb = (int)(sizeof seconds / sizeof seconds[0]);

    s->metrics = cq_metrics_new();
    if (s->metrics == NULL)
        return CQ_ENOMEM;
    while (s->domain->commands[s->ntypes] != NULL)
        s->ntypes++;
    s->commands = calloc((size_t)(s->ntypes * OUT_COUNT), sizeof *s->commands);
    if (s->commands == NULL)
        return CQ_ENOMEM;
    for (int t = 0; t < s->ntypes; t++)
        for (int o = 0; o < OUT_COUNT; o++) {
            char labels[160], esc[128];
            cq_metrics_label_escape(s->domain->commands[t]->type, esc,
                                    sizeof esc);
            snprintf(labels, sizeof labels, "type=\"%s\",outcome=\"%s\"", esc,
                     outcome_names[o]);
            s->commands[t * OUT_COUNT + o] = cq_metrics_counter(
                s->metrics, "cqrsd_commands_total",
                "Commands answered, by type and outcome.", labels);
            if (s->commands[t * OUT_COUNT + o] == NULL)
                return CQ_ENOMEM;
        }
    s->command_duration = cq_metrics_histogram(
        s->metrics, "cqrsd_command_duration_seconds",
        "Time from a complete command request to its answer.", NULL, seconds,
        nb);
    s->query_wait = cq_metrics_histogram(
        s->metrics, "cqrsd_query_wait_seconds",
        "Time queries and ?wait_for= commands waited for a projection.", NULL,
        seconds, nb);
    s->wait_timeouts = cq_metrics_counter(
        s->metrics, "cqrsd_query_wait_timeouts_total",
        "Waits for a projection that ended at wait_ms (answered stale).", NULL);
    if (s->command_duration == NULL || s->query_wait == NULL ||
        s->wait_timeouts == NULL)
        return CQ_ENOMEM;
    return cq_metrics_collect(s->metrics, collect, s);
}

void cq_http_metrics_free(cq_server *s)
{
    cq_metrics_free(s->metrics); /* and every series registered in it */
    free(s->commands);
    s->metrics = NULL;
    s->commands = NULL;
}

enum MHD_Result cq_http_metrics(request *q)
{
    static const char *const allowed[] = {NULL};
    enum MHD_Result ret = MHD_NO;

    if (!cq_http_params_ok(q, allowed, &ret))
        return ret;
    return cq_http_send_with(q->conn, 200,
                             "text/plain; version=0.0.4; charset=utf-8",
                             cq_metrics_render(q->srv->metrics), NULL, 0);
}
