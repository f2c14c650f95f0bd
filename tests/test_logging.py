"""``[logging] format = "json"``: one JSON object per line, with twistd's
``--logfile``, SIGHUP reopening, SIGUSR1 rotation and standard output."""

from __future__ import annotations

import io
import json
import os
import signal
import smtplib
from typing import Any, cast

from twisted.logger import ILogObserver, Logger, LogLevel
from twisted.trial import unittest

from mailsrv import cli, log
from tests.helpers import Daemon, daemon_config, free_port, loopback, wait_for_file_text


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every line of ``text`` as JSON; fails naming a line that is not."""
    records = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            raise AssertionError(f"not a JSON line: {line!r}") from None
        if not isinstance(record, dict):
            raise AssertionError(f"not a JSON object: {line!r}")
        records.append(record)
    return records


class FormatTests(unittest.SynchronousTestCase):
    def test_event_fields(self) -> None:
        events: list[dict[str, Any]] = []
        Logger(namespace="mailsrv.test", observer=cast(ILogObserver, events.append)).info(
            "{user} did {command}",
            session="ab12",
            protocol="imap",
            remote="192.0.2.1:1234",
            user="alice",
            command="SELECT",
            result="OK",
            duration=0.25,
            thing=object(),
        )
        line = log.format_json(events[0])
        assert line is not None
        self.assertTrue(line.endswith("}\n"))
        self.assertEqual(line.count("\n"), 1)
        record = json.loads(line)
        self.assertEqual(record["level"], "info")
        self.assertEqual(record["namespace"], "mailsrv.test")
        self.assertEqual(record["message"], "alice did SELECT")
        self.assertRegex(record["timestamp"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00$")
        for key, value in {
            "session": "ab12",
            "protocol": "imap",
            "remote": "192.0.2.1:1234",
            "user": "alice",
            "command": "SELECT",
            "result": "OK",
            "duration": 0.25,
        }.items():
            self.assertEqual(record[key], value)
        self.assertTrue(record["thing"].startswith("<object object"))

    def test_failure_has_its_traceback_on_the_same_line(self) -> None:
        events: list[dict[str, Any]] = []
        try:
            1 / 0  # noqa: B018
        except ZeroDivisionError:
            observer = cast(ILogObserver, events.append)
            Logger(namespace="mailsrv.test", observer=observer).failure("broke")
        line = log.format_json(events[0])
        assert line is not None
        record = json.loads(line)
        self.assertEqual(record["level"], LogLevel.critical.name)
        self.assertIn("ZeroDivisionError", record["traceback"])
        self.assertEqual(line.count("\n"), 1)


class DaemonLogTests(unittest.TestCase):
    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.port = free_port()
        self.config = os.path.join(self.dir, "mailsrv.toml")
        self.write_config("json")
        status = cli.main(
            ["user", "add", "alice", "--config", self.config, "--password-stdin"],
            stdin=io.StringIO("pw\n"),
            stdout=io.StringIO(),
        )
        self.assertEqual(status, 0)

    def write_config(self, fmt: str) -> None:
        daemon_config(
            self.dir,
            {
                "lmtp": {"listen": loopback(self.port)},
                "users": {"create_if_missing": None},
                "auth": {"failure_delay": None},
                "logging": {"format": fmt},
            },
        )

    def deliver(self) -> None:
        with smtplib.LMTP("127.0.0.1", self.port, timeout=30) as lmtp:
            lmtp.ehlo("c")
            lmtp.mail("")
            lmtp.rcpt("alice@example.org")
            self.assertEqual(lmtp.data(b"Subject: x\r\n\r\nx\r\n")[0], 250)

    def test_json_log_file_reopened_and_rotated(self) -> None:
        path = os.path.join(self.dir, "mailsrv.log")
        daemon = Daemon.start(
            ["--config", self.config], cwd=self.dir, twistd_args=("--logfile", path)
        )
        self.addCleanup(daemon.stop)
        wait_for_file_text(path, "LMTP listening on", process=daemon.process)
        self.deliver()
        text = wait_for_file_text(path, '"command": "DATA"', process=daemon.process)
        records = json_lines(text)
        self.assertIn("starting up", records[0]["message"])  # twistd's first line too
        delivery = next(r for r in records if r.get("command") == "DATA")
        self.assertEqual(delivery["protocol"], "lmtp")
        self.assertEqual(delivery["user"], "alice")
        self.assertEqual(delivery["result"], "250 2.0.0")
        self.assertRegex(delivery["remote"], r"^127\.0\.0\.1:\d+$")
        self.assertIsInstance(delivery["duration"], float)
        self.assertIsInstance(delivery["session"], str)
        self.assertEqual(delivery["level"], "info")
        self.assertEqual(delivery["namespace"], "mailsrv.lmtp.server")

        # logrotate: rename, SIGHUP; the new file is JSON too.
        os.rename(path, path + ".1")
        daemon.process.send_signal(signal.SIGHUP)
        wait_for_file_text(path, "configuration reloaded", process=daemon.process)
        self.deliver()
        text = wait_for_file_text(path, '"command": "DATA"', process=daemon.process)
        self.assertIn("SIGHUP: reopened the log file", json_lines(text)[0]["message"])
        with open(path + ".1") as f:
            json_lines(f.read())

        # twistd's own rotation (SIGUSR1) keeps the format.
        daemon.process.send_signal(signal.SIGUSR1)
        wait_for_file_text(path + ".1", '"command": "DATA"', process=daemon.process)
        self.deliver()
        text = wait_for_file_text(path, '"command": "DATA"', process=daemon.process)
        json_lines(text)

        # Back to text with a reload: later lines are twistd's text lines.
        self.write_config("text")
        daemon.process.send_signal(signal.SIGHUP)
        text = wait_for_file_text(path, "[mailsrv.reload#info] configuration reloaded")
        self.deliver()
        text = wait_for_file_text(path, "Delivered as UID 3", process=daemon.process)
        last = text.splitlines()[-1]
        self.assertRegex(last, r"^\d{4}-\d\d-\d\dT\S+ \[mailsrv\.lmtp\.server#info\] LMTP: ")
        daemon.stop()
        self.assertNotIn("Traceback", text)

    def test_json_on_standard_output_from_the_first_line(self) -> None:
        daemon = Daemon.start(["--config", self.config], cwd=self.dir)
        self.addCleanup(daemon.stop)
        daemon.wait_for("LMTP listening on")
        self.deliver()
        daemon.wait_for('"command": "DATA"')
        daemon.stop()
        records = json_lines(daemon.log)
        self.assertIn("starting up", records[0]["message"])
        self.assertIn("Server Shut Down.", records[-1]["message"])
