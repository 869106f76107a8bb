"""Black-box tests of POST /commands/{type}: every row of API.md's command
table, If-Match and Idempotency-Key.

    python3 tests/blackbox/test_commands.py /path/to/cqrsd
"""
import json
import sys
import threading
import time

sys.dont_write_bytecode = True

import cqtest  # noqa: E402
from problems import assert_type  # noqa: E402
from cqtest import ServerTestCase, UUID7_RE, order_body, uid  # noqa: E402


class CommandTestBase(ServerTestCase):

    def accepted(self, resp, stream_id=None, types=None):
        """Assert a 202 command answer and return its body."""
        st, h, b = resp
        self.assertEqual(st, 202, "want 202, got %s %r" % (st, b))
        self.assertTrue(h.get("content-type", "").startswith("application/json"),
                        "Content-Type %r" % h.get("content-type"))
        self.assertIsInstance(b, dict, "body %r" % (b,))
        for k in ("command_id", "stream_id", "version", "position", "events"):
            self.assertIn(k, b, "202 body lacks %r: %r" % (k, b))
        self.assertIsInstance(b["command_id"], str)
        self.assertRegex(b["command_id"], UUID7_RE, "command_id is not a UUIDv7")
        self.assertIs(type(b["version"]), int)
        self.assertIs(type(b["position"]), int)
        self.assertIsInstance(b["events"], list)
        if stream_id is not None:
            self.assertEqual(b["stream_id"], stream_id)
        if types is not None:
            self.assertEqual([e.get("type") for e in b["events"]], types, "events %r" % (b,))
        # events are contiguous and end at the answer's version/position
        evs = b["events"]
        for i, e in enumerate(evs):
            self.assertTrue({"type", "version", "position"} <= set(e), "event %r" % (e,))
            self.assertIs(type(e["version"]), int)
            self.assertIs(type(e["position"]), int)
            if i:
                self.assertEqual(e["version"], evs[i - 1]["version"] + 1, "versions %r" % (b,))
                self.assertEqual(e["position"], evs[i - 1]["position"] + 1, "positions %r" % (b,))
        if evs:
            self.assertEqual(b["version"], evs[-1]["version"], "version %r" % (b,))
            self.assertEqual(b["position"], evs[-1]["position"], "position %r" % (b,))
        self.assertEqual(h.get("etag"), '"%d"' % b["version"], "ETag header (body %r)" % (b,))
        return b

    def refused(self, resp, status, slug):
        """A problem+json answer of this status whose type is
        urn:cqrsd:problem:<slug> (docs/api.md, "Errors")."""
        st, h, b = resp
        self.assertProblem(st, h, b, status)
        assert_type(self, b, slug)
        return b

    def place(self, oid=None, **kw):
        body = order_body(oid, **kw)
        b = self.accepted(self.c.command("PlaceOrder", body),
                          "order-" + body["order_id"], ["OrderPlaced"])
        return body["order_id"], b

    def pay(self, oid, amount, pid=None, **kw):
        return self.c.command("RecordPayment", {"order_id": oid,
                                                "payment_id": pid or uid("p"),
                                                "amount_cents": amount}, **kw)

    def ship(self, oid, **kw):
        return self.c.command("ShipOrder", {"order_id": oid, "carrier": "DHL",
                                            "tracking_number": "T-123"}, **kw)

    def cancel(self, oid, reason="changed my mind", **kw):
        return self.c.command("CancelOrder", {"order_id": oid, "reason": reason}, **kw)

    def stream(self, oid):
        st, _, b = self.c.get("/streams/order-%s?limit=1000" % oid)
        self.assertEqual(st, 200, "GET /streams/order-%s -> %s %r" % (oid, st, b))
        return b

    def assertNothingAppended(self, before):
        self.assertEqual(self.c.head(), before, "the refused request appended events")


