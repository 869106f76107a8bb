/*
 * tail.c -- the events committed last, kept in memory (see tail.h).
 *
 * The run lo..hi sits in a ring of CQ_TAIL_EVENTS slots, the event at
 * position p in slot p % CQ_TAIL_EVENTS. `anchored` says whether hi is
 * the head the tail last saw committed: only then may a batch extend the
 * run (its first position must be hi + 1). The run is empty when lo > hi.
 *
 * Each entry is one allocation: the struct, then stream_id, type, data
 * and metadata, NUL-terminated. The ring and the readers hold references;
 * the last one frees it.
 */
#include "projection/tail.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

typedef struct entry {
    atomic_int refs;
    size_t size; /* of the texts, counted against CQ_TAIL_BYTES */
    cq_stored_event ev;
} entry;

struct cq_tail {
    pthread_mutex_t mu;
    entry **ring;    /* CQ_TAIL_EVENTS slots */
    int64_t lo, hi;  /* the run; empty when lo > hi */
    int anchored;    /* hi is the head last published */
    size_t bytes;    /* texts held in the run */
    atomic_llong from_tail, from_store;

    /* the writer's turn only */
    entry **staged;
    size_t nstaged, staged_cap;
    int stage_lost; /* a stage ran out of memory: drop the run */
};

#define SLOT(p) ((size_t)(p) & (CQ_TAIL_EVENTS - 1))

static void unref(entry *x)
{
    if (x != NULL && atomic_fetch_sub(&x->refs, 1) == 1)
        free(x);
}

static entry *copy_event(const cq_stored_event *se)
{
    size_t ls = strlen(se->stream_id) + 1, lt = strlen(se->type) + 1;
    size_t ld = se->data ? strlen(se->data) + 1 : 0;
    size_t lm = se->metadata ? strlen(se->metadata) + 1 : 0;
    entry *x = malloc(sizeof *x + ls + lt + ld + lm);
    char *s;

    if (x == NULL)
        return NULL;
    atomic_init(&x->refs, 1);
    x->size = ls + lt + ld + lm;
    x->ev = *se;
    s = (char *)(x + 1);
    x->ev.stream_id = memcpy(s, se->stream_id, ls);
    x->ev.type = memcpy(s += ls, se->type, lt);
    s += lt;
    x->ev.data = ld ? memcpy(s, se->data, ld) : NULL;
    x->ev.metadata = lm ? memcpy(s + ld, se->metadata, lm) : NULL;
    return x;
}

cq_tail *cq_tail_new(void)
{
    cq_tail *t = calloc(1, sizeof *t);

    if (t == NULL)
        return NULL;
    t->ring = calloc(CQ_TAIL_EVENTS, sizeof *t->ring);
    if (t->ring == NULL || pthread_mutex_init(&t->mu, NULL) != 0) {
        free(t->ring);
        free(t);
        return NULL;
    }
    t->lo = 1;
    t->hi = 0;
    atomic_init(&t->from_tail, 0);
    atomic_init(&t->from_store, 0);
    return t;
}

/* Drop the run (t->mu held). */
static void drop_run(cq_tail *t)
{
    for (int64_t p = t->lo; p <= t->hi; p++) {
        unref(t->ring[SLOT(p)]);
        t->ring[SLOT(p)] = NULL;
    }
    t->lo = t->hi + 1;
    t->bytes = 0;
    t->anchored = 0;
}

void cq_tail_free(cq_tail *t)
{
    if (t == NULL)
        return;
    drop_run(t);
    for (size_t i = 0; i < t->nstaged; i++)
        unref(t->staged[i]);
    free(t->staged);
    free(t->ring);
    pthread_mutex_destroy(&t->mu);
    free(t);
}

/* Drop the staged events at position `from` or after. */
static void unstage_from(cq_tail *t, int64_t from)
{
    while (t->nstaged > 0 && t->staged[t->nstaged - 1]->ev.position >= from)
        unref(t->staged[--t->nstaged]);
}

void cq_tail_stage(cq_tail *t, const cq_stored_event *events, size_t n)
{
    if (t == NULL || n == 0)
        return;
    unstage_from(t, events[0].position);
    if (t->nstaged + n > t->staged_cap) {
        size_t cap = t->staged_cap ? t->staged_cap : 64;
        while (cap < t->nstaged + n)
            cap *= 2;
        entry **s = realloc(t->staged, cap * sizeof *s);
        if (s == NULL) {
            t->stage_lost = 1;
            return;
        }
        t->staged = s;
        t->staged_cap = cap;
    }
    for (size_t i = 0; i < n; i++) {
        entry *x = copy_event(&events[i]);
        if (x == NULL) {
            t->stage_lost = 1;
            return;
        }
        t->staged[t->nstaged++] = x;
    }
}

/* Whether the staged events (all at or below head) are what the batch
 * committed: consecutive, ending at head, each of a stream an accepted
 * request wrote up to at least its version. Requests run in batch order
 * and stage in that order, so one pass over accepted suffices. */
