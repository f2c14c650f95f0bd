"""The servers the benchmarks run side by side: mailsrv and a private Dovecot.

Both are started the way their users start them and measured from outside,
through ``/proc``:

* :class:`Mailsrv` writes a TOML configuration, adds users with
  ``mailsrv user add --password-stdin`` and runs
  ``twistd -n --pidfile= mailsrv --config FILE`` as a child process;
* :class:`Dovecot` writes a private ``dovecot.conf`` (loopback listeners,
  passwd-file authentication over the *same* users file, Maildir under its
  own root, state and sockets in its own directory) and runs
  ``dovecot -F -c FILE`` as a child process, so stopping it is killing one
  child and nothing else on the machine is touched.  With no ports it
  listens on nothing but its own sockets, which is what ``doveadm`` needs
  (``bench/maildir.py``);
* each is measured by a :class:`procs.ProcessTree` of its process tree.

Identical mailboxes for both come from :func:`procs.clone_tree`, which
hard-links a seeded Maildir into each server's root, so both read the same
bytes, inodes and modification times (INTERNALDATE) from the same page cache.

A benchmark helper, not part of mailsrv; nothing here is imported by it.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any

from procs import ProcessTree, free_port, wait_for_port

__all__ = ["Dovecot", "Mailsrv", "Server", "dovecot_version"]


def dovecot_version() -> str | None:
    binary = shutil.which("dovecot") or (
        "/usr/sbin/dovecot" if os.path.exists("/usr/sbin/dovecot") else None
    )
    if binary is None:
        return None
    done = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False)
    return done.stdout.strip() or None


# -- servers -----------------------------------------------------------------------


class Server:
    """What the benchmarks need of a running server."""

    name = "server"

    def __init__(self, top: str, *, cpus: set[int] | None = None) -> None:
        self.top = top
        self.cpus = cpus
        self.imap_port = 0
        self.pop3_port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = os.path.join(top, f"{self.name}.log")

    @property
    def tree(self) -> ProcessTree:
        assert self.process is not None
        return ProcessTree(self.process.pid)

    def mail_root(self, user: str) -> str:
        """The Maildir root (the INBOX) of ``user``."""
        raise NotImplementedError

    def _spawn(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        cpus = self.cpus

        def pin() -> None:
            if cpus:
                os.sched_setaffinity(0, cpus)

        log = open(self.log_path, "ab")
        try:
            self.process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=pin,
                env=env,
                start_new_session=True,
            )
        finally:
            log.close()

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _bin(name: str) -> str:
    """A console script of this interpreter's environment, else from PATH."""
    beside = os.path.join(os.path.dirname(sys.executable), name)
    if os.path.exists(beside):
        return beside
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} not found beside {sys.executable} or on PATH")
    return found


MAILSRV_CONFIG = """\
# Written by bench/peers.py: loopback only, everything under {top}.
[server]
hostname = "localhost"

[imap]
listen = ["tcp:{imap_port}:interface=127.0.0.1"]

[pop3]
listen = ["tcp:{pop3_port}:interface=127.0.0.1"]

[users]
passwd_file = "{passwd}"
create_if_missing = true
default_scheme = "PLAIN"

[auth]
plaintext = "loopback"

[storage]
backend = "maildir"
maildir = "{mail}/{{user}}/Maildir"

[limits]
max_connections = 100000
max_connections_per_user = 100000
max_connections_per_ip = 100000

[logging]
level = "{log_level}"
"""


