"""A private HAProxy for the tests: Debian's ``haproxy`` program, started in
the foreground on loopback from a configuration written to a temporary
directory, with an admin socket to read its servers' health.

Where HAProxy is missing, :func:`require` skips the test on a developer's
machine and fails it in CI (``CI=true``), as tests/pgcluster.py does.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time

from twisted.trial.unittest import SkipTest

__all__ = ["HAProxy", "find", "require"]

#: Upper bound for HAProxy to start or a server's state to change.
DEADLINE = 60.0


def find() -> str | None:
    return shutil.which("haproxy") or (
        "/usr/sbin/haproxy" if os.path.isfile("/usr/sbin/haproxy") else None
    )


def require() -> str:
    program = find()
    if program is not None:
        return program
    reason = "HAProxy was not found (apt-get install haproxy)"
    if os.environ.get("CI") == "true":
        raise AssertionError(f"HAProxy tests cannot run in CI: {reason}")
    raise SkipTest(reason)


class HAProxy:
    """A running HAProxy; ``sections`` is the configuration after
    ``global`` and ``defaults``, which this class writes."""

    def __init__(self, directory: str, sections: str) -> None:
        program = require()
        self.directory = directory
        # A Unix socket's path must be short (HAProxy allows 97 bytes).
        self._socket_dir = tempfile.mkdtemp(prefix="mailsrv-haproxy-", dir="/tmp")
        self.socket_path = os.path.join(self._socket_dir, "admin.sock")
        self.config = os.path.join(directory, "haproxy.cfg")
        with open(self.config, "w") as f:
            f.write(
                "global\n"
                f"    stats socket {self.socket_path} mode 600 level admin\n"
                "    maxconn 500\n"
                "defaults\n"
                "    mode tcp\n"
                "    timeout connect 2s\n"
                "    timeout client 60s\n"
                "    timeout server 60s\n"
                "    timeout check 2s\n" + sections
            )
        check = subprocess.run([program, "-c", "-f", self.config], capture_output=True)
        if check.returncode != 0:
            raise AssertionError(f"haproxy -c refused the configuration:\n{check.stderr.decode()}")
        self.log_path = os.path.join(directory, "haproxy.log")
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            [program, "-db", "-f", self.config],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + DEADLINE
        while not os.path.exists(self.socket_path):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"haproxy did not start:\n{self.output()}")
            time.sleep(0.02)

    def output(self) -> str:
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")

    def command(self, text: str) -> str:
        """One command on the admin socket; its answer."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(DEADLINE)
            sock.connect(self.socket_path)
            sock.sendall(text.encode() + b"\n")
            chunks = []
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        return b"".join(chunks).decode(errors="replace")

    def states(self, backend: str) -> dict[str, str]:
        """Server name -> status (``UP``, ``DOWN``, ...) of a backend."""
        lines = self.command("show stat").splitlines()
        header = lines[0].lstrip("# ").split(",")
        name, server, status = (
            header.index("pxname"),
            header.index("svname"),
            header.index("status"),
        )
        found = {}
        for line in lines[1:]:
            fields = line.split(",")
            if len(fields) > status and fields[name] == backend and fields[server] != "BACKEND":
                found[fields[server]] = fields[status]
        return found

    def wait_states(self, backend: str, wanted: dict[str, str]) -> None:
        deadline = time.monotonic() + DEADLINE
        while True:
            states = self.states(backend)
            if all(states.get(k, "").startswith(v) for k, v in wanted.items()):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"{backend}: wanted {wanted}, have {states}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        shutil.rmtree(self._socket_dir, ignore_errors=True)
