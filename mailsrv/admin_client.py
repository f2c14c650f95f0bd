"""``mailsrv who``, ``kick``, ``stats`` and ``reload``: the admin socket's client.

A plain blocking Unix socket speaking AMP (the boxes Twisted's
:mod:`~twisted.protocols.amp` defines, with the commands of
:mod:`mailsrv.admin`): the CLI needs no reactor, and is as quick as a
``cat``.  The socket's path is ``[admin] socket`` of the configuration (the
same file the daemon reads), or ``--socket``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import struct
import time
from typing import IO, Any

from twisted.protocols import amp

from mailsrv import __version__
from mailsrv.admin import Kick, Reload, Stats, Version, Who, sessions_text

__all__ = ["AdminError", "Client", "add_commands", "run"]

#: sysexits(3): the daemon cannot be reached, it speaks another version of
#: the admin commands, the socket may not be opened by this user.
EX_UNAVAILABLE = 69
EX_SOFTWARE = 70
EX_PROTOCOL = 76
EX_NOPERM = 77
EX_CONFIG = 78

#: Seconds to wait for the daemon's answer (a reload re-reads the users
#: file and the certificate, which takes a moment).
TIMEOUT = 60.0

NAMES = ("who", "kick", "stats", "reload")


class AdminError(Exception):
    """A failure to report as one line, with an exit status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class Client:
    """One connection to the admin socket at ``path``."""

    def __init__(self, path: str, timeout: float = TIMEOUT) -> None:
        self.path = path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        try:
            self._sock.connect(path)
        except FileNotFoundError:
            self._sock.close()
            raise AdminError(
                f"no admin socket at {path}: is the daemon running, with this admin.socket?",
                EX_UNAVAILABLE,
            ) from None
        except PermissionError:
            self._sock.close()
            raise AdminError(f"{path}: permission denied ({_who_may(path)})", EX_NOPERM) from None
        except ConnectionRefusedError:
            self._sock.close()
            raise AdminError(
                f"nothing listens on {path}: the daemon is not running (the socket is left "
                "from one that was stopped or killed)",
                EX_UNAVAILABLE,
            ) from None
        except OSError as e:
            self._sock.close()
            raise AdminError(
                f"cannot reach the daemon at {path}: {e.strerror}", EX_UNAVAILABLE
            ) from None
        self._buffer = b""
        self._asked = 0

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(self, command: type[amp.Command], **arguments: Any) -> dict[str, Any]:
        """Send one command and wait for its answer."""
        self._asked += 1
        schema: Any = command  # amp's methods carry no annotations
        box = schema.makeArguments(arguments, None)
        box[amp.COMMAND] = command.commandName
        box[amp.ASK] = str(self._asked).encode("ascii")
        try:
            self._sock.sendall(box.serialize())
            answer = self._read_box()
        except TimeoutError:
            raise AdminError(
                f"the daemon did not answer within {TIMEOUT:g} s", EX_UNAVAILABLE
            ) from None
        except OSError as e:
            raise AdminError(f"the daemon hung up: {e.strerror or e}", EX_UNAVAILABLE) from None
        if amp.ERROR in answer:
            code = answer.get(amp.ERROR_CODE, b"")
            text = answer.get(amp.ERROR_DESCRIPTION, b"").decode("utf-8", "replace")
            if code == amp.UNHANDLED_ERROR_CODE:
                raise self._too_old(command)
            raise AdminError(
                f"the daemon refused {command.commandName.decode()}: {text}", EX_SOFTWARE
            )
        parsed: dict[str, Any] = schema.parseResponse(answer, None)
        return parsed

    def _too_old(self, command: type[amp.Command]) -> AdminError:
        """The daemon does not know this command (version): say which mailsrv
        answers and what it knows."""
        wanted = command.commandName.decode("ascii")
        try:
            known = self.call(Version)
            theirs = f"mailsrv {known['mailsrv']}, which knows {', '.join(known['commands'])}"
        except AdminError:
            theirs = "a mailsrv too old to say its version"
        return AdminError(
            f"the daemon ({theirs}) does not know {wanted}, which this mailsrv ({__version__}) "
            "sends: restart the daemon with this version, or use the mailsrv command installed "
            "with the daemon",
            EX_PROTOCOL,
        )

    def _read_box(self) -> dict[bytes, bytes]:
        box: dict[bytes, bytes] = {}
        while True:
            key = self._read(self._length())
            if not key:
                return box
            box[key] = self._read(self._length())

    def _length(self) -> int:
        (length,) = struct.unpack("!H", self._read(2))
        return int(length)

    def _read(self, count: int) -> bytes:
        while len(self._buffer) < count:
            chunk = self._sock.recv(65536)
            if not chunk:
                raise OSError("connection closed")
            self._buffer += chunk
        data, self._buffer = self._buffer[:count], self._buffer[count:]
        return data


