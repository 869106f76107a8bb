/*
 * store_sqlite.c -- the SQLite event store's operations table: which
 * function serves each cq_store_* call (store.h). The backend's design,
 * its threads and locks, and which file holds what: store_sqlite_int.h.
 */
#include "store/store_sqlite_int.h"

const cq_store_ops cq_store_sqlite_ops = {
    .name = "sqlite",
    .open = sq_open,
    .close = sq_close,
    .errmsg = sq_errmsg,
    .exec_tx = sq_exec_tx,
    .stream_version = sq_stream_version,
    .append = sq_append,
    .fold_stream = sq_fold_stream,
    .write_head = sq_write_head,
    .cmdlog_get = sq_cmdlog_get,
    .cmdlog_put = sq_cmdlog_put,
    .cmdlog_prune = sq_cmdlog_prune,
    .read_stream = sq_read_stream,
    .read_all = sq_read_all,
    .head_position = sq_head_position,
    .position_of = sq_position_of,
    .recorded_at = sq_recorded_at,
    .version_at = sq_version_at,
    .write_rdb = sq_write_rdb,
    .open_rdb = sq_open_rdb,
    .wal_bytes = sq_wal_bytes,
};
