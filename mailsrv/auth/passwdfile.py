"""The users file, in Dovecot's passwd-file format.

One user per line, ``user:{SCHEME}secret:uid:gid:gecos:home:shell:extra_fields``
with trailing fields optional; blank lines and ``#`` comments are allowed.
The file is re-read when it changes on disk (one ``stat`` per lookup), so
adding a user needs no restart, and a file broken by a later edit never locks
everybody out: the last good content keeps serving and the error is logged.

Admin operations rewrite the file atomically and leave every line they do
not change byte-for-byte as it was.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import stat
import tempfile
import threading
from collections.abc import Callable, Iterator

import attrs

from mailsrv import preload
from mailsrv.auth.passwords import is_known_scheme, scheme_of
from mailsrv.errors import ConfigError
from mailsrv.log import get_logger

__all__ = [
    "NoSuchUser",
    "PasswdFile",
    "UserExists",
    "UserRecord",
    "create_empty",
    "parse_line",
    "validate_user_name",
]

_log = get_logger(__name__)

_DIGITS = re.compile(r"[0-9]+")
_MAX_NAME = 255


class UserExists(ValueError):
    """``add`` was asked for a user the file already has."""


class NoSuchUser(ValueError):
    """``set_password``/``remove`` named a user the file does not have."""


@attrs.frozen
class UserRecord:
    """One user line. Empty uid/gid/home fields are None."""

    name: str
    password: str
    uid: int | None = None
    gid: int | None = None
    gecos: str = ""
    home: str | None = None
    shell: str = ""
    extra: str = ""


def _name_problem(name: str) -> str | None:
    """Why ``name`` is not acceptable as a user name, or None."""
    if not name:
        return "empty user name"
    if len(name) > _MAX_NAME:
        return f"user name longer than {_MAX_NAME} characters"
    if name.startswith("."):
        return "user name starts with '.'"
    for char in name:
        if char == ":":
            return "user name contains ':'"
        if char == "/":
            return "user name contains '/'"
        if char.isspace():
            return "user name contains whitespace"
        if ord(char) < 0x20 or 0x7F <= ord(char) < 0xA0:
            return "user name contains a control character"
    return None


def validate_user_name(name: str) -> None:
    """Raise ValueError unless ``name`` is a usable user name.

    Names become directory names (``/var/mail/{user}``), hence no ``/`` and
    no leading ``.``; ``:`` and whitespace cannot live in a passwd-file line.
    """
    problem = _name_problem(name)
    if problem is not None:
        raise ValueError(f"{problem}: {name!r}")


def _secret_problem(password_hash: str) -> str | None:
    if not password_hash:
        return "empty password field"
    if any(c in password_hash for c in ":\n\r\0"):
        return "password field contains ':', CR, LF or NUL"
    if not is_known_scheme(password_hash):
        return f"unknown or malformed password scheme {scheme_of(password_hash)}"
    return None


def _int_field(value: str, what: str, path: str, lineno: int) -> int | None:
    if value == "":
        return None
    if not _DIGITS.fullmatch(value):
        raise ConfigError(path, f"line {lineno}", f"{what} is not a number: {value!r}")
    return int(value)


def parse_line(line: str, path: str, lineno: int) -> UserRecord | None:
    """Parse one line (end-of-line characters allowed); None for blanks/comments.

    Raises ConfigError naming ``path`` and the line number for a bad line.
    The secret is not validated here: an unknown scheme makes that one user
    unable to log in (and is logged by :class:`PasswdFile`), it does not make
    the file unusable.
    """
    text = line.rstrip("\r\n")
    stripped = text.strip()
    if not stripped or stripped.startswith("#"):
        return None
    fields = text.split(":", 7)
    name = fields[0]
    problem = _name_problem(name)
    if problem is not None:
        raise ConfigError(path, f"line {lineno}", f"{problem}: {name!r}")
    if len(fields) < 2:
        raise ConfigError(path, f"line {lineno}", f"user {name!r} has no password field")
    fields += [""] * (8 - len(fields))
    _, password, uid, gid, gecos, home, shell, extra = fields
    return UserRecord(
        name=name,
        password=password,
        uid=_int_field(uid, "uid", path, lineno),
        gid=_int_field(gid, "gid", path, lineno),
        gecos=gecos,
        home=home or None,
        shell=shell,
        extra=extra,
    )


def _split_lines(data: bytes) -> list[bytes]:
    """Lines with their end-of-line bytes, so a rewrite can reproduce them."""
    lines = data.split(b"\n")
    result = [line + b"\n" for line in lines[:-1]]
    if lines[-1]:
        result.append(lines[-1])
    return result


def _parse(data: bytes, path: str) -> tuple[list[bytes], dict[str, tuple[int, UserRecord]]]:
    """Parse a whole file: its raw lines and name -> (line index, record)."""
    lines = _split_lines(data)
    users: dict[str, tuple[int, UserRecord]] = {}
    for index, raw in enumerate(lines):
        lineno = index + 1
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ConfigError(path, f"line {lineno}", "not valid UTF-8") from None
        record = parse_line(text, path, lineno)
        if record is None:
            continue
        if record.name in users:
            first = users[record.name][0] + 1
            raise ConfigError(
                path,
                f"line {lineno}",
                f"duplicate user {record.name!r} (first defined on line {first})",
            )
        users[record.name] = (index, record)
    return lines, users


def _read(path: str) -> tuple[bytes, tuple[int, int, int, int]]:
    """File contents and the stat stamp of exactly what was read (at a
    worker's startup, what its parent read as root: :mod:`mailsrv.preload`)."""
    preloaded = preload.take(path)
    if preloaded is not None:
        return preloaded
    with open(path, "rb") as handle:
        st = os.fstat(handle.fileno())
        data = handle.read()
    return data, (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


@contextlib.contextmanager
def _exclusive(directory: str) -> Iterator[None]:
    """Serialize admin rewrites of the files in ``directory``.

    A rewrite reads the file, edits it and renames a new one over it; two at
    once (``mailsrv user add`` run in parallel by a provisioning script)
    would each write their own edit over the other's. The lock is a
    ``flock`` of the directory itself, since the file's inode changes with
    every rewrite; the daemon only reads and never takes it.
    """
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write(path: str, data: bytes) -> None:
    """Replace ``path`` with ``data``: temp file in the same dir, fsync, rename.

    A symlinked users file is followed, so the link survives. The new file
    keeps the old file's owner and group when we are allowed to set them,
    and its owner and group permission bits (never the world's): root
    editing a ``root:vmail`` 0640 file must leave it readable by the daemon
    running as ``vmail``, or new users would stay unseen until a restart.
    """
    target = os.path.realpath(path)
    directory = os.path.dirname(target) or "."
    try:
        old = os.stat(target)
    except FileNotFoundError:
        old = None
    fd, temp = tempfile.mkstemp(prefix="." + os.path.basename(target) + ".", dir=directory)
    try:
        os.fchmod(fd, 0o600 if old is None else (stat.S_IMODE(old.st_mode) & 0o660) | 0o600)
        if old is not None and (old.st_uid, old.st_gid) != (os.geteuid(), os.getegid()):
            try:
                os.fchown(fd, old.st_uid, old.st_gid)
            except PermissionError:
                pass
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(temp)
        raise
    os.close(fd)
    try:
        os.replace(temp, target)
    except BaseException:
        os.unlink(temp)
        raise
    _fsync_dir(directory)


def create_empty(path: str) -> None:
    """Create an empty users file (mode 0600) and any missing parent directories.

    Raises FileExistsError rather than touching an existing file.
    """
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
        os.fsync(fd)
    finally:
        os.close(fd)
    _fsync_dir(directory or ".")


class PasswdFile:
    """A passwd-file, re-read whenever it changes on disk.

    Construction loads the file and raises ConfigError if it is missing or
    broken. Later lookups ``stat`` it and re-parse only when device, inode,
    size or mtime changed; a broken or unreadable new version is logged
    once and the last good content keeps serving.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int, int] | None = None
        self._failed: object = None  # stamp or error text of the last failed reload
        self._users: dict[str, UserRecord] = {}
        try:
            data, stamp = _read(path)
        except FileNotFoundError:
            raise ConfigError(path, "", "file not found") from None
        except OSError as e:
            raise ConfigError(path, "", f"cannot read: {e.strerror or e}") from None
        self._install(data, stamp)

    create_empty = staticmethod(create_empty)

    def _install(self, data: bytes, stamp: tuple[int, int, int, int]) -> None:
        _, parsed = _parse(data, self.path)
        for index, record in parsed.values():
            if not record.password:
                _log.warn(
                    "{path}: line {lineno}: user {user!r} has an empty password and cannot log in",
                    path=self.path,
                    lineno=index + 1,
                    user=record.name,
                )
            elif not is_known_scheme(record.password):
                _log.warn(
                    "{path}: line {lineno}: user {user!r} has an unknown or malformed"
                    " password scheme {scheme} and cannot log in",
                    path=self.path,
                    lineno=index + 1,
                    user=record.name,
                    scheme=scheme_of(record.password),
                )
        self._users = {name: record for name, (_, record) in parsed.items()}
        self._stamp = stamp
        self._failed = None

    def _refresh(self) -> None:
        with self._lock:
            try:
                st = os.stat(self.path)
            except OSError as e:
                self._reload_failed(str(e), f"cannot stat: {e.strerror or e}")
                return
            if (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns) == self._stamp:
                self._failed = None
                return
            try:
                data, stamp = _read(self.path)
            except OSError as e:
                self._reload_failed(str(e), f"cannot read: {e.strerror or e}")
                return
            if stamp == self._failed:
                return  # the same broken version we already reported
            try:
                self._install(data, stamp)
            except ConfigError as e:
                self._reload_failed(stamp, e.reason, e.key)
                return
            _log.info("{path}: reloaded, {count} users", path=self.path, count=len(self._users))

    def _reload_failed(self, token: object, reason: str, key: str = "") -> None:
        if token == self._failed:
            return
        self._failed = token
        where = f"{self.path}: {key}" if key else self.path
        _log.error(
            "{where}: {reason}; still using the version loaded before",
            where=where,
            reason=reason,
        )

    def unreadable(self) -> str | None:
        """Why this process cannot read the file now, or None if it can.

        The daemon asks once it has dropped root: it loaded the file as
        root, and a file only root may read would keep working until the
        first change and then never be re-read.
        """
        try:
            with open(self.path, "rb"):
                return None
        except OSError as e:
            return e.strerror or str(e)

    def get(self, name: str) -> UserRecord | None:
        """The user called ``name``, or None."""
        self._refresh()
        return self._users.get(name)

    def users(self) -> list[UserRecord]:
        """All users, in file order."""
        self._refresh()
        return list(self._users.values())

    # -- admin operations -------------------------------------------------

    def _rewrite(
        self, change: Callable[[list[bytes], dict[str, tuple[int, UserRecord]]], None]
    ) -> None:
        """Read the file as it is now, let ``change`` edit its lines, write it back."""
        with _exclusive(os.path.dirname(os.path.realpath(self.path)) or "."):
            try:
                data, _ = _read(self.path)
            except FileNotFoundError:
                raise ConfigError(self.path, "", "file not found") from None
            lines, users = _parse(data, self.path)
            change(lines, users)
            _atomic_write(self.path, b"".join(lines))
        self._refresh()

    def add(
        self,
        name: str,
        password_hash: str,
        home: str | None = None,
        uid: int | None = None,
        gid: int | None = None,
    ) -> None:
        """Append a user. ValueError (UserExists) if the name is taken or anything is invalid."""
        validate_user_name(name)
        _check_secret(password_hash)
        if home is not None and (
            not home.startswith("/") or any(c == ":" or ord(c) < 0x20 for c in home)
        ):
            raise ValueError(
                f"home must be an absolute path without ':' or control characters: {home!r}"
            )
        for what, value in (("uid", uid), ("gid", gid)):
            if value is not None and value < 0:
                raise ValueError(f"{what} must not be negative: {value}")
        if home is None and uid is None and gid is None:
            entry = f"{name}:{password_hash}\n"
        else:
            fields = ["" if uid is None else str(uid), "" if gid is None else str(gid)]
            entry = f"{name}:{password_hash}:{':'.join(fields)}::{home or ''}::\n"

        def change(lines: list[bytes], users: dict[str, tuple[int, UserRecord]]) -> None:
            if name in users:
                raise UserExists(f"user {name!r} already exists")
            if lines and not lines[-1].endswith(b"\n"):
                lines[-1] += b"\n"
            lines.append(entry.encode("utf-8"))

        self._rewrite(change)

    def set_password(self, name: str, password_hash: str) -> None:
        """Replace a user's secret, keeping the rest of the line as it was."""
        _check_secret(password_hash)

        def change(lines: list[bytes], users: dict[str, tuple[int, UserRecord]]) -> None:
            if name not in users:
                raise NoSuchUser(f"no such user: {name!r}")
            index = users[name][0]
            raw = lines[index]
            body = raw.rstrip(b"\r\n")
            ending = raw[len(body) :]
            fields = body.split(b":", 2)
            fields[1] = password_hash.encode("utf-8")
            lines[index] = b":".join(fields) + ending

        self._rewrite(change)

    def remove(self, name: str) -> None:
        """Delete a user's line. ValueError (NoSuchUser) if there is none."""

        def change(lines: list[bytes], users: dict[str, tuple[int, UserRecord]]) -> None:
            if name not in users:
                raise NoSuchUser(f"no such user: {name!r}")
            del lines[users[name][0]]

        self._rewrite(change)


def _check_secret(password_hash: str) -> None:
    problem = _secret_problem(password_hash)
    if problem is not None:
        raise ValueError(problem)
