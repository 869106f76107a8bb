/*
 * declared_query.c -- the helpers for running a declared named query:
 * finding it by name, checking a request's value against its @param, and
 * expanding its @stream template for strong reads.
 *
 * Threads: no state; a parsed cq_declared is only read.
 */
#include "projection/declared_int.h"

#include "base/base.h"
#include "cqrs/cqrs.h"

/* See declared.h. */
const cq_decl_query *cq_declared_find_query(const cq_declared *d,
                                            const char *name)
{
    for (size_t i = 0; d != NULL && i < d->nqueries; i++)
        if (strcmp(d->queries[i].name, name) == 0)
            return &d->queries[i];
    return NULL;
}

/* See declared.h. */
int cq_declared_param_check(const cq_decl_param *p, const char *value,
                            size_t len, int64_t *ival)
{
    int64_t v, chars = 0;

    switch (p->type) {
    case CQ_PARAM_ID:
        if (len < 1 || len > 64)
            return CQ_EINVAL;
        for (size_t i = 0; i < len; i++)
            if (!(is_ident(value[i]) || value[i] == '-'))
                return CQ_EINVAL;
        return CQ_OK;
    case CQ_PARAM_TEXT:
        if (!cq_utf8_valid(value, len))
            return CQ_EINVAL;
        for (size_t i = 0; i < len; i++) {
            unsigned char c = (unsigned char)value[i];
            if (c < 0x20 || c == 0x7f)
                return CQ_EINVAL;
            if ((c & 0xc0) != 0x80)
                chars++;
        }
        return chars >= p->min && chars <= p->max ? CQ_OK : CQ_EINVAL;
    case CQ_PARAM_INT:
        if (decl_parse_int64(value, len, &v) < 0 || v < p->min || v > p->max)
            return CQ_EINVAL;
        if (ival != NULL)
            *ival = v;
        return CQ_OK;
    }
    return CQ_EINVAL;
}

/* See declared.h. */
int cq_declared_stream(const cq_decl_query *q, const char *const *values,
                       char *buf, size_t cap)
{
    size_t n = 0;
    size_t limit = cap < CQ_DECL_MAX_STREAM + 1 ? cap : CQ_DECL_MAX_STREAM + 1;

    if (q->stream == NULL || cap == 0)
        return CQ_EINVAL;
    for (const char *s = q->stream; *s != '\0';) {
        const char *piece = s;
        size_t len = 1;

        if (*s == '{') {
            const char *close = strchr(s, '}');
            size_t i = 0;
            if (close == NULL)
                return CQ_EINVAL;
            while (i < q->nparams &&
                   !same(q->params[i].name, s + 1, (size_t)(close - s - 1)))
                i++;
            if (i == q->nparams || values[i] == NULL)
                return CQ_EINVAL;
            piece = values[i];
            len = strlen(piece);
            s = close + 1;
        } else {
            s++;
        }
        if (len >= limit - n)
            return CQ_EINVAL;
        memcpy(buf + n, piece, len);
        n += len;
    }
    buf[n] = '\0';
    return CQ_OK;
}
