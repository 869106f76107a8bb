"""Black-box tests with hostile input: every refusal is a 4xx problem+json,
appends nothing and leaves the server healthy.

    python3 tests/blackbox/test_errors.py /path/to/cqrsd
"""
import json
import os
import socket
import struct
import sys
import threading
import time
import unittest

sys.dont_write_bytecode = True

import cqtest  # noqa: E402
from problems import URN, ProblemTypes  # noqa: E402
from cqtest import (ServerTestCase, order_body, problem_errors, raw_exchange,  # noqa: E402
                    uid)

MIB = 1024 * 1024


def item(**over):
    it = {"sku": "sku-1", "quantity": 1, "unit_price_cents": 100}
    it.update(over)
    return it


_shared = {}


def setUpModule():
    # One server for the whole file, so the last test sees it after all of
    # the abuse above it.
    srv = cqtest.Server(cqtest.BINARY)
    try:
        srv.start()
    except BaseException:
        srv.close(failed=True)
        raise
    _shared["server"] = srv
    _shared["client"] = cqtest.Client(srv)


def tearDownModule():
    if "server" in _shared:
        _shared["client"].close()
        _shared["server"].close()


class HostileBase(ProblemTypes, ServerTestCase):

    @classmethod
    def setUpClass(cls):
        cls.server = _shared["server"]
        cls.c = _shared["client"]

    @classmethod
    def tearDownClass(cls):
        pass

    def hostile(self, expect, ptype, method, path, body=None, headers=None,
                raw=None, field=None, content_type="application/json"):
        """Send one bad request; assert a problem+json `expect` answer of
        type urn:cqrsd:problem:`ptype`, that nothing was appended and that
        the server is still healthy."""
        before = self.c.head()
        h = dict(headers or {})
        if raw is not None and content_type is not None and \
                not any(k.lower() == "content-type" for k in h):
            h["Content-Type"] = content_type
        st, hh, b = self.c.req(method, path, body=body, headers=h, raw=raw)
        self.assertProblem(st, hh, b, expect)
        self.assertType(b, ptype)
        if field is not None:
            self.assertFieldError(b, field)
        self.assertEqual(self.c.head(), before, "a refused request appended events")
        self.assertHealthy()
        return b

    def place(self, body, expect=400, field=None, ptype="validation-failed",
              **kw):
        """A PlaceOrder whose body is JSON: refused for what it says."""
        return self.hostile(expect, ptype, "POST", "/commands/PlaceOrder",
                            body=body, field=field, **kw)

    def place_raw(self, raw, expect=400, ptype="malformed-json", **kw):
        """A PlaceOrder whose body is these bytes: by default, not JSON."""
        return self.hostile(expect, ptype, "POST", "/commands/PlaceOrder",
                            raw=raw, **kw)

    def placed_order(self):
        body = order_body()
        st, _, b = self.c.command("PlaceOrder", body)
        self.assertEqual(st, 202, "%s %r" % (st, b))
        return body["order_id"]


