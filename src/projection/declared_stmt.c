/*
 * declared_stmt.c -- one statement of a declared projection: whether its
 * kind is allowed where it stands (DDL, @on, query), whether each of its
 * `:name` parameters may be used there, and its two texts: `?N` for
 * SQLite and `$N` for PostgreSQL (there with INTEGER, INT and REAL read
 * as the 64-bit types they are on SQLite: add_pg_text), with the names in
 * order of first appearance.
 *
 * Threads: no global state; a parser belongs to the call that made it.
 */
#include "projection/declared_int.h"

#include <stdio.h>

#include "base/strbuf.h"

static int word_is(const char *w, size_t n, const char *kw)
{
    return strlen(kw) == n && strncasecmp(w, kw, n) == 0;
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
int decl_check_statement_kind(parser *p, const item *it)
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
        return decl_fail(p, it->line,
                         "only CREATE TABLE, CREATE INDEX and CREATE UNIQUE "
                         "INDEX may come before the first @on or @query");
    case SEC_HANDLER:
        if (word_is(w1, n1, "insert") && word_is(w2, n2, "or"))
            return decl_fail(
                p, it->line,
                "INSERT OR ... is SQLite-only; write INSERT ... ON "
                "CONFLICT (...) DO UPDATE/NOTHING");
        if (word_is(w1, n1, "insert") || word_is(w1, n1, "update") ||
            word_is(w1, n1, "delete") || word_is(w1, n1, "with"))
            return 0;
        return decl_fail(p, it->line,
                         "an @on statement must be INSERT, UPDATE or DELETE");
    case SEC_QUERY:
        if (word_is(w1, n1, "select") || word_is(w1, n1, "with"))
            return 0;
        return decl_fail(p, it->line, "a query statement must be a SELECT");
    default: return 0;
    }
}

/* The @param of q called name[0..n), or NULL. */
const cq_decl_param *decl_find_param(const cq_decl_query *q, const char *name,
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
        return decl_fail(p, o->line,
                         "DDL statements take no parameters (:%.*s)",
                         QUOTE(name, n));
    case SEC_HANDLER: {
        const cq_decl_handler *h = &p->d->handlers[p->d->nhandlers - 1];
        ok = decl_valid_handler_param(name, n, h->each != NULL);
        if (!ok && decl_path_root(name, n) == 4 && memcmp(name, "item", 4) == 0)
            return decl_fail(p, o->line,
                             ":item is defined only in an @each block");
        break;
    }
    case SEC_QUERY:
        ok = decl_find_param(&p->d->queries[p->d->nqueries - 1], name, n) !=
             NULL;
        if (!ok)
            return decl_fail(p, o->line,
                             "unknown parameter :%.*s (declare it with @param)",
                             QUOTE(name, n));
        break;
    default: break;
    }
    if (!ok)
        return decl_fail(p, o->line, "unknown parameter :%.*s", QUOTE(name, n));
    return 0;
}

/* Append s[0..n) to the PostgreSQL text with the type names that are
 * narrower there than on SQLite widened: INTEGER and INT (32 bits on
 * PostgreSQL, 64 on SQLite) become BIGINT, REAL (float4 there, a double
 * here) DOUBLE PRECISION; so a column or a CAST holds the same values on
 * both. Only bare words outside literals, quoted names and comments, and
 * not after a `.` (a column `t.int`); s starts outside all of them (it
 * runs between parameters). */
static void add_pg_text(cq_strbuf *pg, const char *s, size_t n)
{
    size_t i = 0, run = 0;
    char prev = 0; /* the last significant character */

    while (i < n) {
        char c = s[i];
        if (c == '\'' || c == '"' || c == '`' || c == '[') {
            char close = c == '[' ? ']' : c;
            for (i++; i < n && s[i] != close; i++)
                ;
            i++; /* a doubled quote reads as two strings: the same */
            prev = close;
        } else if (c == '-' && i + 1 < n && s[i + 1] == '-') {
            while (i < n && s[i] != '\n')
                i++;
        } else if (c == '/' && i + 1 < n && s[i + 1] == '*') {
            for (i += 2; i + 1 < n && !(s[i] == '*' && s[i + 1] == '/'); i++)
                ;
            i += 2;
        } else if (is_ident_start(c) || (unsigned char)c >= 0x80) {
            size_t w = i;
            const char *to = NULL;
            while (i < n && (is_ident(s[i]) || s[i] == '$' ||
                             (unsigned char)s[i] >= 0x80))
                i++;
            if (prev != '.') {
                if (word_is(s + w, i - w, "integer") ||
                    word_is(s + w, i - w, "int"))
                    to = "BIGINT";
                else if (word_is(s + w, i - w, "real"))
                    to = "DOUBLE PRECISION";
            }
            if (to != NULL) {
                cq_strbuf_add(pg, s + run, w - run);
                cq_strbuf_puts(pg, to);
                run = i;
            }
            prev = 'a';
        } else if (is_digit(c)) {
            while (i < n && (is_ident(s[i]) || s[i] == '.'))
                i++; /* a number, 1e5 and 0x1F included */
            prev = '0';
        } else {
            if (!is_blank(c) && c != '\n')
                prev = c;
            i++;
        }
    }
    cq_strbuf_add(pg, s + run, n - run);
}

/* Fill `st` from statement item `it`: numbered parameters and the text for
 * each dialect. */
int decl_build_stmt(parser *p, const item *it, cq_decl_stmt *st)
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
                decl_fail(p, o->line,
                          "more than %d parameters in one statement",
                          CQ_DECL_MAX_PARAMS);
                goto done;
            }
            slot = decl_append(p, &st->params, &st->nparams, sizeof *slot);
            if (slot == NULL || (*slot = decl_dup(p, name, n)) == NULL)
                goto done;
        }
        cq_strbuf_add(&lite, p->src + at, o->off - at);
        add_pg_text(&pg, p->src + at, o->off - at);
        snprintf(ph, sizeof ph, "?%zu", idx + 1);
        cq_strbuf_puts(&lite, ph);
        ph[0] = '$';
        cq_strbuf_puts(&pg, ph);
        at = o->off + o->len;
    }
    cq_strbuf_add(&lite, p->src + at, it->end - at);
    add_pg_text(&pg, p->src + at, it->end - at);
    st->sqlite_sql = cq_strbuf_take(&lite);
    st->pg_sql = cq_strbuf_take(&pg);
    if (st->sqlite_sql == NULL || st->pg_sql == NULL) {
        decl_oom(p);
        goto done;
    }
    rc = 0;
done:
    cq_strbuf_reset(&lite);
    cq_strbuf_reset(&pg);
    return rc;
}
