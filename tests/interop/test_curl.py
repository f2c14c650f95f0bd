"""curl's IMAP and POP3 support, driven through URLs as its documentation shows:
folder lists, EXAMINE, fetching by ``;UID=`` and ``;SECTION=``, SEARCH, APPEND with
``-T``; POP3 LIST, RETR, UIDL and DELE.  Over STARTTLS/STLS (``--ssl-reqd``) and
implicit TLS (``imaps://``, ``pop3s://``), trusting the generated certificate with
``--cacert`` or ignoring it with ``-k``."""

from __future__ import annotations

import re
from typing import ClassVar

from tests.interop.support import InteropTestCase, imap_flags, make_message, wire

MULTIPART = (
    b"From: Sender <sender@example.org>\n"
    b"To: user@example.org\n"
    b"Subject: with attachment\n"
    b"MIME-Version: 1.0\n"
    b'Content-Type: multipart/mixed; boundary="b1"\n'
    b"\n"
    b"preamble\n"
    b"--b1\n"
    b"Content-Type: text/plain; charset=us-ascii\n"
    b"\n"
    b"The text part.\n"
    b"--b1\n"
    b"Content-Type: application/octet-stream\n"
    b"Content-Transfer-Encoding: base64\n"
    b'Content-Disposition: attachment; filename="a.bin"\n'
    b"\n"
    b"AAECAwQFBgc=\n"
    b"--b1--\n"
)


