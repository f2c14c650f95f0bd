"""Write the test corpus: realistic message shapes, one .eml file each.

Run ``python tests/corpus/generate.py`` from the checkout; the .eml files are
committed, this script documents how they were made.  Lines are joined with
CRLF (the wire form storage hands out) except in the deliberate bare-LF
message.  Everything is deterministic.
"""

from __future__ import annotations

import base64
import os
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
MESSAGES: dict[str, bytes] = {}

DATE = "Date: Mon, 7 Feb 1994 21:52:25 -0800 (PST)"
FROM = "From: Alice Example <alice@example.org>"
TO = "To: Bob Example <bob@example.net>"


def add(name: str, *lines: str | bytes, eol: bytes = b"\r\n") -> None:
    data = eol.join(x.encode("utf-8") if isinstance(x, str) else x for x in lines)
    MESSAGES[name] = data


def headers(subject: str, *extra: str, mid: str | None = None) -> list[str]:
    ident = mid or f"<{zlib.crc32(subject.encode()):08x}@example.org>"
    return [DATE, FROM, TO, f"Subject: {subject}", f"Message-ID: {ident}", *extra]


def b64(data: bytes) -> list[str]:
    text = base64.b64encode(data).decode("ascii")
    return [text[i : i + 76] for i in range(0, len(text), 76)]


PNG = bytes(range(256)) * 3
PDF = b"%PDF-1.4\n" + b"1 0 obj << /Type /Catalog >> endobj\n" * 20 + b"%%EOF\n"

# 1-3 plain text
add(
    "01-plain-ascii.eml",
    *headers("Plain text", mid="<plain1@example.org>"),
    "",
    "Hello Bob,",
    "",
    "This is a plain text message.",
    "",
    "-- ",
    "Alice",
    "",
)
add(
    "02-plain-utf8-qp.eml",
    *headers(
        "Quoted-printable UTF-8",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=UTF-8",
        "Content-Transfer-Encoding: quoted-printable",
    ),
    "",
    "Gr=C3=BC=C3=9Fe aus M=C3=BCnchen! Das ist eine sehr lange Zeile, die umgebrochen we=",
    "rden muss.  ",
    "Caf=C3=A9 =E2=82=AC5",
    "",
)
add(
    "03-plain-latin1-8bit.eml",
    *headers(
        "8bit Latin-1",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=ISO-8859-1",
        "Content-Transfer-Encoding: 8bit",
    ),
    "",
    "Gr\u00fc\u00dfe".encode("latin-1") + b" aus K\xf6ln",
    "",
)

# 4-5 alternatives and nesting
add(
    "04-html-alternative.eml",
    *headers(
        "HTML alternative",
        "MIME-Version: 1.0",
        'Content-Type: multipart/alternative; boundary="alt-1"',
    ),
    "",
    "This is a multi-part message in MIME format.",
    "--alt-1",
    "Content-Type: text/plain; charset=utf-8",
    "Content-Transfer-Encoding: 7bit",
    "",
    "Hello in plain text.",
    "",
    "--alt-1",
    "Content-Type: text/html; charset=utf-8",
    "Content-Transfer-Encoding: 7bit",
    "",
    "<html><body><p>Hello in <b>HTML</b>.</p></body></html>",
    "",
    "--alt-1--",
    "",
)
add(
    "05-mixed-alternative-related.eml",
    *headers(
        "Nested multiparts", "MIME-Version: 1.0", 'Content-Type: multipart/mixed; boundary="outer"'
    ),
    "",
    "--outer",
    'Content-Type: multipart/alternative; boundary="middle"',
    "",
    "--middle",
    "Content-Type: text/plain; charset=us-ascii",
    "",
    "See the picture.",
    "--middle",
    'Content-Type: multipart/related; boundary="inner"; type="text/html"',
    "",
    "--inner",
    "Content-Type: text/html; charset=us-ascii",
    "",
    '<p>See the picture: <img src="cid:pic1@example.org"></p>',
    "--inner",
    "Content-Type: image/png; name=pic.png",
    "Content-Transfer-Encoding: base64",
    "Content-ID: <pic1@example.org>",
    "Content-Disposition: inline; filename=pic.png",
    "",
    *b64(PNG),
    "--inner--",
    "",
    "--middle--",
    "",
    "--outer",
    'Content-Type: application/pdf; name="report.pdf"',
    "Content-Transfer-Encoding: base64",
    'Content-Disposition: attachment; filename="report.pdf"; size=' + str(len(PDF)),
    "",
    *b64(PDF),
    "--outer--",
    "",
)

