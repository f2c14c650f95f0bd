"""The synthetic message a client without UTF-8 support is shown (RFC 6858).

A message delivered by an SMTPUTF8 MTA (or appended by an IMAP session that
enabled ``UTF8=ACCEPT``) may hold raw UTF-8 in its header (RFC 6532).  A
client that did not say it accepts that (IMAP ``ENABLE UTF8=ACCEPT``, POP3
``UTF8``) must not be sent it (RFC 6855 3 and 7, RFC 6856 2), so it gets a
"synthetic" message instead: the same message with its header rewritten in
ASCII, as RFC 6858's simplified downgrade does, and RFC 6855 7 asks a
server that downgrades to use RFC 6857's or RFC 6858's algorithm.

What changes, field by field, where a field holds 8-bit octets (ASCII
fields are kept octet for octet):

* address fields (From, To, Cc, ...): display names become RFC 2047
  encoded words; a domain alone non-ASCII becomes its IDNA A-labels; a
  mailbox whose local part is not ASCII cannot be written in ASCII at all,
  so it becomes an empty group whose name (encoded words) shows the
  original ``name <address>``: the user sees who it was, a reply cannot go
  to a made-up address (RFC 6858 2: "incomplete rather than modified");
* msg-id fields (Message-ID, References, ...): RFC 2047 does not apply to
  them, so the field is left out;
* Content-Type and Content-Disposition: non-ASCII parameter values become
  RFC 2231 ``name*=utf-8''...`` values;
* every other field: the text from its first to its last non-ASCII word
  becomes RFC 2047 encoded words (``=?UTF-8?Q?...?=``), the rest is kept.

Raw 8-bit text is read as UTF-8, and as Windows-1252 when it is not UTF-8
(as SEARCH reads it, :func:`mailsrv.mime.decoding.decode_words`).  Only the
message's own header is rewritten: that is what RFC 6855 4 refuses from a
client that did not enable UTF-8, so it is what mailsrv downgrades; the body
and the headers of MIME parts inside it are served as stored.

Pure: bytes in, bytes out; :func:`serve` gives a message file as it is to
be sent, reading its header once and its body only as the reader does.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import IO, Any, NamedTuple

from mailsrv.mime.addresses import Group, Mailbox, parse_addresses
from mailsrv.mime.decoding import decode_words
from mailsrv.mime.fields import (
    header_end,
    parse_content_type,
    parse_disposition,
    split_fields,
)

__all__ = [
    "HEADER_LIMIT",
    "Served",
    "SyntheticFile",
    "downgrade_header",
    "downgrade_message",
    "encode_words",
    "needs_downgrade",
    "serve",
]

#: RFC 5322 address fields (3.6.2, 3.6.3, 3.6.6) and RFC 8098's.
_ADDRESS_FIELDS = frozenset(
    {
        "from",
        "sender",
        "reply-to",
        "to",
        "cc",
        "bcc",
        "resent-from",
        "resent-sender",
        "resent-to",
        "resent-cc",
        "resent-bcc",
        "disposition-notification-to",
    }
)
#: Fields whose values are msg-ids or an addr-spec, where RFC 2047 does not
#: apply (RFC 2047 5): a non-ASCII one cannot be written in ASCII.
_DROPPED_FIELDS = frozenset(
    {
        "message-id",
        "in-reply-to",
        "references",
        "resent-message-id",
        "content-id",
        "return-path",
    }
)
#: Longest encoded word, delimiters included (RFC 2047 2).
_WORD_LIMIT = 75
_WORD_OVERHEAD = len("=?UTF-8?Q??=")
#: Characters a Q encoded word may carry as themselves anywhere it may
#: stand, phrases included (RFC 2047 5 (3)); everything else is =XX.
_Q_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!*+-/")
#: RFC 2231 attribute-char: what an extended parameter value keeps as is.
_ATTRIBUTE_CHARS = frozenset(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!#$&+-.^_`|~"
)
#: RFC 2045 token characters, for parameter values that need no quotes.
_TOKEN_SPECIALS = frozenset('()<>@,;:\\"/[]?= \t')


def needs_downgrade(header: bytes) -> bool:
    """Whether a header block holds octets a client without UTF-8 support
    must not be sent."""
    return not header.isascii()


def downgrade_message(data: bytes) -> bytes | None:
    """The synthetic message of ``data`` (a whole message, or its header
    and as much after it as the caller has), or None when its header is
    ASCII and the message is served as stored."""
    end = header_end(data, 0, len(data))
    header = data[:end]
    if not needs_downgrade(header):
        return None
    return downgrade_header(header) + data[end:]


def downgrade_header(block: bytes) -> bytes:
    """A header block (its blank line included, if it has one) with every
    field that holds 8-bit octets written in ASCII as the module says."""
    out: list[bytes] = []
    for name, raw, value in split_fields(block):
        if raw.isascii():
            out.append(raw if raw.endswith(b"\n") else raw + b"\r\n")
            continue
        if not name:
            continue  # a line that is no field: nothing to keep of it
        rewritten = _downgrade_field(name, raw, value)
        if rewritten is not None:
            out.append(rewritten)
    if block in (b"\r\n", b"\n") or block.endswith((b"\n\r\n", b"\n\n")):
        out.append(b"\r\n")
    return b"".join(out)


def _downgrade_field(name: str, raw: bytes, value: bytes) -> bytes | None:
    """One 8-bit field in ASCII (CRLF-terminated), or None to leave it out."""
    label = raw[: raw.index(b":")].rstrip(b" \t")
    if name in _DROPPED_FIELDS or not label.isascii():
        return None  # no ASCII form (a field name is ASCII: RFC 5322 2.2)
    if name in _ADDRESS_FIELDS:
        text = _address_list(_text(value))
    elif name in ("content-type", "content-disposition"):
        text = _mime_field(name, _text(value))
    else:
        text = _unstructured(_text(value))
    if not text.isascii():
        # What the structure kept of 8-bit text in some malformed corner:
        # the whole value as text then, which always comes out ASCII.
        text = _unstructured(_text(value))
    return label + f": {text}\r\n".encode("ascii")


def _text(value: bytes) -> str:
    """Header octets as text: UTF-8 (RFC 6532), else Windows-1252."""
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value.decode("cp1252", "replace")


# -- encoded words (RFC 2047) ---------------------------------------------------------------


def encode_words(text: str) -> str:
    """``text`` as UTF-8 Q encoded words of at most 75 characters, folded
    onto lines of their own (``CRLF SP`` between words, which a decoder
    drops: RFC 2047 6.2), split only between characters."""
    words: list[str] = []
    current = ""
    for char in text:
        piece = _q(char)
        if current and len(current) + len(piece) + _WORD_OVERHEAD > _WORD_LIMIT:
            words.append(current)
            current = ""
        current += piece
    if current or not words:
        words.append(current)
    return "\r\n ".join(f"=?UTF-8?Q?{word}?=" for word in words)


def _q(char: str) -> str:
    if char == " ":
        return "_"
    return "".join(chr(b) if b in _Q_SAFE else f"={b:02X}" for b in char.encode("utf-8"))


def _plain(word: str) -> bool:
    """A word that may stay as it is beside encoded words: ASCII and not
    itself looking like one (else a decoder would join it to ours)."""
    return word.isascii() and "=?" not in word


def _unstructured(text: str) -> str:
    """Unstructured text with the span from its first to its last word
    that cannot stay (non-ASCII, or an encoded word already) encoded;
    encoded words already there are decoded first, so the span reads as
    one text."""
    words = text.split(" ")
    odd = [i for i, word in enumerate(words) if not _plain(word)]
    if not odd:
        return text
    first, last = odd[0], odd[-1]
    middle = decode_words(" ".join(words[first : last + 1]).encode("utf-8"))
    parts = [*words[:first], encode_words(middle), *words[last + 1 :]]
    return " ".join(parts)


def _phrase(name: str) -> str:
    """A display name for an address field: as is if it is ASCII atoms,
    quoted if ASCII, encoded words otherwise."""
    decoded = decode_words(name.encode("utf-8"))
    if decoded.isascii() and "=?" not in decoded:
        if all(c.isalnum() or c in "!#$%&'*+-/=?^_`{|}~ " for c in decoded):
            return decoded
        return '"' + decoded.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return encode_words(decoded)


# -- address fields --------------------------------------------------------------------------


def _address_list(text: str) -> str:
    """An address list in ASCII: one address per line (folded after each
    comma), placeholder groups for addresses that cannot be ASCII."""
    items: list[str] = []
    for item in parse_addresses(text):
        if isinstance(item, Group):
            items.append(_group(item))
        else:
            items.append(_mailbox(item, standalone=True) or "")
    return ",\r\n ".join(i for i in items if i) or "undisclosed-recipients:;"


def _group(group: Group) -> str:
    members = [m for m in (_mailbox(m, standalone=False) for m in group.members) if m]
    name = _phrase(group.name) if group.name else '""'
    return f"{name}: {', '.join(members)};"


def _mailbox(mailbox: Mailbox, *, standalone: bool) -> str | None:
    """One mailbox in ASCII; one whose address cannot be ASCII becomes an
    empty group naming it (or, inside a group, where groups cannot nest,
    is left out: None)."""
    name, route, local, domain = mailbox
    ascii_domain = _ascii_domain(domain)
    if not local.isascii() or ascii_domain is None:
        if not standalone:
            return None
        shown = (
            f"{decode_words(name.encode('utf-8'))} <{local}@{domain}>"
            if name
            else (f"{local}@{domain}")
        )
        return f"{encode_words(shown)}:;"
    spec = f"{local}@{ascii_domain}"
    if route and route.isascii():  # an obsolete route (RFC 5322 4.4) of 8-bit text: dropped
        spec = f"{route}:{spec}"
    if name is None:
        return f"<{spec}>" if route else spec
    return f"{_phrase(name)} <{spec}>"


def _ascii_domain(domain: str) -> str | None:
    """The domain in ASCII: as is, or as IDNA A-labels; None if neither."""
    if domain.isascii():
        return domain
    if domain.startswith("["):
        return None  # a domain literal holding 8-bit text
    try:
        return domain.encode("idna").decode("ascii")
    except UnicodeError:
        return None


# -- MIME parameters (RFC 2231) --------------------------------------------------------------


def _mime_field(name: str, text: str) -> str:
    """Content-Type or Content-Disposition with non-ASCII parameter values
    written as RFC 2231 extended values; a value that does not parse is
    written as unstructured text would be."""
    params: Sequence[tuple[str, str]]
    if name == "content-type":
        parsed = parse_content_type(text)
        if parsed is None:
            return _unstructured(text)
        typ, sub, params = parsed
        head = f"{typ}/{sub}"
    else:
        disposition = parse_disposition(text)
        if disposition is None:
            return _unstructured(text)
        head, params = disposition
    if not head.isascii():
        return _unstructured(text)
    return head + "".join(_parameter(key, value) for key, value in params)


def _parameter(key: str, value: str) -> str:
    if not key.isascii():
        return ""  # a parameter name of 8-bit text names nothing
    if value.isascii():
        if value and not any(c in _TOKEN_SPECIALS for c in value):
            return f"; {key}={value}"
        return '; {}="{}"'.format(key, value.replace("\\", "\\\\").replace('"', '\\"'))
    octets = value.encode("utf-8")
    if key.endswith("*"):
        # Already an RFC 2231 extended value (charset'language'...) with raw
        # octets in it: only those need escaping.
        return f"; {key}=" + "".join(chr(b) if b < 0x80 else f"%{b:02X}" for b in octets)
    escaped = "".join(chr(b) if b in _ATTRIBUTE_CHARS else f"%{b:02X}" for b in octets)
    return f"; {key}*=utf-8''{escaped}"


# -- serving it ----------------------------------------------------------------------------

#: The most of a header that is looked at: a header block longer than
#: this (no blank line in the first MiB) is downgraded in its first MiB
#: of whole lines only, so no message makes the server hold more.
HEADER_LIMIT = 1024 * 1024
_READ = 16 * 1024


class Served(NamedTuple):
    """A message as it is to be sent: ``file`` to read it from, and how
    many octets longer the synthetic message is than the stored one
    (``delta``), None when it is served as stored."""

    file: SyntheticFile
    delta: int | None


def serve(source: IO[bytes]) -> Served:
    """The message in ``source`` as a client without UTF-8 support is to
    be sent it.  Reads the header once (never more than
    :data:`HEADER_LIMIT`) and never again: the file returned serves those
    octets, rewritten or not, then the rest of ``source``, which it owns."""
    prefix = _read_header(source)
    end = header_end(prefix, 0, len(prefix))
    if end == len(prefix) and len(prefix) >= HEADER_LIMIT and b"\n" in prefix:
        end = prefix.rindex(b"\n") + 1  # whole lines only
    header = prefix[:end]
    if not needs_downgrade(header):
        return Served(SyntheticFile(prefix, source, len(prefix)), None)
    new = downgrade_header(header)
    return Served(SyntheticFile(new + prefix[end:], source, len(prefix)), len(new) - len(header))


def _read_header(source: IO[bytes]) -> bytes:
    """The start of the file, up to its header's blank line (at most
    :data:`HEADER_LIMIT` and the rest of the last chunk read)."""
    data = bytearray()
    while len(data) < HEADER_LIMIT:
        chunk = source.read(_READ)
        if not chunk:
            break
        start = max(len(data) - 2, 0)
        data += chunk
        if data.startswith((b"\r\n", b"\n")) or data.find(b"\n\r\n", start) >= 0:
            break
        if data.find(b"\n\n", start) >= 0:
            break
    return bytes(data)


class SyntheticFile(io.RawIOBase):
    """``head`` first, then ``source`` from its octet ``skip`` on (where a
    sequential reader left it): a message with its header replaced, read
    as one file without its body held in memory; seekable when ``source``
    is."""

    def __init__(self, head: bytes, source: IO[bytes], skip: int) -> None:
        super().__init__()
        self._head = head
        self._source = source
        self._skip = skip
        self._at = skip  # where ``source`` stands
        self._pos = 0
        self._size: int | None = None
        self._owns = True

    @property
    def size(self) -> int:
        """Octets in all (``source`` must be seekable)."""
        if self._size is None:
            total = self._source.seek(0, io.SEEK_END)
            self._at = total
            self._size = len(self._head) + total - self._skip
        return self._size

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return self._source.seekable()

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_END:
            offset += self.size
        elif whence == io.SEEK_CUR:
            offset += self._pos
        self._pos = max(0, offset)
        return self._pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        done = 0
        if self._pos < len(self._head):
            piece = self._head[self._pos : self._pos + len(view)]
            view[: len(piece)] = piece
            done = len(piece)
        while done < len(view):
            wanted = self._skip + self._pos + done - len(self._head)
            if wanted != self._at:
                self._source.seek(wanted)
                self._at = wanted
            data = self._source.read(len(view) - done)
            if not data:
                break
            view[done : done + len(data)] = data
            done += len(data)
            self._at += len(data)
        self._pos += done
        return done

    def give_back(self) -> IO[bytes]:
        """``source``, rewound, for the caller to read directly (it must be
        seekable) and to close; this file is closed without closing it."""
        self._owns = False
        self.close()
        self._source.seek(0)
        return self._source

    def close(self) -> None:
        if not self.closed:
            try:
                if self._owns:
                    self._source.close()
            finally:
                super().close()
