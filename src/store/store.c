/*
 * store.c -- cq_store_*: the event store's front door.
 *
 * A cq_store is a backend's operations table plus that backend's own
 * handle; every call is forwarded unchanged, so callers never know which
 * backend they talk to. This file owns only the cq_store struct itself; it
 * keeps no state, takes no locks and adds no threads: the thread rules of
 * store.h (write side from the writer thread only, read side from any
 * thread) are the backend's rules, passed through.
 *
 * Backend choice: cq_store_config.uri, here and nowhere else: NULL or ""
 * is SQLite in cfg->dir, a PostgreSQL URI (cq_pg_is_uri) is PostgreSQL.
 */
#include <stdio.h>
#include <stdlib.h>

#include "store/pg.h"
#include "store/store.h"

struct cq_store {
    const cq_store_ops *ops;
    void *impl;
    int read_only; /* cq_store_config.read_only: the write side refuses */
};

/* The write side of a store opened read-only (or of none) refuses. */
#define WRITABLE_OR_EINVAL(s)                                                  \
    do {                                                                       \
        if ((s) == NULL || (s)->read_only)                                     \
            return CQ_EINVAL;                                                  \
    } while (0)

int cq_store_open(const cq_store_config *cfg, cq_store **out, char *err,
                  size_t errcap)
{
    cq_store *s = NULL;
    int rc;

    if (out == NULL)
        return CQ_EINVAL;
    *out = NULL;
    if (err != NULL && errcap > 0)
        err[0] = '\0';
    if (cfg == NULL) {
        if (err != NULL && errcap > 0)
            snprintf(err, errcap, "store: no configuration");
        return CQ_EINVAL;
    }
    if (cfg->uri != NULL && cfg->uri[0] != '\0' && !cq_pg_is_uri(cfg->uri)) {
        if (err != NULL && errcap > 0)
            snprintf(err, errcap,
                     "store: not a PostgreSQL URI (postgresql://...)");
        return CQ_EINVAL;
    }
    s = calloc(1, sizeof *s);
    if (s == NULL)
        return CQ_ENOMEM;
    s->ops = cfg->uri != NULL && cfg->uri[0] != '\0' ? &cq_store_pg_ops
                                                     : &cq_store_sqlite_ops;
    rc = s->ops->open(cfg, &s->impl, err, errcap);
    if (rc != CQ_OK)
        goto fail;
    s->read_only = cfg->read_only;
    *out = s;
    return CQ_OK;

fail:
    free(s);
    return rc;
}

void cq_store_close(cq_store *s)
{
    if (s == NULL)
        return;
    s->ops->close(s->impl);
    free(s);
}

const char *cq_store_errmsg(cq_store *s)
{
    if (s == NULL)
        return "no store";
    return s->ops->errmsg(s->impl);
}

static int tx(cq_store *s, int op)
{
    WRITABLE_OR_EINVAL(s);
    return s->ops->exec_tx(s->impl, op);
}

int cq_store_begin(cq_store *s)
{
    return tx(s, CQ_TX_BEGIN);
}

int cq_store_commit(cq_store *s)
{
    return tx(s, CQ_TX_COMMIT);
}

int cq_store_rollback(cq_store *s)
{
    return tx(s, CQ_TX_ROLLBACK);
}

int cq_store_savepoint(cq_store *s)
{
    return tx(s, CQ_TX_SAVEPOINT);
}

int cq_store_release(cq_store *s)
{
    return tx(s, CQ_TX_RELEASE);
}

int cq_store_rollback_savepoint(cq_store *s)
{
    return tx(s, CQ_TX_ROLLBACK_SAVEPOINT);
}

int cq_store_stream_version(cq_store *s, const char *stream_id,
                            int64_t *version)
{
    WRITABLE_OR_EINVAL(s);
    return s->ops->stream_version(s->impl, stream_id, version);
}

