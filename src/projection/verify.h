/*
 * verify.h -- checking a data directory's read models against the events:
 * `cqrsd verify` (docs/verify.md).
 *
 * For every declared projection it reads the checkpoint and the live
 * tables in ONE read transaction of the projection's database (read.db for
 * @mode async, events.db for @mode inline), replays events 1..checkpoint
 * through the same handlers into a scratch in-memory database, and
 * compares every table the projection's DDL creates, row by row. Each
 * difference is written to a report as one line; a summary line per
 * projection follows.
 *
 * Only read-only connections are opened (SQLite files, or PostgreSQL by
 * URI with cq_verify_run_at; the scratch database is SQLite in memory
 * either way): no write side of the store, no engine. It runs beside a
 * live server (WAL; PostgreSQL's snapshots); the live tables are compared
 * as of their checkpoint, never as of the head, so a server that is still
 * catching up is not a difference.
 *
 * Threads: a cq_verify belongs to the thread that made it.
 */
#ifndef CQ_PROJECTION_VERIFY_H
#define CQ_PROJECTION_VERIFY_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "cqrs/decider.h"
#include "cqrs/projection.h"

typedef struct cq_verify cq_verify;

/* Differences reported per table before "... and N more". */
#define CQ_VERIFY_MAX_LINES 20

/* A new, empty verifier (*out), or CQ_ENOMEM. Free with cq_verify_free. */
int cq_verify_new(cq_verify **out);

/* Decode old events with this domain's upcasters (see decider.h), as the
 * server does; borrowed until cq_verify_free. Without it events are
 * replayed as stored. Cannot fail. */
void cq_verify_set_domain(cq_verify *v, const cq_domain *domain);

/* Free v and the projections it holds; accepts NULL. */
void cq_verify_free(cq_verify *v);

/* Add the declared projection in text[0..len); `name` (a file name)
 * prefixes errors. CQ_OK, CQ_EINVAL (malformed, or a projection of that
 * name is already added) or CQ_ENOMEM, with a message in err. */
int cq_verify_load_text(cq_verify *v, const char *name, const char *text,
                        size_t len, char *err, size_t errcap);

/* Every *.sql file in dir (borrowed), in name order (alphasort): what
 * `cqrsd serve --projections DIR` loads. CQ_OK (also for none), or the
 * first failure, after which no further file is read: CQ_EIO (dir or a
 * file cannot be read), CQ_EINVAL (a file too large or malformed, a
 * name already added) or CQ_ENOMEM, with "PATH: reason" in err. */
int cq_verify_load_dir(cq_verify *v, const char *dir, char *err, size_t errcap);

/* A projection whose handler is C code (cq_engine_add_code): its declared
 * part is parsed for the name, and the run reports it as skipped (its
 * apply() is not replayed). text and code are borrowed for the call only.
 * CQ_OK, CQ_EINVAL (malformed, not @projection code->name, or the name
 * is already added) or CQ_ENOMEM, with a message in err. */
int cq_verify_add_code(cq_verify *v, const char *text, size_t len,
                       const cq_projection_code *code, char *err,
                       size_t errcap);

/* Verify every projection added, in the order added, against the data
 * directory `dir` (events.db, read.db). Report lines go to `out`
 * (borrowed); *differences gets their count over all projections (0: the
 * read models match the events; a failed projection, a missing or stale
 * one counts as one each). Returns CQ_OK when the check ran (whatever it
 * found); CQ_ENOTFOUND when dir or its events.db does not exist; CQ_EIO or
 * CQ_ENOMEM when a database cannot be read; err then says why and the
 * report may be partial. */
int cq_verify_run(cq_verify *v, const char *dir, FILE *out,
                  int64_t *differences, char *err, size_t errcap);

/* Where cq_verify_run_at finds the databases (strings borrowed for the
 * call). */
typedef struct cq_verify_where {
    const char *dir;   /* SQLite: the data directory (events.db, read.db);
                          unused when both stores are on PostgreSQL */
    const char *store; /* the event store: a PostgreSQL URI, or NULL / ""
                          for DIR/events.db */
    /* the read store: a PostgreSQL URI, or NULL / "" for the event
     * store's database when that is PostgreSQL, else DIR/read.db */
    const char *read_store;
} cq_verify_where;

/* cq_verify_run against the databases of w, as `cqrsd serve --store URI
 * [--read-store URI]` has them (cqrsd verify --store ...). The same
 * results; CQ_ENOTFOUND also when the PostgreSQL database holds no event
 * store, and CQ_EIO when it cannot be reached (err names it, password
 * hidden). On PostgreSQL the live tables are read in one REPEATABLE READ
 * transaction per projection; the replay still goes into an in-memory
 * SQLite database, and values compare across the two as rdb.h reads
 * them (a BIGINT and SQLite's INTEGER alike; text bytewise). */
int cq_verify_run_at(cq_verify *v, const cq_verify_where *w, FILE *out,
                     int64_t *differences, char *err, size_t errcap);

/* cq_verify_run_at for an event store on PostgreSQL: store_uri is its
 * database (the events, the inline projections' tables), read_uri the
 * read store's (NULL: the same database). What `cqrsd verify --store URI
 * [--read-store URI]` runs. */
int cq_verify_run_uri(cq_verify *v, const char *store_uri, const char *read_uri,
                      FILE *out, int64_t *differences, char *err,
                      size_t errcap);

#endif
