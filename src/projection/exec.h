/*
 * exec.h -- running declared projection statements on one connection of
 * the read store (store/rdb.h).
 *
 * A cq_exec wraps one connection (borrowed) and caches a prepared
 * statement per declared statement, keyed by the statement's address (a
 * cq_declared is immutable once parsed), or per SQL text a C projection or
 * the engine passes (cq_sql_exec, cq_exec_stmt), keyed by the text's
 * address. The projection engine has one for
 * read.db (the projector thread), one for events.db (inline projections,
 * on the writer thread), one per query connection, a throw-away one per
 * strong read (an in-memory database), and a renaming one on read.db per
 * rebuild in progress (cq_exec_new_renamed).
 *
 * Errors: every function that can fail returns CQ_OK or a negative CQ_*
 * code and leaves a message in err[errcap] (NUL-terminated, cut to fit;
 * errcap may be 0): the read store's message for its failures.
 *
 * Thread: a cq_exec belongs to the thread that uses its connection; none
 * of these functions may be called on one x from two threads at once, and
 * nothing here touches state shared between executors.
 */
#ifndef CQ_PROJECTION_EXEC_H
#define CQ_PROJECTION_EXEC_H

#include "cqrs/projection.h"
#include "projection/declared.h"
#include "projection/rename.h"
#include "store/rdb.h"

typedef struct cq_exec cq_exec;

/* A new executor on db. db is borrowed: the caller keeps it open until
 * after cq_exec_free(x). Returns the executor (the caller frees it with
 * cq_exec_free), or NULL when out of memory. The calling thread is the one
 * that will use db. */
cq_exec *cq_exec_new(cq_rdb *db);

/* Finalize every statement x prepared and free x; accepts NULL. Call it
 * before closing x's connection, on the thread that owns it. The
 * statements cq_exec_stmt() returned are gone after it. */
void cq_exec_free(cq_exec *x);

/* As cq_exec_new, but every SQL text x runs or prepares is first rewritten
 * by cq_sql_rename with map[0..n): a rebuild's shadow tables are written
 * with the projection's own statements. map is borrowed and must stay
 * valid, unchanged, until cq_exec_free(x). NULL when out of memory. */
cq_exec *cq_exec_new_renamed(cq_rdb *db, const cq_rename *map, size_t n);

/* The connection x was made on, borrowed (x does not own it; it is valid
 * as long as its owner keeps it open). Cannot fail; x must not be NULL.
 * Thread: the connection belongs to x's thread like x itself, so only that
 * thread may use what this returns, and statements run on it directly
 * share x's transaction. */
cq_rdb *cq_exec_db(cq_exec *x);

/* Of two texts of one statement, the one in db's dialect: pg_sql on
 * PostgreSQL, sqlite_sql otherwise (borrowed). For the engine's own
 * statements that cannot be written once for both. Cannot fail. */
const char *cq_exec_dialect(cq_rdb *db, const char *sqlite_sql,
                            const char *pg_sql);

/* The text of declared statement st in db's dialect: st->pg_sql on
 * PostgreSQL, st->sqlite_sql otherwise (both borrowed from st). Every
 * place that runs a declared statement (DDL, handler, query) takes its
 * text from here. Cannot fail. */
const char *cq_exec_text(cq_rdb *db, const cq_decl_stmt *st);

/* Prepare sql (borrowed, NUL-terminated) as x would run it, renamed, only
 * to see that it compiles; nothing is cached or run. Returns CQ_OK, or
 * CQ_EIO with the read store's message (or "out of memory" when renaming
 * ran out of it). */
int cq_exec_check(cq_exec *x, const char *sql, char *err, size_t errcap);

/* Run one SQL text (borrowed) with no parameters: DDL, BEGIN, COMMIT, ...
 * (several statements separated by ';' are allowed). Returns CQ_OK,
 * CQ_ENOMEM (renaming ran out of memory) or CQ_EIO with the read store's
 * message. */
int cq_exec_sql(cq_exec *x, const char *sql, char *err, size_t errcap);

/* The prepared statement for `sql`, prepared on first use and cached: the
 * string's address is the cache key, so sql must live, unchanged, as long
 * as x (a string literal or a declared statement's text). The statement
 * is owned by x (finalized by cq_exec_free) and borrowed by the caller,
 * who binds, steps, and then calls cq_rstmt_reset and cq_rstmt_clear on
 * it before anyone else asks for the same sql: so it is always found
 * reset and without bindings. Returns NULL on error, with the read
 * store's message or "out of memory" in err. */
cq_rstmt *cq_exec_stmt(cq_exec *x, const char *sql, char *err, size_t errcap);

/* Prepare declared statement st (borrowed; its address is the cache key,
 * so it must outlive x, as a parsed cq_declared does) now, to find errors
 * at start; it stays cached for later use. Returns CQ_OK or CQ_EIO with
 * "statement at line N: <message>" (or "out of memory"). */
int cq_exec_prepare(cq_exec *x, const cq_decl_stmt *st, char *err,
                    size_t errcap);

/* Run d's handlers for ev->type, in file order (each @each block once per
 * element of its array; zero times if the path is missing or not an
 * array), in whatever transaction x's connection is in: the caller opens
 * and ends it. d and ev are borrowed for the call (d's statements stay
 * cached, so d must outlive x). Returns CQ_OK (also when no handler
 * matches) or CQ_EIO with "statement at line N: <message>" in err, also
 * when a value cannot be bound (out of memory); statements run before the
 * failing one are not undone. */
int cq_exec_event(cq_exec *x, const cq_declared *d, const cq_decl_event *ev,
                  char *err, size_t errcap);

/* What cq_sql_exec (include/cqrs/projection.h) runs on: an executor and
 * where to leave an error message. */
struct cq_sql {
    cq_exec *x;
    char *err;
    size_t errcap;
};

/* Called for each result row: an object of column names and values (a new
 * reference the callback takes over: it must json_decref it or keep it).
 * Return non-zero to stop; cq_exec_query then returns CQ_OK. */
typedef int (*cq_exec_row_cb)(void *arg, json_t *row);

/* Run query statement st (one of q->stmts; both borrowed, st cached as in
 * cq_exec_prepare) and hand each row to cb. values[i] is the value of
 * q->params[i], borrowed for the call: NULL binds SQL NULL, INT params are
 * bound as integers (already checked by cq_declared_param_check), others
 * as text. Columns come back as integers, reals, strings or null (a BLOB,
 * or text that is not UTF-8, is null). Runs in whatever transaction x's
 * connection is in. Returns CQ_OK, CQ_ENOMEM (a row could not be built)
 * or CQ_EIO with "query NAME, line N: <message>" or the read store's
 * message. */
int cq_exec_query(cq_exec *x, const cq_decl_query *q, const cq_decl_stmt *st,
                  const char *const *values, cq_exec_row_cb cb, void *arg,
                  char *err, size_t errcap);

#endif
