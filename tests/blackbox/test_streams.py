"""Black-box tests of the event store endpoints: GET /streams/{id},
GET /streams/$all and POST /streams/{id}.

    python3 tests/blackbox/test_streams.py /path/to/cqrsd
"""
import json
import sys
import threading

sys.dont_write_bytecode = True

import cqtest  # noqa: E402
from problems import ProblemTypes  # noqa: E402
from cqtest import (RFC3339_RE, RFC3339_UTC_RE, ServerTestCase, UUID7_RE,  # noqa: E402
                    order_body, uid)

EVENT_KEYS = {"position", "stream_id", "version", "type", "schema_version",
              "data", "metadata", "recorded_at"}


class StreamTestBase(ProblemTypes, ServerTestCase):

    def place_and_pay(self):
        """An order with 4 events; returns (order_id, [command answers])."""
        body = order_body()
        oid = body["order_id"]
        answers = []
        for ctype, b in (("PlaceOrder", body),
                         ("RecordPayment", {"order_id": oid, "payment_id": uid("p"),
                                            "amount_cents": 300}),
                         ("RecordPayment", {"order_id": oid, "payment_id": uid("p"),
                                            "amount_cents": 700})):
            st, _, a = self.c.command(ctype, b)
            self.assertEqual(st, 202, "%s -> %s %r" % (ctype, st, a))
            answers.append(a)
        return oid, answers

    def check_event(self, ev, stream_id=None):
        self.assertIsInstance(ev, dict)
        missing = EVENT_KEYS - set(ev)
        self.assertFalse(missing, "event lacks %s: %r" % (sorted(missing), ev))
        for k in ("position", "version", "schema_version"):
            self.assertIs(type(ev[k]), int, "%s not an integer: %r" % (k, ev))
        self.assertGreaterEqual(ev["position"], 1)
        self.assertGreaterEqual(ev["version"], 1)
        self.assertGreaterEqual(ev["schema_version"], 1)
        self.assertIsInstance(ev["type"], str)
        self.assertTrue(ev["type"])
        self.assertIsInstance(ev["data"], dict, "data is not an object: %r" % (ev,))
        self.assertIsInstance(ev["metadata"], dict, "metadata is not an object: %r" % (ev,))
        self.assertIsInstance(ev["recorded_at"], str)
        self.assertRegex(ev["recorded_at"], RFC3339_UTC_RE, "recorded_at not RFC 3339 UTC")
        if stream_id is not None:
            self.assertEqual(ev["stream_id"], stream_id)

    def check_command_metadata(self, ev):
        md = ev["metadata"]
        for k in ("event_id", "command_id", "correlation_id", "causation_id", "time"):
            self.assertIn(k, md, "metadata lacks %r: %r" % (k, md))
            self.assertIsInstance(md[k], str, "metadata %r not a string: %r" % (k, md))
            self.assertTrue(md[k], "metadata %r empty" % k)
        self.assertRegex(md["event_id"], UUID7_RE, "event_id is not a UUIDv7")
        self.assertRegex(md["time"], RFC3339_RE, "metadata time is not RFC 3339")

    def get_stream(self, sid, query=""):
        st, h, b = self.c.get("/streams/%s%s" % (sid, query))
        self.assertEqual(st, 200, "GET /streams/%s%s -> %s %r" % (sid, query, st, b))
        self.assertTrue(h.get("content-type", "").startswith("application/json"))
        return b

    def append(self, sid, expected, events):
        return self.c.post("/streams/" + sid, {"expected_version": expected,
                                               "events": events})


