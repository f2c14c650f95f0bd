"""``mailsrv migrate``: move accounts between Maildir and PostgreSQL.

What a client can see is kept both ways: each mailbox's UIDVALIDITY, every
UID, UIDNEXT, flags, keywords, internal dates and bodies (byte for byte),
special-use attributes, subscriptions, and POP3 UIDLs carried over from an
earlier server; MODSEQs too, into PostgreSQL (the Maildir index starts its
own above any earlier one when it adopts a tree, so HIGHESTMODSEQ never goes
back for a CONDSTORE client).

Maildir to PostgreSQL reads through the Maildir backend's API and writes
rows directly (the storage API would hand out new UIDs).  Each batch of
messages is one transaction, and a message is inserted under its UID only
if that UID is not there yet, so an interrupted run (killed, database gone)
is resumed by running the same command again, without duplicates.

PostgreSQL to Maildir writes a Maildir++ tree the way Dovecot would
(``dovecot-uidlist``, ``dovecot-keywords``) and lets the Maildir backend
adopt it on first open, which keeps UIDVALIDITY and UIDs; folders, special
use and subscriptions go through the backend's API.  Message files get
names derived from their UID, so a re-run skips what is there already.  The
UID list is written last, when the folder is complete: the backend must not
open a folder before (mailsrv must not serve the user from Maildir yet).

``--verify`` compares both sides without changing anything.
"""

from __future__ import annotations

import datetime
import os
import time
from collections.abc import Sequence
from typing import IO, Any

import attrs

from mailsrv.config import Config
from mailsrv.interfaces import SPECIAL_USES, IPop3UidSource
from mailsrv.storage import names

__all__ = ["Migration", "MigrationError", "Progress", "UserOutcome"]

#: Messages per transaction when importing.
BATCH_MESSAGES = 200
#: ... or fewer, once the batch holds this many bytes.
BATCH_BYTES = 32 * 1024 * 1024

_SYSTEM_LETTERS = {
    "\\Draft": "D",
    "\\Flagged": "F",
    "\\Answered": "R",
    "\\Seen": "S",
    "\\Deleted": "T",
}
_MAX_KEYWORD_LETTERS = 26


class MigrationError(Exception):
    """One user could not be migrated; the message says why."""


@attrs.define
class UserOutcome:
    """What happened to one user."""

    user: str
    mailboxes: int = 0
    messages: int = 0  # copied this run (or compared, verifying)
    skipped: int = 0  # already on the target side
    octets: int = 0
    seconds: float = 0.0
    differences: list[str] = attrs.Factory(list)
    error: str | None = None


class Progress:
    """Shows the run to an operator: on a terminal a status line (messages
    per second, the user and folder at work) redrawn a few times a second,
    one line per user as it finishes, and a summary; elsewhere (cron, a
    log) only the per-user lines and the summary."""

    def __init__(self, stream: IO[str], tty: bool | None = None) -> None:
        self.stream = stream
        self.tty = stream.isatty() if tty is None else tty
        self._shown = 0.0
        self._width = 0
        self.started = time.monotonic()
        self.messages = 0

    def update(self, user: str, mailbox: str, done: int, total: int, rate: float) -> None:
        if not self.tty:
            return
        now = time.monotonic()
        if now - self._shown < 0.2 and done < total:
            return
        self._shown = now
        text = f"{user}: {mailbox} {done}/{total} messages, {rate:,.0f} msg/s"
        self.stream.write("\r" + text.ljust(self._width))
        self._width = len(text)
        self.stream.flush()

    def _clear(self) -> None:
        if self.tty and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self._width = 0

    def user_done(self, outcome: UserOutcome) -> None:
        self._clear()
        rate = outcome.messages / outcome.seconds if outcome.seconds > 0 else 0.0
        if outcome.error is not None:
            line = f"{outcome.user}: FAILED: {outcome.error}"
        elif outcome.differences:
            line = f"{outcome.user}: {len(outcome.differences)} differences"
            for difference in outcome.differences[:20]:
                line += f"\n  {difference}"
            if len(outcome.differences) > 20:
                line += f"\n  ... and {len(outcome.differences) - 20} more"
        else:
            boxes = "mailbox" if outcome.mailboxes == 1 else "mailboxes"
            line = (
                f"{outcome.user}: {outcome.mailboxes} {boxes}, "
                f"{outcome.messages} messages "
                f"({outcome.skipped} already there), {outcome.octets / 1e6:,.1f} MB "
                f"in {outcome.seconds:.1f} s ({rate:,.0f} msg/s)"
            )
        self.stream.write(line + "\n")
        self.stream.flush()

    def summary(self, outcomes: Sequence[UserOutcome], verifying: bool) -> None:
        self._clear()
        seconds = time.monotonic() - self.started
        messages = sum(o.messages for o in outcomes)
        failed = sum(1 for o in outcomes if o.error is not None)
        differing = sum(1 for o in outcomes if o.differences)
        ok = len(outcomes) - failed - differing
        verb = "verified" if verifying else "migrated"
        self.stream.write(
            f"{verb} {ok} of {len(outcomes)} users, {messages} messages in {seconds:.1f} s "
            f"({messages / seconds if seconds > 0 else 0:,.0f} msg/s); "
            f"{failed} failed, {differing} with differences\n"
        )
        self.stream.flush()


