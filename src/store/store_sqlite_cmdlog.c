/*
 * store_sqlite_cmdlog.c -- the command log of the SQLite event store:
 * idempotency keys with the answer given, looked up, stored and pruned
 * through the write connection, inside the writer's batch.
 *
 * Threads: the writer thread only (store.h); nothing here locks.
 */
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "store/store_sqlite_int.h"

/* Make w->buf hold at least cap bytes. */
static int w_reserve(sq_store *w, size_t cap)
{
    if (cap <= w->bufcap)
        return CQ_OK;
    char *p = realloc(w->buf, cap);
    if (p == NULL)
        return sq_w_misuse(w, CQ_ENOMEM, "cmdlog_get: out of memory");
    w->buf = p;
    w->bufcap = cap;
    return CQ_OK;
}

int sq_cmdlog_get(void *impl, const char *key, int64_t now_ms,
                  cq_cmdlog_entry *out)
{
    sq_store *w = impl;
    sqlite3_stmt *st = w->st[W_CMD_GET];
    const char *hash = NULL, *resp = NULL;
    int rc = sq_w_check(w, "cmdlog_get");
    if (rc != CQ_OK)
        return rc;
    if (key == NULL || out == NULL)
        return sq_w_misuse(w, CQ_EINVAL, "cmdlog_get: NULL argument");

    rc = sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
    if (rc == SQLITE_OK)
        rc = sqlite3_step(st);
    if (rc == SQLITE_DONE) {
        rc = sq_w_misuse(w, CQ_ENOTFOUND, "cmdlog_get: no entry for the key");
        goto done;
    }
    if (rc != SQLITE_ROW) {
        rc = sq_sql_err(w->db, rc, w->msg, sizeof w->msg, "cmdlog_get");
        sq_w_mark_failed(w);
        goto done;
    }
    if (sqlite3_column_type(st, 0) != SQLITE_TEXT ||
        sqlite3_column_type(st, 1) != SQLITE_INTEGER ||
        sqlite3_column_type(st, 2) != SQLITE_TEXT ||
        sqlite3_column_type(st, 3) != SQLITE_INTEGER ||
        sqlite3_column_type(st, 4) != SQLITE_INTEGER ||
        sqlite3_column_int64(st, 1) < INT_MIN ||
        sqlite3_column_int64(st, 1) > INT_MAX) {
        rc = sq_w_misuse(
            w, CQ_ECORRUPT,
            "command_log: the entry for key '%s' has a column of the "
            "wrong type",
            key);
        goto done;
    }
    if (sqlite3_column_int64(st, 4) <= now_ms) {
        rc = sq_w_misuse(w, CQ_ENOTFOUND, "cmdlog_get: the entry has expired");
        goto done;
    }
    rc = sq_col_text(st, 0, &hash);
    if (rc == CQ_OK)
        rc = sq_col_text(st, 2, &resp);
    if (rc != CQ_OK) {
        rc = sq_w_misuse(
            w, rc, "command_log: the entry for key '%s' is unreadable", key);
        goto done;
    }
    /* Copy out: the row dies at reset; the entry lives until the next
     * write-side call. */
    size_t nk = strlen(key) + 1, nh = strlen(hash) + 1, nr = strlen(resp) + 1;
    rc = w_reserve(w, nk + nh + nr);
    if (rc != CQ_OK)
        goto done;
    memcpy(w->buf, key, nk);
    memcpy(w->buf + nk, hash, nh);
    memcpy(w->buf + nk + nh, resp, nr);
    out->status = sqlite3_column_int(st, 1);
    out->created_at = sqlite3_column_int64(st, 3);
    out->expires_at = sqlite3_column_int64(st, 4);
    out->key = w->buf;
    out->command_hash = w->buf + nk;
    out->response = w->buf + nk + nh;
    rc = CQ_OK;
done:
    sq_done_stmt(st);
    return rc;
}

int sq_cmdlog_put(void *impl, const cq_cmdlog_entry *e)
{
    sq_store *w = impl;
    sqlite3_stmt *st = w->st[W_CMD_PUT];
    int rc = sq_w_check(w, "cmdlog_put");
    if (rc != CQ_OK)
        return rc;
    if (e == NULL || e->key == NULL || e->command_hash == NULL ||
        e->response == NULL)
        return sq_w_misuse(w, CQ_EINVAL,
                           "cmdlog_put: NULL key, hash or response");
    rc = sqlite3_bind_text(st, 1, e->key, -1, SQLITE_STATIC);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_text(st, 2, e->command_hash, -1, SQLITE_STATIC);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_int(st, 3, e->status);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_text(st, 4, e->response, -1, SQLITE_STATIC);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_int64(st, 5, e->created_at);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_int64(st, 6, e->expires_at);
    if (rc == SQLITE_OK) {
        rc = sqlite3_step(st);
        rc = rc == SQLITE_DONE ? SQLITE_OK : rc;
    }
    if (rc != SQLITE_OK) {
        rc = sq_sql_err(w->db, rc, w->msg, sizeof w->msg, "cmdlog_put");
        sq_w_mark_failed(w);
    }
    sq_done_stmt(st);
    return rc;
}

int sq_cmdlog_prune(void *impl, int64_t now_ms, int max_rows, int64_t *deleted)
{
    sq_store *w = impl;
    sqlite3_stmt *st = w->st[W_CMD_PRUNE];
    int64_t changed = 0;
    int own_tx = 0;
    int rc = sq_w_check(w, "cmdlog_prune");
    if (deleted != NULL)
        *deleted = 0;
    if (rc != CQ_OK)
        return rc;
    if (max_rows < 1)
        return sq_w_misuse(w, CQ_EINVAL, "cmdlog_prune: max_rows must be >= 1");
    /* One bounded step; the caller (the writer) decides when the next one
     * runs, so commands never wait behind more than one. Inside a batch it
     * is one more write of the batch and commits with it: no COMMIT and so
     * no WAL fsync of its own. Outside a batch it is one short transaction
     * of its own. The rows come from the expires_at index, oldest first; a
     * crash loses at most this step's deletion, which the next prune
     * redoes. */
    if (!w->in_tx) {
        rc = sq_tx_begin(w);
        if (rc != CQ_OK)
            goto fail;
        own_tx = 1;
    }
    rc = sqlite3_bind_int64(st, 1, now_ms);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_int(st, 2, max_rows);
    if (rc == SQLITE_OK) {
        rc = sqlite3_step(st);
        rc = rc == SQLITE_DONE ? SQLITE_OK : rc;
    }
    if (rc != SQLITE_OK) {
        rc = sq_sql_err(w->db, rc, w->msg, sizeof w->msg, "cmdlog_prune");
        sq_done_stmt(st);
        sq_w_mark_failed(w);
        goto fail;
    }
    changed = sqlite3_changes(w->db);
    sq_done_stmt(st);
    if (own_tx) {
        rc = sq_tx_commit(w);
        if (rc != CQ_OK)
            goto fail;
    }
    if (deleted != NULL)
        *deleted = changed;
    return CQ_OK;

fail:
    /* Inside a batch the failure is the caller's to roll back (the step's
     * savepoint, or the batch), as after any failed write. */
    if (own_tx && w->in_tx) {
        char keep[SQ_MSG_CAP];
        memcpy(keep, w->msg, sizeof keep);
        sq_tx_rollback(w);
        memcpy(w->msg, keep, sizeof keep);
    }
    return rc;
}
