/*
 * http.h -- the internal interface of src/http: the server and request
 * structs, the helpers every route uses (answer.c, params.c, write.c,
 * metrics.c) and the route handlers server.c dispatches to (commands.c,
 * streams.c, query.c, ops.c, metrics.c).
 *
 * A request lives from the first MHD callback for it until MHD's
 * completion callback; see server.c for its life and which thread touches
 * which field.
 *
 * Rules for every function below unless it says otherwise:
 * - It runs on the MHD thread calling back for q (or for connection c)
 *   and touches no other request; the server's shared state it updates is
 *   atomic or thread-safe (metrics).
 * - "Queues an answer" means it calls MHD_queue_response() on q->conn
 *   (through cq_http_send_with) and returns what that returned: MHD_YES,
 *   or MHD_NO when MHD could not take it (MHD then closes the
 *   connection). A route handler returns MHD_YES without queueing only
 *   when it has suspended the connection (MHD calls back once resumed).
 * - A check of the form `int f(..., enum MHD_Result *ret)` returns 1 when
 *   the input is good (nothing queued) and 0 when it has queued a 4xx (or
 *   500) answer, whose MHD result it stores into *ret for the caller to
 *   return.
 *
 * What a query means (freshness, waits, strong reads) is src/query;
 * these files only parse, route and answer.
 */
#ifndef CQ_HTTP_H
#define CQ_HTTP_H

#include <microhttpd.h>
#include <stdatomic.h>

#include "http/server.h"
#include "base/metrics.h"
#include "projection/engine.h"
#include "query/query.h"

struct cq_server {
    struct MHD_Daemon *daemon;
    cq_store *store;
    cq_writer *writer;
    cq_engine *engine; /* NULL: no projections, no queries */
    const cq_domain *domain;
    size_t body_limit;
    double ready_max_lag_s; /* /readyz: lag above this is not ready */
    cq_metrics *metrics;    /* GET /metrics; updated from any thread */
    int ntypes;             /* command types of the domain */
    cq_counter **commands;  /* [type * outcomes + outcome] */
    cq_histogram *command_duration;
    cq_histogram *query_wait;
    cq_counter *wait_timeouts;
    atomic_int pending; /* requests waiting for the writer */
    atomic_int waiting; /* requests waiting for a projection */
    atomic_int held;    /* requests once suspended (queued to the writer
                           or waiting) whose answer is not sent yet:
                           cq_server_stop waits for them (server.c) */
    int max_waiters;    /* queries waiting at most; more: 503 (query.c) */
    struct cq_auth *auth; /* tokens and rate limit (auth.c); NULL: open */

    /* open connections and the request-head deadline (conns.c) */
    struct cq_conns *conns;
    /* libmicrohttpd's messages (on_mhd_error): the current second, the
     * lines written in it and those left out */
    atomic_llong log_second;
    atomic_int log_lines, log_dropped;

    /* GET /subscribe (subscribe.c) */
    unsigned sse_max;          /* subscribers at once; more are 503 */
    unsigned sse_heartbeat_ms; /* a comment after this long of silence */
    atomic_int sse_count;      /* subscribers now */
    struct cq_sse_commands *sse_commands; /* recent command outcomes */
};

enum route {
    R_NOT_FOUND,
    R_HEALTHZ,
    R_COMMAND,
    R_ALL,
    R_STREAM,
    R_QUERY,
    R_PROJECTIONS,
    R_READYZ,
    R_METRICS,
    R_UI, /* static.c */
    R_SUBSCRIBE,
    R_OPENAPI
};

#define CQ_QUERY_MAX_PARAMS 16

/* Query parameters read per request; more is 431 (no route takes more
 * than CQ_QUERY_MAX_PARAMS and the consistency parameters). */
#define CQ_HTTP_MAX_PARAMS 64

