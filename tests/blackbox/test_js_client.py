"""The JavaScript client (clients/js/cqrsd.js) under Node's test runner,
against a live cqrsd: tests/blackbox/test_js_client.mjs, given the
server's URL in CQRSD_URL. Needs node >= 18 (make test installs Debian's
nodejs)."""

import os
import shutil
import subprocess

import cqtest

HERE = os.path.dirname(os.path.abspath(__file__))


class JsClientTest(cqtest.ServerTestCase):
    def test_node_suite(self):
        node = shutil.which("node") or shutil.which("nodejs")
        self.assertIsNotNone(node, "node is not installed (make deps: nodejs)")
        env = dict(os.environ,
                   CQRSD_URL="http://127.0.0.1:%d" % self.server.port)
        p = subprocess.run(
            [node, "--test", "--test-reporter=spec", "--test-timeout=120000",
             os.path.join(HERE, "test_js_client.mjs")],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            timeout=240, text=True)
        print(p.stdout)
        self.assertEqual(p.returncode, 0, "node --test failed:\n" + p.stdout)


if __name__ == "__main__":
    cqtest.main()
