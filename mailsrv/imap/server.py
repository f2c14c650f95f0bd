"""The IMAP4rev1 server protocol: framing, session state and command handlers.

:class:`IMAP4Server` frames the byte stream into commands (lines plus
literals, with ``+`` continuations for synchronizing literals and none for
LITERAL+), hands them to the pure parser in :mod:`mailsrv.imap.grammar`,
checks the session state and runs one handler at a time.  A handler may
return a Deferred; until it fires the protocol stops reading, so a
pipelined command is parsed and checked only in the state the previous one
left (and a literal's ``+`` is never sent early).

Untagged updates from other sessions come from the selected mailbox view
(:mod:`mailsrv.imap.selected`) and are written just before each tagged
answer, with EXPUNGE held back after FETCH, STORE and SEARCH.

FETCH and SEARCH live in :mod:`mailsrv.imap.fetch` and
:mod:`mailsrv.imap.search`; all output goes through one
:class:`mailsrv.imap.output.ResponseWriter`, a producer registered on the
transport, so long responses wait for a client that stops reading, and no
further command is read until it catches up.

Embed it with ``IMAP4ServerFactory(portal, policy)``; the portal's realm
must hand out :class:`mailsrv.interfaces.IAccount` avatars.
"""

from __future__ import annotations

import base64
import binascii
import enum
import io
import re
import tempfile
from collections.abc import Callable, Generator, Iterable, Sequence
from typing import Any, cast

import attrs
from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin, UnhandledCredentials
from twisted.cred.portal import Portal
from twisted.internet import defer
from twisted.internet.interfaces import IAddress, IDelayedCall, IReactorTime, ITLSTransport
from twisted.internet.protocol import ServerFactory
from twisted.logger import LogLevel
from twisted.protocols.basic import LineReceiver
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure

from mailsrv import log
from mailsrv.auth import sasl
from mailsrv.errors import NoSuchMailbox, StorageError
from mailsrv.imap import fetch, grammar, search
from mailsrv.imap.grammar import ParseError
from mailsrv.imap.output import CommandError, Done, ResponseWriter, bad, no
from mailsrv.imap.selected import InvalidSequence, MessageSet, SelectedMailbox
from mailsrv.interfaces import (
    SPECIAL_USES,
    IAccount,
    IMailbox,
    MailboxEntry,
    MailboxStatus,
    maybe_deferred,
)
from mailsrv.policy import CLOSE_GRACE, SessionPolicy

__all__ = ["IMAP4Server", "IMAP4ServerFactory", "State"]

_log = log.get_logger(__name__)

#: APPEND literals above this size are spooled to a temporary file as they
#: arrive; smaller literals stay in memory.
SPOOL_THRESHOLD = 64 * 1024
#: A spooled literal stays in memory up to this size, then moves to disk.
SPOOL_MEMORY = 256 * 1024
#: Messages whose metadata is read from storage in one call.
BATCH = 500
#: SASL mechanisms in which the server speaks first (no SASL-IR for them).
_SERVER_FIRST = frozenset({"CRAM-MD5"})
#: The least autologout time while in IDLE (RFC 2177 clients renew at 29 min).
IDLE_TIMEOUT = 31 * 60.0


class State(enum.Enum):
    NOT_AUTHENTICATED = "not authenticated"
    AUTHENTICATED = "authenticated"
    SELECTED = "selected"
    LOGOUT = "logout"


_ANY = frozenset(State) - {State.LOGOUT}
_NOT_AUTH = frozenset({State.NOT_AUTHENTICATED})
_AUTH = frozenset({State.AUTHENTICATED, State.SELECTED})
_SELECTED = frozenset({State.SELECTED})


_Result = Done | defer.Deferred[Done]
_Handler = Callable[[Any], _Result]

#: Why a session ends when its selected mailbox disappears.
_GONE = "The selected mailbox was deleted or renamed"


@attrs.define
class _Literal:
    """The literal being received."""

    size: int
    remaining: int
    discard: bool
    sink: Any  # bytearray or a SpooledTemporaryFile


