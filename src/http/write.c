/*
 * write.c -- what every write request shares (POST /commands/{type} in
 * commands.c, POST /streams/{id} in streams.c): its headers
 * (Content-Type, Idempotency-Key, If-Match), its JSON body, the hash that
 * makes an Idempotency-Key replay safe, and the round trip to the writer.
 *
 * A write is first offered to an idle writer (cq_writer_try_run) when
 * its connection is the server's only one and this thread is not kept
 * waiting for a CPU (inline_watch.h): one client sending commands one
 * after another gets its batch of one run on this MHD thread and the
 * answer sent at once, without two thread hand-offs. Otherwise it is
 * handed to the writer (cq_http_submit) after its connection is
 * suspended; the writer's done() callback, on_written(), runs on the
 * writer thread, stores q->answered and resumes the connection, and MHD
 * calls back on one of its threads, where cq_http_send_written() sends
 * the answer. Nothing else of the request is touched by the writer
 * thread. srv->pending counts the requests handed to the writer and not
 * yet answered (cq_server_stop waits for them).
 */
#include <microhttpd.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "base/base.h"
#include "base/problem.h"
#include "command/command.h"
#include "http/conns.h"
#include "http/http.h"
#include "http/inline_watch.h"

/* 1 if Content-Type is application/json (charset, if any, utf-8). */
int cq_http_content_type_ok(struct MHD_Connection *c)
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

/* The key stored in the command log for key k (n bytes): k itself on an
 * open server; with a token, "NAME:k", or "NAME#" and k's SHA-256 when
 * that is too long, so a key used by another token is another key (token
 * names have neither ':' nor '#'; docs/security.md). */
static void scope_key(request *q, const char *k, size_t n)
{
    size_t t = strlen(q->token);

    if (t == 0)
        memcpy(q->w.idem_key, k, n + 1);
    else if (t + 1 + n < CQ_IDEM_KEY_MAX) {
        memcpy(q->w.idem_key, q->token, t);
        q->w.idem_key[t] = ':';
        memcpy(q->w.idem_key + t + 1, k, n + 1);
    }
    else {
        char h[65];
        cq_sha256_hex(k, n, h);
        snprintf(q->w.idem_key, CQ_IDEM_KEY_MAX, "%s#%s", q->token, h);
    }
}

/* Idempotency-Key: absent, or 1-255 visible ASCII characters. Copies it
 * into q->w.idem_key. 0 and a 400 answer if malformed. */
int cq_http_idem_key_ok(request *q, enum MHD_Result *ret)
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
            scope_key(q, k, n);
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
int cq_http_if_match_ok(request *q, int64_t *expected, const char **raw,
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
json_t *cq_http_parse_body(request *q, enum MHD_Result *ret)
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
    doc = json_loadb(q->body, q->len, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY,
                     &jerr);
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
enum MHD_Result cq_http_send_validation(request *q, const cq_errors *errs)
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
int cq_http_hash_request(request *q, const char *what, const char *precond,
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

/* Writer thread: the answer is final. Must not touch q after resuming. */
static void on_written(cq_write_req *r)
{
    request *q = r->user;
    atomic_store(&q->answered, 1);
    MHD_resume_connection(q->conn);
}

/* Per MHD thread: whether it runs commands itself (inline_watch.h). */
static _Thread_local cq_inline_watch watch;

/* Run q->w at once if the writer is idle and send the answer; else hand
 * it to the writer, and the connection sleeps until on_written(). */
enum MHD_Result cq_http_submit(request *q)
{
    int rc;

    if (cq_uuid7(q->w.command_id) != CQ_OK)
        return cq_http_send_problem(q->conn, 500, "internal", NULL,
                                    "no random bytes for a command id");
    q->w.done = on_written;
    q->w.user = q;
    q->queued = 1;
    atomic_fetch_add(&q->srv->pending, 1);
    /* Only while this is the server's one connection: an MHD thread that
     * runs a batch serves none of its other connections until the COMMIT
     * returns (under load the queue's batches are the better deal). */
    if (cq_conns_open(q->srv->conns) <= 1 && cq_inline_ok(&watch) &&
        cq_writer_try_run(q->srv->writer, &q->w)) {
        cq_inline_ran(&watch, cq_inline_run_delay());
        atomic_store(&q->answered, 1);
        return cq_http_send_written(q);
    }
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
enum MHD_Result cq_http_send_written(request *q)
{
    char etag[32] = "";
    char *body = q->w.response;
    int status = q->w.status;

    atomic_fetch_sub(&q->srv->pending, 1);
    cq_http_count_command(q, status);
    cq_sse_note_command(q->srv, &q->w);
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
            /* for GET /subscribe?command= (a refusal's body has no id) */
            {q->w.replayed || !q->w.command_id[0] ? NULL : "Command-Id",
             q->w.command_id},
        };
        return cq_http_send_with(q->conn, status,
                                 q->w.problem ? CQ_PROBLEM_CONTENT_TYPE
                                              : "application/json",
                                 body, hdr, 4);
    }
}
