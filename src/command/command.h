/*
 * command.h -- engine-side access to what deciders produce and what
 * validation finds (the public half is include/cqrs/decider.h).
 *
 * cq_errors and cq_decision are plain heap objects owned by whoever called
 * *_new; they are not shared between threads.
 */
#ifndef CQ_COMMAND_H
#define CQ_COMMAND_H

#include <stddef.h>

#include "cqrs/decider.h"

/* ---- cq_errors ---- */

cq_errors *cq_errors_new(void);    /* NULL on out of memory */
void cq_errors_free(cq_errors *e); /* accepts NULL */

/* A new JSON array [{"field": ..., "message": ...}, ...] (new reference),
 * or NULL on out of memory. */
json_t *cq_errors_to_json(const cq_errors *e);

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

/* ---- upcasting ---- */

/* The first upcaster of domain for (type, schema_version), or NULL; see
 * cq_domain_upcast() in decider.h. Thread-safe. */
const cq_upcaster *cq_domain_upcaster(const cq_domain *domain, const char *type,
                                      int schema_version);

#endif
