/*
 * store_pg_write.c -- the write side of the PostgreSQL event store: the
 * batch's transaction under the append lock, the command's savepoint, the
 * state that says what a failure must roll back, the cached head, append
 * and fold.
 *
 * Threads: the writer thread only (store.h); nothing here locks.
 */
#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store/store_pg_int.h"

int pgs_w_misuse(pgs_store *w, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(w->msg, sizeof w->msg, fmt, ap);
    va_end(ap);
    return code;
}

/* Record that a write-side statement failed: the batch (or the command's
 * savepoint, when the failure was inside it and the connection lives)
 * accepts only rollback now. A statement sent earlier (pgs_queue: a
 * RELEASE, a SAVEPOINT, a command-log put) that failed may belong to an
 * earlier command, whose savepoint is gone: that fails the batch. */
void pgs_w_mark_failed(pgs_store *w)
{
    w->head_valid = 0;
    if (!w->in_tx)
        return;
    if (pgs_conn_bad(&w->w) || !w->in_sp || w->w.queued_failed)
        w->failed = PGS_FAIL_TX;
    else if (w->failed == PGS_FAIL_NONE)
        w->failed = PGS_FAIL_SAVEPOINT;
}

/* Common entry check of every write-side call except the rollbacks. */
int pgs_w_check(pgs_store *w, const char *what)
{
    if (w->in_cb)
        return pgs_w_misuse(w, CQ_EINVAL,
                            "%s: called from inside a fold_stream callback",
                            what);
    if (w->failed != PGS_FAIL_NONE)
        return pgs_w_misuse(
            w, CQ_EIO,
            "%s: refused: the %s has failed and accepts only rollback", what,
            w->failed == PGS_FAIL_TX ? "transaction" : "savepoint");
    /* outside a batch the head seen after our COMMIT ages at once */
    if (!w->in_tx)
        w->head_valid = 0;
    return CQ_OK;
}

/* Statements that only read: outside a transaction, one that found the
 * connection dead may run again on a new one. */
static int reads_only(int stmt)
{
    return stmt == PW_HEAD || stmt == PW_STREAM_VERSION || stmt == PW_FOLD ||
           stmt == PW_CMD_GET;
}

/* Run q[0..n) on the write connection, after the pending RELEASE if any.
 * Outside a batch the connection is first made usable (reset if it
 * broke). A failure marks the batch failed. */
int pgs_w_run(pgs_store *w, pgs_q *q, int n, const char *ctx)
{
    int rel = w->release_pending;
    int rc;

    w->release_pending = 0;
    if (!w->in_tx) {
        rc = pgs_ensure(&w->w, w->msg, sizeof w->msg);
        if (rc != CQ_OK)
            return rc;
    } else if (pgs_conn_bad(&w->w)) {
        pgs_w_mark_failed(w);
        return pgs_w_misuse(w, CQ_EIO,
                            "%s: the connection to %s was lost with the "
                            "transaction",
                            ctx, w->shown);
    }
    if (rel) {
        rc = pgs_queue(&w->w, "RELEASE cmd", "RELEASE (of the last command)",
                       w->msg, sizeof w->msg);
        if (rc != CQ_OK) {
            pgs_w_mark_failed(w);
            return rc;
        }
    }
    rc = pgs_run(&w->w, q, n, w->msg, sizeof w->msg, ctx);
    if (rc != CQ_OK && !w->in_tx && n == 1 && reads_only(q[0].stmt) &&
        pgs_conn_bad(&w->w)) {
        pgs_clear(q, n);
        rc = pgs_ensure(&w->w, w->msg, sizeof w->msg);
        if (rc == CQ_OK)
            rc = pgs_run(&w->w, q, n, w->msg, sizeof w->msg, ctx);
    }
    if (rc != CQ_OK)
        pgs_w_mark_failed(w);
    return rc;
}

/* Inside the batch: send q (no rows wanted) after the pending RELEASE if
 * any, without waiting for its answer: it is taken with the next
 * statement (pgs_queue_q), whose call fails the batch if q failed. */