class IMAP4Server(LineReceiver, TimeoutMixin):
    """One IMAP4rev1 session.

    ``secure`` says the connection is already TLS (implicit-TLS listener);
    ``clock`` drives the autologout timer, the failed-login delay and IDLE
    pushes (tests pass a ``task.Clock``).
    """

    delimiter = b"\r\n"

    def __init__(
        self,
        portal: Portal,
        policy: SessionPolicy | None = None,
        *,
        secure: bool = False,
        clock: IReactorTime | None = None,
    ) -> None:
        if clock is None:
            from twisted.internet import reactor

            clock = cast(IReactorTime, reactor)
        self.portal = portal
        self.policy = policy if policy is not None else SessionPolicy()
        self.secure = secure
        self.clock = clock
        self.MAX_LENGTH = self.policy.max_line_length
        self.state = State.NOT_AUTHENTICATED
        self.account: IAccount | None = None
        self.selected: SelectedMailbox | None = None
        self.user: str | None = None
        self._logout: Callable[[], None] | None = None
        self._peer: IAddress | None = None
        self._ip_counted = False
        self._lost = False
        self._failures = 0
        # Framing
        self._segments: list[grammar.Segment] = []
        self._command_size = 0
        self._literal: _Literal | None = None
        self._skipping = False  # discarding the rest of a refused command
        self._discarding_line = False  # inside an over-long line
        self._discard_cr = False  # ... whose last chunk ended in CR
        self._reprocess = False
        # Command execution
        self._busy = False
        self._paused = False
        self._continuation: Callable[[bytes], None] | None = None
        self._idle: defer.Deferred[Done] | None = None
        self._idle_push: IDelayedCall | None = None
        self._sasl: tuple[sasl.Mechanism, defer.Deferred[Done]] | None = None
        self._timer: IDelayedCall | None = None
        #: Clock time by which the client must have logged in; None after.
        self._login_by: float | None = None
        self._timed_out = False
        self._output: ResponseWriter | None = None

    # -- plumbing -------------------------------------------------------------

    @property
    def _transport(self) -> Any:
        return self.transport

    def callLater(self, period: float, func: Callable[[], object]) -> IDelayedCall:
        return self.clock.callLater(period, func)

    def _send(self, data: bytes) -> None:
        if not self._lost and self._output is not None:
            self._output.write(data)

    def _writer(self) -> ResponseWriter:
        assert self._output is not None
        return self._output

    def _close(self) -> None:
        """Close after what is written: a transport with a registered
        producer would otherwise never close."""
        if self._output is not None:
            self._output.close()
        if self.transport is not None:
            self._transport.loseConnection()

    def _capabilities(self) -> list[str]:
        caps = [
            "IMAP4rev1",
            "LITERAL+",
            "SASL-IR",
            "ID",
            "ENABLE",
            "IDLE",
            "NAMESPACE",
            "UNSELECT",
            "UIDPLUS",
            "MOVE",
            "CHILDREN",
            "SPECIAL-USE",
            "CREATE-SPECIAL-USE",
            "LIST-EXTENDED",
            "LIST-STATUS",
            "STATUS=SIZE",
            "BINARY",
            "ESEARCH",
            "SEARCHRES",
            f"APPENDLIMIT={self.policy.max_message_size}",
        ]
        if self.state is State.NOT_AUTHENTICATED:
            if self._tls_available():
                caps.append("STARTTLS")
            if not self._plaintext_allowed():
                caps.append("LOGINDISABLED")
            caps.extend(f"AUTH={m}" for m in sasl.mechanisms(self.policy, self.secure, self._peer))
        return caps

    def _tls_available(self) -> bool:
        return (
            not self.secure
            and self.policy.tls_context is not None
            and ITLSTransport.providedBy(self.transport)
        )

    def _plaintext_allowed(self) -> bool:
        return self.policy.plaintext_allowed(self._peer, self.secure)

    # -- connection -------------------------------------------------------------

    def connectionMade(self) -> None:
        self._peer = self._transport.getPeer()
        self._output = ResponseWriter(self.transport)
        limits = self.policy.connections
        if limits is not None:
            if not limits.open_ip(self._peer):
                _log.warn("IMAP: too many connections from {peer}", peer=self._peer)
                self._send(grammar.untagged_status("BYE", "Too many connections from your address"))
                self.state = State.LOGOUT
                self._close()
                return
            self._ip_counted = True
        self._login_by = self.clock.seconds() + self.policy.login_timeout
        self._activity()
        caps = "CAPABILITY " + " ".join(self._capabilities())
        self._send(grammar.untagged_status("OK", "mailsrv IMAP4rev1 server ready", caps))

    def connectionLost(self, reason: Failure | None = None) -> None:
        """Give back what the session holds.  Each step runs even if one
        before it failed: a skipped release would keep the user's and the
        address's connection slots taken until restart."""
        self._lost = True
        self.state = State.LOGOUT
        log.call_each(
            _log,
            "IMAP",
            self._stop_output,
            self._stop_timers,
            self._drop_command,
            self._end_session,
            self._release_address,
        )

    def _stop_output(self) -> None:
        if self._output is not None:
            self._output.close()

    def _stop_timers(self) -> None:
        self.setTimeout(None)
        push, self._idle_push = self._idle_push, None
        if push is not None and push.active():
            push.cancel()

    def _drop_command(self) -> None:
        """Forget the command being received, closing its spooled literals."""
        self._continuation = None
        segments, self._segments = self._segments, []
        literal, self._literal = self._literal, None
        try:
            self._close_segments(segments)
        finally:
            # A literal being dropped (refused, too big) has no sink.
            if literal is not None and literal.sink is not None:
                if not isinstance(literal.sink, bytearray):
                    literal.sink.close()

    def _release_address(self) -> None:
        if self._ip_counted and self.policy.connections is not None:
            self._ip_counted = False
            self.policy.connections.close_ip(self._peer)

    def _end_session(self) -> None:
        """Deselect, log the avatar out and free the user's slot; each step
        runs whatever the one before did.  Safe to call twice."""
        log.call_each(_log, "IMAP", self._deselect, self._logout_avatar, self._release_user)

    def _logout_avatar(self) -> None:
        logout, self._logout = self._logout, None
        self.account = None
        if logout is not None:
            logout()

    def _release_user(self) -> None:
        user, self.user = self.user, None
        if user is not None and self.policy.connections is not None:
            self.policy.connections.close_user(user)

    def _activity(self) -> None:
        """Restart the autologout timer: a whole line, or a piece of a
        literal, has arrived.

        A partial line is not activity (RFC 3501 5.4 counts commands), or one
        byte a second would hold a connection forever; an APPEND literal that
        keeps coming is.  Before login the timer never runs past the login
        deadline, however busy the client keeps the connection.
        """
        if self.state is State.LOGOUT:
            return
        if self._login_by is None:
            self.resetTimeout()
            return
        left = self._login_by - self.clock.seconds()
        self.setTimeout(max(0.0, min(self.policy.imap_timeout_unauthenticated, left)))

    def timeoutConnection(self) -> None:
        if self._timed_out:
            # The goodbye did not get out in CLOSE_GRACE: an unfinished TLS
            # handshake holds it, and with it the close, back for ever.
            self._transport.abortConnection()
            return
        self._timed_out = True
        if self._login_by is not None and self.clock.seconds() >= self._login_by:
            _log.info(
                "IMAP: {peer} did not log in within {seconds} seconds",
                peer=getattr(self._peer, "host", self._peer),
                seconds=f"{self.policy.login_timeout:g}",
            )
            bye = "Too long without logging in"
        else:
            _log.info("IMAP session of {user} timed out", user=self.user or "(not logged in)")
            bye = "Autologout; idle for too long"
        self._send(grammar.untagged_status("BYE", bye))
        self.state = State.LOGOUT
        stalled = self._output is not None and self._output.paused
        self._close()
        if stalled:
            # The client stopped reading: its buffered output would keep the
            # connection (and the session) alive forever.
            self._transport.abortConnection()
        else:
            self.setTimeout(CLOSE_GRACE)

    # -- framing ------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(data)
        while self._reprocess and not self.paused and not self._lost:
            self._reprocess = False
            super().dataReceived(b"")

    def lineLengthExceeded(self, line: bytes) -> None:
        """Answer an over-long line with BAD [TOOBIG] and keep the connection."""
        first = self._segments[0] if self._segments else line
        if not isinstance(first, bytes):
            first = line
        peeked = grammar.peek_command(first[:200])
        tag = peeked[0] if peeked else "*"
        self._reset_command()
        self._skipping = False
        end = line.find(b"\r\n")
        if self._continuation is not None:
            self._continuation(b"")  # ends IDLE / SASL with an error
        self._send(grammar.tagged(tag, "BAD", "Line too long", "TOOBIG"))
        if end >= 0:
            self._buffer = line[end + 2 :] + self._buffer
            self._reprocess = True
        else:
            self._discarding_line = True
            self.setRawMode()

    def lineReceived(self, line: bytes) -> None:
        if self.state is State.LOGOUT:
            return
        self._activity()
        if self._continuation is not None:
            self._continuation(line)
            return
        marker = grammar.literal_marker(line)
        if self._skipping:
            if marker is not None and marker[1]:
                self._start_literal(marker[0], discard=True)
            else:
                self._skipping = False
            return
        self._segments.append(line)
        self._command_size += len(line)
        if marker is None:
            segments, self._segments = self._segments, []
            self._command_size = 0
            self._execute(segments)
            return
        size, non_sync, binary = marker
        first = self._segments[0]
        peeked = grammar.peek_command(first) if isinstance(first, bytes) else None
        tag = peeked[0] if peeked else "*"
        appending = (
            peeked is not None
            and peeked[1] == "APPEND"
            and self.state in (State.AUTHENTICATED, State.SELECTED)
        )
        in_memory = self._command_size + size <= self.policy.max_line_length
        spool = appending and (size > SPOOL_THRESHOLD or not in_memory)
        refusal: bytes | None = None
        if appending and size > self.policy.max_message_size:
            status = "BAD" if non_sync else "NO"
            refusal = grammar.tagged(
                tag,
                status,
                f"Message too large (at most {self.policy.max_message_size} octets)",
                "TOOBIG",
            )
        elif binary and not appending:
            refusal = grammar.tagged(tag, "BAD", "literal8 is only allowed in APPEND")
        elif not spool and not in_memory:
            refusal = grammar.tagged(tag, "BAD", "Command too long", "TOOBIG")
        elif spool and any(isinstance(s, grammar.LiteralFile) for s in self._segments):
            refusal = grammar.tagged(tag, "BAD", "One message per APPEND (no MULTIAPPEND)")
        if refusal is not None:
            self._reset_command()
            self._send(refusal)
            if non_sync:
                # RFC 7888: the literal is coming anyway; read and drop it.
                self._start_literal(size, discard=True)
            return
        if not non_sync:
            self._send(b"+ Ready for literal data\r\n")
        self._start_literal(size, discard=False, spool=spool)

    def _start_literal(self, size: int, discard: bool, spool: bool = False) -> None:
        sink: Any = None
        if not discard:
            sink = (
                tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY, prefix="mailsrv-append-")
                if spool
                else bytearray()
            )
        self._literal = _Literal(size, size, discard, sink)
        if size == 0:
            self._literal_done()
        else:
            self.setRawMode()

    def rawDataReceived(self, data: bytes) -> None:
        if self._discarding_line:
            if self._discard_cr and data.startswith(b"\n"):
                end = -1  # the CR ended the previous chunk
            else:
                end = data.find(b"\r\n")
                if end < 0:
                    self._discard_cr = data.endswith(b"\r")
                    return
            self._discarding_line = False
            self._discard_cr = False
            self.setLineMode(data[end + 2 :])
            return
        literal = self._literal
        if literal is None:  # cannot happen; recover by reading lines
            self.setLineMode(data)
            return
        chunk = data[: literal.remaining]
        self._activity()
        if not literal.discard:
            if isinstance(literal.sink, bytearray):
                literal.sink += chunk
            else:
                literal.sink.write(chunk)
        literal.remaining -= len(chunk)
        if literal.remaining == 0:
            self._literal_done()
            self.setLineMode(data[len(chunk) :])

    def _literal_done(self) -> None:
        literal, self._literal = self._literal, None
        assert literal is not None
        if literal.discard:
            self._skipping = True  # the rest of the command follows; drop it
            return
        if isinstance(literal.sink, bytearray):
            self._segments.append(bytes(literal.sink))
            self._command_size += literal.size
        else:
            literal.sink.seek(0)
            self._segments.append(grammar.LiteralFile(literal.sink, literal.size))

    def _reset_command(self) -> None:
        self._close_segments(self._segments)
        self._segments = []
        self._command_size = 0

    @staticmethod
    def _close_segments(segments: Iterable[grammar.Segment]) -> None:
        for segment in segments:
            if isinstance(segment, grammar.LiteralFile):
                segment.file.close()

    # -- command execution ----------------------------------------------------------

    def _execute(self, segments: list[grammar.Segment]) -> None:
        try:
            command = grammar.parse_command(segments, self.policy.max_nesting_depth)
        except ParseError as e:
            self._close_segments(segments)
            self._send(grammar.tagged(e.tag or "*", "BAD", e.message, e.code))
            return
        key = command.name
        if getattr(command, "uid", False):
            key = "UID " + key
        entry = _COMMANDS.get(key)
        if entry is None:  # the parser knows a command we do not handle
            self._close_segments(segments)
            self._send(grammar.tagged(command.tag, "BAD", f"{key} is not supported"))
            return
        method, states = entry
        if self.state not in states:
            self._close_segments(segments)
            self._send(
                grammar.tagged(
                    command.tag, "BAD", f"{key} is not allowed in {self.state.value} state"
                )
            )
            return
        handler: _Handler = getattr(self, method)
        self._busy = True
        d: defer.Deferred[Any]
        view = self.selected
        if key in _NAMES_MESSAGES and view is not None and view.has_pending():
            # Announce what arrived before the set is resolved, so "*" and
            # the numbers the client may now use include it: EXISTS may be
            # sent at any time (RFC 3501 5.2), only EXPUNGE is held back
            # while sequence numbers are in use (7.4.1, 5.5).
            flushed = view.flush(False).addCallback(self._write_lines)
            d = flushed.addCallback(lambda _: handler(command))
        else:
            d = defer.maybeDeferred(handler, command)
        d.addErrback(self._failed, command)
        d.addCallback(self._complete, command, key not in _NO_EXPUNGE)
        d.addErrback(self._internal_error, command)
        d.addBoth(self._idle_again)
        if self._busy and self._continuation is None:
            self._pause()

    def _pause(self) -> None:
        if not self._paused and not self._lost:
            self._paused = True
            self.pauseProducing()

    def _idle_again(self, _: object) -> None:
        self._busy = False
        output = self._output
        if output is not None and output.paused and not self._lost:
            # The client is not reading our answers: read no further commands
            # until it does, so pipelined commands cannot pile up responses.
            self._pause()
            output.ready().addCallback(self._output_drained)
            return
        self._resume_reading()

    def _output_drained(self, _: object) -> None:
        if not self._busy:
            self._resume_reading()

    def _resume_reading(self) -> None:
        if self._paused:
            self._paused = False
            if not self._lost:
                self.resumeProducing()
                while self._reprocess and not self.paused and not self._lost:
                    self._reprocess = False
                    super().dataReceived(b"")

    def _failed(self, failure: Failure, command: grammar.Command) -> _Result:
        error = failure.value
        if isinstance(error, CommandError):
            return Done(error.status, error.text, error.code)
        if isinstance(error, ParseError):
            return Done("BAD", error.message, error.code)
        if isinstance(error, NoSuchMailbox) and self.selected is not None:
            return self._check_selected(Done("NO", str(error), error.code), command)
        if isinstance(error, StorageError):
            return Done("NO", str(error), error.code)
        _log.failure("IMAP: {command} failed", failure, command=command.name)
        return Done("NO", "Internal server error", "SERVERBUG")

    def _check_selected(self, done: Done, command: grammar.Command) -> defer.Deferred[Done]:
        """A mailbox is missing: if it is the selected one (deleted or
        renamed by another session), end the session; else answer ``done``."""
        view = self._view()
        d: defer.Deferred[Any] = defer.maybeDeferred(view.mailbox.check)

        def missing(failure: Failure) -> Done:
            failure.trap(NoSuchMailbox)
            if command.name in ("NOOP", "CHECK"):
                # RFC 3501 6.1.2, 6.4.1: these answer OK or BAD, nothing else.
                answer = Done(text=f"{command.name} completed")
            else:
                answer = Done("NO", _GONE, "NONEXISTENT")
            return self._selected_gone(answer)

        return d.addCallbacks(lambda _: done, missing)

    def _selected_gone(self, done: Done) -> Done:
        """The selected mailbox no longer exists, so nothing the session
        knows of it (numbers, UIDs, flags) holds any more: ``done`` followed
        by ``* BYE`` and the close, as Dovecot does, so the client learns
        what happened and starts afresh instead of being told NO forever."""
        self._forget_selected()
        return attrs.evolve(done, bye=_GONE)

    def _forget_selected(self) -> None:
        _log.info("IMAP: the mailbox {user} had selected was deleted or renamed", user=self.user)
        self._deselect()

    def _complete(self, done: Done, command: grammar.Command, expunges: bool) -> Any:
        view = self.selected
        if view is None or self._lost or not view.has_pending():
            self._finish(done, command)
            return None
        d = view.flush(expunges)
        d.addCallback(self._write_lines)

        def missing(failure: Failure) -> None:
            failure.trap(NoSuchMailbox)
            self._finish(self._selected_gone(done), command)

        d.addCallbacks(lambda _: self._finish(done, command), missing)
        return d

    def _write_lines(self, lines: Sequence[bytes]) -> None:
        if lines:
            self._send(b"".join(lines))

    def _finish(self, done: Done, command: grammar.Command) -> None:
        self._send(grammar.tagged(command.tag, done.status, done.text, done.code))
        if done.bye is not None:
            self._send(grammar.untagged_status("BYE", done.bye))
            self.state = State.LOGOUT
            self._close()
        if done.after is not None:
            done.after()

    def _internal_error(self, failure: Failure, command: grammar.Command) -> None:
        _log.failure("IMAP: completing {command} failed", failure, command=command.name)
        self._send(grammar.tagged(command.tag, "NO", "Internal server error", "SERVERBUG"))

    # -- any state -----------------------------------------------------------------------

    def do_capability(self, command: grammar.Simple) -> Done:
        self._send(grammar.untagged("CAPABILITY", " ".join(self._capabilities())))
        return Done(text="CAPABILITY completed")

    def do_noop(self, command: grammar.Simple) -> _Result:
        if self.selected is not None:
            d = defer.maybeDeferred(self.selected.mailbox.check)
            return d.addCallback(lambda _: Done(text="NOOP completed"))
        return Done(text="NOOP completed")

    def do_logout(self, command: grammar.Simple) -> Done:
        self._send(grammar.untagged_status("BYE", "mailsrv logging out"))
        self.state = State.LOGOUT
        self._deselect()
        return Done(text="LOGOUT completed", after=self._close)

    def do_id(self, command: grammar.Id) -> Done:
        self._send(grammar.untagged("ID", grammar.serialize(("name", "mailsrv"))))
        return Done(text="ID completed")

    # -- not authenticated ---------------------------------------------------------------

    def do_starttls(self, command: grammar.Simple) -> Done:
        if not self._tls_available():
            if self.secure:
                raise bad("TLS is already active")
            raise no("TLS is not available", "CANNOT")

        def start() -> None:
            # RFC 3501 6.2.1 / RFC 2595 3.1: anything pipelined after
            # STARTTLS arrived in plaintext and must not be acted upon.
            self.clearLineBuffer()
            self._reset_command()
            self._transport.startTLS(self.policy.tls_context)
            self.secure = True

        return Done(text="Begin TLS negotiation now", after=start)

    def do_login(self, command: grammar.Login) -> _Result:
        if not self._plaintext_allowed():
            raise no("Plaintext login is disabled; use STARTTLS first", "PRIVACYREQUIRED")
        return self._authenticate_with(UsernamePassword(command.username, command.password))

    def do_authenticate(self, command: grammar.Authenticate) -> _Result:
        if command.mechanism not in sasl.MECHANISMS:
            raise no(f"Unsupported mechanism {command.mechanism}", "CANNOT")
        if command.mechanism not in sasl.mechanisms(self.policy, self.secure, self._peer):
            if command.mechanism in sasl.PLAINTEXT_MECHANISMS:
                raise no("Plaintext authentication is disabled; use STARTTLS", "PRIVACYREQUIRED")
            raise no(f"{command.mechanism} is not available", "CANNOT")
        if command.initial_response is not None and command.mechanism in _SERVER_FIRST:
            # RFC 4959 3: an initial response to a server-first mechanism is BAD.
            raise bad(f"{command.mechanism} does not take an initial response")
        mechanism = sasl.create(command.mechanism, self.policy.hostname)
        assert mechanism is not None
        initial: bytes | None = None
        if command.initial_response is not None:
            initial = self._b64decode(command.initial_response)
            if initial is None:
                raise bad("Invalid base64 in the initial response")
        result: defer.Deferred[Done] = defer.Deferred()
        self._sasl = (mechanism, result)
        self._sasl_step(mechanism.start(initial))
        return result

    @staticmethod
    def _b64decode(data: bytes) -> bytes | None:
        if data == b"=":
            return b""
        try:
            return base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            return None

    def _sasl_step(self, step: sasl.Step) -> None:
        assert self._sasl is not None
        result = self._sasl[1]
        if isinstance(step, sasl.Challenge):
            self._continuation = self._sasl_line
            self._send(b"+ " + base64.b64encode(step.data) + b"\r\n")
            return
        self._sasl = None
        self._continuation = None
        self._pause()
        if isinstance(step, sasl.Refusal):
            self._login_failed(Failure(UnauthorizedLogin(step.reason))).chainDeferred(result)
            return
        self._authenticate_with(step.credentials).chainDeferred(result)

    def _sasl_line(self, line: bytes) -> None:
        assert self._sasl is not None
        mechanism, result = self._sasl
        if line == b"*":
            self._sasl = None
            self._continuation = None
            self._pause()
            result.callback(Done("BAD", "AUTHENTICATE cancelled"))
            return
        data = self._b64decode(line) if line else b""
        if data is None:
            self._sasl = None
            self._continuation = None
            self._pause()
            result.callback(Done("BAD", "Invalid base64 in the SASL response"))
            return
        self._sasl_step(mechanism.respond(data))

    def _authenticate_with(self, credentials: Any) -> defer.Deferred[Done]:
        started = self.clock.seconds()
        d: defer.Deferred[Any] = self.portal.login(credentials, None, IAccount)
        d.addCallbacks(self._logged_in, self._login_error, errbackArgs=(started,))
        return cast("defer.Deferred[Done]", d)

    def _login_error(self, failure: Failure, started: float) -> _Result:
        if failure.check(UnauthorizedLogin, UnhandledCredentials):
            return self._login_failed(failure, started)
        if failure.check(StorageError):
            # A right password whose mail store cannot be reached just now
            # (a database restarting): expected in operation, so no traceback.
            _log.warn("IMAP: cannot open the account: {e}", e=failure.value)
            return Done("NO", "Cannot open the account just now", "UNAVAILABLE")
        # The checker or the realm failed (an unreadable users file or home):
        # not the client's guess, so it is neither counted toward
        # max_failures nor delayed; RFC 5530 3 calls it UNAVAILABLE.
        _log.failure("IMAP: login could not be completed", failure, level=LogLevel.error)
        return Done("NO", "Authentication is temporarily unavailable", "UNAVAILABLE")

    def _logged_in(self, result: tuple[Any, Any, Callable[[], None]]) -> Done:
        _interface, account, logout = result
        if self._lost:
            logout()
            return Done("NO", "Connection lost")
        user = str(account.username)
        limits = self.policy.connections
        if limits is not None and not limits.open_user(user):
            logout()
            _log.warn("IMAP: too many connections for {user}", user=user)
            return Done("NO", "Too many connections for this user", "LIMIT")
        self.account = account
        self._logout = logout
        self.user = user
        self.state = State.AUTHENTICATED
        self._login_by = None
        self.setTimeout(self.policy.imap_timeout_authenticated)
        _log.info("IMAP: {user} logged in", user=user)
        caps = "CAPABILITY " + " ".join(self._capabilities())
        return Done(text="Logged in", code=caps)

    def _login_failed(self, failure: Failure, started: float | None = None) -> defer.Deferred[Done]:
        """Answer ``failure_delay`` after the attempt began
        (:meth:`SessionPolicy.failure_wait`), not after the check ended."""
        self._failures += 1
        done = Done("NO", "Authentication failed", "AUTHENTICATIONFAILED")
        if self._failures >= self.policy.max_failures:
            done = attrs.evolve(done, bye="Too many failed authentication attempts")
        d: defer.Deferred[Done] = defer.Deferred()
        self.clock.callLater(
            self.policy.failure_wait(started, self.clock.seconds()), d.callback, done
        )
        return d

    # -- authenticated --------------------------------------------------------------

    def _account(self) -> IAccount:
        assert self.account is not None
        return self.account

    def do_enable(self, command: grammar.Enable) -> Done:
        # No ENABLE-able extension (CONDSTORE, QRESYNC, UTF8=ACCEPT) yet.
        self._send(b"* ENABLED\r\n")
        return Done(text="ENABLE completed")

    def do_namespace(self, command: grammar.Simple) -> Done:
        delimiter = self._account().delimiter
        personal = grammar.serialize([["", delimiter]])
        self._send(grammar.untagged("NAMESPACE", personal, "NIL", "NIL"))
        return Done(text="NAMESPACE completed")

    def do_create(self, command: grammar.Create) -> _Result:
        uses = []
        for use in command.special_use:
            canonical = next((u for u in SPECIAL_USES if u.lower() == use.lower()), None)
            if canonical is None:
                raise no(f"Unknown special use {use}", "USEATTR")
            uses.append(canonical)
        name = _creatable(command.mailbox)
        d = defer.maybeDeferred(self._account().create_mailbox, name, uses)
        return d.addCallback(lambda _: Done(text="CREATE completed"))

    def do_delete(self, command: grammar.MailboxCommand) -> _Result:
        if command.mailbox == "INBOX":
            raise no("INBOX cannot be deleted", "CANNOT")
        d = defer.maybeDeferred(self._account().delete_mailbox, _existing(command.mailbox))
        return d.addCallback(lambda _: Done(text="DELETE completed"))

    def do_rename(self, command: grammar.Rename) -> _Result:
        old, new = _existing(command.old), _creatable(command.new)
        d = defer.maybeDeferred(self._account().rename_mailbox, old, new)
        return d.addCallback(lambda _: Done(text="RENAME completed"))

    def do_subscribe(self, command: grammar.MailboxCommand) -> _Result:
        d = defer.maybeDeferred(self._account().subscribe, _existing(command.mailbox))
        return d.addCallback(lambda _: Done(text="SUBSCRIBE completed"))

    def do_unsubscribe(self, command: grammar.MailboxCommand) -> _Result:
        d = defer.maybeDeferred(self._account().unsubscribe, _existing(command.mailbox))
        return d.addCallback(lambda _: Done(text="UNSUBSCRIBE completed"))

    @defer.inlineCallbacks
    def do_list(self, command: grammar.List) -> Generator[defer.Deferred[Any], Any, Done]:
        account = self._account()
        delimiter = account.delimiter
        lsub = command.name == "LSUB"
        if len(command.patterns) == 1 and command.patterns[0] == "" and not command.selection:
            # RFC 3501 6.3.8: the delimiter and root of the reference.
            self._send(
                grammar.untagged(command.name, "(\\Noselect)", grammar.serialize(delimiter), '""')
            )
            return Done(text=f"{command.name} completed")
        entries: Sequence[MailboxEntry] = yield defer.maybeDeferred(account.list_mailboxes)
        wants_subs = (
            lsub or "SUBSCRIBED" in command.selection or "SUBSCRIBED" in command.return_options
        )
        subscribed: set[str] = set()
        if wants_subs:
            subscribed = set((yield defer.maybeDeferred(account.subscriptions)))
        existing = {entry.name: entry.attributes for entry in entries}
        order = [entry.name for entry in entries]
        # A reference or pattern that is not valid modified UTF-7 names no
        # mailbox: it matches nothing (as in Dovecot), and is no error.
        matchers = [
            _pattern_regex(command.reference, pattern, delimiter)
            for pattern in command.patterns
            if pattern and not isinstance(pattern, grammar.UndecodedName)
        ]
        if isinstance(command.reference, grammar.UndecodedName):
            matchers = []

        def matches(name: str) -> bool:
            return any(m.fullmatch(name) for m in matchers)

        parents = _parents(existing, delimiter)
        rows: list[tuple[str, list[str], bytes]] = []
        if lsub or "SUBSCRIBED" in command.selection:
            candidates = [n for n in order if n in subscribed]
            candidates += sorted(n for n in subscribed if n not in existing)
            seen = set(candidates)
            extra: dict[str, bool] = {}
            for name in candidates:
                for parent in _ancestors(name, delimiter):
                    if parent not in seen and matches(parent) and not matches(name):
                        extra[parent] = True
            for name in candidates:
                if not matches(name):
                    continue
                if lsub:
                    attributes = [a for a in existing.get(name, ()) if a == "\\Noselect"]
                else:
                    attributes = self._list_attributes(name, existing, parents, subscribed, True)
                rows.append((name, attributes, b""))
            for name in extra:
                if lsub:
                    rows.append((name, ["\\Noselect"], b""))
                elif "RECURSIVEMATCH" in command.selection:
                    attributes = self._list_attributes(name, existing, parents, subscribed, False)
                    rows.append((name, attributes, b' ("CHILDINFO" ("SUBSCRIBED"))'))
        else:
            show_subscribed = "SUBSCRIBED" in command.return_options
            special_only = "SPECIAL-USE" in command.selection
            for name in order:
                if not matches(name):
                    continue
                attributes = self._list_attributes(
                    name, existing, parents, subscribed, show_subscribed
                )
                if special_only and not any(a in SPECIAL_USES for a in attributes):
                    continue
                rows.append((name, attributes, b""))
        quoted_delimiter = grammar.serialize(delimiter)
        for name, attributes, extended in rows:
            flags = b"(" + b" ".join(a.encode("ascii") for a in attributes) + b")"
            line = b"* %s %s %s %s%s\r\n" % (
                command.name.encode(),
                flags,
                quoted_delimiter,
                grammar.mailbox(name),
                extended,
            )
            self._send(line)
            if command.status_items and name in existing and "\\Noselect" not in attributes:
                try:
                    status = yield defer.maybeDeferred(account.status, name)
                except StorageError:
                    continue
                self._send(self._status_line(name, status, command.status_items))
        return Done(text=f"{command.name} completed")

    @staticmethod
    def _list_attributes(
        name: str,
        existing: dict[str, frozenset[str]],
        parents: set[str],
        subscribed: set[str],
        show_subscribed: bool,
    ) -> list[str]:
        attributes: list[str] = []
        if name not in existing:
            attributes.append("\\NonExistent")
        else:
            stored = existing[name]
            if "\\Noselect" in stored:
                attributes.append("\\Noselect")
            attributes.append("\\HasChildren" if name in parents else "\\HasNoChildren")
            attributes.extend(
                sorted(
                    a for a in stored if a not in ("\\Noselect", "\\HasChildren", "\\HasNoChildren")
                )
            )
        if show_subscribed and name in subscribed:
            attributes.append("\\Subscribed")
        return attributes

    def _status_line(self, name: str, status: MailboxStatus, items: Iterable[str]) -> bytes:
        values = {
            "MESSAGES": status.messages,
            "RECENT": status.recent,
            "UIDNEXT": status.uidnext,
            "UIDVALIDITY": status.uidvalidity,
            "UNSEEN": status.unseen,
            "SIZE": status.size,
            "DELETED": status.deleted,
            "HIGHESTMODSEQ": status.highest_modseq,
            "APPENDLIMIT": self.policy.max_message_size,
        }
        pairs = b" ".join(b"%s %d" % (item.encode(), values[item]) for item in items)
        return b"* STATUS %s (%s)\r\n" % (grammar.mailbox(name), pairs)

    def do_status(self, command: grammar.Status) -> _Result:
        d = maybe_deferred(self._account().status, _existing(command.mailbox))

        def report(status: MailboxStatus) -> Done:
            self._send(self._status_line(command.mailbox, status, command.items))
            return Done(text="STATUS completed")

        return d.addCallback(report)

    @defer.inlineCallbacks
    def do_select(self, command: grammar.Select) -> Generator[defer.Deferred[Any], Any, Done]:
        self._deselect()
        if command.params:
            raise bad(f"SELECT parameter {command.params[0][0]} is not supported")
        mailbox: IMailbox = yield defer.maybeDeferred(
            self._account().get_mailbox, _existing(command.mailbox)
        )
        view = SelectedMailbox(mailbox, (), command.readonly)
        mailbox.add_listener(view)
        try:
            uids: Sequence[int] = yield defer.maybeDeferred(mailbox.uids)
            view.map.extend(uids)
            # Like Dovecot, FLAGS lists the keywords already defined, so a
            # client knows them before any FETCH shows one (RFC 3501 7.2.6).
            keywords: Sequence[str] = yield defer.maybeDeferred(mailbox.keywords)
            status: MailboxStatus = yield defer.maybeDeferred(mailbox.status)
            if command.readonly:
                recent_count = status.recent
            else:
                claimed = yield defer.maybeDeferred(mailbox.claim_recent)
                view.recent.update(claimed)
                recent_count = len(view.recent)
            first_unseen = 0
            if status.unseen:
                first_unseen = yield view.first_unseen(status.unseen, BATCH)
        except BaseException:
            view.close()
            raise
        if self._lost:
            view.close()
            return Done("NO", "Connection lost")
        self.selected = view
        self.state = State.SELECTED
        lines = [
            f"* {view.exists} EXISTS\r\n",
            f"* {recent_count} RECENT\r\n",
        ]
        if first_unseen:
            lines.append(f"* OK [UNSEEN {first_unseen}] First unseen\r\n")
        lines.append(f"* OK [UIDVALIDITY {mailbox.uidvalidity}] UIDs valid\r\n")
        lines.append(f"* OK [UIDNEXT {status.uidnext}] Predicted next UID\r\n")
        self._send(view.flags_response(keywords) + "".join(lines).encode("ascii"))
        mode = "READ-ONLY" if command.readonly else "READ-WRITE"
        return Done(text=f"{command.name} completed", code=mode)

    def _deselect(self) -> None:
        view, self.selected = self.selected, None
        if view is not None:
            view.close()
        if self.state is State.SELECTED:
            self.state = State.AUTHENTICATED

    @defer.inlineCallbacks
    def do_append(self, command: grammar.Append) -> Generator[defer.Deferred[Any], Any, Done]:
        message = command.message
        source: Any = io.BytesIO(message) if isinstance(message, bytes) else cast(Any, message).file
        try:
            # RFC 3516 4.4: literal8 content is stored octet for octet (a
            # Maildir file holds NULs as well as anything), so nothing is lost.
            size = len(message) if isinstance(message, bytes) else message.size
            if size == 0:
                raise no("Empty messages are not accepted", "CANNOT")
            name = _existing(command.mailbox)
            try:
                mailbox: IMailbox = yield defer.maybeDeferred(self._account().get_mailbox, name)
            except NoSuchMailbox:
                raise no(f"Mailbox {command.mailbox} does not exist", "TRYCREATE") from None
            uid = yield defer.maybeDeferred(mailbox.append, source, command.flags, command.date)
        finally:
            source.close()
        return Done(text="APPEND completed", code=f"APPENDUID {mailbox.uidvalidity} {uid}")

    def do_idle(self, command: grammar.Simple) -> defer.Deferred[Done]:
        result: defer.Deferred[Done] = defer.Deferred()
        self._idle = result
        self._continuation = self._idle_line
        # RFC 2177: clients re-issue IDLE every 29 minutes; never log out an
        # idling client sooner, whatever the authenticated timeout.
        self.setTimeout(max(self.policy.imap_timeout_authenticated, IDLE_TIMEOUT))
        self._send(b"+ idling\r\n")
        if self.selected is not None:
            self.selected.on_change = self._schedule_idle_push
            if self.selected.has_pending():
                self._schedule_idle_push()
        return result

    def _idle_line(self, line: bytes) -> None:
        result, self._idle = self._idle, None
        self._continuation = None
        self.setTimeout(self.policy.imap_timeout_authenticated)
        if self.selected is not None:
            self.selected.on_change = None
        if self._idle_push is not None and self._idle_push.active():
            self._idle_push.cancel()
        self._idle_push = None
        self._pause()
        assert result is not None
        if line.upper() == b"DONE":
            result.callback(Done(text="IDLE terminated"))
        else:
            result.callback(Done("BAD", "Expected DONE to end IDLE"))

    def _schedule_idle_push(self) -> None:
        # Listeners run inside another session's call: push from a fresh
        # reactor turn instead.
        if self._idle_push is None or not self._idle_push.active():
            self._idle_push = self.clock.callLater(0, self._push_updates)

    def _push_updates(self) -> None:
        self._idle_push = None
        if self._idle is None or self.selected is None or self._lost:
            return
        d = self.selected.flush(True)
        d.addCallbacks(self._write_lines, self._push_failed)

    def _push_failed(self, failure: Failure) -> None:
        if not failure.check(NoSuchMailbox):
            _log.failure("IMAP: pushing updates during IDLE failed", failure)
            return
        # The selected mailbox is gone under an idling client: say so and
        # close (as after any command that finds it gone).
        self._forget_selected()
        self._send(grammar.untagged_status("BYE", _GONE))
        self.state = State.LOGOUT
        self._close()

    # -- selected -------------------------------------------------------------------

    def _view(self) -> SelectedMailbox:
        assert self.selected is not None
        return self.selected

    def _resolve(self, sequence_set: grammar.SequenceSet, uid: bool) -> MessageSet:
        """The messages the set names; BAD for sequence numbers out of range."""
        try:
            return self._view().resolve(sequence_set, uid)
        except InvalidSequence as e:
            raise bad(str(e)) from None

    def do_check(self, command: grammar.Simple) -> _Result:
        d = defer.maybeDeferred(self._view().mailbox.check)
        return d.addCallback(lambda _: Done(text="CHECK completed"))

    def do_close(self, command: grammar.Simple) -> _Result:
        view = self._view()
        self._deselect()
        if view.readonly:
            return Done(text="CLOSE completed")
        d = defer.maybeDeferred(view.mailbox.expunge)

        def missing(failure: Failure) -> None:
            # Deleted or renamed by another session: nothing is left to
            # expunge, and CLOSE answers OK or BAD only (RFC 3501 6.4.2).
            failure.trap(NoSuchMailbox)

        return d.addErrback(missing).addCallback(lambda _: Done(text="CLOSE completed"))

    def do_unselect(self, command: grammar.Simple) -> Done:
        self._deselect()
        return Done(text="UNSELECT completed")

    def do_expunge(self, command: grammar.Expunge) -> _Result:
        view = self._view()
        if view.readonly:
            raise no("Mailbox is read-only", "READ-ONLY")
        uids: list[int] | None = None
        if command.sequence_set is not None:
            uids = self._resolve(command.sequence_set, True).uids()
            if not uids:
                return Done(text="EXPUNGE completed")
        d = maybe_deferred(view.mailbox.expunge, uids)

        def done(removed: Sequence[int]) -> Done:
            view.note_expunged(removed)
            return Done(text="EXPUNGE completed")

        return d.addCallback(done)

    def do_fetch(self, command: grammar.Fetch) -> defer.Deferred[Done]:
        view = self._view()
        return fetch.fetch(view, view.mailbox, command, self._writer(), self.clock)

    @defer.inlineCallbacks
    def do_store(self, command: grammar.Store) -> Generator[defer.Deferred[Any], Any, Done]:
        view = self._view()
        if view.readonly:
            raise no("Mailbox is read-only", "READ-ONLY")
        if command.unchanged_since is not None:
            raise bad("UNCHANGEDSINCE needs CONDSTORE, which is not supported")
        pairs = self._resolve(command.sequence_set, command.uid)
        uids = pairs.uids()
        if not uids:
            return Done(text="STORE completed")
        result = yield defer.maybeDeferred(
            view.mailbox.store, uids, command.flags, command.mode, None
        )
        view.forget_flags(result.updated)
        if not command.silent:
            items = (grammar.FetchAttribute("UID"),) if command.uid else ()
            request = fetch.FetchRequest(
                view,
                view.mailbox,
                self._writer(),
                self.clock,
                (*items, grammar.FetchAttribute("FLAGS")),
                command.uid,
            )
            yield fetch.fetch_messages(request, pairs)
        return Done(text="STORE completed")

    @defer.inlineCallbacks
    def do_copy(self, command: grammar.Copy) -> Generator[defer.Deferred[Any], Any, Done]:
        view = self._view()
        moving = command.name == "MOVE"
        if moving and view.readonly:
            raise no("Mailbox is read-only", "READ-ONLY")
        uids = self._resolve(command.sequence_set, command.uid).uids()
        name = _existing(command.mailbox)
        try:
            destination: IMailbox = yield defer.maybeDeferred(self._account().get_mailbox, name)
        except NoSuchMailbox:
            raise no(f"Mailbox {command.mailbox} does not exist", "TRYCREATE") from None
        if not uids:
            return Done(text=f"{command.name} completed")
        operation = view.mailbox.move if moving else view.mailbox.copy
        mapping: Sequence[tuple[int, int]] = yield defer.maybeDeferred(operation, uids, destination)
        code = None
        if mapping:
            sources = _uid_set(src for src, _ in mapping)
            targets = _uid_set(dst for _, dst in mapping)
            code = f"COPYUID {destination.uidvalidity} {sources} {targets}"
        if moving:
            view.note_expunged(src for src, _ in mapping)
            if code is not None:
                self._send(grammar.untagged_status("OK", "Moved", code))
            return Done(text="MOVE completed")
        return Done(text="COPY completed", code=code)

    def do_search(self, command: grammar.Search) -> defer.Deferred[Done]:
        view = self._view()
        return search.search(view, view.mailbox, command, self._writer(), self.clock)


