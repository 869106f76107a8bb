/*
 * inline.c -- inline projections: applied by the writer inside each
 * command's transaction, so their rows commit with the events.
 *
 * Inline projections run on the writer thread inside the command's
 * savepoint (hook apply_inline), under a nested SAVEPOINT inl; a handler
 * that fails refuses the command (CQ_EREFUSED: the writer undoes its
 * savepoint), so an inline read model never falls behind the events; their
 * checkpoint is written once per batch just before the commit (hook
 * before_commit) and their position published when the writer reports the
 * commit (hook committed). At start each is brought up to the store's
 * head (cq_eng_catch_up_inline): by cq_engine_start before the writer
 * runs, or, for a server (defer_inline), by cq_engine_catch_up on the
 * writer thread before its first batch, while the HTTP server already
 * answers: queries see the position it has reached (their meta says how
 * far behind), /readyz says not ready, and commands wait in the writer's
 * queue until the inline projections are current. A projection still
 * catching_up (a stop or a failure ended the catch-up early) makes
 * apply_inline fail the command: nothing is written that it would miss.
 *
 * Threads and locks: the writer thread (and cq_engine_start before it
 * runs) owns e->ix and the i_* statements, and each inline projection's
 * `saved`; it writes `position`, `skipped` and `catching_up` under e->mu
 * (and reads them without it), and wakes the waiters without it.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/base.h"
#include "projection/engine_int.h"

/* ---- writer hooks ----------------------------------------------------------
 */

/* Whether the error the store last reported on db leaves the transaction
 * unusable or says nothing about the event (a full disk, an I/O error, no
 * memory, a lock), or ended the transaction: then the batch must be
 * rolled back rather than the event refused. */
static int store_trouble(cq_rdb *db)
{
    switch (cq_rdb_errcode(db)) {
    case CQ_EIO:
    case CQ_ENOMEM:
    case CQ_EBUSY: return 1;
    default: return !cq_rdb_in_transaction(db);
    }
}

/* An inline read model must never fall behind the events: an event one of
 * them cannot apply is refused with its command (CQ_EREFUSED, why in err),
 * and the writer undoes the command's savepoint. */
static int apply_inline(cq_engine *e, const cq_stored_event *events,
                        const json_t *const *data, size_t n, char *err,
                        size_t errcap)
{
    cq_rdb *db = cq_exec_db(e->ix);
    int need_meta = 0, live = 0, rc = CQ_OK;
    parsed *pe;

    for (int i = 0; i < e->nprojs; i++) {
        proj *p = e->projs[i];
        if (!p->is_inline || p->failed)
            continue;
        if (p->catching_up) {
            /* its events before these are not applied yet: these cannot
             * be (writer thread: it alone writes catching_up) */
            snprintf(err, errcap,
                     "inline projection %s is not caught up with the events "
                     "yet (at position %lld)%s%s",
                     p->d->name, (long long)p->position,
                     p->catch_up_error[0] ? ": " : "", p->catch_up_error);
            return CQ_EBUSY;
        }
        live = 1;
        need_meta |= p->needs_metadata;
    }
    if (!live)
        return CQ_OK;
    pe = calloc(n, sizeof *pe);
    if (pe == NULL)
        return CQ_ENOMEM;
    for (size_t k = 0; k < n; k++)
        cq_eng_parse_event(e->domain, &events[k], data[k], need_meta, &pe[k]);

    for (int i = 0; i < e->nprojs && rc == CQ_OK; i++) {
        proj *p = e->projs[i];
        apply_ctx c;

        /* p->failed is only ever set on this thread once the writer runs */
        if (!p->is_inline || p->failed)
            continue;
        memset(&c, 0, sizeof c);
        c.e = e;
        c.p = p;
        c.d = p->d;
        c.x = e->ix;
        c.last = events[0].position - 1;
        if (cq_eng_step_done(e->i_sp) != CQ_OK) {
            rc = CQ_EIO;
            break;
        }
        for (size_t k = 0; k < n && !c.failed; k++) {
            int prc = pe[k].dec.data != NULL &&
                              (!p->needs_metadata || pe[k].dec.metadata != NULL)
                          ? CQ_OK
                          : CQ_ECORRUPT;
            cq_eng_apply_parsed(&c, &events[k], &pe[k], prc);
        }
        if (c.failed) {
            rc = store_trouble(db) ? CQ_EIO : CQ_EREFUSED;
            snprintf(err, errcap,
                     "inline projection %s cannot apply event %s at "
                     "position %lld: %s",
                     p->d->name, c.error_event, (long long)c.error_position,
                     c.error);
            cq_eng_step_done(e->i_rollback); /* the writer undoes the rest */
        }
        if (cq_eng_step_done(e->i_release) != CQ_OK)
            rc = CQ_EIO;
        if (!cq_rdb_in_transaction(db))
            rc = CQ_EIO; /* the store rolled the whole transaction back */
    }
    for (size_t k = 0; k < n; k++)
        cq_eng_parsed_clear(&pe[k]);
    free(pe);
    return rc;
}

