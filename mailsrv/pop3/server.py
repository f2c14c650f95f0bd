"""The POP3 server: RFC 1939 with CAPA and response codes (RFC 2449), STLS
(RFC 2595) and SASL (RFC 5034).

:class:`POP3Factory` takes a Portal whose realm hands out
:class:`~mailsrv.interfaces.IMaildrop` avatars and an optional
:class:`~mailsrv.policy.SessionPolicy`; it works in any Twisted application.

:class:`POP3` is the Twisted side of a session: it hands received bytes to
the framer (:mod:`mailsrv.pop3.framer`), runs the commands it gives one
after another through the table the command groups declare
(:mod:`~mailsrv.pop3.authorization`, :mod:`~mailsrv.pop3.transaction`, and
CAPA/QUIT/RPOP here), and owns the transport, the timers and the end of
the session; limits, failed logins and TLS decisions are
:class:`mailsrv.session.SessionGuard`'s.

Commands are processed strictly one after another: a command that waits on
a Deferred (a login, opening the maildrop, streaming a message, the commit
at QUIT) holds back the lines that arrived after it, which then run in the
state it leaves.  That is what PIPELINING promises, and it is also what
makes STLS safe: when STLS runs, whatever the client sent after it is still
unprocessed and is thrown away before TLS starts (RFC 2595 3.1).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import IO, Any

from twisted.cred.portal import Portal
from twisted.internet import defer, task
from twisted.internet.interfaces import IAddress, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure

from mailsrv import log
from mailsrv.auth import sasl
from mailsrv.auth.channel import ChannelBindings
from mailsrv.hooks import POP3_COMMAND_CAPABILITIES, SessionHooks
from mailsrv.observe import UNKNOWN, Probe
from mailsrv.policy import SessionPolicy
from mailsrv.pop3.authorization import Authorization, address
from mailsrv.pop3.commands import (
    ANY_STATE,
    LOG,
    Command,
    CommandError,
    Result,
    State,
    collect,
    command,
    no_arguments,
)
from mailsrv.pop3.framer import Event, LineFramer, LineTooLong
from mailsrv.pop3.streaming import MessageSender
from mailsrv.pop3.transaction import Transaction
from mailsrv.pop3.wire import MessageEncoder, error_line, loggable, multiline, ok_line
from mailsrv.session import (
    Expiry,
    SessionFactory,
    SessionGuard,
    SessionTimer,
    no_delay,
    resolve_clock,
)
from mailsrv.writing import Outbox, send_now

__all__ = ["POP3", "POP3Factory", "State"]


class POP3(Protocol):
    """One POP3 session.

    ``secure`` says the connection is already TLS (an implicit-TLS
    listener); ``clock`` drives the autologout timer and the delay after a
    failed login (tests pass a ``task.Clock``).
    """

    def __init__(
        self,
        portal: Portal,
        policy: SessionPolicy | None = None,
        *,
        secure: bool = False,
        clock: IReactorTime | None = None,
    ) -> None:
        self.portal = portal
        self.policy = policy if policy is not None else SessionPolicy()
        self.clock = resolve_clock(clock)
        self.state = State.AUTHORIZATION
        #: What the session reports to the observers (metrics, logs, who).
        self.probe = Probe(self.policy.observer, "pop3", _state(self.state), _declared)
        self._guard = SessionGuard(
            self.policy, self.clock, secure=secure, name="POP3", logger=LOG, probe=self.probe
        )
        self._timer = SessionTimer(
            self.clock,
            self._expired,
            idle_before_login=self.policy.pop3_timeout,
            login_timeout=self.policy.login_timeout,
        )
        self._framer = LineFramer(self.policy.max_line_length)
        self._authorization = Authorization(self, portal, self._guard, self._enter_transaction)
        self._transaction: Transaction | None = None
        self._user: str | None = None  # logged in, for log lines
        self._peer_text = ""
        self._busy = False
        self._draining = False
        self._reading_paused = False
        self._closing = False
        self._lost = False
        self._committing = False
        self._sender: MessageSender | None = None
        #: The first status the running command answered ("+OK", "-ERR").
        self._answer: str | None = None
        #: Every answer goes out through it (made when the connection is).
        self._out = Outbox(None)

    @property
    def _transport(self) -> Any:
        """The transport: Twisted types it as an optional ITransport, but the
        TCP and TLS transports it is in practice are also producers and
        consumers (and TCP is an ITLSTransport)."""
        return self.transport

    # -- connection -------------------------------------------------------------

    def connectionMade(self) -> None:
        no_delay(self.transport)
        self._out = Outbox(self.transport)
        peer: IAddress = self._transport.getPeer()
        self._peer_text = address(peer)
        self.probe.opened(peer, self.kick)
        admitted = self._guard.open(peer)
        if isinstance(admitted, defer.Deferred):
            # Counted by the parent of several workers: no command runs
            # before the answer and the greeting.
            self._busy = True
            admitted.addCallback(self._greet, True)
            admitted.addErrback(self._admission_failed)
            return
        self._greet(admitted, False)

    def _greet(self, admitted: bool, waited: bool) -> None:
        if self._lost:
            return
        if not admitted:
            if self._guard.server_full:
                LOG.warn(
                    "POP3: limits.max_connections reached, {peer} refused", peer=self._peer_text
                )
                self.send(b"-ERR [SYS/TEMP] Too many connections to this server, try again later.")
            else:
                LOG.warn("POP3: too many connections from {peer}", peer=self._peer_text)
                self.send(b"-ERR [SYS/TEMP] Too many connections from your address.")
            self._closing = True
            self._lose_connection()
            return
        self._timer.start()
        greeting = b"+OK mailsrv POP3 server ready."
        if self.policy.challenge_auth_available():
            banner = sasl.make_challenge(self.policy.hostname)
            self._authorization.banner = banner
            greeting += b" " + banner
        self.send(greeting)
        if waited:
            self._command_done(None)  # run what the client sent meanwhile

    def _admission_failed(self, failure: Failure) -> None:
        LOG.failure("POP3: cannot count the connection", failure)
        if not self._lost:
            self.send(b"-ERR [SYS/TEMP] Server unavailable, try again later.")
            self._closing = True
            self._lose_connection()

    def connectionLost(self, reason: Failure | None = None) -> None:
        """Give back what the session holds.  Each step runs even if one
        before it failed: a skipped release would keep the maildrop locked
        and the user's and the address's connection slots taken."""
        self._lost = True
        self._closing = True
        self._framer.clear()
        self._authorization.cancel_sasl()
        steps: list[Callable[[], object]] = [self._timer.stop, self._stop_sender]
        if not self._committing:  # else the commit's callbacks end the session
            steps.append(self._end_session)
        steps += [self._guard.close, self.probe.closed]
        log.call_each(LOG, "POP3", *steps)

    def _stop_sender(self) -> None:
        if self._sender is not None:
            self._sender.stopProducing()

    def _enter_transaction(self, transaction: Transaction, user: str) -> bool:
        """The maildrop is open: TRANSACTION state, unless the client left
        meanwhile (then the session ends here; False)."""
        self._transaction, self._user = transaction, user
        if self._lost:
            self._end_session()
            return False
        self.state = State.TRANSACTION
        self._timer.logged_in(self.policy.pop3_timeout)
        return True

    def _end_session(self) -> None:
        """Release the maildrop without committing, log the avatar out and
        free the user's slot, each whatever the one before did.

        Reached on connection loss (nothing deleted without QUIT) and after
        the commit; safe to call more than once.
        """
        transaction, self._transaction = self._transaction, None
        steps: list[Callable[[], object]] = []
        if transaction is not None:
            steps += [transaction.release, transaction.logout_avatar]
        log.call_each(LOG, "POP3", *steps, self._release_user)

    def _release_user(self) -> None:
        self._user = None
        self._guard.release_user()

    # -- timers -------------------------------------------------------------------

    def _expired(self, reason: Expiry) -> None:
        """RFC 1939 3 autologout: end the session without entering UPDATE."""
        if reason is Expiry.GRACE:
            self._abort_connection()
            return
        if reason is Expiry.LOGIN_DEADLINE:
            LOG.info(
                "POP3: {peer} did not log in within {seconds} seconds",
                peer=self._peer_text,
                seconds=f"{self.policy.login_timeout:g}",
            )
        else:
            LOG.info("POP3 session of {user} timed out", user=self._user or "(not logged in)")
        self._closing = True
        if self._sender is not None and self._sender.sending:
            self._abort_connection()  # a client that stopped reading
            return
        if reason is Expiry.LOGIN_DEADLINE:
            self.send(b"-ERR Disconnected: too long without logging in.")
        else:
            self.send(b"-ERR Disconnected for inactivity.")
        self._lose_connection()
        self._timer.grace()

    # -- input: framing and the command queue ---------------------------------------

    def dataReceived(self, data: bytes) -> None:
        self.probe.received(len(data))
        if self._closing:
            return
        if self._framer.receive(data):
            # RFC 1939 3: a whole command restarts the autologout timer; a
            # byte a second must not hold a connection forever.
            self._timer.activity()
        if self._framer.pending > self.policy.max_pending_commands and not self._reading_paused:
            self._reading_paused = True
            self._transport.pauseProducing()
        self._answer_pending()
        send_now(self.transport)  # what a message's producer wrote meanwhile

    def _answer_pending(self) -> None:
        """Run the commands waiting, their answers leaving in one send."""
        held = self._out.hold()
        try:
            self._drain()
        finally:
            if held:
                self._out.flush()

    def _drain(self) -> None:
        if self._draining:
            return
        self._draining = True
        try:
            while not self._busy and not self._closing:
                event = self._framer.next_event()
                if event is None:
                    break
                result = self._process(event)
                if result is not None:
                    self._busy = True
                    result.addErrback(self._command_failed)
                    result.addBoth(self._command_done)
                else:
                    self._report()
        finally:
            self._draining = False
        if self._reading_paused and not self._framer.pending and not self._closing:
            self._reading_paused = False
            self._transport.resumeProducing()

    def _command_done(self, _: object) -> None:
        self._busy = False
        self._report()
        if not self._lost:
            self._answer_pending()

    def _report(self) -> None:
        """A command is over (unless a SASL exchange goes on): tell the
        observers its result and the session's state."""
        # The user stays the session's once logged in (QUIT gives the slot
        # back before its answer is counted).
        self.probe.update(_state(self.state), self._user or self.probe.info.user)
        if not self._authorization.in_sasl:
            answer, self._answer = self._answer, None
            self.probe.command_done(answer or "-ERR")

    def _command_failed(self, failure: Failure) -> None:
        error = failure.value
        if isinstance(error, CommandError):
            self.error(error.text, error.code)
        else:
            self._internal_error(failure)

    def _internal_error(self, failure: Failure | None = None) -> None:
        """Log ``failure`` (None: the exception being handled) and answer."""
        LOG.failure("POP3: internal error", failure)
        if not self._lost:
            self.send(b"-ERR [SYS/TEMP] Internal server error.")

    def _process(self, event: Event) -> Result:
        try:
            if isinstance(event, LineTooLong):
                if not self._authorization.in_sasl:
                    self._answer = None
                    self.probe.command_started(UNKNOWN)
                self._authorization.cancel_sasl()
                raise CommandError(
                    f"Line too long (the limit is {self._framer.max_length} octets)."
                )
            if self._authorization.in_sasl:
                self.probe.client_line("(SASL response)")
                return self._authorization.sasl_response(event)
            if self.probe.lines:  # made only for a debug log that shows them
                self.probe.client_line(loggable(event))
            return self._dispatch(event)
        except CommandError as e:
            self.error(e.text, e.code)
            return None
        except Exception:
            self._internal_error()
            return None

    def _dispatch(self, line: bytes) -> Result:
        args = line.split()
        name = args.pop(0).upper() if args else b""
        self._answer = None
        self.probe.command_started(name.decode("ascii", "replace"), len(line) + 2)
        if not name:
            raise CommandError("Empty command.")
        spec = COMMANDS.get(name)
        if spec is None:
            if not name.isalnum() or not name.isascii() or len(name) > 16:
                raise CommandError("Unknown command.")
            raise CommandError(f"Unknown command: {name.decode('ascii')}")
        if self.state not in spec.states:
            raise CommandError(spec.refusal())
        if self.policy.hooks is not None:
            return self._hooked(self.policy.hooks, spec, args, line)
        return spec.handler(self._group(spec), args, line)

    def _hooked(self, hooks: SessionHooks, spec: Command, args: list[bytes], line: bytes) -> Result:
        """Run ``spec`` as the policy's hooks say (:mod:`mailsrv.hooks`)."""
        name = spec.name.decode("ascii")
        capability = POP3_COMMAND_CAPABILITIES.get(name)
        if capability is not None:
            own = {cap.split(b" ")[0] for cap in self._own_capabilities()}
            shown = {cap.split(b" ")[0] for cap in self.capabilities()}
            if capability.encode("ascii") in own - shown:
                raise CommandError(f"Unknown command: {name}")
        hook = hooks.command("POP3", name)
        if hook is None:
            return spec.handler(self._group(spec), args, line)
        d: defer.Deferred[Any] = (
            task.deferLater(self.clock, hook.delay, lambda: None)
            if hook.delay > 0
            else defer.succeed(None)
        )
        if hook.refuse is not None:
            refusal = hook.refuse

            def refuse(_: object) -> None:
                raise CommandError(refusal)

            d.addCallback(refuse)
        else:
            d.addCallback(lambda _: spec.handler(self._group(spec), args, line))
        if hook.drop is not None:
            # POP3 answers as it goes: the connection goes after the answer.
            d.addBoth(self._drop)
        return d

    def _drop(self, result: object) -> object:
        if not self._lost:
            self.close()
        return result

    def _group(self, spec: Command) -> object:
        """The object that runs ``spec``'s handler on this connection."""
        if spec.group is Transaction:
            return self._transaction
        if spec.group is Authorization:
            return self._authorization
        return self

    # -- output (the command groups' Connection) ------------------------------------

    @property
    def lost(self) -> bool:
        return self._lost

    def _write(self, data: bytes) -> None:
        """Every answer goes out here (RETR's message excepted: :meth:`stream`)."""
        if not self._lost:
            self._out.write(data)
            if self._answer is None and data[:1] in (b"+", b"-") and data[:2] != b"+ ":
                self._answer = "+OK" if data[:1] == b"+" else "-ERR"
            self.probe.wrote(data)

    def send(self, line: bytes) -> None:
        self._write(line + b"\r\n")

    def ok(self, text: str = "") -> None:
        self._write(ok_line(text))

    def error(self, text: str, code: str | None = None) -> None:
        self._write(error_line(text, code))

    def multiline(self, first: str, lines: Sequence[bytes]) -> None:
        self._write(multiline(first, lines))

    def close(self) -> None:
        self._closing = True
        self._framer.clear()
        self._lose_connection()

    def abort(self) -> None:
        self._closing = True
        self._abort_connection()

    def _lose_connection(self) -> None:
        """Close once every answer written, held ones included, has gone."""
        self._out.flush()
        self._transport.loseConnection()

    def _abort_connection(self) -> None:
        """Cut the connection now: what is held or buffered never goes."""
        self._out.discard()
        self._transport.abortConnection()

    def send_message(self, text: str, body: bytes) -> None:
        if self._lost:
            return
        status = ok_line(text)
        self._out.write(status + body)
        if self._answer is None:
            self._answer = "+OK"
        self.probe.wrote(status)
        self.probe.sent(len(body))
        if self.probe.lines:
            self.probe.server_line(f"<{len(body)} octets of message>")

    def stream(self, source: IO[bytes], encoder: MessageEncoder) -> defer.Deferred[bool]:
        self._out.flush()  # the status line before the message
        sender = MessageSender(self._transport, source, encoder, self._timer.progress)
        self._sender = sender

        def sent(result: object) -> object:
            self.probe.sent(sender.sent)
            self.probe.server_line(f"<{sender.sent} octets of message>")
            return result

        return sender.start().addBoth(sent)

    def tls_available(self) -> bool:
        return self._guard.tls_available(self._transport)

    def start_tls(self) -> None:
        self._framer.clear()
        self._out.flush()  # STLS's +OK goes in the clear (RFC 2595 4)
        self._guard.start_tls(self._transport)

    def kick(self) -> None:
        """An administrator ends the session (``mailsrv kick``): ``-ERR`` and
        the close, without UPDATE (RFC 1939 6: only QUIT deletes), and no
        command after it runs.  Halfway through a message the connection
        is cut instead (an -ERR there would read as message text); a commit
        QUIT already began finishes."""
        if self._closing or self._lost:
            return
        self._closing = True
        self._framer.clear()
        if self._sender is not None and self._sender.sending:
            self._abort_connection()
            return
        if not self._committing:
            self.send(b"-ERR Disconnected by the administrator.")
        self._lose_connection()

    def channel_bindings(self) -> ChannelBindings | None:
        return self._guard.channel_bindings(self._transport)

    # -- any state -------------------------------------------------------------

    def capabilities(self) -> list[bytes]:
        """What CAPA lists: what works on this connection.

        RFC 2449 5 asks that capabilities of the AUTHORIZATION state be
        announced in both states, and 6.2 and 6.3 that USER and SASL be
        announced the same after login (so a client may ask CAPA only
        once); only STLS, "AUTHORIZATION state only" (RFC 2595 4), goes
        away after login.
        """
        caps = self._own_capabilities()
        hooks = self.policy.hooks
        if hooks is None:
            return caps
        shown = hooks.capabilities("POP3", [cap.decode("ascii") for cap in caps])
        return [cap.encode("ascii") for cap in shown]

    def _own_capabilities(self) -> list[bytes]:
        """What CAPA lists without the policy's hooks."""
        caps = [b"TOP", b"UIDL", b"RESP-CODES", b"AUTH-RESP-CODE", b"PIPELINING"]
        if self._guard.plaintext_allowed():
            caps.insert(1, b"USER")
        offered = self._guard.mechanisms(self.channel_bindings())
        if offered:
            caps.append(b"SASL " + " ".join(offered).encode("ascii"))
        if self.state is State.AUTHORIZATION and self.tls_available():
            caps.append(b"STLS")
        # RFC 6856 2: UTF8 (without its USER tag: user names stay as the
        # users file has them, and the LANG command is not offered).
        caps += [b"UTF8", b"EXPIRE NEVER", b"LOGIN-DELAY 0", b"IMPLEMENTATION mailsrv"]
        return caps

    @command("CAPA", *ANY_STATE)
    def capa(self, args: list[bytes], line: bytes) -> None:
        no_arguments(args)
        self.multiline("Capability list follows", self.capabilities())

    @command("QUIT", *ANY_STATE)
    def quit(self, args: list[bytes], line: bytes) -> Result:
        transaction = self._transaction
        if self.state is not State.TRANSACTION or transaction is None:
            self.ok("Logging out.")
            self.close()
            return None
        self.state = State.UPDATE
        self._committing = True
        return transaction.commit(self._user).addBoth(self._updated)

    def _updated(self, result: object) -> object:
        self._committing = False
        self._end_session()
        if not self._lost:
            self.close()
        return result

    @command("RPOP", *ANY_STATE)
    def rpop(self, args: list[bytes], line: bytes) -> None:
        raise CommandError("RPOP is not supported.")


#: Every command, by name: the groups' declarations.
COMMANDS: dict[bytes, Command] = collect(Authorization, Transaction, POP3)


def _declared(name: str) -> bool:
    return name.encode("ascii", "replace") in COMMANDS


def _state(state: State) -> str:
    """A state as ``who`` and the metrics show it: ``transaction``."""
    return _STATE_NAMES[state]


_STATE_NAMES = {state: state.value.lower() for state in State}


class POP3Factory(SessionFactory):
    """Builds :class:`POP3` sessions for a Portal whose realm gives IMaildrop
    avatars: ``POP3Factory(portal, policy, implicit_tls=...)``; implicit-TLS
    sessions accept plaintext passwords and do not offer STLS."""

    protocol = POP3

    def buildProtocol(self, addr: IAddress | None) -> POP3:
        return self.build(POP3)
