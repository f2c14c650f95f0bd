"""The IMAP server over the real backends (memory and Maildir).

tests/test_imap_server.py pins exact bytes over the memory backend; here
sessions run over :class:`MemoryStorage` and :class:`MaildirStorage` alike,
so the server and the storage contract are checked together.
"""

from __future__ import annotations

import io
import os
import sys
from typing import Any, cast

from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.portal import Portal
from twisted.internet import defer, protocol, reactor
from twisted.trial.unittest import TestCase

from mailsrv.auth.realm import MailRealm
from mailsrv.interfaces import IStorage
from mailsrv.policy import SessionPolicy
from mailsrv.storage.memory import MemoryStorage
from tests.imap_helpers import Client, RecordingFactory, shut_down

MESSAGE = b"From: a@example.org\r\nSubject: %d\r\n\r\nbody %d\r\n"


class _BackendBase:
    """Mixed into a TestCase with :meth:`make_storage` and :meth:`deliver`."""

    def make_storage(self) -> IStorage:
        raise NotImplementedError

    def deliver(self, number: int) -> Any:
        """Put message ``number`` into joe's INBOX; may answer with a Deferred."""
        raise NotImplementedError

    def setUp(self) -> None:
        self.storage = self.make_storage()
        checker = InMemoryUsernamePasswordDatabaseDontUse(joe=b"secret")
        portal = Portal(MailRealm(self.storage), [checker])
        self.factory = RecordingFactory(portal, SessionPolicy(failure_delay=0.0))
        self.port: Any = reactor.listenTCP(0, self.factory, interface="127.0.0.1")
        self.clients: list[Client] = []

    def tearDown(self) -> Any:
        # A Deferred, which trial waits for (typed Any: unittest's is None).
        return self._tear_down()

    def _tear_down(self) -> defer.Deferred[None]:
        return shut_down(self.clients, self.factory.lost, self.port)

    @defer.inlineCallbacks
    def session(self, select: str | None = "INBOX") -> Any:
        creator = protocol.ClientCreator(reactor, Client)
        client = yield creator.connectTCP("127.0.0.1", self.port.getHost().port)
        self.clients.append(client)
        yield client.until(b"\r\n")
        response = yield client.command("L", "LOGIN joe secret")
        assert response.startswith(b"L OK"), response
        if select is not None:
            response = yield client.command("S", f"SELECT {select}")
            assert b"S OK [READ-WRITE]" in response, response
        return client


class InMemory:
    """:meth:`_BackendBase.make_storage` and ``deliver`` on the memory
    backend; listed before the scenarios among a test class's bases."""

    storage: IStorage

    def make_storage(self) -> IStorage:
        return MemoryStorage()

    def deliver(self, number: int) -> None:
        storage: Any = self.storage
        storage.deliver("joe", MESSAGE % (number, number))


class InPostgres:
    """The same on the PostgreSQL backend (a private server, tests/pgcluster.py)."""

    storage: IStorage

    def make_storage(self) -> IStorage:
        from tests.pgcluster import new_dsn, new_storage

        storage: IStorage = new_storage(cast(Any, self), new_dsn())
        return storage

    def deliver(self, number: int) -> Any:
        storage: Any = self.storage
        return storage.deliver("joe", MESSAGE % (number, number))


class _IdleScenario(_BackendBase):
    @defer.inlineCallbacks
    def test_idle_hears_delivery(self) -> Any:
        t: Any = self
        client = yield self.session()
        client.send(b"i IDLE\r\n")
        yield client.until(b"+ idling\r\n")
        yield self.deliver(1)
        response = yield client.until(b"RECENT")
        t.assertEqual(response, b"* 1 EXISTS\r\n* 1 RECENT\r\n")
        client.send(b"DONE\r\n")
        response = yield client.until_tagged("i")
        t.assertEqual(response, b"i OK IDLE terminated\r\n")


