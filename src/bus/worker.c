/*
 * worker.c -- the event source of `cqrsd project` (bus.h): each
 * asynchronous projection this process runs reads the bus through a
 * durable JetStream pull consumer of its own, cqrs-proj-NAME, and the
 * projection engine applies what it hands out (engine.h,
 * cq_engine_source; the engine's apply path, checkpoints, locks and
 * rebuilds are used unchanged).
 *
 * Ordering and the inbox. Messages fetched are held, sorted by their
 * Cqrs-Position, until the engine has committed them. read(from) first
 * acknowledges and drops every held message below `from` (the
 * projection's checkpoint + 1: applied already, by this process before a
 * crash, by another worker, by a serve node, or by a rebuild's replay),
 * then hands out held messages at positions from, from+1, ... and stops
 * at the first gap: a missing position is waited for (it comes when the
 * relay publishes it, or when JetStream redelivers it after the ack
 * wait), never skipped. applied(pos) acknowledges every held message up
 * to pos, after the engine's commit: a crash between the two redelivers
 * them, and they are dropped as below the checkpoint.
 *
 * Threads: read and applied run on the engine's projector thread only;
 * the NATS connection's own threads deliver nothing to us (pull
 * subscriptions are fetched synchronously).
 */
#include <jansson.h>
#include <nats/nats.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/base.h"
#include "bus/bus.h"

#define SID_CAP 2048
#define TYPE_CAP 512
#define META_CAP 65536

typedef struct held {
    natsMsg *m;
    int64_t pos;
} held;

typedef struct consumer {
    int index; /* the engine's projection index; -1: unused slot */
    char durable[160];
    natsSubscription *sub;
    held *q; /* sorted by pos */
    int nq, capq;
    int64_t waiting_for; /* a gap logged for this position */
    int quiet;           /* subscribe failures logged once */
    int64_t next_try_ms;
    int64_t next_info_ms;
    cq_worker_stats st; /* guarded by the worker's mu */
} consumer;

struct cq_worker {
    char *bus, *stream, *prefix;
    int batch;
    int64_t ack_wait_ms;
    natsConnection *nc;
    jsCtx *js;
    int64_t next_connect_ms;
    int quiet;
    consumer *c;
    int nc_slots;
    int64_t skipped;         /* held messages below the checkpoint, dropped */
    char *sid, *type, *meta; /* hand_out's scratch (projector thread) */
    pthread_mutex_t mu; /* guards the consumers' st, and c and nc_slots
                         * against their growth (slot) */
};

int cq_worker_new(const cq_worker_config *cfg, cq_worker **out, char *err,
                  size_t errcap)
{
    cq_worker *w = calloc(1, sizeof *w);

    *out = NULL;
    if (w == NULL)
        goto oom;
    w->bus = strdup(cfg->bus ? cfg->bus : "");
    w->stream = strdup(cfg->stream ? cfg->stream : CQ_BUS_STREAM);
    w->prefix = strdup(cfg->prefix ? cfg->prefix : CQ_BUS_PREFIX);
    w->batch = cfg->batch > 0 ? cfg->batch : 100;
    w->ack_wait_ms = cfg->ack_wait_ms > 0 ? cfg->ack_wait_ms : 5000;
    pthread_mutex_init(&w->mu, NULL);
    w->sid = malloc(SID_CAP);
    w->type = malloc(TYPE_CAP);
    w->meta = malloc(META_CAP);
    if (w->bus == NULL || w->stream == NULL || w->prefix == NULL ||
        w->sid == NULL || w->type == NULL || w->meta == NULL) {
        cq_worker_free(w);
        goto oom;
    }
    if (w->bus[0] == '\0') {
        snprintf(err, errcap, "worker: needs a bus URL");
        cq_worker_free(w);
        return CQ_EINVAL;
    }
    *out = w;
    return CQ_OK;
oom:
    snprintf(err, errcap, "worker: out of memory");
    return CQ_ENOMEM;
}

static void drop_held(consumer *c, int ack)
{
    for (int i = 0; i < c->nq; i++) {
        if (ack)
            natsMsg_Ack(c->q[i].m, NULL);
        natsMsg_Destroy(c->q[i].m);
    }
    c->nq = 0;
}

