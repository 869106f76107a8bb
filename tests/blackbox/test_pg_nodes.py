"""Many cqrsd nodes on one PostgreSQL database: real processes on loopback.

- three nodes: an expected-version race across nodes has one winner; one
  Idempotency-Key sent to two nodes at once executes once; an aggregate a
  node cached is not decided on after another node appended; a
  min_position query (and a command's wait_for) on one node is answered
  fresh right after another node's 202;
- gap-free: 4 nodes x 8 writer threads for GAPFREE_SECONDS (15) while a
  tailing reader follows $all and the projections run; every acknowledged
  event is seen once by the tail, in position order, and applied once, in
  order, by every projection; `cqrsd verify --store` passes;
- projector takeover: SIGKILL the node holding the asynchronous
  projections' locks under a paced load (TAKEOVER_ORDERS_PER_S); another
  node holds them within 5 s, has applied every event committed before
  the kill within 5 s, and nothing is applied twice;
- faults, on a cluster of its own (scripts/pg.sh): PostgreSQL unreachable
  at start (exit 2, one line naming the URI without its password);
  PostgreSQL stopped and started again under load (503 while it is down,
  never 202; every 202 there exactly once afterwards; the same process
  serves again); connections stay within --pg-connections.

Needs the `pg` ctest fixture (CQ_TEST_PG_DIR); the figures it measures are
printed on stderr.

    CQ_TEST_PG_DIR=build/tests/pg python3 tests/blackbox/test_pg_nodes.py build/cqrsd
"""
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.parse

sys.dont_write_bytecode = True

import cqtest  # noqa: E402
from cqtest import Client, Server, uid  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PG_SH = os.path.join(ROOT, "scripts", "pg.sh")
GAPFREE_SECONDS = float(os.environ.get("CQ_GAPFREE_SECONDS", "15"))
DEFAULT_PG_CONNECTIONS = 8
# the takeover test's paced load: orders (PlaceOrder + RecordPayment) per
# second over its 8 writers
TAKEOVER_ORDERS_PER_S = 150.0

# An asynchronous projection that logs every application: one row per
# event applied, with the highest position applied before it. An event
# applied twice shows as a repeated position, one applied out of order as
# prev_max >= position, one skipped as a position missing from the log.
APPLY_LOG_SQL = "".join(["""\
-- @projection apply_log
-- @version 1
-- @mode async

CREATE TABLE IF NOT EXISTS apply_log (
    position BIGINT NOT NULL,
    prev_max BIGINT NOT NULL,
    type     TEXT NOT NULL
);
-- MAX(position) per event: without the index a scan of the whole log,
-- slower with every event, which held back every projection of the
-- projector's rounds under an unpaced load
CREATE INDEX IF NOT EXISTS apply_log_position ON apply_log (position);
"""] + ["""
-- @on %s
INSERT INTO apply_log (position, prev_max, type)
SELECT :position, COALESCE(MAX(position), 0), :type FROM apply_log;
""" % t for t in ("OrderPlaced", "PaymentReceived", "OrderPaid", "OrderShipped",
                  "OrderCancelled")] + ["""
-- @query apply_log_summary
-- @result one
SELECT COUNT(*) AS applied, COUNT(DISTINCT position) AS positions,
       CAST(COALESCE(SUM(position), 0) AS BIGINT) AS position_sum,
       CAST(COALESCE(MAX(position), 0) AS BIGINT) AS max_position,
       CAST(COALESCE(SUM(CASE WHEN prev_max >= position THEN 1 ELSE 0 END), 0)
            AS BIGINT) AS out_of_order
  FROM apply_log;

-- @query apply_log_repeats
-- @result list
SELECT position, COUNT(*) AS times FROM apply_log
 GROUP BY position HAVING COUNT(*) > 1 ORDER BY position LIMIT 20;
"""])

ASYNC_PROJECTIONS = ("order_summaries", "sales_dashboard", "apply_log")


def log(msg):
    sys.stderr.write("\n  " + msg)
    sys.stderr.flush()


def qpath(name, params=None):
    if not params:
        return "/queries/" + name
    return "/queries/%s?%s" % (name, urllib.parse.urlencode(list(params.items())))


def pct(values, p):
    if not values:
        return float("nan")
    v = sorted(values)
    return v[min(len(v) - 1, int(round(p / 100.0 * (len(v) - 1))))]


def place_body(oid, total, customer="c-n", currency="EUR"):
    return {"order_id": oid, "customer_id": customer, "currency": currency,
            "items": [{"sku": "s", "quantity": 1, "unit_price_cents": total}]}


# ---- which process holds what -----------------------------------------------

def _tcp_table():
    """{socket inode: (local port, remote port)} of this host's TCP sockets."""
    out = {}
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(name) as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            continue
        for ln in lines:
            p = ln.split()
            if len(p) < 10:
                continue
            out[p[9]] = (int(p[1].rsplit(":", 1)[1], 16),
                         int(p[2].rsplit(":", 1)[1], 16))
    return out


def pg_sockets(pid, pg_port, table=None):
    """Local ports of process pid's TCP connections to pg_port (on
    loopback: PostgreSQL's client_port of each of its sessions)."""
    table = table if table is not None else _tcp_table()
    ports = set()
    fd_dir = "/proc/%d/fd" % pid
    try:
        fds = os.listdir(fd_dir)
    except OSError:
        return ports
    for fd in fds:
        try:
            target = os.readlink(os.path.join(fd_dir, fd))
        except OSError:
            continue
        if target.startswith("socket:["):
            ent = table.get(target[8:-1])
            if ent and ent[1] == pg_port:
                ports.add(ent[0])
    return ports


def lock_holders(uri, names):
    """{projection: client_port of the session holding its advisory lock
    cqrsd:projection:NAME in the database at uri} (a missing name: nobody
    holds it). Other databases of the cluster have locks of the same names
    (other tests' servers): advisory locks are per database."""
    rows = cqtest.pg_rows(uri, """
        SELECT n.name, a.client_port
          FROM unnest(ARRAY[%s]) AS n(name)
          JOIN pg_locks l
            ON l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
           AND l.database = (SELECT oid FROM pg_database
                              WHERE datname = current_database())
           AND ((l.classid::bigint << 32) | l.objid::bigint)
               = hashtextextended('cqrsd:projection:' || n.name, 0)
          JOIN pg_stat_activity a ON a.pid = l.pid""" %
                          ", ".join(cqtest.pg_literal(n) for n in names))
    return {r[0]: r[1] for r in rows}


