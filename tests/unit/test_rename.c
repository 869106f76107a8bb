/*
 * test_rename.c -- unit tests of src/projection/rename.c: tables and
 * indexes in DDL and DML, qualified names (`t.col`, `main.t`, aliases),
 * every quoting form, literals and comments left alone, whole-token and
 * case-insensitive matching, parameters and numbers, text that ends
 * inside a literal, empty inputs, several renamings, and a renamed set of
 * statements run on SQLite to show the result is still valid SQL.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <sqlite3.h>

#include "projection/rename.h"

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

/* The shadow names of the orders example's tables and index. */
static const cq_rename shadow[] = {
    {"order_summaries", "order_summaries__b"},
    {"order_lines", "order_lines__b"},
    {"s_status", "s_status__b"},
};

/* A one-letter table, for the rules that are easier to read that way. */
static const cq_rename t2[] = {{"t", "t2"}};

static void check(const char *sql, const cq_rename *map, size_t n,
                  const char *want)
{
    char *got = cq_sql_rename(sql, map, n);

    assert_non_null(got);
    assert_string_equal(got, want);
    free(got);
}

#define SHADOW(sql, want) check(sql, shadow, COUNT(shadow), want)
#define T2(sql, want) check(sql, t2, COUNT(t2), want)

/* ---- DDL and DML ------------------------------------------------------- */

static void create_table(void **state)
{
    SHADOW("CREATE TABLE IF NOT EXISTS order_summaries (\n"
           "    order_id TEXT PRIMARY KEY, status TEXT, version BIGINT)",
           "CREATE TABLE IF NOT EXISTS order_summaries__b (\n"
           "    order_id TEXT PRIMARY KEY, status TEXT, version BIGINT)");
    SHADOW("create table order_lines(order_id text,sku text)",
           "create table order_lines__b(order_id text,sku text)");
}

static void create_index(void **state)
{
    SHADOW("create unique index if not exists s_status\n"
           "    on order_summaries (status, order_id)",
           "create unique index if not exists s_status__b\n"
           "    on order_summaries__b (status, order_id)");
    SHADOW("CREATE INDEX main.s_status ON order_summaries(status)",
           "CREATE INDEX main.s_status__b ON order_summaries__b(status)");
}

static void insert_update_delete(void **state)
{
    SHADOW("INSERT INTO order_summaries (order_id, status, version)\n"
           "VALUES (?1, 'placed', ?2)\n"
           "ON CONFLICT (order_id) DO UPDATE SET version = excluded.version\n"
           "WHERE order_summaries.version < excluded.version",
           "INSERT INTO order_summaries__b (order_id, status, version)\n"
           "VALUES (?1, 'placed', ?2)\n"
           "ON CONFLICT (order_id) DO UPDATE SET version = excluded.version\n"
           "WHERE order_summaries__b.version < excluded.version");
    SHADOW("UPDATE order_summaries SET status = $2 WHERE order_id = $1",
           "UPDATE order_summaries__b SET status = $2 WHERE order_id = $1");
    SHADOW("DELETE FROM order_lines WHERE sku = ''",
           "DELETE FROM order_lines__b WHERE sku = ''");
}

static void select_join(void **state)
{
    SHADOW("SELECT s.order_id, order_lines.sku, count(*) AS n\n"
           "FROM order_summaries AS s\n"
           "JOIN order_lines ON order_lines.order_id = s.order_id\n"
           "WHERE s.status = ?1 GROUP BY 1, 2 ORDER BY s.order_id",
           "SELECT s.order_id, order_lines__b.sku, count(*) AS n\n"
           "FROM order_summaries__b AS s\n"
           "JOIN order_lines__b ON order_lines__b.order_id = s.order_id\n"
           "WHERE s.status = ?1 GROUP BY 1, 2 ORDER BY s.order_id");
    SHADOW("SELECT * FROM order_summaries WHERE order_id IN "
           "(SELECT order_id FROM order_lines)",
           "SELECT * FROM order_summaries__b WHERE order_id IN "
           "(SELECT order_id FROM order_lines__b)");
}

/* ---- qualified names --------------------------------------------------- */

