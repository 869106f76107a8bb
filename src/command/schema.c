/*
 * schema.c -- the declarative shape check of command bodies
 * (cq_schema_check), step 1 of decider.h's protocol.
 *
 * A command body is checked against a cq_field list before any domain code
 * sees it, so deciders may assume types, bounds and charsets hold. The
 * check collects every problem it finds, not just the first, so a client
 * can fix its request in one round trip; each problem is a {field, message}
 * pair in a cq_errors list (src/base/errors.c), answered as problem+json
 * "errors" (docs/api.md, "Errors").
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
 * The list stores at most CQ_ERRORS_MAX errors and only counts the rest,
 * so a hostile 100,000-item array costs one pass over the body and no
 * memory per error.
 *
 * Threads: cq_schema_check has no state of its own.
 */
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/base.h"
#include "command/command.h"

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
