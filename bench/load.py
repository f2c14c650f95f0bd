#!/usr/bin/env python3
"""Load mailsrv and Dovecot side by side with many concurrent clients.

Both servers are started as their users start them (``twistd -n mailsrv
--config FILE``; ``dovecot -F -c FILE`` with a private configuration), on
loopback ports, with the same users file and the same Maildirs (hard-linked
copies of one seeded tree), and are warmed before anything is timed.  Every
workload then runs against one server and then the other:

``storm``   login/logout storm: many short connections, LOGIN then LOGOUT,
            a few at a time; once with PLAIN secrets, once with ARGON2ID.
``sync``    a mail client's first sync of a 10,000-message INBOX: SELECT,
            ``UID FETCH 1:* (UID FLAGS RFC822.SIZE INTERNALDATE)``,
            ``FETCH 1:* (BODY.PEEK[HEADER.FIELDS (FROM TO SUBJECT DATE)])``,
            then BODY[] of the ten newest messages.
``mixed``   steady mixed traffic from 50 clients (10 users, 5 connections
            each): NOOP, IDLE, FETCH, STORE, APPEND, EXPUNGE.  With
            ``--mixed-modes plain,compress`` it runs once with plain
            sessions and once with every session turning COMPRESS=DEFLATE
            on (RFC 4978) after login, and ends with the server CPU per
            command of both runs side by side.
``search``  SEARCH TEXT and SEARCH HEADER SUBJECT on a 100,000-message
            INBOX, while a bystander on another account sends NOOPs (does a
            long search stall everybody else?).
``idle``    5,000 connections sitting in IDLE: memory per connection from
            the OS, and how fast one new message reaches the sessions
            watching that mailbox.
``pop3``    POP3 RETR of a whole maildrop (2,000 messages).
``saturate`` imaptest-like saturation: 10, then 50 clients logged in as one
            user on one shared 1,000-message INBOX, each sending its next
            command as soon as the last is answered (NOOP, LIST, STATUS,
            FETCH flags, bodies and headers, STORE, APPEND, EXPUNGE);
            commands per second.  mailsrv runs its default number of
            workers, one per CPU it may use: with ``--no-pin`` both
            servers may use every CPU (and share them with the load
            generator).

For each workload and server it prints throughput, p50/p99 latency, CPU
seconds of the server's process tree, peak RSS and the ratio
mailsrv/Dovecot.  ``--quick`` runs everything small (a minute or two).

Run: ``python bench/load.py [--quick] [--workloads storm,sync,...]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import attrs

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from clients import IMAPClient, IMAPError, POP3Client
from corpus import PLANTED, expected_hits, message
from harness import (
    MIB,
    PASSWORD,
    MailboxSpec,
    Meter,
    Pair,
    Usage,
    machine_info,
    markdown_table,
    percentile,
    pin_self,
    ratio,
)
from peers import Server, inotify_instances, raise_fd_limit

HOST = "127.0.0.1"
WORKLOADS = ("storm", "sync", "mixed", "search", "idle", "pop3", "saturate")


@attrs.define
class Scale:
    storm_connections: int = 1000
    storm_argon_connections: int = 100
    storm_concurrency: int = 20
    sync_messages: int = 10_000
    sync_rounds: int = 3
    mixed_users: int = 10
    mixed_per_user: int = 5
    mixed_messages: int = 1000
    mixed_seconds: float = 30.0
    mixed_think: float = 0.1
    mixed_modes: str = "plain"  # "plain,compress": also with COMPRESS=DEFLATE
    search_messages: int = 100_000
    search_runs: int = 2
    search_budget: float = 240.0  # seconds per server; no new SEARCH after that
    idle_connections: int = 5000
    idle_users: int = 5
    idle_messages: int = 20  # per IDLE user's INBOX (issue 4 asks for 10,000)
    idle_setup_limit: float = 300.0  # seconds to open all the IDLE connections
    pop3_messages: int = 2000
    pop3_rounds: int = 3
    saturate_clients: str = "10,50"  # one table per count
    saturate_messages: int = 1000
    saturate_seconds: float = 30.0
    time_limit: float = 120.0  # per workload and server, for open-ended parts

    @classmethod
    def quick(cls) -> Scale:
        return cls(
            storm_connections=200,
            storm_argon_connections=30,
            sync_messages=2000,
            sync_rounds=2,
            mixed_users=4,
            mixed_per_user=5,
            mixed_messages=200,
            mixed_seconds=10.0,
            search_messages=10_000,
            search_runs=1,
            search_budget=60.0,
            idle_connections=500,
            idle_setup_limit=60.0,
            pop3_messages=300,
            pop3_rounds=2,
            saturate_messages=200,
            saturate_seconds=10.0,
            time_limit=60.0,
        )


# -- results ------------------------------------------------------------------------------


@attrs.define
class Result:
    """One workload on one server."""

    ops: int = 0
    seconds: float = 0.0
    latencies: list[float] = attrs.Factory(list)
    errors: dict[str, int] = attrs.Factory(dict)
    usage: Usage = attrs.Factory(Usage)
    #: per step or operation kind: latencies
    steps: dict[str, list[float]] = attrs.Factory(dict)
    #: per step: a status other than OK, shown instead of numbers
    refused: dict[str, str] = attrs.Factory(dict)
    notes: dict[str, str] = attrs.Factory(dict)
    unit: str = "ops"

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1

    def step(self, name: str, seconds: float) -> None:
        self.steps.setdefault(name, []).append(seconds)

    @property
    def rate(self) -> float:
        return self.ops / self.seconds if self.seconds else float("nan")


def check(reply: Any, result: Result, step: str) -> bool:
    """Record a non-OK answer; True when OK."""
    if reply.ok:
        return True
    text = reply.text.decode("latin-1", "replace")
    code = text.split("]")[0] + "]" if text.startswith("[") else ""
    result.error(f"{step}: {reply.status} {code}".strip())
    result.refused.setdefault(step, f"{reply.status} {code}".strip())
    return False


async def connect_login(server: Server, user: str) -> IMAPClient:
    client = await IMAPClient.connect(HOST, server.imap_port)
    reply = await client.login(user, PASSWORD)
    if not reply.ok:
        await client.wait_closed()
        raise IMAPError(f"LOGIN {user}: {reply.status} {reply.text!r}")
    return client


async def bounded(
    count: int, concurrency: int, deadline: float, job: Callable[[int], Awaitable[None]]
) -> int:
    """Run ``job(n)`` for n < count, ``concurrency`` at a time, until the deadline."""
    counter = iter(range(count))
    done = 0

    async def worker() -> None:
        nonlocal done
        for n in counter:
            if time.monotonic() > deadline:
                return
            await job(n)
            done += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done


# -- workloads ----------------------------------------------------------------------------


async def storm(server: Server, scale: Scale, user: str, count: int, concurrency: int) -> Result:
    result = Result(unit="logins")
    deadline = time.monotonic() + scale.time_limit

    async def one(_: int) -> None:
        started = time.perf_counter()
        try:
            client = await IMAPClient.connect(HOST, server.imap_port)
            reply = await client.login(user, PASSWORD)
            if check(reply, result, "LOGIN"):
                await client.logout()
            else:
                await client.wait_closed()
        except (OSError, IMAPError) as e:
            result.error(f"connection: {type(e).__name__}")
            return
        result.latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    result.ops = await bounded(count, concurrency, deadline, one)
    result.seconds = time.perf_counter() - started
    return result


SYNC_HEADERS = "BODY.PEEK[HEADER.FIELDS (FROM TO SUBJECT DATE)]"


async def sync(server: Server, scale: Scale) -> Result:
    """A client's first sync, ``sync_rounds`` times, after one untimed round."""
    result = Result(unit="msgs")
    steps = [
        "LOGIN",
        "SELECT",
        "UID FETCH 1:* (UID FLAGS RFC822.SIZE INTERNALDATE)",
        f"FETCH 1:* ({SYNC_HEADERS})",
        "FETCH n BODY[] (x10)",
        "LOGOUT",
    ]

    async def one_round(measure: bool) -> None:
        sink = Result()
        target = result if measure else sink
        started = time.perf_counter()
        client = await IMAPClient.connect(HOST, server.imap_port)
        reply = await client.login("sync", PASSWORD)
        check(reply, target, steps[0])
        target.step(steps[0], time.perf_counter() - started)
        reply = await client.select()
        check(reply, target, steps[1])
        target.step(steps[1], reply.seconds)
        exists = client.exists
        reply = await client.command("UID FETCH 1:* (UID FLAGS RFC822.SIZE INTERNALDATE)")
        if check(reply, target, steps[2]):
            target.step(steps[2], reply.seconds)
            if reply.count != exists:
                target.notes[steps[2]] = f"{reply.count} answers for {exists} messages"
        reply = await client.command(f"FETCH 1:* ({SYNC_HEADERS})")
        if check(reply, target, steps[3]):
            target.step(steps[3], reply.seconds)
        total = 0.0
        ok = True
        for seq in range(exists, max(exists - 10, 0), -1):
            reply = await client.command(f"FETCH {seq} BODY[]")
            ok = check(reply, target, steps[4]) and ok
            total += reply.seconds
        if ok:
            target.step(steps[4], total)
        t0 = time.perf_counter()
        await client.logout()
        target.step(steps[5], time.perf_counter() - t0)
        if measure:
            result.latencies.append(time.perf_counter() - started)
            result.ops += exists

    await one_round(False)
    started = time.perf_counter()
    for _ in range(scale.sync_rounds):
        await one_round(True)
    result.seconds = time.perf_counter() - started
    result.notes["rounds"] = str(scale.sync_rounds)
    for name in steps:
        result.steps.setdefault(name, [])
    return result