# 6-7 embedded messages
INNER = [
    "From: Carol <carol@example.com>",
    "To: alice@example.org",
    "Subject: Original message",
    "Date: Sun, 6 Feb 1994 10:00:00 +0000",
    "Message-ID: <orig@example.com>",
    "MIME-Version: 1.0",
    'Content-Type: multipart/alternative; boundary="in-alt"',
    "",
    "--in-alt",
    "Content-Type: text/plain",
    "",
    "Original text.",
    "--in-alt",
    "Content-Type: text/html",
    "",
    "<p>Original text.</p>",
    "--in-alt--",
]
add(
    "06-rfc822-attached.eml",
    *headers(
        "Fwd: Original message",
        "MIME-Version: 1.0",
        'Content-Type: multipart/mixed; boundary="fwd"',
    ),
    "",
    "--fwd",
    "Content-Type: text/plain; charset=us-ascii",
    "",
    "Forwarding this.",
    "",
    "--fwd",
    "Content-Type: message/rfc822",
    'Content-Disposition: inline; filename="original.eml"',
    "Content-Description: Forwarded message",
    "",
    *INNER,
    "--fwd--",
    "",
)
add(
    "07-digest.eml",
    *headers(
        "Digest, Vol 1, Issue 1",
        "MIME-Version: 1.0",
        'Content-Type: multipart/digest; boundary="dg"',
    ),
    "",
    "Digest preamble",
    "",
    "--dg",
    "",
    "From: one@example.com",
    "Subject: first",
    "",
    "First message.",
    "",
    "--dg",
    "",
    "From: two@example.com",
    "Subject: second",
    "Content-Type: text/plain; charset=utf-8",
    "",
    "Second message.",
    "",
    "--dg",
    "Content-Type: text/plain",
    "",
    "Not a message: an explicit text part.",
    "--dg--",
    "",
)

# 8-9 RFC 2231
add(
    "08-rfc2231-filename.eml",
    *headers(
        "RFC 2231 file name", "MIME-Version: 1.0", 'Content-Type: multipart/mixed; boundary="b2231"'
    ),
    "",
    "--b2231",
    "Content-Type: text/plain",
    "",
    "Attached.",
    "--b2231",
    "Content-Type: application/octet-stream; name*=utf-8''%E2%82%AC%20rates.txt",
    "Content-Disposition: attachment; filename*=utf-8'en'%E2%82%AC%20rates.txt",
    "Content-Transfer-Encoding: base64",
    "",
    *b64(b"EUR 1.00\n"),
    "--b2231--",
    "",
)
add(
    "09-rfc2231-continuations.eml",
    *headers(
        "RFC 2231 continuations",
        "MIME-Version: 1.0",
        'Content-Type: multipart/mixed; boundary="c2231"',
    ),
    "",
    "--c2231",
    "Content-Type: text/plain",
    "",
    "Attached.",
    "--c2231",
    "Content-Type: application/pdf;",
    "\tname*0*=iso-8859-1'de'Gr%FC%DFe%20und%20;",
    '\tname*1="lange Namen.pdf"',
    "Content-Disposition: attachment;",
    "\tfilename*0*=iso-8859-1'de'Gr%FC%DFe%20und%20;",
    '\tfilename*1="lange Namen.pdf"',
    "Content-Transfer-Encoding: base64",
    "",
    *b64(PDF[:100]),
    "--c2231--",
    "",
)

# 10-13 encoded-word subjects
add(
    "10-subject-utf8-b.eml",
    DATE,
    FROM,
    TO,
    "Subject: =?UTF-8?B?w4RwZmVsIHVuZCBCaXJuZW4g4oCUIOKCrA==?=",
    "Message-ID: <ew1@example.org>",
    "",
    "Body.",
    "",
)
add(
    "11-subject-latin1-q.eml",
    DATE,
    "From: =?ISO-8859-1?Q?Andr=E9?= Pirard <PIRARD@vm1.ulg.ac.be>",
    TO,
    "Subject: =?ISO-8859-1?Q?Caf=E9_cr=E8me?=",
    "Message-ID: <ew2@example.org>",
    "",
    "Body.",
    "",
)
add(
    "12-subject-iso2022jp.eml",
    DATE,
    FROM,
    TO,
    "Subject: =?ISO-2022-JP?B?"
    + base64.b64encode("日本語の件名".encode("iso2022_jp")).decode()
    + "?=",
    "Message-ID: <ew3@example.org>",
    "MIME-Version: 1.0",
    "Content-Type: text/plain; charset=ISO-2022-JP",
    "Content-Transfer-Encoding: 7bit",
    "",
    "こんにちは".encode("iso2022_jp"),
    "",
)
add(
    "13-subject-koi8r.eml",
    DATE,
    FROM,
    TO,
    "Subject: =?koi8-r?B?" + base64.b64encode("Привет мир".encode("koi8_r")).decode() + "?=",
    "Message-ID: <ew4@example.org>",
    "MIME-Version: 1.0",
    "Content-Type: text/plain; charset=koi8-r",
    "Content-Transfer-Encoding: 8bit",
    "",
    "Привет!".encode("koi8_r"),
    "",
)

