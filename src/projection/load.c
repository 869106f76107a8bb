/*
 * load.c -- adding projections to an engine before it starts: declared
 * .sql files (a directory, or texts in memory) and projections whose
 * handler is C code; and the DDL sniffer that tells which table or index
 * a declared CREATE statement makes (used to drop and rename them).
 *
 * Threads: before cq_engine_start only, on the thread that owns the
 * engine; cq_eng_created is pure.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "base/base.h"
#include "projection/engine_int.h"

int cq_engine_add(cq_engine *e, cq_declared *d, char *err, size_t errcap)
{
    proj *p, **v;

    for (int i = 0; i < e->nprojs; i++) {
        if (strcmp(e->projs[i]->d->name, d->name) == 0) {
            snprintf(err, errcap, "projection %s is declared twice", d->name);
            goto fail;
        }
        for (size_t k = 0; k < d->nqueries; k++)
            if (cq_declared_find_query(e->projs[i]->d, d->queries[k].name) !=
                NULL) {
                snprintf(err, errcap,
                         "query %s is declared by projections "
                         "%s and %s",
                         d->queries[k].name, e->projs[i]->d->name, d->name);
                goto fail;
            }
    }
    p = calloc(1, sizeof *p);
    v = realloc(e->projs, (size_t)(e->nprojs + 1) * sizeof *v);
    if (p == NULL || v == NULL) {
        free(p);
        if (v != NULL)
            e->projs = v;
        snprintf(err, errcap, "out of memory");
        cq_declared_free(d);
        return CQ_ENOMEM;
    }
    p->d = d;
    p->serving = d;
    p->owned = 1; /* until a shared read store says otherwise (start) */
    p->index = e->nprojs;
    p->is_inline = d->mode == CQ_DECL_INLINE;
    for (size_t h = 0; h < d->nhandlers; h++)
        for (size_t s = 0; s < d->handlers[h].nstmts; s++)
            for (size_t k = 0; k < d->handlers[h].stmts[s].nparams; k++)
                if (strncmp(d->handlers[h].stmts[s].params[k], "metadata", 8) ==
                    0)
                    p->needs_metadata = 1;
    e->projs = v;
    e->projs[e->nprojs++] = p;
    return CQ_OK;
fail:
    cq_declared_free(d);
    return CQ_EINVAL;
}

int cq_engine_add_code(cq_engine *e, const char *text, size_t len,
                       const cq_projection_code *code, char *err, size_t errcap)
{
    cq_declared *d = NULL;
    char msg[512];
    int rc;

    rc = cq_declared_parse(text, len, &d, msg, sizeof msg);
    if (rc != CQ_OK) {
        snprintf(err, errcap, "%s:%s", code->name, msg);
        return rc;
    }
    if (strcmp(d->name, code->name) != 0 || d->nhandlers > 0) {
        snprintf(err, errcap,
                 "%s: the declared part must be @projection %s "
                 "with no @on blocks (events go to apply())",
                 code->name, code->name);
        cq_declared_free(d);
        return CQ_EINVAL;
    }
    rc = cq_engine_add(e, d, err, errcap);
    if (rc == CQ_OK) {
        proj *p = e->projs[e->nprojs - 1];
        p->code = *code;
        p->needs_metadata = 1;
        snprintf(p->source, sizeof p->source, "%s", code->name);
        p->text = strndup(text, len);
        if (p->text == NULL) {
            snprintf(err, errcap, "%s: out of memory", code->name);
            rc = CQ_ENOMEM;
        }
    }
    return rc;
}

int cq_engine_load_text(cq_engine *e, const char *name, const char *text,
                        size_t len, char *err, size_t errcap)
{
    cq_declared *d = NULL;
    char msg[512];
    int rc;

    rc = cq_declared_parse(text, len, &d, msg, sizeof msg);
    if (rc != CQ_OK) {
        snprintf(err, errcap, "%s:%s", name, msg);
        return rc;
    }
    rc = cq_engine_add(e, d, msg, sizeof msg);
    if (rc != CQ_OK)
        snprintf(err, errcap, "%s: %s", name, msg);
    else {
        proj *p = e->projs[e->nprojs - 1];
        snprintf(p->source, sizeof p->source, "%s", name);
        p->text = strndup(text, len);
        if (p->text == NULL) {
            snprintf(err, errcap, "%s: out of memory", name);
            rc = CQ_ENOMEM;
        }
    }
    return rc;
}

static int load_text_cb(void *arg, const char *name, const char *text,
                        size_t len, char *err, size_t errcap)
{
    return cq_engine_load_text(arg, name, text, len, err, errcap);
}

int cq_engine_load_dir(cq_engine *e, const char *dir, char *err, size_t errcap)
{
    return cq_declared_read_dir(dir, load_text_cb, e, err, errcap);
}

static const char *skip_blanks(const char *p)
{
    while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')
        p++;
    return p;
}

/* If p starts with the word w (any case, then a blank), the text after
 * it and its blanks; else NULL. */
static const char *word(const char *p, const char *w)
{
    size_t n = strlen(w);

    if (strncasecmp(p, w, n) != 0 ||
        !(p[n] == ' ' || p[n] == '\t' || p[n] == '\n' || p[n] == '\r'))
        return NULL;
    return skip_blanks(p + n);
}

int cq_eng_created(const char *sql, char *name, size_t cap)
{
    const char *p = word(skip_blanks(sql), "CREATE"), *q;
    int kind = 1;
    size_t n;

    if (p == NULL)
        return 0;
    if ((q = word(p, "UNIQUE")) != NULL)
        p = q;
    if ((q = word(p, "TABLE")) != NULL) {
        p = q;
    } else if ((q = word(p, "INDEX")) != NULL) {
        p = q;
        kind = 2;
    } else {
        return 0;
    }
    if ((q = word(p, "IF")) != NULL && (q = word(q, "NOT")) != NULL &&
        (q = word(q, "EXISTS")) != NULL)
        p = q;
    if (*p == '"')
        p++;
    for (n = 0; n + 1 < cap &&
                (p[n] == '_' || (p[n] >= 'a' && p[n] <= 'z') ||
                 (p[n] >= 'A' && p[n] <= 'Z') || (p[n] >= '0' && p[n] <= '9'));
         n++)
        name[n] = p[n];
    name[n] = '\0';
    return n > 0 ? kind : 0;
}
