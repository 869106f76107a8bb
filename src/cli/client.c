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
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#define MAX_ANSWER (4 * 1024 * 1024)

/* Send one request and read the whole answer. *status and *body (malloc'd,
 * NUL-terminated) on success; -1 with a message on stderr otherwise. */
static int http(const char *server, const char *method, const char *path,
                int *status, char **body)
{
    char host[256], req[512];
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
    snprintf(req, sizeof req,
             "%s %s HTTP/1.1\r\nHost: %s\r\nContent-Length: 0\r\n"
             "Connection: close\r\n\r\n",
             method, path, server);
    if (write(fd, req, strlen(req)) != (ssize_t)strlen(req)) {
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

static void print_header(void)
{
    printf("%-24s %-7s %-8s %12s %12s %10s  %s\n", "PROJECTION", "MODE",
           "STATUS", "POSITION", "LAG EVENTS", "LAG S", "LAST ERROR");
}

static void print_status(const json_t *st)
{
    const json_t *err = json_object_get(st, "last_error");
    char last[400] = "-";

    if (json_is_object(err))
        snprintf(last, sizeof last, "at %lld (%s): %s",
                 (long long)json_integer_value(json_object_get(err, "position")),
                 json_string_value(json_object_get(err, "event_type")),
                 json_string_value(json_object_get(err, "message")));
    printf("%-24s %-7s %-8s %12lld %12lld %10.1f  %s\n",
           json_string_value(json_object_get(st, "name")),
           json_string_value(json_object_get(st, "mode")),
           json_string_value(json_object_get(st, "status")),
           (long long)json_integer_value(json_object_get(st, "position")),
           (long long)json_integer_value(json_object_get(st, "lag_events")),
           json_number_value(json_object_get(st, "lag_seconds")), last);
}

static void usage(FILE *f)
{
    fputs("usage: cqrsd projections [--server HOST:PORT] list\n"
          "       cqrsd projections [--server HOST:PORT] status NAME\n"
          "       cqrsd projections [--server HOST:PORT] "
          "pause|resume|reset|retry|skip NAME\n"
          "  --server HOST:PORT   the running server (default 127.0.0.1:8080)\n",
          f);
}

int cq_cli_projections(int argc, char **argv)
{
    const char *server = "127.0.0.1:8080", *cmd, *name = NULL;
    char path[256], *body = NULL;
    json_t *doc;
    int i = 2, status = 0, rc;

    if (argc > 3 && strcmp(argv[2], "--server") == 0) {
        server = argv[3];
        i = 4;
    }
    if (i >= argc) {
        usage(stderr);
        return 2;
    }
    cmd = argv[i++];
    if (strcmp(cmd, "list") != 0) {
        if (i >= argc || strlen(argv[i]) > 64) {
            usage(stderr);
            return 2;
        }
        name = argv[i++];
    }
    if (i != argc) {
        usage(stderr);
        return 2;
    }
    if (name != NULL)
        for (const char *c = name; *c; c++)
            if (!((*c >= 'a' && *c <= 'z') || (*c >= '0' && *c <= '9') ||
                  *c == '_')) {
                fprintf(stderr, "cqrsd: '%s' is not a projection name\n",
                        name);
                return 2;
            }
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
    if (http(server, strcmp(cmd, "list") && strcmp(cmd, "status") ? "POST"
                                                                    : "GET",
             path, &status, &body) != 0)
        return 2;
    doc = json_loads(body, 0, NULL);
    free(body);
    if (doc == NULL) {
        fprintf(stderr, "cqrsd: the server's answer (%d) is not JSON\n",
                status);
        return 2;
    }
    if (status != 200) {
        fprintf(stderr, "cqrsd: %s\n",
                json_string_value(json_object_get(doc, "detail"))
                    ? json_string_value(json_object_get(doc, "detail"))
                    : "refused");
        rc = 1;
    } else {
        const json_t *list = json_object_get(doc, "projections");
        size_t k;
        json_t *st;
        print_header();
        if (json_is_array(list))
            json_array_foreach (list, k, st)
                print_status(st);
        else
            print_status(doc);
        rc = 0;
    }
    json_decref(doc);
    return rc;
}