class Mailsrv(Server):
    """mailsrv started as its users start it: ``twistd -n mailsrv --config FILE``."""

    name = "mailsrv"

    def __init__(
        self,
        top: str,
        passwd: str,
        *,
        cpus: set[int] | None = None,
        log_level: str = "info",
        workers: int | None = None,
        imaps: bool = False,
    ) -> None:
        super().__init__(top, cpus=cpus)
        self.passwd = passwd
        #: ``--workers``; None: the daemon's default, one per CPU it may use.
        self.workers = workers
        #: The implicit-TLS IMAP port (``imaps=True``), with a self-signed pair.
        self.imaps_port = 0
        #: Extra environment of the daemon (bench/tlsmem.py's sitecustomize).
        self.env: dict[str, str] | None = None
        self.mail = os.path.join(top, "mail")
        self.config = os.path.join(top, "mailsrv.toml")
        self.log_level = log_level
        os.makedirs(self.mail, exist_ok=True)
        self.imap_port = free_port()
        self.pop3_port = free_port()
        with open(self.config, "w") as f:
            f.write(
                MAILSRV_CONFIG.format(
                    top=top,
                    imap_port=self.imap_port,
                    pop3_port=self.pop3_port,
                    passwd=passwd,
                    mail=self.mail,
                    log_level=log_level,
                )
            )
            if imaps:
                self.imaps_port = free_port()
                f.write(
                    f'\n[tls]\ncertificate = "{top}/cert.pem"\nkey = "{top}/key.pem"\n'
                    "generate_self_signed = true\n"
                )
        if imaps:
            # [imap] listen_tls belongs in the [imap] table written above.
            with open(self.config) as f:
                text = f.read()
            listen = f'listen = ["tcp:{self.imap_port}:interface=127.0.0.1"]\n'
            tls = f'listen_tls = ["tcp:{self.imaps_port}:interface=127.0.0.1"]\n'
            with open(self.config, "w") as f:
                f.write(text.replace(listen, listen + tls, 1))

    def mail_root(self, user: str) -> str:
        return os.path.join(self.mail, user, "Maildir")

    def add_user(self, name: str, password: str, scheme: str = "PLAIN") -> None:
        """``mailsrv user add NAME --password-stdin`` (the users file is shared)."""
        subprocess.run(
            [
                _bin("mailsrv"),
                "user",
                "add",
                name,
                "--config",
                self.config,
                "--password-stdin",
                "--scheme",
                scheme,
            ],
            input=(password + "\n").encode(),
            check=True,
            capture_output=True,
        )

    def start(self, timeout: float = 60) -> None:
        argv = [_bin("twistd"), "-n", "--pidfile=", "mailsrv", "--config", self.config]
        if self.workers is not None:
            argv += ["--workers", str(self.workers)]
        env = None if self.env is None else {**os.environ, **self.env}
        self._spawn(argv, env)
        assert self.process is not None
        wait_for_port(self.imap_port, self.process, self.log_path, timeout)

    def version(self) -> str:
        done = subprocess.run(
            [_bin("mailsrv"), "--version"], capture_output=True, text=True, check=False
        )
        return done.stdout.strip()


DOVECOT_CONFIG = """\
# Written by bench/peers.py: a private Dovecot, nothing outside {top}.
base_dir = {top}/run
state_dir = {top}/state
log_path = {top}/dovecot.log
info_log_path = {top}/dovecot.log
protocols = {protocols}
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
default_internal_user = {internal_user}
default_internal_group = {internal_group}
default_login_user = {internal_user}
first_valid_uid = 1
first_valid_gid = 1
mail_location = {mail_location}
# Enough processes and clients for thousands of idle IMAP sessions: one
# imap process per session is Dovecot's default (client_limit = 1).
default_process_limit = {process_limit}
default_client_limit = {client_limit}
default_vsz_limit = 1G
passdb {{
  driver = {passdb_driver}
  args = {passdb_args}
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={mail}/%u
}}
# COMPRESS=DEFLATE (RFC 4978) as mailsrv offers it, for bench/load.py's
# mixed workload with --mixed-modes plain,compress.
protocol imap {{
  mail_max_userip_connections = 100000
  mail_plugins = $mail_plugins zlib imap_zlib
}}
protocol pop3 {{
  mail_max_userip_connections = 100000
}}
service imap-login {{
  chroot =
  inet_listener imap {{
    address = 127.0.0.1
    port = {imap_port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service pop3-login {{
  chroot =
  inet_listener pop3 {{
    address = 127.0.0.1
    port = {pop3_port}
  }}
  inet_listener pop3s {{
    port = 0
  }}
}}
service anvil {{
  chroot =
}}
# The users file is the one mailsrv reads (mode 0600, owned by us).  Every
# login process is a client of auth and anvil.
service auth {{
  user = root
  client_limit = {service_client_limit}
}}
service anvil {{
  client_limit = {service_client_limit}
}}
# imap and pop3 have process limits of their own (1024 built in).
service imap {{
  process_limit = {process_limit}
}}
service pop3 {{
  process_limit = {process_limit}
}}
"""


