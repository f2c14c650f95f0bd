"""The model-checking stress client's short form (tests/stress/client.py):
concurrent IMAP sessions and outside deliveries on shared mailboxes of a
real daemon, every response checked by the model; a fixed seed, so a
failure can be replayed."""

from __future__ import annotations

import os
import socket

from twisted.trial import unittest

from tests.helpers import Daemon, free_port
from tests.stress.client import Model, Session, make_config, run, wait_all


class StressTests(unittest.TestCase):
    def test_concurrent_sessions_agree_with_the_model(self) -> None:
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        port = free_port()
        config = make_config(directory, port)
        daemon = Daemon.start(["--config", config], cwd=directory)
        self.addCleanup(daemon.stop)
        daemon.wait_for("listening on")
        model = run(port, config, clients=4, rounds=150, seconds=None, seed=17)
        self.assertEqual(model.violations, [])
        # It did exercise the server: messages given UIDs in both mailboxes.
        self.assertGreater(model.commands, 300)
        self.assertTrue(model.given.get("INBOX") and model.given.get("Archive"), model.given)


class ModelTests(unittest.SynchronousTestCase):
    """The model catches what it is there to catch: server output written
    by hand, read by a Session over a socket pair."""

    def session(self, model: Model, name: str = "s0") -> tuple[Session, socket.socket]:
        ours, theirs = socket.socketpair()
        self.addCleanup(ours.close)
        self.addCleanup(theirs.close)
        return Session(name, ours, model, "INBOX"), theirs

    def answer(self, session: Session, server: socket.socket, name: str, output: bytes) -> None:
        """``output`` (untagged lines) and OK, as the answer to ``name``."""
        tag = session.send(name, b"NOOP")
        server.recv(1000)
        server.sendall(output + tag.encode() + b" OK done\r\n")
        wait_all([session])

    def selected(self, model: Model, name: str = "s0") -> tuple[Session, socket.socket]:
        session, server = self.session(model, name)
        self.answer(
            session,
            server,
            "SELECT",
            b"* FLAGS (\\Seen $k1)\r\n* 2 EXISTS\r\n"
            b"* 1 FETCH (UID 5 FLAGS (\\Seen))\r\n* 2 FETCH (UID 9 FLAGS ())\r\n",
        )
        self.assertEqual((session.view, model.violations), ([5, 9], []))
        return session, server

    def test_a_valid_exchange(self) -> None:
        model = Model()
        session, server = self.selected(model)
        self.answer(session, server, "EXPUNGE", b"* 1 EXPUNGE\r\n* 2 EXISTS\r\n")
        self.answer(session, server, "UID FETCH", b"* 2 FETCH (UID 10 FLAGS ($k1))\r\n")
        self.assertEqual((session.view, model.violations), ([9, 10], []))

    def test_violations(self) -> None:
        for name, output, found in (
            ("FETCH", b"* 1 EXPUNGE\r\n", "EXPUNGE during FETCH"),
            ("NOOP", b"* 1 EXISTS\r\n", "EXISTS went down"),
            ("NOOP", b"* 3 EXPUNGE\r\n", "EXPUNGE of 3 of 2"),
            ("NOOP", b"* 1 FETCH (UID 6 FLAGS ())\r\n", "was UID 5, now 6"),
            ("NOOP", b"* 3 EXISTS\r\n* 3 FETCH (UID 7)\r\n", "out of order"),
            ("NOOP", b"* 3 FETCH (FLAGS ())\r\n", "beyond EXISTS"),
            ("NOOP", b"* 1 FETCH (FLAGS (\\Seen $new))\r\n", "$new used before FLAGS"),
            ("SEARCH", b"* SEARCH 1 3\r\n", "SEARCH names a message beyond"),
        ):
            model = Model()
            session, server = self.selected(model)
            self.answer(session, server, name, output)
            self.assertEqual(len(model.violations), 1, (output, model.violations))
            self.assertIn(found, model.violations[0])

    def test_recent_in_two_sessions(self) -> None:
        model = Model()
        first, first_server = self.selected(model, "s0")
        second, second_server = self.selected(model, "s1")
        self.answer(first, first_server, "NOOP", b"* 2 FETCH (FLAGS (\\Recent))\r\n")
        self.answer(second, second_server, "NOOP", b"* 2 FETCH (FLAGS (\\Recent))\r\n")
        self.assertEqual(len(model.violations), 1, model.violations)
        self.assertIn("\\Recent in s0", model.violations[0])

    def test_uid_given_twice_and_body_changed(self) -> None:
        model = Model()
        model.give("s0", "INBOX", 4, "aaaa")
        model.give("s1", "INBOX", 4, "bbbb")
        self.assertEqual(len(model.violations), 2, model.violations)

    def test_uidnext_going_back(self) -> None:
        model = Model()
        session, server = self.selected(model)
        self.answer(session, server, "STATUS", b'* STATUS "Archive" (UIDNEXT 9)\r\n')
        self.answer(session, server, "STATUS", b'* STATUS "Archive" (UIDNEXT 8)\r\n')
        self.assertEqual(len(model.violations), 1, model.violations)
