/*
 * writer.c -- the single writer thread (see writer.h for the protocol).
 *
 * Threads and locks:
 *   - `mu` guards the queue (head, tail, queued) and `stopping`; `cv` is
 *     signalled when a request is queued or the writer is told to stop.
 *   - head_position is atomic: written by the writer after each commit,
 *     read by anyone.
 *   - `writable` is atomic, written by the writer thread only; `why` (the
 *     failure that made the store unwritable) is guarded by `mu`.
 *   - everything else (cache, decision, the store's write side) belongs to
 *     the writer thread alone.
 *
 * Outcomes of one request, decided inside its savepoint:
 *   KEEP        its writes stay (2xx); its answer goes to the command log
 *   UNDO_STORE  a stable refusal (404/409/412/422): writes undone, the
 *               answer still goes to the command log so a retry with the
 *               same key gets the same answer
 *   UNDO        a transient or internal failure (500, key reuse):
 *               writes undone, nothing remembered
 *   ABORT       the store failed: the whole batch is rolled back and
 *               every request in it is answered 503; nothing is durable
 *
 * Whether the store takes writes (cq_writer_writable, for /readyz and the
 * metrics) is what the last transaction showed: a failed batch makes it
 * unwritable (a full disk, an I/O error), the next commit that succeeds
 * writable again. So that an idle server (which a load balancer may have
 * stopped sending writes to because it was not ready) finds out that the
 * disk has room again, the writer, while unwritable and idle, commits a
 * probe every PROBE_INTERVAL_MS: a command-log entry under a key no client
 * can send (it has spaces), already expired, so it is never read and the
 * next prune deletes it.
 */
#include "command/writer.h"

#include <stdarg.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/base.h"
#include "base/problem.h"
#include "base/strbuf.h"
#include "command/cache.h"
#include "command/command.h"
#include "domain/domain.h"

#define PROBE_INTERVAL_MS 1000
#define PROBE_KEY "cqrsd write probe"

enum outcome { KEEP, UNDO_STORE, UNDO, ABORT };

struct cq_writer {
    cq_store *store;
    cq_writer_config cfg;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    cq_write_req *head, *tail; /* guarded by mu */
    int queued;                /* guarded by mu */
    int stopping;              /* guarded by mu */
    _Atomic int64_t head_position;
    atomic_int writable; /* written by the writer thread only */
    char why[512];       /* guarded by mu: why it is not writable */

    /* writer thread only */
    cq_cache *cache;
    cq_decision *decision;
    int64_t last_prune_ms; /* when the last prune pass started (monotonic) */
    int prune_pending;     /* a pass is under way: expired keys may remain */
};

/* ---- answers ------------------------------------------------------------ */