# -- reading and comparing ------------------------------------------------------------


@attrs.frozen
class _Message:
    uid: int
    flags: frozenset[str]
    internal_date: datetime.datetime
    size: int
    digest: bytes
    pop3_uidl: str | None


@attrs.frozen
class _Mailbox:
    name: str
    special_use: frozenset[str]
    uidvalidity: int
    uidnext: int
    messages: dict[int, _Message]


def _wire_digest(handle: IO[bytes]) -> tuple[bytes, int]:
    """SHA-256 and size of a message in wire form (CRLF), as the PostgreSQL
    blob store names bodies."""
    from mailsrv.storage.postgres.blobs import Spool

    spool = Spool(handle)
    try:
        return spool.digest, spool.size
    finally:
        spool.close()


def _call(value: Any) -> Any:
    """The value of a storage call made without a reactor (never a Deferred)."""
    from twisted.internet.defer import Deferred

    if isinstance(value, Deferred):  # pragma: no cover - storages here have no reactor
        raise AssertionError("a storage without a reactor answered with a Deferred")
    return value


def _read_account(account: Any, with_bodies: bool = True) -> tuple[list[_Mailbox], list[str]]:
    """Every selectable mailbox of an account (any backend, no reactor) and
    its subscriptions, as a client would see them."""
    mailboxes = []
    for entry in _call(account.list_mailboxes()):
        if "\\Noselect" in entry.attributes or "\\NonExistent" in entry.attributes:
            continue
        box = _call(account.get_mailbox(entry.name))
        uids = list(_call(box.uids()))
        uidls = dict(_call(box.pop3_uidls())) if hasattr(box, "pop3_uidls") else {}
        messages = {}
        for info in _call(box.fetch(uids)) if uids else []:
            digest, size = b"", info.size
            if with_bodies:
                handle = _call(box.open(info.uid))
                try:
                    digest, size = _wire_digest(handle)
                finally:
                    handle.close()
            messages[info.uid] = _Message(
                info.uid,
                frozenset(info.flags) - {"\\Recent"},
                info.internal_date,
                size,
                digest,
                uidls.get(info.uid),
            )
        mailboxes.append(
            _Mailbox(
                entry.name,
                frozenset(entry.attributes) & SPECIAL_USES,
                box.uidvalidity,
                box.uidnext,
                messages,
            )
        )
    return mailboxes, sorted(_call(account.subscriptions()))


def compare(maildir: Any, database: Any) -> list[str]:
    """What differs between the Maildir side and the database side of an
    account, as lines for the operator (values are Maildir's first)."""
    found: list[str] = []
    boxes_a, subs_a = _read_account(maildir)
    boxes_b, subs_b = _read_account(database)
    by_name = {box.name: box for box in boxes_b}
    for a in boxes_a:
        b = by_name.pop(a.name, None)
        if b is None:
            found.append(f"{a.name}: in the Maildir, not in the database")
        else:
            found += _compare_mailboxes(a, b)
    for name in sorted(by_name):
        found.append(f"{name}: in the database, not in the Maildir")
    if subs_a != subs_b:
        found.append(f"subscriptions {subs_a} != {subs_b}")
    return found


