/*
 * test_declared.c -- unit tests of src/projection/declared_*.c: a complete
 * file with every field, placeholder numbering in both dialects, the
 * lexer's literals/comments/casts, every error with its line, @each,
 * every @result kind, stream templates, request value checks, and binding
 * event fields (nested paths, arrays, missing paths, every JSON type) and
 * following a path (cq_declared_path_json).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "base/base.h"
#include "cqrs/cqrs.h"
#include "projection/declared.h"

/* Two lines every small test file starts with. */
#define HDR "-- @projection p\n-- @version 1\n"

static const char full_file[] =
    "-- @projection order_summaries\n"                                  /* 1 */
    "-- @version 3\n"                                                   /* 2 */
    "-- @mode inline\n"                                                 /* 3 */
    "\n"                                                                /* 4 */
    "CREATE TABLE IF NOT EXISTS order_summaries (\n"                    /* 5 */
    "    order_id TEXT PRIMARY KEY, status TEXT, version BIGINT);\n"    /* 6 */
    "create unique index if not exists s_status\n"                      /* 7 */
    "    on order_summaries (status, order_id);\n"                      /* 8 */
    "/* lines */ CREATE TABLE order_lines (order_id TEXT, sku TEXT);\n" /* 9 */
    "\n"                                                                /* 10 */
    "-- @on OrderPlaced\n"                                              /* 11 */
    "INSERT INTO order_summaries (order_id, status, version)\n"         /* 12 */
    "VALUES (:data.order_id, 'placed', :version)\n"                     /* 13 */
    "ON CONFLICT (order_id) DO UPDATE SET version = excluded.version\n" /* 14 */
    "WHERE order_summaries.version < excluded.version;\n"               /* 15 */
    "-- @on OrderPlaced @each data.items\n"                             /* 16 */
    "INSERT INTO order_lines (order_id, sku) VALUES (:data.order_id, "
    ":item.sku)\n"                                                  /* 17 */
    "ON CONFLICT (order_id, sku) DO NOTHING;\n"                     /* 18 */
    "DELETE FROM order_lines WHERE sku = '';\n"                     /* 19 */
    "\n"                                                            /* 20 */
    "-- @query order_summary\n"                                     /* 21 */
    "-- @param order_id id required\n"                              /* 22 */
    "-- @stream order-{order_id}\n"                                 /* 23 */
    "-- @result one\n"                                              /* 24 */
    "SELECT order_id, status FROM order_summaries\n"                /* 25 */
    "WHERE order_id = :order_id;\n"                                 /* 26 */
    "-- @query by_status\n"                                         /* 27 */
    "-- @param status text 1..20 default 'placed'\n"                /* 28 */
    "-- @param limit int 1..100 default 20\n"                       /* 29 */
    "-- @param after text 0..64 default ''\n"                       /* 30 */
    "-- @result page orders order_id\n"                             /* 31 */
    "SELECT order_id FROM order_summaries WHERE status = :status\n" /* 32 */
    "  AND order_id > :after ORDER BY order_id LIMIT :limit;\n";    /* 33 */

static cq_declared *parse_ok(const char *text)
{
    cq_declared *d = NULL;
    char err[256] = "";
    int rc = cq_declared_parse(text, strlen(text), &d, err, sizeof err);

    if (rc != CQ_OK)
        fail_msg("parse failed: %s\n--\n%s", err, text);
    assert_non_null(d);
    assert_string_equal(err, "");
    return d;
}

static void expect_error(const char *text, size_t len, const char *want)
{
    cq_declared *d = (cq_declared *)1;
    char err[256];
    int rc = cq_declared_parse(text, len, &d, err, sizeof err);

    if (rc != CQ_EINVAL || strcmp(err, want) != 0)
        fail_msg("want \"%s\", got rc %d \"%s\" for\n%s", want, rc, err, text);
    assert_null(d);
}

#define ERR(text, want) expect_error((text), strlen(text), (want))

