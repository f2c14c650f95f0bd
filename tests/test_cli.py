"""The ``mailsrv`` admin command, driven as an administrator would."""

from __future__ import annotations

import io
import os
import stat
import subprocess
import sys

from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer
from twisted.trial import unittest

from mailsrv import cli
from mailsrv.auth.checker import PasswdFileChecker
from mailsrv.auth.passwdfile import PasswdFile
from tests.helpers import mailsrv_command, source_env


class CLITestCase(unittest.TestCase):
    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.passwd = os.path.join(self.dir, "var", "passwd")

    def run_cli(self, *argv: str, stdin: str = "") -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        status = cli.main(list(argv), stdin=io.StringIO(stdin), stdout=out, stderr=err)
        return status, out.getvalue(), err.getvalue()

    def add(self, name: str, password: str, *extra: str) -> tuple[int, str, str]:
        return self.run_cli(
            "user",
            "add",
            name,
            "--passwd",
            self.passwd,
            "--password-stdin",
            *extra,
            stdin=password + "\n",
        )

    def check(self, name: str, password: str) -> defer.Deferred[str]:
        checker = PasswdFileChecker(PasswdFile(self.passwd), run_in_thread=False)
        return checker.requestAvatarId(UsernamePassword(name.encode(), password.encode()))


