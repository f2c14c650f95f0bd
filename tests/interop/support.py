"""What every interop test needs: a daemon started as users start it, real
users and mail made with the ``mailsrv`` command, a look at the stored mail
(the Maildirs, or the PostgreSQL tables), and a way to run client programs.

One :class:`MailServer` serves a whole test module (:class:`InteropTestCase`
starts it for the module's first test and stops it after the last one), and
each test makes users of its own, so tests never see each other's mail.
"""

from __future__ import annotations

import atexit
import email.utils
import imaplib
import itertools
import os
import re
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Sequence
from typing import ClassVar

import attrs
from twisted.trial import unittest

from tests import pgcluster
from tests.helpers import Daemon, free_port, mailsrv_command, source_env

#: Upper bound for one client program run; a deadline, not a sleep.
CLIENT_DEADLINE = 60.0

HOST = "127.0.0.1"

# `mailsrv deliver` costs a process start per message, as it does under an MTA; tests seed
# few messages and keep them small.


def make_message(
    subject: str,
    body: str = "",
    *,
    sender: str = "Sender <sender@example.org>",
    to: str = "user@example.org",
    date: str | None = None,
    extra_headers: Sequence[tuple[str, str]] = (),
) -> bytes:
    """A small RFC 5322 message with LF line ends, as an MTA hands it to an LDA."""
    headers = [
        ("From", sender),
        ("To", to),
        ("Subject", subject),
        ("Date", date or email.utils.formatdate(localtime=True)),
        ("Message-ID", email.utils.make_msgid(domain="interop.example")),
        *extra_headers,
    ]
    text = "".join(f"{name}: {value}\n" for name, value in headers)
    return (text + "\n" + (body or f"This is the body of {subject}.\n")).encode()


def wire(message: bytes) -> bytes:
    """``message`` with CRLF line ends: the form IMAP and POP3 serve and Maildir stores."""
    return re.sub(rb"\r?\n", b"\r\n", message)


@attrs.frozen
class MaildirMessage:
    """One stored message, as seen from outside the server: a file of a Maildir folder,
    or a row of PostgreSQL's ``messages`` table put in the same terms."""

    path: str  # the file; for PostgreSQL "postgresql:USER/FOLDER/UID"
    subdir: str  # "new" (no session has seen it and it has no flag) or "cur"
    flags: str  # the letters after ":2," (empty when there is no info part), sorted
    data: bytes

    @property
    def subject(self) -> str:
        match = re.search(rb"^Subject: (.*?)\r?$", self.data, re.MULTILINE)
        return match.group(1).decode() if match else ""


def read_maildir(root: str) -> list[MaildirMessage]:
    """The messages of the Maildir folder ``root`` (by file name), read from disk."""
    found = []
    for subdir in ("new", "cur"):
        directory = os.path.join(root, subdir)
        if not os.path.isdir(directory):
            continue
        for name in os.listdir(directory):
            if name.startswith("."):
                continue
            flags = name.split(":2,", 1)[1] if ":2," in name else ""
            path = os.path.join(directory, name)
            with open(path, "rb") as f:
                found.append(MaildirMessage(path, subdir, flags, f.read()))
    return sorted(found, key=lambda m: os.path.basename(m.path))


def by_subject(messages: Sequence[MaildirMessage]) -> dict[str, MaildirMessage]:
    """Subject -> message; fails when two messages share a subject."""
    result = {m.subject: m for m in messages}
    if len(result) != len(messages):
        raise AssertionError(f"duplicate subjects: {sorted(m.subject for m in messages)}")
    return result


class ProgramMissing(Exception):
    pass


def find_program(name: str, package: str) -> str:
    """The absolute path of client program ``name``; :class:`ProgramMissing`
    naming the Debian package when it is not installed."""
    path = shutil.which(name)
    if path is None:
        raise ProgramMissing(
            f"{name} is not installed: apt-get install {package} "
            "(.ci/run installs it; in CI a missing client program is a failure)"
        )
    return path


#: Maildir's info letters (maildir.md) for the flag bits of PostgreSQL's ``messages.flags``.
_PG_FLAG_LETTERS = {
    "\\Draft": "D",
    "\\Flagged": "F",
    "\\Answered": "R",
    "\\Seen": "S",
    "\\Deleted": "T",
}


