/*
 * test_store.c -- unit tests of the event store (src/store), on either
 * backend: `test_store` runs them on SQLite, `test_store pg` on PostgreSQL
 * (ctest test_store_pg, with the pg fixture; each test makes a database of
 * its own with pgtest_database).
 *
 * SQLite: each test gets a fresh directory under $TMPDIR (mkdtemp) and
 * removes it afterwards. The store's tables are poked at directly (sqlite3
 * on the file, libpq on the database) to fake newer schemas and damaged
 * rows; where the two databases differ (PostgreSQL enforces column types,
 * so a wrong type takes an ALTER TABLE and a NULL a dropped NOT NULL) each
 * test names both pokes. The threaded test checks what readers see while
 * the test's own thread appends; cmocka's asserts are not thread-safe, so
 * reader threads only record what went wrong and the main thread asserts.
 * The PostgreSQL-only cases (several nodes, reconnecting) are in
 * test_store_pg.c.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <ftw.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sqlite3.h>

#include "pgtest.h"
#include "store/rdb.h"
#include "store/store.h"

/* ---- fixtures and helpers ---- */

static int use_pg; /* argv[1] "pg": the PostgreSQL backend */

typedef struct fixture {
    char root[512]; /* mkdtemp directory */
    char dir[600];  /* root/db: the store directory (created by open) */
    char file[640]; /* dir/events.db */
    char *uri;      /* PostgreSQL: the test's own database */
    cq_store *s;
} fixture;

/* The configuration of f's store on the backend under test. */
static cq_store_config config_of(const fixture *f, int readers, int sync_full)
{
    cq_store_config cfg = {.sync_full = sync_full,
                           .read_connections = readers,
                           .connections = readers};
    if (use_pg)
        cfg.uri = f->uri;
    else
        cfg.dir = f->dir;
    return cfg;
}

/* The SQLite connection behind the store's write connection, for hooks
 * and triggers on it (white-box: these tests know the backend). */
static sqlite3 *write_db(cq_store *s)
{
    return cq_rdb_impl(cq_store_write_rdb(s));
}

static int rm_entry(const char *path, const struct stat *sb, int flag,
                    struct FTW *ftw)
{
    return remove(path);
}

static int make_fixture(void **state, int open_store)
{
    fixture *f = calloc(1, sizeof *f);
    const char *tmp = getenv("TMPDIR");
    if (f == NULL)
        return -1;
    snprintf(f->root, sizeof f->root, "%s/test_store-XXXXXX",
             tmp && *tmp ? tmp : "/tmp");
    if (mkdtemp(f->root) == NULL) {
        free(f);
        return -1;
    }
    snprintf(f->dir, sizeof f->dir, "%s/db", f->root);
    snprintf(f->file, sizeof f->file, "%s/events.db", f->dir);
    *state = f;
    if (use_pg && (f->uri = pgtest_database("store")) == NULL)
        return -1;
    if (open_store) {
        char err[256];
        cq_store_config cfg = config_of(f, 2, 0);
        if (cq_store_open(&cfg, &f->s, err, sizeof err) != CQ_OK) {
            fprintf(stderr, "open: %s\n", err);
            return -1;
        }
    }
    return 0;
}

static int setup_open(void **state)
{
    return make_fixture(state, 1);
}

static int setup_dir(void **state)
{
    return make_fixture(state, 0);
}

static int teardown(void **state)
{
    fixture *f = *state;
    cq_store_close(f->s);
    nftw(f->root, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    free(f->uri);
    free(f);
    return 0;
}

static int open_store(fixture *f, int readers, char *err, size_t cap)
{
    cq_store_config cfg = config_of(f, readers, 1);
    return cq_store_open(&cfg, &f->s, err, cap);
}

/* Run SQL on the store's tables through a connection of our own: sq on
 * SQLite's file, pg on the PostgreSQL database. */
static void poke(const fixture *f, const char *sq, const char *pg)
{
    if (use_pg) {
        PGconn *c = PQconnectdb(f->uri);
        PGresult *r = PQexec(c, pg);
        ExecStatusType st = PQresultStatus(r);
        if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK)
            fail_msg("poke '%s': %s", pg, PQerrorMessage(c));
        PQclear(r);
        PQfinish(c);
        return;
    }
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open(f->file, &db), SQLITE_OK);
    char *msg = NULL;
    int rc = sqlite3_exec(db, sq, NULL, NULL, &msg);
    if (rc != SQLITE_OK)
        fail_msg("poke '%s': %s", sq, msg ? msg : "?");
    sqlite3_close(db);
}

/* One integer that SQL on f's database answers (-1 if it fails). */
static long long query_int(const fixture *f, const char *sq, const char *pg)
{
    long long n = -1;
    if (use_pg) {
        PGconn *c = PQconnectdb(f->uri);
        PGresult *r = PQexec(c, pg);
        if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1 &&
            !PQgetisnull(r, 0, 0))
            n = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
        PQclear(r);
        PQfinish(c);
        return n;
    }
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    if (sqlite3_open_v2(f->file, &db, SQLITE_OPEN_READONLY, NULL) ==
            SQLITE_OK &&
        sqlite3_prepare_v2(db, sq, -1, &st, NULL) == SQLITE_OK &&
        sqlite3_step(st) == SQLITE_ROW)
        n = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    sqlite3_close(db);
    return n;
}

static const cq_new_event EV = {"Happened", 1, "{\"n\":1}", "{}"};

static int64_t append1(cq_store *s, const char *stream, int64_t expected,
                       size_t n)
{
    cq_new_event evs[16];
    int64_t v = -1, p = -1;
    assert_true(n <= 16);
    for (size_t i = 0; i < n; i++)
        evs[i] = EV;
    assert_int_equal(cq_store_append(s, stream, expected, evs, n, 1000, &v, &p),
                     CQ_OK);
    return p;
}

/* What a read callback collected. */
typedef struct seen {
    int n;
    int stop_after; /* 0: never stop */
    int64_t pos[256];
    int64_t ver[256];
    char stream[256][16];
    char data[256][32];
    int schema[256];
    int64_t recorded[256];
} seen;

static int collect(void *arg, const cq_stored_event *ev)
{
    seen *c = arg;
    if (c->n < 256) {
        c->pos[c->n] = ev->position;
        c->ver[c->n] = ev->version;
        snprintf(c->stream[c->n], sizeof c->stream[0], "%s", ev->stream_id);
        snprintf(c->data[c->n], sizeof c->data[0], "%s", ev->data);
        c->schema[c->n] = ev->schema_version;
        c->recorded[c->n] = ev->recorded_at;
    }
    c->n++;
    return c->stop_after != 0 && c->n >= c->stop_after;
}

static seen *read_all(cq_store *s, int64_t from, int limit, int64_t *head,
                      int want_rc)
{
    static seen c;
    char err[256] = "";
    memset(&c, 0, sizeof c);
    int rc =
        cq_store_read_all(s, from, limit, collect, &c, head, err, sizeof err);
    if (rc != want_rc)
        fail_msg("read_all: rc %d, want %d: %s", rc, want_rc, err);
    return &c;
}

/* ---- open, create, reopen, refuse ---- */

