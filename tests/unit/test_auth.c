/*
 * test_auth.c -- tokens and rate limits (src/http/auth.h): scope words,
 * the token file (round trip, mode 0600, every malformed shape refused),
 * the check (wrong secret, missing scope, open without a file, a file
 * with no token is closed), and the token buckets (burst, refill,
 * Retry-After, a bounded table).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "http/auth.h"

static char dir[256];

static void path_in(char *buf, size_t cap, const char *name)
{
    if (dir[0] == '\0') {
        const char *t = getenv("TMPDIR");
        snprintf(dir, sizeof dir, "%s/test_auth.XXXXXX", t ? t : "/tmp");
        assert_non_null(mkdtemp(dir));
    }
    snprintf(buf, cap, "%s/%s", dir, name);
}

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static void scopes(void **state)
{
    unsigned s;
    char err[256], buf[64];

    (void)state;
    assert_int_equal(cq_scopes_parse("query,admin", &s, err, sizeof err),
                     CQ_OK);
    assert_int_equal(s, CQ_SCOPE_QUERY | CQ_SCOPE_ADMIN);
    cq_scopes_format(s, buf, sizeof buf);
    assert_string_equal(buf, "query,admin");
    assert_int_equal(cq_scopes_parse("query,query", &s, err, sizeof err),
                     CQ_EINVAL);
    assert_int_equal(cq_scopes_parse("", &s, err, sizeof err), CQ_EINVAL);
    assert_int_equal(cq_scopes_parse("query,", &s, err, sizeof err), CQ_EINVAL);
    assert_int_equal(cq_scopes_parse("Admin", &s, err, sizeof err), CQ_EINVAL);
    assert_int_equal(cq_token_name_ok("ci-1.a_b"), 1);
    assert_int_equal(cq_token_name_ok("a:b"), 0);
    assert_int_equal(cq_token_name_ok("a#b"), 0);
    assert_int_equal(cq_token_name_ok(""), 0);
}

static void file_round_trip(void **state)
{
    cq_token t[2], *got = NULL;
    size_t n = 0;
    char path[512], err[512], secret[CQ_TOKEN_SECRET_LEN + 1];
    struct stat st;

    (void)state;
    path_in(path, sizeof path, "rt");
    memset(t, 0, sizeof t);
    strcpy(t[0].name, "a");
    t[0].scopes = CQ_SCOPE_COMMAND;
    assert_int_equal(cq_token_new_secret(secret, t[0].hash), CQ_OK);
    assert_int_equal(strlen(secret), CQ_TOKEN_SECRET_LEN);
    strcpy(t[1].name, "b");
    t[1].scopes = CQ_SCOPE_ALL;
    t[1].created_ms = 1234;
    assert_int_equal(cq_token_new_secret(secret, t[1].hash), CQ_OK);
    assert_int_equal(cq_tokens_save(path, t, 2, err, sizeof err), CQ_OK);
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    assert_int_equal(cq_tokens_load(path, &got, &n, err, sizeof err), CQ_OK);
    assert_int_equal(n, 2);
    for (int i = 0; i < 2; i++) {
        assert_string_equal(got[i].name, t[i].name);
        assert_string_equal(got[i].hash, t[i].hash);
        assert_int_equal(got[i].scopes, t[i].scopes);
        assert_int_equal(got[i].created_ms, t[i].created_ms);
    }
    free(got);
    unlink(path);
    assert_int_equal(cq_tokens_load(path, &got, &n, err, sizeof err),
                     CQ_ENOTFOUND);
}

static void file_malformed(void **state)
{
    static const char *const bad[] = {
        "",
        "a query "
        "0000000000000000000000000000000000000000000000000000000000000000 1\n",
        "# cqrsd tokens v1\na query 00 1\n",
        "# cqrsd tokens v1\na query "
        "000000000000000000000000000000000000000000000000000000000000000G 1\n",
        "# cqrsd tokens v1\na root "
        "0000000000000000000000000000000000000000000000000000000000000000 1\n",
        "# cqrsd tokens v1\na query "
        "0000000000000000000000000000000000000000000000000000000000000000 -1\n",
        "# cqrsd tokens v1\na query "
        "0000000000000000000000000000000000000000000000000000000000000000 1 "
        "x\n",
        "# cqrsd tokens v1\na query "
        "0000000000000000000000000000000000000000000000000000000000000000 1",
        "# cqrsd tokens v1\na:b query "
        "0000000000000000000000000000000000000000000000000000000000000000 1\n",
        "# cqrsd tokens v1\na query "
        "0000000000000000000000000000000000000000000000000000000000000000 1\n"
        "a admin "
        "1111111111111111111111111111111111111111111111111111111111111111 1\n",
    };
    char path[512], err[512];
    cq_token *got;
    size_t n;

    (void)state;
    path_in(path, sizeof path, "bad");
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        write_file(path, bad[i]);
        got = (cq_token *)1;
        assert_int_equal(cq_tokens_load(path, &got, &n, err, sizeof err),
                         CQ_EINVAL);
        assert_null(got);
    }
    write_file(path, "# cqrsd tokens v1\n"); /* no token: fine, and closed */
    assert_int_equal(cq_tokens_load(path, &got, &n, err, sizeof err), CQ_OK);
    assert_int_equal(n, 0);
    free(got);
}