static void qualified(void **state)
{
    /* A qualifier is renamed; what follows its dot is a column. */
    T2("SELECT t.col, t.t FROM t", "SELECT t2.col, t2.t FROM t2");
    /* ...unless the qualifier is a schema. */
    T2("SELECT * FROM main.t, temp.t, MAIN.t, Temp.t",
       "SELECT * FROM main.t2, temp.t2, MAIN.t2, Temp.t2");
    T2("SELECT * FROM \"main\".t, [temp].t, `MAIN`.\"t\"",
       "SELECT * FROM \"main\".t2, [temp].t2, `MAIN`.\"t2\"");
    T2("SELECT main.t.t FROM main.t", "SELECT main.t2.t FROM main.t2");
    /* An alias or another database keeps its column or table. */
    T2("SELECT x.t, aux.t, x.\"t\" FROM t AS x",
       "SELECT x.t, aux.t, x.\"t\" FROM t2 AS x");
    /* Whitespace and comments around the dot do not matter. */
    T2("SELECT x . t, main . t, x./* c */t, t\n.\nt FROM t",
       "SELECT x . t, main . t2, x./* c */t, t2\n.\nt FROM t2");
    /* Only the token just before the dot counts. */
    T2("SELECT main, t FROM t", "SELECT main, t2 FROM t2");
    T2("SELECT (main).t, 'main'.t", "SELECT (main).t, 'main'.t");
}

/* ---- quoted identifiers ------------------------------------------------ */

static void quoted(void **state)
{
    T2("SELECT \"t\".a, `t`.b, [t].c FROM \"T\"",
       "SELECT \"t2\".a, `t2`.b, [t2].c FROM \"t2\"");
    /* The content is compared whole. */
    T2("SELECT \"t \", \" t\", \"tt\", [t.t], \"\", [] FROM [T]",
       "SELECT \"t \", \" t\", \"tt\", [t.t], \"\", [] FROM [t2]");

    /* Doubled quotes are escapes, in the text and in the replacement. */
    static const cq_rename q[] = {{"a\"b", "c\"d"}, {"e`f", "g`h"}};
    check("SELECT \"a\"\"b\", `e``f`, [a\"b], \"a\"\"\"", q, COUNT(q),
          "SELECT \"c\"\"d\", `g``h`, [c\"d], \"a\"\"\"");

    /* [..] cannot hold a `]`: such a replacement is written as "..". */
    static const cq_rename br[] = {{"x", "y]z"}};
    check("SELECT [x], \"x\"", br, COUNT(br), "SELECT \"y]z\", \"y]z\"");
}

/* ---- literals and comments --------------------------------------------- */

static void strings_and_blobs(void **state)
{
    SHADOW("INSERT INTO order_summaries VALUES ('order_summaries', "
           "'it''s order_summaries', 'a''', '')",
           "INSERT INTO order_summaries__b VALUES ('order_summaries', "
           "'it''s order_summaries', 'a''', '')");
    /* X'..' is one blob token, not the identifier x and a string. */
    static const cq_rename x[] = {{"x", "y"}};
    check("SELECT X'00ff', x'', x, X FROM t", x, COUNT(x),
          "SELECT X'00ff', x'', y, y FROM t");
    /* ...but only a lone x: `max'..'` is an identifier, then a string. */
    static const cq_rename m[] = {{"max", "mx"}};
    check("SELECT max'a'", m, COUNT(m), "SELECT mx'a'");
}

static void comments(void **state)
{
    SHADOW("-- order_summaries\n"
           "SELECT * /* from order_summaries */ FROM order_summaries -- "
           "order_summaries\n"
           "/*order_summaries*/order_summaries/**/;",
           "-- order_summaries\n"
           "SELECT * /* from order_summaries */ FROM order_summaries__b -- "
           "order_summaries\n"
           "/*order_summaries*/order_summaries__b/**/;");
    /* `-` and `/` alone are operators. */
    SHADOW("SELECT 1-order_summaries.a/order_summaries.b FROM order_summaries",
           "SELECT 1-order_summaries__b.a/order_summaries__b.b FROM "
           "order_summaries__b");
}

/* ---- matching ---------------------------------------------------------- */

static void whole_tokens(void **state)
{
    SHADOW("SELECT order_summaries_id, order_summaries$x, xorder_summaries, "
           "order_summaries2 FROM order_summaries",
           "SELECT order_summaries_id, order_summaries$x, xorder_summaries, "
           "order_summaries2 FROM order_summaries__b");
    /* Non-ASCII bytes are letters: no match inside a UTF-8 name. */
    T2("SELECT t\xc3\xa4, \xc3\xa4t FROM t",
       "SELECT t\xc3\xa4, \xc3\xa4t FROM t2");
    static const cq_rename u[] = {{"t\xc3\xa4", "u"}};
    check("SELECT T\xc3\xa4 FROM t", u, COUNT(u), "SELECT u FROM t");
}

