"""Property tests of the smaller parsers (hypothesis): modified UTF-7, the
SASL messages, POP3's framer and commands, the users file and the
configuration file.  Each also feeds arbitrary bytes to its fuzz target
(:mod:`fuzz.targets`)."""

from __future__ import annotations

import os
from typing import Any

import attrs
from hypothesis import assume, given
from hypothesis import strategies as st
from twisted.cred.credentials import IUsernamePassword
from twisted.trial.unittest import SynchronousTestCase

from fuzz import targets
from fuzz.strategies import Draw, fuzz_settings
from mailsrv import config as config_module
from mailsrv import mutf7
from mailsrv.auth import passwdfile, sasl
from mailsrv.auth.passwdfile import UserRecord
from mailsrv.config import load_config
from mailsrv.errors import ConfigError
from mailsrv.pop3.framer import LineFramer

_unicode = st.text(st.characters(exclude_categories=["Cs"]), max_size=30)


class ModifiedUTF7Tests(SynchronousTestCase):
    @fuzz_settings(300)
    @given(_unicode)
    def test_round_trip(self, name: str) -> None:
        encoded = mutf7.encode(name)
        self.assertTrue(encoded.isascii())
        self.assertEqual(mutf7.decode(encoded), name)

    @fuzz_settings(300)
    @given(st.text(st.sampled_from("&-+,/=ABCDEFabcdef019 AOkZz~"), max_size=30))
    def test_strict(self, text: str) -> None:
        """What decodes is the one spelling encode gives (RFC 3501 5.1.3):
        two names never decode to one mailbox."""
        try:
            decoded = mutf7.decode(text)
        except ValueError:
            return
        self.assertEqual(mutf7.encode(decoded), text)

    @fuzz_settings(200)
    @given(st.binary(max_size=80))
    def test_target(self, data: bytes) -> None:
        targets.mutf7_names(data)


_secret = st.binary(min_size=1, max_size=40).filter(lambda b: b"\0" not in b)


class SaslTests(SynchronousTestCase):
    @fuzz_settings(200)
    @given(_secret, _secret, st.booleans())
    def test_plain(self, user: bytes, password: bytes, authzid: bool) -> None:
        """RFC 4616: authzid NUL authcid NUL passwd; UTF-8 or refused."""
        message = (user if authzid else b"") + b"\0" + user + b"\0" + password
        step = sasl.Plain().start(message)
        try:
            user.decode(), password.decode()
        except UnicodeDecodeError:
            self.assertIsInstance(step, sasl.Refusal)
            return
        assert isinstance(step, sasl.Credentials)
        credentials = IUsernamePassword(step.credentials)
        self.assertEqual((credentials.username, credentials.password), (user, password))

    @fuzz_settings(200)
    @given(_secret, _secret)
    def test_login(self, user: bytes, password: bytes) -> None:
        mechanism = sasl.Login()
        self.assertIsInstance(mechanism.start(None), sasl.Challenge)
        step = mechanism.respond(user)
        try:
            user.decode()
        except UnicodeDecodeError:
            self.assertIsInstance(step, sasl.Refusal)
            return
        self.assertIsInstance(step, sasl.Challenge)
        step = mechanism.respond(password)
        assert isinstance(step, sasl.Credentials)
        credentials = IUsernamePassword(step.credentials)
        self.assertEqual((credentials.username, credentials.password), (user, password))

    @fuzz_settings(300)
    @given(st.lists(st.binary(max_size=60), max_size=5))
    def test_target(self, messages: list[bytes]) -> None:
        targets.sasl_messages(b"\n".join(m.replace(b"\n", b"") for m in messages))


def _pop3_events(pieces: list[bytes], limit: int) -> list[object]:
    framer = LineFramer(limit)
    found: list[object] = []
    for piece in pieces:
        framer.receive(piece)
        while (event := framer.next_event()) is not None:
            found.append(event)
    return found


#: (command line, whether +OK brings a multi-line body).
_POP3_COMMANDS = st.sampled_from(
    [
        (b"NOOP", False),
        (b"STAT", False),
        (b"LIST", True),
        (b"LIST 2", False),
        (b"UIDL", True),
        (b"UIDL 9", False),
        (b"RETR 1", True),
        (b"TOP 2 1", True),
        (b"DELE 3", False),
        (b"RSET", False),
        (b"LAST", False),
        (b"CAPA", True),
        (b"", False),
        (b"x" * 600, False),
    ]
)


def _is_login(line: bytes) -> bool:
    word = line.split(b" ", 1)[0].strip().upper()
    return word in (b"AUTH", b"USER", b"PASS", b"APOP", b"STLS", b"QUIT", b"RETR", b"TOP")


