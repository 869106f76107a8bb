/*
 * wait.c -- position waiters with deadlines (see wait.h).
 *
 * A waiter sits in two heaps at once: its queue's heap ordered by target
 * and the deadline heap. Each heap entry records the waiter, and the
 * waiter records its index in both heaps, so firing from one side removes
 * it from the other in O(log n). A waiter is freed when it has fired and
 * its owner has released it (refs: 1 for the owner, 1 while registered).
 */
#include "projection/wait.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <time.h>

#include "base/base.h"

enum { W_WAITING, W_REACHED, W_TIMED_OUT };

struct cq_wait {
    int64_t target;
    int64_t deadline_ns; /* monotonic */
    int queue;
    int state;    /* guarded by ws->mu */
    int refs;     /* guarded by ws->mu */
    size_t at[2]; /* index in the target heap, deadline heap */
    cq_wait_cb cb;
    void *arg;
    cq_waiters *ws;
};

typedef struct heap {
    cq_wait **v;
    size_t n, cap;
} heap;

struct cq_waiters {
    pthread_mutex_t mu;
    pthread_cond_t cv; /* timer thread: the earliest deadline changed */
    pthread_t timer;
    int stopping;
    int nqueues;
    int64_t *position; /* per queue */
    heap *targets;     /* per queue; heap kind 0 */
    heap deadlines;    /* heap kind 1 */
    int pending;
};

/* ---- heaps: kind 0 orders by target, kind 1 by deadline ---- */

static int before(int kind, const cq_wait *a, const cq_wait *b)
{
    return kind == 0 ? a->target < b->target : a->deadline_ns < b->deadline_ns;
}

static void put(heap *h, int kind, size_t i, cq_wait *w)
{
    h->v[i] = w;
    w->at[kind] = i;
}

static void sift_up(heap *h, int kind, size_t i)
{
    cq_wait *w = h->v[i];
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!before(kind, w, h->v[parent]))
            break;
        put(h, kind, i, h->v[parent]);
        i = parent;
    }
    put(h, kind, i, w);
}

static void sift_down(heap *h, int kind, size_t i)
{
    cq_wait *w = h->v[i];
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= h->n)
            break;
        if (c + 1 < h->n && before(kind, h->v[c + 1], h->v[c]))
            c++;
        if (!before(kind, h->v[c], w))
            break;
        put(h, kind, i, h->v[c]);
        i = c;
    }
    put(h, kind, i, w);
}

static int heap_push(heap *h, int kind, cq_wait *w)
{
    if (h->n == h->cap) {
        size_t cap = h->cap ? h->cap * 2 : 64;
        cq_wait **v = realloc(h->v, cap * sizeof *v);
        if (v == NULL)
            return -1;
        h->v = v;
        h->cap = cap;
    }
    put(h, kind, h->n++, w);
    sift_up(h, kind, h->n - 1);
    return 0;
}

static void heap_remove(heap *h, int kind, cq_wait *w)
{
    size_t i = w->at[kind];
    cq_wait *last = h->v[--h->n];

    if (i == h->n)
        return;
    put(h, kind, i, last);
    sift_down(h, kind, i);
    sift_up(h, kind, last->at[kind]);
}

/* ---- firing ---- */

/* Waiters taken out of the heaps under the lock, whose callbacks run
 * after it is released. */
typedef struct fired {
    cq_wait **v;
    size_t n, cap;
} fired;

static void fire_locked(cq_waiters *ws, cq_wait *w, int state, fired *f)
{
    heap_remove(&ws->targets[w->queue], 0, w);
    heap_remove(&ws->deadlines, 1, w);
    w->state = state;
    ws->pending--;
    if (f->n == f->cap) {
        size_t cap = f->cap ? f->cap * 2 : 16;
        cq_wait **v = realloc(f->v, cap * sizeof *v);
        if (v == NULL) {
            /* Cannot defer: the callback only resumes a connection, so
             * running it under the lock is safe, just slower. */
            w->cb(w->arg);
            w->refs--;
            if (w->refs == 0)
                free(w);
            return;
        }
        f->v = v;
        f->cap = cap;
    }
    f->v[f->n++] = w;
}

/* Run the callbacks collected while locked, then drop their references. */
static void run_fired(cq_waiters *ws, fired *f)
{
    for (size_t i = 0; i < f->n; i++)
        f->v[i]->cb(f->v[i]->arg);
    if (f->n > 0) {
        pthread_mutex_lock(&ws->mu);
        for (size_t i = 0; i < f->n; i++)
            if (--f->v[i]->refs == 0)
                free(f->v[i]);
        pthread_mutex_unlock(&ws->mu);
    }
    free(f->v);
}

static void *timer_main(void *arg)
{
    cq_waiters *ws = arg;

    pthread_setname_np(pthread_self(), "cq-waits");
    pthread_mutex_lock(&ws->mu);
    while (!ws->stopping) {
        fired f = {0};
        int64_t now = (int64_t)cq_mono_ns();

        while (ws->deadlines.n > 0 && ws->deadlines.v[0]->deadline_ns <= now)
            fire_locked(ws, ws->deadlines.v[0], W_TIMED_OUT, &f);
        if (f.n > 0) {
            pthread_mutex_unlock(&ws->mu);
            run_fired(ws, &f);
            pthread_mutex_lock(&ws->mu);
            continue;
        }
        free(f.v);
        if (ws->deadlines.n == 0) {
            pthread_cond_wait(&ws->cv, &ws->mu);
        } else {
            int64_t d = ws->deadlines.v[0]->deadline_ns;
            struct timespec ts = {(time_t)(d / 1000000000),
                                  (long)(d % 1000000000)};
            pthread_cond_timedwait(&ws->cv, &ws->mu, &ts);
        }
    }
    pthread_mutex_unlock(&ws->mu);
    return NULL;
}

