/*
 * cli.c -- `cqrsd relay`: the relay as a process of its own (bus.h).
 * The store is opened read-only (its read side is all the relay uses);
 * SIGTERM/SIGINT stop it after the round in flight.
 */
#include <nats/nats.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/metrics.h"
#include "base/strbuf.h"
#include "bus/bus.h"
#include "modules.h"
#include "store/pg.h"

/* /readyz of a relay: ready while it holds the lock and is connected. */
static int relay_ready(void *arg, cq_strbuf *out)
{
    cq_relay_stats s;

    cq_relay_get_stats(arg, &s);
    cq_strbuf_printf(out,
                     "{\"status\":\"%s\",\"role\":\"relay\","
                     "\"checkpoint\":%lld,\"head\":%lld}\n",
                     s.active ? "ready" : "standby", (long long)s.checkpoint,
                     (long long)s.head);
    return s.active;
}

static void relay_metrics(void *arg, cq_strbuf *out)
{
    char buf[4096];
    size_t n = cq_relay_metrics(arg, buf, sizeof buf);

    buf[n] = '\0';
    cq_strbuf_puts(out, buf);
}

int cq_bus_cli_relay(int argc, char **argv)
{
    cq_bus_http *http = NULL;
    const char *listen = NULL;
    cq_relay_config rc = {0};
    cq_store_config sc = {.sync_full = 1,
                          .read_connections = 2,
                          .connections = 2,
                          .read_only = 1};
    cq_store *store = NULL;
    cq_relay *relay = NULL;
    const char *data = NULL, *store_uri = NULL;
    char err[512], shown[512];
    sigset_t sigs;
    int sig = 0, status = 0;

    for (int i = 2; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (v == NULL) {
            fprintf(stderr,
                    "cqrsd: relay: %s: unknown option or missing "
                    "value\n",
                    a);
            return 2;
        }
        if (strcmp(a, "--data") == 0)
            data = v;
        else if (strcmp(a, "--store") == 0)
            store_uri = v;
        else if (strcmp(a, "--bus") == 0)
            rc.bus = v;
        else if (strcmp(a, "--stream") == 0)
            rc.stream = v;
        else if (strcmp(a, "--listen") == 0)
            listen = v;
        else if (strcmp(a, "--window") == 0) {
            char *end;
            long w = strtol(v, &end, 10);
            if (*end != '\0' || w < 1 || w > 65536) {
                fprintf(stderr, "cqrsd: relay: --window needs 1..65536\n");
                return 2;
            }
            rc.window = (int)w;
        } else {
            fprintf(stderr, "cqrsd: relay: unknown option %s\n", a);
            return 2;
        }
        i++;
    }
    if (rc.bus == NULL) {
        fprintf(stderr, "cqrsd: relay: --bus nats://HOST:PORT is needed\n");
        return 2;
    }
    if (store_uri != NULL && !cq_pg_is_uri(store_uri)) {
        fprintf(stderr, "cqrsd: relay: --store wants a PostgreSQL URI\n");
        return 2;
    }
    if (store_uri == NULL && data == NULL)
        data = "./data";
    sc.uri = store_uri;
    sc.dir = data;
    cq_pg_redact(store_uri ? store_uri : data, shown, sizeof shown);

    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);

    if (cq_store_open(&sc, &store, err, sizeof err) != CQ_OK) {
        fprintf(stderr, "cqrsd: relay: cannot open the event store %s: %s\n",
                shown, err);
        return 2;
    }
    rc.store = store;
    rc.store_uri = store_uri;
    rc.dir = data;
    if (cq_relay_new(&rc, &relay, err, sizeof err) != CQ_OK ||
        cq_relay_start(relay) != CQ_OK) {
        fprintf(stderr, "cqrsd: relay: %s\n", err);
        status = 2;
        goto done;
    }
    if (listen != NULL &&
        cq_bus_http_start(listen, relay_ready, relay_metrics, relay, &http, err,
                          sizeof err) != CQ_OK) {
        fprintf(stderr, "cqrsd: relay: %s\n", err);
        status = 2;
        goto done;
    }
    fprintf(stderr, "cqrsd: relay: events of %s to %s, stream %s", shown,
            rc.bus, rc.stream ? rc.stream : CQ_BUS_STREAM);
    if (http != NULL)
        fprintf(stderr, ", HTTP on %s (port %u)", listen,
                cq_bus_http_port(http));
    fputc('\n', stderr);
    while (sigwait(&sigs, &sig) != 0)
        ;
    fprintf(stderr, "cqrsd: relay: %s: stopping\n",
            sig == SIGINT ? "SIGINT" : "SIGTERM");
done:
    cq_bus_http_stop(http);
    cq_relay_free(relay);
    cq_store_close(store);
    cq_bus_shutdown();
    return status;
}

#define PROJECT_MAX 64 /* --projection flags */

