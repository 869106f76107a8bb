/*
 * streams.c -- the event store over HTTP: raw appends
 * (POST /streams/{id}, through the writer like commands, see write.c) and
 * reads of one stream or of all of them (GET /streams/{id},
 * GET /streams/$all), in pages bounded by events and by bytes.
 *
 * Reads run on the MHD thread that asked, through the store's read pool;
 * a stored event is decoded and upcast to its current shape (an event
 * that cannot be is answered as stored, with why).
 *
 * Threads: an MHD thread, for the request it is calling back for; no
 * shared state.
 */
#include <microhttpd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/base.h"
#include "base/errors.h"
#include "domain/domain.h"
#include "http/http.h"

#define MAX_PAGE 1000
#define DEFAULT_PAGE 100
#define DEFAULT_PAGE_BYTES (4 * 1024 * 1024) /* ?max_bytes= of event reads */
#define MIN_PAGE_BYTES 1024
#define MAX_PAGE_BYTES (16 * 1024 * 1024)
#define MAX_APPEND_EVENTS 100

/* ---- appends ------------------------------------------------------------ */

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

enum MHD_Result cq_http_append(request *q)
{
    static const char *const allowed[] = {NULL};
    cq_errors *errs = NULL;
    json_t *body = NULL;
    enum MHD_Result ret = MHD_NO;
    char what[CQ_STREAM_ID_MAX + 16];

    if (!cq_http_params_ok(q, allowed, &ret) || !cq_http_idem_key_ok(q, &ret))
        return ret;
    if (!stream_id_ok(q->target))
        return cq_http_send_problem(
            q->conn, 400, "bad-stream-id", NULL,
            "a stream id is 1 to 255 bytes of UTF-8 without "
            "control characters and must not start with $");
    body = cq_http_parse_body(q, &ret);
    if (body == NULL)
        return ret;
    errs = cq_errors_new();
    if (errs == NULL)
        goto nomem;
    check_append_body(body, &q->w.expected, errs);
    if (cq_errors_count(errs) > 0) {
        ret = cq_http_send_validation(q, errs);
        goto done;
    }
    if (!append_allowed(q, json_object_get(body, "events"), &ret))
        goto done;
    snprintf(q->w.stream_id, sizeof q->w.stream_id, "%s", q->target);
    snprintf(what, sizeof what, "append %s", q->target);
    if (cq_http_hash_request(q, what, "", body) != CQ_OK)
        goto nomem;
    q->w.kind = CQ_WRITE_APPEND;
    q->w.body = json_incref(json_object_get(body, "events"));
    ret = cq_http_submit(q);
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
json_t *cq_http_event_json(const cq_domain *domain, const cq_stored_event *se)
{
    char when[32], why[192];
    cq_decoded dec;
    json_t *ev;
    int rc;

    rc = cq_event_decode(domain, se, NULL,
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
    return ev;
}

static int add_event(void *arg, const cq_stored_event *se)
{
    page *pg = arg;
    json_t *ev;
    size_t size = strlen(se->data) + strlen(se->metadata) +
                  strlen(se->stream_id) + strlen(se->type) + EVENT_OVERHEAD;

    if (json_array_size(pg->events) > 0 && pg->bytes + size > pg->budget)
        return 1; /* the page is full: `next` continues here */
    ev = cq_http_event_json(pg->domain, se);
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

enum MHD_Result cq_http_read_stream(request *q)
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

enum MHD_Result cq_http_read_all(request *q)
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
