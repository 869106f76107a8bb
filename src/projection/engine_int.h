/*
 * engine_int.h -- what the files of the projection engine share: the
 * engine's state and the helpers each file gives the others. Not an
 * interface: see engine.h. Which thread owns which field is said at the
 * field; which file does what, in engine.c.
 */
#ifndef CQ_PROJECTION_ENGINE_INT_H
#define CQ_PROJECTION_ENGINE_INT_H

#include <pthread.h>
#include <stdatomic.h>
#include <string.h>

#include "base/base.h"
#include "domain/domain.h"
#include "projection/engine.h"
#include "projection/exec.h"
#include "projection/rename.h"
#include "projection/tail.h"
#include "store/rdb.h"

#define ENGINE_BUSY_TIMEOUT_MS 5000

/* The checkpoint table (checkpoint.c), in read.db and in events.db.
 * BIGINT: 64-bit on PostgreSQL (INTEGER is 32), INTEGER affinity on
 * SQLite, as every integer column the engine makes. */
#define CHECKPOINT_DDL                                                         \
    "CREATE TABLE IF NOT EXISTS cq_projections ("                              \
    " name TEXT PRIMARY KEY, version BIGINT NOT NULL,"                         \
    " source_hash TEXT NOT NULL, position BIGINT NOT NULL,"                    \
    " status TEXT NOT NULL, error TEXT, error_position BIGINT,"                \
    " error_event TEXT, updated_at BIGINT NOT NULL)"

#define SQL_SAVE_CHECKPOINT                                                    \
    "UPDATE cq_projections SET position = ?2, status = ?3, error = ?4,"        \
    " error_position = ?5, error_event = ?6, updated_at = ?7 WHERE name = ?1"

/* Several nodes: a batch's checkpoint, written only if the row still
 * holds the position ?8 this node read (a row back when the node that
 * lost its lock without noticing still writes: nothing is applied twice) */
#define SQL_SAVE_CHECKPOINT_IF                                                 \
    "UPDATE cq_projections SET position = ?2, status = ?3, error = ?4,"        \
    " error_position = ?5, error_event = ?6, updated_at = ?7"                  \
    " WHERE name = ?1 AND position = ?8 RETURNING position"

/* A blue/green rebuild of one asynchronous projection (rebuild.c): its
 * tables are built under shadow names next to the live ones, by the
 * projector thread, and swapped in when they have caught up. */
typedef struct rebuild {
    /* projector thread only (and cq_engine_start before it runs) */
    cq_exec *x;     /* on read.db, renaming live names to shadow ones */
    cq_rename *map; /* table -> table__cq_shadow, index -> its new name */
    size_t nmap;
    size_t ntables; /* map[0..ntables) are the tables */
    int64_t gen;    /* shadow index names: see rebuild.c */
    int resume;     /* cq_rebuild_load found it unfinished */
    /* written under e->mu (by the projector thread, which may read them
     * without it); read by status under it */
    int64_t resumed_from; /* position when this process took it up */
    int64_t taken_ms;     /* when this process took it up */
    int active;
    int64_t position; /* the shadow tables' checkpoint */
    int64_t started_ms;
    char reason[96];
} rebuild;

/* The last rebuild that ended, as kept in cq_rebuild_log. */
typedef struct rebuild_record {
    int64_t started_ms, finished_ms, events;
    int64_t version;
    char outcome[8]; /* "done" or "failed"; "" when there was none */
    char error[512];
} rebuild_record;

