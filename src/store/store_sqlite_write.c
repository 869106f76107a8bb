/*
 * store_sqlite_write.c -- the write side of the SQLite event store: the
 * batch's transaction and the command's savepoint, the state that says
 * what a failure must roll back, the cached head, append and fold.
 *
 * Threads: the writer thread only (store.h); nothing here locks.
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "store/store_sqlite_int.h"

int sq_w_misuse(sq_store *w, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(w->msg, sizeof w->msg, fmt, ap);
    va_end(ap);
    return code;
}

/* Record that a write-side SQLite call failed: the batch (or the command's
 * savepoint, if SQLite kept the transaction) accepts only rollback now. */
void sq_w_mark_failed(sq_store *w)
{
    w->head_valid = 0;
    if (!w->in_tx)
        return;
    if (sqlite3_get_autocommit(w->db) || !w->in_sp)
        w->failed = FAIL_TX;
    else if (w->failed == FAIL_NONE)
        w->failed = FAIL_SAVEPOINT;
}

/* Common entry check of every write-side call except the rollbacks. */
int sq_w_check(sq_store *w, const char *what)
{
    if (w->in_cb)
        return sq_w_misuse(w, CQ_EINVAL,
                           "%s: called from inside a fold_stream callback",
                           what);
    if (w->failed != FAIL_NONE)
        return sq_w_misuse(
            w, CQ_EIO,
            "%s: refused: the %s has failed and accepts only rollback", what,
            w->failed == FAIL_TX ? "transaction" : "savepoint");
    return CQ_OK;
}

static int w_run(sq_store *w, int which, const char *ctx)
{
    int rc = sq_run_stmt(w->db, w->st[which], w->msg, sizeof w->msg, ctx);
    if (rc != CQ_OK)
        sq_w_mark_failed(w);
    return rc;
}

int sq_tx_begin(sq_store *w)
{
    int rc = sq_w_check(w, "begin");
    if (rc != CQ_OK)
        return rc;
    if (w->in_tx)
        return sq_w_misuse(w, CQ_EINVAL,
                           "begin: a transaction is already open");
    rc = w_run(w, W_BEGIN, "BEGIN IMMEDIATE");
    if (rc != CQ_OK)
        return rc;
    w->in_tx = 1;
    w->in_sp = 0;
    w->failed = FAIL_NONE;
    w->head_valid = 0;
    return CQ_OK;
}

int sq_tx_commit(sq_store *w)
{
    int rc = sq_w_check(w, "commit");
    if (rc != CQ_OK)
        return rc;
    if (!w->in_tx)
        return sq_w_misuse(w, CQ_EINVAL, "commit: no transaction is open");
    if (w->in_sp)
        return sq_w_misuse(w, CQ_EINVAL,
                           "commit: the command's savepoint is still open "
                           "(release or roll it back first)");
    /* With synchronous=FULL this returns after the WAL fsync. */
    rc = w_run(w, W_COMMIT, "COMMIT");
    if (rc != CQ_OK) {
        w->failed = FAIL_TX; /* nothing is durable; roll back */
        return rc;
    }
    /* A head known in the transaction is the committed head now: it stays
     * valid (for write_head after the commit) until the next BEGIN. */
    w->in_tx = 0;
    return CQ_OK;
}

int sq_tx_rollback(sq_store *w)
{
    int rc = CQ_OK;
    if (w->in_cb)
        return sq_w_misuse(
            w, CQ_EINVAL,
            "rollback: called from inside a fold_stream callback");
    /* SQLite may have rolled back already on an I/O error: then there is
     * nothing left to do. */
    if (!sqlite3_get_autocommit(w->db))
        rc = sq_run_stmt(w->db, w->st[W_ROLLBACK], w->msg, sizeof w->msg,
                         "ROLLBACK");
    if (rc == CQ_OK || sqlite3_get_autocommit(w->db)) {
        w->in_tx = 0;
        w->in_sp = 0;
        w->failed = FAIL_NONE;
    }
    w->head_valid = 0;
    return rc;
}

