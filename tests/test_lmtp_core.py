"""The LMTP conversation (mailsrv.lmtp.core) fed bytes directly, no sockets."""

from __future__ import annotations

import io
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from mailsrv.errors import LimitExceeded, TemporaryFailure
from mailsrv.lmtp.core import (
    Close,
    Deliver,
    LMTPCore,
    Recipient,
    Reply,
    Resolve,
    candidates,
)
from mailsrv.storage.deliver import EmptyMessage


class Spool(io.BytesIO):
    """A spool that keeps its content readable after close."""

    def close(self) -> None:
        self.closed_with = self.getvalue()
        super().close()


class Conversation:
    """Drives a core the way the protocol does, resolving every address
    in ``known`` and delivering with ``outcomes`` (UIDs or exceptions)."""

    def __init__(self, core: LMTPCore, known: set[str]) -> None:
        self.core = core
        self.known = known
        self.wire = b""
        self.delivered: list[tuple[tuple[str, ...], bytes]] = []
        self.outcomes: list[Any] | None = None
        self.closed = False
        self.run(core.greeting())

    def run(self, actions: list[Any]) -> None:
        for action in actions:
            if isinstance(action, Reply):
                self.wire += action.to_bytes()
            elif isinstance(action, Close):
                self.closed = True
            elif isinstance(action, Resolve):
                user = action.address.split("@")[0]
                found = Recipient(action.address, user) if user in self.known else None
                self.run(self.core.resolved(found))
            elif isinstance(action, Deliver):
                body = action.spool.read()
                action.spool.close()
                self.delivered.append((tuple(r.address for r in action.recipients), body))
                outcomes = self.outcomes or list(range(1, len(action.recipients) + 1))
                self.run(self.core.delivered(outcomes))

    def send(self, data: bytes) -> bytes:
        start = len(self.wire)
        self.run(self.core.receive(data))
        return self.wire[start:]


def conversation(known: set[str] | None = None, **limits: Any) -> Conversation:
    core = LMTPCore("mx.test", Spool, **limits)
    return Conversation(core, known if known is not None else {"alice", "bob"})


