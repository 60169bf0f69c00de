"""Fixtures shared by the manager tests."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.manager import FAKE_WORKER, RECOVERIES


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


@pytest.fixture
def fake_argv(tmp_path: Path) -> list[str]:
    """argv of a scripted worker (support.manager.FAKE_WORKER): no ib_async, starts in ms."""
    script = tmp_path / "fake_worker.py"
    script.write_text(FAKE_WORKER)
    return [sys.executable, str(script)]
