"""cqtest -- shared helpers for the black-box tests of cqrsd.

Every test file is run as  python3 tests/blackbox/test_X.py /path/to/cqrsd
and calls cqtest.main(), which takes argv[1] as the server binary and hands
the rest to unittest.

  Server(binary, data_dir=None, args=())   the real cqrsd on a free port
      .start() .stop() (SIGTERM, exit code must be 0) .kill() (SIGKILL)
      .restart() .check_alive() .check_stderr() .close()
      Used as a context manager it starts on enter and stops (checking the
      exit code and stderr for sanitizer reports) on exit, then removes the
      data directory it created (set CQ_KEEP=1 to keep it).
  Client(server)      keep-alive HTTP client: req(method, path, body=None,
                      headers=None, raw=None) -> (status, headers, body)
  raw_exchange(port, chunks)   raw socket request for malformed traffic
  ServerTestCase      a unittest.TestCase with one server per class

Backends. CQ_TEST_BACKEND=sqlite (the default) runs every server on the
embedded SQLite store in its data dir. CQ_TEST_BACKEND=pg runs it on the
PostgreSQL cluster whose state dir CQ_TEST_PG_DIR names (ctest's `pg`
fixture, or `sh scripts/pg.sh start DIR`): each Server gets
`--store <URI of a database of its own>`, made with CREATE DATABASE when
the Server is made and dropped when it is closed (or at exit). Which
database belongs to a data dir is written in the data dir (cqtest-pg.json),
so a Server made again on the same data dir (a restart of the same store)
finds the same database. Server(..., separate_read=True) also gives it a
read store of its own (`--read-store`), as SQLite keeps read.db apart from
events.db; Server(..., store=URI) runs it on a database the test made
(several nodes on one database).

  BACKEND, PG                   "sqlite" or "pg"; PG is True on PostgreSQL
  store_db(server, "events"|"read")  the server's database: .rows(sql,
                      params) -> [tuple], .execute(sql, params), .tables()
                      (SQLite: the file; PostgreSQL: through psql)
  copy_store(server, data_dir)  a copy of a stopped server's event store
                      for a new Server on data_dir (the read store not)
  reset_read_store(server)      drop a stopped server's read store
  pg_admin_uri(), pg_create_database(tag), pg_drop_database(uri),
  pg_rows(uri, sql), pg_exec(uri, sql), pg_redacted(uri)
  skip_unless_sqlite(test, why) skip the rest of a test on PostgreSQL
"""

import atexit
import http.client
import json
import os
import re
import select
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.parse

sys.dont_write_bytecode = True

BINARY = None  # set by main() from argv[1]

# Generous: the same tests run against an AddressSanitizer build.
REQUEST_TIMEOUT = 60.0
START_TIMEOUT = 20.0
STOP_TIMEOUT = 60.0

SANITIZER_PATTERNS = (
    "ERROR: AddressSanitizer",
    "ERROR: LeakSanitizer",
    "runtime error:",
    "WARNING: ThreadSanitizer",
)

UUID7_RE = re.compile(
    r"^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$",
    re.I)
RFC3339_RE = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")
RFC3339_UTC_RE = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]00:00)$")


def free_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
    finally:
        s.close()


def _tail(path, limit=6000):
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        return "<cannot read %s: %s>" % (path, e)
    text = data.decode("utf-8", "replace")
    if len(text) > limit:
        text = "...\n" + text[-limit:]
    return text


# ---- backends ------------------------------------------------------------------

BACKEND = os.environ.get("CQ_TEST_BACKEND", "") or "sqlite"
if BACKEND not in ("sqlite", "pg"):
    raise SystemExit("CQ_TEST_BACKEND must be sqlite or pg, not %r" % BACKEND)
PG = BACKEND == "pg"

# The event store's own tables (both backends): not read models.
STORE_TABLES = ("events", "streams", "command_log", "cq_store_schema")
PG_STATE_FILE = "cqtest-pg.json"   # in a data dir: its databases


def skip_unless_sqlite(test, why):
    """Skip the rest of `test` on PostgreSQL: that part reads or writes
    the SQLite files themselves. `why` says what it checks."""
    if PG:
        test.skipTest("SQLite files only: " + why)


