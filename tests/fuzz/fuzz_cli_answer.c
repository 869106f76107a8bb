/*
 * fuzz_cli_answer.c -- fuzz target for `cqrsd projections`' reading of the
 * server's answers (src/cli/client.c): the HTTP status line and head, the
 * JSON body, the status table it prints, a rebuild's progress and its
 * RFC 3339 time stamps. The answers come from a stand-in server on
 * 127.0.0.1 run by this harness, which sends the input's bytes back as
 * they are, one part per request the CLI makes; the CLI itself is the
 * real code, called as main() calls it.
 *
 * Input: byte 0 picks the subcommand (list, status, pause, rebuild
 * --no-wait, rebuild: the last follows the rebuild, polling); the rest is
 * up to three answers separated by the two bytes 0x1e 0x1e. A request
 * beyond them finds the connection closed without an answer.
 *
 * It asserts the CLI's contract (src/cli/README.md): whatever the server
 * answers, it returns an exit code of 0, 1 or 2; sanitizers check the
 * rest. Its table goes to /dev/null; its messages to stderr (run
 * libFuzzer with -close_fd_mask=3 to silence them).
 *
 * Built as the other targets are (tests/CMakeLists.txt, with
 * src/cli/client.c): replayed over tests/fuzz/corpus/cli_answer by ctest,
 * or linked with libFuzzer.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "cli/cli.h"

#define MAX_PARTS 3

static struct {
    pthread_mutex_t mu;
    int listen_fd;
    unsigned port;
    const char *part[MAX_PARTS];
    size_t len[MAX_PARTS];
    int nparts, next;
} srv = {PTHREAD_MUTEX_INITIALIZER, -1, 0, {0}, {0}, 0, 0};

/* The stand-in server: for each connection, read the request head, send
 * the next part (if any) and close. */
static void *serve(void *arg)
{
    (void)arg;
    for (;;) {
        char buf[4096];
        size_t n = 0;
        const char *part = NULL;
        size_t len = 0;
        int fd = accept(srv.listen_fd, NULL, NULL);

        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            return NULL;
        }
        while (n < sizeof buf - 1) {
            ssize_t r = read(fd, buf + n, sizeof buf - 1 - n);
            if (r <= 0)
                break;
            n += (size_t)r;
            buf[n] = '\0';
            if (strstr(buf, "\r\n\r\n") != NULL)
                break;
        }
        pthread_mutex_lock(&srv.mu);
        if (srv.next < srv.nparts) {
            part = srv.part[srv.next];
            len = srv.len[srv.next];
            srv.next++;
        }
        pthread_mutex_unlock(&srv.mu);
        while (part != NULL && len > 0) {
            ssize_t w = send(fd, part, len, MSG_NOSIGNAL);
            if (w <= 0)
                break;
            part += w;
            len -= (size_t)w;
        }
        close(fd);
    }
}

static void start(void)
{
    struct sockaddr_in sa;
    socklen_t sl = sizeof sa;
    pthread_t t;

    signal(SIGPIPE, SIG_IGN);
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    srv.listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (srv.listen_fd < 0 ||
        bind(srv.listen_fd, (struct sockaddr *)&sa, sizeof sa) != 0 ||
        listen(srv.listen_fd, 16) != 0 ||
        getsockname(srv.listen_fd, (struct sockaddr *)&sa, &sl) != 0 ||
        pthread_create(&t, NULL, serve, NULL) != 0) {
        perror("fuzz_cli_answer: the stand-in server");
        abort();
    }
    pthread_detach(t);
    srv.port = ntohs(sa.sin_port);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char *const cmds[][3] = {
        {"list", NULL, NULL},
        {"status", "order_summaries", NULL},
        {"pause", "sales_dashboard", NULL},
        {"rebuild", "order_summaries", "--no-wait"},
        {"rebuild", "order_summaries", NULL},
    };
    const char *p, *end;
    char server[32];
    char *argv[8];
    int argc = 0, rc, out, null_fd;
    size_t which;

    if (size < 1 || size > 1024 * 1024)
        return 0;
    if (srv.listen_fd < 0)
        start();
    which = data[0] % (sizeof cmds / sizeof cmds[0]);
    pthread_mutex_lock(&srv.mu);
    srv.nparts = 0;
    srv.next = 0;
    p = (const char *)data + 1;
    end = (const char *)data + size;
    while (srv.nparts < MAX_PARTS && p <= end) {
        const char *sep = p;
        while (sep + 1 < end && !(sep[0] == 0x1e && sep[1] == 0x1e))
            sep++;
        if (sep + 1 >= end)
            sep = end;
        srv.part[srv.nparts] = p;
        srv.len[srv.nparts] = (size_t)(sep - p);
        srv.nparts++;
        p = sep + 2;
    }
    pthread_mutex_unlock(&srv.mu);

    snprintf(server, sizeof server, "127.0.0.1:%u", srv.port);
    argv[argc++] = "cqrsd";
    argv[argc++] = "projections";
    argv[argc++] = "--server";
    argv[argc++] = server;
    for (int i = 0; i < 3 && cmds[which][i] != NULL; i++)
        argv[argc++] = (char *)cmds[which][i];
    argv[argc] = NULL;

    fflush(stdout);
    out = dup(STDOUT_FILENO);
    null_fd = open("/dev/null", O_WRONLY | O_CLOEXEC);
    if (out < 0 || null_fd < 0 || dup2(null_fd, STDOUT_FILENO) < 0)
        abort();
    rc = cq_cli_projections(argc, argv);
    fflush(stdout);
    dup2(out, STDOUT_FILENO);
    close(out);
    close(null_fd);
    if (rc < 0 || rc > 2) {
        fprintf(stderr, "fuzz_cli_answer: exit code %d\n", rc);
        abort();
    }
    /* the parts point into data, which is the caller's after we return */
    pthread_mutex_lock(&srv.mu);
    srv.nparts = 0;
    pthread_mutex_unlock(&srv.mu);
    return 0;
}
