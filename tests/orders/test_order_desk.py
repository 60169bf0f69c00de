"""OrderDesk's translation of ib_async's order words, unit-level on a real (unconnected) ib_async
IB: the broker's messages enter through ib_async's own Wrapper methods, as its decoder calls
them. Covers the codes the simulator does not send (399, 2109) and ib_async's inventions: a
warning's "ValidationError", an order error's "Cancelled", its own "PendingSubmit"."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest
from ib_async import IB, Contract, LimitOrder, Trade
from ib_async.objects import TradeLogEntry
from ib_async.order import OrderStatus

from worker.orders import OrderDesk, is_warning
from worker.orders_protocol import OrderEvent
from worker.protocol import Code, CommandError, Event

CID, OID, PERM = 7, 5, 900000001


@pytest.fixture
def desk() -> tuple[IB, OrderDesk, list[Event], Trade]:
    ib = IB()
    ib.wrapper.clientId = CID
    events: list[Event] = []
    d = OrderDesk(ib, CID, events.append)

    def place() -> Trade:  # what IB.placeOrder does besides writing to the socket
        order = LimitOrder("BUY", 10, 100.0, orderRef="desk-1", orderId=OID, clientId=CID)
        status = OrderStatus(orderId=OID, status=OrderStatus.PendingSubmit)
        trade = Trade(Contract(conId=265598, symbol="AAPL"), order, status, [], [])
        trade.log.append(TradeLogEntry(dt.datetime.now(dt.UTC), OrderStatus.PendingSubmit))
        ib.wrapper.trades[(CID, OID)] = trade
        return trade

    trade = d.send("place_order", place)
    return ib, d, events, trade


def submitted(ib: IB) -> None:
    ib.wrapper.orderStatus(OID, "Submitted", 0.0, 10.0, 0.0, PERM, 0, 0.0, CID, "", 0.0)


def said(events: list[Event]) -> list[tuple[str, object]]:
    return [(e.event, e.data.get("status", e.data.get("ib_code"))) for e in events]


def test_ib_asyncs_own_pending_submit_is_not_the_brokers_word(
    desk: tuple[IB, OrderDesk, list[Event], Trade],
) -> None:
    ib, d, events, trade = desk
    assert d.status_of(trade) == "PendingSubmit" and events == []  # ours, not yet acknowledged
    submitted(ib)
    assert d.status_of(trade) == "Submitted"
    st = d.state(trade)
    assert (st.status, st.perm_id, st.order_ref) == ("Submitted", PERM, "desk-1")  # permId from orderStatus
    assert said(events) == [(OrderEvent.ORDER_STATUS, "Submitted")]


@pytest.mark.parametrize("code", [399, 2109])
def test_a_warning_is_an_order_error_and_the_status_stays(
    desk: tuple[IB, OrderDesk, list[Event], Trade], code: int
) -> None:
    ib, d, events, trade = desk
    submitted(ib)
    ib.wrapper.error(OID, code, "Order Message: Warning: your order will not be placed until ...", "")
    assert trade.orderStatus.status == "ValidationError"  # ib_async's word
    assert d.status_of(trade) == "Submitted" and d.state(trade).status == "Submitted"  # the broker's
    assert said(events) == [(OrderEvent.ORDER_STATUS, "Submitted"), (OrderEvent.ORDER_ERROR, code)]
    assert is_warning(code)


def test_an_order_error_does_not_cancel_a_live_order_here(
    desk: tuple[IB, OrderDesk, list[Event], Trade],
) -> None:
    ib, d, events, trade = desk
    submitted(ib)
    ib.wrapper.error(OID, 10147, f"OrderId {OID} that needs to be cancelled is not found.", "")
    assert trade.orderStatus.status == "Cancelled"  # ib_async's guess (the order may have filled)
    assert d.status_of(trade) == "Submitted"
    assert said(events) == [(OrderEvent.ORDER_STATUS, "Submitted"), (OrderEvent.ORDER_ERROR, 10147)]
    assert not is_warning(10147) and not is_warning(201)


def test_202_alone_is_the_brokers_cancel(desk: tuple[IB, OrderDesk, list[Event], Trade]) -> None:
    ib, d, events, trade = desk
    submitted(ib)
    ib.wrapper.error(OID, 202, "Order Canceled - reason:", "")
    assert d.status_of(trade) == "Cancelled" and d.state(trade).remaining == 0.0
    assert said(events) == [
        (OrderEvent.ORDER_STATUS, "Submitted"),
        (OrderEvent.ORDER_STATUS, "Cancelled"),
        (OrderEvent.ORDER_ERROR, 202),
    ]


def test_an_error_for_a_request_that_is_not_an_order_is_not_an_order_error(
    desk: tuple[IB, OrderDesk, list[Event], Trade],
) -> None:
    ib, _, events, _ = desk
    ib.wrapper.error(4242, 354, "Requested market data is not subscribed", "")
    ib.wrapper.error(-1, 2104, "Market data farm connection is OK:usfarm", "")
    assert events == []


def test_events_are_held_while_a_command_waits_and_its_answer_says_them(
    desk: tuple[IB, OrderDesk, list[Event], Trade],
) -> None:
    ib, d, events, trade = desk

    async def place() -> None:
        waiting = asyncio.create_task(
            d.wait("place_order", OID, lambda *_: "ok" if d.state(trade).perm_id else None, 5)
        )
        await asyncio.sleep(0)  # the command is waiting now
        submitted(ib)
        assert events == []  # held: the answer will say it
        await waiting
        assert (d.answer(trade).status, events) == ("Submitted", [])

    asyncio.run(place())
    submitted(ib)  # the same word again: already said by the answer
    assert events == []
    ib.wrapper.error(OID, 202, "Order Canceled - reason:", "")
    assert said(events) == [(OrderEvent.ORDER_STATUS, "Cancelled"), (OrderEvent.ORDER_ERROR, 202)]


def test_a_command_that_fails_sends_the_held_state_before_its_error(
    desk: tuple[IB, OrderDesk, list[Event], Trade],
) -> None:
    ib, d, events, _trade = desk

    async def place() -> CommandError:
        waiting = asyncio.create_task(d.wait("place_order", OID, lambda *_: None, 0.05))
        await asyncio.sleep(0)
        submitted(ib)
        assert events == []
        with pytest.raises(CommandError) as failed:
            await waiting
        return failed.value

    err = asyncio.run(place())
    assert err.code == Code.REQUEST_TIMEOUT
    assert said(events) == [(OrderEvent.ORDER_STATUS, "Submitted")]  # out before the error answer
