"""What the observers are told of an IMAP command: its name as a metric
label, its size, and its text for the debug log with secrets left out."""

from __future__ import annotations

from collections.abc import Sequence

from mailsrv.imap.lexer import LiteralFile, Segment, peek_command
from mailsrv.observe import UNKNOWN

__all__ = ["command_name", "command_size", "loggable"]


def loggable(segments: Sequence[Segment]) -> str:
    """A command as the debug log shows it: literals as their size, and
    LOGIN's and AUTHENTICATE's arguments (a password, a SASL response) left out."""
    first = segments[0] if segments and isinstance(segments[0], bytes) else b""
    peeked = peek_command(first)
    if peeked is not None and peeked[1] in ("LOGIN", "AUTHENTICATE"):
        tag, name = peeked
        if name == "AUTHENTICATE":
            words = first.split(b" ")
            mechanism = words[2].decode("ascii", "replace") if len(words) > 2 else ""
            return f"{tag} AUTHENTICATE {mechanism}" + (" ***" if len(words) > 3 else "")
        return f"{tag} LOGIN ***"
    # Segments alternate a line's text and a literal's payload.
    parts: list[str] = []
    for i, segment in enumerate(segments):
        if i % 2 == 1 or not isinstance(segment, bytes):
            parts.append(f"<{_octets(segment)} octets>")
        else:
            parts.append(segment[:200].decode("utf-8", "replace"))
    return " ".join(parts)


def _octets(segment: Segment) -> int:
    return segment.size if isinstance(segment, LiteralFile) else len(segment)


def command_name(segments: Sequence[Segment]) -> str:
    """The command a malformed one meant, for the observers (UNKNOWN
    unless it is a known name: the label stays among the commands)."""
    first = segments[0] if segments and isinstance(segments[0], bytes) else b""
    peeked = peek_command(first)
    return peeked[1] if peeked is not None else UNKNOWN


def command_size(segments: Sequence[Segment]) -> int:
    """A command's octets: its lines with their CRLFs, and its literals."""
    return sum(_octets(s) + (2 if i % 2 == 0 else 0) for i, s in enumerate(segments))