static void test_full_file(void **state)
{
    cq_declared *d = parse_ok(full_file);
    const cq_decl_handler *h;
    const cq_decl_query *q;
    char hash[65];

    (void)state;
    assert_string_equal(d->name, "order_summaries");
    assert_int_equal(d->version, 3);
    assert_int_equal(d->mode, CQ_DECL_INLINE);
    cq_sha256_hex(full_file, strlen(full_file), hash);
    assert_string_equal(d->source_hash, hash);

    assert_int_equal(d->nddl, 3);
    assert_int_equal(d->ddl[0].line, 5);
    assert_string_equal(d->ddl[0].sqlite_sql,
                        "CREATE TABLE IF NOT EXISTS order_summaries (\n"
                        "    order_id TEXT PRIMARY KEY, status TEXT, version "
                        "BIGINT)");
    assert_string_equal(d->ddl[0].pg_sql, d->ddl[0].sqlite_sql);
    assert_int_equal(d->ddl[0].nparams, 0);
    assert_int_equal(d->ddl[1].line, 7);
    assert_int_equal(d->ddl[2].line, 9);
    assert_string_equal(d->ddl[2].sqlite_sql,
                        "CREATE TABLE order_lines (order_id TEXT, sku TEXT)");

    assert_int_equal(d->nhandlers, 2);
    h = &d->handlers[0];
    assert_string_equal(h->event_type, "OrderPlaced");
    assert_null(h->each);
    assert_int_equal(h->line, 11);
    assert_int_equal(h->nstmts, 1);
    assert_int_equal(h->stmts[0].line, 12);
    assert_int_equal(h->stmts[0].nparams, 2);
    assert_string_equal(h->stmts[0].params[0], "data.order_id");
    assert_string_equal(h->stmts[0].params[1], "version");
    assert_string_equal(
        h->stmts[0].pg_sql,
        "INSERT INTO order_summaries (order_id, status, version)\n"
        "VALUES ($1, 'placed', $2)\n"
        "ON CONFLICT (order_id) DO UPDATE SET version = excluded.version\n"
        "WHERE order_summaries.version < excluded.version");
    h = &d->handlers[1];
    assert_string_equal(h->event_type, "OrderPlaced");
    assert_string_equal(h->each, "data.items");
    assert_int_equal(h->line, 16);
    assert_int_equal(h->nstmts, 2);
    assert_string_equal(h->stmts[0].params[1], "item.sku");
    assert_int_equal(h->stmts[1].line, 19);
    assert_int_equal(h->stmts[1].nparams, 0);

    assert_int_equal(d->nqueries, 2);
    q = &d->queries[0];
    assert_string_equal(q->name, "order_summary");
    assert_int_equal(q->line, 21);
    assert_int_equal(q->result, CQ_RESULT_ONE);
    assert_string_equal(q->stream, "order-{order_id}");
    assert_null(q->page_field);
    assert_null(q->section_names);
    assert_int_equal(q->nparams, 1);
    assert_string_equal(q->params[0].name, "order_id");
    assert_int_equal(q->params[0].type, CQ_PARAM_ID);
    assert_int_equal(q->params[0].min, 1);
    assert_int_equal(q->params[0].max, 64);
    assert_true(q->params[0].required);
    assert_null(q->params[0].def);
    assert_int_equal(q->nstmts, 1);
    assert_int_equal(q->stmts[0].line, 25);
    assert_string_equal(q->stmts[0].sqlite_sql,
                        "SELECT order_id, status FROM order_summaries\n"
                        "WHERE order_id = ?1");

    q = &d->queries[1];
    assert_string_equal(q->name, "by_status");
    assert_int_equal(q->result, CQ_RESULT_PAGE);
    assert_null(q->stream);
    assert_string_equal(q->page_field, "orders");
    assert_string_equal(q->cursor_column, "order_id");
    assert_int_equal(q->nparams, 3);
    assert_int_equal(q->params[0].type, CQ_PARAM_TEXT);
    assert_int_equal(q->params[0].min, 1);
    assert_int_equal(q->params[0].max, 20);
    assert_false(q->params[0].required);
    assert_string_equal(q->params[0].def, "placed");
    assert_int_equal(q->params[1].type, CQ_PARAM_INT);
    assert_int_equal(q->params[1].max, 100);
    assert_string_equal(q->params[1].def, "20");
    assert_string_equal(q->params[2].def, "");
    assert_string_equal(q->stmts[0].pg_sql,
                        "SELECT order_id FROM order_summaries WHERE status = "
                        "$1\n  AND order_id > $2 ORDER BY order_id LIMIT $3");
    assert_string_equal(q->stmts[0].params[2], "limit");

    assert_ptr_equal(cq_declared_find_query(d, "by_status"), q);
    assert_null(cq_declared_find_query(d, "nope"));
    cq_declared_free(d);
    cq_declared_free(NULL);
}

static void test_defaults_and_empty_statements(void **state)
{
    cq_declared *d = parse_ok("\xef\xbb\xbf" HDR ";;\n/* nothing */ ;\n"
                              "-- just a comment\r\n"
                              "CREATE TABLE t (a TEXT);\r\n");

    (void)state;
    assert_string_equal(d->name, "p");
    assert_int_equal(d->mode, CQ_DECL_ASYNC);
    assert_int_equal(d->nddl, 1);
    assert_int_equal(d->ddl[0].line, 6);
    assert_int_equal(d->nhandlers, 0);
    assert_int_equal(d->nqueries, 0);
    cq_declared_free(d);
}

static void test_numbering(void **state)
{
    cq_declared *d =
        parse_ok(HDR "-- @on E\n"
                     "UPDATE t SET a = :data.a, b = :version, c = :data.a,\n"
                     "  d = :metadata.user.id, e = :version, f = :data.a;\n"
                     "INSERT INTO t (x) VALUES (:type);\n");
    const cq_decl_stmt *st = &d->handlers[0].stmts[0];

    (void)state;
    assert_int_equal(st->nparams, 3);
    assert_string_equal(st->params[0], "data.a");
    assert_string_equal(st->params[1], "version");
    assert_string_equal(st->params[2], "metadata.user.id");
    assert_string_equal(st->sqlite_sql, "UPDATE t SET a = ?1, b = ?2, c = ?1,\n"
                                        "  d = ?3, e = ?2, f = ?1");
    assert_string_equal(st->pg_sql, "UPDATE t SET a = $1, b = $2, c = $1,\n"
                                    "  d = $3, e = $2, f = $1");
    /* Numbering starts again in each statement. */
    st = &d->handlers[0].stmts[1];
    assert_int_equal(st->nparams, 1);
    assert_string_equal(st->sqlite_sql, "INSERT INTO t (x) VALUES (?1)");
    assert_string_equal(st->pg_sql, "INSERT INTO t (x) VALUES ($1)");
    cq_declared_free(d);
}

