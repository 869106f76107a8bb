/*
 * rdb_pg_pipe.c -- statements that cost no round trip of their own on
 * PostgreSQL: savepoint statements, and writes while the caller queues
 * them (cq_rdb_queue_writes).
 *
 * Inside a transaction, a statement that may go unanswered for now
 * (rpg_deferrable) is sent at once in a libpq pipeline left open, and its
 * answer taken later: the next step that must wait sends its statement
 * behind the owed ones and reads them all (rpg_exec_after), in one round
 * trip; any other call on the connection first reads them (rpg_drain); the
 * event store, whose write connection the engine's inline projections use
 * as a view, takes them over with its own next statement
 * (cq_rdb_pg_adopt_queued). Such statements are:
 *  - a persistent `SAVEPOINT x` or `RELEASE x`, always: an inline
 *    projection's SAVEPOINT travels with its first statement and its
 *    RELEASE with the store's next one; up to RPG_MAX_OWED of them;
 *  - while the connection queues writes (the projector's batch, and only
 *    there: projector.c), an INSERT, UPDATE or DELETE that returns no rows
 *    (no RETURNING): a declared handler's statements are all such, so a
 *    batch of events costs one round trip per RPG_MAX_QUEUED statements
 *    instead of one per statement. Up to RPG_MAX_QUEUED statements owed;
 *    the one after runs behind them and waits. The parameters are copied
 *    into libpq's buffer as the statement is sent, so the caller may
 *    reset or rebind the statement at once.
 *
 * Failures: a savepoint statement fails only in a transaction that has
 * failed already (or on a lost connection), and then the next statement
 * would fail too; a queued write fails as it would have at once, and
 * PostgreSQL skips what follows it in the pipeline until its sync (the
 * transaction has failed). The first failure is reported, with the
 * server's message, by the call that takes the answers, in the call's
 * place: the step (the statement behind them did not run), the exec (a
 * COMMIT is refused: PostgreSQL rolled the transaction back; a ROLLBACK
 * discards it), the prepare, cq_rdb_queue_writes(db, 0), or the store's
 * next call (which fails the store's whole batch: store_pg_write.c). A
 * queued write whose prepared statement the server forgot (26000: a
 * DEALLOCATE ALL) makes every statement of the connection prepare again
 * before it next runs. A lost connection fails the call that notices it
 * and leaves pipeline mode; the connection is then CONNECTION_BAD with no
 * transaction, as after any other loss.
 *
 * Threads: none of its own; the connection's thread.
 */
#include <stdio.h>
#include <string.h>

#include <libpq-fe.h>

#include "cqrs/cqrs.h"
#include "store/pg.h"
#include "store/rdb.h"
#include "store/rdb_pg_int.h"

int rpg_deferrable(const pg_stmt *st)
{
    pg_conn *p = st->db;
    PGTransactionStatusType ts = PQtransactionStatus(p->c);
    PGpipelineStatus ps = PQpipelineStatus(p->c);
    int bound = p->queue ? RPG_MAX_QUEUED : RPG_MAX_OWED;

    if (st->name[0] == '\0' || st->gen != p->gen || p->owed >= bound)
        return 0;
    if (!(st->savepoint_op && st->persistent && st->nparams == 0) &&
        !(p->queue && st->write && !st->rows))
        return 0;
    /* our own pipeline, or none (the event store's left open is its own:
     * a statement in between must fail, store_pg_write.c) */
    if (p->owed > 0)
        return ps == PQ_PIPELINE_ON;
    return ps == PQ_PIPELINE_OFF && ts == PQTRANS_INTRANS;
}

/* The connection failed mid-pipeline (it broke, or libpq could not go
 * on): its failure recorded (unless rc is an earlier one), the answers
 * still to come thrown away (libpq makes them failures) and pipeline mode
 * left, so that the connection is plainly failed, with no transaction
 * open: the caller sees CQ_EIO and no transaction, as after any loss.
 * Returns the failure's code. */