class ReadStreamTest(StreamTestBase):

    def test_stream_shape(self):
        oid, answers = self.place_and_pay()
        sid = "order-" + oid
        b = self.get_stream(sid)
        self.assertEqual(b["stream_id"], sid)
        self.assertEqual(b["version"], 4)
        evs = b["events"]
        self.assertEqual([e["type"] for e in evs],
                         ["OrderPlaced", "PaymentReceived", "PaymentReceived", "OrderPaid"])
        self.assertEqual([e["version"] for e in evs], [1, 2, 3, 4])
        for e in evs:
            self.check_event(e, sid)
            self.check_command_metadata(e)
        # positions: as answered by the commands
        self.assertEqual(evs[0]["position"], answers[0]["position"])
        self.assertEqual(evs[1]["position"], answers[1]["position"])
        self.assertEqual([evs[2]["position"], evs[3]["position"]],
                         [e["position"] for e in answers[2]["events"]])
        self.assertEqual(evs[3]["position"], evs[2]["position"] + 1)
        # metadata ties events to their commands
        self.assertEqual(evs[0]["metadata"]["command_id"], answers[0]["command_id"])
        self.assertEqual(evs[1]["metadata"]["command_id"], answers[1]["command_id"])
        self.assertEqual(evs[2]["metadata"]["command_id"], answers[2]["command_id"])
        self.assertEqual(evs[3]["metadata"]["command_id"], answers[2]["command_id"])
        ids = [e["metadata"]["event_id"] for e in evs]
        self.assertEqual(len(set(ids)), 4, "event ids not unique: %r" % ids)
        # data
        self.assertEqual(evs[0]["data"]["total_cents"], 1000)
        self.assertEqual(evs[1]["data"]["paid_cents"], 300)
        self.assertEqual(evs[2]["data"]["paid_cents"], 1000)
        self.assertEqual(evs[2]["data"]["amount_cents"], 700)

    def test_from_version_and_limit(self):
        oid, _ = self.place_and_pay()
        sid = "order-" + oid
        full = self.get_stream(sid)["events"]
        b = self.get_stream(sid, "?from_version=2&limit=2")
        self.assertEqual(b["version"], 4, "version must be the stream's, not the page's")
        self.assertEqual([e["version"] for e in b["events"]], [2, 3])
        self.assertEqual(b["events"], full[1:3])
        b = self.get_stream(sid, "?from_version=3")
        self.assertEqual([e["version"] for e in b["events"]], [3, 4])
        b = self.get_stream(sid, "?limit=1")
        self.assertEqual([e["version"] for e in b["events"]], [1])
        b = self.get_stream(sid, "?from_version=5")
        self.assertEqual(b["events"], [])
        self.assertEqual(b["version"], 4)
        b = self.get_stream(sid, "?from_version=1&limit=1000")
        self.assertEqual(b["events"], full)

    def test_bad_stream_query(self):
        oid, _ = self.place_and_pay()
        for q in ("?limit=1001", "?limit=-1", "?limit=abc", "?from_version=abc",
                  "?from_version=-1", "?bogus=1"):
            with self.subTest(q=q):
                st, h, b = self.c.get("/streams/order-%s%s" % (oid, q))
                self.assertProblem(st, h, b, 400)
                self.assertType(b, "bad-parameter")

    def test_unknown_stream(self):
        st, h, b = self.c.get("/streams/order-" + uid("none"))
        self.assertProblem(st, h, b, 404)
        self.assertType(b, "not-found")
        st, h, b = self.c.get("/streams/" + uid("none") + "?from_version=1&limit=5")
        self.assertProblem(st, h, b, 404)
        self.assertType(b, "not-found")