# 14-17 S/MIME and PGP
SIG = b64(b"0\x82\x01\x00" + bytes(range(200)))
add(
    "14-smime-signed.eml",
    *headers(
        "S/MIME signed",
        "MIME-Version: 1.0",
        'Content-Type: multipart/signed; protocol="application/pkcs7-signature";',
        ' micalg=sha-256; boundary="----SIGNED"',
    ),
    "",
    "This is an S/MIME signed message",
    "",
    "------SIGNED",
    "Content-Type: text/plain; charset=utf-8",
    "Content-Transfer-Encoding: 7bit",
    "",
    "Signed text.",
    "",
    "------SIGNED",
    'Content-Type: application/pkcs7-signature; name="smime.p7s"',
    "Content-Transfer-Encoding: base64",
    'Content-Disposition: attachment; filename="smime.p7s"',
    "Content-Description: S/MIME Cryptographic Signature",
    "",
    *SIG,
    "",
    "------SIGNED--",
    "",
)
add(
    "15-smime-enveloped.eml",
    *headers(
        "S/MIME encrypted",
        "MIME-Version: 1.0",
        'Content-Type: application/pkcs7-mime; smime-type=enveloped-data; name="smime.p7m"',
        "Content-Transfer-Encoding: base64",
        'Content-Disposition: attachment; filename="smime.p7m"',
    ),
    "",
    *SIG,
    "",
)
add(
    "16-pgp-encrypted.eml",
    *headers(
        "PGP encrypted",
        "MIME-Version: 1.0",
        'Content-Type: multipart/encrypted; protocol="application/pgp-encrypted";',
        ' boundary="pgp-enc"',
    ),
    "",
    "This is an OpenPGP/MIME encrypted message (RFC 4880 and 3156)",
    "--pgp-enc",
    "Content-Type: application/pgp-encrypted",
    "Content-Description: PGP/MIME version identification",
    "",
    "Version: 1",
    "",
    "--pgp-enc",
    'Content-Type: application/octet-stream; name="encrypted.asc"',
    "Content-Description: OpenPGP encrypted message",
    'Content-Disposition: inline; filename="encrypted.asc"',
    "",
    "-----BEGIN PGP MESSAGE-----",
    "",
    *SIG,
    "=abcd",
    "-----END PGP MESSAGE-----",
    "",
    "--pgp-enc--",
    "",
)
add(
    "17-pgp-signed.eml",
    *headers(
        "PGP signed",
        "MIME-Version: 1.0",
        "Content-Type: multipart/signed; micalg=pgp-sha256;",
        ' protocol="application/pgp-signature"; boundary="pgp-sig"',
    ),
    "",
    "--pgp-sig",
    'Content-Type: multipart/mixed; boundary="pgp-mixed"',
    "",
    "--pgp-mixed",
    "Content-Type: text/plain; charset=utf-8",
    "Content-Transfer-Encoding: quoted-printable",
    "",
    "Signed =E2=9C=93",
    "--pgp-mixed--",
    "",
    "--pgp-sig",
    'Content-Type: application/pgp-signature; name="signature.asc"',
    'Content-Disposition: attachment; filename="signature.asc"',
    "",
    "-----BEGIN PGP SIGNATURE-----",
    "",
    *SIG,
    "-----END PGP SIGNATURE-----",
    "",
    "--pgp-sig--",
    "",
)

# 18 calendar invite
ICS = [
    "BEGIN:VCALENDAR",
    "METHOD:REQUEST",
    "PRODID:-//Example//Cal//EN",
    "VERSION:2.0",
    "BEGIN:VEVENT",
    "UID:event-1@example.org",
    "DTSTART:20240102T100000Z",
    "DTEND:20240102T110000Z",
    "SUMMARY:Planning",
    "ORGANIZER:mailto:alice@example.org",
    "ATTENDEE;RSVP=TRUE:mailto:bob@example.net",
    "END:VEVENT",
    "END:VCALENDAR",
]
add(
    "18-calendar-invite.eml",
    *headers(
        "Invitation: Planning",
        "MIME-Version: 1.0",
        'Content-Type: multipart/mixed; boundary="cal-mixed"',
    ),
    "",
    "--cal-mixed",
    'Content-Type: multipart/alternative; boundary="cal-alt"',
    "",
    "--cal-alt",
    "Content-Type: text/plain; charset=UTF-8",
    "",
    "You are invited: Planning",
    "--cal-alt",
    "Content-Type: text/calendar; charset=UTF-8; method=REQUEST",
    "",
    *ICS,
    "--cal-alt--",
    "",
    "--cal-mixed",
    'Content-Type: application/ics; name="invite.ics"',
    'Content-Disposition: attachment; filename="invite.ics"',
    "Content-Transfer-Encoding: base64",
    "",
    *b64("\r\n".join(ICS).encode()),
    "--cal-mixed--",
    "",
)

