"""The admin socket of a running daemon: ``mailsrv who``, ``kick``,
``stats`` and ``reload`` against live sessions."""

from __future__ import annotations

import grp
import io
import json
import os
import pwd
import shutil
import socket
import stat
import sys
import tempfile
import time
from collections.abc import Callable

from twisted.trial import unittest

from mailsrv import cli
from mailsrv.admin import Who
from mailsrv.imap.session import KICKED
from tests.ops_helpers import OpsCase

MESSAGE = b"Subject: keep me\r\n\r\nbody\r\n"


class AdminCase(OpsCase):
    def deliver(self) -> None:
        lmtp = self.lmtp()
        for command in (b"LHLO mta", b"MAIL FROM:<>", b"RCPT TO:<alice>", b"DATA"):
            lmtp.send(command + b"\r\n")
            while lmtp.line()[3:4] == b"-":
                pass
        lmtp.send(MESSAGE + b".\r\nQUIT\r\n")
        self.assertTrue(lmtp.line().startswith(b"250 "))

    def cli(self, *args: str) -> tuple[int, str, str]:
        return self.run_cli(*args, "--socket", self.socket)


class WhoTests(AdminCase):
    def test_who_lists_the_live_sessions(self) -> None:
        started = time.time()
        imap = self.imap()
        self.login(imap)
        self.assertIn(b"OK", imap.imap("SELECT Sent")[-1])
        pop = self.pop3()
        pop.pop3("USER alice")
        self.assertTrue(pop.pop3("PASS pw")[0].startswith(b"+OK"))
        lmtp = self.lmtp()

        status, out, err = self.cli("who", "--json")
        self.assertEqual((status, err), (0, ""))
        sessions = {s["remote"]: s for s in map(json.loads, out.splitlines())}
        self.assertEqual(set(sessions), {imap.local, pop.local, lmtp.local})
        mine = sessions[imap.local]
        self.assertEqual(
            (mine["user"], mine["protocol"], mine["mailbox"], mine["state"]),
            ("alice", "imap", "Sent", "selected"),
        )
        self.assertTrue(started - 1 <= mine["since"] <= time.time(), mine["since"])
        self.assertEqual(
            (sessions[pop.local]["user"], sessions[pop.local]["state"]), ("alice", "transaction")
        )
        self.assertEqual(
            (sessions[lmtp.local]["user"], sessions[lmtp.local]["protocol"]), (None, "lmtp")
        )

        status, out, _ = self.cli("who")
        self.assertEqual(status, 0)
        header, *rows = out.splitlines()
        self.assertEqual(
            header.split(), ["USER", "PROTOCOL", "REMOTE", "MAILBOX", "STATE", "SINCE"]
        )
        row = next(r for r in rows if imap.local in r)
        self.assertEqual(row.split()[:5], ["alice", "imap", imap.local, "Sent", "selected"])

    def test_the_socket_is_its_owner_s_only(self) -> None:
        self.assertEqual(stat.S_IMODE(os.stat(self.socket).st_mode), 0o600)
        self.assertTrue(stat.S_ISSOCK(os.stat(self.socket).st_mode))
        if os.getuid() != 0:
            return
        # Another user may not connect (root may: it ignores the mode).
        os.chmod(os.path.dirname(self.socket), 0o755)  # the directory is not what stops it
        child = os.fork()
        if child == 0:  # pragma: no cover - the child reports by its status
            code = 1
            try:
                os.setgid(pwd.getpwnam("nobody").pw_gid)
                os.setuid(pwd.getpwnam("nobody").pw_uid)
                with socket.socket(socket.AF_UNIX) as s:
                    s.connect(self.socket)
                code = 0
            except PermissionError:
                code = 77
            finally:
                os._exit(code)
        _, status = os.waitpid(child, 0)
        self.assertEqual(os.waitstatus_to_exitcode(status), 77)

    def test_a_newer_cli_is_told_what_the_daemon_knows(self) -> None:
        self.patch(Who, "commandName", b"who/2")
        status, out, err = self.cli("who")
        self.assertEqual(status, 76)
        self.assertIn("does not know who/2", err)
        self.assertIn("mailsrv 0.1.0, which knows version, who/1, kick/1, stats/1, reload/1", err)
        self.assertEqual(out, "")

    def test_no_daemon_at_the_socket(self) -> None:
        status, _, err = self.run_cli("who", "--socket", self.socket + ".missing")
        self.assertEqual(status, 69)
        self.assertIn("no admin socket at", err)


def as_nobody(action: Callable[[], tuple[int, str]], groups: list[int]) -> tuple[int, str]:
    """``action`` (an exit status and a text) run in a child process as
    the user nobody in ``groups``: root only, the child drops its rights."""
    reader, writer = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child reports by its status and pipe
        code = 1
        try:
            os.close(reader)
            os.setgroups(groups)
            os.setgid(pwd.getpwnam("nobody").pw_gid)
            os.setuid(pwd.getpwnam("nobody").pw_uid)
            code, text = action()
            os.write(writer, text.encode())
        finally:
            os._exit(code)
    os.close(writer)
    with os.fdopen(reader) as f:
        said = f.read()
    _, status = os.waitpid(child, 0)
    return os.waitstatus_to_exitcode(status), said


