"""Modified UTF-7 (RFC 3501 5.1.3) as mailbox names travel on the wire and on disk."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from mailsrv import mutf7

# Pairs checked against RFC 3501's own example and what Dovecot writes on disk.
KNOWN = [
    ("INBOX", "INBOX"),
    ("", ""),
    ("&", "&-"),
    ("Tom & Jerry", "Tom &- Jerry"),
    ("~peter/mail/台北/日本語", "~peter/mail/&U,BTFw-/&ZeVnLIqe-"),
    ("Entwürfe", "Entw&APw-rfe"),
    ("Gesendete Objekte", "Gesendete Objekte"),
    ("Корзина", "&BBoEPgRABDcEOAQ9BDA-"),
    ("é", "&AOk-"),
    ("😀", "&2D3eAA-"),
    ("a\u00e9&b", "a&AOk-&-b"),
]


class EncodeTests(SynchronousTestCase):
    def test_known_values(self) -> None:
        for text, encoded in KNOWN:
            self.assertEqual(mutf7.encode(text), encoded, text)

    def test_known_values_decode(self) -> None:
        for text, encoded in KNOWN:
            self.assertEqual(mutf7.decode(encoded), text, encoded)

    def test_round_trip(self) -> None:
        samples = ["Ünïcødé & more", "混合 mixed 文字", "tab-free~!@#$%^*()", "\u20ac\u20ac&&"]
        for text in samples:
            self.assertEqual(mutf7.decode(mutf7.encode(text)), text)

    def test_encoded_is_printable_ascii(self) -> None:
        encoded = mutf7.encode("Ünïcødé\u0001\u007f")
        self.assertTrue(all(" " <= c <= "~" for c in encoded), encoded)

    def test_comma_not_slash(self) -> None:
        # RFC 3501 uses ',' where base64 has '/'.
        self.assertEqual(mutf7.encode("\u00ff\u00ff"), "&AP8A,w-")

    def test_lone_surrogate_rejected(self) -> None:
        self.assertRaises(ValueError, mutf7.encode, "\ud800")


class DecodeRejectsTests(SynchronousTestCase):
    """Only the one spelling encode() produces is accepted."""

    def assertInvalid(self, text: str) -> None:
        with self.assertRaises(ValueError, msg=text):
            mutf7.decode(text)

    def test_unterminated_shift(self) -> None:
        self.assertInvalid("&AOk")

    def test_bad_base64_characters(self) -> None:
        self.assertInvalid("&A/k-")
        self.assertInvalid("&AOk=-")
        self.assertInvalid("&A!k-")

    def test_non_ascii_input(self) -> None:
        self.assertInvalid("é")

    def test_control_characters(self) -> None:
        self.assertInvalid("a\tb")
        self.assertInvalid("a\x00b")

    def test_encoded_printable_ascii(self) -> None:
        # "&AGE-" is 'a' encoded: must be written directly.
        self.assertInvalid("&AGE-")

    def test_adjacent_runs(self) -> None:
        self.assertInvalid("&AOk-&AOk-")

    def test_truncated_utf16(self) -> None:
        self.assertInvalid("&AO-")
        self.assertInvalid("&A-")

    def test_stray_bits(self) -> None:
        self.assertInvalid("&AOl-")

    def test_unpaired_surrogate(self) -> None:
        self.assertInvalid("&2D0-")
