/*
 * control.c -- control operations on asynchronous projections (pause,
 * resume, reset, retry, skip, rebuild): queued by any thread, carried out
 * one at a time, in order, by the projector thread, each handed back to
 * its caller with its own result (see cq_engine_control_start).
 *
 * With several nodes on one read store, an operation is carried out by
 * the node that runs the projection (engine.h); another answers
 * CQ_ECONFLICT. The position it moves is told to the other nodes by the
 * projector (cq_progress) right after.
 *
 * Threads and locks: callers queue an operation and read its result
 * under e->mu; the projector thread runs the queue (cq_eng_run_controls,
 * called with e->mu held, which it drops while an operation runs) and
 * publishes the projection's new state under e->mu. An operation is
 * freed by whoever drops its last reference (the caller's, and the
 * queue's until it ran), under e->mu.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/base.h"
#include "projection/engine_int.h"

/* States of a control operation (cq_control.state). */
enum { CTL_QUEUED, CTL_CANCELLED, CTL_RUNNING, CTL_DONE };

/* Run sql on read.db (projector thread) with ?1 the projection's name
 * and after it, in the order `more` names them, 'i' the integer n and 's'
 * the status: bound, never formatted into the SQL. A statement has no
 * parameter it does not use (PostgreSQL cannot type one). */
static int exec_bound(cq_engine *e, const char *sql, const char *more,
                      const char *name, int64_t n, const char *status,
                      char *err, size_t errcap)
{
    cq_rstmt *st = NULL;
    int rc = cq_eng_prepare(e->rdb, sql, &st, err, errcap);

    if (rc != CQ_OK)
        return rc;
    /* ?1 is in every statement; a name not bound would match no row and
     * "succeed" without writing anything */
    rc = cq_rstmt_bind_text(st, 1, name, -1);
    if (rc != CQ_OK) {
        snprintf(err, errcap, "binding the projection name: %s",
                 cq_strerror(rc));
        cq_rstmt_finalize(st);
        return rc;
    }
    for (int i = 0; rc == CQ_OK && more[i] != '\0'; i++)
        rc = more[i] == 'i' ? cq_rstmt_bind_int(st, i + 2, n)
                            : cq_rstmt_bind_text(st, i + 2, status, -1);
    if (rc == CQ_OK)
        rc = cq_eng_step_done(st);
    if (rc != CQ_OK)
        snprintf(err, errcap, "%s", cq_rdb_errmsg(e->rdb));
    cq_rstmt_finalize(st);
    return rc;
}

/* Carry out control operation ctl on the projector thread and publish
 * the projection's new state and the operation's result. */
