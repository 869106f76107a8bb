/*
 * pool.c -- the engine's connections to the read store (store/rdb.h):
 * opening one, the small statement helpers every file of the engine uses,
 * and the pools of read-only connections that queries borrow (one pool on
 * read.db, one on the event store's database, which holds the inline
 * projections' tables: its connections come from cq_store_open_rdb).
 *
 * A connection whose server went away (PostgreSQL restarted: its last
 * statement failed with CQ_EIO outside a transaction) is closed when it
 * is given back, and the next borrower connects again; so is every other
 * connection of the pool made before that was found out (a restart ends
 * them all), each when it is next borrowed, so that a query tried again
 * after such a failure gets a live one. While connecting fails, borrowing
 * fails (the query answers 503) and the slot stays empty. One
 * database that has its own read store (with several nodes, the event
 * store's database) is served by one pool: see pool_of.
 *
 * Threads and locks: a pool's mutex guards its idle list; a borrowed
 * connection (and its executor) belongs to the borrowing thread until it
 * is put back, and it alone reconnects it. pool_open and pool_close run
 * on the thread that starts and frees the engine, when no other thread
 * uses the pool.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/base.h"
#include "projection/engine_int.h"

int cq_eng_step_done(cq_rstmt *st)
{
    return cq_rstmt_run(st) == CQ_OK ? CQ_OK : CQ_EIO;
}

int cq_eng_prepare(cq_rdb *db, const char *sql, cq_rstmt **st, char *err,
                   size_t errcap)
{
    return cq_rdb_prepare(db, sql, CQ_RDB_PERSISTENT, st, err, errcap) == CQ_OK
               ? CQ_OK
               : CQ_EIO;
}

int cq_eng_open_db(const char *path, unsigned flags, cq_rdb **db, char *err,
                   size_t errcap)
{
    return cq_rdb_open(path, flags, ENGINE_BUSY_TIMEOUT_MS, db, err, errcap) ==
                   CQ_OK
               ? CQ_OK
               : CQ_EIO;
}

/* ---- pools ------------------------------------------------------------ */

int cq_pool_open(pool *pl, cq_pool_opener open, void *arg, int n, char *err,
                 size_t errcap)
{
    pl->db = calloc((size_t)n, sizeof *pl->db);
    pl->x = calloc((size_t)n, sizeof *pl->x);
    pl->idle = calloc((size_t)n, sizeof *pl->idle);
    pl->born = calloc((size_t)n, sizeof *pl->born);
    if (pl->db == NULL || pl->x == NULL || pl->idle == NULL ||
        pl->born == NULL) {
        snprintf(err, errcap, "out of memory");
        return CQ_ENOMEM;
    }
    pthread_mutex_init(&pl->mu, NULL);
    pthread_cond_init(&pl->cv, NULL);
    pl->init = 1;
    pl->open = open;
    pl->arg = arg;
    for (int i = 0; i < n; i++) {
        int rc = open(arg, &pl->db[i], err, errcap);
        if (rc != CQ_OK)
            return rc;
        pl->n++;
        pl->x[i] = cq_exec_new(pl->db[i]);
        if (pl->x[i] == NULL) {
            snprintf(err, errcap, "out of memory");
            return CQ_ENOMEM;
        }
        pl->idle[pl->nidle++] = i;
    }
    return CQ_OK;
}

void cq_pool_close(pool *pl)
{
    for (int i = 0; i < pl->n; i++) {
        cq_exec_free(pl->x[i]);
        cq_rdb_close(pl->db[i]);
    }
    free(pl->db);
    free(pl->x);
    free(pl->idle);
    free(pl->born);
    if (pl->init) {
        pthread_mutex_destroy(&pl->mu);
        pthread_cond_destroy(&pl->cv);
    }
    memset(pl, 0, sizeof *pl);
}

int cq_pool_get(pool *pl, unsigned *lost)
{
    int i;

    pthread_mutex_lock(&pl->mu);
    while (pl->nidle == 0)
        pthread_cond_wait(&pl->cv, &pl->mu);
    i = pl->idle[--pl->nidle];
    *lost = pl->lost;
    pthread_mutex_unlock(&pl->mu);
    return i;
}

void cq_pool_put(pool *pl, int i)
{
    pthread_mutex_lock(&pl->mu);
    pl->idle[pl->nidle++] = i;
    pthread_cond_signal(&pl->cv);
    pthread_mutex_unlock(&pl->mu);
}

/* The pool holding projection's tables: read.db's, or the event store's
 * database's for an inline projection, unless that is the read store
 * itself (e->one_db). */
static pool *pool_of(cq_engine *e, int projection)
{
    return e->projs[projection]->is_inline && !e->one_db ? &e->events
                                                         : &e->reads;
}

/* Connect slot i of pl again (its borrower's thread), made in
 * generation `gen` of losses: CQ_OK, or the opener's failure with the
 * slot left empty. */
static int pool_reopen(pool *pl, int i, unsigned gen, char *err,
                       size_t errcap)
{
    cq_rdb *db = NULL;
    int rc;

    cq_exec_free(pl->x[i]);
    cq_rdb_close(pl->db[i]);
    pl->x[i] = NULL;
    pl->db[i] = NULL;
    rc = pl->open(pl->arg, &db, err, errcap);
    if (rc != CQ_OK)
        return rc;
    pl->born[i] = gen;
    pl->x[i] = cq_exec_new(db);
    if (pl->x[i] == NULL) {
        cq_rdb_close(db);
        snprintf(err, errcap, "out of memory");
        return CQ_ENOMEM;
    }
    pl->db[i] = db;
    return CQ_OK;
}

cq_exec *cq_engine_reader_get(cq_engine *e, int projection, char *err,
                              size_t errcap)
{
    pool *pl = pool_of(e, projection);
    unsigned lost;
    int i = cq_pool_get(pl, &lost);

    if ((pl->db[i] == NULL || pl->born[i] != lost) &&
        pool_reopen(pl, i, lost, err, errcap) != CQ_OK) {
        cq_pool_put(pl, i);
        return NULL;
    }
    return pl->x[i];
}

int cq_engine_reader_put(cq_engine *e, int projection, cq_exec *x)
{
    pool *pl = pool_of(e, projection);

    for (int i = 0; i < pl->n; i++)
        if (pl->x[i] == x) {
            cq_rdb *db = pl->db[i];
            int lost =
                cq_rdb_errcode(db) == CQ_EIO && !cq_rdb_in_transaction(db);
            if (lost) {
                /* its server went away (or its file fails): the next
                 * borrower connects again, and so do those of the
                 * connections made before, which went the same way */
                cq_exec_free(x);
                cq_rdb_close(db);
                pl->x[i] = NULL;
                pl->db[i] = NULL;
                pthread_mutex_lock(&pl->mu);
                pl->lost++;
                pthread_mutex_unlock(&pl->mu);
            }
            cq_pool_put(pl, i);
            return lost;
        }
    return 0;
}
