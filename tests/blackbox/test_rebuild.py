"""Black-box tests of blue/green rebuilds (POST /projections/{name}/rebuild,
and the rebuild a changed definition starts at boot):

- rebuilds under concurrent commands and queries: every query is answered
  (200, never empty or partial, its position never going back), no event is
  lost, and `cqrsd verify` agrees with the tables afterwards;
- a changed @version keeps answering from the previous version's tables
  (with the previous version's queries) until the swap, then from the new;
- a rebuild cut by SIGKILL resumes at restart;
- a rebuild whose new handlers fail is given up and the live tables stay.

    python3 tests/blackbox/test_rebuild.py /path/to/cqrsd
"""
import os
import subprocess
import sys
import threading
import time
import unittest

sys.dont_write_bytecode = True

import cqtest  # noqa: E402
from problems import assert_type  # noqa: E402
from cqtest import Client, uid  # noqa: E402
from test_projections import (ProjectionTestBase, checkpoints, qpath,  # noqa: E402
                              read_db, run_workload)

INDEX_V1 = """\
-- @projection order_index
-- @version 1
-- @mode async

CREATE TABLE IF NOT EXISTS order_index (
    order_id    TEXT PRIMARY KEY,
    customer_id TEXT NOT NULL,
    total_cents BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS order_index_by_customer
    ON order_index (customer_id, order_id);

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
    currency    TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS order_index_by_customer
    ON order_index (customer_id, order_id);

-- @on OrderPlaced
INSERT INTO order_index (order_id, customer_id, total_cents, currency)
VALUES (:data.order_id, :data.customer_id, :data.total_cents, :data.currency)
ON CONFLICT (order_id) DO NOTHING;

-- @query order_index_all
-- @result list
SELECT * FROM order_index ORDER BY order_id;

-- @query order_index_one
-- @param order_id id required
-- @result one
SELECT * FROM order_index WHERE order_id = :order_id;
"""

# version 3 fails on every OrderPlaced: currency2 is NOT NULL and absent
INDEX_V3_BROKEN = INDEX_V2.replace("@version 2", "@version 3").replace(
    "currency    TEXT NOT NULL\n", "currency    TEXT NOT NULL,\n"
    "    currency2   TEXT NOT NULL\n")


def verify(srv, *args):
    p = subprocess.run([cqtest.BINARY, "verify"] + srv.store_args() + list(args),
                       stdin=subprocess.DEVNULL, capture_output=True, timeout=300)
    return p.returncode, p.stdout.decode("utf-8", "replace")


class RebuildTestBase(ProjectionTestBase):

    def status(self, c, name):
        st, _, b = c.get("/projections/" + name)
        self.assertEqual(st, 200, b)
        return b

    def rebuild(self, c, name):
        st, _, b = c.post("/projections/%s/rebuild" % name)
        self.assertEqual(st, 202, b)
        self.assertIn(b["status"], ("rebuilding", "paused"), b)
        self.assertIsNotNone(b["rebuild"], b)
        return b["rebuild"]["started_at"]

    def wait_rebuilt(self, c, name, started_at=None, timeout=120.0):
        """Wait until the rebuild of `name` (the one started at started_at,
        if given) has ended; returns the status."""
        deadline = time.monotonic() + timeout
        while True:
            s = self.status(c, name)
            last = s["last_rebuild"]
            if s["rebuild"] is None and last is not None and (
                    started_at is None or last["started_at"] == started_at):
                return s
            self.assertLess(time.monotonic(), deadline,
                            "rebuild of %s did not end: %r" % (name, s))
            time.sleep(0.02)

    def place(self, c, n, customer="c-1", currency="EUR"):
        ids = []
        for i in range(n):
            oid = uid("o")
            st, _, b = c.command("PlaceOrder", {
                "order_id": oid, "customer_id": customer, "currency": currency,
                "items": [{"sku": "k", "quantity": 1, "unit_price_cents": 100 + i}]})
            self.assertEqual(st, 202, b)
            ids.append(oid)
        return ids


