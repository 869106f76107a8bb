/*
 * wait.h -- callers waiting for a projection to reach a position.
 *
 * A query with ?min_position=P (or a command with ?wait_for=) must not
 * block a thread: it registers a waiter and its HTTP connection sleeps.
 * The waiter fires exactly once, either when its queue (one per
 * projection) advances to >= its target, or when its deadline passes;
 * the callback then resumes the connection.
 *
 * Each queue keeps its waiters in a binary min-heap by target and all
 * waiters are also in one min-heap by deadline, served by one timer
 * thread, so thousands of waiters cost O(log n) each to add and to fire,
 * and nothing polls. A waiter that fires is removed from both heaps at
 * once.
 *
 * Threads and locks: one mutex guards both heaps, the queue positions and
 * every waiter's state. Callbacks run without the lock, on the thread that
 * advanced the queue or on the timer thread; they must be short (resume a
 * connection) and must not call back into this module except
 * cq_wait_reached/cq_wait_release.
 */
#ifndef CQ_PROJECTION_WAIT_H
#define CQ_PROJECTION_WAIT_H

#include <stdint.h>

typedef struct cq_waiters cq_waiters;
typedef struct cq_wait cq_wait;

typedef void (*cq_wait_cb)(void *arg);

/* A set of nqueues queues, all at position 0, and its timer thread. NULL
 * on failure. */
cq_waiters *cq_waiters_new(int nqueues);

/* Fire every remaining waiter as timed out and stop the timer thread;
 * later cq_waiters_add calls return -2. Waiters may still be released.
 * Idempotent; accepts NULL. */
void cq_waiters_shutdown(cq_waiters *ws);

/* Shut down if needed and free. Every waiter must have been released.
 * Accepts NULL. */
void cq_waiters_free(cq_waiters *ws);

/* Set queue's position (it only moves forward) and fire the waiters whose
 * target it reached. Any thread. */
void cq_waiters_advance(cq_waiters *ws, int queue, int64_t position);

/* Move queue back to `position` (a projection replayed from the start),
 * firing nothing: waiters registered later wait for it again. */
void cq_waiters_rewind(cq_waiters *ws, int queue, int64_t position);

/* Wait until `queue` reaches `target` or timeout_ms pass. If it already
 * has, returns 1 and registers nothing. Otherwise returns 0 and *out is a
 * waiter whose cb(arg) will be called exactly once; the caller owns one
 * reference to it and gives it back with cq_wait_release(). Returns -1 on
 * out of memory, -2 after cq_waiters_shutdown(). Any thread. */
int cq_waiters_add(cq_waiters *ws, int queue, int64_t target,
                   int64_t timeout_ms, cq_wait_cb cb, void *arg, cq_wait **out);

/* After the callback: 1 if the target was reached, 0 if it timed out. */
int cq_wait_reached(cq_wait *w);

/* Give back the caller's reference. Accepts NULL. */
void cq_wait_release(cq_wait *w);

/* Number of waiters registered and not fired (for metrics and tests). */
int cq_waiters_pending(cq_waiters *ws);

#endif
