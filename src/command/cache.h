/*
 * cache.h -- bounded cache of aggregate states for the writer.
 *
 * At most `entries` states (`serve --cache-entries`): a newcomer evicts the
 * least recently used entry that no open batch wrote. Memory follows what
 * is held, not the bound: about 100 bytes of bookkeeping plus the stream
 * id and the state per entry, and up to two 8-byte buckets per entry at
 * the most held so far. Each entry remembers the stream version (and the
 * position of that version's event) its state was folded up to; the
 * writer trusts an entry only when that version is at most the stream's
 * version in the store, and then folds just the missing events. When an
 * append still finds the stream moved (another node appended between the
 * read and the append), the writer drops the entry (cq_cache_drop) and
 * decides once more from the store.
 *
 * Entries written during a batch are "dirty" until the batch commits; if
 * the commit fails the writer calls cq_cache_drop_dirty() so no state the
 * store does not have survives.
 *
 * Thread: owned by the writer thread; no locking.
 */
#ifndef CQ_CACHE_H
#define CQ_CACHE_H

#include <stddef.h>
#include <stdint.h>

#include "cqrs/decider.h"

typedef struct cq_cache cq_cache;

/* A cache of at most `entries` states (0 → 1024), owned by the caller.
 * While a batch is open the entries it wrote (dirty) are not evicted, so
 * a batch writing more streams than that holds them all until it ends;
 * cq_cache_commit trims the cache back to its bound. NULL on out of
 * memory. */
cq_cache *cq_cache_new(size_t entries);
/* Free c and every state in it (with its aggregate's free); accepts
 * NULL. */
void cq_cache_free(cq_cache *c);

/* The cached state for stream_id (borrowed for the call) of aggregate
 * `agg` (now the most recently used), with the stream version and position it was folded up to in
 * *version and *position; NULL when there is none (a miss, not an error).
 * The state is borrowed: valid until the next put/drop on this cache;
 * clone it before changing it. */
const void *cq_cache_get(cq_cache *c, const cq_aggregate *agg,
                         const char *stream_id, int64_t *version,
                         int64_t *position);

/* Store `state` (ownership taken over, freed with agg->free on eviction)
 * as stream_id's state at version/position, marked dirty. CQ_OK or
 * CQ_ENOMEM (then the state has been freed). */
int cq_cache_put(cq_cache *c, const cq_aggregate *agg, const char *stream_id,
                 void *state, int64_t version, int64_t position);

/* Forget stream_id's entry of aggregate `agg`, if there is one (its
 * state is freed): the writer found that the store holds a version the
 * entry does not know of (another node appended; see writer.c). Cannot
 * fail. */
void cq_cache_drop(cq_cache *c, const cq_aggregate *agg,
                   const char *stream_id);

/* The batch committed: dirty entries become clean, and the least recently
 * used go until the bound holds. Cannot fail. */
void cq_cache_commit(cq_cache *c);

/* The batch was rolled back: evict (and free) every dirty entry. Cannot
 * fail. */
void cq_cache_drop_dirty(cq_cache *c);

/* Entries held now (a count, not a CQ_* code). */
size_t cq_cache_count(const cq_cache *c);

#endif
