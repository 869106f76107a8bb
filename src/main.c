/*
 * main.c -- the cqrsd command line.
 *
 *   cqrsd serve [--data DIR | --store URI [--read-store URI]
 *                [--pg-connections N]] [--listen HOST:PORT] [--threads N]
 *               [--idempotency-ttl SECONDS] [--body-limit BYTES]
 *               [--max-connections N] [--max-connections-per-ip N]
 *               [--header-timeout SECONDS] [--domain PATH]...
 *               [--tokens FILE] [--insecure-no-auth] [--public-metrics]
 *               [--tls-cert FILE --tls-key FILE] [--write-queue N]
 *               [--rate-limit N/s] [--max-waiters N] [--cache-entries N]
 *   cqrsd tokens add NAME --scopes LIST | list | revoke NAME
 *                [--data DIR | --tokens FILE]
 *   cqrsd verify [--data DIR | --store URI [--read-store URI]]
 *                [--projections DIR] [--domain PATH]...
 *   cqrsd new NAME [DIR]
 *   cqrsd projections [--server HOST:PORT] list | status NAME |
 *                     pause | resume | reset | retry | skip NAME |
 *                     rebuild NAME [--no-wait]
 *   cqrsd backup --data DIR --to PATH
 *   cqrsd restore --from PATH --data DIR [--force]
 *   cqrsd version | help
 *
 * `serve` loads the domain modules (--domain, else the orders example;
 * src/modules.h: a module that cannot be used stops the start with exit
 * code 2 before the data directory is touched), opens the event store,
 * starts the writer thread and the HTTP server, then waits for SIGTERM or
 * SIGINT. Those signals are blocked in every thread and taken with
 * sigwait() here, so shutdown runs as ordinary code: let the writer commit
 * and answer everything queued (new writes meanwhile get 503), let MHD send
 * those answers and close its connections, then close the store. Nothing
 * acknowledged is lost because nothing is acknowledged before its commit.
 * SIGHUP reads the token file again (docs/security.md: tokens, TLS, the
 * overload bounds, and the refusal of a non-loopback --listen without a
 * token, exit 2).
 *
 * With --store (a PostgreSQL URI) the events, the command log and the
 * inline projections live in that database, and the asynchronous
 * projections in --read-store's (by default the same one); nothing is
 * written under --data. Several such servers may run on one database
 * (src/projection/engine.h, "Several nodes"). A database that cannot be
 * reached at start is exit 2, with one line naming it, password hidden.
 *
 * `verify` replays the events into a scratch database and compares every
 * declared projection's live tables with it (src/projection/verify.h,
 * docs/verify.md). It opens read-only connections only, so it may run
 * beside a server on the same directory. Exit 0: all match; 1: differences
 * (listed on stdout); 2: bad usage or a directory it cannot read.
 */
#include <arpa/inet.h>
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
#include "bus/bus.h"
#include "projection/engine.h"
#include "query/query.h"
#include "projection/verify.h"
#include "cqrs/cqrs.h"
#include "http/auth.h"
#include "http/server.h"
#include "modules.h"
#include "store/pg.h"
#include "store/store.h"
#include "wiring.h"

typedef struct options {
    const char *data;
    const char *store;      /* PostgreSQL URI, or NULL: SQLite in data */
    const char *read_store; /* PostgreSQL URI, or NULL: as the store */
    int64_t pg_connections;
    const char *listen;
    const char *projections;
    int64_t threads;
    int64_t ttl_s;
    int64_t body_limit;
    int64_t max_conns, max_per_ip, header_timeout_s;
    int64_t max_subscribers, heartbeat_ms;
    const char *domains[CQ_MODULES_MAX]; /* --domain, in order */
    size_t ndomains;
    const char *bus; /* --bus URL: run the relay in-process (bus/bus.h) */
    int projector;   /* --projector off: leave asynchronous projections to
                        `cqrsd project` workers */
    /* security (docs/security.md) */
    const char *tokens; /* token file; NULL: DATA/tokens when --data */
    int insecure_no_auth, public_metrics;
    const char *tls_cert, *tls_key;
    int64_t write_queue, max_waiters;
    int64_t rate_limit; /* requests a second per caller; 0: none */
    int64_t cache_entries; /* aggregate states the writer keeps */
} options;

