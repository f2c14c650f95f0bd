"""The contract between the protocols and storage.

Designed once for both protocols: IMAP sees an :class:`IAccount` (a tree of
:class:`IMailbox`), POP3 sees the INBOX through an :class:`IMaildrop`, and both
rest on the same UIDs, so a message keeps one identity whichever way it is
read.

Conventions every implementation follows:

* Every method may return its value directly or a Deferred firing with it
  (:data:`MaybeDeferred`); callers wrap calls in :func:`maybe_deferred`.
  Only ``add_listener``, ``remove_listener`` and ``logout`` are always
  synchronous.  Errors are the exceptions of :mod:`mailsrv.errors` (raised,
  or as the Deferred's failure).
* Mailbox names are ``str`` in their decoded (Unicode) form with ``/`` as the
  hierarchy delimiter; ``INBOX`` is case-insensitive and always exists.  The
  protocol layer converts to and from modified UTF-7.
* Flags are ``str``: the system flags in their canonical spelling
  (:data:`SYSTEM_FLAGS`) and keywords as atoms other than ``NIL``
  (:func:`mailsrv.storage.flags.check_flags` is the rule).  ``\\Recent`` is
  never stored: it is session state, handed out once by
  :meth:`IMailbox.claim_recent`.
* Message bytes are always in wire form: CRLF line ends.  ``size`` is the
  length of exactly those bytes, so RFC822.SIZE, BODY[], POP3 LIST and RETR
  all agree.
* UIDs ascend, are never reused within one UIDVALIDITY, and MODSEQ values
  (RFC 7162) ascend per mailbox with every change to a message.

Optional features are interfaces of their own, which a backend declares
(``@implementer``) where it has them and callers check with ``providedBy``:
:class:`IMessageCache`, :class:`IMessageRows`, :class:`IMessageColumns`,
:class:`IMaildropLocking`, :class:`IPop3UidSource`, :class:`IFullTextSearch`,
:class:`IIndexSearch` and
:class:`IPop3Listing` on a mailbox, :class:`IQuotaUsage` and
:class:`IMetadataStore` on an account, :class:`IWatchingStorage` on a storage,
:class:`IMaildropReader` on a maildrop.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import IO, Any, ParamSpec, TypeAlias, TypeVar

import attrs
from twisted.internet import defer
from twisted.internet.defer import Deferred
from zope.interface import Attribute, Interface, implementer

from mailsrv.criteria import Criterion

_T = TypeVar("_T")
_P = ParamSpec("_P")

#: What a storage method answers: its value, or a Deferred firing with it.
MaybeDeferred: TypeAlias = _T | Deferred[_T]


def maybe_deferred(
    function: Callable[_P, MaybeDeferred[_T]], *args: _P.args, **kwargs: _P.kwargs
) -> Deferred[_T]:
    """Call a storage method; its answer as a Deferred either way.

    ``defer.maybeDeferred`` with the value type kept: given a method typed
    ``MaybeDeferred[X]``, Twisted's own gives ``Deferred[X | Deferred[X]]``.
    """
    untyped: Callable[_P, Any] = function
    return defer.maybeDeferred(untyped, *args, **kwargs)


SEEN = "\\Seen"
ANSWERED = "\\Answered"
FLAGGED = "\\Flagged"
DELETED = "\\Deleted"
DRAFT = "\\Draft"
RECENT = "\\Recent"

#: The flags every mailbox stores, in canonical spelling (RFC 3501 2.3.2).
SYSTEM_FLAGS: frozenset[str] = frozenset({SEEN, ANSWERED, FLAGGED, DELETED, DRAFT})

#: RFC 6154 special-use attributes a backend may attach to a mailbox.
SPECIAL_USES: frozenset[str] = frozenset(
    {"\\All", "\\Archive", "\\Drafts", "\\Flagged", "\\Junk", "\\Sent", "\\Trash"}
)

#: Folders a new account is given, with their special use.
DEFAULT_FOLDERS: tuple[tuple[str, str], ...] = (
    ("Sent", "\\Sent"),
    ("Drafts", "\\Drafts"),
    ("Trash", "\\Trash"),
    ("Junk", "\\Junk"),
    ("Archive", "\\Archive"),
)


def canonical_flag(flag: str) -> str:
    """Spell a system flag canonically; keywords are returned unchanged.

    System flags are case-insensitive on the wire (RFC 3501 2.3.2), so
    ``\\SEEN`` from a client is the stored ``\\Seen``.
    """
    if flag.startswith("\\"):
        lowered = flag.lower()
        for known in (*SYSTEM_FLAGS, RECENT):
            if known.lower() == lowered:
                return known
    return flag


class StoreMode:
    """How :meth:`IMailbox.store` combines the given flags with the old ones."""

    REPLACE = "replace"  # FLAGS
    ADD = "add"  # +FLAGS
    REMOVE = "remove"  # -FLAGS


class IMessage(Interface):
    """What the index knows about one message, without opening its file."""

    uid = Attribute("int: the message's UID, unique in its mailbox for one UIDVALIDITY.")
    flags = Attribute("frozenset[str]: system flags and keywords, never \\Recent.")
    internal_date = Attribute("datetime.datetime: the internal date, timezone-aware.")
    size = Attribute("int: octets of the message in wire (CRLF) form.")
    modseq = Attribute("int: the MODSEQ of the message's last change (RFC 7162).")
    save_date = Attribute(
        "datetime.datetime | None: when the message was saved into this mailbox "
        "(RFC 8514), timezone-aware: set by the backend when it arrives (delivery, "
        "APPEND, COPY, MOVE: never carried from the source), never changed after.  "
        "None where it is not known (a message stored before the backend kept them)."
    )


@implementer(IMessage)
@attrs.frozen
class MessageInfo:
    """The plain value implementation of :class:`IMessage` backends share."""

    uid: int
    flags: frozenset[str]
    internal_date: datetime.datetime
    size: int
    modseq: int
    save_date: datetime.datetime | None = None


@attrs.frozen
class MailboxStatus:
    """The counters STATUS, SELECT and POP3 STAT report.

    ``mailbox_id`` is the mailbox's RFC 8474 MAILBOXID: an objectid
    (1 to 255 of ``A-Z a-z 0-9 _ -``), the same for as long as the
    mailbox keeps its UIDVALIDITY, kept by a rename, never given to two
    mailboxes of the account at once; "" from a backend that keeps none.
    """

    messages: int
    recent: int
    unseen: int
    deleted: int
    size: int
    uidnext: int
    uidvalidity: int
    highest_modseq: int
    mailbox_id: str = ""


@attrs.frozen
class MailboxEntry:
    """One mailbox of an account as LIST reports it.

    ``attributes`` holds what the backend knows (``\\Noselect``,
    ``\\HasChildren`` or ``\\HasNoChildren``, ``\\Marked``/``\\Unmarked`` and
    special uses); the protocol adds ``\\Subscribed`` and ``\\NonExistent``.
    """

    name: str
    attributes: frozenset[str] = frozenset()


@attrs.frozen
class NewMessage:
    """One message for :meth:`IMailbox.append_many`: its source (read once,
    streamed, in the form :meth:`IMailbox.append` takes), flags and
    internal date (None: now)."""

    source: IO[bytes]
    flags: Iterable[str] = ()
    internal_date: datetime.datetime | None = None


@attrs.frozen
class StoreResult:
    """The outcome of :meth:`IMailbox.store`.

    ``updated`` holds the new state of every message whose flags changed;
    ``conflicts`` the UIDs left alone because their MODSEQ was above the
    ``unchanged_since`` given (CONDSTORE's MODIFIED set).
    """

    updated: tuple[IMessage, ...] = ()
    conflicts: tuple[int, ...] = ()


class IMailboxListener(Interface):
    """Told at once about changes to a mailbox by anyone in this process.

    Changes from other processes arrive when the mailbox notices them (at the
    next :meth:`IMailbox.check`, or from a file-system watcher).  Listeners are
    called synchronously and must only queue work: a selected IMAP session
    keeps these until RFC 3501 lets it tell its client.
    """

    def messages_added(mailbox: IMailbox, uids: Sequence[int]) -> None:
        """New messages with these ascending UIDs are in the mailbox."""

    def flags_changed(mailbox: IMailbox, messages: Sequence[IMessage]) -> None:
        """These messages now have the flags and MODSEQ given."""

    def messages_expunged(mailbox: IMailbox, uids: Sequence[int]) -> None:
        """These UIDs are gone for good."""


class IMailbox(Interface):
    """One mailbox: messages addressed by UID, flags, and change listeners."""

    name = Attribute("str: the mailbox's full name, '/' separated.")
    uidvalidity = Attribute("int: the UIDVALIDITY; constant for the mailbox's life.")
    uidnext = Attribute("int: the UID the next added message will get.")
    highest_modseq = Attribute(
        "int: the highest MODSEQ of any change so far; 0 for a mailbox that keeps no "
        "MODSEQs (IMAP answers NOMODSEQ for it, RFC 7162 3.1.2.2)."
    )
    announced_modseq = Attribute(
        "int: every change with a MODSEQ at or below this has been told to this "
        "process's listeners of the mailbox (changes are told in MODSEQ order).  A "
        "session that has handed on everything its listener heard may give this to its "
        "client as HIGHESTMODSEQ without hiding a change (RFC 7162 3.2)."
    )
    special_use = Attribute("frozenset[str]: RFC 6154 attributes, e.g. {'\\Sent'}.")
    keyword_limit = Attribute(
        "int | None: how many keywords the mailbox can define; None for no limit.  "
        "Once keywords() has this many, storing a new keyword fails with LimitExceeded."
    )

    def status() -> MaybeDeferred[MailboxStatus]:
        """Counters for STATUS and SELECT, answered from the index alone."""

    def uids() -> MaybeDeferred[Sequence[int]]:
        """All UIDs, ascending.  The result may be shared: never mutate it."""

    def keywords() -> MaybeDeferred[Sequence[str]]:
        """The keywords defined in the mailbox, in a stable order.

        Every keyword a message has is among them (a keyword may stay
        defined after the last message with it lost it).  Answered cheaply,
        without reading messages: IMAP asks at SELECT and whenever a session
        meets a keyword it has not been told about (RFC 3501 7.2.6).
        """

    def fetch(uids: Iterable[int]) -> MaybeDeferred[Sequence[IMessage]]:
        """Metadata for the given UIDs that exist, ascending by UID."""

    def open(uid: int) -> MaybeDeferred[IO[bytes]]:
        """The message's bytes in wire form, as a readable binary file.

        Raises :class:`mailsrv.errors.NoSuchMessage` if it was expunged.
        The caller closes the file.
        """

    def append(
        source: IO[bytes],
        flags: Iterable[str] = (),
        internal_date: datetime.datetime | None = None,
    ) -> MaybeDeferred[int]:
        """Add a message read from ``source`` (streamed); return its UID.

        Bare LF line ends are stored as CRLF.  ``internal_date`` defaults to
        now.  Listeners hear ``messages_added`` before this returns.
        """

    def append_many(messages: Sequence[NewMessage]) -> MaybeDeferred[Sequence[int]]:
        """Add all ``messages`` or none of them (MULTIAPPEND, RFC 3502);
        return their UIDs in the order given, ascending.

        If any message cannot be stored, the mailbox is left as it was:
        no message of the batch is visible, to this process or any other,
        and listeners hear nothing (a UID may have been used up meanwhile,
        as UIDs need not be contiguous).  On success listeners hear one
        ``messages_added`` with every UID.
        """

    def remove(uids: Iterable[int]) -> MaybeDeferred[Sequence[int]]:
        """Expunge exactly these messages, whatever their flags (REPLACE's
        expunge of the replaced message, RFC 8508 3.4); return the UIDs
        removed, ascending (those already gone are left out)."""

    def store(
        uids: Iterable[int],
        flags: Iterable[str],
        mode: str,
        unchanged_since: int | None = None,
    ) -> MaybeDeferred[StoreResult]:
        """Change flags of the given messages (:class:`StoreMode`).

        Messages whose flags do not change keep their MODSEQ and are not in
        the result.  With ``unchanged_since`` (CONDSTORE), messages whose
        MODSEQ is higher are left alone and reported as conflicts.
        """

    def copy(
        uids: Iterable[int], destination: IMailbox
    ) -> MaybeDeferred[Sequence[tuple[int, int]]]:
        """Copy messages with their flags and internal dates.

        Returns ``(source_uid, destination_uid)`` pairs, ascending by source
        UID, for UIDPLUS's COPYUID.
        """

    def move(
        uids: Iterable[int], destination: IMailbox
    ) -> MaybeDeferred[Sequence[tuple[int, int]]]:
        """Like :meth:`copy`, then expunge the originals (RFC 6851)."""

    def expunge(uids: Iterable[int] | None = None) -> MaybeDeferred[Sequence[int]]:
        """Remove the messages flagged ``\\Deleted`` (only among ``uids`` if
        given: UID EXPUNGE); return the removed UIDs, ascending."""

    def claim_recent() -> MaybeDeferred[frozenset[int]]:
        """Take the \\Recent messages no session has been given yet.

        A message is \\Recent for exactly one session (RFC 3501 2.3.2): the
        first to claim it after it arrived.
        """

    def check() -> MaybeDeferred[None]:
        """Look now for changes made outside this process (cheaply).

        Found changes are announced to listeners before this returns.
        """

    def changed_since(modseq: int) -> MaybeDeferred[Sequence[IMessage]]:
        """Messages whose MODSEQ is above ``modseq`` (CONDSTORE)."""

    def changed_uids(modseq: int) -> MaybeDeferred[Sequence[int]]:
        """UIDs of the messages whose MODSEQ is above ``modseq``, ascending.

        What CHANGEDSINCE and a QRESYNC reconnect ask of a large mailbox,
        usually with a recent ``modseq``: answered through an index on
        MODSEQ, so ten changes among 100,000 messages cost ten rows.
        """

    def expunged_since(modseq: int) -> MaybeDeferred[Sequence[int]]:
        """UIDs expunged after ``modseq``, ascending.

        The expunge log may be kept for a limited time (see
        :meth:`vanished_since`); asked about a ``modseq`` below what it
        still holds, the answer is every UID below UIDNEXT that no message
        has: a superset of what was expunged since, never less.
        """

    def vanished_since(modseq: int) -> MaybeDeferred[Sequence[int] | None]:
        """UIDs expunged after ``modseq``, ascending, when the expunge log
        still reaches back to ``modseq``; None when it does not (its
        retention dropped older entries, or the log was rebuilt).

        None tells a QRESYNC caller to treat every UID it is asked about
        that no message has as expunged (RFC 7162 3.2.6), which it can
        work out from the UIDs it holds, in ranges, however large the
        mailbox's history is.
        """

    def add_listener(listener: IMailboxListener) -> None:
        """Start telling ``listener`` about changes."""

    def remove_listener(listener: IMailboxListener) -> None:
        """Stop telling ``listener`` about changes; unknown ones are ignored."""


class IMessageCache(Interface):
    """Optional: a mailbox that keeps parsed data (envelope, structure, chosen
    headers) beside its index, so FETCH and SEARCH need not reparse.

    A kind with a ``:`` in its name is named after what a client asked for
    (a HEADER.FIELDS set, a SEARCHed field): a backend may bound how many
    such kinds it keeps and drop a kind's values at any time (Maildir keeps
    ``[limits] max_cache_kinds``, dropping the least recently used), so
    callers treat a missing value as a miss, never as an answer."""

    def get_cached(uid: int, kind: str) -> MaybeDeferred[bytes | None]:
        """The value stored for this message and kind, or None."""

    def set_cached(uid: int, kind: str, value: bytes) -> MaybeDeferred[None]:
        """Store a value; it is dropped with the message."""

    def get_cached_many(uids: Iterable[int], kind: str) -> MaybeDeferred[Mapping[int, bytes]]:
        """The values stored for these messages and this kind, by UID; UIDs
        without one are left out.  One call for a whole FETCH batch."""

    def set_cached_many(kind: str, values: Mapping[int, bytes]) -> MaybeDeferred[None]:
        """Store several values of one kind at once (one transaction);
        values for messages that no longer exist are dropped."""


class ICachedSearch(Interface):
    """Optional, on a mailbox with :class:`IMessageCache`: finds the
    messages whose cached value of one kind contains a byte string, in one
    query, so SEARCH HEADER or FROM over a whole mailbox makes no object
    per message (:mod:`mailsrv.imap.search_pushdown`)."""

    def search_cached(
        kind: str, needle: bytes, low: int, high: int
    ) -> MaybeDeferred[tuple[Sequence[int], Sequence[int]]]:
        """``(matched, missing)``, each ascending: of the messages held now
        with UIDs ``low..high``, those whose value of ``kind`` contains
        ``needle`` octet for octet (an empty ``needle``: whose value is not
        empty), and those with no value of ``kind`` cached."""


#: One message's metadata as :class:`IMessageRows` gives it: UID, flags,
#: INTERNALDATE as UTC seconds and its zone's offset from UTC in minutes,
#: size, MODSEQ.  Messages with the same flags share one frozenset.
MessageRow: TypeAlias = tuple[int, frozenset[str], int, int, int, int]


class IMessageRows(Interface):
    """Optional, on a mailbox: bulk metadata as plain tuples and the UIDs as
    runs, for the whole-mailbox reads a client's first sync makes (SELECT,
    ``FETCH 1:* (FLAGS)``), which then cost no object per message."""

    def message_rows(uids: Iterable[int]) -> MaybeDeferred[Sequence[MessageRow]]:
        """:data:`MessageRow` of each of ``uids`` that still exists,
        ascending by UID; the same facts :meth:`IMailbox.fetch` gives."""

    def uid_runs() -> MaybeDeferred[Sequence[tuple[int, int]]]:
        """Every UID as inclusive ``(first, last)`` runs of consecutive
        UIDs, ascending: :meth:`IMailbox.uids` without a value per message."""


#: The columns :meth:`IMessageColumns.message_columns` can be asked for.
COLUMN_NAMES = frozenset({"flags", "dates", "sizes", "modseqs"})


@attrs.frozen
class MessageColumns:
    """A run of consecutive UIDs' metadata, a column per fact: message ``i``
    of the run has UID ``first + i``.  Only the columns asked for are
    filled (the others are empty).  Flags come as one key per message
    (any hashable the backend likes: a flag-letter string, a frozenset)
    and ``flag_sets`` maps each key present to its flags, so a caller
    renders each distinct flag set once."""

    first: int
    count: int
    flags: Sequence[object] = ()
    flag_sets: Mapping[object, frozenset[str]] = attrs.field(factory=dict)
    #: INTERNALDATE as UTC seconds.
    dates: Sequence[int] = ()
    #: Each date's zone in minutes east of UTC; None when every one is UTC.
    zones: Sequence[int] | None = None
    sizes: Sequence[int] = ()
    modseqs: Sequence[int] = ()


class IMessageColumns(Interface):
    """Optional, on a mailbox: a run of UIDs' metadata as columns, so that
    ``FETCH 1:* (FLAGS)`` over a whole mailbox makes no Python object per
    message on the storage side (rows cost about 1 µs each to build)."""

    def message_columns(
        first: int, last: int, names: frozenset[str]
    ) -> MaybeDeferred[MessageColumns | None]:
        """The ``names`` columns (of :data:`COLUMN_NAMES`) of UIDs ``first``
        to ``last`` inclusive, when every one of them exists; None when any
        does not (the caller then asks :meth:`IMessageRows.message_rows`).
        The same facts :meth:`IMessageRows.message_rows` gives."""


class IMaildropLocking(Interface):
    """Optional, on an INBOX: a POP3 maildrop lock other processes see too.

    :class:`~mailsrv.storage.maildrop.Maildrop` always locks the maildrop
    against a second POP3 session in its own process; a backend shared by
    several processes (Maildir's ``flock``, PostgreSQL's advisory lock)
    provides this so sessions elsewhere are kept out as well.
    """

    def lock_maildrop() -> MaybeDeferred[Callable[[], object]]:
        """Take the lock for a POP3 session; answer its release.

        Raises :class:`mailsrv.errors.MailboxInUse` while another session
        holds it.  The release may answer a Deferred: the maildrop waits for
        it before QUIT is answered, so the client's next login is not
        refused.
        """


class IPop3UidSource(Interface):
    """Optional, on an INBOX: POP3 UIDLs carried over from a migration, so
    clients that leave mail on the server do not download it again."""

    def pop3_uidls() -> MaybeDeferred[Mapping[int, str]]:
        """``{uid: uidl}`` for messages that keep an old UIDL; the others
        get the computed one (:func:`mailsrv.storage.maildrop.unique_id`)."""


class IPop3Listing(Interface):
    """Optional, on an INBOX: what a POP3 login lists, as plain tuples, so
    a maildrop of thousands of messages is listed without a metadata object
    (and a ``datetime``) per message."""

    def pop3_listing() -> MaybeDeferred[Sequence[tuple[int, int, bool]]]:
        """``(uid, size, seen)`` of every message, ascending by UID: the
        same UIDs, sizes and ``\\Seen`` as ``fetch`` of ``uids()`` gives."""


class IIndexSearch(Interface):
    """Optional, on a mailbox: answers search criteria on what it keeps
    beside each message (flags, size, internal date, UID, MODSEQ) itself,
    e.g. as one query, without a metadata object per message.  SEARCH
    hands it the part of a program that needs nothing else
    (:mod:`mailsrv.imap.search_pushdown`) and matches only the rest."""

    def search_index(criterion: Criterion) -> MaybeDeferred[Sequence[int]]:
        """The UIDs, ascending, of the messages held now for which
        :func:`mailsrv.criteria.matches` of ``criterion`` is true; every
        node type of :mod:`mailsrv.criteria` is answered."""


@attrs.frozen
class TextMatches:
    """A full-text index's answer for one needle (:class:`IFullTextSearch`).

    ``indexed`` says which messages the answer covers, as inclusive UID
    runs, ascending: a UID inside them that exists has its text in the
    index (or is gone), and it matches exactly when it is in ``matched``.
    Messages outside them (new ones the index has not reached yet) are
    unknown to the answer: the caller reads their text itself.
    """

    matched: frozenset[int]
    indexed: tuple[tuple[int, int], ...]

    def covers(self, uid: int) -> bool:
        """Whether the answer decides ``uid``."""
        runs = self.indexed
        low, high = 0, len(runs)
        while low < high:
            middle = (low + high) // 2
            if runs[middle][1] < uid:
                low = middle + 1
            else:
                high = middle
        return low < len(runs) and runs[low][0] <= uid


class IFullTextSearch(Interface):
    """Optional, on a mailbox: a full-text index SEARCH BODY and TEXT ask
    before reading message files.  Its answers must equal the scan's: a
    message's text is what :func:`mailsrv.mime.decoding.search_texts`
    gives for it."""

    def search_text(needle: str, body_only: bool) -> MaybeDeferred[TextMatches | None]:
        """The messages whose case-folded body (``body_only``) or header or
        body contains ``needle`` (already case-folded), among those the
        index covers; None when the index cannot answer (switched off, not
        built yet, damaged, or a needle it cannot look up), and the caller
        scans."""


@attrs.frozen
class Usage:
    """What an account holds, as quotas count it (RFC 9208 STORAGE and
    MESSAGE): ``octets`` of messages in wire form, and ``messages``."""

    octets: int
    messages: int


class IQuotaUsage(Interface):
    """An account that tells what it holds without opening or listing its
    messages (QUOTA, ``mailsrv deliver`` and LMTP check limits with it).

    The figure comes from counters the backend keeps up to date as
    messages come and go (per mailbox: Maildir's index triggers,
    PostgreSQL's ``mailboxes`` row, the memory backend's state), so asking
    costs one read per mailbox, never a walk over the messages.
    """

    def usage() -> MaybeDeferred[Usage]:
        """Octets and messages over every mailbox of the account."""


class IMetadataStore(Interface):
    """Optional, on an account: annotations of its mailboxes and of the
    server (RFC 5464 METADATA and METADATA-SERVER).

    Entry names are lower case (RFC 5464 3.2: they are case-insensitive),
    start with ``/private/`` or ``/shared/`` and are stored as given: an
    account has one user, so both scopes live in the same per-user store.
    ``mailbox`` is a mailbox name, or ``""`` for the user's server entries.
    Entries follow their mailbox through ``rename_mailbox`` (renaming INBOX
    copies INBOX's, RFC 5464 3.4) and go with it in ``delete_mailbox``.
    """

    def get_metadata(mailbox: str) -> MaybeDeferred[Mapping[str, bytes]]:
        """Every entry of ``mailbox`` (entry name -> value); raises
        :class:`mailsrv.errors.NoSuchMailbox` for a mailbox that does not exist."""

    def set_metadata(
        mailbox: str, changes: Mapping[str, bytes | None], max_entries: int
    ) -> MaybeDeferred[None]:
        """Set (``None``: remove) entries, all or none, durably.

        Raises :class:`mailsrv.errors.MetadataTooMany` when the mailbox
        would hold more than ``max_entries`` entries afterwards.
        """


class IAccount(Interface):
    """One user's tree of mailboxes: the IMAP avatar."""

    username = Attribute("str: the account's user name.")
    delimiter = Attribute("str: the hierarchy delimiter, '/'.")

    def list_mailboxes() -> MaybeDeferred[Sequence[MailboxEntry]]:
        """Every mailbox (and \\Noselect parent) of the account, INBOX first."""

    def get_mailbox(name: str) -> MaybeDeferred[IMailbox]:
        """Open a mailbox; raises :class:`mailsrv.errors.NoSuchMailbox`.

        Two calls for one name in one process return mailboxes that share
        listeners, so sessions see each other's changes at once.
        """

    def create_mailbox(name: str, special_use: Iterable[str] = ()) -> MaybeDeferred[None]:
        """Create a mailbox (and missing parents); a trailing delimiter is
        ignored.  Raises ``MailboxExists`` or ``InvalidMailboxName``."""

    def delete_mailbox(name: str) -> MaybeDeferred[None]:
        """Delete a mailbox and its messages.  A mailbox with children
        becomes \\Noselect instead (RFC 3501 6.3.4); INBOX cannot be deleted."""

    def rename_mailbox(old: str, new: str) -> MaybeDeferred[None]:
        """Rename a mailbox with its children.  Renaming INBOX moves its
        messages into the new mailbox and leaves INBOX empty (RFC 3501 6.3.5)."""

    def subscriptions() -> MaybeDeferred[Sequence[str]]:
        """Subscribed names, which need not exist."""

    def subscribe(name: str) -> MaybeDeferred[None]:
        """Add a name to the subscriptions."""

    def unsubscribe(name: str) -> MaybeDeferred[None]:
        """Remove a name from the subscriptions."""

    def status(name: str) -> MaybeDeferred[MailboxStatus]:
        """Counters of a mailbox without selecting it or opening messages."""

    def logout() -> None:
        """The session ended: release what it held."""


@attrs.frozen
class MaildropEntry:
    """One message of a POP3 maildrop, in its scan listing order."""

    uid: int
    size: int
    unique_id: str


class IMaildrop(Interface):
    """The INBOX as a POP3 maildrop: the POP3 avatar.

    The listing is fixed at :meth:`open` (RFC 1939: messages arriving later
    are not shown), and only :meth:`commit` changes the mailbox.
    """

    def open() -> MaybeDeferred[Sequence[MaildropEntry]]:
        """Lock the maildrop and list it, oldest first.

        Raises :class:`mailsrv.errors.MailboxInUse` while another POP3
        session holds it.
        """

    def retrieve(uid: int) -> MaybeDeferred[IO[bytes]]:
        """The message's bytes in wire form."""

    def commit(deleted: Iterable[int], seen: Iterable[int]) -> MaybeDeferred[None]:
        """The UPDATE state: flag ``seen`` as \\Seen, remove ``deleted``,
        and release the lock."""

    def release() -> MaybeDeferred[None]:
        """Give up the lock without changing anything (connection lost)."""


class IMaildropReader(Interface):
    """Optional for an :class:`IMaildrop`: :meth:`IMaildrop.retrieve` as the
    backend answers it.  A maildrop that must return a Deferred from
    ``retrieve`` (its callers expect one) offers this so that POP3 RETR
    over a synchronous backend reads the message without a Deferred."""

    def open_message(uid: int) -> MaybeDeferred[IO[bytes]]:
        """What ``retrieve(uid)`` gives, but the file itself where the
        backend opens it synchronously; errors are raised (or fail the
        Deferred) as ``retrieve``'s would."""


class IStorage(Interface):
    """Where accounts come from: what the realm asks for a logged-in user."""

    def account(username: str, home: str | None = None) -> MaybeDeferred[IAccount]:
        """The account of ``username``; ``home`` is the passwd-file home
        directory, for path templates that use it."""


class IWatchingStorage(Interface):
    """Optional, on a storage: it runs a watcher (file-system events, a
    database's notifications) that must stop with the daemon."""

    def stop_watching() -> None:
        """Stop watching and release what the watcher holds (service shutdown)."""