static int staged_committed(const cq_tail *t, int64_t head,
                            const cq_stream_applied *accepted, size_t n)
{
    size_t j = 0;

    if (t->nstaged == 0 || t->staged[t->nstaged - 1]->ev.position != head)
        return 0;
    for (size_t i = 0; i < t->nstaged; i++) {
        const cq_stored_event *ev = &t->staged[i]->ev;
        if (i > 0 && ev->position != t->staged[i - 1]->ev.position + 1)
            return 0;
        while (j < n && (ev->version > accepted[j].version ||
                         strcmp(ev->stream_id, accepted[j].stream_id) != 0))
            j++;
        if (j == n)
            return 0;
    }
    return 1;
}

/* Add x at the end of the run (t->mu held); takes the staged reference. */
static void push(cq_tail *t, entry *x)
{
    int64_t p = x->ev.position;

    if (x->size > CQ_TAIL_BYTES / 4) {
        drop_run(t); /* not kept: the run starts again after it */
        t->lo = p + 1;
        t->hi = p;
        unref(x);
        return;
    }
    while (t->lo <= t->hi && (t->hi - t->lo + 1 >= CQ_TAIL_EVENTS ||
                              t->bytes + x->size > CQ_TAIL_BYTES)) {
        entry *old = t->ring[SLOT(t->lo)];
        t->ring[SLOT(t->lo)] = NULL;
        t->bytes -= old->size;
        unref(old);
        t->lo++;
    }
    if (t->lo > t->hi)
        t->lo = p;
    t->ring[SLOT(p)] = x;
    t->hi = p;
    t->bytes += x->size;
}

void cq_tail_publish(cq_tail *t, int64_t head,
                     const cq_stream_applied *accepted, size_t n, int all)
{
    int ok;

    if (t == NULL)
        return;
    unstage_from(t, head + 1); /* appended, then rolled back */
    ok = !all && !t->stage_lost &&
         (t->nstaged == 0 || staged_committed(t, head, accepted, n));
    pthread_mutex_lock(&t->mu);
    if (!ok || (t->anchored && t->nstaged == 0 && head != t->hi) ||
        (t->anchored && t->nstaged > 0 &&
         t->staged[0]->ev.position != t->hi + 1))
        drop_run(t); /* something committed that the tail did not see */
    if (ok && t->nstaged > 0) {
        if (!t->anchored) { /* the run starts with this batch */
            drop_run(t);
            t->lo = t->staged[0]->ev.position;
            t->hi = t->lo - 1;
        }
        for (size_t i = 0; i < t->nstaged; i++)
            push(t, t->staged[i]);
        t->nstaged = 0;
    }
    t->anchored = ok && t->hi == head;
    pthread_mutex_unlock(&t->mu);
    unstage_from(t, 0); /* what was not published */
    t->stage_lost = 0;
}

int cq_tail_read(cq_tail *t, int64_t from, int max, cq_event_cb cb, void *arg)
{
    entry *take[256];
    int n = 0, passed = 0;

    if (t == NULL || max <= 0)
        return 0;
    while (max > 0) {
        int k = 0, want = max < 256 ? max : 256;
        pthread_mutex_lock(&t->mu);
        if (from >= t->lo && from <= t->hi)
            for (int64_t p = from; p <= t->hi && k < want; p++, k++) {
                take[k] = t->ring[SLOT(p)];
                atomic_fetch_add(&take[k]->refs, 1);
            }
        pthread_mutex_unlock(&t->mu);
        if (k == 0)
            break;
        for (n = 0; n < k; n++) {
            int stop = cb(arg, &take[n]->ev);
            passed++;
            if (stop)
                break;
        }
        for (int i = 0; i < k; i++)
            unref(take[i]);
        if (n < k)
            break;
        from += k;
        max -= k;
    }
    atomic_fetch_add(&t->from_tail, passed);
    return passed;
}

int cq_tail_recorded_at(cq_tail *t, int64_t position, int64_t *at)
{
    int held = 0;

    if (t == NULL)
        return 0;
    pthread_mutex_lock(&t->mu);
    if (position >= t->lo && position <= t->hi) {
        *at = t->ring[SLOT(position)]->ev.recorded_at;
        held = 1;
    }
    pthread_mutex_unlock(&t->mu);
    return held;
}

int cq_tail_version_at(cq_tail *t, const char *stream_id, int64_t position,
                       int64_t *version)
{
    int known = 0;

    if (t == NULL)
        return 0;
    pthread_mutex_lock(&t->mu);
    if (position >= t->lo && position <= t->hi) {
        int64_t stop = position - CQ_TAIL_SCAN;
        int64_t p = position;
        for (; p >= t->lo && p > stop; p--) {
            const cq_stored_event *ev = &t->ring[SLOT(p)]->ev;
            if (strcmp(ev->stream_id, stream_id) == 0) {
                *version = ev->version;
                known = 1;
                break;
            }
        }
        if (!known && p < t->lo && t->lo == 1) {
            *version = 0; /* every event there is held: none of it */
            known = 1;
        }
    }
    pthread_mutex_unlock(&t->mu);
    return known;
}

void cq_tail_count_store(cq_tail *t, int n)
{
    if (t != NULL && n > 0)
        atomic_fetch_add(&t->from_store, n);
}

void cq_tail_stats(cq_tail *t, int64_t *from_tail, int64_t *from_store)
{
    *from_tail = t ? atomic_load(&t->from_tail) : 0;
    *from_store = t ? atomic_load(&t->from_store) : 0;
}
