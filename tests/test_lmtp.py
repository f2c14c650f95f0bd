"""LMTP against a real ``twistd -n mailsrv`` daemon: Python's smtplib.LMTP
over a Unix socket and TCP, and Postfix delivering through it."""

from __future__ import annotations

import grp
import io
import os
import shutil
import smtplib
import socket
import stat
import subprocess
import tempfile

from twisted.trial import unittest

from mailsrv import cli
from tests.helpers import Daemon, free_port, read_line, wait_for_file_text

MESSAGE = b"From: sender@example.net\r\nSubject: hello\r\n\r\nline one\r\n"


def add_user(config: str, name: str) -> None:
    status = cli.main(
        ["user", "add", name, "--config", config, "--password-stdin", "--scheme", "PLAIN"],
        stdin=io.StringIO("pw\n"),
        stdout=io.StringIO(),
    )
    assert status == 0, status


class LMTPDaemonCase(unittest.TestCase):
    """A daemon with LMTP on a Unix socket and on TCP; users alice and bob."""

    extra_config = ""

    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        # Unix socket paths are short (108 bytes): keep the socket in /tmp.
        self.sockets = tempfile.mkdtemp(prefix="mailsrv-lmtp-")
        os.chmod(self.sockets, 0o755)
        self.addCleanup(shutil.rmtree, self.sockets, True)
        self.socket_path = os.path.join(self.sockets, "lmtp")
        self.port = free_port()
        self.config = os.path.join(self.dir, "mailsrv.toml")
        with open(self.config, "w") as f:
            f.write(
                f"""
[server]
hostname = "mx.test"
[lmtp]
listen = ["unix:{self.socket_path}", "tcp:{self.port}:interface=127.0.0.1"]
{self.extra_config}
[users]
passwd_file = "{self.dir}/passwd"
create_if_missing = true
[storage]
maildir = "{self.dir}/mail/{{user}}/Maildir"
[limits]
max_message_size = 4096
"""
            )
        for name in ("alice", "bob", "carol"):
            add_user(self.config, name)
        self.daemon = Daemon.start(["--config", self.config], cwd=self.dir)
        self.addCleanup(self.daemon.stop)
        self.daemon.wait_for("LMTP listening on tcp:")

    def maildir(self, user: str, folder: str = "") -> str:
        return os.path.join(self.dir, "mail", user, "Maildir", f".{folder}" if folder else "")

    def stored(self, user: str, folder: str = "") -> list[bytes]:
        """The messages in the folder's cur/ and new/, oldest name first."""
        found = []
        for sub in ("cur", "new"):
            path = os.path.join(self.maildir(user, folder), sub)
            if not os.path.isdir(path):
                continue
            for name in sorted(os.listdir(path)):
                with open(os.path.join(path, name), "rb") as f:
                    found.append(f.read())
        return found

    def tmp_files(self, user: str) -> list[str]:
        path = os.path.join(self.maildir(user), "tmp")
        return os.listdir(path) if os.path.isdir(path) else []

    def clients(self) -> list[tuple[str, smtplib.LMTP]]:
        unix = smtplib.LMTP(self.socket_path, timeout=30)
        tcp = smtplib.LMTP("127.0.0.1", self.port, timeout=30)
        for client in (unix, tcp):
            self.addCleanup(client.close)
        return [("unix", unix), ("tcp", tcp)]


