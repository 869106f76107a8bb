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
 * Only read-only SQLite connections are opened: no write side of the
 * store, no engine. WAL lets it run beside a live server; the live tables
 * are compared as of their checkpoint, never as of the head, so a server
 * that is still catching up is not a difference.
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

/* As cq_verify_run, for an event store on PostgreSQL: store_uri is its
 * database (the events, the inline projections' tables), read_uri the
 * read store's (NULL: the same database). Only read-only connections;
 * each projection's checkpoint and tables are read in one REPEATABLE READ
 * snapshot, so a server may run meanwhile. Returns as cq_verify_run
 * (CQ_EIO also when a database cannot be reached). */
int cq_verify_run_uri(cq_verify *v, const char *store_uri,
                      const char *read_uri, FILE *out, int64_t *differences,
                      char *err, size_t errcap);

#endif
