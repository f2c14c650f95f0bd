"""Python's imaplib as a mail client uses it: first sync, reading, flagging,
incremental sync after new deliveries, expunge and saving a sent message.
Over STARTTLS and over implicit TLS (IMAPS)."""

from __future__ import annotations

import imaplib
import re
import ssl
import time
from typing import Any

from tests.interop.support import InteropTestCase, imap_flags, make_message, wire

HEADER_FIELDS = "FROM TO SUBJECT DATE MESSAGE-ID"


def parse_fetch(data: list[Any]) -> dict[int, dict[str, Any]]:
    """imaplib's FETCH data -> UID -> {item: value}; literals under their item name.

    imaplib hands a FETCH response with literals over as ``(text-before-literal,
    literal)`` tuples, each followed by a bytes element with the text after it.
    """
    messages: list[tuple[bytes, dict[str, bytes]]] = []
    for item in data:
        if item is None:
            continue
        if isinstance(item, tuple):
            head, literal = item
            if re.match(rb"\d+ \(", head):
                messages.append((b"", {}))
            text, literals = messages[-1]
            name = re.search(
                rb"(BODY\[[^\]]*\]|RFC822(?:\.HEADER|\.TEXT)?|BINARY\[[^\]]*\])"
                rb"(?:<\d+>)? \{\d+\}$",
                head,
            )
            assert name is not None, head
            literals[name.group(1).decode()] = literal
            messages[-1] = (text + head, literals)
        elif re.match(rb"\d+ \(", item):
            messages.append((item, {}))
        else:
            text, literals = messages[-1]
            messages[-1] = (text + item, literals)
    result: dict[int, dict[str, Any]] = {}
    for text, literals in messages:
        fields: dict[str, Any] = dict(literals)
        fields["SEQ"] = int(text.split()[0])
        uid = re.search(rb"\bUID (\d+)", text)
        flags = re.search(rb"\bFLAGS \(([^)]*)\)", text)
        size = re.search(rb"\bRFC822\.SIZE (\d+)", text)
        date = re.search(rb'\bINTERNALDATE ("[^"]*")', text)
        if flags is not None:
            fields["FLAGS"] = set(flags.group(1).decode().split())
        if size is not None:
            fields["RFC822.SIZE"] = int(size.group(1))
        if date is not None:
            fields["INTERNALDATE"] = date.group(1).decode()
        assert uid is not None, f"FETCH response without UID: {text!r}"
        result[int(uid.group(1))] = fields
    return result


def lines(data: list[Any]) -> list[bytes]:
    """The plain lines of an imaplib answer (no literals, no Nones)."""
    return [item for item in data if isinstance(item, bytes)]


def header_fields(message: bytes, names: str) -> bytes:
    """What BODY[HEADER.FIELDS (names)] must be for ``message`` (RFC 3501 6.4.5)."""
    wanted = {name.lower() for name in names.split()}
    header = wire(message).split(b"\r\n\r\n", 1)[0] + b"\r\n"
    lines = re.findall(rb"[^\r\n:]+:.*?\r\n(?:[ \t].*?\r\n)*", header)
    return b"".join(line for line in lines if line.split(b":")[0].lower().decode() in wanted) + (
        b"\r\n"
    )