typedef struct proj {
    cq_declared *d;          /* as declared: what a rebuild builds */
    cq_declared *prev;       /* the definition the live tables were built with,
                                read back from cq_projections, when it differs
                                from d (until a rebuild swaps); else NULL */
    char *text;              /* d's source text (stored with the checkpoint) */
    char source[256];        /* file name, for messages */
    cq_projection_code code; /* code.apply set: events go to C, not @on */
    int index;
    int is_inline;
    int needs_metadata; /* some statement reads :metadata.* */
    int64_t saved;      /* inline: checkpoint written so far (writer
                           thread only) */
    int catching_up;    /* inline, guarded by e->mu: behind the head until
                           cq_engine_catch_up has applied it (set by
                           cq_engine_start with defer_inline) */
    char catch_up_error[256]; /* why that catch-up stopped (e->mu) */
    /* guarded by e->mu */
    int64_t position;
    int paused;
    int failed;
    int64_t error_position;
    char error[512];
    char error_event[130];
    int64_t skipped; /* rows of cq_skipped_events for this projection */
    /* guarded by e->mu: this node applies it (inline: always; asynchronous:
     * its projector holds the projection's lock, or, with a read store of
     * its own, always) */
    int owned;
    int64_t notified; /* projector thread only: the position last sent on
                         cq_progress */
    /* guarded by e->mu: what the live tables are */
    const cq_declared *serving; /* their definition (d or prev); NULL
                                   when it is unknown */
    int frozen;                 /* not being applied: a rebuild replaces them */
    rebuild rb;
    rebuild_record last;
} proj;

/* Operations on an asynchronous projection, carried out by the projector
 * thread (which owns read.db's write connection). */
enum { OP_NONE, OP_PAUSE, OP_RESUME, OP_RESET, OP_RETRY, OP_SKIP, OP_REBUILD };

/* One caller's control operation (see cq_engine_control_start): queued
 * to the projector thread, which runs it and hands it back with its own
 * result. */
struct cq_control {
    cq_engine *e;
    proj *p;
    int op;           /* OP_* */
    cq_control_cb cb; /* called once it ran (or at stop) */
    void *arg;
    /* guarded by e->mu */
    int state; /* CTL_* in engine.c */
    int refs;  /* the caller's, and the queue's until run */
    int rc;    /* once CTL_DONE */
    char msg[256];
    struct cq_control *next; /* e->controls queue */
};

/* Opens one read-only connection of a pool (pool.c): CQ_OK with *db (the
 * pool's), or an error with a message in err. */
typedef int (*cq_pool_opener)(void *arg, cq_rdb **db, char *err, size_t errcap);

/* A pool of read connections to one database, each with its executor. */
typedef struct pool {
    cq_rdb **db; /* NULL: lost its server, connected again when borrowed */
    cq_exec **x;
    int n;
    int *idle;
    int nidle;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int init;
    cq_pool_opener open; /* and its arg: how a lost connection comes back */
    void *arg;
    /* guarded by mu: bumped when a borrower found its connection's server
     * gone (a restart takes every connection along): each connection made
     * before (born[i] < lost) is replaced when next borrowed */
    unsigned lost;
    unsigned *born;
} pool;

/* The lock a node's projector holds while it runs an asynchronous
 * projection (several nodes), and the notification channels. */
#define CQ_LOCK_PROJECTION "cqrsd:projection:"
#define CQ_LOCK_START "cqrsd:start"
#define CQ_CHANNEL_EVENTS "cq_events"
#define CQ_CHANNEL_PROGRESS "cq_progress"

/* A listener thread (listen.c) and its connection. */
typedef struct cq_listener cq_listener;

struct cq_engine {
    cq_store *store;
    const cq_domain *domain; /* upcasters for old events; may be NULL */
    char dir[4096];
    int batch;
    int nreaders;
    proj **projs;
    int nprojs;

    pthread_mutex_t mu;
    pthread_cond_t cv;
    int64_t head; /* guarded by mu */
    int stopping; /* guarded by mu */
    int started;
    int defer_inline;          /* cfg->defer_inline */
    int projector_deferred;    /* start left it to cq_engine_catch_up */
    int projector_running;     /* its thread was started (to join) */
    atomic_int stop_catch_up;  /* cq_engine_stop_catch_up was called */
    pthread_t projector;

