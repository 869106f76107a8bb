/*
 * rdb_pg_notify.c -- the read-store interface's operations across
 * connections on PostgreSQL: named session locks (advisory locks keyed by
 * hashtextextended of the name), NOTIFY, LISTEN and waiting for a
 * notification.
 *
 * Threads: none of its own; a connection belongs to one thread at a time.
 */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <libpq-fe.h>

#include "cqrs/cqrs.h"
#include "store/rdb.h"
#include "store/rdb_pg_int.h"

/* ---- across connections ---- */

/* Run a one-row SELECT with text parameters; *t gets whether its one
 * value is true. */
static int select_bool(pg_conn *p, const char *sql, int n,
                       const char *const *vals, int *t)
{
    PGresult *r = rpg_query(p, sql, n, vals);

    *t = 0;
    if (r == NULL)
        return p->code;
    *t = PQntuples(r) > 0 && !PQgetisnull(r, 0, 0) &&
         PQgetvalue(r, 0, 0)[0] == 't';
    PQclear(r);
    return CQ_OK;
}

int rpg_try_lock(void *impl, const char *name, int *got)
{
    const char *v[1] = {name};

    return select_bool(impl,
                       "SELECT pg_try_advisory_lock(hashtextextended($1, 0))",
                       1, v, got);
}

int rpg_unlock(void *impl, const char *name)
{
    const char *v[1] = {name};
    int released;

    /* only a lock this session holds: pg_advisory_unlock would warn (on
     * stderr, through libpq's notice processor) about any other */
    return select_bool(
        impl,
        "SELECT pg_advisory_unlock(k) FROM (SELECT hashtextextended($1, 0)"
        " AS k) s WHERE EXISTS (SELECT 1 FROM pg_catalog.pg_locks"
        " WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
        " AND granted AND objsubid = 1"
        " AND ((classid::int8 << 32) | objid::int8) = s.k)",
        1, v, &released);
}

int rpg_notify(void *impl, const char *channel, const char *payload)
{
    pg_conn *p = impl;
    const char *v[2] = {channel, payload ? payload : ""};
    PGresult *r = rpg_query(p, "SELECT pg_notify($1, $2)", 2, v);

    PQclear(r);
    return r != NULL ? CQ_OK : p->code;
}

int rpg_listen(void *impl, const char *channel)
{
    pg_conn *p = impl;
    char *id = PQescapeIdentifier(p->c, channel, strlen(channel));
    char *sql;
    int rc;

    if (id == NULL)
        return rpg_fail(p, NULL);
    sql = malloc(strlen(id) + 8);
    if (sql == NULL) {
        PQfreemem(id);
        return rpg_fail_msg(p, CQ_ENOMEM, "out of memory");
    }
    sprintf(sql, "LISTEN %s", id);
    PQfreemem(id);
    p->listening = 1; /* a new session would not listen (revive) */
    rc = rpg_drain(p);
    if (rc == CQ_OK)
        rc = rpg_result_rc(p, PQexec(p->c, sql));
    free(sql);
    return rc;
}

static int64_t now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int rpg_wait_notify(void *impl, int timeout_ms, char *channel,
                          size_t chcap, char *payload, size_t plcap)
{
    pg_conn *p = impl;
    int64_t deadline = now_ms() + (timeout_ms > 0 ? timeout_ms : 0);

    for (;;) {
        PGnotify *n = PQnotifies(p->c);
        struct pollfd pfd;
        int64_t left;
        int rc;

        if (n != NULL) {
            if (chcap > 0)
                snprintf(channel, chcap, "%s", n->relname);
            if (plcap > 0)
                snprintf(payload, plcap, "%s", n->extra ? n->extra : "");
            PQfreemem(n);
            p->code = CQ_OK;
            return 1;
        }
        if (PQstatus(p->c) != CONNECTION_OK || PQsocket(p->c) < 0)
            return rpg_fail_msg(p, CQ_EIO, "the connection is closed");
        left = deadline - now_ms();
        pfd.fd = PQsocket(p->c);
        pfd.events = POLLIN;
        pfd.revents = 0;
        rc = poll(&pfd, 1, left > 0 ? (int)left : 0);
        if (rc < 0 && errno == EINTR)
            continue;
        if (rc < 0)
            return rpg_fail_msg(p, CQ_EIO, strerror(errno));
        if (rc == 0) {
            p->code = CQ_OK;
            return 0;
        }
        if (!PQconsumeInput(p->c))
            return rpg_fail(p, NULL);
    }
}
