"""Shared helpers for tests that run programs the way users do."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar, cast

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress
from twisted.logger import ILogObserver, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from mailsrv.interfaces import MaybeDeferred
from mailsrv.policy import ConnectionLimits

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def twistd_command() -> list[str]:
    """The ``twistd`` a user of this Python environment would run."""
    script = os.path.join(os.path.dirname(sys.executable), "twistd")
    if os.path.exists(script):
        return [script]
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def clean_env(**extra: str) -> dict[str, str]:
    """The environment of a user's shell: nothing pointing into this checkout."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.update(extra)
    return env


def source_env() -> dict[str, str]:
    """An environment that imports mailsrv (and its plugin) from this
    checkout first, so a daemon under test runs the code being tested."""
    return clean_env(PYTHONPATH=ROOT)


def mailsrv_command() -> list[str]:
    """The ``mailsrv`` admin command a user of this Python environment would run."""
    script = os.path.join(os.path.dirname(sys.executable), "mailsrv")
    if os.path.exists(script):
        return [script]
    return [sys.executable, "-c", "import sys; from mailsrv.cli import main; sys.exit(main())"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listened on a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def read_line(sock: socket.socket) -> bytes:
    """One CRLF-terminated line from ``sock``, read a byte at a time."""
    data = b""
    while not data.endswith(b"\r\n"):
        chunk = sock.recv(1)
        if not chunk:
            break
        data += chunk
    return data


#: Upper bound for the daemon to start or stop; a deadline, not a sleep.
STARTUP_DEADLINE = 60.0


class Daemon:
    """A ``twistd -n mailsrv`` child process whose output is collected.

    A thread drains the child's output as it comes, so a daemon that logs a
    lot never blocks on a full pipe, and :meth:`wait_for` waits on a
    condition (with a deadline) instead of polling.
    """

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self.process = process
        self.output: list[str] = []
        self._changed = threading.Condition()
        self._eof = False
        self._reader = threading.Thread(target=self._drain, name="daemon-output", daemon=True)
        self._reader.start()

    @classmethod
    def start(
        cls,
        args: list[str],
        cwd: str,
        env: dict[str, str] | None = None,
        twistd_args: tuple[str, ...] = (),
        workers: int | None = 1,
    ) -> Daemon:
        """Start ``twistd -n --pidfile= [TWISTD_ARGS] mailsrv ARGS`` in ``cwd``.

        ``--workers 1`` is added unless ARGS give ``--workers`` or ``workers``
        is None: a single process, as the daemon ran before it had workers
        (its default is one per CPU); tests of several workers ask for them.
        """
        if workers is not None and not any(a.startswith("--workers") for a in args):
            args = [*args, "--workers", str(workers)]
        process = subprocess.Popen(
            [*twistd_command(), "-n", "--pidfile=", *twistd_args, "mailsrv", *args],
            cwd=cwd,
            env=env if env is not None else source_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        return cls(process)

    def _drain(self) -> None:
        assert self.process.stdout is not None
        fd = self.process.stdout.fileno()
        partial = b""
        while True:
            chunk = os.read(fd, 65536)
            with self._changed:
                if not chunk:
                    if partial:
                        self.output.append(partial.decode(errors="replace"))
                    self._eof = True
                    self._changed.notify_all()
                    return
                partial += chunk
                *lines, partial = partial.split(b"\n")
                self.output.extend(line.decode(errors="replace") + "\n" for line in lines)
                self._changed.notify_all()

    @property
    def log(self) -> str:
        """Everything the daemon printed so far."""
        with self._changed:
            return "".join(self.output)

    def wait_for(self, text: str, count: int = 1, timeout: float = STARTUP_DEADLINE) -> None:
        """Wait until ``text`` appeared in ``count`` lines of the output."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while sum(text in line for line in self.output) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._eof:
                    raise AssertionError(
                        f"daemon did not log {text!r}; exit status {self.process.poll()}; "
                        f"output:\n{''.join(self.output)}"
                    )
                self._changed.wait(remaining)

    def wait_exit(self, timeout: float = STARTUP_DEADLINE) -> str:
        """Wait for the daemon to exit by itself; its whole output."""
        self.process.wait(timeout=timeout)
        self._reader.join(timeout)
        return self.log

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._reader.join(30)
        if self.process.stdout is not None:
            self.process.stdout.close()


def wait_for_file_text(
    path: str,
    text: str,
    count: int = 1,
    timeout: float = STARTUP_DEADLINE,
    process: subprocess.Popen[bytes] | None = None,
) -> str:
    """Wait until ``text`` is in ``count`` lines of the file at ``path`` (a
    daemon's ``--logfile``), giving up early if ``process`` exits; the
    file's content then.

    A file gives no notice of a write, so this looks again every few
    milliseconds until the deadline: a condition with a deadline, not a
    fixed sleep.
    """
    deadline = time.monotonic() + timeout
    content = ""
    while True:
        try:
            with open(path, errors="replace") as f:
                content = f.read()
        except FileNotFoundError:
            content = ""
        if sum(text in line for line in content.splitlines()) >= count:
            return content
        status = process.poll() if process is not None else None
        if time.monotonic() > deadline or status is not None:
            raise AssertionError(
                f"{path} did not get {text!r} (exit status {status}); it holds:\n{content}"
            )
        time.sleep(0.02)


def make_tls_context(directory: str) -> tuple[Any, Any]:
    """A self-signed certificate for ``localhost`` in ``directory``
    (cert.pem, key.pem): the server's context and the certificate a client
    should trust (``twisted.internet.ssl`` objects)."""
    from twisted.internet import ssl

    from mailsrv.tls import generate_self_signed

    os.makedirs(directory, exist_ok=True)
    cert_path, key_path = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    generate_self_signed(cert_path, key_path, "localhost")
    with open(cert_path, "rb") as f:
        cert_pem = f.read()
    with open(key_path, "rb") as f:
        key_pem = f.read()
    server = ssl.PrivateCertificate.loadPEM(cert_pem + key_pem).options()
    return server, ssl.Certificate.loadPEM(cert_pem)


def log_events(test: SynchronousTestCase) -> list[dict[str, Any]]:
    """Every log event published from now until ``test`` ends."""
    events: list[dict[str, Any]] = []
    observer = cast(ILogObserver, events.append)
    globalLogPublisher.addObserver(observer)
    test.addCleanup(globalLogPublisher.removeObserver, observer)
    return events


class LaterLimits(ConnectionLimits):
    """Connection limits answered later, as a worker's parent answers them
    (mailsrv.workers.limits): each question waits in :attr:`pending` until
    the test calls :meth:`answer`; the counting is a ConnectionLimits'."""

    def __init__(self, per_user: int = 5, per_ip: int = 5) -> None:
        super().__init__(per_user, per_ip)
        self.pending: list[tuple[Deferred[bool], bool]] = []

    def _later(self, answer: bool | Deferred[bool]) -> Deferred[bool]:
        later: Deferred[bool] = Deferred()
        self.pending.append((later, bool(answer)))
        return later

    def open_ip(self, peer: IAddress | None) -> Deferred[bool]:
        return self._later(super().open_ip(peer))

    def open_user(self, user: str) -> Deferred[bool]:
        return self._later(super().open_user(user))

    def answer(self) -> None:
        """Answer every question asked so far (and none asked meanwhile)."""
        pending, self.pending = self.pending, []
        for later, answer in pending:
            later.callback(answer)


_T = TypeVar("_T")


def at_once(value: MaybeDeferred[_T]) -> _T:
    """A storage method's answer where the backend answers synchronously
    (memory, Maildir): the value itself, never a Deferred."""
    assert not isinstance(value, Deferred), f"a synchronous backend answered {value!r}"
    return value


def write_certificate(
    cert_path: str,
    key_path: str,
    names: tuple[str, ...] = ("localhost",),
    *,
    days: float = 30,
    rsa: bool = False,
) -> None:
    """A self-signed certificate for ``names`` (subjectAltName DNS names; the
    first is the common name) that expires in ``days`` (negative: expired),
    with an EC key, or an RSA one with ``rsa``."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric import rsa as rsa_keys
    from cryptography.x509.oid import NameOID

    key: Any = (
        rsa_keys.generate_private_key(public_exponent=65537, key_size=2048)
        if rsa
        else ec.generate_private_key(ec.SECP256R1())
    )
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=max(1.0, -days + 1)))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(name) for name in names]), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    with open(key_path, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))


def loopback(port: int) -> list[str]:
    """A listener list of one TCP endpoint on 127.0.0.1."""
    return [f"tcp:{port}:interface=127.0.0.1"]


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string: the same escapes
    if isinstance(value, Sequence):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    raise TypeError(f"no TOML for {value!r}")


def toml_text(sections: Mapping[str, Mapping[str, object]]) -> str:
    """``{section: {key: value}}`` as TOML; a key set to None is left out."""
    lines: list[str] = []
    for name, values in sections.items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in values.items() if v is not None]
    return "\n".join(lines) + "\n"


def daemon_config(
    directory: str,
    sections: Mapping[str, Mapping[str, object]],
    name: str = "mailsrv.toml",
) -> str:
    """Write a daemon configuration into ``directory``; its path.

    The users file (``passwd``, users made on first login) and the mail
    (``mail/{user}/Maildir``) live in ``directory``, failed logins are not
    delayed; ``sections`` add to those or override them key by key (None
    leaves a key out).
    """
    merged: dict[str, dict[str, object]] = {
        "users": {"passwd_file": os.path.join(directory, "passwd"), "create_if_missing": True},
        "auth": {"failure_delay": 0.0},
        "storage": {"maildir": os.path.join(directory, "mail", "{user}", "Maildir")},
    }
    for section, values in sections.items():
        merged.setdefault(section, {}).update(values)
    path = os.path.join(directory, name)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(toml_text(merged))
    return path


class Trickle(io.RawIOBase):
    """A source that gives at most ``piece`` bytes per read, like a pipe."""

    def __init__(self, data: bytes, piece: int) -> None:
        self._data = data
        self._piece = piece
        self._at = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        take = self._piece if size < 0 else min(size, self._piece)
        chunk = self._data[self._at : self._at + take]
        self._at += len(chunk)
        return chunk
