/*
 * check.c -- is a cq_domain table usable? Run once on every domain a
 * module hands over (src/domain/module.c), before the engine sees it, so
 * that a mistake in a module is one clear line at start instead of a
 * crash or a strange answer later: a NULL where the engine calls a
 * function, a bound the schema check could never satisfy, a name the HTTP
 * API cannot carry, the same name listed twice.
 *
 * The rules are tabled in src/domain/README.md ("Checking a domain").
 * Lists are walked up to a bound (a list that lost its terminator is
 * refused as too long rather than read forever), schemas up to a nesting
 * depth. Everything here only reads the table: thread-safe.
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "domain/domain.h"

#define MAX_LIST 4096  /* commands, upcasters, categories, event types */
#define MAX_FIELDS 256 /* members of one schema level */
#define MAX_DEPTH 8    /* nested arrays of objects */
#define MAX_FIELD_NAME 64

static int fail(char *err, size_t errcap, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int fail(char *err, size_t errcap, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(err, errcap, fmt, ap);
    va_end(ap);
    return CQ_EINVAL;
}

/* 1 if s is 1..max bytes, each an ASCII letter, digit or one of extra. */
static int name_ok(const char *s, size_t max, const char *extra)
{
    size_t n;

    if (s == NULL)
        return 0;
    n = strlen(s);
    if (n == 0 || n > max)
        return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
              (c >= '0' && c <= '9') || strchr(extra, c) != NULL))
            return 0;
    }
    return 1;
}

/* s printed safely in a message: NULL shown as such, cut to 64. */
#define SHOW(s) 64, (s) == NULL ? "(null)" : (s)

static int check_fields(const cq_field *fields, const char *cmd,
                        const char *prefix, int depth, char *err,
                        size_t errcap);

static int check_field(const cq_field *f, const char *cmd, const char *path,
                       int depth, char *err, size_t errcap)
{
    char sub[300];

    switch (f->kind) {
    case CQ_FIELD_STRING:
        if (f->min < 0)
            return fail(err, errcap,
                        "command %s: schema: field %s: a string's min length "
                        "%lld is below 0",
                        cmd, path, (long long)f->min);
        if (f->chars != CQ_CHARS_TEXT && f->chars != CQ_CHARS_ID &&
            f->chars != CQ_CHARS_UPPER)
            return fail(err, errcap,
                        "command %s: schema: field %s: unknown charset %d", cmd,
                        path, (int)f->chars);
        break;
    case CQ_FIELD_INTEGER: break;
    case CQ_FIELD_ARRAY:
        if (f->min < 0)
            return fail(err, errcap,
                        "command %s: schema: field %s: an array's min count "
                        "%lld is below 0",
                        cmd, path, (long long)f->min);
        if (f->items == NULL)
            return fail(err, errcap,
                        "command %s: schema: field %s: an array needs items "
                        "(the fields of each element)",
                        cmd, path);
        break;
    default:
        return fail(err, errcap,
                    "command %s: schema: field %s: unknown kind %d", cmd, path,
                    (int)f->kind);
    }
    if (f->min > f->max)
        return fail(err, errcap,
                    "command %s: schema: field %s: min %lld is above max %lld",
                    cmd, path, (long long)f->min, (long long)f->max);
    if (f->kind != CQ_FIELD_ARRAY && f->items != NULL)
        return fail(err, errcap,
                    "command %s: schema: field %s: items is for arrays only",
                    cmd, path);
    if (f->kind != CQ_FIELD_ARRAY)
        return CQ_OK;
    if (depth >= MAX_DEPTH)
        return fail(err, errcap,
                    "command %s: schema: field %s: arrays nested deeper than "
                    "%d",
                    cmd, path, MAX_DEPTH);
    if (snprintf(sub, sizeof sub, "%s[]", path) >= (int)sizeof sub)
        return fail(err, errcap, "command %s: schema: field %s: path too long",
                    cmd, path);
    return check_fields(f->items, cmd, sub, depth + 1, err, errcap);
}

/* One level of a schema: fields[] up to CQ_FIELD_END. */
static int check_fields(const cq_field *fields, const char *cmd,
                        const char *prefix, int depth, char *err, size_t errcap)
{
    for (size_t i = 0; fields[i].kind != CQ_FIELD_END; i++) {
        const cq_field *f = &fields[i];
        char path[300];
        int rc;

        if (i >= MAX_FIELDS)
            return fail(err, errcap,
                        "command %s: schema%s%s: more than %d fields (is the "
                        "CQ_FIELD_END entry missing?)",
                        cmd, prefix[0] ? " of " : "", prefix, MAX_FIELDS);
        if (!name_ok(f->name, MAX_FIELD_NAME, "_-"))
            return fail(err, errcap,
                        "command %s: schema: field #%zu%s%s: the name must be "
                        "1-%d characters of [A-Za-z0-9_-], not '%.*s'",
                        cmd, i + 1, prefix[0] ? " of " : "", prefix,
                        MAX_FIELD_NAME, SHOW(f->name));
        if (snprintf(path, sizeof path, "%s%s%s", prefix, prefix[0] ? "." : "",
                     f->name) >= (int)sizeof path)
            return fail(err, errcap,
                        "command %s: schema: field path %s.%s is "
                        "too long",
                        cmd, prefix, f->name);
        for (size_t k = 0; k < i; k++)
            if (strcmp(fields[k].name, f->name) == 0)
                return fail(err, errcap,
                            "command %s: schema: field %s is listed twice", cmd,
                            path);
        rc = check_field(f, cmd, path, depth, err, errcap);
        if (rc != CQ_OK)
            return rc;
    }
    return CQ_OK;
}

