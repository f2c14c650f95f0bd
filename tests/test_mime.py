"""The MIME model (mailsrv/mime/): structure, fields, addresses, decoding.

What IMAP makes of the model (ENVELOPE, BODYSTRUCTURE, sections) and the
comparison with Dovecot's answers are tests/test_imap_render.py.
"""

from __future__ import annotations

import glob
import io
import os
import random

from twisted.trial.unittest import SynchronousTestCase

from mailsrv.mime.addresses import Group, address_text, parse_addresses
from mailsrv.mime.decoding import decode_base64, decode_part, decode_words, decoded_size, text_parts
from mailsrv.mime.fields import filter_fields, raw_fields, read_header
from mailsrv.mime.structure import MAX_DEPTH, MAX_PARTS, MessageStructure, Part, find_part, parse

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "corpus")


def load(name: str) -> bytes:
    """A corpus message in the wire form storage hands out (LF -> CRLF)."""
    with open(os.path.join(CORPUS, name), "rb") as handle:
        data = handle.read()
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def corpus_names() -> list[str]:
    return sorted(os.path.basename(p) for p in glob.glob(os.path.join(CORPUS, "*.eml")))


class StructureTests(SynchronousTestCase):
    def test_parts_located(self) -> None:
        data = load("06-rfc822-attached.eml")
        root = parse(data).root
        self.assertEqual((root.type, root.subtype), ("multipart", "mixed"))
        first, attached = root.children
        self.assertEqual(
            data[first.body_offset : first.body_offset + first.body_size], b"Forwarding this.\r\n"
        )
        self.assertEqual(
            data[first.header_offset : first.body_offset],
            b"Content-Type: text/plain; charset=us-ascii\r\n\r\n",
        )
        embedded = attached.message
        assert embedded is not None and embedded.envelope_fields is not None
        self.assertEqual(embedded.header_offset, attached.body_offset)
        self.assertEqual(embedded.envelope_fields[1], "Original message")
        self.assertEqual(attached.disposition, ("inline", (("filename", "original.eml"),)))

    def test_find_part(self) -> None:
        structure = parse(load("06-rfc822-attached.eml"))
        root = structure.root
        self.assertIs(find_part(structure, (1,)), root.children[0])
        embedded = root.children[1].message
        assert embedded is not None
        # The parts of a message/rfc822 part are those of its message.
        self.assertIs(find_part(structure, (2, 2)), embedded.children[1])
        for missing in ((3,), (0,), (1, 1), (2, 3)):
            self.assertIsNone(find_part(structure, missing), missing)
        # A single-part message has part 1: itself.
        single = parse(load("01-plain-ascii.eml"))
        self.assertIs(find_part(single, (1,)), single.root)
        self.assertIsNone(find_part(single, (2,)))

    def test_file_object_source(self) -> None:
        data = load("06-rfc822-attached.eml")
        self.assertEqual(parse(io.BytesIO(data)), parse(data))

    def test_garbage_and_duplicates(self) -> None:
        # RFC 2045 5.2: an invalid Content-Type means text/plain.
        root = parse(load("39-garbage-content-type.eml")).root
        self.assertEqual(
            (root.type, root.subtype, root.params), ("text", "plain", (("charset", "us-ascii"),))
        )
        root = parse(load("49-duplicate-headers.eml")).root
        self.assertEqual((root.type, root.subtype), ("text", "html"))

    def test_recursion_bomb(self) -> None:
        depth = 500
        head = b"".join(
            b"Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n" % (i, i)
            for i in range(depth)
        )
        structure = parse(head + b"Content-Type: text/plain\r\n\r\nx\r\n")
        deepest = structure.root
        levels = 0
        while deepest.children:
            deepest = deepest.children[0]
            levels += 1
        self.assertEqual(levels, MAX_DEPTH)
        self.assertEqual((deepest.type, deepest.subtype), ("application", "octet-stream"))
        self.assertEqual(MessageStructure.from_bytes(structure.to_bytes()), structure)

    def test_parts_beyond_the_limit_are_not_made(self) -> None:
        """A message of more parts than MAX_PARTS (millions fit in 64 MiB,
        each costing CPU and memory on every FETCH BODYSTRUCTURE) keeps its
        first MAX_PARTS parts; a multipart that would have more is not split
        further, and ends where it ended before (its close delimiter, or
        else its parent's next delimiter line)."""
        many = MAX_PARTS + 5
        inner = b"".join(b"--in\r\n\r\npart %d\r\n" % i for i in range(many)) + b"--in--\r\n"
        head = (
            b"Content-Type: multipart/mixed; boundary=out\r\n\r\n"
            b"--out\r\n\r\nfirst\r\n"
            b"--out\r\nContent-Type: multipart/mixed; boundary=in\r\n\r\n"
        )
        tail = b"--out\r\n\r\nlast\r\n--out--\r\n"
        for data in (head + inner + tail, head + inner.replace(b"--in--\r\n", b"") + tail):
            structure = parse(data)
            check_offsets(self, structure)
            first, inside = structure.root.children  # "last" is beyond the limit
            self.assertEqual(
                data[first.body_offset : first.body_offset + first.body_size], b"first"
            )
            self.assertEqual(len(inside.children), MAX_PARTS - 2)
            end = inside.children[-1]
            self.assertEqual(
                data[end.body_offset : end.body_offset + end.body_size],
                b"part %d" % (MAX_PARTS - 3),
            )
            self.assertEqual(inside.body_offset + inside.body_size, data.index(b"\r\n" + tail))
            self.assertEqual(structure.root.body_offset + structure.root.body_size, len(data))

    def test_random_garbage_never_raises(self) -> None:
        for data in garbage_messages():
            check_offsets(self, parse(data))

    def test_large_message_single_pass(self) -> None:
        line = b"x" * 998 + b"\r\n"
        body = line * 20000  # 20 MB
        data = (
            b"Content-Type: multipart/mixed; boundary=zz\r\n\r\n--zz\r\n\r\n"
            + body
            + b"\r\n--zz--\r\n"
        )
        structure = parse(data)
        self.assertEqual(structure.root.children[0].body_size, len(body))
        self.assertEqual(structure.root.children[0].lines, 20000)


