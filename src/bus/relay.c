/*
 * relay.c -- publishes the event store's events to JetStream in position
 * order (bus.h; protocol and choices in src/bus/README.md).
 *
 * One round (relay thread): read up to `window` events after the
 * checkpoint (one snapshot), publish them all asynchronously (at most
 * `window` unacknowledged), wait for every acknowledgement, and only when
 * all came back positive save the checkpoint = the last position. A
 * failure of any of them saves nothing: the round is published again
 * from the old checkpoint after the NATS connection is made anew, and
 * JetStream drops the ones it already has (Nats-Msg-Id within the
 * duplicate window). The checkpoint lives with the lock: PostgreSQL, the
 * table cq_relay in the store's database (on the connection holding the
 * advisory lock); SQLite, the table cq_relay in DIR/relay.db (a file of
 * its own, so that the relay never takes events.db's write lock from the
 * writer) under flock(DIR/relay.lock).
 *
 * Threads: the relay thread owns db, the statements, nc and js. The ack
 * handler runs on a libnats thread and only counts (atomics). mu guards
 * stopping, woken and the stats.
 */
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <nats/nats.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <time.h>
#include <unistd.h>

#include "base/base.h"
#include "base/metrics.h"
#include "bus/bus.h"
#include "store/rdb.h"

#define RELAY_DDL                                                              \
    "CREATE TABLE IF NOT EXISTS cq_relay (stream TEXT PRIMARY KEY,"            \
    " position BIGINT NOT NULL, updated_at BIGINT NOT NULL)"
#define RELAY_GET "SELECT position FROM cq_relay WHERE stream = ?1"
#define RELAY_SAVE                                                             \
    "INSERT INTO cq_relay (stream, position, updated_at) VALUES (?1, ?2, ?3)"  \
    " ON CONFLICT (stream) DO UPDATE SET position = excluded.position,"        \
    " updated_at = excluded.updated_at"

struct cq_relay {
    char *store_uri, *dir, *bus, *stream, *prefix;
    cq_store *store;
    int window, poll_ms;
    int64_t dup_ns;

    pthread_mutex_t mu;
    pthread_cond_t cv;
    int stopping, woken; /* guarded by mu */
    cq_relay_stats st;   /* guarded by mu */
    pthread_t th;
    int started;

    /* relay thread only */
    cq_rdb *db;
    cq_rstmt *get, *save;
    int lockfd;
    int locked;
    natsConnection *nc;
    jsCtx *js;
    int64_t ckpt;
    int quiet_nats, quiet_lock; /* failures logged once in a row */

    /* the current round, counted by the ack handler (libnats thread) */
    atomic_llong acked, dups, failed;
    char why[256]; /* first failure of the round, guarded by mu */
};

static void set_why(cq_relay *r, const char *text)
{
    pthread_mutex_lock(&r->mu);
    if (r->why[0] == '\0')
        snprintf(r->why, sizeof r->why, "%s", text);
    pthread_mutex_unlock(&r->mu);
}

static void on_ack(jsCtx *js, natsMsg *msg, jsPubAck *pa, jsPubAckErr *pae,
                   void *closure)
{
    cq_relay *r = closure;

    if (pae != NULL) {
        char why[200];
        snprintf(why, sizeof why, "%s (%d)",
                 pae->ErrText != NULL ? pae->ErrText
                                      : natsStatus_GetText(pae->Err),
                 (int)pae->ErrCode);
        set_why(r, why);
        atomic_fetch_add(&r->failed, 1);
    } else if (pa != NULL) {
        atomic_fetch_add(&r->acked, 1);
        if (pa->Duplicate)
            atomic_fetch_add(&r->dups, 1);
    }
    natsMsg_Destroy(msg);
}

static char *dup_or_null(const char *s, int *bad)
{
    char *d;
    if (s == NULL || s[0] == '\0')
        return NULL;
    if ((d = strdup(s)) == NULL)
        *bad = 1;
    return d;
}

