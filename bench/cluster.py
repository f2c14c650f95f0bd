#!/usr/bin/env python3
"""mailsrv nodes on one PostgreSQL behind HAProxy: 1, 2 and 3 nodes.

Starts a private PostgreSQL (tests/pgcluster.py, durability switched back
on), imports seeded Maildirs into it with ``mailsrv migrate``, and for each
node count starts that many ``twistd -n mailsrv`` daemons (PROXY listeners)
behind a private HAProxy (Debian's package; PROXY v2, health checks), then
runs, through HAProxy:

``mixed``   bench/load.py's mixed traffic (NOOP, IDLE, FETCH, STORE,
            APPEND, EXPUNGE from ``--clients`` clients of 10 users);
``idle``    bench/load.py's IDLE workload (``--idle-connections`` sessions
            in IDLE spread over the nodes; one new message, how long until
            every session of that user heard of it, whichever node it is on);

and, with two nodes or more, the notification latency: a client IDLEs on
node 1, another APPENDs to the same mailbox on node 2, ``--rounds`` times;
the time from sending the APPEND to the untagged EXISTS on node 1.

For each run it prints throughput and latency, and the CPU seconds spent by
the nodes, PostgreSQL and HAProxy, so it shows what saturates.  Everything
runs on this machine: load generator, nodes, database and proxy share its
CPUs (the report says how many).

Run: ``python bench/cluster.py [--nodes 1,2,3] [--seconds 20] [--quick]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from clients import IMAPClient
from corpus import build_maildir, message
from harness import PASSWORD, Meter, machine_info, markdown_table, percentile
from peers import _bin, _Trees, durable, postmaster_pid
from procs import ProcessTree, free_port, wait_for_port
from workloads import Scale, idle, mixed

HOST = "127.0.0.1"


class Node:
    """One ``twistd -n mailsrv`` on the shared database."""

    def __init__(self, top: str, number: int, dsn: str, passwd: str) -> None:
        self.number = number
        self.proxy_port = free_port()
        self.direct_port = free_port()
        self.config = os.path.join(top, f"node{number}.toml")
        self.log_path = os.path.join(top, f"node{number}.log")
        with open(self.config, "w") as f:
            f.write(
                f'[server]\nhostname = "node{number}"\ntrusted_proxies = ["127.0.0.1"]\n'
                f'[imap]\nlisten = ["haproxy:tcp:{self.proxy_port}:interface=127.0.0.1", '
                f'"tcp:{self.direct_port}:interface=127.0.0.1"]\n'
                f'[users]\npasswd_file = "{passwd}"\n'
                '[auth]\nplaintext = "always"\n'
                f'[storage]\nbackend = "postgresql"\ndsn = "{dsn}"\npool_size = 10\n'
                "[limits]\nmax_connections_per_user = 100000\nmax_connections_per_ip = 100000\n"
                '[logging]\nlevel = "warn"\n'
            )
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [_bin("twistd"), "-n", "--pidfile=", "mailsrv", "--config", self.config],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_for_port(self.direct_port, self.process, self.log_path, 60)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(30)


class Balancer:
    """A private HAProxy in front of the nodes (roundrobin, PROXY v2)."""

    def __init__(self, top: str, nodes: list[Node]) -> None:
        self.port = free_port()
        self.config = os.path.join(top, f"haproxy-{len(nodes)}.cfg")
        servers = "".join(
            f"    server n{n.number} 127.0.0.1:{n.proxy_port} send-proxy-v2 check "
            "check-send-proxy inter 2s\n"
            for n in nodes
        )
        with open(self.config, "w") as f:
            f.write(
                "global\n    maxconn 9000\n"
                "defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 10m\n"
                "    timeout server 10m\n    timeout check 2s\n"
                f"frontend imap\n    bind 127.0.0.1:{self.port}\n    default_backend nodes\n"
                "backend nodes\n    balance roundrobin\n    option tcp-check\n"
                '    tcp-check expect string "* OK"\n' + servers
            )
        self.process = subprocess.Popen(
            ["haproxy", "-db", "-f", self.config],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_for_port(self.port, self.process, "/dev/null", 30)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(30)


class Cluster:
    """What load.py's workloads see as one server: HAProxy's port, and the
    processes of the nodes, the database and HAProxy as its tree."""

    name = "cluster"

    def __init__(self, nodes: list[Node], balancer: Balancer, postmaster: int) -> None:
        self.nodes = nodes
        self.balancer = balancer
        self.postmaster = postmaster
        self.imap_port = balancer.port

    @property
    def tree(self) -> ProcessTree:
        roots = [n.process.pid for n in self.nodes if n.process is not None]
        return _Trees([*roots, self.postmaster, self.balancer.process.pid])

    def cpu(self) -> dict[str, float]:
        nodes = sum(
            ProcessTree(n.process.pid).cpu_seconds() for n in self.nodes if n.process is not None
        )
        return {
            "nodes": nodes,
            "postgresql": ProcessTree(self.postmaster).cpu_seconds(),
            "haproxy": ProcessTree(self.balancer.process.pid).cpu_seconds(),
        }


async def proxied(port: int) -> IMAPClient:
    """A connection to a node's PROXY listener, sending the header HAProxy would."""
    reader, writer = await asyncio.open_connection(HOST, port)
    local = writer.get_extra_info("sockname")
    writer.write(f"PROXY TCP4 127.0.0.1 127.0.0.1 {local[1]} {port}\r\n".encode())
    client = IMAPClient(reader, writer)
    client.greeting = await client.line()
    return client


