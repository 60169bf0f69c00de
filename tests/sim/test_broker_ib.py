"""The simulator's broker against the real, unmodified ib_async 2.1.0 client, in-process.

This proves the simulator, independent of our worker: orders are acknowledged, fill when the
seeded price process reaches them, report executions and commissions, can be modified and
cancelled, are refused as IB refuses them, and outlive the session that placed them. The rig
(conftest.py) pins the simulator's wall clock to a trading day running 8x real time, and
checks at the end that ib_async dropped none of the messages the simulator sent.
"""

from __future__ import annotations

import pytest
from conftest import BrokerRig, contract_of
from ib_async import IB, Contract, LimitOrder, MarketOrder, Stock, StopOrder, Trade

from gatewaysim import Faults
from gatewaysim.accounts import AAPL
from gatewaysim.broker import ib_time

pytestmark = [pytest.mark.anyio, pytest.mark.parametrize("anyio_backend", ["asyncio"])]

CROSS_WAIT = 5.0 + 2.0  # the crossing's horizon plus slack


def codes(ib: IB) -> list[int]:
    got: list[int] = []
    ib.errorEvent += lambda req_id, code, msg, contract: got.append(code)
    return got


def far_limit(action: str = "BUY") -> float:
    """A limit no price in the test's lifetime reaches."""
    return round(AAPL.base_price * (0.5 if action == "BUY" else 1.5), 2)


async def working(rig: BrokerRig, ib: IB, trade: Trade) -> None:
    await rig.until(ib, lambda: trade.orderStatus.status == "Submitted")


async def test_lmt_is_acknowledged_then_fills_when_the_price_crosses(
    anyio_backend: str, rig: BrokerRig
) -> None:
    ib = await rig.connect(7)
    x = rig.crossing("LMT")
    seen: list[str] = []
    trade = ib.placeOrder(contract_of(x.ins), LimitOrder(x.action, 10, x.price, orderRef="lmt-1", tif="GTC"))
    trade.statusEvent += lambda t: seen.append(t.orderStatus.status)
    await working(rig, ib, trade)
    assert trade.order.orderId >= 1 and trade.order.permId >= 900_000_001
    assert rig.now_tick() < x.tick  # acknowledged before the market reached it

    await rig.until(ib, trade.isDone, CROSS_WAIT)
    assert trade.orderStatus.status == "Filled" and seen[:2] == ["PreSubmitted", "Submitted"]
    [fill] = trade.fills
    ex = fill.execution
    assert (ex.orderId, ex.permId, ex.clientId, ex.orderRef) == (
        trade.order.orderId,
        trade.order.permId,
        7,
        "lmt-1",
    )
    assert (ex.side, ex.shares, ex.price, ex.cumQty) == (
        "BOT" if x.action == "BUY" else "SLD",
        10,
        x.price,
        10,
    )
    fill_ns = rig.prices.tick_time_ns(x.tick)
    assert ex.time.strftime("%Y%m%d %H:%M:%S UTC") == ib_time(fill_ns)  # at the predicted tick
    await rig.until(ib, lambda: fill.commissionReport.commission > 0)
    assert fill.commissionReport.commission == 1.0 and fill.commissionReport.currency == "USD"

    [o] = rig.sim.broker.orders_by_ref("lmt-1")
    assert (o.status, o.placed, rig.sim.broker.placements["lmt-1"]) == ("Filled", 1, 1)
    positions = {(p.contract.conId, p.position) for p in await ib.reqPositionsAsync()}
    start = {AAPL.con_id: 100.0, 272093: 50.0}.get(x.ins.con_id, 0.0)
    assert (x.ins.con_id, start + (10 if x.action == "BUY" else -10)) in positions


async def test_stop_triggers_when_the_last_price_reaches_it(anyio_backend: str, rig: BrokerRig) -> None:
    ib = await rig.connect(7)
    x = rig.crossing("STP")
    trade = ib.placeOrder(contract_of(x.ins), StopOrder(x.action, 3, x.price, orderRef="stp-1"))
    await working(rig, ib, trade)
    await rig.until(ib, trade.isDone, CROSS_WAIT)
    [fill] = trade.fills
    taken = x.quote.ask if x.action == "BUY" else x.quote.bid
    assert (fill.execution.price, fill.execution.orderRef) == (taken, "stp-1")
    assert fill.execution.time.strftime("%Y%m%d %H:%M:%S UTC") == ib_time(x.quote.time_ns)


async def test_market_order_fills_at_once_and_moves_positions_cash_and_pnl(
    anyio_backend: str, rig: BrokerRig
) -> None:
    ib = await rig.connect(7)
    trade = ib.placeOrder(contract_of(AAPL), MarketOrder("SELL", 5, orderRef="mkt-1"))
    await rig.until(ib, trade.isDone)
    [fill] = trade.fills
    price = fill.execution.price
    [o] = rig.sim.broker.orders_by_ref("mkt-1")
    assert o.avg_fill_price == price and o.tif == "DAY"  # ib_async sent no tif: IB's default
    await rig.until(ib, lambda: fill.commissionReport.commission > 0)
    report = fill.commissionReport
    assert report.commission == 1.0
    assert report.realizedPNL == round(5 * (price - 150.25) - 1.0, 2)  # closed 5 of a 150.25 long
    assert {(p.contract.symbol, p.position) for p in await ib.reqPositionsAsync()} >= {("AAPL", 95.0)}
    summary = {v.tag: v.value for v in await ib.accountSummaryAsync()}
    assert summary["TotalCashValue"] == f"{60_500 + 5 * price - 1.0:.2f}"