class GroupTests(AdminCase):
    """``[admin] group``: the socket is 0660 and the group's members may use it."""

    extra = 'group = "users"\n'

    def test_members_of_the_group_may_use_the_socket(self) -> None:
        users = grp.getgrnam("users").gr_gid
        st = os.stat(self.socket)
        self.assertEqual((stat.S_IMODE(st.st_mode), st.st_gid), (0o660, users))
        if os.getuid() != 0:
            raise unittest.SkipTest("running the CLI as another user needs root")
        os.chmod(os.path.dirname(self.socket), 0o755)  # the directory is not what stops it
        imap = self.imap()
        self.login(imap)

        def who() -> tuple[int, str]:
            out, err = io.StringIO(), io.StringIO()
            argv = ["admin", "who", "--json", "--socket", self.socket]
            status = cli.main(argv, stdout=out, stderr=err)
            return status, out.getvalue() + err.getvalue()

        status, said = as_nobody(who, [users])
        self.assertEqual(status, 0, said)
        self.assertEqual([json.loads(line)["user"] for line in said.splitlines()], ["alice"])
        status, said = as_nobody(who, [])
        self.assertEqual(status, 77, said)
        self.assertIn(
            f"{self.socket}: permission denied (run this as root or as a member of group users)",
            said,
        )


class KickTests(AdminCase):
    def test_imap_gets_bye_and_is_closed(self) -> None:
        imap = self.imap()
        self.login(imap)
        self.assertIn(b"OK", imap.imap("SELECT INBOX")[-1])
        idler = self.imap()
        self.login(idler)
        self.assertIn(b"OK", idler.imap("SELECT INBOX")[-1])
        idler.send(b"i IDLE\r\n")
        self.assertTrue(idler.line().startswith(b"+ "))

        status, out, err = self.cli("kick", "alice")
        self.assertEqual((status, err), (0, ""))
        self.assertTrue(out.startswith("ended 2 sessions:"), out)
        for client in (imap, idler):
            self.assertEqual(client.until_closed(), b"* BYE " + KICKED.encode() + b"\r\n")

    def test_pop3_gets_err_and_nothing_is_deleted(self) -> None:
        self.deliver()
        pop = self.pop3()
        pop.pop3("USER alice")
        self.assertTrue(pop.pop3("PASS pw")[0].startswith(b"+OK Logged in: 1 message"))
        self.assertTrue(pop.pop3("DELE 1")[0].startswith(b"+OK"))
        status, _, _ = self.cli("kick", "alice")
        self.assertEqual(status, 0)
        self.assertEqual(pop.until_closed(), b"-ERR Disconnected by the administrator.\r\n")
        # No UPDATE: the message marked for deletion is still there.
        again = self.pop3()
        again.pop3("USER alice")
        self.assertTrue(again.pop3("PASS pw")[0].startswith(b"+OK Logged in: 1 message"))
        self.assertEqual(again.pop3("RETR 1", multiline=True)[-2], b"body\r\n")

    def test_lmtp_by_address_ends_with_421(self) -> None:
        lmtp = self.lmtp()
        lmtp.send(b"LHLO mta\r\n")
        while not lmtp.line().startswith(b"250 "):
            pass
        status, out, _ = self.cli("kick", "--ip", "127.0.0.1")
        self.assertEqual(status, 0)
        self.assertIn("lmtp", out)
        self.assertEqual(
            lmtp.until_closed(), b"421 4.3.2 localhost Disconnected by the administrator\r\n"
        )

    def test_only_the_named_user_from_the_named_address(self) -> None:
        imap = self.imap()  # not logged in: not alice's
        status, _, err = self.cli("kick", "alice", "--ip", "127.0.0.1")
        self.assertEqual(status, 67)
        self.assertIn("no such session", err)
        self.assertIn(b"OK", imap.imap("NOOP")[-1])
        status, _, err = self.cli("kick")
        self.assertEqual(status, 64)
        self.assertIn("kick needs a USER, or --ip ADDRESS", err)


