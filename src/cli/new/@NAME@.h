/*
 * @NAME@.h -- the @NAME@ domain, for its unit test (test_@NAME@.c). The
 * server does not use this header: it loads @NAME@.so and calls
 * cq_module_init() (cqrs/module.h).
 */
#ifndef @UPPER@_H
#define @UPPER@_H

#include <cqrs/decider.h>

/* The domain: one command, Record@PASCAL@Entry, on the aggregate
 * "@NAME@", stream "@NAME@-{id}". Static, immutable; never NULL. */
const cq_domain *@NAME@_domain(void);

/* The largest total one @NAME@ may reach. */
#define @UPPER@_MAX_TOTAL 1000000000

#endif
