"""Black-box tests of `cqrsd backup` and `cqrsd restore`
(docs/operations.md, "Backup and restore"):

- a backup taken while clients write holds every command acknowledged
  before it began, none acknowledged after it ended, and read models that
  are not ahead of its events; restored, it serves those commands (their
  keys replay), `cqrsd verify` passes on it, and the projector catches up;
- a backup without read.db restores to read models built from the events;
- restore refuses a non-empty directory (unless --force), a directory a
  server is using, and a backup that fails its checks, touching nothing;
  backup refuses an existing PATH and leaves nothing behind.

    python3 tests/blackbox/test_backup.py /path/to/cqrsd
"""
import hashlib
import http.client
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import unittest

sys.dont_write_bytecode = True

import cqtest  # noqa: E402
from cqtest import Client, Server, order_body  # noqa: E402


def run(test, *args):
    """`cqrsd ARGS...`: (exit code, stdout, stderr); fails `test` on a
    sanitizer report in its stderr."""
    p = subprocess.run([cqtest.BINARY] + list(args), stdin=subprocess.DEVNULL,
                       capture_output=True, text=True, timeout=600)
    for pat in cqtest.SANITIZER_PATTERNS:
        test.assertNotIn(pat, p.stderr, "cqrsd %s:\n%s" % (" ".join(args), p.stderr))
    return p.returncode, p.stdout, p.stderr


def ro(path):
    """A read-only connection to a database file nobody writes (a backup's
    copy, or a stopped server's)."""
    return sqlite3.connect("file:%s?mode=ro&immutable=1" % path, uri=True)


def tree(d):
    """{name: (size, mtime_ns)} of the files in d: to see that nothing
    changed."""
    out = {}
    for name in sorted(os.listdir(d)):
        st = os.stat(os.path.join(d, name))
        out[name] = (st.st_size, st.st_mtime_ns)
    return out


class Cmd:
    __slots__ = ("key", "ctype", "body", "status", "answer", "acked_at")

    def __init__(self, key, ctype, body):
        self.key, self.ctype, self.body = key, ctype, body
        self.status = self.answer = self.acked_at = None


class BackupTestBase(unittest.TestCase):
    maxDiff = 3000

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="cqrsd-bk-")
        self.addCleanup(shutil.rmtree, self.tmp, True)

    def path(self, name):
        return os.path.join(self.tmp, name)

    def verify(self, data_dir):
        rc, out, err = run(self, "verify", "--data", data_dir)
        self.assertEqual(rc, 0, "cqrsd verify --data %s:\n%s%s" % (data_dir, out, err))

    def backup(self, data_dir, to):
        rc, out, err = run(self, "backup", "--data", data_dir, "--to", to)
        self.assertEqual(rc, 0, "backup: %s%s" % (out, err))
        self.assertIn("backed up into", out)
        return self.manifest(to)

    def restore(self, frm, data_dir, *extra):
        rc, out, err = run(self, "restore", "--from", frm, "--data", data_dir, *extra)
        self.assertEqual(rc, 0, "restore: %s%s" % (out, err))
        self.assertIn("restored into", out)

    def manifest(self, backup_dir):
        with open(os.path.join(backup_dir, "cqrsd-backup.json")) as f:
            return json.load(f)

    def check_consistent(self, backup_dir):
        """What the backup holds: the manifest's head is events.db's, and
        no checkpoint of any read model (asynchronous in read.db, inline
        in events.db, a rebuild's shadow) is ahead of it."""
        m = self.manifest(backup_dir)
        con = ro(os.path.join(backup_dir, "events.db"))
        try:
            head = con.execute("SELECT coalesce(max(position), 0) FROM events").fetchone()[0]
            cps = con.execute("SELECT name, position FROM cq_projections").fetchall()
        finally:
            con.close()
        self.assertEqual(m["head_position"], head, m)
        if os.path.exists(os.path.join(backup_dir, "read.db")):
            con = ro(os.path.join(backup_dir, "read.db"))
            try:
                cps += con.execute("SELECT name, position FROM cq_projections").fetchall()
                cps += con.execute("SELECT name, position FROM cq_rebuilds").fetchall()
            finally:
                con.close()
        self.assertTrue(cps, "no checkpoints in the backup")
        for name, pos in cps:
            self.assertLessEqual(pos, head, "%s's checkpoint %d is ahead of the "
                                 "events (%d) in the backup" % (name, pos, head))
        self.assertEqual(sorted((c["projection"], c["position"]) for c in m["checkpoints"]),
                         sorted(cps))
        return m, cps


