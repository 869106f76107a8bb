#!/usr/bin/env python3
"""GET /subscribe: Server-Sent Events for projection progress, a stream's
events and a command becoming visible (docs/api.md, "Subscriptions").

Run: python3 tests/blackbox/test_subscribe.py build/cqrsd
"""

import time
import unittest

import cqtest
from cqtest import SSE, Client, Server, ServerTestCase, order_body, uid

HEARTBEAT_MS = 300


def place(c, oid=None):
    st, h, b = c.command("PlaceOrder", order_body(oid))
    assert st == 202, (st, b)
    return h, b


class SubscribeTest(ServerTestCase):
    server_args = ("--heartbeat-ms", str(HEARTBEAT_MS), "--max-subscribers", "64")

    def open(self, path, **kw):
        s = SSE(self.server, path, **kw)
        self.addCleanup(s.close)
        return s

    def assertStream(self, s):
        self.assertEqual(s.status, 200, s.body)
        self.assertEqual(s.headers.get("content-type"), "text/event-stream")
        self.assertEqual(s.headers.get("cache-control"), "no-cache")

    def control(self, name, op):
        st, _, b = self.c.post("/projections/%s/%s" % (name, op))
        self.assertIn(st, (200, 202), b)

    # ---- projection progress ----

    def test_projection_progress(self):
        s = self.open("/subscribe?projection=order_summaries")
        self.assertStream(s)
        first = s.events(1)[0]
        self.assertEqual(first["event"], "progress")
        self.assertEqual(first["data"]["projection"], "order_summaries")
        self.assertEqual(int(first["id"]), first["data"]["position"])
        self.assertEqual(set(first["data"]), {"projection", "position", "head",
                                              "lag_events", "lag_ms", "failed"})
        self.assertGreaterEqual(first["data"]["lag_ms"], 0)
        _, b = place(self.c)
        pos = first["data"]["position"]
        while pos < b["position"]:
            ev = s.events(1)[0]
            self.assertEqual(ev["event"], "progress")
            self.assertGreater(ev["data"]["position"], pos, "positions only go up")
            pos = ev["data"]["position"]
        self.assertGreaterEqual(ev["data"]["head"], b["position"])

    def test_projection_progress_is_coalesced(self):
        """While paused nothing is sent; on resume the positions passed are
        told in fewer events than were applied, ending at the head."""
        _, b0 = place(self.c)
        s = self.open("/subscribe?projection=sales_dashboard&after=%d" % b0["position"])
        self.assertStream(s)
        self.control("sales_dashboard", "pause")
        try:
            last = None
            for _ in range(20):
                _, last = place(self.c)
            time.sleep(3 * HEARTBEAT_MS / 1000)
        finally:
            self.control("sales_dashboard", "resume")
        got = []
        while not got or got[-1] < last["position"]:
            got.append(s.events(1, timeout=30)[0]["data"]["position"])
        self.assertEqual(s.comments > 0, True, "heartbeats while paused")
        self.assertEqual(got, sorted(set(got)))
        self.assertLess(len(got), 20, "one event per position applied: %r" % got)

    def test_projection_resume_with_last_event_id(self):
        _, b = place(self.c)
        s = self.open("/subscribe?projection=order_summaries&after=0",
                      headers={"Last-Event-ID": str(b["position"] - 1)})
        self.assertStream(s)
        ev = s.events(1)[0]
        self.assertGreaterEqual(ev["data"]["position"], b["position"])

    # ---- a stream's events ----

    def test_stream_events_as_they_commit(self):
        oid = uid("sse")
        s = self.open("/subscribe?stream=order-" + oid)
        self.assertStream(s)
        h, b = place(self.c, oid)
        ev = s.events(1)[0]
        self.assertEqual(ev["event"], "event")
        self.assertEqual(ev["id"], "1")
        self.assertEqual(ev["data"]["type"], "OrderPlaced")
        self.assertEqual(ev["data"]["version"], 1)
        self.assertEqual(ev["data"]["position"], b["position"])
        self.assertEqual(ev["data"]["data"]["order_id"], oid)
        self.assertEqual(ev["data"]["metadata"]["command_id"], b["command_id"])
        st, _, b2 = self.c.command("RecordPayment", {"order_id": oid, "payment_id": "p1",
                                                     "amount_cents": 500})
        self.assertEqual(st, 202, b2)
        ev = s.events(1)[0]
        self.assertEqual((ev["id"], ev["data"]["type"]), ("2", "PaymentReceived"))

    def test_stream_resume_from_the_store(self):
        """Last-Event-ID: the events after it are read from the event store,
        also those written before the subscription and across a restart
        of the client's connection."""
        oid = uid("res")
        place(self.c, oid)
        for i in range(3):
            st, _, b = self.c.command("RecordPayment", {"order_id": oid,
                                                        "payment_id": "p%d" % i,
                                                        "amount_cents": 10})
            self.assertEqual(st, 202, b)
        s = self.open("/subscribe?stream=order-%s&after=0" % oid,
                      headers={"Last-Event-ID": "2"})
        self.assertStream(s)
        evs = s.events(2)
        self.assertEqual([e["id"] for e in evs], ["3", "4"])
        s2 = self.open("/subscribe?stream=order-%s&after=1" % oid)
        self.assertEqual([e["id"] for e in s2.events(3)], ["2", "3", "4"])

    def test_stream_catch_up_in_pages(self):
        """300 events behind: all come, in order, across the reader's pages."""
        sid = uid("note")
        for k in range(3):
            st, _, b = self.c.post("/streams/" + sid, body={
                "expected_version": "any",
                "events": [{"type": "Note", "data": {"n": 100 * k + i}}
                           for i in range(100)]})
            self.assertEqual(st, 201, b)
        s = self.open("/subscribe?stream=%s&after=0" % sid)
        evs = s.events(300, timeout=30)
        self.assertEqual([int(e["id"]) for e in evs], list(range(1, 301)))
        self.assertEqual([e["data"]["data"]["n"] for e in evs], list(range(300)))

    def test_all_stream(self):
        head = self.c.head()
        s = self.open("/subscribe?stream=$all&after=%d" % head)
        self.assertStream(s)
        _, b = place(self.c)
        ev = s.events(1)[0]
        self.assertEqual(int(ev["id"]), head + 1)
        self.assertEqual(ev["data"]["position"], head + 1)
        self.assertLessEqual(head + 1, b["position"])

    # ---- commands ----

    def test_command_visible(self):
        h, b = place(self.c)
        cid = h.get("command-id")
        self.assertEqual(cid, b["command_id"])
        s = self.open("/subscribe?command=%s&projection=order_summaries"
                      "&projection=sales_dashboard" % cid)
        self.assertStream(s)
        ev = s.events(1)[0]
        self.assertEqual(ev["event"], "visible")
        self.assertEqual(ev["data"]["command_id"], cid)
        self.assertEqual(ev["data"]["position"], b["position"])
        self.assertEqual(ev["data"]["projections"], ["order_summaries", "sales_dashboard"])
        # the projection has it now
        st, _, q = self.c.get("/queries/order_summary?order_id=%s"
                              % b["stream_id"][len("order-"):])
        self.assertEqual(st, 200, q)
        self.assertIsNone(s.next(), "the stream ends after visible")

    def test_command_visible_after_resume_and_timeout_while_paused(self):
        self.control("order_summaries", "pause")
        try:
            h, b = place(self.c)
            cid = h["command-id"]
            s = self.open("/subscribe?command=%s&projection=order_summaries"
                          "&timeout_ms=500" % cid)
            ev = s.events(1)[0]
            self.assertEqual(ev["event"], "timeout")
            self.assertEqual(ev["data"]["projection"], "order_summaries")
            self.assertIsNone(s.next())
            s2 = self.open("/subscribe?command=%s&projection=order_summaries" % cid)
            self.assertStream(s2)
        finally:
            self.control("order_summaries", "resume")
        ev = s2.events(1, timeout=30)[0]
        self.assertEqual(ev["event"], "visible")

    def test_command_id_header_with_wait_for(self):
        st, h, b = self.c.req("POST", "/commands/PlaceOrder?wait_for=order_summaries",
                              body=order_body())
        self.assertEqual(st, 202, b)
        self.assertEqual(h.get("command-id"), b["command_id"])
        st, h, b = self.c.command("PlaceOrder", order_body(), key=uid("k"))
        self.assertEqual(h.get("command-id"), b["command_id"])

    def test_command_refused(self):
        oid = uid("ref")
        place(self.c, oid)
        st, h, b = self.c.command("PlaceOrder", order_body(oid))
        self.assertEqual(st, 409, b)
        cid = h.get("command-id")
        self.assertIsNotNone(cid, h)
        s = self.open("/subscribe?command=%s&projection=order_summaries" % cid)
        self.assertStream(s)
        ev = s.events(1)[0]
        self.assertEqual(ev["event"], "refused")
        self.assertEqual(ev["data"]["status"], 409)
        self.assertEqual(ev["data"]["type"], b["type"])
        self.assertEqual(ev["data"]["command_id"], cid)
        self.assertIsNone(s.next())

    def test_command_unknown(self):
        s = self.open("/subscribe?command=01a2178c-0000-7000-8000-000000000000"
                      "&projection=order_summaries")
        self.assertEqual(s.status, 404)
        self.assertEqual(s.headers["content-type"], "application/problem+json")
        self.assertEqual(s.body["type"], "urn:cqrsd:problem:unknown-command")

    # ---- the connection ----

    def test_heartbeat(self):
        s = self.open("/subscribe?projection=order_summaries")
        s.events(1)
        t0 = time.monotonic()
        with self.assertRaises(AssertionError):  # no event: only comments
            s.next(timeout=HEARTBEAT_MS / 1000 * 5)
        self.assertGreaterEqual(s.comments, 2, "heartbeats in 5 intervals")
        self.assertLess(time.monotonic() - t0, 30)

    def test_head(self):
        st, h, b = self.c.req("HEAD", "/subscribe?projection=order_summaries")
        self.assertEqual(st, 200)
        self.assertEqual(h["content-type"], "text/event-stream")

    def test_many_subscribers_on_two_threads(self):
        """40 subscribers, two HTTP threads: each gets the event (no thread
        per subscriber), and a query is answered meanwhile."""
        oid = uid("many")
        subs = [self.open("/subscribe?stream=order-" + oid) for _ in range(40)]
        for s in subs:
            self.assertStream(s)
        st, _, _ = self.c.get("/healthz")
        self.assertEqual(st, 200)
        place(self.c, oid)
        for s in subs:
            self.assertEqual(s.events(1)[0]["data"]["version"], 1)

    def test_bad_parameters(self):
        cases = [
            ("", "projection"),
            ("projection=nope", "projection"),
            ("projection=order_summaries&projection=order_summaries", "projection"),
            ("projection=order_summaries&projection=sales_dashboard", "projection"),
            ("projection=order_summaries&stream=x", "stream"),
            ("projection=order_summaries&after=-1", "after"),
            ("projection=order_summaries&after=x", "after"),
            ("projection=order_summaries&after=1&after=2", "after"),
            ("projection=order_summaries&timeout_ms=5", "timeout_ms"),
            ("stream=", "stream"),
            ("stream=" + "x" * 300, "stream"),
            ("stream=a&stream=b", "stream"),
            ("command=not-a-uuid!&projection=order_summaries", "command"),
            ("command=01a2178c-0000-7000-8000-000000000000", "projection"),
            ("command=01a2178c-0000-7000-8000-000000000000&projection=order_summaries"
             "&timeout_ms=0", "timeout_ms"),
            ("command=01a2178c-0000-7000-8000-000000000000&projection=order_summaries"
             "&after=3", "after"),
            ("projection=order_summaries&bogus=1", "bogus"),
        ]
        for qs, field in cases:
            with self.subTest(qs=qs[:80]):
                st, h, b = self.c.get("/subscribe?" + qs)
                self.assertEqual(st, 400, b)
                self.assertEqual(h["content-type"], "application/problem+json")
                self.assertEqual(b["type"], "urn:cqrsd:problem:bad-parameter")
                self.assertFieldError(b, field)
        st, h, b = self.c.get("/subscribe?projection=order_summaries",
                              headers={"Last-Event-ID": "abc"})
        self.assertEqual(st, 400, b)
        st, h, b = self.c.post("/subscribe", body={})
        self.assertEqual(st, 405, b)
        self.assertEqual(h.get("allow"), "GET, HEAD")


