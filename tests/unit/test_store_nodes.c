/*
 * test_store_nodes.c -- the PostgreSQL event store where it differs from
 * SQLite: several store handles ("nodes") on one database, appending at
 * once; idempotency keys and expected versions across them; the schema
 * made once when they open at the same moment; the append lock; NOTIFY;
 * the URI's password hidden; and recovering after the server dropped the
 * connections (pg_terminate_backend from an admin connection).
 *
 * Each test makes a database of its own (pgtest_database). Threads only
 * record what went wrong; the main thread asserts (cmocka's asserts are
 * not thread-safe).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "pgtest.h"
#include "store/rdb.h"
#include "store/store.h"

static const cq_new_event EV = {"Happened", 1, "{\"n\":1}", "{}"};

static cq_store *open_node(const char *uri, int readers)
{
    cq_store_config cfg = {.uri = uri, .connections = readers};
    cq_store *s = NULL;
    char err[512];
    if (cq_store_open(&cfg, &s, err, sizeof err) != CQ_OK)
        fail_msg("open: %s", err);
    return s;
}

/* Run sql on uri through a connection of our own; the first value of the
 * first row as an integer (-1 if none). */
static long long admin(const char *uri, const char *sql)
{
    PGconn *c = PQconnectdb(uri);
    PGresult *r = PQexec(c, sql);
    long long v = -1;
    ExecStatusType st = PQresultStatus(r);
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK)
        fail_msg("admin '%s': %s", sql, PQerrorMessage(c));
    if (st == PGRES_TUPLES_OK && PQntuples(r) > 0 && !PQgetisnull(r, 0, 0))
        v = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
    PQclear(r);
    PQfinish(c);
    return v;
}

/* End every other session on uri's database (the server "restarts" for
 * them); how many were ended. */