int pgs_w_queue(pgs_store *w, const pgs_q *q, const char *what)
{
    int rc = CQ_OK;

    if (!w->in_tx)
        return pgs_w_misuse(w, CQ_EINVAL, "%s: no transaction is open", what);
    if (pgs_conn_bad(&w->w)) {
        pgs_w_mark_failed(w);
        return pgs_w_misuse(w, CQ_EIO,
                            "%s: the connection to %s was lost with the "
                            "transaction",
                            what, w->shown);
    }
    if (w->release_pending) {
        w->release_pending = 0;
        rc = pgs_queue(&w->w, "RELEASE cmd", "RELEASE (of the last command)",
                       w->msg, sizeof w->msg);
    }
    if (rc == CQ_OK)
        rc = pgs_queue_q(&w->w, q, what, w->msg, sizeof w->msg);
    if (rc != CQ_OK) {
        pgs_w_mark_failed(w);
        w->failed = PGS_FAIL_TX; /* what was queued before is lost too */
    }
    return rc;
}

static void end_tx_state(pgs_store *w)
{
    w->in_tx = 0;
    w->in_sp = 0;
    w->release_pending = 0;
    w->failed = PGS_FAIL_NONE;
    w->begin_head = 0;
}

/* BEGIN, the append lock and the head in one round trip. */
static int begin_once(pgs_store *w)
{
    pgs_q q[3] = {
        {.stmt = -1, .sql = "BEGIN ISOLATION LEVEL READ COMMITTED"},
        {.stmt = PW_LOCK},
        {.stmt = PW_HEAD},
    };
    int64_t head = 0;
    int rc = pgs_ensure(&w->w, w->msg, sizeof w->msg);

    if (rc != CQ_OK)
        return rc;
    rc = pgs_run(&w->w, q, 3, w->msg, sizeof w->msg, "BEGIN");
    if (rc == CQ_OK)
        rc = pgs_head_of(q[2].res, &head, w->msg, sizeof w->msg);
    pgs_clear(q, 3);
    if (rc != CQ_OK) {
        /* e.g. the lock timed out: no batch is open then */
        if (!pgs_conn_bad(&w->w) &&
            PQtransactionStatus(w->w.c) != PQTRANS_IDLE)
            PQclear(PQexec(w->w.c, "ROLLBACK"));
        return rc;
    }
    w->head = head;
    w->head_valid = 1;
    return CQ_OK;
}

int pgs_tx_begin(pgs_store *w)
{
    int rc = pgs_w_check(w, "begin");
    if (rc != CQ_OK)
        return rc;
    if (w->in_tx)
        return pgs_w_misuse(w, CQ_EINVAL,
                            "begin: a transaction is already open");
    w->release_pending = 0;
    rc = begin_once(w);
    /* A connection that died while idle (the server restarted) shows only
     * when used; nothing had started, so one more try is safe. */
    if (rc != CQ_OK && pgs_conn_bad(&w->w))
        rc = begin_once(w);
    if (rc != CQ_OK)
        return rc;
    w->in_tx = 1;
    w->in_sp = 0;
    w->failed = PGS_FAIL_NONE;
    w->begin_head = w->head;
    return CQ_OK;
}

