"""The IMAP session's dispatch: every command in every state, whatever a
command's parser, handler or SASL mechanism raises ends in a tagged answer,
and random or mangled input never breaks a session."""

from __future__ import annotations

import io
import random
import re
from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from mailsrv.auth import sasl
from mailsrv.errors import TemporaryFailure
from mailsrv.imap.commands import REGISTRY
from mailsrv.imap.lexer import Reader
from mailsrv.imap.protocol import IMAP4Server
from mailsrv.imap.registry import (
    ANY,
    NOT_OFFERED,
    Command,
    CommandSpec,
    Registry,
    Simple,
    no_arguments,
)
from mailsrv.policy import SessionPolicy
from mailsrv.storage.memory import MemoryMailbox, MemoryStorage
from tests.helpers import LaterLimits, at_once
from tests.imap_helpers import ServerTestBase, bare_storage, in_process, slow_next_select


def _broken_parser(reader: Reader, tag: str, name: str, uid: bool) -> Command:
    raise TypeError("a bug in a parser")


def _broken_handler(session: Any, command: Simple) -> Any:
    raise TypeError("a bug in a handler")


class RegistryTests(SynchronousTestCase):
    """What the declarations make of a new command, and what they refuse."""

    def test_a_declared_command_is_offered_with_its_capability(self) -> None:
        registry = Registry(
            [*REGISTRY, CommandSpec("XTHING", no_arguments, _broken_handler, ANY, capability="X")]
        )
        server, transport = in_process()
        server.session.registry = registry
        server.dataReceived(b"a CAPABILITY\r\n")
        # Listed after the capabilities clients have always seen.
        self.assertIn(b" AUTH=LOGIN X\r\na OK CAPABILITY completed\r\n", transport.value())
        spec, command = registry.parse([b"t xthing"])
        self.assertEqual((spec.key, command), ("XTHING", Simple("t", "XTHING")))

    def test_a_command_declared_twice_is_refused(self) -> None:
        fetch = next(spec for spec in REGISTRY if spec.key == "FETCH")
        self.assertRaises(ValueError, Registry, [*REGISTRY, fetch])

    def test_no_offered_command_is_called_not_offered(self) -> None:
        offered = {spec.key for spec in REGISTRY}
        self.assertEqual(offered & set(NOT_OFFERED), set())


class UnexpectedErrorTests(SynchronousTestCase):
    def connect(self) -> tuple[IMAP4Server, StringTransport]:
        storage = MemoryStorage()
        storage.deliver("joe", b"Subject: hi\r\n\r\nhello\r\n")
        server, transport = in_process(storage)
        server.session.registry = Registry(
            [
                *REGISTRY,
                CommandSpec("XPARSE", _broken_parser, _broken_handler, ANY),
                CommandSpec("XHANDLE", no_arguments, _broken_handler, ANY),
                CommandSpec("XFETCH", no_arguments, _broken_handler, ANY, names_messages=True),
            ]
        )
        return server, transport

    def test_a_parser_bug_is_bad_and_logged(self) -> None:
        server, transport = self.connect()
        server.dataReceived(b"a XPARSE x\r\nb NOOP\r\n")
        self.assertEqual(
            transport.value(),
            b"a BAD malformed command (TypeError)\r\nb OK NOOP completed\r\n",
        )
        self.assertEqual(len(self.flushLoggedErrors(TypeError)), 1)

    def test_a_handler_bug_is_serverbug_and_logged(self) -> None:
        server, transport = self.connect()
        server.dataReceived(b"L LOGIN joe secret\r\nS SELECT INBOX\r\n")
        # Mail arrives, so the command that names messages flushes first.
        inbox = at_once(server.session.logged_in_account().get_mailbox("INBOX"))
        inbox.append(io.BytesIO(b"Subject: more\r\n\r\n"))
        transport.clear()
        server.dataReceived(b"a XFETCH\r\nb XHANDLE\r\nc NOOP\r\n")
        self.assertEqual(
            transport.value(),
            b"* 2 EXISTS\r\n* 2 RECENT\r\n"
            b"a NO [SERVERBUG] Internal server error\r\n"
            b"b NO [SERVERBUG] Internal server error\r\n"
            b"c OK NOOP completed\r\n",
        )
        self.assertEqual(len(self.flushLoggedErrors(TypeError)), 2)

    def test_a_sasl_mechanism_bug_is_serverbug(self) -> None:
        class Broken:
            name = "PLAIN"

            def start(self, initial: bytes | None) -> sasl.Step:
                return sasl.Challenge(b"")

            def respond(self, data: bytes) -> sasl.Step:
                raise TypeError("a bug in a mechanism")

        self.patch(sasl, "create", lambda name, hostname, **services: Broken())
        server, transport = self.connect()
        server.dataReceived(b"a AUTHENTICATE PLAIN\r\n")
        self.assertEqual(transport.value(), b"+ \r\n")
        server.dataReceived(b"AGpvZQBzZWNyZXQ=\r\nb NOOP\r\n")
        self.assertEqual(
            transport.value(),
            b"+ \r\na NO [SERVERBUG] Internal server error\r\nb OK NOOP completed\r\n",
        )
        self.assertEqual(len(self.flushLoggedErrors(TypeError)), 1)


