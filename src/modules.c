/*
 * modules.c -- the domain modules a process serves (modules.h): load each,
 * read and check its projection files, refuse collisions, then hand the
 * domain and the files to the engine or to verify.
 *
 * Design decisions:
 *
 *  - Everything that can be wrong with a module is found here, before
 *    main.c opens the data directory: the module itself (module.c), its
 *    domain (check.c), its files' syntax and SQL (projection/check.c),
 *    and clashes with the other modules (set.c for the domain's names,
 *    the projection check for the files'). So a bad module writes nothing.
 *  - The files are read once and kept in memory: the engine (or verify)
 *    gets the same bytes that were checked.
 *  - The default module is found from /proc/self/exe, not the current
 *    directory, so `make run`, the tests and an installed cqrsd all find
 *    the orders module that was built or installed with that binary.
 *
 * Threads: main thread only (see modules.h).
 */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "domain/domain.h"
#include "domain/module.h"
#include "modules.h"
#include "projection/check.h"
#include "projection/declared.h"

/* Where the default module is, relative to the binary's directory: as
 * installed (CMake passes the relative path from BINDIR to LIBDIR/cqrsd),
 * then in a build tree. */
#ifndef CQ_INSTALLED_MODULES
#define CQ_INSTALLED_MODULES "../lib/cqrsd"
#endif
static const char *const default_module[] = {
    CQ_INSTALLED_MODULES "/orders/orders.so",
    "domains/orders/orders.so",
};

typedef struct proj_file {
    char *path;
    char *text;
    size_t len;
    const cq_projection_code *code; /* NULL: a declared projection */
} proj_file;

struct cq_modules {
    cq_module_lib *libs[CQ_MODULES_MAX];
    size_t n;
    cq_domain_set *set;
    proj_file *files;
    size_t nfiles, cap;
    char names[1024];
};

/* What the file callback needs while one module's files are read. */
typedef struct reading {
    cq_modules *m;
    cq_proj_check *check;
    const cq_projection_code *code; /* of the file being read, or NULL */
} reading;

static int keep_file(void *arg, const char *path, const char *text, size_t len,
                     char *err, size_t errcap)
{
    reading *r = arg;
    cq_modules *m = r->m;
    proj_file *f;
    int rc;

    rc = cq_proj_check_add(r->check, path, text, len,
                           r->code != NULL ? r->code->name : NULL, err, errcap);
    if (rc != CQ_OK)
        return rc;
    if (m->nfiles == m->cap) {
        size_t cap = m->cap ? 2 * m->cap : 8;
        proj_file *v = realloc(m->files, cap * sizeof *v);
        if (v == NULL)
            goto nomem;
        m->files = v;
        m->cap = cap;
    }
    f = &m->files[m->nfiles];
    memset(f, 0, sizeof *f);
    f->path = strdup(path);
    f->text = malloc(len + 1);
    f->len = len;
    f->code = r->code;
    m->nfiles++; /* freed by cq_modules_close, even half made */
    if (f->path == NULL || f->text == NULL)
        goto nomem;
    memcpy(f->text, text, len);
    f->text[len] = '\0';
    return CQ_OK;
nomem:
    snprintf(err, errcap, "%s: out of memory", path);
    return CQ_ENOMEM;
}

/* Read and check lib's projection directory and code projections. */
static int read_files(cq_modules *m, const cq_module_lib *lib,
                      cq_proj_check *check, char *err, size_t errcap)
{
    const cq_module *mod = cq_module_lib_module(lib);
    reading r = {m, check, NULL};
    char path[PATH_MAX], msg[1024];
    int rc = CQ_OK;

    msg[0] = '\0';
    if (mod->projections != NULL) {
        rc = cq_module_lib_file(lib, mod->projections, path, sizeof path);
        if (rc != CQ_OK)
            snprintf(msg, sizeof msg, "projections: path too long");
        else
            rc = cq_declared_read_dir(path, keep_file, &r, msg, sizeof msg);
    }
    for (size_t i = 0;
         rc == CQ_OK && mod->code != NULL && mod->code[i].file != NULL; i++) {
        r.code = &mod->code[i].code;
        rc = cq_module_lib_file(lib, mod->code[i].file, path, sizeof path);
        if (rc != CQ_OK)
            snprintf(msg, sizeof msg, "%s: path too long", mod->code[i].file);
        else
            rc = cq_declared_read_file(path, keep_file, &r, msg, sizeof msg);
    }
    if (rc != CQ_OK)
        snprintf(err, errcap, "%s: %s", cq_module_lib_path(lib), msg);
    return rc;
}

/* The default module's path into out[cap]: the first candidate that
 * exists next to the running binary. */
