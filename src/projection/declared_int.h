/*
 * declared_int.h -- what the declared_*.c files share and nobody else
 * needs: the parser's limits and state, character classes, parameter
 * paths. The interface for the rest of the engine is declared.h.
 *
 * Layout of the parser (one concept per file):
 *
 *   | file              | concept                                          |
 *   |-------------------|--------------------------------------------------|
 *   | declared_lex.c    | bytes and tokens: UTF-8/NUL check, decimals, the |
 *   |                   | lexer that cuts the text into directives and     |
 *   |                   | statements                                       |
 *   | declared_parse.c  | directives and sections -> cq_declared; the      |
 *   |                   | parser's error and allocation helpers; free      |
 *   | declared_stmt.c   | one statement: its kind, its parameters, its     |
 *   |                   | SQLite and PostgreSQL texts                      |
 *   | declared_path.c   | parameter paths: syntax, and following one       |
 *   |                   | through a JSON document                          |
 *   | declared_bind.c   | the value a handler parameter takes from an event|
 *   | declared_query.c  | named queries: lookup, request values, @stream   |
 *
 * Threads: nothing here is global or mutable; a parser lives on its
 * caller's stack.
 */
#ifndef CQ_PROJECTION_DECLARED_INT_H
#define CQ_PROJECTION_DECLARED_INT_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <strings.h>

#include <jansson.h>

#include "projection/declared.h"

#define NAME_MAX_LEN 63    /* projection, query, param, section names */
#define TYPE_MAX_LEN 128   /* event types */
#define PARAM_MAX_LEN 256  /* a parameter's name with its path */
#define INDEX_MAX_DIGITS 9 /* [N] in paths */
#define MAX_WORDS 8        /* words of one directive line */

/* ---- character classes --------------------------------------------------- */

static inline int is_alpha(int c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z');
}

static inline int is_digit(int c)
{
    return c >= '0' && c <= '9';
}

static inline int is_ident_start(int c)
{
    return is_alpha(c) || c == '_';
}

static inline int is_ident(int c)
{
    return is_ident_start(c) || is_digit(c);
}

static inline int is_blank(int c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\f' || c == '\v';
}

/* Characters of event types and of the literal part of stream templates. */
static inline int is_type_char(int c)
{
    return is_ident(c) || c == '.' || c == ':' || c == '-';
}

static inline int same(const char *a, const char *b, size_t blen)
{
    return strlen(a) == blen && memcmp(a, b, blen) == 0;
}

/* The longest prefix of s[0..n) of at most max bytes that ends on a
 * character boundary (s is valid UTF-8), to quote input in messages. */
static inline int clip(const char *s, size_t n, size_t max)
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

/* ---- parameter paths (declared_path.c) ----------------------------------- */

/* A path is a root name followed by steps ".name" or "[N]":
 * "data.items[0].sku". decl_path_step() reads the step at s[*pos], if any. */
typedef struct step {
    const char *key; /* ".name": the name, keylen bytes; "[N]": NULL */
    size_t keylen;
    size_t index;
} step;

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

/* What decl_lex_next() found. DIRECTIVE: src[start..end) is the line after its
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

/* ---- shared between the declared_*.c files ------------------------------- */

/* The decl_ prefix marks functions with external linkage that only the
 * declared_*.c files call. Those that take a parser follow its error rule:
 * -1 once an error is recorded in it (the first one wins), 0 otherwise. */

/* declared_parse.c. decl_fail: record "LINE: message" (cut on a character
 * boundary); -1. decl_oom: record "out of memory" and set p->oom; -1.
 * decl_append: grow the array *arr (a T **, *n elements of `size` bytes)
 * by one zeroed element and return it, counted in *n; NULL (recorded) when
 * out of memory, *arr then unchanged. decl_dup: strndup, the copy owned by
 * the caller; NULL (recorded) when out of memory. */
__attribute__((format(printf, 3, 4))) int decl_fail(parser *p, int line,
                                                    const char *fmt, ...);
int decl_oom(parser *p);
void *decl_append(parser *p, void *arr, size_t *n, size_t size);
char *decl_dup(parser *p, const char *s, size_t n);

/* declared_lex.c. decl_parse_int64: s[0..n) as a decimal int64 with an
 * optional '-' into *out; 0, or -1 if malformed or out of range (no
 * parser: nothing recorded). decl_check_bytes: size, NUL bytes, UTF-8.
 * decl_lex_next: the next item of p's text into it (it->occ is grown as
 * needed and owned by the caller, who frees it once at the end). */
int decl_parse_int64(const char *s, size_t n, int64_t *out);
int decl_check_bytes(parser *p);
int decl_lex_next(parser *p, item *it);

/* declared_stmt.c. decl_check_statement_kind: the statement's first words
 * suit p->sec. decl_find_param: the @param of q called name[0..n)
 * (borrowed from q), or NULL. decl_build_stmt: fill st (zeroed, owned by
 * p->d) from statement item `it`: its parameters checked and numbered,
 * its SQLite and PostgreSQL texts. */
int decl_check_statement_kind(parser *p, const item *it);
const cq_decl_param *decl_find_param(const cq_decl_query *q, const char *name,
                                     size_t n);
int decl_build_stmt(parser *p, const item *it, cq_decl_stmt *st);

/* declared_path.c. The roots a path may start with: decl_event_roots
 * (data, metadata), decl_item_roots (item); NULL-terminated.
 * decl_path_step: 1 and *st filled if a well-formed step starts at s[*pos]
 * (*pos advanced past it), 0 at the end of s[0..n), -1 if anything else is
 * there. decl_path_root: the length of the root name of s[0..n).
 * decl_valid_path: 1 if s[0..n) is one of `roots` followed by zero or more
 * well-formed steps, else 0. decl_valid_handler_param: 1 if name[0..n) may
 * be used in an @on block (in_each: an @each block, where :item is also
 * defined), else 0. No state; thread-safe. */
extern const char *const decl_event_roots[];
extern const char *const decl_item_roots[];
int decl_path_step(const char *s, size_t n, size_t *pos, step *st);
size_t decl_path_root(const char *s, size_t n);
int decl_valid_path(const char *s, size_t n, const char *const *roots);
int decl_valid_handler_param(const char *name, size_t n, int in_each);

#endif
