"""``mailsrv migrate`` between Maildir and PostgreSQL, checked as a client
sees it: real daemons before and after, spoken to over IMAP and POP3.

The round trip Maildir -> PostgreSQL -> Maildir must keep, for every
mailbox, UIDVALIDITY, every UID, flags, keywords, INTERNALDATE and the
bodies byte for byte, plus special use, subscriptions and POP3 UIDLs; an
import killed half-way and run again must complete without a duplicate.
"""

from __future__ import annotations

import imaplib
import io
import os
import poplib
import re
import signal
import subprocess
import sys
import time
from typing import Any

from twisted.trial import unittest

from mailsrv import cli
from tests import pgcluster
from tests.helpers import Daemon, free_port, source_env

DEADLINE = 120.0
_FETCH = re.compile(rb"UID (\d+) FLAGS \(([^)]*)\) INTERNALDATE \"([^\"]+)\"")


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    status = cli.main(list(argv), stdin=io.StringIO(""), stdout=out, stderr=err)
    return status, out.getvalue(), err.getvalue()


def write_dovecot_inbox(
    root: str, messages: list[tuple[int, bytes, str]], uidls: dict[int, str]
) -> None:
    """A Maildir INBOX as Dovecot leaves it: files, and a dovecot-uidlist
    (UIDVALIDITY 1500000000, gaps in the UIDs, some carried POP3 UIDLs)."""
    for sub in ("cur", "new", "tmp"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    lines = []
    for uid, body, info in messages:
        base = f"{1600000000 + uid}.M{uid}P1.dovecot"
        with open(os.path.join(root, "cur", f"{base}:2,{info}"), "wb") as f:
            f.write(body)
        stamp = 1600000000 + uid * 3600
        os.utime(os.path.join(root, "cur", f"{base}:2,{info}"), (stamp, stamp))
        uidl = f" P{uidls[uid]}" if uid in uidls else ""
        lines.append(f"{uid}{uidl} :{base}\n")
    with open(os.path.join(root, "dovecot-uidlist"), "w") as f:
        f.write(f"3 V1500000000 N{max(m[0] for m in messages) + 5}\n" + "".join(lines))
    with open(os.path.join(root, "dovecot-keywords"), "w") as f:
        f.write("0 $Forwarded\n1 Project\n")


class MigrateTestCase(unittest.TestCase):
    def setUp(self) -> None:
        pgcluster.require()
        self.dsn = pgcluster.new_dsn()
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        with open(os.path.join(self.dir, "passwd"), "w") as f:
            f.write("alice:{PLAIN}secret\nbob:{PLAIN}secret\n")

    def config(self, backend: str, maildir: str) -> str:
        path = os.path.join(self.dir, f"{backend}-{os.path.basename(maildir)}.toml")
        with open(path, "w") as f:
            f.write(
                f'[users]\npasswd_file = "{self.dir}/passwd"\n[auth]\nfailure_delay = 0.0\n'
                f'[storage]\nbackend = "{backend}"\ndsn = "{self.dsn}"\n'
                f'maildir = "{self.dir}/{os.path.basename(maildir)}/{{user}}"\n'
            )
        return path

    def daemon(self, config: str) -> tuple[Daemon, int, int]:
        imap, pop3 = free_port(), free_port()
        daemon = Daemon.start(
            [
                "--config",
                config,
                "--imap",
                f"tcp:{imap}:interface=127.0.0.1",
                "--pop3",
                f"tcp:{pop3}:interface=127.0.0.1",
            ],
            cwd=self.dir,
        )
        self.addCleanup(daemon.stop)
        daemon.wait_for("listening on", count=2)
        return daemon, imap, pop3


def snapshot(imap_port: int, pop3_port: int, user: str = "alice") -> dict[str, Any]:
    """Everything a client sees of an account, over IMAP and POP3."""
    client = imaplib.IMAP4("127.0.0.1", imap_port)
    try:
        client.login(user, "secret")
        _typ, listed = client.list()
        mailboxes = {}
        uses = {}
        for line in listed:
            assert isinstance(line, bytes)
            match = re.match(rb'\(([^)]*)\) "[^"]*" (.+)$', line)
            assert match is not None, line
            attributes, name = match.group(1).split(), match.group(2).strip(b'"').decode()
            uses[name] = sorted(
                a.decode()
                for a in attributes
                if a.decode()
                in ("\\Archive", "\\Drafts", "\\Junk", "\\Sent", "\\Trash", "\\All", "\\Flagged")
            )
            if b"\\Noselect" in attributes:
                continue
            typ, data = client.select(f'"{name}"', readonly=True)
            assert typ == "OK", (name, data)
            uidvalidity = client.untagged_responses.get("UIDVALIDITY", [b"?"])[0]
            mailbox_id = client.untagged_responses.get("MAILBOXID", [b"?"])[0]
            messages = {}
            count = data[0]
            assert count is not None
            if int(count) > 0:
                _typ, fetched = client.uid("FETCH", "1:*", "(UID FLAGS INTERNALDATE BODY.PEEK[])")
                for item in fetched:
                    if not isinstance(item, tuple):
                        continue
                    head = _FETCH.search(item[0])
                    assert head is not None, item[0]
                    flags = sorted(f for f in head.group(2).decode().split() if f != "\\Recent")
                    messages[int(head.group(1))] = (flags, head.group(3).decode(), item[1])
            _typ, _keywords = client.response("FLAGS")
            mailboxes[name] = {
                "uidvalidity": uidvalidity,
                "mailbox_id": mailbox_id,
                "messages": messages,
            }
        _typ, subscribed = client.lsub()
        client.logout()
    finally:
        client.shutdown() if client.state != "LOGOUT" else None
    pop = poplib.POP3("127.0.0.1", pop3_port)
    try:
        pop.user(user)
        pop.pass_("secret")
        uidls = sorted(line.decode().split()[1] for line in pop.uidl()[1])
        pop.quit()
    finally:
        pop.close()
    return {
        "mailboxes": mailboxes,
        "special_use": uses,
        "subscribed": sorted(s for s in subscribed if s),
        "uidls": uidls,
    }


class RoundTripTests(MigrateTestCase):
    def test_maildir_to_postgresql_and_back(self) -> None:
        bodies = [
            (1, b"Subject: one\r\n\r\nfirst\r\n", "S"),
            (3, b"Subject: three\nBare LF lines\n\nstay as they are\n", "Sa"),
            (7, b"Subject: seven\r\n\r\n" + bytes(range(256)) * 40 + b"\r\n", "FRb"),
            (9, b"Subject: nine\nBare LF lines\n\nkept\n", "ab"),
        ]
        write_dovecot_inbox(
            os.path.join(self.dir, "source", "alice"), bodies, {1: "old-uidl-1", 7: "old-uidl-7"}
        )
        source = self.config("maildir", "source")
        daemon, imap, pop3 = self.daemon(source)
        # Changes made through mailsrv on top of what it adopted.
        client = imaplib.IMAP4("127.0.0.1", imap)
        client.login("alice", "secret")
        self.assertEqual(client.create('"Archive/2020"')[0], "OK")
        client._simple_command("CREATE", '"Receipts" (USE (\\Archive))')
        client.subscribe('"Archive/2020"')
        client.append(
            '"Archive/2020"',
            "(\\Draft Later $Junk)",
            '"02-Mar-2021 10:11:12 +0100"',
            b"Subject: archived\r\n\r\nold\r\n",
        )
        client.select("INBOX")
        client.uid("STORE", "3", "+FLAGS", "(\\Deleted Important)")
        client.expunge()
        client.logout()
        before = snapshot(imap, pop3)
        self.assertEqual(sorted(before["mailboxes"]["INBOX"]["messages"]), [1, 7, 9])
        self.assertIn("old-uidl-7", before["uidls"])
        daemon.stop()

        # Maildir -> PostgreSQL, then the verify pass.
        status, _out, err = run_cli(
            "migrate",
            "--config",
            source,
            "--from",
            "maildir",
            "--to",
            "postgresql",
            "--user",
            "alice",
        )
        self.assertEqual(status, 0, err)
        self.assertRegex(err, r"alice: \d+ mailboxes, 4 messages \(0 already there\)")
        self.assertIn("migrated 1 of 1 users, 4 messages", err)
        status, _out, err = run_cli(
            "migrate",
            "--config",
            source,
            "--from",
            "maildir",
            "--to",
            "postgresql",
            "--user",
            "alice",
            "--verify",
        )
        self.assertEqual(status, 0, err)
        _daemon, imap, pop3 = self.daemon(self.config("postgresql", "source"))
        in_database = snapshot(imap, pop3)
        self.assertEqual(in_database, before)
        _daemon.stop()

        # PostgreSQL -> a new Maildir tree, adopted by the Maildir backend.
        target = self.config("maildir", "target")
        status, _out, err = run_cli(
            "migrate",
            "--config",
            target,
            "--from",
            "postgresql",
            "--to",
            "maildir",
            "--user",
            "alice",
        )
        self.assertEqual(status, 0, err)
        status, _out, err = run_cli(
            "migrate",
            "--config",
            target,
            "--from",
            "postgresql",
            "--to",
            "maildir",
            "--user",
            "alice",
            "--verify",
        )
        self.assertEqual(status, 0, err)
        _daemon, imap, pop3 = self.daemon(target)
        self.assertEqual(snapshot(imap, pop3), before)

    def test_differences_and_errors(self) -> None:
        write_dovecot_inbox(
            os.path.join(self.dir, "source", "alice"), [(2, b"Subject: x\r\n\r\ny\r\n", "")], {}
        )
        source = self.config("maildir", "source")
        self.assertEqual(
            run_cli(
                "migrate",
                "--config",
                source,
                "--from",
                "maildir",
                "--to",
                "postgresql",
                "--user",
                "alice",
            )[0],
            0,
        )
        import psycopg

        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute("UPDATE messages SET flags = 1")
        status, _out, err = run_cli(
            "migrate",
            "--config",
            source,
            "--from",
            "maildir",
            "--to",
            "postgresql",
            "--user",
            "alice",
            "--verify",
        )
        self.assertEqual(status, cli.EX_DATAERR)
        self.assertIn("INBOX UID 2: flags [] != ['\\\\Seen']", err)
        # bob has no Maildir: that user fails, the others go on; exit 73.
        status, _out, err = run_cli(
            "migrate", "--config", source, "--from", "maildir", "--to", "postgresql"
        )
        self.assertEqual(status, cli.EX_CANTCREAT)
        self.assertIn("bob: FAILED: no Maildir at", err)
        self.assertEqual(
            run_cli(
                "migrate",
                "--config",
                source,
                "--from",
                "maildir",
                "--to",
                "postgresql",
                "--user",
                "carol",
            )[0],
            cli.EX_NOUSER,
        )


class InterruptedTests(MigrateTestCase):
    def test_killed_import_resumes_without_duplicates(self) -> None:
        count = 1500
        root = os.path.join(self.dir, "source", "alice")
        write_dovecot_inbox(
            root,
            [
                (uid, b"Subject: %d\r\n\r\n%s\r\n" % (uid, b"x" * (uid % 700)), "S")
                for uid in range(1, count + 1)
            ],
            {},
        )
        source = self.config("maildir", "source")
        command = [
            sys.executable,
            "-m",
            "mailsrv.cli",
            "migrate",
            "--config",
            source,
            "--from",
            "maildir",
            "--to",
            "postgresql",
        ]
        process = subprocess.Popen(
            command,
            env=source_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        import psycopg

        def stored() -> int:
            with psycopg.connect(self.dsn, autocommit=True) as conn:
                row = conn.execute("SELECT count(*) FROM messages").fetchone()
                assert row is not None
                return int(row[0])

        give_up = time.monotonic() + DEADLINE
        while stored() == 0:
            self.assertIsNone(process.poll(), "the import ended before it could be killed")
            self.assertLess(time.monotonic(), give_up)
            time.sleep(0.005)
        process.send_signal(signal.SIGKILL)
        process.communicate()
        partial = stored()
        self.assertLess(partial, count, "killed too late to test anything")
        status, _out, err = run_cli(
            "migrate",
            "--config",
            source,
            "--from",
            "maildir",
            "--to",
            "postgresql",
            "--user",
            "alice",
        )
        self.assertEqual(status, 0, err)
        self.assertIn(f"({partial} already there)", err)
        self.assertEqual(stored(), count)
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            orphans = conn.execute(
                "SELECT b.digest FROM blobs b LEFT JOIN messages m ON m.digest = b.digest "
                "GROUP BY b.digest, b.refcount HAVING b.refcount <> count(m.digest)"
            ).fetchall()
            counters = conn.execute(
                "SELECT messages, unseen, size = (SELECT sum(size) FROM messages) FROM mailboxes "
                "WHERE name = 'INBOX'"
            ).fetchone()
        self.assertEqual(orphans, [])
        self.assertEqual(counters, (count, 0, True))
        status, _out, err = run_cli(
            "migrate", "--config", source, "--from", "maildir", "--to", "postgresql", "--verify"
        )
        self.assertEqual(status, cli.EX_CANTCREAT)  # bob has no Maildir
        self.assertIn("verified 1 of 2 users", err)


class ProgressTests(unittest.TestCase):
    """What an operator sees: a status line redrawn on a terminal, one line
    per user and a summary everywhere."""

    def test_terminal_and_log(self) -> None:
        from mailsrv.migrate import Progress, UserOutcome

        done = UserOutcome("alice", mailboxes=3, messages=100, octets=2_500_000, seconds=0.5)
        failed = UserOutcome("bob", error="no Maildir at /srv/bob")
        for tty in (True, False):
            out = io.StringIO()
            progress = Progress(out, tty=tty)
            progress.update("alice", "INBOX", 100, 100, 650.0)
            progress.user_done(done)
            progress.user_done(failed)
            progress.summary([done, failed], verifying=False)
            text = out.getvalue()
            self.assertEqual("\ralice: INBOX 100/100 messages, 650 msg/s" in text, tty)
            self.assertIn(
                "alice: 3 mailboxes, 100 messages (0 already there), 2.5 MB in 0.5 s (200 msg/s)\n",
                text,
            )
            self.assertIn("bob: FAILED: no Maildir at /srv/bob\n", text)
            self.assertIn("migrated 1 of 2 users, 100 messages in", text)
            self.assertTrue(text.endswith("1 failed, 0 with differences\n"), text)
