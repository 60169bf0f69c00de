"""`m.stream()` end to end: a real manager, real worker processes, real ib_async, real TCP to
gatewaysim, on asyncio and trio.

One quote stream lives through a worker SIGKILL, a session drop, a Gateway restart, IB's
1100 -> 1101 and 1100 -> 1102: exactly one Gap for each, every quote the simulator's predicted
one, nothing repeated or out of order after resuming, re-subscribed after each new session and
after 1101 but not after 1102. And a consumer that reads nothing for a while never holds up the
manager or its probe: it loses conflated quotes and its oldest trades, counted.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest
from support.manager import fast_settings, poll_until
from support.market import PINNED

from fsm import BadRequest, Gap, GatewayError, NotConnected, Quote, Stream, Trade
from fsm.core import State
from fsm.manager import ConnectionManager
from gatewaysim import GatewaySim
from gatewaysim.market import Market, Quotes
from gatewaysim.prices import PriceProcess

pytestmark = pytest.mark.anyio

CID = 9
SEED = 3
TICK_RATE = 20.0
AAPL = 265598
T = 20.0  # s any one recovery may take on a loaded machine


@asynccontextmanager
async def running(
    tmp_path: Path, min_session: float = 0.4, **sim: Any
) -> AsyncIterator[tuple[GatewaySim, ConnectionManager]]:
    t0 = time.monotonic()

    def clock() -> float:
        return PINNED + (time.monotonic() - t0)

    async with (
        GatewaySim(seed=SEED, tick_rate=TICK_RATE, wall=clock, **sim) as gw,
        ConnectionManager(fast_settings(tmp_path, gw.port, CID, min_session=min_session)) as m,
    ):
        await m.wait_connected(T)
        yield gw, m


class Reader:
    """Reads a stream in its own task into `items` (a prompt consumer)."""

    def __init__(self, s: Stream) -> None:
        self.s = s
        self.items: list[Any] = []
        self.error: Exception | None = None

    async def run(self) -> None:
        async for e in self.s:
            self.items.append(e)

    def gaps(self) -> list[Gap]:
        return [e for e in self.items if isinstance(e, Gap)]

    def after_last_gap(self) -> list[Any]:
        idx = max((i for i, e in enumerate(self.items) if isinstance(e, Gap)), default=-1)
        return self.items[idx + 1 :]

    async def resumed(self, gaps: int, then: int = 3) -> None:
        """Until the n-th Gap has come, followed by `then` items."""
        await poll_until(
            lambda: len(self.gaps()) >= gaps and len(self.after_last_gap()) >= then, T, f"gap {gaps}"
        )
        assert len(self.gaps()) == gaps, self.gaps()


def quote_feeds(gw: GatewaySim) -> set[tuple[int, int]]:
    """The simulator's live reqMktData subscriptions (session id, request id)."""
    return {key for key, st in gw.component(Market).streams.items() if isinstance(st, Quotes)}


async def test_a_stream_lives_through_every_fault_with_one_gap_each(tmp_path: Path) -> None:
    async with running(tmp_path) as (gw, m), anyio.create_task_group() as tg:
        async with m.stream("quotes", symbol="AAPL") as s:
            r = Reader(s)
            tg.start_soon(r.run)
            assert s.contract is not None and s.contract.con_id == AAPL and not s.delayed
            await poll_until(lambda: len(r.items) >= 5, T, "first quotes")

            os.kill(m.worker_pid or 0, signal.SIGKILL)  # 1: the worker dies
            await r.resumed(1)
            gw.drop_all()  # 2: the Gateway closes the session
            await r.resumed(2)
            gw.restart()  # 3: the Gateway restarts
            await r.resumed(3)
            before = quote_feeds(gw)
            gw.connectivity_lost()  # 4: IB unreachable, then back with the data lost
            await m.wait_for(State.DEGRADED_RED, T)
            gw.connectivity_restored(True)
            await r.resumed(4)
            after_1101 = quote_feeds(gw)
            assert after_1101 and after_1101 != before  # requested again, in the same session
            gw.connectivity_lost()  # 5: and back with the data kept
            await m.wait_for(State.DEGRADED_RED, T)
            gw.connectivity_restored(False)
            await r.resumed(5)
            assert quote_feeds(gw) == after_1101  # 1102: the same subscription, not sent again
            assert (s.gaps, s.restored, s.dropped) == (5, 4, 0)
            metrics = m.metrics()
            assert (metrics["streams_open"], metrics["streams_restored"], metrics["stream_gaps"]) == (1, 4, 5)
            assert metrics["longest_gap_s"] == max((g.until - g.since).total_seconds() for g in r.gaps())
        tg.cancel_scope.cancel()

    gaps = r.gaps()
    assert [g.reason for g in gaps] == [
        "worker_exited",
        "peer_closed",
        "peer_closed",
        "connectivity_lost",
        "connectivity_lost",
    ]
    quotes = [e for e in r.items if isinstance(e, Quote)]
    times = [q.time for q in quotes]
    assert times == sorted(set(times))  # nothing repeated or out of order, across every gap
    for i, e in enumerate(r.items):
        if isinstance(e, Gap):
            assert r.items[i - 1].time == e.since and r.items[i + 1].time == e.until
    prices = PriceProcess(SEED, TICK_RATE)
    first = prices.tick_index(int(PINNED * 1e9))
    last = prices.tick_index(int((PINNED + 120) * 1e9))
    ticks: list[int] = []
    for q in quotes:  # each the simulator's quote at a later tick (right after a gap: maybe the same)
        fields = (q.bid, q.ask, q.last, q.bid_size, q.ask_size, q.last_size, q.volume)
        after_gap = r.items[r.items.index(q) - 1].__class__ is Gap
        start = ticks[-1] + (0 if after_gap else 1) if ticks else first
        tick = next((t for t in range(start, last) if fields == _quote_fields(prices, t)), None)
        assert tick is not None, (q, ticks[-1:])
        ticks.append(tick)


