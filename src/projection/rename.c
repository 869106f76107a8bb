/*
 * rename.c -- identifier renaming in SQL text (see rename.h for the rules).
 *
 * One pass over the text. Bytes are not copied one at a time: `run` marks
 * the start of the bytes not yet written, and only a renamed token flushes
 * the run before it and writes its replacement. Everything the lexer skips
 * (literals, comments, numbers, parameters, punctuation) is thus copied
 * byte for byte by construction.
 *
 * The `.` rule needs the two significant tokens before an identifier:
 * `prev` is the kind of the last one (whitespace and comments are not
 * tokens), and when it is a dot, `dot_after_schema` says whether the token
 * before that dot was `main` or `temp`.
 */
#include "projection/rename.h"

#include <assert.h>
#include <string.h>

#include "base/strbuf.h"

/* The kind of the last significant token. */
enum prev_kind {
    PREV_OTHER,  /* start of text, punctuation, literal, number, parameter */
    PREV_IDENT,  /* an identifier other than main/temp */
    PREV_SCHEMA, /* `main` or `temp`, bare or quoted */
    PREV_DOT     /* `.` */
};

/* ---- character classes --------------------------------------------------- */

static int is_space(unsigned char c)
{
    return c == ' ' || (c >= '\t' && c <= '\r');
}

static int is_digit(unsigned char c)
{
    return c >= '0' && c <= '9';
}

static int is_alpha(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z');
}

/* Bytes >= 0x80 are letters, as in SQLite: UTF-8 names pass whole. */
static int is_ident_start(unsigned char c)
{
    return is_alpha(c) || c == '_' || c >= 0x80;
}

static int is_ident(unsigned char c)
{
    return is_ident_start(c) || is_digit(c) || c == '$';
}

/* What follows a digit in one number token: 1e5, 0x1F, 3.14, 1_000. */
static int is_number(unsigned char c)
{
    return is_alpha(c) || is_digit(c) || c == '_' || c == '.';
}

static int lower(unsigned char c)
{
    return c >= 'A' && c <= 'Z' ? c + ('a' - 'A') : c;
}

/* ---- tokens ---------------------------------------------------------------
 */

/* The end of the literal or quoted identifier whose opening quote is at p:
 * just past its closing quote, or NULL if the text ends first. A doubled
 * quote is an escaped one; [...] has no escapes and closes with `]`. */
static const char *quoted_end(const char *p)
{
    char close = *p == '[' ? ']' : *p;

    for (p++; *p != '\0'; p++) {
        if (*p != close)
            continue;
        if (close != ']' && p[1] == close) {
            p++; /* an escaped quote */
            continue;
        }
        return p + 1;
    }
    return NULL;
}

/* Whether the identifier raw[0..len) equals name, ASCII case-insensitively.
 * quote is the quote character whose doubled form is an escape inside raw
 * ('"' or '`'), or 0 (bare or [...]: raw is the name as it is). */
static int ident_eq(const char *raw, size_t len, char quote, const char *name)
{
    size_t i = 0;

    for (; i < len; i++, name++) {
        if (quote != 0 && raw[i] == quote)
            i++; /* the first of a doubled quote; compare the second */
        if (*name == '\0' ||
            lower((unsigned char)raw[i]) != lower((unsigned char)*name))
            return 0;
    }
    return *name == '\0';
}

/* The first map entry whose `from` is the identifier raw[0..len), or NULL. */
static const cq_rename *lookup(const char *raw, size_t len, char quote,
                               const cq_rename *map, size_t n)
{
    if (len == 0)
        return NULL; /* "" or [] never matches; an empty `from` neither */
    for (size_t i = 0; i < n; i++)
        if (ident_eq(raw, len, quote, map[i].from))
            return &map[i];
    return NULL;
}

/* Write `to` as an identifier opened by `open` (0: bare). */
static void put_ident(cq_strbuf *out, char open, const char *to)
{
    char close;

    if (open == 0) {
        cq_strbuf_puts(out, to);
        return;
    }
    if (open == '[' && strchr(to, ']') != NULL)
        open = '"'; /* [..] cannot hold a `]`; "..." can */
    close = open == '[' ? ']' : open;
    cq_strbuf_add(out, &open, 1);
    for (const char *s = to; *s != '\0'; s++) {
        cq_strbuf_add(out, s, 1);
        if (open != '[' && *s == close)
            cq_strbuf_add(out, s, 1); /* double it */
    }
    cq_strbuf_add(out, &close, 1);
}

/* ---- the pass ------------------------------------------------------------ */

char *cq_sql_rename(const char *sql, const cq_rename *map, size_t n)
{
    cq_strbuf out = CQ_STRBUF_INIT;
    const char *p = sql, *run = sql;
    enum prev_kind prev = PREV_OTHER;
    int dot_after_schema = 0;

    assert(sql != NULL && (map != NULL || n == 0));
    while (*p != '\0') {
        unsigned char c = (unsigned char)*p;
        const char *start = p, *raw, *end;
        size_t len;
        char quote, open;

        if (is_space(c)) {
            p++;
            continue;
        }
        if (c == '-' && p[1] == '-') {
            p += strcspn(p, "\n"); /* the newline is whitespace */
            continue;
        }
        if (c == '/' && p[1] == '*') {
            end = strstr(p + 2, "*/");
            p = end != NULL ? end + 2 : p + strlen(p);
            continue;
        }
        if (c == '\'' || ((c == 'x' || c == 'X') && p[1] == '\'')) {
            end = quoted_end(c == '\'' ? p : p + 1);
            p = end != NULL ? end : p + strlen(p);
            prev = PREV_OTHER;
            continue;
        }
        if (is_digit(c)) {
            while (is_number((unsigned char)*p))
                p++;
            prev = PREV_OTHER;
            continue;
        }
        if (c == ':' || c == '@' || c == '$' || c == '?') {
            for (p++; is_ident((unsigned char)*p); p++)
                ;
            prev = PREV_OTHER;
            continue;
        }
        if (c == '.') {
            dot_after_schema = prev == PREV_SCHEMA;
            prev = PREV_DOT;
            p++;
            continue;
        }

        /* An identifier, bare or quoted: raw[0..len) is its content. */
        if (c == '"' || c == '`' || c == '[') {
            end = quoted_end(p);
            if (end == NULL) {
                p += strlen(p); /* unclosed: copied as it is */
                continue;
            }
            open = (char)c;
            quote = c == '[' ? 0 : (char)c;
            raw = p + 1;
            len = (size_t)(end - 1 - raw);
        } else if (is_ident_start(c)) {
            for (end = p + 1; is_ident((unsigned char)*end); end++)
                ;
            open = quote = 0;
            raw = p;
            len = (size_t)(end - p);
        } else {
            p++; /* punctuation */
            prev = PREV_OTHER;
            continue;
        }
        p = end;

        if (prev != PREV_DOT || dot_after_schema) {
            const cq_rename *r = lookup(raw, len, quote, map, n);
            if (r != NULL) {
                cq_strbuf_add(&out, run, (size_t)(start - run));
                put_ident(&out, open, r->to);
                run = end;
            }
        }
        prev = ident_eq(raw, len, quote, "main") ||
                       ident_eq(raw, len, quote, "temp")
                   ? PREV_SCHEMA
                   : PREV_IDENT;
    }
    cq_strbuf_add(&out, run, (size_t)(p - run));
    return cq_strbuf_take(&out);
}
