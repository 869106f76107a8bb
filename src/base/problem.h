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
 * NULL on out of memory. `slug` names the kind ("validation-failed");
 * the detail, formatted from fmt (printf-style), says what exactly was
 * wrong: it is cut to 1023 bytes, and if it is not valid UTF-8 (client
 * bytes, or a cut inside a character) its non-ASCII bytes become '?'.
 * `errors` is an optional array of field errors whose reference is taken
 * over, also on failure (may be NULL). slug and fmt's arguments are
 * borrowed for the call. Thread-safe. */
char *cq_problem_text(int status, const char *slug, json_t *errors,
                      const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Standard reason phrase for an HTTP status ("Not Found"); "Error" for a
 * status it does not know. Static, never NULL. Thread-safe. */
const char *cq_http_reason(int status);

#endif