MIXED_OPS = (
    ("NOOP", 25),
    ("FETCH 20 (UID FLAGS)", 20),
    ("FETCH 1 BODY.PEEK[]", 10),
    ("FETCH 50 headers", 5),
    ("STORE", 15),
    ("APPEND", 8),
    ("EXPUNGE", 7),
    ("IDLE", 10),
)


async def mixed(server: Server, scale: Scale, compress: bool = False) -> Result:
    result = Result()
    names = [name for name, _ in MIXED_OPS]
    weights = [weight for _, weight in MIXED_OPS]
    deadline = 0.0

    async def client_loop(n: int) -> None:
        user = f"mix{n % scale.mixed_users}"
        rng = random.Random(n)
        client = await connect_login(server, user)
        if compress:
            reply = await client.compress()
            if not reply.ok:
                raise IMAPError(f"COMPRESS as {user}: {reply.text!r}")
        reply = await client.select()
        if not reply.ok:
            raise IMAPError(f"SELECT as {user}: {reply.text!r}")
        appended = 0
        while time.monotonic() < deadline:
            await asyncio.sleep(rng.expovariate(1 / scale.mixed_think))
            name = rng.choices(names, weights)[0]
            exists = client.exists
            if exists == 0 and name not in ("NOOP", "APPEND", "IDLE"):
                name = "APPEND"
            op = _Op(client, rng, rng.randint(1, max(exists, 1)), exists, result)
            if name == "APPEND":
                appended += 1
                op.data = message(1_000_000 + n * 10_000 + appended, seed=9)
            op.started = time.perf_counter()
            reply = await _MIXED[name](op)
            check(reply, result, name)
            elapsed = time.perf_counter() - op.started if name != "IDLE" else reply.seconds
            result.step(name, elapsed)
            result.latencies.append(elapsed)
            result.ops += 1
        await client.logout()

    count = scale.mixed_users * scale.mixed_per_user
    started = time.perf_counter()
    deadline = time.monotonic() + scale.mixed_seconds
    await asyncio.gather(*(client_loop(n) for n in range(count)))
    result.seconds = time.perf_counter() - started
    result.notes["clients"] = str(count)
    return result


