/*
 * engine.c -- the projection engine's life: a new engine, its start
 * (checkpoint tables, migration, inline catch-up, pools, the projector
 * thread), stop and free; and what any thread may ask of it: which
 * projections and queries it has, their positions and status.
 *
 * The engine's other concepts live in files of their own (engine_int.h
 * holds their shared state):
 *   load.c        adding projections from .sql files and C code
 *   checkpoint.c  the cq_projections and cq_skipped_events tables, and
 *                 bringing a projection's tables to its definition
 *   decode.c      decoding a stored event for handlers
 *   projector.c   the projector thread: micro-batches into read.db
 *   control.c     pause/resume/reset/retry/skip/rebuild, queued to it
 *   inline.c      inline projections: the writer's hooks, catch-up
 *   rebuild.c     blue/green rebuilds
 *   pool.c        connections and the read pools
 *   lookup.c      what the engine looks up in the event store
 * The query side (named queries, waits, strong reads) is src/query/.
 *
 * Threads: cq_engine_new, the load functions and cq_engine_start run
 * before any other thread uses the engine (start runs on the caller's
 * thread and uses the store's write connection before the writer
 * starts); stop and free on the thread that owns the engine. The
 * accessors and cq_engine_status may be called from any thread: they
 * read the projections' mutable fields under e->mu; names, definitions
 * and modes do not change after start.
 *
 * Locks: `mu` guards head, stopping, every projection's position and
 * failure fields, and the control operations' queue and states; `cv`
 * wakes the projector. The connection pools have their own mutexes;
 * waits have theirs (src/query/wait.c). Lock order: never hold mu while
 * taking a pool or the waiters' lock.
 */
#include "projection/engine.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/base.h"
#include "projection/engine_int.h"
#include "store/rdb.h"
#include "store/wal.h"

/* ---- setup --------------------------------------------------------------- */

int cq_engine_new(const cq_engine_config *cfg, cq_store *store, cq_engine **out,
                  char *err, size_t errcap)
{
    cq_engine *e = calloc(1, sizeof *e);

    *out = NULL;
    if (e == NULL) {
        snprintf(err, errcap, "out of memory");
        return CQ_ENOMEM;
    }
    e->store = store;
    snprintf(e->dir, sizeof e->dir, "%s", cfg->dir);
    e->batch = cfg->batch > 0 ? cfg->batch : 100;
    e->domain = cfg->domain;
    e->nreaders = cfg->readers > 0 ? cfg->readers : 4;
    pthread_mutex_init(&e->mu, NULL);
    pthread_cond_init(&e->cv, NULL);
    *out = e;
    return CQ_OK;
}

/* The table of skipped events, in read.db (asynchronous projections, by
 * `skip`) and in events.db (inline projections, at start). */
#define SKIPPED_DDL                                                            \
    "CREATE TABLE IF NOT EXISTS cq_skipped_events (projection TEXT NOT NULL,"  \
    " position INTEGER NOT NULL, event_type TEXT, error TEXT,"                 \
    " skipped_at INTEGER NOT NULL, PRIMARY KEY (projection, position))"

static int prepare_savepoints(cq_rdb *db, const char *name, cq_rstmt **sp,
                              cq_rstmt **release, cq_rstmt **rollback,
                              char *err, size_t errcap)
{
    char sql[3][64];

    snprintf(sql[0], sizeof sql[0], "SAVEPOINT %s", name);
    snprintf(sql[1], sizeof sql[1], "RELEASE %s", name);
    snprintf(sql[2], sizeof sql[2], "ROLLBACK TO %s", name);
    if (cq_eng_prepare(db, sql[0], sp, err, errcap) != CQ_OK ||
        cq_eng_prepare(db, sql[1], release, err, errcap) != CQ_OK ||
        cq_eng_prepare(db, sql[2], rollback, err, errcap) != CQ_OK)
        return CQ_EIO;
    return CQ_OK;
}

/* A pool's connection to read.db (a cq_pool_opener; arg: its path). */
static int open_read_db(void *arg, cq_rdb **db, char *err, size_t errcap)
{
    return cq_eng_open_db(arg, CQ_RDB_READONLY, db, err, errcap);
}

