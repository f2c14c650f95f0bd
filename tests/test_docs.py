"""The examples in the docs run as written.

A block preceded by ``<!-- file: NAME -->`` is written to NAME in a
directory outside the checkout and run the way its page says: tutorials'
tests with pytest, servers as programs that a client then talks to.  The
only changes are the ones each test names: a configuration path or a fixed
port replaced by one the test makes.
"""

from __future__ import annotations

import imaplib
import os
import poplib
import re
import subprocess
import sys
from typing import Any

from twisted.trial import unittest

from mailsrv.auth.passwords import hash_password
from mailsrv.tls import generate_self_signed
from tests.helpers import ROOT, Daemon, clean_env, free_port, twistd_command

_BLOCK = re.compile(r"<!-- file: (\S+) -->\n```python\n(.*?)```", re.S)
TIMEOUT = 15


def examples(page: str) -> dict[str, str]:
    with open(os.path.join(ROOT, "docs", page), encoding="utf-8") as handle:
        return dict(_BLOCK.findall(handle.read()))


class DocsTestCase(unittest.TestCase):
    def write(self, page: str, replace: dict[str, dict[str, str]] | None = None) -> str:
        """Every file block of ``page`` in a new directory (with the given
        replacements, per file); the directory."""
        work = os.path.abspath(str(self.mktemp()))
        os.makedirs(work)
        for name, code in examples(page).items():
            for old, new in (replace or {}).get(name, {}).items():
                self.assertIn(old, code, f"{page}: {name} no longer says {old!r}")
                code = code.replace(old, new)
            with open(os.path.join(work, name), "w", encoding="utf-8") as handle:
                handle.write(code)
        return work

    def run_python(self, work: str, *args: str) -> str:
        result = subprocess.run(
            [sys.executable, *args],
            cwd=work,
            env=clean_env(),
            capture_output=True,
            text=True,
            timeout=300,
        )
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        return result.stdout

    def serve(self, work: str, command: list[str]) -> Daemon:
        """Start a server program; stopped (SIGTERM) at the end of the test."""
        process = subprocess.Popen(
            command,
            cwd=work,
            env=clean_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        daemon = Daemon(process)

        def stop() -> None:
            process.terminate()
            process.wait(TIMEOUT)

        self.addCleanup(stop)
        return daemon


def ports(daemon: Daemon) -> tuple[int, int]:
    """The ports a server example printed: ``IMAP on N POP3 on M``."""
    daemon.wait_for("POP3 on")
    match = re.search(r"IMAP on (\d+) POP3 on (\d+)", daemon.log)
    assert match is not None, daemon.log
    return int(match.group(1)), int(match.group(2))


class TestingClientsTests(DocsTestCase):
    """docs/testing-clients.md: the tutorial's programs and their tests."""

    def test_tutorial(self) -> None:
        for module in ("imapclient", "aioimaplib", "pytest"):
            try:
                __import__(module)
            except ImportError as missing:
                if os.environ.get("CI") == "true":
                    raise
                raise unittest.SkipTest(
                    f"{module} is not installed (pip install -e '.[test]')"
                ) from missing
        work = self.write("testing-clients.md")
        self.assertEqual(
            sorted(n for n in os.listdir(work) if n.startswith("test_")),
            [
                "test_archiver.py",
                "test_trial_example.py",
                "test_unread.py",
                "test_unread_failures.py",
                "test_waiter.py",
            ],
        )
        output = self.run_python(
            work, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--ignore=test_trial_example.py"
        )
        self.assertRegex(output, r"\b7 passed\b")
        self.assertEqual(self.run_python(work, "plain_example.py"), "ok\n")
        output = self.run_python(work, "-m", "twisted.trial", "test_trial_example")
        self.assertIn("PASSED (successes=1)", output)


class EmbeddingTests(DocsTestCase):
    """docs/embedding.md."""

    def test_server_program(self) -> None:
        work = self.write("embedding.md")
        imap_port, pop3_port = ports(self.serve(work, [sys.executable, "serve.py"]))
        client = imaplib.IMAP4("127.0.0.1", imap_port, timeout=TIMEOUT)
        client.login("alice", "secret")
        client.select()
        _, fetched = client.fetch("1", "(BODY[HEADER.FIELDS (SUBJECT)])")
        data: Any = fetched
        client.logout()
        self.assertEqual(data[0][1], b"Subject: hi\r\n\r\n")
        pop = poplib.POP3("127.0.0.1", pop3_port, timeout=TIMEOUT)
        pop.user("alice")
        pop.pass_("secret")
        self.assertEqual(pop.stat()[0], 1)
        pop.quit()

    def test_tac_file(self) -> None:
        config = os.path.abspath(os.path.join(self.mktemp(), "mailsrv.toml"))
        directory = os.path.dirname(config)
        os.makedirs(directory)
        port = free_port()
        with open(os.path.join(directory, "passwd"), "w") as handle:
            handle.write(f"alice:{hash_password('secret', 'PLAIN')}\n")
        with open(config, "w") as handle:
            handle.write(
                f'[imap]\nlisten = ["tcp:{port}:interface=127.0.0.1"]\n'
                f"[pop3]\nlisten = []\n"
                f"[users]\npasswd_file = '{directory}/passwd'\n"
                f"[storage]\nmaildir = '{directory}/mail/{{user}}/Maildir'\n"
            )
        work = self.write("embedding.md", {"mail.tac": {"/etc/mailsrv/mailsrv.toml": config}})
        daemon = self.serve(work, [*twistd_command(), "-n", "--pidfile=", "-y", "mail.tac"])
        daemon.wait_for("listening on")
        client = imaplib.IMAP4("127.0.0.1", port, timeout=TIMEOUT)
        self.assertEqual(client.login("alice", "secret")[0], "OK")
        client.logout()

    def test_policy_and_challengers(self) -> None:
        work = self.write("embedding.md")
        generate_self_signed(
            os.path.join(work, "cert.pem"), os.path.join(work, "key.pem"), "mail.example.org"
        )
        self.run_python(work, "policy_example.py")
        self.run_python(work, "challengers_example.py")


class TwistedMailTests(DocsTestCase):
    """docs/twisted-mail.md: the realm as it is, served by mailsrv."""

    def test_after(self) -> None:
        # Fixed ports in the page; free ones here.
        ports_0 = {"listenTCP(1143,": "listenTCP(0,", "listenTCP(1110,": "listenTCP(0,"}
        work = self.write("twisted-mail.md", {"serve_twisted_realm.py": ports_0})
        daemon = self.serve(work, [sys.executable, "serve_twisted_realm.py"])
        imap_port, pop3_port = ports(daemon)
        client = imaplib.IMAP4("127.0.0.1", imap_port, timeout=TIMEOUT)
        client.login("alice", "secret")
        client.select()
        results: dict[str, Any] = {
            "fetch": client.fetch("1", "(FLAGS BODY[])"),
            "search": client.search(None, "SUBJECT", "hi"),
            "store": client.store("1", "+FLAGS", "(\\Deleted)"),
            "expunge": client.expunge(),
        }
        client.logout()
        pop = poplib.POP3("127.0.0.1", pop3_port, timeout=TIMEOUT)
        pop.user("alice")
        pop.pass_("secret")
        results["retr"] = pop.retr(1)
        pop.quit()
        self.assertEqual(results["fetch"][1][0][1], b"Subject: hi\r\n\r\nHello\r\n")
        self.assertEqual(results["search"], ("OK", [b"1"]))
        self.assertEqual(results["expunge"], ("OK", [b"1"]))
        self.assertEqual(results["retr"][1], [b"Subject: by POP3", b"", b"Hello"])
        self.assertNotIn("Traceback", daemon.log)
