/*
 * writer.c -- the single writer thread (see writer.h for the protocol):
 * the queue it drains, a batch of requests in one transaction (group
 * commit), each request in its savepoint (the replay of an idempotency
 * key, a command through its decider, a raw append) and the answers.
 * Loading an aggregate's state is writer_state.c's, appending events and
 * the inline projections' call-out writer_append.c's, whether the store
 * takes writes and the pacing of prunes writer_upkeep.c's (the layout is
 * in writer_int.h).
 *
 * Threads and locks:
 *   - `mu` guards the queue (head, tail, queued), `stopping` and the turn
 *     (`busy`, `solo`, `wants_turn`, `last_batch_ns`); `cv` is signalled
 *     when a request is queued, the writer is told to stop, or a
 *     submitter leaves the turn while the writer thread waits for it.
 *     Submitters (any thread) take it in cq_writer_submit and
 *     cq_writer_try_run; the writer thread takes it to dequeue a batch and
 *     to wait while idle.
 *   - the turn: one thread at a time runs a batch, a prune step or a
 *     probe, and holds `busy` meanwhile: the writer thread, or a
 *     submitter in cq_writer_try_run, which runs its own request as a
 *     batch of one when the writer is idle, nothing is queued and the
 *     last batch held one request with nothing behind it (one client
 *     sending commands one after another: no hand-off to the writer
 *     thread and back). Under load every request goes through the queue
 *     and batches form as before.
 *   - head_position is atomic: written by the turn's holder after each commit,
 *     read by anyone.
 *   - `writable` is atomic, written by the turn's holder only; `why` (the
 *     failure that made the store unwritable) is guarded by `mu`.
 *   - everything else (cache, decision, prune pacing, the store's write
 *     side) belongs to the thread holding the turn; taking and leaving it
 *     under `mu` orders one holder's work before the next's.
 *
 * Outcomes of one request, decided inside its savepoint:
 *   KEEP        its writes stay (2xx); its answer goes to the command log
 *   UNDO_STORE  a stable refusal (404/409/412/422): writes undone, the
 *               answer still goes to the command log so a retry with the
 *               same key gets the same answer
 *   UNDO        a transient or internal failure (500, key reuse):
 *               writes undone, nothing remembered
 *   ABORT       the store failed: the whole batch is rolled back and
 *               every request in it is answered 503; nothing is durable
 *
 * While idle, the thread also runs the prune steps and, while the store
 * is unwritable, the write probe (writer_upkeep.c); its timed wait serves
 * both.
 */
#include "command/writer_int.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/base.h"
#include "base/problem.h"
#include "base/strbuf.h"

enum outcome { KEEP, UNDO_STORE, UNDO, ABORT };

/* ---- answers ------------------------------------------------------------ */

void writer_answer_problem(cq_write_req *r, int status, const char *slug,
                           const char *fmt, ...)
{
    char detail[768];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(detail, sizeof detail, fmt, ap);
    va_end(ap);
    free(r->response);
    r->status = status;
    r->problem = 1;
    r->response = cq_problem_text(status, slug, NULL, "%s", detail);
}

/* Take over `doc` (a JSON object) as r's success answer. */
static int answer_json(cq_write_req *r, int status, json_t *doc)
{
    free(r->response);
    r->response = doc ? json_dumps(doc, JSON_COMPACT) : NULL;
    json_decref(doc);
    r->status = status;
    r->problem = 0;
    return r->response ? CQ_OK : CQ_ENOMEM;
}

/* ---- the two kinds of request ------------------------------------------- */

/* What a failed store or state call means for request r: undecodable
 * stored data or no memory fail r alone (500); anything else aborts the
 * batch. */
static enum outcome fatal(cq_writer *w, cq_write_req *r, int rc)
{
    if (rc == CQ_ECORRUPT) {
        if (r->response == NULL) /* writer_load_state() explains itself */
            writer_answer_problem(r, 500, "corrupt-stream",
                                  "stream %s cannot be "
                                  "read: %s",
                                  r->stream_id, cq_store_errmsg(w->store));
        return UNDO;
    }
    if (rc == CQ_ENOMEM) {
        writer_answer_problem(r, 500, "internal", "out of memory");
        return UNDO;
    }
    return ABORT;
}

