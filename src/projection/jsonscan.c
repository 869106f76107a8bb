/*
 * jsonscan.c -- a quick, allocation-free look at an event's data text
 * (see jsonscan.h for the contract: a strict subset of what jansson
 * accepts; anything unsure is left to jansson).
 *
 * A recursive descent over the text with a depth limit. Every object's
 * keys are compared pairwise for duplicates (jansson's
 * JSON_REJECT_DUPLICATES), at every level; an object with more than
 * MAX_KEYS members is left to jansson.
 */
#include "projection/jsonscan.h"

#include <string.h>

#include <jansson.h>

enum { MAX_DEPTH = 16, MAX_KEYS = CQ_SCAN_MEMBERS };

typedef struct scanner {
    const char *p;
} scanner;

static void skip_ws(scanner *s)
{
    while (*s->p == ' ' || *s->p == '\t' || *s->p == '\n' || *s->p == '\r')
        s->p++;
}

/* A string at s->p ('"'): printable ASCII without escapes only. */
static int scan_string(scanner *s, const char **str, size_t *len)
{
    const char *b = ++s->p;

    while (*s->p >= 0x20 && *s->p < 0x7f && *s->p != '"' && *s->p != '\\')
        s->p++;
    if (*s->p != '"')
        return 0; /* escape, control byte, non-ASCII or the end: jansson */
    *str = b;
    *len = (size_t)(s->p - b);
    s->p++;
    return 1;
}

/* What may follow a scalar: the end of the value. */
static int delimiter(char c)
{
    return c == ',' || c == '}' || c == ']' || c == ' ' || c == '\t' ||
           c == '\n' || c == '\r' || c == '\0';
}

/* An integer: 0 or [1-9][0-9]{0,17}, optionally negative (not -0), not
 * followed by a fraction or an exponent (reals are left to jansson). */
static int scan_int(scanner *s, int64_t *out)
{
    int neg = 0, digits = 0;
    int64_t v = 0;

    if (*s->p == '-') {
        neg = 1;
        s->p++;
    }
    if (*s->p == '0') {
        s->p++;
        if (neg)
            return 0;
        *out = 0;
        return delimiter(*s->p);
    }
    while (*s->p >= '0' && *s->p <= '9') {
        if (++digits > 18)
            return 0;
        v = v * 10 + (*s->p - '0');
        s->p++;
    }
    if (digits == 0 || !delimiter(*s->p))
        return 0;
    *out = neg ? -v : v;
    return 1;
}

static int literal(scanner *s, const char *word)
{
    size_t n = strlen(word);

    if (strncmp(s->p, word, n) != 0 || !delimiter(s->p[n]))
        return 0;
    s->p += n;
    return 1;
}

static int scan_value(scanner *s, int depth, cq_scan_member *m);

/* An object at s->p ('{'); with top set, its members go to top. */
static int scan_object(scanner *s, int depth, cq_scan *top)
{
    const char *keys[MAX_KEYS];
    size_t lens[MAX_KEYS];
    int n = 0;

    if (depth > MAX_DEPTH)
        return 0;
    s->p++;
    skip_ws(s);
    if (*s->p == '}') {
        s->p++;
        goto done;
    }
    for (;;) {
        cq_scan_member m;

        if (*s->p != '"' || n == MAX_KEYS ||
            !scan_string(s, &keys[n], &lens[n]))
            return 0;
        for (int k = 0; k < n; k++)
            if (lens[k] == lens[n] && memcmp(keys[k], keys[n], lens[n]) == 0)
                return 0; /* a duplicate: jansson refuses it */
        skip_ws(s);
        if (*s->p != ':')
            return 0;
        s->p++;
        skip_ws(s);
        memset(&m, 0, sizeof m);
        if (!scan_value(s, depth, &m))
            return 0;
        if (top != NULL) {
            m.key = keys[n];
            m.keylen = lens[n];
            top->m[n] = m;
        }
        n++;
        skip_ws(s);
        if (*s->p == '}') {
            s->p++;
            break;
        }
        if (*s->p != ',')
            return 0;
        s->p++;
        skip_ws(s);
    }
done:
    if (top != NULL)
        top->n = n;
    return 1;
}

