"""RFC 6855 7 / RFC 6858 over real sockets: a message delivered with UTF-8
in its header is served to a session that did not ENABLE UTF8=ACCEPT as a
synthetic message in ASCII (every FETCH item, sizes included), to one that
did as stored; SEARCH finds it from both.  Memory and Maildir backends (the
Maildir message arrives through mailsrv.storage.deliver, the path of
``mailsrv deliver`` and LMTP), imaplib for a client's view, and POP3's
RETR and TOP with and without its UTF8 command (RFC 6856)."""

from __future__ import annotations

import email
import email.header
import imaplib
import io
import os
import re
from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from mailsrv.interfaces import IStorage
from tests.pop3_helpers import Fixture, TCPServer, retr_body
from tests.test_imap_backends import InMemory, _BackendBase
from tests.test_imap_imaplib import ImaplibBase

#: What an SMTPUTF8 MTA delivers: UTF-8 in From, To and Subject.
STORED_HEADER = (
    "From: Jörg Müller <joerg@example.org>\r\n"
    "To: Zoë <zoe@bücher.example>, plain@example.com\r\n"
    "Subject: Grüße aus Köln\r\n"
    "Date: Fri, 4 Dec 2026 20:00:00 +0000\r\n"
    "Message-ID: <m1@example.org>\r\n"
    "Content-Type: text/plain; charset=utf-8\r\n"
    "\r\n"
).encode()
BODY = "Hallo Zoë\r\n".encode()
STORED = STORED_HEADER + BODY
#: The same header as a client without UTF-8 support is sent it.
SYNTHETIC_HEADER = (
    b"From: =?UTF-8?Q?J=C3=B6rg_M=C3=BCller?= <joerg@example.org>\r\n"
    b"To: =?UTF-8?Q?Zo=C3=AB?= <zoe@xn--bcher-kva.example>,\r\n"
    b" plain@example.com\r\n"
    b"Subject: =?UTF-8?Q?Gr=C3=BC=C3=9Fe_aus_K=C3=B6ln?=\r\n"
    b"Date: Fri, 4 Dec 2026 20:00:00 +0000\r\n"
    b"Message-ID: <m1@example.org>\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"\r\n"
)
SYNTHETIC = SYNTHETIC_HEADER + BODY
#: The ENVELOPE of each.
SYNTHETIC_ENVELOPE = (
    b'ENVELOPE ("Fri, 4 Dec 2026 20:00:00 +0000" "=?UTF-8?Q?Gr=C3=BC=C3=9Fe_aus_K=C3=B6ln?=" '
    b'(("=?UTF-8?Q?J=C3=B6rg_M=C3=BCller?=" NIL "joerg" "example.org")) '
    b'(("=?UTF-8?Q?J=C3=B6rg_M=C3=BCller?=" NIL "joerg" "example.org")) '
    b'(("=?UTF-8?Q?J=C3=B6rg_M=C3=BCller?=" NIL "joerg" "example.org")) '
    b'(("=?UTF-8?Q?Zo=C3=AB?=" NIL "zoe" "xn--bcher-kva.example")'
    b'(NIL NIL "plain" "example.com")) NIL NIL NIL "<m1@example.org>")'
)

ITEMS = (
    "RFC822.SIZE ENVELOPE BODYSTRUCTURE BODY.PEEK[HEADER] "
    "BODY.PEEK[HEADER.FIELDS (FROM SUBJECT)] BODY.PEEK[]<0.20> BINARY.SIZE[]"
)
_LITERAL = re.compile(rb"\{(\d+)\}\r\n")


def literals(response: bytes) -> list[bytes]:
    """The contents of the literals in a response, in order."""
    out = []
    pos = 0
    while match := _LITERAL.search(response, pos):
        size = int(match.group(1))
        out.append(response[match.end() : match.end() + size])
        pos = match.end() + size
    return out


def outside_literals(response: bytes) -> bytes:
    """A response with each literal's contents cut out."""
    for literal in literals(response):
        response = response.replace(literal, b"", 1)
    return response


