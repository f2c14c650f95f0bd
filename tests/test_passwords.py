"""Password schemes: what mailsrv writes, and what it accepts from Dovecot files."""

from __future__ import annotations

import re
import warnings
from types import ModuleType

from twisted.trial.unittest import SynchronousTestCase

from mailsrv.auth.passwords import (
    DEFAULT_SCHEME,
    HASHABLE_SCHEMES,
    KNOWN_SCHEMES,
    dummy_hash,
    hash_password,
    is_known_scheme,
    plaintext_secret,
    plaintext_secret_bytes,
    scheme_of,
    sha_crypt,
    verify_password,
)

crypt_module: ModuleType | None
try:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt as crypt_module
except ImportError:  # Python 3.13 and later
    crypt_module = None

PASSWORD = "correct horse"

# Values in the exact form Dovecot stores (``doveadm pw`` output), all for
# PASSWORD. The argon2 ones use libsodium's encoding (one lane); the bcrypt one
# was made by the bcrypt package with its $2b$ identifier turned into Dovecot's
# $2y$ (libxcrypt's crypt(3) verifies it too).
DOVECOT_ARGON2ID = (
    "{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$PuxLm1lQ/xL38GrPlChWMw"
    "$Gdai57ZGp/XJkhYrwaDV08qx7/UBJx32mKd7ZEEK9Xs"
)
DOVECOT_ARGON2I = (
    "{ARGON2I}$argon2i$v=19$m=32768,t=4,p=1$FH2llziioayOZTbb38JVDw"
    "$DYm/329Ur2bqxbZzDLrRVZWpORzxVZpOLcF8JHQ8O+o"
)
DOVECOT_BLF_CRYPT = "{BLF-CRYPT}$2y$05$cAHPjK6jubZviGBii5At..wih6pu1MXgJ2RG1pD2cSIf5gsHRaUym"
BCRYPT_2A = "$2a$04$u189Pw.Nw3pIS/dpimE1nOhERQgiQn9P8uw78IRcTiADsOnDpGAN."
BCRYPT_2B = "$2b$04$ZSmyW5xbST8GYgvru1DpdO0zj2c1w5NjcDxFQDNFvHIJZnNJOD3ui"
# bcrypt of 72 "L"s: crypt_blowfish ignores anything after the 72nd byte.
BCRYPT_72 = "{BLF-CRYPT}$2b$04$eEyPkkRvCmWTmb3lQs9Qe.ilcshrjs1XbJErhPaHQ7o/wwS21btYu"

# Test vectors from Ulrich Drepper's "Unix crypt using SHA-256 and SHA-512".
SHA_CRYPT_VECTORS = [
    (
        "Hello world!",
        "$6$saltstring",
        "$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIFNjnQJuesI68u4OTLiBFdcbYEdFCoEOfaS35inz1",
    ),
    (
        "Hello world!",
        "$6$rounds=10000$saltstringsaltstring",
        "$6$rounds=10000$saltstringsaltst$OW1/O6BYHV6BcXZu8QVeXbDWra3Oeqh0sbHbbMCVNSnCM/UrjmM0Dp8vOuZeHBy/YTBmSK6H9qs/y3RnOaw5v.",
    ),
    (
        "This is just a test",
        "$6$rounds=5000$toolongsaltstring",
        "$6$rounds=5000$toolongsaltstrin$lQ8jolhgVRVhY4b5pZKaysCLi0QBxGoNeKQzQ3glMhwllF7oGDZxUhx1yxdYcz/e1JSbq3y6JMxxl8audkUEm0",
    ),
    (
        "the minimum number is still observed",
        "$6$rounds=10$roundstoolow",
        "$6$rounds=1000$roundstoolow$kUMsbe306n21p9R.FRkW3IGn.S9NPN0x50YhH1xhLsPuWGsUSklZt58jaTfF4ZEQpyUNGc0dqbpBYYBaHHrsX.",
    ),
    (
        "Hello world!",
        "$5$saltstring",
        "$5$saltstring$5B8vYYiY.CVt1RlTTf8KbXBH3hsxY/GNooZaBBGWEc5",
    ),
    (
        "Hello world!",
        "$5$rounds=10000$saltstringsaltstring",
        "$5$rounds=10000$saltstringsaltst$3xv.VbSHBb41AL9AvLeujZkZRBAwqFMz2.opqey6IcA",
    ),
]


