"""A real IMAP, POP3 and LMTP server for a mail client's test suite.

:class:`MailServer` runs mailsrv's own protocols, on port 0 of the loopback
interface, over the memory backend or a temporary Maildir, with users and
mail a test makes.  It runs either

* in a background thread, on a reactor of its own (:meth:`MailServer.start_thread`,
  ``with MailServer() as srv:`` or :func:`running`), for synchronous code:
  imaplib, imapclient, poplib, or an asyncio loop in the test's thread; or
* in the current process's reactor (:meth:`MailServer.start`, what
  :mod:`mailsrv.testing.trial` does), for Twisted tests.

Everything a test asserts on is here: the mail (:meth:`~MailServer.messages`,
with flags, keywords and dates), the mailboxes, and each connection's
transcript.  And the server can behave like servers a client must also
cope with (:meth:`~MailServer.hide_capabilities`, :meth:`~MailServer.refuse`,
:meth:`~MailServer.drop_after`, :meth:`~MailServer.delay`,
:meth:`~MailServer.alert`), through :mod:`mailsrv.hooks`.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import ssl
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import attrs
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernameHashedPassword, IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import Portal
from twisted.internet import defer, threads
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python import threadable
from zope.interface import implementer

from mailsrv.auth.realm import MailRealm
from mailsrv.config import TLSSection
from mailsrv.errors import NoSuchMailbox
from mailsrv.hooks import CommandHook, Drop
from mailsrv.imap.protocol import IMAP4ServerFactory
from mailsrv.interfaces import IStorage, maybe_deferred
from mailsrv.lmtp.server import LMTPFactory
from mailsrv.policy import SessionPolicy
from mailsrv.pop3.server import POP3Factory
from mailsrv.storage.maildir import MaildirStorage
from mailsrv.storage.memory import MemoryStorage
from mailsrv.testing.emulation import Emulation
from mailsrv.testing.reactor_thread import ReactorThread
from mailsrv.testing.seeding import MessageSource, StoredMessage, message_bytes, message_date
from mailsrv.testing.transcript import RecordingFactory, Transcript
from mailsrv.tls import generate_self_signed, server_context

__all__ = ["DEFAULT_PASSWORD", "DEFAULT_USER", "MailServer", "running"]

DEFAULT_USER = "alice"
DEFAULT_PASSWORD = "secret"
PROTOCOLS = ("imap", "pop3", "lmtp")


@implementer(ICredentialsChecker)
class _Users:
    """Plaintext passwords in memory: LOGIN, PLAIN, CRAM-MD5 and APOP all work."""

    credentialInterfaces = (IUsernamePassword, IUsernameHashedPassword)

    def __init__(self) -> None:
        self.passwords: dict[str, bytes] = {}

    def requestAvatarId(self, credentials: Any) -> Any:
        raw = credentials.username
        name = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
        secret = self.passwords.get(name)
        if secret is None:
            return defer.fail(UnauthorizedLogin())

        def checked(ok: bool) -> str:
            if not ok:
                raise UnauthorizedLogin()
            return name

        return defer.maybeDeferred(credentials.checkPassword, secret).addCallback(checked)

    def record(self, name: str) -> _UserRecord | None:
        """LMTP's user look-up."""
        return _UserRecord(name) if name in self.passwords else None


@attrs.frozen
class _UserRecord:
    name: str
    home: str | None = None


