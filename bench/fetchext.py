#!/usr/bin/env python3
"""Time the search and fetch extensions (WITHIN, SAVEDATE, OBJECTID,
PREVIEW) on a 100,000-message mailbox, mailsrv beside Dovecot.

Builds one INBOX of ``--messages`` realistic messages (``bench/corpus.py``)
as ``bench/sort.py`` does, hard-linked into both servers, and on one
connection per server runs each command once cold (the first time: what is
worked out from the files is cached) and ``--repeat`` times warm:

* ``SEARCH YOUNGER 86400`` and ``SEARCH SAVEDSINCE 1-Jan-2000``: index keys
* ``FETCH 1:* (SAVEDATE)``: an index item
* ``FETCH 1:* (PREVIEW (LAZY))`` before any preview was worked out
* ``FETCH 1:* (PREVIEW)``: cold reads every message's text part once
* ``FETCH 1:* (EMAILID THREADID)``: cold reads every file once
* ``SEARCH EMAILID <one>`` and ``SEARCH THREADID <one>``

It prints the cold seconds, the warm median, the ratio mailsrv/Dovecot, the
CPU seconds of each server, and how many responses each answer had (the
IDs themselves differ between servers by design).

Run: ``python bench/fetchext.py [--messages N] [--repeat R] [--quick]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from clients import IMAPClient
from harness import (
    PASSWORD,
    MailboxSpec,
    Meter,
    Pair,
    add_mailbox_options,
    begin_report,
    markdown_table,
    ratio,
)
from peers import Server

HOST = "127.0.0.1"

COMMANDS = [
    "SEARCH YOUNGER 86400",
    "SEARCH SAVEDSINCE 1-Jan-2000",
    "FETCH 1:* (SAVEDATE)",
    "FETCH 1:* (PREVIEW (LAZY))",
    "FETCH 1:* (PREVIEW)",
    "FETCH 1:* (EMAILID THREADID)",
    "SEARCH EMAILID {emailid}",
    "SEARCH THREADID {threadid}",
]


class Row:
    def __init__(self) -> None:
        self.cold = float("nan")
        self.seconds: list[float] = []
        self.cpu: list[float] = []
        self.count = 0
        self.refused: str | None = None

    def median(self) -> float:
        return statistics.median(self.seconds) if self.seconds else float("nan")


async def run_server(server: Server, repeat: int) -> dict[str, Row]:
    rows: dict[str, Row] = {}
    ids: dict[str, str] = {"emailid": "M0", "threadid": "T0"}
    client = await IMAPClient.connect(HOST, server.imap_port)
    reply = await client.login("big", PASSWORD)
    if not reply.ok:
        raise RuntimeError(f"{server.name}: LOGIN failed: {reply.text!r}")
    await client.select()
    for template in COMMANDS:
        text = template.format(**ids)
        row = rows[template] = Row()
        print(f"  {server.name}: {text}", flush=True)
        cold = await client.command(text, keep=True)
        if not cold.ok:
            row.refused = f"{cold.status} {cold.text.decode('latin-1')[:40]}"
            continue
        row.cold = cold.seconds
        row.count = cold.count
        for line in cold.untagged[len(cold.untagged) // 2 :]:
            found = re.search(rb"EMAILID \(([\w-]+)\) THREADID \(([\w-]+)\)", line)
            if found:
                ids = {"emailid": found.group(1).decode(), "threadid": found.group(2).decode()}
                break
        for _ in range(repeat):
            with Meter(server, interval=0.1) as meter:
                reply = await client.command(text)
            row.seconds.append(reply.seconds)
            row.cpu.append(meter.usage.cpu)
    await client.logout()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_mailbox_options(
        parser, repeat=3, repeat_help="warm runs of each command", quick_runs=2, keep=False
    )
    args = parser.parse_args()
    began = time.perf_counter()
    cpus, servers = begin_report(
        args,
        2,
        "Search and fetch extensions on a {messages}-message INBOX",
        "each command: one cold run, then {repeat} warm runs (median shown)",
    )
    results: dict[str, dict[str, Row]] = {}
    with Pair([MailboxSpec("big", args.messages, seed=3)], servers=servers, cpus=cpus) as pair:
        for server in pair.servers:
            results[server.name] = asyncio.run(run_server(server, args.repeat))
    names = list(results)
    headers = ["command"]
    headers += [f"{name} cold s" for name in names]
    headers += [f"{name} warm s" for name in names]
    if len(names) == 2:
        headers.append(f"{names[0]}/{names[1]} warm")
    headers += [f"{name} CPU s" for name in names]
    headers += [f"{name} responses" for name in names]
    table = []
    for text in COMMANDS:
        per = [results[name][text] for name in names]
        row = [text]
        row += [r.refused or f"{r.cold:.3f}" for r in per]
        row += ["" if r.refused else f"{r.median():.3f}" for r in per]
        if len(names) == 2:
            row.append(ratio(per[0].median(), per[1].median()))
        row += ["" if r.refused else f"{statistics.median(r.cpu):.2f}" for r in per]
        row += ["" if r.refused else str(r.count) for r in per]
        table.append(row)
    print()
    print(markdown_table(headers, table))
    print()
    print(f"setup: {', '.join(f'{k} {v:.1f} s' for k, v in pair.seconds.items())}")
    print(f"total time {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()
