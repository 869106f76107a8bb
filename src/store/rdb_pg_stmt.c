/*
 * rdb_pg_stmt.c -- statements of the read-store interface on PostgreSQL:
 * prepare (a named server-side statement, described once; persistent ones
 * kept in the connection's cache, found again by their text), bind
 * (parameters as text, blobs as binary), step (the first runs the
 * statement and keeps its whole result; steps walk its rows) and the
 * columns of the current row. The design is in rdb_pg_int.h.
 *
 * Threads: a statement belongs to its connection's thread; the only
 * shared state is next_name, the atomic counter that makes statement
 * names unique in the process.
 */
#include <inttypes.h>
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>

#include "cqrs/cqrs.h"
#include "store/rdb.h"
#include "store/rdb_pg_int.h"

static atomic_uint next_name;

/* Did r fail because the server no longer has the prepared statement (a
 * DEALLOCATE ALL, or a twin of it finalized in a way that forgot it)?
 * Then preparing it again helps. */
static int statement_gone(const PGresult *r)
{
    const char *state = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;

    return state != NULL && strcmp(state, "26000") == 0;
}

/* Did r fail because the statement's result columns changed since it was
 * prepared (a rebuild's swap that the schema generation did not see)? */
static int result_changed(const PGresult *r)
{
    const char *state = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;

    return state != NULL && strcmp(state, "0A000") == 0;
}

/* Take name out of the cache; 1 if it was there. */
static int forget_cached(pg_conn *p, const char *name)
{
    for (size_t i = 0; i < p->ncache; i++)
        if (strcmp(p->cache[i].name, name) == 0) {
            free(p->cache[i].sql);
            free(p->cache[i].types);
            p->cache[i] = p->cache[--p->ncache];
            return 1;
        }
    return 0;
}

/* Does a statement that returns rows, prepared in schema generation
 * `schema`, need preparing again (see rdb_pg_int.h)? */
static int stale(int rows, unsigned schema)
{
    return rows && schema != atomic_load(&rpg_schema_gen);
}

static const pg_cached *find_cached(pg_conn *p, const char *sql)
{
    for (size_t i = 0; i < p->ncache; i++)
        if (p->cache[i].gen == p->gen && strcmp(p->cache[i].sql, sql) == 0)
            return &p->cache[i];
    return NULL;
}

/* A copy of n types (NULL for NULL, or out of memory: then the server
 * infers them all, as it would anyway but for gaps and widening). */
static Oid *types_dup(const Oid *t, int n)
{
    Oid *c = t != NULL && n > 0 ? malloc((size_t)n * sizeof *c) : NULL;

    if (c != NULL)
        memcpy(c, t, (size_t)n * sizeof *c);
    return c;
}

static void add_cached(pg_conn *p, const pg_stmt *st)
{
    const char *sql = st->sql, *name = st->name;
    char *copy;

    /* the server keeps the statement anyway: not finding it again only
     * costs a prepare */
    if (p->ncache == p->capcache) {
        size_t cap = p->capcache ? p->capcache * 2 : 16;
        pg_cached *c = realloc(p->cache, cap * sizeof *c);
        if (c == NULL)
            return;
        p->cache = c;
        p->capcache = cap;
    }
    if ((copy = strdup(sql)) == NULL)
        return;
    p->cache[p->ncache].sql = copy;
    snprintf(p->cache[p->ncache].name, sizeof p->cache[p->ncache].name, "%s",
             name);
    p->cache[p->ncache].gen = p->gen;
    p->cache[p->ncache].rows = st->rows;
    p->cache[p->ncache].schema = st->schema;
    p->cache[p->ncache].types = types_dup(st->exec_types, st->nparams);
    p->ncache++;
}

/* Leave `name` to be deallocated once the transaction allows it. */
static void bury(pg_conn *p, const char *name)
{
    if (p->ndead == p->capdead) {
        size_t cap = p->capdead ? p->capdead * 2 : 8;
        char(*d)[24] = realloc(p->dead, cap * sizeof *d);
        if (d == NULL)
            return; /* left to the session's end */
        p->dead = d;
        p->capdead = cap;
    }
    snprintf(p->dead[p->ndead++], sizeof p->dead[0], "%s", name);
}

/* Deallocate st's server-side statement now, or once the transaction
 * allows it (not in a failed one). */
