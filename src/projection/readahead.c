/*
 * readahead.c -- the read-ahead of a catch-up: while the projector applies
 * one full batch of events to projections far behind the head, the next
 * batch is read from the event store and decoded on a thread of its own.
 *
 * Reading and decoding a batch is about a quarter of the projector's work
 * per event when it catches up (the statements and the commit are the
 * rest); done meanwhile on another CPU, it leaves the critical path. It
 * changes nothing the projector does with the events: they are read from
 * the store, whose committed events never change, from the position the
 * next round starts at, and handed over only if that round wants exactly
 * them (same first position, at least as many as it asks for, metadata
 * decoded or not as it needs: the last read-ahead of a catch-up, up to
 * the head then, is taken by the round that asks for a micro-batch from
 * there); anything else (a pause, a reset or a rebuild's swap moved a
 * checkpoint, a projection resumed further back, a failure, a source)
 * drops it, and the round reads as it always did. The projection's rows,
 * checkpoint and transactions are the projector's, as before.
 *
 * Threads: one thread per read-ahead, created by the projector and joined
 * by it before it touches the read-ahead's batch again (take, stop): the
 * join orders everything the thread wrote before what the projector reads.
 * The thread touches only its own batch and arrays, and the store's thread-
 * safe read side (store.h); the domain is read-only. A read-ahead holds at
 * most one batch (10 x batch events) and their decoded data.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/base.h"
#include "projection/engine_int.h"

struct readahead {
    int active; /* the thread was started and not joined yet */
    pthread_t thread;
    cq_engine *e;
    batch b;              /* the events read, into mem's arrays */
    struct batch_mem mem; /* the arrays: swapped with e->bmem when taken */
    int64_t from;
    int rc;
    char err[256];
};

static void *readahead_main(void *arg)
{
    struct readahead *ra = arg;
    int64_t head;

    pthread_setname_np(pthread_self(), "cq-readahead");
    ra->rc = cq_store_read_all(ra->e->store, ra->from, ra->b.cap,
                               cq_eng_batch_add, &ra->b, &head, ra->err,
                               sizeof ra->err);
    return NULL;
}

/* Wait for ra's thread, if it runs. */
static void join(struct readahead *ra)
{
    if (ra->active) {
        pthread_join(ra->thread, NULL);
        ra->active = 0;
    }
}

void cq_eng_readahead_start(cq_engine *e, int64_t from, int cap,
                            int need_meta)
{
    struct readahead *ra = e->ra;
    char err[64];

    if (ra == NULL) {
        if ((ra = calloc(1, sizeof *ra)) == NULL)
            return;
        ra->e = e;
        e->ra = ra;
    }
    if (ra->active || ra->b.n > 0)
        return; /* one at a time: the next round takes or drops it */
    memset(&ra->b, 0, sizeof ra->b);
    ra->b.cap = cap;
    ra->b.need_meta = need_meta;
    ra->b.domain = e->domain;
    ra->from = from;
    ra->rc = CQ_OK;
    ra->err[0] = '\0';
    if (cq_eng_batch_arrays(&ra->mem, &ra->b, err, sizeof err) != CQ_OK)
        return;
    ra->active = pthread_create(&ra->thread, NULL, readahead_main, ra) == 0;
}

int cq_eng_readahead_take(cq_engine *e, batch *b, int64_t from, int cap,
                          int need_meta)
{
    struct readahead *ra = e->ra;
    struct batch_mem swap;

    if (ra == NULL)
        return 0;
    join(ra);
    if (ra->b.n == 0 || ra->rc != CQ_OK || ra->from != from ||
        ra->b.cap < cap || ra->b.need_meta != need_meta ||
        ra->b.se[0].position != from) {
        /* not what this round reads (or it failed: the round reads again
         * and reports it, if it fails again) */
        cq_eng_batch_free(&ra->b);
        return 0;
    }
    /* its arrays become the engine's, the engine's its own */
    swap = e->bmem;
    e->bmem = ra->mem;
    ra->mem = swap;
    *b = ra->b;
    ra->b.n = 0;
    return 1;
}

void cq_eng_readahead_stop(cq_engine *e)
{
    struct readahead *ra = e->ra;

    if (ra == NULL)
        return;
    join(ra);
    cq_eng_batch_free(&ra->b);
    free(ra->mem.se);
    free(ra->mem.pe);
    free(ra->mem.prc);
    free(ra);
    e->ra = NULL;
}
