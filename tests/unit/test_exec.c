/*
 * test_exec.c -- unit tests of src/projection/exec.c: declared handlers run
 * on a database of the read store, with @each blocks over data and
 * metadata paths (nested members and indexes; a path that is missing or
 * not an array runs its block zero times), and values of every JSON type
 * through handlers and queries.
 *
 * `test_exec` runs on an in-memory SQLite database; `test_exec pg`
 * (ctest: test_exec_pg) on a fresh PostgreSQL database (pgtest.h), where
 * the same declared text runs in its PostgreSQL form.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "cqrs/cqrs.h"
#include "pgtest.h"
#include "projection/exec.h"

static int pg; /* on PostgreSQL */

/* A new empty database of the read store. */
static cq_rdb *open_db(void)
{
    char *uri = pg ? pgtest_database("exec") : NULL, err[256];
    cq_rdb *db = NULL;

    if (pg)
        assert_non_null(uri);
    if (cq_rdb_open(pg ? uri : ":memory:", CQ_RDB_CREATE, 1000, &db, err,
                    sizeof err) != CQ_OK)
        fail_msg("%s", err);
    free(uri);
    return db;
}

static const char each_file[] =
    "-- @projection lines\n"
    "-- @version 1\n"
    "CREATE TABLE lines (src TEXT, pos INTEGER, val TEXT);\n"
    "-- @on Placed\n"
    "INSERT INTO lines VALUES ('plain', :position, :data.order_id);\n"
    "-- @on Placed @each data.items\n"
    "INSERT INTO lines VALUES ('items', :position, :item.sku);\n"
    "-- @on Placed @each data.o.deep[1].list\n"
    "INSERT INTO lines VALUES ('deep', :position, :item);\n"
    "-- @on Placed @each metadata.tags\n"
    "INSERT INTO lines VALUES ('tags', :position, :item);\n"
    "-- @on Placed @each data.missing\n"
    "INSERT INTO lines VALUES ('missing', :position, :item);\n"
    "-- @on Placed @each data.order_id\n"
    "INSERT INTO lines VALUES ('scalar', :position, :item);\n"
    "-- @on Placed @each data.items[5]\n"
    "INSERT INTO lines VALUES ('out_of_range', :position, :item);\n"
    "-- @on Other @each data.items\n"
    "INSERT INTO lines VALUES ('other', :position, :item.sku);\n";

/* The rows of `lines` as "src:val,src:val,..." in insertion order. */
static void rows(cq_rdb *db, char *out, size_t cap)
{
    cq_rstmt *st = NULL;
    char err[256];
    size_t n = 0;

    out[0] = '\0';
    /* insertion order: SQLite's rowid, the test's own serial column on
     * PostgreSQL */
    assert_int_equal(cq_rdb_prepare(db,
                                    pg ? "SELECT src, coalesce(val, 'NULL') "
                                         "FROM lines ORDER BY k"
                                       : "SELECT src, coalesce(val, 'NULL') "
                                         "FROM lines ORDER BY rowid",
                                    0, &st, err, sizeof err),
                     CQ_OK);
    while (cq_rstmt_step(st) == CQ_RSTEP_ROW)
        n += (size_t)snprintf(out + n, cap - n, "%s%s:%s", n ? "," : "",
                              cq_rstmt_column_text(st, 0),
                              cq_rstmt_column_text(st, 1));
    cq_rstmt_finalize(st);
}

static void test_each(void **state)
{
    static char data_text[] =
        "{\"order_id\": \"o-1\","
        " \"items\": [{\"sku\": \"A\"}, {\"sku\": \"B\"}, {\"q\": 1}],"
        " \"o\": {\"deep\": [0, {\"list\": [\"x\", \"y\"]}]}}";
    json_t *data = json_loads(data_text, 0, NULL);
    cq_decl_lazy lz;
    json_t *metadata = json_loads("{\"tags\": [\"t1\"]}", 0, NULL);
    cq_decl_event ev = {
        "order-o-1",  1,    7,       "Placed", "2026-11-23T14:18:26.123Z",
        "2026-11-23", data, metadata, NULL};
    cq_declared *d = NULL;
    cq_rdb *db = NULL;
    cq_exec *x;
    char err[256] = "", got[512];

    (void)state;
    assert_non_null(data);
    assert_non_null(metadata);
    assert_int_equal(
        cq_declared_parse(each_file, strlen(each_file), &d, err, sizeof err),
        CQ_OK);
    db = open_db();
    assert_non_null(x = cq_exec_new(db));
    assert_int_equal(
        cq_exec_sql(x, cq_exec_text(db, &d->ddl[0]), err, sizeof err), CQ_OK);
    if (pg)
        assert_int_equal(cq_exec_sql(x,
                                     "ALTER TABLE lines ADD COLUMN k"
                                     " BIGINT GENERATED ALWAYS AS IDENTITY",
                                     err, sizeof err),
                         CQ_OK);

    assert_int_equal(cq_exec_event(x, d, &ev, err, sizeof err), CQ_OK);
    rows(db, got, sizeof got);
    assert_string_equal(got, "plain:o-1,items:A,items:B,items:NULL,"
                             "deep:x,deep:y,tags:t1");

    /* The same data not decoded (the projector's batches, jsonscan.h):
     * :data.order_id straight from the text, the deeper paths and @each
     * from the document built on first need; the same rows. */
    assert_int_equal(cq_exec_sql(x, "DELETE FROM lines", err, sizeof err),
                     CQ_OK);
    memset(&lz, 0, sizeof lz);
    lz.text = data_text;
    assert_int_equal(cq_json_scan(lz.text, &lz.scan), 1);
    ev.data = NULL;
    ev.lazy = &lz;
    assert_int_equal(cq_exec_event(x, d, &ev, err, sizeof err), CQ_OK);
    assert_non_null(lz.data); /* built for the deeper paths */
    rows(db, got, sizeof got);
    assert_string_equal(got, "plain:o-1,items:A,items:B,items:NULL,"
                             "deep:x,deep:y,tags:t1");
    json_decref(lz.data);
    ev.data = data;
    ev.lazy = NULL;

    /* No metadata: its @each runs zero times, the others as before. */
    assert_int_equal(cq_exec_sql(x, "DELETE FROM lines", err, sizeof err),
                     CQ_OK);
    ev.metadata = NULL;
    assert_int_equal(cq_exec_event(x, d, &ev, err, sizeof err), CQ_OK);
    rows(db, got, sizeof got);
    assert_string_equal(got, "plain:o-1,items:A,items:B,items:NULL,"
                             "deep:x,deep:y");

    cq_exec_free(x);
    cq_rdb_close(db);
    cq_declared_free(d);
    json_decref(data);
    json_decref(metadata);
}