@attrs.define
class _Op:
    """One operation of the mixed traffic, about to run: the client, its
    random source, a message number, the mailbox size, the message an
    APPEND sends, when it started."""

    client: IMAPClient
    rng: random.Random
    seq: int
    exists: int
    result: Result
    data: bytes = b""
    started: float = 0.0


async def _noop(op: _Op) -> Any:
    return await op.client.command("NOOP")


async def _fetch_flags(op: _Op) -> Any:
    low = max(1, op.seq - 19)
    return await op.client.command(f"FETCH {low}:{low + 19} (UID FLAGS)")


async def _fetch_body(op: _Op) -> Any:
    return await op.client.command(f"FETCH {op.seq} BODY.PEEK[]")


async def _fetch_headers(op: _Op) -> Any:
    low = max(1, op.exists - 49)
    return await op.client.command(f"FETCH {low}:* ({SYNC_HEADERS})")


async def _store(op: _Op) -> Any:
    sign = op.rng.choice("+-")
    flag = op.rng.choice(("\\Seen", "\\Flagged", "$Label1"))
    return await op.client.command(f"STORE {op.seq} {sign}FLAGS ({flag})")


async def _append(op: _Op) -> Any:
    return await op.client.append("INBOX", op.data)


async def _expunge(op: _Op) -> Any:
    reply = await op.client.command(f"STORE {op.seq} +FLAGS.SILENT (\\Deleted)")
    if check(reply, op.result, "EXPUNGE"):
        reply = await op.client.command("EXPUNGE")
    return reply


async def _idle(op: _Op) -> Any:
    """Enter IDLE, listen up to half a second, leave."""
    tag = await op.client.idle_start()
    entered = time.perf_counter() - op.started
    try:
        await asyncio.wait_for(op.client.idle_wait(), op.rng.uniform(0.1, 0.5))
    except TimeoutError:
        pass
    reply = await op.client.idle_done(tag)
    reply.seconds += entered
    return reply


#: What each operation of :data:`MIXED_OPS` does.
_MIXED: dict[str, Callable[[_Op], Awaitable[Any]]] = {
    "NOOP": _noop,
    "FETCH 20 (UID FLAGS)": _fetch_flags,
    "FETCH 1 BODY.PEEK[]": _fetch_body,
    "FETCH 50 headers": _fetch_headers,
    "STORE": _store,
    "APPEND": _append,
    "EXPUNGE": _expunge,
    "IDLE": _idle,
}


#: The saturation mix (weights) and how many commands each operation sends.
SATURATE_OPS = (
    ("NOOP", 15, 1),
    ("LIST", 5, 1),
    ("STATUS", 5, 1),
    ("FETCH 20 (UID FLAGS)", 20, 1),
    ("FETCH 1 BODY.PEEK[]", 15, 1),
    ("FETCH 50 headers", 5, 1),
    ("STORE", 15, 1),
    ("APPEND", 10, 1),
    ("EXPUNGE", 10, 2),
)