static void usage(FILE *f)
{
    fputs("usage: cqrsd serve [--data DIR | --store URI [--read-store URI]\n"
          "                    [--pg-connections N]] [--listen HOST:PORT]\n"
          "                   [--threads N] [--idempotency-ttl SECONDS]\n"
          "                   [--body-limit BYTES] [--max-connections N]\n"
          "                   [--max-connections-per-ip N]\n"
          "                   [--header-timeout SECONDS] [--projections DIR]\n"
          "                   [--domain PATH]... [--bus nats://HOST:PORT]\n"
          "                   [--projector on|off] [--max-subscribers N]\n"
          "                   [--heartbeat-ms MS]\n"
          "       cqrsd relay [--data DIR | --store URI] --bus nats://HOST:PORT\n"
          "                   [--stream NAME] [--window N] [--listen HOST:PORT]\n"
          "       cqrsd project --bus nats://HOST:PORT --read-store URI\n"
          "                     [--store URI] [--projection NAME]...\n"
          "                     [--batch N] [--projections DIR]\n"
          "                     [--domain PATH]... [--stream NAME]\n"
          "                     [--listen HOST:PORT]\n"
          "       cqrsd verify [--data DIR | --store URI [--read-store URI]]\n"
          "                    [--projections DIR] [--domain PATH]...\n"
          "       cqrsd new NAME [DIR]\n"
          "       cqrsd projections [--server HOST:PORT] list | status NAME |\n"
          "                         pause | resume | reset | retry | skip "
          "NAME |\n"
          "                         rebuild NAME [--no-wait]\n"
          "       cqrsd backup --data DIR --to PATH\n"
          "       cqrsd restore --from PATH --data DIR [--force]\n"
          "       cqrsd version\n"
          "\n"
          "  --data DIR              where events.db and read.db live "
          "(default ./data;\n"
          "                          not used when both stores are on "
          "PostgreSQL)\n"
          "  --store URI             keep the events, the command log and "
          "inline\n"
          "                          projections in PostgreSQL "
          "(postgresql://...);\n"
          "                          several servers may share one "
          "database\n"
          "  --read-store URI        keep asynchronous projections in this\n"
          "                          PostgreSQL database (default: the "
          "--store one)\n"
          "  --pg-connections N      most connections to each PostgreSQL "
          "database,\n"
          "                          5-1000 (default 8)\n"
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
          "  --max-subscribers N     GET /subscribe streams at once, 1-1000000 "
          "(default\n"
          "                          1024; more are answered 503)\n"
          "  --heartbeat-ms MS       a comment on a silent event stream every "
          "MS\n"
          "                          milliseconds, 100-3600000 (default 15000)\n"
          "  --projections DIR       also load every *.sql projection in DIR\n"
          "  --domain PATH           serve the domain module PATH (a .so\n"
          "                          built against cqrs.pc); repeatable;\n"
          "                          default: the orders example installed\n"
          "                          with cqrsd\n"
          "  --tokens FILE           the token file (default DIR/tokens with\n"
          "                          --data; see `cqrsd tokens`)\n"
          "  --insecure-no-auth      serve a non-loopback --listen with no "
          "tokens\n"
          "  --public-metrics        /metrics needs no admin token\n"
          "  --tls-cert FILE --tls-key FILE\n"
          "                          serve HTTPS with this PEM certificate "
          "and key\n"
          "  --write-queue N         commands queued for the writer, "
          "1-1000000\n"
          "                          (default 16384; more: 503)\n"
          "  --rate-limit N/s        requests a second per token (per client\n"
          "                          address when open); more: 429\n"
          "  --max-waiters N         queries waiting at once, 1-1000000\n"
          "                          (default 4096; more: 503)\n"
          "  --cache-entries N       aggregate states the writer keeps in "
          "memory,\n"
          "                          least recently used out, 1-10000000\n"
          "                          (default 4096)\n"
          "\n"
          "  tokens add NAME --scopes command,query,subscribe,admin prints a\n"
          "  new token's secret once; tokens list; tokens revoke NAME\n"
          "\n"
          "  new NAME [DIR] writes a domain project to build as a module\n"
          "  (DIR defaults to ./NAME; see its README.md)\n"
          "\n"
          "  verify replays the events into a scratch database and compares\n"
          "  each projection's tables with it (safe while a server runs);\n"
          "  exit 0: all match, 1: differences (listed), 2: usage or I/O "
          "error\n",
          f);
}

