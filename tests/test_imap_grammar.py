"""The pure IMAP grammar: every command's parser (through the registry) and
the response writer."""

from __future__ import annotations

import datetime
import io
import random
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from mailsrv.imap import lexer, response, syntax
from mailsrv.imap.catenate import Text, Url
from mailsrv.imap.commands import REGISTRY
from mailsrv.imap.commands.append import Append, AppendMessage
from mailsrv.imap.commands.auth import Authenticate, Login
from mailsrv.imap.commands.copy import Copy
from mailsrv.imap.commands.expunge import Expunge
from mailsrv.imap.commands.fetch import Fetch
from mailsrv.imap.commands.general import Enable, Id
from mailsrv.imap.commands.list import List
from mailsrv.imap.commands.mailboxes import Create, MailboxCommand, Rename
from mailsrv.imap.commands.search import Search
from mailsrv.imap.commands.select import Select
from mailsrv.imap.commands.status import Status
from mailsrv.imap.commands.store import Store
from mailsrv.imap.fetch_syntax import FetchAttribute, Section
from mailsrv.imap.lexer import LiteralFile, ParseError, Segment
from mailsrv.imap.registry import Command, Simple
from mailsrv.imap.search_syntax import SearchKey
from mailsrv.imap.syntax import STAR, SequenceSet


def parse_command(segments: list[Segment], max_depth: int = 32) -> Command:
    return REGISTRY.parse(segments, max_depth)[1]


def parse(line: bytes, *rest: bytes | LiteralFile) -> Command:
    return parse_command([line, *rest])


def flag(name: str, present: bool = True) -> SearchKey:
    return SearchKey("FLAG", (name, present))


class TokenTests(SynchronousTestCase):
    def bad(self, *segments: bytes | LiteralFile) -> ParseError:
        error: ParseError = self.assertRaises(ParseError, parse_command, list(segments))
        return error

    def test_simple_commands(self) -> None:
        for name in ("CAPABILITY", "NOOP", "LOGOUT", "STARTTLS", "CHECK", "CLOSE", "UNSELECT"):
            self.assertEqual(parse(b"a1 " + name.lower().encode()), Simple("a1", name))
        self.assertEqual(parse(b"x IDLE"), Simple("x", "IDLE"))
        self.assertEqual(parse(b"x NAMESPACE"), Simple("x", "NAMESPACE"))

    def test_tag_characters(self) -> None:
        self.assertEqual(parse(b"A]1.b NOOP").tag, "A]1.b")
        error = self.bad(b"a+1 NOOP")
        self.assertIsNone(error.tag)
        self.assertIsNone(self.bad(b"(a NOOP").tag)
        self.assertIsNone(self.bad(b"").tag)

    def test_trailing_garbage_is_rejected_with_the_tag(self) -> None:
        error = self.bad(b"t1 NOOP extra")
        self.assertEqual(error.tag, "t1")
        self.assertIn("extra", error.message)
        self.assertEqual(self.bad(b"t1 NOOP ").tag, "t1")
        self.assertEqual(self.bad(b"t1  NOOP").tag, "t1")

    def test_unknown_command(self) -> None:
        error = self.bad(b"t2 FROB x")
        self.assertEqual((error.tag, error.message), ("t2", "unknown command FROB"))
        self.assertEqual(self.bad(b"t2 UID LOGIN a b").message, "UID LOGIN is not a command")

    def test_login_atoms_quoted_literals(self) -> None:
        self.assertEqual(parse(b"a LOGIN joe secret"), Login("a", "LOGIN", b"joe", b"secret"))
        self.assertEqual(
            parse(b'a LOGIN "jo e" "p\\"w\\\\d"'), Login("a", "LOGIN", b"jo e", b'p"w\\d')
        )
        self.assertEqual(
            parse(b"a LOGIN {3}", b"j\x00e", b" {0+}", b"", b""),
            Login("a", "LOGIN", b"j\x00e", b""),
        )
        # ']' is an ASTRING-CHAR; '%', '(', '{' mid-word are not.
        self.assertEqual(parse(b"a LOGIN a]b c").username, b"a]b")  # type: ignore[attr-defined]
        self.bad(b"a LOGIN a%b c")

    def test_quoted_string_errors(self) -> None:
        self.assertIn("unterminated", self.bad(b'a LOGIN "abc').message)
        self.assertIn("escape", self.bad(b'a LOGIN "a\\bc" x').message)
        self.assertIn("CR, LF or NUL", self.bad(b'a LOGIN "a\rb" x').message)

    def test_eight_bit_quoted_is_accepted(self) -> None:
        # RFC 3501 forbids it but clients send UTF-8 quoted strings; we keep bytes.
        command = parse('a LOGIN "jörg" x'.encode())
        self.assertEqual(command.username, "jörg".encode())  # type: ignore[attr-defined]

    def test_literal_framing_errors(self) -> None:
        self.assertIn("missing", self.bad(b"a LOGIN {3}").message)
        self.assertIn("does not match", self.bad(b"a LOGIN {3}", b"ab", b" x").message)
        self.assertIn("end of the line", self.bad(b"a LOGIN {3}x y").message)
        # literal8 is only for APPEND
        self.bad(b"a LOGIN ~{3}", b"abc", b" x")

    def test_spooled_literal_outside_append_is_refused(self) -> None:
        spooled = LiteralFile(io.BytesIO(b"abc"), 3)
        self.assertEqual(self.bad(b"a LOGIN {3}", spooled, b" x").code, "TOOBIG")

    def test_literal_marker(self) -> None:
        self.assertEqual(lexer.literal_marker(b"a LOGIN {12}"), (12, False, False))
        self.assertEqual(lexer.literal_marker(b"a LOGIN {12+}"), (12, True, False))
        self.assertEqual(lexer.literal_marker(b"a APPEND x ~{5}"), (5, False, True))
        self.assertIsNone(lexer.literal_marker(b"a LOGIN {12"))
        self.assertIsNone(lexer.literal_marker(b"a LOGIN {1a}"))
        self.assertIsNone(lexer.literal_marker(b"a LOGIN {}"))

    def test_peek_command(self) -> None:
        self.assertEqual(lexer.peek_command(b"a1 append INBOX {5}"), ("a1", "APPEND"))
        self.assertEqual(lexer.peek_command(b"a1 uid fetch 1 x"), ("a1", "UID FETCH"))
        self.assertIsNone(lexer.peek_command(b"a1"))

    def test_authenticate(self) -> None:
        self.assertEqual(parse(b"a AUTHENTICATE plain"), Authenticate("a", "AUTHENTICATE", "PLAIN"))
        self.assertEqual(
            parse(b"a AUTHENTICATE PLAIN AGpvZQBzZWNyZXQ="),
            Authenticate("a", "AUTHENTICATE", "PLAIN", b"AGpvZQBzZWNyZXQ="),
        )
        self.assertEqual(parse(b"a AUTHENTICATE PLAIN =").initial_response, b"=")  # type: ignore[attr-defined]
        # A trailing space with nothing after it: no initial response (mutt).
        self.assertEqual(
            parse(b"a AUTHENTICATE CRAM-MD5 "), Authenticate("a", "AUTHENTICATE", "CRAM-MD5")
        )


