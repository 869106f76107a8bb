/*
 * subscribe.c -- GET /subscribe: Server-Sent Events (text/event-stream).
 *
 *   ?projection=P[&after=N]     `progress` each time P's checkpoint passes
 *                               the last position sent (coalesced: one event
 *                               for however many positions it moved)
 *   ?stream=ID[&after=V]        `event` for each of the stream's events with
 *                               version > V as it commits (ID `$all`: every
 *                               event, by position)
 *   ?command=ID&projection=P... one `visible` when every named projection has
 *                               applied the command's events, `refused` when
 *                               the command was refused, `timeout` after
 *                               timeout_ms; then the stream ends
 *
 * Event ids are positions (versions for a stream); a reconnecting client's
 * Last-Event-ID takes the place of `after`, and what it missed is read
 * again from the event store, so nothing is lost across a reconnect.
 *
 * No thread per subscriber: the answer is a libmicrohttpd callback
 * response. When the callback has nothing to send it suspends the
 * connection, registers a waiter (src/query/wait.h: the projection's queue,
 * or the store head's for a stream) whose deadline is the next heartbeat,
 * and returns 0; the waiter's callback resumes the connection, and MHD
 * calls the reader again. In distributed mode the waiters are advanced by
 * src/projection/listen.c (other nodes' commits and progress), so a
 * subscriber on one node hears what another node did.
 *
 * A client that went away is noticed at the next write (at the latest the
 * next heartbeat): MHD closes the connection and frees the response, and
 * sse_free() gives back the subscriber's place.
 *
 * Threads: the reader runs on the MHD thread of its connection; the
 * waiter's callback (projector, writer, listener or timer thread) only
 * resumes the connection. The state is touched by one thread at a time: a
 * waiter exists only while the connection is suspended. The table of
 * recent command outcomes has its own mutex.
 */
#include <microhttpd.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/base.h"
#include "base/problem.h"
#include "base/strbuf.h"
#include "http/http.h"
#include "query/wait.h"

#define DEFAULT_MAX_SUBSCRIBERS 1024
#define DEFAULT_HEARTBEAT_MS 15000
#define DEFAULT_COMMAND_TIMEOUT_MS 30000
#define MAX_COMMAND_TIMEOUT_MS 600000
#define SSE_MAX_PROJECTIONS 16
#define SSE_PAGE 100      /* events read per step */
#define CMD_WINDOW 20000 /* events searched back for a command's id */
#define CMD_PAGE 500      /* of them read at once */
#define RECENT_COMMANDS 4096

enum sse_kind { SSE_PROJECTION, SSE_STREAM, SSE_ALL, SSE_COMMAND };

typedef struct sse {
    cq_server *srv;
    struct MHD_Connection *conn;
    enum sse_kind kind;
    int proj[SSE_MAX_PROJECTIONS];
    int nproj;
    int64_t last; /* position (version for a stream) last sent */
    char stream[CQ_STREAM_ID_MAX];
    char command[40];
    int64_t target;       /* command: the position to be visible */
    uint64_t deadline_ns; /* command: when to give up */
    uint64_t beat_ns;     /* next heartbeat */
    cq_wait *wait;        /* set only while suspended */
    int done;             /* end once `out` is sent */
    cq_strbuf out;
    size_t off;
} sse;

/* ---- recent command outcomes ------------------------------------------- */

typedef struct recent {
    char id[40];
    int status;
    int64_t position;
    char *problem; /* refused: the answer's body */
} recent;

struct cq_sse_commands {
    pthread_mutex_t mu;
    recent ring[RECENT_COMMANDS];
    size_t next;
};