class ConversationTests(SynchronousTestCase):
    def test_greeting_and_lhlo_capabilities(self) -> None:
        c = conversation(max_message_size=5000)
        self.assertEqual(c.wire, b"220 mx.test LMTP ready\r\n")
        self.assertEqual(
            c.send(b"LHLO client\r\n"),
            b"250-mx.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n"
            b"250-ENHANCEDSTATUSCODES\r\n250 SIZE 5000\r\n",
        )

    def test_pipelined_transaction_answers_in_order_one_reply_per_recipient(self) -> None:
        c = conversation()
        out = c.send(
            b"LHLO c\r\nMAIL FROM:<s@x>\r\nRCPT TO:<alice@x>\r\nRCPT TO:<nobody@x>\r\n"
            b"RCPT TO:<bob@x>\r\nDATA\r\nSubject: s\r\n\r\nbody\r\n.\r\nQUIT\r\n"
        )
        lines = out.split(b"\r\n")[5:-1]
        self.assertEqual(
            lines,
            [
                b"250 2.1.0 Sender OK",
                b"250 2.1.5 <alice@x> Recipient OK",
                b"550 5.1.1 <nobody@x> No such user here",
                b"250 2.1.5 <bob@x> Recipient OK",
                b"354 Start mail input; end with <CRLF>.<CRLF>",
                b"250 2.0.0 <alice@x> Delivered as UID 1",
                b"250 2.0.0 <bob@x> Delivered as UID 2",
                b"221 2.0.0 mx.test closing connection",
            ],
        )
        self.assertEqual(c.delivered, [(("alice@x", "bob@x"), b"Subject: s\r\n\r\nbody\r\n")])
        self.assertTrue(c.closed)

    def start_data(self, c: Conversation) -> None:
        c.send(b"LHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<alice@x>\r\nDATA\r\n")

    def test_dot_stuffing_removed_and_end_found_across_chunks(self) -> None:
        c = conversation()
        self.start_data(c)
        message = b"..leading dot\r\n..\r\n.\r\n"  # a data line ".", then the end
        stream = b"a\r\n" + message
        for i in range(len(stream)):  # one byte at a time
            c.send(stream[i : i + 1])
        self.assertEqual(c.delivered, [(("alice@x",), b"a\r\n.leading dot\r\n.\r\n")])

    def test_bare_lf_dot_lf_does_not_end_the_message(self) -> None:
        c = conversation()
        self.start_data(c)
        out = c.send(b"one\n.\nRCPT TO:<bob@x>\r\n")
        self.assertEqual(out, b"")
        self.assertEqual(c.delivered, [])
        c.send(b".\r\n")
        self.assertEqual(c.delivered, [(("alice@x",), b"one\n.\nRCPT TO:<bob@x>\r\n")])

    def test_8bit_data_is_kept_octet_for_octet(self) -> None:
        c = conversation()
        c.send(b"LHLO c\r\nMAIL FROM:<s@x> BODY=8BITMIME\r\nRCPT TO:<alice@x>\r\nDATA\r\n")
        body = bytes(range(1, 256)).replace(b"\r", b"").replace(b"\n", b"") + b"\r\n"
        c.send(body + b".\r\n")
        self.assertEqual(c.delivered[0][1], body)

    def test_message_over_size_is_refused_per_recipient_after_the_data(self) -> None:
        c = conversation(max_message_size=1024)
        c.send(b"LHLO c\r\nMAIL FROM:<s@x>\r\nRCPT TO:<alice@x>\r\nRCPT TO:<bob@x>\r\nDATA\r\n")
        out = c.send(b"x" * 2000 + b"\r\n.\r\nNOOP\r\n")
        self.assertEqual(
            out,
            b"552 5.3.4 <alice@x> Message too big (at most 1024 octets)\r\n"
            b"552 5.3.4 <bob@x> Message too big (at most 1024 octets)\r\n"
            b"250 2.0.0 OK\r\n",
        )
        self.assertEqual(c.delivered, [])

    def test_size_parameter_over_the_limit_is_refused_at_mail(self) -> None:
        c = conversation(max_message_size=1024)
        c.send(b"LHLO c\r\n")
        self.assertEqual(
            c.send(b"MAIL FROM:<s@x> SIZE=1025\r\n"),
            b"552 5.3.4 Message too big (at most 1024 octets)\r\n",
        )
        self.assertEqual(c.send(b"MAIL FROM:<s@x> SIZE=1024\r\n"), b"250 2.1.0 Sender OK\r\n")

    def test_unknown_parameters_and_bad_syntax(self) -> None:
        c = conversation()
        c.send(b"LHLO c\r\n")
        self.assertEqual(c.send(b"MAIL FROM:<s@x> SMTPUTF8\r\n")[:9], b"555 5.5.4")
        self.assertEqual(c.send(b"MAIL FROM:<s@x> BODY=BINARYMIME\r\n")[:9], b"501 5.5.4")
        self.assertEqual(c.send(b"MAIL FROM:s@x\r\n")[:9], b"501 5.5.4")
        c.send(b"MAIL FROM:<s@x>\r\n")
        self.assertEqual(c.send(b"RCPT TO:<>\r\n")[:9], b"501 5.1.3")
        self.assertEqual(c.send(b"RCPT TO:<alice@x> NOTIFY=NEVER\r\n")[:9], b"555 5.5.4")
        self.assertEqual(c.send(b"FROB\r\n"), b"500 5.5.2 Command unrecognized\r\n")
        self.assertEqual(c.send(b"\xff\xfe\r\n")[:9], b"500 5.5.2")

    def test_commands_out_of_order(self) -> None:
        c = conversation()
        self.assertEqual(c.send(b"MAIL FROM:<s@x>\r\n"), b"503 5.5.1 Send LHLO first\r\n")
        self.assertEqual(c.send(b"HELO c\r\n")[:9], b"500 5.5.1")
        self.assertEqual(c.send(b"EHLO c\r\n")[:9], b"500 5.5.1")
        c.send(b"LHLO c\r\n")
        self.assertEqual(c.send(b"RCPT TO:<alice@x>\r\n"), b"503 5.5.1 Send MAIL first\r\n")
        self.assertEqual(c.send(b"DATA\r\n"), b"503 5.5.1 Send MAIL first\r\n")
        c.send(b"MAIL FROM:<s@x>\r\n")
        self.assertEqual(c.send(b"MAIL FROM:<s@x>\r\n")[:9], b"503 5.5.1")
        c.send(b"RCPT TO:<nobody@x>\r\n")
        # RFC 2033 4.2: no successful RCPT, so DATA fails with 503.
        self.assertEqual(c.send(b"DATA\r\n"), b"503 5.5.1 No valid recipients\r\n")
        self.assertEqual(c.send(b"RSET\r\n"), b"250 2.0.0 OK\r\n")
        self.assertEqual(c.send(b"RCPT TO:<alice@x>\r\n"), b"503 5.5.1 Send MAIL first\r\n")

    def test_too_many_recipients(self) -> None:
        c = conversation(max_recipients=2)
        c.send(b"LHLO c\r\nMAIL FROM:<s@x>\r\n")
        out = c.send(b"RCPT TO:<alice@x>\r\nRCPT TO:<bob@x>\r\nRCPT TO:<alice@y>\r\n")
        self.assertEqual(out.split(b"\r\n")[2], b"452 4.5.3 Too many recipients")

    def test_overlong_command_line_is_refused_and_the_next_one_served(self) -> None:
        c = conversation(max_line_length=100)
        c.send(b"LHLO c\r\n")
        out = c.send(b"NOOP " + b"x" * 300)  # no line end yet: not buffered
        self.assertEqual(out, b"")
        self.assertLess(len(c.core._buffer), 200)
        out = c.send(b"x" * 300 + b"\r\nNOOP\r\n")
        self.assertEqual(out, b"500 5.5.2 Line too long\r\n250 2.0.0 OK\r\n")

    def test_delivery_failures_become_per_recipient_codes(self) -> None:
        c = conversation(known={"a", "b", "c", "d", "e"})
        c.outcomes = [
            TemporaryFailure("disk full"),
            LimitExceeded("over quota"),
            EmptyMessage("empty"),
            RuntimeError("bug"),
            7,
        ]
        c.send(b"LHLO c\r\nMAIL FROM:<s@x>\r\n")
        c.send(b"".join(b"RCPT TO:<%s@x>\r\n" % u for u in (b"a", b"b", b"c", b"d", b"e")))
        out = c.send(b"DATA\r\nx\r\n.\r\n")
        codes = [line[:9] for line in out.split(b"\r\n")[1:-1]]
        self.assertEqual(
            codes, [b"451 4.3.0", b"552 5.2.2", b"554 5.6.0", b"451 4.3.0", b"250 2.0.0"]
        )
        self.assertNotIn(b"bug", out)

    def test_connection_lost_mid_data_closes_the_spool_and_delivers_nothing(self) -> None:
        c = conversation()
        self.start_data(c)
        c.send(b"partial message\r\n")
        spool = c.core._spool
        assert spool is not None
        c.core.connection_lost()
        self.assertTrue(spool.closed)
        self.assertEqual(c.delivered, [])

    def test_timeout(self) -> None:
        c = conversation()
        c.run(c.core.timed_out())
        self.assertTrue(c.wire.endswith(b"421 4.4.2 mx.test Timeout, closing connection\r\n"))
        self.assertTrue(c.closed)


class CandidateTests(SynchronousTestCase):
    def test_full_address_then_local_part_then_without_detail(self) -> None:
        self.assertEqual(
            candidates("Alice+Lists@Example.ORG", "+"),
            [
                ("Alice+Lists@example.org", None),
                ("Alice@example.org", "Lists"),
                ("Alice+Lists", None),
                ("Alice", "Lists"),
            ],
        )

    def test_no_delimiter_no_detail(self) -> None:
        self.assertEqual(candidates("a+b@x", ""), [("a+b@x", None), ("a+b", None)])
        self.assertEqual(candidates("alice", "+"), [("alice", None)])
        self.assertEqual(
            candidates("a-b@x", "-"), [("a-b@x", None), ("a@x", "b"), ("a-b", None), ("a", "b")]
        )
