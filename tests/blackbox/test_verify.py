"""Black-box tests of `cqrsd verify`: every projection OK while the server
runs and keeps writing; a row changed behind the server's back is named
and the exit code is 1; a --projections file is verified too, and a
changed one is reported; usage and I/O errors exit 2. On PostgreSQL
(CQ_TEST_BACKEND=pg) `verify --store URI`, the rows changed through psql.

    python3 tests/blackbox/test_verify.py /path/to/cqrsd
"""
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.parse

sys.dont_write_bytecode = True

import cqtest  # noqa: E402
from cqtest import Client, Server, order_body, uid  # noqa: E402

PROJECTIONS = ("order_summaries", "payment_confirmation", "sales_dashboard")

EXTRA_SQL = """-- @projection order_customers
-- @version %d
-- @mode async

CREATE TABLE IF NOT EXISTS order_customers (
    order_id    TEXT PRIMARY KEY,
    customer_id TEXT NOT NULL
);

-- @on OrderPlaced
INSERT INTO order_customers (order_id, customer_id)
VALUES (:data.order_id, :data.customer_id)
ON CONFLICT (order_id) DO NOTHING;

-- @query order_customer
-- @param order_id id required
-- @result one
SELECT customer_id FROM order_customers WHERE order_id = :order_id;
"""


def verify(where, *args):
    """Run cqrsd verify on a Server's store, a data dir, or (None) only
    what args name; returns (exit code, stdout, stderr)."""
    if isinstance(where, Server):
        store = where.store_args()
    else:
        store = ["--data", where] if where is not None else []
    p = subprocess.run([cqtest.BINARY, "verify"] + store + list(args),
                       stdin=subprocess.DEVNULL, capture_output=True,
                       timeout=300)
    out = p.stdout.decode("utf-8", "replace")
    err = p.stderr.decode("utf-8", "replace")
    for pat in cqtest.SANITIZER_PATTERNS:
        if pat in err:
            raise AssertionError("cqrsd verify stderr contains %r:\n%s" % (pat, err))
    return p.returncode, out, err


