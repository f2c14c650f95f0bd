"""What the IMAP tests share: a client over loopback TCP, a factory that
records its sessions, a TestCase with a server over :class:`MemoryStorage`,
an in-process session over a StringTransport, and the few faults some tests
inject into the memory backend (a slow SELECT, a failing deselect, a
mailbox found gone)."""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable, Iterable
from typing import Any

from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.portal import Portal
from twisted.internet import defer, protocol, reactor, ssl
from twisted.internet.interfaces import IAddress
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase

from mailsrv.auth.realm import MailRealm
from mailsrv.errors import NoSuchMailbox
from mailsrv.imap.protocol import IMAP4Server, IMAP4ServerFactory
from mailsrv.interfaces import DEFAULT_FOLDERS
from mailsrv.policy import SessionPolicy
from mailsrv.storage.memory import MemoryAccount, MemoryMailbox, MemoryStorage

__all__ = [
    "CAPS_BEFORE",
    "DATE",
    "Client",
    "RecordingFactory",
    "ServerTestBase",
    "bare_storage",
    "count_logouts",
    "deliver",
    "gone_on_claim",
    "in_process",
    "slow_next_select",
    "tls_options",
]

#: The internal date of the messages tests deliver, unless they say.
DATE = datetime.datetime(2024, 3, 1, 12, 0, 0, tzinfo=datetime.UTC)

#: CAPABILITY with the default policy, before the AUTH= and TLS entries.
CAPS_BEFORE = (
    b"IMAP4rev1 IMAP4rev2 LITERAL+ SASL-IR ID ENABLE UTF8=ACCEPT IDLE NAMESPACE UNSELECT UIDPLUS "
    b"MOVE CHILDREN "
    b"SPECIAL-USE CREATE-SPECIAL-USE LIST-EXTENDED LIST-STATUS STATUS=SIZE BINARY CONDSTORE "
    b"QRESYNC ESEARCH SEARCHRES SORT SORT=DISPLAY THREAD=ORDEREDSUBJECT THREAD=REFERENCES "
    b"THREAD=REFS ESORT CONTEXT=SEARCH CONTEXT=SORT WITHIN SAVEDATE OBJECTID PREVIEW "
    b"MULTIAPPEND CATENATE REPLACE APPENDLIMIT=67108864 UNAUTHENTICATE"
)


def bare_storage(*users: str) -> MemoryStorage:
    """A MemoryStorage whose ``users`` have an INBOX and nothing else (no
    default folders), so LIST answers show what a test made."""
    storage = MemoryStorage()
    for user in users:
        account = storage.account(user)
        for name, _use in DEFAULT_FOLDERS:
            account.delete_mailbox(name)
    return storage


def deliver(
    storage: MemoryStorage,
    data: bytes,
    flags: Iterable[str] = (),
    date: datetime.datetime = DATE,
    folder: str = "INBOX",
    user: str = "joe",
) -> int:
    """Deliver a message as the MTA would; its UID."""
    return storage.deliver(user, data, folder, flags, date)


# -- the client ---------------------------------------------------------------------