async def _list(op: _Op) -> Any:
    return await op.client.command('LIST "" "*"')


async def _status(op: _Op) -> Any:
    return await op.client.command("STATUS INBOX (MESSAGES UIDNEXT UNSEEN)")


async def saturate(server: Server, scale: Scale, clients: int) -> Result:
    """``clients`` sessions of one user on one INBOX, no think time:
    commands answered per second, and each operation's latency."""
    result = Result(unit="cmds")
    ops = {name: (_MIXED.get(name) or _SATURATE[name], sends) for name, _, sends in SATURATE_OPS}
    names = [name for name, _, _ in SATURATE_OPS]
    weights = [weight for _, weight, _ in SATURATE_OPS]
    sessions = [await connect_login(server, "shared") for _ in range(clients)]
    for client in sessions:
        reply = await client.select()
        if not reply.ok:
            raise IMAPError(f"SELECT as shared: {reply.text!r}")
    deadline = time.monotonic() + scale.saturate_seconds

    async def client_loop(n: int, client: IMAPClient) -> None:
        rng = random.Random(n)
        appended = 0
        while time.monotonic() < deadline:
            name = rng.choices(names, weights)[0]
            exists = client.exists
            if exists == 0 and name not in ("NOOP", "LIST", "STATUS", "APPEND"):
                name = "APPEND"
            op = _Op(client, rng, rng.randint(1, max(exists, 1)), exists, result)
            if name == "APPEND":
                appended += 1
                op.data = message(2_000_000 + n * 100_000 + appended, seed=9)
            run, sends = ops[name]
            op.started = time.perf_counter()
            reply = await run(op)
            elapsed = time.perf_counter() - op.started
            check(reply, result, name)
            result.step(name, elapsed)
            result.latencies.append(elapsed / sends)
            result.ops += sends

    started = time.perf_counter()
    await asyncio.gather(*(client_loop(n, c) for n, c in enumerate(sessions)))
    result.seconds = time.perf_counter() - started
    for client in sessions:
        await client.logout()
    result.notes["clients"] = f"{clients}, all logged in as one user on its INBOX"
    result.notes["p50/p99"] = "per command (an EXPUNGE operation is STORE then EXPUNGE)"
    return result


_SATURATE: dict[str, Callable[[_Op], Awaitable[Any]]] = {"LIST": _list, "STATUS": _status}


SEARCHES = (
    (f'SEARCH TEXT "{PLANTED["body"][0]}"', "body"),
    (f'SEARCH HEADER SUBJECT "{PLANTED["subject"][0]}"', "subject"),
)


async def search(server: Server, scale: Scale) -> Result:
    """The searches, one at a time, while a bystander NOOPs on another account."""
    result = Result(unit="searches")
    client = await connect_login(server, "big")
    await client.select()
    bystander = await connect_login(server, "mix0" if scale.mixed_users else "sync")
    await bystander.select()
    running = True
    stalls: list[float] = []

    async def noop_loop() -> None:
        while running:
            reply = await bystander.command("NOOP")
            stalls.append(reply.seconds)
            await asyncio.sleep(0.05)

    bystanding = asyncio.ensure_future(noop_loop())
    started = time.perf_counter()
    try:
        for _ in range(scale.search_runs):
            for text, where in SEARCHES:
                if time.perf_counter() - started > scale.search_budget:
                    result.notes[f"skipped {text}"] = (
                        f"search budget of {scale.search_budget:.0f} s spent"
                    )
                    continue
                try:
                    reply = await asyncio.wait_for(
                        client.command(text, keep=True), scale.time_limit
                    )
                except TimeoutError:
                    result.error(f"{text}: timeout")
                    result.refused[text] = f"> {scale.time_limit:.0f} s"
                    # The connection is out of step now; open a new one.
                    await client.wait_closed()
                    client = await connect_login(server, "big")
                    await client.select()
                    continue
                if not check(reply, result, text):
                    continue
                hits = sum(
                    len(line.split()) - 2 for line in reply.untagged if line.startswith(b"* SEARCH")
                )
                want = expected_hits(scale.search_messages, where)
                result.notes[text] = f"{hits} hits" + (
                    "" if hits == want else f" (expected {want})"
                )
                result.step(text, reply.seconds)
                result.latencies.append(reply.seconds)
                result.ops += 1
    finally:
        result.seconds = time.perf_counter() - started
        running = False
        await bystanding
        await client.logout()
        await bystander.logout()
    result.steps["bystander NOOP"] = stalls
    return result


async def idle(server: Server, scale: Scale, meter: Meter, before: dict[str, int]) -> Result:
    """``idle_connections`` sessions in IDLE; memory per connection; wake-up time."""
    run = _IdleRun(server, scale)
    try:
        await run.run(meter, before)
    finally:
        for client in run.clients:
            client.close()  # whatever went wrong, leave no session behind
    return run.result