class HashThenVerifyTests(SynchronousTestCase):
    def test_argon2id_default(self) -> None:
        self.assertEqual(DEFAULT_SCHEME, "ARGON2ID")
        stored = hash_password(PASSWORD)
        self.assertRegex(
            stored,
            r"^\{ARGON2ID\}\$argon2id\$v=19\$m=65536,t=3,p=1\$[A-Za-z0-9+/]{22}\$[A-Za-z0-9+/]{43}$",
        )
        self.assertTrue(verify_password(stored, PASSWORD))
        self.assertFalse(verify_password(stored, PASSWORD + "!"))
        self.assertEqual(scheme_of(stored), "ARGON2ID")
        self.assertIsNone(plaintext_secret(stored))

    def test_salted(self) -> None:
        """The same password never hashes to the same value twice."""
        first = hash_password(PASSWORD, "BLF-CRYPT", rounds=4)
        second = hash_password(PASSWORD, "BLF-CRYPT", rounds=4)
        self.assertNotEqual(first, second)

    def test_blf_crypt_writes_dovecot_identifier(self) -> None:
        stored = hash_password(PASSWORD, "BLF-CRYPT")
        # Cost 12 by default; verifying is shown at a cheaper cost below.
        self.assertRegex(stored, r"^\{BLF-CRYPT\}\$2y\$12\$[./A-Za-z0-9]{53}$")

    def test_blf_crypt_rounds(self) -> None:
        stored = hash_password(PASSWORD, "blf-crypt", rounds=5)
        self.assertTrue(stored.startswith("{BLF-CRYPT}$2y$05$"))
        self.assertTrue(verify_password(stored, PASSWORD))
        self.assertFalse(verify_password(stored, "correct horsE"))
        if crypt_module is not None and crypt_module.METHOD_BLOWFISH in crypt_module.methods:
            data = stored[len("{BLF-CRYPT}") :]
            self.assertEqual(crypt_module.crypt(PASSWORD, data), data)

    def test_plain(self) -> None:
        stored = hash_password("pässword", "PLAIN")
        self.assertEqual(stored, "{PLAIN}pässword")
        self.assertTrue(verify_password(stored, "pässword"))
        self.assertTrue(verify_password(stored, "pässword".encode()))
        self.assertFalse(verify_password(stored, "password"))
        self.assertEqual(plaintext_secret(stored), "pässword")

    def test_plain_b64(self) -> None:
        stored = hash_password("a:b\nc", "PLAIN-B64")
        self.assertEqual(stored, "{PLAIN-B64}YTpiCmM=")
        self.assertTrue(verify_password(stored, "a:b\nc"))
        self.assertFalse(verify_password(stored, "a:b"))
        self.assertEqual(plaintext_secret(stored), "a:b\nc")

    def test_plain_refuses_what_a_passwd_line_cannot_hold(self) -> None:
        for bad in ("a:b", "a\nb", "a\rb", "a\0b"):
            with self.assertRaises(ValueError) as caught:
                hash_password(bad, "PLAIN")
            self.assertIn("PLAIN-B64", str(caught.exception))

    def test_sha512_crypt_is_verify_only(self) -> None:
        for scheme in ("SHA512-CRYPT", "SHA256-CRYPT"):
            with self.assertRaises(ValueError) as caught:
                hash_password(PASSWORD, scheme)
            self.assertIn("migrated", str(caught.exception))

    def test_refusals(self) -> None:
        with self.assertRaises(ValueError) as caught:
            hash_password(PASSWORD, "MD5-CRYPT")
        self.assertIn("unknown password scheme", str(caught.exception))
        with self.assertRaises(ValueError):
            hash_password("", "ARGON2ID")
        with self.assertRaises(ValueError):
            hash_password(PASSWORD, "CLEAR")
        with self.assertRaises(ValueError):
            hash_password(PASSWORD, "PLAIN", rounds=5)
        with self.assertRaises(ValueError):
            hash_password(PASSWORD, "BLF-CRYPT", rounds=3)
        with self.assertRaises(ValueError) as caught:
            hash_password("x" * 73, "BLF-CRYPT", rounds=4)
        self.assertIn("72", str(caught.exception))

    def test_scheme_tables(self) -> None:
        self.assertLessEqual(HASHABLE_SCHEMES, KNOWN_SCHEMES)
        self.assertIn(DEFAULT_SCHEME, HASHABLE_SCHEMES)
        self.assertNotIn("SHA512-CRYPT", HASHABLE_SCHEMES)
        self.assertIn("SHA512-CRYPT", KNOWN_SCHEMES)


