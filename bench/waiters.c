/*
 * waiters.c — bench_waiters: hold many pending waits on a cqrsd server while
 * something else (wrk PlaceOrder, in bench/run.sh) measures it.
 *
 * Opens --waiters connections (default 10,000) and keeps one query waiting
 * on each: half ask `GET /queries/order_summary?order_id=<missing-i>
 * &min_position=<far ahead>`, half `...&min_version=1` on a stream that
 * does not exist, both with wait_ms=--wait-ms (default 30000, the most the
 * API allows, docs/api.md). A waiter that is answered (its wait ran out)
 * is asked again on the same keep-alive connection, so the number pending
 * stays up for as long as the tool runs. One thread, epoll, non-blocking
 * sockets, a 4 KiB buffer per connection (answers are small problem+json
 * documents framed by Content-Length).
 *
 * Output: one line `BENCH kind=waiters_ready ...` once every connection was
 * opened and its first query sent and a second has passed (or 5 s after
 * the last connection was started, when some are still in a full listen
 * queue; run.sh waits for it), then on SIGTERM/SIGINT or after --seconds the
 * summary line `BENCH kind=waiters target= connected= refused= pending=
 * min_pending= answered= reissued= closed=`: pending is queries sent and not
 * answered on open connections; min_pending the lowest it was from the ready
 * line to the end. refused counts connections the server closed or refused
 * before answering (cqrsd holds at most 8192 connections). RLIMIT_NOFILE
 * is raised to its hard limit first.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BUF 4096

typedef struct slot {
    int fd;
    int state; /* 0 unused/closed, 1 connecting, 2 waiting for the answer */
    int index;
    size_t len;
    char buf[BUF];
} slot;

static volatile sig_atomic_t stop;

static void on_signal(int sig)
{
    (void)sig;
    stop = 1;
}

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static const char *host = "127.0.0.1";
static int port, wait_ms = 30000;
static long long pending, answered, reissued, closed_early;

static int send_query(slot *s)
{
    char req[512];
    int n;

    if (s->index % 2)
        n = snprintf(req, sizeof req,
                     "GET /queries/order_summary?order_id=bench-missing-%d"
                     "&min_version=1&wait_ms=%d HTTP/1.1\r\nHost: %s\r\n\r\n",
                     s->index, wait_ms, host);
    else
        n = snprintf(req, sizeof req,
                     "GET /queries/order_summary?order_id=bench-missing-%d"
                     "&min_position=1000000000000&wait_ms=%d HTTP/1.1\r\n"
                     "Host: %s\r\n\r\n",
                     s->index, wait_ms, host);
    /* a fresh socket's buffer takes a few hundred bytes at once */
    if (send(s->fd, req, (size_t)n, MSG_NOSIGNAL) != n)
        return -1;
    s->state = 2;
    s->len = 0;
    pending++;
    return 0;
}

static void drop(int ep, slot *s)
{
    epoll_ctl(ep, EPOLL_CTL_DEL, s->fd, NULL);
    close(s->fd);
    if (s->state == 2)
        pending--;
    s->state = 0;
    s->fd = -1;
    closed_early++;
}

/* A whole answer in s->buf? Returns its length, 0 if not yet, -1 if it
 * cannot be framed. */
static long answer_len(slot *s)
{
    char *end, *cl;
    long body;

    s->buf[s->len] = '\0';
    end = strstr(s->buf, "\r\n\r\n");
    if (end == NULL)
        return s->len >= BUF - 1 ? -1 : 0;
    cl = strcasestr(s->buf, "\r\nContent-Length:");
    if (cl == NULL || cl > end)
        return -1;
    body = strtol(cl + 17, NULL, 10);
    if (body < 0 || (end + 4 - s->buf) + body >= BUF)
        return -1;
    return (long)(end + 4 - s->buf) + body <= (long)s->len
               ? (long)(end + 4 - s->buf) + body
               : 0;
}

static void readable(int ep, slot *s)
{
    for (;;) {
        ssize_t r = recv(s->fd, s->buf + s->len, BUF - 1 - s->len, 0);
        long n;
        if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR)) {
            drop(ep, s);
            return;
        }
        if (r < 0)
            return;
        s->len += (size_t)r;
        n = answer_len(s);
        if (n < 0) {
            drop(ep, s);
            return;
        }
        if (n == 0)
            continue;
        answered++;
        pending--;
        /* the server keeps the connection: ask again */
        if ((size_t)n != s->len || stop || send_query(s) != 0) {
            drop(ep, s);
            return;
        }
        reissued++;
    }
}

