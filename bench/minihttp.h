/*
 * minihttp.h — the smallest HTTP/1.1 keep-alive client the benchmarks
 * need (bench/window.c, bench/catchup.c): one request at a time on a
 * blocking TCP socket with TCP_NODELAY, answers framed by Content-Length
 * (what cqrsd sends; chunked answers are not supported and count as
 * errors). Plain POSIX, header-only, no global state.
 */
#ifndef BENCH_MINIHTTP_H
#define BENCH_MINIHTTP_H

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MH_BUF (256 * 1024)

typedef struct mh_conn {
    int fd;
    const char *host;
    int port;
    size_t len; /* bytes in buf */
    char buf[MH_BUF + 1];
} mh_conn;

typedef struct mh_resp {
    int status;
    const char *body; /* NUL-terminated, inside the connection's buf */
    size_t body_len;
    const char *head; /* status line and headers */
} mh_resp;

static inline int64_t mh_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static inline void mh_close(mh_conn *c)
{
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    c->len = 0;
}

/* Connect c to host:port (IPv4 literal). 0, or -1 with errno. */
static inline int mh_connect(mh_conn *c, const char *host, int port)
{
    struct sockaddr_in a;
    int one = 1;

    c->fd = -1;
    c->len = 0;
    c->host = host;
    c->port = port;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, host, &a.sin_addr) != 1) {
        errno = EINVAL;
        return -1;
    }
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (c->fd < 0)
        return -1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(c->fd, (struct sockaddr *)&a, sizeof a) != 0) {
        int e = errno;
        mh_close(c);
        errno = e;
        return -1;
    }
    return 0;
}

/* Wait until fd is readable, up to deadline_ns (monotonic). */
static inline int mh_wait(int fd, int64_t deadline_ns)
{
    for (;;) {
        int64_t left = deadline_ns - mh_now_ns();
        if (left <= 0) {
            errno = ETIMEDOUT;
            return -1;
        }
        struct pollfd p = {fd, POLLIN, 0};
        int rc = poll(&p, 1, (int)(left / 1000000) + 1);
        if (rc > 0)
            return 0;
        if (rc < 0 && errno != EINTR)
            return -1;
    }
}

/* Send req (len bytes) and read one answer into r, within timeout_ms.
 * 0, or -1 (the connection is closed then; the next call reconnects). */
static inline int mh_request(mh_conn *c, const char *req, size_t len,
                             mh_resp *r, int timeout_ms)
{
    int64_t deadline = mh_now_ns() + (int64_t)timeout_ms * 1000000;
    size_t head_len = 0, need = 0;
    int close_after = 0;

    memset(r, 0, sizeof *r);
    if (c->fd < 0 && mh_connect(c, c->host, c->port) != 0)
        return -1;
    c->len = 0;
    for (size_t off = 0; off < len;) {
        ssize_t n = send(c->fd, req + off, len - off, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            goto fail;
        off += (size_t)n;
    }
    for (;;) {
        if (head_len == 0) {
            c->buf[c->len] = '\0';
            char *end = strstr(c->buf, "\r\n\r\n");
            if (end != NULL) {
                head_len = (size_t)(end - c->buf) + 4;
                if (sscanf(c->buf, "HTTP/1.%*d %d", &r->status) != 1)
                    goto fail;
                long long cl = -1;
                for (char *h = strstr(c->buf, "\r\n"); h && h < end;
                     h = strstr(h + 2, "\r\n")) {
                    if (!strncasecmp(h + 2, "Content-Length:", 15))
                        cl = strtoll(h + 17, NULL, 10);
                    else if (!strncasecmp(h + 2, "Connection: close", 17))
                        close_after = 1;
                    else if (!strncasecmp(h + 2, "Transfer-Encoding:", 18))
                        goto fail; /* chunked: not supported */
                }
                if (cl < 0 || head_len + (size_t)cl > MH_BUF)
                    goto fail;
                need = head_len + (size_t)cl;
            }
        }
        if (head_len != 0 && c->len >= need)
            break;
        if (c->len >= MH_BUF || mh_wait(c->fd, deadline) != 0)
            goto fail;
        ssize_t n = recv(c->fd, c->buf + c->len, MH_BUF - c->len, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            goto fail;
        c->len += (size_t)n;
    }
    c->buf[head_len - 2] = '\0'; /* ends the headers */
    r->head = c->buf;
    r->body = c->buf + head_len;
    r->body_len = need - head_len;
    /* NUL-terminate the body: the next byte is ours (buf has MH_BUF + 1) */
    c->buf[need] = '\0';
    if (close_after)
        mh_close(c);
    return 0;
fail:
    mh_close(c);
    return -1;
}

/* GET path on c; 0 with r filled, or -1 (see mh_request). */
static inline int mh_get(mh_conn *c, const char *path, mh_resp *r,
                         int timeout_ms)
{
    char req[1024];
    int n = snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: %s:%d\r\n\r\n",
                     path, c->host, c->port);
    return mh_request(c, req, (size_t)n, r, timeout_ms);
}

/* Has process pid (0: none watched) exited? It is run.sh's child, not
 * ours, so it stays a zombie until run.sh reaps it: its state in /proc
 * counts too. */
static inline int mh_pid_gone(pid_t pid)
{
    char path[64], buf[512];
    if (pid <= 0)
        return 0;
    if (kill(pid, 0) != 0)
        return 1;
    snprintf(path, sizeof path, "/proc/%ld/stat", (long)pid);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return 0;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    const char *p = strrchr(buf, ')');
    return p != NULL && (p[2] == 'Z' || p[2] == 'X');
}

/* The integer after "key": in s (first occurrence), or -1. */
static inline long long mh_json_int(const char *s, const char *key)
{
    char pat[64];
    snprintf(pat, sizeof pat, "\"%s\":", key);
    const char *p = strstr(s, pat);
    if (p == NULL)
        return -1;
    p += strlen(pat);
    while (*p == ' ')
        p++;
    char *end;
    long long v = strtoll(p, &end, 10);
    return end == p ? -1 : v;
}

static inline int mh_cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* Percentile p (0-100) of n sorted values, nearest rank. */
static inline int64_t mh_pct(const int64_t *v, size_t n, double p)
{
    if (n == 0)
        return 0;
    size_t k = (size_t)(p / 100.0 * (double)n + 0.999999);
    if (k < 1)
        k = 1;
    if (k > n)
        k = n;
    return v[k - 1];
}

#endif
