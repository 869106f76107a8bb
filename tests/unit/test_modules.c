/*
 * test_modules.c -- what loading a domain module checks, without loading
 * one (tests/blackbox/test_domains.py loads real ones): the domain check
 * (src/domain/check.c) refusing each kind of broken table with its
 * reason, a set of domains (src/domain/set.c) answering as its parts and
 * refusing collisions, and the projection-file check
 * (src/projection/check.c) finding SQL errors and name clashes in memory.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "domain/domain.h"
#include "projection/check.h"

/* ---- a small valid domain, and ways to break it ---------------------------
 */

static void *initial(void)
{
    return calloc(1, 1);
}
static void *copy(const void *s)
{
    (void)s;
    return calloc(1, 1);
}
static void release(void *s)
{
    free(s);
}
static int evolve(void *s, const cq_event *ev)
{
    return CQ_OK;
}
static int sid(const json_t *body, char *buf, size_t cap)
{
    return CQ_EINVAL;
}
static int decide(const void *s, const json_t *body, cq_decision *d)
{
    return CQ_OK;
}
static int upcast(json_t *data)
{
    return CQ_OK;
}

static const cq_aggregate agg = {"thing", initial, evolve, copy, release};
static const cq_field line_fields[] = {
    {.name = "sku", .kind = CQ_FIELD_STRING, .min = 1, .max = 10},
    {.kind = CQ_FIELD_END},
};
static const cq_field good_fields[] = {
    {.name = "id",
     .kind = CQ_FIELD_STRING,
     .min = 1,
     .max = 64,
     .chars = CQ_CHARS_ID},
    {.name = "n", .kind = CQ_FIELD_INTEGER, .min = -5, .max = 5},
    {.name = "lines",
     .kind = CQ_FIELD_ARRAY,
     .min = 0,
     .max = 3,
     .items = line_fields},
    {.kind = CQ_FIELD_END},
};

/* A domain with one command whose schema is `fields`, and the lists
 * given. */
typedef struct variant {
    cq_command_def cmd;
    const cq_command_def *cmds[3];
    cq_domain d;
} variant;

static void make(variant *v, const char *type, const cq_field *fields)
{
    memset(v, 0, sizeof *v);
    v->cmd = (cq_command_def){.type = type,
                              .aggregate = &agg,
                              .schema = fields,
                              .stream_id = sid,
                              .decide = decide};
    v->cmds[0] = &v->cmd;
    v->d.name = "things";
    v->d.commands = v->cmds;
}

/* cq_domain_check refuses d with a message containing want. */
static void refused(const cq_domain *d, const char *want)
{
    char err[512];

    assert_int_equal(cq_domain_check(d, err, sizeof err), CQ_EINVAL);
    if (strstr(err, want) == NULL)
        fail_msg("message %s lacks %s", err, want);
}

static void test_check_accepts_a_good_domain(void **unused)
{
    static const cq_upcaster ups[] = {{"Made", 1, upcast}, {NULL, 0, NULL}};
    static const char *const cats[] = {"thing", NULL};
    static const char *const types[] = {"Made", "thing.v2:x", NULL};
    variant v;
    char err[256];

    make(&v, "MakeThing", good_fields);
    v.d.upcasters = ups;
    v.d.categories = cats;
    v.d.event_types = types;
    assert_int_equal(cq_domain_check(&v.d, err, sizeof err), CQ_OK);
    assert_string_equal(err, "");
    /* no commands at all is a domain too (read models only) */
    v.d.commands = NULL;
    assert_int_equal(cq_domain_check(&v.d, err, sizeof err), CQ_OK);
}

