/*
 * projector.c -- the projector thread: applies new events to the
 * asynchronous projections' tables in read.db, in micro-batches.
 *
 * Protocol of one asynchronous micro-batch (projector thread), for every
 * asynchronous projection behind the head:
 *   1. read up to `batch` events (10 x batch when far behind) after the
 *      lowest checkpoint from the event store, in one read snapshot, and
 *      decode each once;
 *   2. for each projection, in declaration order: BEGIN on read.db, run
 *      its handlers on the events it has not applied yet, write its
 *      checkpoint (and failure), COMMIT, publish its position and wake
 *      the waiters it satisfies: those of a position it reached, and those
 *      of a stream version it applied (only the batch's streams are
 *      looked up, see src/query/wait.h);
 *   3. if a handler failed in 2, that projection's transaction is undone
 *      and run again with a SAVEPOINT per event, so that the failing event
 *      alone is rolled back and ends the projection's part of the batch.
 * A crash anywhere before a COMMIT loses that projection's part of the
 * batch and its checkpoint together, and it is applied again after
 * restart. Handlers are written to be idempotent as well
 * (docs/declared-sql.md), so a batch applied twice changes nothing.
 * read.db's WAL is kept bounded by src/store/wal.c: a thread of its own
 * copies it back into read.db (that fsync would otherwise stall every
 * waiting query), and the projector, right after a commit, empties it
 * when it has grown too far (see wal.h). After each round the
 * projector also advances every blue/green rebuild by one batch
 * (rebuild.c), and before it carries out the control operations queued
 * (control.c).
 *
 * Threads and locks: the projector thread owns read.db's write connection
 * (e->rdb, e->rx and the r_* statements). It reads and publishes the
 * projections' positions and failures under e->mu, never holding mu
 * while it applies events or wakes waiters; it sleeps on e->cv, which
 * the writer's commits, control operations and stop signal.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/base.h"
#include "projection/engine_int.h"

/* Apply the decoded event pe (whose parse returned prc) to c->p through
 * c->x, in a savepoint of its own if c->sp is set. 0 to go on, 1 when the
 * projection failed (recorded in c). */
int cq_eng_apply_parsed(apply_ctx *c, const cq_stored_event *se,
                        const parsed *pe, int prc)
{
    int rc = prc;

    if (rc != CQ_OK) {
        snprintf(c->error, sizeof c->error, "%s",
                 pe->why[0] ? pe->why : "stored event cannot be decoded");
        goto fail;
    }
    if (c->sp != NULL && cq_eng_step_done(c->sp) != CQ_OK) {
        snprintf(c->error, sizeof c->error, "savepoint: %s",
                 cq_rdb_errmsg(cq_exec_db(c->x)));
        rc = CQ_EIO;
        goto fail;
    }
    if (c->p->code.apply != NULL) {
        cq_projection_event ev = {se->position, se->stream_id, se->version,
                                  se->type,     pe->when,      pe->day,
                                  pe->dec.data, pe->dec.metadata};
        cq_sql sql = {c->x, c->error, sizeof c->error};
        c->error[0] = '\0';
        rc = c->p->code.apply(c->p->code.arg, &sql, &ev);
        if (rc != CQ_OK && c->error[0] == '\0')
            snprintf(c->error, sizeof c->error, "apply() returned %s",
                     cq_strerror(rc));
    } else {
        rc = cq_exec_event(c->x, c->d, &pe->ev, c->error, sizeof c->error);
    }
    if (c->sp != NULL) {
        if (rc != CQ_OK)
            cq_eng_step_done(c->rollback);
        cq_eng_step_done(c->release);
    }
    if (rc != CQ_OK)
        goto fail;
    c->last = se->position;
    return 0;
fail:
    c->failed = 1;
    c->error_position = se->position;
    snprintf(c->error_event, sizeof c->error_event, "%s", se->type);
    return 1;
}

/* Apply one stored event to ctx->p (a cq_event_cb). */
int cq_eng_apply_event(void *arg, const cq_stored_event *se)
{
    apply_ctx *c = arg;
    parsed pe;
    int prc =
        cq_eng_parse_event(c->e->domain, se, NULL, c->p->needs_metadata, &pe);
    int stop = cq_eng_apply_parsed(c, se, &pe, prc);

    cq_eng_parsed_clear(&pe);
    return stop;
}

/* Record p's failure in memory (the row is written by the caller). */
static void mark_failed(cq_engine *e, proj *p, const apply_ctx *c)
{
    pthread_mutex_lock(&e->mu);
    p->failed = 1;
    p->error_position = c->error_position;
    snprintf(p->error, sizeof p->error, "%s", c->error);
    snprintf(p->error_event, sizeof p->error_event, "%s", c->error_event);
    pthread_mutex_unlock(&e->mu);
    fprintf(stderr, "cqrsd: projection %s failed at position %lld (%s): %s\n",
            p->d->name, (long long)c->error_position, c->error_event, c->error);
}

