/*
 * store_sqlite_open.c -- the SQLite event store's schema and the SQL of its
 * prepared statements, and opening and closing it: the directory, the
 * file (its schema version checked before anything changes it), WAL mode,
 * the write connection and its statements, the pool of read connections,
 * the checkpointer (wal.c), and the connections handed out through the
 * read-store interface.
 *
 * Threads: sq_open and sq_close run with no other call on the store
 * running (store.h); sq_open_rdb and sq_wal_bytes are called from any
 * thread and touch nothing that changes after open.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "store/store_sqlite_int.h"

/* The schema of version 1, created in one transaction on an empty file. */
static const char SQ_SCHEMA_V1[] =
    "CREATE TABLE events ("
    " position INTEGER PRIMARY KEY,"
    " stream_id TEXT NOT NULL,"
    " version INTEGER NOT NULL,"
    " type TEXT NOT NULL,"
    " schema_version INTEGER NOT NULL,"
    " data TEXT NOT NULL,"
    " metadata TEXT NOT NULL,"
    " recorded_at INTEGER NOT NULL,"
    " UNIQUE (stream_id, version));"
    "CREATE TABLE streams ("
    " stream_id TEXT PRIMARY KEY,"
    " version INTEGER NOT NULL,"
    " position INTEGER NOT NULL) WITHOUT ROWID;"
    "CREATE TABLE command_log ("
    " idem_key TEXT PRIMARY KEY,"
    " command_hash TEXT NOT NULL,"
    " status INTEGER NOT NULL,"
    " response TEXT NOT NULL,"
    " created_at INTEGER NOT NULL,"
    " expires_at INTEGER NOT NULL);"
    "CREATE INDEX command_log_expires_at ON command_log (expires_at);"
    "PRAGMA user_version = 1;";

/* The statements of the write connection (W_*), prepared once at open. */
static const char *const W_SQL[W_COUNT] = {
    [W_BEGIN] = "BEGIN IMMEDIATE",
    [W_COMMIT] = "COMMIT",
    [W_ROLLBACK] = "ROLLBACK",
    [W_SAVEPOINT] = "SAVEPOINT cmd",
    [W_RELEASE] = "RELEASE cmd",
    [W_ROLLBACK_TO] = "ROLLBACK TO cmd",
    [W_HEAD] = SQL_HEAD,
    [W_STREAM_VERSION] = SQL_STREAM_VERSION,
    [W_INSERT_EVENT] = "INSERT INTO events (" EVENT_COLS
                       ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    [W_UPSERT_STREAM] =
        "INSERT INTO streams (stream_id, version, position)"
        " VALUES (?1, ?2, ?3) ON CONFLICT (stream_id) DO UPDATE"
        " SET version = excluded.version, position = excluded.position",
    [W_FOLD] = "SELECT " EVENT_COLS " FROM events"
               " WHERE stream_id = ?1 AND version > ?2 ORDER BY version",
    [W_CMD_GET] = "SELECT command_hash, status, response, created_at,"
                  " expires_at FROM command_log WHERE idem_key = ?1",
    [W_CMD_PUT] =
        "INSERT INTO command_log (idem_key, command_hash, status, response,"
        " created_at, expires_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)"
        " ON CONFLICT (idem_key) DO UPDATE SET"
        " command_hash = excluded.command_hash, status = excluded.status,"
        " response = excluded.response, created_at = excluded.created_at,"
        " expires_at = excluded.expires_at",
    [W_CMD_PRUNE] = "DELETE FROM command_log WHERE rowid IN"
                    " (SELECT rowid FROM command_log WHERE expires_at <= ?1"
                    " ORDER BY expires_at LIMIT ?2)",
};

/* The statements of each read connection (R_*), prepared once per
 * connection. */
static const char *const R_SQL[R_COUNT] = {
    [R_BEGIN] = "BEGIN",
    [R_COMMIT] = "COMMIT",
    [R_HEAD] = SQL_HEAD,
    [R_STREAM_VERSION] = SQL_STREAM_VERSION,
    [R_READ_STREAM] = "SELECT " EVENT_COLS " FROM events"
                      " WHERE stream_id = ?1 AND version >= ?2"
                      " ORDER BY version LIMIT ?3",
    [R_READ_ALL] = "SELECT " EVENT_COLS " FROM events WHERE position >= ?1"
                   " ORDER BY position LIMIT ?2",
    [R_POSITION_OF] = "SELECT position FROM events"
                      " WHERE stream_id = ?1 AND version = ?2",
    [R_RECORDED_AT] = "SELECT recorded_at FROM events WHERE position = ?1",
    [R_VERSION_AT] = "SELECT max(version) FROM events"
                     " WHERE stream_id = ?1 AND position <= ?2",
};

