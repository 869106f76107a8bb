/*
 * rdb_pg.c -- the read-store interface (rdb.h) on PostgreSQL (libpq): a
 * connection's life (one pg_conn per PGconn, attached with a libpq event
 * procedure), its failures, exec, the catalog (object_exists, tables,
 * columns) and the operations table. The design is in rdb_pg_int.h;
 * statements are rdb_pg_stmt.c, their SQL text rdb_pg_sql.c, locks and
 * notifications rdb_pg_notify.c.
 *
 * Threads: none of its own; a PGconn and everything here belong to one
 * thread at a time.
 */
#include <errno.h>
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <libpq-events.h>
#include <libpq-fe.h>

#include "cqrs/cqrs.h"
#include "store/pg.h"
#include "store/rdb.h"
#include "store/rdb_pg_int.h"

/* ---- the connection's life ---- */

atomic_uint rpg_schema_gen;

static int pg_event(PGEventId id, void *info, void *pass);

pg_conn *rpg_conn_if_any(PGconn *c)
{
    return PQinstanceData(c, pg_event);
}

static pg_conn *conn_of(PGconn *c)
{
    pg_conn *p = PQinstanceData(c, pg_event);

    if (p != NULL)
        return p;
    p = calloc(1, sizeof *p);
    if (p == NULL)
        return NULL;
    p->c = c;
    if (!PQregisterEventProc(c, pg_event, "cqrsd-rdb", NULL) ||
        !PQsetInstanceData(c, pg_event, p)) {
        free(p);
        return NULL;
    }
    return p;
}

static void conn_free(pg_conn *p)
{
    for (size_t i = 0; i < p->nhooks; i++)
        p->hooks[i].fn(p->hooks[i].arg);
    for (size_t i = 0; i < p->ncache; i++) {
        free(p->cache[i].sql);
        free(p->cache[i].types);
    }
    free(p->hooks);
    free(p->cache);
    free(p->dead);
    free(p);
}

static int pg_event(PGEventId id, void *info, void *pass)
{
    (void)pass;
    if (id == PGEVT_CONNDESTROY) {
        PGEventConnDestroy *e = info;
        pg_conn *p = PQinstanceData(e->conn, pg_event);
        if (p != NULL)
            conn_free(p);
    } else if (id == PGEVT_CONNRESET) {
        PGEventConnReset *e = info;
        pg_conn *p = PQinstanceData(e->conn, pg_event);
        if (p != NULL) {
            p->gen++;
            p->ndead = 0; /* gone with the session */
            p->owed = 0;
        }
    }
    return 1;
}

cq_rdb *cq_rdb_pg_wrap(PGconn *c, int owned)
{
    pg_conn *p;
    cq_rdb *db;

    if (c == NULL || (p = conn_of(c)) == NULL)
        return NULL;
    db = cq_rdb_wrap(&cq_rdb_pg_ops, p, owned);
    if (db != NULL && owned)
        p->owned = 1;
    return db;
}

int cq_rdb_pg_open(const char *uri, unsigned flags, int busy_ms, void **impl,
                   char *err, size_t errcap)
{
    PGconn *c = NULL;
    pg_conn *p;
    char sql[256];
    int rc = cq_pg_connect(uri, 0, &c, err, errcap);

    if (rc != CQ_OK)
        return rc;
    /* a busy database: PostgreSQL waits on row and table locks itself;
     * lock_timeout bounds it as SQLite's busy timeout does */
    /* read-only: each transaction reads one snapshot, as SQLite's do
     * (queries read a checkpoint and its rows together); such
     * transactions never fail for serialization */
    /* 0 would wait for ever; SQLite's 0 (fail at once) is 100 ms here,
     * for locks PostgreSQL takes briefly on its own (a COMMIT that
     * notifies waits on the cluster's notification queue) */
    snprintf(sql, sizeof sql, "SET lock_timeout = %d%s",
             busy_ms >= 100 ? busy_ms : 100,
             flags & CQ_RDB_READONLY
                 ? "; SET default_transaction_read_only = on"
                   "; SET default_transaction_isolation = 'repeatable read'"
                 : "");
    rc = cq_pg_exec(c, sql, err, errcap);
    if (rc != CQ_OK) {
        PQfinish(c);
        return rc;
    }
    p = conn_of(c);
    if (p == NULL) {
        PQfinish(c);
        snprintf(err, errcap, "out of memory");
        return CQ_ENOMEM;
    }
    p->owned = 1;
    if (flags & CQ_RDB_READONLY)
        snprintf(p->session, sizeof p->session, "%s", sql);
    *impl = p;
    return CQ_OK;
}

