#!/usr/bin/env python3
"""Memory per idle IMAP session, with and without COMPRESS=DEFLATE (RFC 4978).

Starts mailsrv as its users do (``bench/peers.py``: ``twistd -n mailsrv``
over Maildir), opens ``--connections`` sessions that log in, SELECT the
INBOX and FETCH a message's header (so both halves of a compressed session
have been used: zlib allocates the inflater's window on first use), then
leave them idle, and reads the server's resident memory before and after.
It does this twice on a fresh server each time: once with every session
plain, once with every session compressed (``COMPRESS DEFLATE`` after
login, then the same commands through zlib).  It prints the RSS added per
session in each mode and the difference, which is what compression costs
an idle session.

Run: ``python bench/compress_memory.py [--connections N]`` (twistd must find the
mailsrv plugin: a plain install, or ``PYTHONPATH=.`` beside an editable one).
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import tempfile
import time
import zlib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from peers import Mailsrv
from procs import raise_fd_limit

HOST = "127.0.0.1"
PASSWORD = "bench-password"
MESSAGE = (
    b"From: Alice <alice@example.org>\r\nTo: bob@example.org\r\n"
    b"Subject: memory per session\r\nDate: Fri, 4 Dec 2026 19:00:00 +0000\r\n\r\n"
    + 40
    * b"Some text of a message, some more text.\r\n"
)


class Session:
    """One blocking IMAP session, compressed once :meth:`compress` is called."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection((HOST, port))
        self.buffer = b""
        self.deflater: zlib._Compress | None = None
        self.inflater: zlib._Decompress | None = None
        self.until(b"\r\n")

    def until(self, end: bytes) -> bytes:
        while end not in self.buffer:
            data = self.sock.recv(65536)
            if not data:
                raise RuntimeError(f"connection closed; received {self.buffer!r}")
            self.buffer += self.inflater.decompress(data) if self.inflater else data
        at = self.buffer.index(end) + len(end)
        taken, self.buffer = self.buffer[:at], self.buffer[at:]
        return taken

    def command(self, tag: str, text: str) -> bytes:
        data = f"{tag} {text}\r\n".encode()
        if self.deflater is not None:
            data = self.deflater.compress(data) + self.deflater.flush(zlib.Z_SYNC_FLUSH)
        self.sock.sendall(data)
        return self.tagged(tag, text)

    def tagged(self, tag: str, what: str) -> bytes:
        """Lines up to the tagged answer; it must be OK."""
        answer = b""
        while True:
            line = self.until(b"\r\n")
            answer += line
            if line.startswith(f"{tag} ".encode()):
                if not line.startswith(f"{tag} OK".encode()):
                    raise RuntimeError(f"{what}: {answer!r}")
                return answer

    def compress(self) -> None:
        self.sock.sendall(b"z COMPRESS DEFLATE\r\n")
        answer = self.until(b"\r\n")
        if not answer.startswith(b"z OK"):
            raise RuntimeError(f"COMPRESS: {answer!r}")
        self.deflater = zlib.compressobj(6, zlib.DEFLATED, -15)
        self.inflater = zlib.decompressobj(-15)


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(top: str, connections: int, compressed: bool) -> tuple[float, float]:
    """(KiB per idle session, seconds to open them all) on a fresh server."""
    passwd = os.path.join(top, "users")
    open(passwd, "a").close()
    # One process: the RSS read is that of the process holding the sessions
    # (with several workers the parent holds none of them).
    server = Mailsrv(top, passwd, log_level="warn", workers=1)
    server.add_user("bench", PASSWORD)
    server.start()
    try:
        assert server.process is not None
        pid = server.process.pid
        warm = Session(server.imap_port)
        warm.command("a", f"LOGIN bench {PASSWORD}")
        literal = f"APPEND INBOX {{{len(MESSAGE)}+}}\r\n".encode() + MESSAGE
        warm.sock.sendall(b"b " + literal + b"\r\n")
        warm.tagged("b", "APPEND")
        # One session of each kind first, so what every session shares
        # (imports, caches, the mailbox object) is counted before.
        first = open_session(server.imap_port, compressed)
        time.sleep(1)  # let the allocator settle; this is no synchronisation
        before = rss(pid)
        started = time.monotonic()
        sessions = [open_session(server.imap_port, compressed) for _ in range(connections)]
        elapsed = time.monotonic() - started
        time.sleep(1)
        after = rss(pid)
        for session in [first, warm, *sessions]:
            session.sock.close()
        return (after - before) / connections / 1024, elapsed
    finally:
        server.stop()


def open_session(port: int, compressed: bool) -> Session:
    session = Session(port)
    session.command("a", f"LOGIN bench {PASSWORD}")
    if compressed:
        session.compress()
    session.command("b", "SELECT INBOX")
    session.command("c", "FETCH 1 (FLAGS BODY.PEEK[HEADER])")
    return session


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=2000)
    args = parser.parse_args()
    raise_fd_limit(2 * args.connections + 200)
    rows = []
    for compressed in (False, True):
        with tempfile.TemporaryDirectory(prefix="mailsrv-bench-compress-") as top:
            per_session, elapsed = measure(top, args.connections, compressed)
        rows.append((compressed, per_session, elapsed))
        print(
            f"{'COMPRESS=DEFLATE' if compressed else 'plain':>16}: "
            f"{per_session:7.1f} KiB per idle session "
            f"({args.connections} sessions opened in {elapsed:.1f} s)",
            flush=True,
        )
    print(f"{'difference':>16}: {rows[1][1] - rows[0][1]:7.1f} KiB per idle session")


if __name__ == "__main__":
    main()
