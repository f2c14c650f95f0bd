"""The sans-I/O IMAP framer (mailsrv.imap.framer): bytes in, events out."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable

from twisted.trial.unittest import SynchronousTestCase

from mailsrv.imap.framer import (
    NEED_DATA,
    ContinuationLine,
    Event,
    FramedCommand,
    Framer,
    LineTooLong,
    LiteralNeeded,
)
from mailsrv.imap.lexer import LiteralFile

#: What a test records of an event: plain values, with spooled literals read.
Record = tuple[object, ...]


def record(event: Event) -> Record:
    if isinstance(event, FramedCommand):
        segments: list[object] = []
        for segment in event.segments:
            if isinstance(segment, LiteralFile):
                segments.append(("file", segment.size, segment.file.read()))
                segment.file.close()
            else:
                segments.append(segment)
        return ("command", *segments)
    if isinstance(event, LiteralNeeded):
        return (
            "literal",
            event.size,
            event.synchronizing,
            event.binary,
            event.tag,
            event.command,
            event.command_size,
            event.spooled,
        )
    if isinstance(event, ContinuationLine):
        return ("continuation", event.line)
    if isinstance(event, LineTooLong):
        return ("too long", event.tag)
    raise AssertionError(event)


def answer(framer: Framer, event: Event) -> None:
    """What a session does: spool APPEND literals, refuse big ones, and
    expect a continuation after IDLE and AUTHENTICATE."""
    if isinstance(event, LiteralNeeded):
        if event.size > 50_000 or (event.command == "LOGIN" and event.size == 4):
            framer.refuse_literal()
        else:
            framer.accept_literal(spool=event.command == "APPEND")
    elif isinstance(event, FramedCommand):
        first = event.segments[0]
        assert isinstance(first, bytes)
        if first.split(b" ")[1:2] in ([b"IDLE"], [b"AUTHENTICATE"]):
            framer.expect_continuation()


def run(
    chunks: Iterable[bytes],
    max_line: int = 1000,
    respond: Callable[[Framer, Event], None] = answer,
) -> list[Record]:
    framer = Framer(max_line)
    events: list[Record] = []
    for chunk in chunks:
        framer.receive(chunk)
        while (event := framer.next_event()) is not NEED_DATA:
            events.append(record(event))
            respond(framer, event)
    return events


MESSAGE = b"Subject: a {5}\r\n\r\n" + b"line of text\r\n" * 20
#: A session touching every framing path, as a client could send it.
SESSION = (
    b"a1 CAPABILITY\r\n"
    b"a2 LOGIN {3}\r\njoe {6+}\r\nsecret\r\n"
    b"a3 AUTHENTICATE PLAIN\r\nAGpvZQBzZWNyZXQ=\r\n"
    b"a4 SELECT INBOX\r\n"
    b"a5 APPEND INBOX (\\Seen) {%d}\r\n%s\r\n"
    b"a6 APPEND INBOX {60000+}\r\n%s {3+}\r\nabc {2}\r\n"
    b"a7 IDLE\r\nDONE {3}\r\n"
    b"a8 NOOP %s\r\n"
    b"a9 LOGIN {4}\r\n"
    b"a10 APPEND INBOX ~{5}\r\nab\x00cd\r\n"
    b"a11 FETCH 1 BODY[]\r\n"
    b"%s\r\r\n"
    b"a12 LOGIN {0}\r\n {0+}\r\n\r\n"
) % (len(MESSAGE), MESSAGE, b"\r\n" * 30000, b"x" * 1500, b"y" * 2500)


class FramingTests(SynchronousTestCase):
    def test_commands_and_literals(self) -> None:
        self.assertEqual(
            run([b"a NOOP\r\nb LOGIN {3}\r\njoe {6+}\r\nsecret\r\n"]),
            [
                ("command", b"a NOOP"),
                ("literal", 3, True, False, "b", "LOGIN", 11, False),
                ("literal", 6, False, False, "b", "LOGIN", 19, False),
                ("command", b"b LOGIN {3}", b"joe", b" {6+}", b"secret", b""),
            ],
        )

    def test_spooled_literal_is_a_file(self) -> None:
        events = run([b"a APPEND INBOX {5}\r\nhello\r\n"])
        self.assertEqual(events[-1], ("command", b"a APPEND INBOX {5}", ("file", 5, b"hello"), b""))

    def test_literal8_and_uid_commands(self) -> None:
        events = run([b"t1 APPEND x ~{2}\r\n\x00\x01\r\nt2 UID FETCH 1 {1}\r\n"])
        self.assertEqual(events[0], ("literal", 2, True, True, "t1", "APPEND", 16, False))
        self.assertEqual(events[2], ("literal", 1, True, False, "t2", "UID FETCH", 18, False))

    def test_refused_synchronizing_literal_is_not_read(self) -> None:
        # The client was refused, so the next line is a new command.
        self.assertEqual(
            run([b"a LOGIN {4}\r\nb NOOP\r\n"]),
            [("literal", 4, True, False, "a", "LOGIN", 11, False), ("command", b"b NOOP")],
        )

    def test_refused_nonsync_literal_and_the_rest_of_its_command_are_dropped(self) -> None:
        data = b"a APPEND INBOX {60000+}\r\n" + b"x" * 60000 + b" {2+}\r\nab {3}\r\nb NOOP\r\n"
        self.assertEqual(
            run([data]),
            [("literal", 60000, False, False, "a", "APPEND", 23, False), ("command", b"b NOOP")],
        )

    def test_continuation_lines_are_taken_as_they_are(self) -> None:
        self.assertEqual(
            run([b"i IDLE\r\nDONE {5}\r\nn NOOP\r\n"]),
            [
                ("command", b"i IDLE"),
                ("continuation", b"DONE {5}"),
                ("command", b"n NOOP"),
            ],
        )

    def test_overlong_line_is_dropped_with_its_command(self) -> None:
        self.assertEqual(
            run([b"a LOGIN {3}\r\njoe " + b"x" * 200 + b"\r\nb NOOP\r\n"], max_line=100),
            [
                ("literal", 3, True, False, "a", "LOGIN", 11, False),
                ("too long", "a"),
                ("command", b"b NOOP"),
            ],
        )
        self.assertEqual(
            run([b"x" * 300 + b"\r\nb NOOP\r\n"], max_line=100),
            [("too long", None), ("command", b"b NOOP")],
        )

    def test_overlong_line_ends_at_a_crlf_split_between_pieces(self) -> None:
        events = run([b"a NOOP " + b"x" * 200 + b"\r", b"\nb NOOP\r\n"], max_line=100)
        self.assertEqual(events, [("too long", "a"), ("command", b"b NOOP")])
        # A lone CR inside the dropped line is no end.
        events = run([b"a NOOP " + b"x" * 200 + b"\r", b"x\r\nb NOOP\r\n"], max_line=100)
        self.assertEqual(events, [("too long", "a"), ("command", b"b NOOP")])

    def test_a_line_at_the_limit_is_not_too_long(self) -> None:
        line = b"a NOOP " + b"x" * 93
        self.assertEqual(run([line + b"\r\n"], max_line=100), [("command", line)])
        self.assertEqual(run([line + b"x\r\n"], max_line=100), [("too long", "a")])

    def test_answer_required_before_the_next_event(self) -> None:
        framer = Framer(100)
        framer.receive(b"a LOGIN {1}\r\nx\r\n")
        self.assertIsInstance(framer.next_event(), LiteralNeeded)
        self.assertRaises(RuntimeError, framer.next_event)
        self.assertRaises(RuntimeError, Framer(100).accept_literal)

    def test_clear_forgets_what_was_pipelined(self) -> None:
        framer = Framer(100)
        framer.receive(b"a STARTTLS\r\nb LOGIN joe secret\r\n")
        self.assertEqual(framer.next_event(), FramedCommand((b"a STARTTLS",)))
        framer.clear()
        self.assertIs(framer.next_event(), NEED_DATA)
        framer.receive(b"c NOOP\r\n")
        self.assertEqual(framer.next_event(), FramedCommand((b"c NOOP",)))

    def test_close_closes_a_spooled_literal(self) -> None:
        framer = Framer(100)
        framer.receive(b"a APPEND INBOX {10}\r\n12345")
        framer.next_event()
        framer.accept_literal(spool=True)
        self.assertIs(framer.next_event(), NEED_DATA)
        literal = framer._literal
        assert literal is not None and not isinstance(literal.sink, bytearray | None)
        framer.close()
        self.assertTrue(literal.sink.closed)


class ProgressTests(SynchronousTestCase):
    """What restarts the idle timer: complete lines and literal pieces."""

    def test_partial_lines_are_no_progress(self) -> None:
        framer = Framer(100)
        for octet in b"a NOO":
            framer.receive(bytes([octet]))
            self.assertIs(framer.next_event(), NEED_DATA)
        self.assertEqual(framer.progress, 0)
        framer.receive(b"P\r\n")
        framer.next_event()
        self.assertEqual(framer.progress, 1)

    def test_each_piece_of_a_literal_is_progress(self) -> None:
        framer = Framer(100)
        framer.receive(b"a APPEND INBOX {30}\r\n")
        framer.next_event()
        framer.accept_literal(spool=True)
        for piece in range(3):
            framer.receive(b"x" * 10)
            self.assertIs(framer.next_event(), NEED_DATA)
            self.assertEqual(framer.progress, 2 + piece)

    def test_a_dropped_literal_is_progress_too(self) -> None:
        framer = Framer(100)
        framer.receive(b"a APPEND INBOX {30+}\r\n")
        framer.next_event()
        framer.refuse_literal()
        framer.receive(b"x" * 10)
        framer.next_event()
        self.assertEqual(framer.progress, 2)

    def test_an_overlong_line_is_no_progress(self) -> None:
        framer = Framer(100)
        framer.receive(b"x" * 150)
        self.assertEqual(framer.next_event(), LineTooLong(None))
        framer.receive(b"x" * 150 + b"\r\n")
        self.assertIs(framer.next_event(), NEED_DATA)
        self.assertEqual(framer.progress, 0)


class SplitIndependenceTests(SynchronousTestCase):
    """The events of a recorded session are the same however its bytes are
    split on the way: in one piece, octet by octet, or at random."""

    def test_recorded_session(self) -> None:
        whole = run([SESSION])
        kinds = [event[0] for event in whole]
        for kind in ("command", "literal", "continuation", "too long"):
            self.assertIn(kind, kinds)
        self.assertIn(("command", b"a4 SELECT INBOX"), whole)
        self.assertIn(("command", b"a11 FETCH 1 BODY[]"), whole)
        self.assertEqual(whole[-1], ("command", b"a12 LOGIN {0}", b"", b" {0+}", b"", b""))
        self.assertEqual(run(SESSION[i : i + 1] for i in range(len(SESSION))), whole)
        rng = random.Random(2177)
        for _ in range(200):
            cuts = sorted(rng.sample(range(1, len(SESSION)), rng.randint(1, 60)))
            pieces = [SESSION[a:b] for a, b in zip([0, *cuts], [*cuts, len(SESSION)], strict=True)]
            self.assertEqual(run(pieces), whole)
