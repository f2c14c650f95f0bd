"""Realistic, reproducible mail for the benchmarks, written straight into Maildirs.

:func:`message` makes message ``i`` of a corpus: a few KB (sizes spread
from half a KB to about 20 KB), a Received chain, names and domains that
vary, replies with In-Reply-To/References, mailing-list headers, RFC 2047
encoded subjects, plain text, multipart/alternative with HTML, and now and
then a base64 attachment.  The same ``i`` and seed always give the same
bytes, so both servers get identical mailboxes and answers can be compared.

A few words are planted at known rates so that SEARCH has hits to find and
counts to check (:data:`PLANTED`); :data:`ABSENT` occurs nowhere, so a search
for it must read every message.

:func:`build_maildir` writes ``count`` messages into ``cur/`` the way an MTA
and a mail client would leave them: CRLF line ends, ``S=``/``W=`` sizes in
the name, flags after ``:2,`` (70 % seen, some flagged or answered) and the
file's modification time set to the delivery time (IMAP INTERNALDATE).
"""

from __future__ import annotations

import base64
import os
import random
import time

__all__ = ["ABSENT", "PLANTED", "build_maildir", "expected_hits", "message", "settle"]

#: (where, word, period, offset): message i has ``word`` there when
#: ``i % period == offset``.
PLANTED = {
    "subject": ("zephyr", 100, 7),
    "from": ("Quentin", 50, 3),
    "body": ("quokka", 200, 11),
}
#: A word in no message at all.
ABSENT = "xylophonist"

_FIRST = (
    "Alice Bob Carol Dave Erin Frank Grace Heidi Ivan Judy Mallory Niaj Olivia Peggy Rupert "
    "Sybil Trent Victor Walter Yasmin Zoe Amir Bea Chen Dmitri Elena Farid Gita Hana Igor Jana "
    "Kofi Lena Mateo Nadia Omar Priya Rosa Sven Tomasz Uma"
).split()
_LAST = (
    "Smith Jones Garcia Miller Davis Martin Lopez Wilson Anderson Thomas Moore Jackson White "
    "Harris Clark Lewis Walker Young Allen King Wright Scott Green Baker Adams Nelson Hill "
    "Campbell Mitchell Roberts Carter Phillips Evans Turner Torres Parker Collins Edwards"
).split()
_DOMAINS = (
    "example.com example.net example.org mail.example.com lists.example.org corp.example "
    "uni.example.edu shop.example.net news.example.com dev.example.org"
).split()
_COMMON = (
    "the of and to in is that for it as was with be by on not he this are or his from at which "
    "but have an they you were her she there been one all we their has would when if so what no "
    "more out up said about into them can only other time new some could these two may first "
    "then do any like my now over such our man me even most made after also did many before "
    "must through back years where much your way well down should because each just those "
    "people how too little state good very make world still own see men work long get here "
    "between both life being under never day same another know while last might us great old "
    "year off come since against go came right used take three meeting report release patch "
    "review build server client schedule budget invoice project update question thanks"
).split()
_SYLLABLES = (
    "ka lo mi ne ru sa ti vo ze ba do fi gu he ja ko lu ma ni po qui re so tu va we xi yo".split()
)
_LISTS = ("dev", "users", "announce", "security", "ops", "design")
_MAILERS = ("Thunderbird 115.4", "Apple Mail (2.3731)", "mutt 2.2.9", "Outlook 16.0", "K-9 Mail")


def _vocabulary(rng: random.Random) -> list[str]:
    words = list(_COMMON)
    seen = set(words)
    while len(words) < 3000:
        word = "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 4)))
        if word not in seen:
            seen.add(word)
            words.append(word)
    return words


def _wrap(words: list[str], width: int = 72) -> str:
    lines: list[str] = []
    line: list[str] = []
    length = 0
    for word in words:
        if length + len(word) + 1 > width and line:
            lines.append(" ".join(line))
            line, length = [], 0
        line.append(word)
        length += len(word) + 1
    if line:
        lines.append(" ".join(line))
    return "\r\n".join(lines)


class _Pool:
    """Paragraphs and subjects made once, picked per message."""

    def __init__(self, seed: int) -> None:
        rng = random.Random(seed)
        self.words = _vocabulary(rng)
        # Zipf-like: common words much more often than rare ones.
        weights = [1.0 / (rank + 10) for rank in range(len(self.words))]
        self.paragraphs: list[str] = []
        for _ in range(1500):
            count = rng.randint(30, 110)
            chosen = rng.choices(self.words, weights, k=count)
            chosen[0] = chosen[0].capitalize()
            self.paragraphs.append(_wrap(chosen) + ".")
        self.subjects = [
            " ".join(rng.choices(self.words, weights, k=rng.randint(2, 8))).capitalize()
            for _ in range(2000)
        ]
        self.blobs = [
            base64.encodebytes(rng.randbytes(rng.randint(600, 4000))).decode().replace("\n", "\r\n")
            for _ in range(20)
        ]


