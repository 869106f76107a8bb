/*
 * bench_nats_pub -- raw libnats publishing to JetStream: the reference for
 * the relay's publish rate (bench/bus.sh).
 *
 * It takes one message the relay published (--like STREAM, --seq N: its
 * subject, headers and body, so the same size and the same header work),
 * makes a stream of its own (--stream, subjects "<--prefix>.>", the same
 * storage and duplicate window as STREAM), and publishes --count copies,
 * each with a Nats-Msg-Id of its own, in two ways:
 *
 *   rounds: as the relay does -- --window messages published
 *           asynchronously, then wait for all their acknowledgements,
 *           then the next round;
 *   stream: asynchronous publishing with at most --window unacknowledged
 *           at any time, waiting only at the end (libnats's best).
 *
 * Prints what it did and one line per mode for bench/bus.sh:
 *   BENCH kind=nats_raw mode=rounds msgs=N secs=S rate=R msg_bytes=B
 * Deletes its stream at the end. Exit status 0 when it ran, 1 when not.
 *
 * Usage: bench_nats_pub --url nats://127.0.0.1:4222 --like CQRS_EVENTS
 *          [--seq 1] [--count 20000] [--window 256]
 *          [--stream BENCH_RAW] [--prefix bench.rawev]
 *
 * Or, to time what the relay published: bench_nats_pub --url URL
 *   --info STREAM [--wait-msgs N] [--timeout SECONDS] waits (bounded) until
 *   STREAM holds at least N messages and prints
 *   BENCH kind=stream msgs=N bytes=B span_secs=S rate=R waited_secs=W
 *   where span is the time between its first and last message (their
 *   JetStream timestamps) and rate = (msgs - 1) / span.
 */
#include <inttypes.h>
#include <nats/nats.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct opts {
    const char *url, *like, *stream, *prefix, *info;
    uint64_t seq, wait_msgs;
    long count;
    int window;
    double timeout;
} opts;

static atomic_long acked, failed;

