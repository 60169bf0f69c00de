"""Random orders and random faults against one trading manager (real worker, real ib_async,
the simulator's broker), asyncio and trio. Invariants: for every order_ref the simulator holds
at most one order; every call got exactly one outcome, consistent with the simulator's book
(once in-doubt ones are resolved); every execution of ours is delivered exactly once.

Real processes are slow: a few short examples per backend, no shrinking, no example database.
"""

from __future__ import annotations

import os
import signal
import tempfile
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from support.manager import poll_until
from support.orders import limit, on_sim_order, order_settings, trading_sim

from fsm.errors import OrderInDoubt, OrderNotPlaced, OrderRejected
from fsm.manager import ConnectionManager
from gatewaysim import GatewaySim
from worker.orders_protocol import Execution

pytestmark = pytest.mark.anyio

CID = 7
PLACES = ["place", "place_mkt", "place_kill", "place_drop", "place_discard", "place_down"]
FAULTS = ["kill_worker", "drop_all", "restart", "fill_while_away", "fill", "cancel"]
CALL_TIMEOUT = 15.0
DOWN_DEADLINE = 1.0  # place_down: the call's deadline, shorter than the Gateway's absence


async def new_session(m: ConnectionManager, spawned: int) -> None:
    """Wait for the session after a fault: a new worker, connected."""
    await poll_until(lambda: m.metrics()["workers_spawned"] > spawned, 20, "a new worker")
    await m.wait_connected(20)


async def place(m: ConnectionManager, sim: GatewaySim, step: str, ref: str) -> str:
    """One place_order under the step's fault; its one outcome."""
    args: dict[str, Any] = limit(ref)
    timeout = CALL_TIMEOUT
    if step == "place_mkt":
        args.update(order_type="MKT", limit_price=None, quantity=2.0)
    elif step == "place_kill":
        pid = m.worker_pid
        assert pid is not None
        on_sim_order(sim, ref, lambda: os.kill(pid, signal.SIGKILL))
    elif step == "place_drop":
        sim.drop_on_place("before_ack")
    elif step == "place_discard":
        sim.drop_on_place("discard")
    elif step == "place_down":
        sim.drop_on_place("before_ack")
        on_sim_order(sim, ref, lambda: sim.down_for(DOWN_DEADLINE + 1.0))
        timeout = DOWN_DEADLINE
    try:
        await m.place_order(**args, timeout=timeout)
        outcome = "placed"
    except OrderNotPlaced:
        outcome = "not_placed"
    except OrderInDoubt:
        outcome = "in_doubt"
    sim.on_event = None
    await m.wait_connected(20)
    return outcome


async def fault(m: ConnectionManager, sim: GatewaySim, step: str, placed: dict[str, str]) -> None:
    spawned = m.metrics()["workers_spawned"]
    working = [
        r for r, o in placed.items() if o == "placed" and any(x.working for x in sim.broker.orders_by_ref(r))
    ]
    if step == "kill_worker":
        pid = m.worker_pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        await new_session(m, spawned)
    elif step in ("drop_all", "restart"):
        getattr(sim, step)()
        await new_session(m, spawned)
    elif step == "fill_while_away":
        sim.drop_all()
        await sim.wait_until(lambda s: all(x.client_id != CID for x in s.sessions), 10)
        sim.fill_while_away(True)  # every working order of ours fills now, while we are away
        sim.fill_while_away(False)
        await new_session(m, spawned)
    elif step == "fill" and working:
        sim.fill_order(working[0])  # live, with the session up
    elif step == "cancel" and working:
        try:
            st = await m.cancel_order(working[-1], timeout=CALL_TIMEOUT)
            assert st.status == "Cancelled"
        except OrderRejected as exc:  # it filled first
            assert exc.code == 10148


async def collect(m: ConnectionManager, into: list[Execution]) -> None:
    async for x in m.executions():
        into.append(x)


@settings(
    max_examples=3,
    deadline=None,
    database=None,
    phases=[Phase.generate],
    suppress_health_check=list(HealthCheck),
)
@given(rounds=st.lists(st.tuples(st.sampled_from(PLACES), st.sampled_from(FAULTS)), min_size=2, max_size=3))
async def test_random_orders_and_faults_keep_one_order_one_outcome_one_delivery(
    anyio_backend: str, rounds: list[tuple[str, str]]
) -> None:
    steps = [step for pair in rounds for step in pair]  # each round: an order, then a fault
    with tempfile.TemporaryDirectory() as state_dir:
        async with trading_sim() as sim:
            settings_ = order_settings(Path(state_dir), sim.port, client_id=CID)
            async with ConnectionManager(settings_) as m, anyio.create_task_group() as tg:
                await m.wait_connected(20)
                fills: list[Execution] = []
                tg.start_soon(collect, m, fills)
                outcomes: dict[str, str] = {}
                for n, step in enumerate(steps):
                    if step in PLACES:
                        ref = f"h{n}-{step}"
                        outcomes[ref] = await place(m, sim, step, ref)
                    else:
                        await fault(m, sim, step, outcomes)

                # every call in doubt is resolved by asking again once a session is up
                for ref, outcome in list(outcomes.items()):
                    if outcome == "in_doubt":
                        try:
                            await m.order_status(ref, timeout=30)
                            outcomes[ref] = "placed"
                        except OrderNotPlaced:
                            outcomes[ref] = "not_placed"
                for ref, outcome in outcomes.items():
                    held = sim.broker.orders_by_ref(ref)
                    assert len(held) <= 1, (steps, ref, held)
                    assert len(held) == (1 if outcome == "placed" else 0), (steps, ref, outcome, held)
                    assert sim.broker.placements[ref] == 1, (steps, ref)  # never sent twice

                # a reconciliation in the current session, then every fill of ours, once
                if outcomes:
                    try:
                        await m.order_status(next(iter(outcomes)), timeout=30)
                    except OrderNotPlaced:
                        pass
                ours = {x.exec_id for x in sim.broker.executions if x.client_id == CID}
                await poll_until(lambda: {x.exec_id for x in fills} == ours, 20, f"every fill once {steps}")
                assert len(fills) == len(ours), steps
                tg.cancel_scope.cancel()