def _compare_mailboxes(a: _Mailbox, b: _Mailbox) -> list[str]:
    """How mailbox ``b`` differs from ``a`` of the same name."""
    where = a.name
    if a.uidvalidity != b.uidvalidity:
        return [f"{where}: UIDVALIDITY {a.uidvalidity} != {b.uidvalidity}"]
    found: list[str] = []
    if a.uidnext != b.uidnext:
        found.append(f"{where}: UIDNEXT {a.uidnext} != {b.uidnext}")
    if a.special_use != b.special_use:
        found.append(f"{where}: special use {sorted(a.special_use)} != {sorted(b.special_use)}")
    only_a = sorted(set(a.messages) - set(b.messages))
    only_b = sorted(set(b.messages) - set(a.messages))
    if only_a:
        found.append(f"{where}: {len(only_a)} messages only in the Maildir (UIDs {only_a[:10]})")
    if only_b:
        found.append(f"{where}: {len(only_b)} messages only in the database (UIDs {only_b[:10]})")
    for uid in sorted(set(a.messages) & set(b.messages)):
        x, y = a.messages[uid], b.messages[uid]
        for what, left, right in (
            ("flags", sorted(x.flags), sorted(y.flags)),
            ("internal date", x.internal_date, y.internal_date),
            ("size", x.size, y.size),
            ("body", x.digest.hex(), y.digest.hex()),
            ("POP3 UIDL", x.pop3_uidl, y.pop3_uidl),
        ):
            if left != right:
                found.append(f"{where} UID {uid}: {what} {left} != {right}")
    return found


# -- Maildir to PostgreSQL --------------------------------------------------------------


def _target_mailbox(conn: Any, user: str, box: Any, uses: frozenset[str]) -> int:
    """The database mailbox a Maildir folder goes to, made with the folder's
    UIDVALIDITY if it is not there; an empty one the database made itself
    (default folders) takes the folder's UIDVALIDITY."""
    conn.execute("SELECT 1 FROM users WHERE user_name = %s FOR UPDATE", (user,))
    row = conn.execute(
        "SELECT mailbox_id, uidvalidity, (SELECT count(*) FROM messages m "
        "WHERE m.user_name = b.user_name AND m.mailbox_id = b.mailbox_id), uidnext "
        "FROM mailboxes b WHERE user_name = %s AND name = %s FOR UPDATE",
        (user, box.name),
    ).fetchone()
    highest = max(int(box.highest_modseq), 1)
    if row is not None:
        mailbox_id, uidvalidity, count, uidnext = row
        if uidvalidity == box.uidvalidity:
            return int(mailbox_id)
        if count or uidnext > 1:
            raise MigrationError(
                f"mailbox {box.name!r} is in the database already with other messages "
                f"(UIDVALIDITY {uidvalidity}, the Maildir has {box.uidvalidity}); "
                "delete it there or rename the folder, then run again"
            )
        conn.execute(
            "UPDATE mailboxes SET uidvalidity = %s, uidnext = %s, recent_from = %s, "
            "highest_modseq = GREATEST(highest_modseq, %s), special_use = %s "
            "WHERE user_name = %s AND mailbox_id = %s",
            (box.uidvalidity, box.uidnext, box.uidnext, highest, sorted(uses), user, mailbox_id),
        )
        return int(mailbox_id)
    mailbox_id = conn.execute(
        "UPDATE users SET last_mailbox_id = last_mailbox_id + 1 WHERE user_name = %s "
        "RETURNING last_mailbox_id",
        (user,),
    ).fetchone()[0]
    conn.execute(
        "INSERT INTO mailboxes (user_name, mailbox_id, name, special_use, uidvalidity, uidnext, "
        "highest_modseq, recent_from) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
        (
            user,
            mailbox_id,
            box.name,
            sorted(uses),
            box.uidvalidity,
            box.uidnext,
            highest,
            box.uidnext,
        ),
    )
    return int(mailbox_id)


