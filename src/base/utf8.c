/*
 * utf8.c -- strict UTF-8 validation (RFC 3629; Unicode table 3-7), for text
 * that arrives from outside before it is stored or counted in characters.
 *
 * Well-formed sequences, by first byte:
 *
 *   | first byte | second    | third, fourth | code points          |
 *   |------------|-----------|---------------|----------------------|
 *   | 00..7F     |           |               | U+0000..U+007F       |
 *   | C2..DF     | 80..BF    |               | U+0080..U+07FF       |
 *   | E0         | A0..BF    | 80..BF        | U+0800..U+0FFF       |
 *   | E1..EC     | 80..BF    | 80..BF        | U+1000..U+CFFF       |
 *   | ED         | 80..9F    | 80..BF        | U+D000..U+D7FF       |
 *   | EE..EF     | 80..BF    | 80..BF        | U+E000..U+FFFF       |
 *   | F0         | 90..BF    | 80..BF x2     | U+10000..U+3FFFF     |
 *   | F1..F3     | 80..BF    | 80..BF x2     | U+40000..U+FFFFF     |
 *   | F4         | 80..8F    | 80..BF x2     | U+100000..U+10FFFF   |
 *
 * Anything else -- C0, C1, F5..FF, a stray continuation byte, an overlong
 * form, a surrogate (ED A0..BF), a truncated sequence -- is rejected.
 * NUL bytes are well-formed UTF-8; callers that mind them check apart.
 */
#include "base/base.h"

/* 1 if s[0..len) is well-formed UTF-8 per the table above, else 0.
 * `s` may be NULL when len is 0. Thread-safe. */
int cq_utf8_valid(const char *s, size_t len)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;

    while (i < len) {
        unsigned char c = p[i];
        unsigned char lo = 0x80, hi = 0xbf; /* range of the second byte */
        size_t n;                           /* continuation bytes */

        if (c < 0x80) {
            i++;
            continue;
        }
        if (c >= 0xc2 && c <= 0xdf) {
            n = 1;
        } else if (c >= 0xe0 && c <= 0xef) {
            n = 2;
            if (c == 0xe0)
                lo = 0xa0; /* no overlongs */
            else if (c == 0xed)
                hi = 0x9f; /* no surrogates */
        } else if (c >= 0xf0 && c <= 0xf4) {
            n = 3;
            if (c == 0xf0)
                lo = 0x90; /* no overlongs */
            else if (c == 0xf4)
                hi = 0x8f; /* nothing above U+10FFFF */
        } else {
            return 0; /* continuation byte, C0, C1 or F5..FF */
        }
        if (len - i - 1 < n)
            return 0; /* truncated */
        if (p[i + 1] < lo || p[i + 1] > hi)
            return 0;
        for (size_t k = 2; k <= n; k++)
            if (p[i + k] < 0x80 || p[i + k] > 0xbf)
                return 0;
        i += n + 1;
    }
    return 1;
}