/* Round trips: on PostgreSQL the stream-version read costs one per
 * command. When the cache holds the stream, or the command creates its
 * stream and nothing is cached, its version is guessed instead (cached
 * version, or 0): the append checks it as the expected version anyway.
 * Only a guess that passes every expectation is used; a refusal or a
 * decision without events (which no append would check) is never
 * answered from a guess. 1 with *cur set, 0: read it. */
static int guess_version(cq_writer *w, const cq_write_req *r, int64_t *cur)
{
    const cq_command_def *def = r->def;
    int64_t v = 0, pos = 0;

    if (cq_cache_get(w->cache, def->aggregate, r->stream_id, &v, &pos) ==
            NULL &&
        def->expect != CQ_EXPECT_NEW)
        return 0;
    if ((def->expect == CQ_EXPECT_NEW && v > 0) ||
        (def->expect == CQ_EXPECT_EXISTS && v == 0) ||
        (r->expected != CQ_VERSION_ANY && r->expected != v))
        return 0;
    *cur = v;
    return 1;
}

/* One attempt at command r: read the stream's version (or, with `guess`,
 * guess_version's), check the expectations, load the state (cached or
 * folded), decide, append. An append that finds the stream moved since
 * its version was read answers 409 and sets *moved (run_command decides
 * what to do about it). A guess the append or the decision did not
 * confirm sets *moved to 2: nothing was written, decide again from a
 * version read from the store. */