int cq_sse_init(cq_server *s, unsigned max_subscribers, unsigned heartbeat_ms)
{
    s->sse_max = max_subscribers ? max_subscribers : DEFAULT_MAX_SUBSCRIBERS;
    s->sse_heartbeat_ms = heartbeat_ms ? heartbeat_ms : DEFAULT_HEARTBEAT_MS;
    atomic_init(&s->sse_count, 0);
    s->sse_commands = calloc(1, sizeof *s->sse_commands);
    if (s->sse_commands == NULL)
        return CQ_ENOMEM;
    pthread_mutex_init(&s->sse_commands->mu, NULL);
    return CQ_OK;
}

void cq_sse_free(cq_server *s)
{
    if (s->sse_commands == NULL)
        return;
    for (size_t i = 0; i < RECENT_COMMANDS; i++)
        free(s->sse_commands->ring[i].problem);
    pthread_mutex_destroy(&s->sse_commands->mu);
    free(s->sse_commands);
    s->sse_commands = NULL;
}

void cq_sse_note_command(cq_server *s, const cq_write_req *w)
{
    struct cq_sse_commands *t = s->sse_commands;
    recent *r;
    char *problem = NULL;

    if (t == NULL || w->command_id[0] == '\0')
        return;
    if ((w->status < 200 || w->status >= 300) && w->response != NULL)
        problem = strdup(w->response); /* NULL: answered without the body */
    pthread_mutex_lock(&t->mu);
    r = &t->ring[t->next];
    t->next = (t->next + 1) % RECENT_COMMANDS;
    free(r->problem);
    snprintf(r->id, sizeof r->id, "%s", w->command_id);
    r->status = w->status;
    r->position = w->position;
    r->problem = problem;
    pthread_mutex_unlock(&t->mu);
}

/* Look command id up among the recent outcomes: 1 found (*status,
 * *position, *problem: a copy or NULL), 0 not. */
static int recent_find(cq_server *s, const char *id, int *status,
                       int64_t *position, char **problem)
{
    struct cq_sse_commands *t = s->sse_commands;
    int found = 0;

    pthread_mutex_lock(&t->mu);
    for (size_t i = 0; i < RECENT_COMMANDS && !found; i++) {
        recent *r = &t->ring[(t->next + RECENT_COMMANDS - 1 - i) %
                             RECENT_COMMANDS];
        if (r->id[0] != '\0' && strcmp(r->id, id) == 0) {
            *status = r->status;
            *position = r->position;
            *problem = r->problem ? strdup(r->problem) : NULL;
            found = 1;
        }
    }
    pthread_mutex_unlock(&t->mu);
    return found;
}

typedef struct cmd_scan {
    const char *id;
    char needle[64];
    int64_t position; /* last event of the command, 0 none */
} cmd_scan;

static int scan_event(void *arg, const cq_stored_event *ev)
{
    cmd_scan *c = arg;
    json_t *m;

    if (strstr(ev->metadata, c->needle) == NULL)
        return 0;
    m = json_loads(ev->metadata, 0, NULL);
    if (m != NULL) {
        const char *id = json_string_value(json_object_get(m, "command_id"));
        if (id != NULL && strcmp(id, c->id) == 0)
            c->position = ev->position;
        json_decref(m);
    }
    return 0;
}

/* The position of the last event command id wrote, from the events'
 * metadata: the last CMD_WINDOW events are searched in pages from the head
 * down, stopping at the first page that has it (a command's events are
 * consecutive, so the last match there is its last event). For another
 * node's commands, or ones from before a restart. CQ_OK (*position 0:
 * none), or a read error. */
static int store_find(cq_server *s, const char *id, int64_t *position)
{
    cmd_scan c = {id, "", 0};
    int64_t head = 0, top, floor;
    int rc;

    snprintf(c.needle, sizeof c.needle, "\"%s\"", id);
    rc = cq_store_head_position(s->store, &head);
    if (rc != CQ_OK)
        return rc;
    floor = head > CMD_WINDOW ? head - CMD_WINDOW + 1 : 1;
    for (top = head; top >= floor && c.position == 0; top -= CMD_PAGE) {
        int64_t from = top - CMD_PAGE + 1 < floor ? floor : top - CMD_PAGE + 1;
        rc = cq_store_read_all(s->store, from, (int)(top - from + 1), scan_event,
                               &c, NULL, NULL, 0);
        if (rc != CQ_OK)
            return rc;
    }
    *position = c.position;
    return CQ_OK;
}

