import pytest


@pytest.fixture
def mailsrv_options():
    """A whole directory's defaults, by overriding the plugin's fixture."""
    return {"storage": "maildir"}


def pytest_sessionfinish(session, exitstatus):
    import threading

    leftover = [t.name for t in threading.enumerate() if "mailsrv" in t.name]
    assert not leftover, leftover