class PlaceOrderTest(CommandTestBase):

    def test_place_order_ok(self):
        before = self.c.head()
        body = order_body()
        oid = body["order_id"]
        b = self.accepted(self.c.command("PlaceOrder", body), "order-" + oid,
                          ["OrderPlaced"])
        self.assertEqual(b["version"], 1)
        self.assertEqual(b["position"], before + 1, "position is not the next global position")
        self.assertEqual(b["events"], [{"type": "OrderPlaced", "version": 1,
                                        "position": before + 1}])
        self.assertEqual(self.c.head(), before + 1)
        s = self.stream(oid)
        self.assertEqual(s["version"], 1)
        self.assertEqual(len(s["events"]), 1)
        ev = s["events"][0]
        self.assertEqual(ev["type"], "OrderPlaced")
        self.assertEqual(ev["position"], before + 1)
        d = ev["data"]
        self.assertEqual(d["order_id"], oid)
        self.assertEqual(d["customer_id"], body["customer_id"])
        self.assertEqual(d["currency"], "EUR")
        self.assertEqual(d["items"], body["items"])
        self.assertEqual(d["total_cents"], 1000)
        self.assertEqual(ev["metadata"]["command_id"], b["command_id"])

    def test_command_ids_differ(self):
        _, b1 = self.place()
        _, b2 = self.place()
        self.assertNotEqual(b1["command_id"], b2["command_id"])
        self.assertEqual(b2["position"], b1["position"] + 1)

    def test_place_order_twice_conflicts(self):
        oid, _ = self.place()
        before = self.c.head()
        self.refused(self.c.command("PlaceOrder", order_body(oid)), 409, "stream-exists")
        # also with different contents
        self.refused(self.c.command("PlaceOrder", order_body(oid, customer_id="c-2")), 409,
                     "stream-exists")
        self.assertNothingAppended(before)
        self.assertEqual(len(self.stream(oid)["events"]), 1)

    def test_unknown_command_type(self):
        before = self.c.head()
        self.refused(self.c.command("FlyToTheMoon", order_body()), 404, "not-found")
        self.refused(self.c.command("placeorder", order_body()), 404, "not-found")
        self.assertNothingAppended(before)

    def test_max_sized_ids_accepted(self):
        oid = "A" * 64
        body = order_body(oid, customer_id="c_" + "9" * 62)
        self.accepted(self.c.command("PlaceOrder", body), "order-" + oid, ["OrderPlaced"])

    def test_charset_parameter_accepted(self):
        body = order_body()
        self.accepted(self.c.command("PlaceOrder", body,
                                     headers={"Content-Type": "application/json; charset=utf-8"}),
                      "order-" + body["order_id"], ["OrderPlaced"])


