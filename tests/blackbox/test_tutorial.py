"""docs/tutorial.md, run as written, so that it cannot rot.

The tutorial's ```sh blocks are run in order, each in bash, in a scratch
HOME, carrying the working directory and exported variables from one block
to the next; the port 8080 is replaced by a free one. An HTML comment
"<!-- test: ... -->" just before a block says what to do with it:

  install      the block installs cqrsd; instead, the build under test is
               installed into "$HOME/.local" (cmake --install; nothing is
               rebuilt)
  background   the block is the server: started in the background (and
               waited for), stopped with SIGTERM at the end (exit code 0)
  output       this plain block is what the previous ```sh block printed;
               "…" stands for any text
  excerpt F    this ```c block appears, as it is, in the file F

So the test scaffolds a domain (cqrsd new), builds it and its unit test
against a temporary-prefix install with pkg-config, serves it, sends a
command and reads the query with min_position. It also builds the bank
example from its own Makefile against the same install, since bank is
written to the installed headers only. In a sanitizer build the module and
tests are compiled with the same sanitizer.
"""

import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import unittest
import http.client

import cqtest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TUTORIAL = os.path.join(ROOT, "docs", "tutorial.md")
BLOCK_TIMEOUT = 300  # make under a sanitizer on a busy machine


def parse(path):
    """[(directive or None, info string, text)] of every fenced block."""
    blocks, directive, fence, lines = [], None, None, []
    with open(path, encoding="utf-8") as f:
        for line in f.read().splitlines():
            if fence is not None:
                if line.strip() == "```":
                    blocks.append((directive, fence, "\n".join(lines)))
                    fence, directive, lines = None, None, []
                else:
                    lines.append(line)
                continue
            m = re.match(r"^<!-- test: (.*?)\s*-->$", line.strip())
            if m:
                directive = m.group(1)
            elif line.startswith("```"):
                fence = line[3:].strip()
            elif line.strip():
                directive = None
    return blocks


def sanitizer_flags(libcqrs):
    """Compiler flags matching the sanitizer libcqrs was built with."""
    r = subprocess.run(["readelf", "-d", libcqrs], capture_output=True,
                       text=True)
    if "libasan" in r.stdout:
        return "-fsanitize=address,undefined -fno-omit-frame-pointer"
    if "libtsan" in r.stdout:
        return "-fsanitize=thread"
    return ""


