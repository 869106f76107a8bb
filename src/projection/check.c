/*
 * check.c -- trying declared projection files without a data directory
 * (check.h), and the statement check cq_engine_start shares with it.
 *
 * Each file gets its own in-memory database: its DDL runs there, then its
 * handlers and queries are prepared against those tables. Names are
 * compared across files: projections and queries exactly (they are API
 * names), tables and indexes without regard to case (one namespace in
 * SQL, and case-folded by both backends).
 *
 * Threads: a cq_proj_check belongs to the thread that made it;
 * cq_eng_check_statements to the thread that owns x.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "projection/check.h"
#include "projection/engine_int.h"

typedef struct name_entry {
    const char *what; /* "projection", "query", "table", "index" */
    char *name;
    size_t source; /* index into sources */
} name_entry;

struct cq_proj_check {
    name_entry *names;
    size_t nnames, cap;
    char **sources;
    size_t nsources;
};

int cq_eng_check_statements(const cq_declared *d, const char *source,
                            cq_exec *x, char *err, size_t errcap)
{
    char msg[384];

    for (size_t h = 0; h < d->nhandlers; h++)
        for (size_t k = 0; k < d->handlers[h].nstmts; k++)
            if (cq_exec_prepare(x, &d->handlers[h].stmts[k], msg, sizeof msg) !=
                CQ_OK) {
                snprintf(err, errcap, "%s:%d: @on %s: %s", source,
                         d->handlers[h].stmts[k].line,
                         d->handlers[h].event_type,
                         cq_rdb_errmsg(cq_exec_db(x)));
                return CQ_EINVAL;
            }
    for (size_t q = 0; q < d->nqueries; q++)
        for (size_t k = 0; k < d->queries[q].nstmts; k++) {
            const cq_decl_stmt *st = &d->queries[q].stmts[k];
            if (cq_exec_check(x, cq_exec_text(cq_exec_db(x), st), msg,
                              sizeof msg) != CQ_OK) {
                snprintf(err, errcap, "%s:%d: query %s: %s", source, st->line,
                         d->queries[q].name, msg);
                return CQ_EINVAL;
            }
        }
    return CQ_OK;
}

int cq_proj_check_new(cq_proj_check **out)
{
    *out = calloc(1, sizeof **out);
    return *out != NULL ? CQ_OK : CQ_ENOMEM;
}

void cq_proj_check_free(cq_proj_check *c)
{
    if (c == NULL)
        return;
    for (size_t i = 0; i < c->nnames; i++)
        free(c->names[i].name);
    for (size_t i = 0; i < c->nsources; i++)
        free(c->sources[i]);
    free(c->names);
    free(c->sources);
    free(c);
}

/* The entry of an earlier file with this name in what's namespace. */
static const name_entry *find(const cq_proj_check *c, const char *what,
                              const char *name)
{
    int sql = strcmp(what, "table") == 0 || strcmp(what, "index") == 0;

    for (size_t i = 0; i < c->nnames; i++) {
        const name_entry *e = &c->names[i];
        int e_sql =
            strcmp(e->what, "table") == 0 || strcmp(e->what, "index") == 0;
        if (sql ? e_sql && strcasecmp(e->name, name) == 0
                : strcmp(e->what, what) == 0 && strcmp(e->name, name) == 0)
            return e;
    }
    return NULL;
}

/* Refuse name if an earlier file has it, else remember it (for the file
 * being added, whose source is c->nsources). */