static void test_open_create_reopen(void **state)
{
    fixture *f = *state;
    char err[256];
    struct stat sb;
    int64_t head = -1;

    assert_int_equal(open_store(f, 0, err, sizeof err), CQ_OK);
    assert_string_equal(cq_store_backend(f->s),
                        use_pg ? "postgresql" : "sqlite");
    if (!use_pg) {
        assert_int_equal(stat(f->dir, &sb), 0);
        assert_true(S_ISDIR(sb.st_mode));
        assert_int_equal(stat(f->file, &sb), 0);
    }
    assert_int_equal(cq_store_head_position(f->s, &head), CQ_OK);
    assert_int_equal(head, 0);
    append1(f->s, "a", CQ_VERSION_NO_STREAM, 3);
    cq_store_close(f->s);
    f->s = NULL;

    if (use_pg) {
        /* One row says version 1. */
        assert_int_equal(query_int(f, NULL,
                                   "SELECT count(*) FROM cq_store_schema"),
                         1);
        assert_int_equal(
            query_int(f, NULL, "SELECT version FROM cq_store_schema"),
            CQ_STORE_SCHEMA_VERSION);
        assert_int_equal(open_store(f, 1, err, sizeof err), CQ_OK);
        assert_int_equal(cq_store_head_position(f->s, &head), CQ_OK);
        assert_int_equal(head, 3);
        assert_int_equal(append1(f->s, "b", CQ_VERSION_ANY, 1), 4);
        assert_int_equal(cq_store_wal_bytes(f->s), -1);
        return;
    }
    /* The file says version 1 and WAL. */
    sqlite3 *db;
    sqlite3_stmt *st;
    assert_int_equal(sqlite3_open(f->file, &db), SQLITE_OK);
    assert_int_equal(
        sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &st, NULL),
        SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    assert_int_equal(sqlite3_column_int(st, 0), CQ_STORE_SCHEMA_VERSION);
    sqlite3_finalize(st);
    assert_int_equal(
        sqlite3_prepare_v2(db, "PRAGMA journal_mode", -1, &st, NULL),
        SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    assert_string_equal((const char *)sqlite3_column_text(st, 0), "wal");
    sqlite3_finalize(st);
    sqlite3_close(db);

    assert_int_equal(open_store(f, 1, err, sizeof err), CQ_OK);
    assert_int_equal(cq_store_head_position(f->s, &head), CQ_OK);
    assert_int_equal(head, 3);
    /* Positions carry on after a reopen. */
    assert_int_equal(append1(f->s, "b", CQ_VERSION_ANY, 1), 4);
}

static void test_refuse_newer_schema(void **state)
{
    fixture *f = *state;
    char err[256] = "";

    assert_int_equal(open_store(f, 1, err, sizeof err), CQ_OK);
    cq_store_close(f->s);
    f->s = NULL;
    poke(f, "PRAGMA user_version = 99",
         "UPDATE cq_store_schema SET version = 99");
    assert_int_equal(open_store(f, 1, err, sizeof err), CQ_EVERSION);
    assert_null(f->s);
    assert_non_null(strstr(err, "schema version 99"));
    assert_non_null(strstr(err, "upgrade cqrsd"));
}

static void test_refuse_garbage_file(void **state)
{
    fixture *f = *state;
    char err[256] = "";
    char junk[8192], back[sizeof junk];

    if (use_pg) {
        /* A version table that does not hold one integer version. */
        poke(f, NULL,
             "CREATE TABLE cq_store_schema (version TEXT);"
             "INSERT INTO cq_store_schema VALUES ('not a version')");
        assert_int_equal(open_store(f, 1, err, sizeof err), CQ_ECORRUPT);
        assert_null(f->s);
        assert_non_null(strstr(err, "cq_store_schema"));
        poke(f, NULL,
             "UPDATE cq_store_schema SET version = '1';"
             "INSERT INTO cq_store_schema VALUES ('1')");
        assert_int_equal(open_store(f, 1, err, sizeof err), CQ_ECORRUPT);
        assert_non_null(strstr(err, "2 rows"));
        /* Refused without creating anything. */
        assert_int_equal(
            query_int(f, NULL,
                      "SELECT count(*) FROM pg_tables WHERE tablename IN"
                      " ('events', 'streams', 'command_log')"),
            0);
        return;
    }
    for (size_t i = 0; i < sizeof junk; i++)
        junk[i] = (char)("not a database, honest\n"[i % 23] ^ (i >> 7));
    assert_int_equal(mkdir(f->dir, 0755), 0);
    FILE *fp = fopen(f->file, "wb");
    assert_non_null(fp);
    assert_int_equal(fwrite(junk, 1, sizeof junk, fp), sizeof junk);
    fclose(fp);

    int rc = open_store(f, 1, err, sizeof err);
    assert_true(rc == CQ_ECORRUPT || rc == CQ_EIO);
    assert_null(f->s);
    assert_true(strlen(err) > 0);
    /* Refused without touching the file. */
    fp = fopen(f->file, "rb");
    assert_non_null(fp);
    assert_int_equal(fread(back, 1, sizeof back, fp), sizeof back);
    fclose(fp);
    assert_memory_equal(junk, back, sizeof junk);
}

static void test_refuse_foreign_database(void **state)
{
    fixture *f = *state;
    char err[256] = "";

    if (use_pg) {
        /* One of the store's tables, but no version. */
        poke(f, NULL, "CREATE TABLE events (x INT)");
        assert_int_equal(open_store(f, 1, err, sizeof err), CQ_ECORRUPT);
        assert_non_null(strstr(err, "no cq_store_schema"));
        /* A version, but a table is missing: half-made. */
        poke(f, NULL,
             "DROP TABLE events; CREATE TABLE cq_store_schema (version INT);"
             "INSERT INTO cq_store_schema VALUES (1)");
        assert_int_equal(open_store(f, 1, err, sizeof err), CQ_ECORRUPT);
        assert_non_null(strstr(err, "half-made"));
        /* All tables, but one lacks a column the statements need; the
         * password never shows. */
        poke(f, NULL, "DROP TABLE cq_store_schema");
        assert_int_equal(open_store(f, 1, err, sizeof err), CQ_OK);
        cq_store_close(f->s);
        f->s = NULL;
        poke(f, NULL, "ALTER TABLE events DROP COLUMN metadata");
        assert_int_equal(open_store(f, 1, err, sizeof err), CQ_ECORRUPT);
        assert_non_null(strstr(err, "does not match"));
        assert_null(strstr(err, "cqrs-test"));
        return;
    }
    /* Tables, but no cqrsd schema version. */
    assert_int_equal(mkdir(f->dir, 0755), 0);
    poke(f, "CREATE TABLE t (x)", NULL);
    assert_int_equal(open_store(f, 1, err, sizeof err), CQ_ECORRUPT);
    assert_non_null(strstr(err, "user_version 0"));

    /* Version 1, but the tables are not there. */
    poke(f, "DROP TABLE t; PRAGMA user_version = 1", NULL);
    assert_int_equal(open_store(f, 1, err, sizeof err), CQ_ECORRUPT);
    assert_non_null(strstr(err, "no such table"));
}

static void test_bad_config(void **state)
{
    char err[64];
    cq_store *s = (cq_store *)&err; /* must be reset to NULL */
    cq_store_config cfg = {.dir = NULL};
    assert_int_equal(cq_store_open(&cfg, &s, err, sizeof err), CQ_EINVAL);
    assert_null(s);
    assert_int_equal(cq_store_open(NULL, &s, err, sizeof err), CQ_EINVAL);
    /* A URI that names no PostgreSQL database; a negative pool. */
    cfg.uri = "mysql://x";
    assert_int_equal(cq_store_open(&cfg, &s, err, sizeof err), CQ_EINVAL);
    assert_null(s);
    cfg.uri = "postgresql://u:secret@127.0.0.1:1/x";
    cfg.connections = -1;
    assert_int_equal(cq_store_open(&cfg, &s, err, sizeof err), CQ_EINVAL);
    assert_null(s);
    cq_store_close(NULL);
}

/* ---- append ---- */

static void test_append_expected_versions(void **state)
{
    fixture *f = *state;
    cq_store *s = f->s;
    int64_t v = -1, p = -1, head = -1;

    assert_int_equal(cq_store_begin(s), CQ_OK);
    /* no_stream */
    assert_int_equal(
        cq_store_append(s, "a", CQ_VERSION_NO_STREAM, &EV, 1, 5, &v, &p),
        CQ_OK);
    assert_int_equal(v, 1);
    assert_int_equal(p, 1);
    assert_int_equal(
        cq_store_append(s, "a", CQ_VERSION_NO_STREAM, &EV, 1, 5, &v, &p),
        CQ_ECONFLICT);
    assert_non_null(strstr(cq_store_errmsg(s), "'a'"));
    /* exists */
    assert_int_equal(
        cq_store_append(s, "b", CQ_VERSION_EXISTS, &EV, 1, 5, &v, &p),
        CQ_ECONFLICT);
    assert_int_equal(
        cq_store_append(s, "a", CQ_VERSION_EXISTS, &EV, 1, 5, &v, &p), CQ_OK);
    assert_int_equal(v, 2);
    assert_int_equal(p, 2);
    /* exact */
    assert_int_equal(cq_store_append(s, "a", 1, &EV, 1, 5, &v, &p),
                     CQ_ECONFLICT);
    assert_int_equal(cq_store_append(s, "a", 3, &EV, 1, 5, &v, &p),
                     CQ_ECONFLICT);
    assert_int_equal(cq_store_append(s, "b", 1, &EV, 1, 5, &v, &p),
                     CQ_ECONFLICT);
    assert_int_equal(cq_store_append(s, "a", 2, &EV, 1, 5, &v, &p), CQ_OK);
    assert_int_equal(v, 3);
    assert_int_equal(p, 3);
    /* any */
    assert_int_equal(cq_store_append(s, "a", CQ_VERSION_ANY, &EV, 1, 5, &v, &p),
                     CQ_OK);
    assert_int_equal(v, 4);
    assert_int_equal(cq_store_append(s, "b", CQ_VERSION_ANY, &EV, 1, 5, &v, &p),
                     CQ_OK);
    assert_int_equal(v, 1);
    assert_int_equal(p, 5);
    /* Conflicts wrote nothing and did not fail the batch. */
    assert_int_equal(cq_store_write_head(s, &head), CQ_OK);
    assert_int_equal(head, 5);
    assert_int_equal(cq_store_stream_version(s, "a", &v), CQ_OK);
    assert_int_equal(v, 4);
    assert_int_equal(cq_store_stream_version(s, "nope", &v), CQ_OK);
    assert_int_equal(v, 0);
    assert_int_equal(cq_store_commit(s), CQ_OK);

    /* Bad arguments. */
    cq_new_event bad = EV;
    bad.data = NULL;
    assert_int_equal(cq_store_append(s, "a", CQ_VERSION_ANY, &EV, 0, 5, &v, &p),
                     CQ_EINVAL);
    assert_int_equal(cq_store_append(s, "a", -3, &EV, 1, 5, &v, &p), CQ_EINVAL);
    assert_int_equal(
        cq_store_append(s, NULL, CQ_VERSION_ANY, &EV, 1, 5, &v, &p), CQ_EINVAL);
    assert_int_equal(
        cq_store_append(s, "a", CQ_VERSION_ANY, &bad, 1, 5, &v, &p), CQ_EINVAL);

    /* Outside a batch an append is its own committed transaction. */
    assert_int_equal(
        cq_store_append(s, "c", CQ_VERSION_NO_STREAM, &EV, 1, 5, &v, &p),
        CQ_OK);
    assert_int_equal(p, 6);
    assert_int_equal(
        cq_store_append(s, "c", CQ_VERSION_NO_STREAM, &EV, 1, 5, &v, &p),
        CQ_ECONFLICT);
    assert_int_equal(cq_store_head_position(s, &head), CQ_OK);
    assert_int_equal(head, 6);
}

static void test_multi_event_append_is_contiguous(void **state)
{
    fixture *f = *state;
    cq_store *s = f->s;
    cq_new_event evs[3] = {{"A", 1, "{\"i\":0}", "{}"},
                           {"B", 2, "{\"i\":1}", "{\"m\":1}"},
                           {"C", 3, "{\"i\":2}", "{}"}};
    int64_t v, p, head;

    assert_int_equal(cq_store_begin(s), CQ_OK);
    assert_int_equal(
        cq_store_append(s, "x", CQ_VERSION_NO_STREAM, evs, 3, 42, &v, &p),
        CQ_OK);
    assert_int_equal(v, 3);
    assert_int_equal(p, 1);
    assert_int_equal(
        cq_store_append(s, "y", CQ_VERSION_NO_STREAM, evs, 2, 43, &v, &p),
        CQ_OK);
    assert_int_equal(v, 2);
    assert_int_equal(p, 4);
    assert_int_equal(cq_store_append(s, "x", 3, evs, 3, 44, &v, &p), CQ_OK);
    assert_int_equal(v, 6);
    assert_int_equal(p, 6);
    assert_int_equal(cq_store_commit(s), CQ_OK);

    seen *c = read_all(s, 1, 100, &head, CQ_OK);
    assert_int_equal(head, 8);
    assert_int_equal(c->n, 8);
    static const char *stream[8] = {"x", "x", "x", "y", "y", "x", "x", "x"};
    static const int64_t ver[8] = {1, 2, 3, 1, 2, 4, 5, 6};
    for (int i = 0; i < 8; i++) {
        assert_int_equal(c->pos[i], i + 1);
        assert_string_equal(c->stream[i], stream[i]);
        assert_int_equal(c->ver[i], ver[i]);
    }
    assert_string_equal(c->data[1], "{\"i\":1}");
    assert_int_equal(c->schema[2], 3);
    assert_int_equal(c->recorded[0], 42);
    assert_int_equal(c->recorded[7], 44);
}

/* ---- transactions ---- */

static void test_savepoint_rollback_reuses_positions(void **state)
{
    fixture *f = *state;
    cq_store *s = f->s;
    int64_t head, v;

    assert_int_equal(cq_store_begin(s), CQ_OK);
    assert_int_equal(cq_store_savepoint(s), CQ_OK);
    assert_int_equal(append1(s, "a", CQ_VERSION_NO_STREAM, 2), 1);
    assert_int_equal(cq_store_release(s), CQ_OK);

    assert_int_equal(cq_store_savepoint(s), CQ_OK);
    assert_int_equal(append1(s, "b", CQ_VERSION_NO_STREAM, 3), 3);
    assert_int_equal(append1(s, "a", 2, 1), 6);
    assert_int_equal(cq_store_write_head(s, &head), CQ_OK);
    assert_int_equal(head, 6);
    assert_int_equal(cq_store_rollback_savepoint(s), CQ_OK);

    /* The rolled-back command's positions and versions are free again. */
    assert_int_equal(cq_store_write_head(s, &head), CQ_OK);
    assert_int_equal(head, 2);
    assert_int_equal(cq_store_stream_version(s, "b", &v), CQ_OK);
    assert_int_equal(v, 0);
    assert_int_equal(cq_store_savepoint(s), CQ_OK);
    assert_int_equal(append1(s, "c", CQ_VERSION_NO_STREAM, 1), 3);
    assert_int_equal(append1(s, "a", 2, 1), 4);
    assert_int_equal(cq_store_release(s), CQ_OK);
    assert_int_equal(cq_store_commit(s), CQ_OK);

    seen *c = read_all(s, 0, 100, &head, CQ_OK);
    assert_int_equal(head, 4);
    assert_int_equal(c->n, 4);
    for (int i = 0; i < 4; i++)
        assert_int_equal(c->pos[i], i + 1);
    assert_string_equal(c->stream[2], "c");
    assert_string_equal(c->stream[3], "a");
    assert_int_equal(c->ver[3], 3);

    /* Misuse is refused without harm. */
    assert_int_equal(cq_store_release(s), CQ_EINVAL);
    assert_int_equal(cq_store_savepoint(s), CQ_EINVAL);
    assert_int_equal(cq_store_commit(s), CQ_EINVAL);
    assert_int_equal(cq_store_begin(s), CQ_OK);
    assert_int_equal(cq_store_begin(s), CQ_EINVAL);
    assert_int_equal(cq_store_savepoint(s), CQ_OK);
    assert_int_equal(cq_store_commit(s), CQ_EINVAL);
    assert_int_equal(cq_store_rollback(s), CQ_OK);
    assert_int_equal(cq_store_rollback(s), CQ_OK);
}

static void test_full_rollback(void **state)
{
    fixture *f = *state;
    cq_store *s = f->s;
    int64_t head, v;

    assert_int_equal(cq_store_begin(s), CQ_OK);
    assert_int_equal(append1(s, "a", CQ_VERSION_NO_STREAM, 3), 1);
    assert_int_equal(cq_store_savepoint(s), CQ_OK);
    assert_int_equal(append1(s, "b", CQ_VERSION_NO_STREAM, 1), 4);
    assert_int_equal(cq_store_release(s), CQ_OK);
    assert_int_equal(cq_store_rollback(s), CQ_OK);

    assert_int_equal(cq_store_head_position(s, &head), CQ_OK);
    assert_int_equal(head, 0);
    assert_int_equal(cq_store_begin(s), CQ_OK);
    assert_int_equal(cq_store_stream_version(s, "a", &v), CQ_OK);
    assert_int_equal(v, 0);
    assert_int_equal(append1(s, "b", CQ_VERSION_NO_STREAM, 1), 1);
    assert_int_equal(cq_store_commit(s), CQ_OK);
    read_all(s, 1, 10, &head, CQ_OK);
    assert_int_equal(head, 1);
}

/* A failed statement leaves the savepoint accepting only its rollback. */
static void test_failed_command_accepts_only_rollback(void **state)
{
    fixture *f = *state;
    cq_store *s = f->s;
    int64_t v, p, head;

    append1(s, "a", CQ_VERSION_NO_STREAM, 2);
    /* Make the streams row lie so the next insert hits UNIQUE. */
    poke(f, "UPDATE streams SET version = 1 WHERE stream_id = 'a'",
         "UPDATE streams SET version = 1 WHERE stream_id = 'a'");

    assert_int_equal(cq_store_begin(s), CQ_OK);
    assert_int_equal(cq_store_savepoint(s), CQ_OK);
    assert_int_equal(append1(s, "b", CQ_VERSION_NO_STREAM, 1), 3);
    assert_int_equal(cq_store_release(s), CQ_OK);
    assert_int_equal(cq_store_savepoint(s), CQ_OK);
    assert_int_equal(cq_store_append(s, "a", CQ_VERSION_ANY, &EV, 1, 5, &v, &p),
                     CQ_EIO);
    assert_non_null(strcasestr(cq_store_errmsg(s), "UNIQUE"));
    assert_int_equal(cq_store_append(s, "b", CQ_VERSION_ANY, &EV, 1, 5, &v, &p),
                     CQ_EIO);
    assert_int_equal(cq_store_release(s), CQ_EIO);
    assert_int_equal(cq_store_commit(s), CQ_EIO);
    assert_int_equal(cq_store_rollback_savepoint(s), CQ_OK);
    /* The batch goes on: the earlier command is kept. */
    assert_int_equal(cq_store_savepoint(s), CQ_OK);
    assert_int_equal(append1(s, "c", CQ_VERSION_NO_STREAM, 1), 4);
    assert_int_equal(cq_store_release(s), CQ_OK);
    assert_int_equal(cq_store_commit(s), CQ_OK);
    read_all(s, 1, 10, &head, CQ_OK);
    assert_int_equal(head, 4);

    /* Outside a savepoint the whole batch has failed. */
    assert_int_equal(cq_store_begin(s), CQ_OK);
    assert_int_equal(cq_store_append(s, "a", CQ_VERSION_ANY, &EV, 1, 5, &v, &p),
                     CQ_EIO);
    assert_int_equal(cq_store_savepoint(s), CQ_EIO);
    assert_int_equal(cq_store_commit(s), CQ_EIO);
    assert_int_equal(cq_store_rollback(s), CQ_OK);
    assert_int_equal(append1(s, "d", CQ_VERSION_NO_STREAM, 1), 5);
}

/* ---- fold_stream ---- */

typedef struct fold_arg {
    seen c;
    cq_store *s;
    int write_rc;
} fold_arg;

static int fold_and_write(void *arg, const cq_stored_event *ev)
{
    fold_arg *a = arg;
    int64_t v;
    a->write_rc = cq_store_stream_version(a->s, ev->stream_id, &v);
    return collect(&a->c, ev);
}

static void test_fold_stream(void **state)
{
    fixture *f = *state;
    cq_store *s = f->s;
    seen c;

    assert_int_equal(cq_store_begin(s), CQ_OK);
    append1(s, "a", CQ_VERSION_NO_STREAM, 3);
    append1(s, "b", CQ_VERSION_NO_STREAM, 2);
    append1(s, "a", 3, 2);
    /* fold sees the open transaction. */
    memset(&c, 0, sizeof c);
    assert_int_equal(cq_store_fold_stream(s, "a", 2, collect, &c), CQ_OK);
    assert_int_equal(c.n, 3);
    assert_int_equal(c.ver[0], 3);
    assert_int_equal(c.pos[0], 3);
    assert_int_equal(c.ver[1], 4);
    assert_int_equal(c.pos[1], 6);
    assert_int_equal(c.ver[2], 5);
    assert_int_equal(cq_store_commit(s), CQ_OK);

    memset(&c, 0, sizeof c);
    assert_int_equal(cq_store_fold_stream(s, "a", 0, collect, &c), CQ_OK);
    assert_int_equal(c.n, 5);
    memset(&c, 0, sizeof c);
    c.stop_after = 2;
    assert_int_equal(cq_store_fold_stream(s, "a", 0, collect, &c), CQ_OK);
    assert_int_equal(c.n, 2);
    memset(&c, 0, sizeof c);
    assert_int_equal(cq_store_fold_stream(s, "zzz", 0, collect, &c), CQ_OK);
    assert_int_equal(c.n, 0);
    memset(&c, 0, sizeof c);
    assert_int_equal(cq_store_fold_stream(s, "b", 5, collect, &c), CQ_OK);
    assert_int_equal(c.n, 0);

    /* The write side is not re-entrant from a fold callback. */
    fold_arg a = {.s = s};
    assert_int_equal(cq_store_fold_stream(s, "b", 0, fold_and_write, &a),
                     CQ_OK);
    assert_int_equal(a.c.n, 2);
    assert_int_equal(a.write_rc, CQ_EINVAL);
    /* ...and works again afterwards. */
    assert_int_equal(append1(s, "b", 2, 1), 8);
}

/* ---- read side ---- */

static void test_read_stream_and_all(void **state)
{
    fixture *f = *state;
    cq_store *s = f->s;
    char err[256];
    int64_t sv = -1, head = -1;
    seen c;

    assert_int_equal(cq_store_begin(s), CQ_OK);
    for (int i = 0; i < 10; i++) {
        append1(s, "a", CQ_VERSION_ANY, 1);
        append1(s, "b", CQ_VERSION_ANY, 2);
    }
    assert_int_equal(cq_store_commit(s), CQ_OK);

    memset(&c, 0, sizeof c);
    assert_int_equal(
        cq_store_read_stream(s, "a", 4, 3, collect, &c, &sv, err, sizeof err),
        CQ_OK);
    assert_int_equal(sv, 10);
    assert_int_equal(c.n, 3);
    assert_int_equal(c.ver[0], 4);
    assert_int_equal(c.pos[0], 10);
    assert_int_equal(c.ver[2], 6);
    memset(&c, 0, sizeof c);
    assert_int_equal(cq_store_read_stream(s, "b", 0, 1000, collect, &c, &sv,
                                          err, sizeof err),
                     CQ_OK);
    assert_int_equal(sv, 20);
    assert_int_equal(c.n, 20);
    memset(&c, 0, sizeof c);
    assert_int_equal(
        cq_store_read_stream(s, "b", 21, 10, collect, &c, &sv, err, sizeof err),
        CQ_OK);
    assert_int_equal(c.n, 0);
    memset(&c, 0, sizeof c);
    assert_int_equal(
        cq_store_read_stream(s, "a", 1, 0, collect, &c, &sv, err, sizeof err),
        CQ_OK);
    assert_int_equal(c.n, 0);
    assert_int_equal(sv, 10);
    memset(&c, 0, sizeof c);
    assert_int_equal(cq_store_read_stream(s, "nope", 1, 10, collect, &c, &sv,
                                          err, sizeof err),
                     CQ_ENOTFOUND);
    assert_int_equal(sv, 0);
    assert_int_equal(c.n, 0);
    assert_int_equal(
        cq_store_read_stream(s, "a", 1, -1, collect, &c, &sv, err, sizeof err),
        CQ_EINVAL);

    c = *read_all(s, 5, 7, &head, CQ_OK);
    assert_int_equal(head, 30);
    assert_int_equal(c.n, 7);
    assert_int_equal(c.pos[0], 5);
    assert_int_equal(c.pos[6], 11);
    c = *read_all(s, 28, 100, &head, CQ_OK);
    assert_int_equal(c.n, 3);
    c = *read_all(s, 31, 100, &head, CQ_OK);
    assert_int_equal(c.n, 0);
    assert_int_equal(head, 30);

    /* Readers see committed data only. */
    assert_int_equal(cq_store_begin(s), CQ_OK);
    append1(s, "c", CQ_VERSION_NO_STREAM, 2);
    c = *read_all(s, 1, 100, &head, CQ_OK);
    assert_int_equal(head, 30);
    assert_int_equal(c.n, 30);
    assert_int_equal(
        cq_store_read_stream(s, "c", 1, 10, collect, &c, &sv, err, sizeof err),
        CQ_ENOTFOUND);
    assert_int_equal(cq_store_head_position(s, &head), CQ_OK);
    assert_int_equal(head, 30);
    assert_int_equal(cq_store_commit(s), CQ_OK);
    assert_int_equal(cq_store_head_position(s, &head), CQ_OK);
    assert_int_equal(head, 32);
}

static void test_untrusted_rows(void **state)
{
    fixture *f = *state;
    cq_store *s = f->s;
    char err[256] = "";
    int64_t sv, head;
    seen c;

    append1(s, "a", CQ_VERSION_NO_STREAM, 3);

    /* PostgreSQL enforces types and NOT NULL: a NULL takes an ALTER. */
    poke(f, "UPDATE events SET data = x'00ff' WHERE position = 2",
         "ALTER TABLE events ALTER COLUMN data DROP NOT NULL,"
         " ALTER COLUMN metadata DROP NOT NULL,"
         " ALTER COLUMN recorded_at DROP NOT NULL;"
         "UPDATE events SET data = NULL WHERE position = 2");
    read_all(s, 1, 10, &head, CQ_ECORRUPT);
    memset(&c, 0, sizeof c);
    assert_int_equal(
        cq_store_read_all(s, 1, 10, collect, &c, &head, err, sizeof err),
        CQ_ECORRUPT);
    assert_non_null(strstr(err, "data"));
    assert_int_equal(c.n, 1); /* the good event before it was handed out */
    assert_int_equal(cq_store_fold_stream(s, "a", 0, collect, &c), CQ_ECORRUPT);
    assert_non_null(strstr(cq_store_errmsg(s), "position 2"));

    poke(f,
         "UPDATE events SET data = '{}', metadata = 'x' || char(0) || "
         "'y' WHERE position = 2",
         "UPDATE events SET data = '{}', metadata = NULL WHERE position = 2");
    assert_int_equal(
        cq_store_read_stream(s, "a", 1, 10, collect, &c, &sv, err, sizeof err),
        CQ_ECORRUPT);
    assert_non_null(strstr(err, "NUL"));

    poke(f,
         "UPDATE events SET metadata = '{}', recorded_at = 'soon' "
         "WHERE position = 2",
         "UPDATE events SET metadata = '{}', recorded_at = NULL "
         "WHERE position = 2");
    read_all(s, 1, 10, &head, CQ_ECORRUPT);

    /* A hole in the positions is reported, not skipped. */
    poke(f,
         "UPDATE events SET recorded_at = 1 WHERE position = 2;DELETE "
         "FROM events WHERE position = 2",
         "UPDATE events SET recorded_at = 1 WHERE position = 2;DELETE "
         "FROM events WHERE position = 2");
    memset(&c, 0, sizeof c);
    assert_int_equal(
        cq_store_read_all(s, 1, 10, collect, &c, &head, err, sizeof err),
        CQ_ECORRUPT);
    assert_non_null(strstr(err, "expected position 2"));

    poke(f, "UPDATE streams SET version = 'three'",
         "UPDATE streams SET version = -3");
    assert_int_equal(
        cq_store_read_stream(s, "a", 1, 10, collect, &c, &sv, err, sizeof err),
        CQ_ECORRUPT);
    assert_int_equal(
        cq_store_append(s, "a", CQ_VERSION_ANY, &EV, 1, 5, &sv, &head),
        CQ_ECORRUPT);
    /* Still usable for everything else. */
    assert_int_equal(append1(s, "b", CQ_VERSION_NO_STREAM, 1), 4);
}

/* ---- lookups by position and version ---- */

/* Append n events to stream (any version) recorded at `at` ms; returns
 * the first position. */
static int64_t append_at(cq_store *s, const char *stream, size_t n, int64_t at)
{
    cq_new_event evs[4] = {EV, EV, EV, EV};
    int64_t v = -1, p = -1;
    assert_true(n <= 4);
    assert_int_equal(
        cq_store_append(s, stream, CQ_VERSION_ANY, evs, n, at, &v, &p), CQ_OK);
    return p;
}

/* A store opened read-only (verify, tools): nothing is created for a
 * missing one; an existing one is read, and its write side refuses. */
static int count_event(void *arg, const cq_stored_event *ev)
{
    (void)ev;
    ++*(int *)arg;
    return 0;
}

static void test_read_only(void **state)
{
    fixture *f = *state;
    cq_store_config ro = config_of(f, 1, 0);
    cq_store *r = NULL;
    cq_new_event ev = {"Noted", 1, "{}", "{}"};
    struct stat sb;
    char err[256];
    int64_t head = 0, version = 0, pos = 0;
    int n = 0;

    /* no store yet: refused, and nothing is made */
    ro.read_only = 1;
    assert_int_equal(cq_store_open(&ro, &r, err, sizeof err), CQ_ENOTFOUND);
    assert_null(r);
    if (use_pg)
        assert_int_equal(
            query_int(f, NULL,
                      "SELECT count(*) FROM pg_tables WHERE tablename IN"
                      " ('events', 'streams', 'command_log',"
                      " 'cq_store_schema')"),
            0);
    else
        assert_int_not_equal(stat(f->dir, &sb), 0);

    assert_int_equal(open_store(f, 2, err, sizeof err), CQ_OK);
    assert_int_equal(cq_store_append(f->s, "s-1", CQ_VERSION_NO_STREAM, &ev, 1,
                                     1, &version, &pos),
                     CQ_OK);
    assert_int_equal(cq_store_open(&ro, &r, err, sizeof err), CQ_OK);
    assert_int_equal(
        cq_store_read_all(r, 1, 10, count_event, &n, &head, err, sizeof err),
        CQ_OK);
    assert_int_equal(n, 1);
    assert_int_equal(head, 1);
    assert_int_equal(
        cq_store_version_at(r, "s-1", 1, &version, err, sizeof err), CQ_OK);
    assert_int_equal(version, 1);
    assert_int_equal(cq_store_begin(r), CQ_EINVAL);
    assert_int_equal(cq_store_append(r, "s-1", CQ_VERSION_NO_STREAM, &ev, 1, 1,
                                     &version, &pos),
                     CQ_EINVAL);
    assert_null(cq_store_write_rdb(r));
    cq_store_close(r);
}

static void test_lookups(void **state)
{
    fixture *f = *state;
    cq_store *s = f->s;
    char err[256];
    int64_t out;

    /* a@1 = position 1 (t 100), b@1..2 = 2..3 (t 200), a@2 = 4 (t 300) */
    assert_int_equal(append_at(s, "a", 1, 100), 1);
    assert_int_equal(append_at(s, "b", 2, 200), 2);
    assert_int_equal(append_at(s, "a", 1, 300), 4);

    /* position_of: found, in either stream, after appends to the other */
    assert_int_equal(cq_store_position_of(s, "a", 1, &out, err, sizeof err),
                     CQ_OK);
    assert_int_equal(out, 1);
    assert_int_equal(cq_store_position_of(s, "a", 2, &out, err, sizeof err),
                     CQ_OK);
    assert_int_equal(out, 4);
    assert_int_equal(cq_store_position_of(s, "b", 2, &out, err, sizeof err),
                     CQ_OK);
    assert_int_equal(out, 3);
    /* not found: a version not written (yet), 0, an unknown stream; the
     * output stays as it was */
    out = -7;
    assert_int_equal(cq_store_position_of(s, "a", 3, &out, err, sizeof err),
                     CQ_ENOTFOUND);
    assert_int_equal(cq_store_position_of(s, "a", 0, &out, err, sizeof err),
                     CQ_ENOTFOUND);
    assert_int_equal(cq_store_position_of(s, "nope", 1, &out, NULL, 0),
                     CQ_ENOTFOUND);
    assert_int_equal(out, -7);

    /* recorded_at */
    assert_int_equal(cq_store_recorded_at(s, 1, &out, err, sizeof err), CQ_OK);
    assert_int_equal(out, 100);
    assert_int_equal(cq_store_recorded_at(s, 3, &out, err, sizeof err), CQ_OK);
    assert_int_equal(out, 200);
    assert_int_equal(cq_store_recorded_at(s, 4, &out, err, sizeof err), CQ_OK);
    assert_int_equal(out, 300);
    out = -7;
    assert_int_equal(cq_store_recorded_at(s, 5, &out, err, sizeof err),
                     CQ_ENOTFOUND);
    assert_int_equal(cq_store_recorded_at(s, 0, &out, err, sizeof err),
                     CQ_ENOTFOUND);
    assert_int_equal(out, -7);

    /* version_at: the stream's last version at or before the position;
     * appends to b in between do not move a; 0 before its first event or
     * for an unknown stream */
    assert_int_equal(cq_store_version_at(s, "a", 1, &out, err, sizeof err),
                     CQ_OK);
    assert_int_equal(out, 1);
    assert_int_equal(cq_store_version_at(s, "a", 3, &out, err, sizeof err),
                     CQ_OK);
    assert_int_equal(out, 1);
    assert_int_equal(cq_store_version_at(s, "a", 4, &out, err, sizeof err),
                     CQ_OK);
    assert_int_equal(out, 2);
    assert_int_equal(cq_store_version_at(s, "a", 1000, &out, err, sizeof err),
                     CQ_OK);
    assert_int_equal(out, 2);
    assert_int_equal(cq_store_version_at(s, "b", 1, &out, err, sizeof err),
                     CQ_OK);
    assert_int_equal(out, 0);
    assert_int_equal(cq_store_version_at(s, "b", 2, &out, err, sizeof err),
                     CQ_OK);
    assert_int_equal(out, 1);
    out = -7;
    assert_int_equal(cq_store_version_at(s, "nope", 4, &out, err, sizeof err),
                     CQ_OK);
    assert_int_equal(out, 0);
    assert_int_equal(cq_store_version_at(s, "a", 0, &out, err, sizeof err),
                     CQ_OK);
    assert_int_equal(out, 0);

    /* committed data only: an open batch's events are not seen */
    assert_int_equal(cq_store_begin(s), CQ_OK);
    assert_int_equal(append_at(s, "a", 1, 400), 5);
    assert_int_equal(cq_store_position_of(s, "a", 3, &out, err, sizeof err),
                     CQ_ENOTFOUND);
    assert_int_equal(cq_store_recorded_at(s, 5, &out, err, sizeof err),
                     CQ_ENOTFOUND);
    assert_int_equal(cq_store_version_at(s, "a", 5, &out, err, sizeof err),
                     CQ_OK);
    assert_int_equal(out, 2);
    assert_int_equal(cq_store_commit(s), CQ_OK);
    assert_int_equal(cq_store_position_of(s, "a", 3, &out, err, sizeof err),
                     CQ_OK);
    assert_int_equal(out, 5);
    assert_int_equal(cq_store_recorded_at(s, 5, &out, err, sizeof err), CQ_OK);
    assert_int_equal(out, 400);

    /* NULL arguments */
    assert_int_equal(cq_store_position_of(s, NULL, 1, &out, err, sizeof err),
                     CQ_EINVAL);
    assert_int_equal(cq_store_position_of(s, "a", 1, NULL, err, sizeof err),
                     CQ_EINVAL);
    assert_int_equal(cq_store_recorded_at(s, 1, NULL, err, sizeof err),
                     CQ_EINVAL);
    assert_int_equal(cq_store_version_at(s, NULL, 1, &out, err, sizeof err),
                     CQ_EINVAL);
    assert_int_equal(cq_store_version_at(s, "a", 1, NULL, err, sizeof err),
                     CQ_EINVAL);

    /* values read back are checked. PostgreSQL enforces column types: a
     * wrong one takes an ALTER TABLE, after which every value of the
     * column is refused (and the store's statements are prepared anew) */
    poke(f,
         "UPDATE events SET recorded_at = 'soon' WHERE position = 1;"
         "UPDATE events SET version = 'two' WHERE position = 4",
         "ALTER TABLE events ALTER COLUMN recorded_at TYPE TEXT,"
         " ALTER COLUMN version TYPE TEXT;"
         "UPDATE events SET recorded_at = 'soon' WHERE position = 1;"
         "UPDATE events SET version = 'two' WHERE position = 4");
    assert_int_equal(cq_store_recorded_at(s, 1, &out, err, sizeof err),
                     CQ_ECORRUPT);
    assert_int_equal(cq_store_version_at(s, "a", 4, &out, err, sizeof err),
                     CQ_ECORRUPT);
    assert_non_null(strstr(err, "version_at"));
    out = -7;
    assert_int_equal(cq_store_recorded_at(s, 3, &out, err, sizeof err),
                     use_pg ? CQ_ECORRUPT : CQ_OK);
    assert_int_equal(out, use_pg ? -7 : 200);
}

/* ---- command log ---- */

static void test_cmdlog(void **state)
{
    fixture *f = *state;
    cq_store *s = f->s;
    cq_cmdlog_entry e = {"k1", "abc123", 202, "{\"ok\":true}", 1000, 5000};
    cq_cmdlog_entry out;
    int64_t deleted = -1;

    assert_int_equal(cq_store_cmdlog_get(s, "k1", 1000, &out), CQ_ENOTFOUND);
    assert_int_equal(cq_store_begin(s), CQ_OK);
    assert_int_equal(cq_store_cmdlog_put(s, &e), CQ_OK);
    assert_int_equal(cq_store_commit(s), CQ_OK);

    memset(&out, 0, sizeof out);
    assert_int_equal(cq_store_cmdlog_get(s, "k1", 4999, &out), CQ_OK);
    assert_string_equal(out.key, "k1");
    assert_string_equal(out.command_hash, "abc123");
    assert_int_equal(out.status, 202);
    assert_string_equal(out.response, "{\"ok\":true}");
    assert_int_equal(out.created_at, 1000);
    assert_int_equal(out.expires_at, 5000);
    /* Expired at expires_at. */
    assert_int_equal(cq_store_cmdlog_get(s, "k1", 5000, &out), CQ_ENOTFOUND);

    /* Replace. */
    e.status = 409;
    e.response = "{\"conflict\":1}";
    e.expires_at = 9000;
    assert_int_equal(cq_store_cmdlog_put(s, &e), CQ_OK);
    assert_int_equal(cq_store_cmdlog_get(s, "k1", 5000, &out), CQ_OK);
    assert_int_equal(out.status, 409);
    assert_string_equal(out.response, "{\"conflict\":1}");

    /* A put rolled back is gone. */
    cq_cmdlog_entry e2 = {"k2", "h", 201, "{}", 1, 100000};
    assert_int_equal(cq_store_begin(s), CQ_OK);
    assert_int_equal(cq_store_cmdlog_put(s, &e2), CQ_OK);
    assert_int_equal(cq_store_cmdlog_get(s, "k2", 2, &out), CQ_OK);
    assert_int_equal(cq_store_rollback(s), CQ_OK);
    assert_int_equal(cq_store_cmdlog_get(s, "k2", 2, &out), CQ_ENOTFOUND);

    /* Prune: only with a positive chunk (in or outside a batch). */
    assert_int_equal(cq_store_begin(s), CQ_OK);
    assert_int_equal(cq_store_cmdlog_prune(s, 10000, 0, &deleted), CQ_EINVAL);
    assert_int_equal(cq_store_rollback(s), CQ_OK);
    assert_int_equal(cq_store_cmdlog_prune(s, 10000, 0, &deleted), CQ_EINVAL);
    assert_int_equal(cq_store_cmdlog_prune(s, 10000, 100, NULL), CQ_OK);
    assert_int_equal(cq_store_cmdlog_get(s, "k1", 9999, &out), CQ_ENOTFOUND);
    assert_int_equal(cq_store_cmdlog_prune(s, 10000, 100, &deleted), CQ_OK);
    assert_int_equal(deleted, 0);
}

static int count_commit(void *arg)
{
    (*(int *)arg)++;
    return 0; /* let the COMMIT go on */
}

/* Entries with expires_at <= now as another connection sees them: what
 * has committed. */
static long long committed_expired(const fixture *f, int64_t now)
{
    char sql[128];
    snprintf(sql, sizeof sql,
             "SELECT count(*) FROM command_log WHERE expires_at <= %lld",
             (long long)now);
    return query_int(f, sql, sql);
}

/* SQLite counts the write connection's COMMITs with a hook; PostgreSQL
 * has none, and there what is committed is checked from another
 * connection only (committed_expired). */
#define ASSERT_COMMITS(n)                                                      \
    do {                                                                       \
        if (!use_pg)                                                           \
            assert_int_equal(commits, (n));                                    \
    } while (0)

/* Pruning is one bounded step per call: 10,000 expired keys and a few live
 * ones; each call deletes at most max_rows, those that expired first, and
 * says by a short count when none is left. Expired keys still present are
 * absent to cmdlog_get all along. Outside a batch a step is a transaction
 * (one COMMIT) of its own; inside one it adds no COMMIT and goes (or is
 * undone) with the batch, or alone with its savepoint, also when it
 * fails. */
/* A command-log put that fails fails the batch: nothing of it commits,
 * also on PostgreSQL, where the put is sent ahead and its failure shows
 * at the next call (the next command's append, or COMMIT), by then
 * outside the savepoint it was written in. */
static void test_cmdlog_put_failure_fails_batch(void **state)
{
    fixture *f = *state;
    cq_store *s = f->s;
    cq_cmdlog_entry bad = {"bad", "abc123", 202, "{}", 1000, 5000};
    cq_cmdlog_entry out;
    int64_t v, p, head = -1;

    poke(f,
         "CREATE TRIGGER no_bad BEFORE INSERT ON command_log"
         " WHEN NEW.idem_key = 'bad' BEGIN SELECT RAISE(ABORT, 'bad key');"
         " END",
         "CREATE FUNCTION no_bad() RETURNS trigger LANGUAGE plpgsql AS"
         " $$BEGIN RAISE EXCEPTION 'bad key'; END$$;"
         " CREATE TRIGGER no_bad BEFORE INSERT ON command_log FOR EACH ROW"
         " WHEN (NEW.idem_key = 'bad') EXECUTE FUNCTION no_bad()");
    assert_int_equal(append1(s, "x", CQ_VERSION_NO_STREAM, 1), 1);

    /* the next command's call fails */
    assert_int_equal(cq_store_begin(s), CQ_OK);
    assert_int_equal(cq_store_savepoint(s), CQ_OK);
    assert_int_equal(append1(s, "a", CQ_VERSION_NO_STREAM, 1), 2);
    if (use_pg) {
        assert_int_equal(cq_store_cmdlog_put(s, &bad), CQ_OK); /* sent */
        assert_int_equal(cq_store_release(s), CQ_OK);
        assert_int_equal(cq_store_savepoint(s), CQ_OK);
        assert_int_equal(
            cq_store_append(s, "b", CQ_VERSION_ANY, &EV, 1, 5, &v, &p),
            CQ_EIO);
        assert_non_null(strstr(cq_store_errmsg(s), "bad key"));
        /* not only b's savepoint: a's is gone with it */
        assert_int_equal(cq_store_rollback_savepoint(s), CQ_EIO);
        assert_int_equal(cq_store_commit(s), CQ_EIO);
    } else {
        assert_int_not_equal(cq_store_cmdlog_put(s, &bad), CQ_OK);
    }
    assert_int_equal(cq_store_rollback(s), CQ_OK);
    read_all(s, 1, 10, &head, CQ_OK);
    assert_int_equal(head, 1);

    /* the batch's last command: COMMIT fails */
    assert_int_equal(cq_store_begin(s), CQ_OK);
    assert_int_equal(cq_store_savepoint(s), CQ_OK);
    assert_int_equal(append1(s, "a", CQ_VERSION_NO_STREAM, 1), 2);
    if (cq_store_cmdlog_put(s, &bad) == CQ_OK) {
        assert_true(use_pg);
        assert_int_equal(cq_store_release(s), CQ_OK);
        assert_int_equal(cq_store_commit(s), CQ_EIO);
    }
    assert_int_equal(cq_store_rollback(s), CQ_OK);
    read_all(s, 1, 10, &head, CQ_OK);
    assert_int_equal(head, 1);
    assert_int_equal(cq_store_cmdlog_get(s, "bad", 1000, &out), CQ_ENOTFOUND);

    /* a put sent ahead is done before the write view runs a statement */
    if (use_pg) {
        cq_cmdlog_entry good = {"good", "abc123", 202, "{}", 1000, 5000};
        cq_rdb *view = cq_store_write_rdb(s);
        assert_int_equal(cq_store_begin(s), CQ_OK);
        assert_int_equal(cq_store_savepoint(s), CQ_OK);
        assert_int_equal(append1(s, "a", CQ_VERSION_NO_STREAM, 1), 2);
        assert_int_equal(cq_store_cmdlog_put(s, &good), CQ_OK);
        assert_int_equal(cq_store_release(s), CQ_OK);
        assert_int_equal(cq_store_write_head(s, &head), CQ_OK);
        assert_int_equal(head, 2);
        char err[256] = "";
        assert_int_equal(cq_rdb_exec(view, "CREATE TABLE after_put (x INT)",
                                     err, sizeof err),
                         CQ_OK);
        assert_int_equal(cq_store_commit(s), CQ_OK);
        assert_int_equal(cq_store_cmdlog_get(s, "good", 1000, &out), CQ_OK);
    }
}

static void test_cmdlog_prune_step(void **state)
{
    fixture *f = *state;
    cq_store *s = f->s;
    enum { EXPIRED = 10000, LIVE = 10, CHUNK = 256 };
    const int64_t now = 50000;
    cq_cmdlog_entry out;
    int64_t deleted = -1, total = 0;
    int calls = 0, commits = 0;
    char key[32];
    sqlite3 *wdb = use_pg ? NULL : write_db(s);

    assert_int_equal(cq_store_begin(s), CQ_OK);
    for (int i = 0; i < EXPIRED + LIVE; i++) {
        /* Keys in no particular order of expiry. */
        int j = (i * 7919) % (EXPIRED + LIVE);
        snprintf(key, sizeof key, "p%d", j);
        cq_cmdlog_entry p = {.key = key,
                             .command_hash = "h",
                             .status = 202,
                             .response = "{}",
                             .expires_at = j < EXPIRED ? 1 + j : now + 1 + j};
        assert_int_equal(cq_store_cmdlog_put(s, &p), CQ_OK);
    }
    assert_int_equal(cq_store_commit(s), CQ_OK);

    /* One step: CHUNK rows, the first to expire; more remain. */
    assert_int_equal(cq_store_cmdlog_prune(s, now, CHUNK, &deleted), CQ_OK);
    assert_int_equal(deleted, CHUNK);
    total += deleted;
    calls++;
    snprintf(key, sizeof key, "p%d", CHUNK - 1);
    assert_int_equal(cq_store_cmdlog_get(s, key, 0, &out), CQ_ENOTFOUND);
    snprintf(key, sizeof key, "p%d", CHUNK);
    assert_int_equal(cq_store_cmdlog_get(s, key, 0, &out), CQ_OK);
    /* Not pruned yet, but expired: absent. */
    assert_int_equal(cq_store_cmdlog_get(s, key, now, &out), CQ_ENOTFOUND);

    /* Outside a batch: one COMMIT per step. */
    if (!use_pg)
        sqlite3_commit_hook(wdb, count_commit, &commits);
    assert_int_equal(cq_store_cmdlog_prune(s, now, CHUNK, &deleted), CQ_OK);
    assert_int_equal(deleted, CHUNK);
    ASSERT_COMMITS(1);
    total += deleted;
    calls++;
    assert_int_equal(committed_expired(f, now), EXPIRED - total);

    /* Inside a batch, in a savepoint: the step is a write of the batch,
     * not committed before the batch is, and without a COMMIT of its own. */
    commits = 0;
    cq_cmdlog_entry live = {"b-live", "h", 202, "{}", 1, now + 100000};
    assert_int_equal(cq_store_begin(s), CQ_OK);
    assert_int_equal(cq_store_cmdlog_put(s, &live), CQ_OK);
    assert_int_equal(cq_store_savepoint(s), CQ_OK);
    assert_int_equal(cq_store_cmdlog_prune(s, now, CHUNK, &deleted), CQ_OK);
    assert_int_equal(deleted, CHUNK);
    assert_int_equal(cq_store_release(s), CQ_OK);
    ASSERT_COMMITS(0);
    assert_int_equal(committed_expired(f, now), EXPIRED - total);
    assert_int_equal(cq_store_commit(s), CQ_OK);
    ASSERT_COMMITS(1);
    total += deleted;
    calls++;
    assert_int_equal(committed_expired(f, now), EXPIRED - total);
    assert_int_equal(cq_store_cmdlog_get(s, "b-live", now, &out), CQ_OK);

    /* A step rolled back to its savepoint is undone alone: the batch's
     * other write commits. So is a batch rolled back with its step. */
    live.key = "b-kept";
    assert_int_equal(cq_store_begin(s), CQ_OK);
    assert_int_equal(cq_store_cmdlog_put(s, &live), CQ_OK);
    assert_int_equal(cq_store_savepoint(s), CQ_OK);
    assert_int_equal(cq_store_cmdlog_prune(s, now, CHUNK, &deleted), CQ_OK);
    assert_int_equal(deleted, CHUNK);
    assert_int_equal(cq_store_rollback_savepoint(s), CQ_OK);
    assert_int_equal(cq_store_commit(s), CQ_OK);
    assert_int_equal(cq_store_cmdlog_get(s, "b-kept", now, &out), CQ_OK);
    assert_int_equal(committed_expired(f, now), EXPIRED - total);
    assert_int_equal(cq_store_begin(s), CQ_OK);
    assert_int_equal(cq_store_cmdlog_prune(s, now, CHUNK, &deleted), CQ_OK);
    assert_int_equal(deleted, CHUNK);
    assert_int_equal(cq_store_rollback(s), CQ_OK);
    assert_int_equal(committed_expired(f, now), EXPIRED - total);

    /* A step that fails inside its savepoint (a trigger on this
     * connection refuses the next key it would delete) leaves the
     * savepoint accepting only rollback; rolled back, the batch goes on. */
    snprintf(key, sizeof key, "p%lld", (long long)total);
    char sql[512];
    if (use_pg) {
        snprintf(sql, sizeof sql,
                 "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql"
                 " AS $$BEGIN IF old.idem_key = '%s' THEN"
                 " RAISE EXCEPTION 'refused'; END IF; RETURN old; END$$;"
                 "CREATE TRIGGER refuse BEFORE DELETE ON command_log"
                 " FOR EACH ROW EXECUTE FUNCTION refuse()",
                 key);
        poke(f, NULL, sql);
    } else {
        snprintf(sql, sizeof sql,
                 "CREATE TEMP TRIGGER refuse BEFORE DELETE ON main.command_log"
                 " WHEN old.idem_key = '%s' BEGIN"
                 " SELECT RAISE(ABORT, 'refused'); END",
                 key);
        assert_int_equal(sqlite3_exec(wdb, sql, NULL, NULL, NULL), SQLITE_OK);
    }
    live.key = "b-after";
    assert_int_equal(cq_store_begin(s), CQ_OK);
    assert_int_equal(cq_store_cmdlog_put(s, &live), CQ_OK);
    assert_int_equal(cq_store_savepoint(s), CQ_OK);
    assert_int_not_equal(cq_store_cmdlog_prune(s, now, CHUNK, &deleted), CQ_OK);
    assert_int_equal(deleted, 0);
    assert_non_null(strstr(cq_store_errmsg(s), "refused"));
    assert_int_equal(cq_store_cmdlog_put(s, &live), CQ_EIO);
    assert_int_equal(cq_store_rollback_savepoint(s), CQ_OK);
    assert_int_equal(cq_store_commit(s), CQ_OK);
    assert_int_equal(cq_store_cmdlog_get(s, "b-after", now, &out), CQ_OK);
    assert_int_equal(committed_expired(f, now), EXPIRED - total);
    if (use_pg) {
        poke(f, NULL, "DROP TRIGGER refuse ON command_log");
    } else {
        assert_int_equal(
            sqlite3_exec(wdb, "DROP TRIGGER temp.refuse", NULL, NULL, NULL),
            SQLITE_OK);
        sqlite3_commit_hook(wdb, NULL, NULL);
    }

    deleted = CHUNK;
    while (deleted == CHUNK) {
        assert_int_equal(cq_store_cmdlog_prune(s, now, CHUNK, &deleted), CQ_OK);
        assert_true(deleted >= 0 && deleted <= CHUNK);
        total += deleted;
        calls++;
        assert_true(calls <= EXPIRED / CHUNK + 1);
    }
    assert_int_equal(total, EXPIRED);
    assert_int_equal(calls, EXPIRED / CHUNK + 1);
    for (int j = EXPIRED; j < EXPIRED + LIVE; j++) {
        snprintf(key, sizeof key, "p%d", j);
        assert_int_equal(cq_store_cmdlog_get(s, key, now, &out), CQ_OK);
    }
    assert_int_equal(cq_store_cmdlog_prune(s, now, CHUNK, &deleted), CQ_OK);
    assert_int_equal(deleted, 0);
}

/* ---- readers racing the writer ---- */

#define RACE_READERS 4
#define RACE_BATCHES 150
#define RACE_CMDS 20

typedef struct race {
    cq_store *s;
    atomic_int writer_done;
    atomic_llong final_head;
} race;

typedef struct reader_result {
    race *r;
    int64_t next; /* next position expected */
    int64_t last_head;
    long reads;
    char problem[512];
} reader_result;

typedef struct race_cb {
    reader_result *rr;
    int n;
} race_cb;

static int race_collect(void *arg, const cq_stored_event *ev)
{
    race_cb *c = arg;
    reader_result *rr = c->rr;
    if (ev->position != rr->next && rr->problem[0] == '\0')
        snprintf(rr->problem, sizeof rr->problem,
                 "expected position %lld, got %lld", (long long)rr->next,
                 (long long)ev->position);
    rr->next = ev->position + 1;
    c->n++;
    return 0;
}

static void *reader_main(void *arg)
{
    reader_result *rr = arg;
    char err[256];
    for (;;) {
        int done = atomic_load(&rr->r->writer_done);
        int64_t head = -1, from = rr->next;
        race_cb c = {rr, 0};
        int rc = cq_store_read_all(rr->r->s, from, 37, race_collect, &c, &head,
                                   err, sizeof err);
        rr->reads++;
        if (rc != CQ_OK) {
            snprintf(rr->problem, sizeof rr->problem, "read_all: %d %s", rc,
                     err);
            break;
        }
        if (head < rr->last_head && rr->problem[0] == '\0')
            snprintf(rr->problem, sizeof rr->problem,
                     "head went back from %lld to %lld",
                     (long long)rr->last_head, (long long)head);
        rr->last_head = head;
        /* A position a snapshot has seen stays there, for lookups too. */
        if (head > 0) {
            int64_t at = -1;
            rc = cq_store_recorded_at(rr->r->s, head, &at, err, sizeof err);
            if (rc != CQ_OK && rr->problem[0] == '\0')
                snprintf(rr->problem, sizeof rr->problem,
                         "recorded_at(%lld): %d %s", (long long)head, rc, err);
        }
        /* Everything up to the snapshot's head must be there. */
        int64_t avail = head >= from ? head - from + 1 : 0;
        int64_t want = avail < 37 ? avail : 37;
        if (c.n != want && rr->problem[0] == '\0')
            snprintf(rr->problem, sizeof rr->problem,
                     "from %lld head %lld: got %d events, want %lld",
                     (long long)from, (long long)head, c.n, (long long)want);
        if (rr->problem[0] != '\0')
            break;
        if (done && rr->next > atomic_load(&rr->r->final_head))
            break;
    }
    return NULL;
}

static void test_readers_see_gap_free_prefix(void **state)
{
    fixture *f = *state;
    cq_store *s = f->s; /* 2 read connections for 4 readers: some wait */
    race r = {.s = s};
    reader_result rr[RACE_READERS];
    pthread_t th[RACE_READERS];
    int64_t expect_head = 0, head;
    char stream[32];

    atomic_init(&r.writer_done, 0);
    atomic_init(&r.final_head, 0);
    for (int i = 0; i < RACE_READERS; i++) {
        memset(&rr[i], 0, sizeof rr[i]);
        rr[i].r = &r;
        rr[i].next = 1;
        assert_int_equal(pthread_create(&th[i], NULL, reader_main, &rr[i]), 0);
    }
    for (int b = 0; b < RACE_BATCHES; b++) {
        assert_int_equal(cq_store_begin(s), CQ_OK);
        for (int c = 0; c < RACE_CMDS; c++) {
            int n = 1 + (b + c) % 3;
            snprintf(stream, sizeof stream, "s%d", c % 7);
            assert_int_equal(cq_store_savepoint(s), CQ_OK);
            int64_t p = append1(s, stream, CQ_VERSION_ANY, (size_t)n);
            assert_int_equal(p, expect_head + 1);
            if ((b * RACE_CMDS + c) % 5 == 0) {
                assert_int_equal(cq_store_rollback_savepoint(s), CQ_OK);
            } else {
                assert_int_equal(cq_store_release(s), CQ_OK);
                expect_head += n;
            }
        }
        if (b % 10 == 9) {
            assert_int_equal(cq_store_rollback(s), CQ_OK);
            assert_int_equal(cq_store_head_position(s, &head), CQ_OK);
            expect_head = head;
        } else {
            assert_int_equal(cq_store_commit(s), CQ_OK);
        }
    }
    assert_int_equal(cq_store_head_position(s, &head), CQ_OK);
    assert_int_equal(head, expect_head);
    atomic_store(&r.final_head, head);
    atomic_store(&r.writer_done, 1);
    for (int i = 0; i < RACE_READERS; i++) {
        pthread_join(th[i], NULL);
        if (rr[i].problem[0] != '\0')
            fail_msg("reader %d: %s", i, rr[i].problem);
        assert_int_equal(rr[i].next, head + 1);
        assert_true(rr[i].reads > 0);
    }
}

int main(int argc, char **argv)
{
    use_pg = argc > 1 && strcmp(argv[1], "pg") == 0;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_open_create_reopen, setup_dir,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_refuse_newer_schema, setup_dir,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_refuse_garbage_file, setup_dir,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_refuse_foreign_database, setup_dir,
                                        teardown),
        cmocka_unit_test(test_bad_config),
        cmocka_unit_test_setup_teardown(test_append_expected_versions,
                                        setup_open, teardown),
        cmocka_unit_test_setup_teardown(test_multi_event_append_is_contiguous,
                                        setup_open, teardown),
        cmocka_unit_test_setup_teardown(
            test_savepoint_rollback_reuses_positions, setup_open, teardown),
        cmocka_unit_test_setup_teardown(test_full_rollback, setup_open,
                                        teardown),
        cmocka_unit_test_setup_teardown(
            test_failed_command_accepts_only_rollback, setup_open, teardown),
        cmocka_unit_test_setup_teardown(test_fold_stream, setup_open, teardown),
        cmocka_unit_test_setup_teardown(test_read_stream_and_all, setup_open,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_untrusted_rows, setup_open,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_lookups, setup_open, teardown),
        cmocka_unit_test_setup_teardown(test_read_only, setup_dir, teardown),
        cmocka_unit_test_setup_teardown(test_cmdlog, setup_open, teardown),
        cmocka_unit_test_setup_teardown(test_cmdlog_put_failure_fails_batch,
                                        setup_open, teardown),
        cmocka_unit_test_setup_teardown(test_cmdlog_prune_step, setup_open,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_readers_see_gap_free_prefix,
                                        setup_open, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
