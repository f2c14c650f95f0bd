"""The IMAP commands, one module per command or small group.

Each module holds its commands' objects, parsers, rules and handlers and
declares them in a ``COMMANDS`` tuple of
:class:`~mailsrv.imap.registry.CommandSpec`.  Every module of this package
whose name does not start with ``_`` is loaded here, in name order, into
:data:`REGISTRY`: adding a command is adding a module (and its test).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterator

from mailsrv.imap.registry import CommandSpec, Registry

__all__ = ["REGISTRY"]


def _declared() -> Iterator[CommandSpec]:
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda info: info.name):
        if not info.name.startswith("_"):
            module = importlib.import_module(f"{__name__}.{info.name}")
            commands: tuple[CommandSpec, ...] = module.COMMANDS
            yield from commands


#: Every command the server offers.
REGISTRY = Registry(_declared())
