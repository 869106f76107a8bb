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
 * What a commit costs depends on the -wal file as much as on the log: a
 * commit whose frames go past the end of the file makes it longer, and
 * the fsync of synchronous=FULL then writes the file's inode as well as
 * its data (two device writes where one would do: on ext4 measured at
 * 5-10 times the commit time). So a reset never cuts the file (RESTART,
 * not TRUNCATE), and journal_size_limit keeps it at its bound: once the
 * log has gone round once, commits overwrite blocks the file already has.
 *
 * Protocol, after each commit of the writing connection (hook on_commit,
 * called by SQLite on the writing thread once the write lock is released;
 * `frames` is the number of frames in the log since its last reset):
 *   1. fewer frames than at the last commit: the log was reset (by the
 *      RESTART of step 3, or by SQLite itself); the pacing starts again.
 *   2. frames < CQ_WAL_RESTART_FRAMES: once at CQ_WAL_CHECKPOINT_FRAMES
 *      and then every CQ_WAL_PASS_FRAMES more, wake the checkpoint thread,
 *      which runs a PASSIVE checkpoint on its own connection. It takes no
 *      lock the writer or the readers wait for. Not after every commit:
 *      each pass ends with an fsync of the database, which the device
 *      serves beside the writer's own. A log whose commits are not synced
 *      (the writing connection's synchronous is below FULL: read.db's)
 *      gets a pass every CQ_WAL_UNSYNCED_PASS_FRAMES frames from the
 *      start instead: a pass first syncs the log up to what it copies,
 *      and a pass of 500 frames put 2 MiB on the device at once, which
 *      the next fsync of the other database (events.db's writer, whose
 *      commit a client waits for) then waited behind (see pacing()). Not
 *      much fewer either: each pass also syncs the database and copies
 *      again the pages every commit rewrites (read.db: the checkpoint
 *      rows, sales_dashboard's few rows); at one pass per 100 frames
 *      read.db's passes took ~10 % of the server's CPU at one client,
 *      and one fsync in seven (bench/README.md). So that the pass's
 *      sync of the log still finds little to write, the thread hands
 *      such a log's frames to the device every CQ_WAL_WRITEBACK_FRAMES
 *      between passes (write_back(): sync_file_range's WRITE, which
 *      starts the writes and waits for nothing; it promises nothing
 *      either: what makes the frames durable is still the pass's fsync
 *      of the log, before it copies them).
 *   3. frames >= CQ_WAL_RESTART_FRAMES: reset the log with a RESTART
 *      checkpoint here, on the writing connection, with a busy timeout of
 *      CQ_WAL_RESTART_BUSY_MS -- but only once the checkpoint thread is
 *      idle and its last pass left at most CQ_WAL_RESTART_GAP frames to
 *      copy, so what the writer itself copies and syncs is small; until
 *      then each commit asks the thread for a pass. At CQ_WAL_LIMIT_FRAMES
 *      the writer no longer waits for that: it takes ckpt_mu (waiting for
 *      a pass under way: SQLite would refuse a second checkpointer at
 *      once) and copies what is left. The RESTART waits for readers still
 *      on older snapshots (new readers then read the database file and do
 *      not hold it up). If readers hold on past the timeout, the next
 *      attempt is CQ_WAL_CHECKPOINT_FRAMES frames later, so a stuck reader
 *      costs the writer at most one short wait per that many frames.
   4. a writer that goes idle (cq_wal_idle: the projector, before it
 *      sleeps) gets its reset without step 3's stall: step 3 copies what
 *      the thread has not and syncs the database on the writing thread,
 *      milliseconds in which nothing is committed (read.db: every query
 *      waiting for a position waits for it too). Instead, from
 *      CQ_WAL_RESTART_FRAMES on, each idle moment asks the thread for a
 *      pass (one more after a pass under way, which began before the
 *      last commits). A pass that copies the whole log while the writer
 *      is idle lets SQLite itself start the log anew at the writer's next
 *      transaction (it does when its snapshot found every frame copied
 *      and no reader is on an older one: a try, no waiting, no I/O);
 *      step 1 then sees it. While the writer has been idle within the
 *      last CQ_WAL_CHECKPOINT_FRAMES frames, its commits leave step 3 out
 *      until CQ_WAL_LIMIT_FRAMES, where step 3 resets the log as above; a
 *      writer that stays busy (a catch-up) gets step 3 as before.
 * The hook always answers SQLITE_OK: the commit is done and durable,
 * whatever the checkpoint did.
 *
 * The checkpoint thread's connection reads the schema once when it opens:
 * a connection that has never read the database does not know it is in
 * WAL mode, and SQLite then treats a checkpoint on it as a no-op.
 *
 * Threads and locks: `mu` guards `due`, `running`, `stopping`, `cycle`,
 * the last pass's figures and the write-back asked for (cv wakes the
 * thread); `ckpt_mu` is held for
 * the duration of any checkpoint (thread or writer). `next_pass`,
 * `next_wb`, `next_restart`, `last_frames` and `idle_at` belong to the
 * writing thread (the hook and cq_wal_idle), `wal_fd` and `wb_done` to the
 * checkpoint thread.
 */
