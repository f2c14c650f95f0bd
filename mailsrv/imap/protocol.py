"""The IMAP server's Twisted protocol: a thin adapter over the session.

:class:`IMAP4Server` owns what is Twisted's: the transport, reading and
pausing it, the output producer (:class:`~mailsrv.imap.output.ResponseWriter`)
and starting TLS.  Bytes go to the
sans-I/O framer (:mod:`mailsrv.imap.framer`) and its events, one at a time,
to the :class:`~mailsrv.imap.session.Session`, which decides everything
else.  While a command runs (or the client does not read its answers) the
transport is paused and unread input waits in the framer, so one command
plus one network read is all a connection holds.

Embed it with ``IMAP4ServerFactory(portal, policy)``; the portal's realm
must hand out :class:`mailsrv.interfaces.IAccount` avatars.
"""

from __future__ import annotations

from typing import Any

from twisted.cred.portal import Portal
from twisted.internet.interfaces import IAddress, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure

from mailsrv import log
from mailsrv.imap.commands import REGISTRY
from mailsrv.imap.compress import CorruptStream, Deflater, Inflater
from mailsrv.imap.framer import (
    NEED_DATA,
    ContinuationLine,
    Event,
    FramedCommand,
    Framer,
    LineTooLong,
    LiteralNeeded,
)
from mailsrv.imap.output import ResponseWriter
from mailsrv.imap.registry import State
from mailsrv.imap.session import LOG, LiteralAnswer, Session
from mailsrv.policy import SessionPolicy
from mailsrv.session import SessionFactory, no_delay, resolve_clock
from mailsrv.writing import send_now

__all__ = ["IMAP4Server", "IMAP4ServerFactory"]


