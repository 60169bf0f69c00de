"""Handlers for orders and what the broker replays: place, cancel, open and completed orders,
executions. Layouts: trading-surface.md B.5 and B.6; the desk (orderflow.py) does the work."""

from __future__ import annotations

from . import orderwire, wire
from .broker import ExecutionFilter
from .registry import handler
from .session import Session


@handler(wire.PLACE_ORDER)
def place_order(s: Session, f: list[str]) -> None:
    s.gateway.desk.place(s, f)


@handler(wire.CANCEL_ORDER)
def cancel_order(s: Session, f: list[str]) -> None:
    s.gateway.desk.cancel(s, int(f[2]))


@handler(wire.REQ_GLOBAL_CANCEL)
def req_global_cancel(s: Session, f: list[str]) -> None:
    s.gateway.desk.global_cancel(s)


def _open_orders(s: Session, client_id: int | None) -> None:
    for o in s.gateway.broker.open_orders(client_id):
        s.send(orderwire.open_order(s.version, o), orderwire.order_status(o))
    s.send(wire.open_order_end())


@handler(wire.REQ_OPEN_ORDERS)
def req_open_orders(s: Session, f: list[str]) -> None:
    """This client id's working orders (also the start-up sync's way of restoring them)."""
    assert s.client_id is not None
    _open_orders(s, s.client_id)


@handler(wire.REQ_ALL_OPEN_ORDERS)
def req_all_open_orders(s: Session, f: list[str]) -> None:
    """Every client's working orders: visible, not bound to the one asking."""
    _open_orders(s, None)


@handler(wire.REQ_AUTO_OPEN_ORDERS)
def req_auto_open_orders(s: Session, f: list[str]) -> None:
    """Client id 0 binding manual TWS orders: the simulator has none; no reply."""


@handler(wire.REQ_COMPLETED_ORDERS)
def req_completed_orders(s: Session, f: list[str]) -> None:
    """The day's filled and cancelled orders of every client (all are API orders here)."""
    s.send(*(orderwire.completed_order(s.version, o) for o in s.gateway.broker.completed_orders()))
    s.send(wire.completed_orders_end())


@handler(wire.REQ_EXECUTIONS)
def req_executions(s: Session, f: list[str]) -> None:
    """[7, 3, reqId, clientId, acctCode, time, symbol, secType, exchange, side]: the day's
    executions that pass the filter, each with its commission report, then the end."""
    req_id = int(f[2])
    flt = ExecutionFilter(int(f[3] or 0), *f[4:10])
    for x in s.gateway.broker.executions_matching(flt):
        s.send(wire.execution(s.version, req_id, x), wire.commission_report(x))
    s.send(wire.execution_end(req_id))
