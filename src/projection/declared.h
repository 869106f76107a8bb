/*
 * declared.h -- declared projections and queries: the parser of `.sql`
 * files (table DDL, statements per event type, named queries) and the
 * small helpers the executors use to bind values to its statements.
 *
 * The format is described for users in docs/declared-sql.md. In short:
 * directives live in comment lines `-- @name args`; everything else is SQL
 * split on `;`. Named parameters (`:data.order_id`, `:order_id`) are
 * rewritten for each backend, so a statement is stored twice:
 *
 *   | backend    | placeholder | example                                 |
 *   |------------|-------------|-----------------------------------------|
 *   | SQLite     | ?N          | ... VALUES (?1, ?2) ... WHERE id = ?1   |
 *   | PostgreSQL | $N          | ... VALUES ($1, $2) ... WHERE id = $1   |
 *
 * N numbers the distinct parameters of one statement by first appearance;
 * params[N-1] is the name bound to N (without the colon). In the
 * PostgreSQL text the type names INTEGER and INT are BIGINT, and REAL is
 * DOUBLE PRECISION, as wide as they are on SQLite (docs/declared-sql.md,
 * "Portability").
 *
 * Ownership: cq_declared_parse() returns one heap object that owns every
 * string and array reachable from it; cq_declared_free() releases it all.
 * Nothing here keeps state between calls: a parsed cq_declared is
 * immutable and may be read by any number of threads at once.
 *
 * Errors: functions that can fail return CQ_OK or a negative CQ_* code
 * (cqrs/cqrs.h); where they take err[errcap], a human message is left
 * there, NUL-terminated and cut to fit (errcap may be 0).
 *
 * Implementation, one concept per file (declared_int.h says more):
 * declared_lex.c (bytes and tokens), declared_parse.c (directives and
 * sections), declared_stmt.c (one statement, both dialects),
 * declared_path.c (parameter paths), declared_bind.c (values from
 * events), declared_query.c (named queries), files.c (reading files).
 */
#ifndef CQ_PROJECTION_DECLARED_H
#define CQ_PROJECTION_DECLARED_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "projection/jsonscan.h"

/* Limits enforced by the parser (see docs/declared-sql.md, "Limits"). */
#define CQ_DECL_MAX_FILE (1024 * 1024) /* bytes */
#define CQ_DECL_MAX_STMTS 1000         /* statements in one file */
#define CQ_DECL_MAX_PARAMS 999         /* distinct parameters per statement */
#define CQ_DECL_MAX_STREAM 256         /* bytes of an expanded stream id */

typedef enum cq_decl_mode { CQ_DECL_ASYNC, CQ_DECL_INLINE } cq_decl_mode;

/* One SQL statement, without its `;`, comments inside it kept as written. */
typedef struct cq_decl_stmt {
    char *sqlite_sql; /* with ?1..?N */
    char *pg_sql;     /* with $1..$N; INTEGER/INT, REAL widened */
    char **params;    /* nparams names, e.g. "data.items[0].sku" */
    size_t nparams;
    int line; /* 1-based line of the statement's first token */
} cq_decl_stmt;

/* The statements to run, in order, for each event of one type. */
typedef struct cq_decl_handler {
    char *event_type;
    char *each; /* NULL, or the array to iterate, e.g. "data.items" */
    cq_decl_stmt *stmts;
    size_t nstmts;
    int line; /* of the @on directive */
} cq_decl_handler;

typedef enum cq_decl_ptype {
    CQ_PARAM_ID,   /* 1..64 of [A-Za-z0-9_-] */
    CQ_PARAM_TEXT, /* min..max characters, no control characters */
    CQ_PARAM_INT   /* min..max, decimal int64 */
} cq_decl_ptype;

typedef struct cq_decl_param {
    char *name;
    cq_decl_ptype type;
    int64_t min, max; /* ID: 1..64 (length); TEXT: length; INT: value */
    int required;     /* 1: no default; the request must give it */
    char *def;        /* the default as text (checked), or NULL */
} cq_decl_param;

typedef enum cq_decl_result {
    CQ_RESULT_ONE,     /* first row as an object, or "not found" */
    CQ_RESULT_LIST,    /* array of rows */
    CQ_RESULT_PAGE,    /* {page_field: rows, next: cursor_column of last} */
    CQ_RESULT_SECTIONS /* {section_names[i]: rows of stmts[i], ...} */
} cq_decl_result;