def pg_port_of(uri):
    return urllib.parse.urlsplit(uri).port


def runs_here(node, name):
    """What the node's GET /projections/NAME says: does it apply NAME?"""
    c = Client(node, timeout=10)
    try:
        st, _, b = c.get("/projections/" + name)
    finally:
        c.close()
    if st != 200 or "runs_here" not in b:
        raise AssertionError("GET /projections/%s -> %s %r (no runs_here)" % (name, st, b))
    return b["runs_here"]


def node_of_port(nodes, pg_port, client_port):
    table = _tcp_table()
    for n in nodes:
        if n.running() and client_port in pg_sockets(n.proc.pid, pg_port, table):
            return n
    return None


# =============================================================================

class NodesTestBase(unittest.TestCase):
    maxDiff = 4000

    def setUp(self):
        self.nodes_made = []
        self.dbs = []
        self.tmpdirs = []

    def tearDown(self):
        errors = []
        for s in self.nodes_made:
            try:
                s.close()      # SIGTERM: exit 0, no sanitizer report
            except AssertionError as e:
                errors.append(e)
        for d in self.dbs:
            try:
                cqtest.pg_drop_database(d)
            except AssertionError as e:
                sys.stderr.write("%s\n" % e)
        for d in self.tmpdirs:
            shutil.rmtree(d, ignore_errors=True)
        if errors:
            raise errors[0]

    def tmpdir(self):
        d = tempfile.mkdtemp(prefix="cqrsd-nodes-")
        self.tmpdirs.append(d)
        return d

    def database(self, tag):
        uri = cqtest.pg_create_database(tag)
        self.dbs.append(uri)
        return uri

    def start_nodes(self, n, uri, args=(), read_store=None, together=True):
        """n nodes on the database at uri, without --data (PostgreSQL needs
        none), started at the same time unless together=False."""
        nodes = [Server(cqtest.BINARY, args=args, store=uri, read_store=read_store,
                        data_arg=False) for _ in range(n)]
        self.nodes_made.extend(nodes)
        if not together:
            for s in nodes:
                s.start()
            return nodes
        errors = []

        def start(s):
            try:
                s.start()
            except BaseException as e:  # noqa: BLE001
                errors.append(e)

        ts = [threading.Thread(target=start, args=(s,)) for s in nodes]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        if errors:
            raise errors[0]
        return nodes

    def verify(self, uri, *args):
        p = subprocess.run([cqtest.BINARY, "verify", "--store", uri] + list(args),
                           stdin=subprocess.DEVNULL, capture_output=True, timeout=300)
        out = p.stdout.decode("utf-8", "replace")
        err = p.stderr.decode("utf-8", "replace")
        for pat in cqtest.SANITIZER_PATTERNS:
            self.assertNotIn(pat, err)
        return p.returncode, out + err

    def fresh(self, c, name, params, head, wait_ms=30000):
        st, _, b = c.get(qpath(name, dict(params, min_position=head, wait_ms=wait_ms)))
        self.assertEqual(st, 200, "%s -> %s %r" % (name, st, b))
        self.assertFalse(b["meta"]["stale"], "%s not at %d: %r" % (name, head, b["meta"]))
        return b["data"]

    def race(self, calls):
        """Run the callables at the same moment (a barrier); their results
        in order."""
        barrier = threading.Barrier(len(calls))
        out = [None] * len(calls)
        errors = []

        def run(i, f):
            try:
                barrier.wait(timeout=30)
                out[i] = f()
            except BaseException as e:  # noqa: BLE001
                errors.append(e)

        ts = [threading.Thread(target=run, args=(i, f)) for i, f in enumerate(calls)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        if errors:
            raise errors[0]
        return out


# =============================================================================

class ThreeNodesTest(NodesTestBase):
    """Three nodes on one database, started at the same moment."""

    def setUp(self):
        super().setUp()
        self.uri = self.database("three")
        self.nodes = self.start_nodes(3, self.uri)
        self.clients = [Client(n) for n in self.nodes]
        for c in self.clients:
            self.assertEqual(c.healthz()[0], 200)

    def tearDown(self):
        for c in self.clients:
            c.close()
        for n in self.nodes:
            n.check_alive()
        super().tearDown()

    def ok(self, c, ctype, body, **kw):
        st, h, b = c.command(ctype, body, **kw)
        self.assertEqual(st, 202, "%s %r -> %s %r" % (ctype, body, st, b))
        return b

    def stream(self, c, sid):
        st, _, b = c.get("/streams/" + sid)
        self.assertEqual(st, 200, b)
        return b

    def test_expected_version_race_across_nodes(self):
        a, b, c3 = self.clients
        losers = {}
        rounds = 15
        for i in range(rounds):
            # PlaceOrder of one order id on two nodes at once: one stream
            oid = uid("race")
            body = place_body(oid, 1000)
            pair = (a, b) if i % 2 == 0 else (b, c3)
            res = self.race([lambda cl=cl: cl.command("PlaceOrder", body) for cl in pair])
            sts = sorted(r[0] for r in res)
            self.assertEqual(sts, [202, 409], "round %d: %r" % (i, res))
            loser = [r for r in res if r[0] == 409][0]
            cqtest.problem_errors(self, loser[0], loser[1], loser[2], 409)
            losers[loser[2]["type"]] = losers.get(loser[2]["type"], 0) + 1
            s = self.stream(a, "order-" + oid)
            self.assertEqual([e["type"] for e in s["events"]], ["OrderPlaced"])

            # If-Match on the same version through two nodes: one payment
            res = self.race([
                lambda: pair[0].command("RecordPayment", {
                    "order_id": oid, "payment_id": "p-a", "amount_cents": 100},
                    if_match='"1"'),
                lambda: pair[1].command("RecordPayment", {
                    "order_id": oid, "payment_id": "p-b", "amount_cents": 200},
                    if_match='"1"')])
            sts = sorted(r[0] for r in res)
            self.assertEqual(sts[0], 202, "round %d: %r" % (i, res))
            self.assertIn(sts[1], (409, 412), "round %d: %r" % (i, res))
            loser = [r for r in res if r[0] != 202][0]
            losers[loser[2]["type"]] = losers.get(loser[2]["type"], 0) + 1
            s = self.stream(c3, "order-" + oid)
            self.assertEqual(s["version"], 2, s)
            self.assertEqual(s["events"][1]["data"]["payment_id"],
                             "p-a" if res[0][0] == 202 else "p-b")

            # raw appends with the same expected_version through two nodes
            sid = uid("note")
            res = self.race([
                lambda cl=cl, k=k: cl.post("/streams/" + sid, {
                    "expected_version": "no_stream",
                    "events": [{"type": "Noted", "data": {"by": k}}]})
                for k, cl in enumerate(pair)])
            sts = sorted(r[0] for r in res)
            self.assertEqual(sts[0], 201, "round %d: %r" % (i, res))
            self.assertIn(sts[1], (409, 412), "round %d: %r" % (i, res))
            loser = [r for r in res if r[0] != 201][0]
            losers[loser[2]["type"]] = losers.get(loser[2]["type"], 0) + 1
            s = self.stream(a, sid)
            self.assertEqual(s["version"], 1, s)
            self.assertEqual(s["events"][0]["data"]["by"], 0 if res[0][0] == 201 else 1)
        log("expected-version races across nodes, %d rounds x (PlaceOrder, If-Match,"
            " raw append): the losers' problem types %r" % (rounds, losers))

    def test_concurrent_payments_never_decide_on_stale_state(self):
        """Payments to one order from all three nodes at once: each event's
        paid_cents is the sum of the payments before it (a node deciding
        on a stale aggregate would write a wrong sum, or pay past the
        total)."""
        oid = uid("pay")
        total = 6 * 8 * 10     # 6 payers x 8 payments x 10 cents
        self.ok(self.clients[0], "PlaceOrder", place_body(oid, total))
        answers = []
        lock = threading.Lock()

        def payer(k):
            c = Client(self.nodes[k % 3])
            try:
                for j in range(8):
                    st, _, b = c.command("RecordPayment", {
                        "order_id": oid, "payment_id": "p-%d-%d" % (k, j),
                        "amount_cents": 10})
                    with lock:
                        answers.append((st, b))
            finally:
                c.close()

        ts = [threading.Thread(target=payer, args=(k,)) for k in range(6)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        codes = {}
        for st, _ in answers:
            codes[st] = codes.get(st, 0) + 1
        self.assertTrue(set(codes) <= {202, 409},
                        [x for x in answers if x[0] not in (202, 409)][:5])
        s = self.stream(self.clients[1], "order-" + oid)
        paid = 0
        payments = 0
        for e in s["events"][1:]:
            if e["type"] == "PaymentReceived":
                paid += e["data"]["amount_cents"]
                payments += 1
                self.assertEqual(e["data"]["paid_cents"], paid, s["events"])
        self.assertEqual(payments, codes.get(202, 0), codes)
        self.assertLessEqual(paid, total)
        self.assertEqual(s["events"][-1]["type"] == "OrderPaid", paid == total, s["events"][-1])
        self.assertEqual([e["version"] for e in s["events"]],
                         list(range(1, len(s["events"]) + 1)))
        log("48 payments to one order through 3 nodes: answers %r" % codes)

    def test_stale_cached_aggregate_is_not_used(self):
        a, b, c3 = self.clients
        for rnd, (x, y) in enumerate(((a, b), (b, c3), (c3, a))):
            # y caches the order unpaid; x pays it; y ships it
            oid = uid("stale")
            self.ok(y, "PlaceOrder", place_body(oid, 1000))
            self.ok(x, "RecordPayment", {"order_id": oid, "payment_id": "p1",
                                         "amount_cents": 1000})
            got = self.ok(y, "ShipOrder", {"order_id": oid, "carrier": "DHL",
                                           "tracking_number": "T"})
            self.assertEqual(got["version"], 4, got)

            # y caches it with 1000 due; x pays 500; y's 600 is too much
            oid = uid("stale")
            self.ok(y, "PlaceOrder", place_body(oid, 1000))
            self.ok(x, "RecordPayment", {"order_id": oid, "payment_id": "p1",
                                         "amount_cents": 500})
            st, h, body = y.command("RecordPayment", {
                "order_id": oid, "payment_id": "p2", "amount_cents": 600})
            cqtest.problem_errors(self, st, h, body, 422)
            got = self.ok(y, "RecordPayment", {"order_id": oid, "payment_id": "p3",
                                               "amount_cents": 500})
            self.assertEqual([e["type"] for e in got["events"]],
                             ["PaymentReceived", "OrderPaid"])
            self.assertEqual(got["version"], 4)

            # y caches it open; x cancels it; y's payment is refused
            oid = uid("stale")
            self.ok(y, "PlaceOrder", place_body(oid, 1000))
            self.ok(x, "CancelOrder", {"order_id": oid, "reason": "r"})
            st, h, body = y.command("RecordPayment", {
                "order_id": oid, "payment_id": "p1", "amount_cents": 100})
            cqtest.problem_errors(self, st, h, body, 422)
            s = self.stream(x, "order-" + oid)
            self.assertEqual([e["type"] for e in s["events"]],
                             ["OrderPlaced", "OrderCancelled"])

    def test_same_idempotency_key_on_two_nodes(self):
        a, b, c3 = self.clients
        rounds = 15
        replayed_by = {"first": 0, "second": 0}
        for i in range(rounds):
            key = uid("key")
            oid = uid("idem")
            body = place_body(oid, 700)
            pair = (a, b) if i % 2 == 0 else (c3, a)
            res = self.race([lambda cl=cl: cl.command("PlaceOrder", body, key=key)
                             for cl in pair])
            self.assertEqual([r[0] for r in res], [202, 202], res)
            self.assertEqual(res[0][2], res[1][2], "the two answers differ")
            rep = [r[1].get("idempotency-replayed") == "true" for r in res]
            self.assertEqual(sorted(rep), [False, True],
                             "want exactly one replayed answer: %r"
                             % [r[1] for r in res])
            replayed_by["first" if rep[0] else "second"] += 1
            s = self.stream(c3, "order-" + oid)
            self.assertEqual(len(s["events"]), 1, s)
            self.assertEqual(s["events"][0]["metadata"]["command_id"],
                             res[0][2]["command_id"])
            # and once more, later
            st, h, again = pair[1].command("PlaceOrder", body, key=key)
            self.assertEqual((st, again), (202, res[0][2]))
            self.assertEqual(h.get("idempotency-replayed"), "true")
        # same key, different request: 422 on every node
        for cl in self.clients:
            st, h, b2 = cl.command("PlaceOrder", place_body(uid("other"), 1), key=key)
            cqtest.problem_errors(self, st, h, b2, 422)
        log("same key on two nodes: %d rounds, one execution each (replayed: %r)"
            % (rounds, replayed_by))

    def test_fresh_reads_across_nodes(self):
        """A min_position/min_version query on node B (and a command's
        wait_for on node C) right after node A's 202: answered fresh, well
        within the default 500 ms wait."""
        names = ("order_summary", "payment_confirmation")
        lat = {n: [] for n in names}
        lat["min_version"] = []
        lat["wait_for"] = []
        for i in range(30):
            a = self.clients[i % 3]
            b = self.clients[(i + 1) % 3]
            oid = uid("fr")
            got = self.ok(a, "PlaceOrder", place_body(oid, 100 + i))
            pos = got["position"]
            for name in names:
                t0 = time.monotonic()
                st, _, body = b.get(qpath(name, {"order_id": oid, "min_position": pos,
                                                 "wait_ms": 500}))
                dt = time.monotonic() - t0
                self.assertEqual(st, 200, body)
                self.assertFalse(body["meta"]["stale"],
                                 "%s on another node timed out: %r" % (name, body))
                self.assertGreaterEqual(body["meta"]["position"], pos)
                self.assertEqual(body["data"]["order_id"], oid)
                lat[name].append(dt)
            # min_version of a payment made through a third node
            c = self.clients[(i + 2) % 3]
            self.ok(c, "RecordPayment", {"order_id": oid, "payment_id": "p",
                                         "amount_cents": 1})
            t0 = time.monotonic()
            st, _, body = a.get(qpath("order_summary", {"order_id": oid, "min_version": 2,
                                                        "wait_ms": 500}))
            lat["min_version"].append(time.monotonic() - t0)
            self.assertEqual(st, 200, body)
            self.assertFalse(body["meta"]["stale"], body)
            self.assertEqual(body["data"]["paid_cents"], 1)
            # a command through one node waiting for the projection
            t0 = time.monotonic()
            st, h, body = b.req("POST", "/commands/RecordPayment?wait_for=order_summaries"
                                "&wait_ms=5000", body={"order_id": oid,
                                                       "payment_id": "q",
                                                       "amount_cents": 1})
            lat["wait_for"].append(time.monotonic() - t0)
            self.assertEqual(st, 202, body)
            self.assertIs(body["stale"], False, body)
        for name, v in lat.items():
            log("%-22s on another node after the 202: p50 %.1f ms, p90 %.1f ms,"
                " max %.1f ms (%d)" % (name, 1000 * pct(v, 50), 1000 * pct(v, 90),
                                      1000 * max(v), len(v)))
            self.assertLess(max(v), 0.45 if name != "wait_for" else 4.5,
                            "%s: %r" % (name, v))

    def test_projections_run_on_one_node_each(self):
        names = ("order_summaries", "sales_dashboard")
        deadline = time.monotonic() + 10
        while True:
            holders = lock_holders(self.uri, names)
            if set(holders) == set(names) or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        self.assertEqual(set(holders), set(names),
                         "no node holds the projection locks: %r" % holders)
        owners = {name: node_of_port(self.nodes, pg_port_of(self.uri), port)
                  for name, port in holders.items()}
        for name, n in owners.items():
            self.assertIsNotNone(n, "the lock of %s is held by no node" % name)
            # /projections says the same: runs_here on the lock's node only
            self.assertEqual([runs_here(x, name) for x in self.nodes],
                             [x is n for x in self.nodes], name)
        log("projection owners: %r" % {k: self.nodes.index(v) for k, v in owners.items()})
        # every node answers /projections for them all, with the same view
        for c in self.clients:
            st, _, b = c.get("/projections")
            self.assertEqual(st, 200, b)
            names = {p["name"] for p in b["projections"]}
            self.assertTrue({"order_summaries", "sales_dashboard",
                             "payment_confirmation"} <= names, names)


# =============================================================================

class SeparateReadStoreTest(NodesTestBase):

    def test_two_nodes_with_a_read_store(self):
        store, read = self.database("rs_events"), self.database("rs_read")
        nodes = self.start_nodes(2, store, read_store=read)
        a, b = Client(nodes[0]), Client(nodes[1])
        try:
            oids = [uid("rs") for _ in range(10)]
            for i, oid in enumerate(oids):
                st, _, got = (a, b)[i % 2].command("PlaceOrder", place_body(oid, 10 + i))
                self.assertEqual(st, 202, got)
            head = a.head()
            for c in (a, b):
                d = self.fresh(c, "order_summary", {"order_id": oids[-1]}, head)
                self.assertEqual(d["total_cents"], 19)
                d = self.fresh(c, "payment_confirmation", {"order_id": oids[0]}, head)
                self.assertEqual(d["total_cents"], 10)
        finally:
            a.close()
            b.close()
        tables = lambda uri: {r[0] for r in cqtest.pg_rows(  # noqa: E731
            uri, "SELECT table_name FROM information_schema.tables"
            " WHERE table_schema = current_schema()")}
        in_store, in_read = tables(store), tables(read)
        self.assertIn("events", in_store)
        self.assertIn("payment_confirmations", in_store)   # inline: with the events
        self.assertIn("order_summaries", in_read)
        self.assertNotIn("order_summaries", in_store)
        self.assertNotIn("events", in_read)
        for n in nodes:
            n.stop()
        rc, out = self.verify(store, "--read-store", read)
        self.assertEqual(rc, 0, out)


# =============================================================================

class GapFreeTest(NodesTestBase):
    """4 nodes x 8 concurrent writers while a tail follows $all."""

    NODES = 4
    WRITERS = 8

    def test_every_event_seen_once_in_order(self):
        uri = self.database("gapfree")
        pdir = self.tmpdir()
        with open(os.path.join(pdir, "apply_log.sql"), "w") as f:
            f.write(APPLY_LOG_SQL)
        nodes = self.start_nodes(self.NODES, uri, args=["--projections", pdir])
        pg_port = pg_port_of(uri)
        stop = threading.Event()
        writers_done = threading.Event()
        lock = threading.Lock()
        acked = {}          # position -> (stream_id, version, type)
        orders = {}         # order_id -> {"total", "paid", "currency"}
        problems = []
        tail = []
        tail_problems = []
        max_conns = [0] * self.NODES

        def writer(k):
            node = nodes[k % self.NODES]
            c = Client(node, timeout=30)
            rnd = random.Random(k)
            n = 0
            try:
                while not stop.is_set():
                    n += 1
                    oid = "gf-%d-%d" % (k, n)
                    total = rnd.randint(1, 5000)
                    cur = ("EUR", "USD", "GBP")[rnd.randint(0, 2)]
                    st, _, b = c.command("PlaceOrder", place_body(oid, total,
                                                                  "c-%d" % k, cur))
                    if st != 202:
                        with lock:
                            problems.append(("PlaceOrder", oid, st, b))
                        continue
                    paid = 0
                    batches = [b]
                    if rnd.random() < 0.5:
                        amt = total if rnd.random() < 0.5 else max(1, total // 2)
                        st, _, b2 = c.command("RecordPayment", {
                            "order_id": oid, "payment_id": "p", "amount_cents": amt})
                        if st != 202:
                            with lock:
                                problems.append(("RecordPayment", oid, st, b2))
                        else:
                            paid = amt
                            batches.append(b2)
                    with lock:
                        orders[oid] = {"total": total, "paid": paid, "currency": cur}
                        for bb in batches:
                            for e in bb["events"]:
                                if e["position"] in acked:
                                    problems.append(("position acknowledged twice",
                                                     e["position"]))
                                acked[e["position"]] = (bb["stream_id"], e["version"],
                                                        e["type"])
            except BaseException as e:  # noqa: BLE001
                with lock:
                    problems.append(("writer", k, repr(e)))
            finally:
                c.close()

        def tailer():
            clients = [Client(n, timeout=30) for n in nodes]
            nxt, last, i = 1, 0, 0
            try:
                while True:
                    done = writers_done.is_set()
                    c = clients[i % len(clients)]
                    i += 1
                    st, _, b = c.get("/streams/$all?from_position=%d&limit=1000" % nxt)
                    if st != 200:
                        tail_problems.append((st, b))
                        return
                    for e in b["events"]:
                        if e["position"] <= last:
                            tail_problems.append(("not after %d" % last, e["position"]))
                        last = e["position"]
                        tail.append((e["position"], e["stream_id"], e["version"],
                                     e["type"]))
                    nxt = b["next_position"]
                    if done and nxt > b["head_position"]:
                        return   # read after the last write: nothing more comes
                    if not b["events"]:
                        time.sleep(0.005)
            except BaseException as e:  # noqa: BLE001
                tail_problems.append(repr(e))
            finally:
                for c in clients:
                    c.close()

        def sampler():
            while not stop.is_set():
                table = _tcp_table()
                for j, n in enumerate(nodes):
                    if n.running():
                        max_conns[j] = max(max_conns[j],
                                           len(pg_sockets(n.proc.pid, pg_port, table)))
                time.sleep(0.1)

        ws = [threading.Thread(target=writer, args=(k,))
              for k in range(self.NODES * self.WRITERS)]
        tt = threading.Thread(target=tailer)
        st_ = threading.Thread(target=sampler)
        t0 = time.monotonic()
        for t in ws + [tt, st_]:
            t.start()
        time.sleep(GAPFREE_SECONDS)
        stop.set()
        for t in ws:
            t.join()
        writers_done.set()
        elapsed = time.monotonic() - t0
        tt.join(120)
        st_.join()
        self.assertFalse(tt.is_alive(), "the tail did not reach the head")
        self.assertEqual(problems[:5], [])
        self.assertEqual(tail_problems[:5], [])
        log("gap-free: %d nodes x %d writers, %.1f s: %d orders, %d events "
            "acknowledged (%.0f events/s); tail read %d events"
            % (self.NODES, self.WRITERS, elapsed, len(orders), len(acked),
               len(acked) / elapsed, len(tail)))
        log("most connections to PostgreSQL per node: %r (--pg-connections default %d)"
            % (max_conns, DEFAULT_PG_CONNECTIONS))
        self.assertGreater(len(acked), 100, "too little was written to test anything")

        # the tail: exactly the store's events, each once, in order
        c = Client(nodes[0])
        try:
            final, head = c.read_all()
            final_t = [(e["position"], e["stream_id"], e["version"], e["type"])
                       for e in final]
            tail_pos = [p[0] for p in tail]
            self.assertEqual(len(tail_pos), len(set(tail_pos)), "the tail saw an event twice")
            missing = sorted(set(acked) - set(tail_pos))
            self.assertEqual(missing[:20], [], "acknowledged events the tail skipped "
                             "(%d of %d)" % (len(missing), len(acked)))
            self.assertEqual(tail, final_t, "the tail differs from the store's $all")
            self.assertEqual(sorted(acked), [p[0] for p in final_t],
                             "the store holds events nobody acknowledged, or lacks some")
            for p, sid, v, t in final_t:
                self.assertEqual(acked[p], (sid, v, t), "position %d" % p)

            # every projection, on every node, against the acknowledged commands
            for n in nodes:
                cc = Client(n)
                try:
                    self.fresh(cc, "sales_dashboard", {}, head)
                    self.fresh(cc, "apply_log_summary", {}, head)
                finally:
                    cc.close()
            dash = self.fresh(c, "sales_dashboard", {}, head)
            placed = sum(1 for o in orders.values() if o["paid"] < o["total"])
            paid = len(orders) - placed
            want_status = [r for r in ({"status": "paid", "orders": paid},
                                       {"status": "placed", "orders": placed})
                           if r["orders"]]
            self.assertEqual(dash["by_status"], want_status)
            by_cur = {}
            for o in orders.values():
                r = by_cur.setdefault(o["currency"], {"currency": o["currency"],
                                                      "orders": 0, "revenue_cents": 0})
                r["orders"] += 1
                r["revenue_cents"] += o["paid"]
            self.assertEqual(dash["by_currency"], [by_cur[k] for k in sorted(by_cur)])
            summary = self.fresh(c, "apply_log_summary", {}, head)
            self.assertEqual(summary, {
                "applied": len(final_t), "positions": len(final_t),
                "position_sum": sum(p[0] for p in final_t), "max_position": head,
                "out_of_order": 0}, "apply_log: events skipped, repeated or out of order")
            st, _, reps = c.get(qpath("apply_log_repeats"))
            self.assertEqual((st, reps["data"]), (200, []))
            # each order's rows: the async summary and the inline confirmation
            clients = [Client(n) for n in nodes]
            try:
                for i, (oid, o) in enumerate(sorted(orders.items())):
                    cl = clients[i % len(clients)]
                    s = self.fresh(cl, "order_summary", {"order_id": oid}, head)
                    self.assertEqual((s["total_cents"], s["paid_cents"], s["status"]),
                                     (o["total"], o["paid"],
                                      "paid" if o["paid"] == o["total"] else "placed"),
                                     oid)
                    st, _, pc = cl.get(qpath("payment_confirmation", {"order_id": oid}))
                    self.assertEqual(st, 200, pc)
                    self.assertEqual(pc["data"]["paid_cents"], o["paid"], oid)
            finally:
                for cl in clients:
                    cl.close()
        finally:
            c.close()
        for j, m in enumerate(max_conns):
            self.assertLessEqual(m, DEFAULT_PG_CONNECTIONS, "node %d" % j)
        rc, out = self.verify(uri, "--projections", pdir)
        self.assertEqual(rc, 0, out)


# =============================================================================

class TakeoverTest(NodesTestBase):

    def test_sigkill_projector_node_under_load(self):
        uri = self.database("takeover")
        pdir = self.tmpdir()
        with open(os.path.join(pdir, "apply_log.sql"), "w") as f:
            f.write(APPLY_LOG_SQL)
        nodes = self.start_nodes(3, uri, args=["--projections", pdir], together=False)
        pg_port = pg_port_of(uri)
        deadline = time.monotonic() + 10
        while True:
            holders = lock_holders(uri, ASYNC_PROJECTIONS)
            if set(holders) == set(ASYNC_PROJECTIONS) or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        self.assertEqual(set(holders), set(ASYNC_PROJECTIONS), holders)
        # the node that runs them, from /projections; PostgreSQL agrees
        here = [n for n in nodes if runs_here(n, "order_summaries")]
        self.assertEqual(len(here), 1, "nodes saying they run order_summaries: %d"
                         % len(here))
        victim = here[0]
        self.assertIs(node_of_port(nodes, pg_port, holders["order_summaries"]), victim,
                      "the lock of order_summaries is not the victim's")
        survivors = [n for n in nodes if n is not victim]

        stop = threading.Event()
        lock = threading.Lock()
        acked = []
        problems = []

        # The load is paced (TAKEOVER_ORDERS_PER_S in all) so that one node's
        # projector keeps up with it: the test is about the takeover, not
        # about whether the projections outrun the writers (bench/ measures
        # that: bench/pg_catchup.sh). Unpaced, 8 writers on a machine shared
        # with other work can commit faster than the projector applies, and
        # the backlog at the kill then depends on the machine.
        period = 8.0 / TAKEOVER_ORDERS_PER_S

        def writer(k):
            c = Client(survivors[k % len(survivors)], timeout=30)
            n = 0
            due = time.monotonic()
            try:
                while not stop.is_set():
                    due += period
                    pause = due - time.monotonic()
                    if pause > 0:
                        time.sleep(pause)
                    n += 1
                    oid = "tk-%d-%d" % (k, n)
                    st, _, b = c.command("PlaceOrder", place_body(oid, 100))
                    if st != 202:
                        problems.append((st, b))
                        continue
                    st, _, b2 = c.command("RecordPayment", {
                        "order_id": oid, "payment_id": "p", "amount_cents": 100})
                    with lock:
                        acked.append(oid)
                        if st != 202:
                            problems.append((st, b2))
            except BaseException as e:  # noqa: BLE001
                problems.append(repr(e))
            finally:
                c.close()

        ws = [threading.Thread(target=writer, args=(k,)) for k in range(8)]
        for t in ws:
            t.start()
        try:
            time.sleep(3)
            c = Client(survivors[0])
            head = c.head()
            before = self.fresh(c, "apply_log_summary", {}, head, wait_ms=10000)
            self.assertGreater(before["applied"], 0)
            self.fresh(c, "sales_dashboard", {}, head, wait_ms=10000)
            head_at_kill = c.head()
            t_kill = time.monotonic()
            victim.kill()
            # another node holds every lock within 5 s
            took = None
            while time.monotonic() - t_kill < 5.0:
                h = lock_holders(uri, ASYNC_PROJECTIONS)
                owners = {name: node_of_port(survivors, pg_port, p)
                          for name, p in h.items()}
                if len(owners) == len(ASYNC_PROJECTIONS) and \
                        all(o is not None for o in owners.values()):
                    took = time.monotonic() - t_kill
                    break
                time.sleep(0.02)
            self.assertIsNotNone(took, "no surviving node took the projections within 5 s:"
                                 " %r" % lock_holders(uri, ASYNC_PROJECTIONS))
            # and /projections says so (by 5 s after the kill)
            for name, owner in owners.items():
                while True:
                    said = [runs_here(x, name) for x in survivors]
                    if said == [x is owner for x in survivors] or \
                            time.monotonic() - t_kill > 5.0:
                        break
                    time.sleep(0.02)
                self.assertEqual(said, [x is owner for x in survivors], name)
            # and they move on: within 5 s of the kill every event committed
            # before it is applied (the writers keep going meanwhile, so the
            # moving head is a matter of throughput, checked after the load)
            head = head_at_kill
            for name in ("sales_dashboard", "apply_log_summary"):
                left = max(0.1, 5.0 - (time.monotonic() - t_kill))
                st, _, b = c.get(qpath(name, {"min_position": head,
                                              "wait_ms": int(left * 1000)}))
                self.assertEqual(st, 200, b)
                self.assertFalse(b["meta"]["stale"], "%s not moving %.1f s after the kill:"
                                 " %r" % (name, time.monotonic() - t_kill, b["meta"]))
            caught = time.monotonic() - t_kill
            time.sleep(2)
        finally:
            stop.set()
            for t in ws:
                t.join()
        self.assertEqual(problems[:5], [])
        head = c.head()
        final, _ = c.read_all()
        summary = self.fresh(c, "apply_log_summary", {}, head)
        self.assertEqual(summary, {
            "applied": len(final), "positions": len(final),
            "position_sum": sum(e["position"] for e in final), "max_position": head,
            "out_of_order": 0}, "events applied twice, skipped or out of order")
        dash = self.fresh(c, "sales_dashboard", {}, head)
        self.assertEqual(dash["by_status"], [{"status": "paid", "orders": len(acked)}])
        for oid in acked[::max(1, len(acked) // 50)]:
            s = self.fresh(c, "order_summary", {"order_id": oid}, head)
            self.assertEqual(s["status"], "paid")
        c.close()
        log("takeover: locks held by a survivor %.0f ms after SIGKILL, projections "
            "caught up with the head at the kill %.0f ms after; %d orders paid during the run"
            % (took * 1000, caught * 1000, len(acked)))
        for n in survivors:
            n.stop()
        rc, out = self.verify(uri, "--projections", pdir)
        self.assertEqual(rc, 0, out)


# =============================================================================

class FaultsTest(NodesTestBase):
    """On a PostgreSQL cluster of its own, which it stops and starts."""

    @classmethod
    def setUpClass(cls):
        cls.state = tempfile.mkdtemp(prefix="cqrsd-pgfault-")
        p = subprocess.run(["sh", PG_SH, "start", cls.state], capture_output=True,
                           timeout=180)
        if p.returncode != 0:
            shutil.rmtree(cls.state, ignore_errors=True)
            raise AssertionError("pg.sh start: %s" % p.stderr.decode())
        with open(os.path.join(cls.state, "uri")) as f:
            cls.admin = f.read().strip()

    @classmethod
    def tearDownClass(cls):
        subprocess.run(["sh", PG_SH, "stop", cls.state], capture_output=True, timeout=180)
        shutil.rmtree(cls.state, ignore_errors=True)

    def pg(self, cmd):
        p = subprocess.run(["sh", PG_SH, cmd, self.state], capture_output=True,
                           timeout=180)
        self.assertEqual(p.returncode, 0, "pg.sh %s: %s" % (cmd, p.stderr.decode()))

    def own_database(self, tag):
        name = "f_%s_%d_%s" % (tag, os.getpid(), cqtest.RUN)
        cqtest.pg_exec(self.admin, 'CREATE DATABASE "%s"' % name)
        return cqtest.pg_uri_for(self.admin, name)

    def run_serve(self, args, timeout=30):
        """cqrsd serve that must exit by itself; (exit code, stderr)."""
        port = cqtest.free_port()
        p = subprocess.run([cqtest.BINARY, "serve", "--listen", "127.0.0.1:%d" % port]
                           + args, stdin=subprocess.DEVNULL, capture_output=True,
                           timeout=timeout, cwd=self.tmpdir())
        return p.returncode, p.stderr.decode("utf-8", "replace")

    def test_unreachable_at_start(self):
        port = cqtest.free_port()
        bad = "postgresql://cqrs:hunter2-secret@127.0.0.1:%d/x" % port
        shown = "postgresql://cqrs:***@127.0.0.1:%d/x" % port
        good = self.own_database("unreach")
        cases = [("--store", ["--store", bad]),
                 ("--read-store", ["--store", good, "--read-store", bad])]
        for what, args in cases:
            with self.subTest(what=what):
                t0 = time.monotonic()
                rc, err = self.run_serve(args)
                dt = time.monotonic() - t0
                self.assertEqual(rc, 2, err)
                lines = [ln for ln in err.splitlines() if ln.strip()]
                self.assertEqual(len(lines), 1, "want one line on stderr: %r" % err)
                self.assertIn(shown, lines[0])
                self.assertNotIn("hunter2", err)
                self.assertLess(dt, 20)
                log("unreachable %s: exit 2 after %.2f s: %s" % (what, dt, lines[0]))
        # a wrong password: the same, the password not shown
        wrong = good.replace(":cqrs-test@", ":not-the-password@")
        rc, err = self.run_serve(["--store", wrong])
        self.assertEqual(rc, 2, err)
        self.assertEqual(len([ln for ln in err.splitlines() if ln.strip()]), 1, err)
        self.assertNotIn("not-the-password", err)
        self.assertIn(":***@", err)

    def test_restart_under_load(self):
        """Two outages under 8 writers: after the first, queries on new
        connections (each HTTP thread's read connection was cut while
        idle) must be answered once /readyz says ready; during the second a
        query answers 503 at once."""
        uri = self.own_database("restart")
        conns = 6
        node = self.start_nodes(1, uri, args=["--pg-connections", str(conns)])[0]
        pid = node.proc.pid
        lock = threading.Lock()
        log_ = []       # (t_sent, t_answered, status, order_id, position)
        stop = threading.Event()
        problems = []
        max_seen = [0]
        samples = [0]

        def writer(k):
            c = Client(node, timeout=30)
            n = 0
            try:
                while not stop.is_set():
                    n += 1
                    oid = "rs-%d-%d" % (k, n)
                    t0 = time.monotonic()
                    try:
                        st, _, b = c.command("PlaceOrder", place_body(oid, 100))
                    except OSError as e:
                        with lock:
                            problems.append(("no answer", oid, repr(e)))
                        continue
                    with lock:
                        log_.append((t0, time.monotonic(), st, oid,
                                     b["position"] if st == 202 else None))
                        if st not in (202, 503):
                            problems.append((st, oid, b))
                    if st == 503:
                        time.sleep(0.01)
            finally:
                c.close()

        def sampler():
            while not stop.is_set():
                try:
                    rows = cqtest.pg_rows(self.admin, "SELECT count(*) FROM pg_stat_activity"
                                          " WHERE application_name = 'cqrsd'")
                    with lock:
                        max_seen[0] = max(max_seen[0], rows[0][0])
                        samples[0] += 1
                except AssertionError:
                    pass    # the cluster is down
                time.sleep(0.1)

        def query(oid, **params):
            qc = Client(node, timeout=30)     # a new connection: any HTTP thread
            try:
                t0 = time.monotonic()
                res = qc.get(qpath("order_summary", dict(params, order_id=oid)))
                return res, time.monotonic() - t0
            finally:
                qc.close()

        def outage(seconds, probe):
            """Stop PostgreSQL for `seconds` (probe: one query meanwhile);
            returns (t_down, t_up, probe answer and its time, seconds from
            up to the next 202)."""
            t0 = time.monotonic()
            self.pg("down")
            t_down = time.monotonic()
            probed = None
            if probe:
                time.sleep(1)
                with lock:
                    some = [e[3] for e in log_ if e[2] == 202][0]
                probed = query(some)
            time.sleep(max(0.0, seconds - (time.monotonic() - t_down)))
            t_up = time.monotonic()
            self.pg("up")
            t_up_done = time.monotonic()
            back = None
            while time.monotonic() - t_up_done < 30:
                with lock:
                    later = [e for e in log_ if e[0] > t_up_done and e[2] == 202]
                if later:
                    back = later[0][1] - t_up_done
                    break
                time.sleep(0.05)
            self.assertIsNotNone(back, "no 202 within 30 s of PostgreSQL being back")
            return {"down_s": t_down - t0, "t_down": t_down, "t_up": t_up,
                    "up_s": t_up_done - t_up, "back_s": back, "probe": probed}

        def ready():
            c = Client(node)
            try:
                deadline = time.monotonic() + 30
                st, _, r = c.get("/readyz")
                while st != 200 and time.monotonic() < deadline:
                    time.sleep(0.2)
                    st, _, r = c.get("/readyz")
                self.assertEqual(st, 200, r)
            finally:
                c.close()

        ws = [threading.Thread(target=writer, args=(k,)) for k in range(8)]
        ts = ws + [threading.Thread(target=sampler)]
        for t in ts:
            t.start()
        try:
            time.sleep(3)
            # queries open the read connections the outage will cut
            with lock:
                before = [e for e in log_ if e[2] == 202][:20]
            for e in before:
                (st, _, b), _ = query(e[3], min_position=e[4], wait_ms=10000)
                self.assertEqual(st, 200, b)
            first = outage(4, probe=False)
            ready()
            with lock:
                recent = [e for e in log_ if e[2] == 202][-40:]
            failed = []
            for e in recent:
                (st, _, b), _ = query(e[3], min_position=e[4], wait_ms=10000)
                if st != 200 or b["meta"]["stale"]:
                    failed.append((st, b))
            time.sleep(1)
            second = outage(3, probe=True)
            time.sleep(2)
        finally:
            stop.set()
            for t in ts:
                t.join()
        self.assertEqual(node.proc.pid if node.proc else None, pid, "the process went away")
        node.check_alive()
        self.assertEqual(problems[:5], [])
        self.assertEqual(failed[:3], [], "%d of %d queries failed after /readyz said ready"
                         " (after the first outage)" % (len(failed), len(recent)))
        during = [e for o in (first, second) for e in log_
                  if e[0] > o["t_down"] and e[1] < o["t_up"]]
        wrong = [e for e in during if e[2] == 202]
        self.assertEqual(wrong[:5], [], "202 while PostgreSQL was down")
        self.assertTrue(any(e[2] == 503 for e in during), "no 503 while it was down")
        (st, h, b), t_q = second["probe"]
        cqtest.problem_errors(self, st, h, b, 503)
        self.assertLess(t_q, 5.0, "a query took %.1f s while PostgreSQL was down" % t_q)

        ready()
        c = Client(node)
        try:
            final, head = c.read_all()
            per_stream = {}
            for e in final:
                per_stream[e["stream_id"]] = per_stream.get(e["stream_id"], 0) + 1
            ok = [e[3] for e in log_ if e[2] == 202]
            refused = [e[3] for e in log_ if e[2] == 503]
            for oid in ok:
                self.assertEqual(per_stream.get("order-" + oid), 1, oid)
            self.assertEqual(sorted(per_stream.values())[-1:], [1])
            committed_503 = [o for o in refused if ("order-" + o) in per_stream]
            # the projections caught up again, on the same process
            s = self.fresh(c, "order_summary", {"order_id": ok[-1]}, head)
            self.assertEqual(s["order_id"], ok[-1])
        finally:
            c.close()
        for name, o in (("first", first), ("second", second)):
            log("outage %s: pg.sh down took %.1f s, up %.1f s; first 202 %.2f s after up"
                % (name, o["down_s"], o["up_s"], o["back_s"]))
        log("PostgreSQL restarts under load: %d x 202, %d x 503 (%d sent and answered while"
            " it was down, none 202); a query while down: 503 in %.0f ms; 503s whose order"
            " is in the store anyway (commit outcome lost with the connection): %d; most"
            " cqrsd connections %d (--pg-connections %d, %d samples)"
            % (len(ok), len(refused), len(during), t_q * 1000, len(committed_503),
               max_seen[0], conns, samples[0]))
        self.assertGreater(max_seen[0], 0)
        self.assertLessEqual(max_seen[0], conns)
        node.stop()


if __name__ == "__main__":
    if not cqtest.PG and not os.environ.get("CQ_TEST_PG_DIR"):
        sys.stderr.write("test_pg_nodes.py needs CQ_TEST_PG_DIR (ctest fixture pg)\n")
    cqtest.main()
