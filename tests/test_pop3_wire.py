"""The POP3 message encoder: byte-stuffing and TOP, whatever the chunking."""

from __future__ import annotations

import random

from twisted.trial import unittest

from mailsrv.pop3.wire import MessageEncoder, dot_stuff_line, parse_number


def encode(message: bytes, body_lines: int | None, chunks: list[int]) -> tuple[bytes, bool]:
    """Feed ``message`` in pieces of the given sizes (the last one takes the rest)."""
    encoder = MessageEncoder(body_lines)
    out, pos = [], 0
    for size in chunks:
        if encoder.done:
            break
        out.append(encoder.feed(message[pos : pos + size]))
        pos += size
    if not encoder.done and pos < len(message):
        out.append(encoder.feed(message[pos:]))
    out.append(encoder.finish())
    return b"".join(out), encoder.complete


def reference(message: bytes, body_lines: int | None) -> tuple[bytes, bool]:
    """The same result computed line by line, the obvious way."""
    lines = message.split(b"\r\n")
    if lines[-1] == b"":
        lines.pop()
    if body_lines is not None:
        if b"" in lines:
            blank = lines.index(b"")
            kept = lines[: blank + 1 + body_lines]
        else:
            kept = lines
        complete = len(kept) == len(lines)
        lines = kept
    else:
        complete = True
    return b"".join(dot_stuff_line(line) + b"\r\n" for line in lines) + b".\r\n", complete


class EncoderTests(unittest.SynchronousTestCase):
    def test_retr(self) -> None:
        message = b"Subject: x\r\n\r\n.\r\n..\r\nok\r\n.end"
        out, complete = encode(message, None, [len(message)])
        self.assertEqual(out, b"Subject: x\r\n\r\n..\r\n...\r\nok\r\n..end\r\n.\r\n")
        self.assertTrue(complete)

    def test_empty_message(self) -> None:
        self.assertEqual(encode(b"", None, []), (b".\r\n", True))
        self.assertEqual(encode(b"", 3, []), (b".\r\n", True))

    def test_dot_at_chunk_boundary(self) -> None:
        message = b"a\r\n.b\r\n"
        for split in range(len(message) + 1):
            self.assertEqual(
                encode(message, None, [split])[0], b"a\r\n..b\r\n.\r\n", f"split at {split}"
            )

    def test_top_zero_lines(self) -> None:
        message = b"A: 1\r\nB: 2\r\n\r\nbody\r\n"
        self.assertEqual(encode(message, 0, [4]), (b"A: 1\r\nB: 2\r\n\r\n.\r\n", False))

    def test_top_exactly_all_lines_is_complete(self) -> None:
        message = b"A: 1\r\n\r\none\r\ntwo\r\n"
        self.assertEqual(encode(message, 2, [3, 3, 3]), (message + b".\r\n", True))
        self.assertEqual(encode(message, 1, [3, 3, 3]), (b"A: 1\r\n\r\none\r\n.\r\n", False))

    def test_top_header_only_message(self) -> None:
        message = b"A: 1\r\nB: 2\r\n"
        self.assertEqual(encode(message, 0, [5]), (message + b".\r\n", True))

    def test_random_messages_and_chunkings(self) -> None:
        rng = random.Random(1939)
        pieces = [b".", b"..", b"x", b"Header: v", b"", b"\r\n", b"body line", b". "]
        for _ in range(400):
            lines = [rng.choice(pieces[3:4]) for _ in range(rng.randint(0, 3))]
            if rng.random() < 0.8:
                lines.append(b"")
                lines += [
                    b"".join(rng.choice(pieces[:3] + pieces[6:]) for _ in range(rng.randint(0, 3)))
                    for _ in range(rng.randint(0, 6))
                ]
            message = b"\r\n".join(lines) + (b"\r\n" if rng.random() < 0.7 else b"")
            if message == b"\r\n":
                message = b""
            limit = rng.choice([None, 0, 1, 2, 5])
            chunks = [rng.randint(1, 7) for _ in range(rng.randint(0, 12))]
            with self.subTest(message=message, limit=limit, chunks=chunks):
                self.assertEqual(encode(message, limit, chunks), reference(message, limit))


class ParseNumberTests(unittest.SynchronousTestCase):
    def test_valid(self) -> None:
        self.assertEqual(parse_number(b"0"), 0)
        self.assertEqual(parse_number(b"0042"), 42)
        self.assertEqual(parse_number(b"9999999999"), 9999999999)

    def test_invalid(self) -> None:
        for arg in (
            b"",
            b"-1",
            b"+1",
            b" 1",
            b"1 ",
            b"1_0",
            b"0x1",
            b"1.0",
            b"\xd9\xa1",
            b"1" * 11,
        ):
            self.assertIsNone(parse_number(arg), arg)