static enum outcome decide_and_append(cq_writer *w, cq_write_req *r,
                                      int64_t now, int guess, int *moved)
{
    const cq_command_def *def = r->def;
    const cq_aggregate *agg = def->aggregate;
    pending *p = NULL;
    fold_ctx f;
    cq_strbuf doc = CQ_STRBUF_INIT, events = CQ_STRBUF_INIT;
    int64_t cur, version, first, last;
    size_t n, i;
    enum outcome out;
    int rc;

    f.state = NULL;
    if (!guess || !guess_version(w, r, &cur)) {
        guess = 0;
        rc = cq_store_stream_version(w->store, r->stream_id, &cur);
        if (rc != CQ_OK)
            return fatal(w, r, rc);
    }
    if (def->expect == CQ_EXPECT_NEW && cur > 0) {
        writer_answer_problem(r, 409, "stream-exists",
                              "stream %s already exists "
                              "(version %lld)",
                              r->stream_id, (long long)cur);
        return UNDO_STORE;
    }
    if (def->expect == CQ_EXPECT_EXISTS && cur == 0) {
        writer_answer_problem(r, 404, "not-found", "stream %s does not exist",
                              r->stream_id);
        return UNDO_STORE;
    }
    if (r->expected != CQ_VERSION_ANY && r->expected != cur) {
        writer_answer_problem(r, 412, "precondition-failed",
                              "If-Match expects "
                              "version %lld but stream %s is at version %lld",
                              (long long)r->expected, r->stream_id,
                              (long long)cur);
        return UNDO_STORE;
    }

    rc = writer_load_state(w, r, cur, &f);
    if (rc != CQ_OK) {
        out = fatal(w, r, rc);
        goto done;
    }
    cq_decision_reset(w->decision);
    rc = def->decide(f.state, r->body, w->decision);
    if (guess && (rc != CQ_OK || cq_decision_count(w->decision) == 0)) {
        *moved = 2; /* unconfirmed guess: decide from the store's version */
        out = UNDO;
        goto done;
    }
    if (rc == CQ_EREFUSED) {
        const char *why = cq_decision_refusal(w->decision);
        writer_answer_problem(r, 422, "refused", "%s refused: %s", def->type,
                              why ? why : "refused by a business rule");
        out = UNDO_STORE;
        goto done;
    }
    if (rc != CQ_OK) {
        writer_answer_problem(r, 500, "internal", "%s decider failed: %s",
                              def->type, cq_strerror(rc));
        out = UNDO;
        goto done;
    }

    n = cq_decision_count(w->decision);
    version = cur;
    last = f.position;
    out = UNDO;
    /* The answer, printed directly: {"command_id", "stream_id", "version",
     * "position", "events": [{"type", "version", "position"}...]} */
    cq_strbuf_puts(&events, "[");
    if (n > 0) {
        p = calloc(n, sizeof *p);
        if (p == NULL)
            goto nomem;
        for (i = 0; i < n; i++) {
            const cq_decided_event *de = cq_decision_event(w->decision, i);
            p[i].type = de->type;
            p[i].schema_version = de->schema_version;
            p[i].data = de->data;
        }
        rc = writer_append_events(w, r, cur, p, n, now, &version, &first);
        if (rc == CQ_ECONFLICT) {
            *moved = guess ? 2 : 1;
            writer_answer_problem(r, 409, "conflict",
                                  "stream %s changed while the "
                                  "command ran",
                                  r->stream_id);
            goto done;
        }
        if (rc != CQ_OK) {
            out = fatal(w, r, rc);
            goto done;
        }
        for (i = 0; i < n; i++) {
            cq_event ev = {p[i].type, p[i].schema_version, cur + 1 + (int64_t)i,
                           first + (int64_t)i, p[i].data};
            rc = agg->evolve(f.state, &ev);
            if (rc != CQ_OK) {
                writer_answer_problem(r, 500, "internal",
                                      "%s: its own event %s "
                                      "could not be applied: %s",
                                      def->type, ev.type, cq_strerror(rc));
                goto done;
            }
            cq_strbuf_puts(&events, i ? ",{\"type\":" : "{\"type\":");
            cq_strbuf_json_string(&events, ev.type);
            cq_strbuf_puts(&events, ",\"version\":");
            cq_strbuf_int(&events, ev.version);
            cq_strbuf_puts(&events, ",\"position\":");
            cq_strbuf_int(&events, ev.position);
            cq_strbuf_puts(&events, "}");
        }
        last = first + (int64_t)n - 1;
    }
    cq_strbuf_puts(&events, "]");
    cq_strbuf_puts(&doc, "{\"command_id\":\"");
    cq_strbuf_puts(&doc, r->command_id);
    cq_strbuf_puts(&doc, "\",\"stream_id\":");
    cq_strbuf_json_string(&doc, r->stream_id);
    cq_strbuf_puts(&doc, ",\"version\":");
    cq_strbuf_int(&doc, version);
    cq_strbuf_puts(&doc, ",\"position\":");
    cq_strbuf_int(&doc, last);
    cq_strbuf_puts(&doc, ",\"events\":");
    cq_strbuf_add(&doc, events.p ? events.p : "", events.len);
    cq_strbuf_puts(&doc, "}");
    if (events.oom)
        goto nomem;
    free(r->response);
    r->response = cq_strbuf_take(&doc);
    if (r->response == NULL)
        goto nomem;
    r->status = 202;
    r->problem = 0;
    r->version = version;
    r->position = last;
    rc = cq_cache_put(w->cache, agg, r->stream_id, f.state, version, last);
    f.state = NULL; /* taken over, even on failure */
    if (rc != CQ_OK)
        goto nomem;
    out = KEEP;
    goto done;
nomem:
    writer_answer_problem(r, 500, "internal", "out of memory");
    out = UNDO;
done:
    cq_strbuf_reset(&events);
    cq_strbuf_reset(&doc);
    free(p);
    if (f.state != NULL)
        agg->free(f.state);
    return out;
}

/* Command r. The version it decides on is read inside the batch, so a
 * cached state is only used when it is not behind the store; but should
 * the stream still move between that read and the append (another node
 * appended: the store serialises appends, this only narrows when the read
 * happens), a state cached before is not to be trusted: without an
 * expected version of its own (If-Match), r drops the stream's cache
 * entry and is decided once more from the store. With one, or a second
 * time, the answer is 409. A first attempt on a guessed version
 * (guess_version) that the append refuses is decided once more from the
 * version read, and that attempt is the last. */
static enum outcome run_command(cq_writer *w, cq_write_req *r, int64_t now)
{
    int moved = 0;
    /* first with a guessed version (guess_version); an unconfirmed guess
     * wrote nothing and counts as no attempt */
    enum outcome out = decide_and_append(w, r, now, 1, &moved);

    /* an unconfirmed guess is the stale cache this retry is for: its
     * entry stays (a prefix of the stream), the missing events are folded */
    if (moved == 2 || (moved && r->expected == CQ_VERSION_ANY)) {
        if (moved == 1)
            cq_cache_drop(w->cache, r->def->aggregate, r->stream_id);
        moved = 0;
        out = decide_and_append(w, r, now, 0, &moved);
    }
    return out;
}

