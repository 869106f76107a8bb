"""Black-box tests of a graceful stop (docs/security.md, "Stopping"):
SIGTERM and SIGINT while commands stream in and queries wait. Every
command that got an answer got 202 (and is durable: there after a
restart) or 503 with Retry-After (and is not there); new writes during
the stop get 503; a waiting query is answered before the process ends;
the exit code is 0. A command whose connection was cut before it was read
is retried with its Idempotency-Key after the restart and is there once.

    python3 tests/blackbox/test_stop.py /path/to/cqrsd
"""
import re
import signal
import sys
import threading
import time
import unittest

sys.dont_write_bytecode = True

import cqtest  # noqa: E402
from cqtest import Client, Server, order_body, uid  # noqa: E402

WRITERS = 16


class Stop(unittest.TestCase):
    def run_stop(self, sig):
        srv = Server(cqtest.BINARY)
        srv.start()
        try:
            return self._run(srv, sig)
        finally:
            srv.close()

    def _run(self, srv, sig):
        results, lock = [], threading.Lock()
        signalled = threading.Event()
        query = []

        def writer():
            c = Client(srv, timeout=60)
            after = 0
            while after < 50:
                body, key = order_body(), uid("k")
                try:
                    st, h, b = c.command("PlaceOrder", body, key=key)
                except Exception:  # cut, refused, or the server gone
                    if not signalled.is_set():
                        raise
                    with lock:
                        results.append(("cut", None, None, body, key))
                    break
                with lock:
                    results.append((st, h, b, body, key))
                if signalled.is_set():
                    after += 1
            c.close()

        def waiting_query():
            c = Client(srv, timeout=60)
            far = c.head() + 10 ** 6
            t0 = time.monotonic()
            try:
                st, h, b = c.get("/queries/order_summary?order_id=q&min_position=%d&wait_ms=30000" % far)
                query.append((st, time.monotonic() - t0))
            except OSError as e:
                query.append(("cut", repr(e)))
            c.close()

        q = threading.Thread(target=waiting_query)
        q.start()
        ts = [threading.Thread(target=writer) for _ in range(WRITERS)]
        for t in ts:
            t.start()
        # signal once the query waits and commands are flowing
        probe = Client(srv)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            st, _, text = probe.get("/metrics")
            m = re.search(r"^cqrsd_waiters_pending (\d+)", text, re.M)
            with lock:
                flowing = len(results) >= WRITERS
            if m and int(m.group(1)) >= 1 and flowing:
                break
            time.sleep(0.05)
        probe.close()
        time.sleep(0.3)
        signalled.set()
        srv.proc.send_signal(sig)
        t0 = time.monotonic()
        rc = srv.proc.wait(timeout=60)
        stopped_in = time.monotonic() - t0
        srv.proc = None
        srv.check_stderr()
        self.assertEqual(rc, 0, "exit code after %s" % sig)
        for t in ts:
            t.join(timeout=60)
        q.join(timeout=60)
        self.assertTrue(results)
        self.assertEqual(len(query), 1)
        self.assertNotEqual(query[0][0], "cut", "the waiting query was not answered: %r" % (query,))
        self.assertLess(query[0][1], 25, "the waiting query waited out its time, not the stop")
        statuses = {r[0] for r in results}
        self.assertLessEqual(statuses, {202, 503, "cut"}, statuses)
        for st, h, b, body, key in results:
            if st == 503:
                self.assertIn("retry-after", h)
                self.assertEqual(b["type"], "urn:cqrsd:problem:unavailable")
        # restart on the same data: every 202 is there, every 503 is not,
        # every cut command retried with its key runs once
        srv.start()
        c = Client(srv)
        for st, h, b, body, key in results:
            s, _, sb = c.get("/streams/order-" + body["order_id"])
            if st == 202:
                self.assertEqual(s, 200, "an acknowledged command was lost")
            elif st == 503:
                self.assertEqual(s, 404, "a command answered 503 was written")
            else:
                s1, _, b1 = c.command("PlaceOrder", body, key=key)
                self.assertEqual(s1, 202, b1)
                s, _, sb = c.get("/streams/order-" + body["order_id"])
                self.assertEqual((s, len(sb["events"])), (200, 1))
        c.close()
        srv.stop()
        return statuses, stopped_in

    def check(self, sig):
        seen = set()
        for attempt in range(3):  # until a write is seen refused while stopping
            statuses, stopped_in = self.run_stop(sig)
            seen |= statuses
            sys.stderr.write("  %s attempt %d: %s, stopped in %.2f s\n"
                             % (sig.name, attempt + 1, sorted(map(str, statuses)), stopped_in))
            if 503 in seen:
                break
        self.assertIn(202, seen)
        self.assertIn(503, seen, "no write was answered 503 while stopping")

    def test_sigterm(self):
        self.check(signal.SIGTERM)

    def test_sigint(self):
        self.check(signal.SIGINT)


if __name__ == "__main__":
    cqtest.main()
