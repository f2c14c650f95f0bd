"""The workloads of ``bench/load.py``: what each simulated client does, and
the :class:`Result` it records (see load.py's docstring for the list).

Each workload is a coroutine over one running :class:`peers.Server`;
load.py starts the servers, runs a workload against each and reports.
"""

from __future__ import annotations

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
    Meter,
    Usage,
)
from peers import Server

HOST = "127.0.0.1"


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