int cq_relay_new(const cq_relay_config *cfg, cq_relay **out, char *err,
                 size_t errcap)
{
    cq_relay *r;
    int bad = 0;

    *out = NULL;
    if (cfg->bus == NULL || cfg->bus[0] == '\0' || cfg->store == NULL ||
        ((cfg->store_uri == NULL || !cfg->store_uri[0]) &&
         (cfg->dir == NULL || !cfg->dir[0]))) {
        snprintf(err, errcap, "relay: needs a bus URL and a store");
        return CQ_EINVAL;
    }
    if ((r = calloc(1, sizeof *r)) == NULL)
        goto oom;
    r->store = cfg->store;
    r->store_uri = dup_or_null(cfg->store_uri, &bad);
    r->dir = r->store_uri ? NULL : dup_or_null(cfg->dir, &bad);
    r->bus = dup_or_null(cfg->bus, &bad);
    r->stream = dup_or_null(cfg->stream ? cfg->stream : CQ_BUS_STREAM, &bad);
    r->prefix = dup_or_null(cfg->prefix ? cfg->prefix : CQ_BUS_PREFIX, &bad);
    r->window = cfg->window > 0 ? cfg->window : 256;
    r->dup_ns = (cfg->dup_window_ms > 0 ? cfg->dup_window_ms : 120000) *
                (int64_t)1000000;
    r->poll_ms = cfg->poll_ms > 0 ? cfg->poll_ms : r->store_uri ? 1000 : 100;
    r->lockfd = -1;
    pthread_mutex_init(&r->mu, NULL);
    pthread_cond_init(&r->cv, NULL);
    if (bad) {
        cq_relay_free(r);
        goto oom;
    }
    *out = r;
    return CQ_OK;
oom:
    snprintf(err, errcap, "relay: out of memory");
    return CQ_ENOMEM;
}

/* ---- the lock and the checkpoint ---- */

static void drop_db(cq_relay *r)
{
    cq_rstmt_finalize(r->get);
    cq_rstmt_finalize(r->save);
    r->get = r->save = NULL;
    if (r->db != NULL && r->locked && r->store_uri != NULL)
        cq_rdb_unlock(r->db, CQ_BUS_LOCK);
    cq_rdb_close(r->db);
    r->db = NULL;
    if (r->lockfd >= 0)
        close(r->lockfd); /* releases the flock */
    r->lockfd = -1;
    if (r->locked)
        fprintf(stderr, "cqrsd: relay: let go of the relay lock\n");
    r->locked = 0;
    pthread_mutex_lock(&r->mu);
    r->st.active = 0;
    pthread_mutex_unlock(&r->mu);
}

/* Read the checkpoint into r->ckpt (0 without a row). */
static int read_ckpt(cq_relay *r)
{
    int rc;

    cq_rstmt_bind_text(r->get, 1, r->stream, -1);
    rc = cq_rstmt_step(r->get);
    if (rc == CQ_RSTEP_ROW)
        r->ckpt = cq_rstmt_column_int(r->get, 0);
    else if (rc == CQ_RSTEP_DONE)
        r->ckpt = 0;
    cq_rstmt_reset(r->get);
    cq_rstmt_clear(r->get);
    return rc < 0 ? rc : CQ_OK;
}

static int save_ckpt(cq_relay *r, int64_t pos)
{
    int rc;

    cq_rstmt_bind_text(r->save, 1, r->stream, -1);
    cq_rstmt_bind_int(r->save, 2, pos);
    cq_rstmt_bind_int(r->save, 3, cq_now_ms());
    rc = cq_rstmt_step(r->save);
    cq_rstmt_reset(r->save);
    cq_rstmt_clear(r->save);
    if (rc < 0)
        return rc;
    r->ckpt = pos;
    return CQ_OK;
}

/* Try for the lock; once held, make the table and read the checkpoint.
 * CQ_OK (r->locked tells whether it is held) or a failure (logged). */
