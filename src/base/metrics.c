/*
 * metrics.c -- the metrics registry and its Prometheus text rendering (see
 * metrics.h).
 *
 * Layout. The registry is a list of families (one per metric name, in
 * order of first registration); each family is a list of series (one per
 * label set); collectors are a third list. All three lists are append-only
 * until cq_metrics_free: a new node is fully built, then linked by a release
 * store of the previous tail's `next` (or of the list head), and readers walk
 * them with acquire loads. So rendering needs no lock and never sees a
 * half-built node. Writers of the lists (registration) serialize on
 * `lock`, which also guards the tail pointers.
 *
 * Values. A counter is one atomic uint64. A histogram keeps one atomic
 * count per bucket, *not* cumulative, plus the +Inf overflow bucket, so an
 * observation is one fetch-add; the render accumulates them and prints the
 * total as both the +Inf bucket and _count, which keeps every scrape
 * self-consistent even while observations race with it. The sum is a
 * double kept as its bit pattern in an atomic uint64, updated by a CAS
 * loop (lock-free; integer nanoseconds would be wait-free but would tie the
 * histogram to durations and drop negative values). Updates use relaxed
 * order: nothing else is published through a metric.
 *
 * Each series is allocated on its own 64-byte cache line so two hot
 * counters (accepted, refused) updated from different threads do not
 * share a line.
 *
 * Floats are printed in the shortest form that reads back as the same
 * double ("0.005", not "0.0050000000000000001"), which is what Prometheus'
 * own clients print for `le` labels, so recording rules that match
 * le="0.005" keep working.
 */
#include "base/metrics.h"

#include "cqrs/cqrs.h"

#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CACHE_LINE 64

enum kind { KIND_COUNTER, KIND_HISTOGRAM };

struct family;

/* One series: name{labels}. Immutable after publication except the
 * atomics. */
typedef struct series {
    _Atomic(struct series *) next;
    struct family *family;
    char *labels; /* "" for none */
    /* counter: the value; histogram: the sum, as the bits of a double */
    _Atomic uint64_t value;
    /* histogram only: nbounds + 1 counts (the last one is +Inf) */
    _Atomic uint64_t *counts;
    double *bounds;
    int nbounds;
} series;

/* The handle types are the series itself; two names keep the API typed. */
struct cq_counter {
    series s;
};
struct cq_histogram {
    series s;
};

typedef struct family {
    _Atomic(struct family *) next;
    char *name, *help;
    enum kind kind;
    _Atomic(series *) first;
    series *last; /* under the registry lock */
} family;

typedef struct collector {
    _Atomic(struct collector *) next;
    cq_metrics_collector cb;
    void *arg;
} collector;

struct cq_metrics {
    pthread_mutex_t lock; /* serializes registration; guards the tails */
    _Atomic(family *) families;
    family *families_last;
    _Atomic(collector *) collectors;
    collector *collectors_last;
};

/* ---- small helpers ------------------------------------------------------- */

static int valid_name(const char *s)
{
    if (s == NULL || *s == '\0')
        return 0;
    for (const char *p = s; *p; p++) {
        char c = *p;
        int alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                    c == '_' || c == ':';
        if (!alpha && !(p > s && c >= '0' && c <= '9'))
            return 0;
    }
    return 1;
}

static double bits_double(uint64_t u)
{
    double d;
    memcpy(&d, &u, sizeof d);
    return d;
}

static uint64_t double_bits(double d)
{
    uint64_t u;
    memcpy(&u, &d, sizeof u);
    return u;
}

/* The shortest of %.15g..%.17g that reads back as v; Prometheus' spelling
 * of the non-finite values. out holds at least 32 bytes. */
static void format_double(double v, char out[32])
{
    if (isnan(v)) {
        strcpy(out, "NaN");
        return;
    }
    if (isinf(v)) {
        strcpy(out, v > 0 ? "+Inf" : "-Inf");
        return;
    }
    for (int prec = 15; prec <= 17; prec++) {
        snprintf(out, 32, "%.*g", prec, v);
        if (strtod(out, NULL) == v)
            return;
    }
}

/* A zeroed block of n bytes on its own cache line(s), or NULL. */
static void *line_alloc(size_t n)
{
    size_t rounded = (n + CACHE_LINE - 1) / CACHE_LINE * CACHE_LINE;
    void *p = aligned_alloc(CACHE_LINE, rounded);

    if (p != NULL)
        memset(p, 0, rounded);
    return p;
}

static void series_free(series *s)
{
    if (s == NULL)
        return;
    free(s->labels);
    free((void *)s->counts);
    free(s->bounds);
    free(s);
}

/* ---- the registry -------------------------------------------------------- */

