"""What the POP3 tests share: users and mail over the memory backend (or any
storage), one session over an in-memory transport, and the server and a
client over loopback TCP.

The maildrop is the real one (``MailRealm`` -> ``Maildrop`` -> storage);
where a test needs the storage to fail or to be slow, :class:`FaultyStorage`
(a ``MemoryStorage``) does it in the INBOX, below the maildrop.
"""

from __future__ import annotations

import base64
import contextlib
import io
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import IO, Any

from twisted.cred.portal import Portal
from twisted.internet import defer, reactor
from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.interfaces import ITLSTransport
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.trial import unittest
from zope.interface import implementer

from mailsrv.auth.checker import PasswdFileChecker
from mailsrv.auth.passwdfile import PasswdFile
from mailsrv.auth.passwords import hash_password
from mailsrv.auth.realm import MailRealm
from mailsrv.errors import MailboxInUse
from mailsrv.interfaces import SEEN, IMailbox, IStorage, StoreResult
from mailsrv.policy import SessionPolicy
from mailsrv.pop3 import POP3, POP3Factory
from mailsrv.storage.maildrop import Maildrop
from mailsrv.storage.memory import MemoryAccount, MemoryMailbox, MemoryStorage
from tests.helpers import at_once

PLAINTEXT_REFUSED = (
    b"-ERR [AUTH] Plaintext authentication disallowed on non-secure (SSL/TLS) connections.\r\n"
)
AUTH_FAILED = b"-ERR [AUTH] Authentication failed.\r\n"
IN_USE = b"-ERR [IN-USE] Mailbox is locked by another POP3 session.\r\n"

MESSAGE_1 = b"From: a@example.org\r\nSubject: one\r\n\r\nHello\r\n.hidden dot\r\n..two dots\r\n"
MESSAGE_2 = b"Subject: two\r\n\r\nline 1\r\nline 2\r\nline 3\r\n"
MESSAGE_3 = b"Subject: three\r\n\r\nno final newline"
TOTAL = len(MESSAGE_1) + len(MESSAGE_2) + len(MESSAGE_3)

USERS = {
    "alice": "secret",
    "bob": "hunter2",
    "spacey": "two words here",
}

#: Every fixture's mail: alice has three messages (UIDs 1 to 3 on the memory
#: backend), spacey one, carol (who may be given a hashed password) one; bob
#: has none.
MAIL = {
    "alice": [MESSAGE_1, MESSAGE_2, MESSAGE_3],
    "spacey": [MESSAGE_2],
    "carol": [MESSAGE_1],
}


# -- storage ---------------------------------------------------------------------


class Faults:
    """What a test makes every mailbox of a :class:`FaultyStorage` do."""

    def __init__(self) -> None:
        #: Raised when a maildrop opens (the INBOX's ``check``).
        self.open_error: Exception | None = None
        #: Raised by ``store``: QUIT's commit fails.
        self.commit_error: Exception | None = None
        #: When a list, ``check`` and ``store`` return Deferreds parked here
        #: for the test to fire: a slow backend.
        self.parked: list[defer.Deferred[None]] | None = None
        #: When set, what ``open(uid)`` returns, made from the message.
        self.reader: Callable[[bytes], IO[bytes]] | None = None
        #: ``open(uid)`` answers with a Deferred (parked when :attr:`parked`
        #: is a list): a backend that reads messages asynchronously.
        self.open_deferred = False
        #: Account logouts, by user name.
        self.logouts: Counter[str] = Counter()

    def later(self, call: Callable[[], Any]) -> Any:
        if self.parked is None:
            return call()
        d: defer.Deferred[None] = defer.Deferred()
        self.parked.append(d)
        return d.addCallback(lambda _: call())

    @contextlib.contextmanager
    def suspended(self) -> Iterator[None]:
        """No fault while the test itself looks at the storage."""
        saved = (self.open_error, self.commit_error, self.parked, self.reader)
        self.open_error = self.commit_error = self.parked = self.reader = None
        try:
            yield
        finally:
            self.open_error, self.commit_error, self.parked, self.reader = saved

    def release_parked(self) -> None:
        """Let the oldest parked call go on."""
        assert self.parked
        self.parked.pop(0).callback(None)