typedef struct request {
    cq_server *srv;
    struct MHD_Connection *conn;
    enum route route;
    const char *target; /* part of the URL after the route prefix */

    /* noted before the first call (on_uri) */
    int started;         /* the handler has seen the request head */
    int nul_in_path;     /* the raw path had %00 (MHD cuts the URL there) */
    int too_many_params; /* query string cut: more than CQ_HTTP_MAX_PARAMS */
    int held;            /* counted in srv->held (server.c) */
    char token[65];      /* the token's name (auth.c); "" when open */

    char *body;
    size_t len, cap;
    int too_large;
    int queued;          /* handed to the writer */
    atomic_int answered; /* the writer has called done() */
    cq_write_req w;

    /* waiting for a projection (queries; commands with ?wait_for=) */
    int projection; /* engine index, -1 if none */
    int waiting;    /* suspended until the waiter fires */
    cq_wait *wait;
    int64_t wait_ms;
    uint64_t deadline_ns; /* monotonic */
    int timed_out;
    int sent_written;       /* command answered by the writer, now waiting */
    uint64_t t0;            /* monotonic ns: command request complete */
    uint64_t wait_t0;       /* monotonic ns: started waiting */

    /* queries */
    const cq_decl_query *query;
    char *values[CQ_QUERY_MAX_PARAMS]; /* in query->params order; owned */
    char stream_id[CQ_STREAM_ID_MAX];  /* keyed queries */
    cq_query_target t; /* what it waits for (query.h); for a command with
                          ?wait_for=, t.position */

    /* POST /projections/{name}/{operation}, suspended (waiting = 1) until
     * the projector has carried it out */
    cq_control *control; /* NULL when refused at once */
    int control_index;   /* the projection */
    int control_rc;      /* refused at once: why */
    char control_op[32];
    char control_err[512];
} request;

/* ---- answer.c: queueing answers ----------------------------------------- */

/* Queue an answer with `status`, content type ctype (borrowed) and nh
 * extra headers hdr {name, value} (borrowed; a NULL name is skipped).
 * body is a NUL-terminated malloc'd text, taken over in every case (MHD
 * frees it after sending); NULL means out of memory and queues a 500
 * problem instead. Notes the status for cq_http_last_status(). */
enum MHD_Result cq_http_send_with(struct MHD_Connection *c, int status,
                                  const char *ctype, char *body,
                                  const char *const (*hdr)[2], size_t nh);

/* Queue doc as application/json. doc is taken over (NULL: out of memory,
 * a 500). */
enum MHD_Result cq_http_send_json(struct MHD_Connection *c, int status,
                                  json_t *doc);

/* Queue a problem+json answer with type urn:cqrsd:problem:<slug> and the
 * detail formatted from fmt (cut at 767 bytes). errors (may be NULL) is
 * taken over and becomes the `errors` member. */
