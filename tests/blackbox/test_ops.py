"""Black-box tests of the operations routes: projection status and control
(GET /projections[/{name}], POST /projections/{name}/pause|resume|reset|
retry|skip) and readiness (GET /readyz).

A custom projection (ops_fragile, loaded with --projections DIR) fails on
payments of 5000 cents or more -- unless the payment id is listed in its
table ops_fragile_allow, which the tests fill with sqlite3 to take the
cause of a failure away before a retry.

    python3 tests/blackbox/test_ops.py /path/to/cqrsd
"""
import os
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
import urllib.parse
import unittest

sys.dont_write_bytecode = True

import cqtest  # noqa: E402
from problems import assert_type  # noqa: E402
from cqtest import Client, Server, uid  # noqa: E402

STALE_WARNING = '110 - "Response is Stale"'
BUILTIN = {"order_summaries": "async", "payment_confirmation": "inline",
           "sales_dashboard": "async"}
OPS = ("pause", "resume", "reset", "retry", "skip")
STATUS_KEYS = {"name", "version", "mode", "status", "position", "head",
               "lag_events", "lag_seconds", "last_error"}
ORDER_TABLES = ("order_summaries", "dashboard_orders", "dashboard_status",
                "dashboard_currency", "dashboard_day")

FRAGILE_SQL = """\
-- Fails on a payment of 5000 cents or more, unless its id is allowed.
-- @projection ops_fragile
-- @version 1
-- @mode async

CREATE TABLE IF NOT EXISTS ops_fragile_payments (
    payment_id   TEXT PRIMARY KEY,
    order_id     TEXT NOT NULL,
    amount_cents BIGINT NOT NULL,
    ok           INTEGER NOT NULL CHECK (ok = 1)
);
CREATE TABLE IF NOT EXISTS ops_fragile_allow (
    payment_id TEXT PRIMARY KEY
);

-- @on PaymentReceived
INSERT INTO ops_fragile_payments (payment_id, order_id, amount_cents, ok)
VALUES (:data.payment_id, :data.order_id, :data.amount_cents,
        CASE WHEN :data.amount_cents < 5000 OR EXISTS (
                  SELECT 1 FROM ops_fragile_allow
                   WHERE payment_id = :data.payment_id)
             THEN 1 ELSE 0 END)
ON CONFLICT (payment_id) DO NOTHING;

-- @query ops_fragile_all
-- @result list
SELECT payment_id, order_id, amount_cents FROM ops_fragile_payments
 ORDER BY payment_id;
"""


def qpath(name, params=None):
    if not params:
        return "/queries/" + name
    return "/queries/%s?%s" % (name, urllib.parse.urlencode(list(params.items())))


def db_tables(path, only):
    con = sqlite3.connect(path)
    try:
        out = {}
        for n in only:
            out[n] = sorted(con.execute('SELECT * FROM "%s"' % n).fetchall(), key=repr)
        return out
    finally:
        con.close()


def sql(path, statements, params=()):
    con = sqlite3.connect(path, timeout=10)
    try:
        rows = None
        for s in statements if isinstance(statements, (list, tuple)) else [statements]:
            rows = con.execute(s, params).fetchall()
        con.commit()
        return rows
    finally:
        con.close()