# 19-20 attachments
add(
    "19-attachment-base64.eml",
    *headers("Picture", "MIME-Version: 1.0", "Content-Type: multipart/mixed; boundary=img"),
    "",
    "--img",
    "",
    "Implicit text/plain part.",
    "--img",
    "Content-Type: image/png",
    "Content-Transfer-Encoding: base64",
    "Content-Disposition: attachment; filename=bytes.png",
    "",
    *b64(PNG),
    "--img--",
    "",
)
add(
    "20-attachment-qp.eml",
    *headers("QP attachment", "MIME-Version: 1.0", "Content-Type: multipart/mixed; boundary=qp"),
    "",
    "--qp",
    "Content-Type: text/plain",
    "",
    "See attached.",
    "--qp",
    'Content-Type: text/csv; charset=utf-8; name="data.csv"',
    "Content-Transfer-Encoding: quoted-printable",
    "Content-Disposition: attachment",
    "",
    "name,price",
    "K=C3=A4se,3=2E50",
    "very long line =",
    "continued,0",
    "--qp--",
    "",
)

# 21-29 addresses
add(
    "21-group-to.eml",
    DATE,
    FROM,
    'To: Team: bob@example.net, "Carol C." <carol@example.com>;, dave@example.com',
    "Cc: Empty group:;",
    "Subject: Groups",
    "Message-ID: <groups@example.org>",
    "",
    "Hi.",
    "",
)
add(
    "22-undisclosed.eml",
    DATE,
    FROM,
    "To: undisclosed-recipients:;",
    "Subject: Undisclosed",
    "Message-ID: <undisclosed@example.org>",
    "",
    "Hi.",
    "",
)
add(
    "23-address-comments.eml",
    DATE,
    "From: alice@example.org (Alice Example)",
    "To: bob@example.net (Bob), Carol <carol@example.com> (work)",
    "Subject: Comments",
    "Message-ID: <comments@example.org>",
    "",
    "Hi.",
    "",
)
add(
    "24-missing-domain.eml",
    DATE,
    "From: root",
    "To: postmaster, Named <local>",
    "Subject: Local addresses",
    "",
    "Hi.",
    "",
)
add(
    "25-source-route.eml",
    DATE,
    FROM,
    "To: Bob <@relay1.example,@relay2.example:bob@example.net>",
    "Subject: Source route",
    "",
    "Hi.",
    "",
)
add(
    "26-quoted-names.eml",
    DATE,
    'From: "Doe, John \\"JD\\"" <john@example.com>',
    'To: "bob@example.net" <bob@example.net>, John Q. Public <jqp@example.com>',
    "Subject: Quoted names",
    "",
    "Hi.",
    "",
)
add(
    "27-many-recipients.eml",
    DATE,
    FROM,
    "To: " + ", ".join(f"user{i} <user{i}@example.com>" for i in range(8)),
    "Cc: " + ",\r\n ".join(f"cc{i}@example.com" for i in range(5)),
    "Bcc: hidden@example.com",
    "Subject: Many recipients",
    "",
    "Hi.",
    "",
)
add(
    "28-sender-replyto.eml",
    DATE,
    FROM,
    "Sender: Secretary <sec@example.org>",
    "Reply-To: list@example.org",
    TO,
    "Subject: Sender and Reply-To",
    "Message-ID: <sender@example.org>",
    "",
    "Hi.",
    "",
)
add(
    "29-in-reply-to.eml",
    DATE,
    FROM,
    TO,
    "Subject: Re: Plain text",
    "Message-ID: <reply1@example.org>",
    "In-Reply-To: <plain1@example.org>",
    "References: <plain1@example.org>",
    "",
    "> Hello Bob,",
    "",
    "Hi Alice.",
    "",
)

# 30-31 extension data
add(
    "30-extension-fields.eml",
    *headers(
        "Extension data",
        "MIME-Version: 1.0",
        "Content-Type: multipart/mixed; boundary=ext",
        "Content-Language: en",
        "Content-Location: http://example.org/msg",
    ),
    "",
    "--ext",
    "Content-Type: text/plain; charset=us-ascii",
    "Content-ID: <text1@example.org>",
    "Content-Description: The text",
    "Content-MD5: Q2hlY2sgSW50ZWdyaXR5IQ==",
    "Content-Language: en-GB, fr (French)",
    "Content-Location: text.txt",
    "Content-Disposition: inline",
    "",
    "Text.",
    "--ext--",
    "",
)
add(
    "31-disposition-params.eml",
    *headers(
        "Disposition parameters", "MIME-Version: 1.0", "Content-Type: multipart/mixed; boundary=dp"
    ),
    "",
    "--dp",
    "",
    "Text.",
    "--dp",
    "Content-Type: text/plain; name=notes.txt",
    'Content-Disposition: attachment; filename="notes.txt";',
    ' creation-date="Wed, 12 Feb 1997 16:29:51 -0500"; size=6',
    "",
    "Notes.",
    "--dp--",
    "",
)

