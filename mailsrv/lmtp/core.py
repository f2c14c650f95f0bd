"""The LMTP conversation (RFC 2033) without any I/O.

:class:`LMTPCore` is fed the bytes a client sends and answers with actions
for its caller to carry out: :class:`Reply` (bytes to write),
:class:`Resolve` (look a recipient up, then call :meth:`LMTPCore.resolved`),
:class:`Deliver` (store the spooled message for each recipient, then call
:meth:`LMTPCore.delivered`) and :class:`Close`.  While a look-up or a
delivery is outstanding it only buffers what arrives, so pipelined commands
(RFC 2920, which RFC 2033 section 5 makes mandatory) are answered in order.

The message itself goes straight to a spool file as it arrives, line ends
and all, dot-unstuffed (RFC 5321 4.5.2); it is never held in memory whole
and never handed on before its final ``CRLF.CRLF``, so a dropped connection
leaves nothing behind.  Only CRLF ends a line in the data: a bare LF never
starts a new line, so ``LF.LF`` cannot end the message early (the "SMTP
smuggling" trick).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import IO

import attrs

from mailsrv.errors import LimitExceeded, OverQuota, StorageError, TemporaryFailure
from mailsrv.storage.deliver import EmptyMessage

__all__ = [
    "Close",
    "Deliver",
    "LMTPCore",
    "Recipient",
    "Reply",
    "Resolve",
    "candidates",
]


@attrs.frozen
class Reply:
    """One reply: ``code``, the RFC 3463 ``status`` (or "" for none) and
    its text lines (several make a multi-line reply)."""

    code: int
    status: str
    lines: tuple[str, ...]

    @classmethod
    def of(cls, code: int, status: str, text: str) -> Reply:
        return cls(code, status, (text,))

    def to_bytes(self) -> bytes:
        out = []
        last = len(self.lines) - 1
        for i, line in enumerate(self.lines):
            sep = " " if i == last else "-"
            text = f"{self.status} {line}" if self.status and i == last else line
            out.append(f"{self.code}{sep}{text}\r\n")
        return "".join(out).encode("utf-8", "replace")

    @property
    def summary(self) -> str:
        """The code and status, as logs show the result: ``250 2.0.0``."""
        return f"{self.code} {self.status}".strip()


@attrs.frozen
class Recipient:
    """A recipient the users database knows: the address as given, the
    user it names, the user's home (for ``{home}`` templates) and the
    folder its ``+detail`` names (INBOX without one)."""

    address: str
    user: str
    home: str | None = None
    folder: str = "INBOX"


@attrs.frozen
class Resolve:
    """Find the user of ``address``; answer with :meth:`LMTPCore.resolved`."""

    address: str


@attrs.frozen
class Deliver:
    """Store the message in ``spool`` (``size`` octets, at offset 0) for each
    recipient, in order; answer with :meth:`LMTPCore.delivered`.  The
    spool is the caller's from here: it closes it when done."""

    recipients: tuple[Recipient, ...]
    spool: IO[bytes]
    size: int


@attrs.frozen
class Close:
    """Close the connection once the replies before it are written."""


Action = Reply | Resolve | Deliver | Close

#: Why a command cannot go on now (RFC 5321 4.1.4's order of commands).
_NEED_LHLO = Reply.of(503, "5.5.1", "Send LHLO first")
_NEED_MAIL = Reply.of(503, "5.5.1", "Send MAIL first")

_PATH = re.compile(r"^\s*<([^<>]*)>(.*)$")


def candidates(address: str, delimiter: str) -> list[tuple[str, str | None]]:
    """User names an address may belong to, in the order to try them, each
    with the folder its detail names (None: INBOX).

    ``Alice+lists@Example.ORG`` with delimiter ``+``: the whole address,
    then without its detail (folder ``lists``), then the local part alone,
    then that without its detail.  The domain is compared in lower case
    (RFC 5321 2.4); the local part as given.
    """
    local, at, domain = address.rpartition("@")
    if not at:
        local, domain = address, ""
    found: list[tuple[str, str | None]] = []

    def add(name: str, folder: str | None) -> None:
        if name and all(name != seen for seen, _ in found):
            found.append((name, folder))

    base, detail = local, None
    if delimiter and delimiter in local:
        base, _, detail = local.partition(delimiter)
    if domain:
        add(f"{local}@{domain.lower()}", None)
        if detail is not None:
            add(f"{base}@{domain.lower()}", detail or None)
    add(local, None)
    if detail is not None:
        add(base, detail or None)
    return found


