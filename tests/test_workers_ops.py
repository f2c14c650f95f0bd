"""The metrics endpoint and the admin socket of a daemon with two workers.

The parent serves both: one scrape covers every worker (counters summed,
gauges per worker, nothing lost or counted twice when a worker is killed),
and ``mailsrv who``, ``kick``, ``stats`` and ``reload`` reach the sessions
and the configuration of every worker.  Sessions are opened until both
workers serve some; which worker serves a connection is found from /proc
(tests/workers_helpers.py).
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import stat
import tempfile
import urllib.request
from collections.abc import Iterator

from prometheus_client.parser import text_string_to_metric_families
from twisted.trial import unittest

from mailsrv import cli
from mailsrv.imap.session import KICKED
from tests.helpers import STARTUP_DEADLINE, daemon_config, free_port, loopback
from tests.test_workers import add_user
from tests.workers_helpers import Client, WorkersDaemon, owner

#: Sessions opened at most before both workers serve one (below the
#: per-address limit of the configuration: none is closed).
MOST = 90

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


class WorkersOpsCase(unittest.TestCase):
    """``twistd -n mailsrv --workers 2`` with IMAP, metrics and an admin socket."""

    admin: dict[str, object] = {}

    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.imap, self.metrics = free_port(), free_port()
        run = tempfile.mkdtemp(prefix="mailsrv-workerops-")  # a Unix socket path is short
        self.addCleanup(shutil.rmtree, run, True)
        self.socket = os.path.join(run, "admin.sock")
        self.config = os.path.join(self.dir, "mailsrv.toml")
        self.write_config()
        for user in ("alice", "bob"):
            add_user(self.config, user)
        self.server = WorkersDaemon(self.dir, self.config)
        self.addCleanup(self.server.stop)
        self.workers = self.server.wait_ready()
        self.assertEqual(len(self.workers), 2, self.server.daemon.log)

    def write_config(self, per_user: int = 100) -> None:
        daemon_config(
            self.dir,
            {
                "imap": {"listen": loopback(self.imap)},
                "limits": {"max_connections_per_user": per_user, "max_connections_per_ip": 100},
                "metrics": {"listen": f"tcp:{self.metrics}:interface=127.0.0.1"},
                "admin": {"socket": self.socket, **self.admin},
            },
        )

    def number(self, pid: int) -> str:
        """The worker number (1, 2) of a worker process, as the parent logged it."""
        found = re.findall(r"worker (\d+) started \(pid (\d+)\)", self.server.daemon.log)
        numbers: dict[int, str] = {int(p): n for n, p in found}
        return numbers[pid]

    def spread(self) -> dict[int, list[Client]]:
        """Sessions (greeted, not logged in) opened until each worker serves
        at least one, by worker pid; none is closed, so every connection
        the daemon counted is one of them."""
        by_worker: dict[int, list[Client]] = {pid: [] for pid in self.workers}
        for _ in range(MOST):
            sock, greeting = self.server.connect(self.imap)
            client = Client(sock)
            self.addCleanup(client.close)
            self.assertTrue(greeting.startswith(b"* OK"), greeting)
            pid = owner(self.workers, self.imap, sock)
            assert pid is not None
            by_worker[pid].append(client)
            if all(by_worker.values()):
                return by_worker
        raise AssertionError(f"{MOST} sessions did not reach both workers")

    def scrape(self) -> Samples:
        url = f"http://127.0.0.1:{self.metrics}/metrics"
        with urllib.request.urlopen(url, timeout=STARTUP_DEADLINE) as answer:
            text = answer.read().decode()
        return {
            (sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    def cli(self, *args: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        status = cli.main([*args, "--config", self.config], stdout=out, stderr=err)
        return status, out.getvalue(), err.getvalue()


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def counters(samples: Samples) -> Iterator[tuple[tuple[str, frozenset[tuple[str, str]]], float]]:
    """The samples that may only grow: counters, and histograms' buckets, counts and sums."""
    for key, v in samples.items():
        if key[0].endswith(("_total", "_bucket", "_count", "_sum")):
            yield key, v