def pg_admin_uri():
    d = os.environ.get("CQ_TEST_PG_DIR")
    if not d:
        raise RuntimeError("CQ_TEST_BACKEND=pg needs CQ_TEST_PG_DIR: run under "
                           "ctest (fixture pg) or `sh scripts/pg.sh start DIR` "
                           "and export CQ_TEST_PG_DIR=DIR")
    with open(os.path.join(d, "uri")) as f:
        return f.read().strip()


def pg_uri_for(uri, dbname):
    """uri with its database replaced by dbname."""
    u = urllib.parse.urlsplit(uri)
    return urllib.parse.urlunsplit((u.scheme, u.netloc, "/" + dbname, u.query,
                                    u.fragment))


def pg_dbname(uri):
    return urllib.parse.unquote(urllib.parse.urlsplit(uri).path.lstrip("/"))


def pg_redacted(uri):
    """uri with its password shown as *** (as cqrsd prints it)."""
    u = urllib.parse.urlsplit(uri)
    if u.password is None:
        return uri
    user = u.netloc.rsplit("@", 1)[0].split(":", 1)[0]
    host = u.netloc.rsplit("@", 1)[1]
    return urllib.parse.urlunsplit((u.scheme, "%s:***@%s" % (user, host), u.path,
                                    u.query, u.fragment))


def pg_literal(v):
    if v is None:
        return "NULL"
    if isinstance(v, bool):
        return "TRUE" if v else "FALSE"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, bytes):
        return "'\\x%s'::bytea" % v.hex()
    return "'" + str(v).replace("'", "''") + "'"


def pg_bind(sql, params):
    """Put params (SQLite's ? placeholders, outside quotes) in sql as
    literals: the tests' own SQL is small and fixed."""
    if not params:
        return sql
    out, it, quote = [], iter(params), None
    for ch in sql:
        if quote:
            quote = None if ch == quote else quote
            out.append(ch)
        elif ch in "'\"":
            quote = ch
            out.append(ch)
        elif ch == "?":
            out.append(pg_literal(next(it)))
        else:
            out.append(ch)
    return "".join(out)


