/*
 * set.c -- several domains served as one. The writer, the engine, the
 * HTTP server and verify each take ONE cq_domain; when a server loads
 * several modules (`--domain A --domain B`), they get a set's view: a
 * cq_domain whose commands, upcasters, categories and event types are the
 * parts' lists one after the other. Names must not collide across parts,
 * so every look-up finds what one part alone would.
 *
 * Who owns a stream or an event type is answered with the owning part's
 * name (a refused raw append names the "bank" domain, not the set): the
 * view's name is the address of cq_domain_set_name, by which registry.c
 * recognises a set and asks its parts (cq_domain_part).
 *
 * Threads: built and freed on one thread; the view is immutable in
 * between and read by any number of threads.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "domain/domain.h"

struct cq_domain_set {
    cq_domain view; /* first member: a set is found from its view */
    const cq_domain **parts;
    char **sources; /* where each part came from, for messages */
    size_t n;
    const cq_command_def **commands; /* NULL-terminated */
    cq_upcaster *upcasters;          /* ended by type NULL */
    const char **categories;         /* NULL-terminated */
    const char **event_types;        /* NULL-terminated */
};

const char cq_domain_set_name[] = "(the loaded domains)";

static size_t count_names(const char *const *list)
{
    size_t n = 0;

    while (list != NULL && list[n] != NULL)
        n++;
    return n;
}

static size_t count_commands(const cq_command_def *const *list)
{
    size_t n = 0;

    while (list != NULL && list[n] != NULL)
        n++;
    return n;
}

static size_t count_upcasters(const cq_upcaster *list)
{
    size_t n = 0;

    while (list != NULL && list[n].type != NULL)
        n++;
    return n;
}

/* The i-th name of one of a domain's lists, NULL past its end. */
typedef const char *(*name_at)(const cq_domain *d, size_t i);

static const char *command_at(const cq_domain *d, size_t i)
{
    return d->commands != NULL && d->commands[i] != NULL ? d->commands[i]->type
                                                         : NULL;
}

static const char *category_at(const cq_domain *d, size_t i)
{
    return d->categories != NULL ? d->categories[i] : NULL;
}

static const char *event_type_at(const cq_domain *d, size_t i)
{
    return d->event_types != NULL ? d->event_types[i] : NULL;
}

static const char *upcast_type_at(const cq_domain *d, size_t i)
{
    return d->upcasters != NULL ? d->upcasters[i].type : NULL;
}

/* The first part before p whose list `at` has `name`, or -1. */
static long earlier_owner(const cq_domain *const *parts, size_t p,
                          const char *name, name_at at)
{
    for (size_t q = 0; q < p; q++) {
        const char *s;
        for (size_t i = 0; (s = at(parts[q], i)) != NULL; i++)
            if (strcmp(s, name) == 0)
                return (long)q;
    }
    return -1;
}

/* A name of part p that an earlier part also has: CQ_EINVAL, message. */
static int collide(const cq_domain *const *parts, const char *const *sources,
                   size_t p, name_at at, const char *what, const char *verb,
                   char *err, size_t errcap)
{
    const char *s;

    for (size_t i = 0; (s = at(parts[p], i)) != NULL; i++) {
        long q = earlier_owner(parts, p, s, at);
        if (q < 0)
            continue;
        snprintf(err, errcap,
                 "%s: %s %s is %s both by domain %s (%s) and "
                 "by domain %s",
                 sources[p], what, s, verb, parts[q]->name, sources[q],
                 parts[p]->name);
        return CQ_EINVAL;
    }
    return CQ_OK;
}

