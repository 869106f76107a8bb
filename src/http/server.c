/*
 * server.c -- HTTP routing, request validation and answers (see server.h).
 *
 * Life of one request (struct request, MHD's per-request pointer):
 *   0. request line read: on_uri() makes the request and notes what MHD
 *      would hide from us (an encoded NUL that cuts the URL, more query
 *      parameters than any route takes: those are dropped before MHD
 *      stores them, as storing them can exhaust the connection's memory);
 *   1. first call (headers read): framing (Content-Length against
 *      Transfer-Encoding), route and method are checked, and so are
 *      Content-Length and Content-Type for routes that take a body, so a
 *      hopeless request is answered before its body is read; HEAD is
 *      answered as GET (MHD leaves the body out);
 *   2. body chunks are copied into q->body up to the body limit; beyond it
 *      they are discarded (and past HARD_BODY_LIMIT the connection is
 *      closed) and the answer is 413;
 *   3. last call: the request is validated completely (query parameters,
 *      headers, JSON shape); reads are answered at once, writes are handed
 *      to the writer after the connection is suspended;
 *   4. the writer's done() callback marks the request answered and resumes
 *      the connection; MHD calls us once more and we send the answer;
 *   5. MHD's completion callback frees the request.
 *
 * Threads: MHD's pool threads run every callback except on_written(),
 * which runs on the writer thread and only stores the `answered` flag and
 * resumes the connection (both safe from any thread). `pending` counts the
 * requests handed to the writer and not yet answered, for shutdown.
 */
#include "http/server.h"
#include "http/conns.h"
#include "http/http.h"
#include "base/metrics.h"

#include <microhttpd.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "base/base.h"
#include "base/problem.h"
#include "command/command.h"

#define DEFAULT_BODY_LIMIT (1024 * 1024)
#define HARD_BODY_LIMIT_FACTOR                                                 \
    16 /* discard up to this many limits, then close */
#define MAX_PAGE 1000
#define DEFAULT_PAGE 100
#define DEFAULT_PAGE_BYTES (4 * 1024 * 1024) /* ?max_bytes= of event reads */
#define MIN_PAGE_BYTES 1024
#define MAX_PAGE_BYTES (16 * 1024 * 1024)
#define MAX_APPEND_EVENTS 100
#define MAX_WAIT_MS 30000

/* ---- answers ------------------------------------------------------------ */

/* Send `body` (malloc'd, taken over; NULL means out of memory) with the
 * given status and content type, plus nh extra headers given as
 * name/value pairs in hdr (a NULL name is skipped). */
/* The status of the last answer queued by this thread: MHD runs a
 * request's callback and the answer it queues on one thread, so the
 * command counters (count_command) can learn how a request ended without
 * every error path reporting it. */
static _Thread_local int last_status;

enum MHD_Result cq_http_send_with(struct MHD_Connection *c, int status,
                                  const char *ctype, char *body,
                                  const char *const (*hdr)[2], size_t nh)
{
    static const char oom[] =
        "{\"type\":\"urn:cqrsd:problem:internal\",\"title\":\"Internal "
        "Server Error\",\"status\":500,\"detail\":\"out of memory\"}";
    struct MHD_Response *resp;
    enum MHD_Result ret;

    if (body == NULL) {
        status = 500;
        ctype = CQ_PROBLEM_CONTENT_TYPE;
        nh = 0;
        resp = MHD_create_response_from_buffer(sizeof oom - 1, (void *)oom,
                                               MHD_RESPMEM_PERSISTENT);
    } else {
        resp = MHD_create_response_from_buffer(strlen(body), body,
                                               MHD_RESPMEM_MUST_FREE);
        if (resp == NULL)
            free(body);
    }
    if (resp == NULL)
        return MHD_NO;
    last_status = status;
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, ctype);
    for (size_t i = 0; i < nh; i++)
        if (hdr[i][0] != NULL)
            MHD_add_response_header(resp, hdr[i][0], hdr[i][1]);
    ret = MHD_queue_response(c, (unsigned)status, resp);
    MHD_destroy_response(resp);
    return ret;
}

static enum MHD_Result send_body(struct MHD_Connection *c, int status,
                                 const char *ctype, char *body)
{
    return cq_http_send_with(c, status, ctype, body, NULL, 0);
}

enum MHD_Result cq_http_send_json(struct MHD_Connection *c, int status,
                                  json_t *doc)
{
    char *text =
        doc ? json_dumps(doc, JSON_COMPACT | JSON_REAL_PRECISION(6)) : NULL;
    json_decref(doc);
    return send_body(c, status, "application/json", text);
}

enum MHD_Result cq_http_send_problem(struct MHD_Connection *c, int status,
                                     const char *slug, json_t *errors,
                                     const char *fmt, ...)
{
    char detail[768];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(detail, sizeof detail, fmt, ap);
    va_end(ap);
    return send_body(c, status, CQ_PROBLEM_CONTENT_TYPE,
                     cq_problem_text(status, slug, errors, "%s", detail));
}

static enum MHD_Result send_method_not_allowed(struct MHD_Connection *c,
                                               const char *method,
                                               const char *allow)
{
    char *text =
        cq_problem_text(405, "method-not-allowed", NULL,
                        "%s is not allowed here; use %s", method, allow);
    const char *const hdr[][2] = {{MHD_HTTP_HEADER_ALLOW, allow}};
    return cq_http_send_with(c, 405, CQ_PROBLEM_CONTENT_TYPE, text, hdr, 1);
}

/* ---- query parameters ---------------------------------------------------- */

enum MHD_Result cq_http_bad_param(struct MHD_Connection *c, const char *name,
                                  const char *fmt, ...)
{
    char msg[256];
    va_list ap;
    json_t *errors;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    errors = json_pack("[{s:s,s:s}]", "field", name, "message", msg);
    if (errors == NULL) /* a name that is not UTF-8 */
        errors = json_pack("[{s:s,s:s}]", "field", "?", "message", msg);
    return cq_http_send_problem(c, 400, "bad-parameter", errors,
                                "query parameter %.64s %s", name, msg);
}

typedef struct param_check {
    const char *const *allowed;
    unsigned seen; /* bit i: allowed[i] seen */
    char bad[160]; /* first problem, "" if none */
    char key[72];  /* the parameter it is about */
} param_check;

static enum MHD_Result check_param(void *cls, enum MHD_ValueKind kind,
                                   const char *key, const char *value)
{
    param_check *pc = cls;
    unsigned i;

    (void)kind;
    (void)value;
    for (i = 0; pc->allowed[i] != NULL; i++) {
        if (strcmp(key, pc->allowed[i]) == 0) {
            if (pc->seen & (1u << i)) {
                snprintf(pc->key, sizeof pc->key, "%.64s", key);
                snprintf(pc->bad, sizeof pc->bad, "is given more than once");
                return MHD_NO;
            }
            pc->seen |= 1u << i;
            return MHD_YES;
        }
    }
    snprintf(pc->key, sizeof pc->key, "%.64s", key);
    snprintf(pc->bad, sizeof pc->bad, "is not a parameter of this resource");
    return MHD_NO;
}

