"""The LMTP protocol on an in-memory transport: look-ups and deliveries that
answer later, timeouts."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, task
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from mailsrv.auth.passwdfile import UserRecord
from mailsrv.lmtp.server import LMTPFactory, LMTPServer
from mailsrv.policy import SessionPolicy
from mailsrv.storage.memory import MemoryStorage


class Connection:
    def __init__(self, users: Any, storage: Any = None, timeout: float = 300.0) -> None:
        self.clock = task.Clock()
        self.storage = storage or MemoryStorage()
        policy = SessionPolicy(hostname="mx.test", lmtp_timeout=timeout)
        self.protocol: LMTPServer = LMTPFactory(
            self.storage, users, policy, clock=self.clock
        ).buildProtocol(None)
        self.transport = StringTransport()
        self.protocol.makeConnection(self.transport)

    def send(self, data: bytes) -> None:
        self.protocol.dataReceived(data)

    def take(self) -> list[bytes]:
        out: bytes = self.transport.value()
        self.transport.clear()
        return out.split(b"\r\n")[:-1]


def record(name: str) -> UserRecord:
    return UserRecord(name=name, password="{PLAIN}x")


class LaterTests(SynchronousTestCase):
    def test_slow_lookup_pauses_reading_and_keeps_the_order(self) -> None:
        pending: dict[str, defer.Deferred[Any]] = {}

        def users(name: str) -> defer.Deferred[Any]:
            pending[name] = defer.Deferred()
            return pending[name]

        c = Connection(users)
        c.take()
        c.send(b"LHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<alice>\r\nRCPT TO:<bob>\r\nDATA\r\n")
        self.assertEqual(c.take()[-1], b"250 2.1.0 Sender OK")
        self.assertEqual(c.transport.producerState, "paused")
        self.assertEqual(list(pending), ["alice"])
        pending["alice"].callback(record("alice"))
        self.assertEqual(c.take(), [b"250 2.1.5 <alice> Recipient OK"])
        self.assertEqual(list(pending), ["alice", "bob"])
        pending["bob"].callback(None)
        self.assertEqual(
            c.take(),
            [b"550 5.1.1 <bob> No such user here", b"354 Start mail input; end with <CRLF>.<CRLF>"],
        )
        self.assertEqual(c.transport.producerState, "producing")
        c.send(b"Subject: x\r\n\r\nbody\r\n.\r\nQUIT\r\n")
        replies = c.take()
        self.assertTrue(replies[0].startswith(b"250 2.0.0 <alice> Delivered as UID 1"), replies)
        self.assertEqual(replies[1], b"221 2.0.0 mx.test closing connection")
        inbox = c.storage.account("alice").get_mailbox("INBOX")
        with inbox.open(inbox.uids()[0]) as f:
            self.assertEqual(f.read(), b"Subject: x\r\n\r\nbody\r\n")

    def test_failing_lookup_is_a_temporary_failure(self) -> None:
        def users(name: str) -> defer.Deferred[Any]:
            return defer.fail(OSError("database away"))

        c = Connection(users)
        c.send(b"LHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<alice@x>\r\n")
        self.assertTrue(c.take()[-1].startswith(b"451 4.3.0 <alice@x> Cannot look the user up"))
        self.flushLoggedErrors(OSError)

    def test_slow_storage_replies_once_stored_and_no_timeout_meanwhile(self) -> None:
        storage = MemoryStorage()
        gate: defer.Deferred[None] = defer.Deferred()

        class SlowStorage:
            def account(self, user: str, home: str | None = None) -> Any:
                return gate.addCallback(lambda _: storage.account(user, home))

        c = Connection(lambda name: record(name), SlowStorage(), timeout=60)
        c.send(b"LHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<alice>\r\nDATA\r\nx\r\n.\r\nNOOP\r\n")
        self.assertEqual(c.take()[-1], b"354 Start mail input; end with <CRLF>.<CRLF>")
        c.clock.advance(3600)  # storing takes long: the client is not timed out
        self.assertFalse(c.transport.disconnecting)
        self.assertEqual(c.take(), [])
        gate.callback(None)
        self.assertEqual(c.take(), [b"250 2.0.0 <alice> Delivered as UID 1", b"250 2.0.0 OK"])
        c.clock.advance(61)  # the idle timer runs again once the answer is out
        self.assertEqual(c.take(), [b"421 4.4.2 mx.test Timeout, closing connection"])
        self.assertTrue(c.transport.disconnecting)


class TimeoutTests(SynchronousTestCase):
    def test_idle_client_gets_421(self) -> None:
        c = Connection(lambda name: None, timeout=30)
        c.take()
        c.clock.advance(29)
        c.send(b"NOOP\r\n")  # a command restarts the timer
        c.clock.advance(29)
        self.assertEqual(c.take(), [b"250 2.0.0 OK"])
        c.clock.advance(2)
        self.assertEqual(c.take(), [b"421 4.4.2 mx.test Timeout, closing connection"])
        self.assertTrue(c.transport.disconnecting)
