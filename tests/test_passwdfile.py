"""The users file: Dovecot passwd-file lines, live reloads, atomic admin edits."""

from __future__ import annotations

import os
import stat
from typing import Any, cast

from twisted.logger import ILogObserver, LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from mailsrv import log
from mailsrv.auth.passwdfile import (
    NoSuchUser,
    PasswdFile,
    UserExists,
    UserRecord,
    create_empty,
    parse_line,
    validate_user_name,
)
from mailsrv.errors import ConfigError

ARGON = (
    "{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$PuxLm1lQ/xL38GrPlChWMw"
    "$Gdai57ZGp/XJkhYrwaDV08qx7/UBJx32mKd7ZEEK9Xs"
)

SAMPLE = (
    b"# mailsrv users\n"
    b"\n"
    b"alice:{PLAIN}alice-pw:1000:1000:Alice Liddell:/home/alice:/bin/sh:"
    b"userdb_quota_rule=*:storage=1G\n"
    b"   # an indented comment\n"
    b"bob:" + ARGON.encode() + b"\n"
    b"carol:{PLAIN}carol-pw:1002:1002::/home/carol::\n"
)


class ParseLineTests(SynchronousTestCase):
    def test_full_line(self) -> None:
        record = parse_line(
            "alice:{PLAIN}pw:1000:1001:Alice Liddell:/home/alice:/bin/sh:"
            "userdb_quota_rule=*:storage=1G nopassword\n",
            "users",
            3,
        )
        self.assertEqual(
            record,
            UserRecord(
                name="alice",
                password="{PLAIN}pw",
                uid=1000,
                gid=1001,
                gecos="Alice Liddell",
                home="/home/alice",
                shell="/bin/sh",
                extra="userdb_quota_rule=*:storage=1G nopassword",
            ),
        )

    def test_short_lines(self) -> None:
        self.assertEqual(
            parse_line("alice:{PLAIN}pw", "users", 1),
            UserRecord("alice", "{PLAIN}pw", None, None, "", None, "", ""),
        )
        self.assertEqual(
            parse_line("alice:{PLAIN}pw:1000:1000::/home/alice::\r\n", "users", 1),
            UserRecord("alice", "{PLAIN}pw", 1000, 1000, "", "/home/alice", "", ""),
        )
        record = parse_line("alice:{PLAIN}pw::", "users", 1)
        assert record is not None
        self.assertIsNone(record.uid)
        self.assertIsNone(record.gid)
        self.assertIsNone(record.home)

    def test_blanks_and_comments(self) -> None:
        for line in ("", "\n", "   \r\n", "# alice:{PLAIN}x", "  # comment\n"):
            self.assertIsNone(parse_line(line, "users", 1), repr(line))

    def test_bad_lines(self) -> None:
        cases = [
            (":{PLAIN}pw", "empty user name"),
            ("al ice:{PLAIN}pw", "whitespace"),
            (" alice:{PLAIN}pw", "whitespace"),
            ("al\x01ice:{PLAIN}pw", "control character"),
            ("../etc:{PLAIN}pw", "starts with '.'"),
            ("a/b:{PLAIN}pw", "'/'"),
            ("x" * 256 + ":{PLAIN}pw", "longer than 255"),
            ("alice", "no password field"),
            ("alice:{PLAIN}pw:10x0:1000", "uid is not a number"),
            ("alice:{PLAIN}pw:1000:-5", "gid is not a number"),
        ]
        for line, reason in cases:
            with self.assertRaises(ConfigError, msg=line) as caught:
                parse_line(line, "/etc/mailsrv/passwd", 7)
            message = str(caught.exception)
            self.assertTrue(message.startswith("/etc/mailsrv/passwd: line 7: "), message)
            self.assertIn(reason, message)

    def test_validate_user_name(self) -> None:
        validate_user_name("alice@example.org")
        validate_user_name("x" * 255)
        validate_user_name("Zoë")
        # "#bob" would be written as a comment line: a user nobody could log in as.
        for bad in ("", ".hidden", "#bob", "a:b", "a b", "a/b", "a\tb", "a\x7fb", "x" * 256):
            self.assertRaises(ValueError, validate_user_name, bad)


class FileTestMixin:
    mktemp: Any

    def write(self, data: bytes, mode: int = 0o600) -> str:
        directory = self.mktemp()
        os.makedirs(directory)
        path = os.path.join(directory, "passwd")
        with open(path, "wb") as f:
            f.write(data)
        os.chmod(path, mode)
        return path


def read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def bump_mtime(path: str) -> None:
    """Give the file an mtime no earlier write could have had."""
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


