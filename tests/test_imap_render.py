"""What IMAP makes of the MIME model: ENVELOPE, BODY/BODYSTRUCTURE
(mailsrv/imap/render.py), sections (mailsrv/imap/sections.py) and BINARY.

Most expectations come from two places: values worked out by hand from
RFC 3501 7.4.2 and section 9 for representative corpus messages, and the
answers Dovecot gave for the whole corpus (tests/golden/dovecot.json, made by
tests/golden/make_golden.py), with the deliberate differences listed and
justified in :data:`DELIBERATE`.  The model itself is tests/test_mime.py.
"""

from __future__ import annotations

import io
import json
import os
import re

from twisted.trial.unittest import SynchronousTestCase

from mailsrv.imap import response
from mailsrv.imap.render import (
    ImapValue,
    address_list,
    body_structure,
    envelope,
    render_body_structure,
    render_envelope,
)
from mailsrv.imap.sections import header_fields, section_range
from mailsrv.mime.decoding import decode_part, decoded_size
from mailsrv.mime.structure import parse, read_range
from tests.test_mime import CORPUS, HERE, corpus_names, garbage_messages, load

GOLDEN = os.path.join(HERE, "golden", "dovecot.json")


# ---------------------------------------------------------------------------
# A small client-side reader of IMAP values, to read the golden answers.
# ---------------------------------------------------------------------------

_ATOM = re.compile(rb"[^ ()\[\]\r\n]+")
_ITEM = re.compile(rb"[A-Z0-9.]+(\[[^\]]*\])?(<\d+>)?")


def read_value(data: bytes, pos: int) -> tuple[ImapValue, int]:
    """The value written at ``pos`` (after any spaces), and where it ends."""
    while data[pos : pos + 1] == b" ":
        pos += 1
    reader = _READERS.get(data[pos : pos + 1], _read_atom)
    return reader(data, pos)


def _read_list(data: bytes, pos: int) -> tuple[ImapValue, int]:
    pos += 1
    items: list[ImapValue] = []
    while True:
        while data[pos : pos + 1] == b" ":
            pos += 1
        if data[pos : pos + 1] == b")":
            return tuple(items), pos + 1
        value, pos = read_value(data, pos)
        items.append(value)


def _read_quoted(data: bytes, pos: int) -> tuple[ImapValue, int]:
    out = bytearray()
    pos += 1
    while data[pos : pos + 1] != b'"':
        if data[pos : pos + 1] == b"\\":
            pos += 1
        out += data[pos : pos + 1]
        pos += 1
    return bytes(out), pos + 1


def _read_literal(data: bytes, pos: int) -> tuple[ImapValue, int]:
    if data[pos : pos + 1] == b"~":
        pos += 1
    close = data.index(b"}", pos)
    length = int(data[pos + 1 : close])
    start = close + 3
    return data[start : start + length], start + length


def _read_atom(data: bytes, pos: int) -> tuple[ImapValue, int]:
    match = _ATOM.match(data, pos)
    assert match is not None, data[pos : pos + 40]
    token = match.group(0)
    if token == b"NIL":
        return None, match.end()
    if token.isdigit():
        return int(token), match.end()
    return token, match.end()


_READERS = {b"(": _read_list, b'"': _read_quoted, b"{": _read_literal, b"~": _read_literal}


def fetch_items(answer: str) -> dict[str, ImapValue]:
    """``n (NAME value NAME value...)`` as imaplib hands it back."""
    data = answer.encode("latin-1")
    pos = data.index(b"(") + 1
    out: dict[str, ImapValue] = {}
    while pos < len(data) and data[pos : pos + 1] != b")":
        while data[pos : pos + 1] == b" ":
            pos += 1
        match = _ITEM.match(data, pos)
        assert match is not None
        value, pos = read_value(data, match.end())
        out[match.group(0).decode()] = value
    return out