static int claim(cq_relay *r)
{
    char err[512] = "", path[4200];
    int got = 0, rc;

    if (r->store_uri != NULL) {
        if (r->db == NULL) {
            rc = cq_rdb_open(r->store_uri, 0, 5000, &r->db, err, sizeof err);
            if (rc != CQ_OK)
                goto fail;
            if (cq_rdb_listen(r->db, "cq_events") != CQ_OK) {
                snprintf(err, sizeof err, "%s", cq_rdb_errmsg(r->db));
                rc = CQ_EIO;
                goto fail;
            }
        }
        rc = cq_rdb_try_lock(r->db, CQ_BUS_LOCK, &got);
        if (rc != CQ_OK) {
            snprintf(err, sizeof err, "%s", cq_rdb_errmsg(r->db));
            goto fail;
        }
    } else {
        if (r->lockfd < 0) {
            snprintf(path, sizeof path, "%s/relay.lock", r->dir);
            r->lockfd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
            if (r->lockfd < 0) {
                snprintf(err, sizeof err, "%.300s: %s", path, strerror(errno));
                rc = CQ_EIO;
                goto fail;
            }
        }
        got = flock(r->lockfd, LOCK_EX | LOCK_NB) == 0;
        if (got && r->db == NULL) {
            snprintf(path, sizeof path, "%s/relay.db", r->dir);
            rc =
                cq_rdb_open(path, CQ_RDB_CREATE, 5000, &r->db, err, sizeof err);
            if (rc != CQ_OK)
                goto fail;
        }
    }
    if (!got)
        return CQ_OK;
    r->locked = 1;
    rc = cq_rdb_exec(r->db, RELAY_DDL, err, sizeof err);
    if (rc == CQ_OK && r->get == NULL)
        rc = cq_rdb_prepare(r->db, RELAY_GET, CQ_RDB_PERSISTENT, &r->get, err,
                            sizeof err);
    if (rc == CQ_OK && r->save == NULL)
        rc = cq_rdb_prepare(r->db, RELAY_SAVE, CQ_RDB_PERSISTENT, &r->save, err,
                            sizeof err);
    if (rc == CQ_OK && (rc = read_ckpt(r)) != CQ_OK)
        snprintf(err, sizeof err, "%s", cq_rdb_errmsg(r->db));
    if (rc != CQ_OK)
        goto fail;
    r->quiet_lock = 0;
    fprintf(stderr,
            "cqrsd: relay: holds the relay lock, publishing from position "
            "%lld\n",
            (long long)r->ckpt + 1);
    pthread_mutex_lock(&r->mu);
    r->st.checkpoint = r->ckpt;
    pthread_mutex_unlock(&r->mu);
    return CQ_OK;
fail:
    if (!r->quiet_lock++)
        fprintf(stderr, "cqrsd: relay: %s (tried again every second)\n", err);
    drop_db(r);
    return rc;
}

/* ---- NATS ---- */

static void drop_nats(cq_relay *r)
{
    jsCtx_Destroy(r->js);
    r->js = NULL;
    if (r->nc != NULL) {
        natsConnection_Close(r->nc);
        natsConnection_Destroy(r->nc);
    }
    r->nc = NULL;
    pthread_mutex_lock(&r->mu);
    r->st.active = 0;
    pthread_mutex_unlock(&r->mu);
}

