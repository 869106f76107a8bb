/*
 * declared_lex.c -- layer 1 of the parser of declared projections: the
 * raw bytes (size, NUL, UTF-8), decimals, and the lexer that cuts the
 * text into items.
 *
 * decl_lex_next() cuts the text into items: a DIRECTIVE (a line whose first
 * non-blank characters are `--`, blanks, `@`) or a STATEMENT (from its
 * first token up to its `;`, with the positions of its `:name`
 * parameters). It knows SQL's lexical rules -- '...' strings with ''
 * escapes, "..." identifiers, -- and block comments, `::` casts -- so a
 * `;`, `:` or `-- @` inside them means nothing. Layer 2 is
 * declared_parse.c.
 *
 * Threads: no global state; a parser belongs to the call that made it.
 */
#include "projection/declared_int.h"

#include "base/base.h"

/* Decimal int64 with an optional '-': 0, or -1 if malformed or out of
 * range. */
int decl_parse_int64(const char *s, size_t n, int64_t *out)
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

/* Check the raw bytes: size, then line by line no NUL and valid UTF-8
 * (no character spans a '\n', so lines can be checked apart). */
int decl_check_bytes(parser *p)
{
    const char *s = p->src, *end = p->src + p->len;
    int line = 1;

    if (p->len > CQ_DECL_MAX_FILE)
        return decl_fail(p, 1, "file is larger than 1 MiB");
    while (s < end) {
        const char *nl = memchr(s, '\n', (size_t)(end - s));
        size_t n = nl != NULL ? (size_t)(nl - s) : (size_t)(end - s);
        if (memchr(s, '\0', n) != NULL)
            return decl_fail(p, line, "NUL byte");
        if (!cq_utf8_valid(s, n))
            return decl_fail(p, line, "invalid UTF-8");
        s += n + 1;
        line++;
    }
    return 0;
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
            return decl_fail(
                p, p->line,
                "nested block comment ('/*' inside '/* ... */'): "
                "SQLite and PostgreSQL end it in different places");
        if (c == '\n')
            p->line++;
        p->pos++;
    }
    return decl_fail(p, start_line, "block comment '/*' is not closed");
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
    return decl_fail(p, start_line,
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
        int r = decl_path_step(p->src, p->len, &at, &st);
        if (r == 1) {
            i = at;
            continue;
        }
        /* A "[" that starts no index ends the name, as SQL would read it;
         * but "[1234567890]" is a bad index, not SQL. */
        if (i < p->len && p->src[i] == '[' && i + 1 < p->len &&
            is_digit(p->src[i + 1]))
            return decl_fail(p, p->line,
                             "bad array index in parameter :%.*s (at most %d "
                             "digits, then ']')",
                             QUOTE(p->src + start + 1, i - start - 1),
                             INDEX_MAX_DIGITS);
        break;
    }
    /* "?1" followed by "5" would read as "?15": a parameter must end
     * where a name would (this can only happen after "]"). */
    if (i < p->len && is_ident(p->src[i]))
        return decl_fail(p, p->line, "parameter :%.*s runs into '%c'",
                         QUOTE(p->src + start + 1, i - start - 1), p->src[i]);
    if (i - start - 1 > PARAM_MAX_LEN)
        return decl_fail(p, p->line, "parameter name longer than %d characters",
                         PARAM_MAX_LEN);
    if (it->nocc == it->occcap) {
        size_t cap = it->occcap ? it->occcap * 2 : 16;
        occurrence *grown = realloc(it->occ, cap * sizeof *grown);
        if (grown == NULL)
            return decl_oom(p);
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
int decl_lex_next(parser *p, item *it)
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
                return decl_fail(p, start_line,
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
                return decl_fail(
                    p, p->line,
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
                return decl_fail(p, p->line,
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
                return decl_fail(p, p->line,
                                 "':' must start a named parameter (:name)");
            }
            break;
        case '?':
            return decl_fail(
                p, p->line,
                "'?' placeholder: parameters must be named (:name)");
        case '@':
            return decl_fail(p, p->line,
                             "'@' is not portable: SQLite reads @name as a "
                             "parameter; use :name");
        case '$':
            return decl_fail(p, p->line,
                             "'$' is not portable: parameters must be named "
                             "(:name), and dollar quoting is PostgreSQL-only");
        default: p->pos++; break;
        }
        last_end = p->pos;
    }
    if (significant)
        return decl_fail(p, start_line, "statement does not end with ';'");
    it->kind = ITEM_EOF;
    it->line = p->line;
    return 0;
}
