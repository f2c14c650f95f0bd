"""The LMTP server: :class:`~mailsrv.lmtp.core.LMTPCore` on a Twisted connection.

The protocol only moves bytes and carries out the core's actions: it looks
recipients up in the users database (an LMTP client is trusted: there is no
login, a recipient is a user the database knows) and stores the message for
each recipient through the same code path as ``mailsrv deliver``
(:func:`mailsrv.storage.deliver.store`), one after the other, each reply
sent only once that recipient's copy is durable.
"""

from __future__ import annotations

import tempfile
import time
from collections import deque
from collections.abc import Callable
from typing import IO, Any

from twisted.internet import defer
from twisted.internet.interfaces import IAddress, IReactorTime
from twisted.internet.protocol import Protocol, ServerFactory
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure

from mailsrv import log
from mailsrv.errors import StorageError
from mailsrv.interfaces import IStorage
from mailsrv.lmtp.core import (
    Action,
    Close,
    Deliver,
    LMTPCore,
    Recipient,
    Reply,
    Resolve,
    candidates,
    delivery_reply,
)
from mailsrv.policy import CLOSE_GRACE, SessionPolicy
from mailsrv.session import no_delay
from mailsrv.storage.deliver import open_account, store

__all__ = ["LMTPFactory", "LMTPServer", "UserLookup"]

_log = log.get_logger(__name__)

#: Finds a user by name: an object with ``name`` and ``home`` (a users-file
#: record), or None; it may answer with a Deferred.
UserLookup = Callable[[str], Any]


def new_spool() -> IO[bytes]:
    """An anonymous temporary file: gone from the disk however the process ends."""
    return tempfile.TemporaryFile(prefix="mailsrv-lmtp-")


class _Unclosable:
    """The spool as one recipient's message source: read from the start,
    never closed by the storage, since the next recipient reads it again."""

    def __init__(self, spool: IO[bytes]) -> None:
        self._spool = spool

    def read(self, size: int = -1) -> bytes:
        return self._spool.read(size)

    def close(self) -> None:
        """Left open: the protocol closes the spool after the last recipient."""


