"""Mailbox names and LIST options on the wire, over both backends.

A name that is not valid modified UTF-7 is still a syntactically valid
astring (RFC 3501 5.1.3 asks servers to preserve such names): commands
naming one are answered NO, never BAD, and a LIST pattern of that kind
simply matches nothing.  LIST-EXTENDED's RECURSIVEMATCH needs a selection
option other than REMOTE (RFC 5258 3).
"""

from __future__ import annotations

import codecs
import encodings
import io
import re
import sys
from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from mailsrv.interfaces import IStorage
from mailsrv.storage.memory import MemoryStorage
from tests.test_imap_backends import MESSAGE, _BackendBase

#: The name of the compliance run: '&' starts a base64 run that "'" breaks.
ODD = b"!#$&'+,-.0123456789:;<=>?@^_`|[}"
ODD_DETAIL = b"(invalid modified base64: Only base64 data is allowed)"
#: An unterminated shift.
SHORT = "&Jjo"
SHORT_DETAIL = b"(unterminated '&' shift at offset 0)"


def nonexistent(tag: str, detail: bytes) -> bytes:
    return b"%s NO [NONEXISTENT] No mailbox has this name: not valid modified UTF-7 %s\r\n" % (
        tag.encode(),
        detail,
    )


def cannot(tag: str, detail: bytes) -> bytes:
    return b"%s NO [CANNOT] Mailbox names must be valid modified UTF-7 %s\r\n" % (
        tag.encode(),
        detail,
    )


class _NameScenarios(_BackendBase):
    @defer.inlineCallbacks
    def test_select_then_list_of_the_compliance_run(self) -> Any:
        """SELECT answers NO (and leaves no mailbox selected); the LIST that
        follows, pipelined, matches nothing; the connection stays."""
        t: Any = self
        client = yield self.session()
        literal = b"{%d+}\r\n" % (len(ODD) + 2)
        lines = [
            b"s SELECT " + ODD,
            b'l LIST "" ' + ODD + b"%*",
            b'q LIST "" "' + ODD + b'%*"',
            b'r LIST "" ' + literal + ODD + b"%*",
            b"n NOOP",
        ]
        client.send(b"".join(line + b"\r\n" for line in lines))
        response = yield client.until_tagged("n")
        t.assertEqual(
            response,
            b"* OK [CLOSED] Previous mailbox closed\r\n"  # RFC 7162 3.2.11
            + nonexistent("s", ODD_DETAIL)
            + b"l OK LIST completed\r\n"
            + b"q OK LIST completed\r\n"
            + b"r OK LIST completed\r\n"
            + b"n OK NOOP completed\r\n",
        )
        response = yield client.command("f", "FETCH 1 FLAGS")
        t.assertEqual(response, b"f BAD FETCH is not allowed in authenticated state\r\n")

    @defer.inlineCallbacks
    def test_commands_naming_an_undecodable_mailbox(self) -> Any:
        t: Any = self
        client = yield self.session(None)
        for tag, command in (
            ("a", f"EXAMINE {SHORT}"),
            ("b", f"STATUS {SHORT} (MESSAGES)"),
            ("c", f"DELETE {SHORT}"),
            ("d", f"RENAME {SHORT} Elsewhere"),
            ("e", f"SUBSCRIBE {SHORT}"),
            ("f", f"UNSUBSCRIBE {SHORT}"),
            ("g", f"APPEND {SHORT} {{5+}}\r\nhello"),
        ):
            response = yield client.command(tag, command)
            t.assertEqual(response, nonexistent(tag, SHORT_DETAIL))
        for tag, command in (("h", f"CREATE {SHORT}"), ("i", f"RENAME Sent {SHORT}")):
            response = yield client.command(tag, command)
            t.assertEqual(response, cannot(tag, SHORT_DETAIL))
        # Raw UTF-8 from a client that does not encode names.
        response = yield client.command("j", b"SELECT {9+}\r\nEntw\xc3\xbcrfe")
        t.assertEqual(
            response,
            nonexistent(
                "j",
                b"('ascii' codec can't decode byte 0xc3 in position 4: ordinal not in range(128))",
            ),
        )
        self.deliver(1)
        response = yield client.command("k", "SELECT INBOX")
        t.assertIn(b"* 1 EXISTS\r\n", response)
        for tag, command in (("l", "COPY"), ("m", "MOVE"), ("n", "UID MOVE")):
            response = yield client.command(tag, f"{command} 1 {SHORT}")
            t.assertEqual(response, nonexistent(tag, SHORT_DETAIL))
        # Nothing was created, renamed, moved or subscribed on the way.
        response = yield client.command("o", "UID FETCH 1:* (UID)")
        t.assertEqual(response, b"* 1 FETCH (UID 1)\r\no OK FETCH completed\r\n")
        response = yield client.command("p", 'LIST "" *')
        t.assertNotIn(b"Jjo", response)
        t.assertIn(b'"/" Sent\r\n', response)
        response = yield client.command("q", 'LSUB "" *')
        t.assertEqual(response, b"q OK LSUB completed\r\n")

    @defer.inlineCallbacks
    def test_undecodable_patterns_match_nothing(self) -> Any:
        t: Any = self
        client = yield self.session(None)
        response = yield client.command("a", 'LIST "" (INBOX &Jjo* "Sen&t*" Sent)')
        t.assertEqual(
            response,
            b'* LIST (\\HasNoChildren) "/" INBOX\r\n'
            b'* LIST (\\HasNoChildren \\Sent) "/" Sent\r\n'
            b"a OK LIST completed\r\n",
        )
        for tag, command in (("b", "LIST &Jjo *"), ("c", 'LSUB "" &Jjo*')):
            response = yield client.command(tag, command)
            t.assertEqual(
                response, tag.encode() + b" OK " + command[:4].encode() + b" completed\r\n"
            )

    @defer.inlineCallbacks
    def test_recursivematch_needs_a_real_selection_option(self) -> Any:
        t: Any = self
        client = yield self.session(None)
        for options in ("RECURSIVEMATCH REMOTE", "REMOTE RECURSIVEMATCH", "RECURSIVEMATCH"):
            response = yield client.command("l", f'LIST ({options}) "" ""')
            t.assertEqual(
                response, b"l BAD RECURSIVEMATCH needs a selection option other than REMOTE\r\n"
            )
        response = yield client.command("l", 'LIST (REMOTE SUBSCRIBED RECURSIVEMATCH) "" %')
        t.assertEqual(response, b"l OK LIST completed\r\n")