static void test_many_params(void **state)
{
    char text[4096];
    size_t n = (size_t)snprintf(text, sizeof text,
                                HDR "-- @on E\nINSERT "
                                    "INTO t VALUES (");
    cq_declared *d;

    (void)state;
    for (int i = 0; i < 12; i++)
        n += (size_t)snprintf(text + n, sizeof text - n, "%s:data.f%d",
                              i ? ", " : "", i);
    snprintf(text + n, sizeof text - n, ");\n");
    d = parse_ok(text);
    assert_int_equal(d->handlers[0].stmts[0].nparams, 12);
    assert_string_equal(d->handlers[0].stmts[0].params[11], "data.f11");
    assert_non_null(
        strstr(d->handlers[0].stmts[0].sqlite_sql, "?10, ?11, ?12)"));
    assert_non_null(strstr(d->handlers[0].stmts[0].pg_sql, "$10, $11, $12)"));
    cq_declared_free(d);
}

/* The PostgreSQL text reads INTEGER, INT and REAL as wide as SQLite's:
 * only bare words, not inside literals, quoted names or comments, not
 * after a dot, not parts of longer words. */
static void test_pg_types(void **state)
{
    cq_declared *d = parse_ok(
        HDR "CREATE TABLE t (a INTEGER NOT NULL, b int, c Real, \"int\" TEXT,\n"
            "  d INTEGER_X, e BIGINT, f SMALLINT, g TEXT DEFAULT 'int real',\n"
            "  h DOUBLE PRECISION /* INTEGER */ -- REAL\n"
            ");\n"
            "-- @on E\n"
            "UPDATE t SET a = CAST(:data.n AS INTEGER), c = CAST(1 AS REAL)\n"
            " WHERE t.int = 1 AND t . real = 2;\n");

    (void)state;
    assert_string_equal(
        d->ddl[0].pg_sql,
        "CREATE TABLE t (a BIGINT NOT NULL, b BIGINT, c DOUBLE PRECISION,"
        " \"int\" TEXT,\n"
        "  d INTEGER_X, e BIGINT, f SMALLINT, g TEXT DEFAULT 'int real',\n"
        "  h DOUBLE PRECISION /* INTEGER */ -- REAL\n"
        ")");
    assert_string_equal(d->ddl[0].sqlite_sql,
                        "CREATE TABLE t (a INTEGER NOT NULL, b int, c Real,"
                        " \"int\" TEXT,\n"
                        "  d INTEGER_X, e BIGINT, f SMALLINT, g TEXT DEFAULT"
                        " 'int real',\n"
                        "  h DOUBLE PRECISION /* INTEGER */ -- REAL\n"
                        ")");
    assert_string_equal(d->handlers[0].stmts[0].pg_sql,
                        "UPDATE t SET a = CAST($1 AS BIGINT), c = CAST(1 AS"
                        " DOUBLE PRECISION)\n"
                        " WHERE t.int = 1 AND t . real = 2");
    cq_declared_free(d);
}

static void test_literals_comments_casts(void **state)
{
    cq_declared *d = parse_ok(
        HDR "-- @on E\n"
            "UPDATE t SET a = ':not; ?a $1', b = 'it''s :x',\n"
            "  \"odd:col;\" = :data.v::text, c = CAST(:position AS TEXT)\n"
            "  /* :no ; ? $2 -- */ -- :nope ; ? $3\n"
            "WHERE d = x::int AND e = '--' AND f = '/*';\n");
    const cq_decl_stmt *st = &d->handlers[0].stmts[0];

    (void)state;
    assert_int_equal(d->handlers[0].nstmts, 1);
    assert_int_equal(st->nparams, 2);
    assert_string_equal(st->params[0], "data.v");
    assert_string_equal(st->params[1], "position");
    assert_string_equal(st->sqlite_sql,
                        "UPDATE t SET a = ':not; ?a $1', b = 'it''s :x',\n"
                        "  \"odd:col;\" = ?1::text, c = CAST(?2 AS TEXT)\n"
                        "  /* :no ; ? $2 -- */ -- :nope ; ? $3\n"
                        "WHERE d = x::int AND e = '--' AND f = '/*'");
    assert_string_equal(st->pg_sql,
                        "UPDATE t SET a = ':not; ?a $1', b = 'it''s :x',\n"
                        "  \"odd:col;\" = $1::text, c = CAST($2 AS TEXT)\n"
                        "  /* :no ; ? $2 -- */ -- :nope ; ? $3\n"
                        "WHERE d = x::BIGINT AND e = '--' AND f = '/*'");
    cq_declared_free(d);

    /* A directive-looking line inside a string or a block comment is SQL;
     * a trailing comment after the last token is not kept. */
    d = parse_ok(HDR "-- @on E\nINSERT INTO t VALUES ('\n-- @on F\n');\n"
                     "/*\n-- @query q\n*/ DELETE FROM t -- bye\n;\n");
    assert_int_equal(d->nhandlers, 1);
    assert_int_equal(d->handlers[0].nstmts, 2);
    assert_string_equal(d->handlers[0].stmts[0].sqlite_sql,
                        "INSERT INTO t VALUES ('\n-- @on F\n')");
    assert_int_equal(d->handlers[0].stmts[1].line, 9);
    assert_string_equal(d->handlers[0].stmts[1].sqlite_sql, "DELETE FROM t");
    cq_declared_free(d);
}

