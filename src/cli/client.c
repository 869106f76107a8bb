/*
 * client.c -- `cqrsd projections ...`: the projection operations of a
 * running server, from the command line.
 *
 *   cqrsd projections [--server HOST:PORT] list
 *   cqrsd projections [--server HOST:PORT] status NAME
 *   cqrsd projections [--server HOST:PORT] pause|resume|reset|retry|skip NAME
 *   cqrsd projections [--server HOST:PORT] rebuild NAME [--no-wait]
 *
 * It speaks plain HTTP/1.1 over one TCP connection per request
 * (Connection: close) to the server's /projections routes and prints the
 * answer as a table, so scripts can rely on the exit code: 0 done, 1 the
 * server refused (the problem's detail is printed) or the rebuild failed,
 * 2 usage or connection errors.
 *
 * `rebuild` starts a blue/green rebuild (202) and then follows it:
 *
 *   1. POST /projections/NAME/rebuild; its answer's rebuild.started_at
 *      names this rebuild (if the rebuild was so short that it ended before
 *      the answer was made, rebuild is null and last_rebuild is this one);
 *   2. every 200 ms GET /projections/NAME and show rebuild's progress: on a
 *      terminal one line redrawn in place (\r, clear to end of line),
 *      otherwise a line at most once a second, so logs stay readable;
 *   3. it ended once last_rebuild.started_at is this rebuild's started_at
 *      (an older last_rebuild is not mistaken for it): outcome "done" exits
 *      0, "failed" prints the error and exits 1. If the rebuild is gone but
 *      no record of it is (the server could not log it), that is exit 1
 *      too; a server that goes away is exit 2 (the rebuild goes on, or
 *      resumes at the server's next start, without us).
 *
 * Time stamps are compared as milliseconds, parsed from the RFC 3339 UTC
 * text the server writes ("2026-11-23T16:31:35.876Z"). The server's answer
 * is not trusted: a field of the wrong type prints as "?" and an unreadable
 * time stamp ends the command with exit 2, never a crash.
 *
 * Single-threaded; no state outside the call.
 */
#include "cli/cli.h"

#include <errno.h>
#include <jansson.h>
#include <netdb.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "base/base.h"

#define MAX_ANSWER (4 * 1024 * 1024)
#define POLL_NS 200000000L        /* rebuild progress: 200 ms */
#define LOG_LINE_NS 1000000000ULL /* not a terminal: 1 line/s */

/* Send one request and read the whole answer. *status and *body (malloc'd,
 * NUL-terminated) on success; -1 with a message on stderr otherwise. */