static void test_check_refuses_broken_schemas(void **unused)
{
    static const cq_field min_above_max[] = {
        {.name = "n", .kind = CQ_FIELD_INTEGER, .min = 6, .max = 5},
        {.kind = CQ_FIELD_END}};
    static const cq_field no_items[] = {
        {.name = "xs", .kind = CQ_FIELD_ARRAY, .min = 0, .max = 5},
        {.kind = CQ_FIELD_END}};
    static const cq_field bad_kind[] = {
        {.name = "x", .kind = (cq_field_kind)42}, {.kind = CQ_FIELD_END}};
    static const cq_field twice[] = {
        {.name = "x", .kind = CQ_FIELD_INTEGER, .max = 1},
        {.name = "x", .kind = CQ_FIELD_INTEGER, .max = 1},
        {.kind = CQ_FIELD_END}};
    static const cq_field unnamed[] = {{.kind = CQ_FIELD_INTEGER},
                                       {.kind = CQ_FIELD_END}};
    static const cq_field neg_len[] = {
        {.name = "s", .kind = CQ_FIELD_STRING, .min = -1, .max = 5},
        {.kind = CQ_FIELD_END}};
    static const cq_field bad_chars[] = {{.name = "s",
                                          .kind = CQ_FIELD_STRING,
                                          .max = 5,
                                          .chars = (cq_charset)9},
                                         {.kind = CQ_FIELD_END}};
    static const cq_field nested_bad[] = {
        {.name = "sku", .kind = CQ_FIELD_STRING, .min = 3, .max = 1},
        {.kind = CQ_FIELD_END}};
    static const cq_field outer[] = {{.name = "lines",
                                      .kind = CQ_FIELD_ARRAY,
                                      .max = 3,
                                      .items = nested_bad},
                                     {.kind = CQ_FIELD_END}};
    static const struct {
        const cq_field *fields;
        const char *want;
    } cases[] = {
        {min_above_max, "field n: min 6 is above max 5"},
        {no_items, "field xs: an array needs items"},
        {bad_kind, "field x: unknown kind 42"},
        {twice, "field x is listed twice"},
        {unnamed, "field #1: the name must be"},
        {neg_len, "field s: a string's min length -1"},
        {bad_chars, "field s: unknown charset 9"},
        {outer, "field lines[].sku: min 3 is above max 1"},
        {NULL, "command Make: no schema"},
    };

    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        variant v;
        make(&v, "Make", cases[i].fields);
        refused(&v.d, cases[i].want);
    }
}

static void test_check_refuses_broken_tables(void **unused)
{
    static const cq_aggregate no_evolve = {"thing", initial, NULL, copy,
                                           release};
    static const cq_upcaster up_from_0[] = {{"Made", 0, upcast},
                                            {NULL, 0, NULL}};
    static const cq_upcaster up_twice[] = {
        {"Made", 1, upcast}, {"Made", 1, upcast}, {NULL, 0, NULL}};
    static const char *const dash[] = {"th-ing", NULL};
    static const char *const cats_twice[] = {"a", "a", NULL};
    static const char *const bad_type[] = {"Made It", NULL};
    variant v;

    refused(NULL, "no domain");
    make(&v, "Make", good_fields);
    v.d.name = "bad name";
    refused(&v.d, "the domain's name");
    make(&v, "Make/It", good_fields);
    refused(&v.d, "command #1: the type must be");
    make(&v, "Make", good_fields);
    v.cmds[1] = &v.cmd;
    refused(&v.d, "command Make is defined twice");
    make(&v, "Make", good_fields);
    v.cmd.aggregate = &no_evolve;
    refused(&v.d, "lacks one of initial(), evolve()");
    make(&v, "Make", good_fields);
    v.cmd.decide = NULL;
    refused(&v.d, "stream_id() and decide() are required");
    make(&v, "Make", good_fields);
    v.cmd.expect = (cq_expect)7;
    refused(&v.d, "expect 7");
    make(&v, "Make", good_fields);
    v.d.upcasters = up_from_0;
    refused(&v.d, "upcaster of Made from 0");
    v.d.upcasters = up_twice;
    refused(&v.d, "schema version 1 is listed twice");
    make(&v, "Make", good_fields);
    v.d.categories = dash;
    refused(&v.d, "stream category 'th-ing'");
    v.d.categories = cats_twice;
    refused(&v.d, "stream category a is listed twice");
    v.d.categories = NULL;
    v.d.event_types = bad_type;
    refused(&v.d, "event type 'Made It'");
}

/* ---- several domains as one ------------------------------------------------
 */

