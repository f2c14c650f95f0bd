"""Configuration loading: every error names the file, the key and the reason."""

from __future__ import annotations

import os

from twisted.trial import unittest

from mailsrv.config import COMMAND_LINE, load_config
from mailsrv.errors import ConfigError
from mailsrv.policy import SessionPolicy

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class ConfigCase(unittest.TestCase):
    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.passwd = os.path.join(self.dir, "passwd")
        with open(self.passwd, "w") as f:
            f.write("alice:{PLAIN}secret\n")

    def write(self, text: str, name: str = "mailsrv.toml") -> str:
        path = os.path.join(self.dir, name)
        with open(path, "w") as f:
            f.write(f'[users]\npasswd_file = "{self.passwd}"\n' + text)
        return path

    def error(self, text: str, overrides: dict[str, object] | None = None) -> ConfigError:
        path = self.write(text)
        error: ConfigError = self.assertRaises(ConfigError, load_config, path, overrides)
        return error


class ConfigTests(ConfigCase):
    def test_valid_file(self) -> None:
        path = self.write(
            '[imap]\nlisten = ["tcp:1143:interface=127.0.0.1"]\n'
            '[pop3]\nlisten = ["tcp:1110"]\n'
            '[storage]\nmaildir = "/srv/mail/{user}"\n'
            "[limits]\nmax_connections_per_ip = 10\n"
            "[timeouts]\npop3 = 900\n"
        )
        config = load_config(path)
        self.assertEqual(config.path, path)
        self.assertEqual(config.imap.listen, ("tcp:1143:interface=127.0.0.1",))
        self.assertEqual(config.pop3.listen, ("tcp:1110",))
        self.assertEqual(config.storage.maildir, "/srv/mail/{user}")
        self.assertEqual(config.limits.max_connections_per_ip, 10)
        self.assertEqual(config.timeouts.pop3, 900.0)
        self.assertEqual(config.users.passwd_file, self.passwd)
        self.assertEqual(
            [(lst.protocol, lst.implicit_tls, lst.origin) for lst in config.listeners],
            [("imap", False, "imap.listen[0]"), ("pop3", False, "pop3.listen[0]")],
        )
        # Defaults are the safe ones.
        self.assertEqual(config.auth.plaintext, "loopback")
        self.assertEqual((config.tls.profile, config.tls.minimum_version), ("intermediate", "1.2"))
        self.assertGreaterEqual(config.timeouts.imap_authenticated, 1800)

    def test_missing_file(self) -> None:
        missing = os.path.join(self.dir, "nope.toml")
        e = self.assertRaises(ConfigError, load_config, missing)
        self.assertEqual(str(e), f"{missing}: file not found")

    def test_not_toml(self) -> None:
        path = self.write("[imap\n")
        e = self.assertRaises(ConfigError, load_config, path)
        self.assertIn(path, str(e))
        self.assertIn("not valid TOML", str(e))

    def test_not_utf8(self) -> None:
        # A Latin-1 editor's file: tomllib raises UnicodeDecodeError, which
        # used to escape as a traceback (found by fuzz/targets.py config).
        path = os.path.join(self.dir, "latin1.toml")
        with open(path, "wb") as f:
            f.write(b'[server]\nhostname = "h\xf4te"\n')
        e = self.assertRaises(ConfigError, load_config, path)
        self.assertEqual(str(e), f"{path}: not valid TOML: not UTF-8 (octet 0xf4 at 22)")

    def test_unknown_key(self) -> None:
        e = self.error('[imap]\nlisten = ["tcp:1143"]\nlsten_tls = []\n')
        self.assertEqual(e.key, "imap.lsten_tls")
        self.assertIn("unknown key", e.reason)
        self.assertTrue(str(e).startswith(self.dir))

    def test_unknown_section(self) -> None:
        e = self.error('[imap]\nlisten = ["tcp:1143"]\n[smtp]\nport = 25\n')
        self.assertEqual(e.key, "smtp")
        self.assertIn("unknown section", e.reason)

    def test_wrong_type(self) -> None:
        e = self.error('[imap]\nlisten = ["tcp:1143"]\n[limits]\nmax_line_length = "big"\n')
        self.assertEqual(e.key, "limits.max_line_length")
        self.assertIn("expected an integer", e.reason)

    def test_boolean_is_not_an_integer(self) -> None:
        e = self.error('[imap]\nlisten = ["tcp:1143"]\n[auth]\nmax_failures = true\n')
        self.assertEqual(e.key, "auth.max_failures")

    def test_fulltext_switch(self) -> None:
        """[storage] fulltext: on by default, a boolean, off when asked."""
        self.assertTrue(load_config(self.write('[imap]\nlisten = ["tcp:1143"]\n')).storage.fulltext)
        config = load_config(
            self.write('[imap]\nlisten = ["tcp:1143"]\n[storage]\nfulltext = false\n')
        )
        self.assertFalse(config.storage.fulltext)
        e = self.error('[imap]\nlisten = ["tcp:1143"]\n[storage]\nfulltext = "yes"\n')
        self.assertEqual(e.key, "storage.fulltext")
        self.assertIn("expected true or false", e.reason)

    def test_list_of_strings(self) -> None:
        e = self.error("[imap]\nlisten = [1143]\n")
        self.assertEqual(e.key, "imap.listen")
        self.assertIn("a list of strings", e.reason)

    def test_out_of_range(self) -> None:
        e = self.error('[imap]\nlisten = ["tcp:1143"]\n[timeouts]\nimap_authenticated = 60\n')
        self.assertEqual(e.key, "timeouts.imap_authenticated")
        self.assertIn("at least 1800", e.reason)

    def test_pop3_autologout_at_least_ten_minutes(self) -> None:
        """RFC 1939 3: the autologout timer MUST be at least 10 minutes."""
        e = self.error('[imap]\nlisten = ["tcp:1143"]\n[timeouts]\npop3 = 599\n')
        self.assertEqual(e.key, "timeouts.pop3")
        self.assertIn("at least 600", e.reason)
        self.assertEqual(
            load_config(self.write('[imap]\nlisten = ["tcp:1143"]\n')).timeouts.pop3, 600
        )
        self.assertEqual(SessionPolicy().pop3_timeout, 600)

    def test_bad_choice(self) -> None:
        e = self.error('[imap]\nlisten = ["tcp:1143"]\n[tls]\nmin_version = "1.0"\n')
        self.assertEqual(e.key, "tls.min_version")

    def test_cipher_list_is_checked_at_load_time(self) -> None:
        listen = '[imap]\nlisten = ["tcp:1143"]\n'
        for ciphers, reason in (
            ("NO-SUCH-SUITE", "selects no TLS 1.2 cipher suite"),
            ("TLS_AES_128_GCM_SHA256", "selects no TLS 1.2 cipher suite"),
            ("ALL", "without authentication or encryption"),
            ("ECDHE+AESGCM:NULL-SHA", "without authentication or encryption"),
            ("", "not an OpenSSL cipher string"),
        ):
            e = self.error(f'{listen}[tls]\nciphers = "{ciphers}"\n')
            self.assertEqual(
                (e.path, e.key), (os.path.join(self.dir, "mailsrv.toml"), "tls.ciphers")
            )
            self.assertIn(reason, e.reason, ciphers)
        config = load_config(self.write(f'{listen}[tls]\nciphers = "ECDHE+AESGCM:ECDHE+AES"\n'))
        self.assertEqual(config.tls.cipher_list, "ECDHE+AESGCM:ECDHE+AES")
        self.assertEqual(
            load_config(self.write(listen)).tls.cipher_list, "ECDHE+AESGCM:ECDHE+CHACHA20"
        )

    def test_tls_profiles(self) -> None:
        listen = '[imap]\nlisten = ["tcp:1143"]\n'
        modern = load_config(self.write(f'{listen}[tls]\nprofile = "modern"\n')).tls
        self.assertEqual((modern.minimum_version, modern.cipher_list), ("1.3", None))
        raised = load_config(self.write(f'{listen}[tls]\nmin_version = "1.3"\n')).tls
        self.assertEqual((raised.minimum_version, raised.cipher_list), ("1.3", None))
        e = self.error(f'{listen}[tls]\nprofile = "modern"\nmin_version = "1.2"\n')
        self.assertEqual(e.key, "tls.min_version")
        self.assertIn("TLS 1.3 only", e.reason)
        e = self.error(f'{listen}[tls]\nprofile = "modern"\nciphers = "ECDHE+AESGCM"\n')
        self.assertEqual(e.key, "tls.ciphers")
        self.assertEqual(self.error(f'{listen}[tls]\nprofile = "old"\n').key, "tls.profile")

    def test_sni_certificates(self) -> None:
        listen = '[imap]\nlisten = ["tcp:1143"]\n[tls]\ncertificate = "c.pem"\nkey = "k.pem"\n'
        path = self.write(
            listen + '[[tls.sni]]\ncertificate = "a.pem"\nkey = "~/a.key"\n'
            '[[tls.sni]]\ncertificate = "/b.pem"\nkey = "/b.key"\n'
        )
        sni = load_config(path, check_files=False).tls.sni
        self.assertEqual(
            [(p.certificate, p.key) for p in sni],
            [
                (os.path.abspath("a.pem"), os.path.expanduser("~/a.key")),
                ("/b.pem", "/b.key"),
            ],
        )
        for extra, key, reason in (
            ('[[tls.sni]]\ncertificate = "a.pem"\n', "tls.sni[0].key", "required"),
            (
                '[[tls.sni]]\ncertificate = "a"\nkey = "b"\nnames = []\n',
                "tls.sni[0].names",
                "unknown key",
            ),
            ('sni = "a.pem"\n', "tls.sni", "expected tables"),
        ):
            e = self.assertRaises(
                ConfigError, load_config, self.write(listen + extra), check_files=False
            )
            self.assertEqual(e.key, key)
            self.assertIn(reason, e.reason)
        e = self.error(listen + '[[tls.sni]]\ncertificate = "a.pem"\nkey = "b.pem"\n')
        self.assertEqual(e.key, "tls.certificate")  # files are checked, the default's first
        e = self.error('[imap]\nlisten = ["tcp:1143"]\n[[tls.sni]]\ncertificate = "a"\nkey = "b"\n')
        self.assertEqual(e.key, "tls.sni")
        self.assertIn("needs tls.certificate", e.reason)

    def test_bad_endpoint(self) -> None:
        e = self.error('[imap]\nlisten = ["tcp:1143", "carrier-pigeon:7"]\n')
        self.assertEqual(e.key, "imap.listen[1]")
        self.assertIn("carrier-pigeon:7", e.reason)

    def test_port_clash(self) -> None:
        e = self.error(
            '[imap]\nlisten = ["tcp:1143"]\n[pop3]\nlisten = ["tcp:1143:interface=127.0.0.1"]\n'
        )
        self.assertEqual(e.key, "pop3.listen[0]")
        # Both sides of the clash, each with its own endpoint string.
        self.assertEqual(
            e.reason,
            "'tcp:1143:interface=127.0.0.1': port 1143 is also used by imap.listen[0] ('tcp:1143')",
        )

    def test_same_port_on_different_interfaces(self) -> None:
        path = self.write(
            '[imap]\nlisten = ["tcp:1143:interface=127.0.0.1", "tcp:1143:interface=127.0.0.2"]\n'
        )
        self.assertEqual(len(load_config(path).listeners), 2)

    def test_systemd_endpoints_checked_without_inherited_sockets(self) -> None:
        path = self.write(
            '[imap]\nlisten = ["systemd:domain=INET:index=0"]\n'
            '[pop3]\nlisten = ["systemd:domain=INET6:name=pop3"]\n'
        )
        self.assertEqual(len(load_config(path).listeners), 2)
        for bad, reason in (
            ("systemd:domain=INET", "exactly one of index=N or name=NAME"),
            ("systemd:domain=INET:index=0:name=x", "exactly one of index=N or name=NAME"),
            ("systemd:domain=IPX:index=0", "domain must be one of"),
            ("systemd:domain=INET:index=first", "index must be a number"),
            ("systemd:domain=INET:index=0:backlog=5", "unknown parameter 'backlog'"),
            ("systemd:INET:0", "expected systemd:domain=INET:index=N"),
        ):
            e = self.error(f'[imap]\nlisten = ["{bad}"]\n')
            self.assertEqual(e.key, "imap.listen[0]")
            self.assertIn(reason, e.reason)

    def test_unix_socket_clash(self) -> None:
        e = self.error(
            '[imap]\nlisten = ["unix:/run/m.sock"]\n[pop3]\nlisten = ["unix:/run/m.sock"]\n'
        )
        self.assertEqual(e.key, "pop3.listen[0]")
        self.assertIn("socket /run/m.sock is also used by imap.listen[0]", e.reason)

    def test_port_zero_never_clashes(self) -> None:
        path = self.write('[imap]\nlisten = ["tcp:0"]\n[pop3]\nlisten = ["tcp:0"]\n')
        self.assertEqual(len(load_config(path).listeners), 2)

    def test_no_listeners(self) -> None:
        e = self.error("")
        self.assertIn("no listeners", e.reason)

    def test_implicit_tls_needs_certificate(self) -> None:
        e = self.error('[imap]\nlisten_tls = ["tcp:1993"]\n')
        self.assertEqual(e.key, "imap.listen_tls[0]")
        self.assertIn("tls.certificate", e.reason)

    def test_implicit_tls_takes_plain_endpoints(self) -> None:
        e = self.error('[imap]\nlisten_tls = ["ssl:1993"]\n[tls]\ncertificate = "c"\nkey = "k"\n')
        self.assertEqual(e.key, "imap.listen_tls[0]")

    def test_missing_certificate_file(self) -> None:
        e = self.error('[imap]\nlisten = ["tcp:1143"]\n[tls]\ncertificate = "c.pem"\nkey = "k"\n')
        self.assertEqual(e.key, "tls.certificate")
        self.assertIn("file not found", e.reason)

    def test_certificate_without_key(self) -> None:
        e = self.error('[imap]\nlisten = ["tcp:1143"]\n[tls]\ncertificate = "c.pem"\n')
        self.assertEqual(e.key, "tls.key")

    def test_missing_users_file(self) -> None:
        path = os.path.join(self.dir, "x.toml")
        with open(path, "w") as f:
            f.write('[imap]\nlisten = ["tcp:1143"]\n[users]\npasswd_file = "/nonexistent/pw"\n')
        e = self.assertRaises(ConfigError, load_config, path)
        self.assertEqual(e.key, "users.passwd_file")
        self.assertIn("/nonexistent/pw", e.reason)

    def test_template_needs_user_or_home(self) -> None:
        e = self.error('[imap]\nlisten = ["tcp:1143"]\n[storage]\nmaildir = "/var/mail"\n')
        self.assertEqual(e.key, "storage.maildir")

    def test_template_with_unknown_field(self) -> None:
        e = self.error(
            '[imap]\nlisten = ["tcp:1143"]\n[storage]\nmaildir = "/var/{domain}/{user}"\n'
        )
        self.assertEqual(e.key, "storage.maildir")

    def test_relative_paths_are_made_absolute(self) -> None:
        cwd = os.getcwd()
        os.chdir(self.dir)
        self.addCleanup(os.chdir, cwd)
        config = load_config(
            None, {"imap": ["tcp:1143"], "passwd": "passwd", "maildir": "./mail/{user}"}
        )
        self.assertEqual(config.users.passwd_file, self.passwd)
        self.assertEqual(config.storage.maildir, os.path.join(self.dir, "mail", "{user}"))
        home = load_config(None, {"imap": ["tcp:1"], "passwd": "passwd", "maildir": "{home}/M"})
        self.assertEqual(home.storage.maildir, "{home}/M")


