"""SCRAM-SHA-256 and SCRAM-SHA-256-PLUS over IMAP (RFC 3501 AUTHENTICATE)
and POP3 (RFC 5034 AUTH), on real sockets: plaintext, implicit TLS 1.3 and
1.2, STARTTLS/STLS; with users in the users file and in PostgreSQL.  And
the failed-login rule for SCRAM's error challenge, on a clock."""

from __future__ import annotations

import base64
import os
from typing import TYPE_CHECKING, Any, cast

from twisted.cred.portal import Portal
from twisted.internet import defer, protocol, reactor, ssl
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IReactorThreads, ITLSTransport
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.trial import unittest

from mailsrv.auth.checker import PasswdFileChecker
from mailsrv.auth.passwdfile import PasswdFile
from mailsrv.auth.realm import MailRealm
from mailsrv.auth.sasl import SaslServices
from mailsrv.imap.protocol import IMAP4ServerFactory
from mailsrv.policy import SessionPolicy
from mailsrv.pop3.server import POP3Factory
from mailsrv.storage.memory import MemoryStorage
from tests import pgcluster
from tests.imap_helpers import Client, RecordingFactory, tls_options
from tests.pop3_helpers import TrackingFactory
from tests.sasl_helpers import ScramClient, client_bindings
from tests.test_scram import DOVEADM_PENCIL

if TYPE_CHECKING:
    _Base = unittest.TestCase
else:
    _Base = object

USERS = {"alice": DOVEADM_PENCIL, "bob": "{PLAIN}secret"}
PASSWORDS = {"alice": "pencil", "bob": "secret"}


def b64(data: bytes) -> bytes:
    return base64.b64encode(data) if data else b"="


class _Dialogue:
    """IMAP's or POP3's words for the same exchange."""

    tls_command = b""
    OK = b""
    FAILED = b""
    NOT_OFFERED = b""
    UNAVAILABLE = b""

    def factory(self, portal: Portal, policy: SessionPolicy, tls: bool) -> Any:
        """The protocol's server factory (unwrapped: ``tls`` says implicit TLS)."""
        raise NotImplementedError

    def ended(self, factory: Any) -> list[defer.Deferred[None]]:
        """What fires when each connection ``factory`` served has closed."""
        raise NotImplementedError

    async def greeting(self, client: Client) -> None:
        await client.until(b"\r\n")

    async def mechanisms(self, client: Client) -> list[str]:
        raise NotImplementedError

    async def begin(self, client: Client, mechanism: str, initial: bytes) -> bytes:
        raise NotImplementedError

    async def reply(self, client: Client, data: bytes | None) -> bytes:
        """Send ``data`` (None: the cancel ``*``); the server's next line."""
        client.send((b"*" if data is None else base64.b64encode(data)) + b"\r\n")
        return await client.until(b"\r\n")

    def refused(self, line: bytes) -> bool:
        """A failed login's answer (POP3's carries the mechanism's reason)."""
        return line == self.FAILED

    def challenge(self, line: bytes) -> bytes | None:
        if line.startswith(b"+ ") or line == b"+\r\n":
            return base64.b64decode(line[2:].strip() or b"")
        return None

    async def logged_in_check(self, client: Client) -> bytes:
        raise NotImplementedError

    async def start_tls(self, client: Client) -> None:
        client.send(self.tls_command + b"\r\n")
        await client.until(b"\r\n")


class _Imap(_Dialogue):
    tls_command = b"T STARTTLS"
    OK = b"A OK"
    FAILED = b"A NO [AUTHENTICATIONFAILED] Authentication failed\r\n"
    NOT_OFFERED = b"A NO [CANNOT] SCRAM-SHA-256-PLUS is not available\r\n"
    UNAVAILABLE = b"A NO [UNAVAILABLE] Authentication is temporarily unavailable\r\n"

    def factory(self, portal: Portal, policy: SessionPolicy, tls: bool) -> Any:
        return RecordingFactory(portal, policy, implicit_tls=tls)

    def ended(self, factory: Any) -> list[defer.Deferred[None]]:
        return list(factory.lost)

    async def mechanisms(self, client: Client) -> list[str]:
        answer = await client.command("C", "CAPABILITY")
        words = answer.split(b"\r\n")[0].split()
        return [w.decode()[5:] for w in words if w.startswith(b"AUTH=")]

    async def begin(self, client: Client, mechanism: str, initial: bytes) -> bytes:
        client.send(f"A AUTHENTICATE {mechanism} ".encode() + b64(initial) + b"\r\n")
        return await client.until(b"\r\n")

    async def logged_in_check(self, client: Client) -> bytes:
        answer = await client.command("S", "SELECT INBOX")
        return answer.split(b"\r\n")[-2]