# 32-33 more embedded
add(
    "32-nested-rfc822.eml",
    *headers("Fwd: Fwd: deep", "MIME-Version: 1.0", "Content-Type: message/rfc822"),
    "",
    "From: middle@example.com",
    "Subject: Fwd: deep",
    "MIME-Version: 1.0",
    "Content-Type: message/rfc822",
    "",
    "From: inner@example.com",
    "Subject: deep",
    "",
    "Innermost body.",
    "",
)
add(
    "33-delivery-report.eml",
    DATE,
    "From: MAILER-DAEMON@example.org (Mail Delivery System)",
    "To: alice@example.org",
    "Subject: Undelivered Mail Returned to Sender",
    "MIME-Version: 1.0",
    'Content-Type: multipart/report; report-type=delivery-status; boundary="dsn"',
    "",
    "--dsn",
    "Content-Description: Notification",
    "Content-Type: text/plain; charset=us-ascii",
    "",
    "Your message could not be delivered.",
    "",
    "--dsn",
    "Content-Description: Delivery report",
    "Content-Type: message/delivery-status",
    "",
    "Reporting-MTA: dns; mx.example.org",
    "",
    "Final-Recipient: rfc822; nobody@example.net",
    "Action: failed",
    "Status: 5.1.1",
    "",
    "--dsn",
    "Content-Description: Undelivered Message Headers",
    "Content-Type: text/rfc822-headers",
    "",
    "From: alice@example.org",
    "To: nobody@example.net",
    "Subject: hello",
    "",
    "--dsn--",
    "",
)

# 34-39 boundary and content-type variants
add(
    "34-preamble-epilogue.eml",
    *headers(
        "Preamble and epilogue", "MIME-Version: 1.0", "Content-Type: multipart/mixed; boundary=pe"
    ),
    "",
    "Preamble line 1",
    "Preamble line 2",
    "--pe",
    "",
    "Part one.",
    "--pe",
    "",
    "Part two.",
    "--pe--",
    "Epilogue line 1",
    "Epilogue line 2",
    "",
)
add(
    "35-boundary-whitespace.eml",
    *headers(
        "Boundary with trailing whitespace",
        "MIME-Version: 1.0",
        "Content-Type: multipart/mixed; boundary=ws",
    ),
    "",
    "--ws  ",
    "",
    "Part one.",
    "--ws\t",
    "",
    "Part two.",
    "--wsx",
    "Not a boundary line.",
    "--ws-- ",
    "",
)
add(
    "36-boundary-specials.eml",
    *headers(
        "Boundary with specials",
        "MIME-Version: 1.0",
        "Content-Type: multipart/alternative;",
        ' boundary="=_Part_0=_(x)/y:z?"',
    ),
    "",
    "--=_Part_0=_(x)/y:z?",
    "Content-Type: text/plain",
    "",
    "One.",
    "--=_Part_0=_(x)/y:z?",
    "Content-Type: text/html",
    "",
    "<p>Two.</p>",
    "--=_Part_0=_(x)/y:z?--",
    "",
)
add(
    "37-uppercase-type.eml",
    *headers(
        "Upper case type",
        "MIME-Version: 1.0",
        'Content-Type: TEXT/PLAIN; CHARSET="UTF-8"; FORMAT=Flowed',
        "Content-Transfer-Encoding: BASE64",
    ),
    "",
    *b64("Größe\r\n".encode()),
    "",
)
add(
    "38-content-type-comments.eml",
    *headers(
        "Comments in Content-Type",
        "MIME-Version: 1.0",
        'Content-Type: text/plain (plain text) ; charset="us-ascii" (ascii) ; format=fixed',
    ),
    "",
    "Body.",
    "",
)
add(
    "39-garbage-content-type.eml",
    *headers(
        "Garbage Content-Type",
        "MIME-Version: 1.0",
        "Content-Type: this is not a type",
        "Content-Transfer-Encoding: 7bit",
    ),
    "",
    "Body.",
    "",
)

