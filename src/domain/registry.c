/*
 * registry.c -- what a domain declares, looked up by name: its commands,
 * the stream categories and event types it owns, and its upcasters (see
 * cq_domain in include/cqrs/decider.h and src/domain/README.md).
 *
 * A cq_domain is a constant table the embedder defines; these lookups only
 * read it, so every function here is thread-safe.
 */
#include <string.h>

#include "domain/domain.h"

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

/* The name of the one domain (not a set) d if it owns stream_id's
 * category. */
static const char *owns_stream(const cq_domain *d, const char *stream_id)
{
    size_t len = strcspn(stream_id, "-");

    if (d->categories == NULL)
        return NULL;
    for (const char *const *c = d->categories; *c != NULL; c++)
        if (strlen(*c) == len && strncmp(*c, stream_id, len) == 0)
            return d->name;
    return NULL;
}

static const char *owns_type(const cq_domain *d, const char *type)
{
    if (d->event_types == NULL)
        return NULL;
    for (const char *const *t = d->event_types; *t != NULL; t++)
        if (strcmp(*t, type) == 0)
            return d->name;
    return NULL;
}

/* See decider.h. A set (set.c) answers with the name of its part that
 * owns the category. */
const char *cq_domain_stream_owner(const cq_domain *domain,
                                   const char *stream_id)
{
    const cq_domain *part;
    const char *owner = NULL;

    if (stream_id == NULL)
        return NULL;
    for (size_t i = 0; owner == NULL && (part = cq_domain_part(domain, i)); i++)
        owner = owns_stream(part, stream_id);
    return owner;
}

/* See decider.h; a set as for cq_domain_stream_owner. */
const char *cq_domain_type_owner(const cq_domain *domain, const char *type)
{
    const cq_domain *part;
    const char *owner = NULL;

    if (type == NULL)
        return NULL;
    for (size_t i = 0; owner == NULL && (part = cq_domain_part(domain, i)); i++)
        owner = owns_type(part, type);
    return owner;
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