class CurlTests(InteropTestCase):
    programs: ClassVar = [("curl", "curl")]

    def curl(self, *args: str, user: tuple[str, str]) -> bytes:
        """Run curl as a user would (``--user NAME:PASSWORD``); what it printed."""
        result = self.run_client(
            [
                self.paths["curl"],
                "--silent",
                "--show-error",
                "--max-time",
                "50",
                "--user",
                f"{user[0]}:{user[1]}",
                *args,
            ]
        )
        return result.stdout

    def imaps(self, path: str = "") -> list[str]:
        return [
            "--cacert",
            self.server.cafile,
            f"imaps://localhost:{self.server.ports['imaps']}/{path}",
        ]

    def imap_starttls(self, path: str = "") -> list[str]:
        return ["--ssl-reqd", "-k", f"imap://localhost:{self.server.ports['imap']}/{path}"]

    def test_imap_list_examine_fetch_and_search(self) -> None:
        account = self.server.add_user("curl")
        user, password = account
        plain = make_message("plain one", "Just text.\n.dot line\n")
        self.server.deliver(user, plain)
        self.server.deliver(user, MULTIPART)

        listing = self.curl(*self.imaps(), user=account)
        self.assertIn(b'* LIST (\\HasNoChildren) "/" INBOX\r\n', listing)
        self.assertIn(b'* LIST (\\HasNoChildren \\Sent) "/" Sent\r\n', listing)

        examined = self.curl("-X", "EXAMINE INBOX", *self.imaps(), user=account)
        self.assertIn(b"* 2 EXISTS\r\n", examined)
        found = re.search(rb"\[UIDNEXT (\d+)\]", examined)
        assert found is not None
        uidnext = int(found.group(1))
        observer = self.server.imap(user, password)
        self.addCleanup(observer.logout)
        uids = sorted(imap_flags(observer))
        self.assertEqual(len(uids), 2)
        self.assertEqual(uidnext, uids[-1] + 1)
        plain_uid, multipart_uid = uids

        # Whole message by UID: the exact bytes, and reading it sets \Seen.
        fetched = self.curl(*self.imaps(f"INBOX;UID={plain_uid}"), user=account)
        self.assertEqual(fetched, wire(plain))
        self.assertEqual(imap_flags(observer)[plain_uid], {"\\Seen"})
        self.assertEqual(self.server.by_subject(user)["plain one"].flags, "S")
        unseen = self.curl(*self.imaps("INBOX?UNSEEN"), user=account)
        self.assertEqual(unseen, b"* SEARCH 2\r\n")

        # Sections.
        subject = self.curl(
            *self.imaps(f"INBOX;UID={multipart_uid};SECTION=HEADER.FIELDS%20(SUBJECT)"),
            user=account,
        )
        self.assertEqual(subject, b"Subject: with attachment\r\n\r\n")
        part = self.curl(*self.imaps(f"INBOX;UID={multipart_uid};SECTION=1"), user=account)
        self.assertEqual(part, b"The text part.")
        attachment = self.curl(*self.imaps(f"INBOX;UID={multipart_uid};SECTION=2"), user=account)
        self.assertEqual(attachment, b"AAECAwQFBgc=")
        text = self.curl(*self.imaps(f"INBOX;UID={plain_uid};SECTION=TEXT"), user=account)
        self.assertEqual(text, b"Just text.\r\n.dot line\r\n")
        # ;PARTIAL=offset.length: BODY[]<offset.length> (RFC 5092 3, RFC 3501 6.4.5).
        partial = self.curl(*self.imaps(f"INBOX;UID={plain_uid};PARTIAL=5.10"), user=account)
        self.assertEqual(partial, wire(plain)[5:15])
        partial = self.curl(
            *self.imaps(f"INBOX;UID={multipart_uid};SECTION=1;PARTIAL=4.100"), user=account
        )
        self.assertEqual(partial, b"text part.")

        # curl fetches sections with BODY[...], not BODY.PEEK[...]: they count as reading.
        self.assertEqual(imap_flags(observer)[multipart_uid], {"\\Seen"})

        # SEARCH: in the URL's query, and as a custom command with -X.
        by_subject = self.curl(
            "-X", 'UID SEARCH SUBJECT "attachment"', *self.imaps("INBOX"), user=account
        )
        self.assertEqual(by_subject, b"* SEARCH %d\r\n" % multipart_uid)
        by_text = self.curl(
            "-X", 'UID SEARCH TEXT "the text part"', *self.imaps("INBOX"), user=account
        )
        self.assertEqual(by_text, b"* SEARCH %d\r\n" % multipart_uid)

    def test_imap_append_over_starttls(self) -> None:
        account = self.server.add_user("curl")
        user, password = account
        message = wire(make_message("uploaded", "Sent with curl -T.\n"))
        upload = f"{self.home}/upload.eml"
        with open(upload, "wb") as f:
            f.write(message)
        self.curl("-T", upload, *self.imap_starttls("Sent"), user=account)
        stored = self.server.messages(user, "Sent")
        # curl APPENDs with \Seen: the file lands in cur/ with the S flag.
        self.assertEqual([(m.subdir, m.flags, m.data) for m in stored], [("cur", "S", message)])

        # A second upload to INBOX, then a fetch of it over STARTTLS.
        self.curl("-T", upload, *self.imap_starttls("INBOX"), user=account)
        observer = self.server.imap(user, password)
        self.addCleanup(observer.logout)
        (uid,) = imap_flags(observer)
        fetched = self.curl(*self.imap_starttls(f"INBOX;UID={uid}"), user=account)
        self.assertEqual(fetched, message)

    def pop3_session(self, tls: str) -> list[str]:
        if tls == "stls":
            return [
                "--ssl-reqd",
                "--cacert",
                self.server.cafile,
                f"pop3://localhost:{self.server.ports['pop3']}/",
            ]
        return ["-k", f"pop3s://localhost:{self.server.ports['pop3s']}/"]

    def check_pop3(self, tls: str) -> None:
        account = self.server.add_user("curl")
        user, _ = account
        messages = [make_message(f"pop {i}", f"Body {i}.\n.\n.leading dot\n") for i in range(3)]
        for message in messages:
            self.server.deliver(user, message)
        url = self.pop3_session(tls)

        listing = self.curl(*url, user=account)
        self.assertEqual(
            listing, b"".join(b"%d %d\r\n" % (i + 1, len(wire(m))) for i, m in enumerate(messages))
        )
        uidls = self.curl("-X", "UIDL", *url, user=account).split(b"\r\n")[:-1]
        self.assertEqual([line.split()[0] for line in uidls], [b"1", b"2", b"3"])
        self.assertEqual(len({line.split()[1] for line in uidls}), 3)

        # RETR by URL: curl undoes the dot-stuffing, so the bytes are the message's.
        retrieved = self.curl(*url[:-1], url[-1] + "2", user=account)
        self.assertEqual(retrieved, wire(messages[1]))

        # DELE by URL (with -I, as DELE has no body) and by --request with an argument.
        self.curl("-X", "DELE", "-I", *url[:-1], url[-1] + "1", user=account)
        self.assertEqual(len(self.server.messages(user)), 2)
        self.curl("--request", "DELE 2", "-I", *url, user=account)
        remaining = self.server.messages(user)
        self.assertEqual([m.data for m in remaining], [wire(messages[1])])
        # The survivor keeps its UIDL; RETR ended with QUIT, so it is \Seen.
        self.assertEqual(
            self.curl("-X", "UIDL", *url, user=account), b"1 " + uidls[1].split()[1] + b"\r\n"
        )
        self.assertEqual(remaining[0].flags, "S")

    def test_pop3_over_stls(self) -> None:
        self.check_pop3("stls")

    def test_pop3s(self) -> None:
        self.check_pop3("pop3s")
