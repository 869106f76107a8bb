"""problems -- the problem types of docs/api.md ("Errors"), for the
black-box tests: answers of one status are told apart by their type
(urn:cqrsd:problem:<slug>), so a test names the one it expects.

    from problems import URN, ProblemTypes
    class T(ProblemTypes, cqtest.ServerTestCase): ...
        self.assertType(body, "refused")
"""

URN = "urn:cqrsd:problem:"


def assert_type(test, body, slug):
    """Fail `test` unless the problem document `body` has the type
    urn:cqrsd:problem:<slug>."""
    test.assertIsInstance(body, dict, "not a problem document: %r" % (body,))
    test.assertEqual(body.get("type"), URN + slug, "problem %r" % (body,))


class ProblemTypes:
    """Mixin for unittest.TestCase: self.assertType(body, slug)."""

    def assertType(self, body, slug):
        assert_type(self, body, slug)
