/*
 * exec.c -- declared statements on a connection of the read store (see
 * exec.h).
 *
 * Statements are prepared once (CQ_RDB_PERSISTENT) and found again
 * through a small open-addressing table keyed by the cq_decl_stmt address.
 * Values are bound from the event with cq_declared_bind_value() and @each
 * arrays found with cq_declared_path_json(), so the rules for what a
 * :parameter or a path means live in one place (declared_bind.c,
 * declared_path.c).
 */
#include "projection/exec.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cqrs/cqrs.h"

/* A prepared statement, keyed by the address of what it was prepared from
 * (a cq_decl_stmt, or the SQL text a C projection passed). */
typedef struct slot {
    const void *key;
    cq_rstmt *st;
} slot;

struct cq_exec {
    cq_rdb *db;
    const cq_rename *map; /* names rewritten in every SQL text; or NULL */
    size_t nmap;
    slot *slots;
    size_t cap, count; /* cap is 0 or a power of two */
};

cq_exec *cq_exec_new(cq_rdb *db)
{
    cq_exec *x = calloc(1, sizeof *x);
    if (x != NULL)
        x->db = db;
    return x;
}

void cq_exec_free(cq_exec *x)
{
    if (x == NULL)
        return;
    for (size_t i = 0; i < x->cap; i++)
        cq_rstmt_finalize(x->slots[i].st);
    free(x->slots);
    free(x);
}

cq_exec *cq_exec_new_renamed(cq_rdb *db, const cq_rename *map, size_t n)
{
    cq_exec *x = cq_exec_new(db);
    if (x != NULL) {
        x->map = map;
        x->nmap = n;
    }
    return x;
}

/* Prepare sql as x runs it (renamed) into *ps. CQ_OK, or CQ_ENOMEM /
 * CQ_EIO with the read store's message (without the SQL text) in err. */
static int prepare_as(cq_exec *x, const char *sql, unsigned flags,
                      cq_rstmt **ps, char *err, size_t errcap)
{
    char *renamed = NULL, msg[64];
    int rc;

    if (x->map != NULL &&
        (renamed = cq_sql_rename(sql, x->map, x->nmap)) == NULL) {
        snprintf(err, errcap, "out of memory");
        return CQ_ENOMEM;
    }
    /* cq_rdb_prepare's message starts with the SQL text; ours is the
     * store's message alone (unless the failure is not the store's: no
     * statement in sql, no memory for the handle) */
    rc = cq_rdb_prepare(x->db, renamed ? renamed : sql, flags, ps, msg,
                        sizeof msg);
    free(renamed);
    if (rc != CQ_OK)
        snprintf(err, errcap, "%s",
                 cq_rdb_errcode(x->db) != CQ_OK ? cq_rdb_errmsg(x->db)
                 : rc == CQ_ENOMEM              ? "out of memory"
                                                : "no statement");
    return rc;
}

int cq_exec_check(cq_exec *x, const char *sql, char *err, size_t errcap)
{
    cq_rstmt *ps = NULL;
    int rc = prepare_as(x, sql, 0, &ps, err, errcap);

    cq_rstmt_finalize(ps);
    return rc == CQ_OK ? CQ_OK : CQ_EIO;
}

cq_rdb *cq_exec_db(cq_exec *x)
{
    return x->db;
}

const char *cq_exec_dialect(cq_rdb *db, const char *sqlite_sql,
                            const char *pg_sql)
{
    return strcmp(cq_rdb_backend(db), "postgresql") == 0 ? pg_sql : sqlite_sql;
}

const char *cq_exec_text(cq_rdb *db, const cq_decl_stmt *st)
{
    return cq_exec_dialect(db, st->sqlite_sql, st->pg_sql);
}

static size_t slot_of(const slot *slots, size_t cap, const void *k)
{
    size_t i = ((uintptr_t)k >> 4) * 0x9E3779B97F4A7C15ull & (cap - 1);
    while (slots[i].key != NULL && slots[i].key != k)
        i = (i + 1) & (cap - 1);
    return i;
}

static int grow(cq_exec *x)
{
    size_t cap = x->cap ? x->cap * 2 : 64;
    slot *s = calloc(cap, sizeof *s);

    if (s == NULL)
        return CQ_ENOMEM;
    for (size_t i = 0; i < x->cap; i++)
        if (x->slots[i].key != NULL)
            s[slot_of(s, cap, x->slots[i].key)] = x->slots[i];
    free(x->slots);
    x->slots = s;
    x->cap = cap;
    return CQ_OK;
}

/* The prepared statement for `key`, preparing `sql` on first use; line
 * (if > 0) names the statement in messages. */
