"""Streaming a message to the client for RETR and TOP, paced by its reading."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import IO, Any

from twisted.internet import defer
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

from mailsrv import log
from mailsrv.pop3.commands import LOG
from mailsrv.pop3.wire import MessageEncoder

__all__ = ["CHUNK_SIZE", "MessageSender", "read_whole"]

#: How much of a message is read and written at a time by RETR and TOP.
CHUNK_SIZE = 64 * 1024


def read_whole(source: IO[bytes], limit: int) -> tuple[bytes, bool]:
    """Up to ``limit`` + 1 octets of ``source``, and whether that is all of it.

    RETR of a message no larger than ``limit`` (most are a few KB) goes out
    in one write, without a producer; a source that turns out longer than
    its listed size (or than ``limit``) is streamed from what was read on.
    Loops because a raw stream may return less than asked before its end;
    a buffered file or a BytesIO (exactly) returns less only at its end, so one read
    does for them (no second read just to meet the end of the file).
    """
    parts: list[bytes] = []
    total = 0
    short_at_end = type(source) in (io.BufferedReader, io.BytesIO)  # not a subclass's read
    while total <= limit:
        wanted = limit + 1 - total
        chunk = source.read(wanted)
        if not chunk:
            return b"".join(parts), True
        parts.append(chunk)
        total += len(chunk)
        if short_at_end and len(chunk) < wanted:
            return chunk if len(parts) == 1 else b"".join(parts), True
    return b"".join(parts), False


@implementer(IPushProducer)
class MessageSender:
    """Streams one message to the transport as a multi-line response.

    Reads a chunk, writes it, and stops whenever the transport says its
    buffer is full (``pauseProducing``); a client that reads slowly pauses
    the read, so memory stays at a few chunks per connection.
    """

    def __init__(
        self,
        transport: Any,  # an ITransport that is also an IConsumer
        source: IO[bytes],
        encoder: MessageEncoder,
        on_progress: Callable[[], None],
    ) -> None:
        self._transport = transport
        self._source = source
        self._encoder = encoder
        self._on_progress = on_progress
        self._paused = False
        self._producing = False
        self._finished = False
        #: Octets written so far.
        self.sent = 0
        #: Fires with ``encoder.complete`` when the terminator has been written.
        self.deferred: defer.Deferred[bool] = defer.Deferred()

    @property
    def sending(self) -> bool:
        """Started and not finished (nor stopped)."""
        return not self._finished

    def start(self) -> defer.Deferred[bool]:
        self._transport.registerProducer(self, True)
        if not self._finished:
            self.resumeProducing()
        return self.deferred

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        if self._producing or self._finished:
            return  # re-entered from transport.write, or already done
        self._producing = True
        try:
            while not self._paused and not self._finished:
                chunk = self._source.read(CHUNK_SIZE)
                data = self._encoder.feed(chunk)
                if data:
                    self._transport.write(data)
                    self.sent += len(data)
                if not chunk or self._encoder.done:
                    end = self._encoder.finish()
                    self._transport.write(end)
                    self.sent += len(end)
                    self._end()
                    self.deferred.callback(self._encoder.complete)
                else:
                    self._on_progress()
        except Exception:
            if not self._finished:
                self._end()
                self.deferred.errback()
        finally:
            self._producing = False

    def stopProducing(self) -> None:
        if not self._finished:
            self._end()
            self.deferred.errback(ConnectionLost("connection lost during RETR/TOP"))

    def _end(self) -> None:
        # Never raises: the transport calls stopProducing from its own
        # connectionLost, and an exception there would keep the session's
        # connectionLost (and every release in it) from running at all.
        self._finished = True
        log.call_each(LOG, "POP3", self._source.close, self._transport.unregisterProducer)