class _BackendScenarios(_BackendBase):
    @defer.inlineCallbacks
    def test_three_sessions(self) -> Any:
        t: Any = self
        first = yield self.session(None)  # creates the account
        yield first.command("Z", "LOGOUT")
        for n in range(1, 4):
            yield self.deliver(n)
        a = yield self.session()
        b = yield self.session()
        c = yield self.session()
        response = yield b.command("b1", "STORE 2 +FLAGS (\\Deleted)")
        t.assertEqual(response, b"* 2 FETCH (FLAGS (\\Deleted))\r\nb1 OK STORE completed\r\n")
        response = yield c.command("c1", "EXPUNGE")
        t.assertEqual(response, b"* 2 EXPUNGE\r\nc1 OK EXPUNGE completed\r\n")
        response = yield a.command("a1", "FETCH 1:3 (UID)")
        t.assertNotIn(b"EXPUNGE\r\n", response)
        t.assertTrue(response.startswith(b"* 1 FETCH (UID 1)\r\n"), response)
        response = yield a.command("a2", "NOOP")
        t.assertEqual(response, b"* 2 EXPUNGE\r\na2 OK NOOP completed\r\n")
        response = yield b.command("b2", "APPEND INBOX {5+}\r\nhello")
        t.assertRegex(
            response,
            rb"^\* 2 EXPUNGE\r\n\* 3 EXISTS\r\n\* 1 RECENT\r\n"
            rb"b2 OK \[APPENDUID \d+ 4\] APPEND completed\r\n$",
        )
        # The new message is announced first, and "*" includes it.
        response = yield a.command("a3", "UID FETCH 1:* (FLAGS RFC822.SIZE)")
        size = len(MESSAGE % (1, 1))
        t.assertEqual(
            response,
            b"* 3 EXISTS\r\n* 2 RECENT\r\n"
            b"* 1 FETCH (FLAGS (\\Recent) RFC822.SIZE %d UID 1)\r\n"
            b"* 2 FETCH (FLAGS (\\Recent) RFC822.SIZE %d UID 3)\r\n"
            b"* 3 FETCH (FLAGS () RFC822.SIZE 5 UID 4)\r\n"
            b"a3 OK FETCH completed\r\n" % (size, size),
        )

    @defer.inlineCallbacks
    def test_default_folders_copy_move(self) -> Any:
        t: Any = self
        client = yield self.session()
        response = yield client.command("l", 'LIST "" *')
        for line in (
            b'* LIST (\\HasNoChildren) "/" INBOX\r\n',
            b'* LIST (\\HasNoChildren \\Sent) "/" Sent\r\n',
            b'* LIST (\\HasNoChildren \\Trash) "/" Trash\r\n',
        ):
            t.assertIn(line, response)
        yield self.deliver(1)
        yield self.deliver(2)
        yield client.command("n", "NOOP")
        response = yield client.command("c", "COPY 1:2 Archive")
        t.assertRegex(response, rb"^c OK \[COPYUID \d+ 1:2 1:2\] COPY completed\r\n$")
        response = yield client.command("m", "MOVE 1 Trash")
        t.assertRegex(
            response,
            rb"^\* OK \[COPYUID \d+ 1 1\] Moved\r\n\* 1 EXPUNGE\r\nm OK MOVE completed\r\n$",
        )
        response = yield client.command("s", "STATUS Archive (MESSAGES UIDNEXT)")
        t.assertEqual(
            response, b"* STATUS Archive (MESSAGES 2 UIDNEXT 3)\r\ns OK STATUS completed\r\n"
        )
        response = yield client.command("r", "CREATE Caf&AOk-/Menu")
        t.assertRegex(response, rb"^r OK \[MAILBOXID \([\w-]+\)\] CREATE completed\r\n$")
        response = yield client.command("q", 'LIST "" Caf&AOk-*')
        t.assertEqual(
            response,
            b'* LIST (\\HasChildren) "/" Caf&AOk-\r\n'
            b'* LIST (\\HasNoChildren) "/" Caf&AOk-/Menu\r\n'
            b"q OK LIST completed\r\n",
        )

    @defer.inlineCallbacks
    def test_selected_mailbox_deleted_by_another_session(self) -> Any:
        """NOOP answers OK (RFC 3501 6.1.2), then the client hears why the
        session ends, rather than NO [NONEXISTENT] to everything."""
        t: Any = self
        other = yield self.session(None)
        yield other.command("c", "CREATE Box")
        yield other.command("a", "APPEND Box {5+}\r\nhello")
        client = yield self.session("Box")
        response = yield other.command("d", "DELETE Box")
        t.assertEqual(response, b"d OK DELETE completed\r\n")
        response = yield client.command("n", "NOOP")
        t.assertEqual(response, b"n OK NOOP completed\r\n")
        yield client.lost
        t.assertEqual(client.buffer, b"* BYE The selected mailbox was deleted or renamed\r\n")
        # The other session, and new ones, carry on.
        response = yield other.command("n", "NOOP")
        t.assertEqual(response, b"n OK NOOP completed\r\n")
        yield self.session()


