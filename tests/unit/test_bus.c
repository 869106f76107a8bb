/*
 * test_bus.c -- the bus's message format and the relay, against a real
 * nats-server with JetStream (ctest's `nats` fixture: CQ_TEST_NATS_DIR)
 * and an embedded SQLite store (test_bus pg: a PostgreSQL one).
 *
 * Each case uses a JetStream stream and subject prefix of its own, so the
 * cases share one server.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>
#include <jansson.h>
#include <nats/nats.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include "base/strbuf.h"

#include "base/base.h"
#include "bus/bus.h"
#include "pgtest.h"
#include "projection/engine.h"
#include "store/rdb.h"
#include "store/store.h"

static int use_pg;
static char nats_url[256];

/* ---- the message format ---- */

static void test_subject(void **state)
{
    char b[256];
    (void)state;
    assert_int_equal(cq_bus_subject("cqrs.events", "order-42", b, sizeof b),
                     CQ_OK);
    assert_string_equal(b, "cqrs.events.order.order-42");
    assert_int_equal(cq_bus_subject("p", "a.b*c>d e", b, sizeof b), CQ_OK);
    assert_string_equal(b, "p.a%2Eb%2Ac%3Ed%20e.a%2Eb%2Ac%3Ed%20e");
    assert_int_equal(cq_bus_subject("p", "-x", b, sizeof b), CQ_OK);
    assert_string_equal(b, "p._.-x");
    assert_int_equal(cq_bus_subject("p", "caf\xc3\xa9-1", b, sizeof b), CQ_OK);
    assert_string_equal(b, "p.caf%C3%A9.caf%C3%A9-1");
    assert_int_equal(cq_bus_subject("p", "", b, sizeof b), CQ_EINVAL);
    assert_int_equal(cq_bus_subject("p", "abcdefgh", b, 8), CQ_EINVAL);
    /* the stream id token reads back */
    assert_int_equal(cq_bus_subject("p", "a.b%c-d", b, sizeof b), CQ_OK);
    char *tok = strrchr(b, '.') + 1;
    assert_int_equal(cq_bus_unescape(tok), CQ_OK);
    assert_string_equal(tok, "a.b%c-d");
}

static void test_header_value(void **state)
{
    char b[64];
    (void)state;
    assert_int_equal(cq_bus_header_value("a\r\nb%c", b, sizeof b), CQ_OK);
    assert_string_equal(b, "a%0D%0Ab%25c");
    assert_int_equal(cq_bus_unescape(b), CQ_OK);
    assert_string_equal(b, "a\r\nb%c");
    strcpy(b, "bad%zz");
    assert_int_equal(cq_bus_unescape(b), CQ_EINVAL);
    strcpy(b, "nul%00");
    assert_int_equal(cq_bus_unescape(b), CQ_EINVAL);
}

static void test_msg_id(void **state)
{
    char b[80];
    cq_stored_event ev = {7, "s-1", 1, "T", 1, "{}", "{\"event_id\":\"abc\"}",
                          0};
    (void)state;
    cq_bus_msg_id(&ev, b, sizeof b);
    assert_string_equal(b, "abc");
    ev.metadata = "{\"event_id\":\"a b\"}";
    cq_bus_msg_id(&ev, b, sizeof b);
    assert_string_equal(b, "cqrs-pos-7");
    ev.metadata = "not json";
    cq_bus_msg_id(&ev, b, sizeof b);
    assert_string_equal(b, "cqrs-pos-7");
}

/* ---- the HTTP endpoint of relay and worker processes ---- */

static int ready_flag;

static int t_ready(void *arg, cq_strbuf *out)
{
    (void)arg;
    cq_strbuf_puts(out, ready_flag ? "{\"status\":\"ready\"}"
                                   : "{\"status\":\"standby\"}");
    return ready_flag;
}

static void t_metrics(void *arg, cq_strbuf *out)
{
    (void)arg;
    cq_strbuf_puts(out, "x_total 1\n");
}

/* GET path on 127.0.0.1:port: the status code, the body into buf. */
static int http_get(unsigned port, const char *method, const char *path,
                    char *buf, size_t cap)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    char req[256];
    size_t got = 0;
    ssize_t n;
    int status = -1;

    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(fd, (struct sockaddr *)&a, sizeof a), 0);
    snprintf(req, sizeof req,
             "%s %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", method,
             path);
    assert_true(write(fd, req, strlen(req)) == (ssize_t)strlen(req));
    while (got + 1 < cap && (n = read(fd, buf + got, cap - 1 - got)) > 0)
        got += (size_t)n;
    buf[got] = '\0';
    close(fd);
    sscanf(buf, "HTTP/1.1 %d", &status);
    return status;
}

