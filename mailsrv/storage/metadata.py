"""What every backend's :class:`~mailsrv.interfaces.IMetadataStore` shares.

The merge rule (all changes or none, the entry limit checked on the
result) and the on-disk form Maildir keeps beside each folder: a small
JSON object, entry name -> value, the value as text where it is UTF-8 and
as ``{"base64": ...}`` where it is not (RFC 5464 3.2 allows binary values).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping

from mailsrv.errors import MetadataTooMany, StorageError

__all__ = ["decode_entries", "encode_entries", "merged"]


def merged(
    current: Mapping[str, bytes], changes: Mapping[str, bytes | None], max_entries: int
) -> dict[str, bytes]:
    """``current`` with ``changes`` applied (``None`` removes an entry).

    Raises :class:`MetadataTooMany` when the result would hold more than
    ``max_entries`` entries and the changes add one: removing or replacing
    entries of a mailbox already over a lowered limit is still allowed.
    """
    result = dict(current)
    for name, value in changes.items():
        if value is None:
            result.pop(name, None)
        else:
            result[name] = value
    if len(result) > max_entries and len(result) > len(current):
        raise MetadataTooMany(f"a mailbox holds at most {max_entries} annotations")
    return result


def encode_entries(entries: Mapping[str, bytes]) -> bytes:
    """The file form of ``entries``."""
    table: dict[str, str | dict[str, str]] = {}
    for name in sorted(entries):
        value = entries[name]
        try:
            table[name] = value.decode("utf-8")
        except UnicodeDecodeError:
            table[name] = {"base64": base64.b64encode(value).decode("ascii")}
    return json.dumps(table, ensure_ascii=False, indent=1).encode("utf-8") + b"\n"


def decode_entries(data: bytes, where: str) -> dict[str, bytes]:
    """Read :func:`encode_entries`'s form; a damaged file is a StorageError
    naming ``where`` rather than entries silently lost."""
    try:
        table = json.loads(data.decode("utf-8"))
        if not isinstance(table, dict):
            raise ValueError("not an object")
        entries: dict[str, bytes] = {}
        for name, value in table.items():
            if isinstance(value, str):
                entries[name] = value.encode("utf-8")
            elif isinstance(value, dict) and isinstance(value.get("base64"), str):
                entries[name] = base64.b64decode(value["base64"], validate=True)
            else:
                raise ValueError(f"entry {name!r} has no value")
    except ValueError as e:
        raise StorageError(f"{where}: unreadable annotations: {e}") from None
    return entries