static void answer_problem(cq_write_req *r, int status, const char *slug,
                           const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void answer_problem(cq_write_req *r, int status, const char *slug,
                           const char *fmt, ...)
{
    char detail[768];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(detail, sizeof detail, fmt, ap);
    va_end(ap);
    free(r->response);
    r->status = status;
    r->problem = 1;
    r->response = cq_problem_text(status, slug, NULL, "%s", detail);
}

/* Take over `doc` (a JSON object) as r's success answer. */
static int answer_json(cq_write_req *r, int status, json_t *doc)
{
    free(r->response);
    r->response = doc ? json_dumps(doc, JSON_COMPACT) : NULL;
    json_decref(doc);
    r->status = status;
    r->problem = 0;
    return r->response ? CQ_OK : CQ_ENOMEM;
}

/* ---- folding ------------------------------------------------------------ */

typedef struct fold_ctx {
    const cq_aggregate *agg;
    const cq_domain *domain; /* upcasters for old events */
    void *state;
    int64_t version, position;
    int rc;
    char err[256];
} fold_ctx;

static int fold_event(void *arg, const cq_stored_event *se)
{
    fold_ctx *f = arg;
    cq_decoded dec;
    cq_event ev;
    char why[192];
    int rc;

    if (se->version != f->version + 1) {
        snprintf(f->err, sizeof f->err, "stream version %lld follows %lld",
                 (long long)se->version, (long long)f->version);
        f->rc = CQ_ECORRUPT;
        return 1;
    }
    rc = cq_event_decode(f->domain, se, NULL, 0, &dec, why, sizeof why);
    if (rc != CQ_OK) {
        snprintf(f->err, sizeof f->err, "event at position %lld: %s",
                 (long long)se->position, why);
        cq_decoded_clear(&dec);
        f->rc = rc;
        return 1;
    }
    ev.type = se->type;
    ev.schema_version = dec.schema_version;
    ev.version = se->version;
    ev.position = se->position;
    ev.data = dec.data;
    rc = f->agg->evolve(f->state, &ev);
    cq_decoded_clear(&dec);
    if (rc != CQ_OK) {
        snprintf(f->err, sizeof f->err,
                 "event at position %lld (%s) could "
                 "not be applied: %s",
                 (long long)se->position, se->type, cq_strerror(rc));
        f->rc = rc;
        return 1;
    }
    f->version = se->version;
    f->position = se->position;
    return 0;
}

/* Load the state of r's stream at version `cur` into f (f->state owned by
 * the caller afterwards). CQ_OK, CQ_ECORRUPT (answer set), CQ_EIO,
 * CQ_ENOMEM. */
static int load_state(cq_writer *w, cq_write_req *r, int64_t cur, fold_ctx *f)
{
    const cq_aggregate *agg = r->def->aggregate;
    const void *cached;
    int64_t cv = 0, cp = 0;
    int rc;

    memset(f, 0, sizeof *f);
    f->agg = agg;
    f->domain = w->cfg.domain;
    cached = cq_cache_get(w->cache, agg, r->stream_id, &cv, &cp);
    if (cached != NULL && cv <= cur) {
        f->state = agg->clone(cached);
        f->version = cv;
        f->position = cp;
    } else {
        f->state = agg->initial();
    }
    if (f->state == NULL)
        return CQ_ENOMEM;
    if (f->version == cur)
        return CQ_OK;
    rc =
        cq_store_fold_stream(w->store, r->stream_id, f->version, fold_event, f);
    if (rc != CQ_OK)
        return rc;
    if (f->rc == CQ_OK && f->version != cur) {
        snprintf(f->err, sizeof f->err,
                 "stream is at version %lld but its "
                 "events end at %lld",
                 (long long)cur, (long long)f->version);
        f->rc = CQ_ECORRUPT;
    }
    if (f->rc == CQ_ENOMEM)
        return CQ_ENOMEM;
    if (f->rc != CQ_OK) {
        answer_problem(r, 500, "corrupt-stream",
                       "stream %s cannot be "
                       "loaded: %s",
                       r->stream_id, f->err);
        return CQ_ECORRUPT;
    }
    return CQ_OK;
}

/* ---- appending ---------------------------------------------------------- */

/* Metadata for the i-th event of r: engine fields over the user's own
 * (`user` borrowed, may be NULL). Returns the JSON text (malloc'd) or NULL
 * on out of memory. */
static char *event_metadata(const cq_write_req *r, const json_t *user,
                            const char *time)
{
    char event_id[37];
    json_t *m;
    char *text = NULL;
    const char *corr = r->correlation_id[0] ? r->correlation_id : r->command_id;

    if (cq_uuid7(event_id) != CQ_OK)
        return NULL;
    if (user == NULL) {
        /* the common case, printed directly (see strbuf.h) */
        cq_strbuf b = CQ_STRBUF_INIT;
        cq_strbuf_puts(&b, "{\"event_id\":\"");
        cq_strbuf_puts(&b, event_id);
        cq_strbuf_puts(&b, "\",\"command_id\":\"");
        cq_strbuf_puts(&b, r->command_id);
        cq_strbuf_puts(&b, "\",\"time\":\"");
        cq_strbuf_puts(&b, time);
        cq_strbuf_puts(&b, "\",\"correlation_id\":");
        cq_strbuf_json_string(&b, corr);
        cq_strbuf_puts(&b, ",\"causation_id\":\"");
        cq_strbuf_puts(&b, r->command_id);
        cq_strbuf_puts(&b, "\"}");
        return cq_strbuf_take(&b);
    }
    m = json_deep_copy(user);
    if (m == NULL)
        return NULL;
    if (json_object_set_new(m, "event_id", json_string(event_id)) ||
        json_object_set_new(m, "command_id", json_string(r->command_id)) ||
        json_object_set_new(m, "time", json_string(time)))
        goto done;
    if (!json_is_string(json_object_get(m, "correlation_id")) &&
        json_object_set_new(m, "correlation_id", json_string(corr)))
        goto done;
    if (!json_is_string(json_object_get(m, "causation_id")) &&
        json_object_set_new(m, "causation_id", json_string(r->command_id)))
        goto done;
    text = json_dumps(m, JSON_COMPACT);
done:
    json_decref(m);
    return text;
}

/* One event to append, before it has texts. */
typedef struct pending {
    const char *type;
    int schema_version;
    const json_t *data;
    const json_t *user_metadata;
} pending;

/* Hand the events just appended to the inline projections. */
static int apply_inline(cq_writer *w, cq_write_req *r, const cq_new_event *evs,
                        const pending *p, size_t n, int64_t now, int64_t first,
                        int64_t base)
{
    cq_stored_event *se = calloc(n, sizeof *se);
    const json_t **data = calloc(n, sizeof *data);
    char err[512] = "";
    int rc;

    if (se == NULL || data == NULL) {
        free(se);
        free(data);
        return CQ_ENOMEM;
    }
    for (size_t i = 0; i < n; i++)
        data[i] = p[i].data;
    for (size_t i = 0; i < n; i++) {
        se[i].position = first + (int64_t)i;
        se[i].stream_id = r->stream_id;
        se[i].version = base + 1 + (int64_t)i;
        se[i].type = evs[i].type;
        se[i].schema_version = evs[i].schema_version;
        se[i].data = evs[i].data;
        se[i].metadata = evs[i].metadata;
        se[i].recorded_at = now;
    }
    rc = w->cfg.hooks.apply_inline(w->cfg.hooks.arg, se, data, n, err,
                                   sizeof err);
    free(se);
    free(data);
    if (rc == CQ_OK || rc == CQ_EIO) /* EIO: the batch is rolled back */
        return rc;
    if (rc == CQ_EREFUSED)
        answer_problem(r, 422, "inline-projection-refused",
                       "%s; nothing was written to stream %s", err,
                       r->stream_id);
    else
        answer_problem(r, 500, "inline-projection-failed",
                       "an inline projection could not apply the events of "
                       "stream %s (%s); nothing was written",
                       r->stream_id, err[0] ? err : cq_strerror(rc));
    return CQ_ECORRUPT; /* fails r alone, answer set */
}

/* Append n pending events to r's stream at version cur. Fills the new
 * version and first position. CQ_OK, CQ_ECONFLICT, CQ_EIO, CQ_ENOMEM. */
static int append_events(cq_writer *w, cq_write_req *r, int64_t cur,
                         const pending *p, size_t n, int64_t now,
                         int64_t *version, int64_t *first)
{
    cq_new_event *evs;
    char time[32];
    size_t i, made = 0;
    int rc = CQ_ENOMEM;

    evs = calloc(n, sizeof *evs);
    if (evs == NULL)
        return CQ_ENOMEM;
    cq_format_time(now, time);
    for (i = 0; i < n; i++, made++) {
        evs[i].type = p[i].type;
        evs[i].schema_version = p[i].schema_version;
        evs[i].data = json_dumps(p[i].data, JSON_COMPACT);
        evs[i].metadata = event_metadata(r, p[i].user_metadata, time);
        if (evs[i].data == NULL || evs[i].metadata == NULL) {
            made++;
            goto done;
        }
    }
    rc = cq_store_append(w->store, r->stream_id,
                         cur == 0 ? CQ_VERSION_NO_STREAM : cur, evs, n, now,
                         version, first);
    if (rc == CQ_OK && w->cfg.hooks.apply_inline != NULL)
        rc = apply_inline(w, r, evs, p, n, now, *first, *version - (int64_t)n);
done:
    for (i = 0; i < made; i++) {
        free((char *)evs[i].data);
        free((char *)evs[i].metadata);
    }
    free(evs);
    return rc;
}

/* ---- the two kinds of request ------------------------------------------- */

/* What a failed store or state call means for request r: undecodable
 * stored data or no memory fail r alone (500); anything else aborts the
 * batch. */
static enum outcome fatal(cq_writer *w, cq_write_req *r, int rc)
{
    if (rc == CQ_ECORRUPT) {
        if (r->response == NULL) /* load_state() explains itself */
            answer_problem(r, 500, "corrupt-stream",
                           "stream %s cannot be "
                           "read: %s",
                           r->stream_id, cq_store_errmsg(w->store));
        return UNDO;
    }
    if (rc == CQ_ENOMEM) {
        answer_problem(r, 500, "internal", "out of memory");
        return UNDO;
    }
    return ABORT;
}

static enum outcome run_command(cq_writer *w, cq_write_req *r, int64_t now)
{
    const cq_command_def *def = r->def;
    const cq_aggregate *agg = def->aggregate;
    pending *p = NULL;
    fold_ctx f;
    cq_strbuf doc = CQ_STRBUF_INIT, events = CQ_STRBUF_INIT;
    int64_t cur, version, first, last;
    size_t n, i;
    enum outcome out;
    int rc;

    f.state = NULL;
    rc = cq_store_stream_version(w->store, r->stream_id, &cur);
    if (rc != CQ_OK)
        return fatal(w, r, rc);
    if (def->expect == CQ_EXPECT_NEW && cur > 0) {
        answer_problem(r, 409, "stream-exists",
                       "stream %s already exists "
                       "(version %lld)",
                       r->stream_id, (long long)cur);
        return UNDO_STORE;
    }
    if (def->expect == CQ_EXPECT_EXISTS && cur == 0) {
        answer_problem(r, 404, "not-found", "stream %s does not exist",
                       r->stream_id);
        return UNDO_STORE;
    }
    if (r->expected != CQ_VERSION_ANY && r->expected != cur) {
        answer_problem(r, 412, "precondition-failed",
                       "If-Match expects "
                       "version %lld but stream %s is at version %lld",
                       (long long)r->expected, r->stream_id, (long long)cur);
        return UNDO_STORE;
    }

    rc = load_state(w, r, cur, &f);
    if (rc != CQ_OK) {
        out = fatal(w, r, rc);
        goto done;
    }
    cq_decision_reset(w->decision);
    rc = def->decide(f.state, r->body, w->decision);
    if (rc == CQ_EREFUSED) {
        const char *why = cq_decision_refusal(w->decision);
        answer_problem(r, 422, "refused", "%s refused: %s", def->type,
                       why ? why : "refused by a business rule");
        out = UNDO_STORE;
        goto done;
    }
    if (rc != CQ_OK) {
        answer_problem(r, 500, "internal", "%s decider failed: %s", def->type,
                       cq_strerror(rc));
        out = UNDO;
        goto done;
    }

    n = cq_decision_count(w->decision);
    version = cur;
    last = f.position;
    out = UNDO;
    /* The answer, printed directly: {"command_id", "stream_id", "version",
     * "position", "events": [{"type", "version", "position"}...]} */
    cq_strbuf_puts(&events, "[");
    if (n > 0) {
        p = calloc(n, sizeof *p);
        if (p == NULL)
            goto nomem;
        for (i = 0; i < n; i++) {
            const cq_decided_event *de = cq_decision_event(w->decision, i);
            p[i].type = de->type;
            p[i].schema_version = de->schema_version;
            p[i].data = de->data;
        }
        rc = append_events(w, r, cur, p, n, now, &version, &first);
        if (rc == CQ_ECONFLICT) {
            answer_problem(r, 409, "conflict",
                           "stream %s changed while the "
                           "command ran",
                           r->stream_id);
            goto done;
        }
        if (rc != CQ_OK) {
            out = fatal(w, r, rc);
            goto done;
        }
        for (i = 0; i < n; i++) {
            cq_event ev = {p[i].type, p[i].schema_version, cur + 1 + (int64_t)i,
                           first + (int64_t)i, p[i].data};
            rc = agg->evolve(f.state, &ev);
            if (rc != CQ_OK) {
                answer_problem(r, 500, "internal",
                               "%s: its own event %s "
                               "could not be applied: %s",
                               def->type, ev.type, cq_strerror(rc));
                goto done;
            }
            cq_strbuf_puts(&events, i ? ",{\"type\":" : "{\"type\":");
            cq_strbuf_json_string(&events, ev.type);
            cq_strbuf_puts(&events, ",\"version\":");
            cq_strbuf_int(&events, ev.version);
            cq_strbuf_puts(&events, ",\"position\":");
            cq_strbuf_int(&events, ev.position);
            cq_strbuf_puts(&events, "}");
        }
        last = first + (int64_t)n - 1;
    }
    cq_strbuf_puts(&events, "]");
    cq_strbuf_puts(&doc, "{\"command_id\":\"");
    cq_strbuf_puts(&doc, r->command_id);
    cq_strbuf_puts(&doc, "\",\"stream_id\":");
    cq_strbuf_json_string(&doc, r->stream_id);
    cq_strbuf_puts(&doc, ",\"version\":");
    cq_strbuf_int(&doc, version);
    cq_strbuf_puts(&doc, ",\"position\":");
    cq_strbuf_int(&doc, last);
    cq_strbuf_puts(&doc, ",\"events\":");
    cq_strbuf_add(&doc, events.p ? events.p : "", events.len);
    cq_strbuf_puts(&doc, "}");
    if (events.oom)
        goto nomem;
    free(r->response);
    r->response = cq_strbuf_take(&doc);
    if (r->response == NULL)
        goto nomem;
    r->status = 202;
    r->problem = 0;
    r->version = version;
    r->position = last;
    rc = cq_cache_put(w->cache, agg, r->stream_id, f.state, version, last);
    f.state = NULL; /* taken over, even on failure */
    if (rc != CQ_OK)
        goto nomem;
    out = KEEP;
    goto done;
nomem:
    answer_problem(r, 500, "internal", "out of memory");
    out = UNDO;
done:
    cq_strbuf_reset(&events);
    cq_strbuf_reset(&doc);
    free(p);
    if (f.state != NULL)
        agg->free(f.state);
    return out;
}

static enum outcome run_append(cq_writer *w, cq_write_req *r, int64_t now)
{
    pending *p = NULL;
    size_t n = json_array_size(r->body), i;
    int64_t cur, version, first;
    enum outcome out = UNDO;
    int rc;

    rc = cq_store_stream_version(w->store, r->stream_id, &cur);
    if (rc != CQ_OK)
        return fatal(w, r, rc);
    if ((r->expected == CQ_VERSION_NO_STREAM && cur != 0) ||
        (r->expected == CQ_VERSION_EXISTS && cur == 0) ||
        (r->expected > 0 && r->expected != cur)) {
        char want[32];
        if (r->expected == CQ_VERSION_NO_STREAM)
            snprintf(want, sizeof want, "no stream");
        else if (r->expected == CQ_VERSION_EXISTS)
            snprintf(want, sizeof want, "an existing stream");
        else
            snprintf(want, sizeof want, "version %lld", (long long)r->expected);
        answer_problem(r, 412, "wrong-expected-version",
                       "expected %s but "
                       "stream %s is at version %lld",
                       want, r->stream_id, (long long)cur);
        return UNDO_STORE;
    }
    p = calloc(n ? n : 1, sizeof *p);
    if (p == NULL)
        goto nomem;
    for (i = 0; i < n; i++) {
        const json_t *e = json_array_get(r->body, i);
        p[i].type = json_string_value(json_object_get(e, "type"));
        p[i].schema_version = 1;
        p[i].data = json_object_get(e, "data");
        p[i].user_metadata = json_object_get(e, "metadata");
    }
    rc = append_events(w, r, cur, p, n, now, &version, &first);
    if (rc != CQ_OK) {
        out = fatal(w, r, rc);
        goto done;
    }
    r->version = version;
    r->position = first + (int64_t)n - 1;
    if (answer_json(r, 201,
                    json_pack("{s:s,s:I,s:I}", "stream_id", r->stream_id,
                              "version", (json_int_t)version, "position",
                              (json_int_t)r->position)) != CQ_OK)
        goto nomem;
    out = KEEP;
    goto done;
nomem:
    answer_problem(r, 500, "internal", "out of memory");
    out = UNDO;
done:
    free(p);
    return out;
}

/* ---- one request in its savepoint --------------------------------------- */

/* The version in a stored 2xx answer, for the ETag of a replay. */
static int64_t stored_version(const char *response)
{
    json_t *doc = json_loads(response, 0, NULL);
    int64_t v = json_integer_value(json_object_get(doc, "version"));
    json_decref(doc);
    return v;
}

static enum outcome replay(cq_writer *w, cq_write_req *r, int64_t now,
                           int *done)
{
    cq_cmdlog_entry e;
    int rc;

    *done = 0;
    if (r->idem_key[0] == '\0')
        return KEEP;
    rc = cq_store_cmdlog_get(w->store, r->idem_key, now, &e);
    if (rc == CQ_ENOTFOUND)
        return KEEP;
    if (rc != CQ_OK)
        return ABORT;
    *done = 1;
    if (strcmp(e.command_hash, r->command_hash) != 0) {
        answer_problem(r, 422, "idempotency-key-reused",
                       "Idempotency-Key "
                       "%s was used for a different request",
                       r->idem_key);
        return UNDO;
    }
    free(r->response);
    r->response = strdup(e.response);
    if (r->response == NULL) {
        answer_problem(r, 500, "internal", "out of memory");
        return UNDO;
    }
    r->status = e.status;
    r->problem = e.status >= 400;
    r->replayed = 1;
    r->version = e.status < 300 ? stored_version(e.response) : 0;
    return KEEP;
}

static int remember(cq_writer *w, const cq_write_req *r, int64_t now)
{
    cq_cmdlog_entry e;

    if (r->idem_key[0] == '\0' || r->replayed || r->response == NULL)
        return CQ_OK;
    e.key = r->idem_key;
    e.command_hash = r->command_hash;
    e.status = r->status;
    e.response = r->response;
    e.created_at = now;
    e.expires_at = now + w->cfg.idempotency_ttl_ms;
    return cq_store_cmdlog_put(w->store, &e);
}

/* Run r inside its own savepoint. CQ_OK (r answered) or CQ_EIO: the
 * transaction is unusable and the batch must be rolled back. */
static int run_one(cq_writer *w, cq_write_req *r, int64_t now)
{
    enum outcome out;
    int done;

    if (cq_store_savepoint(w->store) != CQ_OK)
        return CQ_EIO;
    out = replay(w, r, now, &done);
    if (!done && out == KEEP)
        out = r->kind == CQ_WRITE_COMMAND ? run_command(w, r, now)
                                          : run_append(w, r, now);
    switch (out) {
    case KEEP:
        if (remember(w, r, now) != CQ_OK)
            return CQ_EIO;
        return cq_store_release(w->store) == CQ_OK ? CQ_OK : CQ_EIO;
    case UNDO_STORE:
    case UNDO:
        if (cq_store_rollback_savepoint(w->store) != CQ_OK)
            return CQ_EIO;
        if (out == UNDO_STORE && remember(w, r, now) != CQ_OK)
            return CQ_EIO;
        return CQ_OK;
    case ABORT:
    default: return CQ_EIO;
    }
}

/* ---- batches --------------------------------------------------------------
 */

/* Record whether the last transaction committed (writer thread); log the
 * changes only, not every failed batch. */
static void set_writable(cq_writer *w, int ok, const char *why)
{
    int was = atomic_load(&w->writable);

    if (!ok) {
        pthread_mutex_lock(&w->mu);
        snprintf(w->why, sizeof w->why, "%s", why);
        pthread_mutex_unlock(&w->mu);
    }
    atomic_store(&w->writable, ok);
    if (was && !ok)
        fprintf(stderr, "cqrsd: the event store refuses writes: %s\n", why);
    else if (!was && ok)
        fprintf(stderr, "cqrsd: the event store accepts writes again\n");
}

/* While unwritable and idle: try one small real write (see the file
 * comment). */
static void probe(cq_writer *w)
{
    int64_t now = cq_now_ms();
    cq_cmdlog_entry e = {PROBE_KEY, "", 0, "", now, now};
    int rc = cq_store_begin(w->store);

    if (rc == CQ_OK)
        rc = cq_store_cmdlog_put(w->store, &e);
    if (rc == CQ_OK)
        rc = cq_store_commit(w->store);
    if (rc == CQ_OK) {
        set_writable(w, 1, NULL);
    } else {
        char msg[512];
        snprintf(msg, sizeof msg, "%s", cq_store_errmsg(w->store));
        cq_store_rollback(w->store);
        set_writable(w, 0, msg);
    }
}

static int64_t mono_ms(void);
static void prune_start_if_due(cq_writer *w, int64_t now);
static int prune_in_batch(cq_writer *w, int64_t now, int rows, int64_t *deleted,
                          char *msg, size_t msgcap);

/* Run the requests of `batch` in one transaction; if a prune pass is due
 * or under way, one step of it (of prune_rows keys at most) commits with
 * them. */
static void run_batch(cq_writer *w, cq_write_req *batch, int prune_rows)
{
    int64_t now = cq_now_ms();
    int64_t pruned = 0;
    cq_write_req *r, *next;
    char msg[512] = "";
    int rc;

    rc = cq_store_begin(w->store);
    for (r = batch; rc == CQ_OK && r != NULL; r = r->next)
        rc = run_one(w, r, now);
    if (rc == CQ_OK && w->cfg.hooks.before_commit != NULL) {
        int64_t head;
        rc = cq_store_write_head(w->store, &head);
        if (rc == CQ_OK)
            rc = w->cfg.hooks.before_commit(w->cfg.hooks.arg, head);
    }
    /* At most one step per batch, however many keys remain. */
    prune_start_if_due(w, mono_ms());
    if (rc == CQ_OK && w->prune_pending)
        rc = prune_in_batch(w, now, prune_rows, &pruned, msg, sizeof msg);
    if (rc == CQ_OK)
        rc = cq_store_commit(w->store);
    if (rc == CQ_OK) {
        int64_t head;
        /* The step's keys are gone now; fewer than allowed ends the pass
         * (a rolled-back step leaves it under way: the next batch or idle
         * step redoes it). */
        if (w->prune_pending && pruned < prune_rows)
            w->prune_pending = 0;
        cq_cache_commit(w->cache);
        set_writable(w, 1, NULL);
        if (cq_store_write_head(w->store, &head) == CQ_OK) {
            atomic_store(&w->head_position, head);
            if (w->cfg.hooks.committed != NULL)
                w->cfg.hooks.committed(w->cfg.hooks.arg, head, batch);
        }
    } else {
        if (msg[0] == '\0') /* else the prune step lost the transaction */
            snprintf(msg, sizeof msg, "%s", cq_store_errmsg(w->store));
        cq_store_rollback(w->store);
        cq_cache_drop_dirty(w->cache);
        set_writable(w, 0, msg);
        for (r = batch; r != NULL; r = r->next) {
            r->replayed = 0;
            r->version = 0;
            answer_problem(r, 503, "store-unavailable",
                           "the event store "
                           "failed and nothing was written: %s",
                           msg);
        }
    }
    for (r = batch; r != NULL; r = next) {
        next = r->next; /* r belongs to its submitter once done() runs */
        r->done(r);
    }
}

/* Pruning the command log: a pass starts every prune_interval_ms (1 s: keys
 * are deleted about as fast as they expire, not in a burst once a minute;
 * a pass that finds nothing is one transaction that writes nothing) and
 * deletes expired keys in steps, oldest first. While requests come, each
 * batch runs one step inside its own transaction, just before its COMMIT:
 * the deletion rides on the fsync the batch pays anyway. While nothing is
 * queued, steps run one after the other, each a short transaction of its
 * own, looking at the queue in between. So a command never waits behind
 * more than one step, and a step costs no fsync of its own unless the
 * writer is idle. A step deletes CQ_WRITER_PRUNE_CHUNK keys, or in a batch
 * of n > CHUNK requests up to n: deleting as many keys as the batch could
 * have added costs about what adding them did, and lets the pass keep up
 * under load, when the writer is never idle. An expired key not yet pruned
 * is already absent to cmdlog_get, so a late pass costs disk space, never
 * a wrong replay. */
static int64_t mono_ms(void)
{
    return (int64_t)(cq_mono_ns() / 1000000);
}

static void prune_start_if_due(cq_writer *w, int64_t now)
{
    if (!w->prune_pending &&
        now - w->last_prune_ms >= w->cfg.prune_interval_ms) {
        w->prune_pending = 1;
        w->last_prune_ms = now;
    }
}

static void prune_failed(cq_writer *w, const char *msg)
{
    fprintf(stderr, "cqrsd: pruning the command log failed: %s\n", msg);
    w->prune_pending = 0; /* the next pass tries again */
}

/* One idle step, a transaction of its own, of at most `rows` keys; ends
 * the pass once no expired key is left (or the store failed). */
static void prune_step(cq_writer *w, int rows)
{
    int64_t deleted = 0;

    if (cq_store_cmdlog_prune(w->store, cq_now_ms(), rows, &deleted) != CQ_OK)
        prune_failed(w, cq_store_errmsg(w->store));
    else if (deleted < rows)
        w->prune_pending = 0;
}

/* One step inside the batch's open transaction, under a savepoint of its
 * own: a failing step (SQLITE_FULL, say) is logged and undone alone, and
 * the batch commits its requests. *deleted gets how many keys the step
 * deleted (they are gone once the batch commits). CQ_OK, or CQ_EIO if the
 * transaction itself is lost: the batch must be rolled back (503, as for
 * any store failure), with the reason in msg. */
static int prune_in_batch(cq_writer *w, int64_t now, int rows, int64_t *deleted,
                          char *msg, size_t msgcap)
{
    char why[512];

    *deleted = 0;
    if (cq_store_savepoint(w->store) != CQ_OK)
        return CQ_EIO;
    if (cq_store_cmdlog_prune(w->store, now, rows, deleted) == CQ_OK)
        return cq_store_release(w->store) == CQ_OK ? CQ_OK : CQ_EIO;
    *deleted = 0;
    snprintf(why, sizeof why, "%s", cq_store_errmsg(w->store));
    prune_failed(w, why);
    if (cq_store_rollback_savepoint(w->store) == CQ_OK)
        return CQ_OK;
    snprintf(msg, msgcap, "%s", why);
    return CQ_EIO;
}

/* Milliseconds until the next pass is due, for the idle wait. */
static int64_t prune_wait_ms(const cq_writer *w)
{
    int64_t ms = w->last_prune_ms + w->cfg.prune_interval_ms - mono_ms();

    if (ms < 1)
        return 1;
    return ms > w->cfg.prune_interval_ms ? w->cfg.prune_interval_ms : ms;
}

static void *writer_main(void *arg)
{
    cq_writer *w = arg;

    pthread_setname_np(pthread_self(), "cq-writer");
    for (;;) {
        cq_write_req *batch, *last;
        int n = 1;

        pthread_mutex_lock(&w->mu);
        while (w->head == NULL && !w->stopping) {
            struct timespec ts;
            int64_t ms;

            /* prune_start_if_due touches writer-only fields, never the
             * store, so it may run under mu; a step runs without it. */
            prune_start_if_due(w, mono_ms());
            if (w->prune_pending) {
                pthread_mutex_unlock(&w->mu);
                prune_step(w, CQ_WRITER_PRUNE_CHUNK);
                pthread_mutex_lock(&w->mu);
                continue;
            }
            ms = prune_wait_ms(w);
            if (!atomic_load(&w->writable) && ms > PROBE_INTERVAL_MS)
                ms = PROBE_INTERVAL_MS;
            clock_gettime(CLOCK_MONOTONIC, &ts);
            ts.tv_sec += ms / 1000;
            ts.tv_nsec += (ms % 1000) * 1000000;
            if (ts.tv_nsec >= 1000000000) {
                ts.tv_sec++;
                ts.tv_nsec -= 1000000000;
            }
            /* an unwritable writer wakes up to probe (see probe()) */
            if (pthread_cond_timedwait(&w->cv, &w->mu, &ts) == ETIMEDOUT &&
                !atomic_load(&w->writable))
                break;
        }
        if (w->head == NULL && w->stopping) {
            pthread_mutex_unlock(&w->mu);
            break;
        }
        batch = last = w->head;
        if (batch != NULL) {
            while (last->next != NULL && n < w->cfg.max_batch) {
                last = last->next;
                n++;
            }
            w->head = last->next;
            if (w->head == NULL)
                w->tail = NULL;
            last->next = NULL;
            w->queued -= n;
        }
        pthread_mutex_unlock(&w->mu);

        if (batch != NULL)
            run_batch(w, batch,
                      n > CQ_WRITER_PRUNE_CHUNK ? n : CQ_WRITER_PRUNE_CHUNK);
        else if (!atomic_load(&w->writable))
            probe(w);
    }
    return NULL;
}

/* ---- public ---------------------------------------------------------------
 */

int cq_writer_start(cq_store *store, const cq_writer_config *cfg,
                    cq_writer **out)
{
    cq_writer *w;
    pthread_condattr_t ca;
    int64_t head = 0;
    int rc = CQ_ENOMEM;

    *out = NULL;
    w = calloc(1, sizeof *w);
    if (w == NULL)
        return CQ_ENOMEM;
    w->store = store;
    if (cfg != NULL)
        w->cfg = *cfg;
    if (w->cfg.idempotency_ttl_ms <= 0)
        w->cfg.idempotency_ttl_ms = 24LL * 3600 * 1000;
    if (w->cfg.max_batch <= 0)
        w->cfg.max_batch = 512;
    if (w->cfg.max_queue <= 0)
        w->cfg.max_queue = 16384;
    if (w->cfg.prune_interval_ms <= 0)
        w->cfg.prune_interval_ms = 1000;
    w->cache = cq_cache_new(w->cfg.cache_slots ? w->cfg.cache_slots : 4096);
    w->decision = cq_decision_new();
    if (w->cache == NULL || w->decision == NULL)
        goto fail;
    rc = cq_store_head_position(store, &head);
    if (rc != CQ_OK)
        goto fail;
    atomic_init(&w->head_position, head);
    atomic_init(&w->writable, 1);
    w->last_prune_ms = mono_ms();
    w->prune_pending = 1; /* the first pass runs right at start */

    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&w->cv, &ca);
    pthread_condattr_destroy(&ca);
    pthread_mutex_init(&w->mu, NULL);
    if (pthread_create(&w->thread, NULL, writer_main, w) != 0) {
        pthread_cond_destroy(&w->cv);
        pthread_mutex_destroy(&w->mu);
        rc = CQ_ENOMEM;
        goto fail;
    }
    *out = w;
    return CQ_OK;
fail:
    cq_decision_free(w->decision);
    cq_cache_free(w->cache);
    free(w);
    return rc;
}

