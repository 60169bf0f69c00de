"""Fixtures for the data tests (helpers in support.data)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from support.data import ACCOUNT, SEED, TICK_RATE, DataSim, start_worker
from support.market import PINNED
from support.worker_process import WorkerProcess

from gatewaysim.threaded import running_in_thread


@pytest.fixture
def sim_speed() -> float:
    """How many times real time the simulator's day runs (parametrize to change)."""
    return 1.0


@pytest.fixture
def dsim(sim_speed: float) -> Iterator[DataSim]:
    t0 = time.monotonic()

    def clock() -> float:
        return PINNED + (time.monotonic() - t0) * sim_speed

    with running_in_thread(accounts=(ACCOUNT,), seed=SEED, tick_rate=TICK_RATE, wall=clock) as sim:
        yield DataSim(sim, clock)


@pytest.fixture
def worker(dsim: DataSim) -> Iterator[WorkerProcess]:
    w = start_worker(dsim)
    with w:
        yield w
