"""SIGHUP reloads the configuration of a running ``twistd -n mailsrv``:
what can change applies to new connections, the rest needs a restart."""

from __future__ import annotations

import io
import os
import poplib
import signal
import smtplib
import socket
import ssl

from twisted.trial import unittest

from mailsrv import cli
from mailsrv.tls import generate_self_signed
from tests.helpers import Daemon, free_port, read_line


def tls_client() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def der_of(cert_path: str) -> bytes:
    with open(cert_path) as f:
        return ssl.PEM_cert_to_DER_cert(f.read())


class IMAPConnection:
    """Just enough IMAP over a socket to log in, IDLE and read what comes."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.counter = 0
        self.greeting = read_line(sock)

    def command(self, text: str) -> list[bytes]:
        self.counter += 1
        tag = f"t{self.counter}"
        self.sock.sendall(f"{tag} {text}\r\n".encode())
        lines: list[bytes] = []
        while True:
            line = read_line(self.sock)
            if not line:
                raise AssertionError(f"connection closed after {lines!r}")
            lines.append(line)
            if line.startswith(tag.encode() + b" "):
                return lines

    def close(self) -> None:
        self.sock.close()


class ReloadCase(unittest.TestCase):
    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.ports = {name: free_port() for name in ("imap", "imaps", "pop3", "lmtp")}
        self.cert = os.path.join(self.dir, "cert.pem")
        self.key = os.path.join(self.dir, "key.pem")
        generate_self_signed(self.cert, self.key, "localhost")
        self.config = os.path.join(self.dir, "mailsrv.toml")
        self.passwd = os.path.join(self.dir, "passwd")
        self.write_config()
        self.add_user("alice", self.passwd)
        self.daemon = Daemon.start(["--config", self.config], cwd=self.dir)
        self.addCleanup(self.daemon.stop)
        self.daemon.wait_for("LMTP listening on")

    def write_config(
        self,
        *,
        imap_port: int | None = None,
        passwd: str | None = None,
        max_message_size: int = 100000,
        level: str = "info",
        extra: str = "",
    ) -> None:
        with open(self.config, "w") as f:
            f.write(
                f"""