/* ---- the event-stream text --------------------------------------------- */

/* One event: `id`, `event` and the data (one line of JSON). */
static void emit(sse *s, int64_t id, const char *event, json_t *data)
{
    char *text = data ? json_dumps(data, JSON_COMPACT) : NULL;

    cq_strbuf_puts(&s->out, "id: ");
    cq_strbuf_int(&s->out, id);
    cq_strbuf_puts(&s->out, "\nevent: ");
    cq_strbuf_puts(&s->out, event);
    cq_strbuf_puts(&s->out, "\ndata: ");
    cq_strbuf_puts(&s->out, text ? text : "{}");
    cq_strbuf_puts(&s->out, "\n\n");
    free(text);
    json_decref(data);
}

static int add_event(void *arg, const cq_stored_event *se)
{
    sse *s = arg;

    json_t *ev = cq_http_event_json(s->srv->domain, se);

    if (ev == NULL) /* a stored string that is not UTF-8 (or no memory) */
        ev = json_pack("{s:I,s:I,s:s}", "position", (json_int_t)se->position,
                       "version", (json_int_t)se->version, "decode_error",
                       "the stored event cannot be shown as JSON");
    s->last = s->kind == SSE_ALL ? se->position : se->version;
    emit(s, s->last, "event", ev);
    return 0;
}

/* ---- one step: what to send now, or where to wait ---------------------- */

/* What step() found: send what is in s->out (or end), or wait. */
enum { STEP_SEND, STEP_WAIT_POSITION, STEP_WAIT_STREAM };

/* Fill s->out with what there is to send, or set s->done (STEP_SEND);
 * else say what to wait for: queue (CQ_QUERY_HEAD: the store's head) to
 * reach *target (STEP_WAIT_POSITION), or the store to commit s->stream's
 * version *target, *target being the head seen before the stream was read
 * (STEP_WAIT_STREAM: a commit of another stream wakes nobody). */