int pgs_tx_commit(pgs_store *w)
{
    char payload[24];
    const char *val[1] = {payload};
    pgs_q q[3];
    int n = 0, ci, hi, rc;
    int64_t head = 0;
    PGresult *cr;

    rc = pgs_w_check(w, "commit");
    if (rc != CQ_OK)
        return rc;
    if (!w->in_tx)
        return pgs_w_misuse(w, CQ_EINVAL, "commit: no transaction is open");
    if (w->in_sp)
        return pgs_w_misuse(w, CQ_EINVAL,
                            "commit: the command's savepoint is still open "
                            "(release or roll it back first)");
    if (pgs_conn_bad(&w->w)) {
        w->failed = PGS_FAIL_TX;
        w->head_valid = 0;
        return pgs_w_misuse(w, CQ_EIO,
                            "COMMIT: the connection to %s was lost with the "
                            "transaction; nothing of the batch committed",
                            w->shown);
    }
    memset(q, 0, sizeof q);
    if (w->head > w->begin_head) {
        /* delivered to listeners at COMMIT, dropped by a rollback */
        snprintf(payload, sizeof payload, "%lld", (long long)w->head);
        q[n++] = (pgs_q){.stmt = PW_NOTIFY, .n = 1, .val = val};
    }
    ci = n;
    q[n++] = (pgs_q){.stmt = -1, .sql = "COMMIT"};
    hi = n;
    q[n++] = (pgs_q){.stmt = PW_HEAD};
    rc = pgs_w_run(w, q, n, "COMMIT");
    cr = q[ci].res;
    if (cr != NULL && PQresultStatus(cr) == PGRES_COMMAND_OK &&
        strcmp(PQcmdStatus(cr), "COMMIT") == 0) {
        /* Committed, whatever became of the head read after it. */
        end_tx_state(w);
        w->head_valid = q[hi].res != NULL &&
                        PQresultStatus(q[hi].res) == PGRES_TUPLES_OK &&
                        pgs_head_of(q[hi].res, &head, NULL, 0) == CQ_OK;
        w->head = head;
        pgs_clear(q, n);
        return CQ_OK;
    }
    if (cr != NULL && PQresultStatus(cr) == PGRES_COMMAND_OK) {
        /* PostgreSQL answers COMMIT of a failed transaction with ROLLBACK */
        rc = pgs_w_misuse(w, CQ_EIO,
                          "COMMIT: the transaction had failed and was rolled "
                          "back (a statement on the write connection failed)");
    } else if (pgs_conn_bad(&w->w)) {
        char why[PGS_MSG_CAP];
        snprintf(why, sizeof why, "%s", w->msg);
        rc = pgs_w_misuse(w, CQ_EIO,
                          "COMMIT: the connection was lost before the answer "
                          "came; whether the batch committed is unknown: %s",
                          why);
    } else if (rc == CQ_OK) {
        rc = pgs_w_misuse(w, CQ_EIO, "COMMIT: no answer");
    }
    pgs_clear(q, n);
    w->failed = PGS_FAIL_TX; /* not committed (or unknown): roll back */
    w->head_valid = 0;
    return rc;
}

int pgs_tx_rollback(pgs_store *w)
{
    int rc = CQ_OK;

    if (w->in_cb)
        return pgs_w_misuse(
            w, CQ_EINVAL,
            "rollback: called from inside a fold_stream callback");
    w->release_pending = 0;
    w->head_valid = 0;
    /* what was queued (a SAVEPOINT) is rolled back with the rest */
    if (!pgs_conn_bad(&w->w))
        pgs_drain(&w->w, NULL, 0);
    /* A lost connection took the transaction with it: nothing to do. */
    if (!pgs_conn_bad(&w->w) && PQtransactionStatus(w->w.c) != PQTRANS_IDLE) {
        PGresult *r = PQexec(w->w.c, "ROLLBACK");
        if (r == NULL || PQresultStatus(r) != PGRES_COMMAND_OK)
            rc = pgs_fail(w->w.c, r, w->msg, sizeof w->msg, "ROLLBACK");
        PQclear(r);
    }
    if (rc == CQ_OK || pgs_conn_bad(&w->w) ||
        PQtransactionStatus(w->w.c) == PQTRANS_IDLE) {
        end_tx_state(w);
        rc = CQ_OK;
    }
    return rc;
}

/* SAVEPOINT (after the last command's RELEASE) is sent at once but its
 * answer is taken with the next statement (pgs_queue): no round trip of
 * its own. Until then the connection stays in pipeline mode, so a
 * statement run on the write view before the next write-side call fails
 * instead of running outside the savepoint. */
