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
#include "projection/engine_int.h"
#include "query/query_int.h"

static const char SQL_CHECKPOINT[] =
    "SELECT position, status FROM cq_projections WHERE name = ?1";

/* Collects rows into an array. */
static int collect_row(void *arg, json_t *row)
{
    return json_array_append_new(arg, row) != 0;
}

/* Run q on x and shape its answer (see cq_decl_result). */
int cq_query_shape(cq_exec *x, const cq_decl_query *q, const char *const *values,
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
    i = cq_pool_get(pl);
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
    rc = cq_query_shape(pl->x[i], q, values, data, err, errcap);
rollback : {
    char ignore[64];
    cq_exec_sql(pl->x[i], "COMMIT", ignore, sizeof ignore);
}
done:
    cq_pool_put(pl, i);
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
    fresh->lag_ms = cq_eng_lag_ms(e, fresh->position, fresh->head);
    if (stream_version != NULL)
        *stream_version =
            stream_id ? cq_eng_stream_version_at(e, stream_id, fresh->position) : 0;
    return CQ_OK;
}

