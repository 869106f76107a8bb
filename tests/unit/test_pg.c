/*
 * test_pg.c -- unit tests of src/store/pg.c, the helpers both PostgreSQL
 * backends share: recognising a PostgreSQL location, hiding passwords,
 * connecting (and failing to, with one line that names the server), and
 * PostgreSQL's failures as CQ_* codes, on the ctest `pg` cluster.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "cqrs/cqrs.h"
#include "pgtest.h"
#include "store/pg.h"

static void test_is_uri(void **unused)
{
    assert_true(cq_pg_is_uri("postgresql://u@h/db"));
    assert_true(cq_pg_is_uri("postgres://h:5432/db"));
    assert_true(cq_pg_is_uri("host=127.0.0.1 dbname=x"));
    assert_false(cq_pg_is_uri("./data"));
    assert_false(cq_pg_is_uri(":memory:"));
    assert_false(cq_pg_is_uri("/tmp/postgresql/read.db"));
    assert_false(cq_pg_is_uri(""));
    assert_false(cq_pg_is_uri(NULL));
}

static void test_redact(void **unused)
{
    char buf[256];

    cq_pg_redact("postgresql://cqrs:s3cret@127.0.0.1:5432/db", buf, sizeof buf);
    assert_string_equal(buf, "postgresql://cqrs:***@127.0.0.1:5432/db");
    cq_pg_redact("postgresql://cqrs@127.0.0.1/db", buf, sizeof buf);
    assert_string_equal(buf, "postgresql://cqrs@127.0.0.1/db");
    cq_pg_redact("postgresql://h/db?user=u&password=pw&sslmode=disable", buf,
                 sizeof buf);
    assert_string_equal(buf,
                        "postgresql://h/db?user=u&password=***&sslmode=disable");
    cq_pg_redact("host=h password=pw dbname=d", buf, sizeof buf);
    assert_string_equal(buf, "host=h password=*** dbname=d");
    /* an '@' in the path is not a user-info separator */
    cq_pg_redact("postgresql://h/db@x", buf, sizeof buf);
    assert_string_equal(buf, "postgresql://h/db@x");
    /* cut to fit, never unterminated, never the password */
    cq_pg_redact("postgresql://cqrs:s3cret@127.0.0.1/db", buf, 12);
    assert_int_equal(strlen(buf), 11);
    assert_null(strstr(buf, "s3cret"));
}

static void test_connect_refused(void **unused)
{
    char err[512];
    PGconn *c = (PGconn *)1;

    /* port 1 on loopback: nothing listens there */
    assert_int_equal(cq_pg_connect("postgresql://u:hunter2@127.0.0.1:1/db", 2,
                                   &c, err, sizeof err),
                     CQ_EIO);
    assert_null(c);
    assert_non_null(strstr(err, "postgresql://u:***@127.0.0.1:1/db"));
    assert_null(strstr(err, "hunter2"));
    assert_null(strchr(err, '\n'));
}

static void test_codes(void **unused)
{
    char *uri = pgtest_database("pg");
    char err[512];
    PGconn *c = NULL;

    assert_non_null(uri);
    assert_int_equal(cq_pg_connect(uri, 5, &c, err, sizeof err), CQ_OK);
    assert_non_null(c);
    assert_string_equal(PQparameterStatus(c, "client_encoding"), "UTF8");
    assert_string_equal(PQparameterStatus(c, "application_name"), "cqrsd");
    {
        /* the URI's own settings win over the defaults; notices are off */
        char named[1024];
        PGconn *c2 = NULL;
        PGresult *r;
        snprintf(named, sizeof named, "%s?application_name=node7", uri);
        assert_int_equal(cq_pg_connect(named, 5, &c2, err, sizeof err), CQ_OK);
        assert_string_equal(PQparameterStatus(c2, "application_name"),
                            "node7");
        r = PQexec(c2, "SHOW client_min_messages");
        assert_int_equal(PQresultStatus(r), PGRES_TUPLES_OK);
        assert_string_equal(PQgetvalue(r, 0, 0), "warning");
        PQclear(r);
        PQfinish(c2);
    }
    assert_int_equal(cq_pg_exec(c, "CREATE TABLE t (k INT PRIMARY KEY); "
                                   "INSERT INTO t VALUES (1)",
                                err, sizeof err),
                     CQ_OK);
    assert_int_equal(cq_pg_exec(c, "INSERT INTO t VALUES (1)", err, sizeof err),
                     CQ_EEXIST);
    assert_non_null(strstr(err, "duplicate key"));
    assert_int_equal(cq_pg_exec(c, "SELEC 1", err, sizeof err), CQ_EINVAL);
    assert_non_null(strstr(err, "syntax error"));
    assert_null(strchr(err, '\n'));
    assert_int_equal(cq_pg_exec(c, "SET statement_timeout = 50; "
                                   "SELECT pg_sleep(2)",
                                err, sizeof err),
                     CQ_EBUSY);
    assert_int_equal(cq_pg_exec(c, "SET statement_timeout = 0", err, sizeof err),
                     CQ_OK);
    /* the server ends the session: the connection's failure is CQ_EIO */
    assert_int_equal(cq_pg_exec(c, "SELECT pg_terminate_backend(pg_backend_pid())",
                                err, sizeof err),
                     CQ_EIO);
    assert_int_equal(cq_pg_exec(c, "SELECT 1", err, sizeof err), CQ_EIO);
    PQfinish(c);
    free(uri);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_is_uri),
        cmocka_unit_test(test_redact),
        cmocka_unit_test(test_connect_refused),
        cmocka_unit_test(test_codes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
