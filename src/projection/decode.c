/*
 * decode.c -- a stored event decoded for handlers: its data (upcast to
 * the current schema version, on a copy when it was borrowed), its
 * metadata if a handler reads it, its time and day. One event is decoded
 * once and applied to every projection that needs it.
 *
 * Threads: pure; called by the projector thread, the writer (inline
 * hooks) and strong reads, each on its own events.
 */
#include <stdlib.h>
#include <string.h>

#include "base/base.h"
#include "domain/domain.h"
#include "projection/engine_int.h"

/* The fields of pe->ev every handler sees, from the stored event: ids,
 * position, and the recorded time as text (whole and its day). */
static void set_event_fields(const cq_stored_event *se, parsed *pe)
{
    cq_format_time(se->recorded_at, pe->when);
    memcpy(pe->day, pe->when, 10);
    pe->day[10] = '\0';
    pe->ev.stream_id = se->stream_id;
    pe->ev.version = se->version;
    pe->ev.position = se->position;
    pe->ev.type = se->type;
    pe->ev.time = pe->when;
    pe->ev.day = pe->day;
}

/* Decode se (data, and metadata if need_meta) into pe through the one
 * decoder of stored events (domain/decode.c). `data`, if not NULL, is
 * se->data already parsed (borrowed). CQ_OK or CQ_ECORRUPT (pe->why says
 * why). */
int cq_eng_parse_event(const cq_domain *dom, const cq_stored_event *se,
                       const json_t *data, int need_meta, parsed *pe)
{
    int rc;

    memset(pe, 0, sizeof *pe);
    pe->ev.lazy = NULL;
    rc = cq_event_decode(dom, se, data, need_meta ? CQ_DECODE_METADATA : 0,
                         &pe->dec, pe->why, sizeof pe->why);
    set_event_fields(se, pe);
    pe->ev.data = pe->dec.data;
    pe->ev.metadata = pe->dec.metadata;
    return rc == CQ_OK ? CQ_OK : CQ_ECORRUPT;
}

int cq_eng_parse_event_lazy(const cq_domain *dom, const cq_stored_event *se,
                            int need_meta, parsed *pe)
{
    char *text;
    json_t *doc;
    int rc;

    if (need_meta || se->data == NULL || (text = strdup(se->data)) == NULL)
        return cq_eng_parse_event(dom, se, NULL, need_meta, pe);
    memset(pe, 0, sizeof *pe);
    if (!cq_json_scan(text, &pe->lz.scan)) {
        free(text); /* not sure: jansson decides, as everywhere */
        return cq_eng_parse_event(dom, se, NULL, need_meta, pe);
    }
    if (cq_domain_upcaster(dom, se->type, se->schema_version) != NULL) {
        /* an old shape: upcast now, in place on the document built from
         * the scan (what jansson would give, without its lexer), which is
         * ours: no copy. Should it fail, the event is decoded again the
         * usual way, which fails the same and says why. */
        int sv = se->schema_version;
        doc = cq_json_build(text);
        free(text);
        if (doc == NULL || cq_domain_upcast(dom, se->type, &sv, doc) != CQ_OK) {
            json_decref(doc);
            return cq_eng_parse_event(dom, se, NULL, need_meta, pe);
        }
        /* doc is an object at version sv, the newest: the decoder finds
         * nothing to upcast and borrows it; it is released with pe */
        cq_stored_event at = *se;
        at.schema_version = sv;
        rc = cq_eng_parse_event(dom, &at, doc, need_meta, pe);
        pe->lz.data = doc;
        return rc;
    }
    pe->lz.text = text;
    pe->dec.schema_version = se->schema_version;
    set_event_fields(se, pe);
    pe->ev.lazy = &pe->lz;
    return CQ_OK;
}

const json_t *cq_eng_parsed_data(const parsed *pe)
{
    return pe->ev.data != NULL   ? pe->ev.data
           : pe->ev.lazy != NULL ? cq_decl_lazy_data(pe->ev.lazy)
                                 : NULL;
}

void cq_eng_parsed_clear(parsed *pe)
{
    cq_decoded_clear(&pe->dec);
    free(pe->lz.text);
    json_decref(pe->lz.data);
    pe->lz.text = NULL;
    pe->lz.data = NULL;
    pe->ev.lazy = NULL;
}
