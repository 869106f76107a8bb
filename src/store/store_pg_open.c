/*
 * store_pg_open.c -- the PostgreSQL event store's schema and the SQL of its
 * prepared statements, and opening and closing it: the write connection,
 * the schema (made once, under an advisory lock, however many nodes start
 * at once; its version checked before anything changes it), the pool of
 * read connections, and the connections handed out through the read-store
 * interface.
 *
 * Threads: pgs_open and pgs_close run with no other call on the store
 * running (store.h); pgs_open_rdb is called from any thread and touches
 * only the URI, which does not change after open.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store/store_pg_int.h"

/* The schema of version 1, created in one transaction in a database that
 * holds none of its tables. Text keys compare bytewise (COLLATE "C"), as
 * on SQLite. */
static const char PGS_SCHEMA_V1[] =
    "CREATE TABLE events ("
    " position BIGINT PRIMARY KEY,"
    " stream_id TEXT COLLATE \"C\" NOT NULL,"
    " version BIGINT NOT NULL,"
    " type TEXT NOT NULL,"
    " schema_version INT NOT NULL,"
    " data TEXT NOT NULL,"
    " metadata TEXT NOT NULL,"
    " recorded_at BIGINT NOT NULL,"
    " UNIQUE (stream_id, version));"
    "CREATE TABLE streams ("
    " stream_id TEXT COLLATE \"C\" PRIMARY KEY,"
    " version BIGINT NOT NULL,"
    " position BIGINT NOT NULL);"
    "CREATE TABLE command_log ("
    " idem_key TEXT COLLATE \"C\" PRIMARY KEY,"
    " command_hash TEXT NOT NULL,"
    " status INT NOT NULL,"
    " response TEXT NOT NULL,"
    " created_at BIGINT NOT NULL,"
    " expires_at BIGINT NOT NULL);"
    "CREATE INDEX command_log_expires_at ON command_log (expires_at);"
    "CREATE TABLE cq_store_schema (version INT NOT NULL);"
    "INSERT INTO cq_store_schema (version) VALUES (1)";

const char *const PGS_W_NAME[PW_COUNT] = {
    [PW_LOCK] = "cq_store_w_lock",
    [PW_HEAD] = "cq_store_w_head",
    [PW_STREAM_VERSION] = "cq_store_w_stream_version",
    [PW_APPEND] = "cq_store_w_append",
    [PW_FOLD] = "cq_store_w_fold",
    [PW_NOTIFY] = "cq_store_w_notify",
    [PW_CMD_GET] = "cq_store_w_cmd_get",
    [PW_CMD_PUT] = "cq_store_w_cmd_put",
    [PW_CMD_PRUNE] = "cq_store_w_cmd_prune",
};

/* The statements of the write connection. PW_APPEND checks the expected
 * version against the stream's row, inserts the events ($5..$8: arrays of
 * type, schema_version, data and metadata, sent binary) at positions
 * $3.. and versions v+1.., and moves the stream's row, all in one
 * statement; it writes nothing when the check fails (or the stored
 * version is not positive) and answers the stored version (NULL: no
 * stream) and whether it wrote. */