static void case_insensitive(void **state)
{
    SHADOW("SELECT * FROM ORDER_SUMMARIES JOIN Order_Lines USING (order_id)",
           "SELECT * FROM order_summaries__b JOIN order_lines__b USING "
           "(order_id)");
    /* Non-matching identifiers keep their case. */
    T2("SELECT Col, COL FROM T", "SELECT Col, COL FROM t2");
}

static void parameters(void **state)
{
    T2("SELECT * FROM t WHERE a = ?1 AND b = :t AND c = @t AND d = $t "
       "AND e = ?t AND f = ?",
       "SELECT * FROM t2 WHERE a = ?1 AND b = :t AND c = @t AND d = $t "
       "AND e = ?t AND f = ?");
    /* `$` inside a name is part of it; a PostgreSQL cast `::t` is not
     * renamed either (t is a type there). */
    T2("SELECT t$, a$t, x::t FROM t", "SELECT t$, a$t, x::t FROM t2");
}

static void numbers(void **state)
{
    static const cq_rename m[] = {
        {"e5", "z"}, {"x1F", "z"}, {"F", "z"}, {"e", "z"}, {"t", "t2"}};
    check("SELECT 1e5, 0x1F, 3.14, 1.5e10, 2E-3, .5, 7t, 1.t FROM t", m,
          COUNT(m),
          "SELECT 1e5, 0x1F, 3.14, 1.5e10, 2E-3, .5, 7t, 1.t FROM t2");
    /* A digit inside a name is part of the name. */
    T2("SELECT t1, t_2 FROM t", "SELECT t1, t_2 FROM t2");
}

/* ---- edges ------------------------------------------------------------- */

static void unclosed(void **state)
{
    SHADOW("SELECT * FROM order_summaries WHERE s = 'order_summaries",
           "SELECT * FROM order_summaries__b WHERE s = 'order_summaries");
    SHADOW("SELECT * FROM order_summaries WHERE s = 'it''s order_summaries''",
           "SELECT * FROM order_summaries__b WHERE s = 'it''s "
           "order_summaries''");
    SHADOW("order_summaries /* order_summaries",
           "order_summaries__b /* order_summaries");
    SHADOW("order_summaries -- order_summaries",
           "order_summaries__b -- order_summaries");
    SHADOW("order_summaries \"order_summaries",
           "order_summaries__b \"order_summaries");
    SHADOW("order_summaries \"order_summaries\"\"",
           "order_summaries__b \"order_summaries\"\"");
    SHADOW("order_summaries [order_summaries",
           "order_summaries__b [order_summaries");
    SHADOW("order_summaries `order_summaries",
           "order_summaries__b `order_summaries");
    SHADOW("order_summaries X'00", "order_summaries__b X'00");
    SHADOW("order_summaries.", "order_summaries__b.");
}

static void empty(void **state)
{
    check("SELECT * FROM t", NULL, 0, "SELECT * FROM t");
    check("", NULL, 0, "");
    T2("", "");
    /* An empty `from` matches nothing, not even "". */
    static const cq_rename e[] = {{"", "x"}};
    check("SELECT \"\", [], `` FROM t", e, COUNT(e),
          "SELECT \"\", [], `` FROM t");
}

static void bytes_kept(void **state)
{
    T2("  SELECT\t*\r\n FROM\vt\f;;  \n", "  SELECT\t*\r\n FROM\vt2\f;;  \n");
    T2("t", "t2");
    T2("(t)", "(t2)");
}

static void several(void **state)
{
    /* Each token is renamed once, by the first entry that matches: no
     * chaining (a -> b -> c) and later duplicates are ignored. */
    static const cq_rename m[] = {{"a", "b"}, {"b", "c"}, {"A", "z"}};
    check("SELECT a, b, A, c FROM a", m, COUNT(m), "SELECT b, c, b, c FROM b");
    /* The replacement may be shorter or longer than the name. */
    static const cq_rename n[] = {{"order_summaries", "s"},
                                  {"t", "a_much_longer_table_name"}};
    check("SELECT * FROM order_summaries, t", n, COUNT(n),
          "SELECT * FROM s, a_much_longer_table_name");
}

