"""The service: listeners bind before privileges drop, failures name the key."""

from __future__ import annotations

import os
import socket

from twisted.internet import endpoints, reactor
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial import unittest

from mailsrv.auth.passwdfile import PasswdFile
from mailsrv.config import Listener, load_config
from mailsrv.errors import ConfigError
from mailsrv.service import ListenerService, UsersFileCheck, make_service


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
        port = self.successResultOf(service._waitingForPort)
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


class UsersFileCheckTests(unittest.TestCase):
    def logged_errors(self, passwd: PasswdFile) -> list[str]:
        errors: list[str] = []

        def observe(event: dict[str, object]) -> None:
            if event.get("log_level") is LogLevel.error:
                errors.append(formatEvent(event))

        globalLogPublisher.addObserver(observe)
        try:
            check = UsersFileCheck(passwd)
            check.startService()
            check.stopService()
        finally:
            globalLogPublisher.removeObserver(observe)
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