class LMTPAndLoggingConfigTests(ConfigCase):
    """The [lmtp] section and [logging] format."""

    def test_lmtp_listener(self) -> None:
        config = load_config(
            self.write(
                '[lmtp]\nlisten = ["unix:/run/mailsrv/lmtp", "tcp:24:interface=127.0.0.1"]\n'
                'socket_mode = 0o600\nsocket_group = "root"\nrecipient_delimiter = "-"\n'
                "[timeouts]\nlmtp = 60\n[logging]\nformat = 'json'\n"
            )
        )
        self.assertEqual(
            [(lst.protocol, lst.implicit_tls, lst.origin) for lst in config.listeners],
            [("lmtp", False, "lmtp.listen[0]"), ("lmtp", False, "lmtp.listen[1]")],
        )
        self.assertEqual(config.lmtp.socket_mode, 0o600)
        self.assertEqual(config.logging.format, "json")
        policy = SessionPolicy.from_config(config)
        self.assertEqual(policy.recipient_delimiter, "-")
        self.assertEqual(policy.lmtp_timeout, 60.0)

    def test_lmtp_errors_name_the_key(self) -> None:
        listen = '[lmtp]\nlisten = ["tcp:2424"]\n'
        for text, key, reason in [
            ("socket_mode = 660\n", "lmtp.socket_mode", "write it in octal"),
            ('socket_group = "no-such-group-here"\n', "lmtp.socket_group", "no such group"),
            ('socket_owner = "no-such-user-here"\n', "lmtp.socket_owner", "no such user"),
            ('recipient_delimiter = "++"\n', "lmtp.recipient_delimiter", "one character"),
            ("max_recipients = 0\n", "lmtp.max_recipients", "at least 1"),
            ("bogus = 1\n", "lmtp.bogus", "unknown key"),
        ]:
            error = self.error(listen + text)
            self.assertEqual(error.key, key, text)
            self.assertIn(reason, error.reason)
        error = self.error(listen + '[logging]\nformat = "xml"\n')
        self.assertEqual(error.key, "logging.format")
        self.assertIn("'text', 'json'", error.reason)


