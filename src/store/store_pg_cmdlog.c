/*
 * store_pg_cmdlog.c -- the command log of the PostgreSQL event store:
 * idempotency keys with the answer given, looked up, stored and pruned
 * through the write connection, inside the writer's batch. A batch holds
 * the append lock, so a key looked up in one batch and stored by it is
 * seen by every later batch on every node: a key sent to two nodes at
 * once runs once.
 *
 * Threads: the writer thread only (store.h); nothing here locks.
 */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store/store_pg_int.h"

/* Make w->buf hold at least cap bytes. */
static int w_reserve(pgs_store *w, size_t cap)
{
    if (cap <= w->bufcap)
        return CQ_OK;
    char *p = realloc(w->buf, cap);
    if (p == NULL)
        return pgs_w_misuse(w, CQ_ENOMEM, "cmdlog_get: out of memory");
    w->buf = p;
    w->bufcap = cap;
    return CQ_OK;
}

int pgs_cmdlog_get(void *impl, const char *key, int64_t now_ms,
                   cq_cmdlog_entry *out)
{
    static const int want[5] = {PGS_TEXTOID, PGS_INT8OID, PGS_TEXTOID,
                                PGS_INT8OID, PGS_INT8OID};
    pgs_store *w = impl;
    const char *val[1] = {key};
    pgs_q q[1] = {{.stmt = PW_CMD_GET, .n = 1, .val = val}};
    int64_t status = 0, created = 0, expires = 0;
    const PGresult *r;
    int rc = pgs_w_check(w, "cmdlog_get");
    if (rc != CQ_OK)
        return rc;
    if (key == NULL || out == NULL)
        return pgs_w_misuse(w, CQ_EINVAL, "cmdlog_get: NULL argument");

    rc = pgs_w_run(w, q, 1, "cmdlog_get");
    if (rc != CQ_OK)
        goto done;
    r = q[0].res;
    if (PQntuples(r) == 0) {
        rc = pgs_w_misuse(w, CQ_ENOTFOUND, "cmdlog_get: no entry for the key");
        goto done;
    }
    if (PQntuples(r) != 1 || pgs_check_types(r, 0, want, 5) >= 0 ||
        PQgetisnull(r, 0, 0) || PQgetisnull(r, 0, 2) ||
        pgs_int_col(r, 0, 1, &status) != CQ_OK ||
        pgs_int_col(r, 0, 3, &created) != CQ_OK ||
        pgs_int_col(r, 0, 4, &expires) != CQ_OK || status < INT_MIN ||
        status > INT_MAX) {
        rc = pgs_w_misuse(
            w, CQ_ECORRUPT,
            "command_log: the entry for key '%s' has a column of the "
            "wrong type",
            key);
        goto done;
    }
    if (expires <= now_ms) {
        rc = pgs_w_misuse(w, CQ_ENOTFOUND, "cmdlog_get: the entry has expired");
        goto done;
    }
    /* Copy out: the result dies here; the entry lives until the next
     * write-side call. */
    const char *hash = PQgetvalue(r, 0, 0), *resp = PQgetvalue(r, 0, 2);
    size_t nk = strlen(key) + 1, nh = strlen(hash) + 1, nr = strlen(resp) + 1;
    rc = w_reserve(w, nk + nh + nr);
    if (rc != CQ_OK)
        goto done;
    memcpy(w->buf, key, nk);
    memcpy(w->buf + nk, hash, nh);
    memcpy(w->buf + nk + nh, resp, nr);
    out->status = (int)status;
    out->created_at = created;
    out->expires_at = expires;
    out->key = w->buf;
    out->command_hash = w->buf + nk;
    out->response = w->buf + nk + nh;
    rc = CQ_OK;
done:
    pgs_clear(q, 1);
    return rc;
}

int pgs_cmdlog_put(void *impl, const cq_cmdlog_entry *e)
{
    pgs_store *w = impl;
    char status[16], created[24], expires[24];
    const char *val[6];
    pgs_q q[1] = {{.stmt = PW_CMD_PUT, .n = 6, .val = val}};
    int rc = pgs_w_check(w, "cmdlog_put");
    if (rc != CQ_OK)
        return rc;
    if (e == NULL || e->key == NULL || e->command_hash == NULL ||
        e->response == NULL)
        return pgs_w_misuse(w, CQ_EINVAL,
                            "cmdlog_put: NULL key, hash or response");
    snprintf(status, sizeof status, "%d", e->status);
    snprintf(created, sizeof created, "%lld", (long long)e->created_at);
    snprintf(expires, sizeof expires, "%lld", (long long)e->expires_at);
    val[0] = e->key;
    val[1] = e->command_hash;
    val[2] = status;
    val[3] = e->response;
    val[4] = created;
    val[5] = expires;
    /* Inside a batch nothing waits for its answer: it goes with the next
     * statement (the next command's, or COMMIT), whose failure then fails
     * the batch; a round trip less per keyed command. */
    if (w->in_tx)
        return pgs_w_queue(w, &q[0], "cmdlog_put");
    rc = pgs_w_run(w, q, 1, "cmdlog_put");
    pgs_clear(q, 1);
    return rc;
}

int pgs_cmdlog_prune(void *impl, int64_t now_ms, int max_rows, int64_t *deleted)
{
    pgs_store *w = impl;
    char now[24], rows[16];
    const char *val[2] = {now, rows};
    pgs_q q[1] = {{.stmt = PW_CMD_PRUNE, .n = 2, .val = val}};
    int64_t changed = 0;
    int own_tx = 0;
    int rc = pgs_w_check(w, "cmdlog_prune");
    if (deleted != NULL)
        *deleted = 0;
    if (rc != CQ_OK)
        return rc;
    if (max_rows < 1)
        return pgs_w_misuse(w, CQ_EINVAL,
                            "cmdlog_prune: max_rows must be >= 1");
    /* One bounded step (see store_sqlite_cmdlog.c): inside a batch one
     * more write of it, outside one a short transaction of its own (which
     * takes the append lock like any batch). */
    if (!w->in_tx) {
        rc = pgs_tx_begin(w);
        if (rc != CQ_OK)
            goto fail;
        own_tx = 1;
    }
    snprintf(now, sizeof now, "%lld", (long long)now_ms);
    snprintf(rows, sizeof rows, "%d", max_rows);
    rc = pgs_w_run(w, q, 1, "cmdlog_prune");
    if (rc == CQ_OK)
        changed = strtoll(PQcmdTuples(q[0].res), NULL, 10);
    pgs_clear(q, 1);
    if (rc != CQ_OK)
        goto fail;
    if (own_tx) {
        rc = pgs_tx_commit(w);
        if (rc != CQ_OK)
            goto fail;
    }
    if (deleted != NULL)
        *deleted = changed;
    return CQ_OK;

fail:
    /* Inside a batch the failure is the caller's to roll back. */
    if (own_tx && w->in_tx) {
        char keep[PGS_MSG_CAP];
        memcpy(keep, w->msg, sizeof keep);
        pgs_tx_rollback(w);
        memcpy(w->msg, keep, sizeof keep);
    }
    return rc;
}
