/*
 * store_pg_exec.c -- statements and the rows they return, for every
 * connection of the PostgreSQL event store: making a connection usable
 * again after it broke (PQreset, session settings, prepared statements),
 * running one statement or several in one round trip (a libpq pipeline),
 * PostgreSQL's failures as CQ_* codes with a message, and the checked
 * decoding of what is read back (events, the head), which is untrusted.
 *
 * Nothing here holds state of its own: each function works on the
 * connection its caller owns at the moment (the writer thread's, or a
 * reader it borrowed).
 */
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store/store_pg_int.h"

void pgs_put_err(char *err, size_t cap, const char *fmt, ...)
{
    va_list ap;
    if (err == NULL || cap == 0)
        return;
    va_start(ap, fmt);
    vsnprintf(err, cap, fmt, ap);
    va_end(ap);
}

/* A failed result (or NULL: the connection's failure) as the store's code:
 * CQ_ENOMEM for PostgreSQL's out of memory, CQ_EIO for everything else
 * (store.h: a failure of the store is CQ_EIO, CQ_ENOMEM or CQ_ECORRUPT;
 * a lock that stays taken past lock_timeout is CQ_EIO as on SQLite), with
 * "ctx: message" in err. */
int pgs_fail(PGconn *c, const PGresult *r, char *err, size_t cap,
             const char *ctx)
{
    char why[400];
    int code = cq_pg_code(c, r, why, sizeof why);

    pgs_put_err(err, cap, "%s: %s", ctx, why);
    return code == CQ_ENOMEM ? CQ_ENOMEM : CQ_EIO;
}

int pgs_conn_bad(const pgs_conn *pc)
{
    return pc->c == NULL || pc->broken || PQstatus(pc->c) != CONNECTION_OK;
}

static int result_ok(const PGresult *r)
{
    ExecStatusType st = r != NULL ? PQresultStatus(r) : PGRES_FATAL_ERROR;
    return st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK;
}

/* The session settings of a fresh connection (store_pg_int.h). */
int pgs_session(pgs_conn *pc, char *err, size_t cap)
{
    static const char WRITER[] =
        "SET statement_timeout = 30000;"
        "SET lock_timeout = 10000;"
        "SET idle_in_transaction_session_timeout = 60000;"
        "SET default_transaction_isolation = 'read committed';"
        "SET default_transaction_read_only = off";
    static const char READER[] = "SET statement_timeout = 30000;"
                                 "SET default_transaction_read_only = on";
    PGresult *r = PQexec(pc->c, pc->writer ? WRITER : READER);
    int rc = result_ok(r) ? CQ_OK
                          : pgs_fail(pc->c, r, err, cap, "session settings");
    PQclear(r);
    return rc;
}

/* Prepare every statement of pc. A statement PostgreSQL refuses for its
 * text (class 42: a missing table or column, a type that does not fit) is
 * CQ_ECORRUPT: the database does not hold the schema it says it does. */
static int prepare_all(pgs_conn *pc, char *err, size_t cap)
{
    for (int i = 0; i < pc->nstmt; i++) {
        PGresult *r = PQprepare(pc->c, pc->names[i], pc->sql[i], 0, NULL);
        if (!result_ok(r)) {
            const char *state =
                r != NULL ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;
            int rc = pgs_fail(pc->c, r, err, cap, pc->names[i]);
            if (rc == CQ_EIO && state != NULL && strncmp(state, "42", 2) == 0 &&
                PQstatus(pc->c) == CONNECTION_OK) {
                char why[PGS_MSG_CAP];
                snprintf(why, sizeof why, "%s", err != NULL ? err : "");
                pgs_put_err(err, cap,
                            "the database does not match event store schema "
                            "version %d: %s",
                            CQ_STORE_SCHEMA_VERSION, why);
                rc = CQ_ECORRUPT;
            }
            PQclear(r);
            return rc;
        }
        PQclear(r);
    }
    return CQ_OK;
}

/* Make pc usable: reset it if it broke, then (again) set the session and
 * prepare the statements. CQ_OK, or CQ_EIO / CQ_ENOMEM / CQ_ECORRUPT with
 * a message (the connection is left to be reset next time). */