class FaultyMailbox(MemoryMailbox):
    def __init__(self, state: Any, faults: Faults) -> None:
        super().__init__(state)
        self._faults = faults

    def check(self) -> Any:
        if self._faults.open_error is not None:
            raise self._faults.open_error
        return self._faults.later(super().check)

    def store(self, uids: Iterable[int], flags: Iterable[str], mode: str, *args: Any) -> Any:
        if self._faults.commit_error is not None:
            raise self._faults.commit_error
        return self._faults.later(lambda: self._store(uids, flags, mode, *args))

    def _store(
        self, uids: Iterable[int], flags: Iterable[str], mode: str, *args: Any
    ) -> StoreResult:
        return super().store(uids, flags, mode, *args)

    def open(self, uid: int) -> Any:
        if not self._faults.open_deferred:
            return self._open(uid)
        if self._faults.parked is None:
            return defer.maybeDeferred(self._open, uid)
        return self._faults.later(lambda: self._open(uid))

    def _open(self, uid: int) -> IO[bytes]:
        source = super().open(uid)
        if self._faults.reader is None:
            return source
        return self._faults.reader(source.read())


class FaultyAccount(MemoryAccount):
    def __init__(self, username: str, faults: Faults) -> None:
        super().__init__(username)
        self._faults = faults

    def get_mailbox(self, name: str) -> MemoryMailbox:
        return FaultyMailbox(self._state(name), self._faults)

    def logout(self) -> None:
        self._faults.logouts[self.username] += 1
        super().logout()


class FaultyStorage(MemoryStorage):
    """The memory backend, failing or slow where :attr:`faults` says."""

    def __init__(self) -> None:
        super().__init__()
        self.faults = Faults()

    def account(self, username: str, home: str | None = None) -> MemoryAccount:
        if isinstance(username, str) and username and username not in self._accounts:
            self._accounts[username] = FaultyAccount(username, self.faults)
        return super().account(username, home)


# -- users, policy, portal --------------------------------------------------------


def write_passwd(path: str, hashed_users: dict[str, str] | None = None) -> PasswdFile:
    """A users file: the USERS with PLAIN secrets (so CRAM-MD5 and APOP work)
    and ``hashed_users`` with bcrypt hashes (so they cannot)."""
    lines = [f"{name}:{hash_password(pw, 'PLAIN')}\n" for name, pw in USERS.items()]
    for name, pw in (hashed_users or {}).items():
        lines.append(f"{name}:{hash_password(pw, 'BLF-CRYPT', rounds=4)}\n")
    with open(path, "w") as f:
        f.writelines(lines)
    return PasswdFile(path)


class Fixture:
    """Users, their ``mail`` in ``storage`` (by default a
    :class:`FaultyStorage` that behaves), a Portal over the real realm and a
    policy for one test."""

    def __init__(
        self,
        test: unittest.SynchronousTestCase,
        *,
        storage: IStorage | None = None,
        mail: Mapping[str, Sequence[bytes]] = MAIL,
        in_thread: bool = False,
        hashed_users: dict[str, str] | None = None,
        **policy: Any,
    ) -> None:
        self.test = test
        self.storage = storage if storage is not None else FaultyStorage()
        self.passwd = write_passwd(test.mktemp(), hashed_users)
        self.checker = PasswdFileChecker(self.passwd, run_in_thread=in_thread)
        self.portal = Portal(MailRealm(self.storage), [self.checker])
        settings: dict[str, Any] = {
            "hostname": "mail.test",
            "failure_delay": 2.0,
            "max_failures": 3,
            "challenge_auth_available": self.checker.any_plaintext,
        }
        settings.update(policy)
        self.policy = SessionPolicy(**settings)
        for user, messages in mail.items():
            for message in messages:
                self.deliver(message, user)

    @property
    def faults(self) -> Faults:
        assert isinstance(self.storage, FaultyStorage)
        return self.storage.faults

    def inbox(self, user: str = "alice") -> IMailbox:
        return at_once(at_once(self.storage.account(user)).get_mailbox("INBOX"))

    def deliver(self, message: bytes, user: str = "alice") -> int:
        return at_once(self.inbox(user).append(io.BytesIO(message)))

    def uids(self, user: str = "alice") -> list[int]:
        """The messages in the user's INBOX now."""
        uids = at_once(self.inbox(user).uids())
        return list(uids)

    def seen(self, user: str = "alice") -> list[int]:
        """The user's messages flagged \\Seen."""
        inbox = self.inbox(user)
        uids = at_once(inbox.uids())
        return [m.uid for m in at_once(inbox.fetch(uids)) if SEEN in m.flags]

    def locked(self, user: str = "alice") -> bool:
        """Does a POP3 session hold the user's maildrop?  (Asked the way
        another session would: by trying to open it.)"""
        quiet = (
            self.storage.faults.suspended()
            if isinstance(self.storage, FaultyStorage)
            else contextlib.nullcontext()
        )
        maildrop = Maildrop(at_once(self.storage.account(user)))
        results: list[Any] = []
        with quiet:
            maildrop.open().addBoth(results.append)
        [result] = results
        if isinstance(result, Failure):
            result.trap(MailboxInUse)
            return True
        maildrop.release()
        return False


