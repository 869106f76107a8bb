/*
 * rdb.c -- the read-store interface's dispatch (see rdb.h): a cq_rdb is a
 * backend's ops table and its connection; a cq_rstmt, the ops table and
 * the backend's statement. Choosing the backend from `where` happens here
 * and nowhere else.
 *
 * Threads: none of its own; a connection is used by one thread at a time.
 */
#include "store/rdb.h"

#include <stdio.h>
#include <stdlib.h>

#include "cqrs/cqrs.h"
#include "store/pg.h"

struct cq_rdb {
    const cq_rdb_ops *ops;
    void *impl;
    int owned;
    /* set when the last call was an optional operation the backend lacks:
     * cq_rdb_errmsg / cq_rdb_errcode answer for it until the next call */
    const char *unsupported;
};

struct cq_rstmt {
    const cq_rdb_ops *ops;
    void *impl;
    cq_rdb *db;
};

/* each backend opens its connections itself (rdb_sqlite.c, rdb_pg.c) */
int cq_rdb_sqlite_open(const char *path, unsigned flags, int busy_ms,
                       void **impl, char *err, size_t errcap);
int cq_rdb_pg_open(const char *uri, unsigned flags, int busy_ms, void **impl,
                   char *err, size_t errcap);

cq_rdb *cq_rdb_wrap(const cq_rdb_ops *ops, void *impl, int owned)
{
    cq_rdb *db = calloc(1, sizeof *db);

    if (db == NULL)
        return NULL;
    db->ops = ops;
    db->impl = impl;
    db->owned = owned;
    /* a view lives as long as the connection it borrows: whoever owns that
     * connection closes it, and cq_rdb_close on the view cannot free it
     * under them */
    if (!owned &&
        (ops->on_close == NULL || ops->on_close(impl, free, db) != CQ_OK)) {
        if (ops->on_close == NULL)
            free(db);
        return NULL;
    }
    return db;
}

void *cq_rdb_impl(cq_rdb *db)
{
    return db->impl;
}

void *cq_rstmt_impl(cq_rstmt *st)
{
    return st != NULL ? st->impl : NULL;
}

int cq_rdb_open(const char *where, unsigned flags, int busy_ms, cq_rdb **out,
                char *err, size_t errcap)
{
    int pg = cq_pg_is_uri(where);
    const cq_rdb_ops *ops = pg ? &cq_rdb_pg_ops : &cq_rdb_sqlite_ops;
    void *impl = NULL;
    int rc;

    *out = NULL;
    rc = pg ? cq_rdb_pg_open(where, flags, busy_ms, &impl, err, errcap)
            : cq_rdb_sqlite_open(where, flags, busy_ms, &impl, err, errcap);
    if (rc != CQ_OK)
        return rc;
    *out = cq_rdb_wrap(ops, impl, 1);
    if (*out == NULL) {
        ops->close(impl);
        snprintf(err, errcap, "%s: out of memory", where);
        return CQ_ENOMEM;
    }
    return CQ_OK;
}

void cq_rdb_close(cq_rdb *db)
{
    if (db == NULL || !db->owned)
        return; /* a view: freed with its connection (cq_rdb_wrap) */
    db->ops->close(db->impl);
    free(db);
}

const char *cq_rdb_errmsg(cq_rdb *db)
{
    return db->unsupported ? db->unsupported : db->ops->errmsg(db->impl);
}

int cq_rdb_errcode(cq_rdb *db)
{
    return db->unsupported ? CQ_EINVAL : db->ops->errcode(db->impl);
}

int cq_rdb_exec(cq_rdb *db, const char *sql, char *err, size_t errcap)
{
    db->unsupported = NULL;
    return db->ops->exec(db->impl, sql, err, errcap);
}

int cq_rdb_queue_writes(cq_rdb *db, int on)
{
    db->unsupported = NULL;
    return db->ops->queue_writes ? db->ops->queue_writes(db->impl, on)
                                 : CQ_OK;
}

int cq_rdb_in_transaction(cq_rdb *db)
{
    return db->ops->in_transaction(db->impl);
}

int cq_rdb_object_exists(cq_rdb *db, const char *name, int *exists)
{
    return db->ops->object_exists(db->impl, name, exists);
}

int cq_rdb_tables(cq_rdb *db, const char *suffix,
                  int (*cb)(void *arg, const char *name), void *arg, char *err,
                  size_t errcap)
{
    return db->ops->tables(db->impl, suffix, cb, arg, err, errcap);
}

int cq_rdb_columns(cq_rdb *db, const char *table,
                   int (*cb)(void *arg, const char *column, int pk,
                             cq_rtype type),
                   void *arg, char *err, size_t errcap)
{
    return db->ops->columns(db->impl, table, cb, arg, err, errcap);
}

/* An optional operation db's backend lacks: CQ_EINVAL, and the message
 * until the next call. */
static int unsupported(cq_rdb *db)
{
    db->unsupported = db->ops == &cq_rdb_sqlite_ops
                          ? "not supported by sqlite"
                          : "not supported by this backend";
    return CQ_EINVAL;
}

