#!/usr/bin/env python3
"""What a hostile authenticated client can make one command cost, mailsrv
beside Dovecot: server CPU seconds, wall time, the answer, and the worst
latency of a bystander's NOOPs (another session of another user, sending
NOOP after NOOP while the command runs).

Builds an INBOX of ``--messages`` messages (``bench/corpus.py``), then runs
each case of :data:`CASES` once per server on one connection while a
second connection measures NOOP round trips.  The figures say whether one
command holds the reactor (a bystander NOOP waiting for it) and how the
per-command CPU budget (``limits.command_cpu_seconds``, docs/security.md)
ends the costly ones with ``NO [LIMIT]``.

Run: ``python bench/pathological.py [--messages N] [--cases NAME...]`` (with an
editable install, ``PYTHONPATH=.`` so that twistd finds the mailsrv plugin).  Recorded
in docs/security.md, "Costly commands".
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import sys
import time
from collections.abc import Callable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from clients import IMAPClient
from harness import PASSWORD, MailboxSpec, Meter, Pair, machine_info, markdown_table, pin_self
from peers import Server

HOST = "127.0.0.1"


def _words(n: int) -> list[str]:
    """n distinct short words (aa, ab, ...)."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    out = []
    for i in range(n):
        word = ""
        i += 26
        while i:
            word = letters[i % 26] + word
            i //= 26
        out.append(word)
    return out


def _not_text(n: int) -> str:
    # An AND of NOTs cannot stop early: every key is tested on every message.
    return "SEARCH " + " ".join(f"NOT TEXT {w}" for w in _words(n))


def _or_chain(n: int) -> str:
    # OR k1 OR k2 OR k3 ... kn: a right-leaning tree n deep.
    words = _words(n)
    return "SEARCH " + "".join(f"OR BODY {w} " for w in words[:-1]) + f"BODY {words[-1]}"


def _or_parens(n: int) -> str:
    words = _words(n)
    return "SEARCH " + " ".join(
        f"(OR BODY {a} HEADER X-{b} {b})" for a, b in itertools.pairwise(words)
    )


def _headers(n: int) -> str:
    return "SEARCH " + " ".join(f"NOT HEADER X-{w} z" for w in _words(n))


def _odd_set(n: int) -> str:
    return ",".join(str(i) for i in range(1, 2 * n, 2))


def _sections(n: int) -> str:
    return "FETCH 1:* (" + " ".join(f"BODY.PEEK[1]<{i}.{i + 1}>" for i in range(n)) + ")"


#: name -> the command, given the mailbox size.
CASES: dict[str, Callable[[int], str]] = {
    "noop": lambda m: "NOOP",
    "text-1": lambda m: "SEARCH TEXT zzzzzz",
    "not-text-100": lambda m: _not_text(100),
    "not-text-4000": lambda m: _not_text(4000),
    "or-chain-30": lambda m: _or_chain(30),
    "or-parens-2000": lambda m: _or_parens(2000),
    "header-names-16": lambda m: _headers(16),
    "header-names-100": lambda m: _headers(100),
    "needle-60k": lambda m: "SEARCH BODY " + "x" * 60000,
    "seqset-10000-search": lambda m: "SEARCH " + _odd_set(10000),
    "seqset-fetch": lambda m: "FETCH " + _odd_set(m // 2) + " (FLAGS)",
    "seqset-uid-fetch-10000": lambda m: "UID FETCH " + _odd_set(10000) + " (FLAGS)",
    "sections-256": lambda m: _sections(256),
    "sections-2000": lambda m: _sections(2000),
    "sort-subject": lambda m: "SORT (SUBJECT FROM) UTF-8 ALL",
    "thread-refs": lambda m: "THREAD REFERENCES UTF-8 ALL",
    "bodystructure": lambda m: "FETCH 1:* (BODYSTRUCTURE)",
}


async def bystander(server: Server, user: str, stop: asyncio.Event) -> float:
    """Worst NOOP round trip while ``stop`` is not set."""
    client = await IMAPClient.connect(HOST, server.imap_port)
    await client.login(user, PASSWORD)
    await client.select()
    worst = 0.0
    while not stop.is_set():
        started = time.perf_counter()
        await client.command("NOOP")
        worst = max(worst, time.perf_counter() - started)
    await client.logout()
    return worst


async def one(server: Server, command: str) -> tuple[str, float, float, float]:
    """(answer, CPU seconds, wall seconds, worst bystander NOOP)."""
    client = await IMAPClient.connect(HOST, server.imap_port)
    await client.login("abuse", PASSWORD)
    await client.select()
    stop = asyncio.Event()
    watcher = asyncio.create_task(bystander(server, "bystander", stop))
    await asyncio.sleep(0.2)  # the bystander is logged in and looping
    with Meter(server) as meter:
        reply = await client.command(command)
    stop.set()
    worst = await watcher
    await client.logout()
    answer = reply.status + " " + reply.text.decode("ascii", "replace")[:40]
    return answer, meter.usage.cpu, meter.usage.wall, worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--cases", nargs="*", default=list(CASES))
    parser.add_argument("--servers", nargs="*", default=["mailsrv", "dovecot"])
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    cpus, pin_note = pin_self(False)
    specs = [MailboxSpec("abuse", args.messages), MailboxSpec("bystander", 10)]
    rows = []
    with Pair(specs, servers=args.servers, cpus=cpus, mailsrv_workers=1, keep=args.keep) as pair:
        for name in args.cases:
            for server in pair.servers:
                command = CASES[name](args.messages)
                answer, cpu, wall, worst = asyncio.run(one(server, command))
                rows.append(
                    [
                        name,
                        server.name,
                        len(command),
                        f"{cpu:.2f}",
                        f"{wall:.2f}",
                        f"{worst * 1000:.0f}",
                        answer,
                    ]
                )
                print(" | ".join(str(c) for c in rows[-1]), flush=True)
    print()
    print("\n".join(machine_info(pin_note)))
    print(f"load average: {os.getloadavg()}")
    print(
        markdown_table(
            ["case", "server", "octets", "CPU s", "wall s", "worst NOOP ms", "answer"], rows
        )
    )


if __name__ == "__main__":
    main()