/* One attempt at raw append r; *moved as for decide_and_append. */
static enum outcome append_once(cq_writer *w, cq_write_req *r, int64_t now,
                                int *moved)
{
    pending *p = NULL;
    size_t n = json_array_size(r->body), i;
    int64_t cur, version, first;
    enum outcome out = UNDO;
    int rc;

    rc = cq_store_stream_version(w->store, r->stream_id, &cur);
    if (rc != CQ_OK)
        return fatal(w, r, rc);
    if ((r->expected == CQ_VERSION_NO_STREAM && cur != 0) ||
        (r->expected == CQ_VERSION_EXISTS && cur == 0) ||
        (r->expected > 0 && r->expected != cur)) {
        char want[32];
        if (r->expected == CQ_VERSION_NO_STREAM)
            snprintf(want, sizeof want, "no stream");
        else if (r->expected == CQ_VERSION_EXISTS)
            snprintf(want, sizeof want, "an existing stream");
        else
            snprintf(want, sizeof want, "version %lld", (long long)r->expected);
        writer_answer_problem(r, 412, "wrong-expected-version",
                              "expected %s but "
                              "stream %s is at version %lld",
                              want, r->stream_id, (long long)cur);
        return UNDO_STORE;
    }
    p = calloc(n ? n : 1, sizeof *p);
    if (p == NULL)
        goto nomem;
    for (i = 0; i < n; i++) {
        const json_t *e = json_array_get(r->body, i);
        p[i].type = json_string_value(json_object_get(e, "type"));
        p[i].schema_version = 1;
        p[i].data = json_object_get(e, "data");
        p[i].user_metadata = json_object_get(e, "metadata");
    }
    rc = writer_append_events(w, r, cur, p, n, now, &version, &first);
    if (rc == CQ_ECONFLICT) {
        *moved = 1;
        writer_answer_problem(r, 409, "conflict",
                              "stream %s changed while the events were "
                              "appended",
                              r->stream_id);
        goto done;
    }
    if (rc != CQ_OK) {
        out = fatal(w, r, rc);
        goto done;
    }
    r->version = version;
    r->position = first + (int64_t)n - 1;
    if (answer_json(r, 201,
                    json_pack("{s:s,s:I,s:I}", "stream_id", r->stream_id,
                              "version", (json_int_t)version, "position",
                              (json_int_t)r->position)) != CQ_OK)
        goto nomem;
    out = KEEP;
    goto done;
nomem:
    writer_answer_problem(r, 500, "internal", "out of memory");
    out = UNDO;
done:
    free(p);
    return out;
}

/* Raw append r. Should its stream move between the version read and
 * the append (another node appended), it is tried once more: the
 * expectation is then checked against the new version (412 if it no
 * longer holds). */
static enum outcome run_append(cq_writer *w, cq_write_req *r, int64_t now)
{
    int moved = 0;
    enum outcome out = append_once(w, r, now, &moved);

    if (moved) {
        moved = 0;
        out = append_once(w, r, now, &moved);
    }
    return out;
}

/* ---- one request in its savepoint --------------------------------------- */

/* The version in a stored 2xx answer, for the ETag of a replay. */
static int64_t stored_version(const char *response)
{
    json_t *doc = json_loads(response, 0, NULL);
    int64_t v = json_integer_value(json_object_get(doc, "version"));
    json_decref(doc);
    return v;
}

static enum outcome replay(cq_writer *w, cq_write_req *r, int64_t now,
                           int *done)
{
    cq_cmdlog_entry e;
    int rc;

    *done = 0;
    if (r->idem_key[0] == '\0')
        return KEEP;
    rc = cq_store_cmdlog_get(w->store, r->idem_key, now, &e);
    if (rc == CQ_ENOTFOUND)
        return KEEP;
    if (rc != CQ_OK)
        return ABORT;
    *done = 1;
    if (strcmp(e.command_hash, r->command_hash) != 0) {
        writer_answer_problem(r, 422, "idempotency-key-reused",
                              "Idempotency-Key "
                              "%s was used for a different request",
                              r->idem_key);
        return UNDO;
    }
    free(r->response);
    r->response = strdup(e.response);
    if (r->response == NULL) {
        writer_answer_problem(r, 500, "internal", "out of memory");
        return UNDO;
    }
    r->status = e.status;
    r->problem = e.status >= 400;
    r->replayed = 1;
    r->version = e.status < 300 ? stored_version(e.response) : 0;
    return KEEP;
}