/* 1 if every query parameter is in `allowed` (NULL-terminated) and none is
 * repeated; else answers 400 and returns 0. */
int cq_http_params_ok(request *q, const char *const *allowed,
                      enum MHD_Result *ret)
{
    param_check pc = {allowed, 0, "", ""};

    MHD_get_connection_values(q->conn, MHD_GET_ARGUMENT_KIND, check_param, &pc);
    if (pc.bad[0] == '\0')
        return 1;
    *ret = cq_http_bad_param(q->conn, pc.key, "%s", pc.bad);
    return 0;
}

/* Parse a non-negative decimal integer with no sign, spaces or excess. */
int cq_http_parse_int(const char *s, int64_t *out)
{
    int64_t v = 0;

    if (s == NULL || *s == '\0')
        return CQ_EINVAL;
    for (; *s; s++) {
        if (*s < '0' || *s > '9')
            return CQ_EINVAL;
        if (v > (INT64_MAX - (*s - '0')) / 10)
            return CQ_EINVAL;
        v = v * 10 + (*s - '0');
    }
    *out = v;
    return CQ_OK;
}

/* Query parameter `name` as an integer in [min, max], or `def` if absent.
 * On a bad value answers 400 and returns 0. */
int cq_http_param_int(request *q, const char *name, int64_t def, int64_t min,
                      int64_t max, int64_t *out, enum MHD_Result *ret)
{
    const char *s =
        MHD_lookup_connection_value(q->conn, MHD_GET_ARGUMENT_KIND, name);
    int64_t v;

    if (s == NULL) {
        *out = def;
        return 1;
    }
    if (cq_http_parse_int(s, &v) != CQ_OK || v < min || v > max) {
        *ret = cq_http_bad_param(q->conn, name,
                                 "must be an integer from "
                                 "%lld to %lld",
                                 (long long)min, (long long)max);
        return 0;
    }
    *out = v;
    return 1;
}

/* ---- headers ------------------------------------------------------------ */

/* 1 if Content-Type is application/json (charset, if any, utf-8). */
static int content_type_ok(struct MHD_Connection *c)
{
    const char *ct = MHD_lookup_connection_value(c, MHD_HEADER_KIND,
                                                 MHD_HTTP_HEADER_CONTENT_TYPE);
    static const char json[] = "application/json";
    const char *p;

    if (ct == NULL)
        return 0;
    while (*ct == ' ' || *ct == '\t')
        ct++;
    if (strncasecmp(ct, json, sizeof json - 1) != 0)
        return 0;
    p = ct + sizeof json - 1;
    while (*p == ' ' || *p == '\t')
        p++;
    if (*p == '\0')
        return 1;
    if (*p != ';')
        return 0;
    for (p++; *p == ' ' || *p == '\t'; p++)
        ;
    if (strncasecmp(p, "charset=", 8) != 0)
        return *p == '\0';
    p += 8;
    if (*p == '"')
        return strncasecmp(p, "\"utf-8\"", 7) == 0 && p[7] == '\0';
    return strncasecmp(p, "utf-8", 5) == 0 &&
           (p[5] == '\0' || p[5] == ' ' || p[5] == ';');
}

/* Idempotency-Key: absent, or 1-255 visible ASCII characters. Copies it
 * into q->w.idem_key. 0 and a 400 answer if malformed. */
static int idem_key_ok(request *q, enum MHD_Result *ret)
{
    const char *k = MHD_lookup_connection_value(q->conn, MHD_HEADER_KIND,
                                                "Idempotency-Key");
    size_t n;

    q->w.idem_key[0] = '\0';
    if (k == NULL)
        return 1;
    n = strlen(k);
    if (n >= 1 && n < CQ_IDEM_KEY_MAX) {
        size_t i;
        for (i = 0; i < n; i++)
            if ((unsigned char)k[i] < 0x21 || (unsigned char)k[i] > 0x7e)
                break;
        if (i == n) {
            memcpy(q->w.idem_key, k, n + 1);
            return 1;
        }
    }
    *ret = cq_http_send_problem(q->conn, 400, "bad-header", NULL,
                                "Idempotency-Key "
                                "must be 1 to 255 visible ASCII characters");
    return 0;
}

/* If-Match: absent (CQ_VERSION_ANY) or "N" with N >= 1, written as the
 * server writes it in ETag: "01" is no version (400), not version 1. */
static int if_match_ok(request *q, int64_t *expected, const char **raw,
                       enum MHD_Result *ret)
{
    const char *v = MHD_lookup_connection_value(q->conn, MHD_HEADER_KIND,
                                                MHD_HTTP_HEADER_IF_MATCH);
    char digits[24];
    size_t n;

    *expected = CQ_VERSION_ANY;
    *raw = "";
    if (v == NULL)
        return 1;
    n = strlen(v);
    if (n >= 3 && n - 2 < sizeof digits && v[0] == '"' && v[n - 1] == '"') {
        memcpy(digits, v + 1, n - 2);
        digits[n - 2] = '\0';
        if (digits[0] != '0' && cq_http_parse_int(digits, expected) == CQ_OK &&
            *expected >= 1) {
            *raw = v;
            return 1;
        }
    }
    *expected = CQ_VERSION_ANY;
    *ret = cq_http_send_problem(q->conn, 400, "bad-header", NULL,
                                "If-Match must be "
                                "a stream version in quotes, like \"3\"");
    return 0;
}

/* ---- bodies ------------------------------------------------------------- */

/* Parse q's body as a JSON object. NULL and a 400 answer otherwise. */
static json_t *parse_body(request *q, enum MHD_Result *ret)
{
    json_error_t jerr;
    json_t *doc;

    if (q->len == 0) {
        *ret =
            cq_http_send_problem(q->conn, 400, "malformed-json", NULL,
                                 "the request body is empty; a JSON object is "
                                 "required");
        return NULL;
    }
    doc = json_loadb(q->body, q->len, JSON_REJECT_DUPLICATES, &jerr);
    if (doc == NULL) {
        *ret = cq_http_send_problem(
            q->conn, 400, "malformed-json", NULL,
            "the body is not valid JSON: %s (line %d, column "
            "%d)",
            jerr.text, jerr.line, jerr.column);
        return NULL;
    }
    if (!json_is_object(doc)) {
        json_decref(doc);
        *ret = cq_http_send_problem(q->conn, 400, "validation-failed", NULL,
                                    "the body must be a JSON object");
        return NULL;
    }
    return doc;
}

/* Answer 400 with the collected field errors. */
static enum MHD_Result send_validation(request *q, const cq_errors *errs)
{
    int n = cq_errors_count(errs);
    return cq_http_send_problem(q->conn, 400, "validation-failed",
                                cq_errors_to_json(errs),
                                "the request has %d invalid "
                                "field%s",
                                n, n == 1 ? "" : "s");
}

