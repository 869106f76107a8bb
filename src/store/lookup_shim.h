/*
 * lookup_shim.h -- TEMPORARY, for src/projection/lookup.c alone, which
 * CMakeLists.txt force-includes it into.
 *
 * lookup.c still runs its own SQL on the event store's tables with
 * sqlite3 calls, on the engine's events.db pool, until those lookups
 * become operations of store.h (issue 10, being done apart). Meanwhile
 * the engine's connections and statements are the read-store interface's
 * (store/rdb.h); these two macros hand lookup.c the SQLite handles behind
 * them, so that it compiles unchanged. Delete this file and its line in
 * CMakeLists.txt when lookup.c no longer calls sqlite3_*.
 */
#ifndef CQ_STORE_LOOKUP_SHIM_H
#define CQ_STORE_LOOKUP_SHIM_H

#include <sqlite3.h>

#include "projection/engine_int.h"

/* the statement's SQLite handle (the SQLite backend's, rdb_sqlite.c) */
#define cq_exec_stmt(x, sql, err, errcap)                                      \
    ((sqlite3_stmt *)cq_rstmt_impl(cq_exec_stmt((x), (sql), (err), (errcap))))

/* lookup.c asks it of a pool's connection, a cq_rdb */
#define sqlite3_errmsg(db) cq_rdb_errmsg(db)

#endif
