"""The CPU budget of one command (``limits.command_cpu_seconds``,
:mod:`mailsrv.imap.budget`): a SEARCH, SORT, THREAD or FETCH that spends it
is answered ``NO [LIMIT]`` (RFC 9051 7.1, RFC 5530 3), whatever it had
written is complete, and the session goes on.

The daemon test spends a real budget (a tiny one, and a program of
thousands of TEXT keys over a Maildir); the others count a fake CPU clock
that advances at each reading, so where the budget runs out does not
depend on the machine's speed.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase

from mailsrv.config import ConfigError, load_config
from mailsrv.imap import budget
from mailsrv.imap.budget import BudgetExceeded, CommandBudget, unbudgeted
from mailsrv.policy import SessionPolicy
from tests.imap_helpers import ServerTestBase
from tests.test_maildir_crash import DaemonCrashTestCase

#: ``NOT TEXT w`` for thousands of words no message holds: every key of
#: the program is tested against every message's text (an AND of NOTs
#: cannot stop early), the shape of a hostile SEARCH.
WORDS = [f"q{i:04x}" for i in range(4000)]
PATHOLOGICAL = "SEARCH " + " ".join(f"NOT TEXT {w}" for w in WORDS)


def message(i: int) -> bytes:
    line = f"line {i} of a message body with some words in it, nothing more\r\n"
    return (
        f"From: a{i}@example.org\r\nTo: b@example.org\r\nSubject: message {i}\r\n"
        f"Message-ID: <{i}@example.org>\r\n\r\n" + line * 40
    ).encode()


class FakeClock:
    """A CPU clock that advances ``step`` seconds at each reading."""

    def __init__(self, step: float) -> None:
        self.now = 0.0
        self.step = step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


class CommandBudgetTests(SynchronousTestCase):
    def test_counts_only_between_resume_and_pause(self) -> None:
        clock = FakeClock(1.0)
        spent = CommandBudget(10.0, clock)
        spent.resume()  # reads 1
        spent.pause()  # reads 2: 1 s spent
        clock.now += 100  # other sessions' turns: not counted
        spent.resume()
        spent.pause()
        self.assertEqual(spent.spent, 2.0)
        spent.check()

    def test_a_streamed_value_is_waited_for_outside_the_budget(self) -> None:
        """FETCH waits for a streamed literal with the budget paused: the
        reactor serves other sessions meanwhile."""
        clock = FakeClock(0.0)
        spent = CommandBudget(10.0, clock)
        spent.resume()
        streamed: defer.Deferred[str] = defer.Deferred()
        waited = unbudgeted(spent, streamed)
        clock.now += 100.0  # other sessions' turns while the value streams
        streamed.callback("written")
        self.assertEqual(self.successResultOf(waited), "written")
        clock.now += 1.0  # this command's own work again
        spent.pause()
        self.assertEqual(spent.spent, 1.0)
        self.assertIs(unbudgeted(None, streamed), streamed)

    def test_check_raises_no_limit_once_spent(self) -> None:
        spent = CommandBudget(3.0, FakeClock(1.0))
        spent.resume()
        spent.check()  # 1 s
        spent.check()  # 2 s
        spent.check()  # 3 s: not over yet
        with self.assertRaises(BudgetExceeded) as caught:
            spent.check()
        self.assertEqual((caught.exception.status, caught.exception.code), ("NO", "LIMIT"))

    def test_zero_is_no_limit(self) -> None:
        spent = CommandBudget(0, FakeClock(1000.0))
        spent.resume()
        for _ in range(10):
            spent.check()
        test = spent.guard(lambda n: n)
        self.assertEqual(test(5), 5)


class BudgetOverSocketTests(ServerTestBase):
    """The budget on a server over the memory backend, with a fake CPU
    clock: 1 ms per reading and a budget of 1 s, so the tests of a few
    hundred messages fit in it (the clock is read before each)."""

    policy = SessionPolicy(failure_delay=0.0, command_cpu_seconds=1.0)

    def setUp(self) -> None:
        super().setUp()
        self.patch(budget, "cpu_clock", FakeClock(0.001))

    def fill(self, count: int) -> None:
        for i in range(count):
            self.deliver(message(i))

    @defer.inlineCallbacks
    def test_search_over_budget_ends_its_line_and_answers_no_limit(self) -> Any:
        """A plain SEARCH that had begun its ``* SEARCH`` line (2,000 hits
        and more are written in pieces) ends the line before the NO."""
        self.fill(6000)
        self.patch(budget, "cpu_clock", FakeClock(0.0002))  # 2,000 hits and more
        client = yield self.selected()
        response = yield client.command("a", "SEARCH NOT TEXT absent")
        lines = response.split(b"\r\n")
        self.assertEqual(lines[-2], b"a NO [LIMIT] " + budget.EXCEEDED.encode())
        self.assertTrue(lines[-3].startswith(b"* SEARCH 1 2 3 "), lines[-3][:40])
        numbers = lines[-3].split()[2:]
        self.assertGreaterEqual(len(numbers), 1999)
        self.assertEqual(numbers, [b"%d" % n for n in range(1, len(numbers) + 1)])
        # The session goes on, with a budget of its own for each command
        # (and a clock that no longer advances).
        self.patch(budget, "cpu_clock", FakeClock(0.0))
        response = yield client.command("b", "UID SEARCH UID 1:3")
        self.assertEqual(response, b"* SEARCH 1 2 3\r\nb OK SEARCH completed\r\n")

    @defer.inlineCallbacks
    def test_esearch_sort_and_thread_over_budget(self) -> Any:
        self.fill(3000)
        client = yield self.selected()
        for tag, command in (
            ("a", "SEARCH RETURN (COUNT) NOT TEXT absent"),
            ("b", "SORT (SUBJECT) UTF-8 NOT TEXT absent"),
            ("c", "THREAD REFERENCES UTF-8 NOT TEXT absent"),
            ("d", "SEARCH RETURN (SAVE) NOT TEXT absent"),
        ):
            response = yield client.command(tag, command)
            self.assertEqual(
                response, tag.encode() + b" NO [LIMIT] " + budget.EXCEEDED.encode() + b"\r\n"
            )
        # SAVE failed with NO: "$" is empty (RFC 5182 2.1).
        self.patch(budget, "cpu_clock", FakeClock(0.0))
        response = yield client.command("e", "SEARCH $")
        self.assertEqual(response, b"* SEARCH\r\ne OK SEARCH completed\r\n")

    @defer.inlineCallbacks
    def test_search_helped_by_the_index_keeps_the_budget(self) -> Any:
        """UNSEEN is answered by the storage's index (IIndexSearch), TEXT by
        testing the candidates it gives: those tests spend the budget too."""
        self.fill(3000)
        client = yield self.selected()
        response = yield client.command("a", "SEARCH UNSEEN NOT TEXT absent")
        self.assertEqual(response, b"a NO [LIMIT] " + budget.EXCEEDED.encode() + b"\r\n")
        self.patch(budget, "cpu_clock", FakeClock(0.0))
        response = yield client.command("b", "SEARCH UNSEEN UID 1:2")
        self.assertEqual(response, b"* SEARCH 1 2\r\nb OK SEARCH completed\r\n")

    @defer.inlineCallbacks
    def test_fetch_over_budget_sends_whole_responses_and_sets_no_seen(self) -> Any:
        """FETCH is stopped between batches: every response written is
        whole, and \\Seen is set exactly for the messages answered."""
        self.fill(3000)
        self.patch(budget, "cpu_clock", FakeClock(0.2))  # each batch 0.2 s
        client = yield self.selected()
        response = yield client.command("a", "FETCH 1:* (BODY[HEADER.FIELDS (SUBJECT)])")
        self.assertTrue(response.endswith(b"a NO [LIMIT] " + budget.EXCEEDED.encode() + b"\r\n"))
        answered = response.count(b" FETCH (")
        self.assertGreater(answered, 0)
        self.assertLess(answered, 3000)
        self.assertEqual(response.count(b"Subject: message"), answered)
        seen = [uid for uid in self.inbox.uids() if "\\Seen" in self.inbox.fetch([uid])[0].flags]
        self.assertEqual(seen, list(range(1, answered + 1)))


class BudgetInDaemonTests(DaemonCrashTestCase):
    """A real daemon whose configuration gives commands 10 ms of CPU: a
    program of 4,000 TEXT keys over 300 messages spends far more."""

    def config_sections(self) -> dict[str, dict[str, object]]:
        sections = super().config_sections()
        sections["limits"] = {"command_cpu_seconds": 0.01, "max_search_content_keys": 5000}
        return sections

    def setUp(self) -> None:
        super().setUp()
        cur = os.path.join(self.root, "cur")
        for sub in ("cur", "new", "tmp"):
            os.makedirs(os.path.join(self.root, sub), exist_ok=True)
        for i in range(300):
            with open(os.path.join(cur, f"{1700000000 + i}.M{i}P1.test:2,"), "wb") as f:
                f.write(message(i).replace(b"\r\n", b"\n"))

    def test_pathological_search_answers_no_limit_and_the_session_goes_on(self) -> None:
        self.start()
        client = self.login()
        self.assertEqual(client.select("INBOX")[1], [b"300"])
        tag = client._new_tag()
        client.send(tag + b" " + PATHOLOGICAL.encode() + b"\r\n")
        line = client.readline()
        while line.startswith(b"* "):
            line = client.readline()
        self.assertEqual(line, tag + b" NO [LIMIT] " + budget.EXCEEDED.encode() + b"\r\n")
        self.assertEqual(client.noop()[0], "OK")
        self.assertEqual(client.uid("SEARCH", "UID", "1:3"), ("OK", [b"1 2 3"]))
        typ, data = client.fetch("2", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        self.assertEqual(typ, "OK")
        self.assertIsInstance(data[0], tuple)
        self.assertIn(b"Subject: message 1", data[0][1])  # type: ignore[index]


class ContentKeyLimitTests(ServerTestBase):
    """``limits.max_search_content_keys``: a program with more keys that
    read message contents is refused before any work, whatever command
    carries it."""

    policy = SessionPolicy(failure_delay=0.0, max_search_content_keys=3)

    @defer.inlineCallbacks
    def test_more_content_keys_than_allowed_are_refused(self) -> Any:
        self.deliver(message(1))
        client = yield self.selected()
        refusal = b" NO [LIMIT] Search program has 4 keys that read message contents; "
        refusal += b"this server allows 3\r\n"
        for tag, command in (
            ("a", "SEARCH TEXT a BODY b OR SUBJECT c (NOT FROM d)"),
            ("b", "UID SEARCH RETURN (COUNT) HEADER X-A a HEADER X-B b TO c CC d"),
            ("c", "SORT (DATE) UTF-8 NOT (TEXT a TEXT b TEXT c) BCC d"),
            ("d", "THREAD REFS UTF-8 OR TEXT a TEXT b OR TEXT c TEXT d"),
        ):
            response = yield client.command(tag, command)
            self.assertEqual(response, tag.encode() + refusal)
        # Three are allowed, and other keys do not count.
        response = yield client.command("e", "SEARCH TEXT a BODY b SUBJECT c UID 1 SEEN ALL")
        self.assertEqual(response, b"* SEARCH\r\ne OK SEARCH completed\r\n")
        response = yield client.command("f", "SEARCH SUBJECT message FROM a1 TEXT line")
        self.assertEqual(response, b"* SEARCH 1\r\nf OK SEARCH completed\r\n")


class StaticLimitTests(ServerTestBase):
    """The fixed limits on what one command asks for: distinct header
    fields in a search program, items in a FETCH."""

    @defer.inlineCallbacks
    def test_more_header_fields_than_allowed_are_refused(self) -> Any:
        self.deliver(message(1))
        client = yield self.selected()
        names = [f"X-F{i}" for i in range(budget.MAX_HEADER_FIELDS - 2)]
        allowed = " ".join(f"HEADER {n} z" for n in names) + " SUBJECT a FROM b HEADER X-F0 c"
        response = yield client.command(
            "a", "SEARCH NOT " + allowed.replace(" SUBJECT", " NOT SUBJECT")
        )
        self.assertTrue(response.endswith(b"a OK SEARCH completed\r\n"), response)
        response = yield client.command("b", f"SEARCH {allowed} TO c")
        self.assertEqual(
            response,
            b"b NO [LIMIT] Search program names %d header fields; this server allows %d\r\n"
            % (budget.MAX_HEADER_FIELDS + 1, budget.MAX_HEADER_FIELDS),
        )

    @defer.inlineCallbacks
    def test_more_fetch_items_than_allowed_are_refused(self) -> Any:
        self.deliver(message(1))
        client = yield self.selected()
        items = " ".join(f"BODY.PEEK[1]<{i}.1>" for i in range(budget.MAX_FETCH_ITEMS))
        response = yield client.command("t1", f"FETCH 1 ({items})")  # no tag in the data
        self.assertTrue(response.endswith(b"t1 OK FETCH completed\r\n"), response[-100:])
        self.assertEqual(response.count(b"BODY[1]<"), budget.MAX_FETCH_ITEMS)
        response = yield client.command("t2", f"UID FETCH 1 ({items})")  # UID is implied
        self.assertEqual(
            response,
            b"t2 NO [LIMIT] FETCH asks for %d items; this server allows %d\r\n"
            % (budget.MAX_FETCH_ITEMS + 1, budget.MAX_FETCH_ITEMS),
        )
        # Nothing was set \Seen by the refused FETCH, nor by the PEEKs.
        self.assertEqual(self.inbox.fetch([1])[0].flags, frozenset())


class ConfigTests(SynchronousTestCase):
    def test_command_cpu_seconds_from_config_and_errors(self) -> None:
        path = self.mktemp()
        self.assertEqual(SessionPolicy().command_cpu_seconds, 30.0)
        with open(path, "w") as handle:
            handle.write("[limits]\ncommand_cpu_seconds = 2.5\n")
            handle.write("max_search_content_keys = 7\n")
        config = load_config(path, check_files=False, require_listeners=False)
        policy = SessionPolicy.from_config(config)
        self.assertEqual((policy.command_cpu_seconds, policy.max_search_content_keys), (2.5, 7))
        with open(path, "w") as handle:
            handle.write("[limits]\ncommand_cpu_seconds = -1\n")
        with self.assertRaises(ConfigError) as caught:
            load_config(path, check_files=False, require_listeners=False)
        self.assertIn(path, str(caught.exception))
        self.assertIn("limits.command_cpu_seconds", str(caught.exception))
        self.assertIn("must be at least 0", str(caught.exception))
        with open(path, "w") as handle:
            handle.write("[limits]\nmax_search_content_keys = 0\n")
        with self.assertRaises(ConfigError) as caught:
            load_config(path, check_files=False, require_listeners=False)
        self.assertIn("limits.max_search_content_keys", str(caught.exception))
