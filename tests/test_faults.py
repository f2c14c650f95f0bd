"""A real daemon whose disk fails at a chosen point of a write path.

``MAILSRV_FAIL_AT=NAME[@N]:ERRNO`` in a process's environment makes the
Maildir fault point NAME raise that OSError (see
:mod:`mailsrv.storage.maildir.faults`), as a full or failing disk would.
Each test checks what the client is told (a clear tagged NO, an exit
status) and that the files on disk and the answers over IMAP agree
afterwards: nothing acknowledged lost, nothing refused left half-written, no
UID given twice.
"""

from __future__ import annotations

import imaplib
import os
import smtplib
import subprocess

from tests.helpers import Daemon, free_port, mailsrv_command, source_env
from tests.test_maildir_crash import DaemonCrashTestCase, message


class DiskFaultTestCase(DaemonCrashTestCase):
    def start_failing(self, fail_at: str) -> Daemon:
        env = {**source_env(), "MAILSRV_FAIL_AT": fail_at}
        daemon = Daemon.start(["--config", self.config], cwd=self.dir, env=env)
        self.addCleanup(daemon.stop)
        daemon.wait_for("listening on")
        return daemon

    def files(self, sub: str, folder: str = "") -> list[str]:
        return sorted(os.listdir(os.path.join(self.root, folder, sub)))

    def refused(self, client: imaplib.IMAP4, *command: str, code: str) -> None:
        """The command is answered with a tagged NO carrying ``code``."""
        tag = client._new_tag()
        client.send(tag + b" " + " ".join(command).encode() + b"\r\n")
        while True:
            line = client.readline()
            self.assertTrue(line, "connection closed")
            if line.startswith(tag + b" "):
                break
        self.assertTrue(line.startswith(tag + b" NO [" + code.encode() + b"]"), line)

    def append_refused(self, client: imaplib.IMAP4, subject: str, code: str) -> None:
        body = message(subject)
        tag = client._new_tag()
        client.send(tag + b" APPEND INBOX {%d+}\r\n" % len(body) + body + b"\r\n")
        line = client.readline()
        while line.startswith(b"* "):
            line = client.readline()
        self.assertTrue(line.startswith(tag + b" NO [" + code.encode() + b"]"), line)


class AppendFaultTests(DiskFaultTestCase):
    def test_disk_full_while_writing(self) -> None:
        """ENOSPC while the message is written: NO [OVERQUOTA] (RFC 5530 3),
        nothing left in tmp/ or cur/, and the next APPEND takes UID 1."""
        self.start_failing("append-writing:ENOSPC")
        client = self.login()
        self.append_refused(client, "full", "OVERQUOTA")
        self.assertEqual(self.files("tmp"), [])
        self.assertEqual(self.files("cur"), [])
        self.assertEqual(self.appenduid(client, "INBOX", "after"), 1)
        self.assertEqual(self.contents(client, "INBOX"), {1: ("after", r"\Recent")})

    def test_quota_exceeded_while_writing(self) -> None:
        """EDQUOT (a file-system quota) is a full disk too."""
        self.start_failing("append-writing:EDQUOT")
        client = self.login()
        self.append_refused(client, "full", "OVERQUOTA")
        self.assertEqual(self.files("tmp"), [])

    def test_io_error_while_writing(self) -> None:
        """EIO is no full disk: NO [SERVERBUG], and nothing stored."""
        self.start_failing("append-writing:EIO")
        client = self.login()
        self.append_refused(client, "broken", "SERVERBUG")
        self.assertEqual(self.files("tmp"), [])
        self.assertEqual(self.files("cur"), [])
        self.assertEqual(self.appenduid(client, "INBOX", "after"), 1)

    def test_failure_after_the_uid_is_taken(self) -> None:
        """The UID is in the UID list but the file never reaches cur/: the
        APPEND is refused, and that UID is never given to another message."""
        self.start_failing("append-allocated:ENOSPC")
        client = self.login()
        self.append_refused(client, "lost", "OVERQUOTA")
        self.assertEqual(self.files("tmp"), [])
        self.assertEqual(self.files("cur"), [])
        self.assertEqual(self.appenduid(client, "INBOX", "after"), 2)
        self.assertEqual(self.contents(client, "INBOX"), {2: ("after", r"\Recent")})


class TransferFaultTests(DiskFaultTestCase):
    def test_copy_fails_half_way(self) -> None:
        """The second copy cannot be placed: COPY answers NO and the first
        copy is taken back, so Archive holds nothing and INBOX is intact."""
        self.start_failing("copy-placing@1:EIO")
        client = self.login()
        client.create("Archive")
        self.appenduid(client, "INBOX", "one")
        self.appenduid(client, "INBOX", "two")
        before = {uid: subject for uid, (subject, _) in self.contents(client, "INBOX").items()}
        self.refused(client, "UID", "COPY", "1:2", "Archive", code="SERVERBUG")
        self.assertEqual(self.files("cur", ".Archive"), [])
        self.assertEqual(self.files("tmp", ".Archive"), [])
        after = {uid: subject for uid, (subject, _) in self.contents(client, "INBOX").items()}
        self.assertEqual(after, before)
        self.assertEqual(self.contents(client, "Archive"), {})

    def test_copy_disk_full(self) -> None:
        """ENOSPC while staging copies: NO [OVERQUOTA], nothing copied."""
        self.start_failing("copy-staged:ENOSPC")
        client = self.login()
        client.create("Archive")
        self.appenduid(client, "INBOX", "one")
        self.select(client, "INBOX")
        self.refused(client, "UID", "COPY", "1", "Archive", code="OVERQUOTA")
        self.assertEqual(self.files("tmp", ".Archive"), [])
        self.assertEqual(self.contents(client, "Archive"), {})


