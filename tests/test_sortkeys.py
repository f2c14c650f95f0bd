"""RFC 5256's base subject (2.1) and sent date (2.2), the address keys of
SORT and RFC 5957, msg-id normalisation and the i;unicode-casemap key."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from mailsrv.imap.sortkeys import (
    SortRecord,
    base_subject,
    casemap,
    display_value,
    first_mailbox,
    message_ids,
    record_from_header,
    sent_date,
)


class BaseSubjectTests(SynchronousTestCase):
    def check(self, subject: str, base: str, reply: bool) -> None:
        self.assertEqual(base_subject(subject), (base, reply), subject)

    def test_reply_and_forward_leaders(self) -> None:
        self.check("Re: hello", "hello", True)
        self.check("RE:re: hello", "hello", True)
        self.check("Re : hello", "hello", True)  # subj-refwd allows *WSP before ":"
        self.check("Fw: hello", "hello", True)
        self.check("FWD: hello", "hello", True)
        self.check("Re[2]: hello", "hello", True)  # a subj-blob inside subj-refwd
        self.check("[list] Re: hello", "hello", True)  # *subj-blob subj-refwd
        self.check("Reply: hello", "Reply: hello", False)  # not a subj-refwd

    def test_blobs(self) -> None:
        self.check("[PATCH] fix", "fix", False)
        self.check("[a] [b] fix", "fix", False)
        # Step (4): a blob stays when it is all that is left.
        self.check("[blob]", "[blob]", False)
        self.check("Re: [blob]", "[blob]", True)

    def test_trailers(self) -> None:
        self.check("hello (fwd)", "hello", True)
        self.check("hello (FWD) (fwd)  ", "hello", True)
        self.check("hello   ", "hello", False)

    def test_fwd_wrapper(self) -> None:
        self.check("[fwd: hello]", "hello", True)
        self.check("[Fwd: Re: hello (fwd)]", "hello", True)
        self.check("[fwd: [x]]", "[x]", True)  # unwrapped, then the blob is all
        # Without its "]" it is no subj-fwd (nor a subj-blob): it stays.
        self.check("[fwd: hello", "[fwd: hello", False)

    def test_white_space_and_encoded_words(self) -> None:
        self.check("  a \t  b  ", "a b", False)
        self.check("=?UTF-8?Q?Re=3A_Caf=C3=A9?=", "Café", True)
        self.check("=?ISO-8859-1?Q?Caf=E9?= =?ISO-8859-1?Q?_cr=E8me?=", "Café crème", False)
        self.check("", "", False)

    def test_casemap_orders_case_and_accents_together(self) -> None:
        self.assertEqual(casemap("hello"), casemap("HELLO"))
        self.assertEqual(casemap("école"), casemap("ÉCOLE"))
        self.assertLess(casemap("ecole"), casemap("école"))  # decomposed: E, then a mark
        self.assertLess(casemap("école"), casemap("zebra"))


class SentDateTests(SynchronousTestCase):
    def test_zone_normalised_to_utc(self) -> None:
        # RFC 5256 2.2's own example.
        self.assertEqual(
            sent_date("31 Dec 2000 16:01:33 -0800"), sent_date("1 Jan 2001 00:01:33 +0000")
        )

    def test_unreadable_means_internaldate(self) -> None:
        for value in (None, "garbage", "1 Mar 2021 25:61:00 +0000", "31 Feb 2021 10:00 +0000"):
            self.assertIsNone(sent_date(value), value)

    def test_missing_or_unknown_zone_is_utc(self) -> None:
        utc = sent_date("1 Mar 2021 10:00:00 +0000")
        self.assertEqual(sent_date("1 Mar 2021 10:00:00"), utc)
        self.assertEqual(sent_date("1 Mar 2021 10:00:00 XYZ"), utc)

    def test_record_without_date_asks_for_the_internaldate(self) -> None:
        record = record_from_header(b"Subject: x\r\n\r\n")
        self.assertIsNone(record.date)


class AddressTests(SynchronousTestCase):
    def test_first_mailbox(self) -> None:
        self.assertEqual(first_mailbox("Bob <bob@x>, carol@y"), "bob")
        self.assertEqual(first_mailbox('"Zed" <"z.q"@x>'), "z.q")
        self.assertEqual(first_mailbox("team: a@b;"), "team")  # the group's start marker
        self.assertEqual(first_mailbox("(nobody)"), "")
        self.assertEqual(first_mailbox(None), "")

    def test_display_value(self) -> None:
        # RFC 5957 3: the decoded name, else mailbox@host, else mailbox.
        self.assertEqual(display_value("=?UTF-8?Q?=C3=89milie?= <e@x>"), "Émilie")
        self.assertEqual(display_value("<bob@example.org>"), "bob@example.org")
        self.assertEqual(display_value("undisclosed:;"), "undisclosed")
        self.assertEqual(display_value(None), "")


class MessageIdTests(SynchronousTestCase):
    def test_quoting_does_not_matter(self) -> None:
        # RFC 5256 REFERENCES' own example.
        self.assertEqual(
            message_ids('<"01KF8JCEOCBS0045PS"@xxx.yyy.com>'),
            message_ids("<01KF8JCEOCBS0045PS@xxx.yyy.com>"),
        )

    def test_invalid_ids_are_skipped(self) -> None:
        self.assertEqual(message_ids('junk <nothing> "x" <a@b> (c) <c@d>'), ["a@b", "c@d"])

    def test_in_reply_to_only_without_references(self) -> None:
        record = record_from_header(b"In-Reply-To: <p@x> <q@x>\r\nMessage-ID: <m@x>\r\n\r\n")
        self.assertEqual(record.references, ("p@x",))
        record = record_from_header(b"References: <a@x> <b@x>\r\nIn-Reply-To: <p@x>\r\n\r\n")
        self.assertEqual(record.references, ("a@x", "b@x"))


class RecordTests(SynchronousTestCase):
    def test_round_trip(self) -> None:
        record = record_from_header(
            b"From: Bob <bob@x>\r\nTo: team: a@b;\r\nSubject: Re: [x] Hi\r\n"
            b"Date: 1 Mar 2021 10:00:00 +0100\r\nMessage-ID: <m@x>\r\nReferences: <a@x>\r\n\r\n"
        )
        self.assertEqual(SortRecord.from_bytes(record.to_bytes()), record)
        self.assertEqual((record.subject, record.reply, record.from_), ("HI", True, "BOB"))

    def test_damage_is_refused(self) -> None:
        self.assertRaises(ValueError, SortRecord.from_bytes, b"not a record")
        self.assertRaises(ValueError, SortRecord.from_bytes, b"x\0" * 9)