class MemoryBackendTests(InMemory, _BackendScenarios, TestCase):
    """The sessions over the memory backend."""


class MaildirBackendTests(_BackendScenarios, _IdleScenario, TestCase):
    """The scenarios, and IDLE hearing a delivery (over memory that is
    tests/test_imap_server.py's IdleTests)."""

    def make_storage(self) -> IStorage:
        from mailsrv.storage.maildir import MaildirStorage

        return MaildirStorage(self.mktemp() + "/{user}")

    def deliver(self, number: int) -> None:
        from mailsrv.storage.deliver import deliver

        storage: Any = self.storage
        deliver(storage.account("joe"), io.BytesIO(MESSAGE % (number, number)))

    @defer.inlineCallbacks
    def gone(self, how: str) -> Any:
        """A session with Box selected, after another ``how``s (DELETE or
        RENAME) it; and the other session."""
        other = yield self.session(None)
        yield other.command("c", "CREATE Box")
        yield other.command("a", "APPEND Box {5+}\r\nhello")
        client = yield self.session("Box")
        command = "DELETE Box" if how == "DELETE" else "RENAME Box Elsewhere"
        response = yield other.command("x", command)
        self.assertEqual(response, b"x OK %s completed\r\n" % how.encode())
        return client, other

    @defer.inlineCallbacks
    def test_fetch_in_a_deleted_mailbox(self) -> Any:
        client, _ = yield self.gone("DELETE")
        response = yield client.command("f", "FETCH 1 (FLAGS)")
        self.assertEqual(
            response, b"f NO [NONEXISTENT] The selected mailbox was deleted or renamed\r\n"
        )
        yield client.lost
        self.assertEqual(client.buffer, b"* BYE The selected mailbox was deleted or renamed\r\n")

    @defer.inlineCallbacks
    def test_check_in_a_mailbox_renamed_away(self) -> Any:
        client, other = yield self.gone("RENAME")
        response = yield client.command("k", "CHECK")
        self.assertEqual(response, b"k OK CHECK completed\r\n")
        yield client.lost
        self.assertEqual(client.buffer, b"* BYE The selected mailbox was deleted or renamed\r\n")
        # The messages went along with the name.
        response = yield other.command("s", "STATUS Elsewhere (MESSAGES)")
        self.assertEqual(response, b"* STATUS Elsewhere (MESSAGES 1)\r\ns OK STATUS completed\r\n")

    @defer.inlineCallbacks
    def test_close_of_a_deleted_mailbox(self) -> Any:
        """CLOSE leaves the mailbox anyway: OK (RFC 3501 6.4.2), session kept."""
        client, _ = yield self.gone("DELETE")
        response = yield client.command("c", "CLOSE")
        self.assertEqual(response, b"c OK CLOSE completed\r\n")
        response = yield client.command("n", "NOOP")
        self.assertEqual(response, b"n OK NOOP completed\r\n")

    @defer.inlineCallbacks
    def test_another_missing_mailbox_does_not_end_the_session(self) -> Any:
        client = yield self.session()
        self.deliver(1)
        response = yield client.command("s", "STATUS Nowhere (MESSAGES)")
        self.assertEqual(
            response,
            b"* 1 EXISTS\r\n* 1 RECENT\r\ns NO [NONEXISTENT] no mailbox named 'Nowhere'\r\n",
        )
        response = yield client.command("f", "FETCH 1 (UID)")
        self.assertEqual(response, b"* 1 FETCH (UID 1)\r\nf OK FETCH completed\r\n")


class MaildirOutsideDeliveryTests(_IdleScenario, TestCase):
    """A delivery by another process (here: another storage object, which
    shares no listeners) reaches an IDLE session through the watcher."""

    def make_storage(self) -> IStorage:
        from mailsrv.storage.maildir import MaildirStorage

        self.template = self.mktemp() + "/{user}"
        storage = MaildirStorage(self.template, poll_interval=0.05, reactor=reactor)
        self.addCleanup(storage.stop_watching)
        return storage

    def deliver(self, number: int) -> None:
        from mailsrv.storage.deliver import deliver
        from mailsrv.storage.maildir import MaildirStorage

        outsider = MaildirStorage(self.template)
        deliver(outsider.account("joe"), io.BytesIO(MESSAGE % (number, number)))