class _Trees(ProcessTree):
    """Several process trees measured as one (a node and its database)."""

    def __init__(self, roots: Sequence[int]) -> None:
        super().__init__(roots[0])
        self.roots = list(roots)

    def pids(self) -> list[int]:
        found: list[int] = []
        for root in self.roots:
            found.extend(ProcessTree(root).pids())
        return found


def durable(cluster: Any) -> None:
    """Put the test cluster's durability back (it runs with fsync off): a
    benchmark of writes must pay for the flushes a real server does."""
    with cluster.connect() as conn:
        for key, value in (
            ("fsync", "on"),
            ("synchronous_commit", "on"),
            ("full_page_writes", "on"),
            ("max_connections", "300"),
        ):
            conn.execute(f"ALTER SYSTEM SET {key} = '{value}'")
        conn.execute("SELECT pg_reload_conf()")


def postmaster_pid(cluster: Any) -> int:
    with open(os.path.join(cluster.data, "postmaster.pid")) as f:
        return int(f.readline())


class MailsrvPostgres(Mailsrv):
    """mailsrv on the PostgreSQL backend, on a private server
    (tests/pgcluster.py, durability switched back on).  The seeded Maildirs
    are imported with ``mailsrv migrate`` before the first start, as an
    administrator would move them.  CPU and memory are those of the daemon
    *and* of every PostgreSQL process: the database works for it."""

    name = "mailsrv-pg"

    def __init__(
        self, top: str, passwd: str, *, cpus: set[int] | None = None, log_level: str = "info"
    ) -> None:
        super().__init__(top, passwd, cpus=cpus, log_level=log_level)
        sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        from tests.pgcluster import Cluster

        self.cluster = Cluster.shared()
        durable(self.cluster)
        self.dsn = self.cluster.create_schema()
        with open(self.config) as f:
            text = f.read()
        text = text.replace(
            'backend = "maildir"', f'backend = "postgresql"\ndsn = "{self.dsn}"\npool_size = 10'
        )
        with open(self.config, "w") as f:
            f.write(text)
        self.imported = False

    @property
    def tree(self) -> ProcessTree:
        assert self.process is not None
        return _Trees([self.process.pid, postmaster_pid(self.cluster)])

    def start(self, timeout: float = 60) -> None:
        if not self.imported:
            started = time.perf_counter()
            done = subprocess.run(
                [
                    _bin("mailsrv"),
                    "migrate",
                    "--config",
                    self.config,
                    "--from",
                    "maildir",
                    "--to",
                    "postgresql",
                ],
                capture_output=True,
                text=True,
            )
            if done.returncode != 0:
                raise RuntimeError(f"mailsrv migrate failed:\n{done.stderr}")
            self.import_seconds = time.perf_counter() - started
            self.import_summary = done.stderr.strip().splitlines()[-1]
            self.imported = True
        super().start(timeout)


