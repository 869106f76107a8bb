/*
 * ops.c -- operations routes: projection status and control, liveness,
 * readiness.
 *
 *   GET  /projections                      every projection's status
 *   GET  /projections/{name}               one projection's status
 *   POST /projections/{name}/{operation}   pause, resume, reset, retry, skip,
 *                                          rebuild (202: it runs on)
 *   GET  /healthz                          200 while the server answers,
 *                                          with the head position it knows
 *   GET  /readyz                           200 ready / 503 not ready (the
 *                                          store cannot be read or refuses
 *                                          writes, a projection failed or
 *                                          lags, an inline projection is
 *                                          still catching up at start)
 *
 * Control operations are carried out by the projector thread (engine.c),
 * one at a time in the order asked. Each request is an operation of its
 * own: its connection is suspended (like a waiting query's) until the
 * projector has carried out that operation and resumes it, and it is
 * answered with that operation's result. No MHD thread waits for the
 * projector meanwhile.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/base.h"
#include "http/http.h"

/* Milliseconds since the epoch as RFC 3339 text (new reference). */
static json_t *time_json(int64_t ms)
{
    char buf[32];

    cq_format_time(ms, buf);
    return json_string(buf);
}

/* One projection's status as JSON (new reference, NULL on no memory). */
static json_t *status_json(cq_engine *e, int i)
{
    cq_projection_status st;
    json_t *err = json_null(), *rb = json_null(), *last = json_null(), *doc;
    /* a lag that cannot be read is null, never a made-up 0 */
    int lag_known = cq_engine_status(e, i, &st) == CQ_OK;

    if (st.failed)
        err = json_pack("{s:I,s:s,s:s}", "position",
                        (json_int_t)st.error_position, "event_type",
                        st.error_event, "message", st.error);
    if (st.rebuilding)
        rb = json_pack(
            "{s:s,s:o,s:I,s:I,s:f,s:o}", "reason", st.rebuild.reason,
            "started_at", time_json(st.rebuild.started_ms), "events_done",
            (json_int_t)st.rebuild.done, "events_total",
            (json_int_t)st.rebuild.total, "events_per_second",
            st.rebuild.events_per_second, "eta_seconds",
            st.rebuild.eta_seconds >= 0 ? json_real(st.rebuild.eta_seconds)
                                        : json_null());
    if (st.last_rebuild.outcome[0] != '\0')
        last = json_pack(
            "{s:s,s:I,s:o,s:o,s:I,s:s?}", "outcome", st.last_rebuild.outcome,
            "version", (json_int_t)st.last_rebuild.version, "started_at",
            time_json(st.last_rebuild.started_ms), "finished_at",
            time_json(st.last_rebuild.finished_ms), "events_replayed",
            (json_int_t)st.last_rebuild.events, "error",
            st.last_rebuild.error[0] ? st.last_rebuild.error : NULL);
    doc = json_pack(
        "{s:s,s:I,s:s,s:s,s:I,s:I,s:I,s:o,s:o}", "name", st.name, "version",
        (json_int_t)st.version, "mode", st.is_inline ? "inline" : "async",
        "status", st.status, "position", (json_int_t)st.position, "head",
        (json_int_t)st.head, "lag_events", (json_int_t)st.lag_events,
        "lag_seconds", lag_known ? json_real(st.lag_seconds) : json_null(),
        "last_error", err);
    if (doc != NULL) {
        /* the tables being served: the previous definition's (0 when it
         * is not known) until a rebuild to a new one swaps */
        json_object_set_new(doc, "serving_version",
                            json_integer(st.serving_version));
        /* events skipped so far: rows of cq_skipped_events */
        json_object_set_new(doc, "skipped_events", json_integer(st.skipped));
        /* several nodes: whether this one applies it (the others answer
         * its queries, and refuse its control operations) */
        json_object_set_new(doc, "runs_here", json_boolean(st.runs_here));
        json_object_set_new(doc, "rebuild", rb);
        json_object_set_new(doc, "last_rebuild", last);
    } else {
        json_decref(rb);
        json_decref(last);
    }
    return doc;
}

/* The projector has carried out q's operation (projector thread). */
static void on_control_done(void *arg)
{
    request *q = arg;
    MHD_resume_connection(q->conn);
}

enum MHD_Result cq_http_projections(request *q, const char *method)
{
    static const char *const allowed[] = {NULL};
    cq_engine *e = q->srv->engine;
    enum MHD_Result ret = MHD_NO;
    char name[80], op[32] = "";
    const char *slash;
    int i;

    if (!cq_http_params_ok(q, allowed, &ret))
        return ret;
    if (q->target[0] == '\0') { /* GET /projections */
        json_t *list;
        if (strcmp(method, MHD_HTTP_METHOD_GET) != 0)
            return cq_http_send_method_not_allowed(q->conn, method,
                                                   "GET, HEAD");
        list = json_array();
        for (i = 0; e != NULL && list != NULL && i < cq_engine_count(e); i++)
            json_array_append_new(list, status_json(e, i));
        return cq_http_send_json(q->conn, 200,
                                 list ? json_pack("{s:o}", "projections", list)
                                      : NULL);
    }
    slash = strchr(q->target, '/');
    if (slash == NULL) {
        snprintf(name, sizeof name, "%.64s", q->target);
    } else {
        snprintf(name, sizeof name, "%.*s",
                 (int)(slash - q->target < 64 ? slash - q->target : 64),
                 q->target);
        snprintf(op, sizeof op, "%.31s", slash + 1);
    }
    i = e ? cq_engine_projection(e, name) : -1;
    if (i < 0)
        return cq_http_send_problem(q->conn, 404, "not-found", NULL,
                                    "there is no projection named '%s'", name);
    if (slash == NULL) {
        if (strcmp(method, MHD_HTTP_METHOD_GET) != 0)
            return cq_http_send_method_not_allowed(q->conn, method,
                                                   "GET, HEAD");
        return cq_http_send_json(q->conn, 200, status_json(e, i));
    }
    if (strcmp(method, MHD_HTTP_METHOD_POST) != 0)
        return cq_http_send_method_not_allowed(q->conn, method, "POST");
    /* suspend first: the projector may resume it before start returns */
    q->control_index = i;
    snprintf(q->control_op, sizeof q->control_op, "%s", op);
    q->waiting = 1;
    atomic_fetch_add(&q->srv->waiting, 1);
    MHD_suspend_connection(q->conn);
    q->control_rc =
        cq_engine_control_start(e, i, op, on_control_done, q, &q->control,
                                q->control_err, sizeof q->control_err);
    if (q->control_rc != CQ_OK)
        MHD_resume_connection(q->conn); /* refused at once */
    return MHD_YES;
}

