/*
 * decider.h -- the public API a domain implements to accept commands.
 *
 * A domain (see domains/orders/, domains/bank/) is a set of command
 * definitions, built into a module the server loads (module.h). Each
 * command belongs to an aggregate, whose state is folded from its stream's
 * events with evolve(). The engine:
 *
 *   1. checks the JSON body against the command's schema (cq_schema_check),
 *      then the command's own validate(), and answers 400 with every field
 *      error if either finds one;
 *   2. derives the stream id with stream_id();
 *   3. loads the aggregate state (a cached copy checked by stream version,
 *      or initial() folded with evolve() over the stream);
 *   4. calls decide(state, body) which emits events or refuses;
 *   5. appends the events, then evolves its cached state with them.
 *
 * initial, evolve, clone, decide and validate must be pure: no I/O, no
 * clock, no randomness, no global state. They may be called from any one
 * thread at a time (in practice the writer thread, and HTTP threads for
 * validate/stream_id). Times and ids the events need come from the command
 * body or from the metadata the engine adds.
 *
 * JSON values are jansson's json_t. Ownership is stated per function.
 */
#ifndef CQRS_DECIDER_H
#define CQRS_DECIDER_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "cqrs.h"

/* ---- validation errors ------------------------------------------------ */

typedef struct cq_errors cq_errors; /* opaque list of {field, message} */

/* Record that `field` (a path such as "items[0].quantity", or "" for the
 * body itself) is wrong, with a printf-style message. Copies everything.
 * Out of memory is remembered and reported by cq_errors_count() as at least
 * one error, so callers need not check. A NULL e does nothing. e belongs
 * to the thread that was handed it (a validate() call). */
