"""Helpers for the simulator's market tests: a GatewaySim on a pinned, optionally fast clock,
the real ib_async client connected to it, and the check that every message decoded."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from zoneinfo import ZoneInfo

from ib_async import IB

from gatewaysim import GatewaySim
from gatewaysim.market import Market

# A Wednesday at 11:00 New York time: regular trading hours, so every kind of bar exists.
PINNED = dt.datetime(2026, 11, 25, 11, 0, tzinfo=ZoneInfo("US/Eastern")).timestamp()
T = 5.0


def never_disconnecting_ib() -> IB:
    """Sessions here end when the simulator closes them (the project never calls disconnect)."""
    ib = IB()
    ib.disconnect = lambda *a, **k: None  # type: ignore[method-assign]
    ib.client.disconnect = lambda *a, **k: None  # type: ignore[method-assign]
    return ib


class MarketRig:
    """A running simulator, its Market, and one connected ib_async client."""

    def __init__(self, sim: GatewaySim, ib: IB, clock: Callable[[], float]) -> None:
        self.sim = sim
        self.ib = ib
        self.clock = clock
        self.market = sim.component(Market)
        self.errors: list[tuple[int, int, str]] = []
        ib.errorEvent += lambda req_id, code, msg, contract: self.errors.append((req_id, code, msg))

    def codes(self) -> list[int]:
        return [code for _, code, _ in self.errors]

    async def wait(self, predicate: Callable[[], bool], timeout: float = T) -> None:
        """Wait for a condition on the simulator, woken by each of its state changes."""
        await self.sim.wait_until(lambda _: predicate(), timeout)

    async def until(self, predicate: Callable[[], bool], timeout: float = T) -> None:
        """Wait for a condition on what the client has received, woken by each of its reads."""
        async with asyncio.timeout(timeout):
            while not predicate():
                await self.ib.updateEvent

    async def pumps(self, n: int) -> None:
        """Let the market's pump timer run n more times (synchronisation, not a sleep)."""
        target = self.market.counters.pumps + n
        await self.wait(lambda: self.market.counters.pumps >= target)


def dropped_messages(records: list[logging.LogRecord], cancelled: tuple[int, ...] = ()) -> list[str]:
    """Every ib_async log record that means a message was dropped or not understood. Error
    messages the simulator sent on purpose ("Error <code>, reqId ...") are checked through
    errorEvent instead; ticks in flight when the client cancelled a reqId are no decode failure."""
    bad = []
    for r in records:
        if not r.name.startswith("ib_async") or r.levelno < logging.ERROR:
            continue
        msg = r.getMessage()
        if r.name == "ib_async.wrapper" and re.match(r"Error \d+, reqId -?\d+: ", msg):
            continue
        m = re.search(r"Unknown reqId: (-?\d+)", msg)
        if m and int(m.group(1)) in cancelled:
            continue
        bad.append(f"{r.name}: {msg}")
    return bad


@asynccontextmanager
async def market_rig(
    *, tick_rate: float = 20.0, speed: float = 1.0, seed: int = 7
) -> AsyncIterator[MarketRig]:
    """The simulator with its wall clock pinned to PINNED, running `speed` times real time."""
    t0 = time.monotonic()

    def clock() -> float:
        return PINNED + (time.monotonic() - t0) * speed

    async with GatewaySim(seed=seed, tick_rate=tick_rate, wall=clock) as sim:
        ib = never_disconnecting_ib()
        await ib.connectAsync("127.0.0.1", sim.port, clientId=1, timeout=T)
        yield MarketRig(sim, ib, clock)
