"""Record Dovecot's answers for the corpus into tests/golden/dovecot.json.

Not run by the tests.  Run as root on a Debian machine from the checkout:

    python tests/golden/make_golden.py

It installs ``dovecot-imapd`` with apt-get if ``dovecot`` is missing, starts a
private Dovecot on a loopback port (passwd-file auth, Maildir, all in a
temporary directory, as user ``nobody``), APPENDs every corpus message with
imaplib, and records for each message the raw FETCH answers for ENVELOPE,
BODYSTRUCTURE and BODY, every BODY[section] mailsrv can name, HEADER.FIELDS,
and BINARY / BINARY.SIZE of every leaf part.  Messages are appended in the
wire form storage hands out (bare LF turned into CRLF), so offsets compare.

It also records SORT, ESORT and THREAD answers (``sorts``) over a second
mailbox holding the corpus and tests/golden/sortcorpus.py's messages;
``--sorts-only`` records just those into the existing file.
"""

from __future__ import annotations

import contextlib
import glob
import imaplib
import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, ROOT)

from mailsrv.mime.structure import MessageStructure, Part, parse  # noqa: E402
from tests.golden import sortcorpus  # noqa: E402

CONFIG = """\
base_dir = {tmp}/run
state_dir = {tmp}/state
log_path = {tmp}/dovecot.log
protocols = imap
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain
default_internal_user = {user}
default_login_user = {user}
first_valid_uid = 1
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {tmp}/passwd
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={tmp}/home/%u
}}
mail_location = maildir:~/Maildir
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
}}
service anvil {{
  chroot =
}}
service imap-login {{
  chroot =
}}
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ensure_dovecot() -> None:
    if shutil.which("dovecot"):
        return
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "dovecot-imapd"], check=True, env=env)


def raw_answer(data: Sequence[bytes | tuple[bytes, bytes] | None]) -> bytes:
    """Reassemble imaplib's pieces of one FETCH answer into its wire text."""
    out = b""
    for item in data:
        if isinstance(item, tuple):
            out += item[0] + b"\r\n" + item[1]
        elif item is not None:
            out += item
    return out


def sections(structure: MessageStructure) -> list[str]:
    names = [
        "",
        "HEADER",
        "TEXT",
        "HEADER.FIELDS (FROM SUBJECT CONTENT-TYPE)",
        "HEADER.FIELDS.NOT (FROM SUBJECT CONTENT-TYPE)",
    ]

    def walk(msg: Part, prefix: str) -> None:
        parts = msg.children or (msg,)
        for number, part in enumerate(parts, 1):
            here = f"{prefix}{number}"
            names.extend([here, here + ".MIME"])
            if part.children:
                walk(part, here + ".")
            elif part.message is not None:
                names.extend([here + ".HEADER", here + ".TEXT"])
                walk(part.message, here + ".")

    walk(structure.root, "")
    return names


def leaves(structure: MessageStructure) -> list[str]:
    out: list[str] = []

    def walk(msg: Part, prefix: str) -> None:
        parts = msg.children or (msg,)
        for number, part in enumerate(parts, 1):
            here = f"{prefix}{number}"
            if part.children:
                walk(part, here + ".")
            elif part.message is not None:
                walk(part.message, here + ".")
            else:
                out.append(here)

    walk(structure.root, "")
    return out


#: SEARCH programs recorded over the whole corpus mailbox: criteria, and an
#: optional UTF-8 string sent as a literal after them (CHARSET UTF-8).
SEARCHES: list[tuple[str, str | None]] = [
    ("SUBJECT text", None),
    ("SUBJECT PLAIN", None),
    ("SUBJECT fwd", None),
    ('SUBJECT "=?UTF-8?"', None),
    ("FROM alice", None),
    ('FROM "example.org"', None),
    ("FROM carol", None),
    ("FROM user-from@domain.org", None),
    ("FROM comment", None),
    ('FROM "<alice@example.org>"', None),
    ('HEADER From "(comment)"', None),
    ("TO bob", None),
    ("TO undisclosed", None),
    ('TO "Bob Example <bob@example.net>"', None),
    ("TO nobody", None),
    ("CC example", None),
    ("CC group2", None),
    ("CC foo", None),
    ("BCC example", None),
    ("HEADER Message-ID example", None),
    ("HEADER List-Id dev", None),
    ('HEADER Cc ""', None),
    ('HEADER Subject ""', None),
    ('HEADER Date ""', None),
    ("HEADER Content-Type multipart", None),
    ('HEADER X-Unknown-Field ""', None),
    ('BODY "plain text message"', None),
    ("BODY hello", None),
    ('BODY "Original text"', None),
    ('BODY "=C3"', None),
    ("BODY boundary", None),
    ('BODY "readable text"', None),
    ('TEXT "Original message"', None),
    ("TEXT alice", None),
    ("TEXT multipart", None),
    ("SENTBEFORE 1-Jan-2000", None),
    ("SENTON 7-Feb-1994", None),
    ("SENTSINCE 1-Jan-2020", None),
    ("LARGER 2000", None),
    ("SMALLER 300", None),
    ("OR SUBJECT pgp SUBJECT s/mime", None),
    ("NOT SUBJECT fwd SUBJECT message", None),
    ("SUBJECT", "Grüße"),
    ("SUBJECT", "äpfel"),
    ("SUBJECT", "Café"),
    ("SUBJECT", "CRÈME"),
    ("SUBJECT", "привет"),
    ("SUBJECT", "日本語"),
    ("SUBJECT", "Wörld"),
    ("FROM", "jörg"),
    ("BODY", "grüße"),
    ("BODY", "münchen"),
    ("TEXT", "köln"),
]


