"""The service: listeners bind before privileges drop, failures name the key."""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Sequence
from typing import cast

from twisted.internet import endpoints, reactor
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, LogLevel, formatEvent, globalLogPublisher
from twisted.trial import unittest
from zope.interface import implementer

from mailsrv.auth.passwdfile import PasswdFile
from mailsrv.config import Listener, load_config
from mailsrv.errors import ConfigError
from mailsrv.imap.pacing import GIL_SWITCH_INTERVAL
from mailsrv.interfaces import IMailbox, IMailboxListener, IMessage
from mailsrv.service import ListenerService, StorageService, UsersFileCheck, make_service
from mailsrv.storage.maildir import MaildirStorage
from mailsrv.storage.memory import MemoryStorage


class Greeter(Protocol):
    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(b"hello\r\n")
        self.transport.loseConnection()


class ListenerServiceTests(unittest.TestCase):
    def listener(self, port: int) -> ListenerService:
        endpoint_string = f"tcp:{port}:interface=127.0.0.1"
        listener = Listener("imap", endpoint_string, False, "imap.listen[0]")
        endpoint = endpoints.serverFromString(reactor, endpoint_string)
        return ListenerService(endpoint, Factory.forProtocol(Greeter), listener, "c.toml")

    def test_binds_in_privileged_start(self) -> None:
        """twistd drops root after privilegedStartService, so the port must
        already be listening by then, before startService."""
        service = self.listener(0)
        service.privilegedStartService()
        waiting = service._waitingForPort
        assert waiting is not None
        port = self.successResultOf(waiting)
        self.addCleanup(port.stopListening)
        number = port.getHost().port
        # The kernel accepts the connection although the reactor has not run.
        socket.create_connection(("127.0.0.1", number), timeout=10).close()
        with socket.socket() as other:
            self.assertRaises(OSError, other.bind, ("127.0.0.1", number))

    def test_bind_failure_names_the_key(self) -> None:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen(1)
            service = self.listener(taken.getsockname()[1])
            e = self.assertRaises(ConfigError, service.privilegedStartService)
        self.assertEqual((e.path, e.key), ("c.toml", "imap.listen[0]"))
        self.assertIn("cannot listen on", e.reason)


@implementer(IMailboxListener)
class _Idle:
    def messages_added(self, mailbox: IMailbox, uids: Sequence[int]) -> None:
        pass

    def flags_changed(self, mailbox: IMailbox, messages: Sequence[IMessage]) -> None:
        pass

    def messages_expunged(self, mailbox: IMailbox, uids: Sequence[int]) -> None:
        pass


class StorageServiceTests(unittest.TestCase):
    def test_stopping_stops_the_watcher(self) -> None:
        """When the daemon stops, so does the storage's watcher
        (IWatchingStorage): an idle session's folder is polled no more."""
        clock = Clock()
        template = os.path.join(os.path.abspath(self.mktemp()), "{user}", "Maildir")
        storage = MaildirStorage(template, poll_interval=3.0, reactor=clock)
        storage.account("alice").open_mailbox("INBOX").add_listener(_Idle())
        service = StorageService(storage)
        service.startService()
        self.assertNotEqual(clock.getDelayedCalls(), [])
        service.stopService()
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_storage_without_a_watcher(self) -> None:
        """A storage that does not declare IWatchingStorage is left alone,
        whatever methods it happens to have."""

        class Plain(MemoryStorage):
            stopped = False

            def stop_watching(self) -> None:
                self.stopped = True

        storage = Plain()
        service = StorageService(storage)
        service.startService()
        service.stopService()
        self.assertFalse(storage.stopped)


class MakeServiceTests(unittest.TestCase):
    def test_one_listener_per_endpoint(self) -> None:
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        config = load_config(
            None,
            {
                "imap": ["tcp:0:interface=127.0.0.1", "tcp:0:interface=127.0.0.1"],
                "pop3": ["tcp:0:interface=127.0.0.1"],
                "passwd": os.path.join(directory, "passwd"),
                "maildir": os.path.join(directory, "{user}"),
            },
            check_files=False,
        )
        open(config.users.passwd_file, "w").close()
        top = make_service(config, reactor)
        listeners = [s for s in top if isinstance(s, ListenerService)]
        self.assertEqual(
            [(s.listener.protocol, s.listener.origin) for s in listeners],
            [("imap", "--imap[0]"), ("imap", "--imap[1]"), ("pop3", "--pop3[0]")],
        )

    def test_worker_threads_give_the_interpreter_back_soon(self) -> None:
        """The daemon shortens the interpreter's thread switch interval, so
        a busy worker thread (the full-text index filling) holds the reactor
        thread's answers back by at most that (mailsrv.imap.pacing)."""
        self.addCleanup(sys.setswitchinterval, sys.getswitchinterval())
        sys.setswitchinterval(0.005)  # Python's default
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        config = load_config(
            None,
            {
                "imap": ["tcp:0:interface=127.0.0.1"],
                "passwd": os.path.join(directory, "passwd"),
                "maildir": os.path.join(directory, "{user}"),
            },
            check_files=False,
        )
        open(config.users.passwd_file, "w").close()
        make_service(config, reactor)
        self.assertEqual(sys.getswitchinterval(), GIL_SWITCH_INTERVAL)
        self.assertLessEqual(GIL_SWITCH_INTERVAL, 0.001)


class UsersFileCheckTests(unittest.TestCase):
    def logged_errors(self, passwd: PasswdFile) -> list[str]:
        errors: list[str] = []

        def observe(event: dict[str, object]) -> None:
            if event.get("log_level") is LogLevel.error:
                errors.append(formatEvent(event))

        observer = cast(ILogObserver, observe)
        globalLogPublisher.addObserver(observer)
        try:
            check = UsersFileCheck(passwd)
            check.startService()
            check.stopService()
        finally:
            globalLogPublisher.removeObserver(observer)
        return errors

    def test_readable_file_is_quiet(self) -> None:
        path = os.path.abspath(self.mktemp())
        open(path, "w").close()
        self.assertEqual(self.logged_errors(PasswdFile(path)), [])

    def test_file_the_daemon_cannot_reread_is_reported(self) -> None:
        path = os.path.abspath(self.mktemp())
        open(path, "w").close()
        passwd = PasswdFile(path)
        os.unlink(path)
        os.mkdir(path)  # stands for "only root may read it", for root too
        (error,) = self.logged_errors(passwd)
        self.assertIn(f"users file {path} cannot be read", error)
        self.assertIn("chmod 0640", error)
