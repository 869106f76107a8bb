/*
 * rdb_pg_sql.c -- SQL text for PostgreSQL: SQLite's `?N` parameters
 * rewritten to `$N` outside string literals, quoted identifiers,
 * dollar-quoted strings and comments (rpg_rewrite), SQLite's BEGIN
 * IMMEDIATE as a plain BEGIN (rpg_plain_begin), and the parameter types
 * PostgreSQL inferred widened to 64 bits (rpg_widened). Pure functions of
 * their arguments: no connection, no state, any thread.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <libpq-fe.h>

#include "cqrs/cqrs.h"
#include "store/rdb.h"
#include "store/rdb_pg_int.h"

/* ---- characters of SQL ---- */

static int ident_char(char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
           (ch >= '0' && ch <= '9') || ch == '_' || ch == '$' ||
           (unsigned char)ch >= 0x80;
}

static int is_digit(char ch)
{
    return ch >= '0' && ch <= '9';
}

/* SQLite's `BEGIN IMMEDIATE` (or EXCLUSIVE, DEFERRED) at the start of
 * sql, which the engine writes to take SQLite's write lock up front, as
 * PostgreSQL's plain `BEGIN` (whose writers lock rows as they go): a copy
 * of sql without the word, or NULL when sql does not start so (or out of
 * memory: then PostgreSQL reports the word). */
char *rpg_plain_begin(const char *sql)
{
    static const char *const modes[] = {"IMMEDIATE", "EXCLUSIVE", "DEFERRED"};
    const char *s = sql + strspn(sql, " \t\r\n");
    char *out;

    if (strncasecmp(s, "BEGIN", 5) != 0 || !strchr(" \t\r\n", s[5]) ||
        s[5] == '\0')
        return NULL;
    s += 5;
    s += strspn(s, " \t\r\n");
    for (size_t i = 0; i < sizeof modes / sizeof modes[0]; i++) {
        size_t n = strlen(modes[i]);
        if (strncasecmp(s, modes[i], n) == 0 && !ident_char(s[n])) {
            out = malloc(strlen(s + n) + 6);
            if (out != NULL)
                sprintf(out, "BEGIN%s", s + n);
            return out;
        }
    }
    return NULL;
}

/* ---- statements ---- */

/* The end (just past the closing quote, or n) of the literal or quoted
 * name that opens at sql[i]; a doubled quote is part of it, and so is a
 * backslash's next character when `esc` (E'..'). */
static size_t quoted_end(const char *sql, size_t n, size_t i, int esc)
{
    char q = sql[i];

    for (i++; i < n; i++) {
        if (esc && sql[i] == '\\' && i + 1 < n)
            i++;
        else if (sql[i] == q && i + 1 < n && sql[i + 1] == q)
            i++;
        else if (sql[i] == q)
            return i + 1;
    }
    return n;
}

/* The parameter types to prepare with when some of 1..nparams do not
 * occur in the text (seen: a bit per number): text for those, which
 * SQLite allows and PostgreSQL cannot infer (`SET b = ?3 WHERE a = ?1`),
 * the others left to the server. NULL when all occur (or out of memory:
 * then PostgreSQL says which it cannot type). */
static Oid *gap_types(const unsigned char *seen, int nparams)
{
    Oid *types = NULL;

    for (int k = 1; k <= nparams; k++) {
        if (seen[k / 8] & (1u << (k % 8)))
            continue;
        if (types == NULL &&
            (types = calloc((size_t)nparams, sizeof *types)) == NULL)
            return NULL;
        types[k - 1] = OID_TEXT;
    }
    return types;
}

/* sql with ?N written $N outside quotes and comments (see the top), in
 * *nparams the highest N or $N seen (and in *types, gap_types), and in
 * *empty whether it holds nothing but blanks, `;` and comments; NULL when
 * out of memory. */
