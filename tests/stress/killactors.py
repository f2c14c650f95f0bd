"""The kill soak's clients: IMAP sessions, an LMTP client and ``mailsrv``
subprocesses, each with one operation in flight at a time.

Each actor sends a random write (:meth:`ImapActor.start`), is fed what
arrives (:meth:`feed`), and on its answer tells the :class:`Model` what
was acknowledged.  Until then its operation is a :class:`Pending`: what the
server may or may not have done if it is killed now.  :class:`Locks` keeps
the operations of one round apart (no two on one message, nothing else on
a mailbox being created, renamed, deleted or wholly expunged), so the
record stays exact whatever order the server runs them in.
"""

from __future__ import annotations

import hashlib
import random
import re
import socket
import subprocess
from collections.abc import Callable, Sequence

import attrs

from tests.stress.killmodel import Model, Pending, canonical, uid_text
from tests.stress.wire import Response, ResponseReader, WireError, find, parse

KEYWORDS = ("$k1", "$k2", "Work")
FLAGS = ("\\Seen", "\\Flagged", "\\Answered", "\\Draft", *KEYWORDS)
#: Mailboxes that always exist; the sessions select only these.
FIXED = ("INBOX", "Archive")
CHURN = "Churn"
USER = "soak"
MESSAGE_ID = re.compile(rb"Message-ID: <([^@>]+)@killsoak>", re.IGNORECASE)


def body_of(label: str, rng: random.Random) -> bytes:
    """A message whose every line says whose it is, so a torn copy shows."""
    size = rng.choices([0, rng.randint(20, 400), rng.randint(1500, 4000)], [70, 25, 5])[0]
    lines = "".join(f"{label} line {i:05d} ..........................\r\n" for i in range(size))
    return (
        f"From: soak@killsoak\r\nSubject: {label}\r\nMessage-ID: <{label}@killsoak>\r\n\r\n"
        f"{lines}{label} end\r\n"
    ).encode()


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:20]


def uid_list(value: object) -> list[int]:
    out: list[int] = []
    for part in str(value).split(","):
        low, _, high = part.partition(":")
        out.extend(range(int(low), int(high or low) + 1))
    return out


def fetched_flags(untagged: Sequence[Response]) -> dict[int, frozenset[str]]:
    """UID -> FLAGS of the FETCH responses that name a UID."""
    told: dict[int, frozenset[str]] = {}
    for u in untagged:
        if u.name != "FETCH" or not u.values or not isinstance(u.values[0], list):
            continue
        try:
            uid, got = find(u.values[0], "UID"), find(u.values[0], "FLAGS")
        except KeyError:
            continue
        if isinstance(uid, int) and isinstance(got, list):
            told[uid] = canonical(str(f) for f in got)
    return told


@attrs.define
class Locks:
    """What the operations of one round hold."""

    shared: set[str] = attrs.Factory(set)
    exclusive: set[str] = attrs.Factory(set)
    messages: set[tuple[str, int]] = attrs.Factory(set)

    def box_free(self, name: str) -> bool:
        return name not in self.exclusive and not any(m[0] == name for m in self.messages)

    def share(self, name: str) -> bool:
        if name in self.exclusive:
            return False
        self.shared.add(name)
        return True

    def own(self, *names: str) -> bool:
        if any(n in self.exclusive or n in self.shared or not self.box_free(n) for n in names):
            return False
        self.exclusive.update(names)
        return True

    def take(self, name: str, uids: Sequence[int]) -> bool:
        if name in self.exclusive or any((name, u) in self.messages for u in uids):
            return False
        self.shared.add(name)
        self.messages.update((name, u) for u in uids)
        return True

    def free_uids(self, name: str, uids: Sequence[int]) -> list[int]:
        return [u for u in uids if (name, u) not in self.messages]


Done = Callable[[Response, list[Response]], None]


