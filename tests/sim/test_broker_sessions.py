"""The broker outlives sessions, against the real ib_async 2.1.0 client in-process.

Orders stay bound to the client id that placed them and keep working (and filling) while no
session of that client is up; a new session of that id gets them back through the start-up
sync, and the day's executions through reqExecutions; other client ids see them only through
reqAllOpenOrders. And the faults a trader's recovery must survive: the session dropped the
moment a placeOrder arrives (the order live, or lost), a fill while the client is away.
"""

from __future__ import annotations

import pytest
from conftest import BrokerRig, contract_of
from ib_async import IB, ExecutionFilter, LimitOrder, MarketOrder, Trade

from gatewaysim.accounts import AAPL

pytestmark = [pytest.mark.anyio, pytest.mark.parametrize("anyio_backend", ["asyncio"])]

LOW = round(AAPL.base_price * 0.5, 2)  # a BUY limit no price in a test's lifetime reaches


def codes(ib: IB) -> list[int]:
    got: list[int] = []
    ib.errorEvent += lambda req_id, code, msg, contract: got.append(code)
    return got


async def place_working(
    rig: BrokerRig, ib: IB, ref: str, qty: float = 10, limit: float = LOW, tif: str = "GTC"
) -> Trade:
    trade = ib.placeOrder(contract_of(AAPL), LimitOrder("BUY", qty, limit, orderRef=ref, tif=tif))
    await rig.until(ib, lambda: trade.orderStatus.status == "Submitted")
    return trade


async def test_a_fill_while_away_is_replayed_and_the_open_order_restored(
    anyio_backend: str, rig: BrokerRig
) -> None:
    ib = await rig.connect(7)
    filled = await place_working(rig, ib, "away-fill")
    still = await place_working(rig, ib, "away-open", qty=5, limit=LOW - 1)
    ids = {filled.order.orderId, still.order.orderId}
    rig.sim.drop_all()
    await rig.gone(7)
    rig.sim.fill_order("away-fill")  # the market reaches it while client 7 is away

    again = await rig.connect(7)
    [restored] = again.openTrades()  # by the start-up sync's reqOpenOrders
    o, s = restored.order, restored.orderStatus
    assert (o.orderId, o.permId, o.clientId, o.orderRef) == (
        still.order.orderId, still.order.permId, 7, "away-open",
    )  # fmt: skip
    assert (o.lmtPrice, o.totalQuantity, s.status, s.remaining) == (LOW - 1, 5, "Submitted", 5)
    assert rig.sim.next_valid_id(7) > max(ids)

    mine = await again.reqExecutionsAsync(ExecutionFilter(clientId=7))
    assert [(f.execution.orderRef, f.execution.shares, f.execution.price) for f in mine] == [
        ("away-fill", 10, LOW)
    ]
    assert mine[0].execution.permId == filled.order.permId
    [recovered] = [f for f in again.fills() if f.execution.orderRef == "away-fill"]  # ib_async keeps
    assert recovered.commissionReport.commission == 1.0  # the first copy and its commission
    assert await again.reqExecutionsAsync(ExecutionFilter(clientId=8)) == []
    assert await again.reqExecutionsAsync(ExecutionFilter(symbol="MSFT")) == []
    day = await again.reqExecutionsAsync(ExecutionFilter(acctCode="DU1234567", side="BUY"))
    assert {f.execution.orderRef for f in day} == {"", "away-fill"}  # the day: a TWS fill, then ours
    late = await again.reqExecutionsAsync(ExecutionFilter(time="20261125 23:00:00 UTC"))
    assert late == []
    [done] = await again.reqCompletedOrdersAsync(False)
    assert (done.order.orderRef, done.orderStatus.status, done.order.filledQuantity) == (
        "away-fill",
        "Filled",
        10,
    )

    again.cancelOrder(restored.order)  # the restored order is this client's to cancel
    await rig.until(again, restored.isDone)
    assert rig.sim.broker.open_orders(None) == []
    nxt = again.placeOrder(contract_of(AAPL), MarketOrder("BUY", 1, orderRef="after"))
    await rig.until(again, nxt.isDone)
    assert nxt.order.orderId > max(ids) and nxt.orderStatus.status == "Filled"


