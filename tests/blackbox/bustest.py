"""bustest -- helpers for the black-box tests of the bus (test_bus*.py).

  Nats(state_dir)      a nats-server with JetStream of the test's own
                       (scripts/nats.sh): .start() .down() .up() .stop(),
                       .url
  JetStream(url)       a minimal NATS client (the wire protocol over a
                       socket, headers on): .stream_info(name),
                       .messages(stream, subject) -> [(seq, subject,
                       headers, body)] in stream order (an ephemeral pull
                       consumer, no acks), .consumer_info(stream, name),
                       .close()
  Proc(args, log)      a cqrsd subcommand (relay, project) as a process:
                       .start() .kill() (SIGKILL) .stop() (SIGTERM, exit 0)
                       .alive() .log_text()
  relay_positions(msgs)  the Cqrs-Position of each message, in order
"""

import base64
import json
import os
import signal
import socket
import subprocess
import time
import uuid

import cqtest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NATS_SH = os.path.join(ROOT, "scripts", "nats.sh")
PG_SH = os.path.join(ROOT, "scripts", "pg.sh")


def log(msg):
    import sys
    sys.stderr.write("\n  " + msg)
    sys.stderr.flush()


def _sh(script, cmd, state, timeout=120):
    p = subprocess.run(["sh", script, cmd, state], capture_output=True, timeout=timeout,
                       stdin=subprocess.DEVNULL)
    if p.returncode != 0:
        raise AssertionError("%s %s: %s" % (os.path.basename(script), cmd,
                                            p.stderr.decode("utf-8", "replace")))
    return p.stdout.decode().strip()


class Nats:
    """A nats-server with JetStream in a temp dir (scripts/nats.sh)."""

    def __init__(self, state_dir):
        self.state = state_dir
        self.url = None

    def start(self):
        self.url = _sh(NATS_SH, "start", self.state)
        return self

    def down(self):
        _sh(NATS_SH, "down", self.state)

    def up(self):
        _sh(NATS_SH, "up", self.state)

    def stop(self):
        _sh(NATS_SH, "stop", self.state)


class Pg:
    """A PostgreSQL cluster of the test's own (scripts/pg.sh), for tests
    that stop and start it."""

    def __init__(self, state_dir):
        self.state = state_dir
        self.admin = None

    def start(self):
        self.admin = _sh(PG_SH, "start", self.state, timeout=180)
        return self

    def down(self):
        _sh(PG_SH, "down", self.state, timeout=180)

    def up(self):
        _sh(PG_SH, "up", self.state, timeout=180)

    def stop(self):
        _sh(PG_SH, "stop", self.state, timeout=180)

    def database(self, tag):
        name = "b_%s_%d_%s" % (tag, os.getpid(), cqtest.RUN)
        cqtest.pg_exec(self.admin, 'CREATE DATABASE "%s"' % name)
        return cqtest.pg_uri_for(self.admin, name)


# ---- a minimal NATS client ------------------------------------------------