def _who_may(path: str) -> str:
    """Who may use the socket at ``path``, as its owner and mode say."""
    import grp
    import pwd

    try:
        st = os.stat(path)
        owner = pwd.getpwuid(st.st_uid).pw_name
        group = grp.getgrgid(st.st_gid).gr_name
    except (OSError, KeyError):
        return "run this as the daemon's user, or as root"
    users = owner if owner == "root" else f"{owner}, as root"
    if st.st_mode & 0o060:
        return f"run this as {users} or as a member of group {group}"
    return f"the socket is {owner}'s only (admin.group is not set): run this as {users}"


# -- the CLI's commands ---------------------------------------------------------------------


def add_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    """Add ``admin who|kick|stats|reload`` to the ``mailsrv`` parser, and
    the four as commands of their own (``mailsrv who``)."""
    socket_option = argparse.ArgumentParser(add_help=False)
    socket_option.add_argument(
        "--socket", metavar="PATH", help="the daemon's admin socket (default: admin.socket)"
    )
    parents = [common, socket_option]
    admin = commands.add_parser(
        "admin",
        help="talk to the running daemon over its admin socket: who, kick, stats, reload",
        description="Talk to the running daemon over its admin socket ([admin] socket).",
    )
    _add_admin_commands(
        admin.add_subparsers(dest="admin_command", metavar="ACTION", required=True), parents
    )
    _add_admin_commands(commands, parents)


def _add_admin_commands(commands: Any, parents: list[argparse.ArgumentParser]) -> None:
    who = commands.add_parser("who", parents=parents, help="list the open sessions")
    who.add_argument("--json", action="store_true", help="one JSON object per session")
    kick = commands.add_parser(
        "kick",
        parents=parents,
        help="end a user's sessions (or those from an address)",
        description="End every session of USER, or with --ip every session from ADDRESS "
        "(both: USER's sessions from ADDRESS). IMAP sessions get * BYE, POP3 sessions -ERR "
        "(nothing is deleted: no UPDATE), LMTP sessions 421.",
    )
    kick.add_argument("user", nargs="?", help="user name")
    kick.add_argument("--ip", metavar="ADDRESS", help="only sessions from this address")
    stats = commands.add_parser(
        "stats", parents=parents, help="show sessions, commands, deliveries"
    )
    stats.add_argument("--json", action="store_true", help="print the figures as JSON")
    commands.add_parser(
        "reload",
        parents=parents,
        help="reload the daemon's configuration (as SIGHUP) and show the outcome",
        description="Exit status: 0 applied (also when some keys need a restart, which are "
        "listed), 78 refused (the configuration has an error; the one in force is kept).",
    )


def run(args: argparse.Namespace, path: str, stdout: IO[str]) -> int:
    """Run the admin command ``args`` names (``mailsrv admin who`` or
    ``mailsrv who``) against the daemon at ``path``; the exit status."""
    name = args.admin_command if args.command == "admin" else args.command
    with Client(path) as client:
        if name == "who":
            return _who(client, args, stdout)
        if name == "kick":
            return _kick(client, args, stdout)
        if name == "stats":
            return _stats(client, args, stdout)
        return _reload(client, stdout)


def _partial(unanswered: list[str] | None, what: str) -> None:
    """A daemon with several workers answered without some of them: after
    the output of the others, say which, with exit status 69."""
    if unanswered:
        raise AdminError(f"{what} without {'; '.join(unanswered)}", EX_UNAVAILABLE)


def _who(client: Client, args: argparse.Namespace, stdout: IO[str]) -> int:
    sessions: list[dict[str, Any]] = []
    unanswered: list[str] | None = None
    while True:
        page = client.call(Who, offset=len(sessions))
        sessions += page["sessions"]
        unanswered = unanswered or page.get("unanswered")
        if not page["sessions"] or len(sessions) >= page["total"]:
            break
    if args.json:
        for s in sessions:
            if s.get("worker") is None:
                s.pop("worker", None)
            stdout.write(json.dumps(s, sort_keys=True) + "\n")
    elif sessions:
        stdout.write("\n".join(sessions_text(sessions)) + "\n")
    else:
        stdout.write("no sessions\n")
    _partial(unanswered, "listed")
    return 0


