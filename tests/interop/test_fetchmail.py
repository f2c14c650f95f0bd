"""fetchmail polling one user's mailbox and handing each message to
``mailsrv deliver OTHERUSER`` as its MDA: over POP3 (STLS and POP3S, keep with
UIDL bookkeeping, then delete) and IMAP (IMAPS, keep, then delete).

Every check counts messages in the receiving user's Maildir: each message must
arrive there exactly once, however often fetchmail polls.
"""

from __future__ import annotations

import os
from typing import ClassVar

from tests.interop.support import InteropTestCase, MaildirMessage, make_message, wire

#: fetchmail's exit status when it found no new mail (fetchmail(1), EXIT CODES).
NO_MAIL = 1


class FetchmailTests(InteropTestCase):
    programs: ClassVar = [("fetchmail", "fetchmail")]

    def setUp(self) -> None:
        super().setUp()
        self.source, self.source_password = self.server.add_user("remote")
        self.target, _ = self.server.add_user("local")
        self.sent: dict[str, bytes] = {}

    def deliver(self, *subjects: str) -> None:
        for subject in subjects:
            self.sent[subject] = make_message(subject, f"Fetch me: {subject}.\n.\n")
        self.server.deliver_concurrently(self.source, [self.sent[s] for s in subjects])

    def write_rc(self, protocol: str, port: str, security: str, keep: str) -> str:
        """A fetchmailrc (mode 0600, as fetchmail demands) polling the source user."""
        rc = os.path.join(self.home, "fetchmailrc")
        server_options = "uidl" if protocol == "POP3" else ""
        with open(rc, "w") as f:
            f.write(
                f"poll localhost protocol {protocol} port {self.server.ports[port]} "
                f"{server_options}\n"
                f'  user "{self.source}" there with password "{self.source_password}" '
                f'is "{self.target}" here\n'
                f'  {security} sslcertck sslcertfile "{self.server.cafile}"\n'
                f"  {keep}\n"
                f'  mda "{self.server.deliver_command(self.target)}"\n'
            )
        os.chmod(rc, 0o600)
        return rc

    def fetchmail(self, rc: str, *options: str, expect: int = 0) -> str:
        result = self.run_client(
            [
                self.paths["fetchmail"],
                "--fetchmailrc",
                rc,
                "--nodetach",
                "--nosyslog",
                "--pidfile",
                os.path.join(self.home, "fetchmail.pid"),
                "--verbose",
                *options,
            ],
            env={"FETCHMAILHOME": self.home},
            ok_codes=(expect,),
        )
        return result.stderr.decode(errors="replace") + result.stdout.decode(errors="replace")

    def arrived(self) -> dict[str, MaildirMessage]:
        """The target's messages by subject; fails on a duplicate."""
        return self.server.by_subject(self.target)

    def assertArrivedIntact(self, subjects: list[str]) -> None:
        arrived = self.arrived()
        self.assertEqual(sorted(arrived), sorted(subjects))
        for subject in subjects:
            data = arrived[subject].data
            # fetchmail adds its own Received: line at the top and nothing else.
            self.assertTrue(data.startswith(b"Received: from localhost"), data[:200])
            self.assertTrue(data.endswith(wire(self.sent[subject])), data)

    def test_pop3_stls_keep_with_uidl_then_delete(self) -> None:
        self.deliver("one", "two")
        rc = self.write_rc("POP3", "pop3", "sslproto 'tls1.2+'", "keep")
        log = self.fetchmail(rc)
        self.assertIn("upgrade to TLS succeeded", log)
        self.assertArrivedIntact(["one", "two"])
        # Kept on the server.  fetchmail reads with "TOP n 99999999", which covers the
        # whole message, so the server counts it as read when the session QUITs.
        self.assertEqual([m.flags for m in self.server.messages(self.source)], ["S", "S"])

        # A second poll finds nothing new by UIDL and delivers nothing again.
        self.fetchmail(rc, expect=NO_MAIL)
        self.assertArrivedIntact(["one", "two"])

        # New mail: only it is fetched.
        self.deliver("three")
        self.fetchmail(rc)
        self.assertArrivedIntact(["one", "two", "three"])
        self.assertEqual(len(self.server.messages(self.source)), 3)

        # --nokeep --flush: fetchmail deletes what it has seen; nothing arrives twice.
        self.deliver("four")
        self.fetchmail(rc, "--nokeep", "--flush")
        self.assertArrivedIntact(["one", "two", "three", "four"])
        self.assertEqual(self.server.messages(self.source), [])

    def test_pop3s_delete_after_download(self) -> None:
        self.deliver("five", "six")
        rc = self.write_rc("POP3", "pop3s", "ssl", "nokeep")
        self.fetchmail(rc)
        self.assertArrivedIntact(["five", "six"])
        self.assertEqual(self.server.messages(self.source), [])
        self.fetchmail(rc, expect=NO_MAIL)
        self.assertArrivedIntact(["five", "six"])

    def test_imaps_keep_then_delete(self) -> None:
        self.deliver("seven", "eight")
        rc = self.write_rc("IMAP", "imaps", "ssl", "keep")
        self.fetchmail(rc)
        self.assertArrivedIntact(["seven", "eight"])
        # Kept, and marked \Seen: that is how fetchmail remembers them over IMAP.
        self.assertEqual([m.flags for m in self.server.messages(self.source)], ["S", "S"])
        self.fetchmail(rc, expect=NO_MAIL)
        self.assertArrivedIntact(["seven", "eight"])

        self.deliver("nine")
        self.fetchmail(rc, "--nokeep")
        self.assertArrivedIntact(["seven", "eight", "nine"])
        # Only the message fetched in this poll was deleted (and expunged).
        self.assertEqual(sorted(self.server.by_subject(self.source)), ["eight", "seven"])

    def test_imap_starttls(self) -> None:
        self.deliver("ten")
        rc = self.write_rc("IMAP", "imap", "sslproto 'tls1.2+'", "nokeep")
        log = self.fetchmail(rc)
        self.assertIn("upgrade to TLS succeeded", log)
        self.assertArrivedIntact(["ten"])
        self.assertEqual(self.server.messages(self.source), [])