cq_metrics *cq_metrics_new(void)
{
    cq_metrics *m = calloc(1, sizeof *m);

    if (m == NULL)
        return NULL;
    if (pthread_mutex_init(&m->lock, NULL) != 0) {
        free(m);
        return NULL;
    }
    atomic_init(&m->families, NULL);
    atomic_init(&m->collectors, NULL);
    return m;
}

void cq_metrics_free(cq_metrics *m)
{
    family *f, *fnext;
    collector *c, *cnext;

    if (m == NULL)
        return;
    for (f = atomic_load(&m->families); f != NULL; f = fnext) {
        series *s, *snext;
        fnext = atomic_load(&f->next);
        for (s = atomic_load(&f->first); s != NULL; s = snext) {
            snext = atomic_load(&s->next);
            series_free(s);
        }
        free(f->name);
        free(f->help);
        free(f);
    }
    for (c = atomic_load(&m->collectors); c != NULL; c = cnext) {
        cnext = atomic_load(&c->next);
        free(c);
    }
    pthread_mutex_destroy(&m->lock);
    free(m);
}

/* Under the lock: the family called name, or NULL. */
static family *family_find(cq_metrics *m, const char *name)
{
    for (family *f = atomic_load_explicit(&m->families, memory_order_relaxed);
         f != NULL; f = atomic_load_explicit(&f->next, memory_order_relaxed))
        if (strcmp(f->name, name) == 0)
            return f;
    return NULL;
}

/* Under the lock: the series of f with these labels, or NULL. */
static series *series_find(family *f, const char *labels)
{
    for (series *s = atomic_load_explicit(&f->first, memory_order_relaxed);
         s != NULL; s = atomic_load_explicit(&s->next, memory_order_relaxed))
        if (strcmp(s->labels, labels) == 0)
            return s;
    return NULL;
}

/* Under the lock: link the fully built s into family f, or, when f is NULL,
 * build and link a new family for it. Returns CQ_OK or CQ_ENOMEM (s is
 * then not linked; the caller frees it). */
static int series_publish(cq_metrics *m, family *f, series *s, const char *name,
                          const char *help, enum kind kind)
{
    if (f != NULL) {
        s->family = f;
        atomic_store_explicit(&f->last->next, s, memory_order_release);
        f->last = s;
        return CQ_OK;
    }
    f = calloc(1, sizeof *f);
    if (f == NULL)
        return CQ_ENOMEM;
    f->name = strdup(name);
    f->help = strdup(help != NULL ? help : "");
    if (f->name == NULL || f->help == NULL) {
        free(f->name);
        free(f->help);
        free(f);
        return CQ_ENOMEM;
    }
    f->kind = kind;
    atomic_init(&f->next, NULL);
    atomic_init(&f->first, s);
    f->last = s;
    s->family = f;
    /* f and s are complete: publish them together. */
    if (m->families_last == NULL)
        atomic_store_explicit(&m->families, f, memory_order_release);
    else
        atomic_store_explicit(&m->families_last->next, f, memory_order_release);
    m->families_last = f;
    return CQ_OK;
}

/* A new series with a copy of labels, or NULL. */
static series *series_new(size_t size, const char *labels)
{
    series *s = line_alloc(size);

    if (s == NULL)
        return NULL;
    atomic_init(&s->next, NULL);
    atomic_init(&s->value, 0);
    s->labels = strdup(labels);
    if (s->labels == NULL) {
        free(s);
        return NULL;
    }
    return s;
}

cq_counter *cq_metrics_counter(cq_metrics *m, const char *name,
                               const char *help, const char *labels)
{
    family *f;
    series *s = NULL;

    if (m == NULL || !valid_name(name))
        return NULL;
    if (labels == NULL)
        labels = "";
    pthread_mutex_lock(&m->lock);
    f = family_find(m, name);
    if (f != NULL && f->kind != KIND_COUNTER)
        goto fail;
    if (f != NULL && (s = series_find(f, labels)) != NULL)
        goto done;
    s = series_new(sizeof(cq_counter), labels);
    if (s == NULL)
        goto fail;
    if (series_publish(m, f, s, name, help, KIND_COUNTER) != CQ_OK)
        goto fail;
done:
    pthread_mutex_unlock(&m->lock);
    return (cq_counter *)s;
fail:
    pthread_mutex_unlock(&m->lock);
    series_free(s);
    return NULL;
}

void cq_counter_add(cq_counter *c, uint64_t n)
{
    if (c != NULL)
        atomic_fetch_add_explicit(&c->s.value, n, memory_order_relaxed);
}

uint64_t cq_counter_value(const cq_counter *c)
{
    if (c == NULL)
        return 0;
    return atomic_load_explicit(&((cq_counter *)c)->s.value,
                                memory_order_relaxed);
}