class PaymentTest(CommandTestBase):

    def test_partial_then_final_payment(self):
        oid, placed = self.place()
        b1 = self.accepted(self.pay(oid, 400), "order-" + oid, ["PaymentReceived"])
        self.assertEqual(b1["version"], 2)
        self.assertEqual(b1["events"][0]["position"], placed["position"] + 1)
        b2 = self.accepted(self.pay(oid, 600), "order-" + oid,
                           ["PaymentReceived", "OrderPaid"])
        self.assertEqual([e["version"] for e in b2["events"]], [3, 4])
        p = b2["events"][0]["position"]
        self.assertEqual(p, b1["position"] + 1)
        self.assertEqual(b2["events"][1]["position"], p + 1)
        self.assertEqual(b2["version"], 4)
        self.assertEqual(b2["position"], p + 1)
        s = self.stream(oid)
        self.assertEqual([e["type"] for e in s["events"]],
                         ["OrderPlaced", "PaymentReceived", "PaymentReceived", "OrderPaid"])
        self.assertEqual(s["events"][1]["data"]["amount_cents"], 400)
        self.assertEqual(s["events"][1]["data"]["paid_cents"], 400)
        self.assertEqual(s["events"][2]["data"]["amount_cents"], 600)
        self.assertEqual(s["events"][2]["data"]["paid_cents"], 1000)
        # both events of one command carry its command id
        self.assertEqual(s["events"][2]["metadata"]["command_id"], b2["command_id"])
        self.assertEqual(s["events"][3]["metadata"]["command_id"], b2["command_id"])

    def test_exact_payment_in_one_go(self):
        oid, _ = self.place()
        b = self.accepted(self.pay(oid, 1000), "order-" + oid, ["PaymentReceived", "OrderPaid"])
        self.assertEqual(b["version"], 3)

    def test_repeated_payment_id_emits_nothing(self):
        oid, _ = self.place()
        pid = uid("p")
        b1 = self.accepted(self.pay(oid, 100, pid), "order-" + oid, ["PaymentReceived"])
        before = self.c.head()
        b2 = self.accepted(self.pay(oid, 100, pid), "order-" + oid, [])
        self.assertEqual(b2["version"], b1["version"])
        self.assertEqual(b2["position"], b1["position"])
        self.assertNotEqual(b2["command_id"], b1["command_id"])
        self.assertNothingAppended(before)
        # the current position of the stream, not of the store
        self.place()
        b3 = self.accepted(self.pay(oid, 100, pid), "order-" + oid, [])
        self.assertEqual((b3["version"], b3["position"]), (b1["version"], b1["position"]))
        self.assertEqual(len(self.stream(oid)["events"]), 2)

    def test_overpayment_refused(self):
        oid, _ = self.place()
        before = self.c.head()
        self.refused(self.pay(oid, 1001), 422, "refused")
        self.assertNothingAppended(before)
        self.accepted(self.pay(oid, 600), "order-" + oid, ["PaymentReceived"])
        before = self.c.head()
        self.refused(self.pay(oid, 401), 422, "refused")
        self.assertNothingAppended(before)
        self.accepted(self.pay(oid, 400), "order-" + oid, ["PaymentReceived", "OrderPaid"])
        before = self.c.head()
        self.refused(self.pay(oid, 1), 422, "refused")  # nothing is due any more
        self.assertNothingAppended(before)

    def test_payment_on_cancelled_refused(self):
        oid, _ = self.place()
        self.accepted(self.cancel(oid), "order-" + oid, ["OrderCancelled"])
        before = self.c.head()
        self.refused(self.pay(oid, 100), 422, "refused")
        self.assertNothingAppended(before)

    def test_payment_unknown_order(self):
        before = self.c.head()
        self.refused(self.pay(uid("nope"), 100), 404, "not-found")
        self.assertNothingAppended(before)