# 40-52 malformed
add(
    "40-missing-final-boundary.eml",
    *headers(
        "Missing final boundary", "MIME-Version: 1.0", "Content-Type: multipart/mixed; boundary=mf"
    ),
    "",
    "--mf",
    "",
    "Part one.",
    "--mf",
    "Content-Type: text/html",
    "",
    "<p>Part two never closed.</p>",
    "",
)
add(
    "41-no-boundary-param.eml",
    *headers("Multipart without boundary", "MIME-Version: 1.0", "Content-Type: multipart/mixed"),
    "",
    "--x",
    "",
    "Text.",
    "--x--",
    "",
)
add(
    "42-boundary-never-appears.eml",
    *headers(
        "Boundary never appears",
        "MIME-Version: 1.0",
        "Content-Type: multipart/mixed; boundary=nowhere",
    ),
    "",
    "Just some text,",
    "no parts.",
    "",
)
add(
    "43-8bit-headers.eml",
    DATE,
    "From: Jürgen Müller <juergen@example.de>".encode(),
    TO,
    "Subject: Grüße aus Köln – ünïcödé".encode(),
    "",
    "Raw UTF-8 headers.",
    "",
)
add(
    "44-bare-lf.eml",
    *headers(
        "Bare LF line ends", "MIME-Version: 1.0", "Content-Type: multipart/mixed; boundary=lf"
    ),
    "",
    "--lf",
    "",
    "Line one.",
    "Line two.",
    "--lf",
    "Content-Type: text/html",
    "",
    "<p>x</p>",
    "--lf--",
    "",
    eol=b"\n",
)
add("45-long-line.eml", *headers("A 5000 character line"), "", "x" * 5000, "short", "")
add("46-empty.eml", eol=b"\r\n")
add("47-headers-only.eml", DATE, FROM, TO, "Subject: Headers only, no blank line")
add("48-headers-blank-line.eml", DATE, FROM, TO, "Subject: Headers and empty body", "", "")
add(
    "49-duplicate-headers.eml",
    DATE,
    FROM,
    TO,
    "Subject: First subject",
    "Subject: Second subject",
    "Content-Type: text/html; charset=utf-8",
    "Content-Type: text/plain; charset=us-ascii",
    "",
    "<p>Which type?</p>",
    "",
)
add(
    "50-continuation-at-start.eml",
    "  stray continuation line",
    DATE,
    FROM,
    TO,
    "Subject: Continuation at start",
    "",
    "Body.",
    "",
)
add(
    "51-unknown-cte.eml",
    *headers(
        "Unknown transfer encoding",
        "MIME-Version: 1.0",
        "Content-Type: multipart/mixed; boundary=uu",
    ),
    "",
    "--uu",
    "",
    "See attached.",
    "--uu",
    "Content-Type: application/octet-stream; name=a.bin",
    "Content-Transfer-Encoding: x-uuencode",
    "",
    "begin 644 a.bin",
    "#86)C",
    "`",
    "end",
    "--uu--",
    "",
)
add(
    "52-base64-garbage.eml",
    *headers(
        "Base64 with garbage",
        "MIME-Version: 1.0",
        "Content-Type: application/octet-stream",
        "Content-Transfer-Encoding: base64",
    ),
    "",
    "SGVs bG8g",
    "d29y!!bGQh",
    "  ",
    "SGVsbG8=",
    "trailing garbage after padding",
    "",
)
add(
    "53-rfc822-base64.eml",
    *headers(
        "Base64-encoded message/rfc822",
        "MIME-Version: 1.0",
        "Content-Type: multipart/mixed; boundary=m64",
    ),
    "",
    "--m64",
    "",
    "Text.",
    "--m64",
    "Content-Type: message/rfc822",
    "Content-Transfer-Encoding: base64",
    "",
    *b64(b"Subject: hidden\r\n\r\nHidden body.\r\n"),
    "--m64--",
    "",
)


def deep(level: int) -> list[str]:
    if level == 0:
        return ["Content-Type: text/plain", "", "Deepest."]
    b = f"lvl{level}"
    return [
        f"Content-Type: multipart/mixed; boundary={b}",
        "",
        f"--{b}",
        *deep(level - 1),
        f"--{b}--",
    ]