const char *const PGS_W_SQL[PW_COUNT] = {
    [PW_LOCK] = "SELECT pg_advisory_xact_lock(hashtextextended('" PGS_APPEND_LOCK
                "', 0))",
    [PW_HEAD] = "SELECT max(position) FROM events",
    [PW_STREAM_VERSION] = "SELECT version FROM streams WHERE stream_id = $1",
    [PW_APPEND] =
        "WITH cur AS (SELECT (SELECT version FROM streams"
        "  WHERE stream_id = $1) AS v),"
        " ok AS (SELECT coalesce(v, 0) AS v FROM cur"
        "  WHERE (v IS NULL OR v > 0) AND CASE $2::bigint"
        "   WHEN -1 THEN true WHEN 0 THEN v IS NULL"
        "   WHEN -2 THEN v IS NOT NULL ELSE v = $2::bigint END),"
        " ins AS (INSERT INTO events (" PGS_EVENT_COLS ")"
        "  SELECT $3::bigint + e.o - 1, $1, ok.v + e.o, e.t, e.s, e.d, e.m,"
        "   $4::bigint"
        "  FROM ok, unnest($5::text[], $6::int4[], $7::text[], $8::text[])"
        "   WITH ORDINALITY AS e(t, s, d, m, o)),"
        " up AS (INSERT INTO streams (stream_id, version, position)"
        "  SELECT $1, ok.v + cardinality($5::text[]),"
        "   $3::bigint + cardinality($5::text[]) - 1 FROM ok"
        "  ON CONFLICT (stream_id) DO UPDATE"
        "  SET version = excluded.version, position = excluded.position)"
        " SELECT cur.v, (SELECT count(*) FROM ok) FROM cur",
    [PW_FOLD] = "SELECT " PGS_EVENT_COLS " FROM events"
                " WHERE stream_id = $1 AND version > $2 ORDER BY version",
    [PW_NOTIFY] = "SELECT pg_notify('" PGS_NOTIFY_CHANNEL "', $1)",
    [PW_CMD_GET] = "SELECT command_hash, status, response, created_at,"
                   " expires_at FROM command_log WHERE idem_key = $1",
    [PW_CMD_PUT] =
        "INSERT INTO command_log (idem_key, command_hash, status, response,"
        " created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6)"
        " ON CONFLICT (idem_key) DO UPDATE SET"
        " command_hash = excluded.command_hash, status = excluded.status,"
        " response = excluded.response, created_at = excluded.created_at,"
        " expires_at = excluded.expires_at",
    [PW_CMD_PRUNE] = "DELETE FROM command_log WHERE idem_key IN"
                     " (SELECT idem_key FROM command_log WHERE expires_at <= $1"
                     " ORDER BY expires_at LIMIT $2)",
};

const char *const PGS_R_NAME[PR_COUNT] = {
    [PR_HEAD] = "cq_store_r_head",
    [PR_READ_STREAM] = "cq_store_r_read_stream",
    [PR_READ_ALL] = "cq_store_r_read_all",
    [PR_POSITION_OF] = "cq_store_r_position_of",
    [PR_RECORDED_AT] = "cq_store_r_recorded_at",
    [PR_VERSION_AT] = "cq_store_r_version_at",
};

/* The statements of each read connection. The two reads are one statement
 * each, so the version or head they answer (column 0, on every row, also
 * on the one row of NULL events when there are none) and the events come
 * from one snapshot. */
const char *const PGS_R_SQL[PR_COUNT] = {
    [PR_HEAD] = "SELECT max(position) FROM events",
    [PR_READ_STREAM] =
        "SELECT s.v, e.* FROM"
        " (SELECT (SELECT version FROM streams WHERE stream_id = $1) AS v) s"
        " LEFT JOIN LATERAL (SELECT " PGS_EVENT_COLS " FROM events"
        "  WHERE s.v IS NOT NULL AND stream_id = $1 AND version >= $2"
        "  ORDER BY version LIMIT $3) e ON true"
        " ORDER BY e.version",
    [PR_READ_ALL] =
        "SELECT h.head, e.* FROM (SELECT max(position) AS head FROM events) h"
        " LEFT JOIN LATERAL (SELECT " PGS_EVENT_COLS " FROM events"
        "  WHERE position >= $1 ORDER BY position LIMIT $2) e ON true"
        " ORDER BY e.position",
    [PR_POSITION_OF] = "SELECT position FROM events"
                       " WHERE stream_id = $1 AND version = $2",
    [PR_RECORDED_AT] = "SELECT recorded_at FROM events WHERE position = $1",
    /* positions grow with versions within a stream: the first row from the
     * top at or before the position is the answer */
    [PR_VERSION_AT] = "SELECT version FROM events"
                      " WHERE stream_id = $1 AND position <= $2"
                      " ORDER BY version DESC LIMIT 1",
};