    /* projector thread only (and cq_engine_start before it runs) */
    cq_rdb *rdb; /* read.db's writing connection */
    cq_exec *rx;
    cq_rstmt *r_save, *r_sp, *r_release, *r_rollback;
    cq_rstmt *r_rb_save; /* a rebuild's checkpoint (rebuild.c) */
    /* the arrays of the one batch alive at a time, kept from one batch to
     * the next (cq_eng_batch_read); freed when the projector thread ends */
    struct {
        cq_stored_event *se;
        struct parsed *pe;
        int *prc;
        int cap;
    } bmem;

    /* writer thread only (and cq_engine_start before it runs) */
    cq_exec *ix; /* on the store's write connection (cq_store_write_rdb) */
    cq_rstmt *i_save, *i_sp, *i_release, *i_rollback;

    struct cq_wal *wal; /* read.db's checkpoints (store/wal.h) */

    /* the events committed last (tail.h), when this process alone writes
     * the event store; else NULL. Set by cq_engine_start. */
    cq_tail *tail;

    /* Several nodes (engine.h). Set by cq_engine_start, read-only after */
    int shared;           /* the read store is shared: locks, notifications */
    int one_db;           /* the read store is the event store's database */
    char where[4200];     /* the read store: DIR/read.db, or its URI */
    char store_uri[4096]; /* the event store's database to listen to, or "" */
    /* projector thread only */
    cq_rstmt *r_cas;       /* a batch's checkpoint, if still where it was */
    int64_t next_claim_ms; /* when to try for the locks not held again */
    int reopen;            /* e->rdb lost its server: connect again */
    int64_t next_reconnect_ms; /* and when, after a failed try */
    int reconnect_failing;     /* tries failed in a row (logged once) */
    /* guarded by mu: the listener connected again, so the database may
     * have restarted: the projector checks that its connection (and so
     * its locks) survived */
    int recheck;
    cq_listener *listeners[2]; /* cq_events, cq_progress (one when one_db) */
    int nlisteners;

    /* control operations queued for the projector, oldest first;
     * guarded by mu */
    struct cq_control *controls, *controls_tail;

    pool reads;  /* read.db */
    pool events; /* events.db */

    /* cqrsd project: where asynchronous projections take their events
     * from (engine.h), or source.read NULL (the event store); and which
     * ones this node may run (NULL: all). Set by cq_engine_new. */
    cq_engine_source source;
    const char *const *run;

    /* who is told when positions move (progress.h): set before start,
     * read-only after; its operations may be NULL (nobody listens) */
    cq_engine_progress progress;
};

/* The monotonic clock in milliseconds (lock retries, listener waits). */
static inline int64_t cq_eng_mono_ms(void)
{
    return (int64_t)(cq_mono_ns() / 1000000);
}

/* Tell the progress listener (progress.h), if any. Any thread, without
 * e->mu. */
static inline void cq_eng_advance(cq_engine *e, int queue, int64_t position)
{
    if (e->progress.advance != NULL)
        e->progress.advance(e->progress.arg, queue, position);
}

static inline void cq_eng_advance_streams(cq_engine *e, int queue,
                                          int64_t position,
                                          const cq_stream_applied *applied,
                                          size_t n)
{
    if (e->progress.advance_streams != NULL)
        e->progress.advance_streams(e->progress.arg, queue, position, applied,
                                    n);
}

static inline void cq_eng_rewind(cq_engine *e, int queue, int64_t position)
{
    if (e->progress.rewind != NULL)
        e->progress.rewind(e->progress.arg, queue, position);
}

/* Applying events to one projection's tables through one executor. */
typedef struct apply_ctx {
    cq_engine *e;
    proj *p;
    const cq_declared *d; /* whose handlers */
    cq_exec *x;
    cq_rstmt *sp, *release, *rollback; /* NULL: no per-event savepoint */
    int64_t last;                      /* last position applied */
    int failed;                        /* a handler failed: stop */
    int64_t error_position;
    char error[512];
    char error_event[130];
} apply_ctx;