static int http(const char *server, const char *method, const char *path,
                int *status, char **body)
{
    char host[256], req[1024];
    const char *colon = strrchr(server, ':');
    struct addrinfo hints = {0}, *res = NULL;
    struct timeval tv = {60, 0};
    char *buf = NULL, *p;
    size_t len = 0, cap = 0;
    int fd = -1, rc;

    if (colon == NULL || (size_t)(colon - server) >= sizeof host) {
        fprintf(stderr, "cqrsd: --server wants HOST:PORT, not '%s'\n", server);
        return -1;
    }
    memcpy(host, server, (size_t)(colon - server));
    host[colon - server] = '\0';
    hints.ai_socktype = SOCK_STREAM;
    rc = getaddrinfo(host, colon + 1, &hints, &res);
    if (rc != 0) {
        fprintf(stderr, "cqrsd: %s: %s\n", server, gai_strerror(rc));
        return -1;
    }
    fd = socket(res->ai_family, SOCK_STREAM, 0);
    if (fd < 0 || connect(fd, res->ai_addr, res->ai_addrlen) != 0) {
        fprintf(stderr, "cqrsd: cannot reach a server at %s: %s\n", server,
                strerror(errno));
        goto fail;
    }
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    {
        /* a server with tokens wants one (docs/security.md): CQRSD_TOKEN,
         * sent only if it is visible ASCII (no header injection) and not
         * too long */
        const char *tok = getenv("CQRSD_TOKEN");
        int ok = tok != NULL && *tok != '\0' && strlen(tok) <= 256;
        for (const char *t = tok; ok && *t; t++)
            ok = *t > 0x20 && *t < 0x7f;
        snprintf(req, sizeof req,
                 "%s %s HTTP/1.1\r\nHost: %s\r\nContent-Length: 0\r\n"
                 "%s%s%sConnection: close\r\n\r\n",
                 method, path, server, ok ? "Authorization: Bearer " : "",
                 ok ? tok : "", ok ? "\r\n" : "");
    }
    /* send(), not write(): a server that has just gone away is an error
     * message, not a SIGPIPE that ends us without one */
    if (send(fd, req, strlen(req), MSG_NOSIGNAL) != (ssize_t)strlen(req)) {
        fprintf(stderr, "cqrsd: %s: %s\n", server, strerror(errno));
        goto fail;
    }
    for (;;) {
        ssize_t n;
        if (len + 4096 + 1 > cap) {
            char *b;
            cap = cap ? cap * 2 : 8192;
            if (cap > MAX_ANSWER || (b = realloc(buf, cap)) == NULL) {
                fprintf(stderr, "cqrsd: the answer is too large\n");
                goto fail;
            }
            buf = b;
        }
        n = read(fd, buf + len, cap - len - 1);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            /* the server answers a control operation once the projector
             * has carried it out; it stays queued without us */
            fprintf(stderr,
                    "cqrsd: %s did not answer %s %s within %ld s; an "
                    "operation may still be carried out: see "
                    "'cqrsd projections status'\n",
                    server, method, path, (long)tv.tv_sec);
            goto fail;
        }
        if (n < 0) {
            fprintf(stderr, "cqrsd: %s: %s\n", server, strerror(errno));
            goto fail;
        }
        if (n == 0)
            break;
        len += (size_t)n;
    }
    if (buf == NULL || len == 0) {
        fprintf(stderr, "cqrsd: %s closed the connection\n", server);
        goto fail;
    }
    buf[len] = '\0';
    if (sscanf(buf, "HTTP/1.%*d %d", status) != 1 ||
        (p = strstr(buf, "\r\n\r\n")) == NULL) {
        fprintf(stderr, "cqrsd: %s did not answer in HTTP\n", server);
        goto fail;
    }
    *body = strdup(p + 4);
    free(buf);
    close(fd);
    freeaddrinfo(res);
    return *body ? 0 : -1;
fail:
    free(buf);
    if (fd >= 0)
        close(fd);
    freeaddrinfo(res);
    return -1;
}

/* One request whose answer is JSON. 0 with *doc (new reference) on a 2xx
 * answer; 1 when the server refused (its problem's detail is printed); 2
 * when it cannot be reached or does not answer JSON. */
static int request(const char *server, const char *method, const char *path,
                   json_t **doc)
{
    const char *detail;
    char *body = NULL;
    int status = 0;

    *doc = NULL;
    if (http(server, method, path, &status, &body) != 0)
        return 2;
    *doc = json_loads(body, 0, NULL);
    free(body);
    if (*doc == NULL) {
        fprintf(stderr, "cqrsd: the server's answer (%d) is not JSON\n",
                status);
        return 2;
    }
    if (status >= 200 && status < 300)
        return 0;
    detail = json_string_value(json_object_get(*doc, "detail"));
    fprintf(stderr, "cqrsd: %s\n", detail ? detail : "refused");
    json_decref(*doc);
    *doc = NULL;
    return 1;
}

/* o[key] as text, "?" when it is missing or not a string (borrowed). */
static const char *text_of(const json_t *o, const char *key)
{
    const char *s = json_string_value(json_object_get(o, key));
    return s ? s : "?";
}

static void print_header(void)
{
    printf("%-24s %-7s %-10s %-4s %12s %12s %10s  %s\n", "PROJECTION",
           "MODE", "STATUS", "HERE", "POSITION", "LAG EVENTS", "LAG S",
           "LAST ERROR");
}

