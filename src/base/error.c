/*
 * error.c -- the one list of error codes, as short English phrases.
 *
 * The strings are static and never change, so cq_strerror() needs no
 * locking and its result may be kept for the life of the process.
 */
#include "cqrs/cqrs.h"

/* Short static description of `code` (CQ_OK or a negative CQ_E* code).
 * Unknown codes get a generic text rather than NULL. Thread-safe. */
const char *cq_strerror(int code)
{
    switch (code) {
    case CQ_OK: return "success";
    case CQ_EINVAL: return "invalid argument";
    case CQ_ENOTFOUND: return "not found";
    case CQ_ECONFLICT: return "version conflict";
    case CQ_EEXIST: return "already exists";
    case CQ_EREFUSED: return "refused by a business rule";
    case CQ_EIO: return "input/output error";
    case CQ_ENOMEM: return "out of memory";
    case CQ_ECORRUPT: return "stored data is corrupt";
    case CQ_EVERSION: return "written by a newer, unknown schema version";
    case CQ_EBUSY: return "busy, try again later";
    case CQ_ECLOSED: return "shutting down";
    case CQ_EMISMATCH: return "idempotency key reused with a different command";
    default: return "unknown error";
    }
}