class LoadTests(FileTestMixin, SynchronousTestCase):
    def setUp(self) -> None:
        self.events: list[dict[str, Any]] = []
        observer = cast(ILogObserver, self.events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)

    def logged(self, level: LogLevel) -> list[str]:
        return [
            formatEvent(e)
            for e in self.events
            if e.get("log_level") == level and e.get("log_namespace") == "mailsrv.auth.passwdfile"
        ]

    def test_load(self) -> None:
        users = PasswdFile(self.write(SAMPLE))
        self.assertEqual([u.name for u in users.users()], ["alice", "bob", "carol"])
        alice = users.get("alice")
        assert alice is not None
        self.assertEqual(alice.password, "{PLAIN}alice-pw")
        self.assertEqual(alice.home, "/home/alice")
        self.assertEqual(alice.extra, "userdb_quota_rule=*:storage=1G")
        bob = users.get("bob")
        assert bob is not None
        self.assertEqual((bob.password, bob.uid, bob.home), (ARGON, None, None))
        self.assertIsNone(users.get("dave"))
        self.assertIsNone(users.get("Alice"), "names are case-sensitive")

    def test_missing_file(self) -> None:
        path = os.path.join(self.mktemp(), "passwd")
        with self.assertRaises(ConfigError) as caught:
            PasswdFile(path)
        self.assertEqual(str(caught.exception), f"{path}: file not found")

    def test_bad_line_at_first_load(self) -> None:
        path = self.write(b"# users\nalice:{PLAIN}x\nbad user:{PLAIN}y\n")
        with self.assertRaises(ConfigError) as caught:
            PasswdFile(path)
        self.assertTrue(str(caught.exception).startswith(f"{path}: line 3: "))

    def test_not_utf8(self) -> None:
        path = self.write(b"alice:{PLAIN}x\n\xff\xfe:{PLAIN}y\n")
        with self.assertRaises(ConfigError) as caught:
            PasswdFile(path)
        self.assertEqual(str(caught.exception), f"{path}: line 2: not valid UTF-8")

    def test_duplicate_user(self) -> None:
        path = self.write(b"alice:{PLAIN}x\n#\nbob:{PLAIN}y\nalice:{PLAIN}z\n")
        with self.assertRaises(ConfigError) as caught:
            PasswdFile(path)
        self.assertEqual(
            str(caught.exception),
            f"{path}: line 4: duplicate user 'alice' (first defined on line 1)",
        )

    def test_unknown_scheme_loads_and_warns(self) -> None:
        """One user with a scheme we cannot check does not lock out the others."""
        path = self.write(b"alice:{PLAIN}x\nbob:{SSHA}abc\ncarol:\n")
        users = PasswdFile(path)
        self.assertEqual(len(users.users()), 3)
        warnings = self.logged(LogLevel.warn)
        self.assertEqual(len(warnings), 2)
        self.assertIn(
            "line 2: user 'bob' has an unknown or malformed password scheme SSHA", warnings[0]
        )
        self.assertIn("line 3: user 'carol' has an empty password", warnings[1])

    def test_unchanged_file_is_not_parsed_again(self) -> None:
        users = PasswdFile(self.write(SAMPLE))
        first = users.get("alice")
        self.assertIs(users.get("alice"), first)
        self.assertIs(users.users()[0], first)

    def test_reload_after_replace(self) -> None:
        path = self.write(SAMPLE)
        users = PasswdFile(path)
        self.assertIsNone(users.get("dave"))
        new = path + ".new"
        with open(new, "wb") as f:
            f.write(b"dave:{PLAIN}dave-pw\n")
        os.replace(new, path)
        dave = users.get("dave")
        assert dave is not None
        self.assertEqual(dave.password, "{PLAIN}dave-pw")
        self.assertIsNone(users.get("alice"))
        self.assertIn("reloaded, 1 users", self.logged(LogLevel.info)[-1])

    def test_reload_line_follows_the_log_level(self) -> None:
        # [logging] level = "warn" leaves the info lines of this module out
        # too, as it does those of the protocols.
        self.addCleanup(log.set_level, "info")
        path = self.write(SAMPLE)
        users = PasswdFile(path)
        log.set_level("warn")
        with open(path, "ab") as f:
            f.write(b"dave:{PLAIN}dave-pw\n")
        bump_mtime(path)
        self.assertIsNotNone(users.get("dave"))
        self.assertEqual(self.logged(LogLevel.info), [])
        log.set_level("info")
        with open(path, "ab") as f:
            f.write(b"erin:{PLAIN}erin-pw\n")
        bump_mtime(path)
        self.assertIsNotNone(users.get("erin"))
        self.assertIn("reloaded, 5 users", self.logged(LogLevel.info)[-1])

    def test_reload_after_append_in_place(self) -> None:
        path = self.write(SAMPLE)
        users = PasswdFile(path)
        with open(path, "ab") as f:
            f.write(b"dave:{PLAIN}dave-pw\n")
        bump_mtime(path)
        self.assertEqual([u.name for u in users.users()], ["alice", "bob", "carol", "dave"])

    def test_reload_after_in_place_edit_of_same_size(self) -> None:
        path = self.write(b"alice:{PLAIN}aaaa\n")
        users = PasswdFile(path)
        with open(path, "r+b") as f:
            f.write(b"alice:{PLAIN}bbbb\n")
        bump_mtime(path)
        alice = users.get("alice")
        assert alice is not None
        self.assertEqual(alice.password, "{PLAIN}bbbb")

    def test_broken_edit_keeps_last_good_version(self) -> None:
        path = self.write(SAMPLE)
        users = PasswdFile(path)
        with open(path, "ab") as f:
            f.write(b"alice:{PLAIN}again\n")
        bump_mtime(path)
        alice = users.get("alice")
        assert alice is not None
        self.assertEqual(alice.password, "{PLAIN}alice-pw")
        self.assertEqual(len(users.users()), 3)
        errors = self.logged(LogLevel.error)
        self.assertEqual(len(errors), 1, "logged once, not on every lookup")
        self.assertIn(f"{path}: line 7: duplicate user 'alice'", errors[0])
        self.assertIn("still using the version loaded before", errors[0])
        # Fixing the file brings the new content in.
        with open(path, "wb") as f:
            f.write(b"erin:{PLAIN}e\n")
        bump_mtime(path)
        self.assertEqual([u.name for u in users.users()], ["erin"])

    def test_vanished_file_keeps_last_good_version(self) -> None:
        path = self.write(SAMPLE)
        users = PasswdFile(path)
        os.unlink(path)
        self.assertIsNotNone(users.get("alice"))
        self.assertIsNotNone(users.get("bob"))
        errors = self.logged(LogLevel.error)
        self.assertEqual(len(errors), 1)
        self.assertIn(path, errors[0])
        with open(path, "wb") as f:
            f.write(b"erin:{PLAIN}e\n")
        self.assertEqual([u.name for u in users.users()], ["erin"])


