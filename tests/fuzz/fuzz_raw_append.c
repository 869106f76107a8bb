/*
 * fuzz_raw_append.c -- fuzz target for the body of a raw append
 * (POST /streams/{id}: expected_version and 1-100 events of type, data and
 * metadata), through the real server (fuzz_server.h): JSON parsing with
 * the server's flags, the body's checks, the domain's ownership rules,
 * the writer's append with its metadata, and reading the event back.
 *
 * Input: the body, sent as it is (application/json) to /streams/fuzz-raw.
 *
 * It asserts the contract of docs/api.md for this route: the answer is
 * 201 with the stream, version and position of the last event, which
 * GET /streams/fuzz-raw then returns at that version and position; or a
 * problem whose type fits its status (400 malformed-json or
 * validation-failed, 412 wrong-expected-version, 413 body-too-large,
 * 422 event-type-owned-by-domain). Sanitizers check the rest.
 *
 * Built as the other targets are (tests/CMakeLists.txt): replayed over
 * tests/fuzz/corpus/raw_append by ctest, or linked with libFuzzer.
 */
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_server.h"

#define STREAM "fuzz-raw"

static int type_is(const fz_answer *a, const char *slug)
{
    json_t *doc = json_loadb(a->body, a->len, 0, NULL);
    const char *t = json_string_value(json_object_get(doc, "type"));
    int ok = t != NULL && strncmp(t, "urn:cqrsd:problem:", 18) == 0 &&
             strcmp(t + 18, slug) == 0;
    json_decref(doc);
    return ok;
}

/* The 201's event, read back. */
static void check_written(const char *req, size_t n, const fz_answer *a)
{
    json_t *doc = json_loadb(a->body, a->len, 0, NULL), *got, *ev;
    json_int_t version = json_integer_value(json_object_get(doc, "version"));
    json_int_t position = json_integer_value(json_object_get(doc, "position"));
    char get[256];
    int m;
    fz_answer b;

    if (!json_is_object(doc) ||
        !json_is_string(json_object_get(doc, "stream_id")) ||
        strcmp(json_string_value(json_object_get(doc, "stream_id")), STREAM) !=
            0 ||
        version < 1 || position < 1)
        fz_fail("a 201 without its stream, version and position", req, n, a);
    json_decref(doc);
    m = snprintf(get, sizeof get,
                 "GET /streams/" STREAM "?from_version=%lld&limit=1 "
                 "HTTP/1.1\r\nHost: fuzz\r\nConnection: close\r\n\r\n",
                 (long long)version);
    fz_exchange(get, (size_t)m, 20000, &b);
    got = json_loadb(b.body ? b.body : "", b.len, 0, NULL);
    ev = json_array_get(json_object_get(got, "events"), 0);
    if (b.status != 200 ||
        json_integer_value(json_object_get(ev, "version")) != version ||
        json_integer_value(json_object_get(ev, "position")) != position)
        fz_fail("the appended event is not where the 201 said", get, (size_t)m,
                &b);
    json_decref(got);
    fz_answer_free(&b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *req;
    size_t n;
    fz_answer a;
    int ok;

    if (size > 2 * 1024 * 1024)
        return 0;
    req = malloc(size + 256);
    if (req == NULL)
        return 0;
    n = (size_t)snprintf(req, 256,
                         "POST /streams/" STREAM " HTTP/1.1\r\nHost: fuzz\r\n"
                         "Content-Type: application/json\r\n"
                         "Content-Length: %zu\r\nConnection: close\r\n\r\n",
                         size);
    memcpy(req + n, data, size);
    n += size;
    fz_exchange(req, n, 20000, &a);
    fz_check_problem(req, n, &a);
    switch (a.status) {
    case 201:
        check_written(req, n, &a);
        ok = 1;
        break;
    case 400:
        ok = type_is(&a, "malformed-json") || type_is(&a, "validation-failed");
        break;
    case 412: ok = type_is(&a, "wrong-expected-version"); break;
    case 413: ok = type_is(&a, "body-too-large"); break;
    case 422: ok = type_is(&a, "event-type-owned-by-domain"); break;
    default: ok = 0;
    }
    if (!ok)
        fz_fail("an answer a raw append cannot have", req, n, &a);
    fz_answer_free(&a);
    free(req);
    return 0;
}
