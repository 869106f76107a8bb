/*
 * verify.c -- do the read models equal a fresh replay of the events? (see
 * verify.h; the user's view is docs/verify.md).
 *
 * Protocol, for each declared projection, in the order added:
 *   1. BEGIN a read transaction on the projection's live database (read.db
 *      for @mode async, events.db for @mode inline) and read its
 *      checkpoint row from cq_projections. The snapshot starts with that
 *      read, so the tables compared in 4 are exactly what the checkpoint
 *      says they contain, even while a server keeps writing.
 *   2. Judge the row: none (never built), another @version or source hash
 *      (built from another file: the server rebuilds it at start; nothing
 *      to compare), or status failed (reported, and its tables are still
 *      compared up to the checkpoint).
 *   3. Run the DDL on a scratch in-memory database and replay events
 *      1..checkpoint through the handlers (cq_exec_event), decoded as the
 *      projector decodes them: by the one decoder of stored events,
 *      cq_event_decode (src/domain; the projector reaches it through
 *      decode.c's cq_eng_parse_event), with the metadata when a handler
 *      reads it. Events <= a checkpoint are committed and never change,
 *      so they may be read outside the snapshot of 1 (for inline
 *      projections they are read inside it).
 *   4. For every table in the scratch database, compare it with the live
 *      table: same column names in the same order, then both sides read
 *      ORDER BY (typeof(c), c COLLATE BINARY) over the key columns (the
 *      primary key, or every column when there is none) and then the
 *      others, and merged: a key only in the replay is "missing in live",
 *      a key only in the live table is "unexpected in live", the same key
 *      with other values "differs". Ordering by typeof first makes the
 *      SQL order and verify_table.c's compare_cell() the same total
 *      order, so values are equal only when their SQLite type and value
 *      are. This step is verify_table.c's (verify_compare_table).
 *   5. COMMIT (end the read transaction); print the summary line.
 *
 * The tables come from the scratch database's own schema after the DDL
 * ran, not from parsing CREATE TABLE texts (load.c's cq_eng_created()):
 * the scratch database holds nothing else, so the list is exact whatever
 * the statement's spelling (quoted names, comments, "main." prefixes).
 *
 * Connections are all read-only (CQ_RDB_READONLY; on SQLite also
 * query_only; on PostgreSQL REPEATABLE READ, so step 1's snapshot holds
 * for the whole transaction): the store's write side and the engine are
 * never opened, and WAL (or PostgreSQL's MVCC) lets this run beside a
 * live server. A long replay keeps a read transaction open, which only
 * delays the server's WAL checkpoints (PostgreSQL: its vacuum) until it
 * ends. The replay is always into SQLite; verify_table.c compares values
 * across the two databases as rdb.h reads them.
 *
 * Thread: everything here runs on the caller's thread; no shared state.
 */
#include "projection/verify.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "base/base.h"
#include "cqrs/cqrs.h"
#include "domain/domain.h"
#include "projection/declared.h"
#include "projection/exec.h"
#include "projection/verify_int.h"
#include "store/pg.h"
#include "store/rdb.h"

typedef struct vproj {
    cq_declared *d;     /* NULL: a C projection, reported as skipped */
    char name[64];      /* @projection names are at most 63 bytes */
    char source[256];   /* file name, for messages */
    int needs_metadata; /* some handler reads :metadata (as load.c) */
} vproj;

struct cq_verify {
    vproj *projs;
    int n;
    const cq_domain *domain; /* its upcasters decode old events */
};

/* What one run works with. */
typedef struct run {
    const char *dir;
    const char *store_uri; /* the event store on PostgreSQL, or NULL */
    const char *read_uri;  /* the read store on PostgreSQL, or NULL */
    const char *events_name, *reads_name; /* what messages call them */
    FILE *out;
    cq_rdb *events;  /* DIR/events.db, read-only: inline tables */
    cq_store *store; /* the same, read-only: the events to replay */
    cq_rdb *reads;   /* DIR/read.db, read-only; NULL if it does not exist */
    int reads_tried;
    const cq_domain *domain;
    char *err;
    size_t errcap;
} run;

