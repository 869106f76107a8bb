/*
 * query.c -- GET /queries/{name} and ?wait_for= on commands: answers from
 * read models that say how fresh they are, and waits for freshness without
 * blocking a thread.
 *
 * Protocol of one query (MHD threads):
 *   1. find the declared query; check its parameters (declared types and
 *      bounds) and the consistency parameters: min_position, min_version
 *      (keyed queries), wait_ms (0-30000, default 500), consistency
 *      (eventual | strong; strong for keyed queries only); an inline
 *      projection's answer says "inline" (its rows commit with the events);
 *   2. work out the position to wait for: min_position, and the position
 *      of the stream's event at min_version (if the stream is not that
 *      long yet: wait for a commit that writes the stream, and look
 *      again; commits of other streams do not wake it);
 *   3. if the projection (for consistency=strong: the event store's head)
 *      is there, answer; else suspend the connection and register a
 *      waiter (wait.h), woken by the projection's (the writer's) commit or
 *      by the deadline;
 *   4. answer from the read model, or for consistency=strong replay the
 *      stream into a private database and answer from it (engine.c); after
 *      a timeout with "stale": true, a warning in meta and a
 *      `Warning: 110` header.
 * Answers carry ETag "<position>" ("s<position>" for strong reads); a
 * matching If-None-Match gets 304.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/base.h"
#include "base/problem.h"
#include "base/errors.h"
#include "http/http.h"

#define MAX_WAIT_MS 30000
#define STALE_WARNING "110 - \"Response is Stale\""

/* A waiter fired: let MHD call us again (any thread). */
static void on_ready(void *arg)
{
    request *q = arg;
    MHD_resume_connection(q->conn);
}

static int64_t remaining_ms(const request *q)
{
    uint64_t now = cq_mono_ns();
    return now >= q->deadline_ns ? 0
                                 : (int64_t)((q->deadline_ns - now) / 1000000);
}

/* Suspend q until its projection reaches q->target or the deadline. */
static enum MHD_Result start_wait(request *q)
{
    int rc;

    q->waiting = 1;
    if (q->wait_t0 == 0)
        q->wait_t0 = cq_mono_ns();
    atomic_fetch_add(&q->srv->waiting, 1);
    MHD_suspend_connection(q->conn);
    if (q->version_missing)
        rc = cq_engine_wait_stream(
            q->srv->engine, q->strong ? CQ_ENGINE_HEAD : q->projection,
            q->stream_id, q->min_version, q->version_seen, remaining_ms(q),
            on_ready, q, &q->wait);
    else
        rc = cq_engine_wait(
            q->srv->engine, q->strong ? CQ_ENGINE_HEAD : q->projection,
            q->wait_target, remaining_ms(q), on_ready, q, &q->wait);
    if (rc != 0) {
        /* already there (1; for a missing version: look again), or no
         * waiting possible now (shutdown, no memory): answer with what
         * there is */
        q->timed_out = rc < 0;
        MHD_resume_connection(q->conn);
    }
    return MHD_YES;
}

/* ---- answering a query ----------------------------------------------------
 */

static int etag_matches(struct MHD_Connection *c, const char *etag)
{
    const char *inm =
        MHD_lookup_connection_value(c, MHD_HEADER_KIND, "If-None-Match");
    if (inm == NULL)
        return 0;
    if (strcmp(inm, "*") == 0)
        return 1;
    return strstr(inm, etag) != NULL;
}

static enum MHD_Result answer(request *q)
{
    cq_engine *e = q->srv->engine;
    const cq_decl_query *qd = q->query;
    const char *stream = qd->stream ? q->stream_id : NULL;
    cq_freshness f;
    json_t *data = NULL, *meta, *doc;
    int64_t sv = 0;
    char err[512] = "", etag[40];
    int demanded = q->min_position >= 0 || q->min_version >= 1;
    int rc, stale;

