"""The worker's order commands and the order events it pushes (issue 14).

`register(registry, emit)` adds place_order, modify_order, cancel_order, open_orders,
completed_orders and executions to the command registry (worker.__main__ calls it).

ib_async reports an order in its own words, not always the broker's: it has no "Rejected"
(a refused order becomes "Cancelled", trading-surface.md B.5), any order error on a live order
turns it "Cancelled" locally (even a 10147 that raced a fill), a warning (399, 2109) turns it
"ValidationError", and its own placeOrder/cancelOrder write "PendingSubmit"/"PendingCancel" into
the trade's log. OrderDesk therefore keeps the status the broker last sent (`status_of`), says
the rest as `order_error` events, and answers each command from what the broker sent:

- place_order: the contract qualified first (worker.market's cache: an unknown or ambiguous
  one is refused with nothing sent); then acknowledged (openOrder/orderStatus with a permId) -> OrderState; an order
  error first -> `order_rejected` with IB's code; session lost first -> `session_lost`; no word
  within the timeout -> `request_timeout` (the order may be live: the manager reconciles).
- modify_order: the broker's next openOrder for it -> OrderState; an order error ->
  `order_rejected`.
- cancel_order: orderStatus Cancelled or error 202 -> OrderState; 10147/10148 (or any other
  order error) -> `order_rejected`.

Each command sends at most one message to the Gateway and never repeats it; every wait is
bounded by the command's timeout. A session connected read-only refuses all three at once
(`read_only`), with nothing sent.

Ordering, per order: `order_status` events are held while a command waits for the broker's word
on that order, and its answer carries the state they would have said (a place_order's answer is
one line, not three events and a line). The answer is written as soon as the command returns
(worker.__main__), before any later word from the broker is read, so an event after an answer
always says something newer than it; a command that fails sends the held state as an event
before its error. Events say each change once: a state already said (by an event or an answer)
is not said again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import Callable, Iterable
from dataclasses import fields
from datetime import UTC
from typing import Any, Literal

import msgspec
from ib_async import IB, ExecutionFilter, Fill, LimitOrder, MarketOrder, Order, StopOrder, Trade
from ib_async.objects import CommissionReport
from ib_async.order import OrderStatus

from worker.handlers import Context, Registry, Result
from worker.market import qualify_spec
from worker.orders_protocol import (
    ACKNOWLEDGED,
    ORDER_COMMANDS,
    TERMINAL,
    CancelOrderParams,
    CompletedOrdersParams,
    ExecutionsParams,
    ExecutionsResult,
    ModifyOrderParams,
    OpenOrdersParams,
    OrderCode,
    OrderErrorData,
    OrderEvent,
    OrdersResult,
    OrderState,
    PlaceOrderParams,
)
from worker.protocol import DEFAULT_REQUEST_TIMEOUT, Code, CommandError, Event, event
from worker.session import Session
from worker.snapshot import execution, order_state

log = logging.getLogger("worker.orders")

__all__ = ["OrderDesk", "is_warning", "register"]

COMMISSION_WAIT = 2.0  # s an `executions` answer waits for commission reports still missing
CANCELLED = frozenset({"Cancelled", "ApiCancelled"})

Emit = Callable[[Event], None]
Judgement = Literal["ok"] | CommandError | None


def is_warning(code: int) -> bool:
    """IB messages about an order that leave it as it was (399: held until the market opens,
    404: shares being located, 2100-2199: order event warnings such as 2109)."""
    return code in (399, 404) or 2100 <= code < 2200


def _timeout(timeout: float | None) -> float:
    return DEFAULT_REQUEST_TIMEOUT if timeout is None else timeout


class _Wait:
    """One command waiting for the broker's word on one order id."""

    def __init__(self, judge: Callable[[str, int, str], Judgement]) -> None:
        self.judge = judge  # (kind: "status" | "open" | "error", ib code, message) -> outcome
        self.future: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def offer(self, kind: str, code: int = 0, message: str = "") -> None:
        if self.future.done():
            return
        verdict = self.judge(kind, code, message)
        if verdict == "ok":
            self.future.set_result(None)
        elif isinstance(verdict, CommandError):
            self.future.set_exception(verdict)

    def fail(self, err: CommandError) -> None:
        if not self.future.done():
            self.future.set_exception(err)


