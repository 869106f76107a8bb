/*
 * replay.c -- one stream replayed through a projection's handlers into a
 * private in-memory database holding its tables: what a strong read
 * (src/query/strong.c) answers from.
 *
 * Threads: any thread; each replay has its own database and reads only
 * what does not change after start (the definition, the domain).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/base.h"
#include "projection/engine_int.h"

/* Replay context for strong reads. */
typedef struct replay_ctx {
    apply_ctx c;
    int64_t count;
} replay_ctx;

static int replay_event(void *arg, const cq_stored_event *se)
{
    replay_ctx *r = arg;
    r->count++;
    return cq_eng_apply_event(&r->c, se);
}

int cq_engine_replay_stream(cq_engine *e, int projection, const char *stream_id,
                            cq_exec **out, int64_t *last,
                            int64_t *stream_version, char *err, size_t errcap)
{
    proj *p = e->projs[projection];
    cq_rdb *mem = NULL;
    cq_exec *x = NULL;
    replay_ctx r;
    int64_t from = 1, version = 0;
    int rc;

    *out = NULL;
    rc = cq_eng_open_db(":memory:", CQ_RDB_CREATE, &mem, err, errcap);
    if (rc != CQ_OK)
        return rc;
    x = cq_exec_new(mem);
    if (x == NULL) {
        rc = CQ_ENOMEM;
        goto done;
    }
    for (size_t i = 0; rc == CQ_OK && i < p->d->nddl; i++)
        rc = cq_exec_sql(x, cq_exec_text(mem, &p->d->ddl[i]), err, errcap);
    if (rc != CQ_OK)
        goto done;
    memset(&r, 0, sizeof r);
    r.c.e = e;
    r.c.p = p;
    r.c.d = p->d;
    r.c.x = x;
    do {
        r.count = 0;
        rc = cq_store_read_stream(e->store, stream_id, from, 1000, replay_event,
                                  &r, &version, err, errcap);
        from += r.count;
    } while (rc == CQ_OK && !r.c.failed && r.count == 1000);
    if (rc == CQ_ENOTFOUND) {
        rc = CQ_OK; /* no stream: the projection of nothing */
        version = 0;
    }
    if (rc != CQ_OK)
        goto done;
    if (r.c.failed) {
        snprintf(err, errcap,
                 "replaying %s through %s failed at position "
                 "%lld: %s",
                 stream_id, p->d->name, (long long)r.c.error_position,
                 r.c.error);
        rc = CQ_EIO;
        goto done;
    }
    *out = x;
    *last = r.c.last;
    *stream_version = version;
    return CQ_OK;
done:
    cq_exec_free(x);
    cq_rdb_close(mem);
    return rc;
}

void cq_engine_replay_free(cq_exec *x)
{
    cq_rdb *db = x ? cq_exec_db(x) : NULL;

    cq_exec_free(x);
    cq_rdb_close(db);
}
