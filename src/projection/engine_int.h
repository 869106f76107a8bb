/*
 * engine_int.h -- what engine.c and rebuild.c share: the engine's state
 * and the helpers that apply events. Not an interface: see engine.h.
 */
#ifndef CQ_PROJECTION_ENGINE_INT_H
#define CQ_PROJECTION_ENGINE_INT_H

#include <pthread.h>
#include <sqlite3.h>

#include "projection/engine.h"
#include "projection/exec.h"
#include "projection/rename.h"

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
    /* guarded by e->mu */
    int64_t position;
    int paused;
    int failed;
    int64_t error_position;
    char error[512];
    char error_event[130];
    int64_t skipped; /* rows of cq_skipped_events for this projection */
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

/* A pool of read connections to one database, each with its executor. */
typedef struct pool {
    sqlite3 **db;
    cq_exec **x;
    int n;
    int *idle;
    int nidle;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int init;
} pool;

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
    pthread_t projector;

    /* projector thread only (and cq_engine_start before it runs) */
    sqlite3 *rdb;
    cq_exec *rx;
    sqlite3_stmt *r_save, *r_sp, *r_release, *r_rollback;
    sqlite3_stmt *r_rb_save; /* a rebuild's checkpoint (rebuild.c) */

    /* writer thread only (and cq_engine_start before it runs) */
    cq_exec *ix;
    sqlite3_stmt *i_save, *i_sp, *i_release, *i_rollback;

    struct cq_wal *wal; /* read.db's checkpoints (store/wal.h) */

    /* control operations queued for the projector, oldest first;
     * guarded by mu */
    struct cq_control *controls, *controls_tail;

    pool reads;  /* read.db */
    pool events; /* events.db */
    cq_waiters *waits;
};

/* Applying events to one projection's tables through one executor. */
typedef struct apply_ctx {
    cq_engine *e;
    proj *p;
    const cq_declared *d; /* whose handlers */
    cq_exec *x;
    sqlite3_stmt *sp, *release, *rollback; /* NULL: no per-event savepoint */
    int64_t last;                          /* last position applied */
    int failed;                            /* a handler failed: stop */
    int64_t error_position;
    char error[512];
    char error_event[130];
} apply_ctx;

/* One stored event decoded for handlers: parsed once, applied to every
 * projection that needs it. */
typedef struct parsed {
    cq_decl_event ev;
    json_t *data, *meta; /* owned unless borrowed */
    int borrowed;        /* data came from the writer: don't free */
    char when[32], day[11];
    char why[160]; /* why data or metadata could not be decoded, or "" */
} parsed;

/* A micro-batch of events read from the store, each decoded once and then
 * applied to every projection that needs it. */
typedef struct batch {
    cq_stored_event *se; /* strings owned (copied out of the read) */
    parsed *pe;          /* decoded data and metadata */
    int *prc;            /* parse result per event */
    int n, cap;
    int need_meta;
    const cq_domain *domain;
} batch;

/* ---- engine.c helpers used by rebuild.c ---- */

int cq_eng_step_done(sqlite3_stmt *st);
int cq_eng_prepare(sqlite3 *db, const char *sql, sqlite3_stmt **st, char *err,
                   size_t errcap);

/* Read up to b->cap events from position `from` on into b, decoded for
 * handlers (b's arrays are allocated here; cq_eng_batch_free releases
 * them, also after a failure). CQ_OK or an error with a message. */
int cq_eng_batch_read(cq_engine *e, batch *b, int64_t from, char *err,
                      size_t errcap);
void cq_eng_batch_free(batch *b);

/* Apply b's events from `from` on to c->p through c->x and c->d, in the
 * open transaction; stops at the first failure (recorded in c). */
void cq_eng_apply_events(apply_ctx *c, const batch *b, int64_t from);

/* The table a CREATE TABLE statement creates, or the index a CREATE
 * INDEX one does, into name[cap]: 1 for a table, 2 for an index, 0 for
 * neither. */
int cq_eng_created(const char *sql, char *name, size_t cap);

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
 * 1 if it did work, 0 if none was due, -1 on an I/O error. */
int cq_rebuild_step(cq_engine *e, proj *p);

/* Give up p's rebuild (its shadow tables are dropped) and record why. */
void cq_rebuild_abort(cq_engine *e, proj *p, const char *why);

/* Free what a rebuild holds in memory (engine teardown). */
void cq_rebuild_free(proj *p);

#endif