def _uid_set(uids: Iterable[int]) -> str:
    """UIDs in order as a compact uid-set (runs of consecutive numbers)."""
    parts: list[str] = []
    start = prev = -1
    for uid in uids:
        if uid == prev + 1 and start >= 0:
            prev = uid
            continue
        if start >= 0:
            parts.append(str(start) if start == prev else f"{start}:{prev}")
        start = prev = uid
    if start >= 0:
        parts.append(str(start) if start == prev else f"{start}:{prev}")
    return ",".join(parts)


def _existing(name: str) -> str:
    """``name``, or NO [NONEXISTENT] if it is not valid modified UTF-7.

    No mailbox can have such a name, but it is a syntactically valid one
    (RFC 3501 5.1.3), so the answer is NO, not BAD, as Dovecot's.
    """
    if isinstance(name, grammar.UndecodedName):
        raise no(
            f"No mailbox has this name: not valid modified UTF-7 ({name.reason})", "NONEXISTENT"
        )
    return name


def _creatable(name: str) -> str:
    """``name``, or NO [CANNOT] if it is not valid modified UTF-7."""
    if isinstance(name, grammar.UndecodedName):
        raise no(f"Mailbox names must be valid modified UTF-7 ({name.reason})", "CANNOT")
    return name


def _pattern_regex(reference: str, pattern: str, delimiter: str) -> re.Pattern[str]:
    """A LIST pattern (reference + pattern) as a regex; INBOX in any case."""
    full = reference + pattern if not pattern.startswith(delimiter) else pattern
    if full[:5].upper() == "INBOX" and (len(full) == 5 or full[5] in (delimiter, "*", "%")):
        full = "INBOX" + full[5:]
    out = []
    for char in full:
        if char == "*":
            out.append(".*")
        elif char == "%":
            out.append(f"[^{re.escape(delimiter)}]*")
        else:
            out.append(re.escape(char))
    return re.compile("".join(out), re.DOTALL)