def header_of(message: bytes) -> bytes:
    return message[: message.index(b"\r\n\r\n") + 4]


class _DowngradeScenarios(_BackendBase):
    def deliver_message(self, data: bytes) -> Any:
        raise NotImplementedError

    @defer.inlineCallbacks
    def sessions(self) -> Any:
        """One session that enabled UTF8=ACCEPT and one that did not, both
        with the INBOX selected."""
        enabled = yield self.session(None)
        response = yield enabled.command("E", "ENABLE UTF8=ACCEPT")
        assert response.startswith(b"* ENABLED UTF8=ACCEPT\r\n"), response
        yield enabled.command("S", "SELECT INBOX")
        legacy = yield self.session()
        return enabled, legacy

    @defer.inlineCallbacks
    def test_legacy_session_reads_the_synthetic_message(self) -> Any:
        """RFC 6855 3: no 8-bit header octet to a session that did not
        enable UTF-8; everything FETCH says is of the synthetic message
        (RFC 6858), sizes included (RFC 3501: RFC822.SIZE is the octets
        of BODY[])."""
        t: Any = self
        yield self.deliver_message(STORED)
        _, legacy = yield self.sessions()
        response = yield legacy.command("f", f"FETCH 1 ({ITEMS})")
        t.assertIn(b"RFC822.SIZE %d " % len(SYNTHETIC), response)
        t.assertIn(b"BINARY.SIZE[] %d" % len(SYNTHETIC), response)
        t.assertIn(SYNTHETIC_ENVELOPE, response)
        t.assertEqual(
            literals(response),
            [
                SYNTHETIC_HEADER,
                SYNTHETIC_HEADER.split(b"\r\n")[0]
                + b"\r\n"
                + SYNTHETIC_HEADER.split(b"\r\n")[3]
                + b"\r\n\r\n",
                SYNTHETIC[:20],
            ],
        )
        t.assertTrue(response.isascii(), response)
        response = yield legacy.command("g", "FETCH 1 (BODY.PEEK[] RFC822.HEADER RFC822.TEXT)")
        t.assertEqual(literals(response), [SYNTHETIC, SYNTHETIC_HEADER, BODY])
        t.assertTrue(outside_literals(response).isascii(), response)
        # What a client makes of it: the original text.
        parsed = email.message_from_bytes(SYNTHETIC_HEADER)
        for name, text in (("From", "Jörg Müller"), ("Subject", "Grüße aus Köln")):
            shown = str(email.header.make_header(email.header.decode_header(parsed[name])))
            t.assertIn(text, shown)

    @defer.inlineCallbacks
    def test_enabled_session_reads_it_as_stored(self) -> Any:
        t: Any = self
        yield self.deliver_message(STORED)
        enabled, _ = yield self.sessions()
        response = yield enabled.command("f", f"FETCH 1 ({ITEMS})")
        t.assertIn(b"RFC822.SIZE %d " % len(STORED), response)
        # 8-bit strings of the ENVELOPE go out as literals, as stored.
        t.assertEqual(literals(response)[0], "Grüße aus Köln".encode())
        t.assertIn(STORED_HEADER, literals(response))
        response = yield enabled.command("g", "FETCH 1 (BODY.PEEK[])")
        t.assertEqual(literals(response), [STORED])

    @defer.inlineCallbacks
    def test_what_one_kind_of_session_cached_the_other_never_reads(self) -> Any:
        """Values cached for one kind of session (HEADER.FIELDS of the
        whole message, the rendered ENVELOPE and BODYSTRUCTURE, the
        structure) are not served to the other: a FETCH fast path reading
        the cache for the selected mailbox would send raw UTF-8 to a legacy
        session here, and ASCII to an enabled one."""
        t: Any = self
        yield self.deliver_message(STORED)
        yield self.deliver_message(STORED)
        yield self.deliver_message(STORED)
        yield self.deliver_message(STORED)
        enabled, legacy = yield self.sessions()
        cached = "ENVELOPE BODYSTRUCTURE BODY.PEEK[HEADER.FIELDS (FROM SUBJECT)]"
        # With RFC822.SIZE the legacy session learns which messages are
        # synthetic before reading the cache; without, only as it reads.
        for items, uids in ((cached + " RFC822.SIZE", (1, 2)), (cached, (3, 4))):
            first_uid, second_uid = uids
            for first, second, uid in ((enabled, legacy, first_uid), (legacy, enabled, second_uid)):
                for _ in range(2):  # the second time from the cache
                    a = yield first.command("a", f"UID FETCH {uid} ({items})")
                    b = yield second.command("b", f"UID FETCH {uid} ({items})")
                    ascii_one, raw_one = (b, a) if first is enabled else (a, b)
                    t.assertTrue(ascii_one.isascii(), ascii_one)
                    t.assertIn(SYNTHETIC_ENVELOPE, ascii_one)
                    t.assertIn(SYNTHETIC_HEADER.split(b"\r\n")[3], ascii_one)
                    t.assertIn("Grüße aus Köln".encode(), raw_one)
                    if "RFC822.SIZE" in items:
                        t.assertIn(b"RFC822.SIZE %d" % len(SYNTHETIC), ascii_one)
                        t.assertIn(b"RFC822.SIZE %d" % len(STORED), raw_one)

    @defer.inlineCallbacks
    def test_seen_set_by_fetch_keeps_the_synthetic_size(self) -> Any:
        """BODY[] (not PEEK) sets \\Seen: the metadata the flag change
        gives back must not bring the stored size into the answer."""
        t: Any = self
        yield self.deliver_message(STORED)
        _, legacy = yield self.sessions()
        response = yield legacy.command("f", "FETCH 1 (BODY[] RFC822.SIZE)")
        t.assertEqual(literals(response), [SYNTHETIC])
        t.assertIn(b"RFC822.SIZE %d" % len(SYNTHETIC), response)
        t.assertIn(b"FLAGS (\\Seen)", response)

    @defer.inlineCallbacks
    def test_search_finds_it_from_both(self) -> Any:
        t: Any = self
        yield self.deliver_message(b"From: x@example.org\r\nSubject: other\r\n\r\nx\r\n")
        yield self.deliver_message(STORED)
        enabled, legacy = yield self.sessions()
        response = yield enabled.command("a", 'SEARCH FROM "Müller" SUBJECT "köln"'.encode())
        t.assertEqual(response, b"* SEARCH 2\r\na OK SEARCH completed\r\n")
        needle = "Müller".encode()
        response = yield legacy.command(
            "b", b"SEARCH CHARSET UTF-8 FROM {%d+}\r\n%s" % (len(needle), needle)
        )
        t.assertEqual(response, b"* SEARCH 2\r\nb OK SEARCH completed\r\n")
        response = yield legacy.command("c", "SEARCH HEADER TO zoe@")
        t.assertEqual(response, b"* SEARCH 2\r\nc OK SEARCH completed\r\n")

    @defer.inlineCallbacks
    def test_ascii_messages_and_flags_are_untouched(self) -> Any:
        """A message whose header is ASCII is served as stored (8-bit body
        octets too), and EMAILID names the stored message in both."""
        t: Any = self
        plain = b"Subject: plain\r\n\r\nGr\xc3\xbc\xc3\x9fe\r\n"
        yield self.deliver_message(plain)
        yield self.deliver_message(STORED)
        enabled, legacy = yield self.sessions()
        response = yield legacy.command("a", "FETCH 1 (BODY.PEEK[] RFC822.SIZE)")
        t.assertEqual(literals(response), [plain])
        t.assertIn(b"RFC822.SIZE %d" % len(plain), response)
        ids = []
        for client in (enabled, legacy):
            response = yield client.command("b", "FETCH 2 (EMAILID)")
            ids.extend(re.findall(rb"EMAILID \((\w+)\)", response))
        t.assertEqual(len(ids), 2)
        t.assertEqual(ids[0], ids[1])