class JetStream:
    """Just enough of the NATS protocol to read a JetStream stream: CONNECT
    with headers, request/reply to the JetStream API, pull batches."""

    def __init__(self, url, timeout=10.0):
        hostport = url.split("://", 1)[-1].split(",")[0]
        host, port = hostport.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        self.buf = b""
        self.sid = 0
        line = self._line()
        if not line.startswith(b"INFO "):
            raise AssertionError("not a NATS server: %r" % line)
        self.sock.sendall(b'CONNECT {"verbose":false,"pedantic":false,"headers":true,'
                          b'"no_responders":true,"name":"cqtest"}\r\nPING\r\n')
        while True:
            kind, _ = self._read()
            if kind == "PONG":
                break

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def _line(self):
        while b"\r\n" not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                raise AssertionError("NATS connection closed")
            self.buf += data
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _exact(self, n):
        while len(self.buf) < n + 2:
            data = self.sock.recv(max(65536, n + 2 - len(self.buf)))
            if not data:
                raise AssertionError("NATS connection closed")
            self.buf += data
        out, self.buf = self.buf[:n], self.buf[n + 2:]
        return out

    def _read(self):
        """One protocol message: ("MSG", (subject, reply, headers, body)),
        sid)), ("PONG", None); -ERR raises."""
        while True:
            line = self._line()
            if line == b"PING":
                self.sock.sendall(b"PONG\r\n")
                continue
            if line == b"PONG":
                return "PONG", None
            if line.startswith(b"+OK"):
                continue
            if line.startswith(b"-ERR"):
                raise AssertionError("NATS: %s" % line.decode("utf-8", "replace"))
            if line.startswith(b"INFO"):
                continue
            parts = line.decode().split(" ")
            if parts[0] == "MSG":
                subj, sid = parts[1], int(parts[2])
                reply = parts[3] if len(parts) == 5 else None
                body = self._exact(int(parts[-1]))
                return "MSG", (subj, reply, {}, body, sid)
            if parts[0] == "HMSG":
                subj, sid = parts[1], int(parts[2])
                reply = parts[3] if len(parts) == 6 else None
                hlen, tlen = int(parts[-2]), int(parts[-1])
                raw = self._exact(tlen)
                return "MSG", (subj, reply, self._headers(raw[:hlen]), raw[hlen:], sid)
            raise AssertionError("NATS: unexpected %r" % line)

    @staticmethod
    def _headers(raw):
        lines = raw.decode("utf-8", "replace").split("\r\n")
        h = {}
        status = lines[0][len("NATS/1.0"):].strip()
        if status:
            h[":status"] = status
        for ln in lines[1:]:
            if ":" in ln:
                k, v = ln.split(":", 1)
                h[k.strip()] = v.strip()
        return h

    def request(self, subject, payload, timeout=10.0):
        self.sid += 1
        sid = self.sid
        inbox = "_INBOX.%s" % uuid.uuid4().hex
        data = json.dumps(payload).encode() if not isinstance(payload, bytes) else payload
        self.sock.sendall(b"SUB %s %d\r\nPUB %s %s %d\r\n%s\r\n" % (
            inbox.encode(), self.sid, subject.encode(), inbox.encode(), len(data), data))
        self.sock.settimeout(timeout)
        try:
            while True:
                kind, m = self._read()
                if kind == "MSG" and m[4] == sid:
                    if m[2].get(":status", "").startswith("503"):
                        raise AssertionError("NATS: no responders for %s" % subject)
                    return json.loads(m[3].decode())
        finally:
            self.sock.sendall(b"UNSUB %d\r\n" % sid)

    def stream_info(self, stream):
        r = self.request("$JS.API.STREAM.INFO." + stream, b"")
        if "error" in r:
            raise AssertionError("stream %s: %r" % (stream, r["error"]))
        return r

    def consumer_info(self, stream, name):
        r = self.request("$JS.API.CONSUMER.INFO.%s.%s" % (stream, name), b"")
        if "error" in r:
            raise AssertionError("consumer %s of %s: %r" % (name, stream, r["error"]))
        return r

    def messages(self, stream, batch=1000, timeout=30.0):
        """Every message of the stream now, in stream order: [(seq,
        subject, headers, body)]."""
        info = self.stream_info(stream)
        last = info["state"]["last_seq"]
        if info["state"]["messages"] == 0:
            return []
        name = "cqtest_%s" % uuid.uuid4().hex[:12]
        r = self.request("$JS.API.CONSUMER.CREATE.%s.%s" % (stream, name), {
            "stream_name": stream,
            "config": {"name": name, "ack_policy": "none", "deliver_policy": "all",
                       "inactive_threshold": 60 * 10 ** 9, "mem_storage": True}})
        if "error" in r:
            raise AssertionError("consumer on %s: %r" % (stream, r["error"]))
        out = []
        self.sid += 1
        sid = self.sid
        inbox = "_INBOX.%s" % uuid.uuid4().hex
        self.sock.sendall(b"SUB %s %d\r\n" % (inbox.encode(), self.sid))
        deadline = time.monotonic() + timeout
        try:
            while (not out or out[-1][0] < last) and time.monotonic() < deadline:
                req = json.dumps({"batch": batch, "expires": 2 * 10 ** 9}).encode()
                self.sock.sendall(b"PUB $JS.API.CONSUMER.MSG.NEXT.%s.%s %s %d\r\n%s\r\n" % (
                    stream.encode(), name.encode(), inbox.encode(), len(req), req))
                got = 0
                while got < batch:
                    self.sock.settimeout(max(0.1, deadline - time.monotonic()))
                    kind, m = self._read()
                    if kind != "MSG" or m[4] != sid:
                        continue
                    st = m[2].get(":status", "")
                    if st:            # 404 no messages / 408 expired: batch done
                        break
                    # reply: $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>...
                    toks = m[1].split(".")
                    seq = int(toks[-4] if len(toks) >= 9 else toks[5])
                    out.append((seq, m[0], m[2], m[3]))
                    got += 1
                    if seq >= last:
                        break
        finally:
            self.sock.sendall(b"UNSUB %d\r\n" % sid)
            try:
                self.request("$JS.API.CONSUMER.DELETE.%s.%s" % (stream, name), b"")
            except AssertionError:
                pass
        return out


