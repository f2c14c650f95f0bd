"""Keywords on the wire: FLAGS announces them before any FETCH shows one.

RFC 3501 7.2.6: the FLAGS response tells a client which flags the mailbox
has, and the client must be told again when that changes.  These sessions
run over real loopback sockets on both backends; a keyword appears through
another session's STORE or APPEND, the session's own STORE, and (Maildir)
another process.  Every response stream is also checked as a whole: no
FETCH may name a keyword before a FLAGS response named it.
"""

from __future__ import annotations

import io
import re
from typing import Any

from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase

from mailsrv.interfaces import IStorage, StoreMode
from mailsrv.storage.memory import MemoryStorage
from tests.test_imap_backends import MESSAGE, _BackendBase

_SYSTEM = "\\Answered \\Flagged \\Deleted \\Seen \\Draft"


#: What re-selecting says first (RFC 7162 3.2.11).
CLOSED = b"* OK [CLOSED] Previous mailbox closed\r\n"


def flags_lines(*keywords: str, create: bool = True, readonly: bool = False) -> bytes:
    """The FLAGS and PERMANENTFLAGS responses naming ``keywords``."""
    flags = " ".join((_SYSTEM, *keywords))
    permanent = "" if readonly else flags + (" \\*" if create else "")
    return f"* FLAGS ({flags})\r\n* OK [PERMANENTFLAGS ({permanent})] Flags\r\n".encode()


_FLAGS_RESPONSE = re.compile(rb"\* FLAGS \(([^)]*)\)")
_FETCH_FLAGS = re.compile(rb"\* \d+ FETCH \(.*?FLAGS \(([^)]*)\).*")


def unannounced_keywords(stream: bytes) -> list[bytes]:
    """Keywords that FETCH responses in ``stream`` show before any FLAGS
    response named them (the SELECT's FLAGS counts)."""
    known: set[bytes] = set()
    early: list[bytes] = []
    for line in stream.split(b"\r\n"):
        announced = _FLAGS_RESPONSE.fullmatch(line)
        if announced:
            known.update(announced.group(1).split())
            continue
        shown = _FETCH_FLAGS.fullmatch(line)
        if shown:
            for flag in shown.group(1).split():
                if not flag.startswith(b"\\") and flag not in known:
                    early.append(flag)
    return early