/* ---- the schema ---- */

static int exec_sql(PGconn *c, const char *sql, char *err, size_t cap,
                    const char *ctx)
{
    PGresult *r = PQexec(c, sql);
    int rc = CQ_OK;
    ExecStatusType st = r != NULL ? PQresultStatus(r) : PGRES_FATAL_ERROR;
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK)
        rc = pgs_fail(c, r, err, cap, ctx);
    PQclear(r);
    return rc;
}

/* The version in cq_store_schema: exactly one row holding an integer. */
static int read_version(pgs_store *w, PGconn *c, int64_t *v, char *err,
                        size_t cap)
{
    static const int want[1] = {PGS_INT8OID};
    PGresult *r = PQexec(c, "SELECT version FROM cq_store_schema");
    int rc = CQ_OK;

    if (r == NULL || PQresultStatus(r) != PGRES_TUPLES_OK)
        rc = pgs_fail(c, r, err, cap, "reading the schema version");
    else if (PQntuples(r) != 1 || pgs_check_types(r, 0, want, 1) >= 0 ||
             pgs_int_col(r, 0, 0, v) != CQ_OK) {
        pgs_put_err(err, cap,
                    "%s: cq_store_schema must hold one row with an integer "
                    "version (it holds %d rows)",
                    w->shown, PQntuples(r));
        rc = CQ_ECORRUPT;
    }
    PQclear(r);
    return rc;
}

static int check_version(pgs_store *w, int64_t v, char *err, size_t cap)
{
    if (v > CQ_STORE_SCHEMA_VERSION) {
        pgs_put_err(err, cap,
                    "%s has event store schema version %lld but this cqrsd "
                    "knows only up to %d; upgrade cqrsd",
                    w->shown, (long long)v, CQ_STORE_SCHEMA_VERSION);
        return CQ_EVERSION;
    }
    if (v < 1) {
        pgs_put_err(err, cap, "%s has an invalid schema version %lld",
                    w->shown, (long long)v);
        return CQ_ECORRUPT;
    }
    return CQ_OK;
}

/* Which of the store's tables exist (through the search path): a bit
 * each, 1 cq_store_schema, 2 events, 4 streams, 8 command_log. */
enum { T_SCHEMA = 1, T_EVENTS = 2, T_STREAMS = 4, T_CMDLOG = 8, T_DATA = 14 };

static int tables_present(PGconn *c, int *bits, char *err, size_t cap)
{
    PGresult *r = PQexec(c, "SELECT to_regclass('cq_store_schema') IS NOT NULL,"
                            " to_regclass('events') IS NOT NULL,"
                            " to_regclass('streams') IS NOT NULL,"
                            " to_regclass('command_log') IS NOT NULL");
    int rc = CQ_OK;

    *bits = 0;
    if (r == NULL || PQresultStatus(r) != PGRES_TUPLES_OK ||
        PQntuples(r) != 1 || PQnfields(r) != 4) {
        rc = pgs_fail(c, r, err, cap, "looking for the event store's tables");
    } else {
        for (int i = 0; i < 4; i++)
            if (strcmp(PQgetvalue(r, 0, i), "t") == 0)
                *bits |= 1 << i;
    }
    PQclear(r);
    return rc;
}

/* In one transaction, under the schema lock (so that nodes starting at
 * once neither race nor see each other's half-made schema): check what is
 * there, and create the version-1 schema in a database that has none of
 * its tables. */
