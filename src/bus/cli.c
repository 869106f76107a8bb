/*
 * cli.c -- `cqrsd relay`: the relay as a process of its own (bus.h).
 * The store is opened read-only (its read side is all the relay uses);
 * SIGTERM/SIGINT stop it after the round in flight.
 */
#include <nats/nats.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bus/bus.h"
#include "store/pg.h"

int cq_bus_cli_relay(int argc, char **argv)
{
    cq_relay_config rc = {0};
    cq_store_config sc = {.sync_full = 1, .read_connections = 2,
                          .connections = 2, .read_only = 1};
    cq_store *store = NULL;
    cq_relay *relay = NULL;
    const char *data = NULL, *store_uri = NULL;
    char err[512], shown[512];
    sigset_t sigs;
    int sig = 0, status = 0;

    for (int i = 2; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (v == NULL) {
            fprintf(stderr, "cqrsd: relay: %s: unknown option or missing "
                            "value\n", a);
            return 2;
        }
        if (strcmp(a, "--data") == 0)
            data = v;
        else if (strcmp(a, "--store") == 0)
            store_uri = v;
        else if (strcmp(a, "--bus") == 0)
            rc.bus = v;
        else if (strcmp(a, "--stream") == 0)
            rc.stream = v;
        else if (strcmp(a, "--window") == 0) {
            char *end;
            long w = strtol(v, &end, 10);
            if (*end != '\0' || w < 1 || w > 65536) {
                fprintf(stderr, "cqrsd: relay: --window needs 1..65536\n");
                return 2;
            }
            rc.window = (int)w;
        } else {
            fprintf(stderr, "cqrsd: relay: unknown option %s\n", a);
            return 2;
        }
        i++;
    }
    if (rc.bus == NULL) {
        fprintf(stderr, "cqrsd: relay: --bus nats://HOST:PORT is needed\n");
        return 2;
    }
    if (store_uri != NULL && !cq_pg_is_uri(store_uri)) {
        fprintf(stderr, "cqrsd: relay: --store wants a PostgreSQL URI\n");
        return 2;
    }
    if (store_uri == NULL && data == NULL)
        data = "./data";
    sc.uri = store_uri;
    sc.dir = data;
    cq_pg_redact(store_uri ? store_uri : data, shown, sizeof shown);

    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);

    if (cq_store_open(&sc, &store, err, sizeof err) != CQ_OK) {
        fprintf(stderr, "cqrsd: relay: cannot open the event store %s: %s\n",
                shown, err);
        return 2;
    }
    rc.store = store;
    rc.store_uri = store_uri;
    rc.dir = data;
    if (cq_relay_new(&rc, &relay, err, sizeof err) != CQ_OK ||
        cq_relay_start(relay) != CQ_OK) {
        fprintf(stderr, "cqrsd: relay: %s\n", err);
        status = 2;
        goto done;
    }
    fprintf(stderr, "cqrsd: relay: events of %s to %s, stream %s\n", shown,
            rc.bus, rc.stream ? rc.stream : CQ_BUS_STREAM);
    while (sigwait(&sigs, &sig) != 0)
        ;
    fprintf(stderr, "cqrsd: relay: %s: stopping\n",
            sig == SIGINT ? "SIGINT" : "SIGTERM");
done:
    cq_relay_free(relay);
    cq_store_close(store);
    cq_bus_shutdown();
    return status;
}