class MetricsAcrossWorkersTests(WorkersOpsCase):
    def test_one_scrape_covers_every_worker_and_survives_a_killed_one(self) -> None:
        sessions = self.spread()
        everyone = [c for clients in sessions.values() for c in clients]
        for client in everyone:
            client.ok("LOGIN alice alice-pw")
            client.ok("SELECT INBOX")
        one, two = self.workers
        for _ in range(3):  # known traffic on one worker only
            sessions[two][0].ok("NOOP")

        before = self.scrape()
        n = len(everyone)
        self.assertEqual(value(before, "mailsrv_connections_total", protocol="imap"), n)
        for command, count in (("LOGIN", n), ("SELECT", n), ("NOOP", 3)):
            self.assertEqual(
                value(
                    before, "mailsrv_commands_total", protocol="imap", command=command, result="OK"
                ),
                count,
                command,
            )
        self.assertEqual(
            value(
                before, "mailsrv_command_duration_seconds_count", protocol="imap", command="SELECT"
            ),
            n,
        )
        self.assertEqual(
            value(
                before,
                "mailsrv_command_duration_seconds_bucket",
                protocol="imap",
                command="SELECT",
                le="+Inf",
            ),
            n,
        )
        self.assertEqual(
            value(
                before,
                "mailsrv_logins_total",
                protocol="imap",
                mechanism="LOGIN",
                outcome="success",
            ),
            n,
        )
        # Gauges: each worker's own sessions, labelled with its number.
        for pid in self.workers:
            worker = self.number(pid)
            self.assertEqual(
                value(before, "mailsrv_sessions", protocol="imap", state="selected", worker=worker),
                len(sessions[pid]),
                worker,
            )
            self.assertEqual(value(before, "mailsrv_worker_up", worker=worker), 1)
            self.assertGreater(
                value(before, "mailsrv_threadpool_max_threads", pool="reactor", worker=worker), 0
            )
        self.assertFalse(
            [k for k in before if k[0] == "mailsrv_sessions" and "worker" not in dict(k[1])]
        )
        self.assertEqual(value(before, "mailsrv_build_info", version="0.1.0"), 1)
        directory = self.metric_files(two)
        self.assertTrue(os.path.exists(os.path.join(directory, f"counter_{one}.db")))
        self.assertEqual(stat.S_IMODE(os.stat(directory).st_mode), 0o700)

        # One worker is killed: its sessions end, it is restarted.
        killed = self.number(one)
        os.kill(one, signal.SIGKILL)
        self.server.wait_for(f"(pid {one}) was killed by signal 9")
        self.server.wait_for("is ready", 3)
        (new,) = set(self.server.workers()) - {two}
        for client in sessions[one]:
            client.sock.settimeout(STARTUP_DEADLINE)
            self.assertEqual(client.sock.recv(4096), b"")

        after = self.scrape()
        for key, was in counters(before):
            self.assertGreaterEqual(after.get(key, 0.0), was, key)
        self.assertEqual(value(after, "mailsrv_connections_total", protocol="imap"), n)
        self.assertEqual(
            value(after, "mailsrv_sessions", protocol="imap", state="selected", worker=killed), 0
        )
        self.assertEqual(
            value(
                after,
                "mailsrv_sessions",
                protocol="imap",
                state="selected",
                worker=self.number(two),
            ),
            len(sessions[two]),
        )
        self.assertEqual(value(after, "mailsrv_worker_restarts_total", worker=killed), 1)
        self.assertEqual(self.number(new), killed)  # the slot keeps its number
        # The dead worker's figures were folded into the retired file.
        names = os.listdir(directory)
        self.assertNotIn(f"counter_{one}.db", names)
        self.assertIn("counter_retired.db", names)

        # Counting goes on from there, on the survivor and on the new worker.
        sessions[two][0].ok("NOOP")
        fresh = self.spread_onto(new)
        fresh.ok("LOGIN bob bob-pw")
        last = self.scrape()
        self.assertEqual(
            value(last, "mailsrv_commands_total", protocol="imap", command="NOOP", result="OK"), 4
        )
        self.assertEqual(
            value(last, "mailsrv_commands_total", protocol="imap", command="LOGIN", result="OK"),
            n + 1,
        )
        self.assertEqual(
            value(last, "mailsrv_sessions", protocol="imap", state="authenticated", worker=killed),
            1,
        )

        # Stopping the daemon removes the directory.
        self.server.stop()
        self.assertFalse(os.path.exists(directory))

    def metric_files(self, pid: int) -> str:
        """The directory the workers count in (from a worker's environment)."""
        with open(f"/proc/{pid}/environ", "rb") as f:
            env = dict(e.split(b"=", 1) for e in f.read().split(b"\0") if b"=" in e)
        return env[b"PROMETHEUS_MULTIPROC_DIR"].decode()

    def spread_onto(self, pid: int) -> Client:
        client = Client(self.server.connect_to(pid, self.imap))
        self.addCleanup(client.close)
        return client


