#!/usr/bin/env python3
"""Time SORT and THREAD on a 100,000-message mailbox, mailsrv beside Dovecot.

Builds one INBOX of ``--messages`` realistic messages (``bench/corpus.py``:
varied subjects, 30 % replies with In-Reply-To/References, encoded
subjects, Date headers), hard-links it into mailsrv and a private Dovecot
(``bench/peers.py``), warms both (SELECT, ``FETCH 1:* (FLAGS)``), and then,
on one connection per server, runs each command once cold (the first time:
sort keys are worked out from the message files and cached) and
``--repeat`` times warm:

* ``SORT (DATE) UTF-8 ALL``
* ``SORT (SUBJECT) UTF-8 ALL``
* ``THREAD REFERENCES UTF-8 ALL``
* ``UID SORT RETURN (PARTIAL 1:50) (REVERSE DATE) UTF-8 UNDELETED``, a
  webmail's first page (ESORT with CONTEXT=SORT's PARTIAL; Dovecot, which
  does not advertise CONTEXT=SORT, answers it too)

Then, ``--repeat`` times, one new message is APPENDed (and a NOOP lets the
session see it) before the command is timed again: what a SORT or THREAD
costs once the mailbox has changed, so nothing answered before can be
given again as it was.  Both servers get the same messages (replies dated
2001, so they sort first and join one thread).

It prints the cold seconds, the warm median, the ratio mailsrv/Dovecot, the
same after a new message, CPU seconds of each server's process tree, peak
RSS, and a digest of each answer: both servers must give the same order
(the digests must agree, also after the new messages).

Run: ``python bench/sort.py [--messages N] [--repeat R] [--quick]``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from clients import IMAPClient, Reply
from harness import (
    MIB,
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
    "SORT (DATE) UTF-8 ALL",
    "SORT (SUBJECT) UTF-8 ALL",
    "THREAD REFERENCES UTF-8 ALL",
    "UID SORT RETURN (PARTIAL 1:50) (REVERSE DATE) UTF-8 UNDELETED",
]


def new_message(n: int) -> bytes:
    """The ``n``th message APPENDed between timed runs: a reply to the one
    before, dated in 2001 (first by DATE), the same for both servers."""
    lines = [
        "From: Bench <bench@example.org>",
        "To: big@example.org",
        f"Subject: Re: the bench changes {n}",
        f"Date: Mon, 1 Jan 2001 00:{n // 60:02d}:{n % 60:02d} +0000",
        f"Message-ID: <change{n}@bench.example>",
    ]
    if n:
        lines.append(f"In-Reply-To: <change{n - 1}@bench.example>")
    return ("\r\n".join(lines) + "\r\n\r\nA new message.\r\n").encode()


def digest(reply: Reply) -> str:
    """The answer's data (SORT, THREAD or ESEARCH, tag left out), hashed."""
    for line in reply.untagged:
        for word in (b"* SORT", b"* THREAD", b"* ESEARCH"):
            if line.startswith(word):
                data = line.split(b")", 1)[1] if word == b"* ESEARCH" else line
                return hashlib.sha256(data.strip()).hexdigest()[:10]
    return "-"


class Row:
    def __init__(self) -> None:
        self.cold = float("nan")
        self.seconds: list[float] = []
        self.cpu: list[float] = []
        self.peak = 0
        self.answer = "-"
        self.refused: str | None = None
        #: After one new message each time.
        self.changed: list[float] = []
        self.changed_cpu: list[float] = []
        self.changed_answer = "-"

    def median(self) -> float:
        return statistics.median(self.seconds) if self.seconds else float("nan")

    def median_cpu(self) -> float:
        return statistics.median(self.cpu) if self.cpu else float("nan")

    def median_changed(self) -> float:
        return statistics.median(self.changed) if self.changed else float("nan")

    def median_changed_cpu(self) -> float:
        return statistics.median(self.changed_cpu) if self.changed_cpu else float("nan")


