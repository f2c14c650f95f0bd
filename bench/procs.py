"""What the benchmarks need of the machine and of the processes they start:
free ports, file-descriptor and inotify limits, hard-linked copies of a
seeded Maildir, and :class:`ProcessTree`, which adds up the CPU time and
memory of a server's whole process tree from ``/proc`` (Dovecot forks a
process per connection; mailsrv's workers are processes too).

A benchmark helper, not part of mailsrv; nothing here is imported by it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence

__all__ = [
    "ProcessTree",
    "clone_tree",
    "free_port",
    "inotify_instances",
    "raise_fd_limit",
    "wait_for_port",
]

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def raise_fd_limit(wanted: int) -> int:
    """Raise this process's open-file limit (inherited by the servers)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = max(soft, wanted)
    if target > hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, target))
            return target
        except (ValueError, OSError):
            target = hard
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return target


INOTIFY_INSTANCES = "/proc/sys/fs/inotify/max_user_instances"


@contextlib.contextmanager
def inotify_instances(at_least: int) -> Iterator[str]:
    """Raise the per-user inotify instance limit for the run, then restore it.

    Dovecot gives each IDLE session (one process each) its own inotify
    instance; past the limit (128 by default) it falls back to polling every
    ``mailbox_idle_check_interval`` (30 s) and logs a warning asking for this
    very change.  mailsrv needs one instance per process.  Yields a note for
    the report.
    """
    try:
        with open(INOTIFY_INSTANCES) as f:
            old = int(f.read())
    except (OSError, ValueError):
        yield "fs.inotify.max_user_instances unknown"
        return
    if old >= at_least:
        yield f"fs.inotify.max_user_instances = {old}"
        return
    try:
        with open(INOTIFY_INSTANCES, "w") as f:
            f.write(str(at_least))
    except OSError:
        yield f"fs.inotify.max_user_instances = {old} (could not raise it: not root?)"
        return
    try:
        yield f"fs.inotify.max_user_instances raised from {old} to {at_least} for the run"
    finally:
        with open(INOTIFY_INSTANCES, "w") as f:
            f.write(str(old))


def wait_for_port(port: int, process: subprocess.Popen[bytes], log: str, timeout: float) -> None:
    """Wait until something accepts on 127.0.0.1:``port`` and sends a greeting."""
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with status {process.returncode}; see {log}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
                if sock.recv(1):
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"nothing answered on port {port} within {timeout:.0f} s; see {log}")
        time.sleep(0.05)  # a benchmark script, not a test: waiting for a daemon


def clone_tree(source: str, target: str) -> int:
    """Hard-link every file of ``source`` into a new tree ``target``.

    Directories are created (same modes); files are linked, so both trees
    share inodes and modification times; renames and unlinks in one tree
    leave the other alone.  Falls back to copying across file systems.
    Returns the number of files.
    """
    count = 0
    for directory, dirs, files in os.walk(source):
        rel = os.path.relpath(directory, source)
        out = os.path.normpath(os.path.join(target, rel))
        os.makedirs(out, mode=0o700, exist_ok=True)
        for name in files:
            src = os.path.join(directory, name)
            dst = os.path.join(out, name)
            try:
                os.link(src, dst)
            except OSError:
                shutil.copy2(src, dst)
            count += 1
        dirs.sort()
    # Directory times last: a mailbox nobody touched lately.
    for directory, _dirs, _files in os.walk(source):
        rel = os.path.relpath(directory, source)
        out = os.path.normpath(os.path.join(target, rel))
        info = os.stat(directory)
        os.utime(out, ns=(info.st_atime_ns, info.st_mtime_ns))
    return count


# -- measuring a process tree ------------------------------------------------------


class ProcessTree:
    """A server's process and all its descendants, read from ``/proc``."""

    def __init__(self, root: int) -> None:
        self.root = root

    def pids(self) -> list[int]:
        children: dict[int, list[int]] = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            stat = _read_stat(int(entry))
            if stat is not None:
                children.setdefault(int(stat[2]), []).append(int(entry))
        out: list[int] = []
        todo = [self.root]
        while todo:
            pid = todo.pop()
            out.append(pid)
            todo.extend(children.get(pid, ()))
        return out

    def cpu_seconds(self) -> float:
        """User + system time of the live processes and of the children they
        have reaped: each CPU second of the tree's history counted once."""
        ticks = 0
        for pid in self.pids():
            stat = _read_stat(pid)
            if stat is not None:
                # utime, stime, cutime, cstime: fields 14 to 17
                ticks += sum(int(v) for v in stat[12:16])
        return ticks / CLOCK_TICKS

    def rss(self, pids: Sequence[int] | None = None) -> int:
        """Sum of resident set sizes, in bytes (shared pages count in each)."""
        total = 0
        for pid in pids if pids is not None else self.pids():
            stat = _read_stat(pid)
            if stat is not None:
                total += int(stat[22]) * PAGE_SIZE  # rss: field 24
        return total

    def pss(self, pids: Sequence[int] | None = None) -> int:
        """Sum of proportional set sizes, in bytes (shared pages divided)."""
        total = 0
        for pid in pids if pids is not None else self.pids():
            try:
                with open(f"/proc/{pid}/smaps_rollup") as f:
                    for line in f:
                        if line.startswith("Pss:"):
                            total += int(line.split()[1]) * 1024
                            break
            except OSError:
                continue
        return total

    def reset_peak(self) -> None:
        """Reset VmHWM of every process of the tree (Linux >= 4.0, root or owner)."""
        for pid in self.pids():
            with contextlib.suppress(OSError), open(f"/proc/{pid}/clear_refs", "w") as f:
                f.write("5")

    def peak_rss(self) -> int:
        """Sum of VmHWM of the live processes: each process's own peak."""
        total = 0
        for pid in self.pids():
            with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        total += int(line.split()[1]) * 1024
                        break
        return total

    def by_name(self, name: str) -> list[int]:
        """Live processes of the tree whose command name is ``name``."""
        out = []
        for pid in self.pids():
            stat = _read_stat(pid)
            if stat is not None and stat[0] == name:
                out.append(pid)
        return out


def _read_stat(pid: int) -> list[str] | None:
    """``/proc/PID/stat`` as a list where index ``n - 2`` is field ``n`` of
    proc(5): [comm, state, ppid, ...]; comm (field 2) may hold spaces."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except OSError:
        return None
    open_paren = data.find("(")
    close_paren = data.rfind(")")
    return [data[open_paren + 1 : close_paren], *data[close_paren + 2 :].split()]
