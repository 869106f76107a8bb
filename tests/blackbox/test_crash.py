"""Crash safety: clients send commands with Idempotency-Keys while the server
is killed with SIGKILL at random moments; nothing acknowledged may be lost or
duplicated, positions stay gap-free and every key replays its answer. A
blue/green rebuild is killed twice: while it replays (not paused, commands
coming in) and while it swaps its tables in. Every test ends with `cqrsd
verify` on what the kills left.

    python3 tests/blackbox/test_crash.py /path/to/cqrsd

Environment: CQ_SEED (random seed), CQ_CRASH_KILLS (default 4),
CQ_CRASH_MAX_PER_THREAD (default 400 commands).
"""
import http.client
import json
import os
import random
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
from problems import assert_type  # noqa: E402
from cqtest import Server  # noqa: E402

THREADS = 8
KILLS = int(os.environ.get("CQ_CRASH_KILLS", "4"))
MAX_PER_THREAD = int(os.environ.get("CQ_CRASH_MAX_PER_THREAD", "400"))
ORDER_TOTAL = 500       # one item: 5 x 100
PAYMENT = 100           # so 5 payments pay an order in full
TRAFFIC_MAX_S = 25.0    # traffic phase, at most
RETRY_GRACE_S = 30.0    # after the traffic phase, for unanswered commands


# A projection whose handler counts to 500 for every order: some work per
# event, so its rebuild can be caught replaying.
SLOW_SQL = """\
-- @projection crash_slow
-- @version 1
-- @mode async

CREATE TABLE IF NOT EXISTS crash_slow (
    order_id    TEXT PRIMARY KEY,
    customer_id TEXT NOT NULL,
    work        INTEGER NOT NULL
);

-- @on OrderPlaced
INSERT INTO crash_slow (order_id, customer_id, work)
VALUES (:data.order_id, :data.customer_id,
        (WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 500)
         SELECT count(*) FROM n))
ON CONFLICT (order_id) DO NOTHING;

-- @query crash_slow_orders
-- @result list
SELECT order_id, customer_id FROM crash_slow ORDER BY order_id;
"""


def place_cmd(key, order_id, tid):
    return Cmd(key, "PlaceOrder",
               {"order_id": order_id, "customer_id": "cust-%d" % tid, "currency": "EUR",
                "items": [{"sku": "sku-%d" % tid, "quantity": 5,
                           "unit_price_cents": PAYMENT}]}, order_id)


def rebuild_row(read_db, name):
    """(position, reason) of name's rebuild in progress in read.db, or None
    (read with the server stopped)."""
    con = sqlite3.connect("file:%s?mode=ro" % read_db, uri=True)
    try:
        return con.execute("SELECT position, reason FROM cq_rebuilds WHERE name = ?",
                           (name,)).fetchone()
    finally:
        con.close()


def rebuild_logged(read_db, name, started_at):
    """The outcome cq_rebuild_log has for name's rebuild that started at
    started_at (RFC 3339, as the status shows it), or None."""
    con = sqlite3.connect("file:%s?mode=ro" % read_db, uri=True)
    try:
        rows = con.execute("SELECT started_at, outcome FROM cq_rebuild_log WHERE name = ?",
                           (name,)).fetchall()
    finally:
        con.close()
    for ms, outcome in rows:
        t = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000))
        if started_at == "%s.%03dZ" % (t, ms % 1000):
            return outcome
    return None


def old_tables(read_db):
    con = sqlite3.connect("file:%s?mode=ro" % read_db, uri=True)
    try:
        return [r[0] for r in con.execute(
            "SELECT name FROM sqlite_schema WHERE name LIKE '%\\_\\_cq\\_old' ESCAPE '\\'")]
    finally:
        con.close()


def plant_views(read_db, n):
    """n views over a table of their own in read.db (server stopped): they
    make every ALTER TABLE ... RENAME on it slower (see the test)."""
    con = sqlite3.connect(read_db, timeout=30)
    try:
        con.executescript(
            "BEGIN; CREATE TABLE crash_pad (a INTEGER);" +
            "".join("CREATE VIEW crash_pad_v%d AS SELECT a, %d AS k FROM crash_pad;" % (i, i)
                    for i in range(n)) + "COMMIT;")
    finally:
        con.close()


