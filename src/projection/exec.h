/*
 * exec.h -- running declared projection statements on one SQLite
 * connection.
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
 * Thread: a cq_exec belongs to the thread that uses its connection.
 */
#ifndef CQ_PROJECTION_EXEC_H
#define CQ_PROJECTION_EXEC_H

#include <sqlite3.h>

#include "cqrs/projection.h"
#include "projection/declared.h"
#include "projection/rename.h"

typedef struct cq_exec cq_exec;

/* A new executor on db (borrowed; must outlive it). NULL on no memory. */
cq_exec *cq_exec_new(sqlite3 *db);
void cq_exec_free(cq_exec *x); /* finalizes its statements; accepts NULL */

/* The same, but every SQL text it runs or prepares is first rewritten by
 * cq_sql_rename with map[0..n) (borrowed; must outlive it): a rebuild's
 * shadow tables are written with the projection's own statements. */
cq_exec *cq_exec_new_renamed(sqlite3 *db, const cq_rename *map, size_t n);

sqlite3 *cq_exec_db(cq_exec *x);

/* Prepare sql as x would run it, only to see that it compiles (nothing is
 * cached). CQ_OK, or CQ_EIO with SQLite's message. */
int cq_exec_check(cq_exec *x, const char *sql, char *err, size_t errcap);

/* Run one SQL text with no parameters (DDL, BEGIN, ...). CQ_OK or CQ_EIO
 * with a message in err. */
int cq_exec_sql(cq_exec *x, const char *sql, char *err, size_t errcap);

/* The statement for `sql` (a string that lives as long as x: its address
 * is the cache key), prepared on first use; reset and without bindings on
 * return. NULL on error (message in err). */
sqlite3_stmt *cq_exec_stmt(cq_exec *x, const char *sql, char *err,
                           size_t errcap);

/* Prepare st now (it is cached for later use), to find errors at start.
 * CQ_OK or CQ_EIO with "statement at line N: <sqlite message>". */
int cq_exec_prepare(cq_exec *x, const cq_decl_stmt *st, char *err,
                    size_t errcap);

/* Run d's handlers for ev->type, in file order (each @each block once per
 * array element). Returns CQ_OK (also when no handler matches) or CQ_EIO
 * with "statement at line N: <sqlite message>" in err. */
int cq_exec_event(cq_exec *x, const cq_declared *d, const cq_decl_event *ev,
                  char *err, size_t errcap);

/* What cq_sql_exec (include/cqrs/projection.h) runs on: an executor and
 * where to leave an error message. */
struct cq_sql {
    cq_exec *x;
    char *err;
    size_t errcap;
};

/* Called for each result row: column names and values as JSON (new
 * references the callback takes over). Return non-zero to stop. */
typedef int (*cq_exec_row_cb)(void *arg, json_t *row);

/* Run query statement st with parameter values given by name (values[i]
 * belongs to q->params[i]; NULL = SQL NULL; INT params bound as integers).
 * CQ_OK or CQ_EIO with a message. */
int cq_exec_query(cq_exec *x, const cq_decl_query *q, const cq_decl_stmt *st,
                  const char *const *values, cq_exec_row_cb cb, void *arg,
                  char *err, size_t errcap);

#endif