/* ---- loading ------------------------------------------------------------ */

int cq_verify_new(cq_verify **out)
{
    *out = calloc(1, sizeof **out);
    return *out ? CQ_OK : CQ_ENOMEM;
}

void cq_verify_set_domain(cq_verify *v, const cq_domain *domain)
{
    v->domain = domain;
}

void cq_verify_free(cq_verify *v)
{
    if (v == NULL)
        return;
    for (int i = 0; i < v->n; i++)
        cq_declared_free(v->projs[i].d);
    free(v->projs);
    free(v);
}

/* Add d (taken over, even on failure) or, with d NULL, a C projection
 * called `name`. */
static int add(cq_verify *v, cq_declared *d, const char *name,
               const char *source, char *err, size_t errcap)
{
    vproj *p, *nv;

    for (int i = 0; i < v->n; i++)
        if (strcmp(v->projs[i].name, name) == 0) {
            snprintf(err, errcap, "%s: projection %s is declared twice", source,
                     name);
            cq_declared_free(d);
            return CQ_EINVAL;
        }
    nv = realloc(v->projs, (size_t)(v->n + 1) * sizeof *nv);
    if (nv == NULL) {
        snprintf(err, errcap, "out of memory");
        cq_declared_free(d);
        return CQ_ENOMEM;
    }
    v->projs = nv;
    p = &v->projs[v->n++];
    memset(p, 0, sizeof *p);
    p->d = d;
    snprintf(p->name, sizeof p->name, "%s", name);
    snprintf(p->source, sizeof p->source, "%s", source);
    for (size_t h = 0; d != NULL && h < d->nhandlers; h++)
        for (size_t s = 0; s < d->handlers[h].nstmts; s++)
            for (size_t k = 0; k < d->handlers[h].stmts[s].nparams; k++)
                if (strncmp(d->handlers[h].stmts[s].params[k], "metadata", 8) ==
                    0)
                    p->needs_metadata = 1;
    return CQ_OK;
}

int cq_verify_load_text(cq_verify *v, const char *name, const char *text,
                        size_t len, char *err, size_t errcap)
{
    cq_declared *d = NULL;
    char msg[512];
    int rc = cq_declared_parse(text, len, &d, msg, sizeof msg);

    if (rc != CQ_OK) {
        snprintf(err, errcap, "%s:%s", name, msg);
        return rc;
    }
    return add(v, d, d->name, name, err, errcap);
}

static int load_text_cb(void *arg, const char *name, const char *text,
                        size_t len, char *err, size_t errcap)
{
    return cq_verify_load_text(arg, name, text, len, err, errcap);
}

int cq_verify_load_dir(cq_verify *v, const char *dir, char *err, size_t errcap)
{
    return cq_declared_read_dir(dir, load_text_cb, v, err, errcap);
}

int cq_verify_add_code(cq_verify *v, const char *text, size_t len,
                       const cq_projection_code *code, char *err, size_t errcap)
{
    cq_declared *d = NULL;
    char msg[512];
    int rc = cq_declared_parse(text, len, &d, msg, sizeof msg);

    if (rc != CQ_OK) {
        snprintf(err, errcap, "%s:%s", code->name, msg);
        return rc;
    }
    if (strcmp(d->name, code->name) != 0) {
        snprintf(err, errcap, "%s: the declared part must be @projection %s",
                 code->name, code->name);
        cq_declared_free(d);
        return CQ_EINVAL;
    }
    cq_declared_free(d);
    return add(v, NULL, code->name, code->name, err, errcap);
}

/* ---- one projection ----------------------------------------------------- */

/* The checkpoint row of a projection, as read in step 1. */
typedef struct checkpoint {
    int found;
    int64_t version, position, error_position;
    char source_hash[65];
    int failed;
    char error[512], error_event[130];
} checkpoint;