static void print_status(const json_t *st)
{
    const json_t *err = json_object_get(st, "last_error");
    const json_t *here = json_object_get(st, "runs_here");
    char last[400] = "-";

    if (json_is_object(err))
        snprintf(
            last, sizeof last, "at %lld (%s): %s",
            (long long)json_integer_value(json_object_get(err, "position")),
            text_of(err, "event_type"), text_of(err, "message"));
    printf("%-24s %-7s %-10s %-4s %12lld %12lld %10.1f  %s\n",
           text_of(st, "name"), text_of(st, "mode"), text_of(st, "status"),
           json_is_boolean(here) ? (json_is_true(here) ? "yes" : "no") : "?",
           (long long)json_integer_value(json_object_get(st, "position")),
           (long long)json_integer_value(json_object_get(st, "lag_events")),
           json_number_value(json_object_get(st, "lag_seconds")), last);
}

/* n decimal digits at s into *out; -1 if one is not a digit. */
static int digits(const char *s, int n, int *out)
{
    int v = 0;

    for (int k = 0; k < n; k++) {
        if (s[k] < '0' || s[k] > '9')
            return -1;
        v = v * 10 + (s[k] - '0');
    }
    *out = v;
    return 0;
}

/* Days from 1970-01-01 to y-m-d in the proleptic Gregorian calendar
 * (H. Hinnant's days_from_civil: whole 400-year eras, then the day of the
 * era counted from March so that the leap day comes last). */
