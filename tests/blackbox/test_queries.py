"""Black-box tests of GET /queries/{name}: the data of every query of the
orders example after a realistic workload, customer_orders paging, exact
sales_dashboard numbers, the consistency controls (min_position,
min_version, wait_ms, consistency=strong, ?wait_for= on commands), ETags,
the error cases and many concurrent waiters.

    python3 tests/blackbox/test_queries.py /path/to/cqrsd
"""
import json
import select
import socket
import sys
import threading
import time
import urllib.parse

sys.dont_write_bytecode = True

import cqtest  # noqa: E402
from problems import assert_type  # noqa: E402
from cqtest import Client, ServerTestCase, order_body, uid  # noqa: E402

STALE_WARNING = '110 - "Response is Stale"'
META_KEYS = ("projection", "position", "lag_events", "lag_ms", "stale",
             "consistency")


# queries answered by inline projections, whose meta says so
INLINE_QUERIES = {"payment_confirmation": "inline"}


def qpath(name, params=None):
    """/queries/NAME?params (params: dict or list of pairs)."""
    if not params:
        return "/queries/" + name
    items = params.items() if isinstance(params, dict) else params
    return "/queries/%s?%s" % (name, urllib.parse.urlencode(list(items)))


class QueryTestBase(ServerTestCase):

    # ---- commands ----------------------------------------------------------

    def accepted(self, resp):
        st, h, b = resp
        self.assertEqual(st, 202, "want 202, got %s %r" % (st, b))
        self.assertIsInstance(b, dict)
        return b

    def place(self, oid=None, client=None, **kw):
        body = order_body(oid, **kw)
        b = self.accepted((client or self.c).command("PlaceOrder", body))
        return body["order_id"], b

    def pay(self, oid, amount, pid=None, path_suffix=""):
        return self.accepted(self.c.req(
            "POST", "/commands/RecordPayment" + path_suffix,
            body={"order_id": oid, "payment_id": pid or uid("p"),
                  "amount_cents": amount}))

    def ship(self, oid):
        return self.accepted(self.c.command(
            "ShipOrder", {"order_id": oid, "carrier": "DHL",
                          "tracking_number": "T-1"}))

    def cancel(self, oid):
        return self.accepted(self.c.command(
            "CancelOrder", {"order_id": oid, "reason": "changed my mind"}))

    # ---- queries -----------------------------------------------------------

    def q(self, name, params=None, headers=None, client=None):
        return (client or self.c).get(qpath(name, params), headers=headers)

    def ok(self, name, params=None, headers=None, client=None,
           projection=None, consistency=None):
        """A 200 query answer, with its meta checked; returns (data, meta, h).
        consistency defaults to what the query's projection gives: "inline"
        for payment_confirmation (applied with the events), else
        "eventual"."""
        if consistency is None:
            consistency = INLINE_QUERIES.get(name, "eventual")
        st, h, b = self.q(name, params, headers, client)
        self.assertEqual(st, 200, "GET %s -> %s %r" % (qpath(name, params), st, b))
        self.assertTrue(h.get("content-type", "").startswith("application/json"),
                        "Content-Type %r" % h.get("content-type"))
        self.assertIsInstance(b, dict)
        self.assertEqual(set(b), {"data", "meta"}, "top-level keys %r" % (b,))
        meta = b["meta"]
        for k in META_KEYS:
            self.assertIn(k, meta, "meta lacks %r: %r" % (k, meta))
        self.assertIs(type(meta["position"]), int)
        self.assertIs(type(meta["lag_events"]), int)
        self.assertIn(type(meta["lag_ms"]), (int, float))
        self.assertIs(type(meta["stale"]), bool)
        self.assertGreaterEqual(meta["lag_events"], 0)
        self.assertGreaterEqual(meta["lag_ms"], 0)
        self.assertEqual(meta["consistency"], consistency, "meta %r" % (meta,))
        if projection is not None:
            self.assertEqual(meta["projection"], projection)
        keyed = name in ("order_summary", "payment_confirmation")
        if keyed:
            self.assertIn("stream_version", meta, "keyed query meta %r" % (meta,))
            self.assertIs(type(meta["stream_version"]), int)
        else:
            self.assertNotIn("stream_version", meta, "unkeyed query meta %r" % (meta,))
        etag = h.get("etag")
        if consistency == "strong":
            self.assertRegex(etag or "", r'^"s\d+"$', "strong ETag %r" % etag)
        else:
            self.assertEqual(etag, '"%d"' % meta["position"],
                             "ETag vs meta.position %r" % (meta,))
        if meta["stale"]:
            self.assertEqual(h.get("warning"), STALE_WARNING, "stale answer headers %r" % (h,))
        else:
            self.assertNotIn("warning", h, "fresh answer has a Warning header")
            self.assertNotIn("warning", meta, "fresh answer has meta.warning")
        return b["data"], meta, h

    def caught_up(self, name, params=None, position=None):
        """Answer once the projection has reached `position` (default: head)."""
        if position is None:
            position = self.c.head()
        p = list((params or {}).items()) + [("min_position", position),
                                            ("wait_ms", 20000)]
        data, meta, h = self.ok(name, p)
        self.assertFalse(meta["stale"], "not caught up to %d in 20 s: %r" % (position, meta))
        self.assertGreaterEqual(meta["position"], position)
        return data, meta

    def bad(self, path, field=None, status=400, method="GET", slug="bad-parameter"):
        """A refused query, and its problem type: bad-parameter for the
        parameters every query shares (unknown, repeated, consistency,
        waits), validation-failed for the values of a query's own @params,
        not-found, method-not-allowed."""
        st, h, b = self.c.req(method, path)
        self.assertProblem(st, h, b, status)
        assert_type(self, b, slug)
        if field is not None:
            self.assertFieldError(b, field)
        return h, b


