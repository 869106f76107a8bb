/*
 * checkpoint.c -- checkpoints, and bringing a projection's tables to its
 * definition at start (migration).
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
 *   | status         | running / paused / failed                         |
 *   | error, error_position, error_event | why and where it failed       |
 *   | updated_at     | ms since the epoch                                |
 *   | source         | the .sql text the tables were built from          |
 *
 * cq_skipped_events (projection, position, event_type, error, skipped_at)
 * records the events `skip` (asynchronous) or the inline catch-up passed.
 *
 * Threads: the checkpoint statements run on the connection that owns the
 * projection's database: the projector thread's for read.db, the
 * writer's for events.db; cq_eng_prepare_projection at start, or on the
 * projector thread for a reset. Nothing here takes e->mu: the callers
 * publish what changed.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "base/base.h"
#include "projection/engine_int.h"

/* Save p's checkpoint with `st` (SQL_SAVE_CHECKPOINT) in the open
 * transaction. */
int cq_eng_save_checkpoint(cq_rstmt *st, const proj *p, int64_t position,
                           int failed, const char *error, int64_t error_pos,
                           const char *error_event)
{
    cq_rstmt_bind_text(st, 1, p->d->name, -1);
    cq_rstmt_bind_int(st, 2, position);
    cq_rstmt_bind_text(st, 3, failed ? "failed" : "running", -1);
    if (failed) {
        cq_rstmt_bind_text_copy(st, 4, error, -1);
        cq_rstmt_bind_int(st, 5, error_pos);
        cq_rstmt_bind_text_copy(st, 6, error_event, -1);
    } else {
        cq_rstmt_bind_null(st, 4);
        cq_rstmt_bind_null(st, 5);
        cq_rstmt_bind_null(st, 6);
    }
    cq_rstmt_bind_int(st, 7, cq_now_ms());
    int rc = cq_eng_step_done(st);
    cq_rstmt_clear(st);
    return rc;
}

/* cq_rdb_columns' callback: is this the source column? */
static int is_source(void *arg, const char *column, int pk, cq_rtype type)
{
    (void)pk;
    (void)type;
    if (strcasecmp(column, "source") != 0)
        return 0;
    *(int *)arg = 1;
    return 1;
}

/* Give cq_projections (created before it was added) its source column.
 * Asked of the schema, not by preparing a statement that may fail: on
 * PostgreSQL a failed statement would fail the caller's transaction. */
