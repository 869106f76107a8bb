/*
 * schema.c -- validation errors (cq_errors) and the declarative shape check
 * of command bodies (cq_schema_check), step 1 of decider.h's protocol.
 *
 * A command body is checked against a cq_field list before any domain code
 * sees it, so deciders may assume types, bounds and charsets hold. The
 * check collects every problem it finds, not just the first, so a client
 * can fix its request in one round trip; each problem is a {field, message}
 * pair answered as problem+json "errors" (API.md, "Errors").
 *
 * Rules, in the order they are checked for each field:
 *
 *   | kind    | wrong type          | bounds (inclusive)  | also             |
 *   |---------|---------------------|---------------------|------------------|
 *   | STRING  | "must be a string"  | length in characters| UTF-8, charset   |
 *   | INTEGER | "must be an integer"| value               | reals, booleans  |
 *   |         |                     |                     | are not integers |
 *   | ARRAY   | "must be an array"  | number of items     | each item is an  |
 *   |         |                     |                     | object checked   |
 *   |         |                     |                     | against `items`  |
 *
 * A member that is absent or JSON null counts as missing: "is required"
 * unless the field is optional. A member not in the list is an "unknown
 * field". Paths are "name", "prefix.name" and "items[3].quantity".
 *
 * Error cap: at most CQ_ERRORS_MAX errors are stored; later ones are only
 * counted, so a hostile 100,000-item array costs one pass over the body and
 * no memory per error. cq_errors_to_json() then ends with one entry saying
 * how many more were found.
 *
 * Threads: cq_errors is owned by one thread at a time; cq_schema_check has
 * no state of its own.
 */
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/base.h"
#include "command/command.h"

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

/* See command.h. The stored errors in the order they were added, then, if
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

/* ---- the shape check ----------------------------------------------------- */

/* A path for error messages: "name", "prefix.name" or "prefix[i]". Long
 * paths are truncated; they only label messages. */
typedef struct path {
    char s[256];
} path;

/* After snprintf returned n into p: mark a cut path with "...". */
static void path_done(path *p, int n)
{
    if (n < 0 || (size_t)n >= sizeof p->s)
        memcpy(p->s + sizeof p->s - 4, "...", 4);
}

static void path_member(path *p, const char *prefix, const char *name)
{
    if (prefix == NULL || prefix[0] == '\0')
        path_done(p, snprintf(p->s, sizeof p->s, "%s", name));
    else
        path_done(p, snprintf(p->s, sizeof p->s, "%s.%s", prefix, name));
}

static void path_index(path *p, const char *prefix, size_t i)
{
    path_done(p, snprintf(p->s, sizeof p->s, "%s[%zu]", prefix, i));
}

/* "between 1 and 10", "at least 1", "at most 10" or "exactly 3", followed
 * by `unit` (" characters long", " items", ""). */
static void add_bounds_error(cq_errors *errs, const char *field,
                             const char *what, int64_t min, int64_t max,
                             const char *unit)
{
    if (min == max)
        cq_errors_add(errs, field, "%s exactly %" PRId64 "%s", what, min, unit);
    else if (max == INT64_MAX)
        cq_errors_add(errs, field, "%s at least %" PRId64 "%s", what, min,
                      unit);
    else if (min == INT64_MIN)
        cq_errors_add(errs, field, "%s at most %" PRId64 "%s", what, max, unit);
    else
        cq_errors_add(errs, field, "%s between %" PRId64 " and %" PRId64 "%s",
                      what, min, max, unit);
}

/* 1 if byte c is allowed by an ASCII-only charset. */
static int ascii_allowed(cq_charset cs, unsigned char c)
{
    if (cs == CQ_CHARS_UPPER)
        return c >= 'A' && c <= 'Z';
    /* CQ_CHARS_ID */
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
           (c >= '0' && c <= '9') || c == '_' || c == '-';
}

