/*
 * module.h -- loading one domain module (a shared object, see
 * include/cqrs/module.h for what a module is and the steps of loading).
 *
 * A cq_module_lib is the loaded object: the dlopen handle, the module's
 * description and where it lives. It is made and closed on the main
 * thread, before any engine thread starts and after they are all gone;
 * in between it is only read.
 */
#ifndef CQ_DOMAIN_MODULE_H
#define CQ_DOMAIN_MODULE_H

#include <stddef.h>

#include "cqrs/module.h"

typedef struct cq_module_lib cq_module_lib;

/* Load the module at `path` (borrowed; a path without '/' is taken in the
 * current directory, never searched for): resolve it, dlopen it with every
 * symbol bound now, call its cq_module_init, check the ABI (version and
 * struct sizes), its domain (cq_domain_check) and its list of C-code
 * projections. On CQ_OK *out is the caller's (cq_module_lib_close).
 * Otherwise *out is NULL, nothing stays loaded, and err[errcap] holds one
 * line "PATH: what is wrong", PATH as given:
 *
 *   CQ_EIO        the file cannot be opened, is not a shared object, or
 *                 a symbol it needs is missing (dlopen's reason)
 *   CQ_ENOTFOUND  it has no cq_module_init
 *   CQ_EVERSION   it was built for another ABI version or other headers
 *   CQ_EINVAL     cq_module_init returned NULL, or the domain or the list
 *                 of code projections is not usable (which part, why)
 *   CQ_ENOMEM
 *
 * Runs the module's constructors and cq_module_init: main thread only,
 * before other threads exist. */
int cq_module_lib_open(const char *path, cq_module_lib **out, char *err,
                       size_t errcap);

/* The module's description (borrowed from the module: valid until
 * cq_module_lib_close). */
const cq_module *cq_module_lib_module(const cq_module_lib *l);

/* The path as given to cq_module_lib_open (copied; valid until close):
 * what messages name. */
const char *cq_module_lib_path(const cq_module_lib *l);

/* `rel` (a path in the module's description: its projections directory, a
 * code projection's file) resolved against the directory of the module
 * file after symbolic links (an absolute rel is kept), into out[cap].
 * CQ_OK, or CQ_EINVAL when it does not fit. */
int cq_module_lib_file(const cq_module_lib *l, const char *rel, char *out,
                       size_t cap);

/* Unload (dlclose) and free; accepts NULL. Nothing borrowed from the
 * module -- its domain, its functions -- may be used afterwards. */
void cq_module_lib_close(cq_module_lib *l);

#endif