class ProtocolFuzzTests(SynchronousTestCase):
    """Whatever arrives, in whatever pieces, every command gets its answer
    and the session goes on."""

    #: Complete commands (``{tag}`` is filled in) with the lines that go
    #: with them: literals, IDLE's DONE, an over-long line, a refused
    #: non-synchronizing literal.
    COMMANDS = (
        b"{tag} NOOP\r\n",
        b"{tag} SELECT INBOX\r\n",
        b"{tag} FETCH 1:* (FLAGS UID)\r\n",
        b"{tag} UID FETCH 1:* (RFC822.SIZE)\r\n",
        b"{tag} STORE 1:2 +FLAGS (\\Deleted)\r\n",
        b"{tag} EXPUNGE\r\n",
        b"{tag} APPEND INBOX {{5}}\r\nhello\r\n",
        b"{tag} APPEND INBOX (\\Seen) {{3+}}\r\nabc\r\n",
        b"{tag} IDLE\r\nDONE\r\n",
        b"{tag} SEARCH OR SEEN (UNSEEN 1:*)\r\n",
        b'{tag} LIST "" *\r\n',
        b"{tag} UID MOVE 1:* Trash\r\n",
        b"{tag} STATUS Trash (MESSAGES)\r\n",
        b"{tag} CLOSE\r\n",
        b"{tag} " + b"x" * 400 + b"\r\n",
        b"{tag} LOGIN {{400+}}\r\n" + b"y" * 400 + b"\r\n",
        b"{tag} FROB\r\n",
    )

    def setUp(self) -> None:
        self.clock = Clock()

    def session(self) -> tuple[Any, StringTransport]:
        storage = MemoryStorage()
        for i in range(5):
            storage.deliver("joe", b"Subject: %d\r\n\r\nbody\r\n" % i)
        policy = SessionPolicy(plaintext="always", failure_delay=0.0, max_line_length=300)
        return in_process(storage, policy, self.clock)

    def feed(self, server: Any, data: bytes, rng: random.Random, most: int) -> None:
        """``data`` in random pieces, the reactor's turns between them."""
        while data:
            cut = rng.randint(1, min(len(data), most))
            server.dataReceived(data[:cut])
            data = data[cut:]
            self.clock.advance(0)

    def test_every_command_gets_one_answer(self) -> None:
        rng = random.Random(3501)
        for _ in range(40):
            server, transport = self.session()
            tags = [f"t{n}" for n in range(30)]
            data = b"p AUTHENTICATE PLAIN\r\n*\r\nq LOGIN joe secret\r\n" + b"".join(
                rng.choice(self.COMMANDS)
                .replace(b"{tag}", tag.encode())
                .replace(b"{{", b"{")
                .replace(b"}}", b"}")
                for tag in tags
            )
            self.feed(server, data, rng, 300)
            answered = re.findall(rb"^(\w+) (?:OK|NO|BAD) ", transport.value(), re.MULTILINE)
            self.assertEqual(answered, [b"p", b"q", *(tag.encode() for tag in tags)])
            self.assertFalse(transport.disconnecting)
            server.connectionLost(None)

    def test_mangled_input_never_breaks_the_session(self) -> None:
        """Random octets inserted anywhere: every tagged answer names a tag
        the client sent, nothing is a server error, and the connection is
        closed only with a BYE (three failed logins)."""
        rng = random.Random(1994)
        pieces = [
            command.replace(b"{tag}", b"%c" % rng.choice(b"abcdefgh"))
            .replace(b"{{", b"{")
            .replace(b"}}", b"}")
            for command in self.COMMANDS
        ]
        pieces += [b"a LOGIN joe secret\r\n", b"l AUTHENTICATE PLAIN\r\n", b"*\r\n"]
        for _ in range(60):
            server, transport = self.session()
            sent = b"a LOGIN joe secret\r\nb SELECT INBOX\r\n"
            server.dataReceived(sent)
            for _ in range(30):
                piece = bytearray(rng.choice(pieces))
                if rng.random() < 0.3:
                    for _ in range(rng.randint(1, 3)):
                        pos = rng.randrange(len(piece) + 1)
                        piece[pos:pos] = bytes([rng.randrange(256)])
                data = bytes(piece)
                sent += data
                self.feed(server, data, rng, len(data))
                if transport.disconnecting:
                    break
            output = transport.value()
            tags = {line.split(b" ", 1)[0] for line in sent.split(b"\r\n")}
            for tag in re.findall(rb"^(\S+) (?:OK|NO|BAD) ", output, re.MULTILINE):
                self.assertIn(tag, tags | {b"*"})
            self.assertNotIn(b"SERVERBUG", output)
            if transport.disconnecting:
                self.assertIn(b"* BYE ", output)
            server.connectionLost(None)


