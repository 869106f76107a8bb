#!/usr/bin/env python3
"""docs/openapi.yaml: served as it is, a well-formed OpenAPI 3.1 document,
and its command schemas the ones the domain checks bodies with. (That
every black-box answer matches it is the ctest openapi_responses:
check_openapi.py.)

Run: python3 tests/blackbox/test_openapi.py build/cqrsd
"""

import json
import os
import subprocess

import yaml
from jsonschema import Draft202012Validator

import cqtest
from cqtest import ServerTestCase
from check_openapi import Checker

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DOC = os.path.join(ROOT, "docs", "openapi.yaml")
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


def load():
    with open(DOC, encoding="utf-8") as f:
        return yaml.safe_load(f)


def domain_schemas():
    """What tests/openapi_commands prints (built next to the binary)."""
    tool = os.path.join(os.path.dirname(cqtest.BINARY), "tests", "openapi_commands")
    out = subprocess.run([tool], check=True, capture_output=True, timeout=60)
    return json.loads(out.stdout)


class OpenAPITest(ServerTestCase):

    def test_served(self):
        st, h, b = self.c.get("/openapi.yaml")
        self.assertEqual(st, 200)
        self.assertEqual(h["content-type"], "application/yaml")
        with open(DOC, encoding="utf-8") as f:
            self.assertEqual(b, f.read(), "GET /openapi.yaml is not docs/openapi.yaml")
        st, h, b = self.c.get("/openapi.yaml?x=1")
        self.assertEqual(st, 400, b)

    def test_command_schemas_are_the_domains(self):
        doc = load()
        mine = domain_schemas()
        self.assertTrue(mine, "the domain has no commands?")
        for ctype, schema in mine.items():
            with self.subTest(command=ctype):
                self.assertIn("/commands/" + ctype, doc["paths"],
                              "command %s has no path" % ctype)
                body = doc["paths"]["/commands/" + ctype]["post"]["requestBody"]
                self.assertEqual(body["content"]["application/json"]["schema"],
                                 {"$ref": "#/components/schemas/" + ctype})
                self.assertEqual(doc["components"]["schemas"].get(ctype), schema,
                                 "docs/openapi.yaml's %s differs from the domain's "
                                 "fields (tests/openapi_commands prints them)" % ctype)
        # no command in the file the domain does not have
        documented = {p[len("/commands/"):] for p in doc["paths"]
                      if p.startswith("/commands/") and "{" not in p}
        self.assertEqual(documented, set(mine))

    def test_schemas_accept_what_the_server_accepts(self):
        """The documented body of each command is one the server takes, and
        one the schema refuses the server refuses too."""
        doc = load()
        ck = Checker(doc)
        good = cqtest.order_body()
        v = ck.validator({"$ref": "#/components/schemas/PlaceOrder"})
        self.assertEqual(list(v.iter_errors(good)), [])
        st, _, b = self.c.command("PlaceOrder", good)
        self.assertEqual(st, 202, b)
        for bad in ({**good, "currency": "eur"}, {**good, "items": []},
                    {**good, "colour": "red"}, {**good, "order_id": "a b"}):
            self.assertNotEqual(list(v.iter_errors(bad)), [], bad)
            st, _, b = self.c.command("PlaceOrder", bad)
            self.assertEqual(st, 400, b)

    def test_document(self):
        doc = load()
        self.assertEqual(doc["openapi"][:4], "3.1.")
        for name, s in doc["components"]["schemas"].items():
            with self.subTest(schema=name):
                Draft202012Validator.check_schema(s)
        ck = Checker(doc)
        ops = set()
        for path, item in doc["paths"].items():
            for m in METHODS:
                op = item.get(m)
                if op is None:
                    continue
                self.assertNotIn(op["operationId"], ops, "operationId twice")
                ops.add(op["operationId"])
                self.assertTrue(op["responses"], "%s %s answers nothing" % (m, path))
                for status, resp in op["responses"].items():
                    resp = ck.deref(resp)
                    self.assertIn("description", resp, (path, status))
                    for ct, media in resp.get("content", {}).items():
                        if "schema" in media:
                            Draft202012Validator.check_schema(ck.deref(media["schema"]))
        # every $ref resolves
        def walk(o):
            if isinstance(o, dict):
                if "$ref" in o:
                    ck.deref(o)
                for x in o.values():
                    walk(x)
            elif isinstance(o, list):
                for x in o:
                    walk(x)
        walk(doc)
        # every route the server has is described
        for p in ("/healthz", "/readyz", "/metrics", "/projections", "/subscribe",
                  "/openapi.yaml", "/streams/$all", "/streams/{id}", "/queries/{name}",
                  "/projections/{name}", "/projections/{name}/{operation}",
                  "/commands/{type}"):
            self.assertIn(p, doc["paths"])

    def test_checker_fails_on_drift(self):
        """The response check is not toothless: a body, status or content
        type the file does not describe is reported."""
        ck = Checker(load())
        ok = {"method": "GET", "path": "/healthz", "status": 200,
              "content_type": "application/json",
              "body": {"status": "ok", "head_position": 3}}
        self.assertIsNone(ck.check(ok))
        for change in ({"body": {"status": "ok"}}, {"status": 201},
                       {"content_type": "text/html"},
                       {"path": "/nope", "status": 200},
                       {"method": "DELETE", "status": 200}):
            with self.subTest(change=change):
                self.assertIsNotNone(ck.check({**ok, **change}))
        ev = {"method": "SSE", "path": "/subscribe?projection=p", "status": 200,
              "content_type": "text/event-stream",
              "body": {"event": "progress",
                       "data": {"projection": "p", "position": 1, "head": 1,
                                "lag_events": 0, "lag_ms": 0.0, "failed": False}}}
        self.assertIsNone(ck.check(ev))
        for body in ({"event": "progress", "data": {"projection": "p"}},
                     {"event": "nonsense", "data": {}},
                     {"event": "visible", "data": {"command_id": "x", "position": 1,
                                                   "projections": []}}):
            with self.subTest(event=body):
                self.assertIsNotNone(ck.check({**ev, "body": body}))


if __name__ == "__main__":
    cqtest.main()
