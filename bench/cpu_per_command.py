#!/usr/bin/env python3
"""CPU per command, over many runs in a row, mailsrv beside Dovecot.

``bench/fetch.py`` measures each run on its own, and the kernel counts a
process's CPU in 10 ms ticks: a command of 5 to 15 ms shows as 0.01 s on
both sides.  This script builds the same INBOX (``--messages``, the corpus
of ``bench/corpus.py``) in both servers, warms each command with one run,
then runs it ``--repeat`` times back to back on one connection under one
meter, and prints the server's CPU milliseconds per run (the meter's total
divided by the runs) and the ratio mailsrv/Dovecot.  The answers of the two
servers are compared (the numbers of the ``* SEARCH`` lines).

Run: ``python bench/cpu_per_command.py [--messages N] [--repeat R]
[--commands 'SEARCH UNSEEN;UID SEARCH UNSEEN']``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from clients import IMAPClient
from corpus import PLANTED
from harness import PASSWORD, MailboxSpec, Meter, Pair, add_mailbox_options, begin_report
from peers import Server

HOST = "127.0.0.1"
COMMANDS = [
    f'SEARCH HEADER SUBJECT "{PLANTED["subject"][0]}"',
    f'SEARCH FROM "{PLANTED["from"][0]}"',
    "SEARCH UNSEEN",
    "UID SEARCH UNSEEN",
    "SEARCH LARGER 10000",
]


async def run_server(
    server: Server, commands: list[str], repeat: int
) -> dict[str, tuple[float, int]]:
    """``{command: (CPU seconds per run, answers)}`` on one connection."""
    client = await IMAPClient.connect(HOST, server.imap_port)
    reply = await client.login("big", PASSWORD)
    if not reply.ok:
        raise RuntimeError(f"{server.name}: LOGIN failed: {reply.text!r}")
    await client.select()
    out: dict[str, tuple[float, int]] = {}
    for text in commands:
        print(f"  {server.name}: {text}", flush=True)
        warm = await client.command(text, keep=True)
        if not warm.ok:
            raise RuntimeError(f"{server.name}: {text}: {warm.status} {warm.text!r}")
        hits = sum(len(line.split()) - 2 for line in warm.untagged if b"SEARCH" in line[:12])
        with Meter(server, interval=0.1) as meter:
            for _ in range(repeat):
                await client.command(text, keep=True)
        out[text] = (meter.usage.cpu / repeat, hits)
    await client.logout()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_mailbox_options(
        parser, repeat=30, repeat_help="runs of each command in a row", quick_runs=30
    )
    parser.add_argument(
        "--commands", default=";".join(COMMANDS), help="semicolon-separated commands to run"
    )
    args = parser.parse_args()
    commands = [c.strip() for c in args.commands.split(";") if c.strip()]
    cpus, servers = begin_report(
        args,
        30,
        "CPU per command on a {messages}-message INBOX",
        "each command: one untimed run, then {repeat} runs in a row under one meter",
    )
    results: dict[str, dict[str, tuple[float, int]]] = {}
    with Pair(
        [MailboxSpec("big", args.messages, seed=3)], servers=servers, cpus=cpus, keep=args.keep
    ) as pair:
        for server in pair.servers:
            results[server.name] = asyncio.run(run_server(server, commands, args.repeat))
    names = list(results)
    print()
    print("| command | " + " | ".join(f"{n} CPU ms" for n in names) + " | ratio | answers |")
    print("|---|" + "---:|" * (len(names) + 2))
    for text in commands:
        cells = [f"{results[n][text][0] * 1000:.1f}" for n in names]
        ratio = ""
        if {"mailsrv", "dovecot"} <= set(names) and results["dovecot"][text][0] > 0:
            ratio = f"{results['mailsrv'][text][0] / results['dovecot'][text][0]:.2f}x"
        counts = {results[n][text][1] for n in names}
        answers = (
            str(counts.pop())
            if len(counts) == 1
            else "DIFFER: " + str({n: results[n][text][1] for n in names})
        )
        print(f"| {text} | " + " | ".join(cells) + f" | {ratio} | {answers} |")


if __name__ == "__main__":
    main()
