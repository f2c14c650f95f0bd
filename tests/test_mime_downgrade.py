"""RFC 6858's synthetic message (mailsrv/mime/downgrade.py), without I/O:
what each kind of field becomes, that the result is ASCII and reads back
(through Python's email package, as a client would) as the original text,
and that :func:`serve` reads a message once, bounded."""

from __future__ import annotations

import email
import email.header
import email.policy
import io
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from mailsrv.mime.downgrade import (
    HEADER_LIMIT,
    downgrade_header,
    downgrade_message,
    encode_words,
    needs_downgrade,
    serve,
)


def decoded(value: str) -> str:
    """A header value as a client shows it (RFC 2047 decoded)."""
    return str(email.header.make_header(email.header.decode_header(value)))


def fields(block: bytes) -> dict[str, str]:
    message = email.message_from_bytes(block)
    return {name.lower(): value for name, value in message.items()}


class EncodedWordTests(SynchronousTestCase):
    def test_round_trip(self) -> None:
        for text in ("Grüße", "日本語のテキスト" * 10, "a_b=c?d", "x" * 200 + "é", " spaced  "):
            words = encode_words(text)
            self.assertTrue(words.isascii())
            for word in words.split("\r\n "):
                self.assertLessEqual(len(word), 75)  # RFC 2047 2
            self.assertEqual(decoded(words), text)

    def test_only_phrase_safe_characters(self) -> None:
        """RFC 2047 5 (3): in a phrase a Q word holds letters, digits and
        ``!*+-/`` as themselves, anything else encoded."""
        self.assertEqual(
            encode_words('é "q" (c), <a>'), "=?UTF-8?Q?=C3=A9_=22q=22_=28c=29=2C_=3Ca=3E?="
        )


class HeaderTests(SynchronousTestCase):
    def test_ascii_header_is_left_alone(self) -> None:
        message = b"From: a@example.org\r\nSubject: plain\r\n\r\nbody \xc3\xa9\r\n"
        self.assertFalse(needs_downgrade(message.split(b"\r\n\r\n")[0]))
        self.assertIsNone(downgrade_message(message))

    def test_unstructured_text(self) -> None:
        block = "Subject: Re: Grüße aus Köln, bis bald\r\nX-Note: ok\r\n\r\n".encode()
        out = downgrade_header(block)
        self.assertEqual(
            out,
            b"Subject: Re: =?UTF-8?Q?Gr=C3=BC=C3=9Fe_aus_K=C3=B6ln=2C?= bis bald\r\n"
            b"X-Note: ok\r\n\r\n",
        )
        self.assertEqual(decoded(fields(out)["subject"]), "Re: Grüße aus Köln, bis bald")

    def test_encoded_words_already_there_join_the_span(self) -> None:
        """An encoded word next to ours would lose the space between them
        (RFC 2047 6.2): the whole span is decoded and encoded again."""
        block = "Subject: =?ISO-8859-1?Q?caf=E9?= und Tee für alle\r\n\r\n".encode()
        out = downgrade_header(block)
        self.assertTrue(out.isascii())
        self.assertEqual(decoded(fields(out)["subject"]), "café und Tee für alle")

    def test_addresses(self) -> None:
        block = (
            "From: Jörg Müller <joerg@example.org>\r\n"
            'To: Zoë <zoe@bücher.example>, plain@example.com, "Doe, J" <j@example.com>\r\n'
            "\r\n"
        ).encode()
        out = downgrade_header(block)
        self.assertEqual(
            out,
            b"From: =?UTF-8?Q?J=C3=B6rg_M=C3=BCller?= <joerg@example.org>\r\n"
            b"To: =?UTF-8?Q?Zo=C3=AB?= <zoe@xn--bcher-kva.example>,\r\n"
            b' plain@example.com,\r\n "Doe, J" <j@example.com>\r\n\r\n',
        )
        parsed = email.message_from_bytes(out, policy=email.policy.default)
        self.assertEqual(str(parsed["From"]), "Jörg Müller <joerg@example.org>")
        self.assertEqual(parsed["To"].addresses[0].display_name, "Zoë")

    def test_address_that_cannot_be_ascii(self) -> None:
        """A non-ASCII local part has no ASCII form: an empty group whose
        name shows the original (RFC 6858: incomplete, not modified)."""
        block = "From: Jörg <jörg@müller.example>\r\nCc: ärger@example.org\r\n\r\n".encode()
        out = downgrade_header(block)
        self.assertTrue(out.isascii())
        values = fields(out)
        self.assertTrue(values["from"].endswith(":;"), values)
        self.assertEqual(decoded(values["from"][:-2]), "Jörg <jörg@müller.example>")
        self.assertEqual(decoded(values["cc"][:-2]), "ärger@example.org")
        parsed = email.message_from_bytes(out, policy=email.policy.default)
        self.assertEqual(parsed["From"].addresses, ())  # nobody to reply to

    def test_groups(self) -> None:
        block = "To: Équipe: a@example.org, ü@example.org;\r\n\r\n".encode()
        out = downgrade_header(block)
        # Groups do not nest: the member with no ASCII form is left out.
        self.assertEqual(out, b"To: =?UTF-8?Q?=C3=89quipe?=: a@example.org;\r\n\r\n")

    def test_8bit_in_a_route_or_a_field_name(self) -> None:
        """Found by fuzzing: an obsolete route (RFC 5322 4.4) of 8-bit text
        is dropped, and so is a field whose name is not ASCII."""
        block = "To: <@rü.example:a@b.example>\r\nSübject: x ü\r\nX: ü\r\n\r\n".encode()
        self.assertEqual(
            downgrade_header(block), b"To: <a@b.example>\r\nX: =?UTF-8?Q?=C3=BC?=\r\n\r\n"
        )

    def test_msg_ids_are_left_out(self) -> None:
        """RFC 2047 5: no encoded words in a msg-id; such a field cannot be
        written in ASCII."""
        block = "Message-ID: <ü@example.org>\r\nReferences: <a@b> <ü@c>\r\nSubject: x\r\n\r\n"
        self.assertEqual(downgrade_header(block.encode()), b"Subject: x\r\n\r\n")

    def test_mime_parameters(self) -> None:
        block = (
            'Content-Type: text/plain; charset=utf-8; name="Grüße.txt"\r\n'
            'Content-Disposition: attachment; filename="Grüße.txt"; size=12\r\n\r\n'
        ).encode()
        out = downgrade_header(block)
        self.assertEqual(
            out,
            b"Content-Type: text/plain; charset=utf-8; name*=utf-8''Gr%C3%BC%C3%9Fe.txt\r\n"
            b"Content-Disposition: attachment; filename*=utf-8''Gr%C3%BC%C3%9Fe.txt; size=12\r\n"
            b"\r\n",
        )
        self.assertEqual(email.message_from_bytes(out).get_filename(), "Grüße.txt")

    def test_latin1_octets_read_as_windows_1252(self) -> None:
        """Raw octets that are not UTF-8 are read as SEARCH reads them."""
        out = downgrade_header(b"Subject: caf\xe9\r\n\r\n")
        self.assertEqual(decoded(fields(out)["subject"]), "café")

    def test_lines_that_are_no_field(self) -> None:
        out = downgrade_header(" stray \xfc line\r\nSubject: ok\r\n\r\n".encode("latin-1"))
        self.assertEqual(out, b"Subject: ok\r\n\r\n")

    def test_header_only_message(self) -> None:
        """No blank line: all header, and the synthetic one has none either."""
        self.assertEqual(
            downgrade_message("Subject: ü".encode()), b"Subject: =?UTF-8?Q?=C3=BC?=\r\n"
        )

    def test_the_body_is_kept(self) -> None:
        message = "Subject: ü\r\n\r\nBody ü\r\n".encode()
        out = downgrade_message(message)
        assert out is not None
        self.assertTrue(out.endswith("\r\n\r\nBody ü\r\n".encode()))


