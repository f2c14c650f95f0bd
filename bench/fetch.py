#!/usr/bin/env python3
"""Time FETCH 1:* and SEARCH on a 100,000-message mailbox, mailsrv beside Dovecot.

Builds one INBOX of ``--messages`` realistic messages (a few KB each, varied
headers, some multipart; ``bench/corpus.py``), hard-links it into a mailsrv
and a private Dovecot started side by side (``bench/peers.py``), warms both
(SELECT and ``FETCH 1:* (FLAGS)``), and then, on one connection per server,
runs each command once untimed and ``--repeat`` times timed:

* ``FETCH 1:* (FLAGS)``
* ``FETCH 1:* (UID RFC822.SIZE INTERNALDATE)``
* ``FETCH 1:* (BODY.PEEK[HEADER.FIELDS (FROM TO SUBJECT DATE)])``
* ``SEARCH HEADER SUBJECT x``, ``SEARCH FROM x``, ``SEARCH TEXT x``,
  ``SEARCH BODY x`` (words planted in a known share of the messages, so hits
  are checked); mailsrv answers TEXT and BODY from its full-text index,
  which is built first (the daemon builds it in its threads after the first
  text search; the time it took, its CPU and its size are printed), while
  Dovecot as Debian ships it has no FTS plugin and reads the messages
* ``SEARCH UNSEEN``, ``SEARCH LARGER n``
* ``SELECT INBOX`` on a new connection while no other session has it open
  (a client reconnecting), and ``NOOP`` right after another session changed
  one message's flags (what every session of a busy mailbox pays)

It prints the median seconds for each and the ratio mailsrv/Dovecot, the CPU
seconds of each server's process tree, the number of answers (both servers
must agree), and each server's peak RSS during the command: a FETCH 1:*
must stream, so mailsrv's peak should stay near its resting size.  A last
row repeats the header FETCH with a client that stops reading for a few
seconds: a server that streams stops producing while its socket is full.

Run: ``python bench/fetch.py [--messages N] [--repeat R] [--quick] [--only FLAGS,UNSEEN]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from clients import IMAPClient, Reply
from corpus import ABSENT, PLANTED, expected_hits
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
HEADERS = "BODY.PEEK[HEADER.FIELDS (FROM TO SUBJECT DATE)]"
LARGER = 10_000


def chosen(text: str, only: list[str]) -> bool:
    """Whether ``--only`` selects the row ``text`` (every row without it)."""
    return not only or any(part.lower() in text.lower() for part in only)


def commands(only: list[str] | None = None) -> list[tuple[str, str | None]]:
    """(command, planted-word kind whose hits it must find, if any)."""
    every: list[tuple[str, str | None]] = [
        ("FETCH 1:* (FLAGS)", None),
        ("FETCH 1:* (UID RFC822.SIZE INTERNALDATE)", None),
        (f"FETCH 1:* ({HEADERS})", None),
        (f'SEARCH HEADER SUBJECT "{PLANTED["subject"][0]}"', "subject"),
        (f'SEARCH FROM "{PLANTED["from"][0]}"', "from"),
        (f'SEARCH TEXT "{PLANTED["body"][0]}"', "body"),
        (f'SEARCH BODY "{PLANTED["body"][0]}"', "body"),
        ("SEARCH UNSEEN", None),
        (f"SEARCH LARGER {LARGER}", None),
    ]
    return [(text, kind) for text, kind in every if chosen(text, only or [])]


def answers(text: str, reply: Reply) -> int:
    if text.startswith("SEARCH"):
        # Only the hits: Dovecot also sends "* OK Searched 45% of the mailbox".
        return sum(len(line.split()) - 2 for line in reply.untagged if line.startswith(b"* SEARCH"))
    return reply.count


class Row:
    def __init__(self) -> None:
        self.seconds: list[float] = []
        self.cpu: list[float] = []
        self.peak = 0
        self.rest = 0
        self.answers: int | None = None
        self.refused: str | None = None

    def median(self) -> float:
        return statistics.median(self.seconds) if self.seconds else float("nan")

    def median_cpu(self) -> float:
        return statistics.median(self.cpu) if self.cpu else float("nan")


async def run_server(
    server: Server, count: int, repeat: int, budget: float, stall: float, only: list[str]
) -> dict[str, Row]:
    rows: dict[str, Row] = {}
    client = await IMAPClient.connect(HOST, server.imap_port)
    reply = await client.login("big", PASSWORD)
    if not reply.ok:
        raise RuntimeError(f"{server.name}: LOGIN failed: {reply.text!r}")
    await client.select()
    wanted = commands(only)
    if server.name == "mailsrv" and any(kind == "body" for _text, kind in wanted):
        await build_text_index(server, client, count)
    for text, _kind in wanted:
        print(f"  {server.name}: {text}", flush=True)
        rows[text] = await timed_command(server, client, text, repeat, budget)
    text = f"FETCH 1:* ({HEADERS}), client stalls {stall:.0f} s"
    if chosen(text, only):
        headers = rows.get(f"FETCH 1:* ({HEADERS})")
        if headers is None or headers.refused is None:
            rows[text] = await stalled_fetch(server, client, stall)
        else:
            rows[text] = Row()
            rows[text].refused = headers.refused
    text = "SELECT INBOX, new session (CPU: with connect + LOGIN)"
    if chosen(text, only):
        rows[text] = await fresh_select(server, client, repeat)
    text = "NOOP after another session's STORE"
    if chosen(text, only):
        rows[text] = await noop_after_store(server, client, repeat)
    await client.logout()
    return rows


async def build_text_index(server: Server, client: IMAPClient, count: int) -> None:
    """Have mailsrv build its full-text index (its first text search starts
    it, in a thread) and wait for the log line that says it is done."""
    with open(server.log_path, "rb") as log:
        log.seek(0, os.SEEK_END)
        with Meter(server, interval=0.5) as meter:
            started = time.perf_counter()
            await client.command(f'SEARCH BODY "{ABSENT}"')
            line = await _log_line(log, b" messages indexed in ", deadline=3600)
            seconds = time.perf_counter() - started
    found = re.search(rb"full-text index (\S+): (\d+) messages indexed in ([\d.]+) s", line)
    if found is None:
        raise RuntimeError(f"unexpected log line {line!r}")
    path, indexed = found.group(1).decode(), int(found.group(2))
    octets = sum(
        os.path.getsize(path + suffix) for suffix in ("", "-wal") if os.path.exists(path + suffix)
    )
    print(
        f"  mailsrv: full-text index of {indexed} messages built in {seconds:.1f} s "
        f"(the daemon's own count: {float(found.group(3)):.1f} s), CPU {meter.usage.cpu:.1f} s, "
        f"{octets} octets ({octets // max(indexed, 1)} per message)",
        flush=True,
    )


async def _log_line(log: Any, marker: bytes, deadline: float) -> bytes:
    """The next line of ``log`` holding ``marker`` (polled until ``deadline`` s)."""
    end = time.monotonic() + deadline
    pending = b""
    while time.monotonic() < end:
        pending += log.read()
        *lines, pending = pending.split(b"\n")
        for line in lines:
            if marker in line:
                return line
        await asyncio.sleep(0.5)
    raise RuntimeError(f"no {marker!r} in the log within {deadline} s")


async def timed_command(
    server: Server, client: IMAPClient, text: str, repeat: int, budget: float
) -> Row:
    """One untimed run, then up to ``repeat`` timed ones within ``budget`` seconds."""
    row = Row()
    warm = await client.command(text, keep=text.startswith("SEARCH"))
    if not warm.ok:
        row.refused = f"{warm.status} {warm.text.decode('latin-1').split(']')[0]}]"
        return row
    row.answers = answers(text, warm)
    spent = 0.0
    for _ in range(repeat):
        if spent > budget:
            break
        tree = server.tree
        with Meter(server, interval=0.1) as meter:
            row.rest = max(row.rest, tree.rss())
            reply = await client.command(text, keep=text.startswith("SEARCH"))
        spent += reply.seconds
        row.seconds.append(reply.seconds)
        row.cpu.append(meter.usage.cpu)
        row.peak = max(row.peak, meter.usage.peak_rss)
    return row


async def stalled_fetch(server: Server, client: IMAPClient, stall: float) -> Row:
    """The header FETCH once more, from a client that stops reading."""
    row = Row()
    tree = server.tree
    with Meter(server, interval=0.1) as meter:
        row.rest = tree.rss()
        started = time.perf_counter()
        tag = b"stall"
        client.writer.write(tag + b" " + f"FETCH 1:* ({HEADERS})".encode() + b"\r\n")
        await asyncio.sleep(stall)
        reply = await client.read_tagged(tag, False, started)
    row.seconds.append(reply.seconds)
    row.cpu.append(meter.usage.cpu)
    row.peak = meter.usage.peak_rss
    row.answers = reply.count
    return row


async def fresh_select(server: Server, client: IMAPClient, repeat: int) -> Row:
    """A client reconnecting: SELECT on a fresh connection, nobody else inside."""
    row = Row()
    await client.command("UNSELECT")
    for n in range(repeat + 1):
        with Meter(server, interval=0.1) as meter:
            row.rest = max(row.rest, server.tree.rss())
            other = await IMAPClient.connect(HOST, server.imap_port)
            await other.login("big", PASSWORD)
            reply = await other.select()
        if n:  # the first is the warm-up run
            row.seconds.append(reply.seconds)
            row.cpu.append(meter.usage.cpu)
            row.peak = max(row.peak, meter.usage.peak_rss)
        row.answers = other.exists
        await other.logout()
    await client.select()
    return row


async def noop_after_store(server: Server, client: IMAPClient, repeat: int) -> Row:
    """Another session changes one flag; how long does this session's NOOP take?"""
    row = Row()
    other = await IMAPClient.connect(HOST, server.imap_port)
    await other.login("big", PASSWORD)
    await other.select()
    for n in range(repeat + 1):
        await other.command(f"STORE {n + 1} +FLAGS (\\Flagged)")
        with Meter(server, interval=0.1) as meter:
            row.rest = max(row.rest, server.tree.rss())
            reply = await client.command("NOOP")
        if n:
            row.seconds.append(reply.seconds)
            row.cpu.append(meter.usage.cpu)
            row.peak = max(row.peak, meter.usage.peak_rss)
        row.answers = 1
    await other.logout()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_mailbox_options(parser, repeat=3, repeat_help="timed runs of each command", quick_runs=2)
    parser.add_argument(
        "--budget",
        type=float,
        default=60.0,
        help="seconds per command and server after which no further timed run starts",
    )
    parser.add_argument("--stall", type=float, default=5.0, help="seconds the slow client waits")
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated parts of the rows to run (e.g. 'FLAGS,UNSEEN'); all by default",
    )
    args = parser.parse_args()
    only = [part.strip() for part in args.only.split(",") if part.strip()]
    began = time.perf_counter()
    cpus, servers = begin_report(
        args,
        2,
        "FETCH and SEARCH on a {messages}-message INBOX",
        "each command: one untimed run, then up to {repeat} timed runs (median shown)",
    )
    results: dict[str, dict[str, Row]] = {}
    with Pair(
        [MailboxSpec("big", args.messages, seed=3)], servers=servers, cpus=cpus, keep=args.keep
    ) as pair:
        for server in pair.servers:
            results[server.name] = asyncio.run(
                run_server(server, args.messages, args.repeat, args.budget, args.stall, only)
            )
    print()
    print(markdown_table(*table(results, args.messages, only)))
    print()
    print(f"setup: {', '.join(f'{k} {v:.1f} s' for k, v in pair.seconds.items())}")
    print(f"total time {time.perf_counter() - began:.0f} s")


