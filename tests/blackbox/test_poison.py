"""Black-box tests of hostile events: what one bad event may and may not do.

  - An inline projection that cannot apply an event refuses the append or
    command in the same transaction (422 inline-projection-refused):
    nothing commits, the projection stays running, and its neighbours in
    the same group-commit batch still commit.
  - Streams whose category a domain owns ("order-...") and event types a
    domain owns (OrderPlaced, ...) are written only through the domain's
    commands: a raw append is 422 stream-owned-by-domain /
    event-type-owned-by-domain, naming the domain.
  - A database written before those rules, holding an event whose upcast
    fails and an inline projection stuck in `failed`, still serves: the
    streams API answers the event as stored with `upcast_error`, the
    asynchronous projections name the upcaster as the cause and can be
    skipped (counted in /metrics), and the inline projection recovers at
    start (the event is recorded in events.db's cq_skipped_events).

    python3 tests/blackbox/test_poison.py /path/to/cqrsd
"""
import json
import os
import re
import shutil
import sqlite3
import sys
import tempfile
import threading
import unittest

sys.dont_write_bytecode = True

import cqtest  # noqa: E402
from problems import assert_type  # noqa: E402
from cqtest import Client, Server, order_body, uid  # noqa: E402

# Refuses (CHECK) an order of customer c-poison and a Note without data.n.
GUARD_SQL = """\
-- @projection poison_guard
-- @version 1
-- @mode inline

CREATE TABLE IF NOT EXISTS poison_orders (
    order_id    TEXT PRIMARY KEY,
    customer_id TEXT NOT NULL CHECK (customer_id <> 'c-poison')
);
CREATE TABLE IF NOT EXISTS poison_notes (
    stream_id TEXT NOT NULL,
    version   BIGINT NOT NULL,
    n         BIGINT NOT NULL,
    PRIMARY KEY (stream_id, version)
);

-- @on OrderPlaced
INSERT INTO poison_orders (order_id, customer_id)
VALUES (:data.order_id, :data.customer_id)
ON CONFLICT (order_id) DO NOTHING;

-- @on Note
INSERT INTO poison_notes (stream_id, version, n)
VALUES (:stream_id, :version, :data.n)
ON CONFLICT (stream_id, version) DO NOTHING;

-- @query poison_notes
-- @result list
SELECT stream_id, version, n FROM poison_notes ORDER BY stream_id, version;
"""


def metric(text, name, labels):
    """The value of one sample of the Prometheus text, or None."""
    want = ",".join('%s="%s"' % kv for kv in sorted(labels.items()))
    for line in text.splitlines():
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})? (\S+)$", line)
        if m and m.group(1) == name:
            got = ",".join(sorted(p for p in (m.group(3) or "").split(",") if p))
            if got == want:
                return float(m.group(4))
    return None


def plant_event(db, stream, version, etype, data):
    """Insert one event (schema version 1) after the last one, as a damaged
    or older file may hold it, and move its stream's row to it, on the
    open connection db to events.db (the server stopped; the caller
    commits). `etype` and `data` may be bytes: they are stored as TEXT,
    whatever they hold. Returns its position."""
    pos = db.execute("SELECT coalesce(max(position), 0) + 1 FROM events").fetchone()[0]
    meta = json.dumps({"event_id": "0190a5b6-0000-7000-8000-000000000001",
                       "command_id": "0190a5b6-0000-7000-8000-000000000002"})
    db.execute("INSERT INTO events VALUES (?, ?, ?, CAST(? AS TEXT), 1,"
               " CAST(? AS TEXT), ?, 1700000000000)",
               (pos, stream, version, etype, data, meta))
    db.execute("INSERT INTO streams VALUES (?, ?, ?) ON CONFLICT (stream_id)"
               " DO UPDATE SET version = excluded.version,"
               " position = excluded.position", (stream, version, pos))
    return pos


