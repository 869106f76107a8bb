/*
 * restore.c -- restoring a backup into a data directory (backup.h,
 * cq_restore): the backup checked first, the directory's state checked,
 * the copies made beside the old files and swapped in, in an order that
 * a crash cannot turn into read models ahead of their events.
 */
#include "store/backup.h"

#include <errno.h>
#include <sqlite3.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cqrs/cqrs.h"
#include "store/backup_int.h"

/* CQ_EBUSY if a process holds the database at path open (a server: its
 * connections keep a shared lock on a WAL database while open), else
 * CQ_OK (also when there is no such file, or it is not a database). */
static int not_in_use(const char *path, char *err, size_t cap)
{
    sqlite3 *db = NULL;
    int rc, out = CQ_OK;

    if (!cq_bk_exists(path))
        return CQ_OK;
    rc = sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE, NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_exec(db,
                          "PRAGMA locking_mode = EXCLUSIVE;"
                          " BEGIN EXCLUSIVE; ROLLBACK",
                          NULL, NULL, NULL);
    if (rc == SQLITE_BUSY || rc == SQLITE_LOCKED)
        out = cq_bk_fail(err, cap, CQ_EBUSY,
                         "%s is in use (is a server running on it?): stop it "
                         "first",
                         path);
    sqlite3_close(db);
    return out;
}

/* Remove db and its -wal, -shm and -journal files from dir. */
static int remove_db(const char *dir, const char *db, char *err, size_t cap)
{
    static const char *const sfx[] = {"-wal", "-shm", "-journal", ""};
    char name[64], path[PATH_MAX];

    for (size_t i = 0; i < sizeof sfx / sizeof sfx[0]; i++) {
        int rc;
        snprintf(name, sizeof name, "%s%s", db, sfx[i]);
        rc = cq_bk_join(path, dir, name, err, cap);
        if (rc != CQ_OK)
            return rc;
        if (unlink(path) != 0 && errno != ENOENT)
            return cq_bk_fail(err, cap, CQ_EIO, "cannot remove %s: %s", path,
                              strerror(errno));
    }
    return CQ_OK;
}

/* Rename the copy tmp to database i of dir and sync dir; *copied = 0 once
 * the copy is no longer there to be removed. */
static int rename_in(const char *tmp, const char *dir, int i, int *copied,
                     char *err, size_t cap)
{
    char dst[PATH_MAX];
    int rc = cq_bk_join(dst, dir, cq_bk_dbs[i], err, cap);

    if (rc == CQ_OK && rename(tmp, dst) != 0)
        rc = cq_bk_fail(err, cap, CQ_EIO, "cannot rename %s to %s: %s", tmp,
                        dst, strerror(errno));
    if (rc != CQ_OK)
        return rc;
    *copied = 0;
    return cq_bk_sync_path(dir, err, cap);
}

int cq_restore(const char *from, const char *data, int force,
               cq_backup_info *info, char *err, size_t errcap)
{
    static const char *const tmpname[CQ_BK_NDBS] = {".restore-read.db",
                                                    ".restore-events.db"};
    char src[PATH_MAX], tmp[CQ_BK_NDBS][PATH_MAX], dst[PATH_MAX], names[200];
    char hex[65], want[65];
    int copied[CQ_BK_NDBS] = {0, 0}, has_read, n, rc;

    rc = cq_backup_check(from, info, err, errcap);
    if (rc != CQ_OK)
        return rc;
    has_read = info->read_bytes >= 0;
    if (mkdir(data, 0755) != 0 && errno != EEXIST)
        return cq_bk_fail(err, errcap, CQ_EIO, "cannot create %s: %s", data,
                          strerror(errno));
    n = cq_bk_dir_entries(data, names, sizeof names);
    if (n > 0 && !force)
        return cq_bk_fail(
            err, errcap, CQ_EEXIST,
            "%s is not empty (%s%s); --force replaces its databases", data,
            names, n > 3 ? ", ..." : "");
    for (int i = 0; i < CQ_BK_NDBS; i++) {
        rc = cq_bk_join(dst, data, cq_bk_dbs[i], err, errcap);
        if (rc == CQ_OK)
            rc = not_in_use(dst, err, errcap);
        if (rc != CQ_OK)
            return rc;
    }
    /* the copies, beside the old files; checked once more on the disk */
    for (int i = has_read ? CQ_BK_READ : CQ_BK_EVENTS; i < CQ_BK_NDBS; i++) {
        int64_t bytes;
        rc = cq_bk_join(src, from, cq_bk_dbs[i], err, errcap);
        if (rc == CQ_OK)
            rc = cq_bk_join(tmp[i], data, tmpname[i], err, errcap);
        if (rc != CQ_OK)
            goto fail;
        unlink(tmp[i]); /* left by an earlier restore cut short */
        rc = cq_bk_copy_file(src, tmp[i], err, errcap);
        copied[i] = 1;
        if (rc == CQ_OK)
            rc = cq_bk_file_sha256(tmp[i], hex, &bytes, err, errcap);
        if (rc != CQ_OK)
            goto fail;
        rc = cq_bk_file_sha256(src, want, &bytes, err, errcap);
        if (rc != CQ_OK)
            goto fail;
        if (strcmp(hex, want) != 0) {
            rc = cq_bk_fail(err, errcap, CQ_EIO,
                            "the copy %s differs from %s/%s", tmp[i], from,
                            cq_bk_dbs[i]);
            goto fail;
        }
    }
    rc = cq_bk_sync_path(data, err, errcap);
    if (rc != CQ_OK)
        goto fail;
    /* the old read models first: without them, the old or the new events
     * are consistent (read.db is built again) */
    rc = remove_db(data, cq_bk_dbs[CQ_BK_READ], err, errcap);
    if (rc == CQ_OK)
        rc = cq_bk_sync_path(data, err, errcap);
    /* the old log before the new file: SQLite would replay it into it */
    if (rc == CQ_OK) {
        static const char *const sfx[] = {"-wal", "-shm", "-journal"};
        for (size_t k = 0; rc == CQ_OK && k < 3; k++) {
            char name[64];
            snprintf(name, sizeof name, "%s%s", cq_bk_dbs[CQ_BK_EVENTS],
                     sfx[k]);
            rc = cq_bk_join(dst, data, name, err, errcap);
            if (rc == CQ_OK && unlink(dst) != 0 && errno != ENOENT)
                rc = cq_bk_fail(err, errcap, CQ_EIO, "cannot remove %s: %s",
                                dst, strerror(errno));
        }
    }
    if (rc == CQ_OK)
        rc = cq_bk_sync_path(data, err, errcap);
    /* events.db, then read.db: never read models without their events */
    if (rc == CQ_OK)
        rc = rename_in(tmp[CQ_BK_EVENTS], data, CQ_BK_EVENTS,
                       &copied[CQ_BK_EVENTS], err, errcap);
    if (rc == CQ_OK && copied[CQ_BK_READ])
        rc = rename_in(tmp[CQ_BK_READ], data, CQ_BK_READ, &copied[CQ_BK_READ],
                       err, errcap);
    if (rc == CQ_OK)
        return CQ_OK;
fail:
    for (int i = 0; i < CQ_BK_NDBS; i++)
        if (copied[i])
            unlink(tmp[i]);
    return rc;
}
