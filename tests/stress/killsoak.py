"""Kill soak: SIGKILL a real daemon at random moments of every write path,
restart it, and check that nothing it acknowledged was lost.

Each cycle connects IMAP sessions (two on INBOX and Archive, one filling
and expunging ``Churn`` so that the UID list gets compacted) and an LMTP
client to a ``twistd -n mailsrv`` started the way users start it, and runs
rounds of random writes on them (APPEND and MULTIAPPEND, UID COPY, UID
MOVE, UID STORE of flags and keywords, EXPUNGE and UID EXPUNGE, CREATE,
RENAME, DELETE, LMTP deliveries) with ``mailsrv deliver`` and ``mailsrv
reindex`` subprocesses now and then.  At a random moment (a random time, or
a few milliseconds after a round's commands went out, or while a
subprocess runs) the daemon is killed with SIGKILL (with ``--workers``,
one worker or the parent), as are, half the time, the subprocesses;
whatever answers were already on their way are still read.  The restarted
daemon is then read whole (LIST, STATUS, EXAMINE, UID FETCH of flags and of
every new body) and checked by :class:`tests.stress.killmodel.Model`.

``python -m tests.stress.killsoak --kills 1000 [--seed N] [--workers-share
0.2] [--[no-]threaded-writes]``: progress on a terminal, a summary at the
end, exit status 1 on any violation.  ``--threaded-writes`` and
``--no-threaded-writes`` set ``[storage] threaded_writes`` (the writer
thread, :mod:`mailsrv.storage.maildir.writer`); without either the daemon's
default holds.  The seed fixes every random choice (operations, kill moments);
what the server was doing at the kill's instant still varies with the
machine's timing, so a replay reaches the same code paths, not always the
same instant.  tests/test_killsoak.py runs a short form in the suite.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import random
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import IO, Any

import attrs

from tests.helpers import Daemon, free_port, mailsrv_command, source_env, twistd_command
from tests.stress.killactors import (
    CHURN,
    FIXED,
    USER,
    Child,
    ImapActor,
    LmtpActor,
    Locks,
    body_of,
    digest,
)
from tests.stress.killaudit import read_all
from tests.stress.killmodel import Box, Model, Pending

#: Seconds for anything the daemon must do (start, answer, stop): a deadline.
DEADLINE = 60.0


def write_config(
    directory: str, imap_port: int, lmtp_port: int, threaded_writes: bool | None = None
) -> str:
    """The daemon's config; ``threaded_writes`` None leaves the default."""
    config = os.path.join(directory, "mailsrv.toml")
    with open(os.path.join(directory, "passwd"), "w") as f:
        f.write(f"{USER}:{{PLAIN}}pw\n")
    with open(config, "w") as f:
        f.write(
            f'[server]\nhostname = "localhost"\n'
            f'[imap]\nlisten = ["tcp:{imap_port}:interface=127.0.0.1"]\n'
            f'[lmtp]\nlisten = ["tcp:{lmtp_port}:interface=127.0.0.1"]\n'
            f'[users]\npasswd_file = "{directory}/passwd"\n'
            "[auth]\nfailure_delay = 0.0\n"
            '[admin]\nsocket = ""\n'
            f'[storage]\nmaildir = "{directory}/mail/{{user}}/Maildir"\n'
        )
        if threaded_writes is not None:
            f.write(f"threaded_writes = {'true' if threaded_writes else 'false'}\n")
    return config


class DiskEvents:
    """inotify on the folders' directories: when a write is under way."""

    #: IN_MODIFY, IN_MOVED_FROM, IN_MOVED_TO, IN_CREATE, IN_DELETE
    MASK = 0x2 | 0x40 | 0x80 | 0x100 | 0x200

    def __init__(self) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self._libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")

    def watch(self, path: str) -> None:
        if self._libc.inotify_add_watch(self.fd, path.encode(), self.MASK) < 0:
            raise OSError(ctypes.get_errno(), f"inotify_add_watch {path}")

    def fileno(self) -> int:
        return int(self.fd)

    def drain(self) -> int:
        """Read the events waiting; how many there were."""
        count = 0
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return count
            offset = 0
            while offset + 16 <= len(data):
                (length,) = struct.unpack_from("I", data, offset + 12)
                offset += 16 + length
                count += 1

    def close(self) -> None:
        os.close(self.fd)


