/*
 * token_file.c -- the token file: names, scopes, reading and the atomic
 * rewrite (auth.h). Used by the server (auth.c) and `cqrsd tokens`.
 */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/base.h"
#include "http/auth.h"

#define TOKENS_HEADER "# cqrsd tokens v1"
#define TOKENS_MAX 10000
#define FILE_MAX (4 * 1024 * 1024)

static const struct {
    const char *word;
    unsigned bit;
} scope_words[] = {{"command", CQ_SCOPE_COMMAND},
                   {"query", CQ_SCOPE_QUERY},
                   {"subscribe", CQ_SCOPE_SUBSCRIBE},
                   {"admin", CQ_SCOPE_ADMIN}};

int cq_token_name_ok(const char *name)
{
    size_t n = strlen(name);

    if (n < 1 || n > CQ_TOKEN_NAME_MAX)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = name[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
              (c >= '0' && c <= '9') || c == '_' || c == '.' || c == '-'))
            return 0;
    }
    return 1;
}

int cq_scopes_parse(const char *s, unsigned *out, char *err, size_t errcap)
{
    unsigned got = 0;
    const char *p = s;

    *out = 0;
    for (;;) {
        const char *end = strchr(p, ',');
        size_t n = end ? (size_t)(end - p) : strlen(p);
        unsigned bit = 0;

        for (size_t i = 0; i < sizeof scope_words / sizeof scope_words[0]; i++)
            if (strlen(scope_words[i].word) == n &&
                memcmp(scope_words[i].word, p, n) == 0)
                bit = scope_words[i].bit;
        if (bit == 0 || (got & bit) != 0) {
            snprintf(err, errcap,
                     "%s scope '%.*s' (scopes: command, query, subscribe, "
                     "admin, comma-separated)",
                     bit ? "repeated" : "unknown", (int)(n > 64 ? 64 : n), p);
            return CQ_EINVAL;
        }
        got |= bit;
        if (end == NULL)
            break;
        p = end + 1;
    }
    *out = got;
    return CQ_OK;
}

void cq_scopes_format(unsigned scopes, char *buf, size_t cap)
{
    size_t len = 0;

    buf[0] = '\0';
    for (size_t i = 0; i < sizeof scope_words / sizeof scope_words[0]; i++)
        if (scopes & scope_words[i].bit) {
            int n = snprintf(buf + len, cap - len, "%s%s", len ? "," : "",
                             scope_words[i].word);
            if (n < 0 || (size_t)n >= cap - len)
                return;
            len += (size_t)n;
        }
}

