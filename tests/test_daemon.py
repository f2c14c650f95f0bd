"""The daemon started the way users start it: ``twistd -n mailsrv --config FILE``."""

from __future__ import annotations

import io
import os
import poplib
import socket
import ssl
from collections.abc import Iterator
from contextlib import contextmanager

from twisted.trial import unittest

from mailsrv import cli
from tests.helpers import STARTUP_DEADLINE, Daemon, free_port, read_line


class DaemonTests(unittest.TestCase):
    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.ports = {name: free_port() for name in ("imap", "imaps", "pop3", "pop3s")}
        self.config = os.path.join(self.dir, "mailsrv.toml")
        with open(self.config, "w") as f:
            f.write(
                f"""
[server]
hostname = "localhost"
[imap]
listen = ["tcp:{self.ports["imap"]}:interface=127.0.0.1"]
listen_tls = ["tcp:{self.ports["imaps"]}:interface=127.0.0.1"]
[pop3]
listen = ["tcp:{self.ports["pop3"]}:interface=127.0.0.1"]
listen_tls = ["tcp:{self.ports["pop3s"]}:interface=127.0.0.1"]
[tls]
certificate = "var/tls/cert.pem"
key = "var/tls/key.pem"
generate_self_signed = true
[users]
passwd_file = "var/passwd"
create_if_missing = true
[auth]
failure_delay = 0.0
[storage]
maildir = "var/mail/{{user}}/Maildir"
"""
            )

    @contextmanager
    def daemon(self, *args: str) -> Iterator[Daemon]:
        daemon = Daemon.start(list(args), cwd=self.dir)
        try:
            yield daemon
        finally:
            daemon.stop()

    def test_starts_listens_and_serves_new_users(self) -> None:
        with self.daemon("--config", self.config) as daemon:
            daemon.wait_for("listening on", count=4)
            self.assertTrue(os.path.exists(os.path.join(self.dir, "var", "tls", "cert.pem")))

            with socket.create_connection(("127.0.0.1", self.ports["imap"])) as s:
                self.assertTrue(read_line(s).startswith(b"* OK"))
            context = ssl.create_default_context(
                cafile=os.path.join(self.dir, "var", "tls", "cert.pem")
            )
            with socket.create_connection(("127.0.0.1", self.ports["imaps"])) as raw:
                with context.wrap_socket(raw, server_hostname="localhost") as s:
                    self.assertTrue(read_line(s).startswith(b"* OK"))
                    self.assertIn(s.version(), ("TLSv1.2", "TLSv1.3"))

            # A user added while the daemon runs can log in at once.
            cwd = os.getcwd()
            os.chdir(self.dir)
            try:
                status = cli.main(
                    ["user", "add", "alice", "--config", self.config, "--password-stdin"],
                    stdin=io.StringIO("s3cret\n"),
                    stdout=io.StringIO(),
                )
            finally:
                os.chdir(cwd)
            self.assertEqual(status, 0)

            pop = poplib.POP3("127.0.0.1", self.ports["pop3"], timeout=30)
            try:
                pop.user("alice")
                self.assertTrue(pop.pass_("s3cret").startswith(b"+OK"))
                self.assertEqual(pop.stat(), (0, 0))
            finally:
                pop.quit()

            pop = poplib.POP3_SSL("127.0.0.1", self.ports["pop3s"], context=context, timeout=30)
            try:
                pop.user("alice")
                self.assertRaises(poplib.error_proto, pop.pass_, "wrong")
            finally:
                pop.close()

    def add_user(self, name: str, password: str) -> None:
        cwd = os.getcwd()
        os.chdir(self.dir)
        try:
            status = cli.main(
                ["user", "add", name, "--config", self.config, "--password-stdin"],
                stdin=io.StringIO(password + "\n"),
                stdout=io.StringIO(),
            )
            self.assertEqual(status, 0)
            for i in range(2):
                status = cli.main(
                    ["deliver", name, "--config", self.config],
                    stdin=io.BytesIO(b"Subject: %d\n\nbody %d\n" % (i, i)),
                    stdout=io.StringIO(),
                )
                self.assertEqual(status, 0)
        finally:
            os.chdir(cwd)

    def test_server_killed_mid_pop3_session_deletes_nothing(self) -> None:
        """RFC 1939: deletions happen only in the UPDATE state after QUIT."""
        self.add_user("alice", "pw")
        with self.daemon("--config", self.config) as daemon:
            daemon.wait_for("listening on", count=4)
            pop = poplib.POP3("127.0.0.1", self.ports["pop3"], timeout=30)
            pop.user("alice")
            pop.pass_("pw")
            self.assertEqual(pop.stat()[0], 2)
            uidls = pop.uidl()[1]
            pop.dele(1)
            pop.dele(2)
            daemon.process.kill()
            daemon.process.wait(timeout=30)
            pop.close()
        with self.daemon("--config", self.config) as daemon:
            daemon.wait_for("listening on", count=4)
            pop = poplib.POP3("127.0.0.1", self.ports["pop3"], timeout=30)
            pop.user("alice")
            pop.pass_("pw")
            self.assertEqual(pop.stat()[0], 2)
            self.assertEqual(pop.uidl()[1], uidls)
            pop.dele(1)
            pop.quit()
        mail = os.path.join(self.dir, "var", "mail", "alice", "Maildir", "cur")
        self.assertEqual(len(os.listdir(mail)), 1)

    def test_port_in_use_stops_startup_naming_the_key(self) -> None:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", self.ports["pop3"]))
            taken.listen(1)
            with self.daemon("--config", self.config) as daemon:
                output = daemon.wait_exit(STARTUP_DEADLINE)
        self.assertNotEqual(daemon.process.returncode, 0)
        self.assertIn(f"{self.config}: pop3.listen[0]: cannot listen on", output)
        self.assertNotIn("Traceback", output)

    def test_broken_config_stops_startup(self) -> None:
        with open(self.config, "a") as f:
            f.write("[limits]\nmax_line_lenght = 10\n")
        with self.daemon("--config", self.config) as daemon:
            output = daemon.wait_exit(STARTUP_DEADLINE)
        self.assertEqual(daemon.process.returncode, 1)
        self.assertEqual(
            output.strip(),
            f"mailsrv: configuration error: {self.config}: limits.max_line_lenght: unknown key "
            "(known keys of [limits]: max_connections_per_ip, max_connections_per_user, "
            "max_line_length, max_message_size, max_nesting_depth, max_pending_commands)",
        )

    def test_command_line_overrides(self) -> None:
        port = free_port()
        with self.daemon(
            "--config", self.config, "--imap", f"tcp:{port}:interface=127.0.0.1"
        ) as daemon:
            daemon.wait_for("listening on", count=4)
            with socket.create_connection(("127.0.0.1", port)) as s:
                self.assertTrue(read_line(s).startswith(b"* OK"))
            self.assertRaises(OSError, socket.create_connection, ("127.0.0.1", self.ports["imap"]))
