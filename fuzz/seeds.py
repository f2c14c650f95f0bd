"""Seed corpora for the fuzz targets, taken from the project's test data.

``python -m fuzz.run`` writes them into an empty corpus directory before a
run: the MIME corpus (``tests/corpus``), the searches recorded against
Dovecot (``tests/golden/dovecot.json``), the shipped configuration files
(``etc/``), and the commands and sessions the protocol tests send.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Iterator

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: Commands every IMAP corpus starts from (one per seed), as clients send them.
IMAP_COMMANDS = (
    b"a CAPABILITY\r\n",
    b"a LOGIN joe secret\r\n",
    b'a LOGIN "joe" {6}\r\nsecret\r\n',
    b"a LOGIN {3+}\r\njoe {6+}\r\nsecret\r\n",
    b"a AUTHENTICATE PLAIN AGpvZQBzZWNyZXQ=\r\n",
    b"a AUTHENTICATE LOGIN\r\nam9l\r\nc2VjcmV0\r\n",
    b"a STARTTLS\r\n",
    b'a ID ("name" "fuzz" "version" NIL)\r\n',
    b"a ENABLE UTF8=ACCEPT CONDSTORE\r\n",
    b"a SELECT INBOX (CONDSTORE)\r\n",
    b"a EXAMINE &AOk-t&AOk-\r\n",
    b'a CREATE "Sent Items" (USE (\\Sent))\r\n',
    b"a RENAME a/b c/d\r\n",
    b'a LIST (SUBSCRIBED) "" (INBOX "*") RETURN (CHILDREN STATUS (MESSAGES UIDNEXT))\r\n',
    b'a LSUB "" %\r\n',
    b"a STATUS INBOX (MESSAGES RECENT UIDNEXT UIDVALIDITY UNSEEN SIZE)\r\n",
    b"a FETCH 1:*,$ (UID FLAGS INTERNALDATE RFC822.SIZE ENVELOPE BODYSTRUCTURE)\r\n",
    b"a UID FETCH 1:4 (BODY.PEEK[1.2.HEADER.FIELDS.NOT (To Cc)]<0.100>"
    b" BINARY[2] BINARY.SIZE[1])\r\n",
    b"a STORE 1,3:5 +FLAGS.SILENT (\\Seen $Forwarded)\r\n",
    b"a UID STORE 7 (UNCHANGEDSINCE 12) -FLAGS \\Deleted\r\n",
    b"a SEARCH RETURN (MIN MAX COUNT) CHARSET UTF-8 OR FROM joe"
    b' NOT (SINCE 1-Feb-1994 LARGER 10) SUBJECT "x y"\r\n',
    b"a UID SEARCH UID 1:* HEADER X-Spam yes KEYWORD $Junk\r\n",
    b'a APPEND INBOX (\\Seen) "05-Jul-1994 02:04:25 -0730" {11}\r\nSubject: x\r\n\r\n',
    b"a APPEND INBOX ~{5+}\r\nab\x00cd\r\n",
    b"a UID COPY 1:3 Trash\r\n",
    b"a MOVE 2 Archive\r\n",
    b"a UID EXPUNGE 4:6\r\n",
    b"a IDLE\r\nDONE\r\n",
    b"a NAMESPACE\r\na UNSELECT\r\na CLOSE\r\na LOGOUT\r\n",
)

POP3_SESSIONS = (
    b"USER joe\r\nPASS secret\r\nSTAT\r\nLIST\r\nUIDL 1\r\nRETR 1\r\n"
    b"TOP 2 0\r\nDELE 1\r\nRSET\r\nQUIT\r\n",
    b"CAPA\r\nAUTH PLAIN\r\nAGpvZQBzZWNyZXQ=\r\nLAST\r\nNOOP\r\n",
    b"APOP joe 0123456789abcdef0123456789abcdef\r\nSTLS\r\n",
)

SASL_MESSAGES = (
    b"\x00joe\x00secret",
    b"joe\x00joe\x00secret",
    b"\njoe\nsecret",
    b"joe 0123456789abcdef0123456789abcdef",
    b"n,,n=joe,r=abcdef",
)

MAILBOX_NAMES = (
    b"INBOX",
    b"&AOk-t&AOk-",
    b"A &- B",
    b"Entw&APw-rfe",
    b"&2D3eAA-",
    b"~peter/mail/&U,BTFw-",
)

USERS_FILES = (
    b"alice:{PLAIN}secret:1000:1000::/home/alice::\n"
    b"# a comment\n\n"
    b"bob:{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$c2FsdA$aGFzaA::::::userdb_quota=1G\n",
    b"carol:{BLF-CRYPT}$2b$12$abcdefghijklmnopqrstuu5gS8m7l0A1h3W4Xe9kYzq9QnQ3xU1u"
    b":::Carol:/srv/carol\r\n",
)


def _files(pattern: str) -> Iterator[bytes]:
    for path in sorted(glob.glob(os.path.join(ROOT, pattern))):
        with open(path, "rb") as handle:
            yield handle.read()


def _golden() -> dict[str, object]:
    with open(os.path.join(ROOT, "tests", "golden", "dovecot.json")) as handle:
        data: dict[str, object] = json.load(handle)
    return data


def _imap() -> Iterator[bytes]:
    yield from IMAP_COMMANDS
    golden = _golden()
    searches = golden.get("searches", [])
    assert isinstance(searches, list)
    for search in searches:
        yield b"a SEARCH " + str(search["criteria"]).encode() + b"\r\n"
    messages = golden.get("messages", {})
    assert isinstance(messages, dict)
    sections = {
        f"{kind.upper()}[{section}]"
        for answers in messages.values()
        for kind, by_section in answers.items()
        if kind in ("body", "binary") and isinstance(by_section, dict)
        for section in by_section
    }
    for section in sorted(sections):
        yield b"a FETCH 1 " + section.encode() + b"\r\n"


def seeds(target: str) -> list[bytes]:
    """The seed inputs for ``target`` (a name of :data:`fuzz.targets.TARGETS`)."""
    if target == "imap_command":
        return list(_imap())
    if target in ("imap_framer", "imap_session"):
        # The first line chooses where the stream is cut.
        return [b"\x03\x01\x07\n" + command for command in _imap()]
    if target in ("mime", "downgrade"):
        return list(_files("tests/corpus/*.eml"))
    if target == "mutf7":
        return list(MAILBOX_NAMES)
    if target == "sasl":
        return list(SASL_MESSAGES)
    if target == "pop3_session":
        return [b"\x05\n" + session for session in POP3_SESSIONS]
    if target == "users_file":
        return list(USERS_FILES)
    if target == "config":
        return list(_files("etc/*.toml"))
    raise KeyError(target)
