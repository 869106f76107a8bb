/*
 * fuzz_declared.c -- fuzz target for the parser of declared projections
 * (src/projection/declared_*.c): bytes of a `.sql` file -> cq_declared_parse
 * -> for a file that parses, every statement's text and parameters are
 * read, every stream template is expanded, every handler parameter is
 * bound against a sample event and every @each path followed in it (so the
 * path walker meets whatever paths the fuzzer invents).
 *
 * Built two ways (tests/CMakeLists.txt):
 *   - always, with replay.c's main(), which replays every file of the
 *     corpus directories given on the command line (ctest runs it over
 *     tests/fuzz/corpus/declared, under ASan+UBSan in make test);
 *   - with clang and -DCQ_FUZZ=ON, linked with libFuzzer (-fsanitize=fuzzer)
 *     to explore: ./fuzz_declared tests/fuzz/corpus/declared
 * Beyond the sanitizers it checks the parser's own promises with abort():
 * an error message is "LINE: ..." in valid UTF-8, a success has none.
 * The same bytes also go through the shadow-table renamer (rename.h),
 * which must give the text back unchanged (but for the case of the names)
 * when every name maps to itself.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "base/base.h"
#include "cqrs/cqrs.h"
#include "projection/declared.h"
#include "projection/rename.h"

static json_t *sample_data;

static cq_decl_event sample_event(void)
{
    static const cq_decl_event ev_template = {
        "order-o-1",  3,    42,  "OrderPlaced", "2026-11-23T14:18:26.123Z",
        "2026-11-23", NULL, NULL, NULL};
    cq_decl_event ev = ev_template;

    ev.data = sample_data;
    ev.metadata = sample_data;
    return ev;
}

static void touch_stmts(const cq_decl_stmt *st, size_t n, const json_t *item)
{
    cq_decl_event ev = sample_event();

    for (size_t i = 0; i < n; i++) {
        if (strlen(st[i].sqlite_sql) == 0 || strlen(st[i].pg_sql) == 0)
            abort();
        for (size_t k = 0; k < st[i].nparams; k++) {
            cq_decl_value v;
            if (cq_declared_bind_value(st[i].params[k], &ev, item, &v) == CQ_OK)
                cq_declared_value_clear(&v);
        }
    }
}

static void touch(const cq_declared *d)
{
    json_t *items = json_object_get(sample_data, "items");
    char buf[CQ_DECL_MAX_STREAM + 1];
    cq_decl_event ev = sample_event();

    touch_stmts(d->ddl, d->nddl, NULL);
    for (size_t i = 0; i < d->nhandlers; i++) {
        const json_t *arr;
        /* The executor follows @each paths with the same walker; the
         * parser accepts only paths it can follow. */
        if (d->handlers[i].each != NULL &&
            cq_declared_path_json(d->handlers[i].each, &ev, NULL, &arr) !=
                CQ_OK)
            abort();
        touch_stmts(d->handlers[i].stmts, d->handlers[i].nstmts,
                    d->handlers[i].each != NULL ? json_array_get(items, 0)
                                                : NULL);
    }
    for (size_t i = 0; i < d->nqueries; i++) {
        const cq_decl_query *q = &d->queries[i];
        const char *values[64];
        size_t np = q->nparams < 64 ? q->nparams : 64;

        if (cq_declared_find_query(d, q->name) != q)
            abort();
        for (size_t k = 0; k < np; k++)
            values[k] = q->params[k].def != NULL ? q->params[k].def : "x-1";
        if (q->stream != NULL && np == q->nparams)
            cq_declared_stream(q, values, buf, sizeof buf);
        touch_stmts(q->stmts, q->nstmts, NULL);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    cq_declared *d = NULL;
    char err[256];
    int rc;

    if (sample_data == NULL)
        sample_data = json_loads(
            "{\"order_id\":\"o-1\",\"n\":1,\"r\":1.5,\"t\":true,\"z\":null,"
            "\"items\":[{\"sku\":\"A\",\"quantity\":2},3,\"s\"],"
            "\"o\":{\"a\":[[1,2],{\"b\":\"c\"}]}}",
            0, NULL);
    {
        static const cq_rename same[] = {{"order_summaries", "order_summaries"},
                                         {"t", "t"}};
        static const cq_rename other[] = {{"order_summaries", "o__cq_shadow"},
                                          {"t", "t__cq1"}};
        char *text = malloc(size + 1), *a, *b;
        if (text == NULL)
            return 0;
        memcpy(text, data, size);
        text[size] = '\0';
        a = cq_sql_rename(text, same, 2);
        b = cq_sql_rename(text, other, 2);
        if (a == NULL || b == NULL || strcasecmp(a, text) != 0)
            abort();
        free(a);
        free(b);
        free(text);
    }
    rc = cq_declared_parse((const char *)data, size, &d, err, sizeof err);
    if (rc == CQ_OK) {
        if (d == NULL || err[0] != '\0')
            abort();
        touch(d);
        cq_declared_free(d);
    } else {
        if (d != NULL || !cq_utf8_valid(err, strlen(err)))
            abort();
        if (rc == CQ_EINVAL && (err[0] < '0' || err[0] > '9'))
            abort();
    }
    return 0;
}
