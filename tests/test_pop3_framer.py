"""The sans-I/O POP3 line framer: bytes in, command lines and LINE_TOO_LONG
events out, the same however the bytes are split."""

from __future__ import annotations

import random

from twisted.trial import unittest

from mailsrv.pop3.framer import LINE_TOO_LONG, Event, LineFramer


def events(framer: LineFramer) -> list[Event]:
    taken = []
    while (event := framer.next_event()) is not None:
        taken.append(event)
    return taken


def feed(data: bytes, max_length: int, cuts: list[int] | None = None) -> list[Event]:
    """Every event of ``data`` fed in pieces cut at ``cuts``."""
    framer = LineFramer(max_length)
    start = 0
    for cut in [*(cuts or []), len(data)]:
        framer.receive(data[start:cut])
        start = cut
    return events(framer)


def reference(data: bytes, max_length: int) -> list[Event]:
    """The events of ``data`` by the framing rule, written plainly: a line
    ends at LF, one CR before it goes, a line over the limit is one
    LINE_TOO_LONG, reported as soon as the octets without a final CR show it."""
    *lines, rest = data.split(b"\n")
    found: list[Event] = []
    for line in lines:
        line = line.removesuffix(b"\r")
        found.append(line if len(line) <= max_length else LINE_TOO_LONG)
    if len(rest.removesuffix(b"\r")) > max_length:
        found.append(LINE_TOO_LONG)
    return found


class FramingTests(unittest.SynchronousTestCase):
    def test_crlf_and_bare_lf(self) -> None:
        self.assertEqual(
            feed(b"USER a\r\nPASS b c\nSTAT\r\n\r\nLIST", 100),
            [b"USER a", b"PASS b c", b"STAT", b""],
        )

    def test_only_a_cr_before_the_lf_is_removed(self) -> None:
        self.assertEqual(feed(b"a\rb\r\r\n", 100), [b"a\rb\r"])

    def test_longest_line_and_one_more(self) -> None:
        self.assertEqual(
            feed(b"x" * 10 + b"\r\n" + b"y" * 11 + b"\r\nNOOP\r\n", 10),
            [
                b"x" * 10,
                LINE_TOO_LONG,
                b"NOOP",
            ],
        )

    def test_long_line_reported_before_its_end_and_skipped(self) -> None:
        framer = LineFramer(10)
        framer.receive(b"x" * 12)
        self.assertEqual(events(framer), [LINE_TOO_LONG])
        framer.receive(b"y" * 1000)
        framer.receive(b"z\r")
        self.assertEqual(events(framer), [])
        framer.receive(b"\nNOOP\r\n")
        self.assertEqual(events(framer), [b"NOOP"])

    def test_a_cr_at_the_limit_may_start_the_line_end(self) -> None:
        """Ten octets and a CR are not too long for a limit of ten: the LF
        may follow in the next packet."""
        for cuts in ([11], [10, 11], []):
            self.assertEqual(feed(b"x" * 10 + b"\r\nNOOP\r\n", 10, cuts), [b"x" * 10, b"NOOP"])
        self.assertEqual(feed(b"x" * 10 + b"\ry\r\nNOOP\r\n", 10, [11]), [LINE_TOO_LONG, b"NOOP"])

    def test_events_wait_until_taken(self) -> None:
        framer = LineFramer(100)
        framer.receive(b"A\r\nB\r\nC")
        self.assertEqual(framer.pending, 2)
        self.assertEqual(framer.next_event(), b"A")
        self.assertEqual(framer.pending, 1)
        framer.receive(b"\r\n")
        self.assertEqual(events(framer), [b"B", b"C"])
        self.assertIsNone(framer.next_event())

    def test_clear_forgets_events_partial_line_and_skipping(self) -> None:
        framer = LineFramer(10)
        framer.receive(b"USER evil\r\nPASS x\r\npartial")
        framer.clear()
        self.assertEqual(framer.pending, 0)
        framer.receive(b"\r\nSTAT\r\n")
        self.assertEqual(events(framer), [b"", b"STAT"])
        framer.receive(b"x" * 20)
        framer.clear()
        framer.receive(b"rest of it\r\nNOOP\r\n")
        self.assertEqual(events(framer), [b"rest of it", b"NOOP"])

    def test_receive_says_whether_a_line_ended(self) -> None:
        """What restarts the idle timer: whole lines, never a part of one."""
        framer = LineFramer(10)
        self.assertFalse(framer.receive(b"NO"))
        self.assertTrue(framer.receive(b"OP\r\nST"))
        self.assertFalse(framer.receive(b"x" * 20))  # too long, but not ended
        self.assertFalse(framer.receive(b"\r\n"))  # the end of that line
        self.assertTrue(framer.receive(b"x" * 20 + b"\r\n"))  # a whole line, too long

    def test_random_streams_and_splits(self) -> None:
        """The same events however the bytes are split, and the events the
        rule gives, for random mixes of short, limit-length and long lines."""
        rng = random.Random(1939)
        pieces = [b"NOOP", b"", b"x" * 16, b"y" * 17, b"z" * 15 + b"\r", b"a\rb", b"w" * 100]
        ends = [b"\r\n", b"\n", b"\r\r\n"]
        for _ in range(500):
            data = b"".join(
                rng.choice(pieces) + rng.choice(ends) for _ in range(rng.randint(0, 12))
            )
            if rng.random() < 0.5:
                data += rng.choice(pieces)  # an unfinished line
            expected = reference(data, 16)
            self.assertEqual(feed(data, 16), expected, data)
            for _ in range(5):
                cuts = sorted(rng.sample(range(len(data) + 1), min(len(data), rng.randint(1, 8))))
                self.assertEqual(feed(data, 16, cuts), expected, (data, cuts))
            self.assertEqual(feed(data, 16, list(range(len(data)))), expected, data)