class OrderDesk:
    """The orders of one ib_async session, as the broker has said them; pushes order events."""

    def __init__(self, ib: IB, client_id: int, emit: Emit) -> None:
        self.ib = ib
        self.client_id = client_id
        self._emit = emit
        self._local: set[int] = set()  # ids of trade log entries ib_async wrote itself
        self._muted = False  # inside our own placeOrder/cancelOrder call: its events are ib_async's
        self._waits: dict[int, list[_Wait]] = {}  # order id -> commands waiting (its events held)
        self._last: dict[int, tuple[Trade, OrderState]] = {}  # id(trade) -> last state said
        self._by_id: dict[int, Trade] = {}  # our orders by order id, and the refs they hold
        self._refs: set[str] = set()
        self._live: set[str] = set()  # exec ids ib_async reported as live fills (not query answers)
        self._sent_execs: set[str] = set()
        ib.orderStatusEvent += self._on_status
        ib.openOrderEvent += self._on_open_order
        ib.errorEvent += self._on_error
        ib.execDetailsEvent += self._on_exec_details
        ib.commissionReportEvent += self._on_commission
        ib.disconnectedEvent += self._on_disconnected
        self.index(ib.trades())  # what the session held before this desk (its start-up sync)

    # -------------------------------------------------------------------------- reading

    def status_of(self, trade: Trade) -> str:
        """The status the broker last sent for this order (see the module docstring)."""
        for e in reversed(trade.log):
            if id(e) in self._local or e.message == "Modify" or e.message.startswith("Fill "):
                continue
            if e.errorCode == 202:  # "Order Canceled": the broker's confirmation
                return "Cancelled"
            if e.errorCode == 0 and e.status != OrderStatus.ValidationError:
                return e.status
        if any(id(e) in self._local for e in trade.log):
            return OrderStatus.PendingSubmit  # ours, sent, not yet acknowledged
        status = trade.orderStatus.status  # a trade ib_async built from the broker's messages
        return "" if status == OrderStatus.ValidationError else status

    def state(self, trade: Trade) -> OrderState:
        """The order with the broker's status (not ib_async's reading of errors and warnings)
        and its permId from whichever of openOrder / orderStatus brought it."""
        st = order_state(trade)
        status, perm_id = self.status_of(trade), perm_of(trade)
        if (status, perm_id) == (st.status, st.perm_id):
            return st
        remaining = 0.0 if status in TERMINAL else st.remaining
        return msgspec.structs.replace(st, status=status, perm_id=perm_id, remaining=remaining)

    def mine(self, trade: Trade) -> bool:
        return trade.order.clientId == self.client_id and trade.order.orderId > 0

    def trade_by_id(self, order_id: int) -> Trade | None:
        return self._by_id.get(order_id)

    def holds_ref(self, ref: str) -> bool:
        return ref in self._refs

    def index(self, trades: Iterable[Trade]) -> None:
        """Know these trades by order id and ref (in O(1), however many the day brings). A trade
        enters ib_async by our placeOrder (send), an openOrder (its event) or the answer to a
        request for open or completed orders (the commands below); the session's own start-up
        sync comes before the desk and is indexed when it is made."""
        for t in trades:
            if self.mine(t):
                self._by_id.setdefault(t.order.orderId, t)
                self._refs.add(t.order.orderRef)

    # -------------------------------------------------------------------------- sending

    def send(self, command: str, action: Callable[[], Any], trade: Trade | None = None) -> Any:
        """Run our own placeOrder/cancelOrder: its synchronous events are muted and the log
        entries it writes are marked as ib_async's (not the broker's). No socket: `command`
        fails with not_connected, nothing sent."""
        before = len(trade.log) if trade is not None else 0
        self._muted = True
        try:
            out = action()
        except ConnectionError as exc:
            raise CommandError(
                Code.NOT_CONNECTED, f"{command}: not connected ({exc}); nothing was sent"
            ) from None
        finally:
            self._muted = False
        after = trade if trade is not None else out if isinstance(out, Trade) else None
        if after is not None:
            self._local.update(id(e) for e in after.log[before:])
            self.index((after,))
        return out

    def answer(self, trade: Trade) -> OrderState:
        """The state a command answers with; said, so events go on from there."""
        st = self.state(trade)
        self._last[id(trade)] = (trade, st)
        return st

    async def wait(
        self, command: str, order_id: int, judge: Callable[[str, int, str], Judgement], timeout: float
    ) -> None:
        """Until judge says ok (or raises its error), the session ends, or the timeout passes.
        The order's events are held meanwhile: on success the command answers with `answer()`;
        on failure the held state goes out as an event before the error."""
        w = _Wait(judge)
        self._waits.setdefault(order_id, []).append(w)
        ok = False
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(w.future)
            ok = True
        except TimeoutError:
            raise CommandError(
                Code.REQUEST_TIMEOUT,
                f"{command}: no answer from the broker about order {order_id} within {timeout:g} s; "
                f"it may still take effect: reconcile before sending it again",
            ) from None
        finally:
            waits = self._waits.get(order_id, [])
            if w in waits:
                waits.remove(w)
            if not waits:
                self._waits.pop(order_id, None)
                trade = self.trade_by_id(order_id)
                if not ok and trade is not None:
                    self._publish(trade)

    # -------------------------------------------------------------------------- ib_async events

    def _on_status(self, trade: Trade) -> None:
        if self._muted or not self.mine(trade):
            return
        last = trade.log[-1] if trade.log else None
        if last is not None and last.errorCode not in (0, 202):
            return  # ib_async's reading of an order error: said as order_error instead
        self._publish(trade)
        self._offer(trade.order.orderId, "status")

    def _on_open_order(self, trade: Trade) -> None:
        if not self.mine(trade):
            return
        self.index((trade,))
        if self._muted:
            return
        self._publish(trade)
        self._offer(trade.order.orderId, "open")

    def _on_error(self, req_id: int, code: int, message: str, _contract: Any) -> None:
        if req_id <= 0:
            return
        trade = self.trade_by_id(req_id)
        if trade is None and req_id not in self._waits:
            return  # not an order of ours (a data request's error)
        ref = trade.order.orderRef if trade is not None else ""
        self._emit(
            event(
                OrderEvent.ORDER_ERROR,
                OrderErrorData(order_ref=ref, order_id=req_id, ib_code=code, message=message),
            )
        )
        if trade is not None and code == 202:
            self._publish(trade)
        self._offer(req_id, "error", code, message)

    def _on_exec_details(self, trade: Trade, fill: Fill) -> None:
        self._live.add(fill.execution.execId)

    def _on_commission(self, trade: Trade, fill: Fill, report: CommissionReport) -> None:
        """A live fill is told once its commission is in. Fills that answer a reqExecutions (ours,
        or the start-up sync's) are not events: the `executions` command returns them."""
        exec_id = fill.execution.execId
        if exec_id not in self._live or exec_id in self._sent_execs:
            return
        self._sent_execs.add(exec_id)
        self._emit(event(OrderEvent.EXECUTION, execution(fill)))

    def _on_disconnected(self) -> None:
        err = CommandError(
            Code.SESSION_LOST, "the session was lost before the broker answered about the order"
        )
        for waits in list(self._waits.values()):
            for w in waits:
                w.fail(err)

    def _publish(self, trade: Trade) -> None:
        if trade.order.orderId in self._waits:
            return  # held: the waiting command's answer says it (see wait)
        st = self.state(trade)
        if not st.perm_id:
            return  # not yet acknowledged by the broker
        prev = self._last.get(id(trade))
        if prev is None or prev[1] != st:
            self._last[id(trade)] = (trade, st)
            self._emit(event(OrderEvent.ORDER_STATUS, st))

    def _offer(self, order_id: int, kind: str, code: int = 0, message: str = "") -> None:
        for w in list(self._waits.get(order_id, [])):
            w.offer(kind, code, message)


