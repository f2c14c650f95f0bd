"""SORT, ESORT and THREAD against Dovecot's recorded answers.

tests/golden/make_golden.py recorded Dovecot 2.3's answers (``sorts`` in
tests/golden/dovecot.json) over a mailbox holding the corpus of
tests/corpus/ and the messages of tests/golden/sortcorpus.py, appended with
:func:`sortcorpus.internal_date` internal dates.  Here the same mailbox is
built over IMAP on the memory and Maildir backends and every recorded
command must give Dovecot's result: the same numbers in the same order for
SORT, the same tree for THREAD, the same items for ESEARCH (their order
within the response is the server's choice).  Deliberate differences are
listed in :data:`DELIBERATE` with their RFC reason and must still differ.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.portal import Portal
from twisted.internet import defer, protocol, reactor
from twisted.trial.unittest import TestCase

from mailsrv.auth.realm import MailRealm
from mailsrv.imap.protocol import IMAP4ServerFactory
from mailsrv.imap.syntax import format_date_time
from mailsrv.policy import SessionPolicy
from mailsrv.storage.maildir import MaildirStorage
from mailsrv.storage.memory import MemoryStorage
from tests.golden import sortcorpus
from tests.imap_helpers import Client
from tests.test_imap_render import GOLDEN
from tests.test_mime import load

#: Recorded commands whose answer differs from Dovecot's on purpose.
DELIBERATE: dict[str, str] = {}


def esearch_items(line: str) -> dict[str, object]:
    """An ESEARCH response's return data, sets expanded in their order."""
    rest = re.sub(r'^\* ESEARCH \(TAG "[^"]*"\)', "", line).strip()
    items: dict[str, object] = {}
    tokens = re.findall(r"\([^)]*\)|\S+", rest)
    i = 0
    while i < len(tokens):
        name = tokens[i].upper()
        if name == "UID":
            items["UID"] = True
            i += 1
            continue
        value = tokens[i + 1]
        if name in ("ALL",):
            items[name] = expand(value)
        elif name == "PARTIAL":
            span, found = value.strip("()").split(" ")
            items[name] = (span, [] if found == "NIL" else expand(found))
        else:
            items[name] = int(value)
        i += 2
    return items


def expand(text: str) -> list[int]:
    out: list[int] = []
    for piece in text.split(","):
        if ":" in piece:
            low, high = (int(n) for n in piece.split(":"))
            out.extend(range(low, high + 1) if low <= high else range(low, high - 1, -1))
        else:
            out.append(int(piece))
    return out


def result(untagged: list[str]) -> object:
    """What a recorded or received answer says, comparably."""
    for line in untagged:
        if line.startswith("* SORT"):
            return ("SORT", [int(n) for n in line.split()[2:]])
        if line.startswith("* THREAD"):
            return ("THREAD", line[len("* THREAD") :].strip())
        if line.startswith("* ESEARCH"):
            return ("ESEARCH", esearch_items(line))
    return ("NONE", untagged)


class SortGoldenMixin:
    def make_storage(self) -> Any:
        raise NotImplementedError

    def setUp(self) -> None:
        if not os.path.exists(GOLDEN):
            raise self.skipTest("no golden file")  # type: ignore[attr-defined]
        with open(GOLDEN) as handle:
            golden = json.load(handle)
        if "sorts" not in golden:
            raise self.skipTest("no recorded sorts")  # type: ignore[attr-defined]
        self.golden = golden
        checker = InMemoryUsernamePasswordDatabaseDontUse(joe=b"secret")
        portal = Portal(MailRealm(self.make_storage()), [checker])
        self.port: Any = reactor.listenTCP(
            0, IMAP4ServerFactory(portal, SessionPolicy(failure_delay=0.0)), interface="127.0.0.1"
        )
        self.client: Any = None

    def tearDown(self) -> Any:
        # A Deferred, which trial waits for (typed Any: unittest's is None).
        return self._tear_down()

    @defer.inlineCallbacks
    def _tear_down(self) -> Any:
        if self.client is not None and self.client.transport is not None:
            self.client.transport.loseConnection()
            yield self.client.lost
        yield self.port.stopListening()

    @defer.inlineCallbacks
    def fill(self) -> Any:
        creator = protocol.ClientCreator(reactor, Client)
        client = self.client = yield creator.connectTCP("127.0.0.1", self.port.getHost().port)
        yield client.until(b"\r\n")
        yield client.command("L", "LOGIN joe secret")
        # Some corpus messages have 8-bit headers (RFC 6855 4).
        yield client.command("E", "ENABLE UTF8=ACCEPT")
        yield client.command("C", "CREATE Sorting")
        names = sorted(n for n, r in self.golden["messages"].items() if "append" not in r)
        made = [load(name) for name in names] + sortcorpus.messages()
        for index, data in enumerate(made):
            when = format_date_time(sortcorpus.internal_date(index, len(made)))
            client.send(b'A APPEND Sorting "%s" {%d+}\r\n' % (when.encode(), len(data)))
            client.send(data + b"\r\n")
            response = yield client.until_tagged("A")
            assert b"A OK" in response, response
        response = yield client.command("S", "SELECT Sorting")
        assert b"S OK" in response, response
        return client

    @defer.inlineCallbacks
    def test_recorded_sorts(self) -> Any:
        client = yield self.fill()
        mismatches = []
        for record in self.golden["sorts"]:
            text = record["command"]
            response = yield client.command("t", text.encode("utf-8"))
            lines = response.decode("utf-8").split("\r\n")
            tagged = lines[-2]
            self.assertTrue(tagged.startswith(f"t {record['status']}"), (text, tagged))  # type: ignore[attr-defined]
            ours, theirs = result(lines[:-2]), result(record["untagged"])
            if text in DELIBERATE:
                self.assertNotEqual(ours, theirs, f"{text} agrees now: drop the exception")  # type: ignore[attr-defined]
            elif ours != theirs:
                mismatches.append((text, ours, theirs))
        self.assertEqual(mismatches, [])  # type: ignore[attr-defined]


class MemorySortGoldenTests(SortGoldenMixin, TestCase):
    def make_storage(self) -> Any:
        return MemoryStorage()


class MaildirSortGoldenTests(SortGoldenMixin, TestCase):
    def make_storage(self) -> Any:
        root = os.path.abspath(self.mktemp())
        storage = MaildirStorage(os.path.join(root, "{user}", "Maildir"))
        self.addCleanup(storage.stop_watching)
        return storage
