"""QUOTA (RFC 9208) over real sockets: GETQUOTA, GETQUOTAROOT, SETQUOTA,
[OVERQUOTA] on APPEND and COPY with nothing half-written, STATUS
DELETED-STORAGE; and the limits' sources (users-file rules, the default)."""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase

from mailsrv.auth.realm import MailRealm
from mailsrv.policy import SessionPolicy
from mailsrv.quota import QuotaLimits, Quotas, limits_from_fields, parse_rule, parse_size
from tests.helpers import log_events
from tests.imap_helpers import ServerTestBase

MESSAGE = b"From: a@example.org\r\nSubject: hello\r\n\r\n" + b"x" * 459 + b"\r\n"  # 500 octets

#: joe's extra fields in the users file; ann has none and gets the default.
FIELDS = {"joe": ["userdb_quota_rule=*:storage=2k", "userdb_quota_rule2=*:messages=3"]}


def fields_of(user: str) -> list[str]:
    return FIELDS.get(user, [])


class QuotaTests(ServerTestBase):
    policy = SessionPolicy(
        failure_delay=0.0, quotas=Quotas(QuotaLimits(storage=10 * 1024), fields_of)
    )

    @defer.inlineCallbacks
    def test_capability_and_quota_root(self) -> Any:
        self.deliver(MESSAGE)
        client = yield self.login()
        response = yield client.command("a", "CAPABILITY")
        self.assertIn(b" COMPRESS=DEFLATE QUOTA QUOTA=RES-STORAGE QUOTA=RES-MESSAGE ", response)
        self.assertNotIn(b"QUOTASET", response)
        response = yield client.command("b", "GETQUOTAROOT INBOX")
        self.assertEqual(
            response,
            b'* QUOTAROOT INBOX ""\r\n'
            b'* QUOTA "" (STORAGE 0 2 MESSAGE 1 3)\r\n'
            b"b OK GETQUOTAROOT completed\r\n",
        )
        # RFC 9208 4.1.2: the mailbox need not exist.
        response = yield client.command("c", "GETQUOTAROOT Later/Perhaps")
        self.assertTrue(response.startswith(b'* QUOTAROOT Later/Perhaps ""\r\n'), response)
        response = yield client.command("d", 'GETQUOTA ""')
        self.assertEqual(
            response, b'* QUOTA "" (STORAGE 0 2 MESSAGE 1 3)\r\nd OK GETQUOTA completed\r\n'
        )
        response = yield client.command("e", 'GETQUOTA "#user/joe"')
        self.assertEqual(response, b'e NO [NONEXISTENT] No such quota root; yours is ""\r\n')

    @defer.inlineCallbacks
    def test_default_limit_and_usage_in_kibibytes(self) -> Any:
        for _ in range(5):
            self.storage.deliver("ann", MESSAGE, "INBOX", (), None)
        client = yield self.login("ann", "pass")
        response = yield client.command("a", 'GETQUOTA ""')
        # 2,500 octets are 2 units of 1024 (RFC 9208 5.1); no MESSAGE limit.
        self.assertEqual(response, b'* QUOTA "" (STORAGE 2 10)\r\na OK GETQUOTA completed\r\n')

    @defer.inlineCallbacks
    def test_setquota_is_refused(self) -> Any:
        client = yield self.login()
        response = yield client.command("a", 'SETQUOTA "" (STORAGE 100000)')
        self.assertEqual(
            response,
            b"a NO [NOPERM] Quota limits are set by the administrator (the users file or "
            b"the [quota] configuration), not over IMAP\r\n",
        )
        response = yield client.command("b", 'SETQUOTA "" STORAGE')
        self.assertTrue(response.startswith(b"b BAD "), response)
        response = yield client.command("c", 'GETQUOTA ""')
        self.assertIn(b"(STORAGE 0 2 MESSAGE 0 3)", response)

    @defer.inlineCallbacks
    def test_append_over_quota(self) -> Any:
        client = yield self.login()
        for tag in "abc":
            literal = b"APPEND INBOX {%d+}\r\n" % len(MESSAGE) + MESSAGE
            response = yield client.command(tag, literal)
            self.assertIn(tag.encode() + b" OK [APPENDUID ", response)
        # A fourth message breaks MESSAGE (3); it is not stored.
        response = yield client.command("d", b"APPEND INBOX {%d+}\r\n" % len(MESSAGE) + MESSAGE)
        self.assertEqual(
            response,
            b"d NO [OVERQUOTA] Quota exceeded (messages: 3 of 3, 1 more would not fit)\r\n",
        )
        self.assertEqual(len(self.contents()), 3)
        # STORAGE: 1,000 of 2,048 octets used; 1,100 more would not fit.
        yield client.command("e", "SELECT INBOX")
        yield client.command("f", "STORE 1 +FLAGS (\\Deleted)")
        yield client.command("g", "EXPUNGE")
        big = MESSAGE + b"y" * 598 + b"\r\n"
        response = yield client.command("h", b"APPEND INBOX {%d+}\r\n" % len(big) + big)
        self.assertEqual(
            response,
            b"h NO [OVERQUOTA] Quota exceeded (storage: 1000 octets used of 2K, "
            b"1100 octets more would not fit)\r\n",
        )
        self.assertEqual(len(self.contents()), 2)

    @defer.inlineCallbacks
    def test_multiappend_over_quota_appends_nothing(self) -> Any:
        """The batch is checked whole (RFC 3502: all or none): two messages
        fit, a third in the same APPEND does not, so none is stored."""
        client = yield self.login()
        literal = b"{%d+}\r\n" % len(MESSAGE) + MESSAGE
        response = yield client.command("a", b"APPEND INBOX " + literal)
        self.assertIn(b"a OK [APPENDUID ", response)
        response = yield client.command("b", b"APPEND INBOX " + b" ".join([literal] * 3))
        self.assertEqual(
            response,
            b"b NO [OVERQUOTA] Quota exceeded (messages: 1 of 3, 3 more would not fit)\r\n",
        )
        self.assertEqual(len(self.contents()), 1)
        response = yield client.command("c", b"APPEND INBOX " + b" ".join([literal] * 2))
        self.assertIn(b"c OK [APPENDUID ", response)
        self.assertEqual(len(self.contents()), 3)

    @defer.inlineCallbacks
    def test_replace_counts_only_growth(self) -> Any:
        """REPLACE at the message limit is allowed (one goes, one comes), and
        refused when the replacement would grow storage past its limit."""
        client = yield self.login()
        for tag in "abc":
            literal = b"APPEND INBOX {%d+}\r\n" % len(MESSAGE) + MESSAGE
            response = yield client.command(tag, literal)
            self.assertIn(tag.encode() + b" OK [APPENDUID ", response)
        yield client.command("d", "SELECT INBOX")
        same = MESSAGE.replace(b"x", b"z")
        response = yield client.command("e", b"REPLACE 1 INBOX {%d+}\r\n" % len(same) + same)
        self.assertIn(b"e OK REPLACE completed", response)
        big = MESSAGE + b"y" * 8000 + b"\r\n"
        response = yield client.command("f", b"REPLACE 1 INBOX {%d+}\r\n" % len(big) + big)
        self.assertIn(b"f NO [OVERQUOTA] Quota exceeded (storage: ", response)
        self.assertEqual(len(self.contents()), 3)
        self.assertNotIn(big, self.contents())

    @defer.inlineCallbacks
    def test_copy_over_quota_copies_nothing_and_move_is_allowed(self) -> Any:
        self.account().create_mailbox("Archive")
        self.deliver(MESSAGE)
        self.deliver(MESSAGE)
        client = yield self.selected()
        # Two copies would make 4 messages (limit 3): none is made.
        response = yield client.command("a", "COPY 1:2 Archive")
        self.assertEqual(
            response,
            b"a NO [OVERQUOTA] Quota exceeded (messages: 2 of 3, 2 more would not fit)\r\n",
        )
        self.assertEqual(self.contents("Archive"), {})
        response = yield client.command("b", "UID COPY 1 Archive")
        self.assertIn(b"b OK [COPYUID ", response)
        # Now at the limit: a MOVE adds nothing to the one quota root.
        response = yield client.command("c", "MOVE 2 Archive")
        self.assertIn(b"c OK MOVE completed", response)
        self.assertEqual(len(self.contents("Archive")), 2)

    @defer.inlineCallbacks
    def test_status_deleted_storage(self) -> Any:
        self.deliver(MESSAGE, flags=["\\Deleted"])
        self.deliver(MESSAGE + b"zz\r\n")
        self.deliver(MESSAGE, flags=["\\Deleted", "\\Seen"])
        client = yield self.login()
        response = yield client.command("a", "STATUS INBOX (MESSAGES SIZE DELETED DELETED-STORAGE)")
        self.assertEqual(
            response,
            b"* STATUS INBOX (MESSAGES 3 SIZE 1504 DELETED 2 DELETED-STORAGE 1000)\r\n"
            b"a OK STATUS completed\r\n",
        )
        response = yield client.command("b", 'LIST "" INBOX RETURN (STATUS (DELETED-STORAGE))')
        self.assertIn(b"* STATUS INBOX (DELETED-STORAGE 1000)\r\n", response)


