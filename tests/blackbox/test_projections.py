"""Black-box tests of the projection engine: idempotent re-application of
events (checkpoints set back), a crash during catch-up, a failing handler
that stops only its own projection, a projection file with a syntax error,
and a changed projection rebuilt on restart.

The read models are compared table by table, always with the server
stopped: with Python's sqlite3 module, or through psql when the suite runs
on PostgreSQL (CQ_TEST_BACKEND=pg, see cqtest.py).

    python3 tests/blackbox/test_projections.py /path/to/cqrsd

Environment: CQ_SEED (the seed of the kills during catch-up; each run
prints the one it used).
"""
import http.client
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import unittest

sys.dont_write_bytecode = True

import cqtest  # noqa: E402
from cqtest import Client, Server, uid  # noqa: E402

STALE_WARNING = '110 - "Response is Stale"'
ORDER_TABLES = ("order_summaries", "dashboard_orders", "dashboard_status",
                "dashboard_currency", "dashboard_day")


def qpath(name, params=None):
    if not params:
        return "/queries/" + name
    return "/queries/%s?%s" % (name, urllib.parse.urlencode(list(params.items())))


# ---- workload --------------------------------------------------------------

def run_workload(server, n_orders, threads=1, seed=1, customers=("c-a", "c-b")):
    """Place n_orders and move them through payments, shipping and
    cancellation. Returns {order_id: customer}."""
    rnd = random.Random(seed)
    plans = []
    for i in range(n_orders):
        items = [{"sku": "s-%d" % k, "quantity": rnd.randint(1, 5),
                  "unit_price_cents": rnd.randint(0, 3000)}
                 for k in range(rnd.randint(1, 3))]
        plans.append((uid("o"), customers[i % len(customers)],
                      ("EUR", "USD", "GBP")[i % 3], items, i % 5))
    errors = []
    placed = {}
    lock = threading.Lock()

    def cmd(c, ctype, body):
        st, _, b = c.command(ctype, body)
        if st != 202:
            raise AssertionError("%s %r -> %s %r" % (ctype, body, st, b))
        return b

    def worker(part):
        c = Client(server)
        try:
            for oid, cust, cur, items, kind in part:
                total = sum(it["quantity"] * it["unit_price_cents"] for it in items)
                cmd(c, "PlaceOrder", {"order_id": oid, "customer_id": cust,
                                      "currency": cur, "items": items})
                with lock:
                    placed[oid] = cust
                half = total // 2
                if kind in (1, 3) and half > 0:       # partial payment
                    cmd(c, "RecordPayment", {"order_id": oid, "payment_id": uid("p"),
                                             "amount_cents": half})
                if kind in (2, 4) and total > 0:      # paid in full (two parts)
                    if half > 0:
                        cmd(c, "RecordPayment", {"order_id": oid, "payment_id": uid("p"),
                                                 "amount_cents": half})
                    cmd(c, "RecordPayment", {"order_id": oid, "payment_id": uid("p"),
                                             "amount_cents": total - half})
                if kind == 2 and total > 0:
                    cmd(c, "ShipOrder", {"order_id": oid, "carrier": "DHL",
                                         "tracking_number": "T-%s" % oid})
                if kind in (3, 4):
                    cmd(c, "CancelOrder", {"order_id": oid, "reason": "test"})
        except BaseException as e:  # noqa: BLE001
            errors.append(e)
        finally:
            c.close()

    parts = [plans[i::threads] for i in range(threads)]
    ts = [threading.Thread(target=worker, args=(p,)) for p in parts]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if errors:
        raise errors[0]
    return placed


# ---- read models on disk ------------------------------------------------------
# "read" is read.db (the asynchronous read models), "events" events.db (the
# event store and the inline projections); on PostgreSQL both are the
# server's database unless it has a separate read store (cqtest.StoreDB).

INLINE_TABLES = ("payment_confirmations",)


def read_db(srv):
    return cqtest.store_db(srv, "read")


def events_db(srv):
    return cqtest.store_db(srv, "events")


def shared_db(srv):
    """True when the read models share the event store's database (the
    PostgreSQL default): the inline projections' checkpoints are in the
    same cq_projections then."""
    return cqtest.PG and not srv.read_uri