static void drop_nats(cq_worker *w)
{
    for (int i = 0; i < w->nc_slots; i++) {
        drop_held(&w->c[i], 0); /* redelivered to whoever runs it next */
        if (w->c[i].sub != NULL)
            natsSubscription_Destroy(w->c[i].sub);
        w->c[i].sub = NULL;
    }
    jsCtx_Destroy(w->js);
    w->js = NULL;
    if (w->nc != NULL) {
        natsConnection_Close(w->nc);
        natsConnection_Destroy(w->nc);
    }
    w->nc = NULL;
}

void cq_worker_free(cq_worker *w)
{
    if (w == NULL)
        return;
    drop_nats(w);
    for (int i = 0; i < w->nc_slots; i++)
        free(w->c[i].q);
    free(w->c);
    free(w->bus);
    free(w->stream);
    free(w->prefix);
    free(w->sid);
    free(w->type);
    free(w->meta);
    pthread_mutex_destroy(&w->mu);
    free(w);
}

/* The durable consumer's name: cqrs-proj-NAME, with every byte of NAME
 * but ASCII letters, digits, '-' and '_' written as '_'. */
void cq_worker_durable(const char *name, char *buf, size_t cap)
{
    size_t at = (size_t)snprintf(buf, cap, "cqrs-proj-");

    for (const char *p = name; *p && at + 1 < cap; p++) {
        char ch = *p;
        int keep = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
                   (ch >= '0' && ch <= '9') || ch == '-' || ch == '_';
        buf[at++] = keep ? ch : '_';
    }
    buf[at < cap ? at : cap - 1] = '\0';
}

static int connect_nats(cq_worker *w)
{
    natsOptions *o = NULL;
    natsStatus s;
    int64_t now = (int64_t)(cq_mono_ns() / 1000000);

    if (w->js != NULL)
        return CQ_OK;
    if (now < w->next_connect_ms)
        return CQ_EIO;
    w->next_connect_ms = now + 1000;
    s = natsOptions_Create(&o);
    if (s == NATS_OK)
        s = natsOptions_SetURL(o, w->bus);
    if (s == NATS_OK)
        s = natsOptions_SetTimeout(o, 2000);
    if (s == NATS_OK)
        s = natsOptions_SetMaxReconnect(o, -1);
    if (s == NATS_OK)
        s = natsOptions_SetReconnectWait(o, 250);
    if (s == NATS_OK)
        s = natsConnection_Connect(&w->nc, o);
    natsOptions_Destroy(o);
    if (s == NATS_OK)
        s = natsConnection_JetStream(&w->js, w->nc, NULL);
    if (s != NATS_OK) {
        if (!w->quiet++)
            fprintf(stderr,
                    "cqrsd: project: NATS %s: %s (tried again every "
                    "second)\n",
                    w->bus, natsStatus_GetText(s));
        drop_nats(w);
        return CQ_EIO;
    }
    if (w->quiet)
        fprintf(stderr, "cqrsd: project: connected to NATS %s again\n", w->bus);
    w->quiet = 0;
    return CQ_OK;
}

static consumer *slot(cq_worker *w, int index)
{
    if (index >= w->nc_slots) {
        /* under mu: cq_worker_get_stats reads w->c from the HTTP thread */
        consumer *c;
        pthread_mutex_lock(&w->mu);
        c = realloc(w->c, (size_t)(index + 1) * sizeof *c);
        if (c == NULL) {
            pthread_mutex_unlock(&w->mu);
            return NULL;
        }
        for (int i = w->nc_slots; i <= index; i++) {
            memset(&c[i], 0, sizeof c[i]);
            c[i].index = -1;
        }
        w->c = c;
        w->nc_slots = index + 1;
        pthread_mutex_unlock(&w->mu);
    }
    return &w->c[index];
}

/* The pull subscription on the durable consumer of projection `name`,
 * made (with the consumer, if missing) on first use. */
