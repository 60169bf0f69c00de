"""Helpers for the data tests: the simulator in a thread on a pinned wall clock (a Wednesday in
regular trading hours), a real `python -m worker` connected to it over TCP, and predictions from
the same seeded price process the simulator quotes from. Fixtures: tests/data/conftest.py."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from gatewaysim.market import Market
from gatewaysim.prices import NS, PriceProcess, Quote
from gatewaysim.threaded import ThreadedSim
from support.worker_process import WorkerProcess

SEED = 5
TICK_RATE = 20.0  # quotes every 50 ms: a few seconds give plenty
ACCOUNT = "DU1234567"
CLIENT_ID = 7
AAPL, MSFT = 265598, 272093


class DataSim:
    """The simulator, its market and clock, and what it will quote."""

    def __init__(self, sim: ThreadedSim, clock: Callable[[], float]) -> None:
        self.sim = sim
        self.clock = clock
        self.prices = PriceProcess(SEED, TICK_RATE)

    @property
    def port(self) -> int:
        return self.sim.port

    def market(self, fn: Callable[[Market], Any]) -> Any:
        """Run fn(market) on the simulator's loop."""
        return self.sim.run(lambda: fn(self.sim.sim.component(Market)))

    def market_snapshot(self) -> dict[str, Any]:
        return self.market(lambda m: m.snapshot())  # type: ignore[no-any-return]

    def errors_sent(self, code: int) -> int:
        return int(self.market_snapshot()["counters"]["errors"].get(code, 0))

    def now_tick(self, delay_s: float = 0.0) -> int:
        return self.prices.tick_index(round((self.clock() - delay_s) * NS))

    def quotes_by_fields(self, con_id: int, first: int, last: int) -> dict[tuple[Any, ...], int]:
        """Quote fields -> tick index, for ticks first..last (later ticks win a tie)."""
        out = {}
        for tick in range(first, last + 1):
            out[quote_fields(self.prices.quote(con_id, self.prices.tick_time_ns(tick)))] = tick
        return out


def quote_fields(q: Quote) -> tuple[Any, ...]:
    return (q.bid, q.ask, q.last, q.bid_size, q.ask_size, q.last_size, q.volume)


def event_fields(data: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(data[k] for k in ("bid", "ask", "last", "bid_size", "ask_size", "last_size", "volume"))


def start_worker(
    dsim: DataSim, *, env: dict[str, str] | None = None, client_id: int = CLIENT_ID
) -> WorkerProcess:
    """A worker connected to the simulator (`env`: variables added to ours). At EOF it exits at
    once: the simulator does not punish a fast close, so the tests need not linger."""
    w = WorkerProcess(label="test-data", env={**os.environ, "IBGW_WORKER_MIN_SESSION": "0", **(env or {})})
    w.wait_ready()
    resp = w.connect(dsim.port, client_id)
    assert resp.ok, (resp, w.stderr_text())
    return w
