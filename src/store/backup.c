/*
 * backup.c -- online backup and restore of an embedded data directory
 * (see backup.h: the manifest, and why read.db is copied first).
 *
 * Layout of a call: paths are built into fixed buffers (PATH_MAX), every
 * SQLite connection is opened and closed inside the function that uses
 * it, and every failure goes to one cleanup label that removes what the
 * call made (the partial backup directory; the restore's copies) and
 * leaves the message in err.
 */
#include "store/backup.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "base/base.h"
#include "cqrs/cqrs.h"

#define FORMAT "cqrsd-backup"
#define FORMAT_VERSION 1
#define BUSY_RETRY_MS 50
#define BUSY_RETRIES 1200 /* a minute of a source kept busy */

/* The databases of a data directory, in the order a backup copies them. */
static const char *const DBS[] = {"read.db", "events.db"};
enum { DB_READ, DB_EVENTS, NDBS };

static int fail(char *err, size_t cap, int rc, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int fail(char *err, size_t cap, int rc, const char *fmt, ...)
{
    va_list ap;

    if (err != NULL && cap > 0) {
        va_start(ap, fmt);
        vsnprintf(err, cap, fmt, ap);
        va_end(ap);
    }
    return rc;
}

/* dir "/" name into out[PATH_MAX]; CQ_EINVAL if it does not fit. */
static int join(char *out, const char *dir, const char *name, char *err,
                size_t cap)
{
    int n = snprintf(out, PATH_MAX, "%s/%s", dir, name);
    if (n < 0 || n >= PATH_MAX)
        return fail(err, cap, CQ_EINVAL, "path too long: %s/%s", dir, name);
    return CQ_OK;
}

static int exists(const char *path)
{
    struct stat sb;
    return lstat(path, &sb) == 0;
}

/* fsync a file or directory by path. */
static int sync_path(const char *path, char *err, size_t cap)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0 || fsync(fd) != 0) {
        int e = errno;
        if (fd >= 0)
            close(fd);
        return fail(err, cap, CQ_EIO, "cannot sync %s: %s", path, strerror(e));
    }
    close(fd);
    return CQ_OK;
}

/* The directory `path` is in, into out[PATH_MAX] ("." for a bare name). */
static void parent_of(const char *path, char *out)
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
static void remove_dir(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *de;
    char path[PATH_MAX];

    if (d != NULL) {
        while ((de = readdir(d)) != NULL) {
            if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
                continue;
            if (join(path, dir, de->d_name, NULL, 0) == CQ_OK)
                unlink(path);
        }
        closedir(d);
    }
    rmdir(dir);
}

