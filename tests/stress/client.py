"""A model-checking stress client: concurrent IMAP sessions on shared
mailboxes, every response checked against what the RFC allows.

Each round picks some sessions and sends each one command (random APPEND,
STORE of flags and keywords, COPY, MOVE, EXPUNGE, SEARCH, FETCH, STATUS,
NOOP, IDLE; now and then a delivery by ``mailsrv deliver`` and a POP3
session, :mod:`tests.stress.pop3`), then reads every answer; the server
interleaves the sessions as it likes.  The model checks:

* a session's view: EXISTS never shrinks, EXPUNGE names a message that
  exists, UIDs ascend with sequence numbers and never change for one;
* no EXPUNGE during FETCH, STORE or SEARCH (RFC 3501 7.4.1);
* every keyword in a FETCH FLAGS was announced by FLAGS first (7.2.6);
* \\Recent for a message in at most one session (2.3.2);
* a UID is given once (APPENDUID, COPYUID: RFC 4315) and UIDNEXT never
  goes back (STATUS);
* a message's body never changes for its UID, and a copy's is its
  source's (and POP3's RETR gives the same octets);
* with CONDSTORE (every other session enables it; STATUS asks for
  HIGHESTMODSEQ): HIGHESTMODSEQ never goes back, and a message's MODSEQ
  never goes back and grows when its flags change (RFC 7162);
* an IDLE session hears of new mail while idling, and after DONE its
  view is the mailbox's (:meth:`Session.end_idle`);
* at the end, once every session has synchronised, all see the same
  messages with the same flags, and none a message POP3 deleted.

``run(...)`` is the short deterministic form the suite runs
(tests/test_stress.py); ``python -m tests.stress.client --clients 50
--seconds 600`` is the long one (docs/security.md).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import random
import select
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import ClassVar

from tests.stress.model import Model as Model  # re-exported: its home until now
from tests.stress.wire import Response, ResponseReader, Value, find, parse

SYSTEM_FLAGS = frozenset({"\\SEEN", "\\ANSWERED", "\\FLAGGED", "\\DELETED", "\\DRAFT", "\\RECENT"})
KEYWORDS = ("$k1", "$k2", "$k3", "Work", "Later")
STORE_FLAGS = ("\\Seen", "\\Flagged", "\\Deleted", "\\Answered", *KEYWORDS)
#: Commands during which the server must not send EXPUNGE (RFC 3501 7.4.1).
NO_EXPUNGE = frozenset({"FETCH", "STORE", "SEARCH"})
MAILBOXES = ("INBOX", "Archive")
#: Seconds to wait for one round's answers; a deadline, not a pace.
DEADLINE = 60.0


def body_of(label: str) -> bytes:
    return (
        f"From: stress@test\r\nSubject: {label}\r\nMessage-ID: <{label}@stress>\r\n\r\n"
        f"{label} body\r\n"
    ).encode()


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def uid_set(value: Value) -> list[int]:
    """``1:3,7`` (as an atom or a number) as a list of UIDs."""
    out: list[int] = []
    for part in str(value).split(","):
        low, _, high = part.partition(":")
        out.extend(range(int(low), int(high or low) + 1))
    return out


class Session:
    """One IMAP connection with its view of the selected mailbox."""

    def __init__(self, name: str, sock: socket.socket, model: Model, mailbox: str) -> None:
        self.name = name
        self.model = model
        self.mailbox = mailbox
        self.sock = sock
        self.sock.setblocking(False)
        self.reader = ResponseReader()
        self.queue: list[bytes] = []
        self.tag_number = 0
        #: UIDs by sequence number (None: not known yet).
        self.view: list[int | None] = []
        self.flags: dict[int, frozenset[str]] = {}
        self.announced: set[str] = set()
        self.uidnext: dict[str, int] = {}
        self.pending: tuple[str, str, bytes] | None = None  # (tag, command name, line)
        #: MODSEQ of each UID as last fetched (CONDSTORE, RFC 7162 3.1.4).
        self.modseqs: dict[int, int] = {}
        #: HIGHESTMODSEQ last heard per mailbox.
        self.highest: dict[str, int] = {}
        #: In IDLE (the continuation came): no command may be sent but DONE.
        self.idling = False
        #: Untagged responses heard since IDLE began, and the model's
        #: additions to the mailbox then.
        self.heard_in_idle = 0
        self.additions_at_idle = 0
        #: Sequence numbers the command in flight got a FETCH for.
        self.fetched_numbers: set[int] = set()

    # -- the wire ---------------------------------------------------------------

    def send(self, name: str, line: bytes) -> str:
        self.tag_number += 1
        tag = f"{self.name}.{self.tag_number}"
        self.pending = (tag, name, line)
        self.fetched_numbers = set()
        self.model.count(name)
        self.sock.setblocking(True)
        self.sock.sendall(tag.encode() + b" " + line + b"\r\n")
        self.sock.setblocking(False)
        self.model.commands += 1
        return tag

    def receive(self) -> Response | None:
        """Read what arrived; handle the untagged responses; the tagged
        answer to the command in flight once it came (else None)."""
        if not self.queue:  # what an earlier answer left comes first
            try:
                data = self.sock.recv(1 << 16)
            except BlockingIOError:
                return None
            if not data:
                raise ConnectionError(f"{self.name}: connection closed")
            self.queue.extend(self.reader.feed(data))
        while self.queue:
            raw = self.queue.pop(0)
            response = parse(raw)
            if response.kind == "tagged":
                if self.idling and self.pending and self.pending[2] != b"DONE":
                    self.model.violation(self.name, "tagged answer while idling", raw)
                self.pending = None
                self.idling = False
                self.after(response)
                return response
            if response.kind == "*":
                if self.idling:
                    self.heard_in_idle += 1
                self.untagged(response)
            elif response.kind == "+" and self.pending and self.pending[1] == "IDLE":
                return response
        return None

    def command(self, name: str, line: bytes) -> Response:
        """Send one command and wait for its answer (setup and the end)."""
        self.send(name, line)
        return wait_all([self])[self]

    # -- the model --------------------------------------------------------------

    def untagged(self, r: Response) -> None:
        if r.status == "OK" and r.code_name == "COPYUID":
            self.after(r)  # MOVE's COPYUID comes untagged (RFC 6851 4.3)
            return
        if r.status == "OK" and r.code_name == "HIGHESTMODSEQ" and r.code and len(r.code) == 2:
            self._highest(self.mailbox, r.code[1], r)
            return
        check = self._CHECKS.get(r.name or "")
        if check is not None:
            check(self, r)

    def _exists(self, r: Response) -> None:
        if r.number is None:
            return
        if r.number < len(self.view):
            self.model.violation(self.name, "EXISTS went down without EXPUNGE", r.raw)
        self.view.extend([None] * (r.number - len(self.view)))

    def _expunge(self, r: Response) -> None:
        doing = self.pending[1] if self.pending else ""
        if doing in NO_EXPUNGE:
            self.model.violation(self.name, f"EXPUNGE during {doing}", r.raw)
        if r.number is None or not 1 <= r.number <= len(self.view):
            self.model.violation(self.name, f"EXPUNGE of {r.number} of {len(self.view)}", r.raw)
        else:
            del self.view[r.number - 1]

    def _flags(self, r: Response) -> None:
        if r.values and isinstance(r.values[0], list):
            self.announced = {str(f).upper() for f in r.values[0]}

    def _search(self, r: Response) -> None:
        doing = self.pending[1] if self.pending else ""
        if doing == "SEARCH" and any(isinstance(n, int) and n > len(self.view) for n in r.values):
            self.model.violation(self.name, "SEARCH names a message beyond EXISTS", r.raw)

    def _status(self, r: Response) -> None:
        if len(r.values) != 2 or not isinstance(r.values[1], list):
            return
        name = r.values[0]
        mailbox = name.decode() if isinstance(name, bytes) else str(name)
        try:
            self._highest(mailbox, find(r.values[1], "HIGHESTMODSEQ"), r)
        except KeyError:
            pass
        try:
            value = find(r.values[1], "UIDNEXT")
        except KeyError:
            return
        if isinstance(value, int):
            if value < self.uidnext.get(mailbox, 0):
                self.model.violation(self.name, f"UIDNEXT of {mailbox} went back", r.raw)
            self.uidnext[mailbox] = value

    def _highest(self, mailbox: str, value: Value, r: Response) -> None:
        """HIGHESTMODSEQ never goes back (RFC 7162 3.1.2) for this session,
        and STATUS's (the mailbox's, not a session's view, which may lag
        while EXPUNGEs wait: 3.2.10) is not below what anyone saw
        before the round began."""
        if not isinstance(value, int):
            self.model.violation(self.name, "HIGHESTMODSEQ is no number", r.raw)
            return
        if value < self.highest.get(mailbox, 0):
            self.model.violation(self.name, f"HIGHESTMODSEQ of {mailbox} went back", r.raw)
        if r.name == "STATUS" and value < self.model.modseq_floor.get(mailbox, 0):
            self.model.violation(
                self.name,
                f"HIGHESTMODSEQ of {mailbox} below the MODSEQ "
                f"{self.model.modseq_floor[mailbox]} seen before",
                r.raw,
            )
        self.highest[mailbox] = max(value, self.highest.get(mailbox, 0))
        self.model.saw_modseq(mailbox, value)

    def _fetched_modseq(self, r: Response, uid: int, value: Value, changed: bool) -> None:
        """A message's MODSEQ never goes back, and grows when its flags
        change (RFC 7162 3.1.3, 3.1.4)."""
        if not (isinstance(value, list) and len(value) == 1 and isinstance(value[0], int)):
            self.model.violation(self.name, "MODSEQ is not (n)", r.raw)
            return
        modseq = value[0]
        old = self.modseqs.get(uid)
        if old is not None and modseq < old:
            self.model.violation(self.name, f"MODSEQ of UID {uid} went back from {old}", r.raw)
        elif old is not None and changed and modseq == old:
            self.model.violation(self.name, f"flags of UID {uid} changed, MODSEQ {old} kept", r.raw)
        self.modseqs[uid] = modseq
        self.model.saw_modseq(self.mailbox, modseq)

    def _fetch(self, r: Response) -> None:
        items = r.values[0] if r.values else None
        if r.number is None or not isinstance(items, list):
            self.model.violation(self.name, "FETCH without a number and a list", r.raw)
            return
        if not 1 <= r.number <= len(self.view):
            self.model.violation(
                self.name, f"FETCH of {r.number} beyond EXISTS {len(self.view)}", r.raw
            )
            return
        self.fetched_numbers.add(r.number)
        uid = self._fetched_uid(r, items)
        if uid is None:
            return
        try:
            flags = find(items, "FLAGS")
        except KeyError:
            flags = None
        before = self.flags.get(uid)
        if isinstance(flags, list):
            self._fetched_flags(r, uid, frozenset(str(f) for f in flags))
        try:
            modseq = find(items, "MODSEQ")
        except KeyError:
            pass
        else:
            changed = before is not None and self.flags.get(uid) != before
            self._fetched_modseq(r, uid, modseq, changed)
        for i in range(0, len(items) - 1, 2):
            body = items[i + 1]
            if str(items[i]).upper().startswith("BODY[]") and isinstance(body, bytes):
                self.model.body(self.name, self.mailbox, uid, digest(body))

    def _fetched_flags(self, r: Response, uid: int, names: frozenset[str]) -> None:
        for flag in names:
            if flag.upper() not in SYSTEM_FLAGS and flag.upper() not in self.announced:
                self.model.violation(self.name, f"{flag} used before FLAGS announced it", r.raw)
        if any(f.upper() == "\\RECENT" for f in names):
            seen = self.model.recent.setdefault((self.mailbox, uid), self.name)
            if seen != self.name:
                self.model.violation(self.name, f"UID {uid} \\Recent in {seen} too", r.raw)
        self.flags[uid] = frozenset(f for f in names if f.upper() != "\\RECENT")

    _CHECKS: ClassVar[dict[str, Callable[[Session, Response], None]]] = {
        "EXISTS": _exists,
        "EXPUNGE": _expunge,
        "FLAGS": _flags,
        "SEARCH": _search,
        "STATUS": _status,
        "FETCH": _fetch,
    }

    def _fetched_uid(self, r: Response, items: list[Value]) -> int | None:
        assert r.number is not None
        known = self.view[r.number - 1]
        try:
            uid = find(items, "UID")
        except KeyError:
            return known
        if not isinstance(uid, int):
            self.model.violation(self.name, "UID is no number", r.raw)
            return known
        if known is not None and known != uid:
            self.model.violation(self.name, f"message {r.number} was UID {known}, now {uid}", r.raw)
        before = [u for u in self.view[: r.number - 1] if u is not None]
        after = [u for u in self.view[r.number :] if u is not None]
        if (before and before[-1] >= uid) or (after and after[0] <= uid):
            self.model.violation(self.name, f"UID {uid} out of order at {r.number}", r.raw)
        self.view[r.number - 1] = uid
        return uid

    def after(self, r: Response) -> None:
        """A tagged answer: what its response code gives out."""
        if r.status != "OK" or not r.code:
            return
        name = r.code_name
        if name == "APPENDUID" and len(r.code) == 3 and self._appending is not None:
            mailbox, body = self._appending
            for uid in uid_set(r.code[2]):
                self.model.give(self.name, mailbox, uid, body)
                self.model.added(mailbox)
        elif name == "COPYUID" and len(r.code) == 4 and self._copying is not None:
            source, target = self._copying
            for old, new in zip(uid_set(r.code[2]), uid_set(r.code[3]), strict=True):
                self.model.give(self.name, target, new, self.model.bodies.get((source, old)))
                self.model.added(target)

    _appending: tuple[str, str] | None = None
    _copying: tuple[str, str] | None = None

    # -- random commands ----------------------------------------------------------

    def known_uids(self) -> list[int]:
        return [u for u in self.view if u is not None]

    def random_command(self, rng: random.Random) -> None:
        self._appending = self._copying = None
        uids = self.known_uids()
        choice = rng.choices(
            [
                "append",
                "store",
                "copy",
                "move",
                "expunge",
                "search",
                "fetch",
                "uidfetch",
                "status",
                "noop",
                "idle",
            ],
            weights=[4, 6, 2, 1, 1, 2, 2, 3, 1, 2, 1],
        )[0]
        if choice in ("store", "copy", "move", "uidfetch") and not uids:
            choice = "append"
        if choice == "append":
            label = f"m{rng.getrandbits(48):012x}"
            body = body_of(label)
            target = rng.choice(MAILBOXES)
            flags = " ".join(rng.sample(STORE_FLAGS, rng.randint(0, 2)))
            self._appending = (target, digest(body))
            self.send(
                "APPEND",
                b"APPEND %s (%s) {%d+}\r\n%s" % (target.encode(), flags.encode(), len(body), body),
            )
        elif choice == "store":
            uid = rng.choice(uids)
            sign = rng.choice("+-")
            flag = rng.choice(STORE_FLAGS)
            self.send("UID STORE", f"UID STORE {uid} {sign}FLAGS ({flag})".encode())
        elif choice in ("copy", "move"):
            uid = rng.choice(uids)
            target = "Archive" if self.mailbox == "INBOX" else "INBOX"
            self._copying = (self.mailbox, target)
            self.send(f"UID {choice.upper()}", f"UID {choice.upper()} {uid} {target}".encode())
        elif choice == "expunge":
            self.send("EXPUNGE", b"EXPUNGE")
        elif choice == "search":
            key = rng.choice([b"UNSEEN", b"KEYWORD $k1", b"FLAGGED", b"ALL"])
            self.send("SEARCH", b"SEARCH " + key)
        elif choice == "fetch" and self.view:
            n = rng.randint(1, len(self.view))
            self.send("FETCH", f"FETCH {n} (UID FLAGS)".encode())
        elif choice == "uidfetch":
            uid = rng.choice(uids)
            self.send("UID FETCH", f"UID FETCH {uid} (UID FLAGS BODY.PEEK[])".encode())
        else:
            self._session_command(choice)

    def _session_command(self, choice: str) -> None:
        """STATUS of the other mailbox, IDLE or NOOP."""
        if choice == "status":
            other = "Archive" if self.mailbox == "INBOX" else "INBOX"
            self.send("STATUS", f"STATUS {other} (UIDNEXT MESSAGES HIGHESTMODSEQ)".encode())
        elif choice == "idle":
            self.heard_in_idle = 0
            self.additions_at_idle = self.model.additions.get(self.mailbox, 0)
            self.send("IDLE", b"IDLE")
        else:
            self.send("NOOP", b"NOOP")

    def end_idle(self) -> None:
        """DONE, in a quiet moment (no other session has a command in
        flight).  Every message added while idling must have been pushed
        before DONE (RFC 2177: the client learns of new mail while
        idling); after DONE's OK the session's view must be the mailbox's:
        a FETCH of every message finds the same UIDs and flags, and no
        message beyond or missing."""
        if self.model.additions.get(self.mailbox, 0) > self.additions_at_idle:
            deadline = time.monotonic() + DEADLINE
            while self.heard_in_idle == 0 and time.monotonic() < deadline:
                if not self.queue:
                    select.select([self.sock], [], [], deadline - time.monotonic())
                self.receive()
            if self.heard_in_idle == 0:
                self.model.violation(self.name, f"IDLE heard nothing in {DEADLINE} s of new mail")
        assert self.pending is not None
        self.pending = (self.pending[0], "IDLE", b"DONE")
        self.sock.sendall(b"DONE\r\n")
        answer = wait_all([self])[self]
        if answer.status != "OK":
            self.model.violation(self.name, "DONE not answered OK", answer.raw)
            return
        if not self.view:
            return
        view, flags = list(self.view), dict(self.flags)
        self.command("FETCH", b"FETCH 1:* (UID FLAGS)")
        missing = set(range(1, len(view) + 1)) - self.fetched_numbers
        if missing:
            self.model.violation(
                self.name, f"after IDLE, messages {sorted(missing)[:5]} of {len(view)} are gone"
            )
        for uid, known in flags.items():
            if uid in self.flags and self.flags[uid] != known:
                self.model.violation(
                    self.name,
                    f"after IDLE, UID {uid} has {sorted(self.flags[uid])}, "
                    f"IDLE said {sorted(known)}",
                )

    def drain(self) -> None:
        """Read whatever an idling session was sent (IDLE's pushes)."""
        while self.queue or select.select([self.sock], [], [], 0)[0]:
            self.receive()  # a tagged answer while idling is a violation there

    def synchronise(self) -> None:
        """NOOP, then every message's UID and flags."""
        self.command("NOOP", b"NOOP")
        if self.view:
            self.command("FETCH", b"FETCH 1:* (UID FLAGS)")


def wait_all(sessions: Sequence[Session]) -> dict[Session, Response]:
    """Each session's tagged answer to its command in flight."""
    answers: dict[Session, Response] = {}
    deadline = time.monotonic() + DEADLINE
    while len(answers) < len(sessions):
        waiting = [s for s in sessions if s not in answers]
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no answer from {[s.name for s in waiting]} in {DEADLINE} s")
        queued = [s.sock for s in waiting if s.queue]
        ready = queued or select.select([s.sock for s in waiting], [], [], left)[0]
        for session in waiting:
            if session.sock in ready:
                answer = session.receive()
                if answer is not None:
                    answers[session] = answer
    return answers


def login(session: Session, user: str, password: str, condstore: bool = False) -> None:
    session.command("LOGIN", f"LOGIN {user} {password}".encode())
    if condstore:
        session.command("ENABLE", b"ENABLE CONDSTORE")
    answer = session.command("SELECT", f"SELECT {session.mailbox}".encode())
    if answer.status != "OK":
        raise RuntimeError(f"SELECT {session.mailbox}: {answer.raw!r}")
    if session.view:
        session.command("FETCH", b"FETCH 1:* (UID FLAGS)")


def converged(sessions: Sequence[Session], model: Model) -> None:
    """After every session synchronised: the same messages, the same flags."""
    by_mailbox: dict[str, list[Session]] = {}
    for session in sessions:
        if session.idling:
            session.end_idle()
        session.synchronise()
        for mailbox, uid in model.pop3_deleted:
            if mailbox == session.mailbox and uid in session.view:
                model.violation(session.name, f"UID {uid} deleted over POP3 is still there")
        by_mailbox.setdefault(session.mailbox, []).append(session)
    for mailbox, group in by_mailbox.items():
        first = group[0]
        for other in group[1:]:
            if first.view != other.view:
                model.violation(other.name, f"{mailbox}: view differs from {first.name}'s")
                continue
            for uid in first.known_uids():
                if first.flags.get(uid) != other.flags.get(uid):
                    model.violation(
                        other.name,
                        f"{mailbox} UID {uid}: flags {sorted(other.flags.get(uid, ()))} "
                        f"where {first.name} has {sorted(first.flags.get(uid, ()))}",
                    )


def deliver(config: str, model: Model, rng: random.Random) -> None:
    """An outside delivery by ``mailsrv deliver`` to INBOX."""
    from tests.helpers import mailsrv_command, source_env

    label = f"d{rng.getrandbits(48):012x}"
    done = subprocess.run(
        [*mailsrv_command(), "deliver", "stress", "--config", config],
        input=body_of(label),
        capture_output=True,
        env=source_env(),
        timeout=DEADLINE,
        check=False,
    )
    model.count("deliver")
    if done.returncode != 0:
        model.violation("deliver", f"exit {done.returncode}: {done.stderr[-300:]!r}")
    else:
        model.added("INBOX")


def run(
    port: int,
    config: str,
    *,
    clients: int,
    rounds: int | None,
    seconds: float | None,
    seed: int,
    pop3_port: int | None = None,
) -> Model:
    """Drive ``clients`` sessions (half on INBOX, half on Archive, every
    other one with CONDSTORE enabled) for ``rounds`` rounds or
    ``seconds``, with now and then a delivery and (given ``pop3_port``) a
    POP3 session; the model with what it found."""
    from tests.stress.pop3 import visit

    rng = random.Random(seed)
    model = Model()
    sessions = [
        Session(
            f"s{i}",
            socket.create_connection(("127.0.0.1", port), timeout=DEADLINE),
            model,
            MAILBOXES[i % len(MAILBOXES)],
        )
        for i in range(clients)
    ]
    try:
        for i, session in enumerate(sessions):
            login(session, "stress", "pw", condstore=i % 2 == 1)
        deadline = None if seconds is None else time.monotonic() + seconds
        done = 0
        while (rounds is None or done < rounds) and (
            deadline is None or time.monotonic() < deadline
        ):
            done += 1
            model.new_round()
            if rng.random() < 0.03:
                deliver(config, model, rng)
            if pop3_port is not None and rng.random() < 0.03:
                visit(pop3_port, model, rng)
            one_round(sessions, model, rng)
        converged(sessions, model)
    finally:
        for session in sessions:
            session.sock.close()
    return model


def one_round(sessions: Sequence[Session], model: Model, rng: random.Random) -> None:
    """Some of the sessions not idling send a command each, and all the
    answers are read; then some idling sessions end their IDLE."""
    active = [s for s in sessions if not s.idling]
    busy = rng.sample(active, rng.randint(1, len(active))) if active else []
    for session in busy:
        session.random_command(rng)
    for session, answer in wait_all(busy).items():
        if answer.kind == "+":
            session.idling = True
        elif answer.status == "BAD":
            model.violation(session.name, "BAD to a valid command", answer.raw)
    for session in sessions:
        if session.idling and session not in busy:
            session.drain()
            if rng.random() < 0.2:
                session.end_idle()


def make_config(directory: str, port: int, pop3_port: int | None = None) -> str:
    """A daemon configuration for one user ``stress`` (password ``pw``)."""
    from mailsrv import cli

    config = os.path.join(directory, "mailsrv.toml")
    with open(config, "w") as handle:
        handle.write(
            f'[server]\nhostname = "localhost"\n'
            f'[imap]\nlisten = ["tcp:{port}:interface=127.0.0.1"]\n'
            + (f'[pop3]\nlisten = ["tcp:{pop3_port}:interface=127.0.0.1"]\n' if pop3_port else "")
            + f'[users]\npasswd_file = "{directory}/passwd"\n'
            "[auth]\nfailure_delay = 0.0\n"
            "[limits]\nmax_connections_per_user = 200\nmax_connections_per_ip = 200\n"
            f'[storage]\nmaildir = "{directory}/mail/{{user}}/Maildir"\n'
        )
    status = cli.main(
        ["user", "add", "stress", "--config", config, "--password-stdin"],
        stdin=io.StringIO("pw\n"),
        stdout=io.StringIO(),
    )
    if status != 0:
        raise RuntimeError("cannot add the user")
    return config


def main(argv: list[str] | None = None) -> int:
    from tests.helpers import Daemon, free_port

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--seed", type=int, default=int(time.time()))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="mailsrv-stress-") as directory:
        port, pop3_port = free_port(), free_port()
        config = make_config(directory, port, pop3_port)
        daemon = Daemon.start(["--config", config], cwd=directory)
        try:
            daemon.wait_for("listening on")
            started = time.monotonic()
            model = run(
                port,
                config,
                clients=args.clients,
                rounds=None,
                seconds=args.seconds,
                seed=args.seed,
                pop3_port=pop3_port,
            )
            elapsed = time.monotonic() - started
        finally:
            daemon.stop()
    print(
        f"seed {args.seed}: {args.clients} clients, {model.commands} commands in {elapsed:.0f} s, "
        f"{len(model.given.get('INBOX', ()))} + {len(model.given.get('Archive', ()))} UIDs given, "
        f"{len(model.violations)} violations; load average {os.getloadavg()[0]:.2f}"
    )
    print("  " + ", ".join(f"{kind} {n}" for kind, n in sorted(model.counts.items())))
    for violation in model.violations[:50]:
        print("  " + violation)
    return 1 if model.violations else 0


if __name__ == "__main__":
    sys.exit(main())