class Cmd:
    __slots__ = ("key", "ctype", "body", "order_id", "payment_id", "expect", "status",
                 "answer", "replayed", "attempts", "errors")

    def __init__(self, key, ctype, body, order_id, payment_id=None, expect=202):
        self.key = key
        self.ctype = ctype
        self.body = json.dumps(body, sort_keys=True).encode()
        self.order_id = order_id
        self.payment_id = payment_id
        self.expect = expect    # the status the command must get
        self.status = None      # first answer's status (None: never answered)
        self.answer = None      # first answer's parsed body
        self.replayed = None    # first answer's Idempotency-Replayed header
        self.attempts = 0
        self.errors = 0


class Conn:
    """One keep-alive connection that follows the server's port."""

    def __init__(self, server, timeout=cqtest.REQUEST_TIMEOUT):
        self.server = server
        self.timeout = timeout
        self.conn = None

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def send(self, cmd):
        """One attempt: (status, headers, body) or raises OSError/HTTPException."""
        if self.conn is None:
            self.conn = http.client.HTTPConnection("127.0.0.1", self.server.port,
                                                   timeout=self.timeout)
        try:
            self.conn.request("POST", "/commands/" + cmd.ctype, body=cmd.body,
                              headers={"Content-Type": "application/json",
                                       "Idempotency-Key": cmd.key})
            resp = self.conn.getresponse()
            data = resp.read()
        except BaseException:
            self.close()
            raise
        headers = {k.lower(): v for k, v in resp.getheaders()}
        if resp.will_close:
            self.close()
        try:
            body = json.loads(data.decode())
        except ValueError:
            body = data.decode("utf-8", "replace")
        return resp.status, headers, body