class NoLimitTests(ServerTestBase):
    @defer.inlineCallbacks
    def test_no_limit_is_an_empty_list(self) -> Any:
        client = yield self.login()
        response = yield client.command("a", "GETQUOTAROOT INBOX")
        self.assertEqual(
            response,
            b'* QUOTAROOT INBOX ""\r\n* QUOTA "" ()\r\na OK GETQUOTAROOT completed\r\n',
        )


class RuleTests(SynchronousTestCase):
    def test_sizes(self) -> None:
        self.assertEqual(parse_size("2048"), 2048)
        self.assertEqual(parse_size("100k"), 100 * 1024)
        self.assertEqual(parse_size("500M"), 500 * 1024**2)
        self.assertEqual(parse_size("1G"), 1024**3)
        self.assertEqual(parse_size("1GB"), 1024**3)
        self.assertRaises(ValueError, parse_size, "lots")
        self.assertRaises(ValueError, parse_size, "1.5G")

    def test_dovecot_rules(self) -> None:
        self.assertEqual(parse_rule("*:storage=1G"), QuotaLimits(storage=1024**3))
        self.assertEqual(parse_rule("*:storage=10M:messages=100"), QuotaLimits(10 * 1024**2, 100))
        # 0 is no limit, as in Dovecot.
        self.assertEqual(parse_rule("*:storage=0", QuotaLimits(5, 6)), QuotaLimits(None, 6))
        for bad in ("Trash:storage=+10M", "*:storage=10%", "*:flavour=1", "*:messages=x"):
            self.assertRaises(ValueError, parse_rule, bad)

    def test_fields_override_the_default_and_bad_rules_are_logged(self) -> None:
        default = QuotaLimits(storage=1000, messages=10)
        fields = ["uid=5", "quota_rule=*:messages=20", "userdb_quota_rule2=Trash:storage=+1M"]
        warnings: list[str] = []
        limits = limits_from_fields(fields, default, warnings.append)
        self.assertEqual(limits, QuotaLimits(storage=1000, messages=20))
        self.assertEqual(
            warnings,
            [
                "userdb_quota_rule2=Trash:storage=+1M: only rules for '*' (the whole account) "
                "are supported, not 'Trash:storage=+1M'"
            ],
        )

    def test_quotas_warn_once_per_user_and_rule(self) -> None:
        events = log_events(self)
        quotas = Quotas(QuotaLimits(messages=1), lambda _: ["userdb_quota_rule=*:storage=x"])
        for _ in range(3):
            self.assertEqual(quotas.limits_of("joe"), QuotaLimits(messages=1))
        warned = [e for e in events if "quota rule of" in e.get("log_format", "")]
        self.assertEqual(len(warned), 1)


