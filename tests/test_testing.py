"""mailsrv.testing works from a plain ``pip install``, as docs/embedding.md says."""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import sysconfig

from twisted.trial import unittest

from mailsrv.testing.storage import StorageSuiteMixin
from tests.helpers import ROOT, clean_env
from tests.test_pytest_plugin import run_client_project

#: What a source distribution of mailsrv is made of.
_SOURCES = ("pyproject.toml", "setup.cfg", "README.md", "LICENSE", "mailsrv", "twisted")


def _installed_plainly() -> bool:
    """Whether this environment has mailsrv installed as files, with the
    suite among them (CI's venv: ``pip install .``), rather than as an
    editable link to the checkout."""
    try:
        files = importlib.metadata.files("mailsrv")
    except importlib.metadata.PackageNotFoundError:
        return False
    if files is None:
        return False
    # An editable install's egg-info in the checkout lists the sources too:
    # the file must be installed somewhere else than the checkout's own.
    source = os.path.realpath(os.path.join(ROOT, "mailsrv", "testing", "storage", "__init__.py"))
    return any(
        str(f) == "mailsrv/testing/storage/__init__.py"
        and os.path.realpath(str(f.locate())) != source
        for f in files
    )


def _example() -> str:
    """docs/embedding.md's suite example, for the in-memory storage."""
    with open(os.path.join(ROOT, "docs", "embedding.md"), encoding="utf-8") as handle:
        blocks = re.findall(r"```python\n(.*?)```", handle.read(), re.S)
    (block,) = [b for b in blocks if "StorageSuiteMixin" in b]
    assert "MyStorage(...)" in block, block
    code: str = block.replace("MyStorage(...)", "MemoryStorage()")
    return "from mailsrv.storage.memory import MemoryStorage\n" + code


class InstalledSuiteTests(unittest.TestCase):
    #: The fresh venv's Python, made once for the class's tests.
    _fresh_python: str | None = None

    def run_program(self, *command: str, cwd: str | None = None) -> str:
        result = subprocess.run(
            command, cwd=cwd, env=clean_env(), capture_output=True, text=True, timeout=300
        )
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        return result.stdout

    def installed_python(self) -> str:
        """This environment's Python when mailsrv is plainly installed in it
        (CI), else a fresh venv's (made once per run)."""
        if _installed_plainly():
            return sys.executable
        if InstalledSuiteTests._fresh_python is None:
            InstalledSuiteTests._fresh_python = self.fresh_venv()
        return InstalledSuiteTests._fresh_python

    def fresh_venv(self) -> str:
        """The Python of a new venv with this checkout pip-installed (not
        editable, as .ci/run installs it).  Its dependencies are this
        environment's, through a .pth naming its site-packages: nothing is
        downloaded, and that directory's own .pth files (an editable
        mailsrv's) are not run."""
        base = os.path.abspath(self.mktemp())
        venv = os.path.join(base, "venv")
        self.run_program(sys.executable, "-m", "venv", "--without-pip", venv)
        python = os.path.join(venv, "bin", "python")
        site = self.run_program(
            python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"
        ).strip()
        paths = dict.fromkeys(sysconfig.get_paths()[key] for key in ("purelib", "platlib"))
        with open(os.path.join(site, "mailsrv-test-dependencies.pth"), "w") as handle:
            handle.write("".join(f"{path}\n" for path in paths))
        # Built from a copy: building in the checkout would leave build/ there.
        source = os.path.join(base, "source")
        os.makedirs(source)
        for name in _SOURCES:
            path = os.path.join(ROOT, name)
            if os.path.isdir(path):
                ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "dropin.cache")
                shutil.copytree(path, os.path.join(source, name), ignore=ignore)
            else:
                shutil.copy(path, source)
        self.run_program(
            sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "-q", source
        )
        return python

    def test_suite_runs_from_an_installed_mailsrv(self) -> None:
        """docs/embedding.md's example, as a test module of another project:
        trial runs it from a directory unrelated to the checkout, importing
        an installed mailsrv (this environment's when it is a plain install,
        as in CI; else a fresh venv's), and every test of the suite runs."""
        python = self.installed_python()
        work = os.path.abspath(self.mktemp())
        os.makedirs(work)
        with open(os.path.join(work, "test_mystorage.py"), "w") as handle:
            handle.write(_example())
        where = self.run_program(
            python, "-c", "import mailsrv.testing.storage as m; print(m.__file__)", cwd=work
        ).strip()
        self.assertNotEqual(
            os.path.realpath(where),
            os.path.realpath(os.path.join(ROOT, "mailsrv", "testing", "storage", "__init__.py")),
        )
        output = self.run_program(python, "-m", "twisted.trial", "test_mystorage", cwd=work)
        count = len([name for name in dir(StorageSuiteMixin) if name.startswith("test_")])
        self.assertIn(f"Ran {count} tests", output)
        # The example defines neither deliver_outside (two tests need a writer
        # outside the storage object) nor forget_expunges: each skip says why.
        self.assertRegex(output, r"PASSED \(skips=3, successes=\d+\)")
        self.assertIn("defines no deliver_outside", output)
        self.assertIn("defines no forget_expunges", output)

    def test_pytest_plugin_from_an_installed_mailsrv(self) -> None:
        """A client project's pytest file that only uses the plugin's
        fixtures passes against an installed mailsrv (``pip install
        mailsrv[test]``: pytest comes with the extra), with no checkout on
        the path."""
        python = self.installed_python()
        where = self.run_program(
            python, "-c", "import mailsrv.testing.server as m; print(m.__file__)", cwd="/"
        ).strip()
        self.assertNotEqual(
            os.path.realpath(where),
            os.path.realpath(os.path.join(ROOT, "mailsrv", "testing", "server.py")),
        )
        output = run_client_project(self, python)
        self.assertRegex(output, r"\b4 passed\b")