/* ---- the result is SQL that SQLite accepts ----------------------------- */

static void run(sqlite3 *db, const char *sql)
{
    char *shadow_sql = cq_sql_rename(sql, shadow, COUNT(shadow));
    char *err = NULL;

    assert_non_null(shadow_sql);
    if (sqlite3_exec(db, shadow_sql, NULL, NULL, &err) != SQLITE_OK)
        fail_msg("%s: %s", shadow_sql, err);
    free(shadow_sql);
}

static void valid_sql(void **state)
{
    static const char ddl[] =
        "CREATE TABLE order_summaries (\n"
        "    order_id TEXT PRIMARY KEY, status TEXT, version BIGINT);\n"
        "CREATE INDEX s_status ON order_summaries (status, order_id);\n"
        "CREATE TABLE \"order_lines\" (order_id TEXT, sku TEXT);\n";
    static const char insert[] =
        "INSERT INTO main.order_summaries (order_id, status, version)\n"
        "VALUES (?1, 'order_summaries', ?2)\n"
        "ON CONFLICT (order_id) DO UPDATE SET version = excluded.version\n"
        "WHERE order_summaries.version < excluded.version";
    static const char select[] =
        "SELECT s.status, order_summaries.version, count(l.sku)\n"
        "FROM order_summaries /* the orders */\n"
        "JOIN order_summaries AS s USING (order_id)\n"
        "LEFT JOIN [order_lines] AS l ON l.order_id = s.order_id\n"
        "WHERE order_summaries.order_id = :id GROUP BY 1, 2";
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    char *sql;

    assert_int_equal(sqlite3_open(":memory:", &db), SQLITE_OK);
    run(db, ddl);

    /* The shadow tables exist; the live names do not. */
    assert_int_equal(
        sqlite3_table_column_metadata(db, "main", "order_summaries__b",
                                      "status", NULL, NULL, NULL, NULL, NULL),
        SQLITE_OK);
    assert_int_not_equal(
        sqlite3_table_column_metadata(db, "main", "order_summaries", "status",
                                      NULL, NULL, NULL, NULL, NULL),
        SQLITE_OK);
    run(db, "INSERT INTO order_lines VALUES ('o1', 'sku-1')");

    sql = cq_sql_rename(insert, shadow, COUNT(shadow));
    assert_non_null(sql);
    assert_int_equal(sqlite3_prepare_v2(db, sql, -1, &st, NULL), SQLITE_OK);
    free(sql);
    for (int version = 1; version <= 2; version++) {
        sqlite3_bind_text(st, 1, "o1", -1, SQLITE_STATIC);
        sqlite3_bind_int(st, 2, version);
        assert_int_equal(sqlite3_step(st), SQLITE_DONE);
        assert_int_equal(sqlite3_reset(st), SQLITE_OK);
    }
    sqlite3_finalize(st);

    sql = cq_sql_rename(select, shadow, COUNT(shadow));
    assert_non_null(sql);
    assert_int_equal(sqlite3_prepare_v2(db, sql, -1, &st, NULL), SQLITE_OK);
    free(sql);
    sqlite3_bind_text(st, 1, "o1", -1, SQLITE_STATIC);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    /* The string literal was not renamed. */
    assert_string_equal((const char *)sqlite3_column_text(st, 0),
                        "order_summaries");
    assert_int_equal(sqlite3_column_int(st, 1), 2);
    assert_int_equal(sqlite3_column_int(st, 2), 1);
    assert_int_equal(sqlite3_step(st), SQLITE_DONE);
    sqlite3_finalize(st);
    sqlite3_close(db);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(create_table),
        cmocka_unit_test(create_index),
        cmocka_unit_test(insert_update_delete),
        cmocka_unit_test(select_join),
        cmocka_unit_test(qualified),
        cmocka_unit_test(quoted),
        cmocka_unit_test(strings_and_blobs),
        cmocka_unit_test(comments),
        cmocka_unit_test(whole_tokens),
        cmocka_unit_test(case_insensitive),
        cmocka_unit_test(parameters),
        cmocka_unit_test(numbers),
        cmocka_unit_test(unclosed),
        cmocka_unit_test(empty),
        cmocka_unit_test(bytes_kept),
        cmocka_unit_test(several),
        cmocka_unit_test(valid_sql),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