def _parse_path(argument: str, keyword: str) -> tuple[str, list[str]] | None:
    """``FROM:<a@b> SIZE=10`` -> ("a@b", ["SIZE=10"]); None if malformed."""
    head, colon, rest = argument.partition(":")
    if not colon or head.strip().upper() != keyword:
        return None
    match = _PATH.match(rest)
    if match is None:
        return None
    path, params = match.group(1).strip(), match.group(2).split()
    if ":" in path and path.startswith("@"):
        path = path.split(":", 1)[1]  # a source route, ignored (RFC 5321 4.1.1.3)
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in path):
        return None
    return path, params


@attrs.define
class _Transaction:
    sender: str | None = None
    recipients: list[Recipient] = attrs.Factory(list)


class LMTPCore:
    """One LMTP session's state; see the module docstring.

    ``new_spool`` makes the file a message is written to as it arrives.
    """

    def __init__(
        self,
        hostname: str,
        new_spool: Callable[[], IO[bytes]],
        *,
        max_message_size: int = 64 * 1024 * 1024,
        max_recipients: int = 100,
        max_line_length: int = 65536,
        bounce_over_quota: bool = False,
    ) -> None:
        self.hostname = hostname
        self.bounce_over_quota = bounce_over_quota
        self.new_spool = new_spool
        self.max_message_size = max_message_size
        self.max_recipients = max_recipients
        self.max_line_length = max_line_length
        self._buffer = bytearray()
        self._greeted = False
        self._transaction = _Transaction()
        self._waiting = False  # a Resolve or Deliver is outstanding
        self._pending_address: str | None = None
        self._closed = False
        self._discarding = False  # inside a command line that was too long
        # DATA state: the spool being filled, or None in command mode.
        self._spool: IO[bytes] | None = None
        self._size = 0
        self._too_big = False
        self._line_start = True

    @property
    def busy(self) -> bool:
        """Waiting for :meth:`resolved` or :meth:`delivered`."""
        return self._waiting

    @property
    def in_data(self) -> bool:
        return self._spool is not None

    def greeting(self) -> list[Action]:
        return [Reply.of(220, "", f"{self.hostname} LMTP ready")]

    def receive(self, data: bytes) -> list[Action]:
        """Bytes from the client: the actions they lead to."""
        if self._closed:
            return []
        self._buffer += data
        return self._run()

    def timed_out(self) -> list[Action]:
        """The client said nothing for too long."""
        self._close_spool()
        self._closed = True
        return [Reply.of(421, "4.4.2", f"{self.hostname} Timeout, closing connection"), Close()]

    def connection_lost(self) -> None:
        """The connection is gone: a message still arriving is thrown away."""
        self._close_spool()
        self._closed = True

    def resolved(self, recipient: Recipient | None, error: str | None = None) -> list[Action]:
        """The answer to :class:`Resolve`: the recipient, None for an unknown
        address, or an ``error`` text when the users database failed."""
        address = self._pending_address or ""
        self._pending_address = None
        self._waiting = False
        if error is not None:
            reply = Reply.of(451, "4.3.0", f"<{address}> Cannot look the user up now: {error}")
        elif recipient is None:
            reply = Reply.of(550, "5.1.1", f"<{address}> No such user here")
        else:
            self._transaction.recipients.append(recipient)
            reply = Reply.of(250, "2.1.5", f"<{address}> Recipient OK")
        return [reply, *self._run()]

    def delivered(self, outcomes: Sequence[int | BaseException]) -> list[Action]:
        """The answer to :class:`Deliver`: per recipient, in order, the UID
        the message got or the exception that stopped it.  One reply each
        (RFC 2033 4.2)."""
        recipients = self._transaction.recipients
        replies: list[Action] = [
            delivery_reply(r, outcome, self.bounce_over_quota)
            for r, outcome in zip(recipients, outcomes, strict=True)
        ]
        self._transaction = _Transaction()
        self._waiting = False
        return [*replies, *self._run()]

    # -- input ------------------------------------------------------------

    def _run(self) -> list[Action]:
        actions: list[Action] = []
        while not self._waiting and not self._closed:
            if self._spool is not None:
                done = self._take_data()
                if done is None:
                    break
                actions.extend(done)
                continue
            taken = self._take_line()
            if taken is None:
                break
            line, too_long = taken
            if too_long:
                actions.append(Reply.of(500, "5.5.2", "Line too long"))
            else:
                actions.extend(self._command(line))
        return actions

    def _take_line(self) -> tuple[bytes, bool] | None:
        """The next command line without its line end and whether it was
        too long, or None until more input comes.

        A line longer than the limit is dropped as it arrives, and answered
        once its end comes, so a client cannot make the buffer grow.
        """
        end = self._buffer.find(b"\n")
        if end < 0:
            if len(self._buffer) > self.max_line_length:
                self._discarding = True
                del self._buffer[:]
            return None
        line = bytes(self._buffer[:end])
        del self._buffer[: end + 1]
        if self._discarding or len(line) > self.max_line_length:
            self._discarding = False
            return b"", True
        return (line[:-1] if line.endswith(b"\r") else line), False

    def _take_data(self) -> list[Action] | None:
        """Move message data from the buffer to the spool; the actions for
        the end of the message once its ``CRLF.CRLF`` has come, else None."""
        buffer = self._buffer
        while buffer:
            if self._line_start:
                if buffer[:1] == b".":
                    if len(buffer) < 3 and b".\r\n".startswith(bytes(buffer)):
                        return None  # too little to tell the end from a stuffed dot
                    if buffer[:3] == b".\r\n":
                        del buffer[:3]
                        return self._end_of_data()
                    del buffer[:1]  # a stuffed dot (RFC 5321 4.5.2)
                self._line_start = False
            end = buffer.find(b"\r\n")
            if end >= 0:
                self._write(bytes(buffer[: end + 2]))
                del buffer[: end + 2]
                self._line_start = True
            else:
                keep = 1 if buffer.endswith(b"\r") else 0  # half of a CRLF
                self._write(bytes(buffer[: len(buffer) - keep]))
                del buffer[: len(buffer) - keep]
                return None
        return None

    def _write(self, data: bytes) -> None:
        if not data or self._too_big:
            return
        self._size += len(data)
        if self._size > self.max_message_size:
            # Read on to the end, storing nothing (RFC 1870 6.2).
            self._too_big = True
            return
        assert self._spool is not None
        self._spool.write(data)

    def _end_of_data(self) -> list[Action]:
        spool, size = self._spool, self._size
        self._spool = None
        assert spool is not None
        recipients = tuple(self._transaction.recipients)
        if self._too_big:
            spool.close()
            self._transaction = _Transaction()
            limit = self.max_message_size
            return [
                Reply.of(552, "5.3.4", f"<{r.address}> Message too big (at most {limit} octets)")
                for r in recipients
            ]
        spool.flush()
        spool.seek(0)
        self._waiting = True
        return [Deliver(recipients, spool, size)]

    def _close_spool(self) -> None:
        spool, self._spool = self._spool, None
        if spool is not None:
            spool.close()

    # -- commands ---------------------------------------------------------

    def _command(self, raw: bytes) -> list[Action]:
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            return [Reply.of(500, "5.5.2", "Syntax error: the command is not UTF-8")]
        verb, _, argument = line.strip().partition(" ")
        verb = verb.upper()
        handler = getattr(self, f"_do_{verb.lower()}", None) if verb.isalpha() else None
        if handler is None:
            return [Reply.of(500, "5.5.2", "Command unrecognized")]
        result: list[Action] = handler(argument.strip())
        return result

    def _do_lhlo(self, argument: str) -> list[Action]:
        if not argument:
            return [Reply.of(501, "5.5.4", "LHLO needs the client's name")]
        self._greeted = True
        self._transaction = _Transaction()  # as EHLO does (RFC 5321 4.1.4)
        return [
            Reply(
                250,
                "",
                (
                    self.hostname,
                    "PIPELINING",
                    "8BITMIME",
                    "ENHANCEDSTATUSCODES",
                    f"SIZE {self.max_message_size}",
                ),
            )
        ]

    def _do_helo(self, argument: str) -> list[Action]:
        # RFC 2033 4.1: LMTP has LHLO only.
        return [Reply.of(500, "5.5.1", "This is LMTP (RFC 2033): say LHLO")]

    _do_ehlo = _do_helo

    def _do_mail(self, argument: str) -> list[Action]:
        if not self._greeted:
            return [_NEED_LHLO]
        if self._transaction.sender is not None:
            return [Reply.of(503, "5.5.1", "Sender already given (RSET to start over)")]
        parsed = _parse_path(argument, "FROM")
        if parsed is None:
            return [Reply.of(501, "5.5.4", "Syntax: MAIL FROM:<address> [SIZE=n] [BODY=8BITMIME]")]
        sender, params = parsed
        for param in params:
            key, _, value = param.partition("=")
            key = key.upper()
            if key == "SIZE":
                if not value.isdigit():
                    return [Reply.of(501, "5.5.4", f"Bad SIZE value {value!r}")]
                if int(value) > self.max_message_size:
                    return [
                        Reply.of(
                            552,
                            "5.3.4",
                            f"Message too big (at most {self.max_message_size} octets)",
                        )
                    ]
            elif key == "BODY":
                if value.upper() not in ("7BIT", "8BITMIME"):
                    return [Reply.of(501, "5.5.4", f"Unsupported BODY={value}")]
            else:
                # RFC 5321 4.1.1.11: a parameter the server does not know.
                return [Reply.of(555, "5.5.4", f"Unsupported parameter {key}")]
        self._transaction.sender = sender
        return [Reply.of(250, "2.1.0", "Sender OK")]

    def _do_rcpt(self, argument: str) -> list[Action]:
        if not self._greeted:
            return [_NEED_LHLO]
        if self._transaction.sender is None:
            return [_NEED_MAIL]
        parsed = _parse_path(argument, "TO")
        if parsed is None:
            return [Reply.of(501, "5.5.4", "Syntax: RCPT TO:<address>")]
        address, params = parsed
        if params:
            key = params[0].partition("=")[0].upper()
            return [Reply.of(555, "5.5.4", f"Unsupported parameter {key}")]
        if not address:
            return [Reply.of(501, "5.1.3", "Empty recipient address")]
        if len(self._transaction.recipients) >= self.max_recipients:
            # RFC 5321 4.5.3.1.10: the client sends the rest in another transaction.
            return [Reply.of(452, "4.5.3", "Too many recipients")]
        self._waiting = True
        self._pending_address = address
        return [Resolve(address)]

    def _do_data(self, argument: str) -> list[Action]:
        if not self._greeted:
            return [_NEED_LHLO]
        if self._transaction.sender is None:
            return [_NEED_MAIL]
        if not self._transaction.recipients:
            # RFC 2033 4.2: no successful RCPT, so DATA fails with 503.
            return [Reply.of(503, "5.5.1", "No valid recipients")]
        self._spool = self.new_spool()
        self._size = 0
        self._too_big = False
        self._line_start = True
        return [Reply.of(354, "", "Start mail input; end with <CRLF>.<CRLF>")]

    def _do_rset(self, argument: str) -> list[Action]:
        self._transaction = _Transaction()
        return [Reply.of(250, "2.0.0", "OK")]

    def _do_noop(self, argument: str) -> list[Action]:
        return [Reply.of(250, "2.0.0", "OK")]

    def _do_vrfy(self, argument: str) -> list[Action]:
        return [Reply.of(252, "2.5.0", "Cannot VRFY user, but will accept the message")]

    def _do_quit(self, argument: str) -> list[Action]:
        self._closed = True
        return [Reply.of(221, "2.0.0", f"{self.hostname} closing connection"), Close()]


