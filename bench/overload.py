#!/usr/bin/env python3
"""GET /healthz latency while cqrsd answers overload (docs/security.md).

    python3 bench/overload.py build/cqrsd [PROBES]

Four runs, each on a fresh server with its own data directory on a free
loopback port; in each, one thread sends PROBES GET /healthz round trips
(keep-alive, one at a time, from a process of its own) while the load runs:

  idle         nothing else
  write-queue  --write-queue 1, 32 threads placing orders (most are 503)
  rate-limit   --rate-limit 50/s, 32 threads of GET /projections (most 429)
  waiters      --max-waiters 64, 64 queries waiting for a position far
               ahead, and 16 threads asking for more (503)

It prints one line per run: the probes' p50/p99/max in milliseconds and
the answers the load got, per status. A report, not a test: nothing
fails on slow numbers.
"""
import collections
import http.client
import json
import multiprocessing
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


class Srv:
    def __init__(self, binary, args):
        self.dir = tempfile.mkdtemp(prefix="cqrsd-bench-ovl-")
        self.port = free_port()
        self.log = open(os.path.join(self.dir, "stderr"), "w")
        self.proc = subprocess.Popen(
            [binary, "serve", "--data", os.path.join(self.dir, "data"),
             "--listen", "127.0.0.1:%d" % self.port] + args,
            stdout=self.log, stderr=self.log)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if self.req("GET", "/healthz")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise SystemExit("cqrsd did not start")

    def conn(self, timeout=60):
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def req(self, method, path, body=None, conn=None):
        c = conn or self.conn(5)
        h = {"Content-Type": "application/json"} if body is not None else {}
        c.request(method, path, body=json.dumps(body) if body is not None else None, headers=h)
        r = c.getresponse()
        data = r.read()
        if conn is None:
            c.close()
        return r.status, data

    def close(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def probe_proc(port, n, q):
    out = []
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    for _ in range(n):
        t0 = time.perf_counter()
        c.request("GET", "/healthz")
        r = c.getresponse()
        r.read()
        out.append((time.perf_counter() - t0) * 1000 if r.status == 200 else float("inf"))
    c.close()
    q.put(out)


def loop(srv, stop, counts, lock, make):
    c = srv.conn()
    i = 0
    while not stop.is_set():
        method, path, body = make(i)
        i += 1
        try:
            st, _ = srv.req(method, path, body, conn=c)
        except OSError:
            c.close()
            c = srv.conn()
            st = "err"
        with lock:
            counts[st] += 1
    c.close()


def run(binary, name, args, makers, probes):
    srv = Srv(binary, args)
    stop, lock = threading.Event(), threading.Lock()
    counts = collections.Counter()
    ts = [threading.Thread(target=loop, args=(srv, stop, counts, lock, m)) for m in makers]
    for t in ts:
        t.start()
    time.sleep(0.5)
    # the probes run in a process of their own, so the load's threads do
    # not delay them through this interpreter's lock
    q = multiprocessing.Queue()
    pp = multiprocessing.Process(target=probe_proc, args=(srv.port, probes, q))
    pp.start()
    lat = q.get(timeout=600)
    pp.join(timeout=60)
    stop.set()
    for t in ts:
        t.join(timeout=120)
    srv.close()
    lat.sort()
    pick = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))]
    print("BENCH kind=overload-%s probes=%d healthz_p50_ms=%.2f p99_ms=%.2f max_ms=%.2f load=%s"
          % (name, len(lat), pick(0.5), pick(0.99), lat[-1],
             ",".join("%s:%d" % (k, v) for k, v in sorted(counts.items(), key=str))))
    sys.stdout.flush()


def main():
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    binary, probes = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 500
    tag = "%x" % int(time.time())

    def order(t):
        return lambda i: ("POST", "/commands/PlaceOrder", {
            "order_id": "b%s-%d-%d" % (tag, t, i), "customer_id": "c", "currency": "EUR",
            "items": [{"sku": "s", "quantity": 1, "unit_price_cents": 100}]})

    far = "/queries/order_summary?order_id=x&min_position=1000000000&wait_ms=5000"
    run(binary, "idle", [], [], probes)
    run(binary, "write-queue", ["--write-queue", "1"], [order(t) for t in range(32)], probes)
    run(binary, "rate-limit", ["--rate-limit", "50/s"],
        [lambda i: ("GET", "/projections", None)] * 32, probes)
    run(binary, "waiters", ["--max-waiters", "64"],
        [lambda i: ("GET", far, None)] * 80, probes)


if __name__ == "__main__":
    main()