class VerifyTest(unittest.TestCase):
    maxDiff = 4000

    def setUp(self):
        self.tmpdirs = []

    def tearDown(self):
        for d in self.tmpdirs:
            shutil.rmtree(d, ignore_errors=True)

    def tmpdir(self):
        d = tempfile.mkdtemp(prefix="cqrsd-verify-")
        self.tmpdirs.append(d)
        return d

    def accepted(self, c, ctype, body):
        st, _, b = c.command(ctype, body)
        self.assertEqual(st, 202, "%s %r -> %s %r" % (ctype, body, st, b))
        return b

    def workload(self, c, n=12):
        """n orders through payments, shipping and cancellation."""
        ids = []
        for i in range(n):
            body = order_body(customer_id="c-%d" % (i % 3),
                              currency=("EUR", "USD")[i % 2])
            oid = body["order_id"]
            ids.append(oid)
            self.accepted(c, "PlaceOrder", body)
            if i % 4 in (1, 2):
                self.accepted(c, "RecordPayment", {"order_id": oid,
                                                   "payment_id": uid("p"),
                                                   "amount_cents": 400})
            if i % 4 == 2:
                self.accepted(c, "RecordPayment", {"order_id": oid,
                                                   "payment_id": uid("p"),
                                                   "amount_cents": 600})
                self.accepted(c, "ShipOrder", {"order_id": oid, "carrier": "DHL",
                                               "tracking_number": "T-1"})
            if i % 4 == 3:
                self.accepted(c, "CancelOrder", {"order_id": oid,
                                                 "reason": "test"})
        return ids

    def wait_caught_up(self, c, order_id, extra=()):
        head = c.head()
        for name, params in ((("order_summary", {"order_id": order_id}),
                              ("sales_dashboard", {}),
                              ("payment_confirmation", {"order_id": order_id}))
                             + tuple(extra)):
            deadline = time.monotonic() + 120
            while True:
                q = urllib.parse.urlencode(
                    list(dict(params, min_position=head, wait_ms=10000).items()))
                st, _, b = c.get("/queries/%s?%s" % (name, q))
                self.assertEqual(st, 200, "%s -> %s %r" % (name, st, b))
                if not b["meta"]["stale"]:
                    break
                self.assertLess(time.monotonic(), deadline,
                                "%s did not reach %d" % (name, head))
        return head

    def test_ok_while_serving_then_a_changed_row(self):
        with Server(cqtest.BINARY) as srv:
            c = Client(srv)
            ids = self.workload(c)
            head = self.wait_caught_up(c, ids[-1])

            rc, out, err = verify(srv)
            self.assertEqual(rc, 0, "stdout:\n%s\nstderr:\n%s" % (out, err))
            for name in PROJECTIONS:
                self.assertRegex(out, r"(?m)^%s: OK \(position %d, \d+ tables?, "
                                 r"\d+ rows?\)$" % (name, head), out)

            # commands keep coming while verify runs: it compares each
            # projection at its own checkpoint, so it still finds nothing
            stop = threading.Event()
            errors = []

            def writer():
                w = Client(srv)
                try:
                    while not stop.is_set():
                        st, _, b = w.command("PlaceOrder", order_body())
                        if st != 202:
                            errors.append((st, b))
                            return
                except BaseException as e:  # noqa: BLE001
                    errors.append(e)
                finally:
                    w.close()

            t = threading.Thread(target=writer)
            t.start()
            try:
                time.sleep(0.2)
                for _ in range(3):
                    rc, out, err = verify(srv)
                    self.assertEqual(rc, 0, "stdout:\n%s\nstderr:\n%s" % (out, err))
            finally:
                stop.set()
                t.join()
            self.assertEqual(errors, [])
            c.close()
            srv.check_alive()
            srv.stop()

            victim = ids[1]
            read = cqtest.store_db(srv, "read")
            read.execute("UPDATE order_summaries SET paid_cents = paid_cents + 1"
                         " WHERE order_id = ?", (victim,))
            self.assertEqual(read.rows("SELECT paid_cents FROM order_summaries"
                                       " WHERE order_id = ?", (victim,)), [(401,)])

            rc, out, err = verify(srv)
            self.assertEqual(rc, 1, "stdout:\n%s\nstderr:\n%s" % (out, err))
            self.assertIn("order_summaries/order_summaries: order_id='%s': "
                          "differs: paid_cents live 401, replay 400\n" % victim,
                          out)
            self.assertRegex(out, r"(?m)^order_summaries: 1 difference$")
            self.assertRegex(out, r"(?m)^sales_dashboard: OK ")
            self.assertRegex(out, r"(?m)^payment_confirmation: OK ")

            # a row gone from an inline projection (events.db)
            cqtest.store_db(srv, "events").execute(
                "DELETE FROM payment_confirmations WHERE order_id = ?", (ids[0],))
            rc, out, err = verify(srv)
            self.assertEqual(rc, 1, out)
            self.assertIn("payment_confirmation/payment_confirmations: "
                          "order_id='%s': missing in live\n" % ids[0], out)

    def test_projections_dir(self):
        pdir = self.tmpdir()
        path = os.path.join(pdir, "order_customers.sql")
        with open(path, "w") as f:
            f.write(EXTRA_SQL % 1)
        with Server(cqtest.BINARY, args=("--projections", pdir)) as srv:
            c = Client(srv)
            ids = self.workload(c, n=5)
            head = self.wait_caught_up(
                c, ids[-1], extra=(("order_customer", {"order_id": ids[0]}),))
            rc, out, err = verify(srv, "--projections", pdir)
            self.assertEqual(rc, 0, "stdout:\n%s\nstderr:\n%s" % (out, err))
            self.assertIn("order_customers: OK (position %d, 1 table, 5 rows)\n"
                          % head, out)
            c.close()
            srv.stop()

            # a newer version of the file: the tables are not what it builds
            with open(path, "w") as f:
                f.write(EXTRA_SQL % 2)
            rc, out, err = verify(srv, "--projections", pdir)
            self.assertEqual(rc, 1, out)
            self.assertRegex(out, r"(?m)^order_customers: built from another file")

            # a file the server never ran
            with open(os.path.join(pdir, "zz_new.sql"), "w") as f:
                f.write((EXTRA_SQL % 1).replace("order_customer", "new_customer"))
            rc, out, err = verify(srv, "--projections", pdir)
            self.assertEqual(rc, 1, out)
            self.assertRegex(out, r"(?m)^new_customers: not built")

    def test_pg_errors_exit_2(self):
        """verify --store: an unreachable server, an empty database."""
        if not cqtest.PG:
            self.skipTest("needs CQ_TEST_BACKEND=pg")
        port = cqtest.free_port()
        bad = "postgresql://cqrs:s3cret-pw@127.0.0.1:%d/nowhere" % port
        rc, out, err = verify(None, "--store", bad)
        self.assertEqual(rc, 2, out + err)
        self.assertNotIn("s3cret-pw", out + err)
        self.assertIn("127.0.0.1:%d" % port, err)

        empty = cqtest.pg_create_database("verify_empty")
        try:
            rc, out, err = verify(None, "--store", empty)
            self.assertEqual(rc, 2, out + err)
            self.assertIn("no event store", err)
            self.assertEqual(cqtest.pg_rows(
                empty, "SELECT table_name FROM information_schema.tables"
                " WHERE table_schema = current_schema()"), [], "verify created tables")
        finally:
            cqtest.pg_drop_database(empty)

    def test_errors_exit_2(self):
        missing = os.path.join(self.tmpdir(), "no-such-dir")
        rc, out, err = verify(missing)
        self.assertEqual(rc, 2, out + err)
        self.assertIn("no such data directory", err)
        self.assertIn(missing, err)

        empty = self.tmpdir()
        rc, out, err = verify(empty)
        self.assertEqual(rc, 2, out + err)
        self.assertIn("no event store", err)
        self.assertEqual(os.listdir(empty), [], "verify created files")

        p = subprocess.run([cqtest.BINARY, "verify", "--bogus", "x"],
                           capture_output=True, timeout=60)
        self.assertEqual(p.returncode, 2)
        self.assertIn(b"unknown option", p.stderr)

        p = subprocess.run([cqtest.BINARY, "verify", "--data"],
                           capture_output=True, timeout=60)
        self.assertEqual(p.returncode, 2)

        bad = self.tmpdir()
        with open(os.path.join(bad, "broken.sql"), "w") as f:
            f.write("-- @projection broken\nSELECT 1;\n")
        rc, out, err = verify(empty, "--projections", bad)
        self.assertEqual(rc, 2, out + err)
        self.assertIn("broken.sql", err)


if __name__ == "__main__":
    cqtest.main()