static void test_each(void **state)
{
    cq_declared *d =
        parse_ok(HDR "-- @on Tagged @each metadata.tags[0].list\n"
                     "INSERT INTO tags VALUES (:stream_id, :item, :item.name, "
                     ":item[2].x, :position, :day);\n");
    const cq_decl_stmt *st = &d->handlers[0].stmts[0];

    (void)state;
    assert_string_equal(d->handlers[0].each, "metadata.tags[0].list");
    assert_int_equal(st->nparams, 6);
    assert_string_equal(st->params[1], "item");
    assert_string_equal(st->params[3], "item[2].x");
    cq_declared_free(d);

    ERR(HDR "-- @on E\nINSERT INTO t VALUES (:item.sku);\n",
        "4: :item is defined only in an @each block");
    ERR(HDR "-- @on E @each items\nINSERT INTO t VALUES (1);\n",
        "3: bad @each path 'items' (want data.PATH or metadata.PATH)");
    ERR(HDR "-- @on E @each data.items[x]\nINSERT INTO t VALUES (1);\n",
        "3: bad @each path 'data.items[x]' (want data.PATH or metadata.PATH)");
    ERR(HDR "-- @on E @for data.items\nINSERT INTO t VALUES (1);\n",
        "3: usage: -- @on TYPE [@each PATH]");
    ERR(HDR "-- @on E\n-- @each data.items\nINSERT INTO t VALUES (1);\n",
        "4: @each without @on (write '-- @on TYPE @each PATH')");
}

static void test_results(void **state)
{
    cq_declared *d = parse_ok(
        HDR "-- @query all\n-- @result list\nSELECT * FROM t;\n"
            "-- @query dash\n-- @param day text 10..10 default '2026-01-01'\n"
            "-- @result sections\n"
            "-- @section totals\nSELECT count(*) FROM t;\n"
            "-- @section per_day\n-- a comment between\n"
            "WITH x AS (SELECT 1) SELECT * FROM x WHERE :day <> '';\n");
    const cq_decl_query *q;

    (void)state;
    q = &d->queries[0];
    assert_int_equal(q->result, CQ_RESULT_LIST);
    assert_int_equal(q->nparams, 0);
    q = &d->queries[1];
    assert_int_equal(q->result, CQ_RESULT_SECTIONS);
    assert_int_equal(q->nstmts, 2);
    assert_string_equal(q->section_names[0], "totals");
    assert_string_equal(q->section_names[1], "per_day");
    assert_int_equal(q->stmts[1].line, 13);
    assert_string_equal(q->stmts[1].sqlite_sql,
                        "WITH x AS (SELECT 1) SELECT * FROM x WHERE ?1 <> ''");
    cq_declared_free(d);
}

static void test_stream(void **state)
{
    cq_declared *d =
        parse_ok(HDR "-- @query q\n-- @param b int 0..99 required\n"
                     "-- @param a id required\n-- @stream x:{a}.{b}-{a}\n"
                     "-- @result one\nSELECT :a, :b;\n");
    const cq_decl_query *q = &d->queries[0];
    const char *values[2] = {"7", "o-1"};
    const char *missing[2] = {"7", NULL};
    char buf[64];

    (void)state;
    assert_int_equal(cq_declared_stream(q, values, buf, sizeof buf), CQ_OK);
    assert_string_equal(buf, "x:o-1.7-o-1");
    assert_int_equal(cq_declared_stream(q, values, buf, 12), CQ_OK);
    assert_int_equal(cq_declared_stream(q, values, buf, 11), CQ_EINVAL);
    assert_int_equal(cq_declared_stream(q, missing, buf, sizeof buf),
                     CQ_EINVAL);
    cq_declared_free(d);

    /* Not keyed. */
    d = parse_ok(HDR "-- @query q\n-- @result list\nSELECT 1;\n");
    assert_int_equal(
        cq_declared_stream(&d->queries[0], values, buf, sizeof buf), CQ_EINVAL);
    cq_declared_free(d);
}

static void test_param_check(void **state)
{
    cq_decl_param id = {.type = CQ_PARAM_ID, .min = 1, .max = 64};
    cq_decl_param text = {.type = CQ_PARAM_TEXT, .min = 2, .max = 3};
    cq_decl_param num = {.type = CQ_PARAM_INT, .min = -5, .max = 100};
    char long_id[66];
    int64_t v = 0;

    (void)state;
    memset(long_id, 'a', 65);
    long_id[65] = '\0';
    assert_int_equal(cq_declared_param_check(&id, "o-1_A", 5, NULL), CQ_OK);
    assert_int_equal(cq_declared_param_check(&id, "", 0, NULL), CQ_EINVAL);
    assert_int_equal(cq_declared_param_check(&id, "a b", 3, NULL), CQ_EINVAL);
    assert_int_equal(cq_declared_param_check(&id, long_id, 64, NULL), CQ_OK);
    assert_int_equal(cq_declared_param_check(&id, long_id, 65, NULL),
                     CQ_EINVAL);
    assert_int_equal(
        cq_declared_param_check(&text, "\xc3\xa9t\xc3\xa9", 5, NULL),
        CQ_OK); /* 3 characters, 5 bytes */
    assert_int_equal(cq_declared_param_check(&text, "abcd", 4, NULL),
                     CQ_EINVAL);
    assert_int_equal(cq_declared_param_check(&text, "a\n", 2, NULL), CQ_EINVAL);
    assert_int_equal(cq_declared_param_check(&text, "\xff\xfe", 2, NULL),
                     CQ_EINVAL);
    assert_int_equal(cq_declared_param_check(&num, "-5", 2, &v), CQ_OK);
    assert_int_equal(v, -5);
    assert_int_equal(cq_declared_param_check(&num, "100", 3, &v), CQ_OK);
    assert_int_equal(v, 100);
    assert_int_equal(cq_declared_param_check(&num, "101", 3, NULL), CQ_EINVAL);
    assert_int_equal(cq_declared_param_check(&num, "1x", 2, NULL), CQ_EINVAL);
    assert_int_equal(cq_declared_param_check(&num, "", 0, NULL), CQ_EINVAL);
    assert_int_equal(cq_declared_param_check(&num, "-", 1, NULL), CQ_EINVAL);
    num.min = INT64_MIN;
    num.max = INT64_MAX;
    assert_int_equal(
        cq_declared_param_check(&num, "-9223372036854775808", 20, &v), CQ_OK);
    assert_true(v == INT64_MIN);
    assert_int_equal(
        cq_declared_param_check(&num, "9223372036854775808", 19, NULL),
        CQ_EINVAL);
}

