/*
 * projection.h -- the public API for projections that need code.
 *
 * Most projections are declared entirely in SQL (docs/declared-sql.md).
 * When a handler needs logic SQL cannot express, write it in C: the
 * projection is still described by a declared file holding its @projection,
 * @version, @mode, table DDL and @query blocks, but with no @on blocks;
 * instead every event is handed to apply(), which writes rows through
 * cq_sql_exec(). The engine gives it the same guarantees as a declared one:
 * apply() runs inside the projection's transaction (read.db for async, the
 * command's savepoint for inline), the checkpoint commits with its rows,
 * and an error stops only this projection.
 *
 * apply() must be idempotent (applying an event twice leaves the tables as
 * they were: upsert keyed by the stream, guard counters by version) and
 * must not keep pointers it was given past its return. It is called from
 * one thread at a time (the projector, the writer for inline projections,
 * or a strong read's thread).
 */
#ifndef CQRS_PROJECTION_H
#define CQRS_PROJECTION_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "cqrs.h"

typedef struct cq_sql cq_sql; /* the projection's connection, during apply */

typedef enum cq_sql_type {
    CQ_SQL_NULL = 0,
    CQ_SQL_INT,
    CQ_SQL_REAL,
    CQ_SQL_TEXT
} cq_sql_type;

typedef struct cq_sql_value {
    cq_sql_type type;
    int64_t i;
    double r;
    const char *text; /* NUL-terminated; borrowed for the call */
} cq_sql_value;

#define CQ_SQL_INT_VALUE(v) ((cq_sql_value){CQ_SQL_INT, (v), 0, NULL})
#define CQ_SQL_TEXT_VALUE(s) ((cq_sql_value){CQ_SQL_TEXT, 0, 0, (s)})

/* Run one statement with positional parameters ?1..?n (portable SQL; see
 * docs/declared-sql.md). `sql` is the handle apply() was given, valid
 * during that call only and on its thread. `stmt` should be a string that
 * lives as long as the projection (a literal): its prepared form is cached
 * by address. params[0..n) and the texts they point to are borrowed for
 * the call. Returns CQ_OK or CQ_EIO (the message is kept for the
 * projection's error); apply() should return the code it got. */
int cq_sql_exec(cq_sql *sql, const char *stmt, const cq_sql_value *params,
                int n);

/* One event as apply() sees it; everything borrowed for the call. */
typedef struct cq_projection_event {
    int64_t position;
    const char *stream_id;
    int64_t version;
    const char *type;
    const char *time; /* RFC 3339, when it was recorded */
    const char *day;  /* YYYY-MM-DD (UTC) of time */
    const json_t *data;
    const json_t *metadata;
} cq_projection_event;

typedef struct cq_projection_code {
    const char *name; /* must equal the declared file's @projection */
    /* Apply one event. CQ_OK, or any error code to stop the projection
     * (status failed with this event). */
    int (*apply)(void *arg, cq_sql *sql, const cq_projection_event *ev);
    void *arg;
} cq_projection_code;

#endif
