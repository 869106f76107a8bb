/*
 * @NAME@.c -- the @NAME@ domain: a decider with one command and two
 * events, built as a cqrsd module (@NAME@.so).
 *
 *   Record@PASCAL@Entry {id, amount, note?}
 *     -> @PASCAL@Opened {id}                     the first entry of an id
 *     -> @PASCAL@EntryRecorded {id, amount, total, note?}
 *     refused when the total would pass @UPPER@_MAX_TOTAL
 *
 * The functions below are pure (no I/O, no clock, no globals): the engine
 * calls them on its threads, and test_@NAME@.c calls them with no database.
 * The read models are the .sql files in projections/ (loaded by the
 * server from beside @NAME@.so). Change the rules here, the tables there.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cqrs/module.h>

#include "@NAME@.h"

/* ---- state: folded from the stream's events ------------------------------ */

typedef struct state {
    int opened;
    json_int_t total, entries;
} state;

static void *initial(void)
{
    return calloc(1, sizeof(state));
}

static void *copy(const void *s)
{
    state *c = malloc(sizeof *c);

    if (c != NULL)
        *c = *(const state *)s;
    return c;
}

static void release(void *s)
{
    free(s);
}

/* Stored events are not trusted: a missing or wrong field is CQ_ECORRUPT,
 * never a crash. Unknown event types are ignored. */
static int evolve(void *sp, const cq_event *ev)
{
    state *s = sp;

    if (strcmp(ev->type, "@PASCAL@Opened") == 0) {
        if (s->opened)
            return CQ_ECORRUPT;
        s->opened = 1;
    } else if (strcmp(ev->type, "@PASCAL@EntryRecorded") == 0) {
        const json_t *amount = json_object_get(ev->data, "amount");
        const json_t *total = json_object_get(ev->data, "total");
        if (!s->opened || !json_is_integer(amount) || !json_is_integer(total) ||
            json_integer_value(total) !=
                s->total + json_integer_value(amount))
            return CQ_ECORRUPT;
        s->total = json_integer_value(total);
        s->entries++;
    }
    return CQ_OK;
}

static const cq_aggregate aggregate = {"@NAME@", initial, evolve, copy,
                                       release};

/* ---- the command ---------------------------------------------------------- */

static const cq_field record_fields[] = {
    {.name = "id", .kind = CQ_FIELD_STRING, .min = 1, .max = 64,
     .chars = CQ_CHARS_ID},
    {.name = "amount", .kind = CQ_FIELD_INTEGER, .min = 1, .max = 1000000},
    {.name = "note", .kind = CQ_FIELD_STRING, .optional = 1, .min = 0,
     .max = 200},
    {.kind = CQ_FIELD_END},
};

/* "@NAME@-{id}": the stream of one @NAME@. */
static int stream_id(const json_t *body, char *buf, size_t cap)
{
    const char *id = json_string_value(json_object_get(body, "id"));
    int n = id ? snprintf(buf, cap, "@NAME@-%s", id) : -1;

    return n > 0 && (size_t)n < cap ? CQ_OK : CQ_EINVAL;
}

static int decide(const void *sp, const json_t *body, cq_decision *d)
{
    const state *s = sp;
    const char *id = json_string_value(json_object_get(body, "id"));
    json_int_t amount = json_integer_value(json_object_get(body, "amount"));
    const json_t *note = json_object_get(body, "note");
    json_t *data;
    int rc;

    if (s->total + amount > @UPPER@_MAX_TOTAL)
        return cq_decision_refuse(d,
                                  "%s would reach %lld, above the limit of %d",
                                  id, (long long)(s->total + amount),
                                  @UPPER@_MAX_TOTAL);
    if (!s->opened) {
        rc = cq_decision_emit(d, "@PASCAL@Opened", 1,
                              json_pack("{s:s}", "id", id));
        if (rc != CQ_OK)
            return rc;
    }
    data = json_pack("{s:s, s:I, s:I}", "id", id, "amount", amount, "total",
                     s->total + amount);
    if (data != NULL && json_is_string(note))
        json_object_set(data, "note", (json_t *)note);
    return cq_decision_emit(d, "@PASCAL@EntryRecorded", 1, data);
}

static const cq_command_def record_entry = {
    .type = "Record@PASCAL@Entry",
    .aggregate = &aggregate,
    .schema = record_fields,
    .expect = CQ_EXPECT_ANY,
    .stream_id = stream_id,
    .decide = decide,
};

/* ---- the domain and the module ------------------------------------------- */

static const cq_command_def *const commands[] = {&record_entry, NULL};
static const char *const categories[] = {"@NAME@", NULL};
static const char *const event_types[] = {"@PASCAL@Opened",
                                          "@PASCAL@EntryRecorded", NULL};

static const cq_domain domain = {
    .name = "@NAME@",
    .commands = commands,
    .categories = categories,
    .event_types = event_types,
};

const cq_domain *@NAME@_domain(void)
{
    return &domain;
}

static const cq_module module = {
    .abi = CQ_ABI_INIT,
    .domain = &domain,
    .projections = "projections",
};

const cq_module *cq_module_init(void)
{
    return &module;
}
