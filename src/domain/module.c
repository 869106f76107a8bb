/*
 * module.c -- loading one domain module: dlopen, the one entry point, the
 * ABI check, the domain check (see include/cqrs/module.h, steps 1-4).
 *
 * Design decisions:
 *
 *  - RTLD_NOW: a module that needs a symbol nobody provides fails here,
 *    with the symbol's name, rather than the first time that code runs.
 *    RTLD_LOCAL: modules do not see each other's symbols, so two modules
 *    may use the same names for their own functions.
 *  - The path is resolved with realpath() first: a name without '/' is
 *    never searched for along LD_LIBRARY_PATH (what is loaded is the file
 *    the user named), and the module's own files (projections) are found
 *    next to the real file even when the user named a symbolic link.
 *  - cq_abi is the first member of cq_module in every version, so it can
 *    be read before anything whose layout might differ. Sizes are compared
 *    as well as the version number: a header changed without raising
 *    CQ_ABI_VERSION is still caught.
 *  - Every message is one line that starts with the path as the user gave
 *    it; dlerror()'s own copy of the path is taken out.
 *
 * Threads: main thread only (constructors and cq_module_init run here).
 */
#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "domain/domain.h"
#include "domain/module.h"

#define MAX_CODE 1024 /* C-code projections of one module */

struct cq_module_lib {
    void *dl;
    const cq_module *m;
    char *path;         /* as given */
    char dir[PATH_MAX]; /* of the real file */
};

/* dlerror()'s text without a leading "REAL: " (it names the file itself). */
static const char *dl_reason(const char *real)
{
    const char *e = dlerror();
    size_t n = strlen(real);

    if (e == NULL)
        return "unknown error";
    if (strncmp(e, real, n) == 0 && strncmp(e + n, ": ", 2) == 0)
        return e + n + 2;
    return e;
}

static int check_abi(const cq_module_lib *l, char *err, size_t errcap)
{
    static const struct {
        const char *name;
        size_t here;
        size_t offset;
    } sizes[] = {
        {"cq_module", sizeof(cq_module), offsetof(cq_abi, module)},
        {"cq_domain", sizeof(cq_domain), offsetof(cq_abi, domain)},
        {"cq_command_def", sizeof(cq_command_def),
         offsetof(cq_abi, command_def)},
        {"cq_aggregate", sizeof(cq_aggregate), offsetof(cq_abi, aggregate)},
        {"cq_field", sizeof(cq_field), offsetof(cq_abi, field)},
        {"cq_upcaster", sizeof(cq_upcaster), offsetof(cq_abi, upcaster)},
        {"cq_projection_code", sizeof(cq_projection_code),
         offsetof(cq_abi, projection_code)},
        {"cq_module_code", sizeof(cq_module_code),
         offsetof(cq_abi, module_code)},
    };
    const cq_abi *abi = &l->m->abi;

    if (abi->version != CQ_ABI_VERSION) {
        snprintf(err, errcap,
                 "%s: built for module ABI version %lu, this cqrsd (%s) "
                 "loads version %d: rebuild it against this cqrsd's headers",
                 l->path, (unsigned long)abi->version, CQ_VERSION_STRING,
                 CQ_ABI_VERSION);
        return CQ_EVERSION;
    }
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        uint16_t there;
        memcpy(&there, (const char *)abi + sizes[i].offset, sizeof there);
        if (there != sizes[i].here) {
            snprintf(err, errcap,
                     "%s: built with other headers than this cqrsd's (%s is "
                     "%u bytes in the module, %zu here): rebuild it against "
                     "this cqrsd's headers",
                     l->path, sizes[i].name, (unsigned)there, sizes[i].here);
            return CQ_EVERSION;
        }
    }
    return CQ_OK;
}