class OpsBase(unittest.TestCase):
    """Servers and temporary directories owned by one test."""
    maxDiff = 4000

    def setUp(self):
        self.servers = []
        self.clients = []
        self.tmpdirs = []

    def tearDown(self):
        for c in self.clients:
            c.close()
        for s in self.servers:
            s.close(failed=s.running())
        for d in self.tmpdirs:
            shutil.rmtree(d, ignore_errors=True)

    def start(self, fragile=False, data_dir=None):
        args = ()
        if fragile:
            pdir = tempfile.mkdtemp(prefix="cqrsd-ops-p-")
            self.tmpdirs.append(pdir)
            with open(os.path.join(pdir, "ops_fragile.sql"), "w") as f:
                f.write(FRAGILE_SQL)
            args = ("--projections", pdir)
        s = Server(cqtest.BINARY, data_dir=data_dir, args=args)
        self.servers.append(s)
        s.start()
        c = Client(s)
        self.clients.append(c)
        return s, c

    # ---- helpers ---------------------------------------------------------

    def cmd(self, c, ctype, body):
        st, _, b = c.command(ctype, body)
        self.assertEqual(st, 202, "%s %r -> %s %r" % (ctype, body, st, b))
        return b

    def place(self, c, oid, total, customer="c-ops", currency="EUR"):
        return self.cmd(c, "PlaceOrder", {
            "order_id": oid, "customer_id": customer, "currency": currency,
            "items": [{"sku": "k", "quantity": 1, "unit_price_cents": total}]})

    def pay(self, c, oid, pid, amount):
        b = self.cmd(c, "RecordPayment", {"order_id": oid, "payment_id": pid,
                                          "amount_cents": amount})
        self.assertEqual(b["events"][0]["type"], "PaymentReceived", b)
        return b["events"][0]["position"]

    def check_status_doc(self, st, name=None):
        """Shape of one projection status; returns it."""
        self.assertIsInstance(st, dict, st)
        self.assertTrue(STATUS_KEYS <= set(st), "status lacks %r: %r"
                        % (STATUS_KEYS - set(st), st))
        if name is not None:
            self.assertEqual(st["name"], name, st)
        for k in ("version", "position", "head", "lag_events"):
            self.assertIs(type(st[k]), int, "%s not an integer: %r" % (k, st))
        # null when the event store cannot be read (LagUnreadableTest)
        self.assertIn(type(st["lag_seconds"]), (int, float, type(None)), st)
        if st["lag_seconds"] is not None:
            self.assertGreaterEqual(st["lag_seconds"], 0, st)
        self.assertIn(st["mode"], ("async", "inline"), st)
        self.assertIn(st["status"], ("running", "paused", "failed"), st)
        self.assertGreaterEqual(st["version"], 1, st)
        self.assertGreaterEqual(st["position"], 0, st)
        self.assertGreaterEqual(st["head"], st["position"], st)
        self.assertEqual(st["lag_events"], st["head"] - st["position"], st)
        if st["status"] == "failed":
            e = st["last_error"]
            self.assertIsInstance(e, dict, st)
            self.assertIs(type(e.get("position")), int, st)
            self.assertIsInstance(e.get("event_type"), str, st)
            self.assertIsInstance(e.get("message"), str, st)
            self.assertTrue(e["message"], st)
        else:
            self.assertIsNone(st["last_error"], st)
        return st

    def status(self, c, name):
        st, h, b = c.get("/projections/" + name)
        self.assertEqual(st, 200, "GET /projections/%s -> %s %r" % (name, st, b))
        self.assertIn("json", h.get("content-type", ""), h)
        return self.check_status_doc(b, name)

    def control(self, c, name, op, expect=200):
        st, h, b = c.post("/projections/%s/%s" % (name, op))
        if expect == 200:
            self.assertEqual(st, 200, "POST /projections/%s/%s -> %s %r"
                             % (name, op, st, b))
            return self.check_status_doc(b, name)
        cqtest.problem_errors(self, st, h, b, expect)
        # docs/api.md: an unknown projection or operation is not-found; an
        # operation the projection's mode or state does not take, conflict
        assert_type(self, b, {404: "not-found", 409: "conflict"}[expect])
        return b

    def wait_status(self, c, name, pred, what, timeout=30.0):
        deadline = time.monotonic() + timeout
        while True:
            st = self.status(c, name)
            if pred(st):
                return st
            self.assertLess(time.monotonic(), deadline,
                            "%s: waited %.0f s for %s; last %r" % (name, timeout, what, st))
            time.sleep(0.02)

    def wait_position(self, c, name, head, timeout=30.0):
        return self.wait_status(c, name, lambda s: s["position"] >= head,
                                "position %d" % head, timeout)

    def query(self, c, name, params=None, expect=200):
        st, h, b = c.get(qpath(name, params))
        self.assertEqual(st, expect, "GET %s -> %s %r" % (qpath(name, params), st, b))
        return b, h

    def readyz(self, c):
        st, h, b = c.get("/readyz")
        self.assertIn(st, (200, 503), "GET /readyz -> %s %r" % (st, b))
        self.assertIn("json", h.get("content-type", ""), h)
        self.assertIsInstance(b, dict, b)
        for k in ("status", "head_position", "max_lag_seconds",
                  "lag_bound_seconds", "reasons"):
            self.assertIn(k, b, b)
        self.assertIs(type(b["head_position"]), int, b)
        self.assertIn(type(b["max_lag_seconds"]), (int, float), b)
        self.assertEqual(b["lag_bound_seconds"], 30, b)
        self.assertIsInstance(b["reasons"], list, b)
        for r in b["reasons"]:
            self.assertIsInstance(r, str, b)
        if st == 200:
            self.assertEqual(b["status"], "ready", b)
            self.assertEqual(b["reasons"], [], b)
        else:
            self.assertEqual(b["status"], "not_ready", b)
            self.assertTrue(b["reasons"], b)
        return st, b


# =============================================================================