class _ImaplibClient:
    """The client session; the transport comes from the concrete class."""

    server: Any
    assertEqual: Any
    assertIn: Any
    assertNotIn: Any
    assertTrue: Any
    assertLess: Any
    addCleanup: Any

    def connect(self) -> imaplib.IMAP4:
        raise NotImplementedError

    def login(self, user: str, password: str) -> imaplib.IMAP4:
        imap = self.connect()
        self.addCleanup(_close, imap)
        self.assertIsSecure(imap)
        typ, _ = imap.login(user, password)
        self.assertEqual(typ, "OK")
        return imap

    def assertIsSecure(self, imap: imaplib.IMAP4) -> None:
        assert isinstance(imap.sock, ssl.SSLSocket)
        self.assertIn(imap.sock.version(), ("TLSv1.2", "TLSv1.3"))

    def deliver_all(self, user: str, subjects: list[str]) -> dict[str, bytes]:
        sent = {}
        for subject in subjects:
            sent[subject] = make_message(
                subject,
                f"Hello,\n\nthis is {subject}.\n.\n..a line that starts with dots\n",
                extra_headers=[("X-Mailer", "interop"), ("Received", "from a\n\tby b")],
            )
        self.server.deliver_concurrently(user, list(sent.values()))
        return sent

    def test_first_sync_read_flag_incremental_sync_expunge(self) -> None:
        user, password = self.server.add_user("imaplib")
        sent = self.deliver_all(user, ["first", "second", "third"])

        imap = self.login(user, password)
        # The folder list, as a client's first sync starts.
        typ, listing = imap.list('""', "*")
        self.assertEqual(typ, "OK")
        self.assertIn(b'"/" INBOX', b"\n".join(lines(listing)))

        typ, data = imap.select("INBOX")
        self.assertEqual((typ, data), ("OK", [b"3"]))
        uidvalidity = int(imap.response("UIDVALIDITY")[1][0])
        uidnext = int(imap.response("UIDNEXT")[1][0])

        typ, data = imap.uid(
            "FETCH",
            "1:*",
            f"(UID FLAGS RFC822.SIZE INTERNALDATE BODY.PEEK[HEADER.FIELDS ({HEADER_FIELDS})])",
        )
        self.assertEqual(typ, "OK", data)
        cache = parse_fetch(data)
        on_disk = self.server.by_subject(user)
        self.assertEqual(len(cache), 3)
        uids = sorted(cache)
        self.assertLess(uids[-1], uidnext)
        by_subject = {}
        for uid in uids:
            item = cache[uid]
            fields = item[f"BODY[HEADER.FIELDS ({HEADER_FIELDS})]"]
            found = re.search(rb"^Subject: (.*)\r$", fields, re.MULTILINE)
            assert found is not None
            subject = found.group(1).decode()
            by_subject[subject] = uid
            self.assertEqual(fields, header_fields(sent[subject], HEADER_FIELDS))
            self.assertNotIn(b"X-Mailer", fields)
            self.assertEqual(item["RFC822.SIZE"], len(wire(sent[subject])))
            self.assertEqual(item["RFC822.SIZE"], len(on_disk[subject].data))
            self.assertNotIn("\\Seen", item["FLAGS"])
            self.assertTrue(
                imaplib.Internaldate2tuple(b"INTERNALDATE " + item["INTERNALDATE"].encode())
            )
        self.assertEqual(sorted(by_subject), ["first", "second", "third"])
        # BODY.PEEK leaves \Seen alone, on the server too.
        self.assertEqual([m.flags for m in self.server.messages(user)], ["", "", ""])

        # Reading two messages sets \Seen (RFC 3501 6.4.5), announced in the FETCH answer.
        read = f"{by_subject['first']},{by_subject['second']}"
        typ, data = imap.uid("FETCH", read, "(BODY[])")
        self.assertEqual(typ, "OK", data)
        bodies = parse_fetch(data)
        for subject in ("first", "second"):
            self.assertEqual(bodies[by_subject[subject]]["BODY[]"], wire(sent[subject]))
        # Flags and answers, then the server side shows them in the file names.
        typ, data = imap.uid("STORE", str(by_subject["third"]), "+FLAGS", r"(\Flagged \Answered)")
        self.assertEqual(typ, "OK", data)
        self.assertEqual(
            parse_fetch(data)[by_subject["third"]]["FLAGS"] - {"\\Recent"},
            {"\\Flagged", "\\Answered"},
        )
        typ, data = imap.uid("STORE", str(by_subject["second"]), "-FLAGS.SILENT", r"(\Seen)")
        self.assertEqual((typ, data), ("OK", [None]))
        on_disk = self.server.by_subject(user)
        self.assertEqual(on_disk["first"].flags, "S")
        self.assertEqual(on_disk["second"].flags, "")
        self.assertEqual(on_disk["third"].flags, "FR")
        # ... and another session sees the same flags.
        observer = self.server.imap(user, password)
        self.addCleanup(_close, observer)
        flags = imap_flags(observer)
        self.assertEqual(
            {uid: flags[uid] - {"\\Recent"} for uid in flags},
            {
                by_subject["first"]: {"\\Seen"},
                by_subject["second"]: set(),
                by_subject["third"]: {"\\Flagged", "\\Answered"},
            },
        )

        # New mail arrives while the client is connected: NOOP reports it.
        sent.update(self.deliver_all(user, ["fourth", "fifth"]))
        typ, _ = imap.noop()
        self.assertEqual(typ, "OK")
        self.assertEqual(imap.response("EXISTS")[1][-1], b"5")
        typ, data = imap.uid(
            "FETCH", f"{uidnext}:*", "(UID FLAGS RFC822.SIZE BODY.PEEK[HEADER.FIELDS (SUBJECT)])"
        )
        self.assertEqual(typ, "OK", data)
        new = parse_fetch(data)
        self.assertEqual(
            sorted(item["BODY[HEADER.FIELDS (SUBJECT)]"] for item in new.values()),
            [b"Subject: fifth\r\n\r\n", b"Subject: fourth\r\n\r\n"],
        )
        self.assertTrue(all(uid >= uidnext for uid in new))
        imap.logout()

        # The next incremental sync, in a new connection: same UIDVALIDITY, UIDNEXT moved on.
        imap = self.login(user, password)
        typ, data = imap.select("INBOX")
        self.assertEqual((typ, data), ("OK", [b"5"]))
        self.assertEqual(int(imap.response("UIDVALIDITY")[1][0]), uidvalidity)
        new_uidnext = int(imap.response("UIDNEXT")[1][0])
        self.assertEqual(new_uidnext, max(new) + 1)
        # Nothing new: "UIDNEXT:*" still names the highest message (RFC 3501 6.4.8, 9),
        # which a client recognises by its UID below UIDNEXT.
        typ, data = imap.uid("FETCH", f"{new_uidnext}:*", "(UID FLAGS)")
        self.assertEqual(typ, "OK", data)
        self.assertEqual(list(parse_fetch(data)), [max(new)])
        # Flags of the cached messages, resynchronised by UID range.
        typ, data = imap.uid("FETCH", f"1:{uidnext - 1}", "(UID FLAGS)")
        resync = parse_fetch(data)
        self.assertEqual(
            resync[by_subject["third"]]["FLAGS"] - {"\\Recent"}, {"\\Flagged", "\\Answered"}
        )

        # Delete one message the way clients do: \Deleted, then EXPUNGE.
        typ, data = imap.uid("STORE", str(by_subject["second"]), "+FLAGS", r"(\Deleted)")
        self.assertEqual(typ, "OK", data)
        typ, data = imap.expunge()
        self.assertEqual((typ, data), ("OK", [str(resync[by_subject["second"]]["SEQ"]).encode()]))
        self.assertEqual(
            sorted(self.server.by_subject(user)), ["fifth", "first", "fourth", "third"]
        )
        typ, data = observer.select("INBOX", readonly=True)
        self.assertEqual(data, [b"4"])

    def test_saving_a_sent_message(self) -> None:
        """A client files what it sent: finds the \\Sent folder, APPENDs with \\Seen and a date."""
        user, password = self.server.add_user("imaplib")
        imap = self.login(user, password)
        typ, listing = imap.list('""', "*")
        self.assertEqual(typ, "OK")
        sent_folders = [
            line.rsplit(b" ", 1)[1].decode() for line in lines(listing) if b"\\Sent" in line
        ]
        self.assertEqual(sent_folders, ["Sent"])
        message = wire(make_message("sent by me", "Sent from imaplib.\n"))
        when = time.mktime((2024, 2, 29, 13, 14, 15, 0, 0, -1))
        typ, data = imap.append("Sent", r"(\Seen)", when, message)
        self.assertEqual(typ, "OK", data)
        appenduid = re.search(rb"\[APPENDUID (\d+) (\d+)\]", lines(data)[0])
        assert appenduid is not None
        stored = self.server.messages(user, "Sent")
        self.assertEqual([(m.subdir, m.flags, m.data) for m in stored], [("cur", "S", message)])

        typ, selected = imap.select("Sent", readonly=True)
        self.assertEqual(selected, [b"1"])
        typ, fetched = imap.uid("FETCH", appenduid.group(2).decode(), "(FLAGS INTERNALDATE RFC822)")
        self.assertEqual(typ, "OK", fetched)
        item = parse_fetch(fetched)[int(appenduid.group(2))]
        self.assertEqual(item["RFC822"], message)
        self.assertEqual(item["FLAGS"], {"\\Seen"})
        internal_date = imaplib.Internaldate2tuple(b"INTERNALDATE " + item["INTERNALDATE"].encode())
        assert internal_date is not None
        self.assertEqual(time.mktime(internal_date), when)


def _close(imap: imaplib.IMAP4) -> None:
    try:
        if imap.state != "LOGOUT":
            imap.logout()
    except (imaplib.IMAP4.error, OSError):
        imap.shutdown()


class ImaplibStartTLSTests(_ImaplibClient, InteropTestCase):
    """imaplib.IMAP4 on the plaintext port, upgraded with STARTTLS before LOGIN."""

    def connect(self) -> imaplib.IMAP4:
        imap = imaplib.IMAP4("localhost", self.server.ports["imap"], timeout=30)
        self.assertIn("STARTTLS", imap.capabilities)
        typ, _ = imap.starttls(ssl_context=self.server.ssl_context())
        self.assertEqual(typ, "OK")
        self.assertNotIn("STARTTLS", imap.capabilities)
        return imap


class ImaplibIMAPSTests(_ImaplibClient, InteropTestCase):
    """imaplib.IMAP4_SSL on the implicit-TLS port, checking the certificate and its name."""

    def connect(self) -> imaplib.IMAP4:
        return imaplib.IMAP4_SSL(
            "localhost",
            self.server.ports["imaps"],
            ssl_context=self.server.ssl_context(),
            timeout=30,
        )