class MaildirQuotaTests(ServerTestBase):
    """Over Maildir, a message another program wrote into ``new/`` counts
    too: usage is what the folders' indexes hold once they have looked."""

    policy = SessionPolicy(failure_delay=0.0, quotas=Quotas(QuotaLimits(messages=2)))

    def setUp(self) -> None:
        super().setUp()
        from mailsrv.storage.maildir import MaildirStorage

        self.root = os.path.abspath(self.mktemp())
        self.storage = MaildirStorage(self.root + "/{user}")  # type: ignore[assignment]
        self.portal.realm = MailRealm(self.storage)

    @defer.inlineCallbacks
    def test_outside_delivery_counts(self) -> Any:
        client = yield self.login()
        literal = b"APPEND INBOX {%d+}\r\n" % len(MESSAGE) + MESSAGE
        response = yield client.command("a", literal)
        self.assertIn(b"a OK [APPENDUID ", response)
        with open(os.path.join(self.root, "joe", "new", "1.outside.host"), "wb") as f:
            f.write(MESSAGE)
        response = yield client.command("b", 'GETQUOTA ""')
        self.assertEqual(response, b'* QUOTA "" (MESSAGE 2 2)\r\nb OK GETQUOTA completed\r\n')
        response = yield client.command("c", literal)
        self.assertTrue(response.startswith(b"c NO [OVERQUOTA] Quota exceeded"), response)
        self.assertEqual(len(os.listdir(os.path.join(self.root, "joe", "tmp"))), 0)