int cq_rdb_try_lock(cq_rdb *db, const char *name, int *got)
{
    *got = 0;
    db->unsupported = NULL;
    return db->ops->try_lock ? db->ops->try_lock(db->impl, name, got)
                             : unsupported(db);
}

int cq_rdb_unlock(cq_rdb *db, const char *name)
{
    db->unsupported = NULL;
    return db->ops->unlock ? db->ops->unlock(db->impl, name) : unsupported(db);
}

int cq_rdb_notify(cq_rdb *db, const char *channel, const char *payload)
{
    db->unsupported = NULL;
    return db->ops->notify ? db->ops->notify(db->impl, channel, payload)
                           : unsupported(db);
}

int cq_rdb_listen(cq_rdb *db, const char *channel)
{
    db->unsupported = NULL;
    return db->ops->listen ? db->ops->listen(db->impl, channel)
                           : unsupported(db);
}

int cq_rdb_wait_notify(cq_rdb *db, int timeout_ms, char *channel, size_t chcap,
                       char *payload, size_t plcap)
{
    db->unsupported = NULL;
    if (db->ops->wait_notify == NULL)
        return unsupported(db);
    return db->ops->wait_notify(db->impl, timeout_ms, channel, chcap, payload,
                                plcap);
}

int64_t cq_rdb_wal_bytes(cq_rdb *db)
{
    return db->ops->wal_bytes ? db->ops->wal_bytes(db->impl) : -1;
}

const char *cq_rdb_backend(cq_rdb *db)
{
    return db->ops->name;
}

void cq_rdb_format_real(cq_rdb *db, double v, char *buf, size_t cap)
{
    db->ops->format_real(v, buf, cap);
}

int cq_rdb_prepare(cq_rdb *db, const char *sql, unsigned flags, cq_rstmt **out,
                   char *err, size_t errcap)
{
    cq_rstmt *st = calloc(1, sizeof *st);
    int rc;

    *out = NULL;
    db->unsupported = NULL;
    if (st == NULL) {
        snprintf(err, errcap, "%s: out of memory", sql);
        return CQ_ENOMEM;
    }
    rc = db->ops->prepare(db->impl, sql, flags, &st->impl, err, errcap);
    if (rc != CQ_OK) {
        free(st);
        return rc;
    }
    st->ops = db->ops;
    st->db = db;
    *out = st;
    return CQ_OK;
}

void cq_rstmt_finalize(cq_rstmt *st)
{
    if (st == NULL)
        return;
    st->ops->finalize(st->impl);
    free(st);
}

cq_rdb *cq_rstmt_db(cq_rstmt *st)
{
    return st->db;
}

int cq_rstmt_bind_int(cq_rstmt *st, int i, int64_t v)
{
    return st->ops->bind_int(st->impl, i, v);
}

int cq_rstmt_bind_double(cq_rstmt *st, int i, double v)
{
    return st->ops->bind_double(st->impl, i, v);
}

int cq_rstmt_bind_text(cq_rstmt *st, int i, const char *s, int len)
{
    return st->ops->bind_text(st->impl, i, s, len, 0);
}

int cq_rstmt_bind_text_copy(cq_rstmt *st, int i, const char *s, int len)
{
    return st->ops->bind_text(st->impl, i, s, len, 1);
}

int cq_rstmt_bind_blob(cq_rstmt *st, int i, const void *p, int n)
{
    return st->ops->bind_blob(st->impl, i, p, n);
}

int cq_rstmt_bind_null(cq_rstmt *st, int i)
{
    return st->ops->bind_null(st->impl, i);
}

int cq_rstmt_step(cq_rstmt *st)
{
    st->db->unsupported = NULL;
    return st->ops->step(st->impl);
}

int cq_rstmt_run(cq_rstmt *st)
{
    int rc = st->ops->step(st->impl);

    st->ops->reset(st->impl);
    return rc < 0 ? rc : CQ_OK;
}

void cq_rstmt_reset(cq_rstmt *st)
{
    st->ops->reset(st->impl);
}

void cq_rstmt_clear(cq_rstmt *st)
{
    st->ops->clear(st->impl);
}

int cq_rstmt_column_count(cq_rstmt *st)
{
    return st->ops->column_count(st->impl);
}

const char *cq_rstmt_column_name(cq_rstmt *st, int i)
{
    return st->ops->column_name(st->impl, i);
}

cq_rtype cq_rstmt_column_type(cq_rstmt *st, int i)
{
    return st->ops->column_type(st->impl, i);
}

int64_t cq_rstmt_column_int(cq_rstmt *st, int i)
{
    return st->ops->column_int(st->impl, i);
}

double cq_rstmt_column_double(cq_rstmt *st, int i)
{
    return st->ops->column_double(st->impl, i);
}

const char *cq_rstmt_column_text(cq_rstmt *st, int i)
{
    return st->ops->column_text(st->impl, i);
}

const void *cq_rstmt_column_blob(cq_rstmt *st, int i)
{
    return st->ops->column_blob(st->impl, i);
}

int cq_rstmt_column_bytes(cq_rstmt *st, int i)
{
    return st->ops->column_bytes(st->impl, i);
}
