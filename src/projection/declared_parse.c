/*
 * declared_parse.c -- the parser of declared projections (`.sql` files):
 * text in, cq_declared out. The user's reference is docs/declared-sql.md;
 * this file and the ones beside it hold the rules (declared_int.h lists
 * them).
 *
 * The parser runs in two layers, one pass over the text:
 *
 *   1. decl_lex_next() (declared_lex.c) cuts the text into items: a
 *      DIRECTIVE line or a STATEMENT up to its `;`, with the positions of
 *      its `:name` parameters.
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
 *
 * Size: over 800 lines, because the nine directives, the section machine
 * and the error helpers all work on one parser state; statements,
 * paths and the lexer, which need less of it, live in their own files.
 */
#include "projection/declared_int.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include "base/base.h"
#include "base/strbuf.h"
#include "cqrs/cqrs.h"

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

/* Record the first error as "LINE: message"; always returns -1. The
 * message is cut, if it must be, on a character boundary. */
int decl_fail(parser *p, int line, const char *fmt, ...)
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

int decl_oom(parser *p)
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
void *decl_append(parser *p, void *arr, size_t *n, size_t size)
{
    void *old;
    char *grown;

    /* `arr` points at a T* of any object type T; go through memcpy rather
     * than a void ** so as not to break the aliasing rules. */
    memcpy(&old, arr, sizeof old);
    grown = realloc(old, (*n + 1) * size);
    if (grown == NULL) {
        decl_oom(p);
        return NULL;
    }
    memcpy(arr, &grown, sizeof grown);
    memset(grown + *n * size, 0, size);
    return grown + (*n)++ * size;
}

char *decl_dup(parser *p, const char *s, size_t n)
{
    char *c = strndup(s, n);

    if (c == NULL)
        decl_oom(p);
    return c;
}

/* ---- layer 2: sections and directives ------------------------------------ */

/* Leave the header: @projection and @version must have been given. */
static int end_header(parser *p)
{
    if (p->sec != SEC_HEADER)
        return 0;
    if (!p->have_version)
        return decl_fail(p, p->projection_line, "missing @version");
    p->sec = SEC_DDL;
    return 0;
}

