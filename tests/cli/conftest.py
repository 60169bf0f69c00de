"""Fixtures for the CLI tests that run `ibgw run` against the simulator."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from support.cli import Run

from gatewaysim import ThreadedSim, running_in_thread


@pytest.fixture
def sim() -> Iterator[ThreadedSim]:
    with running_in_thread() as s:
        yield s


@pytest.fixture
def runs() -> Iterator[list[Run]]:
    """`ibgw run` processes a test started: killed at the end if still running, so a failing
    test does not leave a manager (and its worker) behind."""
    started: list[Run] = []
    yield started
    for r in started:
        r.kill()
