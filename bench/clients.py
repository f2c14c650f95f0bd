"""Small asyncio IMAP and POP3 clients for the benchmarks.

They speak just enough of each protocol to drive the workloads and read
answers quickly: responses are split on CRLF in one buffer, literals
(``{n}`` at a line's end) are skipped by length rather than scanned, and a
caller that only needs the tagged status does not pay for keeping the
untagged lines.  Untagged ``EXISTS`` and ``EXPUNGE`` keep :attr:`exists`
current, as a real client's view of the mailbox would.

A benchmark helper, not part of mailsrv.
"""

from __future__ import annotations

import asyncio
import re
import ssl
import time
import zlib

import attrs

__all__ = ["IMAPClient", "IMAPError", "POP3Client", "Reply"]

_LITERAL = re.compile(rb"\{(\d+)\+?\}$")
_EXISTS = re.compile(rb"^\* (\d+) (EXISTS|EXPUNGE)\b", re.IGNORECASE)
READ_SIZE = 256 * 1024


class IMAPError(Exception):
    """The server hung up or answered something we cannot follow."""


@attrs.define
class Reply:
    """A command's tagged answer and, when asked for, its untagged responses."""

    status: str
    text: bytes
    untagged: list[bytes]
    count: int  # untagged responses seen
    octets: int  # octets of the whole answer
    seconds: float  # from the command's first octet sent to the tagged line read

    @property
    def ok(self) -> bool:
        return self.status == "OK"


class _Buffered:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.buf = bytearray()
        self.pos = 0
        #: Set once COMPRESS=DEFLATE is on (RFC 4978): what the server sends
        #: is inflated here, what we send deflated in :meth:`send`.
        self.inflater: zlib._Decompress | None = None
        self.deflater: zlib._Compress | None = None

    async def _fill(self) -> None:
        if self.pos:
            del self.buf[: self.pos]
            self.pos = 0
        while True:
            data = await self.reader.read(READ_SIZE)
            if not data:
                raise IMAPError("connection closed by the server")
            if self.inflater is not None:
                data = self.inflater.decompress(data)
                if not data:
                    continue  # a piece of a deflate block: read on
            self.buf += data
            return

    def send(self, data: bytes) -> None:
        """Write ``data``, deflated and sync-flushed when compression is on."""
        if self.deflater is not None:
            data = self.deflater.compress(data) + self.deflater.flush(zlib.Z_SYNC_FLUSH)
        self.writer.write(data)

    async def line(self) -> bytes:
        """One CRLF-terminated line (without CRLF)."""
        while True:
            end = self.buf.find(b"\r\n", self.pos)
            if end >= 0:
                line = bytes(self.buf[self.pos : end])
                self.pos = end + 2
                return line
            await self._fill()

    def close(self) -> None:
        if not self.writer.is_closing():
            self.writer.close()

    async def wait_closed(self) -> None:
        self.close()
        try:
            await self.writer.wait_closed()
        except (ConnectionError, OSError):
            pass