static int prepare_all(sqlite3 *db, const char *const *sql, int n,
                       sqlite3_stmt **st, char *err, size_t cap,
                       const char *path)
{
    for (int i = 0; i < n; i++) {
        int rc = sqlite3_prepare_v3(db, sql[i], -1, SQLITE_PREPARE_PERSISTENT,
                                    &st[i], NULL);
        if (rc != SQLITE_OK) {
            /* "no such table" and the like: the file says version 1 but
             * does not hold the version-1 schema. */
            sq_put_err(
                err, cap,
                "%s: does not match schema version %d: %s (sqlite error %d)",
                path, CQ_STORE_SCHEMA_VERSION, sqlite3_errmsg(db),
                sqlite3_extended_errcode(db));
            return (rc & 0xff) == SQLITE_ERROR ? CQ_ECORRUPT : sq_map_rc(rc);
        }
    }
    return CQ_OK;
}

static void finalize_all(sqlite3_stmt **st, int n)
{
    for (int i = 0; i < n; i++) {
        sqlite3_finalize(st[i]);
        st[i] = NULL;
    }
}

/* fsync a directory so a new entry in it survives power loss. */
static int fsync_dir(const char *dir, char *err, size_t cap)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0 || fsync(fd) != 0) {
        sq_put_err(err, cap, "cannot sync directory %s: %s", dir,
                   strerror(errno));
        if (fd >= 0)
            close(fd);
        return CQ_EIO;
    }
    close(fd);
    return CQ_OK;
}

/* mkdir dir (one level) unless it exists; sync its parent if created. */
static int make_dir(const char *dir, char *err, size_t cap)
{
    struct stat sb;
    char *parent = NULL;
    int rc = CQ_OK;

    if (mkdir(dir, 0755) != 0) {
        if (errno != EEXIST) {
            sq_put_err(err, cap, "cannot create directory %s: %s", dir,
                       strerror(errno));
            return CQ_EIO;
        }
        if (stat(dir, &sb) != 0 || !S_ISDIR(sb.st_mode)) {
            sq_put_err(err, cap, "%s exists and is not a directory", dir);
            return CQ_EIO;
        }
        return CQ_OK;
    }
    parent = strdup(dir);
    if (parent == NULL) {
        sq_put_err(err, cap, "out of memory");
        return CQ_ENOMEM;
    }
    size_t len = strlen(parent);
    while (len > 1 && parent[len - 1] == '/')
        parent[--len] = '\0';
    char *slash = strrchr(parent, '/');
    if (slash == NULL)
        strcpy(parent, ".");
    else if (slash == parent)
        parent[1] = '\0';
    else
        *slash = '\0';
    rc = fsync_dir(parent, err, cap);
    free(parent);
    return rc;
}

/* ---- open / close ---- */

void sq_close(void *impl)
{
    sq_store *w = impl;
    if (w == NULL)
        return;
    /* Readers and the checkpoint thread first: the writer, closing last,
     * checkpoints the WAL and removes it. */
    cq_wal_free(w->wal);
    for (int i = 0; i < w->nreaders; i++) {
        finalize_all(w->readers[i].st, R_COUNT);
        sqlite3_close(w->readers[i].db);
    }
    finalize_all(w->st, W_COUNT);
    cq_rdb_close(w->view);
    sqlite3_close(w->db);
    if (w->sync_init) {
        pthread_cond_destroy(&w->cv);
        pthread_mutex_destroy(&w->mu);
    }
    free(w->readers);
    free(w->idle);
    free(w->buf);
    free(w);
}

/* Read PRAGMA user_version; the first read of the file, so a file that is
 * not a database fails here. */
static int read_user_version(sqlite3 *db, const char *path, int *out, char *err,
                             size_t cap)
{
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &st, NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        *out = sqlite3_column_int(st, 0);
        rc = CQ_OK;
    } else {
        sq_put_err(err, cap,
                   "%s: cannot read the schema version: %s (sqlite error %d)",
                   path, sqlite3_errmsg(db), sqlite3_extended_errcode(db));
        rc = sq_map_rc(rc);
    }
    sqlite3_finalize(st);
    return rc;
}

static int check_version(int v, const char *path, char *err, size_t cap)
{
    if (v > CQ_STORE_SCHEMA_VERSION) {
        sq_put_err(
            err, cap,
            "%s has schema version %d but this cqrsd knows only up to %d; "
            "upgrade cqrsd",
            path, v, CQ_STORE_SCHEMA_VERSION);
        return CQ_EVERSION;
    }
    if (v < 0) {
        sq_put_err(err, cap, "%s has an invalid schema version %d", path, v);
        return CQ_ECORRUPT;
    }
    return CQ_OK;
}

