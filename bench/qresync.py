#!/usr/bin/env python3
"""Time a QRESYNC reconnect after 10 flag changes on a 100,000-message INBOX,
mailsrv beside Dovecot.

What a phone's mail app does at every wake-up: it knows UIDVALIDITY and
HIGHESTMODSEQ from its last visit; meanwhile another client changed the
flags of 10 messages.  It connects, logs in, ``ENABLE QRESYNC`` and
``SELECT INBOX (QRESYNC (uidvalidity modseq 1:maxuid))``, and gets the 10
changes.  Measured, for each server (``bench/peers.py`` starts them side
by side on the same hard-linked Maildir, ``bench/harness.py``):

* the whole reconnect: TCP connect to the SELECT's tagged OK;
* the SELECT (QRESYNC) alone;
* for comparison, what a client without CONDSTORE pays on the same
  reconnect: ``SELECT INBOX`` and ``FETCH 1:* (FLAGS)``.

Each round changes 10 different messages (one ``UID STORE`` each, from
another session) and reconnects with the HIGHESTMODSEQ the previous round
ended with; the answers must be exactly those 10 messages.  Medians of
``--repeat`` rounds after one warm-up round; CPU seconds of the server's
process tree during the reconnect.

Run: ``python bench/qresync.py [--messages N] [--repeat R] [--quick]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from clients import IMAPClient
from harness import (
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
USER = "big"
PASSWORD = "bench-secret"
CHANGES = 10

_HIGHEST = re.compile(rb"\[HIGHESTMODSEQ (\d+)\]")
_VALIDITY = re.compile(rb"\[UIDVALIDITY (\d+)\]")
_UIDNEXT = re.compile(rb"\[UIDNEXT (\d+)\]")
_FETCH_UID = re.compile(rb"^\* \d+ FETCH \(.*\bUID (\d+)\b")


class Rows:
    def __init__(self) -> None:
        self.reconnect: list[float] = []
        self.select: list[float] = []
        self.cpu: list[float] = []
        self.full: list[float] = []
        self.full_cpu: list[float] = []


def _number(pattern: re.Pattern[bytes], lines: list[bytes]) -> int:
    for line in lines:
        found = pattern.search(line)
        if found is not None:
            return int(found.group(1))
    raise RuntimeError(f"no {pattern.pattern!r} in {lines[:12]!r}")


async def _session(server: Server) -> IMAPClient:
    client = await IMAPClient.connect(HOST, server.imap_port)
    reply = await client.login(USER, PASSWORD)
    if not reply.ok:
        raise RuntimeError(f"{server.name}: LOGIN failed: {reply.text!r}")
    return client


async def run_server(server: Server, count: int, repeat: int, seed: int) -> Rows:
    rows = Rows()
    rng = random.Random(seed)
    # The client's last visit: what it knows.
    client = await _session(server)
    await client.command("ENABLE QRESYNC")
    reply = await client.command("SELECT INBOX", keep=True)
    validity = _number(_VALIDITY, reply.untagged)
    known = _number(_HIGHEST, reply.untagged)
    top = _number(_UIDNEXT, reply.untagged) - 1
    await client.logout()
    other = await _session(server)
    await other.select()
    flag = 0
    for round_ in range(repeat + 1):
        changed = sorted(rng.sample(range(1, top + 1), CHANGES))
        flag += 1
        for uid in changed:
            reply = await other.command(f"UID STORE {uid} +FLAGS.SILENT ($Bench{flag % 20})")
            if not reply.ok:
                raise RuntimeError(f"{server.name}: STORE failed: {reply.text!r}")
        with Meter(server, interval=0.5) as meter:
            started = time.perf_counter()
            client = await _session(server)
            await client.command("ENABLE QRESYNC")
            select = await client.command(
                f"SELECT INBOX (QRESYNC ({validity} {known} 1:{top}))", keep=True
            )
            total = time.perf_counter() - started
        if not select.ok:
            raise RuntimeError(f"{server.name}: SELECT (QRESYNC) failed: {select.text!r}")
        fetched = sorted(int(m.group(1)) for m in map(_FETCH_UID.match, select.untagged) if m)
        if fetched != changed:
            raise RuntimeError(f"{server.name}: QRESYNC reported {fetched}, changed {changed}")
        known = _number(_HIGHEST, select.untagged)
        await client.logout()
        if round_:  # the first is the warm-up
            rows.reconnect.append(total)
            rows.select.append(select.seconds)
            rows.cpu.append(meter.usage.cpu)
    # The same reconnect for a client without CONDSTORE: all the flags again.
    for round_ in range(repeat + 1):
        with Meter(server, interval=0.5) as meter:
            started = time.perf_counter()
            client = await _session(server)
            await client.select()
            reply = await client.command("FETCH 1:* (FLAGS)")
            total = time.perf_counter() - started
        if reply.count != count:
            raise RuntimeError(f"{server.name}: FETCH 1:* answered {reply.count} of {count}")
        await client.logout()
        if round_:
            rows.full.append(total)
            rows.full_cpu.append(meter.usage.cpu)
    await other.logout()
    return rows


def _ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:.1f}" if values else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_mailbox_options(
        parser,
        repeat=5,
        repeat_help="timed rounds",
        quick_runs=3,
        unit="rounds",
        servers_help="comma-separated: mailsrv, dovecot, mailsrv-pg",
    )
    args = parser.parse_args()
    began = time.perf_counter()
    cpus, servers = begin_report(
        args,
        3,
        f"QRESYNC reconnect after {CHANGES} flag changes, {{messages}}-message INBOX",
        "one warm-up round, then {repeat} timed rounds (median shown)",
    )
    results: dict[str, Rows] = {}
    with Pair(
        [MailboxSpec(USER, args.messages, seed=7)], servers=servers, cpus=cpus, keep=args.keep
    ) as pair:
        for server in pair.servers:
            print(f"  {server.name}", flush=True)
            results[server.name] = asyncio.run(
                run_server(server, args.messages, args.repeat, seed=11)
            )
    names = list(results)
    headers = ["what", *(f"{n} ms" for n in names)]
    if len(names) >= 2:
        headers.append(f"{names[0]}/{names[1]}")
    headers += [f"{n} CPU ms" for n in names]
    table = []
    for label, wall, cpu in (
        ("reconnect: connect, LOGIN, ENABLE, SELECT (QRESYNC)", "reconnect", "cpu"),
        ("SELECT INBOX (QRESYNC ...) alone", "select", None),
        ("without CONDSTORE: connect, LOGIN, SELECT, FETCH 1:* (FLAGS)", "full", "full_cpu"),
    ):
        row = [label]
        values = [getattr(results[n], wall) for n in names]
        row += [_ms(v) for v in values]
        if len(names) >= 2:
            row.append(ratio(statistics.median(values[0]), statistics.median(values[1])))
        for n in names:
            row.append(_ms(getattr(results[n], cpu)) if cpu else "")
        table.append(row)
    print()
    print(markdown_table(headers, table))
    print()
    print(f"setup: {', '.join(f'{k} {v:.1f} s' for k, v in pair.seconds.items())}")
    print(f"total time {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()