# -- one session in memory ------------------------------------------------------------


@implementer(ITLSTransport)
class TLSStringTransport(StringTransport):  # type: ignore[misc]  # startTLS is enough here
    """A StringTransport that can "start TLS", recording when it did and
    what had been written before."""

    tls_context: Any = None
    written_before_tls = b""

    def startTLS(self, contextFactory: Any, normal: bool = True) -> None:
        self.tls_context = contextFactory
        self.written_before_tls = self.value()

    # ITLSTransport extends ITCPTransport: the protocol switches Nagle off.
    no_delay = False

    def setTcpNoDelay(self, enabled: bool) -> None:
        self.no_delay = enabled


class PausingTransport(TLSStringTransport):
    """Behaves like a socket whose buffer fills after every write: the
    registered streaming producer is paused until the test resumes it."""

    def write(self, data: bytes) -> None:
        super().write(data)
        if self.producer is not None and self.streaming:
            self.producer.pauseProducing()


class Session:
    """One POP3 session over an in-memory transport, driven synchronously;
    dropped (as a vanished client) when the test ends, if still open."""

    def __init__(
        self,
        fixture: Fixture,
        *,
        peer: str = "127.0.0.1",
        secure: bool = False,
        clock: Clock | None = None,
        transport: StringTransport | None = None,
    ) -> None:
        self.fixture = fixture
        self.clock = clock or Clock()
        factory = POP3Factory(fixture.portal, fixture.policy, implicit_tls=secure, clock=self.clock)
        address = IPv4Address("TCP", peer, 40110)
        self.protocol: POP3 = factory.buildProtocol(address)
        self.transport = transport if transport is not None else TLSStringTransport()
        self.transport.peerAddr = address
        self.protocol.makeConnection(self.transport)
        self.greeting = self.output()
        fixture.test.addCleanup(self.drop)

    def output(self) -> bytes:
        data: bytes = self.transport.value()
        self.transport.clear()
        return data

    def send(self, data: bytes) -> bytes:
        """Send raw bytes; return everything the server answered at once."""
        self.protocol.dataReceived(data)
        return self.output()

    def command(self, line: str | bytes) -> bytes:
        raw = line.encode() if isinstance(line, str) else line
        return self.send(raw + b"\r\n")

    def login(self, user: str = "alice", password: str | None = None) -> bytes:
        password = USERS[user] if password is None else password
        self.command(f"USER {user}")
        return self.command(f"PASS {password}")

    @property
    def closed(self) -> bool:
        return bool(self.transport.disconnecting)

    def drop(self) -> None:
        """The client vanishes (or the server process crashes) mid-session."""
        if not self.protocol.lost:
            self.protocol.connectionLost(None)


def banner_of(greeting: bytes) -> bytes:
    match = re.search(rb"<[^<>]+>", greeting)
    assert match is not None, greeting
    return match.group(0)


def multiline(status: bytes, *lines: bytes) -> bytes:
    return status + b"\r\n" + b"".join(line + b"\r\n" for line in lines) + b".\r\n"


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


def retr_body(message: bytes) -> bytes:
    """What RETR must send for ``message``: dot-stuffed, CRLF-terminated."""
    lines = message.split(b"\r\n")
    if lines[-1] == b"":
        lines.pop()
    return b"".join((b"." + line if line.startswith(b".") else line) + b"\r\n" for line in lines)


# -- over loopback TCP ---------------------------------------------------------------


