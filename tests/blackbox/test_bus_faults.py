"""The bus under faults: nodes on a PostgreSQL store, `cqrsd relay`
processes publishing to NATS JetStream, while writers send commands.

Each test runs on a PostgreSQL cluster of the class's own (scripts/pg.sh:
it is stopped and started by one of them) and a nats-server of its own
(scripts/nats.sh), and breaks one thing under load:

- SIGKILL the active relay mid-stream: the standby holds the lock and
  publishes within 5 s;
- restart nats-server (its store kept);
- stop nats-server for 10 s under load;
- restart PostgreSQL under load.

Each time, once the load stops: every acknowledged command's events are in
the store once; the stream holds every event of the store once, in
position order, with its event id as Nats-Msg-Id (the relay's lag is zero);
`cqrsd verify --store URI` passes (read models equal a replay).

    python3 tests/blackbox/test_bus_faults.py build/cqrsd
"""
import os
import shutil
import sys
import tempfile
import threading
import time
import unittest
import urllib.parse

sys.dont_write_bytecode = True

import cqtest  # noqa: E402
import bustest  # noqa: E402
from bustest import log  # noqa: E402
from cqtest import Client, Server  # noqa: E402

STREAM = "CQRS_EVENTS"
SETTLE_SECONDS = 60      # for the relay to catch up after a fault (bound)


def place(oid, cents=700, cur="EUR"):
    return {"order_id": oid, "customer_id": "c-bus", "currency": cur,
            "items": [{"sku": "s", "quantity": 1, "unit_price_cents": cents}]}


def qpath(name, params):
    return "/queries/%s?%s" % (name, urllib.parse.urlencode(list(params.items())))


class Load:
    """Writer threads on the nodes (round robin): PlaceOrder, then a
    payment of the whole total (two more events). Answers other than 202
    are allowed only while `tolerate` is set (503 while PostgreSQL is
    down); a 202 is an acknowledged command."""

    def __init__(self, nodes, threads=4, pace=0.0):
        self.nodes = nodes
        self.threads = threads
        self.pace = pace
        self.stop_ev = threading.Event()
        self.lock = threading.Lock()
        self.acked = []          # order ids whose PlaceOrder was 202
        self.paid = []           # order ids whose RecordPayment was 202
        self.refused = {}        # status -> count
        self.problems = []
        self.tolerate = threading.Event()
        self.ts = []

    def start(self):
        for k in range(self.threads):
            t = threading.Thread(target=self._run, args=(k,))
            t.start()
            self.ts.append(t)
        return self

    def _run(self, k):
        c = Client(self.nodes[k % len(self.nodes)], timeout=30)
        n = 0
        try:
            while not self.stop_ev.is_set():
                n += 1
                oid = "bf-%s-%d-%d" % (cqtest.RUN, k, n)
                try:
                    st, _, b = c.command("PlaceOrder", place(oid))
                except OSError as e:
                    with self.lock:
                        if not self.tolerate.is_set():
                            self.problems.append(("no answer", oid, repr(e)))
                    time.sleep(0.05)
                    continue
                if st != 202:
                    with self.lock:
                        self.refused[st] = self.refused.get(st, 0) + 1
                        if not self.tolerate.is_set() or st != 503:
                            self.problems.append((st, oid, b))
                    time.sleep(0.02)
                    continue
                with self.lock:
                    self.acked.append(oid)
                try:
                    st, _, b = c.command("RecordPayment", {
                        "order_id": oid, "payment_id": "p", "amount_cents": 700})
                except OSError:
                    continue
                if st == 202:
                    with self.lock:
                        self.paid.append(oid)
                if self.pace:
                    time.sleep(self.pace)
        finally:
            c.close()

    def stop(self):
        self.stop_ev.set()
        for t in self.ts:
            t.join()