static void run_control(cq_engine *e, cq_control *ctl)
{
    proj *p = ctl->p;
    char err[256] = "";
    int op, rc = CQ_OK, paused, failed, owned;
    int64_t epos, position;

    pthread_mutex_lock(&e->mu);
    op = ctl->op;
    paused = p->paused;
    failed = p->failed;
    epos = p->error_position;
    position = p->position;
    owned = p->owned;
    pthread_mutex_unlock(&e->mu);

    if (!owned) {
        /* several nodes: its state is the other node's, in memory as
         * well as in its rows */
        rc = CQ_ECONFLICT;
        snprintf(err, sizeof err,
                 "%s runs on another node, not this one: send '%s' to the "
                 "node whose GET /projections/%s says runs_here",
                 p->d->name, op == OP_PAUSE    ? "pause"
                             : op == OP_RESUME ? "resume"
                             : op == OP_RESET  ? "reset"
                             : op == OP_RETRY  ? "retry"
                             : op == OP_SKIP   ? "skip"
                                               : "rebuild",
                 p->d->name);
        op = OP_NONE;
    }
    switch (op) {
    case OP_NONE: break;
    case OP_PAUSE:
    case OP_RESUME:
    case OP_RETRY:
        if (op == OP_RETRY && !failed) {
            rc = CQ_ECONFLICT;
            snprintf(err, sizeof err, "%s has not failed", p->d->name);
            break;
        }
        if (op != OP_RETRY)
            paused = op == OP_PAUSE;
        else
            failed = 0;
        rc =
            exec_bound(e,
                       op == OP_RETRY ? "UPDATE cq_projections SET status = ?2,"
                                        " error = NULL, error_position = NULL,"
                                        " error_event = NULL WHERE name = ?1"
                                      : "UPDATE cq_projections SET status = ?2"
                                        " WHERE name = ?1",
                       "s", p->d->name, 0,
                       failed   ? "failed"
                       : paused ? "paused"
                                : "running",
                       err, sizeof err);
        break;
    case OP_SKIP:
        if (!failed) {
            rc = CQ_ECONFLICT;
            snprintf(err, sizeof err, "%s has not failed", p->d->name);
            break;
        }
        /* cq_skipped_events exists: cq_engine_start made it */
        rc = cq_exec_sql(e->rx, "BEGIN", err, sizeof err);
        if (rc == CQ_OK)
            rc = exec_bound(e,
                            "INSERT INTO cq_skipped_events SELECT name,"
                            " error_position, error_event, error, ?2 FROM"
                            " cq_projections WHERE name = ?1"
                            " ON CONFLICT DO NOTHING",
                            "i", p->d->name, cq_now_ms(), NULL, err,
                            sizeof err);
        if (rc == CQ_OK)
            rc = exec_bound(e,
                            "UPDATE cq_projections SET position = ?2,"
                            " status = ?3, error = NULL, error_position = NULL,"
                            " error_event = NULL WHERE name = ?1",
                            "is", p->d->name, epos,
                            paused ? "paused" : "running",
                            err, sizeof err);
        if (rc == CQ_OK)
            rc = cq_exec_sql(e->rx, "COMMIT", err, sizeof err);
        if (rc != CQ_OK) {
            char ignore[64];
            cq_exec_sql(e->rx, "ROLLBACK", ignore, sizeof ignore);
        } else {
            fprintf(stderr,
                    "cqrsd: projection %s: event at position %lld skipped "
                    "(recorded in cq_skipped_events)\n",
                    p->d->name, (long long)epos);
            position = epos;
            failed = 0;
        }
        break;
    case OP_REBUILD:
        pthread_mutex_lock(&e->mu);
        rc = p->rb.active ? CQ_ECONFLICT : CQ_OK;
        pthread_mutex_unlock(&e->mu);
        if (rc != CQ_OK)
            snprintf(err, sizeof err, "%s is already being rebuilt",
                     p->d->name);
        else
            rc = cq_rebuild_begin(e, p, "requested", err, sizeof err);
        break;
    case OP_RESET:
        if (p->rb.active)
            cq_rebuild_abort(e, p, "the projection was reset");
        rc = cq_eng_prepare_projection(p, e->rx, 1, NULL, 0, err, sizeof err);
        if (rc == CQ_OK) {
            position = 0;
            failed = 0;
            paused = 0;
        }
        break;
    default: rc = CQ_EINVAL; break;
    }
    pthread_mutex_lock(&e->mu);
    if (rc == CQ_OK && op != OP_REBUILD) {
        p->paused = paused;
        p->failed = failed;
        p->position = position;
        if (op == OP_RESET) {
            p->serving = p->d;
            p->frozen = 0;
        }
        if (!failed)
            p->error[0] = p->error_event[0] = '\0';
        if (op == OP_SKIP)
            p->skipped++;
    }
    ctl->rc = rc;
    snprintf(ctl->msg, sizeof ctl->msg, "%s", err);
    ctl->state = CTL_DONE;
    pthread_mutex_unlock(&e->mu);
    if (rc == CQ_OK && op == OP_RESET)
        cq_eng_rewind(e, p->index, 0);
    else if (rc == CQ_OK && op == OP_SKIP)
        cq_eng_advance(e, p->index, position);
}

/* Drop one reference to ctl (e->mu held); 1 when it is to be freed. */
static int control_unref(cq_control *ctl)
{
    return --ctl->refs == 0;
}

/* Carry out the control operations queued so far, oldest first, each
 * handed back to its caller with its own result; at stop, hand them back
 * not carried out (CQ_ECLOSED). Called and returns with e->mu held. */