class LimitTest(unittest.TestCase):
    """--max-subscribers: one more is 503 with Retry-After; a client that
    goes away gives its place back (noticed at the next heartbeat)."""

    def test_limit_and_cleanup(self):
        with Server(cqtest.BINARY, args=("--max-subscribers", "2",
                                         "--heartbeat-ms", "200")) as srv:
            a = SSE(srv, "/subscribe?projection=order_summaries")
            b = SSE(srv, "/subscribe?stream=$all")
            self.assertEqual((a.status, b.status), (200, 200))
            c = SSE(srv, "/subscribe?projection=order_summaries")
            self.assertEqual(c.status, 503)
            self.assertEqual(c.headers.get("retry-after"), "5")
            self.assertEqual(c.body["type"], "urn:cqrsd:problem:too-many-subscribers")
            a.close()
            deadline = time.monotonic() + 20
            while True:
                d = SSE(srv, "/subscribe?projection=order_summaries")
                if d.status == 200:
                    d.close()
                    break
                self.assertLess(time.monotonic(), deadline,
                                "the place of a closed subscriber was not given back")
                time.sleep(0.2)
            b.close()

    def test_command_from_before_a_restart(self):
        """A restarted server knows no recent outcomes: the command is found
        by its id in the events' metadata."""
        with Server(cqtest.BINARY) as srv:
            c = Client(srv)
            h, b = place(c)
            for _ in range(3):
                place(c)
            c.close()
            srv.restart()
            s = SSE(srv, "/subscribe?command=%s&projection=order_summaries"
                    % h["command-id"])
            self.assertEqual(s.status, 200, s.body)
            ev = s.events(1, timeout=30)[0]
            self.assertEqual(ev["event"], "visible")
            self.assertEqual(ev["data"]["position"], b["position"])
            s.close()

    def test_other_streams_wake_no_stream_subscriber(self):
        """Stream subscribers wait on their stream: commits of other
        streams look at none of them (cqrsd_waiters_checked stays), a
        commit of theirs wakes them. SQLite only: on PostgreSQL the head
        also moves by the listener's notifications, which do not name the
        streams, and wake every stream subscriber to read its stream once."""
        cqtest.skip_unless_sqlite(self, "the listener's wake-ups name no streams")
        with Server(cqtest.BINARY, args=("--heartbeat-ms", "600000")) as srv:
            c = Client(srv)
            oid = uid("quiet")
            subs = [SSE(srv, "/subscribe?stream=order-" + oid) for _ in range(5)]
            for sub in subs:
                self.assertEqual(sub.status, 200)
                self.assertEqual(sub.next(timeout=10).get("retry"), "1000")

            def checked():
                st, _, text = c.get("/metrics")
                self.assertEqual(st, 200)
                for line in text.splitlines():
                    if line.startswith("cqrsd_waiters_checked "):
                        return float(line.split()[1])
                self.fail("no cqrsd_waiters_checked in /metrics")

            before = checked()
            for _ in range(20):
                place(c)
            self.assertEqual(checked(), before,
                             "commits of other streams looked at the subscribers")
            place(c, oid)
            for sub in subs:
                self.assertEqual(sub.events(1)[0]["data"]["version"], 1)
                sub.close()
            c.close()

    def test_stop_with_subscribers(self):
        """SIGTERM with open streams: they end, the server exits 0 in time."""
        srv = Server(cqtest.BINARY, args=("--heartbeat-ms", "60000"))
        with srv:
            subs = [SSE(srv, "/subscribe?projection=order_summaries") for _ in range(5)]
            for s in subs:
                s.events(1)
            t0 = time.monotonic()
            srv.stop()
            self.assertLess(time.monotonic() - t0, 20)
            for s in subs:
                while s.next(timeout=10) is not None:
                    pass
                s.close()


