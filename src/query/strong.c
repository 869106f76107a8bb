/*
 * strong.c -- strong reads: a keyed query answered from the event store
 * itself. The one stream is replayed through the projection's handlers
 * into a private in-memory database (cq_engine_replay_stream) and the
 * query runs there, so the answer reflects every event of the stream
 * committed before it started.
 *
 * Threads: any thread; each read has its own database.
 */
#include <string.h>

#include "base/base.h"
#include "query/query.h"
#include "query/query_int.h"

int cq_query_run_strong(cq_engine *e, int projection, const cq_decl_query *q,
                        const char *const *values, const char *stream_id,
                        json_t **data, cq_freshness *fresh,
                        int64_t *stream_version, char *err, size_t errcap)
{
    cq_exec *x = NULL;
    int64_t last = 0, version = 0;
    int rc;

    memset(fresh, 0, sizeof *fresh);
    *data = NULL;
    rc = cq_engine_replay_stream(e, projection, stream_id, &x, &last, &version,
                                 err, errcap);
    if (rc != CQ_OK)
        return rc;
    rc = cq_query_shape(x, q, values, data, err, errcap);
    if (rc != CQ_OK)
        goto done;
    fresh->position = last;
    fresh->head = cq_engine_head(e);
    *stream_version = version;
done:
    cq_engine_replay_free(x);
    return rc;
}
