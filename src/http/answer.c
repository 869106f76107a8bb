/*
 * answer.c -- queueing an answer on a connection: a body with its status,
 * content type and headers; JSON documents; problem+json errors (RFC 9457,
 * see base/problem.c); 405 with its Allow header.
 *
 * Every answer goes through cq_http_send_with(), which also notes the
 * status it queued in a thread-local variable: MHD runs a request's
 * callback and queues its answer on one thread, so the command counters
 * (metrics.c) learn how a request ended without every error path
 * reporting it.
 *
 * Threads: any MHD thread, for a connection it is calling back for. No
 * shared state beyond the thread-local status.
 */
#include <microhttpd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/problem.h"
#include "http/http.h"

/* The status of the last answer queued by this thread (see above). */
static _Thread_local int last_status;

int cq_http_last_status(void)
{
    return last_status;
}

void cq_http_last_status_reset(void)
{
    last_status = 0;
}

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

enum MHD_Result cq_http_send_method_not_allowed(struct MHD_Connection *c,
                                                const char *method,
                                                const char *allow)
{
    char *text =
        cq_problem_text(405, "method-not-allowed", NULL,
                        "%s is not allowed here; use %s", method, allow);
    const char *const hdr[][2] = {{MHD_HTTP_HEADER_ALLOW, allow}};
    return cq_http_send_with(c, 405, CQ_PROBLEM_CONTENT_TYPE, text, hdr, 1);
}
