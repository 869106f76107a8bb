"""Domain modules: `cqrsd serve --domain PATH`.

A module that cannot be used stops the start with exit code 2 and ONE line
on stderr that names the file and what is wrong, and nothing is written to
the data directory: a file that is not a shared object, one without the
entry point, one built for another ABI version or with other headers, an
invalid schema, an SQL error in a projection file, a symbol nobody
provides, and names that collide with another module's. A good module
built outside the tree is served next to orders and answers its command
and its query.

The modules are small C files compiled here with the system compiler
against include/cqrs (the same headers an installed cqrsd ships).
"""

import os
import shutil
import subprocess
import tempfile
import unittest

import cqtest
from cqtest import Client

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
INCLUDE = os.path.join(ROOT, "include")

# A complete module: one command (@COMMAND@ on category @CATEGORY@, event
# @EVENT@). The @...@ tokens make the variants.
MODULE_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include <cqrs/module.h>
@PRELUDE@
static void *initial(void) { return calloc(1, 1); }
static void *copy(const void *s) { (void)s; return calloc(1, 1); }
static void release(void *s) { free(s); }
static int evolve(void *s, const cq_event *ev) { (void)s; (void)ev; return CQ_OK; }
static const cq_aggregate agg = {"@CATEGORY@", initial, evolve, copy, release};
static const cq_field fields[] = {
    {.name = "id", .kind = CQ_FIELD_STRING, .min = @MIN@, .max = 64,
     .chars = CQ_CHARS_ID},
    {.kind = CQ_FIELD_END},
};
static int sid(const json_t *b, char *buf, size_t cap)
{
    const char *id = json_string_value(json_object_get(b, "id"));
    int n = id ? snprintf(buf, cap, "@CATEGORY@-%s", id) : -1;
    return n > 0 && (size_t)n < cap ? CQ_OK : CQ_EINVAL;
}
static int decide(const void *s, const json_t *b, cq_decision *d)
{
    (void)s;
    return cq_decision_emit(d, "@EVENT@", 1,
                            json_pack("{s:O}", "id", json_object_get(b, "id")));
}
static const cq_command_def cmd = {.type = "@COMMAND@", .aggregate = &agg,
    .schema = fields, .stream_id = sid, .decide = decide};
static const cq_command_def *const cmds[] = {&cmd, NULL};
static const char *const cats[] = {"@CATEGORY@", NULL};
static const char *const types[] = {"@EVENT@", NULL};
static const cq_domain dom = {"@NAME@", cmds, NULL, cats, types};
static const cq_module mod = {.abi = @ABI@, .domain = &dom,
                              .projections = "projections"};
const cq_module *cq_module_init(void)
{
    @INIT@
    return &mod;
}
"""

DEFAULTS = {
    "@PRELUDE@": "",
    "@COMMAND@": "Ping",
    "@CATEGORY@": "ping",
    "@EVENT@": "Pinged",
    "@NAME@": "ping",
    "@MIN@": "1",
    "@ABI@": "CQ_ABI_INIT",
    "@INIT@": "",
}

PINGS_SQL = """\
-- @projection @PROJ@
-- @version 1
-- @mode async

CREATE TABLE IF NOT EXISTS @TABLE@ (
    id      TEXT PRIMARY KEY,
    n       BIGINT NOT NULL,
    version BIGINT NOT NULL
);

-- @on @EVENT@
INSERT INTO @TABLE@ (id, n, version) VALUES (:data.id, 1, :version)
ON CONFLICT (id) DO UPDATE SET n = @TABLE@.n + 1, version = excluded.version
 WHERE @TABLE@.version < excluded.version;

