/*
 * rdb_pg.c -- the read-store interface (rdb.h) on PostgreSQL (libpq).
 *
 * A connection's impl is a pg_conn: the PGconn, the last failure, the
 * persistent statements prepared on it and the functions to run when it
 * closes. There is one pg_conn per PGconn, attached to it with a libpq
 * event procedure (libpq-events.h): wrapping the same PGconn again finds
 * it, and PQfinish (by whoever owns the PGconn) frees it, running the
 * on_close functions first, so views (cq_rdb_pg_wrap with owned 0) live
 * exactly as long as the PGconn, as SQLite's do.
 *
 * Statements: `?N` in the SQL text is rewritten to `$N` outside string
 * literals, quoted identifiers, dollar-quoted strings and comments
 * (rewrite), and the text is prepared as a named server-side statement
 * (PQprepare, so errors show at prepare time as with SQLite) and
 * described: whether it returns rows, and the types PostgreSQL inferred
 * for its parameters, where narrow numbers are widened to 64 bits
 * (widened). A CQ_RDB_PERSISTENT statement's name is kept for the
 * connection's life and found again by its text when the same SQL is
 * prepared again; others are deallocated at finalize. Parameters go as
 * text (int as decimal, double with 17 significant digits, NULL), blobs as
 * binary (bytea). The first step runs the statement and keeps its whole
 * result; steps walk its rows. A statement that returns no rows runs as
 * prepared (PQexecPrepared: the projector's inserts and updates keep
 * their plan); one that returns rows runs from its text (PQexecParams,
 * with the same parameter types), because PostgreSQL refuses to run a
 * prepared statement whose result columns changed ("cached plan must not
 * change result type"), as a query's do when a rebuild swaps its tables
 * for ones of a new definition; SQLite prepares such a statement again
 * by itself.
 *
 * Threads: none of its own; a PGconn and everything here belong to one
 * thread at a time.
 */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <poll.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <libpq-events.h>
#include <libpq-fe.h>

#include "cqrs/cqrs.h"
#include "store/pg.h"
#include "store/rdb.h"

/* A function to run when the connection closes (a view's free). */
typedef struct pg_hook {
    void (*fn)(void *);
    void *arg;
} pg_hook;

/* A persistent statement's server-side name, found by its (rewritten)
 * text. */
typedef struct pg_cached {
    char *sql;
    char name[24];
    unsigned gen; /* pg_conn.gen it was prepared in */
    int rows;     /* it returns rows (pg_stmt.rows) */
    Oid *types;   /* pg_stmt.exec_types, or NULL */
} pg_cached;

typedef struct pg_conn {
    PGconn *c;
    int owned; /* PQfinish at close */
    /* opened read-only by cq_rdb_pg_open: its session settings, run
     * again when it reconnects (revive), or "" */
    char session[256];
    int listening; /* it LISTENs: never connected again silently */
    unsigned gen;  /* bumped by PQreset: the server forgot every statement */
    int code;      /* the last failure's CQ_* code, CQ_OK after a success */
    char err[1024];
    pg_hook *hooks;
    size_t nhooks, caphooks;
    pg_cached *cache;
    size_t ncache, capcache;
    char (*dead)[24]; /* names to DEALLOCATE once the transaction allows */
    size_t ndead, capdead;
} pg_conn;

typedef struct pg_param {
    char *val;    /* NULL for SQL NULL */
    int len;      /* bytes, for blobs */
    int fmt;      /* 0 text, 1 binary */
    int owned;    /* val is ours to free */
    char num[32]; /* int and double values live here */
} pg_param;

typedef struct pg_stmt {
    pg_conn *db;
    char *sql; /* rewritten: $N */
    char name[24];
    unsigned gen;
    int persistent;
    int nparams;
    Oid *types;      /* gap_types, or NULL */
    Oid *exec_types; /* the parameter types it runs with, or NULL */
    int rows;        /* it returns rows: run from its text (see the top) */
    pg_param *params;
    const char **vals; /* scratch for PQexecPrepared */
    int *lens, *fmts;
    PGresult *res;  /* the result being walked, or NULL */
    PGresult *desc; /* PQdescribePrepared, for names before a step */
    int row;        /* the current row, -1 before the first */
    int done;       /* the last step answered DONE: the next one runs again */
    unsigned char *blob; /* a bytea column decoded for column_blob */
    size_t blob_len;
    int blob_col, blob_row;
} pg_stmt;

