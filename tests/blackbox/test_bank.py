"""The bank example (domains/bank), served next to orders by one server.

Accounts are opened, take deposits and withdrawals (refused past the
overdraft limit) and close at a zero balance; a transfer is a Withdraw and
a Deposit correlated by a transfer id. Read models: the asynchronous
account_balances and transfers (read with min_position), and the inline
available_balances, a C-code projection exact as soon as a command is
answered. Ends with `cqrsd verify` over both domains.
"""

import os
import shutil
import subprocess
import tempfile
import unittest

import cqtest
from cqtest import Client


class Bank(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        build = os.path.dirname(os.path.abspath(cqtest.BINARY))
        cls.modules = [os.path.join(build, "domains", d, d + ".so")
                       for d in ("orders", "bank")]
        args = []
        for m in cls.modules:
            args += ["--domain", m]
        cls.data = tempfile.mkdtemp(prefix="cqrsd-bank-")
        cls.srv = cqtest.Server(data_dir=cls.data, args=args).start()
        cls.c = Client(cls.srv)

    @classmethod
    def tearDownClass(cls):
        cls.c.close()
        cls.srv.close()
        if not os.environ.get("CQ_KEEP"):
            shutil.rmtree(cls.data, ignore_errors=True)

    def cmd(self, type_, body, status=202):
        st, _, ans = self.c.req("POST", "/commands/" + type_, body)
        self.assertEqual(st, status, "%s %r -> %d %r" % (type_, body, st, ans))
        return ans

    def query(self, name, **params):
        qs = "&".join("%s=%s" % kv for kv in params.items())
        st, _, ans = self.c.req("GET", "/queries/%s?%s" % (name, qs))
        self.assertEqual(st, 200, ans)
        return ans["data"], ans["meta"]

    def open(self, acc, limit=None, owner="Ann"):
        body = {"account_id": acc, "owner": owner, "currency": "EUR"}
        if limit is not None:
            body["overdraft_limit_cents"] = limit
        return self.cmd("OpenAccount", body)

    def test_deposit_withdraw_overdraft(self):
        self.open("dw-1", limit=500)
        self.cmd("Deposit", {"account_id": "dw-1", "amount_cents": 1000})
        # inline: exact at once, no waiting
        data, meta = self.query("available_balance", account_id="dw-1")
        self.assertEqual((data["balance_cents"], data["available_cents"]),
                         (1000, 1500))
        ans = self.cmd("Withdraw", {"account_id": "dw-1", "amount_cents": 1501},
                       status=422)
        self.assertIn("overdraw", ans["detail"])
        ans = self.cmd("Withdraw", {"account_id": "dw-1", "amount_cents": 1500})
        data, _ = self.query("available_balance", account_id="dw-1")
        self.assertEqual((data["balance_cents"], data["available_cents"]),
                         (-500, 0))
        # asynchronous: wait for the position the command answered
        data, meta = self.query("account_balance", account_id="dw-1",
                                min_position=ans["position"])
        self.assertGreaterEqual(meta["position"], ans["position"])
        self.assertEqual((data["balance_cents"], data["deposits"],
                          data["withdrawals"], data["status"]),
                         (-500, 1, 1, "open"))

    def test_close(self):
        self.open("cl-1")
        self.cmd("Deposit", {"account_id": "cl-1", "amount_cents": 10})
        ans = self.cmd("CloseAccount", {"account_id": "cl-1"}, status=422)
        self.assertIn("balance of 10", ans["detail"])
        self.cmd("Withdraw", {"account_id": "cl-1", "amount_cents": 10})
        ans = self.cmd("CloseAccount", {"account_id": "cl-1"})
        self.cmd("Deposit", {"account_id": "cl-1", "amount_cents": 1}, status=422)
        data, _ = self.query("available_balance", account_id="cl-1")
        self.assertEqual((data["status"], data["available_cents"]), ("closed", 0))
        data, _ = self.query("account_balance", account_id="cl-1",
                             min_position=ans["position"])
        self.assertEqual(data["status"], "closed")
        # the engine's own checks still apply: unknown account, second open
        self.cmd("Deposit", {"account_id": "nobody", "amount_cents": 1}, status=404)
        self.open("cl-2")
        self.cmd("OpenAccount", {"account_id": "cl-2", "owner": "B",
                                 "currency": "EUR"}, status=409)

    def test_transfer_is_two_correlated_commands(self):
        self.open("tr-a")
        self.open("tr-b", owner="Bob")
        self.cmd("Deposit", {"account_id": "tr-a", "amount_cents": 5000})
        leg1 = {"account_id": "tr-a", "amount_cents": 3000,
                "transfer_id": "t-1", "to_account": "tr-b"}
        leg2 = {"account_id": "tr-b", "amount_cents": 3000,
                "transfer_id": "t-1", "from_account": "tr-a"}
        self.cmd("Withdraw", leg1)
        # between the legs the money is on its way
        self.cmd("Deposit", leg2)
        # a retried leg is recognised by its transfer id: no new events
        again = self.cmd("Withdraw", leg1)
        self.assertEqual(again["events"], [])
        again = self.cmd("Deposit", leg2)
        self.assertEqual(again["events"], [])
        st, _, stream = self.c.req("GET", "/streams/account-tr-b")
        self.assertEqual(st, 200)
        last = stream["events"][-1]
        self.assertEqual(last["data"]["transfer_id"], "t-1")
        self.assertEqual(last["data"]["counterparty"], "tr-a")
        pos = last["position"]
        data, _ = self.query("transfer", transfer_id="t-1", min_position=pos)
        self.assertEqual((data["from_account"], data["to_account"],
                          data["amount_cents"], data["status"]),
                         ("tr-a", "tr-b", 3000, "completed"))
        for acc, bal in (("tr-a", 2000), ("tr-b", 3000)):
            data, _ = self.query("account_balance", account_id=acc,
                                 min_position=pos)
            self.assertEqual(data["balance_cents"], bal)
        # a transfer that cannot be paid is refused on its first leg
        ans = self.cmd("Withdraw", dict(leg1, transfer_id="t-2",
                                        amount_cents=2001), status=422)
        self.assertIn("overdraw", ans["detail"])
        data, _ = self.query("owner_accounts", owner="Bob",
                             min_position=pos)
        self.assertEqual([r["account_id"] for r in data], ["tr-b"])
        # the receiving account is closed: its leg is refused, and the
        # money goes back to the payer under the same transfer id
        self.open("tr-c")
        self.cmd("CloseAccount", {"account_id": "tr-c"})
        self.cmd("Withdraw", {"account_id": "tr-a", "amount_cents": 500,
                              "transfer_id": "t-3", "to_account": "tr-c"})
        ans = self.cmd("Deposit", {"account_id": "tr-c", "amount_cents": 500,
                                   "transfer_id": "t-3",
                                   "from_account": "tr-a"}, status=422)
        self.assertIn("closed", ans["detail"])
        ans = self.cmd("Deposit", {"account_id": "tr-a", "amount_cents": 500,
                                   "transfer_id": "t-3", "from_account": "tr-c"})
        data, _ = self.query("transfer", transfer_id="t-3",
                             min_position=ans["position"])
        self.assertEqual((data["from_account"], data["status"]),
                         ("tr-a", "returned"))
        data, _ = self.query("available_balance", account_id="tr-a")
        self.assertEqual(data["balance_cents"], 2000)

    def test_transfer_fields_checked(self):
        self.open("tf-a")
        ans = self.cmd("Withdraw", {"account_id": "tf-a", "amount_cents": 1,
                                    "to_account": "tf-b"}, status=400)
        self.assertEqual([e["field"] for e in ans["errors"]], ["transfer_id"])
        ans = self.cmd("Deposit", {"account_id": "tf-a", "amount_cents": 1,
                                   "transfer_id": "t", "from_account": "tf-a"},
                       status=400)
        self.assertEqual([e["field"] for e in ans["errors"]], ["from_account"])

    def test_bank_owns_its_streams_beside_orders(self):
        st, _, ans = self.c.req("POST", "/streams/account-x", {
            "expected_version": "any", "events": [{"type": "Note", "data": {}}]})
        self.assertEqual(st, 422, ans)
        self.assertIn("the bank domain", ans["detail"])
        st, _, ans = self.c.req("POST", "/streams/free-x", {
            "expected_version": "any",
            "events": [{"type": "MoneyDeposited", "data": {}}]})
        self.assertEqual(st, 422, ans)
        self.assertIn("the bank domain", ans["detail"])
        # orders is served by the same server
        self.cmd("PlaceOrder", {"order_id": "bk-1", "customer_id": "c",
                                "currency": "EUR", "items": [
                                    {"sku": "s", "quantity": 1,
                                     "unit_price_cents": 100}]})
        st, _, ans = self.c.req("GET", "/queries/payment_confirmation?order_id=bk-1")
        self.assertEqual(st, 200, ans)

    def test_zz_verify_both_domains(self):
        """Runs last (name order): every read model of both domains equals
        a replay of the events."""
        self.open("zz-1")
        ans = self.cmd("Deposit", {"account_id": "zz-1", "amount_cents": 7})
        self.query("account_balance", account_id="zz-1",
                   min_position=ans["position"])
        args = [cqtest.BINARY, "verify", "--data", self.data]
        for m in self.modules:
            args += ["--domain", m]
        r = subprocess.run(args, capture_output=True, text=True, timeout=120)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        for name in ("account_balances", "transfers", "order_summaries"):
            self.assertIn(name, r.stdout)


if __name__ == "__main__":
    cqtest.main()
