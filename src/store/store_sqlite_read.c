/*
 * store_sqlite_read.c -- the read side of the SQLite event store: the pool
 * of read-only connections and the reads served from it.
 *
 * Threads: any thread. sq_store.mu guards the list of idle readers and
 * nothing else; a borrowed reader is its borrower's alone until given
 * back, and each read runs in one read transaction (one snapshot).
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
