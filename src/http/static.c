/*
 * static.c -- GET /ui/... : the static pages and the JavaScript client
 * (static.h), answered from the tables compiled into the binary.
 *
 * /ui        308 to /ui/ (relative links in the pages need the slash)
 * /ui/       index.html (the operations page)
 * /ui/NAME   NAME if the tables have it, else NAME.html, else 404
 *
 * Answers carry the file's content type, `X-Content-Type-Options: nosniff`,
 * a Content-Security-Policy that allows only this origin (the pages load
 * nothing from elsewhere), a strong ETag and `Cache-Control: no-cache`
 * (a browser keeps the file but asks again, and gets 304 on a matching
 * If-None-Match: a new cqrsd's pages are seen at once).
 *
 * Threads: any MHD thread, for the request it is calling back for; the
 * tables are read-only.
 */
#include <microhttpd.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "http/http.h"
#include "http/static.h"

#define CSP                                                                    \
    "default-src 'self'; img-src 'self' data:; style-src 'self'; "             \
    "script-src 'self'; connect-src 'self'; frame-ancestors 'none'"

static const cq_http_file *in_table(const cq_http_file *t, const char *name,
                                    size_t n)
{
    for (; t->name != NULL; t++)
        if (strlen(t->name) == n && memcmp(t->name, name, n) == 0)
            return t;
    return NULL;
}

static const cq_http_file *lookup(const char *name, size_t n)
{
    const cq_http_file *f = in_table(cq_ui_files, name, n);
    return f != NULL ? f : in_table(cq_js_files, name, n);
}

const cq_http_file *cq_static_find(const char *path)
{
    char html[128];
    size_t n = strlen(path);
    const cq_http_file *f;

    if (n == 0)
        return lookup("index.html", 10);
    f = lookup(path, n);
    if (f != NULL || strchr(path, '.') != NULL || n + 6 > sizeof html)
        return f;
    memcpy(html, path, n);
    memcpy(html + n, ".html", 6);
    return lookup(html, n + 5);
}

const char *cq_static_type(const char *name)
{
    static const char *const types[][2] = {
        {".html", "text/html; charset=utf-8"},
        {".js", "text/javascript; charset=utf-8"},
        {".mjs", "text/javascript; charset=utf-8"},
        {".css", "text/css; charset=utf-8"},
        {".svg", "image/svg+xml"},
        {".json", "application/json"},
        {".png", "image/png"},
        {".ico", "image/x-icon"},
        {".txt", "text/plain; charset=utf-8"},
    };
    const char *dot = strrchr(name, '.');

    if (dot != NULL)
        for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
            if (strcasecmp(dot, types[i][0]) == 0)
                return types[i][1];
    return "application/octet-stream";
}

void cq_static_etag(const cq_http_file *f, char out[24])
{
    uint64_t h = 1469598103934665603ull;

    for (size_t i = 0; i < f->len; i++) {
        h ^= (unsigned char)f->text[i];
        h *= 1099511628211ull;
    }
    snprintf(out, 24, "\"%016llx\"", (unsigned long long)h);
}

/* 1 if the If-None-Match list `inm` names etag (or is "*"). Weak
 * validators match too (RFC 9110 13.1.2: weak comparison). */
static int etag_matches(const char *inm, const char *etag)
{
    size_t n = strlen(etag);

    for (const char *p = inm; *p != '\0';) {
        while (*p == ' ' || *p == '\t' || *p == ',')
            p++;
        if (*p == '*')
            return 1;
        if (strncmp(p, "W/", 2) == 0)
            p += 2;
        if (strncmp(p, etag, n) == 0 &&
            (p[n] == '\0' || p[n] == ',' || p[n] == ' ' || p[n] == '\t'))
            return 1;
        while (*p != '\0' && *p != ',')
            p++;
    }
    return 0;
}

enum MHD_Result cq_http_static(request *q)
{
    const char *path = q->target; /* after "/ui" */
    const cq_http_file *f;
    struct MHD_Response *resp;
    const char *inm;
    char etag[24];
    enum MHD_Result ret;
    int status = MHD_HTTP_OK;

    /* query parameters are ignored: a page may be asked for with a
     * cache-busting one */
    if (path[0] == '\0') {
        const char *const hdr[][2] = {{MHD_HTTP_HEADER_LOCATION, "/ui/"}};
        return cq_http_send_with(q->conn, 308, "text/plain; charset=utf-8",
                                 strdup("see /ui/\n"), hdr, 1);
    }
    f = cq_static_find(path + 1);
    if (f == NULL)
        return cq_http_send_problem(q->conn, 404, "not-found", NULL,
                                    "no file at this path");
    cq_static_etag(f, etag);
    inm = MHD_lookup_connection_value(q->conn, MHD_HEADER_KIND,
                                      MHD_HTTP_HEADER_IF_NONE_MATCH);
    if (inm != NULL && etag_matches(inm, etag)) {
        status = MHD_HTTP_NOT_MODIFIED;
        resp = MHD_create_response_from_buffer(0, NULL, MHD_RESPMEM_PERSISTENT);
    } else
        resp = MHD_create_response_from_buffer(f->len, (void *)f->text,
                                               MHD_RESPMEM_PERSISTENT);
    if (resp == NULL)
        return MHD_NO;
    if (status == MHD_HTTP_OK)
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE,
                                cq_static_type(f->name));
    MHD_add_response_header(resp, MHD_HTTP_HEADER_ETAG, etag);
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
    MHD_add_response_header(resp, "X-Content-Type-Options", "nosniff");
    MHD_add_response_header(resp, "Content-Security-Policy", CSP);
    ret = MHD_queue_response(q->conn, (unsigned)status, resp);
    MHD_destroy_response(resp);
    return ret;
}