static void test_set_answers_as_its_parts(void **unused)
{
    static const cq_upcaster ups_b[] = {{"Bmade", 1, upcast}, {NULL, 0, NULL}};
    static const char *const cats_a[] = {"a", NULL}, *const cats_b[] = {"b",
                                                                        NULL};
    static const char *const types_a[] = {"Amade", NULL};
    static const char *const types_b[] = {"Bmade", NULL};
    variant a, b;
    const cq_domain *parts[2];
    const char *sources[] = {"a.so", "b.so"};
    cq_domain_set *s = NULL;
    const cq_domain *d;
    char err[256];

    make(&a, "MakeA", good_fields);
    a.d.name = "alpha";
    a.d.categories = cats_a;
    a.d.event_types = types_a;
    make(&b, "MakeB", good_fields);
    b.d.name = "beta";
    b.d.categories = cats_b;
    b.d.event_types = types_b;
    b.d.upcasters = ups_b;
    parts[0] = &a.d;
    parts[1] = &b.d;
    assert_int_equal(cq_domain_set_new(parts, sources, 2, &s, err, sizeof err),
                     CQ_OK);
    d = cq_domain_set_domain(s);
    assert_ptr_equal(cq_domain_command(d, "MakeA"), &a.cmd);
    assert_ptr_equal(cq_domain_command(d, "MakeB"), &b.cmd);
    assert_null(cq_domain_command(d, "MakeC"));
    assert_string_equal(cq_domain_stream_owner(d, "a-1"), "alpha");
    assert_string_equal(cq_domain_stream_owner(d, "b-1"), "beta");
    assert_null(cq_domain_stream_owner(d, "c-1"));
    assert_string_equal(cq_domain_type_owner(d, "Bmade"), "beta");
    assert_non_null(cq_domain_upcaster(d, "Bmade", 1));
    assert_true(cq_domain_upcaster(d, "Bmade", 1)->upcast == upcast);
    assert_null(cq_domain_upcaster(d, "Amade", 1));
    assert_ptr_equal(cq_domain_part(d, 1), &b.d);
    assert_null(cq_domain_part(d, 2));
    /* a plain domain is its own only part */
    assert_ptr_equal(cq_domain_part(&a.d, 0), &a.d);
    assert_null(cq_domain_part(&a.d, 1));
    cq_domain_set_free(s);

    /* collisions, each named with both sources */
    b.d.name = "alpha";
    assert_int_equal(cq_domain_set_new(parts, sources, 2, &s, err, sizeof err),
                     CQ_EINVAL);
    assert_null(s);
    assert_non_null(strstr(err, "b.so: domain alpha is loaded twice (also "
                                "from a.so)"));
    b.d.name = "beta";
    b.cmd.type = "MakeA";
    assert_int_equal(cq_domain_set_new(parts, sources, 2, &s, err, sizeof err),
                     CQ_EINVAL);
    assert_non_null(strstr(err, "b.so: command type MakeA is defined both by "
                                "domain alpha (a.so) and by domain beta"));
    b.cmd.type = "MakeB";
    b.d.categories = cats_a;
    assert_int_equal(cq_domain_set_new(parts, sources, 2, &s, err, sizeof err),
                     CQ_EINVAL);
    assert_non_null(strstr(err, "stream category a is owned both"));
    b.d.categories = cats_b;
    b.d.event_types = types_a;
    assert_int_equal(cq_domain_set_new(parts, sources, 2, &s, err, sizeof err),
                     CQ_EINVAL);
    assert_non_null(strstr(err, "event type Amade is owned both"));
}

/* ---- projection files ------------------------------------------------------
 */

static const char good_sql[] =
    "-- @projection counts\n"
    "-- @version 1\n"
    "CREATE TABLE IF NOT EXISTS counts (id TEXT PRIMARY KEY, n BIGINT);\n"
    "-- @on Made\n"
    "INSERT INTO counts (id, n) VALUES (:data.id, 1)\n"
    "  ON CONFLICT (id) DO UPDATE SET n = counts.n + 1;\n"
    "-- @query count\n"
    "-- @param id id required\n"
    "-- @result one\n"
    "SELECT id, n FROM counts WHERE id = :id;\n";

static int check(cq_proj_check *c, const char *source, const char *text,
                 const char *code, char *err, size_t errcap)
{
    return cq_proj_check_add(c, source, text, strlen(text), code, err, errcap);
}

