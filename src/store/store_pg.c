/*
 * store_pg.c -- the PostgreSQL event store's operations table: which
 * function serves each cq_store_* call (store.h). The backend's design,
 * its threads and locks, and which file holds what: store_pg_int.h; why
 * its positions are gap-free across nodes: src/store/README.md.
 */
#include "store/store_pg_int.h"

const cq_store_ops cq_store_pg_ops = {
    .name = "postgresql",
    .open = pgs_open,
    .close = pgs_close,
    .errmsg = pgs_errmsg,
    .exec_tx = pgs_exec_tx,
    .stream_version = pgs_stream_version,
    .append = pgs_append,
    .fold_stream = pgs_fold_stream,
    .write_head = pgs_write_head,
    .cmdlog_get = pgs_cmdlog_get,
    .cmdlog_put = pgs_cmdlog_put,
    .cmdlog_prune = pgs_cmdlog_prune,
    .read_stream = pgs_read_stream,
    .read_all = pgs_read_all,
    .head_position = pgs_head_position,
    .position_of = pgs_position_of,
    .recorded_at = pgs_recorded_at,
    .version_at = pgs_version_at,
    .write_rdb = pgs_write_rdb,
    .open_rdb = pgs_open_rdb,
    .wal_bytes = NULL, /* cq_store_wal_bytes: -1 */
};
