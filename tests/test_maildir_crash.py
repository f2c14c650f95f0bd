"""A real ``twistd -n mailsrv`` killed with SIGKILL, its Maildir damaged the
way crashes and disks damage it, restarted, and checked over IMAP and on disk.

Kills that must land inside an operation use the fault points of the Maildir
backend (:func:`mailsrv.storage.maildir.recovery.crash_point`:
``MAILSRV_CRASH_AT=NAME[@N]`` in the daemon's environment makes it SIGKILL
itself there), so each test is deterministic.
"""

from __future__ import annotations

import imaplib
import io
import os
import re
import shutil
import socket
import sqlite3
import subprocess

from twisted.trial.unittest import SynchronousTestCase

from mailsrv import cli
from tests.helpers import Daemon, daemon_config, free_port, loopback, mailsrv_command, source_env

INDEX = "mailsrv-index.sqlite"
UIDLIST = "mailsrv-uidlist"
FETCHED = re.compile(rb"UID (\d+) FLAGS \(([^)]*)\)")
SUBJECT = re.compile(rb"Subject: (\S+)")


def message(subject: str) -> bytes:
    return f"Subject: {subject}\r\nMessage-ID: <{subject}@test>\r\n\r\nbody\r\n".encode()


class DaemonCrashTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.port = free_port()
        self.passwd = os.path.join(self.dir, "passwd")
        self.root = os.path.join(self.dir, "mail", "alice", "Maildir")
        self.config = daemon_config(self.dir, self.config_sections())
        status = cli.main(
            ["user", "add", "alice", "--config", self.config, "--password-stdin"],
            stdin=io.StringIO("pw\n"),
            stdout=io.StringIO(),
        )
        self.assertEqual(status, 0)

    def config_sections(self) -> dict[str, dict[str, object]]:
        """What the daemon's configuration adds to :func:`daemon_config`'s."""
        return {
            "server": {"hostname": "localhost"},
            "imap": {"listen": loopback(self.port)},
            "users": {"create_if_missing": None},
        }

    def start(self, crash_at: str | None = None) -> Daemon:
        env = source_env()
        if crash_at is not None:
            env["MAILSRV_CRASH_AT"] = crash_at
        daemon = Daemon.start(["--config", self.config], cwd=self.dir, env=env)
        self.addCleanup(daemon.stop)
        daemon.wait_for("listening on")
        return daemon

    def kill(self, daemon: Daemon) -> None:
        daemon.process.kill()
        daemon.process.wait(timeout=30)

    def died(self, daemon: Daemon) -> None:
        """The daemon killed itself at its fault point."""
        self.assertEqual(daemon.process.wait(timeout=30), -9)

    def login(self) -> imaplib.IMAP4:
        client = imaplib.IMAP4("127.0.0.1", self.port, timeout=30)
        self.addCleanup(client.shutdown)
        client.login("alice", "pw")
        return client

    def path(self, name: str, folder: str = "") -> str:
        return os.path.join(self.root, folder, name)

    def run_mailsrv(self, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [*mailsrv_command(), *args, "--config", self.config],
            input=stdin,
            capture_output=True,
            env=source_env(),
            timeout=60,
            check=False,
        )

    def select(self, client: imaplib.IMAP4, mailbox: str) -> tuple[int, int]:
        """(EXISTS, UIDVALIDITY) from a SELECT that must succeed."""
        status, data = client.select(mailbox)
        self.assertEqual(status, "OK", data)
        validity = client.response("UIDVALIDITY")[1][0]
        assert data[0] is not None and validity is not None
        return int(data[0]), int(validity)

    def contents(self, client: imaplib.IMAP4, mailbox: str) -> dict[int, tuple[str, str]]:
        """UID -> (subject, flags) of every message, over IMAP."""
        self.select(client, mailbox)
        status, data = client.uid("FETCH", "1:*", "(UID FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        self.assertEqual(status, "OK")
        found: dict[int, tuple[str, str]] = {}
        for item in data:
            if not isinstance(item, tuple):
                continue
            meta = FETCHED.search(item[0])
            subject = SUBJECT.search(item[1])
            assert meta is not None and subject is not None, item
            found[int(meta.group(1))] = (subject.group(1).decode(), meta.group(2).decode())
        return found

    def appenduid(self, client: imaplib.IMAP4, mailbox: str, subject: str) -> int:
        status, data = client.append(mailbox, "", None, message(subject))
        self.assertEqual(status, "OK", data)
        assert isinstance(data[0], bytes)
        match = re.search(rb"APPENDUID \d+ (\d+)", data[0])
        assert match is not None
        return int(match.group(1))

    def damage(self, how: str) -> None:
        path = self.path(INDEX)
        size = os.path.getsize(path)
        if how == "random":
            with open(path, "r+b") as handle:
                handle.write(os.urandom(size))
        else:
            os.truncate(path, size // 2)


class DamagedIndexTests(DaemonCrashTestCase):
    """Issue items 1 and 2: a damaged index is rebuilt by whoever opens it
    next (the daemon, ``mailsrv deliver``, ``mailsrv reindex``), keeping
    UIDVALIDITY, UIDs and flags, and no APPEND or delivery is answered
    with a failure once its message is stored."""

    def append_many(self, count: int) -> list[int]:
        """APPEND ``count`` messages pipelined with LITERAL+ (one round trip:
        imaplib waits for each continuation); their APPENDUIDs."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=30) as sock:
            reader = sock.makefile("rb")
            commands = [b"l LOGIN alice pw\r\n"]
            for i in range(count):
                data = message(f"m{i}")
                commands.append(b"a%d APPEND INBOX {%d+}\r\n%s\r\n" % (i, len(data), data))
            sock.sendall(b"".join(commands) + b"z LOGOUT\r\n")
            uids: list[int] = []
            for line in reader:
                if line.startswith(b"a"):
                    match = re.match(rb"a\d+ OK \[APPENDUID \d+ (\d+)\]", line)
                    assert match is not None, line
                    uids.append(int(match.group(1)))
                elif line.startswith(b"z "):
                    break
            return uids

    def assertDamaged(self) -> None:
        """The index as it is now cannot list the messages (checked on a
        copy: opening the original would apply its WAL)."""
        copy = os.path.join(self.dir, "copy")
        os.makedirs(copy)
        for suffix in ("", "-wal"):
            shutil.copyfile(self.path(INDEX + suffix), os.path.join(copy, INDEX + suffix))
        db = sqlite3.connect(os.path.join(copy, INDEX))
        try:
            with self.assertRaises(sqlite3.DatabaseError):
                db.execute("SELECT uid, filename FROM messages ORDER BY uid").fetchall()
        finally:
            db.close()
            shutil.rmtree(copy)

    def test_killed_then_index_damaged(self) -> None:
        daemon = self.start()
        self.assertEqual(self.append_many(400), list(range(1, 401)))
        client = self.login()
        _exists, validity = self.select(client, "INBOX")
        client.uid("STORE", "1:100", "+FLAGS.SILENT", r"(\Seen $Work)")
        client.uid("STORE", "351:400", "+FLAGS.SILENT", r"(\Deleted)")
        client.expunge()
        self.kill(daemon)
        self.assertGreater(os.path.getsize(self.path(INDEX + "-wal")), 1_000_000)

        # mailsrv deliver after the kill (it leaves the index checkpointed).
        delivered = self.run_mailsrv("deliver", "alice", stdin=message("after1"))
        self.assertEqual(delivered.returncode, 0, delivered.stderr)

        daemon = self.start()
        client = self.login()
        client.select("INBOX")
        client.uid("STORE", "1:5", "+FLAGS.SILENT", r"(\Flagged)")
        expected = self.contents(client, "INBOX")
        self.assertEqual(len(expected), 351)
        self.kill(daemon)
        # Random bytes under the WAL the kill left: only what the last
        # commands wrote is still readable.
        self.damage("random")
        self.assertDamaged()

        daemon = self.start()
        client = self.login()
        self.assertEqual(self.select(client, "INBOX"), (351, validity))
        # \Recent is not kept by a rebuild; every other flag is.
        unrecent = {uid: (subject, flags) for uid, (subject, flags) in expected.items()}
        for uid, (subject, flags) in unrecent.items():
            unrecent[uid] = (subject, " ".join(f for f in flags.split() if f != r"\Recent"))
        self.assertEqual(self.contents(client, "INBOX"), unrecent)
        self.assertEqual(self.appenduid(client, "INBOX", "after2"), 402)
        daemon.wait_for("cannot be used (")  # with the reason SQLite gave
        self.assertTrue(os.path.exists(self.path(INDEX + ".broken-wal")))
        self.kill(daemon)

        reindexed = self.run_mailsrv("reindex", "alice")
        self.assertEqual(reindexed.returncode, 0, reindexed.stderr)
        self.assertIn(b"INBOX: 352 messages", reindexed.stdout)
        # Cut in half, no WAL: stored means exit 0, and stored once.
        self.damage("half")
        delivered = self.run_mailsrv("deliver", "alice", stdin=message("after3"))
        self.assertEqual(delivered.returncode, 0, delivered.stderr)

        self.start()
        client = self.login()
        self.assertEqual(self.select(client, "INBOX"), (353, validity))
        found = self.contents(client, "INBOX")
        self.assertEqual({uid: found[uid] for uid in unrecent}, unrecent)
        self.assertEqual([found[uid][0] for uid in (402, 403)], ["after2", "after3"])
        self.assertEqual(len(os.listdir(self.path("cur"))), 353)


class TornUidListTests(DaemonCrashTestCase):
    """Issue item 3: a UID list cut in mid-line keeps every UID."""

    def test_torn_last_line(self) -> None:
        daemon = self.start()
        client = self.login()
        for i in range(3):
            self.appenduid(client, "INBOX", f"m{i}")
        _exists, validity = self.select(client, "INBOX")
        self.kill(daemon)
        os.truncate(self.path(UIDLIST), os.path.getsize(self.path(UIDLIST)) - 5)

        daemon = self.start()
        client = self.login()
        self.assertEqual([self.appenduid(client, "INBOX", f"m{i}") for i in (3, 4)], [4, 5])
        self.kill(daemon)
        with open(self.path(UIDLIST), "rb") as handle:
            lines = handle.read().split(b"\n")
        self.assertEqual(lines[-1], b"")
        self.assertEqual([int(line.split(b" :")[0]) for line in lines[1:-1]], [1, 2, 3, 4, 5])
        for suffix in ("", "-wal", "-shm"):
            os.unlink(self.path(INDEX + suffix))

        daemon = self.start()
        client = self.login()
        self.assertEqual(self.select(client, "INBOX"), (5, validity))
        subjects = {uid: subject for uid, (subject, _) in self.contents(client, "INBOX").items()}
        self.assertEqual(subjects, {1: "m0", 2: "m1", 3: "m2", 4: "m3", 5: "m4"})


class MoveTests(DaemonCrashTestCase):
    """Issue item 4: a daemon killed at each step of UID MOVE leaves every
    message in exactly one mailbox, with consistent UIDs on both sides."""

    def move_and_die(self, daemon: Daemon, client: imaplib.IMAP4, uids: str) -> None:
        self.select(client, "INBOX")
        with self.assertRaises((imaplib.IMAP4.abort, OSError)):
            client.uid("MOVE", uids, "Archive")
        self.died(daemon)

    def status_uidnext(self, client: imaplib.IMAP4, mailbox: str) -> int:
        status, data = client.status(mailbox, "(UIDNEXT)")
        self.assertEqual(status, "OK")
        assert isinstance(data[0], bytes)
        match = re.search(rb"UIDNEXT (\d+)", data[0])
        assert match is not None
        return int(match.group(1))

    def check(self, inbox: dict[int, str], archive: dict[int, str], uidnext: int) -> imaplib.IMAP4:
        client = self.login()
        found = {uid: subject for uid, (subject, _) in self.contents(client, "INBOX").items()}
        self.assertEqual(found, inbox)
        found = {uid: subject for uid, (subject, _) in self.contents(client, "Archive").items()}
        self.assertEqual(found, archive)
        self.assertEqual(self.status_uidnext(client, "Archive"), uidnext)
        self.assertEqual(len(os.listdir(self.path("cur"))), len(inbox))
        self.assertEqual(len(os.listdir(self.path("cur", ".Archive"))), len(archive))
        return client

    def test_killed_at_each_step(self) -> None:
        daemon = self.start(crash_at="move-allocated")
        client = self.login()
        for i in range(4):
            self.appenduid(client, "INBOX", f"m{i}")
        # Dies after taking Archive's UIDs 1-3, before any file moved.
        self.move_and_die(daemon, client, "1:3")

        daemon = self.start(crash_at="move-renamed@2")
        client = self.check({1: "m0", 2: "m1", 3: "m2", 4: "m3"}, {}, 4)
        # Takes 4-6 and dies after moving two files.
        self.move_and_die(daemon, client, "1:3")

        daemon = self.start(crash_at="move-indexed")
        client = self.check({3: "m2", 4: "m3"}, {4: "m0", 5: "m1"}, 7)
        # Takes 7-8, moves both, dies before INBOX's index learns it.
        self.move_and_die(daemon, client, "3:4")

        self.start()
        client = self.check({}, {4: "m0", 5: "m1", 7: "m2", 8: "m3"}, 9)
        self.assertEqual(self.appenduid(client, "Archive", "later"), 9)


class UncommittedChangeTests(DaemonCrashTestCase):
    """A daemon killed inside a change's index transaction (found by the
    kill soak, tests/stress/killsoak.py): the change was never acknowledged,
    and the index is sound, so the restart keeps it rather than rebuilding."""

    def highest_modseq(self, client: imaplib.IMAP4) -> int:
        status, data = client.status("INBOX", "(HIGHESTMODSEQ)")
        self.assertEqual(status, "OK", data)
        assert isinstance(data[0], bytes)
        match = re.search(rb"HIGHESTMODSEQ (\d+)", data[0])
        assert match is not None
        return int(match.group(1))

    def test_killed_before_commit_keeps_the_index(self) -> None:
        daemon = self.start()
        client = self.login()
        for i in range(3):
            self.appenduid(client, "INBOX", f"m{i}")
        before = self.highest_modseq(client)
        self.kill(daemon)

        # Dies after the STORE's meta values are written, before COMMIT (the
        # SELECT records the folder as the restart found it: the first).
        daemon = self.start(crash_at="meta-recorded@2")
        client = self.login()
        self.select(client, "INBOX")
        with self.assertRaises((imaplib.IMAP4.abort, OSError)):
            client.uid("STORE", "2", "+FLAGS", "(\\Seen)")
        self.died(daemon)

        daemon = self.start()
        client = self.login()
        found = self.contents(client, "INBOX")
        self.assertEqual(
            {uid: subject for uid, (subject, _) in found.items()}, {1: "m0", 2: "m1", 3: "m2"}
        )
        # The index was kept: MODSEQs go on from where they were (a rebuilt
        # one starts at the clock's microseconds, and clients refetch all).
        self.assertIn(self.highest_modseq(client), (before, before + 1))
        self.assertFalse(os.path.exists(self.path(INDEX + ".broken")))
        self.assertNotIn("cannot be used", daemon.log)

    def test_killed_creating_an_index(self) -> None:
        daemon = self.start()
        client = self.login()
        self.appenduid(client, "INBOX", "m0")
        self.kill(daemon)

        # CREATE dies having made Box's index file, before its tables commit.
        daemon = self.start(crash_at="index-creating")
        client = self.login()
        with self.assertRaises((imaplib.IMAP4.abort, OSError)):
            client.create("Box")
        self.died(daemon)
        self.assertTrue(os.path.exists(self.path(INDEX, ".Box")))

        daemon = self.start()
        client = self.login()
        self.assertEqual(self.appenduid(client, "Box", "b0"), 1)
        self.assertEqual(
            {uid: s for uid, (s, _) in self.contents(client, "Box").items()}, {1: "b0"}
        )
        # Nothing was damaged: no index kept aside, no warning.
        self.assertEqual([n for n in os.listdir(self.path("", ".Box")) if "broken" in n], [])
        self.assertNotIn("cannot be used", daemon.log)
