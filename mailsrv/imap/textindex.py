"""SEARCH BODY and TEXT, through a mailbox's full-text index where it has one.

A mailbox that provides :class:`~mailsrv.interfaces.IFullTextSearch` answers
a needle with the messages it covers that match
(:class:`~mailsrv.interfaces.TextMatches`).  :class:`IndexedText` asks once
per search key and lets the key's predicate decide covered messages from
that answer; the others (not indexed yet) are read and compared as before,
so the index can make a search faster but never change its answer.

When a text key is one of the conjuncts of the whole program, no message
outside its answer's matches and uncovered messages can match, so
:func:`narrow` gives the scan just those (``SEARCH TEXT x`` on 100,000
messages then looks at the hits, not at every message's metadata).
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from typing import TYPE_CHECKING, Any

from twisted.internet import defer

from mailsrv.imap.uidmap import UidMap
from mailsrv.interfaces import IFullTextSearch, IMailbox, IMessage, TextMatches

if TYPE_CHECKING:
    from mailsrv.imap.searching import Predicate, SearchContent, _Context

__all__ = ["COMPILERS", "IndexedText", "narrow"]


class IndexedText:
    """One BODY or TEXT key's answer from the index (once asked)."""

    __slots__ = ("answer", "asked", "body_only", "needle")

    def __init__(self, needle: str, body_only: bool) -> None:
        self.needle = needle
        self.body_only = body_only
        self.asked = False
        self.answer: TextMatches | None = None

    def decide(self, uid: int) -> bool | None:
        """Whether message ``uid`` matches, None if the answer does not say."""
        answer = self.answer
        if answer is None or not answer.covers(uid):
            return None
        return uid in answer.matched

    @defer.inlineCallbacks
    def ask(self, mailbox: IMailbox) -> Generator[defer.Deferred[Any], Any, None]:
        """Ask the mailbox's index, once; a failure is a scan, not an error."""
        if self.asked:
            return
        self.asked = True
        if not IFullTextSearch.providedBy(mailbox):
            return
        try:
            self.answer = yield defer.maybeDeferred(
                IFullTextSearch(mailbox).search_text, self.needle, self.body_only
            )
        except Exception:
            self.answer = None

    def load(self, mailbox: IMailbox, pending: Sequence[object]) -> defer.Deferred[None]:
        """A search loader (:data:`mailsrv.imap.searching.Loader`)."""
        return self.ask(mailbox)


def _uncovered(ranges: Sequence[tuple[int, int]], answer: TextMatches) -> list[tuple[int, int]]:
    """The parts of the view's UID ``ranges`` outside ``answer.indexed``."""
    out: list[tuple[int, int]] = []
    indexed = answer.indexed
    i = 0
    for low, high in ranges:
        start = low
        while i < len(indexed) and indexed[i][1] < start:
            i += 1
        j = i
        while start <= high and j < len(indexed) and indexed[j][0] <= high:
            first, last = indexed[j]
            if first > start:
                out.append((start, first - 1))
            start = max(start, last + 1)
            j += 1
        if start <= high:
            out.append((start, high))
    return out


@defer.inlineCallbacks
def narrow(
    uid_map: UidMap, mailbox: IMailbox, keys: Sequence[IndexedText]
) -> Generator[defer.Deferred[Any], Any, list[tuple[int, int]] | None]:
    """``(seq, uid)`` of the only messages that can match, ascending, from
    the answers of ``keys`` (each a conjunct of the whole program); None
    when no key has an answer (every message is looked at)."""
    best: list[tuple[int, int]] | None = None
    for key in keys:
        yield key.ask(mailbox)
        answer = key.answer
        if answer is None:
            continue
        found: set[tuple[int, int]] = set()
        for uid in answer.matched:
            seq = uid_map.seq(uid)
            if seq is not None:
                found.add((seq, uid))
        for low, high in _uncovered(uid_map.ranges(), answer):
            found.update(uid_map.by_uid(low, high))
        if best is None or len(found) < len(best):
            best = sorted(found)
    return best


def _text_key(op: str, args: tuple[object, ...], context: _Context) -> Predicate:
    """BODY or TEXT (RFC 3501 6.4.4: a case-insensitive substring of the
    decoded body, or of the decoded header or body): the index decides the
    messages it covers, the others are read and compared here."""
    from mailsrv.imap.searching import needle_of

    context.program.text = True
    needle = needle_of(args[0], context.charset)
    indexed = IndexedText(needle, op == "BODY")
    context.program.texts[id(args)] = indexed
    if IFullTextSearch.providedBy(context.view.mailbox):
        # Without an index the pass would only test every message again.
        context.program.loaders[f"{op} {id(args)}"] = indexed.load
    decide = indexed.decide
    if op == "BODY":

        def body(seq: int, m: IMessage, c: SearchContent) -> bool | None:
            known = decide(m.uid)
            if known is not None:
                return known
            return None if c.body is None else needle in c.body

        return body

    def text(seq: int, m: IMessage, c: SearchContent) -> bool | None:
        known = decide(m.uid)
        if known is not None:
            return known
        if c.body is None or c.header is None:
            return None
        return needle in c.header or needle in c.body

    return text


#: Compilers in the form :mod:`mailsrv.imap.searching` takes, merged into its table.
COMPILERS: dict[str, Callable[[str, tuple[object, ...], _Context], Predicate]] = {
    "BODY": _text_key,
    "TEXT": _text_key,
}