static cq_rstmt *prepared_key(cq_exec *x, const void *key, const char *sql,
                              int line, char *err, size_t errcap)
{
    cq_rstmt *ps = NULL;
    char msg[512];
    size_t i;

    if (x->cap > 0) {
        i = slot_of(x->slots, x->cap, key);
        if (x->slots[i].key == key)
            return x->slots[i].st;
    }
    if (2 * (x->count + 1) > x->cap && grow(x) != CQ_OK) {
        snprintf(err, errcap, "out of memory");
        return NULL;
    }
    if (prepare_as(x, sql, CQ_RDB_PERSISTENT, &ps, msg, sizeof msg) != CQ_OK) {
        if (line > 0)
            snprintf(err, errcap, "statement at line %d: %s", line, msg);
        else
            snprintf(err, errcap, "%s", msg);
        return NULL;
    }
    i = slot_of(x->slots, x->cap, key);
    x->slots[i].key = key;
    x->slots[i].st = ps;
    x->count++;
    return ps;
}

static cq_rstmt *prepared(cq_exec *x, const cq_decl_stmt *st, char *err,
                          size_t errcap)
{
    return prepared_key(x, st, cq_exec_text(x->db, st), st->line, err, errcap);
}

cq_rstmt *cq_exec_stmt(cq_exec *x, const char *sql, char *err, size_t errcap)
{
    return prepared_key(x, sql, sql, 0, err, errcap);
}

int cq_exec_prepare(cq_exec *x, const cq_decl_stmt *st, char *err,
                    size_t errcap)
{
    return prepared(x, st, err, errcap) ? CQ_OK : CQ_EIO;
}

int cq_exec_sql(cq_exec *x, const char *sql, char *err, size_t errcap)
{
    char *renamed = NULL;
    int rc;

    if (x->map != NULL &&
        (renamed = cq_sql_rename(sql, x->map, x->nmap)) == NULL) {
        snprintf(err, errcap, "out of memory");
        return CQ_ENOMEM;
    }
    rc = cq_rdb_exec(x->db, renamed ? renamed : sql, err, errcap);
    free(renamed);
    return rc == CQ_OK ? CQ_OK : CQ_EIO;
}

/* Step ps to completion, then reset it for the next use. */
static int run(cq_exec *x, cq_rstmt *ps, const cq_decl_stmt *st, char *err,
               size_t errcap)
{
    int rc;

    while ((rc = cq_rstmt_step(ps)) == CQ_RSTEP_ROW)
        ;
    if (rc != CQ_RSTEP_DONE) {
        snprintf(err, errcap, "statement at line %d: %s", st->line,
                 cq_rdb_errmsg(x->db));
        cq_rstmt_reset(ps);
        cq_rstmt_clear(ps);
        return CQ_EIO;
    }
    cq_rstmt_reset(ps);
    cq_rstmt_clear(ps);
    return CQ_OK;
}

/* v is freed right after: JSON text (v->owned) is copied; TEXT is the
 * event's or the item's, which outlive the statement's run (run() resets
 * and clears it), so it is bound without a copy */
static int bind_value(cq_rstmt *ps, int i, const cq_decl_value *v)
{
    switch (v->type) {
    case CQ_VALUE_INT: return cq_rstmt_bind_int(ps, i, v->i);
    case CQ_VALUE_REAL: return cq_rstmt_bind_double(ps, i, v->r);
    case CQ_VALUE_TEXT: return cq_rstmt_bind_text(ps, i, v->text, (int)v->len);
    case CQ_VALUE_JSON:
        return cq_rstmt_bind_text_copy(ps, i, v->text, (int)v->len);
    case CQ_VALUE_NULL:
    default: return cq_rstmt_bind_null(ps, i);
    }
}

/* Run one handler statement for ev (and array element item, or NULL). */
static int run_handler_stmt(cq_exec *x, const cq_decl_stmt *st,
                            const cq_decl_event *ev, const json_t *item,
                            char *err, size_t errcap)
{
    cq_rstmt *ps = prepared(x, st, err, errcap);

    if (ps == NULL)
        return CQ_EIO;
    for (size_t i = 0; i < st->nparams; i++) {
        cq_decl_value v;
        int rc = cq_declared_bind_value(st->params[i], ev, item, &v);
        if (rc != CQ_OK) {
            snprintf(err, errcap, "statement at line %d: cannot bind :%s: %s",
                     st->line, st->params[i], cq_strerror(rc));
            cq_rstmt_clear(ps);
            return CQ_EIO;
        }
        rc = bind_value(ps, (int)i + 1, &v);
        cq_declared_value_clear(&v);
        if (rc != CQ_OK) {
            snprintf(err, errcap, "statement at line %d: %s", st->line,
                     cq_rdb_errmsg(x->db));
            cq_rstmt_clear(ps);
            return CQ_EIO;
        }
    }
    return run(x, ps, st, err, errcap);
}

