/*
 * backup.h -- online backup and restore of an embedded (SQLite) data
 * directory: its event store, events.db, and its read models, read.db
 * (docs/operations.md, "Backup and restore").
 *
 * A backup is a directory holding copies of read.db and events.db made
 * with SQLite's online backup API while a server may be running, and a
 * manifest, cqrsd-backup.json:
 *
 *   {"format": "cqrsd-backup", "version": 1, "created_at": RFC 3339,
 *    "head_position": N,
 *    "files": [{"name": "read.db", "bytes": N, "sha256": HEX},
 *              {"name": "events.db", "bytes": N, "sha256": HEX}],
 *    "checkpoints": [{"projection": NAME, "database": "read.db" or
 *                     "events.db", "position": N, "rebuild": false}, ...]}
 *
 * Consistency. The read models' checkpoints say which events they have
 * applied; restored, a checkpoint ahead of the events would make the
 * projector skip the events written after the restore at those
 * positions, silently. Each copy is one SQLite snapshot (one read
 * transaction over the whole copy), and read.db is copied FIRST: the
 * projector commits a checkpoint only after the events it covers were
 * committed to events.db, so every checkpoint in read.db's snapshot
 * covers events committed before it, which events.db's later snapshot
 * holds. Read models may be behind the events in the backup (the
 * projector catches up after a restore); never ahead. Inline read models
 * live in events.db and are copied in its snapshot, with their events.
 * Both copies are checked for it before the backup is kept.
 *
 * Threads: none of their own; each call runs on the caller's thread and
 * may run beside a server using the same directory (read-only
 * connections on it: the server's writes are not blocked, its WAL grows
 * until the copy's snapshot ends). Nothing is shared between calls.
 */
#ifndef CQ_STORE_BACKUP_H
#define CQ_STORE_BACKUP_H

#include <stddef.h>
#include <stdint.h>

#define CQ_BACKUP_MANIFEST "cqrsd-backup.json"

/* What a backup holds (filled by every call below, also on failure as far
 * as known; zeroed first). */
typedef struct cq_backup_info {
    int64_t head;           /* events.db's last position (0: no events) */
    int64_t events_bytes;   /* size of the copy of events.db */
    int64_t read_bytes;     /* size of the copy of read.db; -1: there was no
                               read.db to copy (the read models are built
                               again from the events after a restore) */
    int64_t max_checkpoint; /* highest checkpoint of a read model, any
                               database (<= head) */
    int checkpoints;        /* checkpoint rows, rebuilds' included */
    char created_at[32];    /* RFC 3339 UTC */
} cq_backup_info;

/* Back up the data directory `data` (borrowed) into the new directory
 * `to` (borrowed; must not exist; its parent must): read.db (when there
 * is one), then events.db, each copied in one snapshot, then checked
 * (SQLite's quick_check, every checkpoint <= the copied head), then the
 * manifest, everything fsynced and the directory renamed into place, so
 * `to` either is a complete backup or does not exist.
 *
 * Returns CQ_OK and fills *info; otherwise a message in err[errcap] and
 * nothing left at `to`: CQ_EINVAL (`to` exists), CQ_ENOTFOUND (no
 * events.db in `data`), CQ_ECORRUPT (a copy failed its checks),
 * CQ_EIO (reading, writing or syncing failed; SQLite kept the source
 * busy for more than a minute), CQ_ENOMEM. */
int cq_backup(const char *data, const char *to, cq_backup_info *info, char *err,
              size_t errcap);

/* Check the backup in directory `from` (borrowed) without changing it:
 * the manifest is readable and of this format, each file it names is
 * there with its size and SHA-256, SQLite's integrity_check passes on
 * each, events.db's head is the manifest's, and no checkpoint in either
 * file is ahead of it. CQ_OK and *info, or CQ_ENOTFOUND (no manifest or
 * a file missing), CQ_ECORRUPT (any other check), CQ_EIO, CQ_ENOMEM with
 * a message. */
int cq_backup_check(const char *from, cq_backup_info *info, char *err,
                    size_t errcap);

/* Restore the backup in `from` into the data directory `data` (both
 * borrowed). First cq_backup_check(from): nothing is touched unless it
 * passes. `data` is created if missing; if it holds anything, it is
 * refused unless `force`, and then only if no process has its databases
 * open (a running server). The files are copied in beside the old ones
 * (their SHA-256 checked again), then the old databases and their
 * -wal/-shm/-journal files are removed -- read.db first -- and the
 * copies renamed into place, events.db before read.db, with the
 * directory synced between: a restore cut short leaves either the old
 * events.db, or the new one, and at most a read.db consistent with it
 * (none: the read models are rebuilt from the events); run it again to
 * finish it. Files other than the databases are left as they are.
 *
 * CQ_OK and *info; otherwise a message and: CQ_ENOTFOUND / CQ_ECORRUPT
 * (the backup: nothing touched), CQ_EEXIST (`data` is not empty and not
 * `force`: nothing touched), CQ_EBUSY (a process has the databases in
 * `data` open: nothing touched), CQ_EIO, CQ_ENOMEM. */
int cq_restore(const char *from, const char *data, int force,
               cq_backup_info *info, char *err, size_t errcap);

#endif