static int tx_savepoint(pgs_store *w)
{
    int rc = pgs_w_check(w, "savepoint");
    if (rc != CQ_OK)
        return rc;
    if (!w->in_tx)
        return pgs_w_misuse(w, CQ_EINVAL, "savepoint: no transaction is open");
    if (w->in_sp)
        return pgs_w_misuse(w, CQ_EINVAL, "savepoint: one is already open");
    if (pgs_conn_bad(&w->w)) {
        pgs_w_mark_failed(w);
        return pgs_w_misuse(w, CQ_EIO,
                            "savepoint: the connection to %s was lost with "
                            "the transaction",
                            w->shown);
    }
    if (w->release_pending) {
        w->release_pending = 0;
        rc = pgs_queue(&w->w, "RELEASE cmd", "RELEASE (of the last command)",
                       w->msg, sizeof w->msg);
    }
    if (rc == CQ_OK)
        rc = pgs_queue(&w->w, "SAVEPOINT cmd", "SAVEPOINT", w->msg,
                       sizeof w->msg);
    if (rc != CQ_OK) {
        pgs_w_mark_failed(w);
        return rc;
    }
    w->in_sp = 1;
    return CQ_OK;
}

/* RELEASE goes with the next statement (store_pg_int.h): until then the
 * savepoint is still open on the server, which changes nothing for what
 * the batch writes; a failure of it fails the batch. */
static int tx_release(pgs_store *w)
{
    int rc = pgs_w_check(w, "release");
    if (rc != CQ_OK)
        return rc;
    if (!w->in_sp)
        return pgs_w_misuse(w, CQ_EINVAL, "release: no savepoint is open");
    w->in_sp = 0;
    w->release_pending = 1;
    return CQ_OK;
}

static int tx_rollback_savepoint(pgs_store *w)
{
    pgs_q q[3] = {
        {.stmt = -1, .sql = "ROLLBACK TO cmd"},
        {.stmt = -1, .sql = "RELEASE cmd"},
        {.stmt = PW_HEAD},
    };
    int64_t head = 0;
    int rc;

    if (w->in_cb)
        return pgs_w_misuse(
            w, CQ_EINVAL,
            "rollback_savepoint: called from inside a fold_stream callback");
    if (!w->in_sp)
        return pgs_w_misuse(w, CQ_EINVAL,
                            "rollback_savepoint: no savepoint is open");
    if (w->failed == PGS_FAIL_TX)
        return pgs_w_misuse(
            w, CQ_EIO,
            "rollback_savepoint: the transaction has failed; roll "
            "back the batch");
    if (pgs_conn_bad(&w->w)) {
        w->failed = PGS_FAIL_TX;
        return pgs_w_misuse(w, CQ_EIO,
                            "rollback_savepoint: the connection to %s was "
                            "lost with the transaction",
                            w->shown);
    }
    /* The positions the savepoint used are free again: read the head. */
    rc = pgs_run(&w->w, q, 3, w->msg, sizeof w->msg, "ROLLBACK TO");
    if (rc == CQ_OK)
        rc = pgs_head_of(q[2].res, &head, w->msg, sizeof w->msg);
    pgs_clear(q, 3);
    if (rc != CQ_OK) {
        w->failed = PGS_FAIL_TX;
        w->head_valid = 0;
        return rc;
    }
    w->head = head;
    w->head_valid = 1;
    w->in_sp = 0;
    w->failed = PGS_FAIL_NONE;
    return CQ_OK;
}

int pgs_exec_tx(void *impl, int op)
{
    pgs_store *w = impl;
    switch (op) {
    case CQ_TX_BEGIN: return pgs_tx_begin(w);
    case CQ_TX_COMMIT: return pgs_tx_commit(w);
    case CQ_TX_ROLLBACK: return pgs_tx_rollback(w);
    case CQ_TX_SAVEPOINT: return tx_savepoint(w);
    case CQ_TX_RELEASE: return tx_release(w);
    case CQ_TX_ROLLBACK_SAVEPOINT: return tx_rollback_savepoint(w);
    default:
        return pgs_w_misuse(w, CQ_EINVAL, "exec_tx: unknown operation %d", op);
    }
}