class CrossNodeTest(unittest.TestCase):
    """PostgreSQL: a subscriber on node B hears node A's commits and the
    projection progress made by whichever node runs it."""

    def test_two_nodes(self):
        if not cqtest.PG:
            self.skipTest("PostgreSQL only (CQ_TEST_BACKEND=pg)")
        uri = cqtest.pg_create_database("sse")
        a = Server(cqtest.BINARY, store=uri, data_arg=False)
        b = Server(cqtest.BINARY, store=uri, data_arg=False)
        try:
            a.start()
            b.start()
            ca = Client(a)
            oid = uid("xn")
            sb = SSE(b, "/subscribe?stream=order-" + oid)
            self.assertEqual(sb.status, 200)
            h, body = place(ca, oid)
            ev = sb.events(1, timeout=30)[0]
            self.assertEqual(ev["data"]["metadata"]["command_id"], body["command_id"])
            sv = SSE(b, "/subscribe?command=%s&projection=order_summaries"
                     % h["command-id"])
            self.assertEqual(sv.status, 200, sv.body)
            self.assertEqual(sv.events(1, timeout=30)[0]["event"], "visible")
            sb.close()
            sv.close()
            ca.close()
        finally:
            a.close()
            b.close()
            cqtest.pg_drop_database(uri)


if __name__ == "__main__":
    cqtest.main()
