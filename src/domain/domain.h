/*
 * domain.h -- the domain registry (engine-side lookups in a cq_domain; the
 * public half -- cq_domain_command, cq_domain_stream_owner,
 * cq_domain_type_owner, cq_domain_upcast -- is in include/cqrs/decider.h)
 * and the one decoder of stored events (cq_event_decode), which every
 * reader of events uses: the writer's aggregate fold, the projector, verify
 * and the streams API. See src/domain/README.md for the decode protocol.
 * Also: checking a domain table a module handed over (check.c) and serving
 * several domains as one (set.c); loading modules is module.h.
 *
 * A cq_domain is a constant table owned by the embedder; everything here
 * only reads it and is thread-safe. A cq_decoded belongs to the thread
 * that filled it.
 */
#ifndef CQ_DOMAIN_H
#define CQ_DOMAIN_H

#include <jansson.h>

#include "cqrs/decider.h"
#include "store/store.h"

/* The upcaster `domain` uses for a `type` event at `schema_version`: the
 * first one listed for that pair (borrowed from the domain), or NULL when
 * there is none or `domain` or `type` is NULL. Thread-safe. */
const cq_upcaster *cq_domain_upcaster(const cq_domain *domain, const char *type,
                                      int schema_version);

/* ---- checking a domain table ----------------------------------------------
 */

/* Whether `d` (borrowed) can be served: a valid name; every command with a
 * type that fits a URL, an aggregate with all four functions, stream_id()
 * and decide(), a known expectation and a schema whose every level ends,
 * with named fields of known kinds, min <= max and arrays that have items;
 * upcasters with a type, from >= 1 and a function; categories and event
 * types that are valid names; nothing listed twice (src/domain/README.md,
 * "Checking a domain", has the table). Returns CQ_OK, or CQ_EINVAL with
 * the first problem in err[errcap] (one line, without the module's path).
 * Reads only: thread-safe. */
int cq_domain_check(const cq_domain *d, char *err, size_t errcap);

/* ---- several domains as one ------------------------------------------------
 */

typedef struct cq_domain_set cq_domain_set;

/* A set of the n domains parts[0..n) (each already passed
 * cq_domain_check; borrowed, they must outlive the set), sources[i]
 * naming where parts[i] came from (a module's path; copied) in messages.
 * Refuses, with CQ_EINVAL and "SOURCE: what collides with which domain"
 * in err, two parts with the same name, command type, stream category,
 * owned event type or upcast event type. CQ_OK with *out (the caller's:
 * cq_domain_set_free), CQ_EINVAL or CQ_ENOMEM. */
int cq_domain_set_new(const cq_domain *const *parts, const char *const *sources,
                      size_t n, cq_domain_set **out, char *err, size_t errcap);

/* The set as one cq_domain, for the writer, the engine, the server and
 * verify: its commands, upcasters, categories and event types are the
 * parts' in order. Borrowed from s, valid until cq_domain_set_free; its
 * name is not a domain's (cq_domain_stream_owner and _type_owner answer
 * with the owning part's). Thread-safe. */
const cq_domain *cq_domain_set_domain(const cq_domain_set *s);

/* The i-th domain d is made of: for a set's view, its parts; for any other
 * domain, d itself as part 0. NULL past the end or for a NULL d. Borrowed.
 * Thread-safe. */
const cq_domain *cq_domain_part(const cq_domain *d, size_t i);

/* Free the set (not its parts); accepts NULL. No thread may still use its
 * view. */
void cq_domain_set_free(cq_domain_set *s);

/* ---- decoding stored events ---------------------------------------------- */

/* Flags of cq_event_decode. */
enum {
    /* Also decode the metadata, which must then be a JSON object. */
    CQ_DECODE_METADATA = 1u << 0,
    /* For readers that show an event which cannot be decoded as it was
     * stored: on any failure out->data is the data as stored (NULL if it is
     * not a JSON object) at the stored schema version, and an event whose
     * metadata is not a JSON object is not upcast at all. */
    CQ_DECODE_AS_STORED = 1u << 1,
};

/* What failed, in the order cq_event_decode ranks causes: the first one
 * that applies is the one returned and described. */
typedef enum cq_decode_cause {
    CQ_DECODE_OK = 0,
    CQ_DECODE_BAD_DATA,      /* the data is not a JSON object */
    CQ_DECODE_UPCAST_FAILED, /* an upcaster failed (or no memory to copy) */
    CQ_DECODE_BAD_METADATA,  /* asked for, the metadata is not an object */
} cq_decode_cause;

/* One stored event decoded. Release with cq_decoded_clear(). */
typedef struct cq_decoded {
    /* The data in the newest shape the domain knows; NULL when the data is
     * not a JSON object or its upcast failed (but see CQ_DECODE_AS_STORED).
     * Owned by this struct unless `borrowed`. Handlers may read it, never
     * change it (it may be the caller's parsed_data). */
    json_t *data;
    /* The metadata object when CQ_DECODE_METADATA was given and it is one,
     * else NULL. Owned by this struct. */
    json_t *metadata;
    int schema_version;    /* the shape `data` has */
    int borrowed;          /* data is the caller's parsed_data */
    cq_decode_cause cause; /* the failure returned, or CQ_DECODE_OK */
} cq_decoded;

/* Decode the stored event `se` (borrowed) for `domain` (may be NULL: no
 * upcasters). `parsed_data`, if not NULL, is se->data already parsed by
 * the caller (borrowed; the writer hands over what it appended): it is used
 * as it is when no upcaster applies, and deep-copied before one runs, so it
 * is never changed. Data this call parses itself is upcast in place. The
 * data and the metadata are decoded independently: a caller that needs
 * only the data may use out->data although the metadata failed.
 *
 * Returns CQ_OK, or for the first cause that applies (see
 * cq_decode_cause): CQ_ECORRUPT when the data or the metadata is not a
 * JSON object (NULL text included), else the failing upcaster's code
 * (CQ_ECORRUPT, CQ_ENOMEM, ...) or CQ_ENOMEM when the copy cannot be made.
 * On failure err[errcap] (if errcap > 0) names the cause for humans:
 * "stored data is not a JSON object", "stored metadata is not a JSON
 * object" or "upcasting T from schema version N failed: <code>" (N is the
 * version whose upcaster failed); on success err is "".
 *
 * *out is always filled, also on failure: call cq_decoded_clear() after
 * every call. Thread-safe (upcasters are pure). */
int cq_event_decode(const cq_domain *domain, const cq_stored_event *se,
                    const json_t *parsed_data, unsigned flags, cq_decoded *out,
                    char *err, size_t errcap);

/* Release what d owns and zero it; accepts NULL and a zeroed struct. */
void cq_decoded_clear(cq_decoded *d);

#endif
