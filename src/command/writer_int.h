/*
 * writer_int.h -- what the files of the single writer share and nobody
 * else needs: the writer's state and the helpers each file gives the
 * others. Not an interface: see writer.h.
 *
 * Layout of the writer (one concept per file):
 *
 *   | file            | concept                                            |
 *   |-----------------|----------------------------------------------------|
 *   | writer.c        | the queue and the writer thread; a batch in one    |
 *   |                 | transaction, a request in its savepoint (replay    |
 *   |                 | of an idempotency key, command, raw append); the   |
 *   |                 | answers; start, submit, stop                       |
 *   | writer_state.c  | an aggregate's state: the cached one, brought up   |
 *   |                 | to date by folding the stream's events             |
 *   | writer_append.c | appending a request's events: their metadata, the  |
 *   |                 | store append, the inline projections' call-out     |
 *   | writer_upkeep.c | whether the store takes writes (and the probe that |
 *   |                 | finds out while idle); pacing the pruning of       |
 *   |                 | expired idempotency keys                           |
 *
 * Threads and locks (at the fields of struct cq_writer below): `mu`
 * guards the queue, `stopping`, `why` and the turn (`busy`); head_position
 * and writable are atomics; everything else belongs to the thread that
 * holds the turn: the writer thread, or a submitter that found the writer
 * idle and runs its one request itself (cq_writer_try_run). Taking and
 * leaving the turn under `mu` orders one holder's work before the next's.
 * Every function declared here runs on the thread holding the turn.
 */
#ifndef CQ_COMMAND_WRITER_INT_H
#define CQ_COMMAND_WRITER_INT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "command/cache.h"
#include "command/command.h"
#include "command/writer.h"
#include "domain/domain.h"

#define PROBE_INTERVAL_MS 1000
#define PROBE_KEY "cqrsd write probe"

struct cq_writer {
    cq_store *store;
    cq_writer_config cfg;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    cq_write_req *head, *tail; /* guarded by mu */
    int queued;                /* guarded by mu */
    int stopping;              /* guarded by mu */
    /* guarded by mu: the writer's turn. 1 while a thread runs a batch, a
     * prune step or a probe (the writer thread, or a submitter in
     * cq_writer_try_run); the fields below "the turn's" belong to that
     * thread until it clears busy. */
    int busy;
    int solo;         /* guarded by mu: the last batch held one request and
                         nothing was queued behind it (try_run may run) */
    int wants_turn;   /* guarded by mu: the writer thread waits for busy to
                         clear (whoever clears it signals cv) */
    _Atomic int64_t head_position;
    atomic_int writable; /* written by the turn's holder only */
    char why[512];       /* guarded by mu: why it is not writable */

    /* the turn's: the thread holding busy (see above) */
    cq_cache *cache;
    cq_decision *decision;
    int64_t last_prune_ms;  /* when the last prune pass started (monotonic) */
    int prune_pending;      /* a pass is under way: expired keys may remain */
    uint64_t last_batch_ns; /* guarded by mu: when the last batch ended
                               (monotonic) */
};

/* ---- writer.c: answers -------------------------------------------------- */

/* Make r's answer an application/problem+json of `status` (replacing any
 * answer it had), its detail printed from fmt. Out of memory leaves
 * r->response NULL. */
void writer_answer_problem(cq_write_req *r, int status, const char *slug,
                           const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* ---- writer_state.c: an aggregate's state ------------------------------- */

/* A state being folded; f->state is the caller's once writer_load_state
 * returns (free it with f->agg->free). */
typedef struct fold_ctx {
    const cq_aggregate *agg;
    const cq_domain *domain; /* upcasters for old events */
    void *state;
    int64_t version, position;
    int rc;
    char err[256];
} fold_ctx;

/* Load the state of r's stream at version `cur` into f (f->state owned by
 * the caller afterwards). CQ_OK, CQ_ECORRUPT (answer set), CQ_EIO,
 * CQ_ENOMEM. */
int writer_load_state(cq_writer *w, cq_write_req *r, int64_t cur, fold_ctx *f);

/* ---- writer_append.c: appending ----------------------------------------- */

/* One event to append, before it has texts. */
typedef struct pending {
    const char *type;
    int schema_version;
    const json_t *data;
    const json_t *user_metadata;
} pending;

/* Append n pending events to r's stream at version cur. Fills the new
 * version and first position. CQ_OK, CQ_ECONFLICT, CQ_EIO, CQ_ENOMEM, or
 * CQ_ECORRUPT when an inline projection failed r alone (answer set). */
int writer_append_events(cq_writer *w, cq_write_req *r, int64_t cur,
                         const pending *p, size_t n, int64_t now,
                         int64_t *version, int64_t *first);

/* ---- writer_upkeep.c: writable state, probe, pruning -------------------- */

/* Record whether the last transaction committed; log the changes only. */
void writer_set_writable(cq_writer *w, int ok, const char *why);

/* While unwritable and idle: one small real write, to find out whether the
 * store takes writes again. */
void writer_probe(cq_writer *w);

/* The monotonic clock in milliseconds, which the prune pacing counts in. */
int64_t writer_mono_ms(void);

/* Start a prune pass if none is under way and one is due at `now`
 * (writer_mono_ms). Touches writer-only fields, never the store. */
void writer_prune_start_if_due(cq_writer *w, int64_t now);

/* One idle step of at most `rows` keys, a transaction of its own. */
void writer_prune_step(cq_writer *w, int rows);

/* One step of at most `rows` keys inside the batch's open transaction, in
 * a savepoint of its own. *deleted gets how many keys it deleted. CQ_OK,
 * or CQ_EIO if the transaction itself is lost (reason in msg). */
int writer_prune_in_batch(cq_writer *w, int64_t now, int rows, int64_t *deleted,
                          char *msg, size_t msgcap);

/* Keys the step in a batch of n requests may delete. */
int writer_batch_prune_rows(int n);

/* Milliseconds until the next pass is due, for the idle wait (>= 1). */
int64_t writer_prune_wait_ms(const cq_writer *w);

#endif
