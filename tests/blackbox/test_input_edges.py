"""Black-box tests of the edges of HTTP input: encoded NUL bytes, too many
query parameters, contradictory message framing (request smuggling), HEAD
and the exact form of If-Match. Malformed requests go over raw sockets.

    python3 tests/blackbox/test_input_edges.py /path/to/cqrsd
"""
import http.client
import json
import socket
import sys
import time
import unittest

sys.dont_write_bytecode = True

import cqtest  # noqa: E402
from problems import ProblemTypes  # noqa: E402
from cqtest import ServerTestCase, order_body, raw_exchange, uid  # noqa: E402

# An answer expected "at once": far below the 30 s idle timeout that a
# request nobody answers runs into.
PROMPT = 10.0


def raw_all(port, data, timeout=PROMPT):
    """Send data on a new connection, then read until the server closes
    it. Returns (bytes, closed): closed is False if the server kept the
    connection open for `timeout` seconds after its last byte."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    out = b""
    closed = True
    try:
        s.sendall(data)
        while True:
            try:
                part = s.recv(65536)
            except ConnectionResetError:
                break
            except socket.timeout:
                closed = False
                break
            if not part:
                break
            out += part
    finally:
        s.close()
    return out, closed


def status_lines(data):
    """The status lines in raw answer bytes ("HTTP/1.1 400 Bad Request")."""
    return [ln for ln in data.split(b"\r\n") if ln.startswith(b"HTTP/1.")]


def post_head(path, extra=b""):
    return (b"POST " + path + b" HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\n" + extra)


class EdgeBase(ProblemTypes, ServerTestCase):

    def appended_nothing(self, before):
        self.assertEqual(self.c.head(), before, "a refused request appended events")
        self.assertHealthy()

    def place(self):
        body = order_body()
        st, _, b = self.c.command("PlaceOrder", body)
        self.assertEqual(st, 202, "%s %r" % (st, b))
        return body["order_id"]


class NulByteTest(EdgeBase):
    """%00 decodes to a NUL byte, which would silently cut the C string
    the server goes on with: it is refused wherever it appears."""

    def test_nul_in_stream_id_is_refused(self):
        before = self.c.head()
        body = {"expected_version": "any",
                "events": [{"type": "Note", "data": {}}]}
        st, h, b = self.c.post("/streams/abc%00def", body)
        self.assertProblem(st, h, b, 400)
        self.assertEqual(b["type"], "urn:cqrsd:problem:bad-stream-id")
        st, _, _ = self.c.get("/streams/abc")
        self.assertEqual(st, 404, "the cut-off id 'abc' was written")
        self.appended_nothing(before)

    def test_nul_in_other_paths_is_refused(self):
        before = self.c.head()
        oid = uid("nul")
        for method, path, body, slug in (
                ("GET", "/streams/abc%00def", None, "bad-stream-id"),
                ("GET", "/healthz%00", None, "bad-path"),
                ("GET", "/projections/order_summaries%00x", None, "bad-path"),
                ("GET", "/queries/order_summary%00x?order_id=" + oid, None, "bad-path"),
                ("POST", "/commands/PlaceOrder%00x", order_body(oid), "bad-path")):
            with self.subTest(path=path):
                st, h, b = self.c.req(method, path, body=body)
                self.assertProblem(st, h, b, 400)
                self.assertType(b, slug)
        st, _, _ = self.c.get("/queries/order_summary?order_id=" + oid)
        self.assertEqual(st, 404, "PlaceOrder%00x placed an order")
        self.appended_nothing(before)

    def test_nul_in_parameter_is_refused(self):
        oid = self.place()
        before = self.c.head()
        for path, field in (
                ("/streams/$all?limit=1%00", "limit"),
                ("/streams/$all?from_position=1%002", "from_position"),
                ("/queries/order_summary?order_id=" + oid + "%00x", "order_id"),
                ("/queries/order_summary?order_id=" + oid + "&wait_ms=1%00",
                 "wait_ms")):
            with self.subTest(path=path):
                st, h, b = self.c.get(path)
                self.assertProblem(st, h, b, 400)
                self.assertEqual(b["type"], "urn:cqrsd:problem:bad-parameter")
                self.assertFieldError(b, field)
        st, h, b = self.c.post("/commands/CancelOrder?wait_for=order_summaries%00x",
                               {"order_id": oid, "reason": "x"})
        self.assertProblem(st, h, b, 400)
        self.assertType(b, "bad-parameter")
        self.assertFieldError(b, "wait_for")
        self.appended_nothing(before)

    def test_encoded_percent_is_not_a_nul(self):
        # %2500 is "%00" as text, not a NUL byte: it is an ordinary value
        st, h, b = self.c.get("/streams/x%2500?limit=1%2500")
        self.assertProblem(st, h, b, 400)
        self.assertType(b, "bad-parameter")
        self.assertFieldError(b, "limit")  # "1%00" is not a number
        st, h, b = self.c.get("/streams/x%2500")
        self.assertProblem(st, h, b, 404)  # a stream "x%00" does not exist
        self.assertType(b, "not-found")


class ManyParametersTest(EdgeBase):

    def test_thousands_of_parameters_answer_431_at_once(self):
        for n in (65, 1000, 1200, 3000):
            with self.subTest(params=n):
                qs = "&".join("p%d=1" % i for i in range(n))
                t0 = time.monotonic()
                st, h, b = raw_exchange(
                    self.server.port,
                    [("GET /healthz?%s HTTP/1.1\r\nHost: x\r\n\r\n" % qs).encode()],
                    timeout=PROMPT)
                self.assertEqual(st, 431, "%d parameters -> %s %r" % (n, st, b))
                self.assertLess(time.monotonic() - t0, PROMPT)
                self.assertTrue(h.get("content-type", "").startswith(
                    "application/problem+json"), h)
                self.assertEqual(json.loads(b)["status"], 431)
                self.assertType(json.loads(b), "too-many-parameters")
        self.assertHealthy()

    def test_many_parameters_on_a_command_write_nothing(self):
        before = self.c.head()
        body = json.dumps(order_body()).encode()
        qs = "&".join("wait_ms=%d" % i for i in range(1500)).encode()
        st, h, b = raw_exchange(
            self.server.port,
            [post_head(b"/commands/PlaceOrder?" + qs,
                       b"Content-Length: %d\r\n\r\n" % len(body)) + body],
            timeout=PROMPT)
        self.assertEqual(st, 431, "%s %r" % (st, b))
        self.assertType(json.loads(b), "too-many-parameters")
        self.appended_nothing(before)

    def test_a_few_parameters_are_still_read(self):
        st, h, b = self.c.get("/streams/$all?" + "&".join(["limit=1"] * 2))
        self.assertProblem(st, h, b, 400)  # repeated: bad-parameter, not 431
        self.assertEqual(b["type"], "urn:cqrsd:problem:bad-parameter")


class FramingTest(EdgeBase):
    """Content-Length and Transfer-Encoding must say one thing: a server
    that reads a body differently from a proxy in front of it lets a
    client smuggle a second request. Each contradiction is one 400 and the
    connection is closed."""

    def assert_refused_and_closed(self, data, status=400, slug="bad-framing"):
        before = self.c.head()
        out, closed = raw_all(self.server.port, data)
        lines = status_lines(out)
        self.assertEqual(len(lines), 1, "want exactly one answer, got %r" % out)
        self.assertTrue(lines[0].startswith(b"HTTP/1.1 %d " % status),
                        "answer %r" % out)
        if slug is not None:
            self.assertType(json.loads(out.split(b"\r\n\r\n", 1)[1]), slug)
        self.assertTrue(closed, "the connection stayed open: %r" % out)
        self.appended_nothing(before)
        return out

    @unittest.expectedFailure
    def test_negative_content_length(self):
        # libmicrohttpd 0.9.75 answers an unparsable Content-Length itself,
        # before any application callback, and writes its status line and
        # headers twice (see src/http/README.md, "Known limits").
        self.assert_refused_and_closed(
            post_head(b"/commands/PlaceOrder", b"Content-Length: -1\r\n\r\n{}"),
            slug=None)

    def test_two_different_content_lengths(self):
        body = json.dumps(order_body()).encode()
        for a, b in ((len(body), 5), (5, len(body)), (0, len(body))):
            with self.subTest(lengths=(a, b)):
                self.assert_refused_and_closed(post_head(
                    b"/commands/PlaceOrder",
                    b"Content-Length: %d\r\nContent-Length: %d\r\n\r\n" % (a, b))
                    + body)

    def test_smuggled_request_behind_content_length_zero(self):
        # CL: 0 then CL: n: a server that took the first would read the
        # body as a second request and answer twice
        smuggled = (b"POST /streams/smuggled-%s HTTP/1.1\r\nHost: x\r\n"
                    b"Content-Type: application/json\r\nContent-Length: 58\r\n\r\n"
                    b'{"expected_version":"any","events":[{"type":"N","data":{}}]}'
                    % uid("s").encode())
        self.assert_refused_and_closed(
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n"
            b"Content-Length: %d\r\n\r\n" % len(smuggled) + smuggled)

    def test_content_length_with_chunked(self):
        body = json.dumps(order_body()).encode()
        chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
        for cl in (5, len(chunked)):
            with self.subTest(content_length=cl):
                self.assert_refused_and_closed(post_head(
                    b"/commands/PlaceOrder",
                    b"Content-Length: %d\r\nTransfer-Encoding: chunked\r\n\r\n" % cl)
                    + chunked)
        # a GET with both: the "body" would be a second request
        self.assert_refused_and_closed(
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            b"Content-Length: 3\r\n\r\n0\r\n\r\n")

    def test_unknown_transfer_coding(self):
        body = json.dumps(order_body()).encode()
        self.assert_refused_and_closed(post_head(
            b"/commands/PlaceOrder",
            b"Transfer-Encoding: gzip, chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n"
            % (len(body), body)), status=501, slug="not-implemented")

    def test_plain_chunked_and_content_length_still_work(self):
        body = json.dumps(order_body()).encode()
        st, _, b = raw_exchange(self.server.port, [post_head(
            b"/commands/PlaceOrder",
            b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
            b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))])
        self.assertEqual(st, 202, b)
        body = json.dumps(order_body()).encode()
        st, _, b = raw_exchange(self.server.port, [post_head(
            b"/commands/PlaceOrder",
            b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))])
        self.assertEqual(st, 202, b)


class HeadTest(EdgeBase):
    """HEAD works wherever GET does (RFC 9110 9.3.2): the same status and
    headers, no body."""

    def both(self, path):
        conn = http.client.HTTPConnection("127.0.0.1", self.server.port,
                                          timeout=cqtest.REQUEST_TIMEOUT)
        try:
            conn.request("GET", path)
            r = conn.getresponse()
            gbody = r.read()
            get = (r.status, {k.lower(): v for k, v in r.getheaders()})
            conn.request("HEAD", path)
            r = conn.getresponse()
            hbody = r.read()
            head = (r.status, {k.lower(): v for k, v in r.getheaders()})
            # the connection is still in step: no stray body bytes
            conn.request("GET", "/healthz")
            r = conn.getresponse()
            r.read()
            self.assertEqual(r.status, 200)
        finally:
            conn.close()
        return get, gbody, head, hbody

    def test_head_on_every_get_route(self):
        oid = self.place()
        st, _, _ = self.c.get("/queries/order_summary?order_id=%s&min_position=%d"
                              % (oid, self.c.head()))
        self.assertEqual(st, 200)
        stable = ("/healthz", "/streams/order-" + oid, "/streams/$all?limit=5",
                  "/streams/no-such-stream", "/queries/order_summary?order_id=" + oid,
                  "/queries/order_summary?order_id=missing", "/projections/nope")
        varying = ("/readyz", "/metrics", "/projections",
                   "/projections/order_summaries")
        for path in stable + varying:
            with self.subTest(path=path):
                (gst, gh), gbody, (hst, hh), hbody = self.both(path)
                self.assertEqual(hst, gst, "HEAD %s -> %s, GET -> %s" % (path, hst, gst))
                self.assertNotEqual(hst, 405)
                self.assertEqual(hbody, b"")
                gh.pop("date", None)
                hh.pop("date", None)
                if path in stable:
                    self.assertEqual(hh, gh)
                else:
                    self.assertEqual(sorted(hh), sorted(gh))
                    self.assertEqual(hh.get("content-type"), gh.get("content-type"))

    def test_head_is_not_a_write(self):
        before = self.c.head()
        st, h, _ = self.c.req("HEAD", "/commands/PlaceOrder")
        self.assertEqual(st, 405)
        self.assertEqual(h.get("allow"), "POST")
        st, h, _ = self.c.req("HEAD", "/projections/order_summaries/pause")
        self.assertEqual(st, 405)
        self.assertEqual(h.get("allow"), "POST")
        st, _, b = self.c.get("/projections/order_summaries")
        self.assertEqual(b["status"], "running")
        self.appended_nothing(before)

    def test_allow_lists_head(self):
        st, h, _ = self.c.req("DELETE", "/healthz")
        self.assertEqual(st, 405)
        self.assertEqual(h.get("allow"), "GET, HEAD")
        st, h, _ = self.c.req("DELETE", "/streams/x")
        self.assertEqual(st, 405)
        self.assertEqual(h.get("allow"), "GET, HEAD, POST")
        for path in ("/projections", "/projections/order_summaries"):
            st, h, _ = self.c.req("DELETE", path)
            self.assertEqual(st, 405, path)
            self.assertEqual(h.get("allow"), "GET, HEAD", path)


class IfMatchTest(EdgeBase):
    """If-Match names a stream version the way the server writes it in
    ETag ("3"); any other spelling is a malformed header (400), never
    another version."""

    def test_leading_zeros_are_not_a_version(self):
        oid = self.place()  # version 1
        before = self.c.head()
        for im in ('"01"', '"001"', '"0"', '"00"'):
            with self.subTest(if_match=im):
                st, h, b = self.c.command("CancelOrder", {"order_id": oid, "reason": "x"},
                                          if_match=im)
                self.assertProblem(st, h, b, 400)
                self.assertEqual(b["type"], "urn:cqrsd:problem:bad-header")
        self.appended_nothing(before)
        st, _, b = self.c.command("CancelOrder", {"order_id": oid, "reason": "x"},
                                  if_match='"1"')
        self.assertEqual(st, 202, b)


if __name__ == "__main__":
    cqtest.main()
