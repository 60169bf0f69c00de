"""The order messages, byte for byte against the reference and decoded by ib_async's own decoder.

ib_async drops a message one field short (or, for fixed-arity ones, one field long) with only a
log line, so each layout is fed to the real `ib_async.decoder.Decoder` at every server version
ib_async 2.1.0 can negotiate, and what it built is checked field by field.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from dataclasses import replace

import pytest
from ib_async import IB

from gatewaysim import orderwire, wire
from gatewaysim.broker import Order
from gatewaysim.contracts import NoListing, parse_contract
from gatewaysim.instruments import by_con_id

AAPL = by_con_id(265598)
VERSIONS = (157, 165, 170, 176, 177, 178)
# Appendix 1: LimitOrder("BUY", 10, 149.5, orderRef="strat-A:0001", tif="DAY", account="DU1234567"), id 503
CAPTURED_LMT = (
    "3|503|265598|AAPL|STK||0.0|||SMART|NASDAQ|USD|AAPL|NMS|||BUY|10|LMT|149.5||DAY||DU1234567|O|0|strat-A:0001"
    "|1|0|0|0|0|0|0|0||0.0|||||||0||-1|0|||0|||0|0||0||||||0|||||0|||||||||||0|||0|0|||0||0|0|0|0|||||||0"
    "|||||||||0|0|0|0|||0||"
)


@pytest.fixture
def ib() -> Iterator[IB]:
    """An IB whose decoder we feed by hand; its futures want an event loop."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    yield IB()
    asyncio.set_event_loop(None)
    loop.close()


def order(**kw: object) -> Order:
    """A plain LMT order as the broker holds it, with `kw` changed."""
    o = Order(
        7, 503, 900000001, AAPL, "DU1234567", "BUY", 10.0, "LMT", 149.5, None, "DAY", "strat-A:0001", False, 0
    )
    return replace(o, **kw)  # type: ignore[arg-type]


def fields(msg: bytes) -> list[str]:
    return wire.decode_fields(msg[4:])


def decode(ib: IB, version: int, msg: bytes, caplog: pytest.LogCaptureFixture) -> None:
    from ib_async.decoder import Decoder

    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="ib_async"):
        Decoder(ib.wrapper, version).interpret(fields(msg))
    assert [r.getMessage() for r in caplog.records] == []


def test_place_order_parses_the_captured_frame() -> None:
    p = orderwire.parse_place_order(CAPTURED_LMT.split("|"))
    assert (p.order_id, p.contract.con_id, p.contract.symbol, p.action, p.quantity, p.order_type) == (
        503,
        265598,
        "AAPL",
        "BUY",
        10,
        "LMT",
    )
    assert (p.lmt_price, p.aux_price, p.tif, p.account, p.order_ref, p.transmit) == (
        149.5,
        None,
        "DAY",
        "DU1234567",
        "strat-A:0001",
        True,
    )
    assert (p.contract.primary_exchange, p.contract.trading_class) == ("NASDAQ", "NMS")
    assert p.contract.resolve() == AAPL
    with pytest.raises(IndexError):
        orderwire.parse_place_order(CAPTURED_LMT.split("|")[:30])


def test_one_contract_parser_for_data_requests_and_orders() -> None:
    """reqMktData carries the contract at 3, placeOrder at 2: the same fields, one parser."""
    order_fields = CAPTURED_LMT.split("|")
    mkt_data = ["1", "11", "9", *order_fields[2:14], "0", "", "0", "0", ""]
    assert parse_contract(mkt_data, 3) == parse_contract(order_fields, 2)
    assert replace(parse_contract(order_fields, 2), con_id=0, primary_exchange="").resolve() == AAPL
    dual = replace(
        parse_contract(order_fields, 2), con_id=0, symbol="DUAL", local_symbol="", trading_class=""
    )
    with pytest.raises(NoListing, match="DUAL is ambiguous"):
        replace(dual, primary_exchange="").resolve()
    assert dual.resolve().con_id == 900002  # NASDAQ names one of the two listings
    with pytest.raises(NoListing, match="No security definition"):
        replace(dual, symbol="NOPE").resolve()
    with pytest.raises(IndexError):
        parse_contract(mkt_data[:14], 3)
    with pytest.raises(ValueError):
        parse_contract(["x", "AAPL", *order_fields[3:14]], 0)