-- @query @QUERY@
-- @param id id required
-- @stream ping-{id}
-- @result one
SELECT id, n, version FROM @TABLE@ WHERE id = :id;
"""

SQL_DEFAULTS = {"@PROJ@": "pings", "@TABLE@": "pings", "@QUERY@": "ping",
                "@EVENT@": "Pinged"}


def fill(text, defaults, changes):
    for k, v in dict(defaults, **changes).items():
        text = text.replace(k, v)
    return text


class DomainModules(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="cqrsd-domains-")
        cls.builddir = os.path.dirname(os.path.abspath(cqtest.BINARY))
        cls.orders = os.path.join(cls.builddir, "domains", "orders", "orders.so")
        cls.cc = os.environ.get("CC", "cc")
        try:
            cls.jansson = subprocess.run(
                ["pkg-config", "--cflags", "jansson"], check=True,
                capture_output=True, text=True).stdout.split()
        except (OSError, subprocess.CalledProcessError):
            cls.jansson = []

    @classmethod
    def tearDownClass(cls):
        if not os.environ.get("CQ_KEEP"):
            shutil.rmtree(cls.tmp, ignore_errors=True)

    # ---- helpers ---------------------------------------------------------

    def module(self, name, changes=None, sql=None, source=None):
        """Build module `name` in its own folder; sql: {file: text} for its
        projections/ (default: the pings projection). Returns the .so."""
        d = os.path.join(self.tmp, name)
        os.makedirs(os.path.join(d, "projections"), exist_ok=True)
        src = os.path.join(d, name + ".c")
        with open(src, "w") as f:
            f.write(source if source is not None
                    else fill(MODULE_C, DEFAULTS, changes or {}))
        if sql is None:
            sql = {"pings.sql": fill(PINGS_SQL, SQL_DEFAULTS, {})}
        for fname, text in sql.items():
            with open(os.path.join(d, "projections", fname), "w") as f:
                f.write(text)
        so = os.path.join(d, name + ".so")
        r = subprocess.run([self.cc, "-std=c17", "-shared", "-fPIC", "-Wall",
                            "-Werror", "-I", INCLUDE] + self.jansson +
                           ["-o", so, src], capture_output=True, text=True,
                           timeout=120)
        self.assertEqual(r.returncode, 0, "cannot compile %s: %s" % (name, r.stderr))
        return so

    def refused(self, domains, *expect, command="serve"):
        """cqrsd with --domain for each of domains must exit 2 with one
        line naming expect[0] (a path) and containing every other part of
        expect, and leave the data directory unwritten. Returns the line."""
        data = os.path.join(tempfile.mkdtemp(dir=self.tmp), "data")
        args = [cqtest.BINARY, command, "--data", data]
        if command == "serve":
            args += ["--listen", "127.0.0.1:0"]
        for d in domains:
            args += ["--domain", d]
        r = subprocess.run(args, stdin=subprocess.DEVNULL,
                           capture_output=True, text=True, timeout=60)
        err = r.stderr
        self.assertEqual(r.returncode, 2, "exit %d, stderr %r" % (r.returncode, err))
        self.assertEqual(err.count("\n"), 1, "not one line: %r" % err)
        self.assertTrue(err.startswith("cqrsd: "), err)
        for part in expect:
            self.assertIn(part, err)
        self.assertFalse(os.path.exists(data),
                         "the data directory was created: %r" % os.listdir(
                             os.path.dirname(data)))
        return err.strip()

    # ---- modules that cannot be used --------------------------------------

    def test_not_a_shared_object(self):
        path = os.path.join(self.tmp, "text.so")
        with open(path, "w") as f:
            f.write("this is not an ELF file\n")
        self.refused([path], path, "not a loadable module")

    def test_missing_file(self):
        path = os.path.join(self.tmp, "nowhere", "x.so")
        self.refused([path], path, "cannot open", "No such file")

    def test_missing_entry_point(self):
        path = self.module("noentry", source="int cq_not_the_entry(void);\n"
                           "int cq_not_the_entry(void) { return 1; }\n")
        self.refused([path], path, "no entry point cq_module_init")

    def test_wrong_abi_version(self):
        path = self.module("abi999", {"@PRELUDE@": "#undef CQ_ABI_VERSION\n"
                                      "#define CQ_ABI_VERSION 999\n"})
        line = self.refused([path], path, "ABI version 999", "loads version 1")
        self.assertIn("rebuild", line)

    def test_other_headers(self):
        # version right, a struct size wrong: headers changed without a bump
        abi = ("{CQ_ABI_VERSION, sizeof(cq_module), 8, sizeof(cq_command_def),"
               " sizeof(cq_aggregate), sizeof(cq_field), sizeof(cq_upcaster),"
               " sizeof(cq_projection_code), sizeof(cq_module_code)}")
        path = self.module("sizes", {"@ABI@": abi})
        self.refused([path], path, "other headers", "cq_domain is 8 bytes")

    def test_entry_returns_null(self):
        path = self.module("null", {"@INIT@": "if (mod.domain) return NULL;"})
        self.refused([path], path, "cq_module_init() returned NULL")

    def test_invalid_schema(self):
        path = self.module("schema", {"@MIN@": "70"})
        self.refused([path], path, "invalid domain", "command Ping",
                     "field id", "min 70 is above max 64")

    def test_invalid_names(self):
        path = self.module("badcat", {"@CATEGORY@": "pi-ng"})
        self.refused([path], path, "stream category 'pi-ng'")
        path = self.module("badcmd", {"@COMMAND@": "Ping/Pong"})
        self.refused([path], path, "command #1", "Ping/Pong")

    def test_undefined_symbol(self):
        path = self.module("undef", {
            "@PRELUDE@": "int cq_no_such_function(void);",
            "@INIT@": "if (cq_no_such_function()) return NULL;"})
        self.refused([path], path, "not a loadable module",
                     "cq_no_such_function")

    def test_projection_sql_error(self):
        bad = fill(PINGS_SQL, SQL_DEFAULTS, {}).replace(
            "SELECT id, n, version FROM pings", "SELECT id, n, nope FROM pings")
        path = self.module("badsql", sql={"pings.sql": bad})
        sqlfile = os.path.join(os.path.dirname(path), "projections", "pings.sql")
        lineno = bad.splitlines().index(
            "SELECT id, n, nope FROM pings WHERE id = :id;") + 1
        line = self.refused([path], path, "%s:%d:" % (sqlfile, lineno),
                            "query ping", "no such column: nope")
        # verify loads modules the same way
        self.refused([path], path, sqlfile, command="verify")
        self.assertNotIn("\n", line)

    def test_projection_parse_error_and_missing_folder(self):
        path = self.module("badparse", sql={"pings.sql": "-- @projection\n"})
        self.refused([path], path, "pings.sql:1")
        path = self.module("nofolder")
        shutil.rmtree(os.path.join(os.path.dirname(path), "projections"))
        self.refused([path], path, "projections", "No such file")

    # ---- collisions across modules ----------------------------------------

    def test_collisions_with_orders(self):
        cases = [
            ({"@COMMAND@": "PlaceOrder"}, None,
             "command type PlaceOrder is defined both by domain orders"),
            ({"@CATEGORY@": "order"}, None,
             "stream category order is owned both by domain orders"),
            ({"@EVENT@": "OrderPaid"}, None,
             "event type OrderPaid is owned both by domain orders"),
            ({"@NAME@": "orders"}, None, "domain orders is loaded twice"),
            ({}, {"@PROJ@": "order_summaries"},
             "projection order_summaries is also declared by"),
            ({}, {"@QUERY@": "order_summary"},
             "query order_summary is also declared by"),
            ({}, {"@TABLE@": "Dashboard_Day"},
             "table Dashboard_Day is also created by"),
        ]
        for i, (changes, sql, phrase) in enumerate(cases):
            with self.subTest(phrase=phrase):
                files = None
                if sql is not None:
                    files = {"pings.sql": fill(PINGS_SQL, SQL_DEFAULTS, sql)}
                path = self.module("clash%d" % i, changes, sql=files)
                self.refused([self.orders, path], path, phrase)
        self.refused([self.orders, self.orders], self.orders,
                     "domain orders is loaded twice")

    # ---- a good module ----------------------------------------------------

    def test_default_is_orders(self):
        with cqtest.Server() as srv:
            c = Client(srv)
            st, _, body = c.req("GET", "/queries/sales_dashboard")
            self.assertEqual(st, 200, body)
            c.close()
            self.assertIn("serving orders on", srv.stderr_text())

    def test_module_served_next_to_orders(self):
        ping = self.module("ping")
        data = tempfile.mkdtemp(dir=self.tmp)
        with cqtest.Server(data_dir=data,
                           args=["--domain", self.orders, "--domain", ping]) as srv:
            c = Client(srv)
            st, _, body = c.req("POST", "/commands/Ping", {"id": "p-1"})
            self.assertEqual(st, 202, body)
            st, _, body = c.req("POST", "/commands/Ping", {"id": "p-1"})
            self.assertEqual(st, 202, body)
            pos = body["position"]
            st, _, body = c.req("GET", "/queries/ping?id=p-1&min_position=%d" % pos)
            self.assertEqual(st, 200, body)
            self.assertEqual(body["data"]["n"], 2)
            # the orders domain is still there
            st, _, body = c.req("POST", "/commands/PlaceOrder", {
                "order_id": "o-1", "customer_id": "c-1", "currency": "EUR",
                "items": [{"sku": "a", "quantity": 1, "unit_price_cents": 5}]})
            self.assertEqual(st, 202, body)
            # each domain owns its streams, and refusals name the owner
            for stream, owner in (("ping-p-1", "ping"), ("order-o-1", "orders")):
                st, _, body = c.req("POST", "/streams/" + stream, {
                    "expected_version": "any",
                    "events": [{"type": "Note", "data": {}}]})
                self.assertEqual(st, 422, body)
                self.assertIn("the %s domain" % owner, body["detail"])
            st, _, body = c.req("POST", "/streams/free-1", {
                "expected_version": "any",
                "events": [{"type": "Pinged", "data": {}}]})
            self.assertEqual(st, 422, body)
            self.assertIn("the ping domain", body["detail"])
            c.close()
            self.assertIn("serving orders, ping on", srv.stderr_text())
        # verify replays both domains' projections
        r = subprocess.run([cqtest.BINARY, "verify", "--data", data,
                            "--domain", self.orders, "--domain", ping],
                           capture_output=True, text=True, timeout=120)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("pings", r.stdout)


if __name__ == "__main__":
    cqtest.main()