class MailboxTests(SynchronousTestCase):
    def test_inbox_is_case_insensitive(self) -> None:
        self.assertEqual(parse(b"a SELECT inbox"), Select("a", "SELECT", "INBOX"))
        self.assertEqual(parse(b'a EXAMINE "InBoX"'), Select("a", "EXAMINE", "INBOX", True))
        # Only INBOX itself: children keep their spelling.
        self.assertEqual(parse(b"a DELETE inbox/Sub").mailbox, "inbox/Sub")  # type: ignore[attr-defined]

    def test_modified_utf7_is_decoded(self) -> None:
        command = parse(b"a CREATE Entw&APw-rfe")
        self.assertEqual(command, Create("a", "CREATE", "Entwürfe"))
        self.assertEqual(parse(b"a RENAME &-x y"), Rename("a", "RENAME", "&x", "y"))

    def test_invalid_modified_utf7_is_kept(self) -> None:
        """Not a syntax error (RFC 3501 5.1.3): the name is kept, marked, for
        the server to answer NO."""
        for line, raw in (
            (b"a SELECT Entw&APw", "Entw&APw"),
            ('a SELECT "Entwürfe"'.encode(), "Entw\\xc3\\xbcrfe"),
            (b'a LIST "" &Jjo*', "&Jjo*"),
        ):
            command: Any = parse(line)
            name = command.patterns[0] if command.name == "LIST" else command.mailbox
            self.assertIsInstance(name, syntax.UndecodedName)
            self.assertEqual(name, raw)
            self.assertTrue(name.reason)
        self.assertNotIsInstance(parse(b"a SELECT Entw&APw-").mailbox, syntax.UndecodedName)  # type: ignore[attr-defined]

    def test_mailbox_commands(self) -> None:
        for name in ("DELETE", "SUBSCRIBE", "UNSUBSCRIBE"):
            self.assertEqual(parse(f"t {name} Foo".encode()), MailboxCommand("t", name, "Foo"))

    def test_create_special_use(self) -> None:
        self.assertEqual(
            parse(b"t CREATE Drafts (USE (\\Drafts \\Sent))"),
            Create("t", "CREATE", "Drafts", ("\\Drafts", "\\Sent")),
        )
        self.assertRaises(ParseError, parse, b"t CREATE x (FOO 1)")

    def test_select_params(self) -> None:
        self.assertEqual(
            parse(b"t SELECT INBOX (CONDSTORE)").params,  # type: ignore[attr-defined]
            (("CONDSTORE", None),),
        )
        self.assertEqual(
            parse(b"t SELECT INBOX (QRESYNC (67890007 20050715194045000 41,43:211))").params,  # type: ignore[attr-defined]
            (("QRESYNC", (67890007, 20050715194045000, SequenceSet(((41, 41), (43, 211))))),),
        )

    def test_status(self) -> None:
        self.assertEqual(
            parse(b"t STATUS blurdybloop (UIDNEXT messages)"),
            Status("t", "STATUS", "blurdybloop", ("UIDNEXT", "MESSAGES")),
        )
        self.assertIn(
            "unknown STATUS item", self.assertRaises(ParseError, parse, b"t STATUS x (FOO)").message
        )
        self.assertRaises(ParseError, parse, b"t STATUS x ()")
        self.assertRaises(ParseError, parse, b"t STATUS x MESSAGES")