async def test_modify_then_cancel(anyio_backend: str, rig: BrokerRig) -> None:
    ib = await rig.connect(7)
    got = codes(ib)
    order = LimitOrder("BUY", 10, far_limit(), orderRef="mod-1", tif="DAY")
    trade = ib.placeOrder(contract_of(AAPL), order)
    await working(rig, ib, trade)
    order.totalQuantity, order.lmtPrice = 20, far_limit() + 1
    assert ib.placeOrder(contract_of(AAPL), order) is trade  # same id: a modification
    await rig.until(ib, lambda: trade.orderStatus.remaining == 20)
    [o] = rig.sim.broker.orders_by_ref("mod-1")
    assert (o.placed, o.quantity, o.lmt_price, o.order_id) == (2, 20, far_limit() + 1, order.orderId)

    ib.cancelOrder(order)
    await rig.until(ib, lambda: trade.orderStatus.status == "Cancelled" and 202 in got)
    assert o.status == "Cancelled" and rig.sim.broker.open_orders(None) == []
    [done] = await ib.reqCompletedOrdersAsync(False)
    assert (done.order.permId, done.order.orderRef, done.orderStatus.status) == (
        o.perm_id,
        "mod-1",
        "Cancelled",
    )

    ib.client.cancelOrder(order.orderId, "")  # again: IB says it cannot
    await rig.until(ib, lambda: 10148 in got)
    ib.client.cancelOrder(order.orderId + 100, "")  # an id nobody used
    await rig.until(ib, lambda: 10147 in got)


async def test_a_rejected_order_never_exists(anyio_backend: str, rig: BrokerRig) -> None:
    ib = await rig.connect(7)
    got: list[tuple[int, str]] = []
    ib.errorEvent += lambda req_id, code, msg, contract: got.append((code, msg))
    rig.sim.reject_next_order("no shortable shares")
    trade = ib.placeOrder(contract_of(AAPL), LimitOrder("SELL", 1, far_limit("SELL"), orderRef="rej-1"))
    await rig.until(ib, trade.isDone)
    assert trade.orderStatus.status == "Cancelled"  # ib_async has no Rejected status
    assert got == [(201, "Order rejected - reason:no shortable shares")]
    assert rig.sim.broker.orders_by_ref("rej-1") == [] and rig.sim.broker.placements["rej-1"] == 1
    again = ib.placeOrder(contract_of(AAPL), LimitOrder("SELL", 1, far_limit("SELL"), orderRef="rej-2"))
    await working(rig, ib, again)  # one rejection, then business as usual


@pytest.mark.parametrize("rig_faults", [Faults(read_only_api=True)])
async def test_read_only_api_refuses_orders(anyio_backend: str, rig: BrokerRig) -> None:
    ib = await rig.connect(7, readonly=True)
    got = codes(ib)
    trade = ib.placeOrder(contract_of(AAPL), MarketOrder("BUY", 1, orderRef="ro-1"))
    await rig.until(ib, lambda: 321 in got)
    assert trade.orderStatus.status == "ValidationError"  # 321 is a warning to ib_async
    assert rig.sim.broker.orders == {} and rig.sim.broker.placements == {}
    rig.sim.read_only_api(False)
    trade = ib.placeOrder(contract_of(AAPL), MarketOrder("BUY", 1, orderRef="ro-2"))
    await rig.until(ib, trade.isDone)
    assert trade.orderStatus.status == "Filled"


async def test_an_orders_contract_resolves_as_a_data_requests_does(
    anyio_backend: str, rig: BrokerRig
) -> None:
    ib = await rig.connect(7)
    got: list[tuple[int, int, str]] = []
    ib.errorEvent += lambda req_id, code, msg, contract: got.append((req_id, code, msg))
    dual = Contract(secType="STK", symbol="DUAL", exchange="SMART", currency="USD")
    ambiguous = ib.placeOrder(dual, LimitOrder("BUY", 1, 20.0, orderRef="dual-1"))
    unknown = ib.placeOrder(Stock("NOPE", "SMART", "USD"), LimitOrder("BUY", 1, 20.0, orderRef="nope-1"))
    await rig.until(ib, lambda: len(got) == 2)
    assert got == [
        (ambiguous.order.orderId, 200, "The contract description specified for DUAL is ambiguous."),
        (unknown.order.orderId, 200, "No security definition has been found for the request"),
    ]
    assert rig.sim.broker.orders == {}
    dual.primaryExchange = "NYSE"  # names one listing
    trade = ib.placeOrder(dual, LimitOrder("BUY", 1, 20.0, orderRef="dual-2"))
    await working(rig, ib, trade)
    [o] = rig.sim.broker.orders_by_ref("dual-2")
    assert o.ins.con_id == 900001
