"""The pages in a real browser (tests/browser/orders.mjs): Debian's
chromium, headless, driven by playwright-core from npm, which this test
installs into the build folder (BUILD/js/node_modules) the first time.
Places an order and sees it pending then confirmed, pays and ships it,
sees a refused command rolled back with its reason, pauses order_summaries
and sees the stale badge, resumes and sees it clear, and looks at the
operations page. Screenshots: BUILD/screenshots/*.png.

Needs node, npm and chromium (make test installs them); chromium runs
with --no-sandbox when the tests run as root (orders.mjs says why)."""

import os
import shutil
import subprocess

import cqtest

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(os.path.dirname(HERE), "browser", "orders.mjs")
PLAYWRIGHT = "playwright-core@1"


def chromium():
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    return None


def playwright_dir(build):
    """BUILD/js with playwright-core installed (npm, once)."""
    d = os.path.join(build, "js")
    if os.path.isdir(os.path.join(d, "node_modules", "playwright-core")):
        return d
    os.makedirs(d, exist_ok=True)
    npm = shutil.which("npm")
    if npm is None:
        raise AssertionError("npm is not installed (make test installs it)")
    # no browser download: the system's chromium is used
    env = dict(os.environ, PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD="1")
    p = subprocess.run([npm, "install", "--no-audit", "--no-fund",
                        "--prefix", d, PLAYWRIGHT],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       text=True, timeout=600, env=env)
    if p.returncode != 0:
        raise AssertionError("npm install %s failed:\n%s" % (PLAYWRIGHT,
                                                            p.stdout))
    return d


class BrowserTest(cqtest.ServerTestCase):
    def test_orders_and_operations_pages(self):
        node = shutil.which("node") or shutil.which("nodejs")
        self.assertIsNotNone(node, "node is not installed")
        browser = chromium()
        self.assertIsNotNone(browser, "chromium is not installed "
                             "(make test installs Debian's chromium)")
        build = os.path.dirname(os.path.abspath(cqtest.BINARY))
        env = dict(os.environ,
                   CQRSD_URL="http://127.0.0.1:%d" % self.server.port,
                   PLAYWRIGHT_DIR=playwright_dir(build),
                   SCREENSHOT_DIR=os.path.join(build, "screenshots"),
                   CHROMIUM=browser)
        p = subprocess.run([node, SCRIPT], env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, timeout=540)
        print(p.stdout)
        self.assertEqual(p.returncode, 0, "browser test failed:\n" + p.stdout)


if __name__ == "__main__":
    cqtest.main()
