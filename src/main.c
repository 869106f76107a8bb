/*
 * main.c -- the cqrsd command line.
 *
 *   cqrsd serve [--data DIR] [--listen HOST:PORT] [--threads N]
 *               [--idempotency-ttl SECONDS] [--body-limit BYTES]
 *               [--max-connections N] [--max-connections-per-ip N]
 *               [--header-timeout SECONDS]
 *   cqrsd verify [--data DIR] [--projections DIR]
 *   cqrsd projections [--server HOST:PORT] list | status NAME |
 *                     pause | resume | reset | retry | skip NAME |
 *                     rebuild NAME [--no-wait]
 *   cqrsd backup --data DIR --to PATH
 *   cqrsd restore --from PATH --data DIR [--force]
 *   cqrsd version | help
 *
 * `serve` opens the event store, starts the writer thread and the HTTP
 * server for the orders example, then waits for SIGTERM or SIGINT. Those
 * signals are blocked in every thread and taken with sigwait() here, so
 * shutdown runs as ordinary code: let the writer commit and answer
 * everything queued (new writes meanwhile get 503), let MHD send those
 * answers and close its connections, then close the store. Nothing acknowledged
 * is lost because nothing is acknowledged before its commit.
 *
 * `verify` replays the events into a scratch database and compares every
 * declared projection's live tables with it (src/projection/verify.h,
 * docs/verify.md). It opens read-only connections only, so it may run
 * beside a server on the same directory. Exit 0: all match; 1: differences
 * (listed on stdout); 2: bad usage or a directory it cannot read.
 */
#include <errno.h>
#include <limits.h>
#include <netdb.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/backup.h"
#include "cli/cli.h"
#include "command/writer.h"
#include "projection/engine.h"
#include "query/query.h"
#include "projection/verify.h"
#include "cqrs/cqrs.h"
#include "http/server.h"
#include "orders/orders.h"
#include "store/store.h"
#include "wiring.h"

typedef struct options {
    const char *data;
    const char *listen;
    const char *projections;
    int64_t threads;
    int64_t ttl_s;
    int64_t body_limit;
    int64_t max_conns, max_per_ip, header_timeout_s;
} options;

static void usage(FILE *f)
{
    fputs("usage: cqrsd serve [--data DIR] [--listen HOST:PORT] "
          "[--threads N]\n"
          "                   [--idempotency-ttl SECONDS] "
          "[--body-limit BYTES]\n"
          "                   [--max-connections N] "
          "[--max-connections-per-ip N]\n"
          "                   [--header-timeout SECONDS] [--projections DIR]\n"
          "       cqrsd verify [--data DIR] [--projections DIR]\n"
          "       cqrsd projections [--server HOST:PORT] list | status NAME |\n"
          "                         pause | resume | reset | retry | skip "
          "NAME |\n"
          "                         rebuild NAME [--no-wait]\n"
          "       cqrsd backup --data DIR --to PATH\n"
          "       cqrsd restore --from PATH --data DIR [--force]\n"
          "       cqrsd version\n"
          "\n"
          "  --data DIR              where events.db lives (default ./data)\n"
          "  --listen HOST:PORT      address to serve on (default "
          "127.0.0.1:8080;\n"
          "                          [::1]:8080 for IPv6, port 0 picks one)\n"
          "  --threads N             HTTP threads, 1-64 (default 2)\n"
          "  --idempotency-ttl S     how long Idempotency-Keys are "
          "remembered,\n"
          "                          1-31536000 seconds (default 86400)\n"
          "  --body-limit BYTES      largest request body, 1024-67108864\n"
          "                          (default 1048576)\n"
          "  --max-connections N     open HTTP connections, 16-1000000 "
          "(default 8192)\n"
          "  --max-connections-per-ip N\n"
          "                          of them from one client address "
          "(default 1024)\n"
          "  --header-timeout S      a request head must arrive within S "
          "seconds,\n"
          "                          1-3600 (default 10)\n"
          "  --projections DIR       also load every *.sql projection in DIR\n"
          "                          (the orders read models are built in)\n"
          "\n"
          "  verify replays the events into a scratch database and compares\n"
          "  each projection's tables with it (safe while a server runs);\n"
          "  exit 0: all match, 1: differences (listed), 2: usage or I/O "
          "error\n",
          f);
}

/* Strict decimal integer in [min, max]. */
static int parse_num(const char *flag, const char *s, int64_t min, int64_t max,
                     int64_t *out)
{
    char *end;
    long long v;

    errno = 0;
    v = strtoll(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || v < min || v > max) {
        fprintf(stderr,
                "cqrsd: %s needs an integer from %lld to %lld, not "
                "'%s'\n",
                flag, (long long)min, (long long)max, s);
        return -1;
    }
    *out = v;
    return 0;
}