def _insert_batch(
    conn: Any, blobs: Any, user: str, mailbox_id: int, rows: list[tuple[Any, ...]]
) -> int:
    """Insert (uid, modseq, bits, keywords, date, spool, uidl) rows not there yet;
    the count inserted.  The mailbox's counters follow in the same transaction."""
    from mailsrv.storage.postgres.queries import _counts

    inserted = size = unseen = deleted = 0
    top = 0
    for uid, modseq, bits, keywords, date, spool, uidl in rows:
        digest = blobs.put(conn, spool)
        done = conn.execute(
            "INSERT INTO messages (user_name, mailbox_id, uid, modseq, flags, keywords, "
            "internal_date, size, digest, pop3_uidl) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, "
            "%s, %s) ON CONFLICT DO NOTHING RETURNING 1",
            (user, mailbox_id, uid, modseq, bits, keywords, date, spool.size, digest, uidl),
        ).fetchone()
        if done is None:  # there already (a run racing this one): undo the reference
            blobs.drop_references(conn, {digest: 1})
            continue
        inserted += 1
        size += spool.size
        message_unseen, message_deleted = _counts(bits)
        unseen += message_unseen
        deleted += message_deleted
        top = max(top, modseq)
    conn.execute(
        "UPDATE mailboxes SET messages = messages + %s, unseen = unseen + %s, "
        "deleted = deleted + %s, size = size + %s, highest_modseq = GREATEST(highest_modseq, %s) "
        "WHERE user_name = %s AND mailbox_id = %s",
        (inserted, unseen, deleted, size, top, user, mailbox_id),
    )
    return inserted


def _finish_mailbox(
    conn: Any, user: str, mailbox_id: int, box: Any, keywords: Sequence[str], uses: frozenset[str]
) -> None:
    """Keywords in the folder's order, special use, UIDNEXT, and a NOTIFY so
    running nodes see the messages."""
    from mailsrv.storage.postgres.queries import notify

    row = conn.execute(
        "UPDATE mailboxes SET keywords = ARRAY(SELECT k FROM unnest(%s::text[] || keywords) "
        "WITH ORDINALITY AS t(k, n) GROUP BY k ORDER BY min(n)), special_use = %s, "
        "uidnext = GREATEST(uidnext, %s), recent_from = GREATEST(recent_from, %s) "
        "WHERE user_name = %s AND mailbox_id = %s RETURNING highest_modseq",
        (list(keywords), sorted(uses), box.uidnext, box.uidnext, user, mailbox_id),
    ).fetchone()
    notify(conn, user, mailbox_id, row[0])


def _last_uidvalidity(conn: Any, user: str, uidvalidity: int) -> None:
    """Mailboxes the database makes later get a higher UIDVALIDITY than any adopted."""
    conn.execute(
        "UPDATE users SET last_uidvalidity = GREATEST(last_uidvalidity, %s) WHERE user_name = %s",
        (uidvalidity, user),
    )


def _ensure_user(conn: Any, user: str) -> None:
    conn.execute(
        "INSERT INTO users (user_name, last_mailbox_id) VALUES (%s, 0) ON CONFLICT DO NOTHING",
        (user,),
    )


def _stored_uids(conn: Any, user: str, mailbox_id: int) -> list[int]:
    rows = conn.execute(
        "SELECT uid FROM messages WHERE user_name = %s AND mailbox_id = %s", (user, mailbox_id)
    )
    return [row[0] for row in rows]


def _subscribe(conn: Any, user: str, subscribed: list[str]) -> None:
    conn.execute(
        "INSERT INTO subscriptions (user_name, name) SELECT %s, unnest(%s::text[]) "
        "ON CONFLICT DO NOTHING",
        (user, subscribed),
    )


