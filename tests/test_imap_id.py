"""ID (RFC 2971): the server's answer from the configuration, and the
bounds RFC 2971 3.3 sets on what a client sends."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer

from mailsrv import __version__
from mailsrv.config import load_config
from mailsrv.errors import ConfigError
from mailsrv.policy import SessionPolicy
from tests.imap_helpers import ServerTestBase
from tests.test_config import ConfigCase


class IdTests(ServerTestBase):
    @defer.inlineCallbacks
    def test_rfc2971_example(self) -> Any:
        """RFC 2971 3.1's example, in any state: the server's name and
        version, whatever the client says of itself."""
        client = yield self.connect()
        response = yield client.command(
            "a023", 'ID ("name" "sodr" "version" "19.34" "vendor" "Pink Floyd Music Limited")'
        )
        self.assertEqual(
            response,
            b'* ID ("name" "mailsrv" "version" "%s")\r\na023 OK ID completed\r\n'
            % __version__.encode(),
        )
        yield client.command("L", "LOGIN joe secret")
        response = yield client.command("b", "ID NIL")
        self.assertTrue(response.endswith(b"\r\nb OK ID completed\r\n"), response)

    @defer.inlineCallbacks
    def test_bounds(self) -> Any:
        """RFC 2971 3.3: at most 30 pairs, names of at most 30 octets,
        values of at most 1024, no name twice; beyond, a BAD that says
        which, and the session goes on."""
        client = yield self.connect()
        pairs = " ".join(f'"f{n}" "v"' for n in range(30))
        response = yield client.command("a", f"ID ({pairs})")
        self.assertTrue(response.endswith(b"a OK ID completed\r\n"), response)
        pairs = " ".join(f'"f{n}" "v"' for n in range(31))
        response = yield client.command("b", f"ID ({pairs})")
        self.assertEqual(response, b"b BAD too many ID fields (30 at most, RFC 2971 3.3)\r\n")
        response = yield client.command("c", f'ID ("{"n" * 31}" "v")')
        self.assertEqual(response, b"c BAD ID field name longer than 30 octets (RFC 2971 3.3)\r\n")
        response = yield client.command("d", f'ID ("name" {{1025+}}\r\n{"v" * 1025})')
        self.assertEqual(
            response, b"d BAD ID value of 'name' longer than 1024 octets (RFC 2971 3.3)\r\n"
        )
        response = yield client.command("e", 'ID ("name" "a" "NAME" "b")')
        self.assertEqual(response, b"e BAD ID field 'NAME' given twice (RFC 2971 3.3)\r\n")
        response = yield client.command("f", f'ID ("{"n" * 30}" {{1024+}}\r\n{"v" * 1024})')
        self.assertTrue(response.endswith(b"f OK ID completed\r\n"), response)


class ConfiguredIdTests(ServerTestBase):
    policy = SessionPolicy(failure_delay=0.0, id_fields=(("name", "Example Mail"),))

    @defer.inlineCallbacks
    def test_configured_name_without_version(self) -> Any:
        client = yield self.connect()
        response = yield client.command("a", "ID NIL")
        self.assertEqual(response, b'* ID ("name" "Example Mail")\r\na OK ID completed\r\n')


class IdConfigTests(ConfigCase):
    def load(self, text: str) -> Any:
        listen = '[imap]\nlisten = ["tcp:1143"]\n'
        return load_config(self.write('[server]\nhostname = "h"\n' + text + listen))

    def test_keys_make_the_answer(self) -> None:
        policy = SessionPolicy.from_config(self.load(""))
        self.assertEqual(policy.id_fields, (("name", "mailsrv"), ("version", __version__)))
        config = self.load('id_name = "Example Mail"\nid_version = false\n')
        policy = SessionPolicy.from_config(config)
        self.assertEqual(policy.id_fields, (("name", "Example Mail"),))

    def test_bad_name_names_the_key(self) -> None:
        for value in ('""', '"a\\nb"', '"' + "x" * 1025 + '"'):
            error = self.assertRaises(ConfigError, self.load, f"id_name = {value}\n")
            self.assertEqual(error.key, "server.id_name")
            self.assertIn("printable text", error.reason)
