"""Property tests of the MIME parser (hypothesis).

Messages are drawn as trees (multiparts with preambles and epilogues,
embedded messages, leaves with assorted headers) and written out while
recording where each part's header and body land; the parser must find
exactly those offsets.  Arbitrary bytes and mangled corpus messages go
through :func:`fuzz.targets.mime`, whose properties hold for any input
(the offsets reproduce the input, the cache form and the IMAP values
round-trip).
"""

from __future__ import annotations

import glob
import os
from typing import Any

import attrs
from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from fuzz import targets
from fuzz.strategies import Draw, fuzz_settings
from mailsrv.mime import structure

CORPUS = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "corpus", "*.eml")))


@attrs.frozen
class Expected:
    """Where a drawn part was written, and its children."""

    type: str
    header_offset: int
    body_offset: int
    body_size: int
    children: tuple[Expected, ...] = ()
    message: Expected | None = None


# Text that never starts a delimiter line: no "-" at all.
_safe = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0x7E, exclude_characters="-"), max_size=30
)
_body_lines = st.lists(_safe, max_size=5)
_fields = st.lists(
    st.tuples(st.sampled_from(["Subject", "From", "To", "X-Note", "Date", "Message-ID"]), _safe),
    max_size=3,
)


class _Writer:
    def __init__(self) -> None:
        self.out = bytearray()
        self.boundaries = 0

    def write(self, data: str | bytes) -> None:
        self.out += data.encode("latin-1") if isinstance(data, str) else data

    def boundary(self) -> str:
        self.boundaries += 1
        return f"=_b{self.boundaries}"


def _entity(draw: Draw, writer: _Writer, depth: int, in_digest: bool = False) -> Expected:
    """Write one entity (header block, then body) and say where it went."""
    start = len(writer.out)
    kinds = ["leaf", "leaf"] + (["multipart", "message"] if depth < 4 else [])
    kind = draw(st.sampled_from(kinds))
    for name, value in draw(_fields):
        writer.write(f"{name}: {value}\r\n")
    boundary = writer.boundary()
    kind, content_type = _content_type(draw, writer, kind, boundary, in_digest)
    writer.write("\r\n")
    body = len(writer.out)
    children: list[Expected] = []
    message: Expected | None = None
    if kind == "multipart":
        children = _parts(draw, writer, depth, boundary)
    elif kind == "message":
        message = _entity(draw, writer, depth + 1)
    else:
        writer.write("\r\n".join(draw(_body_lines)))
    return Expected(content_type, start, body, len(writer.out) - body, tuple(children), message)


def _content_type(
    draw: Draw, writer: _Writer, kind: str, boundary: str, in_digest: bool
) -> tuple[str, str]:
    """Write the Content-Type field of an entity of ``kind``; (its kind, as a
    digest's default may change it, and the content type the parser must see)."""
    if kind == "multipart":
        subtype = draw(st.sampled_from(["mixed", "alternative", "related"]))
        quoted = draw(st.booleans())
        writer.write(
            f"Content-Type: multipart/{subtype}; boundary="
            + (f'"{boundary}"' if quoted else boundary)
            + "\r\n"
        )
        return kind, f"multipart/{subtype}"
    if kind == "message":
        writer.write("Content-Type: message/rfc822\r\n")
        return kind, "message/rfc822"
    content_type = draw(
        st.sampled_from(["text/plain", "text/html", "application/octet-stream", None])
    )
    if content_type is not None:
        writer.write(f"Content-Type: {content_type}; name=x\r\n")
        return kind, content_type
    if in_digest:  # a digest's default part is a message: give it one
        return "message", "message/rfc822"
    return kind, "text/plain"


def _parts(draw: Draw, writer: _Writer, depth: int, boundary: str) -> list[Expected]:
    """Write a multipart body (preamble, parts, epilogue); its parts."""
    preamble = draw(_safe)
    if preamble:
        writer.write(preamble + "\r\n")
    children = []
    for i in range(draw(st.integers(1, 3))):
        writer.write(("" if i == 0 else "\r\n") + f"--{boundary}\r\n")
        children.append(_entity(draw, writer, depth + 1))
    writer.write(f"\r\n--{boundary}--")
    epilogue = draw(_safe)
    if epilogue or draw(st.booleans()):
        writer.write("\r\n" + epilogue)
    return children