class BodyShapeTest(HostileBase):

    def test_malformed_json(self):
        for raw in (b"{", b'{"order_id": }', b"{'order_id': 'x'}", b"", b"   ",
                    b'{"order_id":"a",}', b"nul", b'{"a":1}{"b":2}',
                    b'{"order_id":"a" "customer_id":"b"}'):
            with self.subTest(raw=raw):
                self.place_raw(raw)

    def test_not_an_object(self):
        for v in ([], [order_body()], "PlaceOrder", 42, None, True):
            with self.subTest(v=v):
                self.place_raw(json.dumps(v).encode(), ptype="validation-failed")

    def test_wrong_types(self):
        cases = [
            ("items[0].quantity", order_body(items=[item(quantity="2")])),
            ("items[0].quantity", order_body(items=[item(quantity=1.5)])),
            ("items[0].quantity", order_body(items=[item(quantity=True)])),
            ("items[0].unit_price_cents", order_body(items=[item(unit_price_cents=None)])),
            ("items[0].sku", order_body(items=[item(sku=12)])),
            ("order_id", order_body(order_id=123)),
            ("customer_id", order_body(customer_id=False)),
            ("customer_id", order_body(customer_id=None)),
            ("currency", order_body(currency=["EUR"])),
            ("items", order_body(items={"sku": "a"})),
            ("items[0]", order_body(items=["sku-1"])),
        ]
        for field, body in cases:
            with self.subTest(field=field, body=body):
                self.place(body, field=field)

    def test_wrong_types_other_commands(self):
        oid = self.placed_order()
        cases = [
            ("RecordPayment", "amount_cents",
             {"order_id": oid, "payment_id": "p1", "amount_cents": "100"}),
            ("RecordPayment", "amount_cents",
             {"order_id": oid, "payment_id": "p1", "amount_cents": True}),
            ("RecordPayment", "amount_cents",
             {"order_id": oid, "payment_id": "p1", "amount_cents": 10.25}),
            ("RecordPayment", "payment_id",
             {"order_id": oid, "payment_id": 7, "amount_cents": 100}),
            ("ShipOrder", "carrier", {"order_id": oid, "carrier": 1, "tracking_number": "t"}),
            ("CancelOrder", "reason", {"order_id": oid, "reason": {"why": "x"}}),
        ]
        for ctype, field, body in cases:
            with self.subTest(ctype=ctype, body=body):
                self.hostile(400, "validation-failed", "POST", "/commands/" + ctype,
                             body=body, field=field)

    def test_missing_fields(self):
        full = order_body()
        for k in ("order_id", "customer_id", "currency", "items"):
            with self.subTest(missing=k):
                b = dict(full)
                del b[k]
                self.place(b, field=k)
        for k in ("sku", "quantity", "unit_price_cents"):
            with self.subTest(missing="items[0]." + k):
                it = item()
                del it[k]
                self.place(order_body(items=[it]), field="items[0]." + k)
        with self.subTest(missing="everything"):
            b = self.place({})
            self.assertGreaterEqual(len(b.get("errors", [])), 4,
                                    "every missing field should be listed: %r" % (b,))
        oid = self.placed_order()
        for ctype, body, field in (
                ("RecordPayment", {"order_id": oid, "payment_id": "p"}, "amount_cents"),
                ("RecordPayment", {"order_id": oid, "amount_cents": 5}, "payment_id"),
                ("ShipOrder", {"order_id": oid, "carrier": "x"}, "tracking_number"),
                ("CancelOrder", {"order_id": oid}, "reason"),
                ("CancelOrder", {"reason": "r"}, "order_id")):
            with self.subTest(ctype=ctype, field=field):
                self.hostile(400, "validation-failed", "POST", "/commands/" + ctype,
                             body=body, field=field)

    def test_unknown_fields(self):
        self.place(order_body(bogus=1), field="bogus")
        self.place(order_body(items=[item(color="red")]), field="items[0].color")
        oid = self.placed_order()
        self.hostile(400, "validation-failed", "POST", "/commands/CancelOrder",
                     body={"order_id": oid, "reason": "r", "refund_cents": 5},
                     field="refund_cents")

    def test_all_errors_listed(self):
        body = order_body(items=[item(quantity=0), item(), item(unit_price_cents=-1)],
                          currency="usd")
        b = self.place(body)
        self.assertFieldError(b, "items[0].quantity")
        self.assertFieldError(b, "items[2].unit_price_cents")
        self.assertFieldError(b, "currency")
        fields = [e["field"] for e in b["errors"]]
        self.assertNotIn("items[1].quantity", fields)

    def test_out_of_range_numbers(self):
        cases = [
            ("items[0].quantity", item(quantity=0)),
            ("items[0].quantity", item(quantity=-1)),
            ("items[0].quantity", item(quantity=10001)),
            ("items[0].unit_price_cents", item(unit_price_cents=-1)),
            ("items[0].unit_price_cents", item(unit_price_cents=10 ** 9 + 1)),
        ]
        for field, it in cases:
            with self.subTest(item=it):
                self.place(order_body(items=[it]), field=field)
        # bounds themselves are fine
        body = order_body(items=[item(quantity=10000, unit_price_cents=10 ** 9),
                                 item(quantity=1, unit_price_cents=0)])
        st, _, b = self.c.command("PlaceOrder", body)
        self.assertEqual(st, 202, "%s %r" % (st, b))
        oid = self.placed_order()
        for amount in (0, -5):
            with self.subTest(amount=amount):
                self.hostile(400, "validation-failed", "POST", "/commands/RecordPayment",
                             body={"order_id": oid, "payment_id": "p", "amount_cents": amount},
                             field="amount_cents")

    def test_huge_integer_literals(self):
        base = json.dumps(order_body(items=[item(quantity=777)]))
        for lit in ("1" + "0" * 30, "-" + "9" * 40, "18446744073709551617",
                    "9223372036854775808", "1e400"):
            with self.subTest(lit=lit):
                self.place_raw(base.replace("777", lit).encode())

    def test_item_count(self):
        self.place(order_body(items=[]), field="items")
        self.place(order_body(items=[item(sku="s%d" % i) for i in range(101)]), field="items")
        body = order_body(items=[item(sku="s%d" % i) for i in range(100)])
        st, _, b = self.c.command("PlaceOrder", body)
        self.assertEqual(st, 202, "100 items must be accepted: %s %r" % (st, b))

    def test_bad_ids(self):
        for bad in ("", "a b", "a/b", "a.b", "ü", "a\tb", "x" * 65, "../x", "a%20b"):
            with self.subTest(order_id=bad):
                self.place(order_body(order_id=bad), field="order_id")
        with self.subTest(customer_id="65 chars"):
            self.place(order_body(customer_id="c" * 65), field="customer_id")
        with self.subTest(sku=""):
            self.place(order_body(items=[item(sku="")]), field="items[0].sku")
        oid = self.placed_order()
        with self.subTest(payment_id="bad"):
            self.hostile(400, "validation-failed", "POST", "/commands/RecordPayment",
                         body={"order_id": oid, "payment_id": "p 1", "amount_cents": 1},
                         field="payment_id")

    def test_bad_currency(self):
        for cur in ("usd", "US", "USDX", "", "U1D", "ÜSD"):
            with self.subTest(currency=cur):
                self.place(order_body(currency=cur), field="currency")

    def test_invalid_utf8(self):
        base = json.dumps(order_body(customer_id="PLACEHOLDER")).encode()
        for bad in (b"\xff", b"\xc3", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80"):
            with self.subTest(bytes=bad):
                self.place_raw(base.replace(b"PLACEHOLDER", b"c" + bad + b"c"))
        oid = self.placed_order()
        raw = json.dumps({"order_id": oid, "reason": "PLACEHOLDER"}).encode()
        raw = raw.replace(b"PLACEHOLDER", b"bad \xfe\xfe bytes")
        self.hostile(400, "malformed-json", "POST", "/commands/CancelOrder", raw=raw)

    def test_nul_and_control_characters(self):
        oid = self.placed_order()
        # jansson refuses \u0000 in a string (C strings end at a NUL): the
        # body is not JSON the server can take
        for reason in ("a\u0000b", "\u0000"):
            with self.subTest(reason=reason):
                self.hostile(400, "malformed-json", "POST", "/commands/CancelOrder",
                             body={"order_id": oid, "reason": reason})
        # other control characters are JSON, refused by the command's rules
        for reason in ("a\u0001b", "esc\u001b[31m"):
            with self.subTest(reason=reason):
                self.hostile(400, "validation-failed", "POST", "/commands/CancelOrder",
                             body={"order_id": oid, "reason": reason}, field="reason")
        # a lone surrogate escape is not a character
        raw = b'{"order_id": "%s", "reason": "x\\ud800y"}' % oid.encode()
        self.hostile(400, "malformed-json", "POST", "/commands/CancelOrder", raw=raw)
        self.place(order_body(customer_id="c\u0000"), ptype="malformed-json")

    def test_deep_nesting(self):
        self.place_raw(b"[" * 100000)
        self.place_raw(b'{"a":' * 100000)
        self.place_raw(b'{"order_id": "x", "customer_id": ' + b"[" * 50000 + b"]" * 50000 + b"}")

    def test_duplicate_keys_refused(self):
        # A JSON object with a key twice is ambiguous (which value is the
        # order id?): 400 malformed-json naming the key, nothing written,
        # whichever value would have "won".
        d1, d2 = uid("d"), uid("d")
        raw = (b'{"order_id": "%s", "order_id": "%s", "customer_id": "c", '
               b'"currency": "EUR", "items": [{"sku": "s", "quantity": 1, '
               b'"unit_price_cents": 1}]}' % (d1.encode(), d2.encode()))
        b = self.place_raw(raw)
        self.assertIn("duplicate", b["detail"])
        self.assertIn("order_id", b["detail"])
        # nested, and in another command's body
        raw = (b'{"order_id": "o", "customer_id": "c", "currency": "EUR", '
               b'"items": [{"sku": "s", "sku": "t", "quantity": 1, '
               b'"unit_price_cents": 1}]}')
        self.assertIn("duplicate", self.place_raw(raw)["detail"])
        oid = self.placed_order()
        raw = b'{"order_id": "%s", "reason": "a", "reason": "b"}' % oid.encode()
        b = self.hostile(400, "malformed-json", "POST", "/commands/CancelOrder", raw=raw)
        self.assertIn("duplicate", b["detail"])
        for oid_ in (d1, d2):
            st, _, _ = self.c.get("/streams/order-" + oid_)
            self.assertEqual(st, 404, "a body with duplicate keys placed order %s" % oid_)

class BodyLimitTest(HostileBase):

    def big_body(self, size):
        """A JSON PlaceOrder body of exactly `size` bytes (invalid only by
        its too-long customer_id, so a 400 if it is read)."""
        b = order_body(customer_id="")
        text = json.dumps(b)
        pad = size - len(text)
        self.assertGreater(pad, 0)
        out = text.replace('"customer_id": ""', '"customer_id": "%s"' % ("c" * pad)).encode()
        self.assertEqual(len(out), size)
        return out

    def raw_request(self, headers, chunks):
        before = self.c.head()
        head = b"POST /commands/PlaceOrder HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        for k, v in headers:
            head += ("%s: %s\r\n" % (k, v)).encode()
        head += b"\r\n"
        st, h, body = raw_exchange(self.server.port, [head] + list(chunks))
        self.assertIsNotNone(st, "the server closed the connection without an answer")
        parsed = json.loads(body.decode()) if "json" in h.get("content-type", "") else body
        return before, st, h, parsed

    def test_body_over_limit_content_length(self):
        data = self.big_body(MIB + 1)
        chunks = [data[i:i + 65536] for i in range(0, len(data), 65536)]
        before, st, h, b = self.raw_request(
            [("Content-Type", "application/json"), ("Content-Length", str(len(data))),
             ("Connection", "close")], chunks)
        self.assertProblem(st, h, b, 413)
        self.assertType(b, "body-too-large")
        self.assertEqual(self.c.head(), before)
        self.assertHealthy()

    def test_content_length_over_limit_refused_before_body(self):
        # the headers alone say it is too large: answered without the body
        before = self.c.head()
        st, h, body = raw_exchange(self.server.port, [
            b"POST /commands/PlaceOrder HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % (64 * MIB)],
            timeout=30)
        self.assertIsNotNone(st, "no answer to a 64 MiB Content-Length")
        b = json.loads(body.decode())
        self.assertProblem(st, h, b, 413)
        self.assertType(b, "body-too-large")
        self.assertEqual(self.c.head(), before)
        self.assertHealthy()

    def test_body_over_limit_chunked(self):
        data = self.big_body(MIB + 300000)
        chunks = []
        for i in range(0, len(data), 50000):
            part = data[i:i + 50000]
            chunks.append(b"%x\r\n%s\r\n" % (len(part), part))
        chunks.append(b"0\r\n\r\n")
        before, st, h, b = self.raw_request(
            [("Content-Type", "application/json"), ("Transfer-Encoding", "chunked"),
             ("Connection", "close")], chunks)
        self.assertProblem(st, h, b, 413)
        self.assertType(b, "body-too-large")
        self.assertEqual(self.c.head(), before)
        self.assertHealthy()

    def test_body_at_limit_is_read(self):
        data = self.big_body(MIB)
        before, st, h, b = self.raw_request(
            [("Content-Type", "application/json"), ("Content-Length", str(len(data))),
             ("Connection", "close")], [data[i:i + 65536] for i in range(0, len(data), 65536)])
        # exactly the limit is not "larger than the limit": it is parsed and
        # refused for its 1 MB customer_id
        self.assertProblem(st, h, b, 400)
        self.assertType(b, "validation-failed")
        self.assertFieldError(b, "customer_id")
        self.assertEqual(self.c.head(), before)

    def test_small_chunked_body_accepted(self):
        body = order_body()
        data = json.dumps(body).encode()
        chunks = [b"%x\r\n%s\r\n" % (len(data[:10]), data[:10]),
                  b"%x\r\n%s\r\n" % (len(data[10:]), data[10:]), b"0\r\n\r\n"]
        before, st, h, b = self.raw_request(
            [("Content-Type", "application/json"), ("Transfer-Encoding", "chunked"),
             ("Connection", "close")], chunks)
        self.assertEqual(st, 202, "chunked PlaceOrder -> %s %r" % (st, b))
        self.assertEqual(self.c.head(), before + 1)


class BodyLimitOptionTest(ServerTestCase):
    """--body-limit BYTES (its own server)."""
    server_args = ("--body-limit", "2048")

    def body_of(self, size):
        text = json.dumps(order_body(customer_id=""))
        out = text.replace('"customer_id": ""',
                           '"customer_id": "%s"' % ("c" * (size - len(text)))).encode()
        self.assertEqual(len(out), size)
        return out

    def test_body_limit_option(self):
        before = self.c.head()
        st, h, b = self.c.req("POST", "/commands/PlaceOrder", raw=self.body_of(2048),
                              headers={"Content-Type": "application/json"})
        self.assertProblem(st, h, b, 400)  # read, and refused for its customer_id
        self.assertEqual(b["type"], URN + "validation-failed")
        st, h, body = raw_exchange(self.server.port, [
            b"POST /commands/PlaceOrder HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            b"Content-Type: application/json\r\nContent-Length: 2049\r\n\r\n",
            self.body_of(2049)])
        self.assertIsNotNone(st, "no answer to a body over --body-limit")
        b = json.loads(body.decode())
        self.assertProblem(st, h, b, 413)
        self.assertEqual(b["type"], URN + "body-too-large")
        self.assertEqual(self.c.head(), before)
        st, _, b = self.c.command("PlaceOrder", order_body())
        self.assertEqual(st, 202, "%s %r" % (st, b))


class ProtocolTest(HostileBase):

    def test_content_type_text_plain(self):
        raw = json.dumps(order_body()).encode()
        for ctype in ("text/plain", "application/x-www-form-urlencoded",
                      "application/jsonx", "application/json; charset=latin-1"):
            with self.subTest(content_type=ctype):
                self.place_raw(raw, expect=415, ptype="unsupported-media-type",
                               content_type=ctype)

    def test_missing_content_type(self):
        self.place_raw(json.dumps(order_body()).encode(), expect=415,
                       ptype="unsupported-media-type", content_type=None)

    def test_wrong_method(self):
        for method, path in (("DELETE", "/commands/PlaceOrder"), ("GET", "/commands/PlaceOrder"),
                             ("PUT", "/commands/PlaceOrder"), ("DELETE", "/streams/$all"),
                             ("POST", "/healthz")):
            with self.subTest(method=method, path=path):
                before = self.c.head()
                st, h, b = self.c.req(method, path)
                self.assertProblem(st, h, b, 405)
                self.assertType(b, "method-not-allowed")
                self.assertIn("allow", h, "405 without an Allow header")
                self.assertTrue(h["allow"].strip(), "empty Allow header")
                if path.startswith("/commands/"):
                    self.assertIn("POST", h["allow"].upper())
                self.assertEqual(self.c.head(), before)
        self.assertHealthy()

    def test_unknown_path(self):
        for path in ("/nope", "/commands", "/commands/", "/streams", "/streams/",
                     "/queries/no_such_query"):
            with self.subTest(path=path):
                self.hostile(404, "not-found", "GET", path)
        # a path with an encoded NUL is not looked up at all
        self.hostile(400, "bad-path", "GET", "/%00")
        self.hostile(400, "bad-path", "GET", "/streams/$all%00")
        # /commands/{type} takes POST only, whatever follows the type
        b = self.hostile(405, "method-not-allowed", "GET", "/commands/PlaceOrder/extra")
        self.hostile(404, "not-found", "POST", "/nope", body=order_body())
        self.hostile(404, "not-found", "POST", "/commands/FlyToTheMoon", body=order_body())

    def test_unknown_query_parameter(self):
        b = self.hostile(400, "bad-parameter", "POST", "/commands/PlaceOrder?foo=1",
                         body=order_body(), field="foo")
        self.hostile(400, "bad-parameter", "GET", "/streams/$all?bogus=1", field="bogus")
        # and a projection that does not exist for ?wait_for=
        self.hostile(404, "not-found", "POST", "/commands/PlaceOrder?wait_for=nope",
                     body=order_body())

    def test_bad_query_values(self):
        for q in ("limit=abc", "limit=-1", "limit=1001", "limit=", "from_position=abc",
                  "from_position=99999999999999999999999", "from_position=1.5",
                  "limit=10&limit=20x"):
            with self.subTest(q=q):
                self.hostile(400, "bad-parameter", "GET", "/streams/$all?" + q)

    def test_bad_idempotency_key(self):
        for key in ("", "x" * 256, "has space", "tab\there", "ctl\x01x"):
            with self.subTest(key=key):
                b = self.hostile(400, "bad-header", "POST", "/commands/PlaceOrder",
                                 body=order_body(), headers={"Idempotency-Key": key})
                self.assertIn("Idempotency-Key", b["detail"])

    def test_bad_idempotency_key_raw_bytes(self):
        body = json.dumps(order_body()).encode()
        req = (b"POST /commands/PlaceOrder HTTP/1.1\r\nHost: x\r\n"
               b"Content-Type: application/json\r\nIdempotency-Key: k\xc3\xa9y\r\n"
               b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))
        before = self.c.head()
        st, h, b = raw_exchange(self.server.port, [req])
        self.assertEqual(st, 400, "non-ASCII Idempotency-Key -> %s %r" % (st, b))
        b = json.loads(b.decode())
        self.assertProblem(st, h, b, 400)
        self.assertType(b, "bad-header")
        self.assertEqual(self.c.head(), before)

    def test_bad_if_match(self):
        oid = self.placed_order()
        body = {"order_id": oid, "reason": "x"}
        for im in ('"abc"', "abc", '"-1"', '"1.5"', '"1', '"99999999999999999999999"'):
            with self.subTest(if_match=im):
                b = self.hostile(400, "bad-header", "POST", "/commands/CancelOrder",
                                 body=body, headers={"If-Match": im})
                self.assertIn("If-Match", b["detail"])

    def test_very_long_header(self):
        # Request heads beyond libmicrohttpd's connection memory (64 KiB,
        # set in src/http/server.c) are answered by libmicrohttpd itself:
        # a header line 431 Request Header Fields Too Large, a request line
        # (URL) 414 URI Too Long, each with its own HTML page and
        # Connection: close; the request never reaches cqrsd's handlers,
        # so neither is problem+json (docs/api.md, "Errors").
        before = self.c.head()
        body = json.dumps(order_body()).encode()
        head = (b"POST /commands/PlaceOrder HTTP/1.1\r\nHost: x\r\n"
                b"Content-Type: application/json\r\nX-Big: " + b"a" * (100 * 1024) +
                b"\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body))
        chunks = [head[i:i + 16384] for i in range(0, len(head), 16384)] + [body]
        st, h, b = raw_exchange(self.server.port, chunks)
        self.assertIsNotNone(st, "no answer to a 100 KB header")
        self.assertEqual(st, 431, "100 KB header -> %s %r" % (st, b))
        self.assertEqual(h.get("connection", "").lower(), "close", h)
        self.assertEqual(self.c.head(), before)
        self.assertHealthy()
        # many headers adding up to 100 KB: the same
        many = b"".join(b"X-H%d: %s\r\n" % (i, b"b" * 1000) for i in range(100))
        head = (b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + many +
                b"Connection: close\r\n\r\n")
        st, h, b = raw_exchange(self.server.port,
                                [head[i:i + 16384] for i in range(0, len(head), 16384)])
        self.assertEqual(st, 431, "100 headers of 1 KB -> %s %r" % (st, b))
        self.assertHealthy()
        # a very long URL
        st, h, b = raw_exchange(self.server.port,
                                [b"GET /streams/" + b"a" * (100 * 1024) +
                                 b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"])
        self.assertIsNotNone(st, "no answer to a 100 KB URL")
        self.assertEqual(st, 414, "100 KB URL -> %s %r" % (st, b))
        self.assertHealthy()

    @unittest.expectedFailure
    def test_head_just_under_the_limit(self):
        # KNOWN DEFECT (libmicrohttpd, configured in src/http/server.c): a
        # request head that fills the connection's 64 KiB memory pool all
        # but the last ~300 bytes is read, but leaves libmicrohttpd no room
        # to build the answer's head; it logs "failed to create response
        # header" and closes the connection with no answer at all (heads
        # from about 65160 to 65280 bytes here; above, 431; below, the
        # route's answer). Every request must get an answer; this fails
        # until the pool leaves room for one (e.g. a larger
        # MHD_OPTION_CONNECTION_MEMORY_LIMIT with the 431 limit enforced
        # by the server itself).
        silent = []
        for size in range(64 * 1024 - 600, 64 * 1024 + 64, 16):
            head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            pad = size - len(head) - 2 - len(b"X-Pad: \r\n")
            head += b"X-Pad: " + b"a" * pad + b"\r\n\r\n"
            self.assertEqual(len(head), size)
            st, _, _ = raw_exchange(self.server.port,
                                    [head[i:i + 16384] for i in range(0, len(head), 16384)],
                                    timeout=10)
            if st is None:
                silent.append(size)
        self.assertHealthy()
        self.assertEqual(silent, [], "request heads of these sizes got no answer")

    def test_garbage_request_line(self):
        for junk in (b"HELLO\r\n\r\n", b"\x00\x01\x02\r\n\r\n",
                     b"GET / HTTP/9.9\r\n\r\n", b"POST /commands/PlaceOrder HTTP/1.1\r\n"
                     b"Content-Length: -5\r\n\r\n"):
            with self.subTest(junk=junk):
                try:
                    raw_exchange(self.server.port, [junk], timeout=3)
                except socket.timeout:
                    pass  # no answer is fine; staying healthy is what counts
                self.assertHealthy()


class ConnectionAbuseTest(HostileBase):

    def test_slow_clients_do_not_stall_others(self):
        socks = []
        try:
            s = socket.create_connection(("127.0.0.1", self.server.port))
            socks.append(s)  # connects and says nothing
            s = socket.create_connection(("127.0.0.1", self.server.port))
            s.sendall(b"POST /commands/PlaceOr")  # half a request line
            socks.append(s)
            s = socket.create_connection(("127.0.0.1", self.server.port))
            s.sendall(b"POST /commands/PlaceOrder HTTP/1.1\r\nHost: x\r\n"
                      b"Content-Type: application/json\r\n")  # half the headers
            socks.append(s)
            for _ in range(3):
                s = socket.create_connection(("127.0.0.1", self.server.port))
                s.sendall(b"POST /commands/PlaceOrder HTTP/1.1\r\nHost: x\r\n"
                          b"Content-Type: application/json\r\nContent-Length: 500\r\n\r\n"
                          b'{"order_id": "slo')  # half a body
                socks.append(s)
            time.sleep(0.3)
            # other clients are still served: reads and commands
            self.assertHealthy()
            before = self.c.head()
            body = order_body()
            st, _, b = self.c.command("PlaceOrder", body)
            self.assertEqual(st, 202, "%s %r" % (st, b))
            st, _, b = self.c.get("/streams/order-" + body["order_id"])
            self.assertEqual(st, 200)
            self.assertEqual(self.c.head(), before + 1)
            # and from a second, fresh connection
            other = cqtest.Client(self.server)
            try:
                st, _, _ = other.healthz()
                self.assertEqual(st, 200)
            finally:
                other.close()
        finally:
            for s in socks:
                s.close()
        self.assertHealthy()

    def test_abrupt_disconnects(self):
        before = self.c.head()
        body = json.dumps(order_body()).encode()
        lengths = [0, 5, 30, len(body) // 2, len(body) - 1]
        for i in range(60):
            s = socket.create_connection(("127.0.0.1", self.server.port))
            try:
                n = lengths[i % len(lengths)]
                if i % 7 == 6:
                    s.sendall(b"POST /commands/PlaceOrder HTTP/1.1\r\nHost: x\r\nContent-")
                else:
                    s.sendall(b"POST /commands/PlaceOrder HTTP/1.1\r\nHost: x\r\n"
                              b"Content-Type: application/json\r\n"
                              b"Content-Length: %d\r\n\r\n%s" % (len(body), body[:n]))
                if i % 2:
                    # RST instead of FIN
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            finally:
                s.close()
        # chunked bodies cut off mid-chunk
        for i in range(10):
            s = socket.create_connection(("127.0.0.1", self.server.port))
            s.sendall(b"POST /commands/PlaceOrder HTTP/1.1\r\nHost: x\r\n"
                      b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
                      b"%x\r\n%s" % (len(body), body[:len(body) // 2]))
            s.close()
        time.sleep(0.2)
        self.assertHealthy()
        self.assertEqual(self.c.head(), before, "a cut-off request appended events")

    def test_parallel_hostile_clients(self):
        errors = []

        def hammer(n):
            cl = cqtest.Client(self.server)
            try:
                for j in range(15):
                    st, h, b = cl.req("POST", "/commands/PlaceOrder",
                                      raw=b'{"order_id": [' * (j + 1),
                                      headers={"Content-Type": "application/json"})
                    if st != 400:
                        errors.append((n, j, st, b))
            except Exception as e:  # noqa: BLE001
                errors.append((n, repr(e)))
            finally:
                cl.close()

        before = self.c.head()
        threads = [threading.Thread(target=hammer, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        self.assertEqual(errors, [])
        self.assertEqual(self.c.head(), before)
        self.assertHealthy()


class ParameterLeakTest(unittest.TestCase):
    """Refusing a query parameter must not leak what the route had
    allocated before it checked its parameters (its own server, stopped to
    let LeakSanitizer look)."""

    def check_no_leak(self, paths):
        with cqtest.Server(cqtest.BINARY) as srv:
            c = cqtest.Client(srv)
            try:
                for path in paths:
                    st, h, b = c.get(path)
                    problem_errors(self, st, h, b, 400)
                    self.assertEqual(b["type"], URN + "bad-parameter", b)
            finally:
                c.close()
            srv.stop()  # raises if LeakSanitizer reported a leak at exit

    def test_refused_parameters_leak_nothing(self):
        self.check_no_leak(["/healthz?x=1", "/projections?x=1",
                            "/projections/order_summaries?x=1", "/metrics?x=1",
                            "/streams/$all?x=1", "/streams/s?x=1",
                            "/queries/sales_dashboard?x=1"])

    # (GET /readyz made its `reasons` array before checking its parameters
    # and leaked it on every refused one; found by tests/fuzz/fuzz_request)
    def test_readyz_refused_parameter_leaks_nothing(self):
        self.check_no_leak(["/readyz?x=1"])


class ZzzFinalTest(HostileBase):
    """Runs last (unittest sorts classes by name) on the same server: after
    everything above, a normal command still works."""

    def test_everything_then_normal_command(self):
        port = self.server.port
        for raw in (b"[" * 100000, b"\xff\xfe", b"{}", b'{"order_id": 1e999}'):
            self.c.req("POST", "/commands/PlaceOrder", raw=raw,
                       headers={"Content-Type": "application/json"})
        for _ in range(20):
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(b"POST /commands/PlaceOrder HTTP/1.1\r\nContent-Length: 99\r\n\r\n{")
            s.close()
        raw_exchange(port, [b"GET /" + b"x" * 200000 + b" HTTP/1.1\r\n\r\n"])
        before = self.c.head()
        body = order_body()
        st, _, b = self.c.command("PlaceOrder", body)
        self.assertEqual(st, 202, "%s %r" % (st, b))
        self.assertEqual(b["position"], before + 1)
        st, _, b = self.c.command("RecordPayment", {"order_id": body["order_id"],
                                                    "payment_id": "p", "amount_cents": 1000})
        self.assertEqual(st, 202, "%s %r" % (st, b))
        self.assertEqual([e["type"] for e in b["events"]], ["PaymentReceived", "OrderPaid"])
        self.assertHealthy()


if __name__ == "__main__":
    cqtest.main()