static int ensure_schema(pgs_store *w, char *err, size_t cap)
{
    PGconn *c = w->w.c;
    int64_t v = 0;
    int bits = 0;
    int rc = exec_sql(c, "BEGIN ISOLATION LEVEL READ COMMITTED", err, cap,
                      "BEGIN");
    if (rc != CQ_OK)
        return rc;
    rc = exec_sql(c,
                  "SELECT pg_advisory_xact_lock(hashtextextended('" PGS_SCHEMA_LOCK
                  "', 0))",
                  err, cap, "taking the schema lock");
    if (rc == CQ_OK)
        rc = tables_present(c, &bits, err, cap);
    if (rc != CQ_OK)
        goto fail;
    if (bits & T_SCHEMA) {
        rc = read_version(w, c, &v, err, cap);
        if (rc == CQ_OK)
            rc = check_version(w, v, err, cap);
        if (rc != CQ_OK)
            goto fail;
        if ((bits & T_DATA) != T_DATA) {
            pgs_put_err(err, cap,
                        "%s: schema version %lld, but it lacks%s%s%s: a "
                        "half-made or damaged event store",
                        w->shown, (long long)v,
                        bits & T_EVENTS ? "" : " events",
                        bits & T_STREAMS ? "" : " streams",
                        bits & T_CMDLOG ? "" : " command_log");
            rc = CQ_ECORRUPT;
            goto fail;
        }
    } else if (bits & T_DATA) {
        pgs_put_err(err, cap,
                    "%s holds a table events, streams or command_log but no "
                    "cq_store_schema: a half-made event store or another "
                    "application's tables; refusing to use it",
                    w->shown);
        rc = CQ_ECORRUPT;
        goto fail;
    } else {
        rc = exec_sql(c, PGS_SCHEMA_V1, err, cap, "creating the schema");
        if (rc != CQ_OK)
            goto fail;
    }
    return exec_sql(c, "COMMIT", err, cap, "COMMIT of the schema");

fail:
    if (PQstatus(c) == CONNECTION_OK && PQtransactionStatus(c) != PQTRANS_IDLE)
        PQclear(PQexec(c, "ROLLBACK"));
    return rc;
}

/* A read-only open needs an existing store of a version we know. */
static int check_existing(pgs_store *w, PGconn *c, char *err, size_t cap)
{
    int64_t v = 0;
    int bits = 0;
    int rc = tables_present(c, &bits, err, cap);

    if (rc != CQ_OK)
        return rc;
    if (!(bits & T_SCHEMA)) {
        pgs_put_err(err, cap, "%s holds no event store (no cq_store_schema)",
                    w->shown);
        return CQ_ENOTFOUND;
    }
    rc = read_version(w, c, &v, err, cap);
    if (rc == CQ_OK)
        rc = check_version(w, v, err, cap);
    return rc;
}

/* ---- open / close ---- */

void pgs_close(void *impl)
{
    pgs_store *w = impl;
    if (w == NULL)
        return;
    cq_rdb_close(w->view);
    for (int i = 0; i < w->nreaders; i++)
        PQfinish(w->readers[i].conn.c);
    PQfinish(w->w.c);
    if (w->sync_init) {
        pthread_cond_destroy(&w->cv);
        pthread_mutex_destroy(&w->mu);
    }
    free(w->readers);
    free(w->idle);
    free(w->buf);
    free(w->uri);
    free(w);
}

static int connect_one(pgs_store *w, pgs_conn *pc, int writer, char *err,
                       size_t cap)
{
    int rc = cq_pg_connect(w->uri, PGS_CONNECT_TIMEOUT_S, &pc->c, err, cap);
    if (rc != CQ_OK)
        return rc;
    pc->writer = writer;
    pc->names = writer ? PGS_W_NAME : PGS_R_NAME;
    pc->sql = writer ? PGS_W_SQL : PGS_R_SQL;
    pc->nstmt = writer ? PW_COUNT : PR_COUNT;
    return CQ_OK;
}