/* The head: cached inside a batch (read with BEGIN, moved by appends), or
 * read now. */
static int w_head(pgs_store *w, int64_t *head)
{
    pgs_q q[1] = {{.stmt = PW_HEAD}};
    int rc;

    if (w->head_valid) {
        *head = w->head;
        return CQ_OK;
    }
    rc = pgs_w_run(w, q, 1, "reading the head position");
    if (rc == CQ_OK)
        rc = pgs_head_of(q[0].res, head, w->msg, sizeof w->msg);
    pgs_clear(q, 1);
    if (rc != CQ_OK) {
        pgs_w_mark_failed(w);
        return rc;
    }
    w->head = *head;
    w->head_valid = w->in_tx; /* only a value read under the lock stays */
    return CQ_OK;
}

int pgs_write_head(void *impl, int64_t *position)
{
    pgs_store *w = impl;
    int fresh = w->head_valid; /* the head just after our COMMIT */
    int rc = pgs_w_check(w, "write_head");
    if (rc != CQ_OK)
        return rc;
    if (position == NULL)
        return pgs_w_misuse(w, CQ_EINVAL, "write_head: position is NULL");
    if (fresh && !w->in_tx) {
        *position = w->head;
        return CQ_OK;
    }
    /* The writer asks for the head before the inline projections write
     * their checkpoints through the write view, which libpq refuses while
     * statements are queued: take their answers now. */
    if (w->in_tx && w->w.queued > 0) {
        rc = pgs_drain(&w->w, w->msg, sizeof w->msg);
        if (rc != CQ_OK) {
            pgs_w_mark_failed(w);
            return rc;
        }
    }
    return w_head(w, position);
}

/* The stream's version from a result of PW_STREAM_VERSION: 0 rows is 0;
 * anything but a positive integer is CQ_ECORRUPT. */
static int version_of(pgs_store *w, const PGresult *r, const char *stream_id,
                      int64_t *version)
{
    static const int want[1] = {PGS_INT8OID};
    int64_t v = 0;

    if (PQntuples(r) == 0) {
        *version = 0;
        return CQ_OK;
    }
    if (PQntuples(r) != 1 || pgs_check_types(r, 0, want, 1) >= 0 ||
        pgs_int_col(r, 0, 0, &v) != CQ_OK || v <= 0)
        return pgs_w_misuse(
            w, CQ_ECORRUPT,
            "streams: version of stream '%s' is not a positive integer",
            stream_id);
    *version = v;
    return CQ_OK;
}

int pgs_stream_version(void *impl, const char *stream_id, int64_t *version)
{
    pgs_store *w = impl;
    const char *val[1] = {stream_id};
    pgs_q q[1] = {{.stmt = PW_STREAM_VERSION, .n = 1, .val = val}};
    int rc = pgs_w_check(w, "stream_version");
    if (rc != CQ_OK)
        return rc;
    if (stream_id == NULL || version == NULL)
        return pgs_w_misuse(w, CQ_EINVAL, "stream_version: NULL argument");
    rc = pgs_w_run(w, q, 1, "reading a stream version");
    if (rc == CQ_OK) {
        rc = version_of(w, q[0].res, stream_id, version);
        if (rc != CQ_OK)
            pgs_w_mark_failed(w);
    }
    pgs_clear(q, 1);
    return rc;
}

static char *put_be32(char *p, uint32_t v)
{
    p[0] = (char)(v >> 24);
    p[1] = (char)(v >> 16);
    p[2] = (char)(v >> 8);
    p[3] = (char)v;
    return p + 4;
}

/* A one-dimensional array in PostgreSQL's binary format: header, then per
 * element its length and bytes. */
static char *array_head(char *p, uint32_t elem_oid, size_t n)
{
    p = put_be32(p, 1);        /* dimensions */
    p = put_be32(p, 0);        /* no NULLs */
    p = put_be32(p, elem_oid); /* element type */
    p = put_be32(p, (uint32_t)n);
    return put_be32(p, 1); /* lower bound */
}

