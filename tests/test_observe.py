"""The observer layer on its own: probes, the debug lines' redaction, the
timed storage, and what an administrator's kick does to a session that is
in the middle of something."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, task
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from mailsrv import observe
from mailsrv.auth.passwdfile import UserRecord
from mailsrv.errors import NoSuchMailbox
from mailsrv.imap.observed import loggable
from mailsrv.imap.session import KICKED
from mailsrv.interfaces import IMailbox, IMessageCache
from mailsrv.lmtp.server import LMTPFactory, LMTPServer
from mailsrv.observe import Completed, LineTap, Observer, Observers, Probe, SessionInfo
from mailsrv.policy import CLOSE_GRACE, SessionPolicy
from mailsrv.storage.memory import MemoryStorage
from mailsrv.storage.timed import timed
from tests.helpers import at_once
from tests.imap_helpers import in_process, slow_next_select


class Recorder(Observer):
    """Every event, as (name, arguments)."""

    def __init__(self, lines: bool = False) -> None:
        self.events: list[tuple[str, Any]] = []
        self._lines = lines

    def session_opened(self, session: SessionInfo) -> None:
        self.events.append(("opened", session.state))

    def session_changed(self, session: SessionInfo, state: str) -> None:
        self.events.append(("changed", (state, session.state, session.user, session.mailbox)))

    def session_closed(self, session: SessionInfo) -> None:
        self.events.append(("closed", session.state))

    def command_done(self, session: SessionInfo, command: Completed) -> None:
        self.events.append(("command", (command.name, command.result, command.received)))

    def traffic(self, session: SessionInfo, received: int, sent: int) -> None:
        self.events.append(("traffic", (received, sent)))

    def wants_lines(self) -> bool:
        return self._lines

    def line(self, session: SessionInfo, direction: str, text: str) -> None:
        self.events.append(("line", (direction, text)))

    def storage_operation(self, operation: str, seconds: float, failed: bool) -> None:
        self.events.append(("storage", (operation, failed)))

    def names(self, kind: str) -> list[Any]:
        return [args for name, args in self.events if name == kind]


class ProbeTests(SynchronousTestCase):
    def test_a_session_s_life_as_observers_hear_it(self) -> None:
        recorder = Recorder()
        probe = Probe(recorder, "imap", "not authenticated", {"LOGIN", "NOOP"}.__contains__)
        probe.opened(None)
        probe.received(20)
        probe.command_started("LOGIN", 20)
        probe.sent(30)
        probe.update("authenticated", "alice")
        probe.command_done("OK")
        probe.command_started("XYZZY", 8)
        probe.command_done("BAD")
        probe.update("authenticated", "alice")  # no change: nothing said
        probe.sent(5)
        probe.closed()
        probe.closed()
        self.assertEqual(
            recorder.events,
            [
                ("opened", "not authenticated"),
                ("changed", ("not authenticated", "authenticated", "alice", None)),
                ("command", ("LOGIN", "OK", 20)),
                ("traffic", (20, 30)),
                ("command", ("UNKNOWN", "BAD", 8)),
                ("traffic", (0, 5)),
                ("closed", "authenticated"),
            ],
        )

    def test_one_failing_observer_does_not_silence_the_others(self) -> None:
        class Broken(Observer):
            def command_done(self, session: SessionInfo, command: Completed) -> None:
                raise RuntimeError("broken observer")

        recorder = Recorder()
        probe = Probe(Observers([Broken(), recorder]), "pop3", "authorization")
        probe.opened(None)
        probe.command_started("STAT")
        probe.command_done("+OK")
        self.assertEqual(recorder.names("command"), [("STAT", "+OK", 0)])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class LineTapTests(SynchronousTestCase):
    def test_literal_contents_are_left_out_however_the_writes_are_split(self) -> None:
        data = (
            b"* 1 FETCH (UID 7 BODY[] {25}\r\nSubject: secret\r\n\r\nbody\r\n)\r\n"
            b"* 2 FETCH (FLAGS (\\Seen))\r\nt1 OK done\r\n"
        )
        for size in (1, 3, 7, len(data)):
            lines: list[str] = []
            tap = LineTap(lines.append)
            for i in range(0, len(data), size):
                tap.feed(data[i : i + size])
            self.assertEqual(
                lines,
                [
                    "* 1 FETCH (UID 7 BODY[] {25} <25 octets>",
                    ")",
                    "* 2 FETCH (FLAGS (\\Seen))",
                    "t1 OK done",
                ],
                size,
            )
            self.assertNotIn("secret", "".join(lines))

    def test_imap_commands_lose_their_secrets_and_literals(self) -> None:
        self.assertEqual(loggable([b"a1 LOGIN alice hunter2"]), "a1 LOGIN ***")
        self.assertEqual(
            loggable([b"a1 LOGIN {5}", b"alice", b" {7}", b"hunter2", b""]), "a1 LOGIN ***"
        )
        self.assertEqual(
            loggable([b"a2 AUTHENTICATE PLAIN AGFsaWNlAGh1bnRlcjI="]), "a2 AUTHENTICATE PLAIN ***"
        )
        self.assertEqual(loggable([b"a2 authenticate PLAIN"]), "a2 AUTHENTICATE PLAIN")
        self.assertEqual(
            loggable([b"a3 APPEND INBOX {11}", b"Subject: x\n", b""]),
            "a3 APPEND INBOX {11} <11 octets> ",
        )


class TimedStorageTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.recorder = Recorder()
        observe.subscribe(self.recorder)
        self.addCleanup(observe.unsubscribe, self.recorder)
        self.memory = MemoryStorage()
        self.memory.deliver("joe", b"Subject: a\r\n\r\nx\r\n", "INBOX", (), None)

    def test_calls_are_reported_and_answers_unchanged(self) -> None:
        account = at_once(timed(self.memory).account("joe"))
        inbox = at_once(account.get_mailbox("INBOX"))
        self.assertEqual(list(at_once(inbox.uids())), [1])
        self.assertEqual(inbox.name, "INBOX")
        self.assertEqual(
            self.recorder.names("storage"),
            [("storage.account", False), ("account.get_mailbox", False), ("mailbox.uids", False)],
        )

    def test_optional_features_stay_visible(self) -> None:
        inbox = at_once(at_once(timed(self.memory).account("joe")).get_mailbox("INBOX"))
        real = at_once(at_once(self.memory.account("joe")).get_mailbox("INBOX"))
        self.assertTrue(IMailbox.providedBy(inbox))
        self.assertEqual(IMessageCache.providedBy(inbox), IMessageCache.providedBy(real))

    def test_copy_between_wrapped_mailboxes_reaches_the_backend_s_own_objects(self) -> None:
        # The memory backend copies only between its own mailboxes (isinstance).
        account = at_once(timed(self.memory).account("joe"))
        inbox = at_once(account.get_mailbox("INBOX"))
        trash = at_once(account.get_mailbox("Trash"))
        self.assertEqual(list(at_once(inbox.copy([1], trash))), [(1, 1)])
        backend_trash = at_once(at_once(self.memory.account("joe")).get_mailbox("Trash"))
        self.assertEqual(list(at_once(backend_trash.uids())), [1])

    def test_a_failing_call_is_reported_failed_and_still_raises(self) -> None:
        account = at_once(timed(self.memory).account("joe"))
        with self.assertRaises(NoSuchMailbox):
            account.get_mailbox("Nowhere")
        self.assertEqual(self.recorder.names("storage")[-1], ("account.get_mailbox", True))

    def test_deferred_answers_are_timed_until_they_fire(self) -> None:
        gate: defer.Deferred[None] = defer.Deferred()

        class Slow:
            def account(self, name: str, home: str | None = None) -> Any:
                return gate.addCallback(lambda _: MemoryStorage().account(name))

        d = timed(Slow()).account("joe")  # type: ignore[arg-type]
        self.assertEqual(self.recorder.names("storage"), [])
        gate.callback(None)
        assert isinstance(d, defer.Deferred)
        account = self.successResultOf(d)
        self.assertEqual(self.recorder.names("storage"), [("storage.account", False)])
        account.list_mailboxes()
        self.assertEqual(self.recorder.names("storage")[-1], ("account.list_mailboxes", False))


class IMAPKickTests(SynchronousTestCase):
    def test_a_running_command_is_answered_before_the_bye(self) -> None:
        gate = slow_next_select(self)
        clock = task.Clock()
        server, transport = in_process(clock=clock)
        server.dataReceived(b"a LOGIN joe secret\r\nb SELECT INBOX\r\n")
        transport.clear()
        server.session.kick()
        self.assertEqual(transport.value(), b"")  # SELECT still runs
        gate.callback(None)
        out = transport.value()
        self.assertIn(b"b OK [READ-WRITE]", out)
        self.assertTrue(out.endswith(b"* BYE " + KICKED.encode() + b"\r\n"), out)
        self.assertTrue(transport.disconnecting)

    def test_a_command_that_does_not_end_is_cut_off(self) -> None:
        slow_next_select(self)
        clock = task.Clock()
        server, transport = in_process(clock=clock)
        server.dataReceived(b"a LOGIN joe secret\r\nb SELECT INBOX\r\n")
        server.session.kick()
        clock.advance(CLOSE_GRACE)
        self.assertTrue(transport.disconnected)

    def test_idle_ends_at_once(self) -> None:
        server, transport = in_process()
        server.dataReceived(b"a LOGIN joe secret\r\nb SELECT INBOX\r\nc IDLE\r\n")
        transport.clear()
        server.session.kick()
        self.assertEqual(transport.value(), b"* BYE " + KICKED.encode() + b"\r\n")
        self.assertTrue(transport.disconnecting)


class LMTPKickTests(SynchronousTestCase):
    def test_replies_owed_go_out_before_the_421(self) -> None:
        pending: list[defer.Deferred[Any]] = []

        def users(name: str) -> defer.Deferred[Any]:
            pending.append(defer.Deferred())
            return pending[-1]

        policy = SessionPolicy(hostname="mx.test")
        server: LMTPServer = LMTPFactory(
            MemoryStorage(), users, policy, clock=task.Clock()
        ).buildProtocol(None)
        transport = StringTransport()
        server.makeConnection(transport)
        server.dataReceived(b"LHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<alice>\r\n")
        transport.clear()
        server.kick()
        self.assertEqual(transport.value(), b"")  # the look-up is under way
        pending[0].callback(UserRecord(name="alice", password="{PLAIN}x"))
        self.assertEqual(
            transport.value(),
            b"250 2.1.5 <alice> Recipient OK\r\n"
            b"421 4.3.2 mx.test Disconnected by the administrator\r\n",
        )
        self.assertTrue(transport.disconnecting)


class SessionLogTests(SynchronousTestCase):
    def test_command_lines_at_info_only_when_asked(self) -> None:
        from tests.helpers import log_events

        events = log_events(self)
        session = SessionInfo("abc", "pop3", "127.0.0.1:1", "127.0.0.1", 0.0, "transaction", "bob")
        quiet, loud = observe.SessionLog(commands=False), observe.SessionLog(commands=True)
        quiet.command_done(session, Completed("STAT", "+OK", 0.5, 6, 10))
        self.assertEqual([e for e in events if e.get("command") == "STAT"], [])
        loud.command_done(session, Completed("STAT", "+OK", 0.5, 6, 10))
        (event,) = [e for e in events if e.get("command") == "STAT"]
        self.assertEqual(event["log_namespace"], "mailsrv.pop3.server")
        self.assertEqual(
            {k: event[k] for k in ("session", "protocol", "remote", "user", "result", "duration")},
            {
                "session": "abc",
                "protocol": "pop3",
                "remote": "127.0.0.1:1",
                "user": "bob",
                "result": "+OK",
                "duration": 0.5,
            },
        )
