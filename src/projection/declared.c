/*
 * declared.c -- the parser of declared projections (`.sql` files) and the
 * helpers that bind event fields and request values to their statements.
 * The user's reference is docs/declared-sql.md; this file holds the rules.
 *
 * The parser runs in two layers, one pass over the text:
 *
 *   1. lex_next() cuts the text into items: a DIRECTIVE (a line whose
 *      first non-blank characters are `--`, blanks, `@`) or a STATEMENT
 *      (from its first token up to its `;`, with the positions of its
 *      `:name` parameters). It knows SQL's lexical rules -- '...' strings
 *      with '' escapes, "..." identifiers, -- and block comments, `::`
 *      casts -- so a `;`, `:` or `-- @` inside them means nothing.
 *   2. parse() feeds the items to a small state machine over the parts
 *      of the file:
 *
 *        | section | entered by                | allows                   |
 *        |---------|---------------------------|--------------------------|
 *        | HEADER  | the start                 | @projection (first),     |
 *        |         |                           | @version, @mode          |
 *        | DDL     | the first statement       | CREATE TABLE/[UNIQUE]    |
 *        |         |                           | INDEX statements         |
 *        | HANDLER | each @on                  | INSERT/UPDATE/DELETE     |
 *        | QUERY   | each @query               | @param, @stream, @result |
 *        |         |                           | then SELECTs (@section)  |
 *
 *      HEADER ends at the first statement, @on or @query (then @version
 *      must have been seen). A HANDLER or QUERY that ends is checked whole
 *      (end_block): a block without statements, a @stream naming an
 *      undeclared param, a page query whose limit is not an int.
 *
 * Only the first error is kept, as "LINE: message"; every step returns -1
 * once it has recorded one, and the caller unwinds. The cq_declared under
 * construction is freeable at every moment (each array's count covers
 * exactly its zero-initialised or finished elements), so the only error
 * path is cq_declared_free().
 *
 * Portability is checked where it is cheap and certain: `?`, `@`, `$`
 * (both $N and dollar quoting), E'...' strings, nested block comments
 * (PostgreSQL nests them, SQLite does not), `INSERT OR ...`. Everything
 * else is left to the two backends at prepare time.
 *
 * Threads: no global state. A parse touches only its arguments; a parsed
 * cq_declared is never written again and may be shared by readers.
 */
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/base.h"
#include "base/strbuf.h"
#include "cqrs/cqrs.h"
#include "projection/declared.h"

#define NAME_MAX_LEN 63    /* projection, query, param, section names */
#define TYPE_MAX_LEN 128   /* event types */
#define PARAM_MAX_LEN 256  /* a parameter's name with its path */
#define INDEX_MAX_DIGITS 9 /* [N] in paths */
#define MAX_WORDS 8        /* words of one directive line */

/* ---- character classes --------------------------------------------------- */

static int is_alpha(int c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z');
}

static int is_digit(int c)
{
    return c >= '0' && c <= '9';
}

static int is_ident_start(int c)
{
    return is_alpha(c) || c == '_';
}

static int is_ident(int c)
{
    return is_ident_start(c) || is_digit(c);
}

static int is_blank(int c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\f' || c == '\v';
}

/* Characters of event types and of the literal part of stream templates. */
static int is_type_char(int c)
{
    return is_ident(c) || c == '.' || c == ':' || c == '-';
}

/* [a-z][a-z0-9_]{0,62}: projection, query, param, section, page field. */
static int valid_name(const char *s, size_t n)
{
    if (n == 0 || n > NAME_MAX_LEN || !(s[0] >= 'a' && s[0] <= 'z'))
        return 0;
    for (size_t i = 1; i < n; i++)
        if (!((s[i] >= 'a' && s[i] <= 'z') || is_digit(s[i]) || s[i] == '_'))
            return 0;
    return 1;
}

/* [A-Za-z_][A-Za-z0-9_]{0,62}: a column name. */
static int valid_column(const char *s, size_t n)
{
    if (n == 0 || n > NAME_MAX_LEN || !is_ident_start(s[0]))
        return 0;
    for (size_t i = 1; i < n; i++)
        if (!is_ident(s[i]))
            return 0;
    return 1;
}

static int word_is(const char *w, size_t n, const char *kw)
{
    return strlen(kw) == n && strncasecmp(w, kw, n) == 0;
}

static int same(const char *a, const char *b, size_t blen)
{
    return strlen(a) == blen && memcmp(a, b, blen) == 0;
}

/* The longest prefix of s[0..n) of at most max bytes that ends on a
 * character boundary (s is valid UTF-8), to quote input in messages. */
static int clip(const char *s, size_t n, size_t max)
{
    if (n > max) {
        n = max;
        while (n > 0 && ((unsigned char)s[n] & 0xc0) == 0x80)
            n--;
    }
    return (int)n;
}

/* Arguments for "%.*s" quoting input s[0..n) in a message. */
#define QUOTE(s, n) clip((s), (n), 64), (s)

/* Decimal int64 with an optional '-': 0, or -1 if malformed or out of
 * range. */
static int parse_int64(const char *s, size_t n, int64_t *out)
{
    size_t i = 0;
    int neg = 0;
    uint64_t v = 0, limit;

    if (n > 0 && s[0] == '-') {
        neg = 1;
        i = 1;
    }
    if (i == n)
        return -1;
    limit = neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
    for (; i < n; i++) {
        if (!is_digit(s[i]))
            return -1;
        if (v > (limit - (uint64_t)(s[i] - '0')) / 10)
            return -1;
        v = v * 10 + (uint64_t)(s[i] - '0');
    }
    if (neg)
        *out = v == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)v;
    else
        *out = (int64_t)v;
    return 0;
}

/* ---- parameter paths ----------------------------------------------------- */

/* A path is a root name followed by steps ".name" or "[N]":
 * "data.items[0].sku". path_step() reads the step at s[*pos], if any. */
typedef struct step {
    const char *key; /* ".name": the name, keylen bytes; "[N]": NULL */
    size_t keylen;
    size_t index;
} step;

/* 1 and *st filled if a well-formed step starts at s[*pos] (advanced past
 * it), 0 if s[*pos..n) is empty, -1 if anything else is there. */
static int path_step(const char *s, size_t n, size_t *pos, step *st)
{
    size_t i = *pos;

    if (i >= n)
        return 0;
    if (s[i] == '.' && i + 1 < n && is_ident_start(s[i + 1])) {
        st->key = s + i + 1;
        for (i += 2; i < n && is_ident(s[i]); i++)
            ;
        st->keylen = (size_t)(s + i - st->key);
    } else if (s[i] == '[') {
        size_t digits = 0;
        st->key = NULL;
        st->index = 0;
        for (i++; i < n && is_digit(s[i]); i++, digits++)
            st->index = st->index * 10 + (size_t)(s[i] - '0');
        if (digits == 0 || digits > INDEX_MAX_DIGITS || i >= n || s[i] != ']')
            return -1;
        i++;
    } else {
        return -1;
    }
    *pos = i;
    return 1;
}

/* The length of the root name of path s[0..n) ("data" in "data.x[1]"). */
static size_t path_root(const char *s, size_t n)
{
    size_t i = 0;

    while (i < n && is_ident(s[i]))
        i++;
    return i;
}