static int subscribe(cq_worker *w, consumer *c, const char *name)
{
    jsSubOptions so;
    jsConsumerInfo *ci = NULL;
    jsErrCode jerr = 0;
    char subj[512];
    natsStatus s;
    int64_t now = (int64_t)(cq_mono_ns() / 1000000);

    if (c->sub != NULL)
        return CQ_OK;
    if (now < c->next_try_ms)
        return CQ_EIO;
    c->next_try_ms = now + 1000;
    cq_worker_durable(name, c->durable, sizeof c->durable);
    snprintf(subj, sizeof subj, "%s.>", w->prefix);
    /* the consumer is made once (by whichever worker comes first) and
     * bound to as it is afterwards */
    s = js_GetConsumerInfo(&ci, w->js, w->stream, c->durable, NULL, &jerr);
    if (s == NATS_NOT_FOUND || jerr == JSConsumerNotFoundErr) {
        jsConsumerConfig cc;
        jsConsumerConfig_Init(&cc);
        cc.Durable = c->durable;
        cc.AckPolicy = js_AckExplicit;
        cc.AckWait = w->ack_wait_ms * (int64_t)1000000;
        cc.MaxDeliver = -1;
        cc.MaxAckPending = 10 * w->batch < 1000 ? 1000 : 10 * w->batch;
        cc.DeliverPolicy = js_DeliverAll;
        cc.FilterSubject = subj;
        jerr = 0;
        s = js_AddConsumer(&ci, w->js, w->stream, &cc, NULL, &jerr);
    }
    jsConsumerInfo_Destroy(ci);
    if (s == NATS_OK) {
        jsSubOptions_Init(&so);
        so.Stream = w->stream;
        so.Consumer = c->durable;
        s = js_PullSubscribe(&c->sub, w->js, subj, c->durable, NULL, &so,
                             &jerr);
    }
    if (s != NATS_OK) {
        const char *why = nats_GetLastError(NULL);
        if (!c->quiet++)
            fprintf(stderr,
                    "cqrsd: project: %s: consumer %s on stream %s: %s (js "
                    "error %d; tried again every second)\n",
                    name, c->durable, w->stream,
                    why != NULL ? why : natsStatus_GetText(s), (int)jerr);
        c->sub = NULL;
        if (s == NATS_CONNECTION_CLOSED || s == NATS_NO_SERVER)
            drop_nats(w);
        return CQ_EIO;
    }
    c->quiet = 0;
    fprintf(stderr, "cqrsd: project: %s: consuming %s (durable %s)\n", name,
            w->stream, c->durable);
    return CQ_OK;
}

static int64_t msg_position(natsMsg *m)
{
    const char *v = NULL;
    char *end;
    long long p;

    if (natsMsgHeader_Get(m, CQ_BUS_H_POSITION, &v) != NATS_OK || v == NULL)
        return -1;
    p = strtoll(v, &end, 10);
    return end == v || *end != '\0' || p < 1 ? -1 : p;
}

/* Hold m (taken) in c's queue by position; one below `from`, a second
 * copy of a held position, or one without a position is acknowledged and
 * dropped. */
static void hold(cq_worker *w, consumer *c, natsMsg *m, int64_t from)
{
    int64_t pos = msg_position(m);
    int k;

    if (pos < from) {
        if (pos < 0)
            fprintf(stderr,
                    "cqrsd: project: a message on %s without a valid %s "
                    "header: dropped\n",
                    natsMsg_GetSubject(m), CQ_BUS_H_POSITION);
        else
            w->skipped++;
        natsMsg_Ack(m, NULL);
        natsMsg_Destroy(m);
        return;
    }
    for (k = c->nq; k > 0 && c->q[k - 1].pos > pos; k--)
        ;
    if (k > 0 && c->q[k - 1].pos == pos) {
        /* the same event again (redelivered, or published twice) */
        natsMsg_Ack(m, NULL);
        natsMsg_Destroy(m);
        return;
    }
    if (c->nq == c->capq) {
        int cap = c->capq ? 2 * c->capq : 64;
        held *q = realloc(c->q, (size_t)cap * sizeof *q);
        if (q == NULL) { /* not held: redelivered after the ack wait */
            natsMsg_Destroy(m);
            return;
        }
        c->q = q;
        c->capq = cap;
    }
    memmove(&c->q[k + 1], &c->q[k], (size_t)(c->nq - k) * sizeof *c->q);
    c->q[k] = (held){m, pos};
    c->nq++;
}

int cq_worker_fetch(natsSubscription *sub, int want, int64_t timeout_ms,
                    void (*take)(void *arg, natsMsg *m), void *arg,
                    int *status)
{
    int got = 0;
    natsStatus s = NATS_OK;

    while (got < want) {
        natsMsgList list = {0};
        int queued = 0, n;
        if (natsSubscription_GetPending(sub, &queued, NULL) != NATS_OK)
            queued = 0;
        /* with messages queued, one at a time: libnats 3.4's _fetch
         * overflows its array of n when it finds k queued, n/2 < k < n
         * (nats.c #749); with n = 1 it finds at most n */
        n = queued > 0 ? 1 : want - got;
        s = natsSubscription_Fetch(&list, sub, n, timeout_ms, NULL);
        for (int i = 0; i < list.Count; i++) {
            take(arg, list.Msgs[i]);
            list.Msgs[i] = NULL;
        }
        got += list.Count;
        natsMsgList_Destroy(&list);
        if (queued == 0 || s != NATS_OK)
            break;
    }
    *status = (int)s;
    return got;
}