class ImapActor:
    """One IMAP session with at most one command in flight."""

    def __init__(self, name: str, sock: socket.socket, model: Model, selected: str) -> None:
        self.name = name
        self.sock = sock
        self.model = model
        self.selected = selected
        self.reader = ResponseReader()
        self.counter = 0
        self.closed = False
        self.pending: Pending | None = None
        self._tag: str | None = None
        self._done: Done | None = None
        self._untagged: list[Response] = []
        self.last_command = ""

    # -- the wire ----------------------------------------------------------------------

    def send(self, line: bytes, pending: Pending | None, done: Done) -> None:
        self.counter += 1
        tag = f"{self.name}.{self.counter}"
        self._tag, self._done, self._untagged, self.pending = tag, done, [], pending
        self.last_command = line[:80].decode(errors="replace")
        try:
            self.sock.sendall(tag.encode() + b" " + line + b"\r\n")
        except OSError:
            self.closed = True

    @property
    def busy(self) -> bool:
        return self._tag is not None and not self.closed

    def feed(self) -> None:
        """Read what arrived; handle a tagged answer."""
        try:
            data = self.sock.recv(1 << 16)
        except OSError:
            data = b""
        if not data:
            self.closed = True
            return
        for raw in self.reader.feed(data):
            try:
                response = parse(raw)
            except WireError as e:
                self.model.violation(f"{self.name}: not IMAP: {e}")
                continue
            if response.kind == "tagged" and response.tag == self._tag:
                done, untagged = self._done, self._untagged
                self._tag = self._done = None
                self.pending = None
                if response.status == "BAD":
                    self.model.violation(f"{self.name}: BAD to {self.last_command!r}: {raw!r}")
                if done is not None:
                    done(response, untagged)
            elif response.kind == "*":
                self._untagged.append(response)

    def command(self, line: bytes, deadline: float) -> tuple[Response, list[Response]]:
        """Send and wait (blocking) for the answer: login, audit."""
        result: list[tuple[Response, list[Response]]] = []
        self.send(line, None, lambda r, u: result.append((r, u)))
        self.sock.settimeout(deadline)
        while not result:
            self.feed()
            if self.closed:
                raise ConnectionError(f"{self.name}: connection closed during {line[:60]!r}")
        return result[0]

    # -- random writes -------------------------------------------------------------------

    def located(self, name: str, locks: Locks) -> list[int]:
        return locks.free_uids(name, sorted(self.model.boxes[name].messages))

    def start(self, rng: random.Random, locks: Locks, new_label: Callable[[], str]) -> bool:
        """Send one random write; False when none fits this round."""
        if self.selected == CHURN:
            return self._churn(rng, locks, new_label)
        choice = rng.choices(
            ["append", "store", "copy", "move", "expunge", "create", "rename", "delete", "select"],
            [5, 6, 2, 2, 2, 1, 1, 1, 1],
        )[0]
        uids = self.located(self.selected, locks)
        if len(uids) > 60 and choice in ("append", "copy"):
            choice = "expunge"
        if choice in ("store", "copy", "move") and not uids:
            choice = "append"
        method = getattr(self, "_" + choice)
        return bool(method(rng, locks, uids, new_label))

    def _targets(self, locks: Locks, exclude: str) -> list[str]:
        return [
            n
            for n in sorted(self.model.boxes)
            if n not in (exclude, CHURN) and n not in locks.exclusive
        ]

    def _append(
        self, rng: random.Random, locks: Locks, uids: list[int], new_label: Callable[[], str]
    ) -> bool:
        targets = self._targets(locks, "")
        target = self.selected if rng.random() < 0.5 or not targets else rng.choice(targets)
        count = 1 if rng.random() < 0.75 else rng.randint(2, 5)
        return self.append(rng, locks, target, count, new_label)

    def append(
        self,
        rng: random.Random,
        locks: Locks,
        target: str,
        count: int,
        new_label: Callable[[], str],
        flags: frozenset[str] | None = None,
    ) -> bool:
        if not locks.share(target):
            return False
        if flags is None:
            flags = frozenset(rng.sample(FLAGS, rng.randint(0, 2)))
        labels = tuple(new_label() for _ in range(count))
        parts = [target.encode()]
        for label in labels:
            body = body_of(label, rng)
            self.model.bodies[label] = digest(body)
            parts.append(b"(%s) {%d+}\r\n%s" % (" ".join(sorted(flags)).encode(), len(body), body))
        pending = Pending("append", box=target, labels=labels, flags=canonical(flags))

        def done(r: Response, untagged: list[Response]) -> None:
            if r.status != "OK":
                self.model.refused.update(labels)
                return
            validity, given = None, []
            if r.code_name == "APPENDUID" and r.code is not None and len(r.code) == 3:
                validity, given = int(str(r.code[1])), uid_list(r.code[2])
            self.model.appended(target, validity, given, labels, [canonical(flags)] * count)

        self.send(b"APPEND " + b" ".join(parts), pending, done)
        return True

    def _store(
        self, rng: random.Random, locks: Locks, uids: list[int], new_label: Callable[[], str]
    ) -> bool:
        chosen = rng.sample(uids, min(len(uids), rng.randint(1, 3)))
        sign = rng.choice(["+", "-", ""])
        flags = frozenset(rng.sample([*FLAGS, "\\Deleted"], rng.randint(1, 2)))
        return self.store(locks, chosen, sign, flags, silent=False)

    def store(
        self, locks: Locks, uids: list[int], sign: str, flags: frozenset[str], silent: bool
    ) -> bool:
        box = self.selected
        if not locks.take(box, uids):
            return False
        messages = self.model.boxes[box].messages
        wanted = canonical(flags)
        alternatives = {}
        for uid in uids:
            old = messages[uid][1]
            new = old | wanted if sign == "+" else old - wanted if sign == "-" else wanted
            alternatives[uid] = (old, new)
        pending = Pending("store", box=box, uids=tuple(uids), alternatives=alternatives)

        def done(r: Response, untagged: list[Response]) -> None:
            if r.status != "OK":
                return
            told = fetched_flags(untagged)
            result = {}
            for uid, (_, new) in alternatives.items():
                if uid in told and told[uid] != new:
                    self.model.violation(
                        f"{self.name}: STORE answered {box} UID {uid} flags "
                        f"{sorted(told[uid])}, expected {sorted(new)} (to {line!r}: "
                        + b"".join(u.raw for u in untagged).decode(errors="replace").strip()
                        + ")"
                    )
                result[uid] = told.get(uid, new)
            self.model.stored(box, result)

        item = f"{sign}FLAGS{'.SILENT' if silent else ''}"
        line = f"UID STORE {uid_text(uids)} {item} ({' '.join(sorted(flags))})"
        self.send(line.encode(), pending, done)
        return True

    def _copy(
        self,
        rng: random.Random,
        locks: Locks,
        uids: list[int],
        new_label: Callable[[], str],
        verb: str = "copy",
    ) -> bool:
        targets = self._targets(locks, self.selected)
        if not targets:
            return False
        target = rng.choice(targets)
        chosen = sorted(rng.sample(uids, min(len(uids), rng.randint(1, 3))))
        if not locks.share(target) or not locks.take(self.selected, chosen):
            return False
        source = self.selected
        pending = Pending(verb, box=source, target=target, uids=tuple(chosen))

        def done(r: Response, untagged: list[Response]) -> None:
            if r.status != "OK":
                return
            codes = [r, *(u for u in untagged if u.code_name == "COPYUID")]
            pairs: list[tuple[int, int]] = []
            validity = None
            for c in codes:
                if c.code_name == "COPYUID" and c.code is not None and len(c.code) == 4:
                    validity = int(str(c.code[1]))
                    pairs = list(zip(uid_list(c.code[2]), uid_list(c.code[3]), strict=True))
            if not pairs:
                self.model.violation(f"{self.name}: {verb.upper()} OK without COPYUID")
                return
            if verb == "move":
                self.model.moved(source, target, validity, pairs)
            else:
                self.model.copied(source, target, validity, pairs)

        self.send(f"UID {verb.upper()} {uid_text(chosen)} {target}".encode(), pending, done)
        return True

    def _move(
        self, rng: random.Random, locks: Locks, uids: list[int], new_label: Callable[[], str]
    ) -> bool:
        return self._copy(rng, locks, uids, new_label, verb="move")

    def _expunge(
        self, rng: random.Random, locks: Locks, uids: list[int], new_label: Callable[[], str]
    ) -> bool:
        box = self.selected
        messages = self.model.boxes[box].messages
        deleted = [u for u in uids if "\\Deleted" in messages[u][1]]
        if not deleted:
            if not uids:
                return self._append(rng, locks, uids, new_label)
            chosen = rng.sample(uids, min(len(uids), rng.randint(1, 8)))
            return self.store(locks, chosen, "+", frozenset({"\\Deleted"}), silent=True)
        if rng.random() < 0.5:
            return self.uid_expunge(locks, deleted)
        return self.expunge_all(locks)

    def uid_expunge(self, locks: Locks, uids: list[int]) -> bool:
        box = self.selected
        if not locks.take(box, uids):
            return False
        pending = Pending("expunge", box=box, uids=tuple(uids))

        def done(r: Response, untagged: list[Response]) -> None:
            if r.status == "OK":
                self.model.expunged(box, uids)

        self.send(f"UID EXPUNGE {uid_text(uids)}".encode(), pending, done)
        return True

    def expunge_all(self, locks: Locks) -> bool:
        box = self.selected
        if not locks.own(box):
            return False
        messages = self.model.boxes[box].messages
        uids = [u for u, (_, flags) in messages.items() if "\\Deleted" in flags]
        pending = Pending("expunge", box=box, uids=tuple(uids))

        def done(r: Response, untagged: list[Response]) -> None:
            if r.status == "OK":
                self.model.expunged(box, uids)

        self.send(b"EXPUNGE", pending, done)
        return True

    def _dynamic(self, locks: Locks) -> list[str]:
        return [
            n
            for n in sorted(self.model.boxes)
            if n not in (*FIXED, CHURN) and n not in locks.shared and locks.box_free(n)
        ]

    def _new_name(self, rng: random.Random, locks: Locks, new_label: Callable[[], str]) -> str:
        """A name no mailbox has: half the time one a deleted or renamed
        mailbox had, whose old UIDs must not come back."""
        again = sorted(
            n for n in self.model.gone if n not in self.model.boxes and n not in locks.exclusive
        )
        if again and rng.random() < 0.5:
            return rng.choice(again)
        return "f" + new_label()

    def _create(
        self, rng: random.Random, locks: Locks, uids: list[int], new_label: Callable[[], str]
    ) -> bool:
        if len(self.model.boxes) > 8:
            return self._delete(rng, locks, uids, new_label)
        name = self._new_name(rng, locks, new_label)
        if not locks.own(name):
            return False

        def done(r: Response, untagged: list[Response]) -> None:
            if r.status == "OK":
                self.model.created(name)

        self.send(f"CREATE {name}".encode(), Pending("create", box=name), done)
        return True

    def _rename(
        self, rng: random.Random, locks: Locks, uids: list[int], new_label: Callable[[], str]
    ) -> bool:
        names = self._dynamic(locks)
        if not names:
            return self._create(rng, locks, uids, new_label)
        old, new = rng.choice(names), self._new_name(rng, locks, new_label)
        if not locks.own(old, new):
            return False

        def done(r: Response, untagged: list[Response]) -> None:
            if r.status == "OK":
                self.model.renamed(old, new)

        self.send(f"RENAME {old} {new}".encode(), Pending("rename", box=old, target=new), done)
        return True

    def _delete(
        self, rng: random.Random, locks: Locks, uids: list[int], new_label: Callable[[], str]
    ) -> bool:
        names = self._dynamic(locks)
        if not names:
            return False
        name = rng.choice(names)
        if not locks.own(name):
            return False

        def done(r: Response, untagged: list[Response]) -> None:
            if r.status == "OK":
                self.model.deleted(name)

        self.send(f"DELETE {name}".encode(), Pending("delete", box=name), done)
        return True

    def _select(
        self, rng: random.Random, locks: Locks, uids: list[int], new_label: Callable[[], str]
    ) -> bool:
        other = FIXED[1] if self.selected == FIXED[0] else FIXED[0]
        if not locks.share(other):
            return False
        self.selected = other

        def done(r: Response, untagged: list[Response]) -> None:
            if r.status != "OK":
                self.model.violation(f"{self.name}: SELECT {other}: {r.raw!r}")

        self.send(f"SELECT {other}".encode(), None, done)
        return True

    def _churn(self, rng: random.Random, locks: Locks, new_label: Callable[[], str]) -> bool:
        """Fill Churn, flag it all \\Deleted, expunge it: the UID list grows
        by a line per message until it is compacted (index maintenance)."""
        uids = self.located(CHURN, locks)
        messages = self.model.boxes[CHURN].messages
        deleted = [u for u in uids if "\\Deleted" in messages[u][1]]
        if deleted:
            return self.expunge_all(locks)
        if uids and rng.random() < 0.7:
            return self.store(locks, uids, "+", frozenset({"\\Deleted"}), silent=True)
        count = rng.randint(20, 80)
        return self.append(rng, locks, CHURN, count, new_label, flags=frozenset())