def split_section(section: str) -> tuple[tuple[int, ...], str | None, list[str]]:
    match = re.match(r"^([\d.]*)(.*)$", section)
    assert match is not None
    numbers = tuple(int(x) for x in match.group(1).strip(".").split(".") if x)
    rest = match.group(2)
    fields: list[str] = []
    if "(" in rest:
        fields = rest[rest.index("(") + 1 : -1].split()
        rest = rest.split()[0]
    return numbers, rest or None, fields


# Where mailsrv answers differently from Dovecot on purpose.  Keys are
# (message, FETCH item as in the golden file).
DELIBERATE: dict[tuple[str, str], str] = {}


def _differ(names: list[str], items: list[str], why: str) -> None:
    for name in names:
        for item in items:
            DELIBERATE[(name, item)] = why


# RFC 2046 5.1.1: "the CRLF preceding the boundary delimiter line is
# conceptually attached to the boundary".  Dovecot counts it into a
# message/rfc822 or multipart part that precedes a boundary; we never do,
# so those parts are 2 octets shorter (and their BODY[n] lacks the CRLF).
_differ(
    ["06-rfc822-attached.eml"],
    ["BODY", "BODYSTRUCTURE", "BODY[2]", "BODY[2.TEXT]"],
    "RFC 2046 5.1.1 CRLF belongs to the delimiter",
)
_differ(
    ["53-rfc822-base64.eml"],
    ["BODY", "BODYSTRUCTURE", "BODY[2]"],
    "RFC 2046 5.1.1 CRLF belongs to the delimiter",
)
_differ(
    ["54-deep-nesting.eml"],
    ["BODY[" + ".".join(["1"] * n) + "]" for n in range(1, 10)],
    "RFC 2046 5.1.1 CRLF belongs to the delimiter",
)
# Parameters are returned as sent (RFC 3501 7.4.2 body parameter list);
# Dovecot joins RFC 2231 continuations (name*0*, name*1) into one.
_differ(["09-rfc2231-continuations.eml"], ["BODY", "BODYSTRUCTURE"], "parameters as sent")
# RFC 2046 5.1.1: a delimiter line is "--" boundary, optional "--", then
# only white space.  Dovecot also takes "--wsx" as the boundary "ws".
_differ(
    ["35-boundary-whitespace.eml"],
    ["BODY", "BODYSTRUCTURE", "BODY[2]", "BINARY 2"],
    "RFC 2046 5.1.1 delimiter syntax",
)
# RFC 2045 5.2: an invalid Content-Type means text/plain; charset=us-ascii.
# Dovecot answers ("" "" ...), which many clients cannot display.
_differ(["39-garbage-content-type.eml"], ["BODY", "BODYSTRUCTURE"], "RFC 2045 5.2 default")
# A multipart with no usable boundary: we make its whole body part 1 (text)
# so nothing in the message becomes unreachable; Dovecot gives an empty
# part 1.  RFC 2046 has no rule for this; ours loses no text.
for _name in (
    "41-no-boundary-param.eml",
    "42-boundary-never-appears.eml",
    "67-close-delimiter-only.eml",
):
    _differ([_name], ["BODY", "BODYSTRUCTURE", "BODY[1]", "BINARY 1"], "no boundary: keep text")
# RFC 3516 4.2: UNKNOWN-CTE concerns the part fetched.  Dovecot refuses
# BINARY[1] (7bit) because part 2 of the message is x-uuencode.
_differ(["51-unknown-cte.eml"], ["BINARY 1"], "RFC 3516 per-part CTE")
# Base64 with stray characters: we decode leniently (RFC 2045 6.8: "any
# characters outside of the base64 alphabet are to be ignored"); Dovecot
# refuses with [PARSE].
_differ(["52-base64-garbage.eml"], ["BINARY 1"], "RFC 2045 6.8 ignore non-alphabet")
# RFC 3516: BINARY removes the transfer encoding; Dovecot returns a base64
# message/rfc822 part undecoded (and says size 0).
_differ(["53-rfc822-base64.eml"], ["BINARY 2"], "RFC 3516 decode")
# We serve the octets stored; Dovecot rewrites NUL as 0x80 in BODY[].
_differ(["56-octet-stream.eml"], ["BODY[]", "BODY[1]", "BODY[TEXT]"], "octets as stored")
# RFC 3501 7.4.2 / the brief: envelope strings as sent; Dovecot collapses
# the double space between encoded words.
_differ(["64-adjacent-encoded-words.eml"], ["ENVELOPE"], "subject as sent")