/* --store and --read-store, when given, must name PostgreSQL databases
 * (--read-store also goes with an embedded event store, which keeps to
 * one server). Without --store the event store is SQLite in *data, which
 * defaults to ./data; with it nothing is kept in *data. 0, or -1 with a
 * message. */
static int check_stores(const char *store, const char *read_store,
                        const char **data)
{
    const char *flag = NULL, *v = NULL;

    if (store != NULL && !cq_pg_is_uri(store))
        flag = "--store", v = store;
    else if (read_store != NULL && !cq_pg_is_uri(read_store))
        flag = "--read-store", v = read_store;
    if (flag != NULL) {
        char shown[512];
        cq_pg_redact(v, shown, sizeof shown);
        fprintf(stderr,
                "cqrsd: %s wants a PostgreSQL URI (postgresql://...), not "
                "'%s'\n",
                flag, shown);
        return -1;
    }
    if (*data == NULL && store == NULL)
        *data = "./data";
    return 0;
}

/* Connect to the PostgreSQL database at uri once, to find out at start
 * whether it can be reached: 0, or -1 with one line naming it (password
 * hidden) on stderr. */
static int reachable(const char *uri)
{
    PGconn *c = NULL;
    char err[1024];

    if (cq_pg_connect(uri, 10, &c, err, sizeof err) != CQ_OK) {
        fprintf(stderr, "cqrsd: %s\n", err);
        return -1;
    }
    PQfinish(c);
    return 0;
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

/* --rate-limit N/s (or N): requests a second, 1-1000000. */
static int parse_rate(const char *v, int64_t *out)
{
    char num[32];
    size_t n = strlen(v);

    if (n > 2 && strcmp(v + n - 2, "/s") == 0)
        n -= 2;
    if (n == 0 || n >= sizeof num) {
        fprintf(stderr, "cqrsd: --rate-limit wants N/s, not '%s'\n", v);
        return -1;
    }
    memcpy(num, v, n);
    num[n] = '\0';
    return parse_num("--rate-limit", num, 1, 1000000, out);
}

/* The whole of a PEM file (at most 1 MiB) as a malloc'd text, or NULL
 * with one line on stderr. */
static char *read_pem(const char *flag, const char *path)
{
    FILE *f = fopen(path, "rb");
    char *buf = NULL;
    size_t n = 0;

    if (f != NULL) {
        buf = malloc(1024 * 1024 + 1);
        if (buf != NULL)
            n = fread(buf, 1, 1024 * 1024 + 1, f);
        if (buf != NULL && (ferror(f) || n > 1024 * 1024 || n == 0)) {
            free(buf);
            buf = NULL;
        }
        fclose(f);
    }
    if (buf == NULL) {
        fprintf(stderr, "cqrsd: %s %s: %s\n", flag, path,
                f == NULL ? strerror(errno) : "unreadable, empty or too large");
        return NULL;
    }
    buf[n] = '\0';
    return buf;
}

/* 1 if addr is a loopback address (127.0.0.0/8, ::1). */
static int loopback(const struct sockaddr_storage *addr)
{
    if (addr->ss_family == AF_INET)
        return (ntohl(((const struct sockaddr_in *)addr)->sin_addr.s_addr) >>
                24) == 127;
    if (addr->ss_family == AF_INET6)
        return IN6_IS_ADDR_LOOPBACK(
            &((const struct sockaddr_in6 *)addr)->sin6_addr);
    return 0;
}

/* The security part of the server's configuration: the token file (and
 * the refusal of a non-loopback --listen without tokens), the rate
 * limit, the TLS certificate and key, the bounds. 0, or -1 with one line
 * on stderr (exit 2). *auth, *cert and *key are the caller's to free. */
static int security_config(const options *o, cq_server_config *hcfg,
                           cq_auth **auth, char **cert, char **key)
{
    char path[4096], err[512];
    const char *file = o->tokens;

    *auth = NULL;
    *cert = *key = NULL;
    if (file == NULL && o->data != NULL) {
        snprintf(path, sizeof path, "%s/tokens", o->data);
        file = path;
    }
    if (cq_auth_new(file, (double)o->rate_limit, o->public_metrics, auth, err,
                    sizeof err) != CQ_OK) {
        fprintf(stderr, "cqrsd: %s\n", err);
        return -1;
    }
    if (!loopback(&hcfg->addr) && !o->insecure_no_auth &&
        cq_auth_count(*auth) == 0) {
        fprintf(stderr,
                "cqrsd: --listen %s is not a loopback address and there is "
                "no token (add one with `cqrsd tokens add`, or give "
                "--insecure-no-auth)\n",
                o->listen);
        return -1;
    }
    if ((o->tls_cert == NULL) != (o->tls_key == NULL)) {
        fprintf(stderr, "cqrsd: --tls-cert and --tls-key go together\n");
        return -1;
    }
    if (o->tls_cert != NULL &&
        ((*cert = read_pem("--tls-cert", o->tls_cert)) == NULL ||
         (*key = read_pem("--tls-key", o->tls_key)) == NULL))
        return -1;
    hcfg->auth = *auth;
    hcfg->tls_cert = *cert;
    hcfg->tls_key = *key;
    hcfg->max_waiters = (int)o->max_waiters;
    return 0;
}

/* One more --domain PATH. */
static int add_domain(const char **domains, size_t *n, const char *path)
{
    if (*n == CQ_MODULES_MAX) {
        fprintf(stderr, "cqrsd: at most %d --domain options\n", CQ_MODULES_MAX);
        return -1;
    }
    domains[(*n)++] = path;
    return 0;
}

static int parse_args(int argc, char **argv, options *o)
{
    o->data = NULL;
    o->store = NULL;
    o->read_store = NULL;
    o->pg_connections = 8;
    o->listen = "127.0.0.1:8080";
    o->projections = NULL;
    o->threads = 2;
    o->ttl_s = 86400;
    o->body_limit = 1024 * 1024;
    o->max_conns = 8192;
    o->max_per_ip = 1024;
    o->header_timeout_s = 10;
    o->max_subscribers = 1024;
    o->heartbeat_ms = 15000;
    o->ndomains = 0;
    o->bus = NULL;
    o->projector = 1;
    o->tokens = o->tls_cert = o->tls_key = NULL;
    o->insecure_no_auth = o->public_metrics = 0;
    o->write_queue = 16384;
    o->max_waiters = 4096;
    o->rate_limit = 0;
    o->cache_entries = 4096;
    /* each option takes one value, except the flags (i += 1) */
    for (int i = 2; i < argc;) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        int rc = 0;

        /* the flags without a value (security) */
        if (strcmp(a, "--insecure-no-auth") == 0) {
            o->insecure_no_auth = 1;
            i++;
            continue;
        }
        if (strcmp(a, "--public-metrics") == 0) {
            o->public_metrics = 1;
            i++;
            continue;
        }

        if (v == NULL) {
            fprintf(stderr, "cqrsd: %s: unknown option or missing value\n", a);
            return -1;
        }
        if (strcmp(a, "--data") == 0)
            o->data = v;
        else if (strcmp(a, "--store") == 0)
            o->store = v;
        else if (strcmp(a, "--read-store") == 0)
            o->read_store = v;
        else if (strcmp(a, "--pg-connections") == 0)
            rc = parse_num(a, v, 5, 1000, &o->pg_connections);
        else if (strcmp(a, "--listen") == 0)
            o->listen = v;
        else if (strcmp(a, "--projections") == 0)
            o->projections = v;
        else if (strcmp(a, "--domain") == 0)
            rc = add_domain(o->domains, &o->ndomains, v);
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
        else if (strcmp(a, "--bus") == 0)
            o->bus = v;
        else if (strcmp(a, "--projector") == 0) {
            if (strcmp(v, "on") != 0 && strcmp(v, "off") != 0) {
                fprintf(stderr, "cqrsd: --projector: '%s' is not on or off\n",
                        v);
                return -1;
            }
            o->projector = strcmp(v, "on") == 0;
        }
        else if (strcmp(a, "--tokens") == 0)
            o->tokens = v;
        else if (strcmp(a, "--tls-cert") == 0)
            o->tls_cert = v;
        else if (strcmp(a, "--tls-key") == 0)
            o->tls_key = v;
        else if (strcmp(a, "--write-queue") == 0)
            rc = parse_num(a, v, 1, 1000000, &o->write_queue);
        else if (strcmp(a, "--max-waiters") == 0)
            rc = parse_num(a, v, 1, 1000000, &o->max_waiters);
        else if (strcmp(a, "--rate-limit") == 0)
            rc = parse_rate(v, &o->rate_limit);
        else if (strcmp(a, "--max-subscribers") == 0)
            rc = parse_num(a, v, 1, 1000000, &o->max_subscribers);
        else if (strcmp(a, "--cache-entries") == 0)
            rc = parse_num(a, v, 1, 10000000, &o->cache_entries);
        else if (strcmp(a, "--heartbeat-ms") == 0)
            rc = parse_num(a, v, 100, 3600000, &o->heartbeat_ms);
        else {
            fprintf(stderr, "cqrsd: unknown option %s\n", a);
            return -1;
        }
        if (rc != 0)
            return -1;
        i += 2;
    }
    return check_stores(o->store, o->read_store, &o->data);
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

/* Load the modules' read models, then every *.sql in dir (may be NULL),
 * in name order. */
static int load_projections(cq_engine *e, const cq_modules *mods,
                            const char *dir, char *err, size_t errcap)
{
    int rc = cq_modules_load_engine(mods, e, err, errcap);

    if (rc != CQ_OK || dir == NULL)
        return rc;
    return cq_engine_load_dir(e, dir, err, errcap);
}

/* How --pg-connections N is shared out, per database: the writer, the
 * projector and the listener take one each; of the rest about 2/5 go to
 * the event store's read pool and the others to the engine's query pool
 * (one pool when both stores are one database; otherwise each database
 * has a pool of that size, and the event store's also the inline
 * projections' pool). */
static void share_connections(int64_t n, int *store_reads, int *readers)
{
    int64_t rest = n - 3, s = rest * 2 / 5;

    if (s < 1)
        s = 1;
    *store_reads = (int)s;
    *readers = (int)(rest - s < 1 ? 1 : rest - s);
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
    cq_modules *mods = NULL;
    /* the server listens at once; inline projections behind the head
     * catch up on the writer thread (cq_engine_catch_up) */
    cq_engine_config ecfg = {.dir = o->data, .defer_inline = 1};
    static const char *const no_projections[] = {NULL};
    cq_server *server = NULL;
    cq_relay *relay = NULL;
    cq_wiring wiring;
    cq_auth *auth = NULL;
    char *tls_cert = NULL, *tls_key = NULL;
    const char *read_store = o->read_store ? o->read_store : o->store;
    char shown[512] = "", shown_read[512] = "";
    sigset_t sigs;
    char err[512];
    int sig = 0, rc;

    if (o->store != NULL) {
        scfg.dir = NULL;
        scfg.uri = o->store;
        ecfg.store_uri = o->store;
        cq_pg_redact(o->store, shown, sizeof shown);
    }
    if (read_store != NULL) {
        ecfg.read_store = read_store;
        cq_pg_redact(read_store, shown_read, sizeof shown_read);
    }
    if (o->store != NULL || read_store != NULL)
        share_connections(o->pg_connections, &scfg.connections,
                          &ecfg.readers);
    /* a database that cannot be reached is a start-up error of its own:
     * one line, exit 2, nothing opened or written */
    if ((o->store != NULL && reachable(o->store) != 0) ||
        (o->read_store != NULL && reachable(o->read_store) != 0))
        return 2;

    memset(&hcfg, 0, sizeof hcfg);
    if (parse_listen(o->listen, &hcfg) != 0)
        return 2;
    hcfg.threads = (int)o->threads;
    hcfg.body_limit = (size_t)o->body_limit;
    hcfg.max_connections = (unsigned)o->max_conns;
    hcfg.max_connections_per_ip = (unsigned)o->max_per_ip;
    hcfg.header_timeout_s = (unsigned)o->header_timeout_s;
    if (security_config(o, &hcfg, &auth, &tls_cert, &tls_key) != 0) {
        cq_auth_free(auth);
        free(tls_cert);
        free(tls_key);
        return 2;
    }
    hcfg.max_subscribers = (unsigned)o->max_subscribers;
    hcfg.heartbeat_ms = (unsigned)o->heartbeat_ms;
    wcfg.idempotency_ttl_ms = o->ttl_s * 1000;
    wcfg.max_queue = (int)o->write_queue;
    wcfg.cache_slots = (size_t)o->cache_entries;
    if (cq_modules_open(o->domains, o->ndomains, &mods, err, sizeof err) !=
        CQ_OK) {
        fprintf(stderr, "cqrsd: %s\n", err);
        cq_auth_free(auth);
        free(tls_cert);
        free(tls_key);
        return 2;
    }
    ecfg.domain = cq_modules_domain(mods);
    if (!o->projector)
        ecfg.run = no_projections;

    /* Block the signals before any thread exists so every thread inherits
     * the mask and only sigwait() below sees them. */
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGHUP); /* read the token file again */
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);

    rc = cq_store_open(&scfg, &store, err, sizeof err);
    if (rc != CQ_OK) {
        fprintf(stderr, "cqrsd: cannot open the event store %s %s: %s\n",
                o->store ? "at" : "in", o->store ? shown : o->data, err);
        cq_modules_close(mods);
        cq_auth_free(auth);
        free(tls_cert);
        free(tls_key);
        /* PostgreSQL gone between the look above and the open */
        return o->store != NULL && rc == CQ_EIO ? 2 : 1;
    }
    rc = cq_engine_new(&ecfg, store, &engine, err, sizeof err);
    if (rc == CQ_OK)
        rc = load_projections(engine, mods, o->projections, err, sizeof err);
    if (rc == CQ_OK)
        rc = cq_query_attach(engine, err, sizeof err);
    if (rc == CQ_OK)
        rc = cq_engine_start(engine, err, sizeof err);
    if (rc != CQ_OK) {
        fprintf(stderr, "cqrsd: projections: %s\n", err);
        goto done;
    }
    if (o->bus != NULL) {
        cq_relay_config rcfg = {.store = store, .store_uri = o->store,
                                .dir = o->data, .bus = o->bus};
        rc = cq_relay_new(&rcfg, &relay, err, sizeof err);
        if (rc == CQ_OK)
            rc = cq_relay_start(relay);
        if (rc != CQ_OK) {
            fprintf(stderr, "cqrsd: --bus: %s\n", err);
            goto done;
        }
    }
    wiring = (cq_wiring){engine, relay};
    wcfg.hooks = cq_wiring_writer_hooks_bus(&wiring);
    wcfg.domain = cq_modules_domain(mods);
    rc = cq_writer_start(store, &wcfg, &writer);
    if (rc != CQ_OK) {
        fprintf(stderr, "cqrsd: cannot start the writer: %s\n",
                cq_strerror(rc));
        goto done;
    }
    rc = cq_server_start(&hcfg, store, writer, engine, cq_modules_domain(mods),
                         &server, err, sizeof err);
    if (rc != CQ_OK) {
        fprintf(stderr, "cqrsd: --listen %s: %s\n", o->listen, err);
        if (rc == CQ_EINVAL) /* TLS refused: a usage error, exit 2 */
            rc = 2;
        goto done;
    }
    if (relay != NULL)
        cq_relay_add_metrics(relay, cq_server_metrics(server));
    if (o->store == NULL && read_store == NULL)
        fprintf(stderr, "cqrsd: serving %s on %s (port %u), data in %s\n",
                cq_modules_names(mods), o->listen, cq_server_port(server),
                o->data);
    else
        fprintf(stderr,
                "cqrsd: serving %s on %s (port %u), events in %s, "
                "read models in %s\n",
                cq_modules_names(mods), o->listen, cq_server_port(server),
                o->store ? shown : o->data, shown_read);

    while (sigwait(&sigs, &sig) != 0 || sig == SIGHUP)
        if (sig == SIGHUP) {
            cq_auth_reload(auth);
            sig = 0;
        }
    fprintf(stderr, "cqrsd: %s: finishing queued commands and stopping\n",
            sig == SIGINT ? "SIGINT" : "SIGTERM");
