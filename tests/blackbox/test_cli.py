"""`cqrsd projections ...` against a running server: the table it prints,
the operations it asks for, following a blue/green rebuild to its end, and
its exit codes (0 done, 1 refused by the server or a failed rebuild, 2
usage or connection errors)."""
import os
import re
import shutil
import sqlite3
import subprocess
import tempfile
import time
import unittest

import cqtest

# Fails on a payment of 5000 cents or more unless its id is in cli_picky_allow.
# An id allowed in the live table lets the live projection go on; a rebuild
# fills fresh (empty) shadow tables, so it fails on that payment: a rebuild
# that fails, on purpose.
PICKY_SQL = """\
-- @projection cli_picky
-- @version 1
-- @mode async

CREATE TABLE IF NOT EXISTS cli_picky_payments (
    payment_id TEXT PRIMARY KEY,
    ok         INTEGER NOT NULL CHECK (ok = 1)
);
CREATE TABLE IF NOT EXISTS cli_picky_allow (
    payment_id TEXT PRIMARY KEY
);

-- @on PaymentReceived
INSERT INTO cli_picky_payments (payment_id, ok)
VALUES (:data.payment_id,
        CASE WHEN :data.amount_cents < 5000 OR EXISTS (
                  SELECT 1 FROM cli_picky_allow
                   WHERE payment_id = :data.payment_id)
             THEN 1 ELSE 0 END)
ON CONFLICT (payment_id) DO NOTHING;
"""


def run_cli(test, argv):
    """Run `cqrsd projections ...` (argv after the binary); fail `test` if
    its stderr holds a sanitizer report (the same patterns as the
    server's: an ASan or TSan build of the CLI reports there and may still
    exit with the code the test expects). Returns the CompletedProcess."""
    p = subprocess.run([cqtest.BINARY] + list(argv), capture_output=True,
                       text=True, timeout=60)
    for pat in cqtest.SANITIZER_PATTERNS:
        test.assertNotIn(pat, p.stderr, "cqrsd %s: sanitizer report:\n%s"
                         % (" ".join(argv), p.stderr))
    return p


class ProjectionsCliTest(cqtest.ServerTestCase):
    def cli(self, *args, server=True):
        argv = ["projections"]
        if server:
            argv += ["--server", "127.0.0.1:%d" % self.server.port]
        p = run_cli(self, argv + list(args))
        return p.returncode, p.stdout, p.stderr

    def status(self, name):
        return self.doc(name)["status"]

    def doc(self, name):
        st, _, body = self.c.req("GET", "/projections/" + name)
        self.assertEqual(st, 200, body)
        return body

    def place_orders(self, n):
        for _ in range(n):
            st, _, b = self.c.command("PlaceOrder", cqtest.order_body())
            self.assertEqual(st, 202, b)

    def wait_rebuild_over(self, name, timeout=60.0):
        deadline = time.monotonic() + timeout
        while True:
            d = self.doc(name)
            if d["rebuild"] is None:
                return d
            self.assertLess(time.monotonic(), deadline,
                            "%s still rebuilding: %r" % (name, d))
            time.sleep(0.05)

    def test_list(self):
        rc, out, err = self.cli("list")
        self.assertEqual(rc, 0, err)
        lines = out.splitlines()
        self.assertTrue(lines[0].startswith("PROJECTION"), out)
        names = sorted(line.split()[0] for line in lines[1:])
        self.assertEqual(names, ["order_summaries", "payment_confirmation",
                                 "sales_dashboard"])

    def test_pause_resume_status(self):
        rc, out, err = self.cli("pause", "sales_dashboard")
        self.assertEqual(rc, 0, err)
        self.assertIn("paused", out)
        self.assertEqual(self.status("sales_dashboard"), "paused")
        rc, out, err = self.cli("status", "sales_dashboard")
        self.assertEqual(rc, 0, err)
        self.assertIn("paused", out)
        rc, out, err = self.cli("resume", "sales_dashboard")
        self.assertEqual(rc, 0, err)
        self.assertEqual(self.status("sales_dashboard"), "running")

    def test_refusals_exit_1(self):
        rc, _, err = self.cli("pause", "payment_confirmation")
        self.assertEqual(rc, 1)
        self.assertIn("inline", err)
        rc, _, err = self.cli("status", "no_such_projection")
        self.assertEqual(rc, 1)
        self.assertIn("no projection", err)
        rc, _, err = self.cli("retry", "order_summaries")
        self.assertEqual(rc, 1)
        self.assertIn("has not failed", err)

    def test_rebuild_follows_to_the_end(self):
        self.place_orders(25)
        before = self.wait_rebuild_over("order_summaries")["last_rebuild"]
        rc, out, err = self.cli("rebuild", "order_summaries")
        self.assertEqual(rc, 0, "stdout %r stderr %r" % (out, err))
        # not a terminal: whole lines, no carriage returns
        self.assertNotIn("\r", out)
        lines = out.splitlines()
        self.assertTrue(lines, out)
        for line in lines[:-1]:
            self.assertRegex(
                line, r"^rebuilding order_summaries: \d+/\d+ events "
                r"\(\d+%\), \d+ events/s, ETA (\d+\.\d s|unknown)$")
        m = re.match(r"^rebuilt order_summaries: (\d+) events in "
                     r"\d+\.\d s$", lines[-1])
        self.assertIsNotNone(m, out)
        d = self.doc("order_summaries")
        self.assertIsNone(d["rebuild"], d)
        last = d["last_rebuild"]
        self.assertIsInstance(last, dict, d)
        self.assertEqual(last["outcome"], "done", d)
        self.assertIsNone(last["error"], d)
        self.assertEqual(last["events_replayed"], d["head"], d)
        self.assertGreaterEqual(d["head"], 25, d)
        self.assertEqual(int(m.group(1)), last["events_replayed"], out)
        # this rebuild's record, not an older one the CLI took for it
        if before is not None:
            self.assertNotEqual(last["started_at"], before["started_at"], d)
        # again, with the record of the first one in place
        rc, out, err = self.cli("rebuild", "order_summaries")
        self.assertEqual(rc, 0, "stdout %r stderr %r" % (out, err))
        self.assertRegex(out.splitlines()[-1], r"^rebuilt order_summaries: ")
        d = self.doc("order_summaries")
        self.assertIsNone(d["rebuild"], d)
        self.assertNotEqual(d["last_rebuild"]["started_at"],
                            last["started_at"], d)
        self.assertEqual(self.status("order_summaries"), "running")

    def test_rebuild_no_wait(self):
        self.place_orders(5)
        self.wait_rebuild_over("order_summaries")
        t0 = time.monotonic()
        rc, out, err = self.cli("rebuild", "order_summaries", "--no-wait")
        self.assertEqual(rc, 0, err)
        self.assertLess(time.monotonic() - t0, 10.0)
        lines = out.splitlines()
        self.assertTrue(lines[0].startswith("PROJECTION"), out)
        self.assertEqual(len(lines), 2, out)
        self.assertEqual(lines[1].split()[0], "order_summaries", out)
        self.assertIn(lines[1].split()[2], ("rebuilding", "running"), out)
        d = self.wait_rebuild_over("order_summaries")
        self.assertEqual(d["last_rebuild"]["outcome"], "done", d)

    def test_rebuild_refusals(self):
        rc, out, err = self.cli("rebuild", "payment_confirmation")
        self.assertEqual(rc, 1, out)
        self.assertIn("inline projection", err)
        rc, out, err = self.cli("rebuild", "no_such_projection", "--no-wait")
        self.assertEqual(rc, 1, out)
        self.assertIn("no projection", err)
        rc, out, err = self.cli("rebuild", "no_such_projection")
        self.assertEqual(rc, 1, out)
        self.assertIn("no projection", err)
        self.assertEqual(out, "")

    def test_usage_and_connection_errors_exit_2(self):
        for args in ((), ("frobnicate", "order_summaries"), ("pause",),
                     ("list", "extra"), ("status", "Bad-Name"),
                     ("rebuild",), ("rebuild", "--no-wait"),
                     ("rebuild", "order_summaries", "extra"),
                     ("status", "order_summaries", "--no-wait")):
            rc, _, err = self.cli(*args)
            self.assertEqual(rc, 2, "%r: %s" % (args, err))
        p = run_cli(self, ["projections", "--server",
                           "127.0.0.1:%d" % cqtest.free_port(), "list"])
        self.assertEqual(p.returncode, 2)
        self.assertIn("cannot reach", p.stderr)
        p = run_cli(self, ["projections", "--server",
                           "127.0.0.1:%d" % cqtest.free_port(), "rebuild",
                           "order_summaries"])
        self.assertEqual(p.returncode, 2)
        self.assertIn("cannot reach", p.stderr)