/* 1 if s[0..n) is a root from `roots` (NULL-terminated) followed by
 * zero or more well-formed steps. */
static int valid_path(const char *s, size_t n, const char *const *roots)
{
    size_t root = path_root(s, n), pos = root;
    int found = 0;
    step st;
    int r;

    for (size_t i = 0; roots[i] != NULL && !found; i++)
        found = same(roots[i], s, root);
    if (!found)
        return 0;
    while ((r = path_step(s, n, &pos, &st)) == 1)
        ;
    return r == 0;
}

static const char *const scalar_roots[] = {
    "stream_id", "version", "position", "type", "time", "day", NULL};
static const char *const event_roots[] = {"data", "metadata", NULL};
static const char *const item_roots[] = {"item", NULL};

/* 1 if `name` (n bytes) may be used in an @on block (`in_each`: an @each
 * block, where :item is also defined). */
static int valid_handler_param(const char *name, size_t n, int in_each)
{
    if (path_root(name, n) == n)
        for (size_t i = 0; scalar_roots[i] != NULL; i++)
            if (same(scalar_roots[i], name, n))
                return 1;
    return valid_path(name, n, event_roots) ||
           (in_each && valid_path(name, n, item_roots));
}

/* ---- the parser's state -------------------------------------------------- */

typedef enum section {
    SEC_HEADER,  /* @projection, @version, @mode */
    SEC_DDL,     /* statements before the first @on or @query */
    SEC_HANDLER, /* after @on: d->handlers[nhandlers - 1] */
    SEC_QUERY    /* after @query: d->queries[nqueries - 1] */
} section;

/* A `:name` in a statement: src[off..off+len) including the colon. */
typedef struct occurrence {
    size_t off, len;
    int line;
} occurrence;

typedef enum item_kind { ITEM_EOF, ITEM_DIRECTIVE, ITEM_STMT } item_kind;

/* What lex_next() found. DIRECTIVE: src[start..end) is the line after its
 * '@', trimmed. STMT: src[start..end) runs from the first token to the
 * end of the last one before ';', with nocc parameter occurrences. */
typedef struct item {
    item_kind kind;
    int line;
    size_t start, end;
    occurrence *occ; /* owned by the parser, reused between statements */
    size_t nocc, occcap;
} item;

/* A word of a directive line: src[off..off+len). */
typedef struct word {
    const char *s;
    size_t len;
} word;

typedef struct parser {
    const char *src;
    size_t len, pos;
    size_t begin; /* where the text starts, after a byte-order mark */
    int line;     /* of src[pos] */

    char *err;
    size_t errcap;
    int failed, oom;

    cq_declared *d;
    section sec;
    int projection_line; /* 0 until @projection */
    int have_version, have_mode;
    size_t nstatements; /* all statements so far, for CQ_DECL_MAX_STMTS */

    /* The current query (sec == SEC_QUERY). */
    int result_line, stream_line; /* 0: not given */
    int section_line;             /* a pending @section, 0 if none */
    char *section_name;           /* owned until its statement takes it */
} parser;

/* Record the first error as "LINE: message"; always returns -1. The
 * message is cut, if it must be, on a character boundary. */
__attribute__((format(printf, 3, 4))) static int fail(parser *p, int line,
                                                      const char *fmt, ...)
{
    va_list ap;
    int n;

    if (p->failed)
        return -1;
    p->failed = 1;
    if (p->errcap == 0)
        return -1;
    n = snprintf(p->err, p->errcap, "%d: ", line);
    if (n >= 0 && (size_t)n < p->errcap) {
        va_start(ap, fmt);
        vsnprintf(p->err + n, p->errcap - (size_t)n, fmt, ap);
        va_end(ap);
    }
    /* Drop a multi-byte character cut by the buffer's end. */
    n = (int)strlen(p->err);
    if (n > 0 && (size_t)n == p->errcap - 1) {
        int i = n - 1;
        while (i > 0 && ((unsigned char)p->err[i] & 0xc0) == 0x80)
            i--;
        if (!cq_utf8_valid(p->err + i, (size_t)(n - i)))
            p->err[i] = '\0';
    }
    return -1;
}

static int oom(parser *p)
{
    if (!p->failed) {
        p->oom = 1;
        p->failed = 1;
        if (p->errcap > 0)
            snprintf(p->err, p->errcap, "out of memory");
    }
    return -1;
}

/* Grow the array *arr of *n elements of `size` bytes by one zeroed
 * element and return it (then counted in *n), or NULL on out of memory.
 * Arrays here hold at most a few thousand elements, so growing one at a
 * time costs nothing that matters. */
static void *append(parser *p, void *arr, size_t *n, size_t size)
{
    void *old;
    char *grown;

    /* `arr` points at a T* of any object type T; go through memcpy rather
     * than a void ** so as not to break the aliasing rules. */
    memcpy(&old, arr, sizeof old);
    grown = realloc(old, (*n + 1) * size);
    if (grown == NULL) {
        oom(p);
        return NULL;
    }
    memcpy(arr, &grown, sizeof grown);
    memset(grown + *n * size, 0, size);
    return grown + (*n)++ * size;
}

static char *dup_n(parser *p, const char *s, size_t n)
{
    char *c = strndup(s, n);

    if (c == NULL)
        oom(p);
    return c;
}

/* ---- layer 1: the lexer -------------------------------------------------- */

/* Skip the block comment that starts at src[pos]; -1 if it is not closed
 * or holds another opener (PostgreSQL nests block comments and SQLite does
 * not, so the same text would end in different places). */
static int skip_block_comment(parser *p)
{
    int start_line = p->line;

    p->pos += 2;
    while (p->pos < p->len) {
        char c = p->src[p->pos];
        if (c == '*' && p->pos + 1 < p->len && p->src[p->pos + 1] == '/') {
            p->pos += 2;
            return 0;
        }
        if (c == '/' && p->pos + 1 < p->len && p->src[p->pos + 1] == '*')
            return fail(p, p->line,
                        "nested block comment ('/*' inside '/* ... */'): "
                        "SQLite and PostgreSQL end it in different places");
        if (c == '\n')
            p->line++;
        p->pos++;
    }
    return fail(p, start_line, "block comment '/*' is not closed");
}

/* Skip a '...' string or "..." identifier starting at src[pos]; a doubled
 * quote inside is an escaped one. -1 if it is not closed. */
static int skip_quoted(parser *p)
{
    char q = p->src[p->pos];
    int start_line = p->line;

    for (p->pos++; p->pos < p->len; p->pos++) {
        char c = p->src[p->pos];
        if (c == '\n')
            p->line++;
        if (c != q)
            continue;
        if (p->pos + 1 < p->len && p->src[p->pos + 1] == q) {
            p->pos++; /* '' or "" */
            continue;
        }
        p->pos++;
        return 0;
    }
    return fail(p, start_line,
                q == '\'' ? "string literal is not closed"
                          : "quoted identifier is not closed");
}