class MailServer:
    """A ``twistd -n --pidfile= mailsrv --config FILE`` daemon in its own directory.

    Listens on free loopback ports: IMAP with STARTTLS, IMAPS, POP3 with STLS and POP3S,
    with a self-signed certificate the daemon generates on its first start. ``backend``
    is the ``[storage]`` backend: ``"maildir"``, or ``"postgresql"`` on a schema of its
    own in the test process's private cluster (:mod:`tests.pgcluster`), with the users in
    the database too (``[auth] backend``), set up by ``mailsrv db upgrade``.
    """

    def __init__(self, base: str, backend: str = "maildir") -> None:
        self.base = base
        self.backend = backend
        self.dsn = ""
        if backend == "postgresql":
            # An empty schema: the administrator's `mailsrv db upgrade` below fills it.
            self.dsn = pgcluster.Cluster.shared().create_schema(migrated=False)
        self.ports = {name: free_port() for name in ("imap", "imaps", "pop3", "pop3s")}
        self.config = os.path.join(base, "mailsrv.toml")
        self.cafile = os.path.join(base, "var", "tls", "cert.pem")
        self.passwd = os.path.join(base, "var", "passwd")
        self.mail_root = os.path.join(base, "var", "mail")
        self.daemon: Daemon | None = None
        self._names = itertools.count(1)
        with open(self.config, "w") as f:
            f.write(
                f"""\
[server]
hostname = "localhost"

[imap]
listen = ["tcp:{self.ports["imap"]}:interface={HOST}"]
listen_tls = ["tcp:{self.ports["imaps"]}:interface={HOST}"]

[pop3]
listen = ["tcp:{self.ports["pop3"]}:interface={HOST}"]
listen_tls = ["tcp:{self.ports["pop3s"]}:interface={HOST}"]

[tls]
certificate = "{self.cafile}"
key = "{os.path.join(base, "var", "tls", "key.pem")}"
generate_self_signed = true

[users]
passwd_file = "{self.passwd}"
create_if_missing = true

[auth]
failure_delay = 0.0
{self._backend_config()}"""
            )
        if backend == "postgresql":
            self.mailsrv("db", "upgrade")

    def _backend_config(self) -> str:
        """The end of ``[auth]`` and the ``[storage]`` section for the backend."""
        if self.backend == "postgresql":
            return f"""backend = "postgresql"

[storage]
backend = "postgresql"
dsn = "{self.dsn}"
pool_size = 4
"""
        return f"""
[storage]
maildir = "{self.mail_root}/{{user}}/Maildir"
poll_interval = 0.2
"""

    # -- the daemon --------------------------------------------------------------------

    def start(self) -> None:
        self.daemon = Daemon.start(["--config", self.config], cwd=self.base)
        try:
            self.daemon.wait_for("listening on", count=4)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        if self.daemon is not None:
            self.daemon.stop()

    @property
    def log(self) -> str:
        return self.daemon.log if self.daemon is not None else ""

    # -- the admin command -------------------------------------------------------------

    def mailsrv(self, *args: str, stdin: bytes = b"") -> str:
        """Run ``mailsrv ARGS --config FILE``; its output. Fails the test on a non-zero exit."""
        result = subprocess.run(
            [*mailsrv_command(), *args, "--config", self.config],
            input=stdin,
            capture_output=True,
            cwd=self.base,
            env=source_env(),
            timeout=CLIENT_DEADLINE,
        )
        if result.returncode != 0:
            raise AssertionError(
                f"mailsrv {' '.join(args)} exited {result.returncode}: "
                f"{result.stdout.decode(errors='replace')}{result.stderr.decode(errors='replace')}"
            )
        return result.stdout.decode()

    def add_user(self, prefix: str = "user", password: str | None = None) -> tuple[str, str]:
        """A new user (a fresh name) added with ``mailsrv user add``: (name, password)."""
        name = f"{prefix}{next(self._names)}"
        password = password or f"pw-{name}-s3cret"
        self.mailsrv("user", "add", name, "--password-stdin", stdin=password.encode() + b"\n")
        return name, password

    def deliver(self, user: str, message: bytes, folder: str | None = None) -> None:
        """Deliver ``message`` as an MTA would: ``mailsrv deliver USER``."""
        args = ["deliver", user] + (["--folder", folder] if folder else [])
        self.mailsrv(*args, stdin=message)

    def deliver_concurrently(self, user: str, messages: Sequence[bytes]) -> None:
        """Deliver ``messages`` with one ``mailsrv deliver`` each, all at once, as a busy
        MTA does: their order (and so their UIDs' order) is not defined."""
        processes = [
            subprocess.Popen(
                [*mailsrv_command(), "deliver", user, "--config", self.config],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                cwd=self.base,
                env=source_env(),
            )
            for _ in messages
        ]
        failures = []
        for process, message in zip(processes, messages, strict=True):
            output, _ = process.communicate(message, timeout=CLIENT_DEADLINE)
            if process.returncode != 0:
                failures.append(f"exit {process.returncode}: {output.decode(errors='replace')}")
        if failures:
            raise AssertionError("mailsrv deliver failed: " + "; ".join(failures))

    def deliver_command(self, user: str) -> str:
        """``mailsrv deliver USER --config FILE`` as one shell command line (for an MDA option)."""
        # The MDA runs in the client's environment: point it at this checkout's code.
        words = ["env", f"PYTHONPATH={source_env()['PYTHONPATH']}"]
        words += [*mailsrv_command(), "deliver", user, "--config", self.config]
        return " ".join(_shell_quote(word) for word in words)

    # -- the stored mail, looked at from outside ---------------------------------------

    def maildir(self, user: str, folder: str = "INBOX") -> str:
        root = os.path.join(self.mail_root, user, "Maildir")
        return root if folder.upper() == "INBOX" else os.path.join(root, "." + folder)

    def messages(self, user: str, folder: str = "INBOX") -> list[MaildirMessage]:
        """The folder's messages in delivery order: by file name, read from disk, or by
        UID, read from the database's tables (not through the server)."""
        if self.backend == "postgresql":
            return self._pg_messages(user, folder)
        return read_maildir(self.maildir(user, folder))

    def _pg_messages(self, user: str, folder: str) -> list[MaildirMessage]:
        import psycopg

        name = "INBOX" if folder.upper() == "INBOX" else folder
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT m.uid, m.flags, m.uid >= b.recent_from,"
                " (SELECT string_agg(c.data, ''::bytea ORDER BY c.seq) FROM blob_chunks c"
                "  WHERE c.digest = m.digest)"
                " FROM messages m JOIN mailboxes b USING (user_name, mailbox_id)"
                " WHERE m.user_name = %s AND b.name = %s ORDER BY m.uid",
                (user, name),
            ).fetchall()
        from mailsrv.storage.postgres.schema import FLAG_BITS

        found = []
        for uid, bits, recent, data in rows:
            letters = "".join(
                sorted(_PG_FLAG_LETTERS[flag] for flag, bit in FLAG_BITS.items() if bits & bit)
            )
            # Maildir's rule: a message stays in new/ until a session sees it or it gets
            # a flag (APPEND with \Seen writes to cur/ at once).
            subdir = "new" if recent and not letters else "cur"
            found.append(
                MaildirMessage(
                    f"postgresql:{user}/{name}/{uid}", subdir, letters, bytes(data or b"")
                )
            )
        return found

    def by_subject(self, user: str, folder: str = "INBOX") -> dict[str, MaildirMessage]:
        return by_subject(self.messages(user, folder))

    # -- client conveniences -----------------------------------------------------------

    def ssl_context(self) -> ssl.SSLContext:
        """A client context that trusts only the daemon's certificate and checks its name."""
        return ssl.create_default_context(cafile=self.cafile)

    def imap(self, user: str, password: str, mailbox: str | None = None) -> imaplib.IMAP4_SSL:
        """An IMAPS session of our own (to look at the server side), logged in."""
        session = imaplib.IMAP4_SSL(
            "localhost", self.ports["imaps"], ssl_context=self.ssl_context(), timeout=30
        )
        session.login(user, password)
        if mailbox is not None:
            typ, _ = session.select(mailbox)
            if typ != "OK":
                raise AssertionError(f"cannot select {mailbox}")
        return session