/* Connect, make the JetStream context and the stream if missing. */
static int connect_nats(cq_relay *r)
{
    natsOptions *o = NULL;
    natsStatus s;
    jsOptions jo;
    jsStreamInfo *si = NULL;
    jsErrCode jerr = 0;
    char subj[512];
    const char *subjects[1] = {subj};
    const char *step = "options";

    s = natsOptions_Create(&o);
    if (s == NATS_OK)
        s = natsOptions_SetURL(o, r->bus);
    if (s == NATS_OK)
        s = natsOptions_SetTimeout(o, 2000);
    if (s == NATS_OK)
        s = natsOptions_SetMaxReconnect(o, 0); /* we reconnect ourselves */
    if (s == NATS_OK) {
        step = "connect";
        s = natsConnection_Connect(&r->nc, o);
    }
    natsOptions_Destroy(o);
    if (s == NATS_OK) {
        step = "JetStream";
        jsOptions_Init(&jo);
        jo.Wait = 5000;
        jo.PublishAsync.MaxPending = r->window;
        jo.PublishAsync.AckHandler = on_ack;
        jo.PublishAsync.AckHandlerClosure = r;
        s = natsConnection_JetStream(&r->js, r->nc, &jo);
    }
    if (s == NATS_OK) {
        step = "stream info";
        s = js_GetStreamInfo(&si, r->js, r->stream, NULL, &jerr);
        if (s == NATS_NOT_FOUND || jerr == JSStreamNotFoundErr) {
            jsStreamConfig sc;
            step = "add stream";
            snprintf(subj, sizeof subj, "%s.>", r->prefix);
            jsStreamConfig_Init(&sc);
            sc.Name = r->stream;
            sc.Subjects = subjects;
            sc.SubjectsLen = 1;
            sc.Storage = js_FileStorage;
            sc.Duplicates = r->dup_ns;
            jerr = 0;
            s = js_AddStream(&si, r->js, &sc, NULL, &jerr);
            if (s == NATS_OK)
                fprintf(stderr,
                        "cqrsd: relay: made JetStream stream %s (subjects "
                        "%s, duplicate window %llds)\n",
                        r->stream, subj, (long long)(r->dup_ns / 1000000000));
        }
        jsStreamInfo_Destroy(si);
    }
    if (s != NATS_OK) {
        if (!r->quiet_nats++)
            fprintf(stderr,
                    "cqrsd: relay: NATS %s: %s: %s (js error %d; tried again "
                    "every second)\n",
                    r->bus, step, natsStatus_GetText(s), (int)jerr);
        drop_nats(r);
        return CQ_EIO;
    }
    if (r->quiet_nats)
        fprintf(stderr, "cqrsd: relay: connected to NATS %s again\n", r->bus);
    r->quiet_nats = 0;
    return CQ_OK;
}

/* ---- one round ---- */

typedef struct round {
    cq_relay *r;
    natsMsg **msgs;
    int n, cap;
    int64_t last;
    int64_t first_recorded; /* recorded_at of the first event read */
    int bad;                /* a message could not be made */
} round;

static natsStatus header(natsMsg *m, const char *key, const char *text)
{
    char buf[2048];

    if (text == NULL)
        return NATS_OK;
    if (cq_bus_header_value(text, buf, sizeof buf) != CQ_OK)
        return NATS_OK; /* too long for a header: left out (in the body) */
    return natsMsgHeader_Set(m, key, buf);
}

static int collect(void *arg, const cq_stored_event *ev)
{
    round *rd = arg;
    char subj[1024], id[80], num[32];
    natsMsg *m = NULL;
    json_t *meta = json_loads(ev->metadata, 0, NULL);
    natsStatus s;

    if (cq_bus_subject(rd->r->prefix, ev->stream_id, subj, sizeof subj) !=
        CQ_OK) {
        json_decref(meta);
        rd->bad = 1;
        return 1;
    }
    cq_bus_msg_id(ev, id, sizeof id);
    s = natsMsg_Create(&m, subj, NULL, ev->data, (int)strlen(ev->data));
    if (s == NATS_OK)
        s = natsMsgHeader_Set(m, "Nats-Msg-Id", id);
    snprintf(num, sizeof num, "%lld", (long long)ev->position);
    if (s == NATS_OK)
        s = natsMsgHeader_Set(m, CQ_BUS_H_POSITION, num);
    if (s == NATS_OK)
        s = header(m, CQ_BUS_H_TYPE, ev->type);
    snprintf(num, sizeof num, "%d", ev->schema_version);
    if (s == NATS_OK)
        s = natsMsgHeader_Set(m, CQ_BUS_H_SCHEMA, num);
    if (s == NATS_OK)
        s = header(m, CQ_BUS_H_STREAM, ev->stream_id);
    snprintf(num, sizeof num, "%lld", (long long)ev->version);
    if (s == NATS_OK)
        s = natsMsgHeader_Set(m, CQ_BUS_H_VERSION, num);
    snprintf(num, sizeof num, "%lld", (long long)ev->recorded_at);
    if (s == NATS_OK)
        s = natsMsgHeader_Set(m, CQ_BUS_H_RECORDED, num);
    if (s == NATS_OK)
        s = header(m, CQ_BUS_H_EVENT_ID,
                   json_string_value(json_object_get(meta, "event_id")));
    if (s == NATS_OK)
        s = header(m, CQ_BUS_H_CORRELATION,
                   json_string_value(json_object_get(meta, "correlation_id")));
    if (s == NATS_OK)
        s = header(m, CQ_BUS_H_CAUSATION,
                   json_string_value(json_object_get(meta, "causation_id")));
    if (s == NATS_OK)
        s = header(m, CQ_BUS_H_METADATA, ev->metadata);
    json_decref(meta);
    if (s != NATS_OK) {
        natsMsg_Destroy(m);
        rd->bad = 1;
        return 1;
    }
    if (rd->n == 0)
        rd->first_recorded = ev->recorded_at;
    rd->msgs[rd->n++] = m;
    rd->last = ev->position;
    return rd->n == rd->cap;
}

