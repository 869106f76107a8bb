/*
 * health.c -- the small HTTP endpoint of `cqrsd relay` and `cqrsd project`
 * (--listen HOST:PORT, optional): GET /healthz, /readyz and /metrics
 * (bus.h). libmicrohttpd with its own polling thread; nothing else is
 * served.
 */
#include <microhttpd.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "base/strbuf.h"
#include "bus/bus.h"

struct cq_bus_http {
    struct MHD_Daemon *d;
    cq_bus_ready_fn ready;
    cq_bus_metrics_fn metrics;
    void *arg;
};

static enum MHD_Result answer(struct MHD_Connection *c, unsigned status,
                              const char *type, char *body)
{
    struct MHD_Response *r = MHD_create_response_from_buffer(
        strlen(body), body, MHD_RESPMEM_MUST_FREE);
    enum MHD_Result ret;

    if (r == NULL) {
        free(body);
        return MHD_NO;
    }
    MHD_add_response_header(r, "Content-Type", type);
    ret = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    return ret;
}

static enum MHD_Result handle(void *cls, struct MHD_Connection *c,
                              const char *url, const char *method,
                              const char *version, const char *upload,
                              size_t *upload_size, void **state)
{
    cq_bus_http *h = cls;
    cq_strbuf b = CQ_STRBUF_INIT;
    char *text;

    (void)version;
    (void)upload;
    if (*upload_size != 0) {
        *upload_size = 0; /* bodies are not read */
        return MHD_YES;
    }
    (void)state;
    if (strcmp(method, "GET") != 0)
        return answer(c, 405, "text/plain", strdup("GET only\n"));
    if (strcmp(url, "/healthz") == 0)
        return answer(c, 200, "application/json",
                      strdup("{\"status\":\"ok\"}\n"));
    if (strcmp(url, "/readyz") == 0) {
        int ok = h->ready(h->arg, &b);
        text = cq_strbuf_take(&b);
        if (text == NULL)
            return MHD_NO;
        return answer(c, ok ? 200 : 503, "application/json", text);
    }
    if (strcmp(url, "/metrics") == 0) {
        h->metrics(h->arg, &b);
        text = cq_strbuf_take(&b);
        if (text == NULL)
            return MHD_NO;
        return answer(c, 200, "text/plain; version=0.0.4", text);
    }
    return answer(c, 404, "text/plain", strdup("not found\n"));
}

int cq_bus_http_start(const char *listen, cq_bus_ready_fn ready,
                      cq_bus_metrics_fn metrics, void *arg, cq_bus_http **out,
                      char *err, size_t errcap)
{
    char host[256];
    const char *port, *colon;
    struct addrinfo hints, *res = NULL;
    cq_bus_http *h;
    int rc;

    *out = NULL;
    if (listen[0] == '[') {
        const char *close = strchr(listen, ']');
        if (close == NULL || close[1] != ':' ||
            (size_t)(close - listen - 1) >= sizeof host)
            goto bad;
        snprintf(host, sizeof host, "%.*s", (int)(close - listen - 1),
                 listen + 1);
        port = close + 2;
    } else {
        colon = strrchr(listen, ':');
        if (colon == NULL || (size_t)(colon - listen) >= sizeof host)
            goto bad;
        snprintf(host, sizeof host, "%.*s", (int)(colon - listen), listen);
        port = colon + 1;
    }
    memset(&hints, 0, sizeof hints);
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    rc = getaddrinfo(host[0] ? host : NULL, port, &hints, &res);
    if (rc != 0) {
        snprintf(err, errcap, "--listen %s: %s", listen, gai_strerror(rc));
        return CQ_EINVAL;
    }
    if ((h = calloc(1, sizeof *h)) == NULL) {
        freeaddrinfo(res);
        snprintf(err, errcap, "out of memory");
        return CQ_ENOMEM;
    }
    h->ready = ready;
    h->metrics = metrics;
    h->arg = arg;
    h->d = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD |
                                (res->ai_family == AF_INET6 ? MHD_USE_IPv6 : 0),
                            0, NULL, NULL, handle, h, MHD_OPTION_SOCK_ADDR,
                            res->ai_addr, MHD_OPTION_CONNECTION_TIMEOUT,
                            (unsigned)10, MHD_OPTION_END);
    freeaddrinfo(res);
    if (h->d == NULL) {
        free(h);
        snprintf(err, errcap, "--listen %s: cannot listen there", listen);
        return CQ_EIO;
    }
    *out = h;
    return CQ_OK;
bad:
    snprintf(err, errcap, "--listen wants HOST:PORT or [IPV6]:PORT, not '%s'",
             listen);
    return CQ_EINVAL;
}

unsigned cq_bus_http_port(cq_bus_http *h)
{
    const union MHD_DaemonInfo *i =
        MHD_get_daemon_info(h->d, MHD_DAEMON_INFO_BIND_PORT);
    return i ? i->port : 0;
}

void cq_bus_http_stop(cq_bus_http *h)
{
    if (h == NULL)
        return;
    MHD_stop_daemon(h->d);
    free(h);
}
