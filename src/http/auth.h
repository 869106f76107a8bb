/*
 * auth.h -- API tokens: the token file, the check of a request's
 * `Authorization: Bearer` against it, the scope each route needs, and the
 * per-caller rate limit (docs/security.md is the contract).
 *
 * Tokens. A token is a name ([A-Za-z0-9_.-], 1-64), a set of scopes and
 * the SHA-256 (hex) of its secret, "cqrsd_" followed by 64 hex digits of
 * getrandom() (256 bits). Only the hash is stored, in the token file:
 *
 *     # cqrsd tokens v1
 *     NAME SCOPES SHA256HEX CREATED_MS
 *
 * (SCOPES comma-separated), mode 0600, rewritten atomically (a temporary
 * file in the same directory, fsync, rename, fsync of the directory).
 * Every byte of it is untrusted: a malformed file is refused as a whole.
 *
 * Whether requests need a token: they do when the token file exists (even
 * with no token left in it: then every request but the probes is 401);
 * when it does not, the server is open (any request is allowed, as
 * before). Once tokens were read, a file that vanishes keeps them. The server
 * looks at the file's identity (inode, size, mtime) at most once a second and
 * reads it again when it changed, and at once on cq_auth_reload() (SIGHUP).
 *
 * Threads: cq_auth_* may be called from any thread; one mutex guards the
 * token list, another the rate-limit table. The file functions
 * (cq_tokens_*) touch no shared state.
 */
#ifndef CQ_HTTP_AUTH_H
#define CQ_HTTP_AUTH_H

#include <stddef.h>
#include <stdint.h>

#include "cqrs/cqrs.h" /* CQ_OK, CQ_E* */

/* Scopes. command: POST /commands/{type}. query: /queries, GET
 * /streams/{id}, GET /projections. subscribe: GET /subscribe (server-sent
 * events). admin: projection control, raw appends, $all, /metrics unless
 * --public-metrics. */
#define CQ_SCOPE_COMMAND 1u
#define CQ_SCOPE_QUERY 2u
#define CQ_SCOPE_SUBSCRIBE 4u
#define CQ_SCOPE_ADMIN 8u
#define CQ_SCOPE_ALL 15u

#define CQ_TOKEN_NAME_MAX 64
#define CQ_TOKEN_SECRET_PREFIX "cqrsd_"
#define CQ_TOKEN_SECRET_LEN (6 + 64) /* prefix and 64 hex digits */

typedef struct cq_token {
    char name[CQ_TOKEN_NAME_MAX + 1];
    unsigned scopes; /* CQ_SCOPE_* */
    char hash[65];   /* SHA-256 hex of the secret */
    int64_t created_ms;
} cq_token;

/* ---- the token file (also used by `cqrsd tokens`) ------------------------ */

/* 1 if name is a valid token name, else 0. */
int cq_token_name_ok(const char *name);

/* "command,query" into *out (CQ_SCOPE_*): CQ_OK, or CQ_EINVAL naming the
 * word it does not know in err. Empty or repeated words are CQ_EINVAL. */
int cq_scopes_parse(const char *s, unsigned *out, char *err, size_t errcap);

/* The scopes as "command,query" into buf (at least 40 bytes). */
void cq_scopes_format(unsigned scopes, char *buf, size_t cap);

/* Read the token file at path: CQ_OK with *out (malloc'd; free()) and *n,
 * CQ_ENOTFOUND when there is no such file (*out NULL, *n 0), CQ_EINVAL
 * for a malformed file, CQ_EIO when it cannot be read; a message in err
 * otherwise. */
int cq_tokens_load(const char *path, cq_token **out, size_t *n, char *err,
                   size_t errcap);

/* Write tokens[0..n) to path atomically, mode 0600. CQ_OK or CQ_EIO with
 * a message in err. */
int cq_tokens_save(const char *path, const cq_token *tokens, size_t n,
                   char *err, size_t errcap);

/* A new secret into secret[CQ_TOKEN_SECRET_LEN + 1] and its hash into
 * hash[65]. CQ_OK or CQ_EIO (no random bytes). */
int cq_token_new_secret(char *secret, char hash[65]);

/* ---- the server's view -------------------------------------------------- */

typedef struct cq_auth cq_auth;

/* A checker for the token file at path (borrowed for the call; NULL: no
 * file, the server stays open). rate_per_s > 0 limits every caller (a
 * token, or the client address when the server is open) to that many
 * requests a second, in bursts of as many. CQ_OK with *out, CQ_EINVAL
 * with a message for a file that exists but is malformed or unreadable,
 * CQ_ENOMEM. */
int cq_auth_new(const char *path, double rate_per_s, int public_metrics,
                cq_auth **out, char *err, size_t errcap);
void cq_auth_free(cq_auth *a);

/* 1 if the token file exists (requests need a token), else 0. */
int cq_auth_required(cq_auth *a);

/* The number of tokens last read. */
size_t cq_auth_count(cq_auth *a);

/* Read the token file again now (SIGHUP). A file made malformed keeps the
 * tokens read before, with a line on stderr. */
void cq_auth_reload(cq_auth *a);

/* The outcome of cq_auth_check. */
typedef struct cq_auth_result {
    int status;                        /* 0 allowed; 401, 403 or 429 */
    unsigned missing;                  /* 403: the scope needed */
    int retry_after_s;                 /* 429 */
    char token[CQ_TOKEN_NAME_MAX + 1]; /* allowed with a token: its name,
                                          else "" */
} cq_auth_result;

/* Check `authorization` (the header's value, or NULL) for a request that
 * needs scope `need` (0: any valid token), then the caller's rate (keyed
 * by the token, or by `client` — the client address as text — when the
 * server is open; rate-limited only when `limit` is 1). The presented
 * secret is hashed and compared with every token's hash in constant
 * time. */
void cq_auth_check(cq_auth *a, const char *authorization, unsigned need,
                   const char *client, int limit, cq_auth_result *out);

/* 1 if /metrics is open to everyone. */
int cq_auth_public_metrics(const cq_auth *a);

/* ---- ratelimit.c: token buckets ----------------------------------------- */

typedef struct cq_ratelimit cq_ratelimit;

/* rate_per_s > 0 requests a second, bursts of max(1, rate_per_s). NULL:
 * no memory. */
cq_ratelimit *cq_ratelimit_new(double rate_per_s);
void cq_ratelimit_free(cq_ratelimit *r);

/* Take one request for `key` (borrowed): 0 allowed, or the seconds (>= 1)
 * until one is. At most 4096 callers are tracked; beyond that the one
 * seen longest ago is forgotten (and starts with a full bucket). Any
 * thread. */
int cq_ratelimit_take(cq_ratelimit *r, const char *key, uint64_t now_ns);

#endif