/* Canonical hash of a write request (what, where, preconditions, body)
 * into q->w.command_hash; only needed, and only made, with an
 * Idempotency-Key. */
static int hash_request(request *q, const char *what, const char *precond,
                        const json_t *body)
{
    char *canon, *text;
    size_t n;

    if (q->w.idem_key[0] == '\0')
        return CQ_OK;
    canon = json_dumps(body, JSON_COMPACT | JSON_SORT_KEYS);
    if (canon == NULL)
        return CQ_ENOMEM;
    n = strlen(what) + strlen(precond) + strlen(canon) + 3;
    text = malloc(n);
    if (text == NULL) {
        free(canon);
        return CQ_ENOMEM;
    }
    snprintf(text, n, "%s\n%s\n%s", what, precond, canon);
    cq_sha256_hex(text, n - 1, q->w.command_hash);
    free(text);
    free(canon);
    return CQ_OK;
}

/* ---- metrics --------------------------------------------------------------
 */

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
static void count_command(request *q, int status)
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
    int64_t head = 0, wal_events;
    int n = s->engine ? cq_engine_count(s->engine) : 0;
    cq_projection_status *st = n ? calloc((size_t)n, sizeof *st) : NULL;

    /* left out when the store cannot be read: the EventStoreUnreachable
     * alert (ops/prometheus/alerts.yml) looks for its absence */
    if (cq_store_head_position(s->store, &head) == CQ_OK) {
        cq_metrics_gauge_family(out, "event_store_head_position",
                                "Highest committed event position.");
        cq_metrics_gauge(out, "event_store_head_position", NULL, (double)head);
    }
    wal_events = cq_store_wal_bytes(s->store);
    if (wal_events >= 0 || s->engine != NULL) {
        cq_metrics_gauge_family(out, "cqrsd_wal_bytes",
                                "Size of the database's write-ahead log file.");
        if (wal_events >= 0)
            cq_metrics_gauge(out, "cqrsd_wal_bytes", "database=\"events.db\"",
                             (double)wal_events);
        if (s->engine != NULL)
            cq_metrics_gauge(out, "cqrsd_wal_bytes", "database=\"read.db\"",
                             (double)cq_engine_wal_bytes(s->engine));
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
    }
    if (st == NULL)
        return;
    for (int i = 0; i < n; i++)
        cq_engine_status(s->engine, i, &st[i]);
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
}

/* Register every series the server updates, so each shows from the start
 * (at zero). */
static int metrics_init(cq_server *s)
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

static enum MHD_Result handle_metrics(request *q)
{
    static const char *const allowed[] = {NULL};
    enum MHD_Result ret = MHD_NO;

    if (!cq_http_params_ok(q, allowed, &ret))
        return ret;
    return cq_http_send_with(q->conn, 200,
                             "text/plain; version=0.0.4; charset=utf-8",
                             cq_metrics_render(q->srv->metrics), NULL, 0);
}

/* ---- writes ------------------------------------------------------------- */

/* Writer thread: the answer is final. Must not touch q after resuming. */
static void on_written(cq_write_req *r)
{
    request *q = r->user;
    atomic_store(&q->answered, 1);
    MHD_resume_connection(q->conn);
}

/* Hand q->w to the writer; the connection sleeps until on_written(). */
static enum MHD_Result submit(request *q)
{
    int rc;

    if (cq_uuid7(q->w.command_id) != CQ_OK)
        return cq_http_send_problem(q->conn, 500, "internal", NULL,
                                    "no random bytes for a command id");
    q->w.done = on_written;
    q->w.user = q;
    q->queued = 1;
    atomic_fetch_add(&q->srv->pending, 1);
    MHD_suspend_connection(q->conn);
    rc = cq_writer_submit(q->srv->writer, &q->w);
    if (rc != CQ_OK) {
        q->w.status = 503;
        q->w.problem = 1;
        q->w.response =
            cq_problem_text(503, "unavailable", NULL, "%s",
                            rc == CQ_EBUSY ? "too many commands are queued"
                                           : "the server is shutting down");
        atomic_store(&q->answered, 1);
        MHD_resume_connection(q->conn);
    }
    return MHD_YES;
}

/* The writer has answered: send it. */
static enum MHD_Result send_written(request *q)
{
    char etag[32] = "";
    char *body = q->w.response;
    int status = q->w.status;

    atomic_fetch_sub(&q->srv->pending, 1);
    count_command(q, status);
    if (q->projection >= 0 && status >= 200 && status < 300)
        return cq_http_wait_for_command(q); /* ?wait_for= */
    q->w.response = NULL;                   /* MHD frees it now */
    if (status >= 200 && status < 300 && q->w.version > 0)
        snprintf(etag, sizeof etag, "\"%lld\"", (long long)q->w.version);
    {
        const char *const hdr[][2] = {
            {etag[0] ? MHD_HTTP_HEADER_ETAG : NULL, etag},
            {q->w.replayed ? "Idempotency-Replayed" : NULL, "true"},
            {status == 503 ? MHD_HTTP_HEADER_RETRY_AFTER : NULL, "1"},
        };
        return cq_http_send_with(q->conn, status,
                                 q->w.problem ? CQ_PROBLEM_CONTENT_TYPE
                                              : "application/json",
                                 body, hdr, 3);
    }
}

static enum MHD_Result handle_command(request *q)
{
    static const char *const allowed[] = {"wait_for", "wait_ms", NULL};
    const cq_command_def *def;
    cq_errors *errs = NULL;
    json_t *body = NULL;
    const char *wait_for, *precond;
    int64_t wait_ms;
    enum MHD_Result ret = MHD_NO;
    char what[160];

    if (!cq_http_params_ok(q, allowed, &ret) ||
        !cq_http_param_int(q, "wait_ms", 500, 0, MAX_WAIT_MS, &wait_ms, &ret))
        return ret;
    wait_for =
        MHD_lookup_connection_value(q->conn, MHD_GET_ARGUMENT_KIND, "wait_for");
    if (wait_for != NULL) {
        q->projection = q->srv->engine
                            ? cq_engine_projection(q->srv->engine, wait_for)
                            : -1;
        if (q->projection < 0)
            return cq_http_send_problem(q->conn, 404, "not-found", NULL,
                                        "there is no projection named '%.64s'",
                                        wait_for);
        q->wait_ms = wait_ms;
    }
    def = cq_domain_command(q->srv->domain, q->target);
    if (def == NULL)
        return cq_http_send_problem(q->conn, 404, "not-found", NULL,
                                    "there is no command type '%.64s'",
                                    q->target);
    if (!idem_key_ok(q, &ret) ||
        !if_match_ok(q, &q->w.expected, &precond, &ret))
        return ret;
    body = parse_body(q, &ret);
    if (body == NULL)
        return ret;
    errs = cq_errors_new();
    if (errs == NULL)
        goto nomem;
    cq_schema_check(def->schema, body, "", errs);
    if (cq_errors_count(errs) == 0 && def->validate != NULL)
        def->validate(body, errs);
    if (cq_errors_count(errs) > 0) {
        ret = send_validation(q, errs);
        goto done;
    }
    if (def->stream_id(body, q->w.stream_id, sizeof q->w.stream_id) != CQ_OK) {
        ret = cq_http_send_problem(q->conn, 400, "validation-failed", NULL,
                                   "no stream id can be derived from the body");
        goto done;
    }
    snprintf(what, sizeof what, "command %s", def->type);
    if (hash_request(q, what, precond, body) != CQ_OK)
        goto nomem;
    q->w.kind = CQ_WRITE_COMMAND;
    q->w.def = def;
    q->w.body = body;
    body = NULL;
    ret = submit(q);
    goto done;
nomem:
    ret = cq_http_send_problem(q->conn, 500, "internal", NULL, "out of memory");
done:
    cq_errors_free(errs);
    json_decref(body);
    return ret;
}

