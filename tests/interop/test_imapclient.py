"""imapclient's SORT and THREAD calls, as a webmail written in Python
makes them, against the daemon over IMAPS.

``IMAPClient.sort()`` and ``thread()`` send ``UID SORT``/``UID THREAD``
(imapclient uses UIDs by default) and parse the answers into lists and
nested tuples: the test checks those values against the mail it delivered
with ``mailsrv deliver``, and that imapclient sees the capabilities it
checks before sending them.
"""

from __future__ import annotations

from typing import Any

from tests.interop.support import InteropTestCase, imap_uids_by_subject, make_message

try:
    import imapclient
except ImportError:  # pragma: no cover - the test extra installs it
    imapclient = None


class ImapclientSortThreadTests(InteropTestCase):
    def client(self, user: str, password: str) -> Any:
        if imapclient is None:
            self.cannot_run("imapclient is missing: pip install -e '.[test]'")
        session = imapclient.IMAPClient(
            "localhost",
            port=self.server.ports["imaps"],
            ssl=True,
            ssl_context=self.server.ssl_context(),
            timeout=30,
        )
        session.login(user, password)
        return session

    def test_sort_and_thread(self) -> None:
        user, password = self.server.add_user("sorter")
        mail = [
            ("Banana", "Mon, 01 Jan 2024 10:00:00 +0000", "carol@example.org", "<1@x>", None),
            (
                "Re: banana",
                "Sun, 31 Dec 2023 10:00:00 +0000",
                "alice@example.org",
                "<2@x>",
                "<1@x>",
            ),
            ("Re: apple", "Mon, 01 Jan 2024 09:00:00 -0200", "bob@example.org", "<3@x>", "<5@x>"),
            ("Cherry", "Tue, 02 Jan 2024 08:00:00 +0100", "dave@example.org", "<4@x>", None),
            ("Apple", "Sat, 30 Dec 2023 08:00:00 +0000", "erin@example.org", "<5@x>", None),
        ]
        for subject, date, sender, message_id, parent in mail:
            extra = [("In-Reply-To", parent), ("References", parent)] if parent else []
            self.server.deliver(
                user,
                make_message(subject, sender=sender, date=date, extra_headers=extra).replace(
                    b"Message-ID: ", b"Message-ID: " + message_id.encode() + b"\nX-Old-ID: ", 1
                ),
            )
        check = self.server.imap(user, password, "INBOX")
        uids = imap_uids_by_subject(check)
        check.logout()
        session = self.client(user, password)
        try:
            caps = session.capabilities()
            for name in (b"SORT", b"THREAD=REFERENCES", b"THREAD=ORDEREDSUBJECT", b"ESORT"):
                self.assertIn(name, caps)
            self.assertTrue(session.has_capability("SORT"))
            session.select_folder("INBOX")
            by_date = session.sort("DATE")
            by_subject = session.sort(["SUBJECT", "REVERSE DATE"])
            some = session.sort("FROM", ["NOT", "FROM", "carol"])
            threads = session.thread()
            ordered = session.thread("ORDEREDSUBJECT")
        finally:
            session.logout()
        u = [uids[subject] for subject, *_ in mail]  # UIDs in delivery order
        # Sent dates in UTC: 5 (30 Dec), 2 (31 Dec), 1 (1 Jan 10:00),
        # 3 (1 Jan 11:00 UTC), 4 (2 Jan 07:00 UTC).
        self.assertEqual(by_date, [u[4], u[1], u[0], u[2], u[3]])
        # Base subjects APPLE, BANANA, CHERRY; newest first within each.
        self.assertEqual(by_subject, [u[2], u[4], u[0], u[1], u[3]])
        self.assertEqual(some, [u[1], u[2], u[3], u[4]])  # alice, bob, dave, erin
        # REFERENCES: 2 answers 1, 3 answers 5; threads by their first date.
        self.assertEqual(threads, ((u[4], u[2]), (u[0], u[1]), (u[3],)))
        # ORDEREDSUBJECT: by base subject, each thread under its oldest.
        self.assertEqual(ordered, ((u[4], u[2]), (u[1], u[0]), (u[3],)))
