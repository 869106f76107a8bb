/*
 * rdb_pg_int.h -- what the files of the read-store interface (rdb.h) on
 * PostgreSQL share and nobody else needs: the connection (pg_conn) and
 * statement (pg_stmt) they work on, the built-in type oids, and the
 * helpers each file gives the others. Names starting with rpg_ belong to
 * this backend. The files:
 *
 *   rdb_pg.c        a connection's life, failures, exec, the catalog, the
 *                   operations table (cq_rdb_pg_ops)
 *   rdb_pg_sql.c    SQL text: `?N` rewritten to `$N`, SQLite's BEGIN
 *                   modes, parameter types widened
 *   rdb_pg_stmt.c   statements: the per-connection cache of prepared
 *                   statements, prepare, bind, step, columns
 *   rdb_pg_pipe.c   statements answered later: savepoint statements
 *                   with the next one, queued writes (cq_rdb_queue_writes)
 *                   at the next statement that waits
 *   rdb_pg_notify.c across connections: advisory locks, NOTIFY, LISTEN
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
 * result; steps walk its rows. Every statement runs as prepared
 * (PQexecPrepared: parsed and planned once per connection).
 *
 * Result columns that change: PostgreSQL refuses to run a prepared
 * statement whose result columns changed ("cached plan must not change
 * result type", SQLSTATE 0A000), as a query's do when a rebuild swaps its
 * tables for ones of a new definition; SQLite prepares such a statement
 * again by itself. Here:
 *  1. Each statement that returns rows remembers the schema generation
 *     (rpg_schema_gen) it was prepared in. A connection that ran a
 *     statement which may change a table's shape (rpg_changes_schema:
 *     ALTER, DROP, RENAME, REPLACE) bumps the generation once its
 *     transaction has ended (committed or not), so every connection of the
 *     process prepares such a statement again, under a new name, before
 *     it next runs it (a prepare is allowed inside a transaction: no
 *     failure, no lost snapshot).
 *  2. A swap that the generation did not see (another process's, or one
 *     racing with the step) shows as 0A000. The statement forgets its
 *     name and prepares again on its next step. Outside a transaction it
 *     runs once more at once; inside one the transaction has failed, so
 *     the failure is returned (CQ_EINVAL) and the caller runs its
 *     transaction again (src/query/read.c does, once).
 * Statements that return no rows cannot hit 0A000 and keep their plan.
 *
 * Threads: none of its own; a PGconn and everything here belong to one
 * thread at a time.
 */
#ifndef CQ_STORE_RDB_PG_INT_H
#define CQ_STORE_RDB_PG_INT_H

#include <stdatomic.h>
#include <stdint.h>

#include <libpq-fe.h>

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
    unsigned schema; /* rpg_schema_gen it was prepared in */
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
    int ddl; /* its open transaction may have changed a table's shape */
    int owed; /* statements sent in an open pipeline whose answers are
               * still to be read (rdb_pg_pipe.c) */
    int queue; /* writes may be queued (cq_rdb_queue_writes) */
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
    unsigned schema; /* rpg_schema_gen it was prepared in */
    int persistent;
    int savepoint_op; /* SAVEPOINT x or RELEASE x (rdb_pg_pipe.c) */
    int write;        /* INSERT, UPDATE or DELETE: may be queued */
    int nparams;
    Oid *types;      /* gap_types, or NULL */
    Oid *exec_types; /* the parameter types it runs with, or NULL */
    int rows;        /* it returns rows: prepared again after a swap */
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

/* rdb_pg.c */

/* The schema generation: bumped when a transaction that may have changed a
 * table's shape ends on any connection of the process (see the top). The
 * process's only shared state here besides statement names; atomic. */
extern atomic_uint rpg_schema_gen;

/* Record r's failure (or the connection's, r NULL) on p; its code. */
int rpg_fail(pg_conn *p, const PGresult *r);
/* Record a failure of ours (code, msg) on p; code. */
int rpg_fail_msg(pg_conn *p, int code, const char *msg);
/* Result r (taken) was expected to be a command or rows: CQ_OK, or the
 * failure recorded. */
int rpg_result_rc(pg_conn *p, PGresult *r);
/* c's pg_conn, or NULL when it has none (never wrapped). */
pg_conn *rpg_conn_if_any(PGconn *c);
/* Run sql with text parameters; the result (the caller's to PQclear), or
 * NULL with the failure recorded. */
PGresult *rpg_query(pg_conn *p, const char *sql, int n,
                    const char *const *vals);
/* Deallocate the statements finalized while the transaction did not allow
 * it, if it does now. */