class _Folders:
    """The Maildir folders an export writes into: made as the database's
    mailboxes are; default folders a fresh tree got and the database
    lacks (or has with another special use) removed while untouched."""

    def __init__(self, target: Any, root: str, fresh: bool) -> None:
        self.target, self.root = target, root
        self.existing = {entry.name for entry in target.list_mailboxes()}
        self.defaults = set(self.existing) - {names.INBOX} if fresh else set()
        self.uses = target.special_uses()

    def path(self, name: str) -> str:
        if name == names.INBOX:
            return self.root
        return os.path.join(self.root, names.name_to_dirname(name))

    def prepare(self, name: str, uses: frozenset[str]) -> str:
        """The folder for mailbox ``name``, made if missing; never one
        mailsrv already uses (it has a mailsrv-uidlist)."""
        path = self.path(name)
        if name in self.defaults and self.uses.get(name, frozenset()) != uses and _untouched(path):
            # A default folder with another special use than the
            # database's: made again with the right one.
            self.target.delete_mailbox(name)
            self.existing.discard(name)
        if name not in self.existing and name != names.INBOX:
            self.target.create_mailbox(name, uses)
        if os.path.exists(os.path.join(path, "mailsrv-uidlist")):
            raise MigrationError(
                f"{name}: the Maildir folder {path} is in use by mailsrv already "
                "(it has a mailsrv-uidlist); export into an empty Maildir"
            )
        return path

    def remove_unwanted_defaults(self, wanted: set[str]) -> None:
        for name in sorted(self.defaults - wanted, reverse=True):
            if _untouched(self.path(name)):
                self.target.delete_mailbox(name)


