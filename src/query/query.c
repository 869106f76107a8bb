/*
 * query.c -- one query's freshness: where it waits and what its answer
 * says (see README.md for the protocol). The waiters (wait.h) are given
 * to the engine as its progress listener by cq_query_attach: the engine's
 * projector and the writer's hooks advance them, and they fire the
 * callbacks of the queries waiting.
 *
 * Threads: any thread once the engine has started; the waiters have
 * their own lock (wait.c), and positions are read through the engine's
 * accessors (its mutex). Nothing here holds a lock across calls.
 */
#include "query/query.h"

#include <stdio.h>
#include <string.h>

#include "base/base.h"

/* ---- the waiters as the engine's progress listener ---- */

static void on_advance(void *arg, int queue, int64_t position)
{
    cq_waiters_advance(arg, queue, position);
}

static void on_advance_streams(void *arg, int queue, int64_t position,
                               const cq_stream_applied *applied, size_t n)
{
    cq_waiters_advance_streams(arg, queue, position, applied, n);
}

static void on_rewind(void *arg, int queue, int64_t position)
{
    cq_waiters_rewind(arg, queue, position);
}

static void on_shutdown(void *arg)
{
    cq_waiters_shutdown(arg);
}

static void on_free(void *arg)
{
    cq_waiters_free(arg);
}

int cq_query_attach(cq_engine *e, char *err, size_t errcap)
{
    cq_engine_progress p = {0};

    /* one queue per projection, + the store's head */
    p.arg = cq_waiters_new(cq_engine_count(e) + 1);
    if (p.arg == NULL) {
        snprintf(err, errcap, "cannot start the wait timer");
        return CQ_ENOMEM;
    }
    p.advance = on_advance;
    p.advance_streams = on_advance_streams;
    p.rewind = on_rewind;
    p.shutdown = on_shutdown;
    p.free = on_free;
    cq_engine_set_progress(e, &p);
    return CQ_OK;
}

/* ---- waits ---- */

/* The waiters' queue of projection (or CQ_QUERY_HEAD). */
static int queue_of(cq_engine *e, int projection)
{
    return projection == CQ_QUERY_HEAD ? cq_engine_count(e) : projection;
}

int cq_query_wait(cq_engine *e, int projection, int64_t target,
                  int64_t timeout_ms, cq_wait_cb cb, void *arg, cq_wait **out)
{
    cq_waiters *ws = cq_engine_progress_arg(e);

    *out = NULL;
    if (ws == NULL)
        return CQ_ECLOSED;
    return cq_waiters_add(ws, queue_of(e, projection), target, timeout_ms, cb,
                          arg, out);
}

int cq_query_wait_stream(cq_engine *e, int projection, const char *stream_id,
                         int64_t version, int64_t seen, int64_t timeout_ms,
                         cq_wait_cb cb, void *arg, cq_wait **out)
{
    cq_waiters *ws = cq_engine_progress_arg(e);

    *out = NULL;
    if (ws == NULL)
        return CQ_ECLOSED;
    return cq_waiters_add_stream(ws, queue_of(e, projection), stream_id,
                                 version, seen, timeout_ms, cb, arg, out);
}

void cq_engine_wait_stats(cq_engine *e, int *pending, int64_t *checked)
{
    cq_waiters *ws = cq_engine_progress_arg(e);

    *pending = ws ? cq_waiters_pending(ws) : 0;
    *checked = ws ? cq_waiters_checked(ws) : 0;
}

/* ---- one query's target ---- */

/* Where t's queue is now: the projection's position, or for a strong
 * read the store's head. */
static int64_t reached(cq_engine *e, const cq_query_target *t)
{
    return t->strong ? cq_engine_head(e)
                     : cq_engine_position(e, t->projection, NULL);
}

int cq_query_resolve(cq_engine *e, cq_query_target *t, int *wait, char *err,
                     size_t errcap)
{
    int64_t pos;
    int rc;

    *wait = 0;
    t->position = t->min_position > 0 ? t->min_position : 0;
    t->version_missing = 0;
    if (t->min_version >= 1) {
        /* read before looking: a commit after it may hold the version */
        int64_t seen = reached(e, t);
        rc = cq_engine_version_position(e, t->stream_id, t->min_version, &pos,
                                        err, errcap);
        if (rc == CQ_OK) {
            if (pos > t->position)
                t->position = pos;
        } else if (rc == CQ_ENOTFOUND) {
            /* not written yet: wait for a commit of this stream, then
             * look again (min_position too) */
            t->version_missing = 1;
            t->version_seen = seen;
            *wait = 1;
            return CQ_OK;
        } else {
            return rc;
        }
    }
    /* a strong read replays the event store: wait for its head */
    *wait = t->position > 0 && reached(e, t) < t->position;
    return CQ_OK;
}

int cq_query_wait_target(cq_engine *e, const cq_query_target *t,
                         int64_t timeout_ms, cq_wait_cb cb, void *arg,
                         cq_wait **out)
{
    int queue = t->strong ? CQ_QUERY_HEAD : t->projection;

    if (t->version_missing)
        return cq_query_wait_stream(e, queue, t->stream_id, t->min_version,
                                    t->version_seen, timeout_ms, cb, arg, out);
    return cq_query_wait(e, queue, t->position, timeout_ms, cb, arg, out);
}

int cq_query_answer(cq_engine *e, const cq_query_target *t,
                    const cq_decl_query *q, const char *const *values,
                    int timed_out, json_t **data, json_t **meta,
                    int64_t *position, int *stale, char *err, size_t errcap)
{
    cq_freshness f;
    int64_t sv = 0;
    int demanded = t->min_position >= 0 || t->min_version >= 1;
    int rc;

    *meta = NULL;
    rc = t->strong
             ? cq_query_run_strong(e, t->projection, q, values, t->stream_id,
                                   data, &f, &sv, err, errcap)
             : cq_query_run(e, t->projection, q, values, t->stream_id, data, &f,
                            &sv, err, errcap);
    if (rc != CQ_OK || *data == NULL)
        return rc;
    *position = f.position;
    *stale =
        f.failed || timed_out || (!demanded && !t->strong && f.lag_events > 0);
    *meta = json_pack("{s:s,s:I,s:I,s:f,s:b,s:s}", "projection",
                      cq_engine_projection_name(e, t->projection), "position",
                      (json_int_t)f.position, "lag_events",
                      (json_int_t)f.lag_events, "lag_ms", f.lag_ms, "stale",
                      *stale, "consistency",
                      t->strong                               ? "strong"
                      : cq_engine_is_inline(e, t->projection) ? "inline"
                                                              : "eventual");
    if (*meta != NULL && t->stream_id != NULL)
        json_object_set_new(*meta, "stream_version", json_integer(sv));
    if (*meta != NULL && timed_out)
        json_object_set_new(
            *meta, "warning",
            json_string(
                "the read model did not reach the requested position within "
                "wait_ms; this answer may be stale"));
    else if (*meta != NULL && f.failed)
        json_object_set_new(
            *meta, "warning",
            json_string("the projection has failed and is not being updated"));
    return CQ_OK;
}
