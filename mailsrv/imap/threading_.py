"""THREAD's algorithms (RFC 5256): ORDEREDSUBJECT, REFERENCES and REFS.

Pure: each takes the matching messages in mailbox order as
:class:`Message` values (number to report, sent date, THREAD's keys) and
gives the threads as a tree of :class:`Node`; :func:`render` writes the
THREAD response's data.  Nothing recurses: a reply chain thousands deep
costs no Python stack.

``REFS`` is the algorithm of the expired draft-ietf-morg-inthread that
Dovecot offers as ``THREAD=REFS``: REFERENCES' links without its subject
merging (steps 1 to 3), every set of siblings sorted by sent date, and the
threads ordered by their most recent message, oldest thread first (equal
dates: a thread whose top message is missing first, then by the top's
number, as Dovecot orders them).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence

__all__ = ["ALGORITHMS", "Message", "Node", "ordered_subject", "references", "render"]

ALGORITHMS = ("ORDEREDSUBJECT", "REFERENCES", "REFS")


class Message:
    """One matching message: ``number`` is what the response names (a
    sequence number or a UID); ``seq`` breaks ties (RFC 5256 2.2); the rest
    is its sort record's part THREAD needs (subject casemapped, msg-ids
    normalised).  A plain slotted class: THREAD makes one per match."""

    __slots__ = ("date", "key", "message_id", "number", "references", "reply", "seq", "subject")

    def __init__(
        self,
        number: int,
        seq: int,
        date: float,
        subject: str,
        message_id: str = "",
        references: tuple[str, ...] = (),
        reply: bool = False,
    ) -> None:
        self.number = number
        self.seq = seq
        self.date = date
        self.subject = subject
        self.message_id = message_id
        self.references = references
        self.reply = reply
        #: What siblings and threads are ordered by: sent date, then number.
        self.key = (date, seq)


class Node:
    """A message in a thread tree, or a dummy (``message`` None)."""

    __slots__ = ("children", "message", "parent")

    def __init__(self, message: Message | None = None) -> None:
        self.message = message
        self.parent: Node | None = None
        self.children: list[Node] = []

    def sort_key(self) -> tuple[float, int]:
        """Sent date then sequence number; a dummy's is its first child's
        (RFC 5256 REFERENCES steps 4 and 6)."""
        node = self
        while node.message is None:
            if not node.children:
                return (0.0, 0)
            node = node.children[0]
        return node.message.key

    def subject(self) -> str:
        """The thread subject: the base subject of the message, or of a
        dummy's first child (step 5.B.i)."""
        node = self
        while node.message is None:
            if not node.children:
                return ""
            node = node.children[0]
        return node.message.subject

    def is_reply(self) -> bool:
        return self.message is not None and self.message.reply


# ---------------------------------------------------------------------------
# ORDEREDSUBJECT
# ---------------------------------------------------------------------------


def ordered_subject(messages: Sequence[Message]) -> list[Node]:
    """Group by base subject, each group in sent-date order under its first
    message; groups ordered by their first message's date."""
    ordered = sorted(messages, key=lambda m: (m.subject, m.date, m.seq))
    threads: list[Node] = []
    for _subject, group in _group_by_subject(ordered):
        root = Node(group[0])
        for message in group[1:]:
            child = Node(message)
            child.parent = root
            root.children.append(child)
        threads.append(root)
    threads.sort(key=Node.sort_key)
    return threads


def _group_by_subject(ordered: Sequence[Message]) -> Iterator[tuple[str, list[Message]]]:
    group: list[Message] = []
    for message in ordered:
        if group and group[0].subject != message.subject:
            yield group[0].subject, group
            group = []
        group.append(message)
    if group:
        yield group[0].subject, group


# ---------------------------------------------------------------------------
# REFERENCES
# ---------------------------------------------------------------------------


def _is_ancestor(candidate: Node, node: Node) -> bool:
    """``candidate`` is ``node`` or one of its ancestors."""
    current: Node | None = node
    while current is not None:
        if current is candidate:
            return True
        current = current.parent
    return False


