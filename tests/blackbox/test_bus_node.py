"""The example consumer in another language (examples/node-consumer) against
a live relay: installed with npm into the build dir, run against
`cqrsd serve --bus` on a nats-server of the test's own while commands come
in, SIGKILLed once between saving its state and acknowledging (its
--crash-after-save), run again to the head. It must have applied every
acknowledged event once, in position order (count, sum of positions, last
position equal the store's), skipped the redelivered batch by position, and
its revenue per currency must equal cqrsd's own sales_dashboard.

    python3 tests/blackbox/test_bus_node.py build/cqrsd

Needs node >= 18 and npm (the npm registry, for `npm ci`).
"""
import json
import os
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
import bustest  # noqa: E402
from cqtest import Client, Server  # noqa: E402

EXAMPLE = os.path.join(bustest.ROOT, "examples", "node-consumer")
CURRENCIES = ("EUR", "USD", "GBP")


def install_consumer():
    """examples/node-consumer copied into the build dir and `npm ci`-ed
    there (again only when its package-lock.json changed). Its dir."""
    for tool in ("node", "npm"):
        if shutil.which(tool) is None:
            raise AssertionError("%s not found: apt-get install nodejs npm" % tool)
    v = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
    if int(v.lstrip("v").split(".")[0]) < 18:
        raise AssertionError("node %s: the example needs node >= 18" % v)
    dest = os.path.join(os.path.dirname(cqtest.BINARY), "node-consumer")
    os.makedirs(dest, exist_ok=True)
    lock = os.path.join(EXAMPLE, "package-lock.json")
    stamp = os.path.join(dest, "node_modules", ".cqtest-lock")
    with open(lock, "rb") as f:
        want = f.read()
    for name in ("package.json", "package-lock.json", "consumer.js"):
        shutil.copy2(os.path.join(EXAMPLE, name), dest)
    have = None
    if os.path.exists(stamp):
        with open(stamp, "rb") as f:
            have = f.read()
    if have != want:
        t0 = time.monotonic()
        p = subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
                           cwd=dest, capture_output=True, timeout=240,
                           stdin=subprocess.DEVNULL)
        if p.returncode != 0:
            raise AssertionError("npm ci in %s: %s%s" % (dest, p.stdout.decode(),
                                                         p.stderr.decode()))
        with open(stamp, "wb") as f:
            f.write(want)
        bustest.log("npm ci of examples/node-consumer: %.1f s" % (time.monotonic() - t0))
    return dest


def place(oid, cur, cents):
    return {"order_id": oid, "customer_id": "c-node", "currency": cur,
            "items": [{"sku": "s", "quantity": 1, "unit_price_cents": cents}]}


class NodeConsumerTest(unittest.TestCase):
    maxDiff = 4000

    @classmethod
    def setUpClass(cls):
        cls.dir = install_consumer()
        cls.tmp = tempfile.mkdtemp(prefix="cqrsd-busnode-")
        cls.nats = bustest.Nats(os.path.join(cls.tmp, "nats")).start()

    @classmethod
    def tearDownClass(cls):
        cls.nats.stop()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def consumer(self, state, *args, timeout=120):
        """Run the consumer to completion: (exit code, stdout, stderr)."""
        p = subprocess.run(["node", os.path.join(self.dir, "consumer.js"),
                            "--nats", self.nats.url, "--state", state,
                            "--durable", "revenue-test", "--ack-wait", "2", "--batch", "50"]
                           + [str(a) for a in args],
                           cwd=self.dir, capture_output=True, timeout=timeout,
                           stdin=subprocess.DEVNULL)
        return p.returncode, p.stdout.decode(), p.stderr.decode()

    def test_every_event_once_in_order(self):
        server = Server(cqtest.BINARY, args=["--bus", self.nats.url])
        with server:
            acked = []
            problems = []
            stop = threading.Event()
            lock = threading.Lock()

            def writer(k):
                c = Client(server)
                n = 0
                try:
                    while not stop.is_set() and n < 150:
                        n += 1
                        oid = "nd-%d-%d" % (k, n)
                        cur = CURRENCIES[(k + n) % 3]
                        st, _, b = c.command("PlaceOrder", place(oid, cur, 1000))
                        if st != 202:
                            problems.append((st, b))
                            continue
                        # pay part of it; every fifth is cancelled (refund)
                        st, _, b = c.command("RecordPayment", {
                            "order_id": oid, "payment_id": "p", "amount_cents": 100 + n})
                        if st != 202:
                            problems.append((st, b))
                        if n % 5 == 0:
                            st, _, b = c.command("CancelOrder",
                                                 {"order_id": oid, "reason": "test"})
                            if st != 202:
                                problems.append((st, b))
                        with lock:
                            acked.append(oid)
                finally:
                    c.close()

            ws = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
            for t in ws:
                t.start()
            state = os.path.join(self.tmp, "revenue.json")
            try:
                # the first run dies (SIGKILL) after its 2nd save, before
                # that batch's ack, while commands still come in
                time.sleep(1.0)
                rc, out, err = self.consumer(state, "--crash-after-save", 2)
                self.assertEqual(rc, -9, "want the SIGKILL it asked for: %s %s" % (out, err))
                with open(state) as f:
                    saved = json.load(f)
                self.assertGreater(saved["checkpoint"], 0)
            finally:
                for t in ws:
                    t.join()
            self.assertEqual(problems[:5], [])
            c = Client(server)
            events, head = c.read_all()
            self.assertEqual([e["position"] for e in events], list(range(1, head + 1)))
            # the second run: from the durable consumer's ack floor, which
            # is before the batch it saved -- redelivered, skipped by position
            t0 = time.monotonic()
            rc, out, err = self.consumer(state, "--until", head, "--quiet")
            took = time.monotonic() - t0
            self.assertEqual(rc, 0, out + err)
            final = json.loads(out.strip().splitlines()[-1])
            self.assertEqual(final["checkpoint"], head, final)
            self.assertEqual(final["events"], head, "events applied != events in the store")
            self.assertEqual(final["position_sum"], head * (head + 1) // 2,
                             "some event applied twice or skipped")
            self.assertGreater(final["duplicates"], 0,
                               "the batch saved before the SIGKILL was not redelivered")
            # its read model equals cqrsd's own
            st, _, b = c.get("/queries/sales_dashboard?" + urllib.parse.urlencode(
                {"min_position": head, "wait_ms": 10000}))
            self.assertEqual(st, 200, b)
            self.assertFalse(b["meta"]["stale"], b["meta"])
            want = {r["currency"]: r["revenue_cents"] for r in b["data"]["by_currency"]}
            self.assertEqual(final["revenue_cents"], want)
            self.assertEqual(sum(final["orders"].values()), len(acked))
            c.close()
            bustest.log("node consumer: %d events (%d orders) once each in order; %d"
                        " redelivered after the SIGKILL and skipped by position; second"
                        " run %.1f s (ack wait 2 s); revenue %r"
                        % (head, len(acked), final["duplicates"], took,
                           final["revenue_cents"]))
            # stopped by SIGTERM it saves and exits 0 too
            p = subprocess.Popen(["node", os.path.join(self.dir, "consumer.js"),
                                  "--nats", self.nats.url, "--state", state,
                                  "--durable", "revenue-test"], cwd=self.dir,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            time.sleep(1.5)
            p.terminate()
            out, err = p.communicate(timeout=30)
            self.assertEqual(p.returncode, 0, err)
            self.assertEqual(json.loads(out.decode().strip().splitlines()[-1])["events"],
                             head)


if __name__ == "__main__":
    cqtest.main()