class LMTPTests(LMTPDaemonCase):
    def test_multi_recipient_over_unix_socket_and_tcp(self) -> None:
        for kind, lmtp in self.clients():
            code, capabilities = lmtp.ehlo("client.test")  # smtplib's LMTP sends LHLO
            self.assertEqual(code, 250)
            for capability in (b"PIPELINING", b"8BITMIME", b"ENHANCEDSTATUSCODES", b"SIZE 4096"):
                self.assertIn(capability, capabilities.split(b"\n"))
            self.assertEqual(lmtp.mail("sender@example.net")[0], 250)
            for rcpt in ("alice@example.org", "bob@example.org", "alice+Sent@example.org"):
                self.assertEqual(lmtp.rcpt(rcpt), (250, f"2.1.5 <{rcpt}> Recipient OK".encode()))
            body = MESSAGE + f"via {kind}\r\n".encode()
            # One reply per recipient after the data (RFC 2033 4.2).
            replies = [lmtp.data(body), lmtp.getreply(), lmtp.getreply()]
            self.assertEqual([code for code, _ in replies], [250, 250, 250], replies)
            self.assertTrue(replies[0][1].startswith(b"2.0.0 <alice@example.org>"))
            self.assertTrue(replies[2][1].startswith(b"2.0.0 <alice+Sent@example.org>"))
            lmtp.quit()
        for user, folder in (("alice", ""), ("bob", ""), ("alice", "Sent")):
            # Both deliveries may share a second: file names do not order them.
            self.assertEqual(
                sorted(self.stored(user, folder)),
                sorted([MESSAGE + b"via unix\r\n", MESSAGE + b"via tcp\r\n"]),
                (user, folder),
            )

    def test_detail_for_a_missing_folder_goes_to_inbox(self) -> None:
        _, lmtp = self.clients()[0]
        lmtp.ehlo("c")
        lmtp.mail("")
        lmtp.rcpt("alice+nosuchfolder@example.org")
        self.assertEqual(lmtp.data(MESSAGE)[0], 250)
        self.assertEqual(self.stored("alice"), [MESSAGE])

    def test_one_unknown_recipient_among_good_ones(self) -> None:
        _, lmtp = self.clients()[1]
        lmtp.ehlo("c")
        lmtp.mail("sender@example.net")
        self.assertEqual(lmtp.rcpt("alice@example.org")[0], 250)
        self.assertEqual(
            lmtp.rcpt("mallory@example.org"),
            (550, b"5.1.1 <mallory@example.org> No such user here"),
        )
        self.assertEqual(lmtp.rcpt("bob@example.org")[0], 250)
        first, second = lmtp.data(MESSAGE), lmtp.getreply()
        self.assertEqual((first[0], second[0]), (250, 250))
        self.assertIn(b"<bob@example.org>", second[1])
        self.assertEqual(lmtp.noop(), (250, b"2.0.0 OK"))  # nothing else was queued
        self.assertEqual(self.stored("alice"), [MESSAGE])
        self.assertEqual(self.stored("bob"), [MESSAGE])
        self.assertFalse(os.path.exists(self.maildir("mallory")))

    def test_message_larger_than_size(self) -> None:
        _, lmtp = self.clients()[0]
        lmtp.ehlo("c")
        # Announced too big: refused at MAIL (RFC 1870).
        self.assertEqual(lmtp.mail("s@example.net", ["SIZE=5000"])[0], 552)
        # Not announced: read to the end, then refused for each recipient.
        lmtp.mail("s@example.net")
        lmtp.rcpt("alice@example.org")
        lmtp.rcpt("bob@example.org")
        big = MESSAGE + b"x" * 76 + b"\r\n"
        big *= 60
        first, second = lmtp.data(big), lmtp.getreply()
        self.assertEqual(first[0], 552)
        self.assertTrue(first[1].startswith(b"5.3.4 <alice@example.org> Message too big"))
        self.assertEqual(second[0], 552)
        self.assertEqual(lmtp.noop()[0], 250)
        self.assertEqual(self.stored("alice"), [])
        self.assertEqual(self.tmp_files("alice"), [])

    def test_dot_stuffing_and_8bit(self) -> None:
        _, lmtp = self.clients()[1]
        body = (
            b"Subject: =?utf-8?q?caf=C3=A9?=\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
            b".leading dot\r\n..two dots\r\n.\r\n"  # no, not the end: smtplib stuffs it
            b"caf\xc3\xa9 \xe9t\xe9 \xff\x80\r\n"
        )
        lmtp.ehlo("c")
        self.assertEqual(lmtp.mail("s@example.net", ["BODY=8BITMIME"])[0], 250)
        lmtp.rcpt("bob@example.org")
        self.assertEqual(lmtp.data(body)[0], 250)
        self.assertEqual(self.stored("bob"), [body])

    def test_dropped_connection_mid_data_stores_nothing(self) -> None:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(30)
            s.connect(self.socket_path)
            self.assertTrue(read_line(s).startswith(b"220 "))
            s.sendall(b"LHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<alice@example.org>\r\nDATA\r\n")
            while not read_line(s).startswith(b"354 "):
                pass
            s.sendall(MESSAGE + b"the rest never comes\r\n")
        self.daemon.wait_for("lost in the middle of a message; nothing stored")
        self.assertEqual(self.stored("alice"), [])
        self.assertEqual(self.tmp_files("alice"), [])
        # The daemon goes on serving.
        _, lmtp = self.clients()[0]
        lmtp.ehlo("c")
        lmtp.mail("")
        lmtp.rcpt("alice@example.org")
        self.assertEqual(lmtp.data(MESSAGE)[0], 250)
        self.assertEqual(self.stored("alice"), [MESSAGE])

    def test_temporary_storage_failure_is_451_and_a_retry_delivers(self) -> None:
        # A file where carol's mail directory must go: even root cannot write there.
        os.makedirs(os.path.join(self.dir, "mail"), exist_ok=True)
        blocker = os.path.join(self.dir, "mail", "carol")
        with open(blocker, "w") as f:
            f.write("in the way")
        _, lmtp = self.clients()[0]
        lmtp.ehlo("c")
        lmtp.mail("s@example.net")
        lmtp.rcpt("carol@example.org")
        lmtp.rcpt("alice@example.org")
        first, second = lmtp.data(MESSAGE), lmtp.getreply()
        self.assertEqual(first[0], 451, first)
        self.assertTrue(first[1].startswith(b"4.3.0 <carol@example.org> Temporary failure"))
        self.assertEqual(second[0], 250)
        self.assertEqual(self.stored("alice"), [MESSAGE])
        # What the MTA does next: try again later, once the problem is fixed.
        os.unlink(blocker)
        lmtp.mail("s@example.net")
        lmtp.rcpt("carol@example.org")
        self.assertEqual(lmtp.data(MESSAGE)[0], 250)
        self.assertEqual(self.stored("carol"), [MESSAGE])

    def test_unix_socket_mode(self) -> None:
        mode = stat.S_IMODE(os.stat(self.socket_path).st_mode)
        self.assertEqual(mode, 0o660)