class MailServer:
    """An in-process mail server for tests.  All options are keywords:

    ``users``: ``{name: password}``; by default one user, ``alice`` with
    password ``secret`` (:attr:`user`, :attr:`password`).
    ``storage``: ``"memory"`` (default), ``"maildir"`` (a temporary
    directory, removed at stop; :meth:`maildir` gives a user's path) or any
    :class:`~mailsrv.interfaces.IStorage`.
    ``protocols``: which listeners to start, of ``"imap"``, ``"pop3"``,
    ``"lmtp"`` (all by default).
    ``tls``: make a throwaway certificate (:attr:`certificate`) and offer
    STARTTLS/STLS on the plain ports and implicit TLS on :attr:`imaps_port`
    and :attr:`pop3s_port`.
    ``plaintext``: where passwords may go unencrypted: ``"always"``
    (default), ``"loopback"`` or ``"never"`` (then a client must use TLS).
    ``host``: the address to listen on (``127.0.0.1``); ``hostname``: the
    server's name in greetings and challenges.
    ``challengers``: extra SASL mechanisms, twisted.mail style
    (:mod:`mailsrv.auth.challengers`).  ``policy``: a
    :class:`~mailsrv.policy.SessionPolicy` to start from (timeouts,
    limits); the options above override its fields.
    """

    def __init__(
        self,
        *,
        users: Mapping[str, str] | None = None,
        storage: str | IStorage = "memory",
        protocols: Iterable[str] = PROTOCOLS,
        tls: bool = False,
        plaintext: str = "always",
        host: str = "127.0.0.1",
        hostname: str = "localhost",
        challengers: Mapping[str | bytes, Any] | None = None,
        policy: SessionPolicy | None = None,
    ) -> None:
        self.protocols = tuple(p.lower() for p in protocols)
        unknown = set(self.protocols) - set(PROTOCOLS)
        if unknown:
            raise ValueError(f"unknown protocol(s) {sorted(unknown)}; choose from {PROTOCOLS}")
        if plaintext not in ("always", "loopback", "never"):
            raise ValueError(f"plaintext must be 'always', 'loopback' or 'never': {plaintext!r}")
        self.host = host
        self.hostname = hostname
        self.tls = tls
        self._plaintext = plaintext
        self._challengers = dict(challengers or {})
        self._base_policy = policy if policy is not None else SessionPolicy(failure_delay=0.0)
        self._storage_option = storage
        self._users = _Users()
        for name, password in (
            users if users is not None else {DEFAULT_USER: DEFAULT_PASSWORD}
        ).items():
            self._users.passwords[name] = password.encode("utf-8")
        self.emulation = Emulation()
        self._transcripts: list[Transcript] = []
        self._factories: list[RecordingFactory] = []
        self._ports: dict[str, Any] = {}
        self._listening: list[Any] = []
        self._thread: ReactorThread | None = None
        self._reactor: Any = None
        self._directory: str | None = None
        self.storage: Any = None
        #: The sessions' policy, once started.
        self.policy: SessionPolicy | None = None
        #: The throwaway certificate's PEM file (with ``tls=True``): what a
        #: client trusts (``ssl.create_default_context(cafile=...)``).
        self.certificate: str | None = None

    # -- starting and stopping -------------------------------------------------------

    def start(self, reactor: Any = None) -> MailServer:
        """Listen on ``reactor`` (the global one by default), which must be
        running in this thread or be about to (trial, pytest-twisted, an
        application).  Blocking clients must then run in other threads."""
        if self._reactor is not None:
            raise RuntimeError("this MailServer has already been started")
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        self._reactor = reactor
        try:
            self._listen()
        except BaseException:
            self._close_listeners_now()
            self._remove_directory()
            raise
        return self

    def stop(self) -> defer.Deferred[None]:
        """Stop listening, cut the open connections, and remove the temporary
        Maildir and certificate; fires once every connection is closed."""
        return defer.Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        try:
            await defer.gatherResults(
                [maybe_deferred(port.stopListening) for port in self._listening],
                consumeErrors=True,
            )
            self._listening = []
            lost = []
            for factory in self._factories:
                for connection in list(factory.open):
                    lost.append(connection.lost)
                    transport: Any = connection.transport
                    transport.abortConnection()
            await defer.gatherResults(lost, consumeErrors=True)
        finally:
            if isinstance(self.storage, MaildirStorage) and self._storage_option == "maildir":
                self.storage.close()  # its index files, before the directory goes
            self._remove_directory()

    def start_thread(self) -> MailServer:
        """Start a reactor of this server's own in a background thread and
        listen there; returns once the ports are open."""
        if self._reactor is not None:
            raise RuntimeError("this MailServer has already been started")
        thread = ReactorThread()
        self._thread = thread
        try:
            thread.call(self.start, thread.reactor)
        except BaseException:
            thread.stop()
            self._thread = None
            raise
        return self

    def stop_thread(self) -> None:
        """Stop the server and its reactor thread; nothing of it is left
        (no thread, no port, no file)."""
        thread = self._thread
        if thread is None:
            raise RuntimeError("this MailServer was not started with start_thread()")
        try:
            thread.call(self.stop)
        finally:
            thread.stop()
            self._thread = None

    def __enter__(self) -> MailServer:
        return self.start_thread()

    def __exit__(self, *exc: object) -> None:
        self.stop_thread()

    def _listen(self) -> None:
        reactor: Any = self._reactor
        self.storage = self._make_storage()
        tls_context = self._make_tls() if self.tls else None
        policy = attrs.evolve(
            self._base_policy,
            hostname=self.hostname,
            tls_context=tls_context,
            plaintext=self._plaintext,
            challenge_auth_available=lambda: True,
            hooks=self.emulation,
        )
        if self._challengers:
            merged: dict[str | bytes, Any] = {}
            merged.update(policy.challengers)
            merged.update(self._challengers)
            policy = attrs.evolve(policy, challengers=merged)
        self.policy = policy
        self._portal = Portal(MailRealm(self.storage), [self._users])
        for protocol in self.protocols:
            if protocol == "lmtp":
                lmtp = LMTPFactory(self.storage, self._users.record, policy, clock=self._reactor)
                self._add_listener(reactor, "lmtp", "LMTP", lmtp)
                continue
            self._add_listener(reactor, protocol, protocol.upper(), self._factory(protocol, False))
            if tls_context is not None:
                secure = self._recording(self._factory(protocol, True), protocol.upper())
                wrapped = TLSMemoryBIOFactory(tls_context, False, secure, clock=self._reactor)
                port = reactor.listenTCP(0, wrapped, interface=self.host)
                self._listening.append(port)
                self._ports[protocol + "s"] = port.getHost().port

    def _factory(self, protocol: str, secure: bool) -> IMAP4ServerFactory | POP3Factory:
        kind = IMAP4ServerFactory if protocol == "imap" else POP3Factory
        return kind(self._portal, self.policy, implicit_tls=secure, clock=self._reactor)

    def _recording(self, factory: Any, name: str) -> RecordingFactory:
        recording = RecordingFactory(factory, name, self._transcripts, self._reactor)
        self._factories.append(recording)
        return recording

    def _add_listener(self, reactor: Any, key: str, name: str, factory: Any) -> None:
        port = reactor.listenTCP(0, self._recording(factory, name), interface=self.host)
        self._listening.append(port)
        self._ports[key] = port.getHost().port

    def _make_storage(self) -> Any:
        option = self._storage_option
        if option == "memory":
            return MemoryStorage()
        if option == "maildir":
            self._directory = _scratch_directory()
            # No reactor: no watcher thread, no index thread; every call
            # answers at once.  Files a test drops into a Maildir itself
            # show at the client's next NOOP/SELECT (the folder's check).
            # keep_open: every folder's index is closed at stop, not whenever
            # the garbage collector gets to it (no descriptor outlives us).
            template = os.path.join(self._directory, "{user}", "Maildir")
            return MaildirStorage(template, keep_open=True)
        if isinstance(option, str):
            raise ValueError(f"storage must be 'memory', 'maildir' or an IStorage: {option!r}")
        if not IStorage.providedBy(option):
            raise TypeError(f"storage {option!r} does not provide mailsrv.interfaces.IStorage")
        return option

    def _make_tls(self) -> Any:
        if self._directory is None:
            self._directory = _scratch_directory()
        certificate = os.path.join(self._directory, "cert.pem")
        key = os.path.join(self._directory, "key.pem")
        generate_self_signed(certificate, key, self.hostname)
        self.certificate = certificate
        return server_context(TLSSection(certificate=certificate, key=key), "mailsrv.testing")

    def _close_listeners_now(self) -> None:
        for port in self._listening:
            port.stopListening()
        self._listening = []

    def _remove_directory(self) -> None:
        directory, self._directory = self._directory, None
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)

    # -- where to connect ---------------------------------------------------------

    def port(self, name: str) -> int:
        """The port of ``"imap"``, ``"imaps"``, ``"pop3"``, ``"pop3s"`` or ``"lmtp"``."""
        try:
            return int(self._ports[name])
        except KeyError:
            raise LookupError(f"no {name} listener (started: {sorted(self._ports)})") from None

    @property
    def imap_port(self) -> int:
        return self.port("imap")

    @property
    def imaps_port(self) -> int:
        return self.port("imaps")

    @property
    def pop3_port(self) -> int:
        return self.port("pop3")

    @property
    def pop3s_port(self) -> int:
        return self.port("pop3s")

    @property
    def lmtp_port(self) -> int:
        return self.port("lmtp")

    def ssl_context(self) -> ssl.SSLContext:
        """A client context that trusts the throwaway certificate (for
        ``localhost``, ``127.0.0.1`` and ``::1``)."""
        if self.certificate is None:
            raise RuntimeError("start the server with tls=True for a certificate")
        return ssl.create_default_context(cafile=self.certificate)

    # -- users ----------------------------------------------------------------------

    @property
    def user(self) -> str:
        """The first user's name (``alice`` unless ``users`` was given)."""
        return next(iter(self._users.passwords))

    @property
    def password(self) -> str:
        return self._users.passwords[self.user].decode("utf-8")

    def add_user(self, name: str, password: str) -> None:
        """Create a user (or change a password); logins work at once."""
        self._call(self._users.passwords.__setitem__, name, password.encode("utf-8"))

    def maildir(self, user: str) -> str:
        """The Maildir root of ``user`` (``storage="maildir"`` only)."""
        if self._storage_option != "maildir" or self._directory is None:
            raise RuntimeError("maildir() needs a running server with storage='maildir'")
        return os.path.join(self._directory, user, "Maildir")

    # -- seeding --------------------------------------------------------------------

    def deliver(
        self,
        user: str,
        message: MessageSource,
        *,
        folder: str = "INBOX",
        flags: Iterable[str] = (),
        keywords: Iterable[str] = (),
        date: Any = None,
        create: bool = True,
    ) -> int:
        """Put a message into a user's folder (created if missing, unless
        ``create=False``) and return its UID.  ``message``: bytes, an
        ``email.message.Message``, a ``pathlib.Path`` or a binary file.
        ``flags`` and ``keywords`` together are the message's flags;
        ``date`` its internal date (a datetime, a timestamp, an RFC 5322 or
        IMAP date string).  Sessions hear of it at once (IDLE, NOOP)."""
        data = message_bytes(message)
        all_flags = [*flags, *keywords]
        internal = message_date(date)
        return int(self._call(self._deliver, user, data, folder, all_flags, internal, create))

    async def _deliver(
        self, user: str, data: bytes, folder: str, flags: list[str], date: Any, create: bool
    ) -> int:
        account = await maybe_deferred(self.storage.account, user)
        try:
            mailbox = await maybe_deferred(account.get_mailbox, folder)
        except NoSuchMailbox:
            if not create:
                raise
            await maybe_deferred(account.create_mailbox, folder)
            mailbox = await maybe_deferred(account.get_mailbox, folder)
        uid: int = await maybe_deferred(mailbox.append, io.BytesIO(data), flags, date)
        return uid

    def create_mailbox(self, user: str, name: str) -> None:
        """Create a mailbox (and its parents) for ``user``."""
        self._call(self._create_mailbox, user, name)

    async def _create_mailbox(self, user: str, name: str) -> None:
        account = await maybe_deferred(self.storage.account, user)
        await maybe_deferred(account.create_mailbox, name)

    # -- what a test asserts on -----------------------------------------------------

    def mailboxes(self, user: str) -> list[str]:
        """The user's mailbox names, INBOX first, as LIST would give them."""
        return list(self._call(self._mailboxes, user))

    async def _mailboxes(self, user: str) -> list[str]:
        account = await maybe_deferred(self.storage.account, user)
        entries = await maybe_deferred(account.list_mailboxes)
        return [entry.name for entry in entries if "\\Noselect" not in entry.attributes]

    def messages(self, user: str, folder: str = "INBOX") -> list[StoredMessage]:
        """The messages of a folder now, by ascending UID, with their
        flags, internal dates and bytes."""
        return list(self._call(self._messages, user, folder))

    async def _messages(self, user: str, folder: str) -> list[StoredMessage]:
        account = await maybe_deferred(self.storage.account, user)
        mailbox = await maybe_deferred(account.get_mailbox, folder)
        await maybe_deferred(mailbox.check)
        uids = await maybe_deferred(mailbox.uids)
        infos = await maybe_deferred(mailbox.fetch, list(uids))
        result = []
        for info in infos:
            source = await maybe_deferred(mailbox.open, info.uid)
            try:
                data = source.read()
            finally:
                source.close()
            result.append(
                StoredMessage(info.uid, info.flags, info.internal_date, data, info.modseq)
            )
        return result

    def transcripts(self, protocol: str | None = None) -> list[Transcript]:
        """Every connection's transcript so far (``protocol``: ``"imap"``,
        ``"pop3"``, ``"lmtp"``, or None for all), oldest first."""
        wanted = None if protocol is None else protocol.upper()
        return [t for t in list(self._transcripts) if wanted is None or t.protocol == wanted]

    # -- behaving like other servers --------------------------------------------------

    def hide_capabilities(self, *names: str, protocol: str | None = None) -> None:
        """Leave these out of CAPABILITY / CAPA (``"UIDPLUS"``, ``"IDLE"``,
        ``"LITERAL+"``, ``"AUTH=PLAIN"``, ``"AUTH"`` for every mechanism;
        POP3 ``"UIDL"``, ``"TOP"``, ``"SASL"``...).  Their commands are then
        refused as by a server without them, and so are ``{n+}`` literals
        without LITERAL+.  ``protocol``: ``"imap"``, ``"pop3"`` or both."""
        self.emulation.hide(names, protocol)

    def refuse(
        self,
        command: str,
        text: str = "Command refused (emulated)",
        *,
        protocol: str | None = None,
        times: int | None = None,
    ) -> None:
        """Answer ``command`` with NO / -ERR ``text`` instead of running it
        (``times``: only the next so many; None: always)."""
        self.emulation.add(protocol, command, CommandHook(refuse=text), times)

    def drop_after(
        self,
        command: str,
        *,
        before_answer: bool = False,
        protocol: str | None = None,
        times: int | None = None,
    ) -> None:
        """Cut the connection (no BYE) once ``command`` has run: after its
        answer, or with ``before_answer`` (IMAP) before it, so the client
        never learns that it succeeded."""
        drop = Drop.BEFORE_ANSWER if before_answer else Drop.AFTER_ANSWER
        self.emulation.add(protocol, command, CommandHook(drop=drop), times)

    def delay(
        self,
        command: str,
        seconds: float,
        *,
        protocol: str | None = None,
        times: int | None = None,
    ) -> None:
        """Wait ``seconds`` before running ``command`` (a slow server)."""
        if seconds < 0:
            raise ValueError("a delay cannot be negative")
        self.emulation.add(protocol, command, CommandHook(delay=seconds), times)

    def alert(self, text: str, *, command: str = "LOGIN", times: int | None = None) -> None:
        """IMAP: send ``* OK [ALERT] text`` before the tagged answer of
        ``command`` (LOGIN by default; AUTHENTICATE needs its own rule)."""
        self.emulation.add("imap", command, CommandHook(alert=text), times)

    def reset_emulation(self) -> None:
        """Behave as mailsrv again: every rule and hidden capability goes."""
        self.emulation.reset()

    # -- running calls in the server's reactor -----------------------------------------

    def _in_other_thread(self) -> bool:
        """In-process on the global reactor, and called from another thread
        than the one running it."""
        reactor = self._reactor
        if reactor is not _global_reactor() or not reactor.running:
            return False
        return not threadable.isInIOThread()  # type: ignore[no-untyped-call,unused-ignore]

    def _call(self, function: Any, *args: Any) -> Any:
        """Run ``function`` where the server runs: in its thread (waiting
        for the result), or here when this is the server's reactor thread.
        A coroutine function is run as a Deferred."""
        if self._reactor is None:
            raise RuntimeError("start the MailServer first")

        def run() -> Any:
            result = function(*args)
            if hasattr(result, "__await__"):
                return defer.Deferred.fromCoroutine(result)
            return result

        thread = self._thread
        if thread is not None and not thread.in_thread():
            return thread.call(run)
        if thread is None and self._in_other_thread():
            # In-process, called from a client's thread (deferToThread):
            # the storage is the reactor thread's to touch.
            return threads.blockingCallFromThread(self._reactor, run)
        result = run()
        if isinstance(result, defer.Deferred):
            return _now(result)
        return result


