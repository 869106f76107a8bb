/*
 * fuzz_server.c -- the whole server inside a fuzz target (fuzz_server.h).
 *
 * Started as src/main.c's serve() starts it, with the same parts and the
 * orders read models; only the address (127.0.0.1, a port of its own),
 * the directory (a fresh one under $TMPDIR) and the connection limits
 * (no per-address limit below the total: every request comes from
 * 127.0.0.1) are the harness's.
 */
#include "fuzz_server.h"

#include <arpa/inet.h>
#include <errno.h>
#include <ftw.h>
#include <jansson.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "command/writer.h"
#include "cqrs/cqrs.h"
#include "http/server.h"
#include "orders/orders.h"
#include "projection/engine.h"
#include "query/query.h"
#include "store/store.h"
#include "wiring.h"

static struct {
    int up;
    char dir[512];
    cq_store *store;
    cq_engine *engine;
    cq_writer *writer;
    cq_server *server;
    unsigned port;
} fz;

static int rm_one(const char *path, const struct stat *sb, int flag,
                  struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    remove(path);
    return 0;
}

static void fz_stop(void)
{
    if (!fz.up)
        return;
    cq_writer_stop(fz.writer);
    cq_engine_stop(fz.engine);
    cq_server_stop(fz.server, 5000);
    cq_writer_free(fz.writer);
    cq_engine_free(fz.engine);
    cq_store_close(fz.store);
    nftw(fz.dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
    fz.up = 0;
}

static void fz_die(const char *what, const char *err)
{
    fprintf(stderr, "fuzz_server: %s: %s\n", what, err);
    abort();
}

static void fz_start(void)
{
    const char *tmp = getenv("TMPDIR");
    cq_store_config scfg = {0};
    cq_engine_config ecfg = {0};
    cq_writer_config wcfg = {0};
    cq_server_config hcfg;
    struct sockaddr_in *in = (struct sockaddr_in *)&hcfg.addr;
    char err[512];
    int rc;

    snprintf(fz.dir, sizeof fz.dir, "%s/cqrsd-fuzz-XXXXXX",
             tmp && *tmp ? tmp : "/tmp");
    if (mkdtemp(fz.dir) == NULL)
        fz_die("mkdtemp", strerror(errno));
    signal(SIGPIPE, SIG_IGN);
    scfg.dir = fz.dir;
    scfg.sync_full = 0; /* a scratch store: durability is not under test */
    scfg.read_connections = 4;
    if (cq_store_open(&scfg, &fz.store, err, sizeof err) != CQ_OK)
        fz_die("cq_store_open", err);
    ecfg.dir = fz.dir;
    ecfg.domain = orders_domain();
    rc = cq_engine_new(&ecfg, fz.store, &fz.engine, err, sizeof err);
    for (const orders_sql_file *f = orders_projection_files;
         rc == CQ_OK && f->name; f++)
        rc = cq_engine_load_text(fz.engine, f->name, f->text, f->len, err,
                                 sizeof err);
    if (rc == CQ_OK)
        rc = cq_query_attach(fz.engine, err, sizeof err);
    if (rc == CQ_OK)
        rc = cq_engine_start(fz.engine, err, sizeof err);
    if (rc != CQ_OK)
        fz_die("the projection engine", err);
    wcfg.hooks = cq_wiring_writer_hooks(fz.engine);
    wcfg.domain = orders_domain();
    if (cq_writer_start(fz.store, &wcfg, &fz.writer) != CQ_OK)
        fz_die("cq_writer_start", "cannot start the writer");
    memset(&hcfg, 0, sizeof hcfg);
    in->sin_family = AF_INET;
    in->sin_port = 0;
    in->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    hcfg.addrlen = sizeof *in;
    hcfg.threads = 2;
    hcfg.max_connections = 4096;
    hcfg.max_connections_per_ip = 4096;
    hcfg.header_timeout_s = 5;
    if (cq_server_start(&hcfg, fz.store, fz.writer, fz.engine, orders_domain(),
                        &fz.server, err, sizeof err) != CQ_OK)
        fz_die("cq_server_start", err);
    fz.port = cq_server_port(fz.server);
    fz.up = 1;
    atexit(fz_stop);
}

unsigned fz_server_port(void)
{
    if (!fz.up)
        fz_start();
    return fz.port;
}

const char *fz_server_dir(void)
{
    if (!fz.up)
        fz_start();
    return fz.dir;
}

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* The answer in buf[0..n) once it is complete: its head parsed into *a
 * and 1; 0 while more is needed. At EOF (eof) whatever came is it. */
static int parse_answer(const char *buf, size_t n, int eof, int head_req,
                        fz_answer *a)
{
    const char *end = memmem(buf, n, "\r\n\r\n", 4), *p, *line;
    size_t head, clen = (size_t)-1;
    int status;

    if (end == NULL)
        return 0;
    head = (size_t)(end - buf) + 4;
    if (sscanf(buf, "HTTP/1.%*d %d", &status) != 1)
        return eof;
    a->ctype[0] = '\0';
    for (line = memchr(buf, '\n', head); line != NULL && line < end;
         line = memchr(line + 1, '\n', (size_t)(end - line))) {
        p = line + 1;
        if (strncasecmp(p, "content-length:", 15) == 0)
            clen = strtoul(p + 15, NULL, 10);
        else if (strncasecmp(p, "content-type:", 13) == 0) {
            size_t k = 0;
            p += 13;
            while (*p == ' ')
                p++;
            while (p < end && *p != '\r' && k + 1 < sizeof a->ctype)
                a->ctype[k++] = *p++;
            a->ctype[k] = '\0';
        }
    }
    /* no body: an answer to HEAD, 204 and 304 */
    if (head_req || status == 204 || status == 304)
        clen = 0;
    if (clen == (size_t)-1 ? !eof : n - head < clen)
        return 0;
    if (clen == (size_t)-1)
        clen = n - head;
    a->body = malloc(clen + 1);
    if (a->body == NULL)
        abort();
    memcpy(a->body, buf + head, clen);
    a->body[clen] = '\0';
    a->len = clen;
    a->status = status;
    return 1;
}

void fz_exchange(const char *req, size_t len, int timeout_ms, fz_answer *a)
{
    struct sockaddr_in sa;
    long long deadline = now_ms() + timeout_ms;
    char *buf = NULL;
    size_t n = 0, cap = 0, sent = 0;
    int fd, done = 0, head_req = len >= 5 && memcmp(req, "HEAD ", 5) == 0;

    memset(a, 0, sizeof *a);
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons((unsigned short)fz_server_port());
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        fz_die("socket", strerror(errno));
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0 &&
        errno != EINPROGRESS)
        fz_die("connect", strerror(errno));
    while (!done) {
        struct pollfd pfd = {fd, POLLIN, 0};
        long long left = deadline - now_ms();
        ssize_t r;

        if (left <= 0)
            break;
        if (sent < len)
            pfd.events |= POLLOUT;
        if (poll(&pfd, 1, (int)left) <= 0)
            continue;
        if ((pfd.revents & POLLOUT) && sent < len) {
            r = send(fd, req + sent, len - sent, MSG_NOSIGNAL);
            if (r > 0)
                sent += (size_t)r;
            else if (r < 0 && errno != EAGAIN && errno != EINTR)
                sent = len; /* the server stopped reading: hear it out */
        }
        if (pfd.revents & (POLLIN | POLLHUP | POLLERR)) {
            if (cap - n < 65536) {
                cap = cap ? cap * 2 : 131072;
                buf = realloc(buf, cap);
                if (buf == NULL)
                    abort();
            }
            r = recv(fd, buf + n, cap - n - 1, 0);
            if (r > 0) {
                n += (size_t)r;
                done = parse_answer(buf, n, 0, head_req, a);
            } else if (r == 0 || (errno != EAGAIN && errno != EINTR)) {
                if (n > 0)
                    parse_answer(buf, n, 1, head_req, a);
                done = 1;
            }
        }
    }
    free(buf);
    close(fd);
    if (getenv("CQ_FUZZ_VERBOSE") != NULL)
        fprintf(stderr, "fuzz_server: %.*s -> %d %s %.*s\n",
                (int)strcspn(req, "\r\n"), req, a->status, a->ctype,
                (int)(a->len > 160 ? 160 : a->len), a->body ? a->body : "");
}