class ShipCancelTest(CommandTestBase):

    def test_ship_unpaid_refused(self):
        oid, _ = self.place()
        before = self.c.head()
        self.refused(self.ship(oid), 422, "refused")
        self.assertNothingAppended(before)
        self.accepted(self.pay(oid, 999), "order-" + oid, ["PaymentReceived"])
        before = self.c.head()
        self.refused(self.ship(oid), 422, "refused")  # partially paid
        self.assertNothingAppended(before)

    def test_ship_paid_then_again(self):
        oid, _ = self.place()
        self.accepted(self.pay(oid, 1000), "order-" + oid, ["PaymentReceived", "OrderPaid"])
        b = self.accepted(self.ship(oid), "order-" + oid, ["OrderShipped"])
        self.assertEqual(b["version"], 4)
        before = self.c.head()
        self.refused(self.ship(oid), 422, "refused")
        self.assertNothingAppended(before)
        ev = self.stream(oid)["events"][-1]
        self.assertEqual(ev["type"], "OrderShipped")

    def test_cancel_shipped_refused(self):
        oid, _ = self.place()
        self.accepted(self.pay(oid, 1000), "order-" + oid, ["PaymentReceived", "OrderPaid"])
        self.accepted(self.ship(oid), "order-" + oid, ["OrderShipped"])
        before = self.c.head()
        self.refused(self.cancel(oid), 422, "refused")
        self.assertNothingAppended(before)

    def test_ship_cancelled_refused(self):
        oid, _ = self.place()
        self.accepted(self.pay(oid, 1000), "order-" + oid, ["PaymentReceived", "OrderPaid"])
        self.accepted(self.cancel(oid), "order-" + oid, ["OrderCancelled"])
        before = self.c.head()
        self.refused(self.ship(oid), 422, "refused")
        self.assertNothingAppended(before)

    def test_cancel_twice_refused(self):
        oid, _ = self.place()
        b = self.accepted(self.cancel(oid, "oops"), "order-" + oid, ["OrderCancelled"])
        self.assertEqual(b["version"], 2)
        before = self.c.head()
        self.refused(self.cancel(oid), 422, "refused")
        self.assertNothingAppended(before)
        d = self.stream(oid)["events"][-1]["data"]
        self.assertEqual(d["reason"], "oops")
        self.assertEqual(d["refund_cents"], 0)

    def test_cancel_paid_refunds(self):
        oid, _ = self.place()
        self.accepted(self.pay(oid, 1000), "order-" + oid, ["PaymentReceived", "OrderPaid"])
        self.accepted(self.cancel(oid, "too late"), "order-" + oid, ["OrderCancelled"])
        ev = self.stream(oid)["events"][-1]
        self.assertEqual(ev["type"], "OrderCancelled")
        self.assertEqual(ev["data"]["refund_cents"], 1000)
        self.assertEqual(ev["data"]["reason"], "too late")

    def test_cancel_partially_paid_refunds_paid(self):
        oid, _ = self.place()
        self.accepted(self.pay(oid, 250), "order-" + oid, ["PaymentReceived"])
        self.accepted(self.pay(oid, 100), "order-" + oid, ["PaymentReceived"])
        self.accepted(self.cancel(oid), "order-" + oid, ["OrderCancelled"])
        self.assertEqual(self.stream(oid)["events"][-1]["data"]["refund_cents"], 350)

    def test_commands_on_unknown_order(self):
        before = self.c.head()
        oid = uid("ghost")
        self.refused(self.pay(oid, 100), 404, "not-found")
        self.refused(self.ship(oid), 404, "not-found")
        self.refused(self.cancel(oid), 404, "not-found")
        self.assertNothingAppended(before)
        st, _, _ = self.c.get("/streams/order-" + oid)
        self.assertEqual(st, 404, "a refused command created the stream")


class IfMatchTest(CommandTestBase):

    def test_if_match_current_ok(self):
        oid, _ = self.place()
        b = self.accepted(self.pay(oid, 100, if_match='"1"'), "order-" + oid, ["PaymentReceived"])
        self.assertEqual(b["version"], 2)
        b = self.accepted(self.cancel(oid, if_match='"2"'), "order-" + oid, ["OrderCancelled"])
        self.assertEqual(b["version"], 3)

    def test_if_match_wrong_version(self):
        oid, _ = self.place()
        self.accepted(self.pay(oid, 100), "order-" + oid, ["PaymentReceived"])
        before = self.c.head()
        self.refused(self.pay(oid, 100, if_match='"1"'), 412, "precondition-failed")   # stale
        self.refused(self.pay(oid, 100, if_match='"3"'), 412, "precondition-failed")   # future
        self.refused(self.cancel(oid, if_match='"7"'), 412, "precondition-failed")
        self.assertNothingAppended(before)
        self.assertEqual(self.stream(oid)["version"], 2)

    def test_if_match_on_refused_command(self):
        # The precondition is checked before the decider runs (docs/api.md:
        # "the command runs only if the stream is at this version"): a
        # command the rules would refuse, sent with a stale If-Match, is 412
        # precondition-failed, never 422; with the current version it is
        # the rules' 422.
        oid, _ = self.place()
        before = self.c.head()
        b = self.refused(self.ship(oid, if_match='"5"'), 412, "precondition-failed")
        self.assertIn("5", b["detail"])
        self.refused(self.ship(oid, if_match='"1"'), 422, "refused")
        self.accepted(self.pay(oid, 1000), "order-" + oid, ["PaymentReceived", "OrderPaid"])
        self.accepted(self.cancel(oid), "order-" + oid, ["OrderCancelled"])
        before = self.c.head()
        self.refused(self.cancel(oid, if_match='"2"'), 412, "precondition-failed")
        self.refused(self.cancel(oid, if_match='"4"'), 422, "refused")
        self.assertNothingAppended(before)


