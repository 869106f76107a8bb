"""Black-box tests of API tokens (docs/security.md): `cqrsd tokens
add|list|revoke`, the token file (hash only, mode 0600), 401 with
WWW-Authenticate, 403 naming the missing scope, the scope of each route,
probes open, the file read again on change and on SIGHUP, Idempotency-Keys
scoped to the token, and the refusal of a non-loopback --listen without
tokens.

    python3 tests/blackbox/test_auth.py /path/to/cqrsd
"""
import os
import signal
import stat
import subprocess
import sys
import tempfile
import time
import unittest

sys.dont_write_bytecode = True

import cqtest  # noqa: E402
from cqtest import Client, Server, order_body  # noqa: E402


def tokens(*args, data):
    """Run `cqrsd tokens ARGS --data DATA`: (rc, stdout, stderr)."""
    p = subprocess.run([cqtest.BINARY, "tokens"] + list(args) + ["--data", data],
                       capture_output=True, text=True, timeout=30)
    return p.returncode, p.stdout, p.stderr


def add_token(data, name, scopes):
    rc, out, err = tokens("add", name, "--scopes", scopes, data=data)
    assert rc == 0, "tokens add %s -> %d %s" % (name, rc, err)
    secret = out.strip()
    assert secret.startswith("cqrsd_") and len(secret) == 70, out
    return secret


def bearer(secret):
    return {"Authorization": "Bearer " + secret}


class TokensCli(unittest.TestCase):
    def setUp(self):
        self.data = tempfile.mkdtemp(prefix="cqrsd-tok-")

    def test_add_list_revoke(self):
        secret = add_token(self.data, "ci", "command,query")
        path = os.path.join(self.data, "tokens")
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        with open(path) as f:
            text = f.read()
        self.assertNotIn(secret, text, "the secret itself is stored")
        self.assertNotIn(secret[6:], text)
        rc, out, _ = tokens("list", data=self.data)
        self.assertEqual(rc, 0)
        self.assertIn("ci\tcommand,query\t", out)
        self.assertNotIn(secret, out)
        # a name once only; unknown scopes and bad names are usage errors
        self.assertEqual(tokens("add", "ci", "--scopes", "query", data=self.data)[0], 1)
        self.assertEqual(tokens("add", "x", "--scopes", "root", data=self.data)[0], 2)
        self.assertEqual(tokens("add", "a b", "--scopes", "query", data=self.data)[0], 2)
        self.assertEqual(tokens("add", "x", data=self.data)[0], 2)
        self.assertEqual(tokens("revoke", "nobody", data=self.data)[0], 1)
        self.assertEqual(tokens("revoke", "ci", data=self.data)[0], 0)
        rc, out, _ = tokens("list", data=self.data)
        self.assertEqual((rc, out), (0, ""))
        self.assertTrue(os.path.exists(path), "revoking the last token removes the file")

    def test_two_secrets_differ(self):
        a = add_token(self.data, "a", "query")
        b = add_token(self.data, "b", "query")
        self.assertNotEqual(a, b)

    def test_malformed_file_refused_at_start(self):
        with open(os.path.join(self.data, "tokens"), "w") as f:
            f.write("# cqrsd tokens v1\nci command zz 1\n")
        port = cqtest.free_port()
        p = subprocess.run([cqtest.BINARY, "serve", "--data", self.data,
                            "--listen", "127.0.0.1:%d" % port],
                           capture_output=True, text=True, timeout=30)
        self.assertEqual(p.returncode, 2, p.stderr)
        self.assertEqual(len(p.stderr.strip().splitlines()), 1, p.stderr)
        self.assertIn("malformed", p.stderr)