def db_tables(db, only=None):
    """{table: sorted rows} for every read-model table of db (not the
    engine's own cq_* tables, not the event store's), or only those
    named."""
    names = db.tables()
    if only is not None:
        names = [n for n in names if n in only]
    return {n: sorted(db.rows('SELECT * FROM "%s"' % n), key=repr) for n in names}


def checkpoints(db):
    return {r[0]: {"version": r[1], "position": r[2], "status": r[3],
                   "error": r[4], "error_position": r[5], "error_event": r[6]}
            for r in db.rows(
                "SELECT name, version, position, status, error, error_position,"
                " error_event FROM cq_projections")}


def set_checkpoint(db, position, names=None):
    if names is None:
        db.execute("UPDATE cq_projections SET position = ?", (position,))
    else:
        for n in names:
            db.execute("UPDATE cq_projections SET position = ? WHERE name = ?",
                       (position, n))


def read_models(srv):
    """Every read model table of a stopped server."""
    out = {"read.db": {t: rows for t, rows in db_tables(read_db(srv)).items()
                       if t not in INLINE_TABLES}}
    out["events.db"] = db_tables(events_db(srv), only=INLINE_TABLES)
    return out


class ProjectionTestBase(unittest.TestCase):
    maxDiff = 3000

    def setUp(self):
        self.servers = []
        self.tmpdirs = []

    def tearDown(self):
        for s in self.servers:
            # still running only when the test stopped half-way
            s.close(failed=s.running())
        for d in self.tmpdirs:
            shutil.rmtree(d, ignore_errors=True)

    def server(self, data_dir=None, args=(), separate_read=False):
        s = Server(cqtest.BINARY, data_dir=data_dir, args=args,
                   separate_read=separate_read)
        self.servers.append(s)
        return s

    def tmpdir(self, prefix="cqrsd-proj-"):
        d = tempfile.mkdtemp(prefix=prefix)
        self.tmpdirs.append(d)
        return d

    def query(self, c, name, params=None, headers=None):
        st, h, b = c.get(qpath(name, params), headers=headers)
        self.assertEqual(st, 200, "GET %s -> %s %r" % (qpath(name, params), st, b))
        return b["data"], b["meta"], h

    def wait_caught_up(self, c, order_id, head=None, timeout=120.0):
        """Wait until every orders projection reports position == head."""
        if head is None:
            head = c.head()
        deadline = time.monotonic() + timeout
        for name, params in (("order_summary", {"order_id": order_id}),
                             ("sales_dashboard", {}),
                             ("payment_confirmation", {"order_id": order_id})):
            while True:
                p = dict(params, min_position=head, wait_ms=10000)
                _, meta, _ = self.query(c, name, p)
                if not meta["stale"]:
                    self.assertGreaterEqual(meta["position"], head, meta)
                    break
                self.assertLess(time.monotonic(), deadline,
                                "%s did not reach %d: %r" % (name, head, meta))
            # with nothing written meanwhile, the position is exactly the head
            _, meta, _ = self.query(c, name, params)
            self.assertEqual(meta["position"], head, "%s: %r" % (name, meta))
            self.assertEqual(meta["lag_events"], 0, meta)
            self.assertFalse(meta["stale"], meta)
        return head


# =============================================================================