static atomic_uint next_name;

/* ---- characters of SQL ---- */

static int ident_char(char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
           (ch >= '0' && ch <= '9') || ch == '_' || ch == '$' ||
           (unsigned char)ch >= 0x80;
}

static int is_digit(char ch)
{
    return ch >= '0' && ch <= '9';
}

/* ---- the connection's life ---- */

static int pg_event(PGEventId id, void *info, void *pass);

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
static int revive(pg_conn *p, PGTransactionStatusType before)
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
static int fail(pg_conn *p, const PGresult *r)
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

static int fail_msg(pg_conn *p, int code, const char *msg)
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
static int result_rc(pg_conn *p, PGresult *r)
{
    ExecStatusType s = r != NULL ? PQresultStatus(r) : PGRES_FATAL_ERROR;
    int rc = CQ_OK;

    if (s == PGRES_COMMAND_OK || s == PGRES_TUPLES_OK || s == PGRES_EMPTY_QUERY)
        p->code = CQ_OK;
    else
        rc = fail(p, r);
    PQclear(r);
    return rc;
}

/* Deallocate the statements finalized while the transaction did not
 * allow it, now that it does. Failures only leave them to the session's
 * end. */
static void flush_dead(pg_conn *p)
{
    PGTransactionStatusType ts = PQtransactionStatus(p->c);

    if (p->ndead == 0 || (ts != PQTRANS_IDLE && ts != PQTRANS_INTRANS))
        return;
    while (p->ndead > 0) {
        char sql[48];
        snprintf(sql, sizeof sql, "DEALLOCATE %s", p->dead[--p->ndead]);
        PQclear(PQexec(p->c, sql));
    }
}

/* SQLite's `BEGIN IMMEDIATE` (or EXCLUSIVE, DEFERRED) at the start of
 * sql, which the engine writes to take SQLite's write lock up front, as
 * PostgreSQL's plain `BEGIN` (whose writers lock rows as they go): a copy
 * of sql without the word, or NULL when sql does not start so (or out of
 * memory: then PostgreSQL reports the word). */
static char *plain_begin(const char *sql)
{
    static const char *const modes[] = {"IMMEDIATE", "EXCLUSIVE", "DEFERRED"};
    const char *s = sql + strspn(sql, " \t\r\n");
    char *out;

    if (strncasecmp(s, "BEGIN", 5) != 0 || !strchr(" \t\r\n", s[5]) ||
        s[5] == '\0')
        return NULL;
    s += 5;
    s += strspn(s, " \t\r\n");
    for (size_t i = 0; i < sizeof modes / sizeof modes[0]; i++) {
        size_t n = strlen(modes[i]);
        if (strncasecmp(s, modes[i], n) == 0 && !ident_char(s[n])) {
            out = malloc(strlen(s + n) + 6);
            if (out != NULL)
                sprintf(out, "BEGIN%s", s + n);
            return out;
        }
    }
    return NULL;
}