/* Read the parameter whose ':' is at src[pos]; record it in it->occ. */
static int lex_param(parser *p, item *it)
{
    size_t start = p->pos, i = p->pos + 1;
    occurrence *o;

    while (i < p->len && is_ident(p->src[i]))
        i++;
    for (;;) {
        size_t at = i;
        step st;
        int r = path_step(p->src, p->len, &at, &st);
        if (r == 1) {
            i = at;
            continue;
        }
        /* A "[" that starts no index ends the name, as SQL would read it;
         * but "[1234567890]" is a bad index, not SQL. */
        if (i < p->len && p->src[i] == '[' && i + 1 < p->len &&
            is_digit(p->src[i + 1]))
            return fail(p, p->line,
                        "bad array index in parameter :%.*s (at most %d "
                        "digits, then ']')",
                        QUOTE(p->src + start + 1, i - start - 1),
                        INDEX_MAX_DIGITS);
        break;
    }
    /* "?1" followed by "5" would read as "?15": a parameter must end
     * where a name would (this can only happen after "]"). */
    if (i < p->len && is_ident(p->src[i]))
        return fail(p, p->line, "parameter :%.*s runs into '%c'",
                    QUOTE(p->src + start + 1, i - start - 1), p->src[i]);
    if (i - start - 1 > PARAM_MAX_LEN)
        return fail(p, p->line, "parameter name longer than %d characters",
                    PARAM_MAX_LEN);
    if (it->nocc == it->occcap) {
        size_t cap = it->occcap ? it->occcap * 2 : 16;
        occurrence *grown = realloc(it->occ, cap * sizeof *grown);
        if (grown == NULL)
            return oom(p);
        it->occ = grown;
        it->occcap = cap;
    }
    o = &it->occ[it->nocc++];
    o->off = start;
    o->len = i - start;
    o->line = p->line;
    p->pos = i;
    return 0;
}

/* If a directive starts at src[pos] (the start of a line), its '@'
 * offset, else 0: blanks, "--", blanks, '@'. */
static size_t directive_at(const parser *p)
{
    size_t i = p->pos;

    while (i < p->len && (p->src[i] == ' ' || p->src[i] == '\t'))
        i++;
    if (i + 1 >= p->len || p->src[i] != '-' || p->src[i + 1] != '-')
        return 0;
    for (i += 2; i < p->len && (p->src[i] == ' ' || p->src[i] == '\t'); i++)
        ;
    return i < p->len && p->src[i] == '@' ? i : 0;
}

/* The next item of the text, see `item`. -1 on a lexical error. */
static int lex_next(parser *p, item *it)
{
    int significant = 0, start_line = 0;
    size_t start = 0, last_end = 0;
    int line_start = p->pos == p->begin || p->src[p->pos - 1] == '\n';

    it->nocc = 0;
    while (p->pos < p->len) {
        char c = p->src[p->pos];
        size_t at;

        if (line_start && (at = directive_at(p)) != 0) {
            size_t end = at;
            if (significant)
                return fail(p, start_line,
                            "statement does not end with ';' (a directive "
                            "follows on line %d)",
                            p->line);
            while (end < p->len && p->src[end] != '\n')
                end++;
            it->kind = ITEM_DIRECTIVE;
            it->line = p->line;
            it->start = at + 1;
            it->end = end;
            while (it->end > it->start && is_blank(p->src[it->end - 1]))
                it->end--;
            p->pos = end < p->len ? end + 1 : end;
            p->line++;
            return 0;
        }
        line_start = 0;
        if (c == '\n') {
            p->line++;
            p->pos++;
            line_start = 1;
            continue;
        }
        if (is_blank(c)) {
            p->pos++;
            continue;
        }
        if (c == '-' && p->pos + 1 < p->len && p->src[p->pos + 1] == '-') {
            size_t i = p->pos + 2;
            while (i < p->len && (p->src[i] == ' ' || p->src[i] == '\t'))
                i++;
            if (i < p->len && p->src[i] == '@')
                return fail(p, p->line,
                            "a directive ('-- @') must be on a line of its "
                            "own");
            while (p->pos < p->len && p->src[p->pos] != '\n')
                p->pos++;
            continue;
        }
        if (c == '/' && p->pos + 1 < p->len && p->src[p->pos + 1] == '*') {
            if (skip_block_comment(p) < 0)
                return -1;
            continue;
        }
        if (c == ';') {
            p->pos++;
            if (!significant)
                continue; /* an empty statement */
            it->kind = ITEM_STMT;
            it->line = start_line;
            it->start = start;
            it->end = last_end;
            return 0;
        }

        /* A token of the statement. */
        if (!significant) {
            significant = 1;
            start = p->pos;
            start_line = p->line;
        }
        switch (c) {
        case '\'':
            if (p->pos > 0 &&
                (p->src[p->pos - 1] == 'E' || p->src[p->pos - 1] == 'e') &&
                (p->pos < 2 || !is_ident(p->src[p->pos - 2])))
                return fail(p, p->line,
                            "E'...' strings are PostgreSQL-only; write "
                            "'...' (a quote is written '')");
            if (skip_quoted(p) < 0)
                return -1;
            break;
        case '"':
            if (skip_quoted(p) < 0)
                return -1;
            break;
        case ':':
            if (p->pos + 1 < p->len && p->src[p->pos + 1] == ':') {
                p->pos += 2; /* a PostgreSQL cast, "x::text" */
            } else if (p->pos + 1 < p->len &&
                       is_ident_start(p->src[p->pos + 1])) {
                if (lex_param(p, it) < 0)
                    return -1;
            } else {
                return fail(p, p->line,
                            "':' must start a named parameter (:name)");
            }
            break;
        case '?':
            return fail(p, p->line,
                        "'?' placeholder: parameters must be named (:name)");
        case '@':
            return fail(p, p->line,
                        "'@' is not portable: SQLite reads @name as a "
                        "parameter; use :name");
        case '$':
            return fail(p, p->line,
                        "'$' is not portable: parameters must be named "
                        "(:name), and dollar quoting is PostgreSQL-only");
        default: p->pos++; break;
        }
        last_end = p->pos;
    }
    if (significant)
        return fail(p, start_line, "statement does not end with ';'");
    it->kind = ITEM_EOF;
    it->line = p->line;
    return 0;
}

/* ---- statements ---------------------------------------------------------- */

/* The first SQL word at or after s[*pos] (skipping blanks and comments),
 * as w[0..return value); 0 if the next token is not a word. */
static size_t next_word(const char *s, size_t end, size_t *pos, const char **w)
{
    size_t i = *pos, n;

    for (;;) {
        while (i < end && (is_blank(s[i]) || s[i] == '\n'))
            i++;
        if (i + 1 < end && s[i] == '-' && s[i + 1] == '-') {
            while (i < end && s[i] != '\n')
                i++;
        } else if (i + 1 < end && s[i] == '/' && s[i + 1] == '*') {
            for (i += 2; i + 1 < end && !(s[i] == '*' && s[i + 1] == '/'); i++)
                ;
            i += 2;
        } else {
            break;
        }
    }
    *w = s + i;
    for (n = 0; i < end && is_ident_start(s[i]); i++)
        n++;
    *pos = i;
    return n;
}