/* `cqrsd project`: a projection engine whose asynchronous projections
 * (all, or those named with --projection) read the bus (worker.c). The
 * read store must be PostgreSQL: the workers and the servers share it,
 * take turns at each projection by its lock cqrsd:projection:NAME, and
 * tell each other's waits with cq_progress. The event store (--store,
 * default the read store's database) serves the rebuilds' replays and
 * the head (cq_events); the engine's start uses its write connection for
 * the inline projections' checkpoint tables only, and nothing is
 * appended. */
typedef struct project_view {
    cq_engine *e;
    cq_worker *w;
    const char *const *names; /* NULL: every asynchronous projection */
} project_view;

/* Is projection i one this worker was given? */
static int given(const project_view *v, int i)
{
    if (cq_engine_is_inline(v->e, i))
        return 0;
    if (v->names == NULL)
        return 1;
    for (const char *const *n = v->names; *n != NULL; n++)
        if (strcmp(*n, cq_engine_projection_name(v->e, i)) == 0)
            return 1;
    return 0;
}

/* /readyz of a worker: ready when it runs (holds the lock of) every
 * projection it was given; a standby answers 503. */
static int project_ready(void *arg, cq_strbuf *out)
{
    project_view *v = arg;
    int all = 1, first = 1;

    cq_strbuf_puts(out, "{\"role\":\"projector\",\"projections\":[");
    for (int i = 0; i < cq_engine_count(v->e); i++) {
        cq_projection_status st;
        if (!given(v, i))
            continue;
        cq_engine_status(v->e, i, &st);
        all &= st.runs_here;
        cq_strbuf_puts(out, first ? "" : ",");
        first = 0;
        cq_strbuf_puts(out, "{\"name\":");
        cq_strbuf_json_string(out, st.name);
        cq_strbuf_printf(out,
                         ",\"held\":%s,\"status\":\"%s\",\"position\":%lld,"
                         "\"lag_events\":%lld}",
                         st.runs_here ? "true" : "false", st.status,
                         (long long)st.position, (long long)st.lag_events);
    }
    cq_strbuf_printf(out, "],\"status\":\"%s\"}\n", all ? "ready" : "standby");
    return all;
}

static void project_metrics(void *arg, cq_strbuf *out)
{
    static const struct {
        const char *name, *help;
    } fam[] = {
        {"cqrsd_worker_held", "1 while this worker runs the projection"},
        {"cqrsd_worker_position", "Position the projection has applied"},
        {"cqrsd_worker_lag_events", "Events between the head and it"},
        {"cqrsd_worker_lag_seconds", "Age of the first event not applied"},
        {"cqrsd_worker_consumer_pending",
         "Messages its JetStream consumer has not delivered yet"},
        {"cqrsd_worker_consumer_ack_pending",
         "Messages delivered and not acknowledged"},
        {"cqrsd_worker_consumer_redelivered",
         "Messages delivered more than once and pending"},
    };
    project_view *v = arg;
    int n = cq_engine_count(v->e);

    for (size_t f = 0; f < sizeof fam / sizeof fam[0]; f++) {
        cq_metrics_gauge_family(out, fam[f].name, fam[f].help);
        for (int i = 0; i < n; i++) {
            cq_projection_status st;
            cq_worker_stats ws;
            char esc[256], labels[300];
            double val;
            if (!given(v, i))
                continue;
            cq_engine_status(v->e, i, &st);
            cq_worker_get_stats(v->w, i, &ws);
            cq_metrics_label_escape(st.name, esc, sizeof esc);
            snprintf(labels, sizeof labels, "projection=\"%s\"", esc);
            val = f == 0   ? st.runs_here
                  : f == 1 ? (double)st.position
                  : f == 2 ? (double)st.lag_events
                  : f == 3 ? st.lag_seconds
                  : f == 4 ? (double)ws.pending
                  : f == 5 ? (double)ws.ack_pending
                           : (double)ws.redelivered;
            cq_metrics_gauge(out, fam[f].name, labels, val);
        }
    }
}

