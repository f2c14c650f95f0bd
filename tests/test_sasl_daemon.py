"""The new SASL mechanisms as ``twistd -n mailsrv`` serves them from its
configuration: ``[auth.oauth]`` read, checked and wired to OAUTHBEARER and
XOAUTH2; ``[auth] salt_secret`` making an unknown user's SCRAM salt the
same on every node; ``mailsrv check-config`` naming a bad key file."""

from __future__ import annotations

import imaplib
import os
import subprocess

from twisted.trial import unittest

from tests.helpers import Daemon, free_port, mailsrv_command, source_env
from tests.oauth_helpers import Keys, claims, sign


class DaemonTests(unittest.TestCase):
    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.key = Keys().ec
        with open(os.path.join(self.dir, "idp.pem"), "wb") as f:
            f.write(Keys.pem(self.key))
        with open(os.path.join(self.dir, "passwd"), "w") as f:
            f.write("alice:{PLAIN}x\n")

    def write_config(self, name: str, port: int, extra: str = "") -> str:
        path = os.path.join(self.dir, name)
        with open(path, "w") as f:
            f.write(
                f"""
[server]
hostname = "localhost"
[imap]
listen = ["tcp:{port}:interface=127.0.0.1"]
[users]
passwd_file = "passwd"
[auth]
failure_delay = 0.0
salt_secret = "shared by the nodes"
[auth.oauth]
validator = "jwt"
jwt_public_key = "idp.pem"
audience = "imap"
mechanisms = ["OAUTHBEARER"]
[storage]
backend = "memory"
{extra}"""
            )
        return path

    def start(self, config: str) -> Daemon:
        daemon = Daemon.start(["--config", config], cwd=self.dir)
        self.addCleanup(daemon.stop)
        daemon.wait_for("listening on")
        return daemon

    def test_oauthbearer_from_the_configuration(self) -> None:
        port = free_port()
        self.start(self.write_config("mailsrv.toml", port))
        session = imaplib.IMAP4("127.0.0.1", port, timeout=30)
        self.addCleanup(session.shutdown)
        # Loopback may carry plaintext (auth.plaintext = "loopback"), so tokens too.
        self.assertIn("AUTH=OAUTHBEARER", session.capabilities)
        self.assertNotIn("AUTH=XOAUTH2", session.capabilities)
        token = sign(claims("alice", aud="imap"), "ES256", self.key)
        message = f"n,a=alice,\x01auth=Bearer {token}\x01\x01".encode()
        typ, _ = session.authenticate("OAUTHBEARER", lambda challenge: message)
        self.assertEqual(typ, "OK")

    def test_unknown_users_salt_is_the_same_on_every_node(self) -> None:
        salts = []
        for node in ("a", "b"):
            port = free_port()
            self.start(self.write_config(f"{node}.toml", port))
            session = imaplib.IMAP4("127.0.0.1", port, timeout=30)
            self.addCleanup(session.shutdown)
            seen: list[bytes] = []

            def answer(challenge: bytes, seen: list[bytes] = seen) -> bytes | None:
                seen.append(challenge)
                return b"n,,n=nobody,r=abcdefgh" if len(seen) == 1 else None

            with self.assertRaises(imaplib.IMAP4.error):
                session.authenticate("SCRAM-SHA-256", answer)
            salts.append(seen[1].split(b",", 1)[1])
        self.assertEqual(salts[0], salts[1])

    def check_config(self, config: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*mailsrv_command(), "check-config", "--config", config],
            capture_output=True,
            text=True,
            cwd=self.dir,
            env=source_env(),
            timeout=60,
        )

    def test_check_config_says_what_validates_tokens(self) -> None:
        result = self.check_config(self.write_config("mailsrv.toml", free_port()))
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("  OAuth tokens: jwt (OAUTHBEARER)\n", result.stdout)

    def test_check_config_names_a_bad_key(self) -> None:
        with open(os.path.join(self.dir, "idp.pem"), "w") as f:
            f.write("-----BEGIN PUBLIC KEY-----\nnot really\n-----END PUBLIC KEY-----\n")
        config = self.write_config("mailsrv.toml", free_port())
        result = self.check_config(config)
        self.assertNotEqual(result.returncode, 0)
        self.assertIn(
            f"{config}: auth.oauth.jwt_public_key: {self.dir}/idp.pem: not a PEM public key",
            result.stderr,
        )