def _quote_fields(prices: PriceProcess, tick: int) -> tuple[Any, ...]:
    q = prices.quote(AAPL, prices.tick_time_ns(tick))
    return (q.bid, q.ask, q.last, q.bid_size, q.ask_size, q.last_size, q.volume)


async def test_a_slow_consumer_never_blocks_the_probe_and_sees_what_it_lost(tmp_path: Path) -> None:
    async with (
        running(tmp_path) as (_, m),
        m.stream("quotes", symbol="AAPL") as quotes,
        m.stream("trades", symbol="MSFT", buffer=10) as trades,
    ):
        probes = m.metrics()["probes_sent"]
        connected_since = m.history[-1].at_ns
        # read nothing while the manager probes its session three more times
        await poll_until(lambda: m.metrics()["probes_sent"] >= probes + 3, T, "probes")
        await poll_until(lambda: quotes.dropped > 10 and trades.dropped > 0, T, "drops")
        assert m.state == State.CONNECTED and m.history[-1].at_ns == connected_since
        got = await _take(quotes, 1)
        assert isinstance(got[0], Quote)  # only the latest, conflated
        backlog = await _take(trades, 10)
        assert all(isinstance(t, Trade) for t in backlog)
        times = [t.time for t in backlog]
        assert times == sorted(times)  # the newest ten, oldest first
        assert (await m.request("positions"))["positions"]  # and requests go on as ever


async def _take(s: Stream, n: int) -> list[Any]:
    out = []
    with anyio.fail_after(5):
        async for e in s:
            out.append(e)
            if len(out) == n:
                break
    return out


async def test_a_stream_left_while_ib_is_unreachable_is_unsubscribed_when_it_is_back(tmp_path: Path) -> None:
    async with running(tmp_path) as (gw, m):
        async with m.stream("quotes", symbol="AAPL") as s:
            await _take(s, 1)
            assert quote_feeds(gw)
            gw.connectivity_lost()
            await m.wait_for(State.DEGRADED_RED, T)
        gw.connectivity_restored(False)  # 1102: the same session, its subscriptions kept
        await m.wait_connected(T)
        await gw.wait_until(lambda g: not quote_feeds(g), T)  # and ours cancelled there
        assert m.metrics()["streams_open"] == 0


async def test_a_stream_ends_at_shutdown_with_not_connected_and_no_gap(tmp_path: Path) -> None:
    # The shutdown waits out min_session with the session (and its market data) still up; then
    # the consumer's stream ends (NotConnected), with no Gap: no session follows a shutdown.
    async with running(tmp_path, min_session=3.0) as (_gw, m), m.stream("quotes", symbol="AAPL") as s:
        reader = Reader(s)
        with anyio.fail_after(T):  # a stream that outlived its manager would hang here
            async with anyio.create_task_group() as tg:
                tg.start_soon(_read_until_closed, reader)
                await poll_until(lambda: len(reader.items) >= 2, T, "two quotes")
                await m.shutdown()
        assert reader.gaps() == []
        assert isinstance(reader.error, NotConnected)


async def _read_until_closed(reader: Reader) -> None:
    try:
        await reader.run()
    except NotConnected as exc:
        reader.error = exc


async def test_the_data_commands_through_m_request(tmp_path: Path) -> None:
    async with running(tmp_path) as (_, m):
        ident = await m.request("qualify", symbol="AAPL")
        assert ident["con_id"] == AAPL
        bars = await m.request(
            "historical_bars", symbol="AAPL", bar_size="1 hour", duration="1 D", timeout=10
        )
        assert bars["contract"] == ident and bars["bars"]
        snap = await m.request("snapshot")
        assert {p["symbol"] for p in snap["positions"]} == {"AAPL", "MSFT"}
        with pytest.raises(GatewayError) as refused:
            await m.request("qualify", symbol="DUAL")
        assert refused.value.code == "ambiguous_contract" and "900002" in refused.value.message
        sent = m.metrics()["requests_ok"] + m.metrics()["requests_failed"]
        with pytest.raises(BadRequest, match="bar_size"):
            await m.request("historical_bars", symbol="AAPL", bar_size="7 mins")
        with pytest.raises(BadRequest):
            m.stream("quotes", symbol="AAPL", con_id=AAPL)
        assert m.metrics()["requests_ok"] + m.metrics()["requests_failed"] == sent  # nothing was sent
