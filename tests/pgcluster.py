"""A private PostgreSQL server for the tests: one cluster per test process.

The cluster lives in a temporary directory, listens only on a Unix socket in
that directory, and runs with durability switched off (``fsync=off``): it is
thrown away at exit.  PostgreSQL refuses to run as root, so a root test run
starts it as ``nobody`` (through ``setpriv``), with the directory owned by
that user.

Each test gets a schema of its own in one database (its DSN sets the
``search_path``), so tests are isolated without paying for ``initdb`` or a
database copy each time.

Where PostgreSQL or psycopg is missing, :func:`require` skips the test on a
developer's machine and fails it in CI (``CI=true``): a component CI was
meant to install and could not is a failure, never a silent skip.
"""

from __future__ import annotations

import atexit
import glob
import itertools
import os
import pwd
import re
import shutil
import subprocess
import tempfile
import threading
from typing import Any

from twisted.trial.unittest import SkipTest

__all__ = ["Cluster", "find_bindir", "new_dsn", "new_storage", "require"]

#: Settings for a throwaway server: fast, local, no durability.
_SERVER_SETTINGS = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "listen_addresses": "",
    "max_connections": "300",
    "shared_buffers": "32MB",
    "log_min_messages": "fatal",
    "unix_socket_permissions": "0777",
}


def find_bindir() -> str | None:
    """The directory of PostgreSQL's server programs (initdb, pg_ctl).

    ``$PG_BINDIR`` first, then ``initdb`` on ``PATH``, then the newest
    Debian installation (``/usr/lib/postgresql/N/bin``), which Debian keeps
    off ``PATH``.
    """
    explicit = os.environ.get("PG_BINDIR")
    if explicit:
        return explicit if os.path.isfile(os.path.join(explicit, "initdb")) else None
    found = shutil.which("initdb")
    if found:
        return os.path.dirname(os.path.realpath(found))
    candidates = glob.glob("/usr/lib/postgresql/*/bin/initdb")

    def version(path: str) -> tuple[int, ...]:
        match = re.search(r"/postgresql/([\d.]+)/", path)
        return tuple(int(p) for p in match.group(1).split(".")) if match else (0,)

    if not candidates:
        return None
    return os.path.dirname(max(candidates, key=version))


def require() -> None:
    """Skip (developer) or fail (CI) when the PostgreSQL tests cannot run."""
    problems = []
    try:
        import psycopg  # noqa: F401
    except ImportError:
        problems.append("psycopg is not installed (pip install 'mailsrv[postgresql]')")
    if find_bindir() is None:
        problems.append("PostgreSQL's initdb was not found (apt-get install postgresql)")
    if not problems:
        return
    reason = "; ".join(problems)
    if os.environ.get("CI") == "true":
        raise AssertionError(f"PostgreSQL tests cannot run in CI: {reason}")
    raise SkipTest(reason)


def new_dsn(migrated: bool = True) -> str:
    """A fresh schema on the shared cluster (skips or fails as :func:`require`)."""
    require()
    return Cluster.shared().create_schema(migrated)


def new_storage(test: Any, dsn: str, **kwargs: Any) -> Any:
    """A PostgresStorage on the reactor, closed when ``test`` ends."""
    from twisted.internet import reactor

    from mailsrv.storage.postgres import PostgresStorage

    kwargs.setdefault("reactor", reactor)
    storage = PostgresStorage(dsn, **kwargs)
    test.addCleanup(storage.close)
    return storage


