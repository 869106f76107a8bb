/*
 * wiring.c -- the writer's hooks, built from the projection engine's
 * inline functions (see wiring.h). Runs on the writer thread.
 */
#include "wiring.h"

#include <stdlib.h>

#include "bus/bus.h"

static int apply_inline(void *arg, const cq_stored_event *events,
                        const json_t *const *data, size_t n, char *err,
                        size_t errcap)
{
    return cq_engine_apply_inline(arg, events, data, n, err, errcap);
}

static int before_commit(void *arg, int64_t head)
{
    return cq_engine_before_commit(arg, head);
}

/* The streams the batch's accepted requests wrote, for the stream waiters. */
static void committed(void *arg, int64_t head, const cq_write_req *batch)
{
    cq_stream_applied *streams = NULL;
    size_t n = 0, cap = 0;

    for (const cq_write_req *r = batch; r != NULL; r = r->next)
        cap += r->status >= 200 && r->status < 300 && r->version > 0;
    if (cap > 0 && (streams = malloc(cap * sizeof *streams)) == NULL) {
        cq_engine_committed(arg, head, NULL, 0, 1); /* all look again */
        return;
    }
    for (const cq_write_req *r = batch; r != NULL && n < cap; r = r->next)
        if (r->status >= 200 && r->status < 300 && r->version > 0)
            streams[n++] = (cq_stream_applied){r->stream_id, r->version};
    cq_engine_committed(arg, head, streams, n, 0);
    free(streams);
}

/* Before the writer's first batch: the inline projections a server
 * started with defer_inline catch up (cq_engine_catch_up logs how it
 * ended; a projection it could not finish refuses commands). */
static void start(void *arg)
{
    (void)cq_engine_catch_up(arg);
}

cq_writer_hooks cq_wiring_writer_hooks(cq_engine *e)
{
    cq_writer_hooks h = {apply_inline, before_commit, committed, e, start};
    return h;
}

/* The cq_wiring variants: the engine's hooks, and a wake-up for the
 * relay once the batch is durable. */
static int apply_inline_w(void *arg, const cq_stored_event *events,
                          const json_t *const *data, size_t n, char *err,
                          size_t errcap)
{
    return apply_inline(((cq_wiring *)arg)->engine, events, data, n, err,
                        errcap);
}

static int before_commit_w(void *arg, int64_t head)
{
    return before_commit(((cq_wiring *)arg)->engine, head);
}

static void committed_w(void *arg, int64_t head, const cq_write_req *batch)
{
    cq_wiring *w = arg;

    committed(w->engine, head, batch);
    cq_relay_wake(w->relay); /* accepts NULL */
}

static void start_w(void *arg)
{
    start(((cq_wiring *)arg)->engine);
}

cq_writer_hooks cq_wiring_writer_hooks_bus(cq_wiring *w)
{
    cq_writer_hooks h = {apply_inline_w, before_commit_w, committed_w, w,
                         start_w};
    return h;
}
