/*
 * decode.c -- the one decoder of stored events: the text of an event's
 * data and metadata, as the store holds it, into the JSON objects handlers
 * and evolve() read, in the newest shape the domain's upcasters know.
 *
 * Every reader of events uses it (the writer folding an aggregate, the
 * projector and rebuilds, verify, strong reads, the streams API), so an
 * event is either readable everywhere or refused everywhere, with the same
 * words. The protocol is in src/domain/README.md; in short:
 *
 *   1. data: the caller's parsed copy (borrowed) or parsed here; it must
 *      be a JSON object;
 *   2. metadata, when asked for: parsed here; it must be a JSON object;
 *   3. upcast: only if an upcaster applies to (type, schema version), and
 *      on a deep copy when the data is borrowed (or must be kept as stored)
 *      -- the common case, a current event handed over by the writer, costs
 *      no copy at all;
 *   4. the first failure in the order data, upcast, metadata is returned
 *      and described.
 *
 * Stored bytes are untrusted: every failure is a return code, never an
 * assert. No state; thread-safe.
 */
#include <stdio.h>
#include <string.h>

#include "domain/domain.h"

static json_t *parse_object(const char *text)
{
    json_t *j;

    if (text == NULL)
        return NULL;
    j = json_loads(text, JSON_REJECT_DUPLICATES, NULL);
    if (!json_is_object(j)) {
        json_decref(j);
        return NULL;
    }
    return j;
}

static void set_err(char *err, size_t errcap, const char *msg)
{
    if (errcap > 0)
        snprintf(err, errcap, "%s", msg);
}

/* Step 3: upcast out->data (already an object, at se's version). */
static int upcast(const cq_domain *domain, const cq_stored_event *se,
                  unsigned flags, cq_decoded *out, char *err, size_t errcap)
{
    int keep = out->borrowed || (flags & CQ_DECODE_AS_STORED);
    int sv = out->schema_version, rc;
    json_t *work;

    if (cq_domain_upcaster(domain, se->type, sv) == NULL)
        return CQ_OK;
    /* an old shape is upcast in place: on our own copy unless the data is
     * already ours and need not survive a failure */
    work = keep ? json_deep_copy(out->data) : out->data;
    rc = work != NULL ? cq_domain_upcast(domain, se->type, &sv, work)
                      : CQ_ENOMEM;
    if (rc == CQ_OK) {
        if (keep && !out->borrowed)
            json_decref(out->data);
        out->data = work;
        out->borrowed = 0;
        out->schema_version = sv;
        return CQ_OK;
    }
    if (errcap > 0)
        snprintf(err, errcap,
                 "upcasting %.64s from schema version %d failed: %s",
                 se->type != NULL ? se->type : "?", sv, cq_strerror(rc));
    if (keep)
        json_decref(work); /* the copy; out->data is still as stored */
    if (!(flags & CQ_DECODE_AS_STORED)) {
        if (!out->borrowed)
            json_decref(out->data); /* ours, maybe half upcast */
        out->data = NULL;
        out->borrowed = 0;
    }
    return rc;
}

/* See domain.h. */
int cq_event_decode(const cq_domain *domain, const cq_stored_event *se,
                    const json_t *parsed_data, unsigned flags, cq_decoded *out,
                    char *err, size_t errcap)
{
    int data_rc = CQ_OK, meta_ok = 1;

    memset(out, 0, sizeof *out);
    if (errcap > 0)
        err[0] = '\0';
    out->schema_version = se->schema_version;

    /* 1. data */
    if (parsed_data != NULL && json_is_object(parsed_data)) {
        out->data = (json_t *)parsed_data;
        out->borrowed = 1;
    } else if (parsed_data == NULL) {
        out->data = parse_object(se->data);
    }
    if (out->data == NULL) {
        out->cause = CQ_DECODE_BAD_DATA;
        data_rc = CQ_ECORRUPT;
        set_err(err, errcap, "stored data is not a JSON object");
    }

    /* 2. metadata */
    if (flags & CQ_DECODE_METADATA) {
        out->metadata = parse_object(se->metadata);
        meta_ok = out->metadata != NULL;
    }

    /* 3. upcast */
    if (data_rc == CQ_OK && (meta_ok || !(flags & CQ_DECODE_AS_STORED))) {
        data_rc = upcast(domain, se, flags, out, err, errcap);
        if (data_rc != CQ_OK)
            out->cause = CQ_DECODE_UPCAST_FAILED;
    }

    /* 4. the first failure */
    if (data_rc != CQ_OK)
        return data_rc;
    if (!meta_ok) {
        out->cause = CQ_DECODE_BAD_METADATA;
        set_err(err, errcap, "stored metadata is not a JSON object");
        return CQ_ECORRUPT;
    }
    return CQ_OK;
}

/* See domain.h. */
void cq_decoded_clear(cq_decoded *d)
{
    if (d == NULL)
        return;
    if (!d->borrowed)
        json_decref(d->data);
    json_decref(d->metadata);
    memset(d, 0, sizeof *d);
}
