"""One user's Maildir++ tree as an :class:`~mailsrv.interfaces.IAccount`.

Folder ``A/B`` is the directory ``.A.B`` in the Maildir root (names in
modified UTF-7, see :mod:`mailsrv.storage.names`); the root itself is the
INBOX.  Folders are created in a staging directory and renamed into place,
and deleted by renaming them aside first, so a crash never leaves half a
folder that looks like a mailbox.  Special uses and subscriptions are small
files in the root.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, cast

from twisted.internet.defer import Deferred, gatherResults
from twisted.python.failure import Failure
from zope.interface import implementer

from mailsrv import mutf7
from mailsrv.errors import (
    InvalidMailboxName,
    MailboxExists,
    MailboxNotEmpty,
    NoSuchMailbox,
    StorageError,
)
from mailsrv.interfaces import (
    SPECIAL_USES,
    IAccount,
    IMailbox,
    IMetadataStore,
    IQuotaUsage,
    MailboxEntry,
    MailboxStatus,
    MaybeDeferred,
    Usage,
)
from mailsrv.storage import names
from mailsrv.storage.maildir.folder import MaildirMailbox
from mailsrv.storage.maildir.layout import (
    MAILDIRFOLDER_NAME,
    METADATA_NAME,
    SERVER_METADATA_NAME,
    SPECIAL_USE_NAME,
    STAGING_PREFIX,
    SUBSCRIPTIONS_NAME,
    TRASH_PREFIX,
    fsync_dir,
    touch,
    write_atomically,
)
from mailsrv.storage.maildir.recovery import crash_point
from mailsrv.storage.metadata import decode_entries, encode_entries, merged

if TYPE_CHECKING:
    from mailsrv.storage.maildir.registry import MailboxRegistry


#: Folder names recognised as special-use on a tree we did not create.
SPECIAL_USE_NAMES: dict[str, tuple[str, ...]] = {
    "\\Sent": ("sent", "sent messages", "sent items", "sent mail"),
    "\\Drafts": ("drafts", "draft"),
    "\\Trash": ("trash", "deleted messages", "deleted items", "bin"),
    "\\Junk": ("junk", "spam", "junk e-mail", "junk email"),
    "\\Archive": ("archive", "archives"),
}


def _special_use_guess(name: str) -> str | None:
    lowered = name.lower()
    for use, candidates in SPECIAL_USE_NAMES.items():
        if lowered in candidates:
            return use
    return None


@implementer(IAccount, IQuotaUsage, IMetadataStore)
class MaildirAccount:
    """One user's Maildir++ tree."""

    delimiter = names.DELIMITER

    def __init__(self, mailboxes: MailboxRegistry, username: str, root: str) -> None:
        self._mailboxes = mailboxes
        self.username = username
        self.root = root

    def __repr__(self) -> str:
        return f"<MaildirAccount {self.username!r} at {self.root!r}>"

    # -- paths ----------------------------------------------------------------

    def _path(self, name: str) -> str:
        if name == names.INBOX:
            return self.root
        return os.path.join(self.root, names.name_to_dirname(name))

    def _folders(self) -> dict[str, bool]:
        """Decoded folder name -> selectable, for every folder directory."""
        found: dict[str, bool] = {}
        try:
            entries = list(os.scandir(self.root))
        except FileNotFoundError:
            raise NoSuchMailbox(f"the mail directory {self.root} is gone") from None
        for entry in entries:
            if not entry.name.startswith(".") or entry.name.startswith(".."):
                continue
            try:
                if not entry.is_dir():
                    continue
            except OSError:
                continue
            name = names.dirname_to_name(entry.name)
            if name is None:
                self._mailboxes.warn_once(
                    f"skipping {entry.path}: not a valid Maildir++ folder name"
                )
                continue
            found[name] = os.path.isdir(os.path.join(entry.path, "cur"))
        return found

    def _children(self, name: str, folders: dict[str, bool] | None = None) -> list[str]:
        folders = self._folders() if folders is None else folders
        prefix = name + names.DELIMITER
        return [folder for folder in folders if folder.startswith(prefix)]

    # -- special use ------------------------------------------------------------

    def _special_use_path(self) -> str:
        return os.path.join(self.root, SPECIAL_USE_NAME)

    def special_uses(self) -> dict[str, frozenset[str]]:
        """Folder name -> special-use attributes recorded for it."""
        result: dict[str, set[str]] = {}
        try:
            with open(self._special_use_path(), encoding="utf-8") as handle:
                lines = handle.read().splitlines()
        except FileNotFoundError:
            return {}
        for line in lines:
            use, _, name = line.partition("\t")
            if use in SPECIAL_USES and name:
                result.setdefault(name, set()).add(use)
        return {name: frozenset(uses) for name, uses in result.items()}

    def _write_special_uses(self, table: dict[str, frozenset[str]]) -> None:
        lines = [f"{use}\t{name}\n" for name in sorted(table) for use in sorted(table[name])]
        write_atomically(self._special_use_path(), "".join(lines).encode("utf-8"))

    def _seed_special_uses(self) -> None:
        """On a tree we did not create, recognise the usual folder names once."""
        if os.path.exists(self._special_use_path()):
            return
        table: dict[str, frozenset[str]] = {}
        taken: set[str] = set()
        for name in sorted(self._folders()):
            use = _special_use_guess(name)
            if use is not None and use not in taken:
                table[name] = frozenset({use})
                taken.add(use)
        self._write_special_uses(table)

    # -- IAccount -------------------------------------------------------------

    def list_mailboxes(self) -> Sequence[MailboxEntry]:
        folders = self._folders()
        for name in list(folders):
            for parent in names.parents(name):
                folders.setdefault(parent, False)
        # INBOX is the root, listed first below; ".INBOX.Sub" only makes it
        # a parent, never a second, unselectable INBOX.
        folders.pop(names.INBOX, None)
        uses = self.special_uses()
        parents_with_children = {parent for name in folders for parent in names.parents(name)}
        inbox_children = any(name.startswith("INBOX/") for name in folders)
        entries = [
            MailboxEntry(
                names.INBOX,
                frozenset({"\\HasChildren" if inbox_children else "\\HasNoChildren"}),
            )
        ]
        for name in sorted(folders):
            attributes = set(uses.get(name, ()))
            attributes.add("\\HasChildren" if name in parents_with_children else "\\HasNoChildren")
            if not folders[name]:
                attributes.add("\\Noselect")
            entries.append(MailboxEntry(name, frozenset(attributes)))
        return entries

    def _locate(self, name: str) -> tuple[str, str]:
        name = names.normalize_maildir(name)
        path = self._path(name)
        if not os.path.isdir(os.path.join(path, "cur")):
            raise NoSuchMailbox(f"no mailbox named {name!r}")
        return name, path

    def open_mailbox(self, name: str) -> MaildirMailbox:
        """:meth:`get_mailbox`, always synchronous (CLI, delivery, tests)."""
        name, path = self._locate(name)
        mailbox = self._mailboxes.open(self.root, path, name)
        mailbox.special_use = self.special_uses().get(name, frozenset())
        return mailbox

    def get_mailbox(self, name: str) -> MaybeDeferred[IMailbox]:
        """The shared mailbox object.

        With a reactor, a folder that has messages but no index yet (first
        sight of a migrated tree, a lost index) is indexed in a thread and a
        Deferred is returned, so a 100,000-message folder does not stall
        every other connection for seconds.
        """
        found = self._open(name)
        if isinstance(found, Deferred):
            # Deferred is invariant in its type: one of a MaildirMailbox
            # is one of an IMailbox all the same.
            return cast("Deferred[IMailbox]", found)
        return found

    def _open(self, name: str) -> MaildirMailbox | Deferred[MaildirMailbox]:
        name, path = self._locate(name)
        uses = self.special_uses().get(name, frozenset())
        pending = self._mailboxes.open_in_thread(self.root, path, name)
        if pending is None:
            return self.open_mailbox(name)

        def found(mailbox: MaildirMailbox) -> MaildirMailbox:
            mailbox.special_use = uses
            return mailbox

        return pending.addCallback(found)

    def _make_folder(self, name: str) -> bool:
        """Create one folder directory; False if it already was a mailbox."""
        path = self._path(name)
        if os.path.isdir(os.path.join(path, "cur")):
            return False
        staging = os.path.join(self.root, STAGING_PREFIX + uuid.uuid4().hex)
        os.mkdir(staging, 0o700)
        try:
            for sub in ("cur", "new", "tmp"):
                os.mkdir(os.path.join(staging, sub), 0o700)
            touch(os.path.join(staging, MAILDIRFOLDER_NAME))
            crash_point("create-staged")
            try:
                os.rename(staging, path)
            except OSError as exc:
                if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
                # A \Noselect remnant: make it a mailbox in place.
                for sub in ("cur", "new", "tmp"):
                    os.makedirs(os.path.join(path, sub), 0o700, exist_ok=True)
                touch(os.path.join(path, MAILDIRFOLDER_NAME))
            crash_point("create-renamed")
            fsync_dir(self.root)
        finally:
            if os.path.isdir(staging):
                shutil.rmtree(staging, ignore_errors=True)
        return True

    def create_mailbox(self, name: str, special_use: Iterable[str] = ()) -> None:
        name = names.normalize_maildir(name)
        uses = frozenset(special_use)
        unknown = uses - SPECIAL_USES
        if unknown:
            raise StorageError(
                f"unknown special-use attribute {sorted(unknown)[0]}", code="USEATTR"
            )
        if name == names.INBOX or os.path.isdir(os.path.join(self._path(name), "cur")):
            raise MailboxExists(f"mailbox {name!r} already exists")
        for parent in names.parents(name):
            if parent != names.INBOX:
                self._make_folder(parent)
        if not self._make_folder(name):
            raise MailboxExists(f"mailbox {name!r} already exists")
        if uses:
            table = self.special_uses()
            table[name] = uses
            self._write_special_uses(table)

    def delete_mailbox(self, name: str) -> None:
        name = names.normalize_maildir(name)
        if name == names.INBOX:
            raise StorageError("INBOX cannot be deleted", code="CANNOT")
        path = self._path(name)
        folders = self._folders()
        exists = os.path.isdir(path)
        children = self._children(name, folders)
        if not exists and not children:
            raise NoSuchMailbox(f"no mailbox named {name!r}")
        if children and not folders.get(name, False):
            raise MailboxNotEmpty(
                f"{name!r} has inferior mailboxes and holds no messages of its own"
            )
        self._mailboxes.close(path)
        trash = os.path.join(self.root, TRASH_PREFIX + uuid.uuid4().hex)
        try:
            os.rename(path, trash)
        except FileNotFoundError:
            raise NoSuchMailbox(f"no mailbox named {name!r}") from None
        fsync_dir(self.root)
        crash_point("delete-renamed")
        shutil.rmtree(trash, ignore_errors=True)
        crash_point("delete-removed")
        table = self.special_uses()
        if table.pop(name, None) is not None:
            self._write_special_uses(table)

    def rename_mailbox(self, old: str, new: str) -> None:
        old = names.normalize_maildir(old)
        new = names.normalize_maildir(new)
        self._check_rename(old, new)
        if old == names.INBOX:
            self._rename_inbox(new)
            return
        old_dir = names.name_to_dirname(old)
        new_dir = names.name_to_dirname(new)
        moves = [
            entry
            for entry in os.listdir(self.root)
            if entry == old_dir or entry.startswith(old_dir + ".")
        ]
        if not moves:
            raise NoSuchMailbox(f"no mailbox named {old!r}")
        for parent in names.parents(new):
            if parent != names.INBOX and not parent.startswith(old + names.DELIMITER):
                if parent != old:
                    self._make_folder(parent)
        for entry in moves:
            self._mailboxes.close(os.path.join(self.root, entry))
        for entry in sorted(moves):
            os.rename(
                os.path.join(self.root, entry),
                os.path.join(self.root, new_dir + entry[len(old_dir) :]),
            )
            crash_point("rename-moving")
        fsync_dir(self.root)
        crash_point("rename-moved")
        self._rename_special_uses(old, new)

    def _check_rename(self, old: str, new: str) -> None:
        """Refuse a rename onto INBOX, itself, a name inside itself or an
        existing mailbox (or a name existing ones are inside of)."""
        if new == names.INBOX or old == new:
            raise MailboxExists(f"mailbox {new!r} already exists")
        if new.startswith(old + names.DELIMITER):
            raise InvalidMailboxName("a mailbox cannot be renamed to a name inside itself")
        folders = self._folders()
        if new in folders or self._children(new, folders):
            raise MailboxExists(f"mailbox {new!r} already exists")

    def _rename_special_uses(self, old: str, new: str) -> None:
        """Special uses follow their folders (and children) to the new name."""
        table = self.special_uses()
        renamed = {}
        for name, uses in table.items():
            if name == old or name.startswith(old + names.DELIMITER):
                renamed[new + name[len(old) :]] = uses
            else:
                renamed[name] = uses
        if renamed != table:
            self._write_special_uses(renamed)

    def _rename_inbox(self, new: str) -> None:
        """RFC 3501 6.3.5: move INBOX's messages to a new mailbox, leave INBOX empty."""
        self.create_mailbox(new)
        entries = self.get_metadata(names.INBOX)
        if entries:  # RFC 5464 3.4: the new mailbox gets a copy of INBOX's
            write_atomically(self._metadata_path(new), encode_entries(entries))
        inbox = self.open_mailbox(names.INBOX)
        # The base class's check, which waits for the lock: the moves below
        # need new/ caught up first, here and now.
        MaildirMailbox.check(inbox)
        destination = self.open_mailbox(new)
        uids = list(inbox.uids())
        for start in range(0, len(uids), 1000):
            inbox.move(uids[start : start + 1000], destination)

    # -- annotations (RFC 5464) ---------------------------------------------------

    def _metadata_path(self, mailbox: str) -> str:
        if mailbox == "":
            return os.path.join(self.root, SERVER_METADATA_NAME)
        path = self._path(names.normalize_maildir(mailbox))
        if not os.path.isdir(path):
            raise NoSuchMailbox(f"no mailbox named {mailbox!r}")
        return os.path.join(path, METADATA_NAME)

    def get_metadata(self, mailbox: str) -> dict[str, bytes]:
        path = self._metadata_path(mailbox)
        try:
            with open(path, "rb") as handle:
                return decode_entries(handle.read(), path)
        except FileNotFoundError:
            return {}

    def set_metadata(
        self, mailbox: str, changes: Mapping[str, bytes | None], max_entries: int
    ) -> None:
        # A read-modify-write under an flock of the folder's directory, so
        # daemons sharing the tree do not lose each other's changes; the
        # file itself is replaced atomically.
        path = self._metadata_path(mailbox)
        directory = os.open(os.path.dirname(path), os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(directory, fcntl.LOCK_EX)
            entries = merged(self.get_metadata(mailbox), changes, max_entries)
            if entries:
                write_atomically(path, encode_entries(entries))
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                    fsync_dir(os.path.dirname(path))
        finally:
            os.close(directory)  # releases the lock

    # -- subscriptions ----------------------------------------------------------

    def _subscriptions_path(self) -> str:
        return os.path.join(self.root, SUBSCRIPTIONS_NAME)

    def subscriptions(self) -> Sequence[str]:
        try:
            with open(self._subscriptions_path(), "rb") as handle:
                lines = handle.read().decode("utf-8", "replace").splitlines()
        except FileNotFoundError:
            return []
        result: list[str] = []
        if lines and lines[0].startswith("V\t"):
            # Dovecot 2.x: a version line, then names with TAB as separator.
            for line in lines[1:]:
                if line:
                    self._add_subscription(result, line.split("\t"))
            return result
        for line in lines:
            line = line.strip()
            if not line:
                continue
            parts = line.split(".")
            if (
                parts[0] == names.INBOX
                and len(parts) > 1
                and not os.path.isdir(os.path.join(self.root, "." + line))
            ):
                parts = parts[1:]  # Courier's "INBOX." namespace prefix
            self._add_subscription(result, parts)
        return result

    def _add_subscription(self, result: list[str], parts: list[str]) -> None:
        try:
            decoded = [mutf7.decode(part) for part in parts]
            name = names.normalize_maildir(names.DELIMITER.join(decoded))
        except (ValueError, InvalidMailboxName):
            self._mailboxes.warn_once(f"ignoring subscription {parts!r} in {self.root}")
            return
        if name not in result:
            result.append(name)

    def _write_subscriptions(self, subscribed: Sequence[str]) -> None:
        lines = [
            ".".join(mutf7.encode(part) for part in name.split(names.DELIMITER)) + "\n"
            for name in subscribed
        ]
        write_atomically(self._subscriptions_path(), "".join(lines).encode("ascii"))

    def subscribe(self, name: str) -> None:
        name = names.normalize_maildir(name)
        current = list(self.subscriptions())
        if name not in current:
            current.append(name)
            self._write_subscriptions(current)

    def unsubscribe(self, name: str) -> None:
        name = names.normalize_maildir(name)
        current = list(self.subscriptions())
        if name in current:
            current.remove(name)
            self._write_subscriptions(current)

    # -- the rest -----------------------------------------------------------------

    def status(self, name: str) -> MaybeDeferred[MailboxStatus]:
        def counters(mailbox: MaildirMailbox) -> MaybeDeferred[MailboxStatus]:
            checked = mailbox.check()  # a Deferred when it waits in a writer
            if isinstance(checked, Deferred):
                return checked.addCallback(lambda _: mailbox.status())
            return mailbox.status()

        found = self._open(name)
        if isinstance(found, Deferred):
            return found.addCallback(counters)
        return counters(found)

    def usage(self) -> MaybeDeferred[Usage]:
        """The sum of every folder's counters, which its index keeps by
        triggers as files come and go (one read per folder, no file
        listed); folders not indexed yet are indexed first, once."""
        folders = [names.INBOX, *sorted(n for n, ok in self._folders().items() if ok)]
        counted: list[MailboxStatus] = []
        pending: list[Deferred[None]] = []
        for name in folders:
            try:
                found = self.status(name)
            except NoSuchMailbox:  # deleted since it was listed
                continue
            if isinstance(found, Deferred):
                pending.append(found.addCallbacks(counted.append, _gone))
            else:
                counted.append(found)

        def total(_: object) -> Usage:
            return Usage(sum(s.size for s in counted), sum(s.messages for s in counted))

        if pending:
            return gatherResults(pending, consumeErrors=True).addCallback(total)
        return total(None)

    def logout(self) -> None:
        """Nothing is held per session: mailboxes are shared and freed with their users."""


def _gone(failure: Failure) -> None:
    """A folder deleted while usage was being counted holds nothing."""
    failure.trap(NoSuchMailbox)


def reindex(account: MaildirAccount, skipped: list[str] | None = None) -> dict[str, int]:
    """Rebuild every folder's index from its files: folder name -> messages.

    UIDVALIDITY and UIDs come from each folder's ``mailsrv-uidlist``, so
    clients notice nothing but a higher HIGHESTMODSEQ.  A folder deleted or
    renamed by a client after the listing has nothing to rebuild: its name
    goes to ``skipped``.
    """
    counts: dict[str, int] = {}
    for entry in account.list_mailboxes():
        if "\\Noselect" in entry.attributes:
            continue
        try:
            counts[entry.name] = account.open_mailbox(entry.name).rebuild()
        except Exception as exc:
            # A folder a client deleted or renamed under the rebuild fails
            # as NoSuchMailbox, or as SQLite's I/O error on a vanished file.
            if not isinstance(exc, NoSuchMailbox) and _still_there(account, entry.name):
                raise
            if skipped is not None:
                skipped.append(entry.name)
    return counts


def _still_there(account: MaildirAccount, name: str) -> bool:
    return any(entry.name == name for entry in account.list_mailboxes())