class PoisonBase(unittest.TestCase):
    maxDiff = 4000

    def setUp(self):
        self.servers, self.clients, self.tmpdirs = [], [], []

    def tearDown(self):
        for c in self.clients:
            c.close()
        for s in self.servers:
            s.close(failed=s.running())
        for d in self.tmpdirs:
            shutil.rmtree(d, ignore_errors=True)

    def start(self, guard=False, data_dir=None):
        args = ()
        if guard:
            pdir = tempfile.mkdtemp(prefix="cqrsd-poison-p-")
            self.tmpdirs.append(pdir)
            with open(os.path.join(pdir, "poison_guard.sql"), "w") as f:
                f.write(GUARD_SQL)
            args = ("--projections", pdir)
        s = Server(cqtest.BINARY, data_dir=data_dir, args=args)
        self.servers.append(s)
        s.start()
        c = Client(s)
        self.clients.append(c)
        return s, c

    def status(self, c, name):
        st, _, b = c.get("/projections/" + name)
        self.assertEqual(st, 200, b)
        return b

    def caught_up(self, c, name):
        """The server listens before an inline projection that is behind
        has caught up (docs/operations.md, "Start-up"): its status once
        it is no longer catching_up."""
        for _ in range(600):
            b = self.status(c, name)
            if b["status"] != "catching_up":
                return b
            threading.Event().wait(0.05)
        self.fail("%s still catching up: %r" % (name, b))

    def problem(self, st, h, b, status, slug):
        self.assertEqual(st, status, b)
        self.assertTrue(h.get("content-type", "").startswith(
            "application/problem+json"), h)
        self.assertEqual(b.get("type"), "urn:cqrsd:problem:" + slug, b)


