/*
 * verify_int.h -- what the two files of `cqrsd verify` share: verify.c
 * (loading projections, then per projection: the snapshot, the checkpoint,
 * the replay into a scratch database) and verify_table.c (one table of the
 * replay compared with the live one, row by row, and its differences
 * written). Not an interface: see verify.h.
 *
 * Thread: everything runs on the caller's thread; no shared state.
 */
#ifndef CQ_PROJECTION_VERIFY_INT_H
#define CQ_PROJECTION_VERIFY_INT_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "cqrs/decider.h"
#include "projection/verify.h"
#include "store/rdb.h"
#include "store/store.h"

/* What one run works with. */
typedef struct run {
    const char *dir;
    FILE *out;
    cq_rdb *events;  /* DIR/events.db, read-only: inline tables */
    cq_store *store; /* the same, read-only: the events to replay */
    cq_rdb *reads;   /* DIR/read.db, read-only; NULL if it does not exist */
    int reads_tried;
    const cq_domain *domain;
    char *err;
    size_t errcap;
} run;

/* Compare `table` in live with the replay in scratch; adds to *diffs and
 * *rows (rows of the replay). CQ_OK (whatever was found), or CQ_EIO /
 * CQ_ENOMEM when a side cannot be read. */
int verify_compare_table(run *r, const char *proj, cq_rdb *live,
                         cq_rdb *scratch, const char *table, int64_t *diffs,
                         int64_t *rows);

#endif
