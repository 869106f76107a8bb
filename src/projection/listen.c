/*
 * listen.c -- several nodes on one database (engine.h): what the other
 * nodes did, heard as it happens, without polling.
 *
 * A listener thread holds a connection of its own and LISTENs:
 *
 *   | channel     | payload         | sent by                          | here                                   |
 *   |-------------|-----------------|----------------------------------|----------------------------------------|
 *   | cq_events   | head position   | a write batch that appended, in  | the head moves; so do the inline       |
 *   |             | (decimal)       | its transaction (event store)    | projections, which commit with it; the |
 *   |             |                 |                                  | projector wakes (events to apply)      |
 *   | cq_progress | NAME:POSITION   | the node running asynchronous    | NAME's position moves on this node,    |
 *   |             |                 | projection NAME, with its        | unless this node runs it               |
 *   |             |                 | checkpoint (projector.c)         |                                        |
 *
 * and every move wakes the waiters it satisfies (the progress listener,
 * progress.h): a min_position query on this node is answered as soon as
 * the node running the projection commits, wherever the command went.
 * One thread listens to both channels when the read store is the event
 * store's database; otherwise one thread per database (cq_events on the
 * event store's, cq_progress on the read store's).
 *
 * When its connection fails, the thread connects again (once a second
 * while it cannot), listens again, and then reads the head and the
 * positions of the projections other nodes run from the databases, since
 * what was notified meanwhile is lost; and it asks the projector to check
 * its own connection (a database that restarted took its locks along).
 * Payloads are untrusted (any session may NOTIFY): a malformed one is
 * ignored; a position only moves forward, except to 0 (a reset).
 *
 * Threads and locks: each listener's connection and statement belong to
 * its thread; `stop` is atomic. Positions, the head and `recheck` are
 * written under e->mu, the waiters told without it (engine.c's lock
 * order).
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "projection/engine_int.h"

#define LISTEN_WAIT_MS 250   /* longest wait between two looks at `stop` */
#define RECONNECT_MS 1000    /* between two tries to connect */

struct cq_listener {
    cq_engine *e;
    char where[4200];  /* the database: a URI */
    int events;        /* listens to cq_events */
    int progress;      /* listens to cq_progress */
    cq_rdb *db;        /* NULL while not connected */
    cq_rstmt *pos;     /* a projection's checkpoint position (progress) */
    pthread_t thread;
    atomic_int stop;
    int connected_before;
};

void cq_eng_head_moved(cq_engine *e, int64_t head)
{
    int moved;

    pthread_mutex_lock(&e->mu);
    moved = head > e->head;
    if (moved) {
        e->head = head;
        for (int i = 0; i < e->nprojs; i++) {
            proj *p = e->projs[i];
            if (p->is_inline && !p->failed && !p->catching_up &&
                p->position < head)
                p->position = head;
        }
        pthread_cond_signal(&e->cv); /* events to apply */
    }
    pthread_mutex_unlock(&e->mu);
    if (!moved)
        return;
    cq_eng_advance(e, e->nprojs, head);
    for (int i = 0; i < e->nprojs; i++) {
        proj *p = e->projs[i];
        int64_t pos = -1;
        if (!p->is_inline)
            continue;
        /* one still catching up stays where it is (inline.c) */
        pthread_mutex_lock(&e->mu);
        if (!p->failed)
            pos = p->position;
        pthread_mutex_unlock(&e->mu);
        if (pos >= 0)
            cq_eng_advance(e, i, pos);
    }
}

/* Projection i (which another node runs) is at `pos`, as notified
 * (`exact` 0: only forward, or back to 0 for a reset) or as read from its
 * checkpoint (`exact` 1). */
static void progress_moved(cq_engine *e, int i, int64_t pos, int exact)
{
    proj *p = e->projs[i];
    int64_t old;

    if (p->is_inline)
        return;
    pthread_mutex_lock(&e->mu);
    old = p->position;
    if (p->owned || pos == old || (!exact && pos < old && pos != 0)) {
        /* this node runs it and knows better; or a notification older
         * than what was read from the checkpoint */
        pthread_mutex_unlock(&e->mu);
        return;
    }
    p->position = pos;
    pthread_mutex_unlock(&e->mu);
    if (pos < old)
        cq_eng_rewind(e, i, pos);
    else
        cq_eng_advance(e, i, pos);
}

/* A decimal position: 1 and *out, or 0 if s is not one. */
static int parse_position(const char *s, int64_t *out)
{
    int64_t v = 0;
    size_t n = 0;

    for (; s[n] >= '0' && s[n] <= '9'; n++) {
        if (n >= 18)
            return 0;
        v = v * 10 + (s[n] - '0');
    }
    if (n == 0 || s[n] != '\0')
        return 0;
    *out = v;
    return 1;
}

static void on_notify(cq_listener *l, const char *channel, const char *payload)
{
    cq_engine *e = l->e;
    int64_t pos;

    if (strcmp(channel, CQ_CHANNEL_EVENTS) == 0) {
        if (parse_position(payload, &pos))
            cq_eng_head_moved(e, pos);
    } else if (strcmp(channel, CQ_CHANNEL_PROGRESS) == 0) {
        const char *colon = strrchr(payload, ':');
        char name[128];
        int i;

        if (colon == NULL || (size_t)(colon - payload) >= sizeof name ||
            !parse_position(colon + 1, &pos))
            return;
        memcpy(name, payload, (size_t)(colon - payload));
        name[colon - payload] = '\0';
        i = cq_engine_projection(e, name);
        if (i >= 0)
            progress_moved(e, i, pos, 0);
    }
}