def record_searches(client: imaplib.IMAP4) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for criteria, literal in SEARCHES:
        client.untagged_responses.clear()
        if literal is None:
            typ, data = client.search(None, criteria)
        else:
            # imaplib sends its literal as bytes (typeshed says str).
            client.literal = literal.encode("utf-8")  # type: ignore[assignment]
            typ, data = client.search("UTF-8", criteria)
        result = [int(n) for n in data[0].split()] if typ == "OK" and data[0] else []
        out.append({"criteria": criteria, "literal": literal, "status": typ, "result": result})
    return out


_SORT_KEYS = ("ARRIVAL", "CC", "DATE", "FROM", "SIZE", "SUBJECT", "TO", "DISPLAYFROM", "DISPLAYTO")

#: SORT, ESORT and THREAD commands recorded over the sorting mailbox: the
#: command after its tag, as sent.
SORTS: list[str] = [
    *(f"SORT ({key}) UTF-8 ALL" for key in _SORT_KEYS),
    *(f"SORT (REVERSE {key}) UTF-8 ALL" for key in _SORT_KEYS),
    "SORT (SUBJECT DATE) UTF-8 ALL",
    "SORT (SUBJECT REVERSE DATE) UTF-8 ALL",
    "SORT (REVERSE SUBJECT REVERSE DATE) UTF-8 ALL",
    "SORT (FROM REVERSE SIZE) UTF-8 ALL",
    "SORT (CC TO DATE) UTF-8 ALL",
    'SORT (REVERSE ARRIVAL) US-ASCII SUBJECT "re:"',
    "SORT (DATE) UTF-8 NOT FROM alice",
    "UID SORT (SUBJECT) UTF-8 ALL",
    "UID SORT (REVERSE DATE) UTF-8 UID 10:60",
    "SORT RETURN (MIN MAX COUNT) (DATE) UTF-8 ALL",
    "SORT RETURN (ALL) (REVERSE SUBJECT) UTF-8 ALL",
    "SORT RETURN () (SUBJECT) UTF-8 SUBJECT meeting",
    "UID SORT RETURN (MIN MAX) (REVERSE DATE) UTF-8 ALL",
    "SORT RETURN (COUNT) (SUBJECT) UTF-8 SUBJECT nothing-matches",
    "SORT RETURN (PARTIAL 5:10) (SUBJECT) UTF-8 ALL",
    "SORT RETURN (PARTIAL 120:200) (SUBJECT) UTF-8 ALL",
    "SEARCH RETURN (PARTIAL 3:7) ALL",
    'UID SEARCH RETURN (PARTIAL 1:3 COUNT) SUBJECT "re:"',
    'SEARCH RETURN (CONTEXT COUNT) SUBJECT "re:"',
    *(f"THREAD {algorithm} UTF-8 ALL" for algorithm in ("ORDEREDSUBJECT", "REFERENCES", "REFS")),
    *(
        f'THREAD {algorithm} UTF-8 SUBJECT "re:"'
        for algorithm in ("ORDEREDSUBJECT", "REFERENCES", "REFS")
    ),
    "UID THREAD REFERENCES UTF-8 NOT SUBJECT meeting",
    'SORT (SUBJECT) UTF-8 SUBJECT "not in mailbox"',
    'THREAD REFERENCES UTF-8 SUBJECT "not in mailbox"',
]


def raw_command(client: imaplib.IMAP4, text: str) -> dict[str, object]:
    """One command's untagged responses and tagged status, as on the wire."""
    tag = client._new_tag()
    client.send(tag + b" " + text.encode("utf-8") + b"\r\n")
    lines: list[str] = []
    while True:
        line = client.readline()
        if line.startswith(tag + b" "):
            status = line[len(tag) + 1 :].split(b" ", 1)[0].decode()
            return {"command": text, "untagged": lines, "status": status}
        lines.append(line.decode("utf-8").rstrip("\r\n"))


def record_sorts(client: imaplib.IMAP4, files: list[str]) -> list[dict[str, object]]:
    """Fill a mailbox with the corpus and the sorting messages, with
    :func:`sortcorpus.internal_date` dates, and record :data:`SORTS`."""
    client.create("Sorting")
    corpus = []
    for path in files:
        with open(path, "rb") as handle:
            corpus.append(handle.read().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))
    made = corpus + sortcorpus.messages()
    for index, data in enumerate(made):
        when = imaplib.Time2Internaldate(sortcorpus.internal_date(index, len(made)))
        client.append("Sorting", None, when, data)
    client.select("Sorting")
    return [raw_command(client, text) for text in SORTS]