class BackupUnderLoadTest(BackupTestBase):

    def writer(self, srv, tid, cmds, lock, stop):
        """Keyed PlaceOrders and payments as fast as the server takes them
        until stop; each remembers when it was acknowledged."""
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=60)
        n = 0
        placed = []
        try:
            while not stop.is_set():
                n += 1
                key = "bk-%d-%d" % (tid, n)
                if placed and n % 3 == 0:
                    body = {"order_id": placed[-1], "payment_id": "p-%d" % n,
                            "amount_cents": 100}
                    cmd = Cmd(key, "RecordPayment", body)
                else:
                    body = order_body("bo-%d-%d" % (tid, n))
                    cmd = Cmd(key, "PlaceOrder", body)
                with lock:
                    cmds.append(cmd)
                conn.request("POST", "/commands/" + cmd.ctype, body=json.dumps(body),
                             headers={"Content-Type": "application/json",
                                      "Idempotency-Key": key})
                resp = conn.getresponse()
                data = resp.read()
                cmd.acked_at = time.monotonic()
                cmd.status, cmd.answer = resp.status, json.loads(data)
                if resp.status != 202:
                    raise AssertionError("%s -> %s %r" % (key, resp.status, cmd.answer))
                if cmd.ctype == "PlaceOrder":
                    placed.append(body["order_id"])
        finally:
            conn.close()

    def test_backup_under_load_restores_every_acknowledged_command(self):
        bk = self.path("backup")
        cmds, lock, stop = [], threading.Lock(), threading.Event()
        errors = []
        with Server(cqtest.BINARY) as srv:

            def guarded(tid):
                try:
                    self.writer(srv, tid, cmds, lock, stop)
                except Exception as e:  # noqa: BLE001
                    errors.append(repr(e))

            threads = [threading.Thread(target=guarded, args=(t,), daemon=True)
                       for t in range(6)]
            for t in threads:
                t.start()
            time.sleep(1.5)
            began = time.monotonic()
            m = self.backup(srv.data_dir, bk)
            ended = time.monotonic()
            time.sleep(0.5)
            stop.set()
            for t in threads:
                t.join(60)
            self.assertEqual(errors, [])
            c = Client(srv)
            live_head = c.head()
            c.close()
        before = [c for c in cmds if c.acked_at is not None and c.acked_at < began]
        after = [c for c in cmds if c.acked_at is not None and c.acked_at > ended]
        sys.stderr.write("\n  %d commands acknowledged before the backup began, %d after "
                         "it ended (%.2f s); head %d in the backup, %d at the end\n"
                         % (len(before), len(after), ended - began,
                            m["head_position"], live_head))
        self.assertGreater(len(before), 50, "too little load before the backup")
        self.assertTrue(after, "no load after the backup")

        # the backup on its own: read models not ahead of the events
        m, cps = self.check_consistent(bk)
        self.assertEqual(sorted(f["name"] for f in m["files"]), ["events.db", "read.db"])
        self.assertEqual(sorted({c[0] for c in cps}),
                         ["order_summaries", "payment_confirmation", "sales_dashboard"])

        # restored: verify first (read models may lag, never differ) ...
        data = self.path("restored")
        self.restore(bk, data)
        self.assertEqual(sorted(f for f in os.listdir(data)), ["events.db", "read.db"])
        self.verify(data)
        # ... then served
        with Server(cqtest.BINARY, data_dir=data) as srv:
            c = Client(srv)
            try:
                events, head = c.read_all()
                self.assertEqual(head, m["head_position"])
                self.assertEqual([e["position"] for e in events], list(range(1, head + 1)))
                by_pos = {e["position"]: e for e in events}
                ids = {e["metadata"]["command_id"] for e in events}
                for cmd in before:
                    for ev in cmd.answer["events"]:
                        got = by_pos.get(ev["position"])
                        self.assertIsNotNone(got, "%s acknowledged before the backup is "
                                             "missing" % cmd.key)
                        self.assertEqual((got["type"], got["version"],
                                          got["metadata"]["command_id"]),
                                         (ev["type"], ev["version"], cmd.answer["command_id"]))
                for cmd in after:
                    self.assertNotIn(cmd.answer["command_id"], ids,
                                     "%s, acknowledged after the backup ended, is in it"
                                     % cmd.key)
                # their keys replay, from the backed-up command log
                conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=60)
                try:
                    for cmd in before[::7]:
                        conn.request("POST", "/commands/" + cmd.ctype,
                                     body=json.dumps(cmd.body),
                                     headers={"Content-Type": "application/json",
                                              "Idempotency-Key": cmd.key})
                        resp = conn.getresponse()
                        self.assertEqual((resp.status, json.loads(resp.read())),
                                         (202, cmd.answer), cmd.key)
                        self.assertEqual(resp.getheader("Idempotency-Replayed"), "true")
                finally:
                    conn.close()
                self.assertEqual(c.head(), head, "a replay appended events")
                # the projector catches up from the backed-up checkpoints
                placed = [cmd for cmd in before if cmd.ctype == "PlaceOrder"]
                for cmd in placed[::10]:
                    st, _, b = c.get("/queries/order_summary?order_id=%s&min_position=%d"
                                     "&wait_ms=20000" % (cmd.body["order_id"], head))
                    self.assertEqual(st, 200, b)
                    self.assertFalse(b["meta"]["stale"], b)
                # and takes new commands after the restored head
                st, _, b = c.command("PlaceOrder", order_body())
                self.assertEqual((st, b.get("position")), (202, head + 1), b)
            finally:
                c.close()
        self.verify(data)


