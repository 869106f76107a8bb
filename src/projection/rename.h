/*
 * rename.h -- renaming identifiers in SQL text, to build "shadow" copies
 * of a projection's tables for blue/green rebuilds: the same DDL and
 * statements, run against `order_summaries__shadow` instead of
 * `order_summaries`, fill new tables while the live ones keep serving.
 *
 * The renamer is a lexer, not a parser: it knows SQLite's tokens well
 * enough to find every identifier and to leave everything else alone.
 *
 *   | text                                   | treatment                  |
 *   |----------------------------------------|----------------------------|
 *   | '...' ('' escapes), X'...'             | copied unchanged           |
 *   | -- to end of line, block comments      | copied unchanged           |
 *   | bare identifier                        | renamed if it matches      |
 *   |   [A-Za-z_][A-Za-z0-9_$]* (bytes       |                            |
 *   |   >= 0x80 count as letters)            |                            |
 *   | "x" ("" escapes), `x` (`` escapes),    | content compared; renamed  |
 *   |   [x]                                  |   inside the same quotes   |
 *   | identifier after `.`                   | renamed only if the token  |
 *   |                                        |   before the dot is `main` |
 *   |                                        |   or `temp` (maybe quoted) |
 *   | :name @name $name ?N                   | parameters: unchanged      |
 *   | a token starting with a digit          | a number: it and every     |
 *   |                                        |   [A-Za-z0-9_.] after it   |
 *   |                                        |   unchanged (1e5, 0x1F)    |
 *   | anything else                          | copied byte for byte       |
 *
 * So `t.col` becomes `t2.col` (the qualifier is a table name; the column
 * after the dot is not), `main.t` becomes `main.t2`, and `x.t` (x an
 * alias) keeps its column `t`. Whitespace and comments between a dot and
 * its neighbours do not matter, as for SQLite. A token is matched by its
 * name alone: wherever it is not after a dot, it is renamed even where it
 * is a keyword, a column or an alias, so map only names the text uses for
 * nothing but the tables and indexes to rename. Text that ends inside an
 * unclosed literal, quoted identifier or comment is copied unchanged from
 * there on; SQLite reports the error when the statement is prepared.
 *
 * Threads: no state; any thread may call it on its own arguments.
 */
#ifndef CQ_PROJECTION_RENAME_H
#define CQ_PROJECTION_RENAME_H

#include <stddef.h>

/* One renaming. Both strings are borrowed for the duration of the call. */
typedef struct cq_rename {
    const char *from; /* an identifier, matched ASCII case-insensitively */
    const char *to;   /* what it becomes (an identifier, written as given) */
} cq_rename;

/* A copy of sql (malloc'd, NUL-terminated; the caller frees it) in which
 * every identifier token equal to some map[i].from is replaced by map[i].to.
 * NULL only when out of memory.
 *
 * sql: NUL-terminated SQL text, any number of statements; not NULL.
 * map: n renamings (may be NULL when n is 0). The first entry whose `from`
 *   matches wins; an empty `from` matches nothing. `to` replaces a bare
 *   identifier as given (so it should be a bare identifier itself); inside
 *   "..." or `...` a quote character in `to` is doubled, and [..] that
 *   would need a `]` is written as "..." instead.
 */
char *cq_sql_rename(const char *sql, const cq_rename *map, size_t n);

#endif
