"""The HAProxy PROXY protocol (v1 and v2) on listeners behind a load balancer.

A listener written ``haproxy:tcp:10143`` expects every connection to start
with a PROXY header naming the real client, sent by a trusted proxy
(``[server] trusted_proxies``).  Twisted parses the header
(:mod:`twisted.protocols.haproxy`); this module changes *when* the IMAP or
POP3 protocol sees the connection:

* Twisted's wrapper connects the protocol at once, so the greeting would go
  out and the per-address connection limit would count the proxy's address
  before the header arrived.  Here the protocol is connected only once the
  header is parsed: ``connectionMade`` already sees the client's address
  (limits, logs, the failed-login delay, ``plaintext = "loopback"``).
* A connection from an address not in ``trusted_proxies``, one whose first
  bytes are not a valid header, or one that sends no complete header within
  :data:`HEADER_TIMEOUT` seconds is closed without a word.
* ``PROXY UNKNOWN`` (v1) and the v2 ``LOCAL`` command (HAProxy's health
  checks with ``check-send-proxy``) are accepted: the connection keeps the
  proxy's own address, as the specification says.

With implicit TLS the header comes first, in the clear, and the TLS
handshake follows (what HAProxy sends in TCP mode): the wrapper sits outside
TLS.  STARTTLS and STLS upgrade the connection underneath the wrapper, after
the header, and need nothing special.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Any

from twisted.internet.interfaces import IAddress
from twisted.internet.protocol import Factory, Protocol
from twisted.protocols.haproxy._exceptions import InvalidProxyHeader
from twisted.protocols.haproxy._v1parser import V1Parser
from twisted.protocols.haproxy._v2parser import V2Parser
from twisted.protocols.haproxy._wrapper import HAProxyProtocolWrapper, HAProxyWrappingFactory
from zope.interface import directlyProvides, providedBy

from mailsrv import log

__all__ = ["HEADER_TIMEOUT", "ProxyFactory", "ProxyNetworks", "parse_networks"]

_log = log.get_logger(__name__)

#: Seconds a connection has to send its complete PROXY header.
HEADER_TIMEOUT = 10.0
#: A v1 header is at most 107 bytes; a v2 one 16 plus its length (at most 64 KiB).
_V2_FIXED = 16
_UNKNOWN = b"PROXY UNKNOWN"

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(values: Sequence[str]) -> tuple[list[Network], str | None]:
    """Addresses or networks (``10.0.0.0/8``, ``::1``); (networks, problem)."""
    found: list[Network] = []
    for value in values:
        try:
            found.append(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError:
            return [], f"not an IP address or network: {value!r}"
    return found, None


class ProxyNetworks:
    """Who may send a PROXY header."""

    def __init__(self, networks: Sequence[Network]) -> None:
        self.networks = list(networks)

    def trusts(self, peer: IAddress) -> bool:
        host = getattr(peer, "host", None)
        if not isinstance(host, str):
            return False
        try:
            address = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self.networks)


class _ProxyHeaderProtocol(HAProxyProtocolWrapper):
    """Reads the header, then connects the wrapped protocol."""

    factory: ProxyFactory

    def makeConnection(self, transport: Any) -> None:
        # ProtocolWrapper.makeConnection, minus connecting the wrapped
        # protocol: that waits for the header.
        directlyProvides(self, providedBy(transport))
        Protocol.makeConnection(self, transport)
        self.factory.registerProtocol(self)
        self._buffer = b""
        self._timer: Any = None
        peer = transport.getPeer()
        if not self.factory.networks.trusts(peer):
            _log.warn(
                "PROXY listener: refusing {peer}, which is not in server.trusted_proxies",
                peer=getattr(peer, "host", peer),
            )
            transport.abortConnection()
            return
        self._timer = self.factory.clock.callLater(self.factory.timeout, self._too_slow)

    def _peer_host(self) -> Any:
        transport: Any = self.transport
        return getattr(transport.getPeer(), "host", None)

    def _abort(self) -> None:
        transport: Any = self.transport
        transport.abortConnection()

    def _too_slow(self) -> None:
        self._timer = None
        _log.info(
            "PROXY listener: no complete PROXY header from {peer} within {seconds} seconds",
            peer=self._peer_host(),
            seconds=self.factory.timeout,
        )
        self._abort()

    def dataReceived(self, data: bytes) -> None:
        if self._proxyInfo is not None:
            self.wrappedProtocol.dataReceived(data)
            return
        if self._parser is None:
            # Twisted's wrapper decides on the first chunk; a header split
            # across reads is waited for here instead.
            self._buffer += data
            buffer = self._buffer
            if len(buffer) >= _V2_FIXED and buffer.startswith(V2Parser.PREFIX):
                self._parser = V2Parser()
            elif buffer.startswith(b"PROXY ") and b"\r\n" in buffer:
                if buffer.startswith(_UNKNOWN):
                    # v1 "the proxy cannot say": keep the connection's own
                    # addresses (Twisted's parser does not take UNKNOWN).
                    rest = buffer.split(b"\r\n", 1)[1]
                    self._start(None, rest)
                    return
                self._parser = V1Parser()
            elif not (V2Parser.PREFIX.startswith(buffer[:12]) or b"PROXY ".startswith(buffer[:6])):
                self._refuse("not a PROXY header")
                return
            elif len(buffer) > 107 and not buffer.startswith(V2Parser.PREFIX):
                self._refuse("PROXY v1 header without an end")
                return
            else:
                return  # wait for more
            data, self._buffer = buffer, b""
        try:
            parsed: tuple[Any, Any] = self._parser.feed(data)
            info, rest = parsed
        except InvalidProxyHeader as e:
            self._refuse(f"invalid PROXY header ({type(e).__name__})")
            return
        if info is not None:
            self._start(info, rest or b"")

    def _refuse(self, why: str) -> None:
        _log.warn("PROXY listener: closing {peer}: {why}", peer=self._peer_host(), why=why)
        self._abort()

    def _start(self, info: Any, rest: bytes) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if info is None:
            from twisted.protocols.haproxy._info import ProxyInfo

            info = ProxyInfo(_UNKNOWN, None, None)
        self._proxyInfo = info
        # The protocol switches Nagle's algorithm off itself, through this
        # wrapper (mailsrv.session.no_delay).
        self.wrappedProtocol.makeConnection(self)  # type: ignore[arg-type]
        if rest and self.connected:
            self.wrappedProtocol.dataReceived(rest)

    def connectionLost(self, reason: Any = None) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self._proxyInfo is None:
            # The wrapped protocol never saw this connection.
            self.factory.unregisterProtocol(self)
            return
        super().connectionLost(reason)


class ProxyFactory(HAProxyWrappingFactory):
    """Wraps a listener's factory: PROXY header first, then the protocol."""

    protocol = _ProxyHeaderProtocol  # type: ignore[assignment]

    def __init__(
        self,
        wrapped: Factory[Any],
        networks: ProxyNetworks,
        clock: Any = None,
        timeout: float = HEADER_TIMEOUT,
    ) -> None:
        super().__init__(wrapped)
        if clock is None:
            from twisted.internet import reactor as clock
        self.networks = networks
        self.clock = clock
        self.timeout = timeout