def _shell_quote(word: str) -> str:
    if re.fullmatch(r"[\w@%+=:,./-]+", word):
        return word
    return "'" + word.replace("'", "'\"'\"'") + "'"


def imap_flags(session: imaplib.IMAP4, mailbox: str = "INBOX") -> dict[int, set[str]]:
    """UID -> flags of every message in ``mailbox``, read in a fresh EXAMINE."""
    typ, _ = session.select(mailbox, readonly=True)
    assert typ == "OK"
    typ, data = session.uid("FETCH", "1:*", "(UID FLAGS)")
    assert typ == "OK", data
    result = {}
    for item in data:
        if not isinstance(item, bytes):
            continue
        uid = re.search(rb"UID (\d+)", item)
        flags = re.search(rb"FLAGS \(([^)]*)\)", item)
        if uid and flags:
            result[int(uid.group(1))] = set(flags.group(1).decode().split())
    return result


def imap_uids_by_subject(session: imaplib.IMAP4) -> dict[str, int]:
    """Subject -> UID of every message in the selected mailbox."""
    typ, data = session.uid("FETCH", "1:*", "(UID BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    assert typ == "OK", data
    result = {}
    for item in data:
        if isinstance(item, tuple):
            uid = re.search(rb"UID (\d+)", item[0])
            subject = re.search(rb"Subject: (.*?)\r\n", item[1])
            assert uid is not None and subject is not None, item
            result[subject.group(1).decode()] = int(uid.group(1))
    return result


def _count_tests(module: types.ModuleType) -> int:
    """How many tests trial finds in ``module``'s interop test classes."""
    count = 0
    for value in vars(module).values():
        if (
            isinstance(value, type)
            and issubclass(value, InteropTestCase)
            and value.__module__ == module.__name__
        ):
            count += len([n for n in dir(value) if n.startswith("test")])
    return count


class InteropTestCase(unittest.TestCase):
    """A test case whose tests share one :class:`MailServer` with the other
    :class:`InteropTestCase` classes of their module.

    The server starts in the module's first test's ``setUp`` and stops after its last
    test; when only some of the module's tests run, it stops at interpreter exit.
    Subclasses list the client programs they drive in ``programs`` as
    ``(program, Debian package)``: a missing one skips the test, or fails it in CI.
    """

    programs: ClassVar[Sequence[tuple[str, str]]] = ()
    #: The daemon's ``[storage]`` backend; one module's classes must agree on it.
    backend: ClassVar[str] = "maildir"
    #: Module name -> its running server, and how many of its tests have not finished.
    _servers: ClassVar[dict[str, MailServer]] = {}
    _remaining: ClassVar[dict[str, int]] = {}

    server: MailServer

    def setUp(self) -> None:
        module = type(self).__module__
        if module not in self._remaining:
            self._remaining[module] = _count_tests(sys.modules[module])
        self.paths = {}
        for program, package in self.programs:
            try:
                self.paths[program] = find_program(program, package)
            except ProgramMissing as e:
                self._release_server()
                self.cannot_run(str(e))
        if self.backend == "postgresql":
            try:
                pgcluster.require()
            except BaseException:
                self._release_server()
                raise
        server = self._servers.get(module)
        if server is None:
            base = tempfile.mkdtemp(prefix=module.rsplit(".", 1)[-1] + "-", dir=os.getcwd())
            server = MailServer(base, self.backend)
            server.start()
            self._servers[module] = server
            atexit.register(server.stop)
        self.server = server
        self.addCleanup(self._release_server)
        self._log_start = len(server.daemon.output) if server.daemon is not None else 0
        self.addCleanup(self._check_daemon_log)
        self.home = os.path.abspath(self.mktemp())
        os.makedirs(self.home)

    def _release_server(self) -> None:
        """This test is done with the module's server; the last one stops it."""
        module = type(self).__module__
        self._remaining[module] -= 1
        if self._remaining[module] <= 0:
            del self._remaining[module]
            server = self._servers.pop(module, None)
            if server is not None:
                server.stop()
                atexit.unregister(server.stop)

    def _check_daemon_log(self) -> None:
        """Whatever the clients did, the daemon must not have logged a traceback."""
        daemon = self.server.daemon
        if daemon is None:
            return
        lines = daemon.output[self._log_start :]
        bad = [i for i, line in enumerate(lines) if "Traceback" in line or "Unhandled" in line]
        if bad:
            first = bad[0]
            excerpt = "".join(lines[max(0, first - 5) : first + 40])
            self.fail(f"the daemon logged an error during this test:\n{excerpt}")

    def cannot_run(self, reason: str) -> None:
        """A client this test needs is missing: a failure in CI, a skip elsewhere."""
        if os.environ.get("CI") == "true":
            self.fail(reason)
        raise unittest.SkipTest(reason)

    def run_client(
        self,
        args: Sequence[str],
        *,
        stdin: bytes | None = None,
        env: dict[str, str] | None = None,
        ok_codes: Sequence[int] = (0,),
        cwd: str | None = None,
    ) -> subprocess.CompletedProcess[bytes]:
        """Run a client program with ``HOME`` set to this test's own directory.

        Fails the test, showing the program's output and the daemon's log, when it
        exits with a status outside ``ok_codes``.
        """
        run_env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": self.home,
            "LANG": "C.UTF-8",
            "TERM": "dumb",
            **(env or {}),
        }
        started = time.monotonic()
        try:
            result = subprocess.run(
                list(args),
                input=stdin if stdin is not None else b"",
                capture_output=True,
                env=run_env,
                cwd=cwd or self.home,
                timeout=CLIENT_DEADLINE,
            )
        except subprocess.TimeoutExpired as e:
            raise AssertionError(
                f"{args[0]} did not finish within {CLIENT_DEADLINE}s:\n"
                f"{_text(e.stdout)}{_text(e.stderr)}\n--- daemon log:\n{self.server.log[-4000:]}"
            ) from None
        if result.returncode not in ok_codes:
            raise AssertionError(
                f"{' '.join(args)} exited {result.returncode} after "
                f"{time.monotonic() - started:.1f}s:\n--- stdout:\n{_text(result.stdout)}"
                f"\n--- stderr:\n{_text(result.stderr)}\n--- daemon log:\n{self.server.log[-4000:]}"
            )
        return result


def _text(data: bytes | str | None) -> str:
    if data is None:
        return ""
    if isinstance(data, bytes):
        return data.decode(errors="replace")
    return data