/* SHA-256 (hex) and size of the file at path, read through mmap. */
static int file_sha256(const char *path, char hex[65], int64_t *bytes,
                       char *err, size_t cap)
{
    struct stat sb;
    void *p;
    int fd = open(path, O_RDONLY | O_CLOEXEC);

    if (fd < 0)
        return fail(err, cap, errno == ENOENT ? CQ_ENOTFOUND : CQ_EIO,
                    "cannot read %s: %s", path, strerror(errno));
    if (fstat(fd, &sb) != 0) {
        int e = errno;
        close(fd);
        return fail(err, cap, CQ_EIO, "cannot stat %s: %s", path,
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
        return fail(err, cap, CQ_EIO, "cannot map %s: %s", path,
                    strerror(errno));
    cq_sha256_hex(p, (size_t)sb.st_size, hex);
    munmap(p, (size_t)sb.st_size);
    return CQ_OK;
}

/* ---- SQLite ------------------------------------------------------------ */

/* Open path read-only as an immutable file (a backup's copies: no locks,
 * no -wal or -shm made beside them). */
static int open_immutable(const char *path, sqlite3 **db, char *err,
                          size_t cap)
{
    char uri[PATH_MAX * 3 + 32];
    size_t n = (size_t)snprintf(uri, sizeof uri, "file:");
    int rc;

    /* a URI: %, ? and # in the path are escaped */
    for (const char *c = path; *c && n + 4 < sizeof uri; c++) {
        if (*c == '%' || *c == '?' || *c == '#')
            n += (size_t)snprintf(uri + n, sizeof uri - n, "%%%02X",
                                  (unsigned char)*c);
        else
            uri[n++] = *c;
    }
    uri[n] = '\0';
    if (n + 32 >= sizeof uri)
        return fail(err, cap, CQ_EINVAL, "path too long: %s", path);
    strcat(uri, "?mode=ro&immutable=1");
    rc = sqlite3_open_v2(uri, db, SQLITE_OPEN_READONLY | SQLITE_OPEN_URI,
                         NULL);
    if (rc != SQLITE_OK) {
        rc = fail(err, cap, rc == SQLITE_NOMEM ? CQ_ENOMEM : CQ_EIO,
                  "cannot open %s: %s", path,
                  *db ? sqlite3_errmsg(*db) : sqlite3_errstr(rc));
        sqlite3_close(*db);
        *db = NULL;
        return rc;
    }
    return CQ_OK;
}

/* Copy the database at src into the new file dst in one snapshot of src
 * (sqlite3_backup_step(-1): one read transaction over all of it). */
static int copy_db(const char *src, const char *dst, char *err, size_t cap)
{
    sqlite3 *from = NULL, *to = NULL;
    sqlite3_backup *b = NULL;
    int rc, tries = 0, out = CQ_OK;

    rc = sqlite3_open_v2(src, &from, SQLITE_OPEN_READONLY, NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_open_v2(dst, &to,
                             SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE |
                                 SQLITE_OPEN_EXCLUSIVE,
                             NULL);
    if (rc != SQLITE_OK) {
        out = fail(err, cap, CQ_EIO, "cannot open %s: %s",
                   to == NULL ? src : dst,
                   sqlite3_errmsg(to == NULL ? from : to));
        goto done;
    }
    sqlite3_busy_timeout(from, 10000);
    b = sqlite3_backup_init(to, "main", from, "main");
    if (b == NULL) {
        out = fail(err, cap, CQ_EIO, "cannot copy %s: %s", src,
                   sqlite3_errmsg(to));
        goto done;
    }
    for (;;) {
        rc = sqlite3_backup_step(b, -1);
        if (rc == SQLITE_DONE)
            break;
        if ((rc == SQLITE_BUSY || rc == SQLITE_LOCKED) &&
            ++tries < BUSY_RETRIES) {
            struct timespec ts = {0, BUSY_RETRY_MS * 1000000L};
            nanosleep(&ts, NULL);
            continue;
        }
        out = fail(err, cap, rc == SQLITE_NOMEM ? CQ_ENOMEM : CQ_EIO,
                   "copying %s: %s", src, sqlite3_errstr(rc));
        goto done;
    }
done:
    if (b != NULL && sqlite3_backup_finish(b) != SQLITE_OK && out == CQ_OK)
        out = fail(err, cap, CQ_EIO, "copying %s: %s", src,
                   sqlite3_errmsg(to));
    if (sqlite3_close(to) != SQLITE_OK && out == CQ_OK)
        out = fail(err, cap, CQ_EIO, "closing %s", dst);
    sqlite3_close(from);
    return out;
}

/* 1 if db has a table of that name. */
static int has_table(sqlite3 *db, const char *name)
{
    sqlite3_stmt *st = NULL;
    int yes = 0;

    if (sqlite3_prepare_v2(db,
                           "SELECT 1 FROM sqlite_schema WHERE type = 'table'"
                           " AND name = ?1",
                           -1, &st, NULL) == SQLITE_OK &&
        sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC) == SQLITE_OK)
        yes = sqlite3_step(st) == SQLITE_ROW;
    sqlite3_finalize(st);
    return yes;
}

/* PRAGMA integrity_check (full) or quick_check: its only row is "ok". */
static int check_integrity(sqlite3 *db, const char *path, int full, char *err,
                           size_t cap)
{
    sqlite3_stmt *st = NULL;
    const char *sql =
        full ? "PRAGMA integrity_check(1)" : "PRAGMA quick_check(1)";
    int rc = sqlite3_prepare_v2(db, sql, -1, &st, NULL), out = CQ_OK;

    if (rc == SQLITE_OK)
        rc = sqlite3_step(st);
    if (rc != SQLITE_ROW)
        out = fail(err, cap, CQ_ECORRUPT, "%s is not a database SQLite can "
                   "check: %s", path, sqlite3_errmsg(db));
    else if (sqlite3_column_type(st, 0) != SQLITE_TEXT ||
             strcmp((const char *)sqlite3_column_text(st, 0), "ok") != 0)
        out = fail(err, cap, CQ_ECORRUPT, "%s is damaged: %s", path,
                   sqlite3_column_type(st, 0) == SQLITE_TEXT
                       ? (const char *)sqlite3_column_text(st, 0)
                       : "(no answer)");
    sqlite3_finalize(st);
    return out;
}

/* events.db's last position into *head. */
static int read_head(sqlite3 *db, const char *path, int64_t *head, char *err,
                     size_t cap)
{
    sqlite3_stmt *st = NULL;
    int rc, out = CQ_OK;

    rc = sqlite3_prepare_v2(db, "SELECT max(position) FROM events", -1, &st,
                            NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_step(st);
    if (rc != SQLITE_ROW)
        out = fail(err, cap, CQ_ECORRUPT, "%s holds no event store: %s",
                   path, sqlite3_errmsg(db));
    else if (sqlite3_column_type(st, 0) == SQLITE_NULL)
        *head = 0;
    else if (sqlite3_column_type(st, 0) == SQLITE_INTEGER &&
             sqlite3_column_int64(st, 0) > 0)
        *head = sqlite3_column_int64(st, 0);
    else
        out = fail(err, cap, CQ_ECORRUPT,
                   "%s: the highest position is not a positive integer",
                   path);
    sqlite3_finalize(st);
    return out;
}

/* Append the checkpoints of `table` (cq_projections, or the rebuilds'
 * cq_rebuilds) in db to list, each checked against head. */
static int read_checkpoints(sqlite3 *db, const char *dbname, const char *table,
                            int64_t head, json_t *list, cq_backup_info *info,
                            char *err, size_t cap)
{
    char sql[96];
    sqlite3_stmt *st = NULL;
    int rc, out = CQ_OK, rebuild = strcmp(table, "cq_rebuilds") == 0;

    if (!has_table(db, table))
        return CQ_OK;
    snprintf(sql, sizeof sql, "SELECT name, position FROM %s ORDER BY name",
             table);
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK)
        return fail(err, cap, CQ_ECORRUPT, "%s: %s: %s", dbname, table,
                    sqlite3_errmsg(db));
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        const char *name = (const char *)sqlite3_column_text(st, 0);
        int64_t pos = sqlite3_column_int64(st, 1);
        json_t *cp;

        if (name == NULL || sqlite3_column_type(st, 1) != SQLITE_INTEGER ||
            pos < 0) {
            out = fail(err, cap, CQ_ECORRUPT,
                       "%s: a row of %s has no name or position", dbname,
                       table);
            break;
        }
        if (pos > head) {
            out = fail(err, cap, CQ_ECORRUPT,
                       "%s is ahead of events.db: %s of projection %s is "
                       "at position %lld, the events end at %lld",
                       dbname, rebuild ? "the rebuild" : "the checkpoint",
                       name, (long long)pos, (long long)head);
            break;
        }
        cp = json_pack("{s:s,s:s,s:I,s:b}", "projection", name, "database",
                       dbname, "position", (json_int_t)pos, "rebuild",
                       rebuild);
        if (cp == NULL || json_array_append_new(list, cp) != 0) {
            out = fail(err, cap, CQ_ENOMEM, "out of memory");
            break;
        }
        if (pos > info->max_checkpoint)
            info->max_checkpoint = pos;
        info->checkpoints++;
    }
    if (out == CQ_OK && rc != SQLITE_DONE)
        out = fail(err, cap, CQ_ECORRUPT, "%s: reading %s: %s", dbname,
                   table, sqlite3_errmsg(db));
    sqlite3_finalize(st);
    return out;
}

/* Check the copies in dir (read.db optional): SQLite's check, the head,
 * every checkpoint <= the head. Fills info->head, ->max_checkpoint,
 * ->checkpoints and, when list is not NULL, the manifest's checkpoints. */
static int check_copies(const char *dir, int has_read, int full,
                        cq_backup_info *info, json_t *list, char *err,
                        size_t cap)
{
    char path[PATH_MAX];
    sqlite3 *db = NULL;
    json_t *own = list ? NULL : json_array();
    int rc;

    if (list == NULL && own == NULL)
        return fail(err, cap, CQ_ENOMEM, "out of memory");
    list = list ? list : own;
    rc = join(path, dir, DBS[DB_EVENTS], err, cap);
    if (rc == CQ_OK)
        rc = open_immutable(path, &db, err, cap);
    if (rc == CQ_OK)
        rc = check_integrity(db, path, full, err, cap);
    if (rc == CQ_OK)
        rc = read_head(db, path, &info->head, err, cap);
    if (rc == CQ_OK)
        rc = read_checkpoints(db, DBS[DB_EVENTS], "cq_projections",
                              info->head, list, info, err, cap);
    sqlite3_close(db);
    db = NULL;
    if (rc == CQ_OK && has_read) {
        rc = join(path, dir, DBS[DB_READ], err, cap);
        if (rc == CQ_OK)
            rc = open_immutable(path, &db, err, cap);
        if (rc == CQ_OK)
            rc = check_integrity(db, path, full, err, cap);
        if (rc == CQ_OK)
            rc = read_checkpoints(db, DBS[DB_READ], "cq_projections",
                                  info->head, list, info, err, cap);
        if (rc == CQ_OK)
            rc = read_checkpoints(db, DBS[DB_READ], "cq_rebuilds", info->head,
                                  list, info, err, cap);
        sqlite3_close(db);
    }
    json_decref(own);
    return rc;
}

/* ---- backup ------------------------------------------------------------ */

static int write_manifest(const char *dir, const cq_backup_info *info,
                          json_t *files, json_t *checkpoints, char *err,
                          size_t cap)
{
    char path[PATH_MAX];
    json_t *doc;
    int rc = join(path, dir, CQ_BACKUP_MANIFEST, err, cap);

    if (rc != CQ_OK)
        return rc;
    doc = json_pack("{s:s,s:i,s:s,s:I,s:O,s:O}", "format", FORMAT, "version",
                    FORMAT_VERSION, "created_at", info->created_at,
                    "head_position", (json_int_t)info->head, "files", files,
                    "checkpoints", checkpoints);
    if (doc == NULL)
        return fail(err, cap, CQ_ENOMEM, "out of memory");
    if (json_dump_file(doc, path, JSON_INDENT(2) | JSON_SORT_KEYS) != 0)
        rc = fail(err, cap, CQ_EIO, "cannot write %s: %s", path,
                  strerror(errno));
    json_decref(doc);
    if (rc == CQ_OK)
        rc = sync_path(path, err, cap);
    return rc;
}

int cq_backup(const char *data, const char *to, cq_backup_info *info,
              char *err, size_t errcap)
{
    char tmp[PATH_MAX], src[PATH_MAX], dst[PATH_MAX], parent[PATH_MAX];
    char hex[65];
    json_t *files = json_array(), *cps = json_array();
    int has_read, made = 0, rc;

    memset(info, 0, sizeof *info);
    info->read_bytes = -1;
    if (files == NULL || cps == NULL) {
        rc = fail(err, errcap, CQ_ENOMEM, "out of memory");
        goto done;
    }
    if (exists(to)) {
        rc = fail(err, errcap, CQ_EINVAL,
                  "%s exists: a backup goes into a new directory", to);
        goto done;
    }
    rc = join(src, data, DBS[DB_EVENTS], err, errcap);
    if (rc == CQ_OK && !exists(src))
        rc = fail(err, errcap, CQ_ENOTFOUND, "there is no %s in %s",
                  DBS[DB_EVENTS], data);
    if (rc == CQ_OK &&
        snprintf(tmp, sizeof tmp, "%s.partial-XXXXXX", to) >= (int)sizeof tmp)
        rc = fail(err, errcap, CQ_EINVAL, "path too long: %s", to);
    if (rc != CQ_OK)
        goto done;
    if (mkdtemp(tmp) == NULL) {
        rc = fail(err, errcap, CQ_EIO, "cannot create %s: %s", tmp,
                  strerror(errno));
        goto done;
    }
    made = 1;
    cq_format_time(cq_now_ms(), info->created_at);
    /* read.db first: see backup.h, "Consistency" */
    rc = join(src, data, DBS[DB_READ], err, errcap);
    if (rc != CQ_OK)
        goto done;
    has_read = exists(src);
    for (int i = has_read ? DB_READ : DB_EVENTS; i < NDBS; i++) {
        int64_t bytes;
        json_t *f;

        rc = join(src, data, DBS[i], err, errcap);
        if (rc == CQ_OK)
            rc = join(dst, tmp, DBS[i], err, errcap);
        if (rc == CQ_OK)
            rc = copy_db(src, dst, err, errcap);
        if (rc == CQ_OK)
            rc = sync_path(dst, err, errcap);
        if (rc == CQ_OK)
            rc = file_sha256(dst, hex, &bytes, err, errcap);
        if (rc != CQ_OK)
            goto done;
        if (i == DB_READ)
            info->read_bytes = bytes;
        else
            info->events_bytes = bytes;
        f = json_pack("{s:s,s:I,s:s}", "name", DBS[i], "bytes",
                      (json_int_t)bytes, "sha256", hex);
        if (f == NULL || json_array_append_new(files, f) != 0) {
            rc = fail(err, errcap, CQ_ENOMEM, "out of memory");
            goto done;
        }
    }
    rc = check_copies(tmp, has_read, 0, info, cps, err, errcap);
    if (rc == CQ_OK)
        rc = write_manifest(tmp, info, files, cps, err, errcap);
    if (rc == CQ_OK)
        rc = sync_path(tmp, err, errcap);
    if (rc == CQ_OK && rename(tmp, to) != 0)
        rc = fail(err, errcap, errno == EEXIST || errno == ENOTEMPTY
                                   ? CQ_EINVAL
                                   : CQ_EIO,
                  "cannot rename %s to %s: %s", tmp, to, strerror(errno));
    if (rc == CQ_OK) {
        made = 0;
        parent_of(to, parent);
        rc = sync_path(parent, err, errcap);
    }
done:
    if (made)
        remove_dir(tmp);
    json_decref(files);
    json_decref(cps);
    return rc;
}

/* ---- check ------------------------------------------------------------- */

/* The manifest's entry for file `name`: its bytes and sha256 (borrowed
 * from doc), or not listed. */
static int manifest_file(json_t *doc, const char *name, int64_t *bytes,
                         const char **sha)
{
    size_t i;
    json_t *f;

    json_array_foreach (json_object_get(doc, "files"), i, f) {
        const char *n = json_string_value(json_object_get(f, "name"));
        if (n != NULL && strcmp(n, name) == 0) {
            *bytes = json_integer_value(json_object_get(f, "bytes"));
            *sha = json_string_value(json_object_get(f, "sha256"));
            return 1;
        }
    }
    return 0;
}

int cq_backup_check(const char *from, cq_backup_info *info, char *err,
                    size_t errcap)
{
    char path[PATH_MAX], hex[65];
    json_t *doc = NULL, *files;
    json_error_t jerr;
    const char *created;
    int has_read = 0, rc;
    size_t nfiles;

    memset(info, 0, sizeof *info);
    info->read_bytes = -1;
    rc = join(path, from, CQ_BACKUP_MANIFEST, err, errcap);
    if (rc != CQ_OK)
        return rc;
    if (!exists(path))
        return fail(err, errcap, CQ_ENOTFOUND,
                    "%s is not a backup: it has no %s", from,
                    CQ_BACKUP_MANIFEST);
    doc = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr);
    if (doc == NULL) {
        rc = fail(err, errcap, CQ_ECORRUPT, "%s: %s (line %d)", path,
                  jerr.text, jerr.line);
        goto done;
    }
    files = json_object_get(doc, "files");
    nfiles = json_array_size(files);
    created = json_string_value(json_object_get(doc, "created_at"));
    if (!json_is_string(json_object_get(doc, "format")) ||
        strcmp(json_string_value(json_object_get(doc, "format")), FORMAT) !=
            0 ||
        !json_is_integer(json_object_get(doc, "head_position")) ||
        created == NULL || !json_is_array(files) || nfiles < 1 ||
        nfiles > NDBS) {
        rc = fail(err, errcap, CQ_ECORRUPT, "%s is not a cqrsd backup manifest",
                  path);
        goto done;
    }
    if (json_integer_value(json_object_get(doc, "version")) !=
        FORMAT_VERSION) {
        rc = fail(err, errcap, CQ_ECORRUPT,
                  "%s: backup format version %lld, this cqrsd reads %d",
                  path,
                  (long long)json_integer_value(
                      json_object_get(doc, "version")),
                  FORMAT_VERSION);
        goto done;
    }
    snprintf(info->created_at, sizeof info->created_at, "%s", created);
    for (int i = 0; i < NDBS; i++) {
        int64_t want = 0, bytes = 0;
        const char *sha = NULL;

        if (!manifest_file(doc, DBS[i], &want, &sha)) {
            if (i == DB_EVENTS) {
                rc = fail(err, errcap, CQ_ECORRUPT,
                          "%s lists no events.db", path);
                goto done;
            }
            continue;
        }
        if (i == DB_READ)
            has_read = 1;
        rc = join(path, from, DBS[i], err, errcap);
        if (rc == CQ_OK)
            rc = file_sha256(path, hex, &bytes, err, errcap);
        if (rc != CQ_OK)
            goto done;
        if (bytes != want || sha == NULL || strcmp(sha, hex) != 0) {
            rc = fail(err, errcap, CQ_ECORRUPT,
                      "%s is not the file the backup made: %lld bytes, "
                      "SHA-256 %s; the manifest says %lld bytes, %s",
                      path, (long long)bytes, hex, (long long)want,
                      sha ? sha : "(none)");
            goto done;
        }
        if (i == DB_READ)
            info->read_bytes = bytes;
        else
            info->events_bytes = bytes;
    }
    rc = check_copies(from, has_read, 1, info, NULL, err, errcap);
    if (rc == CQ_OK &&
        info->head != json_integer_value(json_object_get(doc, "head_position")))
        rc = fail(err, errcap, CQ_ECORRUPT,
                  "%s/events.db ends at position %lld, the manifest says "
                  "%lld",
                  from, (long long)info->head,
                  (long long)json_integer_value(
                      json_object_get(doc, "head_position")));
done:
    json_decref(doc);
    return rc;
}