class LineClient(Protocol):
    """A test client: raw bytes in, and waits for whole responses."""

    def __init__(self) -> None:
        self.buffer = b""
        self._waiter: tuple[Callable[[], bytes | None], defer.Deferred[bytes]] | None = None
        self.lost: defer.Deferred[None] = defer.Deferred()
        self.connected_ = True

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        self._check()

    def connectionLost(self, reason: Any = None) -> None:
        self.connected_ = False
        if self._waiter is not None:
            _, d = self._waiter
            self._waiter = None
            d.errback(ConnectionError(f"connection closed; unread: {self.buffer!r}"))
        self.lost.callback(None)

    def _check(self) -> None:
        if self._waiter is None:
            return
        take, d = self._waiter
        result = take()
        if result is not None:
            self._waiter = None
            d.callback(result)

    def _wait(self, take: Callable[[], bytes | None]) -> defer.Deferred[bytes]:
        d: defer.Deferred[bytes] = defer.Deferred()
        self._waiter = (take, d)
        if not self.connected_:
            self.connectionLost()
        else:
            self._check()
        return d

    def line(self) -> defer.Deferred[bytes]:
        def take() -> bytes | None:
            end = self.buffer.find(b"\r\n")
            if end < 0:
                return None
            line, self.buffer = self.buffer[: end + 2], self.buffer[end + 2 :]
            return line

        return self._wait(take)

    def response(self) -> defer.Deferred[bytes]:
        """One multi-line response (or a single -ERR line)."""

        def take() -> bytes | None:
            if self.buffer.startswith(b"-ERR"):
                end = self.buffer.find(b"\r\n")
                if end < 0:
                    return None
                end += 2
            else:
                end = self.buffer.find(b"\r\n.\r\n")
                if end < 0:
                    if self.buffer.startswith(b"+OK\r\n.\r\n"):
                        end = 3
                    else:
                        return None
                end += 5
            data, self.buffer = self.buffer[:end], self.buffer[end:]
            return data

        return self._wait(take)

    def send(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    @property
    def _tcp(self) -> Any:
        """The transport: TCP (and TLS) transports do more than ITransport says."""
        return self.transport

    def abort(self) -> None:
        """Vanish: RST, no goodbye."""
        self._tcp.abortConnection()

    def pause_reading(self) -> None:
        self._tcp.pauseProducing()

    def start_tls(self, context: Any) -> None:
        self._tcp.startTLS(context)

    async def command(self, line: bytes) -> bytes:
        self.send(line + b"\r\n")
        return await self.line()


class TrackingFactory(POP3Factory):
    """Remembers its sessions so a test can wait until each has ended."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ended: list[defer.Deferred[None]] = []

    def buildProtocol(self, addr: Any) -> POP3:
        protocol = super().buildProtocol(addr)
        ended: defer.Deferred[None] = defer.Deferred()
        original = protocol.connectionLost

        def connectionLost(reason: Any = None) -> None:
            try:
                original(reason)
            finally:  # an exception is the test's failure; a hang would hide it
                ended.callback(None)

        protocol.connectionLost = connectionLost  # type: ignore[method-assign]
        self.ended.append(ended)
        return protocol


class TCPServer:
    """The POP3 server on a loopback port, plain or implicit TLS."""

    def __init__(
        self,
        test: unittest.SynchronousTestCase,
        fixture: Fixture,
        *,
        implicit_tls: bool = False,
        clock: Clock | None = None,
    ) -> None:
        self.test = test
        self.factory = TrackingFactory(
            fixture.portal, fixture.policy, implicit_tls=implicit_tls, clock=clock
        )
        listening: Any = self.factory
        if implicit_tls:
            listening = TLSMemoryBIOFactory(fixture.policy.tls_context, False, self.factory)
        self.port: Any = reactor.listenTCP(0, listening, interface="127.0.0.1")
        self.clients: list[LineClient] = []
        test.addCleanup(self.stop)

    async def connect(self, tls: Any = None) -> tuple[LineClient, bytes]:
        """A connected client and the greeting it got."""
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.port.getHost().port)
        client = await connectProtocol(endpoint, LineClient())
        self.clients.append(client)
        if tls is not None:
            client.start_tls(tls)
        return client, await client.line()

    async def login(self, user: str = "alice") -> LineClient:
        """A client logged in as ``user``."""
        client, _ = await self.connect()
        await client.command(b"USER " + user.encode())
        answer = await client.command(b"PASS " + USERS[user].encode())
        assert answer.startswith(b"+OK Logged in"), answer
        return client

    async def stop(self) -> None:
        for client in self.clients:
            if client.connected_:
                client.abort()
            await client.lost
        for ended in self.factory.ended:
            await ended
        await defer.maybeDeferred(self.port.stopListening)