/* Values through a handler into typed columns and back out of a query:
 * 64-bit integers in INTEGER columns and in parameters PostgreSQL would
 * type as 32-bit (COALESCE(:x, 0), :x > 0), doubles in REAL columns
 * unrounded, text, JSON as text, null. */
static const char types_file[] =
    "-- @projection totals\n"
    "-- @version 1\n"
    "CREATE TABLE totals (id TEXT PRIMARY KEY, n INTEGER NOT NULL,\n"
    "    r REAL, big INT, doc TEXT, none TEXT);\n"
    "-- @on Placed\n"
    "INSERT INTO totals (id, n, r, big, doc, none)\n"
    "VALUES (:data.id, COALESCE(:data.n, 0), :data.r,\n"
    "        CASE WHEN :data.n > 0 THEN :data.n ELSE 0 END, :data.doc,\n"
    "        :data.none)\n"
    "ON CONFLICT (id) DO UPDATE SET n = totals.n + excluded.n;\n"
    "-- @query total\n"
    "-- @param id id required\n"
    "-- @param min int 0..9223372036854775807 default 0\n"
    "-- @result one\n"
    "SELECT id, n, r, big, doc, none FROM totals\n"
    " WHERE id = :id AND n >= :min;\n";

static int keep_row(void *arg, json_t *row)
{
    *(json_t **)arg = row;
    return 1;
}

static void test_types(void **state)
{
    json_t *data = json_loads("{\"id\": \"a\", \"n\": 5000000000,"
                              " \"r\": 0.1, \"doc\": {\"k\": [1, true]},"
                              " \"none\": null}",
                              0, NULL);
    cq_decl_event ev = {
        "s-1",        1,    1,   "Placed", "2026-11-23T14:18:26.123Z",
        "2026-11-23", data, NULL, NULL};
    const char *values[2] = {"a", "9000000000"};
    cq_declared *d = NULL;
    cq_rdb *db;
    cq_exec *x;
    json_t *row = NULL;
    char err[256] = "";

    (void)state;
    assert_int_equal(
        cq_declared_parse(types_file, strlen(types_file), &d, err, sizeof err),
        CQ_OK);
    db = open_db();
    assert_non_null(x = cq_exec_new(db));
    assert_int_equal(
        cq_exec_sql(x, cq_exec_text(db, &d->ddl[0]), err, sizeof err), CQ_OK);
    if (cq_exec_event(x, d, &ev, err, sizeof err) != CQ_OK)
        fail_msg("%s", err);
    ev.version = 2;
    assert_int_equal(cq_exec_event(x, d, &ev, err, sizeof err), CQ_OK);
    if (cq_exec_query(x, &d->queries[0], &d->queries[0].stmts[0], values,
                      keep_row, &row, err, sizeof err) != CQ_OK)
        fail_msg("%s", err);
    assert_non_null(row);
    assert_string_equal(json_string_value(json_object_get(row, "id")), "a");
    assert_true(json_integer_value(json_object_get(row, "n")) ==
                INT64_C(10000000000));
    assert_true(json_is_real(json_object_get(row, "r")));
    assert_true(json_real_value(json_object_get(row, "r")) == 0.1);
    assert_true(json_integer_value(json_object_get(row, "big")) ==
                INT64_C(5000000000));
    assert_string_equal(json_string_value(json_object_get(row, "doc")),
                        "{\"k\":[1,true]}");
    assert_true(json_is_null(json_object_get(row, "none")));
    json_decref(row);
    /* a parameter past 32 bits, where the query compares it */
    row = NULL;
    values[1] = "10000000001";
    assert_int_equal(cq_exec_query(x, &d->queries[0], &d->queries[0].stmts[0],
                                   values, keep_row, &row, err, sizeof err),
                     CQ_OK);
    assert_null(row);
    cq_exec_free(x);
    cq_rdb_close(db);
    cq_declared_free(d);
    json_decref(data);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_each),
        cmocka_unit_test(test_types),
    };

    pg = argc > 1 && strcmp(argv[1], "pg") == 0;
    return cmocka_run_group_tests_name(pg ? "exec_pg" : "exec", tests, NULL,
                                       NULL);
}