class _Pop3(_Dialogue):
    tls_command = b"STLS"
    OK = b"+OK Logged in"
    FAILED = b"-ERR [AUTH] Authentication failed.\r\n"
    NOT_OFFERED = b"-ERR Unsupported authentication mechanism.\r\n"
    UNAVAILABLE = b"-ERR [SYS/TEMP] Temporary authentication failure.\r\n"

    def factory(self, portal: Portal, policy: SessionPolicy, tls: bool) -> Any:
        return TrackingFactory(portal, policy, implicit_tls=tls)

    def ended(self, factory: Any) -> list[defer.Deferred[None]]:
        return list(factory.ended)

    async def mechanisms(self, client: Client) -> list[str]:
        client.send(b"CAPA\r\n")

        def multiline(data: bytes) -> int:
            end = data.find(b"\r\n.\r\n")
            return end + 5 if end >= 0 else -1

        answer = await client.wait(multiline)
        for line in answer.split(b"\r\n"):
            if line.startswith(b"SASL "):
                return line.decode().split()[1:]
        return []

    async def begin(self, client: Client, mechanism: str, initial: bytes) -> bytes:
        client.send(f"AUTH {mechanism} ".encode() + b64(initial) + b"\r\n")
        return await client.until(b"\r\n")

    def refused(self, line: bytes) -> bool:
        return line.startswith(b"-ERR [AUTH] ")

    async def logged_in_check(self, client: Client) -> bytes:
        client.send(b"STAT\r\n")
        return (await client.until(b"\r\n")).strip()