class RebuildUnderLoadTest(RebuildTestBase):

    def test_rebuilds_under_reads_and_writes(self):
        srv = self.server()
        srv.start()
        c = Client(srv)
        orders = run_workload(srv, 1500, threads=6, seed=3,
                              customers=("c-a", "c-b", "c-c"))
        known = sorted(orders)
        per_customer = {}
        for oid, cust in orders.items():
            per_customer[cust] = per_customer.get(cust, 0) + 1
        self.wait_caught_up(c, known[0])

        stop = threading.Event()
        problems = []
        reads = [0]
        written = []
        lock = threading.Lock()

        def reader(k):
            rc = Client(srv)
            last_pos = 0
            i = k
            try:
                while not stop.is_set():
                    oid = known[i % len(known)]
                    i += 7
                    if i % 3 == 0:
                        cust = ("c-a", "c-b", "c-c")[i % 3]
                        st, _, b = rc.get(qpath("customer_orders",
                                                {"customer_id": cust, "limit": 100}))
                        # every customer has more than a page of orders
                        ok = st == 200 and len(b["data"]["orders"]) == 100
                    else:
                        st, _, b = rc.get(qpath("order_summary", {"order_id": oid}))
                        ok = st == 200 and b["data"]["order_id"] == oid
                    if ok and b["meta"]["position"] < last_pos:
                        ok = False
                    if not ok:
                        with lock:
                            problems.append((st, b))
                        continue
                    last_pos = b["meta"]["position"]
                    with lock:
                        reads[0] += 1
            finally:
                rc.close()

        def writer():
            wc = Client(srv)
            try:
                while not stop.is_set():
                    oid = uid("o")
                    st, _, b = wc.command("PlaceOrder", {
                        "order_id": oid, "customer_id": "c-w", "currency": "USD",
                        "items": [{"sku": "w", "quantity": 1, "unit_price_cents": 5}]})
                    if st != 202:
                        with lock:
                            problems.append((st, b))
                        continue
                    with lock:
                        written.append(oid)
            finally:
                wc.close()

        threads = [threading.Thread(target=reader, args=(k,)) for k in range(4)]
        threads += [threading.Thread(target=writer) for _ in range(2)]
        for t in threads:
            t.start()
        during = []
        try:
            for name in ("order_summaries", "sales_dashboard", "order_summaries"):
                before = reads[0]
                started = self.rebuild(c, name)
                s = self.wait_rebuilt(c, name, started)
                during.append(reads[0] - before)
                self.assertEqual(s["last_rebuild"]["outcome"], "done", s)
                self.assertEqual(s["status"], "running", s)
                self.assertGreater(s["last_rebuild"]["events_replayed"], 0, s)
            time.sleep(0.2)
        finally:
            stop.set()
            for t in threads:
                t.join()
        self.assertEqual(problems[:5], [], "failed, empty or backward answers")
        self.assertGreater(reads[0], 0)
        self.assertTrue(written, "the writers wrote nothing")

        # no event lost: every acknowledged order is in the rebuilt tables
        self.wait_caught_up(c, known[0])
        for oid in written + known:
            st, _, b = c.get(qpath("order_summary", {"order_id": oid}))
            self.assertEqual(st, 200, (oid, b))
        c.close()
        srv.stop()
        rc, out = verify(srv)
        self.assertEqual(rc, 0, out)
        sys.stderr.write("\n  reads during each rebuild: %r, orders written: %d\n"
                         % (during, len(written)))

    def test_rebuild_refusals(self):
        srv = self.server()
        srv.start()
        c = Client(srv)
        try:
            st, _, b = c.post("/projections/payment_confirmation/rebuild")
            self.assertEqual(st, 409, b)
            assert_type(self, b, "conflict")
            self.assertIn("inline", b["detail"])
            st, _, b = c.post("/projections/nope/rebuild")
            self.assertEqual(st, 404, b)
            assert_type(self, b, "not-found")
            st, _, b = c.get("/projections/order_summaries/rebuild")
            self.assertEqual(st, 405, b)
            assert_type(self, b, "method-not-allowed")
            # a second rebuild while one runs is refused (pause holds it)
            self.place(c, 5)
            st, _, b = c.post("/projections/order_summaries/pause")
            self.assertEqual(st, 200, b)
            self.rebuild(c, "order_summaries")
            st, _, b = c.post("/projections/order_summaries/rebuild")
            self.assertEqual(st, 409, b)
            assert_type(self, b, "conflict")
            self.assertIn("already", b["detail"])
            st, _, b = c.post("/projections/order_summaries/resume")
            self.assertEqual(st, 200, b)
            s = self.wait_rebuilt(c, "order_summaries")
            self.assertEqual(s["last_rebuild"]["outcome"], "done")
        finally:
            c.close()