class IdempotencyTest(CommandTestBase):

    def test_same_key_same_body_replays(self):
        key = uid("key")
        body = order_body()
        st1, h1, b1 = self.c.command("PlaceOrder", body, key=key)
        b1 = self.accepted((st1, h1, b1), "order-" + body["order_id"], ["OrderPlaced"])
        self.assertNotEqual(h1.get("idempotency-replayed", "").lower(), "true",
                            "first answer claims to be a replay")
        before = self.c.head()
        for _ in range(2):
            st2, h2, b2 = self.c.command("PlaceOrder", body, key=key)
            self.assertEqual(st2, 202, "replay -> %s %r" % (st2, b2))
            self.assertEqual(b2, b1, "replayed body differs")
            self.assertEqual(h2.get("idempotency-replayed", "").lower(), "true",
                             "no Idempotency-Replayed: true header (headers %r)" % (h2,))
        self.assertNothingAppended(before)
        self.assertEqual(len(self.stream(body["order_id"])["events"]), 1)

    def test_same_key_for_payment_replays(self):
        oid, _ = self.place()
        key = uid("key")
        pid = uid("p")
        b1 = self.accepted(self.pay(oid, 100, pid, key=key), "order-" + oid, ["PaymentReceived"])
        before = self.c.head()
        st, h, b2 = self.pay(oid, 100, pid, key=key)
        self.assertEqual(st, 202)
        self.assertEqual(h.get("idempotency-replayed", "").lower(), "true")
        self.assertEqual(b2, b1, "a replay must answer the original body, not a no-op")
        self.assertNothingAppended(before)

    def test_same_key_different_body(self):
        key = uid("key")
        body = order_body()
        self.accepted(self.c.command("PlaceOrder", body, key=key),
                      "order-" + body["order_id"], ["OrderPlaced"])
        before = self.c.head()
        other = order_body()
        self.refused(self.c.command("PlaceOrder", other, key=key), 422,
                     "idempotency-key-reused")
        changed = dict(body, customer_id="c-other")
        self.refused(self.c.command("PlaceOrder", changed, key=key), 422,
                     "idempotency-key-reused")
        # same key on another command type
        self.refused(self.c.command("CancelOrder", {"order_id": body["order_id"],
                                                    "reason": "x"}, key=key), 422,
                     "idempotency-key-reused")
        # same key and body with another If-Match
        self.refused(self.c.command("PlaceOrder", body, key=key, if_match='"1"'), 422,
                     "idempotency-key-reused")
        self.assertNothingAppended(before)
        st, _, _ = self.c.get("/streams/order-" + other["order_id"])
        self.assertEqual(st, 404)

    def test_refused_command_replays_422(self):
        oid, _ = self.place()
        key = uid("key")
        pid = uid("p")
        b1 = self.refused(self.pay(oid, 5000, pid, key=key), 422, "refused")
        before = self.c.head()
        st2, h2, b2 = self.pay(oid, 5000, pid, key=key)
        self.refused((st2, h2, b2), 422, "refused")
        self.assertEqual(b2, b1)
        self.assertEqual(h2.get("idempotency-replayed", "").lower(), "true",
                         "refused command not replayed (headers %r)" % (h2,))
        self.assertNothingAppended(before)

    def test_refused_command_is_not_run_again(self):
        # ShipOrder is refused while unpaid; once paid, the same key and body
        # must still answer the stored 422, not ship the order.
        oid, _ = self.place()
        key = uid("key")
        st1, h1, b1 = self.ship(oid, key=key)
        self.refused((st1, h1, b1), 422, "refused")
        self.accepted(self.pay(oid, 1000), "order-" + oid, ["PaymentReceived", "OrderPaid"])
        before = self.c.head()
        st2, h2, b2 = self.ship(oid, key=key)
        self.assertEqual((st2, b2), (st1, b1),
                         "the key's stored 422 was not replayed: the command ran again")
        self.assertEqual(h2.get("idempotency-replayed", "").lower(), "true")
        self.assertNothingAppended(before)

    def test_replay_survives_restart(self):
        key = uid("key")
        body = order_body()
        b1 = self.accepted(self.c.command("PlaceOrder", body, key=key),
                           "order-" + body["order_id"], ["OrderPlaced"])
        oid, _ = self.place()
        key2 = uid("key")
        st, h, r1 = self.pay(oid, 9999, "p-x", key=key2)
        self.refused((st, h, r1), 422, "refused")
        before = self.c.head()
        self.c.close()
        self.server.restart()
        self.assertEqual(self.c.head(), before, "head moved across a clean restart")
        st2, h2, b2 = self.c.command("PlaceOrder", body, key=key)
        self.assertEqual(st2, 202, "replay after restart -> %s %r" % (st2, b2))
        self.assertEqual(b2, b1)
        self.assertEqual(h2.get("idempotency-replayed", "").lower(), "true")
        st3, h3, r2 = self.pay(oid, 9999, "p-x", key=key2)
        self.refused((st3, h3, r2), 422, "refused")
        self.assertEqual(r2, r1)
        self.assertEqual(h3.get("idempotency-replayed", "").lower(), "true")
        self.assertNothingAppended(before)

    def test_max_length_key_accepted(self):
        key = ("K%s-" % cqtest.RUN + "x" * 255)[:255]
        body = order_body()
        self.accepted(self.c.command("PlaceOrder", body, key=key),
                      "order-" + body["order_id"], ["OrderPlaced"])
        st, h, _ = self.c.command("PlaceOrder", body, key=key)
        self.assertEqual(st, 202)
        self.assertEqual(h.get("idempotency-replayed", "").lower(), "true")