class GoldenTests(SynchronousTestCase):
    """mailsrv against Dovecot 2.3 for every corpus message."""

    def setUp(self) -> None:
        if not os.path.exists(GOLDEN):
            raise self.skipTest("no golden file; run tests/golden/make_golden.py")
        with open(GOLDEN) as handle:
            self.golden = json.load(handle)["messages"]

    def check(self, name: str, item: str, ours: object, theirs: object) -> None:
        if (name, item) in DELIBERATE:
            self.assertNotEqual(ours, theirs, f"{name} {item} agrees now: drop the exception")
            return
        self.assertEqual(ours, theirs, f"{name} {item}")

    def test_corpus_is_covered(self) -> None:
        self.assertEqual(sorted(self.golden), corpus_names())

    def test_structure_items(self) -> None:
        for name, record in sorted(self.golden.items()):
            if "append" in record:
                continue
            data = load(name)
            structure = parse(data)
            items = fetch_items(record["fetch"])
            self.check(name, "RFC822.SIZE", structure.size, items["RFC822.SIZE"])
            self.check(name, "ENVELOPE", envelope(structure), items["ENVELOPE"])
            self.check(name, "BODY", body_structure(structure, False), items["BODY"])
            self.check(
                name, "BODYSTRUCTURE", body_structure(structure, True), items["BODYSTRUCTURE"]
            )

    def test_sections(self) -> None:
        for name, record in sorted(self.golden.items()):
            if "append" in record:
                continue
            data = load(name)
            structure = parse(data)
            for section, answer in record["body"].items():
                theirs = None if answer is None else next(iter(fetch_items(answer).values()))
                numbers, kind, fields = split_section(section)
                ours: bytes | None
                if kind is not None and kind.startswith("HEADER.FIELDS"):
                    ours = header_fields(structure, data, fields, kind.endswith("NOT"), numbers)
                else:
                    where = section_range(structure, numbers, kind)
                    ours = None if where is None else read_range(data, *where)
                if ours is None and theirs == b"":
                    continue  # a section the message lacks: empty either way
                self.check(name, f"BODY[{section}]", ours, theirs)

    def test_binary(self) -> None:
        for name, record in sorted(self.golden.items()):
            if "append" in record:
                continue
            data = load(name)
            structure = parse(data)
            for part, answer in record["binary"].items():
                numbers = tuple(int(x) for x in part.split("."))
                theirs: tuple[object, object] = (None, None)
                if not answer.startswith("NO"):
                    values = list(fetch_items(answer).values())
                    theirs = (values[0], values[1])
                ours = (
                    decode_part(structure, data, numbers),
                    decoded_size(structure, data, numbers),
                )
                self.check(name, f"BINARY {part}", ours, theirs)


