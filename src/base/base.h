/*
 * base.h -- small self-contained helpers every subsystem uses: clock,
 * identifiers, hashing and JSON text checks. No state; all thread-safe.
 */
#ifndef CQ_BASE_H
#define CQ_BASE_H

#include <stddef.h>
#include <stdint.h>

/* Wall-clock milliseconds since the Unix epoch. */
int64_t cq_now_ms(void);

/* Monotonic nanoseconds (for durations only). */
uint64_t cq_mono_ns(void);

/* Write a new UUIDv7 (RFC 9562: 48-bit ms timestamp, version 7, variant
 * 10, random rest from getrandom()) as 36 lower-case characters plus NUL
 * into out[37]. Monotonic within the process: a counter in rand_a keeps
 * ids generated in the same millisecond ordered. Returns CQ_OK or CQ_EIO. */
int cq_uuid7(char out[37]);

/* SHA-256 of len bytes, as 64 lower-case hex characters plus NUL. */
void cq_sha256_hex(const void *data, size_t len, char out[65]);

/* Format ms since epoch as RFC 3339 UTC with milliseconds,
 * "2026-11-23T14:18:26.123Z", into out[32]. */
void cq_format_time(int64_t ms, char out[32]);

/* 1 if s[0..len) is well-formed UTF-8 (no overlongs, no surrogates), else 0. */
int cq_utf8_valid(const char *s, size_t len);

#endif