/* A pool's connection to the event store's database, which holds the
 * inline projections' tables (a cq_pool_opener; arg: the store). */
static int open_store_db(void *arg, cq_rdb **db, char *err, size_t errcap)
{
    return cq_store_open_rdb(arg, db, err, errcap);
}

int cq_engine_start(cq_engine *e, char *err, size_t errcap)
{
    char path[4200];
    cq_rdb *wdb = cq_store_write_rdb(e->store);
    int64_t head = 0;
    int rc;

    snprintf(path, sizeof path, "%s/read.db", e->dir);
    rc = cq_eng_open_db(path, CQ_RDB_CREATE, &e->rdb, err, errcap);
    if (rc != CQ_OK)
        return rc;
    e->rx = cq_exec_new(e->rdb);
    e->ix = cq_exec_new(wdb);
    if (e->rx == NULL || e->ix == NULL) {
        snprintf(err, errcap, "out of memory");
        return CQ_ENOMEM;
    }
    /* read.db need not fsync each batch: its checkpoints commit with their
     * rows, so after a crash a projection resumes from its last one. */
    rc = cq_exec_sql(e->rx, "PRAGMA journal_mode = WAL", err, errcap);
    if (rc == CQ_OK)
        rc = cq_exec_sql(e->rx, "PRAGMA synchronous = NORMAL", err, errcap);
    if (rc == CQ_OK)
        rc = cq_exec_sql(e->rx, CHECKPOINT_DDL, err, errcap);
    if (rc == CQ_OK)
        rc = cq_exec_sql(e->ix, CHECKPOINT_DDL, err, errcap);
    if (rc == CQ_OK)
        rc = cq_eng_add_source_column(e->rx, err, errcap);
    if (rc == CQ_OK)
        rc = cq_eng_add_source_column(e->ix, err, errcap);
    if (rc == CQ_OK)
        rc = cq_rebuild_init(e, err, errcap);
    if (rc == CQ_OK)
        rc = cq_store_head_position(e->store, &head);
    e->head = head; /* a rebuild's progress is measured against it */
    for (int i = 0; rc == CQ_OK && i < e->nprojs; i++) {
        proj *p = e->projs[i];
        cq_exec *x = p->is_inline ? e->ix : e->rx;
        char changed[96];
        int resumable = 0;
        rc = cq_eng_prepare_projection(p, x, 0, changed, sizeof changed, err,
                                       errcap);
        if (rc == CQ_OK && !p->is_inline)
            rc = cq_rebuild_load(e, p, &resumable, err, errcap);
        if (rc == CQ_OK && (changed[0] != '\0' || resumable))
            rc = cq_rebuild_begin(e, p, changed[0] ? changed : "resumed", err,
                                  errcap);
        /* the new definition's statements run on the tables it builds */
        if (rc == CQ_OK)
            rc = cq_eng_check_statements(
                p->d, p->source, p->rb.active ? p->rb.x : x, err, errcap);
    }
    if (rc != CQ_OK)
        return rc;
    if (cq_eng_prepare(e->rdb, SQL_SAVE_CHECKPOINT, &e->r_save, err, errcap) ||
        cq_eng_prepare(wdb, SQL_SAVE_CHECKPOINT, &e->i_save, err, errcap) ||
        prepare_savepoints(e->rdb, "ev", &e->r_sp, &e->r_release,
                           &e->r_rollback, err, errcap) ||
        prepare_savepoints(wdb, "inl", &e->i_sp, &e->i_release, &e->i_rollback,
                           err, errcap))
        return CQ_EIO;
    if (cq_exec_sql(e->rx, SKIPPED_DDL, err, errcap) != CQ_OK ||
        cq_exec_sql(e->ix, SKIPPED_DDL, err, errcap) != CQ_OK)
        return CQ_EIO;
    for (int i = 0; i < e->nprojs; i++) {
        proj *p = e->projs[i];
        rc = cq_eng_count_skipped(p->is_inline ? wdb : e->rdb, p, err, errcap);
        if (rc != CQ_OK)
            return rc;
        if (!p->is_inline)
            continue;
        if (p->failed) {
            /* stopped by an older version, which let the command commit:
             * try again from the checkpoint (see catch_up_inline) */
            fprintf(stderr,
                    "cqrsd: inline projection %s was stopped at position "
                    "%lld (%s): applying it again from its checkpoint\n",
                    p->d->name, (long long)p->error_position, p->error);
            p->failed = 0;
            p->error[0] = p->error_event[0] = '\0';
        }
        rc = cq_eng_catch_up_inline(e, p, head, err, errcap);
        if (rc != CQ_OK)
            return rc;
        p->saved = p->position;
    }
    rc = cq_pool_open(&e->reads, open_read_db, path, e->nreaders, err, errcap);
    if (rc == CQ_OK)
        rc = cq_pool_open(&e->events, open_store_db, e->store, e->nreaders, err,
                          errcap);
    if (rc != CQ_OK)
        return rc;
    for (int i = 0; i < e->nprojs; i++)
        cq_eng_advance(e, i, e->projs[i]->position);
    cq_eng_advance(e, e->nprojs, head);
    e->head = head;
    rc = cq_wal_start_rdb(e->rdb, ENGINE_BUSY_TIMEOUT_MS, path, "cq-ckpt-read",
                          &e->wal, err, errcap);
    if (rc != CQ_OK)
        return rc;
    if (pthread_create(&e->projector, NULL, cq_eng_projector_main, e) != 0) {
        snprintf(err, errcap, "cannot start the projector thread");
        return CQ_ENOMEM;
    }
    e->started = 1;
    return CQ_OK;
}