class IdempotencyExpiryTest(CommandTestBase):
    """--idempotency-ttl: a key is remembered that long, then forgotten,
    and the same key runs the command again (its own server, with a short
    TTL)."""
    TTL = 4
    server_args = ("--idempotency-ttl", str(TTL))

    def wait_expired(self, since):
        """Sleep until TTL seconds (and a margin) after `since`."""
        left = since + self.TTL + 0.5 - time.monotonic()
        if left > 0:
            time.sleep(left)

    def replayed(self, h):
        return h.get("idempotency-replayed", "").lower() == "true"

    def test_same_key_runs_again_after_expiry(self):
        oid, _ = self.place()
        key = uid("key")
        t0 = time.monotonic()
        b1 = self.accepted(self.cancel(oid, "first", key=key), "order-" + oid,
                           ["OrderCancelled"])
        st, h, b = self.cancel(oid, "first", key=key)
        self.assertLess(time.monotonic() - t0, self.TTL,
                        "too slow to see the key before it expires")
        self.assertEqual((st, b), (202, b1))
        self.assertTrue(self.replayed(h), h)
        self.wait_expired(t0)
        # forgotten: the same request runs again, and the order is already
        # cancelled
        before = self.c.head()
        st, h, b = self.cancel(oid, "first", key=key)
        self.refused((st, h, b), 422, "refused")
        self.assertFalse(self.replayed(h), "an expired key was replayed: %r" % (h,))
        self.assertIn("cancelled", b["detail"])
        self.assertNothingAppended(before)
        # and that answer is the key's now
        st, h, b2 = self.cancel(oid, "first", key=key)
        self.assertEqual((st, b2), (422, b))
        self.assertTrue(self.replayed(h), h)

    def test_expired_key_takes_another_request(self):
        oid, _ = self.place()
        key = uid("key")
        t0 = time.monotonic()
        self.accepted(self.pay(oid, 100, "p-1", key=key), "order-" + oid,
                      ["PaymentReceived"])
        st, h, b = self.pay(oid, 200, "p-2", key=key)
        self.assertLess(time.monotonic() - t0, self.TTL,
                        "too slow to see the key before it expires")
        self.refused((st, h, b), 422, "idempotency-key-reused")
        self.wait_expired(t0)
        b = self.accepted(self.pay(oid, 200, "p-2", key=key), "order-" + oid,
                          ["PaymentReceived"])
        self.assertEqual(b["version"], 3)
        self.assertEqual([e["data"]["amount_cents"] for e in self.stream(oid)["events"]
                          if e["type"] == "PaymentReceived"], [100, 200])

    def test_expiry_holds_across_a_restart(self):
        oid, _ = self.place()
        key = uid("key")
        t0 = time.monotonic()
        self.accepted(self.pay(oid, 100, "p-r", key=key), "order-" + oid,
                      ["PaymentReceived"])
        self.c.close()
        self.server.restart()
        self.wait_expired(t0)
        b = self.accepted(self.pay(oid, 100, "p-r", key=key), "order-" + oid, [])
        self.assertEqual(b["version"], 2, "the repeated payment id emits nothing")


