/*
 * decode.c -- a stored event decoded for handlers: its data (upcast to
 * the current schema version, on a copy when it was borrowed), its
 * metadata if a handler reads it, its time and day. One event is decoded
 * once and applied to every projection that needs it.
 *
 * Threads: pure; called by the projector thread, the writer (inline
 * hooks) and strong reads, each on its own events.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/base.h"
#include "command/command.h"
#include "projection/engine_int.h"

/* ---- applying events ----------------------------------------------------- */

/* Decode se (data, and metadata if need_meta) into pe. `data`, if not
 * NULL, is se->data already parsed (borrowed). CQ_OK or CQ_ECORRUPT. */
int cq_eng_parse_event(const cq_domain *dom, const cq_stored_event *se,
                       const json_t *data, int need_meta, parsed *pe)
{
    int sv = se->schema_version;

    memset(pe, 0, sizeof *pe);
    if (data != NULL && !cq_domain_upcaster(dom, se->type, sv)) {
        pe->data = (json_t *)data;
        pe->borrowed = 1;
    } else {
        /* an old shape is upcast in place: on our own copy */
        int rc = CQ_OK;
        pe->data = data ? json_deep_copy(data)
                        : json_loads(se->data, JSON_REJECT_DUPLICATES, NULL);
        if (!json_is_object(pe->data))
            snprintf(pe->why, sizeof pe->why,
                     "stored data is not a JSON object");
        else if ((rc = cq_domain_upcast(dom, se->type, &sv, pe->data)) !=
                 CQ_OK) {
            snprintf(pe->why, sizeof pe->why,
                     "upcasting %.64s from schema version %d failed: %s",
                     se->type, sv, cq_strerror(rc));
            json_decref(pe->data);
            pe->data = NULL; /* reported as undecodable below */
        }
    }
    if (need_meta) {
        pe->meta = json_loads(se->metadata, JSON_REJECT_DUPLICATES, NULL);
        if (!json_is_object(pe->meta) && pe->why[0] == '\0')
            snprintf(pe->why, sizeof pe->why,
                     "stored metadata is not a JSON object");
    }
    cq_format_time(se->recorded_at, pe->when);
    memcpy(pe->day, pe->when, 10);
    pe->day[10] = '\0';
    pe->ev.stream_id = se->stream_id;
    pe->ev.version = se->version;
    pe->ev.position = se->position;
    pe->ev.type = se->type;
    pe->ev.time = pe->when;
    pe->ev.day = pe->day;
    pe->ev.data = pe->data;
    pe->ev.metadata = pe->meta;
    if (!json_is_object(pe->data) || (need_meta && !json_is_object(pe->meta)))
        return CQ_ECORRUPT;
    return CQ_OK;
}

void cq_eng_parsed_clear(parsed *pe)
{
    if (!pe->borrowed)
        json_decref(pe->data);
    json_decref(pe->meta);
    pe->data = pe->meta = NULL;
}
