"""The bus under faults: three parts on one PostgreSQL store -- API nodes
(`serve --projector off`), `cqrsd relay` processes publishing to NATS
JetStream, and `cqrsd project` workers applying the asynchronous
projections from it -- while writers send commands.

Each test runs on a PostgreSQL cluster of the class's own (scripts/pg.sh:
one of them stops and starts it) and a nats-server of its own
(scripts/nats.sh), and breaks one thing under load:

- SIGKILL the active relay mid-stream: the standby holds the lock and
  publishes within 5 s;
- SIGKILL a worker between its commit and its ack: its acknowledgements
  are withheld (a proxy in front of NATS swallows them) while it commits,
  then it is killed; the standby takes its projections within 5 s, and
  JetStream redelivers what it had applied -- skipped by the checkpoint;
- restart nats-server (its store kept);
- stop nats-server for 10 s under load;
- restart PostgreSQL under load.

Each time, once the load stops: every acknowledged command's events are in
the store once; the stream holds every event of the store once, in
position order, with its event id as Nats-Msg-Id (the relay's lag is
zero); every projection is fresh at the head on every node (lag_events 0);
the apply_log projection (test_pg_nodes.py) shows every event applied once,
in order; `cqrsd verify --store URI` passes (read models equal a replay).
While the read side cannot move (NATS down, a worker's batch waiting for
redelivery), a `min_position` wait on a node answers 200 stale with the
warning when its wait_ms is over, rather than hang.

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
import test_pg_nodes  # noqa: E402
from bustest import log  # noqa: E402
from cqtest import Client, Server  # noqa: E402

STREAM = "CQRS_EVENTS"
SETTLE_SECONDS = 60      # for the relay and workers to catch up (bound)
PROJECTIONS = test_pg_nodes.ASYNC_PROJECTIONS
QUERY_OF = {"order_summaries": ("order_summary", True),
            "sales_dashboard": ("sales_dashboard", False),
            "apply_log": ("apply_log_summary", False)}


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
        if os.environ.get("CQ_KEEP"):
            log("CQ_KEEP: kept %s (PostgreSQL still running)" % cls.tmp)
            return
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
        self.pdir = tempfile.mkdtemp(prefix="proj-", dir=self.tmp)
        with open(os.path.join(self.pdir, "apply_log.sql"), "w") as f:
            f.write(test_pg_nodes.APPLY_LOG_SQL)
        self.proxies = []

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
        for x in self.proxies:
            x.close()
        if not os.environ.get("CQ_KEEP"):
            self.nats.stop()
        log("%s: %.1f s" % (self._testMethodName, time.monotonic() - self.t_start))
        if errors:
            raise errors[0]

    # ---- the pipeline ------------------------------------------------------

    def start_nodes(self, n=2):
        nodes = [Server(cqtest.BINARY, store=self.uri, data_arg=False,
                        args=["--projector", "off", "--projections", self.pdir])
                 for _ in range(n)]
        self.nodes.extend(nodes)
        for s in nodes:
            s.start()
        return nodes

    def relay(self, name):
        port = cqtest.free_port()
        p = bustest.Proc(["relay", "--store", self.uri, "--bus", self.nats.url,
                          "--listen", "127.0.0.1:%d" % port],
                         os.path.join(self.tmp, "%s-%s.log" % (self._testMethodName, name)))
        p.port = port
        self.procs.append(p)
        return p.start()

    def http(self, port, path):
        """(status, body text) of GET path on 127.0.0.1:port; (None, why)
        when nothing answers."""
        import http.client
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            conn.request("GET", path)
            r = conn.getresponse()
            return r.status, r.read().decode("utf-8", "replace")
        except OSError as e:
            return None, repr(e)
        finally:
            conn.close()

    def relay_metric(self, relay, name):
        st, text = self.http(relay.port, "/metrics")
        self.assertEqual(st, 200, text)
        for ln in text.splitlines():
            if ln.startswith(name + " "):
                return float(ln.split()[1])
        raise AssertionError("no %s in the relay's /metrics:\n%s" % (name, text))

    def worker(self, name, url=None):
        p = bustest.Proc(["project", "--bus", url or self.nats.url, "--store", self.uri,
                          "--read-store", self.uri, "--projections", self.pdir],
                         os.path.join(self.tmp, "%s-%s.log" % (self._testMethodName, name)))
        self.procs.append(p)
        return p.start()

    def holders(self):
        return test_pg_nodes.lock_holders(self.uri, PROJECTIONS)

    def wait_holders(self, seconds, pred=lambda h: len(h) == len(PROJECTIONS)):
        t0 = time.monotonic()
        h = {}
        while time.monotonic() - t0 < seconds:
            h = self.holders()
            if pred(h):
                return time.monotonic() - t0
            time.sleep(0.05)
        return None

    def start_pipeline(self, relays=2, workers=2):
        """2 nodes, the relays (the first active), the workers (the first
        holding every projection); returns (relays, workers)."""
        self.start_nodes(2)
        rs = [self.relay("relay1")] if relays else []
        if rs:
            self.assertIsNotNone(self.wait_log(rs[0], "holds the relay lock", 20),
                                 "%s\nsessions: %r" % (rs[0].log_text(), cqtest.pg_rows(
                                     self.pg.admin, "SELECT a.datname, a.application_name,"
                                     " a.state, a.wait_event, left(a.query, 80), l.locktype,"
                                     " l.granted FROM pg_stat_activity a LEFT JOIN pg_locks l"
                                     " ON l.pid = a.pid AND l.locktype = 'advisory'"
                                     " WHERE a.datname IS NOT NULL")))
        rs += [self.relay("relay%d" % (i + 1)) for i in range(1, relays)]
        ws = []
        for i in range(workers):
            ws.append(self.worker("worker%d" % (i + 1)))
            if i == 0:
                self.assertIsNotNone(self.wait_holders(30), "worker1 holds no projection: %s"
                                     % ws[0].log_text())
        return rs, ws

    def stale_wait(self, node, wait_ms=1000):
        """A min_position wait for the store's head, which the read side
        cannot reach now (it is stuck, and commands keep coming): 200,
        stale, the warning, once wait_ms is over -- not a hang."""
        c = Client(node, timeout=30)
        try:
            time.sleep(0.2)
            pos = c.head()
            t0 = time.monotonic()
            st, h, b = c.get(qpath("sales_dashboard", {"min_position": pos,
                                                       "wait_ms": wait_ms}))
            took = time.monotonic() - t0
        finally:
            c.close()
        self.assertEqual(st, 200, b)
        self.assertTrue(b["meta"]["stale"], b["meta"])
        self.assertIn("warning", b["meta"])
        self.assertIn("110", h.get("warning", ""))
        self.assertGreaterEqual(took, wait_ms / 1000.0 * 0.9)
        self.assertLess(took, wait_ms / 1000.0 + 5.0, "the wait took %.1f s" % took)
        return took

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
        active = [p for p in self.procs if p.args[0] == "relay" and p.alive()
                  and self.http(p.port, "/readyz")[0] == 200]
        self.assertEqual(len(active), 1, "want one active relay")
        lag = None
        while time.monotonic() - t0 < SETTLE_SECONDS:
            lag = self.relay_metric(active[0], "cqrsd_relay_lag_events")
            if lag == 0:
                break
            time.sleep(0.2)
        self.assertEqual(lag, 0, "cqrsd_relay_lag_events")
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
        # the read side: fresh at the head on every node, lag zero, every
        # event applied once in order
        for node in self.nodes:
            c = Client(node, timeout=60)
            try:
                for proj, (query, keyed) in QUERY_OF.items():
                    params = {"min_position": head, "wait_ms": 30000}
                    if keyed:
                        params["order_id"] = load.acked[-1]
                    st, _, b = c.get(qpath(query, params))
                    self.assertEqual(st, 200, "%s: %r" % (query, b))
                    self.assertFalse(b["meta"]["stale"], "%s not at %d: %r"
                                     % (proj, head, b["meta"]))
                    self.assertEqual(b["meta"]["lag_events"], 0, b["meta"])
                    if proj == "apply_log":
                        self.assertEqual(b["data"], {
                            "applied": head, "positions": head,
                            "position_sum": head * (head + 1) // 2, "max_position": head,
                            "out_of_order": 0}, "events applied twice, skipped or out"
                                                " of order")
            finally:
                c.close()
        fresh = time.monotonic() - t0
        return head, fresh

    def verify(self):
        p = cqtest.subprocess.run([cqtest.BINARY, "verify", "--store", self.uri,
                                   "--projections", self.pdir],
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
        for p in self.procs:      # (those the test killed have no process)
            self.assertFalse(p.proc is not None and not p.alive(), "%s died:\n%s"
                             % (p.args[0], p.log_text()))
        self.verify()
        return head, caught

    # ---- the faults ---------------------------------------------------------

    def test_relay_sigkill_standby_takes_over(self):
        (a, b), _ = self.start_pipeline()
        load = Load(self.nodes).start()
        try:
            time.sleep(2)
            before = self.stream_count()
            self.assertGreater(before or 0, 0, "nothing published before the kill")
            mark = len(b.log_text())
            self.assertNotIn("holds the relay lock", b.log_text())
            st, body = self.http(b.port, "/readyz")
            self.assertEqual(st, 503, "a standby relay's /readyz: %s" % body)
            self.assertEqual(self.http(a.port, "/readyz")[0], 200)
            t_kill = time.monotonic()
            a.kill()
            took = self.wait_log(b, "holds the relay lock", 5.0, after=mark)
            self.assertIsNotNone(took, "the standby did not take the lock within 5 s:\n"
                                 + b.log_text())
            # ready once it has the lock and NATS (it logs the lock first,
            # then connects): within 5 s, not necessarily at once
            t_lock = time.monotonic()
            st, body = self.http(b.port, "/readyz")
            while st != 200 and time.monotonic() - t_lock < 5:
                time.sleep(0.05)
                st, body = self.http(b.port, "/readyz")
            self.assertEqual(st, 200, "the new active relay's /readyz: %s" % body)
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
        head, fresh = self.finish(load)
        log("relay SIGKILL: standby holds the lock %.0f ms after, the stream grows %.0f"
            " ms after; %d events; read side fresh %.1f s after the load" %
            (took * 1000, grew * 1000, head, fresh))

    def test_worker_sigkill_between_commit_and_ack(self):
        self.start_nodes(2)
        self.relay("relay1")
        proxy = bustest.AckDropProxy(self.nats.url)
        self.proxies.append(proxy)
        w1 = self.worker("worker1", url=proxy.url)
        self.assertIsNotNone(self.wait_holders(30), w1.log_text())
        first = self.holders()
        w2 = self.worker("worker2")
        load = Load(self.nodes).start()
        try:
            time.sleep(2)
            # w1 goes on committing; JetStream hears none of its acks
            c = Client(self.nodes[0])
            before = self.fresh_position(c)
            proxy.dropping.set()
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and \
                    (proxy.dropped < 20 or self.fresh_position(c) <= before):
                time.sleep(0.05)
            committed = self.fresh_position(c)
            self.assertGreater(proxy.dropped, 0, "worker1 sent no ack to withhold")
            self.assertGreater(committed, before, "worker1 committed nothing meanwhile")
            t_kill = time.monotonic()
            w1.kill()
            took = self.wait_holders(5.0, lambda h: len(h) == len(PROJECTIONS) and
                                     all(h[n] != first.get(n) for n in h))
            self.assertIsNotNone(took, "worker2 did not take the projections within 5 s:"
                                 " %r\n%s" % (self.holders(), w2.log_text()))
            c.close()
            time.sleep(1)
        finally:
            load.stop()
        # what worker1 committed without JetStream hearing its ack comes
        # again after the ack wait, to worker2, on its next fetch (a worker
        # fetches while its projection is behind the head): a command now
        # and then, until every consumer has nothing unacknowledged; then
        # count the redeliveries
        t0 = time.monotonic()
        redelivered = None
        c = Client(self.nodes[0])
        k = 0
        while time.monotonic() - t0 < 40:
            k += 1
            st, _, b = c.command("PlaceOrder", place("late-%s-%d" % (cqtest.RUN, k)))
            self.assertEqual(st, 202, b)
            load.acked.append("late-%s-%d" % (cqtest.RUN, k))
            js = bustest.JetStream(self.nats.url)
            try:
                infos = [js.consumer_info(STREAM, "cqrs-proj-" + n) for n in PROJECTIONS]
            finally:
                js.close()
            if all(i["num_ack_pending"] == 0 and i["num_pending"] == 0 for i in infos):
                redelivered = sum(i["delivered"]["consumer_seq"] - i["delivered"]["stream_seq"]
                                  for i in infos)
                break
            time.sleep(0.5)
        c.close()
        self.assertIsNotNone(redelivered, "acknowledgements still pending 40 s after the"
                             " load: %r\n--- worker2 ---\n%s" % (infos, w2.log_text()))
        self.assertGreater(redelivered, 0, "nothing was redelivered: the kill did not fall"
                           " between a commit and its ack")
        head, fresh = self.finish(load)
        log("worker SIGKILL between commit and ack: %d acks withheld (read model at %d"
            " before, %d at the kill); worker2 holds every projection %.0f ms after the"
            " kill; %d messages redelivered to it and skipped by the checkpoint (apply_log"
            " clean); %d events, fresh %.1f s after the load"
            % (proxy.dropped, before, committed, took * 1000, redelivered, head, fresh))

    def fresh_position(self, c):
        st, _, b = c.get(qpath("apply_log_summary", {}))
        self.assertEqual(st, 200, b)
        return b["meta"]["position"]

    def test_nats_restart(self):
        (r, _), _ = self.start_pipeline()
        load = Load(self.nodes).start()
        try:
            time.sleep(2)
            self.nats.down()
            stale_took = self.stale_wait(self.nodes[0])
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
        head, fresh = self.finish(load)
        log("nats-server restart: a stale wait of 1 s while down answered in %.2f s;"
            " publishing again %.2f s after it was up; %d events, fresh %.1f s after the"
            " load" % (stale_took, back, head, fresh))

    def test_nats_down_10s_under_load(self):
        self.start_pipeline()
        load = Load(self.nodes).start()
        try:
            time.sleep(2)
            self.nats.down()
            t_down = time.monotonic()
            acked_before = len(load.acked)
            stale = [self.stale_wait(self.nodes[k % 2], wait_ms=2000) for k in range(3)]
            time.sleep(max(0.0, 10 - (time.monotonic() - t_down)))
            acked_during = len(load.acked) - acked_before
            self.nats.up()
            time.sleep(2)
        finally:
            load.stop()
        head, fresh = self.finish(load)
        self.assertGreater(acked_during, 0, "commands must go on while NATS is down")
        log("nats-server down 10 s: %d commands acknowledged meanwhile; stale waits of 2 s"
            " answered in %s s; %d events, fresh %.1f s after the load stopped"
            % (acked_during, ", ".join("%.2f" % x for x in stale), head, fresh))

    def test_pg_restart_under_load(self):
        self.start_pipeline()
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
        head, fresh = self.finish(load)
        log("PostgreSQL restart: 202 again %.2f s after up (%r refused meanwhile); %d"
            " events; fresh %.1f s after the load" % (back, load.refused, head, fresh))


if __name__ == "__main__":
    cqtest.main()