/* The four arrays of PW_APPEND's $5..$8 (type, schema_version, data,
 * metadata) into w->buf; vals/lens point into it. */
static int build_arrays(pgs_store *w, const cq_new_event *events, size_t n,
                        const char *vals[4], int lens[4])
{
    size_t total = 4 * 20 + n * 8, off[5];
    char *p;

    for (size_t i = 0; i < n; i++) {
        total += 12 + strlen(events[i].type) + strlen(events[i].data) +
                 strlen(events[i].metadata);
        if (total > INT_MAX / 2)
            return pgs_w_misuse(w, CQ_EINVAL,
                                "append: the events are too large");
    }
    if (total > w->bufcap) {
        char *nb = realloc(w->buf, total);
        if (nb == NULL)
            return pgs_w_misuse(w, CQ_ENOMEM, "append: out of memory");
        w->buf = nb;
        w->bufcap = total;
    }
    p = w->buf;
    for (int a = 0; a < 4; a++) {
        off[a] = (size_t)(p - w->buf);
        p = array_head(p, a == 1 ? PGS_INT4OID : PGS_TEXTOID, n);
        for (size_t i = 0; i < n; i++) {
            const char *s = a == 0   ? events[i].type
                            : a == 2 ? events[i].data
                                     : events[i].metadata;
            if (a == 1) {
                p = put_be32(p, 4);
                p = put_be32(p, (uint32_t)events[i].schema_version);
                continue;
            }
            size_t len = strlen(s);
            p = put_be32(p, (uint32_t)len);
            memcpy(p, s, len);
            p += len;
        }
    }
    off[4] = (size_t)(p - w->buf);
    for (int a = 0; a < 4; a++) {
        vals[a] = w->buf + off[a];
        lens[a] = (int)(off[a + 1] - off[a]);
    }
    return CQ_OK;
}

static int conflict(pgs_store *w, const char *stream_id, int64_t expected,
                    int64_t current)
{
    char want[32];
    switch (expected) {
    case CQ_VERSION_NO_STREAM: snprintf(want, sizeof want, "no stream"); break;
    case CQ_VERSION_EXISTS:
        snprintf(want, sizeof want, "an existing stream");
        break;
    default:
        snprintf(want, sizeof want, "version %lld", (long long)expected);
        break;
    }
    return pgs_w_misuse(
        w, CQ_ECONFLICT,
        "append to '%s': expected %s, but the stream is at version %lld",
        stream_id, want, (long long)current);
}

/* One PW_APPEND inside the open transaction. */
static int append_in_tx(pgs_store *w, const char *stream_id, int64_t expected,
                        const cq_new_event *events, size_t n, int64_t now_ms,
                        int64_t *cur)
{
    static const int want[2] = {PGS_INT8OID, PGS_INT8OID};
    char sexp[24], sfirst[24], snow[24];
    const char *val[8] = {stream_id, sexp, sfirst, snow};
    int len[8] = {0}, fmt[8] = {0, 0, 0, 0, 1, 1, 1, 1};
    pgs_q q[1] = {{.stmt = PW_APPEND, .n = 8, .val = val, .len = len,
                   .fmt = fmt}};
    int64_t head = 0, v = 0, wrote = 0;
    int rc = w_head(w, &head);

    if (rc != CQ_OK)
        return rc;
    rc = build_arrays(w, events, n, val + 4, len + 4);
    if (rc != CQ_OK)
        return rc;
    snprintf(sexp, sizeof sexp, "%lld", (long long)expected);
    snprintf(sfirst, sizeof sfirst, "%lld", (long long)(head + 1));
    snprintf(snow, sizeof snow, "%lld", (long long)now_ms);
    rc = pgs_w_run(w, q, 1, "appending events");
    if (rc != CQ_OK) {
        pgs_clear(q, 1);
        return rc;
    }
    const PGresult *r = q[0].res;
    if (PQntuples(r) != 1 || pgs_check_types(r, 0, want, 2) >= 0 ||
        (!PQgetisnull(r, 0, 0) && (pgs_int_col(r, 0, 0, &v) != CQ_OK ||
                                   v <= 0)) ||
        pgs_int_col(r, 0, 1, &wrote) != CQ_OK) {
        pgs_clear(q, 1);
        pgs_w_mark_failed(w);
        return pgs_w_misuse(
            w, CQ_ECORRUPT,
            "streams: version of stream '%s' is not a positive integer",
            stream_id);
    }
    pgs_clear(q, 1);
    *cur = v;
    if (wrote == 0)
        return conflict(w, stream_id, expected, v);
    w->head = head + (int64_t)n;
    return CQ_OK;
}