@st.composite
def messages(draw: Draw) -> tuple[bytes, Expected]:
    writer = _Writer()
    expected = _entity(draw, writer, 0)
    return bytes(writer.out), expected


def found(part: structure.Part) -> Expected:
    return Expected(
        f"{part.type}/{part.subtype}".lower(),
        part.header_offset,
        part.body_offset,
        part.body_size,
        tuple(found(child) for child in part.children),
        None if part.message is None else found(part.message),
    )


def _mangle(data: bytes, edits: list[tuple[int, int, bytes]]) -> bytes:
    out = bytearray(data)
    for where, drop, insert in edits:
        pos = where % (len(out) + 1)
        out[pos : pos + drop] = insert
    return bytes(out)


_edits = st.lists(
    st.tuples(
        st.integers(0, 1 << 20),
        st.integers(0, 8),
        st.binary(max_size=6) | st.sampled_from([b"\r\n", b"--", b"\n\n", b"\r\n\r\n", b"\r"]),
    ),
    max_size=6,
)


class StructureTests(SynchronousTestCase):
    @fuzz_settings(300)
    @given(messages())
    def test_offsets_of_drawn_messages(self, drawn: tuple[bytes, Expected]) -> None:
        data, expected = drawn
        parsed = structure.parse(data)
        self.assertEqual(found(parsed.root), expected, data)
        targets.mime(data)

    @fuzz_settings(200)
    @given(messages(), _edits)
    def test_mangled_drawn_messages(self, drawn: tuple[bytes, Any], edits: list[Any]) -> None:
        targets.mime(_mangle(drawn[0], edits))

    @fuzz_settings(200)
    @given(st.sampled_from(CORPUS), _edits)
    def test_mangled_corpus(self, path: str, edits: list[Any]) -> None:
        with open(path, "rb") as handle:
            targets.mime(_mangle(handle.read(), edits))

    @fuzz_settings(200)
    @given(st.binary(max_size=600))
    def test_any_bytes(self, data: bytes) -> None:
        targets.mime(data)

    def test_corpus(self) -> None:
        """Every corpus message as it is (the atheris runs start from these)."""
        self.assertGreater(len(CORPUS), 50)
        for path in CORPUS:
            with open(path, "rb") as handle:
                targets.mime(handle.read())


#: Header field values with any text (UTF-8 encoded), and names clients meet.
_utf8_fields = st.lists(
    st.tuples(
        st.sampled_from(
            [
                "Subject",
                "From",
                "To",
                "Cc",
                "Message-ID",
                "References",
                "Content-Type",
                "Content-Disposition",
                "X-Note",
                "Received",
            ]
        ),
        st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\r\n"), max_size=40),
    ),
    max_size=6,
)


class DowngradeTests(SynchronousTestCase):
    """RFC 6858's synthetic message (fuzz.targets.downgrade) for any input."""

    @fuzz_settings(300)
    @given(_utf8_fields, st.binary(max_size=40))
    def test_utf8_headers(self, drawn: list[tuple[str, str]], body: bytes) -> None:
        header = "".join(f"{name}: {value}\r\n" for name, value in drawn).encode("utf-8")
        targets.downgrade(header + b"\r\n" + body)
        targets.downgrade(header)  # all header, no blank line

    @fuzz_settings(200)
    @given(st.binary(max_size=600))
    def test_any_bytes(self, data: bytes) -> None:
        targets.downgrade(data)

    @fuzz_settings(200)
    @given(st.sampled_from(CORPUS), _edits)
    def test_mangled_corpus(self, path: str, edits: list[Any]) -> None:
        with open(path, "rb") as handle:
            targets.downgrade(_mangle(handle.read(), edits))

    def test_corpus(self) -> None:
        for path in CORPUS:
            with open(path, "rb") as handle:
                targets.downgrade(handle.read())