static int bounds_valid(const double *bounds, int nbounds)
{
    if (nbounds < 0 || (nbounds > 0 && bounds == NULL))
        return 0;
    for (int i = 0; i < nbounds; i++) {
        if (!isfinite(bounds[i]))
            return 0;
        if (i > 0 && !(bounds[i] > bounds[i - 1]))
            return 0;
    }
    return 1;
}

static int bounds_equal(const series *s, const double *bounds, int nbounds)
{
    if (s->nbounds != nbounds)
        return 0;
    for (int i = 0; i < nbounds; i++)
        if (s->bounds[i] != bounds[i])
            return 0;
    return 1;
}

cq_histogram *cq_metrics_histogram(cq_metrics *m, const char *name,
                                   const char *help, const char *labels,
                                   const double *bounds, int nbounds)
{
    family *f;
    series *s = NULL;

    if (m == NULL || !valid_name(name) || !bounds_valid(bounds, nbounds))
        return NULL;
    if (labels == NULL)
        labels = "";
    pthread_mutex_lock(&m->lock);
    f = family_find(m, name);
    if (f != NULL && f->kind != KIND_HISTOGRAM)
        goto fail;
    if (f != NULL && (s = series_find(f, labels)) != NULL) {
        if (!bounds_equal(s, bounds, nbounds)) {
            s = NULL; /* not ours to free */
            goto fail;
        }
        goto done;
    }
    s = series_new(sizeof(cq_histogram), labels);
    if (s == NULL)
        goto fail;
    atomic_store_explicit(&s->value, double_bits(0.0), memory_order_relaxed);
    s->nbounds = nbounds;
    s->counts = line_alloc(sizeof(_Atomic uint64_t) * (size_t)(nbounds + 1));
    s->bounds = malloc(sizeof(double) * (size_t)(nbounds > 0 ? nbounds : 1));
    if (s->counts == NULL || s->bounds == NULL)
        goto fail;
    for (int i = 0; i <= nbounds; i++)
        atomic_init(&s->counts[i], 0);
    if (nbounds > 0)
        memcpy(s->bounds, bounds, sizeof(double) * (size_t)nbounds);
    if (series_publish(m, f, s, name, help, KIND_HISTOGRAM) != CQ_OK)
        goto fail;
done:
    pthread_mutex_unlock(&m->lock);
    return (cq_histogram *)s;
fail:
    pthread_mutex_unlock(&m->lock);
    series_free(s);
    return NULL;
}

void cq_histogram_observe(cq_histogram *h, double value)
{
    series *s;
    int lo, hi;
    uint64_t old, sum;

    if (h == NULL || isnan(value))
        return;
    s = &h->s;
    /* The first bound >= value (Prometheus buckets are "le"); nbounds if
     * none, which is the +Inf bucket. */
    lo = 0;
    hi = s->nbounds;
    while (lo < hi) {
        int mid = lo + (hi - lo) / 2;
        if (s->bounds[mid] >= value)
            hi = mid;
        else
            lo = mid + 1;
    }
    atomic_fetch_add_explicit(&s->counts[lo], 1, memory_order_relaxed);
    old = atomic_load_explicit(&s->value, memory_order_relaxed);
    do {
        sum = double_bits(bits_double(old) + value);
    } while (!atomic_compare_exchange_weak_explicit(
        &s->value, &old, sum, memory_order_relaxed, memory_order_relaxed));
}

int cq_metrics_collect(cq_metrics *m, cq_metrics_collector cb, void *arg)
{
    collector *c;

    if (m == NULL || cb == NULL)
        return CQ_EINVAL;
    c = calloc(1, sizeof *c);
    if (c == NULL)
        return CQ_ENOMEM;
    atomic_init(&c->next, NULL);
    c->cb = cb;
    c->arg = arg;
    pthread_mutex_lock(&m->lock);
    if (m->collectors_last == NULL)
        atomic_store_explicit(&m->collectors, c, memory_order_release);
    else
        atomic_store_explicit(&m->collectors_last->next, c,
                              memory_order_release);
    m->collectors_last = c;
    pthread_mutex_unlock(&m->lock);
    return CQ_OK;
}

/* ---- rendering ----------------------------------------------------------- */

/* "# HELP name help\n# TYPE name type\n"; help escapes \ and newline. */
static void family_header(cq_strbuf *out, const char *name, const char *help,
                          const char *type)
{
    const char *run;

    cq_strbuf_puts(out, "# HELP ");
    cq_strbuf_puts(out, name);
    cq_strbuf_add(out, " ", 1);
    for (run = help; *help; help++) {
        if (*help != '\\' && *help != '\n')
            continue;
        cq_strbuf_add(out, run, (size_t)(help - run));
        cq_strbuf_puts(out, *help == '\\' ? "\\\\" : "\\n");
        run = help + 1;
    }
    cq_strbuf_add(out, run, (size_t)(help - run));
    cq_strbuf_puts(out, "\n# TYPE ");
    cq_strbuf_puts(out, name);
    cq_strbuf_add(out, " ", 1);
    cq_strbuf_puts(out, type);
    cq_strbuf_add(out, "\n", 1);
}