class Client(protocol.Protocol):
    """Collects everything the server sends; waits on what the test expects."""

    def __init__(self) -> None:
        self.buffer = b""
        self.waiters: list[tuple[Callable[[bytes], int], defer.Deferred[bytes]]] = []
        self.lost: defer.Deferred[None] = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        self._check()

    def _check(self) -> None:
        for waiter in list(self.waiters):
            predicate, d = waiter
            end = predicate(self.buffer)
            if end >= 0:
                self.waiters.remove(waiter)
                taken, self.buffer = self.buffer[:end], self.buffer[end:]
                d.callback(taken)

    def connectionLost(self, reason: Any = None) -> None:
        for _, d in self.waiters:
            d.errback(AssertionError(f"connection lost; received {self.buffer!r}"))
        self.waiters = []
        self.lost.callback(None)

    def wait(self, predicate: Callable[[bytes], int]) -> defer.Deferred[bytes]:
        d: defer.Deferred[bytes] = defer.Deferred()
        self.waiters.append((predicate, d))
        self._check()
        return d

    def until_tagged(self, tag: str) -> defer.Deferred[bytes]:
        """Everything up to and including the tagged response for ``tag``."""
        marker = tag.encode() + b" "

        def predicate(data: bytes) -> int:
            start = 0
            while True:
                if data.startswith(marker, start):
                    end = data.find(b"\r\n", start)
                    return end + 2 if end >= 0 else -1
                nxt = data.find(b"\r\n", start)
                if nxt < 0:
                    return -1
                start = nxt + 2

        return self.wait(predicate)

    def until(self, text: bytes) -> defer.Deferred[bytes]:
        """Everything up to the end of the line containing ``text``."""

        def predicate(data: bytes) -> int:
            at = data.find(text)
            if at < 0:
                return -1
            end = data.find(b"\r\n", at)
            return end + 2 if end >= 0 else -1

        return self.wait(predicate)

    def send(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def command(self, tag: str, text: bytes | str) -> defer.Deferred[bytes]:
        raw = text.encode() if isinstance(text, str) else text
        self.send(tag.encode() + b" " + raw + b"\r\n")
        return self.until_tagged(tag)


class RecordingFactory(IMAP4ServerFactory):
    """Keeps its sessions (``sessions``) and a Deferred per session firing
    when its connectionLost has run (``lost``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sessions: list[IMAP4Server] = []
        self.lost: list[defer.Deferred[None]] = []

    def buildProtocol(self, addr: IAddress | None) -> IMAP4Server:
        server = super().buildProtocol(addr)
        done: defer.Deferred[None] = defer.Deferred()
        original = server.connectionLost

        def connection_lost(reason: Any = None) -> None:
            try:
                original(reason)
            finally:  # an exception is the test's failure; a hang would hide it
                done.callback(None)

        server.connectionLost = connection_lost  # type: ignore[method-assign]
        self.sessions.append(server)
        self.lost.append(done)
        return server


def tls_options(directory: str) -> ssl.CertificateOptions:
    """Server TLS options with a fresh self-signed certificate."""
    from mailsrv.tls import generate_self_signed

    os.makedirs(directory, exist_ok=True)
    cert, key = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    generate_self_signed(cert, key, "localhost")
    with open(cert, "rb") as c, open(key, "rb") as k:
        pem = c.read() + k.read()
    options: ssl.CertificateOptions = ssl.PrivateCertificate.loadPEM(pem).options()
    return options


@defer.inlineCallbacks
def shut_down(
    clients: Iterable[Client], server_lost: Iterable[defer.Deferred[Any]], port: Any
) -> Any:
    """A socket test's tearDown: drop the clients, wait for both ends of
    every connection to be gone, then stop listening."""
    clients = list(clients)
    for client in clients:
        if client.transport is not None:
            client.transport.loseConnection()
    for client in clients:
        yield client.lost
    yield defer.gatherResults(list(server_lost))
    yield port.stopListening()


class ServerTestBase(TestCase):
    """A server on a loopback port over a MemoryStorage in which joe
    (password ``secret``) and ann (``pass``) have an INBOX and nothing else."""

    policy = SessionPolicy(failure_delay=0.0)

    def setUp(self) -> None:
        self.storage = self.make_storage()
        checker = InMemoryUsernamePasswordDatabaseDontUse(joe=b"secret", ann=b"pass")
        self.portal = Portal(MailRealm(self.storage), [checker])
        self.factory = self.make_factory()
        self.port: Any = reactor.listenTCP(0, self.factory, interface="127.0.0.1")
        self.clients: list[Client] = []

    def make_storage(self) -> MemoryStorage:
        """The storage served (a subclass may serve another backend)."""
        return bare_storage("joe", "ann")

    def make_factory(self) -> RecordingFactory:
        return RecordingFactory(self.portal, self.policy)

    def tearDown(self) -> Any:
        # A Deferred, which trial waits for (typed Any: unittest's is None).
        return self._tear_down()

    def _tear_down(self) -> defer.Deferred[None]:
        return shut_down(self.clients, self.factory.lost, self.port)

    def account(self, name: str = "joe") -> MemoryAccount:
        return self.storage.account(name)

    @property
    def inbox(self) -> MemoryMailbox:
        return self.account().get_mailbox("INBOX")

    def mailbox(self, name: str) -> MemoryMailbox:
        return self.account().get_mailbox(name)

    def deliver(
        self,
        data: bytes,
        flags: Iterable[str] = (),
        date: datetime.datetime = DATE,
        folder: str = "INBOX",
    ) -> int:
        return deliver(self.storage, data, flags, date, folder)

    def contents(self, name: str = "INBOX") -> dict[int, bytes]:
        """``{uid: message}`` of a mailbox of joe's."""
        mailbox = self.mailbox(name)
        return {uid: mailbox.open(uid).read() for uid in mailbox.uids()}

    @defer.inlineCallbacks
    def connect(self) -> Any:
        creator = protocol.ClientCreator(reactor, Client)
        client = yield creator.connectTCP("127.0.0.1", self.port.getHost().port)
        self.clients.append(client)
        greeting = yield client.until(b"\r\n")
        self.assertTrue(greeting.startswith(b"* OK [CAPABILITY IMAP4rev1 "), greeting)
        return client

    @defer.inlineCallbacks
    def login(self, user: str = "joe", password: str = "secret") -> Any:
        client = yield self.connect()
        response = yield client.command("L", f"LOGIN {user} {password}")
        self.assertTrue(response.startswith(b"L OK [CAPABILITY IMAP4rev1 "), response)
        return client

    @defer.inlineCallbacks
    def selected(self, mailbox: str = "INBOX") -> Any:
        client = yield self.login()
        response = yield client.command("S", f"SELECT {mailbox}")
        self.assertIn(b"S OK [READ-WRITE]", response)
        return client


def in_process(
    storage: MemoryStorage | None = None,
    policy: SessionPolicy | None = None,
    clock: Clock | None = None,
    transport: StringTransport | None = None,
    **users: bytes,
) -> tuple[IMAP4Server, StringTransport]:
    """A server session over a StringTransport (greeting cleared), driven by
    ``clock``; ``users`` are name=password pairs (default joe=secret)."""
    checker = InMemoryUsernamePasswordDatabaseDontUse(**(users or {"joe": b"secret"}))
    portal = Portal(MailRealm(storage if storage is not None else MemoryStorage()), [checker])
    if policy is None:
        policy = SessionPolicy(failure_delay=0.0, plaintext="always")
    server = IMAP4ServerFactory(portal, policy, clock=clock or Clock()).buildProtocol(None)
    transport = transport if transport is not None else StringTransport()
    server.makeConnection(transport)
    transport.clear()
    return server, transport


# -- faults injected into the memory backend -----------------------------------------


def slow_next_select(test: SynchronousTestCase) -> defer.Deferred[None]:
    """The next ``get_mailbox`` (SELECT, APPEND, COPY...) waits until the
    returned Deferred fires: storage that is slow to answer."""
    gate: defer.Deferred[None] = defer.Deferred()
    original = MemoryAccount.get_mailbox
    waited: list[bool] = []

    def get_mailbox(account: MemoryAccount, name: str) -> Any:
        if waited:
            return original(account, name)
        waited.append(True)
        return gate.addCallback(lambda _: original(account, name))

    test.patch(MemoryAccount, "get_mailbox", get_mailbox)
    return gate


def count_logouts(test: SynchronousTestCase) -> list[str]:
    """The users whose avatar was logged out, in order."""
    logouts: list[str] = []
    test.patch(MemoryAccount, "logout", lambda account: logouts.append(account.username))
    return logouts


def gone_on_claim(test: SynchronousTestCase) -> None:
    """Mailboxes are found deleted by the next change they announce (as
    Maildir finds a folder gone when it looks for new mail)."""

    def claim_recent(mailbox: MemoryMailbox) -> frozenset[int]:
        raise NoSuchMailbox(f"mailbox {mailbox.name!r} was deleted")

    test.patch(MemoryMailbox, "claim_recent", claim_recent)