/* The kind of statement a section allows, by its first words. */
static int check_statement_kind(parser *p, const item *it)
{
    const char *w1, *w2, *w3;
    size_t pos = it->start, n1, n2, n3;

    n1 = next_word(p->src, it->end, &pos, &w1);
    n2 = next_word(p->src, it->end, &pos, &w2);
    n3 = next_word(p->src, it->end, &pos, &w3);
    switch (p->sec) {
    case SEC_DDL:
        if (word_is(w1, n1, "create") &&
            (word_is(w2, n2, "table") || word_is(w2, n2, "index") ||
             (word_is(w2, n2, "unique") && word_is(w3, n3, "index"))))
            return 0;
        return fail(p, it->line,
                    "only CREATE TABLE, CREATE INDEX and CREATE UNIQUE "
                    "INDEX may come before the first @on or @query");
    case SEC_HANDLER:
        if (word_is(w1, n1, "insert") && word_is(w2, n2, "or"))
            return fail(p, it->line,
                        "INSERT OR ... is SQLite-only; write INSERT ... ON "
                        "CONFLICT (...) DO UPDATE/NOTHING");
        if (word_is(w1, n1, "insert") || word_is(w1, n1, "update") ||
            word_is(w1, n1, "delete") || word_is(w1, n1, "with"))
            return 0;
        return fail(p, it->line,
                    "an @on statement must be INSERT, UPDATE or DELETE");
    case SEC_QUERY:
        if (word_is(w1, n1, "select") || word_is(w1, n1, "with"))
            return 0;
        return fail(p, it->line, "a query statement must be a SELECT");
    default: return 0;
    }
}

/* The @param of q called name[0..n), or NULL. */
static const cq_decl_param *find_param(const cq_decl_query *q, const char *name,
                                       size_t n)
{
    for (size_t i = 0; i < q->nparams; i++)
        if (same(q->params[i].name, name, n))
            return &q->params[i];
    return NULL;
}

/* Check that a parameter may be used where the statement is. */
static int check_param(parser *p, const occurrence *o)
{
    const char *name = p->src + o->off + 1;
    size_t n = o->len - 1;
    int ok = 0;

    switch (p->sec) {
    case SEC_DDL:
        return fail(p, o->line, "DDL statements take no parameters (:%.*s)",
                    QUOTE(name, n));
    case SEC_HANDLER: {
        const cq_decl_handler *h = &p->d->handlers[p->d->nhandlers - 1];
        ok = valid_handler_param(name, n, h->each != NULL);
        if (!ok && path_root(name, n) == 4 && memcmp(name, "item", 4) == 0)
            return fail(p, o->line, ":item is defined only in an @each block");
        break;
    }
    case SEC_QUERY:
        ok = find_param(&p->d->queries[p->d->nqueries - 1], name, n) != NULL;
        if (!ok)
            return fail(p, o->line,
                        "unknown parameter :%.*s (declare it with @param)",
                        QUOTE(name, n));
        break;
    default: break;
    }
    if (!ok)
        return fail(p, o->line, "unknown parameter :%.*s", QUOTE(name, n));
    return 0;
}

/* Fill `st` from statement item `it`: numbered parameters and the text for
 * each dialect. */
static int build_stmt(parser *p, const item *it, cq_decl_stmt *st)
{
    cq_strbuf lite = CQ_STRBUF_INIT, pg = CQ_STRBUF_INIT;
    size_t at = it->start;
    int rc = -1;

    st->line = it->line;
    for (size_t k = 0; k < it->nocc; k++) {
        const occurrence *o = &it->occ[k];
        const char *name = p->src + o->off + 1;
        size_t n = o->len - 1, idx = 0;
        char ph[16];

        if (check_param(p, o) < 0)
            goto done;
        while (idx < st->nparams && !same(st->params[idx], name, n))
            idx++;
        if (idx == st->nparams) {
            char **slot;
            if (st->nparams == CQ_DECL_MAX_PARAMS) {
                fail(p, o->line, "more than %d parameters in one statement",
                     CQ_DECL_MAX_PARAMS);
                goto done;
            }
            slot = append(p, &st->params, &st->nparams, sizeof *slot);
            if (slot == NULL || (*slot = dup_n(p, name, n)) == NULL)
                goto done;
        }
        cq_strbuf_add(&lite, p->src + at, o->off - at);
        cq_strbuf_add(&pg, p->src + at, o->off - at);
        snprintf(ph, sizeof ph, "?%zu", idx + 1);
        cq_strbuf_puts(&lite, ph);
        ph[0] = '$';
        cq_strbuf_puts(&pg, ph);
        at = o->off + o->len;
    }
    cq_strbuf_add(&lite, p->src + at, it->end - at);
    cq_strbuf_add(&pg, p->src + at, it->end - at);
    st->sqlite_sql = cq_strbuf_take(&lite);
    st->pg_sql = cq_strbuf_take(&pg);
    if (st->sqlite_sql == NULL || st->pg_sql == NULL) {
        oom(p);
        goto done;
    }
    rc = 0;
done:
    cq_strbuf_reset(&lite);
    cq_strbuf_reset(&pg);
    return rc;
}

/* ---- layer 2: sections and directives ------------------------------------ */

/* Leave the header: @projection and @version must have been given. */
static int end_header(parser *p)
{
    if (p->sec != SEC_HEADER)
        return 0;
    if (!p->have_version)
        return fail(p, p->projection_line, "missing @version");
    p->sec = SEC_DDL;
    return 0;
}

/* Check the section that ends (an @on block or a query) as a whole. */
static int end_block(parser *p)
{
    if (p->sec == SEC_HANDLER) {
        const cq_decl_handler *h = &p->d->handlers[p->d->nhandlers - 1];
        if (h->nstmts == 0)
            return fail(p, h->line, "@on %s has no statement", h->event_type);
    } else if (p->sec == SEC_QUERY) {
        const cq_decl_query *q = &p->d->queries[p->d->nqueries - 1];
        if (p->section_line != 0)
            return fail(p, p->section_line, "@section has no statement");
        if (q->nstmts == 0)
            return fail(p, q->line, "query %s has no statement", q->name);
        if (q->stream != NULL) {
            for (const char *s = q->stream; (s = strchr(s, '{')) != NULL;) {
                const char *close = strchr(s, '}');
                if (find_param(q, s + 1, (size_t)(close - s - 1)) == NULL)
                    return fail(p, p->stream_line,
                                "@stream names {%.*s}, which is not a "
                                "declared @param",
                                QUOTE(s + 1, (size_t)(close - s - 1)));
                s = close + 1;
            }
        }
        /* The statement uses :limit and :after (statement()), so both
         * are declared; the answer's size must come from an int. */
        if (q->result == CQ_RESULT_PAGE) {
            const cq_decl_param *limit = find_param(q, "limit", 5);
            if (limit->type != CQ_PARAM_INT)
                return fail(p, p->result_line,
                            "@result page: @param limit must be an int");
        }
    }
    return 0;
}

/* Start a new section after the header. */
static int begin_block(parser *p, section sec)
{
    if (end_header(p) < 0 || end_block(p) < 0)
        return -1;
    p->sec = sec;
    p->result_line = p->stream_line = p->section_line = 0;
    return 0;
}

/* Split the directive line src[start..end) into words separated by
 * blanks; a word that starts with ' runs to its closing quote ('' inside
 * is a quote), so a default value may hold spaces. Returns the number of
 * words (at most MAX_WORDS + 1: more than MAX_WORDS means "too many"), or
 * -1 on an unclosed quote. */