/* After a call on p that failed: if the connection broke while no
 * transaction was open, and p is a read-only connection of our own (so
 * that running a statement again cannot do anything twice), connect again
 * (PQreset, then the session settings) and say that the call may be
 * tried once more: a query pool's connection comes back by itself after
 * PostgreSQL restarted, as a SQLite file never went away. */
int rpg_revive(pg_conn *p, PGTransactionStatusType before)
{
    /* UNKNOWN: it was broken already (its transaction, if any, failed
     * with it and was reported) */
    if (!p->owned || p->session[0] == '\0' || p->listening ||
        (before != PQTRANS_IDLE && before != PQTRANS_UNKNOWN) ||
        PQstatus(p->c) != CONNECTION_BAD)
        return 0;
    PQreset(p->c); /* PGEVT_CONNRESET: statements prepared again */
    return PQstatus(p->c) == CONNECTION_OK &&
           cq_pg_exec(p->c, p->session, NULL, 0) == CQ_OK;
}

static void pg_close(void *impl)
{
    pg_conn *p = impl;

    if (p->owned)
        PQfinish(p->c); /* frees p (pg_event) */
}

static int pg_on_close(void *impl, void (*fn)(void *), void *arg)
{
    pg_conn *p = impl;

    if (p->nhooks == p->caphooks) {
        size_t cap = p->caphooks ? p->caphooks * 2 : 4;
        pg_hook *h = realloc(p->hooks, cap * sizeof *h);
        if (h == NULL) {
            fn(arg);
            return CQ_ENOMEM;
        }
        p->hooks = h;
        p->caphooks = cap;
    }
    p->hooks[p->nhooks].fn = fn;
    p->hooks[p->nhooks].arg = arg;
    p->nhooks++;
    return CQ_OK;
}

/* ---- failures ---- */

/* Record r's failure (or the connection's, r NULL) on p; its code. A
 * unique violation is a constraint like any other here, and a write in a
 * read-only transaction the connection's trouble, as SQLite's READONLY
 * (rdb.h). */
int rpg_fail(pg_conn *p, const PGresult *r)
{
    const char *state = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;
    const char *primary =
        r ? PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY) : NULL;
    int rc = cq_pg_code(p->c, r, p->err, sizeof p->err);

    /* the message alone, as SQLite's: no "ERROR:" before it, no DETAIL
     * after it (which may quote a row's values) */
    if (primary != NULL && primary[0] != '\0')
        snprintf(p->err, sizeof p->err, "%s", primary);

    if (rc == CQ_EEXIST)
        rc = CQ_EINVAL;
    else if (rc == CQ_OK || (state != NULL && strcmp(state, "25006") == 0))
        rc = CQ_EIO;
    p->code = rc;
    return rc;
}

int rpg_fail_msg(pg_conn *p, int code, const char *msg)
{
    snprintf(p->err, sizeof p->err, "%s", msg);
    p->code = code;
    return code;
}

static const char *pg_errmsg(void *impl)
{
    pg_conn *p = impl;
    return p->code == CQ_OK ? "not an error" : p->err;
}

static int pg_errcode(void *impl)
{
    return ((pg_conn *)impl)->code;
}

/* Result r (taken) was expected to be a command or rows: CQ_OK, or the
 * failure recorded. */
int rpg_result_rc(pg_conn *p, PGresult *r)
{
    ExecStatusType s = r != NULL ? PQresultStatus(r) : PGRES_FATAL_ERROR;
    int rc = CQ_OK;

    if (s == PGRES_COMMAND_OK || s == PGRES_TUPLES_OK || s == PGRES_EMPTY_QUERY)
        p->code = CQ_OK;
    else
        rc = rpg_fail(p, r);
    PQclear(r);
    return rc;
}

/* Deallocate the statements finalized while the transaction did not
 * allow it, now that it does. Failures only leave them to the session's
 * end. */
void rpg_flush_dead(pg_conn *p)
{
    PGTransactionStatusType ts = PQtransactionStatus(p->c);

    if (p->ndead == 0 || p->owed > 0 ||
        (ts != PQTRANS_IDLE && ts != PQTRANS_INTRANS))
        return;
    while (p->ndead > 0) {
        char sql[48];
        snprintf(sql, sizeof sql, "DEALLOCATE %s", p->dead[--p->ndead]);
        PQclear(PQexec(p->c, sql));
    }
}