def relay_positions(msgs):
    return [int(m[2]["Cqrs-Position"]) for m in msgs]


# ---- processes --------------------------------------------------------------

class Proc:
    """A cqrsd subcommand run as a process of its own, its stderr in log."""

    def __init__(self, args, log_path, env=None):
        self.args = [str(a) for a in args]
        self.log_path = log_path
        self.proc = None
        self.env = env

    def start(self):
        assert self.proc is None
        with open(self.log_path, "ab") as f:
            f.write(("\n==== bustest: %s ====\n" % " ".join(self.args[:2])).encode())
            f.flush()
            self.proc = subprocess.Popen([cqtest.BINARY] + self.args, stdin=subprocess.DEVNULL,
                                         stdout=f, stderr=f, close_fds=True,
                                         env=dict(os.environ, **self.env) if self.env else None)
        return self

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def kill(self):
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def stop(self, timeout=60):
        """SIGTERM; the exit code must be 0."""
        p = self.proc
        if p is None:
            return
        self.proc = None
        rc = p.poll()
        if rc is None:
            p.send_signal(signal.SIGTERM)
            try:
                rc = p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
                raise AssertionError("%s did not exit within %d s of SIGTERM\n%s"
                                     % (self.args[0], timeout, self.log_text()))
        if rc != 0:
            raise AssertionError("%s exited with %s\n%s" % (self.args[0], rc, self.log_text()))
        self.check_log()

    def check_log(self):
        text = self.log_text()
        for pat in cqtest.SANITIZER_PATTERNS:
            if pat in text:
                raise AssertionError("%s: %s in its log:\n%s" % (self.args[0], pat, text))

    def log_text(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")[-8000:]
        except OSError:
            return ""


def b64(s):
    return base64.b64encode(s.encode()).decode()


# ---- a NATS proxy that can withhold acknowledgements ----------------------

class AckDropProxy:
    """A TCP proxy on 127.0.0.1 in front of a nats-server. While
    `dropping` is set it forwards everything but the client's
    acknowledgements (PUB/HPUB to $JS.ACK.…), which it swallows: the
    client has done its work and believes it acknowledged, JetStream never
    hears of it -- the state of a worker killed between its commit and its
    ack. .url, .dropped (count), .close()."""

    def __init__(self, target_url):
        import threading
        hostport = target_url.split("://", 1)[-1]
        self.target = (hostport.rsplit(":", 1)[0], int(hostport.rsplit(":", 1)[1]))
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(16)
        self.url = "nats://127.0.0.1:%d" % self.lsock.getsockname()[1]
        self.dropping = threading.Event()
        self.dropped = 0
        self.lock = threading.Lock()
        self.closed = False
        self.socks = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        import threading
        while not self.closed:
            try:
                c, _ = self.lsock.accept()
            except OSError:
                return
            try:
                s = socket.create_connection(self.target, timeout=5)
            except OSError:
                c.close()
                continue
            s.settimeout(None)
            with self.lock:
                self.socks += [c, s]
            threading.Thread(target=self._pipe, args=(s, c), daemon=True).start()
            threading.Thread(target=self._client, args=(c, s), daemon=True).start()

    def _pipe(self, src, dst):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        for x in (src, dst):
            try:
                x.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _client(self, src, dst):
        """Client -> server, parsed: protocol lines, PUB/HPUB payloads."""
        buf = b""
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                buf += data
                out = []
                while True:
                    i = buf.find(b"\r\n")
                    if i < 0:
                        break
                    line = buf[:i]
                    op = line.split(b" ", 1)[0].upper()
                    if op in (b"PUB", b"HPUB"):
                        n = int(line.rsplit(b" ", 1)[1])
                        if len(buf) < i + 2 + n + 2:
                            break
                        msg = buf[:i + 2 + n + 2]
                        buf = buf[i + 2 + n + 2:]
                        subj = line.split(b" ")[1]
                        if subj.startswith(b"$JS.ACK.") and self.dropping.is_set():
                            with self.lock:
                                self.dropped += 1
                            continue
                        out.append(msg)
                    else:
                        out.append(buf[:i + 2])
                        buf = buf[i + 2:]
                if out:
                    dst.sendall(b"".join(out))
        except OSError:
            pass
        for x in (src, dst):
            try:
                x.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self):
        self.closed = True
        try:
            self.lsock.close()
        except OSError:
            pass
        with self.lock:
            for s in self.socks:
                try:
                    s.close()
                except OSError:
                    pass