class ListTests(SynchronousTestCase):
    def test_basic_list_and_lsub(self) -> None:
        self.assertEqual(parse(b'a LIST "" *'), List("a", "LIST", "", ("*",)))
        self.assertEqual(parse(b"a LIST ~/Mail/ %"), List("a", "LIST", "~/Mail/", ("%",)))
        self.assertEqual(parse(b'a LSUB "#news." "comp.mail.*"').patterns, ("comp.mail.*",))  # type: ignore[attr-defined]
        self.assertEqual(parse(b'a LIST "" ""').patterns, ("",))  # type: ignore[attr-defined]
        self.assertEqual(parse(b"a LIST x]y %]").patterns, ("%]",))  # type: ignore[attr-defined]

    def test_list_extended(self) -> None:
        command = parse(
            b'a LIST (SUBSCRIBED RECURSIVEMATCH) "" (INBOX "Sent" %/x) '
            b"RETURN (CHILDREN SPECIAL-USE STATUS (MESSAGES UNSEEN))"
        )
        self.assertEqual(
            command,
            List(
                "a",
                "LIST",
                "",
                ("INBOX", "Sent", "%/x"),
                ("SUBSCRIBED", "RECURSIVEMATCH"),
                ("CHILDREN", "SPECIAL-USE", "STATUS"),
                ("MESSAGES", "UNSEEN"),
                True,
            ),
        )
        self.assertTrue(parse(b'a LIST "" % RETURN ()').extended)  # type: ignore[attr-defined]

    def test_list_extended_errors(self) -> None:
        self.assertRaises(ParseError, parse, b'a LIST (RECURSIVEMATCH) "" *')
        # RFC 5258 3: nor with REMOTE only.
        self.assertRaises(ParseError, parse, b'a LIST (RECURSIVEMATCH REMOTE) "" *')
        self.assertRaises(ParseError, parse, b'a LIST (BOGUS) "" *')
        self.assertRaises(ParseError, parse, b'a LIST "" * RETURN (BOGUS)')
        self.assertRaises(ParseError, parse, b'a LIST "" * EXTRA')
        self.assertRaises(ParseError, parse, b'a LSUB (SUBSCRIBED) "" *')


class SequenceSetTests(SynchronousTestCase):
    def seqset(self, text: bytes) -> SequenceSet:
        command = parse(b"a FETCH " + text + b" FLAGS")
        assert isinstance(command, Fetch)
        return command.sequence_set

    def test_forms(self) -> None:
        self.assertEqual(self.seqset(b"1"), SequenceSet(((1, 1),)))
        self.assertEqual(self.seqset(b"*"), SequenceSet(((STAR, STAR),)))
        self.assertEqual(
            self.seqset(b"4:2,7,9:*,*:3"), SequenceSet(((4, 2), (7, 7), (9, STAR), (STAR, 3)))
        )

    def test_resolve_normalises_and_merges(self) -> None:
        self.assertEqual(self.seqset(b"4:2,7,9:*").resolve(12), [(2, 4), (7, 7), (9, 12)])
        self.assertEqual(self.seqset(b"5:*").resolve(3), [(3, 5)])
        self.assertEqual(self.seqset(b"1:3,2:6,8,7").resolve(10), [(1, 8)])

    def test_str(self) -> None:
        self.assertEqual(str(self.seqset(b"4:2,7,9:*")), "4:2,7,9:*")

    def test_invalid(self) -> None:
        for text in (b"0", b"1:0", b"1,", b",1", b"1:", b"a", b"1.5", b"4294967296", b"1:*:2"):
            self.assertRaises(ParseError, parse, b"a FETCH " + text + b" FLAGS")
        self.assertEqual(self.seqset(b"4294967295"), SequenceSet(((4294967295, 4294967295),)))