class DovecotValuesTests(SynchronousTestCase):
    def test_argon2id(self) -> None:
        self.assertTrue(verify_password(DOVECOT_ARGON2ID, PASSWORD))
        self.assertFalse(verify_password(DOVECOT_ARGON2ID, "correct horse "))

    def test_argon2i_and_umbrella_names(self) -> None:
        self.assertTrue(verify_password(DOVECOT_ARGON2I, PASSWORD))
        data = DOVECOT_ARGON2I[len("{ARGON2I}") :]
        # Dovecot's {ARGON2} (and a mismatched {ARGON2ID}) go by the hash itself.
        self.assertTrue(verify_password("{ARGON2}" + data, PASSWORD))
        self.assertTrue(verify_password("{ARGON2ID}" + data, PASSWORD))
        self.assertFalse(verify_password("{ARGON2}" + data, "wrong"))

    def test_blf_crypt(self) -> None:
        self.assertTrue(verify_password(DOVECOT_BLF_CRYPT, PASSWORD))
        self.assertFalse(verify_password(DOVECOT_BLF_CRYPT, "correct-horse"))
        self.assertTrue(verify_password("{BLF-CRYPT}" + BCRYPT_2A, PASSWORD))
        self.assertTrue(verify_password("{BLF-CRYPT}" + BCRYPT_2B, PASSWORD))

    def test_blf_crypt_reads_72_bytes_like_crypt_blowfish(self) -> None:
        self.assertTrue(verify_password(BCRYPT_72, "L" * 72))
        self.assertTrue(verify_password(BCRYPT_72, "L" * 72 + "anything"))
        self.assertFalse(verify_password(BCRYPT_72, "L" * 71))

    def test_sha_crypt_spec_vectors(self) -> None:
        for password, setting, expected in SHA_CRYPT_VECTORS:
            self.assertEqual(sha_crypt(password, setting), expected)
            scheme = "SHA512-CRYPT" if expected.startswith("$6$") else "SHA256-CRYPT"
            self.assertTrue(verify_password("{" + scheme + "}" + expected, password))
            self.assertTrue(verify_password(expected, password), "unprefixed")
            # {CRYPT} (and, as with Dovecot's crypt(3) based schemes, any
            # crypt-family name) goes by the value's own $id$.
            self.assertTrue(verify_password("{CRYPT}" + expected, password))
            self.assertTrue(verify_password("{BLF-CRYPT}" + expected, password))
            self.assertFalse(verify_password("{" + scheme + "}" + expected, password + "x"))
            self.assertEqual(scheme_of(expected), scheme)

    def test_sha_crypt_agrees_with_libc(self) -> None:
        if crypt_module is None:
            raise self.skipTest("the crypt module is gone from this Python")
        passwords = ["", "a", "pässwörd", "x" * 64, "y" * 65, "z" * 200, "with space\t"]
        salts = ["", "s", "saltsalt", "exactly16charsxx", "longer.than.sixteen.chars"]
        checked = 0
        for algorithm in ("5", "6"):
            for i, password in enumerate(passwords):
                salt = salts[i % len(salts)]
                for setting in (f"${algorithm}${salt}", f"${algorithm}$rounds=1001${salt}"):
                    expected = crypt_module.crypt(password, setting)
                    self.assertEqual(sha_crypt(password, setting), expected)
                    if password:
                        self.assertTrue(verify_password(expected, password))
                    checked += 1
        self.assertEqual(checked, 28)

    def test_sha512_crypt_written_by_doveadm(self) -> None:
        # doveadm pw -s SHA512-CRYPT writes the default rounds without "rounds=".
        stored = "{SHA512-CRYPT}" + sha_crypt(PASSWORD, "$6$Wq7aMvzj2bXb1K3F")
        self.assertRegex(stored, r"^\{SHA512-CRYPT\}\$6\$Wq7aMvzj2bXb1K3F\$[./A-Za-z0-9]{86}$")
        self.assertTrue(verify_password(stored, PASSWORD))
        self.assertFalse(verify_password(stored, "Correct horse"))

    def test_plaintext_aliases(self) -> None:
        for scheme in ("PLAIN", "CLEAR", "CLEARTEXT", "plain", "Cleartext"):
            stored = "{" + scheme + "}s3cret"
            self.assertTrue(verify_password(stored, "s3cret"), scheme)
            self.assertFalse(verify_password(stored, "s3cret "), scheme)
            self.assertEqual(plaintext_secret(stored), "s3cret")
            self.assertEqual(plaintext_secret_bytes(stored), b"s3cret")
            self.assertTrue(is_known_scheme(stored))

    def test_plain_b64_with_binary_secret(self) -> None:
        stored = "{PLAIN-B64}/w=="  # the single byte 0xff
        self.assertTrue(verify_password(stored, b"\xff"))
        self.assertEqual(plaintext_secret_bytes(stored), b"\xff")
        self.assertIsNone(plaintext_secret(stored), "not text")

    def test_unprefixed_values(self) -> None:
        self.assertTrue(verify_password(DOVECOT_ARGON2ID[len("{ARGON2ID}") :], PASSWORD))
        self.assertTrue(verify_password(DOVECOT_BLF_CRYPT[len("{BLF-CRYPT}") :], PASSWORD))
        self.assertEqual(scheme_of(BCRYPT_2A), "BLF-CRYPT")
        # Anything else without a prefix (DES crypt, MD5-crypt, a bare
        # password) is refused rather than compared as plaintext.
        for value in ("abJnggxhB/yWI", "$1$saltsalt$qjXMvbEw8oaL.CzflDugX/", "s3cret"):
            self.assertFalse(verify_password(value, "s3cret"))
            self.assertFalse(is_known_scheme(value))
            self.assertIsNone(plaintext_secret(value))
        self.assertEqual(scheme_of("abJnggxhB/yWI"), "CRYPT")