static void test_errors(void **state)
{
    static const struct {
        const char *text, *err;
    } cases[] = {
        {"", "1: missing @projection"},
        {"CREATE TABLE t (a);\n", "1: statement before @projection"},
        {"-- @version 1\n", "1: the first directive must be @projection"},
        {"\n-- @projection p\n", "2: missing @version"},
        {"-- @projection p\nCREATE TABLE t (a);\n", "1: missing @version"},
        {"-- @projection P\n", "1: bad projection name 'P' (want "
                               "[a-z][a-z0-9_]{0,62})"},
        {HDR "-- @projection p\n", "3: duplicate @projection"},
        {HDR "-- @version 2\n", "3: duplicate @version"},
        {"-- @projection p\n-- @version 0\n",
         "2: bad @version '0' (want an integer 1..2147483647)"},
        {"-- @projection p\n-- @version 2147483648\n",
         "2: bad @version '2147483648' (want an integer 1..2147483647)"},
        {"-- @projection p\n-- @version 1 2\n",
         "2: unexpected '2' after @version"},
        {HDR "-- @mode sync\n", "3: bad @mode 'sync' (want async or inline)"},
        {HDR "CREATE TABLE t (a);\n-- @mode inline\n",
         "4: @mode must come before the first statement, @on or @query"},
        {HDR "-- @frobnicate\n", "3: unknown directive @frobnicate"},
        {HDR "-- @\n", "3: empty directive '@'"},
        {HDR "-- @ on E\n", "3: empty directive '@'"},
        {HDR "\n\nDROP TABLE t;\n",
         "5: only CREATE TABLE, CREATE INDEX and CREATE UNIQUE INDEX may "
         "come before the first @on or @query"},
        {HDR "CREATE TEMP TABLE t (a);\n",
         "3: only CREATE TABLE, CREATE INDEX and CREATE UNIQUE INDEX may "
         "come before the first @on or @query"},
        {HDR "CREATE TABLE t (a DEFAULT :x);\n",
         "3: DDL statements take no parameters (:x)"},
        {HDR "-- @on E\n-- @on F\nDELETE FROM t;\n",
         "3: @on E has no statement"},
        {HDR "-- @on E\n", "3: @on E has no statement"},
        {HDR "-- @on Bad/Type\n",
         "3: bad event type 'Bad/Type' (want [A-Za-z0-9_.:-])"},
        {HDR "-- @on E\nDELETE FROM t WHERE a = :foo;\n",
         "4: unknown parameter :foo"},
        {HDR "-- @on E\nDELETE FROM t WHERE a = :version.x;\n",
         "4: unknown parameter :version.x"},
        {HDR "-- @on E\nDELETE FROM t\n WHERE a = :data.x[12345678901];\n",
         "5: bad array index in parameter :data.x (at most 9 digits, then "
         "']')"},
        {HDR "-- @on E\nDELETE FROM t WHERE a = ?;\n",
         "4: '?' placeholder: parameters must be named (:name)"},
        {HDR "-- @on E\nDELETE FROM t WHERE a = $1;\n",
         "4: '$' is not portable: parameters must be named (:name), and "
         "dollar quoting is PostgreSQL-only"},
        {HDR "-- @on E\nDELETE FROM t WHERE a = :data.x[0]5;\n",
         "4: parameter :data.x[0] runs into '5'"},
        {HDR "-- @on E\nDELETE FROM t WHERE a = @a;\n",
         "4: '@' is not portable: SQLite reads @name as a parameter; use "
         ":name"},
        {HDR "-- @on E\nDELETE FROM t WHERE a = :1;\n",
         "4: ':' must start a named parameter (:name)"},
        {HDR "-- @on E\nDELETE FROM t WHERE a = E'x\\'';\n",
         "4: E'...' strings are PostgreSQL-only; write '...' (a quote is "
         "written '')"},
        {HDR "-- @on E\nINSERT OR REPLACE INTO t VALUES (1);\n",
         "4: INSERT OR ... is SQLite-only; write INSERT ... ON CONFLICT "
         "(...) DO UPDATE/NOTHING"},
        {HDR "-- @on E\nSELECT 1;\n",
         "4: an @on statement must be INSERT, UPDATE or DELETE"},
        {HDR "-- @on E\nDELETE FROM t\n\n-- @on F\n",
         "4: statement does not end with ';' (a directive follows on line "
         "6)"},
        {HDR "-- @on E\nDELETE FROM t;\nDELETE FROM u\n",
         "5: statement does not end with ';'"},
        {HDR "-- @on E\nDELETE FROM t; -- @on F\n",
         "4: a directive ('-- @') must be on a line of its own"},
        {HDR "-- @on E\nDELETE FROM t WHERE a = 'x\n\n",
         "4: string literal is not closed"},
        {HDR "-- @on E\nDELETE FROM \"t\n;\n",
         "4: quoted identifier is not closed"},
        {HDR "-- @on E\n/* a\n\n", "4: block comment '/*' is not closed"},
        {HDR "-- @on E\n/* a\n/* b */ */ DELETE FROM t;\n",
         "5: nested block comment ('/*' inside '/* ... */'): SQLite and "
         "PostgreSQL end it in different places"},
        {HDR "-- @param a id required\n", "3: @param outside a @query"},
        {HDR "-- @on E\nDELETE FROM t;\n-- @result one\n",
         "5: @result outside a @query"},
        {HDR "-- @query q\n-- @result list\n-- @section a\n",
         "5: @section outside a sections query (@result sections)"},
        {HDR "-- @section a\n",
         "3: @section outside a sections query (@result sections)"},
        {HDR "-- @query q\n-- @result one\nSELECT 1;\n-- @query q\n",
         "6: duplicate query q (first on line 3)"},
        {HDR "-- @query Q\n",
         "3: bad query name 'Q' (want [a-z][a-z0-9_]{0,62})"},
        {HDR "-- @query q\n-- @result one\n", "3: query q has no statement"},
        {HDR "-- @query q\nSELECT 1;\n",
         "3: query q has no @result before its statement"},
        {HDR "-- @query q\n-- @result one\nSELECT 1;\nSELECT 2;\n",
         "6: @result one takes exactly one statement"},
        {HDR "-- @query q\n-- @result list\nSELECT 1;\n\nSELECT 2;\n",
         "7: @result list takes exactly one statement"},
        {HDR "-- @query q\n-- @result one\nSELECT 1;\n-- @param a id "
             "required\n",
         "6: @param must come before the query's statements"},
        {HDR "-- @query q\n-- @result one\nSELECT :a;\n",
         "5: unknown parameter :a (declare it with @param)"},
        {HDR "-- @query q\n-- @result one\nDELETE FROM t;\n",
         "5: a query statement must be a SELECT"},
        {HDR "-- @query q\n-- @param a id\n",
         "4: usage: -- @param NAME id|text MIN..MAX|int MIN..MAX "
         "required|default VALUE"},
        {HDR "-- @query q\n-- @param a int 1..2 optional\n",
         "4: @param a needs 'required' or 'default VALUE'"},
        {HDR "-- @query q\n-- @param a id required x\n",
         "4: unexpected 'x' after @param"},
        {HDR "-- @query q\n-- @param a uuid required\n",
         "4: bad param type 'uuid' (want id, text, int)"},
        {HDR "-- @query q\n-- @param a text 5..1 required\n",
         "4: bad bounds: min 5 > max 1"},
        {HDR "-- @query q\n-- @param a text -1..1 required\n",
         "4: bad bounds: text length min < 0"},
        {HDR "-- @query q\n-- @param a int 1-5 required\n",
         "4: bad bounds '1-5' for int (want MIN..MAX, integers)"},
        {HDR "-- @query q\n-- @param a int 1..5 default 6\n",
         "4: default 6 is not a valid value of a (int 1..5)"},
        {HDR "-- @query q\n-- @param a int 1..5 default x\n",
         "4: default x is not a valid value of a (int 1..5)"},
        {HDR "-- @query q\n-- @param a text 1..2 default 'abc'\n",
         "4: default 'abc' is not a valid value of a (text 1..2)"},
        {HDR "-- @query q\n-- @param a text 1..2 default 'abc\n",
         "4: quoted value is not closed"},
        {HDR "-- @query q\n-- @param a id default x/y\n",
         "4: default x/y is not a valid value of a (id 1..64)"},
        {HDR "-- @query q\n-- @param a id required\n-- @param a id "
             "required\n",
         "5: duplicate @param a"},
        {HDR "-- @query q\n-- @param wait_ms int 1..2 required\n",
         "4: param name wait_ms is reserved for the consistency parameters "
         "of every query"},
        {HDR "-- @query q\n-- @stream order-{id}\n-- @result one\n"
             "SELECT 1;\n",
         "4: @stream names {id}, which is not a declared @param"},
        {HDR "-- @query q\n-- @stream order/{id}\n",
         "4: bad @stream 'order/{id}': literal part must be [A-Za-z0-9_.:-]"},
        {HDR "-- @query q\n-- @stream order-{id\n",
         "4: bad @stream 'order-{id': want {param} placeholders"},
        {HDR "-- @query q\n-- @result page rows id\nSELECT :limit;\n",
         "5: a page query must use :limit and :after"},
        {HDR "-- @query q\n-- @result page rows id\n-- @param limit text "
             "1..9 required\n-- @param after text 0..9 default ''\n"
             "SELECT :limit, :after;\n-- @query r\n",
         "4: @result page: @param limit must be an int"},
        {HDR "-- @query q\n-- @result page rows id\n-- @param limit int "
             "1..9 required\nSELECT :limit, :after;\n",
         "6: unknown parameter :after (declare it with @param)"},
        {HDR "-- @query q\n-- @result page next id\n",
         "4: bad page field 'next' (want [a-z][a-z0-9_]{0,62}, not 'next')"},
        {HDR "-- @query q\n-- @result page rows\n",
         "4: usage: -- @result one|list|sections|page FIELD CURSOR_COLUMN"},
        {HDR "-- @query q\n-- @result many\n",
         "4: bad @result 'many' (want one, list, page or sections)"},
        {HDR "-- @query q\n-- @result one\n-- @result one\n",
         "5: duplicate @result"},
        {HDR "-- @query q\n-- @result sections\nSELECT 1;\n",
         "5: each statement of a sections query needs a '-- @section NAME' "
         "before it"},
        {HDR "-- @query q\n-- @result sections\n-- @section a\n"
             "-- @section b\nSELECT 1;\n",
         "5: @section has no statement"},
        {HDR "-- @query q\n-- @result sections\n-- @section a\nSELECT 1;\n"
             "-- @section a\nSELECT 2;\n",
         "7: duplicate @section a"},
        {HDR "-- @query q\n-- @result sections\n-- @section a\n",
         "5: @section has no statement"},
        {HDR "bad \xc3\x28 text;\n", "3: invalid UTF-8"},
    };

    (void)state;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        ERR(cases[i].text, cases[i].err);
    /* A NUL byte, which strlen() cannot show. */
    expect_error(HDR "\n-- x\0y\n", sizeof(HDR "\n-- x\0y\n") - 1,
                 "4: NUL byte");
}