enum MHD_Result cq_http_control_resumed(request *q)
{
    cq_engine *e = q->srv->engine;
    const char *op = q->control_op;
    char err[512];
    int i = q->control_index, rc;

    if (q->control != NULL) {
        rc = cq_control_result(q->control, err, sizeof err);
        cq_control_release(q->control);
        q->control = NULL;
    } else {
        rc = q->control_rc;
        snprintf(err, sizeof err, "%s", q->control_err);
    }
    switch (rc) {
    case CQ_OK:
        /* a rebuild goes on in the background: watch its status */
        return cq_http_send_json(
            q->conn, strcmp(op, "rebuild") == 0 ? 202 : 200, status_json(e, i));
    case CQ_EINVAL:
        return cq_http_send_problem(q->conn, 404, "not-found", NULL,
                                    "%s; projections know pause, resume, "
                                    "reset, retry, skip and rebuild",
                                    err);
    case CQ_ECONFLICT:
        return cq_http_send_problem(q->conn, 409, "conflict", NULL, "%s", err);
    default:
        return cq_http_send_problem(q->conn, 503, "unavailable", NULL, "%s: %s",
                                    op, err);
    }
}

enum MHD_Result cq_http_readyz(request *q)
{
    static const char *const allowed[] = {NULL};
    cq_engine *e = q->srv->engine;
    enum MHD_Result ret = MHD_NO;
    json_t *reasons, *doc;
    int64_t head = 0;
    double max_lag = 0;
    char refused[512] = "";
    int ready, writable;

    if (!cq_http_params_ok(q, allowed, &ret))
        return ret;
    /* made only after the parameters passed: a refused one leaks nothing */
    reasons = json_array();
    if (reasons == NULL)
        return cq_http_send_json(q->conn, 500, NULL);
    if (cq_store_head_position(q->srv->store, &head) != CQ_OK)
        json_array_append_new(reasons,
                              json_string("the event store cannot be read"));
    writable = q->srv->writer == NULL ||
               cq_writer_writable(q->srv->writer, refused, sizeof refused);
    if (!writable) {
        char reason[600];
        snprintf(reason, sizeof reason,
                 "the event store refuses writes (last write failed: %s)",
                 refused);
        json_array_append_new(reasons, json_string(reason));
    }
    for (int i = 0; e != NULL && i < cq_engine_count(e); i++) {
        cq_projection_status st;
        char why[600];
        if (cq_engine_status(e, i, &st) != CQ_OK) {
            snprintf(why, sizeof why,
                     "the lag of projection %s cannot be read from the event "
                     "store",
                     st.name);
            json_array_append_new(reasons, json_string(why));
        }
        if (st.lag_seconds > max_lag)
            max_lag = st.lag_seconds;
        if (st.failed) {
            snprintf(why, sizeof why, "projection %s failed at position %lld",
                     st.name, (long long)st.error_position);
            json_array_append_new(reasons, json_string(why));
        } else if (st.catching_up) {
            /* commands wait in the writer's queue meanwhile */
            snprintf(why, sizeof why,
                     "inline projection %s is catching up (at position %lld "
                     "of %lld); commands wait until it is current%s%.200s",
                     st.name, (long long)st.position, (long long)st.head,
                     st.error[0] ? ": " : "", st.error);
            json_array_append_new(reasons, json_string(why));
        } else if (st.lag_seconds > q->srv->ready_max_lag_s) {
            snprintf(why, sizeof why,
                     "projection %s is %.1f s behind (more than %g s)", st.name,
                     st.lag_seconds, q->srv->ready_max_lag_s);
            json_array_append_new(reasons, json_string(why));
        }
    }
    ready = json_array_size(reasons) == 0;
    doc = json_pack("{s:s,s:I,s:b,s:f,s:f,s:o}", "status",
                    ready ? "ready" : "not_ready", "head_position",
                    (json_int_t)head, "store_writable", writable,
                    "max_lag_seconds", max_lag, "lag_bound_seconds",
                    q->srv->ready_max_lag_s, "reasons", reasons);
    return cq_http_send_json(q->conn, ready ? 200 : 503, doc);
}

enum MHD_Result cq_http_healthz(request *q)
{
    static const char *const allowed[] = {NULL};
    enum MHD_Result ret = MHD_NO;
    int64_t head;

    if (!cq_http_params_ok(q, allowed, &ret))
        return ret;
    head = cq_writer_head(q->srv->writer);

    /* several nodes: the head this node has heard of, others' commits
     * too, not only its own writer's */
    if (q->srv->engine != NULL && cq_engine_head(q->srv->engine) > head)
        head = cq_engine_head(q->srv->engine);
    return cq_http_send_json(q->conn, 200,
                             json_pack("{s:s,s:I}", "status", "ok",
                                       "head_position", (json_int_t)head));
}