class FetchTests(SynchronousTestCase):
    def attrs(self, text: bytes) -> tuple[FetchAttribute, ...]:
        command = parse(b"a FETCH 1 " + text)
        assert isinstance(command, Fetch)
        return command.attributes

    def test_macros(self) -> None:
        self.assertEqual(
            [a.name for a in self.attrs(b"all")],
            ["FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"],
        )
        self.assertEqual(
            [a.name for a in self.attrs(b"FAST")], ["FLAGS", "INTERNALDATE", "RFC822.SIZE"]
        )
        self.assertEqual([a.name for a in self.attrs(b"FULL")][-1], "BODY")
        # Macros are not allowed inside a list.
        self.assertRaises(ParseError, self.attrs, b"(ALL)")

    def test_simple_items(self) -> None:
        names = (
            b"ENVELOPE FLAGS INTERNALDATE RFC822 RFC822.HEADER RFC822.SIZE RFC822.TEXT "
            b"BODY BODYSTRUCTURE UID"
        )
        self.assertEqual([a.name for a in self.attrs(b"(" + names + b")")], names.decode().split())
        self.assertEqual(self.attrs(b"uid"), (FetchAttribute("UID"),))

    def test_sections(self) -> None:
        self.assertEqual(self.attrs(b"BODY[]"), (FetchAttribute("BODY", Section()),))
        self.assertEqual(
            self.attrs(b"BODY.PEEK[1.2.3]<10.20>"),
            (FetchAttribute("BODY", Section((1, 2, 3)), (10, 20), peek=True),),
        )
        self.assertEqual(
            self.attrs(b'body[header.fields (From To "Subject")]'),
            (FetchAttribute("BODY", Section((), "HEADER.FIELDS", ("FROM", "TO", "SUBJECT"))),),
        )
        self.assertEqual(
            self.attrs(b"BODY[2.HEADER.FIELDS.NOT (X-Spam)]"),
            (FetchAttribute("BODY", Section((2,), "HEADER.FIELDS.NOT", ("X-SPAM",))),),
        )
        self.assertEqual(
            self.attrs(b"(BODY[1.MIME] BODY[TEXT] BODY[3.HEADER])"),
            (
                FetchAttribute("BODY", Section((1,), "MIME")),
                FetchAttribute("BODY", Section((), "TEXT")),
                FetchAttribute("BODY", Section((3,), "HEADER")),
            ),
        )

    def test_binary(self) -> None:
        self.assertEqual(
            self.attrs(b"(BINARY[1.2] BINARY.PEEK[]<0.5> BINARY.SIZE[3])"),
            (
                FetchAttribute("BINARY", Section((1, 2))),
                FetchAttribute("BINARY", Section(), (0, 5), peek=True),
                FetchAttribute("BINARY.SIZE", Section((3,))),
            ),
        )
        self.assertRaises(ParseError, self.attrs, b"BINARY[HEADER]")
        self.assertRaises(ParseError, self.attrs, b"BINARY")

    def test_response_names(self) -> None:
        (peek,) = self.attrs(b"BODY.PEEK[HEADER.FIELDS (a b)]<5.10>")
        self.assertEqual(peek.response_name(), "BODY[HEADER.FIELDS (A B)]<5>")
        (whole,) = self.attrs(b"BODY[]")
        self.assertEqual(whole.response_name(), "BODY[]")
        (part,) = self.attrs(b"BODY[1.2.MIME]")
        self.assertEqual(part.response_name(), "BODY[1.2.MIME]")

    def test_bad_sections(self) -> None:
        for text in (
            b"BODY[MIME]",  # MIME needs a part number
            b"BODY[1.]",
            b"BODY[0]",
            b"BODY[HEADER.FIELDS]",
            b"BODY[HEADER.FIELDS ()]",
            b"BODY[HEADER.FIELDS (a:b)]",
            b"BODY[FOO]",
            b"BODY[1]<0.0>",
            b"BODY[1]<5>",
            b"BODY[1",
            b"BODY.PEEK",
            b"RFC822.PEEK",
            b"(FLAGS",
            b"(FLAGS))",
            b"()",
        ):
            self.assertRaises(ParseError, self.attrs, text)

    def test_uid_fetch_implies_uid(self) -> None:
        command = parse(b"a UID FETCH 1:* FLAGS")
        assert isinstance(command, Fetch)
        self.assertTrue(command.uid)
        self.assertEqual([a.name for a in command.attributes], ["FLAGS", "UID"])

    def test_modifiers(self) -> None:
        command = parse(b"a FETCH 1:* (FLAGS) (CHANGEDSINCE 12345 VANISHED)")
        assert isinstance(command, Fetch)
        self.assertEqual(command.modifiers, (("CHANGEDSINCE", 12345), ("VANISHED", None)))