/* Publish what follows the checkpoint: >0 events published and
 * checkpointed, 0 nothing to do, CQ_EIO a failure (r->why says). */
static int publish_round(cq_relay *r, int *nats_failed)
{
    round rd = {r, NULL, 0, r->window, 0, 0, 0};
    char err[512] = "";
    int64_t head = 0;
    int rc, result;
    jsPubOptions po;
    natsStatus s = NATS_OK;

    *nats_failed = 0;
    if ((rd.msgs = calloc((size_t)rd.cap, sizeof *rd.msgs)) == NULL)
        return CQ_EIO;
    rc = cq_store_read_all(r->store, r->ckpt + 1, rd.cap, collect, &rd, &head,
                           err, sizeof err);
    if (rc != CQ_OK || rd.bad) {
        fprintf(stderr, "cqrsd: relay: reading events from %lld: %s\n",
                (long long)r->ckpt + 1,
                rc != CQ_OK ? err : "an event cannot be made a message");
        result = CQ_EIO;
        goto done;
    }
    pthread_mutex_lock(&r->mu);
    r->st.head = head;
    r->st.lag_seconds =
        rd.n > 0 ? (double)(cq_now_ms() - rd.first_recorded) / 1000.0 : 0;
    r->why[0] = '\0';
    pthread_mutex_unlock(&r->mu);
    if (rd.n == 0) {
        result = 0;
        goto done;
    }
    atomic_store(&r->acked, 0);
    atomic_store(&r->dups, 0);
    atomic_store(&r->failed, 0);
    jsPubOptions_Init(&po);
    po.ExpectStream = r->stream;
    for (int i = 0; i < rd.n && s == NATS_OK; i++)
        s = js_PublishMsgAsync(r->js, &rd.msgs[i], &po); /* takes it */
    if (s == NATS_OK) {
        jsPubOptions_Init(&po);
        po.MaxWait = 10000;
        s = js_PublishAsyncComplete(r->js, &po);
    }
    if (s != NATS_OK || atomic_load(&r->failed) > 0 ||
        atomic_load(&r->acked) != rd.n) {
        pthread_mutex_lock(&r->mu);
        snprintf(err, sizeof err, "%s",
                 r->why[0] ? r->why : natsStatus_GetText(s));
        r->st.failures++;
        pthread_mutex_unlock(&r->mu);
        fprintf(stderr,
                "cqrsd: relay: publishing positions %lld..%lld: %s "
                "(published again)\n",
                (long long)r->ckpt + 1, (long long)rd.last, err);
        *nats_failed = 1;
        result = CQ_EIO;
        goto done;
    }
    if (save_ckpt(r, rd.last) != CQ_OK) {
        fprintf(stderr, "cqrsd: relay: saving the checkpoint %lld: %s\n",
                (long long)rd.last, cq_rdb_errmsg(r->db));
        result = CQ_EIO;
        goto done;
    }
    {
        double lag = 0;
        int64_t ms;
        if (rd.last < head &&
            cq_store_recorded_at(r->store, rd.last + 1, &ms, NULL, 0) == CQ_OK)
            lag = (double)(cq_now_ms() - ms) / 1000.0;
        pthread_mutex_lock(&r->mu);
        r->st.checkpoint = rd.last;
        r->st.published += rd.n;
        r->st.duplicates += atomic_load(&r->dups);
        r->st.lag_seconds = lag < 0 ? 0 : lag;
        pthread_mutex_unlock(&r->mu);
    }
    result = rd.n;
done:
    for (int i = 0; i < rd.n; i++)
        natsMsg_Destroy(rd.msgs[i]); /* NULL once published */
    free(rd.msgs);
    return result;
}