static int read_checkpoint(cq_rdb *db, const char *name, checkpoint *cp,
                           char *err, size_t errcap)
{
    cq_rstmt *st = NULL;
    char ignore[64];
    int rc, exists = 0;

    memset(cp, 0, sizeof *cp);
    /* first read of the snapshot: does the table exist at all? */
    if (cq_rdb_object_exists(db, "cq_projections", &exists) != CQ_OK)
        goto io;
    if (!exists)
        return CQ_OK;
    if (cq_rdb_prepare(db,
                       "SELECT version, source_hash, position, status,"
                       " error, error_position, error_event"
                       " FROM cq_projections WHERE name = ?1",
                       0, &st, ignore, sizeof ignore) != CQ_OK)
        goto io;
    cq_rstmt_bind_text(st, 1, name, -1);
    rc = cq_rstmt_step(st);
    if (rc == CQ_RSTEP_ROW) {
        const char *h = cq_rstmt_column_text(st, 1);
        const char *s = cq_rstmt_column_text(st, 3);
        const char *m = cq_rstmt_column_text(st, 4);
        const char *t = cq_rstmt_column_text(st, 6);
        cp->found = 1;
        cp->version = cq_rstmt_column_int(st, 0);
        snprintf(cp->source_hash, sizeof cp->source_hash, "%s", h ? h : "");
        cp->position = cq_rstmt_column_int(st, 2);
        cp->failed = s != NULL && strcmp(s, "failed") == 0;
        snprintf(cp->error, sizeof cp->error, "%s", m ? m : "");
        cp->error_position = cq_rstmt_column_int(st, 5);
        snprintf(cp->error_event, sizeof cp->error_event, "%s", t ? t : "");
    } else if (rc != CQ_RSTEP_DONE) {
        goto io;
    }
    cq_rstmt_finalize(st);
    return CQ_OK;
io:
    snprintf(err, errcap, "reading the checkpoint of %s: %s", name,
             cq_rdb_errmsg(db));
    cq_rstmt_finalize(st);
    return CQ_EIO;
}

/* One replay of events through a projection's handlers (see replay()). */
typedef struct replay_ctx {
    run *r;
    const vproj *p;
    cq_exec *x;
    int64_t applied, last, got;
    int failed;
    char *why;
    size_t whycap;
} replay_ctx;

static int replay_event(void *arg, const cq_stored_event *se)
{
    replay_ctx *c = arg;
    cq_decoded dec = {0};
    char when[32], day[11], msg[512] = "";
    cq_decl_event ev;

    c->got++;
    c->last = se->position;
    memset(&ev, 0, sizeof ev);
    ev.position = se->position;
    ev.stream_id = se->stream_id;
    ev.version = se->version;
    ev.type = se->type;
    cq_format_time(se->recorded_at, when);
    memcpy(day, when, 10);
    day[10] = '\0';
    ev.time = when;
    ev.day = day;
    /* decoded as the projector decodes it (domain/domain.h) */
    if (cq_event_decode(c->r->domain, se, NULL,
                        c->p->needs_metadata ? CQ_DECODE_METADATA : 0, &dec,
                        msg, sizeof msg) == CQ_OK) {
        ev.data = dec.data;
        ev.metadata = dec.metadata;
        if (cq_exec_event(c->x, c->p->d, &ev, msg, sizeof msg) != CQ_OK &&
            msg[0] == '\0')
            snprintf(msg, sizeof msg, "handler failed");
    }
    cq_decoded_clear(&dec);
    if (msg[0] != '\0') {
        c->failed = 1;
        snprintf(c->why, c->whycap, "position %lld (%s): %s",
                 (long long)ev.position, ev.type, msg);
        return 1;
    }
    c->applied++;
    return 0;
}

/* Replay events 1..upto of the event store through p's handlers on x, a
 * page of the store's own reads at a time (positions have no gaps, so the
 * pages join up). *applied gets how many were applied; if one could not be
 * (undecodable, a handler failed) *failed is set and why[] says where.
 * CQ_OK or CQ_EIO (the event store cannot be read). */