class Migration:
    """One ``mailsrv migrate`` run over the configured Maildir tree and database."""

    def __init__(self, config: Config, progress: Progress) -> None:
        from mailsrv.storage.maildir import MaildirStorage
        from mailsrv.storage.postgres import PostgresStorage

        self.config = config
        self.progress = progress
        self.maildir = MaildirStorage(config.storage.maildir, poll_interval=3600)
        self.postgres = PostgresStorage(config.storage.dsn, pool_size=1)

    def close(self) -> None:
        self.postgres.close()
        stop = getattr(self.maildir, "stop_watching", None)
        if stop is not None:
            stop()

    # -- helpers ------------------------------------------------------------------------

    def _maildir_exists(self, user: str, home: str | None) -> bool:
        return os.path.isdir(os.path.join(self.maildir.root(user, home), "cur"))

    def _in_database(self, user: str) -> bool:
        def found(conn: Any) -> bool:
            row = conn.execute(
                "SELECT 1 FROM mailboxes WHERE user_name = %s AND name IS NOT NULL LIMIT 1",
                (user,),
            ).fetchone()
            return row is not None

        return bool(self.postgres.db.call(found))

    def _pg_account(self, user: str) -> Any:
        return _call(self.postgres.account(user))

    # -- the three directions -------------------------------------------------------------

    def to_postgresql(self, user: str, home: str | None) -> UserOutcome:
        outcome = UserOutcome(user)
        started = time.monotonic()
        if not self._maildir_exists(user, home):
            raise MigrationError(f"no Maildir at {self.maildir.root(user, home)}")
        source = self.maildir.account(user, home)
        db = self.postgres.db
        db.call(_ensure_user, (user,))
        for entry in source.list_mailboxes():
            if "\\Noselect" not in entry.attributes:
                self._mailbox_to_postgresql(user, source, entry, outcome, started)
        db.call(_subscribe, (user, list(source.subscriptions())))
        outcome.seconds = time.monotonic() - started
        return outcome

    def _mailbox_to_postgresql(
        self, user: str, source: Any, entry: Any, outcome: UserOutcome, started: float
    ) -> None:
        """Copy one folder's messages the database lacks, in batches."""
        db = self.postgres.db
        box = source.open_mailbox(entry.name)
        uses = frozenset(entry.attributes) & SPECIAL_USES
        mailbox_id = db.call(_target_mailbox, (user, box, uses))
        db.call(_last_uidvalidity, (user, box.uidvalidity))
        outcome.mailboxes += 1
        present = set(db.call(_stored_uids, (user, mailbox_id)))
        uids = list(box.uids())
        todo = [uid for uid in uids if uid not in present]
        outcome.skipped += len(uids) - len(todo)
        uidls = dict(_call(box.pop3_uidls())) if IPop3UidSource.providedBy(box) else {}
        done = len(uids) - len(todo)
        for start in range(0, len(todo), BATCH_MESSAGES):
            infos = list(box.fetch(todo[start : start + BATCH_MESSAGES]))
            self._batch_to_postgresql(user, box, mailbox_id, infos, uidls, outcome)
            done += len(infos)
            elapsed = time.monotonic() - started
            rate = outcome.messages / elapsed if elapsed > 0 else 0.0
            self.progress.update(user, entry.name, done, len(uids), rate)
        db.call(_finish_mailbox, (user, mailbox_id, box, list(box.keywords()), uses))

    def _batch_to_postgresql(
        self,
        user: str,
        box: Any,
        mailbox_id: int,
        infos: list[Any],
        uidls: dict[int, str],
        outcome: UserOutcome,
    ) -> None:
        """Copy ``infos``' messages, committing whenever the bodies held
        reach :data:`BATCH_BYTES`."""
        rows: list[tuple[Any, ...]] = []
        spools: list[Any] = []
        held = 0
        try:
            for info in infos:
                spool = self._spool(box, info.uid)
                spools.append(spool)
                rows.append(self._row(info, spool, uidls.get(info.uid)))
                held += spool.size
                if held >= BATCH_BYTES:
                    outcome.messages += self._commit(mailbox_id, rows, outcome, user)
                    rows, held = [], 0
                    for spool in spools:
                        spool.close()
                    spools = []
            if rows:
                outcome.messages += self._commit(mailbox_id, rows, outcome, user)
        finally:
            for spool in spools:
                spool.close()

    @staticmethod
    def _spool(box: Any, uid: int) -> Any:
        from mailsrv.storage.postgres.blobs import Spool

        handle = box.open(uid)
        try:
            return Spool(handle)
        finally:
            handle.close()

    @staticmethod
    def _row(info: Any, spool: Any, uidl: str | None) -> tuple[Any, ...]:
        from mailsrv.storage.postgres.queries import encode_flags

        bits, keywords = encode_flags(set(info.flags) - {"\\Recent"})
        modseq = max(int(getattr(info, "modseq", 1) or 1), 1)
        return (info.uid, modseq, bits, keywords, info.internal_date, spool, uidl)

    def _commit(self, mailbox_id: int, rows: list[Any], outcome: UserOutcome, user: str) -> int:
        inserted = int(
            self.postgres.db.call(_insert_batch, (self.postgres.blobs, user, mailbox_id, rows))
        )
        outcome.octets += sum(row[5].size for row in rows)
        return inserted

    def to_maildir(self, user: str, home: str | None) -> UserOutcome:
        outcome = UserOutcome(user)
        started = time.monotonic()
        if not self._in_database(user):
            raise MigrationError("no mailboxes in the database")
        source = self._pg_account(user)
        root = self.maildir.root(user, home)
        # A tree this run creates gets the backend's default folders; they
        # are made to match the database's below, or removed.
        fresh = not os.path.isdir(os.path.join(root, "cur"))
        target = self.maildir.account(user, home)
        folders = _Folders(target, root, fresh)
        wanted = [e for e in _call(source.list_mailboxes()) if "\\Noselect" not in e.attributes]
        for entry in wanted:
            path = folders.prepare(entry.name, frozenset(entry.attributes) & SPECIAL_USES)
            box = _call(source.get_mailbox(entry.name))
            self._mailbox_to_maildir(user, entry.name, box, path, outcome, started)
        folders.remove_unwanted_defaults({e.name for e in wanted})
        subscribed = set(target.subscriptions())
        wanted_subscriptions = list(_call(source.subscriptions()))
        for name in wanted_subscriptions:
            if name not in subscribed:
                target.subscribe(name)
        if fresh:
            for name in subscribed - set(wanted_subscriptions):
                target.unsubscribe(name)
        outcome.seconds = time.monotonic() - started
        return outcome

    def _mailbox_to_maildir(
        self, user: str, name: str, box: Any, path: str, outcome: UserOutcome, started: float
    ) -> None:
        """Write one mailbox's messages the folder lacks, then its keyword
        table and, last, the UID list the backend adopts UIDs from."""
        keywords = list(_call(box.keywords()))
        if len(keywords) > _MAX_KEYWORD_LETTERS:
            raise MigrationError(
                f"{name}: {len(keywords)} keywords; a Maildir folder holds at most "
                f"{_MAX_KEYWORD_LETTERS}"
            )
        outcome.mailboxes += 1
        letters = {keyword: chr(ord("a") + i) for i, keyword in enumerate(keywords)}
        uids = list(_call(box.uids()))
        uidls = dict(_call(box.pop3_uidls()))
        written = self._written(path)
        lines = []
        for start in range(0, len(uids), BATCH_MESSAGES):
            for info in _call(box.fetch(uids[start : start + BATCH_MESSAGES])):
                base = f"{int(info.internal_date.timestamp())}.M{info.uid}U.mailsrv-export"
                base += f",S={info.size}"
                uidl = uidls.get(info.uid)
                lines.append(f"{info.uid}{' P' + uidl if uidl else ''} :{base}\n")
                if base in written:
                    outcome.skipped += 1
                    continue
                self._export(box, info, path, base, letters, outcome)
            elapsed = time.monotonic() - started
            rate = outcome.messages / elapsed if elapsed > 0 else 0.0
            done = min(start + BATCH_MESSAGES, len(uids))
            self.progress.update(user, name, done, len(uids), rate)
        _write_file(
            os.path.join(path, "dovecot-keywords"),
            "".join(f"{i} {keyword}\n" for i, keyword in enumerate(keywords)),
        )
        # Last: the backend adopts the folder's UIDs from this file.
        _write_file(
            os.path.join(path, "dovecot-uidlist"),
            f"3 V{box.uidvalidity} N{box.uidnext}\n" + "".join(lines),
        )

    def _export(
        self,
        box: Any,
        info: Any,
        path: str,
        base: str,
        letters: dict[str, str],
        outcome: UserOutcome,
    ) -> None:
        """One message into the folder, its flags as the file name's letters."""
        flags = set(info.flags) - {"\\Recent"}
        code = "".join(
            sorted(
                [_SYSTEM_LETTERS[f] for f in flags if f in _SYSTEM_LETTERS]
                + [letters[f] for f in flags if f in letters]
            )
        )
        handle = _call(box.open(info.uid))
        try:
            outcome.octets += self._write(path, base, code, handle, info.internal_date)
        finally:
            handle.close()
        outcome.messages += 1

    @staticmethod
    def _written(path: str) -> set[str]:
        """Bases of the message files a previous export run left in ``cur``."""
        found = set()
        for name in os.listdir(os.path.join(path, "cur")):
            base = name.split(":", 1)[0]
            if ".mailsrv-export" in base:
                found.add(base)
        return found

    @staticmethod
    def _write(path: str, base: str, code: str, handle: IO[bytes], date: datetime.datetime) -> int:
        """One message file: written in tmp/, synced, dated, then moved to cur/."""
        temporary = os.path.join(path, "tmp", base)
        size = 0
        with open(temporary, "wb") as out:
            while True:
                chunk = handle.read(256 * 1024)
                if not chunk:
                    break
                out.write(chunk)
                size += len(chunk)
            out.flush()
            os.fsync(out.fileno())
        stamp = int(date.timestamp())
        os.utime(temporary, (stamp, stamp))
        os.rename(temporary, os.path.join(path, "cur", f"{base}:2,{code}"))
        return size

    def verify(self, user: str, home: str | None) -> UserOutcome:
        outcome = UserOutcome(user)
        started = time.monotonic()
        if not self._maildir_exists(user, home):
            raise MigrationError(f"no Maildir at {self.maildir.root(user, home)}")
        if not self._in_database(user):
            raise MigrationError("no mailboxes in the database")
        maildir = self.maildir.account(user, home)
        postgres = self._pg_account(user)
        outcome.differences = compare(maildir, postgres)
        outcome.messages = sum(
            len(box.messages) for box in _read_account(postgres, with_bodies=False)[0]
        )
        outcome.seconds = time.monotonic() - started
        return outcome


def _untouched(path: str) -> bool:
    """A Maildir folder no message and no mailsrv UID list ever reached."""
    if os.path.exists(os.path.join(path, "mailsrv-uidlist")):
        return False
    return not any(os.listdir(os.path.join(path, sub)) for sub in ("cur", "new"))


def _write_file(path: str, text: str) -> None:
    temporary = f"{path}.mailsrv-export-tmp"
    with open(temporary, "w", encoding="utf-8") as out:
        out.write(text)
        out.flush()
        os.fsync(out.fileno())
    os.rename(temporary, path)