def _unlink(node: Node) -> None:
    if node.parent is not None:
        node.parent.children.remove(node)
        node.parent = None


def _link(parent: Node, child: Node) -> None:
    child.parent = parent
    parent.children.append(child)


def _build(messages: Sequence[Message]) -> tuple[list[Node], list[Node]]:
    """Steps 1 and 2: link by msg-ids; the nodes without a parent, and
    the dummies."""
    by_id: dict[str, Node] = {}
    nodes: list[Node] = []

    def node_of(message_id: str) -> Node:
        node = by_id.get(message_id)
        if node is None:
            node = by_id[message_id] = Node()  # a dummy until its message comes
            nodes.append(node)
        return node

    for message in messages:
        own = by_id.get(message.message_id) if message.message_id else None
        if own is not None and own.message is None:
            own.message = message
        else:
            # No Message-ID, or a duplicate of an earlier message's: a
            # unique one (step 1.A).
            own = Node(message)
            nodes.append(own)
            if message.message_id:
                by_id.setdefault(message.message_id, own)
        chain = [node_of(ref) for ref in message.references]
        for parent, child in itertools.pairwise(chain):
            # Step 1.A: keep existing links; never make a loop.
            if child.parent is None and not _is_ancestor(child, parent):
                _link(parent, child)
        # Step 1.B: the last reference is the parent, whatever was before.
        _unlink(own)
        if chain and not _is_ancestor(own, chain[-1]):
            _link(chain[-1], own)
    roots = [node for node in nodes if node.parent is None]
    return roots, [node for node in nodes if node.message is None]


def _depths(nodes: Iterable[Node]) -> dict[int, int]:
    """Each node's number of ancestors, by ``id``; every node is walked
    up once at most, however deep the chains."""
    depth: dict[int, int] = {}
    for node in nodes:
        path: list[Node] = []
        current: Node | None = node
        while current is not None and id(current) not in depth:
            path.append(current)
            current = current.parent
        known = -1 if current is None else depth[id(current)]
        for step in reversed(path):
            known += 1
            depth[id(step)] = known
    return depth


def _prune(roots: list[Node], dummies: list[Node]) -> list[Node]:
    """Step 3: dummies go; their children move up a level, into the
    dummy's place, but to the root only when there is just one.  Only the
    dummies are visited, the deepest first, so children are pruned before
    their parent."""
    depth = _depths(dummies)
    for dummy in sorted(dummies, key=lambda node: depth[id(node)], reverse=True):
        parent = dummy.parent
        if parent is None:
            continue  # a root: below
        siblings = parent.children
        position = siblings.index(dummy)
        for child in dummy.children:
            child.parent = parent
        siblings[position : position + 1] = dummy.children
        dummy.parent = None
        dummy.children = []
    pruned: list[Node] = []
    for root in roots:
        if root.message is None:
            if not root.children:
                continue
            if len(root.children) == 1:
                only = root.children[0]
                only.parent = None
                pruned.append(only)
                continue
        pruned.append(root)
    return pruned


def _walk(roots: Iterable[Node]) -> Iterator[Node]:
    stack = list(roots)
    while stack:
        node = stack.pop()
        yield node
        stack.extend(node.children)


def _sort_siblings(roots: list[Node]) -> None:
    """Step 6: every set of siblings by sent date, the deepest first (a
    dummy is sorted by its first child, so children come first)."""
    _sort_siblings_below(roots)
    roots.sort(key=Node.sort_key)


