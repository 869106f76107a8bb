/*
 * fuzz_stored_event.c -- fuzz target for what is read back from the
 * event store: a row of `events` as a damaged or foreign file may hold it
 * (any bytes, NULs and invalid UTF-8 included, columns of the wrong
 * type, out-of-range numbers) is put into the running server's events.db
 * (fuzz_server.h) behind its back, then read through GET /streams/$all
 * and GET /streams/{id}: the store's checked row decoding
 * (store_sqlite_rows.c), the decoder of stored events with the orders
 * upcasters (domain/decode.c), and the event's JSON and time stamp in the
 * answer (http/streams.c). fuzz_event_decode covers the decoder alone.
 *
 * Input: byte 0 gives each text column a storage class (two bits each,
 * stream_id, type, data, metadata: 0 or 1 TEXT, 2 BLOB, 3 INTEGER of the
 * bytes' length); byte 1 the other columns (bits 0-2 schema_version: 1,
 * 2, 0, -1, 3, 2^31, the text '2', the real 2.0; bit 3 recorded_at as
 * text; bit 4 a recorded_at of -2^62; bit 5 version 2, a stream whose
 * first event is missing); the rest is the four texts separated by 0x1e.
 *
 * It asserts docs/api.md's promise that reading never fails because of
 * one event's content: a row whose columns have their types, no NUL and a
 * UTF-8 stream id and type is answered 200 at its position with its
 * stream id and type (its data and metadata, if not JSON objects, as null
 * with decode_error). Any other row may also be 500 corrupt-event or 503
 * store-unavailable, as problem+json. Every row is deleted again after
 * its input.
 *
 * Built as the other targets are (tests/CMakeLists.txt): replayed over
 * tests/fuzz/corpus/stored_event by ctest, or linked with libFuzzer.
 */
#include <jansson.h>
#include <sqlite3.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/base.h"
#include "fuzz_server.h"

#define POSITION 1

static sqlite3 *db;

static void die(const char *what)
{
    fprintf(stderr, "fuzz_stored_event: %s: %s\n", what,
            db ? sqlite3_errmsg(db) : "cannot open");
    abort();
}

static void exec(const char *sql)
{
    if (sqlite3_exec(db, sql, NULL, NULL, NULL) != SQLITE_OK)
        die(sql);
}

static void bind_column(sqlite3_stmt *st, int i, int kind, const char *p,
                        size_t n)
{
    int rc;

    if (kind == 2)
        rc = sqlite3_bind_blob(st, i, p, (int)n, SQLITE_TRANSIENT);
    else if (kind == 3)
        rc = sqlite3_bind_int64(st, i, (sqlite3_int64)n);
    else
        rc = sqlite3_bind_text(st, i, p, (int)n, SQLITE_TRANSIENT);
    if (rc != SQLITE_OK)
        die("bind");
}

static void bind_schema(sqlite3_stmt *st, int i, int which)
{
    static const sqlite3_int64 v[] = {1, 2, 0, -1, 3, 2147483648LL};

    if (which < 6)
        sqlite3_bind_int64(st, i, v[which]);
    else if (which == 6)
        sqlite3_bind_text(st, i, "2", 1, SQLITE_STATIC);
    else
        sqlite3_bind_double(st, i, 2.0);
}

static void get(const char *path, fz_answer *a, char *req, size_t cap,
                size_t *n)
{
    *n = (size_t)snprintf(req, cap,
                          "GET %s HTTP/1.1\r\nHost: fuzz\r\n"
                          "Connection: close\r\n\r\n",
                          path);
    fz_exchange(req, *n, 20000, a);
    fz_check_problem(req, *n, a);
}

