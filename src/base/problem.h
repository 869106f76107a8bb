/*
 * problem.h -- RFC 9457 problem details ("application/problem+json").
 *
 * Every error answer of cqrsd is built here so that they all look alike:
 *   {"type": "urn:cqrsd:problem:<slug>", "title": ..., "status": N,
 *    "detail": ..., "errors": [{"field", "message"}]?}
 * The writer stores these texts in the command log, so a replayed error
 * is byte-for-byte the original.
 */
#ifndef CQ_PROBLEM_H
#define CQ_PROBLEM_H

#include <jansson.h>

#define CQ_PROBLEM_CONTENT_TYPE "application/problem+json"

/* The problem document as a compact JSON text (malloc'd; caller frees), or
 * NULL on out of memory. `slug` names the kind ("validation-failed"),
 * `detail` says what exactly was wrong (printf-style), `errors` is an
 * optional array of field errors whose reference is taken over (may be
 * NULL). Thread-safe. */
char *cq_problem_text(int status, const char *slug, json_t *errors,
                      const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Standard reason phrase for an HTTP status ("Not Found"). */
const char *cq_http_reason(int status);

#endif