add("54-deep-nesting.eml", *headers("Ten levels deep", "MIME-Version: 1.0"), *deep(10), "")
add(
    "55-empty-parts.eml",
    *headers(
        "Empty parts", "MIME-Version: 1.0", "Content-Type: multipart/alternative; boundary=ep"
    ),
    "",
    "--ep",
    "--ep",
    "Content-Type: text/html",
    "",
    "--ep",
    "Content-Type: text/plain",
    "",
    "",
    "--ep--",
    "",
)
add(
    "56-octet-stream.eml",
    *headers(
        "Octet stream",
        "MIME-Version: 1.0",
        "Content-Type: application/octet-stream",
        "Content-Transfer-Encoding: binary",
    ),
    "",
    bytes(range(1, 10)) + b"\x00\xff\xfe",
    "",
)
add(
    "57-format-flowed.eml",
    *headers(
        "Format flowed",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=utf-8; format=flowed; delsp=yes",
    ),
    "",
    "This is a flowed ",
    "paragraph.",
    "",
    "> quoted",
    "",
)
add(
    "58-unknown-charset.eml",
    *headers(
        "Unknown charset",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=x-no-such-charset",
        "Content-Transfer-Encoding: 8bit",
    ),
    "",
    "Caf\xe9 \x80".encode("latin-1"),
    "",
)
add(
    "59-external-body.eml",
    *headers("External body", "MIME-Version: 1.0", "Content-Type: multipart/mixed; boundary=xb"),
    "",
    "--xb",
    "",
    "Text.",
    "--xb",
    'Content-Type: message/external-body; access-type=URL; URL="http://example.org/big.iso"',
    "",
    "Content-Type: application/octet-stream",
    "",
    "--xb--",
    "",
)
add(
    "60-mailing-list.eml",
    "Return-Path: <list-bounces@lists.example.org>",
    "Received: from mx.example.org by mail.example.net; Mon, 7 Feb 1994 21:52:30 -0800",
    DATE,
    "From: Alice Example <alice@example.org>",
    "To: dev@lists.example.org",
    "Subject: [dev] Release plan",
    "Message-ID: <list1@example.org>",
    "List-Id: Developers <dev.lists.example.org>",
    "List-Unsubscribe: <mailto:dev-leave@lists.example.org>",
    "Precedence: list",
    "MIME-Version: 1.0",
    "Content-Type: text/plain; charset=us-ascii",
    "",
    "Plan:",
    "1. test",
    "2. ship",
    "",
    "_______________________________________________",
    "dev mailing list",
    "",
)
add(
    "61-related-location.eml",
    *headers(
        "Related with Content-Location",
        "MIME-Version: 1.0",
        'Content-Type: multipart/related; boundary="rel"; type="text/html"; start="<root@x>"',
    ),
    "",
    "--rel",
    "Content-Type: text/html",
    "Content-ID: <root@x>",
    "Content-Location: http://example.org/index.html",
    "",
    '<img src="logo.gif">',
    "--rel",
    "Content-Type: image/gif",
    "Content-Transfer-Encoding: base64",
    "Content-Location: logo.gif",
    "",
    *b64(b"GIF89a" + bytes(40)),
    "--rel--",
    "",
)
add(
    "62-encoded-word-param.eml",
    *headers(
        "Encoded word in name parameter",
        "MIME-Version: 1.0",
        "Content-Type: multipart/mixed; boundary=ewp",
    ),
    "",
    "--ewp",
    "",
    "Text.",
    "--ewp",
    'Content-Type: application/pdf; name="=?UTF-8?B?w5xiZXJzaWNodC5wZGY=?="',
    'Content-Disposition: attachment; filename="=?UTF-8?B?w5xiZXJzaWNodC5wZGY=?="',
    "Content-Transfer-Encoding: base64",
    "",
    *b64(PDF[:60]),
    "--ewp--",
    "",
)
add(
    "63-encoded-display-name.eml",
    DATE,
    "From: =?UTF-8?Q?J=C3=B6rg_M=C3=BCller?= <joerg@example.de>",
    'To: "=?iso-8859-1?q?Fran=E7ois?=" <francois@example.fr>',
    "Subject: Encoded names",
    "",
    "Hi.",
    "",
)
add(
    "64-adjacent-encoded-words.eml",
    DATE,
    FROM,
    TO,
    "Subject: =?UTF-8?Q?Hello_?= =?UTF-8?Q?W=C3=B6rld?=  and =?utf-8?b?bW9yZQ==?=",
    "",
    "Hi.",
    "",
)
add(
    "65-html-only.eml",
    *headers(
        "HTML only",
        "MIME-Version: 1.0",
        'Content-Type: text/html; charset="windows-1252"',
        "Content-Transfer-Encoding: quoted-printable",
    ),
    "",
    "<html><body><p>Price: =8010</p></body></html>",
    "",
)
add(
    "66-folded-headers.eml",
    DATE,
    FROM,
    "To: First Person <first@example.com>,",
    "\tSecond Person <second@example.com>",
    "Subject: This subject is long enough that it has been folded",
    " over two lines",
    "",
    "Body.",
    "",
)
add(
    "67-close-delimiter-only.eml",
    *headers(
        "Only a close delimiter", "MIME-Version: 1.0", "Content-Type: multipart/mixed; boundary=co"
    ),
    "",
    "Text before.",
    "--co--",
    "",
)
add("68-no-envelope-headers.eml", "X-Note: nothing an envelope uses", "", "Body.", "")
add(
    "69-smime-signed-mixed.eml",
    *headers(
        "S/MIME signed mixed",
        "MIME-Version: 1.0",
        'Content-Type: multipart/signed; protocol="application/x-pkcs7-signature";',
        ' micalg=sha1; boundary="sm"',
    ),
    "",
    "--sm",
    'Content-Type: multipart/mixed; boundary="sm-mixed"',
    "",
    "--sm-mixed",
    "Content-Type: text/plain; charset=utf-8",
    "Content-Transfer-Encoding: 8bit",
    "",
    "Signed with an attachment ✓",
    "--sm-mixed",
    "Content-Type: text/plain; name=a.txt",
    "Content-Disposition: attachment; filename=a.txt",
    "",
    "attachment",
    "--sm-mixed--",
    "",
    "--sm",
    'Content-Type: application/x-pkcs7-signature; name="smime.p7s"',
    "Content-Transfer-Encoding: base64",
    "",
    *SIG,
    "--sm--",
    "",
)
add(
    "70-quoted-boundary-semicolon.eml",
    *headers(
        "Parameters in odd order",
        "MIME-Version: 1.0",
        'Content-Type: multipart/mixed;charset="x";boundary="a;b"',
    ),
    "",
    "--a;b",
    "",
    "One.",
    "--a;b--",
    "",
)


