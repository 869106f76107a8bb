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
 *
 * Several nodes on one read store (engine.h): the projector applies only
 * the projections whose lock it holds (p->owned) and tries for the others
 * once a second; when it gets one it reads its checkpoint (and any
 * rebuild in progress) again before applying anything. A batch's
 * checkpoint is written only if the row still holds the position this
 * node read (SQL_SAVE_CHECKPOINT_IF): should it not, another node has run
 * the projection meanwhile, and this one rolls back and lets go of it. The
 * batch's commit notifies cq_progress "NAME:POSITION" (in its
 * transaction); a position moved otherwise (skip, reset, a rebuild's
 * swap) is notified right after. When the read store's connection fails
 * its locks are gone with it: the projector lets go of every projection,
 * connects again and claims them anew.
 *
 * Threads and locks: the projector thread owns read.db's write connection
 * (e->rdb, e->rx and the r_* statements). It reads and publishes the
 * projections' positions, failures and ownership under e->mu, never
 * holding mu while it applies events or wakes waiters; it sleeps on
 * e->cv, which the writer's commits, the listener, control operations and
 * stop signal.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/base.h"
#include "projection/engine_int.h"
#include "store/wal.h"

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
        cq_projection_event ev = {se->position,
                                  se->stream_id,
                                  se->version,
                                  se->type,
                                  pe->when,
                                  pe->day,
                                  cq_eng_parsed_data(pe),
                                  pe->dec.metadata};
        if (ev.data == NULL) {
            snprintf(c->error, sizeof c->error, "out of memory");
            rc = CQ_ENOMEM;
            goto fail;
        }
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
    size_t ls = strlen(se->stream_id), lt = strlen(se->type);
    char *s = malloc(ls + lt + 2);

    if (s == NULL)
        return 1; /* out of memory: stop; the batch is shorter */
    memcpy(s, se->stream_id, ls + 1);
    memcpy(s + ls + 1, se->type, lt + 1);
    *d = *se;
    d->stream_id = s;
    d->type = s + ls + 1;
    d->data = d->metadata = NULL; /* decoded below; the texts are not kept */
    b->prc[b->n] = cq_eng_parse_event_lazy(b->domain, se, b->need_meta, pe);
    pe->ev.stream_id = d->stream_id;
    pe->ev.type = d->type;
    b->n++;
    return b->n == b->cap;
}

/* Read into b from the event store, or, with projection >= 0 and a
 * source (engine.h), from that projection's source. */
static int batch_read(cq_engine *e, batch *b, int projection, int64_t from,
                      char *err, size_t errcap)
{
    int64_t store_head;
    int rc;

    b->domain = e->domain;
    if (e->bmem.cap < b->cap) {
        /* the arrays grow to the largest batch and are kept (every entry
         * is filled by batch_add before it is read) */
        cq_stored_event *se = realloc(e->bmem.se, (size_t)b->cap * sizeof *se);
        if (se != NULL)
            e->bmem.se = se;
        parsed *pe = realloc(e->bmem.pe, (size_t)b->cap * sizeof *pe);
        if (pe != NULL)
            e->bmem.pe = pe;
        int *prc = realloc(e->bmem.prc, (size_t)b->cap * sizeof *prc);
        if (prc != NULL)
            e->bmem.prc = prc;
        if (se == NULL || pe == NULL || prc == NULL) {
            snprintf(err, errcap, "out of memory");
            return CQ_ENOMEM;
        }
        e->bmem.cap = b->cap;
    }
    b->se = e->bmem.se;
    b->pe = e->bmem.pe;
    b->prc = e->bmem.prc;
    if (projection >= 0 && e->source.read != NULL)
        return e->source.read(e->source.arg, projection,
                              e->projs[projection]->d->name, from, b->cap,
                              batch_add, b, err, errcap);
    /* what the writer has just committed is in memory (tail.h) */
    if (cq_tail_read(e->tail, from, b->cap, batch_add, b) > 0)
        return CQ_OK;
    rc = cq_store_read_all(e->store, from, b->cap, batch_add, b, &store_head,
                           err, errcap);
    cq_tail_count_store(e->tail, b->n);
    return rc;
}

int cq_eng_batch_read(cq_engine *e, batch *b, int64_t from, char *err,
                      size_t errcap)
{
    return batch_read(e, b, -1, from, err, errcap);
}

