"""Property tests of IMAP's input and output (hypothesis).

Commands are drawn with the object they must parse to
(:mod:`fuzz.strategies`), so ``parse(render(x)) == x``; the framer must
give the same commands however the bytes are split; responses the server
writes must read back, by a reader that is not the server's
(:mod:`tests.stress.wire`), as the values they were written from; and
arbitrary bytes fed to the fuzz targets (:mod:`fuzz.targets`) must break
no property.  Example counts are small so CI stays fast; set
``MAILSRV_FUZZ_EXAMPLES`` for the long form (docs/security.md).
"""

from __future__ import annotations

import datetime

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from fuzz import targets
from fuzz.strategies import Rendered, commands, fuzz_settings, tags
from mailsrv import mutf7
from mailsrv.imap import response
from mailsrv.imap.lexer import ATOM_CHARS
from tests.stress import wire


def parsed(data: bytes, pieces: list[bytes] | None = None) -> list[object]:
    """The command objects the server makes of ``data`` (cut into
    ``pieces`` when given); None for a command it rejected."""
    events = targets.frame(
        pieces if pieces is not None else [data], max_line=1 << 20, continuations=False
    )
    found = []
    for event in events:
        if isinstance(event, tuple):
            result = targets.parse_command(list(event[1]))
            found.append(None if result is None else result[1])
    return found


class CommandRoundTripTests(SynchronousTestCase):
    @fuzz_settings(400)
    @given(commands())
    def test_parse_render(self, command: Rendered) -> None:
        """Every command parses to the object it was written from."""
        self.assertEqual(parsed(command.wire), [command.expected], command.wire)

    @fuzz_settings(150)
    @given(st.lists(commands(), min_size=1, max_size=6), st.data())
    def test_same_commands_however_split(self, drawn: list[Rendered], data: st.DataObject) -> None:
        stream = b"".join(c.wire for c in drawn)
        cuts = sorted(data.draw(st.sets(st.integers(1, max(1, len(stream) - 1)), max_size=20)))
        pieces = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
        expected = [c.expected for c in drawn]
        self.assertEqual(parsed(stream), expected)
        self.assertEqual(parsed(stream, pieces), expected)
        self.assertEqual(parsed(stream, [stream[i : i + 1] for i in range(len(stream))]), expected)


_atoms = st.text(
    st.sampled_from(sorted(chr(c) for c in ATOM_CHARS - {ord("[")})), min_size=1, max_size=10
).filter(lambda a: not a.isdigit() and a.upper() != "NIL")
_values = st.recursive(
    st.none()
    | st.integers(0, 2**63)
    | st.binary(max_size=40)
    | st.text(max_size=20)
    | _atoms.map(response.Atom),
    lambda children: st.lists(children, max_size=5),
    max_leaves=20,
)


def expected_value(value: object) -> object:
    """What a client reads for a value the server serialized."""
    if isinstance(value, response.Atom):
        return wire.Atom(value.text)
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, list):
        return [expected_value(v) for v in value]
    return value


class ResponseRoundTripTests(SynchronousTestCase):
    @fuzz_settings(300)
    @given(st.lists(_values, max_size=6))
    def test_untagged_values(self, values: list[object]) -> None:
        written = response.untagged("XDATA", *(response.serialize(v) for v in values))  # type: ignore[arg-type]
        read = wire.parse(written)
        self.assertEqual((read.kind, read.name), ("*", "XDATA"))
        self.assertEqual(list(read.values), [expected_value(v) for v in values])

    @fuzz_settings(300)
    @given(
        tags,
        st.sampled_from(["OK", "NO", "BAD"]),
        st.text(max_size=60),
        st.none() | st.tuples(_atoms, st.lists(st.integers(0, 2**32) | _atoms, max_size=3)),
    )
    def test_status(
        self, tag: str, status: str, text: str, code: tuple[str, list[object]] | None
    ) -> None:
        code_text = None if code is None else " ".join([code[0], *map(str, code[1])])
        read = wire.parse(response.tagged(tag, status, text, code_text))
        self.assertEqual((read.tag, read.status), (tag, status))
        if code is not None:
            self.assertEqual(
                read.code,
                (
                    wire.Atom(code[0]),
                    *(
                        expected_value(response.Atom(v) if isinstance(v, str) else v)
                        for v in code[1]
                    ),
                ),
            )
        # resp-text is TEXT-CHARs: line ends and non-ASCII are replaced,
        # leading and trailing space trimmed, never empty.
        clean = text.replace("\r", " ").replace("\n", " ").strip() or "done"
        if code is None and clean.startswith("["):
            clean = " " + clean  # else it would read as a response code
        self.assertEqual(read.text, clean.encode("ascii", "replace").decode())

    @fuzz_settings(200)
    @given(st.text(st.characters(exclude_categories=["Cs"]), max_size=30))
    def test_mailbox_names(self, name: str) -> None:
        read = wire.parse(response.untagged("LIST", "()", '"/"', response.mailbox(name)))
        value = read.values[2]
        # An astring: a digits-only atom reads as a number, any other atom as an atom.
        assert isinstance(value, (bytes, str, int))
        raw = value if isinstance(value, bytes) else str(value).encode()
        self.assertEqual(mutf7.decode(raw.decode("ascii")), name)

    @fuzz_settings(100)
    @given(st.datetimes(datetime.datetime(1970, 1, 1), datetime.datetime(2200, 1, 1)))
    def test_internaldate(self, when: datetime.datetime) -> None:
        from mailsrv.imap import syntax
        from mailsrv.imap.lexer import Reader

        written = syntax.format_date_time(when.replace(microsecond=0, tzinfo=datetime.UTC))
        read = wire.parse(response.untagged("1", "FETCH", f'(INTERNALDATE "{written}")'))
        value = wire.find(list(read.values[0]), "INTERNALDATE")  # type: ignore[arg-type]
        assert isinstance(value, bytes)
        again = syntax.date_time(Reader([b'"' + value + b'"'], 8))
        self.assertEqual(again, when.replace(microsecond=0, tzinfo=datetime.UTC))


# Commands and noise for whole sessions: what a client sends, mangled.
_session_lines = st.lists(
    commands().map(lambda c: c.wire)
    | st.binary(max_size=60).map(lambda b: b + b"\r\n")
    | st.sampled_from(
        [b"DONE\r\n", b"*\r\n", b"a IDLE\r\n", b"b APPEND INBOX {5}\r\n", b"c FETCH 1:* BODY[]\r\n"]
    ),
    max_size=12,
)


class TargetTests(SynchronousTestCase):
    """The fuzz targets, fed by hypothesis (atheris feeds the same ones)."""

    @fuzz_settings(200)
    @given(st.binary(max_size=16), _session_lines)
    def test_session(self, seed: bytes, lines: list[bytes]) -> None:
        targets.imap_session(seed.replace(b"\n", b"") + b"\n" + b"".join(lines))

    @fuzz_settings(300)
    @given(st.binary(max_size=400))
    def test_command_bytes(self, data: bytes) -> None:
        targets.imap_command(b"a " + data)
        targets.imap_command(data)

    @fuzz_settings(300)
    @given(
        st.binary(max_size=16), st.lists(commands().map(lambda c: c.wire) | st.binary(max_size=80))
    )
    def test_framer(self, seed: bytes, pieces: list[bytes]) -> None:
        targets.imap_framer(seed.replace(b"\n", b"") + b"\n" + b"".join(pieces))