class BusFaultsTest(unittest.TestCase):
    maxDiff = 4000

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="cqrsd-busfault-")
        cls.pg = bustest.Pg(os.path.join(cls.tmp, "pg")).start()

    @classmethod
    def tearDownClass(cls):
        try:
            cls.pg.stop()
        finally:
            shutil.rmtree(cls.tmp, ignore_errors=True)

    def setUp(self):
        self.t_start = time.monotonic()
        self.nodes = []
        self.procs = []
        self.nats = bustest.Nats(tempfile.mkdtemp(prefix="nats-", dir=self.tmp)).start()
        self.uri = self.pg.database(self._testMethodName.replace("test_", "")[:12])

    def tearDown(self):
        errors = []
        for p in self.procs:
            try:
                p.stop()
            except AssertionError as e:
                errors.append(e)
        for n in self.nodes:
            try:
                n.close()
            except AssertionError as e:
                errors.append(e)
        self.nats.stop()
        log("%s: %.1f s" % (self._testMethodName, time.monotonic() - self.t_start))
        if errors:
            raise errors[0]

    # ---- the pipeline ------------------------------------------------------

    def start_nodes(self, n=2):
        nodes = [Server(cqtest.BINARY, store=self.uri, data_arg=False) for _ in range(n)]
        self.nodes.extend(nodes)
        for s in nodes:
            s.start()
        return nodes

    def relay(self, name):
        p = bustest.Proc(["relay", "--store", self.uri, "--bus", self.nats.url],
                         os.path.join(self.tmp, "%s-%s.log" % (self._testMethodName, name)))
        self.procs.append(p)
        return p.start()

    def wait_log(self, proc, text, seconds, after=0):
        """Seconds until proc's log has `text` after offset `after`, or
        None after `seconds`."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < seconds:
            if text in proc.log_text()[after:]:
                return time.monotonic() - t0
            time.sleep(0.02)
        return None

    def stream_count(self):
        try:
            js = bustest.JetStream(self.nats.url, timeout=5)
        except OSError:
            return None
        try:
            return js.stream_info(STREAM)["state"]["messages"]
        except (AssertionError, OSError):
            return None
        finally:
            js.close()

    def settle(self, load):
        """After the load: the relay publishes up to the head within
        SETTLE_SECONDS; then check the store and the stream."""
        c = Client(self.nodes[0])
        events, head = c.read_all()
        c.close()
        t0 = time.monotonic()
        n = None
        while time.monotonic() - t0 < SETTLE_SECONDS:
            n = self.stream_count()
            if n is not None and n >= head:
                break
            time.sleep(0.1)
        caught_up = time.monotonic() - t0
        self.assertEqual(n, head, "the stream holds %r messages, the store %d events, %.0f s"
                         " after the load stopped" % (n, head, SETTLE_SECONDS))
        # no acknowledged command lost, none applied twice in the store
        per_stream = {}
        for e in events:
            per_stream[e["stream_id"]] = per_stream.get(e["stream_id"], 0) + 1
        for oid in load.acked:
            self.assertIn(per_stream.get("order-" + oid), (1, 3), oid)
        for oid in load.paid:
            self.assertEqual(per_stream.get("order-" + oid), 3, oid)
        self.assertEqual([e["position"] for e in events], list(range(1, head + 1)))
        # the stream: every event once, in position order, its id as Nats-Msg-Id
        js = bustest.JetStream(self.nats.url)
        try:
            msgs = js.messages(STREAM)
        finally:
            js.close()
        self.assertEqual(bustest.relay_positions(msgs), list(range(1, head + 1)),
                         "the stream is not the store's events once each in order")
        self.assertEqual([m[2]["Nats-Msg-Id"] for m in msgs],
                         [e["metadata"]["event_id"] for e in events])
        self.assertEqual([m[2]["Cqrs-Type"] for m in msgs], [e["type"] for e in events])
        return head, caught_up

    def verify(self):
        p = cqtest.subprocess.run([cqtest.BINARY, "verify", "--store", self.uri],
                                  stdin=cqtest.subprocess.DEVNULL, capture_output=True,
                                  timeout=300)
        out = (p.stdout + p.stderr).decode("utf-8", "replace")
        for pat in cqtest.SANITIZER_PATTERNS:
            self.assertNotIn(pat, out)
        self.assertEqual(p.returncode, 0, out)

    def finish(self, load):
        load.stop()
        self.assertEqual(load.problems[:5], [])
        self.assertGreater(len(load.acked), 0)
        head, caught = self.settle(load)
        for n in self.nodes:
            n.check_alive()
        self.verify()
        return head, caught

    # ---- the faults ---------------------------------------------------------

    def test_relay_sigkill_standby_takes_over(self):
        self.start_nodes(2)
        a = self.relay("a")
        self.assertIsNotNone(self.wait_log(a, "holds the relay lock", 20), a.log_text())
        b = self.relay("b")
        load = Load(self.nodes).start()
        try:
            time.sleep(2)
            before = self.stream_count()
            self.assertGreater(before or 0, 0, "nothing published before the kill")
            mark = len(b.log_text())
            t_kill = time.monotonic()
            a.kill()
            took = self.wait_log(b, "holds the relay lock", 5.0, after=0)
            self.assertIsNotNone(took, "the standby did not take the lock within 5 s:\n"
                                 + b.log_text())
            # and publishes: the stream grows within 5 s of the kill
            grew = None
            while time.monotonic() - t_kill < 5.0:
                n = self.stream_count()
                if n is not None and n > before:
                    grew = time.monotonic() - t_kill
                    break
                time.sleep(0.05)
            self.assertIsNotNone(grew, "the stream did not grow within 5 s of the kill")
            time.sleep(1)
        finally:
            load.stop()
        head, caught = self.finish(load)
        self.assertNotIn("holds the relay lock", b.log_text()[:mark])
        log("relay SIGKILL: standby holds the lock %.0f ms after, the stream grows %.0f"
            " ms after; %d events, caught up %.1f s after the load" %
            (took * 1000, grew * 1000, head, caught))

    def test_nats_restart(self):
        self.start_nodes(2)
        r = self.relay("a")
        load = Load(self.nodes).start()
        try:
            time.sleep(2)
            self.nats.down()
            time.sleep(0.5)
            self.nats.up()
            t_up = time.monotonic()
            mark = self.stream_count()
            back = None
            while time.monotonic() - t_up < 15:
                n = self.stream_count()
                if n is not None and mark is not None and n > mark:
                    back = time.monotonic() - t_up
                    break
                time.sleep(0.05)
            self.assertIsNotNone(back, "nothing published within 15 s of the restart:\n"
                                 + r.log_text())
            time.sleep(1)
        finally:
            load.stop()
        head, caught = self.finish(load)
        log("nats-server restart: publishing again %.2f s after it was up; %d events"
            % (back, head))

    def test_nats_down_10s_under_load(self):
        self.start_nodes(2)
        self.relay("a")
        self.relay("b")
        load = Load(self.nodes).start()
        try:
            time.sleep(2)
            self.nats.down()
            t_down = time.monotonic()
            acked_before = len(load.acked)
            time.sleep(10)
            acked_during = len(load.acked) - acked_before
            self.nats.up()
            time.sleep(2)
        finally:
            load.stop()
        head, caught = self.finish(load)
        self.assertGreater(acked_during, 0, "commands must go on while NATS is down")
        log("nats-server down 10 s: %d commands acknowledged meanwhile; the relay caught"
            " up to %d events %.1f s after the load stopped (%.1f s after the stop began)"
            % (acked_during, head, caught, time.monotonic() - t_down))

    def test_pg_restart_under_load(self):
        self.start_nodes(2)
        r = self.relay("a")
        self.relay("b")
        load = Load(self.nodes).start()
        try:
            time.sleep(2)
            load.tolerate.set()
            self.pg.down()
            time.sleep(2)
            self.pg.up()
            # the nodes answer 202 again
            t_up = time.monotonic()
            n0 = len(load.acked)
            while len(load.acked) == n0 and time.monotonic() - t_up < 30:
                time.sleep(0.05)
            self.assertGreater(len(load.acked), n0, "no 202 within 30 s of PostgreSQL up")
            back = time.monotonic() - t_up
            load.tolerate.clear()
            time.sleep(2)
        finally:
            load.stop()
        head, caught = self.finish(load)
        log("PostgreSQL restart: 202 again %.2f s after up (%r refused meanwhile); %d"
            " events; relay caught up %.1f s after the load" % (back, load.refused, head,
                                                                caught))
        self.assertIn("relay", r.log_text())


if __name__ == "__main__":
    cqtest.main()