class IdempotencyTest(ProjectionTestBase):
    """Set the checkpoints back without touching the tables: every event
    after the checkpoint is applied a second time, and nothing changes."""

    def replay_from(self, srv, head, position, some_order):
        set_checkpoint(read_db(srv), position)
        set_checkpoint(events_db(srv), position, ["payment_confirmation"])
        cps = checkpoints(read_db(srv))
        want = ["order_summaries", "sales_dashboard"]
        if shared_db(srv):
            want.append("payment_confirmation")
        self.assertEqual({n: cp["position"] for n, cp in cps.items()},
                         dict.fromkeys(want, position))
        srv.start()
        c = Client(srv)
        try:
            self.assertEqual(c.head(), head)
            self.wait_caught_up(c, some_order, head)
        finally:
            c.close()
        srv.stop()
        # the checkpoints moved from `position` to the head again
        for which, db in (("read", read_db(srv)), ("events", events_db(srv))):
            for name, cp in checkpoints(db).items():
                self.assertEqual(cp["position"], head, "%s %s: %r" % (which, name, cp))
                self.assertEqual(cp["status"], "running", cp)

    def test_events_applied_twice_change_nothing(self):
        srv = self.server()
        srv.start()
        c = Client(srv)
        try:
            orders = run_workload(srv, 60, threads=4, seed=7)
            some_order = sorted(orders)[0]
            head = self.wait_caught_up(c, some_order)
        finally:
            c.close()
        srv.stop()
        before = read_models(srv)
        self.assertEqual(set(before["read.db"]), set(ORDER_TABLES))
        self.assertEqual(len(before["read.db"]["order_summaries"]), 60)
        self.assertEqual(len(before["events.db"]["payment_confirmations"]), 60)
        for t in ORDER_TABLES:
            self.assertTrue(before["read.db"][t], "table %s is empty" % t)

        self.replay_from(srv, head, 0, some_order)
        self.assertEqual(read_models(srv), before,
                         "replaying every event again changed the read models")

        for position in (head // 2, head // 3 + 1, head - 1):
            self.replay_from(srv, head, position, some_order)
            self.assertEqual(read_models(srv), before,
                             "replaying from %d changed the read models" % position)


# =============================================================================

class CrashDuringCatchUpTest(ProjectionTestBase):
    """SIGKILL while the projections replay a few thousand events: after a
    restart the read models equal those of a fresh replay."""

    N_ORDERS = 1400   # about 3500 events

    def poll_and_kill(self, srv, head, rnd):
        """Start srv and SIGKILL it during catch-up: 0-0.4 s after the
        first position above 0 is seen. Returns the position seen just
        before the kill (or None)."""
        srv.start()
        c = Client(srv, timeout=10)
        seen = None
        deadline = time.monotonic() + rnd.uniform(0.0, 0.4)
        started = time.monotonic() + 60   # at most this long for a first batch
        try:
            while time.monotonic() < deadline or (not seen and time.monotonic() < started):
                if not seen:
                    deadline = time.monotonic() + rnd.uniform(0.0, 0.4)
                st, _, b = c.get("/queries/sales_dashboard?wait_ms=0")
                self.assertEqual(st, 200, b)
                seen = b["meta"]["position"]
                if 0 < seen < head and rnd.random() < 0.5:
                    break
                if seen >= head:
                    break
        finally:
            c.close()
        srv.kill()
        return seen

    def test_kill_during_catch_up(self):
        # random kill points: the seed is printed, and CQ_SEED=N replays a run
        seed = int(os.environ.get("CQ_SEED", str(time.time_ns() % (2 ** 31))))
        sys.stderr.write("\n  kill during catch-up: CQ_SEED=%d\n" % seed)
        sys.stderr.flush()
        rnd = random.Random(seed)
        srv = self.server(separate_read=True)
        srv.start()
        c = Client(srv)
        try:
            orders = run_workload(srv, self.N_ORDERS, threads=8, seed=11)
            some_order = sorted(orders)[0]
            head = self.wait_caught_up(c, some_order)
        finally:
            c.close()
        self.assertGreater(head, 3000)
        srv.stop()
        # a copy of the event store, for a fresh replay
        fresh_dir = self.tmpdir()
        cqtest.copy_store(srv, fresh_dir)

        seen = []
        cqtest.reset_read_store(srv)
        for attempt in range(4):
            seen.append(self.poll_and_kill(srv, head, rnd))
            # the killed catch-up left a consistent checkpoint behind
            cps = checkpoints(read_db(srv))
            for name, cp in cps.items():
                self.assertEqual(cp["status"], "running", cp)
                self.assertLessEqual(cp["position"], head)
            if attempt == 1:
                cqtest.reset_read_store(srv)  # once more from nothing
        sys.stderr.write("\n  positions at the kills: %r (head %d) " % (seen, head))
        # at least one kill hit a catch-up in progress (else this test
        # tested nothing; each catch-up replays thousands of events)
        self.assertTrue(any(p is not None and 0 < p < head for p in seen),
                        "no kill came during the catch-up: %r" % (seen,))
        srv.start()
        c = Client(srv)
        try:
            # a strong read of the newest order while the projections catch
            # up: it answers from the event store, not the lagging model
            st, _, b = c.get("/streams/$all?from_position=%d&limit=1" % head)
            self.assertEqual(st, 200, b)
            last_oid = b["events"][0]["stream_id"][len("order-"):]
            strong, smeta, sh = self.query(c, "order_summary", {
                "order_id": last_oid, "consistency": "strong"})
            st, _, ev = c.get(qpath("order_summary", {"order_id": last_oid}))
            lagging = st == 404 or ev["meta"]["position"] < head
            sys.stderr.write("(eventual read lagging during the strong read: %s) "
                             % lagging)
            self.assertEqual(smeta["consistency"], "strong")
            self.assertFalse(smeta["stale"], smeta)
            self.assertRegex(sh.get("etag", ""), r'^"s\d+"$')
            self.wait_caught_up(c, some_order, head)
            caught, _, _ = self.query(c, "order_summary", {"order_id": last_oid})
            self.assertEqual(strong, caught, "strong read during catch-up")
        finally:
            c.close()
        srv.stop()
        after_crash = read_models(srv)

        fresh = self.server(data_dir=fresh_dir)
        fresh.start()
        c = Client(fresh)
        try:
            self.wait_caught_up(c, some_order, head)
        finally:
            c.close()
        fresh.stop()
        if not cqtest.PG:
            self.assertFalse(os.path.exists(os.path.join(srv.data_dir,
                                                         "read.db-journal")))
        replayed = read_models(fresh)
        self.assertEqual(len(replayed["read.db"]["order_summaries"]), self.N_ORDERS)
        for t in ORDER_TABLES:
            self.assertEqual(after_crash["read.db"][t], replayed["read.db"][t],
                             "table %s differs from a fresh replay" % t)
        self.assertEqual(after_crash, replayed)
        for name, cp in checkpoints(read_db(srv)).items():
            self.assertEqual(cp["position"], head)


# =============================================================================

FRAGILE_SQL = """\
-- A projection whose handler fails on payments of 5000 cents or more.
-- @projection fragile
-- @version 1
-- @mode async

CREATE TABLE IF NOT EXISTS fragile_payments (
    payment_id   TEXT PRIMARY KEY,
    order_id     TEXT NOT NULL,
    amount_cents BIGINT NOT NULL CHECK (amount_cents < 5000)
);

-- @on PaymentReceived
INSERT INTO fragile_payments (payment_id, order_id, amount_cents)
VALUES (:data.payment_id, :data.order_id, :data.amount_cents)
ON CONFLICT (payment_id) DO NOTHING;

-- @query fragile_payments
-- @param order_id id required
-- @stream order-{order_id}
-- @result list
SELECT payment_id, amount_cents FROM fragile_payments
 WHERE order_id = :order_id ORDER BY payment_id;

-- @query fragile_all
-- @result list
SELECT payment_id, order_id, amount_cents FROM fragile_payments
 ORDER BY payment_id;
"""


class FailingHandlerTest(ProjectionTestBase):

    def test_failing_handler_stops_only_its_projection(self):
        pdir = self.tmpdir()
        with open(os.path.join(pdir, "fragile.sql"), "w") as f:
            f.write(FRAGILE_SQL)
        srv = self.server(args=["--projections", pdir])
        srv.start()
        c = Client(srv)

        def cmd(ctype, body, qs=""):
            st, h, b = c.req("POST", "/commands/" + ctype + qs, body=body)
            self.assertEqual(st, 202, "%s -> %s %r" % (ctype, st, b))
            return b, h

        def order(oid, total):
            cmd("PlaceOrder", {"order_id": oid, "customer_id": "c-f", "currency": "EUR",
                               "items": [{"sku": "x", "quantity": 1,
                                          "unit_price_cents": total}]})

        try:
            good, bad, later = uid("good"), uid("bad"), uid("later")
            order(good, 1000)
            b, _ = cmd("RecordPayment", {"order_id": good, "payment_id": "p-good",
                                         "amount_cents": 1000},
                       "?wait_for=fragile&wait_ms=20000")
            self.assertIs(b["stale"], False, b)
            data, meta, h = self.query(c, "fragile_payments", {"order_id": good})
            self.assertEqual(meta["projection"], "fragile")
            self.assertFalse(meta["stale"])
            self.assertEqual(data, [{"payment_id": "p-good", "amount_cents": 1000}])
            position_ok = meta["position"]

            order(bad, 20000)
            b, _ = cmd("RecordPayment", {"order_id": bad, "payment_id": "p-bad",
                                         "amount_cents": 6000})
            bad_position = b["events"][0]["position"]
            # commands keep working; more events after the failing one
            order(later, 3000)
            cmd("RecordPayment", {"order_id": later, "payment_id": "p-later",
                                  "amount_cents": 100})
            cmd("RecordPayment", {"order_id": bad, "payment_id": "p-bad-2",
                                  "amount_cents": 14000})
            cmd("ShipOrder", {"order_id": bad, "carrier": "UPS", "tracking_number": "1"})
            head = c.head()

            # the orders projections reach the head
            self.wait_caught_up(c, later, head)
            data, meta, _ = self.query(c, "order_summary", {"order_id": bad})
            self.assertEqual((data["status"], data["paid_cents"]), ("shipped", 20000))

            # the fragile one stopped just before the failing event
            data, meta, h = self.query(c, "fragile_all")
            self.assertTrue(meta["stale"], meta)
            self.assertIsInstance(meta.get("warning"), str, meta)
            self.assertEqual(h.get("warning"), STALE_WARNING)
            self.assertEqual(meta["position"], bad_position - 1, meta)
            self.assertEqual(meta["lag_events"], head - bad_position + 1, meta)
            self.assertGreaterEqual(meta["position"], position_ok)
            self.assertEqual([r["payment_id"] for r in data], ["p-good"])
            # waiting for it does not help: stale at the timeout
            t0 = time.monotonic()
            data, meta, h = self.query(c, "fragile_payments",
                                       {"order_id": later, "min_position": head,
                                        "wait_ms": 300})
            self.assertTrue(meta["stale"])
            self.assertIn("warning", meta)
            self.assertEqual(h.get("warning"), STALE_WARNING)
            self.assertEqual(data, [])
            self.assertLess(time.monotonic() - t0, 20)
            # a command waiting for it: 202 at the timeout, stale
            b, h = cmd("RecordPayment", {"order_id": later, "payment_id": "p-later-2",
                                         "amount_cents": 100},
                       "?wait_for=fragile&wait_ms=300")
            self.assertIs(b["stale"], True, b)
            self.assertEqual(b["projection"], "fragile")
            self.assertEqual(h.get("warning"), STALE_WARNING)
            # ... while waiting for an orders projection works
            b, h = cmd("RecordPayment", {"order_id": later, "payment_id": "p-later-3",
                                         "amount_cents": 100},
                       "?wait_for=order_summaries&wait_ms=20000")
            self.assertIs(b["stale"], False, b)
            head = c.head()
            self.wait_caught_up(c, later, head)
        finally:
            c.close()
        srv.stop()

        cps = checkpoints(read_db(srv))
        fr = cps["fragile"]
        self.assertEqual(fr["status"], "failed", fr)
        self.assertEqual(fr["error_position"], bad_position, fr)
        self.assertEqual(fr["position"], bad_position - 1, fr)
        self.assertIsInstance(fr["error"], str)
        self.assertTrue(fr["error"], fr)
        self.assertIn("PaymentReceived", fr["error_event"] or "", fr)
        for name in ("order_summaries", "sales_dashboard"):
            self.assertEqual(cps[name]["status"], "running", cps[name])
            self.assertEqual(cps[name]["position"], head, cps[name])
        rows = db_tables(read_db(srv), only=("fragile_payments",))["fragile_payments"]
        self.assertEqual([r[0] for r in rows], ["p-good"])

        # still failed after a restart: never silently skipped
        srv.start()
        c = Client(srv)
        try:
            data, meta, h = self.query(c, "fragile_all")
            self.assertTrue(meta["stale"])
            self.assertEqual(meta["position"], bad_position - 1)
            self.assertEqual([r["payment_id"] for r in data], ["p-good"])
            cmd("PlaceOrder", {"order_id": uid("o"), "customer_id": "c-f", "currency": "EUR",
                               "items": [{"sku": "x", "quantity": 1,
                                          "unit_price_cents": 5}]})
            self.wait_caught_up(c, later)
        finally:
            c.close()
        srv.stop()
        fr2 = checkpoints(read_db(srv))["fragile"]
        self.assertEqual((fr2["status"], fr2["position"], fr2["error_position"]),
                         ("failed", bad_position - 1, bad_position))


# =============================================================================

class SyntaxErrorTest(ProjectionTestBase):
    """A projection file with an error: serve exits non-zero and names the
    file and the line."""

    CASES = [
        # (file name, text, line of the error)
        ("unknown_param.sql",
         "-- @projection broken_a\n"
         "-- @version 1\n"
         "CREATE TABLE IF NOT EXISTS broken_a (id TEXT PRIMARY KEY);\n"
         "\n"
         "-- @on OrderPlaced\n"
         "INSERT INTO broken_a (id)\n"
         "VALUES (:foo) ON CONFLICT (id) DO NOTHING;\n", (6, 7)),
        ("bad_directive.sql",
         "-- @projection broken_b\n"
         "-- @version 1\n"
         "CREATE TABLE IF NOT EXISTS broken_b (id TEXT PRIMARY KEY);\n"
         "-- @on OrderPlaced\n"
         "INSERT INTO broken_b (id) VALUES (:data.order_id)\n"
         "  ON CONFLICT (id) DO NOTHING;\n"
         "-- @todo something\n", (7,)),
        ("unterminated.sql",
         "-- @projection broken_c\n"
         "-- @version 1\n"
         "CREATE TABLE IF NOT EXISTS broken_c (id TEXT PRIMARY KEY);\n"
         "-- @on OrderPlaced\n"
         "INSERT INTO broken_c (id) VALUES (:data.order_id)\n"
         "-- @on OrderPaid\n"
         "DELETE FROM broken_c WHERE id = :data.order_id;\n", (5, 6)),
        ("sql_error.sql",
         "-- @projection broken_d\n"
         "-- @version 1\n"
         "CREATE TABLE IF NOT EXISTS broken_d (id TEXT PRIMARY KEY);\n"
         "-- @on OrderPlaced\n"
         "INSERT INTO broken_d (id) VALUES (:data.order_id)\n"
         "  ON CONFLICT (id) DO NOTHING;\n"
         "-- @query broken_q\n"
         "-- @result list\n"
         "SELEC id FROM broken_d;\n", (9,)),
    ]

    # SQL that only the database can reject (the file's structure is fine)
    SQL_CASES = [
        ("handler_syntax.sql",
         "-- @projection broken_e\n"
         "-- @version 1\n"
         "CREATE TABLE IF NOT EXISTS broken_e (id TEXT PRIMARY KEY);\n"
         "\n"
         "-- @on OrderPlaced\n"
         "INSERT INTO broken_e (id) VALUES (:data.order_id)\n"
         "  ON CONFLICT (id) DO NOTHIN;\n", (6, 7)),
        ("ddl_syntax.sql",
         "-- @projection broken_f\n"
         "-- @version 1\n"
         "\n"
         "CREATE TABLE IF NOT EXISTS broken_f (id TEXT PRIMARY KEY,);\n"
         "-- @on OrderPlaced\n"
         "INSERT INTO broken_f (id) VALUES (:data.order_id)\n"
         "  ON CONFLICT (id) DO NOTHING;\n", (4,)),
        ("query_syntax.sql",
         "-- @projection broken_g\n"
         "-- @version 1\n"
         "CREATE TABLE IF NOT EXISTS broken_g (id TEXT PRIMARY KEY);\n"
         "-- @on OrderPlaced\n"
         "INSERT INTO broken_g (id) VALUES (:data.order_id)\n"
         "  ON CONFLICT (id) DO NOTHING;\n"
         "-- @query broken_g_all\n"
         "-- @result list\n"
         "SELECT id FROM broken_g WHERE ORDER BY id;\n", (9,)),
    ]

    def run_serve(self, pdir):
        """Run serve with --projections pdir; it must exit by itself.
        Returns (exit code, stderr)."""
        data = self.tmpdir()
        port = cqtest.free_port()
        errpath = os.path.join(data, "stderr.log")
        store = cqtest.pg_create_database("syntax") if cqtest.PG else None
        cmd = ([cqtest.BINARY, "serve"] + cqtest.store_args(data, store)
               + ["--listen", "127.0.0.1:%d" % port, "--projections", pdir])
        with open(errpath, "wb") as ef:
            p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL,
                                 stdout=subprocess.DEVNULL, stderr=ef)
        serving = False
        try:
            deadline = time.monotonic() + 30
            while p.poll() is None and time.monotonic() < deadline:
                try:
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
                    conn.request("GET", "/healthz")
                    serving = conn.getresponse().status == 200
                    conn.close()
                except OSError:
                    pass
                if serving:
                    break
                time.sleep(0.05)
        finally:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(20)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
                with open(errpath, "rb") as f:
                    err = f.read().decode("utf-8", "replace")
                self.fail("cqrsd serve with a broken projection file kept running%s;"
                          " stderr %r" % (" and answered /healthz" if serving else "", err))
        with open(errpath, "rb") as f:
            return p.returncode, f.read().decode("utf-8", "replace")

    def check_cases(self, cases):
        for fname, text, lines in cases:
            with self.subTest(file=fname):
                pdir = self.tmpdir()
                with open(os.path.join(pdir, fname), "w") as f:
                    f.write(text)
                # a good file next to it does not hide the error
                with open(os.path.join(pdir, "aaa_good.sql"), "w") as f:
                    f.write(FRAGILE_SQL)
                rc, err = self.run_serve(pdir)
                self.assertNotEqual(rc, 0, "exit code 0; stderr %r" % err)
                self.assertGreater(rc, 0, "killed by signal %d: %r" % (-rc, err))
                for pat in cqtest.SANITIZER_PATTERNS:
                    self.assertNotIn(pat, err)
                self.assertIn(fname, err, "stderr does not name the file: %r" % err)
                m = re.search(re.escape(fname) + r"\D{1,6}(\d+)", err)
                self.assertIsNotNone(m, "no line number after the file name: %r" % err)
                self.assertIn(int(m.group(1)), lines, "line in %r, want %r" % (err, lines))

    def test_sql_syntax_errors_name_file_and_line(self):
        self.check_cases(self.SQL_CASES)

    def test_syntax_errors_name_file_and_line(self):
        self.check_cases(self.CASES)

    def test_good_file_starts(self):
        """The control: the same directory without the broken file serves."""
        pdir = self.tmpdir()
        with open(os.path.join(pdir, "aaa_good.sql"), "w") as f:
            f.write(FRAGILE_SQL)
        srv = self.server(args=["--projections", pdir])
        srv.start()
        c = Client(srv)
        try:
            data, meta, _ = self.query(c, "fragile_all")
            self.assertEqual(data, [])
            self.assertEqual(meta["projection"], "fragile")
        finally:
            c.close()
        srv.stop()