_POOLS: dict[int, _Pool] = {}


def _pool(seed: int) -> _Pool:
    pool = _POOLS.get(seed)
    if pool is None:
        pool = _POOLS[seed] = _Pool(seed)
    return pool


def _date(seconds: float) -> str:
    return time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime(seconds))


BASE_TIME = 1_672_531_200  # 2023-01-01 00:00:00 UTC


def message(i: int, seed: int = 1, when: float | None = None) -> bytes:
    """Message ``i`` of the corpus ``seed``, in wire form (CRLF)."""
    pool = _pool(seed)
    rng = random.Random(seed * 1_000_003 + i)
    if when is None:
        when = BASE_TIME + i * 311 + rng.randint(0, 300)
    # Every random draw is made in the same order as always: the same i
    # and seed must give the same bytes.
    first, last = rng.choice(_FIRST), rng.choice(_LAST)
    if i % PLANTED["from"][1] == PLANTED["from"][2]:
        first = PLANTED["from"][0]
    domain = rng.choice(_DOMAINS)
    sender = f"{first.lower()}.{last.lower()}@{domain}"
    subject, reply, listed = _subject(i, rng, pool)
    headers = [f"Return-Path: <{sender}>", *_received(rng, when)]
    headers.append(f'From: "{first} {last}" <{sender}>')
    headers += _addressees(rng, domain)
    headers.append(f"Subject: {subject}")
    headers.append(f"Date: {_date(when - 30)}")
    headers.append(f"Message-ID: <{seed}.{i}.{rng.getrandbits(32):08x}@{domain}>")
    headers += _threading_and_list(i, seed, rng, domain, reply, listed)
    headers.append("MIME-Version: 1.0")
    paragraphs = _paragraphs(i, rng, pool)
    text = f"Hello {first},\r\n\r\n" + "\r\n\r\n".join(paragraphs) + f"\r\n\r\n-- \r\n{last}\r\n"
    content, body = _body(i, rng, pool, paragraphs, text)
    headers += content
    return ("\r\n".join(headers) + "\r\n\r\n" + body).encode("utf-8")


def _subject(i: int, rng: random.Random, pool: _Pool) -> tuple[str, bool, bool]:
    """The Subject (planted word, "Re: ", now and then RFC 2047 encoded),
    and whether the message is a reply and from a list."""
    subject = rng.choice(pool.subjects)
    if i % PLANTED["subject"][1] == PLANTED["subject"][2]:
        subject = f"{subject} {PLANTED['subject'][0]}"
    reply = rng.random() < 0.3
    listed = rng.random() < 0.2
    if reply:
        subject = "Re: " + subject
    if rng.random() < 0.08:
        encoded = subject.replace(" ", "_").encode()
        subject = "=?UTF-8?Q?" + encoded.decode() + "_caf=C3=A9?="
    return subject, reply, listed


def _received(rng: random.Random, when: float) -> list[str]:
    received = []
    for hop in range(rng.randint(1, 4)):
        host = f"mx{rng.randint(1, 40)}.{rng.choice(_DOMAINS)}"
        received.append(
            f"Received: from {host} ({host} [192.0.2.{rng.randint(1, 254)}])\r\n"
            f"\tby mail.example.org with ESMTPS id {rng.getrandbits(48):012X}\r\n"
            f"\tfor <bench@example.org>; {_date(when - hop * 7)}"
        )
    return received


def _addressees(rng: random.Random, domain: str) -> list[str]:
    """To (sometimes folded, with others) and now and then Cc."""
    to = "Bench User <bench@example.org>"
    if rng.random() < 0.3:
        others = ", ".join(
            f"{rng.choice(_FIRST)} <{rng.choice(_FIRST).lower()}@{rng.choice(_DOMAINS)}>"
            for _ in range(rng.randint(1, 3))
        )
        to += ",\r\n\t" + others
    headers = [f"To: {to}"]
    if rng.random() < 0.15:
        headers.append(f"Cc: {rng.choice(_FIRST)} <{rng.choice(_FIRST).lower()}@{domain}>")
    return headers


