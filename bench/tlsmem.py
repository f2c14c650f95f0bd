#!/usr/bin/env python3
"""Memory per idle IMAPS session, with OpenSSL's buffers released or kept.

OpenSSL gives every TLS connection a read and a write buffer (about 17 KiB
and 16 KiB, plus their headroom).  With ``SSL_MODE_RELEASE_BUFFERS`` it
frees them whenever the connection has nothing pending and allocates them
again at the next record, so an idle connection (a session in IDLE) keeps
none.  mailsrv's TLS contexts are Twisted's ``CertificateOptions``, which
set that mode; this script measures what it saves by running the same
sessions against a daemon with the mode on and one with it cleared
(through a ``sitecustomize`` on the daemon's ``PYTHONPATH``, in the
workers too: nothing in mailsrv turns it off).

Each run: a fresh ``twistd -n mailsrv`` with an implicit-TLS IMAP
listener, one user with ``--messages`` messages in INBOX, warmed once;
then ``--sessions`` IMAPS connections log in, SELECT INBOX and enter IDLE.
The figure is the growth of the daemon's process tree (PSS, and RSS)
divided by the number of sessions.

Run: ``python bench/tlsmem.py [--sessions 1000] [--messages 10000]
[--workers 1] [--modes release,keep]``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import shutil
import ssl
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from clients import IMAPClient, IMAPError
from corpus import build_maildir
from harness import MIB, PASSWORD, machine_info, markdown_table
from peers import Mailsrv
from procs import ProcessTree, raise_fd_limit

HOST = "127.0.0.1"
USER = "idle"

#: Imported by every Python process of the daemon when "keep" is measured:
#: Twisted's server contexts then keep their buffers on idle connections.
KEEP_BUFFERS = """\
from twisted.internet import _sslverify

_init = _sslverify.OpenSSLCertificateOptions.__init__


def _keep_buffers(self, *args, **kwargs):
    _init(self, *args, **kwargs)
    self._mode = 0


_sslverify.OpenSSLCertificateOptions.__init__ = _keep_buffers
"""


def client_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


async def open_idle(port: int, count: int, batch: int = 50) -> list[IMAPClient]:
    """``count`` IMAPS sessions logged in, INBOX selected, in IDLE."""
    tls = client_context()
    clients: list[IMAPClient] = []

    async def one() -> None:
        client = await IMAPClient.connect(HOST, port, tls)
        reply = await client.login(USER, PASSWORD)
        if not reply.ok:
            raise IMAPError(f"LOGIN: {reply.status} {reply.text!r}")
        reply = await client.select()
        if not reply.ok:
            raise IMAPError(f"SELECT: {reply.status} {reply.text!r}")
        await client.idle_start()
        clients.append(client)

    for start in range(0, count, batch):
        await asyncio.gather(*(one() for _ in range(min(batch, count - start))))
    return clients


def quiet(tree: ProcessTree, timeout: float = 30.0) -> None:
    """Wait until the daemon has stopped using CPU (logins done, GC run)."""
    deadline = time.monotonic() + timeout
    cpu = tree.cpu_seconds()
    time.sleep(1.0)  # a benchmark script, not a test: letting the daemon settle
    while tree.cpu_seconds() - cpu > 0.02 and time.monotonic() < deadline:
        cpu = tree.cpu_seconds()
        time.sleep(1.0)


async def warm(port: int) -> None:
    client = await IMAPClient.connect(HOST, port, client_context())
    await client.login(USER, PASSWORD)
    await client.select()
    await client.command("FETCH 1:* (FLAGS)")
    await client.logout()


def measure(top: str, mode: str, args: argparse.Namespace, passwd: str, seed: str) -> list[str]:
    """One daemon, ``args.sessions`` idle IMAPS sessions: a table row."""
    server = Mailsrv(os.path.join(top, mode), passwd, workers=args.workers, imaps=True)
    shutil.copytree(seed, server.mail_root(USER), copy_function=os.link)
    if mode == "keep":
        site = os.path.join(top, f"site-{mode}")
        os.makedirs(site, exist_ok=True)
        with open(os.path.join(site, "sitecustomize.py"), "w") as f:
            f.write(KEEP_BUFFERS)
        paths = [site, *os.environ.get("PYTHONPATH", "").split(os.pathsep)]
        server.env = {"PYTHONPATH": os.pathsep.join(p for p in paths if p)}
    server.start()
    try:
        asyncio.run(warm(server.imaps_port))
        tree = server.tree
        quiet(tree)
        before_pss, before_rss = tree.pss(), tree.rss()

        async def run() -> tuple[int, int, int]:
            clients = await open_idle(server.imaps_port, args.sessions)
            gc.collect()
            await asyncio.to_thread(quiet, tree)
            pss, rss = tree.pss(), tree.rss()
            for client in clients:
                client.close()
            return len(clients), pss, rss

        count, pss, rss = asyncio.run(run())
        processes = len(tree.pids())
    finally:
        server.stop()
    return [
        "released (as shipped)" if mode == "release" else "kept (mode cleared)",
        str(count),
        str(processes),
        f"{before_pss / MIB:.1f} / {pss / MIB:.1f}",
        f"{(pss - before_pss) / count / 1024:.1f}",
        f"{(rss - before_rss) / count / 1024:.1f}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=1, help="the daemon's --workers")
    parser.add_argument("--modes", default="release,keep", help="release, keep or both")
    parser.add_argument("--keep-tree", action="store_true", help="keep the temporary tree")
    args = parser.parse_args()
    raise_fd_limit(args.sessions * 4 + 1000)
    top = tempfile.mkdtemp(prefix="mailsrv-tlsmem-")
    print("# Memory per idle IMAPS session")
    print()
    for line in machine_info("not pinned"):
        print(f"- {line}")
    print(
        f"- {args.sessions} sessions in IDLE on a {args.messages}-message INBOX, "
        f"--workers {args.workers}"
    )
    print()
    try:
        passwd = os.path.join(top, "passwd")
        seed = os.path.join(top, "seed", "Maildir")
        build_maildir(seed, args.messages, seed=5)
        rows = []
        for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
            if mode not in ("release", "keep"):
                parser.error(f"unknown mode {mode!r} (release, keep)")
            if not os.path.exists(passwd):
                Mailsrv(os.path.join(top, "users"), passwd).add_user(USER, PASSWORD)
            rows.append(measure(top, mode, args, passwd, seed))
            print(f"  {rows[-1][0]}: {rows[-1][4]} KiB PSS per session", flush=True)
        print()
        headers = [
            "OpenSSL buffers",
            "sessions",
            "processes",
            "PSS before / after, MiB",
            "PSS KiB/session",
            "RSS KiB/session",
        ]
        print(markdown_table(headers, rows))
    finally:
        if args.keep_tree:
            print(f"kept {top}")
        else:
            shutil.rmtree(top, ignore_errors=True)


if __name__ == "__main__":
    main()