/* ---- restore ----------------------------------------------------------- */

/* CQ_EBUSY if a process holds the database at path open (a server: its
 * connections keep a shared lock on a WAL database while open), else
 * CQ_OK (also when there is no such file, or it is not a database). */
static int not_in_use(const char *path, char *err, size_t cap)
{
    sqlite3 *db = NULL;
    int rc, out = CQ_OK;

    if (!exists(path))
        return CQ_OK;
    rc = sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE, NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_exec(db,
                          "PRAGMA locking_mode = EXCLUSIVE;"
                          " BEGIN EXCLUSIVE; ROLLBACK",
                          NULL, NULL, NULL);
    if (rc == SQLITE_BUSY || rc == SQLITE_LOCKED)
        out = fail(err, cap, CQ_EBUSY,
                   "%s is in use (is a server running on it?): stop it "
                   "first",
                   path);
    sqlite3_close(db);
    return out;
}

/* The first entries of dir (up to 3) into names; 0 when dir is empty or
 * missing, else how many there are. */
static int dir_entries(const char *dir, char *names, size_t cap)
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
static int copy_file(const char *src, const char *dst, char *err, size_t cap)
{
    char buf[1 << 16];
    int in = open(src, O_RDONLY | O_CLOEXEC), out = -1, rc = CQ_OK;
    ssize_t n;

    if (in < 0)
        return fail(err, cap, CQ_EIO, "cannot read %s: %s", src,
                    strerror(errno));
    out = open(dst, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (out < 0) {
        rc = fail(err, cap, CQ_EIO, "cannot create %s: %s", dst,
                  strerror(errno));
        goto done;
    }
    while ((n = read(in, buf, sizeof buf)) != 0) {
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            rc = fail(err, cap, CQ_EIO, "reading %s: %s", src,
                      strerror(errno));
            goto done;
        }
        for (ssize_t off = 0; off < n;) {
            ssize_t w = write(out, buf + off, (size_t)(n - off));
            if (w < 0 && errno == EINTR)
                continue;
            if (w < 0) {
                rc = fail(err, cap, CQ_EIO, "writing %s: %s", dst,
                          strerror(errno));
                goto done;
            }
            off += w;
        }
    }
    if (fsync(out) != 0)
        rc = fail(err, cap, CQ_EIO, "cannot sync %s: %s", dst,
                  strerror(errno));
done:
    if (out >= 0 && close(out) != 0 && rc == CQ_OK)
        rc = fail(err, cap, CQ_EIO, "writing %s: %s", dst, strerror(errno));
    close(in);
    return rc;
}

