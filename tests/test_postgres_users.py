"""Users in PostgreSQL (``[auth] backend = "postgresql"``), the schema's
migrations on a database holding data, and ``mailsrv db prune``; all on the
private test server (tests/pgcluster.py)."""

from __future__ import annotations

import hashlib
import hmac
import io
import os
from typing import Any, cast

from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer, reactor
from twisted.internet.interfaces import IReactorThreads
from twisted.trial import unittest

from mailsrv import cli
from mailsrv.config import load_config
from mailsrv.errors import ConfigError, TemporaryFailure
from tests import pgcluster
from tests.helpers import Daemon, free_port
from tests.test_postgres_nodes import Imap


def run_cli(*argv: str, stdin: str = "") -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    status = cli.main(list(argv), stdin=io.StringIO(stdin), stdout=out, stderr=err)
    return status, out.getvalue(), err.getvalue()


class _Cram:
    """CRAM-MD5 credentials as a client computes them (RFC 2195)."""

    def __init__(self, username: bytes, secret: bytes) -> None:
        from twisted.cred.credentials import CramMD5Credentials

        self.credentials = CramMD5Credentials()
        challenge = self.credentials.getChallenge()
        self.credentials.setResponse(
            username + b" " + hmac.new(secret, challenge, hashlib.md5).hexdigest().encode()
        )


class UsersConfigTests(unittest.TestCase):
    """[auth] backend and dsn, checked without a server."""

    def setUp(self) -> None:
        pgcluster.require()
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)

    def load(self, text: str) -> Any:
        path = os.path.join(self.dir, "mailsrv.toml")
        with open(path, "w") as f:
            f.write(text)
        return load_config(path, require_listeners=False)

    def test_users_in_the_mail_database(self) -> None:
        config = self.load(
            '[auth]\nbackend = "postgresql"\n[storage]\nbackend = "postgresql"\n'
            'dsn = "host=/run/postgresql dbname=mail"\n'
        )
        self.assertEqual(config.auth_dsn, "host=/run/postgresql dbname=mail")
        # No users file is needed, so none is looked for.
        self.assertFalse(os.path.exists(config.users.passwd_file))

    def test_users_in_their_own_database_beside_maildir(self) -> None:
        config = self.load('[auth]\nbackend = "postgresql"\ndsn = "dbname=users"\n')
        self.assertEqual((config.storage.backend, config.auth_dsn), ("maildir", "dbname=users"))

    def test_no_database_named(self) -> None:
        error = self.assertRaises(ConfigError, self.load, '[auth]\nbackend = "postgresql"\n')
        self.assertEqual(error.key, "auth.dsn")
        self.assertTrue(str(error).startswith(os.path.join(self.dir, "mailsrv.toml")))
        self.assertIn("(or set storage.dsn)", error.reason)

    def test_bad_dsn_and_backend(self) -> None:
        error = self.assertRaises(
            ConfigError, self.load, '[auth]\nbackend = "postgresql"\ndsn = "host=x dbname"\n'
        )
        self.assertEqual(error.key, "auth.dsn")
        self.assertIn("not a valid PostgreSQL connection string", error.reason)
        error = self.assertRaises(ConfigError, self.load, '[auth]\nbackend = "ldap"\n')
        self.assertEqual(error.key, "auth.backend")
        self.assertIn("'passwd-file', 'postgresql'", error.reason)


