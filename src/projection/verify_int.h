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

#include "projection/verify.h"
#include "store/rdb.h"

/* Compare `table` in live (read inside the caller's read transaction)
 * with the replay in scratch, step 4 of verify.c: each difference is one
 * line on `out`, prefixed "proj/table: " (at most CQ_VERIFY_MAX_LINES,
 * then a count). Adds the differences to *diffs and the replay's rows to
 * *rows. CQ_OK (whatever was found), or CQ_EIO / CQ_ENOMEM when a side
 * cannot be read, with the reason in err. All arguments borrowed. */
int verify_compare_table(FILE *out, const char *proj, cq_rdb *live,
                         cq_rdb *scratch, const char *table, int64_t *diffs,
                         int64_t *rows, char *err, size_t errcap);

#endif