class StatsTests(AdminCase):
    def test_human_and_json(self) -> None:
        self.deliver()
        imap = self.imap()
        self.login(imap)
        self.assertIn(b"OK", imap.imap("SELECT INBOX")[-1])
        refused = self.imap()
        self.assertIn(b"NO", refused.imap("LOGIN alice nope")[-1])

        status, out, _ = self.cli("stats", "--json")
        self.assertEqual(status, 0)
        figures = json.loads(out)
        self.assertEqual(figures["sessions"], {"imap": 2, "pop3": 0, "lmtp": 0})
        self.assertEqual(
            figures["sessions_by_state"]["imap"], {"selected": 1, "not authenticated": 1}
        )
        self.assertEqual(figures["commands"]["imap"], 3)
        self.assertEqual(figures["logins"], {"success": 1, "failure": 1, "unavailable": 0})
        self.assertEqual(figures["deliveries"]["delivered"], 1)
        self.assertGreater(figures["commands_per_second"], 0)

        status, out, _ = self.cli("stats")
        self.assertEqual(status, 0)
        self.assertIn("sessions:   2 IMAP (1 not authenticated, 1 selected), 0 POP3, 0 LMTP", out)
        self.assertIn("logins:     1 succeeded, 1 failed, 0 unavailable", out)
        self.assertIn("deliveries: 1 delivered, 0 deferred, 0 rejected", out)


class ReloadTests(AdminCase):
    def test_outcomes_reach_the_terminal(self) -> None:
        status, out, _ = self.cli("reload")
        self.assertEqual(status, 0)
        self.assertTrue(out.startswith("reloaded: nothing changed"), out)
        self.daemon.wait_for("SIGHUP: no log file to reopen")  # what SIGHUP does, first

        self.write_config("[limits]\nmax_message_size = 200000\n")
        status, out, _ = self.cli("reload")
        self.assertEqual(status, 0)
        self.assertTrue(out.startswith("reloaded: changed limits.max_message_size"), out)
        imap = self.imap()
        self.assertIn(b"APPENDLIMIT=200000", imap.imap("CAPABILITY")[0])

    def test_restart_needed_and_refused(self) -> None:
        with open(self.config) as f:
            text = f.read()
        with open(self.config, "w") as f:
            f.write(text.replace(f"tcp:{self.ports['pop3']}:", "tcp:1:"))
        status, out, _ = self.cli("reload")
        self.assertEqual(status, 0)
        self.assertIn("needs a restart (old values kept until then): pop3.listen", out)

        with open(self.config, "a") as f:
            f.write("[limits]\nmax_message_size = 5\n")
        status, out, err = self.cli("reload")
        self.assertEqual(status, 78)
        self.assertEqual(out, "")
        self.assertIn("reload refused, the configuration in force is kept:", err)
        self.assertIn("limits.max_message_size: must be at least 1024, not 5", err)
        # The configuration in force still serves.
        self.assertIn(b"OK", self.imap().imap("NOOP")[-1])


class NotRunningTests(unittest.TestCase):
    """``mailsrv admin ...`` with no daemon behind the socket: one clear line
    and exit status 69 (EX_UNAVAILABLE), or 78 when there is no socket to try."""

    def setUp(self) -> None:
        run = tempfile.mkdtemp(prefix="mailsrv-ops-")
        self.addCleanup(shutil.rmtree, run, True)
        self.socket = os.path.join(run, "admin.sock")
        self.config = os.path.join(run, "mailsrv.toml")

    def admin(self, *args: str, config: str = "") -> tuple[int, str, str]:
        with open(self.config, "w") as f:
            f.write(f'[imap]\nlisten = ["tcp:10143"]\n[admin]\nsocket = "{self.socket}"\n{config}')
        out, err = io.StringIO(), io.StringIO()
        status = cli.main(["admin", *args, "--config", self.config], stdout=out, stderr=err)
        return status, out.getvalue(), err.getvalue()

    def test_no_socket_at_the_path(self) -> None:
        for command in ("who", "stats", "reload"):
            self.assertEqual(
                self.admin(command),
                (
                    69,
                    "",
                    f"mailsrv: no admin socket at {self.socket}: is the daemon running, "
                    "with this admin.socket?\n",
                ),
            )

    def test_a_socket_left_by_a_daemon_that_is_gone(self) -> None:
        left = socket.socket(socket.AF_UNIX)
        left.bind(self.socket)
        left.close()  # the file stays; nothing listens
        self.assertEqual(
            self.admin("kick", "alice"),
            (
                69,
                "",
                f"mailsrv: nothing listens on {self.socket}: the daemon is not running (the "
                "socket is left from one that was stopped or killed)\n",
            ),
        )

    def test_no_admin_socket_configured(self) -> None:
        with open(self.config, "w") as f:
            f.write('[imap]\nlisten = ["tcp:10143"]\n[admin]\nsocket = ""\n')
        err = io.StringIO()
        status = cli.main(
            ["admin", "who", "--config", self.config], stdout=io.StringIO(), stderr=err
        )
        self.assertEqual(status, 78)
        self.assertIn("admin.socket is empty: this daemon has no admin socket", err.getvalue())

    def test_an_action_is_required(self) -> None:
        usage = io.StringIO()
        self.patch(sys, "stderr", usage)  # argparse's own
        self.assertEqual(cli.main(["admin"], stdout=io.StringIO(), stderr=io.StringIO()), 64)
        self.assertIn(
            "mailsrv admin: error: the following arguments are required: ACTION", usage.getvalue()
        )
