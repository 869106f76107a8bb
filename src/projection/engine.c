/*
 * engine.c -- projections, their checkpoints, and queries over them (see
 * engine.h for what it promises).
 *
 * Checkpoints live in a table cq_projections in the projection's own
 * database (read.db for asynchronous projections, events.db for inline
 * ones), so a checkpoint always commits with the rows it describes:
 *
 *   | column         | meaning                                           |
 *   |----------------|---------------------------------------------------|
 *   | name           | projection name (primary key)                     |
 *   | version        | declared @version the tables were built with      |
 *   | source_hash    | SHA-256 of the .sql file they were built from     |
 *   | position       | last event position applied                       |
 *   | status         | running / failed                                  |
 *   | error, error_position, error_event | why and where it failed       |
 *   | updated_at     | ms since the epoch                                |
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
 *      looked up, see wait.h);
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
 * (rebuild.c).
 *
 * Inline projections run on the writer thread inside the command's
 * savepoint (hook apply_inline), under a nested SAVEPOINT inl; a handler
 * that fails refuses the command (CQ_EREFUSED: the writer undoes its
 * savepoint), so an inline read model never falls behind the events; their
 * checkpoint is written once per batch just before the commit (hook
 * before_commit) and their position published when the writer reports the
 * commit (hook committed).
 *
 * Locks: `mu` guards head, stopping, every projection's position and
 * failure fields, and the control operations' queue and states (a
 * caller's operation is its own object, see run_controls); `cv` wakes the
 * projector. The connection pools have their own mutexes; waits have
 * theirs (wait.c). Lock order: never hold mu while taking a pool or the
 * waiters' lock.
 */
#include "projection/engine.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "base/base.h"
#include "command/command.h"
#include "projection/engine_int.h"
#include "store/wal.h"

#define ENGINE_BUSY_TIMEOUT_MS 5000

#define CHECKPOINT_DDL                                                         \
    "CREATE TABLE IF NOT EXISTS cq_projections ("                              \
    " name TEXT PRIMARY KEY, version INTEGER NOT NULL,"                        \
    " source_hash TEXT NOT NULL, position INTEGER NOT NULL,"                   \
    " status TEXT NOT NULL, error TEXT, error_position INTEGER,"               \
    " error_event TEXT, updated_at INTEGER NOT NULL)"

#define SQL_SAVE_CHECKPOINT                                                    \
    "UPDATE cq_projections SET position = ?2, status = ?3, error = ?4,"        \
    " error_position = ?5, error_event = ?6, updated_at = ?7 WHERE name = ?1"

/* ---- small helpers ---------------------------------------------------- */

static int step_done(sqlite3_stmt *st)
{
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    return rc == SQLITE_DONE || rc == SQLITE_ROW ? CQ_OK : CQ_EIO;
}

static int prepare(sqlite3 *db, const char *sql, sqlite3_stmt **st, char *err,
                   size_t errcap)
{
    if (sqlite3_prepare_v3(db, sql, -1, SQLITE_PREPARE_PERSISTENT, st, NULL) ==
        SQLITE_OK)
        return CQ_OK;
    snprintf(err, errcap, "%s: %s", sql, sqlite3_errmsg(db));
    return CQ_EIO;
}

int cq_eng_step_done(sqlite3_stmt *st)
{
    return step_done(st);
}

int cq_eng_prepare(sqlite3 *db, const char *sql, sqlite3_stmt **st, char *err,
                   size_t errcap)
{
    return prepare(db, sql, st, err, errcap);
}

static int open_db(const char *path, int flags, sqlite3 **db, char *err,
                   size_t errcap)
{
    if (sqlite3_open_v2(path, db, flags | SQLITE_OPEN_NOMUTEX, NULL) !=
        SQLITE_OK) {
        snprintf(err, errcap, "%s: %s", path,
                 *db ? sqlite3_errmsg(*db) : "cannot open");
        sqlite3_close(*db);
        *db = NULL;
        return CQ_EIO;
    }
    sqlite3_busy_timeout(*db, ENGINE_BUSY_TIMEOUT_MS);
    return CQ_OK;
}

/* Save p's checkpoint with `st` (SQL_SAVE_CHECKPOINT) in the open
 * transaction. */
static int save_checkpoint(sqlite3_stmt *st, const proj *p, int64_t position,
                           int failed, const char *error, int64_t error_pos,
                           const char *error_event)
{
    sqlite3_bind_text(st, 1, p->d->name, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, position);
    sqlite3_bind_text(st, 3, failed ? "failed" : "running", -1, SQLITE_STATIC);
    if (failed) {
        sqlite3_bind_text(st, 4, error, -1, SQLITE_TRANSIENT);
        sqlite3_bind_int64(st, 5, error_pos);
        sqlite3_bind_text(st, 6, error_event, -1, SQLITE_TRANSIENT);
    } else {
        sqlite3_bind_null(st, 4);
        sqlite3_bind_null(st, 5);
        sqlite3_bind_null(st, 6);
    }
    sqlite3_bind_int64(st, 7, cq_now_ms());
    int rc = step_done(st);
    sqlite3_clear_bindings(st);
    return rc;
}

/* ---- pools ------------------------------------------------------------ */

