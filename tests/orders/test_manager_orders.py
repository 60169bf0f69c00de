"""Orders through the manager, against the simulator's broker: a real worker, the real ib_async,
real TCP, asyncio and trio. Each call gets exactly one outcome and it is the broker's truth;
nothing is ever sent twice; fills are delivered once, across outages and crashes."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from zoneinfo import ZoneInfo

import anyio
import pytest
from support.manager import poll_until
from support.orders import (
    LOW,
    limit,
    on_sim_order,
    order_settings,
    orders_at,
    placements,
    trading,
    trading_sim,
)

from fsm.errors import (
    BadRequest,
    DuplicateOrderRef,
    MaintenanceWindow,
    OrderInDoubt,
    OrderNotPlaced,
    OrderRejected,
    ReadOnly,
)
from fsm.maintenance import Window
from fsm.manager import ConnectionManager
from worker.orders_protocol import Execution

pytestmark = pytest.mark.anyio

REPO = Path(__file__).resolve().parents[2]


async def collect(m: ConnectionManager, into: list[Execution]) -> None:
    async for x in m.executions():
        into.append(x)


async def test_place_modify_cancel_and_a_fill_delivered_once(tmp_path: Path) -> None:
    async with trading(tmp_path) as (sim, m), anyio.create_task_group() as tg:
        fills: list[Execution] = []
        tg.start_soon(collect, m, fills)
        st = await m.place_order(**limit("m-1"), timeout=10)
        [o] = sim.broker.orders_by_ref("m-1")
        assert (st.status, st.order_id, st.perm_id, st.con_id, st.limit_price) == (
            "Submitted", o.order_id, o.perm_id, 265598, LOW,
        )  # fmt: skip
        moved = await m.modify_order("m-1", quantity=4.0, limit_price=LOW - 1, timeout=10)
        assert (moved.quantity, moved.limit_price) == (4.0, LOW - 1) and orders_at(sim, "m-1") == [
            ("Submitted", 4.0)
        ]
        gone = await m.cancel_order("m-1", timeout=10)
        assert gone.status == "Cancelled" and orders_at(sim, "m-1") == [("Cancelled", 4.0)]
        assert (await m.order_status("m-1", timeout=10)).status == "Cancelled"
        with pytest.raises(OrderRejected) as no:  # the broker cannot cancel it twice
            await m.cancel_order("m-1", timeout=10)
        assert no.value.code == 10148

        sold = await m.place_order(symbol="AAPL", action="SELL", quantity=3, order_type="MKT", timeout=10)
        assert sold.order_ref.startswith("ibgw-")  # a generated ref
        await poll_until(lambda: len(fills) == 1, 10, "the fill")
        [x] = [x for x in sim.broker.executions if x.order_ref == sold.order_ref]
        assert (fills[0].exec_id, fills[0].shares, fills[0].commission) == (x.exec_id, 3.0, 1.0)
        assert (await m.order_status(sold.order_ref, timeout=10)).status == "Filled"
        assert (placements(sim, "m-1"), placements(sim, sold.order_ref)) == (2, 1)  # place + modify; place
        assert m.metrics()["orders_in_doubt"] == 0 and m.metrics()["fills_recovered"] == 0
        tg.cancel_scope.cancel()
    assert [x.exec_id for x in fills] == [fills[0].exec_id]


async def test_read_only_refuses_at_once_and_nothing_reaches_the_simulator(tmp_path: Path) -> None:
    async with trading(tmp_path, readonly=True) as (sim, m):
        with pytest.raises(ReadOnly, match="IBKR_READONLY=0") as ro:
            await m.place_order(**limit("ro-1"))
        assert "Settings(readonly=False)" in str(ro.value)
        with pytest.raises(ReadOnly):
            await m.cancel_order("ro-1")
        assert dict(sim.broker.placements) == {} and sim.broker.orders == {}


async def test_refusals_before_anything_is_sent(tmp_path: Path) -> None:
    now = dt.datetime.now(dt.UTC).replace(second=0, microsecond=0)  # a window around now
    hour = dt.timedelta(hours=1)
    window = Window("test-window", (now - hour).time(), (now + hour).time(), ZoneInfo("UTC"))
    async with trading(tmp_path, maintenance=(window,)) as (sim, m):
        with pytest.raises(MaintenanceWindow, match="test-window"):
            await m.place_order(**limit("mw-1"))
        with pytest.raises(BadRequest, match="limit_price"):
            await m.place_order(**limit("bad-1", limit_price=None), allow_in_maintenance=True)
        assert dict(sim.broker.placements) == {}
        await m.place_order(**limit("dup-1"), allow_in_maintenance=True, timeout=10)
        with pytest.raises(DuplicateOrderRef):
            await m.place_order(**limit("dup-1"), allow_in_maintenance=True, timeout=10)
        assert dict(sim.broker.placements) == {"dup-1": 1}
        sim.reject_next_order("no margin")
        with pytest.raises(OrderRejected, match="no margin") as rej:
            await m.place_order(**limit("rej-1"), allow_in_maintenance=True, timeout=10)
        assert rej.value.code == 201 and orders_at(sim, "rej-1") == []
        with pytest.raises(OrderRejected):  # and asking later tells the same
            await m.order_status("rej-1", timeout=10)


async def test_worker_killed_the_moment_the_order_arrives_returns_the_live_order(tmp_path: Path) -> None:
    async with trading(tmp_path) as (sim, m):
        pid = m.worker_pid
        assert pid is not None
        on_sim_order(sim, "kill-1", lambda: os.kill(pid, signal.SIGKILL))
        st = await m.place_order(**limit("kill-1"), timeout=20)
        assert m.worker_pid != pid  # answered by the next session's reconciliation
        [o] = sim.broker.orders_by_ref("kill-1")
        assert (st.status, st.perm_id, st.order_id) == ("Submitted", o.perm_id, o.order_id)
        assert placements(sim, "kill-1") == 1
        assert m.metrics()["orders_resolved"] == 1 and m.metrics()["orders_in_doubt"] == 0


async def test_a_send_lost_with_its_session_is_not_placed_and_a_retry_is_safe(tmp_path: Path) -> None:
    async with trading(tmp_path) as (sim, m):
        sim.drop_on_place("discard")
        with pytest.raises(OrderNotPlaced) as lost:
            await m.place_order(**limit("lost-1"), timeout=20)
        assert lost.value.order_ref == "lost-1"
        assert orders_at(sim, "lost-1") == [] and placements(sim, "lost-1") == 1
        st = await m.place_order(**limit("lost-1"), timeout=20)  # proven not placed: the same ref again
        assert orders_at(sim, "lost-1") == [("Submitted", 10.0)] and st.status == "Submitted"


async def test_gateway_down_past_the_deadline_is_in_doubt_then_resolved(tmp_path: Path) -> None:
    async with trading(tmp_path) as (sim, m):
        sim.drop_on_place("before_ack")
        on_sim_order(sim, "down-1", lambda: sim.down_for(3.0))
        with pytest.raises(OrderInDoubt) as doubt:
            await m.place_order(**limit("down-1"), timeout=1.0)
        assert doubt.value.order_ref == "down-1" and m.metrics()["orders_in_doubt"] == 1
        with pytest.raises(OrderInDoubt):  # a modify waits for the truth first
            await m.modify_order("down-1", quantity=1.0)
        st = await m.order_status("down-1", timeout=30)
        [o] = sim.broker.orders_by_ref("down-1")
        assert (st.status, st.perm_id) == ("Submitted", o.perm_id) and placements(sim, "down-1") == 1
        assert m.metrics()["orders_in_doubt"] == 0 and m.metrics()["orders_resolved"] == 1


async def test_an_ack_record_lost_with_the_machine_is_resolved_from_the_broker(tmp_path: Path) -> None:
    """The ack record is fsync'd after the answer, not before: should the machine fail first,
    the restarted trader finds the placement unresolved and asks the broker, by order_ref."""
    async with trading_sim() as sim:
        async with ConnectionManager(order_settings(tmp_path, sim.port)) as m:
            await m.wait_connected(20)
            st = await m.place_order(**limit("acked-1"), timeout=10)
            # durable soon after, off the loop, with no later record to carry it (fsm.orders._syncer)
            await poll_until(lambda: not m._orders.journal.unsynced, 5, "the ack record fsync'd")
        [journal] = tmp_path.glob("orders-*.jsonl")
        records = journal.read_bytes().splitlines(keepends=True)
        assert [json.loads(r)["t"] for r in records] == ["intent", "ack"]
        journal.write_bytes(records[0])  # the page cache lost with the machine: the ack never was
        async with ConnectionManager(order_settings(tmp_path, sim.port)) as m:
            assert m.metrics()["orders_in_doubt"] == 1
            again = await m.order_status("acked-1", timeout=30)
            assert (again.status, again.perm_id, again.order_id) == ("Submitted", st.perm_id, st.order_id)
            assert m.metrics()["orders_in_doubt"] == 0 and placements(sim, "acked-1") == 1


async def test_a_fill_during_an_outage_is_delivered_once_and_never_again(tmp_path: Path) -> None:
    async with trading_sim() as sim:
        async with (
            ConnectionManager(order_settings(tmp_path, sim.port)) as m,
            anyio.create_task_group() as tg,
        ):
            await m.wait_connected(20)
            fills: list[Execution] = []
            tg.start_soon(collect, m, fills)
            await m.place_order(**limit("away-1"), timeout=10)
            sim.down_for(0.5)
            await sim.wait_until(lambda s: not s.sessions, 10)
            sim.fill_order("away-1")  # the market reaches it while no session is up
            await poll_until(lambda: len(fills) == 1, 20, "the fill found after the outage")
            [x] = [x for x in sim.broker.executions if x.order_ref == "away-1"]
            assert (fills[0].exec_id, fills[0].commission) == (x.exec_id, 1.0)
            assert m.metrics()["fills_recovered"] == 1

            done = m.metrics()["reconciliations"]
            pid = m.worker_pid
            assert pid is not None
            os.kill(pid, signal.SIGKILL)  # a second crash: the next session reconciles again
            await poll_until(lambda: m.metrics()["reconciliations"] > done, 20, "the next reconciliation")
            assert [f.exec_id for f in fills] == [x.exec_id] and m.metrics()["fills_recovered"] == 1
            tg.cancel_scope.cancel()

        # a restart of the trader: the broker still reports the fill, the journal remembers it
        async with ConnectionManager(order_settings(tmp_path, sim.port)) as m2:
            await poll_until(lambda: m2.metrics()["reconciliations"] >= 1, 20, "the first reconciliation")
            assert m2.metrics()["fills_recovered"] == 0


TRADER = """
import sys, anyio, pathlib
from support.orders import limit, order_settings
from fsm.manager import ConnectionManager

