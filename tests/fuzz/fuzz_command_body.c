/*
 * fuzz_command_body.c -- fuzz target for the decoding of command bodies:
 * bytes from the network -> JSON (jansson, with the server's flags: an
 * object, as the server takes nothing else) ->
 * every orders command's schema check, validate() and stream_id(), and,
 * for bodies that pass, decide() on an empty and on a placed order.
 *
 * Built two ways (tests/CMakeLists.txt):
 *   - always, with replay.c's main(), which replays every file of the
 *     corpus directories given on the command line (ctest runs it over
 *     tests/fuzz/corpus/command_body, under ASan+UBSan in make test);
 *   - with clang and -DCQ_FUZZ=ON, linked with libFuzzer (-fsanitize=fuzzer)
 *     to explore: ./fuzz_command_body tests/fuzz/corpus/command_body
 * It asserts nothing but the absence of crashes, leaks and UB, which the
 * sanitizers check.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "command/command.h"
#include "orders/orders.h"

static void *placed_order(const cq_aggregate *agg)
{
    static const char data[] =
        "{\"order_id\":\"o-1\",\"customer_id\":\"c\",\"currency\":\"EUR\","
        "\"items\":[{\"sku\":\"A\",\"quantity\":1,\"unit_price_cents\":100}],"
        "\"total_cents\":100}";
    void *state = agg->initial();
    json_t *d = json_loads(data, 0, NULL);
    cq_event ev = {"OrderPlaced", 2, 1, 1, d};

    if (state != NULL && d != NULL)
        agg->evolve(state, &ev);
    json_decref(d);
    return state;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const cq_domain *dom = orders_domain();
    json_t *body = json_loadb((const char *)data, size,
                              JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, NULL);

    if (body == NULL)
        return 0;
    if (!json_is_object(body)) { /* the server answers 400 before these */
        json_decref(body);
        return 0;
    }
    for (size_t i = 0; dom->commands[i] != NULL; i++) {
        const cq_command_def *def = dom->commands[i];
        cq_errors *errs = cq_errors_new();
        char stream[256];
        json_t *errors;

        if (errs == NULL)
            break;
        cq_schema_check(def->schema, body, "", errs);
        if (cq_errors_count(errs) == 0 && def->validate != NULL)
            def->validate(body, errs);
        errors = cq_errors_to_json(errs);
        json_decref(errors);
        if (cq_errors_count(errs) == 0 &&
            def->stream_id(body, stream, sizeof stream) == CQ_OK) {
            void *states[2] = {def->aggregate->initial(),
                               placed_order(def->aggregate)};
            for (int s = 0; s < 2; s++) {
                cq_decision *d = cq_decision_new();
                if (states[s] != NULL && d != NULL)
                    def->decide(states[s], body, d);
                cq_decision_free(d);
                def->aggregate->free(states[s]);
            }
        }
        cq_errors_free(errs);
    }
    json_decref(body);
    return 0;
}
