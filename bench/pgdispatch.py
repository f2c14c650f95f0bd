"""Threads or asyncio for the PostgreSQL backend: what each costs.

Runs the same query -- the storage's STATUS read of one mailbox, a
primary-key lookup -- three ways against a private PostgreSQL server
(tests/pgcluster.py), each in a process of its own:

* ``sync``: psycopg on the calling thread, no reactor (the floor);
* ``threads``: Twisted's default epoll reactor, the work handed to a
  bounded thread pool with one synchronous connection per thread
  (``deferToThreadPool``), as mailsrv/storage/postgres/db.py does;
* ``asyncio``: Twisted on the asyncio reactor, psycopg ``AsyncConnection``s
  (one per concurrent client, up to the pool size), awaited through
  ``Deferred.fromFuture``.

Then it times the backend's own operations (APPEND, FETCH of 500, STATUS,
open, STORE) through ``PostgresStorage``, one at a time.

For each dispatch it reports the latency of one query at a time (median and 99th
percentile), the throughput of 50 clients querying at once over a pool of
10 connections, and how late a 1 ms timer fires on the reactor meanwhile
(the reactor's own responsiveness while the database work goes on).

    python bench/pgdispatch.py            # all three, a table
    python bench/pgdispatch.py --queries 2000

A benchmark helper, not part of mailsrv.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

QUERY = (
    "SELECT messages, unseen, deleted, size, uidnext, uidvalidity, highest_modseq "
    "FROM mailboxes WHERE user_name = %s AND mailbox_id = %s"
)
POOL = 10
CLIENTS = 50


def _seed(dsn: str) -> None:
    from mailsrv.storage.postgres import PostgresStorage

    storage = PostgresStorage(dsn)
    storage.account("alice")
    storage.close()


def _percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "median_us": statistics.median(ordered) * 1e6,
        "p99_us": ordered[int(len(ordered) * 0.99) - 1] * 1e6,
    }


def run_sync(dsn: str, queries: int) -> dict[str, Any]:
    import psycopg

    conn = psycopg.connect(dsn, autocommit=True)
    samples = []
    for _ in range(queries):
        start = time.perf_counter()
        conn.execute(QUERY, ("alice", 1)).fetchone()
        samples.append(time.perf_counter() - start)
    return {"latency": _percentiles(samples)}


def _lag_probe(reactor: Any, lags: list[float]) -> Any:
    """A 1 ms timer, re-armed forever; records how late each one fires."""

    def tick(due: float) -> None:
        lags.append(time.perf_counter() - due)
        call[0] = reactor.callLater(0.001, tick, time.perf_counter() + 0.001)

    call = [reactor.callLater(0.001, tick, time.perf_counter() + 0.001)]
    return call


async def _measure(query_once: Any, queries: int, reactor: Any) -> dict[str, Any]:
    from twisted.internet import defer

    samples = []
    for _ in range(queries):
        start = time.perf_counter()
        await query_once()
        samples.append(time.perf_counter() - start)
    lags: list[float] = []
    probe = _lag_probe(reactor, lags)
    per_client = max(queries // CLIENTS, 20)

    async def client() -> None:
        for _ in range(per_client):
            await query_once()

    start = time.perf_counter()
    await defer.gatherResults([defer.ensureDeferred(client()) for _ in range(CLIENTS)])
    elapsed = time.perf_counter() - start
    probe[0].cancel()
    return {
        "latency": _percentiles(samples),
        "throughput_qps": CLIENTS * per_client / elapsed,
        "timer_lag": _percentiles(lags),
    }


def run_threads(dsn: str, queries: int) -> dict[str, Any]:
    from twisted.internet import reactor

    from mailsrv.storage.postgres.db import Database

    db = Database(dsn, POOL, reactor)

    def work(conn: Any) -> Any:
        return conn.execute(QUERY, ("alice", 1)).fetchone()

    def query_once() -> Any:
        return db.run(work)

    return _run_reactor(reactor, lambda: _measure(query_once, queries, reactor), db.close)


def run_asyncio(dsn: str, queries: int) -> dict[str, Any]:
    from twisted.internet import asyncioreactor

    asyncioreactor.install()
    import asyncio

    import psycopg
    from twisted.internet import defer, reactor

    connections: asyncio.Queue[Any] = asyncio.Queue()

    async def open_pool() -> None:
        for _ in range(POOL):
            connections.put_nowait(await psycopg.AsyncConnection.connect(dsn, autocommit=True))

    async def query() -> Any:
        conn = await connections.get()
        try:
            cursor = await conn.execute(QUERY, ("alice", 1))
            return await cursor.fetchone()
        finally:
            connections.put_nowait(conn)

    def query_once() -> Any:
        return defer.Deferred.fromFuture(asyncio.ensure_future(query()))

    async def main() -> dict[str, Any]:
        await defer.Deferred.fromFuture(asyncio.ensure_future(open_pool()))
        return await _measure(query_once, queries, reactor)

    return _run_reactor(reactor, main, lambda: None)


def run_storage(dsn: str, queries: int) -> dict[str, Any]:
    """The backend's own operations, one at a time, through PostgresStorage."""
    import io

    from twisted.internet import defer, reactor

    from mailsrv.storage.postgres import PostgresStorage

    storage = PostgresStorage(dsn, pool_size=POOL, reactor=reactor)
    body = b"Subject: bench\r\n\r\n" + b"x" * 2000 + b"\r\n"

    async def main() -> dict[str, Any]:
        account = await defer.maybeDeferred(storage.account, "bench")
        inbox = await defer.maybeDeferred(account.get_mailbox, "INBOX")
        timings: dict[str, list[float]] = {}

        async def timed(name: str, function: Any, *args: Any) -> Any:
            start = time.perf_counter()
            result = await defer.maybeDeferred(function, *args)
            timings.setdefault(name, []).append(time.perf_counter() - start)
            return result

        count = min(queries, 1000)
        uids = [await timed("APPEND 2 KB", inbox.append, io.BytesIO(body)) for _ in range(count)]
        for _ in range(100):
            await timed("FETCH 500 (flags, sizes)", inbox.fetch, uids[:500])
            await timed("STATUS", inbox.status)
            handle = await timed("open (read a message)", inbox.open, uids[7])
            handle.close()
            await timed("STORE +FLAGS 1", inbox.store, [uids[3]], ["$x"], "add")
            await timed("STORE -FLAGS 1", inbox.store, [uids[3]], ["$x"], "remove")
        return {name: _percentiles(samples) for name, samples in timings.items()}

    return _run_reactor(reactor, main, storage.close)