class RoutesTest(OpsBase):
    """Listing, one status, methods, unknown names and operations,
    conflicts, and readiness of a healthy server."""

    def test_routes(self):
        srv, c = self.start(fragile=True)
        oid = uid("o")
        self.place(c, oid, 1000)
        self.pay(c, oid, uid("p"), 400)
        head = c.head()
        for name in ("order_summaries", "sales_dashboard", "ops_fragile"):
            self.wait_position(c, name, head)

        with self.subTest("GET /projections"):
            st, h, b = c.get("/projections")
            self.assertEqual(st, 200, b)
            self.assertIn("json", h.get("content-type", ""), h)
            self.assertIsInstance(b, dict, b)
            self.assertIsInstance(b.get("projections"), list, b)
            byname = {}
            for p in b["projections"]:
                self.check_status_doc(p)
                byname[p["name"]] = p
            self.assertEqual(len(byname), len(b["projections"]), b)
            want = dict(BUILTIN, ops_fragile="async")
            self.assertEqual({n: p["mode"] for n, p in byname.items()}, want)
            for n, p in byname.items():
                self.assertEqual(p["status"], "running", p)
                self.assertEqual(p["version"], 1, p)
                self.assertEqual(p["head"], head, p)
                self.assertEqual(p["position"], head, p)
                self.assertEqual(p["lag_events"], 0, p)
                self.assertEqual(p["lag_seconds"], 0, p)

        with self.subTest("GET /projections/{name}"):
            for n, mode in dict(BUILTIN, ops_fragile="async").items():
                s = self.status(c, n)
                self.assertEqual((s["mode"], s["status"], s["position"], s["head"]),
                                 (mode, "running", head, head), s)

        with self.subTest("unknown projection"):
            for method, path in (("GET", "/projections/no_such_projection"),
                                 ("POST", "/projections/no_such_projection/pause"),
                                 ("POST", "/projections/no_such_projection/skip")):
                st, h, b = c.req(method, path)
                cqtest.problem_errors(self, st, h, b, 404)
                assert_type(self, b, "not-found")

        with self.subTest("methods on /projections/{name}"):
            for method in ("POST", "PUT", "DELETE", "PATCH"):
                st, h, b = c.req(method, "/projections/order_summaries")
                cqtest.problem_errors(self, st, h, b, 405)
                assert_type(self, b, "method-not-allowed")
                self.assertEqual(h.get("allow"), "GET, HEAD", "%s: %r" % (method, h))
        with self.subTest("methods on /projections/{name}/{op}"):
            for method, op in (("GET", "pause"), ("GET", "retry"), ("GET", "skip"),
                               ("PUT", "reset"), ("DELETE", "resume")):
                st, h, b = c.req(method, "/projections/order_summaries/" + op)
                cqtest.problem_errors(self, st, h, b, 405)
                assert_type(self, b, "method-not-allowed")
                self.assertEqual(h.get("allow"), "POST", "%s %s: %r" % (method, op, h))

        with self.subTest("unknown operation"):
            for op in ("explode", "pause2", "rebuild_now"):
                self.control(c, "order_summaries", op, expect=404)
                self.control(c, "ops_fragile", op, expect=404)

        with self.subTest("inline projection"):
            for op in OPS:
                self.control(c, "payment_confirmation", op, expect=409)
            s = self.status(c, "payment_confirmation")
            self.assertEqual((s["status"], s["position"]), ("running", head), s)

        with self.subTest("retry/skip when not failed"):
            for name in ("order_summaries", "sales_dashboard", "ops_fragile"):
                for op in ("retry", "skip"):
                    self.control(c, name, op, expect=409)
                s = self.status(c, name)
                self.assertEqual((s["status"], s["position"]), ("running", head), s)

        with self.subTest("readyz ready"):
            st, b = self.readyz(c)
            self.assertEqual(st, 200, b)
            self.assertEqual(b["head_position"], head, b)
            self.assertEqual(b["max_lag_seconds"], 0, b)
        # none of the refused operations changed anything
        self.assertEqual(self.status(c, "order_summaries")["status"], "running")
        srv.stop()


# =============================================================================

class LagUnreadableTest(OpsBase):
    """A lag that cannot be read from the event store is not made up: the
    status says null and /readyz is not ready, naming why."""

    def test_lag_unreadable_is_null_and_not_ready(self):
        srv, c = self.start()
        self.place(c, uid("lag"), 1000)
        p0 = c.head()
        self.wait_position(c, "order_summaries", p0)
        self.control(c, "order_summaries", "pause")
        self.place(c, uid("lag"), 1000)  # now behind: its lag is looked up
        # in the event store once the server no longer holds that event in
        # memory (the events committed last): after a restart (still paused)
        srv.stop()
        srv.start()
        s = self.status(c, "order_summaries")
        self.assertIsInstance(s["lag_seconds"], float, s)
        db = sqlite3.connect(os.path.join(srv.data_dir, "events.db"))
        try:
            db.execute("ALTER TABLE events RENAME TO events_away")
            db.commit()
            s = self.status(c, "order_summaries")
            self.assertIsNone(s["lag_seconds"], s)
            st, _, b = c.get("/readyz")
            self.assertEqual(st, 503, b)
            self.assertTrue(any("cannot be read" in r for r in b["reasons"]), b)
            st, _, text = c.get("/metrics")
            self.assertEqual(st, 200)
            text = text.decode() if isinstance(text, bytes) else str(text)
            self.assertNotIn('projection_lag_seconds{projection="order_summaries"}',
                             text)
            self.assertIn('projection_lag_events{projection="order_summaries"}',
                          text)
        finally:
            db.execute("ALTER TABLE events_away RENAME TO events")
            db.commit()
            db.close()
        s = self.status(c, "order_summaries")
        self.assertIsInstance(s["lag_seconds"], float, s)


