/*
 * rebuild.c -- blue/green rebuilds of asynchronous projections.
 *
 * A rebuild builds a projection's tables a second time, from position 0,
 * under shadow names in read.db, while the live tables keep answering
 * queries and following new events; once the shadow tables have caught up
 * with the head, ONE transaction swaps them in:
 *
 *   1. begin: the projection's DDL runs through an executor that renames
 *      (rename.h) every table T to T__cq_shadow and every index I to a name
 *      no index has yet (I, or I__cqN: see shadow_map); a row in
 *      cq_rebuilds records the shadow's checkpoint;
 *   2. step (projector thread, after each round of live batches): up to
 *      10 x batch events go into the shadow tables with the projection's
 *      own handlers, and the shadow checkpoint moves in the same
 *      transaction. A handler error gives the rebuild up (step 4);
 *   3. swap, once the shadow has reached the head: in one transaction
 *      every live table T becomes T__cq_old, every T__cq_shadow becomes T,
 *      and the checkpoint takes the shadow's position and the new
 *      definition; the rebuild is logged in cq_rebuild_log. The old tables
 *      are dropped in a transaction of their own just after;
 *   4. abort: the shadow tables are dropped and the failure is logged.
 *
 * Queries read the live tables until the swap commits and the new ones
 * right after (each query reads its rows and checkpoint in one snapshot),
 * so none sees partial tables. A crash loses nothing either: an unfinished
 * rebuild of the same definition resumes from its checkpoint at start,
 * any other is dropped, and old tables left between swap and drop are
 * dropped at start.
 *
 *   | table          | holds                                            |
 *   |----------------|--------------------------------------------------|
 *   | cq_rebuilds    | the rebuild in progress per projection: the      |
 *   |                | definition it builds, shadow index generation,   |
 *   |                | position, reason, started_at                     |
 *   | cq_rebuild_log | every rebuild that ended: started_at,            |
 *   |                | finished_at, events, outcome, error              |
 *
 * Threads: everything here runs on the projector thread (or in
 * cq_engine_start before it runs) on read.db's write connection; fields
 * of proj.rb that other threads read are published under e->mu.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/base.h"
#include "projection/engine_int.h"

#define SHADOW_SUFFIX "__cq_shadow"
#define OLD_SUFFIX "__cq_old"

/* BIGINT: 64 bits on PostgreSQL, INTEGER affinity on SQLite. The log's
 * rows are read back newest first: by rowid on SQLite, by an identity
 * column on PostgreSQL, which has no rowid (and whose ctid order is not
 * the insertion order). */
#define REBUILDS_DDL                                                           \
    "CREATE TABLE IF NOT EXISTS cq_rebuilds ("                                 \
    " name TEXT PRIMARY KEY, version BIGINT NOT NULL,"                         \
    " source_hash TEXT NOT NULL, index_gen BIGINT NOT NULL,"                   \
    " position BIGINT NOT NULL, reason TEXT NOT NULL,"                         \
    " started_at BIGINT NOT NULL, updated_at BIGINT NOT NULL);"
#define REBUILD_LOG_COLUMNS                                                    \
    " name TEXT NOT NULL, version BIGINT NOT NULL,"                            \
    " started_at BIGINT NOT NULL, finished_at BIGINT NOT NULL,"                \
    " events BIGINT NOT NULL, outcome TEXT NOT NULL, reason TEXT,"             \
    " error TEXT)"

static const char REBUILD_DDL_SQLITE[] = REBUILDS_DDL
    "CREATE TABLE IF NOT EXISTS cq_rebuild_log (" REBUILD_LOG_COLUMNS;
static const char REBUILD_DDL_PG[] = REBUILDS_DDL
    "CREATE TABLE IF NOT EXISTS cq_rebuild_log ("
    " seq BIGINT GENERATED ALWAYS AS IDENTITY," REBUILD_LOG_COLUMNS;

static const char SQL_RB_SAVE[] =
    "UPDATE cq_rebuilds SET position = ?2, updated_at = ?3 WHERE name = ?1";

