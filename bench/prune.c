/*
 * bench_prune — what pruning expired idempotency keys costs the commands
 * queued behind it.
 *
 * Opens a fresh events.db (WAL, synchronous=FULL, as the server), puts
 * --keys command-log entries in it that have already expired (random
 * 32-hex-digit keys, as clients send UUIDs, and a 202 answer of ~200 bytes
 * each: what --idempotency-ttl leaves behind after a busy minute), then
 * starts the writer (src/command/writer.c) on it with the orders domain. The
 * writer prunes the command log as soon as it has run its first batch.
 * --clients threads each run a closed loop of PlaceOrder commands with an
 * Idempotency-Key (submit, wait for the answer) until --commands have been
 * answered; the time from submit to the answer is one command's latency.
 * Prints p50/p99/max of those latencies, how many expired keys were still
 * there when the last command was answered, and how long after that the
 * writer, idle, took to remove the rest (bounded by --drain-timeout).
 *
 * No HTTP: this measures the writer thread alone, which is where the prune
 * runs. One "BENCH kind=prune ..." line is for bench/run.sh (--tag T names
 * it kind=prune_T instead). --keys 0 gives the reference: the same commands
 * with nothing to prune.
 *
 * Usage: bench_prune [--keys N] [--commands M] [--clients C] [--dir DIR]
 *                    [--drain-timeout S] [--tag T]
 * The store lives in a new directory under DIR (default $TMPDIR or /tmp),
 * removed at the end. Each client thread owns its own requests; the
 * latencies array is written at disjoint indexes.
 */
#include <pthread.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/base.h"
#include "command/writer.h"
#include "orders/orders.h"

typedef struct client {
    int id, n;       /* commands this client sends */
    int64_t *lat_us; /* its slice of the latencies */
    cq_writer *writer;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int answered;
    int bad; /* answers that were not 202 */
} client;

static atomic_int g_next = 0;

static void on_done(cq_write_req *r)
{
    client *c = r->user;
    pthread_mutex_lock(&c->mu);
    c->answered = 1;
    pthread_cond_signal(&c->cv);
    pthread_mutex_unlock(&c->mu);
}

static void *client_main(void *arg)
{
    client *c = arg;
    const cq_command_def *def =
        cq_domain_command(orders_domain(), "PlaceOrder");
    char json[256];

    for (int i = 0; i < c->n; i++) {
        cq_write_req r;
        int k = atomic_fetch_add(&g_next, 1);
        char *canon;

        memset(&r, 0, sizeof r);
        snprintf(json, sizeof json,
                 "{\"order_id\":\"prune-%d\",\"customer_id\":\"c-1\","
                 "\"currency\":\"EUR\",\"items\":[{\"sku\":\"SKU-MUG\","
                 "\"quantity\":1,\"unit_price_cents\":1299}]}",
                 k);
        r.kind = CQ_WRITE_COMMAND;
        r.def = def;
        r.body = json_loads(json, 0, NULL);
        r.expected = CQ_VERSION_ANY;
        def->stream_id(r.body, r.stream_id, sizeof r.stream_id);
        snprintf(r.idem_key, sizeof r.idem_key, "live-%d", k);
        canon = json_dumps(r.body, JSON_COMPACT | JSON_SORT_KEYS);
        cq_sha256_hex(canon, strlen(canon), r.command_hash);
        free(canon);
        cq_uuid7(r.command_id);
        r.done = on_done;
        r.user = c;
        c->answered = 0;
        uint64_t t0 = cq_mono_ns();
        while (cq_writer_submit(c->writer, &r) == CQ_EBUSY)
            usleep(100);
        pthread_mutex_lock(&c->mu);
        while (!c->answered)
            pthread_cond_wait(&c->cv, &c->mu);
        pthread_mutex_unlock(&c->mu);
        c->lat_us[i] = (int64_t)((cq_mono_ns() - t0) / 1000);
        c->bad += r.status != 202;
        json_decref(r.body);
        free(r.response);
    }
    return NULL;
}