# =============================================================================
# The data of every query after a realistic workload (own server: the
# dashboard counts everything the server has seen).
# =============================================================================

class WorkloadTest(QueryTestBase):
    """Two customers, two currencies: partial and full payments, shipping,
    cancellations (unpaid, partially paid, paid). The expected read models
    are computed from what was sent; times and days come from the events'
    recorded_at."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.orders = {}      # oid -> model
        cls.order_seq = []   # oids in placement order
        cls.after_each = []  # (command, 202 body, payment_confirmation answer)
        try:
            cls._workload()
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def _cmd(cls, ctype, body):
        st, h, b = cls.c.command(ctype, body)
        if st != 202:
            raise AssertionError("%s %r -> %s %r" % (ctype, body, st, b))
        # the inline read model must be current right after the 202
        pst, ph, pb = cls.c.get(qpath("payment_confirmation",
                                      {"order_id": body["order_id"]}))
        cls.after_each.append((ctype, body, b, pst, ph, pb))
        return b

    @classmethod
    def _workload(cls):
        cls.cust_a, cls.cust_b = uid("ca"), uid("cb")
        # (customer, currency, items)
        plan = [
            ("a", "EUR", [(2, 300), (1, 400)]),          # 0: 1000, partial 400
            ("a", "USD", [(5, 500)]),                    # 1: 2500, paid + shipped
            ("b", "EUR", [(1, 1000)]),                   # 2: 1000, 300+700, cancelled
            ("b", "USD", [(3, 111), (4, 222)]),          # 3: 1221, unpaid
            ("a", "EUR", [(1, 999)]),                    # 4: cancelled unpaid
            ("b", "EUR", [(7, 100)]),                    # 5: 700, partial 200, cancelled
            ("a", "USD", [(1, 12345), (2, 5)]),          # 6: paid, not shipped
            ("b", "USD", [(10000, 0)]),                  # 7: total 0, unpaid
        ]
        for i in range(8, 19):                           # more for paging
            plan.append(("a" if i % 3 else "b", "EUR" if i % 2 else "USD",
                         [(i % 4 + 1, 100 + i)]))
        for cust, cur, items in plan:
            oid = uid("o")
            customer = cls.cust_a if cust == "a" else cls.cust_b
            its = [{"sku": "s-%d" % k, "quantity": q, "unit_price_cents": p}
                   for k, (q, p) in enumerate(items)]
            b = cls._cmd("PlaceOrder", {"order_id": oid, "customer_id": customer,
                                        "currency": cur, "items": its})
            cls.orders[oid] = {
                "order_id": oid, "customer_id": customer, "currency": cur,
                "total": sum(q * p for q, p in items),
                "item_count": sum(q for q, _ in items),
                "paid": 0, "status": "placed", "payment_status": "unpaid",
                "last_payment_id": None, "pc_status": "unpaid",
                "placed_position": b["position"],
                # money movements: (sign * amount, stream version)
                "money": [],
            }
            cls.order_seq.append(oid)
        o = cls.order_seq

        def pay(oid, amount):
            m = cls.orders[oid]
            pid = uid("p")
            b = cls._cmd("RecordPayment", {"order_id": oid, "payment_id": pid,
                                           "amount_cents": amount})
            m["paid"] += amount
            m["last_payment_id"] = pid
            m["money"].append((amount, b["events"][0]["version"]))
            if m["paid"] >= m["total"]:
                m["status"] = m["payment_status"] = m["pc_status"] = "paid"
            else:
                m["payment_status"] = m["pc_status"] = "partially_paid"

        def ship(oid):
            cls._cmd("ShipOrder", {"order_id": oid, "carrier": "UPS",
                                   "tracking_number": "Z-9"})
            cls.orders[oid]["status"] = "shipped"

        def cancel(oid):
            m = cls.orders[oid]
            b = cls._cmd("CancelOrder", {"order_id": oid, "reason": "no longer needed"})
            m["status"] = "cancelled"
            if m["paid"] > 0:
                m["payment_status"] = m["pc_status"] = "refund_due"
                m["money"].append((-m["paid"], b["version"]))
            else:
                m["pc_status"] = "cancelled"

        pay(o[0], 400)
        pay(o[1], 2500)
        ship(o[1])
        pay(o[2], 300)
        pay(o[2], 700)
        cancel(o[2])
        cancel(o[4])
        pay(o[5], 200)
        cancel(o[5])
        pay(o[6], 12355)
        for i in range(8, 19, 2):
            pay(o[i], 50)
        pay(o[9], cls.orders[o[9]]["total"])
        ship(o[9])

        # recorded_at of every event, from the store
        cls.streams = {}
        for oid in o:
            st, _, b = cls.c.get("/streams/order-%s?limit=1000" % oid)
            if st != 200:
                raise AssertionError("GET stream order-%s -> %s %r" % (oid, st, b))
            cls.streams[oid] = b["events"]

    def summary_expected(self, oid):
        m = self.orders[oid]
        evs = self.streams[oid]
        return {
            "order_id": oid, "customer_id": m["customer_id"],
            "status": m["status"], "payment_status": m["payment_status"],
            "currency": m["currency"], "total_cents": m["total"],
            "paid_cents": m["paid"], "item_count": m["item_count"],
            "placed_at": evs[0]["recorded_at"],
            "updated_at": evs[-1]["recorded_at"],
            "version": evs[-1]["version"],
        }

    def test_order_summary_every_order(self):
        head = self.c.head()
        for oid in self.order_seq:
            data, meta = self.caught_up("order_summary", {"order_id": oid}, head)
            self.assertEqual(meta["projection"], "order_summaries")
            self.assertEqual(data, self.summary_expected(oid), "order %s" % oid)
            self.assertEqual(meta["stream_version"], self.streams[oid][-1]["version"])
            self.assertEqual(meta["lag_events"], 0)

    def test_payment_confirmation_every_order(self):
        relevant = {"OrderPlaced", "PaymentReceived", "OrderPaid", "OrderCancelled"}
        for oid in self.order_seq:
            m = self.orders[oid]
            data, meta, _ = self.ok("payment_confirmation", {"order_id": oid},
                                    projection="payment_confirmation")
            self.assertFalse(meta["stale"], meta)
            self.assertEqual(meta["lag_events"], 0, "inline projection lags: %r" % meta)
            self.assertEqual(meta["stream_version"], self.streams[oid][-1]["version"])
            last = [e for e in self.streams[oid] if e["type"] in relevant][-1]
            # data.version: the last event the read model applied (a
            # shipment does not concern it) -- or the stream's version
            self.assertIn(data.get("version"), (last["version"],
                                                self.streams[oid][-1]["version"]))
            ver_event = self.streams[oid][data["version"] - 1]
            self.assertEqual(data, {
                "order_id": oid, "status": m["pc_status"],
                "currency": m["currency"], "total_cents": m["total"],
                "paid_cents": m["paid"], "last_payment_id": m["last_payment_id"],
                "updated_at": ver_event["recorded_at"], "version": data["version"],
            }, "order %s" % oid)

    def test_payment_confirmation_current_after_each_202(self):
        """Recorded during the workload: the GET sent right after each 202,
        with no min_position, already showed that command's effect."""
        self.assertGreater(len(self.after_each), 30)
        paid = {}
        for ctype, body, b, st, h, pb in self.after_each:
            oid = body["order_id"]
            what = "%s %r -> %r" % (ctype, body, pb)
            self.assertEqual(st, 200, what)
            meta, data = pb["meta"], pb["data"]
            self.assertEqual(meta["projection"], "payment_confirmation", what)
            self.assertGreaterEqual(meta["position"], b["position"], what)
            self.assertEqual(meta["stream_version"], b["version"], what)
            self.assertFalse(meta["stale"], what)
            self.assertNotIn("warning", h, what)
            if ctype == "PlaceOrder":
                paid[oid] = 0
                self.assertEqual((data["status"], data["paid_cents"], data["version"]),
                                 ("unpaid", 0, 1), what)
            elif ctype == "RecordPayment":
                paid[oid] += body["amount_cents"]
                self.assertEqual(data["paid_cents"], paid[oid], what)
                self.assertEqual(data["last_payment_id"], body["payment_id"], what)
                self.assertEqual(data["version"], b["version"], what)
                self.assertEqual(data["status"],
                                 "paid" if paid[oid] >= data["total_cents"]
                                 else "partially_paid", what)
            elif ctype == "CancelOrder":
                self.assertEqual(data["version"], b["version"], what)
                self.assertEqual(data["status"],
                                 "refund_due" if paid[oid] else "cancelled", what)
            elif ctype == "ShipOrder":
                self.assertEqual(data["status"], "paid", what)

    def page_all(self, customer, limit):
        """Follow `next` until it is null; returns (orders, pages)."""
        seen, pages, after = [], 0, None
        while True:
            params = [("customer_id", customer), ("limit", limit)]
            if after is not None:
                params.append(("after", after))
            data, meta, _ = self.ok("customer_orders", params,
                                    projection="order_summaries")
            pages += 1
            self.assertLess(pages, 100, "paging does not end")
            self.assertEqual(set(data), {"orders", "next"}, "data %r" % (data,))
            rows = data["orders"]
            self.assertLessEqual(len(rows), limit)
            for r in rows:
                self.assertIs(type(r.get("cursor")), int, "row %r" % (r,))
            if data["next"] is None:
                seen.extend(rows)
                return seen, pages
            self.assertTrue(rows, "empty page with a non-null next: %r" % (data,))
            self.assertEqual(data["next"], rows[-1]["cursor"],
                             "next is not the last row's cursor")
            seen.extend(rows)
            after = data["next"]

    def test_customer_orders_paging(self):
        self.caught_up("customer_orders", {"customer_id": self.cust_a})
        for cust in (self.cust_a, self.cust_b):
            mine = [oid for oid in self.order_seq
                    if self.orders[oid]["customer_id"] == cust]
            want = list(reversed(mine))  # newest first
            n = len(want)
            for limit in (1, 2, 3, n, n + 1, 100):
                rows, pages = self.page_all(cust, limit)
                ids = [r["order_id"] for r in rows]
                self.assertEqual(ids, want, "customer %s limit %d" % (cust, limit))
                cursors = [r["cursor"] for r in rows]
                self.assertEqual(cursors, sorted(cursors, reverse=True))
                self.assertEqual(len(set(cursors)), n)
                self.assertGreaterEqual(pages, -(-n // limit))
                self.assertLessEqual(pages, n // limit + 1)
                for r in rows:
                    exp = self.summary_expected(r["order_id"])
                    got = dict(r)
                    del got["cursor"]
                    self.assertEqual(got, exp)
            # the default limit is 20: more than this customer has
            data, _, _ = self.ok("customer_orders", {"customer_id": cust})
            self.assertEqual([r["order_id"] for r in data["orders"]], want)
            self.assertIsNone(data["next"])

    def test_customer_orders_default_limit_is_20(self):
        cust = uid("cmany")
        c = Client(self.server)
        try:
            for _ in range(23):
                self.place(customer_id=cust, client=c)
        finally:
            c.close()
        data, _ = self.caught_up("customer_orders", {"customer_id": cust})
        self.assertEqual(len(data["orders"]), 20)
        self.assertIsNotNone(data["next"])
        data2, _, _ = self.ok("customer_orders", {"customer_id": cust,
                                                  "after": data["next"]})
        self.assertEqual(len(data2["orders"]), 3)
        ids = [r["order_id"] for r in data["orders"] + data2["orders"]]
        self.assertEqual(len(set(ids)), 23)

    def test_customer_orders_unknown_customer_is_empty(self):
        data, meta, _ = self.ok("customer_orders", {"customer_id": uid("nobody")})
        self.assertEqual(data, {"orders": [], "next": None})

    def test_sales_dashboard_exact(self):
        # the test_customer_orders_default_limit test may have added orders:
        # take every order of the server into account through its stream
        data, meta = self.caught_up("sales_dashboard")
        self.assertEqual(meta["projection"], "sales_dashboard")
        self.assertEqual(set(data), {"by_status", "by_currency", "by_day"})
        status, cur, day = {}, {}, {}

        def add(d, k, orders, rev):
            o, r = d.get(k, (0, 0))
            d[k] = (o + orders, r + rev)

        extra = self.extra_orders(meta["position"])
        for oid in self.order_seq:
            m = self.orders[oid]
            evs = self.streams[oid]
            status[m["status"]] = status.get(m["status"], 0) + 1
            add(cur, m["currency"], 1, sum(a for a, _ in m["money"]))
            add(day, evs[0]["recorded_at"][:10], 1, 0)
            for amount, ver in m["money"]:
                add(day, evs[ver - 1]["recorded_at"][:10], 0, amount)
        for cur_, d in extra:  # placed, unpaid orders of other tests
            status["placed"] = status.get("placed", 0) + 1
            add(cur, cur_, 1, 0)
            add(day, d, 1, 0)
        got_status = {r["status"]: r["orders"] for r in data["by_status"] if r["orders"]}
        self.assertEqual(got_status, status)
        self.assertEqual({r["currency"]: (r["orders"], r["revenue_cents"])
                          for r in data["by_currency"]}, cur)
        self.assertEqual({r["day"]: (r["orders"], r["revenue_cents"])
                          for r in data["by_day"]}, day)
        # sanity of the model itself
        self.assertEqual(status["cancelled"], 3)
        self.assertEqual(status["shipped"], 2)
        self.assertEqual(sorted(cur), ["EUR", "USD"])

    def extra_orders(self, upto):
        """(currency, day) of OrderPlaced events not from the workload, up to
        position `upto` (other tests of this class place unpaid orders)."""
        events, _ = self.c.read_all()
        out = []
        for e in events:
            if e["position"] > upto:
                break
            if e["stream_id"][len("order-"):] in self.orders:
                continue
            self.assertEqual(e["type"], "OrderPlaced", "unexpected extra event %r" % (e,))
            out.append((e["data"]["currency"], e["recorded_at"][:10]))
        return out

    def test_strong_equals_eventual(self):
        head = self.c.head()
        for oid in self.order_seq:
            for name in ("order_summary", "payment_confirmation"):
                ev, evm = self.caught_up(name, {"order_id": oid}, head)
                st, stm, sh = self.ok(name, {"order_id": oid, "consistency": "strong"},
                                      consistency="strong")
                self.assertEqual(st, ev, "%s %s strong vs eventual" % (name, oid))
                self.assertFalse(stm["stale"])
                self.assertEqual(stm["stream_version"], self.streams[oid][-1]["version"])
                self.assertEqual(stm["projection"], evm["projection"])
                # If-None-Match with the strong ETag
                s2, h2, b2 = self.q(name, {"order_id": oid, "consistency": "strong"},
                                    headers={"If-None-Match": sh["etag"]})
                self.assertEqual(s2, 304, "strong If-None-Match -> %s %r" % (s2, b2))
                self.assertEqual(b2, "")


# =============================================================================
# Consistency controls, ETags, errors (shared server; each test uses its
# own orders)
# =============================================================================

class ConsistencyTest(QueryTestBase):

    def test_min_position_of_202_is_fresh(self):
        oid, b = self.place()
        for i in range(5):
            data, meta, _ = self.ok("order_summary", {"order_id": oid,
                                                      "min_position": b["position"],
                                                      "wait_ms": 20000})
            self.assertFalse(meta["stale"], meta)
            self.assertGreaterEqual(meta["position"], b["position"])
            self.assertEqual(data["version"], b["version"])
            self.assertEqual(meta["stream_version"], b["version"])
            if i == 0:
                self.assertEqual(data["payment_status"], "unpaid")
            b = self.pay(oid, 100)
            d2, m2, _ = self.ok("order_summary", {"order_id": oid,
                                                  "min_position": b["position"],
                                                  "wait_ms": 20000})
            self.assertFalse(m2["stale"], m2)
            self.assertEqual(d2["paid_cents"], 100 * (i + 1))
            self.assertEqual(d2["payment_status"], "partially_paid")
        # the same for the other asynchronous read models
        data, meta, _ = self.ok("customer_orders", {"customer_id": "c-1",
                                                    "min_position": b["position"],
                                                    "wait_ms": 20000})
        self.assertFalse(meta["stale"])
        self.assertIn(oid, [r["order_id"] for r in data["orders"]])
        data, meta, _ = self.ok("sales_dashboard", {"min_position": b["position"],
                                                    "wait_ms": 20000})
        self.assertFalse(meta["stale"])
        self.assertGreaterEqual(meta["position"], b["position"])

    def test_min_version_waits_for_the_stream(self):
        oid, b = self.place()
        b = self.pay(oid, 300)
        data, meta, _ = self.ok("order_summary", {"order_id": oid, "min_version": 2,
                                                  "wait_ms": 20000})
        self.assertFalse(meta["stale"])
        self.assertGreaterEqual(data["version"], 2)
        self.assertGreaterEqual(meta["stream_version"], 2)
        self.assertEqual(data["paid_cents"], 300)
        # a version already passed answers at once, fresh
        data, meta, _ = self.ok("order_summary", {"order_id": oid, "min_version": 1})
        self.assertFalse(meta["stale"])

    def test_far_future_position_times_out_stale(self):
        oid, b = self.place()
        self.caught_up("order_summary", {"order_id": oid}, b["position"])
        for name, params in (("order_summary", {"order_id": oid}),
                             ("payment_confirmation", {"order_id": oid}),
                             ("customer_orders", {"customer_id": "c-1"}),
                             ("sales_dashboard", {})):
            p = dict(params, min_position=self.c.head() + 1000000, wait_ms=200)
            t0 = time.monotonic()
            data, meta, h = self.ok(name, p)
            elapsed = time.monotonic() - t0
            self.assertTrue(meta["stale"], "%s: %r" % (name, meta))
            self.assertEqual(h.get("warning"), STALE_WARNING)
            self.assertIsInstance(meta.get("warning"), str, meta)
            self.assertTrue(meta["warning"])
            self.assertGreaterEqual(elapsed, 0.15, "answered before wait_ms elapsed")
            if name in ("order_summary", "payment_confirmation"):
                self.assertEqual(data["order_id"], oid)
        # min_version beyond the stream's end: the same
        data, meta, h = self.ok("order_summary", {"order_id": oid, "min_version": 50,
                                                  "wait_ms": 100})
        self.assertTrue(meta["stale"])
        self.assertEqual(h.get("warning"), STALE_WARNING)
        self.assertEqual(data["version"], 1)
        # wait_ms=0 with an unreachable position: at once, stale
        data, meta, h = self.ok("order_summary", {"order_id": oid, "wait_ms": 0,
                                                  "min_position": 10 ** 15})
        self.assertTrue(meta["stale"])
        self.assertIn("warning", meta)

    def test_min_version_on_a_stream_placed_during_the_wait(self):
        oid = uid("o")
        result = {}

        def waiter():
            c = Client(self.server)
            try:
                t0 = time.monotonic()
                result["resp"] = self.q("order_summary", {"order_id": oid, "min_version": 1,
                                                          "wait_ms": 25000}, client=c)
                result["elapsed"] = time.monotonic() - t0
            except BaseException as e:  # noqa: BLE001
                result["error"] = e
            finally:
                c.close()

        t = threading.Thread(target=waiter)
        t.start()
        time.sleep(0.4)
        self.assertTrue(t.is_alive(), "the waiter answered before the order existed: %r"
                        % (result,))
        c2 = Client(self.server)
        try:
            self.place(oid, client=c2, customer_id="c-waiter")
        finally:
            c2.close()
        t.join(60)
        self.assertFalse(t.is_alive())
        self.assertNotIn("error", result)
        st, h, b = result["resp"]
        self.assertEqual(st, 200, "%s %r" % (st, b))
        self.assertFalse(b["meta"]["stale"], b)
        self.assertNotIn("warning", h)
        self.assertEqual(b["data"]["order_id"], oid)
        self.assertEqual(b["data"]["customer_id"], "c-waiter")
        self.assertGreaterEqual(b["meta"]["stream_version"], 1)
        self.assertLess(result["elapsed"], 20.0, "it waited for the timeout")

    def test_unknown_order_is_404(self):
        oid = uid("ghost")
        for name in ("order_summary", "payment_confirmation"):
            for params in ({"order_id": oid}, {"order_id": oid, "consistency": "strong"},
                           {"order_id": oid, "min_version": 1, "wait_ms": 50}):
                st, h, b = self.q(name, params)
                self.assertProblem(st, h, b, 404)
                assert_type(self, b, "not-found")

    def test_strong_read_right_after_each_command(self):
        """Read-your-writes without waiting: a strong read straight after
        the 202 sees the command, whether or not the read model has."""
        for _ in range(3):
            oid, b = self.place()
            for name in ("order_summary", "payment_confirmation"):
                data, meta, h = self.ok(name, {"order_id": oid, "consistency": "strong"},
                                        consistency="strong")
                self.assertEqual(data["version"], 1)
                self.assertEqual(meta["stream_version"], 1)
                self.assertFalse(meta["stale"])
            b = self.pay(oid, 1000)
            data, meta, h = self.ok("order_summary", {"order_id": oid,
                                                      "consistency": "strong"},
                                    consistency="strong")
            self.assertEqual((data["status"], data["payment_status"], data["paid_cents"],
                              data["version"]), ("paid", "paid", 1000, 3))
            self.assertEqual(meta["stream_version"], 3)
            b = self.ship(oid)
            data, _, _ = self.ok("order_summary", {"order_id": oid,
                                                   "consistency": "strong"},
                                 consistency="strong")
            self.assertEqual((data["status"], data["version"]), ("shipped", 4))
            ev, _ = self.caught_up("order_summary", {"order_id": oid}, b["position"])
            self.assertEqual(ev, data)

    def test_strong_with_min_version(self):
        oid, b = self.place()
        placed_at = b["position"]
        data, meta, _ = self.ok("order_summary", {"order_id": oid, "consistency": "strong",
                                                  "min_version": 1},
                                consistency="strong")
        self.assertEqual(data["version"], 1)
        # the asynchronous read model may not have the order yet: wait for it
        st, h, b = self.q("order_summary", {"order_id": oid, "consistency": "eventual",
                                            "min_position": placed_at, "wait_ms": 10000})
        self.assertEqual(st, 200)
        self.assertEqual(b["meta"]["consistency"], "eventual")

    def test_strong_read_honours_min_version(self):
        """min_version / min_position are demands on every read: a strong
        read of a stream that has not reached them waits, and at the
        timeout is marked stale like any other."""
        oid, b = self.place()
        for name in ("order_summary", "payment_confirmation"):
            for extra in ({"min_version": 2}, {"min_position": self.c.head() + 100000}):
                params = dict({"order_id": oid, "consistency": "strong", "wait_ms": 200},
                              **extra)
                t0 = time.monotonic()
                data, meta, h = self.ok(name, params, consistency="strong")
                elapsed = time.monotonic() - t0
                self.assertEqual(data["version"], 1)
                self.assertTrue(meta["stale"], "%s %r: the demand is not met, yet %r"
                                % (name, extra, meta))
                self.assertIn("warning", meta)
                self.assertEqual(h.get("warning"), STALE_WARNING)
                self.assertGreaterEqual(elapsed, 0.15, "it did not wait")
        # the stream reaches the version during the wait: fresh, new data
        result = {}

        def waiter():
            c = Client(self.server)
            try:
                result["resp"] = self.q("order_summary", {
                    "order_id": oid, "consistency": "strong", "min_version": 2,
                    "wait_ms": 20000}, client=c)
            except BaseException as e:  # noqa: BLE001
                result["error"] = e
            finally:
                c.close()

        t = threading.Thread(target=waiter)
        t.start()
        time.sleep(0.3)
        self.pay(oid, 250)
        t.join(60)
        self.assertNotIn("error", result)
        st, h, body = result["resp"]
        self.assertEqual(st, 200, body)
        self.assertEqual(body["meta"]["consistency"], "strong")
        self.assertFalse(body["meta"]["stale"])
        self.assertEqual(body["data"]["paid_cents"], 250,
                         "strong read with min_version=2 answered version %r"
                         % body["data"]["version"])

    def test_payment_confirmation_current_under_concurrency(self):
        """8 clients, each paying its own order in small parts and reading
        the inline read model right after every 202 (group commit batches
        their commands together)."""
        oids = [self.place()[0] for _ in range(8)]
        failures = []

        def run(oid):
            c = Client(self.server)
            try:
                for k in range(1, 11):
                    st, _, b = c.command("RecordPayment", {
                        "order_id": oid, "payment_id": "p%d" % k, "amount_cents": 100})
                    if st != 202:
                        failures.append((oid, k, st, b))
                        return
                    st, h, q = c.get(qpath("payment_confirmation", {"order_id": oid}))
                    d = q.get("data", {}) if isinstance(q, dict) else {}
                    want_status = "paid" if k == 10 else "partially_paid"
                    if (st != 200 or d.get("paid_cents") != 100 * k
                            or d.get("last_payment_id") != "p%d" % k
                            or d.get("status") != want_status
                            or d.get("version") != b["version"]
                            or q["meta"]["position"] < b["position"]):
                        failures.append((oid, k, b, st, q))
            except BaseException as e:  # noqa: BLE001
                failures.append((oid, repr(e)))
            finally:
                c.close()

        ts = [threading.Thread(target=run, args=(o,)) for o in oids]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        self.assertEqual(failures, [])

    def test_etag_if_none_match(self):
        oid, b = self.place()
        self.caught_up("order_summary", {"order_id": oid}, b["position"])
        self.caught_up("sales_dashboard", {}, b["position"])
        for name, params in (("order_summary", {"order_id": oid}),
                             ("payment_confirmation", {"order_id": oid}),
                             ("customer_orders", {"customer_id": "c-1"}),
                             ("sales_dashboard", {})):
            data, meta, h = self.ok(name, params)
            etag = h["etag"]
            st, h2, body = self.q(name, params, headers={"If-None-Match": etag})
            if st == 200:
                # an event was appended meanwhile by nobody -- must be 304
                self.fail("%s If-None-Match %s -> 200 %r" % (name, etag, body))
            self.assertEqual(st, 304, "%s -> %s %r" % (name, st, body))
            self.assertEqual(body, "", "304 with a body")
            self.assertEqual(h2.get("etag"), etag)
            # another tag: a full answer
            st, _, body = self.q(name, params, headers={"If-None-Match": '"999999999"'})
            self.assertEqual(st, 200)
            self.assertEqual(body["data"], data)
        # after a new event the old tag no longer matches
        data, meta, h = self.ok("order_summary", {"order_id": oid})
        b = self.pay(oid, 10)
        self.caught_up("order_summary", {"order_id": oid}, b["position"])
        st, h2, body = self.q("order_summary", {"order_id": oid},
                              headers={"If-None-Match": h["etag"]})
        self.assertEqual(st, 200, "stale ETag still matched")
        self.assertEqual(body["data"]["paid_cents"], 10)
        self.assertNotEqual(h2["etag"], h["etag"])
        # the strong ETag does not match an eventual answer, nor the reverse
        st, hs, _ = self.q("order_summary", {"order_id": oid, "consistency": "strong"})
        self.assertEqual(st, 200)
        st, _, _ = self.q("order_summary", {"order_id": oid},
                          headers={"If-None-Match": hs["etag"]})
        self.assertEqual(st, 200)

    def test_wait_for_on_commands(self):
        oid, b = self.place()
        for proj in ("order_summaries", "sales_dashboard", "payment_confirmation"):
            b = self.pay(oid, 10, path_suffix="?wait_for=%s&wait_ms=20000" % proj)
            self.assertEqual(b.get("projection"), proj, b)
            self.assertIs(b.get("stale"), False, b)
            self.assertIn("command_id", b)
            self.assertEqual([e["type"] for e in b["events"]], ["PaymentReceived"])
        # order_summaries: readable at once, without any min_*
        b = self.pay(oid, 10, path_suffix="?wait_for=order_summaries&wait_ms=20000")
        data, meta, _ = self.ok("order_summary", {"order_id": oid})
        self.assertGreaterEqual(meta["position"], b["position"])
        self.assertEqual(data["paid_cents"], 40)
        self.assertEqual(data["version"], b["version"])
        b = self.pay(oid, 10, path_suffix="?wait_for=sales_dashboard")  # default wait
        self.assertIs(b.get("stale"), False, b)
        _, meta, _ = self.ok("sales_dashboard")
        self.assertGreaterEqual(meta["position"], b["position"])
        # a PlaceOrder with wait_for
        st, h, b = self.c.req("POST", "/commands/PlaceOrder?wait_for=order_summaries"
                              "&wait_ms=20000", body=order_body())
        self.assertEqual(st, 202, b)
        self.assertIs(b.get("stale"), False)
        self.assertEqual(h.get("etag"), '"1"')
        self.assertNotIn("warning", h)

    def test_wait_for_errors(self):
        oid, _ = self.place()
        before = self.c.head()
        body = {"order_id": oid, "payment_id": uid("p"), "amount_cents": 5}
        st, h, b = self.c.req("POST", "/commands/RecordPayment?wait_for=nope", body=body)
        self.assertProblem(st, h, b, 404)
        assert_type(self, b, "not-found")
        self.assertEqual(self.c.head(), before, "404 wait_for appended events")
        for qs in ("wait_for=order_summaries&wait_ms=30001",
                   "wait_for=order_summaries&wait_ms=-1",
                   "wait_for=order_summaries&wait_ms=abc",
                   "wait_for=order_summaries&wait_for=order_summaries",
                   "wait_for=order_summaries&colour=red"):
            st, h, b = self.c.req("POST", "/commands/RecordPayment?" + qs, body=body)
            self.assertProblem(st, h, b, 400)
            assert_type(self, b, "bad-parameter")
            self.assertEqual(self.c.head(), before, "%s appended events" % qs)

    def test_bad_parameters(self):
        oid, _ = self.place()
        o = "order_id=" + oid
        cases = [
            ("/queries/order_summary", "order_id"),                      # missing
            ("/queries/order_summary?order_id=", "order_id"),
            ("/queries/order_summary?order_id=a%20b", "order_id"),
            ("/queries/order_summary?order_id=a.b", "order_id"),
            ("/queries/order_summary?order_id=" + "x" * 65, "order_id"),
            ("/queries/payment_confirmation", "order_id"),
            ("/queries/customer_orders", "customer_id"),
            ("/queries/customer_orders?customer_id=c-1&limit=0", "limit"),
            ("/queries/customer_orders?customer_id=c-1&limit=101", "limit"),
            ("/queries/customer_orders?customer_id=c-1&limit=abc", "limit"),
            ("/queries/customer_orders?customer_id=c-1&limit=", "limit"),
            ("/queries/customer_orders?customer_id=c-1&limit=1.5", "limit"),
            ("/queries/customer_orders?customer_id=c-1&after=0", "after"),
            ("/queries/customer_orders?customer_id=c-1&after=-5", "after"),
            ("/queries/customer_orders?customer_id=c-1&after=x1", "after"),
            ("/queries/customer_orders?customer_id=c-1&after=99999999999999999999", "after"),
        ]
        for path, field in cases:
            with self.subTest(path=path):
                self.bad(path, field, slug="validation-failed")
        # strong and min_version only for keyed queries
        for path in ("/queries/sales_dashboard?consistency=strong",
                     "/queries/customer_orders?customer_id=c-1&consistency=strong",
                     "/queries/sales_dashboard?min_version=1",
                     "/queries/customer_orders?customer_id=c-1&min_version=1"):
            with self.subTest(path=path):
                self.bad(path)
        # unknown and repeated parameters
        for path in ("/queries/order_summary?%s&colour=red" % o,
                     "/queries/order_summary?%s&%s" % (o, o),
                     "/queries/order_summary?%s&order_id=other" % o,
                     "/queries/order_summary?%s&wait_ms=1&wait_ms=1" % o,
                     "/queries/order_summary?%s&min_position=1&min_position=2" % o,
                     "/queries/order_summary?%s&consistency=strong&consistency=strong" % o,
                     "/queries/sales_dashboard?order_id=x",
                     "/queries/sales_dashboard?limit=5",
                     "/queries/customer_orders?customer_id=c-1&customer_id=c-2",
                     "/queries/customer_orders?customer_id=c-1&limit=5&limit=5",
                     "/queries/payment_confirmation?%s&limit=1" % o):
            with self.subTest(path=path):
                self.bad(path)
        # the edges of the ranges are fine
        for path in ("/queries/customer_orders?customer_id=c-1&limit=1",
                     "/queries/customer_orders?customer_id=c-1&limit=100",
                     "/queries/customer_orders?customer_id=c-1&after=1",
                     "/queries/customer_orders?customer_id=c-1&after=9223372036854775807",
                     "/queries/order_summary?%s&wait_ms=0" % o,
                     "/queries/order_summary?%s&wait_ms=30000" % o,
                     "/queries/order_summary?%s&min_position=0" % o,
                     "/queries/order_summary?%s&consistency=eventual" % o,
                     "/queries/order_summary?order_id=" + "y" * 64,
                     "/queries/sales_dashboard?wait_ms=30000"):
            with self.subTest(path=path):
                st, h, b = self.c.get(path)
                self.assertIn(st, (200, 404) if "y" * 64 in path else (200,),
                              "%s -> %s %r" % (path, st, b))

    def test_bad_consistency_parameter_values(self):
        """The consistency parameters' bad values are 400 problems with
        errors [{field, message}] like any other parameter's."""
        oid, _ = self.place()
        o = "order_id=" + oid
        cases = [
            ("/queries/order_summary?%s&min_position=-1" % o, "min_position"),
            ("/queries/order_summary?%s&min_position=x" % o, "min_position"),
            ("/queries/order_summary?%s&min_position=" % o, "min_position"),
            ("/queries/order_summary?%s&min_version=-1" % o, "min_version"),
            ("/queries/order_summary?%s&min_version=v2" % o, "min_version"),
            ("/queries/order_summary?%s&wait_ms=30001" % o, "wait_ms"),
            ("/queries/order_summary?%s&wait_ms=-1" % o, "wait_ms"),
            ("/queries/order_summary?%s&wait_ms=1s" % o, "wait_ms"),
            ("/queries/order_summary?%s&consistency=linearizable" % o, "consistency"),
            ("/queries/order_summary?%s&consistency=STRONG" % o, "consistency"),
            ("/queries/sales_dashboard?wait_ms=100000", "wait_ms"),
            ("/queries/sales_dashboard?min_position=abc", "min_position"),
        ]
        for path, field in cases:
            with self.subTest(path=path):
                self.bad(path, field)

    def test_unknown_query_and_method(self):
        for path in ("/queries/nope", "/queries/order_summaries", "/queries/ORDER_SUMMARY",
                     "/queries/nope?x=1"):
            self.bad(path, status=404, slug="not-found")
        for method in ("POST", "PUT", "DELETE", "PATCH"):
            for name in ("order_summary", "sales_dashboard"):
                h, _ = self.bad("/queries/%s?order_id=x" % name if name == "order_summary"
                                else "/queries/" + name, status=405, method=method,
                                slug="method-not-allowed")
                self.assertIn("GET", h.get("allow", ""), "Allow header %r" % (h,))
        # nothing was appended by any of it; the server is fine
        self.assertHealthy()

    def test_lag_fields_when_caught_up(self):
        oid, b = self.place()
        data, meta = self.caught_up("order_summary", {"order_id": oid}, b["position"])
        # with nothing else written, a plain read is fresh
        data, meta, h = self.ok("order_summary", {"order_id": oid})
        if self.c.head() == meta["position"]:
            self.assertEqual(meta["lag_events"], 0)
            self.assertFalse(meta["stale"])
        else:
            self.assertEqual(meta["lag_events"], self.c.head() - meta["position"])


class ManyWaitersTest(QueryTestBase):
    """300 requests waiting at once (raw sockets, no thread each), woken by
    one command."""

    N = 300

    def test_many_concurrent_waiters(self):
        oid, b = self.place(customer_id="c-many")
        self.caught_up("order_summary", {"order_id": oid}, b["position"])
        target = self.c.head() + 1
        kinds = [
            qpath("order_summary", {"order_id": oid, "min_position": target,
                                    "wait_ms": 25000}),
            qpath("customer_orders", {"customer_id": "c-many", "min_position": target,
                                      "wait_ms": 25000}),
            qpath("sales_dashboard", {"min_position": target, "wait_ms": 25000}),
            qpath("payment_confirmation", {"order_id": oid, "min_position": target,
                                           "wait_ms": 25000}),
        ]
        socks = []
        try:
            for i in range(self.N):
                s = socket.create_connection(("127.0.0.1", self.server.port), timeout=60)
                s.sendall(("GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                           % kinds[i % len(kinds)]).encode())
                socks.append(s)
            time.sleep(0.5)
            r, _, _ = select.select(socks, [], [], 0)
            self.assertEqual(len(r), 0, "%d waiters answered before the position existed"
                             % len(r))
            t0 = time.monotonic()
            oid2, b2 = self.place(customer_id="c-many")
            self.assertEqual(b2["position"], target)
            answers = [self._read_all(s) for s in socks]
            elapsed = time.monotonic() - t0
        finally:
            for s in socks:
                s.close()
        for i, (st, hdrs, body) in enumerate(answers):
            self.assertEqual(st, 200, "waiter %d: %s %r" % (i, st, body[:300]))
            doc = json.loads(body.decode())
            self.assertFalse(doc["meta"]["stale"], "waiter %d: %r" % (i, doc["meta"]))
            self.assertGreaterEqual(doc["meta"]["position"], target)
            self.assertNotIn("warning", hdrs)
            if i % 4 == 1:
                self.assertIn(oid2, [o["order_id"] for o in doc["data"]["orders"]])
        self.assertLess(elapsed, 20.0, "the waiters were answered by their timeout")
        self.assertHealthy()

    @staticmethod
    def _read_all(s):
        data = b""
        while True:
            part = s.recv(65536)
            if not part:
                break
            data += part
        return cqtest._parse_raw_response(data)


if __name__ == "__main__":
    cqtest.main()
