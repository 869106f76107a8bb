/*
 * backup.c -- online backup of an embedded data directory and the check
 * of a backup (see backup.h: the manifest, and why read.db is copied
 * first); restore.c restores one, backup_files.c has the file helpers.
 *
 * Every SQLite connection is opened and closed inside the function that
 * uses it, and every failure goes to one cleanup label that removes what
 * the call made (the partial backup directory) and leaves the message in
 * err.
 */
#include "store/backup.h"

#include <errno.h>
#include <jansson.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/base.h"
#include "cqrs/cqrs.h"
#include "store/backup_int.h"

#define FORMAT "cqrsd-backup"
#define FORMAT_VERSION 1
#define BUSY_RETRY_MS 50
#define BUSY_RETRIES 1200 /* a minute of a source kept busy */

/* ---- SQLite ------------------------------------------------------------ */

/* Open path read-only as an immutable file (a backup's copies: no locks,
 * no -wal or -shm made beside them). */
static int open_immutable(const char *path, sqlite3 **db, char *err, size_t cap)
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
        return cq_bk_fail(err, cap, CQ_EINVAL, "path too long: %s", path);
    strcat(uri, "?mode=ro&immutable=1");
    rc = sqlite3_open_v2(uri, db, SQLITE_OPEN_READONLY | SQLITE_OPEN_URI, NULL);
    if (rc != SQLITE_OK) {
        rc = cq_bk_fail(err, cap, rc == SQLITE_NOMEM ? CQ_ENOMEM : CQ_EIO,
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
        out = cq_bk_fail(err, cap, CQ_EIO, "cannot open %s: %s",
                         to == NULL ? src : dst,
                         sqlite3_errmsg(to == NULL ? from : to));
        goto done;
    }
    sqlite3_busy_timeout(from, 10000);
    b = sqlite3_backup_init(to, "main", from, "main");
    if (b == NULL) {
        out = cq_bk_fail(err, cap, CQ_EIO, "cannot copy %s: %s", src,
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
        out = cq_bk_fail(err, cap, rc == SQLITE_NOMEM ? CQ_ENOMEM : CQ_EIO,
                         "copying %s: %s", src, sqlite3_errstr(rc));
        goto done;
    }
done:
    if (b != NULL && sqlite3_backup_finish(b) != SQLITE_OK && out == CQ_OK)
        out = cq_bk_fail(err, cap, CQ_EIO, "copying %s: %s", src,
                         sqlite3_errmsg(to));
    if (sqlite3_close(to) != SQLITE_OK && out == CQ_OK)
        out = cq_bk_fail(err, cap, CQ_EIO, "closing %s", dst);
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
        out = cq_bk_fail(err, cap, CQ_ECORRUPT,
                         "%s is not a database SQLite can "
                         "check: %s",
                         path, sqlite3_errmsg(db));
    else if (sqlite3_column_type(st, 0) != SQLITE_TEXT ||
             strcmp((const char *)sqlite3_column_text(st, 0), "ok") != 0)
        out = cq_bk_fail(err, cap, CQ_ECORRUPT, "%s is damaged: %s", path,
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
        out = cq_bk_fail(err, cap, CQ_ECORRUPT, "%s holds no event store: %s",
                         path, sqlite3_errmsg(db));
    else if (sqlite3_column_type(st, 0) == SQLITE_NULL)
        *head = 0;
    else if (sqlite3_column_type(st, 0) == SQLITE_INTEGER &&
             sqlite3_column_int64(st, 0) > 0)
        *head = sqlite3_column_int64(st, 0);
    else
        out = cq_bk_fail(err, cap, CQ_ECORRUPT,
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
        return cq_bk_fail(err, cap, CQ_ECORRUPT, "%s: %s: %s", dbname, table,
                          sqlite3_errmsg(db));
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        const char *name = (const char *)sqlite3_column_text(st, 0);
        int64_t pos = sqlite3_column_int64(st, 1);
        json_t *cp;

        if (name == NULL || sqlite3_column_type(st, 1) != SQLITE_INTEGER ||
            pos < 0) {
            out = cq_bk_fail(err, cap, CQ_ECORRUPT,
                             "%s: a row of %s has no name or position", dbname,
                             table);
            break;
        }
        if (pos > head) {
            out = cq_bk_fail(err, cap, CQ_ECORRUPT,
                             "%s is ahead of events.db: %s of projection %s is "
                             "at position %lld, the events end at %lld",
                             dbname, rebuild ? "the rebuild" : "the checkpoint",
                             name, (long long)pos, (long long)head);
            break;
        }
        cp = json_pack("{s:s,s:s,s:I,s:b}", "projection", name, "database",
                       dbname, "position", (json_int_t)pos, "rebuild", rebuild);
        if (cp == NULL || json_array_append_new(list, cp) != 0) {
            out = cq_bk_fail(err, cap, CQ_ENOMEM, "out of memory");
            break;
        }
        if (pos > info->max_checkpoint)
            info->max_checkpoint = pos;
        info->checkpoints++;
    }
    if (out == CQ_OK && rc != SQLITE_DONE)
        out = cq_bk_fail(err, cap, CQ_ECORRUPT, "%s: reading %s: %s", dbname,
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
        return cq_bk_fail(err, cap, CQ_ENOMEM, "out of memory");
    list = list ? list : own;
    rc = cq_bk_join(path, dir, cq_bk_dbs[CQ_BK_EVENTS], err, cap);
    if (rc == CQ_OK)
        rc = open_immutable(path, &db, err, cap);
    if (rc == CQ_OK)
        rc = check_integrity(db, path, full, err, cap);
    if (rc == CQ_OK)
        rc = read_head(db, path, &info->head, err, cap);
    if (rc == CQ_OK)
        rc = read_checkpoints(db, cq_bk_dbs[CQ_BK_EVENTS], "cq_projections",
                              info->head, list, info, err, cap);
    sqlite3_close(db);
    db = NULL;
    if (rc == CQ_OK && has_read) {
        rc = cq_bk_join(path, dir, cq_bk_dbs[CQ_BK_READ], err, cap);
        if (rc == CQ_OK)
            rc = open_immutable(path, &db, err, cap);
        if (rc == CQ_OK)
            rc = check_integrity(db, path, full, err, cap);
        if (rc == CQ_OK)
            rc = read_checkpoints(db, cq_bk_dbs[CQ_BK_READ], "cq_projections",
                                  info->head, list, info, err, cap);
        if (rc == CQ_OK)
            rc = read_checkpoints(db, cq_bk_dbs[CQ_BK_READ], "cq_rebuilds",
                                  info->head, list, info, err, cap);
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
    int rc = cq_bk_join(path, dir, CQ_BACKUP_MANIFEST, err, cap);

    if (rc != CQ_OK)
        return rc;
    doc = json_pack("{s:s,s:i,s:s,s:I,s:O,s:O}", "format", FORMAT, "version",
                    FORMAT_VERSION, "created_at", info->created_at,
                    "head_position", (json_int_t)info->head, "files", files,
                    "checkpoints", checkpoints);
    if (doc == NULL)
        return cq_bk_fail(err, cap, CQ_ENOMEM, "out of memory");
    if (json_dump_file(doc, path, JSON_INDENT(2) | JSON_SORT_KEYS) != 0)
        rc = cq_bk_fail(err, cap, CQ_EIO, "cannot write %s: %s", path,
                        strerror(errno));
    json_decref(doc);
    if (rc == CQ_OK)
        rc = cq_bk_sync_path(path, err, cap);
    return rc;
}

int cq_backup(const char *data, const char *to, cq_backup_info *info, char *err,
              size_t errcap)
{
    char tmp[PATH_MAX], src[PATH_MAX], dst[PATH_MAX], parent[PATH_MAX];
    char hex[65];
    json_t *files = json_array(), *cps = json_array();
    int has_read, made = 0, rc;

    memset(info, 0, sizeof *info);
    info->read_bytes = -1;
    if (files == NULL || cps == NULL) {
        rc = cq_bk_fail(err, errcap, CQ_ENOMEM, "out of memory");
        goto done;
    }
    if (cq_bk_exists(to)) {
        rc = cq_bk_fail(err, errcap, CQ_EINVAL,
                        "%s exists: a backup goes into a new directory", to);
        goto done;
    }
    rc = cq_bk_join(src, data, cq_bk_dbs[CQ_BK_EVENTS], err, errcap);
    if (rc == CQ_OK && !cq_bk_exists(src))
        rc = cq_bk_fail(err, errcap, CQ_ENOTFOUND, "there is no %s in %s",
                        cq_bk_dbs[CQ_BK_EVENTS], data);
    if (rc == CQ_OK &&
        snprintf(tmp, sizeof tmp, "%s.partial-XXXXXX", to) >= (int)sizeof tmp)
        rc = cq_bk_fail(err, errcap, CQ_EINVAL, "path too long: %s", to);
    if (rc != CQ_OK)
        goto done;
    if (mkdtemp(tmp) == NULL) {
        rc = cq_bk_fail(err, errcap, CQ_EIO, "cannot create %s: %s", tmp,
                        strerror(errno));
        goto done;
    }
    made = 1;
    cq_format_time(cq_now_ms(), info->created_at);
    /* read.db first: see backup.h, "Consistency" */
    rc = cq_bk_join(src, data, cq_bk_dbs[CQ_BK_READ], err, errcap);
    if (rc != CQ_OK)
        goto done;
    has_read = cq_bk_exists(src);
    for (int i = has_read ? CQ_BK_READ : CQ_BK_EVENTS; i < CQ_BK_NDBS; i++) {
        int64_t bytes;
        json_t *f;

        rc = cq_bk_join(src, data, cq_bk_dbs[i], err, errcap);
        if (rc == CQ_OK)
            rc = cq_bk_join(dst, tmp, cq_bk_dbs[i], err, errcap);
        if (rc == CQ_OK)
            rc = copy_db(src, dst, err, errcap);
        if (rc == CQ_OK)
            rc = cq_bk_sync_path(dst, err, errcap);
        if (rc == CQ_OK)
            rc = cq_bk_file_sha256(dst, hex, &bytes, err, errcap);
        if (rc != CQ_OK)
            goto done;
        if (i == CQ_BK_READ)
            info->read_bytes = bytes;
        else
            info->events_bytes = bytes;
        f = json_pack("{s:s,s:I,s:s}", "name", cq_bk_dbs[i], "bytes",
                      (json_int_t)bytes, "sha256", hex);
        if (f == NULL || json_array_append_new(files, f) != 0) {
            rc = cq_bk_fail(err, errcap, CQ_ENOMEM, "out of memory");
            goto done;
        }
    }
    rc = check_copies(tmp, has_read, 0, info, cps, err, errcap);
    if (rc == CQ_OK)
        rc = write_manifest(tmp, info, files, cps, err, errcap);
    if (rc == CQ_OK)
        rc = cq_bk_sync_path(tmp, err, errcap);
    if (rc == CQ_OK && rename(tmp, to) != 0)
        rc = cq_bk_fail(err, errcap,
                        errno == EEXIST || errno == ENOTEMPTY ? CQ_EINVAL
                                                              : CQ_EIO,
                        "cannot rename %s to %s: %s", tmp, to, strerror(errno));
    if (rc == CQ_OK) {
        made = 0;
        cq_bk_parent_of(to, parent);
        rc = cq_bk_sync_path(parent, err, errcap);
    }
done:
    if (made)
        cq_bk_remove_dir(tmp);
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
    rc = cq_bk_join(path, from, CQ_BACKUP_MANIFEST, err, errcap);
    if (rc != CQ_OK)
        return rc;
    if (!cq_bk_exists(path))
        return cq_bk_fail(err, errcap, CQ_ENOTFOUND,
                          "%s is not a backup: it has no %s", from,
                          CQ_BACKUP_MANIFEST);
    doc = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr);
    if (doc == NULL) {
        rc = cq_bk_fail(err, errcap, CQ_ECORRUPT, "%s: %s (line %d)", path,
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
        nfiles > CQ_BK_NDBS) {
        rc = cq_bk_fail(err, errcap, CQ_ECORRUPT,
                        "%s is not a cqrsd backup manifest", path);
        goto done;
    }
    if (json_integer_value(json_object_get(doc, "version")) != FORMAT_VERSION) {
        rc = cq_bk_fail(
            err, errcap, CQ_ECORRUPT,
            "%s: backup format version %lld, this cqrsd reads %d", path,
            (long long)json_integer_value(json_object_get(doc, "version")),
            FORMAT_VERSION);
        goto done;
    }
    snprintf(info->created_at, sizeof info->created_at, "%s", created);
    for (int i = 0; i < CQ_BK_NDBS; i++) {
        int64_t want = 0, bytes = 0;
        const char *sha = NULL;

        if (!manifest_file(doc, cq_bk_dbs[i], &want, &sha)) {
            if (i == CQ_BK_EVENTS) {
                rc = cq_bk_fail(err, errcap, CQ_ECORRUPT,
                                "%s lists no events.db", path);
                goto done;
            }
            continue;
        }
        if (i == CQ_BK_READ)
            has_read = 1;
        rc = cq_bk_join(path, from, cq_bk_dbs[i], err, errcap);
        if (rc == CQ_OK)
            rc = cq_bk_file_sha256(path, hex, &bytes, err, errcap);
        if (rc != CQ_OK)
            goto done;
        if (bytes != want || sha == NULL || strcmp(sha, hex) != 0) {
            rc = cq_bk_fail(err, errcap, CQ_ECORRUPT,
                            "%s is not the file the backup made: %lld bytes, "
                            "SHA-256 %s; the manifest says %lld bytes, %s",
                            path, (long long)bytes, hex, (long long)want,
                            sha ? sha : "(none)");
            goto done;
        }
        if (i == CQ_BK_READ)
            info->read_bytes = bytes;
        else
            info->events_bytes = bytes;
    }
    rc = check_copies(from, has_read, 1, info, NULL, err, errcap);
    if (rc == CQ_OK &&
        info->head != json_integer_value(json_object_get(doc, "head_position")))
        rc = cq_bk_fail(err, errcap, CQ_ECORRUPT,
                        "%s/events.db ends at position %lld, the manifest says "
                        "%lld",
                        from, (long long)info->head,
                        (long long)json_integer_value(
                            json_object_get(doc, "head_position")));
done:
    json_decref(doc);
    return rc;
}