static int parse_args(int argc, char **argv, options *o)
{
    o->data = "./data";
    o->listen = "127.0.0.1:8080";
    o->projections = NULL;
    o->threads = 2;
    o->ttl_s = 86400;
    o->body_limit = 1024 * 1024;
    o->max_conns = 8192;
    o->max_per_ip = 1024;
    o->header_timeout_s = 10;
    for (int i = 2; i < argc; i += 2) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        int rc = 0;

        if (v == NULL) {
            fprintf(stderr, "cqrsd: %s: unknown option or missing value\n", a);
            return -1;
        }
        if (strcmp(a, "--data") == 0)
            o->data = v;
        else if (strcmp(a, "--listen") == 0)
            o->listen = v;
        else if (strcmp(a, "--projections") == 0)
            o->projections = v;
        else if (strcmp(a, "--threads") == 0)
            rc = parse_num(a, v, 1, 64, &o->threads);
        else if (strcmp(a, "--idempotency-ttl") == 0)
            rc = parse_num(a, v, 1, 31536000, &o->ttl_s);
        else if (strcmp(a, "--body-limit") == 0)
            rc = parse_num(a, v, 1024, 64 * 1024 * 1024, &o->body_limit);
        else if (strcmp(a, "--max-connections") == 0)
            rc = parse_num(a, v, 16, 1000000, &o->max_conns);
        else if (strcmp(a, "--max-connections-per-ip") == 0)
            rc = parse_num(a, v, 1, 1000000, &o->max_per_ip);
        else if (strcmp(a, "--header-timeout") == 0)
            rc = parse_num(a, v, 1, 3600, &o->header_timeout_s);
        else {
            fprintf(stderr, "cqrsd: unknown option %s\n", a);
            return -1;
        }
        if (rc != 0)
            return -1;
    }
    return 0;
}

/* HOST:PORT or [V6]:PORT into a numeric socket address. */
static int parse_listen(const char *spec, cq_server_config *cfg)
{
    char host[256];
    const char *port;
    struct addrinfo hints, *res = NULL;
    int64_t p;
    int rc;

    if (spec[0] == '[') {
        const char *close = strchr(spec, ']');
        if (close == NULL || close[1] != ':' ||
            (size_t)(close - spec - 1) >= sizeof host)
            goto bad;
        memcpy(host, spec + 1, (size_t)(close - spec - 1));
        host[close - spec - 1] = '\0';
        port = close + 2;
    } else {
        const char *colon = strrchr(spec, ':');
        if (colon == NULL || (size_t)(colon - spec) >= sizeof host)
            goto bad;
        memcpy(host, spec, (size_t)(colon - spec));
        host[colon - spec] = '\0';
        port = colon + 1;
    }
    if (parse_num("--listen port", port, 0, 65535, &p) != 0)
        return -1;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    rc = getaddrinfo(host[0] ? host : NULL, port, &hints, &res);
    if (rc != 0) {
        fprintf(stderr, "cqrsd: --listen %s: %s\n", spec, gai_strerror(rc));
        return -1;
    }
    memcpy(&cfg->addr, res->ai_addr, res->ai_addrlen);
    cfg->addrlen = res->ai_addrlen;
    freeaddrinfo(res);
    return 0;
bad:
    fprintf(stderr,
            "cqrsd: --listen wants HOST:PORT or [IPV6]:PORT, not "
            "'%s'\n",
            spec);
    return -1;
}

/* Load the built-in orders read models, then every *.sql in dir (may be
 * NULL), in name order. */
static int load_projections(cq_engine *e, const char *dir, char *err,
                            size_t errcap)
{
    for (const orders_sql_file *f = orders_projection_files; f->name; f++) {
        int rc = cq_engine_load_text(e, f->name, f->text, f->len, err, errcap);
        if (rc != CQ_OK)
            return rc;
    }
    if (dir == NULL)
        return CQ_OK;
    return cq_engine_load_dir(e, dir, err, errcap);
}

