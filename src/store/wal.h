/*
 * wal.h -- keeping a SQLite database's write-ahead log bounded.
 *
 * Both databases of the server (events.db, written by the writer thread,
 * and read.db, written by the projector thread) are in WAL mode with one
 * writing connection each. A cq_wal takes over the checkpoints of one of
 * them (protocol in wal.c and src/store/README.md):
 *
 *   - after a commit that leaves CQ_WAL_CHECKPOINT_FRAMES frames in the
 *     log, and then every CQ_WAL_PASS_FRAMES more, a thread of its own
 *     copies them into the database with a PASSIVE checkpoint, on its own
 *     connection (the database fsync stays off the writing thread;
 *     readers and the writer never wait); when the writing connection's
 *     synchronous is below FULL (its commits do not sync the log, as
 *     read.db's), every CQ_WAL_UNSYNCED_PASS_FRAMES frames from the start
 *     instead, and between passes the thread has the kernel start
 *     writing the log's new frames every CQ_WAL_WRITEBACK_FRAMES (no
 *     wait, no flush: cq_wal_writebacks), so each pass's sync of the log
 *     finds little left to write;
 *   - from CQ_WAL_RESTART_FRAMES frames on (under continuous writes SQLite
 *     rarely resets the log by itself), the writing thread resets it with
 *     a RESTART checkpoint right after a commit, once the thread's last
 *     pass has left at most CQ_WAL_RESTART_GAP frames to copy; at
 *     CQ_WAL_LIMIT_FRAMES it does without that. It waits at most
 *     CQ_WAL_RESTART_BUSY_MS for readers of older snapshots; if they hold
 *     on, it tries again after another CQ_WAL_CHECKPOINT_FRAMES frames;
 *   - a writer that goes idle (cq_wal_idle) gets its reset without that
 *     stall: the thread's passes at its idle moments let SQLite start the
 *     log anew at its next transaction; only at CQ_WAL_LIMIT_FRAMES does
 *     it reset the log itself;
 *   - the -wal file is never cut shorter than CQ_WAL_LIMIT_FRAMES frames
 *     (journal_size_limit): after a reset, commits overwrite blocks the
 *     file has, and an fsync writes no inode with them.
 *
 * So the -wal file stays at about CQ_WAL_LIMIT_FRAMES frames (16 MiB
 * with 4 KiB pages) under any load, unless one read transaction stays
 * open for longer than the log takes to grow by that much (it is cut back
 * to that size after the reset that follows).
 */
#ifndef CQ_STORE_WAL_H
#define CQ_STORE_WAL_H

#include <sqlite3.h>
#include <stddef.h>
#include <stdint.h>

#define CQ_WAL_CHECKPOINT_FRAMES 1000 /* as SQLite's own autocheckpoint */
#define CQ_WAL_PASS_FRAMES 500
#define CQ_WAL_UNSYNCED_PASS_FRAMES 300 /* synchronous below FULL */
#define CQ_WAL_WRITEBACK_FRAMES 100     /* the same, between passes */
#define CQ_WAL_RESTART_FRAMES 3000
#define CQ_WAL_RESTART_GAP 256
#define CQ_WAL_LIMIT_FRAMES 4000
#define CQ_WAL_RESTART_BUSY_MS 50

typedef struct cq_wal cq_wal;

/* Take over the checkpoints of the database at `path` (a WAL database),
 * whose only writing connection is `writer`: installs a wal hook on it
 * (which turns SQLite's automatic checkpoints off), sets its
 * journal_size_limit, opens a connection of its own and starts a thread
 * named `thread_name` (at most 15 bytes). `writer` is borrowed and must
 * stay open until cq_wal_free; `busy_ms` is its busy timeout, restored
 * after each RESTART attempt. Call while `writer` is idle. CQ_OK, or
 * CQ_EIO / CQ_ENOMEM with a message in err; *out is NULL then. */
int cq_wal_start(sqlite3 *writer, int busy_ms, const char *path,
                 const char *thread_name, cq_wal **out, char *err,
                 size_t errcap);

/* The writing thread has nothing to write for now (it is about to
 * sleep). Once the log is due for a reset (CQ_WAL_RESTART_FRAMES), asks
 * the thread for a pass unless one runs or the last one copied the whole
 * log: a pass that copies it all while the writer is idle lets the
 * writer's next transaction start the log anew by itself (SQLite does
 * when every frame is in the database and no reader is on an older
 * snapshot), with no copying and no fsync on the writing thread. From
 * then until CQ_WAL_LIMIT_FRAMES, its commits no longer reset the log
 * themselves. Writing thread only, without a transaction open; accepts
 * NULL. */
void cq_wal_idle(cq_wal *w);

/* cq_wal_start on a connection of the read-store interface (store/rdb.h)
 * whose backend is SQLite, as the projection engine holds read.db's:
 * `writer` is borrowed as above. CQ_EINVAL (with a message) for another
 * backend; otherwise as cq_wal_start. */
struct cq_rdb;
int cq_wal_start_rdb(struct cq_rdb *writer, int busy_ms, const char *path,
                     const char *thread_name, cq_wal **out, char *err,
                     size_t errcap);

/* Stop the thread, remove the hook from the writing connection and free.
 * Call while the writing connection is idle and before it is closed.
 * Accepts NULL. */
void cq_wal_free(cq_wal *w);

/* Size of the -wal file in bytes (0 when there is none). Any thread. */
int64_t cq_wal_bytes(const cq_wal *w);

/* How many RESTART checkpoints of the writing thread have reset the log
 * so far (SQLite's own resets are not counted). Any thread. */
int64_t cq_wal_restarts(const cq_wal *w);

/* How many PASSIVE checkpoints the thread has run so far. Any thread. */
int64_t cq_wal_passes(const cq_wal *w);

/* How many times the thread has had the kernel start writing an unsynced
 * log's frames to the device between passes (0 for a synced log, or
 * where the system has no sync_file_range). Any thread. */
int64_t cq_wal_writebacks(const cq_wal *w);

#endif
