"""Maildir++ storage: the :class:`~mailsrv.interfaces.IStorage` users keep.

A path template locates each user's Maildir root; :mod:`.account` is the
tree, :mod:`.folder` one folder (see docs/maildir.md for the layout).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import sys
import time
import uuid
import weakref
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorFDSet, IReactorThreads
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.filepath import FilePath
from zope.interface import implementer

from mailsrv.errors import NoSuchMailbox, StorageError
from mailsrv.interfaces import DEFAULT_FOLDERS, IStorage
from mailsrv.storage.maildir.account import MaildirAccount
from mailsrv.storage.maildir.folder import MaildirMailbox
from mailsrv.storage.maildir.layout import (
    STAGING_PREFIX,
    TRASH_PREFIX,
    UIDVALIDITY_NAME,
    fsync_dir,
    needs_index,
)

# Imported here, not where first used: the first watch happens after twistd
# has dropped root, and the code may not be readable by the daemon's user.
if sys.platform.startswith("linux"):
    from twisted.internet import inotify
else:  # pragma: no cover
    inotify = None

log = Logger(namespace="mailsrv.storage.maildir")


def _check_username(username: str) -> None:
    if not isinstance(username, str) or not username:
        raise StorageError("empty user name", code="CANNOT")
    if "/" in username or username.startswith(".") or "\\" in username:
        raise StorageError(f"user name {username!r} cannot be a directory name", code="CANNOT")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in username):
        raise StorageError("control characters in user name", code="CANNOT")


@implementer(IStorage)
class MaildirStorage:
    """Maildir++ trees found through a path template.

    :param template: the Maildir root of a user, with ``{user}`` and/or
        ``{home}`` (``/var/mail/{user}/Maildir``, ``{home}/Maildir``).
    :param poll_interval: seconds between checks of mailboxes that have
        listeners (idle sessions) when inotify is not available.
    :param reactor: enables the watcher that tells idle sessions about
        outside changes (inotify where available, else polling); without it
        changes show up at the next :meth:`MaildirMailbox.check`.
    """

    def __init__(self, template: str, *, poll_interval: float = 5.0, reactor: Any = None) -> None:
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
        self._reactor = reactor
        self._mailboxes: weakref.WeakValueDictionary[str, MaildirMailbox] = (
            weakref.WeakValueDictionary()
        )
        self._watched: dict[str, MaildirMailbox] = {}
        self._poller: Any = None
        self._notifier: Any = None
        self._pending_checks: dict[str, Any] = {}
        self._building: dict[str, list[Deferred[MaildirMailbox]]] = {}
        self._warned: set[str] = set()

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
        account = MaildirAccount(self, username, root)
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
                account = MaildirAccount(self, "", root)
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
            account = MaildirAccount(self, "", staging)
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

    def _mint_uidvalidity(self, root: str) -> int:
        """A UIDVALIDITY above any this account handed out before."""
        path = os.path.join(root, UIDVALIDITY_NAME)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            data = os.read(fd, 64).strip()
            last = int(data) if data.isdigit() else 0
            value = max(int(time.time()), last + 1)
            if value >= 2**32:
                value = 1
            os.lseek(fd, 0, os.SEEK_SET)
            os.ftruncate(fd, 0)
            os.write(fd, f"{value}\n".encode("ascii"))
            os.fsync(fd)
            return value
        finally:
            os.close(fd)

    def _mailbox(self, root: str, path: str, name: str) -> MaildirMailbox:
        key = os.path.realpath(path)
        mailbox = self._mailboxes.get(key)
        if mailbox is None or mailbox._closed:
            mailbox = MaildirMailbox(self, root, path, name)
            self._mailboxes[key] = mailbox
        return mailbox

    def _open_in_thread(self, root: str, path: str, name: str) -> Deferred[MaildirMailbox] | None:
        """A Deferred if the folder must be indexed first and threads are at hand."""
        key = os.path.realpath(path)
        waiting = self._building.get(key)
        if waiting is not None:
            later: Deferred[MaildirMailbox] = Deferred()
            waiting.append(later)
            return later
        mailbox = self._mailboxes.get(key)
        if mailbox is not None and not mailbox._closed:
            return None
        if not IReactorThreads.providedBy(self._reactor) or not needs_index(path):
            return None
        waiters: list[Deferred[MaildirMailbox]] = []
        self._building[key] = waiters

        def build() -> None:
            # A throwaway object of its own (own SQLite connection, own lock
            # file descriptor) builds the index; the reactor thread then
            # opens the finished index in no time.
            MaildirMailbox(self, root, path, name, in_thread=True).close()

        def built(_: None) -> MaildirMailbox:
            del self._building[key]
            mailbox = self._mailbox(root, path, name)
            for waiter in waiters:
                waiter.callback(mailbox)
            return mailbox

        def failed(reason: Failure) -> Failure:
            del self._building[key]
            for waiter in waiters:
                waiter.errback(reason)
            return reason

        pool = self._reactor.getThreadPool()
        started: Deferred[None] = deferToThreadPool(self._reactor, pool, build)
        return started.addCallbacks(built, failed)

    def _close(self, path: str) -> None:
        key = os.path.realpath(path)
        mailbox = self._mailboxes.pop(key, None)
        if mailbox is not None:
            mailbox.close()

    def _warn_once(self, message: str) -> None:
        if message not in self._warned:
            self._warned.add(message)
            log.warn("{message}", message=message)

    # -- watching idle mailboxes ----------------------------------------------------

    def _watch(self, mailbox: MaildirMailbox) -> None:
        if self._reactor is None or mailbox._closed:
            return
        key = mailbox.path
        if key in self._watched:
            return
        self._watched[key] = mailbox
        if self._poller is None:
            self._poller = LoopingCall(self._poll)
            self._poller.clock = self._reactor
            self._poller.start(self.poll_interval, now=False)
        self._inotify_watch(mailbox)

    def _unwatch(self, mailbox: MaildirMailbox) -> None:
        key = mailbox.path
        if self._watched.pop(key, None) is None:
            return
        if self._notifier is not None:
            for directory in mailbox.watched_dirs():
                with contextlib.suppress(Exception):
                    self._notifier.ignore(FilePath(directory.encode()))
        pending = self._pending_checks.pop(key, None)
        if pending is not None and pending.active():
            pending.cancel()
        if not self._watched and self._poller is not None and self._poller.running:
            # Stop polling, but keep the inotify descriptor: closing one
            # takes the kernel 8-14 ms, which every last LOGOUT would pay.
            self._poller.stop()
            self._poller = None

    def _inotify_watch(self, mailbox: MaildirMailbox) -> None:
        if inotify is None:
            return
        try:
            if not IReactorFDSet.providedBy(self._reactor):
                return
            if self._notifier is None:
                self._notifier = inotify.INotify(self._reactor)
                self._notifier.startReading()
            mask = (
                inotify.IN_CREATE | inotify.IN_MOVED_TO | inotify.IN_MOVED_FROM | inotify.IN_DELETE
            )
            key = mailbox.path

            def changed(_watch: object, _path: object, _mask: int) -> None:
                self._schedule_check(key)

            for directory in mailbox.watched_dirs():
                self._notifier.watch(FilePath(directory.encode()), mask=mask, callbacks=[changed])
        except Exception:
            log.failure("inotify unavailable; polling every {n}s", n=self.poll_interval)

    def _schedule_check(self, key: str) -> None:
        if key not in self._watched:
            return  # an event that was already queued when the folder was unwatched
        pending = self._pending_checks.get(key)
        if pending is not None and pending.active():
            return
        self._pending_checks[key] = self._reactor.callLater(0.05, self._check_one, key)

    def _check_one(self, key: str) -> None:
        pending = self._pending_checks.pop(key, None)
        if pending is not None and pending.active():
            pending.cancel()  # the poller got here first; one check is enough
        mailbox = self._watched.get(key)
        if mailbox is None:
            return
        try:
            mailbox.check()
        except NoSuchMailbox:
            self._unwatch(mailbox)
        except Exception:
            log.failure("checking {path} failed", path=key)

    def _poll(self) -> None:
        for key in list(self._watched):
            self._check_one(key)

    def stop_watching(self) -> None:
        """Stop the watcher (service shutdown); it restarts with the next listener."""
        if self._poller is not None and self._poller.running:
            self._poller.stop()
        self._poller = None
        if self._notifier is not None:
            with contextlib.suppress(Exception):
                self._notifier.loseConnection()
            self._notifier = None
        for pending in self._pending_checks.values():
            if pending.active():
                pending.cancel()
        self._pending_checks.clear()
        self._watched.clear()