/* A stream id given by a client: 1-255 bytes of UTF-8 without control
 * characters, not starting with '$' (reserved for the engine). */
static int stream_id_ok(const char *id)
{
    size_t n = strlen(id);

    if (n == 0 || n >= CQ_STREAM_ID_MAX || id[0] == '$' ||
        !cq_utf8_valid(id, n))
        return 0;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)id[i] < 0x20 || id[i] == 0x7f)
            return 0;
    return 1;
}

static int event_type_ok(const char *t)
{
    size_t n = strlen(t);

    if (n == 0 || n > 128)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char ch = t[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
              (ch >= '0' && ch <= '9') || ch == '_' || ch == '-' || ch == '.' ||
              ch == ':'))
            return 0;
    }
    return 1;
}

/* Check POST /streams/{id}'s body; fills *expected. */
static void check_append_body(const json_t *body, int64_t *expected,
                              cq_errors *errs)
{
    const json_t *ev = json_object_get(body, "expected_version");
    const json_t *events = json_object_get(body, "events");
    const char *key;
    json_t *val;
    size_t i;

    json_object_foreach ((json_t *)body, key, val) {
        if (strcmp(key, "expected_version") != 0 && strcmp(key, "events"))
            cq_errors_add(errs, key, "unknown field");
    }
    *expected = CQ_VERSION_ANY;
    if (ev == NULL)
        cq_errors_add(errs, "expected_version", "is required");
    else if (json_is_string(ev) && !strcmp(json_string_value(ev), "any"))
        *expected = CQ_VERSION_ANY;
    else if (json_is_string(ev) && !strcmp(json_string_value(ev), "no_stream"))
        *expected = CQ_VERSION_NO_STREAM;
    else if (json_is_integer(ev) && json_integer_value(ev) >= 0)
        *expected = json_integer_value(ev);
    else
        cq_errors_add(errs, "expected_version",
                      "must be \"any\", "
                      "\"no_stream\" or a version number >= 0");

    if (!json_is_array(events) || json_array_size(events) < 1 ||
        json_array_size(events) > MAX_APPEND_EVENTS) {
        cq_errors_add(errs, "events", "must be an array of 1 to %d events",
                      MAX_APPEND_EVENTS);
        return;
    }
    json_array_foreach (events, i, val) {
        char path[48];
        const json_t *type = json_object_get(val, "type");
        const json_t *meta = json_object_get(val, "metadata");
        if (!json_is_object(val)) {
            snprintf(path, sizeof path, "events[%zu]", i);
            cq_errors_add(errs, path, "must be an object");
            continue;
        }
        json_t *member;
        json_object_foreach (val, key, member) {
            if (strcmp(key, "type") && strcmp(key, "data") &&
                strcmp(key, "metadata")) {
                snprintf(path, sizeof path, "events[%zu].%.16s", i, key);
                cq_errors_add(errs, path, "unknown field");
            }
        }
        if (!json_is_string(type) || !event_type_ok(json_string_value(type))) {
            snprintf(path, sizeof path, "events[%zu].type", i);
            cq_errors_add(errs, path,
                          "must be 1 to 128 characters of "
                          "[A-Za-z0-9_.:-]");
        }
        if (!json_is_object(json_object_get(val, "data"))) {
            snprintf(path, sizeof path, "events[%zu].data", i);
            cq_errors_add(errs, path, "must be an object");
        }
        if (meta != NULL && !json_is_object(meta)) {
            snprintf(path, sizeof path, "events[%zu].metadata", i);
            cq_errors_add(errs, path, "must be an object");
        }
    }
}

/* Streams of a category a domain owns, and event types it owns, are
 * written only through its commands (see cq_domain): 1 if the raw append
 * of `events` to q->target may go on, else queues a 422 into *ret. */
static int append_allowed(request *q, const json_t *events,
                          enum MHD_Result *ret)
{
    const char *owner = cq_domain_stream_owner(q->srv->domain, q->target);
    const json_t *ev;
    size_t i;

    if (owner != NULL) {
        *ret = cq_http_send_problem(
            q->conn, 422, "stream-owned-by-domain", NULL,
            "stream %.255s belongs to the %s domain (category '%.*s'): it "
            "changes only through that domain's commands",
            q->target, owner, (int)strcspn(q->target, "-"), q->target);
        return 0;
    }
    json_array_foreach (events, i, ev) {
        const char *type = json_string_value(json_object_get(ev, "type"));
        char field[48];
        owner = cq_domain_type_owner(q->srv->domain, type);
        if (owner == NULL)
            continue;
        snprintf(field, sizeof field, "events[%zu].type", i);
        *ret = cq_http_send_problem(
            q->conn, 422, "event-type-owned-by-domain",
            json_pack("[{s:s,s:s}]", "field", field, "message",
                      "is an event type of a domain"),
            "event type %s belongs to the %s domain: only that domain's "
            "commands append it",
            type, owner);
        return 0;
    }
    return 1;
}

static enum MHD_Result handle_append(request *q)
{
    static const char *const allowed[] = {NULL};
    cq_errors *errs = NULL;
    json_t *body = NULL;
    enum MHD_Result ret = MHD_NO;
    char what[CQ_STREAM_ID_MAX + 16];

    if (!cq_http_params_ok(q, allowed, &ret) || !idem_key_ok(q, &ret))
        return ret;
    if (!stream_id_ok(q->target))
        return cq_http_send_problem(
            q->conn, 400, "bad-stream-id", NULL,
            "a stream id is 1 to 255 bytes of UTF-8 without "
            "control characters and must not start with $");
    body = parse_body(q, &ret);
    if (body == NULL)
        return ret;
    errs = cq_errors_new();
    if (errs == NULL)
        goto nomem;
    check_append_body(body, &q->w.expected, errs);
    if (cq_errors_count(errs) > 0) {
        ret = send_validation(q, errs);
        goto done;
    }
    if (!append_allowed(q, json_object_get(body, "events"), &ret))
        goto done;
    snprintf(q->w.stream_id, sizeof q->w.stream_id, "%s", q->target);
    snprintf(what, sizeof what, "append %s", q->target);
    if (hash_request(q, what, "", body) != CQ_OK)
        goto nomem;
    q->w.kind = CQ_WRITE_APPEND;
    q->w.body = json_incref(json_object_get(body, "events"));
    ret = submit(q);
    goto done;
nomem:
    ret = cq_http_send_problem(q->conn, 500, "internal", NULL, "out of memory");
done:
    cq_errors_free(errs);
    json_decref(body);
    return ret;
}

