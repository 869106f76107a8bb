/*
 * strbuf.c -- growable strings for JSON texts (see strbuf.h).
 */
#include "base/strbuf.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int grow(cq_strbuf *b, size_t extra)
{
    size_t cap;
    char *p;

    if (b->oom)
        return 0;
    if (b->len + extra + 1 <= b->cap)
        return 1;
    cap = b->cap ? b->cap : 256;
    while (cap < b->len + extra + 1)
        cap *= 2;
    p = realloc(b->p, cap);
    if (p == NULL) {
        b->oom = 1;
        return 0;
    }
    b->p = p;
    b->cap = cap;
    return 1;
}

void cq_strbuf_add(cq_strbuf *b, const char *s, size_t n)
{
    if (!grow(b, n))
        return;
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

void cq_strbuf_puts(cq_strbuf *b, const char *s)
{
    cq_strbuf_add(b, s, strlen(s));
}

void cq_strbuf_int(cq_strbuf *b, int64_t v)
{
    char num[24];
    int n = snprintf(num, sizeof num, "%" PRId64, v);
    cq_strbuf_add(b, num, (size_t)n);
}

void cq_strbuf_json_string(cq_strbuf *b, const char *s)
{
    static const char hex[] = "0123456789abcdef";
    const char *run = s;

    cq_strbuf_add(b, "\"", 1);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        char esc[6] = {'\\', 'u', '0', '0', 0, 0};
        if (c >= 0x20 && c != '"' && c != '\\')
            continue;
        cq_strbuf_add(b, run, (size_t)(s - run));
        if (c == '"' || c == '\\') {
            esc[1] = (char)c;
            cq_strbuf_add(b, esc, 2);
        } else {
            esc[4] = hex[c >> 4];
            esc[5] = hex[c & 0xf];
            cq_strbuf_add(b, esc, 6);
        }
        run = s + 1;
    }
    cq_strbuf_add(b, run, (size_t)(s - run));
    cq_strbuf_add(b, "\"", 1);
}

void cq_strbuf_printf(cq_strbuf *b, const char *fmt, ...)
{
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0) {
        b->oom = 1;
        return;
    }
    if (!grow(b, (size_t)n))
        return;
    va_start(ap, fmt);
    vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

char *cq_strbuf_take(cq_strbuf *b)
{
    char *p = b->oom ? NULL : b->p;

    if (p == NULL && !b->oom) {
        p = strdup(""); /* nothing was added */
    } else if (b->oom) {
        free(b->p);
    }
    b->p = NULL;
    b->len = b->cap = 0;
    b->oom = 0;
    return p;
}

void cq_strbuf_reset(cq_strbuf *b)
{
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
    b->oom = 0;
}