static void on_ack(jsCtx *js, natsMsg *msg, jsPubAck *pa, jsPubAckErr *pae,
                   void *closure)
{
    (void)js;
    (void)closure;
    if (pae != NULL)
        atomic_fetch_add(&failed, 1);
    else if (pa != NULL)
        atomic_fetch_add(&acked, 1);
    natsMsg_Destroy(msg);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* The template: subject, headers (but Nats-Msg-Id) and body of one
 * message of the relay's stream. */
typedef struct tmpl {
    char subject[1024];
    const char **keys;
    char **values;
    int nkeys;
    const char *data;
    int len;
    natsMsg *orig;
} tmpl;

static int load_template(jsCtx *js, const opts *o, tmpl *t)
{
    jsErrCode jerr = 0;
    natsStatus s = js_GetMsg(&t->orig, js, o->like, o->seq, NULL, &jerr);
    const char **keys = NULL;
    int n = 0;

    if (s != NATS_OK) {
        fprintf(stderr, "bench_nats_pub: message %" PRIu64 " of %s: %s (%d)\n",
                o->seq, o->like, natsStatus_GetText(s), (int)jerr);
        return -1;
    }
    /* the relay's subject, moved under our prefix: PREFIX.<category>.<id> */
    {
        const char *subj = natsMsg_GetSubject(t->orig), *rest = subj;
        int dots = 0;
        for (const char *p = subj; *p; p++)
            if (*p == '.')
                dots++;
        /* keep the last two tokens (category, stream id) */
        for (int skip = dots - 1; skip > 0 && rest; skip--)
            rest = strchr(rest, '.') ? strchr(rest, '.') + 1 : NULL;
        snprintf(t->subject, sizeof t->subject, "%s.%s", o->prefix,
                 rest ? rest : "x.x");
    }
    s = natsMsgHeader_Keys(t->orig, &keys, &n);
    if (s != NATS_OK && s != NATS_NOT_FOUND)
        return -1;
    t->keys = calloc((size_t)n + 1, sizeof *t->keys);
    t->values = calloc((size_t)n + 1, sizeof *t->values);
    if (!t->keys || !t->values)
        return -1;
    for (int i = 0; i < n; i++) {
        const char *v = NULL;
        if (strcmp(keys[i], "Nats-Msg-Id") == 0)
            continue;
        if (natsMsgHeader_Get(t->orig, keys[i], &v) != NATS_OK || !v)
            continue;
        t->keys[t->nkeys] = keys[i];
        t->values[t->nkeys] = strdup(v);
        if (!t->values[t->nkeys])
            return -1;
        t->nkeys++;
    }
    free((void *)keys);
    t->data = natsMsg_GetData(t->orig);
    t->len = natsMsg_GetDataLength(t->orig);
    return 0;
}

static natsStatus make_msg(const tmpl *t, long i, const char *tag,
                           natsMsg **out)
{
    natsMsg *m = NULL;
    char id[96];
    natsStatus s = natsMsg_Create(&m, t->subject, NULL, t->data, t->len);

    for (int k = 0; s == NATS_OK && k < t->nkeys; k++)
        s = natsMsgHeader_Set(m, t->keys[k], t->values[k]);
    /* as long as the relay's ids (UUIDs: 36 characters) */
    snprintf(id, sizeof id, "raw-%s-%029ld", tag, i);
    if (s == NATS_OK)
        s = natsMsgHeader_Set(m, "Nats-Msg-Id", id);
    if (s != NATS_OK) {
        natsMsg_Destroy(m);
        return s;
    }
    *out = m;
    return NATS_OK;
}

/* Publish o->count copies; rounds: wait for every ack each o->window. */
static int run(jsCtx *js, const opts *o, const tmpl *t, int rounds,
               double *secs)
{
    jsPubOptions po, wait;
    natsStatus s = NATS_OK;
    double t0;
    const char *tag = rounds ? "r" : "s";

    atomic_store(&acked, 0);
    atomic_store(&failed, 0);
    jsPubOptions_Init(&po);
    po.ExpectStream = o->stream;
    jsPubOptions_Init(&wait);
    wait.MaxWait = 30000;
    t0 = now_s();
    for (long i = 0; i < o->count && s == NATS_OK; i++) {
        natsMsg *m = NULL;
        s = make_msg(t, i, tag, &m);
        if (s == NATS_OK)
            s = js_PublishMsgAsync(js, &m, &po);
        natsMsg_Destroy(m); /* NULL once published */
        if (s == NATS_OK && rounds && (i + 1) % o->window == 0)
            s = js_PublishAsyncComplete(js, &wait);
    }
    if (s == NATS_OK)
        s = js_PublishAsyncComplete(js, &wait);
    *secs = now_s() - t0;
    if (s != NATS_OK || atomic_load(&failed) != 0 ||
        atomic_load(&acked) != o->count) {
        fprintf(stderr,
                "bench_nats_pub: %s: %s; %ld acknowledged, %ld failed of %ld\n",
                rounds ? "rounds" : "stream", natsStatus_GetText(s),
                atomic_load(&acked), atomic_load(&failed), o->count);
        return -1;
    }
    return 0;
}

/* --info: wait for the stream to hold o->wait_msgs, then describe it. */
static int info(jsCtx *js, const opts *o)
{
    double t0 = now_s(), waited;
    jsStreamInfo *si = NULL;
    natsStatus s;

    for (;;) {
        jsErrCode jerr = 0;
        s = js_GetStreamInfo(&si, js, o->info, NULL, &jerr);
        if (s == NATS_OK && si->State.Msgs >= o->wait_msgs)
            break;
        jsStreamInfo_Destroy(si);
        si = NULL;
        if (now_s() - t0 > o->timeout) {
            fprintf(stderr, "bench_nats_pub: %s does not hold %" PRIu64
                            " messages within %.0f s (%s)\n",
                    o->info, o->wait_msgs, o->timeout, natsStatus_GetText(s));
            return -1;
        }
        nats_Sleep(20);
    }
    waited = now_s() - t0;
    double span = (double)(si->State.LastTime - si->State.FirstTime) / 1e9;
    printf("BENCH kind=stream msgs=%" PRIu64 " bytes=%" PRIu64
           " span_secs=%.4f rate=%.1f waited_secs=%.3f\n",
           si->State.Msgs, si->State.Bytes, span,
           span > 0 ? (double)(si->State.Msgs - 1) / span : 0.0, waited);
    jsStreamInfo_Destroy(si);
    return 0;
}

static void usage(void)
{
    fprintf(stderr,
            "usage: bench_nats_pub --url URL --like STREAM [--seq N]"
            " [--count N] [--window N]\n"
            "         [--stream NAME] [--prefix SUBJECT-PREFIX]\n"
            "       bench_nats_pub --url URL --info STREAM [--wait-msgs N]"
            " [--timeout SECONDS]\n");
}

int main(int argc, char **argv)
{
    opts o = {NULL, NULL, "BENCH_RAW", "bench.rawev", NULL, 1, 0, 20000, 256,
              120.0};
    natsConnection *nc = NULL;
    natsOptions *no = NULL;
    jsCtx *js = NULL;
    jsOptions jo;
    jsStreamInfo *like = NULL, *si = NULL;
    jsStreamConfig sc;
    jsErrCode jerr = 0;
    tmpl t;
    char subj[256];
    const char *subjects[1] = {subj};
    natsStatus s;
    int status = 1;

    memset(&t, 0, sizeof t);
    for (int i = 1; i < argc; i += 2) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (v == NULL) {
            usage();
            return 1;
        }
        if (!strcmp(a, "--url"))
            o.url = v;
        else if (!strcmp(a, "--like"))
            o.like = v;
        else if (!strcmp(a, "--seq"))
            o.seq = strtoull(v, NULL, 10);
        else if (!strcmp(a, "--count"))
            o.count = strtol(v, NULL, 10);
        else if (!strcmp(a, "--window"))
            o.window = (int)strtol(v, NULL, 10);
        else if (!strcmp(a, "--stream"))
            o.stream = v;
        else if (!strcmp(a, "--prefix"))
            o.prefix = v;
        else if (!strcmp(a, "--info"))
            o.info = v;
        else if (!strcmp(a, "--wait-msgs"))
            o.wait_msgs = strtoull(v, NULL, 10);
        else if (!strcmp(a, "--timeout"))
            o.timeout = strtod(v, NULL);
        else {
            usage();
            return 1;
        }
    }
    if (!o.url || (!o.like && !o.info) || o.count < 1 || o.window < 1 ||
        o.seq < 1 || o.timeout <= 0) {
        usage();
        return 1;
    }
    s = natsOptions_Create(&no);
    if (s == NATS_OK)
        s = natsOptions_SetURL(no, o.url);
    if (s == NATS_OK)
        s = natsConnection_Connect(&nc, no);
    if (s == NATS_OK) {
        jsOptions_Init(&jo);
        jo.Wait = 10000;
        jo.PublishAsync.MaxPending = o.window;
        jo.PublishAsync.AckHandler = on_ack;
        s = natsConnection_JetStream(&js, nc, &jo);
    }
    if (s != NATS_OK) {
        fprintf(stderr, "bench_nats_pub: %s: %s\n", o.url,
                natsStatus_GetText(s));
        goto done;
    }
    if (o.info != NULL) {
        status = info(js, &o) == 0 ? 0 : 1;
        goto done;
    }
    s = js_GetStreamInfo(&like, js, o.like, NULL, &jerr);
    if (s != NATS_OK) {
        fprintf(stderr, "bench_nats_pub: stream %s: %s (%d)\n", o.like,
                natsStatus_GetText(s), (int)jerr);
        goto done;
    }
    if (load_template(js, &o, &t) != 0)
        goto done;
    js_DeleteStream(js, o.stream, NULL, NULL); /* a leftover: start afresh */
    snprintf(subj, sizeof subj, "%s.>", o.prefix);
    jsStreamConfig_Init(&sc);
    sc.Name = o.stream;
    sc.Subjects = subjects;
    sc.SubjectsLen = 1;
    sc.Storage = like->Config->Storage;
    sc.Duplicates = like->Config->Duplicates;
    jerr = 0;
    s = js_AddStream(&si, js, &sc, NULL, &jerr);
    if (s != NATS_OK) {
        fprintf(stderr, "bench_nats_pub: add stream %s: %s (%d)\n", o.stream,
                natsStatus_GetText(s), (int)jerr);
        goto done;
    }
    printf("bench_nats_pub: %ld copies of %s message %" PRIu64
           " (%d body bytes, %d headers; %s holds %.0f stored bytes per"
           " message) to %s (%s storage, duplicate window %" PRId64
           " s), window %d\n",
           o.count, o.like, o.seq, t.len, t.nkeys + 1, o.like,
           like->State.Msgs ? (double)like->State.Bytes /
                                  (double)like->State.Msgs
                            : 0.0,
           o.stream,
           sc.Storage == js_FileStorage ? "file" : "memory",
           (int64_t)(sc.Duplicates / 1000000000), o.window);
    for (int rounds = 1; rounds >= 0; rounds--) {
        double secs = 0;
        jsStreamInfo *after = NULL;
        uint64_t bytes0 = 0, msgs0 = 0;
        if (js_GetStreamInfo(&after, js, o.stream, NULL, NULL) == NATS_OK) {
            bytes0 = after->State.Bytes;
            msgs0 = after->State.Msgs;
            jsStreamInfo_Destroy(after);
            after = NULL;
        }
        if (run(js, &o, &t, rounds, &secs) != 0)
            goto done;
        double bpm = 0;
        if (js_GetStreamInfo(&after, js, o.stream, NULL, NULL) == NATS_OK &&
            after->State.Msgs > msgs0)
            bpm = (double)(after->State.Bytes - bytes0) /
                  (double)(after->State.Msgs - msgs0);
        jsStreamInfo_Destroy(after);
        printf("  %-7s %ld msgs in %.3f s: %.0f msgs/s (%.0f stored bytes per"
               " message)\n",
               rounds ? "rounds" : "stream", o.count, secs,
               (double)o.count / secs, bpm);
        printf("BENCH kind=nats_raw mode=%s msgs=%ld secs=%.4f rate=%.1f"
               " msg_bytes=%.0f body_bytes=%d like_bytes=%.0f\n",
               rounds ? "rounds" : "stream", o.count, secs,
               (double)o.count / secs, bpm, t.len,
               like->State.Msgs ? (double)like->State.Bytes /
                                      (double)like->State.Msgs
                                : 0.0);
    }
    status = 0;
done:
    if (js != NULL && si != NULL)
        js_DeleteStream(js, o.stream, NULL, NULL);
    jsStreamInfo_Destroy(si);
    jsStreamInfo_Destroy(like);
    for (int i = 0; i < t.nkeys; i++)
        free(t.values[i]);
    free(t.keys);
    free(t.values);
    natsMsg_Destroy(t.orig);
    jsCtx_Destroy(js);
    natsConnection_Destroy(nc);
    natsOptions_Destroy(no);
    nats_Close();
    return status;
}
