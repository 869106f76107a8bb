/*
 * inline_watch.h -- whether an HTTP thread should run a command's batch
 * itself (cq_writer_try_run) or send it through the writer's queue,
 * judged by how long the thread has been kept waiting for a CPU
 * (inline_watch.c; why: bench/README.md, "One client: the two
 * hand-offs").
 *
 * The thread that runs a command's batch does the HTTP work and the
 * writer's: ~175 µs of CPU a command, about half a core at one client.
 * On CPUs crowded with other busy processes that is more than its fair
 * share, and the scheduler then makes it wait at each wake-up, up to 3×
 * slower than the queue's two threads. So each thread sums its own
 * run-queue delay across the commands it ran itself, CQ_INLINE_SAMPLE at
 * a time; above CQ_INLINE_MAX_WAIT_NS a command on average, its next
 * CQ_INLINE_BACKOFF commands go through the queue, then it measures
 * again.
 *
 * Threads: a cq_inline_watch belongs to one thread (write.c keeps one per
 * MHD thread, thread-local); nothing here locks.
 */
#ifndef CQ_HTTP_INLINE_WATCH_H
#define CQ_HTTP_INLINE_WATCH_H

#include <stdint.h>

#define CQ_INLINE_SAMPLE 16
#define CQ_INLINE_MAX_WAIT_NS 150000u
#define CQ_INLINE_BACKOFF 512

typedef struct cq_inline_watch {
    uint64_t last;   /* run-queue delay (ns) at the last command run here */
    uint64_t waited; /* summed over this sample */
    int n;           /* commands of this sample seen */
    int backoff;     /* commands left to send through the queue */
} cq_inline_watch; /* zeroed: a fresh sample, no backoff */

/* 1 if the thread may run its next command itself; 0: send it through
 * the queue (counts one command of a backoff). */
int cq_inline_ok(cq_inline_watch *w);

/* The thread ran a command itself; `delay` is its run-queue delay so far
 * in ns (cq_inline_run_delay), 0 when unknown (then nothing changes). */
void cq_inline_ran(cq_inline_watch *w, uint64_t delay);

/* The calling thread's run-queue delay so far in ns (the second figure
 * of /proc/thread-self/schedstat); 0 when the kernel does not say. */
uint64_t cq_inline_run_delay(void);

#endif
