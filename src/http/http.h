/*
 * http.h -- what the files of src/http share: the server and request
 * structs and the answer and parameter helpers (server.c), used by the
 * query routes (query.c).
 *
 * A request lives from the first MHD callback for it until MHD's
 * completion callback; see server.c for its life and which thread touches
 * which field. What a query means (freshness, waits, strong reads) is
 * src/query; these files only parse, route and answer.
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

    /* open connections and the request-head deadline (conns.c) */
    struct cq_conns *conns;
    /* libmicrohttpd's messages (on_mhd_error): the current second, the
     * lines written in it and those left out */
    atomic_llong log_second;
    atomic_int log_lines, log_dropped;
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
    R_METRICS
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

/* Queue an answer: body (malloc'd, taken over; NULL = out of memory) with
 * content type and nh extra headers {name, value} (NULL names skipped). */
enum MHD_Result cq_http_send_with(struct MHD_Connection *c, int status,
                                  const char *ctype, char *body,
                                  const char *const (*hdr)[2], size_t nh);

/* Queue doc (taken over) as application/json. */
enum MHD_Result cq_http_send_json(struct MHD_Connection *c, int status,
                                  json_t *doc);

/* Queue a problem+json answer; errors (may be NULL) is taken over. */
enum MHD_Result cq_http_send_problem(struct MHD_Connection *c, int status,
                                     const char *slug, json_t *errors,
                                     const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

/* Queue a 400 bad-parameter problem about query parameter `name`, with
 * errors [{field: name, message}]. */
enum MHD_Result cq_http_bad_param(struct MHD_Connection *c, const char *name,
                                  const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* 1 if every query parameter is in allowed (NULL-terminated, at most 32)
 * and none repeats; else queues a 400 into *ret and returns 0. */
int cq_http_params_ok(request *q, const char *const *allowed,
                      enum MHD_Result *ret);

/* Query parameter as an integer in [min, max] or def if absent; else
 * queues a 400 into *ret and returns 0. */
int cq_http_param_int(request *q, const char *name, int64_t def, int64_t min,
                      int64_t max, int64_t *out, enum MHD_Result *ret);

/* Strict non-negative decimal; CQ_OK or CQ_EINVAL. */
int cq_http_parse_int(const char *s, int64_t *out);

/* ---- query.c ---- */

/* GET /queries/{name}: validate, then answer now or suspend until the
 * read model is fresh enough (or the wait times out). */
enum MHD_Result cq_http_query(request *q);

/* MHD called back for a request that was waiting for a projection. */
enum MHD_Result cq_http_resumed(request *q);

/* After the writer answered a command with ?wait_for=P: wait until
 * projection P has applied position q->w.position, then answer. */
enum MHD_Result cq_http_wait_for_command(request *q);

/* ---- ops.c ---- */

/* /projections, /projections/{name}, /projections/{name}/{operation}
 * (q->target is what follows "/projections/", "" for the list). */
enum MHD_Result cq_http_projections(request *q, const char *method);

/* GET /readyz. */
enum MHD_Result cq_http_readyz(request *q);

/* MHD called back for a control operation the projector has carried out
 * (from cq_http_resumed). */
enum MHD_Result cq_http_control_resumed(request *q);

/* Free what the query side of q owns (completion). */
void cq_http_query_free(request *q);

#endif
