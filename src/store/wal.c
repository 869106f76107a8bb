/*
 * wal.c -- checkpoints that keep a WAL database's log bounded (see wal.h).
 *
 * Why SQLite's own automatic checkpoint is not enough: it runs PASSIVE
 * checkpoints on the writing connection, inside its commit (a database
 * fsync on the writer's path), and a PASSIVE checkpoint never resets the
 * log. The log is only reset (written again from its start) when a
 * writer begins a transaction while every frame has been copied back and
 * no reader still uses an older snapshot; under continuous writes, or
 * with a checkpoint that runs beside the writer, that moment rarely
 * comes, and the -wal file grows without limit.
 *
 * Protocol, after each commit of the writing connection (hook on_commit,
 * called by SQLite on the writing thread once the write lock is released;
 * `frames` is the number of frames in the log since its last reset):
 *   1. frames < CQ_WAL_CHECKPOINT_FRAMES: nothing to do (the log was
 *      reset; the next TRUNCATE attempt is due at CQ_WAL_LIMIT_FRAMES).
 *   2. frames below the next TRUNCATE attempt: wake the checkpoint thread,
 *      which runs a PASSIVE checkpoint on its own connection. It takes no
 *      lock the writer or the readers wait for.
 *   3. frames at or past it: run a TRUNCATE checkpoint here, on the
 *      writing connection, with a busy timeout of CQ_WAL_TRUNCATE_BUSY_MS.
 *      It first waits for the checkpoint thread's pass to end (ckpt_mu:
 *      SQLite would refuse a second checkpointer at once), copies what is
 *      left, waits for readers still on older snapshots (new readers then
 *      read the database file and do not hold it up), and truncates the
 *      -wal file to 0 bytes. If readers hold on past the timeout, the next
 *      attempt is CQ_WAL_CHECKPOINT_FRAMES frames later, so a stuck reader
 *      costs the writer at most one short wait per that many frames.
 * The hook always answers SQLITE_OK: the commit is done and durable,
 * whatever the checkpoint did.
 *
 * The checkpoint thread's connection reads the schema once when it opens:
 * a connection that has never read the database does not know it is in
 * WAL mode, and SQLite then treats a checkpoint on it as a no-op.
 *
 * Threads and locks: `mu` guards `due` and `stopping` (cv wakes the
 * thread); `ckpt_mu` is held for the duration of any checkpoint (thread or
 * writer). `next_truncate` belongs to the writing thread (the hook).
 */
#include "store/wal.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cqrs/cqrs.h"
#include "store/rdb.h"

struct cq_wal {
    sqlite3 *writer; /* borrowed: the database's writing connection */
    int busy_ms;     /* writer's busy timeout, restored after a TRUNCATE */
    sqlite3 *db;     /* the checkpoint thread's own connection */
    char name[16];
    char *wal_path; /* path + "-wal" */

    pthread_t thread;
    int started;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int due;                 /* guarded by mu: a PASSIVE checkpoint is wanted */
    int stopping;            /* guarded by mu */
    pthread_mutex_t ckpt_mu; /* held while any checkpoint runs */

    int next_truncate; /* writing thread only */
    _Atomic int64_t truncations;
    int last_error; /* checkpoint thread only: logged once per change */
};

/* Make db a WAL connection: read the schema once (see the file comment). */
static int attach_wal(sqlite3 *db)
{
    return sqlite3_exec(db, "SELECT count(*) FROM sqlite_master", NULL, NULL,
                        NULL);
}

static void *keeper_main(void *arg)
{
    cq_wal *w = arg;

    pthread_setname_np(pthread_self(), w->name);
    pthread_mutex_lock(&w->mu);
    while (!w->stopping) {
        int rc, log = 0, ckpt = 0;

        if (!w->due) {
            pthread_cond_wait(&w->cv, &w->mu);
            continue;
        }
        w->due = 0;
        pthread_mutex_unlock(&w->mu);
        pthread_mutex_lock(&w->ckpt_mu);
        rc = sqlite3_wal_checkpoint_v2(w->db, NULL, SQLITE_CHECKPOINT_PASSIVE,
                                       &log, &ckpt);
        if (rc == SQLITE_OK && log < 0) {
            /* not (or no longer) attached to the log: attach and retry */
            attach_wal(w->db);
            rc = sqlite3_wal_checkpoint_v2(
                w->db, NULL, SQLITE_CHECKPOINT_PASSIVE, &log, &ckpt);
        }
        pthread_mutex_unlock(&w->ckpt_mu);
        /* BUSY: another process checkpoints; the next commit asks again */
        if (rc != SQLITE_OK && rc != SQLITE_BUSY && rc != w->last_error)
            fprintf(stderr, "cqrsd: %s: checkpoint: %s\n", w->name,
                    sqlite3_errmsg(w->db));
        w->last_error = rc == SQLITE_BUSY ? w->last_error : rc;
        pthread_mutex_lock(&w->mu);
    }
    pthread_mutex_unlock(&w->mu);
    return NULL;
}

