"""Worst cases for the parsers: inputs built to make each one work hard.

Each case builds an input of a given size (``64 KiB`` is the bound the
project sets: no such input may take more than 10 ms to parse or reject)
for one entry point.  ``tests/test_fuzz_bounds.py`` checks that the work
each one causes grows linearly with its size (counted in function calls,
so the check does not depend on the machine), and ``python -m fuzz.worst``
times them.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from types import FrameType

import attrs

from mailsrv import mutf7
from mailsrv.auth import passwdfile
from mailsrv.errors import ConfigError
from mailsrv.imap import render
from mailsrv.imap.commands import REGISTRY
from mailsrv.imap.framer import NEED_DATA, FramedCommand, Framer, LiteralNeeded
from mailsrv.imap.lexer import ParseError
from mailsrv.mime import addresses, decoding, structure
from mailsrv.pop3.framer import LineFramer

__all__ = ["CASES", "Case", "calls"]

#: The size the bound is set for.
BOUND_SIZE = 64 * 1024


def imap(data: bytes) -> None:
    """Frame and parse, as the session does (literals in memory)."""
    framer = Framer(1 << 20)
    framer.receive(data)
    while True:
        event = framer.next_event()
        if event is NEED_DATA:
            return
        if isinstance(event, LiteralNeeded):
            framer.accept_literal()
        elif isinstance(event, FramedCommand):
            try:
                REGISTRY.parse(event.segments)
            except ParseError:
                pass


def mime(data: bytes) -> None:
    """Parse, and write what FETCH ENVELOPE and BODYSTRUCTURE answer."""
    parsed = structure.parse(data)
    render.render_envelope(render.envelope(parsed))
    render.render_body_structure(render.body_structure(parsed, True))


def address_list(data: bytes) -> None:
    addresses.parse_addresses(data.decode("latin-1"))


def encoded_words(data: bytes) -> None:
    decoding.decode_words(data)


def mutf7_decode(data: bytes) -> None:
    try:
        mutf7.decode(data.decode("latin-1"))
    except ValueError:
        pass


def mutf7_encode(data: bytes) -> None:
    mutf7.encode(data.decode("utf-8"))


def users_file(data: bytes) -> None:
    try:
        passwdfile._parse(data, "passwd")
    except ConfigError:
        pass


def pop3_lines(data: bytes) -> None:
    framer = LineFramer(512)
    framer.receive(data)
    while framer.next_event() is not None:
        pass


@attrs.frozen
class Case:
    """An entry point and how to build a hard input of a given size."""

    entry: Callable[[bytes], None]
    build: Callable[[int], bytes]


def _fill(prefix: bytes, unit: bytes, suffix: bytes = b"") -> Callable[[int], bytes]:
    """``prefix``, then ``unit`` repeated, then ``suffix``: ``size`` octets at most."""

    def build(size: int) -> bytes:
        count = max(1, (size - len(prefix) - len(suffix)) // len(unit))
        return prefix + unit * count + suffix

    return build


def _users(size: int) -> bytes:
    lines: list[bytes] = []
    total, i = 0, 0
    while True:
        line = b"user%d:{PLAIN}secret%d::::/home/user%d\n" % (i, i, i)
        if total + len(line) > size:
            return b"".join(lines)
        lines.append(line)
        total += len(line)
        i += 1


def _nested_multiparts(size: int) -> bytes:
    out: list[bytes] = []
    i, total = 0, 0
    while True:
        piece = b"Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n" % (i, i)
        if total + len(piece) > size:
            return b"".join(out)
        out.append(piece)
        total += len(piece)
        i += 1


CASES: dict[str, Case] = {
    # IMAP: one command (a line and its literals) per input.
    "imap quoted string": Case(imap, _fill(b'a LOGIN "', b"x", b'" y\r\n')),
    "imap escapes": Case(imap, _fill(b'a LOGIN "', b"\\\\", b'" y\r\n')),
    "imap sequence set": Case(imap, _fill(b"a FETCH ", b"1,", b"1 FLAGS\r\n")),
    "imap ranges": Case(imap, _fill(b"a FETCH ", b"1:*,", b"1 FLAGS\r\n")),
    "imap search keys": Case(imap, _fill(b"a SEARCH ", b"SEEN ", b"ALL\r\n")),
    "imap search nesting": Case(imap, _fill(b"a SEARCH ", b"(", b"ALL\r\n")),
    "imap search OR chain": Case(imap, _fill(b"a SEARCH ", b"OR ALL ", b"ALL\r\n")),
    "imap fetch items": Case(imap, _fill(b"a FETCH 1 (", b"FLAGS ", b"UID)\r\n")),
    "imap header fields": Case(imap, _fill(b"a FETCH 1 BODY[HEADER.FIELDS (", b"X ", b"Y)]\r\n")),
    "imap section parts": Case(imap, _fill(b"a FETCH 1 BODY[", b"1.", b"1]\r\n")),
    "imap flag list": Case(imap, _fill(b"a STORE 1 +FLAGS (", b"k ", b"k)\r\n")),
    "imap mailbox name": Case(imap, _fill(b"a SELECT ", b"&AOk-a", b"\r\n")),
    "imap list pattern": Case(imap, _fill(b'a LIST "" "', b"%*", b'"\r\n')),
    "imap parameters": Case(imap, _fill(b"a SELECT x (", b"X ", b"X)\r\n")),
    "imap nested parameters": Case(imap, _fill(b"a SELECT x (X ", b"(", b"\r\n")),
    "imap enable": Case(imap, _fill(b"a ENABLE", b" X", b"\r\n")),
    "imap id": Case(imap, _fill(b"a ID (", b'"a" "b" ', b'"a" "b")\r\n')),
    "imap literals": Case(imap, _fill(b"a LOGIN {1}\r\n", b"x {1}\r\n", b"x\r\n")),
    "imap long atom": Case(imap, _fill(b"a ", b"X", b"\r\n")),
    # MIME: one message per input.
    "mime many header fields": Case(mime, _fill(b"", b"X: y\r\n", b"\r\nbody")),
    "mime folded field": Case(mime, _fill(b"Subject: x", b"\r\n x", b"\r\n\r\n")),
    "mime many parts": Case(
        mime,
        _fill(b"Content-Type: multipart/mixed; boundary=b\r\n\r\n", b"--b\r\n\r\n", b"--b--\r\n"),
    ),
    "mime nested multiparts": Case(mime, _nested_multiparts),
    "mime nested messages": Case(mime, _fill(b"", b"Content-Type: message/rfc822\r\n\r\n")),
    "mime parameters": Case(mime, _fill(b"Content-Type: text/plain", b"; a=b", b"\r\n\r\n")),
    "mime open comments": Case(mime, _fill(b"Content-Type: text/plain", b"(", b"\r\n\r\n")),
    "mime lone CRs": Case(mime, _fill(b"", b"\r")),
    "mime near-miss boundaries": Case(
        mime, _fill(b"Content-Type: multipart/mixed; boundary=b\r\n\r\n", b"x--b\r\n")
    ),
    "mime many addresses": Case(mime, _fill(b"To: ", b"a@b, ", b"c@d\r\n\r\n")),
    # Header field values, as SEARCH and ENVELOPE read them.
    "addresses groups": Case(address_list, _fill(b"", b"g:")),
    "addresses angle brackets": Case(address_list, _fill(b"", b"<")),
    "addresses routes": Case(address_list, _fill(b"<", b"@a,")),
    "addresses quotes": Case(address_list, _fill(b'"', b'\\"')),
    "encoded words": Case(encoded_words, _fill(b"", b"=?utf-8?q?a?= ")),
    "encoded words base64": Case(encoded_words, _fill(b"", b"=?utf-8?b?YQ==?=")),
    # Mailbox names.
    "mutf7 shifts": Case(mutf7_decode, _fill(b"", b"&AOk-a")),
    "mutf7 long run": Case(mutf7_decode, _fill(b"&", b"AOkA", b"-")),
    "mutf7 encode": Case(mutf7_encode, _fill(b"", "\u00e9a".encode())),
    # Files an administrator writes.
    "users file": Case(users_file, _users),
    "users file long line": Case(users_file, _fill(b"u:{PLAIN}", b"x:", b"\n")),
    # POP3 command lines.
    "pop3 many lines": Case(pop3_lines, _fill(b"", b"NOOP\r\n")),
    "pop3 long line": Case(pop3_lines, _fill(b"", b"x")),
}


def calls(entry: Callable[[bytes], None], data: bytes) -> int:
    """How many function calls (Python and C) ``entry(data)`` makes: a
    measure of work that does not depend on the machine's speed."""
    count = 0

    def profile(frame: FrameType, event: str, arg: object) -> None:
        nonlocal count
        if event in ("call", "c_call"):
            count += 1

    previous = sys.getprofile()
    sys.setprofile(profile)
    try:
        entry(data)
    finally:
        sys.setprofile(previous)
    return count
