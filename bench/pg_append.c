/*
 * bench_pg_append — appends per second through the event store's own
 * calls (cq_store_*) on PostgreSQL, with none of cqrsd around it (no HTTP,
 * no JSON parsing, no decider, no command log): what the store adds to a
 * commit.
 *
 * Each append is one event (an OrderPlaced-sized payload: ~230 bytes of
 * data, ~250 of metadata) to a stream of its own, in its own savepoint
 * (SAVEPOINT, append, RELEASE), as the writer runs a command; --batch B
 * of them share one transaction (BEGIN + the append lock ... COMMIT), as
 * group commit makes them. --nodes K runs K store handles on K threads
 * against the same database, each its own writer, as K cqrsd processes
 * would: they take turns at the append lock.
 *
 * Usage: bench_pg_append URI [--batch B] [--seconds S] [--nodes K]
 * URI names an existing database; the store's tables are made if absent
 * and rows are added to them (use a scratch database). Prints appends/s
 * and one "BENCH kind=pg_append ..." line.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "store/store.h"

static const char DATA[] =
    "{\"order_id\":\"ord-000000\",\"customer_id\":\"cust-42\","
    "\"lines\":[{\"sku\":\"SKU-MUG-RED-350ML\",\"qty\":2,\"unit_price\":"
    "1299},{\"sku\":\"SKU-NOTEBOOK-A5-DOTTED\",\"qty\":1,\"unit_price\":"
    "899}],\"currency\":\"EUR\",\"total\":3497,\"placed_at\":"
    "\"2026-11-23T10:00:00Z\"}";
static const char META[] =
    "{\"event_id\":\"0192f0c4-7a1e-7cc0-9d3e-5b1f2a3c4d5e\",\"command_id\":"
    "\"0192f0c4-7a1e-7cc0-9d3e-5b1f2a3c4d5f\",\"correlation_id\":"
    "\"0192f0c4-7a1e-7cc0-9d3e-5b1f2a3c4d60\",\"causation_id\":"
    "\"0192f0c4-7a1e-7cc0-9d3e-5b1f2a3c4d5f\",\"recorded_at\":"
    "\"2026-11-23T10:00:00.000Z\"}";

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

typedef struct node {
    const char *uri;
    int id, batch;
    double seconds;
    atomic_int *go;
    long appends;
    double elapsed;
    char problem[640];
} node;

static void *node_main(void *arg)
{
    node *n = arg;
    cq_store_config cfg = {.uri = n->uri, .connections = 1};
    cq_new_event ev = {"OrderPlaced", 1, DATA, META};
    cq_store *s = NULL;
    char err[512], stream[64];
    double t0, end;
    long seq = 0;

    if (cq_store_open(&cfg, &s, err, sizeof err) != CQ_OK) {
        snprintf(n->problem, sizeof n->problem, "open: %s", err);
        return NULL;
    }
    while (!atomic_load(n->go))
        ;
    t0 = now_s();
    end = t0 + n->seconds;
    while (now_s() < end) {
        int rc = cq_store_begin(s);
        for (int i = 0; rc == CQ_OK && i < n->batch; i++) {
            snprintf(stream, sizeof stream, "order-%d-%ld-%ld", n->id,
                     (long)t0, seq + i);
            rc = cq_store_savepoint(s);
            if (rc == CQ_OK)
                rc = cq_store_append(s, stream, CQ_VERSION_NO_STREAM, &ev, 1,
                                     1, NULL, NULL);
            if (rc == CQ_OK)
                rc = cq_store_release(s);
        }
        if (rc == CQ_OK)
            rc = cq_store_commit(s);
        if (rc != CQ_OK) {
            snprintf(n->problem, sizeof n->problem, "batch: %s",
                     cq_store_errmsg(s));
            cq_store_rollback(s);
            break;
        }
        seq += n->batch;
    }
    n->elapsed = now_s() - t0;
    n->appends = seq;
    cq_store_close(s);
    return NULL;
}

int main(int argc, char **argv)
{
    int batch = 1, nodes = 1;
    double seconds = 5;
    const char *uri = NULL;
    node *ns;
    pthread_t *th;
    atomic_int go;
    long total = 0;
    double elapsed = 0;

    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--batch") == 0 && i + 1 < argc)
            batch = atoi(argv[++i]);
        else if (strcmp(argv[i], "--seconds") == 0 && i + 1 < argc)
            seconds = atof(argv[++i]);
        else if (strcmp(argv[i], "--nodes") == 0 && i + 1 < argc)
            nodes = atoi(argv[++i]);
        else if (uri == NULL && argv[i][0] != '-')
            uri = argv[i];
        else {
            fprintf(stderr, "usage: bench_pg_append URI [--batch B] "
                            "[--seconds S] [--nodes K]\n");
            return 2;
        }
    }
    if (uri == NULL || batch < 1 || nodes < 1 || nodes > 64 || seconds <= 0) {
        fprintf(stderr, "usage: bench_pg_append URI [--batch B] "
                        "[--seconds S] [--nodes K]\n");
        return 2;
    }
    ns = calloc((size_t)nodes, sizeof *ns);
    th = calloc((size_t)nodes, sizeof *th);
    if (ns == NULL || th == NULL)
        return 1;
    {
        /* make the schema once, before the nodes race for it */
        cq_store_config cfg = {.uri = uri, .connections = 1};
        cq_store *s = NULL;
        char err[512];
        if (cq_store_open(&cfg, &s, err, sizeof err) != CQ_OK) {
            fprintf(stderr, "bench_pg_append: %s\n", err);
            return 1;
        }
        cq_store_close(s);
    }
    atomic_init(&go, 0);
    for (int i = 0; i < nodes; i++) {
        ns[i] = (node){.uri = uri, .id = i, .batch = batch,
                       .seconds = seconds, .go = &go};
        if (pthread_create(&th[i], NULL, node_main, &ns[i]) != 0)
            return 1;
    }
    atomic_store(&go, 1);
    for (int i = 0; i < nodes; i++) {
        pthread_join(th[i], NULL);
        if (ns[i].problem[0] != '\0') {
            fprintf(stderr, "bench_pg_append: node %d: %s\n", i,
                    ns[i].problem);
            return 1;
        }
        total += ns[i].appends;
        if (ns[i].elapsed > elapsed)
            elapsed = ns[i].elapsed;
    }
    printf("%ld appends in %.2f s with batches of %d on %d node(s): "
           "%.0f appends/s, %.0f batches/s\n",
           total, elapsed, batch, nodes, (double)total / elapsed,
           (double)total / batch / elapsed);
    printf("BENCH kind=pg_append batch=%d nodes=%d appends_per_s=%.0f\n", batch,
           nodes, (double)total / elapsed);
    free(ns);
    free(th);
    return 0;
}
