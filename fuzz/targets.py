"""Fuzz targets: one function per entry point that reads untrusted input.

Each target takes arbitrary bytes and raises only when a property is broken
(``AssertionError`` with what was wrong) or when the code under test
raised something it must not (any other exception): a clean rejection
(``ParseError``, ``ConfigError``, ``ValueError`` where that is the
documented answer) is success.  The same functions serve the atheris
runner (``python -m fuzz.run``) and the hypothesis suites in ``tests/``,
which also feed them structured input.

Properties beyond "no crash":

* ``imap_command``: a parse error is one the grammar raised, not a bug
  masked as ``BAD`` (the registry turns parser bugs into ParseError; the
  original exception is still its ``__context__``).
* ``imap_framer``: the events are the same however the bytes are split.
* ``imap_session``: every tagged answer names a tag sent, nothing is
  ``[SERVERBUG]``, nothing is logged as a failure, and everything the
  server writes is well-formed IMAP (read by :mod:`tests.stress.wire`,
  which is not the server's code).
* ``mime``: the parts' byte offsets reproduce the exact input, the cached
  form reads back to the same structure, and ENVELOPE/BODYSTRUCTURE parse
  back to the values they were written from.
* ``downgrade``: RFC 6858's synthetic message has an ASCII header, the
  file :func:`~mailsrv.mime.downgrade.serve` gives reads (whole and in
  pieces) as that message, its size and delta agree, and it parses.
* ``mutf7``: what decodes, encodes back to the same text, and the other
  way round.
* ``sasl``: each mechanism answers a challenge, credentials or a refusal.
* ``pop3_session``: one answer per command line, never an internal error.
* ``users_file`` and ``config``: a record or a ConfigError naming the
  place; records written back read the same.
"""

from __future__ import annotations

import base64
import io
import os
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.portal import Portal
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import ILogObserver, globalLogPublisher
from zope.interface import implementer

from mailsrv import mutf7
from mailsrv.auth import passwdfile, sasl
from mailsrv.auth.realm import MailRealm
from mailsrv.config import load_config
from mailsrv.errors import ConfigError
from mailsrv.imap import render as imap_render
from mailsrv.imap.commands import REGISTRY
from mailsrv.imap.framer import (
    NEED_DATA,
    ContinuationLine,
    Event,
    FramedCommand,
    Framer,
    LineTooLong,
    LiteralNeeded,
)
from mailsrv.imap.lexer import LiteralFile, ParseError
from mailsrv.imap.protocol import IMAP4ServerFactory
from mailsrv.mime import decoding, fields, structure
from mailsrv.mime import downgrade as mime_downgrade
from mailsrv.policy import SessionPolicy
from mailsrv.pop3 import POP3Factory
from mailsrv.storage.memory import MemoryStorage
from tests.stress import wire

__all__ = ["TARGETS", "Target", "frame", "split_points"]

Target = Callable[[bytes], None]

#: Line limit of the framer targets: small, so limits are reached often.
MAX_LINE = 4096


# -- IMAP -----------------------------------------------------------------------------


def frame(
    pieces: Iterator[bytes] | list[bytes], max_line: int = MAX_LINE, continuations: bool = True
) -> list[Any]:
    """The framer's events for ``pieces`` fed one after the other; every
    literal that fits is taken in memory, a bigger one refused, and (with
    ``continuations``) the line after every third command is asked for as
    a continuation, so that path is walked too.  Events are compared by
    value."""
    framer = Framer(max_line)
    events: list[Any] = []
    commands = 0
    for piece in pieces:
        framer.receive(piece)
        while True:
            event: Event = framer.next_event()
            if event is NEED_DATA:
                break
            if isinstance(event, LiteralNeeded):
                if event.size + event.command_size <= max_line:
                    framer.accept_literal()
                else:
                    framer.refuse_literal()
            elif isinstance(event, FramedCommand):
                commands += 1
                if continuations and commands % 3 == 0:
                    framer.expect_continuation()
            events.append(_comparable(event))
    framer.close()
    return events


def _comparable(event: Event) -> Any:
    if isinstance(event, FramedCommand):
        return (
            "command",
            tuple(s.file.read() if isinstance(s, LiteralFile) else s for s in event.segments),
        )
    return event


