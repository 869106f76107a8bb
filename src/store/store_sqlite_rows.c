/*
 * store_sqlite_rows.c -- statements and the rows they return, for every
 * connection of the SQLite event store: stepping and resetting, SQLite
 * failures as CQ_* codes with a message, and the checked decoding of what
 * is read back (events, the head, a stream's version), which is
 * untrusted. Nothing here holds state: each function works on the
 * connection and statement its caller owns at the moment.
 */
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "store/store_sqlite_int.h"

void sq_put_err(char *err, size_t cap, const char *fmt, ...)
{
    va_list ap;
    if (err == NULL || cap == 0)
        return;
    va_start(ap, fmt);
    vsnprintf(err, cap, fmt, ap);
    va_end(ap);
}

int sq_map_rc(int rc)
{
    switch (rc & 0xff) {
    case SQLITE_NOMEM: return CQ_ENOMEM;
    case SQLITE_CORRUPT:
    case SQLITE_NOTADB: return CQ_ECORRUPT;
    default: return CQ_EIO;
    }
}

/* Describe an SQLite failure (call before the statement is reset, so the
 * connection still holds the message) and map its code. */
int sq_sql_err(sqlite3 *db, int rc, char *err, size_t cap, const char *ctx)
{
    sq_put_err(err, cap, "%s: %s (sqlite error %d)", ctx, sqlite3_errmsg(db),
               sqlite3_extended_errcode(db));
    return sq_map_rc(rc);
}

void sq_done_stmt(sqlite3_stmt *st)
{
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
}

/* Step a statement that returns no rows we need; reset it. */
int sq_run_stmt(sqlite3 *db, sqlite3_stmt *st, char *err, size_t cap,
                const char *ctx)
{
    int rc = sqlite3_step(st);
    int out = CQ_OK;
    if (rc != SQLITE_DONE && rc != SQLITE_ROW)
        out = sq_sql_err(db, rc, err, cap, ctx);
    sq_done_stmt(st);
    return out;
}

/* max(position), 0 for an empty store. */
int sq_q_head(sqlite3 *db, sqlite3_stmt *st, int64_t *head, char *err,
              size_t cap)
{
    int out = CQ_OK;
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        int t = sqlite3_column_type(st, 0);
        if (t == SQLITE_NULL) {
            *head = 0;
        } else if (t == SQLITE_INTEGER && sqlite3_column_int64(st, 0) > 0) {
            *head = sqlite3_column_int64(st, 0);
        } else {
            sq_put_err(err, cap,
                       "events: highest position is not a positive integer");
            out = CQ_ECORRUPT;
        }
    } else {
        out = sq_sql_err(db, rc, err, cap, "reading the head position");
    }
    sq_done_stmt(st);
    return out;
}

/* The stream's version from the streams table, 0 if it does not exist. */
int sq_q_stream_version(sqlite3 *db, sqlite3_stmt *st, const char *stream_id,
                        int64_t *version, char *err, size_t cap)
{
    int out = CQ_OK;
    int rc = sqlite3_bind_text(st, 1, stream_id, -1, SQLITE_STATIC);
    if (rc == SQLITE_OK)
        rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        if (sqlite3_column_type(st, 0) == SQLITE_INTEGER &&
            sqlite3_column_int64(st, 0) > 0) {
            *version = sqlite3_column_int64(st, 0);
        } else {
            sq_put_err(
                err, cap,
                "streams: version of stream '%s' is not a positive integer",
                stream_id);
            out = CQ_ECORRUPT;
        }
    } else if (rc == SQLITE_DONE) {
        *version = 0;
    } else {
        out = sq_sql_err(db, rc, err, cap, "reading a stream version");
    }
    sq_done_stmt(st);
    return out;
}

/* Fetch a TEXT column after its type has been checked: no NUL inside. */
int sq_col_text(sqlite3_stmt *st, int i, const char **out)
{
    const char *p = (const char *)sqlite3_column_text(st, i);
    int n = sqlite3_column_bytes(st, i);
    if (p == NULL)
        return CQ_ENOMEM;
    if (memchr(p, '\0', (size_t)n) != NULL)
        return CQ_ECORRUPT;
    *out = p;
    return CQ_OK;
}