static int lost(pg_conn *p, int rc)
{
    if (rc == CQ_OK)
        rc = rpg_fail(p, NULL);
    p->owed = 0;
    for (int i = 0; i < 2 * RPG_MAX_QUEUED + 4 &&
                    PQexitPipelineMode(p->c) != 1;
         i++)
        PQclear(PQgetResult(p->c));
    return rc;
}

int rpg_defer(pg_stmt *st)
{
    pg_conn *p = st->db;

    if ((p->owed == 0 && PQenterPipelineMode(p->c) != 1) ||
        PQsendQueryPrepared(p->c, st->name, st->nparams, st->vals, st->lens,
                            st->fmts, 0) != 1 ||
        PQflush(p->c) != 0) {
        /* nothing sensible can be read back: the connection is done for
         * (its transaction fails with it) */
        int rc = lost(p, CQ_OK);
        return rc != CQ_OK ? rc : CQ_EIO;
    }
    p->owed++;
    p->code = CQ_OK;
    return CQ_OK;
}

/* Read the answers of the owed statements and, if sent, of one more
 * (*res: its result, or NULL when it did not run), then the sync, and
 * leave pipeline mode. CQ_OK, or the first owed one's failure, recorded. */
static int take(pg_conn *p, int one_more, PGresult **res)
{
    int n = p->owed, rc = CQ_OK;
    PGresult *r;

    p->owed = 0;
    if (res != NULL)
        *res = NULL;
    for (int k = 0; k < n + one_more; k++) {
        r = PQgetResult(p->c);
        if (r == NULL) /* the server went away mid-pipeline */
            return lost(p, rc);
        if (PQresultStatus(r) == PGRES_PIPELINE_ABORTED) {
            PQclear(r); /* did not run: an earlier one failed */
            r = NULL;
        } else if (k < n && PQresultStatus(r) != PGRES_COMMAND_OK) {
            const char *state = PQresultErrorField(r, PG_DIAG_SQLSTATE);
            if (state != NULL && strcmp(state, "26000") == 0)
                p->gen++; /* the server forgot them all: prepare again */
            if (rc == CQ_OK)
                rc = rpg_fail(p, r);
            PQclear(r);
            r = NULL;
        }
        if (k == n && res != NULL)
            *res = r;
        else
            PQclear(r);
        while ((r = PQgetResult(p->c)) != NULL)
            PQclear(r); /* each statement's results end with a NULL */
    }
    r = PQgetResult(p->c);
    if (r == NULL || PQresultStatus(r) != PGRES_PIPELINE_SYNC) {
        PQclear(r);
        return lost(p, rc);
    }
    PQclear(r);
    if (PQexitPipelineMode(p->c) != 1 && rc == CQ_OK)
        rc = rpg_fail(p, NULL);
    return rc;
}

int rpg_drain(pg_conn *p)
{
    if (p->owed == 0)
        return CQ_OK;
    if (PQpipelineSync(p->c) != 1)
        return lost(p, CQ_OK);
    return take(p, 0, NULL);
}

PGresult *rpg_exec_after(pg_stmt *st, int *rc)
{
    pg_conn *p = st->db;
    PGresult *res = NULL;

    *rc = CQ_OK;
    if (p->owed == 0)
        return PQexecPrepared(p->c, st->name, st->nparams, st->vals, st->lens,
                              st->fmts, 0);
    if (PQsendQueryPrepared(p->c, st->name, st->nparams, st->vals, st->lens,
                            st->fmts, 0) != 1 ||
        PQpipelineSync(p->c) != 1) {
        *rc = lost(p, CQ_OK);
        return NULL;
    }
    *rc = take(p, 1, &res);
    if (*rc != CQ_OK) {
        PQclear(res);
        return NULL;
    }
    return res;
}

int rpg_queue_writes(void *impl, int on)
{
    pg_conn *p = impl;

    p->queue = on != 0;
    return on ? CQ_OK : rpg_drain(p);
}

int cq_rdb_pg_adopt_queued(PGconn *c)
{
    pg_conn *p = rpg_conn_if_any(c);
    int n = p != NULL ? p->owed : 0;

    if (p != NULL)
        p->owed = 0;
    return n;
}