# =============================================================================

INDEX_V1 = """\
-- @projection order_index
-- @version 1
-- @mode async

CREATE TABLE IF NOT EXISTS order_index (
    order_id    TEXT PRIMARY KEY,
    customer_id TEXT NOT NULL,
    total_cents BIGINT NOT NULL
);

-- @on OrderPlaced
INSERT INTO order_index (order_id, customer_id, total_cents)
VALUES (:data.order_id, :data.customer_id, :data.total_cents)
ON CONFLICT (order_id) DO NOTHING;

-- @query order_index_all
-- @result list
SELECT * FROM order_index ORDER BY order_id;
"""

INDEX_V2 = """\
-- @projection order_index
-- @version 2
-- @mode async

CREATE TABLE IF NOT EXISTS order_index (
    order_id    TEXT PRIMARY KEY,
    customer_id TEXT NOT NULL,
    total_cents BIGINT NOT NULL,
    currency    TEXT NOT NULL,
    payments    BIGINT NOT NULL
);

-- @on OrderPlaced
INSERT INTO order_index (order_id, customer_id, total_cents, currency, payments)
VALUES (:data.order_id, :data.customer_id, :data.total_cents, :data.currency, 0)
ON CONFLICT (order_id) DO NOTHING;

-- @on PaymentReceived
UPDATE order_index SET payments = payments + 1
 WHERE order_id = :data.order_id;

-- @query order_index_all
-- @result list
SELECT * FROM order_index ORDER BY order_id;

-- @query order_index_one
-- @param order_id id required
-- @stream order-{order_id}
-- @result one
SELECT * FROM order_index WHERE order_id = :order_id;
"""


