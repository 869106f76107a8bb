/*
 * writer.h -- the single writer: the only code that appends to the store.
 *
 * HTTP threads validate a request, fill a cq_write_req and submit it. The
 * writer thread drains the queue into ONE transaction (group commit: one
 * fsync for the whole batch), with a savepoint per request so a refusal or
 * conflict undoes only that request. After the commit it fills each
 * request's answer and calls its done() callback; before the commit no
 * answer leaves the writer, so an answer of 2xx means "durable".
 *
 * Per request, inside its savepoint (see writer.c for the details):
 *   1. idempotency key known? same hash: replay the stored answer;
 *      other hash: 422 (not stored).
 *   2. check the stream against the command's expectation / If-Match;
 *   3. state from the cache (checked by version) or folded from the store;
 *   4. decide(); append; evolve the state; cache it (dirty until commit);
 *   5. store the answer in the command log under the key, if any.
 *
 * One batch at a time: a batch runs on the writer thread, or, when the
 * writer is idle with nothing queued and its last batch held a single
 * request, cq_writer_try_run runs the caller's request as a batch of one
 * on the caller's thread (no hand-off to the writer thread and back: the
 * latency of one client sending commands one after another). Either way
 * the thread running a batch holds the writer's turn, taken and left
 * under the writer's lock, so the store's write side, the state cache and
 * the hooks see one batch after another, never two at once.
 *
 * Thread-safety: cq_writer_submit, cq_writer_try_run, cq_writer_head and
 * cq_writer_writable may be called from any thread; everything else from
 * the thread that started the writer.
 */
#ifndef CQ_WRITER_H
#define CQ_WRITER_H

#include <jansson.h>
#include <stdint.h>

#include "cqrs/decider.h"
#include "store/store.h"

#define CQ_STREAM_ID_MAX 256 /* bytes including the NUL */
#define CQ_IDEM_KEY_MAX 256  /* bytes including the NUL */
/* Expired idempotency keys deleted per idle pruning step, and at most per
 * batch unless the batch held more requests (then up to its size): a
 * command waits behind one step at most. Keys are random, so each costs an
 * index page write; 128 is ~1-2 ms. See writer_upkeep.c, "Pruning the
 * command log". */
#define CQ_WRITER_PRUNE_CHUNK 128
/* The step in a batch deletes this many keys per request of the batch
 * (within the bound above, and never fewer than the batch's size): the
 * pruning work per command stays the same whether requests come in few
 * large batches or many small ones. */
#define CQ_WRITER_PRUNE_PER_REQUEST 32
/* After a batch, an idle pruning step (a transaction and an fsync of its
 * own) waits this long for requests first, about one step: the submitters
 * just answered have time to send their next request, which then goes
 * into a batch (whose own step rides on its fsync) instead of queueing
 * behind an idle step. */
#define CQ_WRITER_PRUNE_GRACE_NS 2000000

typedef enum cq_write_kind {
    CQ_WRITE_COMMAND, /* run a domain command through its decider */
    CQ_WRITE_APPEND   /* append client-given events (POST /streams) */
} cq_write_kind;

typedef struct cq_write_req cq_write_req;

struct cq_write_req {
    /* ---- filled by the submitter; owned by it ---- */
    cq_write_kind kind;
    const cq_command_def *def; /* COMMAND: which command */
    json_t *body;              /* COMMAND: the validated body;
                                  APPEND: the validated "events" array.
                                  Reference owned by the request. */
    char stream_id[CQ_STREAM_ID_MAX];
    int64_t expected;                     /* COMMAND: If-Match version, or
                                             CQ_VERSION_ANY; APPEND: expected_version */
    char idem_key[CQ_IDEM_KEY_MAX];       /* "" when none */
    char command_hash[65];                /* when idem_key is set */
    char command_id[37];                  /* UUIDv7 of this request */
    char correlation_id[CQ_IDEM_KEY_MAX]; /* "" means: use command_id */
    void (*done)(cq_write_req *r); /* called on the writer thread once the
                                      answer is final (never for a request
                                      cq_writer_try_run ran); after it
                                      returns the writer never touches r
                                      again */
    void *user;                    /* for done() */

    /* ---- filled by the writer before done() ---- */
    int status;       /* HTTP status */
    char *response;   /* JSON body, malloc'd; the submitter frees */
    int problem;      /* 1 if response is application/problem+json */
    int replayed;     /* 1 if answered from the command log */
    int64_t version;  /* stream version (for ETag), 0 if unknown */
    int64_t position; /* position of the answer's last event */

