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

/* ---- cq_decision ---- */

typedef struct cq_decided_event {
    const char *type; /* owned by the decision */
    int schema_version;
    json_t *data; /* owned by the decision (one reference) */
} cq_decided_event;

/* A new, empty decision, owned by the caller (cq_decision_free); NULL on
 * out of memory. */
cq_decision *cq_decision_new(void);
/* Free d and the events it holds; accepts NULL. */
void cq_decision_free(cq_decision *d);

/* Forget emitted events and refusal so the decision can be reused (the
 * writer keeps one per thread). Cannot fail; accepts NULL. */
void cq_decision_reset(cq_decision *d);

/* Number of events emitted since the last reset; 0 for NULL. */
size_t cq_decision_count(const cq_decision *d);
/* The i-th emitted event, or NULL if i >= cq_decision_count(d). Borrowed:
 * valid until reset/free. */
const cq_decided_event *cq_decision_event(const cq_decision *d, size_t i);
/* The refusal message (borrowed: valid until reset/free), or NULL if
 * decide() did not refuse (or d is NULL). */
const char *cq_decision_refusal(const cq_decision *d);

#endif