static int replay(run *r, const vproj *p, cq_exec *x, int64_t upto,
                  int64_t *applied, int *failed, char *why, size_t whycap)
{
    replay_ctx c = {r, p, x, 0, 0, 0, 0, why, whycap};
    int64_t from = 1, head;
    int rc = CQ_OK;

    while (from <= upto && !c.failed) {
        int limit = upto - from + 1 < 1000 ? (int)(upto - from + 1) : 1000;
        char msg[256] = "";

        c.got = 0;
        rc = cq_store_read_all(r->store, from, limit, replay_event, &c, &head,
                               msg, sizeof msg);
        if (rc != CQ_OK) {
            snprintf(r->err, r->errcap, "%s: reading events: %s",
                     r->events_name, msg[0] ? msg : cq_strerror(rc));
            rc = CQ_EIO;
            break;
        }
        if (c.got < limit && !c.failed)
            break; /* the store ends before upto */
        from = c.last + 1;
    }
    *applied = c.applied;
    *failed = c.failed;
    return rc;
}

/* Open DIR/file (or the database at uri, when not NULL) read-only into
 * *db; *db stays NULL (and CQ_OK) if the file does not exist and
 * `optional`. */
static int open_ro(run *r, const char *file, const char *uri, int optional,
                   cq_rdb **db)
{
    char path[4200];

    *db = NULL;
    if (uri != NULL) {
        /* every transaction of it reads one snapshot (rdb.h) */
        return cq_rdb_open(uri, CQ_RDB_READONLY, 5000, db, r->err, r->errcap) ==
                       CQ_OK
                   ? CQ_OK
                   : CQ_EIO;
    }
    snprintf(path, sizeof path, "%s/%s", r->dir, file);
    if (access(path, F_OK) != 0) {
        int e = errno;
        if (optional && e == ENOENT)
            return CQ_OK;
        snprintf(r->err, r->errcap, "%s: %s", path, strerror(e));
        return e == ENOENT ? CQ_ENOTFOUND : CQ_EIO;
    }
    if (cq_rdb_open(path, CQ_RDB_READONLY, 5000, db, r->err, r->errcap) !=
        CQ_OK)
        return CQ_EIO;
    /* belt and braces: this connection never writes */
    cq_rdb_exec(*db, "PRAGMA query_only = 1", NULL, 0);
    return CQ_OK;
}

/* Names of the tables a DDL made (step 4). */
typedef struct names {
    char **v;
    size_t n;
    int oom;
} names;

/* cq_rdb_tables' callback: one more table name into arg (a names). */
static int add_name(void *arg, const char *name)
{
    names *l = arg;
    char **v = realloc(l->v, (l->n + 1) * sizeof *v);

    if (v == NULL || (v[l->n] = strdup(name)) == NULL) {
        if (v != NULL)
            l->v = v;
        l->oom = 1;
        return 1;
    }
    l->v = v;
    l->n++;
    return 0;
}

/* Steps 1-5 for p; adds its differences to *total. CQ_OK, or an error
 * that stops the run. */
