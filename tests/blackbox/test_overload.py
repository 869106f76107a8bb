"""Black-box tests of overload answers (docs/security.md): a full write
queue is 503 with Retry-After (--write-queue), a caller above its rate is
429 with Retry-After (--rate-limit, per token or per client address), too
many waiting queries are 503 with Retry-After (--max-waiters); /healthz
is answered during each (how fast: bench/overload.py, not asserted here).

    python3 tests/blackbox/test_overload.py /path/to/cqrsd
"""
import re
import subprocess
import sys
import threading
import time
import unittest

sys.dont_write_bytecode = True

import cqtest  # noqa: E402
from cqtest import Client, Server, order_body  # noqa: E402


def retry_after_ok(test, h):
    ra = h.get("retry-after")
    test.assertIsNotNone(ra, "no Retry-After in %r" % (h,))
    test.assertRegex(ra, r"^[1-9][0-9]*$")


def waiters(c):
    st, _, text = c.get("/metrics")
    m = re.search(r"^cqrsd_waiters_pending (\d+)", text, re.M)
    return int(m.group(1)) if m else -1


class WriteQueue(unittest.TestCase):
    def test_full_queue_is_503(self):
        with Server(cqtest.BINARY, args=["--write-queue", "1"]) as srv:
            results, lock = [], threading.Lock()
            healthz = []
            stop = threading.Event()

            def writer():
                c = Client(srv)
                for _ in range(12):
                    body = order_body()
                    st, h, b = c.command("PlaceOrder", body)
                    with lock:
                        results.append((st, h, b, body))
                c.close()

            def prober():
                c = Client(srv)
                while not stop.is_set():
                    healthz.append(c.healthz()[0])
                    time.sleep(0.01)
                c.close()

            p = threading.Thread(target=prober)
            p.start()
            for _ in range(10):  # rounds until the queue was seen full
                ts = [threading.Thread(target=writer) for _ in range(24)]
                for t in ts:
                    t.start()
                for t in ts:
                    t.join(timeout=120)
                if any(r[0] == 503 for r in results):
                    break
            stop.set()
            p.join(timeout=30)
            statuses = {r[0] for r in results}
            self.assertIn(503, statuses, "a queue of 1 never refused a command")
            self.assertLessEqual(statuses, {202, 503}, statuses)
            for st, h, b, body in results:
                if st == 503:
                    retry_after_ok(self, h)
                    self.assertEqual(b["type"], "urn:cqrsd:problem:unavailable")
                    self.assertIn("queued", b["detail"])
            self.assertTrue(healthz and set(healthz) == {200}, set(healthz))
            # every 202 is there, every 503 is not
            c = Client(srv)
            for st, h, b, body in results:
                s, _, sb = c.get("/streams/order-" + body["order_id"])
                self.assertEqual(s, 200 if st == 202 else 404, (st, sb))
            c.close()


class RateLimit(unittest.TestCase):
    def burst(self, c, n, headers=None):
        out = [c.get("/projections", headers=headers) for _ in range(n)]
        return out

    def test_open_server_limits_per_address(self):
        with Server(cqtest.BINARY, args=["--rate-limit", "5/s"]) as srv:
            c = Client(srv)
            rs = self.burst(c, 30)
            codes = [r[0] for r in rs]
            self.assertIn(429, codes)
            self.assertEqual(codes[:5], [200] * 5, "the burst of 5 was not allowed")
            for st, h, b in rs:
                if st == 429:
                    retry_after_ok(self, h)
                    self.assertEqual(b["type"], "urn:cqrsd:problem:rate-limited")
            # the probes are not limited
            self.assertEqual([c.healthz()[0] for _ in range(20)], [200] * 20)
            time.sleep(1.5)  # refilled
            self.assertEqual(c.get("/projections")[0], 200)
            c.close()

    def test_limit_per_token(self):
        import tempfile
        data = tempfile.mkdtemp(prefix="cqrsd-rate-")
        secrets = []
        for name in ("a", "b"):
            p = subprocess.run([cqtest.BINARY, "tokens", "add", name, "--scopes", "query",
                                "--data", data], capture_output=True, text=True, timeout=30)
            self.assertEqual(p.returncode, 0, p.stderr)
            secrets.append({"Authorization": "Bearer " + p.stdout.strip()})
        with Server(cqtest.BINARY, data_dir=data, args=["--rate-limit", "3"]) as srv:
            c = Client(srv)
            codes = [r[0] for r in self.burst(c, 15, secrets[0])]
            self.assertIn(429, codes)
            self.assertEqual(c.get("/projections", headers=secrets[1])[0], 200,
                             "one token's rate limited another")
            self.assertEqual(c.healthz()[0], 200)
            # a wrong token is 401, not counted against anyone
            self.assertEqual(c.get("/projections", headers={"Authorization": "Bearer x"})[0], 401)
            c.close()

    def test_bad_option(self):
        for v in ("0/s", "x", "5/m", ""):
            p = subprocess.run([cqtest.BINARY, "serve", "--rate-limit", v],
                               capture_output=True, text=True, timeout=30)
            self.assertEqual(p.returncode, 2, (v, p.stderr))


class Waiters(unittest.TestCase):
    def test_too_many_waiters_is_503(self):
        with Server(cqtest.BINARY, args=["--max-waiters", "2"]) as srv:
            c = Client(srv)
            far = c.head() + 100000
            path = "/queries/order_summary?order_id=w&min_position=%d&wait_ms=%d"
            answers = []

            def wait_query():
                cc = Client(srv, timeout=60)
                answers.append(cc.get(path % (far, 8000))[0])
                cc.close()

            ts = [threading.Thread(target=wait_query) for _ in range(2)]
            for t in ts:
                t.start()
            deadline = time.monotonic() + 30
            while waiters(c) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            self.assertEqual(waiters(c), 2)
            st, h, b = c.get(path % (far, 8000))
            self.assertEqual(st, 503, b)
            self.assertEqual(b["type"], "urn:cqrsd:problem:too-many-waiters")
            retry_after_ok(self, h)
            self.assertEqual(c.healthz()[0], 200)
            # a query that need not wait is still answered
            self.assertNotEqual(c.get("/queries/order_summary?order_id=w")[0], 503)
            # a command with ?wait_for= is still written, answered stale
            body = order_body()
            st, h, b = c.req("POST", "/commands/PlaceOrder?wait_for=order_summaries&wait_ms=5000",
                             body=body)
            self.assertEqual(st, 202, b)
            for t in ts:
                t.join(timeout=60)
            self.assertEqual(len(answers), 2)
            self.assertNotIn(503, answers)
            # room again
            st, _, _ = c.get(path % (c.head() + 1000, 100))
            self.assertNotEqual(st, 503)
            c.close()


if __name__ == "__main__":
    cqtest.main()