    rc = q->strong
             ? cq_engine_run_strong(e, q->projection, qd,
                                    (const char *const *)q->values, stream,
                                    &data, &f, &sv, err, sizeof err)
             : cq_engine_run_query(e, q->projection, qd,
                                   (const char *const *)q->values, stream,
                                   &data, &f, &sv, err, sizeof err);
    if (rc != CQ_OK)
        return cq_http_send_problem(q->conn, 503, "read-model-unavailable",
                                    NULL, "query %s failed: %s", qd->name, err);
    if (data == NULL)
        return cq_http_send_problem(
            q->conn, 404, "not-found", NULL, "query %s found nothing%s%s",
            qd->name, stream ? " for " : "", stream ? stream : "");
    snprintf(etag, sizeof etag, "\"%s%lld\"", q->strong ? "s" : "",
             (long long)f.position);
    if (!q->timed_out && etag_matches(q->conn, etag)) {
        const char *const hdr[][2] = {{MHD_HTTP_HEADER_ETAG, etag}};
        json_decref(data);
        struct MHD_Response *r = MHD_create_response_from_buffer(
            0, (void *)"", MHD_RESPMEM_PERSISTENT);
        enum MHD_Result ret;
        if (r == NULL)
            return MHD_NO;
        MHD_add_response_header(r, hdr[0][0], hdr[0][1]);
        ret = MHD_queue_response(q->conn, 304, r);
        MHD_destroy_response(r);
        return ret;
    }
    stale = f.failed || q->timed_out ||
            (!demanded && !q->strong && f.lag_events > 0);
    meta = json_pack("{s:s,s:I,s:I,s:f,s:b,s:s}", "projection",
                     cq_engine_projection_name(e, q->projection), "position",
                     (json_int_t)f.position, "lag_events",
                     (json_int_t)f.lag_events, "lag_ms", f.lag_ms, "stale",
                     stale, "consistency",
                     q->strong                               ? "strong"
                     : cq_engine_is_inline(e, q->projection) ? "inline"
                                                             : "eventual");
    if (meta != NULL && stream != NULL)
        json_object_set_new(meta, "stream_version", json_integer(sv));
    if (meta != NULL && q->timed_out)
        json_object_set_new(
            meta, "warning",
            json_string(
                "the read model did not reach the requested position within "
                "wait_ms; this answer may be stale"));
    else if (meta != NULL && f.failed)
        json_object_set_new(
            meta, "warning",
            json_string("the projection has failed and is not being updated"));
    doc = json_pack("{s:o,s:o}", "data", data, "meta", meta);
    {
        const char *const hdr[][2] = {
            {MHD_HTTP_HEADER_ETAG, etag},
            {stale ? "Warning" : NULL, STALE_WARNING},
        };
        char *text = doc ? json_dumps(doc, JSON_COMPACT | JSON_REAL_PRECISION(6)) : NULL;
        json_decref(doc);
        return cq_http_send_with(q->conn, 200, "application/json", text, hdr,
                                 2);
    }
}

/* Work out q->target from min_position/min_version. 1: wait for it; 0:
 * nothing to wait for; -1: answered (error queued in *ret). */
static int resolve_target(request *q, enum MHD_Result *ret)
{
    cq_engine *e = q->srv->engine;
    int64_t pos;
    char err[256] = "";
    int rc;

    q->wait_target = q->min_position > 0 ? q->min_position : 0;
    q->version_missing = 0;
    if (q->min_version >= 1) {
        /* read before looking: a commit after it may hold the version */
        int64_t seen = q->strong ? cq_engine_head(e)
                                 : cq_engine_position(e, q->projection, NULL);
        rc = cq_engine_version_position(e, q->stream_id, q->min_version, &pos,
                                        err, sizeof err);
        if (rc == CQ_OK) {
            if (pos > q->wait_target)
                q->wait_target = pos;
        } else if (rc == CQ_ENOTFOUND) {
            /* not written yet: wait for a commit of this stream, then
             * look again (min_position too) */
            q->version_missing = 1;
            q->version_seen = seen;
            return 1;
        } else {
            *ret = cq_http_send_problem(q->conn, 503, "store-unavailable", NULL,
                                        "%s", err);
            return -1;
        }
    }
    /* a strong read replays the event store: wait for its head */
    return q->wait_target > 0 &&
           (q->strong
                ? cq_engine_head(e)
                : cq_engine_position(e, q->projection, NULL)) < q->wait_target;
}