static int tx_savepoint(sq_store *w)
{
    int rc = sq_w_check(w, "savepoint");
    if (rc != CQ_OK)
        return rc;
    if (!w->in_tx)
        return sq_w_misuse(w, CQ_EINVAL, "savepoint: no transaction is open");
    if (w->in_sp)
        return sq_w_misuse(w, CQ_EINVAL, "savepoint: one is already open");
    rc = w_run(w, W_SAVEPOINT, "SAVEPOINT");
    if (rc == CQ_OK)
        w->in_sp = 1;
    return rc;
}

static int tx_release(sq_store *w)
{
    int rc = sq_w_check(w, "release");
    if (rc != CQ_OK)
        return rc;
    if (!w->in_sp)
        return sq_w_misuse(w, CQ_EINVAL, "release: no savepoint is open");
    rc = w_run(w, W_RELEASE, "RELEASE");
    if (rc == CQ_OK)
        w->in_sp = 0;
    else
        w->failed = FAIL_TX;
    return rc;
}

static int tx_rollback_savepoint(sq_store *w)
{
    int rc;
    if (w->in_cb)
        return sq_w_misuse(
            w, CQ_EINVAL,
            "rollback_savepoint: called from inside a fold_stream callback");
    if (!w->in_sp)
        return sq_w_misuse(w, CQ_EINVAL,
                           "rollback_savepoint: no savepoint is open");
    if (w->failed == FAIL_TX)
        return sq_w_misuse(
            w, CQ_EIO,
            "rollback_savepoint: the transaction has failed; roll "
            "back the batch");
    rc = sq_run_stmt(w->db, w->st[W_ROLLBACK_TO], w->msg, sizeof w->msg,
                     "ROLLBACK TO");
    if (rc == CQ_OK)
        rc = sq_run_stmt(w->db, w->st[W_RELEASE], w->msg, sizeof w->msg,
                         "RELEASE after ROLLBACK TO");
    /* The positions the savepoint used are free again: re-read the head. */
    w->head_valid = 0;
    if (rc != CQ_OK) {
        w->failed = FAIL_TX;
        return rc;
    }
    w->in_sp = 0;
    w->failed = FAIL_NONE;
    return CQ_OK;
}

int sq_exec_tx(void *impl, int op)
{
    sq_store *w = impl;
    switch (op) {
    case CQ_TX_BEGIN: return sq_tx_begin(w);
    case CQ_TX_COMMIT: return sq_tx_commit(w);
    case CQ_TX_ROLLBACK: return sq_tx_rollback(w);
    case CQ_TX_SAVEPOINT: return tx_savepoint(w);
    case CQ_TX_RELEASE: return tx_release(w);
    case CQ_TX_ROLLBACK_SAVEPOINT: return tx_rollback_savepoint(w);
    default:
        return sq_w_misuse(w, CQ_EINVAL, "exec_tx: unknown operation %d", op);
    }
}

static int w_head(sq_store *w, int64_t *head)
{
    int rc;
    if (w->head_valid) { /* read in this transaction, or the last commit */
        *head = w->head;
        return CQ_OK;
    }
    rc = sq_q_head(w->db, w->st[W_HEAD], head, w->msg, sizeof w->msg);
    if (rc != CQ_OK) {
        sq_w_mark_failed(w);
        return rc;
    }
    /* Only a value read under our own write lock may be cached. */
    w->head = *head;
    w->head_valid = w->in_tx;
    return CQ_OK;
}

int sq_write_head(void *impl, int64_t *position)
{
    sq_store *w = impl;
    int rc = sq_w_check(w, "write_head");
    if (rc != CQ_OK)
        return rc;
    if (position == NULL)
        return sq_w_misuse(w, CQ_EINVAL, "write_head: position is NULL");
    return w_head(w, position);
}