char *rpg_rewrite(const char *sql, int *nparams, Oid **types, int *empty)
{
    size_t n = strlen(sql), o = 0;
    char *out = malloc(2 * n + 1); /* a blank may come before each $N */
    unsigned char seen[65536 / 8];
    int maxp = 0, tokens = 0;

    memset(seen, 0, sizeof seen);

    if (out == NULL)
        return NULL;
    for (size_t i = 0; i < n;) {
        char ch = sql[i];
        int after_ident = i > 0 && ident_char(sql[i - 1]);

        if (!strchr(" \t\r\n\f\v;", ch) &&
            !(ch == '-' && i + 1 < n && sql[i + 1] == '-') &&
            !(ch == '/' && i + 1 < n && sql[i + 1] == '*'))
            tokens = 1;

        if (ch == '\'' || ch == '"') {
            /* E'..' takes backslash escapes; '' is a quote either way */
            int esc = ch == '\'' && i > 0 &&
                      (sql[i - 1] == 'E' || sql[i - 1] == 'e') &&
                      !(i > 1 && ident_char(sql[i - 2]));
            size_t end = quoted_end(sql, n, i, esc);
            memcpy(out + o, sql + i, end - i);
            o += end - i;
            i = end;
        } else if (ch == '-' && i + 1 < n && sql[i + 1] == '-') {
            while (i < n && sql[i] != '\n')
                out[o++] = sql[i++];
        } else if (ch == '/' && i + 1 < n && sql[i + 1] == '*') {
            int depth = 0; /* PostgreSQL's block comments nest */
            do {
                if (sql[i] == '/' && i + 1 < n && sql[i + 1] == '*') {
                    depth++;
                    out[o++] = sql[i++];
                } else if (sql[i] == '*' && i + 1 < n && sql[i + 1] == '/') {
                    depth--;
                    out[o++] = sql[i++];
                }
                out[o++] = sql[i++];
            } while (i < n && depth > 0);
        } else if (ch == '$' && !after_ident && i + 1 < n &&
                   is_digit(sql[i + 1])) {
            long v = strtol(sql + i + 1, NULL, 10);
            if (v > 0 && v < 65536) {
                seen[v / 8] |= (unsigned char)(1u << (v % 8));
                maxp = v > maxp ? (int)v : maxp;
            }
            out[o++] = sql[i++];
            while (i < n && is_digit(sql[i]))
                out[o++] = sql[i++];
        } else if (ch == '$' && !after_ident) {
            /* $tag$ .. $tag$ (the tag may be empty) */
            size_t t = i + 1;
            while (t < n && sql[t] != '$' && ident_char(sql[t]) &&
                   !(t == i + 1 && is_digit(sql[t])))
                t++;
            if (t < n && sql[t] == '$') {
                size_t taglen = t + 1 - i;
                const char *end = NULL;
                for (size_t k = t + 1; k + taglen <= n; k++)
                    if (memcmp(sql + k, sql + i, taglen) == 0) {
                        end = sql + k + taglen;
                        break;
                    }
                size_t stop = end ? (size_t)(end - sql) : n;
                while (i < stop)
                    out[o++] = sql[i++];
            } else {
                out[o++] = sql[i++];
            }
        } else if (ch == '?' && i + 1 < n && is_digit(sql[i + 1])) {
            long v = strtol(sql + i + 1, NULL, 10);
            if (v > 0 && v < 65536) {
                seen[v / 8] |= (unsigned char)(1u << (v % 8));
                maxp = v > maxp ? (int)v : maxp;
            }
            /* SQLite ends a word at `?` (`LIMIT?1`); PostgreSQL's words
             * may hold `$` */
            if (after_ident)
                out[o++] = ' ';
            out[o++] = '$';
            i++;
            while (i < n && is_digit(sql[i]))
                out[o++] = sql[i++];
        } else if (after_ident) {
            /* the rest of a word: a '$' or digits inside it are its own */
            out[o++] = sql[i++];
        } else {
            out[o++] = sql[i++];
        }
    }
    out[o] = '\0';
    *nparams = maxp;
    *types = gap_types(seen, maxp);
    *empty = !tokens;
    return out;
}