/* One stored event decoded for handlers: parsed once, applied to every
 * projection that needs it. */
typedef struct parsed {
    cq_decl_event ev;
    cq_decoded dec; /* data and metadata (domain/domain.h) */
    cq_decl_lazy lz; /* cq_eng_parse_event_lazy: the data not decoded yet
                        (ev.lazy points here), else zero */
    char when[32], day[11];
    char why[192]; /* why data or metadata could not be decoded, or "" */
} parsed;

/* A micro-batch of events read from the store, each decoded once and then
 * applied to every projection that needs it. */
typedef struct batch {
    cq_stored_event *se; /* strings owned (copied out of the read; type
                            shares stream_id's allocation) */
    parsed *pe;          /* decoded data and metadata */
    int *prc;            /* parse result per event */
    int n, cap;
    int need_meta;
    const cq_domain *domain;
} batch;

/* What one step of the projector's work did (a round of micro-batches,
 * a rebuild step). */
enum cq_step {
    CQ_STEP_FAILED = -1, /* the store or read.db failed: retried later */
    CQ_STEP_IDLE = 0,    /* nothing was due */
    CQ_STEP_WORKED = 1
};

/* May this node run asynchronous projection p (cq_engine_config.run)?
 * A predicate. */
static inline int cq_eng_may_run(const cq_engine *e, const proj *p)
{
    if (e->run == NULL)
        return 1;
    for (const char *const *n = e->run; *n != NULL; n++)
        if (strcmp(*n, p->d->name) == 0)
            return 1;
    return 0;
}

/* ---- pool.c ---- */

/* Step st once and reset it: CQ_OK if it ran (a row or done), else
 * CQ_EIO (cq_rdb_errmsg on its connection tells why). */
int cq_eng_step_done(cq_rstmt *st);

/* Prepare a persistent statement (the caller's: cq_rstmt_finalize);
 * CQ_OK or CQ_EIO with the SQL and the read store's message in err. */
int cq_eng_prepare(cq_rdb *db, const char *sql, cq_rstmt **st, char *err,
                   size_t errcap);

/* Open a connection to the read store at path (flags CQ_RDB_*) with the
 * engine's busy timeout: CQ_OK with *db (the caller's: cq_rdb_close), or
 * CQ_EIO with *db NULL and "<path>: <why>" in err. */
int cq_eng_open_db(const char *path, unsigned flags, cq_rdb **db, char *err,
                   size_t errcap);

/* Open n read-only connections with open(arg, ...), each with its
 * executor (a failure leaves what was opened for cq_pool_close). CQ_OK,
 * or open's error, or CQ_ENOMEM. */
int cq_pool_open(pool *pl, cq_pool_opener open, void *arg, int n, char *err,
                 size_t errcap);

/* Close every connection; accepts a pool never opened (zeroed). */
void cq_pool_close(pool *pl);

/* Borrow an idle connection's index, waiting for one, with the pool's
 * count of losses in *lost (pool.lost); give it back with cq_pool_put.
 * Any thread. */
int cq_pool_get(pool *pl, unsigned *lost);
void cq_pool_put(pool *pl, int i);

/* ---- engine.c ---- */

/* A projection's checkpoint row as another node may have written it:
 * SQL_CHECKPOINT_ROW's columns. */
#define SQL_CHECKPOINT_ROW                                                     \
    "SELECT position, status, error, error_position, error_event"              \
    " FROM cq_projections WHERE name = ?1"

typedef struct checkpoint_row {
    int64_t position;
    int paused, failed;
    int64_t error_position; /* failed only (else 0, and the texts "") */
    char error[512];
    char error_event[130];
} checkpoint_row;

/* Run st (SQL_CHECKPOINT_ROW, on any connection) for p into *row, then
 * reset and clear st. CQ_OK, CQ_ENOTFOUND (no row), or the read store's
 * failure (cq_rdb_errmsg says why). */
