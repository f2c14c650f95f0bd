"""The daemon started the way users start it: ``twistd -n mailsrv --config FILE``."""

from __future__ import annotations

import io
import os
import poplib
import random
import shlex
import shutil
import signal
import socket
import ssl
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager

from twisted.trial import unittest

from mailsrv import cli
from mailsrv.tls import generate_self_signed
from tests.helpers import (
    STARTUP_DEADLINE,
    Daemon,
    free_port,
    read_line,
    source_env,
    twistd_command,
    wait_for_file_text,
    write_certificate,
)
from tests.workers_helpers import children

#: nobody/nogroup on Debian.
NOBODY = 65534


@contextmanager
def run_daemon(directory: str, *args: str, twistd_args: tuple[str, ...] = ()) -> Iterator[Daemon]:
    """``twistd -n [twistd_args] mailsrv [args]`` started in ``directory``."""
    daemon = Daemon.start(list(args), cwd=directory, twistd_args=twistd_args)
    try:
        yield daemon
    finally:
        daemon.stop()


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

    def daemon(self, *args: str) -> AbstractContextManager[Daemon]:
        return run_daemon(self.dir, *args)

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
            "(known keys of [limits]: command_cpu_seconds, max_cache_kinds, max_connections, "
            "max_connections_per_ip, max_connections_per_user, max_line_length, "
            "max_message_size, max_metadata_entries, max_metadata_size, max_nesting_depth, "
            "max_pending_commands, max_search_content_keys)",
        )

    def set_tls(self, certificate: str, key: str) -> None:
        """Point ``[tls]`` of the configuration at other files."""
        with open(self.config) as f:
            text = f.read()
        text = text.replace('certificate = "var/tls/cert.pem"', f'certificate = "{certificate}"')
        text = text.replace('key = "var/tls/key.pem"', f'key = "{key}"')
        with open(self.config, "w") as f:
            f.write(text)

    def test_new_certificate_path_never_replaces_the_existing_key(self) -> None:
        """generate_self_signed with ``certificate`` moved to a new path and
        ``key`` left at an existing file: the key must survive, and the
        daemon must say what to do instead of starting with a broken pair."""
        tls = os.path.join(self.dir, "var", "tls")
        generate_self_signed(os.path.join(tls, "cert.pem"), os.path.join(tls, "key.pem"), "x")
        with open(os.path.join(tls, "key.pem"), "rb") as f:
            key_before = f.read()
        self.set_tls("var/tls/new-cert.pem", "var/tls/key.pem")
        with self.daemon("--config", self.config) as daemon:
            output = daemon.wait_exit(STARTUP_DEADLINE)
        self.assertEqual(daemon.process.returncode, 1, output)
        self.assertIn(
            f"mailsrv: configuration error: {self.config}: tls.certificate: "
            f"{tls}/new-cert.pem does not exist but tls.key {tls}/key.pem does",
            output,
        )
        self.assertNotIn("Traceback", output)
        with open(os.path.join(tls, "key.pem"), "rb") as f:
            self.assertEqual(f.read(), key_before)
        self.assertFalse(os.path.exists(os.path.join(tls, "new-cert.pem")))

    def test_key_of_another_certificate_stops_startup(self) -> None:
        """Not at the first handshake: at startup, naming both files."""
        tls = os.path.join(self.dir, "var", "tls")
        generate_self_signed(os.path.join(tls, "cert.pem"), os.path.join(tls, "key.pem"), "x")
        generate_self_signed(os.path.join(tls, "c2.pem"), os.path.join(tls, "k2.pem"), "x")
        self.set_tls("var/tls/cert.pem", "var/tls/k2.pem")
        with self.daemon("--config", self.config) as daemon:
            output = daemon.wait_exit(STARTUP_DEADLINE)
        self.assertEqual(daemon.process.returncode, 1, output)
        self.assertIn(
            f"mailsrv: configuration error: {self.config}: tls.key: {tls}/k2.pem is not the "
            f"private key of the certificate {tls}/cert.pem",
            output,
        )
        self.assertNotIn("Traceback", output)

    def test_command_line_overrides(self) -> None:
        port = free_port()
        with self.daemon(
            "--config", self.config, "--imap", f"tcp:{port}:interface=127.0.0.1"
        ) as daemon:
            daemon.wait_for("listening on", count=4)
            with socket.create_connection(("127.0.0.1", port)) as s:
                self.assertTrue(read_line(s).startswith(b"* OK"))
            self.assertRaises(OSError, socket.create_connection, ("127.0.0.1", self.ports["imap"]))


