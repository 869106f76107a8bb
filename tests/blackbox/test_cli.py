"""`cqrsd projections ...` against a running server: the table it prints,
the operations it asks for, and its exit codes (0 done, 1 refused by the
server, 2 usage or connection errors)."""
import subprocess
import unittest

import cqtest


class ProjectionsCliTest(cqtest.ServerTestCase):
    def cli(self, *args, server=True):
        argv = [cqtest.BINARY, "projections"]
        if server:
            argv += ["--server", "127.0.0.1:%d" % self.server.port]
        p = subprocess.run(argv + list(args), capture_output=True, text=True,
                           timeout=60)
        return p.returncode, p.stdout, p.stderr

    def status(self, name):
        st, _, body = self.c.req("GET", "/projections/" + name)
        self.assertEqual(st, 200, body)
        return body["status"]

    def test_list(self):
        rc, out, err = self.cli("list")
        self.assertEqual(rc, 0, err)
        lines = out.splitlines()
        self.assertTrue(lines[0].startswith("PROJECTION"), out)
        names = sorted(line.split()[0] for line in lines[1:])
        self.assertEqual(names, ["order_summaries", "payment_confirmation",
                                 "sales_dashboard"])

    def test_pause_resume_status(self):
        rc, out, err = self.cli("pause", "sales_dashboard")
        self.assertEqual(rc, 0, err)
        self.assertIn("paused", out)
        self.assertEqual(self.status("sales_dashboard"), "paused")
        rc, out, err = self.cli("status", "sales_dashboard")
        self.assertEqual(rc, 0, err)
        self.assertIn("paused", out)
        rc, out, err = self.cli("resume", "sales_dashboard")
        self.assertEqual(rc, 0, err)
        self.assertEqual(self.status("sales_dashboard"), "running")

    def test_refusals_exit_1(self):
        rc, _, err = self.cli("pause", "payment_confirmation")
        self.assertEqual(rc, 1)
        self.assertIn("inline", err)
        rc, _, err = self.cli("status", "no_such_projection")
        self.assertEqual(rc, 1)
        self.assertIn("no projection", err)
        rc, _, err = self.cli("retry", "order_summaries")
        self.assertEqual(rc, 1)
        self.assertIn("has not failed", err)

    def test_usage_and_connection_errors_exit_2(self):
        for args in ((), ("frobnicate", "order_summaries"), ("pause",),
                     ("list", "extra"), ("status", "Bad-Name")):
            rc, _, err = self.cli(*args)
            self.assertEqual(rc, 2, "%r: %s" % (args, err))
        p = subprocess.run([cqtest.BINARY, "projections", "--server",
                            "127.0.0.1:%d" % cqtest.free_port(), "list"],
                           capture_output=True, text=True, timeout=60)
        self.assertEqual(p.returncode, 2)
        self.assertIn("cannot reach", p.stderr)


if __name__ == "__main__":
    cqtest.main()
