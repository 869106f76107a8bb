/*
 * module.h -- a domain built as a loadable module, what `cqrsd serve
 * --domain PATH` loads.
 *
 * A module is a shared object (built with -shared -fPIC against these
 * headers: `pkg-config --cflags --libs cqrs`) that exports ONE function,
 * cq_module_init(), returning a constant cq_module: the domain (commands,
 * schemas, deciders, upcasters, owned categories and event types) and
 * where its read models are. The projections are NOT compiled in: they are
 * declared .sql files (docs/declared-sql.md) shipped beside the module,
 * in the directory `projections` names relative to the module file, so a
 * module is a folder:
 *
 *     shop/shop.so
 *     shop/projections/shop_totals.sql      @mode async, its @query blocks
 *     shop/projections/shop_last.sql        @mode inline
 *
 * A minimal module:
 *
 *     #include <cqrs/module.h>
 *
 *     static const cq_domain shop = {"shop", commands, NULL, categories,
 *                                    event_types};
 *     static const cq_module module = {
 *         .abi = CQ_ABI_INIT,
 *         .domain = &shop,
 *         .projections = "projections",
 *     };
 *     const cq_module *cq_module_init(void)
 *     {
 *         return &module;
 *     }
 *
 * Loading (src/domain/module.c), before the server opens its data
 * directory, in this order; the first failure stops the start with exit
 * code 2 and one line naming the file and what is wrong, and nothing is
 * written to the data directory:
 *
 *   1. dlopen(PATH, RTLD_NOW | RTLD_LOCAL): it must be a shared object
 *      whose every symbol resolves (against libcqrs and libc);
 *   2. dlsym("cq_module_init"), called once; it must return non-NULL;
 *   3. the ABI check: abi.version must equal this cqrsd's CQ_ABI_VERSION
 *      and every size in abi must equal the engine's sizeof of that struct
 *      (a module built against other headers is refused, never guessed at);
 *   4. the domain is checked (names, every command's functions and schema,
 *      upcasters, categories, event types: see src/domain/README.md);
 *   5. the projection files are read, parsed and their SQL prepared
 *      against their own tables in a private in-memory database;
 *   6. across every --domain: command types, stream categories, event
 *      types, upcast event types, projection, query and table names must
 *      not collide.
 *
 * ABI: CQ_ABI_VERSION names the layout of every public struct (cq_domain,
 * cq_command_def, cq_aggregate, cq_field, cq_upcaster, cq_projection_code,
 * cq_module, cq_module_code) and the contract of every callback. Any change
 * to one of them raises it; the sizes in cq_abi catch a header that
 * changed without it. There is no compatibility across versions: a module
 * is rebuilt against the headers of the cqrsd that loads it. Version 1 is
 * cqrsd 0.1.0: cq_domain with `categories` and `event_types`.
 *
 * Ownership and lifetime: everything cq_module_init returns, and all it
 * points to, is the module's, constant, and must stay valid and unchanged
 * until the process exits (cqrsd unloads modules only after the engine is
 * gone). cq_module_init itself must be pure: no I/O, no threads, no
 * globals written; it may be called more than once and must return the
 * same answer.
 *
 * Threads: cq_module_init runs once per load, on the main thread, before
 * any engine thread exists. The domain's callbacks then run as decider.h
 * and projection.h say.
 *
 * A module's code runs inside the server with its privileges: load only
 * modules you would link into the binary yourself.
 */
#ifndef CQRS_MODULE_H
#define CQRS_MODULE_H

#include <stddef.h>
#include <stdint.h>

#include "cqrs.h"
#include "decider.h"
#include "projection.h"

/* The module ABI this header describes (see above). */
#define CQ_ABI_VERSION 1

/* The name of the entry point, for dlsym. */
#define CQ_MODULE_ENTRY "cq_module_init"

/* What a module was built with. Always the first member of cq_module, so
 * that a loader of any version can read it before anything else. */
typedef struct cq_abi {
    uint32_t version; /* CQ_ABI_VERSION */
    /* sizeof of each public struct as the module saw it */
    uint16_t module, domain, command_def, aggregate, field, upcaster,
        projection_code, module_code;
} cq_abi;

/* A C-code projection (projection.h) in a module: `file` is its declared
 * part (@projection code.name, @version, @mode, DDL and @query blocks, no
 * @on blocks), relative to the module's directory like `projections` and
 * kept outside that directory (else it would be loaded a second time as
 * a declared projection). */
typedef struct cq_module_code {
    const char *file; /* NULL ends a list */
    cq_projection_code code;
} cq_module_code;

typedef struct cq_module {
    cq_abi abi;              /* CQ_ABI_INIT */
    const cq_domain *domain; /* not NULL */
    /* Directory of the module's declared projections: every *.sql file in
     * it is loaded, in name order. Relative to the directory holding the
     * module file (after symbolic links are resolved), or absolute. NULL:
     * the module has no declared projections. */
    const char *projections;
    /* C-code projections, ended by file NULL; may be NULL. */
    const cq_module_code *code;
} cq_module;

/* The value of cq_module.abi for the headers being compiled. */
#define CQ_ABI_INIT                                                            \
    {                                                                          \
        CQ_ABI_VERSION, sizeof(cq_module), sizeof(cq_domain),                  \
            sizeof(cq_command_def), sizeof(cq_aggregate), sizeof(cq_field),    \
            sizeof(cq_upcaster), sizeof(cq_projection_code),                   \
            sizeof(cq_module_code)                                             \
    }

/* Exported even when a module is compiled with -fvisibility=hidden
 * (which keeps its other symbols out of the server's way). */
#define CQ_MODULE_EXPORT __attribute__((visibility("default")))

/* The entry point every module defines (declared here, exported, so that
 * its definition is checked against this type). Returns the module's
 * description, constant and valid until the process exits; NULL means
 * "cannot be used" and stops the start. Called on the main thread before
 * the engine starts; must be pure (see above). */
CQ_MODULE_EXPORT const cq_module *cq_module_init(void);

/* The type of cq_module_init, for a loader's dlsym. */
typedef const cq_module *(*cq_module_init_fn)(void);

#endif
