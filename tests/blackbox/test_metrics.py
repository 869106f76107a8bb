"""Black-box tests of GET /metrics and of the alert rules in ops/prometheus.

The rules must pass `promtool check rules` and their unit tests
(`promtool test rules`). The server gets a known workload (accepted,
refused, conflicting, not-found and malformed commands, sent partly from
several clients at once; fresh and timed-out queries), then /metrics must
be Prometheus text 0.0.4 that `promtool check metrics` accepts without a
word of complaint, and its values must match the workload exactly:
commands per type and outcome, the event store head, projection positions
and lag, the wait timeouts.

promtool comes from the Debian package `prometheus`; scripts/deps.sh
installs it for `make test`. Without it these tests fail (they do not
skip): an unchecked exposition is how broken dashboards ship.

    python3 tests/blackbox/test_metrics.py /path/to/cqrsd
"""
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import unittest
import urllib.parse

sys.dont_write_bytecode = True

import cqtest  # noqa: E402
from problems import assert_type  # noqa: E402
from cqtest import Client, ServerTestCase, order_body, uid  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
RULES_DIR = os.path.join(ROOT, "ops", "prometheus")
PROMTOOL_TIMEOUT = 60

OUTCOMES = ("accepted", "refused", "conflict", "not_found", "invalid", "failed")
COMMAND_TYPES = ("PlaceOrder", "RecordPayment", "ShipOrder", "CancelOrder")


def promtool(test, *args, stdin=None):
    """Run promtool; fail the test (not skip) when it is not installed.
    Returns (exit code, stdout + stderr)."""
    exe = shutil.which("promtool")
    if exe is None:
        test.fail("promtool not found on PATH: install the Debian package "
                  "'prometheus' (apt-get install -y prometheus; `make test` "
                  "does this through scripts/deps.sh)")
    p = subprocess.run([exe] + list(args), input=stdin, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, timeout=PROMTOOL_TIMEOUT,
                       cwd=RULES_DIR)
    return p.returncode, p.stdout.decode("utf-8", "replace")


# ---- a small parser of the text format (enough to read values back) --------

SAMPLE_RE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)(\s+-?\d+)?$")
LABEL_RE = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"\s*(,|$)')


def parse_labels(text):
    labels = {}
    pos = 0
    while pos < len(text):
        m = LABEL_RE.match(text, pos)
        if not m:
            raise ValueError("bad label set {%s}" % text)
        value = re.sub(r"\\(.)", lambda e: {"n": "\n"}.get(e.group(1), e.group(1)),
                       m.group(2))
        labels[m.group(1)] = value
        pos = m.end()
    return labels


def parse_exposition(text):
    """Returns (types {family: type}, helps {family: help},
    samples [(name, labels dict, float)])."""
    types, helps, samples = {}, {}, []
    for line in text.split("\n"):
        if not line:
            continue
        if line.startswith("# TYPE "):
            _, _, name, typ = line.split(" ", 3)
            types[name] = typ
        elif line.startswith("# HELP "):
            parts = line.split(" ", 3)
            helps[parts[2]] = parts[3] if len(parts) > 3 else ""
        elif line.startswith("#"):
            continue
        else:
            m = SAMPLE_RE.match(line)
            if not m:
                raise ValueError("bad sample line %r" % line)
            samples.append((m.group(1), parse_labels(m.group(3) or ""),
                            float(m.group(4))))
    return types, helps, samples


class Exposition:
    def __init__(self, text):
        self.text = text
        self.types, self.helps, self.samples = parse_exposition(text)

    def series(self, name):
        """[(labels, value)] of every sample called name."""
        return [(l, v) for n, l, v in self.samples if n == name]

    def value(self, name, **labels):
        """The value of name{labels} (exact label set), or None."""
        for l, v in self.series(name):
            if l == labels:
                return v
        return None

    def by_label(self, name, label):
        return {l.get(label): v for l, v in self.series(name)}


# ---- the rules ---------------------------------------------------------------