def table(
    results: dict[str, dict[str, Row]], messages: int, only: list[str]
) -> tuple[list[str], list[list[str]]]:
    """The headers and rows of the results table, servers side by side."""
    names = list(results)
    headers = ["command"]
    for name in names:
        headers += [f"{name} s"]
    if len(names) == 2:
        headers.append(f"{names[0]}/{names[1]}")
    for name in names:
        headers += [f"{name} CPU s"]
    headers.append("answers")
    for name in names:
        headers += [f"{name} peak RSS MiB (rest)"]
    extra = [t for t in results[names[0]] if t not in dict(commands())]
    rows = []
    for text, kind in [*commands(only), *((t, None) for t in extra)]:
        per = [results[name][text] for name in names]
        rows.append(table_row(text, per, expected_hits(messages, kind) if kind else None))
    return headers, rows


def table_row(text: str, per: list[Row], want: int | None) -> list[str]:
    """One command's row: each server's median time, their ratio, CPU, the
    answers (checked against ``want`` planted hits) and memory."""
    row = [text]
    for r in per:
        row.append(r.refused or f"{r.median():.3f}")
    if len(per) == 2:
        row.append(ratio(per[0].median(), per[1].median()))
    for r in per:
        row.append("" if r.refused else f"{r.median_cpu():.3f}")
    counts = sorted({r.answers for r in per if r.answers is not None})
    note = "/".join(str(c) for c in counts) if counts else "-"
    if want is not None and counts != [want]:
        note += f" (expected {want})"
    if len(counts) > 1:
        note += " DISAGREE"
    row.append(note)
    for r in per:
        row.append("" if r.refused else f"{r.peak / MIB:.0f} ({r.rest / MIB:.0f})")
    return row


if __name__ == "__main__":
    main()
