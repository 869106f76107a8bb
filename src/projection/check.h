/*
 * check.h -- checking declared projection files before a server touches
 * its data directory: `cqrsd serve --domain` checks every module's files
 * this way, so that a file that cannot work stops the start with one line
 * while nothing has been written yet.
 *
 * A cq_proj_check collects projections one file at a time. Each file is
 * parsed as the engine parses it, its name, query names and the tables and
 * indexes its DDL creates are compared with those of the files added
 * before, and its SQL is tried: the DDL runs in a private in-memory
 * database and every handler and query statement is prepared against the
 * tables it made (the same preparation cq_engine_start does on the live
 * database). Declared SQL is portable (docs/declared-sql.md), so the
 * in-memory SQLite is the judge whatever store the server then uses.
 *
 * Threads: a cq_proj_check belongs to the thread that made it.
 */
#ifndef CQ_PROJECTION_CHECK_H
#define CQ_PROJECTION_CHECK_H

#include <stddef.h>

typedef struct cq_proj_check cq_proj_check;

/* A new, empty check (*out, the caller's: cq_proj_check_free); CQ_OK or
 * CQ_ENOMEM. */
int cq_proj_check_new(cq_proj_check **out);

/* Check the declared file text[0..len) (borrowed for the call) read from
 * `source` (a path, copied; messages start with it). For a C-code
 * projection code_name is its cq_projection_code.name: the file must
 * declare that projection and have no @on blocks; else NULL. Returns
 * CQ_OK, or with one line in err[errcap]:
 *
 *   CQ_EINVAL  malformed ("SOURCE:LINE: ..."), a projection, query, table
 *              or index name a file added before already has ("SOURCE:
 *              table t is also created by OTHER"), or an SQL error
 *              ("SOURCE:LINE: ..." with the database's message)
 *   CQ_ENOMEM
 *
 * A file that fails is not kept. */
int cq_proj_check_add(cq_proj_check *c, const char *source, const char *text,
                      size_t len, const char *code_name, char *err,
                      size_t errcap);

/* Free c; accepts NULL. */
void cq_proj_check_free(cq_proj_check *c);

#endif