class AdminTests(FileTestMixin, SynchronousTestCase):
    def assert_private(self, path: str) -> None:
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)

    def assert_no_leftovers(self, path: str) -> None:
        self.assertEqual(os.listdir(os.path.dirname(path)), ["passwd"])

    def test_add(self) -> None:
        path = self.write(SAMPLE)
        users = PasswdFile(path)
        users.add("dave", "{PLAIN}dave-pw")
        self.assertEqual(read(path), SAMPLE + b"dave:{PLAIN}dave-pw\n")
        self.assert_private(path)
        self.assert_no_leftovers(path)
        dave = users.get("dave")
        assert dave is not None
        self.assertEqual(dave.password, "{PLAIN}dave-pw")
        # Another reader of the same file sees it as well.
        self.assertIsNotNone(PasswdFile(path).get("dave"))

    def test_rewrite_keeps_group_read_and_drops_world_read(self) -> None:
        """A ``root:vmail`` 0640 file stays readable by the daemon's group
        after an edit; world-readable bits never survive one."""
        for before, after in ((0o640, 0o640), (0o644, 0o640), (0o604, 0o600), (0o400, 0o600)):
            path = self.write(SAMPLE, mode=before)
            PasswdFile(path).add("dave", "{PLAIN}dave-pw")
            self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), after, oct(before))
            os.unlink(path)

    def test_unreadable(self) -> None:
        path = self.write(SAMPLE)
        users = PasswdFile(path)
        self.assertIsNone(users.unreadable())
        os.unlink(path)
        os.mkdir(path)  # unreadable as a file, for root too
        self.assertIsNotNone(users.unreadable())

    def test_add_with_home_and_ids(self) -> None:
        path = self.write(b"")
        users = PasswdFile(path)
        users.add("erin", ARGON, home="/srv/mail/erin", uid=5000, gid=5001)
        self.assertEqual(read(path), b"erin:" + ARGON.encode() + b":5000:5001::/srv/mail/erin::\n")
        users.add("frank", "{PLAIN}f", home="/home/frank")
        frank = users.get("frank")
        assert frank is not None
        self.assertEqual((frank.uid, frank.gid, frank.home), (None, None, "/home/frank"))

    def test_add_after_last_line_without_newline(self) -> None:
        path = self.write(b"alice:{PLAIN}a")
        PasswdFile(path).add("bob", "{PLAIN}b")
        self.assertEqual(read(path), b"alice:{PLAIN}a\nbob:{PLAIN}b\n")

    def test_add_refusals(self) -> None:
        path = self.write(SAMPLE)
        users = PasswdFile(path)
        with self.assertRaises(UserExists) as caught:
            users.add("alice", "{PLAIN}x")
        self.assertIsInstance(caught.exception, ValueError)
        self.assertIn("already exists", str(caught.exception))
        bad: list[tuple[str, str, dict[str, Any]]] = [
            ("bad name", "{PLAIN}x", {}),
            (".x", "{PLAIN}x", {}),
            ("dave", "{PLAIN}a:b", {}),
            ("dave", "{SSHA}abc", {}),
            ("dave", "", {}),
            ("dave", "{PLAIN}x", {"home": "relative/home"}),
            ("dave", "{PLAIN}x", {"home": "/a:b"}),
            ("dave", "{PLAIN}x", {"uid": -1}),
        ]
        for name, secret, extra in bad:
            with self.assertRaises(ValueError, msg=(name, secret, extra)):
                users.add(name, secret, **extra)
        self.assertEqual(read(path), SAMPLE)

    def test_set_password_touches_one_field(self) -> None:
        path = self.write(SAMPLE)
        users = PasswdFile(path)
        users.set_password("alice", ARGON)
        expected = SAMPLE.replace(b"alice:{PLAIN}alice-pw:", b"alice:" + ARGON.encode() + b":")
        self.assertEqual(read(path), expected)
        users.set_password("bob", "{PLAIN}bob-pw")
        expected = expected.replace(b"bob:" + ARGON.encode() + b"\n", b"bob:{PLAIN}bob-pw\n")
        self.assertEqual(read(path), expected)
        self.assert_private(path)
        alice = users.get("alice")
        assert alice is not None
        self.assertEqual((alice.password, alice.uid), (ARGON, 1000))

    def test_crlf_lines_are_kept(self) -> None:
        data = b"# users\r\nalice:{PLAIN}a:1:1\r\nbob:{PLAIN}b\r\n"
        path = self.write(data)
        users = PasswdFile(path)
        users.set_password("alice", "{PLAIN}new")
        self.assertEqual(read(path), b"# users\r\nalice:{PLAIN}new:1:1\r\nbob:{PLAIN}b\r\n")

    def test_remove(self) -> None:
        path = self.write(SAMPLE)
        users = PasswdFile(path)
        users.remove("bob")
        self.assertEqual(read(path), SAMPLE.replace(b"bob:" + ARGON.encode() + b"\n", b""))
        self.assertIsNone(users.get("bob"))
        self.assert_private(path)
        self.assert_no_leftovers(path)

    def test_missing_user(self) -> None:
        path = self.write(SAMPLE)
        users = PasswdFile(path)
        for operation in (lambda: users.remove("zed"), lambda: users.set_password("zed", ARGON)):
            with self.assertRaises(NoSuchUser) as caught:
                operation()
            self.assertIsInstance(caught.exception, ValueError)
            self.assertEqual(str(caught.exception), "no such user: 'zed'")
        self.assertEqual(read(path), SAMPLE)

    def test_broken_file_is_not_rewritten(self) -> None:
        path = self.write(SAMPLE)
        users = PasswdFile(path)
        broken = SAMPLE + b"bob:{PLAIN}dup\n"
        with open(path, "wb") as f:
            f.write(broken)
        bump_mtime(path)
        with self.assertRaises(ConfigError) as caught:
            users.add("dave", "{PLAIN}d")
        self.assertIn("line 7: duplicate user 'bob'", str(caught.exception))
        self.assertEqual(read(path), broken)

    def test_symlinked_file_stays_a_symlink(self) -> None:
        path = self.write(SAMPLE)
        link = os.path.join(os.path.dirname(path), "link")
        os.symlink(os.path.abspath(path), link)
        PasswdFile(link).add("dave", "{PLAIN}d")
        self.assertTrue(os.path.islink(link))
        self.assertEqual(read(path), SAMPLE + b"dave:{PLAIN}d\n")

    def test_create_empty(self) -> None:
        path = os.path.join(self.mktemp(), "etc", "mailsrv", "passwd")
        create_empty(path)
        self.assertEqual(read(path), b"")
        self.assert_private(path)
        users = PasswdFile(path)
        self.assertEqual(users.users(), [])
        users.add("alice", "{PLAIN}a")
        self.assertEqual(read(path), b"alice:{PLAIN}a\n")
        self.assertRaises(FileExistsError, PasswdFile.create_empty, path)
        self.assertEqual(read(path), b"alice:{PLAIN}a\n")