class HangupTests(unittest.TestCase):
    """SIGHUP, which logrotate sends after renaming the log file."""

    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.port = free_port()
        self.config = os.path.join(self.dir, "mailsrv.toml")
        with open(self.config, "w") as f:
            f.write(
                f'[pop3]\nlisten = ["tcp:{self.port}:interface=127.0.0.1"]\n'
                f"[users]\npasswd_file = '{self.dir}/passwd'\ncreate_if_missing = true\n"
                f"[auth]\nfailure_delay = 0.0\n"
                f"[storage]\nmaildir = '{self.dir}/mail/{{user}}/Maildir'\n"
            )
        status = cli.main(
            ["user", "add", "alice", "--config", self.config, "--password-stdin"],
            stdin=io.StringIO("pw\n"),
            stdout=io.StringIO(),
        )
        self.assertEqual(status, 0)

    def login(self) -> None:
        pop = poplib.POP3("127.0.0.1", self.port, timeout=30)
        try:
            pop.user("alice")
            self.assertTrue(pop.pass_("pw").startswith(b"+OK"))
        finally:
            pop.quit()

    def test_sighup_reopens_the_log_file_and_keeps_serving(self) -> None:
        log = os.path.join(self.dir, "mailsrv.log")
        twistd_args = ("--logfile", log)
        with run_daemon(self.dir, "--config", self.config, twistd_args=twistd_args) as daemon:
            wait_for_file_text(log, "listening on", process=daemon.process)
            os.rename(log, log + ".1")  # what logrotate does first
            daemon.process.send_signal(signal.SIGHUP)
            new = wait_for_file_text(
                log, f"SIGHUP: reopened the log file {log}", process=daemon.process
            )
            self.assertIsNone(daemon.process.poll())
            self.login()
            new = wait_for_file_text(log, "alice logged in", process=daemon.process)
            with open(log + ".1") as f:
                old = f.read()
            self.assertIn(f"SIGHUP: reopening the log file {log}", old)
            self.assertNotIn("logged in", old)
            self.assertNotIn("listening on", new)
            # A second rotation works as well.
            os.rename(log, log + ".2")
            daemon.process.send_signal(signal.SIGHUP)
            wait_for_file_text(log, "SIGHUP: reopened", process=daemon.process)
            self.login()
            wait_for_file_text(log, "alice logged in", process=daemon.process)
            # twistd's own rotation (SIGUSR1: mailsrv.log -> mailsrv.log.1) still works.
            os.unlink(log + ".1")
            daemon.process.send_signal(signal.SIGUSR1)
            wait_for_file_text(log + ".1", "alice logged in", process=daemon.process)
            self.login()
            wait_for_file_text(log, "alice logged in", process=daemon.process)
            self.assertIsNone(daemon.process.poll())
        self.assertNotIn("Traceback", daemon.log)

    def test_sighup_without_log_file_is_logged(self) -> None:
        with run_daemon(self.dir, "--config", self.config) as daemon:
            daemon.wait_for("listening on")
            daemon.process.send_signal(signal.SIGHUP)
            daemon.wait_for("SIGHUP: no log file to reopen")
            self.assertIsNone(daemon.process.poll())
            self.login()
            daemon.wait_for("alice logged in")