int pgs_open(const cq_store_config *cfg, void **impl, char *err,
             size_t errcap)
{
    pgs_store *w = NULL;
    int n, rc;

    *impl = NULL;
    if (cfg == NULL || cfg->uri == NULL || cfg->uri[0] == '\0' ||
        cfg->connections < 0) {
        pgs_put_err(err, errcap,
                    "store: need a PostgreSQL URI and a read pool size >= 0");
        return CQ_EINVAL;
    }
    w = calloc(1, sizeof *w);
    if (w == NULL || (w->uri = strdup(cfg->uri)) == NULL) {
        free(w);
        pgs_put_err(err, errcap, "store: out of memory");
        return CQ_ENOMEM;
    }
    cq_pg_redact(cfg->uri, w->shown, sizeof w->shown);
    w->read_only = cfg->read_only;
    n = cfg->connections == 0 ? PGS_DEFAULT_READERS : cfg->connections;
    w->readers = calloc((size_t)n, sizeof *w->readers);
    w->idle = calloc((size_t)n, sizeof *w->idle);
    if (w->readers == NULL || w->idle == NULL) {
        pgs_put_err(err, errcap, "store: out of memory");
        rc = CQ_ENOMEM;
        goto fail;
    }
    if (pthread_mutex_init(&w->mu, NULL) != 0) {
        pgs_put_err(err, errcap, "store: cannot create a mutex");
        rc = CQ_ENOMEM;
        goto fail;
    }
    if (pthread_cond_init(&w->cv, NULL) != 0) {
        pthread_mutex_destroy(&w->mu);
        pgs_put_err(err, errcap, "store: cannot create a condition variable");
        rc = CQ_ENOMEM;
        goto fail;
    }
    w->sync_init = 1;

    if (!w->read_only) {
        rc = connect_one(w, &w->w, 1, err, errcap);
        if (rc == CQ_OK)
            rc = pgs_session(&w->w, err, errcap);
        if (rc == CQ_OK)
            rc = ensure_schema(w, err, errcap);
        if (rc == CQ_OK)
            rc = pgs_ensure(&w->w, err, errcap);
        if (rc != CQ_OK)
            goto fail;
    }
    for (int i = 0; i < n; i++) {
        pgs_conn *pc = &w->readers[i].conn;
        w->nreaders = i + 1;
        rc = connect_one(w, pc, 0, err, errcap);
        if (rc == CQ_OK && i == 0 && w->read_only)
            rc = check_existing(w, pc->c, err, errcap);
        if (rc == CQ_OK)
            rc = pgs_ensure(pc, err, errcap);
        if (rc != CQ_OK)
            goto fail;
        w->idle[w->nidle++] = &w->readers[i];
    }
    if (!w->read_only) {
        w->view = cq_rdb_pg_wrap(w->w.c, 0);
        if (w->view == NULL) {
            pgs_put_err(err, errcap, "store: out of memory");
            rc = CQ_ENOMEM;
            goto fail;
        }
    }
    *impl = w;
    return CQ_OK;

fail:
    pgs_close(w);
    return rc;
}

cq_rdb *pgs_write_rdb(void *impl)
{
    return ((pgs_store *)impl)->view;
}

int pgs_open_rdb(void *impl, cq_rdb **out, char *err, size_t errcap)
{
    pgs_store *w = impl;
    PGconn *c = NULL;
    int rc;

    *out = NULL;
    rc = cq_pg_connect(w->uri, PGS_CONNECT_TIMEOUT_S, &c, err, errcap);
    if (rc != CQ_OK)
        return rc;
    rc = exec_sql(c, "SET default_transaction_read_only = on", err, errcap,
                  "a read connection's settings");
    if (rc != CQ_OK) {
        PQfinish(c);
        return rc;
    }
    *out = cq_rdb_pg_wrap(c, 1);
    if (*out == NULL) {
        PQfinish(c);
        pgs_put_err(err, errcap, "out of memory");
        return CQ_ENOMEM;
    }
    return CQ_OK;
}