class SearchTests(SynchronousTestCase):
    def key(self, text: bytes, *rest: bytes) -> SearchKey:
        command = parse(b"a SEARCH " + text, *rest)
        assert isinstance(command, Search)
        return command.key

    def test_flag_keys(self) -> None:
        self.assertEqual(self.key(b"seen"), flag("\\Seen"))
        self.assertEqual(self.key(b"UNANSWERED"), flag("\\Answered", False))
        self.assertEqual(self.key(b"KEYWORD $Junk"), flag("$Junk"))
        self.assertEqual(self.key(b"UNKEYWORD foo"), flag("foo", False))
        self.assertEqual(
            self.key(b"NEW"), SearchKey("AND", (flag("\\Recent"), flag("\\Seen", False)))
        )
        self.assertEqual(self.key(b"OLD"), flag("\\Recent", False))

    def test_every_rfc3501_key_parses(self) -> None:
        keys = (
            b"ALL ANSWERED BCC x BEFORE 1-Feb-1994 BODY y CC z DELETED DRAFT FLAGGED "
            b'FROM "Smith" HEADER X-Foo bar KEYWORD k LARGER 10 NEW NOT SEEN OLD '
            b'ON 01-Jan-2000 OR SEEN DRAFT RECENT SEEN SENTBEFORE "1-Feb-1994" '
            b"SENTON 2-Mar-2001 SENTSINCE 3-Apr-2002 SINCE 4-May-2003 SMALLER 5 SUBJECT s "
            b"TEXT t TO u UID 1:* UNANSWERED UNDELETED UNDRAFT UNFLAGGED UNKEYWORD k "
            b"UNSEEN 1,2:4"
        )
        key = self.key(keys)
        self.assertEqual(key.op, "AND")
        self.assertEqual(len(key.args), 36)

    def test_values(self) -> None:
        self.assertEqual(self.key(b'FROM "Smith"'), SearchKey("ADDRESS", ("FROM", b"Smith")))
        self.assertEqual(self.key(b"SUBJECT x"), SearchKey("HEADER", ("SUBJECT", b"x")))
        self.assertEqual(self.key(b'HEADER x-spam ""'), SearchKey("HEADER", ("X-SPAM", b"")))
        self.assertEqual(
            self.key(b"SINCE 1-Feb-1994"), SearchKey("SINCE", (datetime.date(1994, 2, 1),))
        )
        self.assertEqual(self.key(b"LARGER 100"), SearchKey("LARGER", (100,)))
        self.assertEqual(self.key(b"BODY {3}", b"\xe4bc", b""), SearchKey("BODY", (b"\xe4bc",)))
        self.assertEqual(
            self.key(b"2:4,*"), SearchKey("SEQ", (SequenceSet(((2, 4), (STAR, STAR))),))
        )

    def test_nesting_or_not(self) -> None:
        self.assertEqual(
            self.key(b"OR (SEEN FLAGGED) NOT (DELETED)"),
            SearchKey(
                "OR",
                (
                    SearchKey("AND", (flag("\\Seen"), flag("\\Flagged"))),
                    SearchKey("NOT", (flag("\\Deleted"),)),
                ),
            ),
        )
        self.assertEqual(
            self.key(b"NOT OR 1 2"),
            SearchKey(
                "NOT",
                (
                    SearchKey(
                        "OR",
                        (
                            SearchKey("SEQ", (SequenceSet(((1, 1),)),)),
                            SearchKey("SEQ", (SequenceSet(((2, 2),)),)),
                        ),
                    ),
                ),
            ),
        )

    def test_charset_and_return(self) -> None:
        command = parse(b"a UID SEARCH RETURN (MIN COUNT) CHARSET utf-8 TEXT x")
        self.assertEqual(
            command,
            Search("a", "SEARCH", True, "UTF-8", SearchKey("TEXT", (b"x",)), ("MIN", "COUNT")),
        )
        plain = parse(b"a SEARCH charset US-ASCII ALL")
        self.assertEqual(plain.charset, "US-ASCII")  # type: ignore[attr-defined]

    def test_errors(self) -> None:
        for text in (
            b"",
            b"FOO",
            b"SINCE 31-Feb-2000",
            b"SINCE 1-Foo-2000",
            b"SINCE yesterday",
            b"OR SEEN",
            b"NOT",
            b"(SEEN",
            b"SEEN)",
            b"()",
            b"LARGER x",
            b"HEADER a:b c",
            b"KEYWORD \\Bogus",
            b"RETURN (FOO) ALL",
            b"UID x",
        ):
            self.assertRaises(ParseError, self.key, text)

    def test_nesting_limit(self) -> None:
        deep = b"(" * 40 + b"SEEN" + b")" * 40
        error = self.assertRaises(ParseError, self.key, deep)
        self.assertEqual(error.code, "LIMIT")
        self.assertEqual(self.key(b"(" * 10 + b"SEEN" + b")" * 10), flag("\\Seen"))
        nots = b"NOT " * 100 + b"SEEN"
        self.assertRaises(ParseError, self.key, nots)