def _psql(uri, sql, timeout=60):
    env = dict(os.environ, PGCONNECT_TIMEOUT="10")
    try:
        p = subprocess.run(["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                            "-d", uri, "-c", sql], stdin=subprocess.DEVNULL,
                           capture_output=True, timeout=timeout, env=env)
    except FileNotFoundError:
        raise RuntimeError("psql not found: apt-get install postgresql-client")
    if p.returncode != 0:
        raise AssertionError("psql %s: %s\n%s" % (pg_redacted(uri), sql,
                             p.stderr.decode("utf-8", "replace")))
    return p.stdout.decode("utf-8")


def pg_exec(uri, sql, params=()):
    """Run sql (any statements, autocommit) on the database at uri."""
    _psql(uri, pg_bind(sql, params))


def pg_rows(uri, sql, params=()):
    """The rows of one SELECT as tuples, values as JSON gives them (numbers,
    strings, None) in the columns' order."""
    q = ("SELECT coalesce(json_agg(row_to_json(cqtest_t)), '[]'::json)"
         " FROM (%s) cqtest_t" % pg_bind(sql, params).rstrip().rstrip(";"))
    out = _psql(uri, q).strip()
    rows = json.loads(out, object_pairs_hook=lambda kv: tuple(v for _, v in kv))
    return [tuple(r) for r in rows]


_pg_lock = threading.Lock()
_pg_made = []       # databases this process created, dropped at exit


def pg_create_database(tag="t", template=None):
    """A new database on the test cluster; its URI. Dropped at exit at the
    latest. template: the URI of a database to copy (no one may be
    connected to it)."""
    admin = pg_admin_uri()
    with _counter_lock:
        _counter[0] += 1
        n = _counter[0]
    tag = re.sub(r"[^a-z0-9_]", "_", tag.lower())[:20]
    name = "cqt_%s_%d_%d_%s" % (tag, os.getpid(), n, RUN)
    sql = 'CREATE DATABASE "%s"' % name
    if template:
        sql += ' TEMPLATE "%s"' % pg_dbname(template)
    _psql(admin, sql)
    uri = pg_uri_for(admin, name)
    with _pg_lock:
        _pg_made.append(uri)
    return uri


def pg_drop_database(uri):
    with _pg_lock:
        if uri in _pg_made:
            _pg_made.remove(uri)
    _psql(pg_admin_uri(), 'DROP DATABASE IF EXISTS "%s" WITH (FORCE)' % pg_dbname(uri))


@atexit.register
def _pg_drop_all():
    if os.environ.get("CQ_KEEP"):
        return
    for uri in list(_pg_made):
        try:
            pg_drop_database(uri)
        except Exception:  # noqa: BLE001 -- the cluster may be gone already
            pass


class StoreDB:
    """One database of a server: "events" (the event store and the inline
    projections) or "read" (the asynchronous read models). SQLite: the file
    in the data dir. PostgreSQL: the server's database, the same one for
    both unless the server has a separate read store. Use it with the
    server stopped unless the test says why not."""

    def __init__(self, server, which):
        assert which in ("events", "read")
        self.which = which
        self.path = os.path.join(server.data_dir, which + ".db")
        self.uri = None
        if PG:
            self.uri = server.read_uri if which == "read" and server.read_uri \
                else server.store_uri

    def rows(self, sql, params=()):
        if self.uri:
            return pg_rows(self.uri, sql, params)
        con = sqlite3.connect(self.path, timeout=10)
        try:
            return con.execute(sql, params).fetchall()
        finally:
            con.close()

    def execute(self, sql, params=()):
        if self.uri:
            return pg_exec(self.uri, sql, params)
        con = sqlite3.connect(self.path, timeout=10)
        try:
            con.execute(sql, params)
            con.commit()
        finally:
            con.close()

    def tables(self):
        """Its read-model tables: not the engine's own (cq_*), not the
        event store's."""
        if self.uri:
            names = [r[0] for r in self.rows(
                "SELECT table_name FROM information_schema.tables"
                " WHERE table_schema = current_schema()"
                " AND table_type = 'BASE TABLE'")]
        else:
            names = [r[0] for r in self.rows(
                "SELECT name FROM sqlite_master WHERE type = 'table'"
                " AND name NOT LIKE 'sqlite_%'")]
        return sorted(n for n in names
                      if not n.startswith("cq_") and n not in STORE_TABLES)


def store_db(server, which):
    return StoreDB(server, which)


def copy_store(server, data_dir):
    """Copy the event store of the stopped `server` (events, streams,
    command log, inline projections) for a new Server on data_dir; the
    read store is not copied (a separate one on PostgreSQL, read.db on
    SQLite): that Server replays the asynchronous projections afresh."""
    os.makedirs(data_dir, exist_ok=True)
    if not PG:
        for f in os.listdir(server.data_dir):
            if f.startswith("events.db"):
                shutil.copy2(os.path.join(server.data_dir, f), data_dir)
        return
    assert server.read_uri, "copy_store needs Server(separate_read=True) on PostgreSQL"
    state = {"store": pg_create_database("copy", template=server.store_uri),
             "read": pg_create_database("copyread")}
    with open(os.path.join(data_dir, PG_STATE_FILE), "w") as f:
        json.dump(state, f)


def reset_read_store(server):
    """Remove the stopped server's read store (read.db; a separate
    PostgreSQL read store is dropped and made again, empty)."""
    if not PG:
        for suffix in ("", "-wal", "-shm", "-journal"):
            p = os.path.join(server.data_dir, "read.db" + suffix)
            if os.path.exists(p):
                os.remove(p)
        return
    assert server.read_uri, "reset_read_store needs Server(separate_read=True) on PostgreSQL"
    name = pg_dbname(server.read_uri)
    admin = pg_admin_uri()
    _psql(admin, 'DROP DATABASE IF EXISTS "%s" WITH (FORCE)' % name)
    _psql(admin, 'CREATE DATABASE "%s"' % name)


def store_args(data_dir=None, store=None, read_store=None):
    """The serve/verify arguments that name a store."""
    out = []
    if data_dir is not None:
        out += ["--data", data_dir]
    if store:
        out += ["--store", store]
    if read_store:
        out += ["--read-store", read_store]
    return out


class ServerError(AssertionError):
    """The server misbehaved as a process (died, bad exit, sanitizer)."""


class Server:
    def __init__(self, binary=None, data_dir=None, args=(), separate_read=False,
                 store=None, read_store=None, data_arg=True, env=None):
        """store/read_store: PostgreSQL URIs to run on (the test's; not
        dropped here), else (CQ_TEST_BACKEND=pg) databases of its own.
        data_arg=False: no --data (PostgreSQL needs none; the server runs
        in the data dir as its working directory). env: more environment."""
        binary = binary or BINARY
        if not binary:
            raise RuntimeError("no cqrsd binary given")
        self.binary = os.path.abspath(binary)
        self.own_dir = data_dir is None
        self.data_dir = data_dir or tempfile.mkdtemp(prefix="cqrsd-bb-")
        os.makedirs(self.data_dir, exist_ok=True)
        self.args = [str(a) for a in args]
        self.stderr_path = os.path.join(self.data_dir, "cqrsd-stderr.log")
        self.proc = None
        self.port = None
        self.starts = 0
        self.data_arg = data_arg
        self.env = env
        self.store_uri, self.read_uri = store, read_store
        self.own_dbs = []
        if store is None and PG:
            self._pg_databases(separate_read)

    def _pg_databases(self, separate_read):
        state_path = os.path.join(self.data_dir, PG_STATE_FILE)
        if os.path.exists(state_path):       # the same store again
            with open(state_path) as f:
                state = json.load(f)
        else:
            state = {"store": pg_create_database("store"), "read": None}
            self.own_dbs.append(state["store"])
            if separate_read:
                state["read"] = pg_create_database("read")
                self.own_dbs.append(state["read"])
            with open(state_path, "w") as f:
                json.dump(state, f)
        self.store_uri, self.read_uri = state["store"], state["read"]

    def store_args(self):
        """The arguments that name this server's store (for verify)."""
        return store_args(self.data_dir if self.data_arg else None,
                          self.store_uri, self.read_uri)

    # ---- process control -------------------------------------------------

    def start(self):
        assert self.proc is None, "server already running"
        last = ""
        for attempt in range(3):
            if self.port is None or attempt > 0:
                self.port = free_port()
            with open(self.stderr_path, "ab") as f:
                log_from = f.tell()
                f.write(("\n==== cqtest: start #%d on port %d ====\n"
                         % (self.starts + 1, self.port)).encode())
                f.flush()
                cmd = ([self.binary, "serve"] + self.store_args()
                       + ["--listen", "127.0.0.1:%d" % self.port] + self.args)
                self.proc = subprocess.Popen(
                    cmd, stdin=subprocess.DEVNULL, stdout=f, stderr=f,
                    close_fds=True, cwd=None if self.data_arg else self.data_dir,
                    env=dict(os.environ, **self.env) if self.env else None)
            self.starts += 1
            ok, why = self._wait_healthy()
            if ok:
                return self
            rc = self.proc.poll()
            if rc is None:
                self.proc.kill()
                self.proc.wait()
            self.proc = None
            last = why
            with open(self.stderr_path, "rb") as f:
                f.seek(log_from)
                log = f.read().decode("utf-8", "replace").lower()
            if "in use" not in log or rc is None:
                break  # not a port race: do not retry
        raise ServerError("cqrsd did not start (%s)\n--- stderr ---\n%s"
                          % (last, _tail(self.stderr_path)))

    def _wait_healthy(self):
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            rc = self.proc.poll()
            if rc is not None:
                return False, "exited with code %d during start" % rc
            conn = http.client.HTTPConnection("127.0.0.1", self.port,
                                              timeout=2.0)
            try:
                conn.request("GET", "/healthz")
                resp = conn.getresponse()
                resp.read()
                if resp.status == 200:
                    return True, ""
            except (OSError, http.client.HTTPException):
                pass
            finally:
                conn.close()
            time.sleep(0.02)
        return False, "GET /healthz did not answer 200 within %.0f s" % START_TIMEOUT

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def check_alive(self):
        """Fail if the server process died on its own."""
        if self.proc is not None and self.proc.poll() is not None:
            rc = self.proc.returncode
            self.proc = None
            raise ServerError("cqrsd died unexpectedly (exit code %s)\n"
                              "--- stderr ---\n%s"
                              % (rc, _tail(self.stderr_path)))
        self.check_stderr()

    def check_stderr(self):
        """Fail if the server printed a sanitizer report."""
        try:
            with open(self.stderr_path, "rb") as f:
                text = f.read().decode("utf-8", "replace")
        except OSError:
            return
        for pat in SANITIZER_PATTERNS:
            i = text.find(pat)
            if i >= 0:
                raise ServerError("cqrsd stderr contains %r:\n%s"
                                  % (pat, text[max(0, i - 500):i + 6000]))

    def stop(self):
        """SIGTERM and wait; the exit code must be 0."""
        if self.proc is None:
            raise ServerError("stop(): server is not running")
        proc = self.proc
        rc = proc.poll()
        if rc is not None:
            self.proc = None
            raise ServerError("cqrsd had already exited (code %d) before stop\n"
                              "--- stderr ---\n%s" % (rc, _tail(self.stderr_path)))
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            self.proc = None
            raise ServerError("cqrsd did not exit within %.0f s of SIGTERM\n"
                              "--- stderr ---\n%s"
                              % (STOP_TIMEOUT, _tail(self.stderr_path)))
        self.proc = None
        self.check_stderr()
        if rc != 0:
            raise ServerError("cqrsd exited with code %d after SIGTERM (want 0)\n"
                              "--- stderr ---\n%s" % (rc, _tail(self.stderr_path)))

    def kill(self):
        """SIGKILL (a crash) and wait."""
        if self.proc is None:
            raise ServerError("kill(): server is not running")
        proc = self.proc
        if proc.poll() is not None:
            self.proc = None
            raise ServerError("cqrsd had already exited (code %d) before kill\n"
                              "--- stderr ---\n%s"
                              % (proc.returncode, _tail(self.stderr_path)))
        proc.kill()
        proc.wait()
        self.proc = None
        self.check_stderr()

    def restart(self, kill=False):
        if kill:
            self.kill()
        else:
            self.stop()
        return self.start()

    def close(self, failed=False):
        """Stop if running (checking exit code and stderr); remove the dir."""
        try:
            if self.proc is not None:
                if failed:
                    try:
                        self.stop()
                    except ServerError:
                        pass
                else:
                    self.stop()
            self.check_stderr()
        finally:
            if self.proc is not None:
                self.proc.kill()
                self.proc.wait()
                self.proc = None
            if not os.environ.get("CQ_KEEP"):
                for uri in self.own_dbs:
                    try:
                        pg_drop_database(uri)
                    except AssertionError as e:
                        sys.stderr.write("cqtest: %s\n" % e)
                self.own_dbs = []
                if self.own_dir:
                    shutil.rmtree(self.data_dir, ignore_errors=True)

    def stderr_text(self):
        return _tail(self.stderr_path, 1 << 30)

    def __enter__(self):
        if self.proc is None:
            try:
                self.start()
            except BaseException:
                self.close(failed=True)
                raise
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close(failed=exc_type is not None)
        return False


# ---- HTTP client -------------------------------------------------------------

def _parse_body(headers, data):
    ctype = headers.get("content-type", "")
    if "json" in ctype:
        try:
            return json.loads(data.decode("utf-8"))
        except (ValueError, UnicodeDecodeError):
            return data.decode("utf-8", "replace")
    return data.decode("utf-8", "replace")


class Client:
    """A keep-alive HTTP/1.1 client bound to a Server (follows its port)."""

    def __init__(self, server, timeout=REQUEST_TIMEOUT):
        self.server = server
        self.timeout = timeout
        self.conn = None
        self.conn_port = None

    def close(self):
        if self.conn is not None:
            self.conn.close()
        self.conn = None

    def _connection(self):
        if self.conn is None or self.conn_port != self.server.port:
            self.close()
            self.conn = http.client.HTTPConnection(
                "127.0.0.1", self.server.port, timeout=self.timeout)
            self.conn_port = self.server.port
        return self.conn

    def req(self, method, path, body=None, headers=None, raw=None, retry=True):
        """Send one request. body: a JSON value (sent with Content-Type
        application/json unless headers name one); raw: bytes sent as they
        are (no Content-Type added). Returns (status, headers, body) with
        header names lower-cased and the body parsed as JSON when the answer
        says it is JSON, else text."""
        hdrs = dict(headers or {})
        payload = None
        if raw is not None:
            payload = raw
        elif body is not None:
            payload = json.dumps(body).encode("utf-8")
            if not any(k.lower() == "content-type" for k in hdrs):
                hdrs["Content-Type"] = "application/json"
        attempts = 2 if retry else 1
        for attempt in range(attempts):
            conn = self._connection()
            try:
                conn.request(method, path, body=payload, headers=hdrs)
                resp = conn.getresponse()
                data = resp.read()
            except (socket.timeout, TimeoutError):
                self.close()
                self.server.check_alive()
                raise
            except (OSError, http.client.HTTPException):
                self.close()
                if attempt + 1 >= attempts:
                    self.server.check_alive()
                    raise
                continue
            hl = {}
            for k, v in resp.getheaders():
                k = k.lower()
                hl[k] = v if k not in hl else hl[k] + ", " + v
            if resp.will_close:
                self.close()
            return resp.status, hl, _parse_body(hl, data)
        raise AssertionError("unreachable")

    # conveniences
    def get(self, path, **kw):
        return self.req("GET", path, **kw)

    def post(self, path, body=None, **kw):
        return self.req("POST", path, body=body, **kw)

    def command(self, ctype, body, key=None, if_match=None, headers=None):
        h = dict(headers or {})
        if key is not None:
            h["Idempotency-Key"] = key
        if if_match is not None:
            h["If-Match"] = if_match
        return self.req("POST", "/commands/" + ctype, body=body, headers=h)

    def head(self):
        st, _, b = self.req("GET", "/streams/$all?limit=1")
        if st != 200 or not isinstance(b, dict):
            raise AssertionError("GET /streams/$all?limit=1 -> %s %r" % (st, b))
        return b["head_position"]

    def healthz(self):
        return self.req("GET", "/healthz")

    def read_all(self, page=1000):
        """Every event in $all, paging with `page`."""
        events = []
        pos = 1
        while True:
            st, _, b = self.req("GET", "/streams/$all?from_position=%d&limit=%d"
                                % (pos, page))
            if st != 200:
                raise AssertionError("GET $all from %d -> %s %r" % (pos, st, b))
            events.extend(b["events"])
            if not b["events"]:
                return events, b["head_position"]
            pos = b["next_position"]


def raw_exchange(port, chunks, timeout=REQUEST_TIMEOUT, watch=True):
    """Send chunks (bytes) on a new connection and read one answer.

    With watch=True it stops sending as soon as the server starts to answer
    (a server may refuse a request before reading all of it). Returns
    (status, headers, body_bytes); status is None if the server closed the
    connection without answering."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        for ch in chunks:
            if watch:
                r, _, _ = select.select([s], [], [], 0)
                if r:
                    break
            try:
                s.sendall(ch)
            except (BrokenPipeError, ConnectionResetError):
                break
        data = b""
        while True:
            try:
                part = s.recv(65536)
            except ConnectionResetError:
                break
            if not part:
                break
            data += part
            st = _complete_response(data)
            if st is not None:
                data = st
                break
    finally:
        s.close()
    return _parse_raw_response(data)


def _complete_response(data):
    """Return the bytes of one complete response at the start of data, or
    None if more is needed."""
    i = data.find(b"\r\n\r\n")
    if i < 0:
        return None
    head = data[:i].decode("latin-1").split("\r\n")
    headers = {}
    for line in head[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    body = data[i + 4:]
    if "content-length" in headers:
        n = int(headers["content-length"])
        return data[:i + 4 + n] if len(body) >= n else None
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return data if body.endswith(b"0\r\n\r\n") else None
    return None  # read until close


def _parse_raw_response(data):
    if not data:
        return None, {}, b""
    i = data.find(b"\r\n\r\n")
    if i < 0:
        i = len(data)
    head = data[:i].decode("latin-1").split("\r\n")
    parts = head[0].split(" ", 2)
    try:
        status = int(parts[1])
    except (IndexError, ValueError):
        return None, {}, data
    headers = {}
    for line in head[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    body = data[i + 4:]
    if "chunked" in headers.get("transfer-encoding", "").lower():
        out = b""
        rest = body
        while rest:
            j = rest.find(b"\r\n")
            if j < 0:
                break
            n = int(rest[:j].split(b";")[0] or b"0", 16)
            if n == 0:
                break
            out += rest[j + 2:j + 2 + n]
            rest = rest[j + 2 + n + 2:]
        body = out
    return status, headers, body


# ---- assertions ------------------------------------------------------------

def problem_errors(self, status, headers, body, expect):
    """Assert a problem+json answer with the expected status (int or tuple)."""
    exp = expect if isinstance(expect, (tuple, list, set)) else (expect,)
    self.assertIn(status, exp, "status %s, want %s; body %r" % (status, exp, body))
    ctype = headers.get("content-type", "")
    self.assertTrue(ctype.lower().startswith("application/problem+json"),
                    "Content-Type %r, want application/problem+json (body %r)"
                    % (ctype, body))
    self.assertIsInstance(body, dict, "problem body is not a JSON object: %r" % (body,))
    for k in ("type", "title", "detail"):
        self.assertIn(k, body, "problem body lacks %r: %r" % (k, body))
        self.assertIsInstance(body[k], str, "problem %r is not a string: %r" % (k, body))
    self.assertTrue(body["type"], "problem type is empty: %r" % (body,))
    self.assertTrue(body["title"], "problem title is empty: %r" % (body,))
    self.assertIn("status", body)
    self.assertIs(type(body["status"]), int, "problem status not an integer: %r" % (body,))
    self.assertEqual(body["status"], status, "problem status differs from HTTP status")
    return body


class ServerTestCase(unittest.TestCase):
    """One server per test class, shared by its tests (tests run in name
    order; each test must not depend on another). The server is checked to
    be alive and sanitizer-clean after every test."""

    server_args = ()
    maxDiff = 4000

    @classmethod
    def setUpClass(cls):
        cls.server = Server(BINARY, args=cls.server_args)
        try:
            cls.server.start()
        except BaseException:
            cls.server.close(failed=True)
            raise
        cls.c = Client(cls.server)

    @classmethod
    def tearDownClass(cls):
        cls.c.close()
        cls.server.close()

    def setUp(self):
        if not self.server.running():
            # an earlier test saw it die (and failed): start afresh
            self.server.proc = None
            self.server.start()

    def tearDown(self):
        self.server.check_alive()

    def assertProblem(self, status, headers, body, expect):
        return problem_errors(self, status, headers, body, expect)

    def assertFieldError(self, body, field):
        errs = body.get("errors") if isinstance(body, dict) else None
        self.assertIsInstance(errs, list, "no \"errors\" list in %r" % (body,))
        for e in errs:
            self.assertIsInstance(e, dict, "errors entry not an object: %r" % (e,))
            self.assertIsInstance(e.get("field"), str, "errors entry lacks field: %r" % (e,))
            self.assertIsInstance(e.get("message"), str, "errors entry lacks message: %r" % (e,))
        fields = [e["field"] for e in errs]
        self.assertIn(field, fields, "no error for field %r in %r" % (field, errs))

    def assertHealthy(self):
        st, _, b = self.c.healthz()
        self.assertEqual(st, 200, "GET /healthz -> %s %r" % (st, b))
        self.assertIsInstance(b, dict)
        self.assertEqual(b.get("status"), "ok", "healthz body %r" % (b,))
        self.server.check_alive()


_counter = [0]
_counter_lock = threading.Lock()
RUN = "%x" % (int(time.time() * 1000) % 0xFFFFFFF)


def uid(prefix="x"):
    """A fresh id made of [A-Za-z0-9_-]."""
    with _counter_lock:
        _counter[0] += 1
        n = _counter[0]
    return "%s-%s-%d" % (prefix, RUN, n)


def order_body(order_id=None, items=None, **over):
    b = {
        "order_id": uid("o") if order_id is None else order_id,
        "customer_id": over.pop("customer_id", "c-1"),
        "currency": over.pop("currency", "EUR"),
        "items": items if items is not None else
                 [{"sku": "sku-1", "quantity": 2, "unit_price_cents": 300},
                  {"sku": "sku-2", "quantity": 1, "unit_price_cents": 400}],
    }
    b.update(over)
    return b  # total 1000


def main():
    global BINARY
    if len(sys.argv) < 2 or sys.argv[1].startswith("-"):
        sys.stderr.write("usage: %s /path/to/cqrsd [unittest args]\n" % sys.argv[0])
        sys.exit(2)
    BINARY = os.path.abspath(sys.argv.pop(1))
    if not os.access(BINARY, os.X_OK):
        sys.stderr.write("not an executable: %s\n" % BINARY)
        sys.exit(2)
    unittest.main(module="__main__", verbosity=2)


# ---- Server-Sent Events (GET /subscribe) -----------------------------------

class SSE:
    """One GET /subscribe stream read as the browser's EventSource would.

      s = SSE(server, "/subscribe?projection=P", headers={...})
      s.status, s.headers          the answer's (names lower-cased)
      s.body                       the parsed body when status is not 200
      s.next(timeout=10)           the next event: {"id", "event", "data"}
                                   (data parsed as JSON), None at the end of
                                   the stream; comments are counted in
                                   s.comments; AssertionError on timeout
      s.close()
    """

    def __init__(self, server, path, headers=None, timeout=REQUEST_TIMEOUT):
        self.conn = http.client.HTTPConnection("127.0.0.1", server.port,
                                               timeout=timeout)
        self.path = path
        self.conn.request("GET", path, headers=dict(headers or {}))
        self.resp = self.conn.getresponse()
        self.status = self.resp.status
        self.headers = {k.lower(): v for k, v in self.resp.getheaders()}
        self.comments = 0
        self.ended = False
        self.body = None
        if self.status != 200:
            self.body = _parse_body(self.headers, self.resp.read())
            self.close()
        _record("GET", path, self.status, self.headers.get("content-type", ""),
                self.body if self.status != 200 else None)

    def next(self, timeout=10.0):
        ev = {}
        data = []
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("no server-sent event within %.1f s" % timeout)
            self.conn.sock.settimeout(left)
            try:
                line = self.resp.readline()
            except (socket.timeout, TimeoutError):
                raise AssertionError("no server-sent event within %.1f s" % timeout)
            if not line:
                self.ended = True
                return None
            line = line.decode("utf-8").rstrip("\r\n")
            if line == "":
                if data or ev:
                    if data:
                        ev["data"] = json.loads("\n".join(data))
                    if "event" in ev:
                        _record("SSE", self.path, 200, "text/event-stream",
                                {"event": ev["event"], "data": ev.get("data")})
                    return ev
                continue
            if line.startswith(":"):
                self.comments += 1
                continue
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "data":
                data.append(value)
            elif name in ("id", "event", "retry"):
                ev[name] = value
        # not reached

    def events(self, n, timeout=10.0):
        """The next n events (skipping `retry`-only blocks)."""
        out = []
        while len(out) < n:
            ev = self.next(timeout)
            if ev is None:
                raise AssertionError("the stream ended after %r" % (out,))
            if "event" in ev:
                out.append(ev)
        return out

    def close(self):
        try:
            self.conn.close()
        except OSError:
            pass


# ---- the response recorder (OpenAPI validation) -----------------------------
#
# With CQ_TEST_RECORD=DIR every answer a Client (or SSE) gets is appended to
# DIR/<suite>-<pid>.jsonl as one JSON line {method, path, status,
# content_type, body, suite}: the body parsed as JSON when it is JSON, else
# its text (cut at 64 KiB). Each server-sent event an SSE reads is a line
# too, with method "SSE" and body {event, data}. The ctest `openapi_responses` checks them
# against docs/openapi.yaml (tests/blackbox/check_openapi.py) after the
# black-box suites have run.

_RECORD = os.environ.get("CQ_TEST_RECORD")
_record_lock = threading.Lock()


def _record(method, path, status, ctype, body):
    if not _RECORD:
        return
    if isinstance(body, str) and len(body) > 65536:
        body = body[:65536]
    line = json.dumps({"method": method, "path": path, "status": status,
                       "content_type": ctype, "body": body,
                       "suite": os.path.basename(sys.argv[0])})
    name = "%s-%d.jsonl" % (os.path.basename(sys.argv[0]).replace(".py", ""),
                            os.getpid())
    with _record_lock:
        os.makedirs(_RECORD, exist_ok=True)
        with open(os.path.join(_RECORD, name), "a", encoding="utf-8") as f:
            f.write(line + "\n")


_client_req = Client.req


def _recording_req(self, method, path, body=None, headers=None, raw=None,
                   retry=True):
    st, h, b = _client_req(self, method, path, body=body, headers=headers,
                           raw=raw, retry=retry)
    _record(method, path, st, h.get("content-type", ""), b)
    return st, h, b


Client.req = _recording_req
