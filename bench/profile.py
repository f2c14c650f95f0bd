#!/usr/bin/env python3
"""Profile mailsrv from outside while it serves one command or one workload.

Starts mailsrv alone (as ``bench/load.py`` does: ``twistd -n mailsrv``,
users from ``mailsrv user add``, a seeded Maildir), warms it, attaches
``py-spy record`` to the twistd process, and either sends one IMAP command
``--repeat`` times on one connection (``--imap``) or runs one workload of
``bench/load.py`` (``--workload``, quick scale).  It then prints the
functions with the most samples, by own time and including callees, with
file and line, so a hot spot can be named without touching the server.

Needs py-spy (``pip install py-spy``) and root or ptrace rights.

Run: ``python bench/profile.py --messages 100000 --imap "FETCH 1:* (FLAGS)"``
or ``python bench/profile.py --workload mixed``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import load
import workloads
from clients import IMAPClient
from harness import PASSWORD, MailboxSpec, Meter, Pair, pin_self
from peers import Server

#: Frames every sample passes through (twistd and the reactor loop).
_ENTRY = ("twisted/scripts/", "twisted/application/", "(twistd", "ReactorBase.")


def _function(frame: str) -> str:
    """``name (path:line)`` -> ``name (path)``."""
    name, _, where = frame.partition(" (")
    return f"{name} ({where.rpartition(':')[0] or where.rstrip(')')})"


def aggregate(raw: str, top: int) -> str:
    """Own and inclusive sample shares per function from py-spy's raw output."""
    own: collections.Counter[str] = collections.Counter()
    own_lines: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    with open(raw) as f:
        for line in f:
            stack, _, count_text = line.rstrip("\n").rpartition(" ")
            if not stack or not count_text.isdigit():
                continue
            count = int(count_text)
            frames = [frame for frame in stack.split(";") if frame]
            if not frames:
                continue
            total += count
            own[_function(frames[-1])] += count
            own_lines[frames[-1]] += count
            for function in {_function(frame) for frame in frames}:
                if not any(marker in function for marker in _ENTRY):
                    inclusive[function] += count
    if not total:
        return "no samples (was the server busy?)"
    lines = [f"{total} samples", "", "own time, by function:"]
    lines += [f"  {100 * n / total:5.1f}%  {name}" for name, n in own.most_common(top)]
    lines += ["", "own time, by line:"]
    lines += [f"  {100 * n / total:5.1f}%  {name}" for name, n in own_lines.most_common(top)]
    lines += ["", "including callees, by function:"]
    lines += [f"  {100 * n / total:5.1f}%  {name}" for name, n in inclusive.most_common(top)]
    return "\n".join(lines)


async def repeat_command(port: int, user: str, command: str, repeat: int) -> list[float]:
    client = await IMAPClient.connect("127.0.0.1", port)
    await client.login(user, PASSWORD)
    await client.select()
    times = []
    for _ in range(repeat):
        reply = await client.command(command)
        if not reply.ok:
            raise SystemExit(f"{command}: {reply.status} {reply.text!r}")
        times.append(reply.seconds)
    await client.logout()
    return times


def attach(server: Server, rate: int = 200) -> tuple[subprocess.Popen[bytes], str]:
    """Start ``py-spy record`` on ``server``'s process; returns it and its output file."""
    py_spy = shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable), "py-spy")
    if not os.path.exists(py_spy):
        raise SystemExit("py-spy not found: pip install py-spy")
    assert server.process is not None
    raw = tempfile.mktemp(suffix=".txt", prefix="py-spy-")
    argv = [py_spy, "record", "--pid", str(server.process.pid), "--rate", str(rate)]
    argv += ["--format", "raw", "--output", raw, "--nonblocking"]
    spy = subprocess.Popen(
        argv,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    time.sleep(1.0)  # py-spy attaches
    return spy, raw


def detach(spy: subprocess.Popen[bytes], raw: str, top: int = 25) -> str:
    """Stop py-spy and give its samples as :func:`aggregate` shows them."""
    spy.send_signal(2)  # SIGINT: py-spy writes its output and exits
    _, err = spy.communicate(timeout=60)
    if not os.path.exists(raw):
        raise SystemExit(f"py-spy wrote nothing: {err.decode(errors='replace')}")
    try:
        return aggregate(raw, top)
    finally:
        os.unlink(raw)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--imap", help="the IMAP command to profile (after SELECT INBOX)")
    what.add_argument("--workload", choices=load.WORKLOADS, help="a bench/load.py workload")
    parser.add_argument("--messages", type=int, default=10_000, help="INBOX size for --imap")
    parser.add_argument("--repeat", type=int, default=3, help="times to send --imap")
    parser.add_argument(
        "--cold",
        action="store_true",
        help="profile the first --imap too (default: send it once before attaching, so the "
        "profile shows a warm server, as bench/fetch.py times it)",
    )
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    parser.add_argument("--top", type=int, default=25, help="functions to list")
    parser.add_argument("--raw", help="keep py-spy's raw (collapsed) output here")
    args = parser.parse_args()
    py_spy = shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable), "py-spy")
    if not os.path.exists(py_spy):
        raise SystemExit("py-spy not found: pip install py-spy")
    cpus, _ = pin_self(True)
    scale = workloads.Scale.quick()
    if args.imap:
        specs = [MailboxSpec("big", args.messages, seed=3)]
    else:
        specs = load.specs_for([args.workload], scale)
    with Pair(specs, servers=("mailsrv",), cpus=cpus) as pair:
        server = pair.server("mailsrv")
        if args.workload == "idle":
            pair.restart(server, [s.user for s in specs if s.user.startswith("idle")])
        assert server.process is not None
        if args.imap and not args.cold:
            asyncio.run(repeat_command(server.imap_port, "big", args.imap, 1))
        raw = args.raw or tempfile.mktemp(suffix=".txt", prefix="py-spy-")
        spy = subprocess.Popen(
            [
                py_spy,
                "record",
                "--pid",
                str(server.process.pid),
                "--rate",
                str(args.rate),
                "--format",
                "raw",
                "--output",
                raw,
                "--nonblocking",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        time.sleep(1.0)  # py-spy attaches
        started = time.perf_counter()
        with Meter(server) as meter:
            if args.imap:
                times = asyncio.run(repeat_command(server.imap_port, "big", args.imap, args.repeat))
                summary = ", ".join(f"{t:.3f}" for t in times)
                print(f"{args.imap}: {summary} s")
            else:
                for _title, make in load.jobs_for(args.workload, scale):
                    result = asyncio.run(make(server)(meter))
                    print(f"{args.workload}: {result.ops} {result.unit} in {result.seconds:.1f} s")
        elapsed = time.perf_counter() - started
        print(f"server CPU {meter.usage.cpu:.2f} s of {elapsed:.2f} s")
        spy.send_signal(2)  # SIGINT: py-spy writes its output and exits
        _, err = spy.communicate(timeout=60)
        if not os.path.exists(raw):
            raise SystemExit(f"py-spy wrote nothing: {err.decode(errors='replace')}")
    print(aggregate(raw, args.top))
    if not args.raw:
        os.unlink(raw)


if __name__ == "__main__":
    main()
