/*
 * backup_int.h -- what src/store/backup.c and restore.c share: the
 * databases of a data directory and file helpers (backup_files.c).
 *
 * Every helper that takes err and cap writes a message there on failure
 * (err may be NULL) and returns a CQ_* code; paths are built into buffers
 * of PATH_MAX bytes. No state; any thread.
 */
#ifndef CQ_STORE_BACKUP_INT_H
#define CQ_STORE_BACKUP_INT_H

#include <limits.h>
#include <stddef.h>
#include <stdint.h>

/* The databases of a data directory, in the order a backup copies them
 * (backup.h, "Consistency"). */
extern const char *const cq_bk_dbs[];
enum { CQ_BK_READ, CQ_BK_EVENTS, CQ_BK_NDBS };

/* Format a message into err[cap] (when err is not NULL); returns rc. */
int cq_bk_fail(char *err, size_t cap, int rc, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* dir "/" name into out[PATH_MAX]; CQ_EINVAL if it does not fit. */
int cq_bk_join(char *out, const char *dir, const char *name, char *err,
               size_t cap);

/* 1 if something (anything) is at path. */
int cq_bk_exists(const char *path);

/* fsync the file or directory at path. CQ_OK or CQ_EIO. */
int cq_bk_sync_path(const char *path, char *err, size_t cap);

/* The directory `path` is in, into out[PATH_MAX] ("." for a bare name). */
void cq_bk_parent_of(const char *path, char *out);

/* Remove dir's files (not recursive) and dir itself, as far as it can. */
void cq_bk_remove_dir(const char *dir);

/* SHA-256 (64 hex characters and NUL) and size of the file at path.
 * CQ_OK, CQ_ENOTFOUND (no such file) or CQ_EIO. */
int cq_bk_file_sha256(const char *path, char hex[65], int64_t *bytes, char *err,
                      size_t cap);

/* How many entries dir has (0 when empty or missing); the first three,
 * comma-separated, into names[cap]. */
int cq_bk_dir_entries(const char *dir, char *names, size_t cap);

/* Copy the file src to dst (which must not exist) and fsync it. CQ_OK or
 * CQ_EIO (a partial dst may be left: the caller removes it). */
int cq_bk_copy_file(const char *src, const char *dst, char *err, size_t cap);

#endif