static int remember(cq_writer *w, const cq_write_req *r, int64_t now)
{
    cq_cmdlog_entry e;

    if (r->idem_key[0] == '\0' || r->replayed || r->response == NULL)
        return CQ_OK;
    e.key = r->idem_key;
    e.command_hash = r->command_hash;
    e.status = r->status;
    e.response = r->response;
    e.created_at = now;
    e.expires_at = now + w->cfg.idempotency_ttl_ms;
    return cq_store_cmdlog_put(w->store, &e);
}

/* Run r inside its own savepoint. CQ_OK (r answered) or CQ_EIO: the
 * transaction is unusable and the batch must be rolled back. */
static int run_one(cq_writer *w, cq_write_req *r, int64_t now)
{
    enum outcome out;
    int done;

    if (cq_store_savepoint(w->store) != CQ_OK)
        return CQ_EIO;
    out = replay(w, r, now, &done);
    if (!done && out == KEEP)
        out = r->kind == CQ_WRITE_COMMAND ? run_command(w, r, now)
                                          : run_append(w, r, now);
    switch (out) {
    case KEEP:
        if (remember(w, r, now) != CQ_OK)
            return CQ_EIO;
        return cq_store_release(w->store) == CQ_OK ? CQ_OK : CQ_EIO;
    case UNDO_STORE:
    case UNDO:
        if (cq_store_rollback_savepoint(w->store) != CQ_OK)
            return CQ_EIO;
        if (out == UNDO_STORE && remember(w, r, now) != CQ_OK)
            return CQ_EIO;
        return CQ_OK;
    case ABORT:
    default: return CQ_EIO;
    }
}

/* ---- batches --------------------------------------------------------------
 */

/* Run the requests of `batch` in one transaction; if a prune pass is due
 * or under way, one step of it (of prune_rows keys at most) commits with
 * them. With call_done, each request's done() is called at the end (the
 * writer thread); without, the caller (try_run) takes the answer. */
static void run_batch(cq_writer *w, cq_write_req *batch, int prune_rows,
                      int call_done)
{
    int64_t now = cq_now_ms();
    int64_t pruned = 0;
    cq_write_req *r, *next;
    char msg[512] = "";
    int rc;

    rc = cq_store_begin(w->store);
    for (r = batch; rc == CQ_OK && r != NULL; r = r->next)
        rc = run_one(w, r, now);
    if (rc == CQ_OK && w->cfg.hooks.before_commit != NULL) {
        int64_t head;
        rc = cq_store_write_head(w->store, &head);
        if (rc == CQ_OK)
            rc = w->cfg.hooks.before_commit(w->cfg.hooks.arg, head);
    }
    /* At most one step per batch, however many keys remain. */
    writer_prune_start_if_due(w, writer_mono_ms());
    if (rc == CQ_OK && w->prune_pending)
        rc =
            writer_prune_in_batch(w, now, prune_rows, &pruned, msg, sizeof msg);
    if (rc == CQ_OK)
        rc = cq_store_commit(w->store);
    if (rc == CQ_OK) {
        int64_t head;
        /* The step's keys are gone now; fewer than allowed ends the pass
         * (a rolled-back step leaves it under way: the next batch or idle
         * step redoes it). */
        if (w->prune_pending && pruned < prune_rows)
            w->prune_pending = 0;
        cq_cache_commit(w->cache);
        writer_set_writable(w, 1, NULL);
        if (cq_store_write_head(w->store, &head) == CQ_OK) {
            atomic_store(&w->head_position, head);
            if (w->cfg.hooks.committed != NULL)
                w->cfg.hooks.committed(w->cfg.hooks.arg, head, batch);
        }
    } else {
        if (msg[0] == '\0') /* else the prune step lost the transaction */
            snprintf(msg, sizeof msg, "%s", cq_store_errmsg(w->store));
        cq_store_rollback(w->store);
        cq_cache_drop_dirty(w->cache);
        writer_set_writable(w, 0, msg);
        for (r = batch; r != NULL; r = r->next) {
            r->replayed = 0;
            r->version = 0;
            writer_answer_problem(r, 503, "store-unavailable",
                                  "the event store "
                                  "failed and nothing was written: %s",
                                  msg);
        }
    }
    for (r = batch; call_done && r != NULL; r = next) {
        next = r->next; /* r belongs to its submitter once done() runs */
        r->done(r);
    }
}