static int batch_add(void *arg, const cq_stored_event *se)
{
    batch *b = arg;
    cq_stored_event *d = &b->se[b->n];
    parsed *pe = &b->pe[b->n];

    *d = *se;
    d->stream_id = strdup(se->stream_id);
    d->type = strdup(se->type);
    d->data = d->metadata = NULL; /* decoded below; the texts are not kept */
    if (d->stream_id == NULL || d->type == NULL) {
        free((char *)d->stream_id);
        free((char *)d->type);
        return 1; /* out of memory: stop; the batch is shorter */
    }
    b->prc[b->n] = cq_eng_parse_event(b->domain, se, NULL, b->need_meta, pe);
    pe->ev.stream_id = d->stream_id;
    pe->ev.type = d->type;
    b->n++;
    return b->n == b->cap;
}

int cq_eng_batch_read(cq_engine *e, batch *b, int64_t from, char *err,
                      size_t errcap)
{
    int64_t store_head;

    b->domain = e->domain;
    b->se = calloc((size_t)b->cap, sizeof *b->se);
    b->pe = calloc((size_t)b->cap, sizeof *b->pe);
    b->prc = calloc((size_t)b->cap, sizeof *b->prc);
    if (b->se == NULL || b->pe == NULL || b->prc == NULL) {
        snprintf(err, errcap, "out of memory");
        return CQ_ENOMEM;
    }
    return cq_store_read_all(e->store, from, b->cap, batch_add, b, &store_head,
                             err, errcap);
}

void cq_eng_batch_free(batch *b)
{
    for (int k = 0; k < b->n; k++) {
        free((char *)b->se[k].stream_id);
        free((char *)b->se[k].type);
        cq_eng_parsed_clear(&b->pe[k]);
    }
    free(b->se);
    free(b->pe);
    free(b->prc);
}

void cq_eng_apply_events(apply_ctx *c, const batch *b, int64_t from)
{
    for (int k = 0; k < b->n && !c->failed; k++)
        if (b->se[k].position >= from)
            cq_eng_apply_parsed(c, &b->se[k], &b->pe[k], b->prc[k]);
}

/* Tell p's waiters it has applied b's events from `from` to `last`: the
 * position waiters it reached and the stream waiters of those events'
 * streams fire. */
static void publish_applied(cq_engine *e, proj *p, const batch *b, int64_t from,
                            int64_t last)
{
    cq_stream_applied *applied =
        b->n ? malloc((size_t)b->n * sizeof *applied) : NULL;
    size_t n = 0;

    if (applied == NULL && b->n > 0) {
        /* no memory for the list: every stream waiter looks again */
        cq_eng_advance(e, p->index, last);
        return;
    }
    for (int k = 0; k < b->n; k++)
        if (b->se[k].position >= from && b->se[k].position <= last)
            applied[n++] =
                (cq_stream_applied){b->se[k].stream_id, b->se[k].version};
    cq_eng_advance_streams(e, p->index, last, applied, n);
    free(applied);
}

/* Apply the events of b that p has not applied yet to its live tables
 * (with the handlers of d, the definition they were built with), and its
 * checkpoint, in one read.db transaction; then publish. The fast path runs
 * handlers without a savepoint per event; if one fails, its partial writes
 * cannot be told apart from the good ones, so the transaction is undone
 * and run again with one savepoint per event, keeping exactly the events
 * before the failing one. CQ_OK or CQ_EIO (nothing changed). */
static int apply_batch(cq_engine *e, proj *p, const cq_declared *d,
                       int64_t from, const batch *b)
{
    apply_ctx c;
    char err[256] = "";
    int careful = 0;

again:
    memset(&c, 0, sizeof c);
    c.e = e;
    c.p = p;
    c.d = d;
    c.x = e->rx;
    c.last = from - 1;
    if (careful) {
        c.sp = e->r_sp;
        c.release = e->r_release;
        c.rollback = e->r_rollback;
    }
    if (cq_exec_sql(e->rx, "BEGIN", err, sizeof err) != CQ_OK)
        goto io;
    cq_eng_apply_events(&c, b, from);
    if (c.failed && !careful) {
        cq_exec_sql(e->rx, "ROLLBACK", err, sizeof err);
        careful = 1;
        goto again;
    }
    if (cq_eng_save_checkpoint(e->r_save, p, c.last, c.failed, c.error,
                               c.error_position, c.error_event) != CQ_OK) {
        snprintf(err, sizeof err, "%s", cq_rdb_errmsg(e->rdb));
        goto rollback;
    }
    if (cq_exec_sql(e->rx, "COMMIT", err, sizeof err) != CQ_OK)
        goto rollback;
    pthread_mutex_lock(&e->mu);
    p->position = c.last;
    pthread_mutex_unlock(&e->mu);
    if (c.failed)
        mark_failed(e, p, &c);
    publish_applied(e, p, b, from, c.last);
    return CQ_OK;
rollback:
    /* the store may have rolled back already (a full disk, an I/O error) */
    if (cq_rdb_in_transaction(e->rdb)) {
        char why[128];
        if (cq_exec_sql(e->rx, "ROLLBACK", why, sizeof why) != CQ_OK)
            snprintf(err + strlen(err), sizeof err - strlen(err),
                     "; rollback: %s", why);
    }
io:
    fprintf(stderr,
            "cqrsd: projection %s: batch from %lld not applied, will retry: "
            "%s\n",
            p->d->name, (long long)from, err);
    return CQ_EIO;
}

