"""The TRANSACTION state (RFC 1939 5): the maildrop's listing as it was at
login, the marks STAT LIST UIDL RETR TOP DELE NOOP RSET LAST make on it,
and the UPDATE state's commit at QUIT (RFC 1939 6).

Nothing changes in the mailbox before the commit: a session that ends any
other way releases the maildrop with every message still there.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import IO, Any, NoReturn, cast

from twisted.internet import defer
from twisted.internet.error import ConnectionLost
from twisted.python.failure import Failure

from mailsrv import log
from mailsrv.errors import NoSuchMessage, StorageError
from mailsrv.interfaces import IMaildropReader, MaildropEntry, MaybeDeferred
from mailsrv.mime.downgrade import SyntheticFile, downgrade_message, serve
from mailsrv.pop3.commands import (
    LOG,
    CommandError,
    Connection,
    Result,
    State,
    command,
    no_arguments,
)
from mailsrv.pop3.streaming import CHUNK_SIZE, read_whole
from mailsrv.pop3.wire import MessageEncoder, parse_number, stuff_message

__all__ = ["WHOLE_MESSAGE", "Transaction"]

#: RETR reads a message up to this size (as listed) whole and sends it in one
#: write with its status line; a larger one is streamed as the client reads.
WHOLE_MESSAGE = CHUNK_SIZE


class Transaction:
    """An open maildrop and what the session has done with it.

    Holds the avatar from the moment the maildrop opened: :meth:`release`
    and :meth:`logout_avatar` give it back (both safe to call twice).
    """

    def __init__(
        self,
        conn: Connection,
        maildrop: Any,  # an IMaildrop
        logout: Callable[[], None],
        entries: Sequence[MaildropEntry],
        utf8: bool = False,
    ) -> None:
        self._conn = conn
        #: The client sent UTF8 (RFC 6856): messages go out as stored;
        #: otherwise one with 8-bit header octets is downgraded (RFC 6858).
        self._utf8 = utf8
        self._maildrop = maildrop
        #: Opens a message: the file itself where the backend reads
        #: synchronously, else a Deferred (the contract allows either).
        self._open: Callable[[int], MaybeDeferred[IO[bytes]]] = (
            maildrop.open_message if IMaildropReader.providedBy(maildrop) else maildrop.retrieve
        )
        self._logout: Callable[[], None] | None = logout
        self._held = True  # the maildrop is locked by us (open, not committed)
        self._entries = list(entries)
        self._deleted: set[int] = set()  # 0-based indexes into _entries
        self._seen: set[int] = set()  # UIDs read entirely (RETR, full TOP)
        self._highest = 0  # LAST: the highest message number accessed

    def totals(self) -> tuple[int, int]:
        """Messages not marked deleted, and their octets."""
        live = [e for i, e in enumerate(self._entries) if i not in self._deleted]
        return len(live), sum(e.size for e in live)

    def _message(self, arg: bytes) -> int:
        """The 0-based index of a live message number, or a -ERR."""
        number = parse_number(arg)
        if number is None:
            raise CommandError("Invalid message number.")
        index = number - 1
        if not 0 <= index < len(self._entries) or index in self._deleted:
            raise CommandError("No such message.")
        return index

    # -- listing ----------------------------------------------------------------

    @command("STAT", State.TRANSACTION)
    def stat(self, args: list[bytes], line: bytes) -> None:
        no_arguments(args)
        count, octets = self.totals()
        self._conn.ok(f"{count} {octets}")

    @command("LIST", State.TRANSACTION)
    def list_(self, args: list[bytes], line: bytes) -> None:
        if len(args) > 1:
            raise CommandError("LIST takes at most one message number.")
        if args:
            index = self._message(args[0])
            self._conn.ok(f"{index + 1} {self._entries[index].size}")
            return
        count, octets = self.totals()
        listing = [
            b"%d %d" % (i + 1, e.size)
            for i, e in enumerate(self._entries)
            if i not in self._deleted
        ]
        self._conn.multiline(f"{count} messages ({octets} octets)", listing)

    @command("UIDL", State.TRANSACTION)
    def uidl(self, args: list[bytes], line: bytes) -> None:
        if len(args) > 1:
            raise CommandError("UIDL takes at most one message number.")
        if args:
            index = self._message(args[0])
            self._conn.ok(f"{index + 1} {self._entries[index].unique_id}")
            return
        listing = [
            f"{i + 1} {e.unique_id}".encode("ascii")
            for i, e in enumerate(self._entries)
            if i not in self._deleted
        ]
        self._conn.multiline("Unique-ID listing follows", listing)

    @command("LAST", State.TRANSACTION)
    def last(self, args: list[bytes], line: bytes) -> None:
        """RFC 1460's LAST (dropped by RFC 1725, still answered by Twisted)."""
        no_arguments(args)
        self._conn.ok(str(self._highest))

    @command("NOOP", State.TRANSACTION)
    def noop(self, args: list[bytes], line: bytes) -> None:
        no_arguments(args)
        self._conn.ok()

    # -- marks ------------------------------------------------------------------

    @command("DELE", State.TRANSACTION)
    def dele(self, args: list[bytes], line: bytes) -> None:
        if len(args) != 1:
            raise CommandError("DELE takes one message number.")
        index = self._message(args[0])
        self._deleted.add(index)
        self._conn.ok(f"Message {index + 1} marked for deletion.")

    @command("RSET", State.TRANSACTION)
    def rset(self, args: list[bytes], line: bytes) -> None:
        no_arguments(args)
        self._deleted.clear()
        self._highest = 0
        count, octets = self.totals()
        self._conn.ok(f"Maildrop has {count} message{'' if count == 1 else 's'} ({octets} octets).")

    # -- message content --------------------------------------------------------

    @command("RETR", State.TRANSACTION)
    def retr(self, args: list[bytes], line: bytes) -> Result:
        if len(args) != 1:
            raise CommandError("RETR takes one message number.")
        return self._send_message(self._message(args[0]), None)

    @command("TOP", State.TRANSACTION)
    def top(self, args: list[bytes], line: bytes) -> Result:
        if len(args) != 2:
            raise CommandError("TOP takes a message number and a number of lines.")
        index = self._message(args[0])
        lines = parse_number(args[1])
        if lines is None:
            raise CommandError("Invalid number of lines.")
        return self._send_message(index, lines)

    def _send_message(self, index: int, lines: int | None) -> Result:
        """Open the message and send it: answered at once (no Deferred) when
        the maildrop opened it at once and it is small enough to go whole."""
        try:
            opened = self._open(self._entries[index].uid)
        except Exception:
            self._retrieve_failed(Failure(), index)  # raises the command's -ERR
        if isinstance(opened, defer.Deferred):
            return opened.addCallbacks(
                self._stream,
                self._retrieve_failed,
                callbackArgs=(index, lines),
                errbackArgs=(index,),
            )
        return self._stream(opened, index, lines)

    def _retrieve_failed(self, failure: Failure, index: int) -> NoReturn:
        if isinstance(failure.value, NoSuchMessage):
            raise CommandError(f"Message {index + 1} was removed by another session.")
        if isinstance(failure.value, StorageError):
            raise CommandError(f"Cannot read message {index + 1}: {failure.value}", "SYS/TEMP")
        LOG.failure("POP3: cannot read message {n}", failure, n=index + 1)
        raise CommandError(f"Cannot read message {index + 1}.", "SYS/TEMP")

    def _stream(self, source: IO[bytes], index: int, lines: int | None) -> Result:
        if self._conn.lost:
            source.close()
            return None
        size = self._entries[index].size
        if lines is None and size <= WHOLE_MESSAGE:
            try:
                data, whole = read_whole(source, WHOLE_MESSAGE)
            except Exception:
                log.call_each(LOG, "POP3", source.close)
                raise  # answered and logged as an internal error, as when streamed
            if whole:
                log.call_each(LOG, "POP3", source.close)
                self._send_whole(data, index, size)
                return None
            # Longer than listed: stream it, from what was read on.
            source = cast(IO[bytes], SyntheticFile(data, source, len(data)))
        if not self._utf8:
            # RFC 6856 2: no UTF-8 header to a client that did not send
            # UTF8; it gets RFC 6858's synthetic message, whose size is
            # what RETR announces (LIST and STAT keep the stored sizes).
            served = serve(source)
            source = cast(IO[bytes], served.file)
            size += served.delta or 0
        self._conn.ok(f"{size} octets" if lines is None else "Top of message follows")
        d = self._conn.stream(source, MessageEncoder(lines))
        return d.addCallbacks(self._streamed, self._stream_failed, callbackArgs=(index,))

    def _send_whole(self, data: bytes, index: int, size: int) -> None:
        """RETR of a message read whole: the status line, the byte-stuffed
        message and the terminator in one write (the same octets the
        streamed path sends, in one piece)."""
        if not self._utf8 and not data.isascii():  # an ASCII header needs nothing
            synthetic = downgrade_message(data)  # as serve() does, on the whole
            if synthetic is not None:
                size += len(synthetic) - len(data)
                data = synthetic
        self._conn.send_message(f"{size} octets", stuff_message(data))
        self._streamed(True, index)

    def _streamed(self, complete: bool, index: int) -> None:
        self._highest = max(self._highest, index + 1)
        if complete:
            self._seen.add(self._entries[index].uid)

    def _stream_failed(self, failure: Failure) -> None:
        # The transport stops the sender before telling the session the
        # connection is gone: a client that left mid-message is no error.
        if self._conn.lost or isinstance(failure.value, ConnectionLost):
            return
        # Part of the message is out already: the only honest end is to hang
        # up, so the client never takes a truncated message for a whole one.
        LOG.failure("POP3: reading a message failed mid-RETR", failure)
        self._conn.abort()

    # -- UPDATE and the end of the session -----------------------------------------

    def commit(self, user: str | None) -> defer.Deferred[None]:
        """QUIT: remove the messages marked deleted and flag those read
        \\Seen (RFC 1939 6), then answer; the commit releases the maildrop."""
        deleted = [self._entries[i].uid for i in sorted(self._deleted)]
        seen = sorted(self._seen)
        d = defer.maybeDeferred(self._maildrop.commit, deleted, seen)
        return d.addCallbacks(
            self._committed, self._commit_failed, callbackArgs=(len(deleted),), errbackArgs=(user,)
        )

    def _committed(self, _: object, deleted: int) -> None:
        self._held = False  # commit released the lock
        self._conn.ok(f"Logging out, {deleted} message{'' if deleted == 1 else 's'} deleted.")

    def _commit_failed(self, failure: Failure, user: str | None) -> None:
        if isinstance(failure.value, StorageError):
            LOG.error("POP3: commit of {user}'s maildrop failed: {e}", user=user, e=failure.value)
        else:
            LOG.failure("POP3: commit of {user}'s maildrop failed", failure, user=user)
        self._conn.error("Could not update the mailbox; no messages were deleted.", "SYS/TEMP")

    def release(self) -> None:
        """Unlock the maildrop without committing (if not committed yet)."""
        if self._held:
            self._held = False
            d = defer.maybeDeferred(self._maildrop.release)
            d.addErrback(lambda f: LOG.failure("POP3: releasing the maildrop failed", f))

    def logout_avatar(self) -> None:
        logout, self._logout = self._logout, None
        if logout is not None:
            logout()