/* ---- reads -------------------------------------------------------------- */

/* A page of events being built. Pages are bounded by bytes as well as by
 * events: an event is counted by the stored texts it brings (data,
 * metadata, stream id, type) plus EVENT_OVERHEAD for the rest of its item,
 * and the read stops before the event that would take the page past
 * `budget` -- but never before the first, so a page always progresses.
 * What a page holds at once (the decoded events, then their JSON text) is
 * a small multiple of the budget, so concurrent readers together hold at
 * most that times the number of HTTP threads. */
typedef struct page {
    const cq_domain *domain; /* upcasts old events to the current shape */
    json_t *events;
    int64_t last;         /* position of the last event added */
    int64_t last_version; /* its stream version */
    size_t bytes, budget;
    int corrupt;
    int64_t corrupt_at;
} page;

#define EVENT_OVERHEAD 256

/* One event as an item of the page. An event whose data cannot be brought
 * to the current shape is answered as stored, with "upcast_error" naming
 * why; one whose data or metadata is not a JSON object at all (a damaged
 * file) has that member null and "decode_error" (see CQ_DECODE_AS_STORED). */
static int add_event(void *arg, const cq_stored_event *se)
{
    page *pg = arg;
    char when[32], why[192];
    cq_decoded dec;
    json_t *ev;
    size_t size = strlen(se->data) + strlen(se->metadata) +
                  strlen(se->stream_id) + strlen(se->type) + EVENT_OVERHEAD;
    int rc;

    if (json_array_size(pg->events) > 0 && pg->bytes + size > pg->budget)
        return 1; /* the page is full: `next` continues here */
    rc = cq_event_decode(pg->domain, se, NULL,
                         CQ_DECODE_METADATA | CQ_DECODE_AS_STORED, &dec, why,
                         sizeof why);
    cq_format_time(se->recorded_at, when);
    ev = json_pack("{s:I,s:s,s:I,s:s,s:i,s:O?,s:O?,s:s}", "position",
                   (json_int_t)se->position, "stream_id", se->stream_id,
                   "version", (json_int_t)se->version, "type", se->type,
                   "schema_version", dec.schema_version, "data", dec.data,
                   "metadata", dec.metadata, "recorded_at", when);
    if (ev != NULL && rc != CQ_OK &&
        json_object_set_new(ev,
                            dec.cause == CQ_DECODE_UPCAST_FAILED
                                ? "upcast_error"
                                : "decode_error",
                            json_string(why)) != 0) {
        json_decref(ev); /* out of memory */
        ev = NULL;
    }
    cq_decoded_clear(&dec);
    if (ev == NULL || json_array_append_new(pg->events, ev) != 0) {
        pg->corrupt = 1; /* a stored string that is not UTF-8, or no memory */
        pg->corrupt_at = se->position;
        return 1;
    }
    pg->bytes += size;
    pg->last = se->position;
    pg->last_version = se->version;
    return 0;
}

static enum MHD_Result read_failed(request *q, int rc, const page *pg,
                                   const char *err)
{
    if (pg->corrupt)
        return cq_http_send_problem(q->conn, 500, "corrupt-event", NULL,
                                    "the event "
                                    "at position %lld cannot be decoded",
                                    (long long)pg->corrupt_at);
    return cq_http_send_problem(q->conn, 503, "store-unavailable", NULL,
                                "reading the event store failed: %s (%s)",
                                cq_strerror(rc), err);
}

/* ?max_bytes= into pg->budget; 0 and a 400 queued into *ret when bad. */
static int page_budget(request *q, page *pg, enum MHD_Result *ret)
{
    int64_t budget;

    if (!cq_http_param_int(q, "max_bytes", DEFAULT_PAGE_BYTES, MIN_PAGE_BYTES,
                           MAX_PAGE_BYTES, &budget, ret))
        return 0;
    pg->budget = (size_t)budget;
    return 1;
}

static enum MHD_Result handle_read_stream(request *q)
{
    static const char *const allowed[] = {"from_version", "limit", "max_bytes",
                                          NULL};
    enum MHD_Result ret = MHD_NO;
    int64_t from, limit, version = 0;
    page pg = {q->srv->domain, NULL, 0, 0, 0, 0, 0, 0};
    char err[256] = "";
    int rc;

    if (!cq_http_params_ok(q, allowed, &ret) ||
        !cq_http_param_int(q, "from_version", 1, 1, INT64_MAX, &from, &ret) ||
        !cq_http_param_int(q, "limit", DEFAULT_PAGE, 1, MAX_PAGE, &limit,
                           &ret) ||
        !page_budget(q, &pg, &ret))
        return ret;
    if (q->target[0] == '\0' || strlen(q->target) >= CQ_STREAM_ID_MAX)
        return cq_http_send_problem(q->conn, 404, "not-found", NULL,
                                    "no such stream");
    pg.events = json_array();
    if (pg.events == NULL)
        return cq_http_send_problem(q->conn, 500, "internal", NULL,
                                    "out of memory");
    rc = cq_store_read_stream(q->srv->store, q->target, from, (int)limit,
                              add_event, &pg, &version, err, sizeof err);
    if (rc == CQ_ENOTFOUND) {
        json_decref(pg.events);
        return cq_http_send_problem(q->conn, 404, "not-found", NULL,
                                    "stream %s does not exist", q->target);
    }
    if (rc != CQ_OK || pg.corrupt) {
        json_decref(pg.events);
        return read_failed(q, rc, &pg, err);
    }
    return cq_http_send_json(
        q->conn, 200,
        json_pack("{s:s,s:I,s:o,s:I}", "stream_id", q->target, "version",
                  (json_int_t)version, "events", pg.events, "next_version",
                  (json_int_t)(pg.last_version ? pg.last_version + 1 : from)));
}

static enum MHD_Result handle_read_all(request *q)
{
    static const char *const allowed[] = {"from_position", "limit", "max_bytes",
                                          NULL};
    enum MHD_Result ret = MHD_NO;
    int64_t from, limit, head = 0;
    page pg = {q->srv->domain, NULL, 0, 0, 0, 0, 0, 0};
    char err[256] = "";
    int rc;