class _IdleRun:
    """The sessions of the IDLE workload and what it measures."""

    def __init__(self, server: Server, scale: Scale) -> None:
        self.server, self.scale = server, scale
        self.result = Result(unit="conns")
        self.clients: list[IMAPClient] = []
        self.tags: list[bytes] = []
        self.watchers: list[IMAPClient] = []  # the sessions of the first user
        self.users = [f"idle{n}" for n in range(scale.idle_users)]

    async def run(self, meter: Meter, before: dict[str, int]) -> None:
        result = self.result
        started = time.perf_counter()
        deadline = time.monotonic() + self.scale.idle_setup_limit
        await bounded(self.scale.idle_connections, 50, deadline, self.enter)
        result.seconds = time.perf_counter() - started
        result.ops = len(self.clients)
        await asyncio.sleep(2)  # let forks and buffers settle
        self.note_memory(meter, before)
        if await self.new_mail():
            await bounded(len(self.clients), 100, time.monotonic() + 120, self.leave)

    async def enter(self, n: int) -> None:
        """Session ``n``: log in, select, IDLE."""
        result = self.result
        started = time.perf_counter()
        try:
            client = await connect_login(self.server, self.users[n % len(self.users)])
            reply = await client.select()
            if not check(reply, result, "SELECT"):
                await client.wait_closed()
                return
            tag = await client.idle_start()
        except (OSError, IMAPError) as e:
            result.error(f"setup: {type(e).__name__} {str(e)[:60]}")
            return
        self.clients.append(client)
        self.tags.append(tag)
        if n % len(self.users) == 0:
            self.watchers.append(client)
        result.latencies.append(time.perf_counter() - started)

    def note_memory(self, meter: Meter, before: dict[str, int]) -> None:
        tree = meter.tree
        pids = tree.pids()
        rss = tree.rss(pids)
        pss = tree.pss(pids)
        count = max(len(self.clients), 1)
        notes = self.result.notes
        notes["RSS before / with all idle, MiB"] = f"{before['rss'] / MIB:.0f} / {rss / MIB:.0f}"
        notes["RSS per connection, KiB"] = f"{(rss - before['rss']) / count / 1024:.0f}"
        notes["PSS per connection, KiB"] = f"{(pss - before['pss']) / count / 1024:.0f}"
        notes["processes"] = str(len(pids))

    async def new_mail(self) -> bool:
        """One new message for idle0: how long until every session of idle0
        hears of it?  False if it could not be sent."""
        result = self.result
        arrived: list[float] = []

        async def wait_exists(client: IMAPClient, t0: float) -> None:
            while True:
                line = await client.idle_wait()
                if line.endswith(b"EXISTS"):
                    arrived.append(time.perf_counter() - t0)
                    return

        try:
            sender = await connect_login(self.server, self.users[0])
        except (OSError, IMAPError) as e:
            result.error(f"new-mail sender: {type(e).__name__} {str(e)[:60]}")
            return False
        news = message(999_999, seed=7)
        t0 = time.perf_counter()
        waits = [asyncio.ensure_future(wait_exists(c, t0)) for c in self.watchers]
        await sender.append("INBOX", news)
        _, pending = await asyncio.wait(waits, timeout=30)
        for task in pending:
            task.cancel()
        result.steps[f"new mail reaches {len(self.watchers)} IDLE sessions"] = arrived
        if pending:
            result.error(f"{len(pending)} sessions heard nothing in 30 s")
        await sender.logout()
        return True

    async def leave(self, n: int) -> None:
        client = self.clients[n]
        try:
            if not client.writer.is_closing():
                await asyncio.wait_for(client.idle_done(self.tags[n]), 10)
        except (TimeoutError, OSError, IMAPError):
            pass
        await client.logout()


async def pop3(server: Server, scale: Scale) -> Result:
    result = Result(unit="msgs")

    async def one_round(measure: bool) -> None:
        target = result if measure else Result()
        t0 = time.perf_counter()
        client = await POP3Client.connect(HOST, server.pop3_port)
        await client.login("pop", PASSWORD)
        target.step("connect + USER/PASS", time.perf_counter() - t0)
        stat = await client.command("STAT")
        count = int(stat.split()[1])
        t1 = time.perf_counter()
        await client.multiline("LIST")
        await client.multiline("UIDL")
        target.step("LIST + UIDL", time.perf_counter() - t1)
        octets = 0
        for n in range(1, count + 1):
            t2 = time.perf_counter()
            octets += await client.multiline(f"RETR {n}")
            elapsed = time.perf_counter() - t2
            target.latencies.append(elapsed)
            target.step("RETR", elapsed)
        t3 = time.perf_counter()
        await client.quit()
        target.step("QUIT", time.perf_counter() - t3)
        target.ops += count
        target.notes["octets per round"] = f"{octets / MIB:.1f} MiB"

    await one_round(False)
    started = time.perf_counter()
    for _ in range(scale.pop3_rounds):
        await one_round(True)
    result.seconds = time.perf_counter() - started
    return result