/* Run sql (printf-style) on read.db's write connection, unrenamed. */
static int exec_f(cq_engine *e, char *err, size_t errcap, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int exec_f(cq_engine *e, char *err, size_t errcap, const char *fmt, ...)
{
    char sql[1024];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(sql, sizeof sql, fmt, ap);
    va_end(ap);
    return cq_exec_sql(e->rx, sql, err, errcap);
}

/* Forget p's rebuild checkpoint (in the caller's transaction); the name
 * is bound, never formatted into the SQL. */
static int forget_rebuild(cq_engine *e, const proj *p, char *err, size_t errcap)
{
    cq_rstmt *st = NULL;
    int rc = cq_eng_prepare(e->rdb, "DELETE FROM cq_rebuilds WHERE name = ?1",
                            &st, err, errcap);

    if (rc != CQ_OK)
        return rc;
    cq_rstmt_bind_text(st, 1, p->d->name, -1);
    rc = cq_eng_step_done(st);
    if (rc != CQ_OK)
        snprintf(err, errcap, "%s", cq_rdb_errmsg(e->rdb));
    cq_rstmt_finalize(st);
    return rc;
}

static void rollback(cq_engine *e)
{
    char ignore[64];
    cq_exec_sql(e->rx, "ROLLBACK", ignore, sizeof ignore);
}

/* Is there a schema object called name (names compare without regard
 * to case)? 0 also when it cannot be told. */
static int object_exists(cq_engine *e, const char *name)
{
    int found = 0;

    return cq_rdb_object_exists(e->rdb, name, &found) == CQ_OK && found;
}

/* Keep a copy of each table name in the string list arg (old tables). */
typedef struct names {
    char **v;
    size_t n;
} names;

static int collect_name(void *arg, const char *name)
{
    names *l = arg;
    char **v = realloc(l->v, (l->n + 1) * sizeof *v);

    if (v == NULL)
        return 1;
    l->v = v;
    if ((v[l->n] = strdup(name)) != NULL)
        l->n++;
    return 0;
}

int cq_rebuild_init(cq_engine *e, char *err, size_t errcap)
{
    names old = {NULL, 0};
    int rc = cq_exec_sql(
        e->rx, cq_exec_dialect(e->rdb, REBUILD_DDL_SQLITE, REBUILD_DDL_PG), err,
        errcap);

    if (rc == CQ_OK)
        rc = cq_eng_prepare(e->rdb, SQL_RB_SAVE, &e->r_rb_save, err, errcap);
    if (rc != CQ_OK)
        return rc;
    /* old tables a crash left between a swap and their drop: nothing can
     * use them any more */
    if (cq_rdb_tables(e->rdb, OLD_SUFFIX, collect_name, &old, err, errcap) !=
        CQ_OK) {
        snprintf(err, errcap, "looking for old tables: %s",
                 cq_rdb_errmsg(e->rdb));
        rc = CQ_EIO; /* what was collected is freed below */
    }
    for (size_t i = 0; i < old.n; i++) {
        if (rc == CQ_OK) {
            rc =
                exec_f(e, err, errcap, "DROP TABLE IF EXISTS \"%s\"", old.v[i]);
            fprintf(stderr, "cqrsd: dropped %s, left by an earlier swap\n",
                    old.v[i]);
        }
        free(old.v[i]);
    }
    free(old.v);
    return rc;
}

void cq_rebuild_free(proj *p)
{
    cq_exec_free(p->rb.x);
    p->rb.x = NULL;
    for (size_t i = 0; i < p->rb.nmap; i++) {
        free((char *)p->rb.map[i].from);
        free((char *)p->rb.map[i].to);
    }
    free(p->rb.map);
    p->rb.map = NULL;
    p->rb.nmap = p->rb.ntables = 0;
}

/* The name index `name` gets in generation gen: the declared name in
 * generation 0, name__cqGEN after. */
static void index_name(const char *name, int64_t gen, char *out, size_t cap)
{
    if (gen == 0)
        snprintf(out, cap, "%s", name);
    else
        snprintf(out, cap, "%s__cq%lld", name, (long long)gen);
}

/* p->rb.map for generation gen: every table T of p->d to T__cq_shadow
 * (first), every index to its generation-gen name. Shadow indexes cannot
 * keep the declared names, which the live tables' indexes may hold; as
 * SQLite cannot rename an index, a swapped-in table keeps its shadow index
 * names, and the next rebuild takes the first generation (0, 1, 2, ...)
 * whose names are all free. */
static int shadow_map(proj *p, int64_t gen)
{
    char name[128], to[160];
    size_t n = p->d->nddl;

    cq_rebuild_free(p);
    p->rb.map = calloc(n ? n : 1, sizeof *p->rb.map);
    if (p->rb.map == NULL)
        return CQ_ENOMEM;
    for (int kind = 1; kind <= 2; kind++)
        for (size_t i = 0; i < n; i++) {
            cq_rename *r = &p->rb.map[p->rb.nmap];
            if (cq_eng_created(p->d->ddl[i].sqlite_sql, name, sizeof name) !=
                kind)
                continue;
            if (kind == 1)
                snprintf(to, sizeof to, "%s" SHADOW_SUFFIX, name);
            else
                index_name(name, gen, to, sizeof to);
            r->from = strdup(name);
            r->to = strdup(to);
            if (r->from == NULL || r->to == NULL) {
                free((char *)r->from);
                free((char *)r->to);
                return CQ_ENOMEM;
            }
            p->rb.nmap++;
            if (kind == 1)
                p->rb.ntables++;
        }
    p->rb.gen = gen;
    return CQ_OK;
}

/* The first index generation whose names are all free. */
static int64_t free_generation(cq_engine *e, proj *p)
{
    char name[128], cand[160];

    for (int64_t gen = 0;; gen++) {
        int taken = 0;
        for (size_t i = 0; i < p->d->nddl && !taken; i++) {
            if (cq_eng_created(p->d->ddl[i].sqlite_sql, name, sizeof name) != 2)
                continue;
            index_name(name, gen, cand, sizeof cand);
            taken = object_exists(e, cand);
        }
        if (!taken)
            return gen;
    }
}

/* Drop the tables of d (if not NULL) named with `suffix`, and so their
 * indexes, in the open transaction. */
static int drop_suffixed(cq_engine *e, const cq_declared *d, const char *suffix,
                         char *err, size_t errcap)
{
    char name[128];
    int rc = CQ_OK;

    for (size_t i = 0; rc == CQ_OK && d != NULL && i < d->nddl; i++)
        if (cq_eng_created(d->ddl[i].sqlite_sql, name, sizeof name) == 1)
            rc = exec_f(e, err, errcap, "DROP TABLE IF EXISTS \"%s%s\"", name,
                        suffix);
    return rc;
}

/* Drop p's shadow tables in the open transaction. */
static int drop_shadow(cq_engine *e, proj *p, char *err, size_t errcap)
{
    return drop_suffixed(e, p->d, SHADOW_SUFFIX, err, errcap);
}

int cq_rebuild_load(cq_engine *e, proj *p, int *resumable, char *err,
                    size_t errcap)
{
    cq_rstmt *st = NULL;
    char ignore[128];
    int rc = CQ_OK;

    *resumable = 0;
    if (cq_rdb_prepare(
            e->rdb,
            cq_exec_dialect(e->rdb,
                            "SELECT started_at, finished_at, events, version,"
                            " outcome, error FROM cq_rebuild_log"
                            " WHERE name = ?1 ORDER BY rowid DESC LIMIT 1",
                            "SELECT started_at, finished_at, events, version,"
                            " outcome, error FROM cq_rebuild_log"
                            " WHERE name = ?1 ORDER BY seq DESC LIMIT 1"),
            0, &st, ignore, sizeof ignore) == CQ_OK) {
        cq_rstmt_bind_text(st, 1, p->d->name, -1);
        if (cq_rstmt_step(st) == CQ_RSTEP_ROW) {
            const char *o = cq_rstmt_column_text(st, 4);
            const char *m = cq_rstmt_column_text(st, 5);
            p->last.started_ms = cq_rstmt_column_int(st, 0);
            p->last.finished_ms = cq_rstmt_column_int(st, 1);
            p->last.events = cq_rstmt_column_int(st, 2);
            p->last.version = cq_rstmt_column_int(st, 3);
            snprintf(p->last.outcome, sizeof p->last.outcome, "%s",
                     o ? o : "done");
            snprintf(p->last.error, sizeof p->last.error, "%s", m ? m : "");
        }
    }
    cq_rstmt_finalize(st);
    st = NULL;
    if (cq_rdb_prepare(e->rdb,
                       "SELECT version, source_hash, index_gen, position,"
                       " reason, started_at FROM cq_rebuilds"
                       " WHERE name = ?1",
                       0, &st, err, errcap) != CQ_OK) {
        snprintf(err, errcap, "%s", cq_rdb_errmsg(e->rdb));
        return CQ_EIO;
    }
    cq_rstmt_bind_text(st, 1, p->d->name, -1);
    if (cq_rstmt_step(st) == CQ_RSTEP_ROW) {
        const char *hash = cq_rstmt_column_text(st, 1);
        const char *why = cq_rstmt_column_text(st, 4);
        if (cq_rstmt_column_int(st, 0) == p->d->version && hash != NULL &&
            strcmp(hash, p->d->source_hash) == 0) {
            *resumable = 1;
            p->rb.resume = 1;
            p->rb.gen = cq_rstmt_column_int(st, 2);
            p->rb.position = cq_rstmt_column_int(st, 3);
            snprintf(p->rb.reason, sizeof p->rb.reason, "%s", why ? why : "");
            p->rb.started_ms = cq_rstmt_column_int(st, 5);
        }
    }
    cq_rstmt_finalize(st);
    if (*resumable)
        return CQ_OK;
    /* a rebuild of another definition, or none: drop what may be left */
    rc = cq_exec_sql(e->rx, "BEGIN IMMEDIATE", err, errcap);
    if (rc == CQ_OK)
        rc = drop_shadow(e, p, err, errcap);
    if (rc == CQ_OK)
        rc = forget_rebuild(e, p, err, errcap);
    if (rc == CQ_OK)
        rc = cq_exec_sql(e->rx, "COMMIT", err, errcap);
    if (rc != CQ_OK)
        rollback(e);
    return rc;
}

int cq_rebuild_begin(cq_engine *e, proj *p, const char *reason, char *err,
                     size_t errcap)
{
    int64_t now = cq_now_ms(), position = 0, started = now;
    int resume = p->rb.resume;
    char why[sizeof p->rb.reason];
    int rc;

    p->rb.resume = 0;
    if (resume) {
        position = p->rb.position;
        started = p->rb.started_ms;
        rc = shadow_map(p, p->rb.gen);
    } else {
        rc = cq_exec_sql(e->rx, "BEGIN IMMEDIATE", err, errcap);
        if (rc == CQ_OK)
            rc = drop_shadow(e, p, err, errcap);
        if (rc == CQ_OK)
            rc = shadow_map(p, free_generation(e, p));
    }
    if (rc == CQ_OK) {
        p->rb.x = cq_exec_new_renamed(e->rdb, p->rb.map, p->rb.nmap);
        if (p->rb.x == NULL)
            rc = CQ_ENOMEM;
    }
    if (rc == CQ_ENOMEM)
        snprintf(err, errcap, "out of memory");
    for (size_t i = 0; rc == CQ_OK && !resume && i < p->d->nddl; i++) {
        char msg[384];
        rc = cq_exec_sql(p->rb.x, cq_exec_text(e->rdb, &p->d->ddl[i]), msg,
                         sizeof msg);
        if (rc != CQ_OK)
            snprintf(err, errcap, "%s:%d: shadow table: %s", p->source,
                     p->d->ddl[i].line, msg);
    }
    if (rc == CQ_OK && !resume) {
        cq_rstmt *st = NULL;
        rc = cq_eng_prepare(e->rdb,
                            "INSERT INTO cq_rebuilds (name, version,"
                            " source_hash, index_gen, position, reason,"
                            " started_at, updated_at)"
                            " VALUES (?1, ?2, ?3, ?4, 0, ?5, ?6, ?6)"
                            " ON CONFLICT (name) DO UPDATE SET"
                            " version = excluded.version,"
                            " source_hash = excluded.source_hash,"
                            " index_gen = excluded.index_gen, position = 0,"
                            " reason = excluded.reason,"
                            " started_at = excluded.started_at,"
                            " updated_at = excluded.updated_at",
                            &st, err, errcap);
        if (rc == CQ_OK) {
            cq_rstmt_bind_text(st, 1, p->d->name, -1);
            cq_rstmt_bind_int(st, 2, p->d->version);
            cq_rstmt_bind_text(st, 3, p->d->source_hash, -1);
            cq_rstmt_bind_int(st, 4, p->rb.gen);
            cq_rstmt_bind_text(st, 5, reason, -1);
            cq_rstmt_bind_int(st, 6, now);
            rc = cq_eng_step_done(st);
            if (rc != CQ_OK)
                snprintf(err, errcap, "%s", cq_rdb_errmsg(e->rdb));
            cq_rstmt_finalize(st);
        }
        if (rc == CQ_OK)
            rc = cq_exec_sql(e->rx, "COMMIT", err, errcap);
    }
    if (rc != CQ_OK) {
        if (!resume)
            rollback(e);
        cq_rebuild_free(p);
        return rc;
    }
    pthread_mutex_lock(&e->mu);
    p->rb.resumed_from = position;
    p->rb.taken_ms = now;
    p->rb.active = 1;
    p->rb.position = position;
    p->rb.started_ms = started;
    /* a resumed one says so (docs/api.md); the log line keeps why it
     * was started */
    snprintf(why, sizeof why, "%s", resume ? p->rb.reason : reason);
    snprintf(p->rb.reason, sizeof p->rb.reason, "%s",
             resume ? "resumed" : reason);
    pthread_mutex_unlock(&e->mu);
    fprintf(stderr,
            "cqrsd: projection %s: rebuild %s (%s) at position %lld; "
            "its live tables keep serving until the swap\n",
            p->d->name, resume ? "resumed" : "started", why,
            (long long)position);
    return CQ_OK;
}

/* Log the end of p's rebuild in the open transaction; *rec gets the
 * record, for the caller to publish once it commits. */
static int log_end(cq_engine *e, proj *p, const char *outcome,
                   const char *error, rebuild_record *rec, char *err,
                   size_t errcap)
{
    cq_rstmt *st = NULL;
    rebuild_record r;
    int rc;

    memset(&r, 0, sizeof r);
    pthread_mutex_lock(&e->mu);
    r.started_ms = p->rb.started_ms;
    r.events = p->rb.position;
    pthread_mutex_unlock(&e->mu);
    r.finished_ms = cq_now_ms();
    r.version = p->d->version;
    snprintf(r.outcome, sizeof r.outcome, "%s", outcome);
    snprintf(r.error, sizeof r.error, "%s", error ? error : "");
    rc = cq_eng_prepare(e->rdb,
                        "INSERT INTO cq_rebuild_log (name, version,"
                        " started_at, finished_at, events, outcome, reason,"
                        " error) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                        &st, err, errcap);
    if (rc != CQ_OK)
        return rc;
    cq_rstmt_bind_text(st, 1, p->d->name, -1);
    cq_rstmt_bind_int(st, 2, r.version);
    cq_rstmt_bind_int(st, 3, r.started_ms);
    cq_rstmt_bind_int(st, 4, r.finished_ms);
    cq_rstmt_bind_int(st, 5, r.events);
    cq_rstmt_bind_text(st, 6, outcome, -1);
    cq_rstmt_bind_text(st, 7, p->rb.reason, -1);
    if (error != NULL)
        cq_rstmt_bind_text(st, 8, error, -1);
    rc = cq_eng_step_done(st);
    if (rc != CQ_OK)
        snprintf(err, errcap, "%s", cq_rdb_errmsg(e->rdb));
    cq_rstmt_finalize(st);
    if (rc == CQ_OK)
        rc = forget_rebuild(e, p, err, errcap);
    *rec = r;
    return rc;
}

void cq_rebuild_abort(cq_engine *e, proj *p, const char *why)
{
    char err[256] = "";
    rebuild_record rec;
    int rc = cq_exec_sql(e->rx, "BEGIN IMMEDIATE", err, sizeof err);

    if (rc == CQ_OK)
        rc = drop_shadow(e, p, err, sizeof err);
    if (rc == CQ_OK)
        rc = log_end(e, p, "failed", why, &rec, err, sizeof err);
    if (rc == CQ_OK)
        rc = cq_exec_sql(e->rx, "COMMIT", err, sizeof err);
    if (rc != CQ_OK) {
        /* the shadow stays behind; dropped at the next start */
        rollback(e);
        fprintf(stderr, "cqrsd: projection %s: dropping the rebuild: %s\n",
                p->d->name, err);
    }
    fprintf(stderr, "cqrsd: projection %s: rebuild given up: %s\n", p->d->name,
            why);
    cq_rebuild_free(p);
    pthread_mutex_lock(&e->mu);
    p->rb.active = 0;
    if (rc == CQ_OK)
        p->last = rec;
    pthread_mutex_unlock(&e->mu);
}

/* The tables of d that exist, renamed to their old names in the open
 * transaction. */
static int retire_tables(cq_engine *e, const cq_declared *d, char *err,
                         size_t errcap)
{
    char name[128];
    int rc = CQ_OK;

    for (size_t i = 0; rc == CQ_OK && d != NULL && i < d->nddl; i++) {
        if (cq_eng_created(d->ddl[i].sqlite_sql, name, sizeof name) != 1 ||
            !object_exists(e, name))
            continue;
        rc = exec_f(e, err, errcap,
                    "DROP TABLE IF EXISTS \"%s" OLD_SUFFIX "\";"
                    " ALTER TABLE \"%s\" RENAME TO \"%s" OLD_SUFFIX "\"",
                    name, name, name);
    }
    return rc;
}

/* Swap p's shadow tables in (see the top of the file). */
static int swap(cq_engine *e, proj *p, char *err, size_t errcap)
{
    cq_rstmt *st = NULL;
    int64_t position, t0 = cq_now_ms(), replayed;
    rebuild_record rec;
    int paused, rc;

    pthread_mutex_lock(&e->mu);
    position = p->rb.position;
    paused = p->paused;
    pthread_mutex_unlock(&e->mu);
    rc = cq_exec_sql(e->rx, "BEGIN IMMEDIATE", err, errcap);
    if (rc != CQ_OK)
        return rc;
    rc = retire_tables(e, p->d, err, errcap);
    if (rc == CQ_OK && p->prev != NULL)
        rc = retire_tables(e, p->prev, err, errcap);
    for (size_t i = 0; rc == CQ_OK && i < p->rb.ntables; i++)
        rc = exec_f(e, err, errcap, "ALTER TABLE \"%s\" RENAME TO \"%s\"",
                    p->rb.map[i].to, p->rb.map[i].from);
    if (rc == CQ_OK)
        rc = cq_eng_prepare(e->rdb,
                            "UPDATE cq_projections SET version = ?2,"
                            " source_hash = ?3, source = ?4, position = ?5,"
                            " status = ?6, error = NULL, error_position = NULL,"
                            " error_event = NULL, updated_at = ?7"
                            " WHERE name = ?1",
                            &st, err, errcap);
    if (rc == CQ_OK) {
        cq_rstmt_bind_text(st, 1, p->d->name, -1);
        cq_rstmt_bind_int(st, 2, p->d->version);
        cq_rstmt_bind_text(st, 3, p->d->source_hash, -1);
        cq_rstmt_bind_text(st, 4, p->text, -1);
        cq_rstmt_bind_int(st, 5, position);
        cq_rstmt_bind_text(st, 6, paused ? "paused" : "running", -1);
        cq_rstmt_bind_int(st, 7, cq_now_ms());
        rc = cq_eng_step_done(st);
        if (rc != CQ_OK)
            snprintf(err, errcap, "%s", cq_rdb_errmsg(e->rdb));
        cq_rstmt_finalize(st);
    }
    if (rc == CQ_OK)
        rc = log_end(e, p, "done", NULL, &rec, err, errcap);
    if (rc == CQ_OK)
        rc = cq_exec_sql(e->rx, "COMMIT", err, errcap);
    if (rc != CQ_OK) {
        rollback(e);
        return rc;
    }
    replayed = position - p->rb.resumed_from;
    pthread_mutex_lock(&e->mu);
    p->position = position;
    p->failed = 0;
    p->error[0] = p->error_event[0] = '\0';
    p->serving = p->d;
    p->frozen = 0;
    p->rb.active = 0;
    p->last = rec;
    pthread_mutex_unlock(&e->mu);
    cq_eng_advance(e, p->index, position);
    cq_rebuild_free(p);
    fprintf(stderr,
            "cqrsd: projection %s: rebuild done: %lld events in %.1f s "
            "(%.0f events/s), swapped in at position %lld\n",
            p->d->name, (long long)replayed,
            (double)(t0 - p->rb.taken_ms) / 1000.0,
            t0 > p->rb.taken_ms
                ? (double)replayed * 1000.0 / (double)(t0 - p->rb.taken_ms)
                : 0.0,
            (long long)position);
    /* the old tables, in a transaction of their own (a crash before it
     * leaves them to cq_rebuild_init) */
    rc = cq_exec_sql(e->rx, "BEGIN IMMEDIATE", err, errcap);
    if (rc == CQ_OK)
        rc = drop_suffixed(e, p->d, OLD_SUFFIX, err, errcap);
    if (rc == CQ_OK)
        rc = drop_suffixed(e, p->prev, OLD_SUFFIX, err, errcap);
    if (rc == CQ_OK)
        rc = cq_exec_sql(e->rx, "COMMIT", err, errcap);
    if (rc != CQ_OK) {
        rollback(e);
        fprintf(stderr, "cqrsd: projection %s: dropping the old tables: %s\n",
                p->d->name, err);
    }
    return CQ_OK;
}

int cq_rebuild_step(cq_engine *e, proj *p)
{
    int64_t head, from;
    batch b;
    apply_ctx c;
    char err[256] = "";
    int paused, status = 1;

    pthread_mutex_lock(&e->mu);
    head = e->head;
    paused = p->paused;
    from = p->rb.position + 1;
    pthread_mutex_unlock(&e->mu);
    if (paused)
        return CQ_STEP_IDLE;
    if (from <= head) {
        memset(&b, 0, sizeof b);
        b.cap = 10 * e->batch;
        b.need_meta = p->needs_metadata;
        if (cq_eng_batch_read(e, &b, from, err, sizeof err) != CQ_OK) {
            fprintf(stderr, "cqrsd: rebuild of %s: reading events: %s\n",
                    p->d->name, err);
            cq_eng_batch_free(&b);
            return CQ_STEP_FAILED;
        }
        memset(&c, 0, sizeof c);
        c.e = e;
        c.p = p;
        c.d = p->d;
        c.x = p->rb.x;
        c.last = from - 1;
        if (cq_exec_sql(e->rx, "BEGIN", err, sizeof err) != CQ_OK)
            status = -1;
        if (status > 0)
            cq_eng_apply_events(&c, &b, from);
        if (b.n == 0 && status > 0) {
            /* the head said there was more: not yet readable */
            cq_eng_batch_free(&b);
            rollback(e);
            return CQ_STEP_FAILED;
        }
        cq_eng_batch_free(&b);
        if (status > 0 && c.failed) {
            char why[700];
            rollback(e);
            snprintf(why, sizeof why, "%s at position %lld: %s", c.error_event,
                     (long long)c.error_position, c.error);
            cq_rebuild_abort(e, p, why);
            return CQ_STEP_WORKED;
        }
        if (status > 0) {
            cq_rstmt_bind_text(e->r_rb_save, 1, p->d->name, -1);
            cq_rstmt_bind_int(e->r_rb_save, 2, c.last);
            cq_rstmt_bind_int(e->r_rb_save, 3, cq_now_ms());
            if (cq_eng_step_done(e->r_rb_save) != CQ_OK ||
                cq_exec_sql(e->rx, "COMMIT", err, sizeof err) != CQ_OK)
                status = -1;
            cq_rstmt_clear(e->r_rb_save);
        }
        if (status < 0) {
            if (err[0] == '\0')
                snprintf(err, sizeof err, "%s", cq_rdb_errmsg(e->rdb));
            rollback(e);
            fprintf(stderr, "cqrsd: rebuild of %s: batch from %lld: %s\n",
                    p->d->name, (long long)from, err);
            return CQ_STEP_FAILED;
        }
        pthread_mutex_lock(&e->mu);
        p->rb.position = c.last;
        pthread_mutex_unlock(&e->mu);
        if (c.last < head)
            return CQ_STEP_WORKED;
    }
    /* caught up with the head this round: the live tables are not ahead
     * of it either, so the swap never moves a checkpoint back */
    if (swap(e, p, err, sizeof err) != CQ_OK) {
        fprintf(stderr, "cqrsd: rebuild of %s: swap: %s (tried again)\n",
                p->d->name, err);
        return CQ_STEP_FAILED;
    }
    return CQ_STEP_WORKED;
}