int cq_eng_checkpoint_row(cq_rstmt *st, const proj *p, checkpoint_row *row);

/* Prepare the projector's statements on e->rdb (r_save, r_sp, r_release,
 * r_rollback; r_cas with several nodes). CQ_OK or CQ_EIO. */
int cq_eng_projector_statements(cq_engine *e, char *err, size_t errcap);

/* ---- checkpoint.c ---- */

/* Save p's checkpoint with `st` (SQL_SAVE_CHECKPOINT) in the open
 * transaction. CQ_OK or CQ_EIO. */
int cq_eng_save_checkpoint(cq_rstmt *st, const proj *p, int64_t position,
                           int failed, const char *error, int64_t error_pos,
                           const char *error_event);

/* Give cq_projections (created before it was added) its source column. */
int cq_eng_add_source_column(cq_exec *x, char *err, size_t errcap);

/* Bring p's tables and checkpoint row (through x) to its declared
 * definition, or with `reset` drop and recreate them; see checkpoint.c.
 * `changed` gets why a blue/green rebuild is due ("" if none). */
int cq_eng_prepare_projection(proj *p, cq_exec *x, int reset, char *changed,
                              size_t changedcap, char *err, size_t errcap);

/* p->skipped from the rows of cq_skipped_events in db (start). */
int cq_eng_count_skipped(cq_rdb *db, proj *p, char *err, size_t errcap);

/* ---- decode.c ---- */

/* Decode se (data, and metadata if need_meta) into pe. `data`, if not
 * NULL, is se->data already parsed (borrowed). CQ_OK or CQ_ECORRUPT (pe
 * is filled as far as it goes, with why). Release with
 * cq_eng_parsed_clear. */
int cq_eng_parse_event(const cq_domain *dom, const cq_stored_event *se,
                       const json_t *data, int need_meta, parsed *pe);
void cq_eng_parsed_clear(parsed *pe);

/* As cq_eng_parse_event for a batch: when no metadata is needed, no
 * upcaster applies and jsonscan.c can vouch for the data text, the data
 * is kept as text (pe->ev.lazy, a copy) and decoded only if a handler
 * needs more than its top-level scalars; otherwise exactly
 * cq_eng_parse_event. pe must not move until cleared (ev.lazy points into
 * it). */
int cq_eng_parse_event_lazy(const cq_domain *dom, const cq_stored_event *se,
                            int need_meta, parsed *pe);

/* pe's data for a C-code handler: decoded now if it was lazy. NULL only
 * when out of memory (or when the parse failed). */
const json_t *cq_eng_parsed_data(const parsed *pe);

/* ---- projector.c ---- */

/* Apply the decoded event pe (whose parse returned prc) to c->p through
 * c->x, in a savepoint of its own if c->sp is set. 0 to go on, 1 when the
 * projection failed (recorded in c). */
int cq_eng_apply_parsed(apply_ctx *c, const cq_stored_event *se,
                        const parsed *pe, int prc);

/* Decode and apply one stored event to c->p (a cq_event_cb). */
int cq_eng_apply_event(void *arg, const cq_stored_event *se);

/* The projector thread's body (arg: the engine). */
void *cq_eng_projector_main(void *arg);

/* Read up to b->cap events from position `from` on into b, decoded for
 * handlers. b's arrays are the engine's (e->bmem, grown here and kept
 * from one batch to the next), so one batch at a time, on the projector
 * thread only; cq_eng_batch_free releases what its events hold, also
 * after a failure. CQ_OK or an error with a message. */
int cq_eng_batch_read(cq_engine *e, batch *b, int64_t from, char *err,
                      size_t errcap);
void cq_eng_batch_free(batch *b);

/* Apply b's events from `from` on to c->p through c->x and c->d, in the
 * open transaction; stops at the first failure (recorded in c). */
void cq_eng_apply_events(apply_ctx *c, const batch *b, int64_t from);

