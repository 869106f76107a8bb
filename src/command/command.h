/*
 * command.h -- engine-side access to what deciders produce (the public
 * half is include/cqrs/decider.h).
 *
 * cq_decision is a plain heap object owned by whoever called
 * cq_decision_new; it is not shared between threads.
 */
#ifndef CQ_COMMAND_H
#define CQ_COMMAND_H

#include <stddef.h>

#include "base/errors.h" /* the schema check fills a cq_errors */
#include "cqrs/decider.h"

/* The decision's life and accessors (cq_decision_new, _free, _reset,
 * _count, _event, _refusal and cq_decided_event) are public: decider.h,
 * so that a domain's own unit tests can run its deciders. */

#endif
