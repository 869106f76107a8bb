/*
 * declared_bind.c -- the value a handler statement's `:name` takes from
 * one event (and, in an @each block, from the current array element):
 * the scalars of the envelope, or a path into data, metadata or item.
 * Executors (exec.c) bind what this gives them, so the rules for what a
 * parameter means live here only.
 *
 * Threads: no state; reads the event and item it is given.
 */
#include "projection/declared_int.h"

#include <stdlib.h>

#include "cqrs/cqrs.h"

static void value_text(cq_decl_value *out, const char *s, size_t len)
{
    out->type = CQ_VALUE_TEXT;
    out->text = s;
    out->len = len;
}

static int value_json(const json_t *v, cq_decl_value *out)
{
    switch (json_typeof(v)) {
    case JSON_NULL: return CQ_OK;
    case JSON_TRUE:
    case JSON_FALSE:
        out->type = CQ_VALUE_INT;
        out->i = json_is_true(v);
        return CQ_OK;
    case JSON_INTEGER:
        out->type = CQ_VALUE_INT;
        out->i = json_integer_value(v);
        return CQ_OK;
    case JSON_REAL:
        out->type = CQ_VALUE_REAL;
        out->r = json_real_value(v);
        return CQ_OK;
    case JSON_STRING:
        value_text(out, json_string_value(v), json_string_length(v));
        return CQ_OK;
    default: /* object, array */
        out->owned = json_dumps(v, JSON_COMPACT);
        if (out->owned == NULL)
            return CQ_ENOMEM;
        out->type = CQ_VALUE_JSON;
        out->text = out->owned;
        out->len = strlen(out->owned);
        return CQ_OK;
    }
}

/* See declared.h. */
int cq_declared_bind_value(const char *param, const cq_decl_event *ev,
                           const json_t *element, cq_decl_value *out)
{
    size_t n = strlen(param), root = decl_path_root(param, n);
    const json_t *doc;
    int rc;

    memset(out, 0, sizeof *out);
    if (root == n) {
        const char *s = NULL;
        if (same("stream_id", param, n))
            s = ev->stream_id;
        else if (same("type", param, n))
            s = ev->type;
        else if (same("time", param, n))
            s = ev->time;
        else if (same("day", param, n))
            s = ev->day;
        if (s != NULL) {
            value_text(out, s, strlen(s));
            return CQ_OK;
        }
        if (same("version", param, n) || same("position", param, n)) {
            out->type = CQ_VALUE_INT;
            out->i = param[0] == 'v' ? ev->version : ev->position;
            return CQ_OK;
        }
    }
    if (ev->data == NULL && ev->lazy != NULL && root == 4 &&
        same("data", param, root)) {
        /* a top-level member of data not decoded yet: straight from the
         * scan when it is a scalar (the value jansson would give) */
        size_t pos = root;
        step st;
        if (decl_path_step(param, n, &pos, &st) == 1 && st.key != NULL &&
            pos == n) {
            const cq_scan_member *m =
                cq_scan_find(&ev->lazy->scan, st.key, st.keylen);
            if (m == NULL || m->kind == CQ_SCAN_NULL)
                return CQ_OK; /* missing or null: SQL NULL */
            if (m->kind == CQ_SCAN_INT) {
                out->type = CQ_VALUE_INT;
                out->i = m->i;
                return CQ_OK;
            }
            if (m->kind == CQ_SCAN_STRING) {
                value_text(out, m->str, m->len);
                return CQ_OK;
            }
            /* an object or array: as JSON text, from the document */
        }
    }
    rc = cq_declared_path_json(param, ev, element, &doc);
    if (rc != CQ_OK)
        return rc;
    return doc != NULL ? value_json(doc, out) : CQ_OK;
}

/* See declared.h. */
void cq_declared_value_clear(cq_decl_value *v)
{
    if (v == NULL)
        return;
    free(v->owned);
    memset(v, 0, sizeof *v);
}
