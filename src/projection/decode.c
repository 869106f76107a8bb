/*
 * decode.c -- a stored event decoded for handlers: its data (upcast to
 * the current schema version, on a copy when it was borrowed), its
 * metadata if a handler reads it, its time and day. One event is decoded
 * once and applied to every projection that needs it.
 *
 * Threads: pure; called by the projector thread, the writer (inline
 * hooks) and strong reads, each on its own events.
 */
#include <string.h>

#include "base/base.h"
#include "domain/domain.h"
#include "projection/engine_int.h"

/* Decode se (data, and metadata if need_meta) into pe through the one
 * decoder of stored events (domain/decode.c). `data`, if not NULL, is
 * se->data already parsed (borrowed). CQ_OK or CQ_ECORRUPT (pe->why says
 * why). */
int cq_eng_parse_event(const cq_domain *dom, const cq_stored_event *se,
                       const json_t *data, int need_meta, parsed *pe)
{
    int rc;

    memset(pe, 0, sizeof *pe);
    rc = cq_event_decode(dom, se, data, need_meta ? CQ_DECODE_METADATA : 0,
                         &pe->dec, pe->why, sizeof pe->why);
    cq_format_time(se->recorded_at, pe->when);
    memcpy(pe->day, pe->when, 10);
    pe->day[10] = '\0';
    pe->ev.stream_id = se->stream_id;
    pe->ev.version = se->version;
    pe->ev.position = se->position;
    pe->ev.type = se->type;
    pe->ev.time = pe->when;
    pe->ev.day = pe->day;
    pe->ev.data = pe->dec.data;
    pe->ev.metadata = pe->dec.metadata;
    return rc == CQ_OK ? CQ_OK : CQ_ECORRUPT;
}

void cq_eng_parsed_clear(parsed *pe)
{
    cq_decoded_clear(&pe->dec);
}