class EnvelopeTests(SynchronousTestCase):
    """ENVELOPE values checked by hand against RFC 3501 7.4.2."""

    def envelope(self, name: str) -> bytes:
        return render_envelope(envelope(parse(load(name))))

    def test_plain(self) -> None:
        self.assertEqual(
            self.envelope("01-plain-ascii.eml"),
            b'("Mon, 7 Feb 1994 21:52:25 -0800 (PST)" "Plain text" '
            b'(("Alice Example" NIL "alice" "example.org")) '
            b'(("Alice Example" NIL "alice" "example.org")) '
            b'(("Alice Example" NIL "alice" "example.org")) '
            b'(("Bob Example" NIL "bob" "example.net")) NIL NIL NIL "<plain1@example.org>")',
        )

    def test_groups(self) -> None:
        env = envelope(parse(load("21-group-to.eml")))
        self.assertEqual(
            env[5],
            (
                (None, None, b"Team", None),
                (None, None, b"bob", b"example.net"),
                (b"Carol C.", None, b"carol", b"example.com"),
                (None, None, None, None),
                (None, None, b"dave", b"example.com"),
            ),
        )
        self.assertEqual(env[6], ((None, None, b"Empty group", None), (None, None, None, None)))

    def test_sender_reply_to_and_ids(self) -> None:
        env = envelope(parse(load("28-sender-replyto.eml")))
        self.assertEqual(env[3], ((b"Secretary", None, b"sec", b"example.org"),))
        self.assertEqual(env[4], ((None, None, b"list", b"example.org"),))
        env = envelope(parse(load("29-in-reply-to.eml")))
        self.assertEqual(env[8], b"<plain1@example.org>")
        self.assertEqual(env[9], b"<reply1@example.org>")

    def test_comments_route_and_missing_domain(self) -> None:
        env = envelope(parse(load("23-address-comments.eml")))
        self.assertEqual(env[2], ((b"Alice Example", None, b"alice", b"example.org"),))
        self.assertEqual(env[5][0], (b"Bob", None, b"bob", b"example.net"))  # type: ignore[index]
        env = envelope(parse(load("25-source-route.eml")))
        self.assertEqual(
            env[5], ((b"Bob", b"@relay1.example,@relay2.example", b"bob", b"example.net"),)
        )
        env = envelope(parse(load("24-missing-domain.eml")))
        self.assertEqual(env[2], ((None, None, b"root", b"MISSING_DOMAIN"),))

    def test_comments_are_no_addresses(self) -> None:
        # RFC 5322 3.2.2: comments are no part of an address.
        env = envelope(
            parse(
                b"From: <user-from (comment)@ (comment) domain.org>\r\n"
                b"Reply-To: <alice@example.org> (Alice)\r\n"
                b"To: (nobody in particular)\r\n"
                b"Cc: group:;, group2: (foo) ;\r\n\r\n"
            )
        )
        self.assertEqual(env[2], ((None, None, b"user-from", b"domain.org"),))
        self.assertEqual(env[4], ((None, None, b"alice", b"example.org"),))
        self.assertIsNone(env[5])  # "To: (nobody in particular)"
        self.assertEqual(
            env[6],
            (
                (None, None, b"group", None),
                (None, None, None, None),
                (None, None, b"group2", None),
                (None, None, None, None),
            ),
        )
        # RFC 5322 4.4 (obs-mbox-list, obs-group-list): an element of only
        # comments is an empty element, after a comma too (where Dovecot 2.3
        # reports a MISSING_MAILBOX member).
        self.assertEqual(
            address_list("x: a@b (c), (c3) ;"),
            ((None, None, b"x", None), (b"c", None, b"a", b"b"), (None, None, None, None)),
        )
        # Only the old "addr-spec (Full Name)" takes its name from a comment.
        self.assertEqual(address_list("(c0) a@b"), ((None, None, b"a", b"b"),))
        self.assertEqual(address_list("<a@b> (Real)"), ((None, None, b"a", b"b"),))
        self.assertEqual(address_list("a (c) @ b (d)"), ((b"d", None, b"a", b"b"),))

    def test_encoded_words_left_as_sent(self) -> None:
        env = envelope(parse(load("63-encoded-display-name.eml")))
        self.assertEqual(
            env[2], ((b"=?UTF-8?Q?J=C3=B6rg_M=C3=BCller?=", None, b"joerg", b"example.de"),)
        )
        self.assertEqual(env[1], b"Encoded names")

    def test_no_headers_all_nil(self) -> None:
        env = envelope(parse(load("68-no-envelope-headers.eml")))
        self.assertEqual(env, (None,) * 10)

    def test_strings_go_out_as_sent(self) -> None:
        # Message text is never escaped: a tab is quoted as is, a quote or
        # backslash makes a literal (as Dovecot sends them), and so do 1024
        # octets; the server's own strings are quoted up to 1024 octets.
        def subject(value: bytes) -> bytes:
            structure = parse(b"Subject: " + value + b"\r\n\r\n")
            rendered = render_envelope(envelope(structure))
            assert rendered.startswith(b"(NIL ") and rendered.endswith(b" NIL NIL NIL NIL)")
            return rendered[5 : -len(b" NIL NIL NIL NIL NIL NIL NIL NIL)")]

        self.assertEqual(subject(b"a\tb"), b'"a\tb"')
        self.assertEqual(subject(b'say "hi"'), b'{8}\r\nsay "hi"')
        self.assertEqual(subject(b"a\\b"), b"{3}\r\na\\b")
        self.assertEqual(subject(b"x" * 1023), b'"' + b"x" * 1023 + b'"')
        self.assertEqual(subject(b"x" * 1024), b"{1024}\r\n" + b"x" * 1024)

    def test_eight_bit_header_rendered_as_literal(self) -> None:
        rendered = self.envelope("43-8bit-headers.eml")
        subject = "Grüße aus Köln \u2013 ünïcödé".encode()
        self.assertIn(b"{%d}\r\n" % len(subject) + subject, rendered)


