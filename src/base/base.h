/*
 * base.h -- small self-contained helpers every subsystem uses: clock,
 * identifiers, hashing and UTF-8 checks (see src/base/README.md).
 *
 * Threads: every function here may be called from any thread,
 * concurrently. The only state is cq_uuid7's last (timestamp, counter)
 * pair, guarded by a mutex inside uuid.c. Nothing here allocates.
 */
#ifndef CQ_BASE_H
#define CQ_BASE_H

#include <stddef.h>
#include <stdint.h>

/* Wall-clock milliseconds since the Unix epoch (CLOCK_REALTIME): for time
 * stamps people read, never for durations (it may jump back). Cannot
 * fail. */
int64_t cq_now_ms(void);

/* Monotonic nanoseconds since an arbitrary start (CLOCK_MONOTONIC): only
 * the difference of two calls means anything. Cannot fail. */
uint64_t cq_mono_ns(void);

/* Write a new UUIDv7 (RFC 9562: 48-bit ms timestamp, version 7, variant
 * 10, random rest from getrandom()) as 36 lower-case characters plus NUL
 * into out[37]. Monotonic within the process: a counter in rand_a keeps
 * ids generated in the same millisecond ordered. Returns CQ_OK or CQ_EIO. */
int cq_uuid7(char out[37]);

/* SHA-256 of data[0..len) (borrowed for the call), as 64
 * lower-case hex characters plus NUL into the caller's out[65]. Cannot
 * fail. */
void cq_sha256_hex(const void *data, size_t len, char out[65]);

/* Format ms since epoch (may be negative) as RFC 3339 UTC with
 * milliseconds, "2026-11-23T14:18:26.123Z" (24 characters plus NUL), into
 * the caller's out[32]. Values outside the years 0000..9999 are clamped to
 * them. Cannot fail. */
void cq_format_time(int64_t ms, char out[32]);

/* A predicate, not a fallible call: 1 if s[0..len) is well-formed UTF-8
 * (no overlongs, no surrogates, nothing above U+10FFFF; NUL bytes are
 * well-formed), else 0. s is borrowed and may be NULL when len is 0. */
int cq_utf8_valid(const char *s, size_t len);

#endif