class PauseResumeTest(OpsBase):

    def test_pause_persists_and_resume_catches_up(self):
        srv, c = self.start()
        a, b_ = uid("a"), uid("b")
        self.place(c, a, 1000)
        p0 = c.head()
        self.wait_position(c, "order_summaries", p0)
        self.wait_position(c, "sales_dashboard", p0)

        s = self.control(c, "order_summaries", "pause")
        self.assertEqual((s["status"], s["mode"], s["position"]), ("paused", "async", p0), s)
        s = self.status(c, "order_summaries")
        self.assertEqual((s["status"], s["position"]), ("paused", p0), s)
        # pausing twice keeps it paused
        s = self.control(c, "order_summaries", "pause")
        self.assertEqual((s["status"], s["position"]), ("paused", p0), s)

        # more events: the others move on, the paused one does not
        self.pay(c, a, uid("p"), 300)
        self.place(c, b_, 2000, customer="c-ops-b")
        head1 = c.head()
        self.assertGreater(head1, p0)
        self.wait_position(c, "sales_dashboard", head1)
        self.assertEqual(self.status(c, "payment_confirmation")["position"], head1)
        time.sleep(0.3)
        s = self.status(c, "order_summaries")
        self.assertEqual((s["status"], s["position"], s["head"], s["lag_events"]),
                         ("paused", p0, head1, head1 - p0), s)
        self.assertIsNone(s["last_error"], s)

        # queries keep answering, with the old data, stale
        body, h = self.query(c, "order_summary", {"order_id": a})
        self.assertEqual(body["data"]["paid_cents"], 0, body)
        self.assertEqual(body["meta"]["position"], p0, body)
        self.assertGreater(body["meta"]["lag_events"], 0, body)
        self.assertIs(body["meta"]["stale"], True, body)
        body, h = self.query(c, "customer_orders", {"customer_id": "c-ops"})
        self.assertEqual(len(body["data"]["orders"]), 1, body)
        self.assertIs(body["meta"]["stale"], True, body)
        # a wait for a position it will not reach times out, stale
        t0 = time.monotonic()
        body, h = self.query(c, "order_summary", {"order_id": a, "min_position": head1,
                                                  "wait_ms": 300})
        took = time.monotonic() - t0
        self.assertIs(body["meta"]["stale"], True, body)
        self.assertIn("warning", body["meta"], body)
        self.assertEqual(h.get("warning"), STALE_WARNING, h)
        self.assertEqual(body["meta"]["position"], p0, body)
        self.assertGreaterEqual(took, 0.25)
        self.assertLess(took, 15)
        # a fresh pause is no reason to be unready
        st, rb = self.readyz(c)
        self.assertEqual(st, 200, rb)
        self.assertEqual(rb["head_position"], head1, rb)
        self.assertLess(rb["max_lag_seconds"], 30, rb)

        # paused across a clean restart
        srv.stop()
        read_db = os.path.join(srv.data_dir, "read.db")
        events_db = os.path.join(srv.data_dir, "events.db")
        # ... and make the first event it has not applied two minutes old
        sql(events_db, "UPDATE events SET recorded_at = recorded_at - 120000"
            " WHERE position = ?", (p0 + 1,))
        srv.start()
        s = self.status(c, "order_summaries")
        self.assertEqual((s["status"], s["position"], s["lag_events"]),
                         ("paused", p0, head1 - p0), s)
        time.sleep(0.4)
        s = self.status(c, "order_summaries")
        self.assertEqual((s["status"], s["position"]), ("paused", p0), s)
        self.assertGreater(s["lag_seconds"], 100, s)
        self.assertLess(s["lag_seconds"], 1000, s)
        body, _ = self.query(c, "order_summary", {"order_id": a})
        self.assertEqual(body["data"]["paid_cents"], 0, body)
        self.assertIs(body["meta"]["stale"], True, body)
        self.assertEqual(self.status(c, "sales_dashboard")["status"], "running")

        # lagging more than 30 s: not ready
        st, rb = self.readyz(c)
        self.assertEqual(st, 503, rb)
        self.assertGreater(rb["max_lag_seconds"], 100, rb)
        self.assertEqual(len(rb["reasons"]), 1, rb)
        self.assertIn("order_summaries", rb["reasons"][0], rb)
        self.assertNotIn("failed", rb["reasons"][0], rb)

        # resume: it catches up
        s = self.control(c, "order_summaries", "resume")
        self.assertEqual(s["status"], "running", s)
        self.assertGreaterEqual(s["position"], p0, s)
        body, _ = self.query(c, "order_summary", {"order_id": b_, "min_position": head1,
                                                  "wait_ms": 20000})
        self.assertIs(body["meta"]["stale"], False, body)
        self.assertEqual(body["data"]["customer_id"], "c-ops-b", body)
        body, _ = self.query(c, "order_summary", {"order_id": a})
        self.assertEqual(body["data"]["paid_cents"], 300, body)
        self.assertEqual(body["meta"]["lag_events"], 0, body)
        self.assertIs(body["meta"]["stale"], False, body)
        s = self.status(c, "order_summaries")
        self.assertEqual((s["status"], s["position"], s["lag_events"], s["lag_seconds"]),
                         ("running", head1, 0, 0), s)
        st, rb = self.readyz(c)
        self.assertEqual(st, 200, rb)
        # and it follows new events again
        self.pay(c, a, uid("p"), 100)
        head2 = c.head()
        self.wait_position(c, "order_summaries", head2)
        srv.stop()
        srv.start()
        s = self.status(c, "order_summaries")
        self.assertEqual((s["status"], s["position"]), ("running", head2), s)
        srv.stop()