#include "store/wal.h"

#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cqrs/cqrs.h"
#include "store/rdb.h"

struct cq_wal {
    sqlite3 *writer; /* borrowed: the database's writing connection */
    int busy_ms;     /* writer's busy timeout, restored after a RESTART */
    sqlite3 *db;     /* the checkpoint thread's own connection */
    char name[16];
    char *wal_path; /* path + "-wal" */
    int frame_bytes; /* a frame: the page and its 24-byte header */

    pthread_t thread;
    int started;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int due;      /* guarded by mu: a PASSIVE checkpoint is wanted */
    int running;  /* guarded by mu: the thread is in a pass */
    int stopping; /* guarded by mu */
    /* guarded by mu: the log's reset count as the writer has seen it, and
     * the last pass the thread finished in that cycle (pass_log < 0: none
     * yet): frames in the log then, and how many were copied back */
    unsigned cycle, pass_cycle;
    int pass_log, pass_ckpt;
    /* guarded by mu: start writing the log back up to frame wb_to of
     * cycle wb_cycle (step 2: an unsynced log between passes) */
    int wb_due, wb_to;
    unsigned wb_cycle;
    pthread_mutex_t ckpt_mu; /* held while any checkpoint runs */

    /* checkpoint thread only: the -wal file, read-only, for the write-back
     * (-1: not open yet or cannot be); frames handed to the device so far
     * in cycle wb_done_cycle */
    int wal_fd;
    int wb_done;
    unsigned wb_done_cycle;

    /* writing thread only */
    int last_frames;  /* frames after the previous commit */
    int next_pass;    /* frames at which to ask the thread for a pass */
    int next_restart; /* frames at which to try a RESTART */
    int first_pass;   /* frames of the first pass of a cycle, then ... */
    int pass_frames;  /* ... every that many more (see pacing()) */
    int wb_frames;    /* write-back every that many frames, 0: none */
    int next_wb;      /* frames at which to ask for the next write-back */
    int idle_at;      /* frames at the writer's last idle moment in this
                         cycle (cq_wal_idle), -1: none */
    _Atomic int64_t restarts;
    _Atomic int64_t passes; /* PASSIVE checkpoints the thread has run */
    _Atomic int64_t writebacks; /* write-backs the kernel accepted */
    int last_error; /* checkpoint thread only: logged once per change */
};

/* Checkpoint thread: start the device writing the log's frames up to
 * `to` in `cycle` that the last write-back of that cycle left (step 2 of
 * the protocol). Asks the kernel to start writing those blocks and does
 * not wait: no device cache flush, no durability promised; the pass's
 * fsync of the log still comes before it copies anything, it just finds
 * little left to write. A failure only means the pass writes more. */