class BackupShapesTest(BackupTestBase):

    def test_stopped_server_and_no_read_db(self):
        src = self.path("data")
        with Server(cqtest.BINARY, data_dir=src) as srv:
            c = Client(srv)
            oid = order_body()["order_id"]
            st, _, b = c.command("PlaceOrder", order_body(oid))
            self.assertEqual(st, 202, b)
            c.close()
        # a stopped server's directory, without its read models
        for f in os.listdir(src):
            if f.startswith("read.db"):
                os.remove(os.path.join(src, f))
        bk = self.path("bk")
        m = self.backup(src, bk)
        self.assertEqual([f["name"] for f in m["files"]], ["events.db"])
        self.check_consistent(bk)
        data = self.path("restored")
        self.restore(bk, data)
        self.assertEqual(os.listdir(data), ["events.db"])
        with Server(cqtest.BINARY, data_dir=data) as srv:
            c = Client(srv)
            st, _, b = c.get("/queries/order_summary?order_id=%s&min_position=1"
                             "&wait_ms=20000" % oid)
            self.assertEqual(st, 200, b)
            c.close()
        self.verify(data)

    def test_restore_over_a_stopped_servers_data_with_force(self):
        src = self.path("data")
        with Server(cqtest.BINARY, data_dir=src) as srv:
            c = Client(srv)
            first = order_body()
            self.assertEqual(c.command("PlaceOrder", first)[0], 202)
            bk = self.path("bk")
            self.backup(src, bk)
            later = order_body()
            self.assertEqual(c.command("PlaceOrder", later)[0], 202)
            c.close()
        # back to the backup: the later order is gone, its WAL too
        self.restore(bk, src, "--force")
        self.assertNotIn("events.db-wal", os.listdir(src))
        with Server(cqtest.BINARY, data_dir=src) as srv:
            c = Client(srv)
            self.assertEqual(c.get("/streams/order-" + first["order_id"])[0], 200)
            self.assertEqual(c.get("/streams/order-" + later["order_id"])[0], 404)
            c.close()
        self.verify(src)