static int split_words(parser *p, const item *it, word *w)
{
    size_t i = it->start;
    int n = 0;

    while (i < it->end && n <= MAX_WORDS) {
        size_t s;
        while (i < it->end && is_blank(p->src[i]))
            i++;
        if (i == it->end)
            break;
        s = i;
        if (p->src[i] == '\'') {
            for (i++;; i++) {
                if (i >= it->end)
                    return fail(p, it->line, "quoted value is not closed");
                if (p->src[i] == '\'') {
                    if (i + 1 < it->end && p->src[i + 1] == '\'')
                        i++;
                    else
                        break;
                }
            }
            i++;
        } else {
            while (i < it->end && !is_blank(p->src[i]))
                i++;
        }
        w[n].s = p->src + s;
        w[n].len = i - s;
        n++;
    }
    return n;
}

/* Exactly `want` words, or an error naming the first extra one. */
static int expect_words(parser *p, const item *it, const word *w, int n,
                        int want, const char *usage)
{
    if (n < want)
        return fail(p, it->line, "usage: -- @%s", usage);
    if (n > want)
        return fail(p, it->line, "unexpected '%.*s' after @%.*s",
                    QUOTE(w[want].s, w[want].len), (int)w[0].len, w[0].s);
    return 0;
}

static int dir_projection(parser *p, const item *it, const word *w, int n)
{
    if (p->projection_line != 0)
        return fail(p, it->line, "duplicate @projection");
    if (expect_words(p, it, w, n, 2, "projection NAME") < 0)
        return -1;
    if (!valid_name(w[1].s, w[1].len))
        return fail(p, it->line,
                    "bad projection name '%.*s' (want [a-z][a-z0-9_]{0,62})",
                    QUOTE(w[1].s, w[1].len));
    p->projection_line = it->line;
    p->d->name = dup_n(p, w[1].s, w[1].len);
    return p->d->name != NULL ? 0 : -1;
}

static int dir_version(parser *p, const item *it, const word *w, int n)
{
    int64_t v;

    if (p->have_version)
        return fail(p, it->line, "duplicate @version");
    if (expect_words(p, it, w, n, 2, "version N") < 0)
        return -1;
    if (w[1].s[0] == '-' || parse_int64(w[1].s, w[1].len, &v) < 0 || v < 1 ||
        v > INT32_MAX)
        return fail(p, it->line,
                    "bad @version '%.*s' (want an integer 1..2147483647)",
                    QUOTE(w[1].s, w[1].len));
    p->d->version = v;
    p->have_version = 1;
    return 0;
}

static int dir_mode(parser *p, const item *it, const word *w, int n)
{
    if (p->have_mode)
        return fail(p, it->line, "duplicate @mode");
    if (expect_words(p, it, w, n, 2, "mode async|inline") < 0)
        return -1;
    if (same("async", w[1].s, w[1].len))
        p->d->mode = CQ_DECL_ASYNC;
    else if (same("inline", w[1].s, w[1].len))
        p->d->mode = CQ_DECL_INLINE;
    else
        return fail(p, it->line, "bad @mode '%.*s' (want async or inline)",
                    QUOTE(w[1].s, w[1].len));
    p->have_mode = 1;
    return 0;
}

static int dir_on(parser *p, const item *it, const word *w, int n)
{
    cq_decl_handler *h;

    if (n == 3 || (n == 4 && !same("@each", w[2].s, w[2].len)))
        return fail(p, it->line, "usage: -- @on TYPE [@each PATH]");
    if (n != 4 && expect_words(p, it, w, n, 2, "on TYPE [@each PATH]") < 0)
        return -1;
    if (w[1].len > TYPE_MAX_LEN)
        return fail(p, it->line, "event type longer than %d characters",
                    TYPE_MAX_LEN);
    for (size_t i = 0; i < w[1].len; i++)
        if (!is_type_char(w[1].s[i]))
            return fail(p, it->line,
                        "bad event type '%.*s' (want [A-Za-z0-9_.:-])",
                        QUOTE(w[1].s, w[1].len));
    if (n == 4 && (w[3].len > PARAM_MAX_LEN ||
                   !valid_path(w[3].s, w[3].len, event_roots)))
        return fail(p, it->line,
                    "bad @each path '%.*s' (want data.PATH or metadata.PATH)",
                    QUOTE(w[3].s, w[3].len));
    if (begin_block(p, SEC_HANDLER) < 0)
        return -1;
    h = append(p, &p->d->handlers, &p->d->nhandlers, sizeof *h);
    if (h == NULL)
        return -1;
    h->line = it->line;
    if ((h->event_type = dup_n(p, w[1].s, w[1].len)) == NULL)
        return -1;
    if (n == 4 && (h->each = dup_n(p, w[3].s, w[3].len)) == NULL)
        return -1;
    return 0;
}

static int dir_query(parser *p, const item *it, const word *w, int n)
{
    cq_decl_query *q;

    if (expect_words(p, it, w, n, 2, "query NAME") < 0)
        return -1;
    if (!valid_name(w[1].s, w[1].len))
        return fail(p, it->line,
                    "bad query name '%.*s' (want [a-z][a-z0-9_]{0,62})",
                    QUOTE(w[1].s, w[1].len));
    for (size_t i = 0; i < p->d->nqueries; i++)
        if (same(p->d->queries[i].name, w[1].s, w[1].len))
            return fail(p, it->line, "duplicate query %.*s (first on line %d)",
                        (int)w[1].len, w[1].s, p->d->queries[i].line);
    if (begin_block(p, SEC_QUERY) < 0)
        return -1;
    q = append(p, &p->d->queries, &p->d->nqueries, sizeof *q);
    if (q == NULL)
        return -1;
    q->line = it->line;
    q->result = CQ_RESULT_LIST;
    q->name = dup_n(p, w[1].s, w[1].len);
    return q->name != NULL ? 0 : -1;
}

/* The current query, for directives that belong to one: @param, @stream
 * and @result must come before its first statement. */
static cq_decl_query *query_directive(parser *p, const item *it, const word *w)
{
    cq_decl_query *q;

    if (p->sec != SEC_QUERY) {
        fail(p, it->line, "@%.*s outside a @query", (int)w[0].len, w[0].s);
        return NULL;
    }
    q = &p->d->queries[p->d->nqueries - 1];
    if (q->nstmts > 0 || p->section_line != 0) {
        fail(p, it->line, "@%.*s must come before the query's statements",
             (int)w[0].len, w[0].s);
        return NULL;
    }
    return q;
}

/* "MIN..MAX" into *min, *max. */
static int parse_bounds(const word *b, int64_t *min, int64_t *max)
{
    const char *dots = NULL;

    for (size_t i = 0; i + 1 < b->len && dots == NULL; i++)
        if (b->s[i] == '.' && b->s[i + 1] == '.')
            dots = b->s + i;
    if (dots == NULL)
        return -1;
    if (parse_int64(b->s, (size_t)(dots - b->s), min) < 0 ||
        parse_int64(dots + 2, (size_t)(b->s + b->len - dots - 2), max) < 0)
        return -1;
    return 0;
}