def garbage_messages() -> list[bytes]:
    """300 random messages made of MIME's trickier pieces (fixed seed)."""
    rng = random.Random(5)
    alphabet = [
        b"--b",
        b"\r\n",
        b"\n",
        b":",
        b" ",
        b"Content-Type: multipart/mixed; boundary=b",
        b"message/rfc822",
        b"\xff",
        b"(",
        b'"',
        b"<",
        b"@",
        b";",
    ]
    return [b"".join(rng.choice(alphabet) for _ in range(rng.randrange(60))) for _ in range(300)]


class SerializationTests(SynchronousTestCase):
    def test_round_trip_every_corpus_message(self) -> None:
        for name in corpus_names():
            structure = parse(load(name))
            cached = structure.to_bytes()
            self.assertIsInstance(cached, bytes)
            self.assertEqual(MessageStructure.from_bytes(cached), structure, name)

    def test_bad_cache_rejected(self) -> None:
        for bad in (b"", b"[]", b"[99, 1, []]", b"\xff", b"[1, 5, [1]]"):
            with self.assertRaises(ValueError):
                MessageStructure.from_bytes(bad)

    def test_value_stored_by_an_earlier_release_decodes(self) -> None:
        # Written by the model before it moved to mailsrv/mime/ (format 2):
        # the Maildir index keeps such values, and they must still be served.
        stored = (
            b'[2,827,[0,256,256,571,28,"multipart","mixed",[["boundary","fwd"]],null,null,"7bit",'
            b'null,null,[],null,["Mon, 7 Feb 1994 21:52:25 -0800 (PST)","Fwd: Original message",'
            b'"Alice Example <alice@example.org>",null,null,"Bob Example <bob@example.net>",null,'
            b'null,null,"<1eb0d908@example.org>"],[[263,46,309,18,1,"text","plain",[["charset",'
            b'"us-ascii"]],null,null,"7bit",null,null,[],null,null,[],null],[336,126,462,354,16,'
            b'"message","rfc822",[],null,"Forwarded message","7bit",null,["inline",[["filename",'
            b'"original.eml"]]],[],null,null,[],[462,230,692,124,8,"multipart","alternative",'
            b'[["boundary","in-alt"]],null,null,"7bit",null,null,[],null,["Sun, 6 Feb 1994 '
            b'10:00:00 +0000","Original message","Carol <carol@example.com>",null,null,'
            b'"alice@example.org",null,null,null,"<orig@example.com>"],[[702,28,730,14,0,"text",'
            b'"plain",[["charset","us-ascii"]],null,null,"7bit",null,null,[],null,null,[],null],'
            b'[756,27,783,21,0,"text","html",[["charset","us-ascii"]],null,null,"7bit",null,null,'
            b"[],null,null,[],null]],null]]],null]]"
        )
        structure = parse(load("06-rfc822-attached.eml"))
        self.assertEqual(MessageStructure.from_bytes(stored), structure)
        self.assertEqual(structure.to_bytes(), stored)