class Cluster:
    """A running private PostgreSQL server."""

    _shared: Cluster | None = None
    _lock = threading.Lock()

    def __init__(self) -> None:
        bindir = find_bindir()
        assert bindir is not None
        self.bindir = bindir
        # Under /tmp: the server's user must reach it (a TMPDIR under /root
        # would not do), and a Unix socket's path must stay short.
        base = "/tmp" if os.path.isdir("/tmp") else None
        self.directory = tempfile.mkdtemp(prefix="mailsrv-pg-", dir=base)
        os.chmod(self.directory, 0o755)
        self.data = os.path.join(self.directory, "data")
        self.socket_dir = self.directory
        self.superuser = "mailsrv"
        self._owner: tuple[int, int] | None = None
        if os.geteuid() == 0:
            record = pwd.getpwnam("nobody")
            self._owner = (record.pw_uid, record.pw_gid)
            os.chown(self.directory, record.pw_uid, record.pw_gid)
        self._counter = itertools.count(1)
        self._database_ready = False
        self._run(
            [
                os.path.join(bindir, "initdb"),
                "--pgdata",
                self.data,
                "--username",
                self.superuser,
                "--auth",
                "trust",
                "--encoding",
                "UTF8",
                "--locale",
                "C",
                "--no-sync",
            ]
        )
        with open(os.path.join(self.data, "postgresql.conf"), "a") as conf:
            for key, value in _SERVER_SETTINGS.items():
                conf.write(f"{key} = '{value}'\n")
            conf.write(f"unix_socket_directories = '{self.socket_dir}'\n")
        self.start()

    @classmethod
    def shared(cls) -> Cluster:
        """The test process's cluster, started on first use, stopped at exit."""
        with cls._lock:
            if cls._shared is None:
                cls._shared = cls()
                atexit.register(cls._shared.destroy)
            return cls._shared

    def _run(self, args: list[str], check: bool = True) -> subprocess.CompletedProcess[bytes]:
        if self._owner is not None:
            uid, gid = self._owner
            args = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", *args]
        result = subprocess.run(
            args, stdin=subprocess.DEVNULL, capture_output=True, cwd=self.directory
        )
        if check and result.returncode != 0:
            raise RuntimeError(
                f"{' '.join(args)} failed ({result.returncode}):\n"
                f"{result.stdout.decode(errors='replace')}{result.stderr.decode(errors='replace')}"
            )
        return result

    def _pg_ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        return self._run(
            [os.path.join(self.bindir, "pg_ctl"), "--pgdata", self.data, "--silent", *args],
            check=check,
        )

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        self._pg_ctl("--wait", "--log", os.path.join(self.directory, "server.log"), "start")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``fast``: sessions are cut off; ``immediate``: a crash)."""
        self._pg_ctl("--wait", "--mode", mode, "stop")

    def destroy(self) -> None:
        self._pg_ctl("--wait", "--mode", "immediate", "stop", check=False)
        shutil.rmtree(self.directory, ignore_errors=True)

    def dsn(self, dbname: str = "postgres") -> str:
        return f"host={self.socket_dir} user={self.superuser} dbname={dbname}"

    def connect(self, dbname: str = "postgres") -> Any:
        """A psycopg connection in autocommit mode (the caller closes it)."""
        import psycopg

        return psycopg.connect(self.dsn(dbname), autocommit=True)

    def _database(self) -> str:
        """The database the tests' schemas live in, created on first use."""
        name = "mailsrv_tests"
        if not self._database_ready:
            with self.connect() as conn:
                conn.execute(f"CREATE DATABASE {name}")
            self._database_ready = True
        return name

    def create_schema(self, migrated: bool = True) -> str:
        """A new, empty schema (holding mailsrv's tables unless ``migrated``
        is false); returns a DSN whose search_path is that schema.

        A schema per test costs a fifth of what a database per test costs
        (no catalog copy); nothing is shared between schemas but the NOTIFY
        channel and advisory locks, and tests run one at a time.
        """
        database = self._database()
        name = f"t{next(self._counter)}"
        dsn = f"{self.dsn(database)} options=-csearch_path={name}"
        with self.connect(database) as conn:
            conn.execute(f"CREATE SCHEMA {name}")
        if migrated:
            import psycopg

            from mailsrv.storage.postgres import schema

            with psycopg.connect(dsn, autocommit=True) as conn:
                schema.upgrade(conn)
        return dsn
