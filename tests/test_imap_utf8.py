"""UTF8=ACCEPT (RFC 6855) over real sockets on the memory, Maildir and
PostgreSQL backends: UTF-8 names and quoted strings after ENABLE, modified
UTF-7 for sessions that did not enable it, one stored form per name
(Unicode NFC) whatever the client sent, and APPEND's ``UTF8 (~{n})``.
"""

from __future__ import annotations

import io
import os
import re
import unicodedata
from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from mailsrv import mutf7
from mailsrv.interfaces import IStorage
from tests.test_imap_backends import MESSAGE, InMemory, InPostgres, _BackendBase

#: "Été" in NFC (one code point for É, one for é) and in NFD (each a
#: letter and a combining acute accent).
NFC = "Été"
NFD = unicodedata.normalize("NFD", NFC)
#: A message whose Subject header is UTF-8.
UTF8_MESSAGE = "From: a@example.org\r\nSubject: Grüße\r\n\r\nHallo\r\n".encode()


class _Utf8Scenarios(_BackendBase):
    @defer.inlineCallbacks
    def utf8(self, select: str | None = None) -> Any:
        """A session that sent ENABLE UTF8=ACCEPT."""
        client = yield self.session(None)
        response = yield client.command("E", "ENABLE UTF8=ACCEPT")
        assert response == b"* ENABLED UTF8=ACCEPT\r\nE OK ENABLE completed\r\n", response
        if select is not None:
            yield client.command("S", f"SELECT {select}")
        return client

    @defer.inlineCallbacks
    def test_names_in_utf8_and_in_modified_utf7(self) -> Any:
        """RFC 6855 3: UTF-8 in quoted strings and literals once enabled;
        a session that did not enable it still gets modified UTF-7."""
        t: Any = self
        client = yield self.utf8()
        response = yield client.command("c", f'CREATE "Brouillons/{NFC}"'.encode())
        t.assertRegex(response, rb"^c OK \[MAILBOXID \([\w-]+\)\] CREATE completed\r\n$")
        name = f"Brouillons/{NFC}".encode()
        response = yield client.command("s", b"STATUS {%d+}\r\n%s (MESSAGES)" % (len(name), name))
        t.assertEqual(response, b'* STATUS "%s" (MESSAGES 0)\r\ns OK STATUS completed\r\n' % name)
        response = yield client.command("l", 'LIST "" "Brouillons/%"')
        t.assertEqual(
            response, b'* LIST (\\HasNoChildren) "/" "%s"\r\nl OK LIST completed\r\n' % name
        )
        legacy = yield self.session(None)
        encoded = f"Brouillons/{mutf7.encode(NFC)}".encode()
        t.assertEqual(encoded, b"Brouillons/&AMk-t&AOk-")
        response = yield legacy.command("l", 'LIST "" "Brouillons/%"')
        t.assertEqual(
            response, b'* LIST (\\HasNoChildren) "/" %s\r\nl OK LIST completed\r\n' % encoded
        )

    @defer.inlineCallbacks
    def test_one_name_whatever_the_form(self) -> Any:
        """A name sent in NFD, in UTF-8 or modified UTF-7, is the NFC name
        (RFC 6855 3, RFC 5198): one mailbox, stored once; CREATE and an
        IMAP4rev2 SELECT say so with OLDNAME (RFC 9051 6.3.4, 6.3.2)."""
        t: Any = self
        client = yield self.utf8()
        response = yield client.command("c", f'CREATE "{NFD}"'.encode())
        t.assertRegex(
            response,
            b"^"
            + re.escape(f'* LIST () "/" "{NFC}" ("OLDNAME" ("{NFD}"))\r\n'.encode())
            + rb"c OK \[MAILBOXID \([\w-]+\)\] CREATE completed\r\n$",
        )
        response = yield client.command("d", f'CREATE "{NFC}"'.encode())
        t.assertTrue(response.startswith(b"d NO [ALREADYEXISTS]"), response)
        legacy = yield self.session(None)
        response = yield legacy.command("e", f"CREATE {mutf7.encode(NFD)}")
        t.assertTrue(response.startswith(b"e NO [ALREADYEXISTS]"), response)
        response = yield legacy.command("a", f"APPEND {mutf7.encode(NFD)} {{5+}}\r\nhello")
        t.assertIn(b"a OK [APPENDUID ", response)
        response = yield legacy.command("l", 'LIST "" *')
        t.assertEqual(response.count(mutf7.encode(NFC).encode()), 1, response)
        t.assertNotIn(mutf7.encode(NFD).encode(), response)
        rev2 = yield self.session(None)
        yield rev2.command("E", "ENABLE IMAP4rev2")
        response = yield rev2.command("s", f'SELECT "{NFD}"'.encode())
        t.assertIn(f'* LIST () "/" "{NFC}" ("OLDNAME" ("{NFD}"))\r\n'.encode(), response)
        t.assertIn(b"* 1 EXISTS\r\n", response)
        # What the backend stored has the name once, in NFC.
        stored = yield defer.maybeDeferred(self.stored_names)
        t.assertEqual([n for n in stored if unicodedata.normalize("NFC", n) == NFC], [NFC])

    @defer.inlineCallbacks
    def test_rename_and_delete_say_oldname(self) -> Any:
        """RFC 9051 6.3.6 and 6.3.5: RENAME and DELETE of a name sent in
        NFD act on the NFC name and say so with OLDNAME."""
        t: Any = self
        client = yield self.utf8()
        yield client.command("c", f'CREATE "{NFC}"'.encode())
        response = yield client.command("r", f'RENAME "{NFD}" "{NFD}2"'.encode())
        t.assertEqual(
            response,
            f'* LIST () "/" "{NFC}2" ("OLDNAME" ("{NFD}"))\r\nr OK RENAME completed\r\n'.encode(),
        )
        response = yield client.command("d", f'DELETE "{NFD}2"'.encode())
        t.assertEqual(
            response,
            f'* LIST (\\NonExistent) "/" "{NFC}2" ("OLDNAME" ("{NFD}2"))\r\n'
            "d OK DELETE completed\r\n".encode(),
        )
        response = yield client.command("l", 'LIST "" "%"')
        t.assertNotIn(NFC.encode(), response)

    def stored_names(self) -> Any:
        """The names the backend keeps (a list, or a Deferred of one)."""
        storage: Any = self.storage
        d = defer.maybeDeferred(storage.account("joe").list_mailboxes)
        return d.addCallback(lambda entries: [entry.name for entry in entries])

    @defer.inlineCallbacks
    def test_bad_utf8(self) -> Any:
        """RFC 6855 3: a quoted string that is not UTF-8 is BAD; a literal
        name that is not UTF-8 names no mailbox."""
        t: Any = self
        client = yield self.utf8()
        response = yield client.command("c", b'CREATE "caf\xe9"')
        t.assertEqual(response, b"c BAD quoted string is not valid UTF-8\r\n")
        response = yield client.command("d", b"CREATE {4+}\r\ncaf\xe9")
        t.assertTrue(
            response.startswith(b"d NO [CANNOT] Mailbox names must be valid UTF-8 ("), response
        )
        response = yield client.command("e", b"SELECT {4+}\r\ncaf\xe9")
        t.assertTrue(
            response.startswith(b"e NO [NONEXISTENT] No mailbox has this name: not valid UTF-8 ("),
            response,
        )
        for char in ("\u2028", "\u2029"):
            response = yield client.command("f", f'CREATE "a{char}b"'.encode())
            t.assertEqual(
                response,
                b"f NO [CANNOT] Mailbox names must not contain line or paragraph separators\r\n",
            )
        response = yield client.command("n", "NOOP")
        t.assertEqual(response, b"n OK NOOP completed\r\n")

    @defer.inlineCallbacks
    def test_append_utf8_headers(self) -> Any:
        """RFC 6855 4: without ENABLE UTF8=ACCEPT, 8-bit header octets get
        NO and nothing is stored; with it, ``UTF8 (~{n})`` stores the
        message octet for octet."""
        t: Any = self
        legacy = yield self.session(None)
        size = len(UTF8_MESSAGE)
        response = yield legacy.command("a", b"APPEND INBOX {%d+}\r\n%s" % (size, UTF8_MESSAGE))
        t.assertEqual(
            response,
            b"a NO [CANNOT] 8-bit octets in the message header: send ENABLE UTF8=ACCEPT "
            b"first (RFC 6855)\r\n",
        )
        response = yield legacy.command(
            "b", b"APPEND INBOX UTF8 (~{%d+}\r\n%s)" % (size, UTF8_MESSAGE)
        )
        t.assertTrue(response.startswith(b"b NO [CANNOT] 8-bit"), response)
        # 8-bit octets in the body are no header's.
        body8 = b"Subject: plain\r\n\r\nGr\xc3\xbc\xc3\x9fe\r\n"
        response = yield legacy.command("c", b"APPEND INBOX {%d+}\r\n%s" % (len(body8), body8))
        t.assertIn(b"c OK [APPENDUID ", response)
        response = yield legacy.command("s", "STATUS INBOX (MESSAGES)")
        t.assertIn(b"(MESSAGES 1)", response)
        client = yield self.utf8()
        response = yield client.command(
            "d", b"APPEND INBOX UTF8 (~{%d+}\r\n%s)" % (size, UTF8_MESSAGE)
        )
        t.assertRegex(response, rb"d OK \[APPENDUID \d+ 2\] APPEND completed\r\n$")
        response = yield client.command(
            "e", b"APPEND INBOX UTF8 ({%d+}\r\n%s)" % (size, UTF8_MESSAGE)
        )
        t.assertEqual(response, b"e BAD UTF8 takes the message as a literal8 (~{n})\r\n")
        yield client.command("S", "SELECT INBOX")
        response = yield client.command("f", "FETCH 2 BODY.PEEK[]")
        t.assertEqual(
            response,
            b"* 2 FETCH (BODY[] {%d}\r\n%s)\r\nf OK FETCH completed\r\n" % (size, UTF8_MESSAGE),
        )

    @defer.inlineCallbacks
    def test_a_big_append_is_checked_too(self) -> Any:
        """The rule holds for a message spooled to a file (over 64 KiB),
        with the 8-bit header field after the first 64 KiB of header."""
        t: Any = self
        legacy = yield self.session(None)
        filler = b"".join(b"X-Filler-%05d: %s\r\n" % (n, b"x" * 60) for n in range(1200))
        message = filler + "Subject: Grüße\r\n\r\nbody\r\n".encode()
        t.assertGreater(len(filler), 65536)
        response = yield legacy.command("a", b"APPEND INBOX {%d+}\r\n%s" % (len(message), message))
        t.assertTrue(response.startswith(b"a NO [CANNOT] 8-bit"), response)
        response = yield legacy.command("s", "STATUS INBOX (MESSAGES)")
        t.assertIn(b"(MESSAGES 0)", response)
        # The same message with an ASCII header goes in whole: the check
        # leaves the spooled file where the store reads it from.
        ascii_message = filler + b"Subject: Gruesse\r\n\r\nbody\r\n"
        response = yield legacy.command(
            "b", b"APPEND INBOX {%d+}\r\n%s" % (len(ascii_message), ascii_message)
        )
        t.assertIn(b"b OK [APPENDUID ", response)
        response = yield legacy.command("t", "STATUS INBOX (MESSAGES SIZE)")
        t.assertIn(b"(MESSAGES 1 SIZE %d)" % len(ascii_message), response)

    @defer.inlineCallbacks
    def test_search(self) -> Any:
        """RFC 6855 3: SEARCH with a CHARSET is BAD once UTF-8 is enabled;
        UTF-8 quoted strings search as UTF-8."""
        t: Any = self
        yield self.deliver(1)
        client = yield self.utf8("INBOX")
        response = yield client.command("a", 'SEARCH CHARSET UTF-8 SUBJECT "x"')
        t.assertEqual(
            response,
            b"a BAD SEARCH CHARSET is not allowed after ENABLE UTF8=ACCEPT (RFC 6855 3)\r\n",
        )
        yield client.command(
            "b", b"APPEND INBOX UTF8 (~{%d+}\r\n%s)" % (len(UTF8_MESSAGE), UTF8_MESSAGE)
        )
        # Unicode case folding: "GRÜSSE" is "grüße".
        response = yield client.command("c", 'SEARCH SUBJECT "GRÜSSE"'.encode())
        t.assertEqual(response, b"* SEARCH 2\r\nc OK SEARCH completed\r\n")
        response = yield client.command("d", 'SEARCH SUBJECT "grün"'.encode())
        t.assertEqual(response, b"* SEARCH\r\nd OK SEARCH completed\r\n")


class MemoryUtf8Tests(InMemory, _Utf8Scenarios, TestCase):
    """The scenarios over the memory backend."""


class MaildirUtf8Tests(_Utf8Scenarios, TestCase):
    def make_storage(self) -> IStorage:
        from mailsrv.storage.maildir import MaildirStorage

        self.root = os.path.abspath(self.mktemp())
        return MaildirStorage(self.root + "/{user}")

    def deliver(self, number: int) -> None:
        from mailsrv.storage.deliver import deliver

        storage: Any = self.storage
        deliver(storage.account("joe"), io.BytesIO(MESSAGE % (number, number)))

    def stored_names(self) -> list[str]:
        # The folders on disk: Maildir++ ".name" directories, each level in
        # modified UTF-7 as Dovecot writes them.
        home = os.path.join(self.root, "joe")
        return [mutf7.decode(d[1:]) for d in os.listdir(home) if d.startswith(".")]


class PostgresUtf8Tests(InPostgres, _Utf8Scenarios, TestCase):
    """The scenarios over the PostgreSQL backend."""