class BodyStructureTests(SynchronousTestCase):
    """BODYSTRUCTURE checked by hand against RFC 3501 7.4.2 and 9."""

    def test_plain_text(self) -> None:
        # Body "Hello Bob,\r\n\r\nThis is a plain text message.\r\n\r\n-- \r\nAlice\r\n":
        # 59 octets, 6 lines.
        structure = parse(load("01-plain-ascii.eml"))
        self.assertEqual(
            render_body_structure(body_structure(structure, True)),
            b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 59 6 NIL NIL NIL NIL)',
        )
        self.assertEqual(
            render_body_structure(body_structure(structure, False)),
            b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 59 6)',
        )

    def test_alternative_has_no_space_between_bodies(self) -> None:
        structure = parse(load("04-html-alternative.eml"))
        self.assertEqual(
            render_body_structure(body_structure(structure, True)),
            b'(("text" "plain" ("charset" "utf-8") NIL NIL "7bit" 22 1 NIL NIL NIL NIL)'
            b'("text" "html" ("charset" "utf-8") NIL NIL "7bit" 56 1 NIL NIL NIL NIL)'
            b' "alternative" ("boundary" "alt-1") NIL NIL NIL)',
        )

    def test_message_rfc822(self) -> None:
        value = body_structure(parse(load("06-rfc822-attached.eml")), True)
        part = value[1]
        assert isinstance(part, tuple)
        self.assertEqual(
            part[:7], (b"message", b"rfc822", None, None, b"Forwarded message", b"7bit", 354)
        )
        envelope = part[7]
        assert isinstance(envelope, tuple)
        self.assertEqual(envelope[1], b"Original message")
        self.assertEqual(part[9], 16)
        self.assertEqual(part[11], (b"inline", (b"filename", b"original.eml")))

    def test_extension_data(self) -> None:
        value = body_structure(parse(load("30-extension-fields.eml")), True)
        self.assertEqual(
            value,
            (
                (
                    b"text",
                    b"plain",
                    (b"charset", b"us-ascii"),
                    b"<text1@example.org>",
                    b"The text",
                    b"7bit",
                    5,
                    0,
                    b"Q2hlY2sgSW50ZWdyaXR5IQ==",
                    (b"inline", None),
                    (b"en-GB", b"fr"),
                    b"text.txt",
                ),
                b"mixed",
                (b"boundary", b"ext"),
                None,
                (b"en",),
                b"http://example.org/msg",
            ),
        )

    def test_digest_default_is_message(self) -> None:
        value = body_structure(parse(load("07-digest.eml")), False)
        assert isinstance(value, tuple)
        self.assertEqual(
            [v[:2] for v in value[:3] if isinstance(v, tuple)],
            [(b"message", b"rfc822")] * 2 + [(b"text", b"plain")],
        )

    def test_grammar_serialize_reads_the_same_values(self) -> None:
        # The IMAP writer's generic serializer accepts these values; only the
        # spaces between adjacent bodies/addresses differ from ours.
        structure = parse(load("05-mixed-alternative-related.eml"))
        value = body_structure(structure, True)
        generic = response.serialize(value)
        self.assertEqual(
            generic.replace(b") (", b")("), render_body_structure(value).replace(b") (", b")(")
        )


