/*
 * wiring.h -- joins the write side to the projection engine. The writer
 * (src/command) and the engine (src/projection) know nothing of each
 * other; the application builds the writer's hooks from the engine here.
 */
#ifndef CQ_WIRING_H
#define CQ_WIRING_H

#include "command/writer.h"
#include "projection/engine.h"

/* Hooks for cq_writer_config.hooks that run e's inline projections in the
 * writer's transactions and tell e about every commit (see the
 * cq_engine_apply_inline family in engine.h for what each returns). `e`
 * is borrowed and must outlive the writer. Cannot fail (no allocation;
 * the `committed` hook allocates per batch and, out of memory, wakes
 * every stream waiter instead of those of the batch's streams). Call on
 * the thread that starts the writer, before cq_writer_start; the hooks
 * then run on the writer thread. The start hook runs cq_engine_catch_up
 * (inline projections an engine with defer_inline left behind the head)
 * before the writer's first batch. */
cq_writer_hooks cq_wiring_writer_hooks(cq_engine *e);

/* The same hooks, which also wake the in-process relay (bus/bus.h) after
 * each commit (`serve --bus`). w and what it points to are borrowed and
 * must outlive the writer; w->relay may be NULL. */
struct cq_relay;
typedef struct cq_wiring {
    cq_engine *engine;
    struct cq_relay *relay;
} cq_wiring;
cq_writer_hooks cq_wiring_writer_hooks_bus(cq_wiring *w);

#endif