/* ---- public ---- */

cq_waiters *cq_waiters_new(int nqueues)
{
    cq_waiters *ws = calloc(1, sizeof *ws);
    pthread_condattr_t ca;

    if (ws == NULL)
        return NULL;
    ws->nqueues = nqueues;
    ws->position =
        calloc((size_t)(nqueues > 0 ? nqueues : 1), sizeof *ws->position);
    ws->targets =
        calloc((size_t)(nqueues > 0 ? nqueues : 1), sizeof *ws->targets);
    if (ws->position == NULL || ws->targets == NULL)
        goto fail;
    pthread_mutex_init(&ws->mu, NULL);
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&ws->cv, &ca);
    pthread_condattr_destroy(&ca);
    if (pthread_create(&ws->timer, NULL, timer_main, ws) != 0) {
        pthread_cond_destroy(&ws->cv);
        pthread_mutex_destroy(&ws->mu);
        goto fail;
    }
    return ws;
fail:
    free(ws->position);
    free(ws->targets);
    free(ws);
    return NULL;
}

void cq_waiters_shutdown(cq_waiters *ws)
{
    fired f = {0};
    int joined;

    if (ws == NULL)
        return;
    pthread_mutex_lock(&ws->mu);
    joined = ws->stopping;
    ws->stopping = 1;
    while (ws->deadlines.n > 0)
        fire_locked(ws, ws->deadlines.v[0], W_TIMED_OUT, &f);
    pthread_cond_signal(&ws->cv);
    pthread_mutex_unlock(&ws->mu);
    run_fired(ws, &f);
    if (!joined)
        pthread_join(ws->timer, NULL);
}

void cq_waiters_free(cq_waiters *ws)
{
    if (ws == NULL)
        return;
    cq_waiters_shutdown(ws);
    for (int q = 0; q < ws->nqueues; q++)
        free(ws->targets[q].v);
    free(ws->deadlines.v);
    free(ws->targets);
    free(ws->position);
    pthread_cond_destroy(&ws->cv);
    pthread_mutex_destroy(&ws->mu);
    free(ws);
}

void cq_waiters_advance(cq_waiters *ws, int queue, int64_t position)
{
    fired f = {0};
    heap *h = &ws->targets[queue];

    pthread_mutex_lock(&ws->mu);
    if (position > ws->position[queue])
        ws->position[queue] = position;
    while (h->n > 0 && h->v[0]->target <= ws->position[queue])
        fire_locked(ws, h->v[0], W_REACHED, &f);
    pthread_mutex_unlock(&ws->mu);
    run_fired(ws, &f);
}

void cq_waiters_rewind(cq_waiters *ws, int queue, int64_t position)
{
    pthread_mutex_lock(&ws->mu);
    ws->position[queue] = position;
    pthread_mutex_unlock(&ws->mu);
}

int cq_waiters_add(cq_waiters *ws, int queue, int64_t target,
                   int64_t timeout_ms, cq_wait_cb cb, void *arg, cq_wait **out)
{
    cq_wait *w;
    int earliest;

    *out = NULL;
    pthread_mutex_lock(&ws->mu);
    if (ws->position[queue] >= target) {
        pthread_mutex_unlock(&ws->mu);
        return 1;
    }
    if (ws->stopping) {
        pthread_mutex_unlock(&ws->mu);
        return -2;
    }
    w = calloc(1, sizeof *w);
    if (w == NULL)
        goto nomem;
    w->target = target;
    w->deadline_ns = (int64_t)cq_mono_ns() + timeout_ms * 1000000;
    w->queue = queue;
    w->state = W_WAITING;
    w->refs = 2;
    w->cb = cb;
    w->arg = arg;
    w->ws = ws;
    if (heap_push(&ws->targets[queue], 0, w) != 0) {
        free(w);
        goto nomem;
    }
    if (heap_push(&ws->deadlines, 1, w) != 0) {
        heap_remove(&ws->targets[queue], 0, w);
        free(w);
        goto nomem;
    }
    ws->pending++;
    earliest = ws->deadlines.v[0] == w;
    if (earliest)
        pthread_cond_signal(&ws->cv);
    pthread_mutex_unlock(&ws->mu);
    *out = w;
    return 0;
nomem:
    pthread_mutex_unlock(&ws->mu);
    return -1;
}

int cq_wait_reached(cq_wait *w)
{
    int s;

    pthread_mutex_lock(&w->ws->mu);
    s = w->state;
    pthread_mutex_unlock(&w->ws->mu);
    return s == W_REACHED;
}

void cq_wait_release(cq_wait *w)
{
    cq_waiters *ws;
    int gone;

    if (w == NULL)
        return;
    ws = w->ws;
    pthread_mutex_lock(&ws->mu);
    gone = --w->refs == 0;
    pthread_mutex_unlock(&ws->mu);
    if (gone)
        free(w);
}

int cq_waiters_pending(cq_waiters *ws)
{
    int n;

    pthread_mutex_lock(&ws->mu);
    n = ws->pending;
    pthread_mutex_unlock(&ws->mu);
    return n;
}