class _CommandRun(protocol.ProcessProtocol):
    """Feeds ``stdin`` to a child process; fires ``done`` with
    ``(exit code, stdout, stderr)``."""

    def __init__(self, stdin: bytes) -> None:
        self.stdin = stdin
        self.out = b""
        self.err = b""
        self.done: defer.Deferred[tuple[int | None, bytes, bytes]] = defer.Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self.stdin)
        self.transport.closeStdin()

    def outReceived(self, data: bytes) -> None:
        self.out += data

    def errReceived(self, data: bytes) -> None:
        self.err += data

    def processEnded(self, reason: Any) -> None:
        self.done.callback((reason.value.exitCode, self.out, self.err))


class DeliverCommandIdleTests(_BackendBase, TestCase):
    """End to end: ``mailsrv deliver`` run as its own process (as an MTA runs
    it) while a client IDLEs on the daemon's Maildir storage."""

    def make_storage(self) -> IStorage:
        from mailsrv.storage.maildir import MaildirStorage

        base = os.path.abspath(self.mktemp())
        os.makedirs(base)
        self.template = os.path.join(base, "mail", "{user}", "Maildir")
        self.passwd = os.path.join(base, "passwd")
        from mailsrv import cli

        status = cli.main(
            ["user", "add", "joe", "--passwd", self.passwd, "--password-stdin"],
            stdin=io.StringIO("secret\n"),
            stdout=io.StringIO(),
            stderr=io.StringIO(),
        )
        assert status == 0
        storage = MaildirStorage(self.template, poll_interval=0.05, reactor=reactor)
        self.addCleanup(storage.stop_watching)
        return storage

    def run_deliver(self, message: bytes) -> defer.Deferred[tuple[int | None, bytes, bytes]]:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = dict(os.environ)
        env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
        args = [
            sys.executable,
            "-c",
            "import sys; from mailsrv.cli import main; sys.exit(main())",
            "deliver",
            "joe",
            "--passwd",
            self.passwd,
            "--maildir",
            self.template,
        ]
        run = _CommandRun(message)
        reactor.spawnProcess(run, sys.executable, args, env=env, path=root)
        return run.done

    @defer.inlineCallbacks
    def test_idle_hears_mailsrv_deliver(self) -> Any:
        client = yield self.session()
        response = yield client.command("f", "FETCH 1:* FLAGS")
        self.assertEqual(
            response, b"f BAD No messages in the mailbox (invalid sequence number)\r\n"
        )
        client.send(b"i IDLE\r\n")
        yield client.until(b"+ idling\r\n")
        heard = client.until(b"RECENT")
        message = b"From: mta@example.org\nSubject: by deliver\n\nbody\n"
        status, _out, err = yield self.run_deliver(message)
        self.assertEqual((status, err), (0, b""))
        response = yield heard
        self.assertEqual(response, b"* 1 EXISTS\r\n* 1 RECENT\r\n")
        client.send(b"DONE\r\n")
        response = yield client.until_tagged("i")
        self.assertEqual(response, b"i OK IDLE terminated\r\n")
        response = yield client.command("g", "FETCH 1 (FLAGS RFC822.SIZE)")
        size = len(message.replace(b"\n", b"\r\n"))
        self.assertEqual(
            response,
            b"* 1 FETCH (FLAGS (\\Recent) RFC822.SIZE %d)\r\ng OK FETCH completed\r\n" % size,
        )


class PostgresBackendTests(InPostgres, _BackendScenarios, TestCase):
    """The same sessions over the PostgreSQL backend (a private server)."""


class PostgresOtherNodeDeliveryTests(_IdleScenario, TestCase):
    """A delivery by another node (another storage over the same database,
    which shares no listeners) reaches an IDLE session through NOTIFY."""

    def make_storage(self) -> IStorage:
        from tests.pgcluster import new_dsn, new_storage

        dsn = new_dsn()
        self.other_node = new_storage(self, dsn)
        storage: IStorage = new_storage(self, dsn)
        return storage

    def deliver(self, number: int) -> Any:
        return self.other_node.deliver("joe", MESSAGE % (number, number))