int sq_stream_version(void *impl, const char *stream_id, int64_t *version)
{
    sq_store *w = impl;
    int rc = sq_w_check(w, "stream_version");
    if (rc != CQ_OK)
        return rc;
    if (stream_id == NULL || version == NULL)
        return sq_w_misuse(w, CQ_EINVAL, "stream_version: NULL argument");
    rc = sq_q_stream_version(w->db, w->st[W_STREAM_VERSION], stream_id, version,
                             w->msg, sizeof w->msg);
    if (rc != CQ_OK)
        sq_w_mark_failed(w);
    return rc;
}

static int check_expected(sq_store *w, const char *stream_id, int64_t expected,
                          int64_t current)
{
    int ok;
    char want[32];
    switch (expected) {
    case CQ_VERSION_ANY: return CQ_OK;
    case CQ_VERSION_NO_STREAM:
        ok = current == 0;
        snprintf(want, sizeof want, "no stream");
        break;
    case CQ_VERSION_EXISTS:
        ok = current > 0;
        snprintf(want, sizeof want, "an existing stream");
        break;
    default:
        ok = current == expected;
        snprintf(want, sizeof want, "version %lld", (long long)expected);
        break;
    }
    if (ok)
        return CQ_OK;
    return sq_w_misuse(
        w, CQ_ECONFLICT,
        "append to '%s': expected %s, but the stream is at version %lld",
        stream_id, want, (long long)current);
}

/* Insert events[0..n) at versions cur+1.. and positions head+1.. and move
 * the stream's row. The caller has an open transaction. */
static int append_rows(sq_store *w, const char *stream_id,
                       const cq_new_event *events, size_t n, int64_t now_ms,
                       int64_t cur, int64_t head)
{
    sqlite3_stmt *ins = w->st[W_INSERT_EVENT];
    sqlite3_stmt *up = w->st[W_UPSERT_STREAM];
    int rc = SQLITE_OK;

    for (size_t i = 0; i < n && rc == SQLITE_OK; i++) {
        const cq_new_event *e = &events[i];
        rc = sqlite3_bind_int64(ins, 1, head + 1 + (int64_t)i);
        if (rc == SQLITE_OK)
            rc = sqlite3_bind_text(ins, 2, stream_id, -1, SQLITE_STATIC);
        if (rc == SQLITE_OK)
            rc = sqlite3_bind_int64(ins, 3, cur + 1 + (int64_t)i);
        if (rc == SQLITE_OK)
            rc = sqlite3_bind_text(ins, 4, e->type, -1, SQLITE_STATIC);
        if (rc == SQLITE_OK)
            rc = sqlite3_bind_int(ins, 5, e->schema_version);
        if (rc == SQLITE_OK)
            rc = sqlite3_bind_text(ins, 6, e->data, -1, SQLITE_STATIC);
        if (rc == SQLITE_OK)
            rc = sqlite3_bind_text(ins, 7, e->metadata, -1, SQLITE_STATIC);
        if (rc == SQLITE_OK)
            rc = sqlite3_bind_int64(ins, 8, now_ms);
        if (rc == SQLITE_OK) {
            rc = sqlite3_step(ins);
            rc = rc == SQLITE_DONE ? SQLITE_OK : rc;
        }
        if (rc != SQLITE_OK)
            sq_sql_err(w->db, rc, w->msg, sizeof w->msg, "inserting an event");
        sq_done_stmt(ins);
    }
    if (rc != SQLITE_OK)
        return sq_map_rc(rc);

    rc = sqlite3_bind_text(up, 1, stream_id, -1, SQLITE_STATIC);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_int64(up, 2, cur + (int64_t)n);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_int64(up, 3, head + (int64_t)n);
    if (rc == SQLITE_OK) {
        rc = sqlite3_step(up);
        rc = rc == SQLITE_DONE ? SQLITE_OK : rc;
    }
    if (rc != SQLITE_OK)
        sq_sql_err(w->db, rc, w->msg, sizeof w->msg, "updating the stream");
    sq_done_stmt(up);
    return rc == SQLITE_OK ? CQ_OK : sq_map_rc(rc);
}