static int pg_exec(void *impl, const char *sql, char *err, size_t errcap)
{
    pg_conn *p = impl;
    char *plain = rpg_plain_begin(sql);
    PGTransactionStatusType before = PQtransactionStatus(p->c);
    int rc, owed_rc = rpg_drain(p);
    char owed_err[sizeof p->err];

    if (owed_rc != CQ_OK)
        snprintf(owed_err, sizeof owed_err, "%s", p->err);
    rpg_flush_dead(p);
    rc = rpg_result_rc(p, PQexec(p->c, plain ? plain : sql));
    if (rc != CQ_OK && rpg_revive(p, before))
        rc = rpg_result_rc(p, PQexec(p->c, plain ? plain : sql));
    free(plain);
    /* a statement sent before failed (rdb_pg_pipe.c): the transaction
     * with it, unless sql discards it (a ROLLBACK, or ROLLBACK TO); a
     * COMMIT that PostgreSQL answered by rolling back fails */
    if (owed_rc != CQ_OK && !rpg_is_rollback(sql)) {
        rc = p->code = owed_rc;
        snprintf(p->err, sizeof p->err, "%s", owed_err);
    }
    /* a swap is seen by the other connections once it has committed:
     * statements prepared again before would see the old tables */
    if (rpg_changes_schema(sql))
        p->ddl = 1;
    if (p->ddl && PQtransactionStatus(p->c) == PQTRANS_IDLE) {
        p->ddl = 0;
        atomic_fetch_add(&rpg_schema_gen, 1);
    }
    if (rc != CQ_OK && err != NULL)
        snprintf(err, errcap, "%s", p->err);
    return rc;
}

static int pg_in_transaction(void *impl)
{
    PGTransactionStatusType ts = PQtransactionStatus(((pg_conn *)impl)->c);

    return ts == PQTRANS_INTRANS || ts == PQTRANS_INERROR ||
           ts == PQTRANS_ACTIVE;
}


/* What values of type t come back as (when not NULL). */
cq_rtype rpg_type_of(Oid t)
{
    switch (t) {
    case OID_INT2:
    case OID_INT4:
    case OID_INT8:
    case OID_BOOL: return CQ_RTYPE_INT;
    case OID_FLOAT4:
    case OID_FLOAT8:
    case OID_NUMERIC: return CQ_RTYPE_REAL;
    case OID_BYTEA: return CQ_RTYPE_BLOB;
    default: return CQ_RTYPE_TEXT;
    }
}

/* ---- one-shot queries of the catalog ---- */

/* Run sql with text parameters; the result, or NULL with the failure
 * recorded. */
PGresult *rpg_query(pg_conn *p, const char *sql, int n,
                       const char *const *vals)
{
    PGresult *r;

    if (rpg_drain(p) != CQ_OK)
        return NULL;
    r = PQexecParams(p->c, sql, n, NULL, vals, NULL, NULL, 0);
    if (r != NULL && PQresultStatus(r) == PGRES_TUPLES_OK) {
        p->code = CQ_OK;
        return r;
    }
    rpg_fail(p, r);
    PQclear(r);
    return NULL;
}

static int pg_object_exists(void *impl, const char *name, int *exists)
{
    pg_conn *p = impl;
    const char *v[1] = {name};
    PGresult *r = rpg_query(p,
                        "SELECT 1 FROM pg_catalog.pg_class"
                        " WHERE relnamespace = (SELECT oid FROM"
                        " pg_catalog.pg_namespace WHERE nspname ="
                        " current_schema()) AND lower(relname) = lower($1)"
                        " AND relkind IN ('r', 'p', 'i', 'I')",
                        1, v);

    *exists = 0;
    if (r == NULL)
        return p->code;
    *exists = PQntuples(r) > 0;
    PQclear(r);
    return CQ_OK;
}

static int pg_tables(void *impl, const char *suffix,
                     int (*cb)(void *arg, const char *name), void *arg,
                     char *err, size_t errcap)
{
    pg_conn *p = impl;
    size_t n = suffix ? strlen(suffix) : 0;
    /* creation order: a table's oid is taken when it is made and kept
     * through renames, as SQLite's rowid in sqlite_schema */
    PGresult *r = rpg_query(p,
                        "SELECT relname FROM pg_catalog.pg_class"
                        " WHERE relnamespace = (SELECT oid FROM"
                        " pg_catalog.pg_namespace WHERE nspname ="
                        " current_schema()) AND relkind IN ('r', 'p')"
                        " ORDER BY oid",
                        0, NULL);

    if (r == NULL) {
        snprintf(err, errcap, "listing tables: %s", p->err);
        return p->code;
    }
    for (int i = 0; i < PQntuples(r); i++) {
        const char *name = PQgetvalue(r, i, 0);
        size_t len = strlen(name);
        if (n > 0 && (len < n || strcmp(name + len - n, suffix) != 0))
            continue;
        if (cb(arg, name) != 0)
            break;
    }
    PQclear(r);
    return CQ_OK;
}