# =============================================================================

class ResetTest(OpsBase):

    def answers(self, c, orders, customers):
        out = {}
        for oid in orders:
            b, _ = self.query(c, "order_summary", {"order_id": oid})
            out["summary " + oid] = b["data"]
        for cust in customers:
            b, _ = self.query(c, "customer_orders", {"customer_id": cust, "limit": 100})
            out["customer " + cust] = b["data"]
        b, _ = self.query(c, "sales_dashboard")
        out["dashboard"] = b["data"]
        return out

    def test_reset_replays_to_the_same_read_model(self):
        srv, c = self.start()
        orders, customers = [], ("c-r1", "c-r2", "c-r3")
        for i in range(15):
            oid = uid("r")
            total = 1000 + 37 * i
            self.place(c, oid, total, customer=customers[i % 3],
                       currency=("EUR", "USD", "GBP")[i % 3])
            orders.append(oid)
            if i % 4 in (1, 2):
                self.pay(c, oid, uid("p"), total // 2)
            if i % 4 == 2:
                self.cmd(c, "RecordPayment", {"order_id": oid, "payment_id": uid("p"),
                                              "amount_cents": total - total // 2})
                self.cmd(c, "ShipOrder", {"order_id": oid, "carrier": "DHL",
                                          "tracking_number": "T%d" % i})
            if i % 4 == 3:
                self.cmd(c, "CancelOrder", {"order_id": oid, "reason": "test"})
        head = c.head()
        for name in ("order_summaries", "sales_dashboard"):
            self.wait_position(c, name, head)
        before = self.answers(c, orders, customers)
        self.assertEqual(len(before["customer c-r1"]["orders"]), 5)
        srv.stop()
        read_db = os.path.join(srv.data_dir, "read.db")
        tables_before = db_tables(read_db, ORDER_TABLES)

        # damage the read models: only a replay from the events repairs them
        sql(read_db, [
            "INSERT INTO order_summaries (order_id, customer_id, status, payment_status,"
            " currency, total_cents, paid_cents, item_count, placed_at, updated_at,"
            " placed_position, version) VALUES ('zz-sentinel', 'c-r1', 'placed',"
            " 'unpaid', 'EUR', 1, 0, 1, '2000-01-01T00:00:00Z',"
            " '2000-01-01T00:00:00Z', 0, 1)",
            "UPDATE order_summaries SET status = 'bogus', paid_cents = 99"
            " WHERE order_id = '%s'" % orders[0],
            "DELETE FROM dashboard_currency",
            "UPDATE dashboard_status SET orders = orders + 1000"])
        srv.start()
        damaged = self.answers(c, orders, customers)
        self.assertNotEqual(damaged, before, "the damage is not visible")
        self.query(c, "order_summary", {"order_id": "zz-sentinel"})

        for name in ("order_summaries", "sales_dashboard"):
            s = self.control(c, name, "reset")
            self.assertEqual((s["status"], s["mode"]), ("running", "async"), s)
            self.assertLessEqual(s["position"], head, s)
            self.assertEqual(s["head"], head, s)
        for name in ("order_summaries", "sales_dashboard"):
            s = self.wait_position(c, name, head)
            self.assertEqual((s["status"], s["position"], s["lag_events"]),
                             ("running", head, 0), s)
        self.query(c, "order_summary", {"order_id": "zz-sentinel"}, expect=404)
        after = self.answers(c, orders, customers)
        for k in before:
            self.assertEqual(after[k], before[k], "after reset: %s" % k)
        # the inline projection was not touched
        self.assertEqual(self.status(c, "payment_confirmation")["position"], head)
        st, rb = self.readyz(c)
        self.assertEqual(st, 200, rb)
        srv.stop()
        self.assertEqual(db_tables(read_db, ORDER_TABLES), tables_before)


# =============================================================================

class FailedProjectionTest(OpsBase):
    """ops_fragile fails on a payment of 5000 or more."""

    def wait_failed_at(self, c, position, timeout=30.0):
        s = self.wait_status(
            c, "ops_fragile",
            lambda s: s["status"] == "failed" and s["last_error"]["position"] == position,
            "failed at %d" % position, timeout)
        self.assertEqual(s["position"], position - 1, s)
        self.assertEqual(s["last_error"]["event_type"], "PaymentReceived", s)
        self.assertEqual(s["mode"], "async", s)
        return s

    def fragile_ids(self, c):
        b, _ = self.query(c, "ops_fragile_all")
        return sorted(r["payment_id"] for r in b["data"]), b["meta"]

    def test_failed_status_readyz_and_retry(self):
        srv, c = self.start(fragile=True)
        oid = uid("o")
        self.place(c, oid, 20000)
        good, bad, late = uid("pg"), uid("pb"), uid("pl")
        self.pay(c, oid, good, 1000)
        pbad = self.pay(c, oid, bad, 6000)
        self.pay(c, oid, late, 100)
        head = c.head()
        s = self.wait_failed_at(c, pbad)
        self.assertEqual((s["head"], s["lag_events"]), (head, head - pbad + 1), s)
        self.assertTrue(s["last_error"]["message"], s)
        # the others are unaffected
        for name in ("order_summaries", "sales_dashboard"):
            self.assertEqual(self.wait_position(c, name, head)["status"], "running")
        st, _, lst = c.get("/projections")
        self.assertEqual(st, 200, lst)
        mine = [p for p in lst["projections"] if p["name"] == "ops_fragile"]
        self.assertEqual(len(mine), 1, lst)
        self.assertEqual(mine[0]["status"], "failed", mine)
        self.assertEqual(mine[0]["last_error"], s["last_error"], mine)
        ids, meta = self.fragile_ids(c)
        self.assertEqual(ids, [good])
        self.assertIs(meta["stale"], True, meta)

        st, rb = self.readyz(c)
        self.assertEqual(st, 503, rb)
        self.assertEqual(rb["head_position"], head, rb)
        self.assertEqual(rb["reasons"],
                         ["projection ops_fragile failed at position %d" % pbad], rb)

        # retry with the cause still there: it fails again at the same event
        n_logged = srv.stderr_text().count("failed at position %d" % pbad)
        s = self.control(c, "ops_fragile", "retry")
        self.assertIn(s["status"], ("running", "failed"), s)
        self.assertEqual(s["position"], pbad - 1, s)
        s = self.wait_failed_at(c, pbad)
        deadline = time.monotonic() + 10
        while srv.stderr_text().count("failed at position %d" % pbad) <= n_logged:
            self.assertLess(time.monotonic(), deadline,
                            "retry did not apply the failing event again")
            time.sleep(0.02)
        self.assertEqual(self.fragile_ids(c)[0], [good])
        self.assertEqual(self.readyz(c)[0], 503)

        # take the cause away: retry applies it and goes on
        sql(os.path.join(srv.data_dir, "read.db"),
            "INSERT INTO ops_fragile_allow (payment_id) VALUES (?)", (bad,))
        s = self.control(c, "ops_fragile", "retry")
        self.assertIn(s["status"], ("running",), s)
        self.assertIsNone(s["last_error"], s)
        s = self.wait_position(c, "ops_fragile", head)
        self.assertEqual((s["status"], s["position"], s["last_error"]),
                         ("running", head, None), s)
        ids, meta = self.fragile_ids(c)
        self.assertEqual(ids, sorted([good, bad, late]))
        self.assertIs(meta["stale"], False, meta)
        st, rb = self.readyz(c)
        self.assertEqual(st, 200, rb)
        for op in ("retry", "skip"):
            self.control(c, "ops_fragile", op, expect=409)
        # no event was skipped
        con = sqlite3.connect(os.path.join(srv.data_dir, "read.db"))
        try:
            n = con.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table'"
                            " AND name = 'cq_skipped_events'").fetchone()[0]
            if n:
                self.assertEqual(con.execute(
                    "SELECT count(*) FROM cq_skipped_events").fetchone()[0], 0)
        finally:
            con.close()
        srv.stop()

    def test_skip(self):
        srv, c = self.start(fragile=True)
        oid = uid("o")
        self.place(c, oid, 30000)
        good, bad1, mid, bad2, late = (uid("pg"), uid("pb1"), uid("pm"),
                                       uid("pb2"), uid("pl"))
        self.pay(c, oid, good, 1000)
        p1 = self.pay(c, oid, bad1, 6000)
        self.pay(c, oid, mid, 200)
        p2 = self.pay(c, oid, bad2, 7000)
        self.pay(c, oid, late, 300)
        head = c.head()
        self.wait_failed_at(c, p1)
        st, rb = self.readyz(c)
        self.assertEqual(st, 503, rb)
        self.assertIn("projection ops_fragile failed at position %d" % p1, rb["reasons"])

        t_before = time.time()
        s = self.control(c, "ops_fragile", "skip")
        self.assertIn(s["status"], ("running", "failed"), s)
        self.assertGreaterEqual(s["position"], p1, s)
        # it skipped one event, applied the next and stopped at the second bad one
        s = self.wait_failed_at(c, p2)
        ids, _ = self.fragile_ids(c)
        self.assertEqual(ids, sorted([good, mid]))
        st, rb = self.readyz(c)
        self.assertEqual(st, 503, rb)
        self.assertEqual(rb["reasons"],
                         ["projection ops_fragile failed at position %d" % p2], rb)

        s = self.control(c, "ops_fragile", "skip")
        self.assertEqual(s["status"], "running", s)
        self.assertIsNone(s["last_error"], s)
        self.assertGreaterEqual(s["position"], p2, s)
        s = self.wait_position(c, "ops_fragile", head)
        self.assertEqual((s["status"], s["position"], s["lag_events"], s["last_error"]),
                         ("running", head, 0, None), s)
        ids, meta = self.fragile_ids(c)
        self.assertEqual(ids, sorted([good, mid, late]))
        self.assertIs(meta["stale"], False, meta)
        self.assertEqual(self.readyz(c)[0], 200)
        for op in ("retry", "skip"):
            self.control(c, "ops_fragile", op, expect=409)
        # later events are applied as they come
        extra = uid("px")
        self.pay(c, oid, extra, 50)
        head2 = c.head()
        self.wait_position(c, "ops_fragile", head2)
        self.assertIn(extra, self.fragile_ids(c)[0])
        t_after = time.time()

        con = sqlite3.connect(os.path.join(srv.data_dir, "read.db"), timeout=10)
        try:
            rows = con.execute(
                "SELECT projection, position, event_type, error, skipped_at"
                " FROM cq_skipped_events ORDER BY position").fetchall()
        finally:
            con.close()
        self.assertEqual([r[:3] for r in rows],
                         [("ops_fragile", p1, "PaymentReceived"),
                          ("ops_fragile", p2, "PaymentReceived")], rows)
        for r in rows:
            self.assertIsInstance(r[3], str, r)
            self.assertTrue(r[3], r)
            self.assertIsNotNone(r[4], r)
            # seconds or milliseconds since the epoch, or RFC 3339 text
            if isinstance(r[4], (int, float)):
                t = r[4] / 1000.0 if r[4] > 1e11 else r[4]
                self.assertGreaterEqual(t, t_before - 5, r)
                self.assertLessEqual(t, t_after + 5, r)
            else:
                self.assertRegex(r[4], cqtest.RFC3339_RE, r)
        srv.stop()
        # the skipped events are still recorded, and it still runs, after a restart
        srv.start()
        s = self.status(c, "ops_fragile")
        self.assertEqual((s["status"], s["position"]), ("running", head2), s)
        srv.stop()


class ConcurrentControlTest(OpsBase):
    """Control operations asked by several clients at once: each is its own
    operation and gets its own answer, and none holds an HTTP thread while
    the projector carries it out."""

    def run_threads(self, srv, workers):
        """Run each worker(client) on a thread of its own with its own
        connection; re-raise the first failure."""
        errors = []

        def body(fn):
            cl = Client(srv)
            try:
                fn(cl)
            except BaseException as ex:  # noqa: B902 -- reported below
                errors.append(ex)
            finally:
                cl.close()

        threads = [threading.Thread(target=body, args=(fn,)) for fn in workers]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
            self.assertFalse(t.is_alive(), "a control client did not finish")
        if errors:
            raise errors[0]

    def test_each_answer_is_its_own(self):
        """skip/pause/skip/resume at once on a projection that has not
        failed: a skip is always 409 "has not failed", a pause or resume
        always 200, and nothing is skipped."""
        srv, c = self.start()
        self.place(c, uid("o"), 1000)
        self.wait_position(c, "sales_dashboard", c.head())
        rounds = 40
        seen = {"pause": {}, "resume": {}, "skip": {}}
        lock = threading.Lock()

        def worker(op):
            def fn(cl):
                for _ in range(rounds):
                    st, _, b = cl.post("/projections/sales_dashboard/" + op,
                                       retry=False)
                    detail = b.get("detail", "") if isinstance(b, dict) else b
                    with lock:
                        key = (st, "has not failed" in str(detail))
                        seen[op][key] = seen[op].get(key, 0) + 1
            return fn

        self.run_threads(srv, [worker(op) for op in ("skip", "pause", "skip", "resume")])
        self.assertEqual(seen["pause"], {(200, False): rounds}, seen)
        self.assertEqual(seen["resume"], {(200, False): rounds}, seen)
        self.assertEqual(seen["skip"], {(409, True): 2 * rounds}, seen)
        con = sqlite3.connect(os.path.join(srv.data_dir, "read.db"))
        try:
            if con.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table'"
                           " AND name = 'cq_skipped_events'").fetchone()[0]:
                self.assertEqual(con.execute(
                    "SELECT count(*) FROM cq_skipped_events").fetchone()[0], 0)
        finally:
            con.close()
        # the last operation was a resume or a pause: it ends running after
        # one more resume
        self.control(c, "sales_dashboard", "resume")
        self.assertEqual(self.wait_position(c, "sales_dashboard", c.head())["status"],
                         "running")
        srv.stop()

    def test_skips_answered_200_are_the_skips_recorded(self):
        """Several clients skip the failing events of a projection while
        another pauses and resumes it: every skip answered 200 recorded
        exactly one skipped event, every other skip was 409 "has not
        failed", and no pause or resume was refused."""
        srv, c = self.start(fragile=True)
        oid = uid("o")
        self.place(c, oid, 900000)
        bad = [self.pay(c, oid, uid("pb"), 6000 + i) for i in range(8)]
        self.wait_status(c, "ops_fragile",
                         lambda s: s["status"] == "failed"
                         and s["last_error"]["position"] == bad[0],
                         "failed at %d" % bad[0])
        out = {"skip200": 0, "skip409": 0, "other": []}
        lock = threading.Lock()

        def skipper(cl):
            for _ in range(12):
                st, _, b = cl.post("/projections/ops_fragile/skip", retry=False)
                with lock:
                    if st == 200:
                        out["skip200"] += 1
                    elif st == 409 and "has not failed" in str(b.get("detail")):
                        out["skip409"] += 1
                    else:
                        out["other"].append(("skip", st, b))

        def pauser(cl):
            for i in range(12):
                op = "pause" if i % 2 == 0 else "resume"
                st, _, b = cl.post("/projections/ops_fragile/" + op, retry=False)
                if st != 200:
                    with lock:
                        out["other"].append((op, st, b))

        self.run_threads(srv, [skipper, skipper, skipper, pauser])
        self.assertEqual(out["other"], [], out)
        rows = sql(os.path.join(srv.data_dir, "read.db"),
                   "SELECT position FROM cq_skipped_events"
                   " WHERE projection = 'ops_fragile' ORDER BY position")
        self.assertEqual(len(rows), out["skip200"], (rows, out))
        self.assertEqual([r[0] for r in rows], bad[:len(rows)], rows)
        self.assertEqual(out["skip200"] + out["skip409"], 36, out)
        srv.stop()

    def test_healthz_answers_while_controls_wait(self):
        """Eight control operations held up behind a lock on read.db (the
        projector cannot carry them out) leave the HTTP threads free:
        /healthz answers before any of them is, and then they all are."""
        srv, c = self.start()
        self.place(c, uid("o"), 1000)
        self.wait_position(c, "sales_dashboard", c.head())
        lockcon = sqlite3.connect(os.path.join(srv.data_dir, "read.db"),
                                  timeout=10, isolation_level=None)
        answered = []
        lock = threading.Lock()

        def pauser(cl):
            st, _, b = cl.post("/projections/sales_dashboard/pause", retry=False)
            with lock:
                answered.append((st, b))

        lockcon.execute("BEGIN IMMEDIATE")
        try:
            runner = threading.Thread(
                target=self.run_threads, args=(srv, [pauser] * 8))
            runner.start()
            time.sleep(0.3)  # let the eight reach the server
            hc = Client(srv, timeout=4)
            self.clients.append(hc)
            st, _, b = hc.get("/healthz", retry=False)
            self.assertEqual(st, 200, b)
            with lock:
                early = list(answered)
        finally:
            lockcon.execute("ROLLBACK")
            lockcon.close()
        runner.join(60)
        self.assertFalse(runner.is_alive())
        self.assertEqual(early, [], "control calls answered while read.db was locked")
        self.assertEqual([st for st, _ in answered], [200] * 8, answered)
        self.control(c, "sales_dashboard", "resume")
        srv.stop()


if __name__ == "__main__":
    cqtest.main()
