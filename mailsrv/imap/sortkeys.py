"""What SORT and THREAD compare, worked out from a message's header.

Pure functions, no storage and no IMAP syntax:

* :func:`base_subject`: RFC 5256 2.1's base subject, and whether the
  extraction removed a reply or forward marker (THREAD=REFERENCES needs it);
* :func:`sent_date`: RFC 5256 2.2's sent date, as UTC seconds, or None when
  the Date header is missing or unreadable (the caller then uses the
  INTERNALDATE, as 2.2's last paragraph says);
* :func:`first_mailbox` and :func:`display_value`: the ``addr-mailbox`` of a
  field's first address (RFC 5256's FROM, TO, CC) and RFC 5957's display
  sort value (DISPLAYFROM, DISPLAYTO);
* :func:`message_ids`: normalised msg-ids (RFC 5256 "REFERENCES": quoting
  must not make two ids differ);
* :func:`casemap`: the ``i;unicode-casemap`` collation key (RFC 5051), which
  RFC 5256 7 requires for every string SORT and THREAD compare.

:class:`SortRecord` holds all of it for one message, and is what the cache
keeps (:meth:`SortRecord.to_bytes`), so a warm SORT or THREAD decodes one
short record per message and opens no file.
"""

from __future__ import annotations

import calendar
import datetime
import email.utils
import re
import unicodedata

import attrs

from mailsrv.mime.addresses import Group, parse_addresses
from mailsrv.mime.decoding import decode_words
from mailsrv.mime.fields import read_comment, split_fields

__all__ = [
    "RECORD_VERSION",
    "SortRecord",
    "base_subject",
    "casemap",
    "display_value",
    "first_mailbox",
    "message_ids",
    "record_from_header",
    "sent_date",
]

#: Changes whenever what a record holds, or how it is worked out, changes:
#: the cache kind carries it, so an older record is never read.
RECORD_VERSION = 1


# ---------------------------------------------------------------------------
# i;unicode-casemap (RFC 5051)
# ---------------------------------------------------------------------------


def _titlecase(char: str) -> str:
    # RFC 5051 2: the simple titlecase mapping, one character to one; where
    # Python only knows a full mapping (U+00DF to "Ss") the character stays.
    title = char.title()
    return title if len(title) == 1 else char


def casemap(text: str) -> str:
    """The ``i;unicode-casemap`` key of ``text``: each character mapped to
    its titlecase, then decomposed (NFKD, RFC 5051 2).  Comparing keys as
    code points is comparing their UTF-8 octets, as the collation does."""
    if text.isascii():
        return text.upper()  # ASCII titlecase is uppercase; NFKD changes nothing
    return unicodedata.normalize("NFKD", "".join(_titlecase(c) for c in text))


# ---------------------------------------------------------------------------
# Base subject (RFC 5256 2.1)
# ---------------------------------------------------------------------------

#: subj-blob: "[" *BLOBCHAR "]" *WSP
_BLOB = r"\[[^\[\]]*\][ \t]*"
#: subj-refwd: ("re" / ("fw" ["d"])) *WSP [subj-blob] ":"
_REFWD = rf"(?:re|fwd?)[ \t]*(?:{_BLOB})?:"
#: subj-leader: (*subj-blob subj-refwd) / WSP
_LEADER = re.compile(rf"(?:{_BLOB})*{_REFWD}|[ \t]", re.IGNORECASE)
_LEADING_BLOB = re.compile(_BLOB)
_SPACES = re.compile(r"[ \t\r\n]+")


def _strip_trailers(text: str) -> tuple[str, bool]:
    """Step (2): remove subj-trailers ("(fwd)" or WSP) from the end, again
    and again; True when a "(fwd)" was among them."""
    forwarded = False
    while True:
        if text.endswith((" ", "\t")):
            text = text[:-1]
        elif text[-5:].lower() == "(fwd)":
            text = text[:-5]
            forwarded = True
        else:
            return text, forwarded


def _strip_leaders(text: str) -> tuple[str, bool]:
    """Steps (3) to (5): subj-leaders, then a subj-blob unless it is all
    that is left of the subject; True when a subj-refwd was removed."""
    replied = False
    while True:
        match = _LEADER.match(text)
        if match is not None:
            replied = replied or match.group().strip() != ""
            text = text[match.end() :]
            continue
        match = _LEADING_BLOB.match(text)
        # Step (4): only when a non-empty subj-base remains.
        if match is not None and text[match.end() :].strip(" \t"):
            text = text[match.end() :]
            continue
        return text, replied