class UsersDatabaseTestCase(unittest.TestCase):
    def setUp(self) -> None:
        pgcluster.require()
        self.dsn = pgcluster.new_dsn()
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.config = os.path.join(self.dir, "mailsrv.toml")
        with open(self.config, "w") as f:
            f.write(
                '[auth]\nbackend = "postgresql"\nfailure_delay = 0.0\n'
                f'[storage]\nbackend = "postgresql"\ndsn = "{self.dsn}"\npool_size = 2\n'
            )

    def query(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        import psycopg

        with psycopg.connect(self.dsn, autocommit=True) as conn:
            return list(conn.execute(sql, args).fetchall())

    def user(self, *argv: str, stdin: str = "") -> tuple[int, str, str]:
        return run_cli("user", *argv, "--config", self.config, stdin=stdin)


class UserCommandTests(UsersDatabaseTestCase):
    """``mailsrv user add/passwd/del/list`` against the users table."""

    def test_add_passwd_del_list(self) -> None:
        status, out, err = self.user(
            "add", "alice", "--password-stdin", "--home", "/srv/alice", stdin="one\n"
        )
        self.assertEqual((status, out, err), (0, "added alice to the users table\n", ""))
        self.assertEqual(self.user("add", "bob", "--password-stdin", stdin="two\n")[0], 0)
        stored = dict(self.query("SELECT user_name, password FROM users"))
        self.assertTrue(stored["alice"].startswith("{ARGON2ID}$argon2id$"), stored)
        self.assertEqual(
            self.query("SELECT home FROM users WHERE user_name = 'alice'"), [("/srv/alice",)]
        )
        self.assertEqual(self.user("list"), (0, "alice\nbob\n", ""))

        status, _out, err = self.user("add", "alice", "--password-stdin", stdin="x\n")
        self.assertEqual(status, cli.EX_DATAERR)
        self.assertIn("already exists", err)
        status, out, _err = self.user(
            "passwd", "alice", "--password-stdin", "--scheme", "PLAIN", stdin="three\n"
        )
        self.assertEqual((status, out), (0, "changed the password of alice in the users table\n"))
        self.assertEqual(
            self.query("SELECT password FROM users WHERE user_name = 'alice'"), [("{PLAIN}three",)]
        )
        status, _out, err = self.user("passwd", "carol", "--password-stdin", stdin="x\n")
        self.assertEqual(status, cli.EX_NOUSER)
        self.assertIn("no user 'carol'", err)

        status, out, _err = self.user("del", "bob")
        self.assertEqual(
            (status, out), (0, "removed bob from the users table (the mail is kept)\n")
        )
        self.assertEqual(self.user("list"), (0, "alice\n", ""))
        self.assertEqual(self.user("del", "bob")[0], cli.EX_NOUSER)
        # The row (and with it the mail) stays; adding bob again gives it back.
        self.assertEqual(
            self.query("SELECT password FROM users WHERE user_name = 'bob'"), [(None,)]
        )
        self.assertEqual(self.user("add", "bob", "--password-stdin", stdin="four\n")[0], 0)
        self.assertEqual(self.user("list"), (0, "alice\nbob\n", ""))

    def test_deliver_knows_users_from_the_table(self) -> None:
        self.assertEqual(self.user("add", "alice", "--password-stdin", stdin="x\n")[0], 0)
        out, err = io.StringIO(), io.StringIO()
        message = io.BytesIO(b"Subject: hi\r\n\r\nbody\r\n")
        status = cli.main(
            ["deliver", "alice", "--config", self.config], stdin=message, stdout=out, stderr=err
        )
        self.assertEqual((status, err.getvalue()), (0, ""))
        self.assertEqual(self.query("SELECT messages FROM mailboxes WHERE name = 'INBOX'"), [(1,)])
        status = cli.main(
            ["deliver", "nobody", "--config", self.config],
            stdin=io.BytesIO(b"Subject: x\r\n\r\ny\r\n"),
            stdout=out,
            stderr=err,
        )
        self.assertEqual(status, cli.EX_NOUSER)
        self.assertIn("no user 'nobody' in the users table", err.getvalue())

    def test_bad_names_and_unreachable_database(self) -> None:
        status, _out, err = self.user("add", "a:b", "--password-stdin", stdin="x\n")
        self.assertEqual(status, cli.EX_DATAERR)
        self.assertIn("contains ':'", err)
        with open(self.config, "w") as f:
            f.write(
                '[auth]\nbackend = "postgresql"\n'
                f'dsn = "host={self.dir} dbname=x connect_timeout=2"\n'
            )
        status, _out, err = self.user("list")
        self.assertEqual(status, cli.EX_TEMPFAIL)
        self.assertIn("cannot connect to", err)


class CheckerTests(UsersDatabaseTestCase):
    """PostgresChecker on the real table: the users file's rules, one failure
    message, and a database outage that is not a failed login."""

    def setUp(self) -> None:
        super().setUp()
        self.assertEqual(self.user("add", "alice", "--password-stdin", stdin="secret\n")[0], 0)
        self.assertEqual(
            self.user("add", "pat", "--password-stdin", "--scheme", "PLAIN", stdin="plain\n")[0], 0
        )
        self.storage = pgcluster.new_storage(self, self.dsn, pool_size=2)
        from mailsrv.auth.pgusers import PostgresChecker

        self.checker = PostgresChecker(self.storage.db, reactor=cast(IReactorThreads, reactor))

    async def outcome(self, credentials: Any) -> str:
        try:
            return str(await self.checker.requestAvatarId(credentials))
        except UnauthorizedLogin as e:
            return f"refused: {e}"

    @defer.inlineCallbacks
    def test_passwords(self) -> Any:
        check = defer.Deferred.fromCoroutine
        self.assertEqual(
            (yield check(self.outcome(UsernamePassword(b"alice", b"secret")))), "alice"
        )
        refused = "refused: Authentication failed"
        for name, password in ((b"alice", b"wrong"), (b"nobody", b"secret"), (b"\xff", b"x")):
            self.assertEqual((yield check(self.outcome(UsernamePassword(name, password)))), refused)
        # CRAM-MD5 needs a plaintext-equivalent secret: pat has one, alice not.
        self.assertEqual((yield check(self.outcome(_Cram(b"pat", b"plain").credentials))), "pat")
        self.assertEqual(
            (yield check(self.outcome(_Cram(b"alice", b"secret").credentials))), refused
        )
        # The realm gets the home without asking the database again.
        self.assertIsNone(self.checker.home_of("alice"))
        # A user removed is refused at once, on every node.
        self.assertEqual(self.user("del", "alice")[0], 0)
        self.assertEqual(
            (yield check(self.outcome(UsernamePassword(b"alice", b"secret")))), refused
        )

    @defer.inlineCallbacks
    def test_plaintext_flag_follows_the_table(self) -> Any:
        self.checker.any_plaintext()  # starts the first lookup
        yield self.wait(lambda: self.checker.any_plaintext())
        self.assertEqual(self.user("del", "pat")[0], 0)
        self.checker._plaintext_checked = float("-inf")  # as if 30 s had passed
        yield self.wait(lambda: not self.checker.any_plaintext())

    @staticmethod
    @defer.inlineCallbacks
    def wait(predicate: Any) -> Any:
        from tests.test_storage_postgres import wait_until

        yield defer.Deferred.fromCoroutine(wait_until(predicate, "the plaintext flag"))

    @defer.inlineCallbacks
    def test_database_away_is_a_temporary_failure(self) -> Any:
        from mailsrv.auth.pgusers import PostgresChecker
        from mailsrv.storage.postgres.db import Database

        db = Database(f"host={self.dir} dbname=x connect_timeout=2", 1, reactor)
        self.addCleanup(db.close)
        checker = PostgresChecker(db, reactor=cast(IReactorThreads, reactor))
        try:
            yield checker.requestAvatarId(UsernamePassword(b"alice", b"secret"))
        except TemporaryFailure as e:
            self.assertIn("mail database unavailable", str(e))
        else:
            self.fail("a login succeeded without its database")


class DaemonLoginTests(UsersDatabaseTestCase):
    """A real daemon logs users in from the table; a user added or removed
    while it runs counts at the next login; an outage is [UNAVAILABLE]."""

    def test_login_over_imap(self) -> None:
        port = free_port()
        self.assertEqual(self.user("add", "alice", "--password-stdin", stdin="secret\n")[0], 0)
        daemon = Daemon.start(
            ["--config", self.config, "--imap", f"tcp:{port}:interface=127.0.0.1"], cwd=self.dir
        )
        self.addCleanup(daemon.stop)
        daemon.wait_for("listening on")
        client = Imap(port)
        self.addCleanup(client.close)
        self.assertTrue(client.command("LOGIN alice wrong")[-1].startswith(b"t1 NO"))
        self.assertIn(b"AUTHENTICATIONFAILED", client.command("LOGIN alice wrong")[-1])
        self.assertEqual(self.user("add", "bob", "--password-stdin", stdin="pw\n")[0], 0)
        other = Imap(port)
        self.addCleanup(other.close)
        self.assertTrue(other.command("LOGIN bob pw")[-1].startswith(b"t1 OK"))
        self.assertIn(b"* 0 EXISTS\r\n", other.command("SELECT INBOX"))
        third = Imap(port)
        self.addCleanup(third.close)
        self.assertTrue(third.command("LOGIN alice secret")[-1].startswith(b"t1 OK"))


class MigrationTests(unittest.TestCase):
    """Each migration applied to a database that holds data, as an
    administrator upgrading runs it."""

    def setUp(self) -> None:
        pgcluster.require()
        self.dsn = pgcluster.new_dsn(migrated=False)
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.config = os.path.join(self.dir, "mailsrv.toml")
        with open(self.config, "w") as f:
            f.write(f'[storage]\nbackend = "postgresql"\ndsn = "{self.dsn}"\n')

    def sql(self, statement: str, *args: Any) -> list[tuple[Any, ...]]:
        import psycopg

        with psycopg.connect(self.dsn, autocommit=True) as conn:
            cursor = conn.execute(statement, args)
            return list(cursor.fetchall()) if cursor.description else []

    def test_version_1_with_mail_upgrades_keeping_everything(self) -> None:
        import psycopg

        from mailsrv.storage.postgres import schema

        with psycopg.connect(self.dsn, autocommit=True) as conn:
            self.assertEqual(schema.upgrade(conn, target=1), (0, 1))
        # What version 1 code wrote: a user, two mailboxes (one deleted),
        # messages with keywords in various orders, an expunge.
        self.sql(
            "INSERT INTO users (user_name, last_mailbox_id, last_uidvalidity) "
            "VALUES ('alice', 3, 1000)"
        )
        for mailbox_id, name in ((1, "INBOX"), (2, "Work"), (3, None)):
            self.sql(
                "INSERT INTO mailboxes (user_name, mailbox_id, name, uidvalidity, uidnext, "
                "highest_modseq, messages) VALUES ('alice', %s, %s, %s, 4, 9, 0)",
                mailbox_id,
                name,
                997 + mailbox_id,
            )
        self.sql("INSERT INTO blobs (digest, size, refcount) VALUES ('\\x00', 3, 3)")
        for mailbox_id, uid, keywords in (
            (1, 1, ["$Junk", "Alpha"]),
            (1, 2, ["Alpha", "$Forwarded"]),
            (2, 3, []),
        ):
            self.sql(
                "INSERT INTO messages (user_name, mailbox_id, uid, modseq, flags, keywords, "
                "internal_date, size, digest) VALUES ('alice', %s, %s, 5, 1, %s, "
                "'2020-01-02 03:04:05+00', 3, '\\x00')",
                mailbox_id,
                uid,
                keywords,
            )
        self.sql(
            "INSERT INTO expunged (user_name, mailbox_id, uid, modseq) VALUES ('alice', 1, 3, 8)"
        )

        status, out, err = run_cli("db", "upgrade", "--config", self.config)
        self.assertEqual((status, err), (0, ""))
        self.assertEqual(out, f"schema upgraded from version 1 to {schema.SCHEMA_VERSION}\n")

        # Migration 2: each mailbox's keywords from its messages, sorted.
        self.assertEqual(
            self.sql("SELECT mailbox_id, keywords FROM mailboxes ORDER BY mailbox_id"),
            [(1, ["$Forwarded", "$Junk", "Alpha"]), (2, []), (3, [])],
        )
        # Migration 3: mail owners are not users who may log in.
        self.assertEqual(
            self.sql("SELECT user_name, password, home FROM users"), [("alice", None, None)]
        )
        # Migration 4: nothing pruned yet; the tombstone's age starts now.
        self.assertEqual(
            self.sql(
                "SELECT mailbox_id, expunged_floor, deleted_at IS NOT NULL FROM mailboxes "
                "ORDER BY mailbox_id"
            ),
            [(1, 0, False), (2, 0, False), (3, 0, True)],
        )
        self.assertEqual(
            self.sql("SELECT uid, modseq, expunged_at IS NOT NULL FROM expunged"), [(3, 8, True)]
        )
        # Migration 5: no carried UIDLs.
        self.assertEqual(
            self.sql("SELECT count(*) FROM messages WHERE pop3_uidl IS NOT NULL"), [(0,)]
        )
        # Migration 6: each mailbox its own MAILBOXID (RFC 8474), an objectid.
        guids = [row[0] for row in self.sql("SELECT guid FROM mailboxes")]
        self.assertEqual(len(set(guids)), 3)
        for guid in guids:
            self.assertRegex(guid, r"^[0-9a-f]{32}$")
        # And the backend serves what was there.
        from mailsrv.storage.postgres import PostgresStorage

        storage = PostgresStorage(self.dsn, pool_size=1)
        try:
            inbox = storage.account("alice").get_mailbox("INBOX")
            self.assertEqual(list(inbox.keywords()), ["$Forwarded", "$Junk", "Alpha"])
            self.assertEqual([m.uid for m in inbox.fetch([1, 2])], [1, 2])
            self.assertEqual(inbox.expunged_since(7), [3])
            self.assertEqual((inbox.uidvalidity, inbox.uidnext), (998, 4))
        finally:
            storage.close()


class PruneTests(UsersDatabaseTestCase):
    """``mailsrv db prune``: the expunge log and tombstones kept for
    storage.retention_days, and answers below the floor still correct."""

    def age(self, table: str, column: str, days: int, where: str = "TRUE") -> None:
        """Make rows look ``days`` old: what time would do."""
        self.query(
            f"UPDATE {table} SET {column} = now() - make_interval(days => %s) "
            f"WHERE {where} RETURNING 1",
            days,
        )

    def test_prune(self) -> None:
        from mailsrv.interfaces import DELETED, StoreMode
        from mailsrv.storage.postgres import PostgresStorage

        storage = PostgresStorage(self.dsn, pool_size=1)
        self.addCleanup(storage.close)
        account = storage.account("alice")
        inbox = account.get_mailbox("INBOX")
        for number in range(1, 9):
            inbox.append(io.BytesIO(b"Subject: %d\r\n\r\nx\r\n" % number), (), None)
        # Old expunges (UIDs 1, 2, 5), then recent ones (UID 7).
        inbox.store([1, 2, 5], frozenset({DELETED}), StoreMode.ADD)
        inbox.expunge()
        old_modseq = inbox.highest_modseq
        self.age("expunged", "expunged_at", 40)
        inbox.store([7], frozenset({DELETED}), StoreMode.ADD)
        inbox.expunge()
        account.create_mailbox("Gone")
        account.create_mailbox("Recent")
        gone = account.get_mailbox("Gone")
        gone.append(io.BytesIO(b"Subject: g\r\n\r\nx\r\n"), (), None)
        account.delete_mailbox("Gone")
        account.delete_mailbox("Recent")
        self.age(
            "mailboxes", "deleted_at", 40, f"name IS NULL AND uidvalidity = {gone.uidvalidity}"
        )

        self.assertEqual(inbox.expunged_since(0), [1, 2, 5, 7])
        status, out, err = run_cli("db", "prune", "--config", self.config)
        self.assertEqual((status, err), (0, ""))
        self.assertEqual(
            out, "pruned 3 expunge-log rows and 1 deleted mailboxes older than 30 days\n"
        )
        self.assertEqual(self.query("SELECT uid FROM expunged ORDER BY uid"), [(7,)])
        self.assertEqual(
            self.query("SELECT expunged_floor FROM mailboxes WHERE name = 'INBOX'"), [(old_modseq,)]
        )
        # The recent tombstone stays; the old one and its leftovers are gone.
        self.assertEqual(self.query("SELECT count(*) FROM mailboxes WHERE name IS NULL"), [(1,)])
        self.assertEqual(
            self.query(
                "SELECT count(*) FROM expunged e JOIN mailboxes m USING (user_name, mailbox_id) "
                "WHERE m.name IS NULL"
            ),
            [(0,)],
        )
        # Above the floor the log answers exactly; at or below it, with
        # every UID the mailbox no longer has (RFC 7162 3.2.6).
        self.assertEqual(inbox.expunged_since(old_modseq), [7])
        self.assertEqual(inbox.expunged_since(0), [1, 2, 5, 7])
        self.assertEqual(inbox.expunged_since(old_modseq - 1), [1, 2, 5, 7])
        # Again: nothing more is old enough.
        self.assertEqual(
            run_cli("db", "prune", "--config", self.config)[1],
            "pruned 0 expunge-log rows and 0 deleted mailboxes older than 30 days\n",
        )
        # --days overrides the configuration; zero is refused.
        self.assertEqual(
            run_cli("db", "prune", "--days", "0", "--config", self.config)[0], cli.EX_USAGE
        )

    def test_a_node_catching_up_across_the_floor(self) -> None:
        """A session told nothing since before the floor still learns every
        expunge when it catches up."""
        from mailsrv.interfaces import DELETED, StoreMode
        from mailsrv.storage.postgres import PostgresStorage, queries

        storage = PostgresStorage(self.dsn, pool_size=1)
        self.addCleanup(storage.close)
        inbox = storage.account("alice").get_mailbox("INBOX")
        for number in range(1, 6):
            inbox.append(io.BytesIO(b"Subject: %d\r\n\r\nx\r\n" % number), (), None)
        seen = inbox.highest_modseq
        inbox.store([2, 4], frozenset({DELETED}), StoreMode.ADD)
        inbox.expunge()
        self.age("expunged", "expunged_at", 40)
        self.assertEqual(run_cli("db", "prune", "--config", self.config)[0], 0)
        self.assertEqual(self.query("SELECT count(*) FROM expunged"), [(0,)])
        changes = storage.db.call(queries.changes, ("alice", inbox._state.mailbox_id, seen))
        self.assertEqual(sorted(uid for uid, _ in changes.expunged), [2, 4])