static int verify_one(run *r, const vproj *p, int64_t *total)
{
    const int is_inline = p->d->mode == CQ_DECL_INLINE;
    cq_rdb *live, *scratch = NULL;
    cq_exec *x = NULL;
    checkpoint cp;
    names tables = {NULL, 0, 0};
    char why[700] = "";
    int failed = 0, in_tx = 0, rc;
    int64_t diffs = 0, rows = 0, applied = 0;

    memset(&cp, 0, sizeof cp);
    if (!is_inline && !r->reads_tried) {
        r->reads_tried = 1;
        rc = open_ro(r, "read.db", r->read_uri, 1, &r->reads);
        if (rc != CQ_OK)
            return rc;
    }
    live = is_inline ? r->events : r->reads;
    if (live == NULL) {
        fprintf(r->out, "%s: not built: %s/read.db does not exist\n", p->name,
                r->dir);
        diffs = 1;
        goto summary;
    }

    /* 1. one snapshot for the checkpoint and the tables (PostgreSQL
     * takes a snapshot per statement unless asked for one per
     * transaction) */
    if (cq_rdb_exec(live,
                    cq_exec_dialect(live, "BEGIN",
                                    "BEGIN ISOLATION LEVEL REPEATABLE READ"
                                    " READ ONLY"),
                    NULL, 0) != CQ_OK) {
        snprintf(r->err, r->errcap, "%s: BEGIN: %s", p->name,
                 cq_rdb_errmsg(live));
        return CQ_EIO;
    }
    in_tx = 1;
    rc = read_checkpoint(live, p->name, &cp, r->err, r->errcap);
    if (rc != CQ_OK)
        goto done;

    /* 2. judge the checkpoint */
    if (!cp.found) {
        fprintf(r->out,
                "%s: not built: no checkpoint in %s (the server "
                "builds it when it starts with this projection)\n",
                p->name, is_inline ? r->events_name : r->reads_name);
        diffs = 1;
        goto summary;
    }
    if (cp.version != p->d->version ||
        strcmp(cp.source_hash, p->d->source_hash) != 0) {
        fprintf(r->out,
                "%s: built from another file (version %lld, source "
                "%.12s; %s is version %lld, source %.12s); the server "
                "rebuilds it at its next start\n",
                p->name, (long long)cp.version, cp.source_hash, p->source,
                (long long)p->d->version, p->d->source_hash);
        diffs = 1;
        goto summary;
    }
    if (cp.failed) {
        fprintf(r->out, "%s: failed at position %lld (%s): %s\n", p->name,
                (long long)cp.error_position, cp.error_event, cp.error);
        diffs++;
    }

    /* 3. replay 1..checkpoint into a scratch database */
    if (cq_rdb_open(":memory:", CQ_RDB_CREATE, 0, &scratch, r->err,
                    r->errcap) != CQ_OK ||
        (x = cq_exec_new(scratch)) == NULL) {
        snprintf(r->err, r->errcap, "cannot open a scratch database");
        rc = CQ_ENOMEM;
        goto done;
    }
    for (size_t i = 0; i < p->d->nddl; i++) {
        char msg[384];
        if (cq_exec_sql(x, cq_exec_text(scratch, &p->d->ddl[i]), msg,
                        sizeof msg) != CQ_OK) {
            snprintf(r->err, r->errcap, "%s:%d: %s", p->source,
                     p->d->ddl[i].line, msg);
            rc = CQ_EINVAL;
            goto done;
        }
    }
    rc = cq_exec_sql(x, "BEGIN", r->err, r->errcap);
    if (rc == CQ_OK)
        rc = replay(r, p, x, cp.position, &applied, &failed, why, sizeof why);
    if (rc == CQ_OK)
        rc = cq_exec_sql(x, "COMMIT", r->err, r->errcap);
    if (rc != CQ_OK)
        goto done;
    if (failed) {
        fprintf(r->out,
                "%s: replay failed at %s, before the checkpoint "
                "(position %lld)\n",
                p->name, why, (long long)cp.position);
        diffs++;
        goto summary;
    }
    if (applied != cp.position) {
        fprintf(r->out,
                "%s: checkpoint at position %lld but %s has "
                "%lld events up to it\n",
                p->name, (long long)cp.position, r->events_name,
                (long long)applied);
        diffs++;
        goto summary;
    }

    /* 4. every table the DDL made, compared with the live one */
    rc = cq_rdb_tables(scratch, NULL, add_name, &tables, r->err, r->errcap);
    if (tables.oom) {
        snprintf(r->err, r->errcap, "out of memory");
        rc = CQ_ENOMEM;
        goto done;
    }
    if (rc != CQ_OK) {
        snprintf(r->err, r->errcap, "scratch schema: %s",
                 cq_rdb_errmsg(scratch));
        rc = CQ_EIO;
        goto done;
    }
    for (size_t i = 0; i < tables.n; i++) {
        rc = verify_compare_table(r->out, p->name, live, scratch, tables.v[i],
                                  &diffs, &rows, r->err, r->errcap);
        if (rc != CQ_OK)
            goto done;
    }

summary:
    /* 5. */
    if (diffs == 0)
        fprintf(r->out, "%s: OK (position %lld, %d table%s, %lld row%s)\n",
                p->name, (long long)cp.position, (int)tables.n,
                tables.n == 1 ? "" : "s", (long long)rows,
                rows == 1 ? "" : "s");
    else
        fprintf(r->out, "%s: %lld difference%s\n", p->name, (long long)diffs,
                diffs == 1 ? "" : "s");
    *total += diffs;
    rc = CQ_OK;
done:
    if (in_tx)
        cq_rdb_exec(live, "COMMIT", NULL, 0);
    for (size_t i = 0; i < tables.n; i++)
        free(tables.v[i]);
    free(tables.v);
    cq_exec_free(x);
    cq_rdb_close(scratch);
    return rc;
}

