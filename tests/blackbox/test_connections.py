"""Black-box tests of connection exhaustion: slow clients that trickle a
request head byte by byte must neither keep their connections past the
head deadline nor take every connection from other clients. And a server
that cannot listen says so and exits cleanly.

The attackers connect from 127.0.0.2 (all of 127/8 is loopback on Linux),
the fresh client from 127.0.0.1, so the per-address limit can tell them
apart.

    python3 tests/blackbox/test_connections.py /path/to/cqrsd
"""
import errno
import http.client
import resource
import selectors
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import unittest

sys.dont_write_bytecode = True

import cqtest  # noqa: E402
from cqtest import ServerTestCase  # noqa: E402

ATTACKER = "127.0.0.2"
HEAD = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 4000
# A fresh client must be answered within this (the defect: not at all
# while the slow connections last; generous for sanitizer builds on a
# loaded machine, where the listen queue drains slowly).
HEALTHZ_BOUND = 10.0


def raise_nofile(want):
    """Raise this process's RLIMIT_NOFILE towards want (up to the hard
    limit); the server inherits it. Returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


class Slow:
    """n connections from ATTACKER, each sending HEAD one byte per tick."""

    def __init__(self, port, n):
        self.port = port
        self.socks = []
        self.sent = {}
        self.gone = {}  # socket -> seconds after its connect when it closed
        self.t0 = {}
        sel = selectors.DefaultSelector()
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((ATTACKER, 0))
            s.setblocking(False)
            err = s.connect_ex(("127.0.0.1", port))
            if err not in (0, errno.EINPROGRESS):
                s.close()
                raise OSError(err, "connect from %s" % ATTACKER)
            self.t0[s] = time.monotonic()
            sel.register(s, selectors.EVENT_WRITE)
            self.socks.append(s)
        # wait until every connect has finished (some may wait in the
        # listen backlog, which is fine: they are connected for TCP)
        pending = len(self.socks)
        deadline = time.monotonic() + 30
        while pending and time.monotonic() < deadline:
            for key, _ in sel.select(timeout=1):
                sel.unregister(key.fileobj)
                pending -= 1
        sel.close()
        for s in self.socks:
            self.sent[s] = 0

    def tick(self):
        """Send the next byte on every open connection; note the closed."""
        now = time.monotonic()
        for s in self.socks:
            if s in self.gone:
                continue
            try:
                data = s.recv(4096)
                if data == b"":
                    self.gone[s] = now - self.t0[s]
                    continue
            except BlockingIOError:
                pass
            except OSError:  # reset, refused
                self.gone[s] = now - self.t0[s]
                continue
            i = self.sent[s]
            if i >= len(HEAD):
                continue
            try:
                s.send(HEAD[i:i + 1])
                self.sent[s] = i + 1
            except BlockingIOError:
                pass
            except OSError:
                self.gone[s] = now - self.t0[s]

    def open_count(self):
        return len(self.socks) - len(self.gone)

    def close(self):
        for s in self.socks:
            s.close()


def healthz_from_fresh_client(port, timeout=HEALTHZ_BOUND):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", "/healthz")
        r = conn.getresponse()
        r.read()
        return r.status
    finally:
        conn.close()


class ExhaustionTest(ServerTestCase):
    """The issue's attack, at its size, against the default limits."""

    N = 8500
    server_args = ("--header-timeout", "3")

    @classmethod
    def setUpClass(cls):
        cls.n = min(cls.N, raise_nofile(cls.N + 1024) - 512)
        super().setUpClass()

    def test_slow_clients_from_one_address_leave_room_for_others(self):
        slow = Slow(self.server.port, self.n)
        try:
            for _ in range(4):  # 2 s of trickling: within the deadline
                slow.tick()
                time.sleep(0.5)
            # a client from another address is answered at all, promptly
            self.assertEqual(healthz_from_fresh_client(self.server.port), 200)
            self.assertHealthy()
            # (how many the attacker holds meanwhile is up to the
            # per-address limit: PerAddressLimitTest checks it)
            # and every one of them is gone soon after the head deadline
            deadline = time.monotonic() + 3 + 10
            while slow.open_count() and time.monotonic() < deadline:
                slow.tick()
                time.sleep(0.25)
            self.assertEqual(slow.open_count(), 0,
                             "%d slow connections outlived the head deadline"
                             % slow.open_count())
        finally:
            slow.close()
        self.assertHealthy()