class DeliverFaultTests(DiskFaultTestCase):
    def deliver_failing(self, fail_at: str) -> tuple[int, bytes]:
        env = {**source_env(), "MAILSRV_FAIL_AT": fail_at}
        done = subprocess.run(
            [*mailsrv_command(), "deliver", "alice", "--config", self.config],
            input=message("mail"),
            capture_output=True,
            env=env,
            timeout=60,
            check=False,
        )
        return done.returncode, done.stderr

    def test_disk_full_is_a_temporary_failure(self) -> None:
        """The MTA keeps the message (EX_TEMPFAIL) and nothing is stored."""
        status, stderr = self.deliver_failing("append-writing:ENOSPC")
        self.assertEqual(status, 75, stderr)
        self.assertIn(b"disk space", stderr)
        for sub in ("tmp", "new", "cur"):
            self.assertEqual(self.files(sub), [], sub)

    def test_io_error_is_a_temporary_failure(self) -> None:
        status, stderr = self.deliver_failing("append-allocated:EIO")
        self.assertEqual(status, 75, stderr)
        for sub in ("tmp", "new", "cur"):
            self.assertEqual(self.files(sub), [], sub)
        delivered = self.run_mailsrv("deliver", "alice", stdin=message("again"))
        self.assertEqual(delivered.returncode, 0, delivered.stderr)
        self.start()
        client = self.login()
        self.assertEqual(self.contents(client, "INBOX"), {2: ("again", r"\Recent")})


class LmtpFaultTests(DiskFaultTestCase):
    def test_disk_full_is_452(self) -> None:
        """A full disk answers the recipient 452 4.3.1 (RFC 3463), so the
        MTA keeps the message queued; nothing is stored."""
        port = free_port()
        with open(self.config, "a") as handle:
            handle.write(f'[lmtp]\nlisten = ["tcp:{port}:interface=127.0.0.1"]\n')
        self.start_failing("append-writing:ENOSPC").wait_for("LMTP listening on tcp:")
        lmtp = smtplib.LMTP("127.0.0.1", port, timeout=30)
        self.addCleanup(lmtp.close)
        lmtp.ehlo("client.test")
        self.assertEqual(lmtp.mail("sender@example.net")[0], 250)
        self.assertEqual(lmtp.rcpt("alice")[0], 250)
        code, text = lmtp.data(message("mail"))
        self.assertEqual((code, text[:5]), (452, b"4.3.1"), text)
        for sub in ("tmp", "new", "cur"):
            self.assertEqual(self.files(sub), [], sub)


class ChangeFaultTests(DiskFaultTestCase):
    def names(self) -> list[str]:
        return self.files("cur")

    def test_store_fails_half_way(self) -> None:
        """The second rename fails: STORE answers NO and the first is taken
        back, so the files and FETCH FLAGS agree that nothing changed."""
        self.start_failing("store-renaming@1:EIO")
        client = self.login()
        self.appenduid(client, "INBOX", "one")
        self.appenduid(client, "INBOX", "two")
        self.select(client, "INBOX")
        self.refused(client, "UID", "STORE", "1:2", "+FLAGS", r"(\Flagged)", code="SERVERBUG")
        self.assertEqual([name for name in self.names() if "F" in name.split(":2,")[1]], [])
        status, data = client.uid("FETCH", "1:2", "FLAGS")
        self.assertEqual(status, "OK")
        self.assertNotIn(rb"\Flagged", b" ".join(d for d in data if isinstance(d, bytes)))
        # And the next STORE works.
        status, _ = client.uid("STORE", "1:2", "+FLAGS", r"(\Flagged)")
        self.assertEqual(status, "OK")
        self.assertEqual(len([n for n in self.names() if "F" in n.split(":2,")[1]]), 2)

    def test_expunge_fails_half_way(self) -> None:
        """The second unlink fails: EXPUNGE answers NO, but the message
        already removed is reported expunged, and only that one."""
        self.start_failing("expunge-unlinking@1:EIO")
        client = self.login()
        self.appenduid(client, "INBOX", "one")
        self.appenduid(client, "INBOX", "two")
        self.select(client, "INBOX")
        client.uid("STORE", "1:2", "+FLAGS", r"(\Deleted)")
        self.refused(client, "EXPUNGE", code="SERVERBUG")
        self.assertEqual(len(self.names()), 1)
        status, _ = client.noop()
        self.assertEqual(status, "OK")
        self.assertEqual(client.response("EXPUNGE")[1], [b"1"])
        self.assertEqual(self.contents(client, "INBOX"), {2: ("two", r"\Deleted")})