int cq_bus_cli_project(int argc, char **argv)
{
    cq_bus_http *http = NULL;
    const char *listen = NULL;
    project_view view;
    cq_worker_config wc = {0};
    cq_store_config sc = {.sync_full = 1, .connections = 2};
    cq_engine_config ec = {0};
    const char *names[PROJECT_MAX + 1];
    const char *domains[CQ_MODULES_MAX];
    size_t ndomains = 0;
    int nnames = 0;
    const char *read_store = NULL, *store_uri = NULL, *dir = NULL;
    cq_modules *mods = NULL;
    cq_store *store = NULL;
    cq_worker *worker = NULL;
    cq_engine *engine = NULL;
    cq_engine_source src;
    char err[512], shown[512];
    sigset_t sigs;
    int sig = 0, status = 2, rc;

    for (int i = 2; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (v == NULL) {
            fprintf(stderr,
                    "cqrsd: project: %s: unknown option or missing value\n", a);
            return 2;
        }
        if (strcmp(a, "--bus") == 0)
            wc.bus = v;
        else if (strcmp(a, "--read-store") == 0)
            read_store = v;
        else if (strcmp(a, "--store") == 0)
            store_uri = v;
        else if (strcmp(a, "--stream") == 0)
            wc.stream = v;
        else if (strcmp(a, "--projections") == 0)
            dir = v;
        else if (strcmp(a, "--listen") == 0)
            listen = v;
        else if (strcmp(a, "--projection") == 0) {
            if (nnames == PROJECT_MAX) {
                fprintf(stderr, "cqrsd: project: at most %d --projection\n",
                        PROJECT_MAX);
                return 2;
            }
            names[nnames++] = v;
        } else if (strcmp(a, "--domain") == 0) {
            if (ndomains == CQ_MODULES_MAX) {
                fprintf(stderr, "cqrsd: project: at most %d --domain\n",
                        CQ_MODULES_MAX);
                return 2;
            }
            domains[ndomains++] = v;
        } else if (strcmp(a, "--batch") == 0) {
            char *end;
            long b = strtol(v, &end, 10);
            if (*end != '\0' || b < 1 || b > 1000) {
                fprintf(stderr, "cqrsd: project: --batch needs 1..1000\n");
                return 2;
            }
            wc.batch = (int)b;
        } else {
            fprintf(stderr, "cqrsd: project: unknown option %s\n", a);
            return 2;
        }
        i++;
    }
    names[nnames] = NULL;
    if (wc.bus == NULL || read_store == NULL || !cq_pg_is_uri(read_store) ||
        (store_uri != NULL && !cq_pg_is_uri(store_uri))) {
        fprintf(stderr, "cqrsd: project: needs --bus nats://HOST:PORT and "
                        "--read-store (and --store, if given) as PostgreSQL "
                        "URIs\n");
        return 2;
    }
    if (store_uri == NULL)
        store_uri = read_store;
    if (wc.batch == 0)
        wc.batch = 100;
    cq_pg_redact(read_store, shown, sizeof shown);

    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);

    if (cq_modules_open(domains, ndomains, &mods, err, sizeof err) != CQ_OK) {
        fprintf(stderr, "cqrsd: project: %s\n", err);
        return 2;
    }
    sc.uri = store_uri;
    if (cq_store_open(&sc, &store, err, sizeof err) != CQ_OK) {
        fprintf(stderr, "cqrsd: project: cannot open the event store: %s\n",
                err);
        goto done;
    }
    if (cq_worker_new(&wc, &worker, err, sizeof err) != CQ_OK) {
        fprintf(stderr, "cqrsd: project: %s\n", err);
        goto done;
    }
    src = cq_worker_source(worker);
    ec.batch = wc.batch;
    ec.readers = 1;
    ec.domain = cq_modules_domain(mods);
    ec.read_store = read_store;
    ec.store_uri = store_uri;
    ec.source = &src;
    ec.run = nnames > 0 ? names : NULL;
    rc = cq_engine_new(&ec, store, &engine, err, sizeof err);
    if (rc == CQ_OK)
        rc = cq_modules_load_engine(mods, engine, err, sizeof err);
    if (rc == CQ_OK && dir != NULL)
        rc = cq_engine_load_dir(engine, dir, err, sizeof err);
    for (int i = 0; rc == CQ_OK && i < nnames; i++)
        if (cq_engine_projection(engine, names[i]) < 0 ||
            cq_engine_is_inline(engine,
                                cq_engine_projection(engine, names[i]))) {
            snprintf(err, sizeof err,
                     "--projection %s: no asynchronous projection of that "
                     "name",
                     names[i]);
            rc = CQ_EINVAL;
        }
    if (rc == CQ_OK)
        rc = cq_engine_start(engine, err, sizeof err);
    if (rc != CQ_OK) {
        fprintf(stderr, "cqrsd: project: %s\n", err);
        goto done;
    }
    view = (project_view){engine, worker, nnames > 0 ? names : NULL};
    if (listen != NULL &&
        cq_bus_http_start(listen, project_ready, project_metrics, &view, &http,
                          err, sizeof err) != CQ_OK) {
        fprintf(stderr, "cqrsd: project: %s\n", err);
        goto done;
    }
    if (http != NULL)
        fprintf(stderr, "cqrsd: project: HTTP on %s (port %u)\n", listen,
                cq_bus_http_port(http));
    fprintf(stderr,
            "cqrsd: project: applying %s from %s (stream %s) into %s, "
            "batches of %d\n",
            nnames > 0 ? "the projections named"
                       : "every asynchronous "
                         "projection",
            wc.bus, wc.stream ? wc.stream : CQ_BUS_STREAM, shown, wc.batch);
    while (sigwait(&sigs, &sig) != 0)
        ;
    fprintf(stderr, "cqrsd: project: %s: stopping\n",
            sig == SIGINT ? "SIGINT" : "SIGTERM");
    status = 0;
done:
    cq_bus_http_stop(http); /* before what its callbacks read */
    cq_engine_stop(engine);
    cq_engine_free(engine);
    cq_worker_free(worker);
    cq_store_close(store);
    cq_modules_close(mods);
    cq_bus_shutdown();
    return status;
}