int sq_append(void *impl, const char *stream_id, int64_t expected,
              const cq_new_event *events, size_t n, int64_t now_ms,
              int64_t *version, int64_t *first_position)
{
    sq_store *w = impl;
    int64_t cur = 0, head = 0;
    int own_tx = 0;
    int rc = sq_w_check(w, "append");
    if (rc != CQ_OK)
        return rc;

    if (stream_id == NULL || stream_id[0] == '\0' || events == NULL || n == 0 ||
        expected < CQ_VERSION_EXISTS)
        return sq_w_misuse(
            w, CQ_EINVAL,
            "append: need a stream id, n >= 1 events and a valid "
            "expected version");
    for (size_t i = 0; i < n; i++) {
        if (events[i].type == NULL || events[i].data == NULL ||
            events[i].metadata == NULL)
            return sq_w_misuse(
                w, CQ_EINVAL,
                "append to '%s': event %zu lacks type, data or metadata",
                stream_id, i);
    }

    /* Outside a batch an append is its own transaction, so that it is
     * atomic and takes the write lock before reading the head. */
    if (!w->in_tx) {
        rc = sq_tx_begin(w);
        if (rc != CQ_OK)
            return rc;
        own_tx = 1;
    }
    rc = sq_q_stream_version(w->db, w->st[W_STREAM_VERSION], stream_id, &cur,
                             w->msg, sizeof w->msg);
    if (rc != CQ_OK) {
        sq_w_mark_failed(w);
        goto fail;
    }
    rc = check_expected(w, stream_id, expected, cur);
    if (rc != CQ_OK)
        goto fail;
    rc = w_head(w, &head);
    if (rc != CQ_OK)
        goto fail;
    rc = append_rows(w, stream_id, events, n, now_ms, cur, head);
    if (rc != CQ_OK) {
        sq_w_mark_failed(w);
        goto fail;
    }
    w->head = head + (int64_t)n;
    if (own_tx) {
        rc = sq_tx_commit(w);
        if (rc != CQ_OK)
            goto fail;
    }
    if (version != NULL)
        *version = cur + (int64_t)n;
    if (first_position != NULL)
        *first_position = head + 1;
    return CQ_OK;

fail:
    if (own_tx) {
        char keep[SQ_MSG_CAP];
        memcpy(keep, w->msg, sizeof keep);
        sq_tx_rollback(w);
        memcpy(w->msg, keep, sizeof keep);
    }
    return rc;
}

int sq_fold_stream(void *impl, const char *stream_id, int64_t after_version,
                   cq_event_cb cb, void *arg)
{
    sq_store *w = impl;
    sqlite3_stmt *st = w->st[W_FOLD];
    int rc = sq_w_check(w, "fold_stream");
    if (rc != CQ_OK)
        return rc;
    if (stream_id == NULL || cb == NULL)
        return sq_w_misuse(w, CQ_EINVAL, "fold_stream: NULL argument");
    if (after_version < 0)
        after_version = 0;
    rc = sqlite3_bind_text(st, 1, stream_id, -1, SQLITE_STATIC);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_int64(st, 2, after_version);
    if (rc != SQLITE_OK) {
        rc = sq_sql_err(w->db, rc, w->msg, sizeof w->msg, "fold_stream");
        sq_done_stmt(st);
        sq_w_mark_failed(w);
        return rc;
    }
    rc = sq_emit_events(w->db, st, EC_VERSION, after_version + 1, INT64_MAX, cb,
                        arg, &w->in_cb, w->msg, sizeof w->msg, "fold_stream");
    if (rc != CQ_OK)
        sq_w_mark_failed(w);
    return rc;
}

const char *sq_errmsg(void *impl)
{
    sq_store *w = impl;
    return w->msg;
}