static int step(sse *s, int *queue, int64_t *target)
{
    cq_engine *e = s->srv->engine;
    char err[256];
    int rc;

    switch (s->kind) {
    case SSE_PROJECTION: {
        int failed = 0;
        int64_t pos = cq_engine_position(e, s->proj[0], &failed);
        int64_t head = cq_engine_head(e);
        if (pos > s->last) {
            double lag_ms = 0;
            int lag_ok = cq_engine_lag_ms(e, pos, head, &lag_ms, err,
                                          sizeof err) == CQ_OK;
            s->last = pos;
            emit(s, pos, "progress",
                 json_pack("{s:s,s:I,s:I,s:I,s:o,s:b}", "projection",
                           cq_engine_projection_name(e, s->proj[0]), "position",
                           (json_int_t)pos, "head", (json_int_t)head,
                           "lag_events",
                           (json_int_t)(head > pos ? head - pos : 0), "lag_ms",
                           lag_ok ? json_real(lag_ms) : json_null(), "failed",
                           failed));
            return STEP_SEND;
        }
        *queue = s->proj[0];
        *target = s->last + 1;
        return STEP_WAIT_POSITION;
    }
    case SSE_STREAM:
    case SSE_ALL: {
        int64_t head = cq_engine_head(e), before = s->last;
        rc = s->kind == SSE_ALL
                 ? cq_store_read_all(s->srv->store, s->last + 1, SSE_PAGE,
                                     add_event, s, NULL, err, sizeof err)
                 : cq_store_read_stream(s->srv->store, s->stream, s->last + 1,
                                        SSE_PAGE, add_event, s, NULL, err,
                                        sizeof err);
        if (rc != CQ_OK && rc != CQ_ENOTFOUND) {
            emit(s, s->last, "error",
                 json_pack("{s:s}", "detail", "the event store cannot be read"));
            s->done = 1;
            return STEP_SEND;
        }
        if (s->last > before)
            return STEP_SEND;
        *queue = CQ_QUERY_HEAD;
        *target = head + (s->kind == SSE_ALL);
        return s->kind == SSE_ALL ? STEP_WAIT_POSITION : STEP_WAIT_STREAM;
    }
    case SSE_COMMAND:
        for (int i = 0; i < s->nproj; i++) {
            if (cq_engine_position(e, s->proj[i], NULL) < s->target) {
                if (cq_mono_ns() >= s->deadline_ns) {
                    emit(s, s->target, "timeout",
                         json_pack("{s:s,s:I,s:s}", "command_id", s->command,
                                   "position", (json_int_t)s->target,
                                   "projection",
                                   cq_engine_projection_name(e, s->proj[i])));
                    s->done = 1;
                    return STEP_SEND;
                }
                *queue = s->proj[i];
                *target = s->target;
                return STEP_WAIT_POSITION;
            }
        }
        {
            json_t *names = json_array();
            for (int i = 0; i < s->nproj; i++)
                json_array_append_new(
                    names,
                    json_string(cq_engine_projection_name(e, s->proj[i])));
            emit(s, s->target, "visible",
                 json_pack("{s:s,s:I,s:o}", "command_id", s->command,
                           "position", (json_int_t)s->target, "projections",
                           names));
        }
        s->done = 1;
        return STEP_SEND;
    }
    return STEP_SEND;
}

static void on_wake(void *arg)
{
    sse *s = arg;
    MHD_resume_connection(s->conn);
}

static ssize_t sse_read(void *cls, uint64_t pos, char *buf, size_t max)
{
    sse *s = cls;
    int queue = 0, what;
    int64_t target = 0, timeout_ms;
    uint64_t now, until;
    int rc;

    (void)pos;
    if (s->wait != NULL) { /* resumed */
        cq_wait_release(s->wait);
        s->wait = NULL;
        atomic_fetch_sub(&s->srv->waiting, 1);
    }
    for (;;) {
        if (s->out.oom)
            return MHD_CONTENT_READER_END_WITH_ERROR;
        if (s->off < s->out.len) {
            size_t n = s->out.len - s->off;
            if (n > max)
                n = max;
            memcpy(buf, s->out.p + s->off, n);
            s->off += n;
            return (ssize_t)n;
        }
        cq_strbuf_reset(&s->out);
        s->off = 0;
        if (s->done)
            return MHD_CONTENT_READER_END_OF_STREAM;
        what = step(s, &queue, &target);
        if (what == STEP_SEND)
            continue;
        now = cq_mono_ns();
        if (now >= s->beat_ns) {
            cq_strbuf_puts(&s->out, ": heartbeat\n\n");
            s->beat_ns = now + (uint64_t)s->srv->sse_heartbeat_ms * 1000000u;
            continue;
        }
        until = s->beat_ns;
        if (s->kind == SSE_COMMAND && s->deadline_ns < until)
            until = s->deadline_ns;
        timeout_ms = (int64_t)((until - now) / 1000000u) + 1;
        atomic_fetch_add(&s->srv->waiting, 1);
        MHD_suspend_connection(s->conn);
        rc = what == STEP_WAIT_STREAM
                 ? cq_query_wait_stream(s->srv->engine, queue, s->stream,
                                        s->last + 1, target, timeout_ms,
                                        on_wake, s, &s->wait)
                 : cq_query_wait(s->srv->engine, queue, target, timeout_ms,
                                 on_wake, s, &s->wait);
        if (rc == CQ_WAIT_PENDING)
            return 0;
        /* not registered: reached already (look again), or the server
         * stops (end the stream) */
        atomic_fetch_sub(&s->srv->waiting, 1);
        if (rc != CQ_WAIT_READY)
            s->done = 1;
        MHD_resume_connection(s->conn);
        return 0;
    }
}