class IMAPClient(_Buffered):
    """One IMAP connection; commands run one at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        super().__init__(reader, writer)
        self._tag = 0
        self.exists = 0
        self.greeting = b""

    @classmethod
    async def connect(cls, host: str, port: int, tls: ssl.SSLContext | None = None) -> IMAPClient:
        """Connect (over implicit TLS with ``tls``) and read the greeting."""
        reader, writer = await asyncio.open_connection(host, port, limit=READ_SIZE, ssl=tls)
        client = cls(reader, writer)
        client.greeting = await client.line()
        if not client.greeting.startswith(b"* OK"):
            raise IMAPError(f"unexpected greeting {client.greeting[:80]!r}")
        return client

    def _next_tag(self) -> bytes:
        self._tag += 1
        return b"a%d" % self._tag

    async def _response(self, keep: bool) -> tuple[bytes, int]:
        """Read one whole response, literals included: (its first line, octets).

        The returned text holds literals only when ``keep`` is true.
        """
        start = self.pos
        scan = self.pos
        pieces: list[bytes] = []
        while True:
            end = self.buf.find(b"\r\n", scan)
            if end < 0:
                offset = self.pos
                await self._fill()
                start -= offset
                scan -= offset
                continue
            match = _LITERAL.search(self.buf, max(scan, end - 12), end)
            if match is None:
                if keep or not pieces:
                    pieces.append(bytes(self.buf[scan:end]))
                octets = end + 2 - start
                self.pos = end + 2
                return b"".join(pieces) if keep else pieces[0], octets
            size = int(match.group(1))
            need = end + 2 + size
            while len(self.buf) < need:
                offset = self.pos
                await self._fill()
                start -= offset
                scan -= offset
                end -= offset
                need -= offset
            if keep:
                pieces.append(bytes(self.buf[scan:need]))
            elif not pieces:
                pieces.append(bytes(self.buf[scan:end]))
            scan = need
            # Keep the consumed part from growing without end during one
            # long response: everything before ``scan`` is settled.
            if not keep and scan - self.pos > READ_SIZE:
                start -= scan - self.pos
                del self.buf[self.pos : scan]
                scan = self.pos

    async def read_tagged(self, tag: bytes, keep: bool = False, started: float = 0.0) -> Reply:
        untagged: list[bytes] = []
        count = 0
        octets = 0
        prefix = tag + b" "
        while True:
            first, size = await self._response(keep)
            octets += size
            if first.startswith(prefix):
                status, _, text = first[len(prefix) :].partition(b" ")
                return Reply(
                    status.decode("ascii", "replace").upper(),
                    text,
                    untagged,
                    count,
                    octets,
                    time.perf_counter() - started,
                )
            if first.startswith(b"* "):
                count += 1
                self._note(first)
                if keep:
                    untagged.append(first)
            elif first.startswith(b"+"):
                continue
            else:
                raise IMAPError(f"unexpected line {first[:80]!r}")

    def _note(self, line: bytes) -> None:
        match = _EXISTS.match(line)
        if match is None:
            return
        if match.group(2).upper() == b"EXISTS":
            self.exists = int(match.group(1))
        else:
            self.exists -= 1

    async def command(self, text: str | bytes, keep: bool = False) -> Reply:
        """Send ``tag text`` and read up to its tagged answer."""
        tag = self._next_tag()
        data = text.encode() if isinstance(text, str) else text
        started = time.perf_counter()
        self.send(tag + b" " + data + b"\r\n")
        return await self.read_tagged(tag, keep, started)

    async def compress(self) -> Reply:
        """``COMPRESS DEFLATE``; once OK, both directions are raw DEFLATE
        (zlib's defaults on this side, as a client library would use)."""
        reply = await self.command("COMPRESS DEFLATE")
        if reply.ok:
            if self.pos < len(self.buf):
                raise IMAPError("data after COMPRESS's OK before compression began")
            self.deflater = zlib.compressobj(6, zlib.DEFLATED, -15)
            self.inflater = zlib.decompressobj(-15)
        return reply

    async def login(self, user: str, password: str) -> Reply:
        return await self.command(f'LOGIN "{user}" "{password}"')

    async def select(self, mailbox: str = "INBOX") -> Reply:
        return await self.command(f'SELECT "{mailbox}"')

    async def append(self, mailbox: str, message: bytes, flags: str = "") -> Reply:
        """APPEND with a LITERAL+ literal (both servers advertise it)."""
        tag = self._next_tag()
        flag_part = f" ({flags})" if flags else ""
        head = f'APPEND "{mailbox}"{flag_part} {{{len(message)}+}}\r\n'.encode()
        started = time.perf_counter()
        self.send(tag + b" " + head + message + b"\r\n")
        return await self.read_tagged(tag, False, started)

    async def idle_start(self) -> bytes:
        """Send IDLE and wait for the continuation; returns the tag."""
        tag = self._next_tag()
        self.send(tag + b" IDLE\r\n")
        while True:
            line = await self.line()
            if line.startswith(b"+"):
                return tag
            if line.startswith(b"* "):
                self._note(line)
                continue
            raise IMAPError(f"IDLE refused: {line[:80]!r}")

    async def idle_wait(self) -> bytes:
        """The next untagged line during IDLE."""
        line = await self.line()
        self._note(line)
        return line

    async def idle_done(self, tag: bytes) -> Reply:
        started = time.perf_counter()
        self.send(b"DONE\r\n")
        return await self.read_tagged(tag, False, started)

    async def logout(self) -> None:
        try:
            await self.command("LOGOUT")
        except (IMAPError, ConnectionError):
            pass
        await self.wait_closed()


class POP3Client(_Buffered):
    """One POP3 connection."""

    @classmethod
    async def connect(cls, host: str, port: int) -> POP3Client:
        reader, writer = await asyncio.open_connection(host, port, limit=READ_SIZE)
        client = cls(reader, writer)
        greeting = await client.line()
        if not greeting.startswith(b"+OK"):
            raise IMAPError(f"unexpected POP3 greeting {greeting[:80]!r}")
        return client

    async def command(self, text: str) -> bytes:
        self.writer.write(text.encode() + b"\r\n")
        line = await self.line()
        if not line.startswith(b"+OK"):
            raise IMAPError(f"POP3 {text.split()[0]} refused: {line[:80]!r}")
        return line

    async def multiline(self, text: str) -> int:
        """A command with a multi-line answer; returns the octets of its body."""
        await self.command(text)
        start = scan = self.pos
        while True:
            if self.buf.startswith(b".\r\n", start):
                self.pos = start + 3  # an empty body
                return 0
            # A body ends with its last line's CRLF and ".CRLF".
            end = self.buf.find(b"\r\n.\r\n", scan)
            if end >= 0:
                self.pos = end + 5
                return end + 2 - start
            scan = max(len(self.buf) - 4, start)
            offset = self.pos
            await self._fill()
            start -= offset
            scan -= offset

    async def login(self, user: str, password: str) -> None:
        await self.command(f"USER {user}")
        await self.command(f"PASS {password}")

    async def quit(self) -> None:
        try:
            await self.command("QUIT")
        except (IMAPError, ConnectionError):
            pass
        await self.wait_closed()