class ChangedDefinitionTest(RebuildTestBase):

    def start_with(self, pdir, text, srv=None):
        with open(os.path.join(pdir, "order_index.sql"), "w") as f:
            f.write(text)
        srv = srv or self.server(args=["--projections", pdir])
        srv.start()
        return srv

    def test_old_tables_serve_until_the_swap(self):
        pdir = self.tmpdir()
        srv = self.start_with(pdir, INDEX_V1)
        c = Client(srv)
        first = self.place(c, 20)
        head = c.head()
        data, meta, _ = self.query(c, "order_index_all",
                                   {"min_position": head, "wait_ms": 10000})
        self.assertEqual(len(data), 20)
        # paused, the projection holds its rebuild at boot where it is
        st, _, b = c.post("/projections/order_index/pause")
        self.assertEqual(st, 200, b)
        c.close()
        srv.stop()

        self.start_with(pdir, INDEX_V2, srv)
        c = Client(srv)
        try:
            s = self.status(c, "order_index")
            self.assertEqual((s["version"], s["serving_version"], s["status"]),
                             (2, 1, "paused"), s)
            self.assertIsNotNone(s["rebuild"], s)
            self.assertIn("version 1 -> 2", s["rebuild"]["reason"])
            # the version 1 tables answer, with version 1's query
            data, meta, _ = self.query(c, "order_index_all")
            self.assertEqual(sorted(r["order_id"] for r in data), sorted(first))
            self.assertNotIn("currency", data[0])
            self.assertEqual(meta["position"], head)
            # a query version 1 does not have cannot be answered yet
            st, h, b = c.get(qpath("order_index_one", {"order_id": first[0]}))
            self.assertEqual(st, 503, b)
            assert_type(self, b, "read-model-unavailable")
            self.assertIn("rebuilt", b["detail"])
            later = self.place(c, 3, currency="GBP")
            st, _, b = c.post("/projections/order_index/resume")
            self.assertEqual(st, 200, b)
            s = self.wait_rebuilt(c, "order_index")
            self.assertEqual((s["serving_version"], s["status"]), (2, "running"), s)
            self.assertEqual((s["last_rebuild"]["outcome"], s["last_rebuild"]["version"]),
                             ("done", 2), s)
            head = c.head()
            self.assertEqual(s["last_rebuild"]["events_replayed"], head)
            data, meta, _ = self.query(c, "order_index_all",
                                       {"min_position": head, "wait_ms": 10000})
            self.assertEqual(sorted(r["order_id"] for r in data), sorted(first + later))
            self.assertEqual({r["currency"] for r in data}, {"EUR", "GBP"})
            one, _, _ = self.query(c, "order_index_one", {"order_id": later[0]})
            self.assertEqual(one["currency"], "GBP")
        finally:
            c.close()
        srv.stop()
        cp = checkpoints(read_db(srv))["order_index"]
        self.assertEqual((cp["version"], cp["status"]), (2, "running"))
        rc, out = verify(srv, "--projections", pdir)
        self.assertEqual(rc, 0, out)

        # the next change starts from the stored version 2 text: a broken
        # version 3 is given up and version 2 keeps serving and moving
        self.start_with(pdir, INDEX_V3_BROKEN, srv)
        c = Client(srv)
        try:
            s = self.wait_rebuilt(c, "order_index")
            self.assertEqual(s["last_rebuild"]["outcome"], "failed", s)
            self.assertIn("currency2", s["last_rebuild"]["error"])
            self.assertEqual((s["version"], s["serving_version"]), (3, 2), s)
            more = self.place(c, 2)
            head = c.head()
            data, meta, _ = self.query(c, "order_index_all",
                                       {"min_position": head, "wait_ms": 10000})
            self.assertFalse(meta["stale"], meta)
            self.assertIn(more[1], {r["order_id"] for r in data})
            self.assertIn("currency", data[0])
        finally:
            c.close()
        srv.stop()

    def test_killed_rebuild_resumes(self):
        srv = self.server()
        srv.start()
        c = Client(srv)
        orders = run_workload(srv, 300, threads=4, seed=5)
        self.wait_caught_up(c, sorted(orders)[0])
        st, _, b = c.post("/projections/sales_dashboard/pause")
        self.assertEqual(st, 200, b)
        started = self.rebuild(c, "sales_dashboard")
        c.close()
        srv.kill()
        srv.start()
        c = Client(srv)
        try:
            s = self.status(c, "sales_dashboard")
            self.assertEqual(s["status"], "paused", s)
            self.assertIsNotNone(s["rebuild"], s)
            self.assertEqual(s["rebuild"]["started_at"], started)
            self.assertEqual(s["rebuild"]["reason"], "resumed", s)
            self.assertIn("rebuild resumed (requested)", srv.stderr_text())
            st, _, b = c.post("/projections/sales_dashboard/resume")
            self.assertEqual(st, 200, b)
            s = self.wait_rebuilt(c, "sales_dashboard", started)
            self.assertEqual(s["last_rebuild"]["outcome"], "done", s)
            self.wait_caught_up(c, sorted(orders)[0])
        finally:
            c.close()
        srv.stop()
        rc, out = verify(srv)
        self.assertEqual(rc, 0, out)


if __name__ == "__main__":
    cqtest.main()
