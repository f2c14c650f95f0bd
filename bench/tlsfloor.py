#!/usr/bin/env python3
"""What the TLS library alone keeps per connection, outside any server.

``bench/tlsmem.py`` measures a whole IMAPS session in the daemon; this
script asks how much of that is the TLS library's own floor.  In one
process it makes ``--connections`` server-side TLS objects the way Twisted
does (pyOpenSSL ``Connection(context, None)`` with memory BIOs, the context
from Twisted's ``CertificateOptions``, so ``SSL_MODE_RELEASE_BUFFERS`` is
on), drives each through a TLS 1.3 handshake and one short exchange with an
in-memory client (the standard library's ``ssl``), drops the client side and
keeps the server side.  It prints the anonymous RSS added per connection at
three stages: fresh (no byte exchanged), after the handshake, after the
exchange; and first what a bare ``SSL_new`` on an empty context costs in
each library's OpenSSL, which tells the OpenSSL build's share from the
binding's.  For comparison it does the same with the standard library's
``ssl`` as the server, which links the system's OpenSSL rather than the one
bundled in the ``cryptography`` wheel.

Run: ``python bench/tlsfloor.py [--connections 1000]``.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import os
import ssl
import subprocess
import sys
import tempfile
from collections.abc import Callable

from OpenSSL import SSL, crypto
from OpenSSL.SSL import OPENSSL_VERSION, SSLeay_version
from twisted.internet import ssl as twisted_ssl

STAGES = ("fresh", "handshake", "exchange")
#: The columns: SSL_new alone, then the stages of a whole connection.
COLUMNS = ("ssl_new", *STAGES)


def anon_rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    raise RuntimeError("no RssAnon in /proc/self/status")


def make_certificate(directory: str) -> tuple[str, str]:
    cert, key = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key,
         "-out", cert, "-days", "2", "-subj", "/CN=localhost"],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


def client_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


class Pair:
    """An in-memory client (stdlib ``ssl``) beside a server-side object."""

    def __init__(self, server_step: Callable[[], None], to_server: Callable[[bytes], None],
                 from_server: Callable[[], bytes]) -> None:  # fmt: skip
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.client = client_context().wrap_bio(self.incoming, self.outgoing)
        self.server_step, self.to_server, self.from_server = server_step, to_server, from_server

    def pump(self) -> None:
        for _ in range(20):
            moved = False
            try:
                self.client.do_handshake()
            except ssl.SSLWantReadError:
                pass
            data = self.outgoing.read()
            if data:
                self.to_server(data)
                moved = True
            self.server_step()
            data = self.from_server()
            if data:
                self.incoming.write(data)
                moved = True
            if not moved:
                return


def pyopenssl_server(context: SSL.Context, stage: str) -> object:
    server = SSL.Connection(context, None)
    server.set_accept_state()
    if stage == "fresh":
        return server

    def step() -> None:
        try:
            server.do_handshake()
        except SSL.WantReadError:
            pass

    def drain() -> bytes:
        out = b""
        while True:
            try:
                chunk = server.bio_read(65536)
            except SSL.WantReadError:
                break
            if not chunk:
                break
            out += chunk
        return out

    pair = Pair(step, server.bio_write, drain)
    pair.pump()
    if stage == "exchange":
        pyopenssl_exchange(pair, server)
    return server


def pyopenssl_exchange(pair: Pair, server: SSL.Connection) -> None:
    """A LOGIN and its answer, as an IMAPS session's first exchange."""
    pair.client.write(b"a1 LOGIN user secret\r\n")
    pair.pump()
    try:
        server.recv(65536)
    except SSL.WantReadError:
        pass
    server.send(b"a1 OK [CAPABILITY IMAP4rev1 IMAP4rev2] Logged in\r\n")
    pair.pump()
    try:
        pair.client.read(65536)
    except ssl.SSLWantReadError:
        pass