    if (!cq_http_params_ok(q, allowed, &ret) ||
        !cq_http_param_int(q, "from_position", 1, 0, INT64_MAX, &from, &ret) ||
        !cq_http_param_int(q, "limit", DEFAULT_PAGE, 1, MAX_PAGE, &limit,
                           &ret) ||
        !page_budget(q, &pg, &ret))
        return ret;
    if (from == 0)
        from = 1;
    pg.events = json_array();
    if (pg.events == NULL)
        return cq_http_send_problem(q->conn, 500, "internal", NULL,
                                    "out of memory");
    rc = cq_store_read_all(q->srv->store, from, (int)limit, add_event, &pg,
                           &head, err, sizeof err);
    if (rc != CQ_OK || pg.corrupt) {
        json_decref(pg.events);
        return read_failed(q, rc, &pg, err);
    }
    return cq_http_send_json(
        q->conn, 200,
        json_pack("{s:o,s:I,s:I}", "events", pg.events, "next_position",
                  (json_int_t)(pg.last ? pg.last + 1 : from), "head_position",
                  (json_int_t)head));
}

static enum MHD_Result handle_healthz(request *q)
{
    static const char *const allowed[] = {NULL};
    enum MHD_Result ret = MHD_NO;

    if (!cq_http_params_ok(q, allowed, &ret))
        return ret;
    return cq_http_send_json(
        q->conn, 200,
        json_pack("{s:s,s:I}", "status", "ok", "head_position",
                  (json_int_t)cq_writer_head(q->srv->writer)));
}

/* ---- MHD callbacks ------------------------------------------------------- */

static enum route route_of(const char *url, const char **target)
{
    *target = "";
    if (strcmp(url, "/healthz") == 0)
        return R_HEALTHZ;
    if (strncmp(url, "/commands/", 10) == 0 && url[10] != '\0') {
        *target = url + 10;
        return R_COMMAND;
    }
    if (strcmp(url, "/streams/$all") == 0)
        return R_ALL;
    if (strcmp(url, "/readyz") == 0)
        return R_READYZ;
    if (strcmp(url, "/metrics") == 0)
        return R_METRICS;
    if (strcmp(url, "/projections") == 0) {
        *target = "";
        return R_PROJECTIONS;
    }
    if (strncmp(url, "/projections/", 13) == 0 && url[13] != '\0') {
        *target = url + 13;
        return R_PROJECTIONS;
    }
    if (strncmp(url, "/queries/", 9) == 0 && url[9] != '\0') {
        *target = url + 9;
        return R_QUERY;
    }
    if (strncmp(url, "/streams/", 9) == 0 && url[9] != '\0') {
        *target = url + 9;
        return R_STREAM;
    }
    return R_NOT_FOUND;
}

static request *request_new(cq_server *srv, struct MHD_Connection *conn)
{
    request *q = calloc(1, sizeof *q);

    if (q == NULL)
        return NULL;
    q->srv = srv;
    q->conn = conn;
    q->projection = -1;
    atomic_init(&q->answered, 0);
    return q;
}

/* MHD_OPTION_URI_LOG_CALLBACK: the request line has been read and `uri`
 * is still as the client sent it; after this returns MHD decodes the path
 * (a %00 ends the C string it hands us) and stores each query parameter
 * in the connection's 64 KiB memory pool. Too many parameters exhaust the
 * pool mid-parse, and libmicrohttpd 0.9.75 then queues a 431 that it never
 * sends (the request waits for the idle timeout), so beyond
 * CQ_HTTP_MAX_PARAMS the query string is cut here, in MHD's own buffer
 * (not const: it is the read buffer MHD splits in place; MHD has already
 * found the '?', and parses what follows it once we return), and
 * first_call() answers 431. The request made here becomes MHD's
 * per-request pointer; NULL (no memory) leaves it to on_request(). */
static void *on_uri(void *cls, const char *uri, struct MHD_Connection *conn)
{
    request *q = request_new(cls, conn);
    char *query = strchr(uri, '?');
    size_t n = query ? (size_t)(query - uri) : strlen(uri), params = 1;

    if (q == NULL)
        return NULL;
    /* MHD_http_unescape() decodes every %XY with two hex digits in one
     * pass and a '%' is never part of an earlier escape, so the decoded
     * path has a NUL exactly when the raw one has "%00" */
    for (size_t i = 0; i + 2 < n; i++)
        if (uri[i] == '%' && uri[i + 1] == '0' && uri[i + 2] == '0')
            q->nul_in_path = 1;
    if (query == NULL)
        return q;
    for (const char *p = query + 1; *p != '\0'; p++)
        params += *p == '&';
    if (params > CQ_HTTP_MAX_PARAMS) {
        q->too_many_params = 1;
        query[1] = '\0';
    }
    return q;
}

static enum MHD_Result find_nul(void *cls, enum MHD_ValueKind kind,
                                const char *key, size_t key_size,
                                const char *value, size_t value_size)
{
    const char **bad = cls;

    (void)kind;
    if (strlen(key) != key_size ||
        (value != NULL && strlen(value) != value_size)) {
        *bad = key;
        return MHD_NO;
    }
    return MHD_YES;
}

typedef struct framing {
    int lengths, codings; /* Content-Length, Transfer-Encoding headers */
    const char *coding;
} framing;

static enum MHD_Result count_framing(void *cls, enum MHD_ValueKind kind,
                                     const char *key, const char *value)
{
    framing *f = cls;

    (void)kind;
    if (strcasecmp(key, MHD_HTTP_HEADER_CONTENT_LENGTH) == 0)
        f->lengths++;
    else if (strcasecmp(key, MHD_HTTP_HEADER_TRANSFER_ENCODING) == 0) {
        f->codings++;
        f->coding = value;
    }
    return MHD_YES;
}

/* Answer a problem and close the connection after it: the rest of what
 * the client sent cannot be framed, so it must not be read as a next
 * request (request smuggling). */
static enum MHD_Result send_and_close(struct MHD_Connection *c, int status,
                                      const char *slug, const char *detail)
{
    const char *const hdr[][2] = {{MHD_HTTP_HEADER_CONNECTION, "close"}};
    return cq_http_send_with(c, status, CQ_PROBLEM_CONTENT_TYPE,
                             cq_problem_text(status, slug, NULL, "%s", detail),
                             hdr, 1);
}

/* What is wrong with the request as a whole, before its route: framing
 * that a proxy could read differently (RFC 9112 6.1, 6.3), cut or
 * NUL-carrying URLs. MHD_YES with nothing queued if nothing is. (A
 * Content-Length that is not a number never gets here: MHD answers it.) */
static enum MHD_Result check_request(request *q, int *done)
{
    framing f = {0, 0, NULL};
    const char *bad = NULL;

