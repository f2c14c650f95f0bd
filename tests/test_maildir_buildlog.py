"""A long index build shows in the daemon's log: when it starts, how far it
has got every few seconds, and when it ends, both for the folder's index
(a first open of a big Maildir) and for its full-text index."""

# mypy: allow-untyped-calls

from __future__ import annotations

import imaplib
import io
import os

from twisted.logger import formatEvent
from twisted.trial import unittest

from mailsrv import cli
from mailsrv.storage.maildir import buildlog
from mailsrv.storage.maildir.buildlog import BuildLog
from tests.helpers import Daemon, daemon_config, free_port, log_events, loopback


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class BuildLogTests(unittest.SynchronousTestCase):
    def setUp(self) -> None:
        self.events = log_events(self)
        self.clock = Clock()

    def test_a_long_build_starts_advances_and_ends(self) -> None:
        build = BuildLog("index of", "/m/Maildir", 5000, "files", clock=self.clock)
        build.step(10)  # within the first interval: nothing
        self.clock.now += buildlog.INTERVAL
        build.step(2500)
        self.clock.now += 1
        build.step(2600)  # the next line waits for another interval
        self.clock.now += buildlog.INTERVAL
        build.step(4000)
        build.finished(5000)
        self.assertEqual(
            [formatEvent(e) for e in self.events],
            [
                "index of /m/Maildir: 5000 files to index",
                "index of /m/Maildir: 2500 of 5000 files indexed (50%), 10 s so far",
                "index of /m/Maildir: 4000 of 5000 files indexed (80%), 21 s so far",
                "index of /m/Maildir: 5000 files indexed in 21.0 s",
            ],
        )

    def test_a_short_build_says_nothing(self) -> None:
        build = BuildLog("index of", "/m/Maildir", buildlog.LOGGED - 1, "files", clock=self.clock)
        self.clock.now += buildlog.INTERVAL * 3
        build.step(500)
        build.finished(buildlog.LOGGED - 1)
        self.assertEqual(self.events, [])


class DaemonBuildTests(unittest.TestCase):
    """A Maildir delivered by another program (1,200 files in cur/, no index)
    opened by a real daemon: its log tells the operator about both builds."""

    COUNT = 1200

    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.port = free_port()
        self.config = daemon_config(self.dir, {"imap": {"listen": loopback(self.port)}})
        cwd = os.getcwd()
        os.chdir(self.dir)
        try:
            status = cli.main(
                ["user", "add", "alice", "--config", self.config, "--password-stdin"],
                stdin=io.StringIO("pw\n"),
                stdout=io.StringIO(),
            )
        finally:
            os.chdir(cwd)
        self.assertEqual(status, 0)
        self.maildir = os.path.join(self.dir, "mail", "alice", "Maildir")
        for sub in ("cur", "new", "tmp"):
            os.makedirs(os.path.join(self.maildir, sub), exist_ok=True)
        for n in range(self.COUNT):
            name = os.path.join(self.maildir, "cur", f"1700000000.M{n}P1.host:2,S")
            with open(name, "wb") as handle:
                handle.write(b"Subject: note %d\r\n\r\nthe bandicoot number %d\r\n" % (n, n))

    def test_builds_are_logged(self) -> None:
        daemon = Daemon.start(["--config", self.config], cwd=self.dir)
        self.addCleanup(daemon.stop)
        daemon.wait_for("listening on")
        client = imaplib.IMAP4("127.0.0.1", self.port, timeout=60)
        self.addCleanup(client.socket().close)
        client.login("alice", "pw")
        status, data = client.select("INBOX")
        self.assertEqual((status, data), ("OK", [str(self.COUNT).encode()]))
        daemon.wait_for(f"index of {self.maildir}: {self.COUNT} files to index")
        daemon.wait_for(f"index of {self.maildir}: {self.COUNT} files indexed in")
        # The first text search builds the full-text index, in the background.
        status, data = client.search(None, "BODY", "bandicoot")
        self.assertEqual(status, "OK")
        found = data[0]
        assert isinstance(found, bytes)
        self.assertEqual(len(found.split()), self.COUNT)
        fulltext = os.path.join(self.maildir, "mailsrv-fulltext.sqlite")
        daemon.wait_for(f"full-text index {fulltext}: {self.COUNT} messages to index")
        daemon.wait_for(f"full-text index {fulltext}: {self.COUNT} messages indexed in")
        client.logout()