def split_points(data: bytes, seed: bytes) -> list[bytes]:
    """``data`` cut where ``seed``'s octets say (each one a piece length)."""
    pieces, pos = [], 0
    for octet in seed or b"\x01":
        if pos >= len(data):
            break
        step = octet % 17 + 1
        pieces.append(data[pos : pos + step])
        pos += step
    if pos < len(data):
        pieces.append(data[pos:])
    return pieces


def imap_framer(data: bytes) -> None:
    """The events are the same whole, octet by octet, and cut at random."""
    seed, _, stream = data.partition(b"\n")
    whole = frame([stream])
    for pieces in ([stream[i : i + 1] for i in range(len(stream))], split_points(stream, seed)):
        split = frame(pieces)
        assert split == whole, f"split differently: {split!r} != {whole!r}"
    for event in whole:
        assert not isinstance(event, ContinuationLine) or b"\r\n" not in event.line


def imap_command(data: bytes) -> None:
    """Every framed command parses or is rejected by the grammar itself."""
    for event in frame([data], max_line=1 << 16):
        if isinstance(event, tuple):
            parse_command(list(event[1]))
        else:
            assert isinstance(event, (LiteralNeeded, ContinuationLine, LineTooLong)), event


def parse_command(segments: list[bytes]) -> Any:
    """``REGISTRY.parse``, with a bug the registry masks as BAD raised.

    The registry answers an exception that is not a ParseError with
    "malformed command (TypeName)" (its defence in depth); the original is
    the ParseError's ``__context__``.  A grammar that turns an error into
    its own ParseError (an impossible date) is not a bug."""
    try:
        return REGISTRY.parse(segments)
    except ParseError as e:
        if e.message.startswith("malformed command ("):
            raise AssertionError(f"parser bug answered as BAD: {e.__context__!r}") from e
        return None