#: Every command with valid syntax, and the states it is valid in
#: (n: not authenticated, a: authenticated, s: selected).
STATE_TABLE = (
    ("CAPABILITY", "nas"),
    ("NOOP", "nas"),
    ("ID NIL", "nas"),
    ("LOGOUT", "nas"),
    ("STARTTLS", "n"),
    ("LOGIN joe wrong", "n"),
    ("AUTHENTICATE GSSAPI", "n"),
    ("ENABLE FOO", "a"),
    ("NAMESPACE", "as"),
    ("SELECT nothere", "as"),
    ("EXAMINE nothere", "as"),
    ("CREATE newbox", "as"),
    ("DELETE nothere", "as"),
    ("RENAME nothere other", "as"),
    ("SUBSCRIBE x", "as"),
    ("UNSUBSCRIBE x", "as"),
    ('LIST "" x', "as"),
    ('LSUB "" x', "as"),
    ("STATUS INBOX (MESSAGES)", "as"),
    ("APPEND INBOX {1+}\r\nx", "as"),
    ("IDLE\r\nDONE", "as"),
    ("CHECK", "s"),
    ("CLOSE", "s"),
    ("UNSELECT", "s"),
    ("UNAUTHENTICATE", "as"),
    ("EXPUNGE", "s"),
    ("UID EXPUNGE 1", "s"),
    ("FETCH 1 FLAGS", "s"),
    ("UID FETCH 1 FLAGS", "s"),
    ("STORE 1 +FLAGS (x)", "s"),
    ("UID STORE 1 +FLAGS (x)", "s"),
    ("SEARCH ALL", "s"),
    ("UID SEARCH ALL", "s"),
    ("SORT (DATE) UTF-8 ALL", "s"),
    ("UID SORT (DATE) UTF-8 ALL", "s"),
    ("THREAD REFERENCES UTF-8 ALL", "s"),
    ("UID THREAD REFERENCES UTF-8 ALL", "s"),
    ('CANCELUPDATE "x"', "s"),
    ("COPY 1 INBOX", "s"),
    ("UID COPY 1 INBOX", "s"),
    ("MOVE 1 INBOX", "s"),
    ("UID MOVE 1 INBOX", "s"),
    ("REPLACE 1 INBOX {1+}\r\nx", "s"),
    ("UID REPLACE 1 INBOX {1+}\r\nx", "s"),
    ('GETQUOTA ""', "as"),
    ("GETQUOTAROOT INBOX", "as"),
    ('SETQUOTA "" (STORAGE 1)', "as"),
    ("COMPRESS DEFLATE", "as"),
    ("GETMETADATA INBOX /private/comment", "as"),
    ('SETMETADATA INBOX (/private/comment "x")', "as"),
)
STATE_NAMES = {"n": "not authenticated", "a": "authenticated", "s": "selected"}


