"""The quota at delivery: ``mailsrv deliver`` (exit 75, or 73 with
``[quota] delivery = "bounce"``) and LMTP against a real daemon (452 4.2.2,
or 552 5.2.2), each refusing the whole message before anything is written,
with limits from the users file's quota rules and the ``[quota]`` default."""

from __future__ import annotations

import io
import os
import smtplib

from mailsrv import cli
from tests.test_cli import CLITestCase
from tests.test_lmtp import MESSAGE, LMTPDaemonCase


def add_fields(passwd: str, user: str, *fields: str) -> None:
    """Give ``user`` extra fields in the users file
    (``name:password:uid:gid:gecos:home:shell:extra``)."""
    with open(passwd) as f:
        lines = f.read().splitlines()
    for i, line in enumerate(lines):
        if line.startswith(user + ":"):
            parts = (line.split(":") + [""] * 8)[:7]
            lines[i] = ":".join([*parts, " ".join(fields)])
    with open(passwd, "w") as f:
        f.write("\n".join(lines) + "\n")


class DeliverQuotaTests(CLITestCase):
    def setUp(self) -> None:
        super().setUp()
        self.add("alice", "pw")
        add_fields(self.passwd, "alice", "userdb_quota_rule=*:messages=2")
        self.maildir = os.path.join(self.dir, "mail", "{user}", "Maildir")
        self.config = os.path.join(self.dir, "mailsrv.toml")

    def write_config(self, quota: str) -> None:
        with open(self.config, "w") as f:
            f.write(f"[quota]\n{quota}\n")

    def deliver(self, message: bytes = b"Subject: x\n\nx\n") -> tuple[int, str]:
        err = io.StringIO()
        status = cli.main(
            [
                "deliver",
                "alice",
                "--config",
                self.config,
                "--passwd",
                self.passwd,
                "--maildir",
                self.maildir,
            ],
            stdin=io.BytesIO(message),
            stdout=io.StringIO(),
            stderr=err,
        )
        return status, err.getvalue()

    def count(self) -> int:
        root = self.maildir.format(user="alice")
        return sum(len(os.listdir(os.path.join(root, sub))) for sub in ("cur", "new", "tmp"))

    def test_over_quota_is_a_temporary_failure_by_default(self) -> None:
        self.write_config("storage = '1M'")
        self.assertEqual(self.deliver(), (cli.EX_OK, ""))
        self.assertEqual(self.deliver(), (cli.EX_OK, ""))
        status, err = self.deliver()
        self.assertEqual(status, cli.EX_TEMPFAIL)
        self.assertIn("mailbox full, try again later: Quota exceeded (messages: 2 of 2", err)
        self.assertEqual(self.count(), 2)  # nothing written, not even in tmp/

    def test_bounce_when_configured(self) -> None:
        # The default (1k) is exceeded by a 2 KiB message; the users file
        # sets only a MESSAGE limit, so STORAGE comes from [quota].
        self.write_config("storage = '1k'\ndelivery = 'bounce'")
        status, err = self.deliver(b"Subject: big\n\n" + b"y" * 2000 + b"\n")
        self.assertEqual(status, cli.EX_CANTCREAT)
        self.assertIn("mailbox full: Quota exceeded (storage: ", err)
        self.assertEqual(self.count(), 0)

    def test_bare_line_feeds_count_as_stored(self) -> None:
        """The message is measured as it will be stored: 612 octets with
        602 bare LFs are 1,214 stored octets, over a 1k limit."""
        self.write_config("storage = '1k'")
        status, err = self.deliver(b"Subject: x\n\n" + b"\n" * 600)
        self.assertEqual(status, cli.EX_TEMPFAIL, err)
        self.assertIn("1214 octets more would not fit", err)
        self.assertEqual(self.count(), 0)

    def test_bad_config_value_names_file_key_and_reason(self) -> None:
        self.write_config("storage = 'plenty'")
        status, err = self.deliver()
        self.assertEqual(status, cli.EX_TEMPFAIL)
        self.assertIn(
            f"{self.config}: quota.storage: 'plenty' is not a size such as 2048, 100k, 500M or 1G",
            err,
        )


class CheckConfigTests(CLITestCase):
    def test_check_config_shows_the_default_and_unreadable_rules(self) -> None:
        self.add("alice", "pw")
        self.add("bob", "pw")
        add_fields(self.passwd, "bob", "userdb_quota_rule=Trash:storage=+10%")
        config = os.path.join(self.dir, "mailsrv.toml")
        with open(config, "w") as f:
            f.write(
                f'[imap]\nlisten = ["tcp:1143"]\n[users]\npasswd_file = "{self.passwd}"\n'
                '[quota]\nstorage = "1G"\nmessages = 5000\ndelivery = "bounce"\n'
            )
        status, out, err = self.run_cli("check-config", config)
        self.assertEqual(status, cli.EX_OK, err)
        self.assertIn(
            "  default quota: storage 1G, 5000 messages; a delivery over quota is bounced\n", out
        )
        self.assertIn(
            f"  warning: {self.passwd}: quota rule of bob ignored: "
            "userdb_quota_rule=Trash:storage=+10%: only rules for '*' (the whole account) "
            "are supported, not 'Trash:storage=+10%'\n",
            out,
        )
        self.assertNotIn("alice", out)


class LMTPQuotaTests(LMTPDaemonCase):
    extra_config = "[quota]\nmessages = 2"

    def setUp(self) -> None:
        super().setUp()
        add_fields(os.path.join(self.dir, "passwd"), "bob", "userdb_quota_rule=*:messages=1")

    def send(self, *recipients: str) -> list[tuple[int, bytes]]:
        lmtp = smtplib.LMTP(self.socket_path, timeout=30)
        self.addCleanup(lmtp.close)
        lmtp.ehlo("c")
        lmtp.mail("sender@example.net")
        for rcpt in recipients:
            self.assertEqual(lmtp.rcpt(rcpt)[0], 250)
        replies = [lmtp.data(MESSAGE)]
        replies += [lmtp.getreply() for _ in recipients[1:]]
        lmtp.quit()
        return replies

    def test_over_quota_is_452_per_recipient(self) -> None:
        self.assertEqual([c for c, _ in self.send("alice@x", "bob@x")], [250, 250])
        replies = self.send("alice@x", "bob@x")
        self.assertEqual(replies[0][0], 250)
        self.assertEqual(replies[1][0], 452)
        self.assertTrue(
            replies[1][1].startswith(
                b"4.2.2 <bob@x> Mailbox full, try again later: Quota exceeded (messages: 1 of 1"
            ),
            replies[1],
        )
        self.assertEqual(len(self.stored("alice")), 2)
        self.assertEqual(len(self.stored("bob")), 1)
        self.assertEqual(self.tmp_files("bob"), [])
        # alice is now at the [quota] default of 2.
        self.assertEqual(self.send("alice@x")[0][0], 452)


class LMTPBounceTests(LMTPDaemonCase):
    extra_config = "[quota]\nmessages = 1\ndelivery = 'bounce'"

    def test_over_quota_is_552_when_configured(self) -> None:
        lmtp = smtplib.LMTP(self.socket_path, timeout=30)
        self.addCleanup(lmtp.close)
        for expected in (250, 552):
            lmtp.ehlo("c")
            lmtp.mail("sender@example.net")
            lmtp.rcpt("carol@x")
            code, text = lmtp.data(MESSAGE)
            self.assertEqual(code, expected, text)
        self.assertTrue(text.startswith(b"5.2.2 <carol@x> Mailbox full: Quota exceeded"), text)
        self.assertEqual(len(self.stored("carol")), 1)
