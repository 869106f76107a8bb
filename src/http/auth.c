/*
 * auth.c -- the server's tokens (auth.h) and the check every request but
 * the probes goes through (cq_http_auth_ok, http.h): which scope a route
 * needs, 401/403/429 answers, and the token's name for scoping
 * Idempotency-Keys (write.c).
 *
 * Threads: `mu` guards tokens, ntokens, present and the file's identity;
 * a request hashes the presented secret outside it and compares under it.
 * The rate-limit table has its own lock (ratelimit.c).
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "base/base.h"
#include "base/problem.h"
#include "http/auth.h"
#include "http/http.h"

#define RECHECK_NS 1000000000ull /* look at the file at most once a second */

struct cq_auth {
    pthread_mutex_t mu;
    char *path; /* NULL: no token file named */
    cq_token *tokens;
    size_t ntokens;
    int present;      /* the file exists: tokens required */
    struct stat seen; /* identity of the file last read */
    uint64_t checked_ns;
    cq_ratelimit *rate; /* NULL: no limit */
    int public_metrics;
};

static int same_file(const struct stat *a, const struct stat *b)
{
    return a->st_ino == b->st_ino && a->st_dev == b->st_dev &&
           a->st_size == b->st_size && a->st_mtim.tv_sec == b->st_mtim.tv_sec &&
           a->st_mtim.tv_nsec == b->st_mtim.tv_nsec;
}

/* Under mu (or before other threads see a): read the file again. A
 * malformed file, or one that vanished after tokens were read, keeps the
 * previous tokens (CQ_EINVAL, with why in err): removing the file must
 * not open a server that asked for tokens. */
static int reread(cq_auth *a, char *err, size_t errcap)
{
    cq_token *t = NULL;
    size_t n = 0;
    struct stat st;
    int rc;

    if (a->path == NULL)
        return CQ_OK;
    if (stat(a->path, &st) != 0)
        memset(&st, 0, sizeof st);
    rc = cq_tokens_load(a->path, &t, &n, err, errcap);
    if (rc == CQ_ENOTFOUND && a->present) {
        snprintf(err, errcap, "the token file %s is gone", a->path);
        a->seen = st;
        return CQ_EINVAL;
    }
    if (rc == CQ_ENOTFOUND) {
        free(a->tokens);
        a->tokens = NULL;
        a->ntokens = 0;
        a->present = 0;
        a->seen = st;
        return CQ_OK;
    }
    if (rc != CQ_OK)
        return rc;
    free(a->tokens);
    a->tokens = t;
    a->ntokens = n;
    a->present = 1;
    a->seen = st;
    return CQ_OK;
}

int cq_auth_new(const char *path, double rate_per_s, int public_metrics,
                cq_auth **out, char *err, size_t errcap)
{
    cq_auth *a = calloc(1, sizeof *a);
    int rc;

    *out = NULL;
    if (a == NULL || (path != NULL && (a->path = strdup(path)) == NULL) ||
        (rate_per_s > 0 && (a->rate = cq_ratelimit_new(rate_per_s)) == NULL)) {
        snprintf(err, errcap, "out of memory");
        cq_auth_free(a);
        return CQ_ENOMEM;
    }
    pthread_mutex_init(&a->mu, NULL);
    a->public_metrics = public_metrics;
    rc = reread(a, err, errcap);
    if (rc != CQ_OK) {
        cq_auth_free(a);
        return rc == CQ_ENOMEM ? rc : CQ_EINVAL;
    }
    a->checked_ns = cq_mono_ns();
    *out = a;
    return CQ_OK;
}

void cq_auth_free(cq_auth *a)
{
    if (a == NULL)
        return;
    pthread_mutex_destroy(&a->mu);
    cq_ratelimit_free(a->rate);
    free(a->tokens);
    free(a->path);
    free(a);
}

