/*
 * lookup.c -- what the query side asks the event store through the engine:
 * the position of a stream's version, the time of a position (lag) and a
 * stream's version at a position. Each is one store operation (store.h),
 * served by the store's read pool, unless the events committed last
 * (the tail, tail.h) answer it from memory.
 *
 * Errors: the store's failures (I/O, a damaged file, out of memory) are
 * CQ_EIO here, as engine.h promises its callers (the query side answers
 * them 503); CQ_ENOTFOUND passes through where engine.h says so.
 *
 * Threads: any thread; the store's read calls are thread-safe.
 */
#include "base/base.h"
#include "projection/engine_int.h"

/* Fold the store's failure codes into the engine's: CQ_OK and
 * CQ_ENOTFOUND stay, anything else is CQ_EIO. */
static int as_engine_rc(int rc)
{
    return rc == CQ_OK || rc == CQ_ENOTFOUND ? rc : CQ_EIO;
}

int cq_engine_version_position(cq_engine *e, const char *stream_id,
                               int64_t version, int64_t *position, char *err,
                               size_t errcap)
{
    return as_engine_rc(cq_store_position_of(e->store, stream_id, version,
                                             position, err, errcap));
}

int cq_engine_lag_ms(cq_engine *e, int64_t position, int64_t head,
                     double *lag_ms, char *err, size_t errcap)
{
    int64_t at = 0;
    int rc;

    *lag_ms = 0;
    if (position >= head)
        return CQ_OK;
    if (cq_tail_recorded_at(e->tail, position + 1, &at))
        rc = CQ_OK; /* committed just now: in memory (tail.h) */
    else
        rc = cq_store_recorded_at(e->store, position + 1, &at, err, errcap);
    if (rc == CQ_ENOTFOUND)
        return CQ_OK; /* pruned or not there: no age to tell */
    if (rc != CQ_OK)
        return as_engine_rc(rc);
    int64_t now = cq_now_ms();
    *lag_ms = now > at && at != 0 ? (double)(now - at) : 0;
    return CQ_OK;
}

int cq_engine_stream_version_at(cq_engine *e, const char *stream_id,
                                int64_t position, int64_t *version, char *err,
                                size_t errcap)
{
    if (cq_tail_version_at(e->tail, stream_id, position, version))
        return CQ_OK;
    return as_engine_rc(cq_store_version_at(e->store, stream_id, position,
                                            version, err, errcap));
}