static int cmp64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* Expired entries left in the command log, through a connection of our
 * own (it sees what has committed). -1 on error. */
static long long count_expired(sqlite3 *db, int64_t now)
{
    sqlite3_stmt *st = NULL;
    long long n = -1;

    if (sqlite3_prepare_v2(db,
                           "SELECT count(*) FROM command_log"
                           " WHERE expires_at <= ?1",
                           -1, &st, NULL) == SQLITE_OK &&
        sqlite3_bind_int64(st, 1, now) == SQLITE_OK &&
        sqlite3_step(st) == SQLITE_ROW)
        n = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return n;
}

static int fill(cq_store *s, long keys, int64_t now)
{
    static const char hexd[] = "0123456789abcdef";
    char key[40], hash[65];
    char resp[256];
    uint64_t x = 0x9e3779b97f4a7c15u;

    snprintf(resp, sizeof resp,
             "{\"command_id\":\"0190f0a2-7b1c-7d3e-9f00-123456789abc\","
             "\"stream_id\":\"order-o-123456\",\"version\":1,"
             "\"position\":123456,\"events\":[{\"type\":\"OrderPlaced\","
             "\"version\":1,\"position\":123456}]}");
    memset(hash, 'a', 64);
    hash[64] = '\0';
    if (keys == 0)
        return 0;
    for (long i = 0; i < keys; i++) {
        if (i % 10000 == 0) {
            if (i > 0 && cq_store_commit(s) != CQ_OK)
                return -1;
            if (cq_store_begin(s) != CQ_OK)
                return -1;
        }
        for (int j = 0; j < 32; j++) {
            x ^= x >> 12, x ^= x << 25, x ^= x >> 27;
            key[j] = hexd[(x * 0x2545f4914f6cdd1du) >> 60];
        }
        key[32] = '\0';
        /* Expired a little while ago, oldest first, as a TTL leaves them. */
        int64_t exp = now - 1000 - (keys - i);
        cq_cmdlog_entry e = {key, hash, 202, resp, exp - 60000, exp};
        if (cq_store_cmdlog_put(s, &e) != CQ_OK)
            return -1;
    }
    return cq_store_commit(s) == CQ_OK ? 0 : -1;
}