class IMAP4Server(Protocol):
    """One IMAP4rev1 connection.

    ``secure`` says the connection is already TLS (implicit-TLS listener);
    ``clock`` drives the autologout timer, the failed-login delay and IDLE
    pushes (tests pass a ``task.Clock``).
    """

    def __init__(
        self,
        portal: Portal,
        policy: SessionPolicy | None = None,
        *,
        secure: bool = False,
        clock: IReactorTime | None = None,
    ) -> None:
        self.clock = clock = resolve_clock(clock)
        policy = policy if policy is not None else SessionPolicy()
        self.session = Session(self, portal, policy, clock, REGISTRY, secure=secure)
        self._framer = Framer(policy.max_line_length)
        #: COMPRESS=DEFLATE: what the client sends goes through it first.
        self._inflater: Inflater | None = None
        self._output: ResponseWriter | None = None
        self._lost = False
        self._paused = False  # no command is handed over until resumed
        #: The transport's reading is paused too: only once the client sent
        #: more while paused (see _pause).
        self._held = False
        self._reading = False  # inside _read_events

    @property
    def _transport(self) -> Any:
        return self.transport

    # -- the connection ---------------------------------------------------------

    def connectionMade(self) -> None:
        no_delay(self.transport)
        self._output = ResponseWriter(self.transport)
        self.session.connected(self._output, self._transport.getPeer())
        if self.session.busy:
            self._pause()  # the connection count answers later: no reading before the greeting

    def connectionLost(self, reason: Failure | None = None) -> None:
        """Give back what the session holds.  Each step runs even if one
        before it failed: a skipped release would keep the user's and the
        address's connection slots taken until restart."""
        self._lost = True
        session = self.session
        session.lost = True
        session.state = State.LOGOUT
        log.call_each(
            LOG,
            "IMAP",
            self._stop_output,
            session.timer.stop,
            self._drop_command,
            self._end_session,
            session.guard.close,
        )

    def _stop_output(self) -> None:
        if self._output is not None:
            self._output.close()

    # The cleanup steps' names are in the log line of one that fails.

    def _drop_command(self) -> None:
        """Forget the command being received, closing its spooled literals."""
        self.session.drop_continuation()
        self._framer.close()

    def _end_session(self) -> None:
        self.session.end()

    # -- input ------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        self.session.probe.received(len(data))
        if self.session.state is State.LOGOUT:
            return
        if self._inflater is not None:
            self._inflater.receive(data)
        else:
            self._framer.receive(data)
        if self._paused:
            # The client sends on while a command runs (pipelining): read
            # no more until it is done, so the input waiting is one read.
            self._hold()
            return
        self._read_events()
        send_now(self.transport)  # with TLS, its ciphertext written meanwhile

    def _read_events(self) -> None:
        """Hand framed input to the session until it runs out or the session
        has to wait (a command is running).

        Re-entered from a command that completes at once (through
        :meth:`command_done`), it leaves the work to the loop already
        running, so events stay in order.
        """
        if self._reading:
            return
        self._reading = True
        # The answers written meanwhile leave together, in one send.
        output = self._output
        holding = output is not None and output.hold()
        try:
            framer, session = self._framer, self.session
            while not self._paused and not self._lost and session.state is not State.LOGOUT:
                if self._transport.disconnecting:
                    return
                progress = framer.progress
                event = framer.next_event()
                if framer.progress != progress:
                    session.activity()
                if event is NEED_DATA:
                    if self._inflate():
                        continue
                    return
                self._hand_over(event)
                if session.busy and session.continuation is None:
                    self._pause()  # until the command completes
        finally:
            self._reading = False
            if holding:
                assert output is not None
                output.end_turn()

    def _inflate(self) -> bool:
        """Give the framer the next piece of the client's decompressed
        input, if there is any (a piece at a time: the framer holds no more
        than the compressed input would have been)."""
        inflater = self._inflater
        if inflater is None or not inflater.has_input:
            return False
        try:
            data = inflater.inflate()
        except CorruptStream as e:
            self.session.corrupt_input(str(e))
            return False
        self._framer.receive(data)
        return bool(data)

    def _hand_over(self, event: Event) -> None:
        session = self.session
        if isinstance(event, FramedCommand):
            session.execute(event.segments)
        elif isinstance(event, LiteralNeeded):
            answer = session.literal_needed(event)
            if answer is LiteralAnswer.REFUSED:
                self._framer.refuse_literal()
            else:
                self._framer.accept_literal(spool=answer is LiteralAnswer.SPOOLED)
        elif isinstance(event, ContinuationLine):
            session.continuation_line(event.line)
        elif isinstance(event, LineTooLong):
            session.line_too_long(event.tag)

    def _pause(self, hold: bool = False) -> None:
        """Hand over no more commands until :meth:`_resume`.  Unless told to
        ``hold`` it at once, the transport goes on reading until the client
        actually sends more (:meth:`_hold`): a client that waits for each
        answer, as most do, costs no pause and resume of the socket (up to
        four epoll_ctl calls) per command that waits for storage."""
        if not self._paused and not self._lost:
            self._paused = True
        if hold:
            self._hold()

    def _hold(self) -> None:
        if not self._held and not self._lost:
            self._held = True
            self._transport.pauseProducing()

    def _resume(self) -> None:
        if self._paused:
            self._paused = False
            if not self._lost:
                if self._held:
                    self._held = False
                    self._transport.resumeProducing()
                self._read_events()

    # -- what the session asks (mailsrv.imap.session.Connection) ----------------

    def close(self) -> None:
        """Close after what is written: a transport with a registered
        producer would otherwise never close."""
        if self._output is not None:
            self._output.close()
        if self.transport is not None:
            self._transport.loseConnection()

    def abort(self) -> None:
        if self._output is not None:
            self._output.abort()  # what is held is dropped, as the transport's buffer
        if self.transport is not None:
            self._transport.abortConnection()

    def discard_input(self) -> None:
        self._framer.clear()

    def expect_continuation(self) -> None:
        self._framer.expect_continuation()
        # A command that waited before asking (a SASL step after a look-up)
        # was paused as busy: read again, or its answer would never come.
        self._resume()

    def start_compression(self) -> None:
        """COMPRESS=DEFLATE from now on, both ways (RFC 4978 3): responses
        through a deflater, and input, including any that arrived after the
        COMPRESS command and was not framed yet, through an inflater."""
        assert self._output is not None
        self._output.compress(Deflater(), self.clock)
        self._inflater = Inflater()
        self._inflater.receive(self._framer.take_unread())

    def command_done(self) -> None:
        output = self._output
        if output is not None and output.paused and not self._lost:
            # The client is not reading our answers: read no further commands
            # until it does, so pipelined commands cannot pile up responses.
            self._pause(hold=True)
            output.ready().addCallback(self._output_drained)
        elif self._paused:
            self._resume()

    def _output_drained(self, _: object) -> None:
        if not self.session.busy:
            self._resume()


class IMAP4ServerFactory(SessionFactory):
    """Builds :class:`IMAP4Server` sessions for a Portal whose realm gives
    IAccount avatars: ``IMAP4ServerFactory(portal, policy, implicit_tls=...)``."""

    protocol = IMAP4Server

    def buildProtocol(self, addr: IAddress | None) -> IMAP4Server:
        return self.build(IMAP4Server)
