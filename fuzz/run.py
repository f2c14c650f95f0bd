"""Run the fuzz targets under atheris (coverage-guided, libFuzzer).

    pip install atheris            # a wheel for CPython 3.11 on Linux x86-64
    python -m fuzz.run imap_command --time 600
    python -m fuzz.run --all --time 300 [--dir /tmp/mailsrv-fuzz]

Each target runs in a process of its own with mailsrv instrumented, from a
corpus directory (``DIR/TARGET/corpus``) seeded from the test data
(:mod:`fuzz.seeds`) when empty.  An input that raises is not the end of the
run: it is saved under ``DIR/TARGET/findings/`` (one file per distinct
exception and place) and fuzzing goes on.  ``DIR/TARGET/stats.json`` keeps
the count of inputs, the findings and the slowest input, which ``--all``
times again without instrumentation and reports as a table (the figures in
docs/security.md come from it).  Arguments after ``--`` go to libFuzzer.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

DEFAULT_DIR = "/tmp/mailsrv-fuzz"


class Recorder:
    """Wraps a target: counts inputs, keeps the slowest, saves findings."""

    def __init__(self, name: str, target: Callable[[bytes], None], directory: str) -> None:
        self.name = name
        self.target = target
        self.directory = directory
        self.findings_dir = os.path.join(directory, "findings")
        os.makedirs(self.findings_dir, exist_ok=True)
        self.inputs = 0
        self.findings: dict[str, dict[str, Any]] = {}
        self.slowest = 0.0
        self.started = time.monotonic()
        self._saved = 0.0

    def __call__(self, data: bytes) -> None:
        started = time.perf_counter()
        try:
            self.target(data)
        except Exception as e:  # every exception is a finding, not the end
            self._finding(e, data)
        elapsed = time.perf_counter() - started
        self.inputs += 1
        if elapsed > self.slowest:
            self.slowest = elapsed
            with open(os.path.join(self.directory, "slowest"), "wb") as handle:
                handle.write(data)
        if time.monotonic() - self._saved > 1.0:
            self.save()

    def _finding(self, error: Exception, data: bytes) -> None:
        frames = traceback.extract_tb(error.__traceback__)
        ours = [f for f in frames if "/mailsrv/" in f.filename or "/fuzz/" in f.filename]
        place = ours[-1] if ours else frames[-1]
        key = f"{type(error).__name__} at {os.path.basename(place.filename)}:{place.lineno}"
        found = self.findings.setdefault(key, {"count": 0, "message": str(error)[:500]})
        found["count"] += 1
        if found["count"] == 1:
            digest = hashlib.sha1(data).hexdigest()[:12]
            found["input"] = os.path.join(self.findings_dir, f"{digest}.bin")
            with open(found["input"], "wb") as handle:
                handle.write(data)
            self.save()

    def save(self) -> None:
        self._saved = time.monotonic()
        stats = {
            "target": self.name,
            "inputs": self.inputs,
            "seconds": round(self._saved - self.started, 1),
            "slowest_seconds": self.slowest,
            "findings": self.findings,
        }
        path = os.path.join(self.directory, "stats.json")
        with open(path + ".tmp", "w") as handle:
            json.dump(stats, handle, indent=1)
        os.replace(path + ".tmp", path)


def fuzz_one(name: str, seconds: int, directory: str, libfuzzer: list[str]) -> None:
    """Fuzz ``name`` in this process (libFuzzer exits it at the end)."""
    import atheris  # type: ignore[import-untyped]

    with atheris.instrument_imports(include=["mailsrv", "fuzz", "tests.stress"]):
        from fuzz import seeds, targets

    target_dir = os.path.join(directory, name)
    corpus = os.path.join(target_dir, "corpus")
    os.makedirs(corpus, exist_ok=True)
    if not os.listdir(corpus):
        for i, seed in enumerate(seeds.seeds(name)):
            with open(os.path.join(corpus, f"seed-{i:04d}"), "wb") as handle:
                handle.write(seed)
    recorder = Recorder(name, targets.TARGETS[name], target_dir)
    args = [
        sys.argv[0],
        corpus,
        f"-max_total_time={seconds}",
        "-max_len=65536",
        "-timeout=30",
        "-rss_limit_mb=4096",
        "-print_final_stats=1",
        *libfuzzer,
    ]
    atheris.Setup(args, recorder)
    atheris.Fuzz()


def retime(name: str, path: str, repeat: int = 5) -> float:
    """The best of ``repeat`` runs of ``name`` on the input at ``path``,
    without instrumentation."""
    from fuzz import targets

    with open(path, "rb") as handle:
        data = handle.read()
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        try:
            targets.TARGETS[name](data)
        except Exception:
            pass
        best = min(best, time.perf_counter() - started)
    return best


def run_all(names: list[str], seconds: int, directory: str, libfuzzer: list[str]) -> int:
    rows = []
    for name in names:
        print(f"== {name}: {seconds} s", flush=True)
        subprocess.run(
            [sys.executable, "-m", "fuzz.run", name, "--time", str(seconds), "--dir", directory]
            + (["--", *libfuzzer] if libfuzzer else []),
            check=False,
        )
        with open(os.path.join(directory, name, "stats.json")) as handle:
            stats = json.load(handle)
        slowest = os.path.join(directory, name, "slowest")
        size = os.path.getsize(slowest) if os.path.exists(slowest) else 0
        again = retime(name, slowest) if size else 0.0
        rows.append((name, stats, size, again))
    print()
    print(
        f"{'target':14} {'inputs':>9} {'findings':>8} {'slowest':>10} {'re-timed':>9} {'octets':>7}"
    )
    found = 0
    for name, stats, size, again in rows:
        findings = stats["findings"]
        found += len(findings)
        print(
            f"{name:14} {stats['inputs']:9d} {len(findings):8d} "
            f"{stats['slowest_seconds'] * 1000:8.1f}ms {again * 1000:7.1f}ms {size:7d}"
        )
        for key, finding in findings.items():
            print(
                f"    {key} (x{finding['count']}): {finding['message'][:120]} [{finding['input']}]"
            )
    return 1 if found else 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    libfuzzer: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, libfuzzer = argv[:cut], argv[cut + 1 :]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("target", nargs="*", help="target names (fuzz/targets.py TARGETS)")
    parser.add_argument("--all", action="store_true", help="every target, one after the other")
    parser.add_argument("--time", type=int, default=60, help="seconds per target")
    parser.add_argument("--dir", default=DEFAULT_DIR, help="corpora, findings and stats")
    args = parser.parse_args(argv)
    if args.all or len(args.target) != 1:
        # Importing the targets imports mailsrv: only here, in the parent,
        # never before fuzz_one instruments it.
        from fuzz.targets import TARGETS

        unknown = [t for t in args.target if t not in TARGETS]
        if unknown or not (args.all or args.target):
            parser.error(f"name targets from: {', '.join(TARGETS)} (or --all)")
        return run_all(args.target or list(TARGETS), args.time, args.dir, libfuzzer)
    fuzz_one(args.target[0], args.time, args.dir, libfuzzer)
    return 0


if __name__ == "__main__":
    sys.exit(main())
