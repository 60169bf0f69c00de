"""The blocking API from plain threads: a real manager on its own loop thread (asyncio or trio),
a real worker and ib_async, the simulator (its market and broker on a pinned trading-day clock)
on a thread of its own."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support.manager import fast_settings
from support.market import PINNED
from support.orders import LOW, SPEED, limit, order_settings

import fsm.blocking
from fsm import Execution, Gap, Quote
from fsm.core import Reason, State
from fsm.errors import (
    AlreadyRunning,
    BadRequest,
    DisconnectForbidden,
    GatewayError,
    NotConnected,
    OrderRejected,
    ReadOnly,
)
from fsm.manager import StateChange
from gatewaysim import GatewaySim
from gatewaysim.market import Market, Quotes
from gatewaysim.threaded import ThreadedSim, running_in_thread

CID = 11
ACCOUNT = "DU1234567"  # the simulator's default account
AAPL = 265598


@pytest.fixture(params=["asyncio", "trio"])
def backend(request: pytest.FixtureRequest) -> str:
    """The anyio backend of the manager's loop thread."""
    return str(request.param)


@pytest.fixture
def sim() -> Iterator[ThreadedSim]:
    """The simulator on a trading-day clock running SPEED times faster than real time."""
    t0 = time.monotonic()
    with running_in_thread(
        seed=11, tick_rate=4.0, wall=lambda: PINNED + (time.monotonic() - t0) * SPEED
    ) as s:
        yield s


def quote_feeds(sim: GatewaySim) -> int:
    """The simulator's live reqMktData subscriptions (read on its loop)."""
    return sum(isinstance(st, Quotes) for st in sim.component(Market).streams.values())


def run_threads(*targets: Callable[[], None], timeout: float = 60.0) -> None:
    """Run each target in its own thread, started together; re-raise the first failure."""
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(targets))

    def wrap(target: Callable[[], None]) -> None:
        try:
            barrier.wait(timeout)
            target()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=wrap, args=(t,)) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
        assert not t.is_alive(), "a thread is still blocked"
    if errors:
        raise errors[0]


def test_two_threads_request_at_once(tmp_path: Path, sim: ThreadedSim, backend: str) -> None:
    with fsm.blocking.connect(fast_settings(tmp_path, sim.port, CID), backend=backend) as m:
        m.wait_connected(20)
        assert m.state == State.CONNECTED and m.client_id == CID
        pings: list[dict[str, Any]] = []
        accounts: list[dict[str, Any]] = []

        def pinger() -> None:
            for _ in range(15):  # under IB's 45/s pacing: no probe waits behind them
                pings.append(m.request("ping"))

        def reader() -> None:
            for _ in range(15):  # under IB's 45/s pacing: no probe waits behind them
                accounts.append(m.request("accounts"))
                assert m.metrics()["state"] == "CONNECTED"

        run_threads(pinger, reader)
        assert len(pings) == 15 and len(accounts) == 15
        assert all(a == {"accounts": [ACCOUNT]} for a in accounts)
        assert all(p["latency_ms"] >= 0 for p in pings)
        assert m.metrics()["requests_ok"] == 30
        with pytest.raises(BadRequest):
            m.request("no_such_command")
        with pytest.raises(DisconnectForbidden):
            m.disconnect()
        with pytest.raises(AlreadyRunning), fsm.blocking.connect(m.settings, backend=backend):
            pass  # a second manager for the same client id is refused as it starts
        assert m.metrics()["requests_ok"] == 30  # the refusals never reached the worker
    with pytest.raises(NotConnected, match="not running"):
        m.request("ping")


def test_threads_follow_a_fault_through_subscribe_and_wait(
    tmp_path: Path, sim: ThreadedSim, backend: str
) -> None:
    """One thread iterates the subscription until the manager shuts down; another sees the
    typed error while IB is unreachable and the session come back; the main thread injects."""
    with fsm.blocking.connect(fast_settings(tmp_path, sim.port, CID), backend=backend) as m:
        m.wait_connected(20)
        changes = m.subscribe()
        seen: list[StateChange] = []
        refused = threading.Event()
        traded = threading.Event()

        def watcher() -> None:
            for change in changes:  # ends only when the manager shuts down
                if isinstance(change, StateChange):
                    seen.append(change)

        def trader() -> None:
            m.wait_for(State.DEGRADED_RED, 20)
            assert m.reason == Reason.connectivity_lost
            with pytest.raises(NotConnected):
                m.request("positions")
            refused.set()
            m.wait_connected(20)
            assert isinstance(m.request("positions")["positions"], list)
            traded.set()

        def injector() -> None:
            sim.connectivity_lost()
            assert refused.wait(20)
            sim.connectivity_restored(False)
            assert traded.wait(20)
            m.shutdown()  # from a third thread: ends the watcher's iteration

        run_threads(watcher, trader, injector)
    path = [(c.source, c.dest, c.reason) for c in seen]
    assert path == [
        (State.CONNECTED, State.DEGRADED_RED, Reason.connectivity_lost),
        (State.DEGRADED_RED, State.CONNECTED, Reason.connectivity_lost),
        (State.CONNECTED, State.IDLE, Reason.shutdown),
    ]


