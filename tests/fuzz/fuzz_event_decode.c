/*
 * fuzz_event_decode.c -- fuzz target for the decoder of stored events
 * (cq_event_decode): bytes from the disk -> an event's data and metadata
 * -> parse, upcast with the orders domain, with every flag, with and
 * without data parsed by the caller.
 *
 * Input: the first byte picks the type and schema version (bit 0: 1 or 2;
 * bit 1: OrderPlaced or PaymentReceived); the rest is the data text, then
 * an optional newline and the metadata text.
 *
 * Built as fuzz_command_body.c is (tests/CMakeLists.txt): replayed over
 * tests/fuzz/corpus/event_decode by ctest, or linked with libFuzzer. It
 * asserts what the decoder promises: the caller's data is never changed,
 * and out.data is NULL exactly when data or upcast failed (without
 * CQ_DECODE_AS_STORED); sanitizers check the rest.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "domain/domain.h"
#include "orders/orders.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const cq_domain *dom = orders_domain();
    char *text, *nl, *before = NULL;
    cq_stored_event se = {1, "order-o-1", 1, NULL, 1, NULL, NULL, 0};
    json_t *parsed;

    if (size == 0)
        return 0;
    text = malloc(size);
    if (text == NULL)
        return 0;
    memcpy(text, data + 1, size - 1);
    text[size - 1] = '\0';
    nl = strchr(text, '\n');
    if (nl != NULL)
        *nl = '\0';
    se.schema_version = (data[0] & 1) ? 2 : 1;
    se.type = (data[0] & 2) ? "PaymentReceived" : "OrderPlaced";
    se.data = text;
    se.metadata = nl != NULL ? nl + 1 : "{}";
    parsed = json_loads(text, JSON_REJECT_DUPLICATES, NULL);
    if (parsed != NULL)
        before = json_dumps(parsed, JSON_COMPACT | JSON_SORT_KEYS);

    for (unsigned flags = 0; flags < 4; flags++) {
        for (int borrow = 0; borrow < 2; borrow++) {
            cq_decoded d;
            char err[192];
            int rc = cq_event_decode(dom, &se, borrow ? parsed : NULL, flags,
                                     &d, err, sizeof err);

            if (rc == CQ_OK && (d.data == NULL || err[0] != '\0'))
                abort();
            if (rc != CQ_OK && (d.cause == CQ_DECODE_OK || err[0] == '\0'))
                abort();
            if (!(flags & CQ_DECODE_AS_STORED) &&
                (d.data == NULL) != (d.cause == CQ_DECODE_BAD_DATA ||
                                     d.cause == CQ_DECODE_UPCAST_FAILED))
                abort();
            cq_decoded_clear(&d);
        }
    }
    if (parsed != NULL) {
        char *after = json_dumps(parsed, JSON_COMPACT | JSON_SORT_KEYS);
        if (before != NULL && after != NULL && strcmp(before, after) != 0)
            abort(); /* an upcaster ran on the caller's data */
        free(after);
    }
    free(before);
    json_decref(parsed);
    free(text);
    return 0;
}