static void deallocate(pg_stmt *st)
{
    pg_conn *p = st->db;
    PGTransactionStatusType ts = PQtransactionStatus(p->c);

    if (st->name[0] == '\0' || st->gen != p->gen)
        return; /* none, or gone with the session */
    if (p->owed == 0 && (ts == PQTRANS_IDLE || ts == PQTRANS_INTRANS)) {
        char sql[48];
        snprintf(sql, sizeof sql, "DEALLOCATE %s", st->name);
        PQclear(PQexec(p->c, sql));
    } else if (PQstatus(p->c) == CONNECTION_OK) {
        bury(p, st->name);
    }
    st->name[0] = '\0';
}

/* Let go of st's server-side statement, to be prepared again under a new
 * name: deallocated once the transaction allows it, by whoever owns the
 * name (st itself, or for a persistent statement the connection's cache,
 * once: twins that shared the name find it gone from the cache). */
static void retire(pg_stmt *st)
{
    pg_conn *p = st->db;

    if (st->name[0] != '\0' && st->gen == p->gen &&
        (!st->persistent || forget_cached(p, st->name)))
        bury(p, st->name);
    st->name[0] = '\0';
}

/* PQprepare st->sql as st->name with these parameter types (NULL: st's
 * own, gap_types). */
static int prepare_as(pg_stmt *st, const Oid *types)
{
    pg_conn *p = st->db;
    PGresult *r = PQprepare(p->c, st->name, st->sql, st->nparams,
                            types ? types : st->types);
    int rc = CQ_OK;

    if (r == NULL || PQresultStatus(r) != PGRES_COMMAND_OK)
        rc = rpg_fail(p, r);
    PQclear(r);
    return rc;
}

/* Prepare st's text on the server under a new name, which checks it as
 * SQLite's prepare does, and learn from its description whether it
 * returns rows and the parameter types to run it with (rpg_widened()). A
 * statement that had a parameter widened is prepared again with the wide
 * types. */
static int server_prepare(pg_stmt *st)
{
    pg_conn *p = st->db;
    PGresult *d;
    Oid *types = NULL;
    int rc, wide = 0;

    snprintf(st->name, sizeof st->name, "cq_%u",
             atomic_fetch_add(&next_name, 1) + 1);
    st->gen = p->gen;
    /* read before the prepare: a swap that commits meanwhile makes it
     * prepare again, never run with a plan of the old tables unnoticed */
    st->schema = atomic_load(&rpg_schema_gen);
    rc = prepare_as(st, NULL);
    if (rc != CQ_OK) {
        st->name[0] = '\0';
        return rc;
    }
    d = PQdescribePrepared(p->c, st->name);
    if (d != NULL && PQresultStatus(d) == PGRES_COMMAND_OK) {
        st->rows = PQnfields(d) > 0;
        types = rpg_widened(d, st->nparams, &wide);
        PQclear(st->desc);
        st->desc = d;
    } else {
        PQclear(d);
    }
    if (wide) {
        char sql[48];
        snprintf(sql, sizeof sql, "DEALLOCATE %s", st->name);
        PQclear(PQexec(p->c, sql));
        rc = prepare_as(st, types);
        if (rc != CQ_OK) {
            free(types);
            st->name[0] = '\0';
            return rc;
        }
    }
    free(st->exec_types);
    st->exec_types = types ? types : types_dup(st->types, st->nparams);
    p->code = CQ_OK;
    if (st->persistent)
        add_cached(p, st);
    return CQ_OK;
}

/* Free st's memory (its bindings already let go); accepts NULL. */
static void stmt_free(pg_stmt *st)
{
    if (st == NULL)
        return;
    free(st->params);
    free(st->vals);
    free(st->lens);
    free(st->fmts);
    free(st->types);
    free(st->exec_types);
    PQclear(st->desc);
    free(st->sql);
    free(st);
}

