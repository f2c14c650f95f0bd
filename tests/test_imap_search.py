"""SEARCH evaluation (mailsrv.imap.search) over index metadata.

Wire-level SEARCH answers are in tests/test_imap_server.py; here each key is
compiled and evaluated directly, so issue 5's content keys have one place
to be added.
"""

from __future__ import annotations

import datetime

from twisted.trial.unittest import SynchronousTestCase

from mailsrv.imap import grammar, search
from mailsrv.imap.selected import SelectedMailbox
from mailsrv.interfaces import MessageInfo
from tests.test_imap_server import FakeMailbox

DAY = datetime.datetime(2024, 5, 10, 23, 30, tzinfo=datetime.timezone(datetime.timedelta(hours=-4)))


def _key(text: str) -> grammar.SearchKey:
    command = grammar.parse_command([b"t SEARCH " + text.encode()])
    assert isinstance(command, grammar.Search)
    return command.key


class CompileTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.view = SelectedMailbox(FakeMailbox("INBOX"), [3, 5, 8, 9], False, recent=[9])
        self.messages = [
            (1, MessageInfo(3, frozenset({"\\Seen"}), DAY, 100, 1)),
            (2, MessageInfo(5, frozenset({"\\Seen", "$Work"}), DAY, 2000, 2)),
            (3, MessageInfo(8, frozenset(), DAY - datetime.timedelta(days=3), 50, 3)),
            (4, MessageInfo(9, frozenset({"\\Deleted"}), DAY, 10, 4)),
        ]

    def matches(self, text: str) -> list[int]:
        predicate = search.compile_key(_key(text), self.view)
        return [seq for seq, message in self.messages if predicate(seq, message)]

    def test_index_keys(self) -> None:
        self.assertEqual(self.matches("ALL"), [1, 2, 3, 4])
        self.assertEqual(self.matches("SEEN"), [1, 2])
        self.assertEqual(self.matches("UNSEEN"), [3, 4])
        self.assertEqual(self.matches("KEYWORD $Work"), [2])
        self.assertEqual(self.matches("UNKEYWORD $Work"), [1, 3, 4])
        self.assertEqual(self.matches("RECENT"), [4])
        self.assertEqual(self.matches("NEW"), [4])
        self.assertEqual(self.matches("OLD"), [1, 2, 3])
        self.assertEqual(self.matches("DELETED"), [4])
        self.assertEqual(self.matches("2:3"), [2, 3])
        self.assertEqual(self.matches("*"), [4])
        self.assertEqual(self.matches("UID 4:8"), [2, 3])
        self.assertEqual(self.matches("UID *"), [4])
        self.assertEqual(self.matches("LARGER 99"), [1, 2])
        self.assertEqual(self.matches("SMALLER 100"), [3, 4])
        # Dates compare in the internal date's own zone, ignoring the time.
        self.assertEqual(self.matches("ON 10-May-2024"), [1, 2, 4])
        self.assertEqual(self.matches("BEFORE 10-May-2024"), [3])
        self.assertEqual(self.matches("SINCE 8-May-2024"), [1, 2, 4])
        self.assertEqual(self.matches("OR SEEN DELETED"), [1, 2, 4])
        self.assertEqual(self.matches("NOT (SEEN LARGER 1000)"), [1, 3, 4])

    def test_content_keys_are_not_implemented_yet(self) -> None:
        for text in ("SUBJECT x", "BODY x", "TEXT x", "HEADER X-A b", "SENTON 1-Jan-2024"):
            with self.assertRaises(search.NotImplementedKey):
                search.compile_key(_key(text), self.view)
        with self.assertRaises(search.NotImplementedKey):
            search.compile_key(_key("OR SEEN FROM joe"), self.view)