/* Leave the turn (mu held): note how the batch of n requests (0: a prune
 * step or a probe) ended, and hand the queue to the writer thread if it
 * waits for the turn. */
static void leave_turn(cq_writer *w, int n)
{
    if (n > 0) {
        w->solo = n == 1 && w->head == NULL;
        w->last_batch_ns = cq_mono_ns();
    }
    w->busy = 0;
    if (w->wants_turn)
        pthread_cond_signal(&w->cv);
}

static void *writer_main(void *arg)
{
    cq_writer *w = arg;

    pthread_setname_np(pthread_self(), "cq-writer");
    if (w->cfg.hooks.start != NULL)
        w->cfg.hooks.start(w->cfg.hooks.arg);
    pthread_mutex_lock(&w->mu);
    leave_turn(w, 0); /* cq_writer_start gave the turn to the start hook */
    for (;;) {
        cq_write_req *batch, *last;
        int n = 1;

        while (w->busy || (w->head == NULL && !w->stopping)) {
            struct timespec ts;
            int64_t ns;

            if (w->busy) { /* a submitter runs its request (try_run) */
                w->wants_turn = 1;
                pthread_cond_wait(&w->cv, &w->mu);
                w->wants_turn = 0;
                continue;
            }
            /* writer_prune_start_if_due touches the turn's fields, never
             * the store, so it may run under mu; a step runs without it,
             * holding the turn. */
            writer_prune_start_if_due(w, writer_mono_ms());
            ns = (int64_t)(w->last_batch_ns + CQ_WRITER_PRUNE_GRACE_NS -
                           cq_mono_ns());
            if (w->prune_pending && ns <= 0) {
                w->busy = 1;
                pthread_mutex_unlock(&w->mu);
                writer_prune_step(w, CQ_WRITER_PRUNE_CHUNK);
                pthread_mutex_lock(&w->mu);
                leave_turn(w, 0);
                continue;
            }
            if (!w->prune_pending) /* else wait out the grace */
                ns = writer_prune_wait_ms(w) * 1000000;
            if (!atomic_load(&w->writable) &&
                ns > (int64_t)PROBE_INTERVAL_MS * 1000000)
                ns = (int64_t)PROBE_INTERVAL_MS * 1000000;
            clock_gettime(CLOCK_MONOTONIC, &ts);
            ts.tv_sec += ns / 1000000000;
            ts.tv_nsec += ns % 1000000000;
            if (ts.tv_nsec >= 1000000000) {
                ts.tv_sec++;
                ts.tv_nsec -= 1000000000;
            }
            /* an unwritable writer wakes up to probe (see writer_probe());
             * no submitter takes the turn while it is unwritable */
            if (pthread_cond_timedwait(&w->cv, &w->mu, &ts) == ETIMEDOUT &&
                !atomic_load(&w->writable) && !w->busy)
                break;
        }
        if (w->head == NULL && w->stopping)
            break;
        batch = last = w->head;
        if (batch != NULL) {
            while (last->next != NULL && n < w->cfg.max_batch) {
                last = last->next;
                n++;
            }
            w->head = last->next;
            if (w->head == NULL)
                w->tail = NULL;
            last->next = NULL;
            w->queued -= n;
        }
        w->busy = 1;
        pthread_mutex_unlock(&w->mu);

        if (batch != NULL)
            run_batch(w, batch, writer_batch_prune_rows(n), 1);
        else if (!atomic_load(&w->writable))
            writer_probe(w);
        pthread_mutex_lock(&w->mu);
        leave_turn(w, batch != NULL ? n : 0);
        if (batch == NULL)
            w->last_batch_ns = cq_mono_ns();
    }
    pthread_mutex_unlock(&w->mu);
    return NULL;
}

/* ---- public ---------------------------------------------------------------
 */