[server]
hostname = "localhost"
[imap]
listen = ["tcp:{imap_port or self.ports["imap"]}:interface=127.0.0.1"]
listen_tls = ["tcp:{self.ports["imaps"]}:interface=127.0.0.1"]
[pop3]
listen = ["tcp:{self.ports["pop3"]}:interface=127.0.0.1"]
[lmtp]
listen = ["tcp:{self.ports["lmtp"]}:interface=127.0.0.1"]
[tls]
certificate = "{self.cert}"
key = "{self.key}"
[users]
passwd_file = "{passwd or self.passwd}"
[auth]
failure_delay = 0.0
[storage]
maildir = "{self.dir}/mail/{{user}}/Maildir"
[limits]
max_message_size = {max_message_size}
[logging]
level = "{level}"
{extra}
"""
            )

    def add_user(self, name: str, passwd: str) -> None:
        status = cli.main(
            ["user", "add", name, "--passwd", passwd, "--password-stdin", "--scheme", "PLAIN"],
            stdin=io.StringIO("pw\n"),
            stdout=io.StringIO(),
        )
        self.assertEqual(status, 0)

    def reload(self, expect: str = "configuration reloaded from", count: int = 1) -> None:
        self.daemon.process.send_signal(signal.SIGHUP)
        self.daemon.wait_for(expect, count=count)

    def imap(self) -> IMAPConnection:
        return IMAPConnection(socket.create_connection(("127.0.0.1", self.ports["imap"]), 30))

    def imaps(self) -> IMAPConnection:
        raw = socket.create_connection(("127.0.0.1", self.ports["imaps"]), 30)
        return IMAPConnection(tls_client().wrap_socket(raw))

    def deliver(self, user: str) -> None:
        with smtplib.LMTP("127.0.0.1", self.ports["lmtp"], timeout=30) as lmtp:
            lmtp.ehlo("c")
            lmtp.mail("")
            lmtp.rcpt(f"{user}@example.org")
            code, _ = lmtp.data(b"Subject: new\r\n\r\nbody\r\n")
            self.assertEqual(code, 250)

    def appendlimit(self) -> bytes:
        conn = self.imap()
        try:
            lines = conn.command("CAPABILITY")
        finally:
            conn.close()
        return next(w for w in lines[0].split() if w.startswith(b"APPENDLIMIT="))


class ReloadTests(ReloadCase):
    def test_new_certificate_for_new_clients_while_an_idle_session_keeps_working(self) -> None:
        old_der = der_of(self.cert)
        idler = self.imaps()
        self.addCleanup(idler.close)
        self.assertEqual(idler.sock.getpeercert(binary_form=True), old_der)  # type: ignore[attr-defined]
        self.assertIn(b"OK", idler.command("LOGIN alice pw")[-1])
        self.assertIn(b"OK", idler.command("SELECT INBOX")[-1])
        idler.sock.sendall(b"i1 IDLE\r\n")
        self.assertTrue(read_line(idler.sock).startswith(b"+ "))

        # certbot renews: a new pair at the same paths, then SIGHUP.
        generate_self_signed(self.cert, self.key, "localhost", replace=True)
        new_der = der_of(self.cert)
        self.assertNotEqual(new_der, old_der)
        self.reload()
        self.daemon.wait_for("TLS: serving the certificate")

        fresh = self.imaps()  # implicit TLS
        self.addCleanup(fresh.close)
        self.assertEqual(fresh.sock.getpeercert(binary_form=True), new_der)  # type: ignore[attr-defined]
        plain = self.imap()  # STARTTLS
        self.addCleanup(plain.close)
        self.assertIn(b"OK", plain.command("STARTTLS")[-1])
        upgraded = tls_client().wrap_socket(plain.sock)
        self.assertEqual(upgraded.getpeercert(binary_form=True), new_der)

        # The session that was idling is still there, on its old certificate,
        # and still hears about new mail.
        self.deliver("alice")
        self.assertEqual(read_line(idler.sock), b"* 1 EXISTS\r\n")
        idler.sock.sendall(b"DONE\r\n")
        while not (line := read_line(idler.sock)).startswith(b"i1 "):
            self.assertTrue(line.startswith(b"* "), line)
        self.assertTrue(line.startswith(b"i1 OK"), line)
        self.assertEqual(idler.sock.getpeercert(binary_form=True), old_der)  # type: ignore[attr-defined]
        self.assertIn(b"OK", idler.command("NOOP")[-1])
        self.assertNotIn("Traceback", self.daemon.log)

    def test_limits_users_file_and_log_level_apply_to_new_connections(self) -> None:
        self.assertEqual(self.appendlimit(), b"APPENDLIMIT=100000")
        other = os.path.join(self.dir, "passwd2")
        self.add_user("bob", other)
        self.write_config(passwd=other, max_message_size=200000, level="debug")
        self.reload()
        self.daemon.wait_for("changed users.passwd_file, limits.max_message_size, logging.level")
        self.assertEqual(self.appendlimit(), b"APPENDLIMIT=200000")
        pop = poplib.POP3("127.0.0.1", self.ports["pop3"], timeout=30)
        try:
            pop.user("bob")
            self.assertTrue(pop.pass_("pw").startswith(b"+OK"))
        finally:
            pop.quit()
        self.daemon.wait_for("C: USER bob")  # debug lines now appear
        pop = poplib.POP3("127.0.0.1", self.ports["pop3"], timeout=30)
        try:
            pop.user("alice")
            self.assertRaises(poplib.error_proto, pop.pass_, "pw")  # not in the new file
        finally:
            pop.quit()

    def test_bad_configuration_is_logged_and_the_old_one_stays(self) -> None:
        with open(self.config, "a") as f:
            f.write("[limits]\nmax_message_size = 5\n")  # a second [limits]: not TOML
        self.reload("reload refused, the configuration in force is kept")
        self.assertIn("not valid TOML", self.daemon.log)
        self.write_config(max_message_size=5)  # valid TOML, invalid value
        self.reload("limits.max_message_size: must be at least 1024", count=1)
        # Fine, but the key was replaced by the key of another certificate.
        other = os.path.join(self.dir, "other")
        generate_self_signed(other + ".pem", other + ".key", "localhost")
        os.replace(other + ".key", self.key)
        self.write_config(max_message_size=300000)
        self.reload("is not the private key of the certificate", count=1)
        self.assertEqual(self.daemon.log.count("reload refused"), 3)
        self.assertIsNone(self.daemon.process.poll())
        self.assertEqual(self.appendlimit(), b"APPENDLIMIT=100000")
        conn = self.imaps()  # the old certificate still serves
        conn.close()
        self.assertNotIn("configuration reloaded", self.daemon.log)
        self.assertNotIn("Traceback", self.daemon.log)

    def test_changed_listener_needs_a_restart(self) -> None:
        new_port = free_port()
        self.write_config(imap_port=new_port, max_message_size=150000)
        self.reload()
        self.daemon.wait_for("imap.listen changed, which needs a restart; keeping")
        self.assertIn("changed limits.max_message_size", self.daemon.log)
        self.assertEqual(self.appendlimit(), b"APPENDLIMIT=150000")  # on the old port
        self.assertRaises(
            OSError, socket.create_connection, ("127.0.0.1", new_port), 5
        )  # not listening there


class StorageRestartTests(ReloadCase):
    def test_changed_storage_needs_a_restart(self) -> None:
        with open(self.config) as f:
            text = f.read()
        with open(self.config, "w") as f:
            f.write(text.replace("/mail/{user}/Maildir", "/other/{user}/Maildir"))
        self.reload()
        self.daemon.wait_for("storage.maildir changed, which needs a restart")
        self.deliver("alice")
        self.assertTrue(os.path.isdir(os.path.join(self.dir, "mail", "alice", "Maildir")))
        self.assertFalse(os.path.exists(os.path.join(self.dir, "other")))