class BadStoredValuesTests(SynchronousTestCase):
    def test_unknown_scheme(self) -> None:
        self.assertFalse(verify_password("{SSHA512}abcdef", "abcdef"))
        self.assertEqual(scheme_of("{ssha512}abcdef"), "SSHA512")
        self.assertFalse(is_known_scheme("{SSHA512}abcdef"))
        self.assertIsNone(plaintext_secret("{SSHA512}abcdef"))

    def test_malformed_values_fail_without_raising(self) -> None:
        malformed = [
            "",
            "{",
            "{}",
            "{PLAIN",
            "{SHA512-CRYPT}garbage",
            "{SHA512-CRYPT}$6$salt$tooshort",
            "{SHA512-CRYPT}$6$rounds=many$salt$" + "a" * 86,
            "{SHA256-CRYPT}$5$rounds=$salt$" + "a" * 43,
            "{BLF-CRYPT}$2y$05$short",
            "{BLF-CRYPT}$2x$05$" + "a" * 53,
            "{ARGON2ID}$argon2id$v=19$broken",
            "{ARGON2ID}" + BCRYPT_2B,
            "{PLAIN-B64}!!not base64!!",
            "{CRYPT}$argon2id$v=19$m=65536,t=3,p=1$x$y",
        ]
        for stored in malformed:
            self.assertFalse(verify_password(stored, "x"), stored)
            self.assertFalse(verify_password(stored, b"\xff\xfe"), stored)

    def test_empty_secret_never_matches(self) -> None:
        for stored in ("{PLAIN}", "{CLEAR}", "{PLAIN-B64}"):
            self.assertFalse(verify_password(stored, ""))
            self.assertIsNone(plaintext_secret_bytes(stored))

    def test_is_known_scheme(self) -> None:
        self.assertTrue(is_known_scheme(DOVECOT_ARGON2ID))
        self.assertTrue(is_known_scheme(DOVECOT_BLF_CRYPT))
        self.assertTrue(is_known_scheme("{SHA512-CRYPT}" + SHA_CRYPT_VECTORS[0][2]))
        self.assertTrue(is_known_scheme("{PLAIN-B64}YTpiCmM="))
        self.assertFalse(is_known_scheme("{PLAIN-B64}!!"))
        self.assertFalse(is_known_scheme("{MD5}abc"))


class DummyHashTests(SynchronousTestCase):
    def test_dummy_hash_is_one_argon2id_hash(self) -> None:
        first = dummy_hash()
        self.assertIs(dummy_hash(), first)
        self.assertTrue(re.match(r"^\{ARGON2ID\}\$argon2id\$v=19\$m=65536,t=3,p=1\$", first))
        self.assertFalse(verify_password(first, ""))