class Dovecot(Server):
    """A private Dovecot on loopback ports, or with no listeners (doveadm only).

    ``passwd`` is a Dovecot passwd-file (mailsrv's users file is one); with
    ``passwd=None`` any password is accepted (doveadm use).  Mail lives in
    ``TOP/mail/USER/Maildir``, the layout :class:`Mailsrv` uses, and
    Dovecot's index and uidlist sit in the Maildir as usual.  ``index``
    moves them out of the tree (``INDEX=`` and ``CONTROL=``), so a tree can
    be shared with mailsrv and still be opened cold.
    """

    name = "dovecot"

    def __init__(
        self,
        top: str,
        passwd: str | None,
        *,
        protocols: Sequence[str] = ("imap", "pop3"),
        cpus: set[int] | None = None,
        mail: str | None = None,
        index: str | None = None,
        process_limit: int = 1000,
        performance_login: bool = False,
    ) -> None:
        super().__init__(top, cpus=cpus)
        self.binary = shutil.which("dovecot") or "/usr/sbin/dovecot"
        if not os.path.exists(self.binary):
            raise RuntimeError("dovecot not found (apt-get install dovecot-imapd dovecot-pop3d)")
        self.mail = mail or os.path.join(top, "mail")
        self.config = os.path.join(top, "dovecot.conf")
        self.protocols = tuple(protocols)
        for sub in ("run", "state"):
            os.makedirs(os.path.join(top, sub), exist_ok=True)
        os.makedirs(self.mail, exist_ok=True)
        self.imap_port = free_port() if "imap" in self.protocols else 0
        self.pop3_port = free_port() if "pop3" in self.protocols else 0
        location = f"maildir:{self.mail}/%u/Maildir"
        if index is not None:
            location += f":INDEX={index}/%u:CONTROL={index}/%u"
        # Internal processes (login, anvil, log) run as an unprivileged user
        # that must reach base_dir.  Dovecot refuses to read mail as root, so
        # when we are root its mail processes run as nobody, who must own the
        # Maildirs (:meth:`own`); otherwise as ourselves.
        internal = "dovenull" if _has_user("dovenull") else "nobody"
        internal_group = "nogroup" if internal == "nobody" else internal
        if os.getuid() == 0:
            nobody = pwd.getpwnam("nobody")
            self.uid, self.gid = nobody.pw_uid, nobody.pw_gid
        else:
            self.uid, self.gid = os.getuid(), os.getgid()
        os.chmod(top, 0o755)
        if passwd is None:
            passdb_driver, passdb_args = "static", "nopassword=y"
        else:
            passdb_driver, passdb_args = "passwd-file", f"scheme=PLAIN username_format=%u {passwd}"
        with open(self.config, "w") as f:
            f.write(
                DOVECOT_CONFIG.format(
                    top=top,
                    protocols=" ".join(self.protocols) or "",
                    internal_user=internal,
                    internal_group=internal_group,
                    mail_location=location,
                    mail=self.mail,
                    uid=self.uid,
                    gid=self.gid,
                    passdb_driver=passdb_driver,
                    passdb_args=passdb_args,
                    imap_port=self.imap_port or 0,
                    pop3_port=self.pop3_port or 0,
                    process_limit=process_limit,
                    client_limit=2 * process_limit + 100,
                    service_client_limit=4 * process_limit + 100,
                )
            )
            if performance_login:
                # Dovecot's "high-performance mode": long-lived login
                # processes, each serving many connections, kept ready.
                workers = len(cpus) if cpus else os.cpu_count() or 1
                for service in ("imap-login", "pop3-login"):
                    f.write(
                        f"service {service} {{\n  service_count = 0\n"
                        f"  process_min_avail = {workers}\n}}\n"
                    )

    def mail_root(self, user: str) -> str:
        return os.path.join(self.mail, user, "Maildir")

    def own(self, path: str | None = None) -> None:
        """Give the mail user the tree at ``path`` (default: all mail).

        Hard-linked files share their owner with the other server's tree;
        mailsrv, running as root, reads them either way.
        """
        path = path or self.mail
        if (self.uid, self.gid) == (os.getuid(), os.getgid()):
            return
        os.chown(path, self.uid, self.gid)
        for directory, dirs, files in os.walk(path):
            for name in dirs + files:
                os.lchown(os.path.join(directory, name), self.uid, self.gid)

    def start(self, timeout: float = 60) -> None:
        self._spawn([self.binary, "-F", "-c", self.config])
        assert self.process is not None
        if self.imap_port:
            wait_for_port(self.imap_port, self.process, self.log_path, timeout)
            return
        socket_path = os.path.join(self.top, "run", "auth-userdb")
        deadline = time.monotonic() + timeout
        while not os.path.exists(socket_path):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"dovecot did not start; see {self.log_path}")
            time.sleep(0.05)  # a benchmark script, not a test: waiting for a daemon

    def doveadm(self, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        doveadm = shutil.which("doveadm") or "/usr/bin/doveadm"
        return subprocess.run(
            [doveadm, "-c", self.config, *args], input=stdin, capture_output=True, check=False
        )


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


@contextlib.contextmanager
def running(*servers: Server) -> Iterator[None]:
    """Stop every server on the way out, whatever happened."""
    try:
        yield
    finally:
        for server in servers:
            with contextlib.suppress(Exception):
                server.stop()