class AllStreamTest(StreamTestBase):

    def test_all_paging_is_gap_free(self):
        for _ in range(4):
            self.place_and_pay()
        st, _, first = self.c.get("/streams/$all")
        self.assertEqual(st, 200)
        head = first["head_position"]
        self.assertIs(type(head), int)
        self.assertGreaterEqual(head, 16)
        # defaults: from_position 1, limit 100
        self.assertEqual(first["events"][0]["position"], 1)
        self.assertEqual(len(first["events"]), min(head, 100))
        positions = []
        seen = []
        pos = 1
        pages = 0
        while True:
            st, _, b = self.c.get("/streams/$all?from_position=%d&limit=3" % pos)
            self.assertEqual(st, 200, "%s %r" % (st, b))
            for k in ("events", "next_position", "head_position"):
                self.assertIn(k, b)
            self.assertLessEqual(len(b["events"]), 3)
            self.assertGreaterEqual(b["head_position"], head)
            if not b["events"]:
                self.assertEqual(b["next_position"], pos)
                break
            for e in b["events"]:
                self.check_event(e)
            self.assertEqual(b["next_position"], b["events"][-1]["position"] + 1)
            positions.extend(e["position"] for e in b["events"])
            seen.extend(b["events"])
            pos = b["next_position"]
            pages += 1
            self.assertLess(pages, 10000, "paging does not end")
        self.assertEqual(positions, list(range(1, len(positions) + 1)),
                         "positions in $all are not 1..head without gaps")
        self.assertEqual(len(positions), head)
        # per stream, versions are 1..n in position order
        by_stream = {}
        for e in seen:
            by_stream.setdefault(e["stream_id"], []).append(e["version"])
        for sid, versions in by_stream.items():
            self.assertEqual(versions, list(range(1, len(versions) + 1)), sid)
        # the same events as the per-stream reads
        for sid in list(by_stream)[:5]:
            evs = self.get_stream(sid, "?limit=1000")["events"]
            self.assertEqual(evs, [e for e in seen if e["stream_id"] == sid])

    def test_all_head_matches_healthz(self):
        self.place_and_pay()
        st, _, h = self.c.healthz()
        self.assertEqual(st, 200)
        st, _, b = self.c.get("/streams/$all?limit=1")
        self.assertEqual(b["head_position"], h["head_position"])

    def test_all_beyond_head(self):
        self.place_and_pay()
        head = self.c.head()
        st, _, b = self.c.get("/streams/$all?from_position=%d" % (head + 1))
        self.assertEqual(st, 200)
        self.assertEqual(b["events"], [])
        self.assertEqual(b["next_position"], head + 1)
        self.assertEqual(b["head_position"], head)
        st, _, b = self.c.get("/streams/$all?from_position=%d&limit=1" % head)
        self.assertEqual([e["position"] for e in b["events"]], [head])
        self.assertEqual(b["next_position"], head + 1)

    def test_all_limits(self):
        for _ in range(2):
            self.place_and_pay()
        st, _, b = self.c.get("/streams/$all?limit=1000")
        self.assertEqual(st, 200)
        self.assertEqual(len(b["events"]), min(1000, b["head_position"]))
        for q in ("limit=1001", "limit=-1", "limit=abc", "from_position=abc",
                  "from_position=99999999999999999999999", "bogus=1"):
            with self.subTest(q=q):
                st, h, b = self.c.get("/streams/$all?" + q)
                self.assertProblem(st, h, b, 400)
                self.assertType(b, "bad-parameter")