/* One declared parameter's rule in words, for a 400. */
static void describe(const cq_decl_param *p, char *buf, size_t cap)
{
    switch (p->type) {
    case CQ_PARAM_ID:
        snprintf(buf, cap, "must be 1 to 64 characters of [A-Za-z0-9_-]");
        break;
    case CQ_PARAM_TEXT:
        snprintf(buf, cap, "must be %lld to %lld characters of text",
                 (long long)p->min, (long long)p->max);
        break;
    case CQ_PARAM_INT:
    default:
        snprintf(buf, cap, "must be an integer from %lld to %lld",
                 (long long)p->min, (long long)p->max);
        break;
    }
}

enum MHD_Result cq_http_query(request *q)
{
    cq_engine *e = q->srv->engine;
    const char *allowed[CQ_QUERY_MAX_PARAMS + 5];
    const cq_decl_query *qd;
    const char *consistency;
    enum MHD_Result ret = MHD_NO;
    cq_errors *errs = NULL;
    size_t n = 0;
    int w;

    q->min_position = q->min_version = -1;
    qd = e ? cq_engine_query(e, q->target, &q->projection) : NULL;
    if (qd == NULL || qd->nparams > CQ_QUERY_MAX_PARAMS)
        return cq_http_send_problem(q->conn, 404, "not-found", NULL,
                                    "there is no query named '%.64s'",
                                    q->target);
    q->query = qd;
    for (size_t i = 0; i < qd->nparams; i++)
        allowed[n++] = qd->params[i].name;
    allowed[n++] = "min_position";
    allowed[n++] = "min_version";
    allowed[n++] = "wait_ms";
    allowed[n++] = "consistency";
    allowed[n] = NULL;
    if (!cq_http_params_ok(q, allowed, &ret) ||
        !cq_http_param_int(q, "wait_ms", 500, 0, MAX_WAIT_MS, &q->wait_ms,
                           &ret) ||
        !cq_http_param_int(q, "min_position", -1, 0, INT64_MAX,
                           &q->min_position, &ret) ||
        !cq_http_param_int(q, "min_version", -1, 1, INT64_MAX, &q->min_version,
                           &ret))
        return ret;
    consistency = MHD_lookup_connection_value(q->conn, MHD_GET_ARGUMENT_KIND,
                                              "consistency");
    if (consistency != NULL && strcmp(consistency, "eventual") != 0 &&
        strcmp(consistency, "strong") != 0)
        return cq_http_bad_param(q->conn, "consistency",
                                 "must be eventual or strong");
    q->strong = consistency != NULL && strcmp(consistency, "strong") == 0;
    if ((q->strong || q->min_version >= 1) && qd->stream == NULL)
        return cq_http_bad_param(q->conn,
                                 q->strong ? "consistency" : "min_version",
                                 "is only for queries about one stream; %s "
                                 "is not",
                                 qd->name);

    errs = cq_errors_new();
    if (errs == NULL)
        return cq_http_send_problem(q->conn, 500, "internal", NULL,
                                    "out of memory");
    for (size_t i = 0; i < qd->nparams; i++) {
        const cq_decl_param *p = &qd->params[i];
        const char *v = MHD_lookup_connection_value(
            q->conn, MHD_GET_ARGUMENT_KIND, p->name);
        char rule[96];
        int64_t iv;

        if (v == NULL && p->required) {
            cq_errors_add(errs, p->name, "is required");
            continue;
        }
        if (v == NULL) {
            q->values[i] = p->def ? strdup(p->def) : NULL;
            continue;
        }
        if (cq_declared_param_check(p, v, strlen(v), &iv) != CQ_OK) {
            describe(p, rule, sizeof rule);
            cq_errors_add(errs, p->name, "%s", rule);
            continue;
        }
        q->values[i] = strdup(v);
        if (q->values[i] == NULL)
            cq_errors_add(errs, p->name, "out of memory");
    }
    if (cq_errors_count(errs) > 0) {
        int k = cq_errors_count(errs);
        ret = cq_http_send_problem(q->conn, 400, "validation-failed",
                                   cq_errors_to_json(errs),
                                   "the query has "
                                   "%d invalid parameter%s",
                                   k, k == 1 ? "" : "s");
        cq_errors_free(errs);
        return ret;
    }
    cq_errors_free(errs);
    if (qd->stream != NULL &&
        cq_declared_stream(qd, (const char *const *)q->values, q->stream_id,
                           sizeof q->stream_id) != CQ_OK)
        return cq_http_send_problem(q->conn, 400, "bad-parameter", NULL,
                                    "the parameters do not make a valid "
                                    "stream id");
    q->deadline_ns = cq_mono_ns() + (uint64_t)q->wait_ms * 1000000;
    w = resolve_target(q, &ret);
    if (w < 0)
        return ret;
    return w ? start_wait(q) : answer(q);
}