class AlertRulesTest(unittest.TestCase):

    def test_check_rules(self):
        rc, out = promtool(self, "check", "rules", "alerts.yml")
        self.assertEqual(rc, 0, "promtool check rules ops/prometheus/alerts.yml:\n" + out)
        self.assertIn("SUCCESS", out, out)

    def test_rules_unit_tests(self):
        rc, out = promtool(self, "test", "rules", "alerts_test.yml")
        self.assertEqual(rc, 0, "promtool test rules ops/prometheus/alerts_test.yml:\n" + out)

    def test_rule_contract(self):
        """The rules use the names and severities the runbooks promise."""
        with open(os.path.join(RULES_DIR, "alerts.yml"), encoding="utf-8") as f:
            text = f.read()
        self.assertRegex(text, r"expr:\s*projection_lag_seconds\s*>\s*30\b")
        self.assertRegex(text, r"expr:\s*projection_lag_seconds\s*>\s*300\b")
        self.assertRegex(text, r"expr:\s*projection_failed\s*==\s*1\b")
        self.assertIn("severity: warning", text)
        self.assertIn("severity: page", text)


# ---- the endpoint ------------------------------------------------------------

def qpath(name, params):
    return "/queries/%s?%s" % (name, urllib.parse.urlencode(sorted(params.items())))