static int pool_open(pool *pl, const char *path, int n, char *err,
                     size_t errcap)
{
    pl->db = calloc((size_t)n, sizeof *pl->db);
    pl->x = calloc((size_t)n, sizeof *pl->x);
    pl->idle = calloc((size_t)n, sizeof *pl->idle);
    if (pl->db == NULL || pl->x == NULL || pl->idle == NULL) {
        snprintf(err, errcap, "out of memory");
        return CQ_ENOMEM;
    }
    pthread_mutex_init(&pl->mu, NULL);
    pthread_cond_init(&pl->cv, NULL);
    pl->init = 1;
    for (int i = 0; i < n; i++) {
        int rc = open_db(path, SQLITE_OPEN_READONLY, &pl->db[i], err, errcap);
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

static void pool_close(pool *pl)
{
    for (int i = 0; i < pl->n; i++) {
        cq_exec_free(pl->x[i]);
        sqlite3_close(pl->db[i]);
    }
    free(pl->db);
    free(pl->x);
    free(pl->idle);
    if (pl->init) {
        pthread_mutex_destroy(&pl->mu);
        pthread_cond_destroy(&pl->cv);
    }
    memset(pl, 0, sizeof *pl);
}

static int pool_get(pool *pl)
{
    int i;

    pthread_mutex_lock(&pl->mu);
    while (pl->nidle == 0)
        pthread_cond_wait(&pl->cv, &pl->mu);
    i = pl->idle[--pl->nidle];
    pthread_mutex_unlock(&pl->mu);
    return i;
}

static void pool_put(pool *pl, int i)
{
    pthread_mutex_lock(&pl->mu);
    pl->idle[pl->nidle++] = i;
    pthread_cond_signal(&pl->cv);
    pthread_mutex_unlock(&pl->mu);
}

/* ---- applying events ----------------------------------------------------- */

/* Decode se (data, and metadata if need_meta) into pe. `data`, if not
 * NULL, is se->data already parsed (borrowed). CQ_OK or CQ_ECORRUPT. */
static int parse_event(const cq_domain *dom, const cq_stored_event *se,
                       const json_t *data, int need_meta, parsed *pe)
{
    int sv = se->schema_version;

    memset(pe, 0, sizeof *pe);
    if (data != NULL && !cq_domain_upcaster(dom, se->type, sv)) {
        pe->data = (json_t *)data;
        pe->borrowed = 1;
    } else {
        /* an old shape is upcast in place: on our own copy */
        int rc = CQ_OK;
        pe->data = data ? json_deep_copy(data)
                        : json_loads(se->data, JSON_REJECT_DUPLICATES, NULL);
        if (!json_is_object(pe->data))
            snprintf(pe->why, sizeof pe->why,
                     "stored data is not a JSON object");
        else if ((rc = cq_domain_upcast(dom, se->type, &sv, pe->data)) !=
                 CQ_OK) {
            snprintf(pe->why, sizeof pe->why,
                     "upcasting %.64s from schema version %d failed: %s",
                     se->type, sv, cq_strerror(rc));
            json_decref(pe->data);
            pe->data = NULL; /* reported as undecodable below */
        }
    }
    if (need_meta) {
        pe->meta = json_loads(se->metadata, JSON_REJECT_DUPLICATES, NULL);
        if (!json_is_object(pe->meta) && pe->why[0] == '\0')
            snprintf(pe->why, sizeof pe->why,
                     "stored metadata is not a JSON object");
    }
    cq_format_time(se->recorded_at, pe->when);
    memcpy(pe->day, pe->when, 10);
    pe->day[10] = '\0';
    pe->ev.stream_id = se->stream_id;
    pe->ev.version = se->version;
    pe->ev.position = se->position;
    pe->ev.type = se->type;
    pe->ev.time = pe->when;
    pe->ev.day = pe->day;
    pe->ev.data = pe->data;
    pe->ev.metadata = pe->meta;
    if (!json_is_object(pe->data) || (need_meta && !json_is_object(pe->meta)))
        return CQ_ECORRUPT;
    return CQ_OK;
}

static void parsed_clear(parsed *pe)
{
    if (!pe->borrowed)
        json_decref(pe->data);
    json_decref(pe->meta);
    pe->data = pe->meta = NULL;
}

/* Apply the decoded event pe (whose parse returned prc) to c->p through
 * c->x, in a savepoint of its own if c->sp is set. 0 to go on, 1 when the
 * projection failed (recorded in c). */
static int apply_parsed(apply_ctx *c, const cq_stored_event *se,
                        const parsed *pe, int prc)
{
    int rc = prc;

    if (rc != CQ_OK) {
        snprintf(c->error, sizeof c->error, "%s",
                 pe->why[0] ? pe->why : "stored event cannot be decoded");
        goto fail;
    }
    if (c->sp != NULL && step_done(c->sp) != CQ_OK) {
        snprintf(c->error, sizeof c->error, "savepoint: %s",
                 sqlite3_errmsg(cq_exec_db(c->x)));
        rc = CQ_EIO;
        goto fail;
    }
    if (c->p->code.apply != NULL) {
        cq_projection_event ev = {se->position, se->stream_id, se->version,
                                  se->type,     pe->when,      pe->day,
                                  pe->data,     pe->meta};
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
            step_done(c->rollback);
        step_done(c->release);
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
static int apply_event(void *arg, const cq_stored_event *se)
{
    apply_ctx *c = arg;
    parsed pe;
    int prc = parse_event(c->e->domain, se, NULL, c->p->needs_metadata, &pe);
    int stop = apply_parsed(c, se, &pe, prc);

    parsed_clear(&pe);
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
    b->prc[b->n] = parse_event(b->domain, se, NULL, b->need_meta, pe);
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
        parsed_clear(&b->pe[k]);
    }
    free(b->se);
    free(b->pe);
    free(b->prc);
}

void cq_eng_apply_events(apply_ctx *c, const batch *b, int64_t from)
{
    for (int k = 0; k < b->n && !c->failed; k++)
        if (b->se[k].position >= from)
            apply_parsed(c, &b->se[k], &b->pe[k], b->prc[k]);
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
        cq_waiters_advance(e->waits, p->index, last);
        return;
    }
    for (int k = 0; k < b->n; k++)
        if (b->se[k].position >= from && b->se[k].position <= last)
            applied[n++] =
                (cq_stream_applied){b->se[k].stream_id, b->se[k].version};
    cq_waiters_advance_streams(e->waits, p->index, last, applied, n);
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
    if (save_checkpoint(e->r_save, p, c.last, c.failed, c.error,
                        c.error_position, c.error_event) != CQ_OK) {
        snprintf(err, sizeof err, "%s", sqlite3_errmsg(e->rdb));
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
    /* SQLite may have rolled back already (a full disk, an I/O error) */
    if (!sqlite3_get_autocommit(e->rdb)) {
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
 * slow one). Returns 1 if it did any work, 0 if none was due, -1 when
 * read.db or the store failed (retried later). */
static int apply_round(cq_engine *e)
{
    proj **due = calloc((size_t)e->nprojs, sizeof *due);
    const cq_declared **decl = calloc((size_t)e->nprojs, sizeof *decl);
    int64_t *from = calloc((size_t)e->nprojs, sizeof *from);
    int64_t lowest = INT64_MAX, head;
    batch b;
    char err[256] = "";
    int n = 0, status = 1;

    memset(&b, 0, sizeof b);
    if (due == NULL || from == NULL || decl == NULL) {
        status = -1;
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
        status = 0;
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
        status = -1;
        goto done;
    }
    for (int i = 0; i < n; i++)
        if (apply_batch(e, due[i], decl[i], from[i], &b) != CQ_OK)
            status = -1;
done:
    cq_eng_batch_free(&b);
    free(due);
    free(decl);
    free(from);
    return status;
}

static int prepare_projection(proj *p, cq_exec *x, int reset, char *changed,
                              size_t changedcap, char *err, size_t errcap);

/* States of a control operation (cq_control.state). */
enum { CTL_QUEUED, CTL_CANCELLED, CTL_RUNNING, CTL_DONE };

/* Carry out control operation ctl on the projector thread and publish
 * the projection's new state and the operation's result. */
static void run_control(cq_engine *e, cq_control *ctl)
{
    proj *p = ctl->p;
    static const char skip_ddl[] =
        "CREATE TABLE IF NOT EXISTS cq_skipped_events (projection TEXT NOT "
        "NULL,"
        " position INTEGER NOT NULL, event_type TEXT, error TEXT,"
        " skipped_at INTEGER NOT NULL, PRIMARY KEY (projection, position))";
    char err[256] = "", sql[512];
    int op, rc = CQ_OK, paused, failed;
    int64_t epos, position;

    pthread_mutex_lock(&e->mu);
    op = ctl->op;
    paused = p->paused;
    failed = p->failed;
    epos = p->error_position;
    position = p->position;
    pthread_mutex_unlock(&e->mu);

    switch (op) {
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
        snprintf(sql, sizeof sql,
                 "UPDATE cq_projections SET status = '%s'%s WHERE name = '%s'",
                 failed   ? "failed"
                 : paused ? "paused"
                          : "running",
                 op == OP_RETRY ? ", error = NULL, error_position = NULL,"
                                  " error_event = NULL"
                                : "",
                 p->d->name);
        rc = cq_exec_sql(e->rx, sql, err, sizeof err);
        break;
    case OP_SKIP:
        if (!failed) {
            rc = CQ_ECONFLICT;
            snprintf(err, sizeof err, "%s has not failed", p->d->name);
            break;
        }
        rc = cq_exec_sql(e->rx, "BEGIN", err, sizeof err);
        if (rc == CQ_OK)
            rc = cq_exec_sql(e->rx, skip_ddl, err, sizeof err);
        if (rc == CQ_OK) {
            snprintf(
                sql, sizeof sql,
                "INSERT INTO cq_skipped_events SELECT name, error_position,"
                " error_event, error, %lld FROM cq_projections"
                " WHERE name = '%s' ON CONFLICT DO NOTHING",
                (long long)cq_now_ms(), p->d->name);
            rc = cq_exec_sql(e->rx, sql, err, sizeof err);
        }
        if (rc == CQ_OK) {
            snprintf(sql, sizeof sql,
                     "UPDATE cq_projections SET position = %lld, status = '%s',"
                     " error = NULL, error_position = NULL, error_event = NULL"
                     " WHERE name = '%s'",
                     (long long)epos, paused ? "paused" : "running",
                     p->d->name);
            rc = cq_exec_sql(e->rx, sql, err, sizeof err);
        }
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
        rc = prepare_projection(p, e->rx, 1, NULL, 0, err, sizeof err);
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
        cq_waiters_rewind(e->waits, p->index, 0);
    else if (rc == CQ_OK && op == OP_SKIP)
        cq_waiters_advance(e->waits, p->index, position);
}

/* Drop one reference to ctl (e->mu held); 1 when it is to be freed. */
static int control_unref(cq_control *ctl)
{
    return --ctl->refs == 0;
}

/* Carry out the control operations queued so far, oldest first, each
 * handed back to its caller with its own result; at stop, hand them back
 * not carried out (CQ_ECLOSED). Called and returns with e->mu held. */
static void run_controls(cq_engine *e, int stopping)
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

static void *projector_main(void *arg)
{
    cq_engine *e = arg;

    pthread_setname_np(pthread_self(), "cq-projector");
    pthread_mutex_lock(&e->mu);
    while (!e->stopping) {
        int did;

        run_controls(e, 0);
        pthread_mutex_unlock(&e->mu);
        did = apply_round(e);
        /* then one step of each rebuild, so that live projections wait
         * for at most one rebuild batch */
        for (int i = 0; i < e->nprojs; i++) {
            int r =
                e->projs[i]->rb.active ? cq_rebuild_step(e, e->projs[i]) : 0;
            if (r < 0)
                did = -1;
            else if (r > 0 && did == 0)
                did = 1;
        }
        pthread_mutex_lock(&e->mu);
        if (e->stopping)
            break;
        if (did < 0) {
            /* the store or read.db is failing: retry, but not in a spin */
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_nsec += 200 * 1000000;
            if (ts.tv_nsec >= 1000000000) {
                ts.tv_sec++;
                ts.tv_nsec -= 1000000000;
            }
            pthread_cond_timedwait(&e->cv, &e->mu, &ts);
        } else if (did == 0) {
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
    run_controls(e, 1);
    pthread_mutex_unlock(&e->mu);
    return NULL;
}

/* ---- writer hooks ----------------------------------------------------------
 */

/* Whether the error SQLite last reported on db leaves the transaction
 * unusable or says nothing about the event (a full disk, an I/O error, no
 * memory, a lock): then the batch must be rolled back rather than the
 * event refused. */
static int store_trouble(sqlite3 *db)
{
    switch (sqlite3_errcode(db) & 0xff) {
    case SQLITE_IOERR:
    case SQLITE_FULL:
    case SQLITE_NOMEM:
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
    case SQLITE_CORRUPT:
    case SQLITE_NOTADB:
    case SQLITE_CANTOPEN:
    case SQLITE_READONLY:
    case SQLITE_INTERRUPT: return 1;
    default: return sqlite3_get_autocommit(db);
    }
}

/* An inline read model must never fall behind the events: an event one of
 * them cannot apply is refused with its command (CQ_EREFUSED, why in err),
 * and the writer undoes the command's savepoint. */
static int hook_apply_inline(void *arg, const cq_stored_event *events,
                             const json_t *const *data, size_t n, char *err,
                             size_t errcap)
{
    cq_engine *e = arg;
    sqlite3 *db = cq_exec_db(e->ix);
    int need_meta = 0, live = 0, rc = CQ_OK;
    parsed *pe;

    for (int i = 0; i < e->nprojs; i++)
        if (e->projs[i]->is_inline && !e->projs[i]->failed) {
            live = 1;
            need_meta |= e->projs[i]->needs_metadata;
        }
    if (!live)
        return CQ_OK;
    pe = calloc(n, sizeof *pe);
    if (pe == NULL)
        return CQ_ENOMEM;
    for (size_t k = 0; k < n; k++)
        parse_event(e->domain, &events[k], data[k], need_meta, &pe[k]);

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
        if (step_done(e->i_sp) != CQ_OK) {
            rc = CQ_EIO;
            break;
        }
        for (size_t k = 0; k < n && !c.failed; k++) {
            int prc = json_is_object(pe[k].data) &&
                              (!p->needs_metadata || json_is_object(pe[k].meta))
                          ? CQ_OK
                          : CQ_ECORRUPT;
            apply_parsed(&c, &events[k], &pe[k], prc);
        }
        if (c.failed) {
            rc = store_trouble(db) ? CQ_EIO : CQ_EREFUSED;
            snprintf(err, errcap,
                     "inline projection %s cannot apply event %s at "
                     "position %lld: %s",
                     p->d->name, c.error_event, (long long)c.error_position,
                     c.error);
            step_done(e->i_rollback); /* the writer undoes the rest */
        }
        if (step_done(e->i_release) != CQ_OK)
            rc = CQ_EIO;
        if (sqlite3_get_autocommit(db))
            rc = CQ_EIO; /* SQLite rolled the whole transaction back */
    }
    for (size_t k = 0; k < n; k++)
        parsed_clear(&pe[k]);
    free(pe);
    return rc;
}

/* The inline projections have applied every event of the transaction, up
 * to head: write their checkpoints once per batch, with the events. */
static int hook_before_commit(void *arg, int64_t head)
{
    cq_engine *e = arg;

    for (int i = 0; i < e->nprojs; i++) {
        proj *p = e->projs[i];
        if (!p->is_inline || p->failed || p->saved >= head)
            continue;
        if (save_checkpoint(e->i_save, p, head, 0, NULL, 0, NULL) != CQ_OK)
            return CQ_EIO;
        /* p->saved moves in hook_committed: this batch may still fail */
    }
    return CQ_OK;
}

static void hook_committed(void *arg, int64_t head,
                           const cq_write_req *requests)
{
    cq_engine *e = arg;
    cq_stream_applied *applied = NULL;
    size_t n = 0, cap = 0;

    pthread_mutex_lock(&e->mu);
    if (head > e->head)
        e->head = head;
    for (int i = 0; i < e->nprojs; i++) {
        proj *p = e->projs[i];
        if (p->is_inline && !p->failed) {
            p->position = head;
            p->saved = head; /* before_commit wrote it in this batch */
        }
    }
    pthread_cond_signal(&e->cv);
    pthread_mutex_unlock(&e->mu);
    /* the streams the batch wrote: only their stream waiters look again */
    for (const cq_write_req *r = requests; r != NULL; r = r->next)
        cap += r->status >= 200 && r->status < 300 && r->version > 0;
    applied = cap ? malloc(cap * sizeof *applied) : NULL;
    for (const cq_write_req *r = requests; applied != NULL && r != NULL;
         r = r->next)
        if (r->status >= 200 && r->status < 300 && r->version > 0)
            applied[n++] = (cq_stream_applied){r->stream_id, r->version};
    for (int i = 0; i <= e->nprojs; i++) {
        proj *p = i < e->nprojs ? e->projs[i] : NULL;
        if (p != NULL && (!p->is_inline || p->failed))
            continue;
        if (applied != NULL || cap == 0)
            cq_waiters_advance_streams(e->waits, i, head, applied, n);
        else /* no memory for the list: every stream waiter looks again */
            cq_waiters_advance(e->waits, i, head);
    }
    free(applied);
}

cq_writer_hooks cq_engine_writer_hooks(cq_engine *e)
{
    cq_writer_hooks h = {hook_apply_inline, hook_before_commit, hook_committed,
                         e};
    return h;
}

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

int cq_engine_add(cq_engine *e, cq_declared *d, char *err, size_t errcap)
{
    proj *p, **v;

    for (int i = 0; i < e->nprojs; i++) {
        if (strcmp(e->projs[i]->d->name, d->name) == 0) {
            snprintf(err, errcap, "projection %s is declared twice", d->name);
            goto fail;
        }
        for (size_t k = 0; k < d->nqueries; k++)
            if (cq_declared_find_query(e->projs[i]->d, d->queries[k].name) !=
                NULL) {
                snprintf(err, errcap,
                         "query %s is declared by projections "
                         "%s and %s",
                         d->queries[k].name, e->projs[i]->d->name, d->name);
                goto fail;
            }
    }
    p = calloc(1, sizeof *p);
    v = realloc(e->projs, (size_t)(e->nprojs + 1) * sizeof *v);
    if (p == NULL || v == NULL) {
        free(p);
        if (v != NULL)
            e->projs = v;
        snprintf(err, errcap, "out of memory");
        cq_declared_free(d);
        return CQ_ENOMEM;
    }
    p->d = d;
    p->serving = d;
    p->index = e->nprojs;
    p->is_inline = d->mode == CQ_DECL_INLINE;
    for (size_t h = 0; h < d->nhandlers; h++)
        for (size_t s = 0; s < d->handlers[h].nstmts; s++)
            for (size_t k = 0; k < d->handlers[h].stmts[s].nparams; k++)
                if (strncmp(d->handlers[h].stmts[s].params[k], "metadata", 8) ==
                    0)
                    p->needs_metadata = 1;
    e->projs = v;
    e->projs[e->nprojs++] = p;
    return CQ_OK;
fail:
    cq_declared_free(d);
    return CQ_EINVAL;
}

int cq_engine_add_code(cq_engine *e, const char *text, size_t len,
                       const cq_projection_code *code, char *err, size_t errcap)
{
    cq_declared *d = NULL;
    char msg[512];
    int rc;

    rc = cq_declared_parse(text, len, &d, msg, sizeof msg);
    if (rc != CQ_OK) {
        snprintf(err, errcap, "%s:%s", code->name, msg);
        return rc;
    }
    if (strcmp(d->name, code->name) != 0 || d->nhandlers > 0) {
        snprintf(err, errcap,
                 "%s: the declared part must be @projection %s "
                 "with no @on blocks (events go to apply())",
                 code->name, code->name);
        cq_declared_free(d);
        return CQ_EINVAL;
    }
    rc = cq_engine_add(e, d, err, errcap);
    if (rc == CQ_OK) {
        proj *p = e->projs[e->nprojs - 1];
        p->code = *code;
        p->needs_metadata = 1;
        snprintf(p->source, sizeof p->source, "%s", code->name);
        p->text = strndup(text, len);
    }
    return rc;
}

int cq_engine_load_text(cq_engine *e, const char *name, const char *text,
                        size_t len, char *err, size_t errcap)
{
    cq_declared *d = NULL;
    char msg[512];
    int rc;

    rc = cq_declared_parse(text, len, &d, msg, sizeof msg);
    if (rc != CQ_OK) {
        snprintf(err, errcap, "%s:%s", name, msg);
        return rc;
    }
    rc = cq_engine_add(e, d, msg, sizeof msg);
    if (rc != CQ_OK)
        snprintf(err, errcap, "%s: %s", name, msg);
    else {
        proj *p = e->projs[e->nprojs - 1];
        snprintf(p->source, sizeof p->source, "%s", name);
        p->text = strndup(text, len);
    }
    return rc;
}

static int load_text_cb(void *arg, const char *name, const char *text,
                        size_t len, char *err, size_t errcap)
{
    return cq_engine_load_text(arg, name, text, len, err, errcap);
}

int cq_engine_load_dir(cq_engine *e, const char *dir, char *err, size_t errcap)
{
    return cq_declared_read_dir(dir, load_text_cb, e, err, errcap);
}

static const char *skip_blanks(const char *p)
{
    while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')
        p++;
    return p;
}

/* If p starts with the word w (any case, then a blank), the text after
 * it and its blanks; else NULL. */
static const char *word(const char *p, const char *w)
{
    size_t n = strlen(w);

    if (strncasecmp(p, w, n) != 0 ||
        !(p[n] == ' ' || p[n] == '\t' || p[n] == '\n' || p[n] == '\r'))
        return NULL;
    return skip_blanks(p + n);
}

int cq_eng_created(const char *sql, char *name, size_t cap)
{
    const char *p = word(skip_blanks(sql), "CREATE"), *q;
    int kind = 1;
    size_t n;

    if (p == NULL)
        return 0;
    if ((q = word(p, "UNIQUE")) != NULL)
        p = q;
    if ((q = word(p, "TABLE")) != NULL) {
        p = q;
    } else if ((q = word(p, "INDEX")) != NULL) {
        p = q;
        kind = 2;
    } else {
        return 0;
    }
    if ((q = word(p, "IF")) != NULL && (q = word(q, "NOT")) != NULL &&
        (q = word(q, "EXISTS")) != NULL)
        p = q;
    if (*p == '"')
        p++;
    for (n = 0; n + 1 < cap &&
                (p[n] == '_' || (p[n] >= 'a' && p[n] <= 'z') ||
                 (p[n] >= 'A' && p[n] <= 'Z') || (p[n] >= '0' && p[n] <= '9'));
         n++)
        name[n] = p[n];
    name[n] = '\0';
    return n > 0 ? kind : 0;
}

/* Give cq_projections (created before it was added) its source column. */
static int add_source_column(cq_exec *x, char *err, size_t errcap)
{
    sqlite3_stmt *st = NULL;

    if (sqlite3_prepare_v2(cq_exec_db(x), "SELECT source FROM cq_projections",
                           -1, &st, NULL) == SQLITE_OK) {
        sqlite3_finalize(st);
        return CQ_OK;
    }
    return cq_exec_sql(x, "ALTER TABLE cq_projections ADD COLUMN source TEXT",
                       err, errcap);
}

/* Drop the tables of d (if it is not NULL) in x's open transaction. */
static int drop_tables(cq_exec *x, const cq_declared *d, char *err,
                       size_t errcap)
{
    char name[128], sql[256];
    int rc = CQ_OK;

    for (size_t i = 0; rc == CQ_OK && d != NULL && i < d->nddl; i++) {
        if (cq_eng_created(d->ddl[i].sqlite_sql, name, sizeof name) != 1)
            continue;
        snprintf(sql, sizeof sql, "DROP TABLE IF EXISTS \"%s\"", name);
        rc = cq_exec_sql(x, sql, err, errcap);
    }
    return rc;
}

/* The definition p's live tables were built with, parsed from the source
 * text stored with their checkpoint, if it is usable for answering
 * queries and applying events to them (same name, asynchronous). */
static cq_declared *previous_definition(const proj *p, const char *text)
{
    cq_declared *d = NULL;
    char msg[256];

    if (text == NULL ||
        cq_declared_parse(text, strlen(text), &d, msg, sizeof msg) != CQ_OK)
        return NULL;
    if (strcmp(d->name, p->d->name) != 0 || d->mode != CQ_DECL_ASYNC) {
        cq_declared_free(d);
        return NULL;
    }
    return d;
}

/* Bring p's tables and checkpoint row in db (through x) to its declared
 * definition. New projections get their tables. When the version or the
 * source changed, an asynchronous projection keeps serving its live tables
 * (applying events with the definition they were built with, if read.db
 * holds its text) and `changed` gets the reason for the blue/green rebuild
 * the caller starts; an inline one (whose tables commit with the events,
 * before the server serves) is dropped and replayed in place, as is any
 * projection on `reset`. */
static int prepare_projection(proj *p, cq_exec *x, int reset, char *changed,
                              size_t changedcap, char *err, size_t errcap)
{
    sqlite3 *db = cq_exec_db(x);
    sqlite3_stmt *st = NULL;
    int found = 0, same = 0, rc;
    int64_t version = 0;
    char *text = NULL;

    if (changed != NULL && changedcap > 0)
        changed[0] = '\0';
    if (reset) {
        /* asked for (projector thread): the caller publishes the result */
        fprintf(stderr,
                "cqrsd: projection %s: reset; dropping its tables "
                "and replaying it from position 0\n",
                p->d->name);
        found = 1;
        goto rebuild;
    }
    if (prepare(db,
                "SELECT version, source_hash, position, status, error,"
                " error_position, error_event, source FROM cq_projections"
                " WHERE name = ?1",
                &st, err, errcap) != CQ_OK)
        return CQ_EIO;
    sqlite3_bind_text(st, 1, p->d->name, -1, SQLITE_STATIC);
    if (sqlite3_step(st) == SQLITE_ROW) {
        const char *hash = (const char *)sqlite3_column_text(st, 1);
        const char *status = (const char *)sqlite3_column_text(st, 3);
        const char *src = (const char *)sqlite3_column_text(st, 7);
        found = 1;
        version = sqlite3_column_int64(st, 0);
        same = version == p->d->version && hash &&
               strcmp(hash, p->d->source_hash) == 0;
        if (same || !p->is_inline) {
            p->position = sqlite3_column_int64(st, 2);
            p->paused = status && strcmp(status, "paused") == 0;
            p->failed = status && strcmp(status, "failed") == 0;
            if (p->failed) {
                const char *m = (const char *)sqlite3_column_text(st, 4);
                const char *t = (const char *)sqlite3_column_text(st, 6);
                p->error_position = sqlite3_column_int64(st, 5);
                snprintf(p->error, sizeof p->error, "%s", m ? m : "");
                snprintf(p->error_event, sizeof p->error_event, "%s",
                         t ? t : "");
            }
        }
        if (src == NULL && same && p->text != NULL)
            text = strdup(p->text); /* written below, for later rebuilds */
        else if (!same && !p->is_inline && src != NULL)
            p->prev = previous_definition(p, src);
    }
    sqlite3_finalize(st);
    if (same) {
        p->serving = p->d;
        if (text != NULL) {
            char sql[160];
            snprintf(sql, sizeof sql,
                     "UPDATE cq_projections SET source = ?1 WHERE name = '%s'",
                     p->d->name);
            rc = prepare(db, sql, &st, err, errcap);
            if (rc == CQ_OK) {
                sqlite3_bind_text(st, 1, text, -1, SQLITE_STATIC);
                rc = step_done(st);
                sqlite3_finalize(st);
            }
            free(text);
            return rc;
        }
        return CQ_OK;
    }
    if (found && !p->is_inline) {
        /* blue/green: the live tables serve until the rebuild swaps */
        p->serving = p->prev;
        p->frozen = p->prev == NULL || p->code.apply != NULL;
        if (version != p->d->version)
            snprintf(changed, changedcap, "version %lld -> %lld",
                     (long long)version, (long long)p->d->version);
        else
            snprintf(changed, changedcap, "source of version %lld changed",
                     (long long)version);
        fprintf(stderr,
                "cqrsd: projection %s changed (%s); its tables keep serving%s "
                "while a rebuild replays the new definition\n",
                p->d->name, changed, p->frozen ? " (without new events)" : "");
        return CQ_OK;
    }
    if (found)
        fprintf(stderr,
                "cqrsd: inline projection %s changed (version or source); "
                "dropping its tables and replaying it from position 0\n",
                p->d->name);
rebuild:
    rc = cq_exec_sql(x, "BEGIN IMMEDIATE", err, errcap);
    if (rc == CQ_OK && found)
        rc = drop_tables(x, p->d, err, errcap);
    if (rc == CQ_OK && found && p->prev != NULL)
        rc = drop_tables(x, p->prev, err, errcap);
    for (size_t i = 0; rc == CQ_OK && i < p->d->nddl; i++) {
        char msg[384];
        rc = cq_exec_sql(x, p->d->ddl[i].sqlite_sql, msg, sizeof msg);
        if (rc != CQ_OK)
            snprintf(err, errcap, "%s:%d: %s", p->source, p->d->ddl[i].line,
                     msg);
    }
    if (rc == CQ_OK) {
        rc = prepare(db,
                     "INSERT INTO cq_projections (name, version,"
                     " source_hash, position, status, updated_at, source)"
                     " VALUES (?1, ?2, ?3, 0, 'running', ?4, ?5)"
                     " ON CONFLICT (name) DO UPDATE SET version = ?2,"
                     " source_hash = ?3, position = 0, status = 'running',"
                     " error = NULL, error_position = NULL,"
                     " error_event = NULL, updated_at = ?4, source = ?5",
                     &st, err, errcap);
    }
    if (rc == CQ_OK) {
        sqlite3_bind_text(st, 1, p->d->name, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 2, p->d->version);
        sqlite3_bind_text(st, 3, p->d->source_hash, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 4, cq_now_ms());
        sqlite3_bind_text(st, 5, p->text, -1, SQLITE_STATIC);
        rc = step_done(st);
        if (rc != CQ_OK)
            snprintf(err, errcap, "%s", sqlite3_errmsg(db));
        sqlite3_finalize(st);
    }
    if (rc == CQ_OK)
        rc = cq_exec_sql(x, "COMMIT", err, errcap);
    if (rc != CQ_OK) {
        char ignore[64];
        cq_exec_sql(x, "ROLLBACK", ignore, sizeof ignore);
        return rc;
    }
    if (!reset) {
        p->position = 0;
        p->failed = 0;
        p->paused = 0;
        p->serving = p->d;
        p->frozen = 0;
    }
    return CQ_OK;
}

/* Prepare every handler and query statement of p once, on the connection
 * that will run it (x, after the DDL), so that an SQL error in a
 * projection file stops the server at start with the file and line
 * rather than failing the projection later. Handler statements stay
 * prepared in x's cache. */
static int check_statements(proj *p, cq_exec *x, char *err, size_t errcap)
{
    char msg[384];

    for (size_t h = 0; h < p->d->nhandlers; h++)
        for (size_t k = 0; k < p->d->handlers[h].nstmts; k++)
            if (cq_exec_prepare(x, &p->d->handlers[h].stmts[k], msg,
                                sizeof msg) != CQ_OK) {
                snprintf(err, errcap, "%s:%d: @on %s: %s", p->source,
                         p->d->handlers[h].stmts[k].line,
                         p->d->handlers[h].event_type,
                         sqlite3_errmsg(cq_exec_db(x)));
                return CQ_EINVAL;
            }
    for (size_t q = 0; q < p->d->nqueries; q++)
        for (size_t k = 0; k < p->d->queries[q].nstmts; k++) {
            const cq_decl_stmt *st = &p->d->queries[q].stmts[k];
            if (cq_exec_check(x, st->sqlite_sql, msg, sizeof msg) != CQ_OK) {
                snprintf(err, errcap, "%s:%d: query %s: %s", p->source,
                         st->line, p->d->queries[q].name, msg);
                return CQ_EINVAL;
            }
        }
    return CQ_OK;
}

/* The table of skipped events, in read.db (asynchronous projections, by
 * `skip`) and in events.db (inline projections, at start). */
#define SKIPPED_DDL                                                            \
    "CREATE TABLE IF NOT EXISTS cq_skipped_events (projection TEXT NOT NULL,"  \
    " position INTEGER NOT NULL, event_type TEXT, error TEXT,"                 \
    " skipped_at INTEGER NOT NULL, PRIMARY KEY (projection, position))"

/* p->skipped from the rows of cq_skipped_events in db (start). */
static int count_skipped(sqlite3 *db, proj *p, char *err, size_t errcap)
{
    sqlite3_stmt *st = NULL;
    int rc = prepare(db,
                     "SELECT count(*) FROM cq_skipped_events"
                     " WHERE projection = ?1",
                     &st, err, errcap);

    if (rc != CQ_OK)
        return rc;
    sqlite3_bind_text(st, 1, p->d->name, -1, SQLITE_STATIC);
    if (sqlite3_step(st) == SQLITE_ROW)
        p->skipped = sqlite3_column_int64(st, 0);
    else {
        snprintf(err, errcap, "counting skipped events: %s",
                 sqlite3_errmsg(db));
        rc = CQ_EIO;
    }
    sqlite3_finalize(st);
    return rc;
}

/* Record in events.db, in the open transaction, that inline projection p
 * skipped the event c failed on. */
static int record_inline_skip(cq_engine *e, proj *p, const apply_ctx *c,
                              char *err, size_t errcap)
{
    sqlite3 *db = cq_exec_db(e->ix);
    sqlite3_stmt *st = NULL;
    int rc = prepare(db,
                     "INSERT INTO cq_skipped_events (projection, position,"
                     " event_type, error, skipped_at) VALUES (?1, ?2, ?3, ?4,"
                     " ?5) ON CONFLICT DO NOTHING",
                     &st, err, errcap);

    if (rc != CQ_OK)
        return rc;
    sqlite3_bind_text(st, 1, p->d->name, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, c->error_position);
    sqlite3_bind_text(st, 3, c->error_event, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 4, c->error, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 5, cq_now_ms());
    rc = step_done(st);
    if (rc != CQ_OK)
        snprintf(err, errcap, "recording a skipped event: %s",
                 sqlite3_errmsg(db));
    sqlite3_finalize(st);
    return rc;
}

/* Apply every event after p's checkpoint to inline projection p, in
 * transactions of 1000 events, before the writer starts. Since the writer
 * refuses what an inline projection cannot apply, only events stored
 * before that rule (or a changed definition replaying old events) can
 * fail here; an inline read model must not stay behind its events, so
 * such an event is skipped: recorded in events.db's cq_skipped_events
 * (with the checkpoint that passes it, in one transaction), logged and
 * counted. */
static int catch_up_inline(cq_engine *e, proj *p, int64_t head, char *err,
                           size_t errcap)
{
    while (p->position < head) {
        apply_ctx c;
        int64_t h;
        int rc;

        memset(&c, 0, sizeof c);
        c.e = e;
        c.p = p;
        c.d = p->d;
        c.x = e->ix;
        c.sp = e->i_sp;
        c.release = e->i_release;
        c.rollback = e->i_rollback;
        c.last = p->position;
        rc = cq_exec_sql(e->ix, "BEGIN IMMEDIATE", err, errcap);
        if (rc == CQ_OK)
            rc = cq_store_read_all(e->store, p->position + 1, 1000, apply_event,
                                   &c, &h, err, errcap);
        if (rc == CQ_OK && c.failed) {
            rc = record_inline_skip(e, p, &c, err, errcap);
            c.last = c.error_position;
        }
        if (rc == CQ_OK)
            rc = save_checkpoint(e->i_save, p, c.last, 0, NULL, 0, NULL);
        if (rc == CQ_OK)
            rc = cq_exec_sql(e->ix, "COMMIT", err, errcap);
        if (rc != CQ_OK) {
            char ignore[64];
            cq_exec_sql(e->ix, "ROLLBACK", ignore, sizeof ignore);
            return rc;
        }
        p->position = c.last;
        if (c.failed) {
            p->skipped++;
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

static int prepare_savepoints(sqlite3 *db, const char *name, sqlite3_stmt **sp,
                              sqlite3_stmt **release, sqlite3_stmt **rollback,
                              char *err, size_t errcap)
{
    char sql[3][64];

    snprintf(sql[0], sizeof sql[0], "SAVEPOINT %s", name);
    snprintf(sql[1], sizeof sql[1], "RELEASE %s", name);
    snprintf(sql[2], sizeof sql[2], "ROLLBACK TO %s", name);
    if (prepare(db, sql[0], sp, err, errcap) != CQ_OK ||
        prepare(db, sql[1], release, err, errcap) != CQ_OK ||
        prepare(db, sql[2], rollback, err, errcap) != CQ_OK)
        return CQ_EIO;
    return CQ_OK;
}

int cq_engine_start(cq_engine *e, char *err, size_t errcap)
{
    char path[4200];
    sqlite3 *wdb = cq_store_write_handle(e->store);
    int64_t head = 0;
    int rc;

    if (strcmp(cq_store_backend(e->store), "sqlite") != 0) {
        snprintf(err, errcap, "projections need the sqlite store");
        return CQ_EINVAL;
    }
    snprintf(path, sizeof path, "%s/read.db", e->dir);
    rc = open_db(path, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, &e->rdb, err,
                 errcap);
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
        rc = add_source_column(e->rx, err, errcap);
    if (rc == CQ_OK)
        rc = add_source_column(e->ix, err, errcap);
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
        rc = prepare_projection(p, x, 0, changed, sizeof changed, err, errcap);
        if (rc == CQ_OK && !p->is_inline)
            rc = cq_rebuild_load(e, p, &resumable, err, errcap);
        if (rc == CQ_OK && (changed[0] != '\0' || resumable))
            rc = cq_rebuild_begin(e, p, changed[0] ? changed : "resumed", err,
                                  errcap);
        /* the new definition's statements run on the tables it builds */
        if (rc == CQ_OK)
            rc = check_statements(p, p->rb.active ? p->rb.x : x, err, errcap);
    }
    if (rc != CQ_OK)
        return rc;
    if (prepare(e->rdb, SQL_SAVE_CHECKPOINT, &e->r_save, err, errcap) ||
        prepare(wdb, SQL_SAVE_CHECKPOINT, &e->i_save, err, errcap) ||
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
        rc = count_skipped(p->is_inline ? wdb : e->rdb, p, err, errcap);
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
        rc = catch_up_inline(e, p, head, err, errcap);
        if (rc != CQ_OK)
            return rc;
        p->saved = p->position;
    }
    rc = pool_open(&e->reads, path, e->nreaders, err, errcap);
    if (rc == CQ_OK) {
        snprintf(path, sizeof path, "%s/events.db", e->dir);
        rc = pool_open(&e->events, path, e->nreaders, err, errcap);
    }
    if (rc != CQ_OK)
        return rc;
    e->waits = cq_waiters_new(e->nprojs + 1); /* + the store's head */
    if (e->waits == NULL) {
        snprintf(err, errcap, "cannot start the wait timer");
        return CQ_ENOMEM;
    }
    for (int i = 0; i < e->nprojs; i++)
        cq_waiters_advance(e->waits, i, e->projs[i]->position);
    cq_waiters_advance(e->waits, e->nprojs, head);
    e->head = head;
    snprintf(path, sizeof path, "%s/read.db", e->dir);
    rc = cq_wal_start(e->rdb, ENGINE_BUSY_TIMEOUT_MS, path, "cq-ckpt-read",
                      &e->wal, err, errcap);
    if (rc != CQ_OK)
        return rc;
    if (pthread_create(&e->projector, NULL, projector_main, e) != 0) {
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
    cq_waiters_shutdown(e->waits);
}

void cq_engine_free(cq_engine *e)
{
    if (e == NULL)
        return;
    cq_engine_stop(e);
    cq_waiters_free(e->waits);
    pool_close(&e->reads);
    pool_close(&e->events);
    sqlite3_finalize(e->r_save);
    sqlite3_finalize(e->r_rb_save);
    sqlite3_finalize(e->r_sp);
    sqlite3_finalize(e->r_release);
    sqlite3_finalize(e->r_rollback);
    sqlite3_finalize(e->i_save);
    sqlite3_finalize(e->i_sp);
    sqlite3_finalize(e->i_release);
    sqlite3_finalize(e->i_rollback);
    for (int i = 0; i < e->nprojs; i++)
        cq_rebuild_free(e->projs[i]); /* statements on read.db */
    cq_exec_free(e->rx);
    cq_exec_free(e->ix);
    cq_wal_free(e->wal); /* before read.db's writing connection closes */
    sqlite3_close(e->rdb);
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

/* ---- queries ---------------------------------------------------------------
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

int cq_engine_wait(cq_engine *e, int projection, int64_t target,
                   int64_t timeout_ms, cq_wait_cb cb, void *arg, cq_wait **out)
{
    int queue = projection == CQ_ENGINE_HEAD ? e->nprojs : projection;
    return cq_waiters_add(e->waits, queue, target, timeout_ms, cb, arg, out);
}

void cq_engine_wait_stats(cq_engine *e, int *pending, int64_t *checked)
{
    *pending = cq_waiters_pending(e->waits);
    *checked = cq_waiters_checked(e->waits);
}

int cq_engine_wait_stream(cq_engine *e, int projection, const char *stream_id,
                          int64_t version, int64_t seen, int64_t timeout_ms,
                          cq_wait_cb cb, void *arg, cq_wait **out)
{
    int queue = projection == CQ_ENGINE_HEAD ? e->nprojs : projection;
    return cq_waiters_add_stream(e->waits, queue, stream_id, version, seen,
                                 timeout_ms, cb, arg, out);
}

/* Run a statement returning one integer through x (its prepared form is
 * cached): ?1 is `text` (if not NULL), ?2 is `a`. CQ_OK with *out,
 * CQ_ENOTFOUND (no row or NULL), or CQ_EIO. */
static int query_int(cq_exec *x, const char *sql, const char *text, int64_t a,
                     int64_t *out)
{
    char err[128];
    sqlite3_stmt *st = cq_exec_stmt(x, sql, err, sizeof err);
    int rc = CQ_ENOTFOUND;

    if (st == NULL)
        return CQ_EIO;
    if (text != NULL)
        sqlite3_bind_text(st, 1, text, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, a);
    switch (sqlite3_step(st)) {
    case SQLITE_ROW:
        if (sqlite3_column_type(st, 0) != SQLITE_NULL) {
            *out = sqlite3_column_int64(st, 0);
            rc = CQ_OK;
        }
        break;
    case SQLITE_DONE: break;
    default: rc = CQ_EIO;
    }
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return rc;
}

static const char SQL_VERSION_POSITION[] =
    "SELECT position FROM events WHERE stream_id = ?1 AND version = ?2";
static const char SQL_RECORDED_AT[] =
    "SELECT recorded_at FROM events WHERE position = ?2";
static const char SQL_VERSION_AT[] =
    "SELECT max(version) FROM events WHERE stream_id = ?1 AND position <= ?2";
static const char SQL_CHECKPOINT[] =
    "SELECT position, status FROM cq_projections WHERE name = ?1";

int cq_engine_version_position(cq_engine *e, const char *stream_id,
                               int64_t version, int64_t *position, char *err,
                               size_t errcap)
{
    int i = pool_get(&e->events);
    int rc = query_int(e->events.x[i], SQL_VERSION_POSITION, stream_id, version,
                       position);
    if (rc == CQ_EIO)
        snprintf(err, errcap, "%s", sqlite3_errmsg(e->events.db[i]));
    pool_put(&e->events, i);
    return rc;
}

/* Collects rows into an array. */
static int collect_row(void *arg, json_t *row)
{
    return json_array_append_new(arg, row) != 0;
}

/* Run q on x and shape its answer (see cq_decl_result). */
static int shape(cq_exec *x, const cq_decl_query *q, const char *const *values,
                 json_t **data, char *err, size_t errcap)
{
    json_t *out = NULL, *rows = NULL;
    int rc = CQ_OK;

    *data = NULL;
    if (q->result == CQ_RESULT_SECTIONS) {
        out = json_object();
        for (size_t i = 0; out != NULL && rc == CQ_OK && i < q->nstmts; i++) {
            rows = json_array();
            if (rows == NULL)
                break;
            rc = cq_exec_query(x, q, &q->stmts[i], values, collect_row, rows,
                               err, errcap);
            json_object_set_new(out, q->section_names[i], rows);
            rows = NULL; /* the object owns it now */
        }
        if (out == NULL)
            rc = CQ_ENOMEM;
        goto done;
    }
    rows = json_array();
    if (rows == NULL)
        return CQ_ENOMEM;
    rc = cq_exec_query(x, q, &q->stmts[0], values, collect_row, rows, err,
                       errcap);
    if (rc != CQ_OK)
        goto done;
    switch (q->result) {
    case CQ_RESULT_ONE:
        out =
            json_array_size(rows) ? json_incref(json_array_get(rows, 0)) : NULL;
        break;
    case CQ_RESULT_LIST: out = json_incref(rows); break;
    case CQ_RESULT_PAGE: {
        int64_t limit = 0;
        json_t *next = json_null();
        for (size_t i = 0; i < q->nparams; i++)
            if (strcmp(q->params[i].name, "limit") == 0 && values[i])
                limit = strtoll(values[i], NULL, 10);
        if (limit > 0 && (int64_t)json_array_size(rows) >= limit) {
            json_t *last = json_array_get(rows, json_array_size(rows) - 1);
            json_t *c = json_object_get(last, q->cursor_column);
            if (c != NULL)
                next = json_incref(c);
        }
        out = json_pack("{s:O,s:o}", q->page_field, rows, "next", next);
        break;
    }
    default: break;
    }
done:
    json_decref(rows);
    if (rc != CQ_OK) {
        json_decref(out);
        return rc;
    }
    *data = out;
    return CQ_OK;
}

/* lag_ms: age of the first event the projection has not applied. */
static double lag_ms(cq_engine *e, int64_t position, int64_t head)
{
    int64_t at = 0;
    int i;

    if (position >= head)
        return 0;
    i = pool_get(&e->events);
    if (query_int(e->events.x[i], SQL_RECORDED_AT, NULL, position + 1, &at) !=
        CQ_OK)
        at = 0;
    pool_put(&e->events, i);
    if (at == 0)
        return 0;
    int64_t now = cq_now_ms();
    return now > at ? (double)(now - at) : 0;
}

static int64_t stream_version_at(cq_engine *e, const char *stream_id,
                                 int64_t position)
{
    int64_t v = 0;
    int i = pool_get(&e->events);

    if (query_int(e->events.x[i], SQL_VERSION_AT, stream_id, position, &v) !=
        CQ_OK)
        v = 0;
    pool_put(&e->events, i);
    return v;
}

/* q's values for query oq of another definition of the same projection,
 * matched by parameter name (oq's default where q has no such
 * parameter). A new array of borrowed strings, or NULL when oq needs a
 * value it cannot be given (*ok = 0) or on no memory (*ok = 1). */
static const char **map_values(const cq_decl_query *q,
                               const char *const *values,
                               const cq_decl_query *oq, int *ok)
{
    const char **v = calloc(oq->nparams + 1, sizeof *v);

    *ok = 1;
    for (size_t j = 0; v != NULL && j < oq->nparams; j++) {
        for (size_t i = 0; i < q->nparams; i++)
            if (strcmp(q->params[i].name, oq->params[j].name) == 0)
                v[j] = values[i];
        if (v[j] == NULL)
            v[j] = oq->params[j].def;
        if (v[j] == NULL && oq->params[j].required) {
            *ok = 0;
            free(v);
            return NULL;
        }
    }
    return v;
}

/* Run q (or, while the live tables are those of an older definition, its
 * namesake there) in one read snapshot with the checkpoint. */
static int run_query(cq_engine *e, proj *p, const cq_declared *serving,
                     const cq_decl_query *q, const char *const *values,
                     json_t **data, cq_freshness *fresh, char *err,
                     size_t errcap)
{
    pool *pl = p->is_inline ? &e->events : &e->reads;
    const char **mapped = NULL;
    sqlite3_stmt *st = NULL;
    int i, rc, ok;

    if (serving != NULL && serving != p->d) {
        const cq_decl_query *oq = cq_declared_find_query(serving, q->name);
        mapped = oq ? map_values(q, values, oq, &ok) : NULL;
        if (mapped == NULL) {
            snprintf(err, errcap,
                     oq == NULL || !ok
                         ? "projection %s is being rebuilt to version %lld;"
                           " until it is done its tables are those of version"
                           " %lld, which cannot answer query %s"
                         : "out of memory",
                     p->d->name, (long long)p->d->version,
                     (long long)serving->version, q->name);
            return oq == NULL || !ok ? CQ_EBUSY : CQ_ENOMEM;
        }
        q = oq;
        values = mapped;
    }
    i = pool_get(pl);
    rc = cq_exec_sql(pl->x[i], "BEGIN", err, errcap);
    if (rc != CQ_OK)
        goto done;
    /* the checkpoint, from the same snapshot as the rows */
    st = cq_exec_stmt(pl->x[i], SQL_CHECKPOINT, err, errcap);
    if (st == NULL) {
        rc = CQ_EIO;
        goto rollback;
    }
    sqlite3_bind_text(st, 1, p->d->name, -1, SQLITE_STATIC);
    if (sqlite3_step(st) == SQLITE_ROW) {
        const char *status = (const char *)sqlite3_column_text(st, 1);
        fresh->position = sqlite3_column_int64(st, 0);
        fresh->failed = status && strcmp(status, "failed") == 0;
    }
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    rc = shape(pl->x[i], q, values, data, err, errcap);
rollback : {
    char ignore[64];
    cq_exec_sql(pl->x[i], "COMMIT", ignore, sizeof ignore);
}
done:
    pool_put(pl, i);
    free(mapped);
    return rc;
}

int cq_engine_run_query(cq_engine *e, int projection, const cq_decl_query *q,
                        const char *const *values, const char *stream_id,
                        json_t **data, cq_freshness *fresh,
                        int64_t *stream_version, char *err, size_t errcap)
{
    proj *p = e->projs[projection];
    const cq_declared *serving, *now;
    int rc;

    memset(fresh, 0, sizeof *fresh);
    *data = NULL;
    pthread_mutex_lock(&e->mu);
    serving = p->serving;
    pthread_mutex_unlock(&e->mu);
    rc = run_query(e, p, serving, q, values, data, fresh, err, errcap);
    if (rc == CQ_EIO && serving != p->d) {
        /* A rebuild to a new definition may have swapped its tables in
         * between: then ask again, of them. Else the old tables do not
         * answer the new query (their definition is unknown). */
        pthread_mutex_lock(&e->mu);
        now = p->serving;
        pthread_mutex_unlock(&e->mu);
        if (now != serving)
            rc = run_query(e, p, now, q, values, data, fresh, err, errcap);
        else
            rc = CQ_EBUSY;
    }
    if (rc != CQ_OK)
        return rc;
    pthread_mutex_lock(&e->mu);
    fresh->head = e->head;
    fresh->failed |= p->failed;
    pthread_mutex_unlock(&e->mu);
    if (fresh->head < fresh->position)
        fresh->head = fresh->position;
    fresh->lag_events = fresh->head - fresh->position;
    fresh->lag_ms = lag_ms(e, fresh->position, fresh->head);
    if (stream_version != NULL)
        *stream_version =
            stream_id ? stream_version_at(e, stream_id, fresh->position) : 0;
    return CQ_OK;
}

/* Replay context for strong reads. */
typedef struct replay_ctx {
    apply_ctx c;
    int64_t count;
} replay_ctx;

static int replay_event(void *arg, const cq_stored_event *se)
{
    replay_ctx *r = arg;
    r->count++;
    return apply_event(&r->c, se);
}

int cq_engine_run_strong(cq_engine *e, int projection, const cq_decl_query *q,
                         const char *const *values, const char *stream_id,
                         json_t **data, cq_freshness *fresh,
                         int64_t *stream_version, char *err, size_t errcap)
{
    proj *p = e->projs[projection];
    sqlite3 *mem = NULL;
    cq_exec *x = NULL;
    replay_ctx r;
    int64_t from = 1, version = 0;
    int rc;

    memset(fresh, 0, sizeof *fresh);
    *data = NULL;
    rc = open_db(":memory:", SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, &mem,
                 err, errcap);
    if (rc != CQ_OK)
        return rc;
    x = cq_exec_new(mem);
    if (x == NULL) {
        rc = CQ_ENOMEM;
        goto done;
    }
    for (size_t i = 0; rc == CQ_OK && i < p->d->nddl; i++)
        rc = cq_exec_sql(x, p->d->ddl[i].sqlite_sql, err, errcap);
    if (rc != CQ_OK)
        goto done;
    memset(&r, 0, sizeof r);
    r.c.e = e;
    r.c.p = p;
    r.c.d = p->d;
    r.c.x = x;
    do {
        r.count = 0;
        rc = cq_store_read_stream(e->store, stream_id, from, 1000, replay_event,
                                  &r, &version, err, errcap);
        from += r.count;
    } while (rc == CQ_OK && !r.c.failed && r.count == 1000);
    if (rc == CQ_ENOTFOUND) {
        rc = CQ_OK; /* no stream: the projection of nothing */
        version = 0;
    }
    if (rc != CQ_OK)
        goto done;
    if (r.c.failed) {
        snprintf(err, errcap,
                 "replaying %s through %s failed at position "
                 "%lld: %s",
                 stream_id, p->d->name, (long long)r.c.error_position,
                 r.c.error);
        rc = CQ_EIO;
        goto done;
    }
    rc = shape(x, q, values, data, err, errcap);
    if (rc != CQ_OK)
        goto done;
    fresh->position = r.c.last;
    fresh->head = cq_engine_head(e);
    *stream_version = version;
done:
    cq_exec_free(x);
    sqlite3_close(mem);
    return rc;
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
    out->lag_seconds = lag_ms(e, out->position, out->head) / 1000.0;
    return CQ_OK;
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
