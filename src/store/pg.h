/*
 * pg.h -- what the PostgreSQL backends (the event store, store_pg*.c, and
 * the read store, rdb_pg.c) share: connecting, naming a server without its
 * password, and PostgreSQL's failures as CQ_* codes.
 *
 * Threads: every function here is safe from any thread; a PGconn itself
 * belongs to one thread at a time (libpq does not lock).
 */
#ifndef CQ_STORE_PG_H
#define CQ_STORE_PG_H

#include <stddef.h>

#include <libpq-fe.h>

/* 1 if `where` names a PostgreSQL database (postgresql:// or postgres://,
 * or a libpq "key=value" string holding "dbname=" or "host="), else 0. */
int cq_pg_is_uri(const char *where);

/* Copy `uri` into buf[cap] with any password replaced by "***" (both the
 * URI form user:pw@ and a password= parameter). Always NUL-terminates. */
void cq_pg_redact(const char *uri, char *buf, size_t cap);

/* Connect to uri within connect_timeout_s seconds (0 means 10). On success
 * CQ_OK with *out (the caller's to PQfinish), client_encoding UTF8, and
 * unless the URI says otherwise application_name "cqrsd" and
 * client_min_messages warning (no NOTICE lines in the log). On failure CQ_EIO with a one-line message
 * naming the redacted URI and libpq's reason; *out is NULL. */
int cq_pg_connect(const char *uri, int connect_timeout_s, PGconn **out,
                  char *err, size_t errcap);

/* A failed result (or NULL: the connection's failure) as a CQ_* code:
 *   40001 serialization, 40P01 deadlock, 55P03 lock not available,
 *   57014 query canceled (statement/lock timeout)     CQ_EBUSY
 *   53200 out of memory                               CQ_ENOMEM
 *   08*** connection, 53*** resources, 57P0* shutdown,
 *   58*** system, XX*** internal, or the connection is bad    CQ_EIO
 *   23505 unique violation                            CQ_EEXIST
 *   anything else (syntax, constraint, data)          CQ_EINVAL
 * and the one-line message (libpq's, trailing newline removed) copied into
 * err[errcap] when err is not NULL. */
int cq_pg_code(PGconn *c, const PGresult *r, char *err, size_t errcap);

/* Run sql (no parameters, any number of statements, no rows wanted).
 * CQ_OK or cq_pg_code's code with its message. */
int cq_pg_exec(PGconn *c, const char *sql, char *err, size_t errcap);

typedef struct cq_rdb cq_rdb;

/* c as a read-store connection (store/rdb.h; rdb_pg.c). owned 1: the
 * cq_rdb owns c, and cq_rdb_close finishes it. owned 0: a view that
 * borrows c, as the event store hands out its connections
 * (cq_store_write_rdb, cq_store_open_rdb): cq_rdb_close on it does
 * nothing, and it is freed when c is finished (PQfinish), so it is valid
 * exactly as long as c. Any number of views of one c share its persistent
 * statements. NULL when out of memory (c is then still the caller's). */
cq_rdb *cq_rdb_pg_wrap(PGconn *c, int owned);

/* The number of savepoint statements a view of c sent in a pipeline it
 * left open (rdb_pg_pipe.c), whose answers the caller now owes reading, in
 * order, before those of anything it sends itself; the view forgets them.
 * 0 when there are none (c in pipeline mode then is the caller's own
 * doing). For the event store, whose write connection is such a view's. */
int cq_rdb_pg_adopt_queued(PGconn *c);

#endif