/* "name[suffix]{labels[,extra]} " -- the braces only when there are labels;
 * the caller appends the value and newline. */
static void sample_start(cq_strbuf *out, const char *name, const char *suffix,
                         const char *labels, const char *extra)
{
    int has_labels = labels != NULL && *labels != '\0';
    int has_extra = extra != NULL && *extra != '\0';

    cq_strbuf_puts(out, name);
    if (suffix != NULL)
        cq_strbuf_puts(out, suffix);
    if (has_labels || has_extra) {
        cq_strbuf_add(out, "{", 1);
        if (has_labels)
            cq_strbuf_puts(out, labels);
        if (has_labels && has_extra)
            cq_strbuf_add(out, ",", 1);
        if (has_extra)
            cq_strbuf_puts(out, extra);
        cq_strbuf_add(out, "}", 1);
    }
    cq_strbuf_add(out, " ", 1);
}

static void put_u64(cq_strbuf *out, uint64_t v)
{
    char num[24];
    int n = snprintf(num, sizeof num, "%" PRIu64 "\n", v);
    cq_strbuf_add(out, num, (size_t)n);
}

static void put_double(cq_strbuf *out, double v)
{
    char num[32];
    format_double(v, num);
    cq_strbuf_puts(out, num);
    cq_strbuf_add(out, "\n", 1);
}

static void render_histogram(cq_strbuf *out, const char *name, series *s)
{
    char le[48], num[32];
    uint64_t total = 0;

    for (int i = 0; i <= s->nbounds; i++) {
        total += atomic_load_explicit(&s->counts[i], memory_order_relaxed);
        if (i < s->nbounds) {
            format_double(s->bounds[i], num);
            snprintf(le, sizeof le, "le=\"%s\"", num);
        } else {
            strcpy(le, "le=\"+Inf\"");
        }
        sample_start(out, name, "_bucket", s->labels, le);
        put_u64(out, total);
    }
    sample_start(out, name, "_sum", s->labels, NULL);
    put_double(out, bits_double(
                        atomic_load_explicit(&s->value, memory_order_relaxed)));
    sample_start(out, name, "_count", s->labels, NULL);
    put_u64(out, total);
}

char *cq_metrics_render(cq_metrics *m)
{
    cq_strbuf out = CQ_STRBUF_INIT;

    if (m == NULL)
        return NULL;
    for (family *f = atomic_load_explicit(&m->families, memory_order_acquire);
         f != NULL; f = atomic_load_explicit(&f->next, memory_order_acquire)) {
        family_header(&out, f->name, f->help,
                      f->kind == KIND_COUNTER ? "counter" : "histogram");
        for (series *s = atomic_load_explicit(&f->first, memory_order_acquire);
             s != NULL;
             s = atomic_load_explicit(&s->next, memory_order_acquire)) {
            if (f->kind == KIND_HISTOGRAM) {
                render_histogram(&out, f->name, s);
                continue;
            }
            sample_start(&out, f->name, NULL, s->labels, NULL);
            put_u64(&out,
                    atomic_load_explicit(&s->value, memory_order_relaxed));
        }
    }
    for (collector *c =
             atomic_load_explicit(&m->collectors, memory_order_acquire);
         c != NULL; c = atomic_load_explicit(&c->next, memory_order_acquire))
        c->cb(c->arg, &out);
    return cq_strbuf_take(&out);
}

void cq_metrics_gauge_family(cq_strbuf *out, const char *name, const char *help)
{
    family_header(out, name, help != NULL ? help : "", "gauge");
}

void cq_metrics_gauge(cq_strbuf *out, const char *name, const char *labels,
                      double value)
{
    sample_start(out, name, NULL, labels, NULL);
    put_double(out, value);
}

void cq_metrics_label_escape(const char *value, char *buf, size_t cap)
{
    size_t len = 0;

    if (cap == 0)
        return;
    for (const unsigned char *p = (const unsigned char *)value; *p;) {
        char esc[2];
        const char *piece = (const char *)p;
        size_t n = 1;

        if (*p == '\\' || *p == '"' || *p == '\n') {
            esc[0] = '\\';
            esc[1] = *p == '\n' ? 'n' : (char)*p;
            piece = esc;
            n = 2;
        } else if (*p >= 0x80) {
            /* keep a UTF-8 sequence whole: its lead byte and continuations */
            while (p[n] >= 0x80 && p[n] < 0xc0 && n < 4)
                n++;
        }
        if (len + n > cap - 1)
            break;
        memcpy(buf + len, piece, n);
        len += n;
        p += piece == esc ? 1 : n;
    }
    buf[len] = '\0';
}