class AdminAcrossWorkersTests(WorkersOpsCase):
    admin: dict[str, object] = {"worker_timeout": 2}

    def logged_in(self) -> dict[int, list[tuple[str, Client]]]:
        """Sessions on both workers, logged in: alice first on each, then
        bob and alice in turn; bob has at least one."""
        found: dict[int, list[tuple[str, Client]]] = {}
        spread = self.spread()
        if all(len(clients) == 1 for clients in spread.values()):
            sock, _ = self.server.connect(self.imap)
            client = Client(sock)
            self.addCleanup(client.close)
            pid = owner(self.workers, self.imap, sock)
            assert pid is not None
            spread[pid].append(client)
        for pid, clients in spread.items():
            for i, client in enumerate(clients):
                user = ("alice", "bob")[i % 2]
                client.ok(f"LOGIN {user} {user}-pw")
                found.setdefault(pid, []).append((user, client))
        return found

    def test_who_kick_and_stats_reach_both_workers(self) -> None:
        self.assertEqual(stat.S_IMODE(os.stat(self.socket).st_mode), 0o600)
        sessions = self.logged_in()
        status, out, err = self.cli("who", "--json")
        self.assertEqual((status, err), (0, ""))
        listed = [json.loads(line) for line in out.splitlines()]
        by_worker: dict[str, int] = {}
        for s in listed:
            by_worker[str(s["worker"])] = by_worker.get(str(s["worker"]), 0) + 1
        self.assertEqual(
            by_worker, {self.number(pid): len(clients) for pid, clients in sessions.items()}
        )
        status, out, _ = self.cli("who")
        self.assertEqual(status, 0)
        self.assertEqual(out.splitlines()[0].split()[-1], "WORKER")

        status, out, _ = self.cli("stats", "--json")
        self.assertEqual(status, 0)
        figures = json.loads(out)
        total = sum(len(c) for c in sessions.values())
        self.assertEqual(figures["sessions"]["imap"], total)
        self.assertEqual(figures["logins"]["success"], total)
        self.assertEqual(
            {str(w["worker"]): w["sessions"] for w in figures["workers"]},
            {self.number(pid): len(clients) for pid, clients in sessions.items()},
        )
        self.assertEqual(figures["unanswered"], [])

        # alice is kicked on both workers: each of her clients gets BYE.
        alice = [c for clients in sessions.values() for user, c in clients if user == "alice"]
        self.assertEqual(
            {pid for pid, cs in sessions.items() for u, _ in cs if u == "alice"}, set(self.workers)
        )
        status, out, err = self.cli("kick", "alice")
        self.assertEqual((status, err), (0, ""))
        self.assertTrue(out.startswith(f"ended {len(alice)} session"), out)
        for client in alice:
            self.assertEqual(client.line(), b"* BYE " + KICKED.encode())
            self.assertEqual(client.sock.recv(4096), b"")
        bob = [c for clients in sessions.values() for user, c in clients if user == "bob"]
        for client in bob:
            client.ok("NOOP")

        # --ip ends everything else, on both workers.
        status, out, _ = self.cli("kick", "--ip", "127.0.0.1")
        self.assertEqual(status, 0)
        self.assertTrue(out.startswith(f"ended {len(bob)} session"), out)
        for client in bob:
            self.assertEqual(client.line(), b"* BYE " + KICKED.encode())
        status, out, _ = self.cli("who")
        self.assertEqual((status, out), (0, "no sessions\n"))

    def test_reload_reports_each_worker(self) -> None:
        self.write_config(per_user=1)
        status, out, err = self.cli("reload")
        self.assertEqual((status, err), (0, ""))
        lines = out.splitlines()
        self.assertTrue(lines[0].startswith("reloaded: changed limits.max_connections_per_user"))
        self.assertEqual(
            sorted(lines[1:]),
            [
                "worker 1: reloaded, changed limits.max_connections_per_user",
                "worker 2: reloaded, changed limits.max_connections_per_user",
            ],
        )
        self.server.wait_for("reload: 2 of 2 workers applied the configuration")
        # In force on both: alice may hold one session in the whole daemon.
        one, two = self.workers
        first = Client(self.server.connect_to(one, self.imap))
        self.addCleanup(first.close)
        first.ok("LOGIN alice alice-pw")
        second = Client(self.server.connect_to(two, self.imap))
        self.addCleanup(second.close)
        self.assertEqual(
            second.command("LOGIN alice alice-pw")[-1],
            b"t1 NO [LIMIT] Too many connections for this user",
        )

        # A file the parent refuses changes nothing anywhere.
        with open(self.config) as f:
            text = f.read()
        with open(self.config, "w") as f:
            f.write(text.replace("[limits]\n", "[limits]\nmax_message_size = 5\n"))
        status, out, err = self.cli("reload")
        self.assertEqual((status, out), (78, ""))
        self.assertIn("limits.max_message_size: must be at least 1024, not 5", err)

    def test_a_worker_that_does_not_answer_is_named_not_waited_for(self) -> None:
        sessions = self.logged_in()
        stopped, running = self.workers
        os.kill(stopped, signal.SIGSTOP)
        self.addCleanup(_continue, stopped)
        status, out, err = self.cli("who", "--json")
        self.assertEqual(status, 69)
        listed = [json.loads(line) for line in out.splitlines()]
        self.assertEqual(
            {str(s["worker"]) for s in listed} if listed else set(), {self.number(running)}
        )
        self.assertEqual(len(listed), len(sessions[running]))
        self.assertIn(
            f"listed without worker {self.number(stopped)} (pid {stopped}): no answer within 2 s",
            err,
        )
        status, out, err = self.cli("stats")
        self.assertEqual(status, 69)
        self.assertIn(f"{self.number(stopped)}: no answer within 2 s", out)

        # Once it runs again, its late answers have not broken its channel.
        os.kill(stopped, signal.SIGCONT)
        status, out, err = self.cli("who", "--json")
        self.assertEqual((status, err), (0, ""))
        self.assertEqual(len(out.splitlines()), sum(len(c) for c in sessions.values()))


def _continue(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGCONT)
    except ProcessLookupError:
        pass
