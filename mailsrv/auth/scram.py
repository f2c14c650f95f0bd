"""SCRAM-SHA-256 secrets (RFC 5802 3, RFC 7677): what the server keeps of a
password, ``{SCRAM-SHA-256}iterations,salt,StoredKey,ServerKey`` as Dovecot's
``doveadm pw -s SCRAM-SHA-256`` writes it (base64 fields), from which a
login can be checked but the password not recovered.

Only the standard library: the users file and ``mailsrv deliver`` import
this; the exchange itself is :mod:`mailsrv.auth.scram_server`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets

import attrs

from mailsrv.auth.saslprep import saslprep

__all__ = [
    "DEFAULT_ITERATIONS",
    "MAX_ITERATIONS",
    "MIN_ITERATIONS",
    "SCHEME",
    "ScramSecret",
    "client_key_matches",
    "derived_salt",
    "fake_secret",
    "format_secret",
    "make_secret",
    "parse_secret",
    "password_matches",
    "secret_from_plaintext",
    "server_signature",
    "spend_derivation",
]

SCHEME = "SCRAM-SHA-256"

#: RFC 7677 3: servers SHOULD announce at least 4096 iterations; 4096 is
#: also what ``doveadm pw`` writes.
DEFAULT_ITERATIONS = 4096
MIN_ITERATIONS = 4096
#: A stored secret asking for more is refused: a PLAIN login against it
#: would spend seconds of a pool thread (PBKDF2 of a million rounds of
#: HMAC-SHA-256 takes about half a second).
MAX_ITERATIONS = 1_000_000
SALT_BYTES = 16

_HASH = hashlib.sha256
DIGEST_SIZE = 32
_ITERATIONS = re.compile(r"[1-9][0-9]{0,9}")


# -- the secret ---------------------------------------------------------------------


@attrs.frozen(repr=False)
class ScramSecret:
    """What the server keeps of a password (RFC 5802 3).

    ``fake`` marks the made-up secret of a user who does not exist: it
    never verifies, whatever the proof.
    """

    iterations: int
    salt: bytes
    stored_key: bytes
    server_key: bytes
    fake: bool = False

    def __repr__(self) -> str:
        return f"ScramSecret(iterations={self.iterations}, fake={self.fake})"


def _hmac(key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, _HASH).digest()


def _keys(salted_password: bytes) -> tuple[bytes, bytes]:
    """(StoredKey, ServerKey) of a SaltedPassword (RFC 5802 3)."""
    client_key = _hmac(salted_password, b"Client Key")
    return _HASH(client_key).digest(), _hmac(salted_password, b"Server Key")


def normalized(password: bytes) -> bytes:
    """Normalize(password) of RFC 5802 2.2: SASLprep'd as a stored string.

    A password that SASLprep refuses (a control character, an unassigned
    code point) or that is not UTF-8 is used as it is, as most clients do,
    rather than made unusable.
    """
    try:
        return saslprep(password.decode("utf-8")).encode("utf-8")
    except (UnicodeDecodeError, ValueError):
        return password


def _secret_from(password: bytes, salt: bytes, iterations: int) -> ScramSecret:
    salted = hashlib.pbkdf2_hmac("sha256", password, salt, iterations)
    stored_key, server_key = _keys(salted)
    return ScramSecret(iterations, salt, stored_key, server_key)


def make_secret(
    password: str | bytes, iterations: int = DEFAULT_ITERATIONS, salt: bytes | None = None
) -> ScramSecret:
    """The secret of ``password`` with a fresh random salt (or ``salt``)."""
    if not MIN_ITERATIONS <= iterations <= MAX_ITERATIONS:
        raise ValueError(
            f"SCRAM-SHA-256 iterations must be between {MIN_ITERATIONS} and {MAX_ITERATIONS},"
            f" not {iterations}"
        )
    raw = password.encode("utf-8") if isinstance(password, str) else password
    salt = salt if salt is not None else secrets.token_bytes(SALT_BYTES)
    return _secret_from(normalized(raw), salt, iterations)


def format_secret(secret: ScramSecret) -> str:
    """The stored form, without the ``{SCRAM-SHA-256}`` prefix."""
    fields = (secret.salt, secret.stored_key, secret.server_key)
    return ",".join([str(secret.iterations), *(base64.b64encode(f).decode() for f in fields)])


def b64decode(text: str | bytes) -> bytes | None:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None


def parse_secret(data: str) -> ScramSecret | None:
    """The secret stored as ``data`` (after the prefix), or None if it is
    malformed or its iteration count is out of bounds."""
    parts = data.split(",")
    if len(parts) != 4 or not _ITERATIONS.fullmatch(parts[0]):
        return None
    iterations = int(parts[0])
    if not MIN_ITERATIONS <= iterations <= MAX_ITERATIONS:
        return None
    salt, stored_key, server_key = (b64decode(part) for part in parts[1:])
    if not salt or stored_key is None or server_key is None:
        return None
    if len(stored_key) != DIGEST_SIZE or len(server_key) != DIGEST_SIZE:
        return None
    return ScramSecret(iterations, salt, stored_key, server_key)


def password_matches(secret: ScramSecret, password: bytes) -> bool:
    """Whether ``password`` (a PLAIN or LOGIN login) is the one ``secret``
    was made from: its StoredKey recomputed and compared in constant time.

    Tried SASLprep'd first, then as sent: Dovecot writes secrets of the
    password as it is, and the two differ only for unusual passwords.
    """
    prepared = normalized(password)
    candidates = [prepared] if prepared == password else [prepared, password]
    found = False
    for candidate in candidates:
        found |= hmac.compare_digest(
            _secret_from(candidate, secret.salt, secret.iterations).stored_key, secret.stored_key
        )
    return found and not secret.fake


def derived_salt(key: bytes, purpose: bytes, name: str) -> bytes:
    """A salt that is the same for ``name`` at every attempt but unknown
    without the server's ``key``."""
    return _hmac(key, purpose + b"\0" + name.encode("utf-8"))[:SALT_BYTES]