/* ---- commands with ?wait_for= ---------------------------------------------
 */

/* Send the writer's answer, marked with how the wait for the projection
 * ended. */
static enum MHD_Result send_command_answer(request *q)
{
    json_t *doc = json_loads(q->w.response, 0, NULL);
    char etag[32];
    char *text;
    int stale = q->timed_out;

    if (doc != NULL) {
        json_object_set_new(doc, "projection",
                            json_string(cq_engine_projection_name(
                                q->srv->engine, q->projection)));
        json_object_set_new(doc, "stale", json_boolean(stale));
    }
    text = doc ? json_dumps(doc, JSON_COMPACT | JSON_REAL_PRECISION(6)) : NULL;
    json_decref(doc);
    snprintf(etag, sizeof etag, "\"%lld\"", (long long)q->w.version);
    {
        const char *const hdr[][2] = {
            {q->w.version > 0 ? MHD_HTTP_HEADER_ETAG : NULL, etag},
            {q->w.replayed ? "Idempotency-Replayed" : NULL, "true"},
            {stale ? "Warning" : NULL, STALE_WARNING},
        };
        return cq_http_send_with(q->conn, q->w.status, "application/json", text,
                                 hdr, 3);
    }
}

enum MHD_Result cq_http_wait_for_command(request *q)
{
    q->sent_written = 1;
    q->wait_target = q->w.position;
    q->deadline_ns = cq_mono_ns() + (uint64_t)q->wait_ms * 1000000;
    if (cq_engine_position(q->srv->engine, q->projection, NULL) >=
        q->wait_target)
        return send_command_answer(q);
    return start_wait(q);
}

/* ---- resuming --------------------------------------------------------------
 */

/* The wait is over: count it in the metrics. */
static void waited(request *q)
{
    cq_histogram_observe(q->srv->query_wait,
                         (double)(cq_mono_ns() - q->wait_t0) / 1e9);
    if (q->timed_out)
        cq_counter_add(q->srv->wait_timeouts, 1);
}

enum MHD_Result cq_http_resumed(request *q)
{
    enum MHD_Result ret = MHD_NO;

    q->waiting = 0;
    atomic_fetch_sub(&q->srv->waiting, 1);
    if (q->route == R_PROJECTIONS)
        return cq_http_control_resumed(q);
    if (q->wait != NULL) {
        if (!cq_wait_reached(q->wait))
            q->timed_out = 1;
        cq_wait_release(q->wait);
        q->wait = NULL;
    }
    if (q->sent_written) {
        waited(q);
        return send_command_answer(q);
    }
    if (!q->timed_out && q->min_version >= 1) {
        /* the stream may have been too short: look again */
        int w = resolve_target(q, &ret);
        if (w < 0)
            return ret;
        if (w) {
            if (remaining_ms(q) == 0)
                q->timed_out = 1;
            else
                return start_wait(q);
        }
    }
    waited(q);
    return answer(q);
}

void cq_http_query_free(request *q)
{
    for (int i = 0; i < CQ_QUERY_MAX_PARAMS; i++)
        free(q->values[i]);
    if (q->waiting) {
        /* resumed, but its client had gone: MHD closed it without
         * calling back, and shutdown must not wait for its answer */
        q->waiting = 0;
        atomic_fetch_sub(&q->srv->waiting, 1);
    }
    cq_wait_release(q->wait);
    cq_control_release(q->control);
}
