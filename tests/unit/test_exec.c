/*
 * test_exec.c -- unit tests of src/projection/exec.c: declared handlers run
 * on an in-memory database of the read store (SQLite), with @each blocks over
 * data and metadata paths (nested members and indexes; a path that is missing
 * or not an array runs its block zero times).
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
#include "projection/exec.h"

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
    assert_int_equal(cq_rdb_prepare(db,
                                    "SELECT src, coalesce(val, 'NULL') "
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
    json_t *data = json_loads(
        "{\"order_id\": \"o-1\","
        " \"items\": [{\"sku\": \"A\"}, {\"sku\": \"B\"}, {\"q\": 1}],"
        " \"o\": {\"deep\": [0, {\"list\": [\"x\", \"y\"]}]}}",
        0, NULL);
    json_t *metadata = json_loads("{\"tags\": [\"t1\"]}", 0, NULL);
    cq_decl_event ev = {
        "order-o-1",  1,    7,       "Placed", "2026-11-23T14:18:26.123Z",
        "2026-11-23", data, metadata};
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
    assert_int_equal(
        cq_rdb_open(":memory:", CQ_RDB_CREATE, 0, &db, err, sizeof err), CQ_OK);
    assert_non_null(x = cq_exec_new(db));
    assert_int_equal(cq_exec_sql(x, d->ddl[0].sqlite_sql, err, sizeof err),
                     CQ_OK);

    assert_int_equal(cq_exec_event(x, d, &ev, err, sizeof err), CQ_OK);
    rows(db, got, sizeof got);
    assert_string_equal(got, "plain:o-1,items:A,items:B,items:NULL,"
                             "deep:x,deep:y,tags:t1");

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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_each),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
