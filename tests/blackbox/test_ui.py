"""GET /ui/...: the pages and the JavaScript client served from the binary
(src/http/static.c): content types, ETag and 304, caching headers, the
redirect of /ui, 404 problems, no way out of the embedded set, and no
reference to anything outside the server (the pages work offline)."""

import http.client
import json
import os
import re

import cqtest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
UI = os.path.join(ROOT, "ui")
JS = os.path.join(ROOT, "clients", "js", "cqrsd.js")

TYPES = {".html": "text/html; charset=utf-8",
         ".js": "text/javascript; charset=utf-8",
         ".css": "text/css; charset=utf-8"}


def served_files():
    """(url path, source file) for every file the binary must serve."""
    out = [("/ui/" + f, os.path.join(UI, f)) for f in sorted(os.listdir(UI))]
    out.append(("/ui/cqrsd.js", JS))
    return out


def get_raw(port, path, headers=None, method="GET"):
    """One request with the path sent exactly as given: (status, headers
    with lower-case names, body bytes)."""
    conn = http.client.HTTPConnection("127.0.0.1", port,
                                      timeout=cqtest.REQUEST_TIMEOUT)
    try:
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        body = resp.read()
        h = {k.lower(): v for k, v in resp.getheaders()}
        # checked against docs/openapi.yaml with the other suites' answers
        text = body.decode("utf-8", "replace")
        if "json" in h.get("content-type", ""):
            text = json.loads(text)
        cqtest._record(method, path.split("?")[0], resp.status,
                       h.get("content-type", ""), text)
        return resp.status, h, body
    finally:
        conn.close()


class UiTest(cqtest.ServerTestCase):
    def test_every_file_is_served_as_in_the_tree(self):
        for path, src in served_files():
            with open(src, "rb") as f:
                want = f.read()
            st, h, body = get_raw(self.server.port, path)
            self.assertEqual(st, 200, path)
            ext = os.path.splitext(src)[1]
            self.assertEqual(h.get("content-type"), TYPES[ext], path)
            self.assertEqual(body, want, "%s differs from %s" % (path, src))
            self.assertEqual(h.get("x-content-type-options"), "nosniff")
            self.assertEqual(h.get("cache-control"), "no-cache")
            self.assertIn("default-src 'self'",
                          h.get("content-security-policy", ""))
            self.assertRegex(h.get("etag", ""), r'^"[0-9a-f]{16}"$')

    def test_index_and_names_without_extension(self):
        st, h, body = get_raw(self.server.port, "/ui/")
        with open(os.path.join(UI, "index.html"), "rb") as f:
            self.assertEqual(body, f.read())
        st, h, body = get_raw(self.server.port, "/ui/orders")
        self.assertEqual(st, 200)
        with open(os.path.join(UI, "orders.html"), "rb") as f:
            self.assertEqual(body, f.read())
        # a cache-busting query parameter is ignored
        st, _, body2 = get_raw(self.server.port, "/ui/orders?v=2")
        self.assertEqual((st, body2), (200, body))

    def test_ui_redirects_to_the_slash(self):
        st, h, _ = get_raw(self.server.port, "/ui")
        self.assertEqual(st, 308)
        self.assertEqual(h.get("location"), "/ui/")

    def test_etag_and_304(self):
        st, h, body = get_raw(self.server.port, "/ui/ops.js")
        etag = h["etag"]
        for inm in (etag, "W/" + etag, '"x", ' + etag, "*"):
            st, h2, body = get_raw(self.server.port, "/ui/ops.js",
                                               {"If-None-Match": inm})
            self.assertEqual(st, 304, inm)
            self.assertEqual(body, b"")
            self.assertEqual(h2.get("etag"), etag)
        st, _, body = get_raw(self.server.port, "/ui/ops.js",
                                          {"If-None-Match": '"0000"'})
        self.assertEqual(st, 200)
        # different files, different tags
        tags = {get_raw(self.server.port, p)[1]["etag"]
                for p, _ in served_files()}
        self.assertEqual(len(tags), len(served_files()))

    def test_head_is_get_without_body(self):
        st, h, body = get_raw(self.server.port, "/ui/style.css",
                                          method="HEAD")
        self.assertEqual(st, 200)
        self.assertEqual(body, b"")
        self.assertEqual(h.get("content-type"), TYPES[".css"])
        with open(os.path.join(UI, "style.css"), "rb") as f:
            self.assertEqual(int(h["content-length"]), len(f.read()))

    def test_other_methods_are_405(self):
        st, h, b = self.c.req("POST", "/ui/", body={})
        self.assertEqual(st, 405)
        self.assertEqual(h.get("allow"), "GET, HEAD")

    def test_missing_files_and_traversal_are_404_problems(self):
        for path in ("/ui/nope.js", "/ui/nope", "/ui/../CMakeLists.txt",
                     "/ui/%2e%2e/CMakeLists.txt", "/ui/..%2fCMakeLists.txt",
                     "/ui/../../../../etc/passwd", "/ui//etc/passwd",
                     "/ui/./index.html", "/ui/index.html/", "/ui/ui/index.html",
                     "/ui/INDEX.HTML", "/ui/cqrsd", "/ui/index.htm", "/ui/ops.jsx",
                     "/ui/o", "/ui/x" * 40,
                     "/uix"):
            st, h, body = get_raw(self.server.port, path)
            self.assertEqual(st, 404, path)
            self.assertTrue(h.get("content-type", "").startswith(
                "application/problem+json"), path)

    def test_nul_in_the_path_is_400(self):
        st, h, _ = get_raw(self.server.port, "/ui/ops.js%00.html")
        self.assertEqual(st, 400)
        self.assertTrue(h.get("content-type", "").startswith(
            "application/problem+json"))

    def test_pages_load_nothing_from_elsewhere(self):
        for _, src in served_files():
            with open(src, encoding="ascii") as f:  # ASCII: embedded as is
                text = f.read()
            urls = re.findall(r"(?:https?:)?//[A-Za-z0-9.-]+\.[a-z]{2,}[^\s\"')]*",
                              text)
            urls = [u for u in urls if "www.w3.org/2000/svg" not in u]
            self.assertEqual(urls, [], "%s refers to %r" % (src, urls))
            self.assertNotRegex(text, r"<script[^>]*>[^<]", src + ": inline script")


if __name__ == "__main__":
    cqtest.main()