async def notification_latency(
    first: Node, second: Node, rounds: int, via_proxy: bool
) -> dict[str, list[float]]:
    """APPEND through node 2, untagged EXISTS at an IDLE session on node 1
    (connected to its PROXY listener, or to its direct one)."""
    if via_proxy:
        watcher = await proxied(first.proxy_port)
    else:
        watcher = await IMAPClient.connect(HOST, first.direct_port)
    await watcher.login("lat", PASSWORD)
    await watcher.select()
    sender = await IMAPClient.connect(HOST, second.direct_port)
    await sender.login("lat", PASSWORD)
    notified: list[float] = []
    appended: list[float] = []
    for n in range(rounds):
        tag = await watcher.idle_start()
        data = message(2_000_000 + n, seed=11)
        started = time.perf_counter()
        sending = asyncio.ensure_future(sender.append("INBOX", data))
        while True:
            line = await asyncio.wait_for(watcher.idle_wait(), 30)
            if line.endswith(b"EXISTS"):
                notified.append(time.perf_counter() - started)
                break
        reply = await sending
        appended.append(reply.seconds)
        await watcher.idle_done(tag)
    await watcher.logout()
    await sender.logout()
    listener = "PROXY listener" if via_proxy else "direct listener"
    return {
        f"EXISTS on node 1 ({listener}) after APPEND sent to node 2": notified,
        f"APPEND on node 2 ({listener} run)": appended,
    }


def ms(value: float) -> str:
    return f"{value * 1000:.1f}"