int rpg_prepare(void *impl, const char *sql, unsigned flags, void **out,
                      char *err, size_t errcap)
{
    pg_conn *p = impl;
    pg_stmt *st = calloc(1, sizeof *st);
    const pg_cached *c = NULL;
    char *plain = rpg_plain_begin(sql);
    int rc = CQ_ENOMEM, empty = 0;

    if (st == NULL || (st->sql = rpg_rewrite(plain ? plain : sql, &st->nparams,
                                         &st->types, &empty)) == NULL) {
        free(plain);
        goto fail;
    }
    free(plain);
    if (empty) {
        /* as SQLite: a text without a statement does not prepare */
        rc = rpg_fail_msg(p, CQ_EINVAL, "no statement");
        snprintf(err, errcap, "%s: no statement", sql);
        goto cleanup;
    }
    st->db = p;
    st->row = -1;
    st->blob_col = -1;
    st->persistent = (flags & CQ_RDB_PERSISTENT) != 0;
    st->savepoint_op = rpg_is_savepoint_op(st->sql);
    st->write = rpg_is_write(st->sql);
    if (st->nparams > 0) {
        st->params = calloc((size_t)st->nparams, sizeof *st->params);
        st->vals = calloc((size_t)st->nparams, sizeof *st->vals);
        st->lens = calloc((size_t)st->nparams, sizeof *st->lens);
        st->fmts = calloc((size_t)st->nparams, sizeof *st->fmts);
        if (!st->params || !st->vals || !st->lens || !st->fmts)
            goto fail;
    }
    if (st->persistent && (c = find_cached(p, st->sql)) != NULL &&
        stale(c->rows, c->schema)) {
        /* prepared before a swap: its twins prepare again as they step */
        bury(p, c->name);
        forget_cached(p, c->name);
        c = NULL;
    }
    if (c != NULL) {
        snprintf(st->name, sizeof st->name, "%s", c->name);
        st->gen = p->gen;
        st->rows = c->rows;
        st->schema = c->schema;
        st->exec_types = types_dup(c->types, st->nparams);
        p->code = CQ_OK;
    } else {
        PGTransactionStatusType before = PQtransactionStatus(p->c);
        rc = rpg_drain(p);
        if (rc != CQ_OK) {
            snprintf(err, errcap, "%s: %s", sql, p->err);
            goto cleanup;
        }
        rpg_flush_dead(p);
        rc = server_prepare(st);
        if (rc != CQ_OK && rpg_revive(p, before))
            rc = server_prepare(st);
        if (rc != CQ_OK) {
            snprintf(err, errcap, "%s: %s", sql, p->err);
            goto cleanup;
        }
    }
    *out = st;
    return CQ_OK;
fail:
    rpg_fail_msg(p, CQ_ENOMEM, "out of memory");
    snprintf(err, errcap, "%s: out of memory", sql);
cleanup:
    stmt_free(st);
    return rc;
}

static void unbind(pg_param *pa)
{
    if (pa->owned)
        free(pa->val);
    pa->val = NULL;
    pa->owned = 0;
    pa->len = 0;
    pa->fmt = 0;
}

static void drop_row_data(pg_stmt *st)
{
    free(st->blob);
    st->blob = NULL;
    st->blob_col = -1;
}

void rpg_reset(void *vst)
{
    pg_stmt *st = vst;

    drop_row_data(st);
    PQclear(st->res);
    st->res = NULL;
    st->row = -1;
    st->done = 0;
}

void rpg_finalize(void *vst)
{
    pg_stmt *st = vst;

    if (st == NULL)
        return;
    rpg_reset(st);
    for (int i = 0; i < st->nparams; i++)
        unbind(&st->params[i]);
    if (!st->persistent)
        deallocate(st);
    stmt_free(st);
}

static pg_param *param(pg_stmt *st, int i)
{
    if (i < 1 || i > st->nparams)
        return NULL;
    unbind(&st->params[i - 1]);
    return &st->params[i - 1];
}

int rpg_bind_int(void *vst, int i, int64_t v)
{
    pg_param *pa = param(vst, i);

    if (pa == NULL)
        return CQ_EINVAL;
    snprintf(pa->num, sizeof pa->num, "%" PRId64, v);
    pa->val = pa->num;
    return CQ_OK;
}

int rpg_bind_double(void *vst, int i, double v)
{
    pg_param *pa = param(vst, i);

    if (pa == NULL)
        return CQ_EINVAL;
    if (isnan(v))
        snprintf(pa->num, sizeof pa->num, "NaN");
    else if (isinf(v))
        snprintf(pa->num, sizeof pa->num, "%s",
                 v < 0 ? "-Infinity" : "Infinity");
    else
        snprintf(pa->num, sizeof pa->num, "%.17g", v);
    pa->val = pa->num;
    return CQ_OK;
}

int rpg_bind_text(void *vst, int i, const char *s, int len, int copy)
{
    pg_param *pa = param(vst, i);

    if (pa == NULL)
        return CQ_EINVAL;
    if (s == NULL)
        return CQ_OK; /* NULL, as SQLite binds it */
    if (len < 0)
        len = (int)strlen(s);
    /* libpq reads text parameters up to their NUL: borrow only text that
     * has one right at len */
    if (!copy && s[len] == '\0') {
        pa->val = (char *)s;
        return CQ_OK;
    }
    pa->val = malloc((size_t)len + 1);
    if (pa->val == NULL)
        return CQ_ENOMEM;
    memcpy(pa->val, s, (size_t)len);
    pa->val[len] = '\0';
    pa->owned = 1;
    return CQ_OK;
}