void rpg_flush_dead(pg_conn *p);
/* After a call on p that failed: 1 when p connected again and the call may
 * be tried once more (only a read-only connection of our own outside a
 * transaction: see rdb_pg.c). */
int rpg_revive(pg_conn *p, PGTransactionStatusType before);
/* What values of type t come back as (when not NULL). */
cq_rtype rpg_type_of(Oid t);

/* rdb_pg_pipe.c */

#define RPG_MAX_OWED 4 /* savepoint statements held in one pipeline */
/* statements held in one pipeline while writes are queued: their answers
 * (some 30 bytes each, a failure's some hundreds) stay far below what the
 * sockets buffer, so the server never blocks writing them while we block
 * sending */
#define RPG_MAX_QUEUED 256

/* May st (a step of it) be sent now and answered later (see the file)? */
int rpg_deferrable(const pg_stmt *st);
/* Send st (its parameters in st->vals..) in the connection's open
 * pipeline (opened if need be): CQ_OK, or the failure recorded (the
 * connection is then broken). */
int rpg_defer(pg_stmt *st);
/* Read the owed answers (none: CQ_OK at once) and leave pipeline mode:
 * CQ_OK, or the first failure, recorded. */
int rpg_drain(pg_conn *p);
/* Run st (its parameters in st->vals..) behind the owed statements, in one
 * round trip: its result (the caller's to PQclear; a failure of its own
 * included), or NULL with *rc the owed statements' failure (st did not
 * run) or the connection's. */
PGresult *rpg_exec_after(pg_stmt *st, int *rc);
/* cq_rdb_queue_writes (rdb.h). */
int rpg_queue_writes(void *impl, int on);

/* rdb_pg_sql.c */

/* A copy of sql with SQLite's BEGIN IMMEDIATE/EXCLUSIVE/DEFERRED as a
 * plain BEGIN (the caller frees it), or NULL when sql does not start so
 * (or out of memory). */
char *rpg_plain_begin(const char *sql);
/* sql with ?N written $N outside quotes and comments (the caller frees
 * it), the highest parameter number in *nparams, in *types the types for
 * parameters that do not occur (or NULL; the caller frees it), in *empty
 * whether it holds no statement; NULL when out of memory. */
char *rpg_rewrite(const char *sql, int *nparams, Oid **types, int *empty);
/* The parameter types in description d with narrow numbers widened to 64
 * bits (the caller frees them); *wide says whether one was. NULL when it
 * cannot be told (or out of memory). */
Oid *rpg_widened(const PGresult *d, int nparams, int *wide);
/* 1 when sql may change the shape of a table or view: it holds the word
 * ALTER, DROP, RENAME or REPLACE anywhere, in any case (in a literal or a
 * comment too: an over-estimate costs only prepares). */
int rpg_changes_schema(const char *sql);
/* 1 when sql is one `SAVEPOINT name` or `RELEASE [SAVEPOINT] name`. */
int rpg_is_savepoint_op(const char *sql);
/* 1 when sql starts with the word INSERT, UPDATE or DELETE (after blanks
 * and comments); whether it returns rows is the description's to say. */
int rpg_is_write(const char *sql);
/* 1 when sql starts with the word ROLLBACK or ABORT. */
int rpg_is_rollback(const char *sql);

/* rdb_pg_stmt.c: the statement operations of cq_rdb_pg_ops (rdb.h) */

int rpg_prepare(void *impl, const char *sql, unsigned flags, void **out,
                char *err, size_t errcap);
void rpg_finalize(void *vst);
int rpg_bind_int(void *vst, int i, int64_t v);
int rpg_bind_double(void *vst, int i, double v);
int rpg_bind_text(void *vst, int i, const char *s, int len, int copy);
int rpg_bind_blob(void *vst, int i, const void *b, int n);
int rpg_bind_null(void *vst, int i);
int rpg_step(void *vst);
void rpg_reset(void *vst);
void rpg_clear(void *vst);
int rpg_column_count(void *vst);
const char *rpg_column_name(void *vst, int i);
cq_rtype rpg_column_type(void *vst, int i);
int64_t rpg_column_int(void *vst, int i);
double rpg_column_double(void *vst, int i);
const char *rpg_column_text(void *vst, int i);
const void *rpg_column_blob(void *vst, int i);
int rpg_column_bytes(void *vst, int i);

/* rdb_pg_notify.c: the operations across connections of cq_rdb_pg_ops */

int rpg_try_lock(void *impl, const char *name, int *got);
int rpg_unlock(void *impl, const char *name);
int rpg_notify(void *impl, const char *channel, const char *payload);
int rpg_listen(void *impl, const char *channel);
int rpg_wait_notify(void *impl, int timeout_ms, char *channel, size_t chcap,
                    char *payload, size_t plcap);

#endif
