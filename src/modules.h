/*
 * modules.h -- the domain modules a cqrsd process serves: `--domain PATH`
 * (repeatable), or the orders example when none is given. Joins the
 * domain layer (loading and checking a module, src/domain/module.h; one
 * view of several domains, domain.h) with the projection layer (checking
 * their files, src/projection/check.h) for main.c, like wiring.c does for
 * the writer and the engine.
 *
 * Everything here runs on the main thread: cq_modules_open before the data
 * directory is opened, cq_modules_close after every engine thread is
 * gone. In between the modules are only read.
 */
#ifndef CQ_MODULES_H
#define CQ_MODULES_H

#include <stddef.h>

#include "cqrs/decider.h"
#include "projection/engine.h"
#include "projection/verify.h"

#define CQ_MODULES_MAX 32 /* --domain flags */

typedef struct cq_modules cq_modules;

/* Load the modules at paths[0..n) (borrowed for the call), n <=
 * CQ_MODULES_MAX, in that order; with n == 0, the default one: the orders
 * example, looked for relative to the running binary (installed:
 * BINDIR/../lib/cqrsd/orders/orders.so; in a build tree:
 * BUILD/domains/orders/orders.so). Each is loaded and checked
 * (cq_module_lib_open), its projection files read and checked
 * (cq_proj_check), and names must not collide across modules (command
 * types, stream categories, event types; projection, query, table and
 * index names). Touches no data directory.
 *
 * On CQ_OK *out is the caller's (cq_modules_close). Else *out is NULL and
 * err[errcap] holds ONE line naming the file and what is wrong, and the
 * code is the failing step's (CQ_EIO, CQ_ENOTFOUND, CQ_EVERSION, CQ_EINVAL,
 * CQ_ENOMEM; see module.h and check.h). Main thread only. */
int cq_modules_open(const char *const *paths, size_t n, cq_modules **out,
                    char *err, size_t errcap);

/* The served domain: the one module's, or a view of all of them
 * (cq_domain_set_domain). Borrowed: valid until cq_modules_close. Any
 * thread. */
const cq_domain *cq_modules_domain(const cq_modules *m);

/* The modules' domain names, ", "-separated, for messages. Borrowed. */
const char *cq_modules_names(const cq_modules *m);

/* Add every module's projections to e (cq_engine_load_text for declared
 * files, cq_engine_add_code for C-code ones), in module order and, within
 * a module, in name order then the code projections. Before
 * cq_engine_start, on its thread. CQ_OK or the engine's error (err says
 * which file). */
int cq_modules_load_engine(const cq_modules *m, cq_engine *e, char *err,
                           size_t errcap);

/* The same projections added to a verifier (cq_verify_load_text,
 * cq_verify_add_code), so that `cqrsd verify` checks what serve runs. */
int cq_modules_load_verify(const cq_modules *m, cq_verify *v, char *err,
                           size_t errcap);

/* Unload every module and free m; accepts NULL. The engine, the writer,
 * the server and any verifier given its domain must be freed first. */
void cq_modules_close(cq_modules *m);

#endif
