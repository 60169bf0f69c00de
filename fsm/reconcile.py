"""Reconciliation, pure: what the journal asked for against what the broker holds.

Input: the journal's unresolved requests (each knowing whether the session it was sent in has
ended: only then is the broker's silence an answer), and the broker's word from one session:
open orders, completed orders, executions. Output: one resolution per request, the broker's
state of every order found, and the executions not yet delivered (each once).

Matching, as trading-surface.md C.3 recommends: by order_ref first, perm_id second, order_id
third (open orders only: completed orders carry no order id). A request resolves to

- ``done``      it took effect: the order exists (place), has the requested fields (modify),
                is cancelled (cancel);
- ``not_done``  it did not: no trace of the order although its session has ended (place), the
                fields differ although it has ended or the order is final (modify), the order
                works on after its session ended or it filled (cancel);
- ``in_doubt``  the broker cannot tell yet: the request's session is still the current one.

No I/O, no clock: fsm.orders feeds it and acts on the result.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec

from worker.orders_protocol import TERMINAL, Execution, OrderState

__all__ = ["BrokerView", "Pending", "Reconciliation", "Resolution", "find", "has_fields", "reconcile"]

Kind = Literal["done", "not_done", "in_doubt"]
CANCELLED = frozenset({"Cancelled", "ApiCancelled"})
MODIFIABLE = ("quantity", "order_type", "limit_price", "stop_price", "tif")


@dataclass(frozen=True, slots=True)
class Pending:
    """An unresolved request from the journal. ``settled``: the session it was sent in has
    ended (or the process that sent it has), so it can no longer reach the broker."""

    ref: str
    seq: int
    op: Literal["place", "modify", "cancel"]
    settled: bool
    order_id: int = 0
    perm_id: int = 0
    params: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class BrokerView:
    """The broker's word from one session."""

    open_orders: Sequence[OrderState] = ()
    completed_orders: Sequence[OrderState] = ()
    executions: Sequence[Execution] = ()


@dataclass(frozen=True, slots=True)
class Resolution:
    ref: str
    seq: int
    kind: Kind
    state: OrderState | None  # the order as the broker has it (None: no trace)


@dataclass(frozen=True, slots=True)
class Reconciliation:
    resolutions: list[Resolution]
    states: dict[str, OrderState]  # journal ref -> the broker's state of that order
    fills: list[Execution]  # not delivered before; unique by exec_id; oldest first


def reconcile(
    pending: Iterable[Pending],
    known: Mapping[str, tuple[int, int]],
    broker: BrokerView,
    delivered: Iterable[str],
) -> Reconciliation:
    """``known``: every journalled ref -> (order_id, perm_id) as far as the journal knows them
    (0 unknown); ``delivered``: execution ids already handed to the trader."""
    states: dict[str, OrderState] = {}
    for ref, (order_id, perm_id) in known.items():
        st = find(broker, ref, perm_id, order_id)
        if st is not None:
            states[ref] = st
    resolutions = [
        _resolve(p, states.get(p.ref) or find(broker, p.ref, p.perm_id, p.order_id)) for p in pending
    ]
    seen = set(delivered)
    fills: list[Execution] = []
    for x in sorted(broker.executions, key=lambda x: (x.time, x.exec_id)):
        if x.exec_id not in seen:
            seen.add(x.exec_id)
            fills.append(x)
    return Reconciliation(resolutions, states, fills)


def find(broker: BrokerView, ref: str, perm_id: int = 0, order_id: int = 0) -> OrderState | None:
    """The broker's state of one order: by ref (agreeing with a known perm_id), then perm_id,
    then order_id; from the executions alone as a last resort. None: no trace."""

    def agrees(s: OrderState) -> bool:
        return not perm_id or s.perm_id == perm_id

    orders = [*broker.open_orders, *broker.completed_orders]
    found = (
        next((s for s in orders if s.order_ref == ref and agrees(s)), None)
        or (next((s for s in orders if s.perm_id == perm_id), None) if perm_id else None)
        or (next((s for s in broker.open_orders if s.order_id == order_id), None) if order_id else None)
    )
    fills = [
        x
        for x in broker.executions
        if (x.order_ref == ref and (not perm_id or x.perm_id == perm_id))
        or (perm_id and x.perm_id == perm_id)
        or (found is not None and x.perm_id == found.perm_id)
    ]
    if found is None:
        return _from_fills(ref, fills) if fills else None
    return _enrich(found, fills, order_id)


def _enrich(s: OrderState, fills: Sequence[Execution], order_id: int) -> OrderState:
    """A completed order lacks its order id and average price: the fills and journal know."""
    changes: dict[str, Any] = {}
    if not s.order_id:
        changes["order_id"] = next((x.order_id for x in fills if x.order_id), order_id)
    shares = sum(x.shares for x in fills)
    if fills and not s.avg_fill_price and shares:
        changes["avg_fill_price"] = round(sum(x.shares * x.price for x in fills) / shares, 6)
    if fills and not s.filled:
        changes["filled"] = shares
        changes["remaining"] = max(0.0, s.quantity - shares)
    return msgspec.structs.replace(s, **changes) if changes else s


def _from_fills(ref: str, fills: Sequence[Execution]) -> OrderState:
    """Only executions show the order (it exists: it filled). Its status is not guessed."""
    last = max(fills, key=lambda x: x.cum_qty)
    shares = sum(x.shares for x in fills)
    return OrderState(
        order_ref=ref or last.order_ref, order_id=last.order_id, perm_id=last.perm_id, status="Unknown",
        filled=shares, remaining=0.0, avg_fill_price=last.avg_price,
        action="BUY" if last.side == "BOT" else "SELL", quantity=shares, order_type="", limit_price=None,
        stop_price=None, tif="", con_id=last.con_id, symbol=last.symbol, account=last.account, client_id=0,
    )  # fmt: skip


def _resolve(p: Pending, st: OrderState | None) -> Resolution:
    def out(kind: Kind) -> Resolution:
        return Resolution(p.ref, p.seq, kind, st)

    if p.op == "place":
        if st is not None:
            return out("done")
        return out("not_done" if p.settled else "in_doubt")
    if st is None:  # the order itself is gone from the broker's view
        return out("not_done" if p.settled else "in_doubt")
    if p.op == "cancel":
        if st.status in CANCELLED:
            return out("done")
        return out("not_done" if p.settled or st.status in TERMINAL else "in_doubt")
    if has_fields(st, p.params):
        return out("done")
    return out("not_done" if p.settled or st.status in TERMINAL else "in_doubt")


def has_fields(st: OrderState, changes: Mapping[str, Any]) -> bool:
    """The order carries every field a modify asked for (None: not asked)."""
    return all(changes.get(k) is None or changes[k] == getattr(st, k) for k in MODIFIABLE)
