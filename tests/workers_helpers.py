"""A daemon with several worker processes, and which worker serves a connection.

Which worker accepts a connection is the kernel's choice: whichever of
them takes it from the shared listening socket first.  Tests that need a
session on a given worker open connections until one lands there
(:meth:`WorkersDaemon.connect_to`), finding the worker from ``/proc``: the
server's end of the connection is a socket whose inode ``/proc/net/tcp``
gives and whose descriptor only the worker that accepted it holds.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable

from tests.helpers import STARTUP_DEADLINE, Daemon, read_line

#: Connections tried before giving up on landing on one worker.  Each lands
#: on either of two idle workers about as often, so 100 failing means the
#: workers do not share the socket at all.
ATTEMPTS = 100
#: The greetings of a connection over a per-address limit.
FULL = (b"* BYE Too many connections from your address", b"-ERR [SYS/TEMP] Too many")


def children(pid: int) -> list[int]:
    """The live child processes of ``pid``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                data = f.read()
        except OSError:
            continue
        fields = data[data.rfind(")") + 2 :].split()
        if fields[0] != "Z" and int(fields[1]) == pid:
            found.append(int(entry))
    return sorted(found)


def _server_socket_inode(server_port: int, client_port: int) -> str | None:
    """The inode of the server's end of the loopback TCP connection from
    ``client_port`` to ``server_port``."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    local, remote, inode = fields[1], fields[2], fields[9]
                    if (
                        int(local.rsplit(":", 1)[1], 16) == server_port
                        and int(remote.rsplit(":", 1)[1], 16) == client_port
                    ):
                        return inode
        except OSError:
            continue
    return None


def owner(pids: list[int], server_port: int, client: socket.socket) -> int | None:
    """Which of ``pids`` holds the server's end of ``client``'s connection."""
    inode = _server_socket_inode(server_port, client.getsockname()[1])
    if inode is None:
        return None
    target = f"socket:[{inode}]"
    for pid in pids:
        try:
            names = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for name in names:
            try:
                if os.readlink(f"/proc/{pid}/fd/{name}") == target:
                    return pid
            except OSError:
                continue
    return None


class WorkersDaemon:
    """``twistd -n mailsrv --workers N`` in ``directory`` with ``config``."""

    def __init__(
        self, directory: str, config: str, workers: int = 2, env: dict[str, str] | None = None
    ) -> None:
        self.count = workers
        self.daemon = Daemon.start(["--config", config], cwd=directory, env=env, workers=workers)

    @property
    def pid(self) -> int:
        return self.daemon.process.pid

    def wait_ready(self, times: int = 1) -> list[int]:
        """Wait for every worker to be ready (``times``: how many times the
        daemon has said so); the workers' pids."""
        self.daemon.wait_for(f"all {self.count} workers are ready", times)
        return self.workers()

    def workers(self) -> list[int]:
        return children(self.pid)

    def wait_for(self, text: str, count: int = 1) -> None:
        self.daemon.wait_for(text, count)

    def stop(self) -> None:
        self.daemon.stop()

    def connect_to(
        self,
        worker: int,
        port: int,
        greeting: Callable[[bytes], bool] = lambda line: line.startswith((b"* OK", b"+OK")),
    ) -> socket.socket:
        """A connection to ``port`` that worker ``worker`` (a pid) serves,
        its greeting read."""
        for _ in range(ATTEMPTS):
            sock, line = self.connect(port)
            if not greeting(line):
                sock.close()
                raise AssertionError(f"unexpected greeting {line!r}")
            if owner([worker], port, sock) == worker:
                return sock
            sock.close()
        raise AssertionError(f"no connection to port {port} landed on worker {worker}")

    def connect(self, port: int) -> tuple[socket.socket, bytes]:
        """A connection to ``port`` and its greeting, once the address has a
        free slot: the slots of connections just closed come back when their
        worker has seen the close and told the parent, so a new connection
        may meet the per-address limit until then."""
        deadline = time.monotonic() + STARTUP_DEADLINE
        while True:
            sock = socket.create_connection(("127.0.0.1", port), timeout=STARTUP_DEADLINE)
            line = read_line(sock)
            if not line.startswith(FULL) or time.monotonic() > deadline:
                return sock, line
            sock.close()


class Client:
    """A blocking IMAP or POP3 client over ``sock``, one line at a time."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.tags = 0

    def line(self) -> bytes:
        """The next line, without its CRLF."""
        line = read_line(self.sock)
        if not line:
            raise AssertionError("the server closed the connection")
        return line.removesuffix(b"\r\n")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def command(self, text: str) -> list[bytes]:
        """An IMAP command: its untagged lines and the tagged one, last."""
        self.tags += 1
        tag = f"t{self.tags}".encode()
        self.send(tag + b" " + text.encode() + b"\r\n")
        lines = []
        while True:
            line = self.line()
            lines.append(line)
            if line.startswith(tag + b" "):
                return lines

    def ok(self, text: str) -> list[bytes]:
        lines = self.command(text)
        if b" OK " not in lines[-1]:
            raise AssertionError(f"{text!r} answered {lines[-1]!r}")
        return lines

    def pop(self, text: str) -> bytes:
        """A POP3 command's status line."""
        self.send(text.encode() + b"\r\n")
        return self.line()

    def close(self) -> None:
        self.sock.close()