static int check_collisions(const cq_domain *const *parts,
                            const char *const *sources, size_t n, char *err,
                            size_t errcap)
{
    for (size_t p = 0; p < n; p++) {
        int rc = CQ_OK;
        for (size_t q = 0; q < p; q++)
            if (strcmp(parts[q]->name, parts[p]->name) == 0) {
                snprintf(err, errcap,
                         "%s: domain %s is loaded twice (also from %s)",
                         sources[p], parts[p]->name, sources[q]);
                return CQ_EINVAL;
            }
        rc = collide(parts, sources, p, command_at, "command type", "defined",
                     err, errcap);
        if (rc == CQ_OK)
            rc = collide(parts, sources, p, category_at, "stream category",
                         "owned", err, errcap);
        if (rc == CQ_OK)
            rc = collide(parts, sources, p, event_type_at, "event type",
                         "owned", err, errcap);
        if (rc == CQ_OK)
            rc = collide(parts, sources, p, upcast_type_at,
                         "event type (upcast)", "upcast", err, errcap);
        if (rc != CQ_OK)
            return rc;
    }
    return CQ_OK;
}

int cq_domain_set_new(const cq_domain *const *parts, const char *const *sources,
                      size_t n, cq_domain_set **out, char *err, size_t errcap)
{
    cq_domain_set *s;
    size_t nc = 0, nu = 0, ncat = 0, nev = 0;
    int rc;

    *out = NULL;
    rc = check_collisions(parts, sources, n, err, errcap);
    if (rc != CQ_OK)
        return rc;
    for (size_t p = 0; p < n; p++) {
        nc += count_commands(parts[p]->commands);
        nu += count_upcasters(parts[p]->upcasters);
        ncat += count_names(parts[p]->categories);
        nev += count_names(parts[p]->event_types);
    }
    s = calloc(1, sizeof *s);
    if (s == NULL)
        goto nomem;
    s->parts = calloc(n + 1, sizeof *s->parts);
    s->sources = calloc(n + 1, sizeof *s->sources);
    s->commands = calloc(nc + 1, sizeof *s->commands);
    s->upcasters = calloc(nu + 1, sizeof *s->upcasters);
    s->categories = calloc(ncat + 1, sizeof *s->categories);
    s->event_types = calloc(nev + 1, sizeof *s->event_types);
    if (s->parts == NULL || s->sources == NULL || s->commands == NULL ||
        s->upcasters == NULL || s->categories == NULL || s->event_types == NULL)
        goto nomem;
    nc = nu = ncat = nev = 0;
    for (size_t p = 0; p < n; p++) {
        const cq_domain *d = parts[p];
        s->parts[p] = d;
        s->sources[s->n++] = strdup(sources[p]);
        if (s->sources[p] == NULL)
            goto nomem;
        for (size_t i = 0; i < count_commands(d->commands); i++)
            s->commands[nc++] = d->commands[i];
        for (size_t i = 0; i < count_upcasters(d->upcasters); i++)
            s->upcasters[nu++] = d->upcasters[i];
        for (size_t i = 0; i < count_names(d->categories); i++)
            s->categories[ncat++] = d->categories[i];
        for (size_t i = 0; i < count_names(d->event_types); i++)
            s->event_types[nev++] = d->event_types[i];
    }
    s->view.name = cq_domain_set_name;
    s->view.commands = s->commands;
    s->view.upcasters = s->upcasters;
    s->view.categories = s->categories;
    s->view.event_types = s->event_types;
    *out = s;
    return CQ_OK;
nomem:
    cq_domain_set_free(s);
    snprintf(err, errcap, "out of memory");
    return CQ_ENOMEM;
}

const cq_domain *cq_domain_set_domain(const cq_domain_set *s)
{
    return &s->view;
}

const cq_domain *cq_domain_part(const cq_domain *d, size_t i)
{
    const cq_domain_set *s;

    if (d == NULL)
        return NULL;
    if (d->name != cq_domain_set_name)
        return i == 0 ? d : NULL;
    s = (const cq_domain_set *)d; /* the view is the set's first member */
    return i < s->n ? s->parts[i] : NULL;
}

void cq_domain_set_free(cq_domain_set *s)
{
    if (s == NULL)
        return;
    for (size_t i = 0; i < s->n; i++)
        free(s->sources[i]);
    free(s->sources);
    free(s->parts);
    free(s->commands);
    free(s->upcasters);
    free(s->categories);
    free(s->event_types);
    free(s);
}
