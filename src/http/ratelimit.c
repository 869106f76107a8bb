/*
 * ratelimit.c -- token buckets per caller (auth.h, "ratelimit.c").
 *
 * A fixed table of SLOTS buckets, open addressing over PROBE slots from
 * the key's hash: the key's own bucket if it is there, else a free slot,
 * else the one of them seen longest ago, which is forgotten. So memory is
 * bounded whatever the callers, and a caller forgotten starts again with
 * a full bucket (a limit per address is a courtesy, not a defence against
 * many addresses). One mutex guards the table.
 */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http/auth.h"

#define SLOTS 4096
#define PROBE 8
#define KEY_MAX 72

typedef struct bucket {
    char key[KEY_MAX]; /* "" when free */
    double tokens;
    uint64_t at_ns; /* last refill */
} bucket;

struct cq_ratelimit {
    pthread_mutex_t mu;
    double rate, burst;
    bucket b[SLOTS];
};

cq_ratelimit *cq_ratelimit_new(double rate_per_s)
{
    cq_ratelimit *r = calloc(1, sizeof *r);

    if (r == NULL)
        return NULL;
    pthread_mutex_init(&r->mu, NULL);
    r->rate = rate_per_s;
    r->burst = rate_per_s < 1 ? 1 : rate_per_s;
    return r;
}

void cq_ratelimit_free(cq_ratelimit *r)
{
    if (r == NULL)
        return;
    pthread_mutex_destroy(&r->mu);
    free(r);
}

static uint32_t hash_key(const char *s)
{
    uint32_t h = 2166136261u; /* FNV-1a */
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 16777619u;
    return h;
}

int cq_ratelimit_take(cq_ratelimit *r, const char *key, uint64_t now_ns)
{
    uint32_t h = hash_key(key);
    bucket *b = NULL, *oldest = NULL;
    int wait_s = 0;

    pthread_mutex_lock(&r->mu);
    for (int i = 0; i < PROBE; i++) {
        bucket *c = &r->b[(h + (uint32_t)i) % SLOTS];
        if (c->key[0] != '\0' && strncmp(c->key, key, KEY_MAX - 1) == 0) {
            b = c;
            break;
        }
        if (oldest == NULL || (oldest->key[0] != '\0' &&
                               (c->key[0] == '\0' || c->at_ns < oldest->at_ns)))
            oldest = c;
    }
    if (b == NULL) { /* a new caller, in a free slot or the stalest one */
        b = oldest;
        snprintf(b->key, KEY_MAX, "%s", key);
        b->tokens = r->burst;
        b->at_ns = now_ns;
    }
    if (now_ns > b->at_ns) {
        b->tokens += r->rate * (double)(now_ns - b->at_ns) / 1e9;
        if (b->tokens > r->burst)
            b->tokens = r->burst;
        b->at_ns = now_ns;
    }
    if (b->tokens >= 1.0)
        b->tokens -= 1.0;
    else {
        wait_s = (int)ceil((1.0 - b->tokens) / r->rate);
        if (wait_s < 1)
            wait_s = 1;
    }
    pthread_mutex_unlock(&r->mu);
    return wait_s;
}