def _global_reactor() -> Any:
    from twisted.internet import reactor

    return reactor


def _scratch_directory() -> str:
    """A new temporary directory, in memory where the system has one.

    The Maildir backend fsyncs every message, folder and index write, as it
    must; on tmpfs (``/dev/shm``) that costs nothing, which makes a test's
    first login and the server's stop several times faster.
    ``$MAILSRV_TESTING_TMPDIR`` chooses the place instead.
    """
    where = os.environ.get("MAILSRV_TESTING_TMPDIR")
    if where is None and os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK):
        where = "/dev/shm"
    return tempfile.mkdtemp(prefix="mailsrv-testing-", dir=where)


def _now(d: defer.Deferred[Any]) -> Any:
    """The result of a Deferred that has fired; in-process calls need the
    storage to answer at once (memory and Maildir do)."""
    results: list[Any] = []
    d.addBoth(results.append)
    if not results:
        raise RuntimeError(
            "the storage answered asynchronously: in-process, seed and inspect through "
            "Deferreds of your own, or run the server with start_thread()"
        )
    outcome = results[0]
    if hasattr(outcome, "raiseException"):
        outcome.raiseException()
    return outcome


@contextlib.contextmanager
def running(**options: Any) -> Iterator[MailServer]:
    """``with running(**options) as srv:`` a :class:`MailServer` in a
    background thread for the block (options as for :class:`MailServer`)."""
    with MailServer(**options) as server:
        yield server