class FieldsTests(SynchronousTestCase):
    def test_read_header_and_values(self) -> None:
        data = load("49-duplicate-headers.eml")
        block = read_header(io.BytesIO(data))
        self.assertTrue(data.startswith(block))
        self.assertTrue(block.endswith(b"\r\n\r\n"))
        self.assertEqual(raw_fields(block, "SUBJECT"), [b"First subject", b"Second subject"])

    def test_filter_fields(self) -> None:
        block = b"From: a@b\r\nSubject: one\r\n  two\r\nnot a field\r\nX: y\r\n\r\n"
        self.assertEqual(
            filter_fields(block, ["subject", "x"], False),
            b"Subject: one\r\n  two\r\nX: y\r\n\r\n",
        )
        # The negated form keeps lines that are no field, as Dovecot does.
        self.assertEqual(
            filter_fields(block, ["Subject"], True),
            b"From: a@b\r\nnot a field\r\nX: y\r\n\r\n",
        )
        # No blank line in the block (a headers-only message): none added.
        self.assertEqual(filter_fields(b"X: y", ["x"], False), b"X: y\r\n")


class AddressTests(SynchronousTestCase):
    def test_mailboxes_and_groups(self) -> None:
        self.assertEqual(
            parse_addresses(
                'Team: bob@example.net, "Carol C." <carol@example.com>;, dave@example.com'
            ),
            (
                Group(
                    "Team",
                    (
                        (None, None, "bob", "example.net"),
                        ("Carol C.", None, "carol", "example.com"),
                    ),
                ),
                (None, None, "dave", "example.com"),
            ),
        )
        self.assertEqual(
            parse_addresses("Bob <@relay1.example,@relay2.example:bob@example.net>"),
            (("Bob", "@relay1.example,@relay2.example", "bob", "example.net"),),
        )
        # An unterminated group ends with the list.
        self.assertEqual(parse_addresses("g: a@b"), (Group("g", ((None, None, "a", "b"),)),))

    def test_comments_are_no_addresses(self) -> None:
        # RFC 5322 3.2.2: comments are no part of an address; RFC 5322 4.4:
        # an element of only comments is an empty element.
        self.assertEqual(parse_addresses("(nobody in particular)"), ())
        self.assertEqual(
            parse_addresses("<user-from (comment)@ (comment) domain.org>"),
            ((None, None, "user-from", "domain.org"),),
        )
        self.assertEqual(
            parse_addresses("x: a@b (c), (c3) ;"), (Group("x", (("c", None, "a", "b"),)),)
        )
        # Only the old "addr-spec (Full Name)" takes its name from a comment.
        self.assertEqual(parse_addresses("(c0) a@b"), ((None, None, "a", "b"),))
        self.assertEqual(parse_addresses("<a@b> (Real)"), ((None, None, "a", "b"),))
        self.assertEqual(parse_addresses("a (c) @ b (d)"), (("d", None, "a", "b"),))

    def test_missing_parts_filled_in(self) -> None:
        # As Dovecot fills them, so every mailbox has a local part and domain.
        self.assertEqual(parse_addresses("root"), ((None, None, "root", "MISSING_DOMAIN"),))
        self.assertEqual(parse_addresses("Name <@x>"), (("Name", None, "MISSING_MAILBOX", "x"),))

    def test_address_text(self) -> None:
        # What SEARCH FROM/TO/CC/BCC match: the addresses written out as
        # Dovecot writes them for its search, comments left out.
        cases = {
            "<user-from (comment)@ (comment) domain.org>": "<user-from@domain.org>",
            "user-from@domain.org (RealFrom)": "RealFrom <user-from@domain.org>",
            "Bob Example <bob@example.net>": '"Bob Example" <bob@example.net>',
            "root": "<root@MISSING_DOMAIN>",
            "<@route:user@domain>": "<@route:user@domain>",
            "team: a@b, C <c@d>;, nobody:;": "team: <a@b>, C <c@d>;, nobody:;",
            "group:;, group2: (foo) ;": "group:;, group2:;",
            "=?UTF-8?Q?J=C3=B6rg?= <j@x>": "Jörg <j@x>",
            "(just a comment)": "",
        }
        for value, text in cases.items():
            self.assertEqual(address_text(value), text, value)