class RebuildFailureCliTest(cqtest.ServerTestCase):
    """`rebuild` of a projection whose rebuild is given up: exit 1."""

    @classmethod
    def setUpClass(cls):
        cls.pdir = tempfile.mkdtemp(prefix="cqrsd-cli-p-")
        with open(os.path.join(cls.pdir, "cli_picky.sql"), "w") as f:
            f.write(PICKY_SQL)
        cls.server_args = ("--projections", cls.pdir)
        super().setUpClass()

    @classmethod
    def tearDownClass(cls):
        super().tearDownClass()
        shutil.rmtree(cls.pdir, ignore_errors=True)

    def test_failed_rebuild_exits_1(self):
        c = self.c
        oid, pid = cqtest.uid("o"), cqtest.uid("p")
        con = sqlite3.connect(os.path.join(self.server.data_dir, "read.db"),
                              timeout=10)
        try:
            con.execute("INSERT INTO cli_picky_allow (payment_id) VALUES (?)",
                        (pid,))
            con.commit()
        finally:
            con.close()
        st, _, b = c.command("PlaceOrder", cqtest.order_body(
            oid, items=[{"sku": "k", "quantity": 1,
                         "unit_price_cents": 9000}]))
        self.assertEqual(st, 202, b)
        st, _, b = c.command("RecordPayment", {
            "order_id": oid, "payment_id": pid, "amount_cents": 9000})
        self.assertEqual(st, 202, b)
        head = c.head()
        deadline = time.monotonic() + 30
        while True:
            st, _, d = c.get("/projections/cli_picky")
            self.assertEqual(st, 200, d)
            self.assertEqual(d["status"], "running", d)
            if d["position"] >= head:
                break
            self.assertLess(time.monotonic(), deadline, d)
            time.sleep(0.02)
        p = run_cli(self, ["projections", "--server",
                           "127.0.0.1:%d" % self.server.port, "rebuild",
                           "cli_picky"])
        self.assertEqual(p.returncode, 1, "stdout %r stderr %r"
                         % (p.stdout, p.stderr))
        self.assertIn("the rebuild of cli_picky failed: ", p.stderr)
        self.assertNotIn("rebuilt", p.stdout)
        st, _, d = c.get("/projections/cli_picky")
        self.assertEqual(st, 200, d)
        self.assertIsNone(d["rebuild"], d)
        self.assertEqual(d["last_rebuild"]["outcome"], "failed", d)
        self.assertIn(d["last_rebuild"]["error"], p.stderr)
        # the live tables still serve
        self.assertEqual(d["status"], "running", d)


if __name__ == "__main__":
    cqtest.main()