static int dir_param(parser *p, const item *it, const word *w, int n)
{
    static const char usage[] =
        "param NAME id|text MIN..MAX|int MIN..MAX required|default VALUE";
    static const char *const reserved[] = {"min_position", "min_version",
                                           "wait_ms", "consistency", NULL};
    cq_decl_query *q = query_directive(p, it, w);
    cq_decl_param *prm;
    cq_decl_ptype type;
    int64_t min = 1, max = 64;
    int k = 3;

    if (q == NULL)
        return -1;
    if (n < 4)
        return fail(p, it->line, "usage: -- @%s", usage);
    if (!valid_name(w[1].s, w[1].len))
        return fail(p, it->line,
                    "bad param name '%.*s' (want [a-z][a-z0-9_]{0,62})",
                    QUOTE(w[1].s, w[1].len));
    for (int i = 0; reserved[i] != NULL; i++)
        if (same(reserved[i], w[1].s, w[1].len))
            return fail(p, it->line,
                        "param name %s is reserved for the consistency "
                        "parameters of every query",
                        reserved[i]);
    if (find_param(q, w[1].s, w[1].len) != NULL)
        return fail(p, it->line, "duplicate @param %.*s", (int)w[1].len,
                    w[1].s);
    if (same("id", w[2].s, w[2].len)) {
        type = CQ_PARAM_ID;
    } else if (same("text", w[2].s, w[2].len) ||
               same("int", w[2].s, w[2].len)) {
        type = w[2].s[0] == 't' ? CQ_PARAM_TEXT : CQ_PARAM_INT;
        if (parse_bounds(&w[3], &min, &max) < 0)
            return fail(p, it->line,
                        "bad bounds '%.*s' for %s (want MIN..MAX, integers)",
                        QUOTE(w[3].s, w[3].len),
                        type == CQ_PARAM_TEXT ? "text" : "int");
        if (min > max)
            return fail(p, it->line,
                        "bad bounds: min %" PRId64 " > max %" PRId64, min, max);
        if (type == CQ_PARAM_TEXT && min < 0)
            return fail(p, it->line, "bad bounds: text length min < 0");
        k = 4;
    } else {
        return fail(p, it->line, "bad param type '%.*s' (want id, text, int)",
                    QUOTE(w[2].s, w[2].len));
    }

    prm = append(p, &q->params, &q->nparams, sizeof *prm);
    if (prm == NULL || (prm->name = dup_n(p, w[1].s, w[1].len)) == NULL)
        return -1;
    prm->type = type;
    prm->min = min;
    prm->max = max;
    if (k < n && same("required", w[k].s, w[k].len)) {
        prm->required = 1;
        k++;
    } else if (k + 1 < n && same("default", w[k].s, w[k].len)) {
        const word *v = &w[k + 1];
        cq_strbuf b = CQ_STRBUF_INIT;
        if (v->s[0] == '\'') { /* 'it''s' -> it's */
            for (size_t i = 1; i + 1 < v->len; i++)
                if (v->s[i] != '\'' || v->s[++i] == '\'')
                    cq_strbuf_add(&b, v->s + i, 1);
        } else {
            cq_strbuf_add(&b, v->s, v->len);
        }
        if ((prm->def = cq_strbuf_take(&b)) == NULL)
            return oom(p);
        if (cq_declared_param_check(prm, prm->def, strlen(prm->def), NULL) !=
            CQ_OK)
            return fail(p, it->line,
                        "default %.*s is not a valid value of %s (%s %" PRId64
                        "..%" PRId64 ")",
                        QUOTE(v->s, v->len), prm->name,
                        type == CQ_PARAM_ID     ? "id"
                        : type == CQ_PARAM_TEXT ? "text"
                                                : "int",
                        min, max);
        k += 2;
    } else {
        return fail(p, it->line,
                    "@param %s needs 'required' or 'default VALUE'", prm->name);
    }
    if (k < n)
        return fail(p, it->line, "unexpected '%.*s' after @param",
                    QUOTE(w[k].s, w[k].len));
    return 0;
}

static int dir_stream(parser *p, const item *it, const word *w, int n)
{
    cq_decl_query *q = query_directive(p, it, w);

    if (q == NULL || expect_words(p, it, w, n, 2, "stream TEMPLATE") < 0)
        return -1;
    if (p->stream_line != 0)
        return fail(p, it->line, "duplicate @stream");
    if (w[1].len > CQ_DECL_MAX_STREAM)
        return fail(p, it->line, "@stream longer than %d characters",
                    CQ_DECL_MAX_STREAM);
    for (size_t i = 0; i < w[1].len; i++) {
        if (w[1].s[i] == '{') {
            size_t s = ++i;
            while (i < w[1].len && w[1].s[i] != '}')
                i++;
            if (i == w[1].len || !valid_name(w[1].s + s, i - s))
                return fail(p, it->line,
                            "bad @stream '%.*s': want {param} placeholders",
                            QUOTE(w[1].s, w[1].len));
        } else if (!is_type_char(w[1].s[i])) {
            return fail(p, it->line,
                        "bad @stream '%.*s': literal part must be "
                        "[A-Za-z0-9_.:-]",
                        QUOTE(w[1].s, w[1].len));
        }
    }
    p->stream_line = it->line;
    q->stream = dup_n(p, w[1].s, w[1].len);
    return q->stream != NULL ? 0 : -1;
}

static int dir_result(parser *p, const item *it, const word *w, int n)
{
    static const char usage[] =
        "result one|list|sections|page FIELD CURSOR_COLUMN";
    cq_decl_query *q = query_directive(p, it, w);

    if (q == NULL)
        return -1;
    if (p->result_line != 0)
        return fail(p, it->line, "duplicate @result");
    if (n < 2)
        return fail(p, it->line, "usage: -- @%s", usage);
    if (same("page", w[1].s, w[1].len)) {
        if (expect_words(p, it, w, n, 4, usage) < 0)
            return -1;
        if (!valid_name(w[2].s, w[2].len) || same("next", w[2].s, w[2].len))
            return fail(p, it->line,
                        "bad page field '%.*s' (want [a-z][a-z0-9_]{0,62}, "
                        "not 'next')",
                        QUOTE(w[2].s, w[2].len));
        if (!valid_column(w[3].s, w[3].len))
            return fail(p, it->line, "bad cursor column '%.*s'",
                        QUOTE(w[3].s, w[3].len));
        q->result = CQ_RESULT_PAGE;
        if ((q->page_field = dup_n(p, w[2].s, w[2].len)) == NULL ||
            (q->cursor_column = dup_n(p, w[3].s, w[3].len)) == NULL)
            return -1;
    } else {
        if (expect_words(p, it, w, n, 2, usage) < 0)
            return -1;
        if (same("one", w[1].s, w[1].len))
            q->result = CQ_RESULT_ONE;
        else if (same("list", w[1].s, w[1].len))
            q->result = CQ_RESULT_LIST;
        else if (same("sections", w[1].s, w[1].len))
            q->result = CQ_RESULT_SECTIONS;
        else
            return fail(p, it->line, "bad @result '%.*s' (want %s)",
                        QUOTE(w[1].s, w[1].len), "one, list, page or sections");
    }
    p->result_line = it->line;
    return 0;
}

static int dir_section(parser *p, const item *it, const word *w, int n)
{
    const cq_decl_query *q;

    if (p->sec != SEC_QUERY || p->result_line == 0 ||
        p->d->queries[p->d->nqueries - 1].result != CQ_RESULT_SECTIONS)
        return fail(p, it->line,
                    "@section outside a sections query (@result sections)");
    q = &p->d->queries[p->d->nqueries - 1];
    if (p->section_line != 0)
        return fail(p, p->section_line, "@section has no statement");
    if (expect_words(p, it, w, n, 2, "section NAME") < 0)
        return -1;
    if (!valid_name(w[1].s, w[1].len))
        return fail(p, it->line,
                    "bad section name '%.*s' (want [a-z][a-z0-9_]{0,62})",
                    QUOTE(w[1].s, w[1].len));
    for (size_t i = 0; i < q->nstmts; i++)
        if (same(q->section_names[i], w[1].s, w[1].len))
            return fail(p, it->line, "duplicate @section %.*s", (int)w[1].len,
                        w[1].s);
    if ((p->section_name = dup_n(p, w[1].s, w[1].len)) == NULL)
        return -1;
    p->section_line = it->line;
    return 0;
}