class InlineRefusalTest(PoisonBase):

    def test_raw_append_the_inline_projection_cannot_apply_is_refused(self):
        s, c = self.start(guard=True)
        sid = uid("notes")
        st, h, b = c.post("/streams/" + sid, {
            "expected_version": "any",
            "events": [{"type": "Note", "data": {"n": 1}},
                       {"type": "Note", "data": {}}]})
        self.problem(st, h, b, 422, "inline-projection-refused")
        self.assertIn("poison_guard", b["detail"])
        self.assertIn("Note", b["detail"])
        # nothing committed: not the stream, not the good first event
        st, _, b = c.get("/streams/" + sid)
        self.assertEqual(st, 404, b)
        self.assertEqual(self.status(c, "poison_guard")["status"], "running")
        st, _, b = c.get("/readyz")
        self.assertEqual(st, 200, b)
        # the projection goes on with the next good event
        st, _, b = c.post("/streams/" + sid, {
            "expected_version": "no_stream",
            "events": [{"type": "Note", "data": {"n": 7}}]})
        self.assertEqual(st, 201, b)
        st, _, b = c.get("/queries/poison_notes")
        self.assertEqual(st, 200, b)
        self.assertEqual(b["data"], [{"stream_id": sid, "version": 1, "n": 7}])
        self.assertFalse(b["meta"]["stale"], b)

    def test_command_the_inline_projection_cannot_apply_is_refused(self):
        s, c = self.start(guard=True)
        bad = order_body(customer_id="c-poison")
        st, h, b = c.command("PlaceOrder", bad)
        self.problem(st, h, b, 422, "inline-projection-refused")
        self.assertIn("poison_guard", b["detail"])
        st, _, b = c.get("/streams/order-" + bad["order_id"])
        self.assertEqual(st, 404, b)
        # every inline projection is still running and in step
        good = order_body()
        st, _, b = c.command("PlaceOrder", good)
        self.assertEqual(st, 202, b)
        for name in ("poison_guard", "payment_confirmation"):
            p = self.status(c, name)
            self.assertEqual((p["status"], p["lag_events"]), ("running", 0), p)
        st, _, b = c.get("/queries/payment_confirmation?order_id=" + good["order_id"])
        self.assertEqual(st, 200, b)
        self.assertFalse(b["meta"]["stale"], b)

    def test_neighbours_in_the_batch_still_commit(self):
        s, c = self.start(guard=True)
        n = 24
        out = [None] * n

        def post(i):
            cl = Client(s)
            try:
                data = {"n": i} if i % 2 == 0 else {}
                out[i] = cl.post("/streams/" + "batch-%d" % i, {
                    "expected_version": "no_stream",
                    "events": [{"type": "Note", "data": data}]})[:3:2]
            finally:
                cl.close()

        ts = [threading.Thread(target=post, args=(i,)) for i in range(n)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(60)
        for i, (st, b) in enumerate(out):
            self.assertEqual(st, 201 if i % 2 == 0 else 422, (i, b))
            self.assertEqual(c.get("/streams/batch-%d" % i)[0],
                             200 if i % 2 == 0 else 404, i)
        st, _, b = c.get("/queries/poison_notes")
        self.assertEqual(st, 200, b)
        self.assertEqual(sorted(r["n"] for r in b["data"]), list(range(0, n, 2)))
        self.assertEqual(self.status(c, "poison_guard")["status"], "running")


class OwnedStreamTest(PoisonBase):

    def test_raw_append_to_an_owned_category_is_refused(self):
        s, c = self.start()
        body = order_body()
        oid = body["order_id"]
        st, _, b = c.command("PlaceOrder", body)
        self.assertEqual(st, 202, b)
        for sid in ("order-" + oid, "order-" + uid("new"), "order"):
            with self.subTest(sid=sid):
                st, h, b = c.post("/streams/" + sid, {
                    "expected_version": "any",
                    "events": [{"type": "OrderShipped",
                                "data": {"order_id": oid, "carrier": "x",
                                         "tracking_number": "y"}}]})
                self.problem(st, h, b, 422, "stream-owned-by-domain")
                self.assertIn("orders", b["detail"])
                # even an event type no domain owns
                st, h, b = c.post("/streams/" + sid, {
                    "expected_version": "any",
                    "events": [{"type": "Note", "data": {}}]})
                self.problem(st, h, b, 422, "stream-owned-by-domain")
        st, _, b = c.get("/streams/order-" + oid)
        self.assertEqual([e["type"] for e in b["events"]], ["OrderPlaced"])
        st, _, b = c.get("/queries/order_summary?order_id=%s&consistency=strong" % oid)
        self.assertEqual(b["data"]["status"], "placed", b)

    def test_owned_event_types_are_refused_on_foreign_streams(self):
        s, c = self.start()
        body = order_body()
        oid = body["order_id"]
        st, _, pb = c.command("PlaceOrder", body)
        self.assertEqual(st, 202, pb)
        sid = uid("evil3")
        for t in ("OrderShipped", "OrderPlaced", "PaymentReceived", "OrderPaid",
                  "OrderCancelled"):
            with self.subTest(type=t):
                st, h, b = c.post("/streams/" + sid, {
                    "expected_version": "any",
                    "events": [{"type": "Note", "data": {}},
                               {"type": t, "data": {"order_id": oid}}]})
                self.problem(st, h, b, 422, "event-type-owned-by-domain")
                self.assertIn("orders", b["detail"])
                self.assertIn(t, b["detail"])
        self.assertEqual(c.get("/streams/" + sid)[0], 404)
        st, _, b = c.get("/queries/order_summary?order_id=%s&min_position=%d"
                         "&wait_ms=10000" % (oid, pb["position"]))
        self.assertEqual((st, b["data"]["status"]), (200, "placed"), b)
        # raw appends stay open for categories and types no domain owns
        for sid in (uid("evil3"), uid("orders"), uid("orderly")):
            st, _, b = c.post("/streams/" + sid, {
                "expected_version": "no_stream",
                "events": [{"type": "Note", "data": {"order_id": oid}}]})
            self.assertEqual(st, 201, (sid, b))


class LegacyPoisonTest(PoisonBase):
    """An events.db written before the rules above: it holds an OrderPlaced
    v1 without items in stream evil4 (its upcast fails) and an inline
    projection recorded as failed on it."""

    def plant(self, data_dir):
        db = sqlite3.connect(os.path.join(data_dir, "events.db"), timeout=10)
        try:
            pos = plant_event(db, "evil4", 1, "OrderPlaced", "{}")
            db.execute("UPDATE cq_projections SET status = 'failed', position = ?,"
                       " error = 'stored event is not valid JSON',"
                       " error_position = ?, error_event = 'OrderPlaced'"
                       " WHERE name = 'payment_confirmation'", (pos - 1, pos))
            db.commit()
            return pos
        finally:
            db.close()

    def wait_failed(self, c, name):
        for _ in range(200):
            b = self.status(c, name)
            if b["status"] == "failed":
                return b
            threading.Event().wait(0.05)
        self.fail("%s did not fail: %r" % (name, b))

    def test_a_legacy_poison_event_breaks_nothing(self):
        s, c = self.start()
        st, _, b = c.command("PlaceOrder", order_body())
        self.assertEqual(st, 202, b)
        s.stop()
        pos = self.plant(s.data_dir)
        s.start()

        # the inline projection recovered at start: the event is recorded
        p = self.caught_up(c, "payment_confirmation")
        self.assertEqual((p["status"], p["lag_events"], p["skipped_events"]),
                         ("running", 0, 1), p)
        db = sqlite3.connect(os.path.join(s.data_dir, "events.db"), timeout=10)
        try:
            rows = db.execute("SELECT projection, position, event_type, error"
                              " FROM cq_skipped_events").fetchall()
        finally:
            db.close()
        self.assertEqual([r[:3] for r in rows],
                         [("payment_confirmation", pos, "OrderPlaced")])
        self.assertIn("upcast", rows[0][3])
        good = order_body()
        st, _, b = c.command("PlaceOrder", good)
        self.assertEqual(st, 202, b)
        st, _, b = c.get("/queries/payment_confirmation?order_id=" + good["order_id"])
        self.assertEqual(st, 200, b)
        self.assertFalse(b["meta"]["stale"], b)

        # reading events answers the event as stored, naming the upcast error
        st, _, b = c.get("/streams/evil4")
        self.assertEqual(st, 200, b)
        ev = b["events"][0]
        self.assertEqual((ev["schema_version"], ev["data"]), (1, {}), ev)
        self.assertIn("OrderPlaced", ev["upcast_error"])
        st, _, b = c.get("/streams/$all?from_position=%d&limit=10" % (pos - 1))
        self.assertEqual(st, 200, b)
        self.assertEqual([e["position"] for e in b["events"]], [pos - 1, pos, pos + 1])
        self.assertIn("upcast_error", b["events"][1])
        self.assertNotIn("upcast_error", b["events"][0])

        # the asynchronous projections name the cause, and can be skipped
        for name in ("order_summaries", "sales_dashboard"):
            b = self.wait_failed(c, name)
            self.assertEqual(b["last_error"]["position"], pos, b)
            self.assertIn("upcast", b["last_error"]["message"])
            self.assertNotIn("not valid JSON", b["last_error"]["message"])
            st, _, b = c.post("/projections/%s/retry" % name)
            self.assertEqual(st, 200, b)
        st, _, b = c.get("/readyz")
        self.assertEqual(st, 503, b)
        for name in ("order_summaries", "sales_dashboard"):
            self.wait_failed(c, name)  # the retry failed again
            st, _, b = c.post("/projections/%s/skip" % name)
            self.assertEqual(st, 200, b)
        st, _, text = c.get("/metrics")
        self.assertEqual(st, 200)
        for name in ("order_summaries", "sales_dashboard"):
            self.assertEqual(metric(text, "projection_skipped_events_total",
                                    {"projection": name}), 1.0, name)
        self.assertEqual(metric(text, "projection_skipped_events_total",
                                {"projection": "payment_confirmation"}), 1.0)
        st, _, b = c.get("/queries/order_summary?order_id=%s&min_position=%d"
                         "&wait_ms=10000" % (good["order_id"], pos + 1))
        self.assertEqual(st, 200, b)
        self.assertFalse(b["meta"]["stale"], b)
        st, _, b = c.get("/readyz")
        self.assertEqual(st, 200, b)

        # and all of it holds across a restart
        s.restart()
        self.assertEqual(self.status(c, "payment_confirmation")["status"], "running")
        st, _, text = c.get("/metrics")
        self.assertEqual(metric(text, "projection_skipped_events_total",
                                {"projection": "order_summaries"}), 1.0)


class DamagedStoreTest(PoisonBase):
    """Stored data the server cannot decode (a damaged or hand-edited
    events.db): the 500s of docs/api.md, each with its problem type, and
    only for what depends on the damaged event."""

    def plant(self, data_dir, stream, version, etype, data):
        """Append one raw row to events.db (server stopped)."""
        db = sqlite3.connect(os.path.join(data_dir, "events.db"), timeout=10)
        try:
            pos = plant_event(db, stream, version, etype, data)
            db.commit()
            return pos
        finally:
            db.close()

    def test_damaged_events_are_500_with_their_type(self):
        s, c = self.start()
        body = order_body()
        oid = body["order_id"]
        st, _, b = c.command("PlaceOrder", body)
        self.assertEqual(st, 202, b)
        s.stop()
        # a payment whose data is not JSON, in the order's own stream
        self.plant(s.data_dir, "order-" + oid, 2, b"PaymentReceived", b"{not json")
        # an event whose type is not UTF-8, in a stream of its own
        junk = uid("junk")
        jpos = self.plant(s.data_dir, junk, 1, b"Note\xff\xfe", b"{}")
        s.start()

        # a command on the order cannot rebuild its state: 500
        # corrupt-stream, naming the stream; nothing written
        head = c.head()
        st, h, b = c.command("RecordPayment", {"order_id": oid, "payment_id": uid("p"),
                                               "amount_cents": 100})
        cqtest.problem_errors(self, st, h, b, 500)
        assert_type(self, b, "corrupt-stream")
        self.assertIn("order-" + oid, b["detail"])
        self.assertEqual(c.head(), head)
        # reading the order's events still works: the damaged one says why
        st, _, b = c.get("/streams/order-" + oid)
        self.assertEqual(st, 200, b)
        self.assertIsNone(b["events"][1]["data"], b)
        self.assertIn("decode_error", b["events"][1])
        # an event that cannot be put into JSON at all (its type is not
        # UTF-8): 500 corrupt-event, naming its position
        st, h, b = c.get("/streams/" + junk)
        cqtest.problem_errors(self, st, h, b, 500)
        assert_type(self, b, "corrupt-event")
        self.assertIn(str(jpos), b["detail"])
        # other orders are not affected
        st, _, b = c.command("PlaceOrder", order_body())
        self.assertEqual(st, 202, b)


if __name__ == "__main__":
    cqtest.main()
