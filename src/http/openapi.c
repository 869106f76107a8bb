/*
 * openapi.c -- GET /openapi.yaml: docs/openapi.yaml, compiled in
 * (cmake/embed.cmake), so the description served is the one the binary
 * was built with.
 *
 * Threads: any MHD thread; the text is constant.
 */
#include <microhttpd.h>
#include <string.h>

#include "http/http.h"

enum MHD_Result cq_http_openapi(request *q)
{
    const cq_http_file *f = &cq_http_openapi_files[0];
    struct MHD_Response *r;
    enum MHD_Result ret;

    if (!cq_http_params_ok(q, (const char *const[]){NULL}, &ret))
        return ret;
    r = MHD_create_response_from_buffer(f->len, (void *)f->text,
                                        MHD_RESPMEM_PERSISTENT);
    if (r == NULL)
        return MHD_NO;
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE,
                            "application/yaml");
    ret = MHD_queue_response(q->conn, 200, r);
    MHD_destroy_response(r);
    return ret;
}
