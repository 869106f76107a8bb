/*
 * errors.h -- the engine side of the field-error list (cq_errors), whose
 * public half (cq_errors_new, _free, _add, _count) is in
 * include/cqrs/decider.h.
 * A request check collects every {field, message} it finds; the HTTP layer
 * answers them as the problem+json "errors" array.
 *
 * The first 50 errors are stored, later ones only counted (so a hostile
 * body costs no memory per error).
 *
 * A cq_errors is a plain heap object owned by whoever called
 * cq_errors_new(); it is not shared between threads.
 */
#ifndef CQ_BASE_ERRORS_H
#define CQ_BASE_ERRORS_H

#include <jansson.h>

#include "cqrs/decider.h"

/* cq_errors_new and cq_errors_free are public (decider.h), for a
 * domain's unit tests of validate(). */

/* A new JSON array [{"field": ..., "message": ...}, ...] (new reference,
 * owned by the caller), in the order the errors were added; when some were
 * only counted it ends with {"field": "", "message": "N more errors not
 * shown"}. NULL on out of memory; an empty array for a NULL `e`. `e` is
 * only read (borrowed for the call). */
json_t *cq_errors_to_json(const cq_errors *e);

#endif
