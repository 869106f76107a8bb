/*
 * clock.c -- wall-clock and monotonic time, and the one text format for
 * times in events, metadata and HTTP answers (RFC 3339, UTC, milliseconds).
 *
 * Wall-clock time (cq_now_ms) may jump backwards when the system clock is
 * set; use it for timestamps people read, never for durations, which come
 * from cq_mono_ns. No state; everything here is thread-safe (gmtime_r).
 */
#include <string.h>
#include <time.h>

#include "base/base.h"

/* Wall-clock milliseconds since the Unix epoch (CLOCK_REALTIME). */
int64_t cq_now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Monotonic nanoseconds since an arbitrary start (CLOCK_MONOTONIC); only
 * differences between two calls mean anything. */
uint64_t cq_mono_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* RFC 3339 has four-digit years, so times are clamped to
 * 0000-01-01T00:00:00.000Z .. 9999-12-31T23:59:59.999Z. */
#define MIN_MS (-62167219200000LL)
#define MAX_MS (253402300799999LL)

/* Write v (0 <= v < 10^n) as exactly n decimal digits. */
static void put_digits(char *p, int v, int n)
{
    for (int i = n - 1; i >= 0; i--, v /= 10)
        p[i] = (char)('0' + v % 10);
}

/* Format `ms` (milliseconds since the epoch, may be negative) as
 * "2026-11-23T14:18:26.123Z" into out[32]. Out-of-range values are clamped
 * to the years 0000..9999. Thread-safe. */
void cq_format_time(int64_t ms, char out[32])
{
    struct tm tm;
    int64_t sec, milli;
    time_t t;

    if (ms < MIN_MS)
        ms = MIN_MS;
    if (ms > MAX_MS)
        ms = MAX_MS;
    /* Floor division, so that -1 ms is 23:59:59.999 of the day before. */
    sec = ms / 1000;
    milli = ms % 1000;
    if (milli < 0) {
        milli += 1000;
        sec -= 1;
    }
    t = (time_t)sec;
    if (gmtime_r(&t, &tm) == NULL) {
        memcpy(out, "1970-01-01T00:00:00.000Z", 25);
        return;
    }
    /* Digits by hand: the clamp above bounds every field, which snprintf's
     * truncation warning cannot see. */
    put_digits(out, tm.tm_year + 1900, 4);
    out[4] = '-';
    put_digits(out + 5, tm.tm_mon + 1, 2);
    out[7] = '-';
    put_digits(out + 8, tm.tm_mday, 2);
    out[10] = 'T';
    put_digits(out + 11, tm.tm_hour, 2);
    out[13] = ':';
    put_digits(out + 14, tm.tm_min, 2);
    out[16] = ':';
    put_digits(out + 17, tm.tm_sec, 2); /* 60 for a leap second, if any */
    out[19] = '.';
    put_digits(out + 20, (int)milli, 3);
    out[23] = 'Z';
    out[24] = '\0';
}