class AppendTest(StreamTestBase):

    def test_no_stream_then_conflict(self):
        sid = uid("acct")
        before = self.c.head()
        st, h, b = self.append(sid, "no_stream", [
            {"type": "Opened", "data": {"owner": "ann"}},
            {"type": "Deposited", "data": {"amount": 5}, "metadata": {"source": "bb"}}])
        self.assertEqual(st, 201, "%s %r" % (st, b))
        self.assertTrue(h.get("content-type", "").startswith("application/json"))
        self.assertEqual(b.get("stream_id", sid), sid)
        self.assertEqual(b["version"], 2)
        self.assertEqual(b["position"], before + 2)
        self.assertEqual(self.c.head(), before + 2)
        st, h, p = self.append(sid, "no_stream", [{"type": "Opened", "data": {}}])
        self.assertProblem(st, h, p, 412)
        self.assertType(p, "wrong-expected-version")
        self.assertEqual(self.c.head(), before + 2)
        s = self.get_stream(sid)
        self.assertEqual(s["version"], 2)
        self.assertEqual([e["type"] for e in s["events"]], ["Opened", "Deposited"])
        self.assertEqual([e["position"] for e in s["events"]], [before + 1, before + 2])
        self.assertEqual(s["events"][0]["data"], {"owner": "ann"})
        self.assertEqual(s["events"][1]["data"], {"amount": 5})
        for e in s["events"]:
            self.check_event(e, sid)

    def test_exact_expected_version(self):
        sid = uid("acct")
        self.assertEqual(self.append(sid, "no_stream", [{"type": "A", "data": {}}])[0], 201)
        st, _, b = self.append(sid, 1, [{"type": "B", "data": {"n": 1}}])
        self.assertEqual(st, 201, "%s %r" % (st, b))
        self.assertEqual(b["version"], 2)
        before = self.c.head()
        for wrong in (1, 3, 0, 100):
            with self.subTest(expected=wrong):
                # 0 is no_stream (docs/api.md): wrong for a stream at 2 too
                st, h, p = self.append(sid, wrong, [{"type": "C", "data": {}}])
                self.assertProblem(st, h, p, 412)
                self.assertType(p, "wrong-expected-version")
        self.assertEqual(self.c.head(), before)
        st, _, b = self.append(sid, 2, [{"type": "C", "data": {}}, {"type": "D", "data": {}}])
        self.assertEqual(st, 201, "%s %r" % (st, b))
        self.assertEqual(b["version"], 4)
        self.assertEqual(b["position"], before + 2)

    def test_exact_version_on_missing_stream(self):
        before = self.c.head()
        st, h, p = self.append(uid("acct"), 1, [{"type": "A", "data": {}}])
        self.assertProblem(st, h, p, 412)
        self.assertType(p, "wrong-expected-version")
        self.assertEqual(self.c.head(), before)

    def test_any(self):
        sid = uid("acct")
        st, _, b = self.append(sid, "any", [{"type": "A", "data": {"i": 1}}])
        self.assertEqual(st, 201, "%s %r" % (st, b))
        self.assertEqual(b["version"], 1)
        st, _, b = self.append(sid, "any", [{"type": "A", "data": {"i": 2}}])
        self.assertEqual(st, 201)
        self.assertEqual(b["version"], 2)
        self.assertEqual([e["data"]["i"] for e in self.get_stream(sid)["events"]], [1, 2])

    def test_metadata_kept(self):
        sid = uid("acct")
        md = {"source": "blackbox", "n": 5, "nested": {"a": [1, 2]}, "flag": True}
        st, _, b = self.append(sid, "any", [{"type": "Tagged", "data": {"x": "y"}, "metadata": md}])
        self.assertEqual(st, 201, "%s %r" % (st, b))
        ev = self.get_stream(sid)["events"][0]
        self.assertEqual(ev["type"], "Tagged")
        self.assertEqual(ev["data"], {"x": "y"})
        for k, v in md.items():
            self.assertEqual(ev["metadata"].get(k), v, "user metadata %r lost: %r" % (k, ev))
        st, _, all_ = self.c.get("/streams/$all?from_position=%d&limit=1" % b["position"])
        self.assertEqual(all_["events"][0]["metadata"], ev["metadata"])
        self.assertEqual(all_["events"][0]["stream_id"], sid)

    def test_many_events_in_one_append(self):
        sid = uid("acct")
        before = self.c.head()
        evs = [{"type": "T", "data": {"i": i}} for i in range(100)]
        st, _, b = self.append(sid, "no_stream", evs)
        self.assertEqual(st, 201, "%s %r" % (st, b))
        self.assertEqual(b["version"], 100)
        self.assertEqual(b["position"], before + 100)
        got = self.get_stream(sid, "?limit=1000")["events"]
        self.assertEqual([e["data"]["i"] for e in got], list(range(100)))
        self.assertEqual([e["position"] for e in got], list(range(before + 1, before + 101)))

    def test_bad_appends(self):
        sid = uid("acct")
        self.assertEqual(self.append(sid, "no_stream", [{"type": "A", "data": {}}])[0], 201)
        cases = [
            ("no events", {"expected_version": "any", "events": []}),
            ("101 events", {"expected_version": "any",
                            "events": [{"type": "T", "data": {}}] * 101}),
            ("bad expected_version", {"expected_version": "sometimes",
                                      "events": [{"type": "T", "data": {}}]}),
            ("float expected_version", {"expected_version": 1.5,
                                        "events": [{"type": "T", "data": {}}]}),
            ("missing expected_version", {"events": [{"type": "T", "data": {}}]}),
            ("missing events", {"expected_version": "any"}),
            ("data not an object", {"expected_version": "any",
                                    "events": [{"type": "T", "data": [1]}]}),
            ("metadata not an object", {"expected_version": "any",
                                        "events": [{"type": "T", "data": {}, "metadata": 3}]}),
            ("type missing", {"expected_version": "any", "events": [{"data": {}}]}),
            ("type empty", {"expected_version": "any", "events": [{"type": "", "data": {}}]}),
            ("type not a string", {"expected_version": "any",
                                   "events": [{"type": 7, "data": {}}]}),
            ("unknown field", {"expected_version": "any", "bogus": 1,
                               "events": [{"type": "T", "data": {}}]}),
        ]
        before = self.c.head()
        for name, body in cases:
            with self.subTest(case=name):
                st, h, b = self.c.post("/streams/" + sid, body)
                self.assertProblem(st, h, b, 400)
                self.assertType(b, "validation-failed")
        self.assertEqual(self.c.head(), before)
        self.assertEqual(self.get_stream(sid)["version"], 1)

    def test_racing_appends(self):
        sid = uid("race")
        self.assertEqual(self.append(sid, "no_stream", [{"type": "A", "data": {}}])[0], 201)
        for round_ in range(3):
            out = [None] * 8
            barrier = threading.Barrier(8)

            def run(i, version=round_ + 1):
                cl = cqtest.Client(self.server)
                try:
                    barrier.wait(30)
                    out[i] = cl.post("/streams/" + sid, {
                        "expected_version": version,
                        "events": [{"type": "B", "data": {"i": i}}]})[0]
                except Exception as e:  # noqa: BLE001
                    out[i] = repr(e)
                finally:
                    cl.close()

            threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(120)
            self.assertEqual(sorted(out, key=str), [201] + [412] * 7, "round %d" % round_)
        self.assertEqual(self.get_stream(sid)["version"], 4)

    def test_reserved_stream_ids(self):
        before = self.c.head()
        # $all is a resource of its own, read-only; other ids starting with
        # $ are reserved for the engine
        for sid, status, slug in (("$all", 405, "method-not-allowed"),
                                  ("$mine", 400, "bad-stream-id")):
            with self.subTest(sid=sid):
                st, h, b = self.append(sid, "any", [{"type": "T", "data": {}}])
                self.assertProblem(st, h, b, status)
                self.assertType(b, slug)
        self.assertEqual(self.c.head(), before)