@pytest.mark.parametrize("version", VERSIONS)
def test_open_order_and_status_decode_at_every_version(
    ib: IB, version: int, caplog: pytest.LogCaptureFixture
) -> None:
    o = order(status="Submitted")
    msg = orderwire.open_order(version, o)
    extra = (version >= 159) + (version >= 160) + (version >= 162) + 5 * (version >= 170) + (version < 177)
    assert len(fields(msg)) == 119 + extra  # 127 at 178 (appendix 2)
    decode(ib, version, msg, caplog)
    [trade] = ib.openTrades()
    assert (trade.order.orderId, trade.order.clientId, trade.order.permId) == (503, 7, 900000001)
    assert (trade.order.lmtPrice, trade.order.orderRef, trade.orderStatus.status) == (
        149.5,
        "strat-A:0001",
        "Submitted",
    )
    assert trade.contract.conId == 265598 and trade.order.totalQuantity == 10.0

    o.filled, o.avg_fill_price, o.last_fill_price, o.status = 4.0, 149.5, 149.5, "Submitted"
    status = orderwire.order_status(o)
    assert fields(status) == [
        "3",
        "503",
        "Submitted",
        "4.0",
        "6.0",
        "149.5",
        "900000001",
        "0",
        "149.5",
        "7",
        "",
        "0.0",
    ]
    decode(ib, version, status, caplog)
    assert (trade.orderStatus.filled, trade.orderStatus.remaining) == (4.0, 6.0)


@pytest.mark.parametrize("version", VERSIONS)
def test_completed_order_decodes_at_every_version(
    ib: IB, version: int, caplog: pytest.LogCaptureFixture
) -> None:
    o = order(
        status="Filled",
        filled=10.0,
        completed_time="20261130 20:47:02 UTC",
        completed_status="Filled Size: 10",
    )
    msg = orderwire.completed_order(version, o)
    assert len(fields(msg)) == 91 + 5 * (version >= 170) + (version < 177)  # 96 at 178 (appendix 4)
    ib.wrapper.startReq("completedOrders")
    decode(ib, version, msg, caplog)
    [trade] = ib.wrapper._results["completedOrders"]
    assert (trade.order.permId, trade.order.orderId, trade.order.orderRef) == (900000001, 0, "strat-A:0001")
    assert (trade.orderStatus.status, trade.order.filledQuantity) == ("Filled", 10.0)


def test_execution_and_exactly_eight_field_commission(ib: IB, caplog: pytest.LogCaptureFixture) -> None:
    fill = wire.Fill(
        "0000e0d5.35a4e901.01.01", "DU1234567", AAPL, "BOT", 4.0, 149.5, "20261130 20:46:30 UTC", 503,
        900000001, 7, 1.0, "strat-A:0001", cum_qty=4.0, avg_price=149.5, realized_pnl=None,
    )  # fmt: skip
    msg = wire.execution(178, -1, fill)
    assert len(fields(msg)) == 32 and fields(msg)[26] == "strat-A:0001"
    decode(ib, 178, msg, caplog)
    report = wire.commission_report(fill)
    assert fields(report) == ["59", "1", fill.exec_id, "1.0", "USD", wire.UNSET_DOUBLE, wire.UNSET_DOUBLE, ""]
    decode(ib, 178, report, caplog)
    [got] = ib.fills()
    assert (got.execution.orderRef, got.execution.shares, got.commissionReport.commission) == (
        "strat-A:0001",
        4.0,
        1.0,
    )
    assert got.commissionReport.realizedPNL == 0.0