async def run_server(server: Server, repeat: int) -> dict[str, Row]:
    rows: dict[str, Row] = {}
    client = await IMAPClient.connect(HOST, server.imap_port)
    reply = await client.login("big", PASSWORD)
    if not reply.ok:
        raise RuntimeError(f"{server.name}: LOGIN failed: {reply.text!r}")
    await client.select()
    added = 0
    for text in COMMANDS:
        row = rows[text] = Row()
        print(f"  {server.name}: {text}", flush=True)
        cold = await client.command(text, keep=True)
        if not cold.ok:
            row.refused = f"{cold.status} {cold.text.decode('latin-1')[:40]}"
            continue
        row.cold = cold.seconds
        row.answer = digest(cold)
        for _ in range(repeat):
            with Meter(server, interval=0.1) as meter:
                reply = await client.command(text, keep=True)
            row.seconds.append(reply.seconds)
            row.cpu.append(meter.usage.cpu)
            row.peak = max(row.peak, meter.usage.peak_rss)
            if digest(reply) != row.answer:
                row.answer += " (changed!)"
        for _ in range(repeat):
            appended = await client.append("INBOX", new_message(added))
            added += 1
            noop = await client.command("NOOP")
            if not (appended.ok and noop.ok):
                raise RuntimeError(f"{server.name}: APPEND failed: {appended.text!r}")
            with Meter(server, interval=0.1) as meter:
                reply = await client.command(text, keep=True)
            row.changed.append(reply.seconds)
            row.changed_cpu.append(meter.usage.cpu)
            row.peak = max(row.peak, meter.usage.peak_rss)
            row.changed_answer = digest(reply)
    await client.logout()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_mailbox_options(parser, repeat=3, repeat_help="warm runs of each command", quick_runs=2)
    args = parser.parse_args()
    began = time.perf_counter()
    cpus, servers = begin_report(
        args,
        2,
        "SORT and THREAD on a {messages}-message INBOX",
        "each command: one cold run (shown), then {repeat} warm runs (median shown)",
    )
    results: dict[str, dict[str, Row]] = {}
    with Pair(
        [MailboxSpec("big", args.messages, seed=3)], servers=servers, cpus=cpus, keep=args.keep
    ) as pair:
        for server in pair.servers:
            results[server.name] = asyncio.run(run_server(server, args.repeat))
    names = list(results)
    headers = ["command"]
    headers += [f"{name} cold s" for name in names]
    headers += [f"{name} warm s" for name in names]
    if len(names) == 2:
        headers.append(f"{names[0]}/{names[1]} warm")
    headers += [f"{name} CPU s" for name in names]
    headers += [f"{name} after APPEND s" for name in names]
    if len(names) == 2:
        headers.append(f"{names[0]}/{names[1]} after APPEND")
    headers += [f"{name} after APPEND CPU s" for name in names]
    headers += [f"{name} peak RSS MiB" for name in names]
    headers += ["answers", "answers after APPEND"]
    table = []
    for text in COMMANDS:
        per = [results[name][text] for name in names]
        row = [text]
        row += [r.refused or f"{r.cold:.3f}" for r in per]
        row += ["" if r.refused else f"{r.median():.3f}" for r in per]
        if len(names) == 2:
            row.append(ratio(per[0].median(), per[1].median()))
        row += ["" if r.refused else f"{r.median_cpu():.2f}" for r in per]
        row += ["" if r.refused else f"{r.median_changed():.3f}" for r in per]
        if len(names) == 2:
            row.append(ratio(per[0].median_changed(), per[1].median_changed()))
        row += ["" if r.refused else f"{r.median_changed_cpu():.2f}" for r in per]
        row += ["" if r.refused else f"{r.peak / MIB:.0f}" for r in per]
        for which in ("answer", "changed_answer"):
            answers = sorted({getattr(r, which) for r in per if not r.refused})
            row.append(answers[0] if len(answers) == 1 else "DISAGREE " + "/".join(answers))
        table.append(row)
    print()
    print(markdown_table(headers, table))
    print()
    print(f"setup: {', '.join(f'{k} {v:.1f} s' for k, v in pair.seconds.items())}")
    print(f"total time {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()