class Pop3Tests(SynchronousTestCase):
    @fuzz_settings(300)
    @given(st.binary(max_size=300), st.lists(st.integers(1, 299), max_size=20), st.integers(1, 40))
    def test_framer_however_split(self, data: bytes, cuts: list[int], limit: int) -> None:
        points = sorted({c for c in cuts if c < len(data)})
        pieces = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
        self.assertEqual(_pop3_events(pieces, limit), _pop3_events([data], limit))

    @fuzz_settings(150)
    @given(
        st.lists(
            _POP3_COMMANDS
            | st.binary(max_size=40)
            .map(lambda b: (b.replace(b"\n", b"").replace(b"\r", b""), False))
            .filter(lambda c: not _is_login(c[0])),
            max_size=15,
        )
    )
    def test_one_answer_per_command(self, commands: list[tuple[bytes, bool]]) -> None:
        """Each line gets one status line (and its body, for a multi-line
        +OK), in order, whatever the commands."""
        server, transport, clock = targets._pop3_server()
        server.dataReceived(b"USER joe\r\nPASS secret\r\n")
        transport.clear()
        server.dataReceived(b"".join(line + b"\r\n" for line, _ in commands))
        clock.advance(0)
        lines = transport.value().split(b"\r\n")
        self.assertEqual(lines.pop(), b"")
        for line, multi in commands:
            status = lines.pop(0)
            self.assertTrue(status.startswith((b"+OK", b"-ERR")), (line, status))
            if multi and status.startswith(b"+OK"):
                while lines.pop(0) != b".":
                    pass
        self.assertEqual(lines, [])
        server.connectionLost(None)

    @fuzz_settings(200)
    @given(st.binary(max_size=12), st.binary(max_size=300))
    def test_target(self, seed: bytes, data: bytes) -> None:
        targets.pop3_session(seed.replace(b"\n", b"") + b"\n" + data)


_field = st.text(
    st.characters(exclude_categories=["Cs", "Cc"], exclude_characters=":"), max_size=12
)
_names = st.text(
    st.characters(exclude_categories=["Cs", "Cc", "Zs", "Zl", "Zp"], exclude_characters=":/"),
    min_size=1,
    max_size=20,
).filter(lambda n: passwdfile._name_problem(n) is None)


@st.composite
def records(draw: Draw) -> UserRecord:
    return UserRecord(
        name=draw(_names),
        password="{PLAIN}" + draw(_field),
        uid=draw(st.none() | st.integers(0, 2**32)),
        gid=draw(st.none() | st.integers(0, 2**32)),
        gecos=draw(_field),
        home=draw(st.none() | _field.filter(bool)),
        shell=draw(_field),
        extra=draw(_field | st.just("a:b=c")),
    )


def _line(record: UserRecord) -> str:
    def number(value: int | None) -> str:
        return "" if value is None else str(value)

    fields = [record.name, record.password, number(record.uid), number(record.gid), record.gecos]
    return ":".join([*fields, record.home or "", record.shell, record.extra])


class UsersFileTests(SynchronousTestCase):
    @fuzz_settings(200)
    @given(st.lists(records(), max_size=6, unique_by=lambda r: r.name), st.data())
    def test_records_read_back(self, users: list[UserRecord], data: st.DataObject) -> None:
        lines: list[str] = []
        for record in users:
            lines.extend(data.draw(st.lists(st.sampled_from(["", "# comment", "  "]), max_size=2)))
            lines.append(_line(record))
        end = data.draw(st.sampled_from(["\n", "\r\n"]))
        _raw, parsed = passwdfile._parse(end.join(lines).encode() + end.encode(), "passwd")
        self.assertEqual([record for _, record in parsed.values()], users)

    @fuzz_settings(300)
    @given(st.binary(max_size=300))
    def test_target(self, data: bytes) -> None:
        targets.users_file(data)


def _fields() -> list[tuple[str, attrs.Attribute[Any]]]:
    return [
        (section, field)
        for section, cls in config_module._SECTIONS.items()
        for field in attrs.fields(cls)
    ]


_toml_text = st.text(st.characters(exclude_categories=["Cs"]), max_size=20)
_toml_values = st.one_of(
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    _toml_text,
    st.lists(_toml_text, max_size=3),
    st.sampled_from(["tcp:1143", "unix:/tmp/x.sock", "never", "always", "1.3", "json", "debug"]),
)


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        # A TOML basic string: quote, backslash and controls escaped.
        escaped = (
            f"\\u{ord(c):04X}" if c in '"\\' or ord(c) < 0x20 or ord(c) == 0x7F else c
            for c in value
        )
        return '"' + "".join(escaped) + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return repr(value)


class ConfigTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)

    @fuzz_settings(400)
    @given(st.sampled_from(_fields()), _toml_values)
    def test_any_value_is_kept_or_refused_by_name(
        self, where: tuple[str, attrs.Attribute[Any]], value: Any
    ) -> None:
        """Any value for any key: read as written, or refused with an error
        that names a key of that section (a DSN check may name the DSN)."""
        section, field = where
        path = os.path.join(self.dir, "mailsrv.toml")
        with open(path, "w") as handle:
            handle.write(f"[{section}]\n{field.name} = {_toml(value)}\n")
        try:
            loaded = load_config(path, check_files=False, require_listeners=False)
        except ConfigError as e:
            self.assertEqual(e.path, path)
            self.assertTrue(e.key.startswith(f"{section}."), e)
            return
        stored = getattr(getattr(loaded, section), field.name)
        made_absolute = {("storage", "maildir"), ("admin", "socket")}
        if field.metadata.get("path") or (section, field.name) in made_absolute:
            assume(False)  # made absolute: checked by tests/test_config.py
        expected = tuple(value) if isinstance(value, list) else value
        if isinstance(stored, tuple) and isinstance(value, str):
            expected = (value,)  # one string stands for a list of one
        if isinstance(stored, float):
            expected = float(value)
        self.assertEqual(stored, expected)

    @fuzz_settings(200)
    @given(st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
    def test_target(self, data: bytes) -> None:
        targets.config(data)