int cq_auth_required(cq_auth *a)
{
    int p;
    pthread_mutex_lock(&a->mu);
    p = a->present;
    pthread_mutex_unlock(&a->mu);
    return p;
}

size_t cq_auth_count(cq_auth *a)
{
    size_t n;
    pthread_mutex_lock(&a->mu);
    n = a->ntokens;
    pthread_mutex_unlock(&a->mu);
    return n;
}

int cq_auth_public_metrics(const cq_auth *a)
{
    return a->public_metrics;
}

void cq_auth_reload(cq_auth *a)
{
    char err[512];

    if (a == NULL)
        return;
    pthread_mutex_lock(&a->mu);
    if (reread(a, err, sizeof err) != CQ_OK)
        fprintf(stderr, "cqrsd: %s; keeping the tokens read before\n", err);
    a->checked_ns = cq_mono_ns();
    pthread_mutex_unlock(&a->mu);
}

/* Under mu: read the file again if it changed, at most once a second. */
static void maybe_reread(cq_auth *a, uint64_t now)
{
    struct stat st;
    char err[512];

    if (a->path == NULL || now - a->checked_ns < RECHECK_NS)
        return;
    a->checked_ns = now;
    if (stat(a->path, &st) != 0)
        memset(&st, 0, sizeof st);
    if (same_file(&st, &a->seen))
        return;
    if (reread(a, err, sizeof err) != CQ_OK) {
        fprintf(stderr, "cqrsd: %s; keeping the tokens read before\n", err);
        a->seen = st; /* say it once per change */
    }
}

/* 0 when equal; time depends on the length only. */
static int ct_differ(const char *x, const char *y, size_t n)
{
    unsigned char d = 0;
    for (size_t i = 0; i < n; i++)
        d |= (unsigned char)(x[i] ^ y[i]);
    return d != 0;
}

void cq_auth_check(cq_auth *a, const char *authorization, unsigned need,
                   const char *client, int limit, cq_auth_result *out)
{
    char hash[65] = "";
    const cq_token *found = NULL;
    uint64_t now = cq_mono_ns();
    int present;

    memset(out, 0, sizeof *out);
    if (authorization != NULL &&
        strncasecmp(authorization, "Bearer ", 7) == 0) {
        const char *s = authorization + 7;
        while (*s == ' ')
            s++;
        cq_sha256_hex(s, strlen(s), hash);
    }
    pthread_mutex_lock(&a->mu);
    maybe_reread(a, now);
    present = a->present;
    if (present && hash[0] != '\0')
        for (size_t i = 0; i < a->ntokens; i++)
            if (!ct_differ(a->tokens[i].hash, hash, 64) && found == NULL)
                found = &a->tokens[i];
    if (found != NULL) {
        memcpy(out->token, found->name, sizeof out->token);
        if (need != 0 && (found->scopes & need) != need)
            out->missing = need & ~found->scopes;
    }
    pthread_mutex_unlock(&a->mu);
    if (present && found == NULL) {
        out->status = 401;
        return;
    }
    if (out->missing != 0) {
        out->status = 403;
        return;
    }
    if (limit && a->rate != NULL) {
        int wait =
            cq_ratelimit_take(a->rate, present ? out->token : client, now);
        if (wait > 0) {
            out->status = 429;
            out->retry_after_s = wait;
        }
    }
}

/* ---- the HTTP side --------------------------------------------------------
 */

/* The scope a request needs: CQ_SCOPE_*, 0 for any valid token, or -1
 * for none at all (the probes). A route added later names its scope
 * here. */
