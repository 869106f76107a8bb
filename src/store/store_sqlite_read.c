/*
 * store_sqlite_read.c -- the read side of the SQLite event store: the pool
 * of read-only connections and what is served from it: the reads of a
 * stream and of everything in position order (one read transaction each),
 * the head, and the lookups by position and version (one statement each).
 *
 * Threads: any thread. sq_store.mu guards the list of idle readers and
 * nothing else; a borrowed reader is its borrower's alone until given
 * back, and each call sees one snapshot.
 */
#include <pthread.h>

#include "store/store_sqlite_int.h"

static sq_reader *pool_borrow(sq_store *w)
{
    sq_reader *r;
    pthread_mutex_lock(&w->mu);
    while (w->nidle == 0)
        pthread_cond_wait(&w->cv, &w->mu);
    r = w->idle[--w->nidle];
    pthread_mutex_unlock(&w->mu);
    return r;
}

static void pool_return(sq_store *w, sq_reader *r)
{
    pthread_mutex_lock(&w->mu);
    w->idle[w->nidle++] = r;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

static int r_begin(sq_reader *r, char *err, size_t cap, const char *ctx)
{
    return sq_run_stmt(r->db, r->st[R_BEGIN], err, cap, ctx);
}

/* End the read transaction whatever happened, so the connection goes
 * back to the pool clean and does not pin an old WAL snapshot. */
static int r_end(sq_reader *r, int rc, char *err, size_t cap, const char *ctx)
{
    if (sqlite3_get_autocommit(r->db))
        return rc;
    if (rc == CQ_OK)
        rc = sq_run_stmt(r->db, r->st[R_COMMIT], err, cap, ctx);
    if (!sqlite3_get_autocommit(r->db))
        sqlite3_exec(r->db, "ROLLBACK", NULL, NULL, NULL);
    return rc;
}

int sq_read_stream(void *impl, const char *stream_id, int64_t from_version,
                   int limit, cq_event_cb cb, void *arg,
                   int64_t *stream_version, char *err, size_t errcap)
{
    sq_store *w = impl;
    sq_reader *r;
    sqlite3_stmt *st;
    int64_t sv = 0;
    int rc;

    if (stream_id == NULL || cb == NULL || limit < 0) {
        sq_put_err(err, errcap, "read_stream: NULL argument or negative limit");
        return CQ_EINVAL;
    }
    if (from_version < 1)
        from_version = 1;
    r = pool_borrow(w);
    st = r->st[R_READ_STREAM];
    /* One read transaction: the version and the events are one snapshot. */
    rc = r_begin(r, err, errcap, "read_stream");
    if (rc != CQ_OK)
        goto done;
    rc = sq_q_stream_version(r->db, r->st[R_STREAM_VERSION], stream_id, &sv,
                             err, errcap);
    if (rc != CQ_OK)
        goto done;
    if (sv == 0) {
        sq_put_err(err, errcap, "stream '%s' does not exist", stream_id);
        rc = CQ_ENOTFOUND;
        goto done;
    }
    rc = sqlite3_bind_text(st, 1, stream_id, -1, SQLITE_STATIC);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_int64(st, 2, from_version);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_int(st, 3, limit);
    if (rc != SQLITE_OK) {
        rc = sq_sql_err(r->db, rc, err, errcap, "read_stream");
        sq_done_stmt(st);
        goto done;
    }
    rc = sq_emit_events(r->db, st, EC_VERSION, from_version, sv, cb, arg, NULL,
                        err, errcap, "read_stream");
done:
    rc = r_end(r, rc, err, errcap, "read_stream");
    pool_return(w, r);
    if (stream_version != NULL)
        *stream_version = sv;
    return rc;
}

int sq_read_all(void *impl, int64_t from_position, int limit, cq_event_cb cb,
                void *arg, int64_t *head, char *err, size_t errcap)
{
    sq_store *w = impl;
    sq_reader *r;
    sqlite3_stmt *st;
    int64_t h = 0;
    int rc;

    if (cb == NULL || limit < 0) {
        sq_put_err(err, errcap, "read_all: NULL callback or negative limit");
        return CQ_EINVAL;
    }
    if (from_position < 1)
        from_position = 1;
    r = pool_borrow(w);
    st = r->st[R_READ_ALL];
    rc = r_begin(r, err, errcap, "read_all");
    if (rc != CQ_OK)
        goto done;
    rc = sq_q_head(r->db, r->st[R_HEAD], &h, err, errcap);
    if (rc != CQ_OK)
        goto done;
    rc = sqlite3_bind_int64(st, 1, from_position);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_int(st, 2, limit);
    if (rc != SQLITE_OK) {
        rc = sq_sql_err(r->db, rc, err, errcap, "read_all");
        sq_done_stmt(st);
        goto done;
    }
    rc = sq_emit_events(r->db, st, EC_POSITION, from_position, h, cb, arg, NULL,
                        err, errcap, "read_all");
done:
    rc = r_end(r, rc, err, errcap, "read_all");
    pool_return(w, r);
    if (head != NULL)
        *head = h;
    return rc;
}

int sq_head_position(void *impl, int64_t *head)
{
    sq_store *w = impl;
    sq_reader *r;
    int rc;
    if (head == NULL)
        return CQ_EINVAL;
    r = pool_borrow(w);
    /* One statement is its own snapshot: no BEGIN needed. */
    rc = sq_q_head(r->db, r->st[R_HEAD], head, NULL, 0);
    pool_return(w, r);
    return rc;
}

/* Run the lookup `which` (one integer column, at most one row) on a
 * borrowed reader, with ?1 = text and ?2 = num, or ?1 = num when text is
 * NULL. One statement is its own snapshot: no BEGIN. CQ_OK with *found 1
 * and *out, or *found 0 (no row, or NULL); a stored value that is not an
 * integer >= min is CQ_ECORRUPT. */
static int lookup_int(sq_store *w, int which, const char *text, int64_t num,
                      int64_t min, int64_t *out, int *found, char *err,
                      size_t cap, const char *ctx)
{
    sq_reader *r = pool_borrow(w);
    sqlite3_stmt *st = r->st[which];
    int out_rc = CQ_OK;
    int rc = SQLITE_OK;

    *found = 0;
    if (text != NULL)
        rc = sqlite3_bind_text(st, 1, text, -1, SQLITE_STATIC);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_int64(st, text != NULL ? 2 : 1, num);
    if (rc == SQLITE_OK)
        rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        int t = sqlite3_column_type(st, 0);
        if (t == SQLITE_INTEGER && sqlite3_column_int64(st, 0) >= min) {
            *out = sqlite3_column_int64(st, 0);
            *found = 1;
        } else if (t != SQLITE_NULL) {
            sq_put_err(err, cap, "%s: a stored value is not %s", ctx,
                       min > 0 ? "a positive integer" : "an integer");
            out_rc = CQ_ECORRUPT;
        }
    } else if (rc != SQLITE_DONE) {
        out_rc = sq_sql_err(r->db, rc, err, cap, ctx);
    }
    sq_done_stmt(st);
    pool_return(w, r);
    return out_rc;
}

