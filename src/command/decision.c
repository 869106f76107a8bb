/*
 * decision.c -- what a decider produced for one command (events to append,
 * or a refusal), and the lookup of a command definition by type name.
 *
 * decide() writes into a cq_decision through the two public calls
 * cq_decision_emit() and cq_decision_refuse(); the writer reads it back with
 * the accessors in command.h and reuses it for the next command with
 * cq_decision_reset(), so the event array is allocated once per writer.
 *
 * Threads: a cq_decision belongs to one thread at a time (the writer).
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "command/command.h"

struct cq_decision {
    cq_decided_event *events; /* events[0..count) are set */
    size_t count, cap;
    int refused;   /* cq_decision_refuse() was called */
    char *refusal; /* its message; NULL if out of memory */
};

/* A new, empty decision; NULL on out of memory. Free with
 * cq_decision_free(). */
cq_decision *cq_decision_new(void)
{
    return calloc(1, sizeof(cq_decision));
}

/* Forget emitted events and the refusal; keeps the event array for reuse. */
void cq_decision_reset(cq_decision *d)
{
    if (d == NULL)
        return;
    for (size_t i = 0; i < d->count; i++) {
        free((char *)d->events[i].type);
        json_decref(d->events[i].data);
    }
    d->count = 0;
    free(d->refusal);
    d->refusal = NULL;
    d->refused = 0;
}

/* Free `d` and everything it holds; accepts NULL. */
void cq_decision_free(cq_decision *d)
{
    if (d == NULL)
        return;
    cq_decision_reset(d);
    free(d->events);
    free(d);
}

/* See decider.h. */
int cq_decision_emit(cq_decision *d, const char *type, int schema_version,
                     json_t *data)
{
    char *t = NULL;
    int rc;

    if (d == NULL || type == NULL || type[0] == '\0' || !json_is_object(data)) {
        rc = CQ_EINVAL;
        goto fail;
    }
    if (d->count == d->cap) {
        size_t cap = d->cap ? d->cap * 2 : 4;
        cq_decided_event *ev = realloc(d->events, cap * sizeof *ev);
        if (ev == NULL) {
            rc = CQ_ENOMEM;
            goto fail;
        }
        d->events = ev;
        d->cap = cap;
    }
    t = strdup(type);
    if (t == NULL) {
        rc = CQ_ENOMEM;
        goto fail;
    }
    d->events[d->count++] = (cq_decided_event){t, schema_version, data};
    return CQ_OK;
fail:
    json_decref(data); /* stolen even on failure */
    return rc;
}

/* See decider.h. Out of memory still records the refusal, with a generic
 * message (see cq_decision_refusal). */
int cq_decision_refuse(cq_decision *d, const char *fmt, ...)
{
    va_list ap;
    char *msg = NULL;

    if (d == NULL)
        return CQ_EREFUSED;
    va_start(ap, fmt);
    if (vasprintf(&msg, fmt, ap) < 0)
        msg = NULL;
    va_end(ap);
    free(d->refusal);
    d->refusal = msg;
    d->refused = 1;
    return CQ_EREFUSED;
}

/* Number of events emitted since creation or the last reset. */
size_t cq_decision_count(const cq_decision *d)
{
    return d != NULL ? d->count : 0;
}

/* The i-th emitted event, or NULL if i is out of range. Borrowed; valid
 * until cq_decision_reset() or cq_decision_free(). */
const cq_decided_event *cq_decision_event(const cq_decision *d, size_t i)
{
    if (d == NULL || i >= d->count)
        return NULL;
    return &d->events[i];
}

/* The refusal message, or NULL if decide() did not refuse. Borrowed;
 * valid until reset or free. */
const char *cq_decision_refusal(const cq_decision *d)
{
    if (d == NULL || !d->refused)
        return NULL;
    return d->refusal != NULL ? d->refusal : "the command was refused";
}

/* See decider.h. NULL if `domain` or `type` is NULL or no command of
 * `domain` has that type (compared exactly, case-sensitive). */
const cq_command_def *cq_domain_command(const cq_domain *domain,
                                        const char *type)
{
    if (domain == NULL || domain->commands == NULL || type == NULL)
        return NULL;
    for (const cq_command_def *const *c = domain->commands; *c != NULL; c++)
        if (strcmp((*c)->type, type) == 0)
            return *c;
    return NULL;
}

/* See decider.h. */
const char *cq_domain_stream_owner(const cq_domain *domain,
                                   const char *stream_id)
{
    size_t len;

    if (domain == NULL || domain->categories == NULL || stream_id == NULL)
        return NULL;
    len = strcspn(stream_id, "-");
    for (const char *const *c = domain->categories; *c != NULL; c++)
        if (strlen(*c) == len && strncmp(*c, stream_id, len) == 0)
            return domain->name;
    return NULL;
}

/* See decider.h. */
const char *cq_domain_type_owner(const cq_domain *domain, const char *type)
{
    if (domain == NULL || domain->event_types == NULL || type == NULL)
        return NULL;
    for (const char *const *t = domain->event_types; *t != NULL; t++)
        if (strcmp(*t, type) == 0)
            return domain->name;
    return NULL;
}

/* See decider.h. At most one upcaster per (type, from) is used: the first
 * listed. The loop ends because each step raises the version. */
const cq_upcaster *cq_domain_upcaster(const cq_domain *domain, const char *type,
                                      int schema_version)
{
    if (domain == NULL || domain->upcasters == NULL || type == NULL)
        return NULL;
    for (const cq_upcaster *u = domain->upcasters; u->type != NULL; u++)
        if (u->from == schema_version && strcmp(u->type, type) == 0)
            return u;
    return NULL;
}

int cq_domain_upcast(const cq_domain *domain, const char *type,
                     int *schema_version, json_t *data)
{
    for (;;) {
        const cq_upcaster *u =
            cq_domain_upcaster(domain, type, *schema_version);
        int rc;

        if (u == NULL)
            return CQ_OK;
        rc = u->upcast(data);
        if (rc != CQ_OK)
            return rc;
        *schema_version = u->from + 1;
    }
}