/* ---- waiting ---- */

static void deadline_in(struct timespec *ts, int ms)
{
    clock_gettime(CLOCK_REALTIME, ts);
    ts->tv_sec += ms / 1000;
    ts->tv_nsec += (long)(ms % 1000) * 1000000;
    if (ts->tv_nsec >= 1000000000) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000;
    }
}

/* Sleep up to ms, or until woken or stopped. With a PostgreSQL store it
 * also wakes on cq_events (another node's commit). */
static void wait_for(cq_relay *r, int ms)
{
    int64_t end = (int64_t)(cq_mono_ns() / 1000000) + ms;

    for (;;) {
        int64_t left = end - (int64_t)(cq_mono_ns() / 1000000);
        pthread_mutex_lock(&r->mu);
        if (r->stopping || r->woken || left <= 0) {
            r->woken = 0;
            pthread_mutex_unlock(&r->mu);
            return;
        }
        if (r->db == NULL || r->store_uri == NULL) {
            struct timespec ts;
            deadline_in(&ts, (int)left);
            pthread_cond_timedwait(&r->cv, &r->mu, &ts);
            pthread_mutex_unlock(&r->mu);
            continue;
        }
        pthread_mutex_unlock(&r->mu);
        char ch[64], pl[64];
        int got = cq_rdb_wait_notify(r->db, left < 50 ? (int)left : 50, ch,
                                     sizeof ch, pl, sizeof pl);
        if (got > 0)
            return;
        if (got < 0) {
            fprintf(stderr, "cqrsd: relay: the store's connection failed\n");
            drop_db(r); /* and the lock with it */
            return;
        }
    }
}

int cq_relay_run(cq_relay *r)
{
    for (;;) {
        int stop, nats_failed = 0, n;

        pthread_mutex_lock(&r->mu);
        stop = r->stopping;
        pthread_mutex_unlock(&r->mu);
        if (stop)
            break;
        if (!r->locked) {
            claim(r);
            if (!r->locked) {
                wait_for(r, 1000);
                continue;
            }
        }
        if (r->js == NULL && connect_nats(r) != CQ_OK) {
            wait_for(r, 1000);
            continue;
        }
        pthread_mutex_lock(&r->mu);
        r->st.active = 1;
        pthread_mutex_unlock(&r->mu);
        n = publish_round(r, &nats_failed);
        if (n < 0) {
            if (nats_failed)
                drop_nats(r);
            else if (r->db != NULL && cq_rdb_errcode(r->db) == CQ_EIO)
                drop_db(r);
            wait_for(r, 1000);
        } else if (n == 0) {
            wait_for(r, r->poll_ms);
        }
    }
    drop_nats(r);
    drop_db(r);
    return CQ_OK;
}

static void *relay_main(void *arg)
{
    pthread_setname_np(pthread_self(), "cq-relay");
    cq_relay_run(arg);
    return NULL;
}

int cq_relay_start(cq_relay *r)
{
    if (pthread_create(&r->th, NULL, relay_main, r) != 0)
        return CQ_ENOMEM;
    r->started = 1;
    return CQ_OK;
}

