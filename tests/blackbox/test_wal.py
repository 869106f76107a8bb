"""Black-box tests of the disk the server uses and what it says about it:

- under sustained load of single commands (several client threads, with
  queries and $all reads running beside them) the write-ahead logs of
  events.db and read.db stay bounded, read.db itself grows (rows are
  copied back from its log), and /metrics reports both logs' sizes;
- on a full disk (a small tmpfs, mounted for the test; skipped with a
  message where mount is not permitted) writes answer 503, /readyz says
  not ready because the store refuses writes, cqrsd_store_writable is 0,
  and once the disk has room again (the tmpfs is made bigger) the server
  finds out by itself, without a client write, and takes writes again.

Everything asserted is a size, a count or a state; the load is bounded in
count (and the waits in time).
"""

import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
import unittest

import cqtest
from cqtest import Client, Server, order_body
from problems import assert_type

FILES = ("events.db", "events.db-wal", "read.db", "read.db-wal")
# The server empties a log once it holds 4000 frames of 4 KiB pages
# (src/store/wal.h), about 16 MiB; allow for the commit that crosses it.
WAL_BOUND = 32 * 1024 * 1024
COMMANDS = 3000
WRITERS = 4


def size(path):
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def metric(body, name, labels=""):
    """The value of one sample in a Prometheus exposition, or None."""
    pat = r"^%s%s (\S+)$" % (re.escape(name),
                              re.escape("{%s}" % labels) if labels else "")
    m = re.search(pat, body, re.M)
    return float(m.group(1)) if m else None


