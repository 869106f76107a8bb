/*
 * domain.h -- the domain registry: engine-side lookups in a cq_domain (the
 * public half -- cq_domain_command, cq_domain_stream_owner,
 * cq_domain_type_owner, cq_domain_upcast -- is in include/cqrs/decider.h).
 * See src/domain/README.md.
 *
 * A cq_domain is a constant table owned by the embedder; everything here
 * only reads it and is thread-safe.
 */
#ifndef CQ_DOMAIN_H
#define CQ_DOMAIN_H

#include <jansson.h>

#include "cqrs/decider.h"

/* The upcaster `domain` uses for a `type` event at `schema_version`: the
 * first one listed for that pair (borrowed from the domain), or NULL when
 * there is none or `domain` or `type` is NULL. Thread-safe. */
const cq_upcaster *cq_domain_upcaster(const cq_domain *domain, const char *type,
                                      int schema_version);

#endif
