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
 *   projector.c   the projector thread: micro-batches into read.db;
 *                 with several nodes, which projections it runs
 *   listen.c      several nodes: what the others commit, heard
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
 * starts; with defer_inline it leaves the inline catch-up to the writer
 * thread, inline.c); stop and free on the thread that owns the engine. The
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
#include <time.h>

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
    snprintf(e->dir, sizeof e->dir, "%s", cfg->dir ? cfg->dir : ".");
    if (cfg->read_store != NULL && cfg->read_store[0] != '\0')
        snprintf(e->where, sizeof e->where, "%s", cfg->read_store);
    else
        snprintf(e->where, sizeof e->where, "%s/read.db", e->dir);
    if (cfg->store_uri != NULL)
        snprintf(e->store_uri, sizeof e->store_uri, "%s", cfg->store_uri);
    e->one_db = cfg->read_store != NULL && cfg->store_uri != NULL &&
                strcmp(cfg->read_store, cfg->store_uri) == 0;
    e->batch = cfg->batch > 0 ? cfg->batch : 100;
    e->domain = cfg->domain;
    e->nreaders = cfg->readers > 0 ? cfg->readers : 4;
    if (cfg->source != NULL)
        e->source = *cfg->source;
    e->run = cfg->run;
    e->defer_inline = cfg->defer_inline;
    atomic_init(&e->stop_catch_up, 0);
    pthread_mutex_init(&e->mu, NULL);
    pthread_cond_init(&e->cv, NULL);
    *out = e;
    return CQ_OK;
}

/* The table of skipped events, in read.db (asynchronous projections, by
 * `skip`) and in events.db (inline projections, at start). */
#define SKIPPED_DDL                                                            \
    "CREATE TABLE IF NOT EXISTS cq_skipped_events (projection TEXT NOT NULL,"  \
    " position BIGINT NOT NULL, event_type TEXT, error TEXT,"                  \
    " skipped_at BIGINT NOT NULL, PRIMARY KEY (projection, position))"

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

int cq_eng_projector_statements(cq_engine *e, char *err, size_t errcap)
{
    if (cq_eng_prepare(e->rdb, SQL_SAVE_CHECKPOINT, &e->r_save, err, errcap) ||
        prepare_savepoints(e->rdb, "ev", &e->r_sp, &e->r_release,
                           &e->r_rollback, err, errcap) ||
        (e->shared && cq_eng_prepare(e->rdb, SQL_SAVE_CHECKPOINT_IF, &e->r_cas,
                                     err, errcap)))
        return CQ_EIO;
    return CQ_OK;
}

/* Several nodes: wait for the lock that lets one node at a time create
 * and migrate the tables at start (another may be starting too). CQ_OK,
 * or the read store's failure. */
static int lock_start(cq_engine *e, char *err, size_t errcap)
{
    int got = 0, said = 0;

    for (;;) {
        int rc = cq_rdb_try_lock(e->rdb, CQ_LOCK_START, &got);
        if (rc != CQ_OK) {
            snprintf(err, errcap, "%s: %s", CQ_LOCK_START,
                     cq_rdb_errmsg(e->rdb));
            return rc;
        }
        if (got)
            return CQ_OK;
        if (!said++)
            fprintf(stderr, "cqrsd: another node is starting on the same "
                            "read store: waiting for it\n");
        nanosleep(&(struct timespec){0, 50 * 1000000}, NULL);
    }
}

/* Several nodes: take asynchronous projection p's lock if no other node
 * holds it (p->owned). CQ_OK or the read store's failure. */