def delivery_reply(
    recipient: Recipient, outcome: int | BaseException, bounce_over_quota: bool = False
) -> Reply:
    """The reply after DATA for one recipient (RFC 2033 4.2); a message over
    the recipient's quota is 452 4.2.2 (the MTA retries) or, with
    ``bounce_over_quota``, 552 5.2.2 (RFC 5321 4.2.3, RFC 3463 X.2.2)."""
    address = recipient.address
    if isinstance(outcome, int):
        return Reply.of(250, "2.0.0", f"<{address}> Delivered as UID {outcome}")
    if isinstance(outcome, OverQuota):
        if bounce_over_quota:
            return Reply.of(552, "5.2.2", f"<{address}> Mailbox full: {outcome}")
        return Reply.of(452, "4.2.2", f"<{address}> Mailbox full, try again later: {outcome}")
    if isinstance(outcome, LimitExceeded):
        return Reply.of(552, "5.2.2", f"<{address}> Mailbox full: {outcome}")
    if isinstance(outcome, EmptyMessage):
        return Reply.of(554, "5.6.0", f"<{address}> Empty message refused")
    if isinstance(outcome, TemporaryFailure | StorageError):
        return Reply.of(451, "4.3.0", f"<{address}> Temporary failure, try again later: {outcome}")
    return Reply.of(451, "4.3.0", f"<{address}> Temporary internal error, try again later")
