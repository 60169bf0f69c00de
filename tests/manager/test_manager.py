"""ConnectionManager behaviour that needs no Gateway: a scripted fake worker (no ib_async, starts
in milliseconds) drives the request outcomes, stale-input dropping, subscriptions, the lock and
the status snapshot, on asyncio and trio."""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import anyio
import psutil
import pytest
from support.manager import assert_clean_exit, poll_until, quick

from fsm.core import Reason, State
from fsm.errors import (
    AlreadyRunning,
    BadRequest,
    DisconnectForbidden,
    GatewayError,
    NotConnected,
    RequestTimeout,
    WaitTimeout,
)
from fsm.lockfile import lock_path
from fsm.maintenance import Window
from fsm.manager import ConnectionManager, Notice, StateChange, Subscription
from fsm.status import read_status, status_path

pytestmark = pytest.mark.anyio


async def test_disconnect_is_refused_naming_shutdown(tmp_path: Path) -> None:
    m = ConnectionManager(quick(tmp_path))
    with pytest.raises(DisconnectForbidden, match=r"shutdown\(\)"):
        m.disconnect()
    with pytest.raises(DisconnectForbidden):
        await m.request("disconnect")


async def test_requests_get_exactly_one_typed_outcome(tmp_path: Path, fake_argv: list[str]) -> None:
    async with ConnectionManager(quick(tmp_path), worker_argv=fake_argv) as m:
        await m.wait_connected(10)
        assert await m.request("ping") == {"gateway_time": 1.0, "latency_ms": 0.1}
        with pytest.raises(GatewayError) as gw:
            await m.request("positions")
        assert gw.value.code == 321
        with pytest.raises(BadRequest):
            await m.request("accounts")  # the worker said bad_request
        with pytest.raises(BadRequest, match="nope"):
            await m.request("nope")  # unknown_command from the worker
        with pytest.raises(BadRequest):
            await m.request("positions", bogus=1)  # refused before it is sent
        with pytest.raises(BadRequest):
            await m.request("connect")  # the manager's own job
        t0 = time.monotonic()
        with pytest.raises(RequestTimeout):
            await m.request("account_summary", timeout=0.2)
        assert 0.2 <= time.monotonic() - t0 < 1.0
        # the manager's timeout also travels to the worker, inside params
        assert (await m.request("status"))["params"] == {}
        metrics = m.metrics()
        assert metrics["requests_ok"] == 2 and metrics["requests_timed_out"] == 1
        assert metrics["requests_in_flight"] == 0
    await assert_clean_exit(m, None)


async def test_not_connected_fails_fast_or_waits(
    tmp_path: Path, fake_argv: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_CONNECT_ERROR", "connection_refused")
    async with ConnectionManager(quick(tmp_path), worker_argv=fake_argv) as m:
        t0 = time.monotonic()
        with pytest.raises(NotConnected, match="not connected"):
            await m.request("ping")
        assert time.monotonic() - t0 < 0.25  # at once: no waiting for a session
        with pytest.raises(NotConnected, match="after waiting 0.3 s"):
            await m.request("ping", wait=0.3)
        assert time.monotonic() - t0 >= 0.3
        with pytest.raises(WaitTimeout, match=r"not CONNECTED within 0.1 s: the manager is") as info:
            await m.wait_connected(0.1)
        assert isinstance(info.value, TimeoutError)  # `except TimeoutError` keeps working
    await assert_clean_exit(m, None)


async def test_request_can_wait_for_the_session(tmp_path: Path, fake_argv: list[str]) -> None:
    async with ConnectionManager(quick(tmp_path), worker_argv=fake_argv) as m:
        assert m.state != State.CONNECTED
        assert (await m.request("ping", wait=10))["latency_ms"] == 0.1
    await assert_clean_exit(m, None)


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        ("handshake_timeout", Reason.api_unresponsive),
        ("client_id_in_use", Reason.client_id_in_use),
        ("connection_refused", Reason.refused),
        ("server_version_too_old", Reason.gateway_too_old),
        ("dns_failure", Reason.unknown_host),
        ("peer_closed", Reason.peer_closed),
        ("internal_error", Reason.peer_closed),
    ],
)
async def test_handshake_errors_map_to_reasons(
    tmp_path: Path, fake_argv: list[str], monkeypatch: pytest.MonkeyPatch, code: str, reason: Reason
) -> None:
    monkeypatch.setenv("FAKE_CONNECT_ERROR", code)
    async with ConnectionManager(quick(tmp_path), worker_argv=fake_argv) as m:
        await m.wait_for(State.DEGRADED_RED, 10)
        assert m.reason == reason
    await assert_clean_exit(m, None)


