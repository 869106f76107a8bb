/*
 * writer_append.c -- appending a request's events: each event's metadata
 * (the engine's event_id, command_id and time over the client's own
 * fields; correlation_id and causation_id unless the client gave them),
 * the append to the store at the expected version,
 * then the call-out to the inline projections (the hook apply_inline),
 * inside the request's savepoint: a projection that refuses the events
 * fails the request alone (422 inline-projection-refused, or 500), and its
 * I/O failure fails the batch.
 *
 * Thread: the one holding the writer's turn (writer_int.h: the store's
 * write side, the hooks); no lock is taken here.
 */
#include "command/writer_int.h"

#include <stdlib.h>

#include "base/base.h"
#include "base/strbuf.h"

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
        writer_answer_problem(r, 422, "inline-projection-refused",
                              "%s; nothing was written to stream %s", err,
                              r->stream_id);
    else
        writer_answer_problem(
            r, 500, "inline-projection-failed",
            "an inline projection could not apply the events of "
            "stream %s (%s); nothing was written",
            r->stream_id, err[0] ? err : cq_strerror(rc));
    return CQ_ECORRUPT; /* fails r alone, answer set */
}

/* Append n pending events to r's stream at version cur. Fills the new
 * version and first position. CQ_OK, CQ_ECONFLICT, CQ_EIO, CQ_ENOMEM. */
int writer_append_events(cq_writer *w, cq_write_req *r, int64_t cur,
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