class _KeywordScenarios(_BackendBase):
    """Mixed into a TestCase with ``make_storage`` and ``deliver``."""

    @defer.inlineCallbacks
    def sessions(self, count: int) -> Any:
        first = yield self.session(None)  # creates the account
        yield first.command("Z", "LOGOUT")
        self.deliver(1)
        clients = []
        for _ in range(count):
            client = yield self.session()
            clients.append(client)
        return clients

    @defer.inlineCallbacks
    def test_select_lists_defined_keywords(self) -> Any:
        t: Any = self
        (a,) = yield self.sessions(1)
        response = yield a.command("s", "STORE 1 +FLAGS ($Work Later)")
        t.assertTrue(response.startswith(flags_lines("$Work", "Later")), response)
        for command, readonly in (("SELECT", False), ("EXAMINE", True)):
            response = yield a.command("e", f"{command} INBOX")
            t.assertTrue(
                response.startswith(CLOSED + flags_lines("$Work", "Later", readonly=readonly)),
                response,
            )

    @defer.inlineCallbacks
    def test_fetch_after_another_sessions_store(self) -> Any:
        """The stress run's failure: a FETCH showing a keyword another
        session just stored, with no FLAGS before it."""
        t: Any = self
        a, b = yield self.sessions(2)
        response = yield b.command("b", "STORE 1 +FLAGS ($Work)")
        t.assertEqual(
            response,
            flags_lines("$Work") + b"* 1 FETCH (FLAGS ($Work))\r\nb OK STORE completed\r\n",
        )
        response = yield a.command("f", "FETCH 1 (FLAGS)")
        t.assertEqual(
            response,
            flags_lines("$Work")
            + b"* 1 FETCH (FLAGS (\\Recent $Work))\r\n"
            + b"* 1 FETCH (FLAGS (\\Recent $Work))\r\n"
            + b"f OK FETCH completed\r\n",
        )

    @defer.inlineCallbacks
    def test_update_after_another_sessions_store(self) -> Any:
        t: Any = self
        a, b = yield self.sessions(2)
        yield b.command("b", "STORE 1 +FLAGS (Later)")
        response = yield a.command("n", "NOOP")
        t.assertEqual(
            response,
            flags_lines("Later") + b"* 1 FETCH (FLAGS (\\Recent Later))\r\nn OK NOOP completed\r\n",
        )
        # Told once: the next keyword-free change needs no FLAGS.
        yield b.command("b", "STORE 1 +FLAGS (\\Seen)")
        response = yield a.command("n", "NOOP")
        t.assertEqual(
            response, b"* 1 FETCH (FLAGS (\\Recent \\Seen Later))\r\nn OK NOOP completed\r\n"
        )

    @defer.inlineCallbacks
    def test_append_announces_before_exists(self) -> Any:
        t: Any = self
        a, b = yield self.sessions(2)
        response = yield b.command("p", "APPEND INBOX (Later) {5+}\r\nhello")
        t.assertTrue(
            response.startswith(flags_lines("Later") + b"* 2 EXISTS\r\n* 1 RECENT\r\n"), response
        )
        t.assertRegex(response, rb"\r\np OK \[APPENDUID \d+ 2\] APPEND completed\r\n$")
        response = yield a.command("n", "NOOP")
        t.assertEqual(
            response,
            flags_lines("Later") + b"* 2 EXISTS\r\n* 1 RECENT\r\nn OK NOOP completed\r\n",
        )

    @defer.inlineCallbacks
    def test_examine_is_told_with_empty_permanentflags(self) -> Any:
        t: Any = self
        a, b = yield self.sessions(2)
        response = yield a.command("e", "EXAMINE INBOX")
        t.assertTrue(response.startswith(CLOSED + flags_lines(readonly=True)), response)
        yield b.command("b", "STORE 1 +FLAGS (Later)")
        response = yield a.command("n", "NOOP")
        t.assertEqual(
            response,
            flags_lines("Later", readonly=True)
            + b"* 1 FETCH (FLAGS (Later))\r\nn OK NOOP completed\r\n",
        )

    @defer.inlineCallbacks
    def test_idle_push_announces_first(self) -> Any:
        t: Any = self
        a, b = yield self.sessions(2)
        a.send(b"i IDLE\r\n")
        yield a.until(b"+ idling\r\n")
        heard = a.until(b"FETCH")
        yield b.command("b", "STORE 1 +FLAGS (Later)")
        response = yield heard
        t.assertEqual(response, flags_lines("Later") + b"* 1 FETCH (FLAGS (\\Recent Later))\r\n")
        a.send(b"DONE\r\n")
        response = yield a.until_tagged("i")
        t.assertEqual(response, b"i OK IDLE terminated\r\n")

    @defer.inlineCallbacks
    def test_nil_keyword_refused(self) -> Any:
        t: Any = self
        (a,) = yield self.sessions(1)
        for tag, command in (
            ("s", "STORE 1 +FLAGS (NIL)"),
            ("t", "STORE 1 FLAGS (\\Seen nil)"),
            ("p", "APPEND INBOX (Nil) {5+}\r\nhello"),
        ):
            response = yield a.command(tag, command)
            t.assertEqual(
                response,
                tag.encode() + b" NO [CANNOT] NIL cannot be a keyword: clients read it as nil\r\n",
            )
        response = yield a.command("f", "FETCH 1:* (FLAGS)")
        t.assertEqual(response, b"* 1 FETCH (FLAGS (\\Recent))\r\nf OK FETCH completed\r\n")

    @defer.inlineCallbacks
    def test_many_sessions_storing_keywords(self) -> Any:
        """Sessions pipelining STOREs and FETCHes of new keywords: whatever
        the interleaving, no FETCH shows a keyword its session was not told
        about (20 keywords: a Maildir folder holds 26)."""
        t: Any = self
        clients = yield self.sessions(5)
        for n in range(2, 5):
            self.deliver(n)
        done = []
        for number, client in enumerate(clients):
            commands = []
            for step in range(4):
                keyword = f"k{number}x{step}"
                commands.append(f"s{step} STORE {step + 1} +FLAGS ({keyword})\r\n")
                commands.append(f"f{step} FETCH 1:* (FLAGS)\r\n")
            commands.append("n NOOP\r\n")
            client.send("".join(commands).encode())
            done.append(client.until_tagged("n"))
        streams = yield defer.gatherResults(done)
        for client, stream in zip(clients, streams, strict=True):
            # Whatever the others did last is shown now, too.
            final = yield client.command("z", "FETCH 1:* (FLAGS)")
            stream += final
            t.assertEqual(unannounced_keywords(stream), [])
            t.assertEqual(len(re.findall(rb"^\w+ OK ", stream, re.MULTILINE)), 10, stream)
            t.assertEqual(len(set(re.findall(rb"k\dx\d", final))), 20, final)