def base_subject(value: str) -> tuple[str, bool]:
    """The base subject of a Subject header value (unfolded, octets as
    Latin-1 characters), and whether extracting it removed a subj-refwd, a
    "(fwd)" trailer or a "[fwd: ...]" wrapper, which is what makes a message
    a reply or forward for THREAD=REFERENCES (RFC 5256 3, REFERENCES).

    Not yet casemapped: :func:`casemap` makes the comparison key.
    """
    # Step (1): encoded words to UTF-8; tabs and continuations to one space.
    text = _SPACES.sub(" ", decode_words(value.encode("latin-1", "replace")))
    marked = False
    while True:
        text, forwarded = _strip_trailers(text)  # (2)
        text, replied = _strip_leaders(text)  # (3), (4), (5)
        marked = marked or forwarded or replied
        # Step (6): "[fwd:" subject "]" is unwrapped, then all again from (2).
        if text[:5].lower() == "[fwd:" and text.endswith("]"):
            text = text[5:-1]
            marked = True
            continue
        return text, marked


# ---------------------------------------------------------------------------
# Sent date (RFC 5256 2.2)
# ---------------------------------------------------------------------------


def sent_date(value: str | None) -> int | None:
    """The Date header value's date and time in UTC seconds, or None when
    the header cannot be read as a date (RFC 5256 2.2: the caller then uses
    the INTERNALDATE).  A missing time zone counts as UTC, as an invalid one
    would (2.2).  An impossible date or time (31 February, 25:61) makes the
    header unreadable, as Dovecot reads it, rather than 00:00:00 of that
    day: a sent date must not be invented from a broken header."""
    if value is None:
        return None
    parsed = email.utils.parsedate_tz(value)
    if parsed is None:
        return None
    year, month, day, hour, minute, second = parsed[:6]
    try:
        # Validates the calendar date and the time (a leap second is read
        # as the second before).
        when = datetime.datetime(year, month, day, hour, minute, min(second, 59))
    except (ValueError, OverflowError):
        return None
    return calendar.timegm(when.timetuple()) - (parsed[9] or 0)


# ---------------------------------------------------------------------------
# Addresses
# ---------------------------------------------------------------------------


def _unquote(local: str) -> str:
    if len(local) >= 2 and local.startswith('"') and local.endswith('"'):
        return re.sub(r"\\(.)", r"\1", local[1:-1])
    return local


def first_mailbox(value: str | None) -> str:
    """The IMAP ``addr-mailbox`` of the first address of a field (RFC 5256
    SORT FROM/TO/CC); a group's first address is its start marker, whose
    ``addr-mailbox`` is the group's name (RFC 3501 7.4.2).  Empty when the
    field is missing or has no address."""
    if value is None:
        return ""
    addresses = parse_addresses(value)
    if not addresses:
        return ""
    first = addresses[0]
    if isinstance(first, Group):
        return decode_words(first.name.encode("latin-1", "replace"))
    return _unquote(first[2])


def display_value(value: str | None) -> str:
    """RFC 5957 3: the display sort value of a field's first address: its
    decoded display name if not empty, else ``mailbox@host``, else the
    mailbox (a group's start marker has no host), else empty."""
    if value is None:
        return ""
    addresses = parse_addresses(value)
    if not addresses:
        return ""
    first = addresses[0]
    if isinstance(first, Group):
        return decode_words(first.name.encode("latin-1", "replace"))
    name, _route, local, domain = first
    if name:
        decoded = decode_words(name.encode("latin-1", "replace"))
        if decoded:
            return decoded
    return f"{_unquote(local)}@{domain}"


# ---------------------------------------------------------------------------
# Message IDs (RFC 5256 3, REFERENCES)
# ---------------------------------------------------------------------------

_ID_JUNK = re.compile(r"[ \t\r\n]+")