static long long drop_sessions(const char *uri)
{
    return admin(uri, "SELECT count(pg_terminate_backend(pid))"
                      " FROM pg_stat_activity WHERE datname ="
                      " current_database() AND pid <> pg_backend_pid()"
                      " AND backend_type = 'client backend'");
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- two nodes appending at once ---- */

#define NODES 2
#define NODE_BATCHES 60
#define NODE_CMDS 8
#define NODE_STREAMS 5

typedef struct acked {
    int64_t position;
    int64_t version;
    int stream;
    int node;
    int seq;
} acked;

typedef struct node_run {
    const char *uri;
    int node;
    atomic_int *go;
    acked acks[NODE_BATCHES * NODE_CMDS];
    int nacks;
    int conflicts; /* stale expected versions refused */
    int batches_failed;
    char problem[640];
} node_run;

/* Each command reads its stream's version OUTSIDE the batch (as a node
 * with a cached aggregate would), then appends with it as the expected
 * version inside one: the other node may have moved the stream since, and
 * then the append must be refused. Acknowledged = committed. */
static void *node_main(void *arg)
{
    node_run *n = arg;
    cq_store *s;
    cq_store_config cfg = {.uri = n->uri, .connections = 1};
    char err[512], data[64], stream[16];

    if (cq_store_open(&cfg, &s, err, sizeof err) != CQ_OK) {
        snprintf(n->problem, sizeof n->problem, "open: %s", err);
        return NULL;
    }
    while (!atomic_load(n->go))
        ;
    for (int b = 0; b < NODE_BATCHES && n->problem[0] == '\0'; b++) {
        acked pending[NODE_CMDS];
        int np = 0;
        int64_t seen[NODE_CMDS];
        for (int c = 0; c < NODE_CMDS; c++) {
            int st = (b * NODE_CMDS + c + n->node) % NODE_STREAMS;
            snprintf(stream, sizeof stream, "s%d", st);
            if (cq_store_stream_version(s, stream, &seen[c]) != CQ_OK) {
                snprintf(n->problem, sizeof n->problem, "version: %s",
                         cq_store_errmsg(s));
                break;
            }
        }
        if (n->problem[0] != '\0' || cq_store_begin(s) != CQ_OK) {
            if (n->problem[0] == '\0')
                snprintf(n->problem, sizeof n->problem, "begin: %s",
                         cq_store_errmsg(s));
            break;
        }
        for (int c = 0; c < NODE_CMDS; c++) {
            int st = (b * NODE_CMDS + c + n->node) % NODE_STREAMS;
            int seq = b * NODE_CMDS + c;
            int64_t v = 0, p = 0;
            cq_new_event ev = EV;
            snprintf(stream, sizeof stream, "s%d", st);
            snprintf(data, sizeof data, "{\"node\":%d,\"seq\":%d}", n->node,
                     seq);
            ev.data = data;
            if (cq_store_savepoint(s) != CQ_OK)
                break;
            int rc = cq_store_append(s, stream,
                                     seen[c] == 0 ? CQ_VERSION_NO_STREAM
                                                  : seen[c],
                                     &ev, 1, 1, &v, &p);
            if (rc == CQ_ECONFLICT) {
                n->conflicts++;
                cq_store_rollback_savepoint(s);
                continue;
            }
            if (rc != CQ_OK) {
                snprintf(n->problem, sizeof n->problem, "append: %d %s", rc,
                         cq_store_errmsg(s));
                break;
            }
            /* a later command of this batch on the same stream expects
             * what this one made */
            for (int k = c + 1; k < NODE_CMDS; k++)
                if ((b * NODE_CMDS + k + n->node) % NODE_STREAMS == st)
                    seen[k] = v;
            cq_store_release(s);
            pending[np++] = (acked){p, v, st, n->node, seq};
        }
        if (n->problem[0] == '\0' && cq_store_commit(s) == CQ_OK) {
            memcpy(&n->acks[n->nacks], pending, (size_t)np * sizeof *pending);
            n->nacks += np;
        } else {
            n->batches_failed++;
            if (n->problem[0] == '\0')
                snprintf(n->problem, sizeof n->problem, "commit: %s",
                         cq_store_errmsg(s));
            cq_store_rollback(s);
        }
    }
    cq_store_close(s);
    return NULL;
}

/* A tail that follows everything in position order while the nodes
 * append, as a projector would: it must never see a position twice or
 * skip one. */
typedef struct tail_run {
    cq_store *s;
    atomic_int *stop;
    int64_t next;
    char problem[640];
} tail_run;

static int tail_event(void *arg, const cq_stored_event *ev)
{
    tail_run *t = arg;
    if (ev->position != t->next && t->problem[0] == '\0')
        snprintf(t->problem, sizeof t->problem,
                 "tail expected position %lld, got %lld", (long long)t->next,
                 (long long)ev->position);
    t->next = ev->position + 1;
    return 0;
}

static void *tail_main(void *arg)
{
    tail_run *t = arg;
    char err[256];
    int64_t head = 0;
    for (;;) {
        int stop = atomic_load(t->stop);
        if (cq_store_read_all(t->s, t->next, 50, tail_event, t, &head, err,
                              sizeof err) != CQ_OK) {
            snprintf(t->problem, sizeof t->problem, "tail: %s", err);
            return NULL;
        }
        if (t->problem[0] != '\0' || (stop && t->next > head))
            return NULL;
    }
}

#define CHECK_MAX (NODES * NODE_BATCHES * NODE_CMDS)

typedef struct check_ev {
    int64_t n;
    char data[CHECK_MAX][64];
} check_ev;

static int keep_data(void *arg, const cq_stored_event *ev)
{
    check_ev *c = arg;
    if (ev->position >= 1 && ev->position <= CHECK_MAX)
        snprintf(c->data[ev->position - 1], sizeof c->data[0], "%s", ev->data);
    c->n++;
    return 0;
}

static void test_two_nodes_append_at_once(void **state)
{
    char *uri = pgtest_database("nodes");
    static node_run runs[NODES];
    static check_ev got;
    pthread_t th[NODES], tt;
    atomic_int go, stop;
    tail_run tail;
    cq_store *s;
    char err[256];
    int64_t head = 0;
    int acked_total = 0, conflicts = 0;

    assert_non_null(uri);
    s = open_node(uri, 2); /* the schema exists before the nodes start */
    atomic_init(&go, 0);
    atomic_init(&stop, 0);
    memset(&tail, 0, sizeof tail);
    tail.s = s;
    tail.stop = &stop;
    tail.next = 1;
    assert_int_equal(pthread_create(&tt, NULL, tail_main, &tail), 0);
    for (int i = 0; i < NODES; i++) {
        memset(&runs[i], 0, sizeof runs[i]);
        runs[i].uri = uri;
        runs[i].node = i;
        runs[i].go = &go;
        assert_int_equal(pthread_create(&th[i], NULL, node_main, &runs[i]), 0);
    }
    atomic_store(&go, 1);
    for (int i = 0; i < NODES; i++)
        pthread_join(th[i], NULL);
    atomic_store(&stop, 1);
    pthread_join(tt, NULL);

    for (int i = 0; i < NODES; i++) {
        if (runs[i].problem[0] != '\0')
            fail_msg("node %d: %s", i, runs[i].problem);
        assert_int_equal(runs[i].batches_failed, 0);
        acked_total += runs[i].nacks;
        conflicts += runs[i].conflicts;
    }
    if (tail.problem[0] != '\0')
        fail_msg("%s", tail.problem);
    /* every command either committed or was refused as stale */
    assert_int_equal(acked_total + conflicts, NODES * NODE_BATCHES * NODE_CMDS);
    /* positions 1..head, each acknowledged event exactly once, seen by the
     * tail in order */
    assert_int_equal(cq_store_head_position(s, &head), CQ_OK);
    assert_int_equal(head, acked_total);
    assert_int_equal(tail.next, head + 1);
    memset(&got, 0, sizeof got);
    for (int64_t from = 1; from <= head; from += 256) {
        /* read_all itself refuses a gap (CQ_ECORRUPT) */
        assert_int_equal(
            cq_store_read_all(s, from, 256, keep_data, &got, NULL, err,
                              sizeof err),
            CQ_OK);
    }
    assert_int_equal(got.n, head);
    for (int i = 0; i < NODES; i++) {
        for (int k = 0; k < runs[i].nacks; k++) {
            const acked *a = &runs[i].acks[k];
            char want[64];
            assert_true(a->position >= 1 && a->position <= head);
            snprintf(want, sizeof want, "{\"node\":%d,\"seq\":%d}", a->node,
                     a->seq);
            assert_string_equal(got.data[a->position - 1], want);
        }
    }
    /* versions per stream: 1..n without a hole (read_stream checks), and
     * they add up to the events */
    int64_t versions = 0;
    for (int st = 0; st < NODE_STREAMS; st++) {
        char stream[16];
        int64_t sv = 0;
        int n = 0;
        snprintf(stream, sizeof stream, "s%d", st);
        static check_ev dummy;
        dummy.n = 0;
        assert_int_equal(cq_store_read_stream(s, stream, 1, 100000, keep_data,
                                              &dummy, &sv, err, sizeof err),
                         CQ_OK);
        n = (int)dummy.n;
        assert_int_equal(n, sv);
        versions += sv;
    }
    assert_int_equal(versions, head);
    cq_store_close(s);
    free(uri);
}

/* A node whose view of a stream is stale is refused (409 for the caller),
 * deterministically. */
static void test_stale_version_refused_across_nodes(void **state)
{
    char *uri = pgtest_database("stale");
    cq_store *a, *b;
    int64_t va = -1, vb = -1, v = 0, p = 0;

    assert_non_null(uri);
    a = open_node(uri, 1);
    b = open_node(uri, 1);
    assert_int_equal(
        cq_store_append(a, "order-1", CQ_VERSION_NO_STREAM, &EV, 1, 1, &v, &p),
        CQ_OK);
    assert_int_equal(cq_store_stream_version(a, "order-1", &va), CQ_OK);
    assert_int_equal(cq_store_stream_version(b, "order-1", &vb), CQ_OK);
    assert_int_equal(va, 1);
    assert_int_equal(vb, 1);
    /* b appends; a, still believing version 1, is refused */
    assert_int_equal(cq_store_begin(b), CQ_OK);
    assert_int_equal(cq_store_append(b, "order-1", vb, &EV, 1, 1, &v, &p),
                     CQ_OK);
    assert_int_equal(cq_store_commit(b), CQ_OK);
    assert_int_equal(p, 2);
    assert_int_equal(cq_store_begin(a), CQ_OK);
    assert_int_equal(cq_store_append(a, "order-1", va, &EV, 1, 1, &v, &p),
                     CQ_ECONFLICT);
    assert_non_null(strstr(cq_store_errmsg(a), "at version 2"));
    /* the batch is not failed: a appends to another stream at b's head + 1 */
    assert_int_equal(
        cq_store_append(a, "order-2", CQ_VERSION_NO_STREAM, &EV, 1, 1, &v, &p),
        CQ_OK);
    assert_int_equal(p, 3);
    assert_int_equal(cq_store_commit(a), CQ_OK);
    assert_int_equal(cq_store_write_head(a, &p), CQ_OK);
    assert_int_equal(p, 3);
    /* both streams exist exactly once */
    assert_int_equal(
        cq_store_append(b, "order-2", CQ_VERSION_NO_STREAM, &EV, 1, 1, &v, &p),
        CQ_ECONFLICT);
    cq_store_close(a);
    cq_store_close(b);
    free(uri);
}

/* ---- idempotency keys across nodes ---- */

#define KEYS 40

typedef struct key_run {
    const char *uri;
    atomic_int *go;
    int executed; /* keys this node ran (the others replayed) */
    char problem[640];
} key_run;

/* For each key: in one batch, look it up; if absent, append to the key's
 * stream and store the key, as the writer does. */
static void *key_main(void *arg)
{
    key_run *k = arg;
    cq_store *s;
    cq_store_config cfg = {.uri = k->uri, .connections = 1};
    char err[512], key[32];

    if (cq_store_open(&cfg, &s, err, sizeof err) != CQ_OK) {
        snprintf(k->problem, sizeof k->problem, "open: %s", err);
        return NULL;
    }
    while (!atomic_load(k->go))
        ;
    for (int i = 0; i < KEYS && k->problem[0] == '\0'; i++) {
        cq_cmdlog_entry e;
        int rc;
        snprintf(key, sizeof key, "k%d", i);
        if (cq_store_begin(s) != CQ_OK) {
            snprintf(k->problem, sizeof k->problem, "begin: %s",
                     cq_store_errmsg(s));
            break;
        }
        rc = cq_store_cmdlog_get(s, key, 1000, &e);
        if (rc == CQ_ENOTFOUND) {
            cq_cmdlog_entry put = {key, "h", 202, "{}", 1000, 1000000};
            rc = cq_store_append(s, key, CQ_VERSION_ANY, &EV, 1, 1, NULL, NULL);
            if (rc == CQ_OK)
                rc = cq_store_cmdlog_put(s, &put);
            if (rc == CQ_OK)
                k->executed++;
        }
        if (rc == CQ_OK)
            rc = cq_store_commit(s);
        if (rc != CQ_OK) {
            snprintf(k->problem, sizeof k->problem, "key %s: %d %s", key, rc,
                     cq_store_errmsg(s));
            cq_store_rollback(s);
        }
    }
    cq_store_close(s);
    return NULL;
}

static void test_idempotency_key_across_nodes(void **state)
{
    char *uri = pgtest_database("idem");
    key_run runs[2];
    pthread_t th[2];
    atomic_int go;
    cq_store *a, *b;
    cq_cmdlog_entry e;
    int64_t head = 0;

    assert_non_null(uri);
    a = open_node(uri, 1);
    b = open_node(uri, 1);
    /* put by one, seen by the other */
    cq_cmdlog_entry put = {"once", "abc", 201, "{\"ok\":1}", 1000, 9000};
    assert_int_equal(cq_store_begin(a), CQ_OK);
    assert_int_equal(cq_store_cmdlog_put(a, &put), CQ_OK);
    assert_int_equal(cq_store_cmdlog_get(b, "once", 2000, &e), CQ_ENOTFOUND);
    assert_int_equal(cq_store_commit(a), CQ_OK);
    assert_int_equal(cq_store_cmdlog_get(b, "once", 2000, &e), CQ_OK);
    assert_string_equal(e.command_hash, "abc");
    assert_string_equal(e.response, "{\"ok\":1}");
    assert_int_equal(e.status, 201);

    /* the same keys sent to two nodes at once: each runs exactly once */
    atomic_init(&go, 0);
    for (int i = 0; i < 2; i++) {
        memset(&runs[i], 0, sizeof runs[i]);
        runs[i].uri = uri;
        runs[i].go = &go;
        assert_int_equal(pthread_create(&th[i], NULL, key_main, &runs[i]), 0);
    }
    atomic_store(&go, 1);
    for (int i = 0; i < 2; i++)
        pthread_join(th[i], NULL);
    for (int i = 0; i < 2; i++)
        if (runs[i].problem[0] != '\0')
            fail_msg("node %d: %s", i, runs[i].problem);
    assert_int_equal(runs[0].executed + runs[1].executed, KEYS);
    assert_int_equal(cq_store_head_position(a, &head), CQ_OK);
    assert_int_equal(head, KEYS);
    assert_int_equal(admin(uri, "SELECT max(version) FROM streams"), 1);
    cq_store_close(a);
    cq_store_close(b);
    free(uri);
}

/* ---- the schema, made once ---- */

typedef struct open_run {
    const char *uri;
    atomic_int *go;
    int rc;
    char err[512];
} open_run;

static void *open_main(void *arg)
{
    open_run *o = arg;
    cq_store_config cfg = {.uri = o->uri, .connections = 1};
    cq_store *s = NULL;
    while (!atomic_load(o->go))
        ;
    o->rc = cq_store_open(&cfg, &s, o->err, sizeof o->err);
    cq_store_close(s);
    return NULL;
}

static void test_schema_made_once(void **state)
{
    enum { OPENERS = 4, ROUNDS = 3 };
    for (int round = 0; round < ROUNDS; round++) {
        char *uri = pgtest_database("schema");
        open_run runs[OPENERS];
        pthread_t th[OPENERS];
        atomic_int go;

        assert_non_null(uri);
        atomic_init(&go, 0);
        for (int i = 0; i < OPENERS; i++) {
            memset(&runs[i], 0, sizeof runs[i]);
            runs[i].uri = uri;
            runs[i].go = &go;
            assert_int_equal(pthread_create(&th[i], NULL, open_main, &runs[i]),
                             0);
        }
        atomic_store(&go, 1);
        for (int i = 0; i < OPENERS; i++)
            pthread_join(th[i], NULL);
        for (int i = 0; i < OPENERS; i++)
            if (runs[i].rc != CQ_OK)
                fail_msg("opener %d: %d %s", i, runs[i].rc, runs[i].err);
        assert_int_equal(admin(uri, "SELECT count(*) FROM cq_store_schema"),
                         1);
        assert_int_equal(
            admin(uri, "SELECT count(*) FROM pg_tables WHERE tablename IN"
                       " ('events', 'streams', 'command_log')"),
            3);
        free(uri);
    }
}

/* ---- the append lock ---- */

typedef struct begin_run {
    cq_store *s;
    atomic_int done;
    int rc;
    int64_t head;
} begin_run;

static void *begin_main(void *arg)
{
    begin_run *b = arg;
    b->rc = cq_store_begin(b->s);
    if (b->rc == CQ_OK)
        b->rc = cq_store_write_head(b->s, &b->head);
    atomic_store(&b->done, 1);
    return NULL;
}

/* A batch of one node holds off the batches of the others until its
 * COMMIT, and they start from its head. */
static void test_batches_wait_for_each_other(void **state)
{
    char *uri = pgtest_database("lock");
    cq_store *a, *b;
    begin_run br;
    pthread_t th;
    int64_t v, p;

    assert_non_null(uri);
    a = open_node(uri, 1);
    b = open_node(uri, 1);
    assert_int_equal(cq_store_begin(a), CQ_OK);
    assert_int_equal(
        cq_store_append(a, "x", CQ_VERSION_NO_STREAM, &EV, 1, 1, &v, &p),
        CQ_OK);
    memset(&br, 0, sizeof br);
    br.s = b;
    atomic_init(&br.done, 0);
    assert_int_equal(pthread_create(&th, NULL, begin_main, &br), 0);
    usleep(300 * 1000);
    assert_int_equal(atomic_load(&br.done), 0); /* still waiting */
    assert_int_equal(cq_store_commit(a), CQ_OK);
    pthread_join(th, NULL);
    assert_int_equal(br.rc, CQ_OK);
    assert_int_equal(br.head, 1);
    assert_int_equal(
        cq_store_append(b, "y", CQ_VERSION_NO_STREAM, &EV, 1, 1, &v, &p),
        CQ_OK);
    assert_int_equal(p, 2);
    assert_int_equal(cq_store_commit(b), CQ_OK);
    cq_store_close(a);
    cq_store_close(b);
    free(uri);
}

/* ---- notifications ---- */

/* The next notification on c within ms milliseconds: its payload into
 * buf, or "" if none came. */
static void next_notify(PGconn *c, int ms, char *buf, size_t cap)
{
    buf[0] = '\0';
    for (int waited = 0; waited <= ms; waited += 10) {
        PGnotify *n;
        PQconsumeInput(c);
        if ((n = PQnotifies(c)) != NULL) {
            snprintf(buf, cap, "%s:%s", n->relname, n->extra);
            PQfreemem(n);
            return;
        }
        usleep(10 * 1000);
    }
}

static void test_notify_on_commit(void **state)
{
    char *uri = pgtest_database("notify");
    cq_store *s;
    PGconn *l;
    char got[128];
    cq_new_event two[2] = {EV, EV};
    cq_cmdlog_entry put = {"k", "h", 202, "{}", 1, 100000};

    assert_non_null(uri);
    s = open_node(uri, 1);
    l = PQconnectdb(uri);
    PQclear(PQexec(l, "LISTEN cq_events"));

    /* a batch that appended: the head, once, at COMMIT */
    assert_int_equal(cq_store_begin(s), CQ_OK);
    assert_int_equal(
        cq_store_append(s, "a", CQ_VERSION_ANY, two, 2, 1, NULL, NULL), CQ_OK);
    next_notify(l, 100, got, sizeof got);
    assert_string_equal(got, ""); /* not before */
    assert_int_equal(cq_store_commit(s), CQ_OK);
    next_notify(l, 2000, got, sizeof got);
    assert_string_equal(got, "cq_events:2");
    next_notify(l, 100, got, sizeof got);
    assert_string_equal(got, "");
    /* rolled back, its appends all undone, or nothing appended: none */
    assert_int_equal(cq_store_begin(s), CQ_OK);
    assert_int_equal(cq_store_savepoint(s), CQ_OK);
    assert_int_equal(
        cq_store_append(s, "a", CQ_VERSION_ANY, &EV, 1, 1, NULL, NULL), CQ_OK);
    assert_int_equal(cq_store_rollback_savepoint(s), CQ_OK);
    assert_int_equal(cq_store_commit(s), CQ_OK);
    assert_int_equal(cq_store_begin(s), CQ_OK);
    assert_int_equal(
        cq_store_append(s, "a", CQ_VERSION_ANY, &EV, 1, 1, NULL, NULL), CQ_OK);
    assert_int_equal(cq_store_rollback(s), CQ_OK);
    assert_int_equal(cq_store_begin(s), CQ_OK);
    assert_int_equal(cq_store_cmdlog_put(s, &put), CQ_OK);
    assert_int_equal(cq_store_commit(s), CQ_OK);
    next_notify(l, 300, got, sizeof got);
    assert_string_equal(got, "");
    /* an append outside a batch is a batch of its own */
    assert_int_equal(
        cq_store_append(s, "b", CQ_VERSION_ANY, &EV, 1, 1, NULL, NULL), CQ_OK);
    next_notify(l, 2000, got, sizeof got);
    assert_string_equal(got, "cq_events:3");
    PQfinish(l);
    cq_store_close(s);
    free(uri);
}

/* ---- failures ---- */

static void test_password_hidden(void **state)
{
    static const char *const uris[] = {
        "postgresql://cqrs:sekrit-pw@127.0.0.1:1/nowhere",
        "host=127.0.0.1 port=1 dbname=nowhere user=cqrs password=sekrit-pw",
    };
    for (size_t i = 0; i < sizeof uris / sizeof uris[0]; i++) {
        cq_store_config cfg = {.uri = uris[i]};
        cq_store *s = (cq_store *)&cfg;
        char err[512] = "";
        assert_int_equal(cq_store_open(&cfg, &s, err, sizeof err), CQ_EIO);
        assert_null(s);
        assert_non_null(strstr(err, "cannot connect to"));
        assert_non_null(strstr(err, "***"));
        assert_non_null(strstr(err, "nowhere"));
        assert_null(strstr(err, "sekrit"));
    }
}

/* A COMMIT PostgreSQL answers with ROLLBACK (the transaction failed
 * through the write view, behind the store's back) is a failure. */
static void test_commit_of_failed_transaction(void **state)
{
    char *uri = pgtest_database("failedtx");
    cq_store *s;
    char err[256];
    int64_t head = -1;

    assert_non_null(uri);
    s = open_node(uri, 1);
    assert_int_equal(cq_store_begin(s), CQ_OK);
    assert_int_equal(cq_store_savepoint(s), CQ_OK);
    assert_int_equal(
        cq_store_append(s, "a", CQ_VERSION_ANY, &EV, 1, 1, NULL, NULL), CQ_OK);
    assert_int_equal(cq_store_release(s), CQ_OK);
    assert_int_not_equal(
        cq_rdb_exec(cq_store_write_rdb(s), "SELECT 1/0", err, sizeof err),
        CQ_OK);
    assert_int_equal(cq_store_commit(s), CQ_EIO);
    assert_int_equal(cq_store_rollback(s), CQ_OK);
    assert_int_equal(cq_store_head_position(s, &head), CQ_OK);
    assert_int_equal(head, 0);
    /* and without an append (no NOTIFY ahead of the COMMIT) */
    assert_int_equal(cq_store_begin(s), CQ_OK);
    assert_int_not_equal(
        cq_rdb_exec(cq_store_write_rdb(s), "SELECT 1/0", err, sizeof err),
        CQ_OK);
    assert_int_equal(cq_store_commit(s), CQ_EIO);
    assert_non_null(strstr(cq_store_errmsg(s), "rolled back"));
    assert_int_equal(cq_store_rollback(s), CQ_OK);
    assert_int_equal(
        cq_store_append(s, "a", CQ_VERSION_ANY, &EV, 1, 1, NULL, NULL), CQ_OK);
    cq_store_close(s);
    free(uri);
}

/* The write view (inline projections) writes in the batch's transaction
 * and the command's savepoint: RELEASE, sent late, does not move a
 * command's rows out of it, and a rolled-back command takes its rows with
 * it. */
static void test_write_view_in_savepoints(void **state)
{
    char *uri = pgtest_database("view");
    cq_store *s;
    cq_rdb *v;
    cq_rstmt *ins = NULL;
    char err[256];

    assert_non_null(uri);
    s = open_node(uri, 1);
    v = cq_store_write_rdb(s);
    assert_non_null(v);
    assert_string_equal(cq_rdb_backend(v), "postgresql");
    assert_int_equal(cq_rdb_exec(v, "CREATE TABLE seen (cmd INT)", err,
                                 sizeof err),
                     CQ_OK);
    assert_int_equal(cq_rdb_prepare(v, "INSERT INTO seen VALUES (?1)",
                                    CQ_RDB_PERSISTENT, &ins, err, sizeof err),
                     CQ_OK);
    assert_int_equal(cq_store_begin(s), CQ_OK);
    for (int cmd = 1; cmd <= 3; cmd++) {
        assert_int_equal(cq_store_savepoint(s), CQ_OK);
        assert_int_equal(
            cq_store_append(s, "a", CQ_VERSION_ANY, &EV, 1, 1, NULL, NULL),
            CQ_OK);
        assert_int_equal(cq_rstmt_bind_int(ins, 1, cmd), CQ_OK);
        assert_int_equal(cq_rstmt_run(ins), CQ_OK);
        if (cmd == 2)
            assert_int_equal(cq_store_rollback_savepoint(s), CQ_OK);
        else
            assert_int_equal(cq_store_release(s), CQ_OK);
    }
    assert_int_equal(cq_store_commit(s), CQ_OK);
    assert_int_equal(admin(uri, "SELECT count(*) FROM seen"), 2);
    /* used right after cq_store_savepoint, before the store's next call
     * (SAVEPOINT still in flight), the view fails instead of writing
     * outside the savepoint; the batch goes on */
    assert_int_equal(cq_store_begin(s), CQ_OK);
    assert_int_equal(cq_store_savepoint(s), CQ_OK);
    assert_int_not_equal(
        cq_rdb_exec(v, "INSERT INTO seen VALUES (100)", err, sizeof err),
        CQ_OK);
    assert_int_equal(cq_store_rollback_savepoint(s), CQ_OK);
    assert_int_equal(cq_store_commit(s), CQ_OK);
    assert_int_equal(admin(uri, "SELECT count(*) FROM seen"), 2);
    assert_int_equal(admin(uri, "SELECT sum(cmd) FROM seen"), 4);
    assert_int_equal(admin(uri, "SELECT max(position) FROM events"), 2);
    /* the view's statement survives a reconnect of the store */
    assert_true(drop_sessions(uri) >= 1);
    assert_int_equal(cq_store_begin(s), CQ_OK);
    assert_int_equal(cq_rstmt_bind_int(ins, 1, 9), CQ_OK);
    assert_int_equal(cq_rstmt_run(ins), CQ_OK);
    assert_int_equal(cq_store_commit(s), CQ_OK);
    assert_int_equal(admin(uri, "SELECT max(cmd) FROM seen"), 9);
    cq_rstmt_finalize(ins);
    /* a read connection of the caller's own: reads, never writes */
    cq_rdb *r = NULL;
    cq_rstmt *st = NULL;
    assert_int_equal(cq_store_open_rdb(s, &r, err, sizeof err), CQ_OK);
    assert_int_equal(cq_rdb_prepare(r, "SELECT count(*) FROM seen", 0, &st,
                                    err, sizeof err),
                     CQ_OK);
    assert_int_equal(cq_rstmt_step(st), CQ_RSTEP_ROW);
    assert_int_equal(cq_rstmt_column_int(st, 0), 3);
    cq_rstmt_finalize(st);
    assert_int_not_equal(
        cq_rdb_exec(r, "INSERT INTO seen VALUES (7)", err, sizeof err), CQ_OK);
    assert_non_null(strstr(err, "read-only"));
    cq_rdb_close(r);
    cq_store_close(s);
    free(uri);
}

static int count_cb(void *arg, const cq_stored_event *ev)
{
    (void)ev;
    ++*(int *)arg;
    return 0;
}

/* The server drops every connection (as on a restart): a batch that was
 * open fails (never a success for a COMMIT that did not happen), and the
 * next calls reconnect, reads and batches alike; the write view survives
 * (same PGconn). */
static void test_reconnect(void **state)
{
    char *uri = pgtest_database("reconnect");
    cq_store *s;
    char err[256];
    int64_t head = -1, v = 0, p = 0;
    int n = 0;

    assert_non_null(uri);
    s = open_node(uri, 2);
    assert_int_equal(
        cq_store_append(s, "a", CQ_VERSION_NO_STREAM, &EV, 1, now_ms(), &v,
                        &p),
        CQ_OK);

    /* idle connections dropped: every call comes back by itself */
    assert_true(drop_sessions(uri) >= 3);
    assert_int_equal(
        cq_store_read_all(s, 1, 10, count_cb, &n, &head, err, sizeof err),
        CQ_OK);
    assert_int_equal(n, 1);
    assert_int_equal(head, 1);
    assert_int_equal(cq_store_head_position(s, &head), CQ_OK);
    assert_int_equal(cq_store_position_of(s, "a", 1, &p, err, sizeof err),
                     CQ_OK);
    assert_int_equal(cq_store_stream_version(s, "a", &v), CQ_OK);
    assert_int_equal(v, 1);
    assert_int_equal(cq_store_begin(s), CQ_OK);
    assert_int_equal(cq_store_append(s, "a", 1, &EV, 1, now_ms(), &v, &p),
                     CQ_OK);
    assert_int_equal(cq_store_commit(s), CQ_OK);
    assert_int_equal(p, 2);
    assert_int_equal(cq_rdb_exec(cq_store_write_rdb(s), "SELECT 1", err,
                                 sizeof err),
                     CQ_OK);

    /* dropped inside a batch: the batch fails and nothing of it stays */
    assert_int_equal(cq_store_begin(s), CQ_OK);
    assert_int_equal(cq_store_savepoint(s), CQ_OK);
    assert_int_equal(cq_store_append(s, "a", 2, &EV, 1, now_ms(), &v, &p),
                     CQ_OK);
    assert_int_equal(cq_store_release(s), CQ_OK);
    assert_true(drop_sessions(uri) >= 1);
    assert_int_equal(cq_store_commit(s), CQ_EIO);
    assert_non_null(strstr(cq_store_errmsg(s), "COMMIT"));
    assert_int_equal(cq_store_commit(s), CQ_EIO);
    assert_int_equal(cq_store_rollback(s), CQ_OK);
    assert_int_equal(cq_store_head_position(s, &head), CQ_OK);
    assert_int_equal(head, 2);

    /* dropped between two statements of a batch: SAVEPOINT is sent
     * without waiting for its answer, so the loss shows there or at the
     * next call */
    assert_int_equal(cq_store_begin(s), CQ_OK);
    assert_true(drop_sessions(uri) >= 1);
    int rc = cq_store_savepoint(s);
    if (rc == CQ_OK)
        rc = cq_store_append(s, "a", 3, &EV, 1, now_ms(), &v, &p);
    assert_int_equal(rc, CQ_EIO);
    assert_int_equal(cq_store_append(s, "a", 3, &EV, 1, now_ms(), &v, &p),
                     CQ_EIO);
    assert_int_equal(cq_store_rollback(s), CQ_OK);

    /* and the next batch works, at the right positions */
    assert_int_equal(cq_store_begin(s), CQ_OK);
    assert_int_equal(cq_store_append(s, "a", 2, &EV, 1, now_ms(), &v, &p),
                     CQ_OK);
    assert_int_equal(cq_store_commit(s), CQ_OK);
    assert_int_equal(p, 3);
    assert_int_equal(v, 3);
    assert_int_equal(cq_store_write_head(s, &head), CQ_OK);
    assert_int_equal(head, 3);
    assert_int_equal(cq_rdb_exec(cq_store_write_rdb(s), "SELECT 1", err,
                                 sizeof err),
                     CQ_OK);
    cq_store_close(s);
    free(uri);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_two_nodes_append_at_once),
        cmocka_unit_test(test_stale_version_refused_across_nodes),
        cmocka_unit_test(test_idempotency_key_across_nodes),
        cmocka_unit_test(test_schema_made_once),
        cmocka_unit_test(test_batches_wait_for_each_other),
        cmocka_unit_test(test_notify_on_commit),
        cmocka_unit_test(test_password_hidden),
        cmocka_unit_test(test_commit_of_failed_transaction),
        cmocka_unit_test(test_write_view_in_savepoints),
        cmocka_unit_test(test_reconnect),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