class PageBytesTest(StreamTestBase):
    """Pages are bounded by bytes as well as by events (max_bytes, default
    4 MiB): a page of big events stops at the budget, with at least one
    event, and next_version / next_position continue it."""

    server_args = ("--body-limit", 2 * 1024 * 1024)
    BUDGET = 4 * 1024 * 1024
    N = 10

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.sid = uid("blob")
        cls.first = None
        for i in range(cls.N):
            st, _, b = cls.c.post("/streams/" + cls.sid, {
                "expected_version": "any",
                "events": [{"type": "Blob", "data": {"i": i, "pad": "x" * 1000000}}]})
            if st != 201:
                raise AssertionError("append %d -> %s %r" % (i, st, b))
            if cls.first is None:
                cls.first = b["position"]

    def test_stream_pages_stop_at_the_byte_budget(self):
        for query, per_page in (("", None), ("&max_bytes=1024", 1),
                                ("&max_bytes=2500000", 2)):
            with self.subTest(query=query):
                seen, v, pages = [], 1, 0
                while True:
                    st, _, raw = self.c.req("GET", "/streams/%s?from_version=%d"
                                            "&limit=1000%s" % (self.sid, v, query))
                    self.assertEqual(st, 200, raw)
                    b = raw
                    evs = b["events"]
                    if not evs:
                        self.assertEqual(b["next_version"], v)
                        break
                    self.assertLessEqual(len(json.dumps(evs)), self.BUDGET + 65536)
                    self.assertLess(len(evs), self.N)
                    if per_page is not None:
                        self.assertLessEqual(len(evs), per_page)
                    self.assertEqual(b["next_version"], evs[-1]["version"] + 1, b.keys())
                    seen.extend(e["data"]["i"] for e in evs)
                    v = b["next_version"]
                    pages += 1
                    self.assertLess(pages, 2 * self.N + 2)
                self.assertEqual(seen, list(range(self.N)))
                self.assertGreater(pages, 1)

    def test_all_pages_stop_at_the_byte_budget(self):
        seen, pos, pages = [], self.first, 0
        while True:
            st, _, b = self.c.get("/streams/$all?from_position=%d&limit=1000" % pos)
            self.assertEqual(st, 200)
            evs = b["events"]
            if not evs:
                break
            self.assertLessEqual(len(json.dumps(evs)), self.BUDGET + 65536)
            self.assertLess(len(evs), self.N)
            self.assertEqual(b["next_position"], evs[-1]["position"] + 1)
            seen.extend(e["data"]["i"] for e in evs if e["stream_id"] == self.sid)
            pos = b["next_position"]
            pages += 1
            self.assertLess(pages, 2 * self.N + 2)
        self.assertEqual(seen, list(range(self.N)))

    def test_max_bytes_bounds(self):
        for q in ("max_bytes=1023", "max_bytes=16777217", "max_bytes=x"):
            with self.subTest(q=q):
                st, h, b = self.c.get("/streams/%s?%s" % (self.sid, q))
                self.assertProblem(st, h, b, 400)
                self.assertType(b, "bad-parameter")
                st, h, b = self.c.get("/streams/$all?" + q)
                self.assertProblem(st, h, b, 400)
                self.assertType(b, "bad-parameter")


if __name__ == "__main__":
    cqtest.main()