def main() -> None:
    args = parse_args()
    counts = [int(c) for c in args.nodes.split(",")]
    workloads = args.workloads.split(",")
    scale = Scale()
    scale.mixed_users = 10
    scale.mixed_per_user = max(1, args.clients // scale.mixed_users)
    scale.mixed_seconds = args.seconds
    scale.mixed_think = args.think
    scale.idle_connections = args.idle_connections
    scale.idle_users = 5
    scale.idle_setup_limit = 300.0

    from tests.pgcluster import Cluster as PgCluster

    began = time.perf_counter()
    top = tempfile.mkdtemp(prefix="mailsrv-cluster-bench-")
    pg = PgCluster.shared()
    durable(pg)
    dsn = pg.create_schema()
    passwd = os.path.join(top, "passwd")
    imported, seconds = seed(top, dsn, passwd, scale)

    print("# mailsrv nodes on one PostgreSQL behind HAProxy")
    print()
    for line in machine_info(
        "not pinned: load generator, nodes, PostgreSQL and HAProxy share them"
    ):
        print(f"- {line}")
    print(f"- PostgreSQL: private server, fsync and synchronous_commit on, {pg.bindir}")
    version = subprocess.run(["haproxy", "-v"], capture_output=True, text=True).stdout
    print(f"- HAProxy: {version.splitlines()[0]}")
    print(f"- seeding: mailsrv migrate, {imported} ({seconds:.0f} s)")
    print(
        f"- mixed: {scale.mixed_users * scale.mixed_per_user} clients, {args.seconds:.0f} s, "
        f"think {args.think * 1000:.0f} ms; idle: {args.idle_connections} connections"
    )
    print()
    rows: dict[str, list[list[str]]] = {"mixed": [], "idle": [], "latency": []}
    for count in counts:
        nodes = [Node(top, number, dsn, passwd) for number in range(1, count + 1)]
        for node in nodes:
            node.start()
        balancer = Balancer(top, nodes)
        cluster = Cluster(nodes, balancer, postmaster_pid(pg))
        try:
            if "mixed" in workloads:
                rows["mixed"].append(mixed_row(cluster, scale, count))
            if "idle" in workloads:
                rows["idle"].append(idle_row(cluster, scale, count))
            if "latency" in workloads and count >= 2:
                rows["latency"] += latency_rows(nodes, args.rounds, count)
        finally:
            balancer.stop()
            for node in nodes:
                node.stop()
        print(f"{count} node(s) done at {time.perf_counter() - began:.0f} s", flush=True)
    print()
    print_tables(rows)
    print(f"total time {time.perf_counter() - began:.0f} s ({top})")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", default="1,2,3", help="node counts to run, e.g. 1,2,3")
    parser.add_argument("--seconds", type=float, default=20.0, help="mixed traffic duration")
    parser.add_argument("--clients", type=int, default=50, help="mixed traffic clients")
    parser.add_argument("--think", type=float, default=0.1, help="mean think time, seconds")
    parser.add_argument("--idle-connections", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=200, help="notification latency rounds")
    parser.add_argument("--workloads", default="mixed,idle,latency")
    parser.add_argument("--quick", action="store_true", help="short runs (a few minutes)")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.idle_connections, args.rounds = 8.0, 200, 50
    return args


def seed(top: str, dsn: str, passwd: str, scale: Scale) -> tuple[str, float]:
    """The users and their mail, written as Maildirs and imported with
    ``mailsrv migrate``: its last line of output, and how long it took."""
    users = [f"mix{n}" for n in range(scale.mixed_users)]
    users += [f"idle{n}" for n in range(scale.idle_users)] + ["lat"]
    with open(passwd, "w") as f:
        f.writelines(f"{user}:{{PLAIN}}{PASSWORD}\n" for user in users)
    seed_config = os.path.join(top, "seed.toml")
    with open(seed_config, "w") as f:
        f.write(
            f'[users]\npasswd_file = "{passwd}"\n'
            f'[storage]\nbackend = "postgresql"\ndsn = "{dsn}"\n'
            f'maildir = "{top}/seed/{{user}}/Maildir"\n'
        )
    for user in users:
        count = scale.mixed_messages if user.startswith("mix") else scale.idle_messages
        build_maildir(os.path.join(top, "seed", user, "Maildir"), count, seed=4)
    started = time.perf_counter()
    done = subprocess.run(
        [
            _bin("mailsrv"),
            "migrate",
            "--config",
            seed_config,
            "--from",
            "maildir",
            "--to",
            "postgresql",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stderr.strip().splitlines()[-1], time.perf_counter() - started


def mixed_row(cluster: Cluster, scale: Scale, count: int) -> list[str]:
    before = cluster.cpu()
    with Meter(cluster, 0.5) as meter:  # type: ignore[arg-type]
        result = asyncio.run(mixed(cluster, scale))  # type: ignore[arg-type]
    after = cluster.cpu()
    spent = {k: after[k] - before[k] for k in after}
    del meter
    return [
        str(count),
        f"{result.ops}",
        f"{result.rate:.0f}",
        ms(percentile(result.latencies, 50)),
        ms(percentile(result.latencies, 99)),
        f"{spent['nodes']:.1f}",
        f"{spent['postgresql']:.1f}",
        f"{spent['haproxy']:.1f}",
        f"{sum(spent.values()) / result.seconds * 100:.0f} %",
        str(sum(result.errors.values())),
    ]


def idle_row(cluster: Cluster, scale: Scale, count: int) -> list[str]:
    with Meter(cluster, 1.0) as meter:  # type: ignore[arg-type]
        pids = meter.tree.pids()
        base = {"rss": meter.tree.rss(pids), "pss": meter.tree.pss(pids)}
        result = asyncio.run(idle(cluster, scale, meter, base))  # type: ignore[arg-type]
    wake = next(iter(result.steps.values()), [])
    return [
        str(count),
        f"{result.ops}",
        f"{result.seconds:.1f}",
        ms(percentile(wake, 50)) if wake else "-",
        ms(percentile(wake, 99)) if wake else "-",
        result.notes.get("RSS per connection, KiB", "-"),
        str(sum(result.errors.values())),
    ]


def latency_rows(nodes: list[Node], rounds: int, count: int) -> list[list[str]]:
    found = asyncio.run(notification_latency(nodes[0], nodes[1], rounds, True))
    found.update(asyncio.run(notification_latency(nodes[0], nodes[1], rounds, False)))
    return [
        [
            str(count),
            what,
            str(len(values)),
            ms(percentile(values, 50)),
            ms(percentile(values, 99)),
            ms(max(values)),
        ]
        for what, values in found.items()
    ]


def print_tables(rows: dict[str, list[list[str]]]) -> None:
    tables = (
        (
            "mixed",
            "Mixed traffic through HAProxy",
            [
                "nodes",
                "ops",
                "ops/s",
                "p50 ms",
                "p99 ms",
                "CPU s nodes",
                "CPU s PostgreSQL",
                "CPU s HAProxy",
                "CPU busy (of 200 %)",
                "errors",
            ],
        ),
        (
            "idle",
            "IDLE sessions through HAProxy",
            [
                "nodes",
                "sessions",
                "setup s",
                "new mail reaches all, p50 ms",
                "p99 ms",
                "RSS/conn KiB (nodes + PostgreSQL)",
                "errors",
            ],
        ),
        (
            "latency",
            "A change reaching an IDLE session on another node",
            ["nodes", "what", "rounds", "p50 ms", "p99 ms", "max ms"],
        ),
    )
    for key, title, headers in tables:
        if rows[key]:
            print(f"### {title}")
            print()
            print(markdown_table(headers, rows[key]))
            print()


if __name__ == "__main__":
    main()
