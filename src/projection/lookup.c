/*
 * lookup.c -- what the engine looks up in the event store through its
 * events.db read pool: the position of a stream's version, the time of a
 * position (lag) and a stream's version at a position. These become
 * operations of store.h.
 *
 * Threads: any thread; each lookup borrows a connection of the pool for
 * its duration (the pool's mutex).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/base.h"
#include "projection/engine_int.h"

/* Run a statement returning one integer through x (its prepared form is
 * cached): ?1 is `text` (if not NULL), ?2 is `a`. CQ_OK with *out,
 * CQ_ENOTFOUND (no row or NULL), or CQ_EIO. */
static int query_int(cq_exec *x, const char *sql, const char *text, int64_t a,
                     int64_t *out)
{
    char err[128];
    sqlite3_stmt *st = cq_exec_stmt(x, sql, err, sizeof err);
    int rc = CQ_ENOTFOUND;

    if (st == NULL)
        return CQ_EIO;
    if (text != NULL)
        sqlite3_bind_text(st, 1, text, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, a);
    switch (sqlite3_step(st)) {
    case SQLITE_ROW:
        if (sqlite3_column_type(st, 0) != SQLITE_NULL) {
            *out = sqlite3_column_int64(st, 0);
            rc = CQ_OK;
        }
        break;
    case SQLITE_DONE: break;
    default: rc = CQ_EIO;
    }
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return rc;
}

static const char SQL_VERSION_POSITION[] =
    "SELECT position FROM events WHERE stream_id = ?1 AND version = ?2";
static const char SQL_RECORDED_AT[] =
    "SELECT recorded_at FROM events WHERE position = ?2";
static const char SQL_VERSION_AT[] =
    "SELECT max(version) FROM events WHERE stream_id = ?1 AND position <= ?2";

int cq_engine_version_position(cq_engine *e, const char *stream_id,
                               int64_t version, int64_t *position, char *err,
                               size_t errcap)
{
    int i = cq_pool_get(&e->events);
    int rc = query_int(e->events.x[i], SQL_VERSION_POSITION, stream_id, version,
                       position);
    if (rc == CQ_EIO)
        snprintf(err, errcap, "%s", sqlite3_errmsg(e->events.db[i]));
    cq_pool_put(&e->events, i);
    return rc;
}

int cq_engine_lag_ms(cq_engine *e, int64_t position, int64_t head,
                     double *lag_ms, char *err, size_t errcap)
{
    int64_t at = 0;
    int i, rc;

    *lag_ms = 0;
    if (position >= head)
        return CQ_OK;
    i = cq_pool_get(&e->events);
    rc = query_int(e->events.x[i], SQL_RECORDED_AT, NULL, position + 1, &at);
    if (rc == CQ_EIO)
        snprintf(err, errcap, "%s", sqlite3_errmsg(e->events.db[i]));
    cq_pool_put(&e->events, i);
    if (rc == CQ_ENOTFOUND)
        return CQ_OK; /* pruned or not there: no age to tell */
    if (rc != CQ_OK)
        return rc;
    int64_t now = cq_now_ms();
    *lag_ms = now > at && at != 0 ? (double)(now - at) : 0;
    return CQ_OK;
}

int cq_engine_stream_version_at(cq_engine *e, const char *stream_id,
                                int64_t position, int64_t *version, char *err,
                                size_t errcap)
{
    int i = cq_pool_get(&e->events);
    int rc =
        query_int(e->events.x[i], SQL_VERSION_AT, stream_id, position, version);

    if (rc == CQ_EIO)
        snprintf(err, errcap, "%s", sqlite3_errmsg(e->events.db[i]));
    cq_pool_put(&e->events, i);
    if (rc == CQ_ENOTFOUND) {
        *version = 0; /* no event of the stream up to there */
        rc = CQ_OK;
    }
    return rc;
}