    *done = 1;
    MHD_get_connection_values(q->conn, MHD_HEADER_KIND, count_framing, &f);
    if (f.lengths > 0 && f.codings > 0)
        return send_and_close(q->conn, 400, "bad-framing",
                              "Content-Length and Transfer-Encoding must not "
                              "both be given");
    if (f.lengths > 1 || f.codings > 1)
        return send_and_close(q->conn, 400, "bad-framing",
                              "Content-Length and Transfer-Encoding may each "
                              "be given once");
    if (f.codings == 1 && strcasecmp(f.coding, "chunked") != 0)
        return send_and_close(q->conn, 501, "not-implemented",
                              "the only transfer coding understood is "
                              "chunked");
    if (q->too_many_params)
        return cq_http_send_problem(q->conn, 431, "too-many-parameters", NULL,
                                    "at most %d query parameters are read",
                                    CQ_HTTP_MAX_PARAMS);
    if (q->nul_in_path)
        return q->route == R_STREAM
                   ? cq_http_send_problem(
                         q->conn, 400, "bad-stream-id", NULL,
                         "a stream id must not contain a NUL byte (%%00)")
                   : cq_http_send_problem(
                         q->conn, 400, "bad-path", NULL,
                         "the path must not contain a NUL byte (%%00)");
    MHD_get_connection_values_n(q->conn, MHD_GET_ARGUMENT_KIND, find_nul, &bad);
    if (bad != NULL)
        return cq_http_bad_param(q->conn, bad,
                                 "must not contain a NUL byte (%%00)");
    *done = 0;
    return MHD_YES;
}

/* First call for a request: route, method and what can be judged from the
 * headers alone. Returns MHD_YES with nothing queued to go on reading. */
static enum MHD_Result first_call(request *q, const char *url,
                                  const char *method)
{
    int post = strcmp(method, MHD_HTTP_METHOD_POST) == 0;
    int head = strcmp(method, MHD_HTTP_METHOD_HEAD) == 0;
    int get = head || strcmp(method, MHD_HTTP_METHOD_GET) == 0;
    const char *cl;
    int64_t len;
    int done;
    enum MHD_Result r;

    q->route = route_of(url, &q->target);
    r = check_request(q, &done);
    if (done)
        return r;
    switch (q->route) {
    case R_NOT_FOUND:
        return cq_http_send_problem(q->conn, 404, "not-found", NULL,
                                    "no resource at this path");
    case R_PROJECTIONS:
        /* the methods depend on the path (ops.c, which is given HEAD as
         * GET): only the operations take none of GET and HEAD */
        if (head && strchr(q->target, '/') != NULL)
            return send_method_not_allowed(q->conn, method, "POST");
        return MHD_YES;
    case R_HEALTHZ:
    case R_METRICS:
    case R_READYZ:
    case R_ALL:
    case R_QUERY:
        if (!get)
            return send_method_not_allowed(q->conn, method, "GET, HEAD");
        return MHD_YES;
    case R_COMMAND:
        if (!post)
            return send_method_not_allowed(q->conn, method, "POST");
        break;
    case R_STREAM:
        if (get)
            return MHD_YES;
        if (!post)
            return send_method_not_allowed(q->conn, method, "GET, HEAD, POST");
        break;
    }
    /* a POST with a body */
    cl = MHD_lookup_connection_value(q->conn, MHD_HEADER_KIND,
                                     MHD_HTTP_HEADER_CONTENT_LENGTH);
    if (cl != NULL && (cq_http_parse_int(cl, &len) != CQ_OK ||
                       (uint64_t)len > q->srv->body_limit))
        return cq_http_send_problem(q->conn, 413, "body-too-large", NULL,
                                    "the body may be at most %zu bytes",
                                    q->srv->body_limit);
    if (!content_type_ok(q->conn))
        return cq_http_send_problem(
            q->conn, 415, "unsupported-media-type", NULL,
            "the body must be sent as application/json");
    return MHD_YES;
}

static enum MHD_Result on_body(request *q, const char *data, size_t size)
{
    size_t limit = q->srv->body_limit;

    if (q->too_large || q->len + size > limit) {
        q->too_large = 1;
        q->len += size; /* count what is thrown away */
        /* Don't read an endless body: close the connection. */
        return q->len > limit * HARD_BODY_LIMIT_FACTOR ? MHD_NO : MHD_YES;
    }
    if (q->len + size > q->cap) {
        size_t cap = q->cap ? q->cap : 4096;
        char *b;
        while (cap < q->len + size)
            cap *= 2;
        if (cap > limit)
            cap = limit;
        b = realloc(q->body, cap);
        if (b == NULL)
            return MHD_NO;
        q->body = b;
        q->cap = cap;
    }
    memcpy(q->body + q->len, data, size);
    q->len += size;
    return MHD_YES;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn,
                                  const char *url, const char *method,
                                  const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **con_cls)
{
    cq_server *srv = cls;
    request *q = *con_cls;
    int get = strcmp(method, MHD_HTTP_METHOD_GET) == 0 ||
              strcmp(method, MHD_HTTP_METHOD_HEAD) == 0;

    (void)version;
    if (q == NULL) { /* on_uri() had no memory */
        q = request_new(srv, conn);
        if (q == NULL)
            return MHD_NO;
        *con_cls = q;
    }
    if (!q->started) {
        q->started = 1;
        cq_conns_head_done(conn);
        last_status = 0;
        {
            enum MHD_Result r = first_call(q, url, method);
            if (q->route == R_COMMAND && last_status != 0)
                count_command(q, last_status); /* 413, 415 */
            return r;
        }
    }
    if (*upload_data_size > 0) {
        enum MHD_Result r = on_body(q, upload_data, *upload_data_size);
        *upload_data_size = 0;
        return r;
    }
    if (q->waiting)
        return cq_http_resumed(q);
    if (q->queued)
        return atomic_load(&q->answered) ? send_written(q) : MHD_YES;
    if (q->too_large)
        return cq_http_send_problem(conn, 413, "body-too-large", NULL,
                                    "the body may be at most %zu bytes",
                                    srv->body_limit);
    switch (q->route) {
    case R_HEALTHZ: return handle_healthz(q);
    case R_COMMAND: {
        enum MHD_Result r;
        last_status = 0;
        q->t0 = cq_mono_ns();
        r = handle_command(q);
        if (!q->queued)
            count_command(q, last_status); /* answered without the writer */
        return r;
    }
    case R_METRICS: return handle_metrics(q);
    case R_ALL: return handle_read_all(q);
    case R_QUERY: return cq_http_query(q);
    case R_READYZ: return cq_http_readyz(q);
    case R_PROJECTIONS:
        return cq_http_projections(q, get ? MHD_HTTP_METHOD_GET : method);
    case R_STREAM: return get ? handle_read_stream(q) : handle_append(q);
    case R_NOT_FOUND:
    default:
        return cq_http_send_problem(conn, 404, "not-found", NULL,
                                    "no resource at this path");
    }
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    request *q = *con_cls;

    (void)cls;
    (void)toe;
    cq_conns_head_wait(conn); /* a keep-alive connection waits for a head */
    if (q == NULL)
        return;
    if (q->queued && q->w.response != NULL && !q->sent_written)
        atomic_fetch_sub(&q->srv->pending, 1); /* answered, never sent */
    cq_http_query_free(q);
    json_decref(q->w.body);
    free(q->w.response);
    free(q->body);
    free(q);
    *con_cls = NULL;
}

#define LOG_LINES_PER_SECOND 20

/* libmicrohttpd's messages, one write per line so threads do not mix
 * them, and at most LOG_LINES_PER_SECOND a second: it writes one for
 * every refused or cut connection, which a client could otherwise turn
 * into a flood of log lines. */
