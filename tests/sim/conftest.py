"""Fixtures for the simulator's broker tests: a GatewaySim on a pinned, fast wall clock, real
ib_async clients connected to it, predictions from the same price process, and the check that
every message the simulator sent was decoded."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pytest
from ib_async import IB, Contract
from support.market import PINNED, never_disconnecting_ib

from gatewaysim import Faults, GatewaySim
from gatewaysim.instruments import Instrument, by_con_id
from gatewaysim.prices import PriceProcess, Quote

T = 5.0
SEED = 11
TICK_RATE = 4.0
SPEED = 8.0  # the simulator's day runs this many times faster than real time
TRADABLE = (265598, 272093, 756733)  # AAPL, MSFT, SPY
_IB_ERROR = re.compile(r"Error \d+, reqId -?\d+: ")


@dataclass(frozen=True)
class Crossing:
    """An order the market will not reach for a while, then reaches at a known tick."""

    ins: Instrument
    action: str
    price: float  # the limit (LMT) or stop (STP)
    tick: int  # the first tick at which the market reaches it
    quote: Quote  # the market at that tick


class BrokerRig:
    """A running simulator and what a test needs around it."""

    def __init__(self, sim: GatewaySim, clock: Callable[[], float], caplog: pytest.LogCaptureFixture) -> None:
        self.sim = sim
        self.clock = clock
        self.prices = PriceProcess(SEED, TICK_RATE)
        self._caplog = caplog
        self.clients: list[IB] = []

    async def connect(self, client_id: int, *, readonly: bool = False) -> IB:
        ib = never_disconnecting_ib()
        await ib.connectAsync("127.0.0.1", self.sim.port, clientId=client_id, timeout=T, readonly=readonly)
        self.clients.append(ib)
        return ib

    async def until(self, ib: IB, cond: Callable[[], bool], timeout: float = T) -> None:
        """Wait for a client-side condition, woken by each batch of messages ib_async handles."""
        deadline = time.monotonic() + timeout
        while not cond():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("client-side condition not met in time")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ib.updateEvent, remaining)

    async def gone(self, client_id: int) -> None:
        """The simulator has no session of this client id any more."""
        await self.sim.wait_until(lambda s: all(x.client_id != client_id for x in s.sessions), T)

    def now_tick(self) -> int:
        return self.prices.tick_index(int(self.clock() * 1e9))

    def crossing(self, order_type: str, *, lead: float = 1.5, horizon: float = 5.0) -> Crossing:
        """A limit (LMT) or stop (STP) the market will not reach within `lead` real seconds
        from now and will reach, first at a known tick, within `horizon` real seconds."""
        t0 = self.now_tick()
        n_lead = int(lead * SPEED * TICK_RATE)
        n_all = int(horizon * SPEED * TICK_RATE)
        for con_id in TRADABLE:
            quotes = [self.prices.quote(con_id, self.prices.tick_time_ns(t0 + i)) for i in range(n_all)]
            for action in ("BUY", "SELL"):
                # BUY LMT: fills once the ask falls to it; SELL LMT: once the bid rises to it;
                # BUY STP: triggers once the last rises to it; SELL STP: once the last falls to it.
                if order_type == "LMT":
                    side = [q.ask for q in quotes] if action == "BUY" else [-q.bid for q in quotes]
                else:
                    side = [-q.last for q in quotes] if action == "BUY" else [q.last for q in quotes]
                floor = min(side[:n_lead])
                for i in range(n_lead, n_all):
                    if side[i] < floor:
                        return Crossing(by_con_id(con_id), action, abs(side[i]), t0 + i, quotes[i])
        raise AssertionError("the price process crosses nothing in the horizon: widen it")

    def dropped(self) -> list[str]:
        """What ib_async's decoder or wrapper could not use: a message dropped or unmatched.
        Errors the simulator sent on purpose ("Error <code>, reqId ...") are checked through
        errorEvent by the tests instead."""
        records = self._caplog.get_records("call") + self._caplog.records  # the test, this phase
        return [
            f"{r.name}: {r.getMessage()}"
            for r in records
            if r.levelno >= logging.ERROR
            and (
                r.name == "ib_async.Decoder"
                or (r.name == "ib_async.wrapper" and not _IB_ERROR.match(r.getMessage()))
            )
        ]


async def received(ib: IB, predicate: Callable[[], bool], timeout: float = T) -> None:
    """Wait for a condition on what `ib` has received, woken by each of its reads."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await ib.updateEvent


def contract_of(ins: Instrument) -> Contract:
    """The contract a trader sends after qualifying (conId plus the routing fields)."""
    return Contract(
        conId=ins.con_id, symbol=ins.symbol, secType=ins.sec_type, exchange="SMART", currency=ins.currency
    )


@pytest.fixture
def log_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """ib_async's warnings and errors, for `support.market.dropped_messages`."""
    caplog.set_level(logging.WARNING, logger="ib_async")
    return caplog.records


@pytest.fixture
def rig_faults() -> Faults:
    """What the rig's simulator starts with; a test overrides it with its own fixture."""
    return Faults()


@pytest.fixture
async def rig(caplog: pytest.LogCaptureFixture, rig_faults: Faults) -> AsyncIterator[BrokerRig]:
    """Needs the asyncio backend (ib_async): mark the test module accordingly."""
    caplog.set_level(logging.INFO, logger="ib_async")
    t0 = time.monotonic()

    def clock() -> float:
        return PINNED + (time.monotonic() - t0) * SPEED

    async with GatewaySim(seed=SEED, tick_rate=TICK_RATE, wall=clock, faults=rig_faults) as sim:
        r = BrokerRig(sim, clock, caplog)
        yield r
        assert r.dropped() == []