static void write_back(cq_wal *w, unsigned cycle, int to)
{
#if defined(__linux__) && defined(SYNC_FILE_RANGE_WRITE)
    int from = cycle == w->wb_done_cycle ? w->wb_done : 0;

    if (w->wal_fd < 0)
        w->wal_fd = open(w->wal_path, O_RDONLY | O_CLOEXEC);
    if (w->wal_fd < 0 || to <= from)
        return;
    /* frame k (from 0) starts after the 32-byte log header */
    if (sync_file_range(w->wal_fd, 32 + (off_t)from * w->frame_bytes,
                        (off_t)(to - from) * w->frame_bytes,
                        SYNC_FILE_RANGE_WRITE) == 0)
        atomic_fetch_add(&w->writebacks, 1);
    w->wb_done_cycle = cycle;
    w->wb_done = to;
#else
    (void)w;
    (void)cycle;
    (void)to;
#endif
}

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
        unsigned cycle;

        if (!w->due && w->wb_due) {
            int to = w->wb_to;

            w->wb_due = 0;
            cycle = w->wb_cycle;
            pthread_mutex_unlock(&w->mu);
            write_back(w, cycle, to);
            pthread_mutex_lock(&w->mu);
            continue;
        }
        if (!w->due) {
            pthread_cond_wait(&w->cv, &w->mu);
            continue;
        }
        w->due = 0;
        w->wb_due = 0; /* the pass syncs the log: no write-back after it */
        w->running = 1;
        cycle = w->cycle;
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
        atomic_fetch_add(&w->passes, 1);
        /* BUSY: another process checkpoints; the next commit asks again */
        if (rc != SQLITE_OK && rc != SQLITE_BUSY && rc != w->last_error)
            fprintf(stderr, "cqrsd: %s: checkpoint: %s\n", w->name,
                    sqlite3_errmsg(w->db));
        w->last_error = rc == SQLITE_BUSY ? w->last_error : rc;
        pthread_mutex_lock(&w->mu);
        w->running = 0;
        if (rc == SQLITE_OK && log >= 0 && cycle == w->cycle) {
            w->pass_cycle = cycle;
            w->pass_log = log;
            w->pass_ckpt = ckpt;
        }
    }
    pthread_mutex_unlock(&w->mu);
    return NULL;
}

/* Writing thread: the log was reset; pace the next cycle from its start. */
static void new_cycle(cq_wal *w)
{
    pthread_mutex_lock(&w->mu);
    w->cycle++;
    w->pass_log = -1;
    pthread_mutex_unlock(&w->mu);
    w->next_pass = w->first_pass;
    w->next_wb = w->wb_frames;
    w->next_restart = CQ_WAL_RESTART_FRAMES;
    w->idle_at = -1;
}

/* Writing thread: ask for a PASSIVE pass unless one is asked or under way.
 * 1 if the thread is idle and its last pass in this cycle left at most
 * CQ_WAL_RESTART_GAP of the log's `frames` to copy (nothing asked then). */
static int pass_or_small_gap(cq_wal *w, int frames)
{
    int small = 0;

    pthread_mutex_lock(&w->mu);
    if (!w->due && !w->running) {
        small = w->pass_log >= 0 && w->pass_cycle == w->cycle &&
                w->pass_log <= frames &&
                frames - w->pass_ckpt <= CQ_WAL_RESTART_GAP;
        if (!small) {
            w->due = 1;
            pthread_cond_signal(&w->cv);
        }
    }
    pthread_mutex_unlock(&w->mu);
    return small;
}

/* Step 3 of the protocol, on the writing thread. */
static void restart_log(cq_wal *w, int frames)
{
    int rc;

    if (frames < CQ_WAL_LIMIT_FRAMES && !pass_or_small_gap(w, frames))
        return; /* the thread copies first; a later commit tries again */
    pthread_mutex_lock(&w->ckpt_mu);
    sqlite3_busy_timeout(w->writer, CQ_WAL_RESTART_BUSY_MS);
    rc = sqlite3_wal_checkpoint_v2(w->writer, NULL, SQLITE_CHECKPOINT_RESTART,
                                   NULL, NULL);
    sqlite3_busy_timeout(w->writer, w->busy_ms);
    pthread_mutex_unlock(&w->ckpt_mu);
    if (rc == SQLITE_OK) {
        atomic_fetch_add(&w->restarts, 1);
        new_cycle(w);
        w->last_frames = 0;
        return;
    }
    /* readers on old snapshots (BUSY) or an I/O error: try again later */
    w->next_restart = frames + CQ_WAL_CHECKPOINT_FRAMES;
    if (rc != SQLITE_BUSY)
        fprintf(stderr, "cqrsd: %s: resetting the log: %s\n", w->name,
                sqlite3_errstr(rc));
}

/* sqlite3_wal_hook of the writing connection (see the protocol). */
static int on_commit(void *arg, sqlite3 *db, const char *schema, int frames)
{
    cq_wal *w = arg;

    (void)db;
    (void)schema;
    if (frames < w->last_frames)
        new_cycle(w);
    w->last_frames = frames;
    if (frames >= w->next_restart &&
        (w->idle_at < 0 || frames - w->idle_at > CQ_WAL_CHECKPOINT_FRAMES ||
         frames >= CQ_WAL_LIMIT_FRAMES)) {
        restart_log(w, frames);
    } else if (frames >= w->next_pass) {
        pthread_mutex_lock(&w->mu);
        w->due = 1;
        pthread_cond_signal(&w->cv);
        pthread_mutex_unlock(&w->mu);
        w->next_pass = frames + w->pass_frames;
        w->next_wb = frames + w->wb_frames; /* the pass syncs the log */
    } else if (w->wb_frames > 0 && frames >= w->next_wb) {
        pthread_mutex_lock(&w->mu);
        w->wb_due = 1;
        w->wb_to = frames;
        w->wb_cycle = w->cycle;
        pthread_cond_signal(&w->cv);
        pthread_mutex_unlock(&w->mu);
        w->next_wb = frames + w->wb_frames;
    }
    return SQLITE_OK; /* the commit stands whatever happened here */
}