int pgs_ensure(pgs_conn *pc, char *err, size_t cap)
{
    int rc;

    if (pc->c == NULL) {
        pgs_put_err(err, cap, "no connection");
        return CQ_EIO;
    }
    if (pc->broken || PQstatus(pc->c) != CONNECTION_OK) {
        pc->ready = 0;
        pc->broken = 0;
        pc->queued = 0; /* PQreset leaves pipeline mode */
        PQreset(pc->c);
        if (PQstatus(pc->c) != CONNECTION_OK) {
            pc->broken = 1;
            return pgs_fail(pc->c, NULL, err, cap, "reconnecting");
        }
    }
    if (pc->ready)
        return CQ_OK;
    rc = pgs_session(pc, err, cap);
    if (rc == CQ_OK)
        rc = prepare_all(pc, err, cap);
    if (rc != CQ_OK) {
        pc->broken = 1;
        return rc;
    }
    pc->ready = 1;
    return CQ_OK;
}

void pgs_clear(pgs_q *q, int n)
{
    for (int i = 0; i < n; i++) {
        PQclear(q[i].res);
        q[i].res = NULL;
    }
}

/* Take over what the write view (an inline projection's SAVEPOINT or
 * RELEASE) sent in a pipeline it left open: its answers come first, as
 * statements queued here (cq_rdb_pg_adopt_queued). The view queues only
 * when nothing of ours is (our pipeline open, it would fail instead), so
 * they fit; if they did not, nothing sensible could be read back. */
static int adopt(pgs_conn *pc)
{
    int n = cq_rdb_pg_adopt_queued(pc->c);

    if (n > PGS_MAX_QUEUED - pc->queued) {
        pc->broken = 1;
        return CQ_EIO;
    }
    while (n-- > 0)
        pc->queued_what[pc->queued++] =
            "a savepoint statement of an inline projection";
    return CQ_OK;
}

static int send_one(pgs_conn *pc, const pgs_q *q)
{
    if (q->stmt < 0)
        return PQsendQueryParams(pc->c, q->sql, 0, NULL, NULL, NULL, NULL, 0);
    return PQsendQueryPrepared(pc->c, pc->names[q->stmt], q->n, q->val, q->len,
                               q->fmt, 0);
}

/* A prepared statement whose result columns changed type under it (ALTER
 * TABLE) fails with 0A000 ("cached plan must not change result type")
 * until it is prepared again: reset the connection, which prepares every
 * statement anew. */
static void note_failure(pgs_conn *pc, const PGresult *r)
{
    const char *state =
        r != NULL ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;
    if (state != NULL && strcmp(state, "0A000") == 0)
        pc->broken = 1;
}

/* Take the results of the open pipeline: first those of the statements
 * queued earlier (pgs_queue), then q[0..n)'s, then the sync. CQ_OK, or the
 * first failure. */
static int take_results(pgs_conn *pc, pgs_q *q, int n, char *err, size_t cap,
                        const char *ctx)
{
    int rc = CQ_OK;
    int pre = pc->queued;
    PGresult *r;

    pc->queued = 0;
    pc->queued_failed = 0;
    for (int k = 0; k < pre + n; k++) {
        int i = k - pre; /* < 0: a queued statement */
        r = PQgetResult(pc->c);
        if (r == NULL) {
            /* the server went away mid-pipeline */
            pc->broken = 1;
            if (rc == CQ_OK)
                rc = pgs_fail(pc->c, NULL, err, cap, ctx);
            return rc;
        }
        if (PQresultStatus(r) == PGRES_PIPELINE_ABORTED) {
            PQclear(r); /* did not run: an earlier one failed */
            r = NULL;
        } else if (!result_ok(r) && rc == CQ_OK) {
            note_failure(pc, r);
            pc->queued_failed = i < 0;
            rc = pgs_fail(pc->c, r, err, cap, i < 0 ? pc->queued_what[k] : ctx);
        }
        if (i >= 0)
            q[i].res = r;
        else
            PQclear(r);
        /* each statement's results end with a NULL */
        while ((r = PQgetResult(pc->c)) != NULL) {
            if (PQstatus(pc->c) != CONNECTION_OK) {
                PQclear(r);
                pc->broken = 1;
                return rc != CQ_OK ? rc : pgs_fail(pc->c, NULL, err, cap, ctx);
            }
            PQclear(r);
        }
    }
    r = PQgetResult(pc->c);
    if (r == NULL || PQresultStatus(r) != PGRES_PIPELINE_SYNC) {
        pc->broken = 1;
        if (rc == CQ_OK)
            rc = pgs_fail(pc->c, r, err, cap, ctx);
    }
    PQclear(r);
    if (!pc->broken && PQexitPipelineMode(pc->c) != 1) {
        pc->broken = 1;
        if (rc == CQ_OK)
            rc = pgs_fail(pc->c, NULL, err, cap, ctx);
    }
    return rc;
}