class MemoryDowngradeTests(InMemory, _DowngradeScenarios, TestCase):
    def deliver_message(self, data: bytes) -> None:
        storage: Any = self.storage
        storage.deliver("joe", data)


class MaildirDowngradeTests(_DowngradeScenarios, TestCase):
    def make_storage(self) -> IStorage:
        from mailsrv.storage.maildir import MaildirStorage

        self.root = os.path.abspath(self.mktemp())
        return MaildirStorage(self.root + "/{user}")

    def deliver_message(self, data: bytes) -> None:
        from mailsrv.storage.deliver import deliver

        storage: Any = self.storage
        deliver(storage.account("joe"), io.BytesIO(data))


class ImaplibDowngradeTests(ImaplibBase):
    @defer.inlineCallbacks
    def test_a_client_decodes_the_original_text(self) -> Any:
        """imaplib without ENABLE gets an ASCII header that the email
        package decodes to the original text; with it, the stored octets."""
        storage: Any = self.storage
        storage.deliver("joe", STORED)
        seen: dict[str, Any] = {}

        def legacy(c: imaplib.IMAP4) -> None:
            c.login("joe", "secret")
            c.select("INBOX")
            seen["legacy"] = c.fetch("1", "(BODY.PEEK[HEADER] RFC822.SIZE)")

        def enabled(c: imaplib.IMAP4) -> None:
            c.login("joe", "secret")
            c.enable("UTF8=ACCEPT")
            c.select("INBOX")
            seen["enabled"] = c.fetch("1", "(BODY.PEEK[HEADER])")

        yield self.run_client(legacy)
        yield self.run_client(enabled)
        typ, data = seen["legacy"]
        self.assertEqual(typ, "OK")
        header = data[0][1]
        self.assertTrue(header.isascii(), header)
        self.assertEqual(data[1], b" RFC822.SIZE %d)" % len(SYNTHETIC))
        message = email.message_from_bytes(header)

        def shown(name: str) -> str:
            return str(email.header.make_header(email.header.decode_header(message[name])))

        self.assertEqual(shown("Subject"), "Grüße aus Köln")
        self.assertEqual(shown("From"), "Jörg Müller <joerg@example.org>")
        self.assertEqual(shown("To"), "Zoë <zoe@xn--bcher-kva.example>, plain@example.com")
        typ, data = seen["enabled"]
        self.assertEqual(data[0][1], STORED_HEADER)