def _ancestors(name: str, delimiter: str) -> list[str]:
    parts = name.split(delimiter)
    return [delimiter.join(parts[:i]) for i in range(1, len(parts))]


def _parents(existing: Iterable[str], delimiter: str) -> set[str]:
    """Names that have at least one child among ``existing``."""
    out: set[str] = set()
    for name in existing:
        out.update(_ancestors(name, delimiter))
    return out


#: Command name -> (handler method, states it is valid in).
_COMMANDS: dict[str, tuple[str, frozenset[State]]] = {
    "CAPABILITY": ("do_capability", _ANY),
    "NOOP": ("do_noop", _ANY),
    "LOGOUT": ("do_logout", _ANY),
    "ID": ("do_id", _ANY),
    "STARTTLS": ("do_starttls", _NOT_AUTH),
    "LOGIN": ("do_login", _NOT_AUTH),
    "AUTHENTICATE": ("do_authenticate", _NOT_AUTH),
    "ENABLE": ("do_enable", frozenset({State.AUTHENTICATED})),
    "NAMESPACE": ("do_namespace", _AUTH),
    "SELECT": ("do_select", _AUTH),
    "EXAMINE": ("do_select", _AUTH),
    "CREATE": ("do_create", _AUTH),
    "DELETE": ("do_delete", _AUTH),
    "RENAME": ("do_rename", _AUTH),
    "SUBSCRIBE": ("do_subscribe", _AUTH),
    "UNSUBSCRIBE": ("do_unsubscribe", _AUTH),
    "LIST": ("do_list", _AUTH),
    "LSUB": ("do_list", _AUTH),
    "STATUS": ("do_status", _AUTH),
    "APPEND": ("do_append", _AUTH),
    "IDLE": ("do_idle", _AUTH),
    "CHECK": ("do_check", _SELECTED),
    "CLOSE": ("do_close", _SELECTED),
    "UNSELECT": ("do_unselect", _SELECTED),
    "EXPUNGE": ("do_expunge", _SELECTED),
    "UID EXPUNGE": ("do_expunge", _SELECTED),
    "FETCH": ("do_fetch", _SELECTED),
    "UID FETCH": ("do_fetch", _SELECTED),
    "STORE": ("do_store", _SELECTED),
    "UID STORE": ("do_store", _SELECTED),
    "SEARCH": ("do_search", _SELECTED),
    "UID SEARCH": ("do_search", _SELECTED),
    "COPY": ("do_copy", _SELECTED),
    "UID COPY": ("do_copy", _SELECTED),
    "MOVE": ("do_copy", _SELECTED),
    "UID MOVE": ("do_copy", _SELECTED),
}

