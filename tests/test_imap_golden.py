"""FETCH over the wire against Dovecot's recorded answers, for the whole corpus.

tests/test_imap_render.py checks the model's IMAP values; this module checks
what a client receives: every corpus message is APPENDed over loopback IMAP
to a real server (memory and Maildir backends), then fetched item by item,
and each response is compared octet for octet with the one Dovecot gave
(tests/golden/dovecot.json, made by tests/golden/make_golden.py).  Where we
differ on purpose (tests.test_imap_render.DELIBERATE, each with its RFC), the
values are compared instead and must differ, so a stale exception shows.
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
from mailsrv.policy import SessionPolicy
from mailsrv.storage.maildir import MaildirStorage
from mailsrv.storage.memory import MemoryStorage
from tests.imap_helpers import Client
from tests.test_imap_render import DELIBERATE, GOLDEN, fetch_items
from tests.test_mime import load

_LITERAL = re.compile(rb"\{(\d+)\}\r\n$")


def wire_to_imaplib(response: bytes) -> str:
    """``* 6 FETCH (...)\\r\\n`` as make_golden.py recorded it from imaplib:
    ``6 (...)``, literals joined by CRLF."""
    assert response.startswith(b"* "), response[:60]
    number, rest = response[2:].split(b" FETCH ", 1)
    assert rest.endswith(b"\r\n"), rest[-20:]
    return (number + b" " + rest[:-2]).decode("latin-1")


#: SEARCH answers that differ from Dovecot's on purpose.
DELIBERATE_SEARCH: dict[tuple[str, str | None], str] = {
    # 35-boundary-whitespace.eml: "--wsx  " is no delimiter of boundary "ws"
    # (RFC 2046 5.1.1, see tests.test_imap_render), so the text we search holds
    # the line Dovecot took for a delimiter.
    ("BODY boundary", None): "RFC 2046 5.1.1 delimiter syntax",
}


class LiteralClient(Client):
    """The test client, plus reading one untagged response with literals."""

    def response(self, tag: str) -> defer.Deferred[tuple[list[bytes], bytes]]:
        """All untagged responses (literals included) and the tagged line."""
        marker = tag.encode() + b" "
        d = self.wait(lambda data: _tagged_end(data, marker))
        return d.addCallback(_split_responses, marker)


def _tagged_end(data: bytes, marker: bytes) -> int:
    """Where the tagged line (starting with ``marker``) ends, literals
    skipped; -1 until it has all arrived."""
    pos = 0
    while True:
        end = data.find(b"\r\n", pos)
        if end < 0:
            return -1
        line = data[pos : end + 2]
        match = _LITERAL.search(line)
        if match:
            skip = end + 2 + int(match.group(1))
            if skip > len(data):
                return -1
            # The response goes on after the literal's data.
            next_end = data.find(b"\r\n", skip)
            if next_end < 0:
                return -1
            tail = data[skip : next_end + 2]
            pos = skip if _LITERAL.search(tail) else next_end + 2
            continue
        if line.startswith(marker):
            return end + 2
        pos = end + 2


def _split_responses(data: bytes, marker: bytes) -> tuple[list[bytes], bytes]:
    """The untagged responses, each with its literals, and the tagged line."""
    lines: list[bytes] = []
    pos = 0
    current = b""
    while pos < len(data):
        end = data.find(b"\r\n", pos)
        line = data[pos : end + 2]
        match = _LITERAL.search(line)
        if match:
            skip = end + 2 + int(match.group(1))
            current += line + data[end + 2 : skip]
            pos = skip
            continue
        current += line
        pos = end + 2
        if current.startswith(marker):
            return lines, current
        lines.append(current)
        current = b""
    raise AssertionError(f"no tagged response in {data[-200:]!r}")


class GoldenWireMixin:
    """Run with a storage made by :meth:`make_storage`."""

    def make_storage(self) -> Any:
        raise NotImplementedError

    def setUp(self) -> None:
        if not os.path.exists(GOLDEN):
            raise self.skipTest("no golden file")  # type: ignore[attr-defined]
        with open(GOLDEN) as handle:
            self.golden: dict[str, dict[str, Any]] = json.load(handle)["messages"]
        checker = InMemoryUsernamePasswordDatabaseDontUse(joe=b"secret")
        portal = Portal(MailRealm(self.make_storage()), [checker])
        policy = SessionPolicy(failure_delay=0.0)
        self.port: Any = reactor.listenTCP(
            0, IMAP4ServerFactory(portal, policy), interface="127.0.0.1"
        )

    def tearDown(self) -> Any:
        # A Deferred, which trial waits for (typed Any: unittest's is None).
        return self._tear_down()

    @defer.inlineCallbacks
    def _tear_down(self) -> Any:
        client = getattr(self, "client", None)
        if client is not None and client.transport is not None:
            client.transport.loseConnection()
            yield client.lost
        yield self.port.stopListening()

    @defer.inlineCallbacks
    def session(self, utf8: bool = False) -> Any:
        """A session with the corpus in its INBOX, EXAMINEd; ``utf8``: one
        that enabled UTF8=ACCEPT, which is sent the stored octets of the
        messages with 8-bit headers, as Dovecot 2.3 sends them to anyone (a
        session that did not enable it gets RFC 6858's synthetic message:
        tests/test_imap_downgrade.py)."""
        creator = protocol.ClientCreator(reactor, LiteralClient)
        client = yield creator.connectTCP("127.0.0.1", self.port.getHost().port)
        self.client = client
        yield client.until(b"\r\n")
        response = yield client.command("L", "LOGIN joe secret")
        assert b"L OK" in response, response
        # Some corpus messages have 8-bit headers: RFC 6855 4 wants UTF-8
        # enabled to append them.  The searches then run in a plain session
        # (SEARCH CHARSET is BAD after ENABLE UTF8=ACCEPT, RFC 6855 3).
        response = yield client.command("E", "ENABLE UTF8=ACCEPT")
        assert b"E OK" in response, response
        for name, record in sorted(self.golden.items()):
            if "append" in record:
                continue
            data = load(name)
            client.send(b"A APPEND INBOX {%d+}\r\n" % len(data) + data + b"\r\n")
            response = yield client.until_tagged("A")
            assert b"A OK" in response, (name, response)
        response = yield client.command("U", "UNAUTHENTICATE")
        assert b"U OK" in response, response
        response = yield client.command("L", "LOGIN joe secret")
        assert b"L OK" in response, response
        if utf8:
            response = yield client.command("E", "ENABLE UTF8=ACCEPT")
            assert b"E OK" in response, response
        response = yield client.command("S", "EXAMINE INBOX")
        assert b"S OK" in response, response
        return client

    @defer.inlineCallbacks
    def fetch(self, client: LiteralClient, seq: int, items: str) -> Any:
        client.send(f"F FETCH {seq} ({items})\r\n".encode())
        untagged, tagged = yield client.response("F")
        return untagged, tagged

    def compare(self, name: str, item: str, ours: str, theirs: str) -> None:
        check = self.assertEqual  # type: ignore[attr-defined]
        if (name, item) in DELIBERATE:
            # Differs on purpose (see tests.test_imap_render): values must differ.
            ours_values = fetch_items(ours)
            theirs_values = fetch_items(theirs)
            self.assertNotEqual(  # type: ignore[attr-defined]
                ours_values, theirs_values, f"{name} {item} agrees now: drop the exception"
            )
            return
        check(ours, theirs, f"{name} {item}")

    @defer.inlineCallbacks
    def test_corpus(self) -> Any:
        client = yield self.session(utf8=True)
        seq = 0
        for name, record in sorted(self.golden.items()):
            if "append" in record:
                continue
            seq += 1
            yield self.check_structure(client, seq, name, record)
            yield self.check_sections(client, seq, name, record)
            yield self.check_binary(client, seq, name, record)

    @defer.inlineCallbacks
    def check_structure(self, client: LiteralClient, seq: int, name: str, record: Any) -> Any:
        """RFC822.SIZE, ENVELOPE, BODY and BODYSTRUCTURE as Dovecot's."""
        expected = record["fetch"].split(" ", 1)[1]
        items = "RFC822.SIZE ENVELOPE BODY BODYSTRUCTURE"
        untagged, tagged = yield self.fetch(client, seq, items)
        self.assertTrue(tagged.startswith(b"F OK"), (name, tagged))  # type: ignore[attr-defined]
        (line,) = untagged
        ours = wire_to_imaplib(line)
        if not any((name, i) in DELIBERATE for i in items.split()):
            self.assertEqual(  # type: ignore[attr-defined]
                normalize(ours.split(" ", 1)[1]), normalize(expected), name
            )
            return
        ours_values = fetch_items(ours)
        theirs_values = fetch_items(record["fetch"])
        for item in items.split():
            self.compare(
                name,
                item,
                f"{seq} ({item} " + _render_one(ours_values[item]) + ")",
                f"{seq} ({item} " + _render_one(theirs_values[item]) + ")",
            )

    @defer.inlineCallbacks
    def check_sections(self, client: LiteralClient, seq: int, name: str, record: Any) -> Any:
        """Each BODY[section] as Dovecot's."""
        for section, answer in record["body"].items():
            if answer is None:
                continue
            untagged, tagged = yield self.fetch(client, seq, f"BODY.PEEK[{section}]")
            self.assertTrue(tagged.startswith(b"F OK"), (name, section, tagged))  # type: ignore[attr-defined]
            (line,) = untagged
            ours = wire_to_imaplib(line)
            theirs = f"{seq} " + answer.split(" ", 1)[1]
            if theirs.endswith("{0}\r\n)") and ours.endswith(" NIL)"):
                continue  # a section this message lacks: NIL, Dovecot empty
            self.compare(name, f"BODY[{section}]", ours, theirs)

    @defer.inlineCallbacks
    def check_binary(self, client: LiteralClient, seq: int, name: str, record: Any) -> Any:
        """Each leaf's BINARY and BINARY.SIZE as Dovecot's."""
        for part, answer in record["binary"].items():
            items = f"BINARY.PEEK[{part}] BINARY.SIZE[{part}]"
            untagged, tagged = yield self.fetch(client, seq, items)
            if answer.startswith("NO"):
                if (name, f"BINARY {part}") not in DELIBERATE:
                    self.assertIn(b"[UNKNOWN-CTE]", tagged, (name, part))  # type: ignore[attr-defined]
                continue
            if (name, f"BINARY {part}") in DELIBERATE:
                continue  # values compared in tests.test_imap_render
            self.assertTrue(tagged.startswith(b"F OK"), (name, part, tagged))  # type: ignore[attr-defined]
            (line,) = untagged
            ours = wire_to_imaplib(line)
            theirs = f"{seq} " + answer.split(" ", 1)[1]
            self.assertEqual(ours, theirs, f"{name} BINARY {part}")  # type: ignore[attr-defined]

    @defer.inlineCallbacks
    def test_searches(self) -> Any:
        """Every recorded SEARCH gives Dovecot's answer over the corpus."""
        with open(GOLDEN) as handle:
            searches = json.load(handle).get("searches")
        if not searches:
            raise self.skipTest("no recorded searches")  # type: ignore[attr-defined]
        client = yield self.session()
        mismatches = []
        for record in searches:
            criteria, literal = record["criteria"], record["literal"]
            if literal is None:
                line = b"s SEARCH " + criteria.encode("ascii") + b"\r\n"
            else:
                data = literal.encode("utf-8")
                line = b"s SEARCH CHARSET UTF-8 %s {%d+}\r\n%s\r\n" % (
                    criteria.encode("ascii"),
                    len(data),
                    data,
                )
            client.transport.write(line)
            untagged, tagged = yield client.response("s")
            self.assertTrue(tagged.startswith(b"s OK"), (criteria, literal, tagged))  # type: ignore[attr-defined]
            (answer,) = untagged
            ours = [int(n) for n in answer.split()[2:]]
            if (criteria, literal) in DELIBERATE_SEARCH:
                self.assertNotEqual(ours, record["result"], (criteria, "agrees now"))  # type: ignore[attr-defined]
                continue
            if ours != record["result"]:
                theirs = set(record["result"])
                mismatches.append(
                    (criteria, literal, sorted(set(ours) - theirs), sorted(theirs - set(ours)))
                )
        # (criteria, literal, only we match, only Dovecot matches)
        self.assertEqual(mismatches, [])  # type: ignore[attr-defined]