class Pop3DowngradeTests(TestCase):
    """RFC 6856 2: without UTF8, RETR and TOP send the synthetic message;
    after UTF8, the stored one."""

    async def login(self, utf8: bool) -> Any:
        if not hasattr(self, "server"):
            fixture = Fixture(self, mail={"alice": [STORED]}, failure_delay=0.0)
            self.server = TCPServer(self, fixture)
        client, _ = await self.server.connect()
        if utf8:
            answer = await client.command(b"UTF8")
            self.assertEqual(answer, b"+OK UTF-8 headers will be sent as stored.\r\n")
        await client.command(b"USER alice")
        answer = await client.command(b"PASS secret")
        self.assertTrue(answer.startswith(b"+OK Logged in"), answer)
        return client

    async def test_retr_and_top(self) -> None:
        client = await self.login(utf8=False)
        # LIST keeps the stored size; RETR announces what it sends.
        self.assertEqual(await client.command(b"LIST 1"), b"+OK 1 %d\r\n" % len(STORED))
        client.send(b"RETR 1\r\n")
        answer = await client.response()
        self.assertEqual(
            answer, b"+OK %d octets\r\n" % len(SYNTHETIC) + retr_body(SYNTHETIC) + b".\r\n"
        )
        client.send(b"TOP 1 0\r\n")
        answer = await client.response()
        self.assertEqual(answer, b"+OK Top of message follows\r\n" + SYNTHETIC_HEADER + b".\r\n")
        self.assertEqual(await client.command(b"UTF8"), b"-ERR UTF8 is not valid after login.\r\n")
        await client.command(b"QUIT")
        client = await self.login(utf8=True)
        client.send(b"RETR 1\r\n")
        answer = await client.response()
        self.assertEqual(answer, b"+OK %d octets\r\n" % len(STORED) + retr_body(STORED) + b".\r\n")
        await client.command(b"QUIT")
