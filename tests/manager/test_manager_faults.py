"""The fault matrix: real worker, real ib_async, real TCP to gatewaysim, asyncio and trio.

Every fault ends CONNECTED with the same client id; the simulator never sees a live process
close its socket (no disconnect); no fast close turns it RED; no worker, lock or live status is
left behind. Recovery times are measured on the core's clock and printed at the end.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path

import anyio
import psutil
import pytest
from support.manager import (
    FAST_CLOSE_WINDOW,
    assert_clean_exit,
    assert_session_invariants,
    await_recovery,
    connected_at_ns,
    fast_settings,
    orphan_connect,
    poll_until,
    record,
    session_older_than_window,
    start_orphan_worker,
    write_dead_manager_lock,
)

from fsm.core import Reason, State
from fsm.errors import IbgwError, NotConnected, WorkerDied
from fsm.lockfile import lock_path
from fsm.manager import ConnectionManager, Notice
from fsm.metrics import registry_for
from gatewaysim import Faults, GatewaySim

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("report_recoveries")]

CID = 7
HOST = "127.0.0.1"


def watched() -> Faults:
    return Faults(red_on_fast_close=FAST_CLOSE_WINDOW)


def label(request: pytest.FixtureRequest) -> str:
    return request.node.name


async def test_gateway_down_at_start(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    async with GatewaySim(faults=watched()) as sim:
        sim.down_for(1.0)
        async with ConnectionManager(fast_settings(tmp_path, sim.port, CID)) as m:
            await m.wait_for(State.DEGRADED_RED, 15)
            assert m.reason == Reason.refused
            await sim.wait_until(lambda x: x.listening, 10)
            up_ns = int([e for e in sim.events if e.kind == "up"][-1].at * 1e9)
            await await_recovery(m, label(request), "gateway back up -> CONNECTED", up_ns)
            await assert_session_invariants(m, sim, CID)
            assert m.metrics()["red_by_reason"]["refused"] >= 1
        await assert_clean_exit(m, sim)


async def test_worker_sigkill_fails_inflight_requests_then_respawns(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    async with GatewaySim(faults=watched()) as sim:
        async with ConnectionManager(fast_settings(tmp_path, sim.port, CID)) as m:
            await session_older_than_window(m)
            old = m.worker_pid
            assert old is not None
            os.kill(old, signal.SIGSTOP)  # so that requests stay in flight until the kill
            died: list[int] = []

            async def call() -> None:
                with pytest.raises(WorkerDied):
                    await m.request("positions", timeout=10)
                died.append(time.monotonic_ns())

            async with anyio.create_task_group() as tg:
                tg.start_soon(call)
                tg.start_soon(call)
                await poll_until(lambda: m.metrics()["requests_in_flight"] == 2, 5)
                t0 = time.monotonic_ns()
                os.kill(old, signal.SIGKILL)
            assert len(died) == 2
            record(label(request), "SIGKILL -> in-flight WorkerDied", t0, max(died))
            await await_recovery(m, label(request), "worker SIGKILL -> CONNECTED", t0)
            assert m.worker_pid != old
            await assert_session_invariants(m, sim, CID)
        await assert_clean_exit(m, sim)


async def test_requests_after_a_worker_died_wait_for_the_next_session(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """24 callers with wait=2.0 through a SIGKILL: what was in flight fails with WorkerDied at
    once; a call made after the worker died waits for the next session (no WorkerDied while the
    manager has not yet handled the exit), and nothing is written to the dead pipe (on asyncio
    that would log 'pipe closed by peer')."""
    caplog.set_level(logging.WARNING, logger="asyncio")
    calls: list[tuple[int, int, str]] = []  # (start ns, end ns, outcome)
    stop = anyio.Event()

    async def call(m: ConnectionManager) -> None:
        t0 = time.monotonic_ns()
        try:
            await m.request("accounts", wait=2.0)
            kind = "ok"
        except IbgwError as exc:
            kind = type(exc).__name__
        calls.append((t0, time.monotonic_ns(), kind))

    async def caller(m: ConnectionManager) -> None:
        while not stop.is_set():
            await call(m)

    async with GatewaySim(faults=watched()) as sim:
        async with ConnectionManager(fast_settings(tmp_path, sim.port, CID)) as m:
            await session_older_than_window(m)
            old = m.worker_pid
            assert old is not None
            async with anyio.create_task_group() as tg:
                for _ in range(24):
                    tg.start_soon(caller, m)
                await poll_until(lambda: len(calls) >= 200, 10, "traffic before the kill")
                os.kill(old, signal.SIGSTOP)
                await poll_until(lambda: psutil.Process(old).status() == psutil.STATUS_STOPPED, 5)
                tg.start_soon(call, m)  # sent to the stopped worker: surely in flight at the kill
                await poll_until(lambda: m.metrics()["requests_in_flight"] == 25, 5)
                killed = time.monotonic_ns()
                os.kill(old, signal.SIGKILL)
                await poll_until(lambda: m.state == State.CONNECTED and m.worker_pid not in (None, old), 10)
                back = connected_at_ns(m, killed)
                n = len(calls)
                await poll_until(lambda: len(calls) >= n + 200, 10, "traffic in the new session")
                stop.set()
            in_flight = [c for c in calls if c[0] < killed < c[1]]
            assert len(in_flight) == 25
            assert {k for _, _, k in in_flight} <= {"ok", "WorkerDied"}  # answered before the stop, or not
            died = [(start, end) for start, end, k in calls if k == "WorkerDied"]
            assert died and all(start < killed < end < back for start, end in died)  # at once
            # From the first WorkerDied on (the worker's stdout had ended) until the manager
            # handled the exit, the callers' next calls waited for the next session instead of
            # going to the dead worker.
            first = min(end for _, end in died)
            after = [c for c in calls if c[0] >= first]
            assert len([c for c in after if c[0] < back]) >= len(died) - 1  # the lone call made none
            assert [c for c in after if c[2] != "ok"] == []
            await assert_session_invariants(m, sim, CID)
        await assert_clean_exit(m, sim)
    assert [r.getMessage() for r in caplog.records if "pipe closed" in r.getMessage()] == []


async def test_warm_spare_is_adopted_on_respawn(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    async with GatewaySim(faults=watched()) as sim:
        settings = fast_settings(tmp_path, sim.port, CID, warm_spare=True)
        async with ConnectionManager(settings) as m:
            await session_older_than_window(m)
            await poll_until(lambda: m.metrics()["spares_spawned"] == 1, 10, "a ready spare")
            await poll_until(lambda: m.spare_pid is not None, 10, "the spare's ready event")
            spare = m.spare_pid
            assert len(sim.sessions) == 1  # the spare holds no socket to the Gateway
            old = m.worker_pid
            assert old is not None
            t0 = time.monotonic_ns()
            os.kill(old, signal.SIGKILL)
            await await_recovery(m, label(request), "worker SIGKILL -> CONNECTED (warm spare)", t0)
            assert m.worker_pid == spare
            assert m.metrics()["spares_adopted"] == 1
            await assert_session_invariants(m, sim, CID)
        await assert_clean_exit(m, sim)


async def test_1100_during_the_handshake_is_not_lost(tmp_path: Path) -> None:
    async with GatewaySim(faults=watched()) as sim:
        sim.connectivity_lost()  # IB's servers are unreachable before we even connect
        async with ConnectionManager(fast_settings(tmp_path, sim.port, CID)) as m:
            await m.wait_for(State.DEGRADED_RED, 20)
            assert m.reason == Reason.connectivity_lost
            events = [t.event for t in m.history]
            assert events[-2:] == ["handshake_ok", "connectivity_lost"]
            pid = m.worker_pid
            sim.connectivity_restored(data_lost=False)
            await m.wait_connected(10)
            assert m.worker_pid == pid  # the session was kept throughout
            await assert_session_invariants(m, sim, CID)
        await assert_clean_exit(m, sim)


async def test_worker_sigstop_probe_fails_then_retired_and_respawned(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    async with GatewaySim(faults=watched()) as sim:
        async with ConnectionManager(fast_settings(tmp_path, sim.port, CID)) as m:
            await session_older_than_window(m)
            old = m.worker_pid
            assert old is not None
            t0 = time.monotonic_ns()
            os.kill(old, signal.SIGSTOP)
            await m.wait_for(State.DEGRADED_RED, 5)
            assert m.reason == Reason.probe_failed
            red = [t for t in m.history if t.dest == State.DEGRADED_RED][-1]
            record(label(request), "SIGSTOP -> DEGRADED_RED (probe)", t0, red.at_ns)
            await await_recovery(m, label(request), "worker SIGSTOP -> CONNECTED", t0)
            assert m.worker_pid != old and not psutil.pid_exists(old)
            assert m.metrics()["retire_term"] >= 1  # EOF could not wake it; SIGTERM+SIGCONT did
            await assert_session_invariants(m, sim, CID)
        await assert_clean_exit(m, sim)


async def test_gateway_drop_all_then_down_for(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    async with GatewaySim(faults=watched()) as sim:
        async with ConnectionManager(fast_settings(tmp_path, sim.port, CID)) as m:
            await m.wait_connected(20)
            t0 = time.monotonic_ns()
            sim.drop_all()
            await m.wait_for(State.DEGRADED_RED, 5)
            assert m.reason == Reason.peer_closed
            await await_recovery(m, label(request), "drop_all -> CONNECTED", t0)
            await assert_session_invariants(m, sim, CID)

            t1 = time.monotonic_ns()
            sim.down_for(1.0)
            await m.wait_for(State.DEGRADED_RED, 5)
            await await_recovery(m, label(request), "down_for(1.0) -> CONNECTED", t1)
            up_ns = int([e for e in sim.events if e.kind == "up"][-1].at * 1e9)
            record(
                label(request),
                "  of which: gateway up -> CONNECTED",
                up_ns,
                [t for t in m.history if t.dest == State.CONNECTED][-1].at_ns,
            )
            await assert_session_invariants(m, sim, CID)
        await assert_clean_exit(m, sim)


async def test_stale_worker_of_a_killed_manager_is_reaped_at_start(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    # The zombie's own age is not under test: the fast-close watch goes on once it is gone.
    async with GatewaySim() as sim:
        stale = await start_orphan_worker(tmp_path, HOST, sim.port, CID)
        try:
            assert (await orphan_connect(stale, HOST, sim.port, CID))["status"] == "success"
            write_dead_manager_lock(tmp_path, HOST, sim.port, CID, stale)
            t0 = time.monotonic_ns()
            async with ConnectionManager(fast_settings(tmp_path, sim.port, CID)) as m:
                await stale.wait_gone()  # ended before our first spawn
                await sim.wait_until(lambda x: any(c.pid == stale.pid for c in x.client_closes), 5)
                sim.red_on_fast_close(FAST_CLOSE_WINDOW)
                await await_recovery(m, label(request), "start with zombie -> reaped -> CONNECTED", t0)
                assert m.metrics()["zombies_reaped"] == 1
                assert sim.counters.sent_326 == 0
                await assert_session_invariants(m, sim, CID)
            await assert_clean_exit(m, sim)
        finally:
            await stale.aclose()


async def test_stale_worker_holding_the_id_gives_326_then_is_reaped(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    async with GatewaySim() as sim:
        sim.down_for(600)
        stale = await start_orphan_worker(tmp_path, HOST, sim.port, CID)
        try:
            write_dead_manager_lock(tmp_path, HOST, sim.port, CID, stale)
            # A longer backoff (>= 0.6 s with jitter) leaves the zombie time to take the id
            # (tens of ms) between two attempts.
            s = fast_settings(tmp_path, sim.port, CID, backoff_initial=0.75, backoff_max=1.5)
            async with ConnectionManager(s) as m:
                await m.wait_for(State.DEGRADED_RED, 15)
                assert m.reason == Reason.refused
                assert m.metrics().get("zombies_reaped", 0) == 0  # it held no connection: left
                sim.restart()
                await sim.wait_until(lambda x: x.listening, 5)
                assert (await orphan_connect(stale, HOST, sim.port, CID))["status"] == "success"
                assert m.state == State.DEGRADED_RED  # still backing off: the zombie got there first
                t0 = time.monotonic_ns()
                await poll_until(lambda: m.metrics()["client_id_in_use"] >= 1, 15, "a 326")
                await stale.wait_gone()
                await sim.wait_until(lambda x: any(c.pid == stale.pid for c in x.client_closes), 5)
                sim.red_on_fast_close(FAST_CLOSE_WINDOW)
                await await_recovery(m, label(request), "326 by zombie -> reaped -> CONNECTED", t0)
                assert m.metrics()["zombies_reaped"] == 1
                assert sim.counters.sent_326 >= 1
                await assert_session_invariants(m, sim, CID)
            await assert_clean_exit(m, sim)
        finally:
            await stale.aclose()


async def test_client_id_hold_by_the_gateway(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    async with GatewaySim(faults=watched()) as sim:
        sim.client_id_hold(1.0)
        async with ConnectionManager(fast_settings(tmp_path, sim.port, CID)) as m:
            await session_older_than_window(m)
            old = m.worker_pid
            assert old is not None
            t0 = time.monotonic_ns()
            os.kill(old, signal.SIGKILL)
            await poll_until(lambda: m.metrics()["client_id_in_use"] >= 1, 10, "a 326")
            took = await await_recovery(m, label(request), "SIGKILL + id held 1.0 s -> CONNECTED", t0)
            assert took >= 1.0
            assert sim.counters.sent_326 >= 1
            heard = m.metrics()["notices_client_id_in_use"]  # the 326 messages: one count of them
            assert heard >= 1 and "ib_326" not in m.metrics()
            ids = {"host": HOST, "port": str(sim.port), "client_id": str(CID)}
            assert registry_for(m).get_sample_value("ibgw_client_id_in_use_total", ids) == heard
            await assert_session_invariants(m, sim, CID)
        await assert_clean_exit(m, sim)


async def test_connectivity_1100_then_1102_keeps_the_session(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    async with GatewaySim(faults=watched()) as sim:
        async with ConnectionManager(fast_settings(tmp_path, sim.port, CID)) as m:
            sub = m.subscribe()
            await m.wait_connected(20)
            pid = m.worker_pid
            assert {2104, 2106, 2158} <= set(m.farms)  # farm notices on connect: recorded only

            sim.connectivity_lost()
            await m.wait_for(State.DEGRADED_RED, 5)
            assert m.reason == Reason.connectivity_lost
            with pytest.raises(NotConnected):
                await m.request("positions")
            t0 = time.monotonic_ns()
            sim.connectivity_restored(False)
            await m.wait_connected(5)
            record(label(request), "1102 -> CONNECTED (same worker)", t0, time.monotonic_ns())

            sim.farm_flap()
            sim.connectivity_lost()
            await m.wait_for(State.DEGRADED_RED, 5)
            sim.connectivity_restored(True)
            await m.wait_connected(5)
            assert m.worker_pid == pid
            assert m.metrics()["workers_spawned"] == 1  # no respawn, no new session
            assert m.metrics()["sessions"] == 1

            notices: list[Notice] = []
            with anyio.fail_after(5):
                async for item in sub:
                    if isinstance(item, Notice):
                        notices.append(item)
                        if item.kind == "data_lost":
                            break
            assert {(n.kind, n.code) for n in notices} >= {
                ("farm", 2103),
                ("farm", 2104),
                ("data_lost", 1101),
            }
            assert m.farms[2103].startswith("Market data farm connection is broken")
            await assert_session_invariants(m, sim, CID)
        await assert_clean_exit(m, sim)


@pytest.mark.parametrize("where", ["SPAWNING", "HANDSHAKING", "CONNECTED", "DEGRADED_RED", "IDLE"])
async def test_shutdown_from_every_state(tmp_path: Path, request: pytest.FixtureRequest, where: str) -> None:
    async with GatewaySim(faults=watched()) as sim:
        if where == "HANDSHAKING":
            sim.handshake_delay(5.0)
        if where == "DEGRADED_RED":
            sim.down_for(600)
        m = ConnectionManager(fast_settings(tmp_path, sim.port, CID))
        await m.shutdown()  # before start: nothing to do
        async with m:
            if where != "SPAWNING":
                await m.wait_for(State(where) if where != "IDLE" else State.CONNECTED, 20)
            assert m.state == (State(where) if where != "IDLE" else State.CONNECTED)
            pid = m.worker_pid
            if where == "IDLE":
                await m.shutdown()
                assert m.state == State.IDLE
            t0 = time.monotonic_ns()
            await m.shutdown()
            record(label(request), f"shutdown() from {where}", t0, time.monotonic_ns())
            assert m.history[-1].event == "shutdown" and m.history[-1].dest == State.IDLE
            with pytest.raises(NotConnected):
                await m.request("positions")
        await assert_clean_exit(m, sim)
        if pid is not None:
            assert not psutil.pid_exists(pid)
        closes = [c for c in sim.client_closes if c.handshaken]
        assert all(c.age >= m.settings.min_session for c in closes), closes
        assert not lock_path(tmp_path, HOST, sim.port, CID).exists()


@pytest.mark.slow
@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # real 30 s: one backend is enough
async def test_silent_gateway_handshake_times_out_at_30s_then_recovers_after_restart(
    tmp_path: Path, request: pytest.FixtureRequest, anyio_backend: str
) -> None:
    async with GatewaySim(faults=Faults(silent=True)) as sim:
        async with ConnectionManager(fast_settings(tmp_path, sim.port, CID)) as m:
            await m.wait_for(State.HANDSHAKING, 20)
            await m.wait_for(State.DEGRADED_RED, 40)
            assert m.reason == Reason.api_unresponsive
            hs = next(t for t in m.history if t.dest == State.HANDSHAKING)
            red = next(t for t in m.history if t.dest == State.DEGRADED_RED)
            took = record(label(request), "silent Gateway: HANDSHAKING -> DEGRADED_RED", hs.at_ns, red.at_ns)
            assert 30.0 <= took < 30.5
            t0 = time.monotonic_ns()
            sim.restart()
            sim.red_on_fast_close(FAST_CLOSE_WINDOW)
            await await_recovery(m, label(request), "restart of a RED Gateway -> CONNECTED", t0)
            assert m.metrics()["handshake_timeouts"] == 1
            await assert_session_invariants(m, sim, CID)
        await assert_clean_exit(m, sim)