/* Check the section that ends (an @on block or a query) as a whole. */
static int end_block(parser *p)
{
    if (p->sec == SEC_HANDLER) {
        const cq_decl_handler *h = &p->d->handlers[p->d->nhandlers - 1];
        if (h->nstmts == 0)
            return decl_fail(p, h->line, "@on %s has no statement",
                             h->event_type);
    } else if (p->sec == SEC_QUERY) {
        const cq_decl_query *q = &p->d->queries[p->d->nqueries - 1];
        if (p->section_line != 0)
            return decl_fail(p, p->section_line, "@section has no statement");
        if (q->nstmts == 0)
            return decl_fail(p, q->line, "query %s has no statement", q->name);
        if (q->stream != NULL) {
            for (const char *s = q->stream; (s = strchr(s, '{')) != NULL;) {
                const char *close = strchr(s, '}');
                if (decl_find_param(q, s + 1, (size_t)(close - s - 1)) == NULL)
                    return decl_fail(p, p->stream_line,
                                     "@stream names {%.*s}, which is not a "
                                     "declared @param",
                                     QUOTE(s + 1, (size_t)(close - s - 1)));
                s = close + 1;
            }
        }
        /* The statement uses :limit and :after (statement()), so both
         * are declared; the answer's size must come from an int. */
        if (q->result == CQ_RESULT_PAGE) {
            const cq_decl_param *limit = decl_find_param(q, "limit", 5);
            if (limit->type != CQ_PARAM_INT)
                return decl_fail(p, p->result_line,
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
                    return decl_fail(p, it->line, "quoted value is not closed");
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
        return decl_fail(p, it->line, "usage: -- @%s", usage);
    if (n > want)
        return decl_fail(p, it->line, "unexpected '%.*s' after @%.*s",
                         QUOTE(w[want].s, w[want].len), (int)w[0].len, w[0].s);
    return 0;
}

static int dir_projection(parser *p, const item *it, const word *w, int n)
{
    if (p->projection_line != 0)
        return decl_fail(p, it->line, "duplicate @projection");
    if (expect_words(p, it, w, n, 2, "projection NAME") < 0)
        return -1;
    if (!valid_name(w[1].s, w[1].len))
        return decl_fail(
            p, it->line,
            "bad projection name '%.*s' (want [a-z][a-z0-9_]{0,62})",
            QUOTE(w[1].s, w[1].len));
    p->projection_line = it->line;
    p->d->name = decl_dup(p, w[1].s, w[1].len);
    return p->d->name != NULL ? 0 : -1;
}

static int dir_version(parser *p, const item *it, const word *w, int n)
{
    int64_t v;

    if (p->have_version)
        return decl_fail(p, it->line, "duplicate @version");
    if (expect_words(p, it, w, n, 2, "version N") < 0)
        return -1;
    if (w[1].s[0] == '-' || decl_parse_int64(w[1].s, w[1].len, &v) < 0 ||
        v < 1 || v > INT32_MAX)
        return decl_fail(p, it->line,
                         "bad @version '%.*s' (want an integer 1..2147483647)",
                         QUOTE(w[1].s, w[1].len));
    p->d->version = v;
    p->have_version = 1;
    return 0;
}

static int dir_mode(parser *p, const item *it, const word *w, int n)
{
    if (p->have_mode)
        return decl_fail(p, it->line, "duplicate @mode");
    if (expect_words(p, it, w, n, 2, "mode async|inline") < 0)
        return -1;
    if (same("async", w[1].s, w[1].len))
        p->d->mode = CQ_DECL_ASYNC;
    else if (same("inline", w[1].s, w[1].len))
        p->d->mode = CQ_DECL_INLINE;
    else
        return decl_fail(p, it->line, "bad @mode '%.*s' (want async or inline)",
                         QUOTE(w[1].s, w[1].len));
    p->have_mode = 1;
    return 0;
}

static int dir_on(parser *p, const item *it, const word *w, int n)
{
    cq_decl_handler *h;

    if (n == 3 || (n == 4 && !same("@each", w[2].s, w[2].len)))
        return decl_fail(p, it->line, "usage: -- @on TYPE [@each PATH]");
    if (n != 4 && expect_words(p, it, w, n, 2, "on TYPE [@each PATH]") < 0)
        return -1;
    if (w[1].len > TYPE_MAX_LEN)
        return decl_fail(p, it->line, "event type longer than %d characters",
                         TYPE_MAX_LEN);
    for (size_t i = 0; i < w[1].len; i++)
        if (!is_type_char(w[1].s[i]))
            return decl_fail(p, it->line,
                             "bad event type '%.*s' (want [A-Za-z0-9_.:-])",
                             QUOTE(w[1].s, w[1].len));
    if (n == 4 && (w[3].len > PARAM_MAX_LEN ||
                   !decl_valid_path(w[3].s, w[3].len, decl_event_roots)))
        return decl_fail(
            p, it->line,
            "bad @each path '%.*s' (want data.PATH or metadata.PATH)",
            QUOTE(w[3].s, w[3].len));
    if (begin_block(p, SEC_HANDLER) < 0)
        return -1;
    h = decl_append(p, &p->d->handlers, &p->d->nhandlers, sizeof *h);
    if (h == NULL)
        return -1;
    h->line = it->line;
    if ((h->event_type = decl_dup(p, w[1].s, w[1].len)) == NULL)
        return -1;
    if (n == 4 && (h->each = decl_dup(p, w[3].s, w[3].len)) == NULL)
        return -1;
    return 0;
}

static int dir_query(parser *p, const item *it, const word *w, int n)
{
    cq_decl_query *q;

    if (expect_words(p, it, w, n, 2, "query NAME") < 0)
        return -1;
    if (!valid_name(w[1].s, w[1].len))
        return decl_fail(p, it->line,
                         "bad query name '%.*s' (want [a-z][a-z0-9_]{0,62})",
                         QUOTE(w[1].s, w[1].len));
    for (size_t i = 0; i < p->d->nqueries; i++)
        if (same(p->d->queries[i].name, w[1].s, w[1].len))
            return decl_fail(p, it->line,
                             "duplicate query %.*s (first on line %d)",
                             (int)w[1].len, w[1].s, p->d->queries[i].line);
    if (begin_block(p, SEC_QUERY) < 0)
        return -1;
    q = decl_append(p, &p->d->queries, &p->d->nqueries, sizeof *q);
    if (q == NULL)
        return -1;
    q->line = it->line;
    q->result = CQ_RESULT_LIST;
    q->name = decl_dup(p, w[1].s, w[1].len);
    return q->name != NULL ? 0 : -1;
}

/* The current query, for directives that belong to one: @param, @stream
 * and @result must come before its first statement. */
static cq_decl_query *query_directive(parser *p, const item *it, const word *w)
{
    cq_decl_query *q;

    if (p->sec != SEC_QUERY) {
        decl_fail(p, it->line, "@%.*s outside a @query", (int)w[0].len, w[0].s);
        return NULL;
    }
    q = &p->d->queries[p->d->nqueries - 1];
    if (q->nstmts > 0 || p->section_line != 0) {
        decl_fail(p, it->line, "@%.*s must come before the query's statements",
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
    if (decl_parse_int64(b->s, (size_t)(dots - b->s), min) < 0 ||
        decl_parse_int64(dots + 2, (size_t)(b->s + b->len - dots - 2), max) < 0)
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
        return decl_fail(p, it->line, "usage: -- @%s", usage);
    if (!valid_name(w[1].s, w[1].len))
        return decl_fail(p, it->line,
                         "bad param name '%.*s' (want [a-z][a-z0-9_]{0,62})",
                         QUOTE(w[1].s, w[1].len));
    for (int i = 0; reserved[i] != NULL; i++)
        if (same(reserved[i], w[1].s, w[1].len))
            return decl_fail(p, it->line,
                             "param name %s is reserved for the consistency "
                             "parameters of every query",
                             reserved[i]);
    if (decl_find_param(q, w[1].s, w[1].len) != NULL)
        return decl_fail(p, it->line, "duplicate @param %.*s", (int)w[1].len,
                         w[1].s);
    if (same("id", w[2].s, w[2].len)) {
        type = CQ_PARAM_ID;
    } else if (same("text", w[2].s, w[2].len) ||
               same("int", w[2].s, w[2].len)) {
        type = w[2].s[0] == 't' ? CQ_PARAM_TEXT : CQ_PARAM_INT;
        if (parse_bounds(&w[3], &min, &max) < 0)
            return decl_fail(
                p, it->line,
                "bad bounds '%.*s' for %s (want MIN..MAX, integers)",
                QUOTE(w[3].s, w[3].len),
                type == CQ_PARAM_TEXT ? "text" : "int");
        if (min > max)
            return decl_fail(p, it->line,
                             "bad bounds: min %" PRId64 " > max %" PRId64, min,
                             max);
        if (type == CQ_PARAM_TEXT && min < 0)
            return decl_fail(p, it->line, "bad bounds: text length min < 0");
        k = 4;
    } else {
        return decl_fail(p, it->line,
                         "bad param type '%.*s' (want id, text, int)",
                         QUOTE(w[2].s, w[2].len));
    }

    prm = decl_append(p, &q->params, &q->nparams, sizeof *prm);
    if (prm == NULL || (prm->name = decl_dup(p, w[1].s, w[1].len)) == NULL)
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
            return decl_oom(p);
        if (cq_declared_param_check(prm, prm->def, strlen(prm->def), NULL) !=
            CQ_OK)
            return decl_fail(
                p, it->line,
                "default %.*s is not a valid value of %s (%s %" PRId64
                "..%" PRId64 ")",
                QUOTE(v->s, v->len), prm->name,
                type == CQ_PARAM_ID     ? "id"
                : type == CQ_PARAM_TEXT ? "text"
                                        : "int",
                min, max);
        k += 2;
    } else {
        return decl_fail(p, it->line,
                         "@param %s needs 'required' or 'default VALUE'",
                         prm->name);
    }
    if (k < n)
        return decl_fail(p, it->line, "unexpected '%.*s' after @param",
                         QUOTE(w[k].s, w[k].len));
    return 0;
}

static int dir_stream(parser *p, const item *it, const word *w, int n)
{
    cq_decl_query *q = query_directive(p, it, w);

    if (q == NULL || expect_words(p, it, w, n, 2, "stream TEMPLATE") < 0)
        return -1;
    if (p->stream_line != 0)
        return decl_fail(p, it->line, "duplicate @stream");
    if (w[1].len > CQ_DECL_MAX_STREAM)
        return decl_fail(p, it->line, "@stream longer than %d characters",
                         CQ_DECL_MAX_STREAM);
    for (size_t i = 0; i < w[1].len; i++) {
        if (w[1].s[i] == '{') {
            size_t s = ++i;
            while (i < w[1].len && w[1].s[i] != '}')
                i++;
            if (i == w[1].len || !valid_name(w[1].s + s, i - s))
                return decl_fail(
                    p, it->line,
                    "bad @stream '%.*s': want {param} placeholders",
                    QUOTE(w[1].s, w[1].len));
        } else if (!is_type_char(w[1].s[i])) {
            return decl_fail(p, it->line,
                             "bad @stream '%.*s': literal part must be "
                             "[A-Za-z0-9_.:-]",
                             QUOTE(w[1].s, w[1].len));
        }
    }
    p->stream_line = it->line;
    q->stream = decl_dup(p, w[1].s, w[1].len);
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
        return decl_fail(p, it->line, "duplicate @result");
    if (n < 2)
        return decl_fail(p, it->line, "usage: -- @%s", usage);
    if (same("page", w[1].s, w[1].len)) {
        if (expect_words(p, it, w, n, 4, usage) < 0)
            return -1;
        if (!valid_name(w[2].s, w[2].len) || same("next", w[2].s, w[2].len))
            return decl_fail(
                p, it->line,
                "bad page field '%.*s' (want [a-z][a-z0-9_]{0,62}, "
                "not 'next')",
                QUOTE(w[2].s, w[2].len));
        if (!valid_column(w[3].s, w[3].len))
            return decl_fail(p, it->line, "bad cursor column '%.*s'",
                             QUOTE(w[3].s, w[3].len));
        q->result = CQ_RESULT_PAGE;
        if ((q->page_field = decl_dup(p, w[2].s, w[2].len)) == NULL ||
            (q->cursor_column = decl_dup(p, w[3].s, w[3].len)) == NULL)
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
            return decl_fail(p, it->line, "bad @result '%.*s' (want %s)",
                             QUOTE(w[1].s, w[1].len),
                             "one, list, page or sections");
    }
    p->result_line = it->line;
    return 0;
}

static int dir_section(parser *p, const item *it, const word *w, int n)
{
    const cq_decl_query *q;

    if (p->sec != SEC_QUERY || p->result_line == 0 ||
        p->d->queries[p->d->nqueries - 1].result != CQ_RESULT_SECTIONS)
        return decl_fail(
            p, it->line,
            "@section outside a sections query (@result sections)");
    q = &p->d->queries[p->d->nqueries - 1];
    if (p->section_line != 0)
        return decl_fail(p, p->section_line, "@section has no statement");
    if (expect_words(p, it, w, n, 2, "section NAME") < 0)
        return -1;
    if (!valid_name(w[1].s, w[1].len))
        return decl_fail(p, it->line,
                         "bad section name '%.*s' (want [a-z][a-z0-9_]{0,62})",
                         QUOTE(w[1].s, w[1].len));
    for (size_t i = 0; i < q->nstmts; i++)
        if (same(q->section_names[i], w[1].s, w[1].len))
            return decl_fail(p, it->line, "duplicate @section %.*s",
                             (int)w[1].len, w[1].s);
    if ((p->section_name = decl_dup(p, w[1].s, w[1].len)) == NULL)
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
        return decl_fail(p, it->line, "empty directive '@'");
    if (n > MAX_WORDS)
        return decl_fail(p, it->line, "too many words in directive");
    if (p->projection_line == 0 && !same("projection", w[0].s, w[0].len))
        return decl_fail(p, it->line,
                         "the first directive must be @projection");
    if ((same("version", w[0].s, w[0].len) || same("mode", w[0].s, w[0].len)) &&
        p->sec != SEC_HEADER)
        return decl_fail(p, it->line,
                         "@%.*s must come before the first statement, @on or "
                         "@query",
                         (int)w[0].len, w[0].s);
    if (same("each", w[0].s, w[0].len))
        return decl_fail(p, it->line,
                         "@each without @on (write '-- @on TYPE @each PATH')");
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++)
        if (same(table[i].name, w[0].s, w[0].len))
            return table[i].fn(p, it, w, n);
    return decl_fail(p, it->line, "unknown directive @%.*s",
                     QUOTE(w[0].s, w[0].len));
}

static int statement(parser *p, const item *it)
{
    cq_decl_stmt *st;

    if (p->projection_line == 0)
        return decl_fail(p, it->line, "statement before @projection");
    if (++p->nstatements > CQ_DECL_MAX_STMTS)
        return decl_fail(p, it->line, "more than %d statements",
                         CQ_DECL_MAX_STMTS);
    if (end_header(p) < 0 || decl_check_statement_kind(p, it) < 0)
        return -1;
    switch (p->sec) {
    case SEC_DDL:
        st = decl_append(p, &p->d->ddl, &p->d->nddl, sizeof *st);
        break;
    case SEC_HANDLER: {
        cq_decl_handler *h = &p->d->handlers[p->d->nhandlers - 1];
        st = decl_append(p, &h->stmts, &h->nstmts, sizeof *st);
        break;
    }
    default: { /* SEC_QUERY */
        cq_decl_query *q = &p->d->queries[p->d->nqueries - 1];
        int uses_limit = 0, uses_after = 0;
        static const char *const kinds[] = {"one", "list", "page"};

        if (p->result_line == 0)
            return decl_fail(p, q->line,
                             "query %s has no @result before its statement",
                             q->name);
        if (q->result == CQ_RESULT_SECTIONS) {
            char **names;
            if (p->section_line == 0)
                return decl_fail(p, it->line,
                                 "each statement of a sections query needs a "
                                 "'-- @section NAME' before it");
            /* Room for the name first; it moves in once the statement is
             * counted, so section_names always has nstmts set entries. */
            names = realloc(q->section_names, (q->nstmts + 1) * sizeof *names);
            if (names == NULL)
                return decl_oom(p);
            q->section_names = names;
        } else if (q->nstmts > 0) {
            return decl_fail(p, it->line,
                             "@result %s takes exactly one statement",
                             kinds[q->result]);
        }
        for (size_t k = 0; k < it->nocc; k++) {
            const char *name = p->src + it->occ[k].off + 1;
            uses_limit |= same("limit", name, it->occ[k].len - 1);
            uses_after |= same("after", name, it->occ[k].len - 1);
        }
        if (q->result == CQ_RESULT_PAGE && !(uses_limit && uses_after))
            return decl_fail(p, it->line,
                             "a page query must use :limit and :after");
        st = decl_append(p, &q->stmts, &q->nstmts, sizeof *st);
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
    return decl_build_stmt(p, it, st);
}

/* The whole file, item by item; -1 on the first error. */
static int parse(parser *p)
{
    item it = {0};
    int rc = -1;

    if (decl_check_bytes(p) < 0)
        return -1;
    if (p->len >= 3 && memcmp(p->src, "\xef\xbb\xbf", 3) == 0)
        p->pos = p->begin = 3; /* a byte-order mark some editors write */
    for (;;) {
        if (decl_lex_next(p, &it) < 0)
            goto done;
        if (it.kind == ITEM_EOF)
            break;
        if ((it.kind == ITEM_DIRECTIVE ? directive(p, &it)
                                       : statement(p, &it)) < 0)
            goto done;
    }
    if (p->projection_line == 0) {
        decl_fail(p, 1, "missing @projection");
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
        decl_fail(&p, 1, "no text");
        return CQ_EINVAL;
    }
    if ((p.d = calloc(1, sizeof *p.d)) == NULL) {
        decl_oom(&p);
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
