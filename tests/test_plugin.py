"""The twistd plugin: found after installation, options override the file."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess

from twisted.application.service import IServiceMaker
from twisted.plugin import getPlugins
from twisted.trial import unittest

from tests.helpers import ROOT, clean_env, twistd_command


class DiscoveryTests(unittest.TestCase):
    def test_get_plugins_finds_mailsrv(self) -> None:
        import twisted.plugins

        names = [p.tapname for p in getPlugins(IServiceMaker, twisted.plugins)]
        self.assertIn("mailsrv", names)

    def test_installed_twistd_lists_mailsrv(self) -> None:
        """Run from an unrelated directory, so only the installed plugin can
        be found (the README installs with a plain ``pip install .``)."""
        cwd = self.mktemp()
        os.makedirs(cwd)

        def twistd(*args: str) -> str:
            result = subprocess.run(
                [*twistd_command(), *args],
                cwd=cwd,
                env=clean_env(),
                capture_output=True,
                text=True,
                timeout=120,
            )
            self.assertEqual(result.returncode, 0, result.stderr)
            return result.stdout

        self.assertRegex(twistd("--help"), r"\n\s+mailsrv\s+IMAP4rev1 and POP3")
        help_text = twistd("-n", "mailsrv", "--help")
        for option in ("--config", "--imap", "--pop3", "--imaps", "--pop3s", "--maildir"):
            self.assertIn(option, help_text)
        for option in ("--passwd", "--tls-cert", "--tls-key"):
            self.assertIn(option, help_text)

    def test_wheel_ships_no_twisted_init(self) -> None:
        """An __init__.py in twisted/ or twisted/plugins/ would shadow Twisted."""
        self.assertFalse(os.path.exists(os.path.join(ROOT, "twisted", "__init__.py")))
        self.assertFalse(os.path.exists(os.path.join(ROOT, "twisted", "plugins", "__init__.py")))

    def test_installed_files(self) -> None:
        """What ``pip install .`` put in site-packages: the plugin module,
        and nothing of Twisted's own package."""
        try:
            files = importlib.metadata.files("mailsrv")
        except importlib.metadata.PackageNotFoundError:
            raise unittest.SkipTest("mailsrv is not installed in this environment") from None
        if files is None or not any(str(f).startswith("mailsrv/") for f in files):
            raise unittest.SkipTest("an editable install lists no package files")
        installed = {str(f) for f in files if str(f).startswith("twisted/")}
        self.assertIn("twisted/plugins/mailsrv_plugin.py", installed)
        self.assertFalse({"twisted/__init__.py", "twisted/plugins/__init__.py"} & installed)


class OptionsTests(unittest.TestCase):
    def setUp(self) -> None:
        from twisted.plugins.mailsrv_plugin import Options

        self.options = Options()
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.passwd = os.path.join(self.dir, "passwd")
        open(self.passwd, "w").close()

    def test_repeatable_listeners_and_overrides(self) -> None:
        self.options.parseOptions(
            [
                "--imap", "tcp:1143:interface=127.0.0.1",
                "--imap", "tcp:2143:interface=127.0.0.1",
                "--pop3", "tcp:1110:interface=127.0.0.1",
                "--passwd", self.passwd,
                "--maildir", "/srv/{user}/Maildir",
            ]
        )  # fmt: skip
        config = self.options.config
        self.assertEqual(
            config.imap.listen, ("tcp:1143:interface=127.0.0.1", "tcp:2143:interface=127.0.0.1")
        )
        self.assertEqual(config.pop3.listen, ("tcp:1110:interface=127.0.0.1",))
        self.assertEqual(config.users.passwd_file, self.passwd)
        self.assertEqual(config.storage.maildir, "/srv/{user}/Maildir")

    def test_options_override_file(self) -> None:
        path = os.path.join(self.dir, "c.toml")
        with open(path, "w") as f:
            f.write(
                '[imap]\nlisten = ["tcp:1143"]\n[pop3]\nlisten = ["tcp:1110"]\n'
                '[users]\npasswd_file = "/nonexistent"\n'
            )
        self.options.parseOptions(["--config", path, "--imap", "tcp:2143", "--passwd", self.passwd])
        config = self.options.config
        self.assertEqual(config.imap.listen, ("tcp:2143",))
        self.assertEqual(config.pop3.listen, ("tcp:1110",))
        self.assertEqual(config.users.passwd_file, self.passwd)

    def test_bad_config_exits_with_one_line(self) -> None:
        path = os.path.join(self.dir, "c.toml")
        with open(path, "w") as f:
            f.write('[imap]\nlisten = ["tcp:1143"]\ncolour = "blue"\n')
        e = self.assertRaises(SystemExit, self.options.parseOptions, ["--config", path])
        self.assertEqual(
            str(e.code),
            f"mailsrv: configuration error: {path}: imap.colour: unknown key "
            "(known keys of [imap]: listen, listen_tls)",
        )
