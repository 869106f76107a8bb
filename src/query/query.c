/*
 * query.c -- waiting for freshness: a query's min_position/min_version
 * (or a command's ?wait_for=) registers a waiter on the projection's (or
 * the event store head's) queue, see wait.h.
 *
 * Threads: any thread.
 */
#include "projection/engine_int.h"
#include "query/query_int.h"

int cq_engine_wait(cq_engine *e, int projection, int64_t target,
                   int64_t timeout_ms, cq_wait_cb cb, void *arg, cq_wait **out)
{
    int queue = projection == CQ_ENGINE_HEAD ? e->nprojs : projection;
    return cq_waiters_add(e->waits, queue, target, timeout_ms, cb, arg, out);
}

void cq_engine_wait_stats(cq_engine *e, int *pending, int64_t *checked)
{
    *pending = cq_waiters_pending(e->waits);
    *checked = cq_waiters_checked(e->waits);
}

int cq_engine_wait_stream(cq_engine *e, int projection, const char *stream_id,
                          int64_t version, int64_t seen, int64_t timeout_ms,
                          cq_wait_cb cb, void *arg, cq_wait **out)
{
    int queue = projection == CQ_ENGINE_HEAD ? e->nprojs : projection;
    return cq_waiters_add_stream(e->waits, queue, stream_id, version, seen,
                                 timeout_ms, cb, arg, out);
}