static int exec_sql(sqlite3 *db, const char *sql, const char *path, char *err,
                    size_t cap)
{
    int rc = sqlite3_exec(db, sql, NULL, NULL, NULL);
    if (rc != SQLITE_OK)
        return sq_sql_err(db, rc, err, cap, path);
    return CQ_OK;
}

/* Create the version-1 schema in one transaction if the file has none. */
static int create_schema(sqlite3 *db, const char *path, const char *dir,
                         char *err, size_t cap)
{
    sqlite3_stmt *st = NULL;
    int v = 0;
    int rc = exec_sql(db, "BEGIN IMMEDIATE", path, err, cap);
    if (rc != CQ_OK)
        return rc;
    /* Another process may have created it since we looked. */
    rc = read_user_version(db, path, &v, err, cap);
    if (rc == CQ_OK)
        rc = check_version(v, path, err, cap);
    if (rc != CQ_OK)
        goto fail;
    if (v == 0) {
        /* user_version 0 but tables present: some other database. */
        if (sqlite3_prepare_v2(db, "SELECT count(*) FROM sqlite_master", -1,
                               &st, NULL) != SQLITE_OK ||
            sqlite3_step(st) != SQLITE_ROW) {
            rc = sq_sql_err(db, sqlite3_errcode(db), err, cap, path);
            goto fail;
        }
        if (sqlite3_column_int64(st, 0) != 0) {
            sq_put_err(
                err, cap,
                "%s holds tables but no cqrsd schema version (user_version "
                "0); refusing to use it",
                path);
            rc = CQ_ECORRUPT;
            goto fail;
        }
        sqlite3_finalize(st);
        st = NULL;
        rc = exec_sql(db, SQ_SCHEMA_V1, path, err, cap);
        if (rc != CQ_OK)
            goto fail;
    }
    rc = exec_sql(db, "COMMIT", path, err, cap);
    if (rc != CQ_OK)
        goto fail;
    /* The file may be new: make its directory entry durable too. */
    return fsync_dir(dir, err, cap);

fail:
    sqlite3_finalize(st);
    if (!sqlite3_get_autocommit(db))
        sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
    return rc;
}

static int open_writer(sq_store *w, const cq_store_config *cfg,
                       const char *path, char *err, size_t cap)
{
    int v = 0;
    int rc = sqlite3_open_v2(
        path, &w->db,
        SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL);
    if (rc != SQLITE_OK) {
        if (w->db == NULL) {
            sq_put_err(err, cap, "%s: cannot open: out of memory", path);
            return CQ_ENOMEM;
        }
        return sq_sql_err(w->db, rc, err, cap, path);
    }
    sqlite3_busy_timeout(w->db, SQ_BUSY_TIMEOUT_MS);
    /* Look before changing anything: a newer or foreign file is left as
     * it is. */
    rc = read_user_version(w->db, path, &v, err, cap);
    if (rc == CQ_OK)
        rc = check_version(v, path, err, cap);
    if (rc != CQ_OK)
        return rc;

    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(w->db, "PRAGMA journal_mode = WAL", -1, &st, NULL) !=
            SQLITE_OK ||
        sqlite3_step(st) != SQLITE_ROW) {
        rc = sq_sql_err(w->db, sqlite3_errcode(w->db), err, cap, path);
        sqlite3_finalize(st);
        return rc;
    }
    const char *mode = (const char *)sqlite3_column_text(st, 0);
    if (mode == NULL || strcmp(mode, "wal") != 0) {
        sq_put_err(err, cap,
                   "%s: cannot switch to WAL mode (journal mode is %s)", path,
                   mode ? mode : "unknown");
        sqlite3_finalize(st);
        return CQ_EIO;
    }
    sqlite3_finalize(st);
    rc = exec_sql(w->db,
                  cfg->sync_full ? "PRAGMA synchronous = FULL"
                                 : "PRAGMA synchronous = NORMAL",
                  path, err, cap);
    if (rc != CQ_OK)
        return rc;
    if (v == 0) {
        rc = create_schema(w->db, path, cfg->dir, err, cap);
        if (rc != CQ_OK)
            return rc;
    }
    return prepare_all(w->db, W_SQL, W_COUNT, w->st, err, cap, path);
}

