/*
 * rdb_pg_pipe.c -- savepoint statements that cost no round trip of their
 * own on PostgreSQL.
 *
 * Inside a transaction, a persistent `SAVEPOINT x` or `RELEASE x`
 * (rpg_deferrable) is sent at once in a libpq pipeline left open, and its
 * answer taken with the next statement: the next step sends its statement
 * behind it and reads both (rpg_exec_after); any other call on the
 * connection first reads it (rpg_drain); the event store, whose write
 * connection the engine's inline projections use as a view, takes it over
 * with its own next statement (cq_rdb_pg_adopt_queued). So an inline
 * projection's SAVEPOINT travels with its first statement and its RELEASE
 * with the store's next one.
 *
 * Failures: a savepoint statement fails only in a transaction that has
 * failed already (or on a lost connection), and then the next statement
 * would fail too. Its failure is reported by the call that takes its
 * answer, in the call's place: the step (the statement behind it did not
 * run), the exec or prepare, or the store's next call (which fails the
 * store's whole batch: store_pg_write.c).
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

    if (!st->savepoint_op || !st->persistent || st->nparams != 0 ||
        st->name[0] == '\0' || st->gen != p->gen ||
        p->owed >= RPG_MAX_OWED)
        return 0;
    /* our own pipeline, or none (the event store's left open is its own:
     * a statement in between must fail, store_pg_write.c) */
    if (p->owed > 0)
        return ps == PQ_PIPELINE_ON;
    return ps == PQ_PIPELINE_OFF && ts == PQTRANS_INTRANS;
}

int rpg_defer(pg_stmt *st)
{
    pg_conn *p = st->db;

    if ((p->owed == 0 && PQenterPipelineMode(p->c) != 1) ||
        PQsendQueryPrepared(p->c, st->name, 0, NULL, NULL, NULL, 0) != 1 ||
        PQflush(p->c) != 0) {
        /* nothing sensible can be read back: the connection is done for
         * (its transaction fails with it) */
        rpg_fail(p, NULL);
        p->owed = 0;
        PQexitPipelineMode(p->c);
        return p->code != CQ_OK ? p->code : CQ_EIO;
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
            return rc != CQ_OK ? rc : rpg_fail(p, NULL);
        if (PQresultStatus(r) == PGRES_PIPELINE_ABORTED) {
            PQclear(r); /* did not run: an earlier one failed */
            r = NULL;
        } else if (k < n && PQresultStatus(r) != PGRES_COMMAND_OK) {
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
        return rc != CQ_OK ? rc : rpg_fail(p, NULL);
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
    if (PQpipelineSync(p->c) != 1) {
        p->owed = 0;
        return rpg_fail(p, NULL);
    }
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
        p->owed = 0;
        *rc = rpg_fail(p, NULL);
        return NULL;
    }
    *rc = take(p, 1, &res);
    if (*rc != CQ_OK) {
        PQclear(res);
        return NULL;
    }
    return res;
}

int cq_rdb_pg_adopt_queued(PGconn *c)
{
    pg_conn *p = rpg_conn_if_any(c);
    int n = p != NULL ? p->owed : 0;

    if (p != NULL)
        p->owed = 0;
    return n;
}