class DecodingTests(SynchronousTestCase):
    def test_base64_and_qp(self) -> None:
        data = load("19-attachment-base64.eml")
        structure = parse(data)
        self.assertEqual(decode_part(structure, data, (2,)), bytes(range(256)) * 3)
        self.assertEqual(decoded_size(structure, data, (2,)), 768)
        data = load("20-attachment-qp.eml")
        structure = parse(data)
        self.assertEqual(
            decode_part(structure, data, (2,)),
            "name,price\r\nKäse,3.50\r\nvery long line continued,0".encode(),
        )

    def test_lenient_base64(self) -> None:
        self.assertEqual(decode_base64(b"SGVs bG8g\r\nd29y!!bGQh\r\n=junk"), b"Hello world!")
        self.assertEqual(decode_base64(b"SGVsbG8"), b"Hello")
        self.assertEqual(decode_base64(b"S"), b"")

    def test_unknown_cte_and_identity(self) -> None:
        data = load("51-unknown-cte.eml")
        structure = parse(data)
        self.assertIsNone(decode_part(structure, data, (2,)))
        self.assertIsNone(decoded_size(structure, data, (2,)))
        self.assertEqual(decode_part(structure, data, (1,)), b"See attached.")
        self.assertIsNone(decode_part(structure, data, (9,)))
        self.assertEqual(decode_part(structure, data, ()), data)

    def test_decoded_headers(self) -> None:
        cases = {
            "10-subject-utf8-b.eml": "Äpfel und Birnen — €",
            "11-subject-latin1-q.eml": "Café crème",
            "12-subject-iso2022jp.eml": "日本語の件名",
            "13-subject-koi8r.eml": "Привет мир",
            "43-8bit-headers.eml": "Grüße aus Köln \u2013 ünïcödé",
            "64-adjacent-encoded-words.eml": "Hello Wörld  and more",
        }

        def decoded(data: bytes, name: str) -> list[str]:
            # What SEARCH does: the header block, each field's raw values,
            # then RFC 2047 decoding.
            block = read_header(io.BytesIO(data))
            return [decode_words(v) for v in raw_fields(block, name)]

        for name, subject in cases.items():
            self.assertEqual(decoded(load(name), "Subject"), [subject], name)
        self.assertEqual(
            decoded(load("49-duplicate-headers.eml"), "subject"),
            ["First subject", "Second subject"],
        )

    def test_unknown_charset_replaced(self) -> None:
        self.assertEqual(decode_words(b"=?x-nope?q?caf=C3=A9?="), "café")
        self.assertEqual(decode_words(b"=?x-nope?q?caf=E9?="), "caf\ufffd")

    def test_text_parts(self) -> None:
        data = load("02-plain-utf8-qp.eml")
        (text,) = list(text_parts(parse(data), data))
        self.assertIn("Grüße aus München!", text)
        self.assertIn("umgebrochen werden muss.\r\nCafé €5", text)
        data = load("06-rfc822-attached.eml")
        texts = list(text_parts(parse(data), data))
        self.assertEqual(texts, ["Forwarding this.\r\n", "Original text.", "<p>Original text.</p>"])
        data = load("58-unknown-charset.eml")
        self.assertEqual(list(text_parts(parse(data), data)), ["Caf\ufffd \ufffd\r\n"])


def check_offsets(case: SynchronousTestCase, structure: MessageStructure) -> None:
    """Every part lies inside its parent and header+body are contiguous."""

    def walk(part: Part, start: int, end: int) -> None:
        case.assertTrue(start <= part.header_offset <= end)
        case.assertEqual(part.header_offset + part.header_size, part.body_offset)
        case.assertTrue(part.body_offset + part.body_size <= end)
        for child in part.children:
            walk(child, part.body_offset, part.body_offset + part.body_size)
        if part.message is not None:
            case.assertEqual(part.message.header_offset, part.body_offset)
            case.assertEqual(part.message.header_size + part.message.body_size, part.body_size)
            walk(part.message, part.body_offset, part.body_offset + part.body_size)

    root = structure.root
    case.assertEqual(root.header_offset, 0)
    case.assertEqual(root.header_size + root.body_size, structure.size)
    walk(root, 0, structure.size)


class CorpusPropertyTests(SynchronousTestCase):
    def test_corpus_size(self) -> None:
        self.assertGreaterEqual(len(corpus_names()), 60)

    def test_every_message_parses_consistently(self) -> None:
        for name in corpus_names():
            with open(os.path.join(CORPUS, name), "rb") as handle:
                raw = handle.read()
            if name != "44-bare-lf.eml":
                self.assertNotIn(b"\n", raw.replace(b"\r\n", b""), name)
            structure = parse(raw)
            self.assertEqual(structure.size, len(raw))
            check_offsets(self, structure)