static int is_hex64(const char *s)
{
    if (strlen(s) != 64)
        return 0;
    for (int i = 0; i < 64; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return 0;
    return 1;
}

/* One line "NAME SCOPES HASH CREATED_MS" (cut at the newline) into *t. */
static int parse_line(char *line, cq_token *t)
{
    char *f[4], *save = NULL, *end;
    char scratch[128];
    long long created;
    int n = 0;

    for (char *w = strtok_r(line, " ", &save); w != NULL;
         w = strtok_r(NULL, " ", &save)) {
        if (n == 4)
            return -1;
        f[n++] = w;
    }
    if (n != 4 || !cq_token_name_ok(f[0]) || !is_hex64(f[2]))
        return -1;
    if (cq_scopes_parse(f[1], &t->scopes, scratch, sizeof scratch) != CQ_OK)
        return -1;
    errno = 0;
    created = strtoll(f[3], &end, 10);
    if (errno != 0 || end == f[3] || *end != '\0' || created < 0)
        return -1;
    memcpy(t->name, f[0], strlen(f[0]) + 1);
    memcpy(t->hash, f[2], 65);
    t->created_ms = created;
    return 0;
}

int cq_tokens_load(const char *path, cq_token **out, size_t *n, char *err,
                   size_t errcap)
{
    FILE *f;
    char line[512];
    cq_token *v = NULL;
    size_t len = 0, lineno = 0;
    long total = 0;
    int rc = CQ_OK;

    *out = NULL;
    *n = 0;
    f = fopen(path, "r");
    if (f == NULL) {
        if (errno == ENOENT)
            return CQ_ENOTFOUND;
        snprintf(err, errcap, "cannot read the token file %s: %s", path,
                 strerror(errno));
        return CQ_EIO;
    }
    while (fgets(line, sizeof line, f) != NULL) {
        size_t l = strlen(line);
        lineno++;
        total += (long)l;
        if (l == 0 || line[l - 1] != '\n' || total > FILE_MAX) {
            snprintf(err, errcap,
                     "token file %s: line %zu is too long or not ended", path,
                     lineno);
            rc = CQ_EINVAL;
            goto done;
        }
        line[l - 1] = '\0';
        if (lineno == 1) {
            if (strcmp(line, TOKENS_HEADER) != 0) {
                snprintf(err, errcap, "token file %s does not begin with '%s'",
                         path, TOKENS_HEADER);
                rc = CQ_EINVAL;
                goto done;
            }
            continue;
        }
        if (len == TOKENS_MAX) {
            snprintf(err, errcap, "token file %s: more than %d tokens", path,
                     TOKENS_MAX);
            rc = CQ_EINVAL;
            goto done;
        }
        if (len % 16 == 0) {
            cq_token *g = realloc(v, (len + 16) * sizeof *v);
            if (g == NULL) {
                snprintf(err, errcap, "out of memory");
                rc = CQ_ENOMEM;
                goto done;
            }
            v = g;
        }
        if (parse_line(line, &v[len]) != 0) {
            snprintf(err, errcap, "token file %s: line %zu is malformed", path,
                     lineno);
            rc = CQ_EINVAL;
            goto done;
        }
        for (size_t i = 0; i < len; i++)
            if (strcmp(v[i].name, v[len].name) == 0) {
                snprintf(err, errcap, "token file %s: '%s' is there twice",
                         path, v[len].name);
                rc = CQ_EINVAL;
                goto done;
            }
        len++;
    }
    if (ferror(f)) {
        snprintf(err, errcap, "cannot read the token file %s", path);
        rc = CQ_EIO;
    } else if (lineno == 0) {
        snprintf(err, errcap, "token file %s is empty", path);
        rc = CQ_EINVAL;
    }
done:
    fclose(f);
    if (rc != CQ_OK) {
        free(v);
        return rc;
    }
    *out = v;
    *n = len;
    return CQ_OK;
}

int cq_tokens_save(const char *path, const cq_token *tokens, size_t n,
                   char *err, size_t errcap)
{
    char tmp[PATH_MAX], dir[PATH_MAX];
    FILE *f = NULL;
    int fd = -1, dfd;

    if (snprintf(tmp, sizeof tmp, "%s.XXXXXX", path) >= (int)sizeof tmp ||
        snprintf(dir, sizeof dir, "%s", path) >= (int)sizeof dir) {
        snprintf(err, errcap, "path too long: %s", path);
        return CQ_EIO;
    }
    fd = mkstemp(tmp);
    if (fd < 0)
        goto fail;
    if (fchmod(fd, 0600) != 0)
        goto fail;
    f = fdopen(fd, "w");
    if (f == NULL)
        goto fail;
    fd = -1;
    fprintf(f, "%s\n", TOKENS_HEADER);
    for (size_t i = 0; i < n; i++) {
        char scopes[64];
        cq_scopes_format(tokens[i].scopes, scopes, sizeof scopes);
        fprintf(f, "%s %s %s %lld\n", tokens[i].name, scopes, tokens[i].hash,
                (long long)tokens[i].created_ms);
    }
    if (fflush(f) != 0 || fsync(fileno(f)) != 0)
        goto fail;
    if (fclose(f) != 0) {
        f = NULL;
        goto fail;
    }
    f = NULL;
    if (rename(tmp, path) != 0)
        goto fail;
    dfd = open(dirname(dir), O_RDONLY | O_DIRECTORY);
    if (dfd >= 0) {
        (void)fsync(dfd);
        close(dfd);
    }
    return CQ_OK;
fail:
    snprintf(err, errcap, "cannot write the token file %s: %s", path,
             strerror(errno));
    if (f != NULL)
        fclose(f);
    if (fd >= 0)
        close(fd);
    unlink(tmp);
    return CQ_EIO;
}

int cq_token_new_secret(char *secret, char hash[65])
{
    unsigned char raw[32];
    size_t got = 0;

    while (got < sizeof raw) {
        ssize_t r = getrandom(raw + got, sizeof raw - got, 0);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return CQ_EIO;
        }
        got += (size_t)r;
    }
    memcpy(secret, CQ_TOKEN_SECRET_PREFIX, 6);
    for (size_t i = 0; i < sizeof raw; i++)
        snprintf(secret + 6 + 2 * i, 3, "%02x", raw[i]);
    cq_sha256_hex(secret, CQ_TOKEN_SECRET_LEN, hash);
    return CQ_OK;
}