class MetricsTest(ServerTestCase):
    """One workload, then one careful look at /metrics (the counts are
    exact, so everything happens in one test on a fresh server)."""

    CLIENTS = 4
    ORDERS_PER_CLIENT = 10

    def scrape(self):
        st, h, body = self.c.get("/metrics")
        self.assertEqual(st, 200, "GET /metrics -> %s %r" % (st, body))
        ctype = h.get("content-type", "")
        params = [p.strip().lower() for p in ctype.split(";")]
        self.assertEqual(params[0], "text/plain", "Content-Type %r" % ctype)
        self.assertIn("version=0.0.4", params[1:], "Content-Type %r" % ctype)
        for p in params[1:]:
            self.assertIn(p, ("version=0.0.4", "charset=utf-8"),
                          "unexpected Content-Type parameter in %r" % ctype)
        self.assertIsInstance(body, str)
        self.assertTrue(body.endswith("\n"), "exposition does not end in a newline")
        return body

    def promtool_accepts(self, body):
        rc, out = promtool(self, "check", "metrics", stdin=body.encode("utf-8"))
        self.assertEqual((rc, out.strip()), (0, ""),
                         "promtool check metrics complained (exit %d):\n%s\n"
                         "--- exposition ---\n%s" % (rc, out, body))

    def command(self, ctype, body, want, client=None, raw=None):
        c = client or self.c
        if raw is not None:
            st, _, b = c.req("POST", "/commands/" + ctype, raw=raw,
                             headers={"Content-Type": "application/json"})
        else:
            st, _, b = c.command(ctype, body)
        self.assertEqual(st, want, "%s %r -> %s %r" % (ctype, body or raw, st, b))
        return b

    def query(self, name, params):
        st, h, b = self.c.get(qpath(name, params))
        self.assertEqual(st, 200, "%s %r -> %s %r" % (name, params, st, b))
        return b["data"], b["meta"]

    def test_metrics_after_a_workload(self):
        expect = {}  # (type, outcome) -> count
        events = 0

        def sent(ctype, outcome, n=1):
            expect[(ctype, outcome)] = expect.get((ctype, outcome), 0) + n

        head0 = self.c.head()

        # accepted, from several clients at once (the counters are shared by
        # the server's threads)
        errors = []

        def placer():
            c = Client(self.server)
            try:
                for _ in range(self.ORDERS_PER_CLIENT):
                    st, _, b = c.command("PlaceOrder", order_body())
                    if st != 202:
                        errors.append((st, b))
            except BaseException as e:  # noqa: BLE001
                errors.append(e)
            finally:
                c.close()

        threads = [threading.Thread(target=placer) for _ in range(self.CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(errors, [])
        n = self.CLIENTS * self.ORDERS_PER_CLIENT
        sent("PlaceOrder", "accepted", n)
        events += n

        paid, unpaid = uid("o"), uid("o")
        for oid in (paid, unpaid):
            self.command("PlaceOrder", order_body(oid), 202)
            sent("PlaceOrder", "accepted")
            events += 1
        pay = {"order_id": paid, "payment_id": uid("p"), "amount_cents": 1000}
        self.command("RecordPayment", pay, 202)  # PaymentReceived + OrderPaid
        sent("RecordPayment", "accepted")
        events += 2
        self.command("ShipOrder", {"order_id": paid, "carrier": "DHL",
                                   "tracking_number": "T-1"}, 202)
        sent("ShipOrder", "accepted")
        events += 1

        # refused by a business rule (422)
        self.command("ShipOrder", {"order_id": unpaid, "carrier": "DHL",
                                   "tracking_number": "T-2"}, 422)
        sent("ShipOrder", "refused")
        self.command("RecordPayment", {"order_id": unpaid, "payment_id": uid("p"),
                                       "amount_cents": 5000}, 422)
        sent("RecordPayment", "refused")
        self.command("CancelOrder", {"order_id": paid, "reason": "too late"}, 422)
        sent("CancelOrder", "refused")
        # conflict (409: the stream exists)
        self.command("PlaceOrder", order_body(paid), 409)
        sent("PlaceOrder", "conflict")
        # not found (404: no such order)
        self.command("RecordPayment", {"order_id": uid("missing"), "payment_id": uid("p"),
                                       "amount_cents": 1}, 404)
        sent("RecordPayment", "not_found")
        # invalid (400): malformed JSON, a missing field, a wrong type
        self.command("PlaceOrder", None, 400, raw=b'{"order_id": ')
        self.command("PlaceOrder", {"order_id": uid("o")}, 400)
        self.command("CancelOrder", {"order_id": unpaid, "reason": 7}, 400)
        sent("PlaceOrder", "invalid", 2)
        sent("CancelOrder", "invalid")
        # an unknown command type is a 404 too, but must not become a label
        # value (clients could grow the series without bound)
        st, _, _ = self.c.command("NoSuchCommand", {"x": 1})
        self.assertEqual(st, 404)

        head = self.c.head()
        self.assertEqual(head, head0 + events, "events appended by the workload")

        # queries: fresh at the head on every query, then one that times out
        fresh = {}
        for name, params in (("order_summary", {"order_id": paid}),
                             ("customer_orders", {"customer_id": "c-1"}),
                             ("sales_dashboard", {}),
                             ("payment_confirmation", {"order_id": paid})):
            _, meta = self.query(name, dict(params, min_position=head, wait_ms=20000))
            self.assertFalse(meta["stale"], "%s not caught up: %r" % (name, meta))
            fresh[meta["projection"]] = meta
        _, meta = self.query("order_summary", {"order_id": paid,
                                               "min_position": head + 1000000,
                                               "wait_ms": 50})
        self.assertTrue(meta["stale"], meta)

        body = self.scrape()
        self.promtool_accepts(body)
        x = Exposition(body)

        # ---- families and their types
        for name, typ in (("cqrsd_commands_total", "counter"),
                          ("cqrsd_command_duration_seconds", "histogram"),
                          ("cqrsd_query_wait_seconds", "histogram"),
                          ("cqrsd_query_wait_timeouts_total", "counter"),
                          ("event_store_head_position", "gauge"),
                          ("projection_position", "gauge"),
                          ("projection_lag_events", "gauge"),
                          ("projection_lag_seconds", "gauge"),
                          ("projection_failed", "gauge"),
                          ("cqrsd_wal_bytes", "gauge"),
                          ("cqrsd_store_writable", "gauge")):
            self.assertEqual(x.types.get(name), typ,
                             "# TYPE of %s (families: %r)" % (name, sorted(x.types)))
            self.assertTrue(x.helps.get(name), "%s has no # HELP text" % name)

        # ---- commands: exact per type and outcome; nothing else counted
        seen = {}
        for labels, v in x.series("cqrsd_commands_total"):
            self.assertEqual(set(labels), {"type", "outcome"},
                             "cqrsd_commands_total labels %r" % labels)
            self.assertIn(labels["outcome"], OUTCOMES, labels)
            self.assertIn(labels["type"], COMMAND_TYPES,
                          "series for an unknown command type: %r" % labels)
            seen[(labels["type"], labels["outcome"])] = v
        for key, want in sorted(expect.items()):
            self.assertEqual(seen.get(key), want,
                             'cqrsd_commands_total{type="%s",outcome="%s"}' % key)
        for key, v in seen.items():
            if key not in expect:
                self.assertEqual(v, 0, 'cqrsd_commands_total{type="%s",outcome="%s"} '
                                       "counts commands never sent" % key)

        # ---- histograms: well formed; every accepted command timed
        accepted = sum(v for (t, o), v in expect.items() if o == "accepted")
        self.assertGreaterEqual(self.histogram_count(x, "cqrsd_command_duration_seconds"),
                                accepted)
        self.assertGreaterEqual(self.histogram_count(x, "cqrsd_query_wait_seconds"), 1)
        timeouts = x.value("cqrsd_query_wait_timeouts_total")
        self.assertIsNotNone(timeouts, "cqrsd_query_wait_timeouts_total (unlabelled)")
        self.assertGreaterEqual(timeouts, 1)

        # ---- the store and the projections
        self.assertEqual(x.value("event_store_head_position"), head)
        self.assertEqual(x.value("cqrsd_store_writable"), 1)
        wal = x.by_label("cqrsd_wal_bytes", "database")
        self.assertEqual(set(wal), {"events.db", "read.db"}, "wal sizes %r" % wal)
        for db, v in wal.items():
            self.assertGreaterEqual(v, 0, "cqrsd_wal_bytes of %s" % db)
        positions = x.by_label("projection_position", "projection")
        lag_events = x.by_label("projection_lag_events", "projection")
        lag_seconds = x.by_label("projection_lag_seconds", "projection")
        failed = x.by_label("projection_failed", "projection")
        for family in (positions, lag_events, lag_seconds, failed):
            self.assertEqual(set(family), set(positions),
                             "every projection has every gauge")
        self.assertIn("order_summaries", positions, "projections %r" % sorted(positions))
        for proj in fresh:
            self.assertIn(proj, positions, "projection of a query has no gauges")
            self.assertEqual(positions[proj], head, 'projection_position{projection="%s"} '
                             "after a fresh query at the head" % proj)
            self.assertEqual(lag_events[proj], 0, proj)
            self.assertEqual(lag_seconds[proj], 0, proj)
        for proj, v in failed.items():
            self.assertEqual(v, 0, 'projection_failed{projection="%s"}' % proj)
        for proj, v in positions.items():
            self.assertLessEqual(v, head, proj)
            self.assertEqual(lag_events[proj], head - v, proj)
            self.assertGreaterEqual(lag_seconds[proj], 0, proj)

        # ---- an idle, caught-up projection does not look lagging later on
        # (or ProjectionLagging would fire on every quiet night)
        time.sleep(1.2)
        x2 = Exposition(self.scrape())
        for proj in fresh:
            self.assertEqual(x2.by_label("projection_lag_seconds", "projection")[proj], 0,
                             "idle caught-up projection %s shows lag" % proj)
        # scraping changes nothing
        self.assertEqual(x2.by_label("cqrsd_commands_total", "outcome").keys(),
                         x.by_label("cqrsd_commands_total", "outcome").keys())
        self.assertEqual(x2.value("event_store_head_position"), head)

    def histogram_count(self, x, name):
        """Check every series of histogram name (cumulative buckets ending
        in +Inf equal to _count) and return the total _count."""
        buckets = {}
        for labels, v in x.series(name + "_bucket"):
            self.assertIn("le", labels, "%s_bucket without le: %r" % (name, labels))
            key = tuple(sorted((k, s) for k, s in labels.items() if k != "le"))
            buckets.setdefault(key, []).append((float(labels["le"]), v))
        self.assertTrue(buckets, "%s has no buckets" % name)
        total = 0
        for key, bs in buckets.items():
            les = [le for le, _ in bs]
            self.assertEqual(les, sorted(les), "%s buckets out of order" % name)
            self.assertEqual(les[-1], float("inf"), "%s lacks the +Inf bucket" % name)
            counts = [c for _, c in bs]
            self.assertEqual(counts, sorted(counts), "%s buckets not cumulative" % name)
            labels = dict(key)
            count = x.value(name + "_count", **labels)
            self.assertEqual(count, counts[-1], "%s_count%r != +Inf bucket" % (name, labels))
            self.assertIsNotNone(x.value(name + "_sum", **labels), name + "_sum")
            total += count
        return total

    def test_metrics_method_and_head(self):
        st, h, b = self.c.req("POST", "/metrics", body={})
        self.assertEqual(st, 405, "POST /metrics")
        assert_type(self, b, "method-not-allowed")
        self.assertEqual(h.get("allow"), "GET, HEAD", h)
        # HEAD works wherever GET does (docs/api.md, "HTTP"): the same
        # status and headers, no body
        st, h, body = self.c.req("HEAD", "/metrics")
        self.assertEqual(st, 200, "HEAD /metrics -> %s %r" % (st, body))
        self.assertEqual(body, "", "HEAD /metrics sent a body")
        gst, gh, text = self.c.req("GET", "/metrics")
        self.assertEqual(gst, 200)
        self.assertTrue(text.startswith("# HELP"), text[:200])
        self.assertEqual(h.get("content-type"), gh.get("content-type"))
        self.assertEqual(h.get("content-type"),
                         "text/plain; version=0.0.4; charset=utf-8", h)


if __name__ == "__main__":
    cqtest.main()
