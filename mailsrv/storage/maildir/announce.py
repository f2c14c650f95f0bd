"""What a folder's listeners are told, read from its index.

:class:`~.folder.MaildirMailbox` tells its sessions' listeners what changed
since they last heard: after its own changes, after another process's (a
ping, a watcher's check), and after a damaged or replaced index was
rebuilt.  This module reads those changes from the index and hands them
to the listeners; the mailbox decides when.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from mailsrv.interfaces import IMailbox, IMailboxListener, MessageInfo
from mailsrv.log import get_logger
from mailsrv.storage.maildir.index import Row
from mailsrv.storage.maildir.indexed import IndexedFolder
from mailsrv.storage.maildir.keywords import KeywordTable
from mailsrv.storage.maildir.layout import ns_datetime, saved_datetime

__all__ = ["News", "message_info", "news_after_rebuild", "news_since_seen", "tell"]

log = get_logger("mailsrv.storage.maildir")


@attrs.frozen
class News:
    """UIDs new to the listeners, messages whose flags changed, UIDs gone."""

    added: list[int]
    changed: list[MessageInfo]
    expunged: list[int]


def message_info(keywords: KeywordTable, row: Row) -> MessageInfo:
    """One index row as the protocols' :class:`MessageInfo`."""
    return MessageInfo(
        uid=row.uid,
        flags=keywords.flags(row.info),
        internal_date=ns_datetime(row.mtime_ns),
        size=row.size,
        modseq=row.modseq,
        save_date=saved_datetime(row.saved),
    )


def news_since_seen(folder: IndexedFolder, listening: bool) -> News | None:
    """What the index shows since ``folder.seen_modseq``/``seen_uidnext``
    (and moves them on); None when nothing changed.  ``listening``: whether
    anyone is told (otherwise only the marks move)."""
    db = folder.db
    seen_modseq, seen_uidnext = folder.seen_modseq, folder.seen_uidnext
    # The index was replaced since the last look (IndexedFolder._reopen):
    # its MODSEQs start afresh, so what differs from the old one's UIDs
    # is told by UID.
    replaced, folder.replaced_uids = folder.replaced_uids, None
    present: Sequence[int] | None = None
    with db.snapshot():
        highest = db.get_int("highest_modseq")
        uidnext = db.get_int("uidnext")
        if highest == seen_modseq and uidnext == seen_uidnext and replaced is None:
            return None
        rows = db.changed_since(seen_modseq) if listening else []
        gone = db.expunged_since(seen_modseq) if listening else []
        if replaced is not None and listening:
            present = db.uids()
    added = [row.uid for row in rows if row.uid >= seen_uidnext]
    # Another process may have defined the keywords these rows carry.
    folder.keywords.refresh()
    changed = [message_info(folder.keywords, row) for row in rows if row.uid < seen_uidnext]
    expunged = [uid for uid in gone if uid < seen_uidnext]
    if present is not None:
        arrived, vanished = _by_uid(present, replaced, seen_uidnext)
        listed = set(added)
        added += [uid for uid in arrived if uid not in listed]
        expunged += vanished
    folder.seen_modseq, folder.seen_uidnext = highest, uidnext
    return News(added, changed, expunged)


def news_after_rebuild(folder: IndexedFolder, known: Sequence[int] | None) -> News:
    """What a rebuilt index shows differently from ``known`` (the UIDs
    sessions were last given).  Every MODSEQ restarted above the old ones,
    so flags are not announced again."""
    db = folder.db
    added, gone = _by_uid(db.uids(), known, folder.seen_uidnext)
    folder.seen_modseq = db.get_int("highest_modseq")
    folder.seen_uidnext = db.get_int("uidnext")
    return News(added, [], gone)


def _by_uid(
    present: Sequence[int], known: Sequence[int] | None, seen_uidnext: int
) -> tuple[list[int], list[int]]:
    """What an index whose MODSEQs restarted (rebuilt, or replaced by
    another process) shows differently, told by UID alone: the UIDs from
    ``seen_uidnext`` on among ``present`` (ascending), and those of
    ``known`` (what sessions were last given) no longer present."""
    still = set(present)
    added = [uid for uid in present if uid >= seen_uidnext]
    return added, [uid for uid in known or () if uid not in still]


def tell(listeners: Sequence[IMailboxListener], mailbox: IMailbox, news: News) -> None:
    """Hand ``news`` to each listener; one that fails is logged, not the
    others' loss."""
    for listener in list(listeners):
        try:
            if news.added:
                listener.messages_added(mailbox, news.added)
            if news.changed:
                listener.flags_changed(mailbox, news.changed)
            if news.expunged:
                listener.messages_expunged(mailbox, news.expunged)
        except Exception:
            log.failure("mailbox listener {listener!r} failed", listener=listener)
