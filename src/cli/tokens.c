/*
 * tokens.c -- `cqrsd tokens add NAME --scopes LIST | list | revoke NAME
 * [--data DIR | --tokens FILE]`: the token file (src/http/auth.h,
 * docs/security.md). The secret is printed once, on stdout, and only its
 * SHA-256 is kept. A running server reads the file again within a second
 * of a change (or at once on SIGHUP).
 *
 * Two `cqrsd tokens` run at once on one file may lose one's change (each
 * rewrites the whole file atomically); run them one at a time.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "base/base.h"
#include "cli/cli.h"
#include "http/auth.h"

static int usage(void)
{
    fputs("usage: cqrsd tokens add NAME --scopes command,query,subscribe,admin"
          "\n                          [--data DIR | --tokens FILE]\n"
          "       cqrsd tokens list [--data DIR | --tokens FILE]\n"
          "       cqrsd tokens revoke NAME [--data DIR | --tokens FILE]\n",
          stderr);
    return 2;
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int add(const char *path, const char *name, unsigned scopes)
{
    cq_token *t = NULL, *g;
    size_t n = 0;
    char err[512], secret[CQ_TOKEN_SECRET_LEN + 1];
    int rc = cq_tokens_load(path, &t, &n, err, sizeof err);

    if (rc != CQ_OK && rc != CQ_ENOTFOUND) {
        fprintf(stderr, "cqrsd: %s\n", err);
        return 1;
    }
    for (size_t i = 0; i < n; i++)
        if (strcmp(t[i].name, name) == 0) {
            fprintf(stderr,
                    "cqrsd: a token named '%s' exists; revoke it first\n",
                    name);
            free(t);
            return 1;
        }
    g = realloc(t, (n + 1) * sizeof *t);
    if (g == NULL) {
        fprintf(stderr, "cqrsd: out of memory\n");
        free(t);
        return 1;
    }
    t = g;
    memset(&t[n], 0, sizeof t[n]);
    snprintf(t[n].name, sizeof t[n].name, "%s", name);
    t[n].scopes = scopes;
    t[n].created_ms = now_ms();
    if (cq_token_new_secret(secret, t[n].hash) != CQ_OK) {
        fprintf(stderr, "cqrsd: no random bytes for a secret\n");
        free(t);
        return 1;
    }
    rc = cq_tokens_save(path, t, n + 1, err, sizeof err);
    free(t);
    if (rc != CQ_OK) {
        fprintf(stderr, "cqrsd: %s\n", err);
        return 1;
    }
    printf("%s\n", secret);
    fprintf(stderr,
            "cqrsd: token '%s' added to %s; the secret above is shown only "
            "once\n",
            name, path);
    return 0;
}

static int list(const char *path)
{
    cq_token *t = NULL;
    size_t n = 0;
    char err[512];
    int rc = cq_tokens_load(path, &t, &n, err, sizeof err);

    if (rc == CQ_ENOTFOUND) {
        fprintf(stderr,
                "cqrsd: no token file at %s (the server is open on "
                "loopback)\n",
                path);
        return 0;
    }
    if (rc != CQ_OK) {
        fprintf(stderr, "cqrsd: %s\n", err);
        return 1;
    }
    for (size_t i = 0; i < n; i++) {
        char scopes[64], when[32];
        cq_scopes_format(t[i].scopes, scopes, sizeof scopes);
        cq_format_time(t[i].created_ms, when);
        printf("%s\t%s\t%s\n", t[i].name, scopes, when);
    }
    free(t);
    return 0;
}

static int revoke(const char *path, const char *name)
{
    cq_token *t = NULL;
    size_t n = 0, j = 0;
    char err[512];
    int rc = cq_tokens_load(path, &t, &n, err, sizeof err);

    if (rc != CQ_OK && rc != CQ_ENOTFOUND) {
        fprintf(stderr, "cqrsd: %s\n", err);
        return 1;
    }
    for (size_t i = 0; i < n; i++)
        if (strcmp(t[i].name, name) != 0)
            t[j++] = t[i];
    if (j == n) {
        fprintf(stderr, "cqrsd: no token named '%s'\n", name);
        free(t);
        return 1;
    }
    /* the file stays, even empty: a server with it keeps asking for
     * tokens (and answers 401) rather than opening up */
    rc = cq_tokens_save(path, t, j, err, sizeof err);
    free(t);
    if (rc != CQ_OK) {
        fprintf(stderr, "cqrsd: %s\n", err);
        return 1;
    }
    fprintf(stderr, "cqrsd: token '%s' revoked\n", name);
    return 0;
}

int cq_cli_tokens(int argc, char **argv)
{
    const char *op, *name = NULL, *data = "./data", *file = NULL,
                    *scopes_arg = NULL;
    char path[4096], err[256];
    unsigned scopes = 0;
    int i = 3;

    if (argc < 3)
        return usage();
    op = argv[2];
    if (strcmp(op, "add") == 0 || strcmp(op, "revoke") == 0) {
        if (argc < 4 || argv[3][0] == '-')
            return usage();
        name = argv[3];
        i = 4;
    } else if (strcmp(op, "list") != 0)
        return usage();
    for (; i < argc; i += 2) {
        if (i + 1 >= argc)
            return usage();
        if (strcmp(argv[i], "--data") == 0)
            data = argv[i + 1];
        else if (strcmp(argv[i], "--tokens") == 0)
            file = argv[i + 1];
        else if (strcmp(argv[i], "--scopes") == 0 && strcmp(op, "add") == 0)
            scopes_arg = argv[i + 1];
        else
            return usage();
    }
    if (name != NULL && !cq_token_name_ok(name)) {
        fprintf(stderr, "cqrsd: a token name is 1-64 of A-Z a-z 0-9 _ . -\n");
        return 2;
    }
    if (strcmp(op, "add") == 0) {
        if (scopes_arg == NULL) {
            fprintf(stderr, "cqrsd: tokens add needs --scopes\n");
            return 2;
        }
        if (cq_scopes_parse(scopes_arg, &scopes, err, sizeof err) != CQ_OK) {
            fprintf(stderr, "cqrsd: --scopes: %s\n", err);
            return 2;
        }
    }
    if (file == NULL) {
        if (strcmp(op, "add") == 0 && mkdir(data, 0755) != 0 &&
            errno != EEXIST) {
            fprintf(stderr, "cqrsd: cannot make %s: %s\n", data,
                    strerror(errno));
            return 1;
        }
        snprintf(path, sizeof path, "%s/tokens", data);
        file = path;
    }
    if (strcmp(op, "add") == 0)
        return add(file, name, scopes);
    if (strcmp(op, "revoke") == 0)
        return revoke(file, name);
    return list(file);
}
