#!/usr/bin/env python3
"""Start-up with an inline projection to build from scratch.

A store of many events whose inline projection (payment_confirmation)
lost its tables must be replayed when the server starts. The server
listens at once: /healthz answers 200 while /readyz is 503 and names the
inline projection catching up; queries answer with the position the read
model has reached (meta.position, lag_events, stale); a command sent
meanwhile waits in the writer's queue and is answered once the inline
projection is current (docs/operations.md, "Start-up"), after which its
inline read model has it; then /readyz is 200 and every order is there.

SQLite only: the events are written into events.db straight (a few
hundred thousand through HTTP would take minutes).
"""
import json
import os
import sqlite3
import sys
import threading
import time
import unittest

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cqtest  # noqa: E402


def _thread_sanitized(binary):
    """True if `binary` was built with ThreadSanitizer (some 10 times
    slower: fewer events still take seconds to replay there)."""
    with open(binary, "rb") as f:
        return b"__tsan_init" in f.read()


# one OrderPlaced each: seconds of catch-up in any build (class bodies and
# module code run at import, before cqtest.main() takes argv[1])
ORDERS = (30000 if len(sys.argv) > 1 and os.path.isfile(sys.argv[1])
          and _thread_sanitized(sys.argv[1]) else 150000)


def fill(data_dir, seed_stream):
    """Copy the seed order's OrderPlaced event into ORDERS new streams at
    the end of $all, then drop the inline projection's table and
    checkpoint: the next start must replay it from position 0."""
    db = sqlite3.connect(os.path.join(data_dir, "events.db"))
    try:
        (head,) = db.execute("SELECT max(position) FROM events").fetchone()
        row = db.execute(
            "SELECT type, schema_version, data, metadata FROM events"
            " WHERE stream_id = ? AND version = 1", (seed_stream,)).fetchone()
        etype, schema, data, meta = row
        data, now = json.loads(data), int(time.time() * 1000)

        def events():
            for i in range(ORDERS):
                data["order_id"] = "boot-%d" % i
                yield (head + 1 + i, "order-boot-%d" % i, 1, etype, schema,
                       json.dumps(data, separators=(",", ":")), meta, now)
        db.execute("BEGIN")
        db.executemany(
            "INSERT INTO events (position, stream_id, version, type,"
            " schema_version, data, metadata, recorded_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)", events())
        db.execute(
            "INSERT INTO streams (stream_id, version, position)"
            " SELECT stream_id, 1, position FROM events WHERE position > ?",
            (head,))
        db.execute("DROP TABLE payment_confirmations")
        db.execute("DELETE FROM cq_projections"
                   " WHERE name = 'payment_confirmation'")
        db.execute("COMMIT")
        return head + ORDERS
    finally:
        db.close()


def inline_rows(data_dir):
    """(rows of payment_confirmations, its checkpoint position)."""
    db = sqlite3.connect(os.path.join(data_dir, "events.db"))
    try:
        (n,) = db.execute(
            "SELECT count(*) FROM payment_confirmations").fetchone()
        (pos,) = db.execute(
            "SELECT position FROM cq_projections"
            " WHERE name = 'payment_confirmation'").fetchone()
    finally:
        db.close()
    return n, pos


def stopped_rows(srv, c):
    """Stop the server (exit 0, no sanitizer report), then inline_rows."""
    c.close()
    srv.stop()
    srv.check_stderr()
    return inline_rows(srv.data_dir)


def control(srv, path, out, body=None):
    """POST path (on a connection of its own) into out["r"]."""
    c = cqtest.Client(srv, timeout=300)
    try:
        out["r"] = c.post(path, body)
    finally:
        c.close()


def wait_ready(test, c, seconds=300):
    deadline = time.monotonic() + seconds
    while True:
        st, _, ready = c.get("/readyz")
        if st == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    test.assertEqual(st, 200, ready)


