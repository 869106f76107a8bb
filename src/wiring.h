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
 * writer's transactions and tell e about every commit. `e` is borrowed and
 * must outlive the writer. */
cq_writer_hooks cq_wiring_writer_hooks(cq_engine *e);

#endif