void cq_eng_run_controls(cq_engine *e, int stopping)
{
    cq_control *list = e->controls;

    e->controls = e->controls_tail = NULL;
    while (list != NULL) {
        cq_control *ctl = list;
        int run = ctl->state == CTL_QUEUED, gone;

        list = ctl->next;
        ctl->next = NULL;
        if (run && stopping) {
            ctl->rc = CQ_ECLOSED;
            snprintf(ctl->msg, sizeof ctl->msg, "the server is stopping");
            ctl->state = CTL_DONE;
        } else if (run) {
            ctl->state = CTL_RUNNING; /* cancelling is too late now */
        }
        pthread_mutex_unlock(&e->mu);
        if (run && !stopping)
            run_control(e, ctl); /* takes mu itself to publish */
        if (run)
            ctl->cb(ctl->arg);
        pthread_mutex_lock(&e->mu);
        gone = control_unref(ctl);
        if (gone)
            free(ctl);
    }
}

int cq_engine_control_start(cq_engine *e, int projection, const char *op,
                            cq_control_cb cb, void *arg, cq_control **out,
                            char *err, size_t errcap)
{
    static const char *const names[] = {"",      "pause", "resume", "reset",
                                        "retry", "skip",  "rebuild"};
    proj *p = e->projs[projection];
    cq_control *ctl;
    int code = OP_NONE;

    *out = NULL;
    for (int i = OP_PAUSE; i <= OP_REBUILD; i++)
        if (strcmp(op, names[i]) == 0)
            code = i;
    if (code == OP_NONE) {
        snprintf(err, errcap, "unknown operation '%.32s'", op);
        return CQ_EINVAL;
    }
    if (p->is_inline) {
        snprintf(err, errcap,
                 "%s is an inline projection: it moves with the "
                 "writer, and '%s' is only for asynchronous projections",
                 p->d->name, op);
        return CQ_ECONFLICT;
    }
    ctl = calloc(1, sizeof *ctl);
    if (ctl == NULL) {
        snprintf(err, errcap, "out of memory");
        return CQ_ENOMEM;
    }
    ctl->e = e;
    ctl->p = p;
    ctl->op = code;
    ctl->cb = cb;
    ctl->arg = arg;
    ctl->state = CTL_QUEUED;
    ctl->refs = 2;
    pthread_mutex_lock(&e->mu);
    if (e->stopping || !e->started) {
        pthread_mutex_unlock(&e->mu);
        free(ctl);
        snprintf(err, errcap, "the server is stopping");
        return CQ_ECLOSED;
    }
    if (e->controls_tail != NULL)
        e->controls_tail->next = ctl;
    else
        e->controls = ctl;
    e->controls_tail = ctl;
    pthread_cond_signal(&e->cv);
    pthread_mutex_unlock(&e->mu);
    *out = ctl;
    return CQ_OK;
}

int cq_control_result(cq_control *c, char *err, size_t errcap)
{
    int rc;

    pthread_mutex_lock(&c->e->mu);
    rc = c->state == CTL_DONE ? c->rc : CQ_EBUSY;
    snprintf(err, errcap, "%s",
             c->state == CTL_DONE ? c->msg : "the operation has not run yet");
    pthread_mutex_unlock(&c->e->mu);
    return rc;
}

void cq_control_release(cq_control *c)
{
    cq_engine *e;
    int gone;

    if (c == NULL)
        return;
    e = c->e;
    pthread_mutex_lock(&e->mu);
    if (c->state == CTL_QUEUED)
        c->state = CTL_CANCELLED; /* the projector drops it unrun */
    gone = control_unref(c);
    pthread_mutex_unlock(&e->mu);
    if (gone)
        free(c);
}

/* cq_engine_control's wait for its own operation. */
typedef struct control_sync {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int done;
} control_sync;

static void control_synced(void *arg)
{
    control_sync *s = arg;

    pthread_mutex_lock(&s->mu);
    s->done = 1;
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

int cq_engine_control(cq_engine *e, int projection, const char *op, char *err,
                      size_t errcap)
{
    control_sync s = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0};
    cq_control *ctl;
    int rc;

    rc = cq_engine_control_start(e, projection, op, control_synced, &s, &ctl,
                                 err, errcap);
    if (rc != CQ_OK)
        return rc;
    /* it always ends: run, or handed back when the engine stops */
    pthread_mutex_lock(&s.mu);
    while (!s.done)
        pthread_cond_wait(&s.cv, &s.mu);
    pthread_mutex_unlock(&s.mu);
    rc = cq_control_result(ctl, err, errcap);
    cq_control_release(ctl);
    pthread_mutex_destroy(&s.mu);
    pthread_cond_destroy(&s.cv);
    return rc;
}