int sq_position_of(void *impl, const char *stream_id, int64_t version,
                   int64_t *position, char *err, size_t errcap)
{
    int64_t pos = 0;
    int found = 0;
    int rc;

    if (stream_id == NULL || position == NULL) {
        sq_put_err(err, errcap, "position_of: NULL argument");
        return CQ_EINVAL;
    }
    rc = lookup_int(impl, R_POSITION_OF, stream_id, version, 1, &pos, &found,
                    err, errcap, "position_of");
    if (rc != CQ_OK)
        return rc;
    if (!found) {
        sq_put_err(err, errcap, "stream '%s' has no version %lld", stream_id,
                   (long long)version);
        return CQ_ENOTFOUND;
    }
    *position = pos;
    return CQ_OK;
}

int sq_recorded_at(void *impl, int64_t position, int64_t *ms, char *err,
                   size_t errcap)
{
    int64_t at = 0;
    int found = 0;
    int rc;

    if (ms == NULL) {
        sq_put_err(err, errcap, "recorded_at: NULL argument");
        return CQ_EINVAL;
    }
    rc = lookup_int(impl, R_RECORDED_AT, NULL, position, INT64_MIN, &at, &found,
                    err, errcap, "recorded_at");
    if (rc != CQ_OK)
        return rc;
    if (!found) {
        sq_put_err(err, errcap, "no event at position %lld",
                   (long long)position);
        return CQ_ENOTFOUND;
    }
    *ms = at;
    return CQ_OK;
}

int sq_version_at(void *impl, const char *stream_id, int64_t position,
                  int64_t *version, char *err, size_t errcap)
{
    int64_t v = 0;
    int found = 0;
    int rc;

    if (stream_id == NULL || version == NULL) {
        sq_put_err(err, errcap, "version_at: NULL argument");
        return CQ_EINVAL;
    }
    rc = lookup_int(impl, R_VERSION_AT, stream_id, position, 1, &v, &found, err,
                    errcap, "version_at");
    if (rc != CQ_OK)
        return rc;
    *version = found ? v : 0; /* no event of the stream up to there */
    return CQ_OK;
}