def perm_of(trade: Trade) -> int:
    """The broker's permId: ib_async copies it into the order from openOrder only."""
    return trade.order.permId or trade.orderStatus.permId


def order_for(p: PlaceOrderParams) -> Order:
    common: dict[str, Any] = {"orderRef": p.order_ref, "tif": p.tif, "outsideRth": p.outside_rth}
    if p.account:
        common["account"] = p.account
    if p.order_type == "LMT":
        assert p.limit_price is not None
        return LimitOrder(p.action, p.quantity, p.limit_price, **common)
    if p.order_type == "STP":
        assert p.stop_price is not None
        return StopOrder(p.action, p.quantity, p.stop_price, **common)
    return MarketOrder(p.action, p.quantity, **common)


# ------------------------------------------------------------------------------ commands


class Orders:
    """The order commands of one worker; one OrderDesk per ib_async session."""

    def __init__(self, emit: Emit) -> None:
        self._emit = emit
        self._desks: weakref.WeakKeyDictionary[IB, OrderDesk] = weakref.WeakKeyDictionary()

    def desk(self, s: Session, command: str, *, writes: bool = False) -> OrderDesk:
        ib = s.require_connected(command)
        assert s.params is not None
        if writes and s.params.readonly:
            raise CommandError(
                OrderCode.READ_ONLY,
                f"{command}: this session was connected read-only, so orders are refused and nothing "
                f"was sent (connect with readonly=false: IBKR_READONLY=0 / Settings(readonly=False))",
            )
        d = self._desks.get(ib)
        if d is None:
            d = self._desks[ib] = OrderDesk(ib, s.params.client_id, self._emit)
        return d

    async def place_order(self, ctx: Context, p: PlaceOrderParams) -> Result:
        d = self.desk(ctx.session, "place_order", writes=True)
        if d.holds_ref(p.order_ref):
            raise CommandError(
                OrderCode.DUPLICATE_ORDER_REF,
                f"place_order: this session already holds an order with order_ref {p.order_ref!r}; nothing was sent",
            )
        timeout = _timeout(p.timeout)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:  # the contract by its conId (cached): unknown or ambiguous ones go no further
            async with asyncio.timeout(timeout) as cm:
                contract = (await qualify_spec(ctx.session, d.ib, p, cm)).contract
        except TimeoutError:
            raise CommandError(
                Code.REQUEST_TIMEOUT,
                f"place_order: the contract was not qualified within {timeout:g} s; nothing was sent",
            ) from None
        trade: Trade = d.send("place_order", lambda: d.ib.placeOrder(contract, order_for(p)))

        def judge(kind: str, code: int, message: str) -> Judgement:
            if kind == "error":
                return _refusal("place_order", f"rejected order {p.order_ref!r}", code, message)
            return "ok" if perm_of(trade) and d.status_of(trade) in ACKNOWLEDGED else None

        await d.wait("place_order", trade.order.orderId, judge, max(0.001, deadline - loop.time()))
        return d.answer(trade)

    async def modify_order(self, ctx: Context, p: ModifyOrderParams) -> Result:
        d = self.desk(ctx.session, "modify_order", writes=True)
        trade = self._own_trade(d, "modify_order", p.order_id)
        if trade.order.orderRef != p.order_ref:
            raise CommandError(
                Code.BAD_REQUEST,
                f"modify_order: order {p.order_id} has order_ref {trade.order.orderRef!r}, not {p.order_ref!r}",
            )
        status = d.status_of(trade)
        if status in TERMINAL or trade.isDone():
            raise CommandError(
                OrderCode.ORDER_DONE,
                f"modify_order: order {p.order_id} is {status or trade.orderStatus.status} at the broker; "
                f"it can no longer be modified and nothing was sent",
            )
        changes = {
            k: v
            for k, v in {
                "totalQuantity": p.quantity, "orderType": p.order_type, "lmtPrice": p.limit_price,
                "auxPrice": p.stop_price, "tif": p.tif, "outsideRth": p.outside_rth,
            }.items()
            if v is not None
        }  # fmt: skip
        new = Order(**{**_order_fields(trade.order), **changes})
        d.send("modify_order", lambda: d.ib.placeOrder(trade.contract, new), trade)

        def judge(kind: str, code: int, message: str) -> Judgement:
            if kind == "error":
                return _refusal("modify_order", f"refused the change to order {p.order_id}", code, message)
            return "ok" if kind == "open" or d.status_of(trade) in TERMINAL else None

        await d.wait("modify_order", p.order_id, judge, _timeout(p.timeout))
        if trade.order.tif != new.tif or trade.order.outsideRth != new.outsideRth:
            trade.order.tif, trade.order.outsideRth = new.tif, new.outsideRth  # ib_async copies neither
        return d.answer(trade)

    async def cancel_order(self, ctx: Context, p: CancelOrderParams) -> Result:
        d = self.desk(ctx.session, "cancel_order", writes=True)
        trade = d.trade_by_id(p.order_id)
        order = trade.order if trade is not None else Order(orderId=p.order_id, clientId=d.client_id)
        d.send("cancel_order", lambda: d.ib.cancelOrder(order), trade)

        def judge(kind: str, code: int, message: str) -> Judgement:
            if kind == "error":
                if code == 202:
                    return "ok"
                return _refusal("cancel_order", f"refused to cancel order {p.order_id}", code, message)
            return "ok" if trade is not None and d.status_of(trade) in CANCELLED else None

        await d.wait("cancel_order", p.order_id, judge, _timeout(p.timeout))
        if trade is None:
            trade = d.trade_by_id(p.order_id)
        if trade is None:  # confirmed by 202 for an order this session never saw
            raise CommandError(
                OrderCode.ORDER_NOT_FOUND,
                f"cancel_order: order {p.order_id} was cancelled (202) but this session holds no details of it",
            )
        return d.answer(trade)

    async def open_orders(self, ctx: Context, p: OpenOrdersParams) -> Result:
        s = ctx.session
        d = self.desk(s, "open_orders")
        start = d.ib.reqAllOpenOrdersAsync if p.all_clients else d.ib.reqOpenOrdersAsync
        trades = await s.call("open_orders", start, _timeout(p.timeout), one_at_a_time="openOrders")
        d.index(trades)
        return OrdersResult(orders=[d.state(t) for t in trades])

    async def completed_orders(self, ctx: Context, p: CompletedOrdersParams) -> Result:
        s = ctx.session
        d = self.desk(s, "completed_orders")
        trades = await s.call(
            "completed_orders",
            lambda: d.ib.reqCompletedOrdersAsync(False),
            _timeout(p.timeout),
            one_at_a_time="completedOrders",
        )
        d.index(trades)
        return OrdersResult(orders=[d.state(t) for t in trades])

    async def executions(self, ctx: Context, p: ExecutionsParams) -> Result:
        s = ctx.session
        d = self.desk(s, "executions")
        timeout = _timeout(p.timeout)
        flt = ExecutionFilter(clientId=0 if p.all_clients else d.client_id)
        if p.since is not None:
            flt.time = p.since.astimezone(UTC).strftime("%Y%m%d %H:%M:%S UTC")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        answer: list[Fill] = await s.call("executions", lambda: d.ib.reqExecutionsAsync(flt), timeout)

        def fills() -> list[Fill]:
            # ib_async attaches a commission report to the first Fill it saw for an execution
            # (ib.fills()), not to the copy an answer carries when it had seen it before.
            seen = {f.execution.execId: f for f in d.ib.fills()}
            return [seen.get(f.execution.execId, f) for f in answer]

        # A Gateway may send commission reports after the end of the executions: wait a little.
        grace = min(deadline, loop.time() + COMMISSION_WAIT)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(grace):
                while any(not f.commissionReport.execId for f in fills()):
                    await d.ib.updateEvent
        return ExecutionsResult(executions=[execution(f) for f in fills()])

    def _own_trade(self, d: OrderDesk, command: str, order_id: int) -> Trade:
        trade = d.trade_by_id(order_id)
        if trade is None:
            raise CommandError(
                OrderCode.ORDER_NOT_FOUND,
                f"{command}: client id {d.client_id} has no order {order_id} in this session "
                f"(its working orders are restored at connect); nothing was sent",
            )
        return trade


def _order_fields(o: Order) -> dict[str, Any]:
    return {f.name: getattr(o, f.name) for f in fields(o)}


def register(registry: Registry, emit: Emit) -> None:
    """Add the order commands to `registry`; their events go out through `emit`."""
    orders = Orders(emit)
    handlers: dict[str, Any] = {
        "place_order": orders.place_order,
        "modify_order": orders.modify_order,
        "cancel_order": orders.cancel_order,
        "open_orders": orders.open_orders,
        "completed_orders": orders.completed_orders,
        "executions": orders.executions,
    }
    for name, params in ORDER_COMMANDS.items():
        registry.add(name, params, handlers[name])


def _refusal(command: str, what: str, code: int, message: str) -> CommandError | None:
    """An error for an order command: a warning (399, 2109, ...) ends nothing; anything else is
    the broker's refusal, with IB's code."""
    if is_warning(code):
        return None
    return CommandError(
        OrderCode.ORDER_REJECTED, f"{command}: the broker {what}: [{code}] {message}", ib_code=code
    )