class LmtpActor:
    """An LMTP client delivering one message at a time to INBOX."""

    def __init__(self, sock: socket.socket, model: Model) -> None:
        self.sock = sock
        self.model = model
        self.closed = False
        self.buffer = b""
        self.pending: Pending | None = None
        self._steps: list[bytes] = []
        self._label = ""
        self._lines: list[bytes] = []

    @property
    def busy(self) -> bool:
        return self.pending is not None and not self.closed

    def greet(self, deadline: float) -> None:
        self.sock.settimeout(deadline)
        self._await_reply()
        self.sock.sendall(b"LHLO killsoak\r\n")
        self._await_reply()

    def _await_reply(self) -> bytes:
        while True:
            reply = self._reply()
            if reply is not None:
                return reply
            self._recv()
            if self.closed:
                raise ConnectionError("LMTP connection closed")

    def _recv(self) -> None:
        try:
            data = self.sock.recv(65536)
        except OSError:
            data = b""
        if not data:
            self.closed = True
        self.buffer += data

    def _reply(self) -> bytes | None:
        """One whole reply (its last line) when the buffer holds one."""
        while b"\r\n" in self.buffer:
            line, self.buffer = self.buffer.split(b"\r\n", 1)
            if len(line) > 3 and line[3:4] == b"-":
                continue
            return line
        return None

    def start(self, rng: random.Random, label: str) -> None:
        body = body_of(label, rng)
        self.model.bodies[label] = digest(body)
        data = body.replace(b"\r\n.", b"\r\n..") + b".\r\n"
        self._steps = [
            b"MAIL FROM:<soak@killsoak>\r\n",
            f"RCPT TO:<{USER}@localhost>\r\n".encode(),
            b"DATA\r\n",
            data,
        ]
        self._label = label
        self.pending = Pending("deliver", box="INBOX", labels=(label,))
        self._next()

    def _next(self) -> None:
        try:
            self.sock.sendall(self._steps.pop(0))
        except OSError:
            self.closed = True

    def feed(self) -> None:
        self._recv()
        while (reply := self._reply()) is not None and self.pending is not None:
            code = reply[:3]
            if self._steps:
                if code not in (b"250", b"354"):
                    self.model.violation(f"LMTP: {reply!r} before DATA")
                    self.model.refused.add(self._label)
                    self.pending = None
                    return
                self._next()
                continue
            self.pending = None
            if code == b"250":
                match = re.search(rb"UID (\d+)", reply)
                self.model.delivered("INBOX", self._label, int(match.group(1)) if match else None)
            else:
                self.model.refused.add(self._label)


@attrs.define
class Child:
    """A ``mailsrv deliver`` or ``mailsrv reindex`` process in flight."""

    process: subprocess.Popen[bytes]
    pending: Pending
    killed: bool = False

    def finish(self, model: Model) -> Pending | None:
        """After it exited: what it acknowledged, or its pending op."""
        assert self.process.stderr is not None
        error = self.process.stderr.read()
        self.process.stderr.close()
        status = self.process.wait()
        if status == 0:
            if self.pending.kind == "deliver":
                model.delivered(self.pending.box, self.pending.labels[0])
            return None
        if not self.killed:
            model.violation(f"mailsrv {self.pending.kind} exited {status}: {error[-300:]!r}")
            if self.pending.kind == "deliver":
                model.refused.update(self.pending.labels)
            return None
        return self.pending