_QUOTABLE = re.compile(r"^[\x20\x21\x23-\x5b\x5d-\x7e\t]*$")


def normalize(answer: str) -> str:
    """Write literals that could have been quoted strings as quoted strings.

    The choice between the two forms is the server's (RFC 3501 4.3); Dovecot
    sends a once-folded header value as a literal, we send it quoted.
    """
    out = []
    pos = 0
    for match in re.finditer(r"\{(\d+)\}\r\n", answer):
        if match.start() < pos:
            continue
        start = match.end()
        value = answer[start : start + int(match.group(1))]
        out.append(answer[pos : match.start()])
        if _QUOTABLE.match(value) and len(value) < 1024:
            out.append('"' + value + '"')
        else:
            out.append(answer[match.start() : start] + value)
        pos = start + len(value)
    out.append(answer[pos:])
    return "".join(out)


def _render_one(value: Any) -> str:
    """A parsed value written back for the value comparison's messages."""
    if value is None:
        return "NIL"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, bytes):
        return json.dumps(value.decode("latin-1"))
    return "(" + " ".join(_render_one(v) for v in value) + ")"


class MemoryGoldenTests(GoldenWireMixin, TestCase):
    def make_storage(self) -> Any:
        return MemoryStorage()


class MaildirGoldenTests(GoldenWireMixin, TestCase):
    def make_storage(self) -> Any:
        root = os.path.abspath(self.mktemp())
        storage = MaildirStorage(os.path.join(root, "{user}", "Maildir"))
        self.addCleanup(storage.stop_watching)
        return storage
