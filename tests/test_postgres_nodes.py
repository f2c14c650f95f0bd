"""Several mailsrv daemons on one PostgreSQL database, as a cluster runs them.

Every test starts real ``twistd -n mailsrv`` processes on the private test
server (tests/pgcluster.py) and speaks IMAP and POP3 to them over
sockets.  Checked here: a change made through one node reaches sessions on
another in order, with correct sequence numbers; POP3's lock holds across
nodes and dies with a killed node; a node killed with SIGKILL in the middle
of APPEND, COPY, EXPUNGE or delivery loses nothing it acknowledged and
leaves no orphaned body; and PostgreSQL restarting under load makes
commands answer ``NO [UNAVAILABLE]`` until it is back, then work again.
"""

from __future__ import annotations

import os
import poplib
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from twisted.trial import unittest

from tests import pgcluster
from tests.helpers import Daemon, free_port, source_env

#: Upper bound for anything a test waits for; a deadline, not a sleep.
DEADLINE = 60.0

MESSAGE_ID = re.compile(rb"Message-ID: (<[^>]+>)")


def message(tag: str, size: int = 0) -> bytes:
    return (
        f"Message-ID: <{tag}@test.example>\r\nSubject: {tag}\r\n\r\nbody of {tag}\r\n".encode()
        + b"filler line\r\n" * (size // 13)
    )


def wait_for(predicate: Callable[[], bool], what: str) -> None:
    """Wait until ``predicate()`` holds (checked every 20 ms), or fail."""
    give_up = time.monotonic() + DEADLINE
    while not predicate():
        if time.monotonic() > give_up:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.02)