def stdlib_server(context: ssl.SSLContext, stage: str) -> object:
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    server = context.wrap_bio(incoming, outgoing, server_side=True)
    if stage == "fresh":
        return (server, incoming, outgoing)

    def step() -> None:
        try:
            server.do_handshake()
        except ssl.SSLWantReadError:
            pass

    pair = Pair(step, incoming.write, outgoing.read)
    pair.pump()
    if stage == "exchange":
        pair.client.write(b"a1 LOGIN user secret\r\n")
        pair.pump()
        try:
            server.read(65536)
        except ssl.SSLWantReadError:
            pass
        server.write(b"a1 OK [CAPABILITY IMAP4rev1 IMAP4rev2] Logged in\r\n")
        pair.pump()
    return (server, incoming, outgoing)


def measure(make: Callable[[str], object], stage: str, count: int) -> float:
    kept = []
    gc.collect()
    before = anon_rss_kib()
    for _ in range(count):
        kept.append(make(stage))
    gc.collect()
    return (anon_rss_kib() - before) / count


def loaded_libssl() -> str:
    """The path of the libssl the standard library's ``ssl`` module loaded."""
    with open("/proc/self/maps") as maps:
        for line in maps:
            path = line.split()[-1]
            if "/libssl.so" in path:
                return path
    raise RuntimeError("the ssl module loaded no libssl.so")


def ssl_new_alone(library: str, count: int) -> float:
    """KiB per bare ``SSL_new`` on a context with no settings: what the
    OpenSSL build costs before any binding or handshake is involved."""
    if library == "pyopenssl":
        from OpenSSL._util import lib  # the OpenSSL the cryptography wheel bundles

        context = lib.SSL_CTX_new(lib.TLS_server_method())
        return measure(lambda _: lib.SSL_new(context), "fresh", count)
    libssl = ctypes.CDLL(loaded_libssl())
    libssl.TLS_server_method.restype = ctypes.c_void_p
    libssl.SSL_CTX_new.restype = ctypes.c_void_p
    libssl.SSL_CTX_new.argtypes = [ctypes.c_void_p]
    libssl.SSL_new.restype = ctypes.c_void_p
    libssl.SSL_new.argtypes = [ctypes.c_void_p]
    context = libssl.SSL_CTX_new(libssl.TLS_server_method())
    return measure(lambda _: libssl.SSL_new(context), "fresh", count)


def child(library: str, stage: str, count: int, cert: str, key: str) -> None:
    """One measurement in a fresh process, so stages don't share freed memory."""
    if stage == "ssl_new":
        print(f"{ssl_new_alone(library, count):.1f}")
    elif library == "pyopenssl":
        with open(cert, "rb") as f:
            certificate = crypto.load_certificate(crypto.FILETYPE_PEM, f.read())
        with open(key, "rb") as f:
            private = crypto.load_privatekey(crypto.FILETYPE_PEM, f.read())
        options = twisted_ssl.CertificateOptions(privateKey=private, certificate=certificate)
        context = options.getContext()
        print(f"{measure(lambda s: pyopenssl_server(context, s), stage, count):.1f}")
    else:
        server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server_context.load_cert_chain(cert, key)
        print(f"{measure(lambda s: stdlib_server(server_context, s), stage, count):.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--child", nargs=4, metavar=("LIBRARY", "STAGE", "CERT", "KEY"),
                        help=argparse.SUPPRESS)  # fmt: skip
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1], args.connections, args.child[2], args.child[3])
        return
    libraries = {
        "pyopenssl": f"pyOpenSSL + {SSLeay_version(OPENSSL_VERSION).decode()} (Twisted's TLS)",
        "stdlib": f"stdlib ssl + {ssl.OPENSSL_VERSION}",
    }
    with tempfile.TemporaryDirectory(prefix="mailsrv-tlsfloor-") as top:
        cert, key = make_certificate(top)
        print(f"# TLS library memory per server-side connection ({args.connections} kept)\n")
        print("| library | " + " | ".join(f"{s}, KiB" for s in COLUMNS) + " |")
        print("|---|" + "---:|" * len(COLUMNS))
        for library, label in libraries.items():
            figures = []
            for stage in COLUMNS:
                out = subprocess.run(
                    [sys.executable, __file__, "--connections", str(args.connections),
                     "--child", library, stage, cert, key],
                    check=True, capture_output=True, text=True,
                )  # fmt: skip
                figures.append(out.stdout.strip())
            print(f"| {label} | " + " | ".join(figures) + " |")


if __name__ == "__main__":
    main()