async def main() -> None:
    async with ConnectionManager(order_settings(pathlib.Path(sys.argv[1]), int(sys.argv[2]))) as m:
        await m.wait_connected(30)
        print("placing", flush=True)
        await m.place_order(**limit(sys.argv[3]), timeout=30)
        print("placed", flush=True)

anyio.run(main)
"""


@pytest.mark.parametrize("drop", [None, "discard"], ids=["order-live", "order-lost"])
async def test_a_trader_killed_with_an_order_in_flight_resolves_it_from_the_journal_after_restart(
    tmp_path: Path, drop: str | None
) -> None:
    script = tmp_path / "trader.py"
    script.write_text(TRADER)
    state = tmp_path / "state"
    ref = f"trader-{drop or 'live'}"
    async with trading_sim() as sim:
        if drop:
            sim.drop_on_place(drop)
        env = {**os.environ, "PYTHONPATH": f"{REPO / 'tests'}{os.pathsep}{REPO}"}
        trader = subprocess.Popen(
            [sys.executable, str(script), str(state), str(sim.port), ref], env=env, cwd=REPO
        )
        try:
            on_sim_order(sim, ref, lambda: os.kill(trader.pid, signal.SIGKILL))
            await sim.wait_until(lambda s: s.broker.placements[ref] == 1, 60)
            assert await anyio.to_thread.run_sync(trader.wait, 10) == -signal.SIGKILL
        finally:
            if trader.poll() is None:
                trader.kill()
        async with ConnectionManager(order_settings(state, sim.port)) as m:
            assert m.metrics()["orders_in_doubt"] == 1  # read back from the journal
            if drop:
                with pytest.raises(OrderNotPlaced):
                    await m.order_status(ref, timeout=30)
                assert orders_at(sim, ref) == []
            else:
                st = await m.order_status(ref, timeout=30)
                [o] = sim.broker.orders_by_ref(ref)
                assert (st.status, st.perm_id, st.order_id) == ("Submitted", o.perm_id, o.order_id)
            assert m.metrics()["orders_in_doubt"] == 0 and placements(sim, ref) == 1
