/*
 * pg.c -- the PostgreSQL backends' shared helpers (see pg.h).
 */
#include <stdio.h>
#include <string.h>

#include "cqrs/cqrs.h"
#include "store/pg.h"

int cq_pg_is_uri(const char *where)
{
    if (where == NULL)
        return 0;
    if (strncmp(where, "postgresql://", 13) == 0 ||
        strncmp(where, "postgres://", 11) == 0)
        return 1;
    return strstr(where, "dbname=") != NULL || strstr(where, "host=") != NULL;
}

void cq_pg_redact(const char *uri, char *buf, size_t cap)
{
    const char *scheme, *at, *colon, *pw;
    size_t n;

    if (cap == 0)
        return;
    buf[0] = '\0';
    if (uri == NULL)
        return;
    snprintf(buf, cap, "%s", uri);
    /* user:password@ in a URI: between the scheme's "//" and the first '@'
     * before any '/' */
    scheme = strstr(uri, "://");
    if (scheme != NULL) {
        const char *auth = scheme + 3;
        const char *end = auth + strcspn(auth, "/?");
        at = memchr(auth, '@', (size_t)(end - auth));
        if (at != NULL) {
            colon = memchr(auth, ':', (size_t)(at - auth));
            if (colon != NULL) {
                n = (size_t)(colon - uri) + 1;
                snprintf(buf, cap, "%.*s***%s", (int)n, uri, at);
            }
        }
    }
    /* password=... as a key=value pair or a URI parameter */
    pw = strstr(buf, "password=");
    if (pw != NULL) {
        char tail[1024];
        const char *v = pw + 9;
        size_t vlen = strcspn(v, " &");
        snprintf(tail, sizeof tail, "%s", v + vlen);
        n = (size_t)(v - buf);
        if (n + 3 < cap)
            snprintf(buf + n, cap - n, "***%s", tail);
    }
}

/* Copy libpq's message without its trailing newlines, on one line. */
static void one_line(const char *msg, char *err, size_t errcap)
{
    size_t i, n;

    if (err == NULL || errcap == 0)
        return;
    snprintf(err, errcap, "%s", msg != NULL && msg[0] ? msg : "unknown error");
    n = strlen(err);
    while (n > 0 && (err[n - 1] == '\n' || err[n - 1] == ' '))
        err[--n] = '\0';
    for (i = 0; i < n; i++)
        if (err[i] == '\n' || err[i] == '\t')
            err[i] = ' ';
}

int cq_pg_connect(const char *uri, int connect_timeout_s, PGconn **out,
                  char *err, size_t errcap)
{
    /* Our defaults come before the URI, whose own settings (expanded from
     * dbname) override them; the encoding comes after it: every byte the
     * engine sends and reads is UTF-8. Notices (CREATE ... IF NOT EXISTS
     * that skipped) stay out of the server's log. */
    const char *keys[] = {"connect_timeout", "application_name", "options",
                          "dbname", "client_encoding", NULL};
    char timeout[16], shown[512], why[512];
    const char *vals[6];
    PGconn *c;

    *out = NULL;
    snprintf(timeout, sizeof timeout, "%d",
             connect_timeout_s > 0 ? connect_timeout_s : 10);
    vals[0] = timeout;
    vals[1] = "cqrsd";
    vals[2] = "-c client_min_messages=warning";
    vals[3] = uri;
    vals[4] = "UTF8";
    vals[5] = NULL;
    c = PQconnectdbParams(keys, vals, 1);
    if (c == NULL || PQstatus(c) != CONNECTION_OK) {
        cq_pg_redact(uri, shown, sizeof shown);
        one_line(c != NULL ? PQerrorMessage(c) : "out of memory", why,
                 sizeof why);
        if (err != NULL && errcap > 0)
            snprintf(err, errcap, "cannot connect to %s: %s", shown, why);
        PQfinish(c);
        return CQ_EIO;
    }
    *out = c;
    return CQ_OK;
}

int cq_pg_code(PGconn *c, const PGresult *r, char *err, size_t errcap)
{
    const char *state = r != NULL ? PQresultErrorField(r, PG_DIAG_SQLSTATE)
                                  : NULL;
    const char *msg = r != NULL ? PQresultErrorMessage(r) : NULL;

    if (msg == NULL || msg[0] == '\0')
        msg = c != NULL ? PQerrorMessage(c) : "no connection";
    one_line(msg, err, errcap);
    if (c == NULL || PQstatus(c) != CONNECTION_OK)
        return CQ_EIO;
    if (state == NULL)
        return r == NULL ? CQ_EIO : CQ_EINVAL;
    if (strcmp(state, "40001") == 0 || strcmp(state, "40P01") == 0 ||
        strcmp(state, "55P03") == 0 || strcmp(state, "57014") == 0)
        return CQ_EBUSY;
    if (strcmp(state, "53200") == 0)
        return CQ_ENOMEM;
    if (strcmp(state, "23505") == 0)
        return CQ_EEXIST;
    if (strncmp(state, "08", 2) == 0 || strncmp(state, "53", 2) == 0 ||
        strncmp(state, "57P0", 4) == 0 || strncmp(state, "58", 2) == 0 ||
        strncmp(state, "XX", 2) == 0)
        return CQ_EIO;
    return CQ_EINVAL;
}

int cq_pg_exec(PGconn *c, const char *sql, char *err, size_t errcap)
{
    PGresult *r = PQexec(c, sql);
    int rc = CQ_OK;
    ExecStatusType st = r != NULL ? PQresultStatus(r) : PGRES_FATAL_ERROR;

    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK &&
        st != PGRES_EMPTY_QUERY)
        rc = cq_pg_code(c, r, err, errcap);
    PQclear(r);
    return rc;
}