typedef struct cq_decl_query {
    char *name;
    cq_decl_param *params;
    size_t nparams;
    char *stream; /* @stream template ("order-{order_id}"), or NULL */
    cq_decl_result result;
    char *page_field;     /* CQ_RESULT_PAGE only, else NULL */
    char *cursor_column;  /* CQ_RESULT_PAGE only, else NULL */
    char **section_names; /* CQ_RESULT_SECTIONS: nstmts names, else NULL */
    cq_decl_stmt *stmts;
    size_t nstmts;
    int line; /* of the @query directive */
} cq_decl_query;

typedef struct cq_declared {
    char *name;
    int64_t version;
    cq_decl_mode mode;
    cq_decl_stmt *ddl; /* CREATE TABLE / CREATE [UNIQUE] INDEX, no params */
    size_t nddl;
    cq_decl_handler *handlers; /* in file order; a type may have several */
    size_t nhandlers;
    cq_decl_query *queries; /* in file order; names are unique */
    size_t nqueries;
    char source_hash[65]; /* SHA-256 hex of the whole file text */
} cq_declared;

/* Parse a declared projection from text[0..len) (need not be
 * NUL-terminated; borrowed for the call: nothing in *out points into it).
 * On CQ_OK, *out is a new object the caller owns and frees with
 * cq_declared_free(), and err is "". On failure *out is NULL and err (if
 * errcap > 0) holds "LINE: message" for the first problem found, LINE
 * 1-based; the caller prefixes the file name. Returns CQ_OK, CQ_EINVAL
 * (malformed file, or text NULL with len > 0) or CQ_ENOMEM (err then says
 * "out of memory"). Thread-safe: touches only its arguments. */
int cq_declared_parse(const char *text, size_t len, cq_declared **out,
                      char *err, size_t errcap);

/* Free `d` and everything it owns; accepts NULL. Everything borrowed from
 * d (queries, statements, names) is gone after it, so no other thread may
 * still read d, and every executor that cached d's statements (exec.h:
 * they are keyed by address) must be freed first. */
void cq_declared_free(cq_declared *d);

/* The query called `name` (NUL-terminated, borrowed for the call), as a
 * pointer borrowed from d and valid until cq_declared_free(d); NULL if
 * there is none or d is NULL. Cannot fail otherwise. Thread-safe. */
const cq_decl_query *cq_declared_find_query(const cq_declared *d,
                                            const char *name);

/* Check one request value against its declaration: ID charset and length,
 * TEXT length in characters (valid UTF-8, no control characters), INT a
 * decimal in [min, max] (stored in *ival if ival is not NULL). p and
 * value (len bytes, need not be NUL-terminated) are borrowed for the call.
 * Returns CQ_OK or CQ_EINVAL. Thread-safe. */
int cq_declared_param_check(const cq_decl_param *p, const char *value,
                            size_t len, int64_t *ival);

/* Expand a keyed query's @stream template into buf[cap] (NUL-terminated):
 * "order-{order_id}" with values {"o-1"} gives "order-o-1". values[i] is
 * the value of q->params[i] (borrowed for the call, NUL-terminated); buf
 * is the caller's. Returns CQ_OK, or CQ_EINVAL if the
 * query has no @stream, a value it names is NULL, or the result does not
 * fit in cap or exceeds CQ_DECL_MAX_STREAM. Thread-safe. */
int cq_declared_stream(const cq_decl_query *q, const char *const *values,
                       char *buf, size_t cap);

/* ---- binding values from events ----------------------------------------- */

/* An event's data not decoded yet (the projector's batches): its stored
 * text, the top-level members jsonscan.c found in it, and the jansson
 * document made from the text the first time a parameter needs more than
 * a top-level scalar (a deeper path, an object or array, @each). Owned by
 * whoever made the event (projector.c); one thread at a time. */
typedef struct cq_decl_lazy {
    char *text; /* the data's stored text, NUL-terminated */
    cq_scan scan;
    json_t *data; /* NULL until cq_decl_lazy_data made it */
} cq_decl_lazy;

/* The lazy data as a jansson document (cq_json_build: what
 * domain/decode.c's json_loads would give), made once and kept in lz;
 * NULL only when out of memory (the scan proved the text an object
 * jansson accepts). */
const json_t *cq_decl_lazy_data(cq_decl_lazy *lz);

/* What a handler statement can read from one event. Every pointer is
 * borrowed from the caller for the duration of the bind. */