static int claim_at_start(cq_engine *e, proj *p, char *err, size_t errcap)
{
    char name[128];
    int got = 0, rc;

    cq_eng_lock_name(p, name, sizeof name);
    rc = cq_rdb_try_lock(e->rdb, name, &got);
    if (rc != CQ_OK) {
        snprintf(err, errcap, "%s: %s", name, cq_rdb_errmsg(e->rdb));
        return rc;
    }
    p->owned = got;
    if (!got)
        fprintf(stderr,
                "cqrsd: projection %s runs on another node; this one takes "
                "it over if that one stops\n",
                p->d->name);
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
    const char *path = e->where;
    cq_rdb *wdb = cq_store_write_rdb(e->store);
    int64_t head = 0;
    int rc, start_locked = 0;

    rc = cq_eng_open_db(path, CQ_RDB_CREATE, &e->rdb, err, errcap);
    if (rc != CQ_OK)
        return rc;
    /* a read store on a server may be shared with other nodes: they take
     * turns at starting and share the projections out (engine.h) */
    e->shared = strcmp(cq_rdb_backend(e->rdb), "sqlite") != 0;
    /* the writer is the only one appending to a SQLite event store: what
     * it commits can be kept for the projector and the queries (tail.h);
     * without memory for it they read the store */
    if (!e->shared && e->tail == NULL &&
        strcmp(cq_store_backend(e->store), "sqlite") == 0)
        e->tail = cq_tail_new();
    e->rx = cq_exec_new(e->rdb);
    e->ix = cq_exec_new(wdb);
    if (e->rx == NULL || e->ix == NULL) {
        snprintf(err, errcap, "out of memory");
        return CQ_ENOMEM;
    }
    /* read.db need not fsync each batch: its checkpoints commit with their
     * rows, so after a crash a projection resumes from its last one. */
    if (strcmp(cq_rdb_backend(e->rdb), "sqlite") == 0) /* PostgreSQL: none */
        rc = cq_exec_sql(e->rx,
                         "PRAGMA journal_mode = WAL;"
                         " PRAGMA synchronous = NORMAL",
                         err, errcap);
    if (rc == CQ_OK && e->shared) {
        rc = lock_start(e, err, errcap);
        start_locked = rc == CQ_OK;
    }
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
        p->owned = p->is_inline || cq_eng_may_run(e, p);
        if (e->shared && !p->is_inline && p->owned)
            rc = claim_at_start(e, p, err, errcap);
        if (rc == CQ_OK)
            rc = cq_eng_prepare_projection(p, x, 0, changed, sizeof changed,
                                           err, errcap);
        /* a rebuild is the business of the node that runs the projection
         * (another one takes it up from cq_rebuilds if that one stops) */
        if (rc == CQ_OK && !p->is_inline && p->owned)
            rc = cq_rebuild_load(e, p, &resumable, err, errcap);
        if (rc == CQ_OK && p->owned && (changed[0] != '\0' || resumable))
            rc = cq_rebuild_begin(e, p, changed[0] ? changed : "resumed", err,
                                  errcap);
        /* the new definition's statements run on the tables it builds,
         * which only the node running a rebuild has */
        if (rc == CQ_OK && (p->rb.active || p->serving == p->d))
            rc = cq_eng_check_statements(
                p->d, p->source, p->rb.active ? p->rb.x : x, err, errcap);
    }
    if (rc != CQ_OK)
        goto fail;
    rc = CQ_EIO;
    if (cq_eng_projector_statements(e, err, errcap) ||
        cq_eng_prepare(wdb, SQL_SAVE_CHECKPOINT, &e->i_save, err, errcap) ||
        prepare_savepoints(wdb, "inl", &e->i_sp, &e->i_release, &e->i_rollback,
                           err, errcap))
        goto fail;
    if (cq_exec_sql(e->rx, SKIPPED_DDL, err, errcap) != CQ_OK ||
        cq_exec_sql(e->ix, SKIPPED_DDL, err, errcap) != CQ_OK)
        goto fail;
    for (int i = 0; i < e->nprojs; i++) {
        proj *p = e->projs[i];
        rc = cq_eng_count_skipped(p->is_inline ? wdb : e->rdb, p, err, errcap);
        if (rc != CQ_OK)
            goto fail;
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
        /* deferred: the writer's start hook catches it up while the
         * server answers (cq_engine_catch_up); no other thread runs yet */
        if (e->defer_inline && p->position < head)
            p->catching_up = 1;
        else if ((rc = cq_eng_catch_up_inline(e, p, head, err, errcap)) !=
                 CQ_OK)
            goto fail;
        p->saved = p->position;
    }
    if (start_locked) {
        cq_rdb_unlock(e->rdb, CQ_LOCK_START);
        start_locked = 0;
    }
    rc = cq_pool_open(&e->reads, open_read_db, e->where, e->nreaders, err,
                      errcap);
    if (rc == CQ_OK && !e->one_db)
        rc = cq_pool_open(&e->events, open_store_db, e->store, e->nreaders, err,
                          errcap);
    if (rc != CQ_OK)
        return rc;
    for (int i = 0; i < e->nprojs; i++)
        cq_eng_advance(e, i, e->projs[i]->position);
    cq_eng_advance(e, e->nprojs, head);
    e->head = head;
    /* read.db's log is SQLite's; a server keeps its own */
    if (!e->shared) {
        rc = cq_wal_start_rdb(e->rdb, ENGINE_BUSY_TIMEOUT_MS, path,
                              "cq-ckpt-read", &e->wal, err, errcap);
        if (rc != CQ_OK)
            return rc;
    }
    /* before the projector: what other nodes do from now on is heard (the
     * listener reads positions and head again once it listens) */
    if (e->shared) {
        e->next_claim_ms = cq_eng_mono_ms() + 1000;
        rc = cq_eng_listen_start(e, err, errcap);
        if (rc != CQ_OK)
            return rc;
    }
    /* inline projections catching up (defer_inline) go first: the
     * commands wait for them, so the projector starts once they are
     * current (cq_engine_catch_up); control operations queue meanwhile */
    for (int i = 0; i < e->nprojs; i++)
        e->projector_deferred |= e->projs[i]->catching_up;
    if (!e->projector_deferred &&
        (rc = cq_eng_start_projector(e, err, errcap)) != CQ_OK)
        return rc;
    e->started = 1;
    return CQ_OK;