void fz_answer_free(fz_answer *a)
{
    free(a->body);
    memset(a, 0, sizeof *a);
}

void fz_fail(const char *why, const char *req, size_t len, const fz_answer *a)
{
    fprintf(stderr, "fuzz: %s\n--- request (%zu bytes) ---\n%.*s\n", why, len,
            (int)(len > 4000 ? 4000 : len), req);
    fprintf(stderr, "--- answer: %d %s ---\n%.*s\n", a->status, a->ctype,
            (int)(a->len > 4000 ? 4000 : a->len), a->body ? a->body : "");
    abort();
}

void fz_check_problem(const char *req, size_t len, const fz_answer *a)
{
    json_t *doc, *type, *status;
    const char *t;

    if (a->status < 400)
        return;
    if (strncmp(a->ctype, "application/problem+json", 24) != 0) {
        if (a->status == 400 || a->status == 413 || a->status == 414 ||
            a->status == 431)
            return; /* libmicrohttpd's own page */
        fz_fail("an error that is not problem+json", req, len, a);
    }
    if (len >= 5 && memcmp(req, "HEAD ", 5) == 0)
        return; /* the same head as GET's, without the body */
    doc = json_loadb(a->body, a->len, 0, NULL);
    type = json_object_get(doc, "type");
    status = json_object_get(doc, "status");
    t = json_string_value(type);
    if (!json_is_object(doc) || t == NULL ||
        strncmp(t, "urn:cqrsd:problem:", 18) != 0 || t[18] == '\0' ||
        !json_is_integer(status) || json_integer_value(status) != a->status ||
        !json_is_string(json_object_get(doc, "title")) ||
        !json_is_string(json_object_get(doc, "detail")))
        fz_fail("a malformed problem document", req, len, a);
    json_decref(doc);
}
