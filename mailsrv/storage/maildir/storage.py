"""Maildir++ storage: the :class:`~mailsrv.interfaces.IStorage` users keep.

A path template locates each user's Maildir root; :mod:`.account` is the
tree, :mod:`.folder` one folder (see docs/maildir.md for the layout).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import time
import uuid
from typing import Any

from zope.interface import implementer

from mailsrv.errors import StorageError
from mailsrv.interfaces import DEFAULT_FOLDERS, IStorage, IWatchingStorage
from mailsrv.log import get_logger
from mailsrv.storage.maildir.account import MaildirAccount
from mailsrv.storage.maildir.cache import CACHE_KINDS
from mailsrv.storage.maildir.layout import (
    STAGING_PREFIX,
    TRASH_PREFIX,
    fsync_dir,
)
from mailsrv.storage.maildir.registry import MailboxRegistry
from mailsrv.storage.maildir.watch import NO_WATCHER, FolderWatcher

# One namespace for the whole backend: log lines name it, not its modules.
log = get_logger("mailsrv.storage.maildir")


def _check_username(username: str) -> None:
    if not isinstance(username, str) or not username:
        raise StorageError("empty user name", code="CANNOT")
    if "/" in username or username.startswith(".") or "\\" in username:
        raise StorageError(f"user name {username!r} cannot be a directory name", code="CANNOT")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in username):
        raise StorageError("control characters in user name", code="CANNOT")


@implementer(IStorage, IWatchingStorage)
class MaildirStorage:
    """Maildir++ trees found through a path template.

    :param template: the Maildir root of a user, with ``{user}`` and/or
        ``{home}`` (``/var/mail/{user}/Maildir``, ``{home}/Maildir``).
    :param poll_interval: seconds between checks of mailboxes that have
        listeners (idle sessions); inotify, where available, tells of
        changes sooner.
    :param reactor: enables the watcher that tells idle sessions about
        outside changes (inotify where available, else polling); without it
        changes show up at the next :meth:`MaildirMailbox.check`.
    :param keep_open: keep every folder opened until :meth:`close` (an
        embedding application with few folders that stops while its process
        goes on, such as mailsrv.testing); by default a folder no session
        uses is let go, and its index closed when the garbage collector
        frees it.
    :param fulltext: keep a full-text index per folder for SEARCH BODY and
        TEXT (``[storage] fulltext``); answers need a reactor's threads.
    :param threaded_writes: with a ``reactor`` that has a thread pool,
        writes (APPEND, STORE, EXPUNGE, COPY) take the folder lock and
        fsync in a thread, one at a time per folder, and answer with
        Deferreds, so the reactor keeps answering meanwhile
        (:mod:`.writer`); the daemon sets it.
    :param cache_kinds: cache kinds named after what clients asked for
        (HEADER.FIELDS sets, SEARCHed fields) each folder's index keeps at
        most; past it the least recently used one is dropped
        (``[limits] max_cache_kinds``).
    """

    def __init__(
        self,
        template: str,
        *,
        poll_interval: float = 5.0,
        reactor: Any = None,
        keep_open: bool = False,
        fulltext: bool = True,
        threaded_writes: bool = False,
        cache_kinds: int = CACHE_KINDS,
    ) -> None:
        if "{user}" not in template and "{home}" not in template:
            raise StorageError(f"maildir template {template!r} must contain {{user}} or {{home}}")
        try:
            template.format(user="user", home="/home")
        except (KeyError, IndexError, ValueError) as exc:
            raise StorageError(
                f"maildir template {template!r}: only {{user}} and {{home}} may be used ({exc})"
            ) from None
        if poll_interval <= 0:
            raise StorageError("poll_interval must be positive")
        self.template = template
        self.poll_interval = poll_interval
        self._watcher = FolderWatcher(reactor, poll_interval) if reactor is not None else None
        self._mailboxes = MailboxRegistry(
            self._watcher or NO_WATCHER,
            reactor,
            keep_open=keep_open,
            fulltext=fulltext,
            threaded_writes=threaded_writes,
            cache_kinds=cache_kinds,
        )

    # -- accounts -------------------------------------------------------------

    def root(self, username: str, home: str | None = None) -> str:
        """The Maildir root of ``username`` (not created)."""
        _check_username(username)
        if "{home}" in self.template:
            if not home:
                raise StorageError(
                    f"maildir template {self.template!r} needs the home directory of "
                    f"{username!r}, and none is known"
                )
            if not os.path.isabs(home):
                raise StorageError(f"home directory {home!r} of {username!r} is not absolute")
        path = self.template.format(user=username, home=home or "")
        return os.path.abspath(path)

    def account(self, username: str, home: str | None = None) -> MaildirAccount:
        root = self.root(username, home)
        if not os.path.isdir(os.path.join(root, "cur")):
            self._create_root(root)
        account = MaildirAccount(self._mailboxes, username, root)
        account._seed_special_uses()
        self._clean_root(root)
        return account

    def _create_root(self, root: str) -> None:
        """A new user: the Maildir with the default special-use folders, made atomically."""
        parent = os.path.dirname(root)
        os.makedirs(parent, mode=0o700, exist_ok=True)
        if os.path.isdir(root):
            # A root without cur/ (made by hand, or by a tool): complete it,
            # with the default folders if it is empty.
            empty = not os.listdir(root)
            for sub in ("cur", "new", "tmp"):
                os.makedirs(os.path.join(root, sub), 0o700, exist_ok=True)
            if empty:
                account = MaildirAccount(self._mailboxes, "", root)
                for name, _use in DEFAULT_FOLDERS:
                    account._make_folder(name)
                account._write_special_uses(
                    {name: frozenset({use}) for name, use in DEFAULT_FOLDERS}
                )
            return
        staging = os.path.join(
            parent, f".{os.path.basename(root)}.{STAGING_PREFIX}{uuid.uuid4().hex}"
        )
        os.mkdir(staging, 0o700)
        try:
            for sub in ("cur", "new", "tmp"):
                os.mkdir(os.path.join(staging, sub), 0o700)
            account = MaildirAccount(self._mailboxes, "", staging)
            table: dict[str, frozenset[str]] = {}
            for name, use in DEFAULT_FOLDERS:
                account._make_folder(name)
                table[name] = frozenset({use})
            account._write_special_uses(table)
            try:
                os.rename(staging, root)
            except OSError as exc:
                if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
                return  # created meanwhile by another process
            fsync_dir(parent)
        finally:
            if os.path.isdir(staging):
                shutil.rmtree(staging, ignore_errors=True)

    def _clean_root(self, root: str) -> None:
        """Remove what a crash left behind in the middle of create or delete."""
        with contextlib.suppress(OSError):
            for entry in os.scandir(root):
                if entry.name.startswith((TRASH_PREFIX, STAGING_PREFIX)):
                    with contextlib.suppress(OSError):
                        if time.time() - entry.stat().st_mtime > 3600:
                            shutil.rmtree(entry.path, ignore_errors=True)

    def close(self) -> None:
        """Close every open folder's index and lock (with ``keep_open``:
        every folder opened so far); folders opened after this work as
        before."""
        self._mailboxes.close_all()

    def stop_watching(self) -> None:
        """Stop the watcher (service shutdown); it restarts with the next listener."""
        if self._watcher is not None:
            self._watcher.stop()
