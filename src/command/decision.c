/*
 * decision.c -- what a decider produced for one command (events to append,
 * or a refusal). The lookup of a command definition by type name is the
 * domain registry's (src/domain/registry.c).
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
