"""Password schemes compatible with Dovecot's ``{SCHEME}data`` notation.

A users file written by mailsrv works in Dovecot and vice versa: the same
scheme names, the same encodings (``doveadm pw`` output), the same fallback
for values without a ``{SCHEME}`` prefix (libc-crypt style, recognised by the
``$id$`` of the hash). Verification never raises on the stored value or the
password: anything it cannot check is simply a failed login, and
:func:`scheme_of` / :func:`is_known_scheme` let callers say why.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import threading
from collections.abc import Callable
from typing import Any

import argon2
import argon2.exceptions
import argon2.low_level
import bcrypt

from mailsrv.auth import scram

__all__ = [
    "DEFAULT_SCHEME",
    "HASHABLE_SCHEMES",
    "KNOWN_SCHEMES",
    "PLAINTEXT_SCHEMES",
    "dummy_hash",
    "hash_password",
    "is_known_scheme",
    "plaintext_secret",
    "plaintext_secret_bytes",
    "scheme_of",
    "scram_secret",
    "verify_password",
]

DEFAULT_SCHEME = "ARGON2ID"

#: Schemes whose stored value gives back the password itself (so CRAM-MD5
#: and APOP, which need the shared secret, can work for these users only).
PLAINTEXT_SCHEMES = frozenset({"PLAIN", "CLEAR", "CLEARTEXT", "PLAIN-B64"})

#: Every scheme name :func:`verify_password` understands. ``ARGON2`` and
#: ``CRYPT`` are Dovecot's umbrella names: the hash itself says which variant.
KNOWN_SCHEMES = frozenset(
    {
        "ARGON2ID",
        "ARGON2I",
        "ARGON2",
        "BLF-CRYPT",
        "SHA512-CRYPT",
        "SHA256-CRYPT",
        "CRYPT",
        scram.SCHEME,
    }
    | PLAINTEXT_SCHEMES
)

#: Schemes :func:`hash_password` writes. The SHA-crypt family is accepted for
#: migrated users only; it is much cheaper to brute-force than argon2/bcrypt.
HASHABLE_SCHEMES = frozenset({"ARGON2ID", "BLF-CRYPT", scram.SCHEME, "PLAIN", "PLAIN-B64"})

# Dovecot's ARGON2ID (libsodium crypto_pwhash_str) encoding: one lane, 64 MiB,
# 3 passes, 16-byte salt, 32-byte tag; "$argon2id$v=19$m=65536,t=3,p=1$...".
_ARGON2_HASHER = argon2.PasswordHasher(
    time_cost=3,
    memory_cost=65536,
    parallelism=1,
    hash_len=32,
    salt_len=16,
    type=argon2.Type.ID,
)

# bcrypt's cost factor for new hashes (2**12 rounds, about 0.2 s); Dovecot's
# historical default of 5 is far too cheap today.
_BCRYPT_COST = 12
_BCRYPT_MAX_BYTES = 72

# Characters that cannot appear in a PLAIN secret stored in a passwd-file line.
_PLAIN_FORBIDDEN = frozenset(":\n\r\0")


def _split(stored: str) -> tuple[str | None, str]:
    """Return (upper-cased scheme or None when unprefixed, data)."""
    if stored.startswith("{"):
        end = stored.find("}")
        if end > 1:
            return stored[1:end].upper(), stored[end + 1 :]
    return None, stored


def _crypt_scheme(data: str) -> str | None:
    """The scheme a libc-crypt style value belongs to, by its ``$id$`` prefix."""
    if data.startswith("$6$"):
        return "SHA512-CRYPT"
    if data.startswith("$5$"):
        return "SHA256-CRYPT"
    if data.startswith(("$2a$", "$2b$", "$2y$")):
        return "BLF-CRYPT"
    if data.startswith("$argon2id$"):
        return "ARGON2ID"
    if data.startswith("$argon2i$"):
        return "ARGON2I"
    return None


_CRYPT_FAMILY = frozenset({"SHA512-CRYPT", "SHA256-CRYPT", "BLF-CRYPT"})
_ARGON2_FAMILY = frozenset({"ARGON2ID", "ARGON2I"})


def _resolve(stored: str) -> tuple[str, str] | None:
    """Map a stored value to (concrete scheme, data), or None if unusable.

    As in Dovecot, the hash's own ``$id$`` decides how a crypt-family or
    argon2-family value is checked (``{ARGON2}`` and ``{CRYPT}`` are umbrella
    names, and ``{ARGON2ID}`` holding an argon2i hash still verifies); a value
    whose data belongs to no family its prefix allows is unusable.
    """
    scheme, data = _split(stored)
    if scheme in PLAINTEXT_SCHEMES:
        return scheme, data
    if scheme == scram.SCHEME:
        return (scheme, data) if scram.parse_secret(data) is not None else None
    concrete = _crypt_scheme(data)
    if concrete is None:
        return None
    if scheme is None:
        return concrete, data
    if scheme in _CRYPT_FAMILY or scheme == "CRYPT":
        return (concrete, data) if concrete in _CRYPT_FAMILY else None
    if scheme in _ARGON2_FAMILY or scheme == "ARGON2":
        return (concrete, data) if concrete in _ARGON2_FAMILY else None
    return None


def scheme_of(stored: str) -> str:
    """The scheme name of a stored value, for messages and validation.

    Prefixed values report their (upper-cased) prefix, known or not;
    unprefixed values report the scheme their crypt prefix implies, or
    ``"CRYPT"`` (Dovecot's default for passwd-files) when it implies none.
    """
    scheme, data = _split(stored)
    if scheme is not None:
        return scheme
    return _crypt_scheme(data) or "CRYPT"


def is_known_scheme(stored: str) -> bool:
    """True when :func:`verify_password` can check ``stored`` at all."""
    resolved = _resolve(stored)
    if resolved is None:
        return False
    scheme, data = resolved
    if scheme == "PLAIN-B64":
        return _b64decode(data) is not None
    return True


def _to_bytes(password: str | bytes) -> bytes:
    if isinstance(password, bytes):
        return password
    return password.encode("utf-8")


def _b64decode(data: str) -> bytes | None:
    try:
        return base64.b64decode(data.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        return None


def hash_password(password: str, scheme: str = DEFAULT_SCHEME, *, rounds: int | None = None) -> str:
    """Hash ``password`` for storage as ``{SCHEME}data``.

    ``rounds`` is bcrypt's cost factor (4..31, default 12) or SCRAM-SHA-256's
    iteration count (4096..1000000, default 4096), like ``doveadm pw -r``;
    other schemes take none. Raises ValueError for an
    empty password, for a scheme that is not in :data:`HASHABLE_SCHEMES`
    (saying why), and for a password the scheme cannot represent (over 72
    bytes for bcrypt; ``:``, CR, LF or NUL for PLAIN, which could not be
    stored in a passwd-file line).
    """
    name = scheme.upper()
    _check_rounds(name, rounds)
    if not password:
        raise ValueError("refusing to store an empty password")
    hasher = _HASHERS.get(name)
    if hasher is None:
        raise _not_hashable(name, scheme)
    return "{" + name + "}" + hasher(password, rounds)


def _hash_argon2(password: str, rounds: int | None) -> str:
    return _ARGON2_HASHER.hash(password.encode("utf-8"))


def _hash_bcrypt(password: str, rounds: int | None) -> str:
    raw = password.encode("utf-8")
    if len(raw) > _BCRYPT_MAX_BYTES:
        raise ValueError(
            f"BLF-CRYPT (bcrypt) uses only the first {_BCRYPT_MAX_BYTES} bytes of a password;"
            " this one is longer, use ARGON2ID"
        )
    salt = bcrypt.gensalt(rounds=rounds or _BCRYPT_COST)
    hashed = bcrypt.hashpw(raw, salt).decode("ascii")
    # Dovecot (and libc's crypt_blowfish) write $2y$; the algorithm is the
    # same as $2b$, only the identifier differs.
    return "$2y$" + hashed[4:]


def _hash_scram(password: str, rounds: int | None) -> str:
    iterations = rounds if rounds is not None else scram.DEFAULT_ITERATIONS
    return scram.format_secret(scram.make_secret(password.encode("utf-8"), iterations))


def _hash_plain(password: str, rounds: int | None) -> str:
    if _PLAIN_FORBIDDEN.intersection(password):
        raise ValueError(
            "a PLAIN password cannot contain ':', CR, LF or NUL in a passwd-file;"
            " use PLAIN-B64 (or better, a hashed scheme)"
        )
    return password


def _hash_plain_b64(password: str, rounds: int | None) -> str:
    return base64.b64encode(password.encode("utf-8")).decode("ascii")


#: What writes each scheme of :data:`HASHABLE_SCHEMES` (after its ``{SCHEME}``).
_HASHERS: dict[str, Callable[[str, int | None], str]] = {
    "ARGON2ID": _hash_argon2,
    "BLF-CRYPT": _hash_bcrypt,
    "PLAIN": _hash_plain,
    "PLAIN-B64": _hash_plain_b64,
    scram.SCHEME: _hash_scram,
}


def _not_hashable(name: str, scheme: str) -> ValueError:
    """Why mailsrv will not write passwords in ``scheme``."""
    if name in ("SHA512-CRYPT", "SHA256-CRYPT"):
        return ValueError(
            f"{name} is supported only to verify passwords migrated from another server;"
            f" hash new passwords with {' or '.join(sorted(HASHABLE_SCHEMES - PLAINTEXT_SCHEMES))}"
        )
    if name in KNOWN_SCHEMES:
        return ValueError(
            f"{name} is accepted when verifying but not written by mailsrv;"
            f" choose one of {', '.join(sorted(HASHABLE_SCHEMES))}"
        )
    return ValueError(
        f"unknown password scheme {scheme!r}; choose one of {', '.join(sorted(HASHABLE_SCHEMES))}"
    )


def _check_rounds(name: str, rounds: int | None) -> None:
    if rounds is None:
        return
    if name not in ("BLF-CRYPT", scram.SCHEME):
        raise ValueError(f"rounds can be chosen for BLF-CRYPT and {scram.SCHEME} only, not {name}")
    if name == "BLF-CRYPT" and not 4 <= rounds <= 31:
        raise ValueError(f"BLF-CRYPT rounds must be between 4 and 31, not {rounds}")


def verify_password(stored: str, password: str | bytes) -> bool:
    """True if ``password`` matches the stored ``{SCHEME}data`` value.

    ``password`` may be text (encoded as UTF-8) or the raw bytes a client
    sent. Returns False, never raises, for unknown schemes, malformed stored
    values and empty stored secrets.
    """
    resolved = _resolve(stored)
    if resolved is None:
        return False
    scheme, data = resolved
    if not data:
        return False
    try:
        raw = _to_bytes(password)
    except UnicodeError:
        return False
    checker = _VERIFIERS.get(scheme)
    if checker is None:  # pragma: no cover - every resolved scheme has one
        return False
    try:
        return checker(data, raw)
    except Exception:  # a malformed stored value is a failed login, never an error
        return False


def _verify_plain(data: str, raw: bytes) -> bool:
    return hmac.compare_digest(data.encode("utf-8"), raw)


def _verify_plain_b64(data: str, raw: bytes) -> bool:
    secret = _b64decode(data)
    return secret is not None and bool(secret) and hmac.compare_digest(secret, raw)


def _verify_argon2(data: str, raw: bytes) -> bool:
    kind = argon2.Type.ID if data.startswith("$argon2id$") else argon2.Type.I
    try:
        return argon2.low_level.verify_secret(data.encode("ascii"), raw, kind)
    except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
        return False


def _verify_bcrypt(data: str, raw: bytes) -> bool:
    # crypt_blowfish (Dovecot, libc) reads at most 72 bytes of the password;
    # the bcrypt package refuses longer input instead of truncating.
    return bcrypt.checkpw(raw[:_BCRYPT_MAX_BYTES], data.encode("ascii"))


def _verify_scram(data: str, raw: bytes) -> bool:
    secret = scram.parse_secret(data)
    return secret is not None and scram.password_matches(secret, raw)


def _verify_sha_crypt(data: str, raw: bytes) -> bool:
    parsed = _parse_sha_crypt(data)
    if parsed is None:
        return False
    algorithm, rounds, salt, expected = parsed
    actual = _sha_crypt_digest(algorithm, raw, salt, rounds)
    return hmac.compare_digest(actual.encode("ascii"), expected.encode("ascii"))


_VERIFIERS: dict[str, Callable[[str, bytes], bool]] = {
    "PLAIN": _verify_plain,
    "CLEAR": _verify_plain,
    "CLEARTEXT": _verify_plain,
    "PLAIN-B64": _verify_plain_b64,
    "ARGON2ID": _verify_argon2,
    "ARGON2I": _verify_argon2,
    "BLF-CRYPT": _verify_bcrypt,
    "SHA512-CRYPT": _verify_sha_crypt,
    "SHA256-CRYPT": _verify_sha_crypt,
    scram.SCHEME: _verify_scram,
}


def plaintext_secret_bytes(stored: str) -> bytes | None:
    """The stored password itself for plaintext-equivalent schemes, else None.

    Used by challenge-response mechanisms (CRAM-MD5, APOP) that need the
    shared secret; an empty secret counts as none.
    """
    scheme, data = _split(stored)
    if scheme is None or scheme not in PLAINTEXT_SCHEMES:
        return None
    if scheme == "PLAIN-B64":
        secret = _b64decode(data)
    else:
        try:
            secret = data.encode("utf-8")
        except UnicodeEncodeError:
            return None
    return secret or None


def scram_secret(stored: str) -> scram.ScramSecret | None:
    """The SCRAM secret a ``{SCRAM-SHA-256}`` value holds, else None."""
    scheme, data = _split(stored)
    return scram.parse_secret(data) if scheme == scram.SCHEME else None


def plaintext_secret(stored: str) -> str | None:
    """Text form of :func:`plaintext_secret_bytes` (None if not UTF-8)."""
    secret = plaintext_secret_bytes(stored)
    if secret is None:
        return None
    try:
        return secret.decode("utf-8")
    except UnicodeDecodeError:
        return None


_dummy_lock = threading.Lock()
_dummy: str | None = None


def dummy_hash() -> str:
    """An ARGON2ID hash of a random password nobody knows, made once.

    Verifying against it spends the same work as a real user's check, so an
    unknown user name cannot be told apart by response time.
    """
    global _dummy
    with _dummy_lock:
        if _dummy is None:
            _dummy = hash_password(secrets.token_urlsafe(24), "ARGON2ID")
        return _dummy


# --- SHA-crypt ($5$ / $6$), after Ulrich Drepper's "Unix crypt using SHA-256
# and SHA-512" specification. Implemented here because the crypt module is
# deprecated and absent from Python 3.13.

_CRYPT_ALPHABET = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_ROUNDS_DEFAULT = 5000
_ROUNDS_MIN = 1000
_ROUNDS_MAX = 999_999_999
_SALT_MAX = 16

# Byte order of the final encoding: groups of three digest bytes (most
# significant first) become four characters; the last group is shorter.
_SHA512_ORDER: tuple[tuple[int, ...], ...] = (
    *(((n, n + 21, n + 42), (n + 21, n + 42, n), (n + 42, n, n + 21))[n % 3] for n in range(21)),
    (63,),
)
_SHA256_ORDER: tuple[tuple[int, ...], ...] = (
    *(((n, n + 10, n + 20), (n + 20, n, n + 10), (n + 10, n + 20, n))[n % 3] for n in range(10)),
    (31, 30),
)
_SHA_CRYPT: dict[str, tuple[Callable[..., Any], tuple[tuple[int, ...], ...], int]] = {
    # algorithm id: (hash constructor, encoding order, encoded length)
    "6": (hashlib.sha512, _SHA512_ORDER, 86),
    "5": (hashlib.sha256, _SHA256_ORDER, 43),
}


def _parse_sha_crypt(data: str) -> tuple[str, int | None, bytes, str] | None:
    """Split ``$6$[rounds=N$]salt$hash`` into its parts, or None if malformed."""
    parts = data.split("$")
    if len(parts) not in (4, 5) or parts[0] or parts[1] not in _SHA_CRYPT:
        return None
    algorithm = parts[1]
    rounds: int | None = None
    if len(parts) == 5:
        spec = parts[2]
        if not spec.startswith("rounds="):
            return None
        digits = spec[len("rounds=") :]
        if not digits.isascii() or not digits.isdigit():
            return None
        rounds = min(max(int(digits), _ROUNDS_MIN), _ROUNDS_MAX)
    salt, encoded = parts[-2], parts[-1]
    if len(encoded) != _SHA_CRYPT[algorithm][2]:
        return None
    return algorithm, rounds, salt.encode("utf-8")[:_SALT_MAX], encoded


def _stretch(block: bytes, length: int) -> bytes:
    """``block`` repeated and cut to ``length`` bytes."""
    return (block * (length // len(block) + 1))[:length]


def _sha_crypt_digest(algorithm: str, password: bytes, salt: bytes, rounds: int | None) -> str:
    """The encoded hash part of a SHA-crypt value (without salt and rounds)."""
    new, order, _ = _SHA_CRYPT[algorithm]
    count = _ROUNDS_DEFAULT if rounds is None else rounds
    length = len(password)

    alternate = new(password + salt + password).digest()
    ctx = new(password + salt + _stretch(alternate, length))
    bits = length
    while bits:
        ctx.update(alternate if bits & 1 else password)
        bits >>= 1
    digest_a: bytes = ctx.digest()

    p_bytes = _stretch(new(password * length).digest(), length)
    s_bytes = _stretch(new(salt * (16 + digest_a[0])).digest(), len(salt))

    current = digest_a
    for i in range(count):
        odd = i & 1
        current = new(
            (p_bytes if odd else current)
            + (s_bytes if i % 3 else b"")
            + (p_bytes if i % 7 else b"")
            + (current if odd else p_bytes)
        ).digest()

    out = []
    for group in order:
        value = 0
        for index in group:
            value = (value << 8) | current[index]
        for _ in range(len(group) + 1):
            out.append(_CRYPT_ALPHABET[value & 0x3F])
            value >>= 6
    return "".join(out)


def sha_crypt(password: str | bytes, setting: str) -> str:
    """Compute a full SHA-crypt string, like ``crypt(3)`` with a ``$5$``/``$6$`` setting.

    ``setting`` is ``$6$salt`` or ``$6$rounds=N$salt`` (a trailing ``$hash``
    is ignored). Exposed for tests and migration tools; raises ValueError on
    a malformed setting.
    """
    parts = setting.split("$")
    if len(parts) < 3 or parts[0] or parts[1] not in _SHA_CRYPT:
        raise ValueError(f"not a SHA-crypt setting: {setting!r}")
    algorithm = parts[1]
    rounds: int | None = None
    rest = parts[2:]
    if rest[0].startswith("rounds="):
        digits = rest[0][len("rounds=") :]
        if not digits.isascii() or not digits.isdigit() or len(rest) < 2:
            raise ValueError(f"bad rounds in SHA-crypt setting: {setting!r}")
        rounds = min(max(int(digits), _ROUNDS_MIN), _ROUNDS_MAX)
        rest = rest[1:]
    salt = rest[0].encode("utf-8")[:_SALT_MAX]
    encoded = _sha_crypt_digest(algorithm, _to_bytes(password), salt, rounds)
    prefix = f"${algorithm}$" + ("" if rounds is None else f"rounds={rounds}$")
    return prefix + salt.decode("utf-8", "replace") + "$" + encoded