int cq_store_append(cq_store *s, const char *stream_id, int64_t expected,
                    const cq_new_event *events, size_t n, int64_t now_ms,
                    int64_t *version, int64_t *first_position)
{
    WRITABLE_OR_EINVAL(s);
    return s->ops->append(s->impl, stream_id, expected, events, n, now_ms,
                          version, first_position);
}

int cq_store_fold_stream(cq_store *s, const char *stream_id,
                         int64_t after_version, cq_event_cb cb, void *arg)
{
    WRITABLE_OR_EINVAL(s);
    return s->ops->fold_stream(s->impl, stream_id, after_version, cb, arg);
}

int cq_store_write_head(cq_store *s, int64_t *position)
{
    WRITABLE_OR_EINVAL(s);
    return s->ops->write_head(s->impl, position);
}

int cq_store_cmdlog_get(cq_store *s, const char *key, int64_t now_ms,
                        cq_cmdlog_entry *out)
{
    WRITABLE_OR_EINVAL(s);
    return s->ops->cmdlog_get(s->impl, key, now_ms, out);
}

int cq_store_cmdlog_put(cq_store *s, const cq_cmdlog_entry *e)
{
    WRITABLE_OR_EINVAL(s);
    return s->ops->cmdlog_put(s->impl, e);
}

int cq_store_cmdlog_prune(cq_store *s, int64_t now_ms, int max_rows,
                          int64_t *deleted)
{
    WRITABLE_OR_EINVAL(s);
    return s->ops->cmdlog_prune(s->impl, now_ms, max_rows, deleted);
}

int cq_store_read_stream(cq_store *s, const char *stream_id,
                         int64_t from_version, int limit, cq_event_cb cb,
                         void *arg, int64_t *stream_version, char *err,
                         size_t errcap)
{
    if (s == NULL)
        return CQ_EINVAL;
    return s->ops->read_stream(s->impl, stream_id, from_version, limit, cb, arg,
                               stream_version, err, errcap);
}

int cq_store_read_all(cq_store *s, int64_t from_position, int limit,
                      cq_event_cb cb, void *arg, int64_t *head, char *err,
                      size_t errcap)
{
    if (s == NULL)
        return CQ_EINVAL;
    return s->ops->read_all(s->impl, from_position, limit, cb, arg, head, err,
                            errcap);
}

int cq_store_head_position(cq_store *s, int64_t *head)
{
    if (s == NULL)
        return CQ_EINVAL;
    return s->ops->head_position(s->impl, head);
}

int cq_store_position_of(cq_store *s, const char *stream_id, int64_t version,
                         int64_t *position, char *err, size_t errcap)
{
    if (s == NULL)
        return CQ_EINVAL;
    return s->ops->position_of(s->impl, stream_id, version, position, err,
                               errcap);
}

int cq_store_recorded_at(cq_store *s, int64_t position, int64_t *ms, char *err,
                         size_t errcap)
{
    if (s == NULL)
        return CQ_EINVAL;
    return s->ops->recorded_at(s->impl, position, ms, err, errcap);
}

int cq_store_version_at(cq_store *s, const char *stream_id, int64_t position,
                        int64_t *version, char *err, size_t errcap)
{
    if (s == NULL)
        return CQ_EINVAL;
    return s->ops->version_at(s->impl, stream_id, position, version, err,
                              errcap);
}

struct cq_rdb *cq_store_write_rdb(cq_store *s)
{
    if (s->read_only)
        return NULL;
    return s->ops->write_rdb(s->impl);
}

int cq_store_open_rdb(cq_store *s, struct cq_rdb **out, char *err,
                      size_t errcap)
{
    return s->ops->open_rdb(s->impl, out, err, errcap);
}

const char *cq_store_backend(cq_store *s)
{
    return s->ops->name;
}

int64_t cq_store_wal_bytes(cq_store *s)
{
    return s->ops->wal_bytes != NULL ? s->ops->wal_bytes(s->impl) : -1;
}
