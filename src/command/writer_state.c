/*
 * writer_state.c -- an aggregate's state for one request: a clone of the
 * cached state when the cache holds the stream at a version <= the
 * current one, else initial(); then the stream's missing events folded
 * into it through evolve(), each decoded (and upcast) by the one decoder
 * of stored events, cq_event_decode (src/domain). An event that cannot be
 * decoded or applied, or a gap in the versions, fails the request alone
 * (500 corrupt-stream, naming the event and the cause).
 *
 * Putting the new state back in the cache, and its commit or eviction
 * with the batch, are writer.c's.
 *
 * Thread: the one holding the writer's turn (writer_int.h: the cache, the
 * store's write side); no lock is taken here.
 */
#include "command/writer_int.h"

#include <stdio.h>
#include <string.h>

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
int writer_load_state(cq_writer *w, cq_write_req *r, int64_t cur, fold_ctx *f)
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
        writer_answer_problem(r, 500, "corrupt-stream",
                              "stream %s cannot be "
                              "loaded: %s",
                              r->stream_id, f->err);
        return CQ_ECORRUPT;
    }
    return CQ_OK;
}
