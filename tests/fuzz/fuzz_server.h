/*
 * fuzz_server.h -- the whole cqrsd server inside a fuzz target's process,
 * for the targets whose input arrives over HTTP (fuzz_request,
 * fuzz_raw_append, fuzz_stored_event).
 *
 * The first fz_server_* call starts what `cqrsd serve` starts -- the
 * SQLite event store in a fresh directory under $TMPDIR, the projection
 * engine with the orders read models, the writer, the HTTP server on
 * 127.0.0.1 with a port of its own -- and registers an atexit() handler
 * that stops it and removes the directory. A failure to start aborts: a
 * fuzz target without its server would explore nothing.
 *
 * Each exchange is one request on a new connection, so one input's
 * answer never depends on how an earlier input left a connection.
 *
 * Threads: call from the fuzz target's thread only (libFuzzer and
 * replay.c call LLVMFuzzerTestOneInput from one thread); the server's own
 * threads run meanwhile, as in cqrsd.
 */
#ifndef CQ_FUZZ_SERVER_H
#define CQ_FUZZ_SERVER_H

#include <stddef.h>

typedef struct fz_answer {
    int status;     /* 0: no complete answer within the time allowed */
    char ctype[96]; /* Content-Type, "" when none */
    char *body;     /* malloc'd, NUL-terminated (NULs inside possible) */
    size_t len;
} fz_answer;

/* The server's port (starting it on the first call). */
unsigned fz_server_port(void);

/* The server's data directory (events.db, read.db). */
const char *fz_server_dir(void);

/* Send req[0..len) on a new connection and read one answer, framed by its
 * Content-Length (or the server closing the connection), for at most
 * timeout_ms. Fills *a (free with fz_answer_free); a->status is 0 when
 * the server did not answer in time or closed without answering. With
 * CQ_FUZZ_VERBOSE set in the environment, each exchange is one line on
 * stderr (for looking at what a corpus does). */
void fz_exchange(const char *req, size_t len, int timeout_ms, fz_answer *a);

void fz_answer_free(fz_answer *a);

/* Abort (with the request and the answer on stderr) unless an answer with
 * a status of 400 or more is problem+json whose `status` is the HTTP
 * status and whose `type` is urn:cqrsd:problem:<slug>, or is one of the
 * answers libmicrohttpd makes itself (400, 413, 414, 431: its own HTML
 * page). Answers below 400 pass. */
void fz_check_problem(const char *req, size_t len, const fz_answer *a);

/* Abort with the request and answer on stderr, saying why. */
void fz_fail(const char *why, const char *req, size_t len, const fz_answer *a)
    __attribute__((noreturn));

#endif