void cq_eng_batch_free(batch *b)
{
    for (int k = 0; k < b->n; k++) {
        free((char *)b->se[k].stream_id); /* and type, in the same block */
        cq_eng_parsed_clear(&b->pe[k]);
    }
    /* the arrays are the engine's (e->bmem), kept for the next batch */
    b->n = 0;
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

/* ---- several nodes: which projections this node runs ---------------- */

void cq_eng_lock_name(const proj *p, char *buf, size_t cap)
{
    snprintf(buf, cap, "%s%s", CQ_LOCK_PROJECTION, p->d->name);
}

static int owns(cq_engine *e, proj *p)
{
    int owned;

    pthread_mutex_lock(&e->mu);
    owned = p->owned;
    pthread_mutex_unlock(&e->mu);
    return owned;
}

/* This node no longer runs p: its rebuild in memory goes (the rows in
 * cq_rebuilds stay, for the node that runs p next); `unlock`: give its
 * lock back, if the connection still holds it. */
static void let_go(cq_engine *e, proj *p, int unlock, const char *why)
{
    char name[128];

    if (unlock && e->rdb != NULL) {
        cq_eng_lock_name(p, name, sizeof name);
        cq_rdb_unlock(e->rdb, name); /* best effort: gone with the session */
    }
    pthread_mutex_lock(&e->mu);
    p->owned = 0;
    p->rb.active = 0;
    pthread_mutex_unlock(&e->mu);
    p->rb.resume = 0;
    cq_rebuild_free(p);
    fprintf(stderr, "cqrsd: projection %s: this node stops running it (%s)\n",
            p->d->name, why);
}

/* This node has just taken p's lock: read its checkpoint (another node
 * ran it until now) and take up its rebuild, if one is under way, before
 * applying anything. CQ_OK, or the read store's failure (the caller gives
 * the lock back). */
static int take_over(cq_engine *e, proj *p)
{
    cq_rstmt *st = NULL;
    checkpoint_row row;
    char err[512] = "";
    int64_t old;
    int rc, resumable = 0;

    rc = cq_rdb_prepare(e->rdb, SQL_CHECKPOINT_ROW, 0, &st, err, sizeof err);
    if (rc == CQ_OK) {
        rc = cq_eng_checkpoint_row(st, p, &row);
        if (rc == CQ_ENOTFOUND) {
            snprintf(err, sizeof err, "no checkpoint row");
            rc = CQ_EIO;
        } else if (rc != CQ_OK) {
            snprintf(err, sizeof err, "%s", cq_rdb_errmsg(e->rdb));
        }
        cq_rstmt_finalize(st);
    }
    /* a rebuild the other node had under way goes on here; a definition
     * this node found changed at start is rebuilt now that it runs it */
    if (rc == CQ_OK && !p->rb.active)
        rc = cq_rebuild_load(e, p, &resumable, err, sizeof err);
    if (rc == CQ_OK && !p->rb.active && (resumable || p->serving != p->d))
        rc = cq_rebuild_begin(e, p,
                              resumable ? "resumed" : "its definition changed",
                              err, sizeof err);
    if (rc != CQ_OK) {
        fprintf(stderr, "cqrsd: projection %s: taking it over: %s\n",
                p->d->name, err);
        return rc;
    }
    pthread_mutex_lock(&e->mu);
    old = p->position;
    p->position = row.position;
    p->paused = row.paused;
    p->failed = row.failed;
    p->error_position = row.error_position;
    snprintf(p->error, sizeof p->error, "%s", row.error);
    snprintf(p->error_event, sizeof p->error_event, "%s", row.error_event);
    p->owned = 1;
    pthread_mutex_unlock(&e->mu);
    p->notified = row.position;
    if (row.position < old)
        cq_eng_rewind(e, p->index, row.position);
    else
        cq_eng_advance(e, p->index, row.position);
    fprintf(stderr,
            "cqrsd: projection %s: this node runs it now, from position "
            "%lld\n",
            p->d->name, (long long)row.position);
    return CQ_OK;
}

/* Try for the lock of every asynchronous projection this node does not
 * run, and take over those it gets. CQ_OK, or the read store's failure. */
static int claim_all(cq_engine *e)
{
    for (int i = 0; i < e->nprojs; i++) {
        proj *p = e->projs[i];
        char name[128];
        int got = 0, rc;

        if (p->is_inline || owns(e, p) || !cq_eng_may_run(e, p))
            continue;
        cq_eng_lock_name(p, name, sizeof name);
        rc = cq_rdb_try_lock(e->rdb, name, &got);
        if (rc != CQ_OK)
            return rc;
        if (!got)
            continue;
        rc = take_over(e, p);
        if (rc != CQ_OK) {
            cq_rdb_unlock(e->rdb, name);
            if (rc == CQ_EIO)
                return rc;
        }
    }
    return CQ_OK;
}

/* e->rdb lost its server (or fails): every lock went with it. Let go of
 * every projection, close the connection and its statements and connect
 * again; the projections are claimed anew after. CQ_OK, or the failure
 * (tried again a second later). */
static int reconnect(cq_engine *e)
{
    char err[512] = "";
    int rc;

    for (int i = 0; i < e->nprojs; i++)
        if (!e->projs[i]->is_inline && owns(e, e->projs[i]))
            let_go(e, e->projs[i], 0, "its connection to the read store failed");
    cq_rstmt_finalize(e->r_save);
    cq_rstmt_finalize(e->r_rb_save);
    cq_rstmt_finalize(e->r_sp);
    cq_rstmt_finalize(e->r_release);
    cq_rstmt_finalize(e->r_rollback);
    cq_rstmt_finalize(e->r_cas);
    e->r_save = e->r_rb_save = e->r_sp = e->r_release = e->r_rollback =
        e->r_cas = NULL;
    cq_exec_free(e->rx);
    e->rx = NULL;
    cq_rdb_close(e->rdb);
    e->rdb = NULL;
    rc = cq_eng_open_db(e->where, CQ_RDB_CREATE, &e->rdb, err, sizeof err);
    if (rc == CQ_OK && (e->rx = cq_exec_new(e->rdb)) == NULL) {
        snprintf(err, sizeof err, "out of memory");
        rc = CQ_ENOMEM;
    }
    if (rc == CQ_OK)
        rc = cq_rebuild_init(e, err, sizeof err);
    if (rc == CQ_OK)
        rc = cq_eng_projector_statements(e, err, sizeof err);
    if (rc != CQ_OK) {
        if (!e->reconnect_failing++)
            fprintf(stderr,
                    "cqrsd: projections: connecting to the read store "
                    "again: %s (tried again every second)\n",
                    err);
        return rc;
    }
    fprintf(stderr, "cqrsd: projections: connected to the read store again\n");
    e->reconnect_failing = 0;
    e->reopen = 0;
    e->next_claim_ms = 0; /* claim at once */
    return CQ_OK;
}

/* Did e->rdb lose its server? Its last statement failed with CQ_EIO and
 * no transaction is left open. */
static int connection_lost(cq_engine *e)
{
    return e->rdb == NULL || (cq_rdb_errcode(e->rdb) == CQ_EIO &&
                              !cq_rdb_in_transaction(e->rdb));
}

/* Send cq_progress for each projection this node runs whose position
 * moved without a batch's commit saying so (skip, reset, a swap). */
static void notify_moved(cq_engine *e)
{
    for (int i = 0; i < e->nprojs; i++) {
        proj *p = e->projs[i];
        char payload[128];
        int64_t pos;
        int owned;

        if (p->is_inline)
            continue;
        pthread_mutex_lock(&e->mu);
        owned = p->owned;
        pos = p->position;
        pthread_mutex_unlock(&e->mu);
        if (!owned || pos == p->notified)
            continue;
        snprintf(payload, sizeof payload, "%s:%lld", p->d->name,
                 (long long)pos);
        if (cq_rdb_notify(e->rdb, CQ_CHANNEL_PROGRESS, payload) == CQ_OK)
            p->notified = pos;
    }
}

/* Several nodes, at the top of each round: connect again if the read
 * store's connection failed (or, once the listener has connected again,
 * if it did without our noticing), then try for the projections this node
 * does not run, once a second. */
static void upkeep(cq_engine *e)
{
    int recheck;

    pthread_mutex_lock(&e->mu);
    recheck = e->recheck;
    e->recheck = 0;
    pthread_mutex_unlock(&e->mu);
    if (recheck && !e->reopen && e->rdb != NULL) {
        char ignore[256];
        if (cq_rdb_exec(e->rdb, "SELECT 1", ignore, sizeof ignore) != CQ_OK &&
            connection_lost(e))
            e->reopen = 1;
    }
    if (e->reopen || e->rdb == NULL) {
        /* at once; then once a second while the server cannot be had */
        if (cq_eng_mono_ms() < e->next_reconnect_ms)
            return;
        if (reconnect(e) != CQ_OK) {
            e->next_reconnect_ms = cq_eng_mono_ms() + 1000;
            return;
        }
    }
    if (cq_eng_mono_ms() < e->next_claim_ms)
        return;
    e->next_claim_ms = cq_eng_mono_ms() + 1000;
    if (claim_all(e) != CQ_OK && connection_lost(e))
        e->reopen = 1;
}

/* Write p's checkpoint (c's outcome) if its row still holds `expected`;
 * several nodes. CQ_OK, CQ_ECONFLICT (it holds another: another node has
 * run p meanwhile), or CQ_EIO. */
static int save_checkpoint_if(cq_engine *e, proj *p, int64_t expected,
                              const apply_ctx *c)
{
    cq_rstmt *st = e->r_cas;
    int rc;

    cq_rstmt_bind_text(st, 1, p->d->name, -1);
    cq_rstmt_bind_int(st, 2, c->last);
    cq_rstmt_bind_text(st, 3, c->failed ? "failed" : "running", -1);
    if (c->failed) {
        cq_rstmt_bind_text_copy(st, 4, c->error, -1);
        cq_rstmt_bind_int(st, 5, c->error_position);
        cq_rstmt_bind_text_copy(st, 6, c->error_event, -1);
    } else {
        cq_rstmt_bind_null(st, 4);
        cq_rstmt_bind_null(st, 5);
        cq_rstmt_bind_null(st, 6);
    }
    cq_rstmt_bind_int(st, 7, cq_now_ms());
    cq_rstmt_bind_int(st, 8, expected);
    rc = cq_rstmt_step(st);
    cq_rstmt_reset(st);
    cq_rstmt_clear(st);
    return rc == CQ_RSTEP_ROW    ? CQ_OK
           : rc == CQ_RSTEP_DONE ? CQ_ECONFLICT
                                 : CQ_EIO;
}

/* Apply the events of b that p has not applied yet to its live tables
 * (with the handlers of d, the definition they were built with), and its
 * checkpoint, in one read.db transaction; then publish. The fast path runs
 * handlers without a savepoint per event; if one fails, its partial writes
 * cannot be told apart from the good ones, so the transaction is undone
 * and run again with one savepoint per event, keeping exactly the events
 * before the failing one. CQ_OK, CQ_EIO (nothing changed) or, several
 * nodes, CQ_ECONFLICT (another node ran p meanwhile: nothing changed, and
 * this one no longer runs p). */
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
    /* the fast path sends the handlers' writes without waiting for each
     * answer (PostgreSQL; rdb.h): a failure among them fails the batch
     * here at the latest, and the careful run waits for every statement,
     * so that it tells which event failed */
    if (!careful)
        cq_rdb_queue_writes(e->rdb, 1);
    cq_eng_apply_events(&c, b, from);
    if (!careful && cq_rdb_queue_writes(e->rdb, 0) != CQ_OK)
        c.failed = 1;
    if (c.failed && !careful) {
        cq_exec_sql(e->rx, "ROLLBACK", err, sizeof err);
        careful = 1;
        goto again;
    }
    if (e->shared) {
        char payload[128];
        int rc = save_checkpoint_if(e, p, from - 1, &c);
        if (rc == CQ_ECONFLICT) {
            cq_exec_sql(e->rx, "ROLLBACK", err, sizeof err);
            let_go(e, p, 1, "another node has moved its checkpoint");
            return CQ_ECONFLICT;
        }
        snprintf(payload, sizeof payload, "%s:%lld", p->d->name,
                 (long long)c.last);
        if (rc != CQ_OK ||
            cq_rdb_notify(e->rdb, CQ_CHANNEL_PROGRESS, payload) != CQ_OK) {
            snprintf(err, sizeof err, "%s", cq_rdb_errmsg(e->rdb));
            goto rollback;
        }
    } else if (cq_eng_save_checkpoint(e->r_save, p, c.last, c.failed, c.error,
                                      c.error_position,
                                      c.error_event) != CQ_OK) {
        snprintf(err, sizeof err, "%s", cq_rdb_errmsg(e->rdb));
        goto rollback;
    }
    if (cq_exec_sql(e->rx, "COMMIT", err, sizeof err) != CQ_OK)
        goto rollback;
    p->notified = c.last;
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

/* apply_round with a source (cqrsd project): each due projection reads
 * its own micro-batch of `batch` events from its source (which hands out
 * only events after its checkpoint, without a gap), applies it with
 * apply_batch (rows, checkpoint and cq_progress in one transaction), and
 * only after that commit tells the source, which acknowledges them. A
 * crash between the commit and the acknowledgement redelivers events at
 * or below the checkpoint, which the source skips. */
static int apply_from_source(cq_engine *e, proj **due,
                             const cq_declared **decl, const int64_t *from,
                             int n, int need_meta)
{
    int status = CQ_STEP_IDLE;

    for (int i = 0; i < n; i++) {
        batch b;
        char err[256] = "";
        int rc;

        memset(&b, 0, sizeof b);
        b.cap = e->batch;
        b.need_meta = need_meta;
        rc = batch_read(e, &b, due[i]->index, from[i], err, sizeof err);
        if (rc != CQ_OK) {
            fprintf(stderr, "cqrsd: projection %s: reading events from %lld: "
                            "%s\n",
                    due[i]->d->name, (long long)from[i], err);
            status = CQ_STEP_FAILED;
        } else if (b.n > 0) {
            rc = apply_batch(e, due[i], decl[i], from[i], &b);
            if (rc == CQ_OK) {
                int64_t pos;
                pthread_mutex_lock(&e->mu);
                pos = due[i]->position;
                pthread_mutex_unlock(&e->mu);
                e->source.applied(e->source.arg, due[i]->index,
                                  due[i]->d->name, pos);
                if (status == CQ_STEP_IDLE)
                    status = CQ_STEP_WORKED;
            } else if (rc == CQ_EIO) {
                status = CQ_STEP_FAILED;
            }
        }
        cq_eng_batch_free(&b);
    }
    /* a projection behind the head whose events are not on the bus yet
     * (the relay's lag) is due again at once: its source waited briefly */
    return status == CQ_STEP_IDLE ? CQ_STEP_WORKED : status;
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
        if (p->is_inline || !p->owned || p->failed || p->paused ||
            p->frozen || p->position >= head)
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
    if (e->source.read != NULL) {
        status = apply_from_source(e, due, decl, from, n, b.need_meta);
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
        if (apply_batch(e, due[i], decl[i], from[i], &b) == CQ_EIO)
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
        int did, unowned = 0;

        cq_eng_run_controls(e, 0);
        pthread_mutex_unlock(&e->mu);
        if (e->shared)
            upkeep(e);
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
        if (e->shared && did == CQ_STEP_FAILED && connection_lost(e))
            e->reopen = 1;
        if (e->shared && !e->reopen)
            notify_moved(e);
        pthread_mutex_lock(&e->mu);
        for (int i = 0; e->shared && i < e->nprojs; i++)
            unowned |= !e->projs[i]->is_inline && !e->projs[i]->owned;
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
            int due = e->recheck;
            for (int i = 0; i < e->nprojs && !due; i++) {
                proj *p = e->projs[i];
                due = (!p->is_inline && p->owned && !p->failed &&
                       !p->paused && !p->frozen && p->position < e->head) ||
                      (p->rb.active && !p->paused);
            }
            if (!due && e->controls == NULL) {
                if (unowned || e->reopen) {
                    /* several nodes: the next try for the locks not held
                     * (or to connect again) is due then */
                    int64_t ms = (e->reopen ? e->next_reconnect_ms
                                            : e->next_claim_ms) -
                                 cq_eng_mono_ms();
                    struct timespec ts;
                    clock_gettime(CLOCK_REALTIME, &ts);
                    ms = ms < 1 ? 1 : ms > 1000 ? 1000 : ms;
                    ts.tv_sec += ms / 1000;
                    ts.tv_nsec += (ms % 1000) * 1000000;
                    if (ts.tv_nsec >= 1000000000) {
                        ts.tv_sec++;
                        ts.tv_nsec -= 1000000000;
                    }
                    pthread_cond_timedwait(&e->cv, &e->mu, &ts);
                } else {
                    cq_wal_idle(e->wal); /* read.db's log: see wal.h */
                    pthread_cond_wait(&e->cv, &e->mu);
                }
            }
        }
    }
    /* e->stopping is set: nothing is queued after this */
    cq_eng_run_controls(e, 1);
    pthread_mutex_unlock(&e->mu);
    free(e->bmem.se);
    free(e->bmem.pe);
    free(e->bmem.prc);
    memset(&e->bmem, 0, sizeof e->bmem);
    return NULL;
}