def _run_reactor(reactor: Any, main: Any, cleanup: Any) -> dict[str, Any]:
    from twisted.internet import defer

    result: dict[str, Any] = {}

    def start() -> None:
        d = defer.ensureDeferred(main())
        d.addCallback(result.update)
        d.addErrback(lambda f: result.update(error=f.getTraceback()))
        d.addBoth(lambda _: (cleanup(), reactor.stop()))

    reactor.callWhenRunning(start)
    reactor.run()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queries", type=int, default=3000)
    parser.add_argument("--mode", choices=("sync", "threads", "asyncio", "storage"))
    parser.add_argument("--dsn")
    args = parser.parse_args()
    if args.mode:
        runner = {
            "sync": run_sync,
            "threads": run_threads,
            "asyncio": run_asyncio,
            "storage": run_storage,
        }[args.mode]
        print(json.dumps(runner(args.dsn, args.queries)))
        return
    from tests.pgcluster import Cluster

    cluster = Cluster.shared()
    dsn = cluster.create_schema()
    _seed(dsn)
    rows = []
    for mode in ("sync", "threads", "asyncio"):
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--mode",
                mode,
                "--dsn",
                dsn,
                "--queries",
                str(args.queries),
            ],
            capture_output=True,
            check=True,
            text=True,
        )
        rows.append((mode, json.loads(out.stdout.strip().splitlines()[-1])))
    out = subprocess.run(
        [sys.executable, __file__, "--mode", "storage", "--dsn", dsn, "--queries", "1000"],
        capture_output=True,
        check=True,
        text=True,
    )
    storage = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"{'mode':8} {'median':>9} {'p99':>9} {'50 clients':>12} {'timer lag':>10} {'p99':>9}")
    for mode, r in rows:
        lat = r["latency"]
        qps = r.get("throughput_qps")
        lag = r.get("timer_lag")
        print(
            f"{mode:8} {lat['median_us']:7.0f}us {lat['p99_us']:7.0f}us "
            + (f"{qps:8.0f} q/s " if qps else f"{'-':>12} ")
            + (f"{lag['median_us']:8.0f}us {lag['p99_us']:7.0f}us" if lag else "")
        )
    print("\nPostgresStorage, one operation at a time (pool of 10 threads):")
    for name, lat in storage.items():
        print(f"  {name:28} median {lat['median_us']:6.0f}us  p99 {lat['p99_us']:6.0f}us")


if __name__ == "__main__":
    main()
