"""Schema evolution: OrderPlaced v1 (written before item_count existed) is
upcast to v2 wherever events are read -- the streams API, the aggregate the
writer folds, the asynchronous and inline projections, strong reads and
`cqrsd verify` -- while the stored event stays exactly as it was written.

The v1 events are written as old code wrote them, straight into events.db
(or the PostgreSQL store's events table, CQ_TEST_BACKEND=pg) while the
server is stopped (POST /streams refuses the orders domain's streams and
event types, so it cannot make them)."""
import json
import subprocess
import unittest

import cqtest

V1_ITEMS = [{"sku": "a", "quantity": 2, "unit_price_cents": 100},
            {"sku": "b", "quantity": 3, "unit_price_cents": 10}]


class UpcastTest(cqtest.ServerTestCase):
    def place_v1(self, oid):
        data = {"order_id": oid, "customer_id": "c-old", "currency": "EUR",
                "items": V1_ITEMS, "total_cents": 230}
        meta = {"event_id": "0190a5b6-0000-7000-8000-000000000001",
                "command_id": "0190a5b6-0000-7000-8000-000000000002",
                "time": "2024-07-01T00:00:00.000Z"}
        self.server.stop()
        db = cqtest.store_db(self.server, "events")
        pos = db.rows("SELECT coalesce(max(position), 0) + 1 FROM events")[0][0]
        db.execute("INSERT INTO events (position, stream_id, version, type,"
                   " schema_version, data, metadata, recorded_at)"
                   " VALUES (?, ?, 1, 'OrderPlaced', 1, ?, ?, 1719792000000)",
                   (pos, "order-" + oid, json.dumps(data), json.dumps(meta)))
        db.execute("INSERT INTO streams (stream_id, version, position)"
                   " VALUES (?, 1, ?)", ("order-" + oid, pos))
        self.server.start()
        return pos

    def stored(self, oid):
        rows = cqtest.store_db(self.server, "events").rows(
            "SELECT schema_version, data FROM events WHERE"
            " stream_id = ? AND version = 1", ("order-" + oid,))
        return rows[0] if rows else None

    def test_v1_order_reads_as_v2_everywhere(self):
        oid = cqtest.uid("legacy")
        pos = self.place_v1(oid)

        # stored as written: version 1, no item_count
        sv, data = self.stored(oid)
        self.assertEqual(sv, 1)
        self.assertNotIn("item_count", data)

        # the streams API shows the current shape
        st, _, b = self.c.get("/streams/order-" + oid)
        self.assertEqual(st, 200, b)
        ev = b["events"][0]
        self.assertEqual(ev["schema_version"], 2)
        self.assertEqual(ev["data"]["item_count"], 5)

        # the asynchronous read model, the inline one and a strong read
        st, _, b = self.c.get("/queries/order_summary?order_id=%s"
                              "&min_position=%d&wait_ms=10000" % (oid, pos))
        self.assertEqual(st, 200, b)
        self.assertFalse(b["meta"]["stale"], b)
        self.assertEqual(b["data"]["item_count"], 5)
        self.assertEqual(b["data"]["total_cents"], 230)
        st, _, strong = self.c.get("/queries/order_summary?order_id=%s"
                                   "&consistency=strong" % oid)
        self.assertEqual(st, 200, strong)
        self.assertEqual(strong["data"], b["data"])
        st, _, b = self.c.get("/queries/payment_confirmation?order_id=" + oid)
        self.assertEqual(st, 200, b)
        self.assertEqual(b["data"]["total_cents"], 230)

        # the writer folds the old event into the aggregate: pay it in full
        st, _, b = self.c.command("RecordPayment", {
            "order_id": oid, "payment_id": "p-1", "amount_cents": 230})
        self.assertEqual(st, 202, b)
        self.assertEqual([e["type"] for e in b["events"]],
                         ["PaymentReceived", "OrderPaid"])
        st, _, b = self.c.command("ShipOrder", {
            "order_id": oid, "carrier": "c", "tracking_number": "t"})
        self.assertEqual(st, 202, b)

        # still untouched on disk
        self.assertEqual(self.stored(oid), (sv, data))

    def test_verify_agrees(self):
        oid = "legacy-verify"
        pos = self.place_v1(oid)
        st, _, b = self.c.get("/queries/order_summary?order_id=%s"
                              "&min_position=%d&wait_ms=10000" % (oid, pos))
        self.assertEqual(st, 200, b)
        st, _, b = self.c.get("/queries/sales_dashboard?min_position=%d"
                              "&wait_ms=10000" % pos)
        self.assertEqual(st, 200, b)
        p = subprocess.run([cqtest.BINARY, "verify"] + self.server.store_args(),
                           capture_output=True, text=True, timeout=120)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)


if __name__ == "__main__":
    cqtest.main()