void cq_engine_stop(cq_engine *e)
{
    int joined;

    if (e == NULL)
        return;
    pthread_mutex_lock(&e->mu);
    joined = e->stopping;
    e->stopping = 1;
    pthread_cond_broadcast(&e->cv);
    pthread_mutex_unlock(&e->mu);
    if (e->started && !joined)
        pthread_join(e->projector, NULL);
    if (e->progress.shutdown != NULL)
        e->progress.shutdown(e->progress.arg);
}

void cq_engine_free(cq_engine *e)
{
    if (e == NULL)
        return;
    cq_engine_stop(e);
    if (e->progress.free != NULL)
        e->progress.free(e->progress.arg);
    cq_pool_close(&e->reads);
    cq_pool_close(&e->events);
    cq_rstmt_finalize(e->r_save);
    cq_rstmt_finalize(e->r_rb_save);
    cq_rstmt_finalize(e->r_sp);
    cq_rstmt_finalize(e->r_release);
    cq_rstmt_finalize(e->r_rollback);
    cq_rstmt_finalize(e->i_save);
    cq_rstmt_finalize(e->i_sp);
    cq_rstmt_finalize(e->i_release);
    cq_rstmt_finalize(e->i_rollback);
    for (int i = 0; i < e->nprojs; i++)
        cq_rebuild_free(e->projs[i]); /* statements on read.db */
    cq_exec_free(e->rx);
    cq_exec_free(e->ix);
    cq_wal_free(e->wal); /* before read.db's writing connection closes */
    cq_rdb_close(e->rdb);
    for (int i = 0; i < e->nprojs; i++) {
        cq_declared_free(e->projs[i]->d);
        cq_declared_free(e->projs[i]->prev);
        free(e->projs[i]->text);
        free(e->projs[i]);
    }
    free(e->projs);
    pthread_mutex_destroy(&e->mu);
    pthread_cond_destroy(&e->cv);
    free(e);
}

/* ---- what the query side asks -------------------------------------------
 */

int cq_engine_projection(cq_engine *e, const char *name)
{
    for (int i = 0; i < e->nprojs; i++)
        if (strcmp(e->projs[i]->d->name, name) == 0)
            return i;
    return -1;
}

const cq_decl_query *cq_engine_query(cq_engine *e, const char *name,
                                     int *projection)
{
    for (int i = 0; i < e->nprojs; i++) {
        const cq_decl_query *q = cq_declared_find_query(e->projs[i]->d, name);
        if (q != NULL) {
            *projection = i;
            return q;
        }
    }
    return NULL;
}

const char *cq_engine_projection_name(cq_engine *e, int projection)
{
    return e->projs[projection]->d->name;
}

