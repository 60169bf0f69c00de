"""Fixtures shared by the manager tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from support.manager import RECOVERIES


@pytest.fixture(scope="module", autouse=False)
def report_recoveries(request: pytest.FixtureRequest) -> Iterator[None]:
    """Print the recovery times measured by a module's tests at its end."""
    start = len(RECOVERIES)
    yield
    tr = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    rows = RECOVERIES[start:]
    if tr is None or capture is None or not rows:
        return
    with capture.global_and_fixture_disabled():
        tr.write_line("")
        tr.write_line(f"recovery times ({request.module.__name__}):")
        for name, what, secs in rows:
            tr.write_line(f"  {secs:7.3f} s  {what:<42} {name}")
