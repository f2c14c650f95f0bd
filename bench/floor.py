#!/usr/bin/env python3
"""The per-command floor: server CPU per command, one command at a time on one connection.

For each row (POP3 NOOP and RETR, IMAP NOOP, a small FETCH, a STORE), one
client connection sends the command ``--commands`` times, each after the
answer to the one before (as ``bench/load.py``'s POP3 workload and a
mail client do), and the server's CPU seconds over the run (its whole
process tree, from ``/proc``) are divided by the count: what one command
costs the server, reactor wakeups, framing, dispatch and writes included.
Both servers run in the same invocation, pinned to one CPU as in
``bench/load.py``; run it a few times and state the load average, since
the machine is shared.

Run: ``python bench/floor.py`` (``--servers mailsrv`` for one side only;
``--rows pop3-retr,imap-noop`` for a subset).  ``--reactor`` adds a row for
Twisted alone: a server of a dozen lines, on the servers' CPU, that answers
every line ``+OK`` (epoll, the read, ``dataReceived``, one buffered write):
the part of a command that no code of mailsrv's can take away.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Awaitable, Callable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import profile

from clients import IMAPClient, POP3Client
from harness import (
    PASSWORD,
    MailboxSpec,
    Meter,
    Pair,
    Usage,
    machine_info,
    markdown_table,
    pin_self,
)
from peers import Server
from procs import free_port, wait_for_port

HOST = "127.0.0.1"

#: A row's run: ``count`` commands on a server, what they cost it.
Run = Callable[[Server, int, int], Awaitable[Usage]]


async def _pop3(server: Server, count: int, messages: int, what: str) -> Usage:
    client = await POP3Client.connect(HOST, server.pop3_port)
    await client.login("floor", PASSWORD)
    with Meter(server) as meter:  # the commands alone: not the login, not QUIT's commit
        for n in range(count):
            if what == "NOOP":
                await client.command("NOOP")
            else:
                await client.multiline(f"RETR {n % messages + 1}")
    await client.quit()
    return meter.usage


async def _imap(server: Server, count: int, messages: int, what: str) -> Usage:
    client = await IMAPClient.connect(HOST, server.imap_port)
    await client.login("floor", PASSWORD)
    await client.select()
    meter = Meter(server).__enter__()
    for n in range(count):
        number = n % messages + 1
        if what == "NOOP":
            text = "NOOP"
        elif what == "FETCH":
            text = f"FETCH {number} (UID FLAGS)"
        else:
            # Toggle a flag nobody else uses, so every STORE changes something.
            sign = "+" if (n // messages) % 2 == 0 else "-"
            text = f"STORE {number} {sign}FLAGS (\\Flagged)"
        reply = await client.command(text)
        if not reply.ok:
            raise SystemExit(f"{text}: {reply.status} {reply.text!r}")
    meter.__exit__()
    await client.logout()
    return meter.usage


#: The reactor alone: a greeting, then "+OK" for every line received.
TWISTED_ALONE = """
import sys
from twisted.internet import protocol, reactor

class Answer(protocol.Protocol):
    def connectionMade(self):
        self.transport.write(b"+OK ready\\r\\n")

    def dataReceived(self, data):
        self.transport.write(b"+OK\\r\\n" * data.count(b"\\n"))

