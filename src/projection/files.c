/*
 * files.c -- reading declared projection files from disk, for `serve` (the
 * engine) and `verify` alike, so both load exactly the same projections:
 * a file is read whole (at most CQ_DECL_MAX_FILE bytes), a directory's
 * *.sql files in name order.
 */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cqrs/cqrs.h"
#include "projection/declared.h"

int cq_declared_read_file(const char *path, cq_declared_text_cb fn, void *arg,
                          char *err, size_t errcap)
{
    FILE *f = fopen(path, "rb");
    char *text = NULL;
    long n;
    int rc = CQ_EIO;

    if (f == NULL) {
        snprintf(err, errcap, "%s: %s", path, strerror(errno));
        return CQ_EIO;
    }
    if (fseek(f, 0, SEEK_END) != 0 || (n = ftell(f)) < 0 ||
        fseek(f, 0, SEEK_SET) != 0) {
        snprintf(err, errcap, "%s: cannot read", path);
        goto done;
    }
    if (n > CQ_DECL_MAX_FILE) {
        snprintf(err, errcap, "%s: larger than %d bytes", path,
                 CQ_DECL_MAX_FILE);
        rc = CQ_EINVAL;
        goto done;
    }
    text = malloc((size_t)n + 1);
    if (text == NULL || fread(text, 1, (size_t)n, f) != (size_t)n) {
        snprintf(err, errcap, "%s: cannot read", path);
        goto done;
    }
    rc = fn(arg, path, text, (size_t)n, err, errcap);
done:
    free(text);
    fclose(f);
    return rc;
}

int cq_declared_read_dir(const char *dir, cq_declared_text_cb fn, void *arg,
                         char *err, size_t errcap)
{
    struct dirent **names = NULL;
    int n, rc = CQ_OK;

    n = scandir(dir, &names, NULL, alphasort);
    if (n < 0) {
        snprintf(err, errcap, "%s: %s", dir, strerror(errno));
        return CQ_EIO;
    }
    for (int i = 0; i < n; i++) {
        size_t len = strlen(names[i]->d_name);
        if (rc == CQ_OK && len > 4 &&
            strcmp(names[i]->d_name + len - 4, ".sql") == 0) {
            char path[4096];
            snprintf(path, sizeof path, "%s/%s", dir, names[i]->d_name);
            rc = cq_declared_read_file(path, fn, arg, err, errcap);
        }
        free(names[i]);
    }
    free(names);
    return rc;
}