def _merge_subjects(roots: list[Node]) -> list[Node]:
    """Step 5: threads with the same base subject gathered together."""
    table: dict[str, Node] = {}
    for node in roots:
        message = node.message
        subject = node.subject() if message is None else message.subject
        if not subject:
            continue
        held = table.get(subject)
        if held is None or (
            held.message is not None
            and (node.message is None or (held.is_reply() and not node.is_reply()))
        ):
            table[subject] = node
    out: list[Node] = []
    #: Roots later in the list that a merge replaced by a new dummy.
    replaced: dict[int, Node] = {}
    where: dict[int, int] = {}  # id(root) -> its index in ``out``
    for node in roots:
        node = replaced.pop(id(node), node)
        subject = node.subject()
        held = table.get(subject) if subject else None
        if held is None or held is node:
            where[id(node)] = len(out)
            out.append(node)
            continue
        if held.message is None and node.message is None:
            for child in list(node.children):
                _link(held, child)
            node.children = []
        elif held.message is None or (node.is_reply() and not held.is_reply()):
            _link(held, node)
        else:
            # Neither goes under the other: a new dummy takes the held
            # message's place among the roots, both its children.
            dummy = Node()
            position = where.pop(id(held), None)
            if position is None:
                replaced[id(held)] = dummy
            else:
                out[position] = dummy
                where[id(dummy)] = position
            _link(dummy, held)
            _link(dummy, node)
            table[subject] = dummy
    return out


def references(messages: Sequence[Message], merge_subjects: bool = True) -> list[Node]:
    """RFC 5256 REFERENCES (``merge_subjects`` False: REFS's links)."""
    roots, dummies = _build(messages)
    if not merge_subjects:
        # REFS: threads by their newest message; between equal dates the
        # thread whose top is missing (a dummy) first, then by the top's
        # number, as Dovecot orders them.
        order = {id(root): _newest(root) for root in roots}
        roots.sort(key=lambda root: order[id(root)])
        roots = _prune(roots, dummies)
        for root in roots:
            root.parent = None
        _sort_siblings_below(roots)
        return roots
    roots = _prune(roots, dummies)
    for root in roots:
        root.parent = None
    # Step 4: the roots by date, a dummy by its first child once sorted.
    for root in roots:
        if root.message is None:
            root.children.sort(key=Node.sort_key)
    roots.sort(key=Node.sort_key)
    roots = _merge_subjects(roots)
    _sort_siblings(roots)
    return roots


def _newest(root: Node) -> tuple[float, int]:
    newest = max((n.message.date for n in _walk([root]) if n.message is not None), default=0.0)
    return (newest, 0 if root.message is None else root.message.seq)


def _sort_siblings_below(roots: list[Node]) -> None:
    """Step 6 below the roots only (REFS keeps its own order of threads)."""
    # Parents before children in ``nodes``, so children are sorted first
    # when it is walked backwards; only nodes with siblings to order.
    nodes: list[Node] = []
    stack = list(roots)
    while stack:
        node = stack.pop()
        children = node.children
        if children:
            if len(children) > 1:
                nodes.append(node)
            stack.extend(children)
    for node in reversed(nodes):
        node.children.sort(key=Node.sort_key)


# ---------------------------------------------------------------------------
# The response
# ---------------------------------------------------------------------------


def render(threads: Sequence[Node]) -> bytes:
    """The THREAD response's data (RFC 5256 5, ``1*thread-list``): each
    thread in parentheses; a message's only child follows it after a
    space, several children each in their own parentheses."""
    out: list[bytes] = []
    # Work items: a node to write, or a literal piece of output.
    stack: list[Node | bytes] = []
    for thread in reversed(threads):
        stack.append(b")")
        stack.append(thread)
        stack.append(b"(")
    while stack:
        item = stack.pop()
        if isinstance(item, bytes):
            out.append(item)
            continue
        node = item
        if node.message is not None:
            out.append(b"%d" % node.message.number)
            if len(node.children) == 1:
                stack.append(node.children[0])
                stack.append(b" ")
                continue
            if node.children:
                for child in reversed(node.children):
                    stack.append(b")")
                    stack.append(child)
                    stack.append(b"(")
                stack.append(b" ")
            continue
        # A dummy: its children as sub-threads.
        for child in reversed(node.children):
            stack.append(b")")
            stack.append(child)
            stack.append(b"(")
    return b"".join(out)