fail:
    /* another node starting waits for this lock: give it back at once
     * (the connection would release it when closed anyway) */
    if (start_locked)
        cq_rdb_unlock(e->rdb, CQ_LOCK_START);
    return rc;
}

int cq_eng_start_projector(cq_engine *e, char *err, size_t errcap)
{
    if (pthread_create(&e->projector, NULL, cq_eng_projector_main, e) != 0) {
        snprintf(err, errcap, "cannot start the projector thread");
        return CQ_ENOMEM;
    }
    e->projector_running = 1;
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
    /* with defer_inline the writer, stopped before, may have started the
     * projector (cq_engine_catch_up): its join ordered that write */
    if (e->projector_running && !joined) {
        pthread_join(e->projector, NULL);
    } else if (!joined) {
        /* never started: hand back the control operations queued */
        pthread_mutex_lock(&e->mu);
        cq_eng_run_controls(e, 1);
        pthread_mutex_unlock(&e->mu);
    }
    if (!joined)
        cq_eng_listen_stop(e);
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
    cq_rstmt_finalize(e->r_cas);
    cq_rstmt_finalize(e->i_save);
    cq_rstmt_finalize(e->i_sp);
    cq_rstmt_finalize(e->i_release);
    cq_rstmt_finalize(e->i_rollback);
    for (int i = 0; i < e->nprojs; i++)
        cq_rebuild_free(e->projs[i]); /* statements on read.db */
    cq_exec_free(e->rx);
    cq_exec_free(e->ix);
    cq_wal_free(e->wal); /* before read.db's writing connection closes */
    cq_tail_free(e->tail);
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
    return e->shared ? -1 : cq_wal_bytes(e->wal);
}

void cq_engine_read_stats(cq_engine *e, int64_t *from_memory,
                          int64_t *from_store)
{
    cq_tail_stats(e->tail, from_memory, from_store);
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

int cq_eng_checkpoint_row(cq_rstmt *st, const proj *p, checkpoint_row *row)
{
    int rc;

    memset(row, 0, sizeof *row);
    cq_rstmt_bind_text(st, 1, p->d->name, -1);
    rc = cq_rstmt_step(st);
    if (rc == CQ_RSTEP_ROW) {
        const char *status = cq_rstmt_column_text(st, 1);
        const char *m = cq_rstmt_column_text(st, 2);
        const char *t = cq_rstmt_column_text(st, 4);
        row->position = cq_rstmt_column_int(st, 0);
        row->paused = status && strcmp(status, "paused") == 0;
        row->failed = status && strcmp(status, "failed") == 0;
        if (row->failed) {
            row->error_position = cq_rstmt_column_int(st, 3);
            snprintf(row->error, sizeof row->error, "%s", m ? m : "");
            snprintf(row->error_event, sizeof row->error_event, "%s",
                     t ? t : "");
        }
        rc = CQ_OK;
    } else if (rc == CQ_RSTEP_DONE) {
        rc = CQ_ENOTFOUND;
    }
    cq_rstmt_reset(st);
    cq_rstmt_clear(st);
    return rc;
}

/* The checkpoint of asynchronous projection p, which another node runs,
 * as that node last wrote it: position, pause and failure into out.
 * CQ_OK, or CQ_EIO (the read store cannot be read). */
static int status_from_row(cq_engine *e, proj *p, cq_projection_status *out)
{
    char err[256];
    cq_exec *x = cq_engine_reader_get(e, p->index, err, sizeof err);
    cq_rstmt *st;
    checkpoint_row row;
    int rc = CQ_EIO;

    if (x == NULL)
        return CQ_EIO;
    st = cq_exec_stmt(x, SQL_CHECKPOINT_ROW, err, sizeof err);
    if (st != NULL && cq_eng_checkpoint_row(st, p, &row) == CQ_OK) {
        out->position = row.position;
        out->paused = row.paused;
        out->failed = row.failed;
        out->error_position = row.error_position;
        snprintf(out->error, sizeof out->error, "%s", row.error);
        snprintf(out->error_event, sizeof out->error_event, "%s",
                 row.error_event);
        rc = CQ_OK;
    }
    cq_engine_reader_put(e, p->index, x);
    return rc;
}

int cq_engine_status(cq_engine *e, int projection, cq_projection_status *out)
{
    proj *p = e->projs[projection];
    int row_rc = CQ_OK;

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
    out->runs_here = p->owned;
    out->serving_version = p->serving ? p->serving->version : 0;
    out->frozen = p->frozen;
    out->catching_up = p->catching_up;
    if (p->catching_up && p->catch_up_error[0] != '\0')
        snprintf(out->error, sizeof out->error, "%s", p->catch_up_error);
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
    if (!out->runs_here)
        row_rc = status_from_row(e, p, out);
    out->status = out->failed       ? "failed"
                  : out->paused     ? "paused"
                  : out->rebuilding ? "rebuilding"
                  : out->catching_up ? "catching_up"
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
        return rc != CQ_OK ? rc : row_rc;
    }
}
