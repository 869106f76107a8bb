/*
 * conns.c -- the table of open HTTP connections and the deadline for a
 * complete request head (see conns.h for why).
 *
 * Each connection has a node, made when libmicrohttpd reports it started
 * and kept in its socket context; `head_since` is the monotonic time at
 * which the connection began to wait for a request head, 0 while a
 * request is being handled. The sweeper wakes every quarter of the
 * deadline (50 ms to 1 s) and shuts down (shutdown(SHUT_RDWR)) every
 * connection whose head is overdue; libmicrohttpd sees the end of the
 * stream and closes the connection as for a client that went away.
 *
 * Why shutdown() from another thread is safe: the sweeper holds `lock`
 * while it calls it, and the CLOSED notification takes `lock` to unlink
 * the node. libmicrohttpd (0.9.75, daemon.c: MHD_cleanup_connections and
 * new_connection_process_) sends CLOSED before it closes the socket, so a
 * linked node's fd is always still this connection's socket, never a
 * number the kernel has given to a newer one.
 *
 * Threads: libmicrohttpd's threads call notify, head_done and head_wait;
 * the sweeper runs alone. `lock` guards the list and each node's fd and
 * `cut`; `head_since` is atomic (set without the lock by the connection's
 * own thread, read by the sweeper), and so is the count of open
 * connections (`open`: write.c runs a command on the HTTP thread only
 * while its connection is the only one).
 */
#include "http/conns.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>

#include "base/base.h"
#include "cqrs/cqrs.h"

typedef struct conn {
    struct conn *prev, *next;
    int fd;
    int cut;                     /* shut down by the sweeper */
    _Atomic uint64_t head_since; /* monotonic ns; 0: not waiting */
} conn;

struct cq_conns {
    pthread_mutex_t lock;
    pthread_cond_t wake; /* cq_conns_free() */
    conn list;           /* sentinel of a circular list */
    uint64_t timeout_ns;
    uint64_t period_ns;
    int stop;
    pthread_t sweeper;
    atomic_uint open; /* connections STARTED and not yet CLOSED */
};

static void *sweep(void *arg)
{
    cq_conns *t = arg;

    pthread_mutex_lock(&t->lock);
    while (!t->stop) {
        uint64_t now = cq_mono_ns(), wake = now + t->period_ns;
        struct timespec ts = {(time_t)(wake / 1000000000u),
                              (long)(wake % 1000000000u)};

        for (conn *n = t->list.next; n != &t->list; n = n->next) {
            uint64_t since = atomic_load(&n->head_since);
            /* since > now: re-armed after `now` was read */
            if (since != 0 && since < now && now - since > t->timeout_ns &&
                !n->cut) {
                shutdown(n->fd, SHUT_RDWR);
                n->cut = 1;
            }
        }
        pthread_cond_timedwait(&t->wake, &t->lock, &ts);
    }
    pthread_mutex_unlock(&t->lock);
    return NULL;
}

int cq_conns_start(unsigned head_timeout_ms, cq_conns **out)
{
    pthread_condattr_t ca;
    cq_conns *t;
    uint64_t period;

    *out = NULL;
    t = calloc(1, sizeof *t);
    if (t == NULL)
        return CQ_ENOMEM;
    t->list.next = t->list.prev = &t->list;
    atomic_init(&t->open, 0);
    t->timeout_ns = (uint64_t)head_timeout_ms * 1000000u;
    period = t->timeout_ns / 4;
    t->period_ns = period < 50000000u     ? 50000000u
                   : period > 1000000000u ? 1000000000u
                                          : period;
    pthread_mutex_init(&t->lock, NULL);
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC); /* as cq_mono_ns() */
    pthread_cond_init(&t->wake, &ca);
    pthread_condattr_destroy(&ca);
    if (pthread_create(&t->sweeper, NULL, sweep, t) != 0) {
        pthread_cond_destroy(&t->wake);
        pthread_mutex_destroy(&t->lock);
        free(t);
        return CQ_EIO;
    }
    *out = t;
    return CQ_OK;
}

void cq_conns_free(cq_conns *t)
{
    if (t == NULL)
        return;
    pthread_mutex_lock(&t->lock);
    t->stop = 1;
    pthread_cond_signal(&t->wake);
    pthread_mutex_unlock(&t->lock);
    pthread_join(t->sweeper, NULL);
    /* MHD_stop_daemon() has reported every connection closed; free what a
     * misbehaving caller left anyway */
    while (t->list.next != &t->list) {
        conn *n = t->list.next;
        t->list.next = n->next;
        free(n);
    }
    pthread_cond_destroy(&t->wake);
    pthread_mutex_destroy(&t->lock);
    free(t);
}

void cq_conns_notify(void *cls, struct MHD_Connection *c, void **socket_context,
                     enum MHD_ConnectionNotificationCode code)
{
    cq_conns *t = cls;
    conn *n;

    if (code == MHD_CONNECTION_NOTIFY_STARTED)
        atomic_fetch_add(&t->open, 1);
    else if (code == MHD_CONNECTION_NOTIFY_CLOSED)
        atomic_fetch_sub(&t->open, 1);
    if (code == MHD_CONNECTION_NOTIFY_STARTED) {
        const union MHD_ConnectionInfo *ci =
            MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
        /* Out of memory: the connection goes untracked, bounded by the
         * idle timeout only. */
        n = ci != NULL ? calloc(1, sizeof *n) : NULL;
        *socket_context = n;
        if (n == NULL)
            return;
        n->fd = ci->connect_fd;
        atomic_init(&n->head_since, cq_mono_ns());
        pthread_mutex_lock(&t->lock);
        n->next = &t->list;
        n->prev = t->list.prev;
        t->list.prev->next = n;
        t->list.prev = n;
        pthread_mutex_unlock(&t->lock);
        return;
    }
    if (code != MHD_CONNECTION_NOTIFY_CLOSED || *socket_context == NULL)
        return;
    n = *socket_context;
    pthread_mutex_lock(&t->lock);
    n->prev->next = n->next;
    n->next->prev = n->prev;
    pthread_mutex_unlock(&t->lock);
    free(n);
    *socket_context = NULL;
}

unsigned cq_conns_open(cq_conns *t)
{
    return atomic_load(&t->open);
}

static conn *conn_of(struct MHD_Connection *c)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(c, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    return ci != NULL ? ci->socket_context : NULL;
}

void cq_conns_head_done(struct MHD_Connection *c)
{
    conn *n = conn_of(c);

    if (n != NULL)
        atomic_store(&n->head_since, 0);
}

void cq_conns_head_wait(struct MHD_Connection *c)
{
    conn *n = conn_of(c);

    if (n != NULL)
        atomic_store(&n->head_since, cq_mono_ns());
}
