"""mutt and neomutt against the server: batch mode (no terminal) sending a message and
saving the copy in the IMAP Sent folder over STARTTLS, and the full-screen index
in a pseudo-terminal over IMAPS, driven by ``push`` (the keys mutt would read from
a user): read a message, flag one, delete some, save one to another folder, sync.

mutt's index needs a terminal, so the second test gives it one with
``os.openpty()``; the keys come from ``-e 'push ...'``, so the test never has to
read the screen to know when to type.  The screen is kept for failure messages.
"""

from __future__ import annotations

import fcntl
import os
import re
import select
import struct
import subprocess
import termios
import time
from typing import Any, ClassVar

from tests.interop.support import CLIENT_DEADLINE, InteropTestCase, make_message, wire


class _MuttClient:
    """What mutt and neomutt share: the settings, the terminal, the index test."""

    program: ClassVar[str]
    server: Any
    home: str
    paths: dict[str, str]
    assertEqual: Any
    assertIn: Any
    addCleanup: Any

    def write_muttrc(self, user: str, password: str, tls: str) -> str:
        if tls == "imaps":
            folder = f"imaps://localhost:{self.server.ports['imaps']}/"
        else:
            folder = f"imap://localhost:{self.server.ports['imap']}/"
        rc = os.path.join(self.home, "muttrc")
        with open(rc, "w") as f:
            f.write(
                f"""\
set imap_user="{user}"
set imap_pass="{password}"
set folder="{folder}"
set spoolfile="+INBOX"
set record="+Sent"
set copy=yes
set ssl_starttls=yes
set ssl_force_tls=yes
# GnuTLS builds trust the CA file; every build trusts certificates in certificate_file.
set ssl_ca_certificates_file="{self.server.cafile}"
set certificate_file="{self.server.cafile}"
set sendmail="{os.path.join(self.home, "sendmail")}"
set from="{user}@example.org"
set use_from=yes
set header_cache=""
set message_cachedir=""
set delete=yes
set quit=yes
set move=no
set confirmappend=no
set mark_old=no
set wait_key=no
"""
            )
        return rc

    def run_in_pty(self, args: list[str]) -> str:
        """Run ``args`` on a fresh 80x24 pseudo-terminal until it exits; the screen output."""
        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
        env = {
            "HOME": self.home,
            "TERM": "vt100",
            "PATH": os.environ.get("PATH", "/usr/bin"),
            "LANG": "C.UTF-8",
        }
        process = subprocess.Popen(
            args,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=env,
            cwd=self.home,
            start_new_session=True,
        )
        os.close(slave)
        screen = b""
        deadline = time.monotonic() + CLIENT_DEADLINE
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    process.kill()
                    raise AssertionError(
                        f"{args[0]} did not finish within {CLIENT_DEADLINE}s; screen:\n"
                        f"{_plain(screen)}\n--- daemon log:\n{self.server.log[-4000:]}"
                    )
                ready, _, _ = select.select([master], [], [], remaining)
                if not ready:
                    continue
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: every process holding the terminal has gone
                    break
                if not chunk:
                    break
                screen += chunk
        finally:
            os.close(master)
            status = process.wait(timeout=CLIENT_DEADLINE)
        self.assertEqual(status, 0, _plain(screen))
        return _plain(screen)

    def test_index_in_a_terminal_over_imaps(self) -> None:
        user, password = self.server.add_user("mutt")
        subjects = ["read me", "important", "junk one", "junk two", "archive me"]
        self.server.deliver_concurrently(
            user, [make_message(subject, f"Body of {subject}.\n") for subject in subjects]
        )
        rc = self.write_muttrc(user, password, "imaps")
        keys = (
            "<search>read me<enter><display-message><exit>"
            "<tag-pattern>~s important<enter><tag-prefix><flag-message><untag-pattern>.<enter>"
            "<delete-pattern>~s junk<enter>"
            "<tag-pattern>~s archive<enter><tag-prefix><save-message>=Archive<enter>"
            "<sync-mailbox><quit>"
        )
        screen = self.run_in_pty(
            [self.paths[self.program], "-n", "-F", rc, "-f", "=INBOX", "-e", f'push "{keys}"']
        )

        inbox = {m.subject: m.flags for m in self.server.messages(user)}
        self.assertEqual(inbox, {"read me": "S", "important": "F"}, screen)
        archived = self.server.messages(user, "Archive")
        self.assertEqual([(m.subject, m.flags) for m in archived], [("archive me", "")], screen)
        observer = self.server.imap(user, password)
        self.addCleanup(observer.logout)
        typ, data = observer.status("Archive", "(MESSAGES UNSEEN)")
        self.assertEqual(typ, "OK")
        self.assertIn(b"MESSAGES 1", data[0])


class MuttTests(_MuttClient, InteropTestCase):
    program: ClassVar[str] = "mutt"
    programs: ClassVar = [("mutt", "mutt")]

    def test_batch_send_records_to_sent_over_starttls(self) -> None:
        user, password = self.server.add_user("mutt")
        rc = self.write_muttrc(user, password, "starttls")
        # The "MTA": keeps what mutt hands it.
        outbox = os.path.join(self.home, "outbox.eml")
        sendmail = os.path.join(self.home, "sendmail")
        with open(sendmail, "w") as f:
            f.write(f"#!/bin/sh\ncat > '{outbox}'\n")
        os.chmod(sendmail, 0o755)

        self.run_client(
            [
                self.paths[self.program],
                "-n",
                "-F",
                rc,
                "-s",
                "sent in batch mode",
                "--",
                "someone@example.org",
            ],
            stdin=b"Hello from mutt in batch mode.\n",
        )
        with open(outbox, "rb") as f:
            handed_to_mta = f.read()
        self.assertIn(b"Subject: sent in batch mode\n", handed_to_mta)
        (stored,) = self.server.messages(user, "Sent")
        # The copy in Sent is the message the MTA got, stored with \Seen.  mutt writes the
        # copy's Date: header anew, so it may be a second later than the sent one's.
        self.assertEqual((stored.subdir, stored.flags), ("cur", "S"))
        self.assertEqual(_without_date(stored.data), _without_date(wire(handed_to_mta)))
        self.assertRegex(stored.data, rb"^Date: ")


class NeomuttTests(_MuttClient, InteropTestCase):
    """The same index session with neomutt, which reads the same settings and keys but
    sends other commands (``ENABLE UTF8=ACCEPT``, ``BODY.PEEK[]`` then ``STORE +FLAGS
    (\\Seen)``).  Its batch mode refuses to save a copy to an IMAP folder ("Fcc to an
    IMAP mailbox is not supported in batch mode"), so only mutt runs the batch test."""

    program: ClassVar[str] = "neomutt"
    programs: ClassVar = [("neomutt", "neomutt")]


def _without_date(message: bytes) -> bytes:
    return re.sub(rb"(?m)^Date: [^\r\n]*\r\n", b"", message, count=1)


def _plain(screen: bytes) -> str:
    """Terminal output with the escape sequences taken out, for reading in a failure."""
    text = re.sub(rb"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][0-9A-Za-z]|\x1b[=>]", b" ", screen)
    return text.decode(errors="replace")
