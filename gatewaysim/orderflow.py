"""The order desk: the broker's link to sessions, the clock and the order faults.

It turns a session's placeOrder and cancelOrder into broker operations, refuses what IB would
refuse before the broker sees it (read-only API, unknown contract, account), applies the order
faults, keeps a matching timer running while any order works, and delivers the broker's events
as wire messages to the session of the client id that owns each order (none while it is away:
the broker keeps everything for the replay).
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from . import orderwire, wire
from .broker import Broker, Event, Execution, Order, OrderError, StatusChange
from .contracts import NoListing
from .prices import PriceProcess
from .refusals import invalid
from .scheduler import Timer
from .session import Session

if TYPE_CHECKING:
    from .gateway import Gateway

TEXT_321_READ_ONLY = invalid("bN", "The API interface is currently in Read-Only mode.").text
TEXT_321_ACCOUNT = invalid("bW", "The account code is required for this operation.").text
REJECT_REASON = "Simulated rejection"
MIN_MATCH_PERIOD = 0.02  # s between matching runs at high tick rates (each run catches up)


class Desk:
    """One per Gateway; `broker` is the pure order book it drives."""

    def __init__(self, gateway: Gateway, *, rejects: int, partial_fills: bool) -> None:
        self.gateway = gateway
        self.broker = Broker(gateway.book, PriceProcess(gateway.seed, gateway.tick_rate), self._now_ns())
        self.broker.partial_fills = partial_fills
        self.reject_reasons: list[str] = [REJECT_REASON] * rejects
        self._timer: Timer | None = None

    def _now_ns(self) -> int:
        return int(self.gateway.wall() * 1e9)

    # -------------------------------------------------------------------- requests

    def place(self, s: Session, f: list[str]) -> None:
        gw, cid = self.gateway, s.client_id
        assert cid is not None
        t = orderwire.parse_place_order(f)
        if gw.faults.read_only_api:
            s.error(t.order_id, 321, TEXT_321_READ_ONLY)
            gw.emit("order", f"client id {cid} order {t.order_id} {t.order_ref!r}: refused, read-only API")
            return
        try:
            ins = t.contract.resolve()
        except NoListing as exc:
            s.error(t.order_id, exc.code, exc.text)
            return
        account = t.account or (gw.accounts[0] if len(gw.accounts) == 1 else "")
        if account not in gw.accounts:
            s.error(t.order_id, 321, TEXT_321_ACCOUNT)
            return
        t = replace(t, account=account)
        drop = gw.faults.drop_on_place
        if drop is not None:
            gw.drop_on_place(None)
            s.close(f"drop_on_place={drop}: placeOrder {t.order_id} {t.order_ref!r}", flush=False)
            if drop == "discard":
                self.broker.discard(cid, t)
                gw.emit(
                    "order", f"client id {cid} order {t.order_id} {t.order_ref!r}: discarded with its session"
                )
                return
        fresh = (cid, t.order_id) not in self.broker.orders
        if fresh and self.reject_reasons:
            self.deliver(self.broker.reject(cid, t, self.reject_reasons.pop(0)))
        else:
            self.deliver(self.broker.place(cid, t, ins, self._now_ns()))
        gw.emit(
            "order", f"client id {cid} order {t.order_id} {t.order_ref!r}: {self._state(cid, t.order_id)}"
        )

    def cancel(self, s: Session, order_id: int) -> None:
        assert s.client_id is not None
        if self.gateway.faults.read_only_api:
            s.error(order_id, 321, TEXT_321_READ_ONLY)
            return
        self.deliver(self.broker.cancel(s.client_id, order_id, self._now_ns()))

    def global_cancel(self, s: Session) -> None:
        if self.gateway.faults.read_only_api:
            s.error(-1, 321, TEXT_321_READ_ONLY)
            return
        self.deliver(self.broker.cancel_all(self._now_ns()))

    def _state(self, client_id: int, order_id: int) -> str:
        o = self.broker.orders.get((client_id, order_id))
        return "rejected" if o is None else f"{o.status} {o.filled:g}/{o.quantity:g}"

    # -------------------------------------------------------------------- operations

    def fill(self, order_ref: str) -> None:
        """Fill the working orders with this orderRef now, as if the market had reached them."""
        orders = [o for o in self.broker.orders_by_ref(order_ref) if o.working]
        if not orders:
            raise ValueError(f"no working order with orderRef {order_ref!r}")
        for o in orders:
            self.deliver(self.broker.force_fill(o, self._now_ns()))

    def fill_away(self) -> None:
        """fill_while_away: every working order whose client id has no session fills now."""
        gw = self.gateway
        for o in self.broker.working_orders():
            if gw.session_of(o.client_id) is None:
                self.deliver(self.broker.force_fill(o, self._now_ns()))
                gw.emit(
                    "order", f"client id {o.client_id} order {o.order_id} {o.order_ref!r}: filled while away"
                )

    def end_of_day(self) -> None:
        self.deliver(self.broker.expire_day_orders(self._now_ns()))

    def snapshot(self) -> dict[str, Any]:
        b = self.broker
        return {
            "placements": dict(b.placements),
            "orders": [_order_row(o) for o in b.orders.values()],
            "executions": [
                {
                    "exec_id": x.exec_id,
                    "order_ref": x.order_ref,
                    "client_id": x.client_id,
                    "side": x.side,
                    "shares": x.shares,
                    "price": x.price,
                    "time": x.time,
                }
                for x in b.executions
            ],
        }

    # -------------------------------------------------------------------- events out

    def deliver(self, events: list[Event]) -> None:
        """Send each event to its owner's session if one is up; keep matching while orders work."""
        gw = self.gateway
        for ev in events:
            self._log(ev)
            owner = ev.client_id if isinstance(ev, OrderError) else ev.order.client_id
            s = gw.session_of(owner)
            if s is None:
                continue
            if isinstance(ev, OrderError):
                s.error(ev.order_id, ev.code, ev.text)
            elif isinstance(ev, StatusChange):
                if ev.open_order:
                    s.send(orderwire.open_order(s.version, ev.order))
                s.send(orderwire.order_status(ev.order))
            else:
                self._send_execution(s, ev)
        self._keep_matching()
        if events:
            gw.changed()

    def _log(self, ev: Event) -> None:
        if isinstance(ev, Execution):
            o, x = ev.order, ev.fill
            who = f"client id {o.client_id} order {o.order_id} {o.order_ref!r}"
            self.gateway.emit("fill", f"{who}: {x.side} {x.shares:g} {o.ins.symbol} @ {x.price} ({o.status})")
        elif isinstance(ev, OrderError) and ev.code == 202:
            self.gateway.emit("order", f"client id {ev.client_id} order {ev.order_id}: Cancelled")

    def _send_execution(self, s: Session, ev: Execution) -> None:
        s.send(wire.execution(s.version, -1, ev.fill), orderwire.order_status(ev.order))
        if not ev.order.working:
            s.send(orderwire.open_order(s.version, ev.order))
        s.send(wire.commission_report(ev.fill))

    def _keep_matching(self) -> None:
        working = bool(self.broker.working_orders())
        if working and self._timer is None:
            period = max(1 / self.gateway.tick_rate, MIN_MATCH_PERIOD)
            self._timer = self.gateway.scheduler.call_every(period, self._tick)
        elif not working and self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _tick(self) -> None:
        self.deliver(self.broker.match(self._now_ns()))
        if self.gateway.faults.fill_while_away:
            self.fill_away()


def _order_row(o: Order) -> dict[str, Any]:
    return {
        "order_ref": o.order_ref, "client_id": o.client_id, "order_id": o.order_id, "perm_id": o.perm_id,
        "symbol": o.ins.symbol, "action": o.action, "quantity": o.quantity, "type": o.order_type,
        "lmt_price": o.lmt_price, "aux_price": o.aux_price, "tif": o.tif, "status": o.status,
        "filled": o.filled, "placed": o.placed,
    }  # fmt: skip
