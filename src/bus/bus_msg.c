/*
 * bus_msg.c -- the bus's message format: subjects, header values, message
 * ids (bus.h). Pure functions, any thread.
 */
#include <jansson.h>
#include <stdio.h>
#include <string.h>

#include "bus/bus.h"

static const char hex[] = "0123456789ABCDEF";

/* Append text[0..n) to buf at *at as a subject token. */
static int put_token(const char *text, size_t n, char *buf, size_t cap,
                     size_t *at)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)text[i];
        int keep = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                   (c >= '0' && c <= '9') || c == '-' || c == '_';
        size_t need = keep ? 1 : 3;
        if (*at + need >= cap)
            return CQ_EINVAL;
        if (keep) {
            buf[(*at)++] = (char)c;
        } else {
            buf[(*at)++] = '%';
            buf[(*at)++] = hex[c >> 4];
            buf[(*at)++] = hex[c & 15];
        }
    }
    buf[*at] = '\0';
    return CQ_OK;
}

int cq_bus_subject(const char *prefix, const char *stream_id, char *buf,
                   size_t cap)
{
    size_t at, plen, clen;
    const char *dash;

    if (prefix == NULL || stream_id == NULL || stream_id[0] == '\0' || cap == 0)
        return CQ_EINVAL;
    plen = strlen(prefix);
    if (plen + 2 >= cap)
        return CQ_EINVAL;
    memcpy(buf, prefix, plen);
    buf[plen] = '.';
    at = plen + 1;
    dash = strchr(stream_id, '-');
    clen = dash != NULL ? (size_t)(dash - stream_id) : strlen(stream_id);
    if (clen == 0) { /* "-x": an empty category would be an empty token */
        if (at + 2 >= cap)
            return CQ_EINVAL;
        buf[at++] = '_';
    } else if (put_token(stream_id, clen, buf, cap, &at) != CQ_OK) {
        return CQ_EINVAL;
    }
    if (at + 2 >= cap)
        return CQ_EINVAL;
    buf[at++] = '.';
    return put_token(stream_id, strlen(stream_id), buf, cap, &at);
}

int cq_bus_header_value(const char *text, char *buf, size_t cap)
{
    size_t at = 0;

    if (text == NULL || cap == 0)
        return CQ_EINVAL;
    for (const unsigned char *p = (const unsigned char *)text; *p; p++) {
        int esc = *p < 0x20 || *p == 0x7f || *p == '%';
        if (at + (esc ? 3 : 1) >= cap)
            return CQ_EINVAL;
        if (esc) {
            buf[at++] = '%';
            buf[at++] = hex[*p >> 4];
            buf[at++] = hex[*p & 15];
        } else {
            buf[at++] = (char)*p;
        }
    }
    buf[at] = '\0';
    return CQ_OK;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

int cq_bus_unescape(char *text)
{
    char *w = text;

    for (const char *r = text; *r; r++) {
        if (*r != '%') {
            *w++ = *r;
            continue;
        }
        int hi = hexval(r[1]), lo = hi < 0 ? -1 : hexval(r[2]);
        if (hi < 0 || lo < 0 || (hi == 0 && lo == 0))
            return CQ_EINVAL;
        *w++ = (char)(hi * 16 + lo);
        r += 2;
    }
    *w = '\0';
    return CQ_OK;
}

void cq_bus_msg_id(const cq_stored_event *ev, char *buf, size_t cap)
{
    json_t *m = ev->metadata != NULL
                    ? json_loads(ev->metadata, JSON_REJECT_DUPLICATES, NULL)
                    : NULL;
    const char *id = json_string_value(json_object_get(m, "event_id"));
    int ok =
        id != NULL && id[0] != '\0' && strlen(id) <= 64 && strlen(id) < cap;

    for (const char *p = id; ok && *p; p++)
        ok = *p > 0x20 && *p < 0x7f;
    if (ok)
        snprintf(buf, cap, "%s", id);
    else
        snprintf(buf, cap, "cqrs-pos-%lld", (long long)ev->position);
    json_decref(m);
}