# -- running and reporting ------------------------------------------------------------------


def run_on(server: Server, label: str, work: Callable[[Meter], Awaitable[Result]]) -> Result:
    interval = 1.0 if label == "idle" else 0.2
    with Meter(server, interval) as meter:
        result = asyncio.run(work(meter))
    result.usage = meter.usage
    return result


def settle(server: Server, timeout: float = 120) -> None:
    """Wait until the server has no session processes left and is quiet.

    After thousands of sessions end, Dovecot's per-connection processes take
    a while to exit; both servers share a CPU, so that work must not be
    billed to whatever runs next.
    """
    deadline = time.monotonic() + timeout
    tree = server.tree
    while time.monotonic() < deadline and (tree.by_name("imap") or tree.by_name("pop3")):
        time.sleep(0.5)  # a benchmark script, not a test: waiting for processes
    cpu = tree.cpu_seconds()
    time.sleep(0.5)
    while tree.cpu_seconds() - cpu > 0.05 and time.monotonic() < deadline:
        cpu = tree.cpu_seconds()
        time.sleep(0.5)


def ms(value: float) -> str:
    return "-" if value != value else f"{value * 1000:.1f}"


_SINGULAR = {
    "logins": "login",
    "msgs": "msg",
    "ops": "op",
    "searches": "search",
    "conns": "conn",
    "cmds": "cmd",
}


def report(title: str, results: dict[str, Result]) -> str:
    lines = [f"### {title}", ""]
    names = list(results)
    rows = [_summary_row(name, results[name]) for name in names]
    if len(names) == 2:
        rows.append(_ratio_row(names, results[names[0]], results[names[1]]))
    unit = results[names[0]].unit
    lines.append(
        markdown_table(
            [
                "server",
                unit,
                f"{unit}/s",
                "p50 ms",
                "p99 ms",
                "CPU s",
                f"CPU ms/{_SINGULAR.get(unit, unit)}",
                "peak RSS MiB",
                "errors",
            ],
            rows,
        )
    )
    steps = _steps_table(results)
    if steps:
        lines += ["", steps]
    notes = []
    for name in names:
        r = results[name]
        for key, value in r.notes.items():
            notes.append(f"- {name}: {key}: {value}")
        for key, value in sorted(r.errors.items()):
            notes.append(f"- {name}: {value} x {key}")
    if notes:
        lines.append("")
        lines.extend(notes)
    return "\n".join(lines)


def _summary_row(name: str, r: Result) -> list[str]:
    cpu_per = r.usage.cpu / r.ops * 1000 if r.ops else float("nan")
    return [
        name,
        f"{r.ops}",
        f"{r.rate:.1f}",
        ms(percentile(r.latencies, 50)),
        ms(percentile(r.latencies, 99)),
        f"{r.usage.cpu:.2f}",
        f"{cpu_per:.3f}",
        f"{r.usage.peak_rss / MIB:.0f}",
        str(sum(r.errors.values())),
    ]


def _ratio_row(names: list[str], a: Result, b: Result) -> list[str]:
    cpu_a = a.usage.cpu / a.ops if a.ops else float("nan")
    cpu_b = b.usage.cpu / b.ops if b.ops else float("nan")
    return [
        f"{names[0]}/{names[1]}",
        "",
        ratio(a.rate, b.rate),
        ratio(percentile(a.latencies, 50), percentile(b.latencies, 50)),
        ratio(percentile(a.latencies, 99), percentile(b.latencies, 99)),
        ratio(a.usage.cpu, b.usage.cpu),
        ratio(cpu_a, cpu_b),
        ratio(a.usage.peak_rss, b.usage.peak_rss),
        "",
    ]


def _steps_table(results: dict[str, Result]) -> str:
    """Each step's p50 and p99 per server (or what refused it); "" if none."""
    names = list(results)
    step_names: list[str] = []
    for r in results.values():
        step_names.extend(s for s in list(r.steps) + list(r.refused) if s not in step_names)
    if not step_names:
        return ""
    headers = ["step"]
    for name in names:
        headers += [f"{name} p50 ms", f"{name} p99 ms"]
    if len(names) == 2:
        headers.append("ratio p50")
    rows = []
    for step in step_names:
        row = [step]
        p50s = []
        for name in names:
            r = results[name]
            if step in r.refused and not r.steps.get(step):
                row += [r.refused[step], ""]
                p50s.append(float("nan"))
                continue
            values = r.steps.get(step, [])
            p50s.append(percentile(values, 50))
            row += [ms(p50s[-1]), ms(percentile(values, 99))]
        if len(names) == 2:
            row.append(ratio(p50s[0], p50s[1]))
        rows.append(row)
    return markdown_table(headers, rows)


_Work = Callable[[Meter], Awaitable[Result]]