class WalBoundTest(unittest.TestCase):

    def test_sustained_load_keeps_both_logs_bounded(self):
        with Server() as srv:
            most = {}
            stop = threading.Event()
            errors = []

            def sample():
                while not stop.is_set():
                    for f in FILES:
                        n = size(os.path.join(srv.data_dir, f))
                        most[f] = max(most.get(f, 0), n)
                    time.sleep(0.005)

            def read():
                c = Client(srv)
                try:
                    while not stop.is_set():
                        c.get("/queries/customer_orders?customer_id=c-1&limit=5")
                        c.get("/queries/payment_confirmation?order_id=o-1")
                        c.get("/streams/$all?limit=20")
                finally:
                    c.close()

            def write(n):
                c = Client(srv)
                try:
                    for _ in range(n):
                        st, _, b = c.command("PlaceOrder", order_body())
                        if st != 202:
                            errors.append((st, b))
                            return
                finally:
                    c.close()

            helpers = [threading.Thread(target=sample),
                       threading.Thread(target=read)]
            writers = [threading.Thread(target=write, args=(COMMANDS // WRITERS,))
                       for _ in range(WRITERS)]
            for t in helpers + writers:
                t.start()
            try:
                for t in writers:
                    t.join()
                self.assertEqual(errors, [], "commands failed")
                # let the projections catch up (their batches are what
                # fills read.db's log), still sampling
                c = Client(srv)
                head = c.head()
                self.assertEqual(head, COMMANDS)
                st, _, b = c.get("/queries/customer_orders?customer_id=c-1"
                                 "&limit=1&min_position=%d&wait_ms=30000" % head)
                self.assertEqual(st, 200, b)
                self.assertFalse(b["meta"]["stale"], b["meta"])
            finally:
                stop.set()
                for t in helpers + writers:
                    t.join()
            for f in FILES:
                most[f] = max(most.get(f, 0), size(os.path.join(srv.data_dir, f)))
            for f in ("events.db-wal", "read.db-wal"):
                self.assertLessEqual(most[f], WAL_BOUND,
                                     "%s reached %d bytes (sizes seen: %r)"
                                     % (f, most[f], most))
            # the rows were copied back into read.db (3000 orders in two
            # asynchronous projections: well over 256 KiB)
            self.assertGreaterEqual(size(os.path.join(srv.data_dir, "read.db")),
                                    256 * 1024, "read.db did not grow: %r" % most)

            st, _, body = c.get("/metrics")
            self.assertEqual(st, 200)
            for db in ("events.db", "read.db"):
                v = metric(body, "cqrsd_wal_bytes", 'database="%s"' % db)
                self.assertIsNotNone(v, "no cqrsd_wal_bytes for %s" % db)
                self.assertGreaterEqual(v, 0)
                self.assertLessEqual(v, WAL_BOUND)
            self.assertEqual(metric(body, "cqrsd_store_writable"), 1.0)
            c.close()


class FullDiskTest(unittest.TestCase):
    """The data directory on a tmpfs of a few MiB."""

    SIZE_MB = 6

    def setUp(self):
        self.mnt = tempfile.mkdtemp(prefix="cqrsd-full-")
        r = subprocess.run(["mount", "-t", "tmpfs", "-o",
                            "size=%dm" % self.SIZE_MB, "tmpfs", self.mnt],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        if r.returncode != 0:
            os.rmdir(self.mnt)
            self.skipTest("cannot mount a tmpfs to fill (%s); run as root to "
                          "test a full disk" % r.stdout.decode().strip())
        # the server's log goes elsewhere: on the full tmpfs its lines
        # would be lost with the rest of what cannot be written
        self.logdir = tempfile.mkdtemp(prefix="cqrsd-full-log-")

    def tearDown(self):
        subprocess.run(["umount", self.mnt], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        shutil.rmtree(self.mnt, ignore_errors=True)
        shutil.rmtree(self.logdir, ignore_errors=True)

    def readyz(self, c):
        st, _, b = c.get("/readyz")
        self.assertIsInstance(b, dict, b)
        return st, b

    def writable_metric(self, c):
        st, _, body = c.get("/metrics")
        self.assertEqual(st, 200)
        return metric(body, "cqrsd_store_writable")

    def test_full_disk_is_reported_and_recovers(self):
        data = os.path.join(self.mnt, "data")
        srv = Server(data_dir=data)
        srv.stderr_path = os.path.join(self.logdir, "cqrsd-stderr.log")
        srv.start()
        c = Client(srv)
        try:
            st, b = self.readyz(c)
            self.assertEqual((st, b.get("store_writable")), (200, True), b)
            self.assertEqual(self.writable_metric(c), 1.0)
            # fill it: large orders until the store refuses
            items = [{"sku": "sku-%d-%s" % (i, "x" * 40), "quantity": 1,
                      "unit_price_cents": 100} for i in range(100)]
            refused = None
            for _ in range(20000):
                st, _, b = c.command("PlaceOrder", order_body(items=items))
                if st == 503:
                    refused = b
                    break
                self.assertEqual(st, 202, b)
            self.assertIsNotNone(refused, "the store never refused a write")
            # nothing was written, the store says why: 503 store-unavailable
            assert_type(self, refused, "store-unavailable")
            st, b = self.readyz(c)
            self.assertEqual(st, 503, b)
            self.assertEqual(b["status"], "not_ready", b)
            self.assertIs(b["store_writable"], False, b)
            self.assertTrue(any("refuses writes" in r for r in b["reasons"]), b)
            self.assertEqual(self.writable_metric(c), 0.0)

            # room again: the writer's probe finds out with no client write
            r = subprocess.run(["mount", "-o", "remount,size=64m", self.mnt],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            self.assertEqual(r.returncode, 0, r.stdout)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                st, b = self.readyz(c)
                if b["store_writable"]:
                    break
                time.sleep(0.1)
            self.assertIs(b["store_writable"], True, b)
            self.assertEqual(self.writable_metric(c), 1.0)
            st, _, b = c.command("PlaceOrder", order_body())
            self.assertEqual(st, 202, b)
            log = srv.stderr_text()
            self.assertIn("the event store refuses writes", log)
            self.assertIn("the event store accepts writes again", log)
            # messages are not run together ("...is fullcannot rollback...")
            self.assertNotRegex(log, r"[a-z]cannot rollback")
        finally:
            c.close()
            srv.close()


if __name__ == "__main__":
    cqtest.main()