static void sse_free(void *cls)
{
    sse *s = cls;

    if (s->wait != NULL) {
        cq_wait_release(s->wait);
        atomic_fetch_sub(&s->srv->waiting, 1);
    }
    atomic_fetch_sub(&s->srv->sse_count, 1);
    free(s->out.p);
    free(s);
}

/* ---- the request -------------------------------------------------------- */

typedef struct sub_params {
    const char *projection[SSE_MAX_PROJECTIONS];
    int nproj;
    const char *after, *stream, *command, *timeout;
    char bad[160];
    char key[72];
} sub_params;

static enum MHD_Result collect(void *cls, enum MHD_ValueKind kind,
                               const char *key, const char *value)
{
    sub_params *p = cls;
    const char **one = NULL;

    (void)kind;
    if (strcmp(key, "projection") == 0) {
        if (p->nproj == SSE_MAX_PROJECTIONS) {
            snprintf(p->key, sizeof p->key, "projection");
            snprintf(p->bad, sizeof p->bad, "is given more than %d times",
                     SSE_MAX_PROJECTIONS);
            return MHD_NO;
        }
        p->projection[p->nproj++] = value ? value : "";
        return MHD_YES;
    }
    if (strcmp(key, "after") == 0)
        one = &p->after;
    else if (strcmp(key, "stream") == 0)
        one = &p->stream;
    else if (strcmp(key, "command") == 0)
        one = &p->command;
    else if (strcmp(key, "timeout_ms") == 0)
        one = &p->timeout;
    snprintf(p->key, sizeof p->key, "%.64s", key);
    if (one == NULL) {
        snprintf(p->bad, sizeof p->bad, "is not a parameter of this resource");
        return MHD_NO;
    }
    if (*one != NULL) {
        snprintf(p->bad, sizeof p->bad, "is given more than once");
        return MHD_NO;
    }
    *one = value ? value : "";
    return MHD_YES;
}

static int command_id_ok(const char *id)
{
    size_t n = strlen(id);

    if (n == 0 || n > 36)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!((id[i] >= '0' && id[i] <= '9') || (id[i] >= 'a' && id[i] <= 'f') ||
              (id[i] >= 'A' && id[i] <= 'F') || id[i] == '-'))
            return 0;
    return 1;
}

/* Where the subscription starts: Last-Event-ID, else `after`, else def.
 * 1, or 0 with a 400 queued. */
static int start_at(request *q, const sub_params *p, int64_t def, int64_t *out,
                    enum MHD_Result *ret)
{
    const char *last = MHD_lookup_connection_value(q->conn, MHD_HEADER_KIND,
                                                   "Last-Event-ID");

    *out = def;
    if (last != NULL) {
        if (cq_http_parse_int(last, out) != CQ_OK) {
            *ret = cq_http_send_problem(
                q->conn, 400, "bad-header", NULL,
                "Last-Event-ID must be an event id this resource sent "
                "(a non-negative integer)");
            return 0;
        }
        return 1;
    }
    if (p->after != NULL && cq_http_parse_int(p->after, out) != CQ_OK) {
        *ret = cq_http_bad_param(q->conn, "after",
                                 "must be a non-negative integer");
        return 0;
    }
    return 1;
}

/* Resolve the command: 1 with s->target set, or with a `refused` event
 * and s->done; 0 with an answer queued into *ret. */
