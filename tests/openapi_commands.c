/*
 * openapi_commands.c -- print the JSON Schema of every command body of the
 * orders domain, made from its cq_field lists (the ones the server checks
 * bodies with), as one JSON object {"PlaceOrder": {...}, ...}.
 *
 * tests/blackbox/test_openapi.py compares it with the command schemas of
 * docs/openapi.yaml (components/schemas/<Type>), so the description cannot
 * drift from the domain: change a field and the test fails until the file
 * says the same. The mapping is the one src/command/schema.c enforces:
 * strings bound their length in characters (ID: [A-Za-z0-9_-], UPPER:
 * [A-Z], TEXT: no control characters), integers their value, arrays their
 * item count; unknown members are refused, and an optional member may be
 * null (null counts as absent).
 */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>

#include "orders/orders.h"

static json_t *object_schema(const cq_field *f);

static json_t *field_schema(const cq_field *f)
{
    json_t *s = NULL;

    switch (f->kind) {
    case CQ_FIELD_STRING:
        s = json_pack("{s:s,s:I,s:I}", "type", "string", "minLength",
                      (json_int_t)f->min, "maxLength", (json_int_t)f->max);
        json_object_set_new(
            s, "pattern",
            json_string(f->chars == CQ_CHARS_ID      ? "^[A-Za-z0-9_-]*$"
                        : f->chars == CQ_CHARS_UPPER ? "^[A-Z]*$"
                                                     : "^[^\\u0000-\\u001f\\u007f]*$"));
        break;
    case CQ_FIELD_INTEGER:
        s = json_pack("{s:s,s:I,s:I}", "type", "integer", "minimum",
                      (json_int_t)f->min, "maximum", (json_int_t)f->max);
        break;
    case CQ_FIELD_ARRAY:
        s = json_pack("{s:s,s:I,s:I,s:o}", "type", "array", "minItems",
                      (json_int_t)f->min, "maxItems", (json_int_t)f->max,
                      "items", object_schema(f->items));
        break;
    default:
        break;
    }
    if (s != NULL && f->optional) {
        json_t *t = json_pack("[O,s]", json_object_get(s, "type"), "null");
        json_object_set_new(s, "type", t);
    }
    return s;
}

static json_t *object_schema(const cq_field *f)
{
    json_t *props = json_object(), *req = json_array();

    for (; f->kind != CQ_FIELD_END; f++) {
        json_object_set_new(props, f->name, field_schema(f));
        if (!f->optional)
            json_array_append_new(req, json_string(f->name));
    }
    return json_pack("{s:s,s:b,s:o,s:o}", "type", "object",
                     "additionalProperties", 0, "required", req, "properties",
                     props);
}

int main(void)
{
    const cq_domain *d = orders_domain();
    json_t *out = json_object();
    char *text;

    for (const cq_command_def *const *c = d->commands; *c != NULL; c++)
        json_object_set_new(out, (*c)->type, object_schema((*c)->schema));
    text = json_dumps(out, JSON_INDENT(2) | JSON_SORT_KEYS);
    json_decref(out);
    if (text == NULL)
        return 1;
    puts(text);
    free(text);
    return 0;
}