int pgs_append(void *impl, const char *stream_id, int64_t expected,
               const cq_new_event *events, size_t n, int64_t now_ms,
               int64_t *version, int64_t *first_position)
{
    pgs_store *w = impl;
    int64_t cur = 0, first;
    int own_tx = 0;
    int rc = pgs_w_check(w, "append");
    if (rc != CQ_OK)
        return rc;

    if (stream_id == NULL || stream_id[0] == '\0' || events == NULL || n == 0 ||
        n > INT_MAX / 16 || expected < CQ_VERSION_EXISTS)
        return pgs_w_misuse(
            w, CQ_EINVAL,
            "append: need a stream id, n >= 1 events and a valid "
            "expected version");
    for (size_t i = 0; i < n; i++) {
        if (events[i].type == NULL || events[i].data == NULL ||
            events[i].metadata == NULL)
            return pgs_w_misuse(
                w, CQ_EINVAL,
                "append to '%s': event %zu lacks type, data or metadata",
                stream_id, i);
    }
    /* Outside a batch an append is its own transaction, under the lock. */
    if (!w->in_tx) {
        rc = pgs_tx_begin(w);
        if (rc != CQ_OK)
            return rc;
        own_tx = 1;
    }
    rc = append_in_tx(w, stream_id, expected, events, n, now_ms, &cur);
    if (rc != CQ_OK)
        goto fail;
    first = w->head - (int64_t)n + 1;
    if (own_tx) {
        rc = pgs_tx_commit(w);
        if (rc != CQ_OK)
            goto fail;
    }
    if (version != NULL)
        *version = cur + (int64_t)n;
    if (first_position != NULL)
        *first_position = first;
    return CQ_OK;

fail:
    if (own_tx) {
        char keep[PGS_MSG_CAP];
        memcpy(keep, w->msg, sizeof keep);
        pgs_tx_rollback(w);
        memcpy(w->msg, keep, sizeof keep);
    }
    return rc;
}

int pgs_fold_stream(void *impl, const char *stream_id, int64_t after_version,
                    cq_event_cb cb, void *arg)
{
    pgs_store *w = impl;
    char after[24];
    const char *val[2] = {stream_id, after};
    pgs_q q[1] = {{.stmt = PW_FOLD, .n = 2, .val = val}};
    int rc = pgs_w_check(w, "fold_stream");
    if (rc != CQ_OK)
        return rc;
    if (stream_id == NULL || cb == NULL)
        return pgs_w_misuse(w, CQ_EINVAL, "fold_stream: NULL argument");
    if (after_version < 0)
        after_version = 0;
    snprintf(after, sizeof after, "%lld", (long long)after_version);
    rc = pgs_w_run(w, q, 1, "fold_stream");
    if (rc == CQ_OK) {
        rc = pgs_emit_events(q[0].res, 0, 0, PGS_EC_VERSION, after_version + 1,
                             INT64_MAX, cb, arg, &w->in_cb, w->msg,
                             sizeof w->msg, "fold_stream");
        if (rc != CQ_OK)
            pgs_w_mark_failed(w);
    }
    pgs_clear(q, 1);
    return rc;
}

const char *pgs_errmsg(void *impl)
{
    pgs_store *w = impl;
    return w->msg;
}