/* One micro-batch for every asynchronous projection behind the head
 * (projector thread): the events after the lowest checkpoint are read from
 * the store once and decoded once, then each projection applies its part
 * in a transaction of its own, in declaration order, and is published as
 * soon as it commits (so a fast projection's waiters do not wait for a
 * slow one). Returns CQ_STEP_WORKED, CQ_STEP_IDLE (none was due) or
 * CQ_STEP_FAILED when read.db or the store failed (retried later). */
static int apply_round(cq_engine *e)
{
    proj **due = calloc((size_t)e->nprojs, sizeof *due);
    const cq_declared **decl = calloc((size_t)e->nprojs, sizeof *decl);
    int64_t *from = calloc((size_t)e->nprojs, sizeof *from);
    int64_t lowest = INT64_MAX, head;
    batch b;
    char err[256] = "";
    int n = 0, status = CQ_STEP_WORKED;

    memset(&b, 0, sizeof b);
    if (due == NULL || from == NULL || decl == NULL) {
        status = CQ_STEP_FAILED;
        goto done;
    }
    pthread_mutex_lock(&e->mu);
    head = e->head;
    for (int i = 0; i < e->nprojs; i++) {
        proj *p = e->projs[i];
        if (p->is_inline || p->failed || p->paused || p->frozen ||
            p->position >= head)
            continue;
        due[n] = p;
        decl[n] = p->serving;
        from[n] = p->position + 1;
        if (from[n] < lowest)
            lowest = from[n];
        b.need_meta |= p->needs_metadata;
        n++;
    }
    pthread_mutex_unlock(&e->mu);
    if (n == 0) {
        status = CQ_STEP_IDLE;
        goto done;
    }
    /* Micro-batches of `batch` events keep the gap between the writer and
     * the read model small; a projection far behind (catching up after a
     * restart or a rebuild) takes ten times as many per transaction, which
     * saves most of the per-transaction cost and changes nothing else. */
    b.cap = head - lowest >= 10 * e->batch ? 10 * e->batch : e->batch;
    if (cq_eng_batch_read(e, &b, lowest, err, sizeof err) != CQ_OK) {
        fprintf(stderr, "cqrsd: projections: reading events from %lld: %s\n",
                (long long)lowest, err);
        status = CQ_STEP_FAILED;
        goto done;
    }
    for (int i = 0; i < n; i++)
        if (apply_batch(e, due[i], decl[i], from[i], &b) != CQ_OK)
            status = CQ_STEP_FAILED;
done:
    cq_eng_batch_free(&b);
    free(due);
    free(decl);
    free(from);
    return status;
}

void *cq_eng_projector_main(void *arg)
{
    cq_engine *e = arg;

    pthread_setname_np(pthread_self(), "cq-projector");
    pthread_mutex_lock(&e->mu);
    while (!e->stopping) {
        int did;

        cq_eng_run_controls(e, 0);
        pthread_mutex_unlock(&e->mu);
        did = apply_round(e);
        /* then one step of each rebuild, so that live projections wait
         * for at most one rebuild batch */
        for (int i = 0; i < e->nprojs; i++) {
            int r = e->projs[i]->rb.active ? cq_rebuild_step(e, e->projs[i])
                                           : CQ_STEP_IDLE;
            if (r == CQ_STEP_FAILED)
                did = CQ_STEP_FAILED;
            else if (r == CQ_STEP_WORKED && did == CQ_STEP_IDLE)
                did = CQ_STEP_WORKED;
        }
        pthread_mutex_lock(&e->mu);
        if (e->stopping)
            break;
        if (did == CQ_STEP_FAILED) {
            /* the store or read.db is failing: retry, but not in a spin */
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_nsec += 200 * 1000000;
            if (ts.tv_nsec >= 1000000000) {
                ts.tv_sec++;
                ts.tv_nsec -= 1000000000;
            }
            pthread_cond_timedwait(&e->cv, &e->mu, &ts);
        } else if (did == CQ_STEP_IDLE) {
            /* nothing due: sleep until the writer commits more (checked
             * under the lock, so no wake-up is lost) */
            int due = 0;
            for (int i = 0; i < e->nprojs && !due; i++) {
                proj *p = e->projs[i];
                due = (!p->is_inline && !p->failed && !p->paused &&
                       !p->frozen && p->position < e->head) ||
                      (p->rb.active && !p->paused);
            }
            if (!due && e->controls == NULL)
                pthread_cond_wait(&e->cv, &e->mu);
        }
    }
    /* e->stopping is set: nothing is queued after this */
    cq_eng_run_controls(e, 1);
    pthread_mutex_unlock(&e->mu);
    return NULL;
}