static void on_mhd_error(void *cls, const char *fmt, va_list ap)
{
    cq_server *s = cls;
    long long second = (long long)(cq_mono_ns() / 1000000000u);
    long long was = atomic_load(&s->log_second);
    char line[512];
    int n;

    if (was != second &&
        atomic_compare_exchange_strong(&s->log_second, &was, second)) {
        int dropped = atomic_exchange(&s->log_dropped, 0);
        atomic_store(&s->log_lines, 0);
        if (dropped > 0)
            fprintf(stderr, "cqrsd: http: %d more messages left out\n",
                    dropped);
    }
    if (atomic_fetch_add(&s->log_lines, 1) >= LOG_LINES_PER_SECOND) {
        atomic_fetch_add(&s->log_dropped, 1);
        return;
    }
    n = snprintf(line, sizeof line, "cqrsd: http: ");
    vsnprintf(line + n, sizeof line - (size_t)n, fmt, ap);
    n = (int)strlen(line);
    if (line[n - 1] != '\n') { /* cut short */
        if (n == (int)sizeof line - 1)
            n--;
        line[n] = '\n';
        line[n + 1] = '\0';
    }
    fputs(line, stderr);
}

/* ---- public ---------------------------------------------------------------
 */

#define DEFAULT_MAX_CONNECTIONS 8192
#define DEFAULT_MAX_PER_IP 1024
#define DEFAULT_HEADER_TIMEOUT_S 10
#define FD_RESERVE 512 /* descriptors kept for SQLite, epoll, pipes, logs */

/* How many connections the process can hold, up to `want`: raises the
 * soft RLIMIT_NOFILE to the hard one when `want` needs it, and says so on
 * stderr when even that is too few. */
static unsigned connection_room(unsigned want)
{
    struct rlimit rl;
    rlim_t need = (rlim_t)want + FD_RESERVE;

    if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur == RLIM_INFINITY ||
        rl.rlim_cur >= need)
        return want;
    rl.rlim_cur = rl.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0 || getrlimit(RLIMIT_NOFILE, &rl))
        return want;
    if (rl.rlim_cur == RLIM_INFINITY || rl.rlim_cur >= need)
        return want;
    want = rl.rlim_cur > FD_RESERVE + 16 ? (unsigned)(rl.rlim_cur - FD_RESERVE)
                                         : 16;
    fprintf(stderr,
            "cqrsd: http: at most %u connections (the open-files limit "
            "is %llu)\n",
            want, (unsigned long long)rl.rlim_cur);
    return want;
}

int cq_server_start(const cq_server_config *cfg, cq_store *store,
                    cq_writer *writer, cq_engine *engine,
                    const cq_domain *domain, cq_server **out, char *err,
                    size_t errcap)
{
    cq_server *s;
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL |
                     MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG;
    int threads = cfg->threads > 0 ? cfg->threads : 2;
    unsigned max_conns = connection_room(
        cfg->max_connections ? cfg->max_connections : DEFAULT_MAX_CONNECTIONS);
    unsigned per_ip = cfg->max_connections_per_ip ? cfg->max_connections_per_ip
                                                  : DEFAULT_MAX_PER_IP;
    unsigned head_s = cfg->header_timeout_s ? cfg->header_timeout_s
                                            : DEFAULT_HEADER_TIMEOUT_S;

    *out = NULL;
    s = calloc(1, sizeof *s);
    if (s == NULL) {
        snprintf(err, errcap, "out of memory");
        return CQ_ENOMEM;
    }
    s->store = store;
    s->writer = writer;
    s->engine = engine;
    s->domain = domain;
    s->body_limit = cfg->body_limit ? cfg->body_limit : DEFAULT_BODY_LIMIT;
    s->ready_max_lag_s = cfg->ready_max_lag_s > 0 ? cfg->ready_max_lag_s : 30;
    if (metrics_init(s) != CQ_OK) {
        snprintf(err, errcap, "out of memory");
        cq_metrics_free(s->metrics);
        free(s->commands);
        free(s);
        return CQ_ENOMEM;
    }
    atomic_init(&s->pending, 0);
    atomic_init(&s->waiting, 0);
    atomic_init(&s->log_second, 0);
    atomic_init(&s->log_lines, 0);
    atomic_init(&s->log_dropped, 0);
    if (cq_conns_start(head_s * 1000u, &s->conns) != CQ_OK) {
        snprintf(err, errcap, "cannot start the connection sweeper");
        cq_metrics_free(s->metrics);
        free(s->commands);
        free(s);
        return CQ_EIO;
    }
    if (cfg->addr.ss_family == AF_INET6)
        flags |= MHD_USE_IPv6;
    s->daemon = MHD_start_daemon(
        flags, 0, NULL, NULL, on_request, s, MHD_OPTION_EXTERNAL_LOGGER,
        on_mhd_error, s, MHD_OPTION_SOCK_ADDR,
        (const struct sockaddr *)&cfg->addr, MHD_OPTION_THREAD_POOL_SIZE,
        (unsigned)threads, MHD_OPTION_CONNECTION_TIMEOUT,
        cfg->idle_timeout_s ? cfg->idle_timeout_s : 30u,
        MHD_OPTION_CONNECTION_LIMIT, max_conns,
        MHD_OPTION_PER_IP_CONNECTION_LIMIT, per_ip,
        MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)64 * 1024,
        MHD_OPTION_LISTEN_BACKLOG_SIZE, 1024u, MHD_OPTION_URI_LOG_CALLBACK,
        on_uri, s, MHD_OPTION_NOTIFY_CONNECTION, cq_conns_notify, s->conns,
        MHD_OPTION_NOTIFY_COMPLETED, on_completed, s, MHD_OPTION_END);
    if (s->daemon == NULL) {
        snprintf(err, errcap,
                 "cannot listen (address in use, or not "
                 "allowed?)");
        cq_conns_free(s->conns);
        free(s);
        return CQ_EIO;
    }
    *out = s;
    return CQ_OK;
}

unsigned cq_server_port(cq_server *s)
{
    const union MHD_DaemonInfo *info =
        MHD_get_daemon_info(s->daemon, MHD_DAEMON_INFO_BIND_PORT);
    return info ? info->port : 0;
}

void cq_server_stop(cq_server *s, int timeout_ms)
{
    struct timespec ts = {0, 10 * 1000 * 1000};

    if (s == NULL)
        return;
    /* Let MHD's threads send the answers the writer and the waiters have
     * just given (a connection MHD has not resumed yet would otherwise be
     * closed without its answer). */
    for (int waited = 0; waited < timeout_ms && (atomic_load(&s->pending) > 0 ||
                                                 atomic_load(&s->waiting) > 0);
         waited += 10)
        nanosleep(&ts, NULL);
    MHD_stop_daemon(s->daemon);
    cq_conns_free(s->conns); /* after: MHD has reported every close */
    cq_metrics_free(s->metrics);
    free(s->commands);
    free(s);
}