/* The inline projections take the events; once they have, the events go
 * to the tail's stage (tail.h), to be kept if the batch commits them. */
int cq_engine_apply_inline(cq_engine *e, const cq_stored_event *events,
                           const json_t *const *data, size_t n, char *err,
                           size_t errcap)
{
    int rc = apply_inline(e, events, data, n, err, errcap);

    if (rc == CQ_OK)
        cq_tail_stage(e->tail, events, n);
    return rc;
}

/* The inline projections have applied every event of the transaction, up
 * to head: write their checkpoints once per batch, with the events. */
int cq_engine_before_commit(cq_engine *e, int64_t head)
{
    for (int i = 0; i < e->nprojs; i++) {
        proj *p = e->projs[i];
        if (!p->is_inline || p->failed || p->catching_up || p->saved >= head)
            continue;
        if (cq_eng_save_checkpoint(e->i_save, p, head, 0, NULL, 0, NULL) !=
            CQ_OK)
            return CQ_EIO;
        /* p->saved moves in cq_engine_committed: this batch may still fail */
    }
    return CQ_OK;
}

void cq_engine_committed(cq_engine *e, int64_t head,
                         const cq_stream_applied *streams, size_t n, int all)
{
    /* the tail first: whoever sees the new head finds its events there */
    cq_tail_publish(e->tail, head, streams, n, all);
    pthread_mutex_lock(&e->mu);
    if (head > e->head)
        e->head = head;
    for (int i = 0; i < e->nprojs; i++) {
        proj *p = e->projs[i];
        if (p->is_inline && !p->failed && !p->catching_up) {
            p->position = head;
            p->saved = head; /* before_commit wrote it in this batch */
        }
    }
    pthread_cond_signal(&e->cv);
    pthread_mutex_unlock(&e->mu);
    /* the streams the batch wrote: only their stream waiters look again */
    for (int i = 0; i <= e->nprojs; i++) {
        proj *p = i < e->nprojs ? e->projs[i] : NULL;
        if (p != NULL && (!p->is_inline || p->failed || p->catching_up))
            continue;
        if (all)
            cq_eng_advance(e, i, head);
        else
            cq_eng_advance_streams(e, i, head, streams, n);
    }
}

/* Record in events.db, in the open transaction, that inline projection p
 * skipped the event c failed on. */
static int record_inline_skip(cq_engine *e, proj *p, const apply_ctx *c,
                              char *err, size_t errcap)
{
    cq_rdb *db = cq_exec_db(e->ix);
    cq_rstmt *st = NULL;
    int rc =
        cq_eng_prepare(db,
                       "INSERT INTO cq_skipped_events (projection, position,"
                       " event_type, error, skipped_at) VALUES (?1, ?2, ?3, ?4,"
                       " ?5) ON CONFLICT DO NOTHING",
                       &st, err, errcap);

    if (rc != CQ_OK)
        return rc;
    cq_rstmt_bind_text(st, 1, p->d->name, -1);
    cq_rstmt_bind_int(st, 2, c->error_position);
    cq_rstmt_bind_text(st, 3, c->error_event, -1);
    cq_rstmt_bind_text(st, 4, c->error, -1);
    cq_rstmt_bind_int(st, 5, cq_now_ms());
    rc = cq_eng_step_done(st);
    if (rc != CQ_OK)
        snprintf(err, errcap, "recording a skipped event: %s",
                 cq_rdb_errmsg(db));
    cq_rstmt_finalize(st);
    return rc;
}

/* Apply every event after p's checkpoint to inline projection p, in
 * transactions of 1000 events, before the writer runs a batch (before it
 * starts, or on its thread: see cq_engine_catch_up), publishing p's
 * position after each; returns CQ_ECLOSED between two of them once
 * cq_engine_stop_catch_up was called. Since the writer
 * refuses what an inline projection cannot apply, only events stored
 * before that rule (or a changed definition replaying old events) can
 * fail here; an inline read model must not stay behind its events, so
 * such an event is skipped: recorded in events.db's cq_skipped_events
 * (with the checkpoint that passes it, in one transaction), logged and
 * counted. */