class NonLoopback(unittest.TestCase):
    """A --listen that is not loopback needs tokens or --insecure-no-auth.
    The servers here bind 0.0.0.0 only for the moment of the check (port 0,
    stopped at once)."""

    def run_serve(self, data, *extra, wait=False):
        cmd = [cqtest.BINARY, "serve", "--data", data, "--listen", "0.0.0.0:0"] + list(extra)
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if not wait:
            out, err = p.communicate(timeout=30)
            return p.returncode, err
        deadline = time.monotonic() + 30
        err = ""
        while time.monotonic() < deadline:
            line = p.stderr.readline()
            err += line
            if "serving" in line or p.poll() is not None:
                break
        p.send_signal(signal.SIGTERM)
        out, rest = p.communicate(timeout=30)
        return p.returncode, err + rest

    def test_refused_without_tokens(self):
        data = tempfile.mkdtemp(prefix="cqrsd-nl-")
        rc, err = self.run_serve(data)
        self.assertEqual(rc, 2, err)
        self.assertEqual(len(err.strip().splitlines()), 1, err)
        self.assertIn("--insecure-no-auth", err)
        self.assertFalse(os.path.exists(os.path.join(data, "events.db")),
                         "the refusal touched the data directory")

    def test_allowed_with_a_token_or_the_flag(self):
        data = tempfile.mkdtemp(prefix="cqrsd-nl-")
        rc, err = self.run_serve(data, "--insecure-no-auth", wait=True)
        self.assertEqual(rc, 0, err)
        self.assertIn("serving", err)
        add_token(data, "ops", "admin")
        rc, err = self.run_serve(data, wait=True)
        self.assertEqual(rc, 0, err)
        self.assertIn("serving", err)


