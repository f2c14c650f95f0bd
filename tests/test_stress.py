"""The model-checking stress client's short form (tests/stress/client.py):
concurrent IMAP sessions and outside deliveries on shared mailboxes of a
real daemon, every response checked by the model; a fixed seed, so a
failure can be replayed."""

from __future__ import annotations

import os
import random
import socket
import threading

from twisted.trial import unittest

from tests.helpers import Daemon, free_port
from tests.stress.client import Model, Session, digest, make_config, run, wait_all
from tests.stress.pop3 import visit


class StressTests(unittest.TestCase):
    def test_concurrent_sessions_agree_with_the_model(self) -> None:
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        port, pop3_port = free_port(), free_port()
        config = make_config(directory, port, pop3_port)
        daemon = Daemon.start(["--config", config], cwd=directory)
        self.addCleanup(daemon.stop)
        daemon.wait_for("listening on")
        model = run(port, config, clients=4, rounds=150, seconds=None, seed=17, pop3_port=pop3_port)
        self.assertEqual(model.violations, [])
        # It did exercise the server: messages given UIDs in both mailboxes,
        # IDLE, POP3 (messages retrieved and deleted), MODSEQs seen.
        self.assertGreater(model.commands, 300)
        self.assertTrue(model.given.get("INBOX") and model.given.get("Archive"), model.given)
        for kind in ("IDLE", "POP3 RETR", "POP3 DELE", "deliver"):
            self.assertGreater(model.counts.get(kind, 0), 0, (kind, model.counts))
        self.assertTrue(model.pop3_deleted and model.uidls, model.counts)
        self.assertGreater(model.modseq_seen.get("INBOX", 0), 0)


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

    def test_modseq_going_back_or_standing_still(self) -> None:
        for output, found in (
            (b"* 1 FETCH (UID 5 FLAGS (\\Seen) MODSEQ (6))\r\n", "went back from 7"),
            (b"* 1 FETCH (UID 5 FLAGS () MODSEQ (7))\r\n", "changed, MODSEQ 7 kept"),
        ):
            model = Model()
            session, server = self.selected(model)
            self.answer(session, server, "NOOP", b"* 1 FETCH (UID 5 FLAGS (\\Seen) MODSEQ (7))\r\n")
            self.answer(session, server, "UID STORE", output)
            self.assertEqual(len(model.violations), 1, (output, model.violations))
            self.assertIn(found, model.violations[0])

    def test_highestmodseq_going_back(self) -> None:
        model = Model()
        session, server = self.selected(model)
        self.answer(session, server, "NOOP", b"* 1 FETCH (UID 5 MODSEQ (30))\r\n")
        model.new_round()
        self.answer(session, server, "NOOP", b"* OK [HIGHESTMODSEQ 40] now\r\n")
        self.assertEqual(model.violations, [])
        self.answer(session, server, "NOOP", b"* OK [HIGHESTMODSEQ 39] now\r\n")
        # STATUS speaks for the mailbox: not below a MODSEQ seen before.
        self.answer(session, server, "STATUS", b'* STATUS "INBOX" (HIGHESTMODSEQ 41)\r\n')
        self.answer(session, server, "STATUS", b'* STATUS "Archive" (HIGHESTMODSEQ 3)\r\n')
        model.modseq_floor["Archive"] = 9
        self.answer(session, server, "STATUS", b'* STATUS "Archive" (HIGHESTMODSEQ 5)\r\n')
        self.assertEqual(len(model.violations), 2, model.violations)
        self.assertIn("HIGHESTMODSEQ of INBOX went back", model.violations[0])
        self.assertIn("below the MODSEQ 9", model.violations[1])

    def test_idle_view_checked_at_done(self) -> None:
        """What IDLE pushed is checked against a FETCH of every message
        after DONE: a message it never said was expunged, a flag change it
        never pushed."""
        model = Model()
        session, server = self.selected(model)
        tag = session.send("IDLE", b"IDLE")
        server.recv(1000)
        server.sendall(b"+ idling\r\n* 1 FETCH (FLAGS ($k1))\r\n")
        self.assertEqual(wait_all([session])[session].kind, "+")
        session.idling = True
        session.drain()
        fetch = f"s0.{session.tag_number + 1}".encode()
        server.sendall(
            tag.encode() + b" OK IDLE done\r\n"
            b"* 1 FETCH (UID 5 FLAGS (\\Seen))\r\n" + fetch + b" OK done\r\n"
        )
        session.end_idle()
        self.assertEqual(len(model.violations), 2, model.violations)
        self.assertIn("after IDLE, messages [2] of 2 are gone", model.violations[0])
        self.assertIn("UID 5 has ['\\\\Seen'], IDLE said ['$k1']", model.violations[1])

    def test_uidnext_going_back(self) -> None:
        model = Model()
        session, server = self.selected(model)
        self.answer(session, server, "STATUS", b'* STATUS "Archive" (UIDNEXT 9)\r\n')
        self.answer(session, server, "STATUS", b'* STATUS "Archive" (UIDNEXT 8)\r\n')
        self.assertEqual(len(model.violations), 1, model.violations)


class Pop3ModelTests(unittest.SynchronousTestCase):
    """The POP3 visit's checks, against a scripted server on a socket."""

    def serve(self, retr: bytes, size: int) -> int:
        """A one-connection POP3 server in a thread: one message, UIDL
        ``0000000500000007`` (UID 5, UIDVALIDITY 7), LIST saying ``size``
        and RETR giving ``retr``; the port."""
        listener = socket.create_server(("127.0.0.1", 0))
        self.addCleanup(listener.close)

        def run() -> None:
            conn, _ = listener.accept()
            with conn, conn.makefile("rb") as lines:
                conn.sendall(b"+OK ready\r\n")
                for line in lines:
                    word = line.split()[0].upper()
                    if word == b"LIST":
                        conn.sendall(b"+OK\r\n1 %d\r\n.\r\n" % size)
                    elif word == b"UIDL":
                        conn.sendall(b"+OK\r\n1 0000000500000007\r\n.\r\n")
                    elif word == b"RETR":
                        conn.sendall(b"+OK\r\n" + retr + b".\r\n")
                    else:
                        conn.sendall(b"+OK\r\n")
                    if word == b"QUIT":
                        return

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        self.addCleanup(thread.join, 10)
        return int(listener.getsockname()[1])

    def test_retr_checked_against_list_and_imap(self) -> None:
        body = b"Subject: x\r\n\r\n..dot-stuffed\r\n"
        model = Model()
        model.body("s0", "INBOX", 5, digest(b"Subject: x\r\n\r\n.dot-stuffed\r\n"))
        visit(self.serve(body, 28), model, random.Random(1))
        self.assertEqual(model.violations, [])
        self.assertEqual(model.uidls, {"0000000500000007": model.bodies[("INBOX", 5)]})

    def test_violations(self) -> None:
        model = Model()
        model.body("s0", "INBOX", 5, digest(b"another message\r\n"))
        model.uidls["0000000500000007"] = "0" * 16
        model.pop3_uidvalidity = 6
        visit(self.serve(b"Subject: x\r\n\r\nbody\r\n", 99), model, random.Random(1))
        found = "\n".join(model.violations)
        for what in (
            "gave 20 octets, LIST said 99",
            "UIDL 0000000500000007 named another message before",
            "body of UID 5 in INBOX changed",
            "UIDLs of several UIDVALIDITYs: [6, 7]",
        ):
            self.assertIn(what, found)