static int pg_columns(void *impl, const char *table,
                      int (*cb)(void *arg, const char *column, int pk,
                                cq_rtype type),
                      void *arg, char *err, size_t errcap)
{
    pg_conn *p = impl;
    const char *v[1] = {table};
    /* names without regard to case, as SQLite's; the exact one first */
    PGresult *r = rpg_query(
        p,
        "WITH t AS (SELECT c.oid FROM pg_catalog.pg_class c"
        " WHERE c.relnamespace = (SELECT oid FROM pg_catalog.pg_namespace"
        " WHERE nspname = current_schema()) AND lower(c.relname) = lower($1)"
        " AND c.relkind IN ('r', 'p', 'v', 'm', 'f')"
        " ORDER BY c.relname = $1 DESC LIMIT 1)"
        " SELECT a.attname, COALESCE(array_position(i.indkey::int2[],"
        " a.attnum) - array_lower(i.indkey::int2[], 1) + 1, 0), a.atttypid"
        " FROM t JOIN pg_catalog.pg_attribute a"
        " ON a.attrelid = t.oid LEFT JOIN pg_catalog.pg_index i"
        " ON i.indrelid = t.oid AND i.indisprimary"
        " WHERE a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
        1, v);

    if (r == NULL) {
        snprintf(err, errcap, "columns of %s: %s", table, p->err);
        return p->code;
    }
    if (PQntuples(r) == 0) {
        PQclear(r);
        snprintf(err, errcap, "no table %s", table);
        return CQ_ENOTFOUND;
    }
    for (int i = 0; i < PQntuples(r); i++)
        if (cb(arg, PQgetvalue(r, i, 0), atoi(PQgetvalue(r, i, 1)),
               rpg_type_of((Oid)strtoul(PQgetvalue(r, i, 2), NULL, 10))) != 0)
            break;
    PQclear(r);
    return CQ_OK;
}

/* PostgreSQL's float8 output (extra_float_digits 1, the default): the
 * shortest digits that read back as v, in %e form when the exponent is
 * below -4 or at least 15, "Infinity", "-Infinity", "NaN". */
static void pg_format_real(double v, char *buf, size_t cap)
{
    char e[40];
    int prec, x;

    if (cap == 0)
        return;
    if (isnan(v)) {
        snprintf(buf, cap, "NaN");
        return;
    }
    if (isinf(v)) {
        snprintf(buf, cap, "%s", v < 0 ? "-Infinity" : "Infinity");
        return;
    }
    for (prec = 1; prec < 17; prec++) {
        snprintf(e, sizeof e, "%.*e", prec - 1, v);
        if (strtod(e, NULL) == v)
            break;
    }
    snprintf(e, sizeof e, "%.*e", prec - 1, v);
    x = atoi(strchr(e, 'e') + 1);
    if (x < -4 || x >= 15)
        snprintf(buf, cap, "%s", e);
    else
        snprintf(buf, cap, "%.*f", prec - 1 - x > 0 ? prec - 1 - x : 0, v);
}

const cq_rdb_ops cq_rdb_pg_ops = {
    .name = "postgresql",
    .close = pg_close,
    .errmsg = pg_errmsg,
    .errcode = pg_errcode,
    .exec = pg_exec,
    .in_transaction = pg_in_transaction,
    .queue_writes = rpg_queue_writes,
    .object_exists = pg_object_exists,
    .tables = pg_tables,
    .columns = pg_columns,
    .wal_bytes = NULL,
    .on_close = pg_on_close,
    .format_real = pg_format_real,
    .prepare = rpg_prepare,
    .finalize = rpg_finalize,
    .bind_int = rpg_bind_int,
    .bind_double = rpg_bind_double,
    .bind_text = rpg_bind_text,
    .bind_blob = rpg_bind_blob,
    .bind_null = rpg_bind_null,
    .step = rpg_step,
    .reset = rpg_reset,
    .clear = rpg_clear,
    .column_count = rpg_column_count,
    .column_name = rpg_column_name,
    .column_type = rpg_column_type,
    .column_int = rpg_column_int,
    .column_double = rpg_column_double,
    .column_text = rpg_column_text,
    .column_blob = rpg_column_blob,
    .column_bytes = rpg_column_bytes,
    .try_lock = rpg_try_lock,
    .unlock = rpg_unlock,
    .notify = rpg_notify,
    .listen = rpg_listen,
    .wait_notify = rpg_wait_notify,
};
