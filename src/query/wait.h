/*
 * wait.h -- callers waiting for a projection to reach a position, or to
 * apply a stream's event.
 *
 * A query with ?min_position=P (or a command with ?wait_for=) must not
 * block a thread: it registers a waiter and its HTTP connection sleeps.
 * The waiter fires exactly once, either when its queue (one per
 * projection) advances to >= its target, or when its deadline passes;
 * the callback then resumes the connection.
 *
 * A query with ?min_version=V on a stream that has no event V yet cannot
 * name a position. It registers a stream waiter instead, which fires when
 * its queue applies an event of that stream at version >= V (the caller
 * then looks the position up again), so a commit wakes only the waiters
 * of the streams it wrote, not every waiter on the projection.
 *
 * Each queue keeps its position waiters in a binary min-heap by target,
 * stream waiters sit in one hash table by (queue, stream id), and all
 * waiters are also in one min-heap by deadline, served by one timer
 * thread, so thousands of waiters cost O(log n) each to add and to fire,
 * an advance looks only at the waiters it fires (and at those of the
 * streams it names), and nothing polls. A waiter that fires is removed
 * from every structure at once.
 *
 * Threads and locks: one mutex guards the heaps, the table, the queue
 * positions, the counters and every waiter's state. Callbacks run without
 * the lock, on the thread that advanced the queue or on the timer thread;
 * they must be short (resume a connection) and must not call back into
 * this module except cq_wait_reached/cq_wait_release.
 */
#ifndef CQ_QUERY_WAIT_H
#define CQ_QUERY_WAIT_H

#include <stddef.h>
#include <stdint.h>

#include "cqrs/cqrs.h"           /* CQ_ENOMEM, CQ_ECLOSED */
#include "projection/progress.h" /* cq_stream_applied */

typedef struct cq_waiters cq_waiters;
typedef struct cq_wait cq_wait;

typedef void (*cq_wait_cb)(void *arg);

/* What cq_waiters_add and cq_waiters_add_stream return besides the
 * errors CQ_ENOMEM and CQ_ECLOSED. */
enum cq_wait_added {
    CQ_WAIT_PENDING = 0, /* registered: *out fires once, later */
    CQ_WAIT_READY = 1    /* nothing registered: already there (for a
                            stream waiter: look again) */
};

/* A set of nqueues queues, all at position 0, and its timer thread; owned
 * by the caller (cq_waiters_free). NULL on failure (out of memory, or the
 * thread could not start). Any thread. */
cq_waiters *cq_waiters_new(int nqueues);

/* Fire every remaining waiter as timed out and stop the timer thread;
 * later cq_waiters_add calls return CQ_ECLOSED. Waiters may still be released.
 * Idempotent; accepts NULL. */
void cq_waiters_shutdown(cq_waiters *ws);

/* Shut down if needed and free. Every waiter must have been released.
 * Accepts NULL. */
void cq_waiters_free(cq_waiters *ws);

/* Set queue's position (it only moves forward) and fire the waiters whose
 * target it reached. Without a list of what was applied, every stream
 * waiter of the queue is fired too if the position moved (as reached: its
 * owner looks the stream up again); for a position that moved without
 * applying events one by one (a skipped event, a rebuild swapped in).
 * Any thread. */
void cq_waiters_advance(cq_waiters *ws, int queue, int64_t position);

/* cq_waiters_advance for a queue that has applied everything up to
 * `position` and, in (its old position, position], exactly the events
 * listed (more is harmless: a stream waiter fired early looks again):
 * fires the position waiters it reached and the stream waiters of the
 * listed streams whose version it reached, and looks at no other
 * waiter. Any thread. */
void cq_waiters_advance_streams(cq_waiters *ws, int queue, int64_t position,
                                const cq_stream_applied *applied, size_t n);

/* Move queue back to `position` (a projection replayed from the start),
 * firing nothing: waiters registered later wait for it again. Any
 * thread. */
void cq_waiters_rewind(cq_waiters *ws, int queue, int64_t position);

/* Wait until `queue` reaches `target` or timeout_ms pass. If it already
 * has, returns CQ_WAIT_READY and registers nothing. Otherwise returns
 * CQ_WAIT_PENDING and *out is a waiter whose cb(arg) will be called
 * exactly once; the caller owns one reference to it and gives it back
 * with cq_wait_release(). Returns CQ_ENOMEM on out of memory, CQ_ECLOSED
 * after cq_waiters_shutdown() (*out NULL). Any thread. */
int cq_waiters_add(cq_waiters *ws, int queue, int64_t target,
                   int64_t timeout_ms, cq_wait_cb cb, void *arg, cq_wait **out);

/* Wait until `queue` applies an event of stream_id (copied) at a version
 * >= `version`, or timeout_ms pass. `seen` is the queue's position the
 * caller read before it found that the stream has no such event yet: if
 * the queue has moved past it since, the event may have been applied in
 * between, and CQ_WAIT_READY is returned with nothing registered (look
 * again). Otherwise as cq_waiters_add: CQ_WAIT_PENDING and *out,
 * CQ_ENOMEM, CQ_ECLOSED. Any thread. */
int cq_waiters_add_stream(cq_waiters *ws, int queue, const char *stream_id,
                          int64_t version, int64_t seen, int64_t timeout_ms,
                          cq_wait_cb cb, void *arg, cq_wait **out);

/* After the callback: 1 if the target was reached, 0 if it timed out (or
 * the waiters were shut down). A predicate, not a CQ_* code. Any thread
 * holding a reference to w. */
int cq_wait_reached(cq_wait *w);

/* Give back the caller's reference; w is freed once the waiters let go
 * of it too. Any thread, also from the callback. Accepts NULL. */
void cq_wait_release(cq_wait *w);

/* Number of waiters registered and not fired (for metrics and tests). Any
 * thread. */
int cq_waiters_pending(cq_waiters *ws);

/* Waiters the advances have looked at one by one since the start: each
 * position waiter fired, and each stream waiter of a stream an advance
 * named (whether its version was reached or not). An advance that fires
 * nothing and names no waited-for stream adds 0, however many wait. Any
 * thread. */
int64_t cq_waiters_checked(cq_waiters *ws);

#endif