class SameBoundaryTests(SynchronousTestCase):
    """A multipart nested in one with the same boundary (Outlook Express for
    Mac): a delimiter line is the innermost open multipart's, as Dovecot
    reads it, so the inner multipart has its own parts."""

    def section(self, name: str, part: tuple[int, ...], kind: str | None = None) -> bytes:
        data = load(name)
        where = section_range(parse(data), part, kind)
        assert where is not None, part
        return read_range(data, *where)

    def test_outlook_express_for_mac(self) -> None:
        name = "71-same-boundary-nested.eml"
        value = body_structure(parse(load(name)), False)
        self.assertEqual(
            render_body_structure(value),
            b'((("text" "plain" ("charset" "US-ASCII") NIL NIL "7bit" 35 1)'
            b'("text" "html" ("charset" "US-ASCII") NIL NIL "quoted-printable" 61 1) '
            b'"alternative")'
            b'("application" "octet-stream" ("name" "notes.txt") NIL NIL "base64" 10) "mixed")',
        )
        self.assertEqual(self.section(name, (1, 1)), b"The readable text of the message.\r\n")
        self.assertEqual(
            self.section(name, (1, 2)),
            b"<HTML><BODY>The readable text of the message.</BODY></HTML>\r\n",
        )
        self.assertEqual(self.section(name, (2,)), b"bm90ZXMK\r\n")

    def test_first_delimiter_right_after_the_header(self) -> None:
        # The inner header's blank line ends it, though its first delimiter
        # follows at once (RFC 2046 5.1.1: no preamble, no CRLF before it).
        name = "72-same-boundary-no-preamble.eml"
        self.assertEqual(
            self.section(name, (1,), "MIME"),
            b"Content-Type: multipart/alternative; boundary=same\r\n\r\n",
        )
        self.assertEqual(self.section(name, (1, 1)), b"Plain text.")
        self.assertEqual(self.section(name, (1, 2)), b"<p>HTML text.</p>")
        self.assertEqual(self.section(name, (2,)), b"Second part.")


class SectionTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.data = load("06-rfc822-attached.eml")
        self.structure = parse(self.data)

    def section(self, part: tuple[int, ...], kind: str | None) -> bytes | None:
        where = section_range(self.structure, part, kind)
        return None if where is None else read_range(self.data, *where)

    def test_whole_header_text(self) -> None:
        self.assertEqual(self.section((), None), self.data)
        header = self.section((), "HEADER")
        text = self.section((), "TEXT")
        assert header is not None and text is not None
        self.assertTrue(header.endswith(b"\r\n\r\n"))
        self.assertEqual(header + text, self.data)

    def test_parts_and_mime(self) -> None:
        self.assertEqual(self.section((1,), None), b"Forwarding this.\r\n")
        self.assertEqual(
            self.section((1,), "MIME"), b"Content-Type: text/plain; charset=us-ascii\r\n\r\n"
        )
        self.assertEqual(self.section((2, 1), None), b"Original text.")
        self.assertEqual(
            self.section(
                (
                    2,
                    2,
                ),
                "MIME",
            ),
            b"Content-Type: text/html\r\n\r\n",
        )
        inner_header = self.section((2,), "HEADER")
        inner_text = self.section((2,), "TEXT")
        assert inner_header is not None and inner_text is not None
        self.assertTrue(inner_header.startswith(b"From: Carol <carol@example.com>\r\n"))
        self.assertEqual(self.section((2,), None), inner_header + inner_text)

    def test_missing_sections(self) -> None:
        self.assertIsNone(self.section((3,), None))
        self.assertIsNone(self.section((1, 1), None))
        self.assertIsNone(self.section((1,), "HEADER"))
        self.assertIsNone(self.section((), "MIME"))
        self.assertIsNone(self.section((0,), None))

    def test_single_part_message_has_part_one(self) -> None:
        data = load("01-plain-ascii.eml")
        structure = parse(data)
        self.assertEqual(section_range(structure, (1,), None), section_range(structure, (), "TEXT"))
        self.assertIsNone(section_range(structure, (2,), None))

    def test_header_fields(self) -> None:
        self.assertEqual(
            header_fields(self.structure, self.data, ["subject", "FROM"], False),
            b"From: Alice Example <alice@example.org>\r\nSubject: Fwd: Original message\r\n\r\n",
        )
        self.assertEqual(
            header_fields(self.structure, self.data, ["subject"], False, (2,)),
            b"Subject: Original message\r\n\r\n",
        )
        negated = header_fields(self.structure, self.data, ["Subject", "Content-Type"], True)
        assert negated is not None
        self.assertNotIn(b"Subject", negated)
        self.assertIn(b"Message-ID:", negated)
        self.assertEqual(header_fields(self.structure, self.data, ["x-none"], False), b"\r\n")

    def test_folded_field_kept_as_sent(self) -> None:
        data = load("66-folded-headers.eml")
        self.assertEqual(
            header_fields(parse(data), data, ["subject"], False),
            b"Subject: This subject is long enough that it has been folded\r\n over two lines"
            b"\r\n\r\n",
        )

    def test_file_object_source(self) -> None:
        handle = io.BytesIO(self.data)
        self.assertEqual(
            header_fields(self.structure, handle, ["subject"], False),
            b"Subject: Fwd: Original message\r\n\r\n",
        )