static int resolve_command(request *q, sse *s, enum MHD_Result *ret)
{
    int status = 0;
    int64_t position = 0;
    char *problem = NULL;
    int rc;

    if (recent_find(q->srv, s->command, &status, &position, &problem)) {
        if (status >= 200 && status < 300) {
            s->target = position;
            return 1;
        }
        {
            json_t *doc = problem ? json_loads(problem, 0, NULL) : NULL;
            if (doc == NULL)
                doc = json_pack("{s:i}", "status", status);
            json_object_set_new(doc, "command_id", json_string(s->command));
            emit(s, 0, "refused", doc);
        }
        free(problem);
        s->done = 1;
        return 1;
    }
    rc = store_find(q->srv, s->command, &position);
    if (rc != CQ_OK) {
        *ret = cq_http_send_problem(q->conn, 503, "unavailable", NULL,
                                    "the event store cannot be read now");
        return 0;
    }
    if (position == 0) {
        *ret = cq_http_send_problem(
            q->conn, 404, "unknown-command", NULL,
            "no recent command %s is known: not answered by this server "
            "since it started, and no event among the last %d carries it",
            s->command, CMD_WINDOW);
        return 0;
    }
    s->target = position;
    return 1;
}

/* Check the parameters into s. 1, or 0 with a 4xx queued into *ret. */
static int setup(request *q, sse *s, enum MHD_Result *ret)
{
    sub_params p = {0};
    cq_engine *e = q->srv->engine;
    int64_t timeout_ms = DEFAULT_COMMAND_TIMEOUT_MS, v;

    MHD_get_connection_values(q->conn, MHD_GET_ARGUMENT_KIND, collect, &p);
    if (p.bad[0] != '\0') {
        *ret = cq_http_bad_param(q->conn, p.key, "%s", p.bad);
        return 0;
    }
    for (int i = 0; i < p.nproj; i++) {
        s->proj[i] = cq_engine_projection(e, p.projection[i]);
        if (s->proj[i] < 0) {
            *ret = cq_http_bad_param(q->conn, "projection",
                                     "names no projection");
            return 0;
        }
        for (int j = 0; j < i; j++)
            if (s->proj[j] == s->proj[i]) {
                *ret = cq_http_bad_param(q->conn, "projection",
                                         "names a projection twice");
                return 0;
            }
    }
    s->nproj = p.nproj;
    if ((p.stream != NULL) + (p.command != NULL) + (p.nproj > 0 && !p.command) !=
        1) {
        *ret = cq_http_bad_param(
            q->conn, p.stream ? "stream" : p.command ? "command" : "projection",
            "give one of: projection=P; stream=ID; command=ID with "
            "projection=P...");
        return 0;
    }
    if (p.timeout != NULL && p.command == NULL) {
        *ret = cq_http_bad_param(q->conn, "timeout_ms",
                                 "is for command subscriptions only");
        return 0;
    }
    if (p.stream != NULL) {
        size_t n = strlen(p.stream);
        if (n == 0 || n >= sizeof s->stream) {
            *ret = cq_http_bad_param(q->conn, "stream",
                                     "must be a stream id of 1 to %d bytes",
                                     (int)sizeof s->stream - 1);
            return 0;
        }
        memcpy(s->stream, p.stream, n + 1);
        if (strcmp(p.stream, "$all") == 0) {
            s->kind = SSE_ALL;
            if (cq_store_head_position(q->srv->store, &v) != CQ_OK)
                v = 0;
        } else {
            s->kind = SSE_STREAM;
            v = 0;
            if (cq_store_read_stream(q->srv->store, s->stream, 1, 0, add_event,
                                     s, &v, NULL, 0) != CQ_OK)
                v = 0;
        }
        return start_at(q, &p, v, &s->last, ret);
    }
    if (p.command != NULL) {
        if (p.after != NULL) {
            *ret = cq_http_bad_param(q->conn, "after",
                                     "is not for command subscriptions");
            return 0;
        }
        if (!command_id_ok(p.command)) {
            *ret = cq_http_bad_param(q->conn, "command",
                                     "must be a command id (a UUID)");
            return 0;
        }
        if (p.nproj == 0) {
            *ret = cq_http_bad_param(q->conn, "projection",
                                     "is needed with command: which read "
                                     "models must show it");
            return 0;
        }
        if (p.timeout != NULL && (cq_http_parse_int(p.timeout, &timeout_ms) !=
                                      CQ_OK ||
                                  timeout_ms < 1 ||
                                  timeout_ms > MAX_COMMAND_TIMEOUT_MS)) {
            *ret = cq_http_bad_param(q->conn, "timeout_ms",
                                     "must be an integer from 1 to %d",
                                     MAX_COMMAND_TIMEOUT_MS);
            return 0;
        }
        snprintf(s->command, sizeof s->command, "%s", p.command);
        s->kind = SSE_COMMAND;
        s->deadline_ns = cq_mono_ns() + (uint64_t)timeout_ms * 1000000u;
        return resolve_command(q, s, ret);
    }
    if (p.nproj != 1) {
        *ret = cq_http_bad_param(q->conn, "projection",
                                 "is given more than once");
        return 0;
    }
    s->kind = SSE_PROJECTION;
    /* without a start, the first event is the position now */
    return start_at(q, &p, -1, &s->last, ret);
}