class UserCommandTests(CLITestCase):
    def test_add_creates_file_with_hashed_password(self) -> None:
        status, out, err = self.add("alice", "correct horse")
        self.assertEqual((status, err), (0, ""))
        self.assertIn("added alice", out)
        mode = stat.S_IMODE(os.stat(self.passwd).st_mode)
        self.assertEqual(mode, 0o600)
        with open(self.passwd) as f:
            line = f.read()
        self.assertTrue(line.startswith("alice:{ARGON2ID}$argon2id$"), line)
        self.assertNotIn("correct horse", line)
        self.assertEqual(self.successResultOf(self.check("alice", "correct horse")), "alice")
        self.failureResultOf(self.check("alice", "wrong"), UnauthorizedLogin)

    def test_add_with_scheme_and_home(self) -> None:
        status, _, _ = self.add("bob", "pw", "--scheme", "PLAIN", "--home", "/home/bob")
        self.assertEqual(status, 0)
        record = PasswdFile(self.passwd).get("bob")
        assert record is not None
        self.assertEqual((record.password, record.home), ("{PLAIN}pw", "/home/bob"))

    def test_add_twice_is_refused(self) -> None:
        self.add("alice", "one")
        status, _, err = self.add("alice", "two")
        self.assertEqual(status, cli.EX_DATAERR)
        self.assertIn("already exists", err)
        self.assertEqual(self.successResultOf(self.check("alice", "one")), "alice")

    def test_bad_name_is_refused(self) -> None:
        status, _, err = self.add("al:ice", "pw")
        self.assertEqual(status, cli.EX_DATAERR)
        self.assertIn("':'", err)

    def test_empty_password_is_refused(self) -> None:
        status, _, err = self.add("alice", "")
        self.assertEqual(status, cli.EX_DATAERR)
        self.assertIn("empty password", err)

    def test_passwd_changes_password(self) -> None:
        self.add("alice", "old")
        status, _out, _ = self.run_cli(
            "user",
            "passwd",
            "alice",
            "--passwd",
            self.passwd,
            "--password-stdin",
            stdin="new\n",
        )
        self.assertEqual(status, 0)
        self.successResultOf(self.check("alice", "new"))
        self.failureResultOf(self.check("alice", "old"), UnauthorizedLogin)

    def test_passwd_of_unknown_user(self) -> None:
        self.add("alice", "pw")
        status, _, err = self.run_cli(
            "user", "passwd", "carol", "--passwd", self.passwd, "--password-stdin", stdin="x\n"
        )
        self.assertEqual(status, cli.EX_NOUSER)
        self.assertIn("carol", err)

    def test_del_and_list(self) -> None:
        self.add("alice", "pw")
        self.add("bob", "pw")
        status, out, _ = self.run_cli("user", "list", "--passwd", self.passwd)
        self.assertEqual((status, out), (0, "alice\nbob\n"))
        status, _, _ = self.run_cli("user", "del", "alice", "--passwd", self.passwd)
        self.assertEqual(status, 0)
        self.assertEqual(self.run_cli("user", "list", "--passwd", self.passwd)[1], "bob\n")
        self.failureResultOf(self.check("alice", "pw"), UnauthorizedLogin)
        status, _, _err = self.run_cli("user", "del", "alice", "--passwd", self.passwd)
        self.assertEqual(status, cli.EX_NOUSER)

    def test_parallel_adds_keep_every_user(self) -> None:
        """A provisioning script running ``mailsrv user add`` in parallel:
        every user reported as added is in the file afterwards."""
        # Each child is started and imported first, then all are let go at
        # once, so their read-edit-write steps overlap.
        script = (
            "import io, sys; from mailsrv import cli; "
            "print('ready', flush=True); sys.stdin.readline(); "
            "sys.exit(cli.main(['user', 'add', sys.argv[1], '--passwd', sys.argv[2], "
            "'--password-stdin', '--scheme', 'PLAIN'], stdin=io.StringIO('pw\\n')))"
        )
        names = [f"user{i}" for i in range(8)]
        children = []
        for name in names:
            child = subprocess.Popen(
                [sys.executable, "-c", script, name, self.passwd],
                env=source_env(),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
            assert child.stdout is not None
            self.assertEqual(child.stdout.readline(), b"ready\n")
            children.append(child)
        for child in children:
            assert child.stdin is not None
            child.stdin.write(b"go\n")
            child.stdin.flush()
        outputs = [child.communicate()[0] for child in children]
        self.assertEqual([child.returncode for child in children], [0] * len(names), outputs)
        listed = [record.name for record in PasswdFile(self.passwd).users()]
        self.assertEqual(sorted(listed), sorted(names))

    def test_list_without_file(self) -> None:
        status, _, err = self.run_cli("user", "list", "--passwd", self.passwd)
        self.assertEqual(status, cli.EX_CONFIG)
        self.assertIn("not found", err)

    def test_config_file_names_the_users_file(self) -> None:
        config = os.path.join(self.dir, "c.toml")
        with open(config, "w") as f:
            f.write(f'[users]\npasswd_file = "{self.passwd}"\ndefault_scheme = "BLF-CRYPT"\n')
        status, _, _ = self.run_cli(
            "user", "add", "alice", "--config", config, "--password-stdin", stdin="pw\n"
        )
        self.assertEqual(status, 0)
        with open(self.passwd) as f:
            self.assertTrue(f.read().startswith("alice:{BLF-CRYPT}$2"))
        self.successResultOf(self.check("alice", "pw"))

    def test_broken_config_is_refused(self) -> None:
        config = os.path.join(self.dir, "c.toml")
        with open(config, "w") as f:
            f.write("[users]\npasswd_fil = 'x'\n")
        status, _, err = self.run_cli("user", "list", "--config", config)
        self.assertEqual(status, cli.EX_CONFIG)
        self.assertIn(f"{config}: users.passwd_fil: unknown key", err)

    def test_usage_error(self) -> None:
        status, _, _ = self.run_cli("user", "frobnicate")
        self.assertEqual(status, cli.EX_USAGE)


class CheckConfigTests(CLITestCase):
    def test_valid(self) -> None:
        config = os.path.join(self.dir, "c.toml")
        open(os.path.join(self.dir, "pw"), "w").close()
        with open(config, "w") as f:
            f.write(f'[imap]\nlisten = ["tcp:1143"]\n[users]\npasswd_file = "{self.dir}/pw"\n')
        status, out, _ = self.run_cli("check-config", config)
        self.assertEqual(status, 0)
        self.assertIn("is valid", out)
        self.assertIn("imap plain: tcp:1143", out)

    def test_invalid(self) -> None:
        config = os.path.join(self.dir, "c.toml")
        with open(config, "w") as f:
            f.write('[imap]\nlisten = ["tcp:99999999"]\n')
        status, _, err = self.run_cli("check-config", config)
        self.assertEqual(status, cli.EX_CONFIG)
        self.assertIn("imap.listen[0]", err)

    def check_with_users(self, users: str) -> tuple[int, str, str]:
        """check-config of a minimal file whose users file holds ``users``."""
        config = os.path.join(self.dir, "c.toml")
        with open(self.passwd_path(), "w") as f:
            f.write(users)
        with open(config, "w") as f:
            f.write(
                f'[imap]\nlisten = ["tcp:1143"]\n[users]\npasswd_file = "{self.passwd_path()}"\n'
            )
        return self.run_cli("check-config", config)

    def passwd_path(self) -> str:
        return os.path.join(self.dir, "pw")

    def test_broken_users_file(self) -> None:
        """The daemon would refuse to start; check-config says so first."""
        status, _, err = self.check_with_users("alice:{PLAIN}x\nbad line\n")
        self.assertEqual(status, cli.EX_CONFIG)
        self.assertIn(f"{self.passwd_path()}: line 2:", err)

    def test_counts_users(self) -> None:
        status, out, _ = self.check_with_users("alice:{PLAIN}x\nbob:{PLAIN}y\n")
        self.assertEqual(status, 0)
        self.assertIn("users: 2", out)

    def test_needs_a_file(self) -> None:
        status, _, err = self.run_cli("check-config")
        self.assertEqual(status, cli.EX_USAGE)
        self.assertIn("needs a FILE", err)

    def test_bad_certificate(self) -> None:
        config = os.path.join(self.dir, "c.toml")
        pw = os.path.join(self.dir, "pw")
        cert = os.path.join(self.dir, "cert.pem")
        for path in (pw, cert):
            with open(path, "w") as f:
                f.write("not a certificate\n")
        with open(config, "w") as f:
            f.write(
                f'[imap]\nlisten = ["tcp:1143"]\n[users]\npasswd_file = "{pw}"\n'
                f'[tls]\ncertificate = "{cert}"\nkey = "{cert}"\n'
            )
        status, _, err = self.run_cli("check-config", config)
        self.assertEqual(status, cli.EX_CONFIG)
        self.assertIn("tls.certificate", err)


class CheckConfigCertificateTests(CLITestCase):
    """check-config finds the certificate problems the daemon would meet,
    generate_self_signed or not."""

    def setUp(self) -> None:
        super().setUp()
        from mailsrv.tls import generate_self_signed

        self.tls = os.path.join(self.dir, "tls")
        generate_self_signed(f"{self.tls}/cert.pem", f"{self.tls}/key.pem", "localhost")
        generate_self_signed(f"{self.tls}/c2.pem", f"{self.tls}/k2.pem", "localhost")
        open(self.passwd_file(), "w").close()

    def passwd_file(self) -> str:
        return os.path.join(self.dir, "pw")

    def check_certificate(self, certificate: str, key: str, generate: bool) -> tuple[int, str, str]:
        config = os.path.join(self.dir, "c.toml")
        with open(config, "w") as f:
            f.write(
                f'[imap]\nlisten = ["tcp:1143"]\n[users]\npasswd_file = "{self.passwd_file()}"\n'
                f'[tls]\ncertificate = "{self.tls}/{certificate}"\nkey = "{self.tls}/{key}"\n'
                f"generate_self_signed = {str(generate).lower()}\n"
            )
        self.config = config
        return self.run_cli("check-config", config)

    def test_mismatched_pair(self) -> None:
        for generate in (False, True):
            status, out, err = self.check_certificate("cert.pem", "k2.pem", generate)
            self.assertEqual((status, out), (cli.EX_CONFIG, ""))
            self.assertIn(
                f"{self.config}: tls.key: {self.tls}/k2.pem is not the private key of the "
                f"certificate {self.tls}/cert.pem",
                err,
            )

    def test_certificate_missing_beside_an_existing_key(self) -> None:
        with open(f"{self.tls}/key.pem", "rb") as f:
            key = f.read()
        status, out, err = self.check_certificate("new.pem", "key.pem", True)
        self.assertEqual((status, out), (cli.EX_CONFIG, ""))
        self.assertIn(
            f"{self.config}: tls.certificate: {self.tls}/new.pem does not exist but tls.key "
            f"{self.tls}/key.pem does",
            err,
        )
        self.assertFalse(os.path.exists(f"{self.tls}/new.pem"))
        with open(f"{self.tls}/key.pem", "rb") as f:
            self.assertEqual(f.read(), key)

    def test_pair_to_generate_and_matching_pair_are_valid(self) -> None:
        status, out, _ = self.check_certificate("new.pem", "new-key.pem", True)
        self.assertEqual(status, 0)
        self.assertIn("created at first start", out)
        self.assertFalse(os.path.exists(f"{self.tls}/new.pem"))
        status, out, _ = self.check_certificate("c2.pem", "k2.pem", True)
        self.assertEqual(status, 0)
        self.assertIn("is valid", out)


class GenCertTests(CLITestCase):
    def test_writes_certificate_that_loads(self) -> None:
        from mailsrv.config import load_config
        from mailsrv.tls import server_context

        config = os.path.join(self.dir, "c.toml")
        cert, key = os.path.join(self.dir, "tls", "c.pem"), os.path.join(self.dir, "tls", "k.pem")
        with open(config, "w") as f:
            f.write(f'[tls]\ncertificate = "{cert}"\nkey = "{key}"\n')
        status, _out, _ = self.run_cli("gen-cert", "--config", config)
        self.assertEqual(status, 0)
        self.assertEqual(stat.S_IMODE(os.stat(key).st_mode), 0o600)
        loaded = load_config(config, check_files=False, require_listeners=False)
        self.assertIsNotNone(server_context(loaded.tls))
        status, _, err = self.run_cli("gen-cert", "--config", config)
        self.assertEqual(status, cli.EX_CANTCREAT)
        self.assertIn("--force", err)


class DeliverCommandTests(CLITestCase):
    """``mailsrv deliver`` as an MTA runs it: exit statuses per sysexits."""

    def setUp(self) -> None:
        super().setUp()
        self.add("alice", "pw")
        self.maildir = os.path.join(self.dir, "mail", "{user}", "Maildir")

    def deliver(self, *argv: str, message: bytes) -> tuple[int, str]:
        err = io.StringIO()
        status = cli.main(
            ["deliver", "--passwd", self.passwd, "--maildir", self.maildir, *argv],
            stdin=io.BytesIO(message),
            stdout=io.StringIO(),
            stderr=err,
        )
        return status, err.getvalue()

    def files(self, folder: str = "") -> list[bytes]:
        cur = os.path.join(self.maildir.format(user="alice"), folder, "cur")
        contents = []
        for name in sorted(os.listdir(cur)):
            with open(os.path.join(cur, name), "rb") as f:
                contents.append(f.read())
        return contents

    def test_delivers_to_inbox_with_crlf(self) -> None:
        status, err = self.deliver("alice", message=b"Subject: hi\n\nHello\n")
        self.assertEqual((status, err), (cli.EX_OK, ""))
        self.assertEqual(self.files(), [b"Subject: hi\r\n\r\nHello\r\n"])

    def test_delivers_to_folder(self) -> None:
        status, _ = self.deliver("alice", "--folder", "Sent", message=b"Subject: s\n\nx\n")
        self.assertEqual(status, cli.EX_OK)
        self.assertEqual(len(self.files(".Sent")), 1)
        self.assertEqual(self.files(), [])

    def test_unknown_user(self) -> None:
        status, err = self.deliver("mallory", message=b"Subject: x\n\nx\n")
        self.assertEqual(status, cli.EX_NOUSER)
        self.assertIn("mallory", err)

    def test_unwritable_storage_is_temporary(self) -> None:
        if os.geteuid() == 0:
            # root writes through permissions; a file where the directory
            # must go fails for everyone.
            root = os.path.join(self.dir, "mail")
            os.makedirs(root)
            with open(os.path.join(root, "alice"), "w") as f:
                f.write("not a directory")
        else:
            os.makedirs(os.path.join(self.dir, "mail"), mode=0o500)
        status, err = self.deliver("alice", message=b"Subject: x\n\nx\n")
        self.assertEqual(status, cli.EX_TEMPFAIL)
        self.assertIn("mailsrv: temporary failure", err)

    def test_missing_folder_is_delivered_to_inbox_with_a_warning(self) -> None:
        status, err = self.deliver("alice", "--folder", "No/Such", message=b"Subject: s\n\nx\n")
        self.assertEqual(status, cli.EX_OK)
        self.assertEqual(len(self.files()), 1)
        # The MTA logs what the agent writes on stderr: the fallback is visible there.
        self.assertIn("mailsrv: warn:", err)
        self.assertIn("'No/Such'", err)

    def test_empty_message_is_refused_for_good(self) -> None:
        status, err = self.deliver("alice", message=b"")
        self.assertEqual(status, cli.EX_DATAERR)
        self.assertIn("empty message", err)
        self.assertEqual(self.files(), [])

    def test_configuration_error_is_temporary(self) -> None:
        """Postfix bounces on EX_CONFIG (5.3.5); a typo must not bounce mail."""
        config = os.path.join(self.dir, "c.toml")
        with open(config, "w") as f:
            f.write("[storage]\nmaildirr = 'x'\n")
        status, err = self.deliver("alice", "--config", config, message=b"Subject: x\n\nx\n")
        self.assertEqual(status, cli.EX_TEMPFAIL)
        self.assertIn(f"{config}: storage.maildirr: unknown key", err)
        status, err = self.deliver(
            "alice", "--passwd", os.path.join(self.dir, "nope"), message=b"Subject: x\n\nx\n"
        )
        self.assertEqual(status, cli.EX_TEMPFAIL)
        self.assertIn("--passwd: file not found", err)

    def test_home_template_without_home_is_temporary(self) -> None:
        status, err = self.deliver(
            "alice", "--maildir", "{home}/Maildir", message=b"Subject: x\n\nx\n"
        )
        self.assertEqual(status, cli.EX_TEMPFAIL)
        self.assertIn("home directory", err)

    def test_unexpected_error_is_temporary(self) -> None:
        from mailsrv.storage import maildir

        def broken(*args: object, **kwargs: object) -> None:
            raise RuntimeError("bug")

        self.patch(maildir.MaildirMailbox, "append", broken)
        status, err = self.deliver("alice", message=b"Subject: x\n\nx\n")
        self.assertEqual(status, cli.EX_TEMPFAIL)
        self.assertIn("internal error", err)
        self.assertIn("RuntimeError: bug", err)

    def test_reindex(self) -> None:
        for _ in range(3):
            self.deliver("alice", message=b"Subject: x\n\nx\n")
        out = io.StringIO()
        status = cli.main(
            ["reindex", "alice", "--passwd", self.passwd, "--maildir", self.maildir], stdout=out
        )
        self.assertEqual(status, cli.EX_OK)
        self.assertIn("INBOX: 3 messages", out.getvalue())

    def test_reindex_skips_a_mailbox_deleted_meanwhile(self) -> None:
        """A mailbox a client deletes between reindex's listing and its
        rebuild is reported as skipped, not a traceback and exit 70."""
        from mailsrv.interfaces import MailboxEntry
        from mailsrv.storage.maildir.account import MaildirAccount

        self.deliver("alice", message=b"Subject: x\n\nx\n")
        listed = MaildirAccount.list_mailboxes

        def with_a_deleted_one(account: MaildirAccount) -> list[MailboxEntry]:
            return [*listed(account), MailboxEntry("Gone", frozenset({"\\HasNoChildren"}))]

        self.patch(MaildirAccount, "list_mailboxes", with_a_deleted_one)
        out = io.StringIO()
        status = cli.main(
            ["reindex", "alice", "--passwd", self.passwd, "--maildir", self.maildir], stdout=out
        )
        self.assertEqual(status, cli.EX_OK)
        self.assertIn("INBOX: 1 messages", out.getvalue())
        self.assertIn("Gone: deleted or renamed meanwhile, skipped", out.getvalue())

    def test_reindex_skips_a_mailbox_deleted_during_its_rebuild(self) -> None:
        """A folder removed while its index is rebuilt (SQLite then reports
        an I/O error) is skipped and named; the others are rebuilt."""
        import shutil
        import sqlite3

        from mailsrv.storage.maildir.folder import MaildirMailbox

        self.deliver("alice", message=b"Subject: x\n\nx\n")
        gone = os.path.join(self.maildir.replace("{user}", "alice"), ".Gone")
        for sub in ("cur", "new", "tmp"):
            os.makedirs(os.path.join(gone, sub))
        rebuild = MaildirMailbox.rebuild

        def vanishing(mailbox: MaildirMailbox, *args: object) -> int:
            if mailbox.name == "Gone":
                shutil.rmtree(mailbox.path)
                raise sqlite3.OperationalError("disk I/O error")
            return rebuild(mailbox, *args)

        self.patch(MaildirMailbox, "rebuild", vanishing)
        out = io.StringIO()
        status = cli.main(
            ["reindex", "alice", "--passwd", self.passwd, "--maildir", self.maildir], stdout=out
        )
        self.assertEqual(status, cli.EX_OK)
        self.assertIn("INBOX: 1 messages", out.getvalue())
        self.assertIn("Gone: deleted or renamed meanwhile, skipped", out.getvalue())


class ClosedPipeTests(CLITestCase):
    """``mailsrv user list | head -1``: the reader goes away before the
    command has written everything."""

    def run_into_closed_pipe(self, *argv: str, buffered: bool) -> tuple[int, bytes]:
        """Run the real ``mailsrv`` with standard output a pipe nobody reads
        any more; its exit status and standard error."""
        read_end, write_end = os.pipe()
        os.close(read_end)  # the reader (head) has already exited
        env = source_env()
        env.pop("PYTHONUNBUFFERED", None)
        if not buffered:
            env["PYTHONUNBUFFERED"] = "1"
        try:
            child = subprocess.run(
                [*mailsrv_command(), *argv],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=write_end,
                stderr=subprocess.PIPE,
                timeout=60,
            )
        finally:
            os.close(write_end)
        return child.returncode, child.stderr

    def test_commands_stop_quietly(self) -> None:
        config = os.path.join(self.dir, "c.toml")
        with open(config, "w") as f:
            f.write(f'[imap]\nlisten = ["tcp:1143"]\n[users]\npasswd_file = "{self.passwd}"\n')
        for i in range(4):
            self.add(f"user{i}", "pw", "--scheme", "PLAIN")
        for buffered in (True, False):  # the error comes at exit or at the write
            for argv in [
                ("check-config", config),
                ("user", "list", "--config", config),
                ("user", "del", f"user{int(buffered) + 2}", "--config", config),
            ]:
                status, err = self.run_into_closed_pipe(*argv, buffered=buffered)
                self.assertEqual((status, err), (cli.EX_PIPE, b""), (argv, buffered))
        # The command did its work before it found nobody reading.
        self.assertEqual([r.name for r in PasswdFile(self.passwd).users()], ["user0", "user1"])


class NoTerminalTests(CLITestCase):
    def test_password_prompt_without_input_says_what_to_do(self) -> None:
        """``mailsrv user add`` from a script with nothing to read: a one-line
        error naming --password-stdin, exit 65, no traceback, no user."""
        child = subprocess.run(
            [*mailsrv_command(), "user", "add", "alice", "--passwd", self.passwd],
            env=source_env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            start_new_session=True,  # no controlling terminal: getpass reads stdin
            timeout=60,
        )
        self.assertEqual(child.returncode, 65, child.stderr)
        self.assertIn(b"--password-stdin", child.stderr)
        self.assertNotIn(b"Traceback", child.stderr)
        if os.path.exists(self.passwd):
            with open(self.passwd) as f:
                self.assertNotIn("alice", f.read())