def _threading_and_list(
    i: int, seed: int, rng: random.Random, domain: str, reply: bool, listed: bool
) -> list[str]:
    """In-Reply-To/References of a reply, a list's headers, a User-Agent."""
    headers = []
    if reply:
        parent = f"<{seed}.{max(i - rng.randint(1, 50), 0)}.{rng.getrandbits(32):08x}@{domain}>"
        headers.append(f"In-Reply-To: {parent}")
        headers.append(f"References: {parent}")
    if listed:
        name = rng.choice(_LISTS)
        headers.append(f"List-Id: {name.capitalize()} list <{name}.lists.example.org>")
        headers.append(f"List-Unsubscribe: <mailto:{name}-leave@lists.example.org>")
        headers.append("Precedence: list")
    if rng.random() < 0.5:
        headers.append(f"User-Agent: {rng.choice(_MAILERS)}")
    return headers


def _paragraphs(i: int, rng: random.Random, pool: _Pool) -> list[str]:
    """A body of a few KB: most a couple of paragraphs, a few long ones."""
    target = min(int(rng.lognormvariate(7.6, 0.7)), 18_000)
    paragraphs: list[str] = []
    size = 0
    while size < target:
        paragraph = rng.choice(pool.paragraphs)
        paragraphs.append(paragraph)
        size += len(paragraph) + 4
    if i % PLANTED["body"][1] == PLANTED["body"][2]:
        paragraphs.insert(
            rng.randint(0, len(paragraphs)), f"Have you seen the {PLANTED['body'][0]}?"
        )
    return paragraphs


def _body(
    i: int, rng: random.Random, pool: _Pool, paragraphs: list[str], text: str
) -> tuple[list[str], str]:
    """The content headers and the body: plain text, or alternative with
    HTML, or mixed with an attachment."""
    kind = rng.random()
    if kind < 0.25:
        boundary = f"=_alt_{rng.getrandbits(40):010x}"
        html = "".join(f"<p>{p}</p>\r\n" for p in paragraphs)
        body = (
            f"This is a multi-part message in MIME format.\r\n\r\n--{boundary}\r\n"
            "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
            f"{text}\r\n--{boundary}\r\n"
            "Content-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
            f"<html><body>\r\n{html}</body></html>\r\n--{boundary}--\r\n"
        )
        return [f'Content-Type: multipart/alternative; boundary="{boundary}"'], body
    if kind < 0.30:
        boundary = f"=_mix_{rng.getrandbits(40):010x}"
        body = (
            f"--{boundary}\r\n"
            "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
            f"{text}\r\n--{boundary}\r\n"
            f'Content-Type: application/pdf; name="report-{i}.pdf"\r\n'
            f'Content-Disposition: attachment; filename="report-{i}.pdf"\r\n'
            "Content-Transfer-Encoding: base64\r\n\r\n"
            f"{rng.choice(pool.blobs)}--{boundary}--\r\n"
        )
        return [f'Content-Type: multipart/mixed; boundary="{boundary}"'], body
    content = ["Content-Type: text/plain; charset=utf-8; format=flowed"]
    return [*content, "Content-Transfer-Encoding: 8bit"], text


def flags_of(i: int) -> str:
    """Maildir flag letters of message ``i``, in ASCII order."""
    letters = ""
    if i % 20 == 0:
        letters += "F"
    if i % 10 == 9:
        letters += "R"
    if i % 10 < 7:
        letters += "S"
    return letters


def expected_hits(count: int, where: str) -> int:
    """How many of messages 0..count-1 have the planted word of ``where``."""
    _word, period, offset = PLANTED[where]
    return len(range(offset, count, period))


def build_maildir(root: str, count: int, seed: int = 1, first: int = 0) -> int:
    """Write messages ``first .. first + count - 1`` into ``root/cur``; total octets."""
    for sub in ("cur", "new", "tmp"):
        os.makedirs(os.path.join(root, sub), mode=0o700, exist_ok=True)
    cur = os.path.join(root, "cur")
    total = 0
    pid = os.getpid()
    for i in range(first, first + count):
        when = BASE_TIME + i * 311 + (i * 7919) % 300
        data = message(i, seed, when)
        size = len(data)
        name = f"{when}.M{i % 1_000_000}P{pid}Q{i}.bench,S={size},W={size}:2,{flags_of(i)}"
        path = os.path.join(cur, name)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        os.utime(path, (when, when))
        total += size
    settle(root)
    return total


def settle(root: str, age: float = 60) -> None:
    """Date cur/ and new/ back, as in a mailbox nobody touched lately."""
    past = time.time() - age
    for sub in ("cur", "new"):
        os.utime(os.path.join(root, sub), (past, past))
