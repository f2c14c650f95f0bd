"""What bench/load.py and bench/fetch.py share: the two servers set up with
the same users and mailboxes, measurement of a server's process tree while
a workload runs, and tables.

:class:`Pair` builds, in one temporary directory, a users file (through
``mailsrv user add``), seeded Maildirs hard-linked into both servers' roots,
mailsrv and Dovecot started on loopback ports, and warms every mailbox on
both (LOGIN, SELECT, ``FETCH 1:* (FLAGS)``, LOGOUT: each server builds its
index).  :class:`Meter` wraps one workload run on one server and reports its
CPU seconds (the server's whole process tree, from ``/proc``) and peak RSS.

A benchmark helper, not part of mailsrv.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence

import attrs

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from clients import IMAPClient
from corpus import build_maildir
from peers import Dovecot, Mailsrv, Server, dovecot_version
from procs import ProcessTree, clone_tree

__all__ = [
    "MailboxSpec",
    "Meter",
    "Pair",
    "Usage",
    "machine_info",
    "markdown_table",
    "percentile",
    "pin_self",
]

PASSWORD = "bench-secret"
MIB = 1024 * 1024


@attrs.frozen
class MailboxSpec:
    """A user and the INBOX they start with."""

    user: str
    messages: int = 0
    scheme: str = "PLAIN"
    seed: int = 1


def pin_self(enabled: bool) -> tuple[set[int] | None, str]:
    """Keep the load generator off the servers' CPU: ours is CPU 0, theirs the rest.

    Returns the servers' CPU set (None: not pinned) and a note for the report.
    """
    cpus = sorted(os.sched_getaffinity(0))
    if not enabled or len(cpus) < 2:
        return None, f"not pinned ({len(cpus)} CPUs)"
    os.sched_setaffinity(0, {cpus[0]})
    rest = set(cpus[1:])
    return (
        rest,
        f"load generator on CPU {cpus[0]}, servers on CPU {','.join(map(str, sorted(rest)))}",
    )


class Pair:
    """mailsrv and Dovecot with the same users and the same mailboxes."""

    def __init__(
        self,
        mailboxes: Sequence[MailboxSpec],
        *,
        servers: Sequence[str] = ("mailsrv", "dovecot"),
        cpus: set[int] | None = None,
        keep: bool = False,
        dovecot_processes: int = 1000,
        dovecot_performance_login: bool = False,
        mailsrv_workers: int | None = None,
        log: Callable[[str], None] = print,
    ) -> None:
        self.mailboxes = list(mailboxes)
        self.wanted = list(servers)
        self.cpus = cpus
        self.keep = keep
        self.dovecot_processes = dovecot_processes
        self.dovecot_performance_login = dovecot_performance_login
        self.mailsrv_workers = mailsrv_workers
        self.log = log
        self.top = tempfile.mkdtemp(prefix="mailsrv-bench-")
        os.chmod(self.top, 0o755)  # Dovecot's mail processes run as nobody
        self.passwd = os.path.join(self.top, "passwd")
        self.servers: list[Server] = []
        self.seconds: dict[str, float] = {}

    def __enter__(self) -> Pair:
        try:
            self._setup()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for server in self.servers:
            try:
                server.stop()
            except Exception as e:  # keep stopping the others
                self.log(f"stopping {server.name} failed: {e}")
        if self.keep:
            self.log(f"kept {self.top}")
        else:
            shutil.rmtree(self.top, ignore_errors=True)

    def _timed(self, label: str, action: Callable[[], object]) -> None:
        started = time.perf_counter()
        action()
        self.seconds[label] = time.perf_counter() - started
        self.log(f"  {label}: {self.seconds[label]:.1f} s")

    def _setup(self) -> None:
        self.log(f"setting up in {self.top}")
        mailsrv = Mailsrv(
            os.path.join(self.top, "mailsrv"),
            self.passwd,
            cpus=self.cpus,
            workers=self.mailsrv_workers,
        )

        def add_users() -> None:
            for spec in self.mailboxes:
                mailsrv.add_user(spec.user, PASSWORD, spec.scheme)

        self._timed(f"mailsrv user add x{len(self.mailboxes)}", add_users)
        seed_root = os.path.join(self.top, "seed")
        total = sum(spec.messages for spec in self.mailboxes)
        self._timed(f"write {total} messages", lambda: self._seed(seed_root))
        self._choose_servers(mailsrv)
        self._timed(
            "hard-link the mailboxes into both servers' trees", lambda: self._clone(seed_root)
        )
        for server in self.servers:
            self._timed(f"start {server.name}", server.start)
        for server in self.servers:
            self._timed(f"warm {server.name}", lambda s=server: asyncio.run(self.warm(s)))

    def _seed(self, seed_root: str) -> None:
        for spec in self.mailboxes:
            root = os.path.join(seed_root, spec.user, "Maildir")
            build_maildir(root, spec.messages, spec.seed)

    def _choose_servers(self, mailsrv: Mailsrv) -> None:
        if "mailsrv" in self.wanted:
            self.servers.append(mailsrv)
        if "mailsrv-pg" in self.wanted:
            from peers import MailsrvPostgres

            self.servers.append(
                MailsrvPostgres(os.path.join(self.top, "mailsrv-pg"), self.passwd, cpus=self.cpus)
            )
        if "dovecot" in self.wanted:
            self.servers.append(
                Dovecot(
                    os.path.join(self.top, "dovecot"),
                    self.passwd,
                    cpus=self.cpus,
                    process_limit=self.dovecot_processes,
                    performance_login=self.dovecot_performance_login,
                )
            )

    def _clone(self, seed_root: str) -> None:
        for server in self.servers:
            for spec in self.mailboxes:
                source = os.path.join(seed_root, spec.user, "Maildir")
                clone_tree(source, server.mail_root(spec.user))
            if isinstance(server, Dovecot):
                server.own()

    def restart(self, server: Server, users: Sequence[str]) -> None:
        """Stop and start ``server`` and warm the mailboxes of ``users`` again."""
        server.stop()
        server.start()
        asyncio.run(self.warm(server, users))

    async def warm(self, server: Server, users: Sequence[str] | None = None) -> None:
        """Every mailbox opened once: the server builds or loads its index."""
        for spec in self.mailboxes:
            if users is not None and spec.user not in users:
                continue
            client = await IMAPClient.connect("127.0.0.1", server.imap_port)
            reply = await client.login(spec.user, PASSWORD)
            if not reply.ok:
                raise RuntimeError(f"{server.name}: LOGIN {spec.user} failed: {reply.text!r}")
            reply = await client.select()
            if not reply.ok:
                raise RuntimeError(f"{server.name}: SELECT as {spec.user} failed: {reply.text!r}")
            if client.exists != spec.messages:
                raise RuntimeError(
                    f"{server.name}: {spec.user} has {client.exists} messages, "
                    f"expected {spec.messages}"
                )
            if spec.messages:
                await client.command("FETCH 1:* (FLAGS)")
            await client.logout()

    def server(self, name: str) -> Server:
        for server in self.servers:
            if server.name == name:
                return server
        raise KeyError(name)


# -- measuring -------------------------------------------------------------------------


@attrs.define
class Usage:
    """What one workload cost a server."""

    cpu: float = 0.0  # seconds, user + system, whole process tree
    peak_rss: int = 0  # bytes
    wall: float = 0.0


class Meter:
    """Measure a server's process tree around a piece of work.

    CPU time comes from ``/proc/PID/stat`` of every process of the tree
    (reaped children included).  Peak RSS is the larger of the biggest sum
    of the tree's RSS seen by a sampling thread (which catches Dovecot's
    short-lived per-connection processes) and the sum of the live processes'
    high-water marks (VmHWM, reset first: exact for mailsrv's one process).
    """

    def __init__(self, server: Server, interval: float = 0.2) -> None:
        self.server = server
        self.tree: ProcessTree = server.tree
        self.interval = interval
        self.usage = Usage()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._cpu0 = 0.0
        self._t0 = 0.0

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.usage.peak_rss = max(self.usage.peak_rss, self.tree.rss())

    def __enter__(self) -> Meter:
        self.tree.reset_peak()
        self.usage.peak_rss = self.tree.rss()
        self._cpu0 = self.tree.cpu_seconds()
        self._t0 = time.perf_counter()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.usage.wall = time.perf_counter() - self._t0
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.usage.cpu = self.tree.cpu_seconds() - self._cpu0
        # Each live process's own high-water mark since the reset; their sum
        # is exact for one process and an upper bound for several.
        self.usage.peak_rss = max(self.usage.peak_rss, self.tree.peak_rss())


# -- reporting -------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by nearest rank; nan for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def ratio(ours: float, theirs: float) -> str:
    if not theirs or theirs != theirs or ours != ours:
        return "-"
    return f"{ours / theirs:.2f}"


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    text_rows = [[str(c) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in text_rows:
        for n, cell in enumerate(row):
            widths[n] = max(widths[n], len(cell))

    def line(cells: Sequence[str]) -> str:
        padded = [
            cell.ljust(widths[n]) if n == 0 else cell.rjust(widths[n])
            for n, cell in enumerate(cells)
        ]
        return "| " + " | ".join(padded) + " |"

    out = [line(list(headers))]
    out.append(
        "|" + "|".join("-" * (w + 1) + (":" if n else "-") for n, w in enumerate(widths)) + "|"
    )
    out.extend(line(row) for row in text_rows)
    return "\n".join(out)


def _git_commit() -> str:
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run(
        ["git", "-C", here, "log", "-1", "--format=%h %s"],
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout.strip() or "unknown"


def machine_info(pin_note: str) -> list[str]:
    """Lines describing where and with what the numbers were taken."""
    with open("/proc/loadavg") as f:
        load = " ".join(f.read().split()[:3])
    mailsrv = Mailsrv.__module__
    try:
        import mailsrv as package
        from mailsrv import __version__

        mailsrv = f"mailsrv {__version__} ({os.path.dirname(package.__file__)})"
    except ImportError:
        mailsrv = "mailsrv (not importable here)"
    return [
        f"uname -a: {' '.join(platform.uname())}",
        f"nproc: {os.cpu_count()}  ({pin_note})",
        f"Python: {sys.version.split()[0]}",
        f"Dovecot: {dovecot_version() or 'not installed'}",
        f"{mailsrv}; checkout at {_git_commit()}",
        f"load average before the run: {load}",
    ]


def add_mailbox_options(
    parser: argparse.ArgumentParser,
    *,
    repeat: int,
    repeat_help: str,
    quick_runs: int,
    servers_help: str = "comma-separated: mailsrv, dovecot",
    keep: bool = True,
    unit: str = "runs",
) -> None:
    """The options every one-mailbox comparison takes: size, runs, a quick
    form, which servers, pinning and keeping the tree."""
    parser.add_argument("--messages", type=int, default=100_000, help="mailbox size")
    parser.add_argument("--repeat", type=int, default=repeat, help=repeat_help)
    parser.add_argument(
        "--quick", action="store_true", help=f"10,000 messages, {quick_runs} {unit}"
    )
    parser.add_argument("--servers", default="mailsrv,dovecot", help=servers_help)
    parser.add_argument("--no-pin", action="store_true", help="do not pin client and servers")
    if keep:
        parser.add_argument("--keep", action="store_true", help="keep the temporary tree")


def begin_report(
    args: argparse.Namespace, quick_runs: int, title: str, runs: str
) -> tuple[set[int] | None, list[str]]:
    """Apply ``--quick``, pin this process, print the report's heading
    (``title`` and ``runs`` may name ``{messages}`` and ``{repeat}``) and
    the machine; the CPUs for the servers and the servers asked for."""
    if args.quick:
        args.messages = min(args.messages, 10_000)
        args.repeat = min(args.repeat, quick_runs)
    cpus, pin_note = pin_self(not args.no_pin)
    print("# " + title.format(messages=args.messages, repeat=args.repeat))
    print()
    for line in machine_info(pin_note):
        print(f"- {line}")
    print("- " + runs.format(messages=args.messages, repeat=args.repeat))
    print()
    return cpus, [s.strip() for s in args.servers.split(",") if s.strip()]