class StoreCopyTests(SynchronousTestCase):
    def test_store_forms(self) -> None:
        self.assertEqual(
            parse(b"a STORE 2:4 +FLAGS (\\Deleted)"),
            Store("a", "STORE", False, SequenceSet(((2, 4),)), "add", False, ("\\Deleted",)),
        )
        self.assertEqual(
            parse(b"a UID STORE 1 -flags.silent \\SEEN $Label1"),
            Store(
                "a", "STORE", True, SequenceSet(((1, 1),)), "remove", True, ("\\Seen", "$Label1")
            ),
        )
        self.assertEqual(parse(b"a STORE 1 FLAGS ()").flags, ())  # type: ignore[attr-defined]
        self.assertEqual(
            parse(b"a STORE 1 (UNCHANGEDSINCE 320162338) +FLAGS (x)").unchanged_since,  # type: ignore[attr-defined]
            320162338,
        )

    def test_store_errors(self) -> None:
        for text in (
            b"a STORE 1 FLAGS (\\Recent)",
            b"a STORE 1 FLAGS (\\Bogus)",
            b"a STORE 1 LABELS (x)",
            b"a STORE 1 +FLAGS",
            b"a STORE 1 FLAGS (a",
            b"a STORE 1 (FOO 1) FLAGS (a)",
            b"a STORE 1",
        ):
            self.assertRaises(ParseError, parse, text)

    def test_copy_move_expunge(self) -> None:
        self.assertEqual(
            parse(b"a COPY 2:4 MEETING"),
            Copy("a", "COPY", False, SequenceSet(((2, 4),)), "MEETING"),
        )
        self.assertEqual(
            parse(b"a UID MOVE 42 Trash"),
            Copy("a", "MOVE", True, SequenceSet(((42, 42),)), "Trash"),
        )
        self.assertEqual(parse(b"a EXPUNGE"), Expunge("a", "EXPUNGE"))
        self.assertEqual(
            parse(b"a UID EXPUNGE 3000:3002"),
            Expunge("a", "EXPUNGE", True, SequenceSet(((3000, 3002),))),
        )
        self.assertRaises(ParseError, parse, b"a UID EXPUNGE")
        self.assertRaises(ParseError, parse, b"a EXPUNGE 1")


class AppendTests(SynchronousTestCase):
    def test_append_all_parts(self) -> None:
        command = parse(
            b'a APPEND saved-messages (\\Seen $x) "05-Jul-1994 02:44:25 -0700" {5}',
            b"hello",
            b"",
        )
        zone = datetime.timezone(-datetime.timedelta(hours=7))
        message = AppendMessage(
            ("\\Seen", "$x"),
            datetime.datetime(1994, 7, 5, 2, 44, 25, tzinfo=zone),
            (Text(b"hello"),),
        )
        self.assertEqual(command, Append("a", "APPEND", "saved-messages", (message,)))

    def test_append_minimal_and_spooled(self) -> None:
        spooled = LiteralFile(io.BytesIO(b"x" * 10), 10)
        command = parse(b"a APPEND INBOX {10+}", spooled, b"")
        message = AppendMessage((), None, (Text(spooled),))
        self.assertEqual(command, Append("a", "APPEND", "INBOX", (message,)))
        command = parse(b"a APPEND INBOX () {1}", b"x", b"")
        assert isinstance(command, Append)
        self.assertEqual(command.messages[0].flags, ())

    def test_multiappend_and_catenate(self) -> None:
        """RFC 3502's append-message repeated; RFC 4469's cat-parts."""
        command = parse(
            b"a APPEND INBOX {1}",
            b"x",
            b" (\\Seen) CATENATE (TEXT {2}",
            b"yz",
            b' url "/INBOX/;UID=1")',
        )
        assert isinstance(command, Append)
        self.assertEqual(
            command.messages,
            (
                AppendMessage((), None, (Text(b"x"),)),
                AppendMessage(
                    ("\\Seen",), None, (Text(b"yz"), Url("/INBOX/;UID=1")), catenate=True
                ),
            ),
        )
        for bad in (b"a APPEND INBOX CATENATE ()", b"a APPEND INBOX CATENATE (FOO x)"):
            self.assertRaises(ParseError, parse, bad)

    def test_append_binary_literal(self) -> None:
        command = parse(b"a APPEND INBOX ~{3}", b"a\x00b", b"")
        assert isinstance(command, Append)
        self.assertTrue(command.messages[0].binary)

    def test_space_padded_day(self) -> None:
        command = parse(b'a APPEND INBOX " 5-Jul-1994 02:44:25 +0000" {1}', b"x", b"")
        assert isinstance(command, Append)
        date = command.messages[0].date
        assert date is not None
        self.assertEqual(date.day, 5)

    def test_append_errors(self) -> None:
        for segments in (
            [b'a APPEND INBOX "hello"'],
            [b"a APPEND INBOX (\\Seen)"],
            [b'a APPEND INBOX "5-Jul-1994" {1}', b"x", b""],
            [b'a APPEND INBOX "05-Jul-1994 25:44:25 +0000" {1}', b"x", b""],
            [b'a APPEND INBOX "05-Jul-1994 02:44:25 +2400" {1}', b"x", b""],
            [b"a APPEND INBOX (\\Recent) {1}", b"x", b""],
            [b"a APPEND INBOX {1}", b"x", b" extra"],
        ):
            self.assertRaises(ParseError, parse_command, segments)