int main(int argc, char **argv)
{
    long keys = 275000;
    int commands = 3000, nclients = 4, drain_timeout = 60;
    const char *parent = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
    const char *tag = NULL;
    char dir[512], cmd[600], path[600], err[256];
    cq_store *store = NULL;
    cq_writer *writer = NULL;
    sqlite3 *probe = NULL;
    int status = 1;

    for (int i = 1; i < argc; i++) {
        if (i + 1 < argc && strcmp(argv[i], "--keys") == 0)
            keys = atol(argv[++i]);
        else if (i + 1 < argc && strcmp(argv[i], "--commands") == 0)
            commands = atoi(argv[++i]);
        else if (i + 1 < argc && strcmp(argv[i], "--clients") == 0)
            nclients = atoi(argv[++i]);
        else if (i + 1 < argc && strcmp(argv[i], "--dir") == 0)
            parent = argv[++i];
        else if (i + 1 < argc && strcmp(argv[i], "--drain-timeout") == 0)
            drain_timeout = atoi(argv[++i]);
        else if (i + 1 < argc && strcmp(argv[i], "--tag") == 0)
            tag = argv[++i];
        else {
            fprintf(stderr,
                    "usage: bench_prune [--keys N] [--commands M] [--clients C]"
                    " [--dir DIR] [--drain-timeout S] [--tag T]\n");
            return 2;
        }
    }
    if (keys < 0 || commands < 1 || nclients < 1 || nclients > 64 ||
        drain_timeout < 0) {
        fprintf(stderr, "bench_prune: bad arguments\n");
        return 2;
    }
    snprintf(dir, sizeof dir, "%s/cqrsd-prune.XXXXXX", parent);
    if (mkdtemp(dir) == NULL) {
        perror("bench_prune: mkdtemp");
        return 1;
    }

    cq_store_config scfg = {.dir = dir, .sync_full = 1, .read_connections = 2};
    if (cq_store_open(&scfg, &store, err, sizeof err) != CQ_OK) {
        fprintf(stderr, "bench_prune: %s\n", err);
        goto out;
    }
    uint64_t f0 = cq_mono_ns();
    if (fill(store, keys, cq_now_ms()) != 0) {
        fprintf(stderr, "bench_prune: fill: %s\n", cq_store_errmsg(store));
        goto out;
    }
    printf("filled %ld expired keys in %.1f s\n", keys,
           (double)(cq_mono_ns() - f0) / 1e9);
    snprintf(path, sizeof path, "%s/events.db", dir);
    if (sqlite3_open_v2(path, &probe, SQLITE_OPEN_READONLY, NULL) !=
        SQLITE_OK) {
        fprintf(stderr, "bench_prune: cannot open %s\n", path);
        goto out;
    }

    cq_writer_config wcfg = {0};
    wcfg.idempotency_ttl_ms = 60000;
    wcfg.domain = orders_domain();
    if (cq_writer_start(store, &wcfg, &writer) != CQ_OK) {
        fprintf(stderr, "bench_prune: cannot start the writer\n");
        goto out;
    }
    int64_t *lat = calloc((size_t)commands, sizeof *lat);
    client cl[64];
    pthread_t th[64];
    int given = 0, bad = 0;
    uint64_t t0 = cq_mono_ns();
    for (int i = 0; i < nclients; i++) {
        int n = commands / nclients + (i < commands % nclients);
        cl[i] =
            (client){.id = i, .n = n, .lat_us = lat + given, .writer = writer};
        pthread_mutex_init(&cl[i].mu, NULL);
        pthread_cond_init(&cl[i].cv, NULL);
        given += n;
        pthread_create(&th[i], NULL, client_main, &cl[i]);
    }
    for (int i = 0; i < nclients; i++) {
        pthread_join(th[i], NULL);
        bad += cl[i].bad;
        pthread_mutex_destroy(&cl[i].mu);
        pthread_cond_destroy(&cl[i].cv);
    }
    double secs = (double)(cq_mono_ns() - t0) / 1e9;
    long long left = count_expired(probe, cq_now_ms());

    /* Idle now: how long until the writer has removed the rest. */
    uint64_t d0 = cq_mono_ns();
    long long now_left = left;
    while (now_left > 0 &&
           cq_mono_ns() - d0 < (uint64_t)drain_timeout * 1000000000u) {
        usleep(10000);
        now_left = count_expired(probe, cq_now_ms());
    }
    double drain = (double)(cq_mono_ns() - d0) / 1e9;

    qsort(lat, (size_t)commands, sizeof *lat, cmp64);
    int64_t p50 = lat[commands / 2], p99 = lat[(commands * 99) / 100],
            mx = lat[commands - 1];
    printf("%d PlaceOrder commands with an Idempotency-Key, %d clients, "
           "%.1f s (%.0f cmd/s), %d not 202\n",
           commands, nclients, secs, commands / secs, bad);
    printf("latency: p50 %.2f ms, p99 %.2f ms, max %.2f ms\n", p50 / 1000.0,
           p99 / 1000.0, mx / 1000.0);
    printf("expired keys left after the last answer: %lld of %ld; all gone "
           "%.2f s later%s\n",
           left, keys, drain, now_left > 0 ? " (NOT: timed out)" : "");
    printf("BENCH kind=prune%s%s keys=%ld commands=%d p50_us=%lld p99_us=%lld "
           "max_us=%lld left=%lld drain_s=%.2f drained=%d non202=%d\n",
           tag ? "_" : "", tag ? tag : "", keys, commands, (long long)p50,
           (long long)p99, (long long)mx, left, drain, now_left == 0, bad);
    free(lat);
    status = now_left == 0 && bad == 0 ? 0 : 1;
out:
    cq_writer_free(writer);
    sqlite3_close(probe);
    cq_store_close(store);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "bench_prune: could not remove %s\n", dir);
    return status;
}
