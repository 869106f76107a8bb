/*
 * query.h -- the query side: named queries answered from the read models
 * with how fresh they are, waits for freshness (min_position,
 * min_version, a command's ?wait_for=) that block no thread, and strong
 * reads replayed from the event store. See README.md for the protocol.
 *
 * It sits above the projection engine (src/projection) and below HTTP:
 * src/http parses parameters and answers; everything a query means is
 * here. The engine tells this side that positions moved through the
 * progress listener cq_query_attach installs (projection/progress.h).
 *
 * Threads: every function may be called from any thread once the engine
 * has started, except cq_query_attach (before cq_engine_start).
 */
#ifndef CQ_QUERY_H
#define CQ_QUERY_H

#include <jansson.h>
#include <stdint.h>

#include "projection/engine.h"
#include "query/wait.h"

/* What a query answer says about freshness. */
typedef struct cq_freshness {
    int64_t position;   /* what the answer reflects */
    int64_t head;       /* committed head of the event store */
    int64_t lag_events; /* head - position */
    double lag_ms;      /* age of the oldest event not yet applied */
    int failed;         /* the projection is stopped by an error */
} cq_freshness;

/* Give the engine its waiters: one queue per projection and one for the
 * event store's committed head, told by the engine whenever a position
 * moves, and fired as timed out when it stops. Call once, after the
 * projections are loaded and before cq_engine_start; the waiters are
 * freed with the engine. CQ_OK, or CQ_ENOMEM with a message. Without it
 * an engine answers queries but every wait ends at once as timed out. */
int cq_query_attach(cq_engine *e, char *err, size_t errcap);

/* ---- reading ---- */

/* Run query q of `projection` with values (in q->params order; NULL = not
 * given) against the read model. *data gets the answer's data (new
 * reference, the caller's; NULL for a CQ_RESULT_ONE query that found no
 * row); fresh says what it reflects, read in the same snapshot. For keyed
 * queries (stream_id not NULL) *stream_version gets the stream's version
 * as the answer reflects it (0 if none; stream_version may be NULL).
 * CQ_OK; CQ_EIO (the read model or the event store failed; err says
 * why); CQ_EBUSY when a rebuild replaces the tables with a new
 * definition and the old one cannot answer q; CQ_ENOMEM. */
int cq_query_run(cq_engine *e, int projection, const cq_decl_query *q,
                 const char *const *values, const char *stream_id,
                 json_t **data, cq_freshness *fresh, int64_t *stream_version,
                 char *err, size_t errcap);

/* The same query answered from the event store: the one stream is
 * replayed through the projection's handlers into a private in-memory
 * database and the query runs there. fresh->position is the stream's last
 * event. CQ_OK, CQ_EIO, CQ_ENOMEM (no stream answers as the projection of
 * nothing). */
int cq_query_run_strong(cq_engine *e, int projection, const cq_decl_query *q,
                        const char *const *values, const char *stream_id,
                        json_t **data, cq_freshness *fresh,
                        int64_t *stream_version, char *err, size_t errcap);

/* ---- waiting for freshness ---- */

/* The queue of the event store's committed head, for the wait functions
 * (a strong read waits for it). */
#define CQ_QUERY_HEAD (-1)

/* Wait for `projection` (or CQ_QUERY_HEAD) to reach `target`: as
 * cq_waiters_add (CQ_WAIT_PENDING and *out, CQ_WAIT_READY, CQ_ENOMEM,
 * CQ_ECLOSED after the engine stopped or without cq_query_attach). */
int cq_query_wait(cq_engine *e, int projection, int64_t target,
                  int64_t timeout_ms, cq_wait_cb cb, void *arg, cq_wait **out);

/* Wait for `projection` (or CQ_QUERY_HEAD) to apply stream_id's event at
 * `version`, which the event store did not have when the caller looked;
 * `seen` is the position read before it looked (cq_engine_position or
 * cq_engine_head). As cq_waiters_add_stream: CQ_WAIT_READY means look
 * again. Only commits that write stream_id wake it. */
int cq_query_wait_stream(cq_engine *e, int projection, const char *stream_id,
                         int64_t version, int64_t seen, int64_t timeout_ms,
                         cq_wait_cb cb, void *arg, cq_wait **out);

/* Waiters registered and not fired, and the waiters commits have looked
 * at one by one since the start (cq_waiters_checked); 0 and 0 without
 * cq_query_attach. Any thread. (Named for the engine: /metrics asks.) */
void cq_engine_wait_stats(cq_engine *e, int *pending, int64_t *checked);

/* What one query asks about freshness, and the position it waits for. */
typedef struct cq_query_target {
    /* given */
    int projection;        /* engine index */
    int strong;            /* a strong read: wait for the store's head */
    const char *stream_id; /* a keyed query's stream (borrowed), or NULL */
    int64_t min_position;  /* -1: not asked */
    int64_t min_version;   /* -1: not asked (keyed queries only) */
    /* worked out by cq_query_resolve */
    int64_t position;     /* to wait for (0: nothing) */
    int version_missing;  /* the stream has no event min_version yet */
    int64_t version_seen; /* the position read before looking for it */
} cq_query_target;

/* Work out t->position from min_position and min_version: *wait is 1
 * when the projection (strong: the store's head) has not reached it yet,
 * or the stream has no event min_version yet (t->version_missing: wait
 * with cq_query_wait_stream, then resolve again); 0 when the query can be
 * answered now. CQ_OK, or CQ_EIO with a message (the event store could
 * not be read). */
int cq_query_resolve(cq_engine *e, cq_query_target *t, int *wait, char *err,
                     size_t errcap);

/* Register t's waiter (after cq_query_resolve said to wait): returns as
 * cq_query_wait / cq_query_wait_stream. On CQ_WAIT_READY (look again)
 * or an error (answer with what there is, as timed out) nothing is
 * registered. */
int cq_query_wait_target(cq_engine *e, const cq_query_target *t,
                         int64_t timeout_ms, cq_wait_cb cb, void *arg,
                         cq_wait **out);

/* Answer query q for t: run it (strong or from the read model) and build
 * the answer's meta object (projection, position, lag_events, lag_ms,
 * stale, consistency, stream_version for keyed queries, and a warning
 * when stale because the wait timed out or the projection failed; see
 * docs/api.md). timed_out: the wait for t->position ended by its
 * deadline. On CQ_OK *data (may be NULL: nothing found) and *meta are
 * new references, the caller's; *position is what the answer reflects
 * (its ETag) and *stale whether it says so. Errors as cq_query_run. */
int cq_query_answer(cq_engine *e, const cq_query_target *t,
                    const cq_decl_query *q, const char *const *values,
                    int timed_out, json_t **data, json_t **meta,
                    int64_t *position, int *stale, char *err, size_t errcap);

#endif