static void test_http(void **state)
{
    cq_bus_http *h = NULL;
    char err[256], body[2048];
    unsigned port;
    (void)state;

    assert_int_equal(cq_bus_http_start("nonsense", t_ready, t_metrics, NULL, &h,
                                       err, sizeof err),
                     CQ_EINVAL);
    assert_int_equal(cq_bus_http_start("127.0.0.1:0", t_ready, t_metrics, NULL,
                                       &h, err, sizeof err),
                     CQ_OK);
    port = cq_bus_http_port(h);
    assert_true(port > 0);
    ready_flag = 0;
    assert_int_equal(http_get(port, "GET", "/healthz", body, sizeof body), 200);
    assert_int_equal(http_get(port, "GET", "/readyz", body, sizeof body), 503);
    assert_non_null(strstr(body, "standby"));
    ready_flag = 1;
    assert_int_equal(http_get(port, "GET", "/readyz", body, sizeof body), 200);
    assert_non_null(strstr(body, "\"ready\""));
    assert_int_equal(http_get(port, "GET", "/metrics", body, sizeof body), 200);
    assert_non_null(strstr(body, "x_total 1"));
    assert_int_equal(http_get(port, "GET", "/nope", body, sizeof body), 404);
    assert_int_equal(http_get(port, "DELETE", "/healthz", body, sizeof body),
                     405);
    cq_bus_http_stop(h);
}

/* ---- the relay ---- */

typedef struct fx {
    char root[512];
    char *uri; /* PostgreSQL store, or NULL */
    cq_store *store;
    char stream[64], prefix[64];
    natsConnection *nc;
    jsCtx *js;
} fx;