/* Send statement q (no rows wanted; its parameters are copied at once)
 * now, in a pipeline left open: its result is taken by the next pgs_run
 * or pgs_drain, which it thus costs no round trip of its own (a failure
 * of it is that call's failure, with pc->queued_failed set). While it is
 * open, libpq refuses every synchronous call on the connection
 * (PQexec...): a statement sent by someone else in between fails instead
 * of running before it. `what` (static text) names it in a failure's
 * message. CQ_OK or CQ_EIO (the connection is then reset before its next
 * use). */
int pgs_queue_q(pgs_conn *pc, const pgs_q *q, const char *what, char *err,
                size_t cap)
{
    if (adopt(pc) != CQ_OK)
        return pgs_fail(pc->c, NULL, err, cap, what);
    if (pc->queued >= PGS_MAX_QUEUED) {
        int rc = pgs_drain(pc, err, cap);
        if (rc != CQ_OK)
            return rc;
    }
    if ((pc->queued == 0 && PQenterPipelineMode(pc->c) != 1) ||
        send_one(pc, q) != 1 || PQflush(pc->c) != 0) {
        pc->broken = 1;
        return pgs_fail(pc->c, NULL, err, cap, what);
    }
    pc->queued_what[pc->queued++] = what;
    return CQ_OK;
}

/* pgs_queue_q of sql without parameters. */
int pgs_queue(pgs_conn *pc, const char *sql, const char *what, char *err,
              size_t cap)
{
    pgs_q q = {.stmt = -1, .sql = sql};
    return pgs_queue_q(pc, &q, what, err, cap);
}

/* Take the results of what pgs_queue sent and close the pipeline. CQ_OK,
 * or the first failure's code with its message. */
int pgs_drain(pgs_conn *pc, char *err, size_t cap)
{
    if (adopt(pc) != CQ_OK) {
        pc->queued = 0;
        return pgs_fail(pc->c, NULL, err, cap, "a pipeline");
    }
    if (pc->queued == 0)
        return CQ_OK;
    if (pc->broken || PQpipelineSync(pc->c) != 1) {
        pc->broken = 1;
        pc->queued = 0;
        return pgs_fail(pc->c, NULL, err, cap, pc->queued_what[0]);
    }
    return take_results(pc, NULL, 0, err, cap, pc->queued_what[0]);
}

/* Run q[0..n) in one round trip, after what pgs_queue sent. Each q[i].res
 * gets its result (NULL if it did not run). CQ_OK when every one (the
 * queued ones too) succeeded, else the first failure's code with its
 * message in err. A pipeline that went wrong in a way that leaves the
 * connection's state unknown marks it broken: it is reset before its next
 * use. */