static void test_limits(void **state)
{
    size_t cap = CQ_DECL_MAX_FILE + 64, n;
    char *text = malloc(cap);
    cq_declared *d;
    char err[64];

    (void)state;
    assert_non_null(text);
    /* 1000 statements pass, 1001 do not. */
    n = (size_t)snprintf(text, cap, HDR "-- @on E\n");
    for (int i = 0; i < CQ_DECL_MAX_STMTS; i++)
        n += (size_t)snprintf(text + n, cap - n, "DELETE FROM t;\n");
    d = parse_ok(text);
    assert_int_equal(d->handlers[0].nstmts, CQ_DECL_MAX_STMTS);
    cq_declared_free(d);
    snprintf(text + n, cap - n, "DELETE FROM t;\n");
    ERR(text, "1004: more than 1000 statements");

    /* 1 MiB passes, one byte more does not. */
    n = (size_t)snprintf(text, cap, HDR);
    memset(text + n, '\n', CQ_DECL_MAX_FILE - n);
    d = NULL;
    assert_int_equal(
        cq_declared_parse(text, CQ_DECL_MAX_FILE, &d, err, sizeof err), CQ_OK);
    cq_declared_free(d);
    text[CQ_DECL_MAX_FILE] = '\n';
    expect_error(text, CQ_DECL_MAX_FILE + 1, "1: file is larger than 1 MiB");
    free(text);
}

