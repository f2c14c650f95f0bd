"""Checks from a pass over RFC 3501 section 6 and the advertised extensions.

Each test names the rule it pins; the everyday behaviour of each command is
in tests/test_imap_server.py.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from mailsrv.policy import SessionPolicy
from tests.imap_helpers import CAPS_BEFORE, ServerTestBase, in_process


class AppendLimitTests(ServerTestBase):
    policy = SessionPolicy(failure_delay=0.0, max_message_size=1000)

    @defer.inlineCallbacks
    def test_status_and_list_status_report_the_limit(self) -> Any:
        # RFC 7889 3.1 and 3.2: the APPENDLIMIT status item, also with
        # LIST-STATUS ("The IMAP server MUST recognize the APPENDLIMIT
        # attribute").
        client = yield self.login()
        response = yield client.command("a", "STATUS INBOX (APPENDLIMIT MESSAGES)")
        self.assertEqual(
            response,
            b"* STATUS INBOX (APPENDLIMIT 1000 MESSAGES 0)\r\na OK STATUS completed\r\n",
        )
        response = yield client.command("b", 'LIST "" INBOX RETURN (STATUS (APPENDLIMIT))')
        self.assertEqual(
            response,
            b'* LIST (\\HasNoChildren) "/" INBOX\r\n'
            b"* STATUS INBOX (APPENDLIMIT 1000)\r\n"
            b"b OK LIST completed\r\n",
        )
        response = yield client.command("c", "CAPABILITY")
        self.assertIn(b" APPENDLIMIT=1000", response)


class CapabilityTests(ServerTestBase):
    @defer.inlineCallbacks
    def test_only_what_works_is_advertised(self) -> Any:
        client = yield self.login()
        response = yield client.command("a", "CAPABILITY")
        caps = response.split(b"\r\n")[0].split()[2:]
        self.assertEqual(
            b" ".join(caps),
            CAPS_BEFORE + b" COMPRESS=DEFLATE QUOTA QUOTA=RES-STORAGE QUOTA=RES-MESSAGE"
            b" METADATA METADATA-SERVER",
        )
        for absent in (
            b"UTF8=ONLY",
            b"QUOTASET",
            b"ACL",
            b"NOTIFY",
            b"ANNOTATE-EXPERIMENT-1",
            b"LITERAL-",
        ):
            self.assertNotIn(absent, caps)

    @defer.inlineCallbacks
    def test_unoffered_extension_commands_are_bad(self) -> Any:
        client = yield self.login()
        response = yield client.command("a", "GETACL INBOX")
        self.assertEqual(
            response,
            b"a BAD GETACL is not supported (the ACL (RFC 4314) extension is not offered)\r\n",
        )
        response = yield client.command("b", "GETANNOTATION INBOX /comment value.priv")
        self.assertTrue(response.startswith(b"b BAD GETANNOTATION is not supported"), response)
        response = yield client.command("c", "NOOP")  # the session carries on
        self.assertEqual(response, b"c OK NOOP completed\r\n")


class IdleTimeoutTests(SynchronousTestCase):
    """RFC 2177: a client renews IDLE every 29 minutes, so the server does not
    log an idling client out sooner, even with a shorter configured
    autologout; after DONE the configured timer applies again."""

    def test_idle_outlasts_a_short_autologout(self) -> None:
        clock = Clock()
        policy = SessionPolicy(
            failure_delay=0.0, plaintext="always", imap_timeout_authenticated=120
        )
        server, transport = in_process(policy=policy, clock=clock)
        server.dataReceived(b"a LOGIN joe secret\r\nb IDLE\r\n")
        self.assertTrue(transport.value().endswith(b"+ idling\r\n"))
        clock.advance(29 * 60)
        self.assertFalse(transport.disconnecting)
        server.dataReceived(b"DONE\r\n")
        self.assertTrue(transport.value().endswith(b"b OK IDLE terminated\r\n"))
        clock.advance(119)
        self.assertFalse(transport.disconnecting)
        clock.advance(1)
        self.assertTrue(transport.disconnecting)
        self.assertTrue(transport.value().endswith(b"* BYE Autologout; idle for too long\r\n"))

    def test_idle_still_ends_eventually(self) -> None:
        clock = Clock()
        policy = SessionPolicy(failure_delay=0.0, plaintext="always")
        server, transport = in_process(policy=policy, clock=clock)
        server.dataReceived(b"a LOGIN joe secret\r\nb IDLE\r\n")
        clock.advance(31 * 60 - 1)
        self.assertFalse(transport.disconnecting)
        clock.advance(1)
        self.assertTrue(transport.disconnecting)


class SaslIRTests(ServerTestBase):
    policy = SessionPolicy(failure_delay=0.0, challenge_auth_available=lambda: True)

    @defer.inlineCallbacks
    def test_initial_response_to_server_first_mechanism_is_bad(self) -> Any:
        # RFC 4959 3: "the server MUST reject the AUTHENTICATE command with a
        # tagged BAD response" (and it is no failed login attempt).
        client = yield self.connect()
        for tag in ("a", "b", "c", "d"):
            response = yield client.command(tag, "AUTHENTICATE CRAM-MD5 Zm9v")
            self.assertEqual(
                response, tag.encode() + b" BAD CRAM-MD5 does not take an initial response\r\n"
            )
        response = yield client.command("e", "AUTHENTICATE PLAIN AGpvZQBzZWNyZXQ=")
        self.assertTrue(response.startswith(b"e OK [CAPABILITY"), response)