class Tutorial(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="cqrsd-tutorial-")
        self.home = os.path.join(self.tmp, "home")
        os.makedirs(self.home)
        self.build = os.path.dirname(os.path.abspath(cqtest.BINARY))
        self.envfile = os.path.join(self.tmp, "env.sh")
        self.cwdfile = os.path.join(self.tmp, "cwd")
        open(self.envfile, "w").close()
        self.cwd = self.home
        self.port = cqtest.free_port()
        self.server = None
        self.server_log = os.path.join(self.tmp, "server.log")
        san = sanitizer_flags(os.path.join(self.build, "libcqrs.so"))
        env = {k: v for k, v in os.environ.items()
               if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL",
                            "PKG_CONFIG_PATH", "CFLAGS", "LDFLAGS")}
        env.update(HOME=self.home, CFLAGS="-O1 -g -Werror " + san,
                   LDFLAGS=san)
        self.env = env

    def tearDown(self):
        if self.server is not None and self.server.poll() is None:
            self.server.kill()
            self.server.wait()
        if not os.environ.get("CQ_KEEP"):
            shutil.rmtree(self.tmp, ignore_errors=True)

    def shell(self, script):
        """Run script as a tutorial block: in the current directory, with
        the variables exported so far. Returns its stdout."""
        wrapped = ('set -eo pipefail\ncd "$1"\n. "$2"\n' + script +
                   '\npwd > "$3"\nexport -p > "$2"\n')
        r = subprocess.run(["bash", "-c", wrapped, "tutorial", self.cwd,
                            self.envfile, self.cwdfile],
                           env=self.env, capture_output=True, text=True,
                           timeout=BLOCK_TIMEOUT)
        self.assertEqual(r.returncode, 0, "block failed (%d):\n%s\nstdout: %s\n"
                         "stderr: %s" % (r.returncode, script, r.stdout,
                                         r.stderr))
        with open(self.cwdfile) as f:
            self.cwd = f.read().strip()
        return r.stdout

    def start_server(self, script):
        with open(self.server_log, "wb") as log:
            self.server = subprocess.Popen(
                ["bash", "-c", 'cd "$1"\n. "$2"\nexec ' + script, "tutorial",
                 self.cwd, self.envfile],
                env=self.env, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        deadline = time.monotonic() + cqtest.START_TIMEOUT
        while time.monotonic() < deadline:
            self.assertIsNone(self.server.poll(),
                              "the server exited: " + self.log())
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port,
                                                  timeout=1)
                conn.request("GET", "/healthz")
                if conn.getresponse().status == 200:
                    conn.close()
                    return
                conn.close()
            except OSError:
                pass
            time.sleep(0.05)
        self.fail("the server did not answer /healthz: " + self.log())

    def stop_server(self):
        self.server.send_signal(signal.SIGTERM)
        rc = self.server.wait(cqtest.STOP_TIMEOUT)
        log = self.log()
        self.assertEqual(rc, 0, "server exit code %d: %s" % (rc, log))
        for pat in cqtest.SANITIZER_PATTERNS:
            self.assertNotIn(pat, log)
        return log

    def log(self):
        with open(self.server_log, encoding="utf-8", errors="replace") as f:
            return f.read()

    def check_output(self, expected, got):
        pattern = ".*?".join(re.escape(p) for p in expected.split("…"))
        self.assertIsNotNone(re.fullmatch(pattern, got.strip(), re.S),
                             "output differs from the tutorial:\nwant: %s\n"
                             "got:  %s" % (expected, got.strip()))

    def test_tutorial_as_written(self):
        counts = dict(run=0, output=0, excerpt=0, background=0, install=0)
        last = None
        for directive, info, text in parse(TUTORIAL):
            word = (directive or "").split(" ")[0]
            if info == "sh":
                text = text.replace("8080", str(self.port))
                if word == "install":
                    self.shell('cmake --install "%s" --prefix "$HOME/.local"'
                               ' >/dev/null' % self.build)
                    counts["install"] += 1
                elif word == "background":
                    self.start_server(text)
                    counts["background"] += 1
                else:
                    last = self.shell(text)
                    counts["run"] += 1
            elif word == "output":
                self.assertIsNotNone(last, "output block before any command")
                self.check_output(text, last)
                counts["output"] += 1
            elif word == "excerpt":
                path = os.path.join(self.cwd, directive.split(" ", 1)[1])
                with open(path) as f:
                    self.assertIn(text, f.read(), "excerpt not in %s" % path)
                counts["excerpt"] += 1
        # the tutorial still has what makes this test worth running
        self.assertEqual((counts["install"], counts["background"]), (1, 1))
        self.assertGreaterEqual(counts["run"], 7, counts)
        self.assertGreaterEqual(counts["output"], 6, counts)
        self.assertGreaterEqual(counts["excerpt"], 3, counts)
        log = self.stop_server()
        self.assertIn("serving stock on", log)

        # the installed library holds the engine only
        prefix = os.path.join(self.home, ".local")
        nm = subprocess.run(["nm", "-D", "--defined-only",
                             os.path.join(prefix, "lib", "libcqrs.so")],
                            capture_output=True, text=True, check=True).stdout
        self.assertIn("cq_decision_emit", nm)
        self.assertNotRegex(nm.lower(), r"order|bank")
        for f in ("bin/cqrsd", "lib/libcqrs.a", "include/cqrs/module.h",
                  "lib/pkgconfig/cqrs.pc", "lib/cqrsd/orders/orders.so",
                  "lib/cqrsd/orders/projections/order_summaries.sql"):
            self.assertTrue(os.path.exists(os.path.join(prefix, f)), f)

        # the installed cqrsd finds the installed orders module by itself
        with cqtest.Server(binary=os.path.join(prefix, "bin", "cqrsd")) as srv:
            c = cqtest.Client(srv)
            st, _, body = c.req("GET", "/queries/sales_dashboard")
            self.assertEqual(st, 200, body)
            c.close()
            self.assertIn("serving orders on", srv.stderr_text())

        # bank is written against the installed headers: its own Makefile
        # builds and tests it outside the tree
        shutil.copytree(os.path.join(ROOT, "domains", "bank"),
                        os.path.join(self.home, "bank"))
        self.cwd = os.path.join(self.home, "bank")
        out = self.shell("make >/dev/null && make test 2>&1 | tail -n 1")
        self.assertIn("PASSED", out)


if __name__ == "__main__":
    cqtest.main()