/* Step 3 of the protocol, on the writing thread. */
static void truncate_log(cq_wal *w, int frames)
{
    int rc;

    pthread_mutex_lock(&w->ckpt_mu);
    sqlite3_busy_timeout(w->writer, CQ_WAL_TRUNCATE_BUSY_MS);
    rc = sqlite3_wal_checkpoint_v2(w->writer, NULL, SQLITE_CHECKPOINT_TRUNCATE,
                                   NULL, NULL);
    sqlite3_busy_timeout(w->writer, w->busy_ms);
    pthread_mutex_unlock(&w->ckpt_mu);
    if (rc == SQLITE_OK) {
        w->next_truncate = CQ_WAL_LIMIT_FRAMES;
        atomic_fetch_add(&w->truncations, 1);
        return;
    }
    /* readers on old snapshots (BUSY) or an I/O error: try again later */
    w->next_truncate = frames + CQ_WAL_CHECKPOINT_FRAMES;
    if (rc != SQLITE_BUSY)
        fprintf(stderr, "cqrsd: %s: truncating the log: %s\n", w->name,
                sqlite3_errstr(rc));
}

/* sqlite3_wal_hook of the writing connection (see the protocol). */
static int on_commit(void *arg, sqlite3 *db, const char *schema, int frames)
{
    cq_wal *w = arg;

    (void)db;
    (void)schema;
    if (frames < CQ_WAL_CHECKPOINT_FRAMES) {
        w->next_truncate = CQ_WAL_LIMIT_FRAMES;
    } else if (frames < w->next_truncate) {
        pthread_mutex_lock(&w->mu);
        w->due = 1;
        pthread_cond_signal(&w->cv);
        pthread_mutex_unlock(&w->mu);
    } else {
        truncate_log(w, frames);
    }
    return SQLITE_OK; /* the commit stands whatever happened here */
}

int cq_wal_start(sqlite3 *writer, int busy_ms, const char *path,
                 const char *thread_name, cq_wal **out, char *err,
                 size_t errcap)
{
    cq_wal *w = calloc(1, sizeof *w);
    size_t n = strlen(path) + sizeof "-wal";
    char sql[64];
    int rc;

    *out = NULL;
    if (w == NULL || (w->wal_path = malloc(n)) == NULL) {
        free(w);
        snprintf(err, errcap, "out of memory");
        return CQ_ENOMEM;
    }
    snprintf(w->wal_path, n, "%s-wal", path);
    snprintf(w->name, sizeof w->name, "%s", thread_name);
    w->writer = writer;
    w->busy_ms = busy_ms;
    w->next_truncate = CQ_WAL_LIMIT_FRAMES;
    pthread_mutex_init(&w->mu, NULL);
    pthread_mutex_init(&w->ckpt_mu, NULL);
    pthread_cond_init(&w->cv, NULL);
    rc = sqlite3_open_v2(path, &w->db,
                         SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL);
    if (rc == SQLITE_OK)
        rc = attach_wal(w->db);
    if (rc != SQLITE_OK) {
        snprintf(err, errcap, "%s: checkpoint connection: %s", path,
                 w->db ? sqlite3_errmsg(w->db) : sqlite3_errstr(rc));
        goto fail;
    }
    snprintf(sql, sizeof sql, "PRAGMA journal_size_limit = %d",
             CQ_WAL_SIZE_LIMIT_BYTES);
    if (sqlite3_exec(writer, sql, NULL, NULL, NULL) != SQLITE_OK) {
        snprintf(err, errcap, "%s: %s", path, sqlite3_errmsg(writer));
        goto fail;
    }
    if (pthread_create(&w->thread, NULL, keeper_main, w) != 0) {
        snprintf(err, errcap, "%s: cannot start the checkpoint thread", path);
        goto fail;
    }
    w->started = 1;
    sqlite3_wal_hook(writer, on_commit, w);
    *out = w;
    return CQ_OK;
fail:
    cq_wal_free(w);
    return CQ_EIO;
}

int cq_wal_start_rdb(struct cq_rdb *writer, int busy_ms, const char *path,
                     const char *thread_name, cq_wal **out, char *err,
                     size_t errcap)
{
    *out = NULL;
    if (strcmp(cq_rdb_backend(writer), cq_rdb_sqlite_ops.name) != 0) {
        snprintf(err, errcap, "%s: write-ahead log checkpoints need SQLite",
                 path);
        return CQ_EINVAL;
    }
    return cq_wal_start(cq_rdb_impl(writer), busy_ms, path, thread_name, out,
                        err, errcap);
}

void cq_wal_free(cq_wal *w)
{
    if (w == NULL)
        return;
    if (w->started) {
        sqlite3_wal_hook(w->writer, NULL, NULL);
        pthread_mutex_lock(&w->mu);
        w->stopping = 1;
        pthread_cond_signal(&w->cv);
        pthread_mutex_unlock(&w->mu);
        pthread_join(w->thread, NULL);
    }
    sqlite3_close(w->db);
    pthread_cond_destroy(&w->cv);
    pthread_mutex_destroy(&w->ckpt_mu);
    pthread_mutex_destroy(&w->mu);
    free(w->wal_path);
    free(w);
}

int64_t cq_wal_bytes(const cq_wal *w)
{
    struct stat st;

    if (w == NULL || stat(w->wal_path, &st) != 0)
        return 0;
    return (int64_t)st.st_size;
}

int64_t cq_wal_truncations(const cq_wal *w)
{
    return w != NULL ? atomic_load(&w->truncations) : 0;
}
