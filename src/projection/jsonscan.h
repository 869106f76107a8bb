/*
 * jsonscan.h -- a quick look at an event's data text without building it
 * in jansson: the members of the top-level object and where their values
 * are, for the handler parameters that name one of them (`:data.order_id`).
 *
 * The scanner is a strict subset of jansson's decoder as the event decoder
 * runs it (json_loads with JSON_REJECT_DUPLICATES, domain/decode.c): it
 * says yes only for a text that jansson reads as an object, and then each
 * member it lists has the value jansson would give it. Anything it is not
 * sure of (escapes, bytes outside printable ASCII, numbers other than
 * plain integers of at most 18 digits, deep nesting, many members) makes
 * it say no, and the caller decodes with jansson as before, which also
 * decides whether the text is JSON at all. So a text is either accepted by
 * both or decided by jansson alone: no event reads differently.
 *
 * Threads: no state; reads its arguments only.
 */
#ifndef CQ_PROJECTION_JSONSCAN_H
#define CQ_PROJECTION_JSONSCAN_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#define CQ_SCAN_MEMBERS 16 /* more top-level members: not scanned */

typedef enum cq_scan_kind {
    CQ_SCAN_NULL,
    CQ_SCAN_INT,    /* integers, and true (1) / false (0) */
    CQ_SCAN_STRING, /* printable ASCII, no escapes: the bytes themselves */
    CQ_SCAN_NESTED  /* an object or an array */
} cq_scan_kind;

typedef struct cq_scan_member {
    const char *key; /* in the text, keylen bytes (no escapes) */
    size_t keylen;
    cq_scan_kind kind;
    const char *str; /* CQ_SCAN_STRING: in the text, len bytes */
    size_t len;
    int64_t i; /* CQ_SCAN_INT */
} cq_scan_member;

typedef struct cq_scan {
    cq_scan_member m[CQ_SCAN_MEMBERS];
    int n;
} cq_scan;

/* Scan the NUL-terminated text (read up to its NUL, as json_loads does).
 * 1: it is a JSON object jansson accepts, out lists its members (pointers
 * into text); 0: not sure, decode it with jansson. */
int cq_json_scan(const char *text, cq_scan *out);

/* The document of a text cq_json_scan accepted, as jansson would have
 * decoded it (same values, members in the same order), built without
 * jansson's lexer: a new reference, or NULL when out of memory. Only for
 * texts the scan accepted. */
json_t *cq_json_build(const char *text);

/* The member named key[0..keylen) of s, or NULL if there is none. */
const cq_scan_member *cq_scan_find(const cq_scan *s, const char *key,
                                   size_t keylen);

#endif