void cq_errors_add(cq_errors *e, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Number of errors recorded so far (a count, not a CQ_* code; 0 for a
 * NULL e). */
int cq_errors_count(const cq_errors *e);

/* ---- declarative shape checks ------------------------------------------ */

typedef enum cq_field_kind {
    CQ_FIELD_END = 0, /* terminates a field list */
    CQ_FIELD_STRING,  /* min/max bound the length in characters */
    CQ_FIELD_INTEGER, /* min/max bound the value */
    CQ_FIELD_ARRAY /* of objects described by `items`; min/max bound the count
                    */
} cq_field_kind;

typedef enum cq_charset {
    CQ_CHARS_TEXT = 0, /* any UTF-8 without control characters */
    CQ_CHARS_ID,       /* [A-Za-z0-9_-] */
    CQ_CHARS_UPPER     /* [A-Z] */
} cq_charset;

typedef struct cq_field {
    const char *name;
    cq_field_kind kind;
    int optional;                 /* 0: required */
    int64_t min, max;             /* inclusive bounds, see cq_field_kind */
    cq_charset chars;             /* strings only */
    const struct cq_field *items; /* arrays only: fields of each item */
} cq_field;

/* Check that `body` is an object whose members match `fields` (a list
 * ended by kind CQ_FIELD_END): right types, within bounds, required ones
 * present, no unknown members. Adds one error per problem to `errs`, with
 * the field's path, prefixed by `prefix` ("" at top level; NULL is taken
 * as ""). Returns the number of errors added (a count, not a CQ_* code;
 * with a NULL errs nothing is recorded and 0 is returned). `fields`,
 * `body` and `prefix` are borrowed for the call. Thread-safe; errs belongs
 * to the calling thread. */
int cq_schema_check(const cq_field *fields, const json_t *body,
                    const char *prefix, cq_errors *errs);

/* ---- events and state -------------------------------------------------- */

/* A stored event as the aggregate sees it. All pointers borrowed for the
 * duration of the call. */
typedef struct cq_event {
    const char *type;
    int schema_version;
    int64_t version;  /* version within its stream, from 1 */
    int64_t position; /* global position, from 1 */
    const json_t *data;
} cq_event;

/* How one kind of stream's state is folded. A state belongs to the engine
 * (or to a unit test) from initial() or clone() until free(); the engine
 * hands it to one thread at a time. */
typedef struct cq_aggregate {
    const char *name;
    /* A new state, as for a stream with no events; NULL on out of memory. */
    void *(*initial)(void);
    /* Apply one event to `state` in place (`ev` borrowed for the call;
     * stored bytes: check every field). Unknown event types must be
     * ignored. Returns CQ_OK, or CQ_ECORRUPT/CQ_ENOMEM (the state may then
     * be half changed: the engine drops it). */
    int (*evolve)(void *state, const cq_event *ev);
    /* A deep copy of `state`; NULL on out of memory. */
    void *(*clone)(const void *state);
    /* Free a state; accepts NULL. */
    void (*free)(void *state);
} cq_aggregate;

/* ---- decisions ---------------------------------------------------------- */

typedef struct cq_decision cq_decision; /* opaque: what decide() produced */

/* Emit an event. `d` is the decision decide() was given (valid for that
 * call only). `type` (not empty) is copied; `data` must be a JSON object
 * and its reference is taken over (stolen) even on failure. Returns CQ_OK,
 * CQ_EINVAL (data not an object, type NULL or empty) or CQ_ENOMEM. */
int cq_decision_emit(cq_decision *d, const char *type, int schema_version,
                     json_t *data);

/* Refuse the command for a business reason (answered as 422 with this
 * message as detail; the message is copied, and a generic one is used if
 * it cannot be). `d` as for cq_decision_emit. Always returns CQ_EREFUSED,
 * so decide() can `return` it. */
int cq_decision_refuse(cq_decision *d, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* ---- running a decider yourself: unit tests --------------------------- */

/* The engine makes the cq_decision and cq_errors it hands to decide() and
 * validate(). A unit test of a domain -- pure, no database -- makes its own
 * with the functions below, folds initial() and evolve() and calls
 * decide() the way the engine does (steps 1-5 above), then reads what was
 * emitted. Each object belongs to the thread that made it. */

/* One event a decision holds. */
typedef struct cq_decided_event {
    const char *type; /* owned by the decision */
    int schema_version;
    json_t *data; /* owned by the decision (one reference) */
} cq_decided_event;

/* A new, empty decision, owned by the caller (cq_decision_free); NULL on
 * out of memory. */
cq_decision *cq_decision_new(void);

/* Free d and the events it holds; accepts NULL. */
void cq_decision_free(cq_decision *d);

/* Forget the emitted events and the refusal, so that d can be given to
 * the next decide() (the writer keeps one per thread). Cannot fail;
 * accepts NULL. */
void cq_decision_reset(cq_decision *d);

/* Number of events emitted since the last reset (a count, not a CQ_*
 * code); 0 for NULL. */
size_t cq_decision_count(const cq_decision *d);

/* The i-th emitted event, in emission order, or NULL if i >=
 * cq_decision_count(d). Borrowed: valid until d is reset or freed; its
 * data must not be changed. */
const cq_decided_event *cq_decision_event(const cq_decision *d, size_t i);

/* The refusal's message (borrowed: valid until reset/free), or NULL if
 * decide() did not refuse (or d is NULL). */
const char *cq_decision_refusal(const cq_decision *d);

/* A new, empty field-error list for validate() and cq_schema_check(),
 * owned by the caller (cq_errors_free); NULL on out of memory. It keeps
 * the first 50 errors and counts the rest. */
cq_errors *cq_errors_new(void);

/* Free e and everything it recorded; accepts NULL. */
void cq_errors_free(cq_errors *e);

/* What the stream must look like before decide() runs. */
typedef enum cq_expect {
    CQ_EXPECT_ANY = 0, /* no check */
    CQ_EXPECT_NEW,     /* stream must not exist: 409 otherwise */
    CQ_EXPECT_EXISTS   /* stream must exist: 404 otherwise */
} cq_expect;

typedef struct cq_command_def {
    const char *type; /* e.g. "PlaceOrder"; unique per domain */
    const cq_aggregate *aggregate;
    const cq_field *schema; /* shape of the body */
    cq_expect expect;
    /* Write the target stream id (NUL-terminated) into buf of cap bytes.
     * Called only after the schema check passed. CQ_OK or CQ_EINVAL. */
    int (*stream_id)(const json_t *body, char *buf, size_t cap);
    /* Checks beyond the shape; may be NULL. Adds to errs; returns the
     * number of errors added. */
    int (*validate)(const json_t *body, cq_errors *errs);
    /* Decide. `state` is borrowed and must not be changed. Returns CQ_OK
     * (zero or more events emitted), CQ_EREFUSED (via cq_decision_refuse)
     * or CQ_ENOMEM. */
    int (*decide)(const void *state, const json_t *body, cq_decision *d);
} cq_command_def;

/* ---- schema evolution ---------------------------------------------------- */

/* Turns the data of a `type` event stored at schema version `from` into the
 * shape of version from + 1, in place (`data` is a JSON object the engine
 * owns). Pure. Returns CQ_OK, CQ_ECORRUPT (the old data cannot be read) or
 * CQ_ENOMEM. Old events stay as they were written; upcasters run wherever
 * events are read: folding aggregates, the streams API, projections,
 * strong reads and verify. */
typedef struct cq_upcaster {
    const char *type; /* NULL ends a list */
    int from;
    int (*upcast)(json_t *data);
} cq_upcaster;

/* A domain. The table and everything it points to are the module's,
 * constant, and must stay valid and unchanged for as long as the engine
 * runs; the engine only reads them, from any thread.
 *
 * What a domain owns. A stream's category is the part of its id before the
 * first '-' (the whole id when it has none): "order" for "order-o-1". The
 * streams of a category the domain owns, and the events of a type it owns,
 * are written only through its commands: a raw append (POST /streams/{id})
 * to such a stream, or of such a type to any stream, is refused. So its
 * deciders and projections see only events its own rules produced, in its
 * own streams (projections key rows on fields of the data, such as
 * data.order_id, which a foreign stream could otherwise forge). */
typedef struct cq_domain {
    const char *name;
    const cq_command_def *const *commands; /* NULL-terminated */
    const cq_upcaster *upcasters;          /* ended by type NULL; may be NULL */
    const char *const *categories;  /* stream categories owned by the domain,
                                       NULL-terminated; may be NULL */
    const char *const *event_types; /* event types its commands emit,
                                       NULL-terminated; may be NULL */
} cq_domain;

/* Bring `data` (a `type` event at *schema_version) to the newest shape the
 * domain's upcasters know, applying them one version at a time; updates
 * *schema_version. `data` is the caller's and is changed in place; `type`
 * is borrowed for the call. A NULL domain, or one without upcasters,
 * changes nothing. Returns CQ_OK or the first upcaster's error (then data
 * may be half changed and *schema_version names the step that failed).
 * Thread-safe (upcasters are pure). */
int cq_domain_upcast(const cq_domain *domain, const char *type,
                     int *schema_version, json_t *data);

/* The domain's name if it owns the category of `stream_id` (see
 * cq_domain), else NULL; when the server serves several domains as one,
 * the name of the one of them that owns it. Borrowed from the domain. A
 * NULL domain or stream_id owns nothing. Thread-safe. */
const char *cq_domain_stream_owner(const cq_domain *domain,
                                   const char *stream_id);

/* The domain's name if it owns the event type `type`, else NULL (several
 * domains: as cq_domain_stream_owner). Borrowed from the domain. A NULL
 * domain or type owns nothing. Thread-safe. */
const char *cq_domain_type_owner(const cq_domain *domain, const char *type);

/* The command definition named `type` (borrowed for the call) in
 * `domain`, borrowed from the domain; NULL when there is none or domain
 * or type is NULL. Thread-safe. */
const cq_command_def *cq_domain_command(const cq_domain *domain,
                                        const char *type);

#endif