static int find_default(char *out, size_t cap, char *err, size_t errcap)
{
    char exe[PATH_MAX], *slash;
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);

    if (n <= 0) {
        snprintf(err, errcap,
                 "no --domain given, and the running binary cannot be found "
                 "to look for the default module: %s",
                 strerror(errno));
        return CQ_EIO;
    }
    exe[n] = '\0';
    slash = strrchr(exe, '/');
    if (slash != NULL)
        *slash = '\0';
    for (size_t i = 0; i < sizeof default_module / sizeof *default_module;
         i++) {
        int len = snprintf(out, cap, "%s/%s", exe, default_module[i]);
        if (len > 0 && (size_t)len < cap && access(out, F_OK) == 0)
            return CQ_OK;
    }
    snprintf(err, errcap,
             "no --domain given, and the default module (orders) is neither "
             "at %s/%s nor at %s/%s",
             exe, default_module[0], exe, default_module[1]);
    return CQ_ENOTFOUND;
}

int cq_modules_open(const char *const *paths, size_t n, cq_modules **out,
                    char *err, size_t errcap)
{
    const cq_domain *parts[CQ_MODULES_MAX];
    const char *sources[CQ_MODULES_MAX];
    char fallback[PATH_MAX];
    const char *fallback_path = fallback;
    cq_proj_check *check = NULL;
    cq_modules *m;
    int rc;

    *out = NULL;
    if (n > CQ_MODULES_MAX) {
        snprintf(err, errcap, "at most %d --domain options", CQ_MODULES_MAX);
        return CQ_EINVAL;
    }
    if (n == 0) {
        rc = find_default(fallback, sizeof fallback, err, errcap);
        if (rc != CQ_OK)
            return rc;
        paths = &fallback_path;
        n = 1;
    }
    m = calloc(1, sizeof *m);
    if (m == NULL || cq_proj_check_new(&check) != CQ_OK) {
        free(m);
        snprintf(err, errcap, "out of memory");
        return CQ_ENOMEM;
    }
    for (size_t i = 0; i < n; i++) {
        rc = cq_module_lib_open(paths[i], &m->libs[i], err, errcap);
        if (rc != CQ_OK)
            goto fail;
        m->n++;
        parts[i] = cq_module_lib_module(m->libs[i])->domain;
        sources[i] = cq_module_lib_path(m->libs[i]);
    }
    rc = cq_domain_set_new(parts, sources, n, &m->set, err, errcap);
    for (size_t i = 0; rc == CQ_OK && i < n; i++)
        rc = read_files(m, m->libs[i], check, err, errcap);
    if (rc != CQ_OK)
        goto fail;
    for (size_t i = 0; i < n; i++) {
        size_t used = strlen(m->names);
        snprintf(m->names + used, sizeof m->names - used, "%s%s", i ? ", " : "",
                 parts[i]->name);
    }
    cq_proj_check_free(check);
    *out = m;
    return CQ_OK;
fail:
    cq_proj_check_free(check);
    cq_modules_close(m);
    return rc;
}

const cq_domain *cq_modules_domain(const cq_modules *m)
{
    return cq_domain_set_domain(m->set);
}

const char *cq_modules_names(const cq_modules *m)
{
    return m->names;
}

int cq_modules_load_engine(const cq_modules *m, cq_engine *e, char *err,
                           size_t errcap)
{
    int rc = CQ_OK;

    for (size_t i = 0; rc == CQ_OK && i < m->nfiles; i++) {
        const proj_file *f = &m->files[i];
        rc =
            f->code != NULL
                ? cq_engine_add_code(e, f->text, f->len, f->code, err, errcap)
                : cq_engine_load_text(e, f->path, f->text, f->len, err, errcap);
    }
    return rc;
}

int cq_modules_load_verify(const cq_modules *m, cq_verify *v, char *err,
                           size_t errcap)
{
    int rc = CQ_OK;

    for (size_t i = 0; rc == CQ_OK && i < m->nfiles; i++) {
        const proj_file *f = &m->files[i];
        rc =
            f->code != NULL
                ? cq_verify_add_code(v, f->text, f->len, f->code, err, errcap)
                : cq_verify_load_text(v, f->path, f->text, f->len, err, errcap);
    }
    return rc;
}

void cq_modules_close(cq_modules *m)
{
    if (m == NULL)
        return;
    for (size_t i = 0; i < m->nfiles; i++) {
        free(m->files[i].path);
        free(m->files[i].text);
    }
    free(m->files);
    cq_domain_set_free(m->set);
    for (size_t i = m->n; i > 0; i--)
        cq_module_lib_close(m->libs[i - 1]);
    free(m);
}
