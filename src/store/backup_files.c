/*
 * backup_files.c -- the file helpers of backup and restore (backup_int.h):
 * paths, syncing, hashing, copying, listing.
 */
#include "store/backup_int.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/base.h"
#include "cqrs/cqrs.h"

const char *const cq_bk_dbs[] = {"read.db", "events.db"};

int cq_bk_fail(char *err, size_t cap, int rc, const char *fmt, ...)
{
    va_list ap;

    if (err != NULL && cap > 0) {
        va_start(ap, fmt);
        vsnprintf(err, cap, fmt, ap);
        va_end(ap);
    }
    return rc;
}

int cq_bk_join(char *out, const char *dir, const char *name, char *err,
               size_t cap)
{
    int n = snprintf(out, PATH_MAX, "%s/%s", dir, name);
    if (n < 0 || n >= PATH_MAX)
        return cq_bk_fail(err, cap, CQ_EINVAL, "path too long: %s/%s", dir,
                          name);
    return CQ_OK;
}

int cq_bk_exists(const char *path)
{
    struct stat sb;
    return lstat(path, &sb) == 0;
}

/* fsync a file or directory by path. */
int cq_bk_sync_path(const char *path, char *err, size_t cap)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0 || fsync(fd) != 0) {
        int e = errno;
        if (fd >= 0)
            close(fd);
        return cq_bk_fail(err, cap, CQ_EIO, "cannot sync %s: %s", path,
                          strerror(e));
    }
    close(fd);
    return CQ_OK;
}

/* The directory `path` is in, into out[PATH_MAX] ("." for a bare name). */
void cq_bk_parent_of(const char *path, char *out)
{
    char *slash;

    snprintf(out, PATH_MAX, "%s", path);
    slash = strrchr(out, '/');
    if (slash == NULL)
        snprintf(out, PATH_MAX, ".");
    else if (slash == out)
        out[1] = '\0';
    else
        *slash = '\0';
}

/* Remove dir's regular files (no recursion: a backup has none) and dir. */
void cq_bk_remove_dir(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *de;
    char path[PATH_MAX];

    if (d != NULL) {
        while ((de = readdir(d)) != NULL) {
            if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
                continue;
            if (cq_bk_join(path, dir, de->d_name, NULL, 0) == CQ_OK)
                unlink(path);
        }
        closedir(d);
    }
    rmdir(dir);
}

/* SHA-256 (hex) and size of the file at path, read through mmap. */
int cq_bk_file_sha256(const char *path, char hex[65], int64_t *bytes, char *err,
                      size_t cap)
{
    struct stat sb;
    void *p;
    int fd = open(path, O_RDONLY | O_CLOEXEC);

    if (fd < 0)
        return cq_bk_fail(err, cap, errno == ENOENT ? CQ_ENOTFOUND : CQ_EIO,
                          "cannot read %s: %s", path, strerror(errno));
    if (fstat(fd, &sb) != 0) {
        int e = errno;
        close(fd);
        return cq_bk_fail(err, cap, CQ_EIO, "cannot stat %s: %s", path,
                          strerror(e));
    }
    *bytes = (int64_t)sb.st_size;
    if (sb.st_size == 0) {
        cq_sha256_hex("", 0, hex);
        close(fd);
        return CQ_OK;
    }
    p = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (p == MAP_FAILED)
        return cq_bk_fail(err, cap, CQ_EIO, "cannot map %s: %s", path,
                          strerror(errno));
    cq_sha256_hex(p, (size_t)sb.st_size, hex);
    munmap(p, (size_t)sb.st_size);
    return CQ_OK;
}

/* The first entries of dir (up to 3) into names; 0 when dir is empty or
 * missing, else how many there are. */
int cq_bk_dir_entries(const char *dir, char *names, size_t cap)
{
    DIR *d = opendir(dir);
    struct dirent *de;
    int n = 0;
    size_t len = 0;

    names[0] = '\0';
    if (d == NULL)
        return 0;
    while ((de = readdir(d)) != NULL) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        if (n < 3 && len < cap)
            len += (size_t)snprintf(names + len, cap - len, "%s%s",
                                    n ? ", " : "", de->d_name);
        n++;
    }
    closedir(d);
    return n;
}

/* Copy the file src to the new file dst, fsync it. */
int cq_bk_copy_file(const char *src, const char *dst, char *err, size_t cap)
{
    char buf[1 << 16];
    int in = open(src, O_RDONLY | O_CLOEXEC), out = -1, rc = CQ_OK;
    ssize_t n;

    if (in < 0)
        return cq_bk_fail(err, cap, CQ_EIO, "cannot read %s: %s", src,
                          strerror(errno));
    out = open(dst, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (out < 0) {
        rc = cq_bk_fail(err, cap, CQ_EIO, "cannot create %s: %s", dst,
                        strerror(errno));
        goto done;
    }
    while ((n = read(in, buf, sizeof buf)) != 0) {
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            rc = cq_bk_fail(err, cap, CQ_EIO, "reading %s: %s", src,
                            strerror(errno));
            goto done;
        }
        for (ssize_t off = 0; off < n;) {
            ssize_t w = write(out, buf + off, (size_t)(n - off));
            if (w < 0 && errno == EINTR)
                continue;
            if (w < 0) {
                rc = cq_bk_fail(err, cap, CQ_EIO, "writing %s: %s", dst,
                                strerror(errno));
                goto done;
            }
            off += w;
        }
    }
    if (fsync(out) != 0)
        rc = cq_bk_fail(err, cap, CQ_EIO, "cannot sync %s: %s", dst,
                        strerror(errno));
done:
    if (out >= 0 && close(out) != 0 && rc == CQ_OK)
        rc = cq_bk_fail(err, cap, CQ_EIO, "writing %s: %s", dst,
                        strerror(errno));
    close(in);
    return rc;
}