class CipherSuiteTests(unittest.TestCase):
    """What a TLS 1.2 client can negotiate with the daemon's default
    cipher list (RFC 9325 4.1, 4.2: forward secrecy and AEAD only)."""

    def start(self, tls: str = "") -> None:
        """Start the daemon with an RSA certificate and ``tls`` added to [tls]."""
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        # Static-RSA suites need an RSA key: only with one does refusing them show.
        write_certificate(
            os.path.join(self.dir, "cert.pem"), os.path.join(self.dir, "key.pem"), rsa=True
        )
        self.port = free_port()
        config = os.path.join(self.dir, "mailsrv.toml")
        with open(config, "w") as f:
            f.write(
                f'[imap]\nlisten_tls = ["tcp:{self.port}:interface=127.0.0.1"]\n'
                f'[tls]\ncertificate = "cert.pem"\nkey = "key.pem"\n{tls}'
                "[users]\npasswd_file = 'passwd'\ncreate_if_missing = true\n"
                "[storage]\nmaildir = 'mail/{user}/Maildir'\n"
            )
        daemon = Daemon.start(["--config", config], cwd=self.dir)
        self.addCleanup(daemon.stop)
        daemon.wait_for("listening on")

    def handshake(self, suite: str | None, version: ssl.TLSVersion) -> tuple[str, str]:
        """(protocol, cipher) negotiated by a client offering only ``suite``
        (None: the client's defaults) at exactly ``version``."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        context.minimum_version = context.maximum_version = version
        if suite is not None:
            # SECLEVEL=0: the client must offer what old clients offer.
            context.set_ciphers(f"{suite}:@SECLEVEL=0")
        with socket.create_connection(("127.0.0.1", self.port), timeout=30) as raw:
            with context.wrap_socket(raw) as s:
                self.assertTrue(read_line(s).startswith(b"* OK"))
                cipher, negotiated = s.cipher(), s.version()
                assert cipher is not None and negotiated is not None
                return negotiated, cipher[0]

    def test_tls12_refuses_static_rsa_and_cbc(self) -> None:
        self.start()
        for suite in (
            "AES128-SHA",
            "AES256-GCM-SHA384",
            "ECDHE-RSA-AES128-SHA",
            "ECDHE-RSA-AES256-SHA384",
            "ECDHE-RSA-AES128-SHA256",
        ):
            with self.assertRaises(ssl.SSLError, msg=suite):
                self.handshake(suite, ssl.TLSVersion.TLSv1_2)

    def test_tls12_forward_secret_aead_and_tls13_work(self) -> None:
        self.start()
        for suite in (
            "ECDHE-RSA-AES128-GCM-SHA256",
            "ECDHE-RSA-AES256-GCM-SHA384",
            "ECDHE-RSA-CHACHA20-POLY1305",
        ):
            self.assertEqual(
                self.handshake(suite, ssl.TLSVersion.TLSv1_2), ("TLSv1.2", suite), suite
            )
        self.assertEqual(self.handshake(None, ssl.TLSVersion.TLSv1_2)[0], "TLSv1.2")
        version, cipher = self.handshake(None, ssl.TLSVersion.TLSv1_3)
        self.assertEqual(version, "TLSv1.3")
        self.assertTrue(cipher.startswith("TLS_"), cipher)

    def test_cipher_list_is_configurable(self) -> None:
        """tls.ciphers replaces the TLS 1.2 list, and only that."""
        self.start('ciphers = "ECDHE+AESGCM:ECDHE+AES:!SHA384:!SHA256"\n')
        suite = "ECDHE-RSA-AES128-SHA"  # CBC, SHA-1: allowed here on purpose
        self.assertEqual(self.handshake(suite, ssl.TLSVersion.TLSv1_2), ("TLSv1.2", suite))
        with self.assertRaises(ssl.SSLError):
            self.handshake("ECDHE-RSA-CHACHA20-POLY1305", ssl.TLSVersion.TLSv1_2)
        self.assertEqual(self.handshake(None, ssl.TLSVersion.TLSv1_3)[0], "TLSv1.3")


def free_privileged_port() -> int | None:
    # In random order: parallel test runs (trial -j) scanning from the same
    # end would race for the same port between this probe and the bind.
    for port in random.sample(range(600, 1024), k=424):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    return None


class PrivilegeDropTests(unittest.TestCase):
    """``twistd --uid/--gid`` started as root, as the systemd unit in the admin guide does."""

    def setUp(self) -> None:
        if os.geteuid() != 0:
            raise unittest.SkipTest("needs root to bind a port below 1024 and drop privileges")
        port = free_privileged_port()
        if port is None:
            raise unittest.SkipTest("no free port below 1024")
        self.port = port
        # Outside the checkout: nobody must be able to reach the files, and
        # the checkout may sit below a directory only root can enter (a CI
        # clone in a fresh `mktemp -d`, which is 0700).
        self.dir = tempfile.mkdtemp(prefix="mailsrv-privilege-drop-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        os.chmod(self.dir, 0o755)
        os.makedirs(os.path.join(self.dir, "var", "mail"))
        os.chown(os.path.join(self.dir, "var", "mail"), NOBODY, NOBODY)
        self.passwd = os.path.join(self.dir, "var", "passwd")
        self.config = os.path.join(self.dir, "mailsrv.toml")
        with open(self.config, "w") as f:
            f.write(
                f'[pop3]\nlisten = ["tcp:{port}:interface=127.0.0.1"]\n'
                f'[users]\npasswd_file = "{self.passwd}"\n'
                "[auth]\nfailure_delay = 0.0\n"
                f'[storage]\nmaildir = "{self.dir}/var/mail/{{user}}/Maildir"\n'
            )

    def add_user(self, name: str) -> None:
        status = cli.main(
            ["user", "add", name, "--config", self.config, "--password-stdin"],
            stdin=io.StringIO(f"{name}-pw\n"),
            stdout=io.StringIO(),
        )
        self.assertEqual(status, 0)

    def login(self, name: str) -> bytes:
        pop = poplib.POP3("127.0.0.1", self.port, timeout=30)
        try:
            pop.user(name)
            return pop.pass_(f"{name}-pw")
        finally:
            pop.quit()

    def test_low_port_bound_then_root_dropped_and_new_users_seen(self) -> None:
        self.add_user("alice")
        # The layout the admin guide asks for: root owns it, the daemon's group reads it.
        os.chown(self.passwd, 0, NOBODY)
        os.chmod(self.passwd, 0o640)
        twistd_args = ("--uid", str(NOBODY), "--gid", str(NOBODY))
        with run_daemon(self.dir, "--config", self.config, twistd_args=twistd_args) as daemon:
            daemon.wait_for("set uid/gid")
            with open(f"/proc/{daemon.process.pid}/status") as f:
                ids = [line.split()[1:] for line in f if line.startswith(("Uid:", "Gid:"))]
            self.assertEqual(ids, [[str(NOBODY)] * 4] * 2)
            self.assertTrue(self.login("alice").startswith(b"+OK"))
            # Root edits the file while the unprivileged daemon runs.
            self.add_user("bob")
            self.assertEqual(stat.S_IMODE(os.stat(self.passwd).st_mode), 0o640)
            self.assertTrue(self.login("bob").startswith(b"+OK"))
            daemon.stop()
        self.assertNotIn("cannot be read", "".join(daemon.output))

    def test_users_file_only_root_can_read_is_reported(self) -> None:
        self.add_user("alice")  # root:root 0600
        twistd_args = ("--uid", str(NOBODY), "--gid", str(NOBODY))
        with run_daemon(self.dir, "--config", self.config, twistd_args=twistd_args) as daemon:
            daemon.wait_for("cannot be read by this process")


class SocketActivationTests(unittest.TestCase):
    """``listen = ["systemd:domain=INET:index=0"]`` with a socket systemd
    passes in, as the admin guide's mailsrv.socket unit does."""

    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.config = os.path.join(self.dir, "mailsrv.toml")
        with open(self.config, "w") as f:
            f.write(
                '[pop3]\nlisten = ["systemd:domain=INET:index=0"]\n'
                "[users]\npasswd_file = 'passwd'\ncreate_if_missing = true\n"
                "[storage]\nmaildir = 'mail/{user}/Maildir'\n"
            )

    def test_check_config_outside_systemd_accepts_it(self) -> None:
        """What ExecStartPre runs: no sockets are inherited there."""
        out, err = io.StringIO(), io.StringIO()
        status = cli.main(["check-config", self.config], stdout=out, stderr=err)
        self.assertEqual((status, err.getvalue()), (0, ""))
        self.assertIn("pop3 plain: systemd:domain=INET:index=0", out.getvalue())

    def test_serves_on_the_inherited_socket(self) -> None:
        daemon = self.start_activated(workers=1)
        daemon.wait_for("listening on systemd:domain=INET:index=0")
        with socket.create_connection(("127.0.0.1", self.port), timeout=30) as s:
            self.assertTrue(read_line(s).startswith(b"+OK"))

    def test_workers_serve_on_the_inherited_socket(self) -> None:
        """The parent adopts systemd's socket and hands it to each worker."""
        daemon = self.start_activated(workers=2)
        daemon.wait_for("all 2 workers are ready")
        with socket.create_connection(("127.0.0.1", self.port), timeout=30) as s:
            self.assertTrue(read_line(s).startswith(b"+OK"))
        workers = children(daemon.process.pid)
        self.assertEqual(len(workers), 2)
        target = f"socket:[{self.inode}]"
        for pid in workers:
            held = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
            self.assertIn(target, held, f"worker {pid} does not hold the socket")

    def start_activated(self, workers: int) -> Daemon:
        """The daemon with a listening socket as systemd passes it (fd 3)."""
        listening = socket.socket()
        listening.bind(("127.0.0.1", 0))
        listening.listen(5)
        self.addCleanup(listening.close)
        self.port = listening.getsockname()[1]
        self.inode = os.fstat(listening.fileno()).st_ino

        def as_systemd_passes_it() -> None:  # in the child, before exec
            if listening.fileno() != 3:
                os.dup2(listening.fileno(), 3)

        # LISTEN_PID must be the daemon's own pid: sh sets it and execs twistd.
        twistd = [*twistd_command(), "-n", "--pidfile=", "mailsrv", "--config", self.config]
        twistd += ["--workers", str(workers)]
        command = "export LISTEN_PID=$$; exec " + shlex.join(twistd)
        process = subprocess.Popen(
            ["sh", "-c", command],
            cwd=self.dir,
            env={**source_env(), "LISTEN_FDS": "1", "LISTEN_FDNAMES": "pop3"},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            pass_fds=(3,) if listening.fileno() == 3 else (listening.fileno(), 3),
            preexec_fn=as_systemd_passes_it,
        )
        daemon = Daemon(process)
        self.addCleanup(daemon.stop)
        return daemon

    def test_no_inherited_socket_stops_startup_naming_the_key(self) -> None:
        with run_daemon(self.dir, "--config", self.config) as daemon:
            output = daemon.wait_exit(STARTUP_DEADLINE)
        self.assertEqual(daemon.process.returncode, 1)
        self.assertIn(
            f"{self.config}: pop3.listen[0]: 'systemd:domain=INET:index=0': no such", output
        )
        self.assertNotIn("Traceback", output)