int cq_eng_add_source_column(cq_exec *x, char *err, size_t errcap)
{
    int found = 0;
    int rc = cq_rdb_columns(cq_exec_db(x), "cq_projections", is_source, &found,
                            err, errcap);

    if (rc != CQ_OK)
        return CQ_EIO;
    if (found)
        return CQ_OK;
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
int cq_eng_prepare_projection(proj *p, cq_exec *x, int reset, char *changed,
                              size_t changedcap, char *err, size_t errcap)
{
    cq_rdb *db = cq_exec_db(x);
    cq_rstmt *st = NULL;
    int found = 0, same = 0, rc;
    int64_t version = 0;
    const char *text = NULL; /* borrowed from p */

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
    if (cq_eng_prepare(
            db,
            "SELECT version, source_hash, position, status, error,"
            " error_position, error_event, source FROM cq_projections"
            " WHERE name = ?1",
            &st, err, errcap) != CQ_OK)
        return CQ_EIO;
    cq_rstmt_bind_text(st, 1, p->d->name, -1);
    if (cq_rstmt_step(st) == CQ_RSTEP_ROW) {
        const char *hash = cq_rstmt_column_text(st, 1);
        const char *status = cq_rstmt_column_text(st, 3);
        const char *src = cq_rstmt_column_text(st, 7);
        found = 1;
        version = cq_rstmt_column_int(st, 0);
        same = version == p->d->version && hash &&
               strcmp(hash, p->d->source_hash) == 0;
        if (same || !p->is_inline) {
            p->position = cq_rstmt_column_int(st, 2);
            p->paused = status && strcmp(status, "paused") == 0;
            p->failed = status && strcmp(status, "failed") == 0;
            if (p->failed) {
                const char *m = cq_rstmt_column_text(st, 4);
                const char *t = cq_rstmt_column_text(st, 6);
                p->error_position = cq_rstmt_column_int(st, 5);
                snprintf(p->error, sizeof p->error, "%s", m ? m : "");
                snprintf(p->error_event, sizeof p->error_event, "%s",
                         t ? t : "");
            }
        }
        if (src == NULL && same && p->text != NULL)
            text = p->text; /* written below, for later rebuilds */
        else if (!same && !p->is_inline && src != NULL)
            p->prev = previous_definition(p, src);
    }
    cq_rstmt_finalize(st);
    if (same) {
        p->serving = p->d;
        if (text != NULL) {
            rc = cq_eng_prepare(db,
                                "UPDATE cq_projections SET source = ?1"
                                " WHERE name = ?2",
                                &st, err, errcap);
            if (rc == CQ_OK) {
                cq_rstmt_bind_text(st, 1, text, -1);
                cq_rstmt_bind_text(st, 2, p->d->name, -1);
                rc = cq_eng_step_done(st);
                cq_rstmt_finalize(st);
            }
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
        rc = cq_exec_sql(x, cq_exec_text(db, &p->d->ddl[i]), msg, sizeof msg);
        if (rc != CQ_OK)
            snprintf(err, errcap, "%s:%d: %s", p->source, p->d->ddl[i].line,
                     msg);
    }
    if (rc == CQ_OK) {
        rc = cq_eng_prepare(
            db,
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
        cq_rstmt_bind_text(st, 1, p->d->name, -1);
        cq_rstmt_bind_int(st, 2, p->d->version);
        cq_rstmt_bind_text(st, 3, p->d->source_hash, -1);
        cq_rstmt_bind_int(st, 4, cq_now_ms());
        cq_rstmt_bind_text(st, 5, p->text, -1);
        rc = cq_eng_step_done(st);
        if (rc != CQ_OK)
            snprintf(err, errcap, "%s", cq_rdb_errmsg(db));
        cq_rstmt_finalize(st);
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

/* p->skipped from the rows of cq_skipped_events in db (start). */
int cq_eng_count_skipped(cq_rdb *db, proj *p, char *err, size_t errcap)
{
    cq_rstmt *st = NULL;
    int rc = cq_eng_prepare(db,
                            "SELECT count(*) FROM cq_skipped_events"
                            " WHERE projection = ?1",
                            &st, err, errcap);

    if (rc != CQ_OK)
        return rc;
    cq_rstmt_bind_text(st, 1, p->d->name, -1);
    if (cq_rstmt_step(st) == CQ_RSTEP_ROW)
        p->skipped = cq_rstmt_column_int(st, 0);
    else {
        snprintf(err, errcap, "counting skipped events: %s", cq_rdb_errmsg(db));
        rc = CQ_EIO;
    }
    cq_rstmt_finalize(st);
    return rc;
}

int cq_engine_checkpoint_read(cq_engine *e, int projection, cq_exec *x,
                              int64_t *position, int *failed, char *err,
                              size_t errcap)
{
    static const char sql[] =
        "SELECT position, status FROM cq_projections WHERE name = ?1";
    cq_rstmt *st = cq_exec_stmt(x, sql, err, errcap);

    if (st == NULL)
        return CQ_EIO;
    cq_rstmt_bind_text(st, 1, e->projs[projection]->d->name, -1);
    if (cq_rstmt_step(st) == CQ_RSTEP_ROW) {
        const char *status = cq_rstmt_column_text(st, 1);
        *position = cq_rstmt_column_int(st, 0);
        *failed = status && strcmp(status, "failed") == 0;
    }
    cq_rstmt_reset(st);
    cq_rstmt_clear(st);
    return CQ_OK;
}