static void check(void **state)
{
    cq_token t;
    cq_auth *a;
    cq_auth_result r;
    char path[512], err[512], secret[CQ_TOKEN_SECRET_LEN + 1], hdr[128];

    (void)state;
    path_in(path, sizeof path, "chk");
    unlink(path);
    /* no file: open */
    assert_int_equal(cq_auth_new(path, 0, 0, &a, err, sizeof err), CQ_OK);
    assert_int_equal(cq_auth_required(a), 0);
    cq_auth_check(a, NULL, CQ_SCOPE_ADMIN, "127.0.0.1", 1, &r);
    assert_int_equal(r.status, 0);
    cq_auth_free(a);

    memset(&t, 0, sizeof t);
    strcpy(t.name, "ci");
    t.scopes = CQ_SCOPE_QUERY;
    assert_int_equal(cq_token_new_secret(secret, t.hash), CQ_OK);
    assert_int_equal(cq_tokens_save(path, &t, 1, err, sizeof err), CQ_OK);
    assert_int_equal(cq_auth_new(path, 0, 0, &a, err, sizeof err), CQ_OK);
    assert_int_equal(cq_auth_required(a), 1);
    cq_auth_check(a, NULL, CQ_SCOPE_QUERY, "x", 1, &r);
    assert_int_equal(r.status, 401);
    snprintf(hdr, sizeof hdr, "Bearer %s", secret);
    cq_auth_check(a, hdr, CQ_SCOPE_QUERY, "x", 1, &r);
    assert_int_equal(r.status, 0);
    assert_string_equal(r.token, "ci");
    cq_auth_check(a, hdr, CQ_SCOPE_ADMIN, "x", 1, &r);
    assert_int_equal(r.status, 403);
    assert_int_equal(r.missing, CQ_SCOPE_ADMIN);
    hdr[strlen(hdr) - 1] ^= 1; /* one bit off */
    cq_auth_check(a, hdr, CQ_SCOPE_QUERY, "x", 1, &r);
    assert_int_equal(r.status, 401);
    snprintf(hdr, sizeof hdr, "Bearer %s", t.hash); /* the hash is no secret */
    cq_auth_check(a, hdr, CQ_SCOPE_QUERY, "x", 1, &r);
    assert_int_equal(r.status, 401);
    /* revoked to an empty file: still closed */
    assert_int_equal(cq_tokens_save(path, &t, 0, err, sizeof err), CQ_OK);
    cq_auth_reload(a);
    assert_int_equal(cq_auth_required(a), 1);
    snprintf(hdr, sizeof hdr, "Bearer %s", secret);
    cq_auth_check(a, hdr, CQ_SCOPE_QUERY, "x", 1, &r);
    assert_int_equal(r.status, 401);
    /* the file removed while serving: still closed */
    unlink(path);
    cq_auth_reload(a);
    assert_int_equal(cq_auth_required(a), 1);
    cq_auth_check(a, NULL, CQ_SCOPE_QUERY, "x", 1, &r);
    assert_int_equal(r.status, 401);
    cq_auth_free(a);
}

static void buckets(void **state)
{
    cq_ratelimit *r = cq_ratelimit_new(4);
    uint64_t t = 1000000000ull;
    char key[32];

    (void)state;
    assert_non_null(r);
    for (int i = 0; i < 4; i++)
        assert_int_equal(cq_ratelimit_take(r, "a", t), 0);
    assert_int_equal(cq_ratelimit_take(r, "a", t), 1); /* 1/4 s to one */
    assert_int_equal(cq_ratelimit_take(r, "b", t), 0); /* another caller */
    t += 250000000ull;                                 /* one back */
    assert_int_equal(cq_ratelimit_take(r, "a", t), 0);
    assert_int_equal(cq_ratelimit_take(r, "a", t), 1);
    t += 10000000000ull; /* long idle: only a burst of 4 */
    for (int i = 0; i < 4; i++)
        assert_int_equal(cq_ratelimit_take(r, "a", t), 0);
    assert_int_not_equal(cq_ratelimit_take(r, "a", t), 0);
    /* many callers: the table stays bounded and keeps answering */
    for (int i = 0; i < 100000; i++) {
        snprintf(key, sizeof key, "10.0.%d.%d", i / 256, i % 256);
        assert_int_equal(cq_ratelimit_take(r, key, t + (uint64_t)i), 0);
    }
    cq_ratelimit_free(r);

    r = cq_ratelimit_new(0.5); /* slower than one a second */
    assert_int_equal(cq_ratelimit_take(r, "a", t), 0);
    assert_int_equal(cq_ratelimit_take(r, "a", t), 2);
    cq_ratelimit_free(r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(scopes),         cmocka_unit_test(file_round_trip),
        cmocka_unit_test(file_malformed), cmocka_unit_test(check),
        cmocka_unit_test(buckets),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
