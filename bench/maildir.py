#!/usr/bin/env python3
"""Benchmark mailsrv's Maildir storage on a large mailbox.

Builds a Maildir of ``--messages`` small messages (100,000 by default) in a
temporary directory and times, with ``time.perf_counter``:

* cold open: the first open, which builds the index from the files;
* warm open: a fresh storage over the same files (index present) answering
  counts, the UID list and every message's flags;
* append one message, change one message's flags, STATUS -- each also on an
  empty mailbox, since these should not depend on the mailbox's size.

If Dovecot's ``doveadm`` is on PATH, the same tree is opened with it (a
private Dovecot from ``bench/peers.py``, shared with ``bench/load.py`` and
``bench/fetch.py``) and the ratios are printed; otherwise the script says
Dovecot was not found.

Run: ``python bench/maildir.py [--messages N] [--keep]``.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from peers import Dovecot

from mailsrv.interfaces import StoreMode
from mailsrv.storage.maildir import MaildirMailbox, MaildirStorage

BODY = (
    "From: Sender {i} <sender{i}@example.org>\r\n"
    "To: bench@example.org\r\n"
    "Subject: benchmark message {i}\r\n"
    "Message-ID: <{i}@bench.example.org>\r\n"
    "Date: Mon, 1 Jan 2024 00:00:00 +0000\r\n"
    "\r\n"
    "Hello, this is message {i}.\r\n"
)


def build(root: str, count: int) -> float:
    """Write ``count`` messages straight into cur/ as a settled mailbox."""
    started = time.perf_counter()
    for sub in ("cur", "new", "tmp"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    cur = os.path.join(root, "cur")
    base_time = 1_700_000_000
    for i in range(count):
        data = BODY.format(i=i).encode()
        flags = "".join(sorted(("F" if i % 20 == 0 else "") + ("S" if i % 10 < 7 else "")))
        size = len(data)
        name = f"{base_time + i}.M{i}P1.bench,S={size},W={size}:2,{flags}"
        with open(os.path.join(cur, name), "wb") as handle:
            handle.write(data)
    settle(root)
    return time.perf_counter() - started


def settle(root: str) -> None:
    """Date the directories a minute back, as in a mailbox nobody touched lately."""
    past = time.time() - 60
    for sub in ("cur", "new"):
        os.utime(os.path.join(root, sub), (past, past))


def timed(action: Callable[[], object], repeat: int = 1) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        action()
        best = min(best, time.perf_counter() - started)
    return best


def open_and_read(storage: MaildirStorage, user: str) -> tuple[MaildirMailbox, int]:
    mailbox = storage.account(user).open_mailbox("INBOX")
    mailbox.status()
    uids = mailbox.uids()
    flags = [m.flags for m in mailbox.fetch(uids)]
    return mailbox, len(flags)


def operations(storage: MaildirStorage, user: str, root: str) -> dict[str, float]:
    """Append, store, STATUS on an open mailbox; STATUS also once settled."""
    account = storage.account(user)
    mailbox = account.open_mailbox("INBOX")
    results: dict[str, float] = {}
    message = BODY.format(i="appended").encode()
    uids: list[int] = []
    results["append one message"] = timed(
        lambda: uids.append(mailbox.append(io.BytesIO(message))), repeat=5
    )
    target = uids[-1]
    flag = iter(["\\Flagged", "\\Answered", "$Bench", "\\Draft", "\\Seen"])
    results["store one message's flags"] = timed(
        lambda: mailbox.store([target], [next(flag)], StoreMode.ADD), repeat=5
    )
    results["STATUS right after a change"] = timed(lambda: account.status("INBOX"), repeat=1)
    settle(root)
    account.status("INBOX")  # notices the new mtimes once
    results["STATUS (settled)"] = timed(lambda: account.status("INBOX"), repeat=5)
    return results


def dovecot_times(top: str, user: str) -> dict[str, float] | None:
    """Dovecot's times for the same tree, through doveadm with a private config.

    A private Dovecot (``bench/peers.py``) listens on nothing but its own
    sockets, which doveadm needs for user lookups.  Dovecot keeps its index
    and uidlist outside the tree (INDEX=, CONTROL=), so it starts cold exactly
    as mailsrv did.
    """
    if shutil.which("doveadm") is None:
        return None
    index = os.path.join(top, "dovecot", "index")
    os.makedirs(index, exist_ok=True)
    os.chmod(top, 0o755)  # Dovecot reads mail as nobody when we are root
    try:
        dovecot = Dovecot(os.path.join(top, "dovecot"), None, protocols=(), mail=top, index=index)
    except RuntimeError as e:
        print(f"dovecot unusable: {e}")
        return None
    dovecot.own(os.path.join(top, user))
    dovecot.own(index)

    def run(*args: str, stdin: bytes | None = None) -> float:
        started = time.perf_counter()
        done = dovecot.doveadm(*args, stdin=stdin)
        elapsed = time.perf_counter() - started
        if done.returncode != 0:
            raise RuntimeError(done.stderr.decode(errors="replace").strip())
        return elapsed

    status = ("mailbox", "status", "-u", user, "messages unseen uidnext", "INBOX")
    try:
        dovecot.start()
        results = {"cold open": run(*status), "warm open": run(*status)}
        message = b"From: bench@example.org\r\nSubject: one more\r\n\r\nbody\r\n"
        results["append one message"] = run("save", "-u", user, "-m", "INBOX", stdin=message)
        results["store one message's flags"] = run(
            "flags", "add", "-u", user, "\\Flagged", "mailbox", "INBOX", "uid", "7"
        )
        results["baseline (doveadm doing nothing)"] = run("user", user)
    except RuntimeError as e:
        print(f"doveadm failed: {e}")
        return None
    finally:
        dovecot.stop()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000, help="mailbox size")
    parser.add_argument("--keep", action="store_true", help="keep the temporary tree")
    args = parser.parse_args()

    top = tempfile.mkdtemp(prefix="mailsrv-bench-")
    try:
        template = os.path.join(top, "{user}", "Maildir")
        big_root = os.path.join(top, "big", "Maildir")
        print(f"building {args.messages} messages in {big_root} ...")
        print(f"  built in {build(big_root, args.messages):.2f} s")

        rows: list[tuple[str, float, float | None]] = []
        started = time.perf_counter()
        _, count = open_and_read(MaildirStorage(template), "big")
        cold = time.perf_counter() - started
        assert count == args.messages, count
        rows.append(("cold open (index built from files)", cold, None))

        warm = timed(lambda: open_and_read(MaildirStorage(template), "big"), repeat=3)
        rows.append(("warm open (counts, UIDs, all flags)", warm, None))
        warm_status = timed(
            lambda: MaildirStorage(template).account("big").open_mailbox("INBOX").status(),
            repeat=3,
        )
        rows.append(("warm open (counts only)", warm_status, None))

        big_ops = operations(MaildirStorage(template), "big", big_root)
        empty_storage = MaildirStorage(template)
        empty_storage.account("empty")
        empty_ops = operations(empty_storage, "empty", os.path.join(top, "empty", "Maildir"))
        for label, value in big_ops.items():
            rows.append((label, value, empty_ops[label]))

        print()
        print(f"{'operation':<40} {args.messages:>10} msgs {'empty':>10}   ratio")
        for label, value, empty in rows:
            if empty is None:
                print(f"{label:<40} {value * 1000:>10.2f} ms")
            else:
                ratio = value / empty if empty else float("nan")
                print(
                    f"{label:<40} {value * 1000:>10.2f} ms {empty * 1000:>7.2f} ms  {ratio:5.1f}x"
                )

        print()
        dovecot = dovecot_times(top, "big")
        if dovecot is None:
            print("Dovecot (doveadm) not found or failing: no side-by-side numbers.")
        else:
            ours_by_label = {
                "cold open": cold,
                "warm open": warm_status,
                "append one message": big_ops["append one message"],
                "store one message's flags": big_ops["store one message's flags"],
            }
            title = "same tree, Dovecot side by side"
            print(f"{title:<40} {'Dovecot':>10}    {'mailsrv':>10}   ratio")
            for label, theirs in dovecot.items():
                ours = ours_by_label.get(label)
                if ours is None:
                    print(f"{label:<40} {theirs * 1000:>10.2f} ms")
                    continue
                print(
                    f"{label:<40} {theirs * 1000:>10.2f} ms {ours * 1000:>10.2f} ms "
                    f"{ours / theirs:5.2f}x"
                )
            print(
                "(each Dovecot time is one doveadm process, start-up included: subtract the"
                " baseline row for the work itself)"
            )
    finally:
        if args.keep:
            print(f"kept {top}")
        else:
            shutil.rmtree(top, ignore_errors=True)


if __name__ == "__main__":
    main()