def _normalise_id(inner: str) -> str | None:
    """``local@domain`` with quoting, comments and white space removed, or
    None when it is no msg-id (no ``@`` with text on both sides)."""
    out: list[str] = []
    pos = 0
    while pos < len(inner):
        char = inner[pos]
        if char == "(":
            _comment, pos = read_comment(inner, pos)
            continue
        if char == '"':
            end = pos + 1
            while end < len(inner) and inner[end] != '"':
                end += 2 if inner[end] == "\\" else 1
            out.append(re.sub(r"\\(.)", r"\1", inner[pos + 1 : end]))
            pos = end + 1
            continue
        out.append(char)
        pos += 1
    text = _ID_JUNK.sub("", "".join(out))
    local, at, domain = text.rpartition("@")
    if not at or not local or not domain:
        return None
    return text


def message_ids(value: str | None) -> list[str]:
    """The valid msg-ids of a Message-ID, In-Reply-To or References value,
    normalised (``<"a b"@c>`` and ``<ab@c>`` differ, ``<"ab"@c>`` and
    ``<ab@c>`` do not), in order."""
    if not value:
        return []
    out: list[str] = []
    pos = 0
    while True:
        start = value.find("<", pos)
        if start < 0:
            return out
        end = value.find(">", start + 1)
        if end < 0:
            return out
        normalised = _normalise_id(value[start + 1 : end])
        if normalised is not None:
            out.append(normalised)
        pos = end + 1


# ---------------------------------------------------------------------------
# The record
# ---------------------------------------------------------------------------


@attrs.frozen
class SortRecord:
    """One message's sort and thread keys.

    Strings compared by SORT are kept casemapped (:func:`casemap`); msg-ids
    are case-sensitive (RFC 5256) and kept as normalised.
    """

    #: UTC seconds of the Date header, None: use the INTERNALDATE.
    date: int | None
    subject: str
    #: A reply or forward by its subject (RFC 5256 REFERENCES).
    reply: bool = False
    from_: str = ""
    to: str = ""
    cc: str = ""
    display_from: str = ""
    display_to: str = ""
    message_id: str = ""
    #: The parent chain: References' ids, or In-Reply-To's first one.
    references: tuple[str, ...] = ()

    def to_bytes(self) -> bytes:
        """NUL-separated UTF-8 (values hold no NUL: see :func:`_clean`)."""
        fields = [
            "" if self.date is None else str(self.date),
            self.subject,
            "1" if self.reply else "",
            self.from_,
            self.to,
            self.cc,
            self.display_from,
            self.display_to,
            self.message_id,
            *self.references,
        ]
        return "\0".join(fields).encode("utf-8", "surrogatepass")

    @classmethod
    def from_bytes(cls, data: bytes) -> SortRecord:
        """Raises ValueError for anything :meth:`to_bytes` did not write."""
        fields = data.decode("utf-8", "surrogatepass").split("\0")
        if len(fields) < 9:
            raise ValueError("not a sort record")
        date = int(fields[0]) if fields[0] else None
        return cls(
            date,
            fields[1],
            fields[2] == "1",
            fields[3],
            fields[4],
            fields[5],
            fields[6],
            fields[7],
            fields[8],
            tuple(fields[9:]),
        )


def _clean(text: str) -> str:
    return text.replace("\0", "")


def record_from_header(block: bytes) -> SortRecord:
    """The record of a message from its header block."""
    fields: dict[str, str] = {}
    for name, _raw, value in split_fields(block):
        # The first occurrence of each field is the one that counts.
        if name and name not in fields:
            fields[name] = value.decode("latin-1")
    subject, reply = base_subject(fields.get("subject", ""))
    references = message_ids(fields.get("references"))
    if not references:
        # RFC 5256: no usable References: the first valid In-Reply-To id.
        references = message_ids(fields.get("in-reply-to"))[:1]
    ids = message_ids(fields.get("message-id"))
    return SortRecord(
        sent_date(fields.get("date")),
        _clean(casemap(subject)),
        reply,
        _clean(casemap(first_mailbox(fields.get("from")))),
        _clean(casemap(first_mailbox(fields.get("to")))),
        _clean(casemap(first_mailbox(fields.get("cc")))),
        _clean(casemap(display_value(fields.get("from")))),
        _clean(casemap(display_value(fields.get("to")))),
        _clean(ids[0]) if ids else "",
        tuple(_clean(r) for r in references),
    )