int pgs_run(pgs_conn *pc, pgs_q *q, int n, char *err, size_t cap,
            const char *ctx)
{
    int rc = CQ_OK;

    if (adopt(pc) != CQ_OK) {
        pc->queued = 0;
        return pgs_fail(pc->c, NULL, err, cap, ctx);
    }
    pc->queued_failed = 0;
    for (int i = 0; i < n; i++)
        q[i].res = NULL;
    if (n == 1 && pc->queued == 0) {
        PGresult *r = q[0].stmt < 0
                          ? PQexec(pc->c, q[0].sql)
                          : PQexecPrepared(pc->c, pc->names[q[0].stmt], q[0].n,
                                           q[0].val, q[0].len, q[0].fmt, 0);
        q[0].res = r;
        if (result_ok(r))
            return CQ_OK;
        note_failure(pc, r);
        return pgs_fail(pc->c, r, err, cap, ctx);
    }
    if (pc->queued == 0 && PQenterPipelineMode(pc->c) != 1)
        rc = CQ_EIO;
    for (int i = 0; i < n && rc == CQ_OK; i++)
        if (send_one(pc, &q[i]) != 1)
            rc = CQ_EIO;
    if (rc == CQ_OK && PQpipelineSync(pc->c) != 1)
        rc = CQ_EIO;
    if (rc != CQ_OK) {
        /* nothing sensible can be read back: start over next time */
        pc->broken = 1;
        pc->queued = 0;
        return pgs_fail(pc->c, NULL, err, cap, ctx);
    }
    return take_results(pc, q, n, err, cap, ctx);
}

/* The integer in row/col: CQ_OK with *out; CQ_ECORRUPT for NULL or text
 * that is not a whole decimal int64. */
int pgs_int_col(const PGresult *r, int row, int col, int64_t *out)
{
    const char *s;
    char *end;
    long long v;

    if (PQgetisnull(r, row, col))
        return CQ_ECORRUPT;
    s = PQgetvalue(r, row, col);
    if (s == NULL || s[0] == '\0')
        return CQ_ECORRUPT;
    errno = 0;
    v = strtoll(s, &end, 10);
    if (errno != 0 || *end != '\0')
        return CQ_ECORRUPT;
    *out = v;
    return CQ_OK;
}

static int type_fits(Oid have, int want)
{
    if (want == PGS_INT8OID)
        return have == PGS_INT8OID || have == PGS_INT4OID ||
               have == PGS_INT2OID;
    return have == PGS_TEXTOID || have == PGS_VARCHAROID;
}

/* Check that columns first..first+n-1 have the types in want (PGS_INT8OID:
 * any integer type, PGS_TEXTOID: text or varchar). -1 if they do, else the
 * index (0-based from first) of the first that does not. */
int pgs_check_types(const PGresult *r, int first, const int *want, int n)
{
    if (PQnfields(r) < first + n)
        return PQnfields(r) > first ? PQnfields(r) - first : 0;
    for (int i = 0; i < n; i++)
        if (!type_fits(PQftype(r, first + i), want[i]))
            return i;
    return -1;
}

/* max(position) in column 0 of row 0 (of one or more): NULL (empty store)
 * is 0; anything but a positive integer is CQ_ECORRUPT. */
int pgs_head_of(const PGresult *r, int64_t *head, char *err, size_t cap)
{
    static const int want[1] = {PGS_INT8OID};

    if (PQntuples(r) < 1 || pgs_check_types(r, 0, want, 1) >= 0) {
        pgs_put_err(err, cap, "events: the highest position is not an integer");
        return CQ_ECORRUPT;
    }
    if (PQgetisnull(r, 0, 0)) {
        *head = 0;
        return CQ_OK;
    }
    if (pgs_int_col(r, 0, 0, head) != CQ_OK || *head <= 0) {
        pgs_put_err(err, cap,
                    "events: highest position is not a positive integer");
        return CQ_ECORRUPT;
    }
    return CQ_OK;
}

static const char *const EC_NAME[PGS_EC_COUNT] = {
    "position",       "stream_id", "version",  "type",
    "schema_version", "data",      "metadata", "recorded_at"};

/* Decode row `row` of an events result whose EVENT_COLS start at col0.
 * The strings stay valid until the result is cleared. */