async def test_events_from_a_retiring_worker_are_dropped(
    tmp_path: Path, fake_argv: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Probes fail: probe_failed -> retry, which retires the worker; on its way out it reports
    # session_lost and 1100. Those are stale: they must not move the new attempt.
    monkeypatch.setenv("FAKE_PROBE_ERROR", "1")
    async with ConnectionManager(quick(tmp_path), worker_argv=fake_argv) as m:
        await poll_until(lambda: m.metrics()["workers_spawned"] >= 3, 20, "two retries")
        await m.wait_connected(10)
    await assert_clean_exit(m, None)
    events = {t.event for t in m.history}
    assert "session_lost" not in events and "connectivity_lost" not in events
    assert {"probe_failed", "retry"} <= events
    assert m.metrics()["stale_inputs_dropped"] >= 4


async def test_second_manager_for_the_same_id_is_refused(tmp_path: Path, fake_argv: list[str]) -> None:
    s = quick(tmp_path)
    async with ConnectionManager(s, worker_argv=fake_argv) as m:
        await m.wait_connected(10)
        with pytest.raises(AlreadyRunning, match=rf"pid {os.getpid()}.*client id 7"):
            async with ConnectionManager(s, worker_argv=fake_argv):
                pass
        other = s.replace(client_id=8)
        async with ConnectionManager(other, worker_argv=fake_argv) as m2:
            await m2.wait_connected(10)
        rec = json.loads(lock_path(s.state_dir, s.host, s.port, 7).read_text())
        assert rec["manager_pid"] == os.getpid() and rec["worker_pid"] == m.worker_pid
        assert rec["worker_create_time"] == psutil.Process(m.worker_pid).create_time()
    await assert_clean_exit(m, None)
    await assert_clean_exit(m2, None)


async def test_status_snapshot_follows_transitions(tmp_path: Path, fake_argv: list[str]) -> None:
    s = quick(tmp_path)
    path = status_path(s.state_dir, s.host, s.port, s.client_id)
    async with ConnectionManager(s, worker_argv=fake_argv) as m:
        await m.wait_connected(10)
        await poll_until(lambda: 2104 in m.farms, 5, "the farm notice after connect")
        # written by a thread of its own (latest wins): wait for it to catch up
        await poll_until(lambda: "2104" in (read_status(path) or {}).get("farms", {}), 5, "the snapshot")
        snap = read_status(path)
        assert snap is not None
        assert snap["state"] == "CONNECTED" and snap["client_id"] == 7
        assert snap["worker_pid"] == m.worker_pid and snap["manager_pid"] == os.getpid()
        assert snap["manager_alive"] is True and snap["stopped"] is False
        assert snap["counters"]["sessions"] == 1 and snap["counters"]["attempts"] == 1
        assert abs(snap["since"] - time.time()) < 5
        assert snap["farms"] == {"2104": "Market data farm connection is OK"}
    snap = read_status(path)
    assert snap is not None and snap["state"] == "IDLE" and snap["stopped"] is True


async def test_metrics_report_counts_and_durations(tmp_path: Path, fake_argv: list[str]) -> None:
    async with ConnectionManager(quick(tmp_path), worker_argv=fake_argv) as m:
        await m.wait_connected(10)
        mt = m.metrics()
    for key in (
        "attempts",
        "sessions",
        "red_episodes",
        "client_id_in_use",
        "notices_client_id_in_use",
        "last_handshake_latency_ns",
        "time_in_state_ns",
        "workers_spawned",
    ):
        assert key in mt, key
    assert mt["sessions"] == 1 and mt["last_handshake_latency_ns"] > 0
    assert mt["notices_client_id_in_use"] == 0 and mt["time_in_state_ns"]["SPAWNING"] > 0


async def test_a_worker_that_cannot_start_is_an_exit(tmp_path: Path) -> None:
    argv = [str(tmp_path / "no-such-interpreter")]
    async with ConnectionManager(quick(tmp_path), worker_argv=argv) as m:
        await m.wait_for(State.DEGRADED_RED, 5)
        assert m.reason == Reason.worker_exited
        await poll_until(lambda: m.metrics()["spawn_failures"] >= 2, 10, "a retry")
    await assert_clean_exit(m, None)


async def test_slow_subscriber_never_blocks_the_manager(tmp_path: Path, fake_argv: list[str]) -> None:
    m = ConnectionManager(quick(tmp_path), worker_argv=fake_argv, subscriber_buffer=2)
    lazy = m.subscribe()  # before the start, so it sees everything; never read while it works
    async with m:
        async with m.subscribe() as reader:
            await m.wait_connected(10)
            first = await reader.__anext__()
            assert isinstance(first, StateChange)
            await poll_until(lambda: 2104 in m.farms, 5, "the farm notice after connect")
        # SPAWNING, HANDSHAKING, CONNECTED, farm notice: only the newest two were kept
        got = [await lazy.__anext__(), await lazy.__anext__()]
        assert got[0].dropped == 2 and got[1].dropped == 0
        assert isinstance(got[1], Notice) and got[1].kind == "farm"
    # after shutdown the iterator delivers what is left, then ends
    rest = [c async for c in lazy]
    assert [c.event for c in rest if isinstance(c, StateChange)] == ["shutdown"]
    assert [c async for c in m.subscribe()] == []


async def test_subscription_drops_oldest_and_marks_it() -> None:
    closed: list[Subscription] = []
    sub = Subscription(3, closed.append)
    for i in range(5):
        sub.put(Notice(float(i), "farm", i, "", i))
    sub.close()
    got = [n async for n in sub]
    assert [n.code for n in got] == [2, 3, 4]
    assert [n.dropped for n in got] == [2, 0, 0]
    assert closed == [sub]


async def test_cancelled_block_still_shuts_down(tmp_path: Path, fake_argv: list[str]) -> None:
    with anyio.move_on_after(5) as scope:
        async with ConnectionManager(quick(tmp_path), worker_argv=fake_argv) as m:
            await m.wait_connected(10)
            scope.cancel()
            await anyio.sleep_forever()
    assert scope.cancelled_caught
    await assert_clean_exit(m, None)


async def test_an_error_in_the_block_propagates_after_shutdown(tmp_path: Path, fake_argv: list[str]) -> None:
    with pytest.raises(ValueError, match="trader bug"):
        async with ConnectionManager(quick(tmp_path), worker_argv=fake_argv) as m:
            await m.wait_connected(10)
            raise ValueError("trader bug")
    await assert_clean_exit(m, None)


async def test_the_maintenance_window_in_force_reaches_the_core(tmp_path: Path, fake_argv: list[str]) -> None:
    now = datetime.now(UTC)
    around_now = Window(
        "test-window",
        (now - timedelta(hours=1)).time().replace(second=0, microsecond=0),
        (now + timedelta(hours=1)).time().replace(second=0, microsecond=0),
        ZoneInfo("UTC"),
    )
    async with ConnectionManager(quick(tmp_path, maintenance=(around_now,)), worker_argv=fake_argv) as m:
        await m.wait_connected(10)
        assert m.metrics()["maintenance_window"] == "test-window"
    async with ConnectionManager(quick(tmp_path, maintenance=()), worker_argv=fake_argv) as m:
        await m.wait_connected(10)
        assert m.metrics()["maintenance_window"] is None
