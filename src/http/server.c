/*
 * server.c -- the HTTP daemon: libmicrohttpd's callbacks, the life of one
 * request, routing, and starting and stopping (see server.h). The routes
 * themselves live in commands.c, streams.c, query.c, ops.c and metrics.c;
 * answers in answer.c, query parameters in params.c, what writes share in
 * write.c, the connection table and head deadline in conns.c.
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
 *      headers, JSON shape); reads are answered at once; a write runs
 *      at once on this thread when the writer is idle (one client at a
 *      time), else it is handed to the writer after the connection is
 *      suspended (write.c);
 *   4. the writer's done() callback marks the request answered and resumes
 *      the connection; MHD calls us once more and we send the answer;
 *   5. MHD's completion callback frees the request.
 *
 * Threads: MHD's pool threads run every callback here; the only other
 * thread that touches a request is the writer's (write.c: on_written()
 * stores the `answered` flag and resumes the connection, both safe from
 * any thread) and a waiter's or the projector's callback, which only
 * resumes it (query.c, ops.c). `pending` and `waiting` are atomics, for
 * shutdown; the log limiter's counters are atomics too. The server struct
 * is otherwise written only by cq_server_start() and cq_server_stop().
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

#define DEFAULT_BODY_LIMIT (1024 * 1024)
#define HARD_BODY_LIMIT_FACTOR                                                 \
    16 /* discard up to this many limits, then close */

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
    if (strncmp(url, "/ui", 3) == 0 && (url[3] == '\0' || url[3] == '/')) {
        *target = url + 3;
        return R_UI;
    }
    if (strcmp(url, "/metrics") == 0)
        return R_METRICS;
    if (strcmp(url, "/subscribe") == 0)
        return R_SUBSCRIBE;
    if (strcmp(url, "/openapi.yaml") == 0)
        return R_OPENAPI;
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
    if (!cq_http_auth_ok(q, method, &r)) /* 401, 403, 429 (auth.c) */
        return r;
    switch (q->route) {
    case R_NOT_FOUND:
        return cq_http_send_problem(q->conn, 404, "not-found", NULL,
                                    "no resource at this path");
    case R_PROJECTIONS:
        /* the methods depend on the path (ops.c, which is given HEAD as
         * GET): only the operations take none of GET and HEAD */
        if (head && strchr(q->target, '/') != NULL)
            return cq_http_send_method_not_allowed(q->conn, method, "POST");
        return MHD_YES;
    case R_HEALTHZ:
    case R_METRICS:
    case R_READYZ:
    case R_ALL:
    case R_QUERY:
    case R_UI:
    case R_SUBSCRIBE:
    case R_OPENAPI:
        if (!get)
            return cq_http_send_method_not_allowed(q->conn, method,
                                                   "GET, HEAD");
        return MHD_YES;
    case R_COMMAND:
        if (!post)
            return cq_http_send_method_not_allowed(q->conn, method, "POST");
        break;
    case R_STREAM:
        if (get)
            return MHD_YES;
        if (!post)
            return cq_http_send_method_not_allowed(q->conn, method,
                                                   "GET, HEAD, POST");
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
    if (!cq_http_content_type_ok(q->conn))
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

static enum MHD_Result handle(void *cls, struct MHD_Connection *conn,
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
        cq_http_last_status_reset();
        {
            enum MHD_Result r = first_call(q, url, method);
            if (q->route == R_COMMAND && cq_http_last_status() != 0)
                cq_http_count_command(q, cq_http_last_status()); /* 413, 415 */
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
        return atomic_load(&q->answered) ? cq_http_send_written(q) : MHD_YES;
    if (q->too_large)
        return cq_http_send_problem(conn, 413, "body-too-large", NULL,
                                    "the body may be at most %zu bytes",
                                    srv->body_limit);
    switch (q->route) {
    case R_HEALTHZ: return cq_http_healthz(q);
    case R_COMMAND: {
        enum MHD_Result r;
        cq_http_last_status_reset();
        q->t0 = cq_mono_ns();
        r = cq_http_command(q);
        if (!q->queued) /* answered without the writer */
            cq_http_count_command(q, cq_http_last_status());
        return r;
    }
    case R_METRICS: return cq_http_metrics(q);
    case R_ALL: return cq_http_read_all(q);
    case R_QUERY: return cq_http_query(q);
    case R_READYZ: return cq_http_readyz(q);
    case R_UI: return cq_http_static(q);
    case R_SUBSCRIBE:
        return cq_http_subscribe(q, strcmp(method, MHD_HTTP_METHOD_HEAD) == 0);
    case R_OPENAPI: return cq_http_openapi(q);
    case R_PROJECTIONS:
        return cq_http_projections(q, get ? MHD_HTTP_METHOD_GET : method);
    case R_STREAM: return get ? cq_http_read_stream(q) : cq_http_append(q);
    case R_NOT_FOUND:
    default:
        return cq_http_send_problem(conn, 404, "not-found", NULL,
                                    "no resource at this path");
    }
}

/* MHD's request callback: handle() above, then note a request that has
 * just been suspended (handed to the writer, or waiting) in srv->held
 * until on_completed(), i.e. until its answer has been sent or its
 * connection closed: pending and waiting drop when the answer is queued,
 * which is before it is sent, and a stop must not close a connection
 * with an answer still in it. */
static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn,
                                  const char *url, const char *method,
                                  const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **con_cls)
{
    cq_server *srv = cls;
    enum MHD_Result r = handle(cls, conn, url, method, version, upload_data,
                               upload_data_size, con_cls);
    request *q = *con_cls;

    if (q != NULL && !q->held && (q->queued || q->waiting)) {
        q->held = 1;
        atomic_fetch_add(&srv->held, 1);
    }
    return r;
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
    if (q->held)
        atomic_fetch_sub(&q->srv->held, 1); /* its answer is out */
    cq_http_query_free(q);
    json_decref(q->w.body);
    free(q->w.response);
    free(q->body);
    free(q);
    *con_cls = NULL;
}

/* The logger of tls_check()'s trial daemon: its complaint is said once,
 * by tls_check(). */
static void quiet(void *cls, const char *fmt, va_list ap)
{
    (void)cls;
    (void)fmt;
    (void)ap;
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

/* An empty option array, to skip the TLS options without TLS. */
static struct MHD_OptionItem no_options[] = {{MHD_OPTION_END, 0, NULL}};

/* With a certificate and key: MHD_USE_TLS, after checking that
 * libmicrohttpd was built with TLS and takes them (a daemon that does not
 * listen is started with them and stopped at once). CQ_OK or CQ_EINVAL
 * with one line in err. */
static int tls_check(const cq_server_config *cfg, unsigned *flags, char *err,
                     size_t errcap)
{
    struct MHD_Daemon *d;

    if (cfg->tls_cert == NULL)
        return CQ_OK;
    if (MHD_is_feature_supported(MHD_FEATURE_TLS) != MHD_YES) {
        snprintf(err, errcap, "this libmicrohttpd was built without TLS");
        return CQ_EINVAL;
    }
    *flags |= MHD_USE_TLS;
    d = MHD_start_daemon(MHD_USE_TLS | MHD_USE_NO_LISTEN_SOCKET |
                             MHD_USE_INTERNAL_POLLING_THREAD,
                         0, NULL, NULL, on_request, NULL,
                         MHD_OPTION_HTTPS_MEM_CERT, cfg->tls_cert,
                         MHD_OPTION_HTTPS_MEM_KEY, cfg->tls_key,
                         MHD_OPTION_EXTERNAL_LOGGER, quiet, NULL,
                         MHD_OPTION_END);
    if (d == NULL) {
        snprintf(err, errcap,
                 "the TLS certificate or key cannot be used (not PEM, or "
                 "the key does not match the certificate)");
        return CQ_EINVAL;
    }
    MHD_stop_daemon(d);
    return CQ_OK;
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
    int rc;

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
    atomic_init(&s->pending, 0);
    atomic_init(&s->waiting, 0);
    atomic_init(&s->held, 0);
    atomic_init(&s->log_second, 0);
    atomic_init(&s->log_lines, 0);
    atomic_init(&s->log_dropped, 0);
    rc = cq_http_metrics_init(s);
    if (rc != CQ_OK) {
        snprintf(err, errcap, "out of memory");
        goto fail;
    }
    rc = cq_sse_init(s, cfg->max_subscribers, cfg->heartbeat_ms);
    if (rc != CQ_OK) {
        snprintf(err, errcap, "out of memory");
        goto fail;
    }
    rc = cq_conns_start(head_s * 1000u, &s->conns);
    if (rc != CQ_OK) {
        snprintf(err, errcap, "cannot start the connection sweeper");
        goto fail;
    }
    s->auth = cfg->auth;
    s->max_waiters = cfg->max_waiters > 0 ? cfg->max_waiters : 4096;
    if (cfg->addr.ss_family == AF_INET6)
        flags |= MHD_USE_IPv6;
    rc = tls_check(cfg, &flags, err, errcap);
    if (rc != CQ_OK)
        goto fail;
    /* HTTPS: the PEM texts, or MHD_OPTION_END's 0 ends the list early
     * when there is no TLS (the options after it are the plain ones) */
    s->daemon = MHD_start_daemon(
        flags, 0, NULL, NULL, on_request, s,
        cfg->tls_cert ? MHD_OPTION_HTTPS_MEM_CERT : MHD_OPTION_ARRAY,
        cfg->tls_cert ? (void *)cfg->tls_cert : (void *)no_options,
        cfg->tls_cert ? MHD_OPTION_HTTPS_MEM_KEY : MHD_OPTION_ARRAY,
        cfg->tls_cert ? (void *)cfg->tls_key : (void *)no_options,
        MHD_OPTION_EXTERNAL_LOGGER,
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
        rc = CQ_EIO;
        goto fail;
    }
    *out = s;
    return CQ_OK;
fail:
    cq_conns_free(s->conns);
    cq_sse_free(s);
    cq_http_metrics_free(s);
    free(s);
    return rc;
}

unsigned cq_server_port(cq_server *s)
{
    const union MHD_DaemonInfo *info =
        MHD_get_daemon_info(s->daemon, MHD_DAEMON_INFO_BIND_PORT);
    return info ? info->port : 0;
}

struct cq_metrics *cq_server_metrics(cq_server *s)
{
    return s->metrics;
}

void cq_server_stop(cq_server *s, int timeout_ms)
{
    struct timespec ts = {0, 10 * 1000 * 1000};

    if (s == NULL)
        return;
    /* Let MHD's threads send the answers the writer and the waiters have
     * just given (a connection MHD has not resumed yet would otherwise be
     * closed without its answer). */
    for (int waited = 0;
         waited < timeout_ms &&
         (atomic_load(&s->pending) > 0 || atomic_load(&s->waiting) > 0 ||
          atomic_load(&s->held) > 0);
         waited += 10)
        nanosleep(&ts, NULL);
    MHD_stop_daemon(s->daemon);
    cq_conns_free(s->conns); /* after: MHD has reported every close */
    cq_sse_free(s);
    cq_http_metrics_free(s);
    free(s);
}