typedef struct take_ctx {
    cq_worker *w;
    consumer *c;
    int64_t from;
} take_ctx;

static void take_msg(void *arg, natsMsg *m)
{
    take_ctx *t = arg;
    hold(t->w, t->c, m, t->from);
}

/* A header's text, unescaped into buf; NULL when missing or malformed. */
static const char *text_header(natsMsg *m, const char *key, char *buf,
                               size_t cap)
{
    const char *v = NULL;

    if (natsMsgHeader_Get(m, key, &v) != NATS_OK || v == NULL ||
        strlen(v) >= cap)
        return NULL;
    memcpy(buf, v, strlen(v) + 1);
    return cq_bus_unescape(buf) == CQ_OK ? buf : NULL;
}

static int int_header(natsMsg *m, const char *key, int64_t *out)
{
    const char *v = NULL;
    char *end;

    if (natsMsgHeader_Get(m, key, &v) != NATS_OK || v == NULL)
        return -1;
    *out = strtoll(v, &end, 10);
    return end == v || *end != '\0' ? -1 : 0;
}

/* The event that m carries, handed to cb. CQ_OK with *stop from cb, or
 * CQ_ECORRUPT (a header missing or malformed) with a message. */
static int hand_out(cq_worker *w, natsMsg *m, int64_t pos, cq_event_cb cb,
                    void *cbarg, int *stop, char *err, size_t errcap)
{
    char *sid = w->sid, *type = w->type, *meta = w->meta;
    int64_t version = 0, schema = 0, recorded = 0;
    cq_stored_event ev;

    if (text_header(m, CQ_BUS_H_STREAM, sid, SID_CAP) == NULL ||
        text_header(m, CQ_BUS_H_TYPE, type, TYPE_CAP) == NULL ||
        int_header(m, CQ_BUS_H_VERSION, &version) != 0 ||
        int_header(m, CQ_BUS_H_SCHEMA, &schema) != 0 ||
        int_header(m, CQ_BUS_H_RECORDED, &recorded) != 0 || schema < 0 ||
        schema > 1000000 || version < 1) {
        snprintf(err, errcap,
                 "the message of position %lld lacks a valid Cqrs-* header "
                 "(waiting for a good copy of it)",
                 (long long)pos);
        return CQ_ECORRUPT;
    }
    if (text_header(m, CQ_BUS_H_METADATA, meta, META_CAP) == NULL)
        snprintf(meta, META_CAP, "{}");
    ev = (cq_stored_event){
        pos,  sid,         version,
        type, (int)schema, natsMsg_GetData(m) ? natsMsg_GetData(m) : "",
        meta, recorded};
    *stop = cb(cbarg, &ev);
    return CQ_OK;
}

/* Once a second: the consumer's counters from the server, for metrics. */
static void refresh_stats(cq_worker *w, consumer *c)
{
    jsConsumerInfo *ci = NULL;
    int64_t now = (int64_t)(cq_mono_ns() / 1000000);
    cq_worker_stats st;

    if (now < c->next_info_ms)
        return;
    c->next_info_ms = now + 1000;
    memset(&st, 0, sizeof st);
    if (natsSubscription_GetConsumerInfo(&ci, c->sub, NULL, NULL) == NATS_OK) {
        st.pending = (int64_t)ci->NumPending;
        st.ack_pending = ci->NumAckPending;
        st.redelivered = ci->NumRedelivered;
        jsConsumerInfo_Destroy(ci);
    }
    st.held = c->nq;
    st.skipped = w->skipped;
    st.known = 1;
    pthread_mutex_lock(&w->mu);
    c->st = st;
    pthread_mutex_unlock(&w->mu);
}