class Sockets(_Base):
    """Servers of one protocol on loopback ports, and their clients, all
    closed after the test; a subclass sets ``portal``, ``policy`` and
    ``server_tls`` and calls :meth:`start_sockets` in its setUp."""

    dialogue: _Dialogue
    portal: Portal
    policy: SessionPolicy
    server_tls: ssl.CertificateOptions

    def start_sockets(self) -> None:
        self.clients: list[Client] = []
        self.factories: list[Any] = []

    def listen(self, tls: bool = False) -> int:
        factory = self.dialogue.factory(self.portal, self.policy, tls)
        self.factories.append(factory)
        # Any: Twisted types listenTCP's factory as a ServerFactory; any will do.
        wrapped: Any = TLSMemoryBIOFactory(self.server_tls, False, factory) if tls else factory
        port = reactor.listenTCP(0, wrapped, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        address = port.getHost()
        assert isinstance(address, IPv4Address)
        return address.port

    async def connect(self, tls: str | None = None, starttls: str | None = None) -> Client:
        """A client greeted over plaintext, implicit TLS (``tls`` "1.2" or
        "1.3") or STARTTLS/STLS (``starttls``)."""
        port = self.listen(tls=tls is not None)
        creator = protocol.ClientCreator(reactor, Client)
        if tls is not None:
            d = creator.connectSSL("127.0.0.1", port, _client_tls(tls))
        else:
            d = creator.connectTCP("127.0.0.1", port)
        client: Client = await d
        self.clients.append(client)
        await self.dialogue.greeting(client)
        if starttls is not None:
            await self.dialogue.start_tls(client)
            ITLSTransport(client.transport).startTLS(_client_tls(starttls))
        return client

    def tearDown(self) -> Any:
        # A Deferred, which trial waits for (typed Any: unittest's is None).
        return self._tear_down()

    @defer.inlineCallbacks
    def _tear_down(self) -> Any:
        for client in self.clients:
            if client.transport is not None:
                client.transport.loseConnection()
        for client in self.clients:
            yield client.lost
        for factory in self.factories:
            yield defer.gatherResults(self.dialogue.ended(factory))


class _ScramOverSockets(Sockets):
    """The scenarios, for one protocol and one place the users live."""

    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.server_tls = tls_options(os.path.join(self.dir, "tls"))
        self.start_sockets()
        self.checker, storage = self.make_users()
        self.portal = Portal(MailRealm(storage, self.checker.home_of), [self.checker])
        self.policy = SessionPolicy(
            failure_delay=0.0,
            max_failures=2,
            plaintext="never",
            tls_context=self.server_tls,
            sasl=SaslServices(scram=self.checker, scram_available=self.checker.any_scram),
        )

    def make_users(self) -> tuple[Any, Any]:
        path = os.path.join(self.dir, "passwd")
        with open(path, "w") as f:
            f.writelines(f"{name}:{secret}\n" for name, secret in USERS.items())
        checker = PasswdFileChecker(PasswdFile(path), reactor=cast(IReactorThreads, reactor))
        return checker, MemoryStorage()

    async def scram(
        self,
        client: Client,
        scram: ScramClient,
        mechanism: str = "SCRAM-SHA-256",
        password: bytes | None = None,
    ) -> bytes:
        """Run the exchange; the server's last line (after the empty
        answer to its signature, which must verify)."""
        dialogue = self.dialogue
        line = await dialogue.begin(client, mechanism, scram.first())
        first = dialogue.challenge(line)
        assert first is not None, line
        line = await dialogue.reply(client, scram.final(first, password=password))
        final = dialogue.challenge(line)
        if final is None or final.startswith(b"e="):
            return line
        self.assertTrue(scram.verified(final), final)
        return await dialogue.reply(client, b"")

    async def logs_in(self, client: Client, scram: ScramClient, mechanism: str) -> None:
        line = await self.scram(client, scram, mechanism)
        self.assertTrue(line.startswith(self.dialogue.OK), line)
        check = await self.dialogue.logged_in_check(client)
        self.assertTrue(check.startswith((b"S OK", b"+OK")), check)

    # -- the scenarios ----------------------------------------------------------------

    @defer.inlineCallbacks
    def test_plaintext_connection(self) -> Any:
        """SCRAM needs no TLS (it reveals no password); -PLUS needs TLS."""
        client = yield defer.Deferred.fromCoroutine(self.connect())
        offered = yield defer.Deferred.fromCoroutine(self.dialogue.mechanisms(client))
        self.assertEqual(offered, ["SCRAM-SHA-256"])
        for name in ("alice", "bob"):
            client = yield defer.Deferred.fromCoroutine(self.connect())
            scram = ScramClient(name, PASSWORDS[name])
            yield defer.Deferred.fromCoroutine(self.logs_in(client, scram, "SCRAM-SHA-256"))

    @defer.inlineCallbacks
    def test_plus_not_offered_nor_taken_without_tls(self) -> Any:
        client = yield defer.Deferred.fromCoroutine(self.connect())
        scram = ScramClient("alice", "pencil", flag="p=tls-exporter", binding=b"x" * 32)
        line = yield defer.Deferred.fromCoroutine(
            self.dialogue.begin(client, "SCRAM-SHA-256-PLUS", scram.first())
        )
        self.assertEqual(line, self.dialogue.NOT_OFFERED)

    @defer.inlineCallbacks
    def test_forged_proof(self) -> Any:
        """RFC 5802 7: e=invalid-proof; the reply to it (the cancel too,
        RFC 7628 3.2.3's rule) is the failed login, counted: the second
        failure is the last."""
        client = yield defer.Deferred.fromCoroutine(self.connect())
        for attempt, answer in ((1, b""), (2, None)):
            scram = ScramClient("alice", "pencil")
            line = yield defer.Deferred.fromCoroutine(self.scram(client, scram, password=b"x"))
            self.assertEqual(self.dialogue.challenge(line), b"e=invalid-proof")
            line = yield defer.Deferred.fromCoroutine(self.dialogue.reply(client, answer))
            self.assertEqual(line, self.dialogue.FAILED, attempt)
        yield client.lost  # max_failures = 2: the server hung up

    @defer.inlineCallbacks
    def test_unknown_user(self) -> Any:
        client = yield defer.Deferred.fromCoroutine(self.connect())
        line = yield defer.Deferred.fromCoroutine(
            self.scram(client, ScramClient("nobody", "pencil"))
        )
        self.assertEqual(self.dialogue.challenge(line), b"e=invalid-proof")

    @defer.inlineCallbacks
    def test_plus_over_tls13(self) -> Any:
        # Two users: a POP3 maildrop is locked while its session lasts.
        for kind, user in (("tls-exporter", "alice"), ("tls-server-end-point", "bob")):
            client = yield defer.Deferred.fromCoroutine(self.connect(tls="1.3"))
            offered = yield defer.Deferred.fromCoroutine(self.dialogue.mechanisms(client))
            self.assertEqual(offered[:2], ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"])
            data = client_bindings(client.transport)[kind]
            scram = ScramClient(user, PASSWORDS[user], flag=f"p={kind}", binding=data)
            yield defer.Deferred.fromCoroutine(self.logs_in(client, scram, "SCRAM-SHA-256-PLUS"))

    @defer.inlineCallbacks
    def test_plus_over_tls12(self) -> Any:
        """TLS 1.2: tls-unique (RFC 5802 6.1's default) and the certificate,
        but no exporter (RFC 9266: not without the extended master secret)."""
        client = yield defer.Deferred.fromCoroutine(self.connect(tls="1.2"))
        bindings = client_bindings(client.transport)
        scram = ScramClient("alice", "pencil", flag="p=tls-exporter", binding=b"x" * 32)
        line = yield defer.Deferred.fromCoroutine(
            self.dialogue.begin(client, "SCRAM-SHA-256-PLUS", scram.first())
        )
        self.assertTrue(self.dialogue.refused(line), line)
        for kind, user in (("tls-unique", "alice"), ("tls-server-end-point", "bob")):
            client = yield defer.Deferred.fromCoroutine(self.connect(tls="1.2"))
            bindings = client_bindings(client.transport)
            scram = ScramClient(user, PASSWORDS[user], flag=f"p={kind}", binding=bindings[kind])
            yield defer.Deferred.fromCoroutine(self.logs_in(client, scram, "SCRAM-SHA-256-PLUS"))

    @defer.inlineCallbacks
    def test_plus_after_starttls(self) -> Any:
        client = yield defer.Deferred.fromCoroutine(self.connect(starttls="1.3"))
        offered = yield defer.Deferred.fromCoroutine(self.dialogue.mechanisms(client))
        self.assertIn("SCRAM-SHA-256-PLUS", offered)
        data = client_bindings(client.transport)["tls-exporter"]
        scram = ScramClient("alice", "pencil", flag="p=tls-exporter", binding=data)
        yield defer.Deferred.fromCoroutine(self.logs_in(client, scram, "SCRAM-SHA-256-PLUS"))

    @defer.inlineCallbacks
    def test_binding_of_another_connection(self) -> Any:
        """A man in the middle relays the exchange into its own TLS session:
        the exporters differ, and the server says so (RFC 5802 7)."""
        other = yield defer.Deferred.fromCoroutine(self.connect(tls="1.3"))
        client = yield defer.Deferred.fromCoroutine(self.connect(tls="1.3"))
        data = client_bindings(other.transport)["tls-exporter"]
        scram = ScramClient("alice", "pencil", flag="p=tls-exporter", binding=data)
        line = yield defer.Deferred.fromCoroutine(self.scram(client, scram, "SCRAM-SHA-256-PLUS"))
        self.assertEqual(self.dialogue.challenge(line), b"e=channel-bindings-dont-match")

    @defer.inlineCallbacks
    def test_downgrade_refused(self) -> Any:
        """RFC 5802 6: "y" where -PLUS was offered means someone took it off
        the list the client saw."""
        client = yield defer.Deferred.fromCoroutine(self.connect(tls="1.3"))
        scram = ScramClient("alice", "pencil", flag="y")
        line = yield defer.Deferred.fromCoroutine(
            self.dialogue.begin(client, "SCRAM-SHA-256", scram.first())
        )
        self.assertTrue(self.dialogue.refused(line), line)
        # Without -PLUS on the list (no TLS), "y" is a client that can bind.
        client = yield defer.Deferred.fromCoroutine(self.connect())
        scram = ScramClient("alice", "pencil", flag="y")
        yield defer.Deferred.fromCoroutine(self.logs_in(client, scram, "SCRAM-SHA-256"))


def _client_tls(version: str) -> ssl.CertificateOptions:
    if version == "1.2":
        return ssl.CertificateOptions(verify=False, lowerMaximumSecurityTo=ssl.TLSVersion.TLSv1_2)
    return ssl.CertificateOptions(verify=False, raiseMinimumTo=ssl.TLSVersion.TLSv1_3)


class _InPostgres(_ScramOverSockets):
    """The same, with the users in the ``users`` table."""

    def make_users(self) -> tuple[Any, Any]:
        pgcluster.require()
        from mailsrv.auth.pgusers import PostgresChecker, add_user

        storage = pgcluster.new_storage(self, pgcluster.new_dsn(), pool_size=2)
        conn = storage.db.connect()
        try:
            for name, secret in USERS.items():
                add_user(conn, name, secret)
        finally:
            conn.close()
        return PostgresChecker(storage.db, reactor=cast(IReactorThreads, reactor)), storage

    def setUp(self) -> Any:
        # A Deferred, which trial waits for (typed Any: unittest's is None).
        return self._set_up()

    @defer.inlineCallbacks
    def _set_up(self) -> Any:
        super().setUp()
        from tests.test_storage_postgres import wait_until

        self.checker.any_scram()  # the first look-up starts in the background
        yield defer.Deferred.fromCoroutine(wait_until(self.checker.any_scram, "SCRAM users"))


class ImapUsersFileTests(_ScramOverSockets, unittest.TestCase):
    dialogue = _Imap()


class Pop3UsersFileTests(_ScramOverSockets, unittest.TestCase):
    dialogue = _Pop3()


class ImapPostgresTests(_InPostgres, unittest.TestCase):
    dialogue = _Imap()


class Pop3PostgresTests(_InPostgres, unittest.TestCase):
    dialogue = _Pop3()


class FailureDelayTests(unittest.SynchronousTestCase):
    """The error challenge is a failed login's answer: it comes
    ``failure_delay`` after the proof, as NO does after a wrong PLAIN
    password, so a guesser learns nothing sooner by SCRAM."""

    def setUp(self) -> None:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(f"alice:{DOVEADM_PENCIL}\n")
        checker = PasswdFileChecker(PasswdFile(path), run_in_thread=False)
        self.clock = Clock()
        self.portal = Portal(MailRealm(MemoryStorage()), [checker])
        self.policy = SessionPolicy(
            failure_delay=2.0,
            max_failures=3,
            sasl=SaslServices(scram=checker, scram_available=checker.any_scram),
        )

    def exchange(self, factory: Any, begin: bytes, cancel: bytes) -> None:
        server = factory.buildProtocol(None)
        transport = StringTransport()
        server.makeConnection(transport)
        transport.clear()
        scram = ScramClient("alice", "pencil")
        server.dataReceived(begin + base64.b64encode(scram.first()) + b"\r\n")
        first = base64.b64decode(transport.value()[2:].strip())
        transport.clear()
        server.dataReceived(base64.b64encode(scram.final(first, password=b"x")) + b"\r\n")
        self.assertEqual(transport.value(), b"")
        self.clock.advance(1.9)
        self.assertEqual(transport.value(), b"")
        self.clock.advance(0.1)
        self.assertEqual(transport.value(), b"+ " + base64.b64encode(b"e=invalid-proof") + b"\r\n")
        transport.clear()
        # The answer is due already: the cancel gets it at once.
        server.dataReceived(cancel + b"\r\n")
        self.answer = transport.value()
        server.connectionLost(None)

    def test_imap(self) -> None:
        factory = IMAP4ServerFactory(self.portal, self.policy, clock=self.clock)
        self.exchange(factory, b"A AUTHENTICATE SCRAM-SHA-256 ", b"*")
        self.assertEqual(self.answer, b"A NO [AUTHENTICATIONFAILED] Authentication failed\r\n")

    def test_pop3(self) -> None:
        factory = POP3Factory(self.portal, self.policy, clock=self.clock)
        self.exchange(factory, b"AUTH SCRAM-SHA-256 ", b"*")
        self.assertEqual(self.answer, b"-ERR [AUTH] Authentication failed.\r\n")
