/*
 * strbuf.h -- a growable string for building JSON texts on hot paths.
 *
 * The writer builds the same few small documents for every command (event
 * metadata, the 202 answer); printing them directly is several times
 * cheaper than building a jansson tree and dumping it. Out of memory is
 * sticky: later appends do nothing and cq_strbuf_take() returns NULL, so
 * callers check once at the end.
 *
 * A cq_strbuf is owned by one thread at a time.
 */
#ifndef CQ_STRBUF_H
#define CQ_STRBUF_H

#include <stddef.h>
#include <stdint.h>

typedef struct cq_strbuf {
    char *p; /* NUL-terminated when len > 0 */
    size_t len, cap;
    int oom;
} cq_strbuf;

#define CQ_STRBUF_INIT                                                         \
    {                                                                          \
        NULL, 0, 0, 0                                                          \
    }

/* Every function below takes b (the caller's, not NULL) and returns
 * nothing: a failed allocation sets b->oom, after which appends do
 * nothing and cq_strbuf_take() returns NULL. Strings passed in are
 * borrowed for the call (copied). */

/* Append n bytes of s. */
void cq_strbuf_add(cq_strbuf *b, const char *s, size_t n);

/* Append a NUL-terminated string as it is. */
void cq_strbuf_puts(cq_strbuf *b, const char *s);

/* Append a decimal integer. */
void cq_strbuf_int(cq_strbuf *b, int64_t v);

/* Append s (valid UTF-8, NUL-terminated: the caller checks, e.g. with
 * cq_utf8_valid) as a quoted JSON string, escaping quotes, backslashes and
 * control characters. */
void cq_strbuf_json_string(cq_strbuf *b, const char *s);

/* Append printf(fmt, ...)'s text; an encoding error counts as out of
 * memory (sticky, as above). */
void cq_strbuf_printf(cq_strbuf *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* The built string (malloc'd; the caller frees), or NULL if memory ran out
 * at any point. The buffer is empty afterwards. */
char *cq_strbuf_take(cq_strbuf *b);

/* Free the contents; the buffer is empty afterwards. */
void cq_strbuf_reset(cq_strbuf *b);

#endif