@attrs.define
class Clients:
    """One cycle's connections and subprocesses."""

    actors: list[ImapActor]
    lmtp: LmtpActor
    children: list[Child] = attrs.Factory(list)

    def waiting(self) -> list[socket.socket]:
        """The connections with a command in flight."""
        busy = [a.sock for a in self.actors if a.busy]
        return [*busy, self.lmtp.sock] if self.lmtp.busy else busy

    def pipes(self) -> dict[IO[bytes], Child]:
        """Each subprocess's stderr, which ends when it exits."""
        return {c.process.stderr: c for c in self.children if c.process.stderr is not None}

    def dispatch(self, ready: Sequence[object], model: Model) -> None:
        for actor in self.actors:
            if actor.sock in ready:
                actor.feed()
        if self.lmtp.sock in ready:
            self.lmtp.feed()
        for pipe, child in self.pipes().items():
            if pipe in ready:
                self.children.remove(child)
                child.finish(model)

    def close(self, model: Model) -> list[Pending]:
        """Wait for the subprocesses, close the connections: what was
        left in flight."""
        pending: list[Pending] = []
        for child in self.children:
            child.process.wait(DEADLINE)
            left = child.finish(model)
            if left is not None:
                pending.append(left)
        for actor in self.actors:
            if actor.pending is not None:
                pending.append(actor.pending)
            actor.sock.close()
        if self.lmtp.pending is not None:
            pending.append(self.lmtp.pending)
        self.lmtp.sock.close()
        return pending


@attrs.define
class Stats:
    kills: int = 0
    worker_kills: int = 0
    parent_kills: int = 0
    commands: int = 0
    children: int = 0
    children_killed: int = 0
    in_flight: int = 0
    compactions: int = 0
    compaction_kills: int = 0
    disk_kills: int = 0
    repairs: int = 0
    started: float = attrs.Factory(time.monotonic)