def _kick(client: Client, args: argparse.Namespace, stdout: IO[str]) -> int:
    if args.user is None and args.ip is None:
        raise AdminError("kick needs a USER, or --ip ADDRESS", 64)
    arguments = {k: v for k, v in (("user", args.user), ("ip", args.ip)) if v is not None}
    answer = client.call(Kick, **arguments)
    sessions = answer["sessions"]
    if not sessions:
        _partial(answer.get("unanswered"), "no such session found")
        raise AdminError("no such session", 67)
    stdout.write(f"ended {len(sessions)} session{'' if len(sessions) == 1 else 's'}:\n")
    stdout.write("\n".join(sessions_text(sessions)) + "\n")
    _partial(answer.get("unanswered"), "kicked")
    return 0


def _stats(client: Client, args: argparse.Namespace, stdout: IO[str]) -> int:
    figures = json.loads(client.call(Stats)["stats"])
    if args.json:
        stdout.write(json.dumps(figures, indent=2, sort_keys=True) + "\n")
    else:
        for line in stats_text(figures):
            stdout.write(line + "\n")
    _partial(figures.get("unanswered"), "counted")
    return 0


def stats_text(f: dict[str, Any]) -> list[str]:
    """The figures for a human."""
    names = {"imap": "IMAP", "pop3": "POP3", "lmtp": "LMTP"}

    def by_protocol(counts: dict[str, int]) -> str:
        return ", ".join(f"{names.get(p, p)} {n}" for p, n in counts.items())

    sessions = []
    for protocol, count in f["sessions"].items():
        states = f["sessions_by_state"].get(protocol, {})
        detail = ", ".join(f"{n} {state}" for state, n in sorted(states.items()))
        sessions.append(
            f"{count} {names.get(protocol, protocol)}" + (f" ({detail})" if detail else "")
        )
    logins, deliveries, octets = f["logins"], f["deliveries"], f["octets"]
    lines = [
        f"mailsrv {f['version']}, up {_duration(f['uptime'])}",
        "sessions:   " + ", ".join(sessions),
        f"commands:   {f['commands_per_second']:.1f}/s over the last minute; "
        f"{sum(f['commands'].values())} since start ({by_protocol(f['commands'])})",
        f"logins:     {logins['success']} succeeded, {logins['failure']} failed, "
        f"{logins['unavailable']} unavailable",
        f"deliveries: {deliveries['delivered']} delivered, {deliveries['deferred']} deferred, "
        f"{deliveries['rejected']} rejected",
        f"traffic:    {_octets(octets['received'])} in, {_octets(octets['sent'])} out; "
        f"connections since start: {by_protocol(f['connections'])}",
    ]
    if f.get("workers"):
        lines.append(
            f"workers:    {len(f['workers'])} (" + "; ".join(map(_worker_text, f["workers"])) + ")"
        )
    return lines


def _worker_text(w: dict[str, Any]) -> str:
    if "sessions" not in w:
        return f"{w['worker']}: {w['problem']}"
    plural = "" if w["sessions"] == 1 else "s"
    up = _duration(w["uptime"])
    return f"{w['worker']}: pid {w['pid']}, {w['sessions']} session{plural}, up {up}"


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h {minutes}m"
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m {seconds}s"


def _octets(count: int) -> str:
    size = float(count)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError


def _reload(client: Client, stdout: IO[str]) -> int:
    started = time.monotonic()
    answer = client.call(Reload)
    took = time.monotonic() - started
    outcome = answer["outcome"]
    workers = answer.get("workers") or []
    if outcome == "refused":
        raise AdminError(
            f"reload refused, the configuration in force is kept: {answer['reason']}", EX_CONFIG
        )
    applied = answer["applied"]
    stdout.write(
        ("reloaded: changed " + ", ".join(applied) if applied else "reloaded: nothing changed")
        + f" ({took:.1f} s)\n"
    )
    if answer["restart"]:
        stdout.write(
            "needs a restart (old values kept until then): " + ", ".join(answer["restart"]) + "\n"
        )
    for w in workers:
        stdout.write(f"worker {w['worker']}: {_worker_outcome(w)}\n")
    failed = [f"worker {w['worker']}" for w in workers if w["outcome"] in ("refused", "unanswered")]
    if failed:
        raise AdminError(f"not reloaded by {', '.join(failed)}", EX_UNAVAILABLE)
    return 0


def _worker_outcome(w: dict[str, Any]) -> str:
    """One worker's part of a reload, for ``mailsrv reload``."""
    if w["outcome"] == "unanswered":
        return f"{w['reason']} (it may still apply the configuration)"
    if w["outcome"] == "refused":
        return f"refused: {w['reason']}"
    return "reloaded" + (f", changed {', '.join(w['applied'])}" if w["applied"] else "")