static int decode_event(const PGresult *r, int row, int col0,
                        cq_stored_event *ev, char *err, size_t cap)
{
    static const int text_cols[] = {PGS_EC_STREAM, PGS_EC_TYPE, PGS_EC_DATA,
                                    PGS_EC_META};
    const char **text_out[] = {&ev->stream_id, &ev->type, &ev->data,
                               &ev->metadata};
    const char *pos = PQgetisnull(r, row, col0) ? "?" : PQgetvalue(r, row, col0);
    int64_t sv = 0;

    if (pgs_int_col(r, row, col0 + PGS_EC_POSITION, &ev->position) != CQ_OK ||
        pgs_int_col(r, row, col0 + PGS_EC_VERSION, &ev->version) != CQ_OK ||
        pgs_int_col(r, row, col0 + PGS_EC_SCHEMA, &sv) != CQ_OK ||
        pgs_int_col(r, row, col0 + PGS_EC_RECORDED, &ev->recorded_at) !=
            CQ_OK) {
        int bad = PGS_EC_POSITION;
        int64_t x;
        for (int i = 0; i < PGS_EC_COUNT; i++) {
            if ((i == PGS_EC_POSITION || i == PGS_EC_VERSION ||
                 i == PGS_EC_SCHEMA || i == PGS_EC_RECORDED) &&
                pgs_int_col(r, row, col0 + i, &x) != CQ_OK) {
                bad = i;
                break;
            }
        }
        pgs_put_err(err, cap,
                    "event at position %.40s: column %s is NULL or not an "
                    "integer",
                    pos, EC_NAME[bad]);
        return CQ_ECORRUPT;
    }
    if (sv < INT_MIN || sv > INT_MAX) {
        pgs_put_err(err, cap,
                    "event at position %lld: schema_version %lld out of range",
                    (long long)ev->position, (long long)sv);
        return CQ_ECORRUPT;
    }
    ev->schema_version = (int)sv;
    for (size_t i = 0; i < sizeof text_cols / sizeof text_cols[0]; i++) {
        int col = col0 + text_cols[i];
        const char *s = PQgetvalue(r, row, col);
        if (PQgetisnull(r, row, col) ||
            strlen(s) != (size_t)PQgetlength(r, row, col)) {
            pgs_put_err(err, cap,
                        "event at position %lld: column %s is NULL or holds a "
                        "NUL byte",
                        (long long)ev->position, EC_NAME[text_cols[i]]);
            return CQ_ECORRUPT;
        }
        *text_out[i] = s;
    }
    return CQ_OK;
}

/* Hand rows first_row.. of r (EVENT_COLS from column col0) to cb. The
 * column seq_col (PGS_EC_POSITION or PGS_EC_VERSION) must run
 * contiguously from `expect` and stay <= `max`: anything else is a hole in
 * what should be gap-free. *in_cb (may be NULL) is set while cb runs. A cb
 * that returns non-zero stops the walk (CQ_OK). */
int pgs_emit_events(const PGresult *r, int first_row, int col0, int seq_col,
                    int64_t expect, int64_t max, cq_event_cb cb, void *arg,
                    int *in_cb, char *err, size_t cap, const char *ctx)
{
    static const int want[PGS_EC_COUNT] = {
        PGS_INT8OID, PGS_TEXTOID, PGS_INT8OID, PGS_TEXTOID,
        PGS_INT8OID, PGS_TEXTOID, PGS_TEXTOID, PGS_INT8OID};
    const char *what = seq_col == PGS_EC_POSITION ? "position" : "version";
    int rows = PQntuples(r);
    cq_stored_event ev;
    int bad;

    if (first_row >= rows)
        return CQ_OK;
    bad = pgs_check_types(r, col0, want, PGS_EC_COUNT);
    if (bad >= 0) {
        pgs_put_err(err, cap, "%s: events column %s is of the wrong type", ctx,
                    EC_NAME[bad]);
        return CQ_ECORRUPT;
    }
    for (int row = first_row; row < rows; row++) {
        int rc = decode_event(r, row, col0, &ev, err, cap);
        if (rc != CQ_OK)
            return rc;
        int64_t seq = seq_col == PGS_EC_POSITION ? ev.position : ev.version;
        if (seq != expect || seq > max) {
            pgs_put_err(err, cap,
                        "%s: expected %s %lld, found %lld (a gap or an event "
                        "beyond the head)",
                        ctx, what, (long long)expect, (long long)seq);
            return CQ_ECORRUPT;
        }
        expect++;
        if (in_cb != NULL)
            *in_cb = 1;
        int stop = cb(arg, &ev);
        if (in_cb != NULL)
            *in_cb = 0;
        if (stop != 0)
            break;
    }
    return CQ_OK;
}
