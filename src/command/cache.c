/*
 * cache.c -- the writer's aggregate-state cache (see cache.h).
 */
#include "command/cache.h"

#include <stdlib.h>
#include <string.h>

typedef struct entry {
    char *stream_id; /* NULL: empty slot */
    const cq_aggregate *agg;
    void *state;
    int64_t version;
    int64_t position;
    int dirty;
} entry;

struct cq_cache {
    entry *slots;
    size_t mask;
    size_t *dirty; /* indexes of dirty slots */
    size_t ndirty, capdirty;
};

static uint64_t hash_str(const char *s)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 1099511628211ull;
    }
    return h;
}

static void entry_clear(entry *e)
{
    if (e->stream_id != NULL) {
        e->agg->free(e->state);
        free(e->stream_id);
    }
    memset(e, 0, sizeof *e);
}

cq_cache *cq_cache_new(size_t slots)
{
    cq_cache *c;
    size_t n = 1;

    if (slots == 0)
        slots = 1024;
    while (n < slots)
        n <<= 1;
    c = calloc(1, sizeof *c);
    if (c == NULL)
        return NULL;
    c->slots = calloc(n, sizeof *c->slots);
    if (c->slots == NULL) {
        free(c);
        return NULL;
    }
    c->mask = n - 1;
    return c;
}

void cq_cache_free(cq_cache *c)
{
    if (c == NULL)
        return;
    for (size_t i = 0; i <= c->mask; i++)
        entry_clear(&c->slots[i]);
    free(c->slots);
    free(c->dirty);
    free(c);
}

const void *cq_cache_get(cq_cache *c, const cq_aggregate *agg,
                         const char *stream_id, int64_t *version,
                         int64_t *position)
{
    entry *e = &c->slots[hash_str(stream_id) & c->mask];

    if (e->stream_id == NULL || e->agg != agg ||
        strcmp(e->stream_id, stream_id) != 0)
        return NULL;
    *version = e->version;
    *position = e->position;
    return e->state;
}

int cq_cache_put(cq_cache *c, const cq_aggregate *agg, const char *stream_id,
                 void *state, int64_t version, int64_t position)
{
    size_t i = hash_str(stream_id) & c->mask;
    entry *e = &c->slots[i];
    char *id;

    if (c->ndirty == c->capdirty) {
        size_t cap = c->capdirty ? c->capdirty * 2 : 64;
        size_t *d = realloc(c->dirty, cap * sizeof *d);
        if (d == NULL)
            goto nomem;
        c->dirty = d;
        c->capdirty = cap;
    }
    if (e->stream_id != NULL && e->agg == agg &&
        strcmp(e->stream_id, stream_id) == 0) {
        agg->free(e->state); /* same stream: keep the id */
    } else {
        id = strdup(stream_id);
        if (id == NULL)
            goto nomem;
        entry_clear(e);
        e->stream_id = id;
        e->agg = agg;
    }
    e->state = state;
    e->version = version;
    e->position = position;
    if (!e->dirty) {
        e->dirty = 1;
        c->dirty[c->ndirty++] = i;
    }
    return CQ_OK;
nomem:
    agg->free(state);
    return CQ_ENOMEM;
}

void cq_cache_drop(cq_cache *c, const cq_aggregate *agg, const char *stream_id)
{
    entry *e = &c->slots[hash_str(stream_id) & c->mask];

    /* a dirty entry's index stays in c->dirty: commit and drop_dirty
     * look at the slot's own flag, which entry_clear resets */
    if (e->stream_id != NULL && e->agg == agg &&
        strcmp(e->stream_id, stream_id) == 0)
        entry_clear(e);
}

void cq_cache_commit(cq_cache *c)
{
    for (size_t i = 0; i < c->ndirty; i++)
        c->slots[c->dirty[i]].dirty = 0;
    c->ndirty = 0;
}

void cq_cache_drop_dirty(cq_cache *c)
{
    for (size_t i = 0; i < c->ndirty; i++) {
        entry *e = &c->slots[c->dirty[i]];
        if (e->dirty)
            entry_clear(e);
    }
    c->ndirty = 0;
}