static int claim(cq_proj_check *c, const char *source, const char *what,
                 const char *name, char *err, size_t errcap)
{
    const name_entry *e = find(c, what, name);

    if (e != NULL) {
        snprintf(err, errcap, "%s: %s %s is also %s by %s", source, what, name,
                 strcmp(what, "table") == 0 || strcmp(what, "index") == 0
                     ? "created"
                     : "declared",
                 c->sources[e->source]);
        return CQ_EINVAL;
    }
    if (c->nnames == c->cap) {
        size_t cap = c->cap ? 2 * c->cap : 16;
        name_entry *v = realloc(c->names, cap * sizeof *v);
        if (v == NULL)
            goto nomem;
        c->names = v;
        c->cap = cap;
    }
    c->names[c->nnames].what = what;
    c->names[c->nnames].source = c->nsources;
    c->names[c->nnames].name = strdup(name);
    if (c->names[c->nnames].name == NULL)
        goto nomem;
    c->nnames++;
    return CQ_OK;
nomem:
    snprintf(err, errcap, "%s: out of memory", source);
    return CQ_ENOMEM;
}

/* d's DDL in a fresh in-memory database, then its statements prepared. */
static int try_sql(const cq_declared *d, const char *source, char *err,
                   size_t errcap)
{
    cq_rdb *mem = NULL;
    cq_exec *x = NULL;
    char msg[384];
    int rc;

    rc = cq_eng_open_db(":memory:", CQ_RDB_CREATE, &mem, msg, sizeof msg);
    if (rc != CQ_OK) {
        snprintf(err, errcap, "%s: %s", source, msg);
        return rc;
    }
    x = cq_exec_new(mem);
    if (x == NULL) {
        snprintf(err, errcap, "%s: out of memory", source);
        rc = CQ_ENOMEM;
        goto done;
    }
    for (size_t i = 0; i < d->nddl; i++) {
        rc = cq_exec_sql(x, d->ddl[i].sqlite_sql, msg, sizeof msg);
        if (rc != CQ_OK) {
            snprintf(err, errcap, "%s:%d: %s", source, d->ddl[i].line, msg);
            rc = rc == CQ_ENOMEM ? rc : CQ_EINVAL;
            goto done;
        }
    }
    rc = cq_eng_check_statements(d, source, x, err, errcap);
done:
    cq_exec_free(x);
    cq_rdb_close(mem);
    return rc;
}

int cq_proj_check_add(cq_proj_check *c, const char *source, const char *text,
                      size_t len, const char *code_name, char *err,
                      size_t errcap)
{
    cq_declared *d = NULL;
    size_t keep = c->nnames;
    char msg[512], **v;
    int rc;

    rc = cq_declared_parse(text, len, &d, msg, sizeof msg);
    if (rc != CQ_OK) {
        snprintf(err, errcap, "%s:%s", source, msg);
        return rc;
    }
    if (code_name != NULL &&
        (strcmp(d->name, code_name) != 0 || d->nhandlers > 0)) {
        snprintf(err, errcap,
                 "%s: the declared part of code projection %s must be "
                 "@projection %s with no @on blocks",
                 source, code_name, code_name);
        rc = CQ_EINVAL;
        goto done;
    }
    v = realloc(c->sources, (c->nsources + 1) * sizeof *v);
    if (v == NULL)
        goto nomem;
    c->sources = v;
    c->sources[c->nsources] = strdup(source);
    if (c->sources[c->nsources] == NULL)
        goto nomem;
    rc = claim(c, source, "projection", d->name, err, errcap);
    for (size_t q = 0; rc == CQ_OK && q < d->nqueries; q++)
        rc = claim(c, source, "query", d->queries[q].name, err, errcap);
    for (size_t i = 0; rc == CQ_OK && i < d->nddl; i++) {
        char name[256];
        int kind = cq_eng_created(d->ddl[i].sqlite_sql, name, sizeof name);
        if (kind != 0)
            rc = claim(c, source, kind == 1 ? "table" : "index", name, err,
                       errcap);
    }
    if (rc == CQ_OK)
        rc = try_sql(d, source, err, errcap);
    if (rc == CQ_OK) {
        c->nsources++;
        goto done;
    }
    free(c->sources[c->nsources]);
    goto forget;
nomem:
    snprintf(err, errcap, "%s: out of memory", source);
    rc = CQ_ENOMEM;
forget:
    while (c->nnames > keep)
        free(c->names[--c->nnames].name);
done:
    cq_declared_free(d);
    return rc;
}