typedef struct cq_decl_event {
    const char *stream_id;
    int64_t version;
    int64_t position;
    const char *type;
    const char *time; /* RFC 3339, e.g. "2026-11-23T14:18:26.123Z" */
    const char *day;  /* YYYY-MM-DD, the UTC day of `time` */
    const json_t *data; /* NULL when lazy holds it */
    const json_t *metadata; /* may be NULL: then every :metadata is NULL */
    cq_decl_lazy *lazy;     /* NULL, or the data not decoded yet */
} cq_decl_event;

typedef enum cq_decl_vtype {
    CQ_VALUE_NULL, /* absent path or JSON null: bind SQL NULL */
    CQ_VALUE_INT,  /* integers and booleans (true = 1, false = 0) */
    CQ_VALUE_REAL,
    CQ_VALUE_TEXT, /* text/len borrowed from the event or item */
    CQ_VALUE_JSON  /* objects and arrays: compact JSON text in `owned` */
} cq_decl_vtype;

typedef struct cq_decl_value {
    cq_decl_vtype type;
    int64_t i;
    double r;
    const char *text; /* TEXT and JSON: len bytes; JSON is NUL-terminated,
                         TEXT need not be and may hold NUL bytes
                         ("\u0000") */
    size_t len;
    char *owned; /* JSON: malloc'd text (== text); free it or call
                    cq_declared_value_clear() */
} cq_decl_value;

/* Resolve handler parameter `param` (a name from cq_decl_stmt.params, no
 * colon) against event `ev` and, inside an @each block, the current array
 * element `item` (NULL elsewhere). A path that does not exist, or crosses
 * a value of the wrong kind, gives CQ_VALUE_NULL: not an error. On CQ_OK
 * *out is set; if out->type is CQ_VALUE_JSON the caller owns out->owned.
 * Returns CQ_OK, CQ_EINVAL (not a handler parameter, or :item without an
 * item) or CQ_ENOMEM. Thread-safe (reads ev and item only). */
int cq_declared_bind_value(const char *param, const cq_decl_event *ev,
                           const json_t *item, cq_decl_value *out);

/* The JSON value at `path`, a data., metadata. or item. path as the parser
 * accepts them in handler statements and after @each
 * (cq_decl_stmt.params, cq_decl_handler.each): in ev->data or
 * ev->metadata, or in `item` for an :item path. On CQ_OK *out is the
 * value, borrowed from ev or item (valid as long as they are), or NULL
 * where the path leaves the document (a missing member, an index out of
 * range, a value of the wrong kind): not an error. Returns CQ_OK, or
 * CQ_EINVAL with *out NULL if path is not such a path or is an :item path
 * and item is NULL. Thread-safe (reads ev and item only). */
int cq_declared_path_json(const char *path, const cq_decl_event *ev,
                          const json_t *item, const json_t **out);

/* Free what a bound value owns and set it to CQ_VALUE_NULL; accepts NULL.
 * v belongs to the caller's thread. */
void cq_declared_value_clear(cq_decl_value *v);

/* ---- files (files.c) ----------------------------------------------------- */

/* What to do with one file's text: name is its path (for messages), text
 * its len bytes (not NUL-terminated). Both are borrowed for the call only:
 * the text is freed when the callback returns. Returns CQ_OK to go on, or
 * a CQ_* code with a message in err[errcap], which the reader returns. */
typedef int (*cq_declared_text_cb)(void *arg, const char *name,
                                   const char *text, size_t len, char *err,
                                   size_t errcap);

/* Read the file at path (borrowed) whole and hand it to fn, with arg, on
 * the calling thread. Returns fn's result; CQ_EINVAL if the file is larger
 * than CQ_DECL_MAX_FILE; CQ_EIO if it cannot be opened or read (also when
 * out of memory); err then says "PATH: reason". No state: thread-safe
 * as far as fn is. */
int cq_declared_read_file(const char *path, cq_declared_text_cb fn, void *arg,
                          char *err, size_t errcap);

/* The same for every *.sql file in dir (borrowed), in name order. Returns
 * CQ_OK (also when there is none), CQ_EIO with "DIR: reason" if dir cannot
 * be listed (also when out of memory), or the first failure of a file,
 * after which no further file is read. */
int cq_declared_read_dir(const char *dir, cq_declared_text_cb fn, void *arg,
                         char *err, size_t errcap);

#endif