int cq_eng_catch_up_inline(cq_engine *e, proj *p, int64_t head, char *err,
                           size_t errcap)
{
    while (p->position < head) {
        apply_ctx c;
        int64_t h;
        int rc;

        if (atomic_load(&e->stop_catch_up))
            return CQ_ECLOSED;
        memset(&c, 0, sizeof c);
        c.e = e;
        c.p = p;
        c.d = p->d;
        c.x = e->ix;
        c.sp = e->i_sp;
        c.release = e->i_release;
        c.rollback = e->i_rollback;
        c.last = p->position;
        /* the store's own write transaction: it takes the write lock
         * (with several nodes, the lock every append takes), so no other
         * node's writer moves the inline tables meanwhile */
        rc = cq_store_begin(e->store);
        if (rc != CQ_OK)
            snprintf(err, errcap, "%s", cq_store_errmsg(e->store));
        if (rc == CQ_OK)
            rc = cq_store_read_all(e->store, p->position + 1, 1000,
                                   cq_eng_apply_event, &c, &h, err, errcap);
        if (rc == CQ_OK && c.failed) {
            rc = record_inline_skip(e, p, &c, err, errcap);
            c.last = c.error_position;
        }
        if (rc == CQ_OK)
            rc = cq_eng_save_checkpoint(e->i_save, p, c.last, 0, NULL, 0, NULL);
        if (rc == CQ_OK && (rc = cq_store_commit(e->store)) != CQ_OK)
            snprintf(err, errcap, "%s", cq_store_errmsg(e->store));
        if (rc != CQ_OK) {
            cq_store_rollback(e->store);
            return rc;
        }
        pthread_mutex_lock(&e->mu);
        p->position = c.last;
        p->skipped += c.failed != 0;
        pthread_mutex_unlock(&e->mu);
        cq_eng_advance(e, p->index, c.last); /* its waiters look again */
        if (c.failed) {
            fprintf(stderr,
                    "cqrsd: inline projection %s cannot apply event %s at "
                    "position %lld (%s): skipped, recorded in events.db's "
                    "cq_skipped_events\n",
                    p->d->name, c.error_event, (long long)c.error_position,
                    c.error);
        }
    }
    return CQ_OK;
}

/* The projector waited for the inline catch-up (engine.c): start it,
 * whatever became of the catch-up, unless the server is stopping. */
static void start_projector(cq_engine *e, int rc)
{
    char err[128];

    if (!e->projector_deferred || rc == CQ_ECLOSED)
        return;
    e->projector_deferred = 0;
    if (cq_eng_start_projector(e, err, sizeof err) != CQ_OK)
        fprintf(stderr, "cqrsd: %s: asynchronous projections stay where "
                        "they are\n", err);
}

/* cq_engine_catch_up's work: every inline projection catching_up, in
 * turn. */
static int catch_up_all(cq_engine *e)
{
    int64_t head = 0;
    int rc = CQ_OK;

    for (int i = 0; i < e->nprojs; i++) {
        proj *p = e->projs[i];
        char err[256] = "";

        if (!p->catching_up) /* written on this thread only: no lock */
            continue;
        if (head == 0 && (rc = cq_store_head_position(e->store, &head)) !=
                             CQ_OK)
            snprintf(err, sizeof err, "reading the head: %s",
                     cq_strerror(rc));
        if (rc == CQ_OK) {
            fprintf(stderr,
                    "cqrsd: inline projection %s: applying events %lld to "
                    "%lld; commands wait until it is current\n",
                    p->d->name, (long long)p->position + 1, (long long)head);
            rc = cq_eng_catch_up_inline(e, p, head, err, sizeof err);
        }
        if (rc == CQ_ECLOSED)
            return rc; /* stopping: the next start goes on from here */
        pthread_mutex_lock(&e->mu);
        if (rc == CQ_OK) {
            p->catching_up = 0;
            p->saved = p->position;
        } else {
            snprintf(p->catch_up_error, sizeof p->catch_up_error,
                     "catching up failed: %s", err);
        }
        pthread_mutex_unlock(&e->mu);
        if (rc != CQ_OK) {
            fprintf(stderr,
                    "cqrsd: inline projection %s stays at position %lld: %s "
                    "(commands fail until a restart)\n",
                    p->d->name, (long long)p->position, err);
            return rc;
        }
        fprintf(stderr, "cqrsd: inline projection %s is current (position "
                        "%lld)\n",
                p->d->name, (long long)p->position);
    }
    return rc;
}

int cq_engine_catch_up(cq_engine *e)
{
    int rc = catch_up_all(e);

    start_projector(e, rc);
    return rc;
}

void cq_engine_stop_catch_up(cq_engine *e)
{
    if (e != NULL)
        atomic_store(&e->stop_catch_up, 1);
}