/* Remove db and its -wal, -shm and -journal files from dir. */
static int remove_db(const char *dir, const char *db, char *err, size_t cap)
{
    static const char *const sfx[] = {"-wal", "-shm", "-journal", ""};
    char name[64], path[PATH_MAX];

    for (size_t i = 0; i < sizeof sfx / sizeof sfx[0]; i++) {
        int rc;
        snprintf(name, sizeof name, "%s%s", db, sfx[i]);
        rc = join(path, dir, name, err, cap);
        if (rc != CQ_OK)
            return rc;
        if (unlink(path) != 0 && errno != ENOENT)
            return fail(err, cap, CQ_EIO, "cannot remove %s: %s", path,
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
    int rc = join(dst, dir, DBS[i], err, cap);

    if (rc == CQ_OK && rename(tmp, dst) != 0)
        rc = fail(err, cap, CQ_EIO, "cannot rename %s to %s: %s", tmp, dst,
                  strerror(errno));
    if (rc != CQ_OK)
        return rc;
    *copied = 0;
    return sync_path(dir, err, cap);
}

int cq_restore(const char *from, const char *data, int force,
               cq_backup_info *info, char *err, size_t errcap)
{
    static const char *const tmpname[NDBS] = {".restore-read.db",
                                              ".restore-events.db"};
    char src[PATH_MAX], tmp[NDBS][PATH_MAX], dst[PATH_MAX], names[200];
    char hex[65], want[65];
    int copied[NDBS] = {0, 0}, has_read, n, rc;

    rc = cq_backup_check(from, info, err, errcap);
    if (rc != CQ_OK)
        return rc;
    has_read = info->read_bytes >= 0;
    if (mkdir(data, 0755) != 0 && errno != EEXIST)
        return fail(err, errcap, CQ_EIO, "cannot create %s: %s", data,
                    strerror(errno));
    n = dir_entries(data, names, sizeof names);
    if (n > 0 && !force)
        return fail(err, errcap, CQ_EEXIST,
                    "%s is not empty (%s%s); --force replaces its databases",
                    data, names, n > 3 ? ", ..." : "");
    for (int i = 0; i < NDBS; i++) {
        rc = join(dst, data, DBS[i], err, errcap);
        if (rc == CQ_OK)
            rc = not_in_use(dst, err, errcap);
        if (rc != CQ_OK)
            return rc;
    }
    /* the copies, beside the old files; checked once more on the disk */
    for (int i = has_read ? DB_READ : DB_EVENTS; i < NDBS; i++) {
        int64_t bytes;
        rc = join(src, from, DBS[i], err, errcap);
        if (rc == CQ_OK)
            rc = join(tmp[i], data, tmpname[i], err, errcap);
        if (rc != CQ_OK)
            goto fail;
        unlink(tmp[i]); /* left by an earlier restore cut short */
        rc = copy_file(src, tmp[i], err, errcap);
        copied[i] = 1;
        if (rc == CQ_OK)
            rc = file_sha256(tmp[i], hex, &bytes, err, errcap);
        if (rc != CQ_OK)
            goto fail;
        rc = file_sha256(src, want, &bytes, err, errcap);
        if (rc != CQ_OK)
            goto fail;
        if (strcmp(hex, want) != 0) {
            rc = fail(err, errcap, CQ_EIO,
                      "the copy %s differs from %s/%s", tmp[i], from, DBS[i]);
            goto fail;
        }
    }
    rc = sync_path(data, err, errcap);
    if (rc != CQ_OK)
        goto fail;
    /* the old read models first: without them, the old or the new events
     * are consistent (read.db is built again) */
    rc = remove_db(data, DBS[DB_READ], err, errcap);
    if (rc == CQ_OK)
        rc = sync_path(data, err, errcap);
    /* the old log before the new file: SQLite would replay it into it */
    if (rc == CQ_OK) {
        static const char *const sfx[] = {"-wal", "-shm", "-journal"};
        for (size_t k = 0; rc == CQ_OK && k < 3; k++) {
            char name[64];
            snprintf(name, sizeof name, "%s%s", DBS[DB_EVENTS], sfx[k]);
            rc = join(dst, data, name, err, errcap);
            if (rc == CQ_OK && unlink(dst) != 0 && errno != ENOENT)
                rc = fail(err, errcap, CQ_EIO, "cannot remove %s: %s", dst,
                          strerror(errno));
        }
    }
    if (rc == CQ_OK)
        rc = sync_path(data, err, errcap);
    /* events.db, then read.db: never read models without their events */
    if (rc == CQ_OK)
        rc = rename_in(tmp[DB_EVENTS], data, DB_EVENTS, &copied[DB_EVENTS],
                       err, errcap);
    if (rc == CQ_OK && copied[DB_READ])
        rc = rename_in(tmp[DB_READ], data, DB_READ, &copied[DB_READ], err,
                       errcap);
    if (rc == CQ_OK)
        return CQ_OK;
fail:
    for (int i = 0; i < NDBS; i++)
        if (copied[i])
            unlink(tmp[i]);
    return rc;
}
