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
import sys
import time
from collections.abc import Awaitable, Callable

import attrs

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from clients import IMAPError
from corpus import message
from harness import (
    MIB,
    MailboxSpec,
    Meter,
    Pair,
    machine_info,
    markdown_table,
    percentile,
    pin_self,
    ratio,
)
from peers import Server
from procs import inotify_instances, raise_fd_limit
from workloads import Result, Scale, idle, mixed, pop3, saturate, search, storm, sync

WORKLOADS = ("storm", "sync", "mixed", "search", "idle", "pop3", "saturate")


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