int cq_writer_start(cq_store *store, const cq_writer_config *cfg,
                    cq_writer **out)
{
    cq_writer *w;
    pthread_condattr_t ca;
    int64_t head = 0;
    int rc = CQ_ENOMEM;

    *out = NULL;
    w = calloc(1, sizeof *w);
    if (w == NULL)
        return CQ_ENOMEM;
    w->store = store;
    if (cfg != NULL)
        w->cfg = *cfg;
    if (w->cfg.idempotency_ttl_ms <= 0)
        w->cfg.idempotency_ttl_ms = 24LL * 3600 * 1000;
    if (w->cfg.max_batch <= 0)
        w->cfg.max_batch = 512;
    if (w->cfg.max_queue <= 0)
        w->cfg.max_queue = 16384;
    if (w->cfg.prune_interval_ms <= 0)
        w->cfg.prune_interval_ms = 1000;
    w->cache = cq_cache_new(w->cfg.cache_slots ? w->cfg.cache_slots : 4096);
    w->decision = cq_decision_new();
    if (w->cache == NULL || w->decision == NULL)
        goto fail;
    rc = cq_store_head_position(store, &head);
    if (rc != CQ_OK)
        goto fail;
    atomic_init(&w->head_position, head);
    atomic_init(&w->writable, 1);
    w->last_prune_ms = writer_mono_ms();
    w->prune_pending = 1; /* the first pass runs right at start */
    w->busy = 1;          /* the turn is the start hook's, then the thread's */
    w->solo = 1;

    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&w->cv, &ca);
    pthread_condattr_destroy(&ca);
    pthread_mutex_init(&w->mu, NULL);
    if (pthread_create(&w->thread, NULL, writer_main, w) != 0) {
        pthread_cond_destroy(&w->cv);
        pthread_mutex_destroy(&w->mu);
        rc = CQ_ENOMEM;
        goto fail;
    }
    *out = w;
    return CQ_OK;
fail:
    cq_decision_free(w->decision);
    cq_cache_free(w->cache);
    free(w);
    return rc;
}

static void reset_answer(cq_write_req *r)
{
    r->next = NULL;
    r->status = 0;
    r->response = NULL;
    r->problem = r->replayed = 0;
    r->version = r->position = 0;
}

int cq_writer_try_run(cq_writer *w, cq_write_req *r)
{
    pthread_mutex_lock(&w->mu);
    if (w->busy || w->head != NULL || w->stopping || !w->solo ||
        !atomic_load(&w->writable)) {
        pthread_mutex_unlock(&w->mu);
        return 0;
    }
    w->busy = 1;
    pthread_mutex_unlock(&w->mu);
    reset_answer(r);
    run_batch(w, r, writer_batch_prune_rows(1), 0);
    pthread_mutex_lock(&w->mu);
    leave_turn(w, 1);
    pthread_mutex_unlock(&w->mu);
    return 1;
}

int cq_writer_submit(cq_writer *w, cq_write_req *r)
{
    int rc = CQ_OK;

    reset_answer(r);
    pthread_mutex_lock(&w->mu);
    if (w->stopping)
        rc = CQ_ECLOSED;
    else if (w->queued >= w->cfg.max_queue)
        rc = CQ_EBUSY;
    else {
        if (w->tail != NULL)
            w->tail->next = r;
        else
            w->head = r;
        w->tail = r;
        w->queued++;
        pthread_cond_signal(&w->cv);
    }
    pthread_mutex_unlock(&w->mu);
    return rc;
}

int64_t cq_writer_head(cq_writer *w)
{
    return atomic_load(&w->head_position);
}

int cq_writer_writable(cq_writer *w, char *why, size_t cap)
{
    int ok = atomic_load(&w->writable);

    if (why != NULL && cap > 0) {
        pthread_mutex_lock(&w->mu);
        snprintf(why, cap, "%s", ok ? "" : w->why);
        pthread_mutex_unlock(&w->mu);
    }
    return ok;
}

void cq_writer_stop(cq_writer *w)
{
    int joined;

    if (w == NULL)
        return;
    pthread_mutex_lock(&w->mu);
    joined = w->stopping;
    w->stopping = 1;
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
    if (!joined)
        pthread_join(w->thread, NULL);
}

void cq_writer_free(cq_writer *w)
{
    if (w == NULL)
        return;
    cq_writer_stop(w);
    pthread_cond_destroy(&w->cv);
    pthread_mutex_destroy(&w->mu);
    cq_decision_free(w->decision);
    cq_cache_free(w->cache);
    free(w);
}