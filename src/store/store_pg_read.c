/*
 * store_pg_read.c -- the read side of the PostgreSQL event store: the pool
 * of read connections and what is served from it: the reads of a stream
 * and of everything in position order, the head, and the lookups by
 * position and version. Each is ONE statement, so what it answers (events
 * and the version or head beside them) comes from one snapshot, with no
 * BEGIN/COMMIT round trips.
 *
 * A connection that broke (the server restarted, the backend was
 * terminated) is reset when it is next borrowed; a read that failed
 * because its connection broke is tried once more on the reset one
 * (nothing had been handed out: rows reach the callback only after the
 * whole result has arrived).
 *
 * Threads: any thread. pgs_store.mu guards the list of idle readers and
 * nothing else; a borrowed reader is its borrower's alone until given
 * back.
 */
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "store/store_pg_int.h"

static pgs_reader *pool_borrow(pgs_store *w)
{
    pgs_reader *r;
    pthread_mutex_lock(&w->mu);
    while (w->nidle == 0)
        pthread_cond_wait(&w->cv, &w->mu);
    r = w->idle[--w->nidle];
    pthread_mutex_unlock(&w->mu);
    return r;
}

static void pool_return(pgs_store *w, pgs_reader *r)
{
    pthread_mutex_lock(&w->mu);
    w->idle[w->nidle++] = r;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

/* Run one read statement on a borrowed reader; *res gets its result on
 * CQ_OK (the caller PQclears it). A failure that left the connection
 * broken is retried once on the reset connection. */
static int r_exec(pgs_reader *r, int which, int n, const char *const *val,
                  PGresult **res, char *err, size_t cap, const char *ctx)
{
    pgs_q q[1] = {{.stmt = which, .n = n, .val = val}};
    int rc = CQ_EIO;

    *res = NULL;
    for (int attempt = 0; attempt < 2; attempt++) {
        rc = pgs_ensure(&r->conn, err, cap);
        if (rc != CQ_OK)
            return rc;
        rc = pgs_run(&r->conn, q, 1, err, cap, ctx);
        if (rc == CQ_OK) {
            *res = q[0].res;
            return CQ_OK;
        }
        pgs_clear(q, 1);
        if (!pgs_conn_bad(&r->conn))
            break;
    }
    return rc;
}

int pgs_read_stream(void *impl, const char *stream_id, int64_t from_version,
                    int limit, cq_event_cb cb, void *arg,
                    int64_t *stream_version, char *err, size_t errcap)
{
    static const int want[1] = {PGS_INT8OID};
    pgs_store *w = impl;
    char from[24], lim[16];
    const char *val[3] = {stream_id, from, lim};
    pgs_reader *r;
    PGresult *res = NULL;
    int64_t sv = 0;
    int rc;

    if (stream_id == NULL || cb == NULL || limit < 0) {
        pgs_put_err(err, errcap,
                    "read_stream: NULL argument or negative limit");
        return CQ_EINVAL;
    }
    if (from_version < 1)
        from_version = 1;
    snprintf(from, sizeof from, "%lld", (long long)from_version);
    snprintf(lim, sizeof lim, "%d", limit);
    r = pool_borrow(w);
    rc = r_exec(r, PR_READ_STREAM, 3, val, &res, err, errcap, "read_stream");
    if (rc != CQ_OK)
        goto done;
    /* column 0: the stream's version, the same on every row */
    if (PQntuples(res) < 1 || pgs_check_types(res, 0, want, 1) >= 0 ||
        (!PQgetisnull(res, 0, 0) &&
         (pgs_int_col(res, 0, 0, &sv) != CQ_OK || sv <= 0))) {
        sv = 0;
        pgs_put_err(err, errcap,
                    "streams: version of stream '%s' is not a positive "
                    "integer",
                    stream_id);
        rc = CQ_ECORRUPT;
        goto done;
    }
    if (sv == 0) {
        pgs_put_err(err, errcap, "stream '%s' does not exist", stream_id);
        rc = CQ_ENOTFOUND;
        goto done;
    }
    /* one row of NULL events: none to hand out */
    if (!(PQntuples(res) == 1 && PQgetisnull(res, 0, 1)))
        rc = pgs_emit_events(res, 0, 1, PGS_EC_VERSION, from_version, sv, cb,
                             arg, NULL, err, errcap, "read_stream");
done:
    PQclear(res);
    pool_return(w, r);
    if (stream_version != NULL)
        *stream_version = sv;
    return rc;
}

int pgs_read_all(void *impl, int64_t from_position, int limit, cq_event_cb cb,
                 void *arg, int64_t *head, char *err, size_t errcap)
{
    pgs_store *w = impl;
    char from[24], lim[16];
    const char *val[2] = {from, lim};
    pgs_reader *r;
    PGresult *res = NULL;
    int64_t h = 0;
    int rc;

    if (cb == NULL || limit < 0) {
        pgs_put_err(err, errcap, "read_all: NULL callback or negative limit");
        return CQ_EINVAL;
    }
    if (from_position < 1)
        from_position = 1;
    snprintf(from, sizeof from, "%lld", (long long)from_position);
    snprintf(lim, sizeof lim, "%d", limit);
    r = pool_borrow(w);
    rc = r_exec(r, PR_READ_ALL, 2, val, &res, err, errcap, "read_all");
    if (rc != CQ_OK)
        goto done;
    /* column 0: the head, the same on every row */
    rc = pgs_head_of(res, &h, err, errcap);
    if (rc != CQ_OK) {
        h = 0;
        goto done;
    }
    if (!(PQntuples(res) == 1 && PQgetisnull(res, 0, 1)))
        rc = pgs_emit_events(res, 0, 1, PGS_EC_POSITION, from_position, h, cb,
                             arg, NULL, err, errcap, "read_all");
done:
    PQclear(res);
    pool_return(w, r);
    if (head != NULL)
        *head = h;
    return rc;
}

int pgs_head_position(void *impl, int64_t *head)
{
    pgs_store *w = impl;
    pgs_reader *r;
    PGresult *res = NULL;
    int rc;

    if (head == NULL)
        return CQ_EINVAL;
    r = pool_borrow(w);
    rc = r_exec(r, PR_HEAD, 0, NULL, &res, NULL, 0, "head_position");
    if (rc == CQ_OK)
        rc = pgs_head_of(res, head, NULL, 0);
    PQclear(res);
    pool_return(w, r);
    return rc;
}

/* Run the lookup `which` (one integer column, at most one row) on a
 * borrowed reader, with $1 = text and $2 = num, or $1 = num when text is
 * NULL. CQ_OK with *found 1 and *out, or *found 0 (no row, or NULL); a
 * stored value that is not an integer >= min is CQ_ECORRUPT. */
static int lookup_int(pgs_store *w, int which, const char *text, int64_t num,
                      int64_t min, int64_t *out, int *found, char *err,
                      size_t cap, const char *ctx)
{
    static const int want[1] = {PGS_INT8OID};
    char snum[24];
    const char *val[2];
    pgs_reader *r;
    PGresult *res = NULL;
    int64_t v = 0;
    int n = 0, rc;

    *found = 0;
    snprintf(snum, sizeof snum, "%lld", (long long)num);
    if (text != NULL)
        val[n++] = text;
    val[n++] = snum;
    r = pool_borrow(w);
    rc = r_exec(r, which, n, val, &res, err, cap, ctx);
    if (rc == CQ_OK && PQntuples(res) > 0 && !PQgetisnull(res, 0, 0)) {
        if (PQntuples(res) == 1 && pgs_check_types(res, 0, want, 1) < 0 &&
            pgs_int_col(res, 0, 0, &v) == CQ_OK && v >= min) {
            *out = v;
            *found = 1;
        } else {
            pgs_put_err(err, cap, "%s: a stored value is not %s", ctx,
                        min > 0 ? "a positive integer" : "an integer");
            rc = CQ_ECORRUPT;
        }
    }
    PQclear(res);
    pool_return(w, r);
    return rc;
}

int pgs_position_of(void *impl, const char *stream_id, int64_t version,
                    int64_t *position, char *err, size_t errcap)
{
    int64_t pos = 0;
    int found = 0;
    int rc;

    if (stream_id == NULL || position == NULL) {
        pgs_put_err(err, errcap, "position_of: NULL argument");
        return CQ_EINVAL;
    }
    rc = lookup_int(impl, PR_POSITION_OF, stream_id, version, 1, &pos, &found,
                    err, errcap, "position_of");
    if (rc != CQ_OK)
        return rc;
    if (!found) {
        pgs_put_err(err, errcap, "stream '%s' has no version %lld", stream_id,
                    (long long)version);
        return CQ_ENOTFOUND;
    }
    *position = pos;
    return CQ_OK;
}

int pgs_recorded_at(void *impl, int64_t position, int64_t *ms, char *err,
                    size_t errcap)
{
    int64_t at = 0;
    int found = 0;
    int rc;

    if (ms == NULL) {
        pgs_put_err(err, errcap, "recorded_at: NULL argument");
        return CQ_EINVAL;
    }
    rc = lookup_int(impl, PR_RECORDED_AT, NULL, position, INT64_MIN, &at,
                    &found, err, errcap, "recorded_at");
    if (rc != CQ_OK)
        return rc;
    if (!found) {
        pgs_put_err(err, errcap, "no event at position %lld",
                    (long long)position);
        return CQ_ENOTFOUND;
    }
    *ms = at;
    return CQ_OK;
}

int pgs_version_at(void *impl, const char *stream_id, int64_t position,
                   int64_t *version, char *err, size_t errcap)
{
    int64_t v = 0;
    int found = 0;
    int rc;

    if (stream_id == NULL || version == NULL) {
        pgs_put_err(err, errcap, "version_at: NULL argument");
        return CQ_EINVAL;
    }
    rc = lookup_int(impl, PR_VERSION_AT, stream_id, position, 1, &v, &found,
                    err, errcap, "version_at");
    if (rc != CQ_OK)
        return rc;
    *version = found ? v : 0; /* no event of the stream up to there */
    return CQ_OK;
}
