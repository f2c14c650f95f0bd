"""Administering the PostgreSQL backend: configuration keys, ``mailsrv db``,
``mailsrv deliver`` into the database, and the daemon's schema check."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from typing import Any, cast
from unittest import mock

from twisted.trial import unittest

from mailsrv import cli
from mailsrv.config import describe, load_config
from mailsrv.errors import ConfigError
from tests import pgcluster
from tests.helpers import mailsrv_command, source_env


class PostgresConfigTests(unittest.TestCase):
    """The [storage] keys of the backend, checked without a server."""

    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.passwd = os.path.join(self.dir, "passwd")
        with open(self.passwd, "w") as f:
            f.write("alice:{PLAIN}secret\n")

    def load(self, storage: str) -> Any:
        path = os.path.join(self.dir, "mailsrv.toml")
        with open(path, "w") as f:
            f.write(f'[users]\npasswd_file = "{self.passwd}"\n[storage]\n{storage}')
        return load_config(path, require_listeners=False)

    def error(self, storage: str) -> ConfigError:
        error: ConfigError = self.assertRaises(ConfigError, self.load, storage)
        return error

    def test_valid(self) -> None:
        pgcluster.require()
        config = self.load(
            'backend = "postgresql"\n'
            'dsn = "postgresql://mail:s3cret@db.example/mail"\npool_size = 20\n'
        )
        self.assertEqual(config.storage.backend, "postgresql")
        self.assertEqual(config.storage.dsn, "postgresql://mail:s3cret@db.example/mail")
        self.assertEqual(config.storage.pool_size, 20)
        summary = "\n".join(describe(config))
        self.assertIn("storage: postgresql", summary)
        self.assertNotIn("s3cret", summary)

    def test_dsn_required(self) -> None:
        pgcluster.require()
        error = self.error('backend = "postgresql"\n')
        self.assertEqual(error.key, "storage.dsn")
        self.assertTrue(str(error).startswith(os.path.join(self.dir, "mailsrv.toml")), error)
        self.assertIn("required when storage.backend is 'postgresql'", str(error))

    def test_bad_dsn(self) -> None:
        pgcluster.require()
        error = self.error('backend = "postgresql"\ndsn = "host=db dbname"\n')
        self.assertEqual(error.key, "storage.dsn")
        self.assertIn("not a valid PostgreSQL connection string", error.reason)

    def test_pool_size_range(self) -> None:
        error = self.error('backend = "postgresql"\ndsn = "dbname=mail"\npool_size = 0\n')
        self.assertEqual(error.key, "storage.pool_size")
        self.assertIn("at least 1", error.reason)

    def test_psycopg_missing(self) -> None:
        with mock.patch.dict(sys.modules, {"psycopg": None}):
            error = self.error('backend = "postgresql"\ndsn = "dbname=mail"\n')
        self.assertEqual(error.key, "storage.backend")
        self.assertIn("pip install 'mailsrv[postgresql]'", error.reason)


class DatabaseCommandTests(unittest.TestCase):
    """``mailsrv db upgrade`` and ``mailsrv db status`` on a real server."""

    def setUp(self) -> None:
        pgcluster.require()
        self.cluster = pgcluster.Cluster.shared()
        self.dsn = self.cluster.create_schema(migrated=False)
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.config = self.write_config(self.dsn)

    def write_config(self, dsn: str, backend: str = "postgresql") -> str:
        path = os.path.join(self.dir, f"{backend}.toml")
        with open(path, "w") as f:
            f.write(
                f'[users]\npasswd_file = "{self.dir}/passwd"\n'
                f'[storage]\nbackend = "{backend}"\ndsn = "{dsn}"\n'
                f'maildir = "{self.dir}/{{user}}"\n'
            )
        return path

    def run_cli(self, *argv: str, stdin: bytes = b"") -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        status = cli.main(list(argv), stdin=io.BytesIO(stdin), stdout=out, stderr=err)
        return status, out.getvalue(), err.getvalue()

    def tables(self) -> set[str]:
        import psycopg

        with psycopg.connect(self.dsn) as conn:
            rows = conn.execute(
                "SELECT table_name FROM information_schema.tables "
                "WHERE table_schema = current_schema()"
            ).fetchall()
        return {row[0] for row in rows}

    def test_upgrade_creates_the_schema_and_is_safe_to_repeat(self) -> None:
        from mailsrv.storage.postgres.schema import SCHEMA_VERSION

        status, out, err = self.run_cli("db", "status", "--config", self.config)
        self.assertEqual(status, cli.EX_CONFIG)
        self.assertIn("run `mailsrv db upgrade`", err)
        status, out, err = self.run_cli("db", "upgrade", "--config", self.config)
        self.assertEqual((status, err), (0, ""))
        self.assertEqual(out, f"schema upgraded from version 0 to {SCHEMA_VERSION}\n")
        self.assertTrue({"users", "mailboxes", "messages", "blobs", "expunged"} <= self.tables())
        status, out, err = self.run_cli("db", "upgrade", "--config", self.config)
        self.assertEqual(
            (status, out, err), (0, f"schema already at version {SCHEMA_VERSION}\n", "")
        )
        status, out, err = self.run_cli("db", "status", "--config", self.config)
        self.assertEqual(status, 0)
        self.assertIn(f"schema version {SCHEMA_VERSION}", out)

    def test_newer_schema_is_refused(self) -> None:
        import psycopg

        self.assertEqual(self.run_cli("db", "upgrade", "--config", self.config)[0], 0)
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute("INSERT INTO mailsrv_schema (version) VALUES (99)")
        status, _out, err = self.run_cli("db", "upgrade", "--config", self.config)
        self.assertEqual(status, cli.EX_CONFIG)
        self.assertIn("schema is at version 99, newer than this mailsrv knows", err)
        self.assertIn("never downgrades", err)
        # The daemon refuses it too, naming the key.
        from mailsrv.service import make_service

        config = load_config(
            self.config, {"imap": ["tcp:0:interface=127.0.0.1"]}, check_files=False
        )
        error = self.assertRaises(ConfigError, make_service, config)
        self.assertEqual(error.key, "storage.dsn")
        self.assertIn("version 99", error.reason)

    def test_daemon_refuses_a_database_without_schema(self) -> None:
        from mailsrv.service import make_service

        config = load_config(
            self.config, {"imap": ["tcp:0:interface=127.0.0.1"]}, check_files=False
        )
        error = self.assertRaises(ConfigError, make_service, config)
        self.assertEqual(error.key, "storage.dsn")
        self.assertIn("run `mailsrv db upgrade` first", error.reason)

    def test_daemon_starts_while_the_database_is_away(self) -> None:
        """Unreachable at startup is not a configuration error: the daemon
        starts, says so, and answers [UNAVAILABLE] until the server is up."""
        from twisted.logger import ILogObserver, formatEvent, globalLogPublisher

        from mailsrv.service import make_service

        with open(os.path.join(self.dir, "passwd"), "w") as f:
            f.write("alice:{PLAIN}secret\n")
        path = self.write_config(f"host={self.dir} dbname=nothing connect_timeout=2")
        config = load_config(path, {"imap": ["tcp:0:interface=127.0.0.1"]})
        logged: list[str] = []

        def observe(event: dict[str, Any]) -> None:
            logged.append(formatEvent(event))

        observer = cast(ILogObserver, observe)
        globalLogPublisher.addObserver(observer)
        try:
            service = make_service(config)
        finally:
            globalLogPublisher.removeObserver(observer)
        self.assertIsNotNone(service)
        self.assertTrue(
            any("cannot reach the mail database at startup" in line for line in logged), logged
        )

    def test_other_backend(self) -> None:
        path = self.write_config("", backend="maildir")
        status, _out, err = self.run_cli("db", "upgrade", "--config", path)
        self.assertEqual(status, cli.EX_CONFIG)
        self.assertIn("storage.backend is 'maildir'", err)

    def test_unreachable_server(self) -> None:
        path = self.write_config(f"host={self.dir} dbname=nothing connect_timeout=2")
        status, _out, err = self.run_cli("db", "upgrade", "--config", path)
        self.assertEqual(status, cli.EX_TEMPFAIL)
        self.assertIn("cannot connect to", err)


class DeliverCommandTests(unittest.TestCase):
    """``mailsrv deliver`` as the MTA runs it, into PostgreSQL."""

    def setUp(self) -> None:
        pgcluster.require()
        self.dsn = pgcluster.Cluster.shared().create_schema()
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.passwd = os.path.join(self.dir, "passwd")
        with open(self.passwd, "w") as f:
            f.write("alice:{PLAIN}secret\n")
        self.config = os.path.join(self.dir, "mailsrv.toml")
        self.write_config(self.dsn)

    def write_config(self, dsn: str) -> None:
        with open(self.config, "w") as f:
            f.write(
                f'[users]\npasswd_file = "{self.passwd}"\n'
                f'[storage]\nbackend = "postgresql"\ndsn = "{dsn}"\n'
            )

    def deliver(self, *args: str, message: bytes) -> tuple[int, bytes]:
        result = subprocess.run(
            [*mailsrv_command(), "deliver", "--config", self.config, *args],
            input=message,
            capture_output=True,
            env=source_env(),
            timeout=60,
        )
        return result.returncode, result.stderr

    def stored(self, folder: str = "INBOX") -> list[bytes]:
        from mailsrv.storage.postgres import PostgresStorage

        storage = PostgresStorage(self.dsn)
        try:
            mailbox = storage.account("alice").get_mailbox(folder)
            return [mailbox.open(uid).read() for uid in mailbox.uids()]
        finally:
            storage.close()

    def test_delivers_with_crlf_and_falls_back_to_inbox(self) -> None:
        status, err = self.deliver("alice", message=b"Subject: one\n\nbody\n")
        self.assertEqual((status, err), (0, b""))
        status, err = self.deliver("alice", "--folder", "Junk", message=b"Subject: two\n\nx\n")
        self.assertEqual((status, err), (0, b""))
        status, err = self.deliver("alice", "--folder", "Nowhere", message=b"Subject: 3\n\ny\n")
        self.assertEqual(status, 0)
        self.assertIn(b"folder 'Nowhere' unusable", err)
        self.assertEqual(
            self.stored(), [b"Subject: one\r\n\r\nbody\r\n", b"Subject: 3\r\n\r\ny\r\n"]
        )
        self.assertEqual(self.stored("Junk"), [b"Subject: two\r\n\r\nx\r\n"])

    def test_unknown_user_and_empty_message(self) -> None:
        status, _err = self.deliver("bob", message=b"Subject: x\n\ny\n")
        self.assertEqual(status, cli.EX_NOUSER)
        status, _err = self.deliver("alice", message=b"")
        self.assertEqual(status, cli.EX_DATAERR)

    def test_unreachable_database_is_temporary(self) -> None:
        self.write_config(f"host={self.dir} dbname=nothing connect_timeout=2")
        status, err = self.deliver("alice", message=b"Subject: x\n\ny\n")
        self.assertEqual(status, cli.EX_TEMPFAIL)
        self.assertIn(b"mail database unavailable", err)

    def test_database_without_schema_is_temporary(self) -> None:
        self.write_config(pgcluster.Cluster.shared().create_schema(migrated=False))
        status, err = self.deliver("alice", message=b"Subject: x\n\ny\n")
        self.assertEqual(status, cli.EX_TEMPFAIL)
        self.assertIn(b"run `mailsrv db upgrade`", err)