# 71-74: defects found in review
# Outlook Express for Mac nested multipart/alternative in multipart/mixed
# with the same boundary; the delimiter lines belong to the inner one until
# its close delimiter (as Dovecot reads it), so the text is part 1.1.
OEMAC = "B_3248296127_18352"
add(
    "71-same-boundary-nested.eml",
    *headers(
        "Outlook Express for Mac: one boundary, two multiparts",
        "Mime-version: 1.0",
        f'Content-type: multipart/mixed; boundary="{OEMAC}"',
    ),
    "",
    "> This message is in MIME format. Since your mail reader does not understand",
    "this format, some or all of this message may not be legible.",
    "",
    f"--{OEMAC}",
    f'Content-type: multipart/alternative; boundary="{OEMAC}"',
    "",
    "",
    f"--{OEMAC}",
    'Content-type: text/plain; charset="US-ASCII"',
    "Content-transfer-encoding: 7bit",
    "",
    "The readable text of the message.",
    "",
    f"--{OEMAC}",
    'Content-type: text/html; charset="US-ASCII"',
    "Content-transfer-encoding: quoted-printable",
    "",
    "<HTML><BODY>The readable text of the message.</BODY></HTML>",
    "",
    f"--{OEMAC}--",
    "",
    "",
    f"--{OEMAC}",
    'Content-type: application/octet-stream; name="notes.txt"',
    "Content-disposition: attachment",
    "Content-transfer-encoding: base64",
    "",
    *b64(b"notes\n"),
    "",
    f"--{OEMAC}--",
    "",
)
# The same with no preamble: the inner multipart's first delimiter follows
# its header's blank line at once, and that blank line is still its header's.
add(
    "72-same-boundary-no-preamble.eml",
    *headers(
        "One boundary, no preambles",
        "MIME-Version: 1.0",
        "Content-Type: multipart/mixed; boundary=same",
    ),
    "",
    "--same",
    "Content-Type: multipart/alternative; boundary=same",
    "",
    "--same",
    "Content-Type: text/plain",
    "",
    "Plain text.",
    "--same",
    "Content-Type: text/html",
    "",
    "<p>HTML text.</p>",
    "--same--",
    "",
    "--same",
    "Content-Type: text/plain; name=second.txt",
    "",
    "Second part.",
    "--same--",
    "",
)
# Comments are no part of an address (RFC 5322 3.2.2): an empty group with
# a comment has no members, and a comment inside or beside an angle-addr
# names nothing.
add(
    "73-address-comment-only.eml",
    DATE,
    "From: <user-from (comment)@ (comment) domain.org>",
    "Reply-To: <alice@example.org> (Alice)",
    "To: (nobody in particular)",
    "Cc: group:;, group2: (foo) ;",
    "Subject: Comments that are no addresses",
    "Message-ID: <comment-only@example.org>",
    "",
    "Hi.",
    "",
)
# Content-Transfer-Encoding: binary: BINARY[1] is the whole body as stored,
# its trailing line ends included (RFC 3516 4.2, RFC 3501 6.4.5 part 1).
add(
    "74-binary-body.eml",
    *headers(
        "Binary body",
        "MIME-Version: 1.0",
        "Content-Type: application/octet-stream",
        "Content-Transfer-Encoding: binary",
    ),
    "",
    b" -\xff",
    "",
    "",
    "",
)


def main() -> None:
    for name in sorted(os.listdir(HERE)):
        if name.endswith(".eml"):
            os.remove(os.path.join(HERE, name))
    for name, data in MESSAGES.items():
        with open(os.path.join(HERE, name), "wb") as handle:
            handle.write(data)
    print(f"wrote {len(MESSAGES)} messages")


if __name__ == "__main__":
    main()
