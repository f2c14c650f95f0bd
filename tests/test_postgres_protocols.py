"""IMAP and POP3 while the PostgreSQL server cannot be reached.

A user whose password is right but whose mail store is away gets the
temporary answer (RFC 5530 ``UNAVAILABLE``, RFC 3206 ``SYS/TEMP``), not an
authentication failure that counts towards the disconnect.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.portal import Portal
from twisted.internet import protocol, reactor
from twisted.trial.unittest import TestCase

from mailsrv.auth.realm import MailRealm
from mailsrv.policy import SessionPolicy
from tests import pgcluster
from tests.imap_helpers import Client, RecordingFactory
from tests.pop3_helpers import TCPServer


class UnreachableDatabaseTests(TestCase):
    def setUp(self) -> None:
        pgcluster.require()
        nowhere = os.path.abspath(self.mktemp())
        storage = pgcluster.new_storage(self, f"host={nowhere} dbname=mail connect_timeout=2")
        checker = InMemoryUsernamePasswordDatabaseDontUse(alice=b"secret")
        self.portal = Portal(MailRealm(storage), [checker])
        self.policy = SessionPolicy(hostname="mail.test", failure_delay=0.0, max_failures=2)

    async def test_imap_login_answers_unavailable(self) -> None:
        factory = RecordingFactory(self.portal, self.policy)
        port: Any = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        creator = protocol.ClientCreator(reactor, Client)
        client = await creator.connectTCP("127.0.0.1", port.getHost().port)
        await client.until(b"\r\n")
        for tag in ("a", "b", "c"):  # more than max_failures: none counts
            response = await client.command(tag, "LOGIN alice secret")
            self.assertRegex(
                response,
                # The cause goes to the log, not to the client.
                tag.encode() + rb" NO \[UNAVAILABLE\] Cannot open the account just now\r\n$",
            )
        self.assertEqual(await client.command("d", "NOOP"), b"d OK NOOP completed\r\n")
        client.transport.loseConnection()
        await client.lost

    async def test_pop3_login_answers_sys_temp(self) -> None:
        fixture: Any = type("Fixture", (), {"portal": self.portal, "policy": self.policy})
        server = TCPServer(self, fixture)
        client, _ = await server.connect()
        for _ in range(3):
            await client.command(b"USER alice")
            answer = await client.command(b"PASS secret")
            self.assertTrue(
                answer == b"-ERR [SYS/TEMP] Cannot open the mailbox just now.\r\n",
                answer,
            )
        # Still connected, still not logged in.
        self.assertEqual(await client.command(b"NOOP"), b"-ERR NOOP is only valid after login.\r\n")