class CrashTest(unittest.TestCase):
    maxDiff = 3000

    def setUp(self):
        self.no_replay_header = []
        self.seed = int(os.environ.get("CQ_SEED", str(time.time_ns() % (2 ** 31))))
        print("\ncrash test seed: CQ_SEED=%d" % self.seed, flush=True)

    def verify(self, data_dir, *args):
        """`cqrsd verify` on a stopped server's directory: every read model
        must equal a replay of the events the kills left."""
        p = subprocess.run([cqtest.BINARY, "verify", "--data", data_dir] + list(args),
                           stdin=subprocess.DEVNULL, capture_output=True, timeout=600)
        out = p.stdout.decode("utf-8", "replace")
        err = p.stderr.decode("utf-8", "replace")
        for pat in cqtest.SANITIZER_PATTERNS:
            self.assertNotIn(pat, err, "cqrsd verify: sanitizer report:\n" + err)
        self.assertEqual(p.returncode, 0, "cqrsd verify after the kills:\n%s%s"
                         % (out, err))
        self.assertIn("every projection matches its events", out)

    def test_crash_safety(self):
        rng = random.Random(self.seed)
        with Server(cqtest.BINARY) as srv:
            self.run_crash(srv, rng)
            srv.stop()
            self.verify(srv.data_dir)

    def test_sigterm_under_load(self):
        """SIGTERM while clients are busy (3 rounds): exit code 0 each time,
        and every command answered 202 before a stop is in the store."""
        rng = random.Random(self.seed + 1)
        with Server(cqtest.BINARY) as srv:
            cmds = []
            lock = threading.Lock()
            errors = []
            refused_503 = []

            def worker(rnd, tid, stopping):
                conn = Conn(srv)
                n = 0
                try:
                    while n < 500:
                        n += 1
                        oid = "st-%d-%d-%d-%d" % (self.seed, rnd, tid, n)
                        cmd = Cmd("sk-%d-%d-%d-%d" % (self.seed, rnd, tid, n), "PlaceOrder",
                                  {"order_id": oid, "customer_id": "c", "currency": "EUR",
                                   "items": [{"sku": "s", "quantity": 1,
                                              "unit_price_cents": 100}]}, oid)
                        with lock:
                            cmds.append(cmd)
                        try:
                            st, h, b = conn.send(cmd)
                        except (OSError, http.client.HTTPException):
                            if stopping.is_set():
                                return
                            raise
                        if st >= 500 and stopping.is_set():
                            # refused while shutting down: not processed
                            with lock:
                                refused_503.append((st, h.get("retry-after"), b))
                            return
                        cmd.status, cmd.answer = st, b
                        if st != 202:
                            raise AssertionError("%s -> %s %r" % (cmd.key, st, b))
                except Exception as e:  # noqa: BLE001
                    errors.append(repr(e))
                finally:
                    conn.close()

            for rnd in range(3):
                if rnd:
                    srv.start()
                stopping = threading.Event()
                threads = [threading.Thread(target=worker, args=(rnd, t, stopping), daemon=True)
                           for t in range(THREADS)]
                for t in threads:
                    t.start()
                time.sleep(rng.uniform(0.3, 1.0))
                stopping.set()
                srv.stop()  # SIGTERM; asserts exit code 0
                for t in threads:
                    t.join(60)
                self.assertEqual(errors, [])
            acked = [c for c in cmds if c.status == 202]
            self.assertGreater(len(acked), 5, "too few commands before the stops")
            # a write refused because the server is stopping is 503
            # `unavailable` with Retry-After: 1 (docs/api.md, "Errors")
            for st, retry_after, b in refused_503:
                self.assertEqual(st, 503, b)
                assert_type(self, b, "unavailable")
                self.assertEqual(retry_after, "1", b)
            sys.stderr.write("\n  SIGTERM rounds: %d commands acknowledged, %d refused "
                             "with 503 while stopping\n" % (len(acked), len(refused_503)))
            srv.start()
            client = cqtest.Client(srv)
            try:
                events, head = client.read_all()
                self.assertEqual([e["position"] for e in events], list(range(1, head + 1)))
                by_pos = {e["position"]: e for e in events}
                for c in acked:
                    ev = by_pos.get(c.answer["position"])
                    self.assertIsNotNone(ev, "acknowledged %s lost by SIGTERM" % c.key)
                    self.assertEqual((ev["stream_id"], ev["type"], ev["version"]),
                                     ("order-" + c.order_id, "OrderPlaced", 1))
                placed = {e["stream_id"] for e in events}
                self.assertEqual(len(placed), len(events), "an order placed twice")
                conn = Conn(srv)
                for c in cmds:
                    st, h, b = conn.send(c)
                    self.assertEqual(st, 202, "%s -> %s %r" % (c.key, st, b))
                    if c.status == 202:
                        self.assertEqual(b, c.answer)
                        self.assertEqual(h.get("idempotency-replayed", "").lower(), "true")
                conn.close()
            finally:
                client.close()
            srv.stop()
            self.verify(srv.data_dir)

    # ------------------------------------------------------------------

    def test_kills_during_rebuild_and_swap(self):
        """SIGKILL lands while a blue/green rebuild replays (not paused,
        with commands coming in), and again while it swaps its tables in;
        each time the rebuild resumes at the next start from its own
        checkpoint, nothing acknowledged is lost, every key replays, and
        `cqrsd verify` agrees with the read models at the end.

        The replay is made slow enough to be caught half-way by a
        projection whose handler does some work per event (SLOW_SQL); the
        swap by planting views in read.db: SQLite's ALTER TABLE ... RENAME,
        which the swap runs for every table, checks each view of the
        schema, so a few thousand of them stretch the swap's transaction to
        a good part of a second. The swap runs once the shadow has reached
        the head, in the same projector step, so a kill sent as soon as the
        status shows events_done == events_total lands in it; read.db then
        proves it did (the rebuild's checkpoint row is still there, at the
        head, and no rebuild was logged)."""
        rng = random.Random(self.seed + 2)
        pdir = tempfile.mkdtemp(prefix="cqrsd-crash-p-")
        self.addCleanup(shutil.rmtree, pdir, True)
        with open(os.path.join(pdir, "crash_slow.sql"), "w") as f:
            f.write(SLOW_SQL)
        run = "%x" % (self.seed & 0xFFFFFF)
        cmds = []
        with Server(cqtest.BINARY, args=("--projections", pdir)) as srv:
            c = cqtest.Client(srv)
            try:
                # 1300 orders (a rebuild step replays 1000 events at most,
                # so it takes two), applied by the live projection first
                loaded = [place_cmd("rl-%s-%d" % (run, i), "ro-%s-%d" % (run, i), i % 8)
                          for i in range(1300)]
                for cmd, (st, h, b) in zip(loaded, self.resend_all(srv, loaded)):
                    self.assertEqual(st, 202, b)
                    cmd.status, cmd.answer = st, b
                cmds.extend(loaded)
                head = c.head()
                self.wait_position(c, "crash_slow", head, 300)

                # ---- kill 1: the rebuild replays, commands come in ----------
                # (a rebuild that ends before the poll sees it half-way, on
                # a fast machine, is tried again)
                stop = threading.Event()
                lock = threading.Lock()
                traffic = [threading.Thread(target=self.rebuild_traffic,
                                            args=(srv, run, t, cmds, lock, stop),
                                            daemon=True) for t in range(2)]
                for t in traffic:
                    t.start()
                for attempt in range(3):
                    started = self.start_rebuild(c)
                    rb = self.poll_rebuild(
                        c, started, lambda r: 1000 <= r["events_done"] < r["events_total"])
                    if rb is not None:
                        break
                self.assertIsNotNone(rb, "3 rebuilds ended before one was seen half-way")
                stop.set()
                srv.kill()
                for t in traffic:
                    t.join(120)
                sys.stderr.write("\n  rebuild killed half-way: %d/%d events\n"
                                 % (rb["events_done"], rb["events_total"]))
                read_db = os.path.join(srv.data_dir, "read.db")
                shadow = rebuild_row(read_db, "crash_slow")
                self.assertIsNotNone(shadow, "the rebuild's checkpoint is gone")
                self.assertGreaterEqual(shadow[0], 1000, "the shadow checkpoint did not "
                                        "persist the replayed events: %r" % (shadow,))
                plant_views(read_db, 3000)

                # ---- kill 2: the swap ---------------------------------------
                # the resumed rebuild first; should its swap be done before
                # the kill lands, a new rebuild (at most 3 tries)
                resumed = 1
                srv.start()
                s = self.status(c, "crash_slow")
                self.assertIsNotNone(s["rebuild"], s)
                self.assertEqual((s["rebuild"]["reason"], s["rebuild"]["started_at"]),
                                 ("resumed", started), s)
                self.assertGreaterEqual(s["rebuild"]["events_done"], shadow[0], s)
                landed = None
                for attempt in range(3):
                    if attempt:
                        started = self.start_rebuild(c)
                    rb = self.poll_rebuild(
                        c, started, lambda r: r["events_done"] == r["events_total"])
                    if rb is None:
                        continue  # swapped before the poll saw the head
                    srv.kill()
                    shadow = rebuild_row(read_db, "crash_slow")
                    if shadow is not None:
                        landed = rb
                        break
                    # the swap had committed: it was logged, whole
                    self.assertEqual(rebuild_logged(read_db, "crash_slow", started), "done")
                    srv.start()
                self.assertIsNotNone(landed, "no kill landed in a swap in 3 tries")
                # the swap's transaction did not commit: the shadow at the
                # head is still the rebuild's, nothing logged, no table of a
                # half swap
                self.assertEqual(shadow[0], landed["events_total"], shadow)
                self.assertIsNone(rebuild_logged(read_db, "crash_slow", started))
                self.assertEqual(old_tables(read_db), [],
                                 "tables of a half-done swap are in read.db")
                sys.stderr.write("  rebuild killed in its swap, at %d events (try %d)\n"
                                 % (landed["events_total"], attempt + 1))
                resumed += 1

                # ---- the rebuild ends after the next start -------------------
                srv.start()
                s = self.wait_rebuilt(c, "crash_slow", started)
                self.assertEqual(s["last_rebuild"]["outcome"], "done", s)
                self.assertEqual(s["status"], "running", s)
                self.assertEqual(srv.stderr_text().count(
                    "crash_slow: rebuild resumed (requested)"), resumed,
                    "the rebuild did not resume after each kill")
                self.assertEqual(old_tables(read_db), [])
                self.assertEqual(rebuild_logged(read_db, "crash_slow", started), "done")

                # every command: answered now, the same answer again
                first = self.resend_all(srv, cmds)
                for cmd, (st, h, b) in zip(cmds, first):
                    if cmd.status is not None:
                        self.check_replay(cmd, st, h, b, "after the rebuild kills")
                    else:
                        self.assertEqual(st, cmd.expect, "late %s -> %s %r" % (cmd.key, st, b))
                        cmd.status, cmd.answer = st, b
                head = c.head()
                self.verify_store(c, cmds, head)
                self.wait_position(c, "crash_slow", head, 300)
            finally:
                c.close()
            srv.stop()
            self.verify(srv.data_dir, "--projections", pdir)
        self.assertEqual(self.no_replay_header[:10], [])

    def rebuild_traffic(self, srv, run, tid, cmds, lock, stop):
        """PlaceOrder and payments with keys until `stop`; a command the
        kill cut off stays unanswered (resent later)."""
        wr = random.Random(self.seed * 7 + tid)
        conn = Conn(srv)
        placed = []
        n = 0
        try:
            while not stop.is_set():
                n += 1
                key = "rt-%s-%d-%d" % (run, tid, n)
                if placed and wr.random() < 0.4:
                    slot = wr.choice(placed)
                    slot[1] += 1
                    if slot[1] >= 4:
                        placed.remove(slot)
                    pid = "rp-%s-%d-%d" % (run, tid, n)
                    cmd = Cmd(key, "RecordPayment", {"order_id": slot[0], "payment_id": pid,
                                                     "amount_cents": PAYMENT}, slot[0], pid)
                else:
                    cmd = place_cmd(key, "rto-%s-%d-%d" % (run, tid, n), tid)
                with lock:
                    cmds.append(cmd)
                try:
                    st, h, b = conn.send(cmd)
                except (OSError, http.client.HTTPException):
                    return
                if st >= 500:
                    return
                cmd.status, cmd.answer = st, b
                cmd.replayed = h.get("idempotency-replayed")
                if cmd.ctype == "PlaceOrder" and st == 202:
                    placed.append([cmd.order_id, 0])
                time.sleep(wr.uniform(0.005, 0.03))
        finally:
            conn.close()

    def status(self, c, name):
        st, _, b = c.get("/projections/" + name)
        self.assertEqual(st, 200, b)
        return b

    def start_rebuild(self, c):
        st, _, b = c.post("/projections/crash_slow/rebuild")
        self.assertEqual(st, 202, b)
        return b["rebuild"]["started_at"]

    def poll_rebuild(self, c, started, cond, timeout=300.0):
        """Poll crash_slow's rebuild that started at `started` until
        cond(its status) holds: that status, or None once it has ended."""
        deadline = time.monotonic() + timeout
        while True:
            s = self.status(c, "crash_slow")
            rb = s["rebuild"]
            if rb is None or rb["started_at"] != started:
                return None
            if cond(rb):
                return rb
            self.assertLess(time.monotonic(), deadline, "rebuild stuck: %r" % (s,))
            time.sleep(0.003)

    def wait_rebuilt(self, c, name, started, timeout=300.0):
        deadline = time.monotonic() + timeout
        while True:
            s = self.status(c, name)
            last = s["last_rebuild"]
            if s["rebuild"] is None and last is not None and last["started_at"] == started:
                return s
            self.assertLess(time.monotonic(), deadline, "rebuild did not end: %r" % (s,))
            time.sleep(0.02)

    def wait_position(self, c, name, position, timeout):
        deadline = time.monotonic() + timeout
        while self.status(c, name)["position"] < position:
            self.assertLess(time.monotonic(), deadline,
                            "%s did not reach %d" % (name, position))
            time.sleep(0.02)

    def run_crash(self, srv, rng):
        lock = threading.Lock()
        cmds = []                      # every command ever sent
        server_errors = []             # 5xx answers
        stop_traffic = threading.Event()
        hard_deadline = [time.monotonic() + TRAFFIC_MAX_S + RETRY_GRACE_S]
        up = threading.Event()         # set while the server is (believed) up
        up.set()
        run = "%x%x" % (self.seed & 0xFFFF, rng.randrange(1 << 16))

        def send_until_answered(conn, cmd):
            while time.monotonic() < hard_deadline[0]:
                if not up.is_set():
                    up.wait(0.5)
                    continue
                cmd.attempts += 1
                try:
                    st, h, b = conn.send(cmd)
                except (OSError, http.client.HTTPException):
                    cmd.errors += 1
                    time.sleep(0.02)
                    continue
                if st >= 500:
                    with lock:
                        server_errors.append((cmd.ctype, cmd.key, st, b))
                    time.sleep(0.05)
                    continue
                cmd.status, cmd.answer = st, b
                cmd.replayed = h.get("idempotency-replayed")
                return True
            return False

        def worker(tid):
            wr = random.Random(self.seed * 31 + tid)
            conn = Conn(srv)
            payable = []               # [order_id, payments sent]
            n = 0
            try:
                while not stop_traffic.is_set() and n < MAX_PER_THREAD:
                    n += 1
                    key = "ck-%s-%d-%d" % (run, tid, n)
                    if payable and wr.random() < 0.05:
                        # refused for sure: orders in `payable` are never
                        # fully paid, and this thread's earlier commands
                        # have all been answered
                        oid = wr.choice(payable)[0]
                        cmd = Cmd(key, "ShipOrder", {"order_id": oid, "carrier": "UPS",
                                                     "tracking_number": "t-%d" % n},
                                  oid, expect=422)
                    elif payable and wr.random() < 0.45:
                        slot = wr.choice(payable)
                        slot[1] += 1
                        if slot[1] >= ORDER_TOTAL // PAYMENT:
                            payable.remove(slot)
                        pid = "pay-%s-%d-%d" % (run, tid, n)
                        cmd = Cmd(key, "RecordPayment",
                                  {"order_id": slot[0], "payment_id": pid,
                                   "amount_cents": PAYMENT}, slot[0], pid)
                    else:
                        oid = "co-%s-%d-%d" % (run, tid, n)
                        cmd = Cmd(key, "PlaceOrder",
                                  {"order_id": oid, "customer_id": "cust-%d" % tid,
                                   "currency": "EUR",
                                   "items": [{"sku": "sku-%d" % (n % 7), "quantity": 5,
                                              "unit_price_cents": PAYMENT}]}, oid)
                    with lock:
                        cmds.append(cmd)
                    if not send_until_answered(conn, cmd):
                        break
                    if cmd.ctype == "PlaceOrder" and cmd.status == 202:
                        payable.append([cmd.order_id, 0])
                    # paced, so that the kills land in the middle of traffic
                    # and the verification stays short
                    time.sleep(wr.uniform(0.005, 0.04))
            finally:
                conn.close()

        workers = [threading.Thread(target=worker, args=(t,), daemon=True)
                   for t in range(THREADS)]
        t0 = time.monotonic()
        for t in workers:
            t.start()

        kill_times = []
        try:
            for i in range(KILLS):
                time.sleep(rng.uniform(0.3, 2.5))
                if time.monotonic() - t0 > TRAFFIC_MAX_S - 3:
                    break
                up.clear()
                srv.kill()
                kill_times.append(round(time.monotonic() - t0, 2))
                time.sleep(rng.uniform(0.0, 0.2))
                srv.start()
                up.set()
            time.sleep(rng.uniform(0.3, 1.0))
        finally:
            up.set()
            stop_traffic.set()
            hard_deadline[0] = min(hard_deadline[0], time.monotonic() + RETRY_GRACE_S)
        for t in workers:
            t.join(RETRY_GRACE_S + 60)
            self.assertFalse(t.is_alive(), "a client thread is stuck")
        srv.check_alive()
        self.assertEqual(len(kill_times), KILLS, "fewer kills than planned: %r" % kill_times)

        acked = [c for c in cmds if c.status is not None]
        unanswered = [c for c in cmds if c.status is None]
        print("crash test: %d commands (%d answered, %d unanswered), kills at %r s, "
              "%d connection errors, %d 5xx, traffic %.1f s"
              % (len(cmds), len(acked), len(unanswered), kill_times,
                 sum(c.errors for c in cmds), len(server_errors), time.monotonic() - t0),
              flush=True)
        self.assertGreater(len(acked), 20, "too few commands got through")

        # every command was valid and unique: anything but 202 means the
        # server lost the idempotency record of a command it had committed
        # (409 for an order that "already exists", [] for a "repeated"
        # payment) or broke otherwise.
        bad = [(c.ctype, c.key, c.status, c.answer) for c in acked
               if c.status != c.expect or not isinstance(c.answer, dict)
               or (c.expect == 202 and not c.answer.get("events"))]
        self.assertEqual(bad, [], "commands answered otherwise than expected")
        self.assertEqual([e for e in server_errors if e[2] != 503], [],
                         "5xx answers during the crash test")

        client = cqtest.Client(srv)
        try:
            head0 = client.head()
            for c in acked:
                for e in c.answer.get("events", []) if c.status == 202 else []:
                    self.assertLessEqual(e["position"], head0,
                                         "acknowledged position beyond the head: %r" % (c.answer,))

            # ---- first resend of everything ---------------------------------
            first = self.resend_all(srv, cmds)
            for c, (st, h, b) in zip(cmds, first):
                if c.status is not None:
                    self.check_replay(c, st, h, b, "first resend")
                else:
                    # never answered: processed now, or a replay of a command
                    # that was committed before a crash
                    self.assertEqual(st, c.expect, "late command %s -> %s %r" % (c.key, st, b))
                    self.assertIsInstance(b, dict)
                    if c.expect == 202:
                        self.assertTrue(b.get("events"), "late command %s emitted nothing: %r"
                                        % (c.key, b))
                    c.status, c.answer, c.replayed = st, b, h.get("idempotency-replayed")
            head1 = client.head()

            # ---- the store itself ---------------------------------------------
            self.verify_store(client, cmds, head1)

            # ---- second resend: all replays, nothing appended -----------------
            second = self.resend_all(srv, cmds)
            for c, (st, h, b) in zip(cmds, second):
                self.check_replay(c, st, h, b, "second resend")
            self.assertEqual(client.head(), head1, "the second resend appended events")

            # ---- a clean restart keeps everything -----------------------------
            client.close()
            srv.restart()
            self.assertEqual(client.head(), head1, "head changed across a clean restart")
            sample = random.Random(self.seed).sample(cmds, min(50, len(cmds)))
            conn = Conn(srv)
            try:
                for c in sample:
                    st, h, b = conn.send(c)
                    self.check_replay(c, st, h, b, "after a clean restart")
            finally:
                conn.close()
            self.assertEqual(client.head(), head1)
        finally:
            client.close()
        # checked last, so that it does not hide the failures above
        self.assertEqual(self.no_replay_header[:10], [],
                         "%d replays without Idempotency-Replayed: true (first 10 shown)"
                         % len(self.no_replay_header))

    def check_replay(self, c, st, h, b, when):
        self.assertEqual((st, b), (c.status, c.answer),
                         "%s of %s %s: answer differs from the original" % (when, c.ctype, c.key))
        if str(h.get("idempotency-replayed", "")).lower() != "true":
            self.no_replay_header.append((when, c.ctype, c.key, st))

    def resend_all(self, srv, cmds):
        """Resend every command (same key and body) from 8 threads; returns
        the answers in order."""
        out = [None] * len(cmds)
        failures = []

        def part(i0):
            conn = Conn(srv)
            try:
                for i in range(i0, len(cmds), THREADS):
                    for attempt in range(3):
                        try:
                            out[i] = conn.send(cmds[i])
                            break
                        except (OSError, http.client.HTTPException) as e:
                            if attempt == 2:
                                failures.append((cmds[i].key, repr(e)))
                            time.sleep(0.05)
            finally:
                conn.close()

        threads = [threading.Thread(target=part, args=(t,), daemon=True) for t in range(THREADS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        srv.check_alive()
        self.assertEqual(failures, [], "resends that got no answer")
        self.assertNotIn(None, out)
        return out

    def verify_store(self, client, cmds, head):
        events, head_seen = client.read_all(page=1000)
        self.assertEqual(head_seen, head)
        positions = [e["position"] for e in events]
        self.assertEqual(len(positions), len(set(positions)), "duplicate positions in $all")
        self.assertEqual(positions, list(range(1, head + 1)),
                         "$all is not 1..head without gaps")
        by_pos = {e["position"]: e for e in events}

        streams = {}
        for e in events:
            streams.setdefault(e["stream_id"], []).append(e)
        for sid, evs in streams.items():
            self.assertEqual([e["version"] for e in evs], list(range(1, len(evs) + 1)),
                             "versions of %s in $all" % sid)
            placed = [e for e in evs if e["type"] == "OrderPlaced"]
            self.assertEqual(len(placed), 1, "%s has %d OrderPlaced" % (sid, len(placed)))
            self.assertEqual(placed[0]["version"], 1)
            paid = sum(e["data"]["amount_cents"] for e in evs if e["type"] == "PaymentReceived")
            self.assertLessEqual(paid, ORDER_TOTAL, "%s overpaid" % sid)
            n_paid = len([e for e in evs if e["type"] == "OrderPaid"])
            self.assertEqual(n_paid, 1 if paid == ORDER_TOTAL else 0,
                             "%s: %d OrderPaid for %d paid" % (sid, n_paid, paid))

        payment_ids = [e["data"]["payment_id"] for e in events if e["type"] == "PaymentReceived"]
        dups = sorted({p for p in payment_ids if payment_ids.count(p) > 1}) \
            if len(payment_ids) != len(set(payment_ids)) else []
        self.assertEqual(dups, [], "payments recorded twice")

        # each acknowledged command's events, exactly once, where it said
        expected_positions = set()
        for c in cmds:
            if c.expect != 202:
                continue
            a = c.answer
            sid = "order-" + c.order_id
            self.assertEqual(a["stream_id"], sid)
            want = ["OrderPlaced"] if c.ctype == "PlaceOrder" else ["PaymentReceived"]
            types = [e["type"] for e in a["events"]]
            if c.ctype == "RecordPayment" and types == ["PaymentReceived", "OrderPaid"]:
                want = types
            self.assertEqual(types, want, "%s %s answered %r" % (c.ctype, c.key, a))
            for e in a["events"]:
                st = by_pos.get(e["position"])
                self.assertIsNotNone(st, "acked position %d missing" % e["position"])
                self.assertEqual((st["stream_id"], st["version"], st["type"]),
                                 (sid, e["version"], e["type"]),
                                 "acked event of %s not at its position %d"
                                 % (c.key, e["position"]))
                self.assertEqual(st["metadata"].get("command_id"), a["command_id"],
                                 "event at %d belongs to another command" % e["position"])
                self.assertNotIn(e["position"], expected_positions,
                                 "two commands acknowledged position %d" % e["position"])
                expected_positions.add(e["position"])
            if c.ctype == "PlaceOrder":
                self.assertEqual(a["version"], 1)
                self.assertEqual(by_pos[a["position"]]["data"]["order_id"], c.order_id)
            else:
                ev = by_pos[a["events"][0]["position"]]
                self.assertEqual(ev["data"]["payment_id"], c.payment_id)
        # nothing in the store that no command accounts for
        self.assertEqual(expected_positions, set(positions),
                         "events in the store that no acknowledged command emitted")

        # the per-stream reads agree with $all
        for sid, evs in streams.items():
            st, _, b = client.get("/streams/%s?limit=1000" % sid)
            self.assertEqual(st, 200, "GET /streams/%s -> %s" % (sid, st))
            self.assertEqual(b["version"], len(evs))
            self.assertEqual(b["events"], evs, "stream %s differs from $all" % sid)


if __name__ == "__main__":
    cqtest.main()