static void test_error_buffer(void **state)
{
    char err[12];
    cq_declared *d;

    (void)state;
    /* Cut on a character boundary: "3: unknown " + 2-byte character. */
    assert_int_equal(cq_declared_parse(HDR "-- @\xc3\xa9\n",
                                       strlen(HDR "-- @\xc3\xa9\n"), &d, err,
                                       sizeof err),
                     CQ_EINVAL);
    assert_true(cq_utf8_valid(err, strlen(err)));
    assert_int_equal(cq_declared_parse("", 0, &d, NULL, 0), CQ_EINVAL);
    assert_null(d);
}

static const cq_decl_event *sample_event(void)
{
    static json_t *data, *metadata;
    static cq_decl_event ev = {
        "order-o-1",  3,    42,  "OrderPlaced", "2026-11-23T14:18:26.123Z",
        "2026-11-23", NULL, NULL, NULL};

    if (data == NULL) {
        data = json_loads(
            "{\"order_id\": \"o-1\", \"n\": -7, \"r\": 2.5, \"yes\": true,"
            " \"no\": false, \"nil\": null, \"nul\": \"a\\u0000b\","
            " \"items\": [{\"sku\": \"A\", \"q\": 2}, [10, 20], \"s\"],"
            " \"o\": {\"deep\": {\"x\": [1, {\"y\": \"z\"}]}}}",
            JSON_ALLOW_NUL, NULL);
        metadata = json_loads("{\"correlation_id\": \"c-9\"}", 0, NULL);
        ev.data = data;
        ev.metadata = metadata;
    }
    return &ev;
}

static void expect_text(const char *param, const json_t *item, const char *want)
{
    cq_decl_value v;

    assert_int_equal(cq_declared_bind_value(param, sample_event(), item, &v),
                     CQ_OK);
    assert_int_equal(v.type, CQ_VALUE_TEXT);
    assert_string_equal(v.text, want);
    assert_int_equal(v.len, strlen(want));
    assert_null(v.owned);
}

static void expect_int(const char *param, const json_t *item, int64_t want)
{
    cq_decl_value v;

    assert_int_equal(cq_declared_bind_value(param, sample_event(), item, &v),
                     CQ_OK);
    assert_int_equal(v.type, CQ_VALUE_INT);
    assert_true(v.i == want);
}

static void expect_null(const char *param, const json_t *item)
{
    cq_decl_value v;

    assert_int_equal(cq_declared_bind_value(param, sample_event(), item, &v),
                     CQ_OK);
    assert_int_equal(v.type, CQ_VALUE_NULL);
}

static void expect_json(const char *param, const json_t *item, const char *want)
{
    cq_decl_value v;

    assert_int_equal(cq_declared_bind_value(param, sample_event(), item, &v),
                     CQ_OK);
    assert_int_equal(v.type, CQ_VALUE_JSON);
    assert_string_equal(v.text, want);
    assert_ptr_equal(v.text, v.owned);
    cq_declared_value_clear(&v);
    assert_int_equal(v.type, CQ_VALUE_NULL);
    assert_null(v.owned);
}

