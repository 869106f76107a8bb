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
"""

import http.client
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest

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


class ServerError(AssertionError):
    """The server misbehaved as a process (died, bad exit, sanitizer)."""


class Server:
    def __init__(self, binary=None, data_dir=None, args=()):
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
                cmd = [self.binary, "serve", "--data", self.data_dir,
                       "--listen", "127.0.0.1:%d" % self.port] + self.args
                self.proc = subprocess.Popen(
                    cmd, stdin=subprocess.DEVNULL, stdout=f, stderr=f,
                    close_fds=True)
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
            if self.own_dir and not os.environ.get("CQ_KEEP"):
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
