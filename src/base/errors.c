/*
 * errors.c -- the field-error list (cq_errors): the {field, message} pairs
 * a request check finds, answered as the problem+json "errors" array
 * (docs/api.md, "Errors"). Command validation (command/schema.c), raw
 * appends and query parameters (src/http) all build one.
 *
 * Error cap: at most CQ_ERRORS_MAX errors are stored; later ones are only
 * counted, so a hostile 100,000-item array costs one pass over the body and
 * no memory per error. cq_errors_to_json() then ends with one entry saying
 * how many more were found.
 *
 * Threads: a cq_errors is owned by one thread at a time.
 */
#include "base/errors.h"

#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/base.h"

#define CQ_ERRORS_MAX 50

typedef struct field_error {
    char *field;
    char *message;
} field_error;

struct cq_errors {
    field_error items[CQ_ERRORS_MAX]; /* the first `stored` are set */
    int stored;
    int total; /* every add, stored or not (capped, out of memory) */
};

/* A new, empty error list; NULL on out of memory. Free with
 * cq_errors_free(). */
cq_errors *cq_errors_new(void)
{
    return calloc(1, sizeof(cq_errors));
}

/* Free `e` and everything it recorded; accepts NULL. */
void cq_errors_free(cq_errors *e)
{
    if (e == NULL)
        return;
    for (int i = 0; i < e->stored; i++) {
        free(e->items[i].field);
        free(e->items[i].message);
    }
    free(e);
}

/* Replace each byte that does not belong to a well-formed UTF-8 sequence
 * with '?', so that every stored field and message can go into JSON (a
 * path may be cut in the middle of a character, a message may quote
 * bytes from a request). */
static void scrub_utf8(char *s)
{
    size_t len = strlen(s), i = 0;

    while (i < len) {
        unsigned char c = (unsigned char)s[i];
        size_t n = c < 0x80                 ? 1
                   : c >= 0xc2 && c <= 0xdf ? 2
                   : c >= 0xe0 && c <= 0xef ? 3
                   : c >= 0xf0 && c <= 0xf4 ? 4
                                            : 0;
        if (n > 0 && n <= len - i && cq_utf8_valid(s + i, n)) {
            i += n;
        } else {
            s[i] = '?';
            i++;
        }
    }
}

/* See decider.h. Beyond CQ_ERRORS_MAX, or when memory runs out, the error
 * is counted but not stored. A NULL `e` is ignored; a NULL field is "". */
void cq_errors_add(cq_errors *e, const char *field, const char *fmt, ...)
{
    field_error fe = {NULL, NULL};
    va_list ap;

    if (e == NULL)
        return;
    if (e->total < INT_MAX)
        e->total++;
    if (e->stored >= CQ_ERRORS_MAX)
        return;
    fe.field = strdup(field != NULL ? field : "");
    va_start(ap, fmt);
    if (vasprintf(&fe.message, fmt, ap) < 0)
        fe.message = NULL;
    va_end(ap);
    if (fe.field == NULL || fe.message == NULL) {
        free(fe.field);
        free(fe.message);
        return;
    }
    scrub_utf8(fe.field);
    scrub_utf8(fe.message);
    e->items[e->stored++] = fe;
}

/* See decider.h: the number of problems found, including those past the
 * cap or lost to out of memory. 0 for NULL. */
int cq_errors_count(const cq_errors *e)
{
    return e != NULL ? e->total : 0;
}

/* See errors.h. The stored errors in the order they were added, then, if
 * some were not stored, {"field": "", "message": "N more errors not
 * shown"}. */
json_t *cq_errors_to_json(const cq_errors *e)
{
    json_t *arr = json_array();

    if (arr == NULL || e == NULL)
        return arr;
    for (int i = 0; i < e->stored; i++) {
        json_t *o = json_pack("{s:s, s:s}", "field", e->items[i].field,
                              "message", e->items[i].message);
        if (o == NULL || json_array_append_new(arr, o) != 0)
            goto fail;
    }
    if (e->total > e->stored) {
        char msg[64];
        int more = e->total - e->stored;
        json_t *o;

        snprintf(msg, sizeof msg, "%d more error%s not shown", more,
                 more == 1 ? "" : "s");
        o = json_pack("{s:s, s:s}", "field", "", "message", msg);
        if (o == NULL || json_array_append_new(arr, o) != 0)
            goto fail;
    }
    return arr;
fail:
    json_decref(arr);
    return NULL;
}