static void test_bind_value(void **state)
{
    const json_t *items = json_object_get(sample_event()->data, "items");
    cq_decl_value v;

    (void)state;
    expect_text("stream_id", NULL, "order-o-1");
    expect_text("type", NULL, "OrderPlaced");
    expect_text("time", NULL, "2026-11-23T14:18:26.123Z");
    expect_text("day", NULL, "2026-11-23");
    expect_int("version", NULL, 3);
    expect_int("position", NULL, 42);

    expect_text("data.order_id", NULL, "o-1");
    expect_text("metadata.correlation_id", NULL, "c-9");
    expect_int("data.n", NULL, -7);
    expect_int("data.yes", NULL, 1);
    expect_int("data.no", NULL, 0);
    assert_int_equal(cq_declared_bind_value("data.r", sample_event(), NULL, &v),
                     CQ_OK);
    assert_int_equal(v.type, CQ_VALUE_REAL);
    assert_true(v.r == 2.5);
    expect_null("data.nil", NULL);
    assert_int_equal(
        cq_declared_bind_value("data.nul", sample_event(), NULL, &v), CQ_OK);
    assert_int_equal(v.type, CQ_VALUE_TEXT);
    assert_int_equal(v.len, 3);
    assert_memory_equal(v.text, "a\0b", 3);

    /* Nested paths and arrays. */
    expect_text("data.items[0].sku", NULL, "A");
    expect_int("data.items[1][1]", NULL, 20);
    expect_text("data.o.deep.x[1].y", NULL, "z");
    expect_json("data.items[1]", NULL, "[10,20]");
    expect_json("data.o.deep", NULL, "{\"x\":[1,{\"y\":\"z\"}]}");
    expect_json("metadata", NULL, "{\"correlation_id\":\"c-9\"}");

    /* Missing: absent members, indexes out of range, wrong kinds. */
    expect_null("data.missing", NULL);
    expect_null("data.items[3]", NULL);
    expect_null("data.items[999999999]", NULL);
    expect_null("data.order_id.x", NULL);
    expect_null("data.order_id[0]", NULL);
    expect_null("data.o[0]", NULL);
    expect_null("metadata.user.id", NULL);

    /* :item, for @each blocks. */
    expect_text("item.sku", json_array_get(items, 0), "A");
    expect_int("item.q", json_array_get(items, 0), 2);
    expect_null("item.nope", json_array_get(items, 0));
    expect_int("item[0]", json_array_get(items, 1), 10);
    expect_text("item", json_array_get(items, 2), "s");
    expect_json("item", json_array_get(items, 0), "{\"sku\":\"A\",\"q\":2}");

    /* Not handler parameters. */
    assert_int_equal(
        cq_declared_bind_value("item.sku", sample_event(), NULL, &v),
        CQ_EINVAL);
    assert_int_equal(cq_declared_bind_value("foo", sample_event(), NULL, &v),
                     CQ_EINVAL);
    assert_int_equal(
        cq_declared_bind_value("version.x", sample_event(), NULL, &v),
        CQ_EINVAL);
    assert_int_equal(cq_declared_bind_value("data.", sample_event(), NULL, &v),
                     CQ_EINVAL);
    assert_int_equal(
        cq_declared_bind_value("data[x]", sample_event(), NULL, &v), CQ_EINVAL);
    cq_declared_value_clear(NULL);

    /* A NULL metadata document reads as all NULL. */
    {
        cq_decl_event ev = *sample_event();
        ev.metadata = NULL;
        assert_int_equal(
            cq_declared_bind_value("metadata.correlation_id", &ev, NULL, &v),
            CQ_OK);
        assert_int_equal(v.type, CQ_VALUE_NULL);
    }
    json_decref((json_t *)sample_event()->data);
    json_decref((json_t *)sample_event()->metadata);
}

static void test_path_json(void **state)
{
    const json_t *items = json_object_get(sample_event()->data, "items");
    const json_t *v = (const json_t *)1;

    (void)state;
    assert_int_equal(
        cq_declared_path_json("data.items", sample_event(), NULL, &v), CQ_OK);
    assert_ptr_equal(v, items);
    assert_int_equal(
        cq_declared_path_json("data.o.deep.x[1].y", sample_event(), NULL, &v),
        CQ_OK);
    assert_string_equal(json_string_value(v), "z");
    assert_int_equal(
        cq_declared_path_json("metadata", sample_event(), NULL, &v), CQ_OK);
    assert_ptr_equal(v, sample_event()->metadata);
    assert_int_equal(cq_declared_path_json("item.sku", sample_event(),
                                           json_array_get(items, 0), &v),
                     CQ_OK);
    assert_string_equal(json_string_value(v), "A");

    /* Leaves the document: CQ_OK and NULL. */
    assert_int_equal(
        cq_declared_path_json("data.items[7]", sample_event(), NULL, &v),
        CQ_OK);
    assert_null(v);
    assert_int_equal(
        cq_declared_path_json("data.order_id.x", sample_event(), NULL, &v),
        CQ_OK);
    assert_null(v);

    /* Not a path into a document, or :item without an item. */
    v = (const json_t *)1;
    assert_int_equal(cq_declared_path_json("version", sample_event(), NULL, &v),
                     CQ_EINVAL);
    assert_null(v);
    assert_int_equal(
        cq_declared_path_json("item.sku", sample_event(), NULL, &v), CQ_EINVAL);
    assert_int_equal(cq_declared_path_json("data.", sample_event(), NULL, &v),
                     CQ_EINVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_full_file),
        cmocka_unit_test(test_defaults_and_empty_statements),
        cmocka_unit_test(test_numbering),
        cmocka_unit_test(test_many_params),
        cmocka_unit_test(test_literals_comments_casts),
        cmocka_unit_test(test_pg_types),
        cmocka_unit_test(test_each),
        cmocka_unit_test(test_results),
        cmocka_unit_test(test_stream),
        cmocka_unit_test(test_param_check),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_limits),
        cmocka_unit_test(test_error_buffer),
        cmocka_unit_test(test_path_json),
        cmocka_unit_test(test_bind_value),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