done:
    cq_engine_stop_catch_up(engine); /* the writer stops between chunks */
    cq_writer_stop(writer);       /* commits and answers what is queued */
    cq_engine_stop(engine);       /* answers every waiting query */
    cq_server_stop(server, 5000); /* sends those answers, then stops */
    cq_relay_free(relay); /* after the last scrape, before the store */
    cq_writer_free(writer);
    cq_engine_free(engine);
    cq_store_close(store);
    cq_modules_close(mods); /* after everything that used its domain */
    cq_auth_free(auth);     /* after the server that used it */
    free(tls_cert);
    free(tls_key);
    return rc == CQ_OK ? 0 : rc == 2 ? 2 : 1;
}

/* cqrsd verify [--data DIR | --store URI [--read-store URI]]
 * [--projections DIR] [--domain PATH]...: the same projections as serve,
 * checked against the events (projection/verify.h). */
static int verify(int argc, char **argv)
{
    const char *data = NULL, *projections = NULL, *store = NULL,
               *read_store = NULL;
    const char *domains[CQ_MODULES_MAX];
    size_t ndomains = 0;
    cq_modules *mods = NULL;
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
        else if (strcmp(argv[i], "--store") == 0)
            store = argv[i + 1];
        else if (strcmp(argv[i], "--read-store") == 0)
            read_store = argv[i + 1];
        else if (strcmp(argv[i], "--projections") == 0)
            projections = argv[i + 1];
        else if (strcmp(argv[i], "--domain") == 0) {
            if (add_domain(domains, &ndomains, argv[i + 1]) != 0)
                return 2;
        } else {
            fprintf(stderr, "cqrsd: verify: unknown option %s\n", argv[i]);
            return 2;
        }
    }
    if (check_stores(store, read_store, &data) != 0)
        return 2;
    if (read_store != NULL && store == NULL) {
        fprintf(stderr, "cqrsd: verify: --read-store goes with --store\n");
        return 2;
    }
    if ((store != NULL && reachable(store) != 0) ||
        (read_store != NULL && reachable(read_store) != 0))
        return 2;
    if (cq_modules_open(domains, ndomains, &mods, err, sizeof err) != CQ_OK) {
        fprintf(stderr, "cqrsd: %s\n", err);
        return 2;
    }
    if (cq_verify_new(&v) == CQ_OK)
        cq_verify_set_domain(v, cq_modules_domain(mods));
    if (v == NULL) {
        fprintf(stderr, "cqrsd: out of memory\n");
        cq_modules_close(mods);
        return 2;
    }
    rc = cq_modules_load_verify(mods, v, err, sizeof err);
    if (rc == CQ_OK && projections != NULL)
        rc = cq_verify_load_dir(v, projections, err, sizeof err);
    if (rc != CQ_OK) {
        fprintf(stderr, "cqrsd: projections: %s\n", err);
        cq_verify_free(v);
        cq_modules_close(mods);
        return 2;
    }
    rc = store != NULL ? cq_verify_run_uri(v, store, read_store, stdout,
                                           &diffs, err, sizeof err)
                       : cq_verify_run(v, data, stdout, &diffs, err,
                                       sizeof err);
    cq_verify_free(v);
    cq_modules_close(mods);
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
    if (strcmp(argv[1], "new") == 0)
        return cq_cli_new(argc, argv);
    if (strcmp(argv[1], "backup") == 0 || strcmp(argv[1], "restore") == 0)
        return cq_cli_backup(argc, argv);
    if (strcmp(argv[1], "relay") == 0)
        return cq_bus_cli_relay(argc, argv);
    if (strcmp(argv[1], "project") == 0)
        return cq_bus_cli_project(argc, argv);
    if (strcmp(argv[1], "tokens") == 0)
        return cq_cli_tokens(argc, argv);
    if (strcmp(argv[1], "serve") != 0) {
        fprintf(stderr, "cqrsd: unknown command '%s'\n", argv[1]);
        usage(stderr);
        return 2;
    }
    if (parse_args(argc, argv, &o) != 0)
        return 2;
    return serve(&o);
}