class MiscCommandTests(SynchronousTestCase):
    def test_enable(self) -> None:
        self.assertEqual(
            parse(b"a ENABLE condstore UTF8=ACCEPT"),
            Enable("a", "ENABLE", ("CONDSTORE", "UTF8=ACCEPT")),
        )
        self.assertRaises(ParseError, parse, b"a ENABLE")

    def test_id(self) -> None:
        self.assertEqual(parse(b"a ID NIL"), Id("a", "ID", None))
        self.assertEqual(
            parse(b'a ID ("name" "sodr" "version" NIL)'),
            Id("a", "ID", (("name", "sodr"), ("version", None))),
        )
        self.assertRaises(ParseError, parse, b'a ID ("name")')
        self.assertRaises(ParseError, parse, b"a ID")


class RobustnessTests(SynchronousTestCase):
    """Whatever arrives, the parser answers with a command or a ParseError."""

    SAMPLES = (
        b'a1 FETCH 1:*,4:2 (FLAGS BODY.PEEK[1.2.HEADER.FIELDS (From "To")]<0.100> BINARY[1])',
        b"a2 UID SEARCH CHARSET UTF-8 OR (FROM x SEEN) NOT 1:5 SINCE 1-Feb-2020",
        b'a3 LIST (SUBSCRIBED) "" (INBOX "%") RETURN (CHILDREN STATUS (MESSAGES))',
        b"a4 STORE 1 (UNCHANGEDSINCE 5) +FLAGS.SILENT (\\seen foo)",
        b"a5 CREATE x (USE (\\Drafts))",
        b'a6 ID ("name" "x" "v" NIL)',
        b'a7 APPEND INBOX (\\Seen) "01-Jan-2020 10:00:00 +0100" {3}',
        b'a8 LOGIN "a\\"b" c',
        b"a9 SELECT inbox (CONDSTORE)",
    )

    def test_mutations_raise_only_parse_errors(self) -> None:
        rng = random.Random(3501)
        alphabet = b' ()[]<>{}"\\*%:,.+-~0123456789ABCXYZ\r\n\x00\xff'
        count = 0
        for sample in self.SAMPLES:
            for _ in range(400):
                data = bytearray(sample)
                for _ in range(rng.randint(1, 4)):
                    pos = rng.randrange(len(data) + 1)
                    action = rng.random()
                    if action < 0.4 and data:
                        del data[min(pos, len(data) - 1)]
                    elif action < 0.8:
                        data.insert(pos, rng.choice(alphabet))
                    else:
                        data[min(pos, len(data) - 1)] = rng.choice(alphabet)
                segments: list[bytes | LiteralFile] = [bytes(data)]
                marker = lexer.literal_marker(bytes(data))
                if marker is not None and marker[0] < 100:
                    segments += [b"x" * marker[0], b""]
                try:
                    parse_command(segments)
                except ParseError:
                    count += 1
        self.assertGreater(count, 1000)

    def test_truncations_are_refused_with_their_tag(self) -> None:
        """A command cut short anywhere is a shorter command of its own, or
        refused with what was expected (never the safety net's "malformed
        command", which would be a parser bug) and, once the tag and its
        space have arrived, with the tag."""
        for sample in self.SAMPLES:
            tag = sample.split(b" ", 1)[0].decode()
            refused = 0
            for end in range(len(sample)):
                line = sample[:end]
                try:
                    command = parse_command([line])
                except ParseError as error:
                    refused += 1
                    self.assertNotIn("malformed command", error.message, line)
                    self.assertEqual(error.tag, tag if end > len(tag) else None, line)
                    continue
                self.assertEqual(command.tag, tag, line)
            self.assertGreater(refused, len(sample) // 2, sample)

    def test_empty_segments(self) -> None:
        self.assertRaises(ParseError, parse_command, [])
        self.assertRaises(ParseError, parse_command, [LiteralFile(io.BytesIO(), 0)])


class WriterTests(SynchronousTestCase):
    def test_astring_forms(self) -> None:
        self.assertEqual(response.astring("INBOX"), b"INBOX")
        self.assertEqual(response.astring("a]b"), b"a]b")
        self.assertEqual(response.astring("two words"), b'"two words"')
        self.assertEqual(response.astring(""), b'""')
        self.assertEqual(response.astring("nil"), b'"nil"')
        self.assertEqual(response.astring('say "hi" \\o/'), b'"say \\"hi\\" \\\\o/"')
        self.assertEqual(response.astring("a\r\nb"), b"{4}\r\na\r\nb")
        self.assertEqual(response.astring("über"), b"{5}\r\n\xc3\xbcber")
        long = "x " * 600
        self.assertEqual(response.astring(long), b"{1200}\r\n" + long.encode())

    def test_string_rules(self) -> None:
        # The server's own strings: printable ASCII quoted, specials escaped,
        # up to MAX_QUOTED octets.  A message's text (verbatim): every
        # TEXT-CHAR quoted as is, a quoted-special or MAX_QUOTED octets make
        # it a literal (as Dovecot sends ENVELOPE and BODYSTRUCTURE strings).
        cases = [
            (b"plain", b'"plain"', b'"plain"'),
            (b'say "hi"', b'"say \\"hi\\""', b'{8}\r\nsay "hi"'),
            (b"a\\b", b'"a\\\\b"', b"{3}\r\na\\b"),
            (b"tab\there", b"{8}\r\ntab\there", b'"tab\there"'),
            (b"\x01\x7f", b"{2}\r\n\x01\x7f", b'"\x01\x7f"'),
            (b"a\r\nb", b"{4}\r\na\r\nb", b"{4}\r\na\r\nb"),
            (b"\x00", b"{1}\r\n\x00", b"{1}\r\n\x00"),
            (b"\xc3\xbc", b"{2}\r\n\xc3\xbc", b"{2}\r\n\xc3\xbc"),
            (b"x" * 1023, b'"' + b"x" * 1023 + b'"', b'"' + b"x" * 1023 + b'"'),
            (b"x" * 1024, b'"' + b"x" * 1024 + b'"', b"{1024}\r\n" + b"x" * 1024),
            (b"x" * 1025, b"{1025}\r\n" + b"x" * 1025, b"{1025}\r\n" + b"x" * 1025),
        ]
        for value, own, verbatim in cases:
            self.assertEqual(response.string(value), own, value)
            self.assertEqual(response.string(value, verbatim=True), verbatim, value)

    def test_mailbox(self) -> None:
        self.assertEqual(response.mailbox("Entwürfe"), b"Entw&APw-rfe")
        self.assertEqual(response.mailbox("A & B"), b'"A &- B"')

    def test_serialize(self) -> None:
        value = [None, 3, "a b", b"x\ny", response.Atom("\\Seen"), [], ["p"]]
        self.assertEqual(response.serialize(value), b'(NIL 3 "a b" {3}\r\nx\ny \\Seen () ("p"))')
        self.assertRaises(ValueError, response.serialize, -1)
        self.assertRaises(TypeError, response.serialize, True)

    def test_responses(self) -> None:
        self.assertEqual(
            response.tagged("a1", "NO", "Mailbox\r\ngone", "TRYCREATE"),
            b"a1 NO [TRYCREATE] Mailbox  gone\r\n",
        )
        self.assertEqual(response.tagged("a1", "OK", ""), b"a1 OK done\r\n")
        self.assertEqual(response.untagged("3", "EXISTS"), b"* 3 EXISTS\r\n")
        self.assertEqual(response.untagged_status("BYE", "bye", None), b"* BYE bye\r\n")

    def test_flag_list(self) -> None:
        self.assertEqual(
            response.flag_list(frozenset({"zeta", "\\Seen", "Alpha", "\\Answered"})),
            b"(\\Answered \\Seen Alpha zeta)",
        )
        self.assertEqual(response.flag_list(frozenset()), b"()")

    def test_date_time_round_trip(self) -> None:
        zone = datetime.timezone(datetime.timedelta(hours=-7, minutes=-30))
        when = datetime.datetime(1994, 7, 5, 2, 4, 25, tzinfo=zone)
        text = syntax.format_date_time(when)
        self.assertEqual(text, "05-Jul-1994 02:04:25 -0730")
        command = parse(b'a APPEND INBOX "' + text.encode() + b'" {1}', b"x", b"")
        assert isinstance(command, Append)
        self.assertEqual(command.messages[0].date, when)