static int source_read(void *arg, int projection, const char *name,
                       int64_t from, int limit, cq_event_cb cb, void *cbarg,
                       char *err, size_t errcap)
{
    cq_worker *w = arg;
    consumer *c = slot(w, projection);
    int ready = 0, k, stop = 0, rc = CQ_OK;
    natsConnStatus cs;

    if (c == NULL) {
        snprintf(err, errcap, "out of memory");
        return CQ_ENOMEM;
    }
    c->index = projection;
    if (connect_nats(w) != CQ_OK || subscribe(w, c, name) != CQ_OK) {
        /* logged once; nothing to hand out until NATS is back */
        struct timespec ts = {0, 100 * 1000000};
        nanosleep(&ts, NULL);
        return CQ_OK;
    }
    /* the inbox: what the checkpoint covers is done */
    for (k = 0; k < c->nq && c->q[k].pos < from; k++) {
        natsMsg_Ack(c->q[k].m, NULL);
        natsMsg_Destroy(c->q[k].m);
        w->skipped++;
    }
    if (k > 0)
        memmove(c->q, c->q + k, (size_t)(c->nq - k) * sizeof *c->q);
    c->nq -= k;
    while (ready < c->nq && c->q[ready].pos == from + ready)
        ready++;
    cs = natsConnection_Status(w->nc);
    if (cs == NATS_CONN_STATUS_CLOSED) {
        drop_nats(w);
        return CQ_OK;
    }
    if (cs != NATS_CONN_STATUS_CONNECTED && ready == 0) {
        /* no pull requests while reconnecting: libnats would buffer them
         * and send them all at once on reconnect, and their answers would
         * come late, queued on the subscription */
        struct timespec ts = {0, 100 * 1000000};
        nanosleep(&ts, NULL);
    } else if (cs == NATS_CONN_STATUS_CONNECTED && ready < limit &&
               c->nq < 20 * limit) {
        take_ctx t = {w, c, from};
        int st = NATS_OK;
        natsStatus s;
        /* wait only when there is nothing to hand out; never less than
         * 20 ms, so that libnats asks the server for 10 ms less and its
         * answers come before the fetch gives up, not queued for later */
        cq_worker_fetch(c->sub, limit - ready, ready > 0 ? 20 : 100, take_msg,
                        &t, &st);
        s = (natsStatus)st;
        if (s == NATS_CONNECTION_CLOSED) {
            drop_nats(w);
            return CQ_OK;
        }
        if (s != NATS_OK && s != NATS_TIMEOUT && !c->quiet++)
            fprintf(stderr, "cqrsd: project: %s: fetch: %s\n", name,
                    natsStatus_GetText(s));
        else if (s == NATS_OK || s == NATS_TIMEOUT)
            c->quiet = 0;
        ready = 0;
        while (ready < c->nq && c->q[ready].pos == from + ready)
            ready++;
    }
    if (ready == 0 && c->nq > 0 && c->waiting_for != from) {
        c->waiting_for = from;
        fprintf(stderr,
                "cqrsd: project: %s: waiting for position %lld (holding "
                "%lld..%lld): a gap is waited for, never skipped\n",
                name, (long long)from, (long long)c->q[0].pos,
                (long long)c->q[c->nq - 1].pos);
    }
    refresh_stats(w, c);
    for (k = 0; k < ready && k < limit && !stop && rc == CQ_OK; k++)
        rc = hand_out(w, c->q[k].m, c->q[k].pos, cb, cbarg, &stop, err, errcap);
    return rc == CQ_ECORRUPT && k > 1 ? CQ_OK : rc;
}

static void source_applied(void *arg, int projection, const char *name,
                           int64_t position)
{
    cq_worker *w = arg;
    consumer *c = projection < w->nc_slots ? &w->c[projection] : NULL;
    int k;

    (void)name;
    if (c == NULL)
        return;
    for (k = 0; k < c->nq && c->q[k].pos <= position; k++) {
        natsMsg_Ack(c->q[k].m, NULL);
        natsMsg_Destroy(c->q[k].m);
    }
    if (k > 0)
        memmove(c->q, c->q + k, (size_t)(c->nq - k) * sizeof *c->q);
    c->nq -= k;
}

cq_engine_source cq_worker_source(cq_worker *w)
{
    cq_engine_source s = {source_read, source_applied, w};
    return s;
}

void cq_worker_get_stats(cq_worker *w, int projection, cq_worker_stats *out)
{
    pthread_mutex_lock(&w->mu);
    if (projection >= 0 && projection < w->nc_slots)
        *out = w->c[projection].st;
    else
        memset(out, 0, sizeof *out);
    pthread_mutex_unlock(&w->mu);
}