int rpg_bind_blob(void *vst, int i, const void *b, int n)
{
    pg_param *pa = param(vst, i);

    if (pa == NULL || n < 0)
        return CQ_EINVAL;
    pa->val = (char *)(b != NULL ? b : "");
    pa->len = n;
    pa->fmt = 1;
    return CQ_OK;
}

int rpg_bind_null(void *vst, int i)
{
    return param(vst, i) != NULL ? CQ_OK : CQ_EINVAL;
}

/* After st->res failed: forget st's name if the server forgot it (a
 * DEALLOCATE ALL) or refuses it (its result columns changed), so that the
 * next run prepares it anew. */
static void forget_name(pg_stmt *st)
{
    if (statement_gone(st->res)) {
        forget_cached(st->db, st->name); /* nothing left to deallocate */
        st->name[0] = '\0';
    } else if (result_changed(st->res)) {
        retire(st);
    }
}

int rpg_step(void *vst)
{
    pg_stmt *st = vst;
    pg_conn *p = st->db;
    PGTransactionStatusType before;
    ExecStatusType s;
    int rc;

    drop_row_data(st);
    if (st->done)
        rpg_reset(st); /* SQLite runs a statement again after DONE */
    if (st->res != NULL) {
        if (st->row + 1 < PQntuples(st->res)) {
            st->row++;
            return CQ_RSTEP_ROW;
        }
        st->done = 1;
        return CQ_RSTEP_DONE;
    }
    for (int i = 0; i < st->nparams; i++) {
        st->vals[i] = st->params[i].val;
        st->lens[i] = st->params[i].len;
        st->fmts[i] = st->params[i].fmt;
    }
    if (rpg_deferrable(st)) {
        /* answered later (rdb_pg_pipe.c) */
        rc = rpg_defer(st);
        if (rc != CQ_OK)
            return rc;
        st->done = 1;
        return CQ_RSTEP_DONE;
    }
    before = PQtransactionStatus(p->c);
    rpg_flush_dead(p);
    for (int tries = 0;; tries++) {
        if (st->gen != p->gen || st->name[0] == '\0' ||
            stale(st->rows, st->schema)) {
            /* the session was reset (the server forgot the statement), or
             * a swap may have changed its result columns */
            retire(st);
            rc = rpg_drain(p);
            if (rc == CQ_OK)
                rc = server_prepare(st);
            if (rc != CQ_OK)
                return rc;
        }
        st->res = rpg_exec_after(st, &rc);
        if (st->res == NULL && rc != CQ_OK)
            return rc; /* a savepoint statement before it failed */
        s = st->res != NULL ? PQresultStatus(st->res) : PGRES_FATAL_ERROR;
        if (s == PGRES_TUPLES_OK || s == PGRES_COMMAND_OK ||
            s == PGRES_EMPTY_QUERY || tries > 0)
            break;
        if (result_changed(st->res) || statement_gone(st->res)) {
            /* prepared anew and run once more, unless a transaction was
             * open: that has failed with it (the caller runs it again) */
            if (before != PQTRANS_IDLE)
                break;
            forget_name(st);
        } else if (!rpg_revive(p, before)) {
            break;
        }
        PQclear(st->res); /* once more */
        st->res = NULL;
    }
    if (s == PGRES_TUPLES_OK && PQntuples(st->res) > 0) {
        p->code = CQ_OK;
        st->row = 0;
        return CQ_RSTEP_ROW;
    }
    if (s == PGRES_TUPLES_OK || s == PGRES_COMMAND_OK ||
        s == PGRES_EMPTY_QUERY) {
        p->code = CQ_OK;
        st->done = 1;
        return CQ_RSTEP_DONE;
    }
    rc = rpg_fail(p, st->res);
    forget_name(st); /* the next step prepares it anew, if it helps */
    PQclear(st->res);
    st->res = NULL;
    return rc;
}

void rpg_clear(void *vst)
{
    pg_stmt *st = vst;

    for (int i = 0; i < st->nparams; i++)
        unbind(&st->params[i]);
}

/* The result that describes st's columns: the current one, or the
 * statement's description (fetched once). */
