"""Several worker processes (``twistd -n mailsrv --workers 2``), as users run them.

Sessions on different workers see each other's changes (IDLE included),
\\Recent goes to exactly one session, POP3's lock and the connection limits
hold across workers, a worker that dies is restarted while the other keeps
its sessions, and SIGHUP, SIGTERM and systemd's notifications reach every
worker.  Which worker serves a connection is found from /proc
(tests/workers_helpers.py).
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import socket
import stat
import tempfile
import time

from twisted.trial import unittest

from mailsrv import cli
from mailsrv.config import (
    COMMAND_LINE,
    Config,
    cpu_count,
    describe,
    load_config,
    resolved_workers,
)
from mailsrv.errors import ConfigError
from mailsrv.workers import worker_count
from tests.helpers import (
    STARTUP_DEADLINE,
    daemon_config,
    free_port,
    loopback,
    read_line,
    source_env,
)
from tests.workers_helpers import Client, WorkersDaemon

MESSAGE = b"From: a@example.org\r\nSubject: hello\r\n\r\nbody\r\n"


def add_user(config: str, name: str) -> None:
    status = cli.main(
        ["user", "add", name, "--config", config, "--password-stdin", "--scheme", "PLAIN"],
        stdin=io.StringIO(f"{name}-pw\n"),
        stdout=io.StringIO(),
    )
    assert status == 0


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for its reaper does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except OSError:
        return False
    return data[data.rfind(")") + 2 :].split()[0] != "Z"


def fetched_flags(line: bytes) -> set[bytes]:
    """The flags of an untagged ``* 1 FETCH (FLAGS (...))`` line, in any order."""
    prefix, suffix = b"* 1 FETCH (FLAGS (", b"))"
    if not (line.startswith(prefix) and line.endswith(suffix)):
        raise AssertionError(f"expected a FLAGS FETCH of message 1, got {line!r}")
    return set(line[len(prefix) : -len(suffix)].split())


class WorkersCase(unittest.TestCase):
    """A daemon with two workers on IMAP, POP3 and an LMTP socket."""

    limits: dict[str, object] = {"max_connections_per_user": 20, "max_connections_per_ip": 50}

    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.imap, self.pop3 = free_port(), free_port()
        short = tempfile.mkdtemp(prefix="mailsrv-workers-")  # a Unix socket path is short
        self.addCleanup(shutil.rmtree, short, True)
        self.short = short
        self.lmtp = os.path.join(short, "lmtp")
        self.config = os.path.join(self.dir, "mailsrv.toml")
        self.write_config(self.limits)
        add_user(self.config, "alice")
        self.server = WorkersDaemon(self.dir, self.config)
        self.addCleanup(self.server.stop)
        self.workers = self.server.wait_ready()
        self.assertEqual(len(self.workers), 2, self.server.daemon.log)

    def write_config(self, limits: dict[str, object]) -> None:
        daemon_config(
            self.dir,
            {
                "imap": {"listen": loopback(self.imap)},
                "pop3": {"listen": loopback(self.pop3)},
                "lmtp": {"listen": [f"unix:{self.lmtp}"], "socket_mode": 0o640},
                "limits": limits,
                "storage": {"poll_interval": 3600},
            },
        )

    def session(self, worker: int, user: str = "alice") -> Client:
        """An IMAP session of ``user`` on ``worker`` (a pid), logged in."""
        client = Client(self.server.connect_to(worker, self.imap))
        self.addCleanup(client.close)
        client.ok(f"LOGIN {user} {user}-pw")
        return client


class SessionsAcrossWorkersTests(WorkersCase):
    def test_idle_on_one_worker_hears_the_other(self) -> None:
        one, two = self.workers
        watcher = self.session(one)
        watcher.ok("SELECT INBOX")
        watcher.send(b"i IDLE\r\n")
        self.assertTrue(watcher.line().startswith(b"+ "))
        writer = self.session(two)
        writer.ok("SELECT INBOX")
        writer.ok(f"APPEND INBOX {{{len(MESSAGE)}+}}\r\n" + MESSAGE.decode())
        self.assertEqual(watcher.line(), b"* 1 EXISTS")
        # \Recent is the first claimer's: this session's or the writer's.
        recent = watcher.line()
        self.assertIn(recent, (b"* 1 RECENT", b"* 0 RECENT"))
        mine = {b"\\Recent"} if recent == b"* 1 RECENT" else set()
        writer.ok("STORE 1 +FLAGS (\\Flagged)")
        self.assertEqual(fetched_flags(watcher.line()), {b"\\Flagged"} | mine)
        writer.ok("STORE 1 +FLAGS (\\Deleted)")
        # Heard before the EXPUNGE is sent: once both have happened, the
        # flag change of a message already gone need not be told.
        self.assertEqual(fetched_flags(watcher.line()), {b"\\Flagged", b"\\Deleted"} | mine)
        writer.ok("EXPUNGE")
        self.assertEqual(watcher.line(), b"* 1 EXPUNGE")
        watcher.send(b"DONE\r\n")
        self.assertEqual(watcher.line(), b"i OK IDLE terminated")

    def test_recent_goes_to_exactly_one_session(self) -> None:
        delivered = 5
        inbox = os.path.join(self.dir, "mail", "alice", "Maildir")
        os.makedirs(os.path.join(inbox, "new"), exist_ok=True)
        for n in range(delivered):
            with open(os.path.join(inbox, "new", f"1700000000.P{n}Q1.mx"), "wb") as f:
                f.write(MESSAGE)
        sessions = [self.session(worker) for worker in self.workers for _ in range(3)]
        for n, client in enumerate(sessions):  # all at once, then the answers
            client.send(f"s{n} SELECT INBOX\r\n".encode())
        recent: list[set[bytes]] = []
        for n, client in enumerate(sessions):
            lines: list[bytes] = []
            while not lines or not lines[-1].startswith(f"s{n} ".encode()):
                lines.append(client.line())
            self.assertIn(f"* {delivered} EXISTS".encode(), lines)
            flags = client.ok("FETCH 1:* (UID FLAGS)")
            recent.append({line.split()[4] for line in flags if b"\\Recent" in line})
        claimed = [uid for mine in recent for uid in mine]
        self.assertEqual(len(claimed), delivered)
        self.assertEqual(len(set(claimed)), delivered)

    def test_pop3_lock_holds_across_workers(self) -> None:
        one, two = self.workers
        first = Client(self.server.connect_to(one, self.pop3))
        self.addCleanup(first.close)
        self.assertEqual(first.pop("USER alice")[:3], b"+OK")
        self.assertTrue(first.pop("PASS alice-pw").startswith(b"+OK Logged in"))
        second = Client(self.server.connect_to(two, self.pop3))
        self.addCleanup(second.close)
        second.pop("USER alice")
        self.assertTrue(second.pop("PASS alice-pw").startswith(b"-ERR [IN-USE]"))
        self.assertTrue(first.pop("QUIT").startswith(b"+OK"))
        third = Client(self.server.connect_to(two, self.pop3))
        self.addCleanup(third.close)
        third.pop("USER alice")
        self.assertTrue(third.pop("PASS alice-pw").startswith(b"+OK Logged in"))

    def test_lmtp_socket_keeps_its_mode_and_delivers(self) -> None:
        self.assertEqual(stat.S_IMODE(os.stat(self.lmtp).st_mode), 0o640)
        watcher = self.session(self.workers[0])
        watcher.ok("SELECT INBOX")
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(STARTUP_DEADLINE)
            sock.connect(self.lmtp)
            lmtp = Client(sock)
            self.assertTrue(lmtp.line().startswith(b"220 "))
            for line in ("LHLO test", "MAIL FROM:<a@example.org>", "RCPT TO:<alice>", "DATA"):
                lmtp.send(line.encode() + b"\r\n")
                reply = lmtp.line()
                while reply[3:4] == b"-":
                    reply = lmtp.line()
            self.assertTrue(reply.startswith(b"354"))
            lmtp.send(MESSAGE + b".\r\n")
            self.assertTrue(lmtp.line().startswith(b"250 "))
        self.assertIn(b"* 1 EXISTS", watcher.ok("NOOP"))


class LimitsAcrossWorkersTests(WorkersCase):
    limits: dict[str, object] = {"max_connections_per_user": 2, "max_connections_per_ip": 3}

    def test_user_limit_counts_every_worker(self) -> None:
        one, two = self.workers
        first, second = self.session(one), self.session(two)
        third = Client(self.server.connect_to(two, self.imap))
        self.addCleanup(third.close)
        self.assertEqual(
            third.command("LOGIN alice alice-pw")[-1],
            b"t1 NO [LIMIT] Too many connections for this user",
        )
        first.ok("LOGOUT")
        # The slot comes back once worker one has told the parent (a message
        # without an answer), which may be just after LOGOUT is answered.
        deadline = time.monotonic() + STARTUP_DEADLINE
        while b" OK " not in third.command("LOGIN alice alice-pw")[-1]:
            self.assertLess(time.monotonic(), deadline, "the logged-out slot stayed taken")
        second.ok("NOOP")

    def test_address_limit_counts_every_worker(self) -> None:
        one, two = self.workers
        held = [self.server.connect_to(one, self.imap), self.server.connect_to(two, self.imap)]
        third, greeting = self.server.connect(self.imap)
        held.append(third)
        for sock in held:
            self.addCleanup(sock.close)
        self.assertTrue(greeting.startswith(b"* OK"), greeting)
        with socket.create_connection(("127.0.0.1", self.imap), timeout=STARTUP_DEADLINE) as s:
            self.assertEqual(read_line(s), b"* BYE Too many connections from your address\r\n")
        held[0].close()
        # The slot is given back when the worker sees the close; a new
        # connection is greeted once it is.
        deadline = time.monotonic() + STARTUP_DEADLINE
        while True:
            with socket.create_connection(("127.0.0.1", self.imap), timeout=30) as s:
                if read_line(s).startswith(b"* OK"):
                    break
            self.assertLess(time.monotonic(), deadline, "the closed connection's slot stayed taken")


class SupervisionTests(WorkersCase):
    def test_a_dead_worker_is_restarted_and_the_other_keeps_its_sessions(self) -> None:
        one, two = self.workers
        survivor = self.session(two)
        survivor.ok("SELECT INBOX")
        self.session(one)  # a slot the dead worker held
        os.kill(one, signal.SIGKILL)
        self.server.wait_for(f"(pid {one}) was killed by signal 9")
        self.server.wait_for("is ready", 3)
        now = self.server.workers()
        self.assertEqual(len(now), 2)
        self.assertIn(two, now)
        self.assertNotIn(one, now)
        survivor.ok("NOOP")
        # The new worker serves, and the dead one's session slot was given back.
        (new,) = set(now) - {two}
        self.session(new).ok("SELECT INBOX")
        self.assertIn("holding 2 connection slots", self.server.daemon.log)

    def test_sigterm_stops_every_worker(self) -> None:
        os.kill(self.server.pid, signal.SIGTERM)
        self.server.daemon.wait_exit(STARTUP_DEADLINE)
        for pid in self.workers:
            self.assertFalse(os.path.exists(f"/proc/{pid}"), f"worker {pid} outlived the daemon")
        self.assertFalse(os.path.exists(self.lmtp))

    def test_workers_stop_when_the_parent_is_killed(self) -> None:
        """No orphan keeps serving (or holding the port) without its parent."""
        sessions = [self.session(pid) for pid in self.workers]
        os.kill(self.server.pid, signal.SIGKILL)
        self.server.daemon.process.wait(STARTUP_DEADLINE)
        for client in sessions:  # each worker closes its sessions as it stops
            client.sock.settimeout(STARTUP_DEADLINE)
            while client.sock.recv(4096):
                pass
        deadline = time.monotonic() + STARTUP_DEADLINE
        while any(alive(pid) for pid in self.workers):
            self.assertLess(time.monotonic(), deadline, "a worker outlived its parent")
        with self.assertRaises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", self.imap), timeout=STARTUP_DEADLINE)

    def test_systemd_hears_the_parent_only_once_every_worker_is_ready(self) -> None:
        """READY=1 comes from the parent once both workers serve; the
        workers never speak to systemd (they do not get NOTIFY_SOCKET)."""
        self.server.stop()
        address = os.path.join(self.short, "notify")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.addCleanup(listener.close)
        listener.bind(address)
        listener.settimeout(STARTUP_DEADLINE)  # a deadline for each message

        def receive() -> list[str]:
            return listener.recv(4096).decode().split("\n")

        self.server = WorkersDaemon(
            self.dir, self.config, env={**source_env(), "NOTIFY_SOCKET": address}
        )
        self.addCleanup(self.server.stop)
        self.assertEqual(receive(), ["READY=1", "STATUS=serving with 2 workers"])
        self.server.wait_for("all 2 workers are ready")
        workers = self.server.workers()
        self.assertEqual(len(workers), 2)
        for pid in workers:
            with open(f"/proc/{pid}/environ", "rb") as f:
                names = {entry.split(b"=", 1)[0] for entry in f.read().split(b"\0")}
            self.assertNotIn(b"NOTIFY_SOCKET", names)
        for pid in workers:  # each worker serves now
            self.session(pid).ok("NOOP")
        os.kill(self.server.pid, signal.SIGHUP)
        self.assertEqual(receive()[0], "RELOADING=1")
        self.assertEqual(receive(), ["READY=1", "STATUS=serving with 2 workers"])
        self.server.wait_for("reload: 2 of 2 workers applied the configuration")
        os.kill(self.server.pid, signal.SIGTERM)
        self.assertEqual(receive(), ["STOPPING=1"])
        self.server.daemon.wait_exit(STARTUP_DEADLINE)

    def test_sighup_reloads_every_worker(self) -> None:
        self.write_config({"max_connections_per_user": 1})
        os.kill(self.server.pid, signal.SIGHUP)
        self.server.wait_for("reload: 2 of 2 workers applied the configuration")
        for number in (1, 2):
            self.server.wait_for(f"#info worker {number}] configuration reloaded from")
        self.assertIn("changed limits.max_connections_per_user", self.server.daemon.log)
        one, two = self.workers
        self.session(one)
        refused = Client(self.server.connect_to(two, self.imap))
        self.addCleanup(refused.close)
        self.assertEqual(
            refused.command("LOGIN alice alice-pw")[-1],
            b"t1 NO [LIMIT] Too many connections for this user",
        )


class WorkersConfigTests(unittest.TestCase):
    """``[server] workers`` and ``--workers``: what they start, and their errors."""

    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.path = os.path.join(self.dir, "mailsrv.toml")

    def load(self, text: str, overrides: dict[str, object] | None = None) -> Config:
        passwd = os.path.join(self.dir, "passwd")
        open(passwd, "w").close()
        with open(self.path, "w") as f:
            f.write(f'[users]\npasswd_file = "{passwd}"\n[imap]\nlisten = ["tcp:1143"]\n{text}')
        return load_config(self.path, overrides)

    def test_default_is_one_per_cpu(self) -> None:
        config = self.load('[storage]\nmaildir = "/srv/{user}"\n')
        self.assertEqual(config.server.workers, 0)
        self.assertEqual(resolved_workers(config), cpu_count())
        self.assertEqual(cpu_count(), len(os.sched_getaffinity(0)))
        # The memory backend lives in one process: its default is one worker.
        config = self.load('[storage]\nbackend = "memory"\n')
        self.assertEqual(resolved_workers(config), 1)

    def test_file_and_option(self) -> None:
        config = self.load('[server]\nworkers = 3\n[storage]\nmaildir = "/srv/{user}"\n')
        self.assertEqual(resolved_workers(config), 3)
        self.assertIn("  workers: 3", describe(config))
        config = self.load(
            '[server]\nworkers = 3\n[storage]\nmaildir = "/srv/{user}"\n', {"workers": 2}
        )
        self.assertEqual(resolved_workers(config), 2)

    def test_metrics_and_admin_socket_take_several_workers(self) -> None:
        """The parent serves both for every worker: neither limits the
        daemon to one process, and each is still checked."""
        storage = '[storage]\nmaildir = "/srv/{user}"\n'
        for section in (
            '[metrics]\nlisten = "tcp:9154:interface=127.0.0.1"\n',
            '[admin]\nsocket = "/run/mailsrv-test/admin.sock"\nworker_timeout = 2.5\n',
        ):
            self.assertEqual(worker_count(self.load(storage + section)), cpu_count())
            config = self.load("[server]\nworkers = 2\n" + storage + section)
            self.assertEqual(worker_count(config), 2)
        self.assertEqual(config.admin.worker_timeout, 2.5)
        e = self.assertRaises(
            ConfigError,
            self.load,
            "[server]\nworkers = 2\n" + storage + '[metrics]\nlisten = "haproxy:tcp:9154"\n',
        )
        self.assertEqual(e.key, "metrics.listen")
        e = self.assertRaises(ConfigError, self.load, storage + "[admin]\nworker_timeout = 0\n")
        self.assertEqual((e.path, e.key), (self.path, "admin.worker_timeout"))

    def test_out_of_range(self) -> None:
        e = self.assertRaises(ConfigError, self.load, "[server]\nworkers = -1\n")
        self.assertEqual((e.path, e.key), (self.path, "server.workers"))
        e = self.assertRaises(ConfigError, self.load, "[server]\nworkers = 1000\n")
        self.assertEqual(e.key, "server.workers")

    def test_bad_option_names_the_option(self) -> None:
        from twisted.plugins.mailsrv_plugin import Options

        options = Options()
        passwd = os.path.join(self.dir, "passwd")
        open(passwd, "w").close()
        options.parseOptions(["--passwd", passwd, "--imap", "tcp:1143", "--workers", "4"])
        self.assertEqual(options.config.server.workers, 4)
        e = self.assertRaises(
            ConfigError, load_config, None, {"imap": ["tcp:1143"], "workers": "two"}
        )
        self.assertEqual((e.path, e.key), (COMMAND_LINE, "--workers"))

    def test_memory_storage_refuses_several(self) -> None:
        e = self.assertRaises(
            ConfigError, self.load, '[server]\nworkers = 2\n[storage]\nbackend = "memory"\n'
        )
        self.assertEqual(e.key, "server.workers")
        self.assertIn("keeps mail inside one process", e.reason)
        config = self.load('[server]\nworkers = 1\n[storage]\nbackend = "memory"\n')
        self.assertEqual(resolved_workers(config), 1)


class TLSBufferTests(unittest.TestCase):
    """An idle TLS connection keeps no OpenSSL read/write buffers
    (SSL_MODE_RELEASE_BUFFERS; bench/tlsmem.py measures what that saves)."""

    def test_server_context_releases_buffers(self) -> None:
        from OpenSSL import SSL

        from mailsrv.config import TLSSection
        from mailsrv.tls import CurrentTLS, server_context

        directory = os.path.abspath(self.mktemp())
        section = TLSSection(
            certificate=os.path.join(directory, "cert.pem"),
            key=os.path.join(directory, "key.pem"),
            generate_self_signed=True,
        )
        options = server_context(section)
        # set_mode(0) adds nothing and answers the context's mode.
        self.assertTrue(options.getContext().set_mode(0) & SSL.MODE_RELEASE_BUFFERS)
        # Every connection, STARTTLS or implicit TLS, is made from that context.
        connection = CurrentTLS(options).serverConnectionForTLS(None)
        self.assertIs(connection.get_context(), options.getContext())


class BackoffTests(unittest.SynchronousTestCase):
    """A worker that keeps dying young is restarted ever more slowly."""

    def test_delays(self) -> None:
        from mailsrv.workers.supervisor import MAX_BACKOFF, _backoff

        self.assertEqual([_backoff(n) for n in range(1, 6)], [0.0, 1.0, 2.0, 4.0, 8.0])
        self.assertEqual(_backoff(50), MAX_BACKOFF)