/* The parameter types PostgreSQL inferred for a statement (its
 * description d), the narrow numbers widened: a `?N` that PostgreSQL read
 * as an integer or float4 from its context (`COALESCE(?1, 0)`, `?1 > 0`)
 * takes any 64-bit integer or double, as SQLite's would. *wide says
 * whether one was. NULL when it cannot be told (or out of memory). */
Oid *rpg_widened(const PGresult *d, int nparams, int *wide)
{
    Oid *types;

    *wide = 0;
    if (nparams == 0 || PQnparams(d) != nparams ||
        (types = calloc((size_t)nparams, sizeof *types)) == NULL)
        return NULL;
    for (int i = 0; i < nparams; i++) {
        types[i] = PQparamtype(d, i);
        if (types[i] == OID_INT2 || types[i] == OID_INT4) {
            types[i] = OID_INT8;
            *wide = 1;
        } else if (types[i] == OID_FLOAT4) {
            types[i] = OID_FLOAT8;
            *wide = 1;
        }
    }
    return types;
}

int rpg_is_savepoint_op(const char *sql)
{
    const char *s = sql + strspn(sql, " \t\r\n");
    size_t n;

    if (strncasecmp(s, "SAVEPOINT", 9) == 0 && !ident_char(s[9]))
        s += 9;
    else if (strncasecmp(s, "RELEASE", 7) == 0 && !ident_char(s[7]))
        s += 7;
    else
        return 0;
    s += strspn(s, " \t\r\n");
    if (strncasecmp(s, "SAVEPOINT", 9) == 0 && !ident_char(s[9]))
        s += 9 + strspn(s + 9, " \t\r\n");
    for (n = 0; ident_char(s[n]) && s[n] != '$'; n++)
        ;
    if (n == 0)
        return 0;
    s += n;
    s += strspn(s, " \t\r\n");
    if (*s == ';')
        s++;
    return s[strspn(s, " \t\r\n")] == '\0';
}

int rpg_changes_schema(const char *sql)
{
    static const char *const words[] = {"ALTER", "DROP", "RENAME", "REPLACE"};

    for (const char *s = sql; *s != '\0'; s++) {
        if (!ident_char(*s) || (s > sql && ident_char(s[-1])))
            continue;
        for (size_t i = 0; i < sizeof words / sizeof words[0]; i++) {
            size_t n = strlen(words[i]);
            if (strncasecmp(s, words[i], n) == 0 && !ident_char(s[n]))
                return 1;
        }
    }
    return 0;
}

/* sql past its leading blanks and comments (-- to the line's end, and
 * C-style, not nested: a statement's text never starts with a nested
 * one in practice, and a miss only costs a round trip). */
static const char *first_word(const char *s)
{
    for (;;) {
        s += strspn(s, " \t\r\n");
        if (s[0] == '-' && s[1] == '-')
            s += strcspn(s, "\n");
        else if (s[0] == '/' && s[1] == '*') {
            const char *end = strstr(s + 2, "*/");
            if (end == NULL)
                return "";
            s = end + 2;
        } else
            return s;
    }
}

static int starts_with_word(const char *s, const char *word)
{
    size_t n = strlen(word);

    return strncasecmp(s, word, n) == 0 && !ident_char(s[n]);
}

int rpg_is_write(const char *sql)
{
    const char *s = first_word(sql);

    return starts_with_word(s, "INSERT") || starts_with_word(s, "UPDATE") ||
           starts_with_word(s, "DELETE");
}

int rpg_is_rollback(const char *sql)
{
    const char *s = first_word(sql);

    return starts_with_word(s, "ROLLBACK") || starts_with_word(s, "ABORT");
}
