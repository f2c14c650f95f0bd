"""The per-command floor of POP3: the paths that take the Deferreds, the
transport's buffering and the repeated look-ups out of a command send the
same octets as the ones they replace.

- RETR and TOP answer the same whether the maildrop opens a message at once
  (:class:`~mailsrv.interfaces.IMaildropReader`), through a Deferred that
  has fired or fires later, or only through ``retrieve`` giving a plain file;
  a message removed meanwhile is ``-ERR`` on every path.
- A turn's answers leave in one ``send`` (:class:`mailsrv.writing.Outbox`);
  what the kernel does not take is left to the transport, in order.
- A whole message is byte-stuffed in one pass (:func:`stuff_message`), and a
  small file is read once (:func:`read_whole`).
"""

from __future__ import annotations

import io
import os
import re
from typing import IO, Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.cred.portal import IRealm, Portal
from twisted.internet import defer
from twisted.internet.testing import StringTransport
from twisted.trial import unittest
from zope.interface import implementer

from mailsrv import writing
from mailsrv.auth.realm import MailRealm
from mailsrv.interfaces import DELETED, FLAGGED, IMaildrop, IMaildropReader, StoreMode
from mailsrv.observe import Observer, Observers
from mailsrv.pop3.streaming import read_whole
from mailsrv.pop3.wire import MessageEncoder, parse_number, stuff_message
from mailsrv.storage.maildir import MaildirStorage
from mailsrv.storage.maildrop import Maildrop
from tests.helpers import Trickle
from tests.pop3_helpers import MESSAGE_1, MESSAGE_2, MESSAGE_3, Fixture, Session, TCPServer
from tests.test_pop3_retr import TRICKY
from tests.test_pop3_storage import StorageFixture, TCPSession

MESSAGES = [MESSAGE_1, MESSAGE_2, MESSAGE_3, *TRICKY]


@implementer(IMaildrop)
class PlainMaildrop:
    """An IMaildrop whose ``retrieve`` gives the file itself (the contract
    allows a value or a Deferred), without :class:`IMaildropReader`."""

    def __init__(self, inner: Maildrop) -> None:
        self.inner = inner

    def open(self) -> Any:
        return self.inner.open()

    def retrieve(self, uid: int) -> IO[bytes]:
        opened = self.inner.open_message(uid)  # the memory backend's file, at once
        assert not isinstance(opened, defer.Deferred)
        return opened

    def commit(self, deleted: Any, seen: Any) -> Any:
        return self.inner.commit(deleted, seen)

    def release(self) -> Any:
        return self.inner.release()


@implementer(IRealm)
class PlainRealm:
    """The real realm, its maildrops wrapped in :class:`PlainMaildrop`."""

    def __init__(self, inner: MailRealm) -> None:
        self.inner = inner

    def requestAvatar(self, avatar_id: Any, mind: object, *interfaces: Any) -> Any:
        d = self.inner.requestAvatar(avatar_id, mind, *interfaces)
        return d.addCallback(lambda r: (r[0], PlainMaildrop(r[1]), r[2]))


def fixture_for(test: unittest.SynchronousTestCase, mode: str) -> Fixture:
    """Bob's maildrop of :data:`MESSAGES`, opened as ``mode`` says."""
    fixture = Fixture(test, mail={"bob": MESSAGES})
    if mode in ("deferred", "later"):
        fixture.faults.open_deferred = True
    elif mode == "plain":
        realm = PlainRealm(MailRealm(fixture.storage))
        fixture.portal = Portal(realm, list(fixture.portal.checkers.values()))
    return fixture