@implementer(ILogObserver)
class _Failures:
    """Log events that report a failure (a traceback) while it is open."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def __call__(self, event: dict[str, Any]) -> None:
        if "log_failure" in event:
            self.events.append(event)

    def __enter__(self) -> _Failures:
        globalLogPublisher.addObserver(self)
        return self

    def __exit__(self, *exc: object) -> None:
        globalLogPublisher.removeObserver(self)

    def check(self) -> None:
        if self.events:
            failure = self.events[0]["log_failure"]
            raise AssertionError(f"logged a failure: {failure.getTraceback()}")


def _imap_server() -> tuple[Any, StringTransport, Clock]:
    storage = MemoryStorage()
    for i in range(4):
        storage.deliver(
            "joe",
            b"From: a@example.org\r\nSubject: %d\r\nContent-Type: multipart/mixed; boundary=b\r\n"
            b"\r\n--b\r\n\r\none\r\n--b\r\nContent-Type: message/rfc822\r\n\r\n"
            b"Subject: inner\r\n\r\nx\r\n--b--\r\n" % i,
        )
    checker = InMemoryUsernamePasswordDatabaseDontUse(joe=b"secret")
    policy = SessionPolicy(
        plaintext="always", failure_delay=0.0, max_failures=100, max_line_length=MAX_LINE
    )
    clock = Clock()
    portal = Portal(MailRealm(storage), [checker])
    server = IMAP4ServerFactory(portal, policy, clock=clock).buildProtocol(None)
    transport = StringTransport()
    server.makeConnection(transport)
    return server, transport, clock


def imap_session(data: bytes) -> None:
    """A whole session: a login, then ``data`` in pieces its first line
    chooses.  Everything the server writes must be IMAP; no internal error."""
    seed, _, stream = data.partition(b"\n")
    with _Failures() as failures:
        server, transport, clock = _imap_server()
        server.dataReceived(b"l1 LOGIN joe secret\r\nl2 SELECT INBOX\r\n")
        for piece in split_points(stream, seed):
            server.dataReceived(piece)
            clock.advance(0)
        clock.advance(3600)  # pending failed-login answers, IDLE pushes, timeouts
        server.connectionLost(None)
        output = transport.value()
    failures.check()
    assert b"[SERVERBUG]" not in output, output[-500:]
    sent_tags = _tags(b"l1 LOGIN\r\nl2 SELECT\r\n" + stream)
    for response in wire.responses(output):
        if response.kind == "tagged":
            assert response.tag is not None and response.tag.encode() in sent_tags, response


def _tags(stream: bytes) -> set[bytes]:
    tags = {b"*"}
    for line in stream.split(b"\n"):
        tags.add(line.split(b" ", 1)[0].strip())
    return tags


# -- MIME --------------------------------------------------------------------------------


def mime(data: bytes) -> None:
    """Offsets reproduce the input; the cache form and the IMAP values
    round-trip."""
    parsed = structure.parse(data)
    check_offsets(parsed, data)
    assert structure.MessageStructure.from_bytes(parsed.to_bytes()) == parsed
    envelope = imap_render.envelope(parsed)
    written = imap_render.render_envelope(envelope)
    assert _as_lists(wire.parse_values(written)[0]) == _as_lists(envelope), written
    for extensible in (False, True):
        body = imap_render.body_structure(parsed, extensible)
        written = imap_render.render_body_structure(body)
        assert _as_lists(wire.parse_values(written)[0]) == _as_lists(body), written
    for part in parsed.root.walk():
        decoding.decode_text(data[part.body_offset : part.body_offset + part.body_size], None)
    list(decoding.text_parts(parsed, data))


def downgrade(data: bytes) -> None:
    """The synthetic message is ASCII up to its header's end and is what
    the served file reads, at the size it says."""
    synthetic = mime_downgrade.downgrade_message(data)
    expected = data if synthetic is None else synthetic
    header = expected[: fields.header_end(expected, 0, len(expected))]
    if synthetic is not None:
        assert header.isascii(), header
        assert fields.header_end(expected, 0, len(expected)) <= len(expected)
    served = mime_downgrade.serve(io.BytesIO(data))
    assert (served.delta is None) == (synthetic is None), served.delta
    assert served.file.size == len(expected) == len(data) + (served.delta or 0)
    assert served.file.read() == expected
    middle = len(expected) // 2
    served.file.seek(middle)
    assert served.file.read(7) == expected[middle : middle + 7]
    structure.parse(expected)


def _as_lists(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_as_lists(v) for v in value]
    return value


def check_offsets(parsed: structure.MessageStructure, data: bytes) -> None:
    """Every part is a header block then a body, inside its parent, in
    order; a multipart's parts are separated by its delimiter lines; and
    the root covers the input exactly."""
    assert parsed.size == len(data)
    root = parsed.root
    assert root.header_offset == 0
    assert root.body_offset + root.body_size == len(data), (root, len(data))
    _check_part(root, data)


def _check_part(part: structure.Part, data: bytes) -> None:
    assert part.header_offset + part.header_size == part.body_offset, part
    assert 0 <= part.body_size and part.body_offset + part.body_size <= len(data), part
    end = part.body_offset + part.body_size
    assert part.lines == data.count(b"\n", part.body_offset, end), part
    if part.message is not None:
        inner = part.message
        assert inner.header_offset == part.body_offset, (part, inner)
        assert inner.body_offset + inner.body_size == end, (part, inner)
        _check_part(inner, data)
    boundary = part.param("boundary")
    previous = part.body_offset
    for child in part.children:
        assert previous <= child.header_offset, (part, child)
        assert child.body_offset + child.body_size <= end, (part, child)
        gap = data[previous : child.header_offset]
        if boundary and part.children != _implicit(part):
            # What lies between two parts is the delimiter line (with the
            # CRLF before it, RFC 2046 5.1.1), after any preamble.
            delimiter = b"--" + boundary.encode("latin-1")
            assert delimiter in gap or child.header_offset == previous, (gap, delimiter)
        _check_part(child, data)
        previous = child.body_offset + child.body_size


def _implicit(part: structure.Part) -> tuple[structure.Part, ...]:
    """The single part a multipart without usable boundary is given."""
    if len(part.children) == 1 and part.children[0].header_size == 0:
        return part.children
    return ()


# -- small parsers ------------------------------------------------------------------------


def mutf7_names(data: bytes) -> None:
    """Strict modified UTF-7: decode(x) encodes back to x; encode(s)
    decodes back to s."""
    text = data.decode("latin-1")
    try:
        decoded = mutf7.decode(text)
    except ValueError:
        pass
    else:
        assert mutf7.encode(decoded) == text, (text, decoded)
    name = data.decode("utf-8", "replace")
    assert mutf7.decode(mutf7.encode(name)) == name
    assert mutf7.encode(name).isascii()


#: SASL mechanisms to drive; names the build does not know are skipped, so
#: mechanisms added later are fuzzed as soon as they exist.
SASL_NAMES = (
    "PLAIN",
    "LOGIN",
    "CRAM-MD5",
    "SCRAM-SHA-1",
    "SCRAM-SHA-256",
    "EXTERNAL",
    "ANONYMOUS",
    "OAUTHBEARER",
    "XOAUTH2",
)


def sasl_messages(data: bytes) -> None:
    """Each mechanism, fed the NUL-separated messages of ``data`` (also
    through base64, as the protocols decode them), answers every step
    with a Challenge, Credentials or a Refusal, and stops at the last two."""
    messages = data.split(b"\n")
    for name in SASL_NAMES:
        mechanism = sasl.create(name, "localhost")
        if mechanism is None:
            continue
        step = mechanism.start(messages[0] if messages[0] else None)
        for message in messages[1:]:
            if not isinstance(step, sasl.Challenge):
                break
            step = mechanism.respond(message)
        assert isinstance(step, (sasl.Challenge, sasl.Credentials, sasl.Refusal)), step
    from mailsrv.pop3 import wire as pop3_wire

    decoded = pop3_wire.decode_base64(data)
    if decoded is not None:
        assert base64.b64decode(base64.b64encode(decoded)) == decoded


def _pop3_server() -> tuple[Any, StringTransport, Clock]:
    storage = MemoryStorage()
    for i in range(3):
        storage.deliver("joe", b"Subject: %d\r\n\r\n.line\r\nbody\r\n" % i)
    checker = InMemoryUsernamePasswordDatabaseDontUse(joe=b"secret")
    policy = SessionPolicy(
        plaintext="always", failure_delay=0.0, max_failures=100, max_line_length=512
    )
    clock = Clock()
    factory = POP3Factory(Portal(MailRealm(storage), [checker]), policy, clock=clock)
    address = IPv4Address("TCP", "127.0.0.1", 40110)
    server = factory.buildProtocol(address)
    transport = StringTransport(peerAddress=address)
    server.makeConnection(transport)
    return server, transport, clock


def pop3_session(data: bytes) -> None:
    """Command lines answered in order, one status line each (after the
    multi-line bodies), and no internal error."""
    seed, _, stream = data.partition(b"\n")
    with _Failures() as failures:
        server, transport, clock = _pop3_server()
        server.dataReceived(b"USER joe\r\nPASS secret\r\n")
        for piece in split_points(stream, seed):
            server.dataReceived(piece)
            clock.advance(0)
        clock.advance(3600)
        server.connectionLost(None)
        output = transport.value()
    failures.check()
    assert b"[SYS/PERM]" not in output, output[-500:]
    for line in output.split(b"\r\n")[:-1]:
        assert len(line) <= 1000, line[:100]


def users_file(data: bytes) -> None:
    """Records or a ConfigError naming a line; records written back in
    the file's format read the same."""
    try:
        _lines, users = passwdfile._parse(data, "passwd")
    except ConfigError as e:
        assert e.key.startswith("line "), e
        return
    for _index, record in users.values():
        line = ":".join(
            [
                record.name,
                record.password,
                "" if record.uid is None else str(record.uid),
                "" if record.gid is None else str(record.gid),
                record.gecos,
                record.home or "",
                record.shell,
                record.extra,
            ]
        )
        again = passwdfile.parse_line(line, "passwd", 1)
        assert again == record, (again, record)


def config(data: bytes) -> None:
    """A Config, or a ConfigError naming this file (and a key when the
    file parses as TOML)."""
    fd, path = tempfile.mkstemp(prefix="mailsrv-fuzz-", suffix=".toml")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        try:
            load_config(path, check_files=False, require_listeners=False)
        except ConfigError as e:
            assert e.path == path, e
    finally:
        os.unlink(path)


TARGETS: dict[str, Target] = {
    "imap_command": imap_command,
    "imap_framer": imap_framer,
    "imap_session": imap_session,
    "mime": mime,
    "downgrade": downgrade,
    "mutf7": mutf7_names,
    "sasl": sasl_messages,
    "pop3_session": pop3_session,
    "users_file": users_file,
    "config": config,
}
