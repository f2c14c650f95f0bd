"""What the operations tests share: a daemon with every listener, its
metrics endpoint and admin socket, and clients over plain sockets that
count the octets they send and receive."""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import tempfile
import urllib.request
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from twisted.trial import unittest

from mailsrv import cli
from tests.helpers import Daemon, free_port


class Counting:
    """A client socket that counts octets both ways and reads by line."""

    def __init__(self, port: int, timeout: float = 30) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout)
        self.sent = 0
        self.received = 0
        self._buffer = b""
        self.tag = 0

    @property
    def local(self) -> str:
        host, port = self.sock.getsockname()[:2]
        return f"{host}:{port}"

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)
        self.sent += len(data)

    def _fill(self) -> bool:
        chunk = self.sock.recv(65536)
        self.received += len(chunk)
        self._buffer += chunk
        return bool(chunk)

    def line(self) -> bytes:
        """The next line with its CRLF; b"" once the server has closed."""
        while b"\r\n" not in self._buffer:
            if not self._fill():
                rest, self._buffer = self._buffer, b""
                return rest
        line, _, self._buffer = self._buffer.partition(b"\r\n")
        return line + b"\r\n"

    def take(self, count: int) -> bytes:
        while len(self._buffer) < count and self._fill():
            pass
        data, self._buffer = self._buffer[:count], self._buffer[count:]
        return data

    def until_closed(self) -> bytes:
        """Everything up to the server's close."""
        while self._fill():
            pass
        rest, self._buffer = self._buffer, b""
        return rest

    def imap(self, text: str) -> list[bytes]:
        """An IMAP command; its responses up to the tagged one."""
        self.tag += 1
        tag = f"t{self.tag}".encode()
        self.send(tag + b" " + text.encode() + b"\r\n")
        lines: list[bytes] = []
        while True:
            line = self.line()
            if not line:
                raise AssertionError(f"closed after {lines!r}")
            lines.append(line)
            bare = line.rstrip(b"\r\n")
            if bare.endswith(b"}") and b"{" in bare:  # a literal follows
                lines.append(self.take(int(bare[bare.rindex(b"{") + 1 : -1])))
                continue
            if line.startswith(tag + b" "):
                return lines

    def pop3(self, text: str, multiline: bool = False) -> list[bytes]:
        """A POP3 command; its status line, and the lines of a multi-line answer."""
        self.send(text.encode() + b"\r\n")
        lines = [self.line()]
        if multiline and lines[0].startswith(b"+OK"):
            while lines[-1] != b".\r\n":
                lines.append(self.line())
        return lines

    def close(self) -> None:
        self.sock.close()


class OpsCase(unittest.TestCase):
    """A ``twistd -n mailsrv`` with IMAP, POP3, LMTP, metrics and the admin
    socket on loopback; alice's password is ``pw``."""

    #: Extra lines for the configuration file.
    extra = ""
    level = "info"

    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.ports = {name: free_port() for name in ("imap", "pop3", "lmtp", "metrics")}
        self.passwd = os.path.join(self.dir, "passwd")
        # A Unix socket's path has at most 107 bytes: not under _trial_temp.
        run = tempfile.mkdtemp(prefix="mailsrv-ops-")
        self.addCleanup(shutil.rmtree, run, True)
        self.socket = os.path.join(run, "admin.sock")
        self.config = os.path.join(self.dir, "mailsrv.toml")
        self.write_config()
        self.run_cli("user", "add", "alice", "--password-stdin", "--scheme", "PLAIN", stdin="pw\n")
        self.prepare()
        self.daemon = Daemon.start(["--config", self.config], cwd=self.dir)
        self.addCleanup(self.daemon.stop)
        self.daemon.wait_for("admin socket listening on")
        self.daemon.wait_for("METRICS listening on")

    def prepare(self) -> None:
        """Work on the mail store before the daemon starts."""

    def write_config(self, extra: str | None = None) -> None:
        with open(self.config, "w") as f:
            f.write(
                f"""
[server]
hostname = "localhost"
[imap]
listen = ["tcp:{self.ports["imap"]}:interface=127.0.0.1"]
[pop3]
listen = ["tcp:{self.ports["pop3"]}:interface=127.0.0.1"]
[lmtp]
listen = ["tcp:{self.ports["lmtp"]}:interface=127.0.0.1"]
[users]
passwd_file = "{self.passwd}"
[auth]
failure_delay = 0.05
[storage]
maildir = "{self.dir}/mail/{{user}}/Maildir"
[logging]
level = "{self.level}"
format = "json"
commands = true
[metrics]
listen = "tcp:{self.ports["metrics"]}:interface=127.0.0.1"
[admin]
socket = "{self.socket}"
{self.extra if extra is None else extra}
"""
            )

    def run_cli(self, *args: str, stdin: str = "") -> tuple[int, str, str]:
        """``mailsrv ARGS --config FILE``: status, standard output and error."""
        out, err = io.StringIO(), io.StringIO()
        status = cli.main(
            [*args, "--config", self.config], stdin=io.StringIO(stdin), stdout=out, stderr=err
        )
        return status, out.getvalue(), err.getvalue()

    def imap(self) -> Counting:
        client = Counting(self.ports["imap"])
        self.addCleanup(client.close)
        self.assertTrue(client.line().startswith(b"* OK "))
        return client

    def pop3(self) -> Counting:
        client = Counting(self.ports["pop3"])
        self.addCleanup(client.close)
        self.assertTrue(client.line().startswith(b"+OK "))
        return client

    def lmtp(self) -> Counting:
        client = Counting(self.ports["lmtp"])
        self.addCleanup(client.close)
        self.assertTrue(client.line().startswith(b"220 "))
        return client

    def login(self, client: Counting) -> None:
        self.assertTrue(client.imap("LOGIN alice pw")[-1].startswith(b"t1 OK"))

    def scrape(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        """The metrics endpoint, parsed by prometheus_client's own parser:
        each sample's value by its name and labels."""
        url = f"http://127.0.0.1:{self.ports['metrics']}/metrics"
        with urllib.request.urlopen(url, timeout=30) as answer:
            text = answer.read().decode()
        return {
            (sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    def json_lines(self) -> list[dict[str, Any]]:
        """The daemon's output, every line parsed as JSON."""
        return [json.loads(line) for line in self.daemon.log.splitlines() if line.strip()]


def sample(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    """One sample's value; 0 when there is no such series."""
    return samples.get((name, frozenset(labels.items())), 0.0)