def fake_secret(key: bytes, name: str) -> ScramSecret:
    """The secret shown for a user who does not exist (or cannot use SCRAM):
    a stable salt from the server's ``key``, the usual iteration count, and
    keys nobody can match."""
    salt = derived_salt(key, b"unknown user", name)
    filler = _hmac(key, b"unknown user keys\0" + name.encode("utf-8"))
    return ScramSecret(DEFAULT_ITERATIONS, salt, filler, filler, fake=True)


def secret_from_plaintext(key: bytes, name: str, password: bytes) -> ScramSecret:
    """A SCRAM secret for a user whose password is stored in the clear
    (``{PLAIN}``), with a salt derived like :func:`fake_secret`'s so that it
    is stable and looks the same."""
    return _secret_from(
        normalized(password), derived_salt(key, b"plaintext user", name), DEFAULT_ITERATIONS
    )


def spend_derivation() -> None:
    """The PBKDF2 a plaintext user's look-up costs, spent for every other
    look-up too, so its time tells nothing about the user."""
    hashlib.pbkdf2_hmac("sha256", b"", b"\0" * SALT_BYTES, DEFAULT_ITERATIONS)


def client_key_matches(secret: ScramSecret, auth_message: bytes, proof: bytes) -> bool:
    """RFC 5802 3: ClientKey = ClientProof XOR HMAC(StoredKey, AuthMessage),
    and H(ClientKey) must be the StoredKey (compared in constant time)."""
    if secret.fake or len(proof) != DIGEST_SIZE:
        return False
    signature = _hmac(secret.stored_key, auth_message)
    client_key = bytes(a ^ b for a, b in zip(proof, signature, strict=True))
    return hmac.compare_digest(_HASH(client_key).digest(), secret.stored_key)


def server_signature(secret: ScramSecret, auth_message: bytes) -> bytes:
    """ServerSignature := HMAC(ServerKey, AuthMessage) (RFC 5802 3)."""
    return _hmac(secret.server_key, auth_message)
