"""One IMAP connection's session: its state, and commands run in order.

The Twisted protocol (:mod:`mailsrv.imap.protocol`) owns the transport and
the framer and hands the framer's events to :class:`Session`, which:

* answers literal announcements (what fits in memory, what APPEND spools,
  what is refused);
* parses each command through the registry (:mod:`mailsrv.imap.commands`),
  checks the state, and runs its handler, one command at a time: while a
  handler's Deferred is pending (:attr:`Session.busy`) the protocol stops
  reading, unless the command reads lines of its own
  (:attr:`Session.continuation`), so a pipelined command is parsed and
  checked only in the state the previous one left;
* writes the untagged updates queued by the selected mailbox view
  (:mod:`mailsrv.imap.selected`) before each tagged answer, EXPUNGE held
  back where RFC 3501 7.4.1 forbids it, and turns any error into a tagged
  NO or BAD.

Handlers are ``handler(session, command)`` and use what is public here:
the state, the account and selected view, :meth:`Session.send` and the
writer, the policy and clock, and helpers such as :meth:`Session.resolve`.

Connection limits, the failed-login rule and the TLS and plaintext
decisions are the :class:`~mailsrv.session.SessionGuard`'s, the login
deadline and autologout the :class:`~mailsrv.session.SessionTimer`'s (the
plumbing POP3 shares); the session composes both and says what they decide
in IMAP's words.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import attrs
from twisted.cred.portal import Portal
from twisted.internet import defer
from twisted.internet.interfaces import IAddress, IReactorTime
from twisted.python.failure import Failure

from mailsrv import log
from mailsrv.auth.channel import ChannelBindings
from mailsrv.errors import NoSuchMailbox, StorageError
from mailsrv.hooks import CommandHook
from mailsrv.imap import response
from mailsrv.imap.framer import LiteralNeeded, close_segments
from mailsrv.imap.hooking import hook_done, hooked, withdrawn
from mailsrv.imap.lexer import ParseError, Segment
from mailsrv.imap.literals import SPOOL_THRESHOLD, LiteralAnswer, answer_literal
from mailsrv.imap.mailbox_names import creatable, existing
from mailsrv.imap.observed import command_name, command_size, loggable
from mailsrv.imap.output import CommandError, Done, ResponseWriter, bad
from mailsrv.imap.registry import Command, Registry, Result, State
from mailsrv.imap.selected import InvalidSequence, MessageSet, SelectedMailbox
from mailsrv.imap.syntax import SequenceSet
from mailsrv.interfaces import IAccount
from mailsrv.observe import UNKNOWN, Probe
from mailsrv.policy import CLOSE_GRACE, SessionPolicy
from mailsrv.session import Expiry, SessionGuard, SessionTimer

__all__ = [
    "GONE",
    "IMAP4REV2",
    "LOG",
    "SPOOL_THRESHOLD",
    "UTF8_ACCEPT",
    "Connection",
    "Continuation",
    "LiteralAnswer",
    "Session",
    "creatable",
    "existing",
]

#: The namespace of IMAP's session log lines, as it has always been (the
#: code moved out of mailsrv.imap.server; a log filter may name it).
LOG = log.get_logger("mailsrv.imap.server")

#: ENABLE names (upper-cased, as :attr:`Session.enabled` holds them) of the
#: modes that change how the session speaks: IMAP4rev2's rules (RFC 9051
#: appendix A) and UTF-8 in quoted strings and mailbox names (RFC 6855).
IMAP4REV2 = "IMAP4REV2"
UTF8_ACCEPT = "UTF8=ACCEPT"

#: Why a session ends when its view of the mailbox could not be updated.
OUT_OF_SYNC = "Cannot update the mailbox view just now; please reconnect"
#: Why a session ends when its selected mailbox disappears.
GONE = "The selected mailbox was deleted or renamed"
#: Why a session ends when an administrator kicks it (``mailsrv kick``).
KICKED = "Disconnected by the administrator"


class Connection(Protocol):
    """What a session needs of the connection it runs on (the protocol)."""

    @property
    def transport(self) -> object:
        """The transport (STARTTLS asks whether it can start TLS)."""

    def close(self) -> None:
        """Close once what is written has gone out."""

    def abort(self) -> None:
        """Close at once, dropping what is not written yet."""

    def discard_input(self) -> None:
        """Drop what the client sent and was not read yet."""

    def expect_continuation(self) -> None:
        """Frame the next line as a continuation."""

    def command_done(self) -> None:
        """A command completed: read on (once the client reads its answers)."""

    def start_compression(self) -> None:
        """COMPRESS=DEFLATE both ways from the next octet on."""


class Continuation(Protocol):
    """A command that reads lines of its own (IDLE, AUTHENTICATE)."""

    def line(self, data: bytes) -> None:
        """The client's next line; ``b""`` for one that was too long."""

    def cancel(self) -> None:
        """The connection is gone: stop any timer."""


