/*
 * problem.c -- building problem+json documents (see problem.h).
 */
#include "base/problem.h"

#include "base/base.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *cq_http_reason(int status)
{
    switch (status) {
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 304: return "Not Modified";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 409: return "Conflict";
    case 412: return "Precondition Failed";
    case 413: return "Content Too Large";
    case 415: return "Unsupported Media Type";
    case 422: return "Unprocessable Content";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 503: return "Service Unavailable";
    default: return "Error";
    }
}

char *cq_problem_text(int status, const char *slug, json_t *errors,
                      const char *fmt, ...)
{
    char detail[1024];
    char type[128];
    json_t *doc = NULL;
    char *text = NULL;
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(detail, sizeof detail, fmt, ap);
    va_end(ap);
    snprintf(type, sizeof type, "urn:cqrsd:problem:%s", slug);
    /* Details may quote client bytes, and truncation may split a UTF-8
     * sequence; JSON strings must be valid UTF-8, so degrade to ASCII. */
    if (!cq_utf8_valid(detail, strlen(detail))) {
        for (char *p = detail; *p; p++)
            if ((unsigned char)*p >= 0x80)
                *p = '?';
    }

    doc = json_pack("{s:s, s:s, s:i, s:s}", "type", type, "title",
                    cq_http_reason(status), "status", status, "detail", detail);
    if (doc == NULL)
        goto done;
    if (errors != NULL) {
        if (json_object_set_new(doc, "errors", errors) != 0) {
            errors = NULL; /* consumed even on failure */
            goto done;
        }
        errors = NULL;
    }
    text = json_dumps(doc, JSON_COMPACT);
done:
    json_decref(errors);
    json_decref(doc);
    return text;
}