class MalformedTests(SynchronousTestCase):
    def test_empty_message(self) -> None:
        structure = parse(b"")
        self.assertEqual(structure.size, 0)
        self.assertEqual(
            render_body_structure(body_structure(structure, False)),
            b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 0 0)',
        )
        self.assertEqual(section_range(structure, (), "HEADER"), (0, 0))
        self.assertEqual(envelope(structure), (None,) * 10)

    def test_headers_only(self) -> None:
        data = load("47-headers-only.eml")
        structure = parse(data)
        self.assertEqual(section_range(structure, (), "HEADER"), (0, len(data)))
        self.assertEqual(section_range(structure, (), "TEXT"), (len(data), 0))
        self.assertEqual(envelope(structure)[1], b"Headers only, no blank line")

    def test_missing_final_boundary(self) -> None:
        data = load("40-missing-final-boundary.eml")
        structure = parse(data)
        where = section_range(structure, (2,), None)
        assert where is not None
        self.assertEqual(read_range(data, *where), b"<p>Part two never closed.</p>\r\n")

    def test_no_boundary_keeps_text_as_part_one(self) -> None:
        data = load("42-boundary-never-appears.eml")
        structure = parse(data)
        where = section_range(structure, (1,), None)
        assert where is not None
        self.assertEqual(read_range(data, *where), b"Just some text,\r\nno parts.\r\n")

    def test_bare_lf_message(self) -> None:
        with open(os.path.join(CORPUS, "44-bare-lf.eml"), "rb") as handle:
            data = handle.read()
        self.assertNotIn(b"\r", data)
        structure = parse(data)
        # Sizes count the octets present: LF ends are one octet each.
        value = body_structure(structure, False)
        self.assertEqual(
            value[0], (b"text", b"plain", (b"charset", b"us-ascii"), None, None, b"7bit", 19, 1)
        )
        self.assertEqual(envelope(structure)[1], b"Bare LF line ends")

    def test_garbage_and_duplicates(self) -> None:
        value = body_structure(parse(load("39-garbage-content-type.eml")), False)
        self.assertEqual(value[:2], (b"text", b"plain"))
        value = body_structure(parse(load("49-duplicate-headers.eml")), False)
        self.assertEqual(value[:2], (b"text", b"html"))

    def test_anything_parsed_renders(self) -> None:
        depth = 500
        bomb = b"".join(
            b"Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n" % (i, i)
            for i in range(depth)
        )
        corpus = [load(name) for name in corpus_names()]
        for data in [bomb + b"x\r\n", *garbage_messages(), *corpus]:
            structure = parse(data)
            self.assertTrue(render_envelope(envelope(structure)).startswith(b"("))
            self.assertTrue(render_body_structure(body_structure(structure, True)).endswith(b")"))