class Session:
    """The IMAP session of one connection.

    ``secure`` says the connection is TLS from the start (an implicit-TLS
    listener); ``clock`` drives the autologout timer, the login deadline,
    the failed-login delay and IDLE pushes.
    """

    def __init__(
        self,
        connection: Connection,
        portal: Portal,
        policy: SessionPolicy,
        clock: IReactorTime,
        registry: Registry,
        *,
        secure: bool = False,
    ) -> None:
        self.connection = connection
        self.portal = portal
        self.policy = policy
        self.clock = clock
        self.registry = registry
        #: What the session reports to the observers (metrics, logs, who).
        self.probe = Probe(
            policy.observer, "imap", State.NOT_AUTHENTICATED.value, registry.declares
        )
        #: Limits, failed logins, TLS and plaintext (shared with POP3).
        self.guard = SessionGuard(
            policy, clock, secure=secure, name="IMAP", logger=LOG, probe=self.probe
        )
        #: Autologout and the login deadline (shared with POP3).
        self.timer = SessionTimer(
            clock,
            self._expired,
            idle_before_login=policy.imap_timeout_unauthenticated,
            login_timeout=policy.login_timeout,
        )
        self.state = State.NOT_AUTHENTICATED
        self.account: IAccount | None = None
        self.selected: SelectedMailbox | None = None
        #: The avatar's logout, while logged in.
        self.logout: Callable[[], None] | None = None
        self.writer: ResponseWriter | None = None
        #: The connection is gone: write nothing, start nothing.
        self.lost = False
        #: A command is running (its Deferred has not fired).
        self.busy = False
        #: The command reading lines of its own (IDLE, AUTHENTICATE), if any.
        self.continuation: Continuation | None = None
        #: Extensions the client turned on for the connection (RFC 5161
        #: ENABLE; CONDSTORE also by using it, RFC 7162 3.1).
        self.enabled: set[str] = set()
        self._ip_counted = False
        #: Clock time by which the client must have logged in; None after.
        self._login_by: float | None = None
        #: An administrator's kick waits for the running command's answer.
        self._kick_pending = False

    @property
    def rev2(self) -> bool:
        """The client sent ENABLE IMAP4rev2: RFC 9051's rules apply."""
        return IMAP4REV2 in self.enabled

    @property
    def utf8(self) -> bool:
        """Mailbox names and quoted strings are UTF-8 (RFC 6855 3), not
        modified UTF-7: after ENABLE UTF8=ACCEPT or ENABLE IMAP4rev2 (RFC
        9051 5.1 and appendix A)."""
        return UTF8_ACCEPT in self.enabled or IMAP4REV2 in self.enabled

    @property
    def user(self) -> str | None:
        """The logged-in user (None before login and after the session ends)."""
        return self.guard.user

    # -- what handlers use ------------------------------------------------------

    def send(self, data: bytes) -> None:
        """Write ``data`` to the client (nothing once the connection is gone)."""
        if not self.lost and self.writer is not None:
            self.writer.write(data)

    def output(self) -> ResponseWriter:
        """The writer, for responses that wait for the client (FETCH, SEARCH)."""
        assert self.writer is not None
        return self.writer

    def close(self) -> None:
        """Close the connection after what is written."""
        self.connection.close()

    def logged_in_account(self) -> IAccount:
        """The account (authenticated and selected states)."""
        assert self.account is not None
        return self.account

    def view(self) -> SelectedMailbox:
        """The selected mailbox (selected state)."""
        assert self.selected is not None
        return self.selected

    def resolve(self, sequence_set: SequenceSet, uid: bool) -> MessageSet:
        """The messages the set names; BAD for sequence numbers out of range."""
        try:
            return self.view().resolve(sequence_set, uid)
        except InvalidSequence as e:
            raise bad(str(e)) from None

    def capabilities(self) -> list[str]:
        """What CAPABILITY lists now (as the policy's hooks have it)."""
        names = self.registry.capabilities(self)
        hooks = self.policy.hooks
        return names if hooks is None else hooks.capabilities("IMAP", names)

    def deselect(self) -> None:
        """Leave the selected state (if in it), closing the view."""
        view, self.selected = self.selected, None
        if view is not None:
            view.close()
        if self.state is State.SELECTED:
            self.state = State.AUTHENTICATED

    def forget_selected(self) -> None:
        """The selected mailbox was deleted or renamed: deselect, and say so."""
        LOG.info("IMAP: the mailbox {user} had selected was deleted or renamed", user=self.user)
        self.deselect()

    def end_with_bye(self, text: str) -> None:
        """``* BYE text`` and the close."""
        self.send(response.untagged_status("BYE", text))
        self.state = State.LOGOUT
        self.close()

    def write_lines(self, lines: Sequence[bytes]) -> None:
        if lines:
            self.send(b"".join(lines))

    def expect_continuation(self, continuation: Continuation) -> None:
        """Hand the client's next line to ``continuation``."""
        self.continuation = continuation
        self.connection.expect_continuation()

    def end_continuation(self) -> None:
        """The command reads no more lines of its own."""
        self.continuation = None

    @property
    def compressing(self) -> bool:
        """COMPRESS=DEFLATE is on."""
        return self.writer is not None and self.writer.compressing

    def start_compression(self) -> None:
        """Compress from right after the tagged OK just written (RFC 4978 3)."""
        LOG.info("IMAP: {user} turned COMPRESS=DEFLATE on", user=self.user)
        self.connection.start_compression()

    def corrupt_input(self, reason: str) -> None:
        """The client's compressed stream cannot be read: nothing after the
        damage can be framed, so say why and close."""
        LOG.warn(
            "IMAP: closing the session of {user}: corrupt compressed input: {reason}",
            user=self.user or "(not logged in)",
            reason=reason,
        )
        self.end_with_bye("Corrupt compressed data received")

    def start_tls(self) -> None:
        # RFC 3501 6.2.1 / RFC 2595 3.1: anything pipelined after STARTTLS
        # arrived in plaintext and must not be acted upon.
        self.connection.discard_input()
        if self.writer is not None:
            self.writer.send_held()  # the tagged OK goes in the clear, before TLS
        self.guard.start_tls(self.connection.transport)

    # -- input ------------------------------------------------------------------

    def continuation_line(self, line: bytes) -> None:
        assert self.continuation is not None
        if self.probe.lines:
            # IDLE's DONE, or a SASL response (a secret).
            self.probe.client_line("DONE" if line.upper() == b"DONE" else "(continuation line)")
        self.continuation.line(line)

    def line_too_long(self, tag: str | None) -> None:
        """Answer an over-long line with BAD [TOOBIG]; the connection stays."""
        if self.continuation is not None:
            self.continuation.line(b"")  # ends IDLE / SASL with an error
        self.send(response.tagged(tag or "*", "BAD", "Line too long", "TOOBIG"))
        self.probe.command_refused(UNKNOWN, "BAD")

    def literal_needed(self, event: LiteralNeeded) -> LiteralAnswer:
        """Take a literal into memory, spool it (APPEND), or refuse it, and
        tell the client (``+`` for a synchronizing literal, or the refusal)."""
        return answer_literal(self, event)

    def execute(self, segments: Sequence[Segment]) -> None:
        """Parse, check and run one framed command."""
        probe = self.probe
        if probe.lines:
            probe.client_line(loggable(segments))
        try:
            spec, command = self.registry.parse(
                segments, self.policy.max_nesting_depth, utf8=self.utf8
            )
        except ParseError as e:
            close_segments(segments)
            self.send(response.tagged(e.tag or "*", "BAD", e.message, e.code))
            probe.command_refused(command_name(segments), "BAD")
            return
        if self.state not in spec.states:
            close_segments(segments)
            refusal = f"{spec.key} is not allowed in {self.state.value} state"
            self.send(response.tagged(command.tag, "BAD", refusal))
            probe.command_refused(spec.key, "BAD")
            return
        hook: CommandHook | None = None
        if self.policy.hooks is not None:
            if isinstance(spec.capability, str) and withdrawn(self, spec.capability):
                close_segments(segments)
                self.send(response.tagged(command.tag, "BAD", f"unknown command {spec.key}"))
                probe.command_refused(spec.key, "BAD")
                return
            hook = self.policy.hooks.command("IMAP", spec.key)
        handler = spec.handler if hook is None else hooked(self, spec.handler, hook)
        probe.command_started(spec.key, command_size(segments))
        self.busy = True
        d: defer.Deferred[Any]
        view = self.selected
        if spec.names_messages and view is not None and view.has_pending():
            # Announce what arrived before the set is resolved, so "*" and
            # the numbers the client may now use include it: EXISTS may be
            # sent at any time (RFC 3501 5.2), only EXPUNGE is held back
            # while sequence numbers are in use (7.4.1, 5.5).
            d = defer.maybeDeferred(view.flush, False).addCallback(self.write_lines)
            d.addCallback(lambda _: handler(self, command))
            d.addErrback(self._failed, command)
        else:
            result = self._run(handler, command)
            if hook is None and not isinstance(result, defer.Deferred | Failure):
                self._complete_now(result, command, spec.expunges_allowed)
                return
            d = result if isinstance(result, defer.Deferred) else defer.fail(result)
        if hook is not None:
            d.addCallback(hook_done, self, hook)
        d.addCallback(self._complete, command, spec.expunges_allowed)
        d.addErrback(self._internal_error, command)
        d.addBoth(self._command_done)

    def _run(self, handler: Callable[[Session, Any], Result], command: Command) -> Any:
        """The handler's answer, or what :meth:`_failed` makes of its error: a
        Done, a Deferred, or a Failure if even that failed.  An answer that
        is ready is not wrapped in a Deferred (most commands' answers are)."""
        try:
            result = handler(self, command)
        except Exception:
            failure = Failure()
        else:
            if isinstance(result, defer.Deferred):
                return result.addErrback(self._failed, command)
            return result
        try:
            return self._failed(failure, command)
        except Exception:
            return Failure()

    def _complete_now(self, done: Done, command: Command, expunges: bool) -> None:
        """:meth:`_complete` and what follows it, as the Deferred chain in
        :meth:`execute` runs them, for an answer that is ready."""
        try:
            completed = self._complete(done, command, expunges)
        except Exception:
            self._internal_error(Failure(), command)
            completed = None
        if isinstance(completed, defer.Deferred):
            completed.addErrback(self._internal_error, command)
            completed.addBoth(self._command_done)
            return
        try:
            self._command_done(None)
        except Exception:
            # As an error at the end of the Deferred chain is: logged, and
            # the connection goes on.
            LOG.failure("IMAP: finishing {command} failed", command=command.name)

    # -- completion -------------------------------------------------------------

    def _command_done(self, _: object) -> None:
        self.busy = False
        self.report_state()
        if self._kick_pending:
            # Reading stays paused: nothing the client sent after runs.
            self._kick_pending = False
            self.end_with_bye(KICKED)
            return
        self.connection.command_done()

    def report_state(self) -> None:
        """Tell the observers the state, user and mailbox now."""
        view = self.selected
        self.probe.update(self.state.value, self.user, view.mailbox.name if view else None)

    def _failed(self, failure: Failure, command: Command) -> Result:
        error = failure.value
        if isinstance(error, CommandError):
            return Done(error.status, error.text, error.code)
        if isinstance(error, ParseError):
            return Done("BAD", error.message, error.code)
        if isinstance(error, NoSuchMailbox) and self.selected is not None:
            return self._check_selected(Done("NO", str(error), error.code), command)
        if isinstance(error, StorageError):
            return Done("NO", str(error), error.code)
        LOG.failure("IMAP: {command} failed", failure, command=command.name)
        return Done("NO", "Internal server error", "SERVERBUG")

    def _check_selected(self, done: Done, command: Command) -> defer.Deferred[Done]:
        """A mailbox is missing: if it is the selected one (deleted or
        renamed by another session), end the session; else answer ``done``."""
        view = self.view()
        d: defer.Deferred[Any] = defer.maybeDeferred(view.mailbox.check)

        def missing(failure: Failure) -> Done | Failure:
            if not isinstance(failure.value, NoSuchMailbox):
                return failure
            if command.name in ("NOOP", "CHECK"):
                # RFC 3501 6.1.2, 6.4.1: these answer OK or BAD, nothing else.
                answer = Done(text=f"{command.name} completed")
            else:
                answer = Done("NO", GONE, "NONEXISTENT")
            return self.selected_gone(answer)

        return d.addCallbacks(lambda _: done, missing)

    def selected_gone(self, done: Done) -> Done:
        """The selected mailbox no longer exists, so nothing the session
        knows of it (numbers, UIDs, flags) holds any more: ``done`` followed
        by ``* BYE`` and the close, as Dovecot does, so the client learns
        what happened and starts afresh instead of being told NO forever."""
        self.forget_selected()
        return attrs.evolve(done, bye=GONE)

    def _complete(self, done: Done, command: Command, expunges: bool) -> Any:
        view = self.selected
        if view is None or self.lost or not view.has_pending():
            self._finish(done, command)
            return None
        d = view.flush(expunges)
        d.addCallback(self.write_lines)

        def missing(failure: Failure) -> None:
            if isinstance(failure.value, NoSuchMailbox):
                self._finish(self.selected_gone(done), command)
                return
            # The command itself is done (an APPEND stored, a STORE made):
            # its answer stands, or a client would retry and duplicate it.
            # The view may now lag behind the mailbox, so the session ends
            # and the client resynchronises on its next connection.
            if isinstance(failure.value, StorageError):
                LOG.warn("IMAP: cannot bring the view up to date: {e}", e=failure.value)
            else:
                LOG.failure("IMAP: bringing the view up to date failed", failure)
            self.forget_selected()
            self._finish(attrs.evolve(done, bye=OUT_OF_SYNC), command)

        d.addCallbacks(lambda _: self._finish(done, command), missing)
        return d

    def _finish(self, done: Done, command: Command) -> None:
        self.send(response.tagged(command.tag, done.status, done.text, done.code))
        self.report_state()
        self.probe.command_done(done.status)
        if done.bye is not None:
            self.end_with_bye(done.bye)
        if done.after is not None:
            done.after()

    def _internal_error(self, failure: Failure, command: Command) -> None:
        LOG.failure("IMAP: completing {command} failed", failure, command=command.name)
        self.send(response.tagged(command.tag, "NO", "Internal server error", "SERVERBUG"))
        self.probe.command_done("NO")

    # -- plumbing: limits, deadlines, TLS and plaintext --------------------------

    def connected(self, writer: ResponseWriter, peer: IAddress | None) -> None:
        """The connection is open: count it, start the login deadline, greet.

        When the count is kept by another process (several workers) the
        answer comes later: the session is :attr:`busy` until then, so the
        protocol reads nothing before the greeting."""
        self.writer = writer
        writer.observe = self.probe.wrote
        self.probe.opened(peer, self.kick)
        admitted = self.guard.open(peer)
        if isinstance(admitted, defer.Deferred):
            self.busy = True
            admitted.addCallback(self._greet, peer, True)
            admitted.addErrback(self._admission_failed)
            return
        self._greet(admitted, peer, False)

    def _greet(self, admitted: bool, peer: IAddress | None, waited: bool) -> None:
        if self.lost:
            return
        self.busy = False
        if not admitted:
            if self.guard.server_full:
                LOG.warn("IMAP: limits.max_connections reached, {peer} refused", peer=peer)
                self.end_with_bye("Too many connections to this server, try again later")
                return
            LOG.warn("IMAP: too many connections from {peer}", peer=peer)
            self.end_with_bye("Too many connections from your address")
            return
        self.timer.start()
        caps = "CAPABILITY " + " ".join(self.capabilities())
        self.send(response.untagged_status("OK", "mailsrv IMAP4rev1 server ready", caps))
        if waited:
            self.connection.command_done()  # read what the client sent meanwhile

    def _admission_failed(self, failure: Failure) -> None:
        LOG.failure("IMAP: cannot count the connection", failure)
        if not self.lost:
            self.end_with_bye("Server unavailable, try again later")

    def admit(
        self, user: str, account: IAccount, logout: Callable[[], None]
    ) -> bool | defer.Deferred[bool]:
        """Log ``user`` in, unless over the per-user connection limit (or the
        connection is gone by the time the count answers: False)."""
        admitted = self.guard.admit_user(user)
        if isinstance(admitted, defer.Deferred):
            return admitted.addCallback(self._admitted, account, logout)
        return self._admitted(admitted, account, logout)

    def _admitted(self, admitted: bool, account: IAccount, logout: Callable[[], None]) -> bool:
        if not admitted or self.lost:
            return False
        self.account = account
        self.logout = logout
        self.state = State.AUTHENTICATED
        self.timer.logged_in(self.policy.imap_timeout_authenticated)
        return True

    def unauthenticate(self) -> None:
        """Back to the not authenticated state on the same connection
        (UNAUTHENTICATE, RFC 8437 3): everything but TLS (and ID, 4.1) is
        reset, as on a new connection: the selected mailbox (with its "$"
        and UPDATE contexts) without expunging, the avatar, the user's
        connection slot, what ENABLE turned on, and the login deadline
        starts again."""
        self.end()
        self.enabled.clear()
        self.state = State.NOT_AUTHENTICATED
        self.timer.start()

    def activity(self) -> None:
        """A whole line, or a piece of a literal, has arrived: restart the
        autologout timer (before login, no further than the deadline).

        A partial line is not activity (RFC 3501 5.4 counts commands), or one
        byte a second would hold a connection forever; an APPEND literal that
        keeps coming is.
        """
        if self.state is not State.LOGOUT:
            self.timer.activity()

    def _expired(self, reason: Expiry) -> None:
        """Autologout (or the login deadline): say goodbye and close."""
        if reason is Expiry.GRACE:
            # The goodbye did not get out in CLOSE_GRACE: an unfinished TLS
            # handshake holds it, and with it the close, back for ever.
            self.connection.abort()
            return
        if reason is Expiry.LOGIN_DEADLINE:
            peer = self.guard.peer
            LOG.info(
                "IMAP: {peer} did not log in within {seconds} seconds",
                peer=getattr(peer, "host", peer),
                seconds=f"{self.policy.login_timeout:g}",
            )
            bye = "Too long without logging in"
        else:
            LOG.info("IMAP session of {user} timed out", user=self.user or "(not logged in)")
            bye = "Autologout; idle for too long"
        self.send(response.untagged_status("BYE", bye))
        self.state = State.LOGOUT
        stalled = self.writer is not None and self.writer.paused
        self.close()
        if stalled:
            # The client stopped reading: its buffered output would keep the
            # connection (and the session) alive forever.
            self.connection.abort()
        else:
            self.timer.grace()

    def kick(self) -> None:
        """An administrator ends the session (``mailsrv kick``): ``* BYE``
        and the close, after the running command's answer if one runs (a
        BYE inside its responses could fall into a literal), but at once
        in IDLE or a SASL exchange, which wait for the client.  A command
        that does not end within CLOSE_GRACE is cut off."""
        if self.lost or self.state is State.LOGOUT:
            return
        if not self.busy or self.continuation is not None:
            self.end_with_bye(KICKED)
            return
        self._kick_pending = True
        self.clock.callLater(CLOSE_GRACE, self._kick_overdue)

    def _kick_overdue(self) -> None:
        if self._kick_pending and not self.lost:
            self.connection.abort()

    def tls_available(self) -> bool:
        """Can STARTTLS start TLS on this connection now?"""
        return self.guard.tls_available(self.connection.transport)

    def plaintext_allowed(self) -> bool:
        return self.guard.plaintext_allowed()

    def mechanisms(self) -> list[str]:
        """The SASL mechanisms offered on this connection now."""
        offered = self.guard.mechanisms(self.channel_bindings())
        hooks = self.policy.hooks
        if hooks is None:
            return offered
        # Asked directly, not through capabilities(): that lists these.
        shown = set(hooks.capabilities("IMAP", [f"AUTH={name}" for name in offered]))
        return [name for name in offered if f"AUTH={name}" in shown]

    def channel_bindings(self) -> ChannelBindings | None:
        """What SCRAM-SHA-256-PLUS binds to, once TLS is up."""
        return self.guard.channel_bindings(self.connection.transport)

    def drop_continuation(self) -> None:
        """The connection is gone: stop what a command reading lines holds."""
        continuation, self.continuation = self.continuation, None
        if continuation is not None:
            continuation.cancel()

    def end(self) -> None:
        """Deselect, log the avatar out and free the user's slot; each step
        runs whatever the one before did.  Safe to call twice."""
        log.call_each(
            LOG, "IMAP", self._deselect, self._logout_avatar, self._release_user, self.probe.closed
        )

    # The cleanup steps' names are in the log line of one that fails.

    def _deselect(self) -> None:
        self.deselect()

    def _logout_avatar(self) -> None:
        logout, self.logout = self.logout, None
        self.account = None
        if logout is not None:
            logout()

    def _release_user(self) -> None:
        self.guard.release_user()
