/*
 * inline_watch.c -- a thread's run-queue delay across the commands it ran
 * itself, and the backoff to the writer's queue (see inline_watch.h).
 */
#include "http/inline_watch.h"

#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>

int cq_inline_ok(cq_inline_watch *w)
{
    if (w->backoff > 0) {
        if (--w->backoff == 0)
            w->n = 0; /* a new sample, from the next command on */
        return 0;
    }
    return 1;
}

void cq_inline_ran(cq_inline_watch *w, uint64_t delay)
{
    if (delay == 0)
        return;
    if (w->n > 0 && delay >= w->last)
        w->waited += delay - w->last;
    w->last = delay;
    if (++w->n <= CQ_INLINE_SAMPLE)
        return;
    if (w->waited > (uint64_t)CQ_INLINE_MAX_WAIT_NS * CQ_INLINE_SAMPLE)
        w->backoff = CQ_INLINE_BACKOFF;
    w->waited = 0;
    w->n = 1; /* this command starts the next sample */
}

/* Opened each time (~3 µs a command run inline): a descriptor kept per
 * thread would outlive MHD's threads. */
uint64_t cq_inline_run_delay(void)
{
    char buf[96];
    ssize_t n = -1;
    unsigned long long cpu, wait;
    int fd = open("/proc/thread-self/schedstat", O_RDONLY | O_CLOEXEC);

    if (fd >= 0) {
        n = read(fd, buf, sizeof buf - 1);
        close(fd);
    }
    if (n <= 0)
        return 0;
    buf[n] = '\0';
    if (sscanf(buf, "%llu %llu", &cpu, &wait) != 2)
        return 0;
    return wait;
}
