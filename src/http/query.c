/*
 * query.c -- the HTTP routes of the query side: GET /queries/{name} and
 * ?wait_for= on commands. Parameters are parsed and checked here and
 * answers sent (ETag, 304, Warning: 110); what a query means -- the
 * position it waits for, the waits, running it, its meta -- is
 * src/query (query.h, and its README for the protocol).
 *
 * Protocol of one query (MHD threads):
 *   1. find the declared query; check its parameters (declared types and
 *      bounds) and the consistency parameters: min_position, min_version
 *      (keyed queries), wait_ms (0-30000, default 500), consistency
 *      (eventual | strong; strong for keyed queries only);
 *   2. cq_query_resolve works out the position to wait for;
 *   3. if there is one not reached yet, suspend the connection and
 *      register a waiter (cq_query_wait_target), whose callback resumes
 *      it, on a commit or at the deadline;
 *   4. answer (cq_query_answer); after a timeout with "stale": true, a
 *      warning in meta and a `Warning: 110` header.
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

/* Suspend q until its target is reached or the deadline. */
static enum MHD_Result start_wait(request *q)
{
    int rc;

    q->waiting = 1;
    if (q->wait_t0 == 0)
        q->wait_t0 = cq_mono_ns();
    atomic_fetch_add(&q->srv->waiting, 1);
    MHD_suspend_connection(q->conn);
    rc = cq_query_wait_target(q->srv->engine, &q->t, remaining_ms(q), on_ready,
                              q, &q->wait);
    if (rc != CQ_WAIT_PENDING) {
        /* already there (for a missing version: look again), or no
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
    const cq_decl_query *qd = q->query;
    json_t *data = NULL, *meta = NULL, *doc;
    int64_t position = 0;
    char err[512] = "", etag[40];
    int rc, stale = 0;

    rc = cq_query_answer(q->srv->engine, &q->t, qd,
                         (const char *const *)q->values, q->timed_out, &data,
                         &meta, &position, &stale, err, sizeof err);
    if (rc != CQ_OK)
        return cq_http_send_problem(q->conn, 503, "read-model-unavailable",
                                    NULL, "query %s failed: %s", qd->name, err);
    if (data == NULL) {
        /* a read model behind the head (catching up at start, or lagging)
         * may not have what is asked for yet: say how far it is */
        int64_t at = cq_engine_position(q->srv->engine, q->t.projection, NULL);
        int64_t head = cq_engine_head(q->srv->engine);
        char behind[160] = "";
        if (!q->t.strong && at < head)
            snprintf(behind, sizeof behind,
                     " (its read model is at position %lld, %lld events "
                     "behind the head: it may not have applied them yet)",
                     (long long)at, (long long)(head - at));
        return cq_http_send_problem(q->conn, 404, "not-found", NULL,
                                    "query %s found nothing%s%s%s", qd->name,
                                    q->t.stream_id ? " for " : "",
                                    q->t.stream_id ? q->t.stream_id : "",
                                    behind);
    }
    snprintf(etag, sizeof etag, "\"%s%lld\"", q->t.strong ? "s" : "",
             (long long)position);
    if (!q->timed_out && etag_matches(q->conn, etag)) {
        const char *const hdr[][2] = {{MHD_HTTP_HEADER_ETAG, etag}};
        json_decref(data);
        json_decref(meta);
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
    doc = json_pack("{s:o,s:o}", "data", data, "meta", meta);
    {
        const char *const hdr[][2] = {
            {MHD_HTTP_HEADER_ETAG, etag},
            {stale ? "Warning" : NULL, STALE_WARNING},
        };
        char *text =
            doc ? json_dumps(doc, JSON_COMPACT | JSON_REAL_PRECISION(6)) : NULL;
        json_decref(doc);
        return cq_http_send_with(q->conn, 200, "application/json", text, hdr,
                                 2);
    }
}

/* Work out q->t.position (cq_query_resolve). 1: wait for it; 0: nothing
 * to wait for; -1: answered (error queued in *ret). */
static int resolve_target(request *q, enum MHD_Result *ret)
{
    char err[256] = "";
    int wait = 0;

    if (cq_query_resolve(q->srv->engine, &q->t, &wait, err, sizeof err) !=
        CQ_OK) {
        *ret = cq_http_send_problem(q->conn, 503, "store-unavailable", NULL,
                                    "%s", err);
        return -1;
    }
    return wait;
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

    q->t.min_position = q->t.min_version = -1;
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
                           &q->t.min_position, &ret) ||
        !cq_http_param_int(q, "min_version", -1, 1, INT64_MAX,
                           &q->t.min_version, &ret))
        return ret;
    consistency = MHD_lookup_connection_value(q->conn, MHD_GET_ARGUMENT_KIND,
                                              "consistency");
    if (consistency != NULL && strcmp(consistency, "eventual") != 0 &&
        strcmp(consistency, "strong") != 0)
        return cq_http_bad_param(q->conn, "consistency",
                                 "must be eventual or strong");
    q->t.strong = consistency != NULL && strcmp(consistency, "strong") == 0;
    if ((q->t.strong || q->t.min_version >= 1) && qd->stream == NULL)
        return cq_http_bad_param(q->conn,
                                 q->t.strong ? "consistency" : "min_version",
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
            if (p->def != NULL && q->values[i] == NULL)
                cq_errors_add(errs, p->name, "out of memory");
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
    q->t.projection = q->projection;
    q->t.stream_id = qd->stream != NULL ? q->stream_id : NULL;
    q->deadline_ns = cq_mono_ns() + (uint64_t)q->wait_ms * 1000000;
    w = resolve_target(q, &ret);
    if (w < 0)
        return ret;
    if (w && atomic_load(&q->srv->waiting) >= q->srv->max_waiters) {
        /* bounded waiters (--max-waiters): refuse, do not queue */
        const char *const hdr[][2] = {{MHD_HTTP_HEADER_RETRY_AFTER, "1"}};
        return cq_http_send_with(
            q->conn, 503, CQ_PROBLEM_CONTENT_TYPE,
            cq_problem_text(503, "too-many-waiters", NULL,
                            "%d queries are waiting already; try again",
                            q->srv->max_waiters),
            hdr, 1);
    }
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
            {q->w.replayed ? NULL : "Command-Id", q->w.command_id},
        };
        return cq_http_send_with(q->conn, q->w.status, "application/json", text,
                                 hdr, 4);
    }
}

enum MHD_Result cq_http_wait_for_command(request *q)
{
    q->sent_written = 1;
    memset(&q->t, 0, sizeof q->t);
    q->t.projection = q->projection;
    q->t.min_position = q->t.min_version = -1;
    q->t.position = q->w.position;
    q->deadline_ns = cq_mono_ns() + (uint64_t)q->wait_ms * 1000000;
    if (cq_engine_position(q->srv->engine, q->projection, NULL) >=
        q->t.position)
        return send_command_answer(q);
    if (atomic_load(&q->srv->waiting) >= q->srv->max_waiters) {
        q->timed_out = 1; /* committed: answer it, marked stale, unwaited */
        return send_command_answer(q);
    }
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
    if (!q->timed_out && q->t.min_version >= 1) {
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