/* text with every `from` replaced by `to`: a new string (the caller's). */
static char *replace(const char *text, const char *from, const char *to)
{
    size_t nf = strlen(from), nt = strlen(to), n = 0;
    char *out = malloc(strlen(text) * (nt + 1) + 1), *o = out;

    assert_non_null(out);
    for (const char *p = text; *p;)
        if (strncmp(p, from, nf) == 0) {
            memcpy(o, to, nt);
            o += nt;
            p += nf;
            n++;
        } else
            *o++ = *p++;
    *o = '\0';
    assert_true(n > 0);
    return out;
}

/* good_sql with the projection, query and table renamed, then `from`
 * replaced by `to` (NULL: nothing more). */
static char *other_sql(const char *from, const char *to)
{
    char *a = replace(good_sql, "counts", "others");
    char *b = replace(a, "projection others", "projection other1");
    char *c = replace(b, "query count", "query other");
    char *d = from != NULL ? replace(c, from, to) : strdup(c);

    free(a);
    free(b);
    free(c);
    return d;
}

static void test_projection_files(void **unused)
{
    static const struct {
        const char *from, *to, *want;
    } sql_errors[] = {
        {"SET n =", "SET q =", "d.sql:5: @on Made: "},
        {"SELECT id, n", "SELECT id, z", "d.sql:10: query other: "},
        {"n BIGINT)", "n BIGINT,)", "d.sql:3: "},
    };
    cq_proj_check *c = NULL;
    char err[512], *text;

    assert_int_equal(cq_proj_check_new(&c), CQ_OK);
    assert_int_equal(check(c, "a/counts.sql", good_sql, NULL, err, sizeof err),
                     CQ_OK);
    /* the same names again, each refused with the earlier file's name */
    assert_int_equal(check(c, "b/counts.sql", good_sql, NULL, err, sizeof err),
                     CQ_EINVAL);
    assert_string_equal(err, "b/counts.sql: projection counts is also "
                             "declared by a/counts.sql");
    text = replace(good_sql, "projection counts", "projection county");
    assert_int_equal(check(c, "c.sql", text, NULL, err, sizeof err), CQ_EINVAL);
    assert_string_equal(err, "c.sql: query count is also declared by "
                             "a/counts.sql");
    free(text);
    /* a table another file creates, in any case */
    text = other_sql("CREATE TABLE IF NOT EXISTS others",
                     "CREATE TABLE IF NOT EXISTS Counts");
    assert_int_equal(check(c, "c.sql", text, NULL, err, sizeof err), CQ_EINVAL);
    assert_string_equal(err, "c.sql: table Counts is also created by "
                             "a/counts.sql");
    free(text);
    /* SQL only a database rejects: in a handler, a query, the DDL */
    for (size_t i = 0; i < sizeof sql_errors / sizeof sql_errors[0]; i++) {
        text = other_sql(sql_errors[i].from, sql_errors[i].to);
        assert_int_equal(check(c, "d.sql", text, NULL, err, sizeof err),
                         CQ_EINVAL);
        if (strstr(err, sql_errors[i].want) != err)
            fail_msg("%s does not start with %s", err, sql_errors[i].want);
        free(text);
    }
    /* the failed files left nothing behind: their names are free */
    text = other_sql(NULL, NULL);
    assert_int_equal(check(c, "e.sql", text, NULL, err, sizeof err), CQ_OK);
    /* a code projection's file: the name must match, no @on */
    assert_int_equal(check(c, "f.sql", text, "other1", err, sizeof err),
                     CQ_EINVAL);
    assert_non_null(strstr(err, "with no @on blocks"));
    free(text);
    assert_int_equal(
        check(c, "g.sql", "-- @projection broken\n", NULL, err, sizeof err),
        CQ_EINVAL);
    assert_non_null(strstr(err, "g.sql:"));
    cq_proj_check_free(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_check_accepts_a_good_domain),
        cmocka_unit_test(test_check_refuses_broken_schemas),
        cmocka_unit_test(test_check_refuses_broken_tables),
        cmocka_unit_test(test_set_answers_as_its_parts),
        cmocka_unit_test(test_projection_files),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
