"""Traffic must not cost the session (issue 11 items 1, 2 and 8): a real manager and worker,
real ib_async, real TCP to gatewaysim, on asyncio and trio.

- 24 callers keeping ib_async's pacing queue full never make the liveness probe fail;
- ~9,000 positions (a 1.3 MB answer, chunked by the worker) arrive intact through the manager;
- requests cut by a dropped session end as SessionLost, and the manager reconnects.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import anyio
import pytest
from support.manager import (
    FAST_CLOSE_WINDOW,
    assert_clean_exit,
    assert_session_invariants,
    fast_settings,
    poll_until,
    session_older_than_window,
)

from fsm import ConnectionManager, IbgwError, SessionLost, State
from gatewaysim import Faults, GatewaySim

pytestmark = pytest.mark.anyio

CID = 13
CALLERS = 24
LOAD_SECONDS = 6.0


def no_probe_failure(m: ConnectionManager) -> None:
    failed = [t for t in m.history if t.event in ("probe_failed", "probe_timeout")]
    assert failed == [], failed


async def test_busy_callers_never_make_the_probe_fail(tmp_path: Path) -> None:
    async with GatewaySim(faults=Faults(red_on_fast_close=FAST_CLOSE_WINDOW)) as sim:
        async with ConnectionManager(fast_settings(tmp_path, sim.port, CID)) as m:
            await session_older_than_window(m)
            probes = m.metrics()["probes_sent"]
            outcomes: Counter[str] = Counter()
            calls = 0
            deadline = time.monotonic() + LOAD_SECONDS

            async def caller() -> None:
                nonlocal calls
                while time.monotonic() < deadline:
                    calls += 1
                    try:  # reqCurrentTime: Gateway-bound, through ib_async's 45 msg/s pacing
                        await m.request("ping", timeout=10)
                        outcomes["ok"] += 1
                    except IbgwError as exc:
                        outcomes[type(exc).__name__] += 1

            async with anyio.create_task_group() as tg:
                for _ in range(CALLERS):
                    tg.start_soon(caller)
            assert sum(outcomes.values()) == calls  # every request exactly one outcome
            assert outcomes["ok"] == calls, outcomes  # no fault: every one answered
            sent = m.metrics()["probes_sent"] - probes
            assert sent >= LOAD_SECONDS / m.settings.probe_interval / 2, sent  # probing went on
            no_probe_failure(m)
            assert m.state == State.CONNECTED and m.metrics()["sessions"] == 1
            await assert_session_invariants(m, sim, CID)
        await assert_clean_exit(m, sim)


ACCOUNTS = tuple(f"DU{n:07d}" for n in range(4500))  # the simulator books 2 positions in each


async def test_nine_thousand_positions_arrive_intact_through_the_manager(tmp_path: Path) -> None:
    async with GatewaySim(accounts=ACCOUNTS, faults=Faults(red_on_fast_close=FAST_CLOSE_WINDOW)) as sim:
        # The worker spends a few hundred ms of CPU on 9,000 positions (ib_async's decoding, then
        # the chunking): more than the 0.3 s probe timeout of the fault tests on a loaded machine,
        # far less than the default 5 s. The probe must survive it with a margin, as in production.
        s = fast_settings(
            tmp_path, sim.port, CID, request_timeout=60.0, probe_interval=2.0, probe_timeout=1.5
        )
        async with ConnectionManager(s) as m:
            await m.wait_connected(60)
            pid = m.worker_pid
            data = await m.request("positions")
            rows = data["positions"]
            assert len(rows) == 2 * len(ACCOUNTS)
            assert {r["account"] for r in rows} == set(ACCOUNTS)
            books = {r["account"]: [] for r in rows}
            for r in rows:
                books[r["account"]].append((r["symbol"], r["con_id"], r["position"], r["avg_cost"]))
            first = books[ACCOUNTS[0]]
            assert len(first) == 2 and all(book == first for book in books.values())
            # the same session goes on: small answers, probes, no respawn
            assert len((await m.request("positions", account=ACCOUNTS[9]))["positions"]) == 2
            probes = m.metrics()["probes_sent"]
            await poll_until(lambda: m.metrics()["probes_sent"] > probes, 10, "a probe after the big answer")
            assert m.worker_pid == pid and m.metrics()["workers_spawned"] == 1
            no_probe_failure(m)
        await assert_clean_exit(m, sim)


async def test_requests_cut_by_a_dropped_session_are_session_lost(tmp_path: Path) -> None:
    async with GatewaySim(faults=Faults(red_on_fast_close=FAST_CLOSE_WINDOW)) as sim:
        async with ConnectionManager(fast_settings(tmp_path, sim.port, CID)) as m:
            await session_older_than_window(m)
            outcomes: Counter[str] = Counter()

            async def call() -> None:
                try:
                    await m.request("ping", timeout=20)
                    outcomes["ok"] += 1
                except IbgwError as exc:
                    outcomes[type(exc).__name__] += 1
                    assert isinstance(exc, SessionLost), exc  # what `except NotConnected` catches

            async with anyio.create_task_group() as tg:
                for _ in range(150):  # over 3 s of ib_async's pacing: most are still queued
                    tg.start_soon(call)
                await poll_until(lambda: m.metrics()["requests_in_flight"] >= 100, 10, "a backlog")
                sim.drop_all()
            assert sum(outcomes.values()) == 150 and outcomes["SessionLost"] >= 1, outcomes
            await m.wait_connected(20)  # and the manager reconnects by itself
            await assert_session_invariants(m, sim, CID)
        await assert_clean_exit(m, sim)