static void disconnect(cq_listener *l)
{
    cq_rstmt_finalize(l->pos);
    l->pos = NULL;
    cq_rdb_close(l->db);
    l->db = NULL;
}

/* Connect, LISTEN, then read what the notifications stand for: the head
 * and the positions of the projections other nodes run. CQ_OK, or the
 * failure with why in err (not connected then). */
static int connect_and_listen(cq_listener *l, char *err, size_t errcap)
{
    cq_engine *e = l->e;
    int rc = cq_rdb_open(l->where, 0, ENGINE_BUSY_TIMEOUT_MS, &l->db, err,
                         errcap);

    if (rc != CQ_OK)
        return rc;
    if (l->events)
        rc = cq_rdb_listen(l->db, CQ_CHANNEL_EVENTS);
    if (rc == CQ_OK && l->progress)
        rc = cq_rdb_listen(l->db, CQ_CHANNEL_PROGRESS);
    if (rc != CQ_OK)
        snprintf(err, errcap, "LISTEN: %s", cq_rdb_errmsg(l->db));
    if (rc == CQ_OK && l->progress)
        rc = cq_rdb_prepare(l->db,
                            "SELECT position FROM cq_projections"
                            " WHERE name = ?1",
                            CQ_RDB_PERSISTENT, &l->pos, err, errcap);
    /* from here on every move is heard: read where things stand */
    if (rc == CQ_OK && l->events) {
        int64_t head = 0;
        rc = cq_store_head_position(e->store, &head);
        if (rc == CQ_OK)
            cq_eng_head_moved(e, head);
        else
            snprintf(err, errcap, "reading the head of the event store");
    }
    for (int i = 0; rc == CQ_OK && l->progress && i < e->nprojs; i++) {
        proj *p = e->projs[i];
        int step;
        if (p->is_inline)
            continue;
        cq_rstmt_bind_text(l->pos, 1, p->d->name, -1);
        step = cq_rstmt_step(l->pos);
        if (step == CQ_RSTEP_ROW)
            progress_moved(e, i, cq_rstmt_column_int(l->pos, 0), 1);
        else if (step < 0) {
            snprintf(err, errcap, "reading checkpoints: %s",
                     cq_rdb_errmsg(l->db));
            rc = step;
        }
        cq_rstmt_reset(l->pos);
    }
    if (rc != CQ_OK)
        disconnect(l);
    return rc;
}

/* Sleep ms, or less when told to stop. */
static void nap(cq_listener *l, int ms)
{
    for (; ms > 0 && !atomic_load(&l->stop); ms -= 50)
        nanosleep(&(struct timespec){0, 50 * 1000000}, NULL);
}

static void *listen_main(void *arg)
{
    cq_listener *l = arg;
    cq_engine *e = l->e;
    char channel[64], payload[256], err[512];
    int failing = 0;

    pthread_setname_np(pthread_self(), "cq-listen");
    while (!atomic_load(&l->stop)) {
        int rc;

        if (l->db == NULL) {
            if (connect_and_listen(l, err, sizeof err) != CQ_OK) {
                if (!failing++)
                    fprintf(stderr,
                            "cqrsd: listening for other nodes: %s (tried "
                            "again every second)\n",
                            err);
                nap(l, RECONNECT_MS);
                continue;
            }
            if (failing)
                fprintf(stderr, "cqrsd: listening for other nodes again\n");
            failing = 0;
            if (l->connected_before) {
                /* the database may have restarted: the projector's
                 * connection, and its locks, may be gone too */
                pthread_mutex_lock(&e->mu);
                e->recheck = 1;
                pthread_cond_signal(&e->cv);
                pthread_mutex_unlock(&e->mu);
            }
            l->connected_before = 1;
        }
        rc = cq_rdb_wait_notify(l->db, LISTEN_WAIT_MS, channel, sizeof channel,
                                payload, sizeof payload);
        if (rc == 1) {
            on_notify(l, channel, payload);
        } else if (rc < 0) {
            fprintf(stderr,
                    "cqrsd: listening for other nodes: the connection "
                    "failed (%s); connecting again\n",
                    cq_rdb_errmsg(l->db));
            disconnect(l);
            failing = 1;
        }
    }
    disconnect(l);
    return NULL;
}

static int listener_start(cq_engine *e, const char *where, int events,
                          int progress, char *err, size_t errcap)
{
    cq_listener *l = calloc(1, sizeof *l);

    if (l == NULL) {
        snprintf(err, errcap, "out of memory");
        return CQ_ENOMEM;
    }
    l->e = e;
    snprintf(l->where, sizeof l->where, "%s", where);
    l->events = events;
    l->progress = progress;
    atomic_init(&l->stop, 0);
    if (pthread_create(&l->thread, NULL, listen_main, l) != 0) {
        free(l);
        snprintf(err, errcap, "cannot start the listener thread");
        return CQ_ENOMEM;
    }
    e->listeners[e->nlisteners++] = l;
    return CQ_OK;
}

int cq_eng_listen_start(cq_engine *e, char *err, size_t errcap)
{
    int rc;

    if (e->one_db)
        return listener_start(e, e->where, 1, 1, err, errcap);
    rc = listener_start(e, e->where, 0, 1, err, errcap);
    if (rc == CQ_OK && e->store_uri[0] != '\0')
        rc = listener_start(e, e->store_uri, 1, 0, err, errcap);
    return rc;
}

void cq_eng_listen_stop(cq_engine *e)
{
    for (int i = 0; i < e->nlisteners; i++)
        atomic_store(&e->listeners[i]->stop, 1);
    for (int i = 0; i < e->nlisteners; i++) {
        pthread_join(e->listeners[i]->thread, NULL);
        free(e->listeners[i]);
    }
    e->nlisteners = 0;
}
