/*
 * tail.h -- the events committed last, kept in memory (src/projection).
 *
 * When this process alone appends to the event store (SQLite, the writer
 * thread), every event it commits passes through the writer's hooks. The
 * tail keeps the last ones, a run of consecutive positions lo..hi that
 * ends at the head, so that:
 *  - the projector takes its micro-batch from memory instead of reading
 *    back from events.db what the writer has just written;
 *  - a query's lag (when the first event its projection has not applied
 *    was recorded) and a stream's version at the projection's position
 *    come from memory when the run covers them.
 * Anything the run does not hold is read from the store, as before.
 *
 * What it holds committed. The writer's turn stages the events of each
 * request as appended (cq_tail_stage, from the apply_inline hook, after
 * the inline projections accepted them); a rolled-back savepoint gives
 * its positions to the next append, which drops the staged events from
 * that position on. After the COMMIT (the committed hook),
 * cq_tail_publish keeps the staged events up to the head only if they
 * are consecutive, end at the head and each belongs to a stream an
 * accepted request of the batch wrote up to at least its version; they
 * then extend the run if they continue it. Otherwise the run is dropped
 * and starts again from the batch (or from the next one), and readers
 * go to the store until it covers them.
 *
 * Bounds: at most CQ_TAIL_EVENTS events and CQ_TAIL_BYTES bytes of their
 * text; the oldest go first. An event larger than a quarter of the bytes
 * is not kept (the run starts again after it).
 *
 * Threads: cq_tail_stage and cq_tail_publish on the thread holding the
 * writer's turn, one at a time; the readers on any thread. The run is
 * guarded by the tail's mutex; its entries are immutable and counted
 * references, so a reader takes the ones it needs under the mutex and
 * decodes them after it.
 */
#ifndef CQ_PROJECTION_TAIL_H
#define CQ_PROJECTION_TAIL_H

#include <stddef.h>
#include <stdint.h>

#include "projection/progress.h"
#include "store/store.h"

#define CQ_TAIL_EVENTS 4096             /* a power of two */
#define CQ_TAIL_BYTES (4 * 1024 * 1024) /* of the events' texts */

typedef struct cq_tail cq_tail;

/* A new, empty tail, or NULL when out of memory. */
cq_tail *cq_tail_new(void);

/* Free t (no other thread may use it any more). Accepts NULL. */
void cq_tail_free(cq_tail *t);

/* Stage copies of the n events a request has just appended, inside the
 * batch's transaction (positions consecutive from events[0]). Staged
 * events at events[0].position or after (a rolled-back savepoint's) are
 * dropped first. Out of memory, the run is dropped at the next publish.
 * Accepts NULL. */
void cq_tail_stage(cq_tail *t, const cq_stored_event *events, size_t n);

/* The batch committed up to head; accepted lists the streams its accepted
 * requests wrote and the version each reached (n of them), or is NULL
 * with all set when the list could not be made (the run is dropped).
 * Accepts NULL. */
void cq_tail_publish(cq_tail *t, int64_t head,
                     const cq_stream_applied *accepted, size_t n, int all);

/* Pass the held events from position `from` on, at most max of them and
 * in order, to cb (its texts valid during the call), until cb returns
 * non-zero. Returns how many were passed; 0 when the run does not hold
 * `from` (read the store). Accepts NULL. */
int cq_tail_read(cq_tail *t, int64_t from, int max, cq_event_cb cb,
                 void *arg);

/* 1 with *at set when the run holds the event at position, else 0. */
int cq_tail_recorded_at(cq_tail *t, int64_t position, int64_t *at);

/* 1 with *version set to the highest version of stream_id at a position
 * up to `position` (0: none), when the run answers that (it holds every
 * position from the stream's event to `position`, looking back at most
 * CQ_TAIL_SCAN events, or from the store's first position); else 0. */
#define CQ_TAIL_SCAN 256
int cq_tail_version_at(cq_tail *t, const char *stream_id, int64_t position,
                       int64_t *version);

/* Events the projector took from the tail and from the store (only
 * grows; cq_tail_count_store adds the latter). */
void cq_tail_count_store(cq_tail *t, int n);
void cq_tail_stats(cq_tail *t, int64_t *from_tail, int64_t *from_store);

#endif