static int64_t days_from_civil(int64_t y, int m, int d)
{
    int64_t era, yoe, doy, doe;

    y -= m <= 2;
    era = (y >= 0 ? y : y - 399) / 400;
    yoe = y - era * 400;
    doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

/* RFC 3339 UTC time, "YYYY-MM-DDTHH:MM:SS[.fraction]Z" as the server writes
 * it, to milliseconds since the epoch (the fraction is cut to ms). 0, or
 * -1 when s is NULL or anything else. */
static int parse_time_ms(const char *s, int64_t *ms)
{
    int y, mo, d, h, mi, sec, milli = 0, k;

    if (s == NULL || strlen(s) < 20 || digits(s, 4, &y) || s[4] != '-' ||
        digits(s + 5, 2, &mo) || s[7] != '-' || digits(s + 8, 2, &d) ||
        (s[10] != 'T' && s[10] != 't') || digits(s + 11, 2, &h) ||
        s[13] != ':' || digits(s + 14, 2, &mi) || s[16] != ':' ||
        digits(s + 17, 2, &sec))
        return -1;
    if (mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 || mi > 59 || sec > 60)
        return -1;
    s += 19;
    if (*s == '.') {
        for (k = 0, s++; *s >= '0' && *s <= '9'; k++, s++)
            if (k < 3)
                milli = milli * 10 + (*s - '0');
        if (k == 0)
            return -1;
        for (; k < 3; k++)
            milli *= 10;
    }
    if ((*s != 'Z' && *s != 'z') || s[1] != '\0')
        return -1;
    *ms = ((days_from_civil(y, mo, d) * 24 + h) * 60 + mi) * 60000 +
          (int64_t)sec * 1000 + milli;
    return 0;
}

/* o[key] as milliseconds since the epoch: 0, or -1 when it is not an
 * RFC 3339 UTC time stamp (o may be NULL or not an object). */
static int time_of(const json_t *o, const char *key, int64_t *ms)
{
    return parse_time_ms(json_string_value(json_object_get(o, key)), ms);
}

/* How rebuild progress is shown: redrawn in place on a terminal, else a
 * line at most once per LOG_LINE_NS. */
typedef struct meter {
    int tty;
    int shown;         /* a progress line is on stdout */
    uint64_t shown_ns; /* when the last one was printed (not a tty) */
} meter;

static void meter_show(meter *m, const char *name, const json_t *rb)
{
    long long done = (long long)json_integer_value(
                  json_object_get(rb, "events_done")),
              total = (long long)json_integer_value(
                  json_object_get(rb, "events_total"));
    const json_t *eta = json_object_get(rb, "eta_seconds");
    char line[256], when[32] = "unknown";
    uint64_t now = cq_mono_ns();
    /* in double: the figures come from the network and may be anything */
    int pct = done <= 0 ? 0
              : total > 0 && done < total
                  ? (int)(100.0 * (double)done / (double)total)
                  : 100;

    if (json_is_number(eta))
        snprintf(when, sizeof when, "%.1f s", json_number_value(eta));
    snprintf(line, sizeof line,
             "rebuilding %s: %lld/%lld events (%d%%), %.0f events/s, ETA %s",
             name, done, total, pct,
             json_number_value(json_object_get(rb, "events_per_second")), when);
    if (m->tty) {
        printf("\r%s\033[K", line);
    } else {
        if (m->shown && now - m->shown_ns < LOG_LINE_NS)
            return;
        printf("%s\n", line);
        m->shown_ns = now;
    }
    m->shown = 1;
    fflush(stdout);
}

/* Before a message of our own: end a progress line left open on a tty. */
static void meter_end(meter *m)
{
    if (m->tty && m->shown)
        putchar('\n');
    m->shown = 0;
    fflush(stdout);
}

/* The outcome of the rebuild that started at `started`, from its
 * last_rebuild record; the exit code. */
static int report(meter *m, const char *name, int64_t started,
                  const json_t *last)
{
    const char *outcome = text_of(last, "outcome");
    int64_t finished;

    if (strcmp(outcome, "done") == 0) {
        if (time_of(last, "finished_at", &finished) != 0)
            finished = started;
        if (m->tty)
            printf("\r\033[K");
        printf("rebuilt %s: %lld events in %.1f s\n", name,
               (long long)json_integer_value(
                   json_object_get(last, "events_replayed")),
               (double)(finished - started) / 1000.0);
        fflush(stdout);
        return 0;
    }
    meter_end(m);
    fprintf(stderr, "cqrsd: the rebuild of %s %s: %s\n", name,
            strcmp(outcome, "failed") == 0 ? "failed" : outcome,
            json_is_string(json_object_get(last, "error"))
                ? text_of(last, "error")
                : "no reason given");
    return 1;
}

/* `rebuild NAME [--no-wait]`: see the file comment. */
static int rebuild(const char *server, const char *name, int no_wait)
{
    meter m = {isatty(STDOUT_FILENO), 0, 0};
    struct timespec pause = {0, POLL_NS};
    char path[256];
    json_t *doc = NULL;
    const json_t *ours;
    int64_t started, t;
    int rc;

    if (name == NULL)
        return 2;
    snprintf(path, sizeof path, "/projections/%s/rebuild", name);
    rc = request(server, "POST", path, &doc);
    if (rc != 0)
        return rc;
    if (no_wait) {
        print_header();
        print_status(doc);
        rc = 0;
        goto out;
    }
    /* which rebuild is ours: the one the answer shows running or, if it
     * ended before the answer was made, the one it shows ended */
    ours = json_object_get(doc, "rebuild");
    if (!json_is_object(ours))
        ours = json_object_get(doc, "last_rebuild");
    if (time_of(ours, "started_at", &started) != 0) {
        fprintf(stderr, "cqrsd: the server's answer shows no rebuild\n");
        rc = 2;
        goto out;
    }
    snprintf(path, sizeof path, "/projections/%s", name);
    for (;;) {
        const json_t *rb = json_object_get(doc, "rebuild"),
                     *last = json_object_get(doc, "last_rebuild");
        int running = json_is_object(rb) &&
                      time_of(rb, "started_at", &t) == 0 && t == started;

        if (!running && time_of(last, "started_at", &t) == 0 && t == started) {
            rc = report(&m, name, started, last);
            goto out;
        }
        if (!running) {
            meter_end(&m);
            fprintf(stderr,
                    "cqrsd: the rebuild of %s ended, but the server keeps "
                    "no outcome for it (see its log)\n",
                    name);
            rc = 1;
            goto out;
        }
        meter_show(&m, name, rb);
        nanosleep(&pause, NULL);
        json_decref(doc);
        rc = request(server, "GET", path, &doc);
        if (rc != 0) {
            meter_end(&m);
            fprintf(stderr,
                    "cqrsd: stopped following the rebuild of %s (the "
                    "server goes on with it): see `cqrsd projections "
                    "status %s`\n",
                    name, name);
            goto out;
        }
    }
out:
    json_decref(doc);
    return rc;
}

static void usage(FILE *f)
{
    fputs("usage: cqrsd projections [--server HOST:PORT] list\n"
          "       cqrsd projections [--server HOST:PORT] status NAME\n"
          "       cqrsd projections [--server HOST:PORT] "
          "pause|resume|reset|retry|skip NAME\n"
          "       cqrsd projections [--server HOST:PORT] "
          "rebuild NAME [--no-wait]\n"
          "  --server HOST:PORT   the running server (default 127.0.0.1:8080)\n"
          "  --no-wait            start the rebuild and return; otherwise\n"
          "                       follow it to its end (exit 1 if it fails)\n",
          f);
}

int cq_cli_projections(int argc, char **argv)
{
    const char *server = "127.0.0.1:8080", *cmd, *name = NULL;
    char path[256];
    json_t *doc;
    int i = 2, no_wait = 0, rc;

    if (argc > 3 && strcmp(argv[2], "--server") == 0) {
        server = argv[3];
        i = 4;
    }
    if (i >= argc) {
        usage(stderr);
        return 2;
    }
    cmd = argv[i++];
    if (strcmp(cmd, "rebuild") == 0 && i < argc &&
        strcmp(argv[i], "--no-wait") == 0) {
        no_wait = 1;
        i++;
    }
    if (strcmp(cmd, "list") != 0) {
        if (i >= argc || strlen(argv[i]) > 64) {
            usage(stderr);
            return 2;
        }
        name = argv[i++];
    }
    if (strcmp(cmd, "rebuild") == 0 && !no_wait && i < argc &&
        strcmp(argv[i], "--no-wait") == 0) {
        no_wait = 1;
        i++;
    }
    if (i != argc) {
        usage(stderr);
        return 2;
    }
    if (name != NULL)
        for (const char *c = name; *c; c++)
            if (!((*c >= 'a' && *c <= 'z') || (*c >= '0' && *c <= '9') ||
                  *c == '_')) {
                fprintf(stderr, "cqrsd: '%s' is not a projection name\n", name);
                return 2;
            }
    if (strcmp(cmd, "rebuild") == 0)
        return rebuild(server, name, no_wait);
    if (strcmp(cmd, "list") == 0)
        snprintf(path, sizeof path, "/projections");
    else if (strcmp(cmd, "status") == 0)
        snprintf(path, sizeof path, "/projections/%s", name);
    else if (strcmp(cmd, "pause") == 0 || strcmp(cmd, "resume") == 0 ||
             strcmp(cmd, "reset") == 0 || strcmp(cmd, "retry") == 0 ||
             strcmp(cmd, "skip") == 0)
        snprintf(path, sizeof path, "/projections/%s/%s", name, cmd);
    else {
        usage(stderr);
        return 2;
    }
    rc = request(server,
                 strcmp(cmd, "list") && strcmp(cmd, "status") ? "POST" : "GET",
                 path, &doc);
    if (rc == 0) {
        const json_t *list = json_object_get(doc, "projections");
        size_t k;
        json_t *st;
        print_header();
        if (json_is_array(list))
            json_array_foreach (list, k, st)
                print_status(st);
        else
            print_status(doc);
        json_decref(doc);
    }
    return rc;
}