static int open_reader(sq_reader *r, const char *path, char *err, size_t cap)
{
    int rc = sqlite3_open_v2(path, &r->db,
                             SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, NULL);
    if (rc != SQLITE_OK) {
        if (r->db == NULL) {
            sq_put_err(err, cap, "%s: cannot open a reader: out of memory",
                       path);
            return CQ_ENOMEM;
        }
        return sq_sql_err(r->db, rc, err, cap, path);
    }
    sqlite3_busy_timeout(r->db, SQ_BUSY_TIMEOUT_MS);
    return prepare_all(r->db, R_SQL, R_COUNT, r->st, err, cap, path);
}

int sq_open(const cq_store_config *cfg, void **impl, char *err, size_t errcap)
{
    sq_store *w = NULL;
    char *path = NULL;
    int rc;

    *impl = NULL;
    if (cfg == NULL || cfg->dir == NULL || cfg->dir[0] == '\0' ||
        cfg->read_connections < 0) {
        sq_put_err(err, errcap,
                   "store: need a directory and a read pool size >= 0");
        return CQ_EINVAL;
    }
    if (sqlite3_threadsafe() == 0) {
        sq_put_err(
            err, errcap,
            "store: this SQLite library was built without thread support");
        return CQ_EIO;
    }
    if (!cfg->read_only) {
        rc = make_dir(cfg->dir, err, errcap);
        if (rc != CQ_OK)
            goto fail;
    }
    size_t plen = strlen(cfg->dir) + sizeof "/" SQ_FILE;
    path = malloc(plen);
    w = calloc(1, sizeof *w);
    if (path == NULL || w == NULL) {
        sq_put_err(err, errcap, "store: out of memory");
        rc = CQ_ENOMEM;
        goto fail;
    }
    snprintf(path, plen, "%s/%s", cfg->dir, SQ_FILE);
    int n =
        cfg->read_connections == 0 ? SQ_DEFAULT_READERS : cfg->read_connections;
    w->readers = calloc((size_t)n, sizeof *w->readers);
    w->idle = calloc((size_t)n, sizeof *w->idle);
    if (w->readers == NULL || w->idle == NULL) {
        sq_put_err(err, errcap, "store: out of memory");
        rc = CQ_ENOMEM;
        goto fail;
    }
    if (pthread_mutex_init(&w->mu, NULL) != 0) {
        sq_put_err(err, errcap, "store: cannot create a mutex");
        rc = CQ_ENOMEM;
        goto fail;
    }
    if (pthread_cond_init(&w->cv, NULL) != 0) {
        pthread_mutex_destroy(&w->mu);
        sq_put_err(err, errcap, "store: cannot create a condition variable");
        rc = CQ_ENOMEM;
        goto fail;
    }
    w->sync_init = 1;

    if (cfg->read_only && access(path, F_OK) != 0) {
        sq_put_err(err, errcap, "%s: %s", path, strerror(errno));
        rc = errno == ENOENT ? CQ_ENOTFOUND : CQ_EIO;
        goto fail;
    }
    rc = cfg->read_only ? CQ_OK : open_writer(w, cfg, path, err, errcap);
    if (rc != CQ_OK)
        goto fail;
    /* Readers open after the writer has made the file a WAL database. */
    for (int i = 0; i < n; i++) {
        w->nreaders = i + 1;
        rc = open_reader(&w->readers[i], path, err, errcap);
        if (rc != CQ_OK)
            goto fail;
        w->idle[w->nidle++] = &w->readers[i];
    }
    if (cfg->read_only)
        goto done;
    rc = cq_wal_start(w->db, SQ_BUSY_TIMEOUT_MS, path, "cq-ckpt-events",
                      &w->wal, err, errcap);
    if (rc != CQ_OK)
        goto fail;
    w->view = cq_rdb_wrap(&cq_rdb_sqlite_ops, w->db, 0);
    if (w->view == NULL) {
        snprintf(err, errcap, "out of memory");
        rc = CQ_ENOMEM;
        goto fail;
    }
done:
    free(path);
    *impl = w;
    return CQ_OK;

fail:
    sq_close(w);
    free(path);
    return rc;
}

cq_rdb *sq_write_rdb(void *impl)
{
    return ((sq_store *)impl)->view;
}

int sq_open_rdb(void *impl, cq_rdb **out, char *err, size_t errcap)
{
    sq_store *w = impl;
    /* the readers' file is the writer's (a read-only store has no writer) */
    const char *path = sqlite3_db_filename(w->readers[0].db, "main");

    return cq_rdb_open(path, CQ_RDB_READONLY, SQ_BUSY_TIMEOUT_MS, out, err,
                       errcap);
}

int64_t sq_wal_bytes(void *impl)
{
    return cq_wal_bytes(((sq_store *)impl)->wal);
}