class Imap:
    """A blocking IMAP client: enough to drive a daemon line by line."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE)
        self.file = self.sock.makefile("rb")
        self.greeting = self.line()
        self.count = 0

    def close(self) -> None:
        self.file.close()
        self.sock.close()

    def line(self) -> bytes:
        data: bytes = self.file.readline()
        if not data:
            raise ConnectionError("connection closed by the server")
        return data

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def command(self, text: str, literal: bytes | None = None) -> list[bytes]:
        """Send a command (with a LITERAL+ literal); every line up to its tagged answer."""
        self.count += 1
        tag = f"t{self.count}"
        if literal is None:
            self.send(f"{tag} {text}\r\n".encode())
        else:
            self.send(f"{tag} {text} {{{len(literal)}+}}\r\n".encode() + literal + b"\r\n")
        return self.until(lambda line: line.startswith(tag.encode() + b" "))

    def until(self, done: Callable[[bytes], bool]) -> list[bytes]:
        lines = []
        while True:
            line = self.line()
            lines.append(line)
            if done(line):
                return lines

    def login(self) -> None:
        assert self.command("LOGIN alice secret")[-1].split()[1] == b"OK"


class NodesTestCase(unittest.TestCase):
    """A database, a users file and daemons (nodes) sharing them."""

    def setUp(self) -> None:
        pgcluster.require()
        self.cluster = pgcluster.Cluster.shared()
        self.dsn = self.cluster.create_schema()
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        with open(os.path.join(self.dir, "passwd"), "w") as f:
            f.write("alice:{PLAIN}secret\n")
        self.nodes: list[tuple[Daemon, int, int]] = []

    def start_node(self, ports: tuple[int, int] | None = None) -> tuple[Daemon, int, int]:
        """A daemon on the shared database: (daemon, IMAP port, POP3 port)."""
        imap, pop3 = ports if ports is not None else (free_port(), free_port())
        config = os.path.join(self.dir, f"node-{imap}.toml")
        with open(config, "w") as f:
            f.write(
                f'[server]\nhostname = "node-{imap}"\n'
                f'[imap]\nlisten = ["tcp:{imap}:interface=127.0.0.1"]\n'
                f'[pop3]\nlisten = ["tcp:{pop3}:interface=127.0.0.1"]\n'
                f'[users]\npasswd_file = "{self.dir}/passwd"\n'
                "[auth]\nfailure_delay = 0.0\n"
                f'[storage]\nbackend = "postgresql"\ndsn = "{self.dsn}"\npool_size = 4\n'
            )
        daemon = Daemon.start(["--config", config], cwd=self.dir)
        self.addCleanup(daemon.stop)
        daemon.wait_for("listening on", count=2)
        node = (daemon, imap, pop3)
        self.nodes.append(node)
        return node

    def imap(self, port: int) -> Imap:
        client = Imap(port)
        self.addCleanup(client.close)
        client.login()
        return client

    def query(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        import psycopg

        with psycopg.connect(self.dsn, autocommit=True) as conn:
            return list(conn.execute(sql, args).fetchall())

    def orphans(self) -> list[tuple[Any, ...]]:
        """Bodies whose reference count disagrees with the messages using them,
        and chunks without a body."""
        return self.query(
            "SELECT b.digest, b.refcount, count(m.digest) FROM blobs b "
            "LEFT JOIN messages m ON m.digest = b.digest GROUP BY b.digest, b.refcount "
            "HAVING b.refcount <> count(m.digest) "
            "UNION ALL SELECT c.digest, 0, 0 FROM blob_chunks c "
            "LEFT JOIN blobs b ON b.digest = c.digest WHERE b.digest IS NULL"
        )

    def stored(self, folder: str) -> dict[int, bytes]:
        """UID -> Message-ID of a folder, read through a storage of our own."""
        from mailsrv.storage.postgres import PostgresStorage

        storage = PostgresStorage(self.dsn, pool_size=1)
        try:
            mailbox = storage.account("alice").get_mailbox(folder)
            found = {}
            for uid in mailbox.uids():
                handle = mailbox.open(uid)
                match = MESSAGE_ID.search(handle.read(4096))
                handle.close()
                assert match is not None
                found[uid] = match.group(1)
            return found
        finally:
            storage.close()

    @staticmethod
    def kill(daemon: Daemon) -> None:
        os.kill(daemon.process.pid, signal.SIGKILL)
        daemon.process.wait()


class TwoNodesTests(NodesTestCase):
    def test_idle_on_one_node_sees_changes_made_on_the_other(self) -> None:
        _, port_a, _ = self.start_node()
        _, port_b, _ = self.start_node()
        idler = self.imap(port_a)
        self.assertIn(b"* 0 EXISTS\r\n", idler.command("SELECT INBOX"))
        idler.send(b"i IDLE\r\n")
        self.assertEqual(idler.line(), b"+ idling\r\n")
        other = self.imap(port_b)
        for n in (1, 2, 3):
            answer = other.command("APPEND INBOX", message(f"m{n}"))
            self.assertRegex(answer[-1], rb"OK \[APPENDUID \d+ %d\]" % n)
            self.assertEqual(idler.line(), b"* %d EXISTS\r\n" % n)
            self.assertEqual(idler.line(), b"* %d RECENT\r\n" % n)
        other.command("SELECT INBOX")
        self.assertTrue(
            other.command("UID STORE 2 +FLAGS (\\Deleted)")[-1].endswith(b"OK STORE completed\r\n")
        )
        self.assertEqual(idler.line(), b"* 2 FETCH (FLAGS (\\Deleted \\Recent))\r\n")
        self.assertEqual(other.command("EXPUNGE")[0], b"* 2 EXPUNGE\r\n")
        self.assertEqual(idler.line(), b"* 2 EXPUNGE\r\n")
        other.command("UNSELECT")
        other.command("APPEND INBOX", message("m4"))
        self.assertEqual(idler.line(), b"* 3 EXISTS\r\n")
        self.assertEqual(idler.line(), b"* 3 RECENT\r\n")
        idler.send(b"DONE\r\n")
        self.assertEqual(idler.line(), b"i OK IDLE terminated\r\n")
        self.assertEqual(
            idler.command("UID FETCH 1:* (UID)")[:-1],
            [b"* 1 FETCH (UID 1)\r\n", b"* 2 FETCH (UID 3)\r\n", b"* 3 FETCH (UID 4)\r\n"],
        )

    def test_pop3_lock_across_nodes_dies_with_a_killed_node(self) -> None:
        daemon_a, _, pop_a = self.start_node()
        _, port_b, pop_b = self.start_node()
        self.imap(port_b).command("APPEND INBOX", message("m1"))
        first = poplib.POP3("127.0.0.1", pop_a, timeout=DEADLINE)
        first.user("alice")
        self.assertTrue(first.pass_("secret").startswith(b"+OK Logged in: 1 message"))
        second = poplib.POP3("127.0.0.1", pop_b, timeout=DEADLINE)
        second.user("alice")
        with self.assertRaises(poplib.error_proto) as refused:
            second.pass_("secret")
        self.assertEqual(
            refused.exception.args[0], b"-ERR [IN-USE] Mailbox is locked by another POP3 session."
        )
        self.kill(daemon_a)
        first.sock.close()
        # PostgreSQL ends the dead node's session, and its locks with it.
        wait_for(
            lambda: not self.query("SELECT 1 FROM pg_locks WHERE locktype = 'advisory'"),
            "the killed node's lock to go",
        )
        second.user("alice")
        self.assertTrue(second.pass_("secret").startswith(b"+OK Logged in: 1 message"))
        second.quit()


class _Worker(threading.Thread):
    """Runs IMAP commands against a node until the connection dies,
    recording every command the server acknowledged."""

    def __init__(self, port: int, tag: str) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.tag = tag
        self.appended: dict[bytes, int] = {}  # Message-ID -> UID
        self.copied: dict[int, bytes] = {}  # Archive UID -> Message-ID
        self.expunged: set[int] = set()
        #: UIDs flagged \Deleted (acknowledged or not): an expunge cut short
        #: by the kill may or may not have removed them.
        self.doomed: set[int] = set()
        self.unavailable = 0
        self.acked = 0
        self.error: BaseException | None = None
        #: Set to end the loop politely (LOGOUT) instead of by a kill.
        self.stopping = False

    def run(self) -> None:
        try:
            client = Imap(self.port)
            client.login()
            client.command("SELECT INBOX")
            n = 0
            while not self.stopping:
                n += 1
                msgid = f"{self.tag}.{n}"
                answer = client.command("APPEND INBOX", message(msgid, 3000 * (n % 5)))
                found = re.search(rb"OK \[APPENDUID \d+ (\d+)\]", answer[-1])
                if b"NO [UNAVAILABLE]" in answer[-1]:
                    self.unavailable += 1
                    continue
                assert found is not None, answer
                uid = int(found.group(1))
                self.appended[f"<{msgid}@test.example>".encode()] = uid
                self.acked += 1
                if n % 3 == 0:
                    answer = client.command(f"UID COPY {uid} Archive")
                    copied = re.search(rb"OK \[COPYUID \d+ \d+ (\d+)\]", answer[-1])
                    if copied is not None:
                        self.copied[int(copied.group(1))] = f"<{msgid}@test.example>".encode()
                if n % 4 == 0:
                    victim = uid - 2
                    self.doomed.add(victim)
                    client.command(f"UID STORE {victim} +FLAGS.SILENT (\\Deleted)")
                    answer = client.command(f"UID EXPUNGE {victim}")
                    if answer[-1].split()[1] == b"OK":
                        self.expunged.add(victim)
            client.command("LOGOUT")
            client.close()
        except (ConnectionError, OSError):
            return  # the node was killed
        except BaseException as exc:  # pragma: no cover - shown by the test
            self.error = exc


class ConsistencyMixin(NodesTestCase):
    def check_consistent(self, workers: list[_Worker]) -> None:
        inbox = {msgid: uid for uid, msgid in self.stored("INBOX").items()}
        archive = self.stored("Archive")
        # Workers share the INBOX: one may expunge another's message.
        expunged = {uid for worker in workers for uid in worker.expunged}
        doomed = {uid for worker in workers for uid in worker.doomed}
        for worker in workers:
            self.assertIsNone(worker.error)
            for msgid, uid in worker.appended.items():
                if uid in expunged:
                    self.assertNotIn(msgid, inbox)
                elif uid not in doomed:
                    self.assertEqual(inbox.get(msgid), uid, msgid)
            for uid, msgid in worker.copied.items():
                self.assertEqual(archive.get(uid), msgid)
        self.assertEqual(len(inbox), len(set(inbox.values())))
        self.assertEqual(self.orphans(), [])


class CrashTests(ConsistencyMixin):
    def test_sigkill_during_append_copy_expunge_and_delivery(self) -> None:
        workers: list[_Worker] = []
        ports = (free_port(), free_port())
        # Two rounds: the second kills a node over data the first left behind.
        for round_number in range(2):
            daemon, port, _ = self.start_node(ports)
            round_workers = [_Worker(port, f"r{round_number}w{i}") for i in range(2)]
            for worker in round_workers:
                worker.start()
            deliverer = self.deliver_forever(f"d{round_number}")
            wanted = 12 * (round_number + 1)
            wait_for(
                lambda ws=round_workers, n=wanted, d=deliverer: (  # type: ignore[misc]
                    sum(w.acked for w in ws) >= n and len(d.lines) >= 3
                ),
                "acknowledged commands and deliveries",
            )
            self.kill(daemon)
            os.kill(deliverer.process.pid, signal.SIGKILL)
            for worker in round_workers:
                worker.join(DEADLINE)
            workers.extend(round_workers)
            delivered = deliverer.acked()
            self.assertGreaterEqual(len(delivered), 3)
            inbox = {msgid: uid for uid, msgid in self.stored("INBOX").items()}
            # A worker expunges "its UID minus 2", which may be a delivery.
            doomed = {uid for worker in workers for uid in worker.doomed}
            for msgid, uid in delivered.items():
                if uid not in doomed:
                    self.assertEqual(inbox.get(msgid), uid, msgid)
            self.check_consistent(workers)
        highest = max(uid for w in workers for uid in w.appended.values())
        daemon, port, _ = self.start_node(ports)
        answer = self.imap(port).command("APPEND INBOX", message("after"))
        found = re.search(rb"APPENDUID \d+ (\d+)", answer[-1])
        assert found is not None
        self.assertGreater(int(found.group(1)), highest)

    def deliver_forever(self, tag: str) -> _Deliverer:
        deliverer = _Deliverer(self.dsn, tag)
        self.addCleanup(deliverer.reap)
        return deliverer


class DatabaseRestartTests(ConsistencyMixin):
    def test_postgresql_restart_under_load(self) -> None:
        """Commands answer NO [UNAVAILABLE] while PostgreSQL is down, work
        again on the same sessions once it is back, and an IDLE session on
        another node misses no change made around the restart."""
        _, port_a, pop_a = self.start_node()
        _, port_b, _ = self.start_node()
        idler = self.imap(port_a)
        idler.command("SELECT INBOX")
        idler.send(b"i IDLE\r\n")
        self.assertEqual(idler.line(), b"+ idling\r\n")
        probe = self.imap(port_a)
        worker = _Worker(port_b, "w")
        worker.start()
        self.addCleanup(setattr, worker, "stopping", True)
        wait_for(lambda: worker.acked >= 10, "commands before the restart")
        self.cluster.stop("fast")
        try:
            wait_for(
                lambda: worker.unavailable >= 3 or not worker.is_alive(), "NO [UNAVAILABLE] answers"
            )
            self.assertIsNone(worker.error)
            self.assertGreaterEqual(worker.unavailable, 3)
            answer = probe.command("STATUS INBOX (MESSAGES)")
            self.assertRegex(answer[-1], rb"^t\d+ NO \[UNAVAILABLE\] mail database unavailable")
            pop = poplib.POP3("127.0.0.1", pop_a, timeout=DEADLINE)
            pop.user("alice")
            with self.assertRaises(poplib.error_proto) as refused:
                pop.pass_("secret")
            self.assertTrue(refused.exception.args[0].startswith(b"-ERR [SYS/TEMP]"))
            pop.close()
        finally:
            self.cluster.start()
        before = worker.acked
        wait_for(lambda: worker.acked >= before + 10, "commands after the restart")
        worker.stopping = True
        worker.join(DEADLINE)
        self.check_consistent([worker])
        # The IDLE session heard every change, the ones made while its
        # node's LISTEN connection was reconnecting included: its count of
        # messages reaches exactly the mailbox's.
        uids = sorted(self.stored("INBOX"))
        counted = [0]

        def caught_up(line: bytes) -> bool:
            words = line.split()
            if words[2:3] == [b"EXISTS"]:
                counted[0] = int(words[1])
            elif words[2:3] == [b"EXPUNGE"]:
                counted[0] -= 1
            return counted[0] == len(uids)

        idler.until(caught_up)
        idler.send(b"DONE\r\n")
        idler.until(lambda line: line.startswith(b"i OK"))
        fetched = idler.command("UID FETCH 1:* (UID)")
        self.assertEqual(
            fetched[:-1], [b"* %d FETCH (UID %d)\r\n" % (n, uid) for n, uid in enumerate(uids, 1)]
        )
        self.assertIn(b"OK STATUS", probe.command("STATUS INBOX (MESSAGES)")[-1])


# A delivery agent in a loop, as `mailsrv deliver` stores each message:
# one line "UID MESSAGE-ID" per acknowledged message.
_DELIVER_LOOP = r"""
import io, sys
from mailsrv.storage.postgres import PostgresStorage
from mailsrv.storage.postgres.deliver import deliver

dsn, tag = sys.argv[1:3]
account = PostgresStorage(dsn, pool_size=1).account("alice")
i = 0
while True:
    i += 1
    msgid = f"<{tag}.{i}@test.example>"
    body = f"Message-ID: {msgid}\nSubject: {i}\n\nbody\n" + "filler\n" * (i % 9) * 500
    uid = deliver(account, io.BytesIO(body.encode()))
    sys.stdout.write(f"{uid} {msgid}\n")
    sys.stdout.flush()
"""


class _Deliverer:
    """The delivery loop as a child process; a thread collects its acks."""

    def __init__(self, dsn: str, tag: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", _DELIVER_LOOP, dsn, tag],
            stdout=subprocess.PIPE,
            env=source_env(),
        )
        self.lines: list[bytes] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)

    def acked(self) -> dict[bytes, int]:
        self.process.wait()
        self._reader.join(DEADLINE)
        acked = {}
        for line in self.lines:
            if line.endswith(b"\n"):  # a line cut short by the kill is no acknowledgement
                uid, msgid = line.split()
                acked[msgid] = int(uid)
        return acked

    def reap(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self._reader.join(DEADLINE)
        if self.process.stdout is not None:
            self.process.stdout.close()
