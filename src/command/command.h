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

cq_decision *cq_decision_new(void);    /* NULL on out of memory */
void cq_decision_free(cq_decision *d); /* accepts NULL */

/* Forget emitted events and refusal so the decision can be reused. */
void cq_decision_reset(cq_decision *d);

size_t cq_decision_count(const cq_decision *d);
/* The i-th emitted event (borrowed; valid until reset/free). */
const cq_decided_event *cq_decision_event(const cq_decision *d, size_t i);
/* The refusal message, or NULL if decide() did not refuse. */
const char *cq_decision_refusal(const cq_decision *d);

#endif