static int serve(const options *o)
{
    cq_store_config scfg = {
        .dir = o->data, .sync_full = 1, .read_connections = 4};
    cq_writer_config wcfg = {0};
    cq_server_config hcfg;
    cq_store *store = NULL;
    cq_writer *writer = NULL;
    cq_engine *engine = NULL;
    cq_engine_config ecfg = {o->data, 0, 0, orders_domain()};
    cq_server *server = NULL;
    sigset_t sigs;
    char err[512];
    int sig = 0, rc;

    memset(&hcfg, 0, sizeof hcfg);
    if (parse_listen(o->listen, &hcfg) != 0)
        return 2;
    hcfg.threads = (int)o->threads;
    hcfg.body_limit = (size_t)o->body_limit;
    hcfg.max_connections = (unsigned)o->max_conns;
    hcfg.max_connections_per_ip = (unsigned)o->max_per_ip;
    hcfg.header_timeout_s = (unsigned)o->header_timeout_s;
    wcfg.idempotency_ttl_ms = o->ttl_s * 1000;

    /* Block the signals before any thread exists so every thread inherits
     * the mask and only sigwait() below sees them. */
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);

    rc = cq_store_open(&scfg, &store, err, sizeof err);
    if (rc != CQ_OK) {
        fprintf(stderr, "cqrsd: cannot open the event store in %s: %s\n",
                o->data, err);
        return 1;
    }
    rc = cq_engine_new(&ecfg, store, &engine, err, sizeof err);
    if (rc == CQ_OK)
        rc = load_projections(engine, o->projections, err, sizeof err);
    if (rc == CQ_OK)
        rc = cq_query_attach(engine, err, sizeof err);
    if (rc == CQ_OK)
        rc = cq_engine_start(engine, err, sizeof err);
    if (rc != CQ_OK) {
        fprintf(stderr, "cqrsd: projections: %s\n", err);
        goto done;
    }
    wcfg.hooks = cq_wiring_writer_hooks(engine);
    wcfg.domain = orders_domain();
    rc = cq_writer_start(store, &wcfg, &writer);
    if (rc != CQ_OK) {
        fprintf(stderr, "cqrsd: cannot start the writer: %s\n",
                cq_strerror(rc));
        goto done;
    }
    rc = cq_server_start(&hcfg, store, writer, engine, orders_domain(), &server,
                         err, sizeof err);
    if (rc != CQ_OK) {
        fprintf(stderr, "cqrsd: --listen %s: %s\n", o->listen, err);
        goto done;
    }
    fprintf(stderr,
            "cqrsd: serving the orders example on %s (port %u), "
            "data in %s\n",
            o->listen, cq_server_port(server), o->data);

    while (sigwait(&sigs, &sig) != 0)
        ;
    fprintf(stderr, "cqrsd: %s: finishing queued commands and stopping\n",
            sig == SIGINT ? "SIGINT" : "SIGTERM");
done:
    cq_writer_stop(writer);       /* commits and answers what is queued */
    cq_engine_stop(engine);       /* answers every waiting query */
    cq_server_stop(server, 5000); /* sends those answers, then stops */
    cq_writer_free(writer);
    cq_engine_free(engine);
    cq_store_close(store);
    return rc == CQ_OK ? 0 : 1;
}

/* cqrsd verify [--data DIR] [--projections DIR]: the same projections as
 * serve, checked against the events (projection/verify.h). */
static int verify(int argc, char **argv)
{
    const char *data = "./data", *projections = NULL;
    cq_verify *v = NULL;
    char err[1024];
    int64_t diffs = 0;
    int rc;

    for (int i = 2; i < argc; i += 2) {
        if (i + 1 >= argc) {
            fprintf(stderr, "cqrsd: %s: unknown option or missing value\n",
                    argv[i]);
            return 2;
        }
        if (strcmp(argv[i], "--data") == 0)
            data = argv[i + 1];
        else if (strcmp(argv[i], "--projections") == 0)
            projections = argv[i + 1];
        else {
            fprintf(stderr, "cqrsd: verify: unknown option %s\n", argv[i]);
            return 2;
        }
    }
    if (cq_verify_new(&v) == CQ_OK)
        cq_verify_set_domain(v, orders_domain());
    if (v == NULL) {
        fprintf(stderr, "cqrsd: out of memory\n");
        return 2;
    }
    rc = CQ_OK;
    for (const orders_sql_file *f = orders_projection_files;
         rc == CQ_OK && f->name; f++)
        rc = cq_verify_load_text(v, f->name, f->text, f->len, err, sizeof err);
    if (rc == CQ_OK && projections != NULL)
        rc = cq_verify_load_dir(v, projections, err, sizeof err);
    if (rc != CQ_OK) {
        fprintf(stderr, "cqrsd: projections: %s\n", err);
        cq_verify_free(v);
        return 2;
    }
    rc = cq_verify_run(v, data, stdout, &diffs, err, sizeof err);
    cq_verify_free(v);
    if (rc != CQ_OK) {
        fprintf(stderr, "cqrsd: verify: %s\n", err);
        return 2;
    }
    if (diffs > 0) {
        printf("verify: %lld difference%s\n", (long long)diffs,
               diffs == 1 ? "" : "s");
        return 1;
    }
    printf("verify: every projection matches its events\n");
    return 0;
}

int main(int argc, char **argv)
{
    options o;

    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (strcmp(argv[1], "version") == 0 || strcmp(argv[1], "--version") == 0) {
        printf("cqrsd %s\n", CQ_VERSION_STRING);
        return 0;
    }
    if (strcmp(argv[1], "help") == 0 || strcmp(argv[1], "--help") == 0) {
        usage(stdout);
        return 0;
    }
    if (strcmp(argv[1], "verify") == 0)
        return verify(argc, argv);
    if (strcmp(argv[1], "projections") == 0)
        return cq_cli_projections(argc, argv);
    if (strcmp(argv[1], "backup") == 0 || strcmp(argv[1], "restore") == 0)
        return cq_cli_backup(argc, argv);
    if (strcmp(argv[1], "serve") != 0) {
        fprintf(stderr, "cqrsd: unknown command '%s'\n", argv[1]);
        usage(stderr);
        return 2;
    }
    if (parse_args(argc, argv, &o) != 0)
        return 2;
    return serve(&o);
}
