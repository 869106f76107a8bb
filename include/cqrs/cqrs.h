/*
 * cqrs.h -- the engine's public error codes and version.
 *
 * Every fallible function in cqrsd returns an int: CQ_OK (0) or one of the
 * negative codes below; a domain's callbacks answer with them too.
 * Human-readable detail, where there is any, lives next to the call (a
 * decision's refusal, a field-error list, a projection's error), never in
 * the code. A code's value never changes and is never reused.
 *
 * The public headers: cqrs.h (this), decider.h (a domain: commands,
 * aggregates, schemas, decisions, upcasters), projection.h (projections
 * whose handler is C code), module.h (a domain built as a module that
 * `cqrsd serve --domain` loads). Everything else in cqrsd is internal.
 */
#ifndef CQRS_CQRS_H
#define CQRS_CQRS_H

#define CQ_VERSION_STRING "0.1.0"

enum {
    CQ_OK = 0,
    CQ_EINVAL = -1,    /* input is malformed or out of range */
    CQ_ENOTFOUND = -2, /* stream, key, command type... does not exist */
    CQ_ECONFLICT = -3, /* expected version does not match the stream */
    CQ_EEXIST = -4,    /* the stream (or key) exists already */
    CQ_EREFUSED = -5,  /* a business rule refused the command */
    CQ_EIO = -6,       /* the storage layer failed */
    CQ_ENOMEM = -7,    /* out of memory */
    CQ_ECORRUPT = -8,  /* stored bytes could not be decoded */
    CQ_EVERSION = -9,  /* file written by a newer, unknown schema */
    CQ_EBUSY = -10,    /* queue full; try again later */
    CQ_ECLOSED = -11,  /* the component is shutting down */
    CQ_EMISMATCH = -12 /* idempotency key reused with another command */
};

/* A short English phrase for `code`: static (never freed), never NULL;
 * "unknown error" for a value not listed above. Thread-safe. */
const char *cq_strerror(int code);

#endif
