/*
 * static.h -- the static files served under /ui/ (static.c): the
 * operations page, the orders demo and the JavaScript client. They are
 * compiled into the library (cq_embed in CMakeLists.txt, from ui/ and
 * clients/js/), so a bare cqrsd binary serves them with nothing beside
 * it and nothing from the network: the pages work offline.
 */
#ifndef CQ_HTTP_STATIC_H
#define CQ_HTTP_STATIC_H

#include "http/http.h"

/* The embedded files (cq_http_file, http.h: a name relative to /ui/, the
 * bytes, NUL-ended, the NUL not counted in len); each table ends with
 * {NULL, NULL, 0}. Static storage; read-only; any thread. */
extern const cq_http_file cq_ui_files[]; /* ui/ */
extern const cq_http_file cq_js_files[]; /* clients/js/ */

/* The file that answers `path` (what follows "/ui/" in the URL, borrowed),
 * or NULL. "" is index.html and a name without an extension is NAME.html
 * ("orders" -> orders.html). Only names in the tables are found: nothing
 * is read from the disk, so no path can reach outside them. Any thread. */
const cq_http_file *cq_static_find(const char *path);

/* The Content-Type for a file name (borrowed, static):
 * text/html, text/javascript, text/css, image/svg+xml, application/json
 * (all with charset=utf-8 where textual), else application/octet-stream. */
const char *cq_static_type(const char *name);

/* The strong ETag of f, "\"<16 hex digits>\"" (FNV-1a 64 of its bytes),
 * into out. Any thread. */
void cq_static_etag(const cq_http_file *f, char out[24]);

#endif