/* The module's own lists: code projections and the projections dir. */
static int check_files(const cq_module_lib *l, char *err, size_t errcap)
{
    const cq_module *m = l->m;

    if (m->projections != NULL && m->projections[0] == '\0') {
        snprintf(err, errcap,
                 "%s: projections is \"\" (NULL means the module has none)",
                 l->path);
        return CQ_EINVAL;
    }
    for (size_t i = 0; m->code != NULL && m->code[i].file != NULL; i++) {
        const cq_projection_code *c = &m->code[i].code;
        if (i >= MAX_CODE) {
            snprintf(err, errcap,
                     "%s: more than %d code projections (is the {NULL} "
                     "entry ending the list missing?)",
                     l->path, MAX_CODE);
            return CQ_EINVAL;
        }
        if (c->name == NULL || c->name[0] == '\0' || c->apply == NULL) {
            snprintf(err, errcap,
                     "%s: code projection #%zu (%.200s) needs a name and "
                     "an apply() function",
                     l->path, i + 1, m->code[i].file);
            return CQ_EINVAL;
        }
    }
    return CQ_OK;
}

int cq_module_lib_open(const char *path, cq_module_lib **out, char *err,
                       size_t errcap)
{
    cq_module_lib *l;
    cq_module_init_fn init;
    char real[PATH_MAX];
    struct stat st;
    void *sym;
    int rc;

    *out = NULL;
    if (errcap > 0)
        err[0] = '\0';
    l = calloc(1, sizeof *l);
    if (l == NULL || (l->path = strdup(path)) == NULL) {
        free(l);
        snprintf(err, errcap, "%s: out of memory", path);
        return CQ_ENOMEM;
    }
    if (realpath(path, real) == NULL || stat(real, &st) != 0) {
        snprintf(err, errcap, "%s: cannot open: %s", path, strerror(errno));
        rc = CQ_EIO;
        goto fail;
    }
    if (!S_ISREG(st.st_mode)) {
        snprintf(err, errcap, "%s: not a loadable module: not a regular file",
                 path);
        rc = CQ_EIO;
        goto fail;
    }
    snprintf(l->dir, sizeof l->dir, "%s", real);
    *strrchr(l->dir, '/') = '\0'; /* realpath() is absolute */
    if (l->dir[0] == '\0')
        snprintf(l->dir, sizeof l->dir, "/");
    l->dl = dlopen(real, RTLD_NOW | RTLD_LOCAL);
    if (l->dl == NULL) {
        snprintf(err, errcap, "%s: not a loadable module: %s", path,
                 dl_reason(real));
        rc = CQ_EIO;
        goto fail;
    }
    dlerror();
    sym = dlsym(l->dl, CQ_MODULE_ENTRY);
    if (sym == NULL) {
        snprintf(err, errcap,
                 "%s: no entry point %s: not a cqrsd domain module (see "
                 "cqrs/module.h)",
                 path, CQ_MODULE_ENTRY);
        rc = CQ_ENOTFOUND;
        goto fail;
    }
    /* POSIX: a data pointer from dlsym() converts to a function pointer */
    memcpy(&init, &sym, sizeof init);
    l->m = init();
    if (l->m == NULL) {
        snprintf(err, errcap, "%s: %s() returned NULL", path, CQ_MODULE_ENTRY);
        rc = CQ_EINVAL;
        goto fail;
    }
    rc = check_abi(l, err, errcap);
    if (rc != CQ_OK)
        goto fail;
    if (l->m->domain == NULL) {
        snprintf(err, errcap, "%s: the module has no domain", path);
        rc = CQ_EINVAL;
        goto fail;
    }
    {
        char why[512];
        rc = cq_domain_check(l->m->domain, why, sizeof why);
        if (rc != CQ_OK) {
            snprintf(err, errcap, "%s: invalid domain: %s", path, why);
            goto fail;
        }
    }
    rc = check_files(l, err, errcap);
    if (rc != CQ_OK)
        goto fail;
    *out = l;
    return CQ_OK;
fail:
    cq_module_lib_close(l);
    return rc;
}

const cq_module *cq_module_lib_module(const cq_module_lib *l)
{
    return l->m;
}

const char *cq_module_lib_path(const cq_module_lib *l)
{
    return l->path;
}

int cq_module_lib_file(const cq_module_lib *l, const char *rel, char *out,
                       size_t cap)
{
    int n = rel[0] == '/' ? snprintf(out, cap, "%s", rel)
                          : snprintf(out, cap, "%s/%s", l->dir, rel);

    return n >= 0 && (size_t)n < cap ? CQ_OK : CQ_EINVAL;
}

void cq_module_lib_close(cq_module_lib *l)
{
    if (l == NULL)
        return;
    if (l->dl != NULL)
        dlclose(l->dl);
    free(l->path);
    free(l);
}