class Reader(io.BytesIO):
    """Counts the octets read."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.octets = 0

    def read(self, size: Any = -1) -> bytes:
        data = super().read(size)
        self.octets += len(data)
        return data


class ServeTests(SynchronousTestCase):
    def test_synthetic_file(self) -> None:
        message = "Subject: Grüße\r\n\r\n".encode() + b"x" * 100_000
        served = serve(io.BytesIO(message))
        expected = downgrade_message(message)
        assert expected is not None
        self.assertEqual(served.delta, len(expected) - len(message))
        self.assertEqual(served.file.size, len(expected))
        self.assertEqual(served.file.read(), expected)
        served.file.seek(5)
        self.assertEqual(served.file.read(20), expected[5:25])
        served.file.seek(-10, io.SEEK_END)
        self.assertEqual(served.file.read(), expected[-10:])

    def test_as_stored_reads_on_from_the_header(self) -> None:
        """A message served as stored: the octets read to find its header
        are not read again (a POP3 RETR reads the file once)."""
        message = b"Subject: plain\r\n\r\n" + b"y" * 200_000
        source = Reader(message)
        served = serve(source)
        self.assertIsNone(served.delta)
        self.assertEqual(served.file.read(), message)
        self.assertEqual(source.octets, len(message))

    def test_unseekable_source(self) -> None:
        message = "Subject: ü\r\n\r\nbody\r\n".encode()
        raw = io.BufferedReader(io.BytesIO(message))
        served = serve(raw)
        self.assertEqual(served.file.read(), downgrade_message(message))

    def test_give_back(self) -> None:
        source = io.BytesIO(b"Subject: plain\r\n\r\nbody\r\n")
        served = serve(source)
        self.assertIs(served.file.give_back(), source)
        self.assertFalse(source.closed)
        self.assertEqual(source.tell(), 0)

    def test_endless_header_is_bounded(self) -> None:
        """A header without a blank line is looked at in its first
        :data:`HEADER_LIMIT` octets only, whole lines, and never held
        whole."""
        line = "X-Long: ü\r\n".encode()
        message = line * (3 * HEADER_LIMIT // len(line))
        source = Reader(message)
        served = serve(source)
        self.assertLess(source.octets, HEADER_LIMIT + 64 * 1024)
        self.assertIsNotNone(served.delta)
        first = served.file.read(200)
        self.assertTrue(first.startswith(b"X-Long: =?UTF-8?Q?=C3=BC?=\r\n"), first)