static const PGresult *shape(pg_stmt *st)
{
    if (st->res != NULL)
        return st->res;
    if (st->desc == NULL && st->name[0] != '\0' &&
        rpg_drain(st->db) == CQ_OK) {
        PGresult *r = PQdescribePrepared(st->db->c, st->name);
        if (r != NULL && PQresultStatus(r) == PGRES_COMMAND_OK)
            st->desc = r;
        else
            PQclear(r);
    }
    return st->desc;
}

int rpg_column_count(void *vst)
{
    const PGresult *r = shape(vst);
    return r != NULL ? PQnfields(r) : 0;
}

const char *rpg_column_name(void *vst, int i)
{
    const PGresult *r = shape(vst);
    return r != NULL && i >= 0 && i < PQnfields(r) ? PQfname(r, i) : NULL;
}

/* The current row's value of column i, or NULL (no row, no column, SQL
 * NULL). */
static const char *value(pg_stmt *st, int i)
{
    if (st->res == NULL || st->row < 0 || st->row >= PQntuples(st->res) ||
        i < 0 || i >= PQnfields(st->res) || PQgetisnull(st->res, st->row, i))
        return NULL;
    return PQgetvalue(st->res, st->row, i);
}

cq_rtype rpg_column_type(void *vst, int i)
{
    pg_stmt *st = vst;

    return value(st, i) == NULL ? CQ_RTYPE_NULL : rpg_type_of(PQftype(st->res, i));
}

int64_t rpg_column_int(void *vst, int i)
{
    pg_stmt *st = vst;
    const char *v = value(st, i);

    if (v == NULL)
        return 0;
    switch (PQftype(st->res, i)) {
    case OID_BOOL: return v[0] == 't';
    case OID_FLOAT4:
    case OID_FLOAT8:
    case OID_NUMERIC: {
        /* as SQLite: truncated toward zero, clamped to int64 */
        double d = strtod(v, NULL);
        if (isnan(d))
            return 0;
        if (d >= 9223372036854775807.0)
            return INT64_MAX;
        if (d <= -9223372036854775808.0)
            return INT64_MIN;
        return (int64_t)d;
    }
    default: return strtoll(v, NULL, 10);
    }
}

double rpg_column_double(void *vst, int i)
{
    pg_stmt *st = vst;
    const char *v = value(st, i);

    if (v == NULL)
        return 0.0;
    if (PQftype(st->res, i) == OID_BOOL)
        return v[0] == 't';
    return strtod(v, NULL);
}

/* Decode a bytea value of column i into st->blob (kept for this row). */
static int decode_blob(pg_stmt *st, int i)
{
    const char *v = value(st, i);
    unsigned char *bytes;
    size_t n;

    if (st->blob != NULL && st->blob_col == i && st->blob_row == st->row)
        return 0;
    drop_row_data(st);
    if (v == NULL)
        return -1;
    bytes = PQunescapeBytea((const unsigned char *)v, &n);
    if (bytes == NULL)
        return -1;
    /* NUL-terminated, so that it reads as text too (as SQLite's) */
    st->blob = malloc(n + 1);
    if (st->blob != NULL) {
        memcpy(st->blob, bytes, n);
        st->blob[n] = '\0';
        st->blob_len = n;
    }
    PQfreemem(bytes);
    if (st->blob == NULL)
        return -1;
    st->blob_col = i;
    st->blob_row = st->row;
    return 0;
}

const char *rpg_column_text(void *vst, int i)
{
    pg_stmt *st = vst;
    const char *v = value(st, i);

    if (v == NULL)
        return NULL;
    switch (PQftype(st->res, i)) {
    case OID_BOOL: return v[0] == 't' ? "1" : "0";
    case OID_BYTEA:
        /* as SQLite shows a blob as text: its bytes */
        return decode_blob(st, i) == 0 ? (const char *)st->blob : NULL;
    default: return v;
    }
}

const void *rpg_column_blob(void *vst, int i)
{
    pg_stmt *st = vst;
    const char *v = value(st, i);

    if (v == NULL)
        return NULL;
    if (PQftype(st->res, i) == OID_BYTEA)
        return decode_blob(st, i) == 0 ? st->blob : NULL;
    return v;
}

int rpg_column_bytes(void *vst, int i)
{
    pg_stmt *st = vst;
    const char *v = value(st, i);

    if (v == NULL)
        return 0;
    switch (PQftype(st->res, i)) {
    case OID_BOOL: return 1;
    case OID_BYTEA: return decode_blob(st, i) == 0 ? (int)st->blob_len : 0;
    default: return PQgetlength(st->res, st->row, i);
    }
}