int64_t cq_engine_position(cq_engine *e, int projection, int *failed)
{
    int64_t pos;

    pthread_mutex_lock(&e->mu);
    pos = e->projs[projection]->position;
    if (failed != NULL)
        *failed = e->projs[projection]->failed;
    pthread_mutex_unlock(&e->mu);
    return pos;
}

int64_t cq_engine_head(cq_engine *e)
{
    int64_t h;

    pthread_mutex_lock(&e->mu);
    h = e->head;
    pthread_mutex_unlock(&e->mu);
    return h;
}

int64_t cq_engine_wal_bytes(cq_engine *e)
{
    return cq_wal_bytes(e->wal);
}

int cq_engine_is_inline(cq_engine *e, int projection)
{
    return e->projs[projection]->is_inline;
}

void cq_engine_set_progress(cq_engine *e, const cq_engine_progress *progress)
{
    e->progress = *progress;
}

void *cq_engine_progress_arg(cq_engine *e)
{
    return e->progress.arg;
}

const cq_declared *cq_engine_declared(cq_engine *e, int projection)
{
    return e->projs[projection]->d;
}

const cq_declared *cq_engine_serving(cq_engine *e, int projection)
{
    const cq_declared *d;

    pthread_mutex_lock(&e->mu);
    d = e->projs[projection]->serving;
    pthread_mutex_unlock(&e->mu);
    return d;
}

/* ---- control and status ----------------------------------------------------
 */

int cq_engine_count(cq_engine *e)
{
    return e->nprojs;
}

int cq_engine_status(cq_engine *e, int projection, cq_projection_status *out)
{
    proj *p = e->projs[projection];

    memset(out, 0, sizeof *out);
    out->name = p->d->name;
    out->version = p->d->version;
    out->is_inline = p->is_inline;
    pthread_mutex_lock(&e->mu);
    out->position = p->position;
    out->head = e->head;
    out->failed = p->failed;
    out->paused = p->paused;
    out->skipped = p->skipped;
    if (p->failed) {
        out->error_position = p->error_position;
        snprintf(out->error, sizeof out->error, "%s", p->error);
        snprintf(out->error_event, sizeof out->error_event, "%s",
                 p->error_event);
    }
    out->serving_version = p->serving ? p->serving->version : 0;
    out->frozen = p->frozen;
    out->rebuilding = p->rb.active;
    if (p->rb.active) {
        int64_t now = cq_now_ms(), took = now - p->rb.taken_ms;
        int64_t replayed = p->rb.position - p->rb.resumed_from;
        snprintf(out->rebuild.reason, sizeof out->rebuild.reason, "%s",
                 p->rb.reason);
        out->rebuild.started_ms = p->rb.started_ms;
        out->rebuild.done = p->rb.position;
        out->rebuild.total =
            e->head > p->rb.position ? e->head : p->rb.position;
        out->rebuild.events_per_second =
            took > 0 ? (double)replayed * 1000.0 / (double)took : 0;
        out->rebuild.eta_seconds =
            out->rebuild.events_per_second > 0
                ? (double)(out->rebuild.total - out->rebuild.done) /
                      out->rebuild.events_per_second
                : -1;
    }
    if (p->last.outcome[0] != '\0') {
        snprintf(out->last_rebuild.outcome, sizeof out->last_rebuild.outcome,
                 "%s", p->last.outcome);
        out->last_rebuild.started_ms = p->last.started_ms;
        out->last_rebuild.finished_ms = p->last.finished_ms;
        out->last_rebuild.events = p->last.events;
        out->last_rebuild.version = p->last.version;
        snprintf(out->last_rebuild.error, sizeof out->last_rebuild.error, "%s",
                 p->last.error);
    }
    pthread_mutex_unlock(&e->mu);
    out->status = out->failed       ? "failed"
                  : out->paused     ? "paused"
                  : out->rebuilding ? "rebuilding"
                                    : "running";
    if (out->head < out->position)
        out->head = out->position;
    out->lag_events = out->head - out->position;
    {
        double lag = 0;
        char why[128];
        int rc = cq_engine_lag_ms(e, out->position, out->head, &lag, why,
                                  sizeof why);
        out->lag_seconds = lag / 1000.0;
        return rc;
    }
}
