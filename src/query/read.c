/*
 * read.c -- named queries answered from the read models: the query runs
 * in one read snapshot with the projection's checkpoint, so the answer
 * says exactly which position it reflects, and how far that is behind
 * the event store (lag).
 *
 * Threads: any thread; a query borrows a read connection for its
 * duration and reads the projections' state under the engine's mutex.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/base.h"
#include "query/query.h"
#include "query/query_int.h"

/* Collects rows into an array. */
static int collect_row(void *arg, json_t *row)
{
    return json_array_append_new(arg, row) != 0;
}

/* Run q on x and shape its answer (see cq_decl_result). */
int cq_query_shape(cq_exec *x, const cq_decl_query *q,
                   const char *const *values, json_t **data, char *err,
                   size_t errcap)
{
    json_t *out = NULL, *rows = NULL;
    int rc = CQ_OK;

    *data = NULL;
    if (q->result == CQ_RESULT_SECTIONS) {
        out = json_object();
        for (size_t i = 0; out != NULL && rc == CQ_OK && i < q->nstmts; i++) {
            rows = json_array();
            if (rows == NULL) {
                rc = CQ_ENOMEM;
                break;
            }
            rc = cq_exec_query(x, q, &q->stmts[i], values, collect_row, rows,
                               err, errcap);
            /* the object owns rows now, even when it could not take it */
            if (json_object_set_new(out, q->section_names[i], rows) != 0 &&
                rc == CQ_OK)
                rc = CQ_ENOMEM;
            rows = NULL;
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

static const char SNAPSHOT_BEGIN[] = "BEGIN";
static const char SNAPSHOT_END[] = "COMMIT";

/* Run the statement that begins (sqlite_sql SNAPSHOT_BEGIN, pg_sql its
 * PostgreSQL form) or ends a query's read snapshot on x. On SQLite it is
 * prepared once per connection (cq_exec_stmt keeps it), not parsed again
 * for every query; PostgreSQL gets the text. CQ_OK or CQ_EIO with a
 * message. */
static int snapshot_sql(cq_exec *x, const char *sqlite_sql, const char *pg_sql,
                        char *err, size_t errcap)
{
    cq_rdb *db = cq_exec_db(x);
    cq_rstmt *st;
    int rc;

    if (strcmp(cq_rdb_backend(db), "postgresql") == 0)
        return cq_exec_sql(x, pg_sql, err, errcap);
    st = cq_exec_stmt(x, sqlite_sql, err, errcap);
    if (st == NULL)
        return CQ_EIO;
    rc = cq_rstmt_step(st);
    if (rc != CQ_RSTEP_DONE)
        snprintf(err, errcap, "%s", cq_rdb_errmsg(db));
    cq_rstmt_reset(st);
    return rc == CQ_RSTEP_DONE ? CQ_OK : CQ_EIO;
}

/* Run q (or, while the live tables are those of an older definition, its
 * namesake there) in one read snapshot with the checkpoint. */
static int run_query(cq_engine *e, int projection, const cq_declared *serving,
                     const cq_decl_query *q, const char *const *values,
                     json_t **data, cq_freshness *fresh, char *err,
                     size_t errcap)
{
    const cq_declared *d = cq_engine_declared(e, projection);
    const char **mapped = NULL;
    cq_exec *x;
    int rc, ok, retried = 0, replanned = 0;

    if (serving != NULL && serving != d) {
        const cq_decl_query *oq = cq_declared_find_query(serving, q->name);
        mapped = oq ? map_values(q, values, oq, &ok) : NULL;
        if (mapped == NULL) {
            snprintf(err, errcap,
                     oq == NULL || !ok
                         ? "projection %s is being rebuilt to version %lld;"
                           " until it is done its tables are those of version"
                           " %lld, which cannot answer query %s"
                         : "out of memory",
                     d->name, (long long)d->version,
                     (long long)serving->version, q->name);
            return oq == NULL || !ok ? CQ_EBUSY : CQ_ENOMEM;
        }
        q = oq;
        values = mapped;
    }
again:
    x = cq_engine_reader_get(e, projection, err, errcap);
    if (x == NULL) {
        free(mapped);
        return CQ_EIO; /* the read store cannot be reached */
    }
again_here:
    /* one snapshot for the rows and the checkpoint: PostgreSQL takes one
     * per statement unless asked for one per transaction */
    rc = snapshot_sql(x, SNAPSHOT_BEGIN,
                      "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY", err,
                      errcap);
    if (rc != CQ_OK)
        goto done;
    /* the checkpoint, from the same snapshot as the rows */
    rc = cq_engine_checkpoint_read(e, projection, x, &fresh->position,
                                   &fresh->failed, err, errcap);
    if (rc == CQ_OK)
        rc = cq_query_shape(x, q, values, data, err, errcap);
    {
        char ignore[64];
        /* a statement the database refused: PostgreSQL refuses once a
         * prepared one whose table a rebuild's swap made anew with other
         * columns, and prepares it anew the next time; so once more, on
         * this connection, before the error is believed */
        int refused =
            rc != CQ_OK && cq_rdb_errcode(cq_exec_db(x)) == CQ_EINVAL;
        snapshot_sql(x, SNAPSHOT_END, SNAPSHOT_END, ignore, sizeof ignore);
        if (refused && !replanned) {
            replanned = 1;
            json_decref(*data);
            *data = NULL;
            goto again_here;
        }
    }
done:
    /* a connection that had lost its server (the database restarted
     * since it was last used) fails at once; the query, which read
     * nothing, runs once more on a new one */
    if (cq_engine_reader_put(e, projection, x) && rc == CQ_EIO && !retried) {
        retried = 1;
        json_decref(*data);
        *data = NULL;
        goto again;
    }
    free(mapped);
    return rc;
}

int cq_query_run(cq_engine *e, int projection, const cq_decl_query *q,
                 const char *const *values, const char *stream_id,
                 json_t **data, cq_freshness *fresh, int64_t *stream_version,
                 char *err, size_t errcap)
{
    const cq_declared *d = cq_engine_declared(e, projection);
    const cq_declared *serving, *now;
    int rc, failed = 0;

    memset(fresh, 0, sizeof *fresh);
    *data = NULL;
    serving = cq_engine_serving(e, projection);
    rc = run_query(e, projection, serving, q, values, data, fresh, err, errcap);
    if (rc == CQ_EIO && serving != d) {
        /* A rebuild to a new definition may have swapped its tables in
         * between: then ask again, of them. Else the old tables do not
         * answer the new query (their definition is unknown). */
        now = cq_engine_serving(e, projection);
        if (now != serving)
            rc = run_query(e, projection, now, q, values, data, fresh, err,
                           errcap);
        else
            rc = CQ_EBUSY;
    }
    if (rc != CQ_OK)
        return rc;
    fresh->head = cq_engine_head(e);
    cq_engine_position(e, projection, &failed);
    fresh->failed |= failed;
    if (fresh->head < fresh->position)
        fresh->head = fresh->position;
    fresh->lag_events = fresh->head - fresh->position;
    /* what the answer says of its freshness is part of it: when the
     * event store cannot tell it, the query fails (503) rather than
     * claiming lag 0 or a stream without events */
    rc = cq_engine_lag_ms(e, fresh->position, fresh->head, &fresh->lag_ms, err,
                          errcap);
    if (rc == CQ_OK && stream_version != NULL) {
        *stream_version = 0;
        if (stream_id != NULL)
            rc = cq_engine_stream_version_at(e, stream_id, fresh->position,
                                             stream_version, err, errcap);
    }
    if (rc != CQ_OK) {
        json_decref(*data);
        *data = NULL;
    }
    return rc;
}