static int scan_array(scanner *s, int depth)
{
    cq_scan_member m;

    if (depth > MAX_DEPTH)
        return 0;
    s->p++;
    skip_ws(s);
    if (*s->p == ']') {
        s->p++;
        return 1;
    }
    for (;;) {
        if (!scan_value(s, depth, &m))
            return 0;
        skip_ws(s);
        if (*s->p == ']') {
            s->p++;
            return 1;
        }
        if (*s->p != ',')
            return 0;
        s->p++;
        skip_ws(s);
    }
}

/* One value at s->p (no leading blanks), described in m. */
static int scan_value(scanner *s, int depth, cq_scan_member *m)
{
    switch (*s->p) {
    case '"':
        m->kind = CQ_SCAN_STRING;
        return scan_string(s, &m->str, &m->len);
    case '{': m->kind = CQ_SCAN_NESTED; return scan_object(s, depth + 1, NULL);
    case '[': m->kind = CQ_SCAN_NESTED; return scan_array(s, depth + 1);
    case 't': m->kind = CQ_SCAN_INT; m->i = 1; return literal(s, "true");
    case 'f': m->kind = CQ_SCAN_INT; m->i = 0; return literal(s, "false");
    case 'n': m->kind = CQ_SCAN_NULL; return literal(s, "null");
    default: m->kind = CQ_SCAN_INT; return scan_int(s, &m->i);
    }
}

int cq_json_scan(const char *text, cq_scan *out)
{
    scanner s = {text};

    out->n = 0;
    if (text == NULL)
        return 0;
    skip_ws(&s);
    if (*s.p != '{' || !scan_object(&s, 1, out))
        return 0;
    skip_ws(&s);
    return *s.p == '\0';
}

const cq_scan_member *cq_scan_find(const cq_scan *s, const char *key,
                                   size_t keylen)
{
    for (int k = 0; k < s->n; k++)
        if (s->m[k].keylen == keylen && memcmp(s->m[k].key, key, keylen) == 0)
            return &s->m[k];
    return NULL;
}

/* ---- building the document of a scanned text ------------------------- */

static json_t *build_value(scanner *s);

static json_t *build_string(scanner *s)
{
    const char *str;
    size_t len;

    scan_string(s, &str, &len); /* known good: the scan accepted it */
    return json_stringn_nocheck(str, len);
}

static json_t *build_object(scanner *s)
{
    json_t *o = json_object();

    s->p++;
    skip_ws(s);
    while (o != NULL && *s->p == '"') {
        const char *key;
        size_t keylen;
        json_t *v;

        scan_string(s, &key, &keylen);
        skip_ws(s);
        s->p++; /* ':' */
        skip_ws(s);
        v = build_value(s);
        if (v == NULL || json_object_setn_new_nocheck(o, key, keylen, v) != 0) {
            json_decref(o);
            return NULL; /* json_object_setn_new_nocheck took v */
        }
        skip_ws(s);
        if (*s->p == ',') {
            s->p++;
            skip_ws(s);
        }
    }
    s->p++; /* '}' */
    return o;
}

static json_t *build_array(scanner *s)
{
    json_t *a = json_array();

    s->p++;
    skip_ws(s);
    while (a != NULL && *s->p != ']') {
        json_t *v = build_value(s);
        if (v == NULL || json_array_append_new(a, v) != 0) {
            json_decref(a);
            return NULL;
        }
        skip_ws(s);
        if (*s->p == ',') {
            s->p++;
            skip_ws(s);
        }
    }
    s->p++; /* ']' */
    return a;
}

static json_t *build_value(scanner *s)
{
    int64_t i = 0;

    switch (*s->p) {
    case '"': return build_string(s);
    case '{': return build_object(s);
    case '[': return build_array(s);
    case 't': s->p += 4; return json_true();
    case 'f': s->p += 5; return json_false();
    case 'n': s->p += 4; return json_null();
    default: scan_int(s, &i); return json_integer((json_int_t)i);
    }
}

json_t *cq_json_build(const char *text)
{
    scanner s = {text};

    skip_ws(&s);
    return build_object(&s);
}