class StartupCatchUpTest(unittest.TestCase):

    def filled_server(self):
        """A stopped server whose store holds one order placed through it
        and ORDERS more filled in, the inline projection to be replayed:
        (server, client, the order's body, the head)."""
        cqtest.skip_unless_sqlite(self, "fills events.db directly")
        srv = cqtest.Server(cqtest.BINARY)
        c = cqtest.Client(srv)
        try:
            srv.start()
            seed = cqtest.order_body()
            st, _, b = c.command("PlaceOrder", seed)
            self.assertEqual(st, 202, b)
            c.close()
            srv.stop()
            return srv, c, seed, fill(srv.data_dir,
                                      "order-" + seed["order_id"])
        except BaseException:
            c.close()
            srv.close(failed=True)
            raise

    def test_stop_during_catch_up_then_resume(self):
        """SIGTERM while the inline projection catches up: exit 0 at once
        (between two of its transactions), its rows and checkpoint agree;
        the next start goes on from there."""
        srv, c, _, head = self.filled_server()
        try:
            srv.start()
            st, _, ready = c.get("/readyz")
            self.assertEqual(st, 503, ready)
            # a control operation waits for the projector, which waits for
            # the inline catch-up: the stop hands it back, answered
            paused = {}
            t = threading.Thread(target=control, args=(
                srv, "/projections/order_summaries/pause", paused))
            t.start()
            time.sleep(0.5)
            c.close()
            srv.stop()  # exit code 0
            t.join(60)
            self.assertFalse(t.is_alive())
            st, _, b = paused["r"]
            self.assertEqual(st, 503, b)
            self.assertIn("stopping", b["detail"], b)
            n, pos = inline_rows(srv.data_dir)
            self.assertLess(pos, head)  # stopped before the end
            self.assertEqual(n, pos)  # one order per event, all applied
            srv.start()
            st, _, b = c.command("PlaceOrder", cqtest.order_body())
            self.assertEqual((st, b.get("position")), (202, head + 1), b)
            wait_ready(self, c)
            self.assertEqual(stopped_rows(srv, c), (head + 1, head + 1))
        finally:
            c.close()
            srv.close(failed=True)

    def test_listens_at_once_and_catches_up(self):
        srv, c, seed, head = self.filled_server()
        try:
            srv.start()  # returns at the first /healthz 200
            st, _, ready = c.get("/readyz")
            self.assertEqual(st, 503, ready)
            why = [r for r in ready["reasons"]
                   if "inline projection payment_confirmation is catching up"
                   in r]
            self.assertEqual(len(why), 1, ready)
            self.assertEqual(ready["head_position"], head, ready)
            st, _, h = c.get("/healthz")
            self.assertEqual(st, 200, h)

            st, _, p = c.get("/projections/payment_confirmation")
            self.assertEqual(st, 200, p)
            self.assertIn(p["status"], ("catching_up", "running"), p)
            self.assertEqual(p["lag_events"], p["head"] - p["position"], p)

            # a query answers with the position its read model reflects;
            # one for an order it has not reached yet says how far it is
            st, _, q = c.get("/queries/payment_confirmation?order_id=boot-%d"
                             % (ORDERS - 1))
            if st == 404:
                self.assertIn("events behind the head", q["detail"], q)
            else:
                self.assertEqual(st, 200, q)
            for n in range(100):
                st, _, q = c.get("/queries/payment_confirmation?order_id=%s"
                                 % seed["order_id"])
                if st == 200:
                    break
                self.assertEqual(st, 404, q)
                self.assertIn("events behind the head", q["detail"], q)
                time.sleep(0.05)
            self.assertEqual(st, 200, q)
            m = q["meta"]
            self.assertLessEqual(m["position"], head, m)
            self.assertEqual(m["position"] + m["lag_events"], head, m)
            self.assertEqual(m["stale"], m["lag_events"] > 0, m)

            # a command sent now waits until the inline projection is
            # current, then is applied to it with its events; a control
            # operation is carried out once the projector runs, after it
            late = cqtest.order_body()
            answer, paused = {}, {}
            threads = [
                threading.Thread(target=control, args=(
                    srv, "/projections/sales_dashboard/pause", paused)),
                threading.Thread(target=control, args=(
                    srv, "/commands/PlaceOrder", answer, late))]
            for t in threads:
                t.start()
            for t in threads:
                t.join(300)
                self.assertFalse(t.is_alive(), "never answered")
            st, _, b = paused["r"]
            self.assertEqual((st, b["status"]), (200, "paused"), b)
            st, _, b = c.post("/projections/sales_dashboard/resume")
            self.assertEqual((st, b["status"]), (200, "running"), b)
            st, _, b = answer["r"]
            self.assertEqual(st, 202, b)
            self.assertEqual(b["position"], head + 1, b)
            st, _, q = c.get("/queries/payment_confirmation?order_id=%s"
                             % late["order_id"])
            self.assertEqual(st, 200, q)
            self.assertEqual(q["meta"]["position"], head + 1, q)
            self.assertFalse(q["meta"]["stale"], q)
            self.assertEqual(q["data"]["status"], "unpaid", q)
            st, _, p = c.get("/projections/payment_confirmation")
            self.assertEqual((p["status"], p["position"]), ("running", head + 1),
                             p)

            wait_ready(self, c)
            for i in (0, ORDERS // 2, ORDERS - 1):
                st, _, q = c.get(
                    "/queries/payment_confirmation?order_id=boot-%d" % i)
                self.assertEqual(st, 200, q)
                self.assertEqual(q["meta"]["position"], head + 1, q)
            self.assertEqual(stopped_rows(srv, c), (ORDERS + 2, head + 1))
        finally:
            c.close()
            srv.close(failed=True)


if __name__ == "__main__":
    cqtest.main()