static int scope_of(const request *q, int get)
{
    switch (q->route) {
    case R_HEALTHZ:
    case R_READYZ: return -1;
    case R_METRICS:
        return cq_auth_public_metrics(q->srv->auth) ? -1 : (int)CQ_SCOPE_ADMIN;
    case R_COMMAND: return CQ_SCOPE_COMMAND;
    case R_ALL: return CQ_SCOPE_ADMIN;
    case R_STREAM: return get ? CQ_SCOPE_QUERY : CQ_SCOPE_ADMIN;
    case R_QUERY: return CQ_SCOPE_QUERY;
    case R_PROJECTIONS: return get ? CQ_SCOPE_QUERY : CQ_SCOPE_ADMIN;
    case R_OPENAPI: /* the API's description: public */
    case R_UI:      /* static pages, no data: their requests carry scopes */
        return -1;
    case R_SUBSCRIBE: {
        /* the tail of every stream is as private as GET /streams/$all */
        const char *st = MHD_lookup_connection_value(
            q->conn, MHD_GET_ARGUMENT_KIND, "stream");
        return st != NULL && strcmp(st, "$all") == 0 ? (int)CQ_SCOPE_ADMIN
                                                     : (int)CQ_SCOPE_SUBSCRIBE;
    }
    case R_NOT_FOUND:
    default: return 0;
    }
}

static void client_text(struct MHD_Connection *c, char *buf, size_t cap)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(c, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    const struct sockaddr *sa = ci ? ci->client_addr : NULL;

    snprintf(buf, cap, "?");
    if (sa == NULL)
        return;
    if (sa->sa_family == AF_INET)
        inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, buf,
                  (socklen_t)cap);
    else if (sa->sa_family == AF_INET6)
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, buf,
                  (socklen_t)cap);
}

int cq_http_auth_ok(request *q, const char *method, enum MHD_Result *ret)
{
    int get = strcmp(method, MHD_HTTP_METHOD_GET) == 0 ||
              strcmp(method, MHD_HTTP_METHOD_HEAD) == 0;
    int need;
    char client[INET6_ADDRSTRLEN + 1], scopes[64], retry[16];
    cq_auth_result r;

    if (q->srv->auth == NULL) /* a server started without auth: open */
        return 1;
    need = scope_of(q, get);
    if (need < 0)
        return 1;
    client_text(q->conn, client, sizeof client);
    cq_auth_check(q->srv->auth,
                  MHD_lookup_connection_value(q->conn, MHD_HEADER_KIND,
                                              MHD_HTTP_HEADER_AUTHORIZATION),
                  (unsigned)need, client, 1, &r);
    memcpy(q->token, r.token, sizeof q->token);
    switch (r.status) {
    case 0: return 1;
    case 401: {
        const char *const hdr[][2] = {
            {MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer realm=\"cqrsd\""}};
        *ret = cq_http_send_with(
            q->conn, 401, CQ_PROBLEM_CONTENT_TYPE,
            cq_problem_text(401, "unauthorized", NULL, "%s",
                            "a valid token is needed: Authorization: Bearer "
                            "<token>"),
            hdr, 1);
        return 0;
    }
    case 403: {
        char www[128];
        const char *const hdr[][2] = {{MHD_HTTP_HEADER_WWW_AUTHENTICATE, www}};
        cq_scopes_format(r.missing, scopes, sizeof scopes);
        snprintf(www, sizeof www,
                 "Bearer realm=\"cqrsd\", error=\"insufficient_scope\", "
                 "scope=\"%s\"",
                 scopes);
        *ret = cq_http_send_with(
            q->conn, 403, CQ_PROBLEM_CONTENT_TYPE,
            cq_problem_text(403, "insufficient-scope", NULL,
                            "token '%s' lacks the scope '%s'", r.token, scopes),
            hdr, 1);
        return 0;
    }
    default: {
        const char *const hdr[][2] = {{MHD_HTTP_HEADER_RETRY_AFTER, retry}};
        snprintf(retry, sizeof retry, "%d", r.retry_after_s);
        *ret = cq_http_send_with(
            q->conn, 429, CQ_PROBLEM_CONTENT_TYPE,
            cq_problem_text(429, "rate-limited", NULL,
                            "more than the allowed requests a second; try "
                            "again in %d s",
                            r.retry_after_s),
            hdr, 1);
        return 0;
    }
    }
}