static int is_slug(const fz_answer *a, const char *slug)
{
    json_t *doc = json_loadb(a->body, a->len, 0, NULL);
    const char *t = json_string_value(json_object_get(doc, "type"));
    int ok = t != NULL && strlen(t) > 18 && strcmp(t + 18, slug) == 0;
    json_decref(doc);
    return ok;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *field[4] = {"fz-s", "Note", "{}", "{}"};
    size_t len[4] = {4, 4, 2, 2}, n;
    const char *p, *end;
    int kinds[4], flags, well_formed = 1;
    sqlite3_stmt *st = NULL;
    char path[4096], req[4600];
    fz_answer a;

    if (size < 2 || size > 64 * 1024)
        return 0;
    if (db == NULL) {
        char file[600];
        snprintf(file, sizeof file, "%s/events.db", fz_server_dir());
        if (sqlite3_open_v2(file, &db, SQLITE_OPEN_READWRITE, NULL) !=
            SQLITE_OK)
            die("open");
        sqlite3_busy_timeout(db, 10000);
        exec("PRAGMA synchronous = OFF");
    }
    for (int i = 0; i < 4; i++)
        kinds[i] = (data[0] >> (2 * i)) & 3;
    flags = data[1];
    p = (const char *)data + 2;
    end = (const char *)data + size;
    for (int i = 0; i < 4 && p <= end; i++) {
        const char *sep = memchr(p, 0x1e, (size_t)(end - p));
        if (sep == NULL)
            sep = end;
        field[i] = p;
        len[i] = (size_t)(sep - p);
        p = sep + 1;
    }
    /* what SQLite stores: an INTEGER in a TEXT column becomes its digits,
     * and the text '2', the real 2.0 and the text recorded_at become
     * integers in INTEGER columns (column affinity) */
    for (int i = 0; i < 4; i++) {
        if (kinds[i] == 3)
            continue;
        if (kinds[i] == 2 || memchr(field[i], '\0', len[i]) != NULL)
            well_formed = 0;
        if (i < 2 && !cq_utf8_valid(field[i], len[i]))
            well_formed = 0;
    }
    if ((flags & 7) == 5)
        well_formed = 0;

    exec("BEGIN IMMEDIATE");
    if (sqlite3_prepare_v2(db,
                           "INSERT INTO events (position, stream_id, version,"
                           " type, schema_version, data, metadata, "
                           "recorded_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, "
                           "?8)",
                           -1, &st, NULL) != SQLITE_OK)
        die("prepare");
    sqlite3_bind_int64(st, 1, POSITION);
    bind_column(st, 2, kinds[0], field[0], len[0]);
    sqlite3_bind_int64(st, 3, (flags & 0x20) ? 2 : 1);
    bind_column(st, 4, kinds[1], field[1], len[1]);
    bind_schema(st, 5, flags & 7);
    bind_column(st, 6, kinds[2], field[2], len[2]);
    bind_column(st, 7, kinds[3], field[3], len[3]);
    if (flags & 0x08)
        sqlite3_bind_text(st, 8, "1700000000000", -1, SQLITE_STATIC);
    else
        sqlite3_bind_int64(st, 8,
                           (flags & 0x10) ? -(1LL << 62) : 1700000000000LL);
    if (sqlite3_step(st) != SQLITE_DONE)
        die("insert");
    sqlite3_finalize(st);
    if (sqlite3_prepare_v2(db,
                           "INSERT INTO streams (stream_id, version, position)"
                           " VALUES (?1, ?2, ?3)",
                           -1, &st, NULL) != SQLITE_OK)
        die("prepare");
    bind_column(st, 1, kinds[0], field[0], len[0]);
    sqlite3_bind_int64(st, 2, (flags & 0x20) ? 2 : 1);
    sqlite3_bind_int64(st, 3, POSITION);
    if (sqlite3_step(st) != SQLITE_DONE)
        die("insert");
    sqlite3_finalize(st);
    exec("COMMIT");

    if (kinds[0] == 3) {
        static char digits[32];
        len[0] = (size_t)snprintf(digits, sizeof digits, "%zu", len[0]);
        field[0] = digits;
    }
    if (kinds[1] == 3) {
        static char tdigits[32];
        len[1] = (size_t)snprintf(tdigits, sizeof tdigits, "%zu", len[1]);
        field[1] = tdigits;
    }

    /* by position */
    get("/streams/$all?from_position=1&limit=1", &a, req, sizeof req, &n);
    if (well_formed) {
        json_t *doc = json_loadb(a.body ? a.body : "", a.len, 0, NULL);
        json_t *ev = json_array_get(json_object_get(doc, "events"), 0);
        const char *sid = json_string_value(json_object_get(ev, "stream_id"));
        const char *type = json_string_value(json_object_get(ev, "type"));
        if (a.status != 200 ||
            json_integer_value(json_object_get(ev, "position")) != POSITION ||
            sid == NULL || strlen(sid) != len[0] ||
            memcmp(sid, field[0], len[0]) != 0 || type == NULL ||
            strlen(type) != len[1] || memcmp(type, field[1], len[1]) != 0)
            fz_fail("a well-formed stored event is not read back", req, n, &a);
        json_decref(doc);
    } else if (a.status != 200 &&
               !(a.status == 500 && is_slug(&a, "corrupt-event")) &&
               !(a.status == 503 && is_slug(&a, "store-unavailable"))) {
        fz_fail("a stored event read back otherwise than docs/api.md says", req,
                n, &a);
    }
    fz_answer_free(&a);

    /* by stream, its id percent-encoded byte by byte */
    if (kinds[0] < 2 && len[0] < 1000) {
        size_t k = (size_t)snprintf(path, sizeof path, "/streams/");
        for (size_t i = 0; i < len[0]; i++)
            k += (size_t)snprintf(path + k, sizeof path - k, "%%%02X",
                                  (unsigned char)field[0][i]);
        get(path, &a, req, sizeof req, &n);
        if (a.status == 0 ||
            (a.status >= 500 && a.status != 503 &&
             !(a.status == 500 && is_slug(&a, "corrupt-event"))))
            fz_fail("GET /streams/{id} of a stored event", req, n, &a);
        fz_answer_free(&a);
    }

    exec("BEGIN IMMEDIATE; DELETE FROM events; DELETE FROM streams; COMMIT");
    return 0;
}