int cq_verify_run(cq_verify *v, const char *dir, FILE *out,
                  int64_t *differences, char *err, size_t errcap)
{
    cq_verify_where w = {.dir = dir};

    return cq_verify_run_at(v, &w, out, differences, err, errcap);
}

int cq_verify_run_at(cq_verify *v, const cq_verify_where *w, FILE *out,
                     int64_t *differences, char *err, size_t errcap)
{
    const char *dir = w->dir;
    char shown[512];
    run r;
    struct stat sb;
    int rc = CQ_OK;

    *differences = 0;
    memset(&r, 0, sizeof r);
    r.dir = dir;
    r.store_uri = w->store != NULL && w->store[0] != '\0' ? w->store : NULL;
    r.read_uri = w->read_store != NULL && w->read_store[0] != '\0'
                     ? w->read_store
                     : r.store_uri; /* the store's database by default */
    r.events_name = r.store_uri ? "the event store" : "events.db";
    r.reads_name = r.read_uri ? "the read store" : "read.db";
    r.domain = v->domain;
    r.out = out;
    r.err = err;
    r.errcap = errcap;
    if (r.store_uri == NULL || r.read_uri == NULL) {
        if (dir == NULL || stat(dir, &sb) != 0) {
            int e = dir == NULL ? ENOENT : errno;
            snprintf(err, errcap, "%s: %s", dir ? dir : "(no directory)",
                     e == ENOENT ? "no such data directory" : strerror(e));
            return e == ENOENT ? CQ_ENOTFOUND : CQ_EIO;
        }
        if (!S_ISDIR(sb.st_mode)) {
            snprintf(err, errcap, "%s: not a directory", dir);
            return CQ_ENOTFOUND;
        }
    }
    rc = open_ro(&r, "events.db", r.store_uri, 0, &r.events);
    if (rc == CQ_OK) {
        cq_store_config sc = {.uri = r.store_uri,
                              .dir = dir,
                              .read_connections = 1,
                              .connections = 1,
                              .read_only = 1};
        rc = cq_store_open(&sc, &r.store, err, errcap);
    }
    if (rc == CQ_ENOTFOUND && r.store_uri != NULL) {
        cq_pg_redact(r.store_uri, shown, sizeof shown);
        snprintf(err, errcap, "%s: no event store there", shown);
    } else if (rc == CQ_ENOTFOUND) {
        snprintf(err, errcap, "%s/events.db: no event store here", dir);
    }
    for (int i = 0; rc == CQ_OK && i < v->n; i++) {
        if (v->projs[i].d == NULL) {
            fprintf(out,
                    "%s: skipped (a C projection: verify replays declared "
                    "projections only)\n",
                    v->projs[i].name);
            continue;
        }
        rc = verify_one(&r, &v->projs[i], differences);
    }
    fflush(out);
    cq_rdb_close(r.reads);
    cq_rdb_close(r.events);
    cq_store_close(r.store);
    return rc;
}

int cq_verify_run_uri(cq_verify *v, const char *store_uri, const char *read_uri,
                      FILE *out, int64_t *differences, char *err, size_t errcap)
{
    cq_verify_where w = {.store = store_uri, .read_store = read_uri};

    return cq_verify_run_at(v, &w, out, differences, err, errcap);
}