class Soak:
    """One Maildir, one daemon at a time, many kills."""

    def __init__(
        self,
        directory: str,
        seed: int,
        log: str | None = None,
        threaded_writes: bool | None = None,
    ) -> None:
        self.directory = directory
        self.rng = random.Random(seed)
        self.seed = seed
        self.model = Model()
        self.stats = Stats()
        self.imap_port, self.lmtp_port = free_port(), free_port()
        self.threaded_writes = threaded_writes
        self.config = write_config(directory, self.imap_port, self.lmtp_port, threaded_writes)
        self.maildir = os.path.join(directory, "mail", USER, "Maildir")
        self.daemon: Daemon | None = None
        self.workers = 1
        self.labels = 0
        self.log_path = log or os.path.join(directory, "daemon.log")
        self.verified: set[tuple[str, int, int]] = set()
        self._uidlist_ino: int | None = None
        self._log_saved = 0
        self.interrupted = False
        self.kill_at: float | None = None
        self.armed = 0
        self.disk = DiskEvents()

    # -- the daemon ----------------------------------------------------------------------

    def start_daemon(self, workers: int) -> None:
        self.workers = workers
        process = subprocess.Popen(
            [
                *twistd_command(),
                "-n",
                "--pidfile=",
                "mailsrv",
                "--config",
                self.config,
                "--workers",
                str(workers),
            ],
            cwd=self.directory,
            env=source_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.daemon = Daemon(process)
        self._log_saved = 0
        self.daemon.wait_for("IMAP listening on", timeout=DEADLINE)

    def workers_of(self) -> list[int]:
        assert self.daemon is not None
        pid = self.daemon.process.pid
        try:
            with open(f"/proc/{pid}/task/{pid}/children") as f:
                return [int(p) for p in f.read().split()]
        except OSError:
            return []

    def kill(self) -> str:
        """SIGKILL the daemon (or, with workers, one worker or the parent)."""
        assert self.daemon is not None
        self.stats.kills += 1
        if self.workers > 1:
            workers = self.workers_of()
            if workers and self.rng.random() < 0.5:
                os.kill(self.rng.choice(workers), signal.SIGKILL)
                self.stats.worker_kills += 1
                return "worker"
            os.kill(self.daemon.process.pid, signal.SIGKILL)
            self.stats.parent_kills += 1
            return "parent"
        os.killpg(self.daemon.process.pid, signal.SIGKILL)
        return "daemon"

    def reap(self, victim: str) -> None:
        """After a kill of the parent: the workers stop by themselves."""
        assert self.daemon is not None
        if victim == "worker":
            return
        self.daemon.process.wait(DEADLINE)
        self.stop()

    @staticmethod
    def _group_alive(pgid: int) -> bool:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        return True

    def save_log(self) -> None:
        if self.daemon is None:
            return
        lines = self.daemon.output[self._log_saved :]
        self._log_saved += len(lines)
        text = "".join(lines)
        self.stats.repairs += len(re.findall(r"mailsrv\.storage\.maildir[.\w]*#warn", text))
        with open(self.log_path, "a") as f:
            f.write(text)

    # -- connections ---------------------------------------------------------------------

    def connect(self, port: int) -> socket.socket:
        """A connection, once the daemon (or a respawned worker) accepts one."""
        deadline = time.monotonic() + DEADLINE
        while True:
            try:
                return socket.create_connection(("127.0.0.1", port), timeout=DEADLINE)
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)  # a listener appears without notice

    def login(self, name: str, selected: str) -> ImapActor:
        actor = ImapActor(name, self.connect(self.imap_port), self.model, selected)
        actor.sock.settimeout(DEADLINE)
        greeting = b""
        while not greeting.endswith(b"\r\n"):
            chunk = actor.sock.recv(1)
            if not chunk:
                raise ConnectionError("no greeting")
            greeting += chunk
        answer, _ = actor.command(f"LOGIN {USER} pw".encode(), DEADLINE)
        if answer.status != "OK":
            raise RuntimeError(f"LOGIN: {answer.raw!r}")
        if selected:
            answer, _ = actor.command(f"SELECT {selected}".encode(), DEADLINE)
            if answer.status != "OK":
                raise RuntimeError(f"SELECT {selected}: {answer.raw!r}")
        actor.sock.settimeout(None)
        return actor

    def new_label(self) -> str:
        self.labels += 1
        return f"k{self.labels}"

    # -- one cycle: write, kill, restart, check ----------------------------------------

    def setup(self) -> None:
        self.start_daemon(1)
        actor = self.login("setup", "")
        # INBOX and the special-use mailboxes, as a new account has them.
        for name in read_all(actor, self.model, self.verified):
            self.model.boxes[name] = Box()
        for name in (*FIXED[1:], CHURN):
            if name in self.model.boxes:
                continue
            answer, _ = actor.command(f"CREATE {name}".encode(), DEADLINE)
            if answer.status == "OK":
                self.model.created(name)
        actor.sock.close()
        for folder in ("", "." + FIXED[1], "." + CHURN):
            for sub in ("", "tmp", "cur"):
                self.disk.watch(os.path.join(self.maildir, folder, sub))
        self.audit([])

    def cycle(self, workers: int) -> None:
        if self.daemon is None or self.workers != workers:
            self.stop()
            self.start_daemon(workers)
        rng = self.rng
        actors = [self.login("a", FIXED[0]), self.login("b", FIXED[1]), self.login("c", CHURN)]
        lmtp = LmtpActor(self.connect(self.lmtp_port), self.model)
        lmtp.greet(DEADLINE)
        lmtp.sock.settimeout(None)
        clients = Clients(actors, lmtp)
        plan = rng.choices(["timer", "after-send", "disk", "child"], [3, 3, 3, 1])[0]
        self.kill_at = time.monotonic() + rng.uniform(0.0, 1.5) if plan == "timer" else None
        self.armed = 0
        kill_round = rng.randint(0, 5)
        round_no = 0
        while True:
            self.round(clients)
            if round_no == kill_round and plan == "child":
                clients.children.append(self.spawn(rng))
                self.kill_at = time.monotonic() + rng.uniform(0.1, 1.2)
            elif round_no == kill_round and plan == "after-send":
                self.kill_at = time.monotonic() + rng.choice(
                    [0.0, rng.expovariate(200.0), rng.uniform(0.0, 0.1), rng.uniform(0.0, 0.4)]
                )
            elif round_no == kill_round and plan == "disk":
                # At the Nth change on disk from now: inside a write.
                self.disk.drain()
                self.armed = rng.randint(1, 12)
            if self.kill_at is None and self.compaction_due(clients.actors[2]):
                # The churner's EXPUNGE is about to compact the UID list.
                self.kill_at = time.monotonic() + rng.uniform(0.0, 0.1)
                self.stats.compaction_kills += 1
            if not self.pump(clients):
                break
            round_no += 1
            if self.armed and round_no > kill_round + 20:
                self.kill_at = time.monotonic()  # the disk stayed quiet
        self.after_kill(clients)

    def round(self, clients: Clients) -> None:
        """Send a round of writes that touch different messages."""
        rng, locks = self.rng, Locks()
        for actor in clients.actors:
            if rng.random() < 0.7 and actor.start(rng, locks, self.new_label):
                self.stats.commands += 1
        if rng.random() < 0.4:
            clients.lmtp.start(rng, self.new_label())
            self.stats.commands += 1
        if not clients.children and rng.random() < 0.08:
            clients.children.append(self.spawn(rng))

    def compaction_due(self, churner: ImapActor) -> bool:
        """Whether the churner's EXPUNGE in flight will compact the UID list
        (more than twice as many lines as messages, plus 1,000: see
        ``IndexedFolder.maybe_compact``); half the time when it does."""
        if not churner.busy or churner.last_command != "EXPUNGE" or self.rng.random() < 0.5:
            return False
        path = os.path.join(self.maildir, "." + CHURN, "mailsrv-uidlist")
        try:
            with open(path, "rb") as f:
                lines = f.read().count(b"\n") - 1
        except OSError:
            return False
        left = sum(
            1 for _, flags in self.model.boxes[CHURN].messages.values() if "\\Deleted" not in flags
        )
        return lines > 2 * left + 1000

    def spawn(self, rng: random.Random) -> Child:
        self.stats.children += 1
        if rng.random() < 0.3:
            process = subprocess.Popen(
                [*mailsrv_command(), "reindex", USER, "--config", self.config],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                env=source_env(),
            )
            return Child(process, Pending("reindex"))
        label = self.new_label()
        body = body_of(label, rng)
        self.model.bodies[label] = digest(body)
        folder = rng.choice(FIXED)
        process = subprocess.Popen(
            [*mailsrv_command(), "deliver", USER, "--folder", folder, "--config", self.config],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=source_env(),
        )
        assert process.stdin is not None
        process.stdin.write(body)
        process.stdin.close()
        return Child(process, Pending("deliver", box=folder, labels=(label,)))

    def pump(self, clients: Clients) -> bool:
        """Read answers until the round's are in (True) or it is time to
        kill (False): at :attr:`kill_at`, or when :attr:`armed` changes on
        disk have been seen."""
        deadline = time.monotonic() + DEADLINE
        while True:
            waiting = clients.waiting()
            now = time.monotonic()
            if self.kill_at is not None and now >= self.kill_at:
                return False
            if not waiting:
                return True
            if now > deadline:
                raise TimeoutError(f"no answer in {DEADLINE} s (seed {self.seed})")
            pipes = clients.pipes()
            timeout = (self.kill_at if self.kill_at is not None else deadline) - now
            readable: list[Any] = [*waiting, *pipes]
            if self.armed:
                readable.append(self.disk)
            ready, _, _ = select.select(readable, [], [], max(0.0, timeout))
            if self.disk in ready:
                self.armed = max(0, self.armed - self.disk.drain())
                if not self.armed:
                    self.stats.disk_kills += 1
                    self.kill_at = time.monotonic() + self.rng.choice(
                        [0.0, self.rng.uniform(0.0, 0.003)]
                    )
            clients.dispatch(ready, self.model)

    def after_kill(self, clients: Clients) -> None:
        victim = self.kill()
        for child in clients.children:
            if self.rng.random() < 0.5:
                child.killed = True
                child.process.kill()
                self.stats.children_killed += 1
        # Answers already on their way count: the client saw them.
        deadline = time.monotonic() + DEADLINE
        while waiting := clients.waiting():
            ready, _, _ = select.select(waiting, [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                self.model.violation(f"no answer and no close {DEADLINE} s after the kill")
                break
            clients.dispatch(ready, self.model)
        pending = clients.close(self.model)
        self.stats.in_flight += len(pending)
        self.reap(victim)
        if self.daemon is None:
            self.start_daemon(self.workers)
        self.audit(pending)

    # -- reading the restarted server whole ------------------------------------------------

    def audit(self, pending: Sequence[Pending]) -> None:
        actor = self.login("audit", "")
        try:
            seen = read_all(actor, self.model, self.verified)
        finally:
            actor.sock.close()
        before = len(self.model.violations)
        self.model.reconcile(seen, pending)
        self.count_compactions()
        if len(self.model.violations) > before:
            self.save_log()
            self.model.violation(
                f"  (kill {self.stats.kills}, seed {self.seed}; in flight: "
                + "; ".join(p.describe() for p in pending)
                + ")"
            )

    def count_compactions(self) -> None:
        try:
            ino = os.stat(os.path.join(self.maildir, "." + CHURN, "mailsrv-uidlist")).st_ino
        except OSError:
            return
        if self._uidlist_ino is not None and ino != self._uidlist_ino:
            self.stats.compactions += 1
        self._uidlist_ino = ino

    def close(self) -> None:
        self.stop()
        self.disk.close()

    def stop(self) -> None:
        """Stop the daemon (SIGTERM, if it still runs); its workers must
        follow within the deadline."""
        if self.daemon is None:
            return
        self.daemon.stop()
        self.save_log()
        pgid = self.daemon.process.pid
        deadline = time.monotonic() + DEADLINE
        while self._group_alive(pgid):
            if time.monotonic() > deadline:
                self.model.violation(f"a worker outlived its parent by {DEADLINE} s")
                os.killpg(pgid, signal.SIGKILL)
                break
            time.sleep(0.05)  # no notice comes of another's child's exit
        self.daemon = None


def summary(soak: Soak) -> str:
    s, m = soak.stats, soak.model
    elapsed = time.monotonic() - s.started
    return (
        ("interrupted: " if soak.interrupted else "")
        + f"seed {soak.seed}: {s.kills} kills ({s.worker_kills} of a worker, {s.parent_kills} of "
        f"the parent) in {elapsed:.0f} s; {s.commands} writes sent, {m.acknowledged} "
        f"acknowledged, {s.in_flight} in flight at a kill ({m.happened} done, "
        f"{m.not_happened} not, {m.partial_batches} batches in part); {s.children} "
        f"deliver/reindex runs ({s.children_killed} killed); {s.compactions} UID list "
        f"rewrites seen; kills aimed at a change on disk {s.disk_kills}, at a "
        f"compaction {s.compaction_kills}; {s.repairs} "
        f"repairs logged; {len(m.violations)} violations"
    )


def report_progress(soak: Soak, kills: int) -> None:
    line = (
        f"kill {soak.stats.kills}/{kills}  writes {soak.stats.commands}  "
        f"violations {len(soak.model.violations)}  "
        f"{time.monotonic() - soak.stats.started:.0f} s"
    )
    if sys.stdout.isatty():
        print("\r" + line, end="", flush=True)
    elif soak.stats.kills % 50 == 0:
        print(line, flush=True)


def run(
    directory: str,
    kills: int,
    seed: int,
    workers_share: float = 0.0,
    progress: bool = False,
    threaded_writes: bool | None = None,
) -> Soak:
    """``kills`` cycles on a fresh Maildir in ``directory``; the soak with
    its model (violations) and figures."""
    soak = Soak(directory, seed, threaded_writes=threaded_writes)
    # Blocks of up to 50 kills, each ending with its share under two workers.
    block = min(50, kills)
    with_workers = round(block * workers_share)
    try:
        soak.setup()
        for i in range(kills):
            soak.cycle(2 if i % block >= block - with_workers else 1)
            if progress:
                report_progress(soak, kills)
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (main): the summary so far
        soak.interrupted = True
    finally:
        soak.close()
    if progress and sys.stdout.isatty():
        print()
    return soak


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument(
        "--workers-share",
        type=float,
        default=0.2,
        help="share of kills with --workers 2 (the last of each 50)",
    )
    parser.add_argument(
        "--threaded-writes",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="set [storage] threaded_writes (default: the daemon's default)",
    )
    parser.add_argument(
        "--dir", help="keep the Maildir and daemon log here (default: a temporary one)"
    )
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    writer = "" if args.threaded_writes is None else f", threaded_writes {args.threaded_writes}"
    print(f"kill soak: seed {args.seed}, {args.kills} kills{writer}", flush=True)
    if args.dir:
        os.makedirs(args.dir, exist_ok=True)
        soak = run(
            args.dir,
            args.kills,
            args.seed,
            args.workers_share,
            progress=True,
            threaded_writes=args.threaded_writes,
        )
    else:
        with tempfile.TemporaryDirectory(prefix="mailsrv-killsoak-") as directory:
            soak = run(
                directory,
                args.kills,
                args.seed,
                args.workers_share,
                progress=True,
                threaded_writes=args.threaded_writes,
            )
    print(summary(soak))
    for violation in soak.model.violations[:100]:
        print("  " + violation)
    return 1 if soak.model.violations else 0


if __name__ == "__main__":
    sys.exit(main())
