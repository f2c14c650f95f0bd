"""The bound on client-named cache kinds (``[limits] max_cache_kinds``).

Every distinct HEADER.FIELDS set a client FETCHes and every field it
SEARCHes is cached under a kind of its own, for every message, outside the
user's quota.  A folder's index keeps at most ``max_cache_kinds`` such
kinds: storing a new one past that drops the least recently used one's
values (built-in kinds are never counted nor dropped), and answers stay
right.
"""

from __future__ import annotations

import imaplib
import io
import os
import sqlite3

from twisted.trial import unittest

from mailsrv import cli
from mailsrv.config import ConfigError, load_config
from mailsrv.storage.maildir import MaildirMailbox
from tests.helpers import Daemon, daemon_config, free_port, loopback
from tests.maildir_case import MESSAGE, MaildirTestCase


def _kinds(path: str) -> tuple[set[str], int]:
    """The client-named kinds with values in an index file, and its cache rows."""
    db = sqlite3.connect(path)
    try:
        kinds = {k for (k,) in db.execute("SELECT DISTINCT kind FROM cache") if ":" in k}
        (rows,) = db.execute("SELECT count(*) FROM cache").fetchone()
        return kinds, int(rows)
    finally:
        db.close()


class LeastRecentlyUsedTests(MaildirTestCase):
    def filled(self, cap: int) -> tuple[MaildirMailbox, list[int]]:
        inbox = self.inbox()
        inbox.cache_kinds = cap
        uids = [inbox.append(io.BytesIO(MESSAGE + str(i).encode())) for i in range(3)]
        return inbox, uids

    def index(self) -> str:
        return os.path.join(self.root, "mailsrv-index.sqlite")

    def test_least_recently_used_kind_goes(self) -> None:
        inbox, uids = self.filled(3)
        for name in ("fields:A", "fields:B", "fields:C"):
            inbox.set_cached_many(name, {uid: name.encode() for uid in uids})
        inbox.set_cached_many("structure", {uids[0]: b"s"})  # built in: not counted
        self.assertEqual(inbox.get_cached_many(uids, "fields:A"), {u: b"fields:A" for u in uids})
        inbox.set_cached_many("fields:D", {uids[0]: b"d"})
        kinds, _ = _kinds(self.index())
        # B was used least recently (A was read since).
        self.assertEqual(kinds, {"fields:A", "fields:C", "fields:D"})
        self.assertEqual(inbox.get_cached_many(uids, "fields:B"), {})
        self.assertEqual(inbox.get_cached(uids[0], "structure"), b"s")
        for number in range(10):
            inbox.set_cached_many(f"values:X{number}", {uids[1]: b"x"})
        kinds, _ = _kinds(self.index())
        self.assertEqual(kinds, {"values:X7", "values:X8", "values:X9"})
        self.assertEqual(inbox.get_cached(uids[0], "structure"), b"s")

    def test_schema_3_upgrade_counts_the_kinds_cached_and_indexes_flags(self) -> None:
        inbox, uids = self.filled(2)
        for name in ("fields:A", "fields:B", "fields:C"):
            inbox.set_cached_many(name, {uids[0]: b"v"})
        del inbox
        db = sqlite3.connect(self.index())
        db.execute("DROP TABLE cache_kinds")
        for name in ("seen", "flagged", "answered", "deleted", "draft"):
            db.execute(f"DROP INDEX messages_{name}")
        db.execute("INSERT INTO cache VALUES (?, 'fields:E', x'00')", (uids[1],))
        db.execute("UPDATE meta SET value = 3 WHERE key = 'schema'")
        db.commit()
        db.close()
        inbox = self.inbox()
        inbox.cache_kinds = 2
        inbox.set_cached_many("fields:F", {uids[0]: b"f"})
        kinds, _ = _kinds(self.index())
        self.assertEqual(len(kinds), 2)
        self.assertIn("fields:F", kinds)
        db = sqlite3.connect(self.index())
        self.addCleanup(db.close)
        indexes = {n for (n,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        self.assertLessEqual({"messages_seen", "messages_flagged", "messages_deleted"}, indexes)


class ConfigTests(unittest.SynchronousTestCase):
    def test_limit_read_and_checked(self) -> None:
        path = self.mktemp()
        with open(path, "w") as handle:
            handle.write("[limits]\nmax_cache_kinds = 7\n")
        config = load_config(path, check_files=False, require_listeners=False)
        self.assertEqual(config.limits.max_cache_kinds, 7)
        with open(path, "w") as handle:
            handle.write("[limits]\nmax_cache_kinds = 0\n")
        with self.assertRaises(ConfigError) as caught:
            load_config(path, check_files=False, require_listeners=False)
        self.assertIn(path, str(caught.exception))
        self.assertIn("limits.max_cache_kinds", str(caught.exception))


class CapOverSocketTests(unittest.TestCase):
    """A client FETCHing and SEARCHing ever new field names through the
    daemon: the index keeps ``max_cache_kinds`` client-named kinds, and
    every answer is still right."""

    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.port = free_port()
        self.config = daemon_config(
            self.dir,
            {"imap": {"listen": loopback(self.port)}, "limits": {"max_cache_kinds": 4}},
        )
        status = cli.main(
            ["user", "add", "alice", "--config", self.config, "--password-stdin"],
            stdin=io.StringIO("pw\n"),
            stdout=io.StringIO(),
        )
        self.assertEqual(status, 0)
        self.daemon = Daemon.start(["--config", self.config], cwd=self.dir)
        self.addCleanup(self.daemon.stop)
        self.daemon.wait_for("listening on")

    def test_many_field_sets_keep_the_index_bounded(self) -> None:
        imap = imaplib.IMAP4("127.0.0.1", self.port, timeout=60)
        self.addCleanup(imap.logout)
        imap.login("alice", "pw")
        for number in range(5):
            headers = "".join(f"X-F{i}: v{i}-{number}\r\n" for i in range(20))
            message = f"From: a@example.org\r\n{headers}Subject: m{number}\r\n\r\nbody\r\n"
            self.assertEqual(imap.append("INBOX", "", None, message.encode())[0], "OK")
        imap.select("INBOX")
        for i in range(20):
            status, data = imap.fetch("1:*", f"(BODY.PEEK[HEADER.FIELDS (X-F{i})])")
            self.assertEqual(status, "OK")
            values = [part[1] for part in data if isinstance(part, tuple)]
            self.assertEqual(values, [f"X-F{i}: v{i}-{n}\r\n\r\n".encode() for n in range(5)])
            status, found = imap.search(None, "HEADER", f"X-F{i}", f"v{i}-3")
            self.assertEqual((status, found), ("OK", [b"4"]))
        # A field set dropped long ago is answered right again.
        status, data = imap.fetch("2", "(BODY.PEEK[HEADER.FIELDS (X-F0)])")
        self.assertEqual(data[0][1], b"X-F0: v0-1\r\n\r\n")  # type: ignore[index]
        index = os.path.join(self.dir, "mail", "alice", "Maildir", "mailsrv-index.sqlite")
        kinds, rows = _kinds(index)
        self.assertEqual(len(kinds), 4, kinds)
        # 5 messages: the 4 client-named kinds, and the built-in ones
        # (structure, envelope...) at most a few more per message.
        self.assertLessEqual(rows, 5 * (4 + 6), rows)