class StateTableTests(ServerTestBase):
    @defer.inlineCallbacks
    def test_every_command_in_every_state(self) -> Any:
        self.deliver(b"x\r\n")
        for state in "nas":
            for command, valid in STATE_TABLE:
                client = yield self.connect()
                if state != "n":
                    yield client.command("L", "LOGIN joe secret")
                if state == "s":
                    yield client.command("S", "SELECT INBOX")
                response = yield client.command("t", command)
                name = command.split(" (")[0].split("\r")[0].split(" ")
                key = " ".join(name[:2]) if name[0] == "UID" else name[0]
                refusal = f"t BAD {key} is not allowed in {STATE_NAMES[state]} state\r\n"
                if state in valid:
                    self.assertNotIn(b"not allowed", response, (state, command))
                    self.assertRegex(response, rb"(^|\n)t (OK|NO|BAD) ", (state, command))
                else:
                    self.assertEqual(response, refusal.encode(), (state, command))
                client.transport.loseConnection()

    def test_the_table_names_every_command(self) -> None:
        """A command added without its line here would go unchecked."""
        named = set()
        for command, _valid in STATE_TABLE:
            words = command.split("\r")[0].split(" ")
            named.add(" ".join(words[:2]) if words[0] == "UID" else words[0])
        self.assertEqual(named, {spec.key for spec in REGISTRY})


class UpdateFailureTests(ServerTestBase):
    """Bringing the view up to date fails after a command did its work: the
    command's own answer stands (a client that retried an APPEND answered NO
    would store it twice)."""

    def keywords_fail(self, error: Exception) -> None:
        def keywords(mailbox: MemoryMailbox) -> Any:
            raise error

        self.patch(MemoryMailbox, "keywords", keywords)

    @defer.inlineCallbacks
    def test_append_answer_stands_and_the_session_ends(self) -> Any:
        client = yield self.selected()
        self.keywords_fail(RuntimeError("a bug while listing keywords"))
        response = yield client.command("a", "APPEND INBOX (work) {5+}\r\nhello")
        self.assertRegex(response, rb"a OK \[APPENDUID \d+ 1\] APPEND completed\r\n$")
        yield client.lost
        self.assertTrue(
            client.buffer.endswith(
                b"* BYE Cannot update the mailbox view just now; please reconnect\r\n"
            ),
            client.buffer,
        )
        self.assertEqual(self.contents(), {1: b"hello"})
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    @defer.inlineCallbacks
    def test_keywords_unavailable_announce_what_is_shown(self) -> Any:
        """The store cannot list its keywords just now: FLAGS still names
        the new keyword before the FETCH that shows it (RFC 3501 7.2.6)."""
        client = yield self.selected()
        self.keywords_fail(TemporaryFailure("mail database unavailable"))
        self.deliver(b"Subject: x\r\n\r\nx\r\n", flags=["$Work"])
        response = yield client.command("n", "NOOP")
        self.assertEqual(response, b"* 1 EXISTS\r\n* 1 RECENT\r\nn OK NOOP completed\r\n")
        response = yield client.command("f", "FETCH 1 FLAGS")
        flags = b"\\Answered \\Flagged \\Deleted \\Seen \\Draft $Work"
        self.assertEqual(
            response,
            b"* FLAGS (" + flags + b")\r\n"
            b"* OK [PERMANENTFLAGS (" + flags + b" \\*)] Flags\r\n"
            b"* 1 FETCH (FLAGS (\\Recent $Work))\r\n"
            b"f OK FETCH completed\r\n",
        )