static int pg_exec(void *impl, const char *sql, char *err, size_t errcap)
{
    pg_conn *p = impl;
    char *plain = plain_begin(sql);
    PGTransactionStatusType before = PQtransactionStatus(p->c);
    int rc;

    flush_dead(p);
    rc = result_rc(p, PQexec(p->c, plain ? plain : sql));
    if (rc != CQ_OK && revive(p, before))
        rc = result_rc(p, PQexec(p->c, plain ? plain : sql));
    free(plain);
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

/* ---- types ---- */

/* The built-in types' oids (pg_type.dat; fixed across versions). */
enum {
    OID_BOOL = 16,
    OID_BYTEA = 17,
    OID_INT8 = 20,
    OID_INT2 = 21,
    OID_INT4 = 23,
    OID_FLOAT4 = 700,
    OID_FLOAT8 = 701,
    OID_NUMERIC = 1700,
    OID_TEXT = 25,
};

/* What values of type t come back as (when not NULL). */
static cq_rtype type_of(Oid t)
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
static PGresult *query(pg_conn *p, const char *sql, int n,
                       const char *const *vals)
{
    PGresult *r = PQexecParams(p->c, sql, n, NULL, vals, NULL, NULL, 0);

    if (r != NULL && PQresultStatus(r) == PGRES_TUPLES_OK) {
        p->code = CQ_OK;
        return r;
    }
    fail(p, r);
    PQclear(r);
    return NULL;
}

static int pg_object_exists(void *impl, const char *name, int *exists)
{
    pg_conn *p = impl;
    const char *v[1] = {name};
    PGresult *r = query(p,
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
    PGresult *r = query(p,
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
    PGresult *r = query(
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
               type_of((Oid)strtoul(PQgetvalue(r, i, 2), NULL, 10))) != 0)
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

/* ---- statements ---- */

/* The end (just past the closing quote, or n) of the literal or quoted
 * name that opens at sql[i]; a doubled quote is part of it, and so is a
 * backslash's next character when `esc` (E'..'). */
static size_t quoted_end(const char *sql, size_t n, size_t i, int esc)
{
    char q = sql[i];

    for (i++; i < n; i++) {
        if (esc && sql[i] == '\\' && i + 1 < n)
            i++;
        else if (sql[i] == q && i + 1 < n && sql[i + 1] == q)
            i++;
        else if (sql[i] == q)
            return i + 1;
    }
    return n;
}

/* The parameter types to prepare with when some of 1..nparams do not
 * occur in the text (seen: a bit per number): text for those, which
 * SQLite allows and PostgreSQL cannot infer (`SET b = ?3 WHERE a = ?1`),
 * the others left to the server. NULL when all occur (or out of memory:
 * then PostgreSQL says which it cannot type). */
static Oid *gap_types(const unsigned char *seen, int nparams)
{
    Oid *types = NULL;

    for (int k = 1; k <= nparams; k++) {
        if (seen[k / 8] & (1u << (k % 8)))
            continue;
        if (types == NULL &&
            (types = calloc((size_t)nparams, sizeof *types)) == NULL)
            return NULL;
        types[k - 1] = OID_TEXT;
    }
    return types;
}

/* sql with ?N written $N outside quotes and comments (see the top), in
 * *nparams the highest N or $N seen (and in *types, gap_types), and in
 * *empty whether it holds nothing but blanks, `;` and comments; NULL when
 * out of memory. */
static char *rewrite(const char *sql, int *nparams, Oid **types, int *empty)
{
    size_t n = strlen(sql), o = 0;
    char *out = malloc(2 * n + 1); /* a blank may come before each $N */
    unsigned char seen[65536 / 8];
    int maxp = 0, tokens = 0;

    memset(seen, 0, sizeof seen);

    if (out == NULL)
        return NULL;
    for (size_t i = 0; i < n;) {
        char ch = sql[i];
        int after_ident = i > 0 && ident_char(sql[i - 1]);

        if (!strchr(" \t\r\n\f\v;", ch) &&
            !(ch == '-' && i + 1 < n && sql[i + 1] == '-') &&
            !(ch == '/' && i + 1 < n && sql[i + 1] == '*'))
            tokens = 1;

        if (ch == '\'' || ch == '"') {
            /* E'..' takes backslash escapes; '' is a quote either way */
            int esc = ch == '\'' && i > 0 &&
                      (sql[i - 1] == 'E' || sql[i - 1] == 'e') &&
                      !(i > 1 && ident_char(sql[i - 2]));
            size_t end = quoted_end(sql, n, i, esc);
            memcpy(out + o, sql + i, end - i);
            o += end - i;
            i = end;
        } else if (ch == '-' && i + 1 < n && sql[i + 1] == '-') {
            while (i < n && sql[i] != '\n')
                out[o++] = sql[i++];
        } else if (ch == '/' && i + 1 < n && sql[i + 1] == '*') {
            int depth = 0; /* PostgreSQL's block comments nest */
            do {
                if (sql[i] == '/' && i + 1 < n && sql[i + 1] == '*') {
                    depth++;
                    out[o++] = sql[i++];
                } else if (sql[i] == '*' && i + 1 < n && sql[i + 1] == '/') {
                    depth--;
                    out[o++] = sql[i++];
                }
                out[o++] = sql[i++];
            } while (i < n && depth > 0);
        } else if (ch == '$' && !after_ident && i + 1 < n &&
                   is_digit(sql[i + 1])) {
            long v = strtol(sql + i + 1, NULL, 10);
            if (v > 0 && v < 65536) {
                seen[v / 8] |= (unsigned char)(1u << (v % 8));
                maxp = v > maxp ? (int)v : maxp;
            }
            out[o++] = sql[i++];
            while (i < n && is_digit(sql[i]))
                out[o++] = sql[i++];
        } else if (ch == '$' && !after_ident) {
            /* $tag$ .. $tag$ (the tag may be empty) */
            size_t t = i + 1;
            while (t < n && sql[t] != '$' && ident_char(sql[t]) &&
                   !(t == i + 1 && is_digit(sql[t])))
                t++;
            if (t < n && sql[t] == '$') {
                size_t taglen = t + 1 - i;
                const char *end = NULL;
                for (size_t k = t + 1; k + taglen <= n; k++)
                    if (memcmp(sql + k, sql + i, taglen) == 0) {
                        end = sql + k + taglen;
                        break;
                    }
                size_t stop = end ? (size_t)(end - sql) : n;
                while (i < stop)
                    out[o++] = sql[i++];
            } else {
                out[o++] = sql[i++];
            }
        } else if (ch == '?' && i + 1 < n && is_digit(sql[i + 1])) {
            long v = strtol(sql + i + 1, NULL, 10);
            if (v > 0 && v < 65536) {
                seen[v / 8] |= (unsigned char)(1u << (v % 8));
                maxp = v > maxp ? (int)v : maxp;
            }
            /* SQLite ends a word at `?` (`LIMIT?1`); PostgreSQL's words
             * may hold `$` */
            if (after_ident)
                out[o++] = ' ';
            out[o++] = '$';
            i++;
            while (i < n && is_digit(sql[i]))
                out[o++] = sql[i++];
        } else if (after_ident) {
            /* the rest of a word: a '$' or digits inside it are its own */
            out[o++] = sql[i++];
        } else {
            out[o++] = sql[i++];
        }
    }
    out[o] = '\0';
    *nparams = maxp;
    *types = gap_types(seen, maxp);
    *empty = !tokens;
    return out;
}

/* Did r fail because the server no longer has the prepared statement (a
 * DEALLOCATE ALL, or a twin of it finalized in a way that forgot it)?
 * Then preparing it again helps. */
static int statement_gone(const PGresult *r)
{
    const char *state = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;

    return state != NULL && strcmp(state, "26000") == 0;
}

static void forget_cached(pg_conn *p, const char *name)
{
    for (size_t i = 0; i < p->ncache; i++)
        if (strcmp(p->cache[i].name, name) == 0) {
            free(p->cache[i].sql);
            free(p->cache[i].types);
            p->cache[i] = p->cache[--p->ncache];
            return;
        }
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
    if (ts == PQTRANS_IDLE || ts == PQTRANS_INTRANS) {
        char sql[48];
        snprintf(sql, sizeof sql, "DEALLOCATE %s", st->name);
        PQclear(PQexec(p->c, sql));
    } else if (PQstatus(p->c) == CONNECTION_OK) {
        bury(p, st->name);
    }
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
        rc = fail(p, r);
    PQclear(r);
    return rc;
}

/* The parameter types PostgreSQL inferred for a statement (its
 * description d), the narrow numbers widened: a `?N` that PostgreSQL read
 * as an integer or float4 from its context (`COALESCE(?1, 0)`, `?1 > 0`)
 * takes any 64-bit integer or double, as SQLite's would. *wide says
 * whether one was. NULL when it cannot be told (or out of memory). */
static Oid *widened(const PGresult *d, int nparams, int *wide)
{
    Oid *types;

    *wide = 0;
    if (nparams == 0 || PQnparams(d) != nparams ||
        (types = calloc((size_t)nparams, sizeof *types)) == NULL)
        return NULL;
    for (int i = 0; i < nparams; i++) {
        types[i] = PQparamtype(d, i);
        if (types[i] == OID_INT2 || types[i] == OID_INT4) {
            types[i] = OID_INT8;
            *wide = 1;
        } else if (types[i] == OID_FLOAT4) {
            types[i] = OID_FLOAT8;
            *wide = 1;
        }
    }
    return types;
}

/* Prepare st's text on the server under a new name, which checks it as
 * SQLite's prepare does, and learn from its description whether it
 * returns rows and the parameter types to run it with (widened()). A
 * statement that returns none and had a parameter widened is prepared
 * again with the wide types. */
static int server_prepare(pg_stmt *st)
{
    pg_conn *p = st->db;
    PGresult *d;
    Oid *types = NULL;
    int rc, wide = 0;

    snprintf(st->name, sizeof st->name, "cq_%u",
             atomic_fetch_add(&next_name, 1) + 1);
    st->gen = p->gen;
    rc = prepare_as(st, NULL);
    if (rc != CQ_OK) {
        st->name[0] = '\0';
        return rc;
    }
    d = PQdescribePrepared(p->c, st->name);
    if (d != NULL && PQresultStatus(d) == PGRES_COMMAND_OK) {
        st->rows = PQnfields(d) > 0;
        types = widened(d, st->nparams, &wide);
        PQclear(st->desc);
        st->desc = d;
    } else {
        PQclear(d);
    }
    if (wide && !st->rows) {
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

static int pg_prepare(void *impl, const char *sql, unsigned flags, void **out,
                      char *err, size_t errcap)
{
    pg_conn *p = impl;
    pg_stmt *st = calloc(1, sizeof *st);
    const pg_cached *c;
    char *plain = plain_begin(sql);
    int rc = CQ_ENOMEM, empty = 0;

    if (st == NULL || (st->sql = rewrite(plain ? plain : sql, &st->nparams,
                                         &st->types, &empty)) == NULL) {
        free(plain);
        goto fail;
    }
    free(plain);
    if (empty) {
        /* as SQLite: a text without a statement does not prepare */
        rc = fail_msg(p, CQ_EINVAL, "no statement");
        snprintf(err, errcap, "%s: no statement", sql);
        goto cleanup;
    }
    st->db = p;
    st->row = -1;
    st->blob_col = -1;
    st->persistent = (flags & CQ_RDB_PERSISTENT) != 0;
    if (st->nparams > 0) {
        st->params = calloc((size_t)st->nparams, sizeof *st->params);
        st->vals = calloc((size_t)st->nparams, sizeof *st->vals);
        st->lens = calloc((size_t)st->nparams, sizeof *st->lens);
        st->fmts = calloc((size_t)st->nparams, sizeof *st->fmts);
        if (!st->params || !st->vals || !st->lens || !st->fmts)
            goto fail;
    }
    if (st->persistent && (c = find_cached(p, st->sql)) != NULL) {
        snprintf(st->name, sizeof st->name, "%s", c->name);
        st->gen = p->gen;
        st->rows = c->rows;
        st->exec_types = types_dup(c->types, st->nparams);
        p->code = CQ_OK;
    } else {
        PGTransactionStatusType before = PQtransactionStatus(p->c);
        flush_dead(p);
        rc = server_prepare(st);
        if (rc != CQ_OK && revive(p, before))
            rc = server_prepare(st);
        if (rc != CQ_OK) {
            snprintf(err, errcap, "%s: %s", sql, p->err);
            goto cleanup;
        }
    }
    *out = st;
    return CQ_OK;
fail:
    fail_msg(p, CQ_ENOMEM, "out of memory");
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

static void pg_reset(void *vst)
{
    pg_stmt *st = vst;

    drop_row_data(st);
    PQclear(st->res);
    st->res = NULL;
    st->row = -1;
    st->done = 0;
}

static void pg_finalize(void *vst)
{
    pg_stmt *st = vst;

    if (st == NULL)
        return;
    pg_reset(st);
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

static int pg_bind_int(void *vst, int i, int64_t v)
{
    pg_param *pa = param(vst, i);

    if (pa == NULL)
        return CQ_EINVAL;
    snprintf(pa->num, sizeof pa->num, "%" PRId64, v);
    pa->val = pa->num;
    return CQ_OK;
}

static int pg_bind_double(void *vst, int i, double v)
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

static int pg_bind_text(void *vst, int i, const char *s, int len, int copy)
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

static int pg_bind_blob(void *vst, int i, const void *b, int n)
{
    pg_param *pa = param(vst, i);

    if (pa == NULL || n < 0)
        return CQ_EINVAL;
    pa->val = (char *)(b != NULL ? b : "");
    pa->len = n;
    pa->fmt = 1;
    return CQ_OK;
}

static int pg_bind_null(void *vst, int i)
{
    return param(vst, i) != NULL ? CQ_OK : CQ_EINVAL;
}

static int pg_step(void *vst)
{
    pg_stmt *st = vst;
    pg_conn *p = st->db;
    PGTransactionStatusType before;
    ExecStatusType s;
    int rc;

    drop_row_data(st);
    if (st->done)
        pg_reset(st); /* SQLite runs a statement again after DONE */
    if (st->res != NULL) {
        if (st->row + 1 < PQntuples(st->res)) {
            st->row++;
            return CQ_RSTEP_ROW;
        }
        st->done = 1;
        return CQ_RSTEP_DONE;
    }
    before = PQtransactionStatus(p->c);
    flush_dead(p);
    for (int i = 0; i < st->nparams; i++) {
        st->vals[i] = st->params[i].val;
        st->lens[i] = st->params[i].len;
        st->fmts[i] = st->params[i].fmt;
    }
    for (int tries = 0;; tries++) {
        if (!st->rows && (st->gen != p->gen || st->name[0] == '\0')) {
            /* the session was reset: the server forgot the statement */
            rc = server_prepare(st);
            if (rc != CQ_OK)
                return rc;
        }
        /* one that returns rows runs from its text: parsed now, its
         * result columns are those of the tables as they are now */
        st->res = st->rows
                      ? PQexecParams(p->c, st->sql, st->nparams, st->exec_types,
                                     st->vals, st->lens, st->fmts, 0)
                      : PQexecPrepared(p->c, st->name, st->nparams, st->vals,
                                       st->lens, st->fmts, 0);
        s = st->res != NULL ? PQresultStatus(st->res) : PGRES_FATAL_ERROR;
        if (s == PGRES_TUPLES_OK || s == PGRES_COMMAND_OK ||
            s == PGRES_EMPTY_QUERY || tries > 0 || !revive(p, before))
            break;
        PQclear(st->res); /* connected again: once more */
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
    rc = fail(p, st->res);
    if (!st->rows && statement_gone(st->res)) {
        /* the next step prepares it anew */
        forget_cached(p, st->name);
        st->name[0] = '\0';
    }
    PQclear(st->res);
    st->res = NULL;
    return rc;
}

static void pg_clear(void *vst)
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
    if (st->desc == NULL && st->name[0] != '\0') {
        PGresult *r = PQdescribePrepared(st->db->c, st->name);
        if (r != NULL && PQresultStatus(r) == PGRES_COMMAND_OK)
            st->desc = r;
        else
            PQclear(r);
    }
    return st->desc;
}

static int pg_column_count(void *vst)
{
    const PGresult *r = shape(vst);
    return r != NULL ? PQnfields(r) : 0;
}

static const char *pg_column_name(void *vst, int i)
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

static cq_rtype pg_column_type(void *vst, int i)
{
    pg_stmt *st = vst;

    return value(st, i) == NULL ? CQ_RTYPE_NULL : type_of(PQftype(st->res, i));
}

static int64_t pg_column_int(void *vst, int i)
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

static double pg_column_double(void *vst, int i)
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

static const char *pg_column_text(void *vst, int i)
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

static const void *pg_column_blob(void *vst, int i)
{
    pg_stmt *st = vst;
    const char *v = value(st, i);

    if (v == NULL)
        return NULL;
    if (PQftype(st->res, i) == OID_BYTEA)
        return decode_blob(st, i) == 0 ? st->blob : NULL;
    return v;
}

static int pg_column_bytes(void *vst, int i)
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

/* ---- across connections ---- */

/* Run a one-row SELECT with text parameters; *t gets whether its one
 * value is true. */
static int select_bool(pg_conn *p, const char *sql, int n,
                       const char *const *vals, int *t)
{
    PGresult *r = query(p, sql, n, vals);

    *t = 0;
    if (r == NULL)
        return p->code;
    *t = PQntuples(r) > 0 && !PQgetisnull(r, 0, 0) &&
         PQgetvalue(r, 0, 0)[0] == 't';
    PQclear(r);
    return CQ_OK;
}

static int pg_try_lock(void *impl, const char *name, int *got)
{
    const char *v[1] = {name};

    return select_bool(impl,
                       "SELECT pg_try_advisory_lock(hashtextextended($1, 0))",
                       1, v, got);
}

static int pg_unlock(void *impl, const char *name)
{
    const char *v[1] = {name};
    int released;

    /* only a lock this session holds: pg_advisory_unlock would warn (on
     * stderr, through libpq's notice processor) about any other */
    return select_bool(
        impl,
        "SELECT pg_advisory_unlock(k) FROM (SELECT hashtextextended($1, 0)"
        " AS k) s WHERE EXISTS (SELECT 1 FROM pg_catalog.pg_locks"
        " WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
        " AND granted AND objsubid = 1"
        " AND ((classid::int8 << 32) | objid::int8) = s.k)",
        1, v, &released);
}

static int pg_notify(void *impl, const char *channel, const char *payload)
{
    pg_conn *p = impl;
    const char *v[2] = {channel, payload ? payload : ""};
    PGresult *r = query(p, "SELECT pg_notify($1, $2)", 2, v);

    PQclear(r);
    return r != NULL ? CQ_OK : p->code;
}

static int pg_listen(void *impl, const char *channel)
{
    pg_conn *p = impl;
    char *id = PQescapeIdentifier(p->c, channel, strlen(channel));
    char *sql;
    int rc;

    if (id == NULL)
        return fail(p, NULL);
    sql = malloc(strlen(id) + 8);
    if (sql == NULL) {
        PQfreemem(id);
        return fail_msg(p, CQ_ENOMEM, "out of memory");
    }
    sprintf(sql, "LISTEN %s", id);
    PQfreemem(id);
    p->listening = 1; /* a new session would not listen (revive) */
    rc = result_rc(p, PQexec(p->c, sql));
    free(sql);
    return rc;
}

static int64_t now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int pg_wait_notify(void *impl, int timeout_ms, char *channel,
                          size_t chcap, char *payload, size_t plcap)
{
    pg_conn *p = impl;
    int64_t deadline = now_ms() + (timeout_ms > 0 ? timeout_ms : 0);

    for (;;) {
        PGnotify *n = PQnotifies(p->c);
        struct pollfd pfd;
        int64_t left;
        int rc;

        if (n != NULL) {
            if (chcap > 0)
                snprintf(channel, chcap, "%s", n->relname);
            if (plcap > 0)
                snprintf(payload, plcap, "%s", n->extra ? n->extra : "");
            PQfreemem(n);
            p->code = CQ_OK;
            return 1;
        }
        if (PQstatus(p->c) != CONNECTION_OK || PQsocket(p->c) < 0)
            return fail_msg(p, CQ_EIO, "the connection is closed");
        left = deadline - now_ms();
        pfd.fd = PQsocket(p->c);
        pfd.events = POLLIN;
        pfd.revents = 0;
        rc = poll(&pfd, 1, left > 0 ? (int)left : 0);
        if (rc < 0 && errno == EINTR)
            continue;
        if (rc < 0)
            return fail_msg(p, CQ_EIO, strerror(errno));
        if (rc == 0) {
            p->code = CQ_OK;
            return 0;
        }
        if (!PQconsumeInput(p->c))
            return fail(p, NULL);
    }
}

const cq_rdb_ops cq_rdb_pg_ops = {
    .name = "postgresql",
    .close = pg_close,
    .errmsg = pg_errmsg,
    .errcode = pg_errcode,
    .exec = pg_exec,
    .in_transaction = pg_in_transaction,
    .object_exists = pg_object_exists,
    .tables = pg_tables,
    .columns = pg_columns,
    .wal_bytes = NULL,
    .on_close = pg_on_close,
    .format_real = pg_format_real,
    .prepare = pg_prepare,
    .finalize = pg_finalize,
    .bind_int = pg_bind_int,
    .bind_double = pg_bind_double,
    .bind_text = pg_bind_text,
    .bind_blob = pg_bind_blob,
    .bind_null = pg_bind_null,
    .step = pg_step,
    .reset = pg_reset,
    .clear = pg_clear,
    .column_count = pg_column_count,
    .column_name = pg_column_name,
    .column_type = pg_column_type,
    .column_int = pg_column_int,
    .column_double = pg_column_double,
    .column_text = pg_column_text,
    .column_blob = pg_column_blob,
    .column_bytes = pg_column_bytes,
    .try_lock = pg_try_lock,
    .unlock = pg_unlock,
    .notify = pg_notify,
    .listen = pg_listen,
    .wait_notify = pg_wait_notify,
};