class LMTPServer(Protocol, TimeoutMixin):
    """One LMTP connection."""

    def __init__(
        self,
        storage: IStorage,
        users: UserLookup,
        policy: SessionPolicy,
        clock: IReactorTime | None = None,
    ) -> None:
        self.storage = storage
        self.users = users
        self.policy = policy
        self.clock = clock
        self.session = log.new_session_id()
        self.core = LMTPCore(
            policy.hostname,
            new_spool,
            max_message_size=policy.max_message_size,
            max_recipients=policy.lmtp_max_recipients,
            max_line_length=policy.max_line_length,
            bounce_over_quota=policy.quotas.bounce,
        )
        self._remote = "unknown"
        self._paused = False
        self._gone = False
        self._abort_call: Any = None

    # -- connection -------------------------------------------------------

    def connectionMade(self) -> None:
        if self.clock is not None:
            self.callLater = self.clock.callLater  # type: ignore[assignment]
        no_delay(self.transport)
        self._remote = log.format_remote(self.transport.getPeer())  # type: ignore[union-attr]
        _log.debug(
            "LMTP connection from {remote}",
            session=self.session,
            protocol="lmtp",
            remote=self._remote,
        )
        self.setTimeout(self.policy.lmtp_timeout)
        self._execute(self.core.greeting())

    def dataReceived(self, data: bytes) -> None:
        self.resetTimeout()
        self._execute(self.core.receive(data))

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: B008
        self._gone = True
        self.setTimeout(None)
        if self._abort_call is not None and self._abort_call.active():
            self._abort_call.cancel()
        if self.core.in_data:
            _log.info(
                "LMTP: connection from {remote} lost in the middle of a message; nothing stored",
                session=self.session,
                protocol="lmtp",
                remote=self._remote,
            )
        self.core.connection_lost()

    def timeoutConnection(self) -> None:
        _log.info(
            "LMTP: {remote} timed out", session=self.session, protocol="lmtp", remote=self._remote
        )
        self._execute(self.core.timed_out())
        # A client that does not read its 421 is cut off a little later.
        self._abort_call = self.callLater(CLOSE_GRACE, self._abort)

    def _abort(self) -> None:
        if self.transport is not None and not self._gone:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    # -- actions ----------------------------------------------------------

    def _execute(self, actions: list[Action]) -> None:
        """Carry out the core's actions in order; a look-up or delivery that
        answers later pauses reading until it does and picks up from there."""
        queue: deque[Action] = deque(actions)
        while queue:
            action = queue.popleft()
            if isinstance(action, Reply):
                if not self._gone:
                    self.transport.write(action.to_bytes())  # type: ignore[union-attr]
            elif isinstance(action, Close):
                if not self._gone:
                    self.transport.loseConnection()  # type: ignore[union-attr]
            else:
                if isinstance(action, Resolve):
                    d = self._resolve(action.address).addBoth(self._resolved, action.address)
                else:
                    d = self._deliver(action).addBoth(self._delivered, len(action.recipients))
                now: list[list[Action]] = []

                def answered(more: list[Action], now: list[list[Action]] = now) -> list[Action]:
                    now.append(more)
                    return more

                d.addCallback(answered)
                if now:  # answered at once
                    queue.extend(now[0])
                    continue
                # Answered later: read nothing more meanwhile (what has come
                # waits in the core's buffer), then go on from there.  The
                # core asks for one look-up or delivery at a time, always as
                # the last action of a batch, so nothing is left in the queue.
                self._pause()
                d.addCallback(self._resume_with).addErrback(self._broken)
                return

    def _pause(self) -> None:
        if not self._paused and not self._gone:
            self._paused = True
            self.transport.pauseProducing()  # type: ignore[union-attr]

    def _broken(self, failure: Failure) -> None:
        _log.failure("LMTP: internal error", failure, session=self.session, protocol="lmtp")
        if not self._gone:
            self.transport.abortConnection()  # type: ignore[union-attr]

    def _resume_with(self, actions: list[Action]) -> None:
        if self._paused and not self._gone:
            self._paused = False
            self.transport.resumeProducing()  # type: ignore[union-attr]
        self._execute(actions)

    # -- recipients -------------------------------------------------------

    def _resolve(self, address: str) -> defer.Deferred[Recipient | None]:
        """The first user among the address's :func:`candidates` the users
        database knows, with the folder its detail names."""
        names = candidates(address, self.policy.recipient_delimiter)

        @defer.inlineCallbacks
        def search() -> Any:
            for name, folder in names:
                record = yield defer.maybeDeferred(self.users, name)
                if record is not None:
                    return Recipient(
                        address, record.name, getattr(record, "home", None), folder or "INBOX"
                    )
            return None

        d: defer.Deferred[Recipient | None] = search()
        return d

    def _resolved(self, found: Recipient | Failure | None, address: str) -> list[Action]:
        if isinstance(found, Failure):
            _log.failure(
                "LMTP: looking up {address} failed",
                found,
                session=self.session,
                protocol="lmtp",
                address=address,
            )
            return self.core.resolved(None, error="users database unavailable")
        if found is None:
            _log.info(
                "LMTP: unknown recipient {address}",
                session=self.session,
                protocol="lmtp",
                remote=self._remote,
                command="RCPT",
                result="550 5.1.1",
                address=address,
            )
        return self.core.resolved(found)

    # -- delivery ---------------------------------------------------------

    def _deliver(self, action: Deliver) -> defer.Deferred[list[int | BaseException]]:
        # No timeout while the server works: the client is waiting for us.
        self.setTimeout(None)

        @defer.inlineCallbacks
        def each() -> Any:
            outcomes: list[int | BaseException] = []
            try:
                for recipient in action.recipients:
                    outcome = yield self._deliver_one(recipient, action)
                    outcomes.append(outcome)
            finally:
                action.spool.close()
            return outcomes

        d: defer.Deferred[list[int | BaseException]] = each()
        return d

    @defer.inlineCallbacks
    def _deliver_one(self, recipient: Recipient, action: Deliver) -> Any:
        started = time.monotonic()
        action.spool.seek(0)
        try:
            account = yield open_account(self.storage, recipient.user, recipient.home)
            try:
                _folder, uid = yield store(
                    account,
                    _Unclosable(action.spool),  # type: ignore[arg-type]
                    recipient.folder,
                    quiet=True,
                    limits=self.policy.quotas.limits_of(recipient.user),
                    size=action.size,
                )
            finally:
                logout = getattr(account, "logout", None)
                if logout is not None:
                    yield defer.maybeDeferred(logout).addErrback(lambda _f: None)
            outcome: int | BaseException = uid
        except Exception as exc:
            outcome = exc
            if not isinstance(exc, StorageError):
                _log.failure(
                    "LMTP: delivery to {user} failed unexpectedly",
                    session=self.session,
                    protocol="lmtp",
                    user=recipient.user,
                )
        reply = delivery_reply(recipient, outcome, self.policy.quotas.bounce)
        emit = _log.info if isinstance(outcome, int) else _log.warn
        emit(
            "LMTP: {address} ({size} octets) for {user}: {reply}",
            session=self.session,
            protocol="lmtp",
            remote=self._remote,
            user=recipient.user,
            command="DATA",
            result=reply.summary,
            duration=round(time.monotonic() - started, 6),
            address=recipient.address,
            size=action.size,
            reply=" ".join(reply.lines),
        )
        return outcome

    def _delivered(self, outcomes: list[int | BaseException] | Failure, count: int) -> list[Action]:
        if isinstance(outcomes, Failure):
            _log.failure("LMTP: delivery failed", outcomes, session=self.session, protocol="lmtp")
            error: BaseException = outcomes.value or RuntimeError("delivery failed")
            outcomes = [error] * count
        if not self._gone:
            self.setTimeout(self.policy.lmtp_timeout)
        return self.core.delivered(outcomes)


class LMTPFactory(ServerFactory):
    """Builds :class:`LMTPServer` connections.

    ``policy`` and ``users`` may be replaced at any time (a configuration
    reload): connections made from then on use the new ones.
    """

    noisy = False

    def __init__(
        self,
        storage: IStorage,
        users: UserLookup,
        policy: SessionPolicy | None = None,
        clock: IReactorTime | None = None,
    ) -> None:
        self.storage = storage
        self.users = users
        self.policy = policy if policy is not None else SessionPolicy()
        self.clock = clock

    def buildProtocol(self, addr: IAddress | None) -> LMTPServer:
        protocol = LMTPServer(self.storage, self.users, self.policy, clock=self.clock)
        protocol.factory = self
        return protocol