/* Decode one row of EVENT_COLS. The strings stay valid until the statement
 * is stepped or reset. */
static int decode_event(sqlite3_stmt *st, cq_stored_event *ev, char *err,
                        size_t cap)
{
    static const int want[EC_COUNT] = {
        SQLITE_INTEGER, SQLITE_TEXT, SQLITE_INTEGER, SQLITE_TEXT,
        SQLITE_INTEGER, SQLITE_TEXT, SQLITE_TEXT,    SQLITE_INTEGER};
    static const char *const name[EC_COUNT] = {
        "position",       "stream_id", "version",  "type",
        "schema_version", "data",      "metadata", "recorded_at"};
    /* position is the rowid alias: always an integer. */
    long long pos = sqlite3_column_int64(st, EC_POSITION);
    int64_t sv;
    int rc;

    for (int i = 0; i < EC_COUNT; i++) {
        if (sqlite3_column_type(st, i) != want[i]) {
            sq_put_err(
                err, cap,
                "event at position %lld: column %s is NULL or of the wrong "
                "type",
                pos, name[i]);
            return CQ_ECORRUPT;
        }
    }
    ev->position = sqlite3_column_int64(st, EC_POSITION);
    ev->version = sqlite3_column_int64(st, EC_VERSION);
    ev->recorded_at = sqlite3_column_int64(st, EC_RECORDED);
    sv = sqlite3_column_int64(st, EC_SCHEMA);
    if (sv < INT_MIN || sv > INT_MAX) {
        sq_put_err(err, cap,
                   "event at position %lld: schema_version %lld out of range",
                   pos, (long long)sv);
        return CQ_ECORRUPT;
    }
    ev->schema_version = (int)sv;
    static const int text_cols[] = {EC_STREAM, EC_TYPE, EC_DATA, EC_META};
    const char **text_out[] = {&ev->stream_id, &ev->type, &ev->data,
                               &ev->metadata};
    for (size_t i = 0; i < sizeof text_cols / sizeof text_cols[0]; i++) {
        rc = sq_col_text(st, text_cols[i], text_out[i]);
        if (rc == CQ_ENOMEM) {
            sq_put_err(err, cap, "event at position %lld: out of memory", pos);
            return rc;
        }
        if (rc != CQ_OK) {
            sq_put_err(err, cap,
                       "event at position %lld: column %s contains a NUL byte",
                       pos, name[text_cols[i]]);
            return rc;
        }
    }
    return CQ_OK;
}

/* Step st over EVENT_COLS rows and hand each to cb. The column seq_col
 * (position or version) must run contiguously from `expect` and stay
 * <= `max`: anything else means a hole in what should be gap-free.
 * *in_cb (may be NULL) is set while cb runs. Resets st. */
int sq_emit_events(sqlite3 *db, sqlite3_stmt *st, int seq_col, int64_t expect,
                   int64_t max, cq_event_cb cb, void *arg, int *in_cb,
                   char *err, size_t cap, const char *ctx)
{
    const char *what = seq_col == EC_POSITION ? "position" : "version";
    cq_stored_event ev;
    int out = CQ_OK;
    int rc;

    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        out = decode_event(st, &ev, err, cap);
        if (out != CQ_OK)
            break;
        int64_t seq = seq_col == EC_POSITION ? ev.position : ev.version;
        if (seq != expect || seq > max) {
            sq_put_err(err, cap,
                       "%s: expected %s %lld, found %lld (a gap or an event "
                       "beyond the head)",
                       ctx, what, (long long)expect, (long long)seq);
            out = CQ_ECORRUPT;
            break;
        }
        expect++;
        if (in_cb != NULL)
            *in_cb = 1;
        int stop = cb(arg, &ev);
        if (in_cb != NULL)
            *in_cb = 0;
        if (stop != 0)
            break;
    }
    if (out == CQ_OK && rc != SQLITE_ROW && rc != SQLITE_DONE)
        out = sq_sql_err(db, rc, err, cap, ctx);
    sq_done_stmt(st);
    return out;
}
