/*
 * params.c -- query parameters: every route names the ones it takes
 * (unknown or repeated ones are 400 bad-parameter), and integers are
 * strict decimals within the route's bounds.
 *
 * Threads: any MHD thread, for the request it is calling back for; no
 * shared state.
 */
#include <microhttpd.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "base/base.h"
#include "http/http.h"

enum MHD_Result cq_http_bad_param(struct MHD_Connection *c, const char *name,
                                  const char *fmt, ...)
{
    char msg[256];
    va_list ap;
    json_t *errors;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    errors = json_pack("[{s:s,s:s}]", "field", name, "message", msg);
    if (errors == NULL) /* a name that is not UTF-8 */
        errors = json_pack("[{s:s,s:s}]", "field", "?", "message", msg);
    return cq_http_send_problem(c, 400, "bad-parameter", errors,
                                "query parameter %.64s %s", name, msg);
}

typedef struct param_check {
    const char *const *allowed;
    unsigned seen; /* bit i: allowed[i] seen */
    char bad[160]; /* first problem, "" if none */
    char key[72];  /* the parameter it is about */
} param_check;

static enum MHD_Result check_param(void *cls, enum MHD_ValueKind kind,
                                   const char *key, const char *value)
{
    param_check *pc = cls;
    unsigned i;

    (void)kind;
    (void)value;
    for (i = 0; pc->allowed[i] != NULL; i++) {
        if (strcmp(key, pc->allowed[i]) == 0) {
            if (pc->seen & (1u << i)) {
                snprintf(pc->key, sizeof pc->key, "%.64s", key);
                snprintf(pc->bad, sizeof pc->bad, "is given more than once");
                return MHD_NO;
            }
            pc->seen |= 1u << i;
            return MHD_YES;
        }
    }
    snprintf(pc->key, sizeof pc->key, "%.64s", key);
    snprintf(pc->bad, sizeof pc->bad, "is not a parameter of this resource");
    return MHD_NO;
}

/* 1 if every query parameter is in `allowed` (NULL-terminated) and none is
 * repeated; else answers 400 and returns 0. */
int cq_http_params_ok(request *q, const char *const *allowed,
                      enum MHD_Result *ret)
{
    param_check pc = {allowed, 0, "", ""};

    MHD_get_connection_values(q->conn, MHD_GET_ARGUMENT_KIND, check_param, &pc);
    if (pc.bad[0] == '\0')
        return 1;
    *ret = cq_http_bad_param(q->conn, pc.key, "%s", pc.bad);
    return 0;
}

/* Parse a non-negative decimal integer with no sign, spaces or excess. */
int cq_http_parse_int(const char *s, int64_t *out)
{
    int64_t v = 0;

    if (s == NULL || *s == '\0')
        return CQ_EINVAL;
    for (; *s; s++) {
        if (*s < '0' || *s > '9')
            return CQ_EINVAL;
        if (v > (INT64_MAX - (*s - '0')) / 10)
            return CQ_EINVAL;
        v = v * 10 + (*s - '0');
    }
    *out = v;
    return CQ_OK;
}

/* Query parameter `name` as an integer in [min, max], or `def` if absent.
 * On a bad value answers 400 and returns 0. */
int cq_http_param_int(request *q, const char *name, int64_t def, int64_t min,
                      int64_t max, int64_t *out, enum MHD_Result *ret)
{
    const char *s =
        MHD_lookup_connection_value(q->conn, MHD_GET_ARGUMENT_KIND, name);
    int64_t v;

    if (s == NULL) {
        *out = def;
        return 1;
    }
    if (cq_http_parse_int(s, &v) != CQ_OK || v < min || v > max) {
        *ret = cq_http_bad_param(q->conn, name,
                                 "must be an integer from "
                                 "%lld to %lld",
                                 (long long)min, (long long)max);
        return 0;
    }
    *out = v;
    return 1;
}