int cq_writer_submit(cq_writer *w, cq_write_req *r)
{
    int rc = CQ_OK;

    r->next = NULL;
    r->status = 0;
    r->response = NULL;
    r->problem = r->replayed = 0;
    r->version = r->position = 0;
    pthread_mutex_lock(&w->mu);
    if (w->stopping)
        rc = CQ_ECLOSED;
    else if (w->queued >= w->cfg.max_queue)
        rc = CQ_EBUSY;
    else {
        if (w->tail != NULL)
            w->tail->next = r;
        else
            w->head = r;
        w->tail = r;
        w->queued++;
        pthread_cond_signal(&w->cv);
    }
    pthread_mutex_unlock(&w->mu);
    return rc;
}

int64_t cq_writer_head(cq_writer *w)
{
    return atomic_load(&w->head_position);
}

int cq_writer_writable(cq_writer *w, char *why, size_t cap)
{
    int ok = atomic_load(&w->writable);

    if (why != NULL && cap > 0) {
        pthread_mutex_lock(&w->mu);
        snprintf(why, cap, "%s", ok ? "" : w->why);
        pthread_mutex_unlock(&w->mu);
    }
    return ok;
}

void cq_writer_stop(cq_writer *w)
{
    int joined;

    if (w == NULL)
        return;
    pthread_mutex_lock(&w->mu);
    joined = w->stopping;
    w->stopping = 1;
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
    if (!joined)
        pthread_join(w->thread, NULL);
}

void cq_writer_free(cq_writer *w)
{
    if (w == NULL)
        return;
    cq_writer_stop(w);
    pthread_cond_destroy(&w->cv);
    pthread_mutex_destroy(&w->mu);
    cq_decision_free(w->decision);
    cq_cache_free(w->cache);
    free(w);
}