static int directive(parser *p, const item *it)
{
    static const struct {
        const char *name;
        int (*fn)(parser *, const item *, const word *, int);
    } table[] = {
        {"projection", dir_projection},
        {"version", dir_version},
        {"mode", dir_mode},
        {"on", dir_on},
        {"query", dir_query},
        {"param", dir_param},
        {"stream", dir_stream},
        {"result", dir_result},
        {"section", dir_section},
    };
    word w[MAX_WORDS + 1];
    int n = split_words(p, it, w);

    if (n < 0)
        return -1;
    if (n == 0 || is_blank(p->src[it->start]))
        return fail(p, it->line, "empty directive '@'");
    if (n > MAX_WORDS)
        return fail(p, it->line, "too many words in directive");
    if (p->projection_line == 0 && !same("projection", w[0].s, w[0].len))
        return fail(p, it->line, "the first directive must be @projection");
    if ((same("version", w[0].s, w[0].len) || same("mode", w[0].s, w[0].len)) &&
        p->sec != SEC_HEADER)
        return fail(p, it->line,
                    "@%.*s must come before the first statement, @on or "
                    "@query",
                    (int)w[0].len, w[0].s);
    if (same("each", w[0].s, w[0].len))
        return fail(p, it->line,
                    "@each without @on (write '-- @on TYPE @each PATH')");
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++)
        if (same(table[i].name, w[0].s, w[0].len))
            return table[i].fn(p, it, w, n);
    return fail(p, it->line, "unknown directive @%.*s",
                QUOTE(w[0].s, w[0].len));
}

static int statement(parser *p, const item *it)
{
    cq_decl_stmt *st;

    if (p->projection_line == 0)
        return fail(p, it->line, "statement before @projection");
    if (++p->nstatements > CQ_DECL_MAX_STMTS)
        return fail(p, it->line, "more than %d statements", CQ_DECL_MAX_STMTS);
    if (end_header(p) < 0 || check_statement_kind(p, it) < 0)
        return -1;
    switch (p->sec) {
    case SEC_DDL: st = append(p, &p->d->ddl, &p->d->nddl, sizeof *st); break;
    case SEC_HANDLER: {
        cq_decl_handler *h = &p->d->handlers[p->d->nhandlers - 1];
        st = append(p, &h->stmts, &h->nstmts, sizeof *st);
        break;
    }
    default: { /* SEC_QUERY */
        cq_decl_query *q = &p->d->queries[p->d->nqueries - 1];
        int uses_limit = 0, uses_after = 0;
        static const char *const kinds[] = {"one", "list", "page"};

        if (p->result_line == 0)
            return fail(p, q->line,
                        "query %s has no @result before its statement",
                        q->name);
        if (q->result == CQ_RESULT_SECTIONS) {
            char **names;
            if (p->section_line == 0)
                return fail(p, it->line,
                            "each statement of a sections query needs a "
                            "'-- @section NAME' before it");
            /* Room for the name first; it moves in once the statement is
             * counted, so section_names always has nstmts set entries. */
            names = realloc(q->section_names, (q->nstmts + 1) * sizeof *names);
            if (names == NULL)
                return oom(p);
            q->section_names = names;
        } else if (q->nstmts > 0) {
            return fail(p, it->line, "@result %s takes exactly one statement",
                        kinds[q->result]);
        }
        for (size_t k = 0; k < it->nocc; k++) {
            const char *name = p->src + it->occ[k].off + 1;
            uses_limit |= same("limit", name, it->occ[k].len - 1);
            uses_after |= same("after", name, it->occ[k].len - 1);
        }
        if (q->result == CQ_RESULT_PAGE && !(uses_limit && uses_after))
            return fail(p, it->line, "a page query must use :limit and :after");
        st = append(p, &q->stmts, &q->nstmts, sizeof *st);
        if (st != NULL && q->result == CQ_RESULT_SECTIONS) {
            q->section_names[q->nstmts - 1] = p->section_name; /* taken */
            p->section_name = NULL;
            p->section_line = 0;
        }
        break;
    }
    }
    if (st == NULL)
        return -1;
    return build_stmt(p, it, st);
}

/* Check the raw bytes: size, then line by line no NUL and valid UTF-8
 * (no character spans a '\n', so lines can be checked apart). */
static int check_bytes(parser *p)
{
    const char *s = p->src, *end = p->src + p->len;
    int line = 1;

    if (p->len > CQ_DECL_MAX_FILE)
        return fail(p, 1, "file is larger than 1 MiB");
    while (s < end) {
        const char *nl = memchr(s, '\n', (size_t)(end - s));
        size_t n = nl != NULL ? (size_t)(nl - s) : (size_t)(end - s);
        if (memchr(s, '\0', n) != NULL)
            return fail(p, line, "NUL byte");
        if (!cq_utf8_valid(s, n))
            return fail(p, line, "invalid UTF-8");
        s += n + 1;
        line++;
    }
    return 0;
}

/* The whole file, item by item; -1 on the first error. */
static int parse(parser *p)
{
    item it = {0};
    int rc = -1;

    if (check_bytes(p) < 0)
        return -1;
    if (p->len >= 3 && memcmp(p->src, "\xef\xbb\xbf", 3) == 0)
        p->pos = p->begin = 3; /* a byte-order mark some editors write */
    for (;;) {
        if (lex_next(p, &it) < 0)
            goto done;
        if (it.kind == ITEM_EOF)
            break;
        if ((it.kind == ITEM_DIRECTIVE ? directive(p, &it)
                                       : statement(p, &it)) < 0)
            goto done;
    }
    if (p->projection_line == 0) {
        fail(p, 1, "missing @projection");
        goto done;
    }
    if (end_header(p) < 0 || end_block(p) < 0)
        goto done;
    rc = 0;
done:
    free(it.occ);
    return rc;
}

/* ---- the public functions ------------------------------------------------ */

/* See declared.h. */
int cq_declared_parse(const char *text, size_t len, cq_declared **out,
                      char *err, size_t errcap)
{
    parser p = {
        .src = text, .len = len, .line = 1, .err = err, .errcap = errcap};

    *out = NULL;
    if (errcap > 0)
        err[0] = '\0';
    if (text == NULL && len > 0) {
        fail(&p, 1, "no text");
        return CQ_EINVAL;
    }
    if ((p.d = calloc(1, sizeof *p.d)) == NULL) {
        oom(&p);
        return CQ_ENOMEM;
    }
    p.d->mode = CQ_DECL_ASYNC;
    if (parse(&p) < 0) {
        free(p.section_name);
        cq_declared_free(p.d);
        return p.oom ? CQ_ENOMEM : CQ_EINVAL;
    }
    cq_sha256_hex(text, len, p.d->source_hash);
    *out = p.d;
    return CQ_OK;
}