    cq_write_req *next; /* queue link; writer-private */
};

typedef struct cq_writer cq_writer;

/* Hooks for the projection engine; all optional, all called by the
 * thread holding the writer's turn (the writer thread, or a submitter in
 * cq_writer_try_run), one batch at a time. */
typedef struct cq_writer_hooks {
    /* Inside the request's savepoint, right after its events were appended
     * (and so inside the batch's transaction on the store's write
     * connection): the inline projections apply them. `events` are as
     * stored and data[i] is events[i].data already parsed (all borrowed).
     * CQ_EREFUSED: an inline projection cannot apply one of the events
     * (why in err): the request is answered 422 and its writes undone, so
     * an inline read model never falls behind the events. CQ_EIO: the
     * transaction is unusable and the batch is rolled back (503). Any
     * other non-OK return fails the request alone with 500. */
    int (*apply_inline)(void *arg, const cq_stored_event *events,
                        const json_t *const *data, size_t n, char *err,
                        size_t errcap);
    /* Inside the batch's transaction, just before COMMIT; head is the
     * highest position in it. A non-OK return aborts the batch. */
    int (*before_commit)(void *arg, int64_t head);
    /* After a batch committed, before any of its answers is released:
     * head is the new highest committed position; batch is the batch's
     * requests, linked by next (borrowed for the call): each answered 2xx
     * wrote its stream_id up to its version (or found it there). */
    void (*committed)(void *arg, int64_t head, const cq_write_req *batch);
    void *arg;
    /* Once, on the writer thread before it touches the store: requests
     * queued meanwhile wait (the inline projections catch up here when a
     * server starts them deferred; see src/wiring.c). */
    void (*start)(void *arg);
} cq_writer_hooks;

typedef struct cq_writer_config {
    int64_t idempotency_ttl_ms; /* how long keys are kept; 0 → 24 h */
    int max_batch;              /* requests per transaction; 0 → 512 */
    int max_queue;              /* queued requests before EBUSY; 0 → 16384 */
    size_t cache_slots;         /* aggregate cache size; 0 → 4096 */
    int64_t prune_interval_ms;  /* a pass over expired idempotency keys
                                   starts this often; 0 → 1 s */
    cq_writer_hooks hooks;
    const cq_domain *domain;    /* its upcasters bring old events to the
                                   shape evolve() expects; may be NULL */
} cq_writer_config;

/* Start the writer thread on `store` (borrowed; must outlive the writer).
 * CQ_OK, CQ_ENOMEM or CQ_EIO. */
int cq_writer_start(cq_store *store, const cq_writer_config *cfg,
                    cq_writer **out);

/* Queue r. On CQ_OK, done(r) will be called exactly once, on the writer
 * thread. CQ_EBUSY (queue full) or CQ_ECLOSED (stopping): r was not
 * queued and done() will not be called. Any thread. */
int cq_writer_submit(cq_writer *w, cq_write_req *r);

/* Run r at once on the calling thread, as a batch of its own, if the
 * writer is idle: nothing queued, no batch, prune step or probe running,
 * the store writable, and the last batch held one request with nothing
 * queued behind it (one client at a time; under load requests keep going
 * through the queue into shared batches). 1: r has its final answer
 * (durable if 2xx, as for done()); done() is not called and the writer
 * does not touch r again. 0: nothing was done; submit r instead. Blocks
 * for the batch's COMMIT (an fsync). Any thread; not from a hook. */
int cq_writer_try_run(cq_writer *w, cq_write_req *r);

/* Highest committed position. Any thread. */
int64_t cq_writer_head(cq_writer *w);

/* A predicate (not a CQ_* code): 1 while the store takes writes: the last
 * transaction the writer tried (a batch, or while idle and unwritable a
 * probe once a second) committed; 0 when it failed, with the store's
 * message in why[cap] (if not NULL; "" when writable). Any thread. */
int cq_writer_writable(cq_writer *w, char *why, size_t cap);

/* Refuse new requests (CQ_ECLOSED; cq_writer_try_run runs nothing),
 * finish and answer every queued one, wait for a request that
 * cq_writer_try_run is running, and join the thread. cq_writer_head()
 * keeps working. Call once, from the thread that started the writer;
 * accepts NULL. */
void cq_writer_stop(cq_writer *w);

/* Stop (if not yet stopped) and free. No other thread may still call
 * cq_writer_submit, cq_writer_try_run or cq_writer_head. Accepts NULL. */
void cq_writer_free(cq_writer *w);

#endif
