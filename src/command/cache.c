/*
 * cache.c -- the writer's aggregate-state cache (see cache.h): a chained
 * hash table of entries, each also on a least-recently-used list and,
 * while the batch that wrote it is open, on the dirty list.
 *
 * The buckets double as entries come (one per entry at most), so memory
 * follows what is held, not the bound. Eviction takes the least recently
 * used clean entry; dirty ones stay
 * until their batch ends (the cache may hold more than its bound during a
 * batch that wrote more streams than that; the commit trims it back).
 */
#include "command/cache.h"

#include <stdlib.h>
#include <string.h>

typedef struct entry {
    struct entry *chain;            /* next in its bucket */
    struct entry *newer, *older;    /* the LRU list */
    struct entry *next_dirty;       /* the dirty list, while dirty */
    const cq_aggregate *agg;
    void *state;
    int64_t version;
    int64_t position;
    uint64_t hash;
    int dirty;
    char stream_id[]; /* NUL-terminated */
} entry;

struct cq_cache {
    entry **buckets;
    size_t mask;            /* buckets - 1 */
    size_t n, max;          /* entries held; the bound */
    entry *newest, *oldest; /* the LRU list's ends */
    entry *dirty;           /* the dirty list */
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

cq_cache *cq_cache_new(size_t entries)
{
    cq_cache *c;
    size_t n = 64; /* doubled as entries come (grow): memory follows use */

    if (entries == 0)
        entries = 1024;
    c = calloc(1, sizeof *c);
    if (c == NULL)
        return NULL;
    c->buckets = calloc(n, sizeof *c->buckets);
    if (c->buckets == NULL) {
        free(c);
        return NULL;
    }
    c->mask = n - 1;
    c->max = entries;
    return c;
}

static entry **slot_of(cq_cache *c, const cq_aggregate *agg,
                       const char *stream_id, uint64_t h)
{
    entry **pp = &c->buckets[h & c->mask];

    for (; *pp != NULL; pp = &(*pp)->chain)
        if ((*pp)->hash == h && (*pp)->agg == agg &&
            strcmp((*pp)->stream_id, stream_id) == 0)
            break;
    return pp;
}

/* Twice the buckets once there are more entries than buckets, so chains
 * stay short; out of memory it keeps the ones it has (longer chains). */
static void grow(cq_cache *c)
{
    size_t n = (c->mask + 1) * 2;
    entry **b;

    if (c->n <= c->mask + 1 || n > ((size_t)1 << 30) ||
        (b = calloc(n, sizeof *b)) == NULL)
        return;
    for (size_t i = 0; i <= c->mask; i++)
        for (entry *e = c->buckets[i], *next; e != NULL; e = next) {
            next = e->chain;
            e->chain = b[e->hash & (n - 1)];
            b[e->hash & (n - 1)] = e;
        }
    free(c->buckets);
    c->buckets = b;
    c->mask = n - 1;
}

static void lru_unlink(cq_cache *c, entry *e)
{
    if (e->newer != NULL)
        e->newer->older = e->older;
    else
        c->newest = e->older;
    if (e->older != NULL)
        e->older->newer = e->newer;
    else
        c->oldest = e->newer;
    e->newer = e->older = NULL;
}

static void lru_push(cq_cache *c, entry *e)
{
    e->older = c->newest;
    e->newer = NULL;
    if (c->newest != NULL)
        c->newest->newer = e;
    c->newest = e;
    if (c->oldest == NULL)
        c->oldest = e;
}

static void dirty_unlink(cq_cache *c, entry *e)
{
    for (entry **pp = &c->dirty; *pp != NULL; pp = &(*pp)->next_dirty)
        if (*pp == e) {
            *pp = e->next_dirty;
            break;
        }
    e->dirty = 0;
    e->next_dirty = NULL;
}

/* Take e (found through *pp in its bucket) out of everything and free it
 * with its state. */
static void entry_remove(cq_cache *c, entry **pp)
{
    entry *e = *pp;

    *pp = e->chain;
    lru_unlink(c, e);
    if (e->dirty)
        dirty_unlink(c, e);
    e->agg->free(e->state);
    free(e);
    c->n--;
}

/* Evict least recently used clean entries until at most `keep` remain. */
static void trim(cq_cache *c, size_t keep)
{
    entry *e = c->oldest;

    while (c->n > keep && e != NULL) {
        entry *newer = e->newer;
        if (!e->dirty)
            entry_remove(c, slot_of(c, e->agg, e->stream_id, e->hash));
        e = newer;
    }
}

void cq_cache_free(cq_cache *c)
{
    if (c == NULL)
        return;
    for (entry *e = c->oldest, *next; e != NULL; e = next) {
        next = e->newer;
        e->agg->free(e->state);
        free(e);
    }
    free(c->buckets);
    free(c);
}

const void *cq_cache_get(cq_cache *c, const cq_aggregate *agg,
                         const char *stream_id, int64_t *version,
                         int64_t *position)
{
    entry *e = *slot_of(c, agg, stream_id, hash_str(stream_id));

    if (e == NULL)
        return NULL;
    if (c->newest != e) { /* used: the newest now */
        lru_unlink(c, e);
        lru_push(c, e);
    }
    *version = e->version;
    *position = e->position;
    return e->state;
}

int cq_cache_put(cq_cache *c, const cq_aggregate *agg, const char *stream_id,
                 void *state, int64_t version, int64_t position)
{
    uint64_t h = hash_str(stream_id);
    entry **pp = slot_of(c, agg, stream_id, h);
    entry *e = *pp;

    if (e != NULL) {
        agg->free(e->state); /* same stream: keep the entry */
        lru_unlink(c, e);
    } else {
        size_t len = strlen(stream_id);
        if (c->n >= c->max)
            trim(c, c->max - 1); /* may change the buckets' chains */
        e = malloc(sizeof *e + len + 1);
        if (e == NULL) {
            agg->free(state);
            return CQ_ENOMEM;
        }
        memcpy(e->stream_id, stream_id, len + 1);
        e->agg = agg;
        e->hash = h;
        e->dirty = 0;
        e->next_dirty = NULL;
        e->chain = c->buckets[h & c->mask];
        c->buckets[h & c->mask] = e;
        c->n++;
        grow(c);
    }
    lru_push(c, e);
    e->state = state;
    e->version = version;
    e->position = position;
    if (!e->dirty) {
        e->dirty = 1;
        e->next_dirty = c->dirty;
        c->dirty = e;
    }
    return CQ_OK;
}

void cq_cache_drop(cq_cache *c, const cq_aggregate *agg, const char *stream_id)
{
    entry **pp = slot_of(c, agg, stream_id, hash_str(stream_id));

    if (*pp != NULL)
        entry_remove(c, pp);
}

void cq_cache_commit(cq_cache *c)
{
    while (c->dirty != NULL) {
        entry *e = c->dirty;
        c->dirty = e->next_dirty;
        e->next_dirty = NULL;
        e->dirty = 0;
    }
    trim(c, c->max); /* a batch of many streams may have grown it */
}

void cq_cache_drop_dirty(cq_cache *c)
{
    while (c->dirty != NULL)
        entry_remove(c, slot_of(c, c->dirty->agg, c->dirty->stream_id,
                                c->dirty->hash));
}

size_t cq_cache_count(const cq_cache *c)
{
    return c->n;
}
