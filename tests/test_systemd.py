"""systemd: the readiness protocol over a real NOTIFY_SOCKET, and the unit
files in etc/systemd checked by ``systemd-analyze verify``."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile

from twisted.trial import unittest

from mailsrv import sdnotify
from tests.helpers import ROOT, STARTUP_DEADLINE, Daemon, free_port, source_env, twistd_command


class NotifySocket:
    """A Unix datagram socket standing in for systemd's notify socket."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(STARTUP_DEADLINE)  # a deadline for each message

    def receive(self) -> list[str]:
        return self.sock.recv(4096).decode().split("\n")

    def close(self) -> None:
        self.sock.close()


class NotifyFunctionTests(unittest.SynchronousTestCase):
    def test_without_notify_socket_nothing_is_sent(self) -> None:
        self.patch(os, "environ", {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"})
        self.assertFalse(sdnotify.ready())

    def test_abstract_socket(self) -> None:
        name = f"mailsrv-test-{os.getpid()}-{id(self)}"
        listener = NotifySocket("\0" + name)
        self.addCleanup(listener.close)
        self.patch(os, "environ", {**os.environ, "NOTIFY_SOCKET": "@" + name})
        self.assertTrue(sdnotify.stopping())
        self.assertEqual(listener.receive(), ["STOPPING=1"])


class DaemonNotifyTests(unittest.TestCase):
    def test_ready_reloading_stopping(self) -> None:
        directory = tempfile.mkdtemp(prefix="mailsrv-notify-")
        self.addCleanup(shutil.rmtree, directory, True)
        address = os.path.join(directory, "notify")
        listener = NotifySocket(address)
        self.addCleanup(listener.close)
        port = free_port()
        config = os.path.join(directory, "mailsrv.toml")
        with open(config, "w") as f:
            f.write(
                f'[pop3]\nlisten = ["tcp:{port}:interface=127.0.0.1"]\n'
                f"[users]\npasswd_file = '{directory}/passwd'\ncreate_if_missing = true\n"
                f"[storage]\nmaildir = '{directory}/mail/{{user}}/Maildir'\n"
            )
        daemon = Daemon.start(
            ["--config", config], cwd=directory, env={**source_env(), "NOTIFY_SOCKET": address}
        )
        self.addCleanup(daemon.stop)
        self.assertEqual(listener.receive(), ["READY=1", "STATUS=serving"])
        # Ready means serving: the port answers now.
        socket.create_connection(("127.0.0.1", port), timeout=30).close()
        daemon.process.send_signal(signal.SIGHUP)
        reloading = listener.receive()
        self.assertEqual(reloading[0], "RELOADING=1")
        self.assertRegex(reloading[1], r"^MONOTONIC_USEC=\d+$")
        self.assertEqual(listener.receive(), ["READY=1", "STATUS=serving"])
        daemon.wait_for("configuration reloaded")
        daemon.process.send_signal(signal.SIGTERM)
        self.assertEqual(listener.receive(), ["STOPPING=1"])
        daemon.process.wait(STARTUP_DEADLINE)


class UnitFileTests(unittest.TestCase):
    def test_systemd_analyze_verify(self) -> None:
        analyze = shutil.which("systemd-analyze")
        if analyze is None:
            raise unittest.SkipTest("systemd-analyze is not installed")
        units = os.path.join(ROOT, "etc", "systemd")
        names = sorted(os.listdir(units))
        self.assertIn("mailsrv.service", names)
        self.assertIn("mailsrv-lmtp.socket", names)
        work = tempfile.mkdtemp(prefix="mailsrv-units-")
        self.addCleanup(shutil.rmtree, work, True)
        # verify checks that ExecStart= programs exist: point them at this
        # environment's twistd and mailsrv instead of /opt/mailsrv/bin.
        bin_dir = os.path.dirname(twistd_command()[0])
        for name in names:
            with open(os.path.join(units, name)) as f:
                text = f.read()
            with open(os.path.join(work, name), "w") as f:
                f.write(text.replace("/opt/mailsrv/bin", bin_dir))
        if not os.path.exists(os.path.join(bin_dir, "mailsrv")):
            raise unittest.SkipTest(f"no mailsrv script beside {twistd_command()[0]}")
        result = subprocess.run(
            [analyze, "verify", *names],
            cwd=work,
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "SYSTEMD_LOG_LEVEL": "notice"},
        )
        self.assertEqual((result.returncode, result.stdout + result.stderr), (0, ""))
