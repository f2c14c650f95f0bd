#!/usr/bin/env python3
"""How long mailsrv.testing's MailServer takes to start and stop.

A client's test suite starts one server per test, so this is a cost every
test pays.  For each configuration (memory, Maildir, TLS with a throwaway
certificate), ``--runs`` times (50 by default), with ``time.perf_counter``:

* start: ``MailServer(...).start_thread()``, from the constructor until the
  ports are open (the reactor thread, the storage, the certificate);
* first login: connecting imaplib and logging in, the first thing a test does;
* stop: ``stop_thread()``, until the thread is joined and the files removed.

The import and the first server of the process are reported apart
(OpenSSL's first use); the figures are the median and the 90th percentile
of the others.  A temporary Maildir goes to /dev/shm where there is one
(see ``mailsrv.testing.server``): on a disk, fsync makes the first login and
the stop cost about 100 ms each.

Run: ``python bench/fixture.py [--runs N]``.
"""

from __future__ import annotations

import argparse
import imaplib
import os
import statistics
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CONFIGURATIONS: dict[str, dict[str, Any]] = {
    "memory": {},
    "maildir": {"storage": "maildir"},
    "memory + TLS": {"tls": True},
}


def once(options: dict[str, Any]) -> tuple[float, float, float]:
    from mailsrv.testing import MailServer

    began = time.perf_counter()
    server = MailServer(**options).start_thread()
    started = time.perf_counter()
    client = imaplib.IMAP4(server.host, server.imap_port)
    client.login(server.user, server.password)
    client.logout()
    logged_in = time.perf_counter()
    server.stop_thread()
    stopped = time.perf_counter()
    return started - began, logged_in - started, stopped - logged_in


def report(name: str, samples: list[float]) -> str:
    ordered = sorted(samples)
    p90 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.9))]
    return f"{name} {statistics.median(ordered) * 1000:6.1f} ms (p90 {p90 * 1000:6.1f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()
    began = time.perf_counter()
    import mailsrv.testing.server  # noqa: F401  (the import, timed apart)

    imported = time.perf_counter()
    first = once({"tls": True})
    print(
        f"import mailsrv.testing.server: {(imported - began) * 1000:.0f} ms; "
        f"the process's first server (TLS): start {first[0] * 1000:.0f} ms, "
        f"first login {first[1] * 1000:.0f} ms, stop {first[2] * 1000:.0f} ms"
    )
    for label, options in CONFIGURATIONS.items():
        runs = [once(options) for _ in range(args.runs)]
        starts, logins, stops = zip(*runs, strict=True)
        print(
            f"{label:13}: {report('start', list(starts))}, "
            f"{report('first login', list(logins))}, {report('stop', list(stops))}"
        )


if __name__ == "__main__":
    main()
