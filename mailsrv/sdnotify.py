"""systemd's readiness protocol (sd_notify(3)), in a few lines and no library.

Under ``Type=notify`` systemd passes ``NOTIFY_SOCKET``, a Unix datagram
socket (a path, or an abstract name written with a leading ``@``); the
service sends ``READY=1`` once it serves, ``RELOADING=1`` and ``READY=1``
around a reload and ``STOPPING=1`` when it stops.  Without the variable
(not under systemd) nothing is sent.
"""

from __future__ import annotations

import os
import socket
import time

from mailsrv import log

_log = log.get_logger(__name__)


def notify(*fields: str) -> bool:
    """Send ``fields`` ("READY=1", "STATUS=...") as one datagram to
    ``NOTIFY_SOCKET``; False when there is no such socket or sending failed
    (logged: systemd would otherwise wait for READY=1 until its timeout)."""
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # an abstract socket
    message = "\n".join(fields).encode("utf-8")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(message, address)
    except OSError as e:
        _log.warn(
            "cannot notify systemd through NOTIFY_SOCKET={address}: {reason}",
            address=os.environ.get("NOTIFY_SOCKET"),
            reason=e.strerror or str(e),
        )
        return False
    return True


def ready(status: str = "") -> bool:
    return notify("READY=1", *([f"STATUS={status}"] if status else []))


def reloading() -> bool:
    # MONOTONIC_USEC lets systemd 253+ (Type=notify-reload) match the
    # READY=1 that follows to this reload; older versions ignore it.
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify("RELOADING=1", f"MONOTONIC_USEC={usec}")


def stopping() -> bool:
    return notify("STOPPING=1")
