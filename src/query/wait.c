/*
 * wait.c -- position and stream waiters with deadlines (see wait.h).
 *
 * A position waiter sits in two heaps at once: its queue's heap ordered by
 * target and the deadline heap. Each heap entry records the waiter, and
 * the waiter records its index in both heaps, so firing from one side
 * removes it from the other in O(log n). A stream waiter sits in the
 * deadline heap and in a chain of the stream table (doubly linked, so it
 * leaves in O(1)); the table is keyed by a hash of (queue, stream id),
 * and has at least as many chains as stream waiters, so an advance naming
 * a stream walks a chain of about one. A waiter is freed when it has
 * fired and its owner has released it (refs: 1 for the owner, 1 while
 * registered).
 */
#include "query/wait.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/base.h"

enum { W_WAITING, W_REACHED, W_TIMED_OUT };

struct cq_wait {
    int64_t target;      /* position; for a stream waiter, the version */
    int64_t deadline_ns; /* monotonic */
    int queue;
    int state;    /* guarded by ws->mu */
    int refs;     /* guarded by ws->mu */
    size_t at[2]; /* index in the target heap, deadline heap */
    cq_wait_cb cb;
    void *arg;
    cq_waiters *ws;
    /* stream waiters only (stream != NULL): their place in the table */
    char *stream;
    uint64_t hash;
    cq_wait *next, **pprev;
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
    cq_wait **chains;  /* stream waiters by hash(queue, stream) */
    size_t nchains;    /* a power of two, or 0 */
    size_t nstream;    /* stream waiters in the table */
    int64_t *nstreams; /* per queue: its stream waiters */
    int pending;
    int64_t checked; /* see cq_waiters_checked */
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

/* ---- the stream table ---- */

/* FNV-1a over the queue number and the stream id. */
static uint64_t stream_hash(int queue, const char *stream)
{
    uint64_t h = 1469598103934665603ull;

    h = (h ^ (uint64_t)(unsigned)queue) * 1099511628211ull;
    for (const unsigned char *c = (const unsigned char *)stream; *c; c++)
        h = (h ^ *c) * 1099511628211ull;
    return h;
}

static void chain_link(cq_waiters *ws, cq_wait *w)
{
    cq_wait **head = &ws->chains[w->hash & (ws->nchains - 1)];

    w->next = *head;
    if (*head != NULL)
        (*head)->pprev = &w->next;
    *head = w;
    w->pprev = head;
}

static void chain_unlink(cq_wait *w)
{
    *w->pprev = w->next;
    if (w->next != NULL)
        w->next->pprev = w->pprev;
    w->next = NULL;
    w->pprev = NULL;
}

/* Make room for one more stream waiter: the table doubles when it would
 * hold more waiters than chains. 0, or -1 out of memory. */
static int table_reserve(cq_waiters *ws)
{
    size_t n = ws->nchains ? ws->nchains * 2 : 64;
    cq_wait **old = ws->chains;
    size_t oldn = ws->nchains;

    if (ws->nstream < ws->nchains)
        return 0;
    ws->chains = calloc(n, sizeof *ws->chains);
    if (ws->chains == NULL) {
        ws->chains = old;
        return -1;
    }
    ws->nchains = n;
    for (size_t i = 0; i < oldn; i++)
        while (old[i] != NULL) {
            cq_wait *w = old[i];
            chain_unlink(w);
            chain_link(ws, w);
        }
    free(old);
    return 0;
}

/* ---- firing ---- */

static void wait_free(cq_wait *w)
{
    free(w->stream);
    free(w);
}

/* Waiters taken out of the heaps under the lock, whose callbacks run
 * after it is released. */
typedef struct fired {
    cq_wait **v;
    size_t n, cap;
} fired;

static void fire_locked(cq_waiters *ws, cq_wait *w, int state, fired *f)
{
    if (w->stream != NULL) {
        chain_unlink(w);
        ws->nstream--;
        ws->nstreams[w->queue]--;
    } else {
        heap_remove(&ws->targets[w->queue], 0, w);
    }
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
                wait_free(w);
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
                wait_free(f->v[i]);
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
    ws->nstreams =
        calloc((size_t)(nqueues > 0 ? nqueues : 1), sizeof *ws->nstreams);
    if (ws->position == NULL || ws->targets == NULL || ws->nstreams == NULL)
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
    free(ws->nstreams);
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
    free(ws->chains);
    free(ws->nstreams);
    pthread_cond_destroy(&ws->cv);
    pthread_mutex_destroy(&ws->mu);
    free(ws);
}

/* Move queue to position and fire the position waiters it reached. 1 if
 * the position moved. */
static int advance_locked(cq_waiters *ws, int queue, int64_t position, fired *f)
{
    heap *h = &ws->targets[queue];
    int moved = position > ws->position[queue];

    if (moved)
        ws->position[queue] = position;
    while (h->n > 0 && h->v[0]->target <= ws->position[queue]) {
        ws->checked++;
        fire_locked(ws, h->v[0], W_REACHED, f);
    }
    return moved;
}

void cq_waiters_advance(cq_waiters *ws, int queue, int64_t position)
{
    fired f = {0};

    pthread_mutex_lock(&ws->mu);
    if (advance_locked(ws, queue, position, &f) && ws->nstreams[queue] > 0) {
        /* what was applied is not known: every stream waiter looks again */
        for (size_t i = 0; i < ws->nchains && ws->nstreams[queue] > 0; i++) {
            cq_wait *w = ws->chains[i];
            while (w != NULL) {
                cq_wait *next = w->next;
                if (w->queue == queue) {
                    ws->checked++;
                    fire_locked(ws, w, W_REACHED, &f);
                }
                w = next;
            }
        }
    }
    pthread_mutex_unlock(&ws->mu);
    run_fired(ws, &f);
}

void cq_waiters_advance_streams(cq_waiters *ws, int queue, int64_t position,
                                const cq_stream_applied *applied, size_t n)
{
    fired f = {0};

    pthread_mutex_lock(&ws->mu);
    advance_locked(ws, queue, position, &f);
    for (size_t k = 0; k < n && ws->nstreams[queue] > 0; k++) {
        uint64_t hash = stream_hash(queue, applied[k].stream_id);
        cq_wait *w = ws->chains[hash & (ws->nchains - 1)];
        while (w != NULL) {
            cq_wait *next = w->next;
            if (w->hash == hash && w->queue == queue &&
                strcmp(w->stream, applied[k].stream_id) == 0) {
                ws->checked++;
                if (w->target <= applied[k].version)
                    fire_locked(ws, w, W_REACHED, &f);
            }
            w = next;
        }
    }
    pthread_mutex_unlock(&ws->mu);
    run_fired(ws, &f);
}

void cq_waiters_rewind(cq_waiters *ws, int queue, int64_t position)
{
    pthread_mutex_lock(&ws->mu);
    ws->position[queue] = position;
    pthread_mutex_unlock(&ws->mu);
}

/* Register a waiter on queue: by position (stream NULL), or on stream
 * (copied) by version. Called with ws->mu held, not stopping.
 * CQ_WAIT_PENDING and *out, or CQ_ENOMEM (nothing registered). */
static int register_locked(cq_waiters *ws, int queue, const char *stream,
                           int64_t target, int64_t timeout_ms, cq_wait_cb cb,
                           void *arg, cq_wait **out)
{
    cq_wait *w = calloc(1, sizeof *w);

    if (w == NULL)
        return CQ_ENOMEM;
    w->target = target;
    w->deadline_ns = (int64_t)cq_mono_ns() + timeout_ms * 1000000;
    w->queue = queue;
    w->state = W_WAITING;
    w->refs = 2;
    w->cb = cb;
    w->arg = arg;
    w->ws = ws;
    if (stream != NULL) {
        w->stream = strdup(stream);
        w->hash = stream_hash(queue, stream);
        if (w->stream == NULL || table_reserve(ws) != 0)
            goto fail;
    } else if (heap_push(&ws->targets[queue], 0, w) != 0) {
        goto fail;
    }
    if (heap_push(&ws->deadlines, 1, w) != 0) {
        if (stream == NULL)
            heap_remove(&ws->targets[queue], 0, w);
        goto fail;
    }
    if (stream != NULL) {
        chain_link(ws, w);
        ws->nstream++;
        ws->nstreams[queue]++;
    }
    ws->pending++;
    if (ws->deadlines.v[0] == w) /* the earliest deadline now */
        pthread_cond_signal(&ws->cv);
    *out = w;
    return CQ_WAIT_PENDING;
fail:
    wait_free(w);
    return CQ_ENOMEM;
}

int cq_waiters_add(cq_waiters *ws, int queue, int64_t target,
                   int64_t timeout_ms, cq_wait_cb cb, void *arg, cq_wait **out)
{
    int rc;

    *out = NULL;
    pthread_mutex_lock(&ws->mu);
    if (ws->position[queue] >= target)
        rc = CQ_WAIT_READY;
    else if (ws->stopping)
        rc = CQ_ECLOSED;
    else
        rc = register_locked(ws, queue, NULL, target, timeout_ms, cb, arg, out);
    pthread_mutex_unlock(&ws->mu);
    return rc;
}

int cq_waiters_add_stream(cq_waiters *ws, int queue, const char *stream_id,
                          int64_t version, int64_t seen, int64_t timeout_ms,
                          cq_wait_cb cb, void *arg, cq_wait **out)
{
    int rc;

    *out = NULL;
    pthread_mutex_lock(&ws->mu);
    if (ws->position[queue] > seen)
        rc = CQ_WAIT_READY;
    else if (ws->stopping)
        rc = CQ_ECLOSED;
    else
        rc = register_locked(ws, queue, stream_id, version, timeout_ms, cb, arg,
                             out);
    pthread_mutex_unlock(&ws->mu);
    return rc;
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
        wait_free(w);
}

int cq_waiters_pending(cq_waiters *ws)
{
    int n;

    pthread_mutex_lock(&ws->mu);
    n = ws->pending;
    pthread_mutex_unlock(&ws->mu);
    return n;
}

int64_t cq_waiters_checked(cq_waiters *ws)
{
    int64_t n;

    pthread_mutex_lock(&ws->mu);
    n = ws->checked;
    pthread_mutex_unlock(&ws->mu);
    return n;
}
