/*
 * writer_upkeep.c -- what the writer does besides requests: knowing
 * whether the store takes writes, and pruning expired idempotency keys
 * from the command log at a pace that never holds up a command.
 *
 * Whether the store takes writes (cq_writer_writable, for /readyz and the
 * metrics) is what the last transaction showed: a failed batch makes it
 * unwritable (a full disk, an I/O error), the next commit that succeeds
 * writable again. So that an idle server (which a load balancer may have
 * stopped sending writes to because it was not ready) finds out that the
 * disk has room again, the writer, while unwritable and idle, commits a
 * probe every PROBE_INTERVAL_MS: a command-log entry under a key no client
 * can send (it has spaces), already expired, so it is never read and the
 * next prune deletes it.
 *
 * Pruning the command log: a pass starts every prune_interval_ms (1 s: keys
 * are deleted about as fast as they expire, not in a burst once a minute;
 * a pass that finds nothing is one transaction that writes nothing) and
 * deletes expired keys in steps, oldest first.
 *
 * While requests come, each batch runs one step inside its own
 * transaction, just before its COMMIT: the deletion rides on the fsync the
 * batch pays anyway. The step deletes PRUNE_PER_REQUEST keys per request
 * of the batch, at most CHUNK (or n, for a batch of n > CHUNK requests),
 * never fewer than n: at least as many keys as the batch could have added,
 * so the pass keeps up under load, when the writer is never idle; and as
 * much work per command whether commands come in few large batches or many
 * small ones (a fixed step per batch would charge a batch of one request
 * what it charges a batch of four).
 *
 * While nothing is queued, steps of CHUNK run one after the other, each a
 * short transaction of its own, looking at the queue in between. Right
 * after a batch, though, an idle step first waits PRUNE_GRACE_NS for
 * requests: the submitters just answered are about to send their next
 * one, which should go into a batch rather than wait behind a step that
 * pays an fsync of its own.
 *
 * So a command never waits behind more than one step, and a step costs no
 * fsync of its own unless the writer is idle. An expired key not yet
 * pruned is already absent to cmdlog_get, so a late pass costs disk space,
 * never a wrong replay.
 *
 * Threads and locks: everything here runs on the thread holding the
 * writer's turn (writer_int.h: the writer thread, or a submitter running
 * its request in cq_writer_try_run), which alone writes `writable`
 * (atomic, read by any thread) and the prune fields (last_prune_ms,
 * prune_pending); `why` is written under `mu`. writer_prune_start_if_due
 * touches the turn's fields and never the store, so the writer thread may
 * call it while it holds `mu` with the turn free (nobody can take it
 * then); the prune steps and the probe run without `mu`, holding the
 * turn.
 */
#include "command/writer_int.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>

#include "base/base.h"

/* Record whether the last transaction committed (writer thread); log the
 * changes only, not every failed batch. */
void writer_set_writable(cq_writer *w, int ok, const char *why)
{
    int was = atomic_load(&w->writable);

    if (!ok) {
        pthread_mutex_lock(&w->mu);
        snprintf(w->why, sizeof w->why, "%s", why);
        pthread_mutex_unlock(&w->mu);
    }
    atomic_store(&w->writable, ok);
    if (was && !ok)
        fprintf(stderr, "cqrsd: the event store refuses writes: %s\n", why);
    else if (!was && ok)
        fprintf(stderr, "cqrsd: the event store accepts writes again\n");
}

/* While unwritable and idle: try one small real write (see the file
 * comment). */
void writer_probe(cq_writer *w)
{
    int64_t now = cq_now_ms();
    cq_cmdlog_entry e = {PROBE_KEY, "", 0, "", now, now};
    int rc = cq_store_begin(w->store);

    if (rc == CQ_OK)
        rc = cq_store_cmdlog_put(w->store, &e);
    if (rc == CQ_OK)
        rc = cq_store_commit(w->store);
    if (rc == CQ_OK) {
        writer_set_writable(w, 1, NULL);
    } else {
        char msg[512];
        snprintf(msg, sizeof msg, "%s", cq_store_errmsg(w->store));
        cq_store_rollback(w->store);
        writer_set_writable(w, 0, msg);
    }
}

/* The clock the prune pacing counts in. */
int64_t writer_mono_ms(void)
{
    return (int64_t)(cq_mono_ns() / 1000000);
}

void writer_prune_start_if_due(cq_writer *w, int64_t now)
{
    if (!w->prune_pending &&
        now - w->last_prune_ms >= w->cfg.prune_interval_ms) {
        w->prune_pending = 1;
        w->last_prune_ms = now;
    }
}

static void prune_failed(cq_writer *w, const char *msg)
{
    fprintf(stderr, "cqrsd: pruning the command log failed: %s\n", msg);
    w->prune_pending = 0; /* the next pass tries again */
}

/* One idle step, a transaction of its own, of at most `rows` keys; ends
 * the pass once no expired key is left (or the store failed). */
void writer_prune_step(cq_writer *w, int rows)
{
    int64_t deleted = 0;

    if (cq_store_cmdlog_prune(w->store, cq_now_ms(), rows, &deleted) != CQ_OK)
        prune_failed(w, cq_store_errmsg(w->store));
    else if (deleted < rows)
        w->prune_pending = 0;
}

/* One step inside the batch's open transaction, under a savepoint of its
 * own: a failing step (SQLITE_FULL, say) is logged and undone alone, and
 * the batch commits its requests. *deleted gets how many keys the step
 * deleted (they are gone once the batch commits). CQ_OK, or CQ_EIO if the
 * transaction itself is lost: the batch must be rolled back (503, as for
 * any store failure), with the reason in msg. */
int writer_prune_in_batch(cq_writer *w, int64_t now, int rows, int64_t *deleted,
                          char *msg, size_t msgcap)
{
    char why[512];

    *deleted = 0;
    if (cq_store_savepoint(w->store) != CQ_OK)
        return CQ_EIO;
    if (cq_store_cmdlog_prune(w->store, now, rows, deleted) == CQ_OK)
        return cq_store_release(w->store) == CQ_OK ? CQ_OK : CQ_EIO;
    *deleted = 0;
    snprintf(why, sizeof why, "%s", cq_store_errmsg(w->store));
    prune_failed(w, why);
    if (cq_store_rollback_savepoint(w->store) == CQ_OK)
        return CQ_OK;
    snprintf(msg, msgcap, "%s", why);
    return CQ_EIO;
}

/* Keys the step in a batch of n requests may delete: PER_REQUEST per
 * request, at most CHUNK or n if n is more, and at least n. */
int writer_batch_prune_rows(int n)
{
    int64_t rows = (int64_t)n * CQ_WRITER_PRUNE_PER_REQUEST;
    int most = n > CQ_WRITER_PRUNE_CHUNK ? n : CQ_WRITER_PRUNE_CHUNK;

    return rows < most ? (int)rows : most;
}

/* Milliseconds until the next pass is due, for the idle wait. */
int64_t writer_prune_wait_ms(const cq_writer *w)
{
    int64_t ms = w->last_prune_ms + w->cfg.prune_interval_ms - writer_mono_ms();

    if (ms < 1)
        return 1;
    return ms > w->cfg.prune_interval_ms ? w->cfg.prune_interval_ms : ms;
}