enum MHD_Result cq_http_send_problem(struct MHD_Connection *c, int status,
                                     const char *slug, json_t *errors,
                                     const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

/* Queue a 405 problem about `method` with `Allow: allow` (both
 * borrowed). */
enum MHD_Result cq_http_send_method_not_allowed(struct MHD_Connection *c,
                                                const char *method,
                                                const char *allow);

/* The status of the last answer the calling thread queued through
 * cq_http_send_with() since cq_http_last_status_reset() (0: none). MHD
 * queues a request's answer on the thread that runs its callback, so the
 * caller of a route handler learns how the request ended. */
int cq_http_last_status(void);
void cq_http_last_status_reset(void);

/* ---- auth.c: tokens, scopes, rate limits -------------------------------- */

/* Check q's token for the scope its route needs, and its caller's rate
 * (the probes /healthz and /readyz need nothing). Sets q->token. 1, or 0
 * with 401 (WWW-Authenticate: Bearer), 403 (insufficient-scope, naming
 * the scope) or 429 (Retry-After) queued into *ret. */
int cq_http_auth_ok(request *q, const char *method, enum MHD_Result *ret);

/* ---- params.c: query parameters ----------------------------------------- */

/* Queue a 400 bad-parameter problem about query parameter `name`
 * (borrowed), with errors [{field: name, message}]. */
enum MHD_Result cq_http_bad_param(struct MHD_Connection *c, const char *name,
                                  const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Check that every query parameter of q is in allowed (NULL-terminated, at
 * most 32 names, borrowed) and none repeats. 1, or 0 with a 400 queued
 * into *ret. */
int cq_http_params_ok(request *q, const char *const *allowed,
                      enum MHD_Result *ret);

/* Query parameter `name` of q into *out: an integer in [min, max], or def
 * if absent. 1, or 0 with a 400 queued into *ret. */
int cq_http_param_int(request *q, const char *name, int64_t def, int64_t min,
                      int64_t max, int64_t *out, enum MHD_Result *ret);

/* Parse s as a strict non-negative decimal (no sign, spaces or excess;
 * within int64) into *out. CQ_OK, or CQ_EINVAL (*out untouched). Any
 * thread. */
int cq_http_parse_int(const char *s, int64_t *out);

/* ---- write.c: what commands and appends share ---------------------------- */

/* 1 if c's Content-Type is application/json (a charset, if any, utf-8),
 * else 0; queues nothing. */
int cq_http_content_type_ok(struct MHD_Connection *c);

/* Idempotency-Key of q: absent, or 1-255 visible ASCII characters, copied
 * into q->w.idem_key ("" when absent). 1, or 0 with a 400 queued into
 * *ret. */
int cq_http_idem_key_ok(request *q, enum MHD_Result *ret);

/* If-Match of q into *expected: absent (CQ_VERSION_ANY, *raw "") or "N"
 * with N >= 1 written as ETag writes it (*raw then points at the header,
 * borrowed from MHD until the request completes). 1, or 0 with a 400
 * queued into *ret. */
int cq_http_if_match_ok(request *q, int64_t *expected, const char **raw,
                        enum MHD_Result *ret);

/* q's body as a JSON object (new reference; duplicates rejected). NULL
 * with a 400 queued into *ret when it is empty, not JSON or not an
 * object. */
json_t *cq_http_parse_body(request *q, enum MHD_Result *ret);

/* Queue a 400 validation-failed problem listing errs (borrowed). */
enum MHD_Result cq_http_send_validation(request *q, const cq_errors *errs);

/* With an Idempotency-Key, write the canonical hash of the write (what,
 * precond and body, all borrowed) into q->w.command_hash; without one do
 * nothing. CQ_OK or CQ_ENOMEM. */
int cq_http_hash_request(request *q, const char *what, const char *precond,
                         const json_t *body);

/* Hand q->w (filled in: kind, stream, body taken over by q) to the writer
 * with a new command id. Suspends q's connection and returns MHD_YES; the
 * writer's answer (or a 503 when its queue is full or it has stopped)
 * resumes it, and the next callback sends it with cq_http_send_written().
 * A 500 is queued at once when no command id can be made. */
enum MHD_Result cq_http_submit(request *q);

/* Send the writer's answer to q (taking over q->w.response), with its
 * ETag, Idempotency-Replayed and Retry-After headers, and count it; a
 * command with ?wait_for= goes on waiting (cq_http_wait_for_command).
 * Call once, after q->answered is set. */
enum MHD_Result cq_http_send_written(request *q);

/* ---- metrics.c: the server's metrics ------------------------------------- */

/* Make s->metrics and register every series the server updates, so each
 * shows from the start (at zero). Needs s->domain, s->store, s->writer
 * and s->engine set. CQ_OK or CQ_ENOMEM; on failure what was made is left
 * in s for cq_http_metrics_free(). Before the daemon starts. */
int cq_http_metrics_init(cq_server *s);

/* Free what cq_http_metrics_init() made (also after it failed halfway).
 * After the daemon has stopped. */
void cq_http_metrics_free(cq_server *s);

/* Count how command request q ended (the status of its answer; 0 counts
 * nothing) under its command type, and its duration when q->t0 is set.
 * Requests for a type the domain does not have are not counted. */
void cq_http_count_command(request *q, int status);

/* GET /metrics: queues the Prometheus text. */
enum MHD_Result cq_http_metrics(request *q);

/* ---- commands.c ---------------------------------------------------------- */

/* POST /commands/{type} (q->target: the type), body complete: queues a
 * 4xx, or hands the command to the writer (cq_http_submit). */
enum MHD_Result cq_http_command(request *q);

/* ---- streams.c ----------------------------------------------------------- */

/* POST /streams/{id} (q->target: the id), body complete: queues a 4xx, or
 * hands the append to the writer (cq_http_submit). */
enum MHD_Result cq_http_append(request *q);

/* GET /streams/{id} (q->target: the id): queues a page of the stream's
 * events, or 404 / 4xx / 5xx. Reads through the store's read pool on the
 * calling thread. */
enum MHD_Result cq_http_read_stream(request *q);

/* GET /streams/$all: queues a page of every stream's events in position
 * order, or 4xx / 5xx. Like cq_http_read_stream. */
enum MHD_Result cq_http_read_all(request *q);

/* One stored event as the API shows it ({position, stream_id, version,
 * type, schema_version, data, metadata, recorded_at}, upcast through
 * domain; as stored with upcast_error / decode_error when it cannot be).
 * A new reference, or NULL (out of memory, a stored string that is not
 * UTF-8). Any thread. */
json_t *cq_http_event_json(const cq_domain *domain, const cq_stored_event *se);

/* ---- query.c ------------------------------------------------------------- */

/* GET /queries/{name}: validate, then answer now or suspend until the
 * read model is fresh enough (or the wait times out). */
enum MHD_Result cq_http_query(request *q);

/* MHD called back for a request that was waiting for a projection. */
enum MHD_Result cq_http_resumed(request *q);

/* After the writer answered a command with ?wait_for=P: wait until
 * projection P has applied position q->w.position, then answer. */
enum MHD_Result cq_http_wait_for_command(request *q);

/* Free what the query side of q owns (completion). Any request, once. */
void cq_http_query_free(request *q);

/* ---- ops.c --------------------------------------------------------------- */

/* /projections, /projections/{name}, /projections/{name}/{operation}
 * (q->target is what follows "/projections/", "" for the list). */
enum MHD_Result cq_http_projections(request *q, const char *method);

/* GET /healthz: queues 200 with the writer's head position. */
enum MHD_Result cq_http_healthz(request *q);

/* GET /readyz. */
enum MHD_Result cq_http_readyz(request *q);

/* MHD called back for a control operation the projector has carried out
 * (from cq_http_resumed). */
enum MHD_Result cq_http_control_resumed(request *q);

/* ---- static.c: GET /ui/... ---------------------------------------------- */

/* The static pages and the JavaScript client (static.h): q->target is
 * what follows "/ui" in the path. Queues an answer. */
enum MHD_Result cq_http_static(request *q);

/* ---- subscribe.c --------------------------------------------------------- */

/* Set up s's subscriber limit (0: 1024), heartbeat (0: 15000 ms) and the
 * table of recent command outcomes. CQ_OK or CQ_ENOMEM. Before the daemon
 * starts; cq_sse_free() after it has stopped (also after a failure). */
int cq_sse_init(cq_server *s, unsigned max_subscribers, unsigned heartbeat_ms);
void cq_sse_free(cq_server *s);

/* Note how the writer answered w (its command id, status, position and,
 * for a refusal, the problem), so GET /subscribe?command= can tell. Any
 * thread. */
void cq_sse_note_command(cq_server *s, const cq_write_req *w);

/* GET /subscribe (HEAD when head): queues a 4xx/503, or a
 * text/event-stream answer fed by a callback that suspends the connection
 * while there is nothing to send. */
enum MHD_Result cq_http_subscribe(request *q, int head);

/* ---- openapi.c ----------------------------------------------------------- */

/* An embedded file (cmake/embed.cmake): docs/openapi.yaml is
 * cq_http_openapi_files[0]; the list ends with name NULL. */
typedef struct cq_http_file {
    const char *name;
    const char *text; /* NUL-terminated */
    size_t len;
} cq_http_file;
extern const cq_http_file cq_http_openapi_files[];

/* GET /openapi.yaml: the API description compiled in (openapi.c). */
enum MHD_Result cq_http_openapi(request *q);

#endif
