"""The blocking API from plain threads: a real manager on its own loop thread (asyncio or trio),
a real worker and ib_async, the simulator on a thread of its own."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support.manager import fast_settings

import fsm.blocking
from fsm.core import Reason, State
from fsm.errors import AlreadyRunning, BadRequest, DisconnectForbidden, NotConnected
from fsm.manager import StateChange
from gatewaysim.threaded import ThreadedSim, running_in_thread

CID = 11
ACCOUNT = "DU1234567"  # the simulator's default account


@pytest.fixture(params=["asyncio", "trio"])
def backend(request: pytest.FixtureRequest) -> str:
    """The anyio backend of the manager's loop thread."""
    return str(request.param)


@pytest.fixture
def sim() -> Iterator[ThreadedSim]:
    with running_in_thread() as s:
        yield s


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