/* Prepare every handler and query statement of d once, on the connection
 * that will run it (x, after the DDL), so that an SQL error in a
 * projection file stops the server at start with the file (`source`) and
 * line rather than failing the projection later. Handler statements stay
 * prepared in x's cache. CQ_OK or CQ_EINVAL with "SOURCE:LINE: ..." in
 * err (check.c; also what cq_proj_check tries files with). */
int cq_eng_check_statements(const cq_declared *d, const char *source,
                            cq_exec *x, char *err, size_t errcap);

/* The table a CREATE TABLE statement creates, or the index a CREATE
 * INDEX one does, into name[cap]: 1 for a table, 2 for an index, 0 for
 * neither. */
int cq_eng_created(const char *sql, char *name, size_t cap);

/* Several nodes: the lock name of p (CQ_LOCK_PROJECTION + name). */
void cq_eng_lock_name(const proj *p, char *buf, size_t cap);

/* ---- listen.c ---- */

/* Start the listener threads (several nodes): cq_events on the event
 * store's database, cq_progress on the read store's (one connection when
 * they are one database). CQ_OK, or CQ_ENOMEM when a thread cannot
 * start; a database that cannot be reached is retried by the thread. */
int cq_eng_listen_start(cq_engine *e, char *err, size_t errcap);

/* Stop and join them, close their connections. Accepts none started. */
void cq_eng_listen_stop(cq_engine *e);

/* This node's head is now at least `head` (another node's commit, or
 * read again): publish it, with the inline projections, which commit
 * with the events, and wake the projector. Any thread, without mu. */
void cq_eng_head_moved(cq_engine *e, int64_t head);

/* ---- control.c ---- */

/* Carry out the control operations queued so far (at stop: hand them back
 * not carried out). Projector thread; called and returns with e->mu
 * held. */
void cq_eng_run_controls(cq_engine *e, int stopping);

/* ---- inline.c ---- */

/* Start the projector thread (cq_engine_start, or cq_engine_catch_up on
 * the writer thread once the inline projections are current). CQ_OK or
 * CQ_ENOMEM with a message. */
int cq_eng_start_projector(cq_engine *e, char *err, size_t errcap);

/* Bring inline projection p up to head before the writer starts. */
int cq_eng_catch_up_inline(cq_engine *e, proj *p, int64_t head, char *err,
                           size_t errcap);

/* ---- rebuild.c ---- */

/* Create rebuild.c's tables in read.db, prepare its checkpoint statement
 * and drop old tables an earlier swap left. cq_engine_start only. */
int cq_rebuild_init(cq_engine *e, char *err, size_t errcap);

/* Start (or, when read.db holds an unfinished one for the same definition,
 * resume) a rebuild of p: shadow tables are created and the projector
 * fills them. Projector thread, or cq_engine_start. */
int cq_rebuild_begin(cq_engine *e, proj *p, const char *reason, char *err,
                     size_t errcap);

/* Load p->last from cq_rebuild_log. Drop the shadow tables a crash left
 * behind, unless they belong to an unfinished rebuild of p->d: then
 * *resumable is set and cq_rebuild_begin resumes it. (Old tables left
 * between a swap and their drop go in cq_rebuild_init.) cq_engine_start
 * only. */
int cq_rebuild_load(cq_engine *e, proj *p, int *resumable, char *err,
                    size_t errcap);

/* One step of p's rebuild (projector thread): a batch of events into the
 * shadow tables, and the swap once they have caught up with the head.
 * CQ_STEP_WORKED, CQ_STEP_IDLE (none was due) or CQ_STEP_FAILED (an I/O
 * error: retried later). */
int cq_rebuild_step(cq_engine *e, proj *p);

/* Give up p's rebuild (its shadow tables are dropped) and record why. */
void cq_rebuild_abort(cq_engine *e, proj *p, const char *why);

/* Free what a rebuild holds in memory (engine teardown). */
void cq_rebuild_free(proj *p);

#endif
