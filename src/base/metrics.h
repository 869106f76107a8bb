/*
 * metrics.h -- a small registry of counters, histograms and scrape-time
 * gauges, rendered as Prometheus text exposition format 0.0.4 for
 * GET /metrics.
 *
 * Threads. Updates (cq_counter_add, cq_histogram_observe) are lock-free
 * C11 atomics and may run on any thread at any time; they never allocate.
 * Registration (cq_metrics_counter, cq_metrics_histogram, cq_metrics_collect)
 * is meant for startup; it takes the registry's mutex, so it is safe from
 * any thread, but it allocates and should stay off hot paths: keep the
 * returned handle. Rendering takes no lock: the registry's lists are
 * append-only and published with release stores, so cq_metrics_render can
 * run on any thread, concurrently with updates, registrations and other
 * renders. A scrape is not an atomic snapshot: a counter may move between
 * two lines, but each histogram is self-consistent where Prometheus needs it
 * (its _count equals its +Inf bucket and buckets are cumulative).
 *
 * Handles live as long as the registry. Every function accepts a NULL
 * registry or handle and then does nothing (registration returns NULL), so
 * components can run without metrics and a registration that ran out of
 * memory costs an uncounted metric, not a crash.
 *
 * Names and labels are the caller's (they are compile-time constants in
 * the server); label *values* that come from outside (a projection name, a
 * command type) go through cq_metrics_label_escape first.
 */
#ifndef CQ_METRICS_H
#define CQ_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "base/strbuf.h"

typedef struct cq_metrics cq_metrics;
typedef struct cq_counter cq_counter;     /* monotonically increasing */
typedef struct cq_histogram cq_histogram; /* fixed buckets, e.g. seconds */

/* A scrape-time collector: appends complete families (# HELP, # TYPE and
 * samples, e.g. with cq_metrics_gauge_family/cq_metrics_gauge) to out. It
 * runs on the rendering thread, during cq_metrics_render, with no registry
 * lock held; it must be safe to call concurrently with itself if several
 * scrapes may run at once. */
typedef void (*cq_metrics_collector)(void *arg, cq_strbuf *out);

/* A new, empty registry, or NULL when out of memory. */
cq_metrics *cq_metrics_new(void);

/* Free the registry and every handle it gave out. No other thread may use
 * it or its handles any more. Accepts NULL. */
void cq_metrics_free(cq_metrics *m);

/* The counter series name{labels}, registered on first call. name is a
 * Prometheus metric name ([a-zA-Z_:][a-zA-Z0-9_:]*, ending in "_total" by
 * convention), help one line of text, labels the label set as it will be
 * printed between the braces ("type=\"PlaceOrder\",outcome=\"accepted\"",
 * values escaped), or "" / NULL for none. All three are copied. Series of
 * one name form one family, printed together under one # HELP / # TYPE in
 * the order of first registration; the first help given for a name wins.
 * The same name and labels again return the same series. Returns NULL when
 * out of memory, when m is NULL, when name is not a valid metric name, or
 * when name is already a histogram. Thread-safe (takes the registry lock);
 * meant for startup. */
cq_counter *cq_metrics_counter(cq_metrics *m, const char *name,
                               const char *help, const char *labels);

/* Add n to the counter. Lock-free; any thread. NULL c does nothing. */
void cq_counter_add(cq_counter *c, uint64_t n);

/* The counter's current value (for tests and status pages); 0 for a NULL
 * c. Any thread. */
uint64_t cq_counter_value(const cq_counter *c);

/* The histogram series name{labels} with upper bounds bounds[0..nbounds)
 * (finite, strictly increasing; copied; nbounds may be 0, the +Inf bucket
 * is implicit). Rendered as name_bucket{labels,le="..."} (cumulative),
 * name_sum and name_count. name, help and labels as for
 * cq_metrics_counter. The same name and labels again return the same
 * series if the bounds are equal. Returns NULL when out of memory, when m is
 * NULL, on an invalid name or bounds, when name is already a counter, or
 * when name+labels exist with other bounds. Thread-safe (takes the
 * registry lock); meant for startup. */
cq_histogram *cq_metrics_histogram(cq_metrics *m, const char *name,
                                   const char *help, const char *labels,
                                   const double *bounds, int nbounds);

/* Count one observation in the first bucket whose bound is >= value and
 * add it to the sum. Lock-free (an atomic bucket increment and a CAS loop
 * on the sum); any thread. NaN is ignored. NULL h does nothing. */
void cq_histogram_observe(cq_histogram *h, double value);

/* Register cb(arg, out) to run at the end of every render, after counters
 * and histograms, in registration order. arg is borrowed and must outlive
 * the registry (or the last render). Returns CQ_OK, CQ_EINVAL (m or cb
 * NULL) or CQ_ENOMEM. Thread-safe; meant for startup. */
int cq_metrics_collect(cq_metrics *m, cq_metrics_collector cb, void *arg);

/* For collectors: append "# HELP name help" and "# TYPE name gauge" lines
 * (help escaped as the format requires) to out, the buffer the collector
 * was given (its OOM rule applies). name and help are borrowed for the
 * call. Call once per family, then cq_metrics_gauge once per series. */
void cq_metrics_gauge_family(cq_strbuf *out, const char *name,
                             const char *help);

/* For collectors: append the sample line "name{labels} value" (no braces
 * when labels is NULL or "") to out. value is printed exactly (shortest
 * form that reads back equal; NaN, +Inf, -Inf as Prometheus spells them).
 * name and labels (values already escaped) are borrowed for the call. */
void cq_metrics_gauge(cq_strbuf *out, const char *name, const char *labels,
                      double value);

/* Render every family as Prometheus text 0.0.4 (serve it with Content-Type
 * "text/plain; version=0.0.4; charset=utf-8"): counters and histograms in
 * order of first registration, then the collectors' output. Returns a
 * malloc'd string the caller frees, or NULL when out of memory (or m
 * NULL). Any thread, concurrently with everything except
 * cq_metrics_free. */
char *cq_metrics_render(cq_metrics *m);

/* Escape a label value for use between quotes: backslash, double quote and
 * newline become \\, \" and \n. Writes a NUL-terminated string into
 * buf[0..cap) (cap >= 1); an escaped value that does not fit is cut short
 * before the escape sequence or UTF-8 character that would not fit, so the
 * result is always a valid label value. Thread-safe (no state). */
void cq_metrics_label_escape(const char *value, char *buf, size_t cap);

#endif
