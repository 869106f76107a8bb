/*
 * progress.h -- how the projection engine tells others that positions
 * moved, without knowing who listens. The query side's waiters
 * (src/query/wait.h) are the listener: the engine depends on nothing
 * above it.
 *
 * Queues: queue i (0 <= i < cq_engine_count) is projection i; queue
 * cq_engine_count is the event store's committed head.
 */
#ifndef CQ_PROJECTION_PROGRESS_H
#define CQ_PROJECTION_PROGRESS_H

#include <stddef.h>
#include <stdint.h>

/* A stream and the highest version of it an advance applied. */
typedef struct cq_stream_applied {
    const char *stream_id; /* borrowed for the call */
    int64_t version;
} cq_stream_applied;

/* The listener's operations, each called with `arg`. They are called on
 * the thread that moved the position (projector, writer, or the one
 * starting or stopping the engine), without the engine's lock held, and
 * must be short. */
typedef struct cq_engine_progress {
    void *arg;
    /* queue reached position; every stream on it may have moved */
    void (*advance)(void *arg, int queue, int64_t position);
    /* queue reached position having applied, since its previous
     * position, exactly the events of the n streams listed (or fewer) */
    void (*advance_streams)(void *arg, int queue, int64_t position,
                            const cq_stream_applied *applied, size_t n);
    /* queue went back to position (a projection replayed from 0) */
    void (*rewind)(void *arg, int queue, int64_t position);
    /* the engine stops: nothing will move any more (cq_engine_stop) */
    void (*shutdown)(void *arg);
    /* the engine is freed: let go of arg (cq_engine_free) */
    void (*free)(void *arg);
} cq_engine_progress;

#endif