class HeadDeadlineTest(ServerTestCase):
    """--header-timeout: the whole request head must arrive within it,
    however steadily the bytes trickle (each of which resets the idle
    timeout)."""

    TIMEOUT = 2
    server_args = ("--header-timeout", str(TIMEOUT))

    def test_trickled_head_is_closed_at_the_deadline(self):
        slow = Slow(self.server.port, 20)
        try:
            t0 = time.monotonic()
            while slow.open_count() and time.monotonic() < t0 + self.TIMEOUT + 10:
                slow.tick()
                time.sleep(0.2)
            self.assertEqual(slow.open_count(), 0)
            # not before the deadline: they were cut by it, not refused
            self.assertGreaterEqual(min(slow.gone.values()), self.TIMEOUT * 0.5)
            self.assertTrue(all(n > 0 for n in slow.sent.values()))
        finally:
            slow.close()
        self.assertHealthy()

    def test_deadline_rearmed_on_keep_alive(self):
        s = socket.create_connection(("127.0.0.1", self.server.port), timeout=30)
        try:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            data = b""
            while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
                data += s.recv(4096)
            self.assertTrue(data.startswith(b"HTTP/1.1 200 "), data)
            # the next head trickles in: the connection is closed again
            t0 = time.monotonic()
            closed = False
            for b in HEAD:
                try:
                    s.sendall(bytes([b]))
                    s.settimeout(0.2)
                    if s.recv(4096) == b"":
                        closed = True
                        break
                except socket.timeout:
                    pass
                except OSError:
                    closed = True
                    break
                if time.monotonic() > t0 + self.TIMEOUT + 10:
                    break
            self.assertTrue(closed, "a trickled second head kept the connection")
        finally:
            s.close()

    def test_slow_but_complete_head_is_answered(self):
        s = socket.create_connection(("127.0.0.1", self.server.port), timeout=30)
        try:
            req = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            for i in range(0, len(req), 10):  # all of it within ~1 s
                s.sendall(req[i:i + 10])
                time.sleep(0.15)
            data = b""
            while True:
                part = s.recv(4096)
                if not part:
                    break
                data += part
            self.assertTrue(data.startswith(b"HTTP/1.1 200 "), data)
        finally:
            s.close()


class PerAddressLimitTest(ServerTestCase):

    LIMIT = 40
    server_args = ("--max-connections-per-ip", str(LIMIT))

    def test_per_address_limit(self):
        idle = []
        try:
            for _ in range(self.LIMIT + 20):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.bind((ATTACKER, 0))
                s.connect(("127.0.0.1", self.server.port))
                s.setblocking(False)
                idle.append(s)
            # the server closes the excess as it accepts them; the rest
            # stay open (well within the 10 s head deadline)
            gone = set()
            deadline = time.monotonic() + 8
            while time.monotonic() < deadline:
                for s in idle:
                    try:
                        if s not in gone and s.recv(1) == b"":
                            gone.add(s)
                    except BlockingIOError:
                        pass
                    except OSError:
                        gone.add(s)
                if len(idle) - len(gone) <= self.LIMIT:
                    break
                time.sleep(0.1)
            self.assertEqual(len(idle) - len(gone), self.LIMIT,
                             "connections held from one address")
            self.assertEqual(healthz_from_fresh_client(self.server.port), 200)
        finally:
            for s in idle:
                s.close()


class ListenFailureTest(unittest.TestCase):
    """The port is taken: cqrsd must refuse to start with a message and
    exit 1, having freed all it made (under AddressSanitizer the leak
    check at exit reports anything left, e.g. the server's metrics)."""

    def test_port_in_use(self):
        data = tempfile.mkdtemp(prefix="cqrsd-bb-")
        taken = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            taken.bind(("127.0.0.1", 0))
            taken.listen(1)
            port = taken.getsockname()[1]
            p = subprocess.run(
                [cqtest.BINARY, "serve", "--data", data, "--listen",
                 "127.0.0.1:%d" % port], stdin=subprocess.DEVNULL,
                capture_output=True, text=True, timeout=cqtest.START_TIMEOUT)
        finally:
            taken.close()
            shutil.rmtree(data, ignore_errors=True)
        for pattern in cqtest.SANITIZER_PATTERNS:
            self.assertNotIn(pattern, p.stderr, p.stderr[:3000])
        self.assertEqual(p.returncode, 1, p.stderr)
        self.assertIn("cannot listen", p.stderr)


if __name__ == "__main__":
    cqtest.main()