#: RFC 3501 7.4.1: no EXPUNGE response while these run (their UID forms too).
_NO_EXPUNGE = frozenset({"FETCH", "STORE", "SEARCH", "UID FETCH", "UID STORE", "UID SEARCH"})

#: Commands with a message set: pending updates (but EXPUNGE) are sent first.
_NAMES_MESSAGES = _NO_EXPUNGE | {"COPY", "UID COPY", "MOVE", "UID MOVE", "UID EXPUNGE"}


class IMAP4ServerFactory(ServerFactory):
    """Builds :class:`IMAP4Server` sessions for a Portal.

    ``implicit_tls`` marks connections as already secure (the listener wraps
    them in TLS); ``clock`` is for tests.
    """

    protocol = IMAP4Server
    noisy = False  # the service logs each listener once, with its endpoint

    def __init__(
        self,
        portal: Portal,
        policy: SessionPolicy | None = None,
        *,
        implicit_tls: bool = False,
        clock: IReactorTime | None = None,
    ) -> None:
        self.portal = portal
        self.policy = policy if policy is not None else SessionPolicy()
        self.implicit_tls = implicit_tls
        self.clock = clock

    def buildProtocol(self, addr: IAddress | None) -> IMAP4Server:
        protocol = IMAP4Server(self.portal, self.policy, secure=self.implicit_tls, clock=self.clock)
        protocol.factory = self
        return protocol