def sorts_only() -> None:
    """Record :data:`SORTS` into the existing golden file."""
    out = os.path.join(HERE, "dovecot.json")
    with open(out) as handle:
        golden = json.load(handle)
    with private_dovecot() as client:
        files = sorted(glob.glob(os.path.join(ROOT, "tests", "corpus", "*.eml")))
        accepted = [
            path for path in files if "append" not in golden["messages"][os.path.basename(path)]
        ]
        golden["sorts"] = record_sorts(client, accepted)
    with open(out, "w") as handle:
        json.dump(golden, handle, indent=1, sort_keys=True, ensure_ascii=True)
    print(f"wrote {out}")


@contextlib.contextmanager
def private_dovecot() -> Iterator[imaplib.IMAP4]:
    """A logged-in client of a private Dovecot, stopped after."""
    ensure_dovecot()
    tmp = tempfile.mkdtemp(prefix="mailsrv-golden-")
    nobody = pwd.getpwnam("nobody")
    port = free_port()
    for sub in ("run", "state", "home"):
        os.makedirs(os.path.join(tmp, sub))
    with open(os.path.join(tmp, "passwd"), "w") as handle:
        handle.write("golden:{PLAIN}secret\n")
    config = os.path.join(tmp, "dovecot.conf")
    with open(config, "w") as handle:
        handle.write(
            CONFIG.format(tmp=tmp, user="nobody", uid=nobody.pw_uid, gid=nobody.pw_gid, port=port)
        )
    os.chown(os.path.join(tmp, "home"), nobody.pw_uid, nobody.pw_gid)
    os.chmod(tmp, 0o755)
    subprocess.run(["dovecot", "-c", config], check=True)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                client = imaplib.IMAP4("127.0.0.1", port)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        client.login("golden", "secret")
        yield client
        client.logout()
    finally:
        subprocess.run(["doveadm", "-c", config, "stop"], check=False)
        shutil.rmtree(tmp, ignore_errors=True)


def record_message(client: imaplib.IMAP4, seq: int, wire: bytes) -> dict[str, object]:
    """The raw FETCH answers for message *seq*, appended as *wire*."""
    structure = parse(wire)
    record: dict[str, object] = {}
    # imaplib keeps untagged answers of failed commands for the next
    # one: start every command with a clean slate.
    client.untagged_responses.clear()
    typ, answer = client.fetch(str(seq), "(RFC822.SIZE ENVELOPE BODY BODYSTRUCTURE)")
    record["fetch"] = raw_answer(answer).decode("latin-1")
    body: dict[str, object] = {}
    for section in sections(structure):
        client.untagged_responses.clear()
        typ, answer = client.fetch(str(seq), f"(BODY.PEEK[{section}])")
        body[section] = raw_answer(answer).decode("latin-1") if typ == "OK" else None
    record["body"] = body
    binary: dict[str, object] = {}
    for part in leaves(structure):
        client.untagged_responses.clear()
        typ, answer = client.fetch(str(seq), f"(BINARY.PEEK[{part}] BINARY.SIZE[{part}])")
        binary[part] = (
            raw_answer(answer).decode("latin-1")
            if typ == "OK"
            else "NO " + raw_answer(answer[:1]).decode("latin-1")
        )
    record["binary"] = binary
    return record


def record_messages(client: imaplib.IMAP4, files: list[str]) -> dict[str, object]:
    """APPEND every corpus file and record its answers, or the refusal."""
    messages: dict[str, object] = {}
    client.select("INBOX")
    seq = 0
    for path in files:
        with open(path, "rb") as handle:
            data = handle.read()
        wire = data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        name = os.path.basename(path)
        try:
            typ, appended = client.append("INBOX", None, None, wire)
        except client.error as exc:
            messages[name] = {"append": str(exc)}
            continue
        if typ != "OK":
            messages[name] = {"append": f"{typ} {appended[0].decode('latin-1')}"}
            continue
        seq += 1
        client.noop()
        messages[name] = record_message(client, seq, wire)
    return messages


def main() -> None:
    if "--sorts-only" in sys.argv[1:]:
        sorts_only()
        return
    version = subprocess.run(["dovecot", "--version"], capture_output=True, text=True)
    golden: dict[str, object] = {"server": "Dovecot " + version.stdout.strip()}
    files = sorted(glob.glob(os.path.join(ROOT, "tests", "corpus", "*.eml")))
    with private_dovecot() as client:
        messages = record_messages(client, files)
        golden["messages"] = messages
        golden["searches"] = record_searches(client)
        accepted = [p for p in files if "append" not in messages[os.path.basename(p)]]  # type: ignore[operator]
        golden["sorts"] = record_sorts(client, accepted)
    out = os.path.join(HERE, "dovecot.json")
    with open(out, "w") as handle:
        json.dump(golden, handle, indent=1, sort_keys=True, ensure_ascii=True)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