static int open_slot(int ep, slot *s, const struct sockaddr_in *sa)
{
    struct epoll_event ev;
    int one = 1;

    s->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (s->fd < 0)
        return -1;
    setsockopt(s->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(s->fd, (const struct sockaddr *)sa, sizeof *sa) != 0 &&
        errno != EINPROGRESS) {
        close(s->fd);
        s->fd = -1;
        return -1;
    }
    s->state = 1;
    ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP;
    ev.data.ptr = s;
    if (epoll_ctl(ep, EPOLL_CTL_ADD, s->fd, &ev) != 0) {
        close(s->fd);
        s->fd = -1;
        s->state = 0;
        return -1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    int target = 10000, seconds = 0, ep, next = 0, connecting = 0;
    long long connected = 0, refused = 0, min_pending = -1;
    int64_t t_end = 0, t_all = 0, t_last = 0;
    struct sockaddr_in sa;
    struct rlimit rl;
    struct epoll_event evs[256];
    slot *slots;
    int ready = 0;

    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--port") == 0)
            port = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--waiters") == 0)
            target = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--seconds") == 0)
            seconds = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--wait-ms") == 0)
            wait_ms = atoi(argv[i + 1]);
        else {
            fprintf(stderr, "bench_waiters: unknown option %s\n", argv[i]);
            return 2;
        }
    }
    if (port <= 0 || target <= 0 || wait_ms < 0) {
        fprintf(stderr, "usage: bench_waiters --port P [--waiters N] "
                        "[--seconds S] [--wait-ms MS]\n");
        return 2;
    }
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 &&
        rl.rlim_cur < (rlim_t)target + 16) {
        fprintf(stderr,
                "bench_waiters: open files limited to %llu: fewer than %d "
                "connections\n",
                (unsigned long long)rl.rlim_cur, target);
        target = (int)rl.rlim_cur - 16;
    }
    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);
    signal(SIGPIPE, SIG_IGN);
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)port);
    inet_pton(AF_INET, host, &sa.sin_addr);
    slots = calloc((size_t)target, sizeof *slots);
    ep = epoll_create1(EPOLL_CLOEXEC);
    if (slots == NULL || ep < 0) {
        perror("bench_waiters");
        return 1;
    }
    if (seconds > 0)
        t_end = now_ns() + (int64_t)seconds * 1000000000;
    while (!stop && (t_end == 0 || now_ns() < t_end)) {
        int n;

        /* open connections, at most 256 handshakes at a time (the
         * server's listen backlog is 1024) */
        while (next < target && connecting < 256) {
            slots[next].index = next;
            if (open_slot(ep, &slots[next], &sa) == 0)
                connecting++;
            else
                refused++;
            next++;
        }
        n = epoll_wait(ep, evs, 256, 100);
        for (int i = 0; i < n; i++) {
            slot *s = evs[i].data.ptr;
            if (s->state == 1) {
                int err = 0;
                socklen_t el = sizeof err;
                struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP,
                                         .data.ptr = s};
                connecting--;
                getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &err, &el);
                if (err != 0 || send_query(s) != 0) {
                    epoll_ctl(ep, EPOLL_CTL_DEL, s->fd, NULL);
                    close(s->fd);
                    s->fd = -1;
                    s->state = 0;
                    refused++;
                    continue;
                }
                connected++;
                epoll_ctl(ep, EPOLL_CTL_MOD, s->fd, &ev);
            } else if (s->state == 2) {
                readable(ep, s);
            }
        }
        if (next == target && t_all == 0)
            t_all = t_last = now_ns();
        /* ready a second after the last handshake ended, or 5 s after
         * the last was started (the rest wait in a full listen queue) */
        if (connecting > 0 && t_all != 0 && now_ns() - t_all < 5000000000)
            t_last = now_ns();
        if (!ready && t_all != 0 && now_ns() - t_last > 1000000000) {
            ready = 1;
            printf("BENCH kind=waiters_ready target=%d connected=%lld "
                   "refused=%lld connecting=%d pending=%lld closed=%lld\n",
                   target, connected, refused, connecting, pending,
                   closed_early);
            fflush(stdout);
        }
        if (ready && (min_pending < 0 || pending < min_pending))
            min_pending = pending;
    }
    printf("BENCH kind=waiters target=%d connected=%lld refused=%lld "
           "pending=%lld min_pending=%lld answered=%lld reissued=%lld "
           "closed=%lld\n",
           target, connected, refused, pending, min_pending, answered, reissued,
           closed_early);
    for (int i = 0; i < target; i++)
        if (slots[i].fd > 0)
            close(slots[i].fd);
    free(slots);
    close(ep);
    return 0;
}