enum MHD_Result cq_http_subscribe(request *q, int head)
{
    static const char *const hdr[][2] = {
        {MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream"},
        {MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache"},
        {"X-Accel-Buffering", "no"},
    };
    struct MHD_Response *r;
    enum MHD_Result ret = MHD_NO;
    sse *s;

    if (q->srv->engine == NULL)
        return cq_http_send_problem(q->conn, 404, "not-found", NULL,
                                    "this server has no projections");
    if (atomic_fetch_add(&q->srv->sse_count, 1) >= (int)q->srv->sse_max) {
        const char *const busy[][2] = {{MHD_HTTP_HEADER_RETRY_AFTER, "5"}};
        atomic_fetch_sub(&q->srv->sse_count, 1);
        return cq_http_send_with(
            q->conn, 503, CQ_PROBLEM_CONTENT_TYPE,
            cq_problem_text(503, "too-many-subscribers", NULL,
                            "this server has as many subscribers as it "
                            "takes; try again later"),
            busy, 1);
    }
    s = calloc(1, sizeof *s);
    if (s == NULL) {
        atomic_fetch_sub(&q->srv->sse_count, 1);
        return cq_http_send_problem(q->conn, 500, "internal", NULL,
                                    "out of memory");
    }
    s->srv = q->srv;
    s->conn = q->conn;
    s->last = 0;
    if (!setup(q, s, &ret)) {
        sse_free(s);
        return ret;
    }
    s->beat_ns = cq_mono_ns() + (uint64_t)q->srv->sse_heartbeat_ms * 1000000u;
    if (head) {
        sse_free(s);
        r = MHD_create_response_from_buffer(0, "", MHD_RESPMEM_PERSISTENT);
    } else {
        /* the first bytes: a reconnect delay for EventSource, so headers
         * and something go out at once */
        char *first = NULL;
        size_t n = s->out.len;
        first = n ? strdup(s->out.p) : NULL;
        cq_strbuf_reset(&s->out);
        cq_strbuf_puts(&s->out, "retry: 1000\n\n");
        if (first != NULL)
            cq_strbuf_puts(&s->out, first);
        free(first);
        r = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096, sse_read,
                                              s, sse_free);
        if (r == NULL)
            sse_free(s);
    }
    if (r == NULL)
        return cq_http_send_problem(q->conn, 500, "internal", NULL,
                                    "out of memory");
    for (size_t i = 0; i < sizeof hdr / sizeof hdr[0]; i++)
        MHD_add_response_header(r, hdr[i][0], hdr[i][1]);
    ret = MHD_queue_response(q->conn, 200, r);
    MHD_destroy_response(r);
    return ret;
}