class MaildropAnswersTests(unittest.SynchronousTestCase):
    """The same octets from a maildrop that answers at once and from one
    that answers through a Deferred."""

    def answers(self, mode: str, commands: list[bytes]) -> list[bytes]:
        fixture = fixture_for(self, mode)
        session = Session(fixture)
        session.login("bob")
        maildrop = session.protocol._transaction._maildrop  # type: ignore[union-attr]
        if mode == "sync":
            self.assertTrue(IMaildropReader.providedBy(maildrop))
        if mode == "plain":
            self.assertFalse(IMaildropReader.providedBy(maildrop))
        if mode == "later":
            fixture.faults.parked = []
        out = []
        for line in commands:
            answer = session.command(line)
            if mode == "later":
                self.assertEqual(answer, b"")  # nothing before the file is open
                fixture.faults.release_parked()
                answer = session.output()
            out.append(answer)
        return out

    def test_same_octets_whatever_the_maildrop_answers(self) -> None:
        commands = [b"RETR %d" % n for n in range(1, len(MESSAGES) + 1)]
        commands += [b"TOP %d 1" % n for n in range(1, len(MESSAGES) + 1)]
        commands.append(b"RETR 1")
        at_once = self.answers("sync", commands)
        self.assertEqual(
            at_once[1],
            b"+OK %d octets\r\n" % len(MESSAGE_2) + MESSAGE_2 + b".\r\n",
        )
        self.assertEqual(at_once[0], at_once[-1])
        for mode in ("deferred", "later", "plain"):
            self.assertEqual(self.answers(mode, commands), at_once, mode)

    def test_removed_meanwhile_is_err_on_every_path(self) -> None:
        for mode in ("sync", "deferred", "later", "plain"):
            fixture = fixture_for(self, mode)
            session = Session(fixture)
            session.login("bob")
            inbox = fixture.inbox("bob")
            second = fixture.uids("bob")[1]
            inbox.store([second], [DELETED], StoreMode.ADD)
            inbox.expunge([second])
            if mode == "later":
                fixture.faults.parked = []
                self.assertEqual(session.command("RETR 2"), b"")
                fixture.faults.release_parked()
                answer = session.output()
            else:
                answer = session.command("RETR 2")
            self.assertEqual(answer, b"-ERR Message 2 was removed by another session.\r\n", mode)
            fixture.faults.parked = None
            self.assertEqual(session.command("NOOP"), b"+OK\r\n", mode)
            self.assertTrue(session.command("RETR 3").startswith(b"+OK "), mode)

    def test_pipelined_commands_after_a_later_retr(self) -> None:
        """What waited behind a RETR answered through a Deferred runs after
        it, in order, answered in one piece."""
        fixture = fixture_for(self, "later")
        session = Session(fixture)
        session.login("bob")
        stat = session.command("STAT")
        fixture.faults.parked = []
        self.assertEqual(session.send(b"RETR 2\r\nNOOP\r\nSTAT\r\n"), b"")
        fixture.faults.release_parked()
        self.assertEqual(
            session.output(),
            b"+OK %d octets\r\n" % len(MESSAGE_2) + MESSAGE_2 + b".\r\n+OK\r\n" + stat,
        )


class OutboxTests(unittest.SynchronousTestCase):
    def test_a_turn_is_one_write(self) -> None:
        transport = StringTransport()
        writes: list[bytes] = []
        transport.write = writes.append  # type: ignore[method-assign]
        outbox = writing.Outbox(transport)
        self.assertTrue(outbox.hold())
        self.assertFalse(outbox.hold())  # already holding: the first caller flushes
        outbox.write(b"+OK\r\n")
        outbox.write(b"+OK 2 10\r\n")
        self.assertEqual(writes, [])
        outbox.flush()
        self.assertEqual(writes, [b"+OK\r\n+OK 2 10\r\n"])
        outbox.write(b"-ERR late\r\n")  # outside a turn: at once
        self.assertEqual(writes[-1], b"-ERR late\r\n")
        outbox.hold()
        outbox.write(b"lost")
        outbox.discard()
        outbox.flush()
        self.assertEqual(len(writes), 2)

    def test_not_a_socket_is_written_as_before(self) -> None:
        transport = StringTransport()
        writes: list[bytes] = []
        self.patch(transport, "write", writes.append)
        writing.write_now(transport, b"+OK\r\n")
        writing.write_now(transport, b"")  # nothing: not even an empty write
        self.assertEqual(writes, [b"+OK\r\n"])


class OutboxOverTCPTests(unittest.TestCase):
    timeout = 60

    async def test_answers_larger_than_the_socket_buffers(self) -> None:
        """Pipelined RETRs of 6 MB in all to a client that is not reading:
        the kernel takes part of a turn's send and the transport keeps the
        rest; the next turn's answers queue behind it.  Every octet arrives,
        in order, once the client reads."""
        messages = [
            b"Subject: %d\r\n\r\n" % n + (b".%05d" % n + b"x" * 70 + b"\r\n") * 780
            for n in range(100)
        ]
        server = TCPServer(self, Fixture(self, mail={"bob": messages}))
        client = await server.login("bob")
        seen: list[bool] = []
        turns: list[defer.Deferred[None]] = [defer.Deferred(), defer.Deferred()]
        idle_socket = writing.idle_socket

        def spy(transport: object) -> bool:
            seen.append(idle_socket(transport))
            if len(seen) <= len(turns):
                turns[len(seen) - 1].callback(None)
            return seen[-1]

        self.patch(writing, "idle_socket", spy)
        transport: Any = client.transport
        transport.pauseProducing()  # the client stops reading
        client.send(b"".join(b"RETR %d\r\nNOOP\r\n" % n for n in range(1, 81)))
        await turns[0]
        client.send(b"".join(b"RETR %d\r\nNOOP\r\n" % n for n in range(81, 101)))
        await turns[1]
        self.assertEqual(seen, [True, False])  # at once, then behind the rest
        expected = b"".join(
            b"+OK %d octets\r\n" % len(message) + stuff_message(message) + b"+OK\r\n"
            for message in messages
        )
        transport.resumeProducing()
        received = await client._wait(
            lambda: client.buffer if len(client.buffer) >= len(expected) else None
        )
        self.assertEqual(received, expected)