void cq_relay_wake(cq_relay *r)
{
    if (r == NULL)
        return;
    pthread_mutex_lock(&r->mu);
    r->woken = 1;
    pthread_cond_signal(&r->cv);
    pthread_mutex_unlock(&r->mu);
}

void cq_relay_stop(cq_relay *r)
{
    if (r == NULL)
        return;
    pthread_mutex_lock(&r->mu);
    r->stopping = 1;
    pthread_cond_signal(&r->cv);
    pthread_mutex_unlock(&r->mu);
}

void cq_relay_free(cq_relay *r)
{
    if (r == NULL)
        return;
    cq_relay_stop(r);
    if (r->started)
        pthread_join(r->th, NULL);
    else {
        drop_nats(r);
        drop_db(r);
    }
    pthread_mutex_destroy(&r->mu);
    pthread_cond_destroy(&r->cv);
    free(r->store_uri);
    free(r->dir);
    free(r->bus);
    free(r->stream);
    free(r->prefix);
    free(r);
}

void cq_relay_get_stats(cq_relay *r, cq_relay_stats *out)
{
    pthread_mutex_lock(&r->mu);
    *out = r->st;
    pthread_mutex_unlock(&r->mu);
}

size_t cq_relay_metrics(cq_relay *r, char *buf, size_t cap)
{
    cq_relay_stats s;
    int64_t lag;
    int n;

    cq_relay_get_stats(r, &s);
    lag = s.head > s.checkpoint ? s.head - s.checkpoint : 0;
    n = snprintf(
        buf, cap,
        "# HELP cqrsd_relay_active 1 while this relay holds the relay lock "
        "and is connected to NATS\n"
        "# TYPE cqrsd_relay_active gauge\n"
        "cqrsd_relay_active %d\n"
        "# HELP cqrsd_relay_checkpoint Last position JetStream acknowledged\n"
        "# TYPE cqrsd_relay_checkpoint gauge\n"
        "cqrsd_relay_checkpoint %lld\n"
        "# HELP cqrsd_relay_lag_events Events committed but not yet "
        "acknowledged by JetStream\n"
        "# TYPE cqrsd_relay_lag_events gauge\n"
        "cqrsd_relay_lag_events %lld\n"
        "# HELP cqrsd_relay_lag_seconds Age of the oldest event not yet "
        "acknowledged by JetStream\n"
        "# TYPE cqrsd_relay_lag_seconds gauge\n"
        "cqrsd_relay_lag_seconds %.3f\n"
        "# HELP cqrsd_relay_published_total Events JetStream acknowledged\n"
        "# TYPE cqrsd_relay_published_total counter\n"
        "cqrsd_relay_published_total %lld\n"
        "# HELP cqrsd_relay_duplicates_total Of them, dropped by JetStream "
        "as duplicates\n"
        "# TYPE cqrsd_relay_duplicates_total counter\n"
        "cqrsd_relay_duplicates_total %lld\n"
        "# HELP cqrsd_relay_failures_total Publish rounds that failed and "
        "were published again\n"
        "# TYPE cqrsd_relay_failures_total counter\n"
        "cqrsd_relay_failures_total %lld\n",
        s.active, (long long)s.checkpoint, (long long)lag,
        lag == 0 ? 0.0 : s.lag_seconds, (long long)s.published,
        (long long)s.duplicates, (long long)s.failures);
    if (n < 0)
        return 0;
    return (size_t)n < cap ? (size_t)n : cap ? cap - 1 : 0;
}

void cq_bus_shutdown(void)
{
    nats_Close();
}

/* A scrape-time collector (base/metrics.h) of the relay's metrics. */
static void collect_metrics(void *arg, cq_strbuf *out)
{
    char buf[2048];
    size_t n = cq_relay_metrics(arg, buf, sizeof buf);

    buf[n] = '\0';
    cq_strbuf_puts(out, buf);
}

int cq_relay_add_metrics(cq_relay *r, struct cq_metrics *m)
{
    return cq_metrics_collect(m, collect_metrics, r);
}