int cq_exec_event(cq_exec *x, const cq_declared *d, const cq_decl_event *ev,
                  char *err, size_t errcap)
{
    for (size_t h = 0; h < d->nhandlers; h++) {
        const cq_decl_handler *hd = &d->handlers[h];
        const json_t *arr = NULL;
        size_t n = 1;

        if (strcmp(hd->event_type, ev->type) != 0)
            continue;
        if (hd->each != NULL) {
            /* The parser allows only data. and metadata. paths here, so
             * this cannot fail; a path that leads nowhere gives NULL. */
            cq_declared_path_json(hd->each, ev, NULL, &arr);
            n = json_is_array(arr) ? json_array_size(arr) : 0;
        }
        for (size_t k = 0; k < n; k++) {
            const json_t *item = arr ? json_array_get(arr, k) : NULL;
            for (size_t s = 0; s < hd->nstmts; s++) {
                int rc =
                    run_handler_stmt(x, &hd->stmts[s], ev, item, err, errcap);
                if (rc != CQ_OK)
                    return rc;
            }
        }
    }
    return CQ_OK;
}

/* A column as JSON (new reference; NULL on no memory). */
static json_t *column_json(cq_rstmt *ps, int c)
{
    switch (cq_rstmt_column_type(ps, c)) {
    case CQ_RTYPE_INT: return json_integer(cq_rstmt_column_int(ps, c));
    case CQ_RTYPE_REAL: return json_real(cq_rstmt_column_double(ps, c));
    case CQ_RTYPE_TEXT: {
        const char *t = cq_rstmt_column_text(ps, c);
        json_t *s = json_stringn(t, (size_t)cq_rstmt_column_bytes(ps, c));
        return s ? s : json_null(); /* not UTF-8: no value rather than junk */
    }
    default: return json_null();
    }
}

int cq_exec_query(cq_exec *x, const cq_decl_query *q, const cq_decl_stmt *st,
                  const char *const *values, cq_exec_row_cb cb, void *arg,
                  char *err, size_t errcap)
{
    cq_rstmt *ps = prepared(x, st, err, errcap);
    int rc = CQ_OK, src;

    if (ps == NULL)
        return CQ_EIO;
    for (size_t i = 0; i < st->nparams; i++) {
        size_t p;
        for (p = 0; p < q->nparams; p++)
            if (strcmp(q->params[p].name, st->params[i]) == 0)
                break;
        if (p == q->nparams || values[p] == NULL)
            src = cq_rstmt_bind_null(ps, (int)i + 1);
        else if (q->params[p].type == CQ_PARAM_INT)
            src =
                cq_rstmt_bind_int(ps, (int)i + 1, strtoll(values[p], NULL, 10));
        else
            src = cq_rstmt_bind_text_copy(ps, (int)i + 1, values[p], -1);
        if (src != CQ_OK) {
            snprintf(err, errcap, "%s", cq_rdb_errmsg(x->db));
            cq_rstmt_clear(ps);
            return CQ_EIO;
        }
    }
    while ((src = cq_rstmt_step(ps)) == CQ_RSTEP_ROW) {
        int ncol = cq_rstmt_column_count(ps);
        json_t *row = json_object();
        if (row == NULL) {
            rc = CQ_ENOMEM;
            break;
        }
        for (int c = 0; c < ncol; c++)
            json_object_set_new(row, cq_rstmt_column_name(ps, c),
                                column_json(ps, c));
        if (cb(arg, row) != 0)
            break;
    }
    if (src < 0) {
        snprintf(err, errcap, "query %s, line %d: %s", q->name, st->line,
                 cq_rdb_errmsg(x->db));
        rc = CQ_EIO;
    }
    cq_rstmt_reset(ps);
    cq_rstmt_clear(ps);
    return rc;
}

int cq_sql_exec(cq_sql *sql, const char *stmt, const cq_sql_value *params,
                int n)
{
    cq_rstmt *ps = prepared_key(sql->x, stmt, stmt, 0, sql->err, sql->errcap);
    int rc = CQ_OK;

    if (ps == NULL)
        return CQ_EIO;
    for (int i = 0; rc == CQ_OK && i < n; i++) {
        switch (params[i].type) {
        case CQ_SQL_INT: rc = cq_rstmt_bind_int(ps, i + 1, params[i].i); break;
        case CQ_SQL_REAL:
            rc = cq_rstmt_bind_double(ps, i + 1, params[i].r);
            break;
        case CQ_SQL_TEXT:
            rc = params[i].text
                     ? cq_rstmt_bind_text_copy(ps, i + 1, params[i].text, -1)
                     : cq_rstmt_bind_null(ps, i + 1);
            break;
        case CQ_SQL_NULL:
        default: rc = cq_rstmt_bind_null(ps, i + 1); break;
        }
    }
    if (rc == CQ_OK) {
        while ((rc = cq_rstmt_step(ps)) == CQ_RSTEP_ROW)
            ;
        if (rc == CQ_RSTEP_DONE)
            rc = CQ_OK;
    }
    if (rc != CQ_OK)
        snprintf(sql->err, sql->errcap, "%s", cq_rdb_errmsg(sql->x->db));
    cq_rstmt_reset(ps);
    cq_rstmt_clear(ps);
    return rc == CQ_OK ? CQ_OK : CQ_EIO;
}
