/*
 * query_int.h -- what the files of src/query share. Not an interface:
 * see query.h.
 */
#ifndef CQ_QUERY_INT_H
#define CQ_QUERY_INT_H

#include <jansson.h>

#include "projection/engine.h"

/* Run q on x and shape its answer (see cq_decl_result) into *data (a new
 * reference; NULL for a CQ_RESULT_ONE query that found no row). CQ_OK,
 * CQ_EIO, CQ_ENOMEM. */
int cq_query_shape(cq_exec *x, const cq_decl_query *q,
                   const char *const *values, json_t **data, char *err,
                   size_t errcap);

#endif