def test_health_server_beside_a_blocking_manager(tmp_path: Path, sim: ThreadedSim, backend: str) -> None:
    with (
        fsm.blocking.connect(fast_settings(tmp_path, sim.port, CID), backend=backend) as m,
        m.serve_health("127.0.0.1", 0) as server,
    ):
        m.wait_connected(20)
        with urllib.request.urlopen(f"{server.url}/readyz", timeout=10) as reply:
            assert reply.status == 200 and json.load(reply)["state"] == "CONNECTED"
        sim.connectivity_lost()
        m.wait_for(State.DEGRADED_RED, 20)
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(f"{server.url}/readyz", timeout=10)
        assert info.value.code == 503 and json.load(info.value)["reason"] == "connectivity_lost"
        info.value.close()


def test_one_thread_streams_while_others_trade_and_read_fills(
    tmp_path: Path, sim: ThreadedSim, backend: str
) -> None:
    """Three threads at once on one manager: quotes stream in one while another places, modifies
    and cancels a resting order and sells at market, and a third reads the fill; each gets its
    own outcome. Leaving the stream's block unsubscribes at the simulator."""
    with fsm.blocking.connect(order_settings(tmp_path, sim.port, client_id=CID), backend=backend) as m:
        m.wait_connected(20)
        traded = threading.Event()
        quotes: list[Quote] = []
        fills: list[Execution] = []
        outcomes: dict[str, Any] = {}

        def streamer() -> None:
            with m.stream("quotes", symbol="AAPL") as s:
                assert s.contract is not None and s.contract.con_id == AAPL and not s.delayed
                assert sim.run(lambda: quote_feeds(sim.sim)) == 1
                for item in s:
                    assert isinstance(item, Quote), item  # no break here: no Gap
                    quotes.append(item)
                    if len(quotes) >= 5 and traded.is_set():
                        break
                outcomes["gaps"] = s.gaps
            sim.wait_until(lambda gw: quote_feeds(gw) == 0, 10)  # left the block: unsubscribed

        def trader() -> None:
            outcomes["placed"] = m.place_order(**limit("blk-1"), timeout=10)
            outcomes["moved"] = m.modify_order("blk-1", quantity=4.0, timeout=10)
            outcomes["cancelled"] = m.cancel_order("blk-1", timeout=10)
            with pytest.raises(OrderRejected) as twice:  # the broker cannot cancel it again
                m.cancel_order("blk-1", timeout=10)
            outcomes["twice"] = twice.value.code
            outcomes["sold"] = m.place_order(
                symbol="AAPL", action="SELL", quantity=3, order_type="MKT", order_ref="blk-2", timeout=10
            )
            traded.set()

        def fill_reader() -> None:
            with m.executions() as executions:
                for fill in executions:
                    fills.append(fill)
                    break

        run_threads(streamer, trader, fill_reader)
        assert outcomes["placed"].status == "Submitted" and outcomes["placed"].limit_price == LOW
        assert (outcomes["moved"].status, outcomes["moved"].quantity) == ("Submitted", 4.0)
        assert outcomes["cancelled"].status == "Cancelled" and outcomes["twice"] == 10148
        assert m.order_status("blk-1", timeout=10).status == "Cancelled"
        assert m.order_status("blk-2", timeout=10).status == "Filled"
        [at_sim] = [x for x in sim.sim.broker.executions if x.order_ref == "blk-2"]
        assert [(f.exec_id, f.order_ref, f.shares) for f in fills] == [(at_sim.exec_id, "blk-2", 3.0)]
        times = [q.time for q in quotes]
        assert len(quotes) >= 5 and times == sorted(times) and len(set(times)) == len(times)
        assert outcomes["gaps"] == 0
        assert m.metrics()["streams_open"] == 0 and m.metrics()["orders_in_doubt"] == 0
        assert dict(sim.sim.broker.placements) == {"blk-1": 2, "blk-2": 1}  # place + modify; place


def test_refusals_are_the_async_ones_and_a_blocked_reader_learns_of_the_shutdown(
    tmp_path: Path, sim: ThreadedSim, backend: str
) -> None:
    """Read-only by default: orders refused with nothing at the simulator; a bad stream refused
    at once, an unknown symbol when entering; a thread waiting on a stream gets NotConnected
    when the manager shuts down, and a gap-free stream has no Gap."""
    with fsm.blocking.connect(fast_settings(tmp_path, sim.port, CID), backend=backend) as m:
        m.wait_connected(20)
        with pytest.raises(ReadOnly):
            m.place_order(**limit("ro-1"))
        with pytest.raises(ReadOnly):
            m.cancel_order("ro-1")
        with pytest.raises(BadRequest, match="no order"):
            m.order_status("ro-1")
        with pytest.raises(BadRequest):
            m.stream("ticks", symbol="AAPL")
        with pytest.raises(GatewayError) as unknown, m.stream("quotes", symbol="NOSUCH"):
            pass
        assert unknown.value.code == "no_security_definition"
        assert dict(sim.sim.broker.placements) == {}

        got_one = threading.Event()
        ended: list[BaseException] = []

        def reader() -> None:
            with m.stream("quotes", symbol="AAPL") as s:
                try:
                    for item in s:
                        assert not isinstance(item, Gap)
                        got_one.set()
                except NotConnected as exc:
                    ended.append(exc)

        def stopper() -> None:
            assert got_one.wait(20)
            m.shutdown()

        run_threads(reader, stopper)
        assert len(ended) == 1 and "shut down" in str(ended[0])