class OverrideTests(unittest.TestCase):
    """Command-line options override file keys and their errors name the option."""

    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.passwd = os.path.join(self.dir, "passwd")
        open(self.passwd, "w").close()
        self.path = os.path.join(self.dir, "c.toml")
        with open(self.path, "w") as f:
            f.write(
                '[imap]\nlisten = ["tcp:1143"]\n[pop3]\nlisten = ["tcp:1110"]\n'
                f'[users]\npasswd_file = "{self.passwd}"\n'
            )

    def test_listener_option_replaces_that_protocol_only(self) -> None:
        config = load_config(self.path, {"imap": ["tcp:2143", "tcp:3143"]})
        self.assertEqual(config.imap.listen, ("tcp:2143", "tcp:3143"))
        self.assertEqual(config.pop3.listen, ("tcp:1110",))
        origins = [lst.origin for lst in config.listeners]
        self.assertEqual(origins, ["--imap[0]", "--imap[1]", "pop3.listen[0]"])

    def test_empty_options_are_ignored(self) -> None:
        config = load_config(self.path, {"imap": [], "maildir": None})
        self.assertEqual(config.imap.listen, ("tcp:1143",))

    def test_bad_option_names_the_option(self) -> None:
        e = self.assertRaises(ConfigError, load_config, self.path, {"pop3": ["nonsense:1"]})
        self.assertEqual(e.path, COMMAND_LINE)
        self.assertEqual(e.key, "--pop3[0]")

    def test_clash_between_option_and_file(self) -> None:
        e = self.assertRaises(ConfigError, load_config, self.path, {"imaps": ["tcp:1110"]})
        self.assertEqual(e.key, "--imaps[0]")

    def test_missing_passwd_option(self) -> None:
        e = self.assertRaises(ConfigError, load_config, self.path, {"passwd": "/nonexistent"})
        self.assertEqual((e.path, e.key), (COMMAND_LINE, "--passwd"))

    def test_tls_options(self) -> None:
        e = self.assertRaises(
            ConfigError, load_config, self.path, {"tls_cert": "/nonexistent/c", "tls_key": "k"}
        )
        self.assertEqual(e.key, "--tls-cert")

    def test_certificate_option_without_key_option(self) -> None:
        cert = os.path.join(self.dir, "cert.pem")
        open(cert, "w").close()
        e = self.assertRaises(ConfigError, load_config, self.path, {"tls_cert": cert})
        self.assertEqual((e.path, e.key), (COMMAND_LINE, "--tls-key"))
        self.assertEqual(e.reason, "--tls-cert and --tls-key must be given together")

    def test_unusable_key_option_names_the_option(self) -> None:
        """The files are loaded when the daemon is built; the error still
        names the option the path came from."""
        from mailsrv.service import tls_context_of
        from mailsrv.tls import generate_self_signed

        cert, key = os.path.join(self.dir, "cert.pem"), os.path.join(self.dir, "key.pem")
        generate_self_signed(cert, key, "localhost")
        config = load_config(self.path, {"tls_cert": cert, "tls_key": cert})
        e = self.assertRaises(ConfigError, tls_context_of, config)
        self.assertEqual((e.path, e.key), (COMMAND_LINE, "--tls-key"))
        self.assertIn("not an unencrypted PEM private key", e.reason)
        self.assertIsNotNone(
            tls_context_of(load_config(self.path, {"tls_cert": cert, "tls_key": key}))
        )

    def test_no_file_at_all(self) -> None:
        config = load_config(None, {"imap": ["tcp:1143"], "passwd": self.passwd})
        self.assertIsNone(config.path)
        self.assertEqual([lst.origin for lst in config.listeners], ["--imap[0]"])


class ShippedConfigTests(unittest.TestCase):
    """The configurations in etc/ stay valid."""

    def test_production_example(self) -> None:
        config = load_config(os.path.join(ROOT, "etc", "mailsrv.toml"), check_files=False)
        self.assertEqual(len(config.listeners), 5)
        self.assertEqual(config.lmtp.listen, ("unix:/run/mailsrv/lmtp",))
        self.assertEqual(config.users.default_scheme, "ARGON2ID")

    def test_dev_config_is_loopback_only(self) -> None:
        config = load_config(os.path.join(ROOT, "etc", "dev.toml"), check_files=False)
        ports = sorted(lst.endpoint.split(":")[1] for lst in config.listeners)
        self.assertEqual(ports, ["1110", "1143", "1993", "1995"])
        for listener in config.listeners:
            self.assertIn("interface=127.0.0.1", listener.endpoint)
        self.assertTrue(config.tls.generate_self_signed)