class RefusalTest(BackupTestBase):

    def setUp(self):
        super().setUp()
        self.src = self.path("data")
        self.srv = Server(cqtest.BINARY, data_dir=self.src)
        self.srv.start()
        self.addCleanup(self.srv.close)
        c = Client(self.srv)
        self.assertEqual(c.command("PlaceOrder", order_body())[0], 202)
        c.close()
        self.bk = self.path("bk")
        self.backup(self.src, self.bk)

    def refused(self, want, *args):
        rc, out, err = run(self, *args)
        self.assertEqual(rc, 1, "%s: %s%s" % (args, out, err))
        self.assertIn(want, err)
        self.assertEqual(out, "")
        return err

    def test_backup_into_an_existing_path(self):
        os.mkdir(self.path("there"))
        self.refused("exists", "backup", "--data", self.src, "--to", self.path("there"))
        self.assertEqual(os.listdir(self.path("there")), [])
        self.refused("exists", "backup", "--data", self.src, "--to", self.bk)
        self.refused("no events.db", "backup", "--data", self.path("nothing"),
                     "--to", self.path("b2"))
        # nothing left behind, not even a partial directory
        self.assertEqual(sorted(os.listdir(self.tmp)), ["bk", "data", "there"])

    def test_restore_into_a_non_empty_directory(self):
        target = self.path("target")
        os.mkdir(target)
        with open(os.path.join(target, "notes.txt"), "w") as f:
            f.write("mine")
        self.refused("not empty", "restore", "--from", self.bk, "--data", target)
        self.assertEqual(os.listdir(target), ["notes.txt"])
        # with --force the databases are put in, other files stay
        self.restore(self.bk, target, "--force")
        self.assertEqual(sorted(os.listdir(target)), ["events.db", "notes.txt", "read.db"])
        self.verify(target)

    def test_restore_over_a_running_server(self):
        before = tree(self.src)
        self.refused("in use", "restore", "--from", self.bk, "--data", self.src, "--force")
        after = tree(self.src)
        for f in ("events.db", "read.db"):
            self.assertEqual(after[f], before[f], f)
        self.srv.check_alive()
        c = Client(self.srv)
        self.assertEqual(c.healthz()[0], 200)
        c.close()

    def test_damaged_backups_are_refused_before_anything_is_copied(self):
        def damaged(name, how):
            d = self.path(name)
            shutil.copytree(self.bk, d)
            how(d)
            return d

        def flip(d):  # one byte inside events.db
            with open(os.path.join(d, "events.db"), "r+b") as f:
                f.seek(os.path.getsize(os.path.join(d, "events.db")) // 2)
                b = f.read(1)
                f.seek(-1, 1)
                f.write(bytes([b[0] ^ 0x40]))

        def truncate(d):
            p = os.path.join(d, "read.db")
            os.truncate(p, os.path.getsize(p) // 2)

        def no_manifest(d):
            os.remove(os.path.join(d, "cqrsd-backup.json"))

        def no_events(d):
            os.remove(os.path.join(d, "events.db"))

        def ahead(d):
            # read models ahead of the events, the manifest made to match
            p = os.path.join(d, "read.db")
            con = sqlite3.connect(p)
            con.execute("UPDATE cq_projections SET position = position + 100")
            con.commit()
            con.execute("PRAGMA journal_mode = DELETE")
            con.close()
            m = self.manifest(d)
            with open(p, "rb") as f:
                data = f.read()
            for f in m["files"]:
                if f["name"] == "read.db":
                    f["bytes"], f["sha256"] = len(data), hashlib.sha256(data).hexdigest()
            with open(os.path.join(d, "cqrsd-backup.json"), "w") as f:
                json.dump(m, f)

        for name, how, want in (("flipped", flip, "is not the file the backup made"),
                                ("truncated", truncate, "is not the file the backup made"),
                                ("bare", no_manifest, "is not a backup"),
                                ("no-events", no_events, "events.db"),
                                ("ahead", ahead, "ahead of events.db")):
            with self.subTest(name):
                d = damaged(name, how)
                target = self.path("target-" + name)
                self.refused(want, "restore", "--from", d, "--data", target)
                self.assertFalse(os.path.exists(target), "a refused restore made %s" % target)
                # and over existing data, even with --force: untouched
                other = self.path("other-" + name)
                shutil.copytree(self.bk, other, ignore=shutil.ignore_patterns("*.json"))
                before = tree(other)
                self.refused(want, "restore", "--from", d, "--data", other, "--force")
                self.assertEqual(tree(other), before)

    def test_usage(self):
        for args in (("backup",), ("backup", "--data", self.src),
                     ("backup", "--to", self.path("x")),
                     ("backup", "--data", self.src, "--to"),
                     ("backup", "--data", self.src, "--to", self.path("x"), "--force"),
                     ("restore", "--from", self.bk),
                     ("restore", "--data", self.path("x")),
                     ("restore", "--from", self.bk, "--data", self.path("x"), "--bogus")):
            with self.subTest(args=args):
                rc, out, err = run(self, *args)
                self.assertEqual(rc, 2, "%s: %s%s" % (args, out, err))
                self.assertIn("usage:", err)
        self.assertFalse(os.path.exists(self.path("x")))


if __name__ == "__main__":
    cqtest.main()