def jobs_for(workload: str, scale: Scale) -> list[tuple[str, Callable[[Server], _Work]]]:
    """(title, server -> work) for each table a workload prints."""
    if workload == "storm":
        return [
            (
                f"Login/logout storm, {scheme}: {count} connections, "
                f"{scale.storm_concurrency} at a time",
                lambda s, user=user, count=count: (
                    lambda m: storm(s, scale, user, count, scale.storm_concurrency)
                ),
            )
            for scheme, user, count in (
                ("PLAIN", "storm", scale.storm_connections),
                ("ARGON2ID", "argon", scale.storm_argon_connections),
            )
        ]
    if workload == "sync":
        title = (
            f"First sync of a {scale.sync_messages}-message INBOX "
            f"({scale.sync_rounds} rounds after a warm-up round)"
        )
        return [(title, lambda s: lambda m: sync(s, scale))]
    if workload == "mixed":
        title = (
            f"Mixed traffic: {scale.mixed_users * scale.mixed_per_user} clients "
            f"({scale.mixed_users} users) for {scale.mixed_seconds:.0f} s, "
            f"think time {scale.mixed_think * 1000:.0f} ms mean"
        )
        return [
            (
                title + (", every session COMPRESS=DEFLATE" if mode == "compress" else ""),
                lambda s, mode=mode: lambda m: mixed(s, scale, mode == "compress"),
            )
            for mode in mixed_modes(scale)
        ]
    if workload == "search":
        title = (
            f"SEARCH on a {scale.search_messages}-message INBOX ({scale.search_runs} runs each), "
            "a bystander NOOPing every 50 ms on another account"
        )
        return [(title, lambda s: lambda m: search(s, scale))]
    if workload == "idle":

        def idle_job(s: Server) -> _Work:
            def start(m: Meter) -> Awaitable[Result]:
                pids = m.tree.pids()
                before = {"rss": m.tree.rss(pids), "pss": m.tree.pss(pids)}
                return idle(s, scale, m, before)

            return start

        title = (
            f"{scale.idle_connections} connections in IDLE ({scale.idle_users} users), "
            "each server freshly restarted"
        )
        return [(title, idle_job)]
    if workload == "saturate":
        return [
            (
                f"Saturation: {count} clients on one shared {scale.saturate_messages}-message "
                f"INBOX for {scale.saturate_seconds:.0f} s, no think time",
                lambda s, count=count: lambda m: saturate(s, scale, count),
            )
            for count in saturate_counts(scale)
        ]
    title = (
        f"POP3: RETR of a whole {scale.pop3_messages}-message maildrop "
        f"({scale.pop3_rounds} rounds after a warm-up round)"
    )
    return [(title, lambda s: lambda m: pop3(s, scale))]


def mixed_modes(scale: Scale) -> list[str]:
    """The mixed workload's runs (``--mixed-modes plain,compress``)."""
    modes = [m.strip() for m in scale.mixed_modes.split(",") if m.strip()]
    unknown = set(modes) - {"plain", "compress"}
    if unknown:
        raise SystemExit(f"unknown --mixed-modes: {', '.join(sorted(unknown))}")
    return modes


def compress_report(plain: dict[str, Result], compressed: dict[str, Result]) -> str:
    """Server CPU per command of the mixed workload without and with
    COMPRESS=DEFLATE, per server."""
    rows = []
    for name in plain:
        a, b = plain[name], compressed.get(name)
        if b is None:
            continue
        cpu_a = a.usage.cpu / a.ops * 1000 if a.ops else float("nan")
        cpu_b = b.usage.cpu / b.ops * 1000 if b.ops else float("nan")
        rows.append(
            [
                name,
                f"{a.ops}",
                f"{cpu_a:.3f}",
                f"{b.ops}",
                f"{cpu_b:.3f}",
                ratio(cpu_b, cpu_a),
                f"{a.usage.peak_rss / MIB:.0f}",
                f"{b.usage.peak_rss / MIB:.0f}",
            ]
        )
    table = markdown_table(
        [
            "server",
            "cmds plain",
            "CPU ms/cmd plain",
            "cmds COMPRESS",
            "CPU ms/cmd COMPRESS",
            "COMPRESS/plain",
            "peak RSS MiB plain",
            "peak RSS MiB COMPRESS",
        ],
        rows,
    )
    return "### Mixed traffic: server CPU per command without and with COMPRESS\n\n" + table


def saturate_counts(scale: Scale) -> list[int]:
    """The client counts of the saturation tables (``--saturate-clients 10,50``)."""
    return [int(n) for n in scale.saturate_clients.split(",") if n.strip()]