class LaterConnectionCountTests(SynchronousTestCase):
    """With several workers the connection counts answer later (the parent
    keeps them): nothing the client sent is acted upon before the greeting."""

    def connect(self, limits: LaterLimits) -> tuple[IMAP4Server, StringTransport]:
        policy = SessionPolicy(failure_delay=0.0, plaintext="always", connections=limits)
        return in_process(policy=policy)

    def test_greeting_waits_for_the_count_and_commands_wait_for_the_greeting(self) -> None:
        limits = LaterLimits(per_user=1, per_ip=1)
        server, transport = self.connect(limits)
        server.dataReceived(b"a LOGIN joe secret\r\n")
        self.assertEqual(transport.value(), b"")
        limits.answer()  # the address: greeting, then LOGIN asks for the user's slot
        self.assertTrue(transport.value().startswith(b"* OK [CAPABILITY IMAP4rev1 "))
        self.assertNotIn(b"\r\na ", transport.value())
        transport.clear()
        limits.answer()
        self.assertTrue(transport.value().startswith(b"a OK [CAPABILITY "), transport.value())
        self.assertEqual(server.session.user, "joe")
        _, second = self.connect(limits)
        limits.answer()
        self.assertEqual(second.value(), b"* BYE Too many connections from your address\r\n")

    def test_user_over_the_limit(self) -> None:
        limits = LaterLimits(per_user=1, per_ip=5)
        first, _ = self.connect(limits)
        first.dataReceived(b"a LOGIN joe secret\r\n")
        limits.answer()
        limits.answer()
        self.assertEqual(first.session.user, "joe")
        second, transport = self.connect(limits)
        limits.answer()
        transport.clear()
        second.dataReceived(b"b LOGIN joe secret\r\n")
        limits.answer()
        self.assertEqual(transport.value(), b"b NO [LIMIT] Too many connections for this user\r\n")

    def test_client_gone_before_the_answers(self) -> None:
        limits = LaterLimits(per_user=1, per_ip=1)
        server, transport = self.connect(limits)
        server.connectionLost(None)
        limits.answer()
        self.assertEqual(transport.value(), b"")
        # Its address slot went back: the next connection is greeted.
        _, second = self.connect(limits)
        limits.answer()
        self.assertTrue(second.value().startswith(b"* OK"))


class WaitingCommandReadingTests(SynchronousTestCase):
    """A command that waits for storage stops commands being handed over,
    not the socket: a client that waits for each answer costs no pause and
    resume of its transport; one that sends on meanwhile is held (its
    input stays one read) and served in order once the command is done."""

    def setUp(self) -> None:
        self.gate = slow_next_select(self)
        self.server, self.transport = in_process(bare_storage("joe"))
        self.server.dataReceived(b"a LOGIN joe secret\r\n")
        self.transport.clear()

    def test_waiting_command_leaves_the_socket_reading(self) -> None:
        self.server.dataReceived(b"s SELECT INBOX\r\n")
        self.assertEqual(self.transport.value(), b"")  # waiting for the storage
        self.assertEqual(self.transport.producerState, "producing")
        self.gate.callback(None)
        self.assertTrue(self.transport.value().endswith(b"s OK [READ-WRITE] SELECT completed\r\n"))
        self.assertEqual(self.transport.producerState, "producing")

    def test_pipelined_command_held_until_the_first_is_done(self) -> None:
        self.server.dataReceived(b"s SELECT INBOX\r\n")
        self.server.dataReceived(b"n NOOP\r\n")
        self.assertEqual(self.transport.producerState, "paused")
        self.assertEqual(self.transport.value(), b"")
        self.gate.callback(None)
        answer = self.transport.value()
        self.assertTrue(
            answer.endswith(b"s OK [READ-WRITE] SELECT completed\r\nn OK NOOP completed\r\n"),
            answer,
        )
        self.assertEqual(self.transport.producerState, "producing")