class WholeMessageTests(unittest.SynchronousTestCase):
    @settings(max_examples=200, deadline=None)
    @given(
        st.binary(max_size=64)
        | st.lists(st.sampled_from([b".", b"\r\n", b"\n", b"a"])).map(b"".join)
    )
    def test_stuff_message_is_the_encoders_output(self, data: bytes) -> None:
        encoder = MessageEncoder()
        self.assertEqual(stuff_message(data), encoder.feed(data) + encoder.finish())

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=12) | st.text("0123456789", max_size=12).map(str.encode))
    def test_parse_number_is_the_old_pattern(self, arg: bytes) -> None:
        """Message numbers: 1 to 10 ASCII digits, nothing else (was a regular expression)."""
        old = int(arg) if re.fullmatch(rb"[0-9]{1,10}", arg) else None
        self.assertEqual(parse_number(arg), old)

    def test_read_whole(self) -> None:
        for size in (0, 1, 9, 10, 11, 30):
            data = bytes(range(65, 65 + size))
            expected = (data, True) if size <= 10 else (data[:11], False)
            for source in (io.BytesIO(data), io.BufferedReader(io.BytesIO(data)), Trickle(data, 1)):
                self.assertEqual(read_whole(source, 10), expected, (size, source))  # type: ignore[arg-type]


class WantsLinesTests(unittest.SynchronousTestCase):
    def test_only_observers_that_may_want_lines_are_asked(self) -> None:
        asked: list[str] = []

        class Quiet(Observer):
            pass

        class Asks(Observer):
            def __init__(self, answer: bool) -> None:
                self.answer = answer

            def wants_lines(self) -> bool:
                asked.append(str(self.answer))
                return self.answer

        self.assertFalse(Observers([Quiet()]).wants_lines())
        self.assertFalse(Observers([Quiet(), Asks(False)]).wants_lines())
        self.assertTrue(Observers([Asks(False), Quiet(), Asks(True)]).wants_lines())
        self.assertEqual(asked, ["False", "False", "True"])


class MaildirRetrTests(unittest.TestCase):
    """RETR over Maildir and loopback TCP after the first RETR read the next
    messages' file names ahead: another session's flag change (a rename) and
    expunge (a removal) meanwhile are still seen."""

    timeout = 20

    async def test_renamed_and_removed_after_the_names_were_read(self) -> None:
        root = os.path.abspath(self.mktemp())
        fixture = StorageFixture(self, MaildirStorage(os.path.join(root, "{user}", "Maildir")))
        uids = [await fixture.add(m) for m in (MESSAGE_1, MESSAGE_2, MESSAGE_3)]
        session = await TCPSession(TCPServer(self, fixture)).connect()  # type: ignore[arg-type]
        await session.login()
        first = await session.multiline("RETR 1")
        self.assertEqual(first, b"+OK %d octets\r\n" % len(MESSAGE_1) + stuff_message(MESSAGE_1))
        other = fixture.inbox()  # an IMAP session's view of the same INBOX
        other.store([uids[2]], [FLAGGED], StoreMode.ADD)
        other.store([uids[1]], [DELETED], StoreMode.ADD)
        other.expunge([uids[1]])
        self.assertEqual(
            await session.command("RETR 2"), b"-ERR Message 2 was removed by another session.\r\n"
        )
        self.assertEqual(
            await session.multiline("RETR 3"),
            b"+OK %d octets\r\n" % len(MESSAGE_3) + stuff_message(MESSAGE_3),
        )
        self.assertEqual(await session.command("QUIT"), b"+OK Logging out, 0 messages deleted.\r\n")
