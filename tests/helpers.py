"""Shared helpers for tests that run programs the way users do."""

from __future__ import annotations

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def twistd_command() -> list[str]:
    """The ``twistd`` a user of this Python environment would run."""
    script = os.path.join(os.path.dirname(sys.executable), "twistd")
    if os.path.exists(script):
        return [script]
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def clean_env(**extra: str) -> dict[str, str]:
    """The environment of a user's shell: nothing pointing into this checkout."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.update(extra)
    return env


def source_env() -> dict[str, str]:
    """An environment that imports mailsrv (and its plugin) from this
    checkout first, so a daemon under test runs the code being tested."""
    return clean_env(PYTHONPATH=ROOT)