static void check_string(const cq_field *f, const json_t *v, const char *field,
                         cq_errors *errs)
{
    const char *s;
    size_t len, chars = 0;
    int bad_chars = 0;

    if (!json_is_string(v)) {
        cq_errors_add(errs, field, "must be a string");
        return;
    }
    s = json_string_value(v);
    len = json_string_length(v);
    /* jansson checks UTF-8 when it parses, but a json_t may come from
     * elsewhere; never count characters of invalid text. */
    if (!cq_utf8_valid(s, len)) {
        cq_errors_add(errs, field, "must be valid UTF-8");
        return;
    }
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if ((c & 0xc0) != 0x80)
            chars++; /* a byte that starts a character */
        if (f->chars == CQ_CHARS_TEXT) {
            if (c < 0x20 || c == 0x7f)
                bad_chars = 1;
        } else if (!ascii_allowed(f->chars, c)) {
            bad_chars = 1;
        }
    }
    if ((int64_t)chars < f->min || (int64_t)chars > f->max)
        add_bounds_error(errs, field, "must be", f->min, f->max,
                         f->min == f->max && f->min == 1 ? " character long"
                                                         : " characters long");
    if (bad_chars) {
        switch (f->chars) {
        case CQ_CHARS_ID:
            cq_errors_add(errs, field,
                          "must contain only letters A-Z and a-z, digits, "
                          "'_' and '-'");
            break;
        case CQ_CHARS_UPPER:
            cq_errors_add(errs, field,
                          "must contain only upper-case letters A-Z");
            break;
        default:
            cq_errors_add(errs, field, "must not contain control characters");
            break;
        }
    }
}

static void check_integer(const cq_field *f, const json_t *v, const char *field,
                          cq_errors *errs)
{
    json_int_t n;

    /* json_is_integer is false for reals (1.0, 1e3) and booleans. */
    if (!json_is_integer(v)) {
        cq_errors_add(errs, field, "must be an integer");
        return;
    }
    n = json_integer_value(v);
    if (n < f->min || n > f->max)
        add_bounds_error(errs, field, "must be", f->min, f->max, "");
}

static void check_array(const cq_field *f, const json_t *v, const char *field,
                        cq_errors *errs)
{
    size_t n, i;
    const json_t *item;

    if (!json_is_array(v)) {
        cq_errors_add(errs, field, "must be an array");
        return;
    }
    n = json_array_size(v);
    if ((int64_t)n < f->min || (int64_t)n > f->max)
        add_bounds_error(errs, field, "must have", f->min, f->max,
                         f->min == f->max && f->min == 1 ? " item" : " items");
    if (f->items == NULL)
        return;
    json_array_foreach (v, i, item) {
        path p;
        path_index(&p, field, i);
        cq_schema_check(f->items, item, p.s, errs);
    }
}

/* See decider.h. `prefix` may be NULL (same as ""). */
int cq_schema_check(const cq_field *fields, const json_t *body,
                    const char *prefix, cq_errors *errs)
{
    int before = cq_errors_count(errs);
    const char *key;
    size_t keylen;
    const json_t *v;
    path p;

    if (prefix == NULL)
        prefix = "";
    if (!json_is_object(body)) {
        cq_errors_add(errs, prefix, "must be an object");
        return cq_errors_count(errs) - before;
    }

    for (const cq_field *f = fields; f->kind != CQ_FIELD_END; f++) {
        path_member(&p, prefix, f->name);
        v = json_object_get(body, f->name);
        if (v == NULL || json_is_null(v)) {
            if (!f->optional)
                cq_errors_add(errs, p.s, "is required");
            continue;
        }
        switch (f->kind) {
        case CQ_FIELD_STRING: check_string(f, v, p.s, errs); break;
        case CQ_FIELD_INTEGER: check_integer(f, v, p.s, errs); break;
        case CQ_FIELD_ARRAY: check_array(f, v, p.s, errs); break;
        default: break;
        }
    }

    /* Members the list does not name, in the body's order. Keys are
     * compared with their length: a key may hold a NUL byte. */
    json_object_keylen_foreach ((json_t *)body, key, keylen, v) {
        const cq_field *f = fields;
        while (f->kind != CQ_FIELD_END && !(strlen(f->name) == keylen &&
                                            memcmp(f->name, key, keylen) == 0))
            f++;
        if (f->kind == CQ_FIELD_END) {
            path_member(&p, prefix, key);
            cq_errors_add(errs, p.s, "unknown field");
        }
    }
    return cq_errors_count(errs) - before;
}