def block_utf16_codec(test: TestCase) -> None:
    """Make the codec registry unable to load ``encodings.utf_16_be`` for
    the rest of ``test``, as in a daemon after twistd dropped root when the
    standard library is not readable by its user (a Python below /root)."""
    saved = sys.modules.get("encodings.utf_16_be")

    def forget() -> None:
        encodings._cache.pop("utf_16_be", None)

        def nothing(name: str) -> None:
            return None

        codecs.register(nothing)
        codecs.unregister(nothing)  # clears the interpreter's lookup cache

    def restore() -> None:
        if saved is None:
            sys.modules.pop("encodings.utf_16_be", None)
        else:
            sys.modules["encodings.utf_16_be"] = saved
        forget()

    sys.modules["encodings.utf_16_be"] = None  # type: ignore[assignment]
    forget()
    test.addCleanup(restore)
    test.assertRaises(LookupError, b"\x00\xe9".decode, "utf-16-be")


class _PrivilegeDropScenario(_BackendBase):
    @defer.inlineCallbacks
    def test_names_need_no_codec_lookup(self) -> Any:
        """The cause of a dropped connection: decoding a name's base64 run
        looked the UTF-16 codec up by name, and where it cannot be loaded
        the LookupError escaped the parser.  Names are decoded and encoded
        without that lookup now."""
        t: Any = self
        client = yield self.session(None)
        block_utf16_codec(t)
        lines = [
            b"s SELECT Caf&AOk-",
            b'l LIST "" Men&APw-%',
            b"c CREATE Caf&AOk-/Men&APw-",
            b'm LIST "" Caf&AOk-*',
            b"n NOOP",
        ]
        client.send(b"".join(line + b"\r\n" for line in lines))
        response = yield client.until_tagged("n")
        t.assertRegex(response, rb"^s NO \[NONEXISTENT\] .*\r\nl OK LIST completed\r\n")
        response = re.sub(rb"\[MAILBOXID \(\w+\)\] ", b"", response)
        t.assertTrue(
            response.endswith(
                b"c OK CREATE completed\r\n"
                b'* LIST (\\HasChildren) "/" Caf&AOk-\r\n'
                b'* LIST (\\HasNoChildren) "/" Caf&AOk-/Men&APw-\r\n'
                b"m OK LIST completed\r\n"
                b"n OK NOOP completed\r\n"
            ),
            response,
        )


class MemoryNameTests(_NameScenarios, _PrivilegeDropScenario, TestCase):
    def make_storage(self) -> IStorage:
        return MemoryStorage()

    def deliver(self, number: int) -> None:
        storage: Any = self.storage
        storage.deliver("joe", MESSAGE % (number, number))


class MaildirNameTests(_NameScenarios, _PrivilegeDropScenario, TestCase):
    def make_storage(self) -> IStorage:
        from mailsrv.storage.maildir import MaildirStorage

        return MaildirStorage(self.mktemp() + "/{user}")

    def deliver(self, number: int) -> None:
        from mailsrv.storage.deliver import deliver

        storage: Any = self.storage
        deliver(storage.account("joe"), io.BytesIO(MESSAGE % (number, number)))