void cq_wal_idle(cq_wal *w)
{
    if (w == NULL)
        return;
    w->idle_at = w->last_frames; /* step 4 of the protocol */
    if (w->last_frames < CQ_WAL_RESTART_FRAMES)
        return;
    pthread_mutex_lock(&w->mu);
    /* a pass under way began before the last commits: one more after it */
    if (!w->due &&
        !(!w->running && w->pass_log >= 0 && w->pass_cycle == w->cycle &&
          w->pass_log == w->last_frames && w->pass_ckpt == w->pass_log)) {
        w->due = 1;
        pthread_cond_signal(&w->cv);
    }
    pthread_mutex_unlock(&w->mu);
}

/* The database's page size (a frame is that and a 24-byte header). */
static int page_size(sqlite3 *db)
{
    sqlite3_stmt *st = NULL;
    int n = 4096;

    if (sqlite3_prepare_v2(db, "PRAGMA page_size", -1, &st, NULL) ==
            SQLITE_OK &&
        sqlite3_step(st) == SQLITE_ROW && sqlite3_column_int(st, 0) > 0)
        n = sqlite3_column_int(st, 0);
    sqlite3_finalize(st);
    return n;
}

/* How often the thread runs a pass (step 2 of the protocol): the first
 * pass and the interval after it, from the writing connection's
 * synchronous setting as it is when cq_wal_start runs. */
static void pacing(cq_wal *w)
{
    sqlite3_stmt *st = NULL;
    int level = 2;

    if (sqlite3_prepare_v2(w->writer, "PRAGMA synchronous", -1, &st, NULL) ==
            SQLITE_OK &&
        sqlite3_step(st) == SQLITE_ROW)
        level = sqlite3_column_int(st, 0);
    sqlite3_finalize(st);
    if (level >= 2) { /* FULL or EXTRA: every commit synced the log */
        w->first_pass = CQ_WAL_CHECKPOINT_FRAMES;
        w->pass_frames = CQ_WAL_PASS_FRAMES;
        w->wb_frames = 0; /* its commits synced it all */
    } else {
        w->first_pass = CQ_WAL_UNSYNCED_PASS_FRAMES;
        w->pass_frames = CQ_WAL_UNSYNCED_PASS_FRAMES;
        w->wb_frames = CQ_WAL_WRITEBACK_FRAMES;
    }
    w->next_pass = w->first_pass;
    w->next_wb = w->wb_frames;
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
    w->next_restart = CQ_WAL_RESTART_FRAMES;
    w->idle_at = -1;
    w->pass_log = -1;
    w->wal_fd = -1;
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
    /* the file keeps the room of CQ_WAL_LIMIT_FRAMES frames (and a
     * commit's worth more) across resets: see the file comment */
    w->frame_bytes = page_size(writer) + 24;
    snprintf(sql, sizeof sql, "PRAGMA journal_size_limit = %lld",
             (long long)(CQ_WAL_LIMIT_FRAMES + CQ_WAL_RESTART_GAP) *
                     w->frame_bytes +
                 32);
    if (sqlite3_exec(writer, sql, NULL, NULL, NULL) != SQLITE_OK) {
        snprintf(err, errcap, "%s: %s", path, sqlite3_errmsg(writer));
        goto fail;
    }
    pacing(w);
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
    if (w->wal_fd >= 0)
        close(w->wal_fd);
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

int64_t cq_wal_restarts(const cq_wal *w)
{
    return w != NULL ? atomic_load(&w->restarts) : 0;
}

int64_t cq_wal_passes(const cq_wal *w)
{
    return w != NULL ? atomic_load(&w->passes) : 0;
}

int64_t cq_wal_writebacks(const cq_wal *w)
{
    return w != NULL ? atomic_load(&w->writebacks) : 0;
}