static void free_stmts(cq_decl_stmt *st, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(st[i].sqlite_sql);
        free(st[i].pg_sql);
        for (size_t k = 0; k < st[i].nparams; k++)
            free(st[i].params[k]);
        free(st[i].params);
    }
    free(st);
}

/* See declared.h. */
void cq_declared_free(cq_declared *d)
{
    if (d == NULL)
        return;
    free(d->name);
    free_stmts(d->ddl, d->nddl);
    for (size_t i = 0; i < d->nhandlers; i++) {
        free(d->handlers[i].event_type);
        free(d->handlers[i].each);
        free_stmts(d->handlers[i].stmts, d->handlers[i].nstmts);
    }
    free(d->handlers);
    for (size_t i = 0; i < d->nqueries; i++) {
        cq_decl_query *q = &d->queries[i];
        free(q->name);
        for (size_t k = 0; k < q->nparams; k++) {
            free(q->params[k].name);
            free(q->params[k].def);
        }
        free(q->params);
        free(q->stream);
        free(q->page_field);
        free(q->cursor_column);
        if (q->section_names != NULL)
            for (size_t k = 0; k < q->nstmts; k++)
                free(q->section_names[k]);
        free(q->section_names);
        free_stmts(q->stmts, q->nstmts);
    }
    free(d->queries);
    free(d);
}

/* See declared.h. */
const cq_decl_query *cq_declared_find_query(const cq_declared *d,
                                            const char *name)
{
    for (size_t i = 0; d != NULL && i < d->nqueries; i++)
        if (strcmp(d->queries[i].name, name) == 0)
            return &d->queries[i];
    return NULL;
}

/* See declared.h. */
int cq_declared_param_check(const cq_decl_param *p, const char *value,
                            size_t len, int64_t *ival)
{
    int64_t v, chars = 0;

    switch (p->type) {
    case CQ_PARAM_ID:
        if (len < 1 || len > 64)
            return CQ_EINVAL;
        for (size_t i = 0; i < len; i++)
            if (!(is_ident(value[i]) || value[i] == '-'))
                return CQ_EINVAL;
        return CQ_OK;
    case CQ_PARAM_TEXT:
        if (!cq_utf8_valid(value, len))
            return CQ_EINVAL;
        for (size_t i = 0; i < len; i++) {
            unsigned char c = (unsigned char)value[i];
            if (c < 0x20 || c == 0x7f)
                return CQ_EINVAL;
            if ((c & 0xc0) != 0x80)
                chars++;
        }
        return chars >= p->min && chars <= p->max ? CQ_OK : CQ_EINVAL;
    case CQ_PARAM_INT:
        if (parse_int64(value, len, &v) < 0 || v < p->min || v > p->max)
            return CQ_EINVAL;
        if (ival != NULL)
            *ival = v;
        return CQ_OK;
    }
    return CQ_EINVAL;
}

/* See declared.h. */
int cq_declared_stream(const cq_decl_query *q, const char *const *values,
                       char *buf, size_t cap)
{
    size_t n = 0;
    size_t limit = cap < CQ_DECL_MAX_STREAM + 1 ? cap : CQ_DECL_MAX_STREAM + 1;

    if (q->stream == NULL || cap == 0)
        return CQ_EINVAL;
    for (const char *s = q->stream; *s != '\0';) {
        const char *piece = s;
        size_t len = 1;

        if (*s == '{') {
            const char *close = strchr(s, '}');
            size_t i = 0;
            if (close == NULL)
                return CQ_EINVAL;
            while (i < q->nparams &&
                   !same(q->params[i].name, s + 1, (size_t)(close - s - 1)))
                i++;
            if (i == q->nparams || values[i] == NULL)
                return CQ_EINVAL;
            piece = values[i];
            len = strlen(piece);
            s = close + 1;
        } else {
            s++;
        }
        if (len >= limit - n)
            return CQ_EINVAL;
        memcpy(buf + n, piece, len);
        n += len;
    }
    buf[n] = '\0';
    return CQ_OK;
}

/* ---- binding ------------------------------------------------------------- */

/* Follow the steps of path[0..n) from `v`; NULL where the path leaves the
 * document (missing member, index out of range, wrong kind of value). */
static const json_t *walk(const json_t *v, const char *path, size_t n)
{
    size_t pos = 0;
    step st;
    int r;

    while (v != NULL && (r = path_step(path, n, &pos, &st)) == 1) {
        if (st.key != NULL)
            v = json_is_object(v) ? json_object_getn(v, st.key, st.keylen)
                                  : NULL;
        else
            v = json_is_array(v) ? json_array_get(v, st.index) : NULL;
    }
    return v;
}

static void value_text(cq_decl_value *out, const char *s, size_t len)
{
    out->type = CQ_VALUE_TEXT;
    out->text = s;
    out->len = len;
}

static int value_json(const json_t *v, cq_decl_value *out)
{
    switch (json_typeof(v)) {
    case JSON_NULL: return CQ_OK;
    case JSON_TRUE:
    case JSON_FALSE:
        out->type = CQ_VALUE_INT;
        out->i = json_is_true(v);
        return CQ_OK;
    case JSON_INTEGER:
        out->type = CQ_VALUE_INT;
        out->i = json_integer_value(v);
        return CQ_OK;
    case JSON_REAL:
        out->type = CQ_VALUE_REAL;
        out->r = json_real_value(v);
        return CQ_OK;
    case JSON_STRING:
        value_text(out, json_string_value(v), json_string_length(v));
        return CQ_OK;
    default: /* object, array */
        out->owned = json_dumps(v, JSON_COMPACT);
        if (out->owned == NULL)
            return CQ_ENOMEM;
        out->type = CQ_VALUE_JSON;
        out->text = out->owned;
        out->len = strlen(out->owned);
        return CQ_OK;
    }
}

/* See declared.h. */
int cq_declared_bind_value(const char *param, const cq_decl_event *ev,
                           const json_t *element, cq_decl_value *out)
{
    size_t n = strlen(param), root = path_root(param, n);
    const json_t *doc;

    memset(out, 0, sizeof *out);
    if (root == n) {
        const char *s = NULL;
        if (same("stream_id", param, n))
            s = ev->stream_id;
        else if (same("type", param, n))
            s = ev->type;
        else if (same("time", param, n))
            s = ev->time;
        else if (same("day", param, n))
            s = ev->day;
        if (s != NULL) {
            value_text(out, s, strlen(s));
            return CQ_OK;
        }
        if (same("version", param, n) || same("position", param, n)) {
            out->type = CQ_VALUE_INT;
            out->i = param[0] == 'v' ? ev->version : ev->position;
            return CQ_OK;
        }
    }
    if (!valid_path(param, n, event_roots) && !valid_path(param, n, item_roots))
        return CQ_EINVAL;
    if (param[0] == 'i') {
        if (element == NULL)
            return CQ_EINVAL;
        doc = element;
    } else {
        doc = param[0] == 'd' ? ev->data : ev->metadata;
    }
    doc = walk(doc, param + root, n - root);
    return doc != NULL ? value_json(doc, out) : CQ_OK;
}

/* See declared.h. */
void cq_declared_value_clear(cq_decl_value *v)
{
    if (v == NULL)
        return;
    free(v->owned);
    memset(v, 0, sizeof *v);
}