class SocketOwnerTests(LMTPDaemonCase):
    extra_config = 'socket_mode = 0o600\nsocket_group = "nogroup"\n'

    def setUp(self) -> None:
        if os.geteuid() != 0:
            raise unittest.SkipTest("giving the socket to another group needs root")
        super().setUp()

    def test_socket_given_to_the_configured_group_and_mode(self) -> None:
        info = os.stat(self.socket_path)
        self.assertEqual(stat.S_IMODE(info.st_mode), 0o600)
        self.assertEqual(info.st_gid, grp.getgrnam("nogroup").gr_gid)


POSTFIX_MASTER_CF = """\
{listen} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
showq     unix  n       -       n       -       -       showq
postlog   unix-dgram n  -       n       -       1       postlogd
"""

POSTFIX_MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {dir}/queue
data_directory = {dir}/data
mail_owner = postfix
setgid_group = postdrop
myhostname = mx.test
mydomain = test
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
smtpd_peername_lookup = no
alias_maps =
alias_database =
local_recipient_maps =
virtual_mailbox_domains = example.org
virtual_transport = lmtp:unix:{socket}
# Postfix does not know the users: mailsrv answers 550 5.1.1 at RCPT.
smtpd_reject_unlisted_recipient = no
# Nothing ever leaves this machine.
default_transport = error:no outside delivery in this test
relay_transport = error:no outside delivery in this test
maillog_file = {dir}/maillog
maillog_file_prefixes = {dir}
smtputf8_enable = no
biff = no
"""


class PostfixTests(LMTPDaemonCase):
    """A private Postfix instance (its own configuration, queue and log in a
    temporary directory, ``postfix -c DIR start``) delivering through the
    daemon's LMTP socket, as ``virtual_transport = lmtp:unix:...`` does."""

    extra_config = 'socket_group = "postfix"\n'

    def setUp(self) -> None:
        search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin"])
        self.commands = {name: shutil.which(name, path=search) for name in ("postfix", "postqueue")}
        if None in self.commands.values():
            raise unittest.SkipTest("Postfix is not installed (.ci/run installs it)")
        if os.geteuid() != 0:
            raise unittest.SkipTest("a Postfix instance starts as root")
        super().setUp()
        self.postfix = tempfile.mkdtemp(prefix="mailsrv-postfix-")
        os.chmod(self.postfix, 0o755)
        self.addCleanup(shutil.rmtree, self.postfix, True)
        for sub in ("etc", "queue", "data"):
            os.mkdir(os.path.join(self.postfix, sub))
        shutil.chown(os.path.join(self.postfix, "data"), "postfix")
        self.smtp_port = free_port()
        with open(os.path.join(self.postfix, "etc", "main.cf"), "w") as f:
            f.write(POSTFIX_MAIN_CF.format(dir=self.postfix, socket=self.socket_path))
        with open(os.path.join(self.postfix, "etc", "master.cf"), "w") as f:
            f.write(POSTFIX_MASTER_CF.format(listen=f"127.0.0.1:{self.smtp_port}"))
        self.maillog = os.path.join(self.postfix, "maillog")
        self.postfix_command("start")
        self.addCleanup(self.postfix_command, "stop")
        wait_for_file_text(self.maillog, "daemon started")

    def postfix_command(self, *args: str, program: str = "postfix") -> None:
        subprocess.run(
            [self.commands[program] or program, "-c", os.path.join(self.postfix, "etc"), *args],
            check=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
            capture_output=True,
        )

    def test_postfix_delivers_through_lmtp(self) -> None:
        blocker = os.path.join(self.dir, "mail", "carol")
        os.makedirs(os.path.dirname(blocker), exist_ok=True)
        with open(blocker, "w") as f:
            f.write("in the way")
        with smtplib.SMTP("127.0.0.1", self.smtp_port, timeout=30) as smtp:
            # The null sender: a bounce would have nowhere to go.
            refused = smtp.sendmail(
                "",
                [
                    "alice@example.org",
                    "bob+Sent@example.org",
                    "mallory@example.org",
                    "carol@example.org",
                ],
                b"Subject: through Postfix\r\n\r\nhello\r\n.dotted line\r\n",
            )
        self.assertEqual(refused, {})
        log = wait_for_file_text(self.maillog, "to=<alice@example.org>")
        log = wait_for_file_text(self.maillog, "to=<carol@example.org>")
        log = wait_for_file_text(self.maillog, "to=<mallory@example.org>")
        log = wait_for_file_text(self.maillog, "to=<bob+Sent@example.org>")
        lines = {
            rcpt: next(line for line in log.splitlines() if f"to=<{rcpt}>" in line)
            for rcpt in (
                "alice@example.org",
                "bob+Sent@example.org",
                "mallory@example.org",
                "carol@example.org",
            )
        }
        self.assertIn("status=sent (250 2.0.0 <alice@example.org>", lines["alice@example.org"])
        self.assertIn("status=sent (250 2.0.0", lines["bob+Sent@example.org"])
        self.assertIn("status=bounced", lines["mallory@example.org"])
        self.assertIn(
            "550 5.1.1 <mallory@example.org> No such user here", lines["mallory@example.org"]
        )
        # 451: Postfix keeps the message for carol and tries again later.
        self.assertIn("status=deferred", lines["carol@example.org"])
        self.assertIn("451 4.3.0 <carol@example.org>", lines["carol@example.org"])
        self.assertEqual(len(self.stored("alice")), 1)
        self.assertEqual(len(self.stored("bob", "Sent")), 1)
        self.assertIn(b"\r\n.dotted line\r\n", self.stored("alice")[0])
        self.assertIn(b"Subject: through Postfix\r\n", self.stored("alice")[0])
        # Fixed: flushing the queue delivers the deferred message.
        os.unlink(blocker)
        self.postfix_command("-f", program="postqueue")
        wait_for_file_text(self.maillog, "to=<carol@example.org>", count=2)
        log = wait_for_file_text(self.maillog, "status=sent (250 2.0.0 <carol@example.org>")
        self.assertEqual(len(self.stored("carol")), 1)
        self.assertNotIn("Traceback", self.daemon.log)