class ConcurrencyTest(CommandTestBase):
    """Commands racing on one order from many connections."""

    def race(self, n, fn):
        """Run fn(i, client) in n threads at once; returns the results."""
        out = [None] * n
        barrier = threading.Barrier(n)

        def run(i):
            cl = cqtest.Client(self.server)
            try:
                barrier.wait(30)
                out[i] = fn(i, cl)
            except Exception as e:  # noqa: BLE001
                out[i] = e
            finally:
                cl.close()

        threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        for r in out:
            self.assertNotIsInstance(r, Exception, "a racing request failed: %r" % (r,))
        return out

    def test_racing_place_order(self):
        for _ in range(3):
            body = order_body()
            before = self.c.head()
            res = self.race(8, lambda i, cl: cl.command("PlaceOrder", body))
            statuses = sorted(r[0] for r in res)
            self.assertEqual(statuses, [202] + [409] * 7, "racing PlaceOrder: %r" % (res,))
            self.assertEqual(self.c.head(), before + 1)

    def test_racing_payments(self):
        for _ in range(3):
            oid, _ = self.place(items=[{"sku": "s", "quantity": 5, "unit_price_cents": 100}])
            res = self.race(8, lambda i, cl: cl.command(
                "RecordPayment", {"order_id": oid, "payment_id": "p%d" % i,
                                  "amount_cents": 100}))
            statuses = sorted(r[0] for r in res)
            self.assertEqual(statuses, [202] * 5 + [422] * 3, "racing payments: %r" % (res,))
            evs = self.stream(oid)["events"]
            self.assertEqual([e["version"] for e in evs], list(range(1, 8)))
            self.assertEqual([e["data"]["paid_cents"] for e in evs
                              if e["type"] == "PaymentReceived"], [100, 200, 300, 400, 500])
            self.assertEqual([e["type"] for e in evs].count("OrderPaid"), 1)
            self.assertEqual(evs[-1]["type"], "OrderPaid")
            # every 202 names its own events
            pos = sorted(e["position"] for r in res if r[0] == 202 for e in r[2]["events"])
            self.assertEqual(pos, sorted(e["position"] for e in evs[1:]))

    def test_racing_idempotent_retries(self):
        # the same key and body from 8 connections at once: one command
        body = order_body()
        key = uid("key")
        before = self.c.head()
        res = self.race(8, lambda i, cl: cl.command("PlaceOrder", body, key=key))
        self.assertEqual([r[0] for r in res], [202] * 8, "%r" % (res,))
        self.assertEqual(len({json.dumps(r[2], sort_keys=True) for r in res}), 1,
                         "different answers for one key: %r" % (res,))
        self.assertEqual(sum(1 for r in res
                             if r[1].get("idempotency-replayed", "").lower() != "true"), 1,
                         "exactly one answer should be the original")
        self.assertEqual(self.c.head(), before + 1)


if __name__ == "__main__":
    cqtest.main()