class ChangedProjectionTest(ProjectionTestBase):

    def test_version_bump_rebuilds(self):
        pdir = self.tmpdir()
        path = os.path.join(pdir, "order_index.sql")
        with open(path, "w") as f:
            f.write(INDEX_V1)
        srv = self.server(args=["--projections", pdir])
        srv.start()
        c = Client(srv)
        expected = {}
        try:
            for i in range(12):
                oid = uid("o")
                cur = ("EUR", "USD")[i % 2]
                st, _, b = c.command("PlaceOrder", {
                    "order_id": oid, "customer_id": "c-%d" % (i % 3), "currency": cur,
                    "items": [{"sku": "k", "quantity": 1, "unit_price_cents": 100 + i}]})
                self.assertEqual(st, 202, b)
                npay = i % 3
                for k in range(npay):
                    st, _, b = c.command("RecordPayment", {
                        "order_id": oid, "payment_id": uid("p"), "amount_cents": 1})
                    self.assertEqual(st, 202, b)
                expected[oid] = {"order_id": oid, "customer_id": "c-%d" % (i % 3),
                                 "total_cents": 100 + i, "currency": cur,
                                 "payments": npay}
            head = c.head()
            data, meta, _ = self.query(c, "order_index_all",
                                       {"min_position": head, "wait_ms": 20000})
            self.assertFalse(meta["stale"])
            self.assertEqual(meta["projection"], "order_index")
            self.assertEqual(data, [{k: v[k] for k in ("order_id", "customer_id",
                                                       "total_cents")}
                                    for _, v in sorted(expected.items())])
        finally:
            c.close()
        srv.stop()
        cp = checkpoints(read_db(srv))["order_index"]
        self.assertEqual((cp["version"], cp["position"], cp["status"]), (1, head, "running"))
        orders_before = db_tables(read_db(srv), only=ORDER_TABLES)

        with open(path, "w") as f:
            f.write(INDEX_V2)
        srv.start()
        c = Client(srv)
        try:
            # version 1's tables serve until the blue/green rebuild swaps
            # version 2's in (test_rebuild.py looks at the time before)
            deadline = time.monotonic() + 60
            while True:
                st, _, s = c.get("/projections/order_index")
                self.assertEqual(st, 200, s)
                if s["serving_version"] == 2 and s["rebuild"] is None:
                    break
                self.assertLess(time.monotonic(), deadline, s)
                time.sleep(0.02)
            # one more order after the change
            oid = uid("o")
            st, _, b = c.command("PlaceOrder", {
                "order_id": oid, "customer_id": "c-new", "currency": "GBP",
                "items": [{"sku": "k", "quantity": 2, "unit_price_cents": 50}]})
            self.assertEqual(st, 202, b)
            expected[oid] = {"order_id": oid, "customer_id": "c-new", "total_cents": 100,
                             "currency": "GBP", "payments": 0}
            head2 = c.head()
            data, meta, h = self.query(c, "order_index_all",
                                       {"min_position": head2, "wait_ms": 20000})
            self.assertFalse(meta["stale"], meta)
            self.assertEqual(meta["position"], head2)
            self.assertEqual(data, [v for _, v in sorted(expected.items())],
                             "the v2 read model was not rebuilt from position 0")
            one, meta, _ = self.query(c, "order_index_one", {"order_id": oid})
            self.assertEqual(one, expected[oid])
            strong, smeta, _ = self.query(c, "order_index_one",
                                          {"order_id": oid, "consistency": "strong"})
            self.assertEqual(strong, one)
            self.assertEqual(smeta["consistency"], "strong")
        finally:
            c.close()
        srv.stop()
        cp = checkpoints(read_db(srv))
        self.assertEqual((cp["order_index"]["version"], cp["order_index"]["position"],
                          cp["order_index"]["status"]), (2, head2, "running"))
        # the orders projections were not rebuilt or disturbed
        for name in ("order_summaries", "sales_dashboard"):
            self.assertEqual(cp[name]["status"], "running")
            self.assertEqual(cp[name]["position"], head2)
        orders_after = db_tables(read_db(srv), only=ORDER_TABLES)
        self.assertEqual(len(orders_after["order_summaries"]),
                         len(orders_before["order_summaries"]) + 1)

        # restarting with the same v2 file does not rebuild again (and the
        # data stays)
        srv.start()
        c = Client(srv)
        try:
            data, meta, _ = self.query(c, "order_index_all")
            self.assertEqual(meta["position"], head2)
            self.assertEqual(data, [v for _, v in sorted(expected.items())])
        finally:
            c.close()
        srv.stop()


if __name__ == "__main__":
    cqtest.main()