class Scopes(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.data = tempfile.mkdtemp(prefix="cqrsd-auth-")
        cls.cmd = add_token(cls.data, "writer", "command")
        cls.query = add_token(cls.data, "reader", "query")
        cls.admin = add_token(cls.data, "ops", "admin")
        cls.all = add_token(cls.data, "all", "command,query,subscribe,admin")
        cls.server = Server(cqtest.BINARY, data_dir=cls.data)
        cls.server.start()
        cls.c = Client(cls.server)

    @classmethod
    def tearDownClass(cls):
        cls.c.close()
        cls.server.close()

    def tearDown(self):
        self.server.check_alive()

    def assert401(self, r):
        st, h, b = r
        self.assertEqual(st, 401, b)
        self.assertTrue(h.get("www-authenticate", "").startswith("Bearer"), h)
        self.assertEqual(b["type"], "urn:cqrsd:problem:unauthorized")

    def assert403(self, r, scope):
        st, h, b = r
        self.assertEqual(st, 403, b)
        self.assertEqual(b["type"], "urn:cqrsd:problem:insufficient-scope")
        self.assertIn("'%s'" % scope, b["detail"])
        self.assertIn('scope="%s"' % scope, h.get("www-authenticate", ""))

    def test_probes_open(self):
        for path in ("/healthz", "/readyz"):
            st, _, _ = self.c.get(path)
            self.assertIn(st, (200, 503), path)
            self.assertNotEqual(st, 401)

    def test_missing_and_wrong_token(self):
        self.assert401(self.c.get("/queries/order_summary?order_id=x"))
        self.assert401(self.c.command("PlaceOrder", order_body()))
        self.assert401(self.c.get("/streams/$all", headers=bearer("cqrsd_" + "0" * 64)))
        # a secret one character off, and the hash itself, are wrong too
        off = self.query[:-1] + ("0" if self.query[-1] != "0" else "1")
        self.assert401(self.c.get("/projections", headers=bearer(off)))
        self.assert401(self.c.get("/projections", headers={"Authorization": "Basic " + self.query}))
        self.assert401(self.c.get("/metrics"))
        self.assert401(self.c.get("/nowhere"))

    def test_command_scope(self):
        st, _, b = self.c.command("PlaceOrder", order_body(), headers=bearer(self.cmd))
        self.assertEqual(st, 202, b)
        self.assert403(self.c.command("PlaceOrder", order_body(), headers=bearer(self.query)), "command")
        self.assert403(self.c.command("PlaceOrder", order_body(), headers=bearer(self.admin)), "command")

    def test_query_scope(self):
        for path in ("/queries/order_summary?order_id=nope", "/streams/order-nope",
                     "/projections", "/projections/order_summaries"):
            st, _, b = self.c.get(path, headers=bearer(self.query))
            self.assertNotIn(st, (401, 403), (path, b))
            self.assert403(self.c.get(path, headers=bearer(self.cmd)), "query")

    def test_admin_scope(self):
        for method, path, body in (("GET", "/streams/$all", None),
                                   ("GET", "/metrics", None),
                                   ("POST", "/projections/order_summaries/pause", None),
                                   ("POST", "/streams/raw-" + cqtest.uid("s"),
                                    {"events": [{"type": "Noted", "data": {}}]})):
            for secret in (self.cmd, self.query):
                self.assert403(self.c.req(method, path, body=body, headers=bearer(secret)), "admin")
            st, _, b = self.c.req(method, path, body=body, headers=bearer(self.admin))
            self.assertNotIn(st, (401, 403), (path, b))
        st, _, b = self.c.post("/projections/order_summaries/resume", headers=bearer(self.admin))
        self.assertEqual(st, 200, b)

    def test_projections_cli_sends_cqrsd_token(self):
        def cli(*args, token=None):
            env = dict(os.environ)
            env.pop("CQRSD_TOKEN", None)
            if token:
                env["CQRSD_TOKEN"] = token
            return subprocess.run([cqtest.BINARY, "projections", "--server",
                                   "127.0.0.1:%d" % self.server.port] + list(args),
                                  capture_output=True, text=True, timeout=60, env=env)
        p = cli("list")
        self.assertNotEqual(p.returncode, 0, "listed without a token")
        self.assertEqual(cli("list", token=self.query).returncode, 0)
        self.assertNotEqual(cli("pause", "order_summaries", token=self.query).returncode, 0)
        p = cli("pause", "order_summaries", token=self.all)
        self.assertEqual(p.returncode, 0, p.stderr)
        p = cli("resume", "order_summaries", token=self.all)
        self.assertEqual(p.returncode, 0, p.stderr)
        # a token with a line break is not sent (no header injection)
        self.assertNotEqual(cli("list", token=self.query + "\r\nX-A: b").returncode, 0)

    def test_idempotency_key_scoped_to_token(self):
        key = cqtest.uid("k")
        body = order_body()
        st, h, b = self.c.command("PlaceOrder", body, key=key, headers=bearer(self.cmd))
        self.assertEqual(st, 202, b)
        st, h, b2 = self.c.command("PlaceOrder", body, key=key, headers=bearer(self.cmd))
        self.assertEqual((st, h.get("idempotency-replayed")), (202, "true"))
        self.assertEqual(b2, b)
        # the same key from another token is another key: the command runs
        # (and the order exists already: 409), no replay of writer's answer
        st, h, b3 = self.c.command("PlaceOrder", body, key=key, headers=bearer(self.all))
        self.assertEqual(st, 409, b3)
        self.assertNotIn("idempotency-replayed", h)
        # a different body under the other token's key is not "reused"
        other = order_body()
        st, h, b4 = self.c.command("PlaceOrder", other, key=cqtest.uid("k2"), headers=bearer(self.cmd))
        self.assertEqual(st, 202, b4)
        st, h, b5 = self.c.command("PlaceOrder", order_body(), key=key, headers=bearer(self.all))
        self.assertEqual(st, 422, b5)  # reused by the same token: refused
        self.assertEqual(b5["type"], "urn:cqrsd:problem:idempotency-key-reused")
        # the longest key still scoped (hashed into the stored key)
        long_key = "L" * 255
        st, _, b6 = self.c.command("PlaceOrder", order_body(), key=long_key, headers=bearer(self.cmd))
        self.assertEqual(st, 202, b6)
        st, h, _ = self.c.command("PlaceOrder", order_body(), key=long_key, headers=bearer(self.all))
        self.assertEqual(st, 202)
        self.assertNotIn("idempotency-replayed", h)


class Reload(unittest.TestCase):
    """The token file is read again when it changes (within a second or
    two) and at once on SIGHUP; revoked tokens stop working."""

    def test_add_and_revoke_while_serving(self):
        data = tempfile.mkdtemp(prefix="cqrsd-reload-")
        first = add_token(data, "first", "query")
        with Server(cqtest.BINARY, data_dir=data) as srv:
            c = Client(srv)
            st, _, _ = c.get("/projections", headers=bearer(first))
            self.assertEqual(st, 200)
            second = add_token(data, "second", "query")
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                st, _, _ = c.get("/projections", headers=bearer(second))
                if st == 200:
                    break
                time.sleep(0.2)
            self.assertEqual(st, 200, "a token added while serving is never accepted")
            self.assertEqual(tokens("revoke", "first", data=data)[0], 0)
            srv.proc.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                st, _, _ = c.get("/projections", headers=bearer(first))
                if st == 401:
                    break
                time.sleep(0.2)
            self.assertEqual(st, 401, "a revoked token still works")
            # a broken file keeps the tokens read before
            with open(os.path.join(data, "tokens"), "a") as f:
                f.write("garbage\n")
            srv.proc.send_signal(signal.SIGHUP)
            time.sleep(1.5)
            st, _, _ = c.get("/projections", headers=bearer(second))
            self.assertEqual(st, 200)
            self.assertIn("keeping the tokens read before", srv.stderr_text())
            c.close()


if __name__ == "__main__":
    cqtest.main()
