/*
 * uuid.c -- UUIDv7 identifiers (RFC 9562, section 5.7) for events and
 * commands: time-ordered, so ids sort in creation order and index well.
 *
 * Layout (128 bits, big-endian):
 *
 *   | bits | field     | content                                        |
 *   |------|-----------|------------------------------------------------|
 *   | 48   | unix_ts_ms| milliseconds since the epoch                   |
 *   | 4    | ver       | 0111 (7)                                       |
 *   | 12   | rand_a    | counter within the millisecond (RFC method 1)  |
 *   | 2    | var       | 10                                             |
 *   | 62   | rand_b    | random, from getrandom()                       |
 *
 * Monotonicity: the generator remembers the last (timestamp, counter) it
 * handed out. A new millisecond starts the counter at a random value in
 * [0, 2047] (leaving at least 2048 steps of headroom, as RFC 9562 section
 * 6.2 suggests, so the counter is not guessable); the same millisecond, or
 * a clock that went backwards, increments it. When the 12-bit counter
 * overflows the timestamp is advanced by one millisecond. So every id is
 * strictly greater than the one before it, in the process.
 *
 * Threads: that (timestamp, counter) pair is the only global mutable state
 * in src/base, guarded by `gen_lock`. Random bytes come from a per-thread
 * pool (see random_bytes) before taking the lock, so the critical section
 * is a few instructions.
 */
#include <errno.h>
#include <pthread.h>
#include <string.h>
#include <sys/random.h>

#include "base/base.h"
#include "cqrs/cqrs.h"

static pthread_mutex_t gen_lock = PTHREAD_MUTEX_INITIALIZER;
static int64_t gen_last_ms = -1; /* guarded by gen_lock */
static unsigned gen_counter;     /* guarded by gen_lock; 12 bits */

/* Fill buf with len random bytes straight from the kernel; CQ_OK or
 * CQ_EIO. */
static int getrandom_all(unsigned char *buf, size_t len)
{
    size_t got = 0;

    while (got < len) {
        ssize_t n = getrandom(buf + got, len - got, 0);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return CQ_EIO;
        }
        got += (size_t)n;
    }
    return CQ_OK;
}

/* Fill buf with len (<= sizeof pool) random bytes. Each thread keeps a
 * pool of kernel randomness and refills it when it runs out, so an id
 * costs a system call only once per hundred ids: the writer and the HTTP
 * threads make one or more ids per command. The pool is thread-local, so
 * no lock; bytes are never handed out twice. */
static int random_bytes(unsigned char *buf, size_t len)
{
    static _Thread_local unsigned char pool[1024];
    static _Thread_local size_t used = sizeof pool;

    if (len > sizeof pool)
        return getrandom_all(buf, len);
    if (sizeof pool - used < len) {
        if (getrandom_all(pool, sizeof pool) != CQ_OK)
            return CQ_EIO;
        used = 0;
    }
    memcpy(buf, pool + used, len);
    memset(pool + used, 0, len);
    used += len;
    return CQ_OK;
}

/* Write a new UUIDv7 as 36 lower-case characters plus NUL into out[37].
 * Strictly increasing within the process (see the file comment). Returns
 * CQ_OK, or CQ_EIO if the kernel gave no random bytes (out is then "").
 * Thread-safe. */
int cq_uuid7(char out[37])
{
    unsigned char rnd[10], b[16];
    int64_t now, ms;
    unsigned counter;

    out[0] = '\0';
    if (random_bytes(rnd, sizeof rnd) != CQ_OK)
        return CQ_EIO;
    now = cq_now_ms();

    pthread_mutex_lock(&gen_lock);
    if (now > gen_last_ms) {
        gen_last_ms = now;
        gen_counter = ((unsigned)rnd[8] << 8 | rnd[9]) & 0x7ff;
    } else if (++gen_counter > 0xfff) {
        gen_last_ms++;
        gen_counter = 0;
    }
    ms = gen_last_ms;
    counter = gen_counter;
    pthread_mutex_unlock(&gen_lock);

    for (int i = 0; i < 6; i++)
        b[i] = (unsigned char)((uint64_t)ms >> (40 - 8 * i));
    b[6] = (unsigned char)(0x70 | (counter >> 8));
    b[7] = (unsigned char)(counter & 0xff);
    b[8] = (unsigned char)(0x80 | (rnd[0] & 0x3f));
    for (int i = 9; i < 16; i++)
        b[i] = rnd[i - 8];

    static const char hex[] = "0123456789abcdef";
    char *p = out;
    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            *p++ = '-';
        *p++ = hex[b[i] >> 4];
        *p++ = hex[b[i] & 0xf];
    }
    *p = '\0';
    return CQ_OK;
}