static int fx_setup(void **state)
{
    static int n;
    fx *f = calloc(1, sizeof *f);
    cq_store_config sc = {.sync_full = 0};
    char err[512];

    snprintf(f->root, sizeof f->root, "%s/test_bus.XXXXXX",
             getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    assert_non_null(mkdtemp(f->root));
    if (use_pg) {
        f->uri = pgtest_database("bus");
        assert_non_null(f->uri);
        sc.uri = f->uri;
    } else {
        sc.dir = f->root;
    }
    assert_int_equal(cq_store_open(&sc, &f->store, err, sizeof err), CQ_OK);
    n++;
    snprintf(f->stream, sizeof f->stream, "T%d_%d_%d", (int)getpid(), use_pg,
             n);
    snprintf(f->prefix, sizeof f->prefix, "t%d.%d.%d", (int)getpid(), use_pg,
             n);
    assert_int_equal(natsConnection_ConnectTo(&f->nc, nats_url), NATS_OK);
    assert_int_equal(natsConnection_JetStream(&f->js, f->nc, NULL), NATS_OK);
    *state = f;
    return 0;
}

static int fx_teardown(void **state)
{
    fx *f = *state;
    char cmd[600];

    js_DeleteStream(f->js, f->stream, NULL, NULL);
    jsCtx_Destroy(f->js);
    natsConnection_Destroy(f->nc);
    cq_store_close(f->store);
    free(f->uri);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", f->root);
    if (system(cmd) != 0)
        return -1;
    free(f);
    return 0;
}

/* Append n events to stream `sid`, each with an event id in metadata. */
static void append(fx *f, const char *sid, int n)
{
    for (int i = 0; i < n; i++) {
        char meta[160], data[64];
        char id[37];
        assert_int_equal(cq_uuid7(id), CQ_OK);
        snprintf(meta, sizeof meta,
                 "{\"event_id\":\"%s\",\"correlation_id\":\"corr-%d\","
                 "\"causation_id\":\"cause-%d\"}",
                 id, i, i);
        snprintf(data, sizeof data, "{\"i\":%d}", i);
        cq_new_event ev = {"Happened", 2, data, meta};
        assert_int_equal(cq_store_append(f->store, sid, CQ_VERSION_ANY, &ev, 1,
                                         cq_now_ms(), NULL, NULL),
                         CQ_OK);
    }
}

static cq_relay *relay_new(fx *f)
{
    cq_relay_config rc = {.store = f->store,
                          .store_uri = f->uri,
                          .dir = f->root,
                          .bus = nats_url,
                          .stream = f->stream,
                          .prefix = f->prefix,
                          .window = 16,
                          .poll_ms = 50};
    cq_relay *r = NULL;
    char err[256];
    assert_int_equal(cq_relay_new(&rc, &r, err, sizeof err), CQ_OK);
    assert_int_equal(cq_relay_start(r), CQ_OK);
    return r;
}

/* Wait (up to 30 s) until r's checkpoint reaches pos. */
static void wait_checkpoint(cq_relay *r, int64_t pos)
{
    cq_relay_stats s;
    for (int i = 0; i < 3000; i++) {
        cq_relay_get_stats(r, &s);
        if (s.checkpoint >= pos)
            return;
        usleep(10000);
    }
    fail_msg("relay checkpoint %lld, wanted %lld", (long long)s.checkpoint,
             (long long)pos);
}

static uint64_t stream_msgs(fx *f)
{
    jsStreamInfo *si = NULL;
    uint64_t n;
    assert_int_equal(js_GetStreamInfo(&si, f->js, f->stream, NULL, NULL),
                     NATS_OK);
    n = si->State.Msgs;
    jsStreamInfo_Destroy(si);
    return n;
}

static const char *hdr(natsMsg *m, const char *key)
{
    const char *v = NULL;
    natsMsgHeader_Get(m, key, &v);
    return v;
}

/* Read every message of the stream in order (an ephemeral pull consumer)
 * and check positions 1..n, headers and bodies against the store. */
static void check_stream(fx *f, int64_t n)
{
    natsSubscription *sub = NULL;
    jsSubOptions so;
    char subj[128];
    int64_t next = 1;

    jsSubOptions_Init(&so);
    so.Stream = f->stream;
    snprintf(subj, sizeof subj, "%s.>", f->prefix);
    assert_int_equal(js_PullSubscribe(&sub, f->js, subj, NULL, NULL, &so, NULL),
                     NATS_OK);
    while (next <= n) {
        natsMsgList list = {0};
        natsStatus s = natsSubscription_Fetch(&list, sub, 64, 5000, NULL);
        assert_int_equal(s, NATS_OK);
        for (int i = 0; i < list.Count; i++) {
            natsMsg *m = list.Msgs[i];
            char want[32], meta[512];
            snprintf(want, sizeof want, "%lld", (long long)next);
            assert_string_equal(hdr(m, CQ_BUS_H_POSITION), want);
            assert_string_equal(hdr(m, CQ_BUS_H_TYPE), "Happened");
            assert_string_equal(hdr(m, CQ_BUS_H_SCHEMA), "2");
            assert_non_null(hdr(m, CQ_BUS_H_STREAM));
            assert_non_null(hdr(m, CQ_BUS_H_VERSION));
            assert_non_null(hdr(m, CQ_BUS_H_RECORDED));
            assert_non_null(hdr(m, CQ_BUS_H_CORRELATION));
            assert_non_null(hdr(m, CQ_BUS_H_CAUSATION));
            assert_string_equal(hdr(m, "Nats-Msg-Id"),
                                hdr(m, CQ_BUS_H_EVENT_ID));
            snprintf(meta, sizeof meta, "%s", hdr(m, CQ_BUS_H_METADATA));
            assert_int_equal(cq_bus_unescape(meta), CQ_OK);
            assert_non_null(strstr(meta, hdr(m, CQ_BUS_H_EVENT_ID)));
            assert_true(strncmp(natsMsg_GetData(m), "{\"i\":", 5) == 0);
            natsMsg_Ack(m, NULL);
            next++;
        }
        natsMsgList_Destroy(&list);
    }
    natsSubscription_Unsubscribe(sub);
    natsSubscription_Destroy(sub);
}

/* Every event once, in order, with its headers; new events are picked up
 * without a restart. */
static void test_relay_publishes_in_order(void **state)
{
    fx *f = *state;
    cq_relay *r;

    append(f, "order-1", 20);
    append(f, "pay.ment-2", 15);
    r = relay_new(f);
    wait_checkpoint(r, 35);
    append(f, "order-1", 5);
    if (!use_pg) /* PostgreSQL: cq_events wakes it */
        cq_relay_wake(r);
    wait_checkpoint(r, 40);
    {
        char m[4096];
        cq_relay_metrics(r, m, sizeof m);
        assert_non_null(strstr(m, "\ncqrsd_relay_checkpoint 40\n"));
        assert_non_null(strstr(m, "\ncqrsd_relay_published_total 40\n"));
        assert_non_null(strstr(m, "\ncqrsd_relay_lag_events 0\n"));
        assert_non_null(strstr(m, "\ncqrsd_relay_active 1\n"));
    }
    cq_relay_free(r);
    assert_int_equal(stream_msgs(f), 40);
    check_stream(f, 40);
}

/* A relay restarted goes on from its checkpoint; one that lost its
 * checkpoint publishes again, and JetStream drops every duplicate. */
static void test_relay_restart_and_duplicates(void **state)
{
    fx *f = *state;
    cq_relay *r;
    cq_relay_stats s;
    cq_rdb *db;
    char err[512], path[600];

    append(f, "order-1", 30);
    r = relay_new(f);
    wait_checkpoint(r, 30);
    cq_relay_free(r);
    append(f, "order-2", 10);
    r = relay_new(f);
    wait_checkpoint(r, 40);
    cq_relay_get_stats(r, &s);
    assert_int_equal(s.published, 10); /* from its checkpoint */
    cq_relay_free(r);
    assert_int_equal(stream_msgs(f), 40);

    /* as if the relay died after publishing, before its checkpoint */
    snprintf(path, sizeof path, "%s/relay.db", f->root);
    assert_int_equal(
        cq_rdb_open(use_pg ? f->uri : path, 0, 5000, &db, err, sizeof err),
        CQ_OK);
    assert_int_equal(
        cq_rdb_exec(db, "UPDATE cq_relay SET position = 5", err, sizeof err),
        CQ_OK);
    cq_rdb_close(db);
    r = relay_new(f);
    wait_checkpoint(r, 40);
    cq_relay_get_stats(r, &s);
    assert_int_equal(s.published, 35);
    assert_int_equal(s.duplicates, 35);
    cq_relay_free(r);
    assert_int_equal(stream_msgs(f), 40);
    check_stream(f, 40);
}

/* Two relays: one publishes, the other stands by and takes over when the
 * first goes away. */
static void test_relay_one_active(void **state)
{
    fx *f = *state;
    cq_relay *a, *b;
    cq_relay_stats sa, sb;

    append(f, "order-1", 10);
    a = relay_new(f);
    wait_checkpoint(a, 10);
    b = relay_new(f);
    usleep(1500 * 1000); /* b has tried for the lock at least once */
    cq_relay_get_stats(b, &sb);
    assert_int_equal(sb.active, 0);
    assert_int_equal(sb.published, 0);
    cq_relay_free(a); /* lets go of the lock */
    append(f, "order-1", 10);
    wait_checkpoint(b, 20);
    cq_relay_get_stats(b, &sb);
    assert_int_equal(sb.active, 1);
    assert_int_equal(sb.published, 10);
    cq_relay_get_stats(b, &sa);
    cq_relay_free(b);
    assert_int_equal(stream_msgs(f), 20);
    check_stream(f, 20);
}

/* ---- the projection workers (PostgreSQL read store) ---- */

/* Counts events per stream: applying one twice would show. */
static const char tally_sql[] =
    "-- @projection tally\n"
    "-- @version 1\n"
    "CREATE TABLE IF NOT EXISTS tally (stream_id TEXT PRIMARY KEY,\n"
    "    n BIGINT NOT NULL, total BIGINT NOT NULL);\n"
    "-- @on Happened\n"
    "INSERT INTO tally (stream_id, n, total) VALUES (:stream_id, 1, :data.i)\n"
    "ON CONFLICT (stream_id) DO UPDATE SET n = tally.n + 1,\n"
    "    total = tally.total + excluded.total;\n";

/* A source that passes reads through and, while drop_acks is set, never
 * acknowledges: a worker killed between its commit and its ack. */
typedef struct lossy {
    cq_engine_source inner;
    int drop_acks;
} lossy;

static int lossy_read(void *arg, int projection, const char *name, int64_t from,
                      int limit, cq_event_cb cb, void *cbarg, char *err,
                      size_t errcap)
{
    lossy *l = arg;
    return l->inner.read(l->inner.arg, projection, name, from, limit, cb, cbarg,
                         err, errcap);
}

static void lossy_applied(void *arg, int projection, const char *name,
                          int64_t position)
{
    lossy *l = arg;
    if (!l->drop_acks)
        l->inner.applied(l->inner.arg, projection, name, position);
}

typedef struct worker_fx {
    cq_worker *w;
    lossy src;
    cq_engine_source outer;
    cq_engine *e;
} worker_fx;

static void worker_start_text(fx *f, worker_fx *wf, int drop_acks,
                              const char *text);

static void worker_start(fx *f, worker_fx *wf, int drop_acks)
{
    worker_start_text(f, wf, drop_acks, tally_sql);
}

static void worker_start_text(fx *f, worker_fx *wf, int drop_acks,
                              const char *text)
{
    cq_worker_config wc = {.bus = nats_url,
                           .stream = f->stream,
                           .prefix = f->prefix,
                           .batch = 7,
                           .ack_wait_ms = 1000};
    cq_engine_config ec = {.batch = 7, .readers = 1};
    char err[512];

    memset(wf, 0, sizeof *wf);
    assert_int_equal(cq_worker_new(&wc, &wf->w, err, sizeof err), CQ_OK);
    wf->src.inner = cq_worker_source(wf->w);
    wf->src.drop_acks = drop_acks;
    wf->outer = (cq_engine_source){lossy_read, lossy_applied, &wf->src};
    ec.read_store = f->uri;
    ec.store_uri = f->uri;
    ec.source = &wf->outer;
    assert_int_equal(cq_engine_new(&ec, f->store, &wf->e, err, sizeof err),
                     CQ_OK);
    assert_int_equal(cq_engine_load_text(wf->e, "tally.sql", text, strlen(text),
                                         err, sizeof err),
                     CQ_OK);
    if (cq_engine_start(wf->e, err, sizeof err) != CQ_OK)
        fail_msg("engine start: %s", err);
}

static void worker_stop(worker_fx *wf)
{
    cq_engine_free(wf->e);
    cq_worker_free(wf->w);
}

static void wait_position(worker_fx *wf, int64_t pos)
{
    int64_t at = 0;
    for (int i = 0; i < 3000; i++) {
        at = cq_engine_position(wf->e, 0, NULL);
        if (at >= pos)
            return;
        usleep(10000);
    }
    fail_msg("projection at %lld, wanted %lld", (long long)at, (long long)pos);
}

/* sum(n) and sum(total) of the tally table. */
static void tally(fx *f, int64_t *n, int64_t *total)
{
    cq_rdb *db;
    cq_rstmt *st;
    char err[512];

    assert_int_equal(
        cq_rdb_open(f->uri, CQ_RDB_READONLY, 5000, &db, err, sizeof err),
        CQ_OK);
    assert_int_equal(cq_rdb_prepare(db,
                                    "SELECT COALESCE(SUM(n), 0),"
                                    " COALESCE(SUM(total), 0) FROM tally",
                                    0, &st, err, sizeof err),
                     CQ_OK);
    assert_int_equal(cq_rstmt_step(st), CQ_RSTEP_ROW);
    *n = cq_rstmt_column_int(st, 0);
    *total = cq_rstmt_column_int(st, 1);
    cq_rstmt_finalize(st);
    cq_rdb_close(db);
}

/* A worker applies the bus's events in order, once each; one killed
 * between its commit and its ack has its events redelivered to the next,
 * which skips them (the inbox): nothing is applied twice. */
static void test_worker_applies_and_redelivery(void **state)
{
    fx *f = *state;
    cq_relay *r;
    worker_fx wf;
    cq_worker_stats ws;
    int64_t n, total;

    if (!use_pg)
        skip();           /* workers need a shared (PostgreSQL) read store */
    append(f, "s-1", 20); /* i = 0..19 each */
    append(f, "s-2", 15);
    r = relay_new(f);
    wait_checkpoint(r, 35);
    worker_start(f, &wf, 1); /* commits, never acks */
    wait_position(&wf, 35);
    tally(f, &n, &total);
    assert_int_equal(n, 35);
    assert_int_equal(total, 190 + 105);
    worker_stop(&wf); /* "killed": 35 events unacknowledged */

    append(f, "s-3", 10);
    worker_start(f, &wf, 0);
    wait_position(&wf, 45);
    /* the 35 unacknowledged come again after the ack wait (1 s), before
     * anything newer: the worker fetches them with the next events */
    usleep(1500 * 1000);
    append(f, "s-3", 5);
    wait_position(&wf, 50);
    {
        char durable[160];
        jsConsumerInfo *ci = NULL;
        int64_t ack_pending = -1;
        cq_worker_durable("tally", durable, sizeof durable);
        for (int i = 0; i < 500 && ack_pending != 0; i++) {
            usleep(20000);
            assert_int_equal(
                js_GetConsumerInfo(&ci, f->js, f->stream, durable, NULL, NULL),
                NATS_OK);
            ack_pending = ci->NumAckPending;
            jsConsumerInfo_Destroy(ci);
        }
        /* all 50 acknowledged: the 35 the first worker never acked were
         * redelivered and acked by the second without applying them */
        assert_int_equal(ack_pending, 0);
    }
    cq_worker_get_stats(wf.w, 0, &ws);
    assert_int_equal(ws.known, 1);
    tally(f, &n, &total);
    assert_int_equal(n, 50);
    assert_int_equal(total, 190 + 105 + 45 + 10);
    worker_stop(&wf);
    cq_relay_free(r);
}

/* A changed definition on a worker: a blue/green rebuild replays the
 * event store into shadow tables, swaps at a position, and the bus
 * continues after it: every event counted once, none missed. */
static void test_worker_rebuild_then_bus(void **state)
{
    fx *f = *state;
    cq_relay *r;
    worker_fx wf;
    cq_projection_status st;
    int64_t n, total;
    char *v2;

    if (!use_pg)
        skip();
    v2 = strdup(tally_sql);
    strstr(v2, "@version 1")[9] = '2';
    append(f, "s-1", 30); /* i = 0..29: total 435 */
    r = relay_new(f);
    wait_checkpoint(r, 30);
    worker_start(f, &wf, 0);
    wait_position(&wf, 30);
    worker_stop(&wf);

    worker_start_text(f, &wf, 0, v2); /* version 2: rebuilt */
    append(f, "s-2", 10);             /* during or after the rebuild */
    for (int i = 0; i < 3000; i++) {
        cq_engine_status(wf.e, 0, &st);
        if (!st.rebuilding && st.serving_version == 2 && st.position >= 40)
            break;
        usleep(10000);
    }
    assert_int_equal(st.serving_version, 2);
    assert_int_equal(st.rebuilding, 0);
    append(f, "s-3", 5); /* after the swap: from the bus */
    wait_position(&wf, 45);
    tally(f, &n, &total);
    assert_int_equal(n, 45);
    assert_int_equal(total, 435 + 45 + 10);
    assert_string_equal(st.last_rebuild.outcome, "done");
    worker_stop(&wf);
    cq_relay_free(r);
    free(v2);
}

/* ---- cq_worker_fetch: libnats 3.4's fetch overflow (nats.c #749) ---- */

typedef struct late_pub {
    fx *f;
    const char *inbox;
    int n;
} late_pub;

static void *publish_later(void *arg)
{
    late_pub *lp = arg;
    char subj[160];

    usleep(150 * 1000);
    /* a pull request for 100 (that waits) answered to the subscription's
     * inbox, while the fetch waits: then 20 messages for it */
    snprintf(subj, sizeof subj, "$JS.API.CONSUMER.MSG.NEXT.%s.late",
             lp->f->stream);
    natsConnection_PublishRequestString(lp->f->nc, subj, lp->inbox,
                                        "{\"batch\":100,"
                                        "\"expires\":5000000000}");
    natsConnection_Flush(lp->f->nc);
    usleep(20 * 1000);
    snprintf(subj, sizeof subj, "%s.x.late", lp->f->prefix);
    for (int i = 0; i < lp->n; i++)
        js_Publish(NULL, lp->f->js, subj, "late", 4, NULL, NULL);
    return NULL;
}

typedef struct taken {
    natsMsg *m[64];
    int n;
} taken;

static void take(void *arg, natsMsg *m)
{
    taken *t = arg;
    if (t->n < 64)
        t->m[t->n++] = m;
    else
        natsMsg_Destroy(m);
}

/* A fetch of 10 that finds 6 late messages queued on the subscription
 * (answers to a pull request it did not send, as after a reconnect), 4 on
 * the server, and then 20 more coming: libnats 3.4's own fetch would take
 * the 6, ask for 4, get them and keep taking past its array of 10 (heap
 * corruption; the count past 10); cq_worker_fetch takes at most the 10
 * asked for. */
static void test_worker_fetch_late_answers(void **state)
{
    fx *f = *state;
    jsStreamConfig sc;
    jsConsumerConfig cc;
    jsSubOptions so;
    natsSubscription *sub = NULL;
    char subj[160], next[300];
    const char *subjects[1] = {subj};
    late_pub lp = {f, NULL, 20};
    pthread_t th;
    taken t = {.n = 0};
    int queued = 0, st = 0, got;

    snprintf(subj, sizeof subj, "%s.>", f->prefix);
    jsStreamConfig_Init(&sc);
    sc.Name = f->stream;
    sc.Subjects = subjects;
    sc.SubjectsLen = 1;
    sc.Storage = js_MemoryStorage;
    assert_int_equal(js_AddStream(NULL, f->js, &sc, NULL, NULL), NATS_OK);
    jsConsumerConfig_Init(&cc);
    cc.Durable = "late";
    cc.AckPolicy = js_AckExplicit;
    assert_int_equal(js_AddConsumer(NULL, f->js, f->stream, &cc, NULL, NULL),
                     NATS_OK);
    jsSubOptions_Init(&so);
    so.Stream = f->stream;
    so.Consumer = "late";
    assert_int_equal(js_PullSubscribe(&sub, f->js, subj, "late", NULL, &so,
                                      NULL),
                     NATS_OK);
    snprintf(next, sizeof next, "%s.x.early", f->prefix);
    for (int i = 0; i < 10; i++)
        assert_int_equal(js_Publish(NULL, f->js, next, "early", 5, NULL, NULL),
                         NATS_OK);
    /* a pull request for 6 answered to the subscription's inbox: 6 of
     * the 10 queued there, 4 left on the server */
    snprintf(next, sizeof next, "$JS.API.CONSUMER.MSG.NEXT.%s.late", f->stream);
    assert_int_equal(natsConnection_PublishRequestString(
                         f->nc, next, natsSubscription_GetSubject(sub),
                         "{\"batch\":6}"),
                     NATS_OK);
    for (int i = 0; i < 200 && queued < 6; i++) {
        usleep(10000);
        assert_int_equal(natsSubscription_GetPending(sub, &queued, NULL),
                         NATS_OK);
    }
    assert_int_equal(queued, 6);
    lp.inbox = natsSubscription_GetSubject(sub);
    assert_int_equal(pthread_create(&th, NULL, publish_later, &lp), 0);
    got = cq_worker_fetch(sub, 10, 1000, take, &t, &st);
    pthread_join(th, NULL);
    /* never more than asked for; at least the 6 that were queued */
    assert_int_equal(got, t.n);
    assert_in_range(got, 6, 10);
    assert_true(st == NATS_OK || st == NATS_TIMEOUT);
    for (int i = 0; i < t.n; i++)
        natsMsg_Destroy(t.m[i]);
    natsSubscription_Destroy(sub);
}

int main(int argc, char **argv)
{
    const char *dir = getenv("CQ_TEST_NATS_DIR");
    char path[600];
    FILE *fp;
    int rc;

    use_pg = argc > 1 && strcmp(argv[1], "pg") == 0;
    if (dir == NULL) {
        fprintf(stderr, "test_bus: CQ_TEST_NATS_DIR is not set (run under "
                        "ctest, or scripts/nats.sh start DIR)\n");
        return 1;
    }
    snprintf(path, sizeof path, "%s/url", dir);
    fp = fopen(path, "r");
    if (fp == NULL || fgets(nats_url, sizeof nats_url, fp) == NULL) {
        fprintf(stderr, "test_bus: cannot read %s\n", path);
        return 1;
    }
    fclose(fp);
    nats_url[strcspn(nats_url, "\n")] = '\0';

    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_subject),
        cmocka_unit_test(test_header_value),
        cmocka_unit_test(test_msg_id),
        cmocka_unit_test(test_http),
        cmocka_unit_test_setup_teardown(test_relay_publishes_in_order, fx_setup,
                                        fx_teardown),
        cmocka_unit_test_setup_teardown(test_relay_restart_and_duplicates,
                                        fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_relay_one_active, fx_setup,
                                        fx_teardown),
        cmocka_unit_test_setup_teardown(test_worker_applies_and_redelivery,
                                        fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_worker_rebuild_then_bus, fx_setup,
                                        fx_teardown),
        cmocka_unit_test_setup_teardown(test_worker_fetch_late_answers,
                                        fx_setup, fx_teardown),
    };
    rc = cmocka_run_group_tests(tests, NULL, NULL);
    cq_bus_shutdown();
    return rc;
}
