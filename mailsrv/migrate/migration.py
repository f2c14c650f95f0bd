"""A migration run, one user at a time, either way (see :mod:`mailsrv.migrate`)."""

from __future__ import annotations

import datetime
import os
import time
from typing import IO, Any

from mailsrv.config import Config
from mailsrv.interfaces import SPECIAL_USES, IPop3UidSource
from mailsrv.migrate.compare import at_once, compare, read_account
from mailsrv.migrate.report import MigrationError, Progress, UserOutcome
from mailsrv.migrate.tables import (
    ensure_user,
    finish_mailbox,
    insert_batch,
    last_uidvalidity,
    stored_uids,
    subscribe,
    target_mailbox,
)
from mailsrv.storage import names

__all__ = ["BATCH_BYTES", "BATCH_MESSAGES", "Migration"]

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
        return at_once(self.postgres.account(user))

    # -- the three directions -------------------------------------------------------------

    def to_postgresql(self, user: str, home: str | None) -> UserOutcome:
        outcome = UserOutcome(user)
        started = time.monotonic()
        if not self._maildir_exists(user, home):
            raise MigrationError(f"no Maildir at {self.maildir.root(user, home)}")
        source = self.maildir.account(user, home)
        db = self.postgres.db
        db.call(ensure_user, (user,))
        for entry in source.list_mailboxes():
            if "\\Noselect" not in entry.attributes:
                self._mailbox_to_postgresql(user, source, entry, outcome, started)
        db.call(subscribe, (user, list(source.subscriptions())))
        outcome.seconds = time.monotonic() - started
        return outcome

    def _mailbox_to_postgresql(
        self, user: str, source: Any, entry: Any, outcome: UserOutcome, started: float
    ) -> None:
        """Copy one folder's messages the database lacks, in batches."""
        db = self.postgres.db
        box = source.open_mailbox(entry.name)
        uses = frozenset(entry.attributes) & SPECIAL_USES
        mailbox_id = db.call(target_mailbox, (user, box, uses))
        db.call(last_uidvalidity, (user, box.uidvalidity))
        outcome.mailboxes += 1
        present = set(db.call(stored_uids, (user, mailbox_id)))
        uids = list(box.uids())
        todo = [uid for uid in uids if uid not in present]
        outcome.skipped += len(uids) - len(todo)
        uidls = dict(at_once(box.pop3_uidls())) if IPop3UidSource.providedBy(box) else {}
        done = len(uids) - len(todo)
        for start in range(0, len(todo), BATCH_MESSAGES):
            infos = list(box.fetch(todo[start : start + BATCH_MESSAGES]))
            self._batch_to_postgresql(user, box, mailbox_id, infos, uidls, outcome)
            done += len(infos)
            elapsed = time.monotonic() - started
            rate = outcome.messages / elapsed if elapsed > 0 else 0.0
            self.progress.update(user, entry.name, done, len(uids), rate)
        db.call(finish_mailbox, (user, mailbox_id, box, list(box.keywords()), uses))

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
        # The save date is kept where the Maildir knows it (RFC 8514: the
        # message stays in "the same" mailbox); the database's now() otherwise.
        saved = getattr(info, "save_date", None)
        return (info.uid, modseq, bits, keywords, info.internal_date, spool, uidl, saved)

    def _commit(self, mailbox_id: int, rows: list[Any], outcome: UserOutcome, user: str) -> int:
        inserted = int(
            self.postgres.db.call(insert_batch, (self.postgres.blobs, user, mailbox_id, rows))
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
        wanted = [e for e in at_once(source.list_mailboxes()) if "\\Noselect" not in e.attributes]
        for entry in wanted:
            path = folders.prepare(entry.name, frozenset(entry.attributes) & SPECIAL_USES)
            box = at_once(source.get_mailbox(entry.name))
            self._mailbox_to_maildir(user, entry.name, box, path, outcome, started)
        folders.remove_unwanted_defaults({e.name for e in wanted})
        subscribed = set(target.subscriptions())
        wanted_subscriptions = list(at_once(source.subscriptions()))
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
        keywords = list(at_once(box.keywords()))
        if len(keywords) > _MAX_KEYWORD_LETTERS:
            raise MigrationError(
                f"{name}: {len(keywords)} keywords; a Maildir folder holds at most "
                f"{_MAX_KEYWORD_LETTERS}"
            )
        outcome.mailboxes += 1
        letters = {keyword: chr(ord("a") + i) for i, keyword in enumerate(keywords)}
        uids = list(at_once(box.uids()))
        uidls = dict(at_once(box.pop3_uidls()))
        written = self._written(path)
        lines = []
        for start in range(0, len(uids), BATCH_MESSAGES):
            for info in at_once(box.fetch(uids[start : start + BATCH_MESSAGES])):
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
            # G: the MAILBOXID (RFC 8474), which the adopting folder keeps.
            f"3 V{box.uidvalidity} N{box.uidnext} G{at_once(box.status()).mailbox_id}\n"
            + "".join(lines),
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
        handle = at_once(box.open(info.uid))
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
            len(box.messages) for box in read_account(postgres, with_bodies=False)[0]
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
