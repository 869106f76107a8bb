/*
 * commands.c -- POST /commands/{type}: find the command type in the
 * domain, check the body against its schema and validator, derive the
 * stream id, and hand it to the writer (write.c). With ?wait_for= the
 * answer waits until that projection has applied the command's events
 * (query.c).
 *
 * Threads: an MHD thread, for the request it is calling back for.
 */
#include <microhttpd.h>
#include <stdio.h>

#include "base/base.h"
#include "command/command.h"
#include "http/http.h"

#define MAX_WAIT_MS 30000

enum MHD_Result cq_http_command(request *q)
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
    if (!cq_http_idem_key_ok(q, &ret) ||
        !cq_http_if_match_ok(q, &q->w.expected, &precond, &ret))
        return ret;
    body = cq_http_parse_body(q, &ret);
    if (body == NULL)
        return ret;
    errs = cq_errors_new();
    if (errs == NULL)
        goto nomem;
    cq_schema_check(def->schema, body, "", errs);
    if (cq_errors_count(errs) == 0 && def->validate != NULL)
        def->validate(body, errs);
    if (cq_errors_count(errs) > 0) {
        ret = cq_http_send_validation(q, errs);
        goto done;
    }
    if (def->stream_id(body, q->w.stream_id, sizeof q->w.stream_id) != CQ_OK) {
        ret = cq_http_send_problem(q->conn, 400, "validation-failed", NULL,
                                   "no stream id can be derived from the body");
        goto done;
    }
    snprintf(what, sizeof what, "command %s", def->type);
    if (cq_http_hash_request(q, what, precond, body) != CQ_OK)
        goto nomem;
    q->w.kind = CQ_WRITE_COMMAND;
    q->w.def = def;
    q->w.body = body;
    body = NULL;
    ret = cq_http_submit(q);
    goto done;
nomem:
    ret = cq_http_send_problem(q->conn, 500, "internal", NULL, "out of memory");
done:
    cq_errors_free(errs);
    json_decref(body);
    return ret;
}
