"""The pytest plugin, as a client project uses it: pytest run on another
project's test files (tests/plugin_project) from outside this checkout."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from twisted.trial import unittest

from tests.helpers import ROOT, clean_env

PROJECT = os.path.join(ROOT, "tests", "plugin_project")


def run_client_project(test: unittest.TestCase, python: str) -> str:
    """Copy the client project out of the checkout and run pytest on it
    with ``python``; its output (the run must pass)."""
    work = os.path.abspath(test.mktemp())
    shutil.copytree(PROJECT, work, ignore=shutil.ignore_patterns("__pycache__"))
    result = subprocess.run(
        [python, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=work,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    test.assertEqual(result.returncode, 0, result.stdout + result.stderr)
    return result.stdout


class PluginTests(unittest.TestCase):
    def test_fixtures_marker_and_options(self) -> None:
        output = run_client_project(self, sys.executable)
        self.assertRegex(output, r"\b4 passed\b")

    def test_plugin_is_registered_by_the_distribution(self) -> None:
        import importlib.metadata

        points = importlib.metadata.entry_points(group="pytest11")
        self.assertIn("mailsrv.testing.pytest_plugin", [p.value for p in points])

    def test_loading_the_plugin_imports_no_server(self) -> None:
        """pytest loads the plugin in every run where mailsrv is installed:
        it must not pull in the protocols until a fixture is used."""
        code = (
            "import sys, mailsrv.testing.pytest_plugin;"
            "print(sorted(m for m in sys.modules if m.startswith(('mailsrv.imap', 'twisted.mail',"
            " 'mailsrv.testing.server'))))"
        )
        result = subprocess.run(
            [sys.executable, "-c", code], env=clean_env(), capture_output=True, text=True
        )
        self.assertEqual(result.stdout.strip(), "[]", result.stderr)