reactor.listenTCP(int(sys.argv[1]), protocol.Factory.forProtocol(Answer), interface="127.0.0.1")
reactor.run()
"""


class TwistedAlone(Server):
    """:data:`TWISTED_ALONE` on a loopback port, pinned as the servers are."""

    name = "twisted"

    def __init__(self, top: str, cpus: set[int] | None) -> None:
        super().__init__(top, cpus=cpus)
        self.pop3_port = free_port()

    def start(self, timeout: float = 60) -> None:
        self._spawn([sys.executable, "-c", TWISTED_ALONE, str(self.pop3_port)])
        assert self.process is not None
        wait_for_port(self.pop3_port, self.process, self.log_path, timeout)


async def _lines(server: Server, count: int) -> Usage:
    client = await POP3Client.connect(HOST, server.pop3_port)
    with Meter(server) as meter:
        for _ in range(count):
            await client.command("NOOP")
    return meter.usage


ROWS: dict[str, tuple[str, Run]] = {
    "pop3-noop": ("POP3 NOOP", lambda s, c, m: _pop3(s, c, m, "NOOP")),
    "pop3-retr": ("POP3 RETR", lambda s, c, m: _pop3(s, c, m, "RETR")),
    "imap-noop": ("IMAP NOOP", lambda s, c, m: _imap(s, c, m, "NOOP")),
    "imap-fetch": ("IMAP FETCH n (UID FLAGS)", lambda s, c, m: _imap(s, c, m, "FETCH")),
    "imap-store": ("IMAP STORE n +FLAGS (\\Flagged)", lambda s, c, m: _imap(s, c, m, "STORE")),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", default="mailsrv,dovecot")
    parser.add_argument("--rows", default=",".join(ROWS), help=f"subset of {','.join(ROWS)}")
    parser.add_argument("--commands", type=int, default=3000, help="commands per row")
    parser.add_argument("--messages", type=int, default=1000, help="messages in the INBOX")
    parser.add_argument("--no-pin", action="store_true", help="do not pin client and servers")
    parser.add_argument(
        "--reactor",
        action="store_true",
        help="add a row for Twisted alone answering every line +OK (the reactor's own floor)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="run py-spy on mailsrv during the timed commands and print where its time goes "
        "(as bench/profile.py does; the CPU figures then include py-spy's sampling)",
    )
    args = parser.parse_args()
    rows = [r for r in args.rows.split(",") if r]
    for row in rows:
        if row not in ROWS:
            raise SystemExit(f"unknown row {row!r}: choose from {','.join(ROWS)}")
    cpus, pin_note = pin_self(not args.no_pin)
    print("\n".join(machine_info(pin_note)))
    servers = [s for s in args.servers.split(",") if s]
    table: list[list[object]] = []
    with Pair([MailboxSpec("floor", args.messages, seed=11)], servers=servers, cpus=cpus) as pair:
        for row in rows:
            label, run = ROWS[row]
            cells: list[object] = [label]
            for name in servers:
                server = pair.server(name)
                asyncio.run(run(server, 100, args.messages))  # warm this path
                spy = profile.attach(server) if args.profile and name == "mailsrv" else None
                usage = asyncio.run(run(server, args.commands, args.messages))
                if spy is not None:
                    print(f"\n{label}, mailsrv:\n{profile.detach(*spy)}")
                cells += [
                    f"{1e6 * usage.cpu / args.commands:.0f}",
                    f"{1e6 * usage.wall / args.commands:.0f}",
                ]
            if len(servers) == 2:
                cells.append(f"{float(str(cells[1])) / max(float(str(cells[3])), 1):.2f}")
            table.append(cells)
        if args.reactor:
            alone = TwistedAlone(pair.top, cpus)
            with alone:
                alone.start()
                asyncio.run(_lines(alone, 100))
                usage = asyncio.run(_lines(alone, args.commands))
            cells = ["Twisted alone: a line answered +OK"]
            cells += [
                f"{1e6 * usage.cpu / args.commands:.0f}",
                f"{1e6 * usage.wall / args.commands:.0f}",
            ]
            table.append(cells + [""] * (len(table[0]) - len(cells)) if table else cells)
    headers = ["row"]
    for name in servers:
        headers += [f"{name} CPU µs/cmd", f"{name} wall µs/cmd"]
    if len(servers) == 2:
        headers.append("CPU ratio")
    print()
    print(
        f"Per-command floor: {args.commands} commands per row, one at a time on one "
        f"connection, {args.messages}-message INBOX"
    )
    print()
    print(markdown_table(headers, table))
    print(f"\nload average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
