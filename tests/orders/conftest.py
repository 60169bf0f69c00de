"""Fixtures for the order tests: the simulator's broker on a pinned, fast clock in a thread, and
real workers (ib_async in a subprocess) connected to it read-write."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from support.market import PINNED
from support.orders import SPEED, OrderWorker

from gatewaysim.threaded import ThreadedSim, running_in_thread


@pytest.fixture
def sim() -> Iterator[ThreadedSim]:
    """The simulator on a trading-day clock running SPEED times faster than real time."""
    t0 = time.monotonic()
    with running_in_thread(
        seed=11, tick_rate=4.0, wall=lambda: PINNED + (time.monotonic() - t0) * SPEED
    ) as s:
        yield s


@pytest.fixture
def worker(sim: ThreadedSim) -> Iterator[OrderWorker]:
    """A worker connected read-write as client id 7."""
    with OrderWorker(label="test-orders") as w:
        w.wait_ready()
        w.connect_rw(sim.port, 7)
        yield w