def specs_for(chosen: list[str], scale: Scale) -> list[MailboxSpec]:
    specs = [MailboxSpec("storm"), MailboxSpec("argon", scheme="ARGON2ID")]
    if "sync" in chosen:
        specs.append(MailboxSpec("sync", scale.sync_messages, seed=2))
    if "search" in chosen:
        specs.append(MailboxSpec("big", scale.search_messages, seed=3))
    if "mixed" in chosen or "search" in chosen:
        specs += [
            MailboxSpec(f"mix{n}", scale.mixed_messages, seed=4) for n in range(scale.mixed_users)
        ]
    if "idle" in chosen:
        specs += [
            MailboxSpec(f"idle{n}", scale.idle_messages, seed=5) for n in range(scale.idle_users)
        ]
    if "pop3" in chosen:
        specs.append(MailboxSpec("pop", scale.pop3_messages, seed=6))
    if "saturate" in chosen:
        specs.append(MailboxSpec("shared", scale.saturate_messages, seed=8))
    return specs


def main() -> None:
    args, scale, chosen = parse_args()
    servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    began = time.perf_counter()
    cpus, pin_note = pin_self(not args.no_pin)
    limit = raise_fd_limit(scale.idle_connections * 4 + 4000)
    for seed in (7, 9):
        message(0, seed)  # build the corpus pools before any timing
    with inotify_instances(scale.idle_connections + 1000) as inotify_note:
        print("# mailsrv load benchmark", "(quick)" if args.quick else "")
        print()
        for line in machine_info(pin_note):
            print(f"- {line}")
        print(f"- open files limit: {limit}; {inotify_note}")
        login = (
            "high-performance"
            if args.dovecot_performance_login
            else "as shipped (one process per login)"
        )
        print(f"- Dovecot login processes: {login}")
        workers = args.mailsrv_workers
        print(f"- mailsrv workers: {'one per CPU it may use' if workers is None else workers}")
        print(f"- scale: {attrs.asdict(scale)}")
        print()
        with Pair(
            specs_for(chosen, scale),
            servers=servers,
            cpus=cpus,
            keep=args.keep,
            dovecot_processes=scale.idle_connections + 500,
            dovecot_performance_login=args.dovecot_performance_login,
            mailsrv_workers=args.mailsrv_workers,
        ) as pair:
            print(f"setup took {time.perf_counter() - began:.0f} s")
            for workload in chosen:
                tables = []
                for title, make in jobs_for(workload, scale):
                    results = run_job(pair, workload, make, scale)
                    tables.append(results)
                    print()
                    print(report(title, results))
                    print(flush=True)
                if workload == "mixed" and mixed_modes(scale) == ["plain", "compress"]:
                    print(compress_report(tables[0], tables[1]))
                    print(flush=True)
    print()
    print(f"total time {time.perf_counter() - began:.0f} s")


def parse_args() -> tuple[argparse.Namespace, Scale, list[str]]:
    """The options, the scale they set and the workloads chosen."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="everything small (a minute or two)")
    parser.add_argument(
        "--workloads",
        default=",".join(WORKLOADS),
        help=f"comma-separated subset of {','.join(WORKLOADS)}",
    )
    parser.add_argument(
        "--servers", default="mailsrv,dovecot", help="comma-separated: mailsrv, dovecot"
    )
    parser.add_argument("--no-pin", action="store_true", help="do not pin client and servers")
    parser.add_argument(
        "--dovecot-performance-login",
        action="store_true",
        help="run Dovecot's login processes in high-performance mode (default: as shipped)",
    )
    parser.add_argument(
        "--mailsrv-workers",
        type=int,
        default=None,
        help="mailsrv's --workers (default: its own, one per CPU it may use)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary tree")
    for field in attrs.fields(Scale):
        parser.add_argument(
            "--" + field.name.replace("_", "-"),
            type=type(field.default),
            default=None,
            help=f"scale: default {field.default}",
        )
    args = parser.parse_args()
    scale = Scale.quick() if args.quick else Scale()
    for field in attrs.fields(Scale):
        value = getattr(args, field.name)
        if value is not None:
            setattr(scale, field.name, value)
    chosen = [w.strip() for w in args.workloads.split(",") if w.strip()]
    unknown = set(chosen) - set(WORKLOADS)
    if unknown:
        parser.error(f"unknown workloads: {', '.join(sorted(unknown))}")
    return args, scale, chosen


def run_job(
    pair: Pair, workload: str, make: Callable[[Server], _Work], scale: Scale
) -> dict[str, Result]:
    """One table's work on each server in turn (IDLE on freshly restarted ones)."""
    results: dict[str, Result] = {}
    for server in pair.servers:
        t0 = time.perf_counter()
        if workload == "idle":
            users = [f"idle{n}" for n in range(scale.idle_users)]
            pair.restart(server, users)
        print(f"running {workload} on {server.name} ...", flush=True)
        try:
            results[server.name] = run_on(server, workload, make(server))
        except (OSError, IMAPError) as e:
            failed = Result()
            failed.error(f"aborted: {type(e).__name__}: {e}")
            results[server.name] = failed
        print(f"  {time.perf_counter() - t0:.0f} s", flush=True)
    for server in pair.servers:
        settle(server)
    return results


if __name__ == "__main__":
    main()
