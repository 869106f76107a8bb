#!/usr/bin/env python3
"""check_openapi -- check recorded answers against docs/openapi.yaml.

  python3 tests/blackbox/check_openapi.py docs/openapi.yaml RECORD_DIR

RECORD_DIR holds the *.jsonl files the black-box suites wrote with
CQ_TEST_RECORD=RECORD_DIR (cqtest.py: one JSON line per answer: method,
path, status, content_type, body). Each answer must be one the file
describes: its path matches a path of the file (else it must be a 4xx
problem), its method an operation there (HEAD as GET; else 405), its
status one of the operation's responses, its content type (without
parameters) one the response lists (or no body when it lists none), and a
JSON body must be valid against the response's schema (JSON Schema 2020-12,
$refs resolved within the file). A server-sent event (method "SSE") must
have a name the stream's `x-events` lists and data valid against it. Exit 0 when all are, 1 with a summary of
what is not (or when nothing was recorded: the suites did not run).
"""

import collections
import glob
import json
import os
import sys
import urllib.parse

import yaml
from jsonschema import Draft202012Validator


def load(path):
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


def templates(doc):
    """[(segments, template)], literal paths first, then by fewer params."""
    out = []
    for t in doc["paths"]:
        segs = t.strip("/").split("/")
        nparams = sum(1 for s in segs if s.startswith("{"))
        out.append((nparams, segs, t))
    out.sort(key=lambda x: (x[0], -len(x[1])))
    return [(segs, t) for _, segs, t in out]


def match(tpls, path):
    """The template of path: segment by segment; a last {param} also takes
    what follows (stream ids and query names may hold '/')."""
    segs = path.strip("/").split("/")
    for exact in (True, False):
        t = _match(tpls, segs, exact)
        if t is not None:
            return t
    return None


def _match(tpls, segs, exact):
    for tsegs, t in tpls:
        if exact and len(segs) != len(tsegs):
            continue
        if not exact and (len(segs) <= len(tsegs) or not tsegs[-1].startswith("{")):
            continue
        ok = True
        for i, ts in enumerate(tsegs):
            if ts.startswith("{"):
                if segs[i] == "":
                    ok = False
            elif ts != segs[i]:
                ok = False
            if not ok:
                break
        if ok:
            return t
    return None


class Checker:
    def __init__(self, doc):
        self.doc = doc
        self.tpls = templates(doc)
        self.validators = {}

    def validator(self, schema):
        key = json.dumps(schema, sort_keys=True)
        v = self.validators.get(key)
        if v is None:
            root = dict(schema)
            root["components"] = self.doc["components"]
            v = Draft202012Validator(root)
            self.validators[key] = v
        return v

    def deref(self, obj):
        while isinstance(obj, dict) and "$ref" in obj:
            node = self.doc
            for part in obj["$ref"].lstrip("#/").split("/"):
                node = node[part]
            obj = node
        return obj

    def problem_ok(self, r):
        ctype = (r["content_type"] or "").split(";")[0].strip()
        if ctype != "application/problem+json":
            return "content type %r, not a problem" % r["content_type"]
        return self.body_errors(self.doc["components"]["schemas"]["Problem"], r["body"])

    def body_errors(self, schema, body):
        errs = sorted(self.validator(schema).iter_errors(body), key=lambda e: e.path)
        if errs:
            e = errs[0]
            return "body: %s at %s" % (e.message[:200], "/".join(map(str, e.path)))
        return None

    def check(self, r):
        """None if r is described, else (where, why)."""
        path = urllib.parse.urlsplit(r["path"]).path
        method = r["method"].upper()
        t = match(self.tpls, path)
        if method == "SSE":
            return self.check_event(t, r)
        if t is None:
            if not 400 <= r["status"] < 500:
                return ("(no path)", "status %d for a path the file does not have"
                        % r["status"])
            why = self.problem_ok(r) if method != "HEAD" else None
            return ("(no path) %d" % r["status"], why) if why else None
        item = self.doc["paths"][t]
        op = item.get("get" if method == "HEAD" else method.lower())
        where = "%s %s %d" % (method, t, r["status"])
        if op is None:
            if r["status"] not in (405, 400, 431, 413, 415):
                return (where, "no such operation, and not 405")
            why = self.problem_ok(r) if method != "HEAD" else None
            return (where, why) if why else None
        resp = op["responses"].get(str(r["status"]))
        if resp is None:
            return (where, "status not in the operation's responses")
        resp = self.deref(resp)
        content = resp.get("content")
        ctype = (r["content_type"] or "").split(";")[0].strip()
        if not content:
            if r["body"] not in (None, "", b""):
                return (where, "a body where the file lists none")
            return None
        if ctype not in content:
            return (where, "content type %r not in %s" % (ctype, sorted(content)))
        if method == "HEAD":
            return None
        schema = content[ctype].get("schema")
        if schema is None:
            return None
        why = self.body_errors(schema, r["body"])
        return (where, why) if why else None


def _check_event(self, t, r):
    """A server-sent event: its name one the stream's x-events lists, its
    data valid against that schema."""
    where = "SSE %s event %r" % (t, r["body"].get("event"))
    try:
        media = self.doc["paths"][t]["get"]["responses"]["200"]["content"][
            "text/event-stream"]
        events = media["x-events"]
    except (KeyError, TypeError):
        return (where, "the path has no event stream with x-events")
    schema = events.get(r["body"].get("event"))
    if not isinstance(schema, dict) or r["body"].get("event") == "description":
        return (where, "an event name x-events does not list")
    why = self.body_errors(schema, r["body"].get("data"))
    return (where, why) if why else None


Checker.check_event = _check_event


def main():
    if len(sys.argv) != 3:
        sys.stderr.write(__doc__)
        return 2
    doc = load(sys.argv[1])
    files = sorted(glob.glob(os.path.join(sys.argv[2], "*.jsonl")))
    checker = Checker(doc)
    n = 0
    bad = collections.OrderedDict()
    covered = collections.Counter()
    for f in files:
        with open(f, encoding="utf-8") as fh:
            for line in fh:
                if not line.strip():
                    continue
                r = json.loads(line)
                n += 1
                res = checker.check(r)
                t = match(checker.tpls, urllib.parse.urlsplit(r["path"]).path)
                covered[t] += 1
                if res is not None:
                    key = res
                    if key not in bad:
                        bad[key] = [0, r]
                    bad[key][0] += 1
    if n == 0:
        print("no recorded answers in %s: did the black-box suites run with "
              "CQ_TEST_RECORD?" % sys.argv[2])
        return 1
    print("%d answers from %d files checked against %s" % (n, len(files), sys.argv[1]))
    for t in sorted(doc["paths"]):
        print("  %6d  %s" % (covered.get(t, 0), t))
    if bad:
        print("\n%d kinds of answer the file does not describe:" % len(bad))
        for (where, why), (count, r) in list(bad.items())[:60]:
            print("- %s: %s (%d times; e.g. %s %s from %s, %s)" % (
                where, why, count, r["method"], r["path"][:120], r.get("suite"),
                json.dumps(r["body"])[:300]))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