static int check_command(const cq_command_def *c, size_t i, char *err,
                         size_t errcap)
{
    const cq_aggregate *a;

    if (!name_ok(c->type, 64, "_-"))
        return fail(err, errcap,
                    "command #%zu: the type must be 1-64 characters of "
                    "[A-Za-z0-9_-], not '%.*s'",
                    i + 1, SHOW(c->type));
    a = c->aggregate;
    if (a == NULL)
        return fail(err, errcap, "command %s: no aggregate", c->type);
    if (a->name == NULL || a->name[0] == '\0')
        return fail(err, errcap, "command %s: its aggregate has no name",
                    c->type);
    if (a->initial == NULL || a->evolve == NULL || a->clone == NULL ||
        a->free == NULL)
        return fail(err, errcap,
                    "command %s: aggregate %.*s lacks one of initial(), "
                    "evolve(), clone(), free()",
                    c->type, SHOW(a->name));
    if (c->stream_id == NULL || c->decide == NULL)
        return fail(err, errcap,
                    "command %s: stream_id() and decide() are required",
                    c->type);
    if (c->expect != CQ_EXPECT_ANY && c->expect != CQ_EXPECT_NEW &&
        c->expect != CQ_EXPECT_EXISTS)
        return fail(err, errcap,
                    "command %s: expect %d is none of CQ_EXPECT_ANY, "
                    "CQ_EXPECT_NEW, CQ_EXPECT_EXISTS",
                    c->type, (int)c->expect);
    if (c->schema == NULL)
        return fail(err, errcap,
                    "command %s: no schema (a body with no fields has a "
                    "schema of one CQ_FIELD_END entry)",
                    c->type);
    return check_fields(c->schema, c->type, "", 0, err, errcap);
}

/* A NULL-terminated list of names: each valid, none twice. */
static int check_names(const char *const *list, const char *what, size_t max,
                       const char *extra, const char *rule, char *err,
                       size_t errcap)
{
    if (list == NULL)
        return CQ_OK;
    for (size_t i = 0; list[i] != NULL; i++) {
        if (i >= MAX_LIST)
            return fail(err, errcap,
                        "more than %d %ss (is the NULL ending the list "
                        "missing?)",
                        MAX_LIST, what);
        if (!name_ok(list[i], max, extra))
            return fail(err, errcap, "%s '%.*s' is not %s", what, SHOW(list[i]),
                        rule);
        for (size_t k = 0; k < i; k++)
            if (strcmp(list[k], list[i]) == 0)
                return fail(err, errcap, "%s %s is listed twice", what,
                            list[i]);
    }
    return CQ_OK;
}

int cq_domain_check(const cq_domain *d, char *err, size_t errcap)
{
    int rc;

    if (errcap > 0)
        err[0] = '\0';
    if (d == NULL)
        return fail(err, errcap, "no domain");
    if (!name_ok(d->name, 63, "_-"))
        return fail(err, errcap,
                    "the domain's name must be 1-63 characters of "
                    "[A-Za-z0-9_-], not '%.*s'",
                    SHOW(d->name));
    for (size_t i = 0; d->commands != NULL && d->commands[i] != NULL; i++) {
        if (i >= MAX_LIST)
            return fail(err, errcap,
                        "more than %d commands (is the NULL ending the list "
                        "missing?)",
                        MAX_LIST);
        rc = check_command(d->commands[i], i, err, errcap);
        if (rc != CQ_OK)
            return rc;
        for (size_t k = 0; k < i; k++)
            if (strcmp(d->commands[k]->type, d->commands[i]->type) == 0)
                return fail(err, errcap, "command %s is defined twice",
                            d->commands[i]->type);
    }
    for (size_t i = 0; d->upcasters != NULL && d->upcasters[i].type != NULL;
         i++) {
        const cq_upcaster *u = &d->upcasters[i];
        if (i >= MAX_LIST)
            return fail(err, errcap,
                        "more than %d upcasters (is the {NULL} entry ending "
                        "the list missing?)",
                        MAX_LIST);
        if (!name_ok(u->type, 128, "_.:-"))
            return fail(err, errcap,
                        "upcaster #%zu: event type '%.*s' is not 1-128 "
                        "characters of [A-Za-z0-9_.:-]",
                        i + 1, SHOW(u->type));
        if (u->from < 1 || u->upcast == NULL)
            return fail(err, errcap,
                        "upcaster of %s from %d: needs from >= 1 and an "
                        "upcast() function",
                        u->type, u->from);
        for (size_t k = 0; k < i; k++)
            if (d->upcasters[k].from == u->from &&
                strcmp(d->upcasters[k].type, u->type) == 0)
                return fail(err, errcap,
                            "upcaster of %s from schema version %d is listed "
                            "twice",
                            u->type, u->from);
    }
    rc = check_names(d->categories, "stream category", 64, "_",
                     "1-64 characters of [A-Za-z0-9_] (a category is the part "
                     "of a stream id before its first '-')",
                     err, errcap);
    if (rc == CQ_OK)
        rc = check_names(d->event_types, "event type", 128, "_.:-",
                         "1-128 characters of [A-Za-z0-9_.:-]", err, errcap);
    return rc;
}