async def test_fill_while_away_fault_fills_as_the_session_drops(anyio_backend: str, rig: BrokerRig) -> None:
    ib = await rig.connect(7)
    await place_working(rig, ib, "gone-1")
    rig.sim.fill_while_away(True)
    assert rig.sim.broker.orders_by_ref("gone-1")[0].status == "Submitted"  # its client is here
    rig.sim.drop_all()
    await rig.gone(7)
    [o] = rig.sim.broker.orders_by_ref("gone-1")
    assert (o.status, o.filled, o.avg_fill_price) == ("Filled", 10, LOW)
    again = await rig.connect(7)
    assert again.openTrades() == []
    assert [f.execution.orderRef for f in again.fills()] == ["", "gone-1"]  # the start-up sync's


async def test_another_client_id_sees_the_order_only_through_req_all_open_orders(
    anyio_backend: str, rig: BrokerRig
) -> None:
    owner = await rig.connect(7)
    mine = await place_working(rig, owner, "shared-1")
    other = await rig.connect(8)
    got = codes(other)
    assert other.openTrades() == [] and await other.reqOpenOrdersAsync() == []
    [seen] = await other.reqAllOpenOrdersAsync()
    assert (seen.order.clientId, seen.order.orderId, seen.order.permId, seen.order.orderRef) == (
        7, mine.order.orderId, mine.order.permId, "shared-1",
    )  # fmt: skip
    other.client.cancelOrder(mine.order.orderId, "")  # not its order: IB does not find it
    await rig.until(other, lambda: 10147 in got)
    assert rig.sim.broker.orders_by_ref("shared-1")[0].status == "Submitted"
    assert mine.orderStatus.status == "Submitted"


@pytest.mark.parametrize("mode", ["before_ack", "discard"])
async def test_session_dropped_the_moment_a_place_order_arrives(
    anyio_backend: str, rig: BrokerRig, mode: str
) -> None:
    rig.sim.drop_on_place(mode)
    ib = await rig.connect(7)
    trade = ib.placeOrder(contract_of(AAPL), LimitOrder("BUY", 10, LOW, orderRef="drop-1", tif="GTC"))
    await rig.gone(7)
    assert trade.orderStatus.status == "PendingSubmit"  # never acknowledged
    assert rig.sim.faults.drop_on_place is None  # one placeOrder, then off
    assert rig.sim.broker.placements["drop-1"] == 1

    again = await rig.connect(7)
    live = [(t.order.orderId, t.order.orderRef) for t in again.openTrades()]
    if mode == "before_ack":
        assert live == [(trade.order.orderId, "drop-1")]  # the broker has it, working
    else:
        assert live == [] and rig.sim.broker.orders_by_ref("drop-1") == []  # it never existed
        assert await again.reqCompletedOrdersAsync(False) == []
    assert rig.sim.next_valid_id(7) > trade.order.orderId  # either way the id is spent


async def test_global_cancel_reaches_every_client(anyio_backend: str, rig: BrokerRig) -> None:
    a, b = await rig.connect(7), await rig.connect(8)
    ta, tb = await place_working(rig, a, "g-a"), await place_working(rig, b, "g-b", tif="DAY")
    codes_a = codes(a)
    b.reqGlobalCancel()
    await rig.until(a, ta.isDone)
    await rig.until(b, tb.isDone)
    assert (ta.orderStatus.status, tb.orderStatus.status) == ("Cancelled", "Cancelled")
    await rig.until(a, lambda: 202 in codes_a)


async def test_day_orders_end_with_the_day_and_gtc_orders_stay(anyio_backend: str, rig: BrokerRig) -> None:
    ib = await rig.connect(7)
    day = await place_working(rig, ib, "day-1", tif="DAY")
    gtc = await place_working(rig, ib, "gtc-1", tif="GTC")
    rig.sim.end_of_day()
    await rig.until(ib, day.isDone)
    assert day.orderStatus.status == "Cancelled" and gtc.orderStatus.status == "Submitted"
    assert [o.order_ref for o in rig.sim.broker.open_orders(7)] == ["gtc-1"]


async def test_partial_fills_take_the_quoted_size_tick_by_tick(anyio_backend: str, rig: BrokerRig) -> None:
    rig.sim.partial_fills(True)
    ib = await rig.connect(7)
    trade = ib.placeOrder(contract_of(AAPL), MarketOrder("BUY", 6000, orderRef="big-1"))
    await rig.until(ib, trade.isDone, 10)
    shares = [f.execution.shares for f in trade.fills]
    assert len(shares) >= 3 and sum(shares) == 6000 and max(shares) <= 2000
    assert [f.execution.cumQty for f in trade.fills] == [sum(shares[: i + 1]) for i in range(len(shares))]
    assert trade.orderStatus.status == "Filled" and trade.orderStatus.filled == 6000