class MemoryKeywordTests(_KeywordScenarios, TestCase):
    def make_storage(self) -> IStorage:
        return MemoryStorage()

    def deliver(self, number: int) -> None:
        storage: Any = self.storage
        storage.deliver("joe", MESSAGE % (number, number))


class MaildirKeywordTests(_KeywordScenarios, TestCase):
    def make_storage(self) -> IStorage:
        from mailsrv.storage.maildir import MaildirStorage

        self.template = self.mktemp() + "/{user}"
        storage = MaildirStorage(self.template, poll_interval=0.05, reactor=reactor)
        self.addCleanup(storage.stop_watching)
        return storage

    def deliver(self, number: int) -> None:
        from mailsrv.storage.deliver import deliver

        storage: Any = self.storage
        deliver(storage.account("joe"), io.BytesIO(MESSAGE % (number, number)))

    @defer.inlineCallbacks
    def test_keyword_stored_by_another_process(self) -> Any:
        """Another process (a second storage object, sharing no listeners)
        defines a keyword; the session hears FLAGS before the update."""
        from mailsrv.storage.maildir import MaildirStorage

        t: Any = self
        (a,) = yield self.sessions(1)
        outsider = MaildirStorage(self.template)
        inbox = yield defer.maybeDeferred(outsider.account("joe").get_mailbox, "INBOX")
        inbox.store([1], ["$Outside"], StoreMode.ADD)
        response = yield a.command("n", "NOOP")
        t.assertEqual(
            response,
            flags_lines("$Outside")
            + b"* 1 FETCH (FLAGS (\\Recent $Outside))\r\nn OK NOOP completed\r\n",
        )

    @defer.inlineCallbacks
    def test_full_keyword_table(self) -> Any:
        """A Maildir folder has 26 keyword letters.  Once they are taken a
        new keyword gets a clear NO, nothing of the refused STORE sticks,
        and PERMANENTFLAGS stops offering \\* (RFC 3501 7.1)."""
        t: Any = self
        a, b = yield self.sessions(2)
        first = [f"k{n:02}" for n in range(25)]
        response = yield a.command("s", f"STORE 1 +FLAGS.SILENT ({' '.join(first)})")
        t.assertEqual(response, b"s OK STORE completed\r\n")
        # Two new keywords, one free letter: refused as a whole.
        response = yield a.command("s", "STORE 1 +FLAGS (k25 k26)")
        t.assertEqual(
            response,
            b"s NO [LIMIT] no room for keyword k25: a Maildir folder holds at most 26 keywords\r\n",
        )
        response = yield b.command("n", "NOOP")
        t.assertEqual(
            response,
            flags_lines(*first)
            + b"* 1 FETCH (FLAGS (%s))\r\nn OK NOOP completed\r\n" % " ".join(first).encode(),
        )
        response = yield a.command("s", "STORE 1 +FLAGS.SILENT (k25)")
        t.assertEqual(response, b"s OK STORE completed\r\n")
        # The last letter is taken: every session is told, without \*.
        response = yield b.command("n", "NOOP")
        t.assertTrue(response.startswith(flags_lines(*first, "k25", create=False)), response)
        response = yield a.command("s", "STORE 1 +FLAGS (k26)")
        t.assertEqual(
            response,
            b"s NO [LIMIT] no room for keyword k26: a Maildir folder holds at most 26 keywords\r\n",
        )
        response = yield b.command("e", "SELECT INBOX")
        t.assertTrue(
            response.startswith(CLOSED + flags_lines(*first, "k25", create=False)), response
        )
        # Keywords already defined can still be stored.
        response = yield b.command("s", "STORE 1 -FLAGS (k00)")
        t.assertEqual(
            response,
            b"* 1 FETCH (FLAGS (%s))\r\ns OK STORE completed\r\n"
            % (" ".join([*first[1:], "k25"]).encode()),
        )
